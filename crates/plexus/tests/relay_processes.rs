//! The relay's failure semantics with real processes, where a death is the point:
//! `plexus relay` and `plexus provide` children killed with SIGKILL (no close frame, no
//! goodbye) mid-stream and mid-call, a caller process killed, and the Rust client's mesh
//! features (pinning, waiting for a service, offline retries, fallbacks, re-providing after
//! the relay comes back) across those deaths. Callers speak one codec and providers the
//! other.

#[macro_use]
mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plexus::client::{
    CallOptions, Client, ClientOptions, Codec, ErrorCode, Mesh, Provided, Router, RpcError,
    ServiceEvent, ServiceWatch, Status, connect,
};
use serde_json::{Value, json};
use support::process::{BIN, Proc, ws_url};
use support::relay::{assert_offline, fast_reconnect, until_offline};
use support::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// How soon a death must reach the calls it touches.
const FAILOVER: Duration = Duration::from_secs(1);

impl Proc {
    /// `plexus relay` on `listen` (`127.0.0.1:0` for a free port); returns it and its URL.
    async fn relay(listen: &str) -> (Proc, String) {
        let (proc, line) =
            Self::start(&["relay", "--listen", listen, "--heartbeat", "1s"], "ws://").await;
        (proc, ws_url(&line))
    }

    /// `plexus provide` of `Greeting` as `node`, speaking `codec`; returns once provided.
    async fn provider(url: &str, node: &str, codec: Codec) -> Proc {
        let mut args = vec!["provide", url, "--node", node, "--service", "Greeting"];
        args.extend(codec_flag(codec));
        Self::start(&args, &format!("as node {node}")).await.0
    }
}

/// The flag that makes a `plexus` client command speak `codec`.
fn codec_flag(codec: Codec) -> Option<&'static str> {
    (codec == Codec::MsgPack).then_some("--msgpack")
}

fn other(codec: Codec) -> Codec {
    match codec {
        Codec::Json => Codec::MsgPack,
        _ => Codec::Json,
    }
}

/// A caller that reconnects quickly.
async fn caller(url: &str, codec: Codec) -> Client {
    connect(
        url,
        ClientOptions::default()
            .codec(codec)
            .reconnect(fast_reconnect()),
    )
    .await
    .expect("connect to the relay")
}

/// Watches the relay's providers, once the watch has its first list (so that no later
/// change can be folded into it unseen).
async fn watching(client: &Client) -> ServiceWatch {
    let mut watch = client.watch_services().await.expect("$watch");
    let first = within("the first list", watch.next()).await;
    assert!(
        matches!(first, Some(Ok(ServiceEvent::Snapshot(_)))),
        "{first:?}"
    );
    watch
}

async fn a_provider_killed_mid_stream_fails_the_stream_and_goes_offline(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let a = Proc::provider(&url, "a", other(codec)).await;
    let client = caller(&url, codec).await;
    let mut watch = watching(&client).await;

    let mut items = client
        .stream::<u64>("Greeting.count", &json!({"n": 100_000, "interval_ms": 5}))
        .node("a")
        .await
        .expect("open the stream");
    for expected in 0..5 {
        let item = within("an item", items.next()).await.expect("open");
        assert_eq!(item.expect("item"), expected);
    }
    a.kill().await;
    let killed = Instant::now();
    // Items already on their way may still come, in order; then SERVICE_OFFLINE.
    let mut next = 5;
    let error = within("the stream to fail", async {
        loop {
            match items.next().await.expect("an end") {
                Ok(item) => {
                    assert_eq!(item, next);
                    next += 1;
                }
                Err(error) => break error,
            }
        }
    })
    .await;
    assert!(
        killed.elapsed() < FAILOVER,
        "failed after {:?}",
        killed.elapsed()
    );
    assert_offline(&error, true);
    assert!(items.next().await.is_none(), "the stream ended");

    until_offline(&mut watch, "a").await;
    assert_eq!(client.services().await.expect("$services"), vec![]);
    let error = client
        .request::<Value>("Greeting.echo", &1)
        .await
        .expect_err("nobody provides Greeting");
    assert_offline(&error, false);
}

async fn three_providers_kill_one_and_the_others_answer_every_call(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let a = Proc::provider(&url, "a", other(codec)).await;
    let b = Proc::provider(&url, "b", codec).await;
    let c = Proc::provider(&url, "c", other(codec)).await;
    let client = caller(&url, codec).await;
    let mut watch = watching(&client).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(
            client
                .request::<String>("Greeting.node", &())
                .await
                .expect("answer"),
        );
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b", "c", "c"]);

    b.kill().await;
    until_offline(&mut watch, "b").await;
    for i in 0..20 {
        let echoed: u64 = client
            .request("Greeting.echo", &i)
            .await
            .expect("every call succeeds on the other two");
        assert_eq!(echoed, i);
    }
    let mut nodes = Vec::new();
    for _ in 0..10 {
        nodes.push(
            client
                .request::<String>("Greeting.node", &())
                .await
                .expect("answer"),
        );
    }
    // Strictly alternating between the two that are left.
    let (first, second) = (nodes[0].clone(), nodes[1].clone());
    let mut pair = [first.as_str(), second.as_str()];
    pair.sort();
    assert_eq!(pair, ["a", "c"], "{nodes:?}");
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node, if i % 2 == 0 { &first } else { &second }, "{nodes:?}");
    }
    drop((a, c));
}

