use std::borrow::Cow;
use std::fmt;

use crate::Payload;

/// The `code` of an error: an UPPER_SNAKE string. The built-in codes are constants here;
/// applications add their own with [`ErrorCode::new`].
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(Cow<'static, str>);

impl ErrorCode {
    /// A frame could not be parsed or is not a valid frame.
    pub const BAD_FRAME: Self = Self::from_static("BAD_FRAME");
    /// The params of a call do not fit the method's parameter type.
    pub const VALIDATION_ERROR: Self = Self::from_static("VALIDATION_ERROR");
    /// No such method (or channel, or connection).
    pub const NOT_FOUND: Self = Self::from_static("NOT_FOUND");
    /// No valid credential.
    pub const NOT_AUTHORIZED: Self = Self::from_static("NOT_AUTHORIZED");
    /// A valid credential that lacks the permission.
    pub const FORBIDDEN: Self = Self::from_static("FORBIDDEN");
    /// The call took longer than its deadline.
    pub const TIMEOUT: Self = Self::from_static("TIMEOUT");
    /// The call was cancelled.
    pub const CANCELLED: Self = Self::from_static("CANCELLED");
    /// No provider serves the method right now (relay mode).
    pub const SERVICE_OFFLINE: Self = Self::from_static("SERVICE_OFFLINE");
    /// The request conflicts with the current state (a relay's node id already held by
    /// another connection).
    pub const CONFLICT: Self = Self::from_static("CONFLICT");
    /// A rate or concurrency limit was hit.
    pub const RATE_LIMITED: Self = Self::from_static("RATE_LIMITED");
    /// A value is larger than allowed.
    pub const TOO_LARGE: Self = Self::from_static("TOO_LARGE");
    /// The peer or the connection is not available.
    pub const UNAVAILABLE: Self = Self::from_static("UNAVAILABLE");
    /// An unexpected failure; details are logged, not sent.
    pub const INTERNAL: Self = Self::from_static("INTERNAL");

    /// A code known at compile time.
    pub const fn from_static(code: &'static str) -> Self {
        Self(Cow::Borrowed(code))
    }

    /// An application-defined code.
    pub fn new(code: impl Into<Cow<'static, str>>) -> Self {
        Self(code.into())
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The body of an `err` or `reject` frame: `{"code":...,"message":...,"data":...}`.
///
/// Its serde form (the same fields) is what carries an error between nodes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong, as a code a program can branch on.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// Optional details (for `VALIDATION_ERROR`: `{"path": "<serde path>"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
}

impl ErrorBody {
    /// An error without data.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data` attached.
    pub fn with_data(mut self, data: Payload) -> Self {
        self.data = Some(data);
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// A WebSocket close code as plexus uses it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// Normal close.
    pub const NORMAL: Self = Self(1000);
    /// The server is going away (shutdown, drain): reconnect, possibly elsewhere.
    pub const GOING_AWAY: Self = Self(1001);
    /// The WebSocket protocol was violated.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// A message was not valid for its type (for example invalid UTF-8 in a text message).
    pub const INVALID_DATA: Self = Self(1007);
    /// Policy violation (for example a binary message on the JSON protocol).
    pub const POLICY: Self = Self(1008);
    /// A message was larger than the limit.
    pub const TOO_LARGE: Self = Self(1009);
    /// The server hit an unexpected condition.
    pub const INTERNAL: Self = Self(1011);
    /// Try again later: the server could not take the connection now (a raw socket's
    /// handler refused it).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// The session did not start correctly (no `hello` in time, or a bad one).
    pub const BAD_HANDSHAKE: Self = Self(4000);
    /// Not authorized: no valid credential (or it expired).
    pub const NOT_AUTHORIZED: Self = Self(4001);
    /// Forbidden: a valid credential without the permission to connect.
    pub const FORBIDDEN: Self = Self(4003);
    /// The peer stopped answering (heartbeat timeout).
    pub const HEARTBEAT_TIMEOUT: Self = Self(4002);
    /// Slow consumer: the connection's outbound queue overflowed.
    pub const SLOW_CONSUMER: Self = Self(4008);
    /// Too many bad frames or requests.
    pub const TOO_MANY_BAD_FRAMES: Self = Self(4029);

    /// Whether a client should reconnect after this close: everything except the
    /// authentication and policy codes, where the same attempt would fail again.
    pub fn should_reconnect(self) -> bool {
        !matches!(self.0, 1008 | 4000 | 4001 | 4003)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
