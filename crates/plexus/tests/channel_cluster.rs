//! Two nodes sharing one engine, over real sockets: publications, presence, recovery and
//! messages for connections cross from one node to the other; server-side subscriptions.
//! The cross-node checks run three times: on linked memory engines in one process, on two
//! Redis engines sharing a real redis-server, and on two NATS engines sharing a real
//! nats-server.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_server::{
    ChannelOptions, CloseCode, Codec, EndpointConfig, Engine, ErrorCode, MemoryEngine, Namespaces,
    Server,
};
use serde_json::{Value, json};
use support::broker::{Backend, Broker, engines};
use support::{RawClient, TestServer, config, start_with, sys};

fn namespaces() -> Namespaces {
    Namespaces::new().namespace(
        "room:*",
        ChannelOptions::default()
            .history_size(100)
            .presence(true)
            .join_leave_events(true)
            .client_publish(true),
    )
}

async fn node(engine: Arc<dyn Engine>, name: &str, config: EndpointConfig) -> TestServer {
    start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .node_id(name)
            .engine(engine)
            .channels(namespaces()),
    )
    .await
}

/// Two nodes of one cluster on `backend`, and the guard of its broker.
async fn cluster(backend: Backend) -> (TestServer, TestServer, Option<Broker>) {
    let (a, b, broker) = engines(backend).await;
    (
        node(a, "a", config()).await,
        node(b, "b", config()).await,
        broker,
    )
}

async fn join(client: &mut RawClient, id: u64, ch: &str, since: Option<Value>) -> Value {
    let mut frame = json!({"t": "join", "id": id, "ch": ch});
    if let Some(since) = since {
        frame["since"] = since;
    }
    client.send_json(frame).await;
    let res = client.recv_json().await;
    assert_eq!(res["t"], "res", "join answered: {res}");
    res["d"].clone()
}

/// The next frame that is not a presence event.
async fn next_non_presence(client: &mut RawClient) -> Value {
    loop {
        let frame = client.recv_json().await;
        if frame["t"] != "pjoin" && frame["t"] != "pleave" {
            return frame;
        }
    }
}

async fn a_publication_on_one_node_reaches_subscribers_on_both(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut on_a = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let mut on_b = RawClient::connect(b.addr, Some(Codec::MsgPack)).await;
    join(&mut on_a, 1, "room:x", None).await;
    join(&mut on_b, 1, "room:x", None).await;
    for n in 1..=20 {
        b.server
            .hub()
            .publish("room:x", &json!({"n": n}))
            .await
            .unwrap();
    }
    for client in [&mut on_a, &mut on_b] {
        for n in 1..=20u64 {
            let msg = next_non_presence(client).await;
            assert_eq!(msg["t"], "msg");
            assert_eq!(msg["o"], n, "in order on both nodes: {msg}");
            assert_eq!(msg["d"]["n"], n);
        }
    }
    // A client's publication through node A reaches node B's subscriber too.
    on_a.send_json(json!({"t": "pub", "id": 2, "ch": "room:x", "d": {"from": "a"}}))
        .await;
    let msg = next_non_presence(&mut on_b).await;
    assert_eq!(
        (msg["o"].clone(), msg["d"].clone()),
        (json!(21), json!({"from": "a"}))
    );
}

async fn recovery_works_when_the_client_comes_back_on_the_other_node(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut client = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let joined = join(&mut client, 1, "room:r", None).await;
    a.server
        .hub()
        .publish("room:r", &json!({"n": 1}))
        .await
        .unwrap();
    let first = next_non_presence(&mut client).await;
    assert_eq!(first["o"], 1);
    client.close().await;
    for n in 2..=6 {
        a.server
            .hub()
            .publish("room:r", &json!({"n": n}))
            .await
            .unwrap();
    }
    let mut client = RawClient::connect(b.addr, Some(Codec::Json)).await;
    let since = json!({"epoch": joined["epoch"], "offset": 1});
    let res = join(&mut client, 1, "room:r", Some(since)).await;
    assert_eq!(res["recovered"], true, "{res}");
    for n in 2..=6u64 {
        let msg = next_non_presence(&mut client).await;
        assert_eq!(
            (msg["o"].clone(), msg["d"]["n"].clone()),
            (json!(n), json!(n))
        );
    }
    a.server
        .hub()
        .publish("room:r", &json!({"n": 7}))
        .await
        .unwrap();
    assert_eq!(next_non_presence(&mut client).await["o"], 7, "then live");
}

