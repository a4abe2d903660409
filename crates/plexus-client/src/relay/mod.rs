//! Relays: serving as a provider through one, finding services, and holding several.
//!
//! A relay is a plexus server that routes `<Service>.<method>` calls to the connections
//! that provide `<Service>` (PROTOCOL.md, "Relay"). To the client a relayed call is an
//! ordinary call; what this module adds:
//!
//! - [`ClientOptions::provide`](crate::ClientOptions::provide): serve the client's
//!   [`Router`](crate::Router) as a provider, provided again after every reconnect
//!   ([`Client::provided`] says whether the relay took it);
//! - [`Client::services`], [`Client::watch_services`] and [`Client::wait_for_service`]
//!   (`$services` and `$watch`);
//! - per-call options: [`CallOptions::node`](crate::CallOptions::node) pinning,
//!   [`CallOptions::offline_retries`](crate::CallOptions::offline_retries),
//!   [`Request::fallback`](crate::Request::fallback) and
//!   [`StreamOptions::idle_timeout`](crate::StreamOptions::idle_timeout);
//! - [`Mesh`]: several relays at once, each call routed through one that knows the service.

mod discovery;
mod mesh;
mod provide;

pub use discovery::{Provider, ServiceEvent, ServiceWatch};
pub use mesh::Mesh;
pub use provide::Provided;

pub(crate) use provide::provide_on_welcome;

use crate::error::CallError;

/// Whether `error` is the relay's `SERVICE_OFFLINE` for a call that no provider started
/// (`"data":{"started":false}`), so that sending it again cannot run it twice.
pub(crate) fn offline_before_start(error: &CallError) -> bool {
    #[derive(serde::Deserialize)]
    struct Offline {
        started: bool,
    }
    error.is_remote()
        && *error.code() == plexus_protocol::ErrorCode::SERVICE_OFFLINE
        && error
            .data()
            .and_then(|data| data.decode::<Offline>().ok())
            .is_some_and(|offline| !offline.started)
}

/// The backoff before offline retry `n` (0-based): 100 ms doubling to 2 s.
pub(crate) fn offline_backoff(retry: u32) -> std::time::Duration {
    std::time::Duration::from_millis(100u64.saturating_mul(1 << retry.min(5)).min(2_000))
}
