//! JSON Web Tokens: [`JwtAuthenticator`], its [`JwtConfig`], and [`mint_hs256`] for tests and
//! the `plexus token` command.
//!
//! The algorithms a token may use come from the configured key (and the optional
//! `algorithms` list), never from the token: a token with `alg: none`, or signed with HMAC
//! where an RSA public key is configured, is refused.

use std::fmt;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{AuthError, AuthRequest, Authenticator, MAX_CREDENTIAL_LEN};
use crate::principal::Principal;

mod key;
mod mint;
#[cfg(test)]
mod tests;

use key::{KeyKind, Keys, VerifyKey};
pub use mint::{MintError, mint_hs256};

/// How a [`JwtAuthenticator`] verifies tokens. Deserializable, so a TOML file can hold it:
///
/// ```toml
/// public_key_file = "keys/issuer.pem"   # or: secret = "…", or: jwks_file = "jwks.json"
/// issuer = "https://auth.example.com"
/// audience = "plexus"
/// permissions_claim = "roles"
/// ```
///
/// Exactly one key source is set: `secret`, `public_key_file` or `jwks_file`. Unknown keys
/// are refused (a misspelt `audience` must not silently turn the check off). `Debug` does not
/// show the secret.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtConfig {
    /// An HMAC secret (HS256, HS384, HS512), used as its UTF-8 bytes. Use at least 32 random
    /// bytes.
    pub secret: Option<String>,
    /// A PEM file with a public key: RSA of 2048 bits or more (RS256/384/512, PS256/384/512),
    /// EC P-256 (ES256) or P-384 (ES384), or Ed25519 (EdDSA). Read once, at construction.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS file (`{"keys":[…]}`). The token's `kid` selects the key; each key's own `alg`
    /// (or, without `alg`, its type and curve) decides the algorithms it verifies. Keys for
    /// encryption are skipped. Read once, at construction.
    pub jwks_file: Option<PathBuf>,
    /// The accepted algorithms (`"RS256"`, …), a subset of what the key can verify. Empty (the
    /// default): every algorithm of the key's type.
    pub algorithms: Vec<String>,
    /// The required `iss`, if set. Tokens without `iss` are then refused.
    pub issuer: Option<String>,
    /// The required `aud` (one of the token's audiences), if set. Tokens without `aud` are then
    /// refused. When not set, a token that names an audience is refused (RFC 7519 §4.1.3).
    pub audience: Option<String>,
    /// Clock skew allowed for `exp` and `nbf`, in seconds (default 5, at most 86400).
    pub leeway_secs: u64,
    /// Whether tokens must carry `exp` (default true). When present, `exp` is always checked.
    pub require_exp: bool,
    /// Claims whose values are added to the permissions, besides `scope`: a string (split at
    /// whitespace) or an array of strings. Written `permissions_claim = "perms"` or
    /// `permissions_claims = ["perms", "roles"]`.
    #[serde(alias = "permissions_claim", deserialize_with = "one_or_many")]
    pub permissions_claims: Vec<String>,
    /// The claim copied to [`Principal::info`] (default `"info"`; empty: none).
    pub info_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            public_key_file: None,
            jwks_file: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 5,
            require_exp: true,
            permissions_claims: Vec::new(),
            info_claim: "info".to_owned(),
        }
    }
}

impl JwtConfig {
    /// Tokens signed with the HMAC `secret`.
    pub fn hmac(secret: impl Into<String>) -> Self {
        Self {
            secret: Some(secret.into()),
            ..Self::default()
        }
    }

    /// Tokens signed with the private half of the public key in the PEM file at `path`.
    pub fn public_key(path: impl Into<PathBuf>) -> Self {
        Self {
            public_key_file: Some(path.into()),
            ..Self::default()
        }
    }

    /// Tokens signed with one of the keys of the JWKS file at `path`.
    pub fn jwks(path: impl Into<PathBuf>) -> Self {
        Self {
            jwks_file: Some(path.into()),
            ..Self::default()
        }
    }

