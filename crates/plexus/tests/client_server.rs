//! The Rust client against the real server over real sockets: calls in both directions,
//! reconnect after a restart on the same port, half-open detection, the offline queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{ClientOptions, ReconnectOptions, Status, StreamOptions};
use plexus_server::{CallContext, EndpointConfig, ErrorCode, Router, RpcError, Server};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A real server on `addr` (port 0: any), stopped gracefully by `stop`.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(addr: SocketAddr, router: Router, config: EndpointConfig) -> Self {
        let server = Server::builder().router(router).config(config).build();
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = server.route("/ws");
        let task = tokio::spawn(async move {
            server
                .serve(listener, app, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

fn quick_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.limits.drain_timeout = Duration::from_millis(200);
    config
}

fn quick_reconnect() -> ReconnectOptions {
    ReconnectOptions::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

async fn wait_status(status: &mut watch::Receiver<Status>, want: Status) {
    timeout(WAIT, status.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("status never became {want:?}"))
        .expect("client gone");
}

#[derive(Serialize, Deserialize)]
struct User {
    name: String,
    age: u8,
}

fn app_router(notes: mpsc::UnboundedSender<String>) -> Router {
    plexus::sys::router()
        .request("user.greet", |user: User| async move {
            Ok::<_, RpcError>(format!("hello {}, {}", user.name, user.age))
        })
        .notify("log.note", move |note: String| {
            let notes = notes.clone();
            async move {
                let _ = notes.send(note);
            }
        })
}

#[tokio::test]
async fn the_rust_client_calls_the_real_server_in_both_codecs() {
    let (notes, mut noted) = mpsc::unbounded_channel();
    let server = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        app_router(notes),
        quick_config(),
    )
    .await;
    for codec in [plexus_client::Codec::Json, plexus_client::Codec::MsgPack] {
        let client = plexus_client::connect(&server.url(), ClientOptions::default().codec(codec))
            .await
            .unwrap();
        let echoed: Value = client
            .request("sys.echo", &json!({"a": [1, "b", null]}))
            .await
            .unwrap();
        assert_eq!(echoed, json!({"a": [1, "b", null]}));
        let greeting: String = client
            .request("user.greet", &json!({"name": "Ada", "age": 36}))
            .await
            .unwrap();
        assert_eq!(greeting, "hello Ada, 36");

        let error = client
            .request::<String>("user.greet", &json!({"name": "Ada", "age": 300}))
            .await
            .unwrap_err();
        assert_eq!(error.code(), &ErrorCode::VALIDATION_ERROR);
        assert_eq!(
            error.data().unwrap().to_json_value().unwrap(),
            json!({"path": "age"})
        );
        let error = client.request::<Value>("no.such", &()).await.unwrap_err();
        assert_eq!(error.code(), &ErrorCode::NOT_FOUND);

        let items: Vec<u64> = client
            .stream::<u64>("sys.count", &json!({"n": 5}))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(items, vec![0, 1, 2, 3, 4]);
        // A window smaller than the stream: credit keeps it going.
        let items: Vec<u64> = client
            .stream::<u64>("sys.count", &json!({"n": 50}))
            .options(StreamOptions::default().credit(4))
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(items, (0..50).collect::<Vec<_>>());

        client
            .notify("log.note", &format!("from {}", codec.name()))
            .await
            .unwrap();
        let note = timeout(WAIT, noted.recv()).await.unwrap().unwrap();
        assert_eq!(note, format!("from {}", codec.name()));
        assert_eq!(client.pending_calls(), 0);
        client.close().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn dropping_a_client_stream_cancels_the_handler_on_the_server() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let router = Router::new().stream("ticks.forever", move |ctx: CallContext, (): ()| {
        let cancelled_tx = cancelled_tx.clone();
        async move {
            ctx.on_cancel(move |reason| {
                let _ = cancelled_tx.send(reason);
            });
            Ok::<_, RpcError>(futures_util::stream::iter((0u64..).map(Ok::<_, RpcError>)))
        }
    });
    let server = Running::start("127.0.0.1:0".parse().unwrap(), router, quick_config()).await;
    let client = plexus_client::connect(&server.url(), ClientOptions::default())
        .await
        .unwrap();
    let mut ticks = client.stream::<u64>("ticks.forever", &()).await.unwrap();
    assert_eq!(ticks.next().await.unwrap().unwrap(), 0);
    drop(ticks);
    let reason = timeout(WAIT, cancelled.recv()).await.unwrap().unwrap();
    assert_eq!(reason, plexus_server::CancelReason::Cancelled);
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_server_calls_handlers_registered_on_the_rust_client() {
    let (results_tx, mut results) = mpsc::unbounded_channel::<Value>();
    let router = Router::new().request("start", move |ctx: CallContext, (): ()| {
        let results_tx = results_tx.clone();
        async move {
            let conn = ctx.conn().clone();
            let sum: i64 = conn.request("client.add", &json!([2, 3])).await?;
            conn.notify("client.note", &"noted")?;
            let items: Vec<u64> = conn
                .stream::<u64>("client.count", &3)
                .await?
                .map(Result::unwrap)
                .collect()
                .await;
            let missing = conn.request::<Value>("client.nope", &()).await.unwrap_err();
            let _ = results_tx.send(json!({
                "sum": sum,
                "items": items,
                "missing": missing.code().as_str(),
            }));
            Ok::<_, RpcError>("started")
        }
    });
    let server = Running::start("127.0.0.1:0".parse().unwrap(), router, quick_config()).await;
    let (note_tx, mut note_rx) = mpsc::unbounded_channel::<String>();
    let options = ClientOptions::default().router(
        plexus_client::Router::new()
            .request("client.add", |pair: (i64, i64)| async move {
                Ok::<_, plexus_client::ErrorBody>(pair.0 + pair.1)
            })
            .notify("client.note", move |note: String| {
                let note_tx = note_tx.clone();
                async move {
                    let _ = note_tx.send(note);
                }
            })
            .stream("client.count", |n: u64| async move {
                Ok::<_, RpcError>(futures_util::stream::iter(
                    (0..n).map(Ok::<_, plexus_client::ErrorBody>),
                ))
            }),
    );
    let client = plexus_client::connect(&server.url(), options)
        .await
        .unwrap();
    let started: String = client.request("start", &()).await.unwrap();
    assert_eq!(started, "started");
    let result = timeout(WAIT, results.recv()).await.unwrap().unwrap();
    assert_eq!(
        result,
        json!({"sum": 5, "items": [0, 1, 2], "missing": "NOT_FOUND"})
    );
    assert_eq!(
        timeout(WAIT, note_rx.recv()).await.unwrap().unwrap(),
        "noted"
    );
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_restarts_on_the_same_port() {
    let (notes, mut noted) = mpsc::unbounded_channel();
    let first = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        app_router(notes.clone()),
        quick_config(),
    )
    .await;
    let addr = first.addr;
    let client = plexus_client::connect(
        &first.url(),
        ClientOptions::default().reconnect(quick_reconnect()),
    )
    .await
    .unwrap();
    let mut status = client.status();
    let first_conn = client.conn_id().unwrap();

    // A graceful stop closes with 1001: the client keeps trying.
    first.stop().await;
    wait_status(&mut status, Status::Reconnecting).await;

    // Notifications sent while the server is down wait in the offline queue, in order.
    for n in 0..3 {
        client
            .notify("log.note", &format!("queued {n}"))
            .await
            .unwrap();
    }

    let second = Running::start(addr, app_router(notes), quick_config()).await;
    wait_status(&mut status, Status::Connected).await;
    assert_ne!(client.conn_id().unwrap(), first_conn);
    for n in 0..3 {
        let note = timeout(WAIT, noted.recv()).await.unwrap().unwrap();
        assert_eq!(note, format!("queued {n}"));
    }
    let echoed: u64 = client.request("sys.echo", &7).await.unwrap();
    assert_eq!(echoed, 7);
    client.close().await;
    second.stop().await;
}

/// Forwards TCP to the server; `freeze` makes the connections open at that moment stop
/// forwarding in both directions without closing (a half-open path), while new
/// connections still go through.
struct Proxy {
    addr: SocketAddr,
    generation: Arc<AtomicU64>,
    accepted: watch::Receiver<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(AtomicU64::new(0));
        let (accepted_tx, accepted) = watch::channel(0u64);
        let frozen = generation.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while let Ok((client, _)) = listener.accept().await {
                count += 1;
                let _ = accepted_tx.send(count);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = frozen.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone(), born));
                tokio::spawn(pipe(sr, cw, frozen.clone(), born));
            }
        });
        Self {
            addr,
            generation,
            accepted,
        }
    }

    fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            // Frozen: swallow everything, keep both sockets open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_client_detects_a_half_open_connection_and_reconnects() {
    let mut config = quick_config();
    config.limits.heartbeat_interval = Duration::from_millis(200);
    let server = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        plexus::sys::router(),
        config,
    )
    .await;
    let proxy = Proxy::start(server.addr).await;
    let mut accepted = proxy.accepted.clone();
    let client = plexus_client::connect(
        &format!("ws://{}/ws", proxy.addr),
        ClientOptions::default()
            .reconnect(quick_reconnect())
            .heartbeat_grace(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let mut status = client.status();
    let first_conn = client.conn_id().unwrap();
    proxy.freeze();
    // Nothing arrives any more (not even pings): the client gives up on the connection
    // after heartbeat + grace and dials again, through the proxy.
    wait_status(&mut status, Status::Reconnecting).await;
    timeout(WAIT, accepted.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();
    wait_status(&mut status, Status::Connected).await;
    assert_ne!(client.conn_id().unwrap(), first_conn);
    let echoed: String = client.request("sys.echo", "alive").await.unwrap();
    assert_eq!(echoed, "alive");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn an_in_flight_call_fails_unavailable_when_the_server_goes_away() {
    let server = Running::start(
        "127.0.0.1:0".parse().unwrap(),
        plexus::sys::router(),
        quick_config(),
    )
    .await;
    let client = plexus_client::connect(
        &server.url(),
        ClientOptions::default().reconnect(quick_reconnect()),
    )
    .await
    .unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request::<Value>("sys.sleep", &json!({"ms": 60_000}))
                .await
        }
    });
    // Wait until the call is on the wire before stopping the server.
    timeout(WAIT, async {
        while client.pending_calls() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    server.stop().await;
    let error = timeout(WAIT, slow).await.unwrap().unwrap().unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    client.close().await;
}

#[tokio::test]
async fn typed_values_per_connection_and_per_server_reach_handlers() {
    #[derive(Clone)]
    struct Greeting(&'static str);
    #[derive(Clone)]
    struct Seat(u64);
    let seats = Arc::new(AtomicU64::new(0));
    let router = Router::new().request("whoami", |ctx: CallContext, (): ()| async move {
        let greeting = ctx.extension::<Greeting>().map(|g| g.0);
        let seat = ctx.extension::<Seat>().map(|s| s.0);
        Ok::<_, RpcError>(json!({"greeting": greeting, "seat": seat}))
    });
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let server = Server::builder()
        .router(router)
        .config(quick_config())
        .extension(Greeting("hi"))
        .on_connect(move |conn| {
            let seats = seats.clone();
            let ready_tx = ready_tx.clone();
            async move {
                // Each connection gets its own seat; the greeting is the server's.
                conn.insert_extension(Seat(seats.fetch_add(1, Ordering::SeqCst) + 1));
                let _ = ready_tx.send(conn.id().to_owned());
            }
        })
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let app = server.route("/ws");
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener, app, std::future::pending()).await }
    });
    let mut answers = Vec::new();
    for _ in 0..2 {
        let client = plexus_client::connect(&url, ClientOptions::default())
            .await
            .unwrap();
        // The hook runs after `welcome`: wait until it has run for this connection.
        let conn = timeout(WAIT, ready.recv()).await.unwrap().unwrap();
        assert_eq!(Some(conn), client.conn_id());
        answers.push(client.request::<Value>("whoami", &()).await.unwrap());
        client.close().await;
    }
    assert_eq!(answers[0], json!({"greeting": "hi", "seat": 1}));
    assert_eq!(answers[1], json!({"greeting": "hi", "seat": 2}));
    server.shutdown();
    timeout(WAIT, serving).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_rust_subscription_survives_a_reconnect_without_loss_or_duplicates() {
    use plexus_client::{ChannelEvent, JoinOptions};
    use plexus_server::{ChannelOptions, CloseCode, Namespaces};

    let server = Server::builder()
        .router(plexus::sys::router())
        .config(quick_config())
        .channels(
            Namespaces::new().namespace(
                "room:*",
                ChannelOptions::default()
                    .history_size(100)
                    .client_publish(true),
            ),
        )
        .build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let app = server.route("/ws");
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener, app, std::future::pending()).await }
    });
    let hub = server.hub().clone();

    let client =
        plexus_client::connect(&url, ClientOptions::default().reconnect(quick_reconnect()))
            .await
            .unwrap();
    let mut status = client.status();
    let mut subscription = client.join("room:r", JoinOptions::default()).await.unwrap();
    for n in 1..=5u64 {
        // The client's own publications go through the server like anyone's.
        let position = client.publish("room:r", &json!({"n": n})).await.unwrap();
        assert_eq!(position.offset, n);
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match timeout(WAIT, subscription.next()).await.unwrap().unwrap() {
            ChannelEvent::Publication(p) => seen.push(p.offset),
            other => panic!("unexpected {other:?}"),
        }
    }

    // The server drops the connection (1001: reconnect); 50 publications happen meanwhile.
    let conn = client.conn_id().unwrap();
    hub.connection(&conn)
        .unwrap()
        .close(CloseCode::GOING_AWAY, "test");
    wait_status(&mut status, Status::Reconnecting).await;
    for n in 6..=55u64 {
        hub.publish("room:r", &json!({"n": n})).await.unwrap();
    }
    wait_status(&mut status, Status::Connected).await;
    hub.publish("room:r", &json!({"n": 56})).await.unwrap();

    let mut resubscribed = None;
    while seen.len() < 56 {
        match timeout(WAIT, subscription.next()).await.unwrap().unwrap() {
            ChannelEvent::Publication(p) => seen.push(p.offset),
            ChannelEvent::Resubscribed { recovered, .. } => resubscribed = Some(recovered),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(resubscribed, Some(true));
    assert_eq!(
        seen,
        (1..=56).collect::<Vec<_>>(),
        "each publication once, in order"
    );
    assert_ne!(client.conn_id().unwrap(), conn);
    client.close().await;
    server.shutdown();
    timeout(WAIT, serving).await.unwrap().unwrap().unwrap();
}
