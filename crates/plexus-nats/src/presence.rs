//! Presence that outlives no node, and node ids held by one live process.
//!
//! A member is the last message of its subject in the presence stream, with a deadline its
//! node keeps pushing forward; a removal writes a tombstone. Every change is a compare-and-set
//! on the subject's last sequence (`Nats-Expected-Last-Subject-Sequence`), so when a member's
//! deadline passed, exactly one node succeeds in writing its tombstone and announces the
//! leave. A node renews its own members four times per presence TTL and sweeps the channels
//! it watches that have presence. Node leases work the same way under `<p>.pr.~node.<id>`.

use std::sync::Weak;

use async_nats::header::{HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures_util::future::join_all;
use plexus_engine::{EngineError, Member};

use crate::envelope::{self, Entry, now_ms};
use crate::{Shared, lock, millis, read, unavailable};

/// How many compare-and-set rounds a change may take under contention.
const ATTEMPTS: usize = 16;
/// How many renewals a round sends at once.
const BATCH: usize = 64;

/// What a compare-and-set write did.
enum Written {
    Done,
    Raced,
}

/// Writes `payload` with `headers` to `subject` if its last sequence is still `expected`.
async fn write_if(
    shared: &Shared,
    subject: &str,
    mut headers: async_nats::HeaderMap,
    payload: Bytes,
    expected: u64,
) -> Result<Written, EngineError> {
    headers.insert(
        NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        HeaderValue::from(expected),
    );
    let ack = shared
        .jetstream
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| unavailable(&e.to_string()))?;
    match ack.await {
        Ok(_) => Ok(Written::Done),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Written::Raced),
        Err(e) => Err(unavailable(&e.to_string())),
    }
}

/// Announces a presence change on the channel's live subject.
async fn announce(
    shared: &Shared,
    channel: &str,
    joined: bool,
    member: Bytes,
) -> Result<(), EngineError> {
    shared
        .client
        .publish_with_headers(
            shared.subjects.live(channel),
            envelope::presence_change(joined),
            member,
        )
        .await
        .map_err(|e| unavailable(&e.to_string()))
}

/// Adds or renews a member; a new one (absent or removed before) is announced.
pub(crate) async fn add(
    shared: &Shared,
    channel: &str,
    conn: &str,
    json: &Bytes,
) -> Result<(), EngineError> {
    let subject = shared.subjects.member(channel, conn);
    for _ in 0..ATTEMPTS {
        let last = read::last(&shared.presence, &subject).await?;
        let (expected, new) = match &last {
            Some(m) => (
                m.sequence,
                matches!(Entry::read(Some(&m.headers)), Entry::Gone),
            ),
            None => (0, true),
        };
        let deadline = now_ms() + millis(shared.options.presence_ttl);
        match write_if(
            shared,
            &subject,
            envelope::live_entry(deadline),
            json.clone(),
            expected,
        )
        .await?
        {
            Written::Done => {
                if new {
                    announce(shared, channel, true, json.clone()).await?;
                }
                return Ok(());
            }
            Written::Raced => continue,
        }
    }
    Err(unavailable("presence is too contended"))
}

/// Removes a member and announces it, if it was there.
pub(crate) async fn remove(shared: &Shared, channel: &str, conn: &str) -> Result<(), EngineError> {
    let subject = shared.subjects.member(channel, conn);
    for _ in 0..ATTEMPTS {
        let Some(last) = read::last(&shared.presence, &subject).await? else {
            return Ok(());
        };
        if matches!(Entry::read(Some(&last.headers)), Entry::Gone) {
            return Ok(());
        }
        match write_if(
            shared,
            &subject,
            envelope::gone_entry(),
            Bytes::new(),
            last.sequence,
        )
        .await?
        {
            Written::Done => return announce(shared, channel, false, last.payload).await,
            Written::Raced => continue,
        }
    }
    Err(unavailable("presence is too contended"))
}

/// Removes (and announces) the channel's members whose deadline passed; returns the others.
pub(crate) async fn sweep(shared: &Shared, channel: &str) -> Result<Vec<Member>, EngineError> {
    let now = now_ms();
    let mut members = Vec::new();
    for kept in read::all(&shared.presence, &shared.subjects.members(channel), true).await? {
        match Entry::read(kept.headers.as_ref()) {
            Entry::Gone => {}
            Entry::Live(deadline) if deadline > now => {
                if let Ok(member) = serde_json::from_slice(&kept.payload) {
                    members.push(member);
                }
            }
            Entry::Live(_) => {
                // Only the node whose tombstone lands announces the leave.
                let written = write_if(
                    shared,
                    &kept.subject,
                    envelope::gone_entry(),
                    Bytes::new(),
                    kept.sequence,
                )
                .await?;
                if matches!(written, Written::Done) {
                    announce(shared, channel, false, kept.payload).await?;
                }
            }
        }
    }
    Ok(members)
}

/// Claims `node` for `holder`; returns whether it is now ours.
pub(crate) async fn claim(shared: &Shared, node: &str, lease_ms: u64) -> Result<bool, EngineError> {
    let subject = shared.subjects.node_lease(node);
    let holder = Bytes::from(shared.instance.to_string());
    for _ in 0..ATTEMPTS {
        let last = read::last(&shared.presence, &subject).await?;
        let expected = match &last {
            None => 0,
            Some(m) => match Entry::read(Some(&m.headers)) {
                Entry::Live(deadline) if deadline > now_ms() && m.payload != holder => {
                    return Ok(false);
                }
                _ => m.sequence,
            },
        };
        match write_if(
            shared,
            &subject,
            envelope::live_entry(now_ms() + lease_ms),
            holder.clone(),
            expected,
        )
        .await?
        {
            Written::Done => return Ok(true),
            Written::Raced => continue,
        }
    }
    Err(unavailable("the node lease is too contended"))
}

/// Gives `node` back if it is ours.
pub(crate) async fn release(shared: &Shared, node: &str) -> Result<(), EngineError> {
    let subject = shared.subjects.node_lease(node);
    let holder = Bytes::from(shared.instance.to_string());
    if let Some(last) = read::last(&shared.presence, &subject).await?
        && last.payload == holder
    {
        write_if(
            shared,
            &subject,
            envelope::gone_entry(),
            Bytes::new(),
            last.sequence,
        )
        .await?;
    }
    Ok(())
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
        let members: Vec<(String, String, Bytes)> = lock(&shared.own_members)
            .iter()
            .flat_map(|(channel, members)| {
                members
                    .iter()
                    .map(|(conn, json)| (channel.clone(), conn.clone(), json.clone()))
            })
            .collect();
        for batch in members.chunks(BATCH) {
            let results =
                join_all(batch.iter().map(|(channel, conn, json)| {
                    shared.guarded(add(&shared, channel, conn, json))
                }))
                .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                tracing::warn!(error = %e, "cannot renew presence");
                break;
            }
        }
        let channels: Vec<_> = lock(&shared.presence_channels).iter().cloned().collect();
        for channel in channels {
            if let Err(e) = shared.guarded(sweep(&shared, &channel)).await {
                tracing::warn!(error = %e, "cannot sweep presence");
                break;
            }
        }
    }
}
