//! Three `plexus serve --engine …` processes on one real broker behave as one, on Redis and on
//! NATS:
//! publications through any node reach every subscriber once and in order, a client that
//! moves (or whose node is killed) recovers what it missed on another node, presence spans
//! the nodes and forgets a killed node's members, connections are reached from any node, a
//! broker that restarts is told to the clients and healed, and every node lists the live
//! nodes at `/health/cluster`.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use plexus::client::{ChannelEvent, Status};
use plexus::{Client, ClientOptions, JoinOptions, Subscription, connect};
use plexus_server::Codec;
use serde_json::{Value, json};
use support::broker::{Broker, Kind};
use support::process::{Proc, ws_addr, ws_url};
use support::relay::fast_reconnect;
use support::{RawClient, http, http_within, within};

const KEY: &str = "cluster-key";

/// The nodes' configuration: one namespace with history, recovery and presence, and a short
/// presence TTL so that a killed node's members lapse quickly.
const CONFIG: &str = r#"
api_key = "cluster-key"

[limits]
heartbeat = "1s"

[engine]
presence_ttl = "1s"

[namespaces."room:*"]
history_size = 1000
recovery = true
presence = true
join_leave_events = true
client_publish = true
public = true
"#;

/// One `plexus serve` process.
struct Node {
    proc: Proc,
    url: String,
    addr: SocketAddr,
}

/// A broker and the nodes on it.
struct Cluster {
    broker: Broker,
    config: PathBuf,
    nodes: Vec<Option<Node>>,
    /// More `plexus serve` arguments for every node.
    extra: Vec<&'static str>,
}

impl Cluster {
    async fn start(kind: Kind, count: usize) -> Self {
        Self::start_with(kind, count, Vec::new()).await
    }

    async fn start_with(kind: Kind, count: usize, extra: Vec<&'static str>) -> Self {
        let broker = Broker::start(kind).await;
        let config = std::env::temp_dir().join(format!("plexus-cluster-{}.toml", broker.port()));
        std::fs::write(&config, CONFIG).expect("write the config");
        let mut cluster = Self {
            broker,
            config,
            nodes: Vec::new(),
            extra,
        };
        for n in 1..=count {
            let node = cluster.start_node(&format!("n{n}")).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn args<'a>(&'a self, engine: &'a str, node: &'a str) -> Vec<&'a str> {
        let config = self.config.to_str().expect("a UTF-8 temp dir");
        let mut args = vec![
            "serve",
            "--config",
            config,
            "--engine",
            engine,
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            node,
        ];
        args.extend(&self.extra);
        args
    }

    async fn start_node(&self, node: &str) -> Node {
        let engine = self.broker.url();
        let (proc, line) = Proc::start(&self.args(&engine, node), "ws://").await;
        let url = ws_url(&line);
        let addr = ws_addr(&url);
        Node { proc, url, addr }
    }

    fn node(&self, n: usize) -> &Node {
        self.nodes[n].as_ref().expect("a live node")
    }

    async fn kill(&mut self, n: usize) {
        self.nodes[n].take().expect("a live node").proc.kill().await;
    }

