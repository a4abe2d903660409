//! Direct writes: a publisher writes a publication straight to an idle connection's socket,
//! with no queueing and no wake-up of the connection's task (one `writev` of header and
//! payload). Measured worth keeping: it is what makes a quiet channel's message reach an idle
//! subscriber without a task switch (see `hub/fanout.rs` for when the hub asks for it).
//!
//! The socket is shared: the connection's task reads and writes it through [`SharedSocket`],
//! and a publisher through [`OutboundQueue::push_publication`]. The invariants, stated once:
//!
//! 1. **Nothing is overtaken.** A direct write happens only while the queue is empty and the
//!    task has flushed everything it took from it (`busy` is clear): a frame the task holds
//!    would otherwise be overtaken.
//! 2. **Nothing is split.** It happens only while the task is in its main loop (`open`: not
//!    greeting, not closing) and no earlier direct write left a remainder (`backlog`). A
//!    remainder is finished by the task before anything else it writes ([`SharedSocket`]'s
//!    writes and flushes write the backlog first), and [`OutboundQueue::flushed`] never clears
//!    `busy` while one is owed.
//! 3. **Only yawc compresses.** On a compressed connection only payloads under the
//!    compression threshold (`max_len`) are written directly.
//! 4. **Locks in one order.** The flags live under the queue's lock, the socket and its
//!    backlog under a lock of their own (so the task's reads and writes do not hold up
//!    pushes). Whoever takes both (a direct write, [`OutboundQueue::flushed`]) takes the
//!    queue's first; the task's reads and writes take only the socket's.
//! 5. **A socket that takes nothing** means the publication is queued instead; one that takes
//!    part of it leaves the rest in the backlog and kicks the task.
//!
//! Direct writes run under `tokio::task::unconstrained` at the caller (tokio's cooperative
//! budget would make them look blocked after a few hundred in one fan-out).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::read_ahead::ReadAhead;
use super::{Outbound, OutboundQueue, PushError};

/// A byte stream a connection runs on.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// The direct-write flags, under the queue's lock (see the module documentation).
#[derive(Default)]
pub(super) struct Direct {
    /// Direct writes are allowed: the task is in its main loop (not greeting, not closing).
    pub(super) open: bool,
    /// The task has taken frames, or written bytes, that it has not flushed yet.
    pub(super) busy: bool,
    /// A direct write left a remainder in the socket's backlog.
    pub(super) backlog: bool,
    /// Largest payload written directly: yawc may compress larger ones.
    pub(super) max_len: usize,
    pub(super) binary: bool,
}

/// The socket and what a direct write left unwritten, which goes out before anything else.
#[derive(Default)]
pub(super) struct SocketState {
    socket: Option<Box<dyn Socket>>,
    backlog: BytesMut,
}

/// How a direct write went.
enum DirectWrite {
    /// Not attempted, or the socket took nothing: queue the publication instead.
    NotWritten,
    /// The whole frame is on its way.
    Written,
    /// Part of it is; the rest is in the backlog for the connection's task.
    Partly,
}

impl SocketState {
    /// Writes one frame without waiting.
    fn write_frame(&mut self, binary: bool, payload: &Bytes) -> DirectWrite {
        // The flags rule this out; a remainder must never be split or replaced, whatever.
        if !self.backlog.is_empty() {
            return DirectWrite::NotWritten;
        }
        let Some(socket) = self.socket.as_mut() else {
            return DirectWrite::NotWritten;
        };
        let mut header = [0u8; 10];
        let header = frame_header(binary, payload.len(), &mut header);
        let total = header.len() + payload.len();
        // Nobody is waiting to write (not busy), so the no-op waker replaces no one's.
        let mut cx = Context::from_waker(Waker::noop());
        let bufs = [IoSlice::new(header), IoSlice::new(payload)];
        match Pin::new(socket).poll_write_vectored(&mut cx, &bufs) {
            Poll::Ready(Ok(n)) if n == total => DirectWrite::Written,
            Poll::Ready(Ok(n)) if n > 0 => {
                let mut rest = BytesMut::with_capacity(total - n);
                if n < header.len() {
                    rest.extend_from_slice(&header[n..]);
                    rest.extend_from_slice(payload);
                } else {
                    rest.extend_from_slice(&payload[n - header.len()..]);
                }
                self.backlog = rest;
                DirectWrite::Partly
            }
            // Full, closed or failing: the task's own write finds out which.
            _ => DirectWrite::NotWritten,
        }
    }

