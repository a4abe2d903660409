//! Joining and leaving: how a subscriber becomes live without losing or repeating a
//! publication, and how it leaves (by itself, by the server, or when its credential no
//! longer allows the channel).
//!
//! A `join` adds the subscriber as *joining* (live publications are buffered for it, bounded
//! by its queue size), makes sure the node watches the channel (once per local channel),
//! reads the history since the client's position, adds the member to presence, and then,
//! under the channel's lock, queues one batch: the reply, the missed publications and the
//! buffered ones above the history's position. Live publications come after it in the same
//! queue, so each reaches the client exactly once and in order.

use std::sync::Arc;

use plexus_protocol::{ErrorBody, ErrorCode, Frame, Payload, Position};
use serde::Serialize;

use super::fanout::msg;
use super::filter::Filter;
use super::local::{LocalChannel, Subscriber};
use super::{Hub, HubError, Member};
use crate::channel::ChannelAction;
use crate::conn::ConnectionHandle;
use crate::error::shown;

/// How a join is answered.
#[derive(Clone, Copy, Debug)]
pub(super) enum JoinReply {
    /// A `res` to the client's `join` with this id.
    Call(u64),
    /// A `joined` push: the server subscribed the connection.
    Push,
}

impl Hub {
    /// Pipes the raw socket `conn` to `channel`: its publications are written to it (see
    /// `pipe::piped`), with the namespace's join permission checked.
    pub(crate) async fn pipe(
        &self,
        conn: &ConnectionHandle,
        channel: &str,
    ) -> Result<(), HubError> {
        self.join_as(conn, channel, None, None, JoinReply::Push, true)
            .await
    }

    pub(crate) async fn join(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        since: Option<&Position>,
        filter: Option<&Payload>,
        id: u64,
    ) -> Result<(), HubError> {
        self.join_as(conn, name, since, filter, JoinReply::Call(id), true)
            .await
    }

