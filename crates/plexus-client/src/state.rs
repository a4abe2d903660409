//! State shared by the client handles and the connection task: the calls in flight, the
//! offline queue and the link to the current connection. One mutex, never held across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use plexus_protocol::{ErrorBody, Frame, Payload};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::channel::Channels;
use crate::error::{CallError, ConnectError};
use crate::options::ClientOptions;
use crate::relay::Provided;
use crate::status::Status;
use plexus_protocol::Codec;

/// An encoded frame on its way out.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) kind: OutKind,
    pub(crate) bytes: Bytes,
}

/// What an [`Outbound`] frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutKind {
    /// A `req` or `sub` with this id.
    Call(u64),
    /// An `ntf`.
    Notification,
    /// A `cancel` or `credit`: never queued while disconnected.
    Control,
}

impl Outbound {
    fn call_id(&self) -> Option<u64> {
        match self.kind {
            OutKind::Call(id) => Some(id),
            _ => None,
        }
    }
}

/// The senders into the current connection's task, present while a session is open.
pub(crate) struct Link {
    /// Every frame, in order (bounded: senders wait when the socket is slow).
    pub(crate) out: mpsc::Sender<Outbound>,
    /// `cancel` and `credit` frames from synchronous code (drops, polls) when `out` is
    /// full; they may then overtake frames waiting in `out`.
    pub(crate) control: mpsc::UnboundedSender<Bytes>,
    /// `join` and `leave` frames, from synchronous code too, in the order they were made
    /// (a `leave` must not overtake the `join` before it, nor the reverse). Bounded by the
    /// subscriptions: each has at most one `join` or `leave` in flight, plus one `leave`
    /// when dropped.
    pub(crate) ordered: mpsc::UnboundedSender<Bytes>,
}

impl Link {
    /// Sends a control frame without waiting: in order when `out` has room.
    fn send_control(&self, bytes: Bytes) {
        let item = Outbound {
            kind: OutKind::Control,
            bytes,
        };
        if let Err(mpsc::error::TrySendError::Full(item)) = self.out.try_send(item) {
            let _ = self.control.send(item.bytes);
        }
    }
}

/// Where the answer to a call goes.
pub(crate) enum Waiter {
    Request(oneshot::Sender<Result<Payload, CallError>>),
    /// Bounded: one slot more than the items the stream may have in transit, so that its
    /// final event always fits.
    Stream(mpsc::Sender<StreamEvent>),
}

/// What a [`CallStream`](crate::CallStream) receives.
pub(crate) enum StreamEvent {
    Item(Payload),
    End,
    Error(CallError),
}

/// A call waiting for its answer.
pub(crate) struct Pending {
    waiter: Waiter,
    /// The encoded call, kept when it is retryable.
    retry: Option<Bytes>,
    /// Whether the call sits in the offline queue right now.
    queued: bool,
    /// Whether a stream already yielded items (then it is never re-sent).
    started: bool,
}

impl Pending {
    fn fail(self, error: CallError) {
        match self.waiter {
            Waiter::Request(tx) => {
                let _ = tx.send(Err(error));
            }
            Waiter::Stream(tx) => {
                let _ = tx.try_send(StreamEvent::Error(error));
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) link: Option<Link>,
    pub(crate) closed: bool,
    pub(crate) queue: VecDeque<Outbound>,
    pub(crate) pending: HashMap<u64, Pending>,
    pub(crate) conn_id: Option<String>,
    pub(crate) channels: Channels,
    /// Why the client stopped on its own, once it did.
    pub(crate) close_reason: Option<Arc<ConnectError>>,
}

/// Everything the client handles and the connection task share.
pub(crate) struct Inner {
    pub(crate) options: ClientOptions,
    pub(crate) url: Url,
    pub(crate) state: Mutex<State>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) errors: broadcast::Sender<ErrorBody>,
    /// Whether the relay took this client's `$provide` on the current session.
    pub(crate) provided: watch::Sender<Provided>,
    pub(crate) shutdown: CancellationToken,
    /// This value itself, for timers that must call back into it without keeping it alive.
    pub(crate) me: Weak<Inner>,
    next_id: AtomicU64,
}

impl Inner {
    pub(crate) fn new(url: Url, options: ClientOptions) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            options,
            url,
            state: Mutex::new(State::default()),
            status: watch::Sender::new(Status::Connecting),
            errors: broadcast::Sender::new(64),
            provided: watch::Sender::new(Provided::Pending),
            shutdown: CancellationToken::new(),
            me: me.clone(),
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping every call; keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn codec(&self) -> Codec {
        self.options.codec
    }

