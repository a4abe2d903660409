//! Channels: [`Subscription`]s, their [`ChannelEvent`]s, and the client's side of recovery.
//!
//! All channel state lives in [`State::channels`](crate::state::State), under the client's
//! one mutex, so that a `res` of a `join` and the `msg` frames after it are handled in the
//! order they arrived, and a reconnect sees every subscription in a consistent state.
//!
//! Per subscription the client keeps the *tracked position*: the epoch of the last `join`
//! answer and the offset of the last `msg` put in the subscription's buffer. Re-joins send it
//! as `since`; `msg` frames at or below it are duplicates and are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;
use plexus_protocol::{ErrorBody, ErrorCode, Frame, Payload, Position, PresenceEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::server_subscription::ServerChannels;
use crate::state::{Inner, Link, State};

/// One publication of a channel: its offset within the channel's epoch and its value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Publication {
    /// The offset of the publication (`o`), strictly increasing within the epoch.
    pub offset: u64,
    /// The published value (`d`), as it came on the wire.
    pub data: Payload,
}

impl Publication {
    /// Decodes the value into `T`; on failure the error (kind
    /// [`Decode`](crate::CallErrorKind::Decode)) names the field that did not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        self.data.decode().map_err(|e| CallError::decode(&e))
    }
}

/// A member of a channel: one connection joined to it, as `pjoin`, `pleave` and
/// [`Client::presence`](crate::Client::presence) describe it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The user of the connection; `None` for anonymous connections.
    #[serde(default)]
    pub user: Option<String>,
    /// The connection id.
    pub conn: String,
    /// Application data attached to the member, if any.
    #[serde(default)]
    pub info: Option<Payload>,
}

/// What a [`Subscription`] yields, and (paired with the channel's name) what
/// [`ServerSubscriptions`](crate::ServerSubscriptions) yields.
///
/// On a [`Subscription`], publications come in offset order, each exactly once, across
/// reconnects, overflows and interruptions of the server's stream: the client re-joins with
/// the position of the last publication it buffered and drops any duplicate. When that is
/// not possible (the server's history no longer holds the missed publications, or the
/// channel's epoch changed), [`ChannelEvent::Resubscribed`] says `recovered: false`.
/// Server-side subscriptions are not re-joined by the client: see
/// [`ServerSubscriptions`](crate::ServerSubscriptions) for what these events mean there.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The server subscribed this client to the channel (a `joined` frame): the first event
    /// of each server-side subscription, only on
    /// [`ServerSubscriptions`](crate::ServerSubscriptions). The publications after
    /// `position` follow; to build the channel's state, load it from the application's
    /// source of truth (or [`Client::history`](crate::Client::history)) up to `position`,
    /// then apply them.
    Subscribed {
        /// The channel's position when the server subscribed the client: its epoch, and
        /// the offset of its latest publication then.
        position: Position,
    },
    /// A publication (`msg`).
    Publication(Publication),
    /// A member joined the channel (`pjoin`; only where the server sends presence events).
    MemberJoined(Member),
    /// A member left the channel (`pleave`).
    MemberLeft(Member),
    /// The client joined the channel again: after a reconnect, after
    /// [`ChannelEvent::Lagged`], or after the server interrupted the subscription (a `left`
    /// frame with code `UNAVAILABLE`: the server's stream of the channel broke off). Only on
    /// a [`Subscription`].
    ///
    /// With `recovered: true`, the publications missed meanwhile follow, then live ones:
    /// nothing was lost. With `recovered: false` **publications were missed and will not be
    /// delivered** (the server's history window passed, or the channel's epoch changed): the
    /// application must reload its state from its source of truth (for example with
    /// [`Client::history`](crate::Client::history) or its own API), then apply the
    /// publications that follow, which are those after `position`. Presence events missed
    /// while disconnected are not replayed either; [`Client::presence`](crate::Client::presence)
    /// gives the members now.
    Resubscribed {
        /// Whether every publication missed since the last one delivered follows.
        recovered: bool,
        /// The channel's position when it was joined again (its epoch, and the offset of
        /// its latest publication then).
        position: Position,
    },
    /// The application read too slowly: the subscription's buffer
    /// ([`JoinOptions::buffer`](crate::JoinOptions::buffer)) was full, so the client stopped
    /// buffering after the publication at `position` instead of growing its memory or
    /// stalling the connection.
    ///
    /// On a [`Subscription`] nothing is lost yet: once the application has read this event
    /// (it is the last one buffered), the client joins the channel again with `since` =
    /// `position` and [`ChannelEvent::Resubscribed`] follows, then the missed publications
    /// from the server's history. Presence events that did not fit are not recovered.
    /// Re-joining costs a `leave` and a `join`, so other members may see this connection
    /// leave and join again.
    ///
    /// On [`ServerSubscriptions`](crate::ServerSubscriptions) the publications after
    /// `position`, up to the next one yielded for the channel, **were dropped** and are not
    /// recovered (the client does not re-join server-side subscriptions): fetch them with
    /// [`Client::history`](crate::Client::history) if they matter.
    Lagged {
        /// The position of the last publication delivered before the gap.
        position: Position,
    },
    /// The subscription ended without [`Subscription::leave`]: the client was closed, the
    /// server refused a re-join (for example `FORBIDDEN` after the credential changed), or
    /// the server ended the subscription (a `left` frame: kind
    /// [`Remote`](crate::CallErrorKind::Remote) with the server's error, or code
    /// `UNSUBSCRIBED` and message "unsubscribed by the server" when it gave none). It is
    /// the last event; the subscription is not re-joined after a reconnect. Join again to
    /// resume.
    ///
    /// On [`ServerSubscriptions`](crate::ServerSubscriptions), the last event of one
    /// server-side subscription (see there why it ends).
    Closed(CallError),
}

