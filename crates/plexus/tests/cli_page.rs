//! The page `plexus serve` shows at `/` (its browser behaviour is tested in Chromium by
//! clients/js/test/browser.test.mjs): served with the configured WebSocket path, its script
//! beside it, nothing when turned off.

#[macro_use]
mod support;

use std::net::SocketAddr;

use support::process::{Proc, ws_addr, ws_url};
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path`: the status, the content type, the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    within("the response", stream.read_to_string(&mut response))
        .await
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_its_endpoint_and_script() {
    let (_server, line) = Proc::start(
        &["serve", "--listen", "127.0.0.1:0", "--path", "/live\"x"],
        "ws://",
    )
    .await;
    let addr = ws_addr(&ws_url(&line));
    let (status, content_type, body) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    // The configured path, escaped for the attribute it is written into.
    assert!(
        body.contains(r#"<meta name="plexus-ws" content="/live&quot;x">"#),
        "{body}"
    );
    let (status, content_type, script) = get(addr, "/plexus-page.js").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert!(script.contains("demo:chat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_be_turned_off() {
    let (_server, line) = Proc::start(
        &["serve", "--listen", "127.0.0.1:0", "--page", "off"],
        "ws://",
    )
    .await;
    let addr = ws_addr(&ws_url(&line));
    assert_eq!(get(addr, "/").await.0, 404);
    assert_eq!(get(addr, "/plexus-page.js").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_serves_the_page_too() {
    let (_relay, line) = Proc::start(&["relay", "--listen", "127.0.0.1:0"], "ws://").await;
    let addr = ws_addr(&ws_url(&line));
    let (status, _, body) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"content="/ws""#), "{body}");
}
