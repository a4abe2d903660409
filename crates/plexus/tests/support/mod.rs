//! Shared helpers of the end-to-end server tests: a `plexus_server::Server` on an ephemeral
//! 127.0.0.1 port, and a raw WebSocket client (tokio-tungstenite) that writes frames by hand
//! and returns exactly what came back on the wire.
//!
//! Every wait is bounded by [`TIMEOUT`]; tests synchronize on frames and channels, never on
//! sleeps.

#![allow(dead_code, unused_macros)]

pub(crate) mod broker;
pub(crate) mod process;
pub(crate) mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_server::{
    Codec, ConnectionHandle, DisconnectReason, EndpointConfig, Router, Server, ServerBuilder,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound of every wait for something that must happen.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs each listed `async fn name(codec: Codec)` once per codec, as `json::name` and
/// `msgpack::name`, on a two-worker runtime.
macro_rules! codec_tests {
    ($($name:ident),* $(,)?) => {
        mod json {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(plexus_server::Codec::Json).await;
                }
            )*
        }
        mod msgpack {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(plexus_server::Codec::MsgPack).await;
                }
            )*
        }
    };
}

/// Runs each named `async fn(broker::Kind)` as a test on each broker, in modules `redis` and
/// `nats`.
macro_rules! broker_tests {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::broker::Kind::Redis).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::broker::Kind::Nats).await;
                }
            )*
        }
    };
}

/// Runs each named `async fn(broker::Backend)` as a test on each backend, in modules
/// `memory`, `redis` and `nats`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::broker::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::broker::Backend::Redis).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::broker::Backend::Nats).await;
                }
            )*
        }
    };
}

/// Waits for `future` up to [`TIMEOUT`], failing the test with `what` if it takes longer.
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// Receives from a channel within [`TIMEOUT`]; panics if it times out or closes.
pub(crate) async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    within(what, rx.recv())
        .await
        .unwrap_or_else(|| panic!("channel closed while waiting for {what}"))
}

/// The built-in `sys.*` methods.
pub(crate) fn sys() -> Router {
    plexus::sys::router()
}

/// A default endpoint configuration.
pub(crate) fn config() -> EndpointConfig {
    EndpointConfig::default()
}

/// A server running `serve` on 127.0.0.1 in a spawned task. Dropping it triggers shutdown.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a server with `router` and `config`.
pub(crate) async fn start(router: Router, config: EndpointConfig) -> TestServer {
    start_with(Server::builder().router(router).config(config)).await
}

/// Starts the server a builder describes (for hooks and node ids).
pub(crate) async fn start_with(builder: ServerBuilder) -> TestServer {
    let server = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let app = server.route("/ws").merge(server.raw_routes());
    serve_app(server, listener, app, addr)
}

/// Serves `app` (built from `server`) on `listener` in a spawned task.
#[allow(dead_code)] // not every test binary serves an app of its own
pub(crate) fn serve_app(
    server: Server,
    listener: TcpListener,
    app: axum::Router,
    addr: SocketAddr,
) -> TestServer {
    let (tx, rx) = oneshot::channel::<()>();
    let serving = server.clone();
    let served = tokio::spawn(async move {
        serving
            .serve(listener, app, async move {
                // A dropped sender also shuts down: the test ended.
                let _ = rx.await;
            })
            .await
    });
    TestServer {
        addr,
        server,
        shutdown: Some(tx),
        served: Some(served),
    }
}

impl TestServer {
    /// Completes the shutdown signal given to `serve`.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (up to `bound`) for `serve` to return, and returns its result.
    pub(crate) async fn served(&mut self, bound: Duration) -> std::io::Result<()> {
        let handle = self.served.take().expect("served() called twice");
        match tokio::time::timeout(bound, handle).await {
            Ok(joined) => joined.expect("serve task panicked"),
            Err(_) => panic!("serve did not return within {bound:?}"),
        }
    }

