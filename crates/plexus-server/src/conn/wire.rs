//! [`Wire`]: the WebSocket of one connection as its session sees it — frames read, frames
//! to write, one place that writes and flushes them, and the ways a connection closes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use plexus_protocol::CloseCode;
use yawc::{OpCode, WebSocket};

use super::close::{CLOSE_TIMEOUT, MAX_CONTROL_PAYLOAD, write_close_reply};
use super::queue::{OutboundQueue, SharedSocket};
use super::{CloseReason, ConnectionHandle, DisconnectReason};

/// The upgraded WebSocket of one connection.
pub(crate) type Socket = WebSocket<SharedSocket>;

/// A message read from the socket.
pub(crate) enum Inbound {
    /// A data message: its payload, and whether it came as a binary message.
    Message { payload: Bytes, binary: bool },
    /// A ping or pong (yawc answers pings itself): only proof that the peer is there.
    Control,
    /// The peer sent a close frame (with this code, if any); yawc has queued the reply.
    PeerClosed(Option<u16>),
    /// The connection must end now, without a close handshake.
    Ended(DisconnectReason),
}

impl Inbound {
    /// What a frame read from the socket means for the connection.
    pub(crate) fn of(frame: yawc::Frame) -> Self {
        let binary = match frame.opcode() {
            OpCode::Text => false,
            OpCode::Binary => true,
            OpCode::Close => {
                if frame.payload().len() > MAX_CONTROL_PAYLOAD {
                    // A protocol error that yawc would echo back: drop the connection instead.
                    return Inbound::Ended(DisconnectReason::ServerClosed(
                        CloseCode::PROTOCOL_ERROR,
                        "oversized close frame".into(),
                    ));
                }
                return Inbound::PeerClosed(frame.close_code().map(u16::from));
            }
            _ => return Inbound::Control,
        };
        Inbound::Message {
            payload: frame.into_payload(),
            binary,
        }
    }
}

/// The socket, and the frames waiting to be written to it by [`Wire::drain`].
///
/// Everything the session decides to send is pushed here first and written in one place,
/// so that the session's own future (which lives as long as the connection) holds no write
/// in progress, and rare endings (close handshakes, read errors) are separate futures.
pub(crate) struct Wire {
    ws: Socket,
    queue: Arc<OutboundQueue>,
    out: VecDeque<yawc::Frame>,
    binary: bool,
}

impl Wire {
    /// The wire of `ws`, whose socket is shared through `queue`; data frames go out as
    /// binary messages when `binary`, else as text.
    pub(crate) fn new(ws: Socket, queue: Arc<OutboundQueue>, binary: bool) -> Self {
        Self {
            ws,
            queue,
            // Room for one frame (the `welcome`): grown from empty it would hold room for
            // four, kept for the life of an idle connection.
            out: VecDeque::with_capacity(1),
            binary,
        }
    }

    /// Reads the next frame.
    pub(crate) async fn next_frame(&mut self) -> Result<yawc::Frame, yawc::WebSocketError> {
        self.ws.next_frame().await
    }

