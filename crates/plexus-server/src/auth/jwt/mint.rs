//! Making tokens: for tests, examples and `plexus token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a token: {0}")]
pub struct MintError(String);

/// An HS256 token for `sub`, valid from now for `ttl`, signed with `secret`.
///
/// The claims are `extra`, then `sub`, `iat`, `exp` (now + `ttl`, in whole seconds, rounded
/// up) and `scope` (when given), which replace claims of the same name in `extra`.
/// [`JwtAuthenticator::hs256`](super::JwtAuthenticator::hs256) with the same secret accepts it.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    scope: Option<&str>,
    ttl: Duration,
    extra: Map<String, Value>,
) -> Result<String, MintError> {
    super::install_crypto_provider();
    if secret.is_empty() {
        return Err(MintError("the secret is empty".into()));
    }
    if sub.is_empty() {
        return Err(MintError("the subject is empty".into()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError("the clock is before 1970".into()))?
        .as_secs();
    let ttl_secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    let exp = now
        .checked_add(ttl_secs)
        .filter(|exp| *exp <= i64::MAX as u64)
        .ok_or_else(|| MintError("the time to live is too long".into()))?;
    let mut claims = extra;
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), exp.into());
    if let Some(scope) = scope {
        claims.insert("scope".into(), scope.into());
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError(e.to_string()))
}