    /// A raw client speaking `codec` (offered as subprotocol), after its `welcome`.
    pub(crate) async fn client(&self, codec: Codec) -> RawClient {
        RawClient::connect(self.addr, Some(codec)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// Adds an `on_connect` hook that hands every connection to the test.
pub(crate) fn with_connect_hook(
    builder: ServerBuilder,
) -> (ServerBuilder, mpsc::UnboundedReceiver<ConnectionHandle>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder.on_connect(move |conn| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(conn);
        }
    });
    (builder, rx)
}

/// Adds an `on_disconnect` hook that reports `(connection id, reason)` to the test.
pub(crate) fn with_disconnect_hook(
    builder: ServerBuilder,
) -> (
    ServerBuilder,
    mpsc::UnboundedReceiver<(String, DisconnectReason)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let builder = builder.on_disconnect(move |conn, reason| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((conn.id().to_owned(), reason));
        }
    });
    (builder, rx)
}

// ---- raw WebSocket client ---------------------------------------------------------------

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The upgrade request for `ws://addr/ws`, offering `protocol` when given.
pub(crate) fn ws_request(addr: SocketAddr, protocol: Option<&str>) -> Request {
    ws_request_to(addr, "/ws", protocol)
}

/// The upgrade request for `ws://addr{path}` (path and query), offering `protocol`.
pub(crate) fn ws_request_to(addr: SocketAddr, path: &str, protocol: Option<&str>) -> Request {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("valid request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).expect("header value"),
        );
    }
    request
}

/// Opens a WebSocket without reading anything.
pub(crate) async fn connect_ws(
    addr: SocketAddr,
    protocol: Option<&str>,
) -> Result<(Ws, Response), tungstenite::Error> {
    connect_ws_to(addr, "/ws", protocol).await
}

/// Opens a WebSocket to `path` (path and query) without reading anything.
pub(crate) async fn connect_ws_to(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<(Ws, Response), tungstenite::Error> {
    match tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(ws_request_to(addr, path, protocol)),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "WebSocket handshake timed out",
        ))),
    }
}

/// What the raw client saw next.
#[derive(Debug)]
pub(crate) enum Event {
    /// A data message, decoded from the connection's codec.
    Frame(Value),
    /// A close frame with its code.
    Close(Option<u16>),
    /// The stream ended (or failed) without a close frame.
    Ended(String),
}

/// A WebSocket client that reads and writes protocol frames by hand.
pub(crate) struct RawClient {
    pub(crate) ws: Ws,
    pub(crate) codec: Codec,
    pub(crate) welcome: Value,
}

impl RawClient {
    /// Connects, offering `codec`'s subprotocol when given, checks the server chose it, and
    /// reads the `welcome`.
    pub(crate) async fn connect(addr: SocketAddr, codec: Option<Codec>) -> Self {
        Self::connect_to(addr, "/ws", codec).await
    }

    /// Like [`RawClient::connect`], to `path` (path and query).
    pub(crate) async fn connect_to(addr: SocketAddr, path: &str, codec: Option<Codec>) -> Self {
        let (ws, response) = connect_ws_to(addr, path, codec.map(Codec::subprotocol))
            .await
            .expect("WebSocket connect");
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ascii header").to_owned());
        assert_eq!(
            chosen.as_deref(),
            codec.map(Codec::subprotocol),
            "the server must select the offered subprotocol (and none when none was offered)"
        );
        let mut client = RawClient {
            ws,
            codec: codec.unwrap_or(Codec::Json),
            welcome: Value::Null,
        };
        let welcome = client.recv_json().await;
        assert_eq!(welcome["t"], "welcome", "first frame: {welcome}");
        client.welcome = welcome;
        client
    }

