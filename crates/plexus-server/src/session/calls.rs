//! The client's calls in flight, and the one way a call runs on a task of its own.
//!
//! Requests and hub operations are polled once inline (most finish at once and their reply
//! is written without a task switch); one that is not ready, every stream and every
//! notification still running is spawned by [`Session::spawn_call`]. Its last frame comes
//! back through the outbound queue as `Outbound::Final`, tagged with a sequence number
//! unique per call, so that the last frame (or a stream item) of a call cancelled meanwhile
//! is dropped even if the client reused its id: after `cancel`, nothing more is sent for it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Frame};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::Session;
use crate::conn::{ConnectionHandle, Outbound, OutboundQueue};
use crate::error::RpcError;
use crate::principal::Principal;
use crate::rpc::context::{CallState, CancelReason};
use crate::rpc::handler::{BoxFuture, BoxStream, Reply};

/// Granted credit beyond this is ignored (it would mean "unlimited" anyway) so that no
/// sequence of `credit` frames can overflow the semaphore.
const MAX_CREDIT: usize = 1 << 30;

/// A call of the client that has not answered yet.
pub(super) struct InFlight {
    seq: u64,
    /// Stops its task; `None` for a hub operation, which always runs to its end (a join
    /// half done must finish or undo itself).
    abort: Option<AbortHandle>,
    /// Its cancellation token and cleanups, when the handler took a `CallContext`.
    state: Option<Arc<CallState>>,
    /// The items a stream may still send.
    credit: Option<Arc<Semaphore>>,
    /// The permission the method requires: checked again when the principal changes.
    needs: Option<Arc<str>>,
    /// A relayed request waiting for a provider connected here: the provider and its id
    /// there, told to stop if this call stops first.
    forwarded_to: Option<(ConnectionHandle, u64)>,
}

impl InFlight {
    fn stop(self, reason: CancelReason) {
        if let Some(state) = &self.state {
            state.cancel(reason);
        }
        if let Some(abort) = self.abort {
            abort.abort();
        }
        if let Some((provider, id)) = self.forwarded_to {
            provider.withdraw_forwarded(id);
        }
    }
}

/// What a spawned call is, for the in-flight table.
pub(super) struct Spawned {
    pub(super) state: Option<Arc<CallState>>,
    pub(super) credit: Option<Arc<Semaphore>>,
    pub(super) needs: Option<Arc<str>>,
    /// Whether `cancel` may stop it.
    pub(super) abortable: bool,
}

/// The table of the client's calls in flight, and of its notifications still running.
#[derive(Default)]
pub(super) struct Calls {
    in_flight: HashMap<u64, InFlight>,
    /// Notification handlers still running, by sequence number.
    notifying: HashMap<u64, AbortHandle>,
    seq: u64,
}

