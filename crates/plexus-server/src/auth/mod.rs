//! Authentication: who is connecting, decided once per connection.
//!
//! An endpoint that authenticates holds an [`Authenticator`] (as `Arc<dyn Authenticator>`).
//! At the handshake the server finds the connection's [`Credential`] (the upgrade request's
//! `Authorization: Bearer` header, a cookie, a `?token=` query parameter, or the `token` of an
//! in-band `hello`; see [`credential_from_request`]) and asks the authenticator for a
//! [`Principal`] with an [`AuthRequest`]. A refusal is an [`AuthError`]: `NOT_AUTHORIZED`
//! (HTTP 401, close 4001) or `FORBIDDEN` (HTTP 403, close 4003).
//!
//! Built in: [`JwtAuthenticator`] (HMAC, RSA, ECDSA and Ed25519 keys, or a JWKS file).
//! Custom ones implement [`Authenticator`] or wrap a closure with [`fn_authenticator`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use plexus_protocol::{CloseCode, ErrorBody, ErrorCode, Payload};

use crate::principal::Principal;

mod admission;
mod credential;
pub mod jwt;

pub(crate) use admission::Admission;
pub use credential::{Credential, CredentialSource, MAX_CREDENTIAL_LEN, credential_from_request};
pub(crate) use credential::{REQUEST_SOURCES, credential_from_sources};
pub use jwt::{JwtAuthenticator, JwtConfig, JwtConfigError};

/// Why a connection was refused.
///
/// The message goes to the client (in a `reject` frame or an HTTP body), so it must be short,
/// useful and free of secrets: `"token expired"`, `"bad signature"`, `"wrong audience"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No valid credential: missing, malformed, badly signed or expired.
    /// HTTP 401, `NOT_AUTHORIZED`, close code 4001.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// A valid credential that is not allowed to connect.
    /// HTTP 403, `FORBIDDEN`, close code 4003.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AuthError {
    /// The reason given in the close frame of a connection refused for this error.
    pub fn close_reason(&self) -> &'static str {
        match self {
            AuthError::Forbidden(_) => "forbidden",
            _ => "not authorized",
        }
    }

    /// Its kind as a metrics label: `not_authorized` or `forbidden`.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self {
            AuthError::NotAuthorized(_) => "not_authorized",
            AuthError::Forbidden(_) => "forbidden",
        }
    }

    /// A [`AuthError::NotAuthorized`] with `message`.
    pub fn not_authorized(message: impl Into<String>) -> Self {
        Self::NotAuthorized(message.into())
    }

    /// A [`AuthError::Forbidden`] with `message`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        match self {
            Self::NotAuthorized(message) | Self::Forbidden(message) => message,
        }
    }

    /// The HTTP status refusing an upgrade request: 401 or 403.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::NotAuthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The wire error code: `NOT_AUTHORIZED` or `FORBIDDEN`.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::NotAuthorized(_) => ErrorCode::NOT_AUTHORIZED,
            Self::Forbidden(_) => ErrorCode::FORBIDDEN,
        }
    }

    /// The close code after a `reject`: 4001 or 4003.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::NotAuthorized(_) => CloseCode::NOT_AUTHORIZED,
            Self::Forbidden(_) => CloseCode::FORBIDDEN,
        }
    }

    /// The body of the `reject` frame.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::new(self.error_code(), self.message())
    }
}

impl From<AuthError> for ErrorBody {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::NotAuthorized(message) => ErrorBody::new(ErrorCode::NOT_AUTHORIZED, message),
            AuthError::Forbidden(message) => ErrorBody::new(ErrorCode::FORBIDDEN, message),
        }
    }
}

/// What an [`Authenticator`] sees of a connection being opened.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct AuthRequest<'a> {
    /// The credential found in the upgrade request or the `hello`, if any.
    pub credential: Option<&'a Credential>,
    /// The headers of the HTTP upgrade request.
    pub headers: &'a HeaderMap,
    /// The peer's address, when known.
    pub remote: Option<SocketAddr>,
    /// The `data` of an in-band `hello`, if the client sent one with data.
    pub hello_data: Option<&'a Payload>,
}

impl<'a> AuthRequest<'a> {
    /// A request with these headers and nothing else; add the rest with the `with_*` methods.
    pub fn new(headers: &'a HeaderMap) -> Self {
        Self {
            credential: None,
            headers,
            remote: None,
            hello_data: None,
        }
    }

    /// The same request with a credential.
    pub fn with_credential(mut self, credential: Option<&'a Credential>) -> Self {
        self.credential = credential;
        self
    }

    /// The same request with the peer's address.
    pub fn with_remote(mut self, remote: Option<SocketAddr>) -> Self {
        self.remote = remote;
        self
    }

    /// The same request with the `data` of a `hello`.
    pub fn with_hello_data(mut self, hello_data: Option<&'a Payload>) -> Self {
        self.hello_data = hello_data;
        self
    }

    /// The credential's token, if there is a credential.
    pub fn token(&self) -> Option<&'a str> {
        self.credential.map(|credential| credential.token.as_str())
    }
}

impl fmt::Debug for AuthRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers may carry secrets (cookies, authorization): only their names are shown.
        f.debug_struct("AuthRequest")
            .field("credential", &self.credential)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("remote", &self.remote)
            .field("hello_data", &self.hello_data.map(|_| ".."))
            .finish()
    }
}

