//! The bounded outbound queue of one connection, and the socket it shares with publishers.
//!
//! Like a bounded tokio mpsc channel with one receiver, except that an idle connection's
//! queue holds no buffer: tokio's channel allocates its first block of 32 slots up front,
//! which is a large share of an idle connection's memory. This one allocates on first use
//! and gives the memory back once a burst has been written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::Outbound;

/// Capacity kept after the queue empties; more is released.
const KEEP_CAPACITY: usize = 16;

pub(crate) struct OutboundQueue {
    state: Mutex<State>,
    /// The connection's socket (see [`SharedSocket`]).
    socket: Mutex<SocketState>,
    capacity: usize,
    /// Items queued and whether the queue is closed, readable without the lock: the
    /// connection task looks at an empty queue on every turn of its loop.
    len: AtomicUsize,
    closed: AtomicBool,
    /// Set by `kick`: the consumer should look at its flags.
    kicked: AtomicBool,
    /// The connection task (the single consumer) while it waits for an item.
    consumer: AtomicWaker,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Producers waiting for room: a pop skips `room` (and the lock it takes) while none is.
    waiting: AtomicUsize,
    /// Set by a direct write: the connection's idle timer counts it as activity.
    written_directly: AtomicBool,
}

struct State {
    items: VecDeque<Outbound>,
    closed: bool,
    direct: Direct,
}

/// A byte stream a connection runs on.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

/// The connection's socket, shared so that a publisher can write a publication to an idle
/// connection itself: no queueing, no waking the connection's task, one `writev`. The
/// connection's task reads and writes through [`SharedSocket`].
///
/// A direct write may only happen when it cannot overtake or split anything: the task is in
/// its main loop, has nothing taken from the queue and not flushed (`busy`), the queue is
/// empty, and no earlier direct write left a remainder. Otherwise the publication is queued.
/// These flags live under the queue's lock; the socket has a lock of its own, so that the
/// task's reads and writes do not hold up pushes. Whoever holds both (a direct write,
/// [`OutboundQueue::flushed`]) takes the queue's first; the task's reads and writes hold
/// only the socket's.
#[derive(Default)]
struct Direct {
    /// Direct writes are allowed: the task is in its main loop (not greeting, not closing).
    open: bool,
    /// The task has taken frames, or written bytes, that it has not flushed yet.
    busy: bool,
    /// A direct write left a remainder in the socket's backlog.
    backlog: bool,
    /// Largest payload written directly: yawc may compress larger ones.
    max_len: usize,
    binary: bool,
}

