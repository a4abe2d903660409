//! End-to-end: heartbeat. The server pings every interval and closes (4002) a peer silent for
//! about two intervals; a peer that answers pings, or sends frames, stays connected.

mod support;

use std::time::{Duration, Instant};

use plexus_server::{CloseCode, Codec, DisconnectReason, Server};
use serde_json::Value;
use support::{
    RawClient, TIMEOUT, header, masked_text, raw_upgrade, read_raw_frame, recv, start_with, sys,
    with_disconnect_hook, within,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const INTERVAL: Duration = Duration::from_millis(200);

type Gone = mpsc::UnboundedReceiver<(String, DisconnectReason)>;

async fn setup() -> (support::TestServer, Gone) {
    let mut config = support::config();
    config.limits.heartbeat_interval = INTERVAL;
    let (builder, gone) = with_disconnect_hook(Server::builder().router(sys()).config(config));
    (start_with(builder).await, gone)
}

/// A raw TCP client completes the upgrade and then never writes anything (so never a pong):
/// it sees pings, then a close 4002 after at least one interval. (That it comes at exactly
/// the second beat is checked on a paused clock in the session's own tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_closed_4002() {
    let (server, mut gone) = setup().await;
    let (mut socket, head, mut buf) = raw_upgrade(server.addr, &[]).await;
    let upgraded = Instant::now();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let mut welcome = None;
    let mut pings = 0;
    let close = within("close frame", async {
        loop {
            let (opcode, payload) = read_raw_frame(&mut socket, &mut buf)
                .await
                .expect("the server closed the socket without a close frame");
            match opcode {
                0x1 => welcome = Some(serde_json::from_slice::<Value>(&payload).expect("json")),
                0x9 => pings += 1,
                0x8 => return payload,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    })
    .await;
    let elapsed = upgraded.elapsed();
    let welcome = welcome.expect("welcome");
    assert_eq!(welcome["heartbeat"], 200);
    assert!(pings >= 1, "the server pings before giving up");
    assert!(close.len() >= 2);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4002);
    assert!(
        elapsed >= INTERVAL,
        "closed after {elapsed:?}, before one interval"
    );
    // Drop the socket instead of answering the close: the connection ends at once.
    drop(socket);
    let (conn, reason) = recv(&mut gone, "on_disconnect").await;
    assert_eq!(conn, welcome["conn"]);
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout".into())
    );
}

/// A tokio-tungstenite client that is not polled does not answer pings either: the server
/// reports the heartbeat timeout, and the client finds the 4002 close when it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpolled_client_is_closed_4002() {
    let (server, mut gone) = setup().await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let started = Instant::now();
    // Not polling the client: wait for the server's verdict.
    let (conn, reason) = recv(&mut gone, "on_disconnect").await;
    assert_eq!(conn, client.welcome["conn"]);
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout".into())
    );
    // Two intervals of silence, plus at most the close handshake timeout for a peer that
    // never answers the close.
    assert!(started.elapsed() < TIMEOUT);
    assert_eq!(client.recv_close().await, 4002);
}

/// A client that keeps polling answers the pings (tungstenite replies while reading) and
/// stays connected well beyond three intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_client_stays_connected() {
    let (server, mut gone) = setup().await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let until = tokio::time::Instant::now() + INTERVAL * 5;
    let mut pings = 0;
    while let Ok(next) =
        tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut client.ws)).await
    {
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    assert!(pings >= 3, "pings every interval: got {pings}");
    client.assert_echo(1).await;
    assert!(gone.try_recv().is_err(), "no disconnect");
    assert_eq!(server.server.connection_count(), 1);
}

/// A client that never answers WebSocket pings but sends application frames (`{"t":"ping"}`,
/// as browsers do) shows traffic, so it stays connected; it gets a `pong` for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_traffic_counts_as_alive() {
    let (server, mut gone) = setup().await;
    let (mut socket, head, mut buf) = raw_upgrade(server.addr, &[]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header(&head, "sec-websocket-protocol"), None);
    let mut pongs = 0;
    let mut pacing = tokio::time::interval(INTERVAL / 2);
    // Ten sends over five intervals; each pong is read before the next send.
    for _ in 0..10 {
        pacing.tick().await;
        within("send", socket.write_all(&masked_text(br#"{"t":"ping"}"#)))
            .await
            .expect("write");
        loop {
            let (opcode, payload) = within("frame", read_raw_frame(&mut socket, &mut buf))
                .await
                .expect("connection ended");
            match opcode {
                0x1 if payload == br#"{"t":"pong"}"# => {
                    pongs += 1;
                    break;
                }
                0x1 => assert!(payload.starts_with(br#"{"t":"welcome""#), "{payload:?}"),
                0x9 => {}
                other => panic!("unexpected opcode {other:#x}: {payload:?}"),
            }
        }
    }
    assert_eq!(pongs, 10);
    if let Ok(event) = gone.try_recv() {
        panic!("unexpected disconnect {event:?}");
    }
    assert_eq!(server.server.connection_count(), 1);
}
