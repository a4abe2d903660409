//! The client's `join` and `leave` calls, their answers, and what the start and end of a
//! session do to the subscriptions.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;

use bytes::Bytes;
use plexus_protocol::{ErrorBody, ErrorCode, Frame, Payload, Position};
use tokio::sync::oneshot;

use super::ChannelEvent;
use super::registry::{ChannelCall, Channels, JoinReply, Phase, Sub};
use super::wire::JoinResult;
use crate::error::CallError;
use crate::state::{Inner, Link, State};

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
    pub(super) fn rejoin(&self, channels: &mut Channels, link: &Link, token: u64) -> Option<Waker> {
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
    pub(super) fn send_leave(
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
            join_failures: 0,
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

    /// The subscription's handle is gone (dropped, or [`Subscription::leave`](super::Subscription::leave)): forget it
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
            // A re-join the server cannot serve yet (its engine lost its broker, say) is tried
            // again with backoff, as a reconnect is, rather than ending the subscription.
            Err(error) if sub.ready.is_none() && error.code == ErrorCode::UNAVAILABLE => {
                sub.phase = Phase::Idle;
                let delay = self.options.reconnect.delay(sub.join_failures);
                sub.join_failures = sub.join_failures.saturating_add(1);
                tracing::debug!(channel = %sub.channel, ?delay, "re-join unavailable; retrying: {}", error.message);
                let me = self.me.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(inner) = me.upgrade() {
                        inner.retry_join(token);
                    }
                });
                return None;
            }
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
        sub.join_failures = 0;
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

    /// Joins subscription `token` again after a re-join was refused as unavailable, unless
    /// something else (a reconnect, a leave) took care of it meanwhile.
    fn retry_join(&self, token: u64) {
        let waker = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(link) = &st.link else { return };
            let channels = &mut st.channels;
            match channels.subs.get(&token) {
                Some(sub) if sub.phase == Phase::Idle && !sub.closed && !sub.lagged => {}
                _ => return,
            }
            self.rejoin(channels, link, token)
        };
        if let Some(waker) = waker {
            waker.wake();
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
