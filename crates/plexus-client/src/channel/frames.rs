//! The channel frames the server pushes: `msg`, `pjoin`, `pleave`, `joined` and `left`.

use std::task::Waker;

use plexus_protocol::{ErrorBody, ErrorCode, Payload, Position, PresenceEvent};

use super::registry::Phase;
use super::wire::JoinResult;
use super::{ChannelEvent, Member};
use crate::error::CallError;
use crate::state::{Inner, State};

impl Inner {
    /// A `msg` arrived.
    pub(crate) fn on_msg(&self, channel: &str, offset: u64, data: Payload) {
        let capacity = self.server_capacity();
        let waker = {
            let mut st = self.lock();
            let channels = &mut st.channels;
            if let Some(sub) = channels.by_name(channel) {
                sub.on_msg(offset, data)
            } else if channels.server.is_live(channel) {
                channels.server.on_msg(capacity, channel, offset, data)
            } else {
                tracing::debug!(channel, offset, "`msg` for a channel without subscription");
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A `pjoin` or `pleave` arrived.
    pub(crate) fn on_presence(&self, event: PresenceEvent, channel: &str, data: Payload) {
        let member = match data.decode::<Member>() {
            Ok(member) => member,
            Err(e) => {
                tracing::debug!(
                    channel,
                    path = e.path(),
                    "presence event with a bad member: {e}"
                );
                return;
            }
        };
        let event = match event {
            PresenceEvent::Join => ChannelEvent::MemberJoined(member),
            PresenceEvent::Leave => ChannelEvent::MemberLeft(member),
        };
        let capacity = self.server_capacity();
        let waker = {
            let mut st = self.lock();
            let channels = &mut st.channels;
            if let Some(sub) = channels.by_name(channel) {
                sub.on_presence(event)
            } else if channels.server.is_live(channel) {
                channels.server.on_presence(capacity, channel, event)
            } else {
                tracing::debug!(channel, "presence event for a channel without subscription");
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A `joined` arrived: the server subscribed this connection to `channel`.
    pub(crate) fn on_server_joined(&self, channel: &str, data: Payload) {
        let result = match data.decode::<JoinResult>() {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(
                    channel,
                    path = e.path(),
                    "`joined` with a bad position: {e}"
                );
                return;
            }
        };
        let position = Position {
            epoch: result.epoch,
            offset: result.offset,
        };
        let capacity = self.server_capacity();
        let waker = {
            let mut st = self.lock();
            if st.channels.names.contains_key(channel) {
                // The application's subscription: the server renewed it, the publications
                // keep coming (duplicates are dropped by offset).
                tracing::debug!(channel, "`joined` for a channel the application joined");
                return;
            }
            st.channels.server.on_joined(capacity, channel, position)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// A `left` arrived: the server ended this connection's subscription to `channel`.
    /// `UNAVAILABLE` (the server's stream was interrupted) re-joins the application's
    /// subscription with `since`; any other end closes it. Server-side subscriptions end.
    pub(crate) fn on_left(&self, channel: &str, error: Option<ErrorBody>) {
        let interrupted = error
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::UNAVAILABLE);
        let error = error.map_or_else(CallError::unsubscribed, CallError::remote);
        let capacity = self.server_capacity();
        let waker = {
            let mut guard = self.lock();
            let st = &mut *guard;
            match st.channels.names.get(channel) {
                Some(&token) if interrupted => self.on_interrupted(st, token),
                Some(&token) => {
                    let sub = st.channels.subs.get(&token);
                    match sub.map(|sub| sub.phase) {
                        // The answer of the `join` in flight makes the subscription live
                        // again (the `left` was about the one before).
                        Some(Phase::Joining(_) | Phase::Idle) | None => None,
                        Some(Phase::Joined | Phase::Leaving(_)) => {
                            tracing::debug!(channel, code = %error.code(), "unsubscribed by the server");
                            st.channels.fail(token, error)
                        }
                    }
                }
                None => st.channels.server.on_left(capacity, channel, error),
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The server interrupted subscription `token` (`left` with `UNAVAILABLE`): join again
    /// from the last buffered position, as after a reconnect.
    fn on_interrupted(&self, st: &mut State, token: u64) -> Option<Waker> {
        let channels = &mut st.channels;
        let sub = channels.subs.get_mut(&token)?;
        // Joining: the answer of the `join` in flight makes it live again. Leaving (lagged):
        // the re-join follows the `leave`'s answer. Idle: it is not joined.
        if sub.phase != Phase::Joined {
            return None;
        }
        tracing::debug!(channel = %sub.channel, position = ?sub.position, "subscription interrupted by the server; re-joining");
        sub.phase = Phase::Idle;
        if sub.lagged {
            // Re-joined once the application has drained the buffer (see `poll_channel`).
            return None;
        }
        if sub.queue.len() >= sub.capacity {
            // The replay would not fit: lag, and re-join once the application has read.
            return sub.overflow();
        }
        let link = st.link.as_ref()?;
        self.rejoin(channels, link, token)
    }
}
