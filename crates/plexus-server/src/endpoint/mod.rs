//! The endpoint: the [`Server`] a user builds ([`ServerBuilder`], `builder.rs`), the HTTP
//! upgrade that starts a session (`upgrade.rs`), `serve` with its own accept loop and a
//! graceful shutdown (`serve.rs`), health checks (`health.rs`), strict mode (`strict.rs`),
//! raw socket routes (`raw.rs`) and the deflate offer the WebSocket layer is given
//! (`offer.rs`).

mod builder;
mod health;
mod held_upgrade;
mod offer;
mod raw;
mod serve;
mod strict;
mod upgrade;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::{BuildError, ServerBuilder, random_node_id};
pub use health::Readiness;
pub use strict::{StrictModeError, check_strict};

use crate::config::EndpointConfig;
use crate::guard::ConnectionLimiter;
use crate::hub::Hub;
use crate::session::SessionEnv;

/// The cookie read for a credential unless configured otherwise.
pub const DEFAULT_AUTH_COOKIE: &str = "plexus_token";

struct ServerInner {
    /// What every session of this server shares.
    env: Arc<SessionEnv>,
    config: EndpointConfig,
    shutdown: CancellationToken,
    /// The connections' tasks, waited for at shutdown.
    tasks: TaskTracker,
    limiter: ConnectionLimiter,
    /// The raw socket endpoints (see `Server::raw_routes`).
    raw: Vec<raw::ServedRaw>,
    /// The task announcing this node among the nodes, until it is done.
    announcing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The nodes `/health/cluster` last read from the engine, and when.
    nodes: tokio::sync::Mutex<Option<(tokio::time::Instant, Vec<crate::hub::NodeInfo>)>>,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        // A server dropped without a shutdown stops announcing itself.
        self.shutdown.cancel();
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

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with an empty router and default configuration.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The hub: publish to channels, presence, history, reach a connection by id.
    pub fn hub(&self) -> &Hub {
        &self.inner.env.hub
    }

    /// The relay, when the server is one (see `ServerBuilder::relay`).
    pub fn relay(&self) -> Option<&crate::relay::Relay> {
        self.inner.env.relay.as_ref()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.env.node
    }

    /// The endpoint configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.config
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.inner.env.open.load(Ordering::Relaxed)
    }

    /// An axum router serving the WebSocket endpoint at `path`; merge it into your app.
    ///
    /// # Panics
    ///
    /// When `path` is not an exact path (see [`Server::try_route`]).
    pub fn route(&self, path: &str) -> axum::Router {
        match self.try_route(path) {
            Ok(router) => router,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Server::route`], or why `path` cannot serve the protocol: it must start with `/`,
    /// and a prefix path (`/app/*`) is only for foreign-client raw sockets.
    pub fn try_route(&self, path: &str) -> Result<axum::Router, crate::raw::EndpointError> {
        let path = crate::raw::PathPattern::exact(path, "protocol")?;
        Ok(axum::Router::new()
            .route(&path, get(upgrade_handler))
            .with_state(self.clone()))
    }

    /// Starts a graceful shutdown: new upgrades get 503, calls in flight may finish up to
    /// the drain timeout, then every connection is closed with 1001.
    pub fn shutdown(&self) {
        self.inner.env.shutting_down.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        self.inner.env.hub.kick_all();
        // Off the list of nodes now, rather than when its presence lapses: once the
        // announcement has stopped, so that it cannot come after.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let hub = self.inner.env.hub.clone();
            let announcing = self.inner.announcing.lock().ok().and_then(|mut a| a.take());
            let withdraw = async move {
                if let Some(announcing) = announcing {
                    let _ = announcing.await;
                }
                hub.withdraw_node().await;
            };
            self.inner.tasks.spawn_on(withdraw, &runtime);
        }
    }

    /// Completes once every connection has ended after [`Server::shutdown`].
    pub async fn wait_closed(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

async fn upgrade_handler(State(server): State<Server>, request: Request) -> Response {
    server.upgrade(request).await
}
