//! [`RawMessage`]: one WebSocket data message as it is, for raw sockets.

use bytes::Bytes;

/// One WebSocket data message, bytes and type exactly as they came or will go: what a raw
/// socket's handler reads and writes. A text message always holds valid UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    bytes: Bytes,
    binary: bool,
}

impl RawMessage {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            bytes: Bytes::from(text.into()),
            binary: false,
        }
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            binary: true,
        }
    }

    /// A text message of `bytes`, or `None` when they are not UTF-8.
    pub fn text_from_bytes(bytes: impl Into<Bytes>) -> Option<Self> {
        let bytes = bytes.into();
        std::str::from_utf8(&bytes).ok()?;
        Some(Self {
            bytes,
            binary: false,
        })
    }

    /// A message read from a socket, whose text the WebSocket layer has validated.
    pub(crate) fn read(bytes: Bytes, binary: bool) -> Self {
        Self { bytes, binary }
    }

    /// Whether it is a binary message.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        !self.binary
    }

    /// The payload.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The text of a text message (`None` for a binary one).
    pub fn as_text(&self) -> Option<&str> {
        if self.binary {
            return None;
        }
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The payload, and whether it is binary.
    pub fn into_parts(self) -> (Bytes, bool) {
        (self.bytes, self.binary)
    }
}
