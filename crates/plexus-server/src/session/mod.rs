//! The session layer: one connection's life above its socket.
//!
//! A session greets the client (`hello`/`welcome`), owns the table of the client's calls in
//! flight, turns each frame into a call on its handler's router or the hub, answers the
//! server's calls to the client, keeps the credential fresh, and closes. It reaches the
//! rest of the server only through [`SessionEnv`]: the handlers, the hub, the admission
//! policy and the limits, so data flows one way: socket → connection (`crate::conn`) →
//! session → router / hub → engine.
//!
//! Files: `event_loop.rs` (the loop and its flags), `hello.rs` (the handshake and the
//! handler that takes the connection),
//! `dispatch.rs` (frames to calls), `calls.rs` (the in-flight table and the one way a call is
//! spawned), `channels.rs` (channel frames to the hub), `relay.rs` (calls for the relay's
//! providers), `refresh.rs` (`$refresh`).

mod calls;
mod channels;
mod dispatch;
mod event_loop;
mod hello;
mod refresh;
mod relay;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::FutureExt;
use http::HeaderMap;
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Frame};
use tokio::time::Instant;

use crate::auth::Admission;
use crate::config::Limits;
use crate::conn::{
    ConnectionHandle, ConnectionInfo, DisconnectReason, HandleLimits, OutboundQueue, Socket, Wire,
};
use crate::guard::{CallRateLimiter, ConnectionSlot};
use crate::hub::Hub;
use crate::principal::Principal;
use crate::relay::Relay;
use crate::rpc::handler::BoxFuture;
use crate::rpc::pool::{HandlerPool, Member};

pub(crate) use hello::{BeforeHello, HelloRules, await_hello, reject, welcome_frame};

use calls::Calls;
use dispatch::BadFrames;

/// Runs after a connection's `welcome`.
pub(crate) type ConnectHook = Arc<dyn Fn(ConnectionHandle) -> BoxFuture<()> + Send + Sync>;
/// Runs once a connection has ended.
pub(crate) type DisconnectHook =
    Arc<dyn Fn(ConnectionHandle, DisconnectReason) -> BoxFuture<()> + Send + Sync>;

/// What a session needs from the server around it, shared by every session of a server.
pub(crate) struct SessionEnv {
    /// The handlers new connections are given to in turn (one router, unless a pool).
    pub(crate) handlers: HandlerPool,
    /// Channels and connections, on this node and beyond.
    pub(crate) hub: Hub,
    /// Who may connect (`None`: everyone, anonymously).
    pub(crate) admission: Option<Arc<Admission>>,
    /// The relay, when this server is one: calls the connection's router does not serve go
    /// to its providers.
    pub(crate) relay: Option<Relay>,
    pub(crate) limits: Limits,
    /// This node's id, sent in `welcome`.
    pub(crate) node: String,
    /// The server's typed values, readable by every handler.
    pub(crate) extensions: Arc<http::Extensions>,
    pub(crate) on_connect: Option<ConnectHook>,
    pub(crate) on_disconnect: Option<DisconnectHook>,
    /// Set when the server starts shutting down; sessions look at it after a kick.
    pub(crate) shutting_down: AtomicBool,
    /// Sessions running now.
    pub(crate) open: AtomicUsize,
}

impl SessionEnv {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Why `handle`'s connection should close now, if it should: a close requested through
    /// its handle, or the server's shutdown.
    pub(crate) fn close_wanted(
        &self,
        handle: &ConnectionHandle,
    ) -> Option<(plexus_protocol::CloseCode, crate::conn::CloseReason)> {
        if let Some(requested) = handle.requested_close() {
            return Some(requested);
        }
        self.is_shutting_down().then_some((
            plexus_protocol::CloseCode::GOING_AWAY,
            crate::conn::CloseReason::Borrowed("server shutting down"),
        ))
    }