    /// Writes the backlog out; ready once it is empty.
    fn poll_backlog(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.backlog.is_empty() {
            let Some(socket) = self.socket.as_mut() else {
                return Poll::Ready(Err(no_socket()));
            };
            let n = ready!(Pin::new(socket).poll_write(cx, &self.backlog))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.backlog.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn socket(&mut self) -> io::Result<Pin<&mut Box<dyn Socket>>> {
        self.socket.as_mut().map(Pin::new).ok_or_else(no_socket)
    }
}

/// The header of an unmasked, unfragmented data frame (RFC 6455, 5.2).
fn frame_header(binary: bool, len: usize, out: &mut [u8; 10]) -> &[u8] {
    out[0] = 0x80 | if binary { 0x2 } else { 0x1 };
    let used = if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    &out[..used]
}

/// The connection's socket as its task (through yawc) sees it. Every write marks the task
/// busy until [`OutboundQueue::flushed`], so that no direct write comes in the middle of
/// one, and first finishes what a direct write left. Dropping it closes the socket.
pub(crate) struct SharedSocket {
    queue: Arc<OutboundQueue>,
    ahead: ReadAhead,
}

impl SharedSocket {
    /// Shares `socket` through `queue`. Publications of at most `max_direct_len` bytes may be
    /// written to it directly, as binary frames if `binary`, else text.
    pub(crate) fn new(
        queue: Arc<OutboundQueue>,
        socket: Box<dyn Socket>,
        binary: bool,
        max_direct_len: usize,
    ) -> Self {
        queue.lock_socket().socket = Some(socket);
        {
            let mut state = queue.lock();
            state.direct.binary = binary;
            state.direct.max_len = max_direct_len;
        }
        Self {
            queue,
            ahead: ReadAhead::default(),
        }
    }
}

impl Drop for SharedSocket {
    fn drop(&mut self) {
        self.queue.lock().direct.open = false;
        let socket = self.queue.lock_socket().socket.take();
        drop(socket);
    }
}

fn no_socket() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut socket = this.queue.lock_socket();
        this.ahead.poll_read(socket.socket()?.get_mut(), cx, buf)
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.queue.lock().direct.busy = true;
        let mut socket = self.queue.lock_socket();
        ready!(socket.poll_backlog(cx))?;
        socket.socket()?.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket = self.queue.lock_socket();
        ready!(socket.poll_backlog(cx))?;
        socket.socket()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.queue.lock().direct.open = false;
        let mut socket = self.queue.lock_socket();
        ready!(socket.poll_backlog(cx))?;
        match socket.socket.as_mut() {
            Some(socket) => Pin::new(socket).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl OutboundQueue {
    /// Sends a publication: written to the socket at once when `direct` and the connection
    /// is idle (see [`SharedSocket`]), else queued if there is room, like `try_push`.
    /// `Ok(true)`: written (at least begun) directly.
    pub(crate) fn push_publication(&self, bytes: &Bytes, direct: bool) -> Result<bool, PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        let idle = {
            let direct = &state.direct;
            direct.open && !direct.busy && !direct.backlog && bytes.len() <= direct.max_len
        };
        if direct && idle && state.items.is_empty() {
            let binary = state.direct.binary;
            match self.lock_socket().write_frame(binary, bytes) {
                DirectWrite::Written => {
                    drop(state);
                    self.written_directly.store(true, Ordering::Relaxed);
                    return Ok(true);
                }
                DirectWrite::Partly => {
                    state.direct.busy = true;
                    state.direct.backlog = true;
                    drop(state);
                    self.written_directly.store(true, Ordering::Relaxed);
                    // The task writes the rest before anything else.
                    self.kick();
                    return Ok(true);
                }
                DirectWrite::NotWritten => {}
            }
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        state.items.push_back(Outbound::Frame(bytes.clone()));
        self.len.store(state.items.len(), Ordering::Release);
        drop(state);
        self.consumer.wake();
        Ok(false)
    }

    /// Allows direct writes (`true`, when the task enters its main loop) or stops them for
    /// good (`false`, before the task writes a close frame or gives up on the socket).
    pub(crate) fn set_direct(&self, open: bool) {
        self.lock().direct.open = open;
    }

    /// The task has flushed everything it took: direct writes may go on.
    pub(crate) fn flushed(&self) {
        let mut state = self.lock();
        // Not busy: nothing to clear, and a direct write may be under way, whose remainder
        // must not be forgotten. Busy: no direct write happens until this clears it, so a
        // remainder can only shrink meanwhile (the task writes it).
        if !state.direct.busy {
            return;
        }
        if state.direct.backlog && !self.lock_socket().backlog.is_empty() {
            return;
        }
        state.direct.busy = false;
        state.direct.backlog = false;
    }

    /// Whether a direct write left a remainder the task must flush.
    pub(crate) fn has_backlog(&self) -> bool {
        self.lock().direct.backlog
    }

    /// Whether a publication was written directly since the last call.
    pub(crate) fn take_written_directly(&self) -> bool {
        self.written_directly.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod direct_tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A queue whose connection runs on one end of an in-memory pipe of `room` bytes; the
    /// other end is the client's.
    fn shared(room: usize) -> (Arc<OutboundQueue>, SharedSocket, DuplexStream) {
        let (server, client) = tokio::io::duplex(room);
        let queue = Arc::new(OutboundQueue::new(8));
        let socket = SharedSocket::new(queue.clone(), Box::new(server), false, usize::MAX);
        queue.set_direct(true);
        (queue, socket, client)
    }

    async fn read_frame(client: &mut DuplexStream) -> Vec<u8> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a final text frame");
        let len = match head[1] {
            126 => usize::from(client.read_u16().await.unwrap()),
            127 => usize::try_from(client.read_u64().await.unwrap()).unwrap(),
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        payload
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut out = [0u8; 10];
        assert_eq!(frame_header(false, 125, &mut out), [0x81, 125]);
        assert_eq!(frame_header(true, 126, &mut out), [0x82, 126, 0, 126]);
        assert_eq!(
            frame_header(false, 65_535, &mut out),
            [0x81, 126, 0xff, 0xff]
        );
        assert_eq!(
            frame_header(false, 65_536, &mut out),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[tokio::test]
    async fn an_idle_connection_gets_the_frame_at_once() {
        let (queue, _socket, mut client) = shared(1024);
        let publication = Bytes::from_static(b"{\"n\":1}");
        assert!(queue.push_publication(&publication, true).is_ok());
        assert!(queue.try_pop().is_none(), "nothing was queued");
        assert_eq!(read_frame(&mut client).await, b"{\"n\":1}");
        assert!(queue.take_written_directly());
    }

    #[tokio::test]
    async fn a_cut_short_write_is_finished_before_anything_else() {
        let (queue, mut socket, mut client) = shared(64);
        let first = Bytes::from(vec![b'a'; 200]);
        let second = Bytes::from(vec![b'b'; 10]);
        assert!(queue.push_publication(&first, true).is_ok());
        assert!(queue.has_backlog(), "the pipe took 64 of 202 bytes");
        // A flush that did not write the rest leaves it owed.
        queue.flushed();
        assert!(queue.has_backlog(), "the rest is still owed");
        // Queued behind the rest, not written in the middle of it.
        assert!(queue.push_publication(&second, true).is_ok());
        let reader = tokio::spawn(async move {
            let frames = (read_frame(&mut client).await, read_frame(&mut client).await);
            (frames, client)
        });
        // The connection's task: the flush writes the rest, then it writes what it pops.
        socket.flush().await.unwrap();
        let Some(Outbound::Frame(popped)) = queue.try_pop() else {
            panic!("the second publication waited in the queue");
        };
        let mut frame = frame_header(false, popped.len(), &mut [0; 10]).to_vec();
        frame.extend_from_slice(&popped);
        socket.write_all(&frame).await.unwrap();
        socket.flush().await.unwrap();
        let ((one, two), _client) = reader.await.unwrap();
        assert_eq!((one, two), (first.to_vec(), second.to_vec()));
        // Flushed, the connection is idle again and the next one goes straight out.
        queue.flushed();
        assert!(!queue.has_backlog());
        assert!(
            queue
                .push_publication(&Bytes::from_static(b"c"), true)
                .is_ok()
        );
        assert!(queue.try_pop().is_none());
    }

    #[tokio::test]
    async fn no_direct_write_while_busy_closing_or_not_allowed() {
        let (queue, _socket, _client) = shared(1024);
        let publication = Bytes::from_static(b"x");
        // Not allowed by the caller.
        assert!(queue.push_publication(&publication, false).is_ok());
        // Busy: the task took that one and has not flushed it.
        assert!(queue.try_pop().is_some());
        assert!(queue.push_publication(&publication, true).is_ok());
        assert!(queue.try_pop().is_some(), "queued while busy");
        queue.flushed();
        // Closing: nothing may follow the close frame.
        queue.set_direct(false);
        assert!(queue.push_publication(&publication, true).is_ok());
        assert!(queue.try_pop().is_some(), "queued once closing");
        assert!(!queue.take_written_directly());
    }

    #[tokio::test]
    async fn dropping_the_socket_closes_it_even_while_handles_keep_the_queue() {
        let (queue, socket, mut client) = shared(1024);
        drop(socket);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        assert!(
            queue
                .push_publication(&Bytes::from_static(b"x"), true)
                .is_ok()
        );
        assert!(queue.try_pop().is_some(), "no socket left to write to");
    }
}
