//! Keeping a connection's credential fresh: `$refresh` before it expires.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::SessionEnv;
use crate::auth::{AuthError, AuthRequest, Credential, CredentialSource};
use crate::conn::ConnectionHandle;

/// How long before its credential expires a connection is asked for a fresh one (or half
/// the time left, if that is less).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// Time a client always gets to answer `$refresh`, even when asked at the last moment.
const REFRESH_MIN_ANSWER: Duration = Duration::from_secs(2);

/// Keeps an authenticated connection's credential fresh: before it expires, asks the client
/// for a new one with `$refresh` and checks it; when none valid comes before the old one
/// expires, closes the connection with 4001 (4003 if the new one is refused as forbidden or
/// names another user).
///
/// The expiry is read off the wall clock once per credential and then counted on tokio's
/// clock, so that the keeper can be tested on a paused one.
pub(super) async fn keep_credential_fresh(env: Arc<SessionEnv>, handle: ConnectionHandle) {
    use std::time::{SystemTime, UNIX_EPOCH};

    #[derive(serde::Deserialize)]
    struct Refreshed {
        token: String,
    }
    loop {
        let principal = handle.principal();
        let Some(expires) = principal.expires_at else {
            return;
        };
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let expiry = Instant::now() + left;
        let ask_in = left.saturating_sub(REFRESH_AHEAD.min(left / 2));
        tokio::select! {
            _ = tokio::time::sleep(ask_in) => {}
            _ = handle.closed() => return,
        }
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let window = expiry
            .saturating_duration_since(Instant::now())
            .max(REFRESH_MIN_ANSWER);
        let answer = handle
            .request_timeout::<Refreshed>("$refresh", &serde_json::json!({ "exp": exp }), window)
            .await;
        let outcome = match answer {
            Ok(refreshed) => {
                let credential = Credential::new(refreshed.token, CredentialSource::Hello);
                let request = AuthRequest::new(handle.headers())
                    .with_credential(Some(&credential))
                    .with_remote(handle.remote_addr());
                match env.authenticate(request).await {
                    Ok(fresh) if fresh.user == principal.user => Ok(fresh),
                    Ok(_) => Err(AuthError::forbidden(
                        "the refreshed credential is for another user",
                    )),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(AuthError::not_authorized(format!(
                "no fresh credential: {}",
                e.message()
            ))),
        };
        match outcome {
            Ok(fresh) => {
                tracing::debug!(conn = %handle.id(), "credential refreshed");
                handle.set_principal(fresh);
                // Subscriptions made under the old credential must still be allowed.
                env.hub.recheck_subscriptions(&handle).await;
            }
            Err(e) => {
                // The credential it has stays good until it expires.
                tokio::select! {
                    _ = tokio::time::sleep_until(expiry) => {}
                    _ = handle.closed() => return,
                }
                tracing::debug!(conn = %handle.id(), error = %e.message(), "credential expired");
                handle.close(e.close_code(), e.close_reason());
                return;
            }
        }
    }
}
