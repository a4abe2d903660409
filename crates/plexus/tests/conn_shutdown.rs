//! End-to-end: graceful shutdown. Calls in flight finish, then every connection gets 1001;
//! calls that outlast the drain timeout are cancelled with `CancelReason::Shutdown`; new
//! upgrades are refused; `serve` returns.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use plexus_server::{
    CallContext, CancelReason, CloseCode, Codec, DisconnectReason, RpcError, Server, ServerBuilder,
};
use serde_json::{Value, json};
use support::{
    RawClient, TIMEOUT, connect_ws, http, recv, serve_app, start_with, sys, with_disconnect_hook,
    within,
};
use tokio::sync::mpsc;

codec_tests!(
    in_flight_request_finishes_then_1001,
    in_flight_stream_finishes_then_1001,
    idle_connection_gets_1001_promptly,
    call_outlasting_drain_is_cancelled_with_shutdown,
);

type Gone = mpsc::UnboundedReceiver<(String, DisconnectReason)>;

/// `(call id, None)` when `slow.forever` starts, `(call id, Some(reason))` when cancelled.
type Calls = mpsc::UnboundedReceiver<(u64, Option<CancelReason>)>;

async fn setup(drain: Duration) -> (support::TestServer, Gone, Calls) {
    let (builder, gone, calls) = builder(drain);
    (start_with(builder).await, gone, calls)
}

/// The server of [`setup`], before it is started.
fn builder(drain: Duration) -> (ServerBuilder, Gone, Calls) {
    let (tx, cancels) = mpsc::unbounded_channel();
    let router = sys().request("slow.forever", move |ctx: CallContext, _: Value| {
        let tx = tx.clone();
        async move {
            let id = ctx.call_id();
            let cleanup = tx.clone();
            ctx.on_cancel(move |reason| {
                let _ = cleanup.send((id, Some(reason)));
            });
            let _ = tx.send((id, None));
            std::future::pending::<()>().await;
            Ok::<_, RpcError>(())
        }
    });
    let mut config = support::config();
    config.limits.drain_timeout = drain;
    let (builder, gone) = with_disconnect_hook(Server::builder().router(router).config(config));
    (builder, gone, cancels)
}

async fn going_away(gone: &mut Gone, client: &RawClient) {
    let (conn, reason) = recv(gone, "on_disconnect").await;
    assert_eq!(conn, client.welcome["conn"]);
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed(CloseCode::GOING_AWAY, "server shutting down".into())
    );
}

async fn in_flight_request_finishes_then_1001(codec: Codec) {
    let (mut server, mut gone, _) = setup(Duration::from_secs(10)).await;
    let addr = server.addr;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "req", "id": 1, "m": "sys.sleep", "d": {"ms": 300}}))
        .await;
    // Once the echo is answered, the sleep is in flight.
    client.assert_echo(2).await;
    server.trigger_shutdown();
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 1, "d": {"slept": 300}})
    );
    assert_eq!(client.recv_close().await, 1001);
    going_away(&mut gone, &client).await;
    server
        .served(TIMEOUT)
        .await
        .expect("serve returns Ok after shutdown");
    assert_eq!(server.server.connection_count(), 0);
    // The listener is gone: new connections fail.
    assert!(
        connect_ws(addr, Some(codec.subprotocol())).await.is_err(),
        "a connection after shutdown must fail"
    );
}

async fn in_flight_stream_finishes_then_1001(codec: Codec) {
    let (mut server, mut gone, _) = setup(Duration::from_secs(10)).await;
    let mut client = server.client(codec).await;
    client
        .send_json(
            json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": 10, "interval_ms": 20}}),
        )
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "item", "id": 1, "d": 0})
    );
    server.trigger_shutdown();
    for i in 1..10 {
        assert_eq!(
            client.recv_json().await,
            json!({"t": "item", "id": 1, "d": i})
        );
    }
    assert_eq!(client.recv_json().await, json!({"t": "end", "id": 1}));
    assert_eq!(client.recv_close().await, 1001);
    going_away(&mut gone, &client).await;
    server.served(TIMEOUT).await.expect("serve");
}

/// Without calls in flight, a connection does not wait for the drain: closed at the instant
/// of the shutdown on a paused clock (the session's tests), and here long before the drain
/// timeout whatever the machine's load.
async fn idle_connection_gets_1001_promptly(codec: Codec) {
    const DRAIN: Duration = Duration::from_secs(60);
    let (mut server, mut gone, _) = setup(DRAIN).await;
    let mut client = server.client(codec).await;
    let mut other = server.client(codec).await;
    let started = Instant::now();
    server.trigger_shutdown();
    assert_eq!(client.recv_close().await, 1001);
    assert_eq!(other.recv_close().await, 1001);
    let elapsed = started.elapsed();
    assert!(elapsed < DRAIN / 2, "1001 after {elapsed:?}");
    let mut ended = vec![
        recv(&mut gone, "on_disconnect").await,
        recv(&mut gone, "on_disconnect").await,
    ];
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, reason) in &ended {
        assert_eq!(
            *reason,
            DisconnectReason::ServerClosed(CloseCode::GOING_AWAY, "server shutting down".into())
        );
    }
    server.served(TIMEOUT).await.expect("serve");
    assert!(started.elapsed() < DRAIN / 2, "serve returned promptly");
}