    /// The same configuration accepting only `algorithms` (`"RS256"`, …).
    pub fn with_algorithms<S: Into<String>>(
        mut self,
        algorithms: impl IntoIterator<Item = S>,
    ) -> Self {
        self.algorithms = algorithms.into_iter().map(Into::into).collect();
        self
    }

    /// The same configuration requiring `iss` to be `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The same configuration requiring `aud` to include `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The same configuration with `leeway` of clock skew (whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway_secs = leeway.as_secs();
        self
    }

    /// The same configuration with or without tokens required to carry `exp`.
    pub fn with_require_exp(mut self, require_exp: bool) -> Self {
        self.require_exp = require_exp;
        self
    }

    /// The same configuration also taking permissions from the claim `claim`.
    pub fn with_permissions_claim(mut self, claim: impl Into<String>) -> Self {
        self.permissions_claims.push(claim.into());
        self
    }

    /// The same configuration taking [`Principal::info`] from the claim `claim` (empty: none).
    pub fn with_info_claim(mut self, claim: impl Into<String>) -> Self {
        self.info_claim = claim.into();
        self
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_exp", &self.require_exp)
            .field("permissions_claims", &self.permissions_claims)
            .field("info_claim", &self.info_claim)
            .finish()
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// Why a [`JwtConfig`] cannot make a [`JwtAuthenticator`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// No key source is set.
    #[error("no JWT key configured: set one of `secret`, `public_key_file` or `jwks_file`")]
    NoKey,
    /// More than one key source is set.
    #[error("set only one of `secret`, `public_key_file` and `jwks_file`")]
    SeveralKeys,
    /// The HMAC secret is empty.
    #[error("the JWT `secret` is empty")]
    EmptySecret,
    /// A key file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM file does not hold a usable public key.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWKS file is not valid or has no usable key.
    #[error("{}: {reason}", path.display())]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry of `algorithms` is not a JWS algorithm name.
    #[error(
        "unknown JWT algorithm `{0}` (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
    )]
    UnknownAlgorithm(String),
    /// An entry of `algorithms` cannot be verified with the configured key.
    #[error("algorithm {algorithm} does not fit the configured {key} key")]
    AlgorithmMismatch {
        /// The algorithm.
        algorithm: String,
        /// The kind of key (`"RSA"`, `"EC P-256"`, …).
        key: &'static str,
    },
    /// `leeway_secs` is more than a day.
    #[error("`leeway_secs` = {0} is more than a day (86400)")]
    Leeway(u64),
}

/// Verifies JSON Web Tokens and maps their claims to a [`Principal`]:
///
/// - `sub` → [`Principal::user`] (required);
/// - `scope` (a space-separated string or an array of strings), and the configured
///   [`permissions_claims`](JwtConfig::permissions_claims) → [`Principal::permissions`];
/// - the [`info_claim`](JwtConfig::info_claim) (default `info`) → [`Principal::info`];
/// - `exp` → [`Principal::expires_at`].
///
/// Checks the signature, `exp` (required unless configured otherwise), `nbf`, and `iss` and
/// `aud` when configured, with a leeway of 5 s by default. Every refusal is
/// [`AuthError::NotAuthorized`] with a short reason (`"token expired"`, `"bad signature"`,
/// `"wrong audience"`, …); a request without a credential is refused with
/// `"missing credential"`.
///
/// ```
/// use std::time::Duration;
/// use plexus_server::auth::{jwt, AuthRequest, Authenticator, Credential, CredentialSource};
///
/// # tokio_test_block_on(async {
/// let auth = jwt::JwtAuthenticator::hs256("a-long-random-secret-for-the-example");
/// let token = jwt::mint_hs256(
///     "a-long-random-secret-for-the-example",
///     "alice",
///     Some("chat:read chat:write"),
///     Duration::from_secs(3600),
///     Default::default(),
/// )
/// .unwrap();
/// let credential = Credential::new(token, CredentialSource::Header);
/// let headers = http::HeaderMap::new();
/// let principal = auth
///     .authenticate(AuthRequest::new(&headers).with_credential(Some(&credential)))
///     .await
///     .unwrap();
/// assert_eq!(principal.user.as_deref(), Some("alice"));
/// assert!(principal.can("chat:write"));
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
/// # }
/// ```
pub struct JwtAuthenticator {
    keys: Keys,
    permissions_claims: Box<[String]>,
    info_claim: Option<Box<str>>,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.by_kid.len() + usize::from(self.keys.any.is_some());
        f.debug_struct("JwtAuthenticator")
            .field("keys", &keys)
            .field("permissions_claims", &self.permissions_claims)
            .field("info_claim", &self.info_claim)
            .finish_non_exhaustive()
    }
}