/// The publications kept in a channel's history: see [`Client::history`](crate::Client::history).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The channel's current position.
    pub position: Position,
    /// The publications returned, oldest first. To detect a gap, compare
    /// `position.epoch` and the first offset with the position asked for.
    pub publications: Vec<Publication>,
}

/// The result of `join` (and the `d` of `joined`): `{"epoch","offset","recovered"}`.
#[derive(Deserialize)]
struct JoinResult {
    epoch: String,
    offset: u64,
    #[serde(default)]
    recovered: Option<bool>,
}

/// A position as it is on the wire (`{"epoch","offset"}`).
#[derive(Serialize, Deserialize)]
pub(crate) struct WirePosition {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

impl From<WirePosition> for Position {
    fn from(p: WirePosition) -> Self {
        Position {
            epoch: p.epoch,
            offset: p.offset,
        }
    }
}

impl From<&Position> for WirePosition {
    fn from(p: &Position) -> Self {
        WirePosition {
            epoch: p.epoch.clone(),
            offset: p.offset,
        }
    }
}

/// The result of `$history`.
#[derive(Deserialize)]
pub(crate) struct WireHistory {
    epoch: String,
    offset: u64,
    #[serde(default)]
    pubs: Vec<WirePublication>,
}

#[derive(Deserialize)]
struct WirePublication {
    o: u64,
    #[serde(default)]
    d: Option<Payload>,
}

impl WireHistory {
    pub(crate) fn into_history(self, codec: crate::Codec) -> History {
        History {
            position: Position {
                epoch: self.epoch,
                offset: self.offset,
            },
            publications: self
                .pubs
                .into_iter()
                .map(|p| Publication {
                    offset: p.o,
                    data: p.d.unwrap_or_else(|| Payload::null(codec)),
                })
                .collect(),
        }
    }
}

/// How the initial join went, for [`Client::join`](crate::Client::join).
pub(crate) struct JoinReply {
    /// The channel's position in the `res`.
    pub(crate) position: Position,
    pub(crate) recovered: bool,
    /// The tracked position after the join: `since` when recovered, else `position`.
    pub(crate) last: Position,
}

/// A `join` or `leave` of this client waiting for its answer, on the current connection.
enum ChannelCall {
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
enum Phase {
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
struct Sub {
    channel: String,
    /// The filter, in the client's codec.
    filter: Option<Payload>,
    capacity: usize,
    /// The tracked position: `since` of the next join. `None` only before the first answer
    /// of a join without `since`.
    position: Option<Position>,
    phase: Phase,
    /// The buffer overflowed: nothing more is buffered until the application drained it
    /// and the channel was joined again.
    lagged: bool,
    /// Ended (client closed, re-join refused): `Closed` is the last event in `queue`.
    closed: bool,
    queue: VecDeque<ChannelEvent>,
    waker: Option<Waker>,
    /// The first join's answer goes here; `None` once it came.
    ready: Option<oneshot::Sender<Result<JoinReply, CallError>>>,
}

impl Sub {
    /// Buffers an event (bounds are the caller's business) and returns the waker to wake.
    fn push(&mut self, event: ChannelEvent) -> Option<Waker> {
        self.queue.push_back(event);
        self.waker.take()
    }

