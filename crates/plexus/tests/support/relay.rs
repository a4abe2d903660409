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

/// Watches until `node` is online (in the first list or as an event).
pub(crate) async fn until_online(watch: &mut ServiceWatch, node: &str) {
    within(&format!("{node} to be online"), async {
        loop {
            match watch
                .next()
                .await
                .expect("watch open")
                .expect("watch event")
            {
                ServiceEvent::Snapshot(list) if list.iter().any(|p| p.node == node) => break,
                ServiceEvent::Online(p) if p.node == node => break,
                _ => {}
            }
        }
    })
    .await;
}

/// Reads `watch` until `node` is announced offline.
pub(crate) async fn until_offline(watch: &mut ServiceWatch, node: &str) {
    within(&format!("{node} to go offline"), async {
        loop {
            match watch
                .next()
                .await
                .expect("watch open")
                .expect("watch event")
            {
                ServiceEvent::Offline { node: gone } if gone == node => break,
                _ => {}
            }
        }
    })
    .await;
}

/// `error` is `SERVICE_OFFLINE` with `started` as given.
pub(crate) fn assert_offline(error: &CallError, started: bool) {
    assert_eq!(*error.code(), ErrorCode::SERVICE_OFFLINE, "{error:?}");
    let data: Value = error.data().expect("data").decode().expect("JSON data");
    assert_eq!(data["started"], started, "{error:?}");
}
