//! What the client keeps per subscription, under the client's one mutex.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::task::Waker;

use bytes::Bytes;
use plexus_protocol::{Payload, Position};
use tokio::sync::oneshot;

use super::server::ServerChannels;
use super::{ChannelEvent, Publication};
use crate::error::CallError;
use crate::state::Link;

/// How the initial join went, for [`Client::join`](crate::Client::join).
pub(crate) struct JoinReply {
    /// The channel's position in the `res`.
    pub(crate) position: Position,
    pub(crate) recovered: bool,
    /// The tracked position after the join: `since` when recovered, else `position`.
    pub(crate) last: Position,
}

/// A `join` or `leave` of this client waiting for its answer, on the current connection.
pub(super) enum ChannelCall {
    /// The join (first or again) of subscription `token`.
    Join { token: u64 },
    /// The leave that precedes the re-join of a lagged subscription `token`.
    Resync { token: u64 },
    /// The leave of a subscription that is gone; `reply` waits for the answer, unless the
    /// subscription was dropped.
    Leave {
        reply: Option<oneshot::Sender<Result<(), CallError>>>,
    },
}

/// Where a subscription stands on the current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not joined on this connection: disconnected, or lagged and waiting for the
    /// application to drain its buffer.
    Idle,
    /// `join` sent with this id; `msg` frames before its `res` are stale and dropped.
    Joining(u64),
    /// Joined: `msg` frames are delivered (unless lagged).
    Joined,
    /// Lagged: the `leave` before the re-join was sent with this id.
    Leaving(u64),
}

/// One subscription of the client.
pub(super) struct Sub {
    pub(super) channel: String,
    /// The filter, in the client's codec.
    pub(super) filter: Option<Payload>,
    pub(super) capacity: usize,
    /// The tracked position: `since` of the next join. `None` only before the first answer
    /// of a join without `since`.
    pub(super) position: Option<Position>,
    pub(super) phase: Phase,
    /// Re-joins refused as unavailable in a row: the backoff of the next retry.
    pub(super) join_failures: u32,
    /// The buffer overflowed: nothing more is buffered until the application drained it
    /// and the channel was joined again.
    pub(super) lagged: bool,
    /// Ended (client closed, re-join refused): `Closed` is the last event in `queue`.
    pub(super) closed: bool,
    pub(super) queue: VecDeque<ChannelEvent>,
    pub(super) waker: Option<Waker>,
    /// The first join's answer goes here; `None` once it came.
    pub(super) ready: Option<oneshot::Sender<Result<JoinReply, CallError>>>,
}

impl Sub {
    /// Buffers an event (bounds are the caller's business) and returns the waker to wake.
    pub(super) fn push(&mut self, event: ChannelEvent) -> Option<Waker> {
        self.queue.push_back(event);
        self.waker.take()
    }

    /// A `msg` of the channel: buffered unless stale, lagged or a duplicate.
    pub(super) fn on_msg(&mut self, offset: u64, data: Payload) -> Option<Waker> {
        if self.phase != Phase::Joined || self.lagged {
            // Before the join's answer: stale. Lagged: recovered after the re-join.
            tracing::trace!(channel = %self.channel, offset, phase = ?self.phase, lagged = self.lagged, "`msg` not buffered");
            return None;
        }
        let last = self.position.as_ref().map_or(0, |p| p.offset);
        if offset <= last {
            tracing::debug!(channel = %self.channel, offset, last, "duplicate `msg` dropped");
            return None;
        }
        if self.queue.len() >= self.capacity {
            self.overflow()
        } else {
            if let Some(position) = &mut self.position {
                position.offset = offset;
            }
            self.push(ChannelEvent::Publication(Publication { offset, data }))
        }
    }

    /// A presence event of the channel: buffered unless stale or lagged.
    pub(super) fn on_presence(&mut self, event: ChannelEvent) -> Option<Waker> {
        if self.phase != Phase::Joined || self.lagged {
            return None;
        }
        if self.queue.len() >= self.capacity {
            self.overflow()
        } else {
            self.push(event)
        }
    }

    /// Stops buffering: one `Lagged` beyond the capacity, then nothing until re-joined.
    pub(super) fn overflow(&mut self) -> Option<Waker> {
        self.lagged = true;
        let position = self.position.clone().unwrap_or(Position {
            epoch: String::new(),
            offset: 0,
        });
        tracing::debug!(channel = %self.channel, ?position, "subscription buffer full; will recover");
        self.push(ChannelEvent::Lagged { position })
    }
}

/// Every subscription of the client, and their calls in flight.
#[derive(Default)]
pub(crate) struct Channels {
    /// By token (creation order, which is the order of re-joins).
    pub(super) subs: BTreeMap<u64, Sub>,
    /// The live subscription of each channel.
    pub(super) names: HashMap<String, u64>,
    /// `join` and `leave` frames in flight on the current connection, by call id.
    pub(super) calls: HashMap<u64, ChannelCall>,
    pub(super) next_token: u64,
    /// The server-side subscriptions (`joined` frames for channels not in `names`).
    pub(crate) server: ServerChannels,
}

impl Channels {
    /// The subscription of `channel`, if this client has one.
    pub(super) fn by_name(&mut self, channel: &str) -> Option<&mut Sub> {
        let token = self.names.get(channel)?;
        self.subs.get_mut(token)
    }
}

impl Channels {
    /// How many subscriptions are live (for diagnostics and tests).
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Ends subscription `token`: the first join fails, a joined one gets `Closed`.
    pub(super) fn fail(&mut self, token: u64, error: CallError) -> Option<Waker> {
        let sub = self.subs.get_mut(&token)?;
        if self.names.get(&sub.channel) == Some(&token) {
            self.names.remove(&sub.channel);
        }
        sub.phase = Phase::Idle;
        if let Some(ready) = sub.ready.take() {
            self.subs.remove(&token);
            let _ = ready.send(Err(error));
            return None;
        }
        if sub.closed {
            return None;
        }
        sub.closed = true;
        sub.push(ChannelEvent::Closed(error))
    }
}

impl Link {
    /// Sends a `join` or `leave`: never waits, and keeps their order.
    pub(super) fn send_ordered(&self, bytes: Bytes) {
        let _ = self.ordered.send(bytes);
    }
}
