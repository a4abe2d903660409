//! Calls the server makes to the client ([`ConnectionHandle::request`],
//! [`ConnectionHandle::stream`]) and requests other connections make of it through the
//! relay ([`ConnectionHandle::forward`]): the table of those waiting for an answer, and the
//! stream their items arrive on. The connection's session routes the client's answers here.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use plexus_protocol::{ErrorBody, ErrorCode, Frame, IntoPayload, Payload};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::ConnectionHandle;
use super::forwarded::Forwarded;
use super::queue::Outbound;
use crate::error::CallError;

/// How many items a stream opened by the server may have in transit before the consumer
/// reads them; credit is granted back as it does.
const SERVER_STREAM_WINDOW: u32 = 64;

/// What a stream the server opened receives: an item, its end (`None`), or its error.
type StreamEvent = Result<Option<Payload>, ErrorBody>;

/// A call the server made to the client, waiting for its answer.
enum Pending {
    Request(oneshot::Sender<Result<Payload, ErrorBody>>),
    Stream(mpsc::Sender<StreamEvent>),
}

/// The calls waiting for the client.
#[derive(Default)]
struct Table {
    pending: HashMap<u64, Pending>,
    /// Requests forwarded from other connections, by id: in the order they came, which is
    /// the order of their deadlines (a relay gives them all the same timeout). Made at the
    /// first (a relay's providers only), so that other connections pay one pointer, not a
    /// map's 24 bytes.
    #[allow(clippy::box_collection)]
    forwarded: Option<Box<BTreeMap<u64, Forwarded>>>,
}

impl Table {
    fn len(&self) -> usize {
        self.pending.len() + self.forwarded.as_ref().map_or(0, |f| f.len())
    }

    fn forwarded(&mut self) -> &mut BTreeMap<u64, Forwarded> {
        self.forwarded.get_or_insert_default()
    }

    fn take_forwarded(&mut self, id: u64) -> Option<Forwarded> {
        self.forwarded.as_mut()?.remove(&id)
    }
}

/// The locked table; records its size when unlocked.
struct Locked<'a> {
    table: MutexGuard<'a, Table>,
    waiting: &'a AtomicU32,
}

impl Deref for Locked<'_> {
    type Target = Table;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.table
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // At most `max`, a `u32`.
        let len = u32::try_from(self.table.len()).unwrap_or(u32::MAX);
        self.waiting.store(len, Ordering::Relaxed);
    }
}

/// The calls the server has in flight to one client, bounded.
pub(crate) struct ClientCalls {
    table: Mutex<Table>,
    /// How many calls wait, kept by [`Locked`] on every unlock, so that the session loop can
    /// ask "several calls waiting?" on each write without taking the lock.
    waiting: AtomicU32,
    next_id: AtomicU64,
    max: u32,
    /// Default timeout of a request.
    timeout: Duration,
}

impl ClientCalls {
    pub(crate) fn new(max: usize, timeout: Duration) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            waiting: AtomicU32::new(0),
            next_id: AtomicU64::new(1),
            max: u32::try_from(max).unwrap_or(u32::MAX),
            timeout,
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            table: self.table.lock().unwrap_or_else(|p| p.into_inner()),
            waiting: &self.waiting,
        }
    }

    /// Whether any call waits for the client.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many calls wait for the client (without taking the table's lock).
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed) as usize
    }

    /// Fails every call waiting (their senders are dropped; forwarded requests are answered
    /// with the provider gone). Called once the connection is marked ended: a call
    /// registered after that sees it under the same lock and is refused.
    pub(crate) fn clear(&self) {
        let (pending, forwarded) = {
            let mut table = self.lock();
            (std::mem::take(&mut table.pending), table.forwarded.take())
        };
        drop(pending);
        for call in forwarded.into_iter().flat_map(|f| f.into_values()) {
            call.provider_gone();
        }
    }

    /// Routes the client's answer (`res` or `err`) to call `id`.
    pub(crate) fn answer(&self, id: u64, answer: Result<Payload, ErrorBody>) {
        let mut table = self.lock();
        match table.pending.remove(&id) {
            Some(Pending::Request(tx)) => {
                let _ = tx.send(answer);
            }
            Some(Pending::Stream(tx)) => {
                let _ = tx.try_send(answer.map(Some));
            }
            None => {
                let forwarded = table.take_forwarded(id);
                drop(table);
                if let Some(call) = forwarded {
                    call.answer(answer);
                }
            }
        }
    }

    /// When the oldest forwarded request times out, if any waits.
    pub(crate) fn next_deadline(&self) -> Option<tokio::time::Instant> {
        if self.is_empty() {
            return None;
        }
        let table = self.lock();
        let oldest = table.forwarded.as_ref()?.values().next();
        oldest.map(|call| call.deadline)
    }

    /// Takes the forwarded requests whose deadline passed; their ids here, for `cancel`.
    pub(crate) fn expire(&self, now: tokio::time::Instant) -> Vec<u64> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut expired = Vec::new();
        {
            let mut table = self.lock();
            // Not `forwarded()`: a connection never forwarded to keeps no map.
            let Some(forwarded) = table.forwarded.as_mut() else {
                return Vec::new();
            };
            while let Some(entry) = forwarded.first_entry() {
                if entry.get().deadline > now {
                    break;
                }
                expired.push(entry.remove_entry());
            }
        }
        expired
            .into_iter()
            .map(|(id, call)| {
                call.timed_out();
                id
            })
            .collect()
    }

    /// Takes back forwarded request `id` (its caller stopped waiting): `None` when it was
    /// answered (or ended) already.
    pub(crate) fn withdraw(&self, id: u64) -> Option<Forwarded> {
        self.lock().take_forwarded(id)
    }

    /// Routes an `item` (`Some`) or `end` (`None`) of the client to stream `id`.
    pub(crate) fn stream_event(&self, id: u64, event: Result<Option<Payload>, ErrorBody>) {
        let mut table = self.lock();
        let pending = &mut table.pending;
        let Some(Pending::Stream(tx)) = pending.get(&id) else {
            return;
        };
        let last = !matches!(event, Ok(Some(_)));
        if tx.try_send(event).is_err() {
            // The client sent more than the credit it was given: end the stream with an error.
            if let Some(Pending::Stream(tx)) = pending.remove(&id) {
                let _ = tx.try_send(Err(ErrorBody::new(
                    ErrorCode::BAD_FRAME,
                    "the client sent more items than its credit allowed",
                )));
            }
        } else if last {
            pending.remove(&id);
        }
    }
}

