//! The client's two error types: [`CallError`] for calls, [`ConnectError`] for sessions.
//!
//! Wire errors (`err` frames) and client-side failures meet here, in one place: every
//! [`CallError`] has a wire [`ErrorCode`], so code that branches on codes works the same
//! whether the server or the client gave up.

use std::fmt;

use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload, PayloadError};

/// A boxed error, as returned by hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What caused a [`CallError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// The server answered with an `err` frame, or ended a subscription with a `left`
    /// frame; code, message and data are the server's (code `UNSUBSCRIBED` for a `left`
    /// without error).
    Remote,
    /// The call's deadline passed (code `TIMEOUT`); a `cancel` was sent for it.
    Timeout,
    /// The connection is down or dropped while the call was in flight (code `UNAVAILABLE`).
    Unavailable,
    /// The offline queue is full (code `RATE_LIMITED`); nothing was queued.
    QueueFull,
    /// The client was closed, by [`Client::close`](crate::Client::close) or by a close
    /// code that forbids reconnecting (code `UNAVAILABLE`).
    Closed,
    /// The params could not be encoded, or the frame is larger than the message size limit
    /// (code `VALIDATION_ERROR` or `TOO_LARGE`).
    Encode,
    /// The result (or a stream item) did not fit the expected type (code
    /// `VALIDATION_ERROR`, with `{"path": ...}` as data).
    Decode,
    /// [`Client::join`](crate::Client::join) of a channel this client already has a
    /// [`Subscription`](crate::Subscription) for, or that the server subscribed it to (see
    /// [`ServerSubscriptions`](crate::ServerSubscriptions)) (code `ALREADY_JOINED`); nothing
    /// was sent.
    AlreadyJoined,
}

/// The failure of a call: a request, a notification or a stream.
///
/// One opaque type for every cause; branch on [`CallError::kind`] or on the wire
/// [`CallError::code`], or use the predicates.
#[derive(Clone)]
pub struct CallError {
    kind: CallErrorKind,
    code: ErrorCode,
    message: String,
    data: Option<Payload>,
}

const NOT_CONNECTED: &str = "not connected";

impl CallError {
    pub(crate) fn remote(body: ErrorBody) -> Self {
        Self {
            kind: CallErrorKind::Remote,
            code: body.code,
            message: body.message,
            data: body.data,
        }
    }

    fn local(kind: CallErrorKind, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn timeout() -> Self {
        Self::local(CallErrorKind::Timeout, ErrorCode::TIMEOUT, "call timed out")
    }

    pub(crate) fn idle_timeout() -> Self {
        Self::local(
            CallErrorKind::Timeout,
            ErrorCode::TIMEOUT,
            "no stream item within the idle timeout",
        )
    }

    /// A call that was not sent: no session is open and it may not wait for one.
    pub(crate) fn not_connected() -> Self {
        Self::unavailable(NOT_CONNECTED)
    }

    /// Whether this is [`CallError::not_connected`]: the call never left the client.
    pub(crate) fn is_not_connected(&self) -> bool {
        self.kind == CallErrorKind::Unavailable && self.message == NOT_CONNECTED
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::local(CallErrorKind::Unavailable, ErrorCode::UNAVAILABLE, message)
    }

    pub(crate) fn queue_full() -> Self {
        Self::local(
            CallErrorKind::QueueFull,
            ErrorCode::RATE_LIMITED,
            "offline queue is full",
        )
    }

    pub(crate) fn flow_control() -> Self {
        Self::local(
            CallErrorKind::Decode,
            ErrorCode::BAD_FRAME,
            "the server sent more stream items than the credit window allows",
        )
    }

    pub(crate) fn already_joined(channel: &str) -> Self {
        Self::local(
            CallErrorKind::AlreadyJoined,
            ErrorCode::new("ALREADY_JOINED"),
            format!("this client already has a subscription to `{channel}`"),
        )
    }

    pub(crate) fn already_subscribed_by_server(channel: &str) -> Self {
        Self::local(
            CallErrorKind::AlreadyJoined,
            ErrorCode::new("ALREADY_JOINED"),
            format!("the server already subscribed this client to `{channel}`"),
        )
    }

    /// The end of a subscription by a `left` frame without error.
    pub(crate) fn unsubscribed() -> Self {
        Self::local(
            CallErrorKind::Remote,
            ErrorCode::new("UNSUBSCRIBED"),
            "unsubscribed by the server",
        )
    }

    pub(crate) fn closed() -> Self {
        Self::local(
            CallErrorKind::Closed,
            ErrorCode::UNAVAILABLE,
            "client is closed",
        )
    }

    pub(crate) fn encode(message: impl fmt::Display) -> Self {
        Self::local(
            CallErrorKind::Encode,
            ErrorCode::VALIDATION_ERROR,
            format!("cannot encode params: {message}"),
        )
    }

    pub(crate) fn too_large(len: usize, max: usize) -> Self {
        Self::local(
            CallErrorKind::Encode,
            ErrorCode::TOO_LARGE,
            format!("frame of {len} bytes exceeds the limit of {max} bytes"),
        )
    }

    pub(crate) fn decode(error: &PayloadError) -> Self {
        let data = Payload::encode(
            Codec::Json,
            &serde_json::json!({ "path": error.path(), "message": error.message() }),
        )
        .ok();
        Self {
            kind: CallErrorKind::Decode,
            code: ErrorCode::VALIDATION_ERROR,
            message: format!(
                "cannot decode result at `{}`: {}",
                error.path(),
                error.message()
            ),
            data,
        }
    }

    /// What caused the error.
    pub fn kind(&self) -> CallErrorKind {
        self.kind
    }

    /// The wire error code: the server's for [`CallErrorKind::Remote`], otherwise the code
    /// that describes the client-side cause (`TIMEOUT`, `UNAVAILABLE`, `RATE_LIMITED`, ...).
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error's details, if any (for `VALIDATION_ERROR`: `{"path": ...}`).
    pub fn data(&self) -> Option<&Payload> {
        self.data.as_ref()
    }

    /// Whether the server answered with this error (an `err` frame), or ended a
    /// subscription (a `left` frame).
    pub fn is_remote(&self) -> bool {
        self.kind == CallErrorKind::Remote
    }

    /// Whether the call timed out, here or on the server (code `TIMEOUT`).
    pub fn is_timeout(&self) -> bool {
        self.code == ErrorCode::TIMEOUT
    }

    /// Whether the connection (or the server's peer) was not available: the client was
    /// disconnected or closed, or the server answered `UNAVAILABLE`.
    pub fn is_unavailable(&self) -> bool {
        match self.kind {
            CallErrorKind::Unavailable | CallErrorKind::Closed => true,
            CallErrorKind::Remote => self.code == ErrorCode::UNAVAILABLE,
            _ => false,
        }
    }

    /// Whether the call was cancelled (code `CANCELLED`).
    pub fn is_cancelled(&self) -> bool {
        self.code == ErrorCode::CANCELLED
    }

    /// Whether a join failed because the client already has a subscription to the channel.
    pub fn is_already_joined(&self) -> bool {
        self.kind == CallErrorKind::AlreadyJoined
    }

    /// Whether the offline queue was full.
    pub fn is_queue_full(&self) -> bool {
        self.kind == CallErrorKind::QueueFull
    }

    /// The error as a wire error body, for example to pass a failure on from a handler.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.clone(),
            message: self.message.clone(),
            data: self.data.clone(),
        }
    }
}