    pub(super) async fn join_as(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        since: Option<&Position>,
        filter: Option<&Payload>,
        reply: JoinReply,
        check: bool,
    ) -> Result<(), HubError> {
        let options = self.options(name)?;
        if check && !options.allows(conn, name, ChannelAction::Join) {
            return Err(HubError::new(
                ErrorCode::FORBIDDEN,
                format!("not allowed to join `{}`", shown(name)),
            ));
        }
        let filter = match filter {
            Some(filter) => {
                Filter::parse(filter).map_err(|e| HubError::new(ErrorCode::VALIDATION_ERROR, e))?
            }
            None => None,
        };
        conn.subscriptions().add(name)?;
        let channel = match self.inner.channels.get_or_create(name, &options) {
            Ok(channel) => channel,
            Err(e) => {
                conn.subscriptions().remove(name);
                return Err(e);
            }
        };
        let rejoin = {
            let mut state = channel.lock();
            let previous = state
                .subscribers
                .get(conn.id())
                .map(|s| s.joining.is_some());
            if previous.is_none() && state.subscribers.len() >= options.max_subscribers {
                None
            } else {
                if previous != Some(true) {
                    state.joining += 1;
                }
                if previous.is_none() {
                    crate::metrics::server().subscriptions.increment(1.0);
                }
                state.subscribers.insert(
                    conn.id().to_owned(),
                    Subscriber {
                        conn: conn.clone(),
                        filter,
                        joining: Some(Vec::new()),
                    },
                );
                Some(previous.is_some())
            }
        };
        let Some(rejoin) = rejoin else {
            conn.subscriptions().remove(name);
            self.release(&channel).await;
            return Err(HubError::new(
                ErrorCode::RATE_LIMITED,
                format!("`{}` has too many subscribers", shown(name)),
            ));
        };
        // The connection may have ended (or left the channel) since its subscription was
        // noted: then whoever took the note away may already have looked for this subscriber.
        if !conn.subscriptions().contains(name) {
            self.leave_local(conn, name).await;
            return Err(HubError::new(
                ErrorCode::UNAVAILABLE,
                "the connection left the channel",
            ));
        }
        match self.catch_up(conn, &channel, since, reply, rejoin).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.leave_local(conn, name).await;
                Err(e)
            }
        }
    }

    /// Watches the channel, reads what the subscriber missed, and makes it live.
    async fn catch_up(
        &self,
        conn: &ConnectionHandle,
        channel: &Arc<LocalChannel>,
        since: Option<&Position>,
        reply: JoinReply,
        rejoin: bool,
    ) -> Result<(), HubError> {
        let engine = &self.inner.engine;
        channel
            .watch
            .get_or_try_init(|| engine.watch(&channel.name))
            .await
            .map_err(HubError::from)?;
        let since = since.filter(|_| channel.options.recovery);
        let limit = if since.is_some() { None } else { Some(0) };
        let page = engine
            .history(&channel.name, since, limit)
            .await
            .map_err(HubError::from)?;
        if channel.options.presence && !rejoin {
            let member = Member {
                user: conn.principal().user.clone(),
                conn: conn.id().to_owned(),
                info: conn.principal_info(),
            };
            engine
                .add_member(&channel.name, &member)
                .await
                .map_err(HubError::from)?;
        }
        let codec = conn.codec();
        // Held to the end: the batch must be queued before any later publication.
        let mut state = channel.lock();
        let Some(subscriber) = state.subscribers.get_mut(conn.id()) else {
            // It left (or its connection ended, or the server unsubscribed it) meanwhile: a
            // client's `join` still gets its answer.
            return match reply {
                JoinReply::Call(_) => Err(HubError::new(
                    ErrorCode::UNAVAILABLE,
                    "the subscription ended while it was being joined",
                )),
                JoinReply::Push => Ok(()),
            };
        };
        let buffered = subscriber.joining.take().unwrap_or_default();
        let filter = subscriber.filter.clone();
        state.joining -= 1;
        if conn.raw_info().is_some() {
            // A piped raw socket: no reply, no history, only what was published meanwhile,
            // queued under the channel's lock like the batch below.
            let top = &page.position;
            for publication in buffered {
                if *publication.epoch == *top.epoch
                    && publication.offset > top.offset
                    && let Some(message) = super::pipe::piped(&publication.data)
                {
                    let _ = conn.send_message(message);
                }
            }
            return Ok(());
        }

        #[derive(Serialize)]
        struct JoinResult<'a> {
            epoch: &'a str,
            offset: u64,
            recovered: bool,
        }
        let top = &page.position;
        let result = Payload::encode(
            codec,
            &JoinResult {
                epoch: &top.epoch,
                offset: top.offset,
                recovered: page.recoverable,
            },
        )
        .map_err(|e| HubError::new(ErrorCode::INTERNAL, e.to_string()))?;
        let first = match reply {
            JoinReply::Call(id) => Frame::Res { id, data: result },
            JoinReply::Push => Frame::Joined {
                channel: channel.name.to_string(),
                data: result,
            },
        };
        let mut frames = Vec::with_capacity(1 + page.publications.len() + buffered.len());
        frames.push(encode(codec, &first)?);
        let matches = |data: &Payload| {
            filter
                .as_ref()
                .is_none_or(|f| f.matches(data.to_json_value().ok().as_ref()))
        };
        let missed = page.publications.into_iter().filter(|_| page.recoverable);
        for (offset, data) in missed {
            if matches(&data) {
                frames.push(encode(codec, &msg(&channel.name, offset, data))?);
            }
        }
        for publication in buffered {
            if *publication.epoch == *top.epoch
                && publication.offset > top.offset
                && matches(&publication.data)
            {
                let frame = msg(&channel.name, publication.offset, publication.data);
                frames.push(encode(codec, &frame)?);
            }
        }
        // Queued under the channel's lock: later publications can only follow.
        conn.push_batch(frames);
        Ok(())
    }

    /// Ends the connection's subscriptions its principal no longer allows (after a token
    /// refresh): each gets `left` with `FORBIDDEN`.
    pub(crate) async fn recheck_subscriptions(&self, conn: &ConnectionHandle) {
        for channel in conn.subscriptions().list() {
            let allowed = self
                .inner
                .namespaces
                .resolve(&channel)
                .is_some_and(|options| options.allows(conn, &channel, ChannelAction::Join));
            if !allowed {
                let why = ErrorBody::new(
                    ErrorCode::FORBIDDEN,
                    "the refreshed credential does not allow this channel",
                );
                self.unsubscribe_local(conn, &channel, Some(why)).await;
            }
        }
    }

    /// A client's `leave`.
    pub(crate) async fn leave(&self, conn: &ConnectionHandle, name: &str) -> Result<(), HubError> {
        self.options(name)?;
        conn.subscriptions().remove(name);
        self.leave_local(conn, name).await;
        Ok(())
    }

    pub(super) async fn unsubscribe_local(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        why: Option<ErrorBody>,
    ) {
        if conn.subscriptions().remove(name) {
            self.leave_local(conn, name).await;
            if let Ok(bytes) = conn.codec().encode(&Frame::Left {
                channel: name.to_owned(),
                error: why,
            }) {
                let _ = conn.push(bytes);
            }
        }
    }

    /// Removes the subscriber and its presence; forgets the channel if it was the last.
    pub(super) async fn leave_local(&self, conn: &ConnectionHandle, name: &str) {
        let Some(channel) = self.inner.channels.get(name) else {
            return;
        };
        let removed = {
            let mut state = channel.lock();
            let removed = state.subscribers.remove(conn.id());
            if removed.as_ref().is_some_and(|s| s.joining.is_some()) {
                state.joining -= 1;
            }
            if removed.is_some() {
                crate::metrics::server().subscriptions.decrement(1.0);
            }
            removed.is_some()
        };
        if removed && channel.options.presence {
            let _ = self.inner.engine.remove_member(name, conn.id()).await;
        }
        self.release(&channel).await;
    }

    /// Forgets a local channel without subscribers, and stops watching it.
    async fn release(&self, channel: &Arc<LocalChannel>) {
        if self.inner.channels.forget_if_empty(channel)
            && let Err(e) = self.inner.engine.unwatch(&channel.name).await
        {
            tracing::warn!(channel = %shown(&channel.name), error = %e, "unwatch failed");
        }
    }
}

fn encode(codec: plexus_protocol::Codec, frame: &Frame) -> Result<bytes::Bytes, HubError> {
    codec
        .encode(frame)
        .map_err(|e| HubError::new(ErrorCode::INTERNAL, e.to_string()))
}