impl ConnectionHandle {
    fn register(&self, pending: Pending) -> Result<PendingGuard, CallError> {
        if self.is_closed() {
            return Err(CallError::closed());
        }
        if self.raw_info().is_some() {
            return Err(CallError::raw_socket());
        }
        let calls = self.client_calls();
        let mut table = calls.lock();
        if self.is_closed() {
            return Err(CallError::closed());
        }
        if table.len() >= calls.max as usize {
            return Err(too_many_calls());
        }
        let id = calls.next_id.fetch_add(1, Ordering::Relaxed);
        table.pending.insert(id, pending);
        Ok(PendingGuard {
            conn: self.clone(),
            id,
            done: false,
        })
    }

    /// Forwards a caller's request of `method` to this client (see [`Forwarded`]); `call`
    /// makes the entry that answers the caller. Its id here, or `None` when the caller was
    /// answered at once (this connection is gone or has too many calls in flight).
    pub(crate) fn forward(
        &self,
        method: String,
        data: Payload,
        call: impl FnOnce(Box<str>) -> Forwarded,
    ) -> Option<u64> {
        let data = match data.into_payload(self.codec()) {
            Ok(data) => data,
            Err(e) => {
                let error = ErrorBody::new(ErrorCode::VALIDATION_ERROR, e.to_string());
                call(method.into()).answer(Err(error));
                return None;
            }
        };
        let calls = self.client_calls();
        let id = calls.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::Req {
            id,
            method,
            data,
            node: None,
        };
        let encoded = self.encode(&frame);
        let Frame::Req { method, .. } = frame else {
            unreachable!("built as a request")
        };
        let call = call(method.into());
        let bytes = match encoded {
            Ok(bytes) => bytes,
            Err(e) => {
                call.answer(Err(e.into_body()));
                return None;
            }
        };
        {
            let mut table = calls.lock();
            if self.is_closed() {
                drop(table);
                call.provider_gone();
                return None;
            }
            if table.len() >= calls.max as usize {
                drop(table);
                call.answer(Err(too_many_calls().into_body()));
                return None;
            }
            table.forwarded().insert(id, call);
        }
        // Queued after the entry: the answer cannot come before it.
        if let Err(e) = self.push(bytes) {
            if let Some(call) = calls.withdraw(id) {
                if e.is_closed() {
                    call.provider_gone();
                } else {
                    call.answer(Err(e.into_body()));
                }
            }
            return None;
        }
        Some(id)
    }

    /// The caller of forwarded request `id` stopped waiting: the client is told to stop.
    pub(crate) fn withdraw_forwarded(&self, id: u64) {
        let Some(call) = self.client_calls().withdraw(id) else {
            return;
        };
        call.withdrawn();
        if !self.is_closed()
            && let Ok(bytes) = self.encode(&Frame::Cancel { id })
        {
            let _ = self.shared.queue.try_push(Outbound::Frame(bytes));
        }
    }

