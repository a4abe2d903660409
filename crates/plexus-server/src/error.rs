//! Errors: what a handler returns ([`RpcError`]) and what a server-to-client call can fail
//! with ([`CallError`]).

use std::fmt;

use plexus_protocol::{ErrorBody, ErrorCode, Payload, PayloadError};
use serde::Serialize;

/// An error a handler returns; it goes to the caller as an `err` frame.
///
/// Build one with a code ([`RpcError::new`]) or from an unexpected failure
/// ([`RpcError::internal`], which logs the cause and sends only a reference).
#[derive(Debug, Clone)]
pub struct RpcError {
    body: ErrorBody,
}

impl RpcError {
    /// An error with a code and a message for the caller.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
        }
    }

    /// Attaches serializable details, sent as `e.data`.
    pub fn with_data<T: Serialize>(mut self, data: &T) -> Self {
        match Payload::encode(plexus_protocol::Codec::Json, data) {
            Ok(payload) => self.body.data = Some(payload),
            Err(e) => tracing::warn!(error = %e, "error data could not be serialized"),
        }
        self
    }

    /// An unexpected failure: the cause is logged with a reference id, and the caller gets
    /// `INTERNAL` with that reference only, never the cause's text.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string();
        let reference = &reference[..12];
        tracing::error!(reference, error = %cause, "handler failed");
        Self::new(
            ErrorCode::INTERNAL,
            format!("internal error (reference {reference})"),
        )
    }

    /// `NOT_FOUND` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }

    /// `VALIDATION_ERROR` with a message.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::VALIDATION_ERROR, message)
    }

    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// The wire body of the error.
    pub fn into_body(self) -> ErrorBody {
        self.body
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.fmt(f)
    }
}

impl std::error::Error for RpcError {}

impl From<ErrorBody> for RpcError {
    fn from(body: ErrorBody) -> Self {
        Self { body }
    }
}

impl From<std::convert::Infallible> for RpcError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<PayloadError> for RpcError {
    fn from(e: PayloadError) -> Self {
        validation_error(&e)
    }
}

impl From<std::io::Error> for RpcError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e)
    }
}

impl From<CallError> for RpcError {
    fn from(e: CallError) -> Self {
        Self { body: e.body }
    }
}

/// `VALIDATION_ERROR` naming the serde path of the field that did not fit.
pub(crate) fn validation_error(e: &PayloadError) -> RpcError {
    #[derive(Serialize)]
    struct PathData<'a> {
        path: &'a str,
    }
    RpcError::new(
        ErrorCode::VALIDATION_ERROR,
        format!("invalid params at `{}`: {}", e.path(), e.message()),
    )
    .with_data(&PathData { path: e.path() })
}

/// Why a call from the server to the client failed.
#[derive(Debug, Clone)]
pub struct CallError {
    body: ErrorBody,
}

impl CallError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
        }
    }

    pub(crate) fn into_body(self) -> ErrorBody {
        self.body
    }

    pub(crate) fn timeout() -> Self {
        Self::new(ErrorCode::TIMEOUT, "the client did not answer in time")
    }

    pub(crate) fn closed() -> Self {
        Self::new(ErrorCode::UNAVAILABLE, "the connection is closed")
    }

    /// The error code: the client's own, or `TIMEOUT`, `UNAVAILABLE`, `VALIDATION_ERROR`
    /// (the answer did not fit the expected type), `TOO_LARGE` (the server's outbound queue
    /// to this connection is full).
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.body.message
    }

    /// The error's details, if any.
    pub fn data(&self) -> Option<&Payload> {
        self.body.data.as_ref()
    }

    /// Whether the call timed out.
    pub fn is_timeout(&self) -> bool {
        self.body.code == ErrorCode::TIMEOUT
    }

    /// Whether the connection was closed or gone.
    pub fn is_unavailable(&self) -> bool {
        self.body.code == ErrorCode::UNAVAILABLE
    }
}

impl From<ErrorBody> for CallError {
    fn from(body: ErrorBody) -> Self {
        Self { body }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.fmt(f)
    }
}

impl std::error::Error for CallError {}

/// A method or channel name as shown in an error message: at most 64 characters, so that a
/// hostile name cannot make the answer large.
pub(crate) fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}