    /// Sends a valid frame written as JSON: as is on the JSON protocol, re-encoded with
    /// `Codec::MsgPack` on the MessagePack one.
    pub(crate) async fn send_json(&mut self, frame: Value) {
        let text = frame.to_string();
        match self.codec {
            Codec::Json => self.send_text(text).await,
            Codec::MsgPack => {
                let parsed = Codec::Json
                    .decode(text.into_bytes().into())
                    .unwrap_or_else(|e| panic!("send_json needs a valid frame ({e}): {frame}"));
                let bytes = Codec::MsgPack.encode(&parsed).expect("encode msgpack");
                self.send_binary(bytes.to_vec()).await;
            }
        }
    }

    /// Sends any value in the connection's codec, without checking it is a valid frame:
    /// JSON text, or MessagePack written by `rmp-serde` (maps with string keys).
    pub(crate) async fn send_value(&mut self, value: &Value) {
        match self.codec {
            Codec::Json => self.send_text(value.to_string()).await,
            Codec::MsgPack => {
                let bytes = rmp_serde::to_vec(value).expect("rmp encode");
                self.send_binary(bytes).await;
            }
        }
    }

    /// Sends one text message.
    pub(crate) async fn send_text(&mut self, text: impl Into<String>) {
        within("send", self.ws.send(Message::text(text.into())))
            .await
            .expect("send text");
    }

    /// Sends one binary message.
    pub(crate) async fn send_binary(&mut self, bytes: Vec<u8>) {
        within("send", self.ws.send(Message::binary(bytes)))
            .await
            .expect("send binary");
    }

    /// Queues a frame without flushing (for bursts); call [`RawClient::flush`] after.
    pub(crate) async fn feed_json(&mut self, frame: Value) {
        let message = match self.codec {
            Codec::Json => Message::text(frame.to_string()),
            Codec::MsgPack => {
                let parsed = Codec::Json
                    .decode(frame.to_string().into_bytes().into())
                    .expect("valid frame");
                Message::binary(Codec::MsgPack.encode(&parsed).expect("encode"))
            }
        };
        within("feed", self.ws.feed(message)).await.expect("feed");
    }

    /// Flushes fed frames.
    pub(crate) async fn flush(&mut self) {
        within("flush", self.ws.flush()).await.expect("flush");
    }

    /// Decodes one data message in the connection's codec. MessagePack is read with
    /// `rmp-serde` (the exact map on the wire) and must also decode with `Codec::MsgPack`.
    fn decode(&self, message: Message) -> Value {
        match (self.codec, message) {
            (Codec::Json, Message::Text(text)) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}")),
            (Codec::MsgPack, Message::Binary(bytes)) => {
                if let Err(e) = Codec::MsgPack.decode(bytes.clone()) {
                    panic!("server sent a frame Codec::MsgPack rejects ({e}): {bytes:02x?}");
                }
                rmp_serde::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("server sent invalid MessagePack ({e})"))
            }
            (codec, other) => panic!("wrong message type for {codec:?}: {other:?}"),
        }
    }

    /// The next data message, close or end, skipping pings and pongs; `None` if nothing
    /// arrived within `window`.
    pub(crate) async fn next_event(&mut self, window: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Event::Ended("stream ended".into()),
                Some(Err(e)) => Event::Ended(e.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => Event::Close(frame.map(|f| u16::from(f.code))),
                Some(Ok(message)) => Event::Frame(self.decode(message)),
            });
        }
    }

    /// The next frame (within [`TIMEOUT`]).
    pub(crate) async fn recv_json(&mut self) -> Value {
        self.recv_json_within(TIMEOUT).await
    }

    /// The next frame, within `bound` (for what comes only after a slower event).
    pub(crate) async fn recv_json_within(&mut self, bound: Duration) -> Value {
        match self.next_event(bound).await {
            Some(Event::Frame(frame)) => frame,
            Some(other) => panic!("expected a frame, got {other:?}"),
            None => panic!("no frame within {bound:?}"),
        }
    }

    /// The close code of the close frame that must come next (within [`TIMEOUT`]).
    pub(crate) async fn recv_close(&mut self) -> u16 {
        match self.next_event(TIMEOUT).await {
            Some(Event::Close(Some(code))) => {
                // Write the close reply tungstenite queued, completing the handshake now.
                let _ = tokio::time::timeout(TIMEOUT, self.ws.flush()).await;
                code
            }
            Some(other) => panic!("expected a close frame with a code, got {other:?}"),
            None => panic!("no close frame within {TIMEOUT:?}"),
        }
    }

    /// Asserts that no frame arrives within `window` (a bounded negative check).
    pub(crate) async fn expect_silence(&mut self, window: Duration) {
        if let Some(event) = self.next_event(window).await {
            panic!("expected nothing for {window:?}, got {event:?}");
        }
    }

    /// Sends a request and returns the next frame.
    pub(crate) async fn call(&mut self, id: u64, method: &str, d: Value) -> Value {
        self.send_json(json!({"t": "req", "id": id, "m": method, "d": d}))
            .await;
        self.recv_json().await
    }

    /// Checks that the connection still answers `sys.echo`: the next frame must be its `res`.
    pub(crate) async fn assert_echo(&mut self, id: u64) {
        let d = json!({"alive": id, "text": "still here ✓"});
        let reply = self.call(id, "sys.echo", d.clone()).await;
        assert_eq!(reply, json!({"t": "res", "id": id, "d": d}));
    }

    /// Sends a close frame and waits (bounded) for the server's reply or the end.
    pub(crate) async fn close(mut self) {
        let _ = within("close", self.ws.close(None)).await;
        let _ = self.next_event(TIMEOUT).await;
    }
}

