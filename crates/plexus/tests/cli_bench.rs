//! `plexus bench` against a real `plexus serve`: the calls and publications it made are the
//! ones the server itself counted, the report shows percentiles and a histogram, a credential reaches
//! every connection, and what the server would refuse (or a target off this machine) stops
//! the run before any load; a reconnect storm across a server restart loses nothing.

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

/// The storm over real processes: a `plexus serve` on a redis-server of the test's own,
/// killed (`kill -9`) and started again by the cut command, while the Rust clients
/// subscribed to one channel reconnect and recover. Nothing may be lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_loses_nothing_across_a_server_restart() {
    let redis = plexus_redis::testing::RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("plexus-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("plexus.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}history_size = 1000\nhistory_ttl = \"10m\"\n"),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let pid_file = dir.join("server.pid");
    // Starts the server in the background, its pid in the file; its output to a log, so
    // that nothing holds the bench's stdout open.
    let start = format!(
        "{bin} serve --listen 127.0.0.1:{port} --config {config} --engine {engine} \
         </dev/null >>{log} 2>&1 &\necho $! >{pids}\n",
        bin = support::process::BIN,
        config = config.display(),
        engine = redis.url(),
        log = dir.join("server.log").display(),
        pids = pid_file.display(),
    );
    let start_script = dir.join("start.sh");
    std::fs::write(&start_script, &start).expect("start.sh");
    let cut = dir.join("cut.sh");
    std::fs::write(
        &cut,
        format!(
            "pid=$(cat {pids})\nkill -KILL $pid\n\
             for _ in $(seq 500); do kill -0 $pid 2>/dev/null || break; sleep 0.01; done\n{start}",
            pids = pid_file.display()
        ),
    )
    .expect("cut.sh");
    // Whatever happens, the server of the moment is killed and the files go.
    struct Cleanup(std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("kill -KILL $(cat {})", self.0.display())])
                .status();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Cleanup(pid_file.clone(), dir.clone());
    let started = std::process::Command::new("sh")
        .arg(&start_script)
        .status()
        .expect("start");
    assert!(started.success());
    // The server is a process of its own: wait (boundedly) until it listens.
    within("the server to listen", async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let url = format!("ws://127.0.0.1:{port}/ws");
    let figures = {
        let args = [
            "bench",
            "storm",
            "--url",
            &url,
            "-n",
            "40",
            "--rate",
            "20",
            "--before",
            "1s",
            "--after",
            "1s",
            "--cut",
            &format!("sh {}", cut.display()),
            "--server-pid-file",
            &pid_file.display().to_string(),
            // Within the test's own bound, so that a failure shows its figures.
            "--max-runtime",
            "45s",
        ]
        .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = Proc::output(&args, BOUND).await;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON figures")
    };
    assert_eq!(figures["subscribers"], 40, "{figures}");
    assert_eq!(figures["not_back"], 0, "{figures}");
    assert_eq!(figures["resubscribed_unrecovered"], 0, "{figures}");
    assert_eq!(figures["deliveries_lost"], 0, "{figures}");
    assert_eq!(figures["duplicates_offset"], 0, "{figures}");
    assert_eq!(figures["duplicates_seq"], 0, "{figures}");
    assert!(figures["published"].as_u64() > Some(5), "{figures}");
    // Every subscriber got every publication: the expected count is theirs.
    let [first, last] = [0, 1].map(|i| figures["offsets"][i].as_u64().expect("offsets"));
    assert_eq!(
        figures["deliveries_expected"],
        40 * (last - first + 1),
        "{figures}"
    );
    assert!(figures["all_back_ms"].as_u64().is_some(), "{figures}");
    assert!(
        figures["server_peak_rss_mib"].as_f64() > Some(0.0),
        "{figures}"
    );
    // `_cleanup` kills the server and removes the files (its pid file first: removing the
    // folder here left the restarted server running).
}