    /// A `msg` of the channel: buffered unless stale, lagged or a duplicate.
    fn on_msg(&mut self, offset: u64, data: Payload) -> Option<Waker> {
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
    fn on_presence(&mut self, event: ChannelEvent) -> Option<Waker> {
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
    fn overflow(&mut self) -> Option<Waker> {
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
    subs: BTreeMap<u64, Sub>,
    /// The live subscription of each channel.
    names: HashMap<String, u64>,
    /// `join` and `leave` frames in flight on the current connection, by call id.
    calls: HashMap<u64, ChannelCall>,
    next_token: u64,
    /// The server-side subscriptions (`joined` frames for channels not in `names`).
    pub(crate) server: ServerChannels,
}

impl Channels {
    /// The subscription of `channel`, if this client has one.
    fn by_name(&mut self, channel: &str) -> Option<&mut Sub> {
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
    fn fail(&mut self, token: u64, error: CallError) -> Option<Waker> {
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
    fn send_ordered(&self, bytes: Bytes) {
        let _ = self.ordered.send(bytes);
    }
}

impl Inner {
    /// Encodes a `join` for `sub` with its tracked position as `since`, registers it as in
    /// flight and moves `sub` to [`Phase::Joining`]. The caller sends the bytes.
    fn prepare_join(
        &self,
        calls: &mut HashMap<u64, ChannelCall>,
        token: u64,
        sub: &mut Sub,
    ) -> Result<Bytes, CallError> {
        let id = self.next_id();
        let bytes = self.encode(&Frame::Join {
            id,
            channel: sub.channel.clone(),
            since: sub.position.clone(),
            filter: sub.filter.clone(),
        })?;
        calls.insert(id, ChannelCall::Join { token });
        sub.phase = Phase::Joining(id);
        sub.lagged = false;
        Ok(bytes)
    }

    /// Sends the `join` of subscription `token` again (with its last position as `since`);
    /// a join that cannot be encoded fails the subscription.
    fn rejoin(&self, channels: &mut Channels, link: &Link, token: u64) -> Option<Waker> {
        let sub = channels.subs.get_mut(&token)?;
        match self.prepare_join(&mut channels.calls, token, sub) {
            Ok(bytes) => {
                link.send_ordered(bytes);
                None
            }
            Err(error) => channels.fail(token, error),
        }
    }

    /// Sends a `leave` for `channel` on `link` and registers `call` for its answer.
    fn send_leave(
        &self,
        link: &Link,
        calls: &mut HashMap<u64, ChannelCall>,
        channel: &str,
        call: ChannelCall,
    ) -> Option<u64> {
        let id = self.next_id();
        match self.encode(&Frame::Leave {
            id,
            channel: channel.to_owned(),
        }) {
            Ok(bytes) => {
                link.send_ordered(bytes);
                calls.insert(id, call);
                Some(id)
            }
            Err(e) => {
                tracing::warn!(channel, "cannot encode leave: {e}");
                None
            }
        }
    }

    /// Registers a new subscription and sends its `join` (or leaves it for the next
    /// session when disconnected). Returns its token.
    pub(crate) fn join_channel(
        &self,
        channel: &str,
        filter: Option<Payload>,
        since: Option<Position>,
        capacity: usize,
        ready: oneshot::Sender<Result<JoinReply, CallError>>,
    ) -> Result<u64, CallError> {
        // Fail early on a frame that can never be sent (too large).
        self.encode(&Frame::Join {
            id: 1,
            channel: channel.to_owned(),
            since: since.clone(),
            filter: filter.clone(),
        })?;
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.closed {
            return Err(CallError::closed());
        }
        if st.channels.names.contains_key(channel) {
            return Err(CallError::already_joined(channel));
        }
        if st.channels.server.is_live(channel) {
            return Err(CallError::already_subscribed_by_server(channel));
        }
        let channels = &mut st.channels;
        channels.next_token += 1;
        let token = channels.next_token;
        let mut sub = Sub {
            channel: channel.to_owned(),
            filter,
            capacity: capacity.max(1),
            position: since,
            phase: Phase::Idle,
            lagged: false,
            closed: false,
            queue: VecDeque::new(),
            waker: None,
            ready: Some(ready),
        };
        if let Some(link) = &st.link {
            let bytes = self.prepare_join(&mut channels.calls, token, &mut sub)?;
            link.send_ordered(bytes);
        }
        channels.subs.insert(token, sub);
        channels.names.insert(channel.to_owned(), token);
        Ok(token)
    }

    /// The subscription's handle is gone (dropped, or [`Subscription::leave`]): forget it
    /// and send `leave` when the server may have it joined. `reply` gets the outcome.
    pub(crate) fn detach_channel(
        &self,
        token: u64,
        reply: Option<oneshot::Sender<Result<(), CallError>>>,
    ) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let channels = &mut st.channels;
        let Some(sub) = channels.subs.remove(&token) else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        if channels.names.get(&sub.channel) == Some(&token) {
            channels.names.remove(&sub.channel);
        }
        if !sub.closed {
            match (sub.phase, &st.link) {
                // A leave is on its way already (lagged): its answer answers this one.
                (Phase::Leaving(id), Some(_)) => {
                    channels.calls.insert(id, ChannelCall::Leave { reply });
                    return;
                }
                (Phase::Joining(_) | Phase::Joined, Some(link)) => {
                    let call = ChannelCall::Leave { reply };
                    // On failure the reply sender is dropped: the caller reads that as done.
                    self.send_leave(link, &mut channels.calls, &sub.channel, call);
                    return;
                }
                _ => {}
            }
        }
        // Not joined on the server: nothing to leave.
        if let Some(reply) = reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// A `res` arrived that is not for a request or stream; returns whether it was for a
    /// channel call.
    pub(crate) fn on_channel_result(&self, id: u64, data: Payload) -> bool {
        self.on_channel_answer(id, Ok(data))
    }

    /// An `err` arrived that is not for a request or stream; returns whether it was for a
    /// channel call.
    pub(crate) fn on_channel_error(&self, id: u64, error: ErrorBody) -> bool {
        self.on_channel_answer(id, Err(error))
    }

    fn on_channel_answer(&self, id: u64, answer: Result<Payload, ErrorBody>) -> bool {
        let waker = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(call) = st.channels.calls.remove(&id) else {
                return false;
            };
            match call {
                ChannelCall::Join { token } => self.on_joined(st, id, token, answer),
                ChannelCall::Resync { token } => {
                    if let Err(error) = &answer {
                        // Most likely not joined any more; joining again is right anyway.
                        tracing::debug!(code = %error.code, "leave before re-join failed");
                    }
                    self.on_resync_left(st, id, token)
                }
                ChannelCall::Leave { reply } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(answer.map(|_| ()).map_err(CallError::remote));
                    }
                    None
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// The answer to a `join`.
    fn on_joined(
        &self,
        st: &mut State,
        id: u64,
        token: u64,
        answer: Result<Payload, ErrorBody>,
    ) -> Option<Waker> {
        let channels = &mut st.channels;
        let sub = channels.subs.get_mut(&token)?;
        if sub.phase != Phase::Joining(id) {
            return None;
        }
        let result = match answer {
            Ok(data) => data
                .decode::<JoinResult>()
                .map_err(|e| CallError::decode(&e)),
            Err(error) => Err(CallError::remote(error)),
        };
        let result = match result {
            Ok(result) => result,
            Err(error) => {
                tracing::debug!(channel = %sub.channel, "join failed: {error}");
                return channels.fail(token, error);
            }
        };
        let position = Position {
            epoch: result.epoch,
            offset: result.offset,
        };
        // Recovered only as the protocol defines it: `since` in the current epoch, not
        // beyond the current offset. Otherwise the tracking restarts from the answer.
        let recovered = result.recovered == Some(true)
            && sub.position.as_ref().is_some_and(|since| {
                since.epoch == position.epoch && since.offset <= position.offset
            });
        if !recovered {
            sub.position = Some(position.clone());
        }
        sub.phase = Phase::Joined;
        match sub.ready.take() {
            Some(ready) => {
                let last = sub.position.clone().unwrap_or_else(|| position.clone());
                let _ = ready.send(Ok(JoinReply {
                    position,
                    recovered,
                    last,
                }));
                None
            }
            None => {
                tracing::debug!(channel = %sub.channel, recovered, ?position, "re-joined");
                sub.push(ChannelEvent::Resubscribed {
                    recovered,
                    position,
                })
            }
        }
    }

    /// The `leave` before a lagged subscription's re-join was answered: join again.
    fn on_resync_left(&self, st: &mut State, id: u64, token: u64) -> Option<Waker> {
        let channels = &mut st.channels;
        let sub = channels.subs.get_mut(&token)?;
        if sub.phase != Phase::Leaving(id) {
            return None;
        }
        sub.phase = Phase::Idle;
        let link = st.link.as_ref()?;
        self.rejoin(channels, link, token)
    }

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

    /// The next event of subscription `token` (for [`Subscription`]'s `poll_next`).
    fn poll_channel(&self, token: u64, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let channels = &mut st.channels;
        let Some(sub) = channels.subs.get_mut(&token) else {
            return Poll::Ready(None);
        };
        if let Some(event) = sub.queue.pop_front() {
            if sub.lagged && sub.queue.is_empty() && !sub.closed {
                // Drained after an overflow: join again from the last buffered position.
                match (sub.phase, &st.link) {
                    (Phase::Joined, Some(link)) => {
                        let channel = sub.channel.clone();
                        if let Some(id) = self.send_leave(
                            link,
                            &mut channels.calls,
                            &channel,
                            ChannelCall::Resync { token },
                        ) && let Some(sub) = channels.subs.get_mut(&token)
                        {
                            sub.phase = Phase::Leaving(id);
                        }
                    }
                    (Phase::Idle, Some(link)) => {
                        // On failure nothing else is buffered: the Closed event comes next,
                        // from this very poll's caller, so there is no one else to wake.
                        let _ = self.rejoin(channels, link, token);
                    }
                    // Disconnected: the next session joins it. Otherwise underway already.
                    _ => {}
                }
            }
            return Poll::Ready(Some(event));
        }
        if sub.closed {
            return Poll::Ready(None);
        }
        match &mut sub.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => sub.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A session opened: the `join` frames of every live subscription, to be written first.
    /// Lagged subscriptions whose application has not drained them wait for that.
    pub(crate) fn channels_link_up(&self, channels: &mut Channels) -> (Vec<Bytes>, Vec<Waker>) {
        let mut frames = Vec::new();
        let mut wakers = Vec::new();
        let mut failed = Vec::new();
        let tokens: Vec<u64> = channels.subs.keys().copied().collect();
        for token in tokens {
            let Some(sub) = channels.subs.get_mut(&token) else {
                continue;
            };
            if sub.closed {
                continue;
            }
            if sub.lagged && !sub.queue.is_empty() {
                continue;
            }
            if sub.ready.is_none() && sub.queue.len() >= sub.capacity {
                // The application is not reading: the replay would not fit either.
                wakers.extend(sub.overflow());
                continue;
            }
            match self.prepare_join(&mut channels.calls, token, sub) {
                Ok(bytes) => frames.push(bytes),
                Err(error) => failed.push((token, error)),
            }
        }
        for (token, error) in failed {
            wakers.extend(channels.fail(token, error));
        }
        (frames, wakers)
    }

    /// A session ended: nothing is joined any more; leaves in flight are done (the server
    /// forgot the connection's subscriptions). Server-side subscriptions end with `error`.
    pub(crate) fn channels_link_down(
        &self,
        channels: &mut Channels,
        error: &CallError,
    ) -> Option<Waker> {
        for sub in channels.subs.values_mut() {
            sub.phase = Phase::Idle;
        }
        for (_, call) in channels.calls.drain() {
            if let ChannelCall::Leave { reply: Some(reply) } = call {
                let _ = reply.send(Ok(()));
            }
        }
        channels.server.end_all(self.server_capacity(), error)
    }

    /// The client is done: first joins fail, subscriptions get `Closed`, the server-side
    /// subscriptions' stream ends.
    pub(crate) fn channels_finish(&self, channels: &mut Channels) -> Vec<Waker> {
        let closed = CallError::closed();
        let mut wakers: Vec<Waker> = self
            .channels_link_down(channels, &closed)
            .into_iter()
            .collect();
        wakers.extend(channels.server.finish(self.server_capacity(), &closed));
        let tokens: Vec<u64> = channels.subs.keys().copied().collect();
        wakers.extend(
            tokens
                .into_iter()
                .filter_map(|token| channels.fail(token, CallError::closed())),
        );
        wakers
    }
}

/// Detaches a subscription from the client when dropped.
pub(crate) struct Attachment {
    inner: Arc<Inner>,
    token: u64,
    armed: bool,
}

impl Attachment {
    pub(crate) fn new(inner: Arc<Inner>, token: u64) -> Self {
        Self {
            inner,
            token,
            armed: true,
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.armed {
            self.inner.detach_channel(self.token, None);
        }
    }
}

/// A subscription to a channel, from [`Client::join`](crate::Client::join): a
/// [`Stream`] of [`ChannelEvent`]s.
///
/// - Publications come in offset order, each once. The subscription outlives reconnects:
///   after every new session the client joins the channel again with `since` = the
///   position of the last publication it received, yields
///   [`ChannelEvent::Resubscribed`], then the publications missed meanwhile (or, with
///   `recovered: false`, tells the application to reload its state).
/// - Memory is bounded: at most [`JoinOptions::buffer`](crate::JoinOptions::buffer) events
///   wait for the application. Past that the client stops buffering, yields
///   [`ChannelEvent::Lagged`], and recovers the missed publications from the server's
///   history once the application has caught up. The connection never waits for a slow
///   subscription.
/// - The server may end the subscription (a `left` frame). When it says its stream of the
///   channel was interrupted (code `UNAVAILABLE`), the client joins again with `since`, as
///   after a reconnect: [`ChannelEvent::Resubscribed`] follows, then what was missed. Any
///   other end is final: [`ChannelEvent::Closed`], and no re-join after later reconnects.
/// - The stream ends (`None`) after [`ChannelEvent::Closed`].
/// - [`Subscription::leave`] leaves and waits for the server's answer; dropping the
///   subscription sends `leave` without waiting.
///
/// A client has at most one subscription per channel: a second
/// [`Client::join`](crate::Client::join) of the same channel fails with
/// [`CallErrorKind::AlreadyJoined`](crate::CallErrorKind::AlreadyJoined) until this one is
/// left or dropped. Share the events with a broadcast channel if several tasks need them.
pub struct Subscription {
    attachment: Attachment,
    channel: String,
    position: Position,
    recovered: bool,
    last: Position,
    done: bool,
}

impl Subscription {
    pub(crate) fn new(attachment: Attachment, channel: String, reply: JoinReply) -> Self {
        Self {
            attachment,
            channel,
            position: reply.position,
            recovered: reply.recovered,
            last: reply.last,
            done: false,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's position when it was first joined: its epoch and the offset of its
    /// latest publication then (from the `res` of the `join`).
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Whether the first join recovered every publication after
    /// [`JoinOptions::since`](crate::JoinOptions::since): they are the first events. `false`
    /// without `since`, or when the server could not provide them (the application must
    /// then load its state some other way).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The position up to which this stream has yielded the channel's publications: the
    /// offset of the last publication yielded, in the epoch of the last join (after a
    /// [`ChannelEvent::Resubscribed`] with `recovered: false`, that event's position). Store
    /// it and pass it as [`JoinOptions::since`](crate::JoinOptions::since) to resume later.
    pub fn last_position(&self) -> &Position {
        &self.last
    }

    /// Leaves the channel: sends `leave` and waits for its answer (within
    /// [`ClientOptions::call_timeout`](crate::ClientOptions::call_timeout)). No event is
    /// yielded after this. Succeeds at once when the client is disconnected or closed: the
    /// server has no subscription to end then.
    pub async fn leave(mut self) -> Result<(), CallError> {
        self.attachment.armed = false;
        let inner = self.attachment.inner.clone();
        let (tx, rx) = oneshot::channel();
        inner.detach_channel(self.attachment.token, Some(tx));
        match tokio::time::timeout(inner.options.call_timeout, rx).await {
            Ok(Ok(result)) => result,
            // The connection went away with the leave in flight (or could not send it).
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(CallError::timeout()),
        }
    }
}

impl Stream for Subscription {
    type Item = ChannelEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this
            .attachment
            .inner
            .poll_channel(this.attachment.token, cx);
        match &polled {
            Poll::Ready(Some(ChannelEvent::Publication(publication))) => {
                this.last.offset = publication.offset;
            }
            Poll::Ready(Some(ChannelEvent::Resubscribed {
                recovered: false,
                position,
            })) => this.last = position.clone(),
            Poll::Ready(Some(ChannelEvent::Closed(_)) | None) => this.done = true,
            _ => {}
        }
        polled
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .field("recovered", &self.recovered)
            .field("last_position", &self.last)
            .field("done", &self.done)
            .finish()
    }
}
