//! Health checks for orchestrators and load balancers: `/health/live` (the process serves
//! HTTP), `/health/ready` (it takes new connections: not draining, and its engine has its
//! link to the broker) and `/health/cluster` (the live nodes this one sees).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::Server;

/// Why a server is not ready, or that it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Readiness {
    /// It takes new connections.
    Ready,
    /// It is shutting down: calls in flight finish, new upgrades get 503.
    Draining,
    /// Its engine has lost its link to the broker: channels and cross-node calls fail
    /// with `UNAVAILABLE` until it is back.
    EngineUnavailable,
}

#[derive(Serialize)]
struct Status {
    status: Readiness,
    node: String,
    connections: usize,
}

impl Server {
    /// Whether the server takes new connections, and why not.
    pub fn readiness(&self) -> Readiness {
        if self.inner.env.is_shutting_down() {
            Readiness::Draining
        } else if !self.hub().engine_available() {
            Readiness::EngineUnavailable
        } else {
            Readiness::Ready
        }
    }

    /// An axum router serving `GET /health/live` (200 while the server runs, draining
    /// included) and `GET /health/ready` (200 when [`Readiness::Ready`], 503 otherwise), each
    /// with a JSON body `{"status", "node", "connections"}` (`status`: `ready`, `draining` or
    /// `engine_unavailable`), and `GET /health/cluster`: `{"node", "nodes": [{"node",
    /// "relay", "started_at"}]}`, the live nodes of the cluster (see `Hub::nodes`; read from
    /// the engine at most once a second), or 503 with `{"node", "error"}` while the engine
    /// cannot say. Unauthenticated: merge it on a
    /// port only your infrastructure reaches if node ids and connection counts are private.
    pub fn health_routes(&self) -> axum::Router {
        axum::Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/health/cluster", get(cluster))
            .with_state(self.clone())
    }

    fn status(&self, status: Readiness) -> Json<Status> {
        Json(Status {
            status,
            node: self.node_id().to_owned(),
            connections: self.connection_count(),
        })
    }
}

async fn live(State(server): State<Server>) -> Response {
    server.status(server.readiness()).into_response()
}

async fn ready(State(server): State<Server>) -> Response {
    let readiness = server.readiness();
    let code = match readiness {
        Readiness::Ready => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, server.status(readiness)).into_response()
}

/// How long `/health/cluster` answers from what it last read: however often it is asked,
/// the engine is asked at most once per this.
const NODES_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

async fn cluster(State(server): State<Server>) -> Response {
    let node = server.node_id();
    // One reader at a time: the others wait for its answer and share it.
    let mut cached = server.inner.nodes.lock().await;
    let now = tokio::time::Instant::now();
    let fresh = cached
        .as_ref()
        .filter(|(at, _)| now.duration_since(*at) < NODES_FRESH);
    let nodes = match fresh {
        Some((_, nodes)) => nodes.clone(),
        None => match server.hub().nodes().await {
            Ok(nodes) => {
                *cached = Some((now, nodes.clone()));
                nodes
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the nodes");
                let body =
                    serde_json::json!({ "node": node, "error": "the engine cannot say now" });
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
        },
    };
    Json(serde_json::json!({ "node": node, "nodes": nodes })).into_response()
}