    /// Authenticates a credential (from the upgrade, a `hello` or a refresh) and checks the
    /// connect permission; everyone is anonymous when the server does not authenticate.
    pub(crate) async fn authenticate(
        &self,
        request: crate::auth::AuthRequest<'_>,
    ) -> Result<Principal, crate::auth::AuthError> {
        match &self.admission {
            Some(admission) => admission.authenticate(request).await,
            None => Ok(Principal::anonymous()),
        }
    }
}

/// What the upgrade established about a new connection.
pub(crate) struct Accepted {
    pub(crate) codec: Codec,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// `None`: the client must authenticate with `hello` before anything else.
    pub(crate) principal: Option<Principal>,
    /// The connection's place under the connection limits, given back when it ends.
    pub(crate) slot: ConnectionSlot,
}

/// One connection's session: its socket, its calls, its budgets.
struct Session {
    wire: Wire,
    handle: ConnectionHandle,
    env: Arc<SessionEnv>,
    /// The pool's handler that serves this connection's calls.
    handler: Arc<dyn Member>,
    calls: Calls,
    bad_frames: BadFrames,
    /// When the client was last heard from (any frame).
    last_seen: Instant,
    /// When the connection last had application traffic (for the idle timeout).
    last_call: Instant,
    /// Set when the server shuts down: calls in flight may finish until then.
    draining: Option<Instant>,
    /// Whether the client must send `hello` first.
    awaiting_hello: bool,
    /// Whether `welcome` was sent (hooks run only for such connections).
    welcomed: bool,
    call_rate: Option<CallRateLimiter>,
    publish_rate: Option<CallRateLimiter>,
    _slot: ConnectionSlot,
}

/// Serves one upgraded connection to its end: `ws` runs on a socket shared through `queue`
/// (see `conn::SharedSocket`).
///
/// Not an `async fn`: an async function's arguments keep their room in its future for as
/// long as it runs, even once moved into the session, and this future lives as long as the
/// connection. The session is built here and the future holds it once (measured in a debug
/// build: 3,340 -> 1,808 bytes). Only the pool's turn is taken before the future is first
/// polled; registration and counting wait for that.
pub(crate) fn run(
    ws: Socket,
    queue: Arc<OutboundQueue>,
    env: Arc<SessionEnv>,
    accepted: Accepted,
) -> impl Future<Output = ()> + Send + 'static {
    let info = ConnectionInfo {
        id: new_connection_id(),
        codec: accepted.codec,
        remote: accepted.remote,
        headers: accepted.headers,
        query: accepted.query,
        raw: None,
    };
    let awaiting_hello = accepted.principal.is_none();
    let handle = new_handle(&env, info, accepted.principal, queue.clone());
    let now = Instant::now();
    let limits = &env.limits;
    let mut session = Session {
        wire: Wire::new(ws, queue, accepted.codec.is_binary()),
        handler: env.handlers.next(),
        calls: Calls::default(),
        bad_frames: BadFrames::default(),
        last_seen: now,
        last_call: now,
        draining: None,
        awaiting_hello,
        welcomed: false,
        call_rate: limits.call_rate.map(CallRateLimiter::new),
        publish_rate: limits.publish_rate.map(CallRateLimiter::new),
        _slot: accepted.slot,
        handle,
        env,
    };
    async move {
        register_connection(&session.env, &session.handle);
        let span = tracing::debug_span!("conn", id = %session.handle.id(), remote = ?session.handle.remote_addr());
        let reason = tracing::Instrument::instrument(session.run(), span).await;
        let env = session.env.clone();
        let handle = session.handle.clone();
        forget_connection(&env, &handle).await;
        session.finish(&reason);
        let welcomed = session.welcomed;
        let handler = session.handler.clone();
        // Gives the connection's place under the limits back before anyone hears it ended.
        drop(session);
        count_closed(&env, &handle, &reason);
        if !welcomed {
            return;
        }
        // The handler that took the connection hears of its end before the shutdown completes.
        if AssertUnwindSafe(handler.disconnected(&handle, &reason))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(conn = %handle.id(), "a pool handler's `disconnected` panicked");
        }
        if let Some(hook) = env.on_disconnect.clone() {
            tokio::spawn(hook(handle, reason));
        }
    }
}

