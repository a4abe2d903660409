//! The HTTP side of the endpoint: sockets that never finish their upgrade request are
//! dropped after the handshake timeout (no slowloris), and do not disturb other clients;
//! the upgrade's answer leaves with the `welcome`, in one write.

mod support;

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use plexus_server::{Codec, Server};
use support::{RawClient, config, start, sys};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// Reads until the server closes the socket; returns how long that took.
async fn time_until_closed(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept an unfinished request open for 10 s"),
        }
    }
}

#[tokio::test]
async fn sockets_that_never_finish_the_upgrade_request_are_dropped() {
    let mut config = config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    let server = start(sys(), config).await;
    let mut witness = RawClient::connect(server.addr, Some(Codec::Json)).await;

    // Says nothing at all.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    // Starts a request head and never ends it.
    let mut trickle = TcpStream::connect(server.addr).await.unwrap();
    trickle
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();

    let (silent, trickle) = tokio::join!(time_until_closed(silent), time_until_closed(trickle));
    for waited in [silent, trickle] {
        assert!(
            waited >= Duration::from_millis(250),
            "closed too early: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "closed too late: {waited:?}"
        );
    }
    // An upgraded connection is not subject to the header timeout.
    witness.assert_echo(1).await;
}

/// One end of an in-memory pipe that records each write the server makes to it.
struct Recording {
    io: DuplexStream,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recording {
    fn record(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, bytes))?;
        self.writes.lock().unwrap().push(bytes[..n].to_vec());
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.record(cx, buf)
    }

    /// A vectored write is one write, as `writev` is one system call.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.record(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server holds its `101` back to send it with the `welcome`: one write, so one system
/// call and one TCP segment on a socket.
#[tokio::test]
async fn the_upgrade_answer_leaves_with_the_welcome_in_one_write() {
    let server = Server::builder().router(sys()).config(config()).build();
    let app = server.route("/ws");
    let (mut client, server_end) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let io = Recording {
        io: server_end,
        writes: writes.clone(),
    };
    let serving = server.clone();
    tokio::spawn(async move {
        let remote = "127.0.0.1:9".parse().unwrap();
        serving.serve_connection(io, remote, app).await;
    });
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains(r#""t":"welcome""#) {
        let mut buf = [0u8; 4096];
        let n = support::within("the welcome", client.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    let writes = writes.lock().unwrap();
    let first = String::from_utf8_lossy(&writes[0]);
    assert!(first.starts_with("HTTP/1.1 101 "), "{first}");
    assert!(
        first.contains(r#""t":"welcome""#),
        "{} writes: {writes:?}",
        writes.len()
    );
}
