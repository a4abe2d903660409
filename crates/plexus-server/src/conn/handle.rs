//! [`ConnectionHandle`]: reach one connection from any task — call the client, notify it,
//! open a stream on it, or close it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use http::HeaderMap;
use plexus_protocol::{CloseCode, Codec, ErrorCode, Frame, Payload};
use serde::Serialize;

use super::client_calls::ClientCalls;
use super::queue::{Outbound, OutboundQueue, PushError};
use super::subscriptions::Subscriptions;
use super::{CloseReason, RawMessage, Signal};
use crate::error::CallError;
use crate::principal::Principal;

/// What the upgrade established about a connection: fixed for its life.
pub(crate) struct ConnectionInfo {
    pub(crate) id: String,
    pub(crate) codec: Codec,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// What only a raw socket keeps (boxed: a protocol connection pays one pointer).
    pub(crate) raw: Option<Box<RawInfo>>,
}

/// What a raw socket's connection knows beyond a protocol connection.
pub(crate) struct RawInfo {
    /// The path of the upgrade request (the concrete one, under a prefix endpoint).
    pub(crate) path: Box<str>,
    /// The server's address of the connection, when known.
    pub(crate) local: Option<SocketAddr>,
    /// The subprotocol agreed at the upgrade, if any.
    pub(crate) subprotocol: Option<Box<str>>,
}

/// The bounds of what a handle keeps for its connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandleLimits {
    /// Calls the server may have in flight to the client.
    pub(crate) max_calls: usize,
    /// Default timeout of those calls.
    pub(crate) call_timeout: std::time::Duration,
    /// Channels the connection may be subscribed to at once.
    pub(crate) max_subscriptions: usize,
}

/// State of one connection shared between its task and every handle.
pub(crate) struct ConnShared {
    pub(crate) info: ConnectionInfo,
    /// Replaced when the client refreshes its credential.
    pub(crate) principal: RwLock<Arc<Principal>>,
    /// Set when the principal is replaced: the connection task checks its calls again.
    pub(crate) principal_changed: AtomicBool,
    /// The server's shared extensions.
    extensions: Arc<http::Extensions>,
    /// This connection's own typed values (empty, and unallocated, until one is inserted).
    local: Mutex<http::Extensions>,
    pub(crate) queue: Arc<OutboundQueue>,
    /// Calls the server made to the client, waiting for answers.
    pub(crate) calls: ClientCalls,
    /// Fires when someone asks the connection to close; the code is in `close_code`.
    pub(crate) close: Signal,
    pub(crate) close_code: OnceLock<(CloseCode, CloseReason)>,
    /// Fires when the connection task has ended.
    pub(crate) gone: Signal,
    /// The channels the connection is subscribed to (or joining).
    pub(crate) subscriptions: Subscriptions,
}

/// `principal` behind an `Arc`: anonymous connections share one (a server may hold many,
/// and each would otherwise keep an allocation of its own).
fn shared_principal(principal: Principal) -> Arc<Principal> {
    static ANONYMOUS: LazyLock<Arc<Principal>> = LazyLock::new(|| Arc::new(Principal::anonymous()));
    if principal == Principal::anonymous() {
        ANONYMOUS.clone()
    } else {
        Arc::new(principal)
    }
}

