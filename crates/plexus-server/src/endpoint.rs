//! The server: its builder, the axum upgrade handler and `serve` with graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use plexus_protocol::Codec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::{AuthError, AuthRequest, Authenticator, credential_from_request};
use crate::channel::{Hub, Namespaces};
use crate::config::EndpointConfig;
use crate::conn::{self, Accepted, ConnectionHandle, DisconnectReason};
use crate::guard::{ConnectionLimiter, StrictModeError, check_strict};
use crate::principal::Principal;
use crate::rpc::handler::BoxFuture;
use crate::rpc::router::Router;

type ConnectHook = Arc<dyn Fn(ConnectionHandle) -> BoxFuture<()> + Send + Sync>;
type DisconnectHook =
    Arc<dyn Fn(ConnectionHandle, DisconnectReason) -> BoxFuture<()> + Send + Sync>;

pub(crate) struct ServerInner {
    pub(crate) router: Router,
    pub(crate) config: EndpointConfig,
    pub(crate) node: String,
    pub(crate) extensions: Arc<http::Extensions>,
    pub(crate) on_connect: Option<ConnectHook>,
    pub(crate) on_disconnect: Option<DisconnectHook>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) connections: AtomicUsize,
    pub(crate) hub: Hub,
    /// Set when the shutdown starts; connections look at it once per turn of their loop.
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
    pub(crate) auth: Option<AuthSettings>,
    /// The permission every connection must hold (none: anyone authenticated may connect).
    pub(crate) connect_permission: Option<String>,
    pub(crate) limiter: ConnectionLimiter,
}

/// How an authenticating endpoint finds and checks credentials.
pub(crate) struct AuthSettings {
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) cookie: String,
}

/// The cookie read for a credential unless configured otherwise.
pub const DEFAULT_AUTH_COOKIE: &str = "plexus_token";

impl ServerInner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Authenticates a credential (from the upgrade, a `hello` or a refresh) and checks the
    /// connect permission.
    pub(crate) async fn authenticate(
        &self,
        request: AuthRequest<'_>,
    ) -> Result<Principal, AuthError> {
        let Some(auth) = &self.auth else {
            return Ok(Principal::anonymous());
        };
        if request.credential.is_none() {
            return Err(AuthError::not_authorized("missing credential"));
        }
        let principal = auth.authenticator.authenticate(request).await?;
        self.check_connect_permission(&principal)?;
        Ok(principal)
    }

    pub(crate) fn check_connect_permission(&self, principal: &Principal) -> Result<(), AuthError> {
        match &self.connect_permission {
            Some(permission) if !principal.can(permission) => Err(AuthError::forbidden(format!(
                "the `{permission}` permission is needed to connect"
            ))),
            _ => Ok(()),
        }
    }
}

/// A plexus server: a router of methods and an endpoint configuration. Cheap to clone.
///
/// Mount it in your own axum app with [`Server::route`] (or call [`Server::upgrade`] from
/// your own handler), or run it alone with [`Server::serve`].
#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    router: Router,
    config: EndpointConfig,
    node: Option<String>,
    extensions: http::Extensions,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    namespaces: Namespaces,
    engine: Option<Arc<dyn plexus_engine::Engine>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    auth_cookie: String,
    connect_permission: Option<String>,
    strict: bool,
}

