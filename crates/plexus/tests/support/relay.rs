//! What the relay and cluster tests share on the client side: a quick reconnect, waiting on
//! a `$watch` for a provider to come or go, and checking `SERVICE_OFFLINE`.

use std::time::Duration;

use futures_util::StreamExt;
use plexus::ErrorCode;
use plexus::client::{CallError, ReconnectOptions, ServiceEvent, ServiceWatch};
use serde_json::Value;

use super::within;

/// Reconnecting within a fraction of a second, so that tests wait on events, not backoff.
pub(crate) fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// Reads `watch` until an event satisfies `wanted` (bounded by `within`).
async fn until_event(watch: &mut ServiceWatch, what: &str, wanted: impl Fn(&ServiceEvent) -> bool) {
    within(what, async {
        while !wanted(
            &watch
                .next()
                .await
                .expect("watch open")
                .expect("watch event"),
        ) {}
    })
    .await;
}

/// Watches until `node` is online (in the first list or as an event).
pub(crate) async fn until_online(watch: &mut ServiceWatch, node: &str) {
    until_event(
        watch,
        &format!("{node} to be online"),
        |event| match event {
            ServiceEvent::Snapshot(list) => list.iter().any(|p| p.node == node),
            ServiceEvent::Online(p) => p.node == node,
            _ => false,
        },
    )
    .await;
}

/// Reads `watch` until `node` is announced offline.
pub(crate) async fn until_offline(watch: &mut ServiceWatch, node: &str) {
    until_event(
        watch,
        &format!("{node} to go offline"),
        |event| matches!(event, ServiceEvent::Offline { node: gone } if gone == node),
    )
    .await;
}

/// `error` is `SERVICE_OFFLINE` with `started` as given.
pub(crate) fn assert_offline(error: &CallError, started: bool) {
    assert_eq!(*error.code(), ErrorCode::SERVICE_OFFLINE, "{error:?}");
    let data: Value = error.data().expect("data").decode().expect("JSON data");
    assert_eq!(data["started"], started, "{error:?}");
}
