//! Presence that outlives no node: each member has a deadline its node keeps renewing.
//!
//! A node renews the members it added four times per presence TTL, and sweeps the channels it
//! watches that have presence, removing (and announcing as left) the members whose deadline
//! passed: those of a node that died or lost Redis for longer than the TTL.

use std::sync::Weak;

use futures_util::future::join_all;
use plexus_engine::EngineError;

use crate::keys::ChannelKeys;
use crate::{Shared, lock, millis, redis_error, scripts};

/// How many scripts a renewal round sends at once.
const BATCH: usize = 64;

/// Adds or renews one member.
pub(crate) async fn add(
    shared: &Shared,
    channel: &str,
    conn: &str,
    json: &str,
) -> Result<(), EngineError> {
    let keys = ChannelKeys::new(&shared.options.prefix, channel);
    let _: i64 = scripts::ADD_MEMBER
        .key(&keys.members)
        .key(&keys.member_expiry)
        .arg(conn)
        .arg(json)
        .arg(millis(shared.options.presence_ttl))
        .arg(&keys.topic)
        .invoke_async(&mut shared.connection.clone())
        .await
        .map_err(redis_error)?;
    Ok(())
}

/// Removes the channel's lapsed members; returns the others (as JSON) when `list` is set.
pub(crate) async fn sweep(
    shared: &Shared,
    channel: &str,
    list: bool,
) -> Result<Vec<Vec<u8>>, EngineError> {
    let keys = ChannelKeys::new(&shared.options.prefix, channel);
    scripts::SWEEP_MEMBERS
        .key(&keys.members)
        .key(&keys.member_expiry)
        .arg(&keys.topic)
        .arg(if list { "1" } else { "0" })
        .invoke_async(&mut shared.connection.clone())
        .await
        .map_err(redis_error)
}

/// Renews this node's members and sweeps its channels, until the engine is dropped.
pub(crate) async fn renew(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(shared) => shared.options.presence_ttl / 4,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let members: Vec<(String, String, String)> = lock(&shared.own_members)
            .iter()
            .flat_map(|(channel, members)| {
                members
                    .iter()
                    .map(|(conn, json)| (channel.clone(), conn.clone(), json.clone()))
            })
            .collect();
        for batch in members.chunks(BATCH) {
            let results = join_all(
                batch
                    .iter()
                    .map(|(channel, conn, json)| add(&shared, channel, conn, json)),
            )
            .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                tracing::warn!(error = %e, "cannot renew presence");
                break;
            }
        }
        let channels: Vec<_> = lock(&shared.presence_channels).iter().cloned().collect();
        for batch in channels.chunks(BATCH) {
            let results =
                join_all(batch.iter().map(|channel| sweep(&shared, channel, false))).await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                tracing::warn!(error = %e, "cannot sweep presence");
                break;
            }
        }
    }
}