impl ServerBuilder {
    /// Enables channels: the namespaces and their options. Without it, `join`, `leave`
    /// and `pub` get `NOT_FOUND`.
    pub fn channels(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// The engine carrying channels (positions, history, presence) and messages for
    /// connections on other nodes. Default: an in-memory engine of this node alone.
    pub fn engine(mut self, engine: Arc<dyn plexus_engine::Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Authenticates every connection with `authenticator`. The credential is read from
    /// the upgrade request (`Authorization: Bearer`, the auth cookie, `?token=`): an invalid
    /// one gets HTTP 401 (403 when valid but not allowed) before the upgrade. Without one,
    /// the server waits for the client's `hello` and answers `welcome`, or `reject` and
    /// close 4001/4003. Connections whose credential expires are asked for a fresh one
    /// (`$refresh`) and closed with 4001 when none comes in time.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// The cookie holding the credential (default `plexus_token`).
    pub fn auth_cookie(mut self, name: impl Into<String>) -> Self {
        self.auth_cookie = name.into();
        self
    }

    /// A permission every connection must hold; a credential without it is refused with
    /// `FORBIDDEN` (HTTP 403, or `reject` and 4003).
    pub fn connect_permission(mut self, permission: impl Into<String>) -> Self {
        self.connect_permission = Some(permission.into());
        self
    }

    /// Strict mode: every method must declare its permission (`Router::requires` or
    /// `Router::public`) and every channel namespace its access (`ChannelOptions::require`
    /// or `ChannelOptions::public_access`), or the server does not start.
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// The methods the server serves.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Limits, timeouts and compression.
    pub fn config(mut self, config: EndpointConfig) -> Self {
        self.config = config;
        self
    }

    /// This node's id, sent in `welcome` (default: random).
    pub fn node_id(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// A value handlers can read with `CallContext::extension::<T>()`.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// Runs after a connection's `welcome` has been sent, in its own task so that it may call
    /// the client. The connection serves calls meanwhile: a value a handler needs from the
    /// hook (`ConnectionHandle::insert_extension`) may not be there yet for the very first
    /// calls.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |conn| Box::pin(hook(conn))));
        self
    }

    /// Runs once a connection has ended, with the reason.
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionHandle, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_disconnect = Some(Arc::new(move |conn, reason| Box::pin(hook(conn, reason))));
        self
    }

    /// The server, or, in strict mode, what lacks a permission declaration.
    pub fn try_build(self) -> Result<Server, StrictModeError> {
        if self.strict {
            check_strict(&self.router, &self.namespaces)?;
        }
        Ok(self.build_unchecked())
    }

    /// The server.
    ///
    /// # Panics
    ///
    /// In strict mode, when a method or namespace lacks a permission declaration (use
    /// [`ServerBuilder::try_build`] to handle that).
    pub fn build(self) -> Server {
        match self.try_build() {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    fn build_unchecked(self) -> Server {
        let limits = &self.config.limits;
        let limiter = ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip);
        let node = self
            .node
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
        let node_for_hub = node.clone();
        Server {
            inner: Arc::new(ServerInner {
                router: self.router,
                config: self.config,
                node,
                extensions: Arc::new(self.extensions),
                on_connect: self.on_connect,
                on_disconnect: self.on_disconnect,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                connections: AtomicUsize::new(0),
                hub: Hub::with_engine(
                    self.namespaces,
                    self.engine
                        .unwrap_or_else(|| Arc::new(plexus_engine::MemoryEngine::new())),
                    &node_for_hub,
                ),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                auth: self.authenticator.map(|authenticator| AuthSettings {
                    authenticator,
                    cookie: self.auth_cookie,
                }),
                connect_permission: self.connect_permission,
                limiter,
            }),
        }
    }
}

impl Server {
    /// A builder with an empty router and default configuration.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            router: Router::new(),
            config: EndpointConfig::default(),
            node: None,
            extensions: http::Extensions::new(),
            on_connect: None,
            on_disconnect: None,
            namespaces: Namespaces::new(),
            engine: None,
            authenticator: None,
            auth_cookie: DEFAULT_AUTH_COOKIE.to_owned(),
            connect_permission: None,
            strict: false,
        }
    }

    /// The hub: publish to channels, presence, history, reach a connection by id.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The endpoint configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.config
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// An axum router serving the WebSocket endpoint at `path`; merge it into your app.
    pub fn route(&self, path: &str) -> axum::Router {
        axum::Router::new()
            .route(path, get(upgrade_handler))
            .with_state(self.clone())
    }