    /// Queues an encoded frame for writing as a data message.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        let frame = if self.binary {
            yawc::Frame::binary(bytes)
        } else {
            yawc::Frame::text(bytes)
        };
        self.out.push_back(frame);
    }

    /// Queues a data message of the type given, whatever the connection's codec (a raw
    /// socket's).
    pub(crate) fn push_message(&mut self, bytes: Bytes, binary: bool) {
        let frame = if binary {
            yawc::Frame::binary(bytes)
        } else {
            yawc::Frame::text(bytes)
        };
        self.out.push_back(frame);
    }

    /// Queues a WebSocket ping.
    pub(crate) fn push_ping(&mut self) {
        self.out.push_back(yawc::Frame::ping(Bytes::new()));
    }

    /// Whether frames wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes every queued frame and flushes. A peer that stopped reading must not keep us
    /// from acting on a close request, so a stalled write gives way to one.
    pub(crate) async fn drain(&mut self, conn: &ConnectionHandle) -> Result<(), DisconnectReason> {
        let close = &conn.shared.close;
        let ws = &mut self.ws;
        let out = &mut self.out;
        count_sent(out);
        let write = async {
            while let Some(frame) = out.pop_front() {
                ws.feed(frame).await?;
            }
            ws.flush().await
        };
        let result = tokio::select! {
            biased;
            result = write => result.map_err(|e| DisconnectReason::Transport(e.to_string())),
            _ = close.fired() => Err(requested_close(conn)),
        };
        if result.is_ok() {
            self.queue.flushed();
        }
        if self.out.capacity() > 64 {
            self.out = VecDeque::new();
        }
        result
    }

    /// Writes what is queued, then a close frame, and waits (up to a bound) for the peer's
    /// reply. Nothing may follow the close frame: direct writes stop first.
    pub(crate) async fn close(&mut self, code: CloseCode, reason: CloseReason) -> DisconnectReason {
        self.queue.set_direct(false);
        let ws = &mut self.ws;
        let out = &mut self.out;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            // Frames taken for writing before the close go first.
            while let Some(frame) = out.pop_front() {
                if ws.feed(frame).await.is_err() {
                    return;
                }
            }
            let frame = yawc::Frame::close(yawc::close::CloseCode::from(code.0), reason.as_bytes());
            if ws.send(frame).await.is_ok() {
                // Wait for the client's close reply (or the end of the socket).
                while ws.next_frame().await.is_ok() {}
            }
        })
        .await;
        DisconnectReason::ServerClosed(code, reason)
    }

    /// The peer closed: write the reply yawc queued, then drop the TCP connection ourselves,
    /// as the server should (RFC 6455, 7.1.1).
    pub(crate) async fn peer_closed(&mut self, code: Option<u16>) -> DisconnectReason {
        self.queue.set_direct(false);
        let reply = write_close_reply(&mut self.ws);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, reply).await;
        DisconnectReason::ClientClosed(code)
    }

    /// The connection ends without a handshake: no more direct writes.
    pub(crate) fn abandon(&mut self, reason: DisconnectReason) -> DisconnectReason {
        self.queue.set_direct(false);
        reason
    }

    /// Reading failed. For errors of the frame layer yawc has queued a close frame with the
    /// matching code (1002, 1009, ...), written by the next read poll, which then ends; for
    /// those it finds above it (invalid UTF-8 in a text message, a message assembled past
    /// the limit, a bad fragment) it queues nothing and would go on reading, so the close
    /// frame is sent here. Either way the socket is read until it ends, within a bound.
    pub(crate) async fn read_failed(&mut self, error: yawc::WebSocketError) -> DisconnectReason {
        self.queue.set_direct(false);
        if matches!(error, yawc::WebSocketError::ConnectionClosed) {
            return DisconnectReason::Transport("connection closed".into());
        }
        if matches!(error, yawc::WebSocketError::InvalidOpCode(_)) {
            // yawc would close with 1003 (unsupported data), where RFC 6455 fails the
            // connection (1002): dropping it without a close frame is what a peer expects.
            return DisconnectReason::ServerClosed(
                CloseCode::PROTOCOL_ERROR,
                "reserved opcode".into(),
            );
        }
        let (code, reason) = match error {
            yawc::WebSocketError::FrameTooLarge => (CloseCode::TOO_LARGE, "message too large"),
            yawc::WebSocketError::InvalidUTF8 => (CloseCode::INVALID_DATA, "invalid UTF-8"),
            _ => (CloseCode::PROTOCOL_ERROR, "protocol error"),
        };
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            // Getting ready to write sends the close yawc queued, if it did; then a read that
            // ends at once says it closed the reading side, and no second close is due.
            if std::future::poll_fn(|cx| ws.poll_ready_unpin(cx))
                .await
                .is_err()
            {
                return;
            }
            let closed_by_yawc = matches!(ws.next_frame().now_or_never(), Some(Err(_)));
            if !closed_by_yawc {
                let frame =
                    yawc::Frame::close(yawc::close::CloseCode::from(code.0), reason.as_bytes());
                if ws.send(frame).await.is_err() {
                    return;
                }
            }
            while ws.next_frame().await.is_ok() {}
        })
        .await;
        DisconnectReason::ServerClosed(code, reason.into())
    }
}

/// Why a connection ends when a close was requested (slow consumer, `ConnectionHandle::close`)
/// while a write was stalled: the requested close, though its frame cannot get through.
fn requested_close(conn: &ConnectionHandle) -> DisconnectReason {
    let (code, reason) = conn
        .requested_close()
        .unwrap_or((CloseCode::NORMAL, CloseReason::Borrowed("")));
    DisconnectReason::ServerClosed(code, reason)
}

/// Counts the data messages about to be written, once per write rather than per frame.
fn count_sent(out: &VecDeque<yawc::Frame>) {
    let (mut messages, mut bytes) = (0, 0);
    for frame in out.iter().filter(|f| !f.opcode().is_control()) {
        messages += 1;
        bytes += frame.payload().len() as u64;
    }
    let metrics = crate::metrics::server();
    metrics.outbound_queue_depth.record(out.len() as f64);
    metrics.messages_sent.increment(messages);
    metrics.bytes_sent.increment(bytes);
}