impl Calls {
    /// Whether no call is in flight (notifications do not count).
    pub(super) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.in_flight.contains_key(&id)
    }

    pub(super) fn notifications(&self) -> usize {
        self.notifying.len()
    }

    /// A new call's sequence number.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Call `id` (sequence `seq`) was relayed without a task: its last frame comes through
    /// the outbound queue; `provider` is where it waits, if it was not answered at once.
    pub(super) fn forwarded(
        &mut self,
        id: u64,
        seq: u64,
        provider: Option<(ConnectionHandle, u64)>,
    ) {
        let entry = InFlight {
            seq,
            abort: None,
            state: None,
            credit: None,
            needs: None,
            forwarded_to: provider,
        };
        self.in_flight.insert(id, entry);
    }

    /// Whether an item of call `id` tagged `seq` still belongs to a call in flight.
    pub(super) fn is_current(&self, id: u64, seq: u64) -> bool {
        self.in_flight.get(&id).is_some_and(|call| call.seq == seq)
    }

    /// The last frame of call `id` (0: a notification) tagged `seq` arrived: whether to
    /// write it. The call leaves the table.
    pub(super) fn finished(&mut self, id: u64, seq: u64) -> bool {
        if id == 0 {
            self.notifying.remove(&seq);
            return true;
        }
        if self.is_current(id, seq) {
            self.in_flight.remove(&id);
            true
        } else {
            false
        }
    }

    /// The client cancelled call `id`.
    pub(super) fn cancel(&mut self, id: u64) {
        if let Some(call) = self.in_flight.remove(&id) {
            call.stop(CancelReason::Cancelled);
        }
    }

    /// The client granted `n` more items to stream `id`.
    pub(super) fn add_credit(&mut self, id: u64, n: u32) {
        if let Some(credit) = self.in_flight.get(&id).and_then(|c| c.credit.as_ref())
            && credit.available_permits() < MAX_CREDIT
        {
            credit.add_permits(n as usize);
        }
    }

    /// Stops the calls whose method needs a permission `principal` lacks; their ids.
    pub(super) fn revoke(&mut self, principal: &Principal) -> Vec<u64> {
        let revoked: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, call)| call.needs.as_deref().is_some_and(|p| !principal.can(p)))
            .map(|(id, _)| *id)
            .collect();
        for id in &revoked {
            if let Some(call) = self.in_flight.remove(id) {
                call.stop(CancelReason::Forbidden);
            }
        }
        revoked
    }

    /// Stops everything: the connection ended (for the server's shutdown when `shutdown`).
    pub(super) fn stop_all(&mut self, shutdown: bool) {
        let reason = if shutdown {
            CancelReason::Shutdown
        } else {
            CancelReason::Disconnected
        };
        for (_, call) in self.in_flight.drain() {
            call.stop(reason);
        }
        for (_, task) in self.notifying.drain() {
            task.abort();
        }
    }
}

impl Session {
    /// Checks a new call's id and the in-flight limit (and, for calls that a shutdown
    /// refuses, the drain); `false` when it was answered with an error instead.
    pub(super) fn admit(&mut self, id: u64, refused_while_draining: bool) -> bool {
        if refused_while_draining && self.draining.is_some() {
            self.error(
                Some(id),
                ErrorCode::UNAVAILABLE,
                "the server is shutting down".into(),
            );
            return false;
        }
        if self.calls.contains(id) {
            self.bad_frame(Some(id), format!("call id {id} is already in flight"));
            return false;
        }
        let max = self.env.limits.max_in_flight;
        if self.calls.len() >= max {
            self.error(
                Some(id),
                ErrorCode::RATE_LIMITED,
                format!("too many calls in flight (limit {max})"),
            );
            return false;
        }
        true
    }

    /// Runs a call on a task of its own: `start` gets the call's sequence number (a stream
    /// tags its items with it) and gives its future. The call's last frame (`None`: it
    /// answered otherwise) goes out through the outbound queue; a panic becomes `INTERNAL`.
    /// `id` 0 is a notification (its last frame is an error without id, if any); any other
    /// id enters the in-flight table as `call` says.
    pub(super) fn spawn_call(
        &mut self,
        id: u64,
        call: Option<Spawned>,
        start: impl FnOnce(u64) -> BoxFuture<Option<Frame>>,
    ) {
        let seq = self.calls.next_seq();
        let future = start(seq);
        self.spawn_call_as(id, seq, call, future);
    }

