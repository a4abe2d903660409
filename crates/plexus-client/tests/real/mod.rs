//! The real plexus server (in-process, on 127.0.0.1) for the client's tests, behind a
//! recording TCP proxy.
//!
//! The server is `plexus_server::Server` with test methods (`echo`, `fail`, `never`,
//! `flaky`; streams `count` and `credit` (0 to n-1), `items` (its params' elements),
//! `forever`, `fail_stream`; notifications `log.event`, `marker`),
//! channels of every name (history and presence as the [`Script`] says; `secret:*` and
//! [`RealServer::forbid`]den ones refused), and authentication when asked for (tokens
//! `good` and `good-*` accepted, `forbidden*` valid but not allowed, anything else refused).
//!
//! The proxy forwards every byte unchanged and reports what crossed it as [`Event`]s: the
//! upgrade request's headers (or the refusal's status), the `welcome`, each frame the client
//! sent (decoded), its close frame, and the end of the connection. It also plays the
//! network's faults: dropping connections, or freezing them half-open. So the tests check
//! what the client put on the wire against the real server, not a model of it.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;
use http::{HeaderMap, HeaderName, HeaderValue};
use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, Frame, Payload, Position};
use plexus_server::auth::fn_authenticator;
use plexus_server::engine::{
    Engine, EngineFuture, EngineSink, HistoryPage, Member, NodeMessage, Retention,
};
use plexus_server::{
    AuthError, ChannelOptions, Compression, ConnectionHandle, EndpointConfig, MemoryEngine,
    Namespaces, Principal, Router, RpcError, Server,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct Script {
    /// The server's heartbeat interval, in ms (sent in `welcome`).
    pub heartbeat_ms: u64,
    /// Authenticate: the client must present a token, in the upgrade or in `hello`.
    pub auth: bool,
    /// With `auth`, the one token accepted (instead of `good` and `good-*`).
    pub require_token: Option<String>,
    /// Negotiate permessage-deflate.
    pub compression: bool,
    /// How many publications each channel keeps in its history.
    pub history_size: usize,
    /// Send `pjoin` / `pleave` to a channel's subscribers.
    pub presence_events: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            heartbeat_ms: 25_000,
            auth: false,
            require_token: None,
            compression: false,
            history_size: 100,
            presence_events: true,
        }
    }
}

/// What crossed the proxy.
#[derive(Clone, Debug)]
pub enum Event {
    /// A WebSocket upgrade was accepted on proxied connection `conn`.
    Upgrade { conn: u64, headers: HeaderMap },
    /// An upgrade request was refused with this HTTP status.
    Refused { status: u16, headers: HeaderMap },
    /// The server's `welcome` went to connection `conn`.
    Welcome { conn: u64 },
    /// The client sent this frame on connection `conn`.
    Frame { conn: u64, frame: Frame },
    /// The client sent a Close frame with this code.
    Close { conn: u64, code: Option<u16> },
    /// Connection `conn` ended.
    Gone { conn: u64 },
}

/// The test methods.
fn router(flaky_seen: Arc<AtomicBool>) -> Router {
    Router::new()
        .request("echo", |p: Payload| async move { Ok::<_, RpcError>(p) })
        .request("fail", |_: Payload| async move {
            Err::<(), _>(
                RpcError::new(ErrorCode::VALIDATION_ERROR, "name is required")
                    .with_data(&serde_json::json!({"path": "name"})),
            )
        })
        .request("never", |_: Payload| async move {
            std::future::pending::<()>().await;
            Ok::<_, RpcError>(())
        })
        .request("flaky", move |p: Payload| {
            let first = !flaky_seen.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    std::future::pending::<()>().await;
                }
                Ok::<_, RpcError>(p)
            }
        })
        .stream("count", |n: u64| async move {
            Ok::<_, RpcError>(stream::iter((0..n).map(Ok::<_, RpcError>)))
        })
        .stream("credit", |n: u64| async move {
            Ok::<_, RpcError>(stream::iter((0..n).map(Ok::<_, RpcError>)))
        })
        .stream("items", |items: Vec<serde_json::Value>| async move {
            Ok::<_, RpcError>(stream::iter(items.into_iter().map(Ok::<_, RpcError>)))
        })
        .stream("forever", |_: Payload| async move {
            Ok::<_, RpcError>(stream::pending::<Result<u64, RpcError>>())
        })
        .stream("fail_stream", |_: Payload| async move {
            Ok::<_, RpcError>(stream::iter([
                Ok(0u64),
                Err(RpcError::new(ErrorCode::new("BROKEN"), "broken")),
            ]))
        })
        .notify("log.event", |_: Payload| async {})
        .notify("marker", |_: Payload| async {})
}

