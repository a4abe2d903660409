//! Relay nodes of one cluster share their providers: two `plexus relay --engine …`
//! processes on one broker (Redis, then NATS), a provider connected to one, a caller to the
//! other. Requests and streams cross, `$services` and `$watch` show providers of both nodes, and a
//! provider (or a whole relay node) that goes away is offline everywhere.

#[macro_use]
mod support;

use std::path::PathBuf;

use futures_util::StreamExt;
use plexus::{Client, ClientOptions, ErrorCode, connect};
use serde_json::{Value, json};
use support::broker::{Broker, Kind};
use support::process::{Proc, ws_url};
use support::relay::{assert_offline, fast_reconnect, until_offline, until_online};
use support::within;

/// A short presence TTL, so that a killed relay node's providers lapse quickly.
const CONFIG: &str = "[engine]\npresence_ttl = \"1s\"\n";

struct Mesh {
    broker: Broker,
    config: PathBuf,
}

impl Mesh {
    async fn start(kind: Kind) -> Self {
        let broker = Broker::start(kind).await;
        let config =
            std::env::temp_dir().join(format!("plexus-relay-cluster-{}.toml", broker.port()));
        std::fs::write(&config, CONFIG).expect("write the config");
        Self { broker, config }
    }

    /// `plexus relay` node `node` on the broker; returns it and its URL.
    async fn relay(&self, node: &str) -> (Proc, String) {
        let engine = self.broker.url();
        let config = self.config.to_str().expect("a UTF-8 temp dir");
        let args = [
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config,
            "--engine",
            &engine,
            "--node-id",
            node,
            "--heartbeat",
            "1s",
        ];
        let (proc, line) = Proc::start(&args, "ws://").await;
        (proc, ws_url(&line))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn provider(url: &str, node: &str) -> Proc {
    Proc::start(
        &["provide", url, "--node", node, "--service", "Greeting"],
        &format!("as node {node}"),
    )
    .await
    .0
}

async fn caller(url: &str) -> Client {
    connect(url, ClientOptions::default().reconnect(fast_reconnect()))
        .await
        .expect("connect to the relay")
}

async fn a_caller_on_one_relay_node_reaches_a_provider_on_the_other(kind: Kind) {
    let mesh = Mesh::start(kind).await;
    let (_a, url_a) = mesh.relay("relay-a").await;
    let (_b, url_b) = mesh.relay("relay-b").await;
    let client = caller(&url_b).await;
    let mut watch = client.watch_services().await.expect("$watch");
    let provider = provider(&url_a, "p1").await;
    until_online(&mut watch, "p1").await;
    let listed = client.services().await.expect("$services");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].node, "p1");

    let echoed: Value = client
        .request("Greeting.echo", &json!({"x": [1, 2]}))
        .await
        .expect("answered through the other node");
    assert_eq!(echoed, json!({"x": [1, 2]}));
    let node: String = client
        .request("Greeting.node", &())
        .node("p1")
        .await
        .expect("pinned");
    assert_eq!(node, "p1");
    // The provider's own errors come back as they are.
    let error = client
        .request::<Value>("Greeting.sleep", &json!({"ms": "soon"}))
        .await
        .expect_err("bad params");
    assert_eq!(*error.code(), ErrorCode::VALIDATION_ERROR, "{error:?}");
    // Streams cross too, in order, past the windows between the nodes.
    let mut items = client
        .stream::<u64>("Greeting.count", &json!({"n": 300}))
        .await
        .expect("a stream through the other node");
    for n in 0..300 {
        let item = within("an item", items.next()).await;
        assert_eq!(item.expect("an item").expect("not an error"), n);
    }
    assert!(within("the end", items.next()).await.is_none());

    provider.kill().await;
    until_offline(&mut watch, "p1").await;
    let error = client
        .request::<Value>("Greeting.echo", &1)
        .await
        .expect_err("nobody provides Greeting");
    assert_offline(&error, false);
}

async fn a_relay_node_that_dies_fails_its_calls_and_takes_its_providers_offline(kind: Kind) {
    let mesh = Mesh::start(kind).await;
    let (a, url_a) = mesh.relay("relay-a").await;
    let (_b, url_b) = mesh.relay("relay-b").await;
    let client = caller(&url_b).await;
    let mut watch = client.watch_services().await.expect("$watch");
    let _provider = provider(&url_a, "p1").await;
    until_online(&mut watch, "p1").await;

    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request::<Value>("Greeting.sleep", &json!({"ms": 30_000}))
                .await
        })
    };
    // The call is on its way to relay-a (it answers only after 30 s): now relay-a dies.
    tokio::task::yield_now().await;
    a.kill().await;
    // Its providers lapse with its presence lease (1 s here), and the call in flight fails
    // as soon as they do, not when its own deadline passes.
    until_offline(&mut watch, "p1").await;
    let error = within("the call in flight to fail", slow)
        .await
        .expect("the call task")
        .expect_err("the provider's node died");
    assert_offline(&error, true);
}

broker_tests!(
    a_caller_on_one_relay_node_reaches_a_provider_on_the_other,
    a_relay_node_that_dies_fails_its_calls_and_takes_its_providers_offline,
);