    /// A fresh call id: positive, incrementing, never reused by this client.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Encodes a frame to send, enforcing the message size limit.
    pub(crate) fn encode(&self, frame: &Frame) -> Result<Bytes, CallError> {
        let bytes = self.codec().encode(frame).map_err(CallError::encode)?;
        let max = self.options.max_message_size;
        if bytes.len() > max {
            return Err(CallError::too_large(bytes.len(), max));
        }
        Ok(bytes)
    }

    /// Registers a call and sends it, or queues it while disconnected (retryable calls
    /// only). The returned guard abandons the call (removes it, sends `cancel`) on drop.
    pub(crate) async fn start_call(
        self: &Arc<Self>,
        id: u64,
        bytes: Bytes,
        waiter: Waiter,
        retryable: bool,
    ) -> Result<CallGuard, CallError> {
        let out = {
            let mut st = self.lock();
            if st.closed {
                return Err(CallError::closed());
            }
            let queued = st.link.is_none();
            if queued {
                if !retryable {
                    return Err(CallError::not_connected());
                }
                if st.queue.len() >= self.options.offline_queue {
                    return Err(CallError::queue_full());
                }
                st.queue.push_back(Outbound {
                    kind: OutKind::Call(id),
                    bytes: bytes.clone(),
                });
            }
            st.pending.insert(
                id,
                Pending {
                    waiter,
                    retry: retryable.then(|| bytes.clone()),
                    queued,
                    started: false,
                },
            );
            st.link.as_ref().map(|link| link.out.clone())
        };
        let guard = CallGuard {
            inner: self.clone(),
            id,
            armed: true,
        };
        if let Some(out) = out {
            // If the connection ended meanwhile, its cleanup already failed or re-queued
            // the call (it was registered while the link was up).
            let _ = out
                .send(Outbound {
                    kind: OutKind::Call(id),
                    bytes,
                })
                .await;
        }
        Ok(guard)
    }