/// Judges a token as the module documentation says.
fn judge(token: Option<&str>, required: Option<&str>) -> Result<Principal, AuthError> {
    let Some(token) = token else {
        return Err(AuthError::not_authorized("missing credential"));
    };
    let ok = match required {
        Some(required) => token == required,
        None => token == "good" || token.starts_with("good-"),
    };
    if ok {
        Ok(Principal::user(token, []))
    } else if token.starts_with("forbidden") {
        Err(AuthError::forbidden("not allowed"))
    } else {
        Err(AuthError::not_authorized("bad token"))
    }
}

/// The memory engine, with a way to interrupt a channel's stream (as a cluster engine does
/// when its link to the backend breaks).
struct Interruptible {
    memory: MemoryEngine,
    sink: Mutex<Option<Arc<dyn EngineSink>>>,
}

impl Engine for Interruptible {
    fn start<'a>(&'a self, node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
        *self.sink.lock().unwrap() = Some(sink.clone());
        self.memory.start(node, sink)
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position> {
        self.memory.publish(channel, data, options)
    }
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage> {
        self.memory.history(channel, since, limit)
    }
    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.memory.watch(channel)
    }
    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.memory.unwatch(channel)
    }
    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
        self.memory.add_member(channel, member)
    }
    fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()> {
        self.memory.remove_member(channel, conn)
    }
    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
        self.memory.members(channel)
    }
    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
        self.memory.broadcast(message)
    }
}

/// Holds authentication (and so `welcome`) back while set: see
/// [`RealServer::hold_welcome`].
struct Hold {
    holding: AtomicBool,
    released: tokio::sync::Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            holding: AtomicBool::new(false),
            released: tokio::sync::Semaphore::new(0),
        }
    }
}

/// The real server behind the recording proxy.
pub struct RealServer {
    hold: Arc<Hold>,
    /// The proxy's address: what clients connect to.
    pub addr: SocketAddr,
    pub server: Server,
    engine: Arc<Interruptible>,
    events: mpsc::UnboundedReceiver<Event>,
    proxy: Arc<ProxyState>,
    forbidden: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

/// What the proxy shares with the test.
struct ProxyState {
    events: mpsc::UnboundedSender<Event>,
    /// Whether the server authenticates (else a client's empty `hello` is not reported:
    /// the server ignores it).
    auth: bool,
    next_conn: AtomicU64,
    /// The server's connection id of each proxied connection, from its `welcome`.
    ids: Mutex<HashMap<u64, String>>,
    /// Connections numbered up to this one stop forwarding (half-open).
    frozen: AtomicU64,
    /// Connections numbered up to this one are dropped.
    dropped: AtomicU64,
    /// While false, new connections are closed at once (the server is unreachable).
    accepting: AtomicBool,
    /// While true, what the server sends is held back (not lost) until it is false again.
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    kill: tokio::sync::Notify,
}

impl RealServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(script: Script) -> Self {
        Self::start_on(0, script).await
    }

