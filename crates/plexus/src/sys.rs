//! The built-in methods of `plexus serve`: useful to try a connection, and to test and
//! benchmark the server.

use std::time::Duration;

use futures_util::stream;
use plexus_server::{Payload, Router, RpcError};
use serde::{Deserialize, Serialize};

/// Longest `sys.sleep` and `sys.count` interval accepted: one day.
const MAX_MS: u64 = 86_400_000;

/// Params of `sys.count`.
#[derive(Debug, Deserialize)]
pub struct CountParams {
    /// How many integers to yield (0 to n-1).
    pub n: u64,
    /// Milliseconds between items (default 0).
    #[serde(default)]
    pub interval_ms: u64,
}

/// Params of `sys.sleep`.
#[derive(Debug, Deserialize)]
pub struct SleepParams {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

/// The answer of `sys.sleep`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Slept {
    /// How long it slept.
    pub slept: u64,
}

/// `ms` as a duration, or a validation error naming `field` past one day.
pub fn check_ms(field: &str, ms: u64) -> Result<Duration, RpcError> {
    if ms > MAX_MS {
        return Err(
            RpcError::validation(format!("`{field}` is at most {MAX_MS}"))
                .with_data(&serde_json::json!({ "path": field })),
        );
    }
    Ok(Duration::from_millis(ms))
}

/// A router with the built-in methods:
///
/// - `sys.echo` (request): returns its params unchanged;
/// - `sys.count` (stream): params `{"n":N,"interval_ms":I}`, yields 0 to N-1, one every I ms;
/// - `sys.sleep` (request): params `{"ms":M}`, answers `{"slept":M}` after M ms; stops at
///   once when cancelled.
///
/// Each is declared public (open to every connection), so a server in strict mode may
/// serve them.
pub fn router() -> Router {
    Router::new()
        .request("sys.echo", |params: Payload| async move {
            Ok::<_, RpcError>(params)
        })
        .public()
        .stream("sys.count", |p: CountParams| async move {
            let interval = check_ms("interval_ms", p.interval_ms)?;
            let items = stream::unfold(0u64, move |i| async move {
                if i >= p.n {
                    return None;
                }
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Some((Ok::<_, RpcError>(i), i + 1))
            });
            Ok::<_, RpcError>(items)
        })
        .public()
        .request("sys.sleep", |p: SleepParams| async move {
            // Cancellation drops this future, which stops the sleep at once.
            tokio::time::sleep(check_ms("ms", p.ms)?).await;
            Ok::<_, RpcError>(Slept { slept: p.ms })
        })
        .public()
}
