//! `/metrics` of a real `plexus serve` process after known traffic: connections opened and
//! closed by code, calls by method and outcome with their latency, publications and
//! deliveries by namespace, subscriptions, the kept history, handshake and credential refusals, messages and
//! bytes; a raw echo socket counted like any connection; and `--metrics off` serves none.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use plexus::client::ChannelEvent;
use plexus::{ClientOptions, JoinOptions, connect};
use serde_json::{Value, json};
use support::process::{Proc, ws_addr, ws_url};
use support::{raw_upgrade, within};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[namespaces."room:*"]
client_publish = true
public = true

[namespaces."log:*"]
client_publish = true
public = true
history_size = 2
"#;

async fn serve(extra: &[&str]) -> (Proc, String, SocketAddr, std::path::PathBuf) {
    support::process::serve_with_config(CONFIG, extra).await
}

/// `GET /metrics`: its status and body.
async fn scrape(addr: SocketAddr) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    within("the scrape", stream.read_to_string(&mut response))
        .await
        .expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

/// The samples of a scrape, by `name{labels}` as rendered.
async fn samples(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = scrape(addr).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample `{key}` in {samples:#?}"))
}

/// Scrapes until `key` reads `expected` (what a connection's end moves is counted by its
/// task as it finishes, with no event the test can wait on).
async fn until_value(addr: SocketAddr, key: &str, expected: f64) -> HashMap<String, f64> {
    within(&format!("{key} to read {expected}"), async {
        loop {
            let samples = samples(addr).await;
            if samples.get(key) == Some(&expected) {
                break samples;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_known_traffic() {
    let (_server, url, addr, config) = serve(&[]).await;
    let a = connect(&url, ClientOptions::default())
        .await
        .expect("a connects");
    let b = connect(&url, ClientOptions::default())
        .await
        .expect("b connects");
    let mut sub_a = a
        .join("room:1", JoinOptions::default())
        .await
        .expect("join");
    let mut sub_b = b
        .join("room:1", JoinOptions::default())
        .await
        .expect("join");
    a.publish("room:1", &json!({"text": "hi"}))
        .await
        .expect("publish");
    for sub in [&mut sub_a, &mut sub_b] {
        match within("the publication", sub.next()).await {
            Some(ChannelEvent::Publication(_)) => {}
            other => panic!("expected the publication, got {other:?}"),
        }
    }
    for _ in 0..2 {
        let echoed: Value = a.request("sys.echo", &json!([1])).await.expect("echo");
        assert_eq!(echoed, json!([1]));
    }
    a.request::<Value>("no.such", &())
        .await
        .expect_err("unknown method");
    // Three publications to a history of two: two stay, of 7 bytes each (`{"n":1}`).
    for n in 1..=3 {
        a.publish("log:1", &json!({ "n": n }))
            .await
            .expect("publish to the log");
    }
    // A page from another site is refused at the door.
    let (_, head, _) = raw_upgrade(addr, &[("Origin", "https://evil.example")]).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    let samples = samples(addr).await;
    for (key, expected) in [
        ("plexus_connections_open", 2.0),
        ("plexus_connections_opened_total", 2.0),
        ("plexus_subscriptions", 2.0),
        (r#"plexus_calls_total{method="sys.echo",outcome="ok"}"#, 2.0),
        (
            r#"plexus_call_duration_seconds_count{method="sys.echo"}"#,
            2.0,
        ),
        (
            r#"plexus_calls_total{method="(other)",outcome="NOT_FOUND"}"#,
            1.0,
        ),
        (r#"plexus_publications_total{namespace="room:*"}"#, 1.0),
        (r#"plexus_deliveries_total{namespace="room:*"}"#, 2.0),
        (r#"plexus_handshake_failures_total{reason="origin"}"#, 1.0),
        (r#"plexus_engine_operations_total{op="publish"}"#, 4.0),
        ("plexus_history_publications", 2.0),
        ("plexus_history_bytes", 14.0),
        (r#"plexus_engine_errors_total{op="publish"}"#, 0.0),
    ] {
        assert_eq!(value(&samples, key), expected, "{key}");
    }
    // Two joins, four publications, three calls (and nothing else from these clients).
    assert!(value(&samples, "plexus_messages_received_total") >= 9.0);
    assert!(value(&samples, "plexus_messages_sent_total") >= 8.0);
    assert!(value(&samples, "plexus_bytes_received_total") > 0.0);
    assert!(value(&samples, "plexus_bytes_sent_total") > 0.0);

    b.close().await;
    let samples = until_value(addr, "plexus_connections_open", 1.0).await;
    assert_eq!(
        value(&samples, r#"plexus_connections_closed_total{code="1000"}"#),
        1.0
    );
    assert_eq!(value(&samples, "plexus_subscriptions"), 1.0);
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_echo_socket_is_counted_like_any_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let (_server, _, addr, config) = serve(&["--echo-path", "/echo/*"]).await;
    let (mut ws, _) = support::connect_ws_to(addr, "/echo/a", None)
        .await
        .expect("upgrade");
    ws.send(Message::text("hello")).await.expect("send");
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    for _ in 0..2 {
        match within("the echo", ws.next()).await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {}
            other => panic!("expected an echo, got {other:?}"),
        }
    }
    let samples = samples(addr).await;
    for (key, expected) in [
        ("plexus_connections_open", 1.0),
        ("plexus_connections_opened_total", 1.0),
        ("plexus_messages_received_total", 2.0),
        ("plexus_bytes_received_total", 8.0),
    ] {
        assert_eq!(value(&samples, key), expected, "{key}");
    }
    assert!(value(&samples, "plexus_messages_sent_total") >= 2.0);
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    };
    ws.close(Some(normal)).await.expect("close");
    let samples = until_value(addr, "plexus_connections_open", 0.0).await;
    assert_eq!(
        value(&samples, r#"plexus_connections_closed_total{code="1000"}"#),
        1.0
    );
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let (_server, _, addr, config) = serve(&["--metrics", "off"]).await;
    let (status, _) = scrape(addr).await;
    assert_eq!(status, 404);
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_counted_by_kind() {
    let (_server, _, addr, config) = serve(&["--jwt-secret", support::JWT_SECRET]).await;
    let (_, head, _) = raw_upgrade(addr, &[("Authorization", "Bearer not-a-token")]).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let samples = samples(addr).await;
    assert_eq!(
        value(
            &samples,
            r#"plexus_auth_failures_total{kind="not_authorized"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            r#"plexus_handshake_failures_total{reason="auth"}"#
        ),
        1.0
    );
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_routes_and_providers_are_counted_by_service() {
    let (_relay, line) = Proc::start(&["relay", "--listen", "127.0.0.1:0"], "ws://").await;
    let url = ws_url(&line);
    let addr = ws_addr(&url);
    let _provider = Proc::start(
        &["provide", &url, "--node", "n1", "--service", "Greeting"],
        "as node n1",
    )
    .await;
    let caller = connect(&url, ClientOptions::default())
        .await
        .expect("the caller connects");
    for _ in 0..2 {
        let _: Value = caller
            .request("Greeting.echo", &json!("hi"))
            .await
            .expect("routed to n1 in turn");
    }
    let _: Value = caller
        .request("Greeting.echo", &json!("hi"))
        .node("n1")
        .await
        .expect("pinned to n1");
    let offline = caller
        .request::<Value>("Missing.echo", &json!("hi"))
        .await
        .expect_err("nobody provides Missing");
    assert_eq!(offline.code().as_str(), "SERVICE_OFFLINE");

    let samples = samples(addr).await;
    for (key, expected) in [
        (
            r#"plexus_relay_service_providers{service="Greeting",connected="here"}"#,
            1.0,
        ),
        (
            r#"plexus_relay_service_providers{service="Greeting",connected="elsewhere"}"#,
            0.0,
        ),
        (
            r#"plexus_relay_routes_total{service="Greeting",route="service"}"#,
            2.0,
        ),
        (
            r#"plexus_relay_routes_total{service="Greeting",route="node"}"#,
            1.0,
        ),
        (
            // A service nobody provides claims no label of its own.
            r#"plexus_relay_routes_total{service="(other)",route="offline"}"#,
            1.0,
        ),
        (r#"plexus_relay_providers{connected="here"}"#, 1.0),
    ] {
        assert_eq!(value(&samples, key), expected, "{key}");
    }
    drop(_provider);
    let samples = until_value(
        addr,
        r#"plexus_relay_service_providers{service="Greeting",connected="here"}"#,
        0.0,
    )
    .await;
    assert_eq!(
        value(&samples, r#"plexus_relay_providers{connected="here"}"#),
        0.0
    );
    assert!(
        !samples
            .keys()
            .any(|key| key.contains(r#"service="Missing""#)),
        "{samples:#?}"
    );
}
