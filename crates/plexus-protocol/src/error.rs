//! [`RpcError`]: what a handler returns when a call fails, on either side of a connection.

use std::fmt;

use serde::Serialize;

use crate::{Codec, ErrorBody, ErrorCode, Payload, PayloadError};

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
        match Payload::encode(Codec::Json, data) {
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

    /// `VALIDATION_ERROR` for params that do not fit: the message and the data
    /// (`{"path": ...}`) name the serde path of the field that did not.
    pub fn invalid_params(e: &PayloadError) -> Self {
        #[derive(Serialize)]
        struct PathData<'a> {
            path: &'a str,
        }
        Self::new(
            ErrorCode::VALIDATION_ERROR,
            format!("invalid params at `{}`: {}", e.path(), e.message()),
        )
        .with_data(&PathData { path: e.path() })
    }

    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.body.message
    }

    /// The details, if any.
    pub fn data(&self) -> Option<&Payload> {
        self.body.data.as_ref()
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
        Self::invalid_params(&e)
    }
}

impl From<std::io::Error> for RpcError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e)
    }
}

impl From<RpcError> for ErrorBody {
    fn from(e: RpcError) -> Self {
        e.body
    }
}