    /// Publishes `{"n": first}`, `{"n": first + 1}`, ... through node `node` until one is
    /// taken (a node that just got its broker back refuses until its link is up again, on
    /// its own reconnect schedule); returns the `n` taken.
    async fn publish_until_taken(&self, node: usize, channel: &str, first: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut n = first;
        loop {
            let (status, body) = self.publish_http(node, channel, n).await;
            if status == 200 {
                return n;
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing does not work again"
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes `{"n": n}` through node `node`'s HTTP API.
    /// Asks node `node`'s `/health/ready` until it answers `status` (it follows the
    /// engine's link, which has no event to wait on from here); returns the body.
    async fn readiness_until(&self, node: usize, status: u16) -> Value {
        within(&format!("/health/ready to answer {status}"), async {
            loop {
                let (got, body) =
                    http(self.node(node).addr, "GET", "/health/ready", None, None).await;
                if got == status {
                    break body;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    async fn publish_http(&self, node: usize, channel: &str, n: u64) -> (u16, Value) {
        let body = json!({"channel": channel, "data": {"n": n}}).to_string();
        http(
            self.node(node).addr,
            "POST",
            "/api/publish",
            Some(KEY),
            Some(&body),
        )
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn client(url: &str) -> Client {
    connect(url, ClientOptions::default().reconnect(fast_reconnect()))
        .await
        .expect("connect to the node")
}

/// The next event that is not a presence change.
async fn next_event(sub: &mut Subscription) -> ChannelEvent {
    within("a channel event", async {
        loop {
            match sub.next().await.expect("the subscription lives") {
                ChannelEvent::MemberJoined(_) | ChannelEvent::MemberLeft(_) => {}
                event => return event,
            }
        }
    })
    .await
}

/// The next publication, as `(offset, n)`; fails on any other event but presence.
async fn next_publication(sub: &mut Subscription) -> (u64, u64) {
    match next_event(sub).await {
        ChannelEvent::Publication(p) => {
            let value: Value = p.decode().expect("json");
            (p.offset, value["n"].as_u64().expect("n"))
        }
        other => panic!("expected a publication, got {other:?}"),
    }
}

async fn a_publication_through_any_node_reaches_every_subscriber_once_in_order(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let clients = [
        client(&cluster.node(0).url).await,
        client(&cluster.node(1).url).await,
        client(&cluster.node(2).url).await,
    ];
    let mut subs = Vec::new();
    for c in &clients {
        subs.push(
            c.join("room:fan", JoinOptions::default())
                .await
                .expect("join"),
        );
    }
    // Through a client's `pub` on two nodes and the HTTP API on the third, in turn.
    for n in 1..=30u64 {
        match n % 3 {
            0 => {
                let (status, _) = cluster.publish_http(2, "room:fan", n).await;
                assert_eq!(status, 200);
            }
            k => {
                let position = clients[k as usize - 1]
                    .publish("room:fan", &json!({"n": n}))
                    .await
                    .expect("publish");
                assert_eq!(position.offset, n, "offsets follow the publications");
            }
        }
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        for n in 1..=30u64 {
            assert_eq!(
                next_publication(sub).await,
                (n, n),
                "subscriber on node {i}"
            );
        }
    }
}

async fn a_client_that_moves_to_another_node_gets_exactly_what_it_missed(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let first = client(&cluster.node(0).url).await;
    let mut sub = first
        .join("room:move", JoinOptions::default())
        .await
        .expect("join");
    for n in 1..=5 {
        cluster.publish_http(2, "room:move", n).await;
    }
    for n in 1..=5 {
        assert_eq!(next_publication(&mut sub).await, (n, n));
    }
    let last = sub.last_position().clone();
    first.close().await;
    for n in 6..=9 {
        cluster.publish_http(2, "room:move", n).await;
    }
    let second = client(&cluster.node(1).url).await;
    let mut sub = second
        .join("room:move", JoinOptions::default().since(last))
        .await
        .expect("join with since");
    assert!(sub.recovered(), "the history holds what was missed");
    for n in 6..=9 {
        assert_eq!(
            next_publication(&mut sub).await,
            (n, n),
            "exactly the missed ones"
        );
    }
    cluster.publish_http(0, "room:move", 10).await;
    assert_eq!(next_publication(&mut sub).await, (10, 10), "then live ones");
}

async fn a_killed_nodes_clients_recover_elsewhere_and_its_members_leave(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3).await;
    // The client tries node 0 first, then node 1 on every later attempt.
    let urls = [cluster.node(0).url.clone(), cluster.node(1).url.clone()];
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let first_url = urls[0].clone();
    let moving = connect(
        &first_url,
        ClientOptions::default()
            .reconnect(fast_reconnect())
            .before_connect(move |req| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let url = urls[usize::from(n > 0)].clone();
                Box::pin(async move {
                    req.url = url.parse().map_err(|e| format!("{e}"))?;
                    Ok(())
                })
            }),
    )
    .await
    .expect("connect");
    let conn = moving.conn_id().expect("a connection id");
    let watcher = client(&cluster.node(2).url).await;
    let mut watching = watcher
        .join("room:kill", JoinOptions::default())
        .await
        .expect("join");
    let mut sub = moving
        .join("room:kill", JoinOptions::default())
        .await
        .expect("join");
    within("the mover's join seen from node 2", async {
        loop {
            if let Some(ChannelEvent::MemberJoined(m)) = watching.next().await
                && m.conn == conn
            {
                break;
            }
        }
    })
    .await;
    let presence = watcher.presence("room:kill").await.expect("presence");
    assert_eq!(
        presence.len(),
        2,
        "both members, across nodes: {presence:?}"
    );

    cluster.publish_http(2, "room:kill", 1).await;
    assert_eq!(next_publication(&mut sub).await, (1, 1));
    cluster.kill(0).await;
    for n in 2..=6 {
        cluster.publish_http(2, "room:kill", n).await;
    }
    // Its member lapses with the presence TTL (1 s) and a sweep: well within the wait.
    within("the killed node's member to leave", async {
        loop {
            match watching.next().await.expect("the watcher's subscription") {
                ChannelEvent::MemberLeft(m) if m.conn == conn => break,
                _ => {}
            }
        }
    })
    .await;
    match next_event(&mut sub).await {
        ChannelEvent::Resubscribed { recovered, .. } => assert!(recovered, "recovered on node 1"),
        other => panic!("expected the re-join, got {other:?}"),
    }
    for n in 2..=6 {
        assert_eq!(
            next_publication(&mut sub).await,
            (n, n),
            "nothing missed, nothing twice"
        );
    }
}

async fn a_connection_is_reached_from_any_node(kind: Kind) {
    let cluster = Cluster::start(kind, 3).await;
    let target = client(&cluster.node(0).url).await;
    let conn = target.conn_id().expect("a connection id");
    let _sub = target
        .join("room:reach", JoinOptions::default())
        .await
        .expect("join");
    // Presence through node 1's HTTP API lists the connection held by node 0.
    let (status, presence) = http(
        cluster.node(1).addr,
        "GET",
        "/api/presence?channel=room:reach",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(presence.to_string().contains(&conn), "{presence}");
    // A disconnect through node 2 closes it on node 0, with the code given there (4003:
    // do not come back).
    let mut status = target.status();
    let body = json!({"conn": conn, "code": 4003}).to_string();
    let (code, _) = http(
        cluster.node(2).addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(code, 200);
    within(
        "the connection to close for good",
        status.wait_for(|s| *s == Status::Closed),
    )
    .await
    .expect("status");
    let reason = target.close_reason().expect("a reason").to_string();
    assert!(reason.contains("disconnected by the server"), "{reason}");
}

async fn a_user_is_disconnected_on_every_node(kind: Kind) {
    let cluster = Cluster::start_with(kind, 2, vec!["--jwt-secret", support::JWT_SECRET]).await;
    let as_user = |node: usize, user: &str| {
        // What `plexus token --secret … --sub USER` mints: no issuer or audience.
        let claims = json!({"sub": user, "exp": support::unix_now() + 3600});
        let token = support::sign_hs256(support::JWT_SECRET.as_bytes(), &claims);
        let options = ClientOptions::default().token(token);
        connect(&cluster.node(node).url, options)
    };
    let alice = [
        as_user(0, "alice").await.expect("alice on n1"),
        as_user(1, "alice").await.expect("alice on n2"),
    ];
    let bob = as_user(0, "bob").await.expect("bob on n1");
    let body = json!({"user": "alice", "code": 4003}).to_string();
    let (code, answer) = http(
        cluster.node(1).addr,
        "POST",
        "/api/disconnect",
        Some(KEY),
        Some(&body),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    for client in &alice {
        within(
            "alice's connections to close for good",
            client.status().wait_for(|s| *s == Status::Closed),
        )
        .await
        .expect("status");
    }
    // Bob, on the same node as one of them, is still served.
    let echoed: Value = bob
        .request("sys.echo", &json!("still here"))
        .await
        .expect("bob");
    assert_eq!(echoed, json!("still here"));
}

async fn a_broker_restart_is_told_and_healed(kind: Kind) {
    let mut cluster = Cluster::start(kind, 2).await;
    let subscriber = client(&cluster.node(0).url).await;
    let mut sub = subscriber
        .join("room:broker", JoinOptions::default())
        .await
        .expect("join");
    cluster.publish_http(1, "room:broker", 1).await;
    assert_eq!(next_publication(&mut sub).await, (1, 1));

    cluster.broker.kill().await;
    // Meanwhile publishing is refused as unavailable, not lost silently.
    let mut refused = None;
    for _ in 0..50 {
        let (status, body) = cluster.publish_http(1, "room:broker", 2).await;
        if status != 200 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("a publication without a broker is refused");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
    // And the node says it is not ready, so a load balancer sends clients elsewhere.
    let body = cluster.readiness_until(1, 503).await;
    assert_eq!(body["status"], "engine_unavailable", "{body}");

    cluster.broker.restart().await;
    // The broker came back empty: the subscriber is told nothing can be recovered,
    // and gets what is published from then on.
    match next_event(&mut sub).await {
        ChannelEvent::Resubscribed { recovered, .. } => {
            assert!(!recovered, "the history was lost with the broker")
        }
        other => panic!("expected the re-join, got {other:?}"),
    }
    let n = cluster.publish_until_taken(1, "room:broker", 100).await;
    let (_, got) = next_publication(&mut sub).await;
    assert_eq!(got, n);
    let body = cluster.readiness_until(1, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    let (status, _) = http(cluster.node(0).addr, "GET", "/health/live", None, None).await;
    assert_eq!(status, 200);
}

async fn a_stalled_broker_is_told_and_nothing_is_lost(kind: Kind) {
    let cluster = Cluster::start(kind, 2).await;
    // A raw client, to see the `left` frame the node sends.
    let mut raw = RawClient::connect(cluster.node(0).addr, Some(Codec::Json)).await;
    raw.send_json(json!({"t": "join", "id": 1, "ch": "room:stall"}))
        .await;
    let joined = raw.recv_json().await;
    assert_eq!(joined["t"], "res", "{joined}");
    cluster.publish_http(1, "room:stall", 1).await;
    let first = raw.recv_json().await;
    assert_eq!(
        (first["t"].clone(), first["o"].clone()),
        (json!("msg"), json!(1))
    );

    // The broker stops answering with its sockets open: no reset tells anyone.
    cluster.broker.pause();
    // A publication meanwhile is refused once the engine's timeout passes, not left hanging
    // (in a task: the raw client keeps reading, which answers the node's heartbeats).
    let body = json!({"channel": "room:stall", "data": {"n": 2}}).to_string();
    let node = cluster.node(1).addr;
    let publishing = tokio::spawn(async move {
        let bound = Duration::from_secs(20);
        http_within(bound, node, "POST", "/api/publish", Some(KEY), Some(&body)).await
    });
    // The subscriber's node finds the link dead (its pings go unanswered) and tells it.
    let left = raw.recv_json_within(Duration::from_secs(20)).await;
    assert_eq!(left["t"], "left", "{left}");
    assert_eq!(left["e"]["code"], "UNAVAILABLE", "{left}");
    let (status, answer) = publishing.await.expect("the publishing task");
    assert_eq!(status, 503, "{answer}");

    cluster.broker.resume();
    // The broker kept everything: joining again from the last position recovers.
    let since = json!({"epoch": joined["d"]["epoch"], "offset": 1});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut id = 2;
    let recovered = loop {
        raw.send_json(json!({"t": "join", "id": id, "ch": "room:stall", "since": since}))
            .await;
        let answer = raw.recv_json().await;
        if answer["t"] == "res" {
            break answer;
        }
        // Refused while the node's link comes back: try again shortly.
        assert_eq!(answer["e"]["code"], "UNAVAILABLE", "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        id += 1;
    };
    assert_eq!(recovered["d"]["recovered"], true, "{recovered}");
    let taken = cluster.publish_until_taken(1, "room:stall", 3).await;
    // A refusal after a timeout cannot know whether the broker took the publication before it
    // stalled: it may have (then it is recovered in its place), or not. Either way offsets
    // stay dense, nothing comes twice, and the publication taken arrives.
    let mut got = Vec::new();
    while got.last() != Some(&taken) {
        let next = raw.recv_json().await;
        assert_eq!(next["t"], "msg", "{next}");
        assert_eq!(next["o"], json!(2 + got.len()), "dense offsets: {next}");
        let n = next["d"]["n"].as_u64().expect("n");
        assert!(
            got.last().is_none_or(|&last| n > last),
            "in order, once: {got:?} then {n}"
        );
        got.push(n);
    }
}

async fn a_second_live_node_with_the_same_id_is_refused(kind: Kind) {
    let cluster = Cluster::start(kind, 1).await;
    let engine = cluster.broker.url();
    let (status, stderr) = Proc::run(&cluster.args(&engine, "n1"), Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(
        stderr.contains("node id `n1` is held by another live node"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_wrong_or_unreachable_engine_stops_the_start_with_its_name() {
    let (status, stderr) = Proc::run(
        &[
            "serve",
            "--engine",
            "postgres://x",
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("`--engine`"), "{stderr}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let (status, stderr) = Proc::run(
        &["serve", "--engine", &url, "--listen", "127.0.0.1:0"],
        Duration::from_secs(10),
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains(&url), "{stderr}");
}

/// The node ids `/health/cluster` of node `n` lists, once they are `expected`.
async fn nodes_until(cluster: &Cluster, n: usize, expected: &[&str]) -> Value {
    within(&format!("/health/cluster to list {expected:?}"), async {
        loop {
            let (status, body) =
                http(cluster.node(n).addr, "GET", "/health/cluster", None, None).await;
            assert_eq!(status, 200, "{body}");
            let listed: Vec<&str> = body["nodes"]
                .as_array()
                .expect("a list of nodes")
                .iter()
                .filter_map(|node| node["node"].as_str())
                .collect();
            if listed == expected {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn the_nodes_of_the_cluster_are_listed_and_leave_when_they_stop_or_die(kind: Kind) {
    let mut cluster = Cluster::start(kind, 3).await;
    let body = nodes_until(&cluster, 2, &["n1", "n2", "n3"]).await;
    assert_eq!(body["node"], "n3");
    assert_eq!(body["nodes"][0]["relay"], false);
    assert!(
        body["nodes"][0]["started_at"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    // Killed: its presence lapses within the TTL (1 s).
    cluster.kill(0).await;
    nodes_until(&cluster, 2, &["n2", "n3"]).await;
    // Stopped (SIGTERM): off the list too.
    let pid = cluster.node(1).proc.id().expect("a pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    nodes_until(&cluster, 2, &["n3"]).await;
}

broker_tests!(
    the_nodes_of_the_cluster_are_listed_and_leave_when_they_stop_or_die,
    a_publication_through_any_node_reaches_every_subscriber_once_in_order,
    a_client_that_moves_to_another_node_gets_exactly_what_it_missed,
    a_killed_nodes_clients_recover_elsewhere_and_its_members_leave,
    a_connection_is_reached_from_any_node,
    a_user_is_disconnected_on_every_node,
    a_broker_restart_is_told_and_healed,
    a_stalled_broker_is_told_and_nothing_is_lost,
    a_second_live_node_with_the_same_id_is_refused,
);
