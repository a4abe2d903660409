//! `/metrics`: the server's series in the Prometheus text format, from the
//! `metrics-exporter-prometheus` recorder (its own HTTP listener and push gateway are left
//! out: the route is served on the server's port, beside the WebSocket endpoint).

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Call latencies, in seconds: from well under a millisecond to ten seconds.
const CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Frames waiting when a connection's writer wakes up.
const QUEUE_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often histograms are compacted between scrapes: the recorder keeps each sample until
/// then, so this bounds that memory (at 100,000 calls a second, about 2 MB).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder for this process; the handle renders it.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("plexus_call_duration_seconds".into()),
            CALL_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("plexus_outbound_queue_depth".into()),
            QUEUE_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics`.
pub(crate) fn route(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(render))
        .with_state(handle)
}

async fn render(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}
