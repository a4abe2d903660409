//! [`ConnectionHandle`]: reach one connection from any task — call the client, notify it,
//! open a stream on it, or close it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;
use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, Frame, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::Signal;
use super::queue::{OutboundQueue, PushError};
use crate::error::CallError;
use crate::principal::Principal;

/// How many items a stream opened by the server may have in transit before the consumer
/// reads them; credit is granted back as it does.
const SERVER_STREAM_WINDOW: u32 = 64;

/// A message for the connection task's writer.
pub(crate) enum Outbound {
    /// An encoded frame to write as is.
    Frame(Bytes),
    /// A stream item of the client's call `id`, dropped if that call is no longer in flight.
    Item { id: u64, seq: u64, bytes: Bytes },
    /// The last frame of the client's call `id` (`res`, `err` or `end`); it leaves the
    /// in-flight table.
    Final { id: u64, seq: u64, bytes: Bytes },
    /// Encoded frames to write as they are, in order.
    Batch(Vec<Bytes>),
}

/// A call the server made to the client, waiting for its answer.
pub(crate) enum Pending {
    Request(oneshot::Sender<Result<Payload, ErrorBody>>),
    Stream(mpsc::Sender<Result<Option<Payload>, ErrorBody>>),
}

/// State of one connection shared between its task and every handle.
pub(crate) struct ConnShared {
    pub(crate) id: String,
    pub(crate) codec: Codec,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// Replaced when the client refreshes its credential.
    pub(crate) principal: std::sync::RwLock<Arc<Principal>>,
    /// Set when the principal is replaced: the connection task checks its calls again.
    pub(crate) principal_changed: std::sync::atomic::AtomicBool,
    /// The server's shared extensions.
    pub(crate) extensions: Arc<http::Extensions>,
    /// This connection's own typed values (empty, and unallocated, until one is inserted).
    pub(crate) local: Mutex<http::Extensions>,
    pub(crate) queue: Arc<OutboundQueue>,
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) max_pending: usize,
    pub(crate) call_timeout: Duration,
    /// Fires when someone asks the connection to close; the code is in `close_code`.
    pub(crate) close: Signal,
    pub(crate) close_code: OnceLock<(CloseCode, &'static str)>,
    /// Fires when the connection task has ended.
    pub(crate) gone: Signal,
    /// The channels the connection is subscribed to (or joining).
    pub(crate) channels: Mutex<HashSet<Arc<str>>>,
    /// Set (under `channels`' lock) once the connection has left the hub: no new ones.
    pub(crate) channels_closed: std::sync::atomic::AtomicBool,
    /// Most channels it may be subscribed to at once.
    pub(crate) max_subscriptions: usize,
}

