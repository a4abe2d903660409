//! A slow consumer beside 100 readers: it is cut with 4008, and every reader gets every
//! publication, in order, and is not cut.
//!
//! The verdict does not depend on how fast the machine is: the publisher goes only as fast
//! as the slowest *reader* (it waits until every reader is at most [`WINDOW`] publications
//! behind), so a reader's queue never holds more than that, while the subscriber that never
//! reads falls further behind with every publication until its queue overflows. It also
//! joined a second channel of large publications, which fill its socket buffers (the
//! server's send buffer grows to megabytes on loopback) after a few of them, so that the
//! readers' channel need not carry megabytes to each of them. How much a slow consumer
//! costs the others in latency is a figure for the benchmark, not a test.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plexus_server::{ChannelOptions, CloseCode, Codec, DisconnectReason, Namespaces, Server};
use serde_json::{Value, json};
use support::{RawClient, config, start_with, sys, with_disconnect_hook, within};
use tokio::sync::Notify;

const READERS: usize = 100;
/// Publications made to the readers' channel (each of about 1 KiB).
const COUNT: u64 = 300;
/// Every other one is followed by a publication of this size to the stalled subscriber's
/// second channel: 150 of them are far more than its socket buffers and its queue hold.
const LARGE: usize = 256 * 1024;
/// How far behind the slowest reader the publisher may run.
const WINDOW: u64 = 16;
/// The outbound queue of every connection: room for the window, with some to spare.
const QUEUE: usize = 64;

async fn join(client: &mut RawClient, id: u64, ch: &str) -> Value {
    client
        .send_json(json!({"t": "join", "id": id, "ch": ch}))
        .await;
    let res = client.recv_json().await;
    assert_eq!(res["t"], "res", "join answered: {res}");
    res["d"].clone()
}

/// A subscriber of `channels` that never reads after their `res`, on a socket with a tiny
/// receive buffer, so that the server's writes to it stall soon.
async fn stalled_subscriber(
    addr: std::net::SocketAddr,
    channels: &[&str],
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(support::ws_request(addr, None), stream)
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));
    for (id, channel) in channels.iter().enumerate() {
        let join = json!({"t": "join", "id": id + 1, "ch": channel}).to_string();
        ws.send(Message::text(join)).await.unwrap();
        let res = ws.next().await.unwrap().unwrap();
        assert!(res.to_text().unwrap().contains("recovered"), "{res:?}");
    }
    ws
}

/// How the stalled subscriber's connection ended, as its socket shows it: the close code,
/// or `None` when the socket simply ended (its buffers full, the close frame cannot get
/// through).
async fn end_of(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Option<u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    // Now read what got through, up to the close (or the end of the socket).
    loop {
        match within("the stalled subscriber's end", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_and_every_reader_gets_every_publication() {
    let mut config = config();
    config.limits.outbound_queue = QUEUE;
    let (builder, mut gone) = with_disconnect_hook(
        Server::builder()
            .router(sys())
            .config(config)
            .channels(Namespaces::new().namespace("feed:*", ChannelOptions::default())),
    );
    let server = start_with(builder).await;
    let hub = server.server.hub().clone();

    let slow = stalled_subscriber(server.addr, &["feed:lat", "feed:large"]).await;
    // How many publications each reader has received, and a wake-up for the publisher.
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect());
    let moved = Arc::new(Notify::new());
    let mut readers = Vec::new();
    let mut reader_ids = Vec::new();
    for index in 0..READERS {
        let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
        reader_ids.push(client.welcome["conn"].as_str().unwrap().to_owned());
        join(&mut client, 1, "feed:lat").await;
        let (progress, moved) = (progress.clone(), moved.clone());
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::with_capacity(COUNT as usize);
            while (offsets.len() as u64) < COUNT {
                let frame = client.recv_json().await;
                assert_eq!(frame["t"], "msg", "reader {index}: {frame}");
                assert_eq!(frame["d"]["n"], offsets.len(), "reader {index}: in order");
                offsets.push(frame["o"].as_u64().unwrap());
                progress[index].store(offsets.len() as u64, Ordering::Release);
                moved.notify_one();
            }
            // Still connected: it answers a call after the last publication.
            client.assert_echo(2).await;
            (offsets, client)
        }));
    }

    let pad = "x".repeat(1024);
    let large = "x".repeat(LARGE);
    for n in 0..COUNT {
        // Wait until every reader is at most WINDOW publications behind this one.
        let slowest = || progress.iter().map(|p| p.load(Ordering::Acquire)).min();
        within("the readers to keep up", async {
            while slowest().unwrap_or(0) + WINDOW < n {
                moved.notified().await;
            }
        })
        .await;
        hub.publish("feed:lat", &json!({"n": n, "pad": pad}))
            .await
            .unwrap();
        if n % 2 == 1 {
            hub.publish("feed:large", &json!({"pad": large}))
                .await
                .unwrap();
        }
    }

    // The readers' clients stay open to the end, so that any disconnect seen is a cut.
    let mut clients = Vec::new();
    for (index, reader) in readers.into_iter().enumerate() {
        let (offsets, client) = within("a reader", reader).await.unwrap();
        clients.push(client);
        let first = offsets[0];
        let expected: Vec<u64> = (first..first + COUNT).collect();
        assert_eq!(
            offsets, expected,
            "reader {index}: every publication, once, in order"
        );
    }
    // The slow one is cut with 4008 (or its socket simply ends if the close frame cannot get
    // through its full buffers); the server says slow consumer, for it alone.
    let slow_end = end_of(slow).await;
    assert!(matches!(slow_end, Some(4008) | None), "{slow_end:?}");
    let (conn, reason) = within("on_disconnect", gone.recv()).await.unwrap();
    assert!(!reader_ids.contains(&conn), "a reader was cut: {reason:?}");
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed(CloseCode::SLOW_CONSUMER, "slow consumer".into())
    );
    assert!(gone.try_recv().is_err(), "no reader was cut");
    drop(clients);
}
