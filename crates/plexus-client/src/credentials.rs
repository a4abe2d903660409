//! Where the client's credential comes from: a hook called before every connection attempt
//! and for each `$refresh`, bounded in time.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::timeout;

use crate::error::BoxError;

/// The credentials hook: run before every connection attempt and for each `$refresh`.
pub(crate) type CredentialsFn =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<String>, BoxError>> + Send + Sync>;

/// A hook that always gives `token`.
pub(crate) fn fixed(token: String) -> CredentialsFn {
    Arc::new(move || {
        let token = token.clone();
        Box::pin(async move { Ok(Some(token)) })
    })
}

/// Calls the credentials hook, bounded by `limit`; a panic is an error too.
pub(crate) async fn fetch(
    hook: CredentialsFn,
    limit: Duration,
) -> Result<Option<String>, BoxError> {
    let Ok(fetching) = std::panic::catch_unwind(AssertUnwindSafe(|| hook())) else {
        return Err("credentials hook panicked".into());
    };
    match timeout(limit, AssertUnwindSafe(fetching).catch_unwind()).await {
        Err(_) => Err("credentials hook timed out".into()),
        Ok(Err(_)) => Err("credentials hook panicked".into()),
        Ok(Ok(result)) => result,
    }
}
