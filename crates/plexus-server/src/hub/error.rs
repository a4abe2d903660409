//! [`HubError`]: why a hub operation failed.

use std::fmt;

use plexus_engine::{EngineError, EngineErrorKind};
use plexus_protocol::{ErrorBody, ErrorCode, Payload};

use crate::error::CallError;

/// Why a hub operation failed. It carries the error a client would be told (a wire code, a
/// message, maybe data): the hub's own refusals, the engine's, and, for
/// [`Hub::request`](super::Hub::request), the client's answer when it is an error.
#[derive(Clone, Debug)]
pub struct HubError {
    body: ErrorBody,
}

/// The kind of a [`HubError`], from its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubErrorKind {
    /// No such channel namespace, or (for calls to a client) no such method there.
    NotFound,
    /// Not allowed.
    Forbidden,
    /// A value that does not fit: params, a filter, or a client's answer.
    Invalid,
    /// A limit was reached: channels, subscribers, waiting requests.
    Limited,
    /// The engine, or the connection, cannot be reached now; a retry may succeed.
    Unavailable,
    /// No answer in time.
    Timeout,
    /// Another code: the client's own error, say.
    Other,
}

impl HubError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> HubErrorKind {
        match self.body.code.as_str() {
            "NOT_FOUND" => HubErrorKind::NotFound,
            "FORBIDDEN" | "NOT_AUTHORIZED" => HubErrorKind::Forbidden,
            "VALIDATION_ERROR" | "BAD_FRAME" => HubErrorKind::Invalid,
            "RATE_LIMITED" | "TOO_LARGE" => HubErrorKind::Limited,
            "UNAVAILABLE" => HubErrorKind::Unavailable,
            "TIMEOUT" => HubErrorKind::Timeout,
            _ => HubErrorKind::Other,
        }
    }

    /// The wire code a client would be told.
    pub fn code(&self) -> &ErrorCode {
        &self.body.code
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.body.message
    }

    /// Details, when the error has any (a client's error data, say).
    pub fn data(&self) -> Option<&Payload> {
        self.body.data.as_ref()
    }

    /// Whether no answer came in time.
    pub fn is_timeout(&self) -> bool {
        self.kind() == HubErrorKind::Timeout
    }

    /// The error as it goes on the wire.
    pub fn into_body(self) -> ErrorBody {
        self.body
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.fmt(f)
    }
}

impl std::error::Error for HubError {}

impl From<ErrorBody> for HubError {
    fn from(body: ErrorBody) -> Self {
        Self { body }
    }
}

impl From<CallError> for HubError {
    fn from(e: CallError) -> Self {
        Self {
            body: e.into_body(),
        }
    }
}

impl From<EngineError> for HubError {
    fn from(e: EngineError) -> Self {
        let code = match e.kind() {
            EngineErrorKind::Limit => ErrorCode::RATE_LIMITED,
            _ => ErrorCode::UNAVAILABLE,
        };
        Self::new(code, e.message())
    }
}

impl From<HubError> for ErrorBody {
    fn from(e: HubError) -> Self {
        e.body
    }
}