/// Asserts `frame` is an `err` frame with `code` and the given id (`None`: no `id` key).
pub(crate) fn assert_err(frame: &Value, id: Option<u64>, code: &str) {
    assert_eq!(frame["t"], "err", "expected err, got {frame}");
    match id {
        Some(id) => assert_eq!(frame["id"], id, "wrong id in {frame}"),
        None => assert!(frame.get("id").is_none(), "unexpected id in {frame}"),
    }
    assert_eq!(frame["e"]["code"], code, "wrong code in {frame}");
    assert!(frame["e"]["message"].is_string(), "no message in {frame}");
}

// ---- raw TCP: hand-written HTTP upgrade and frame reading --------------------------------

/// Writes an upgrade request for `/ws` by hand with `extra` headers and returns the socket
/// and the response head (up to the blank line), plus any bytes read past it.
pub(crate) async fn raw_upgrade(
    addr: SocketAddr,
    extra: &[(&str, &str)],
) -> (TcpStream, String, Vec<u8>) {
    raw_upgrade_to(addr, "/ws", extra).await
}

/// [`raw_upgrade`] to `path`.
pub(crate) async fn raw_upgrade_to(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (TcpStream, String, Vec<u8>) {
    let mut stream = within("tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    within("write upgrade", stream.write_all(request.as_bytes()))
        .await
        .expect("write upgrade");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        assert!(buf.len() < 64 * 1024, "response head too long");
        let n = within("upgrade response", stream.read(&mut chunk))
            .await
            .expect("read upgrade response");
        assert!(n > 0, "connection closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end..].to_vec();
    (stream, head, rest)
}

/// The value of header `name` in a response head (case-insensitive), if present.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Reads one server frame (unmasked, unfragmented as the server writes control frames)
/// from a raw socket: `(opcode, payload)`, or `None` at the end of the stream. `buf` holds
/// bytes already read past previous frames.
pub(crate) async fn read_raw_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(u8, Vec<u8>)> {
    let (first, payload) = read_raw_frame_with_flags(stream, buf).await?;
    Some((first & 0x0f, payload))
}

/// Like [`read_raw_frame`], returning the whole first byte (FIN, RSV1-3, opcode).
pub(crate) async fn read_raw_frame_with_flags(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(u8, Vec<u8>)> {
    loop {
        if let Some((first, payload, used)) = parse_frame(buf) {
            buf.drain(..used);
            return Some((first, payload));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let first = buf[0];
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    if masked {
        at += 4;
    }
    let payload = buf.get(at..at + len)?.to_vec();
    Some((first, payload, at + len))
}

/// A client text frame with the mask key zero (so the payload stays as written).
pub(crate) fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

// ---- security tests: credentials in the upgrade, tokens, waiting on the server -----------

/// The HMAC secret of [`jwt_authenticator`].
pub(crate) const JWT_SECRET: &str = "plexus-security-tests-secret-0123456789abcdef";
/// The `iss` [`jwt_authenticator`] requires.
pub(crate) const JWT_ISSUER: &str = "https://auth.plexus.test";
/// The `aud` [`jwt_authenticator`] requires.
pub(crate) const JWT_AUDIENCE: &str = "plexus-tests";

/// The configuration of [`jwt_authenticator`]: HS256 with [`JWT_SECRET`], requiring
/// [`JWT_ISSUER`] and [`JWT_AUDIENCE`], default leeway.
pub(crate) fn jwt_config() -> plexus_server::JwtConfig {
    plexus_server::JwtConfig::hmac(JWT_SECRET)
        .with_algorithms(["HS256"])
        .with_issuer(JWT_ISSUER)
        .with_audience(JWT_AUDIENCE)
}

/// A JWT authenticator for [`jwt_config`].
pub(crate) fn jwt_authenticator() -> plexus_server::JwtAuthenticator {
    plexus_server::JwtAuthenticator::new(jwt_config()).expect("valid JWT config")
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The claims [`jwt_authenticator`] accepts: `sub`, `scope` (when not empty), `iss`, `aud`,
/// `iat` now and `exp` `ttl` seconds from now. Change them to make bad tokens.
pub(crate) fn claims(sub: &str, scope: &str, ttl: u64) -> Value {
    let now = unix_now();
    let mut claims = json!({
        "sub": sub,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + ttl,
    });
    if !scope.is_empty() {
        claims["scope"] = json!(scope);
    }
    claims
}

/// A token [`jwt_authenticator`] accepts, for `sub` with the space-separated `scope`, valid
/// for `ttl` seconds.
pub(crate) fn token(sub: &str, scope: &str, ttl: u64) -> String {
    sign_hs256(JWT_SECRET.as_bytes(), &claims(sub, scope, ttl))
}

/// An HS256 token of exactly `claims`, signed with `secret`.
pub(crate) fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign HS256")
}

/// An RS256 token of exactly `claims`, signed with the PEM private key `pem`.
pub(crate) fn sign_rs256(pem: &[u8], claims: &Value) -> String {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(pem).expect("RSA private key"),
    )
    .expect("sign RS256")
}

/// A hand-made token with `alg: none` and an empty signature.
pub(crate) fn unsigned_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A file of the server crate's test keys (`crates/plexus-server/tests/keys`).
pub(crate) fn test_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plexus-server/tests/keys")
        .join(name)
}

/// Where an upgrade request carries its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CredentialAt {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Cookie: plexus_token=<token>`.
    Cookie,
    /// `/ws?token=<token>`.
    Query,
}

impl CredentialAt {
    /// Every place in an upgrade request.
    pub(crate) const ALL: [CredentialAt; 3] = [
        CredentialAt::Header,
        CredentialAt::Cookie,
        CredentialAt::Query,
    ];
}

/// Opens a WebSocket to `/ws` offering `codec`, with `credential` where it says and the
/// `extra` headers. `Err((status, body))` when the server refused the upgrade.
pub(crate) async fn try_upgrade(
    addr: SocketAddr,
    codec: Codec,
    credential: Option<(CredentialAt, &str)>,
    extra: &[(&str, &str)],
) -> Result<Ws, (u16, String)> {
    let path = match credential {
        Some((CredentialAt::Query, token)) => format!("/ws?token={token}"),
        _ => "/ws".to_owned(),
    };
    let mut request = ws_request_to(addr, &path, Some(codec.subprotocol()));
    let headers = request.headers_mut();
    match credential {
        Some((CredentialAt::Header, token)) => {
            headers.insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
            );
        }
        Some((CredentialAt::Cookie, token)) => {
            headers.insert(
                "Cookie",
                HeaderValue::from_str(&format!("theme=dark; plexus_token={token}"))
                    .expect("header value"),
            );
        }
        _ => {}
    }
    for (name, value) in extra {
        headers.append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    match within("upgrade", tokio_tungstenite::connect_async(request)).await {
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

/// The HTTP status (and body) refusing an upgrade that must be refused.
pub(crate) async fn refused_upgrade(
    addr: SocketAddr,
    credential: Option<(CredentialAt, &str)>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    match try_upgrade(addr, Codec::Json, credential, extra).await {
        Ok(_) => panic!("the upgrade was accepted; expected a refusal ({credential:?})"),
        Err(refused) => refused,
    }
}

/// Waits (bounded, yielding, no sleeps) until `condition` holds.
pub(crate) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

impl RawClient {
    /// A client on an upgraded socket that has not had its `welcome` yet (the field is
    /// null until [`RawClient::expect_welcome`]).
    pub(crate) fn unwelcomed(ws: Ws, codec: Codec) -> Self {
        RawClient {
            ws,
            codec,
            welcome: Value::Null,
        }
    }

    /// Reads the frame that must come next, a `welcome`, and keeps it.
    pub(crate) async fn expect_welcome(&mut self) -> Value {
        let welcome = self.recv_json().await;
        assert_eq!(welcome["t"], "welcome", "expected welcome, got {welcome}");
        self.welcome = welcome.clone();
        welcome
    }

    /// Connects with `credential` in the upgrade request and reads the `welcome`.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        codec: Codec,
        credential: Option<(CredentialAt, &str)>,
    ) -> Self {
        let ws = try_upgrade(addr, codec, credential, &[])
            .await
            .unwrap_or_else(|(status, body)| {
                let at = credential.map(|(at, _)| at);
                panic!("upgrade with a credential in {at:?} refused: {status} {body}")
            });
        let mut client = Self::unwelcomed(ws, codec);
        client.expect_welcome().await;
        client
    }

    /// Connects without a credential and authenticates in band with a `hello` carrying
    /// `token`; returns the client before reading the server's answer.
    pub(crate) async fn hello(addr: SocketAddr, codec: Codec, token: Option<&str>) -> Self {
        let ws = try_upgrade(addr, codec, None, &[])
            .await
            .unwrap_or_else(|(status, body)| panic!("upgrade refused: {status} {body}"));
        let mut client = Self::unwelcomed(ws, codec);
        let mut hello = json!({"t": "hello"});
        if let Some(token) = token {
            hello["token"] = json!(token);
        }
        client.send_json(hello).await;
        client
    }

    /// Asserts that the server refuses this session: `reject` with `code` and `message`,
    /// then the close code `close`.
    pub(crate) async fn assert_rejected(&mut self, code: &str, message: &str, close: u16) {
        let frame = self.recv_json().await;
        assert_eq!(
            frame,
            json!({"t": "reject", "e": {"code": code, "message": message}}),
            "expected a reject"
        );
        assert_eq!(self.recv_close().await, close, "close code after {frame}");
    }
}

/// One HTTP/1.1 request to `addr`, with `Authorization: apikey KEY` when a key is given;
/// returns the status and the JSON body (`null` when there is none).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    http_within(TIMEOUT, addr, method, path, key, body).await
}

/// [`http`], answered within `bound`.
pub(crate) async fn http_within(
    bound: Duration,
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("Authorization: apikey {key}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(bound, stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("no HTTP answer within {bound:?}"))
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
