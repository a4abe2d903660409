//! A scripted plexus server for the client's tests of what a real server does not do (and,
//! until they move to the real server in `tests/real`, of channels): axum + yawc on
//! 127.0.0.1, speaking the protocol through plexus-protocol's codecs.
//!
//! Built-in methods (requests): `echo` (returns its params), `fail` (VALIDATION_ERROR with
//! data `{"path":"name"}`), `never` (no answer), `flaky` (no answer the first time it is
//! seen by this server, echo afterwards). Streams: `count` (params n: items 0..n, end),
//! `forever` (nothing), `fail_stream` (one item, then err), `credit` (params n: items 0..n,
//! honouring the credit window of `sub`). Every frame received is reported as an event.
//!
//! Channels: a small in-memory model shared by the server's connections ([`Channels`]):
//! per channel an epoch, an offset counter and a history of the last
//! [`Script::history_size`] publications. `join` (with `since`: `recovered` true and the
//! missed `msg`s replayed after the `res`, or false past the history window or in another
//! epoch), `leave`, `pub` (offsets assigned, fanned out as `msg` to joined connections,
//! publisher included), `pjoin`/`pleave` to the channel's subscribers (the joiner included),
//! `$presence` and `$history`. Channels named `secret:*` are `FORBIDDEN`; joins of `hole:*`
//! are never answered. The test publishes
//! with [`TestServer::publish`] and can reset a channel's epoch; the model outlives the
//! connections, so a client that reconnects finds its channels as they are. The test also
//! subscribes a connection itself ([`TestServer::subscribe`]: a `joined` frame, a
//! server-side subscription) and ends a connection's subscription
//! ([`TestServer::unsubscribe`]: a `left` frame, with or without error).
//!
//! Authentication ([`Script::require_hello`], [`Script::header_auth`]): a token `good` or
//! `good-*` is accepted, `forbidden*` is valid but not allowed (HTTP 403, or `reject`
//! `FORBIDDEN` + close 4003), anything else or none is refused (HTTP 401, or `reject`
//! `NOT_AUTHORIZED` + close 4001). [`TestServer::hold_welcome`] makes new connections wait
//! for [`TestServer::release_welcome`] before `welcome`, reading (and reporting) what the
//! client sends meanwhile. The server calls the client with [`TestServer::send`] (a
//! `$refresh` request, say); the client's answers arrive as frame events.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use plexus_client::{Status, connect};
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Frame, Payload, Position, PresenceEvent};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use yawc::{IncomingUpgrade, OpCode, Options};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// How the scripted server behaves.
#[derive(Clone, Debug)]
pub struct Script {
    /// `heartbeat` in `welcome`, in ms; pings are sent at this interval when `ping`.
    pub heartbeat_ms: u64,
    /// Send WebSocket pings every heartbeat.
    pub ping: bool,
    /// Wait for `hello` and judge its token (see the module docs): `welcome`, or `reject`
    /// and close 4001 / 4003.
    pub require_hello: bool,
    /// Require `Authorization: Bearer <token>` on the upgrade, else HTTP 401.
    pub require_token: Option<String>,
    /// Judge the token of the `Authorization: Bearer` header (see the module docs): HTTP
    /// 401 or 403 when it is not accepted.
    pub header_auth: bool,
    /// Accept permessage-deflate.
    pub compression: bool,
    /// How many publications each channel keeps in its history.
    pub history_size: usize,
    /// On a recovered join, also replay this many publications the client already had
    /// (at or before its `since`), to prove that the client drops duplicates.
    pub replay_overlap: u64,
    /// Send `pjoin` / `pleave` to a channel's subscribers.
    pub presence_events: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            heartbeat_ms: 25_000,
            ping: true,
            require_hello: false,
            require_token: None,
            header_auth: false,
            compression: false,
            history_size: 100,
            replay_overlap: 0,
            presence_events: true,
        }
    }
}

/// What the server saw.
#[derive(Clone, Debug)]
pub enum Event {
    /// A WebSocket upgrade was accepted.
    Upgrade { conn: u64, headers: HeaderMap },
    /// An upgrade request was refused with this HTTP status.
    Refused { status: u16, headers: HeaderMap },
    /// `welcome` was sent on connection `conn`.
    Welcome { conn: u64 },
    /// A frame arrived on connection `conn`.
    Frame { conn: u64, frame: Frame },
    /// The client sent a Close frame with this code.
    Close { conn: u64, code: Option<u16> },
    /// Connection `conn` ended.
    Gone { conn: u64 },
}