    /// Starts with the proxy on a given port of 127.0.0.1 (to restart "the same server").
    pub async fn start_on(port: u16, script: Script) -> Self {
        let forbidden: Arc<Mutex<Vec<String>>> = Arc::default();
        let refuse = forbidden.clone();
        let channel = ChannelOptions::default()
            .history_size(script.history_size)
            .presence(true)
            .join_leave_events(script.presence_events)
            .client_publish(true)
            .authorize(move |_, channel, _| {
                !channel.starts_with("secret:")
                    && !refuse.lock().unwrap().iter().any(|c| c == channel)
            });
        let mut config = EndpointConfig::default();
        config.limits.heartbeat_interval = Duration::from_millis(script.heartbeat_ms);
        if script.compression {
            config.compression = Compression::On;
        } else {
            config.compression = Compression::Off;
        }
        let engine = Arc::new(Interruptible {
            memory: MemoryEngine::new(),
            sink: Mutex::new(None),
        });
        let mut builder = Server::builder()
            .router(router(Arc::default()))
            .config(config)
            .engine(engine.clone())
            .channels(Namespaces::new().namespace("*", channel));
        let hold = Arc::new(Hold::default());
        if script.auth {
            let required = script.require_token.clone();
            let held = hold.clone();
            builder = builder.authenticator(fn_authenticator(move |request| {
                let judged = judge(request.token(), required.as_deref());
                let held = held.clone();
                async move {
                    if held.holding.load(Ordering::SeqCst) {
                        let permit = held.released.acquire().await;
                        permit.expect("never closed").forget();
                    }
                    judged
                }
            }));
        }
        let server = builder.build();
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serving = server.clone();
        let app = server.route("/ws");
        let serve = tokio::spawn(async move {
            let _ = serving
                .serve(upstream_listener, app, async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let listener = bind(port).await;
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let proxy = Arc::new(ProxyState {
            events: events_tx,
            auth: script.auth,
            next_conn: AtomicU64::new(1),
            ids: Mutex::new(HashMap::new()),
            frozen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            accepting: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            kill: tokio::sync::Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, proxy.clone()));
        Self {
            hold,
            addr,
            server,
            engine,
            events,
            proxy,
            forbidden,
            tasks: vec![serve, accept],
            stop: Some(stop_tx),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next event, within [`WAIT`].
    pub async fn event(&mut self) -> Event {
        timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a server event")
            .expect("server event channel closed")
    }

    /// The next event, if one comes within `wait`.
    pub async fn event_within(&mut self, wait: Duration) -> Option<Event> {
        timeout(wait, self.events.recv()).await.ok().flatten()
    }

    /// The next frame the client sent (skipping other events), with its connection.
    pub async fn frame(&mut self) -> (u64, Frame) {
        for _ in 0..1000 {
            if let Event::Frame { conn, frame } = self.event().await {
                return (conn, frame);
            }
        }
        panic!("no frame among 1000 events");
    }

    /// The next frame matching `pred` (skipping others).
    pub async fn frame_where(&mut self, pred: impl Fn(&Frame) -> bool) -> (u64, Frame) {
        for _ in 0..1000 {
            let (conn, frame) = self.frame().await;
            if pred(&frame) {
                return (conn, frame);
            }
        }
        panic!("no matching frame among 1000 frames");
    }

    /// The next frame of connection `conn` (skipping other events and connections).
    pub async fn frame_of(&mut self, conn: u64) -> Frame {
        self.frame_where_on(conn, |_| true).await
    }

    /// The next frame of connection `conn` matching `pred` (skipping others).
    pub async fn frame_where_on(&mut self, conn: u64, pred: impl Fn(&Frame) -> bool) -> Frame {
        for _ in 0..1000 {
            let (c, frame) = self.frame().await;
            if c == conn && pred(&frame) {
                return frame;
            }
        }
        panic!("no matching frame of connection {conn} among 1000 frames");
    }

    /// The next upgrade (skipping other events): connection number and headers.
    pub async fn upgrade(&mut self) -> (u64, HeaderMap) {
        for _ in 0..1000 {
            if let Event::Upgrade { conn, headers } = self.event().await {
                return (conn, headers);
            }
        }
        panic!("no upgrade among 1000 events");
    }

    /// The next refused upgrade (skipping other events): its status and headers.
    pub async fn refused(&mut self) -> (u16, HeaderMap) {
        for _ in 0..1000 {
            if let Event::Refused { status, headers } = self.event().await {
                return (status, headers);
            }
        }
        panic!("no refused upgrade among 1000 events");
    }

    /// Waits until connection `conn` ended.
    pub async fn gone(&mut self, conn: u64) {
        for _ in 0..1000 {
            if let Event::Gone { conn: c } = self.event().await
                && c == conn
            {
                return;
            }
        }
        panic!("connection {conn} did not end among 1000 events");
    }

    /// The server's connection id of proxied connection `conn` (known once welcomed).
    pub fn id_of(&self, conn: u64) -> String {
        self.proxy
            .ids
            .lock()
            .unwrap()
            .get(&conn)
            .cloned()
            .unwrap_or_else(|| panic!("connection {conn} has had no welcome"))
    }

    /// The server's handle of proxied connection `conn`.
    pub fn handle(&self, conn: u64) -> ConnectionHandle {
        let id = self.id_of(conn);
        self.server
            .hub()
            .connection(&id)
            .unwrap_or_else(|| panic!("connection {conn} ({id}) is not on the server"))
    }

    /// Publishes `value` to `channel` through the server's hub; its position.
    pub async fn publish(&self, channel: &str, value: serde_json::Value) -> Position {
        self.server.hub().publish(channel, &value).await.unwrap()
    }

    /// Subscribes connection `conn` to `channel` from the server (a server-side
    /// subscription): `joined`, then the channel's publications.
    pub async fn subscribe(&self, conn: u64, channel: &str) {
        let id = self.id_of(conn);
        self.server.hub().subscribe(&id, channel).await.unwrap();
    }

    /// Ends connection `conn`'s subscription to `channel` from the server: `left` without
    /// error, or, with `interrupted`, `left` `UNAVAILABLE` for every subscriber of the
    /// channel (its stream was interrupted), after which clients re-join with recovery.
    /// Returns once the server no longer counts the subscriber.
    pub async fn unsubscribe(&self, conn: u64, channel: &str, interrupted: bool) {
        if interrupted {
            let sink = self.engine.sink.lock().unwrap().clone().expect("started");
            sink.interrupted(channel);
            // The interruption is acted on in a task of the hub's: wait for its effect.
            timeout(WAIT, async {
                while self.subscribers(channel) > 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the interrupted subscription did not end");
        } else {
            let id = self.id_of(conn);
            self.server.hub().unsubscribe(&id, channel).await.unwrap();
        }
    }

    /// While `hold` is true, each authentication (and so the `welcome` after it) waits for
    /// a [`RealServer::release_welcome`] (only with [`Script::auth`]).
    pub fn hold_welcome(&self, hold: bool) {
        self.hold.holding.store(hold, Ordering::SeqCst);
    }

    /// Lets one held authentication go on (the connection's `welcome` follows).
    pub fn release_welcome(&self, _conn: u64) {
        self.hold.released.add_permits(1);
    }

    /// Calls `method` on connection `conn`'s client from the server (its answer is seen
    /// on the wire with [`RealServer::frame`]); the handle numbers its calls 1, 2, ...
    pub fn call(&self, conn: u64, method: &'static str, params: serde_json::Value) {
        let handle = self.handle(conn);
        tokio::spawn(async move {
            let _ = handle
                .request_timeout::<Payload>(method, &params, WAIT)
                .await;
        });
    }

    /// Refuses `channel` (join, pub, `$presence`, `$history`) from now on.
    pub fn forbid(&self, channel: &str) {
        self.forbidden.lock().unwrap().push(channel.to_owned());
    }

    /// How many connections of this node are subscribed to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.server
            .hub()
            .channels()
            .into_iter()
            .find(|(name, _)| name == channel)
            .map_or(0, |(_, n)| n)
    }

    /// Closes every connection from the server with `code` and `reason`.
    pub fn close_all_with_reason(&self, code: u16, reason: &'static str) {
        let ids: Vec<String> = self.proxy.ids.lock().unwrap().values().cloned().collect();
        for id in ids {
            if let Some(handle) = self.server.hub().connection(&id) {
                handle.close(CloseCode(code), reason);
            }
        }
    }

    /// Closes every connection from the server with `code`.
    pub fn close_all(&self, code: u16) {
        self.close_all_with_reason(code, "");
    }

    /// Drops every connection open now without a Close frame (the network fails).
    pub fn drop_all(&self) {
        let current = self.proxy.next_conn.load(Ordering::SeqCst) - 1;
        self.proxy.dropped.store(current, Ordering::SeqCst);
        self.proxy.kill.notify_waiters();
    }

    /// Connections open now stop forwarding in both directions but stay open (half-open);
    /// later ones are not affected.
    pub fn freeze(&self) {
        let current = self.proxy.next_conn.load(Ordering::SeqCst) - 1;
        self.proxy.frozen.store(current, Ordering::SeqCst);
    }

    /// Holds back what the server sends on every connection (nothing is lost: it is written
    /// when the pause ends), or ends the pause.
    pub fn pause(&self, paused: bool) {
        self.proxy.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.proxy.resumed.notify_waiters();
        }
    }

    /// Makes the server unreachable (new connections are closed at once) or reachable
    /// again.
    pub fn set_accepting(&self, accepting: bool) {
        self.proxy.accepting.store(accepting, Ordering::SeqCst);
    }

    /// Stops listening and drops every connection.
    pub async fn stop(mut self) {
        self.drop_all();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.server.shutdown();
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.drop_all();
        for task in &self.tasks {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn bind(port: u16) -> TcpListener {
    // Bounded: a port just released may take a moment to be bindable again.
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot bind 127.0.0.1:{port}");
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, proxy: Arc<ProxyState>) {
    // Bounded: a test opens a handful of connections.
    for _ in 0..10_000 {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        if !proxy.accepting.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let conn = proxy.next_conn.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(proxy_connection(conn, client, upstream, proxy.clone()));
    }
}

/// Reads an HTTP head (up to the empty line); the head and any bytes read past it.
async fn read_head(socket: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
    }
    None
}

/// The status (for a response) and the headers of an HTTP head.
fn parse_head(head: &[u8]) -> (u16, HeaderMap) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    (status, headers)
}

async fn proxy_connection(
    conn: u64,
    mut client: TcpStream,
    upstream: SocketAddr,
    proxy: Arc<ProxyState>,
) {
    let Some((request, client_rest)) = read_head(&mut client).await else {
        return;
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client sees its connection end.
        return;
    };
    let (_, request_headers) = parse_head(&request);
    if server.write_all(&request).await.is_err() || server.write_all(&client_rest).await.is_err() {
        return;
    }
    let Some((response, server_rest)) = read_head(&mut server).await else {
        return;
    };
    let (status, response_headers) = parse_head(&response);
    if status != 101 {
        let _ = proxy.events.send(Event::Refused {
            status,
            headers: request_headers,
        });
        let _ = client.write_all(&response).await;
        let _ = client.write_all(&server_rest).await;
        let _ = tokio::io::copy(&mut server, &mut client).await;
        return;
    }
    let codec = match response_headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
    {
        Some("plexus.v1.msgpack") => Codec::MsgPack,
        _ => Codec::Json,
    };
    let _ = proxy.events.send(Event::Upgrade {
        conn,
        headers: request_headers,
    });
    if client.write_all(&response).await.is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        conn,
        client_read,
        server_write,
        client_rest,
        Direction::FromClient,
        codec,
        proxy.clone(),
    );
    let down = pump(
        conn,
        server_read,
        client_write,
        server_rest,
        Direction::FromServer,
        codec,
        proxy.clone(),
    );
    let killed = async {
        loop {
            let notified = proxy.kill.notified();
            tokio::pin!(notified);
            // Registered before looking, so a drop in between is not missed.
            notified.as_mut().enable();
            if conn <= proxy.dropped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = killed => {}
    }
    let _ = proxy.events.send(Event::Gone { conn });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromClient,
    FromServer,
}

/// Forwards bytes unchanged, reporting the WebSocket frames that pass.
async fn pump(
    conn: u64,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    first: Vec<u8>,
    direction: Direction,
    codec: Codec,
    proxy: Arc<ProxyState>,
) {
    let mut parser = Parser::default();
    let mut pending = first;
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the sockets' lives (and a cap on reads).
    for _ in 0..10_000_000 {
        if direction == Direction::FromServer {
            // A pause holds the bytes back; it does not lose them.
            loop {
                let resumed = proxy.resumed.notified();
                tokio::pin!(resumed);
                resumed.as_mut().enable();
                if !proxy.paused.load(Ordering::SeqCst) {
                    break;
                }
                resumed.await;
            }
        }
        if !pending.is_empty() {
            if conn <= proxy.frozen.load(Ordering::SeqCst) {
                // Half-open: swallow the bytes, keep the socket open.
                pending.clear();
            } else {
                for message in parser.feed(&pending) {
                    report(conn, direction, codec, message, &proxy);
                }
                if to.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
            }
        }
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn report(conn: u64, direction: Direction, codec: Codec, message: Message, proxy: &ProxyState) {
    match (direction, message) {
        (Direction::FromClient, Message::Data(payload)) => match codec.decode(payload.into()) {
            Ok(Frame::Hello { token: None, .. }) if !proxy.auth => {}
            Ok(frame) => {
                let _ = proxy.events.send(Event::Frame { conn, frame });
            }
            Err(_) => {}
        },
        (Direction::FromClient, Message::Close(code)) => {
            let _ = proxy.events.send(Event::Close { conn, code });
        }
        (Direction::FromServer, Message::Data(payload)) => {
            if let Ok(Frame::Welcome { conn: id, .. }) = codec.decode(payload.into()) {
                proxy.ids.lock().unwrap().insert(conn, id);
                let _ = proxy.events.send(Event::Welcome { conn });
            }
        }
        _ => {}
    }
}

/// A complete WebSocket message.
enum Message {
    Data(Vec<u8>),
    Close(Option<u16>),
    /// Ping, pong, or a compressed message (not decoded here).
    Other,
}

/// Splits a byte stream into WebSocket messages (RFC 6455, 5.2), unmasking client frames
/// and joining fragments.
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
    /// The data of a fragmented message so far, and whether it is compressed.
    partial: Option<(Vec<u8>, bool)>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.buf.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while let Some((message, used)) = self.next() {
            self.buf.drain(..used);
            if let Some(message) = message {
                messages.push(message);
            }
        }
        messages
    }

    /// The next frame in the buffer, if complete: the message it ends (if any) and its
    /// length.
    fn next(&mut self) -> Option<(Option<Message>, usize)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let compressed = b[0] & 0x40 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return None,
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        let len = usize::try_from(len).ok()?;
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(key) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        let used = at + len;
        let message = match opcode {
            0x8 => Some(Message::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            )),
            0x1 | 0x2 if fin => Some(if compressed {
                Message::Other
            } else {
                Message::Data(payload)
            }),
            0x1 | 0x2 => {
                self.partial = Some((payload, compressed));
                None
            }
            0x0 => {
                let (mut data, compressed) = self.partial.take().unwrap_or_default();
                data.extend_from_slice(&payload);
                if fin {
                    Some(if compressed {
                        Message::Other
                    } else {
                        Message::Data(data)
                    })
                } else {
                    self.partial = Some((data, compressed));
                    None
                }
            }
            _ => Some(Message::Other),
        };
        Some((message, used))
    }
}

/// Waits until the client's status is `want` (within [`WAIT`]).
pub async fn wait_status(
    status: &mut tokio::sync::watch::Receiver<plexus_client::Status>,
    want: plexus_client::Status,
) {
    timeout(WAIT, status.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for status {want:?}"))
        .expect("status channel closed");
}

/// Connects a client and returns it with the proxy's number of its connection.
pub async fn connect_to(
    server: &mut RealServer,
    options: plexus_client::ClientOptions,
) -> (plexus_client::Client, u64) {
    let client = timeout(WAIT, plexus_client::connect(&server.url(), options))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let (conn, _) = server.upgrade().await;
    (client, conn)
}

/// A payload from a JSON value, in `codec`.
pub fn json_payload(codec: Codec, value: serde_json::Value) -> Payload {
    Payload::encode(codec, &value).unwrap()
}

/// An error body with `code` and `message`.
pub fn error(code: ErrorCode, message: &str) -> ErrorBody {
    ErrorBody::new(code, message)
}