/// Decides who a connection is, or refuses it.
///
/// Held by the server as `Arc<dyn Authenticator>` and called once per connection, before
/// `welcome`. A request without a credential reaches the authenticator too (it may let
/// anonymous connections in with [`Principal::anonymous`], or look at other headers or the
/// `hello` data).
///
/// Implement it for your own type, or wrap a closure with [`fn_authenticator`]:
///
/// ```
/// use plexus_server::auth::{AuthError, AuthRequest, Authenticator};
/// use plexus_server::Principal;
/// use futures_util::future::BoxFuture;
///
/// /// Lets in whoever presents one fixed key, as the user `service`.
/// struct StaticKey(String);
///
/// impl Authenticator for StaticKey {
///     fn authenticate<'a>(
///         &'a self,
///         request: AuthRequest<'a>,
///     ) -> BoxFuture<'a, Result<Principal, AuthError>> {
///         Box::pin(async move {
///             match request.token() {
///                 Some(token) if token == self.0 => {
///                     Ok(Principal::user("service", ["publish".to_owned()]))
///                 }
///                 Some(_) => Err(AuthError::not_authorized("unknown key")),
///                 None => Err(AuthError::not_authorized("missing credential")),
///             }
///         })
///     }
/// }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// The principal of the connection described by `request`, or why it is refused.
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>>;
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        (**self).authenticate(request)
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Box<A> {
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        (**self).authenticate(request)
    }
}

/// An [`Authenticator`] made of a closure; see [`fn_authenticator`].
#[derive(Clone)]
pub struct FnAuthenticator<F>(F);

impl<F> fmt::Debug for FnAuthenticator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnAuthenticator")
    }
}

/// An [`Authenticator`] from a closure that takes the [`AuthRequest`] and returns a future.
///
/// The closure runs synchronously with the borrowed request; the future it returns must own
/// what it needs (copy the token or a header out before the `async move` block).
///
/// ```
/// use std::sync::Arc;
/// use plexus_server::auth::{fn_authenticator, AuthError, Authenticator};
/// use plexus_server::Principal;
///
/// let auth: Arc<dyn Authenticator> = Arc::new(fn_authenticator(|request| {
///     let token = request.token().map(str::to_owned);
///     async move {
///         match token.as_deref() {
///             // Look the token up in a session store here.
///             Some("let-me-in") => Ok(Principal::user("alice", [])),
///             Some(_) => Err(AuthError::not_authorized("unknown session")),
///             None => Ok(Principal::anonymous()),
///         }
///     }
/// }));
/// # let _ = auth;
/// ```
pub fn fn_authenticator<F, Fut>(f: F) -> FnAuthenticator<F>
where
    F: Fn(AuthRequest<'_>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Principal, AuthError>> + Send + 'static,
{
    FnAuthenticator(f)
}

impl<F, Fut> Authenticator for FnAuthenticator<F>
where
    F: Fn(AuthRequest<'_>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Principal, AuthError>> + Send + 'static,
{
    fn authenticate<'a>(
        &'a self,
        request: AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin((self.0)(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_wire_and_close_codes() {
        let error = AuthError::not_authorized("token expired");
        assert_eq!(error.http_status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error.error_code(), ErrorCode::NOT_AUTHORIZED);
        assert_eq!(error.close_code(), CloseCode(4001));
        assert_eq!(error.to_string(), "not authorized: token expired");
        let body = ErrorBody::from(error);
        assert_eq!(body.code, ErrorCode::NOT_AUTHORIZED);
        assert_eq!(body.message, "token expired");

        let error = AuthError::forbidden("not a member");
        assert_eq!(error.http_status(), StatusCode::FORBIDDEN);
        assert_eq!(error.error_code(), ErrorCode::FORBIDDEN);
        assert_eq!(error.close_code(), CloseCode(4003));
        assert_eq!(error.to_error_body().message, "not a member");
        assert!(!error.close_code().should_reconnect());
    }

    #[tokio::test]
    async fn closures_are_authenticators() {
        let auth: Arc<dyn Authenticator> = Arc::new(fn_authenticator(|request| {
            let token = request.token().map(str::to_owned);
            let remote = request.remote;
            async move {
                match token.as_deref() {
                    Some("good") => Ok(Principal::user("alice", ["read".to_owned()])),
                    Some(_) => Err(AuthError::forbidden("banned")),
                    None if remote.is_some() => Ok(Principal::anonymous()),
                    None => Err(AuthError::not_authorized("missing credential")),
                }
            }
        }));
        let headers = HeaderMap::new();
        let good = Credential::new("good", CredentialSource::Hello);
        let bad = Credential::new("bad", CredentialSource::Header);

        let request = AuthRequest::new(&headers).with_credential(Some(&good));
        let principal = auth.authenticate(request).await.unwrap();
        assert_eq!(principal.user.as_deref(), Some("alice"));
        assert!(principal.can("read"));

        let request = AuthRequest::new(&headers).with_credential(Some(&bad));
        assert_eq!(
            auth.authenticate(request).await,
            Err(AuthError::Forbidden("banned".into()))
        );
        assert!(matches!(
            auth.authenticate(AuthRequest::new(&headers)).await,
            Err(AuthError::NotAuthorized(_))
        ));
        let request = AuthRequest::new(&headers).with_remote(Some(([127, 0, 0, 1], 1).into()));
        assert!(auth.authenticate(request).await.unwrap().is_anonymous());
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuthError>();
        assert_send_sync::<AuthRequest<'static>>();
        assert_send_sync::<Credential>();
        assert_send_sync::<JwtAuthenticator>();
        assert_send_sync::<Arc<dyn Authenticator>>();
    }
}
