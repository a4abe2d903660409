//! `plexus bench` against a real `plexus serve`: the calls and publications it made are the
//! ones the server itself counted, the report shows percentiles and a histogram, a credential reaches
//! every connection, and what the server would refuse (or a target off this machine) stops
//! the run before any load.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::process::Proc;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[limits]
call_rate = "off"
publish_rate = "off"

[namespaces."bench:*"]
client_publish = true
"#;

/// Long enough for a debug build under a loaded CI machine; each run is 1–2 s.
const BOUND: Duration = Duration::from_secs(60);

const SECRET: &str = "a-bench-secret-of-at-least-32-bytes!";

async fn serve(extra: &[&str]) -> (Proc, String, SocketAddr, std::path::PathBuf) {
    support::process::serve_with_config(CONFIG, extra).await
}

/// `plexus bench ARGS --json`: the figures.
async fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend(args);
    all.push("--json");
    let output = Proc::output(&all, BOUND).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "plexus {all:?}: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `plexus bench ARGS`, expected to fail: its stderr.
async fn bench_refused(args: &[&str]) -> String {
    let mut all = vec!["bench"];
    all.extend(args);
    let (status, stderr) = Proc::run(&all, BOUND).await;
    assert_eq!(status.code(), Some(1), "plexus {all:?}: {stderr}");
    stderr
}