async fn a_provider_back_with_a_new_node_id_is_used_again(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let a = Proc::provider(&url, "a", other(codec)).await;
    let client = caller(&url, codec).await;
    assert_eq!(
        client
            .wait_for_service("Greeting", Duration::from_secs(5))
            .await
            .expect("a"),
        ["a"]
    );
    let mut watch = watching(&client).await;
    a.kill().await;
    until_offline(&mut watch, "a").await;

    // Offline: a fallback stands in; waiting for the service times out.
    let answer: String = client
        .request("Greeting.node", &())
        .fallback("nobody".to_owned())
        .await
        .expect("the fallback");
    assert_eq!(answer, "nobody");
    let error = client
        .wait_for_service("Greeting", Duration::from_millis(200))
        .await
        .expect_err("no provider");
    assert!(error.is_timeout(), "{error:?}");

    // A call that retries while offline is answered by the provider that comes back.
    let retrying = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request::<String>("Greeting.node", &())
                .offline_retries(50)
                .timeout(Duration::from_secs(10))
                .await
        })
    };
    let reopening = {
        let client = client.clone();
        tokio::spawn(async move {
            let items = client
                .stream::<u64>("Greeting.count", &json!({"n": 3}))
                .offline_retries(50)
                .await
                .expect("sub sent");
            items.collect::<Vec<_>>().await
        })
    };
    let _b = Proc::provider(&url, "a2", other(codec)).await;
    let answer = within("the retried call", retrying).await.expect("task");
    assert_eq!(answer.expect("answered by a2"), "a2");
    let items = within("the reopened stream", reopening)
        .await
        .expect("task");
    let items: Vec<u64> = items.into_iter().map(|i| i.expect("item")).collect();
    assert_eq!(items, [0, 1, 2]);

    // A stream idle for longer than its idle timeout fails with TIMEOUT.
    let mut slow = client
        .stream::<u64>("Greeting.count", &json!({"n": 2, "interval_ms": 60_000}))
        .idle_timeout(Duration::from_millis(300))
        .await
        .expect("opened");
    assert_eq!(slow.next().await.expect("item").expect("0"), 0);
    let idle = Instant::now();
    let error = within("the idle timeout", slow.next())
        .await
        .expect("an end");
    let error = error.expect_err("idle too long");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        idle.elapsed() >= Duration::from_millis(250),
        "{:?}",
        idle.elapsed()
    );
    assert_eq!(
        client
            .request::<String>("Greeting.node", &())
            .await
            .expect("a2"),
        "a2"
    );
}

/// A provider in this process: `Greeting.node` answers `node`; `Greeting.sleep` reports
/// its start on `started` and its end (answered or dropped by a cancel) on `ended`, and
/// counts its runs.
struct InProcessProvider {
    client: Client,
    runs: Arc<AtomicUsize>,
    started: mpsc::UnboundedReceiver<()>,
    ended: mpsc::UnboundedReceiver<()>,
}

/// Sends on drop: the end of a handler, however it ended.
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

async fn in_process_provider(url: &str, node: &str, codec: Codec) -> InProcessProvider {
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let name = node.to_owned();
    let counted = runs.clone();
    let router = Router::new()
        .request("Greeting.node", move |_: Value| {
            let name = name.clone();
            async move { Ok::<_, RpcError>(name) }
        })
        .stream("Greeting.ticks", |_: Value| async move {
            // One tick at once, then one a second until cancelled.
            let ticks = futures_util::stream::unfold(0u64, |n| async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some((Ok::<_, RpcError>(n), n + 1))
            });
            Ok::<_, RpcError>(ticks)
        })
        .request("Greeting.sleep", move |ms: u64| {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.send(());
            let ended = OnDrop(ended_tx.clone());
            async move {
                let _ended = ended;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, RpcError>(ms)
            }
        });
    let options = ClientOptions::default()
        .codec(codec)
        .reconnect(fast_reconnect())
        .router(router)
        .provide(node, ["Greeting"]);
    let client = connect(url, options).await.expect("provider connects");
    wait_provided(&client, node).await;
    InProcessProvider {
        client,
        runs,
        started,
        ended,
    }
}