/// Installs jsonwebtoken's aws-lc crypto provider once per process (it panics at the first
/// encode or decode without one). Another provider installed first is kept.
pub(crate) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

impl JwtAuthenticator {
    /// An authenticator for `config`; key files are read here, once.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        install_crypto_provider();
        if config.leeway_secs > 86_400 {
            return Err(JwtConfigError::Leeway(config.leeway_secs));
        }
        let configured = key::parse_algorithms(&config.algorithms)?;
        let mut base = Validation::new(jsonwebtoken::Algorithm::HS256);
        base.leeway = config.leeway_secs;
        base.validate_exp = true;
        base.validate_nbf = true;
        base.validate_aud = true;
        let mut required = vec!["sub"];
        if config.require_exp {
            required.push("exp");
        }
        if let Some(issuer) = &config.issuer {
            base.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &config.audience {
            base.set_audience(&[audience]);
            required.push("aud");
        }
        base.set_required_spec_claims(&required);

        let one = |kind: KeyKind, key: DecodingKey| -> Result<Keys, JwtConfigError> {
            let mut validation = base.clone();
            validation.algorithms = key::allowed(kind, &configured).map_err(|misfit| {
                JwtConfigError::AlgorithmMismatch {
                    algorithm: format!("{misfit:?}"),
                    key: kind.name(),
                }
            })?;
            Ok(Keys {
                any: Some(VerifyKey { key, validation }),
                by_kid: Default::default(),
            })
        };
        let keys = match (&config.secret, &config.public_key_file, &config.jwks_file) {
            (None, None, None) => return Err(JwtConfigError::NoKey),
            (Some(secret), None, None) => {
                if secret.is_empty() {
                    return Err(JwtConfigError::EmptySecret);
                }
                one(KeyKind::Hmac, DecodingKey::from_secret(secret.as_bytes()))?
            }
            (None, Some(path), None) => {
                let (kind, key) = key::from_pem(path)?;
                one(kind, key)?
            }
            (None, None, Some(path)) => key::from_jwks(path, &configured, &base)?,
            _ => return Err(JwtConfigError::SeveralKeys),
        };
        Ok(Self {
            keys,
            permissions_claims: config
                .permissions_claims
                .into_iter()
                .filter(|claim| !claim.is_empty())
                .collect(),
            info_claim: (!config.info_claim.is_empty()).then(|| config.info_claim.into()),
        })
    }

    /// An authenticator for HS256 tokens signed with `secret`, with the default checks.
    /// An empty secret verifies nothing: every token is refused.
    pub fn hs256(secret: &str) -> Self {
        Self::new(JwtConfig::hmac(secret).with_algorithms(["HS256"])).unwrap_or_else(|_| Self {
            keys: Keys::default(),
            permissions_claims: Box::default(),
            info_claim: Some("info".into()),
        })
    }