fn number(figures: &Value, key: &str) -> f64 {
    figures[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {figures}"))
}

/// One sample of the server's `/metrics`.
async fn metric(addr: SocketAddr, key: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    within("the scrape", stream.read_to_string(&mut response))
        .await
        .expect("read");
    response
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no `{key}` in {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_answers_are_the_calls_the_server_counted() {
    let (server, url, addr, config) = serve(&[]).await;
    let pid = server.child.id().expect("a pid").to_string();
    let figures = bench_json(&[
        "rpc",
        "--url",
        &url,
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--size",
        "64",
        "--server-pid",
        &pid,
    ])
    .await;
    let requests = number(&figures, "requests");
    assert!(requests > 0.0, "{figures}");
    for failed in ["refused", "timeouts", "errors"] {
        assert_eq!(number(&figures, failed), 0.0, "{failed}: {figures}");
    }
    assert!(number(&figures, "p50_us") <= number(&figures, "p99_us"));
    assert!(number(&figures, "server_cpu_us_per_op") > 0.0, "{figures}");
    // The server answered exactly the calls the load had answered, warm-up included, and
    // the preflight's.
    let answered = number(&figures, "answered_total");
    assert!(answered >= requests, "{figures}");
    let served = metric(
        addr,
        r#"plexus_calls_total{method="sys.echo",outcome="ok"}"#,
    )
    .await;
    assert_eq!(served, answered + 1.0, "{figures}");
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_publication_to_every_subscriber() {
    let (_server, url, addr, config) = serve(&[]).await;
    let figures = bench_json(&[
        "fanout", "--url", &url, "-n", "20", "--rate", "100", "-d", "1s", "--warmup", "200ms",
    ])
    .await;
    assert!(number(&figures, "published") > 0.0, "{figures}");
    assert!(number(&figures, "deliveries_per_s") > 0.0, "{figures}");
    assert_eq!(number(&figures, "lost"), 0.0, "{figures}");
    assert_eq!(number(&figures, "refused"), 0.0, "{figures}");
    // The server counted each of the run's publications, warm-up included, and the
    // preflight's; and delivered each of the run's to the 20 subscribers.
    let published = number(&figures, "published_total");
    assert!(published >= number(&figures, "published"), "{figures}");
    let counted = metric(addr, r#"plexus_publications_total{namespace="bench:*"}"#).await;
    assert_eq!(counted, published + 1.0, "{figures}");
    let delivered = metric(addr, r#"plexus_deliveries_total{namespace="bench:*"}"#).await;
    assert!(
        delivered >= published * 20.0,
        "{delivered} deliveries, {figures}"
    );
    // As fast as the subscribers keep up (a window of undelivered publications).
    let fastest = bench_json(&[
        "fanout", "--url", &url, "-n", "20", "--rate", "0", "--window", "4", "-d", "1s",
        "--warmup", "200ms",
    ])
    .await;
    assert!(number(&fastest, "published") > 0.0, "{fastest}");
    assert_eq!(number(&fastest, "lost"), 0.0, "{fastest}");
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_reports_the_set_up_and_what_each_connection_costs() {
    let (server, url, addr, config) = serve(&[]).await;
    let pid = server.child.id().expect("a pid").to_string();
    let figures = bench_json(&[
        "conns",
        "--url",
        &url,
        "-n",
        "100",
        "--hold",
        "100ms",
        "--server-pid",
        &pid,
    ])
    .await;
    assert_eq!(number(&figures, "connections"), 100.0, "{figures}");
    assert_eq!(number(&figures, "connect_failed"), 0.0, "{figures}");
    // Present with --server-pid (its size depends on the allocator's mood).
    number(&figures, "rss_kib_per_conn");
    assert!(number(&figures, "conns_per_s") > 0.0, "{figures}");
    // The preflight client and the hundred.
    let opened = metric(addr, "plexus_connections_opened_total").await;
    assert_eq!(opened, 101.0);

    // Without --json: the report people read, with the percentiles and the histogram.
    let output = Proc::output(
        &["bench", "conns", "--url", &url, "-n", "20", "--hold", "0s"],
        BOUND,
    )
    .await;
    assert!(output.status.success());
    let report = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "connections held      20 (0 failed)",
        "latency (connect to welcome)",
        "p99.9",
        "%  █",
    ] {
        assert!(report.contains(expected), "no {expected:?} in\n{report}");
    }
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reaches_every_connection() {
    let (_server, url, _, config) = serve(&["--jwt-secret", SECRET]).await;
    let refused = bench_refused(&["rpc", "--url", &url, "-d", "1s"]).await;
    assert!(refused.contains("cannot connect"), "{refused}");

    let minted = Proc::output(&["token", "--secret", SECRET, "--sub", "bencher"], BOUND).await;
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).expect("UTF-8");
    let figures = bench_json(&[
        "rpc",
        "--url",
        &url,
        "-c",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "--token",
        token.trim(),
    ])
    .await;
    assert!(number(&figures, "requests") > 0.0, "{figures}");
    assert_eq!(number(&figures, "errors"), 0.0, "{figures}");
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_would_be_refused_stops_the_run_before_any_load() {
    let (_server, url, addr, config) = serve(&[]).await;
    let unknown = bench_refused(&["rpc", "--url", &url, "--method", "no.such"]).await;
    assert!(unknown.contains("NOT_FOUND"), "{unknown}");
    let closed = bench_refused(&["fanout", "--url", &url, "--channel", "closed:1"]).await;
    assert!(closed.contains("NOT_FOUND"), "{closed}");
    // A usage error (exit 2), before anything connects.
    let (status, slow) = Proc::run(
        &["bench", "fanout", "--url", &url, "--rate", "1e-20"],
        BOUND,
    )
    .await;
    assert_eq!(status.code(), Some(2), "{slow}");
    assert!(slow.contains("from 0.01"), "{slow}");
    let bad_params = bench_refused(&["rpc", "--url", &url, "--params", "{nope"]).await;
    assert!(bad_params.contains("--params is not JSON"), "{bad_params}");
    // Only the two preflight clients connected; no load followed them.
    assert_eq!(metric(addr, "plexus_connections_opened_total").await, 2.0);

    // Off this machine: refused before connecting (TEST-NET-1 never answers).
    let remote = bench_refused(&["rpc", "--url", "ws://192.0.2.1:8787/ws"]).await;
    assert!(remote.contains("--allow-remote"), "{remote}");
    let tls = bench_refused(&["rpc", "--url", "wss://127.0.0.1:8787/ws"]).await;
    assert!(tls.contains("only ws://"), "{tls}");
    let _ = std::fs::remove_file(config);
}