async fn wait_provided(client: &Client, node: &str) {
    let mut provided = client.provided();
    within(&format!("{node} to be provided"), async {
        provided
            .wait_for(|p| *p == Provided::Node(node.to_owned()))
            .await
            .map(|_| ())
    })
    .await
    .expect("provided");
}

async fn a_relay_killed_mid_call_fails_the_call_and_everyone_comes_back(codec: Codec) {
    let (relay, url) = Proc::relay("127.0.0.1:0").await;
    let listen = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let mut provider = in_process_provider(&url, "p1", other(codec)).await;
    let client = caller(&url, codec).await;

    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u64>("Greeting.sleep", &30_000).await })
    };
    within("the provider to start the call", provider.started.recv()).await;
    let mut ticks = client
        .stream::<u64>("Greeting.ticks", &())
        .await
        .expect("stream opened");
    let first = within("a tick", ticks.next()).await;
    assert_eq!(first.expect("open").expect("tick"), 0);
    relay.kill().await;
    let killed = Instant::now();
    let error = within("the call to fail", call)
        .await
        .expect("task")
        .expect_err("the relay died");
    assert!(
        killed.elapsed() < FAILOVER,
        "failed after {:?}",
        killed.elapsed()
    );
    assert!(error.is_unavailable(), "{error:?}");
    let error = within("the stream to fail", async {
        loop {
            match ticks.next().await.expect("an end") {
                Ok(_) => continue,
                Err(error) => break error,
            }
        }
    })
    .await;
    assert!(
        killed.elapsed() < FAILOVER,
        "failed after {:?}",
        killed.elapsed()
    );
    assert!(error.is_unavailable(), "{error:?}");
    // The provider lost its connection too: its handler was dropped.
    within("the handler to stop", provider.ended.recv()).await;

    // The relay comes back on the same address: the provider provides again by itself,
    // the caller reconnects, and calls work; the failed call was never sent again.
    let (_relay, _) = Proc::relay(&listen).await;
    wait_provided(&provider.client, "p1").await;
    let mut status = client.status();
    within(
        "the caller to reconnect",
        status.wait_for(|s| *s == Status::Connected),
    )
    .await
    .expect("status");
    let node: String = client
        .request("Greeting.node", &())
        .offline_retries(20)
        .await
        .expect("answered after the relay came back");
    assert_eq!(node, "p1");
    assert_eq!(provider.runs.load(Ordering::SeqCst), 1, "never resent");
}

async fn a_caller_killed_without_a_close_cancels_its_calls(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let mut provider = in_process_provider(&url, "p1", other(codec)).await;
    let mut args = vec!["call", url.as_str(), "Greeting.sleep", "60000"];
    args.extend(codec_flag(codec));
    let mut call = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("plexus call");
    within("the provider to start the call", provider.started.recv()).await;
    call.kill().await.expect("kill -9 the caller");
    let killed = Instant::now();
    within("the cancel to reach the provider", provider.ended.recv()).await;
    assert!(
        killed.elapsed() < FAILOVER,
        "cancelled after {:?}",
        killed.elapsed()
    );
    assert_eq!(provider.runs.load(Ordering::SeqCst), 1);
}

async fn a_mesh_of_two_relays_survives_losing_one(codec: Codec) {
    let (relay_one, one) = Proc::relay("127.0.0.1:0").await;
    let (_relay_two, two) = Proc::relay("127.0.0.1:0").await;
    let urls = [one.clone(), two.clone()];
    // The provider provides through both relays.
    let router = Router::new().request(
        "Greeting.echo",
        |v: Value| async move { Ok::<_, RpcError>(v) },
    );
    let provider = Mesh::connect(
        urls.clone(),
        ClientOptions::default()
            .codec(other(codec))
            .router(router)
            .provide("p1", ["Greeting"]),
    )
    .await
    .expect("provider mesh");
    let callers = Mesh::connect(urls.clone(), ClientOptions::default().codec(codec))
        .await
        .expect("caller mesh");
    for url in &urls {
        let client = caller(url, codec).await;
        client
            .wait_for_service("Greeting", Duration::from_secs(5))
            .await
            .expect("provided through each relay");
    }
    for url in &urls {
        let mut status = callers.relay_status(url).expect("a relay of the mesh");
        within(
            "both relays connected",
            status.wait_for(|s| *s == Status::Connected),
        )
        .await
        .expect("status");
    }
    let echoed: u64 = callers
        .request("Greeting.echo", &1, CallOptions::default())
        .await
        .expect("through a relay");
    assert_eq!(echoed, 1);

    relay_one.kill().await;
    let mut status = callers.relay_status(&one).expect("relay one");
    within(
        "the mesh to see relay one go",
        status.wait_for(|s| *s != Status::Connected),
    )
    .await
    .expect("status");
    for i in 0..20u64 {
        let echoed: u64 = callers
            .request("Greeting.echo", &i, CallOptions::default())
            .await
            .expect("relay two answers");
        assert_eq!(echoed, i);
    }
    assert_eq!(callers.status()[1], (two, Status::Connected));
    drop(provider);
}

