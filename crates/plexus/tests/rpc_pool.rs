//! End-to-end: a protocol endpoint served by a pool of handlers. Connections go to the
//! handlers in turn and keep theirs for every call and their end; a handler that refuses,
//! or does not answer in time, closes the connection with 1013 before any `welcome` (and the
//! Rust client comes back to the next one); one that panics closes it with 1011; a handler
//! sees who authenticated in the `hello`; the shutdown does not wait for a handler still
//! deciding and waits for every `disconnected`; strict mode looks at every handler's router.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{ClientOptions, ConnectError, ReconnectOptions};
use plexus_server::{
    BuildError, ConnectionHandle, DisconnectReason, ProtocolHandler, Router, RpcError, Server,
};
use serde_json::json;
use support::{RawClient, TestServer, connect_ws, recv, start_with, within};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// What a handler of the pool saw.
#[derive(Debug)]
enum Seen {
    Connected {
        handler: &'static str,
        conn: String,
        user: Option<String>,
    },
    Disconnected {
        handler: &'static str,
        conn: String,
    },
}

/// A handler answering `who` with its name and reporting its events; when told, it
/// refuses every connection, panics, never answers, or takes its time to hear of an end.
struct Named {
    name: &'static str,
    router: Router,
    seen: mpsc::UnboundedSender<Seen>,
    refuse: bool,
    panic: bool,
    stall: bool,
    slow_end: bool,
    /// Takes a connection only once this is notified.
    gate: Option<Arc<Notify>>,
}

fn named(name: &'static str, seen: &mpsc::UnboundedSender<Seen>) -> Named {
    Named {
        name,
        router: Router::new()
            .request("who", move |_: ()| async move { Ok::<_, RpcError>(name) })
            .public(),
        seen: seen.clone(),
        refuse: false,
        panic: false,
        stall: false,
        slow_end: false,
        gate: None,
    }
}

impl ProtocolHandler for Named {
    fn router(&self) -> &Router {
        &self.router
    }

    async fn connected(&self, conn: &ConnectionHandle) -> Result<(), String> {
        assert!(!self.panic, "{} cannot take anyone", self.name);
        if self.stall {
            std::future::pending::<()>().await;
        }
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        if self.refuse {
            return Err(format!("{} is full", self.name));
        }
        let _ = self.seen.send(Seen::Connected {
            handler: self.name,
            conn: conn.id().to_owned(),
            user: conn.principal().user.clone(),
        });
        Ok(())
    }

    async fn disconnected(&self, conn: &ConnectionHandle, _reason: &DisconnectReason) {
        if self.slow_end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.seen.send(Seen::Disconnected {
            handler: self.name,
            conn: conn.id().to_owned(),
        });
    }
}

async fn pool_server(pool: Vec<Named>) -> TestServer {
    start_with(Server::builder().pool(pool)).await
}