async fn call_outlasting_drain_is_cancelled_with_shutdown(codec: Codec) {
    let (mut server, mut gone, mut cancels) = setup(Duration::from_millis(300)).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "req", "id": 4, "m": "slow.forever", "d": null}))
        .await;
    assert_eq!(recv(&mut cancels, "start").await, (4, None));
    let started = Instant::now();
    server.trigger_shutdown();
    // No res or err for id 4: the close comes next, after the drain timeout.
    assert_eq!(client.recv_close().await, 1001);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        recv(&mut cancels, "cleanup").await,
        (4, Some(CancelReason::Shutdown))
    );
    going_away(&mut gone, &client).await;
    server.served(TIMEOUT).await.expect("serve");
}

/// The same `Server` also mounted on a plain axum listener (not stopped by `serve`): once
/// shutdown has started, its upgrades are answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_after_shutdown_is_503() {
    let (mut server, _gone, _) = setup(Duration::from_secs(10)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let side = listener.local_addr().expect("addr");
    let app = server.server.route("/ws");
    let side_task = tokio::spawn(async move { axum::serve(listener, app).await });
    // Before shutdown the side listener upgrades normally.
    let mut before = RawClient::connect(side, Some(Codec::Json)).await;
    before.assert_echo(1).await;

    server.trigger_shutdown();
    assert_eq!(before.recv_close().await, 1001);
    let (_, head, _) = support::raw_upgrade(side, &[]).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    within("serve", server.served(TIMEOUT))
        .await
        .expect("serve");
    side_task.abort();
}

/// A server lists itself among the nodes (`/health/cluster`) once it has started, and takes
/// itself off the list when it shuts down (on the memory engine nothing else would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_listed_among_the_nodes_until_it_shuts_down() {
    let server = Server::builder().node_id("lone").build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = server.route("/ws").merge(server.health_routes());
    let served = serve_app(server.clone(), listener, app, addr);
    let body = within("the node to list itself", async {
        loop {
            let (status, body) = http(addr, "GET", "/health/cluster", None, None).await;
            assert_eq!(status, 200, "{body}");
            if body["nodes"]
                .as_array()
                .is_some_and(|nodes| !nodes.is_empty())
            {
                break body;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(body["node"], "lone");
    assert_eq!(body["nodes"][0]["node"], "lone", "{body}");
    server.shutdown();
    within("the node to leave the list", async {
        while !server.hub().nodes().await.expect("nodes").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(served);
}

/// `/health/ready` says `draining` (503) from the shutdown until the server stops, while
/// `/health/live` stays 200, calls in flight go on and new upgrades get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_while_draining() {
    let (builder, mut gone, mut calls) = builder(Duration::from_secs(30));
    let server = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = server.route("/ws").merge(server.health_routes());
    let mut server = serve_app(server, listener, app, addr);
    let (status, body) = http(addr, "GET", "/health/ready", None, None).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    assert_eq!(body["connections"], 0);

    let mut client = server.client(Codec::Json).await;
    client
        .send_json(json!({"t": "req", "id": 1, "m": "slow.forever", "d": null}))
        .await;
    assert_eq!(recv(&mut calls, "the call to start").await.1, None);
    server.trigger_shutdown();
    // The signal reaches `serve` through a task: look until it has.
    let body = within("readiness to turn false", async {
        loop {
            let (status, body) = http(addr, "GET", "/health/ready", None, None).await;
            if status == 503 {
                break body;
            }
            assert_eq!(status, 200, "{body}");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(body["status"], "draining", "{body}");
    assert_eq!(body["connections"], 1, "{body}");
    let (status, body) = http(addr, "GET", "/health/live", None, None).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("draining")),
        "{body}"
    );
    let refused = connect_ws(addr, Some("plexus.v1.json"))
        .await
        .expect_err("no new connections while draining");
    assert!(refused.to_string().contains("503"), "{refused}");

    // The call in flight ends (here: its caller cancels it); then the server stops.
    client.send_json(json!({"t": "cancel", "id": 1})).await;
    assert_eq!(client.recv_close().await, 1001);
    going_away(&mut gone, &client).await;
    server.served(TIMEOUT).await.expect("serve returns");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after serve returned"
    );
}
