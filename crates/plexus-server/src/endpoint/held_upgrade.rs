//! [`HeldUpgrade`]: an accepted socket that holds back plexus's `101 Switching Protocols`
//! answer until the WebSocket's first bytes, so that both leave in one write.
//!
//! hyper writes and flushes the `101` on its own; the session then writes the `welcome`.
//! Two writes are two system calls and two TCP segments, each a trip through the network
//! stack and a wake-up of the client (`perf` put the `101`'s write at a quarter of the
//! server's CPU for a connection set up). Held back, the `101` goes out with whatever the
//! session does first: its first write carries both, and a first read of the socket (a
//! session waiting for the client's `hello`, which the client sends only once it has the
//! `101`) or any later flush or shutdown sends it alone first. hyper's own flush right after
//! the `101` is the one flush that does not: the answer has not left when hyper hands the
//! socket over. A session that waits before its first read or write (a pool or raw handler
//! slow to take the connection) flushes first, so the handshake never waits on it. A client
//! that sent its `hello` with the upgrade request gets the `101` with the `welcome` (or the
//! refusal), once the `hello` is checked.
//!
//! Only an upgrade plexus answers is held: it arms the connection's [`UpgradeHold`] (which
//! `serve` puts in each request's extensions) as it answers. An application's own upgrade
//! routes, served beside plexus's, may wait before their first write; theirs go out as
//! hyper writes them.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How an upgrade's answer starts.
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

/// Set by plexus's upgrade as it answers one: the `101` hyper writes next is held.
#[derive(Clone, Default)]
pub(crate) struct UpgradeHold(Arc<AtomicBool>);

