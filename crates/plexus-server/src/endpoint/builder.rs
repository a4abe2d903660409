//! [`ServerBuilder`]: what a server serves and how.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::raw::ServedRaw;
use super::strict::{StrictModeError, check_strict};
use super::{DEFAULT_AUTH_COOKIE, Server, ServerInner};
use crate::auth::{Admission, Authenticator};
use crate::channel::Namespaces;
use crate::config::EndpointConfig;
use crate::conn::{ConnectionHandle, DisconnectReason};
use crate::guard::ConnectionLimiter;
use crate::hub::{Hub, NodeInfo};
use crate::raw::{EndpointError, RawEndpoint};
use crate::relay::{Relay, RelayConfig};
use crate::rpc::pool::{HandlerPool, ProtocolHandler};
use crate::rpc::router::Router;
use crate::session::{ConnectHook, DisconnectHook, SessionEnv};

/// Builds a [`Server`].
pub struct ServerBuilder {
    /// The router, or the pool of handlers, new connections are given to.
    handlers: Handlers,
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
    relay: Option<RelayConfig>,
    raw: Vec<RawEndpoint>,
}

/// What the builder was told to serve the protocol endpoint with.
enum Handlers {
    /// Nothing: an empty router.
    Unset,
    Given(HandlerPool),
    /// `pool` with no handler, which cannot be built.
    EmptyPool,
}

/// A random node id, 12 hex digits: what a server is called unless given an id
/// (`ServerBuilder::node_id`).
pub fn random_node_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Why [`ServerBuilder::try_build`] refused to build a server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Strict mode: a method or namespace lacks a permission declaration.
    #[error(transparent)]
    Strict(#[from] StrictModeError),
    /// `ServerBuilder::pool` was given no handler.
    #[error("the protocol endpoint's handler pool is empty: give it at least one handler")]
    EmptyPool,
    /// An endpoint cannot be served as given.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

impl ServerBuilder {
    /// Serves a raw socket endpoint beside the protocol (see [`RawEndpoint`]); mount them
    /// all with `Server::raw_routes`. Its path is checked when the server is built.
    pub fn raw(mut self, endpoint: RawEndpoint) -> Self {
        self.raw.push(endpoint);
        self
    }

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

    /// Makes the server a relay: connections may provide services (`$provide`), and a call
    /// of `<Service>.<method>` the connection's router does not serve (or that pins a
    /// provider with `node`) goes to a provider of that service. `$services` and `$watch` show them.
    pub fn relay(mut self, config: RelayConfig) -> Self {
        self.relay = Some(config);
        self
    }

    /// The methods the server serves. Replaces a router or pool given before.
    pub fn router(mut self, router: Router) -> Self {
        self.handlers = Handlers::Given(HandlerPool::one(router));
        self
    }

    /// A pool of handlers in place of one router: each new connection goes to the next of
    /// `handlers`, round-robin (connection 1 to the first, 2 to the second, ...), which
    /// serves all of its calls with its router and may refuse it (see
    /// [`ProtocolHandler`]). Replaces a router or pool given before; an empty pool cannot be
    /// built.
    pub fn pool<H: ProtocolHandler>(mut self, handlers: impl IntoIterator<Item = H>) -> Self {
        self.handlers = HandlerPool::of(handlers).map_or(Handlers::EmptyPool, Handlers::Given);
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

    /// The server; or, in strict mode, what lacks a permission declaration (in any router of
    /// a pool); or an empty pool; or a raw endpoint that cannot be served as given (a bad or
    /// doubled path, a prefix on a handshaked socket, a foreign-client socket told to read
    /// the `hello`, no handler).
    pub fn try_build(mut self) -> Result<Server, BuildError> {
        let handlers = match std::mem::replace(&mut self.handlers, Handlers::Unset) {
            Handlers::Unset => HandlerPool::one(Router::new()),
            Handlers::Given(pool) => pool,
            Handlers::EmptyPool => return Err(BuildError::EmptyPool),
        };
        if self.strict {
            for router in handlers.routers() {
                check_strict(router, &self.namespaces)?;
            }
        }
        let raw = serve_raw(std::mem::take(&mut self.raw), self.strict)?;
        Ok(self.build_unchecked(handlers, raw))
    }

    /// The server.
    ///
    /// # Panics
    ///
    /// In strict mode, when a method or namespace lacks a permission declaration, and when
    /// a pool is empty or a raw endpoint cannot be served (use [`ServerBuilder::try_build`]
    /// to handle those).
    pub fn build(self) -> Server {
        match self.try_build() {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    fn build_unchecked(self, handlers: HandlerPool, raw: Vec<ServedRaw>) -> Server {
        let limits = &self.config.limits;
        let limiter = ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip);
        let node = self.node.unwrap_or_else(random_node_id);
        let engine = self
            .engine
            .unwrap_or_else(|| Arc::new(plexus_engine::MemoryEngine::new()));
        let admission = self.authenticator.map(|authenticator| {
            Arc::new(Admission {
                authenticator,
                cookie: self.auth_cookie,
                connect_permission: self.connect_permission,
            })
        });
        let hub = Hub::with_engine(self.namespaces, engine, &node);
        let shutdown = CancellationToken::new();
        let announcing = hub.announce_node(
            NodeInfo::starting(&node, self.relay.is_some()),
            shutdown.clone(),
        );
        let relay = self.relay.map(Relay::new);
        if let Some(relay) = &relay {
            relay.attach(&hub);
        }
        let env = SessionEnv {
            handlers,
            hub,
            admission,
            relay,
            limits: self.config.limits.clone(),
            node,
            extensions: Arc::new(self.extensions),
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            shutting_down: AtomicBool::new(false),
            open: AtomicUsize::new(0),
        };
        Server {
            inner: Arc::new(ServerInner {
                env: Arc::new(env),
                config: self.config,
                shutdown,
                announcing: std::sync::Mutex::new(announcing),
                nodes: tokio::sync::Mutex::new(None),
                tasks: TaskTracker::new(),
                limiter,
                raw,
            }),
        }
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            handlers: Handlers::Unset,
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
            relay: None,
            raw: Vec::new(),
        }
    }
}

/// The raw endpoints with their paths, or the first that cannot be served.
fn serve_raw(endpoints: Vec<RawEndpoint>, strict: bool) -> Result<Vec<ServedRaw>, EndpointError> {
    let mut routes = std::collections::HashSet::new();
    let mut served = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let (pattern, handlers) = endpoint.check(strict)?;
        for route in pattern.routes() {
            if !routes.insert(route) {
                return Err(EndpointError::Duplicate(endpoint.path.clone()));
            }
        }
        served.push(ServedRaw {
            endpoint,
            pattern,
            handlers,
        });
    }
    Ok(served)
}
