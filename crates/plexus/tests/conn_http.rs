//! The HTTP side of the endpoint: sockets that never finish their upgrade request are
//! dropped after the handshake timeout (no slowloris), and do not disturb other clients.

mod support;

use std::time::{Duration, Instant};

use plexus_server::Codec;
use support::{RawClient, config, start, sys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