/// The close a connection gets in place of its `welcome`: code and reason.
async fn refused(server: &TestServer) -> (u16, String) {
    let (mut ws, _) = connect_ws(server.addr, None).await.expect("upgrade");
    loop {
        match within("the close", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close in place of the welcome, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_handlers_in_turn_and_keep_theirs() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = pool_server(vec![named("h1", &tx), named("h2", &tx), named("h3", &tx)]).await;
    let mut clients = Vec::new();
    for expected in ["h1", "h2", "h3", "h1"] {
        let mut client = RawClient::connect(server.addr, None).await;
        // Every call of a connection goes to the handler that took it.
        for id in 1..=3 {
            let reply = client.call(id, "who", json!(null)).await;
            assert_eq!(reply, json!({"t": "res", "id": id, "d": expected}));
        }
        clients.push(client);
    }
    let mut handler_of = HashMap::new();
    for expected in ["h1", "h2", "h3", "h1"] {
        match recv(&mut seen, "connected").await {
            Seen::Connected { handler, conn, .. } => {
                assert_eq!(handler, expected);
                handler_of.insert(conn, handler);
            }
            other => panic!("{other:?}"),
        }
    }
    for client in clients {
        client.close().await;
    }
    // Each ends once, at the handler that took it.
    for _ in 0..4 {
        match recv(&mut seen, "disconnected").await {
            Seen::Disconnected { handler, conn } => {
                assert_eq!(handler_of.remove(&conn), Some(handler), "{conn}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(handler_of.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_refuses_closes_the_connection_before_its_welcome() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let full = Named {
        refuse: true,
        ..named("h2", &tx)
    };
    let server = pool_server(vec![named("h1", &tx), full]).await;
    let mut first = RawClient::connect(server.addr, None).await;
    assert_eq!(
        refused(&server).await,
        (1013, "h2 is full".to_owned()),
        "1013 (try again later) with the handler's reason, and no welcome"
    );
    // The third connection goes to h1 again; the first still works.
    let mut third = RawClient::connect(server.addr, None).await;
    assert_eq!(third.call(1, "who", json!(null)).await["d"], "h1");
    assert_eq!(first.call(1, "who", json!(null)).await["d"], "h1");
    // Never half-open: only the two taken are counted, and only they are heard of.
    support::wait_until("the refused connection is gone", || {
        server.server.connection_count() == 2
    })
    .await;
    first.close().await;
    third.close().await;
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(recv(&mut seen, "an event").await);
    }
    assert!(
        events.iter().all(|event| matches!(
            event,
            Seen::Connected { handler: "h1", .. } | Seen::Disconnected { handler: "h1", .. }
        )),
        "{events:?}"
    );
    assert!(seen.try_recv().is_err(), "nothing of the refused one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_comes_back_after_a_refusal_and_reaches_the_next_handler() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let full = |name| Named {
        refuse: true,
        ..named(name, &tx)
    };
    let server = pool_server(vec![full("h1"), full("h2"), named("h3", &tx)]).await;
    let url = format!("ws://{}/ws", server.addr);
    // Without retries, the refusal is the error, and one worth retrying.
    let error = plexus_client::connect(&url, ClientOptions::default())
        .await
        .expect_err("h1 refuses");
    assert!(
        matches!(error, ConnectError::Closed(Some(1013))),
        "{error:?}"
    );
    assert!(!error.is_fatal());
    // With retries, the first attempt goes to h2, which refuses too, the next to h3.
    let reconnect = ReconnectOptions::default()
        .initial_delay(Duration::from_millis(10))
        .max_attempts(Some(5));
    let client = plexus_client::connect(&url, ClientOptions::default().reconnect(reconnect))
        .await
        .expect("the next handler takes it");
    let who: String = client.request("who", &()).await.expect("who");
    assert_eq!(who, "h3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_closes_with_1011_and_the_server_goes_on() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let broken = Named {
        panic: true,
        ..named("h2", &tx)
    };
    let server = pool_server(vec![named("h1", &tx), broken]).await;
    let mut first = RawClient::connect(server.addr, None).await;
    assert_eq!(refused(&server).await.0, 1011);
    assert_eq!(first.call(1, "who", json!(null)).await["d"], "h1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_waits_for_every_disconnected() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let slow = |name| Named {
        slow_end: true,
        ..named(name, &tx)
    };
    let mut server = pool_server(vec![slow("h1"), slow("h2")]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(RawClient::connect(server.addr, None).await);
    }
    for _ in 0..4 {
        assert!(matches!(
            recv(&mut seen, "connected").await,
            Seen::Connected { .. }
        ));
    }
    server.trigger_shutdown();
    server
        .served(Duration::from_secs(10))
        .await
        .expect("served");
    // `serve` returned: every connection's `disconnected` has run (each takes 100 ms).
    let mut ended = 0;
    while let Ok(event) = seen.try_recv() {
        assert!(matches!(event, Seen::Disconnected { .. }), "{event:?}");
        ended += 1;
    }
    assert_eq!(ended, 4);
    for mut client in clients {
        assert_eq!(client.recv_close().await, 1001);
    }
}

#[test]
fn strict_mode_looks_at_every_handler_and_an_empty_pool_is_refused() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let undeclared = Named {
        router: Router::new().request("open", |_: ()| async { Ok::<_, RpcError>(()) }),
        ..named("h2", &tx)
    };
    let error = Server::builder()
        .strict(true)
        .pool([named("h1", &tx), undeclared])
        .try_build()
        .expect_err("h2's `open` declares no permission");
    match error {
        BuildError::Strict(strict) => assert_eq!(strict.methods(), ["open"]),
        other => panic!("{other:?}"),
    }
    let error = Server::builder()
        .pool(Vec::<Named>::new())
        .try_build()
        .expect_err("no handler");
    assert_eq!(error, BuildError::EmptyPool);
    // A router given afterwards replaces the empty pool.
    assert!(
        Server::builder()
            .pool(Vec::<Named>::new())
            .router(Router::new())
            .try_build()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_does_not_answer_in_time_is_a_refusal() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let stalled = Named {
        stall: true,
        ..named("h1", &tx)
    };
    let mut config = support::config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    let server = start_with(Server::builder().pool([stalled]).config(config)).await;
    let (code, reason) = refused(&server).await;
    assert_eq!(code, 1013);
    assert!(reason.contains("in time"), "{reason}");
}

/// The server holds the handshake's `101` back to send it with the `welcome`, in one write;
/// a handler taking its time must not hold up the handshake with it: the upgrade completes
/// while the handler decides, and the `welcome` follows once it takes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_completes_while_a_handler_decides() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let gated = Named {
        gate: Some(gate.clone()),
        ..named("h1", &tx)
    };
    let server = pool_server(vec![gated]).await;
    let (mut ws, _) = within("the upgrade", connect_ws(server.addr, None))
        .await
        .expect("upgrade");
    assert!(seen.try_recv().is_err(), "not taken yet");
    gate.notify_one();
    match within("the welcome", ws.next()).await {
        Some(Ok(Message::Text(text))) => assert!(text.contains(r#""t":"welcome""#), "{text}"),
        other => panic!("expected the welcome, got {other:?}"),
    }
    assert!(matches!(
        within("the handler", seen.recv()).await,
        Some(Seen::Connected { handler: "h1", .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_does_not_wait_for_a_handler_deciding() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let stalled = Named {
        stall: true,
        ..named("h1", &tx)
    };
    // Ten seconds to decide; the shutdown comes first and closes with 1001, no welcome.
    let mut server = pool_server(vec![stalled]).await;
    let (mut ws, _) = connect_ws(server.addr, None).await.expect("upgrade");
    support::wait_until("the connection to be counted", || {
        server.server.connection_count() == 1
    })
    .await;
    server.trigger_shutdown();
    match within("the close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001 in place of the welcome, got {other:?}"),
    }
    server.served(Duration::from_secs(5)).await.expect("served");
    assert!(
        seen.try_recv().is_err(),
        "a connection not taken is not heard of"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_knows_who_authenticated_in_the_hello() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let builder = Server::builder()
        .authenticator(support::jwt_authenticator())
        .pool([named("h1", &tx)]);
    let server = start_with(builder).await;
    let (mut ws, _) = connect_ws(server.addr, None).await.expect("upgrade");
    let hello = json!({"t": "hello", "token": support::token("ada", "", 60)});
    futures_util::SinkExt::send(&mut ws, Message::text(hello.to_string()))
        .await
        .expect("hello");
    match recv(&mut seen, "connected").await {
        Seen::Connected { user, .. } => assert_eq!(user.as_deref(), Some("ada")),
        other => panic!("{other:?}"),
    }
    match within("the welcome", ws.next()).await {
        Some(Ok(Message::Text(text))) => assert!(text.contains("\"welcome\""), "{text}"),
        other => panic!("expected the welcome, got {other:?}"),
    }
}