/// A cloneable handle to one connection, usable from any task.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(crate) shared: Arc<ConnShared>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.shared.info.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionHandle {
    /// A handle to a new connection whose frames go through `queue`.
    pub(crate) fn new(
        info: ConnectionInfo,
        principal: Principal,
        queue: Arc<OutboundQueue>,
        extensions: Arc<http::Extensions>,
        limits: HandleLimits,
    ) -> Self {
        Self {
            shared: Arc::new(ConnShared {
                info,
                principal: RwLock::new(shared_principal(principal)),
                principal_changed: AtomicBool::new(false),
                extensions,
                local: Mutex::new(http::Extensions::new()),
                queue,
                calls: ClientCalls::new(limits.max_calls, limits.call_timeout),
                close: Signal::default(),
                close_code: OnceLock::new(),
                gone: Signal::default(),
                subscriptions: Subscriptions::new(limits.max_subscriptions),
            }),
        }
    }

    /// A handle to a connection that has no task: what it sends stays in its queue. For unit
    /// tests of code that takes a handle.
    #[cfg(test)]
    pub(crate) fn for_test(principal: Principal) -> Self {
        let info = ConnectionInfo {
            id: "test".to_owned(),
            codec: Codec::Json,
            remote: None,
            headers: HeaderMap::new(),
            query: None,
            raw: None,
        };
        let limits = HandleLimits {
            max_calls: 16,
            call_timeout: std::time::Duration::from_secs(1),
            max_subscriptions: 16,
        };
        Self::new(
            info,
            principal,
            Arc::new(OutboundQueue::new(16)),
            Arc::default(),
            limits,
        )
    }

    /// The connection's id (as sent in `welcome`).
    pub fn id(&self) -> &str {
        &self.shared.info.id
    }

    /// The codec the connection speaks.
    pub fn codec(&self) -> Codec {
        self.shared.info.codec
    }

    /// The client's address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.info.remote
    }

    /// The headers of the upgrade request.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.info.headers
    }

    /// The query string of the upgrade request.
    pub fn query(&self) -> Option<&str> {
        self.shared.info.query.as_deref()
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

    /// Runs `f` with the principal, without cloning it.
    pub(crate) fn with_principal<R>(&self, f: impl FnOnce(&Principal) -> R) -> R {
        let principal = self.shared.principal.read();
        f(principal.as_deref().unwrap_or_else(|p| p.get_ref()))
    }

    /// Replaces the principal (after the `hello` or a token refresh) and wakes the
    /// connection's task to check its calls again.
    pub(crate) fn set_principal(&self, principal: Principal) {
        *self
            .shared
            .principal
            .write()
            .unwrap_or_else(|p| p.into_inner()) = shared_principal(principal);
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

    /// Marks the connection ended: everyone waiting on it wakes, and its queue closes.
    pub(crate) fn mark_ended(&self) {
        self.shared.gone.fire();
        self.shared.queue.close();
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

    /// Asks the connection to close with `code` and `reason` (the first request wins). The
    /// reason is cut to what a close frame can carry (123 bytes).
    pub fn close(&self, code: CloseCode, reason: impl Into<Cow<'static, str>>) {
        let _ = self
            .shared
            .close_code
            .set((code, super::close_reason(reason.into())));
        self.shared.close.fire();
        self.shared.queue.kick();
    }

    /// The close requested with [`ConnectionHandle::close`], if any.
    pub(crate) fn requested_close(&self) -> Option<(CloseCode, CloseReason)> {
        self.shared.close_code.get().cloned()
    }

    /// The channels this connection is subscribed to (or joining).
    pub(crate) fn subscriptions(&self) -> &Subscriptions {
        &self.shared.subscriptions
    }

    /// The calls the server made to this client.
    pub(crate) fn client_calls(&self) -> &ClientCalls {
        &self.shared.calls
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
            .to_codec(self.codec())
            .map_err(|e| CallError::new(ErrorCode::INTERNAL, e.to_string()))?;
        self.push(self.encode(&Frame::Ntf {
            method: method.to_owned(),
            data,
            node: None,
        })?)
    }

    /// What only a raw socket keeps; `None` for a protocol connection.
    pub(crate) fn raw_info(&self) -> Option<&RawInfo> {
        self.shared.info.raw.as_deref()
    }

    /// Queues a raw socket's message without waiting; a full queue closes the connection
    /// with 4008, as [`ConnectionHandle::push`] does.
    pub(crate) fn send_message(&self, message: RawMessage) -> Result<(), CallError> {
        if self.raw_info().is_none() {
            return Err(CallError::new(
                ErrorCode::NOT_FOUND,
                "a protocol connection takes frames of the protocol, not raw messages",
            ));
        }
        let (bytes, binary) = message.into_parts();
        self.pushed(
            self.shared
                .queue
                .try_push(Outbound::Message { bytes, binary }),
        )
    }

    /// Queues a raw socket's message, waiting while the queue is half full.
    pub(crate) async fn send_message_waiting(&self, message: RawMessage) -> Result<(), CallError> {
        let (bytes, binary) = message.into_parts();
        self.pushed(
            self.shared
                .queue
                .push(Outbound::Message { bytes, binary })
                .await,
        )
    }

    /// Queues an encoded frame without waiting. A full queue means the client does not
    /// read fast enough: the connection is closed with 4008 and the frame is not sent.
    pub(crate) fn push(&self, bytes: Bytes) -> Result<(), CallError> {
        if self.raw_info().is_some() {
            return Err(CallError::raw_socket());
        }
        self.pushed(self.shared.queue.try_push(Outbound::Frame(bytes)))
    }

    /// Sends a publication like [`ConnectionHandle::push`], written straight to the socket
    /// when `direct` allows and the connection is idle (then `Ok(true)`).
    pub(crate) fn push_publication(&self, bytes: &Bytes, direct: bool) -> Result<bool, CallError> {
        self.pushed(self.shared.queue.push_publication(bytes, direct))
    }

    fn pushed<T>(&self, result: Result<T, PushError>) -> Result<T, CallError> {
        match result {
            Ok(done) => Ok(done),
            Err(PushError::Full) => {
                if self.shared.close_code.get().is_none() {
                    tracing::warn!(conn = %self.id(), "outbound queue full: closing slow consumer");
                    crate::metrics::server().slow_consumer_cuts.increment(1);
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

    pub(crate) fn encode(&self, frame: &Frame) -> Result<Bytes, CallError> {
        self.codec()
            .encode(frame)
            .map_err(|e| CallError::new(ErrorCode::INTERNAL, e.to_string()))
    }

    pub(crate) fn params<P: Serialize + ?Sized>(&self, params: &P) -> Result<Payload, CallError> {
        Payload::encode(self.codec(), params)
            .map_err(|e| CallError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))
    }

    /// Sends a notification to the client. Fails when the connection is closed or its queue
    /// is full (then the connection is closed with 4008).
    pub fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) -> Result<(), CallError> {
        let data = self.params(params)?;
        self.push(self.encode(&Frame::Ntf {
            method: method.to_owned(),
            data,
            node: None,
        })?)
    }
}
