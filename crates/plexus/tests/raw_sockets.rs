//! Raw sockets over real sockets: bytes and types kept, the connect and disconnect events,
//! both kinds (handshaked and foreign-client), authentication and permissions at the
//! upgrade, exact and prefix paths, handler pools, the hub and the HTTP API reaching a raw
//! socket from another node, the slow-consumer cut, heartbeats, the idle timeout, an
//! expiring credential, and an upgrade that completes while a handler decides.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use plexus_server::{
    CloseCode, CredentialSource, DisconnectReason, EndpointConfig, EndpointError, RawConnection,
    RawEndpoint, RawHandler, RawMessage, Server,
};
use serde_json::{Value, json};
use support::broker::{Backend, engines};
use support::{TIMEOUT, TestServer, Ws, jwt_authenticator, start_with, token, within};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

/// What a [`Recorder`] saw, with the name of the handler that saw it.
#[derive(Debug)]
enum Seen {
    Connected {
        handler: &'static str,
        conn: Info,
    },
    Message {
        handler: &'static str,
        conn: String,
        message: RawMessage,
    },
    Disconnected {
        handler: &'static str,
        conn: String,
        reason: DisconnectReason,
    },
}

/// A connection as its `connected` event described it.
#[derive(Debug, Clone)]
struct Info {
    id: String,
    path: String,
    query: Option<String>,
    url: String,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
    user: Option<String>,
    header: Option<String>,
    subprotocol: Option<String>,
}

/// A handler that reports every event, greets each connection with its name, and echoes
/// what it receives (`flood N` sends N messages at once instead).
struct Recorder {
    name: &'static str,
    seen: mpsc::UnboundedSender<Seen>,
    refuse: bool,
}

impl RawHandler for Recorder {
    async fn connected(&self, conn: &RawConnection) -> Result<(), String> {
        let info = Info {
            id: conn.id().to_owned(),
            path: conn.path().to_owned(),
            query: conn.query().map(str::to_owned),
            url: conn.url(),
            remote: conn.remote_addr(),
            local: conn.local_addr(),
            user: conn.principal().user.clone(),
            header: conn
                .headers()
                .get("x-app")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            subprotocol: conn.subprotocol().map(str::to_owned),
        };
        let _ = self.seen.send(Seen::Connected {
            handler: self.name,
            conn: info,
        });
        if self.refuse {
            return Err(format!("{} is busy", self.name));
        }
        conn.send_text(format!("hello from {}", self.name))
            .map_err(|e| e.to_string())
    }

    async fn message(&self, conn: &RawConnection, message: RawMessage) {
        if let Some(n) = message.as_text().and_then(|t| t.strip_prefix("flood ")) {
            let n: usize = n.parse().unwrap_or(0);
            for i in 0..n {
                if conn.send_text(format!("flood {i}")).is_err() {
                    break;
                }
            }
        } else {
            let _ = conn.send(message.clone());
        }
        let _ = self.seen.send(Seen::Message {
            handler: self.name,
            conn: conn.id().to_owned(),
            message,
        });
    }

    async fn disconnected(&self, conn: &RawConnection, reason: &DisconnectReason) {
        let _ = self.seen.send(Seen::Disconnected {
            handler: self.name,
            conn: conn.id().to_owned(),
            reason: reason.clone(),
        });
    }
}

fn recorder(name: &'static str, seen: &mpsc::UnboundedSender<Seen>) -> Recorder {
    Recorder {
        name,
        seen: seen.clone(),
        refuse: false,
    }
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within("a raw socket event", seen.recv())
        .await
        .expect("the handlers are alive")
}

/// The upgrade request for `path` with `headers`.
fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("valid request");
    for (name, value) in headers {
        request.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    request
}

