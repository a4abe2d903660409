//! End-to-end: connection limits. Message size (1009), bad-frame budget (4029), calls in
//! flight (`RATE_LIMITED`), outbound queue overflow (4008) and the idle timeout; each time
//! another, already-open connection keeps working.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_server::{
    CallError, CloseCode, Codec, ConnectionHandle, DisconnectReason, EndpointConfig, Router,
    RpcError, Server, ServerBuilder,
};
use serde_json::{Value, json};
use support::{
    Event, RawClient, TIMEOUT, assert_err, recv, start_with, sys, with_disconnect_hook, within,
};
use tokio::sync::{Semaphore, mpsc};

codec_tests!(
    message_over_size_limit_closes_1009,
    message_of_exactly_the_limit_passes,
    too_many_bad_frames_close_4029,
    calls_over_max_in_flight_are_rate_limited,
    outbound_overflow_with_stalled_socket_ends_connection,
    busy_stream_to_a_reading_client_is_not_a_slow_consumer,
);

/// Starts a server with `router` and `config` that reports disconnects.
async fn start_reporting(
    router: Router,
    config: EndpointConfig,
) -> (
    support::TestServer,
    mpsc::UnboundedReceiver<(String, DisconnectReason)>,
) {
    let (builder, gone) = with_disconnect_hook(Server::builder().router(router).config(config));
    (start_with(builder).await, gone)
}

/// The disconnect reason of connection `conn`.
async fn reason_of(
    gone: &mut mpsc::UnboundedReceiver<(String, DisconnectReason)>,
    conn: &Value,
) -> DisconnectReason {
    loop {
        let (id, reason) = recv(gone, "on_disconnect").await;
        if conn == id.as_str() {
            return reason;
        }
    }
}

fn small_limit() -> EndpointConfig {
    let mut config = support::config();
    config.limits.max_message_size = 1024;
    config
}

async fn message_over_size_limit_closes_1009(codec: Codec) {
    let (server, mut gone) = start_reporting(sys(), small_limit()).await;
    let mut witness = server.client(codec).await;
    let mut client = server.client(codec).await;
    let frame = json!({"t": "req", "id": 1, "m": "sys.echo", "d": "x".repeat(2000)});
    match codec {
        Codec::Json => client.send_text(frame.to_string()).await,
        Codec::MsgPack => client.send_value(&frame).await,
    }
    assert_eq!(client.recv_close().await, 1009);
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(CloseCode::TOO_LARGE, "message too large".into())
    );
    witness.assert_echo(1).await;
}

/// A `sys.echo` request of exactly `size` bytes in `codec`.
fn request_of_size(codec: Codec, size: usize) -> Vec<u8> {
    let mut pad = size / 2;
    for _ in 0..8 {
        let frame = json!({"t": "req", "id": 1, "m": "sys.echo", "d": "y".repeat(pad)});
        let bytes = match codec {
            Codec::Json => frame.to_string().into_bytes(),
            Codec::MsgPack => rmp_serde::to_vec(&frame).expect("encode"),
        };
        if bytes.len() == size {
            return bytes;
        }
        pad = (pad + size)
            .checked_sub(bytes.len())
            .expect("size too small");
    }
    panic!("could not build a request of {size} bytes");
}

async fn message_of_exactly_the_limit_passes(codec: Codec) {
    let (server, _gone) = start_reporting(sys(), small_limit()).await;
    let mut client = server.client(codec).await;
    let bytes = request_of_size(codec, 1024);
    assert_eq!(bytes.len(), 1024);
    match codec {
        Codec::Json => {
            client
                .send_text(String::from_utf8(bytes).expect("utf8"))
                .await
        }
        Codec::MsgPack => client.send_binary(bytes).await,
    }
    let reply = client.recv_json().await;
    assert_eq!(reply["t"], "res", "{reply}");
    assert_eq!(reply["id"], 1);
    // One byte more is over the limit.
    let bytes = request_of_size(codec, 1025);
    match codec {
        Codec::Json => {
            client
                .send_text(String::from_utf8(bytes).expect("utf8"))
                .await
        }
        Codec::MsgPack => client.send_binary(bytes).await,
    }
    assert_eq!(client.recv_close().await, 1009);
}

async fn too_many_bad_frames_close_4029(codec: Codec) {
    let (server, mut gone) = start_reporting(sys(), support::config()).await;
    let mut witness = server.client(codec).await;
    let mut client = server.client(codec).await;
    for id in 1..=101u64 {
        let bad = json!({"t": "nope", "id": id});
        match codec {
            Codec::Json => client.send_text(bad.to_string()).await,
            Codec::MsgPack => client.send_value(&bad).await,
        }
    }
    for id in 1..=100u64 {
        let frame = client.recv_json().await;
        assert_err(&frame, Some(id), "BAD_FRAME");
    }
    assert_eq!(client.recv_close().await, 4029);
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(
            CloseCode::TOO_MANY_BAD_FRAMES,
            "too many bad frames".into()
        )
    );
    witness.assert_echo(1).await;
}