async fn presence_spans_both_nodes(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut on_a = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let mut on_b = RawClient::connect(b.addr, Some(Codec::Json)).await;
    join(&mut on_a, 1, "room:p", None).await;
    join(&mut on_b, 1, "room:p", None).await;
    let event = on_a.recv_json().await;
    assert_eq!(event["t"], "pjoin", "A hears of B's join: {event}");
    assert_eq!(event["d"]["conn"], on_b.welcome["conn"]);
    let members = a.server.hub().presence("room:p").await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    let reply = on_b.call(2, "$presence", json!({"ch": "room:p"})).await;
    assert_eq!(reply["d"].as_array().map(Vec::len), Some(2), "{reply}");
    on_b.close().await;
    let event = on_a.recv_json().await;
    assert_eq!(event["t"], "pleave", "{event}");
}

async fn connections_are_reached_from_the_other_node(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut client = RawClient::connect(a.addr, Some(Codec::MsgPack)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    // A notification sent through node B.
    b.server
        .hub()
        .notify(&conn, "news.flash", &json!({"text": "hi"}))
        .await
        .unwrap();
    let ntf = client.recv_json().await;
    assert_eq!(
        (ntf["t"].clone(), ntf["m"].clone()),
        (json!("ntf"), json!("news.flash"))
    );
    assert_eq!(ntf["d"]["text"], "hi");
    // A server-side subscription made through node B.
    b.server.hub().subscribe(&conn, "room:s").await.unwrap();
    let joined = client.recv_json().await;
    assert_eq!(
        (joined["t"].clone(), joined["ch"].clone()),
        (json!("joined"), json!("room:s"))
    );
    assert_eq!(joined["d"]["recovered"], false);
    b.server
        .hub()
        .publish("room:s", &json!({"n": 1}))
        .await
        .unwrap();
    let msg = client.recv_json().await;
    assert_eq!(
        (msg["t"].clone(), msg["o"].clone()),
        (json!("msg"), json!(1))
    );
    assert_eq!(a.server.hub().channels(), vec![("room:s".to_owned(), 1)]);
    // Unsubscribed through node B: a `left` push, and no more publications.
    b.server.hub().unsubscribe(&conn, "room:s").await.unwrap();
    let left = client.recv_json().await;
    assert_eq!(
        (left["t"].clone(), left["ch"].clone()),
        (json!("left"), json!("room:s"))
    );
    assert!(
        left.get("e").is_none(),
        "a plain unsubscribe has no error: {left}"
    );
    b.server
        .hub()
        .publish("room:s", &json!({"n": 2}))
        .await
        .unwrap();
    client.assert_echo(9).await;
    assert!(a.server.hub().channels().is_empty());
    // Disconnected through node B.
    b.server
        .hub()
        .disconnect(&conn, CloseCode::NORMAL, "bye")
        .await
        .unwrap();
    assert_eq!(client.recv_close().await, 1000);
}

/// A connection closed through another node gets the reason given there, and its own node
/// reports it as such.
async fn a_disconnect_through_another_node_keeps_its_reason(backend: Backend) {
    let (a, b, _broker) = engines(backend).await;
    let (builder, mut gone) = support::with_disconnect_hook(
        Server::builder()
            .router(sys())
            .node_id("a")
            .engine(a)
            .channels(namespaces()),
    );
    let a = start_with(builder).await;
    let b = node(b, "b", config()).await;
    let client = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    b.server
        .hub()
        .disconnect(&conn, CloseCode::FORBIDDEN, "banned by the moderator")
        .await
        .unwrap();
    let (ended, reason) = support::recv(&mut gone, "on_disconnect").await;
    assert_eq!(ended, conn);
    assert_eq!(
        reason,
        plexus_server::DisconnectReason::ServerClosed(
            CloseCode::FORBIDDEN,
            "banned by the moderator".into()
        )
    );
    drop(client);
}

/// Reads the next frame, which must be a `req` for `method`, and returns its id and params.
async fn expect_request(client: &mut RawClient, method: &str) -> (u64, Value) {
    let req = client.recv_json().await;
    assert_eq!(
        (req["t"].clone(), req["m"].clone()),
        (json!("req"), json!(method)),
        "expected a request: {req}"
    );
    (req["id"].as_u64().unwrap(), req["d"].clone())
}

const FIVE_S: Duration = Duration::from_secs(5);

/// Starts `hub.request(conn, method, params, timeout)` in a task of its own.
fn ask(
    server: &TestServer,
    conn: &str,
    method: &'static str,
    params: Value,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Value, plexus_server::HubError>> {
    let hub = server.server.hub().clone();
    let conn = conn.to_owned();
    tokio::spawn(async move { hub.request(&conn, method, &params, timeout).await })
}

async fn a_request_reaches_a_connection_on_the_other_node_and_brings_its_answer_back(
    backend: Backend,
) {
    let (a, b, _broker) = cluster(backend).await;
    let mut client = RawClient::connect(a.addr, Some(Codec::MsgPack)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    let asking = ask(&b, &conn, "ui.confirm", json!({"q": "sure?"}), FIVE_S);
    let (id, params) = expect_request(&mut client, "ui.confirm").await;
    assert_eq!(params, json!({"q": "sure?"}));
    client
        .send_json(json!({"t": "res", "id": id, "d": {"ok": true}}))
        .await;
    assert_eq!(asking.await.unwrap().unwrap(), json!({"ok": true}));

    // The client's error comes back as it was sent, with its data.
    let asking = ask(&b, &conn, "ui.confirm", json!({}), FIVE_S);
    let (id, _) = expect_request(&mut client, "ui.confirm").await;
    client
        .send_json(json!({"t": "err", "id": id, "e": {"code": "DECLINED", "message": "no", "data": {"why": "busy"}}}))
        .await;
    let refused = asking.await.unwrap().unwrap_err();
    assert_eq!(*refused.code(), ErrorCode::new("DECLINED"));
    assert_eq!(refused.message(), "no");
    assert_eq!(
        refused.data().unwrap().decode::<Value>().unwrap(),
        json!({"why": "busy"})
    );

    // The same call on the node that holds the connection takes the short way.
    let asking = ask(&a, &conn, "ui.confirm", json!({"n": 3}), FIVE_S);
    let (id, params) = expect_request(&mut client, "ui.confirm").await;
    assert_eq!(params, json!({"n": 3}));
    client
        .send_json(json!({"t": "res", "id": id, "d": 3}))
        .await;
    assert_eq!(asking.await.unwrap().unwrap(), json!(3));
}

async fn a_request_the_remote_client_leaves_unanswered_times_out_with_a_cancel(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut client = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    let asking = ask(&b, &conn, "ui.slow", json!({}), Duration::from_millis(300));
    let (id, _) = expect_request(&mut client, "ui.slow").await;
    // Unanswered: the client's node cancels the call and says so to the asking node.
    let cancel = client.recv_json().await;
    assert_eq!(cancel, json!({"t": "cancel", "id": id}));
    let timed_out = asking.await.unwrap().unwrap_err();
    assert_eq!(*timed_out.code(), ErrorCode::TIMEOUT, "{timed_out:?}");
    client.assert_echo(7).await;
}

async fn a_request_whose_caller_gives_up_is_cancelled_on_the_other_node(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut client = RawClient::connect(a.addr, Some(Codec::Json)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    let asking = ask(&b, &conn, "ui.confirm", json!({}), Duration::from_secs(60));
    let (id, _) = expect_request(&mut client, "ui.confirm").await;
    // The caller on node B stops waiting long before the minute is up.
    asking.abort();
    let started = std::time::Instant::now();
    let cancel = client.recv_json().await;
    assert_eq!(cancel, json!({"t": "cancel", "id": id}));
    assert!(started.elapsed() < Duration::from_secs(10));
    // An answer after the cancel is dropped quietly; the connection goes on.
    client
        .send_json(json!({"t": "res", "id": id, "d": true}))
        .await;
    client.assert_echo(7).await;
}

async fn a_request_to_a_connection_no_node_holds_times_out(backend: Backend) {
    let (_a, b, _broker) = cluster(backend).await;
    let started = Instant::now();
    let missing = b
        .server
        .hub()
        .request::<Value>(
            "nobody",
            "ui.confirm",
            &json!({}),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert_eq!(*missing.code(), ErrorCode::TIMEOUT);
    assert!(
        missing.message().contains("nobody"),
        "{}",
        missing.message()
    );
    // It waited for the timeout and the way back, not for ever.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_side_subscription_on_the_same_node_and_its_limit() {
    let mut limited = config();
    limited.limits.max_subscriptions = 1;
    let server = node(Arc::new(MemoryEngine::new()), "solo", limited).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    let hub = server.server.hub();
    hub.publish("room:h", &json!({"n": 1})).await.unwrap();
    hub.subscribe(&conn, "room:h").await.unwrap();
    let joined = client.recv_json().await;
    assert_eq!(joined["t"], "joined");
    assert_eq!(
        joined["d"]["offset"], 1,
        "the position it starts from: {joined}"
    );
    let refused = hub.subscribe(&conn, "room:other").await.unwrap_err();
    assert_eq!(refused.code().as_str(), "RATE_LIMITED", "{refused:?}");
    let unknown = hub.subscribe(&conn, "nowhere").await.unwrap_err();
    assert_eq!(unknown.code().as_str(), "NOT_FOUND");
    // The client may leave a server-side subscription like its own.
    client
        .send_json(json!({"t": "leave", "id": 1, "ch": "room:h"}))
        .await;
    assert_eq!(client.recv_json().await["t"], "res");
    assert!(hub.channels().is_empty());
}

async fn disconnecting_an_unknown_user_closes_nothing(backend: Backend) {
    let (a, b, _broker) = cluster(backend).await;
    let mut clients = vec![
        RawClient::connect(a.addr, Some(Codec::Json)).await,
        RawClient::connect(b.addr, Some(Codec::Json)).await,
    ];
    // Anonymous connections have no user: nothing is closed.
    let count = b
        .server
        .hub()
        .disconnect_user("nobody", CloseCode::FORBIDDEN, "revoked")
        .await
        .unwrap();
    assert_eq!(count, 0);
    for client in &mut clients {
        client.assert_echo(1).await;
    }
}

/// An engine that delegates to a memory engine, and can fail calls or interrupt channels
/// the way a cluster engine whose backend link breaks would.
struct FlakyEngine {
    inner: MemoryEngine,
    down: std::sync::atomic::AtomicBool,
    sink: std::sync::Mutex<Option<Arc<dyn plexus_server::engine::EngineSink>>>,
}

mod flaky {
    use super::*;
    use plexus_server::engine::{
        EngineError, EngineFuture, EngineSink, HistoryPage, Member, NodeMessage, Retention,
    };
    use plexus_server::protocol::Position;
    use std::sync::atomic::Ordering;

    impl FlakyEngine {
        pub(super) fn new() -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryEngine::new(),
                down: Default::default(),
                sink: Default::default(),
            })
        }

        pub(super) fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        pub(super) fn interrupt(&self, channel: &str) {
            let sink = self.sink.lock().unwrap().clone().expect("started");
            sink.interrupted(channel);
        }

        fn check<'a, T: Send + 'a>(&self, call: EngineFuture<'a, T>) -> EngineFuture<'a, T> {
            if self.down.load(Ordering::SeqCst) {
                Box::pin(std::future::ready(Err(EngineError::unavailable(
                    "the backend is down",
                ))))
            } else {
                call
            }
        }
    }

    impl Engine for FlakyEngine {
        fn start<'a>(&'a self, node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
            *self.sink.lock().unwrap() = Some(sink.clone());
            self.inner.start(node, sink)
        }
        fn publish<'a>(
            &'a self,
            channel: &'a str,
            data: plexus_server::Payload,
            options: &'a Retention,
        ) -> EngineFuture<'a, Position> {
            self.check(self.inner.publish(channel, data, options))
        }
        fn history<'a>(
            &'a self,
            channel: &'a str,
            since: Option<&'a Position>,
            limit: Option<usize>,
        ) -> EngineFuture<'a, HistoryPage> {
            self.check(self.inner.history(channel, since, limit))
        }
        fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
            self.check(self.inner.watch(channel))
        }
        fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
            self.inner.unwatch(channel)
        }
        fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
            self.check(self.inner.add_member(channel, member))
        }
        fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()> {
            self.inner.remove_member(channel, conn)
        }
        fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
            self.check(self.inner.members(channel))
        }
        fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
            self.check(self.inner.broadcast(message))
        }
    }
}