impl UpgradeHold {
    pub(crate) fn arm(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_armed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A socket whose `101` answer waits for the first bytes after it (see the module docs).
pub(crate) struct HeldUpgrade<I> {
    io: I,
    /// Until a `101` is held: once one has been, the bytes are the WebSocket's.
    hold: Option<UpgradeHold>,
    held: Option<Box<Held>>,
    /// The held answer went out alone and must be flushed (a buffering stream would keep it).
    unflushed: bool,
}

struct Held {
    bytes: Vec<u8>,
    /// How much of `bytes` has been written.
    written: usize,
    /// Whether hyper's flush after the `101` has come (and been let pass).
    flush_passed: bool,
}

impl<I> HeldUpgrade<I> {
    /// Wraps `io`, holding the `101` that follows an arming of `hold`.
    pub(crate) fn new(io: I, hold: UpgradeHold) -> Self {
        Self {
            io,
            hold: Some(hold),
            held: None,
            unflushed: false,
        }
    }
}

impl<I: AsyncWrite + Unpin> HeldUpgrade<I> {
    /// Holds `bufs` if they are plexus's upgrade answer; their length then.
    fn hold(&mut self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        if !self.hold.as_ref().is_some_and(UpgradeHold::is_armed) {
            return None;
        }
        let first = bufs.iter().find(|b| !b.is_empty())?;
        if !first.starts_with(SWITCHING) {
            return None;
        }
        self.hold = None;
        let bytes: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let len = bytes.len();
        self.held = Some(Box::new(Held {
            bytes,
            written: 0,
            flush_passed: false,
        }));
        Some(len)
    }

    /// Writes what is held, alone.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = &mut self.held {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &held.bytes[held.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            held.written += n;
            if held.written == held.bytes.len() {
                self.held = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what is held and `buf` together; how much of `buf` went.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        while let Some(held) = &mut self.held {
            let rest = &held.bytes[held.written..];
            let io = Pin::new(&mut self.io);
            let n = if io.is_write_vectored() {
                ready!(io.poll_write_vectored(cx, &[IoSlice::new(rest), IoSlice::new(buf)]))?
            } else {
                ready!(io.poll_write(cx, rest))?
            };
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let rest = rest.len();
            if n < rest {
                held.written += n;
                continue;
            }
            self.held = None;
            let of_buf = n - rest;
            if of_buf > 0 || buf.is_empty() {
                return Poll::Ready(Ok(of_buf));
            }
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeldUpgrade<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The peer may be waiting for the `101` before it sends anything.
        if this.held.is_some() {
            ready!(this.poll_release(cx))?;
            this.unflushed = true;
        }
        if this.unflushed {
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
            this.unflushed = false;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeldUpgrade<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(len) = this.hold(&[IoSlice::new(buf)]) {
            return Poll::Ready(Ok(len));
        }
        this.poll_write_after_held(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(len) = this.hold(bufs) {
            return Poll::Ready(Ok(len));
        }
        if this.held.is_some() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return this.poll_write_after_held(cx, first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(held) = &mut this.held
            && !held.flush_passed
        {
            // hyper's, right after the `101`: the answer waits for the session.
            held.flush_passed = true;
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
    const FRAME: &[u8] = b"\x81\x05hello";

    /// A connected pair over loopback: ours wrapped (with its hold), and the peer.
    async fn pair() -> (HeldUpgrade<TcpStream>, UpgradeHold, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        let hold = UpgradeHold::default();
        let ours = HeldUpgrade::new(accepted.unwrap().0, hold.clone());
        (ours, hold, peer.unwrap())
    }

    /// What the peer has received so far. On loopback a write is in the peer's queue by the
    /// time it returns.
    fn received(peer: &TcpStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        match peer.try_read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// plexus arms the hold as it answers; hyper writes the head with one vectored write,
    /// then flushes.
    async fn answer(ours: &mut HeldUpgrade<TcpStream>, hold: &UpgradeHold) {
        hold.arm();
        let (head, rest) = ANSWER.split_at(20);
        let bufs = [IoSlice::new(head), IoSlice::new(rest)];
        let n = ours.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, ANSWER.len());
        ours.flush().await.unwrap();
    }

    #[tokio::test]
    async fn the_answer_leaves_with_the_first_write_in_one_segment() {
        let (mut ours, hold, peer) = pair().await;
        answer(&mut ours, &hold).await;
        assert!(received(&peer).is_empty(), "held back");
        ours.write_all(FRAME).await.unwrap();
        // One read holds both: they went in one write.
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), [ANSWER, FRAME].concat());
    }

    #[tokio::test]
    async fn a_read_or_a_second_flush_sends_the_answer_alone() {
        let (mut ours, hold, mut peer) = pair().await;
        answer(&mut ours, &hold).await;
        // A session waiting for the client to speak first.
        let mut buf = [0; 16];
        let read = tokio::spawn(async move {
            let n = ours.read(&mut buf).await.unwrap();
            (ours, buf[..n].to_vec())
        });
        let mut got = vec![0; ANSWER.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ANSWER);
        peer.write_all(b"hello").await.unwrap();
        let (mut ours, read) = read.await.unwrap();
        assert_eq!(read, b"hello");
        // Nothing more is held: later writes go as they are.
        ours.write_all(FRAME).await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), FRAME);

        let (mut ours, hold, peer) = pair().await;
        answer(&mut ours, &hold).await;
        ours.flush().await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), ANSWER);
    }

    #[tokio::test]
    async fn an_upgrade_plexus_did_not_answer_passes_at_once() {
        let (mut ours, _hold, peer) = pair().await;
        ours.write_all(ANSWER).await.unwrap();
        ours.flush().await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), ANSWER);
    }

    #[tokio::test]
    async fn other_answers_and_a_second_101_pass_at_once() {
        let (mut ours, hold, peer) = pair().await;
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        ours.write_all(ok).await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), ok);
        answer(&mut ours, &hold).await;
        ours.write_all(FRAME).await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), [ANSWER, FRAME].concat());
        // The WebSocket's bytes are never taken for an answer.
        ours.write_all(ANSWER).await.unwrap();
        peer.readable().await.unwrap();
        assert_eq!(received(&peer), ANSWER);
    }
}