/// Opens a WebSocket to `path`: the socket and the agreed subprotocol, or the HTTP status
/// that refused it.
async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), u16> {
    match within(
        "upgrade",
        tokio_tungstenite::connect_async(request(addr, path, headers)),
    )
    .await
    {
        Ok((ws, response)) => {
            let agreed = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((ws, agreed))
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

async fn open_ok(addr: SocketAddr, path: &str) -> Ws {
    open(addr, path, &[]).await.expect("upgrade accepted").0
}

/// The next data message or close; pings and pongs are skipped.
async fn next_message(ws: &mut Ws) -> Message {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return message,
            Some(Err(e)) => panic!("read failed: {e}"),
            None => panic!("the socket ended"),
        }
    }
}

async fn next_text(ws: &mut Ws) -> String {
    match next_message(ws).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads until the close frame; its code.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match within("the close frame", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("read failed before the close frame: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    }
}

async fn server_with(endpoints: Vec<RawEndpoint>, config: EndpointConfig) -> TestServer {
    let mut builder = Server::builder().config(config);
    for endpoint in endpoints {
        builder = builder.raw(endpoint);
    }
    start_with(builder).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_their_bytes_and_type() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        EndpointConfig::default(),
    )
    .await;
    let mut ws = open_ok(server.addr, "/raw").await;
    assert_eq!(next_text(&mut ws).await, "hello from h");
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    ws.send(Message::Binary(bytes.clone().into()))
        .await
        .expect("send");
    match next_message(&mut ws).await {
        Message::Binary(back) => assert_eq!(back.as_ref(), bytes.as_slice()),
        other => panic!("expected the binary message back, got {other:?}"),
    }
    // Text that looks like a protocol frame is the application's too.
    let text = r#"{"t":"req","id":1,"m":"sys.echo"} ünïcödé"#;
    ws.send(Message::text(text)).await.expect("send");
    assert_eq!(next_text(&mut ws).await, text);
    let Seen::Connected { .. } = next_seen(&mut seen).await else {
        panic!("connected comes first")
    };
    for expected in [RawMessage::binary(bytes), RawMessage::text(text)] {
        match next_seen(&mut seen).await {
            Seen::Message { message, .. } => assert_eq!(message, expected),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_event_describes_the_connection_and_the_hub_reaches_it() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        EndpointConfig::default(),
    )
    .await;
    let (mut ws, _) = open(server.addr, "/raw?room=7&x=y", &[("x-app", "demo")])
        .await
        .expect("upgrade");
    next_text(&mut ws).await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!("connected comes first")
    };
    assert_eq!(conn.path, "/raw");
    assert_eq!(conn.query.as_deref(), Some("room=7&x=y"));
    assert_eq!(conn.url, format!("ws://{}/raw?room=7&x=y", server.addr));
    assert_eq!(conn.local, Some(server.addr));
    assert!(conn.remote.is_some_and(|r| r.ip().is_loopback()));
    assert_eq!(conn.header.as_deref(), Some("demo"));
    assert_eq!(conn.user, None, "anonymous without authentication");
    // From anywhere, by id: text and binary, in order.
    let hub = server.server.hub();
    hub.send(&conn.id, RawMessage::text("from the hub"))
        .await
        .expect("send");
    hub.send(&conn.id, RawMessage::binary(vec![1, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next_text(&mut ws).await, "from the hub");
    assert_eq!(
        next_message(&mut ws).await,
        Message::Binary(vec![1, 2, 3].into())
    );
    // Raw sockets take no calls, and protocol connections no raw messages.
    let handle = hub.connection(&conn.id).expect("registered with the hub");
    let refused = handle
        .notify("x.y", &json!({}))
        .expect_err("a raw socket takes no calls");
    assert_eq!(refused.code().as_str(), "NOT_FOUND");
    let protocol = server.client(plexus_server::Codec::Json).await;
    let protocol_id = protocol.welcome["conn"]
        .as_str()
        .expect("conn id")
        .to_owned();
    let refused = hub
        .send(&protocol_id, RawMessage::text("no"))
        .await
        .expect_err("a protocol connection takes no raw message");
    assert_eq!(refused.code().as_str(), "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_event_comes_once_whatever_ends_the_connection() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.max_message_size = 1024;
    let mut server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        config,
    )
    .await;
    let mut ids = Vec::new();
    // Events of earlier connections seen while waiting for a new one's `connected`.
    let mut earlier = Vec::new();
    let mut connect = async |server: &TestServer| {
        let mut ws = open_ok(server.addr, "/raw").await;
        next_text(&mut ws).await;
        loop {
            match next_seen(&mut seen).await {
                Seen::Connected { conn, .. } => {
                    ids.push(conn.id.clone());
                    return (ws, conn.id);
                }
                other => earlier.push(other),
            }
        }
    };
    // The peer closes.
    let (mut peer_closes, _) = connect(&server).await;
    peer_closes.close(None).await.expect("close");
    // The server kills it.
    let (mut killed, killed_id) = connect(&server).await;
    server
        .server
        .hub()
        .disconnect(&killed_id, CloseCode(4100), "kicked")
        .await
        .expect("disconnect");
    assert_eq!(close_code(&mut killed).await, 4100);
    // A message over the limit (1009).
    let (mut too_big, _) = connect(&server).await;
    too_big
        .send(Message::binary(vec![0u8; 4096]))
        .await
        .expect("send");
    assert_eq!(close_code(&mut too_big).await, 1009);
    // The server shuts down.
    let (mut at_shutdown, _) = connect(&server).await;
    server.trigger_shutdown();
    assert_eq!(close_code(&mut at_shutdown).await, 1001);
    server.served(TIMEOUT).await.expect("served");
    // Every handler call has returned (a shutdown waits for them): count what was seen.
    drop(tx);
    let mut disconnects = std::collections::HashMap::<String, Vec<DisconnectReason>>::new();
    let mut later = Vec::new();
    while let Ok(event) = seen.try_recv() {
        later.push(event);
    }
    for event in earlier.into_iter().chain(later) {
        if let Seen::Disconnected { conn, reason, .. } = event {
            disconnects.entry(conn).or_default().push(reason);
        }
    }
    for id in &ids {
        let reasons = disconnects.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(reasons.len(), 1, "{id}: {reasons:?}");
    }
    assert!(matches!(
        disconnects[&ids[0]][0],
        DisconnectReason::ClientClosed(_)
    ));
    assert!(matches!(
        disconnects[&ids[1]][0],
        DisconnectReason::ServerClosed(CloseCode(4100), _)
    ));
    assert!(matches!(
        disconnects[&ids[2]][0],
        DisconnectReason::ServerClosed(CloseCode(1009), _)
    ));
    assert!(matches!(
        disconnects[&ids[3]][0],
        DisconnectReason::ServerClosed(CloseCode(1001), _)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshaked_socket_greets_first_and_drops_what_came_before_the_hello() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![RawEndpoint::handshaked("/term").handler(recorder("h", &tx))],
        EndpointConfig::default(),
    )
    .await;
    let (mut ws, agreed) = open(
        server.addr,
        "/term",
        &[("Sec-WebSocket-Protocol", "plexus.v1.json")],
    )
    .await
    .expect("upgrade");
    assert_eq!(agreed.as_deref(), Some("plexus.v1.json"));
    ws.send(Message::text("too early")).await.expect("send");
    ws.send(Message::binary(vec![9, 9])).await.expect("send");
    ws.send(Message::text(r#"{"t":"hello"}"#))
        .await
        .expect("send");
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(welcome["t"], "welcome", "{welcome}");
    assert_eq!(next_text(&mut ws).await, "hello from h");
    ws.send(Message::text("after")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "after");
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!("connected comes first")
    };
    assert_eq!(welcome["conn"], conn.id.as_str());
    match next_seen(&mut seen).await {
        Seen::Message { message, .. } => assert_eq!(message, RawMessage::text("after")),
        other => panic!("the first message delivered is the one after the hello: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshaked_socket_authenticates_in_the_hello() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let builder = Server::builder().authenticator(jwt_authenticator()).raw(
        RawEndpoint::handshaked("/term")
            .require("tty")
            .handler(recorder("h", &tx)),
    );
    let server = start_with(builder).await;
    let hello = |token: &str| Message::text(json!({"t": "hello", "token": token}).to_string());
    // A bad credential: reject, then 4001.
    let (mut ws, _) = open(server.addr, "/term", &[]).await.expect("upgrade");
    ws.send(hello("not-a-token")).await.expect("send");
    let reject: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(reject["t"], "reject");
    assert_eq!(close_code(&mut ws).await, 4001);
    // A valid one without the endpoint's permission: reject, then 4003.
    let (mut ws, _) = open(server.addr, "/term", &[]).await.expect("upgrade");
    ws.send(hello(&token("bob", "chat", 600)))
        .await
        .expect("send");
    let reject: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(reject["e"]["code"], "FORBIDDEN", "{reject}");
    assert_eq!(close_code(&mut ws).await, 4003);
    // With it: welcome, and the handler knows who it is.
    let (mut ws, _) = open(server.addr, "/term", &[]).await.expect("upgrade");
    ws.send(hello(&token("alice", "tty", 600)))
        .await
        .expect("send");
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(welcome["user"], "alice");
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!("only the accepted connection reaches the handler")
    };
    assert_eq!(conn.user.as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_client_is_authenticated_by_its_cookie_and_the_endpoints_permission() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let builder = Server::builder().authenticator(jwt_authenticator()).raw(
        RawEndpoint::foreign("/admin")
            .credentials([CredentialSource::Cookie])
            .require("admin")
            .handler(recorder("h", &tx)),
    );
    let server = start_with(builder).await;
    let cookie = |token: String| format!("theme=dark; plexus_token={token}");
    let admin = cookie(token("root", "admin", 600));
    let (mut ws, _) = open(server.addr, "/admin", &[("Cookie", &admin)])
        .await
        .expect("admin allowed");
    assert_eq!(next_text(&mut ws).await, "hello from h");
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    assert_eq!(conn.user.as_deref(), Some("root"));
    let user = cookie(token("bob", "chat", 600));
    assert_eq!(
        open(server.addr, "/admin", &[("Cookie", &user)])
            .await
            .err(),
        Some(403),
        "FORBIDDEN"
    );
    assert_eq!(
        open(server.addr, "/admin", &[]).await.err(),
        Some(401),
        "NOT_AUTHORIZED"
    );
    // The endpoint reads the cookie only: a bearer header is not looked at.
    let bearer = format!("Bearer {}", token("root", "admin", 600));
    assert_eq!(
        open(server.addr, "/admin", &[("Authorization", &bearer)])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        open(server.addr, "/admin", &[("Cookie", "plexus_token=forged")])
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_paths_match_as_documented() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![
            RawEndpoint::foreign("/code-server/*").handler(recorder("prefix", &tx)),
            RawEndpoint::foreign("/code-server/deep/*").handler(recorder("longer", &tx)),
            RawEndpoint::foreign("/code-server/exact").handler(recorder("exact", &tx)),
        ],
        EndpointConfig::default(),
    )
    .await;
    for (path, handler) in [
        ("/code-server", "prefix"),
        ("/code-server/", "prefix"),
        ("/code-server/a/b", "prefix"),
        ("/code-server/exact", "exact"),
        ("/code-server/exact/more", "prefix"),
        ("/code-server/deep", "longer"),
        ("/code-server/deep/x/y", "longer"),
    ] {
        let mut ws = open_ok(server.addr, path).await;
        assert_eq!(
            next_text(&mut ws).await,
            format!("hello from {handler}"),
            "{path}"
        );
        // The handler sees the concrete path.
        ws.send(Message::text("x")).await.expect("send");
        assert_eq!(next_text(&mut ws).await, "x");
    }
    for path in ["/code-serverX", "/code-server-x/a", "/nothing", "/"] {
        assert_eq!(
            open(server.addr, path, &[]).await.err(),
            Some(404),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_concrete_path_under_a_prefix() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![RawEndpoint::foreign("/app/*").handler(recorder("h", &tx))],
        EndpointConfig::default(),
    )
    .await;
    let _ws = open_ok(server.addr, "/app/rooms/7?x=1").await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    assert_eq!(conn.path, "/app/rooms/7");
    assert_eq!(conn.query.as_deref(), Some("x=1"));
}

#[test]
fn endpoints_that_cannot_be_served_are_refused_at_build_time() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let build = |endpoint: RawEndpoint| match Server::builder().raw(endpoint).try_build() {
        Ok(_) => panic!("built"),
        Err(e) => e,
    };
    let error = build(RawEndpoint::handshaked("/term/*").handler(recorder("h", &tx)));
    assert!(matches!(
        error,
        plexus_server::BuildError::Endpoint(EndpointError::PrefixNotAllowed { .. })
    ));
    assert!(
        error
            .to_string()
            .contains("only for foreign-client raw sockets"),
        "{error}"
    );
    let error = build(
        RawEndpoint::foreign("/x")
            .credentials([CredentialSource::Hello])
            .handler(recorder("h", &tx)),
    );
    assert!(
        error
            .to_string()
            .contains("cannot read a credential from a `hello`"),
        "{error}"
    );
    let error = build(RawEndpoint::foreign("/x"));
    assert!(
        error.to_string().contains("needs at least one handler"),
        "{error}"
    );
    let error = build(RawEndpoint::foreign("/a*/b").handler(recorder("h", &tx)));
    assert!(error.to_string().contains("may only end a path"), "{error}");
    let twice = Server::builder()
        .raw(RawEndpoint::foreign("/x/*").handler(recorder("h", &tx)))
        .raw(RawEndpoint::foreign("/x").handler(recorder("h", &tx)))
        .try_build();
    assert!(matches!(
        twice,
        Err(plexus_server::BuildError::Endpoint(
            EndpointError::Duplicate(_)
        ))
    ));
    let server = Server::builder().build();
    let error = server
        .try_route("/ws/*")
        .expect_err("a protocol endpoint has an exact path");
    assert!(
        error
            .to_string()
            .contains("a protocol endpoint is reached at one exact path"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_takes_connections_in_turn_and_keeps_each_with_its_handler() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let pool = vec![recorder("h1", &tx), recorder("h2", &tx)];
    let server = server_with(
        vec![RawEndpoint::foreign("/pool").pool(pool)],
        EndpointConfig::default(),
    )
    .await;
    let mut sockets = Vec::new();
    for expected in ["h1", "h2", "h1"] {
        let mut ws = open_ok(server.addr, "/pool").await;
        assert_eq!(next_text(&mut ws).await, format!("hello from {expected}"));
        sockets.push(ws);
    }
    let mut handler_of = std::collections::HashMap::new();
    for _ in 0..3 {
        let Seen::Connected { handler, conn } = next_seen(&mut seen).await else {
            panic!()
        };
        handler_of.insert(conn.id, handler);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        for n in 0..3 {
            ws.send(Message::text(format!("{i}.{n}")))
                .await
                .expect("send");
            next_text(ws).await;
        }
        ws.close(None).await.expect("close");
    }
    // Messages and disconnects go to the handler that took the connection.
    for _ in 0..12 {
        match next_seen(&mut seen).await {
            Seen::Message { handler, conn, .. } | Seen::Disconnected { handler, conn, .. } => {
                assert_eq!(handler_of[&conn], handler);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_member_that_refuses_closes_the_connection_at_once() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let busy = Recorder {
        name: "busy",
        seen: tx.clone(),
        refuse: true,
    };
    let server = server_with(
        vec![RawEndpoint::foreign("/pool").pool([recorder("h1", &tx), busy])],
        EndpointConfig::default(),
    )
    .await;
    let mut first = open_ok(server.addr, "/pool").await;
    assert_eq!(next_text(&mut first).await, "hello from h1");
    let mut refused = open_ok(server.addr, "/pool").await;
    match next_message(&mut refused).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1013);
            assert_eq!(frame.reason.as_str(), "busy is busy");
        }
        other => panic!("expected the close at once, got {other:?}"),
    }
    // The refused connection gets no other event; the first one still works.
    first.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_text(&mut first).await, "still here");
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next_seen(&mut seen).await);
    }
    assert!(
        matches!(events[2], Seen::Message { handler: "h1", .. }),
        "{events:?}"
    );
    // Never half-open: once the close handshake is done, only the first one is counted.
    assert!(matches!(
        within("the end", refused.next()).await,
        None | Some(Err(_))
    ));
    support::wait_until("the refused connection is gone", || {
        server.server.connection_count() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_subprotocol_offered_that_the_endpoint_speaks_is_agreed() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = server_with(
        vec![
            RawEndpoint::foreign("/tty")
                .subprotocols(["tty", "binary"])
                .handler(recorder("h", &tx)),
        ],
        EndpointConfig::default(),
    )
    .await;
    let (_ws, agreed) = open(
        server.addr,
        "/tty",
        &[("Sec-WebSocket-Protocol", "x, binary, tty")],
    )
    .await
    .expect("upgrade");
    assert_eq!(agreed.as_deref(), Some("binary"));
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    assert_eq!(conn.subprotocol.as_deref(), Some("binary"));
    let (_ws, agreed) = open(server.addr, "/tty", &[]).await.expect("upgrade");
    assert_eq!(agreed, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_that_does_not_read_is_cut_as_a_slow_consumer() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.outbound_queue = 16;
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        config,
    )
    .await;
    let mut ws = open_ok(server.addr, "/raw").await;
    next_text(&mut ws).await;
    // Far more than the queue holds, queued at once.
    ws.send(Message::text("flood 5000")).await.expect("send");
    assert_eq!(close_code(&mut ws).await, 4008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_peer_that_never_answers_pings_is_closed() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.heartbeat_interval = Duration::from_millis(200);
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        config,
    )
    .await;
    // A client that reads nothing never answers the pings.
    let mut ws = open_ok(server.addr, "/raw").await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    match next_seen(&mut seen).await {
        Seen::Disconnected {
            conn: gone, reason, ..
        } => {
            assert_eq!(gone, conn.id);
            assert!(
                matches!(reason, DisconnectReason::ServerClosed(CloseCode(4002), _)),
                "{reason:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Reading now: the greeting, the pings (skipped), then the close.
    assert_eq!(next_text(&mut ws).await, "hello from h");
    assert_eq!(close_code(&mut ws).await, 4002);
}

async fn reached_from_another_node(backend: Backend) {
    let (engine_a, engine_b, _broker) = engines(backend).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let node = |engine, name: &str| {
        Server::builder()
            .engine(engine)
            .node_id(name)
            .raw(RawEndpoint::foreign("/raw").handler(recorder("h", &tx)))
    };
    let a = start_with(node(engine_a, "node-a")).await;
    let b = start_with(node(engine_b, "node-b")).await;
    let mut ws = open_ok(a.addr, "/raw").await;
    next_text(&mut ws).await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255];
    // The engines listen before `connect` returns: the first message is not lost.
    let hub_b = b.server.hub();
    hub_b
        .send(&conn.id, RawMessage::text("first"))
        .await
        .expect("handed on");
    hub_b
        .send(&conn.id, RawMessage::binary(bytes.clone()))
        .await
        .expect("handed on");
    hub_b
        .send(&conn.id, RawMessage::text("last"))
        .await
        .expect("handed on");
    assert_eq!(next_text(&mut ws).await, "first");
    assert_eq!(next_message(&mut ws).await, Message::Binary(bytes.into()));
    assert_eq!(next_text(&mut ws).await, "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_is_reached_from_another_node_on_memory() {
    reached_from_another_node(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_is_reached_from_another_node_on_redis() {
    reached_from_another_node(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_is_reached_from_another_node_on_nats() {
    reached_from_another_node(Backend::Nats).await;
}

/// A server whose raw endpoint `/raw` records into `tx`, with `app` made of its routes,
/// served on a listener bound to `bind`; the address to dial (on 127.0.0.1 under a wildcard).
async fn raw_server_bound(
    bind: &str,
    tx: &mpsc::UnboundedSender<Seen>,
    app: impl FnOnce(&Server) -> axum::Router,
) -> (support::TestServer, SocketAddr) {
    let server = Server::builder()
        .raw(RawEndpoint::foreign("/raw").handler(recorder("h", tx)))
        .build();
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let app = app(&server);
    (support::serve_app(server, listener, app, addr), addr)
}

/// Behind a wildcard bind the listener's address says nothing of a connection's: the
/// server asks the kernel for each socket's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_a_wildcard_listener_knows_its_own_local_address() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (_server, addr) = raw_server_bound("0.0.0.0:0", &tx, Server::raw_routes).await;
    let mut ws = open_ok(addr, "/raw").await;
    next_text(&mut ws).await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!("connected comes first")
    };
    assert_eq!(conn.local, Some(addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_writes_to_a_raw_socket() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (_server, addr) = raw_server_bound("127.0.0.1:0", &tx, |server| {
        server.raw_routes().merge(server.api_routes("k"))
    })
    .await;
    let mut ws = open_ok(addr, "/raw").await;
    next_text(&mut ws).await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!()
    };
    let send = |body: Value| async move {
        support::http(
            addr,
            "POST",
            "/api/send",
            Some("k"),
            Some(&body.to_string()),
        )
        .await
    };
    // No type: text.
    let (status, answer) = send(json!({"conn": conn.id, "data": "typed by nobody"})).await;
    assert_eq!((status, answer), (200, json!({"sent": 1})));
    assert_eq!(next_text(&mut ws).await, "typed by nobody");
    let (status, _) = send(json!({"conn": conn.id, "data": "AAH/", "type": "binary"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        next_message(&mut ws).await,
        Message::Binary(vec![0u8, 1, 255].into())
    );
    let (status, answer) = send(json!({"conn": conn.id, "data": "*", "type": "binary"})).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = send(json!({"conn": conn.id, "data": "x", "type": "json"})).await;
    assert_eq!(status, 400, "{answer}");
}

/// A handler for the hard cases: `connected` sends 100 messages, waiting for room each time;
/// `panic` panics; `bye` sends a last message and closes.
struct Trouble {
    seen: mpsc::UnboundedSender<Seen>,
}

impl RawHandler for Trouble {
    async fn connected(&self, conn: &RawConnection) -> Result<(), String> {
        for i in 0..100 {
            conn.send_waiting(RawMessage::text(format!("scrollback {i}")))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn message(&self, conn: &RawConnection, message: RawMessage) {
        match message.as_text() {
            Some("panic") => panic!("a handler bug"),
            Some("bye") => {
                let _ = conn.send_text("last words");
                conn.close(CloseCode::NORMAL, "done");
            }
            _ => {}
        }
    }

    async fn disconnected(&self, conn: &RawConnection, reason: &DisconnectReason) {
        let _ = self.seen.send(Seen::Disconnected {
            handler: "trouble",
            conn: conn.id().to_owned(),
            reason: reason.clone(),
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_wait_panic_or_close_leave_nothing_behind() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.outbound_queue = 16;
    let server = server_with(
        vec![RawEndpoint::foreign("/t").handler(Trouble { seen: tx })],
        config,
    )
    .await;
    // `connected` waits for room in a queue of 16 while its 100 messages are written.
    let mut ws = open_ok(server.addr, "/t").await;
    for i in 0..100 {
        assert_eq!(next_text(&mut ws).await, format!("scrollback {i}"));
    }
    // What was queued before a close goes out before the close frame.
    ws.send(Message::text("bye")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "last words");
    assert_eq!(close_code(&mut ws).await, 1000);
    // A panicking handler: 1011, `disconnected` still comes, nothing stays registered.
    let mut ws = open_ok(server.addr, "/t").await;
    for _ in 0..100 {
        next_text(&mut ws).await;
    }
    ws.send(Message::text("panic")).await.expect("send");
    assert_eq!(close_code(&mut ws).await, 1011);
    for _ in 0..2 {
        let Seen::Disconnected { reason, .. } = next_seen(&mut seen).await else {
            panic!()
        };
        let DisconnectReason::ServerClosed(code, _) = reason else {
            panic!("{reason:?}")
        };
        assert!(
            code == CloseCode(1000) || code == CloseCode(1011),
            "{code:?}"
        );
    }
    support::wait_until("no connection left", || {
        server.server.connection_count() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_message_rate_is_closed() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let rate = plexus_server::RateLimit::new(1, 3).expect("rate");
    let server = server_with(
        vec![
            RawEndpoint::foreign("/r")
                .message_rate(rate)
                .handler(recorder("h", &tx)),
        ],
        EndpointConfig::default(),
    )
    .await;
    let mut ws = open_ok(server.addr, "/r").await;
    next_text(&mut ws).await;
    for i in 0..10 {
        if ws.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, 1008);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshaked_socket_reads_the_hello_token_only_where_declared() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let builder = Server::builder().authenticator(jwt_authenticator()).raw(
        RawEndpoint::handshaked("/term")
            .credentials([CredentialSource::Cookie])
            .handler(recorder("h", &tx)),
    );
    let server = start_with(builder).await;
    let (mut ws, _) = open(server.addr, "/term", &[]).await.expect("upgrade");
    let hello = json!({"t": "hello", "token": token("alice", "", 600)});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("send");
    let reject: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(reject["t"], "reject", "{reject}");
    assert_eq!(close_code(&mut ws).await, 4001);
    // The declared cookie works.
    let cookie = format!("plexus_token={}", token("alice", "", 600));
    let (mut ws, _) = open(server.addr, "/term", &[("Cookie", &cookie)])
        .await
        .expect("upgrade");
    ws.send(Message::text(r#"{"t":"hello"}"#))
        .await
        .expect("send");
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(welcome["user"], "alice", "{welcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_passes_the_servers_doors_origin_and_connection_limits() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.max_connections_per_ip = 1;
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        config,
    )
    .await;
    // A page from another site may not open it (cross-site WebSocket hijacking).
    let refused = open(server.addr, "/raw", &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused.err(), Some(403));
    let mut first = open_ok(server.addr, "/raw").await;
    next_text(&mut first).await;
    // The per-address limit counts raw sockets like any connection.
    assert_eq!(open(server.addr, "/raw", &[]).await.err(), Some(429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_compresses_large_messages() {
    use tokio::io::AsyncWriteExt;
    let (tx, _seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.compression = plexus_server::Compression::On;
    let server = server_with(
        vec![RawEndpoint::foreign("/raw").handler(recorder("h", &tx))],
        config,
    )
    .await;
    let offer = (
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    );
    let (mut socket, head, mut buf) = support::raw_upgrade_to(server.addr, "/raw", &[offer]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let extensions = support::header(&head, "sec-websocket-extensions").unwrap_or_default();
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
    // The greeting is small: sent as is.
    let (first, payload) = within(
        "greeting",
        support::read_raw_frame_with_flags(&mut socket, &mut buf),
    )
    .await
    .expect("a frame");
    assert_eq!((first, payload.as_slice()), (0x81, &b"hello from h"[..]));
    // 4,000 repeated characters come back compressed (RSV1), far smaller.
    let text = "a".repeat(4000);
    within(
        "send",
        socket.write_all(&support::masked_text(text.as_bytes())),
    )
    .await
    .expect("write");
    let (first, payload) = within(
        "echo",
        support::read_raw_frame_with_flags(&mut socket, &mut buf),
    )
    .await
    .expect("a frame");
    assert_eq!(first & 0x0f, 0x1, "a text frame");
    assert_eq!(first & 0x40, 0x40, "RSV1: compressed");
    assert!(payload.len() < 1000, "{} bytes", payload.len());
}

/// Takes a socket once its gate opens; echoes what comes.
struct Gated {
    gate: std::sync::Arc<tokio::sync::Notify>,
}

impl RawHandler for Gated {
    async fn connected(&self, _conn: &RawConnection) -> Result<(), String> {
        self.gate.notified().await;
        Ok(())
    }

    async fn message(&self, conn: &RawConnection, message: RawMessage) {
        let _ = conn.send(message);
    }
}

/// The server holds the upgrade's `101` back to send it with the first bytes after it; a
/// handler slow to take the socket must not hold up the upgrade with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_completes_while_the_handler_decides() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let handler = Gated { gate: gate.clone() };
    let server = server_with(
        vec![RawEndpoint::foreign("/g").handler(handler)],
        EndpointConfig::default(),
    )
    .await;
    // `open_ok` returns once the `101` has come, within its bound; the gate is still shut.
    let mut ws = open_ok(server.addr, "/g").await;
    gate.notify_one();
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "hi");
}

/// A raw socket with no message either way for the idle timeout is closed with 1000, and
/// its handler hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_idle_past_the_idle_timeout_is_closed_1000() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut config = EndpointConfig::default();
    config.limits.idle_timeout = Some(Duration::from_millis(300));
    let server = server_with(
        vec![RawEndpoint::foreign("/r").handler(recorder("h", &tx))],
        config,
    )
    .await;
    let mut ws = open_ok(server.addr, "/r").await;
    assert!(matches!(next_seen(&mut seen).await, Seen::Connected { .. }));
    ws.send(Message::text("one")).await.expect("send");
    let last = std::time::Instant::now();
    assert!(matches!(next_seen(&mut seen).await, Seen::Message { .. }));
    assert_eq!(close_code(&mut ws).await, 1000);
    assert!(
        last.elapsed() >= Duration::from_millis(250),
        "{:?}",
        last.elapsed()
    );
    let Seen::Disconnected { reason, .. } = next_seen(&mut seen).await else {
        panic!("expected the disconnect")
    };
    assert_eq!(
        reason,
        DisconnectReason::ServerClosed(CloseCode::NORMAL, "idle timeout".into())
    );
}

/// A raw peer cannot be asked for a new credential: its socket closes with 4001 when the
/// one it authenticated with expires, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_socket_closes_4001_when_its_credential_expires() {
    let (tx, _seen) = mpsc::unbounded_channel();
    let leeway = Duration::from_secs(1);
    let authenticator =
        plexus_server::JwtAuthenticator::new(support::jwt_config().with_leeway(leeway))
            .expect("valid JWT config");
    let builder = Server::builder().authenticator(authenticator).raw(
        RawEndpoint::handshaked("/term")
            .require("tty")
            .handler(recorder("h", &tx)),
    );
    let server = start_with(builder).await;
    let claims = support::claims("alice", "tty", 2);
    let exp = UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap());
    let token = support::sign_hs256(support::JWT_SECRET.as_bytes(), &claims);
    let (mut ws, _) = open(server.addr, "/term", &[]).await.expect("upgrade");
    ws.send(Message::text(
        json!({"t": "hello", "token": token}).to_string(),
    ))
    .await
    .expect("send");
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).expect("JSON");
    assert_eq!(welcome["user"], "alice");
    assert_eq!(close_code(&mut ws).await, 4001);
    let now = SystemTime::now();
    assert!(
        now + Duration::from_millis(100) >= exp,
        "closed {:?} before the expiry",
        exp.duration_since(now).unwrap_or_default()
    );
    assert!(
        now <= exp + leeway + Duration::from_millis(2500),
        "closed {:?} after the expiry",
        now.duration_since(exp).unwrap_or_default()
    );
}

/// `POST /api/send` on one node reaches a raw socket connected to another: it answers
/// `sent: 0` (not held here, handed on) and the message arrives.
async fn the_http_api_reaches_another_node(backend: Backend) {
    let (engine_a, engine_b, _broker) = engines(backend).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let a = start_with(
        Server::builder()
            .engine(engine_a)
            .node_id("node-a")
            .raw(RawEndpoint::foreign("/raw").handler(recorder("h", &tx))),
    )
    .await;
    let b = Server::builder().engine(engine_b).node_id("node-b").build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr_b = listener.local_addr().expect("addr");
    let app = b.api_routes("k");
    let _b = support::serve_app(b, listener, app, addr_b);
    let mut ws = open_ok(a.addr, "/raw").await;
    next_text(&mut ws).await;
    let Seen::Connected { conn, .. } = next_seen(&mut seen).await else {
        panic!("connected comes first")
    };
    let body = json!({"conn": conn.id, "data": "from node b"}).to_string();
    let (status, answer) = support::http(addr_b, "POST", "/api/send", Some("k"), Some(&body)).await;
    assert_eq!((status, answer), (200, json!({"sent": 0})));
    assert_eq!(next_text(&mut ws).await, "from node b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_reaches_a_raw_socket_on_another_node_on_memory() {
    the_http_api_reaches_another_node(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_reaches_a_raw_socket_on_another_node_on_redis() {
    the_http_api_reaches_another_node(Backend::Redis).await;
}