/// A cloneable handle to one connection, usable from any task.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) shared: Arc<ConnShared>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionHandle {
    /// A handle to a connection that has no task: what it sends stays in its queue. For unit
    /// tests of code that takes a handle.
    #[cfg(test)]
    pub(crate) fn for_test(principal: Principal) -> Self {
        Self {
            shared: Arc::new(ConnShared {
                id: "test".to_owned(),
                codec: Codec::Json,
                remote: None,
                headers: HeaderMap::new(),
                query: None,
                principal: std::sync::RwLock::new(Arc::new(principal)),
                principal_changed: Default::default(),
                extensions: Arc::default(),
                local: Mutex::new(http::Extensions::new()),
                queue: Arc::new(OutboundQueue::new(16)),
                pending: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                max_pending: 16,
                call_timeout: Duration::from_secs(1),
                close: Signal::default(),
                close_code: OnceLock::new(),
                gone: Signal::default(),
                channels: Mutex::new(HashSet::new()),
                channels_closed: Default::default(),
                max_subscriptions: 16,
            }),
        }
    }

    /// The connection's id (as sent in `welcome`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The codec the connection speaks.
    pub fn codec(&self) -> Codec {
        self.shared.codec
    }

    /// The client's address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote
    }

    /// The headers of the upgrade request.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.headers
    }

    /// The query string of the upgrade request.
    pub fn query(&self) -> Option<&str> {
        self.shared.query.as_deref()
    }

    /// Who is connected: the identity and permissions resolved at the handshake, or at the
    /// last token refresh.
    pub fn principal(&self) -> Arc<Principal> {
        self.shared
            .principal
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the principal (after a token refresh).
    pub(crate) fn set_principal(&self, principal: Principal) {
        *self
            .shared
            .principal
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(principal);
        self.shared.principal_changed.store(true, Ordering::Release);
        self.shared.queue.kick();
    }

    /// A typed value: this connection's own (see [`ConnectionHandle::insert_extension`])
    /// if it has one of type `T`, else the server's (see `ServerBuilder::extension`).
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        let local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner());
        local
            .get::<T>()
            .or_else(|| self.shared.extensions.get::<T>())
            .cloned()
    }

    /// Stores a typed value for this connection (for example the session an `on_connect`
    /// hook looked up), returning the previous one of that type. Handlers read it with
    /// `CallContext::extension`.
    pub fn insert_extension<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.shared
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(value)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.gone.is_fired()
    }

    /// Wakes the connection's task without a frame.
    pub(crate) fn kick(&self) {
        self.shared.queue.kick();
    }

    /// Whether the connection has been asked to close (it may still be finishing).
    pub(crate) fn is_closing(&self) -> bool {
        self.shared.close.is_fired()
    }

    /// Completes when the connection has ended.
    pub async fn closed(&self) {
        self.shared.gone.fired().await
    }

    /// Asks the connection to close with `code` (the first request wins).
    pub fn close(&self, code: CloseCode, reason: &'static str) {
        let _ = self.shared.close_code.set((code, reason));
        self.shared.close.fire();
        self.shared.queue.kick();
    }

    /// Notes a subscription to `channel`, within the connection's limit.
    pub(crate) fn add_channel(&self, channel: &str) -> Result<(), ErrorBody> {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.shared.channels_closed.load(Ordering::Acquire) {
            return Err(ErrorBody::new(
                ErrorCode::UNAVAILABLE,
                "the connection is closed",
            ));
        }
        if channels.contains(channel) {
            return Ok(());
        }
        let limit = self.shared.max_subscriptions;
        if channels.len() >= limit {
            return Err(ErrorBody::new(
                ErrorCode::RATE_LIMITED,
                format!("a connection may join at most {limit} channels"),
            ));
        }
        channels.insert(channel.into());
        Ok(())
    }

    /// Forgets a subscription; whether there was one.
    pub(crate) fn remove_channel(&self, channel: &str) -> bool {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        channels.remove(channel)
    }

    /// Every subscription, forgotten.
    pub(crate) fn take_channels(&self) -> Vec<Arc<str>> {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.shared.channels_closed.store(true, Ordering::Release);
        channels.drain().collect()
    }

    /// The channels the connection is subscribed to (or joining).
    pub(crate) fn channels(&self) -> Vec<Arc<str>> {
        let channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        channels.iter().cloned().collect()
    }

    /// Whether the connection is subscribed to (or joining) `channel`.
    pub(crate) fn has_channel(&self, channel: &str) -> bool {
        let channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        channels.contains(channel)
    }

    /// How many items the outbound queue holds at most.
    pub(crate) fn queue_capacity(&self) -> usize {
        self.shared.queue.capacity()
    }

    /// The application data shown for this connection in presence.
    pub(crate) fn principal_info(&self) -> Option<Payload> {
        let principal = self.principal();
        let info = principal.info.as_ref()?;
        Payload::encode(Codec::Json, info).ok()
    }

    /// Queues frames that must go out together and in order (a join's reply and what the
    /// subscriber missed). They may exceed the queue's bound: their number is bounded by
    /// the channel's history.
    pub(crate) fn push_batch(&self, frames: Vec<Bytes>) {
        let _ = self.shared.queue.force_push(Outbound::Batch(frames));
    }

    /// Sends a notification whose params are already encoded (in any codec).
    pub(crate) fn notify_raw(&self, method: &str, data: Payload) -> Result<(), CallError> {
        let data = data
            .to_codec(self.shared.codec)
            .map_err(|e| CallError::new(ErrorCode::INTERNAL, e.to_string()))?;
        self.push(self.encode(&Frame::Ntf {
            method: method.to_owned(),
            data,
        })?)
    }

    /// Queues an encoded frame without waiting. A full queue means the client does not
    /// read fast enough: the connection is closed with 4008 and the frame is not sent.
    pub(crate) fn push(&self, bytes: Bytes) -> Result<(), CallError> {
        self.pushed(self.shared.queue.try_push(Outbound::Frame(bytes)))
    }

    /// Sends a publication like [`ConnectionHandle::push`], written straight to the socket
    /// when `direct` allows and the connection is idle.
    pub(crate) fn push_publication(&self, bytes: &Bytes, direct: bool) -> Result<(), CallError> {
        self.pushed(self.shared.queue.push_publication(bytes, direct))
    }

    fn pushed(&self, result: Result<(), PushError>) -> Result<(), CallError> {
        match result {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                if self.shared.close_code.get().is_none() {
                    tracing::warn!(conn = %self.shared.id, "outbound queue full: closing slow consumer");
                }
                self.close(CloseCode::SLOW_CONSUMER, "slow consumer");
                Err(CallError::new(
                    ErrorCode::UNAVAILABLE,
                    "the connection's outbound queue is full; it is being closed (4008)",
                ))
            }
            Err(PushError::Closed) => Err(CallError::closed()),
        }
    }

    fn encode(&self, frame: &Frame) -> Result<Bytes, CallError> {
        self.shared
            .codec
            .encode(frame)
            .map_err(|e| CallError::new(ErrorCode::INTERNAL, e.to_string()))
    }

    fn params<P: Serialize + ?Sized>(&self, params: &P) -> Result<Payload, CallError> {
        Payload::encode(self.shared.codec, params)
            .map_err(|e| CallError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))
    }

    /// Sends a notification to the client. Fails when the connection is closed or its queue
    /// is full (then the connection is closed with 4008).
    pub fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> Result<(), CallError> {
        let data = self.params(params)?;
        self.push(self.encode(&Frame::Ntf {
            method: method.to_owned(),
            data,
        })?)
    }

    fn register(&self, pending: Pending) -> Result<PendingGuard, CallError> {
        if self.is_closed() {
            return Err(CallError::closed());
        }
        let mut map = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.shared.max_pending {
            return Err(CallError::new(
                ErrorCode::RATE_LIMITED,
                "too many calls to this client in flight",
            ));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(id, pending);
        Ok(PendingGuard {
            conn: self.clone(),
            id,
            done: false,
        })
    }

    /// Calls method `method` on the client and waits for its answer, up to the endpoint's
    /// server-call timeout.
    pub async fn request<P, R>(&self, method: &str, params: &P) -> Result<R, CallError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_timeout(method, params, self.shared.call_timeout)
            .await
    }

    /// Like [`ConnectionHandle::request`] with an explicit timeout. On timeout the client
    /// is sent `cancel` and the call fails with `TIMEOUT`.
    pub async fn request_timeout<P, R>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let data = self.params(params)?;
        let payload = self.request_raw(method, data, timeout).await?;
        decode_answer(&payload).map_err(|e| CallError::new(e.code, e.message))
    }

    /// Calls the client with a raw payload and returns the raw answer.
    pub async fn request_raw(
        &self,
        method: &str,
        data: Payload,
        timeout: Duration,
    ) -> Result<Payload, CallError> {
        let (tx, rx) = oneshot::channel();
        let mut guard = self.register(Pending::Request(tx))?;
        self.push(self.encode(&Frame::Req {
            id: guard.id,
            method: method.to_owned(),
            data,
        })?)?;
        let outcome = tokio::time::timeout(timeout, rx).await;
        match outcome {
            Ok(Ok(answer)) => {
                guard.done = true;
                answer.map_err(CallError::from)
            }
            Ok(Err(_)) => {
                guard.done = true;
                Err(CallError::closed())
            }
            Err(_) => Err(CallError::timeout()),
        }
    }

    /// Opens a stream on the client: `method` is called with `params`, and its items arrive
    /// through the returned [`ClientStream`]. Dropping it sends `cancel`.
    pub async fn stream<P, T>(&self, method: &str, params: &P) -> Result<ClientStream<T>, CallError>
    where
        P: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let data = self.params(params)?;
        // Room for the whole window plus the final frame: a client that honours credit never
        // finds it full.
        let (tx, rx) = mpsc::channel(SERVER_STREAM_WINDOW as usize + 1);
        let guard = self.register(Pending::Stream(tx))?;
        self.push(self.encode(&Frame::Sub {
            id: guard.id,
            method: method.to_owned(),
            data,
            credit: Some(SERVER_STREAM_WINDOW),
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
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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
    rx: mpsc::Receiver<Result<Option<Payload>, ErrorBody>>,
    consumed: u32,
    finished: bool,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for ClientStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finished = true;
                this.guard.done = true;
                Poll::Ready(Some(Err(CallError::closed())))
            }
            Poll::Ready(Some(Ok(None))) => {
                this.finished = true;
                this.guard.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finished = true;
                this.guard.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(Some(item)))) => {
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
                Poll::Ready(Some(item.decode().map_err(|e| {
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
    }
}

/// Decodes a client's answer to a request; one that does not fit `R` is a
/// `VALIDATION_ERROR` that says where.
pub(crate) fn decode_answer<R: DeserializeOwned>(answer: &Payload) -> Result<R, ErrorBody> {
    answer.decode().map_err(|e| {
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