enum Command {
    Send(Frame),
    /// A publication for this connection, encoded in its codec.
    Msg {
        channel: String,
        offset: u64,
        value: serde_json::Value,
    },
    /// A presence event for this connection.
    Presence {
        event: PresenceEvent,
        channel: String,
        member: serde_json::Value,
    },
    /// A `joined` frame for this connection, its `d` encoded in its codec.
    Joined {
        channel: String,
        value: serde_json::Value,
    },
    /// Answered once every command before it was written.
    Barrier(oneshot::Sender<()>),
    SendRaw(String),
    Close(u16, String),
    /// Send the `welcome` held by [`TestServer::hold_welcome`].
    Welcome,
    Drop,
    Silence,
}

struct Shared {
    script: Script,
    events: mpsc::UnboundedSender<Event>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Command>>>,
    next_conn: AtomicU64,
    flaky_seen: AtomicBool,
    /// Upgrades are refused with 503 while false.
    accepting: AtomicBool,
    /// New connections wait for [`Command::Welcome`] before `welcome` while true.
    hold_welcome: AtomicBool,
    channels: Mutex<Channels>,
    /// Channels refused from now on, besides `secret:*`.
    forbidden: Mutex<Vec<String>>,
}

/// The channel model: every channel the server knows.
#[derive(Default)]
pub struct Channels {
    map: HashMap<String, Chan>,
}

/// One channel of the model.
struct Chan {
    epoch: String,
    offset: u64,
    /// The last publications, oldest first.
    history: VecDeque<(u64, serde_json::Value)>,
    /// Joined connections.
    subscribers: BTreeSet<u64>,
}

impl Chan {
    fn new(epoch: String) -> Self {
        Self {
            epoch,
            offset: 0,
            history: VecDeque::new(),
            subscribers: BTreeSet::new(),
        }
    }
}

fn member(conn: u64) -> serde_json::Value {
    serde_json::json!({"user": null, "conn": format!("c{conn}"), "info": {"n": conn}})
}

impl Shared {
    fn is_forbidden(&self, channel: &str) -> bool {
        channel.starts_with("secret:")
            || self.forbidden.lock().unwrap().iter().any(|c| c == channel)
    }

