//! Raw sockets from the command line, on a real `plexus serve` process: `--pipe` (two
//! foreign clients and a protocol client on one channel), `[[pipe]]` tables, `--echo-path`
//! with a prefix, authentication on a raw socket, and the mistakes `serve` refuses.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_server::Codec;
use serde_json::{Value, json};
use support::process::{Proc, serve_with_config, ws_addr, ws_url};
use support::{RawClient, Ws, within};
use tokio_tungstenite::tungstenite::{self, Message};

async fn open(addr: SocketAddr, path: &str) -> Result<Ws, u16> {
    match within(
        "upgrade",
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

/// The next data message or close, pings skipped.
async fn next(ws: &mut Ws) -> Message {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return message,
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

/// Sends `text` on a piped socket and waits for it to come back: from then on the socket is
/// subscribed (its messages are read only once it is).
async fn piped_ready(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    assert_eq!(next(ws).await, Message::text(text));
}

async fn serve(args: &[&str]) -> (Proc, SocketAddr) {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend(args);
    let (proc, line) = Proc::start(&all, "ws://").await;
    (proc, ws_addr(&ws_url(&line)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_foreign_clients_and_a_protocol_client_talk_through_a_pipe() {
    let (_server, addr) = serve(&["--pipe", "/pipe/*=demo"]).await;
    let mut a = open(addr, "/pipe/room1").await.expect("pipe");
    piped_ready(&mut a, "a is here").await;
    let mut b = open(addr, "/pipe/room1").await.expect("pipe");
    piped_ready(&mut b, "b is here").await;
    assert_eq!(next(&mut a).await, Message::text("b is here"));
    let mut protocol = RawClient::connect(addr, Some(Codec::Json)).await;
    protocol
        .send_json(json!({"t": "join", "id": 1, "ch": "demo:room1"}))
        .await;
    let joined = protocol.recv_json().await;
    assert_eq!(joined["t"], "res", "{joined}");
    // A wscat line reaches the other wscat and the protocol client as a JSON string.
    a.send(Message::text("hello from a")).await.expect("send");
    assert_eq!(next(&mut b).await, Message::text("hello from a"));
    assert_eq!(next(&mut a).await, Message::text("hello from a"));
    let msg = protocol.recv_json().await;
    assert_eq!(
        (msg["t"].clone(), msg["d"].clone()),
        (json!("msg"), json!("hello from a"))
    );
    // A protocol client's publication reaches both as its JSON text.
    protocol
        .send_json(json!({"t": "pub", "id": 2, "ch": "demo:room1", "d": {"text": "hi", "n": 1}}))
        .await;
    for ws in [&mut a, &mut b] {
        let Message::Text(text) = next(ws).await else {
            panic!("text expected")
        };
        let value: Value = serde_json::from_str(text.as_str()).expect("JSON text");
        assert_eq!(value, json!({"text": "hi", "n": 1}));
    }
    // Binary keeps its bytes between foreign clients, and is base64 for a JSON subscriber.
    b.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    assert_eq!(next(&mut a).await, Message::binary(vec![0u8, 1, 2, 255]));
    loop {
        let frame = protocol.recv_json().await;
        if frame["t"] == "msg" && frame["d"] != json!({"text": "hi", "n": 1}) {
            assert_eq!(frame["d"], "AAEC/w==", "{frame}");
            break;
        }
    }
    // Another room is another channel.
    let mut other = open(addr, "/pipe/room2").await.expect("pipe");
    piped_ready(&mut other, "alone").await;
    // A path that names no channel is closed with 1008.
    let mut nameless = open(addr, "/pipe").await.expect("upgrade");
    match next(&mut nameless).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(open(addr, "/pipeX").await.err(), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_tables_in_the_file_and_an_echo_under_a_prefix() {
    let config = "[[pipe]]\npath = \"/talk/*\"\nnamespace = \"demo\"\n";
    let (_server, _url, addr, file) = serve_with_config(config, &["--echo-path", "/echo/*"]).await;
    let mut talk = open(addr, "/talk/lobby").await.expect("pipe from the file");
    piped_ready(&mut talk, "from the file").await;
    for path in ["/echo", "/echo/a/b?x=1"] {
        let mut echo = open(addr, path).await.expect("echo");
        echo.send(Message::binary(vec![9u8, 0, 9]))
            .await
            .expect("send");
        assert_eq!(next(&mut echo).await, Message::binary(vec![9u8, 0, 9]));
        echo.send(Message::text("text stays text"))
            .await
            .expect("send");
        assert_eq!(next(&mut echo).await, Message::text("text stays text"));
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_of_an_authenticating_server_needs_a_credential_in_the_upgrade() {
    let secret = "raw-cli-secret-0123456789abcdef0123";
    let (_server, addr) = serve(&["--jwt-secret", secret, "--echo-path", "/echo"]).await;
    assert_eq!(open(addr, "/echo").await.err(), Some(401));
    let output = Proc::output(
        &["token", "--secret", secret, "--sub", "ada"],
        Duration::from_secs(10),
    )
    .await;
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).expect("UTF-8");
    let mut echo = open(addr, &format!("/echo?token={}", token.trim()))
        .await
        .expect("with a token");
    echo.send(Message::text("me")).await.expect("send");
    assert_eq!(next(&mut echo).await, Message::text("me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_raw_paths_it_cannot_serve() {
    let bound = Duration::from_secs(10);
    let (status, stderr) = Proc::run(
        &["serve", "--listen", "127.0.0.1:0", "--pipe", "nonsense"],
        bound,
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("expected PATH=NAMESPACE"), "{stderr}");
    let (status, stderr) = Proc::run(
        &["serve", "--listen", "127.0.0.1:0", "--echo-path", "/ws"],
        bound,
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("is also the protocol endpoint's path"),
        "{stderr}"
    );
    // A socket at one of serve's own HTTP routes is refused, naming it (it used to panic).
    for (flag, socket, route) in [
        ("--echo-path", "/metrics", "/metrics"),
        ("--echo-path", "/metrics/*", "/metrics"),
        ("--path", "/health/live", "/health/live"),
        ("--pipe", "/plexus-page.js=demo", "/plexus-page.js"),
    ] {
        let (status, stderr) =
            Proc::run(&["serve", "--listen", "127.0.0.1:0", flag, socket], bound).await;
        assert_eq!(status.code(), Some(1), "{flag} {socket}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "would take `{route}`, one of plexus serve's HTTP routes"
            )),
            "{stderr}"
        );
    }
    let (status, stderr) = Proc::run(
        &["serve", "--listen", "127.0.0.1:0", "--path", "/ws/*"],
        bound,
    )
    .await;
    assert!(!status.success());
    assert!(
        stderr.contains("a protocol endpoint is reached at one exact path"),
        "{stderr}"
    );
    let (status, stderr) = Proc::run(
        &["serve", "--listen", "127.0.0.1:0", "--echo-path", "/e*/x"],
        bound,
    )
    .await;
    assert!(!status.success());
    assert!(stderr.contains("may only end a path"), "{stderr}");
}