    /// [`Session::spawn_call`] for a call whose sequence number `seq` was taken already.
    pub(super) fn spawn_call_as(
        &mut self,
        id: u64,
        seq: u64,
        call: Option<Spawned>,
        future: BoxFuture<Option<Frame>>,
    ) {
        let queue = self.queue().clone();
        let codec = self.codec();
        let task = tokio::spawn(async move {
            let last = AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Some(panicked_frame(id)));
            let bytes = last.map_or_else(Bytes::new, |frame| encode_last(codec, id, &frame));
            let _ = queue.push(Outbound::Final { id, seq, bytes }).await;
        });
        let abort = task.abort_handle();
        match call {
            None => {
                self.calls.notifying.insert(seq, abort);
            }
            Some(call) => {
                let entry = InFlight {
                    seq,
                    abort: call.abortable.then_some(abort),
                    state: call.state,
                    credit: call.credit,
                    needs: call.needs,
                    forwarded_to: None,
                };
                self.calls.in_flight.insert(id, entry);
            }
        }
    }

    /// After a token refresh: calls in flight whose method needs a permission the new
    /// principal lacks are stopped and answered `FORBIDDEN`.
    pub(super) fn recheck_calls(&mut self) {
        self.handle
            .shared
            .principal_changed
            .store(false, std::sync::atomic::Ordering::Release);
        let principal = self.handle.principal();
        for id in self.calls.revoke(&principal) {
            let error = ErrorBody::new(
                ErrorCode::FORBIDDEN,
                "the refreshed credential does not allow this call",
            );
            self.reply(id, Err(error));
        }
    }
}

/// Runs a stream handler: sends each item once credit allows, and returns the final frame.
pub(super) async fn pump(
    start: BoxFuture<Result<BoxStream<Reply>, ErrorBody>>,
    codec: Codec,
    id: u64,
    seq: u64,
    queue: Arc<OutboundQueue>,
    credit: Option<Arc<Semaphore>>,
) -> Option<Frame> {
    let mut stream = match start.await {
        Ok(stream) => stream,
        Err(error) => {
            return Some(Frame::Err {
                id: Some(id),
                error,
            });
        }
    };
    loop {
        match stream.next().await {
            Some(Ok(data)) => {
                // Credit counts items only: take it for an item in hand, so that `end` (or
                // `err`) never waits for credit once the last granted item has gone out.
                if let Some(credit) = &credit {
                    match credit.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return Some(Frame::End { id }),
                    }
                }
                let Ok(bytes) = codec.encode(&Frame::Item { id, data }) else {
                    return Some(panicked_frame(id));
                };
                // Waiting here is the stream's backpressure: it goes no faster than the socket.
                if queue.push(Outbound::Item { id, seq, bytes }).await.is_err() {
                    return Some(Frame::End { id });
                }
            }
            Some(Err(error)) => {
                return Some(Frame::Err {
                    id: Some(id),
                    error,
                });
            }
            None => return Some(Frame::End { id }),
        }
    }
}

/// The answer frame of call `id` for `reply`.
pub(super) fn reply_frame(id: u64, reply: Reply) -> Frame {
    match reply {
        Ok(data) => Frame::Res { id, data },
        Err(error) => Frame::Err {
            id: Some(id),
            error,
        },
    }
}

/// Encodes a call's last frame; one that cannot be encoded becomes `INTERNAL`.
fn encode_last(codec: Codec, id: u64, frame: &Frame) -> Bytes {
    codec.encode(frame).unwrap_or_else(|e| {
        let error = RpcError::internal(e).into_body();
        codec
            .encode(&Frame::Err {
                id: (id != 0).then_some(id),
                error,
            })
            .unwrap_or_default()
    })
}

/// `INTERNAL` for a handler that panicked.
pub(super) fn panicked() -> ErrorBody {
    RpcError::internal("handler panicked").into_body()
}

/// The `err` frame of call `id` (0: a notification, no id) whose handler panicked.
fn panicked_frame(id: u64) -> Frame {
    Frame::Err {
        id: (id != 0).then_some(id),
        error: panicked(),
    }
}

/// Runs `f`, turning a panic into `None`.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Polls a future once with a no-op waker; a panic becomes an `INTERNAL` error.
pub(super) fn poll_once<T>(
    future: &mut BoxFuture<Result<T, ErrorBody>>,
) -> Option<Result<T, ErrorBody>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match guarded(|| future.as_mut().poll(&mut cx)) {
        Some(Poll::Ready(out)) => Some(out),
        Some(Poll::Pending) => None,
        None => Some(Err(panicked())),
    }
}
