//! What a server-to-client call can fail with ([`CallError`]). What a handler returns is
//! [`RpcError`], shared with the client (`plexus_protocol::RpcError`).

use std::fmt;

pub use plexus_protocol::RpcError;
use plexus_protocol::{ErrorBody, ErrorCode, Payload};

/// Why a call from the server to the client failed.
#[derive(Debug, Clone)]
pub struct CallError {
    body: ErrorBody,
    /// The connection ended (or was gone) before an answer came.
    closed: bool,
}

impl CallError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
            closed: false,
        }
    }

    pub(crate) fn into_body(self) -> ErrorBody {
        self.body
    }

    pub(crate) fn timeout() -> Self {
        Self::new(ErrorCode::TIMEOUT, "the client did not answer in time")
    }

    /// A protocol frame (a call, a notification) for a raw socket, which takes none.
    pub(crate) fn raw_socket() -> Self {
        Self::new(
            ErrorCode::NOT_FOUND,
            "a raw socket takes raw messages only, not calls or notifications",
        )
    }

    pub(crate) fn closed() -> Self {
        Self {
            closed: true,
            ..Self::new(ErrorCode::UNAVAILABLE, "the connection is closed")
        }
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

    /// Whether the connection was closed or gone, or the client answered `UNAVAILABLE`.
    pub fn is_unavailable(&self) -> bool {
        self.body.code == ErrorCode::UNAVAILABLE
    }

    /// Whether the connection ended (or was gone) before the client answered.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

impl From<ErrorBody> for CallError {
    fn from(body: ErrorBody) -> Self {
        Self {
            body,
            closed: false,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.fmt(f)
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for RpcError {
    fn from(e: CallError) -> Self {
        e.body.into()
    }
}

/// A method or channel name as shown in an error message: at most 64 characters, so that a
/// hostile name cannot make the answer large.
pub(crate) fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}