async fn calls_over_max_in_flight_are_rate_limited(codec: Codec) {
    let gate = Arc::new(Semaphore::new(0));
    let handler_gate = gate.clone();
    let router = sys().request("gated.echo", move |p: Value| {
        let gate = handler_gate.clone();
        async move {
            gate.acquire().await.expect("gate").forget();
            Ok::<_, RpcError>(p)
        }
    });
    let mut config = support::config();
    config.limits.max_in_flight = 4;
    let (server, _gone) = start_reporting(router, config).await;
    let mut witness = server.client(codec).await;
    let mut client = server.client(codec).await;
    for id in 1..=5u64 {
        client
            .send_json(json!({"t": "req", "id": id, "m": "gated.echo", "d": id}))
            .await;
    }
    // The first four wait at the gate: the fifth is refused at once.
    let refused = client.recv_json().await;
    assert_err(&refused, Some(5), "RATE_LIMITED");
    // So is a stream, while the four are in flight.
    client
        .send_json(json!({"t": "sub", "id": 6, "m": "sys.count", "d": {"n": 1}}))
        .await;
    assert_err(&client.recv_json().await, Some(6), "RATE_LIMITED");
    // The limit is per connection.
    witness.assert_echo(1).await;

    gate.add_permits(4);
    let mut ids: Vec<u64> = Vec::new();
    for _ in 0..4 {
        let frame = client.recv_json().await;
        assert_eq!(frame["t"], "res", "{frame}");
        assert_eq!(frame["d"], frame["id"]);
        ids.push(frame["id"].as_u64().expect("id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4]);
    // Room again.
    client.assert_echo(5).await;
}

/// An `on_connect` hook that, on connections opened with the query `flood`, pushes
/// notifications of `size` bytes until `notify` fails (at most `max`), yielding between
/// pushes when `pause`, then reports how many went through, the error and the handle.
fn flooding_hook(
    builder: ServerBuilder,
    size: usize,
    max: usize,
    pause: bool,
) -> (ServerBuilder, mpsc::UnboundedReceiver<Flood>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder.on_connect(move |conn: ConnectionHandle| {
        let tx = tx.clone();
        async move {
            if conn.query() != Some("flood") {
                return;
            }
            let payload = "z".repeat(size);
            for sent in 0..max {
                if let Err(e) = conn.notify("flood.data", &payload) {
                    let _ = tx.send((sent, e, conn));
                    return;
                }
                if pause {
                    tokio::task::yield_now().await;
                }
            }
            panic!("notify never failed after {max} notifications");
        }
    });
    (builder, rx)
}

type Flood = (usize, CallError, ConnectionHandle);

/// Outbound queue of 8; 64 KiB notifications to a client that does not read: once the
/// socket buffers are full the queue overflows, `notify` fails and the connection ends.
async fn outbound_overflow_with_stalled_socket_ends_connection(codec: Codec) {
    let mut config = support::config();
    config.limits.outbound_queue = 8;
    let (builder, mut gone) = with_disconnect_hook(Server::builder().router(sys()).config(config));
    let (builder, mut floods) = flooding_hook(builder, 64 * 1024, 10_000, true);
    let server = start_with(builder).await;
    let mut witness = server.client(codec).await;

    let mut client = RawClient::connect_to(server.addr, "/ws?flood", Some(codec)).await;
    // Do not read: the server fills the socket buffers, then the queue.
    let (sent, error, conn) = recv(&mut floods, "notify failure").await;
    assert_eq!(conn.id(), client.welcome["conn"]);
    assert!(error.is_unavailable(), "{error}");
    assert!(error.message().contains("4008"), "{error}");
    within("the overflowing connection to end", conn.closed()).await;
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(CloseCode::SLOW_CONSUMER, "slow consumer".into())
    );
    witness.assert_echo(1).await;

    // Now read: what had reached the socket, then a 4008 close or the end of the stream.
    let mut received = 0;
    loop {
        match client.next_event(TIMEOUT).await {
            Some(Event::Frame(frame)) => {
                assert_eq!(frame["t"], "ntf");
                assert_eq!(frame["m"], "flood.data");
                received += 1;
                assert!(received <= sent, "more frames than were queued");
            }
            Some(Event::Close(code)) => {
                assert_eq!(code, Some(4008));
                break;
            }
            Some(Event::Ended(_)) => break,
            None => panic!("the overflowing connection did not end"),
        }
    }
    witness.assert_echo(2).await;
    let mut other = server.client(codec).await;
    other.assert_echo(1).await;
}

/// On a single-threaded runtime the hook fills the queue of 8 before the connection task
/// runs again: the close 4008 is written cleanly and the client reads it.
#[tokio::test]
async fn outbound_overflow_burst_closes_4008() {
    let mut config = support::config();
    config.limits.outbound_queue = 8;
    let (builder, mut gone) = with_disconnect_hook(Server::builder().router(sys()).config(config));
    let (builder, mut floods) = flooding_hook(builder, 100, 1_000, false);
    let server = start_with(builder).await;
    let mut witness = server.client(Codec::Json).await;
    let mut client = RawClient::connect_to(server.addr, "/ws?flood", Some(Codec::Json)).await;
    let (sent, error, _conn) = recv(&mut floods, "notify failure").await;
    assert_eq!(sent, 8, "a queue of 8 takes exactly 8 frames");
    assert!(error.is_unavailable(), "{error}");
    let mut frames = 0;
    let code = loop {
        match client.next_event(TIMEOUT).await {
            Some(Event::Frame(frame)) => {
                assert_eq!(frame["m"], "flood.data");
                frames += 1;
                assert!(frames <= sent);
            }
            Some(Event::Close(code)) => break code,
            other => panic!("expected close 4008, got {other:?}"),
        }
    };
    assert_eq!(code, Some(4008));
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(CloseCode::SLOW_CONSUMER, "slow consumer".into())
    );
    witness.assert_echo(1).await;
}

#[tokio::test]
async fn idle_timeout_closes_1000() {
    let mut config = support::config();
    config.limits.idle_timeout = Some(Duration::from_millis(300));
    let (server, mut gone) = start_reporting(sys(), config).await;
    let started = Instant::now();
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    client.assert_echo(1).await;
    assert_eq!(client.recv_close().await, 1000);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(CloseCode::NORMAL, "idle timeout".into())
    );
}