/// The socket and what a direct write left unwritten, which goes out before anything else.
#[derive(Default)]
struct SocketState {
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
        Self { queue }
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
        self.queue.lock_socket().socket()?.poll_read(cx, buf)
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

/// Counts a producer as waiting for room for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the consumer of the queue is woken for.
pub(crate) enum QueueEvent {
    Item(Outbound),
    Kick,
    Closed,
}

/// Why an item was not queued.
pub(crate) enum PushError {
    Full,
    Closed,
}

impl OutboundQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                direct: Direct::default(),
            }),
            socket: Mutex::new(SocketState::default()),
            capacity: capacity.max(1),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
            consumer: AtomicWaker::new(),
            room: Notify::new(),
            waiting: AtomicUsize::new(0),
            written_directly: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_socket(&self) -> std::sync::MutexGuard<'_, SocketState> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item if there is room, without waiting.
    pub(crate) fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        self.offer(item, self.capacity).map_err(|(error, _)| error)
    }

    /// Queues an item whatever the queue holds (for items whose size is bounded elsewhere).
    pub(crate) fn force_push(&self, item: Outbound) -> Result<(), PushError> {
        self.offer(item, usize::MAX).map_err(|(error, _)| error)
    }

    /// The most items `try_push` queues.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues an item if fewer than `limit` are queued, or hands it back.
    fn offer(&self, item: Outbound, limit: usize) -> Result<(), (PushError, Outbound)> {
        let mut state = self.lock();
        if state.closed {
            return Err((PushError::Closed, item));
        }
        if state.items.len() >= limit {
            return Err((PushError::Full, item));
        }
        state.items.push_back(item);
        self.len.store(state.items.len(), Ordering::Release);
        drop(state);
        self.consumer.wake();
        Ok(())
    }

    /// Sends a publication: written to the socket at once when `direct` and the connection
    /// is idle (see [`SharedSocket`]), else queued if there is room, like `try_push`.
    pub(crate) fn push_publication(&self, bytes: &Bytes, direct: bool) -> Result<(), PushError> {
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
                    return Ok(());
                }
                DirectWrite::Partly => {
                    state.direct.busy = true;
                    state.direct.backlog = true;
                    drop(state);
                    self.written_directly.store(true, Ordering::Relaxed);
                    // The task writes the rest before anything else.
                    self.kick();
                    return Ok(());
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
        Ok(())
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

    /// Queues an item, waiting for room. Fails only when the queue is closed.
    ///
    /// Items that can wait (replies and stream items) fill at most half the queue: the rest
    /// stays free for `try_push`, which cannot wait and takes a full queue for a slow
    /// consumer. Otherwise a stream that keeps the queue full by design would make a client
    /// that reads everything look slow.
    pub(crate) async fn push(&self, item: Outbound) -> Result<(), PushError> {
        let limit = (self.capacity / 2).max(1);
        let item = match self.offer(item, limit) {
            Ok(()) => return Ok(()),
            Err((PushError::Closed, _)) => return Err(PushError::Closed),
            Err((PushError::Full, back)) => back,
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let mut item = item;
        loop {
            // Register for a wake-up before looking, so a pop in between is not missed.
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            match self.offer(item, limit) {
                Ok(()) => return Ok(()),
                Err((PushError::Closed, _)) => return Err(PushError::Closed),
                Err((PushError::Full, back)) => item = back,
            }
            room.await;
        }
    }

    /// Takes the next item without waiting.
    pub(crate) fn try_pop(&self) -> Option<Outbound> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock();
        let item = state.items.pop_front();
        self.len.store(state.items.len(), Ordering::Release);
        if item.is_some() {
            // Until it is flushed, a direct write would overtake it.
            state.direct.busy = true;
            if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
                state.items = VecDeque::new();
            }
            drop(state);
            // SeqCst pairs with the producer's increment: either it sees the pop's room
            // when it offers again, or this sees it waiting.
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.room.notify_waiters();
            }
        }
        item
    }

    /// Wakes the consumer without an item (its `poll_event` answers `Kick`).
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.consumer.wake();
    }

    /// The next item, a kick, or the end. Only the connection task calls this. A kick
    /// comes first: a queue that never empties (a fast stream, a busy channel) must not
    /// keep the task from a close request or a shutdown.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<QueueEvent> {
        for attempt in 0..2 {
            if self.kicked.load(Ordering::Acquire) && self.kicked.swap(false, Ordering::AcqRel) {
                return Poll::Ready(QueueEvent::Kick);
            }
            if let Some(item) = self.try_pop() {
                return Poll::Ready(QueueEvent::Item(item));
            }
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(QueueEvent::Closed);
            }
            if attempt == 0 {
                self.consumer.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Waits for the next item; `None` once closed (kicks are skipped).
    #[cfg(test)]
    pub(crate) async fn pop(&self) -> Option<Outbound> {
        loop {
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                QueueEvent::Item(item) => return Some(item),
                QueueEvent::Kick => continue,
                QueueEvent::Closed => return None,
            }
        }
    }

    /// Closes the queue: queued items are dropped and every waiting producer fails.
    pub(crate) fn close(&self) {
        let items = {
            let mut state = self.lock();
            state.closed = true;
            self.closed.store(true, Ordering::Release);
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut state.items)
        };
        drop(items);
        self.room.notify_waiters();
        self.consumer.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn item(n: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![n]))
    }

    fn value(item: Outbound) -> u8 {
        match item {
            Outbound::Frame(bytes) => bytes[0],
            _ => unreachable!(),
        }
    }

    #[test]
    fn bounded_and_in_order() {
        let queue = OutboundQueue::new(2);
        assert!(queue.try_push(item(1)).is_ok());
        assert!(queue.try_push(item(2)).is_ok());
        assert!(matches!(queue.try_push(item(3)), Err(PushError::Full)));
        assert_eq!(queue.try_pop().map(value), Some(1));
        assert!(queue.try_push(item(3)).is_ok());
        assert_eq!(queue.try_pop().map(value), Some(2));
        assert_eq!(queue.try_pop().map(value), Some(3));
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn idle_queue_holds_no_buffer() {
        let queue = OutboundQueue::new(1024);
        assert_eq!(queue.lock().items.capacity(), 0);
        for n in 0..100 {
            assert!(queue.try_push(item(n)).is_ok());
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().items.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn push_waits_for_room() {
        let queue = Arc::new(OutboundQueue::new(1));
        assert!(queue.try_push(item(1)).is_ok());
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(2)).await.is_ok() }
        });
        assert_eq!(queue.pop().await.map(value), Some(1));
        assert_eq!(queue.pop().await.map(value), Some(2));
        assert!(producer.await.unwrap());
    }

    #[tokio::test]
    async fn waiting_pushes_leave_half_the_queue_to_try_push() {
        let queue = Arc::new(OutboundQueue::new(4));
        assert!(queue.push(item(1)).await.is_ok());
        assert!(queue.push(item(2)).await.is_ok());
        // Half full: a third waiting push waits, while try_push still finds room.
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(5)).await.is_ok() }
        });
        assert!(queue.try_push(item(3)).is_ok());
        assert!(queue.try_push(item(4)).is_ok());
        assert!(matches!(queue.try_push(item(9)), Err(PushError::Full)));
        for n in 1..=5 {
            assert_eq!(queue.pop().await.map(value), Some(n));
        }
        assert!(producer.await.unwrap());
    }

    #[tokio::test]
    async fn close_fails_waiting_producers_and_ends_the_consumer() {
        let queue = Arc::new(OutboundQueue::new(1));
        assert!(queue.try_push(item(1)).is_ok());
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(2)).await.is_err() }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), producer)
                .await
                .unwrap()
                .unwrap()
        );
        assert!(queue.pop().await.is_none());
        assert!(matches!(queue.try_push(item(3)), Err(PushError::Closed)));
    }

    #[tokio::test]
    async fn a_dropped_pop_loses_nothing() {
        let queue = Arc::new(OutboundQueue::new(4));
        // A pop that is polled while empty, then dropped, must not swallow a later item.
        let _ = tokio::time::timeout(Duration::from_millis(1), queue.pop()).await;
        assert!(queue.try_push(item(7)).is_ok());
        assert_eq!(queue.pop().await.map(value), Some(7));
    }
}

#[cfg(test)]
mod kick_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_kick_wakes_the_consumer_without_an_item() {
        let queue = Arc::new(OutboundQueue::new(4));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move {
                matches!(
                    std::future::poll_fn(|cx| queue.poll_event(cx)).await,
                    QueueEvent::Kick
                )
            }
        });
        tokio::task::yield_now().await;
        queue.kick();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_kick_goes_before_queued_items() {
        let queue = OutboundQueue::new(4);
        assert!(
            queue
                .try_push(Outbound::Frame(Bytes::from_static(b"a")))
                .is_ok()
        );
        queue.kick();
        let next = || std::future::poll_fn(|cx| queue.poll_event(cx));
        assert!(matches!(next().await, QueueEvent::Kick));
        assert!(matches!(next().await, QueueEvent::Item(_)));
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