    /// Sends a notification, or queues it while disconnected.
    pub(crate) async fn send_notification(&self, bytes: Bytes) -> Result<(), CallError> {
        let mut item = Outbound {
            kind: OutKind::Notification,
            bytes,
        };
        // A link can end between taking its sender and sending; then the item comes back
        // and goes to the next link or to the queue. Two rounds are enough in practice.
        for _ in 0..4 {
            let out = {
                let mut st = self.lock();
                if st.closed {
                    return Err(CallError::closed());
                }
                match &st.link {
                    Some(link) => link.out.clone(),
                    None => {
                        if st.queue.len() >= self.options.offline_queue {
                            return Err(CallError::queue_full());
                        }
                        st.queue.push_back(item);
                        return Ok(());
                    }
                }
            };
            match out.send(item).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        Err(CallError::unavailable("connection is flapping"))
    }

    /// Sends a `cancel` or `credit` for a call that is still pending and was sent.
    pub(crate) fn send_control(&self, id: u64, frame: &Frame) {
        let st = self.lock();
        if let (Some(link), Some(pending)) = (&st.link, st.pending.get(&id))
            && !pending.queued
            && let Ok(bytes) = self.codec().encode(frame)
        {
            link.send_control(bytes);
        }
    }

    /// The caller gave up on call `id` (timeout or drop): forget it and cancel it.
    pub(crate) fn abandon(&self, id: u64) {
        let mut st = self.lock();
        let Some(pending) = st.pending.remove(&id) else {
            return;
        };
        if pending.queued {
            st.queue.retain(|item| item.call_id() != Some(id));
        } else if let Some(link) = &st.link
            && let Ok(bytes) = self.codec().encode(&Frame::Cancel { id })
        {
            link.send_control(bytes);
        }
    }

    /// A `res` arrived.
    pub(crate) fn on_result(&self, id: u64, data: Payload) {
        let mut st = self.lock();
        match st.pending.get(&id).map(|p| &p.waiter) {
            Some(Waiter::Request(_)) => {
                if let Some(Pending {
                    waiter: Waiter::Request(tx),
                    ..
                }) = st.pending.remove(&id)
                {
                    let _ = tx.send(Ok(data));
                }
            }
            Some(Waiter::Stream(_)) => {
                tracing::warn!(id, "server answered a stream with `res`; ignoring it")
            }
            None => {
                // Not a request or stream: a `join`, `leave` (or nothing known).
                drop(st);
                if !self.on_channel_result(id, data) {
                    tracing::debug!(id, "`res` for no pending call");
                }
            }
        }
    }

    /// An `err` with an id arrived.
    pub(crate) fn on_error(&self, id: u64, error: ErrorBody) {
        let pending = self.lock().pending.remove(&id);
        match pending {
            Some(pending) => pending.fail(CallError::remote(error)),
            None => {
                if !self.on_channel_error(id, error) {
                    tracing::debug!(id, "`err` for no pending call");
                }
            }
        }
    }

    /// An `item` arrived.
    pub(crate) fn on_item(&self, id: u64, data: Payload) {
        let mut st = self.lock();
        match st.pending.get_mut(&id) {
            Some(pending) => match &pending.waiter {
                Waiter::Stream(tx) if tx.capacity() <= 1 => {
                    // The server sent more than the window allows. Keep the last slot for
                    // the error, stop the stream and tell the server.
                    let _ = tx.try_send(StreamEvent::Error(CallError::flow_control()));
                    st.pending.remove(&id);
                    if let (Some(link), Ok(bytes)) =
                        (&st.link, self.codec().encode(&Frame::Cancel { id }))
                    {
                        link.send_control(bytes);
                    }
                }
                Waiter::Stream(tx) => {
                    pending.started = true;
                    let _ = tx.try_send(StreamEvent::Item(data));
                }
                Waiter::Request(_) => {
                    tracing::warn!(id, "server sent `item` for a request; ignoring it")
                }
            },
            None => tracing::debug!(id, "`item` for no pending stream"),
        }
    }

    /// An `end` arrived.
    pub(crate) fn on_end(&self, id: u64) {
        let mut st = self.lock();
        match st.pending.get(&id).map(|p| &p.waiter) {
            Some(Waiter::Stream(_)) => {
                if let Some(Pending {
                    waiter: Waiter::Stream(tx),
                    ..
                }) = st.pending.remove(&id)
                {
                    let _ = tx.try_send(StreamEvent::End);
                }
            }
            Some(Waiter::Request(_)) => {
                tracing::warn!(id, "server sent `end` for a request; ignoring it")
            }
            None => tracing::debug!(id, "`end` for no pending stream"),
        }
    }

    /// A session opened: installs its link and returns what to write before anything
    /// else: the `join` of every subscription (with `since`), then what waited in the
    /// offline queue, in order.
    pub(crate) fn install_link(&self, link: Link, conn_id: String) -> Vec<Bytes> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (mut flush, wakers) = self.channels_link_up(&mut st.channels);
        let queue = std::mem::take(&mut st.queue);
        flush.reserve(queue.len());
        for item in queue {
            match item.kind {
                OutKind::Call(id) => {
                    if let Some(pending) = st.pending.get_mut(&id) {
                        pending.queued = false;
                        flush.push(item.bytes);
                    }
                }
                OutKind::Notification => flush.push(item.bytes),
                OutKind::Control => {}
            }
        }
        st.link = Some(link);
        st.conn_id = Some(conn_id);
        drop(guard);
        for waker in wakers {
            waker.wake();
        }
        flush
    }