    /// Verifies `token` and maps its claims to a principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::not_authorized("token too large"));
        }
        let key = self.key_for(token)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|error| refusal(token, &error))?
            .claims;
        self.principal(claims)
    }

    fn key_for(&self, token: &str) -> Result<&VerifyKey, AuthError> {
        if let Some(key) = &self.keys.any {
            return Ok(key);
        }
        let by_kid = &self.keys.by_kid;
        let header = jsonwebtoken::decode_header(token).map_err(|error| refusal(token, &error))?;
        match header.kid {
            Some(kid) => by_kid
                .get(&kid)
                .ok_or_else(|| AuthError::not_authorized("unknown key id")),
            None => match by_kid.values().next() {
                Some(key) if by_kid.len() == 1 => Ok(key),
                _ => Err(AuthError::not_authorized("token has no key id")),
            },
        }
    }

    fn principal(&self, mut claims: Map<String, Value>) -> Result<Principal, AuthError> {
        let user = match claims.remove("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            _ => return Err(AuthError::not_authorized("invalid `sub` claim")),
        };
        let mut principal = Principal::user(user, []);
        for claim in std::iter::once("scope").chain(self.permissions_claims.iter().map(|c| &**c)) {
            match claims.remove(claim) {
                None | Some(Value::Null) => {}
                Some(Value::String(text)) => principal
                    .permissions
                    .extend(text.split_whitespace().map(str::to_owned)),
                Some(Value::Array(items)) => {
                    for item in items {
                        let Value::String(permission) = item else {
                            return Err(AuthError::not_authorized(format!(
                                "invalid `{claim}` claim"
                            )));
                        };
                        if !permission.is_empty() {
                            principal.permissions.insert(permission);
                        }
                    }
                }
                Some(_) => {
                    return Err(AuthError::not_authorized(format!(
                        "invalid `{claim}` claim"
                    )));
                }
            }
        }
        if let Some(claim) = &self.info_claim {
            match claims.remove(&**claim) {
                None | Some(Value::Null) => {}
                Some(info) => principal.info = Some(info),
            }
        }
        principal.expires_at = claims.get("exp").and_then(expiry);
        Ok(principal)
    }
}

/// `exp` as a time (jsonwebtoken accepts integer and fractional seconds).
fn expiry(exp: &Value) -> Option<SystemTime> {
    let after_epoch = match exp.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(after_epoch)
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = match request.token() {
            Some(token) => self.verify(token),
            None => Err(AuthError::not_authorized("missing credential")),
        };
        Box::pin(std::future::ready(result))
    }
}

/// The client-facing reason for a verification failure. Says what is wrong, never echoes the
/// token or the key.
fn refusal(token: &str, error: &jsonwebtoken::errors::Error) -> AuthError {
    let reason: std::borrow::Cow<'static, str> = match error.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSubject => "wrong subject".into(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => "algorithm not allowed".into(),
        // The claim names come from jsonwebtoken's fixed list (exp, nbf, sub, iss, aud).
        ErrorKind::MissingRequiredClaim(claim) => format!("missing `{claim}` claim").into(),
        ErrorKind::InvalidClaimFormat(claim) => format!("invalid `{claim}` claim").into(),
        ErrorKind::Json(_) if header_names_other_algorithm(token) => "algorithm not allowed".into(),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token".into(),
        _ => {
            // A key the crypto library would not use: a server-side problem.
            tracing::warn!(error = %error, "JWT verification failed on the configured key");
            "token not verifiable".into()
        }
    };
    AuthError::NotAuthorized(reason.into_owned())
}

/// Whether the token's header parses but names an algorithm jsonwebtoken does not know
/// (`none`, `HS1`…): only looked at on the error path.
fn header_names_other_algorithm(token: &str) -> bool {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Alg<'a> {
        #[serde(borrow)]
        alg: std::borrow::Cow<'a, str>,
    }
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<Alg<'_>>(&json)
        .is_ok_and(|header| header.alg.parse::<jsonwebtoken::Algorithm>().is_err())
}