    /// Upgrades one HTTP request to a plexus connection; for use from your own axum handler.
    pub async fn upgrade(&self, request: Request) -> Response {
        if self.inner.shutdown.is_cancelled() {
            return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").into_response();
        }
        let (mut parts, _body) = request.into_parts();
        let offered = parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let chosen = offered
            .as_deref()
            .and_then(|list| Codec::negotiate(Some(list)));
        // The upgrade itself stays ours, so that the connection's socket can be shared with
        // publishers (`conn::SharedSocket`); yawc answers the handshake (accept key, agreed
        // extensions) holding a stand-in.
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return (
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request",
            )
                .into_response();
        };
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        let upgrade = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(status) => {
                return (status, "expected a WebSocket upgrade request").into_response();
            }
        };
        // Against cross-site WebSocket hijacking: a browser page from another origin.
        if !self.inner.config.origins.check(&parts.headers) {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        // Without the peer's address (an app served without connect info) every client
        // counts as one address.
        let ip = remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let slot = match self.inner.limiter.try_acquire(ip) {
            Ok(slot) => slot,
            Err(refusal) => return (refusal.http_status(), refusal.to_string()).into_response(),
        };
        // Credentials in the upgrade are checked before upgrading; without any, the client
        // may still authenticate in band with `hello`.
        let principal = match &self.inner.auth {
            None => Some(Principal::anonymous()),
            Some(auth) => {
                match credential_from_request(&parts.headers, parts.uri.query(), &auth.cookie) {
                    None => None,
                    Some(credential) => {
                        let request = AuthRequest::new(&parts.headers)
                            .with_credential(Some(&credential))
                            .with_remote(remote);
                        match self.inner.authenticate(request).await {
                            Ok(principal) => Some(principal),
                            Err(e) => {
                                return (e.http_status(), e.message().to_owned()).into_response();
                            }
                        }
                    }
                }
            }
        };
        let options = self.inner.config.ws_options();
        let (mut response, _stand_in) = match upgrade.upgrade(options.clone()) {
            Ok(pair) => pair,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        let extensions = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(codec) = chosen {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(codec.subprotocol()),
            );
        }
        let accepted = Accepted {
            codec: chosen.unwrap_or(Codec::Json),
            remote,
            query: parts.uri.query().map(str::to_owned),
            headers: detach_headers(&parts.headers),
            principal,
            slot,
        };
        let inner = self.inner.clone();
        let handshake_timeout = self.inner.config.limits.handshake_timeout;
        // A compressed connection sends small messages uncompressed (yawc's threshold), and
        // only those may be written directly.
        let max_direct_len = match extensions {
            Some(_) => self.inner.config.compression_threshold.saturating_sub(1),
            None => usize::MAX,
        };
        self.inner.tasks.spawn(async move {
            let upgraded = match tokio::time::timeout(handshake_timeout, on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => return tracing::debug!(error = %e, "upgrade failed"),
                Err(_) => {
                    return tracing::debug!(
                        "upgrade did not complete within the handshake timeout"
                    );
                }
            };
            let queue = Arc::new(conn::OutboundQueue::new(inner.config.limits.outbound_queue));
            let socket = conn::SharedSocket::new(
                queue.clone(),
                Box::new(hyper_util::rt::TokioIo::new(upgraded)),
                accepted.codec.is_binary(),
                max_direct_len,
            );
            match yawc::WebSocket::from_stream_with_extensions(
                socket,
                yawc::Role::Server,
                extensions.as_deref(),
                options,
            ) {
                Ok(ws) => conn::run(ws, queue, inner, accepted).await,
                Err(e) => tracing::debug!(error = %e, "cannot set up the agreed extensions"),
            }
        });
        response.map(axum::body::Body::new)
    }

    /// Starts a graceful shutdown: new upgrades get 503, calls in flight may finish up to
    /// the drain timeout, then every connection is closed with 1001.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        self.inner.hub.kick_all();
    }

    /// Completes once every connection has ended after [`Server::shutdown`].
    pub async fn wait_closed(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Serves `app` (which should include [`Server::route`]) on `listener` until `signal`
    /// completes, then shuts down gracefully: stop accepting, let calls in flight finish up
    /// to the drain timeout, close every connection with 1001, and return.
    ///
    /// Each accepted TCP connection must send its HTTP request head within the handshake
    /// timeout, or it is dropped: a client that opens sockets and sends nothing (or trickles
    /// bytes) cannot hold them open.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: axum::Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let server = self.clone();
        tokio::spawn(async move {
            signal.await;
            server.shutdown();
        });
        let shutdown = self.inner.shutdown.clone();
        let header_timeout = self.inner.config.limits.handshake_timeout;
        let http = TaskTracker::new();
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            _ = shutdown.cancelled() => break,
                        }
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let service = app.clone().map_request(
                move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    request.map(axum::body::Body::new)
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(service);
            let shutdown = shutdown.clone();
            http.spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let connection = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades();
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "http connection ended");
                        }
                    }
                    _ = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(listener);
        http.close();
        // Connections get the drain timeout plus time for their close handshakes.
        let deadline = self.inner.config.limits.drain_timeout + Duration::from_secs(3);
        let all_closed = async {
            http.wait().await;
            self.wait_closed().await;
        };
        if tokio::time::timeout(deadline, all_closed).await.is_err() {
            tracing::warn!("some connections did not close in time");
        }
        Ok(())
    }
}

/// Copies the headers a handler may want into allocations of their own. hyper's header
/// values are slices of its 8-16 KiB read buffer, so keeping them as they are would keep that
/// whole buffer alive for the life of the connection. The headers of the WebSocket handshake
/// itself mean nothing once it is done and are left out.
fn detach_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    const HANDSHAKE: [header::HeaderName; 5] = [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ];
    let mut detached = http::HeaderMap::new();
    for (name, value) in headers {
        if HANDSHAKE.contains(name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            detached.append(name.clone(), value);
        }
    }
    detached
}

async fn upgrade_handler(State(server): State<Server>, request: Request) -> Response {
    server.upgrade(request).await
}