    fn chan<'a>(channels: &'a mut Channels, name: &str) -> &'a mut Chan {
        channels
            .map
            .entry(name.to_owned())
            .or_insert_with(|| Chan::new("e1".into()))
    }

    fn send_to(&self, conn: u64, command: Command) {
        if let Some(tx) = self.conns.lock().unwrap().get(&conn) {
            let _ = tx.send(command);
        }
    }

    /// Assigns the next offset, keeps the publication and fans it out.
    fn publish(&self, channel: &str, value: serde_json::Value) -> Position {
        let mut channels = self.channels.lock().unwrap();
        let chan = Self::chan(&mut channels, channel);
        chan.offset += 1;
        let offset = chan.offset;
        chan.history.push_back((offset, value.clone()));
        while chan.history.len() > self.script.history_size {
            chan.history.pop_front();
        }
        for conn in &chan.subscribers {
            self.send_to(
                *conn,
                Command::Msg {
                    channel: channel.to_owned(),
                    offset,
                    value: value.clone(),
                },
            );
        }
        Position {
            epoch: chan.epoch.clone(),
            offset,
        }
    }

    fn presence_event(&self, chan: &Chan, event: PresenceEvent, channel: &str, conn: u64) {
        if !self.script.presence_events {
            return;
        }
        for to in &chan.subscribers {
            self.send_to(
                *to,
                Command::Presence {
                    event,
                    channel: channel.to_owned(),
                    member: member(conn),
                },
            );
        }
    }

    /// Joins `conn`: the `res` value and the publications to replay after it.
    fn join(
        &self,
        conn: u64,
        channel: &str,
        since: Option<&Position>,
    ) -> (serde_json::Value, Vec<(u64, serde_json::Value)>) {
        let mut channels = self.channels.lock().unwrap();
        let chan = Self::chan(&mut channels, channel);
        let mut recovered = false;
        let mut missed = Vec::new();
        if let Some(since) = since
            && since.epoch == chan.epoch
            && since.offset <= chan.offset
        {
            let oldest = chan.history.front().map_or(chan.offset + 1, |(o, _)| *o);
            if since.offset + 1 >= oldest {
                recovered = true;
                let from = since.offset.saturating_sub(self.script.replay_overlap);
                missed = chan
                    .history
                    .iter()
                    .filter(|(o, _)| *o > from)
                    .cloned()
                    .collect();
            }
        }
        let res = serde_json::json!({
            "epoch": chan.epoch,
            "offset": chan.offset,
            "recovered": recovered,
        });
        if chan.subscribers.insert(conn) {
            // The joiner gets its own pjoin too, after its `res` (commands come after).
            self.presence_event(chan, PresenceEvent::Join, channel, conn);
        }
        (res, missed)
    }

    /// Subscribes `conn` on the server's initiative: `joined` first, then (as for a join)
    /// the presence events and publications.
    fn server_join(&self, conn: u64, channel: &str) -> Position {
        let mut channels = self.channels.lock().unwrap();
        let chan = Self::chan(&mut channels, channel);
        let value = serde_json::json!({
            "epoch": chan.epoch,
            "offset": chan.offset,
            "recovered": false,
        });
        self.send_to(
            conn,
            Command::Joined {
                channel: channel.to_owned(),
                value,
            },
        );
        if chan.subscribers.insert(conn) {
            self.presence_event(chan, PresenceEvent::Join, channel, conn);
        }
        Position {
            epoch: chan.epoch.clone(),
            offset: chan.offset,
        }
    }

    fn leave(&self, conn: u64, channel: &str) {
        let mut channels = self.channels.lock().unwrap();
        if let Some(chan) = channels.map.get_mut(channel)
            && chan.subscribers.remove(&conn)
        {
            self.presence_event(chan, PresenceEvent::Leave, channel, conn);
        }
    }

    fn leave_all(&self, conn: u64) {
        let names: Vec<String> = self.channels.lock().unwrap().map.keys().cloned().collect();
        for name in names {
            self.leave(conn, &name);
        }
    }

    fn presence(&self, channel: &str) -> serde_json::Value {
        let channels = self.channels.lock().unwrap();
        let members: Vec<serde_json::Value> = channels
            .map
            .get(channel)
            .map(|chan| chan.subscribers.iter().map(|c| member(*c)).collect())
            .unwrap_or_default();
        serde_json::Value::Array(members)
    }

    fn history(&self, params: &serde_json::Value) -> serde_json::Value {
        let channel = params["ch"].as_str().unwrap_or_default();
        let mut channels = self.channels.lock().unwrap();
        let chan = Self::chan(&mut channels, channel);
        let since = params.get("since").filter(|s| !s.is_null());
        let after = match since {
            Some(since) if since["epoch"].as_str() == Some(chan.epoch.as_str()) => {
                since["offset"].as_u64().unwrap_or(0)
            }
            _ => 0,
        };
        let limit = params["limit"].as_u64().unwrap_or(u64::MAX);
        let pubs: Vec<serde_json::Value> = chan
            .history
            .iter()
            .filter(|(o, _)| *o > after)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(o, d)| serde_json::json!({"o": o, "d": d}))
            .collect();
        serde_json::json!({"epoch": chan.epoch, "offset": chan.offset, "pubs": pubs})
    }
}