    /// Calls method `method` on the client and waits for its answer, up to the endpoint's
    /// server-call timeout. `params` is any `&T: Serialize`, or a [`Payload`] sent as it is;
    /// `R` is any `DeserializeOwned` type, or [`Payload`] for the answer as it came.
    pub async fn request<R>(&self, method: &str, params: impl IntoPayload) -> Result<R, CallError>
    where
        R: DeserializeOwned + 'static,
    {
        self.request_timeout(method, params, self.client_calls().timeout)
            .await
    }

    /// Like [`ConnectionHandle::request`] with an explicit timeout. On timeout the client
    /// is sent `cancel` and the call fails with `TIMEOUT`.
    pub async fn request_timeout<R>(
        &self,
        method: &str,
        params: impl IntoPayload,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        R: DeserializeOwned + 'static,
    {
        let data = params
            .into_payload(self.codec())
            .map_err(|e| CallError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let mut guard = self.register(Pending::Request(tx))?;
        self.push(self.encode(&Frame::Req {
            id: guard.id,
            method: method.to_owned(),
            data,
            node: None,
        })?)?;
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => {
                guard.done = true;
                answer.map_err(CallError::from)?
            }
            Ok(Err(_)) => {
                guard.done = true;
                return Err(CallError::closed());
            }
            Err(_) => return Err(CallError::timeout()),
        };
        decode_answer(answer).map_err(CallError::from)
    }

    /// Opens a stream on the client: `method` is called with `params`, and its items arrive
    /// through the returned [`ClientStream`]. Dropping it sends `cancel`.
    pub async fn stream<T>(
        &self,
        method: &str,
        params: impl IntoPayload,
    ) -> Result<ClientStream<T>, CallError>
    where
        T: DeserializeOwned + 'static,
    {
        let data = params
            .into_payload(self.codec())
            .map_err(|e| CallError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        // Room for the whole window plus the final frame: a client that honours credit never
        // finds it full.
        let (tx, rx) = mpsc::channel(SERVER_STREAM_WINDOW as usize + 1);
        let guard = self.register(Pending::Stream(tx))?;
        self.push(self.encode(&Frame::Sub {
            id: guard.id,
            method: method.to_owned(),
            data,
            credit: Some(SERVER_STREAM_WINDOW),
            node: None,
        })?)?;
        Ok(ClientStream {
            guard,
            rx,
            consumed: 0,
            finished: false,
            _item: std::marker::PhantomData,
        })
    }
}

fn too_many_calls() -> CallError {
    CallError::new(
        ErrorCode::RATE_LIMITED,
        "too many calls to this client in flight",
    )
}

/// Removes a pending call when its caller stops waiting, and tells the client to stop.
struct PendingGuard {
    conn: ConnectionHandle,
    id: u64,
    done: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let removed = self
            .conn
            .client_calls()
            .lock()
            .pending
            .remove(&self.id)
            .is_some();
        if removed
            && !self.done
            && !self.conn.is_closed()
            && let Ok(bytes) = self.conn.encode(&Frame::Cancel { id: self.id })
        {
            let _ = self.conn.shared.queue.try_push(Outbound::Frame(bytes));
        }
    }
}

/// Items of a stream the server opened on the client. Ends with `None` after `end`; yields
/// one `Err` and ends if the client fails the stream or the connection closes.
pub struct ClientStream<T> {
    guard: PendingGuard,
    rx: mpsc::Receiver<StreamEvent>,
    consumed: u32,
    finished: bool,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + 'static> Stream for ClientStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let event = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        let item = match event {
            Some(Ok(Some(item))) => item,
            ended => {
                this.finished = true;
                this.guard.done = true;
                return Poll::Ready(match ended {
                    None => Some(Err(CallError::closed())),
                    Some(Err(e)) => Some(Err(e.into())),
                    _ => None,
                });
            }
        };
        this.consumed += 1;
        if this.consumed >= SERVER_STREAM_WINDOW / 2 {
            let n = std::mem::take(&mut this.consumed);
            if let Ok(bytes) = this.guard.conn.encode(&Frame::Credit {
                id: this.guard.id,
                n,
            }) {
                let _ = this.guard.conn.push(bytes);
            }
        }
        Poll::Ready(Some(item.decode_as().map_err(|e| {
            CallError::new(
                ErrorCode::VALIDATION_ERROR,
                format!(
                    "stream item does not fit at `{}`: {}",
                    e.path(),
                    e.message()
                ),
            )
        })))
    }
}

/// Decodes a client's answer to a request ([`Payload`] takes it as it is); one that does not
/// fit `R` is a `VALIDATION_ERROR` that says where.
pub(crate) fn decode_answer<R: DeserializeOwned + 'static>(
    answer: Payload,
) -> Result<R, ErrorBody> {
    answer.decode_as().map_err(|e| {
        ErrorBody::new(
            ErrorCode::VALIDATION_ERROR,
            format!(
                "the client's answer does not fit at `{}`: {}",
                e.path(),
                e.message()
            ),
        )
    })
}