async fn a_pinned_notification_reaches_its_node_only(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let router = Router::new().notify("Greeting.note", move |v: Value| {
        let notes = notes_tx.clone();
        async move {
            let _ = notes.send(v);
        }
    });
    let provider = connect(
        &url,
        ClientOptions::default()
            .codec(other(codec))
            .router(router)
            .provide("p1", ["Greeting"]),
    )
    .await
    .expect("provider");
    wait_provided(&provider, "p1").await;
    let client = caller(&url, codec).await;
    let mut errors = client.errors();
    client
        .notify_node("Greeting.note", &json!({"n": 1}), "p1")
        .await
        .expect("sent");
    assert_eq!(
        within("the note", notes.recv()).await,
        Some(json!({"n": 1}))
    );
    // A node that is not there: the relay reports SERVICE_OFFLINE (an `err` without id).
    client
        .notify_node("Greeting.note", &json!({"n": 2}), "nobody")
        .await
        .expect("sent");
    let error = within("the error", errors.recv()).await.expect("an error");
    assert_eq!(error.code, ErrorCode::SERVICE_OFFLINE, "{error:?}");
    assert!(notes.try_recv().is_err());
}

async fn a_mesh_routes_through_the_relay_that_knows_the_service(codec: Codec) {
    let (_relay_one, one) = Proc::relay("127.0.0.1:0").await;
    let (_relay_two, two) = Proc::relay("127.0.0.1:0").await;
    // The provider is on relay two only.
    let _provider = Proc::provider(&two, "p2", other(codec)).await;
    let callers = Mesh::connect(
        [one.clone(), two.clone()],
        ClientOptions::default().codec(codec),
    )
    .await
    .expect("caller mesh");
    callers
        .wait_for_service("Greeting", Duration::from_secs(5))
        .await
        .expect("relay two knows Greeting");
    // Every call goes through relay two; through relay one it would be SERVICE_OFFLINE.
    for i in 0..10u64 {
        let echoed: u64 = callers
            .request("Greeting.echo", &i, CallOptions::default())
            .await
            .expect("through relay two");
        assert_eq!(echoed, i);
    }
    let error = callers
        .wait_for_service("Billing", Duration::from_millis(100))
        .await
        .expect_err("nobody provides Billing");
    assert!(error.is_timeout(), "{error:?}");
}

async fn services_are_listed_and_watched_from_the_command_line(codec: Codec) {
    let (_relay, url) = Proc::relay("127.0.0.1:0").await;
    let _a = Proc::provider(&url, "a", other(codec)).await;
    let mut args = vec!["services", url.as_str()];
    args.extend(codec_flag(codec));
    let out = Command::new(BIN)
        .args(&args)
        .output()
        .await
        .expect("services");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[{\"node\":\"a\",\"services\":[\"Greeting\"]}]\n"
    );

    args.extend(["--watch", "--timeout", "20s"]);
    let mut watch = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("services --watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        within("a line of services --watch", lines.next_line())
            .await
            .expect("read")
            .expect("a line")
    };
    assert_eq!(
        next_line().await,
        r#"[{"node":"a","services":["Greeting"]}]"#
    );
    let b = Proc::provider(&url, "b", codec).await;
    assert_eq!(
        next_line().await,
        r#"{"online":{"node":"b","services":["Greeting"]}}"#
    );
    // `call --node` pins the call from the command line.
    let mut call = vec!["call", url.as_str(), "Greeting.node", "--node", "b"];
    call.extend(codec_flag(codec));
    for _ in 0..3 {
        let out = Command::new(BIN).args(&call).output().await.expect("call");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "\"b\"\n");
    }
    b.kill().await;
    assert_eq!(next_line().await, r#"{"offline":{"node":"b"}}"#);
    let out = Command::new(BIN).args(&call).output().await.expect("call");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("SERVICE_OFFLINE: "), "{stderr}");
}

codec_tests!(
    services_are_listed_and_watched_from_the_command_line,
    a_mesh_routes_through_the_relay_that_knows_the_service,
    a_mesh_of_two_relays_survives_losing_one,
    a_pinned_notification_reaches_its_node_only,
    a_provider_killed_mid_stream_fails_the_stream_and_goes_offline,
    three_providers_kill_one_and_the_others_answer_every_call,
    a_provider_back_with_a_new_node_id_is_used_again,
    a_relay_killed_mid_call_fails_the_call_and_everyone_comes_back,
    a_caller_killed_without_a_close_cancels_its_calls,
);