#[tokio::test]
async fn a_call_in_progress_is_not_idleness() {
    let mut config = support::config();
    config.limits.idle_timeout = Some(Duration::from_millis(300));
    let (server, mut gone) = start_reporting(sys(), config).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let started = Instant::now();
    // The request outlasts the idle timeout twice over; it still gets its answer.
    let res = client
        .call(1, "sys.sleep", serde_json::json!({"ms": 700}))
        .await;
    assert_eq!(res["t"], "res", "{res}");
    assert_eq!(res["d"]["slept"], 700);
    // Then the connection is idle, and closed as such.
    assert_eq!(client.recv_close().await, 1000);
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert_eq!(
        reason_of(&mut gone, &client.welcome["conn"]).await,
        DisconnectReason::ServerClosed(CloseCode::NORMAL, "idle timeout".into())
    );
}

/// A stream producing as fast as it can keeps the outbound queue busy by design (it waits
/// for room); that must not make `notify` fail as if the client were a slow consumer, when
/// the client reads everything and each notification waits until the previous one arrived.
async fn busy_stream_to_a_reading_client_is_not_a_slow_consumer(codec: Codec) {
    const ITEMS: u64 = 5_000;
    const NOTES: usize = 200;
    let mut config = support::config();
    config.limits.outbound_queue = 8;
    let (builder, mut conns) =
        support::with_connect_hook(Server::builder().router(sys()).config(config));
    let server = start_with(builder).await;
    let mut client = server.client(codec).await;
    let conn = recv(&mut conns, "on_connect").await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": ITEMS}}))
        .await;
    // The first item shows the stream is running; then notify while it streams.
    assert_eq!(
        client.recv_json().await,
        json!({"t": "item", "id": 1, "d": 0})
    );
    let (ack, mut acks) = mpsc::unbounded_channel::<()>();
    let notifier = tokio::spawn(async move {
        for i in 0..NOTES {
            conn.notify("side.note", &i)?;
            if acks.recv().await.is_none() {
                break;
            }
        }
        Ok::<_, CallError>(())
    });
    let (mut next, mut notes, mut ended) = (1u64, 0usize, false);
    while !(ended && notes == NOTES) {
        let frame = match client.next_event(TIMEOUT).await {
            Some(Event::Frame(frame)) => frame,
            other => panic!("after {next} items and {notes} notes: {other:?}"),
        };
        match frame["t"].as_str() {
            Some("item") => {
                assert_eq!(frame["d"], next);
                next += 1;
            }
            Some("end") => {
                assert_eq!(next, ITEMS);
                ended = true;
            }
            Some("ntf") => {
                assert_eq!(frame["d"], notes);
                notes += 1;
                let _ = ack.send(());
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    within("notifier", notifier)
        .await
        .expect("notifier task")
        .expect("every notify succeeds");
}