/// A running scripted server.
pub struct TestServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(script: Script) -> Self {
        Self::start_on(0, script).await
    }

    /// Starts on a given port of 127.0.0.1 (to restart "the same server").
    pub async fn start_on(port: u16, script: Script) -> Self {
        let mut listener = None;
        // Bounded: a port just released may take a moment to be bindable again.
        for _ in 0..50 {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script,
            events: events_tx,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            flaky_seen: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            hold_welcome: AtomicBool::new(false),
            channels: Mutex::new(Channels::default()),
            forbidden: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/ws", get(upgrade))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            events,
            task: Some(task),
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

    /// The next frame received (skipping other events), with its connection.
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

    /// The next upgrade (skipping other events): connection id and headers.
    pub async fn upgrade(&mut self) -> (u64, HeaderMap) {
        for _ in 0..1000 {
            if let Event::Upgrade { conn, headers } = self.event().await {
                return (conn, headers);
            }
        }
        panic!("no upgrade among 1000 events");
    }

    fn command(&self, conn: u64, cmd: Command) {
        if let Some(tx) = self.shared.conns.lock().unwrap().get(&conn) {
            let _ = tx.send(cmd);
        }
    }

    fn command_all(&self, make: impl Fn() -> Command) {
        for tx in self.shared.conns.lock().unwrap().values() {
            let _ = tx.send(make());
        }
    }

    /// Sends a frame on connection `conn`.
    pub fn send(&self, conn: u64, frame: Frame) {
        self.command(conn, Command::Send(frame));
    }

    /// Sends a raw text message on connection `conn`.
    pub fn send_raw(&self, conn: u64, text: &str) {
        self.command(conn, Command::SendRaw(text.to_owned()));
    }

    /// Closes every connection with a Close frame carrying `code`.
    pub fn close_all(&self, code: u16) {
        self.close_all_with_reason(code, "");
    }

    /// Closes every connection with a Close frame carrying `code` and `reason`.
    pub fn close_all_with_reason(&self, code: u16, reason: &str) {
        self.command_all(|| Command::Close(code, reason.to_owned()));
    }

    /// Connections accepted from now on wait for [`TestServer::release_welcome`] before
    /// `welcome` (after `hello` when the script requires one), while `hold` is true.
    pub fn hold_welcome(&self, hold: bool) {
        self.shared.hold_welcome.store(hold, Ordering::SeqCst);
    }

    /// Sends the `welcome` that connection `conn` holds.
    pub fn release_welcome(&self, conn: u64) {
        self.command(conn, Command::Welcome);
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

    /// The next refused upgrade (skipping other events): its status and headers.
    pub async fn refused(&mut self) -> (u16, HeaderMap) {
        for _ in 0..1000 {
            if let Event::Refused { status, headers } = self.event().await {
                return (status, headers);
            }
        }
        panic!("no refused upgrade among 1000 events");
    }

    /// Drops every connection without a Close frame (TCP close).
    pub fn drop_all(&self) {
        self.command_all(|| Command::Drop);
    }

    /// Stops answering and pinging on every connection (the socket stays open).
    pub fn silence_all(&self) {
        self.command_all(|| Command::Silence);
    }

    /// Publishes `value` to `channel` as the server application would: the next offset,
    /// kept in the history, `msg` to every joined connection. Returns its position.
    pub fn publish(&self, channel: &str, value: serde_json::Value) -> Position {
        self.shared.publish(channel, value)
    }

    /// Subscribes connection `conn` to `channel` as the server application would (a
    /// server-side subscription): `joined` with the channel's position, then its
    /// publications. Returns that position.
    pub fn subscribe(&self, conn: u64, channel: &str) -> Position {
        self.shared.server_join(conn, channel)
    }

    /// Ends connection `conn`'s subscription to `channel` on the server's initiative: no
    /// publication is sent to it any more, and it gets `left` with `error` (for example
    /// `UNAVAILABLE`: the channel's stream was interrupted) after what was sent before.
    pub fn unsubscribe(&self, conn: u64, channel: &str, error: Option<ErrorBody>) {
        self.shared.leave(conn, channel);
        self.send(
            conn,
            Frame::Left {
                channel: channel.to_owned(),
                error,
            },
        );
    }

    /// The channel loses its history: a new epoch, offsets from 0 again.
    pub fn reset_channel(&self, channel: &str, epoch: &str) {
        let mut channels = self.shared.channels.lock().unwrap();
        let chan = Shared::chan(&mut channels, channel);
        chan.epoch = epoch.to_owned();
        chan.offset = 0;
        chan.history.clear();
    }

    /// Refuses `channel` (join, pub, `$presence`, `$history`) from now on.
    pub fn forbid(&self, channel: &str) {
        self.shared
            .forbidden
            .lock()
            .unwrap()
            .push(channel.to_owned());
    }

    /// How many connections are joined to `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        let channels = self.shared.channels.lock().unwrap();
        channels.map.get(channel).map_or(0, |c| c.subscribers.len())
    }

    /// Refuses (503) or accepts WebSocket upgrades from now on.
    pub fn set_accepting(&self, accepting: bool) {
        self.shared.accepting.store(accepting, Ordering::SeqCst);
    }

    /// Resolves once connection `conn` wrote everything commanded before (publications
    /// included): what the client reads next on that connection comes after them.
    pub async fn barrier(&self, conn: u64) {
        let (tx, rx) = oneshot::channel();
        self.command(conn, Command::Barrier(tx));
        timeout(WAIT, rx)
            .await
            .expect("timed out waiting for the barrier")
            .expect("connection gone before the barrier");
    }

    /// Waits until connection `conn` ended (its subscriptions are gone by then).
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

    /// Stops listening and drops every connection.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.drop_all();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for tx in self.shared.conns.lock().unwrap().values() {
            let _ = tx.send(Command::Drop);
        }
    }
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: IncomingUpgrade,
) -> Response {
    if !shared.accepting.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut refusal = None;
    if let Some(token) = &shared.script.require_token
        && bearer != Some(token.as_str())
    {
        refusal = Some(StatusCode::UNAUTHORIZED);
    }
    if shared.script.header_auth {
        refusal = match verdict(bearer) {
            Verdict::Welcome => refusal,
            Verdict::NotAuthorized => Some(StatusCode::UNAUTHORIZED),
            Verdict::Forbidden => Some(StatusCode::FORBIDDEN),
        };
    }
    if let Some(status) = refusal {
        let _ = shared.events.send(Event::Refused {
            status: status.as_u16(),
            headers,
        });
        return status.into_response();
    }
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let Some(codec) = Codec::negotiate(offered) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut options = Options::default().with_utf8();
    if shared.script.compression {
        options = options.with_balanced_compression();
    }
    let Ok((response, fut)) = ws.upgrade(options) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut response = response.into_response();
    if offered.is_some() {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    shared.conns.lock().unwrap().insert(conn, tx);
    let _ = shared.events.send(Event::Upgrade { conn, headers });
    tokio::spawn(async move {
        if let Ok(ws) = fut.await {
            serve(shared.clone(), conn, codec, ws, rx).await;
        }
        shared.conns.lock().unwrap().remove(&conn);
        shared.leave_all(conn);
        let _ = shared.events.send(Event::Gone { conn });
    });
    response
}

type Ws = yawc::WebSocket<yawc::HttpStream>;

fn message(codec: Codec, frame: &Frame) -> yawc::Frame {
    let bytes = codec.encode(frame).expect("encode");
    if codec.is_binary() {
        yawc::Frame::binary(bytes)
    } else {
        yawc::Frame::text(bytes)
    }
}

fn json(codec: Codec, value: serde_json::Value) -> Payload {
    Payload::encode(codec, &value).unwrap()
}

/// What the server makes of a credential (see the module docs).
enum Verdict {
    Welcome,
    NotAuthorized,
    Forbidden,
}

fn verdict(token: Option<&str>) -> Verdict {
    match token {
        Some(t) if t == "good" || t.starts_with("good-") => Verdict::Welcome,
        Some(t) if t.starts_with("forbidden") => Verdict::Forbidden,
        _ => Verdict::NotAuthorized,
    }
}

fn forbidden(id: u64) -> Frame {
    Frame::Err {
        id: Some(id),
        error: ErrorBody::new(ErrorCode::FORBIDDEN, "not allowed"),
    }
}

/// One server-side stream in progress.
struct Outgoing {
    next: u64,
    total: u64,
    credit: Option<u64>,
}

async fn serve(
    shared: Arc<Shared>,
    conn: u64,
    codec: Codec,
    mut ws: Ws,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let script = shared.script.clone();
    let events = shared.events.clone();
    if script.require_hello {
        let first = timeout(WAIT, ws.next_frame()).await;
        let Ok(Ok(first)) = first else { return };
        let frame = codec.decode(first.into_payload());
        if let Ok(frame) = &frame {
            let _ = events.send(Event::Frame {
                conn,
                frame: frame.clone(),
            });
        }
        let token = match &frame {
            Ok(Frame::Hello { token, .. }) => token.as_deref(),
            _ => None,
        };
        let refusal = match verdict(token) {
            Verdict::Welcome => None,
            Verdict::NotAuthorized => Some((ErrorCode::NOT_AUTHORIZED, "bad token", 4001u16)),
            Verdict::Forbidden => Some((ErrorCode::FORBIDDEN, "not allowed", 4003u16)),
        };
        if let Some((code, text, close)) = refusal {
            let reject = Frame::Reject {
                error: ErrorBody::new(code, text),
            };
            let _ = ws.send(message(codec, &reject)).await;
            let _ = ws.send(yawc::Frame::close(close.into(), text)).await;
            // Read until the client's Close reply ends the connection (bounded).
            let _ = timeout(Duration::from_secs(2), async {
                while ws.next_frame().await.is_ok() {}
            })
            .await;
            return;
        }
    }
    if shared.hold_welcome.load(Ordering::SeqCst) {
        // Bounded by the test: it releases the welcome or drops the connection.
        loop {
            tokio::select! {
                frame = ws.next_frame() => {
                    let Ok(frame) = frame else { return };
                    if matches!(frame.opcode(), OpCode::Text | OpCode::Binary)
                        && let Ok(frame) = codec.decode(frame.into_payload())
                    {
                        let _ = events.send(Event::Frame { conn, frame });
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Welcome) => break,
                    Some(Command::Drop) | None => return,
                    Some(_) => {}
                },
            }
        }
    }
    let welcome = Frame::Welcome {
        conn: format!("c{conn}"),
        node: "n1".into(),
        heartbeat: script.heartbeat_ms,
        user: None,
    };
    if ws.send(message(codec, &welcome)).await.is_err() {
        return;
    }
    let _ = events.send(Event::Welcome { conn });

    let period = Duration::from_millis(script.heartbeat_ms.clamp(1, 86_400_000));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut silent = false;
    let mut closing = false;
    let mut streams: HashMap<u64, Outgoing> = HashMap::new();
    // Bounded by the connection's life: it ends when the socket does or on `Drop`.
    for _ in 0..1_000_000 {
        // Send what stream credit allows.
        let mut out = Vec::new();
        if !silent {
            streams.retain(|id, s| {
                while s.next < s.total && s.credit.is_none_or(|c| c > 0) {
                    out.push(Frame::Item {
                        id: *id,
                        data: json(codec, serde_json::json!(s.next)),
                    });
                    s.next += 1;
                    if let Some(c) = &mut s.credit {
                        *c -= 1;
                    }
                }
                if s.next >= s.total {
                    out.push(Frame::End { id: *id });
                    false
                } else {
                    true
                }
            });
        }
        for frame in out {
            if ws.send(message(codec, &frame)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            frame = ws.next_frame() => {
                let Ok(frame) = frame else { return };
                match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {}
                    OpCode::Close => {
                        let code = frame.close_code().map(u16::from);
                        let _ = events.send(Event::Close { conn, code });
                        continue;
                    }
                    _ => continue,
                }
                let frame = match codec.decode(frame.into_payload()) {
                    Ok(frame) => frame,
                    Err(e) => panic!("client sent an undecodable frame: {e}"),
                };
                // A client without a credential says an empty `hello`; a server that does
                // not authenticate ignores it, as the plexus server does.
                if matches!(frame, Frame::Hello { token: None, .. }) && !script.require_hello {
                    continue;
                }
                let _ = events.send(Event::Frame { conn, frame: frame.clone() });
                if silent || closing {
                    continue;
                }
                let reply = match frame {
                    Frame::Req { id, method, data, .. } => match method.as_str() {
                        "echo" => Some(Frame::Res { id, data }),
                        "fail" => Some(Frame::Err {
                            id: Some(id),
                            error: ErrorBody::new(ErrorCode::VALIDATION_ERROR, "name is required")
                                .with_data(json(codec, serde_json::json!({"path": "name"}))),
                        }),
                        "flaky" => {
                            if shared.flaky_seen.swap(true, Ordering::SeqCst) {
                                Some(Frame::Res { id, data })
                            } else {
                                None
                            }
                        }
                        "never" => None,
                        "$presence" | "$history" => {
                            let params = data.to_json_value().unwrap_or_default();
                            let channel = params["ch"].as_str().unwrap_or_default();
                            if shared.is_forbidden(channel) {
                                Some(forbidden(id))
                            } else if method == "$presence" {
                                Some(Frame::Res { id, data: json(codec, shared.presence(channel)) })
                            } else {
                                Some(Frame::Res { id, data: json(codec, shared.history(&params)) })
                            }
                        }
                        _ => Some(Frame::Err {
                            id: Some(id),
                            error: ErrorBody::new(ErrorCode::NOT_FOUND, "no such method"),
                        }),
                    },
                    Frame::Sub { id, method, data, credit, .. } => match method.as_str() {
                        "count" | "credit" => {
                            let total = data.decode::<u64>().unwrap_or(0);
                            let credit = if method == "credit" { credit.map(u64::from) } else { None };
                            streams.insert(id, Outgoing { next: 0, total, credit });
                            None
                        }
                        "forever" => None,
                        "fail_stream" => {
                            let item = Frame::Item { id, data: json(codec, serde_json::json!(0)) };
                            if ws.send(message(codec, &item)).await.is_err() {
                                return;
                            }
                            Some(Frame::Err {
                                id: Some(id),
                                error: ErrorBody::new(ErrorCode::new("BROKEN"), "stream broke"),
                            })
                        }
                        _ => Some(Frame::Err {
                            id: Some(id),
                            error: ErrorBody::new(ErrorCode::NOT_FOUND, "no such stream"),
                        }),
                    },
                    Frame::Credit { id, n } => {
                        if let Some(Outgoing { credit: Some(c), .. }) = streams.get_mut(&id) {
                            *c += u64::from(n);
                        }
                        None
                    }
                    Frame::Cancel { id } => {
                        streams.remove(&id);
                        None
                    }
                    Frame::Join { id, channel, since, .. } => {
                        if shared.is_forbidden(&channel) {
                            Some(forbidden(id))
                        } else if channel.starts_with("hole:") {
                            None
                        } else {
                            let (res, missed) = shared.join(conn, &channel, since.as_ref());
                            let res = Frame::Res { id, data: json(codec, res) };
                            if ws.send(message(codec, &res)).await.is_err() {
                                return;
                            }
                            for (offset, value) in missed {
                                let msg = Frame::Msg { channel: channel.clone(), offset, data: json(codec, value) };
                                if ws.send(message(codec, &msg)).await.is_err() {
                                    return;
                                }
                            }
                            None
                        }
                    }
                    Frame::Leave { id, channel } => {
                        shared.leave(conn, &channel);
                        Some(Frame::Res { id, data: Payload::null(codec) })
                    }
                    Frame::Pub { id, channel, data } => {
                        if shared.is_forbidden(&channel) {
                            Some(forbidden(id))
                        } else {
                            let position = shared.publish(&channel, data.to_json_value().unwrap_or_default());
                            let res = serde_json::json!({"epoch": position.epoch, "offset": position.offset});
                            Some(Frame::Res { id, data: json(codec, res) })
                        }
                    }
                    Frame::Ping => Some(Frame::Pong),
                    _ => None,
                };
                if let Some(reply) = reply
                    && ws.send(message(codec, &reply)).await.is_err()
                {
                    return;
                }
            }
            command = commands.recv() => match command {
                Some(Command::Send(frame)) => {
                    if ws.send(message(codec, &frame)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Msg { channel, offset, value }) => {
                    let msg = Frame::Msg { channel, offset, data: json(codec, value) };
                    if ws.send(message(codec, &msg)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Presence { event, channel, member }) => {
                    let frame = Frame::Presence { event, channel, data: json(codec, member) };
                    if ws.send(message(codec, &frame)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Joined { channel, value }) => {
                    let frame = Frame::Joined { channel, data: json(codec, value) };
                    if ws.send(message(codec, &frame)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Barrier(done)) => {
                    let _ = done.send(());
                }
                Some(Command::SendRaw(text)) => {
                    if ws.send(yawc::Frame::text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Close(code, reason)) => {
                    closing = true;
                    if ws.send(yawc::Frame::close(code.into(), reason)).await.is_err() {
                        return;
                    }
                }
                Some(Command::Drop) | None => return,
                Some(Command::Silence) => silent = true,
                Some(Command::Welcome) => {}
            },
            _ = ping.tick(), if script.ping && !silent && !closing => {
                if ws.send(yawc::Frame::ping(bytes::Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits until the client's status is `want` (within [`WAIT`]).
pub async fn wait_status(status: &mut watch::Receiver<Status>, want: Status) {
    timeout(WAIT, status.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for status {want:?}"))
        .expect("status channel closed");
}

/// Connects a client and returns it with the server's id of its connection.
pub async fn connect_to(
    server: &mut TestServer,
    options: plexus_client::ClientOptions,
) -> (plexus_client::Client, u64) {
    let client = timeout(WAIT, connect(&server.url(), options))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let (conn, _) = server.upgrade().await;
    (client, conn)
}

/// A payload from a JSON value.
pub fn json_payload(codec: Codec, value: serde_json::Value) -> Payload {
    json(codec, value)
}