/// A new connection id: time-ordered, 32 hex digits.
pub(crate) fn new_connection_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The handle of a new connection, not yet known to anyone.
pub(crate) fn new_handle(
    env: &SessionEnv,
    info: ConnectionInfo,
    principal: Option<Principal>,
    queue: Arc<OutboundQueue>,
) -> ConnectionHandle {
    let limits = &env.limits;
    ConnectionHandle::new(
        info,
        principal.unwrap_or_default(),
        queue,
        env.extensions.clone(),
        HandleLimits {
            max_calls: limits.max_in_flight,
            call_timeout: limits.server_call_timeout,
            max_subscriptions: limits.max_subscriptions,
        },
    )
}

/// Counts a new connection as open and makes it reachable through the hub.
pub(crate) fn register_connection(env: &SessionEnv, handle: &ConnectionHandle) {
    env.open.fetch_add(1, Ordering::Relaxed);
    crate::metrics::server().connections_opened.increment(1);
    crate::metrics::server().connections_open.increment(1.0);
    env.hub.register(handle);
}

/// Forgets a connection that ended: the relay's providers, the hub's registry and channels.
pub(crate) async fn forget_connection(env: &SessionEnv, handle: &ConnectionHandle) {
    if let Some(relay) = &env.relay {
        relay.connection_ended(handle);
    }
    env.hub.unregister(handle).await;
}

/// Counts a connection as closed, once its place under the limits has been given back.
pub(crate) fn count_closed(env: &SessionEnv, handle: &ConnectionHandle, reason: &DisconnectReason) {
    env.open.fetch_sub(1, Ordering::Relaxed);
    // Counted closed before it stops counting as open: a scrape that sees it gone sees why.
    crate::metrics::connection_closed(reason);
    crate::metrics::server().connections_open.decrement(1.0);
    tracing::debug!(conn = %handle.id(), ?reason, "connection ended");
}

impl Session {
    fn codec(&self) -> Codec {
        self.handle.codec()
    }

    /// The connection's outbound queue (kept on its handle, not twice in the session).
    fn queue(&self) -> &Arc<OutboundQueue> {
        &self.handle.shared.queue
    }

    /// The whole session: the handshake, then the loop until the connection ends.
    async fn run(&mut self) -> DisconnectReason {
        if self.awaiting_hello
            && let Err(reason) = Box::pin(self.hello()).await
        {
            return reason;
        }
        // Boxed: the handler's future and its timer would otherwise keep their room in
        // this one for the life of the connection.
        if let Err(reason) = Box::pin(self.hand_over()).await {
            return reason;
        }
        if let Err(reason) = self.welcome().await {
            return reason;
        }
        self.serve().await
    }

    /// Stops everything the connection still runs and wakes everyone waiting on it.
    fn finish(&mut self, reason: &DisconnectReason) {
        let shutdown = matches!(
            reason,
            DisconnectReason::ServerClosed(plexus_protocol::CloseCode::GOING_AWAY, _)
        );
        self.calls.stop_all(shutdown);
        // Marked ended first: a call to this client registered from now on is refused, and
        // one registered before is failed by `clear` (dropping the senders).
        self.handle.mark_ended();
        self.handle.client_calls().clear();
    }

    // ---- what the session writes ---------------------------------------------------------

    /// Encodes a frame and queues it for the writer.
    fn write_frame(&mut self, frame: &Frame) {
        match self.codec().encode(frame) {
            Ok(bytes) => self.wire.push(bytes),
            Err(e) => tracing::error!(error = %e, "could not encode a frame"),
        }
    }

    /// Answers the client's call `id`.
    fn reply(&mut self, id: u64, reply: Result<plexus_protocol::Payload, ErrorBody>) {
        let frame = match reply {
            Ok(data) => Frame::Res { id, data },
            Err(error) => Frame::Err {
                id: Some(id),
                error,
            },
        };
        self.write_frame(&frame);
    }

    /// Sends an `err` (for call `id`, or without one).
    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: String) {
        self.write_frame(&Frame::Err {
            id,
            error: ErrorBody::new(code, message),
        });
    }
}
