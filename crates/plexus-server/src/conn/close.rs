//! How a connection ends: [`DisconnectReason`], close reasons, and the close handshake's
//! last step.

use std::borrow::Cow;
use std::time::Duration;

use plexus_protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use yawc::WebSocket;

/// The text of a close frame, at most [`MAX_CLOSE_REASON`] bytes.
pub type CloseReason = Cow<'static, str>;

/// Control frames carry at most 125 bytes (RFC 6455, 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A close frame's reason fits beside its 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// How long a close handshake may take before the socket is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection ended, as given to `on_disconnect`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client closed the connection (with this close code, if it gave one).
    ClientClosed(Option<u16>),
    /// The server closed it with this code and reason.
    ServerClosed(CloseCode, CloseReason),
    /// The socket failed or ended without a close handshake.
    Transport(String),
}

/// `reason` cut, at a character boundary, to what a close frame can carry.
pub(crate) fn close_reason(reason: CloseReason) -> CloseReason {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(reason[..end].to_owned())
}

/// Writes the close reply yawc queued when it read the peer's close. yawc writes such
/// replies from `poll_ready` (or the next read), not from `flush`.
pub(crate) async fn write_close_reply<S>(ws: &mut WebSocket<S>) -> Result<(), yawc::WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
    ws.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(close_reason("bye".into()), "bye");
        let long = "é".repeat(100);
        let cut = close_reason(long.into());
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122, "61 two-byte characters");
    }
}