    /// A session ended: removes its link; notifications it had not written go back to the
    /// front of the offline queue, retryable calls are queued again, other calls fail.
    pub(crate) fn drop_link(&self, out: &mut mpsc::Receiver<Outbound>) {
        // Server-side subscriptions end with the connection.
        let ended = if self.shutdown.is_cancelled() {
            CallError::closed()
        } else {
            CallError::unavailable("connection lost")
        };
        let (failed, waker) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            st.link = None;
            // Said before any call fails, so that whoever sees a call fail with
            // `UNAVAILABLE` also sees the status that explains it (not `Connected`).
            if !self.shutdown.is_cancelled() {
                self.status.send_if_modified(|status| {
                    let dropped = *status == Status::Connected;
                    if dropped {
                        *status = Status::Reconnecting;
                    }
                    dropped
                });
            }
            self.provided.send_if_modified(|provided| {
                let changed = *provided != Provided::Pending;
                *provided = Provided::Pending;
                changed
            });
            let waker = self.channels_link_down(&mut st.channels, &ended);
            out.close();
            let mut unsent = Vec::new();
            while let Ok(item) = out.try_recv() {
                if item.kind == OutKind::Notification {
                    unsent.push(item);
                }
            }
            let mut retry = Vec::new();
            let mut failed = Vec::new();
            let ids: Vec<u64> = st.pending.keys().copied().collect();
            for id in ids {
                let Some(pending) = st.pending.get_mut(&id) else {
                    continue;
                };
                if pending.queued {
                    continue;
                }
                match (&pending.retry, pending.started) {
                    (Some(bytes), false) => {
                        pending.queued = true;
                        retry.push(Outbound {
                            kind: OutKind::Call(id),
                            bytes: bytes.clone(),
                        });
                    }
                    _ => {
                        if let Some(pending) = st.pending.remove(&id) {
                            failed.push(pending);
                        }
                    }
                }
            }
            retry.sort_by_key(Outbound::call_id);
            for item in unsent.into_iter().rev() {
                st.queue.push_front(item);
            }
            for item in retry.into_iter().rev() {
                st.queue.push_front(item);
            }
            (failed, waker)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        for pending in failed {
            pending.fail(CallError::unavailable("connection lost"));
        }
    }

    /// Records why the client stops on its own (before [`Inner::finish`]).
    pub(crate) fn set_close_reason(&self, reason: ConnectError) {
        self.lock().close_reason = Some(Arc::new(reason));
    }

    /// The client is done: every pending call fails, queued notifications are dropped.
    pub(crate) fn finish(&self) {
        let (pending, dropped, wakers) = {
            let mut st = self.lock();
            st.closed = true;
            st.link = None;
            let wakers = self.channels_finish(&mut st.channels);
            let dropped = st
                .queue
                .iter()
                .filter(|item| item.kind == OutKind::Notification)
                .count();
            st.queue.clear();
            (std::mem::take(&mut st.pending), dropped, wakers)
        };
        for waker in wakers {
            waker.wake();
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "client closed with notifications still in the offline queue"
            );
        }
        for (_, pending) in pending {
            pending.fail(CallError::closed());
        }
        self.status.send_replace(Status::Closed);
    }
}

/// Abandons a call when dropped before its answer arrived.
pub(crate) struct CallGuard {
    inner: Arc<Inner>,
    id: u64,
    armed: bool,
}

impl CallGuard {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The call finished: nothing to cancel.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.armed {
            self.inner.abandon(self.id);
        }
    }
}