impl From<CallError> for ErrorBody {
    fn from(error: CallError) -> Self {
        ErrorBody {
            code: error.code,
            message: error.message,
            data: error.data,
        }
    }
}

impl fmt::Debug for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("CallError");
        s.field("kind", &self.kind)
            .field("code", &self.code)
            .field("message", &self.message);
        if let Some(data) = &self.data {
            s.field("data", data);
        }
        s.finish()
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            CallErrorKind::Remote => write!(f, "server error {}: {}", self.code, self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CallError {}

/// Why a session could not be opened, or why the client stopped.
///
/// [`connect`](crate::connect) returns the error of the last attempt. After the first
/// session, connection errors are logged and the client goes on reconnecting; when it gives
/// up on its own (a fatal error, `max_attempts`, a close code that forbids reconnecting),
/// [`Client::close_reason`](crate::Client::close_reason) tells why.
///
/// Authentication failures have their own variants: [`ConnectError::Unauthorized`] (the
/// credential was refused; retried with a fresh one) and [`ConnectError::Forbidden`] (the
/// credential is valid but not allowed; never retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL with a host.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// A header (or the token as `Authorization` header) is not a valid header value.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The [`credentials`](crate::ClientOptions::credentials) hook failed or took longer
    /// than the connect timeout.
    #[error("credentials hook failed")]
    Credentials(#[source] BoxError),
    /// The `before_connect` hook failed.
    #[error("before_connect hook failed")]
    Hook(#[source] BoxError),
    /// The TCP connection, TLS or WebSocket handshake failed.
    #[error("cannot connect")]
    Transport(#[source] BoxError),
    /// The server refused the credential (missing, invalid or expired): HTTP 401 on the
    /// upgrade, `reject` with `NOT_AUTHORIZED`, or close code 4001 (also of an open
    /// session whose token expired). Not fatal: the client calls its
    /// [`credentials`](crate::ClientOptions::credentials) hook again and retries with
    /// backoff.
    #[error("not authorized{}", with_message(.message))]
    Unauthorized {
        /// The server's explanation (the `reject` message or close reason), or a note on
        /// the HTTP status.
        message: String,
    },
    /// The credential is valid but not allowed to connect: HTTP 403 on the upgrade,
    /// `reject` with `FORBIDDEN`, or close code 4003. Fatal: the client stops reconnecting.
    #[error("forbidden{}", with_message(.message))]
    Forbidden {
        /// The server's explanation (the `reject` message or close reason), or a note on
        /// the HTTP status.
        message: String,
    },
    /// The server answered the upgrade with another HTTP status than 101, 401 or 403
    /// (retried: 503 while a server restarts, for instance).
    #[error("server refused the upgrade with http status {0}")]
    Http(u16),
    /// The server sent `reject` for the `hello` frame with another code than
    /// `NOT_AUTHORIZED` or `FORBIDDEN`; the client does not retry this.
    #[error("session rejected")]
    Rejected(#[source] ErrorBody),
    /// The server closed the connection with this close code (`None`: the connection
    /// ended without one), before `welcome`, or, as a
    /// [`close_reason`](crate::Client::close_reason), with a code that forbids reconnecting
    /// (1008, 4000) or while reconnecting is disabled.
    #[error("connection closed{}", match .0 { Some(code) => format!(" with close code {code}"), None => String::new() })]
    Closed(Option<u16>),
    /// No `welcome` (or no upgrade) within the connect timeout.
    #[error("timed out waiting for welcome")]
    Timeout,
    /// The server sent something that is not the plexus protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The client was closed or dropped while connecting.
    #[error("client closed while connecting")]
    Aborted,
}

fn with_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl ConnectError {
    /// Whether another attempt would fail the same way, so reconnecting is pointless:
    /// a bad URL or header, [`ConnectError::Forbidden`], a `reject` other than
    /// `NOT_AUTHORIZED`, or a close code that forbids reconnecting.
    /// [`ConnectError::Unauthorized`] is not fatal: the next attempt asks for a fresh
    /// credential.
    pub fn is_fatal(&self) -> bool {
        match self {
            ConnectError::InvalidUrl(_)
            | ConnectError::InvalidHeader(_)
            | ConnectError::Forbidden { .. }
            | ConnectError::Rejected(_)
            | ConnectError::Aborted => true,
            ConnectError::Closed(Some(code)) => {
                !plexus_protocol::CloseCode(*code).should_reconnect()
            }
            _ => false,
        }
    }

    /// Whether the server refused the credential ([`ConnectError::Unauthorized`]).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ConnectError::Unauthorized { .. })
    }

    /// Whether the credential is not allowed to connect ([`ConnectError::Forbidden`]).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, ConnectError::Forbidden { .. })
    }

    /// The error for a close code received before `welcome` (or ending a session), with
    /// the close reason: 4001 and 4003 are the authentication failures.
    pub(crate) fn from_close(code: Option<u16>, reason: String) -> Self {
        match code {
            Some(4001) => ConnectError::Unauthorized { message: reason },
            Some(4003) => ConnectError::Forbidden { message: reason },
            code => ConnectError::Closed(code),
        }
    }

    /// The error for a `reject` frame.
    pub(crate) fn from_reject(error: ErrorBody) -> Self {
        if error.code == ErrorCode::NOT_AUTHORIZED {
            ConnectError::Unauthorized {
                message: error.message,
            }
        } else if error.code == ErrorCode::FORBIDDEN {
            ConnectError::Forbidden {
                message: error.message,
            }
        } else {
            ConnectError::Rejected(error)
        }
    }

    /// The error for an HTTP status refusing the upgrade.
    pub(crate) fn from_status(status: u16) -> Self {
        let message = format!("the server refused the upgrade with http status {status}");
        match status {
            401 => ConnectError::Unauthorized { message },
            403 => ConnectError::Forbidden { message },
            status => ConnectError::Http(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_map_to_their_variants() {
        assert!(ConnectError::from_status(401).is_unauthorized());
        assert!(ConnectError::from_status(403).is_forbidden());
        assert!(matches!(
            ConnectError::from_status(503),
            ConnectError::Http(503)
        ));
        let reject = |code| ConnectError::from_reject(ErrorBody::new(code, "no"));
        assert!(reject(ErrorCode::NOT_AUTHORIZED).is_unauthorized());
        assert!(reject(ErrorCode::FORBIDDEN).is_forbidden());
        assert!(matches!(
            reject(ErrorCode::new("BAD_HELLO")),
            ConnectError::Rejected(_)
        ));
        assert!(ConnectError::from_close(Some(4001), String::new()).is_unauthorized());
        assert!(ConnectError::from_close(Some(4003), "banned".into()).is_forbidden());
        assert!(matches!(
            ConnectError::from_close(Some(4000), String::new()),
            ConnectError::Closed(Some(4000))
        ));
    }

    #[test]
    fn only_forbidden_is_fatal_among_auth_failures() {
        assert!(!ConnectError::from_status(401).is_fatal());
        assert!(ConnectError::from_status(403).is_fatal());
        assert!(!ConnectError::from_status(503).is_fatal());
        assert!(ConnectError::Closed(Some(1008)).is_fatal());
    }

    #[test]
    fn messages_are_lowercase_and_skip_an_empty_reason() {
        let error = ConnectError::Unauthorized {
            message: "token expired".into(),
        };
        assert_eq!(error.to_string(), "not authorized: token expired");
        let error = ConnectError::Forbidden {
            message: String::new(),
        };
        assert_eq!(error.to_string(), "forbidden");
    }
}