#[tokio::test]
async fn an_engine_that_is_down_gives_unavailable_and_the_connection_lives_on() {
    let engine = FlakyEngine::new();
    let server = node(engine.clone(), "flaky", config()).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::Json)).await;
    engine.set_down(true);
    client
        .send_json(json!({"t": "join", "id": 1, "ch": "room:d"}))
        .await;
    support::assert_err(&client.recv_json().await, Some(1), "UNAVAILABLE");
    client
        .send_json(json!({"t": "pub", "id": 2, "ch": "room:d", "d": 1}))
        .await;
    support::assert_err(&client.recv_json().await, Some(2), "UNAVAILABLE");
    let refused = server.server.hub().publish("room:d", &1).await.unwrap_err();
    assert_eq!(refused.code().as_str(), "UNAVAILABLE");
    assert!(
        server.server.hub().channels().is_empty(),
        "the failed join left nothing"
    );
    client.assert_echo(3).await;
    engine.set_down(false);
    assert_eq!(
        join(&mut client, 4, "room:d", None).await["recovered"],
        false
    );
}

#[tokio::test]
async fn an_interrupted_channel_tells_subscribers_to_join_again_and_they_recover() {
    let engine = FlakyEngine::new();
    let server = node(engine.clone(), "flaky", config()).await;
    let mut client = RawClient::connect(server.addr, Some(Codec::MsgPack)).await;
    let joined = join(&mut client, 1, "room:i", None).await;
    server
        .server
        .hub()
        .publish("room:i", &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(next_non_presence(&mut client).await["o"], 1);
    engine.interrupt("room:i");
    let left = next_non_presence(&mut client).await;
    assert_eq!(
        (left["t"].clone(), left["ch"].clone()),
        (json!("left"), json!("room:i"))
    );
    assert_eq!(left["e"]["code"], "UNAVAILABLE", "{left}");
    // Meanwhile publications go on; the client joins again from its position.
    server
        .server
        .hub()
        .publish("room:i", &json!({"n": 2}))
        .await
        .unwrap();
    let since = json!({"epoch": joined["epoch"], "offset": 1});
    let res = join(&mut client, 2, "room:i", Some(since)).await;
    assert_eq!(res["recovered"], true, "{res}");
    let msg = next_non_presence(&mut client).await;
    assert_eq!(
        (msg["o"].clone(), msg["d"]["n"].clone()),
        (json!(2), json!(2))
    );
}

backend_tests!(
    a_publication_on_one_node_reaches_subscribers_on_both,
    recovery_works_when_the_client_comes_back_on_the_other_node,
    presence_spans_both_nodes,
    connections_are_reached_from_the_other_node,
    a_disconnect_through_another_node_keeps_its_reason,
    a_request_reaches_a_connection_on_the_other_node_and_brings_its_answer_back,
    a_request_the_remote_client_leaves_unanswered_times_out_with_a_cancel,
    a_request_whose_caller_gives_up_is_cancelled_on_the_other_node,
    a_request_to_a_connection_no_node_holds_times_out,
    disconnecting_an_unknown_user_closes_nothing,
);
