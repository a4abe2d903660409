//! The session loop over an in-memory pipe, on tokio's paused clock: heartbeats, timeouts,
//! the handshake, cancellation, the drain and credential refresh, with exact times instead
//! of wall-clock windows. The end-to-end tests (`crates/plexus/tests`) run the same
//! behaviour over real sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use plexus_protocol::{CloseCode, Codec};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Accepted, SessionEnv};
use crate::auth::{Admission, AuthError, fn_authenticator};
use crate::config::{EndpointConfig, Limits};
use crate::conn::{ConnectionHandle, DisconnectReason, OutboundQueue, SharedSocket};
use crate::guard::ConnectionLimiter;
use crate::hub::Hub;
use crate::principal::Principal;
use crate::rpc::context::{CallContext, CancelReason};
use crate::rpc::router::Router;
use crate::{Namespaces, RpcError};

/// What the server side of a test tells the test.
#[derive(Debug)]
enum Seen {
    Connected(ConnectionHandle),
    Disconnected(DisconnectReason),
}

/// A server-side setting for one test.
struct Setup {
    router: Router,
    limits: Limits,
    /// Authenticate with tokens `ok-<seconds>` (valid that many seconds) and
    /// `admin-<seconds>` (with the `admin` permission).
    authenticate: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            router: Router::new(),
            limits: Limits::default(),
            authenticate: false,
        }
    }
}

/// A principal for a test token: `ok-<s>` or `admin-<s>`, expiring `s` seconds from now.
fn principal_of(token: &str) -> Result<Principal, AuthError> {
    let (user, seconds) = token
        .split_once('-')
        .ok_or_else(|| AuthError::not_authorized("bad token"))?;
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| AuthError::not_authorized("bad token"))?;
    let permissions = match user {
        "admin" => vec!["admin".to_owned()],
        "ok" => vec![],
        _ => return Err(AuthError::not_authorized("bad token")),
    };
    Ok(Principal::user("ann", permissions)
        .with_expiry(SystemTime::now() + Duration::from_secs(seconds)))
}

fn env(setup: Setup) -> (Arc<SessionEnv>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let on_connect = {
        let tx = tx.clone();
        Arc::new(move |conn: ConnectionHandle| {
            let _ = tx.send(Seen::Connected(conn));
            Box::pin(async {}) as crate::rpc::handler::BoxFuture<()>
        })
    };
    let on_disconnect = Arc::new(move |conn: ConnectionHandle, reason| {
        assert!(conn.is_closed(), "told after the connection ended");
        let _ = tx.send(Seen::Disconnected(reason));
        Box::pin(async {}) as crate::rpc::handler::BoxFuture<()>
    });
    let admission = setup.authenticate.then(|| {
        let authenticator = fn_authenticator(|request| {
            let token = request.token().map(str::to_owned);
            async move { principal_of(token.as_deref().unwrap_or_default()) }
        });
        Arc::new(Admission {
            authenticator: Arc::new(authenticator),
            cookie: "plexus_token".into(),
            connect_permission: None,
        })
    });
    let env = SessionEnv {
        handlers: crate::rpc::pool::HandlerPool::one(setup.router),
        hub: Hub::new(Namespaces::new()),
        admission,
        relay: None,
        limits: setup.limits,
        node: "test".into(),
        extensions: Arc::default(),
        on_connect: Some(on_connect),
        on_disconnect: Some(on_disconnect),
        shutting_down: AtomicBool::new(false),
        open: AtomicUsize::new(0),
    };
    (Arc::new(env), seen)
}

/// The client's end of the pipe: it writes masked frames by hand and reads the server's
/// frames as they are, so that it answers nothing (not even pings) unless told to.
struct Peer {
    io: DuplexStream,
}

/// A frame the server sent: its opcode and payload.
type RawFrame = (u8, Vec<u8>);

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl Peer {
    /// The next frame, or `None` once the server dropped the pipe.
    async fn frame(&mut self) -> Option<RawFrame> {
        let mut head = [0u8; 2];
        self.io.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => usize::from(self.io.read_u16().await.ok()?),
            127 => usize::try_from(self.io.read_u64().await.ok()?).ok()?,
            n => usize::from(n),
        };
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    }

    /// The next text frame as JSON, answering pings meanwhile.
    async fn json(&mut self) -> Value {
        loop {
            match self.frame().await {
                Some((TEXT, payload)) => return serde_json::from_slice(&payload).unwrap(),
                Some((PING, payload)) => self.send(PONG, &payload).await,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads up to the close frame (answering pings meanwhile); its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((CLOSE, payload)) => return u16::from_be_bytes([payload[0], payload[1]]),
                Some((PING, payload)) => self.send(PONG, &payload).await,
                Some(_) => continue,
                None => panic!("the pipe ended without a close frame"),
            }
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "small frames only");
        // Masked with a zero key: the bytes stay as they are.
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send(TEXT, value.to_string().as_bytes()).await;
    }
}

/// Starts a session on one end of a pipe; `principal` `None` makes it wait for `hello`.
fn connect(env: &Arc<SessionEnv>, principal: Option<Principal>) -> Peer {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let config = EndpointConfig::default();
    let queue = Arc::new(OutboundQueue::new(env.limits.outbound_queue));
    let socket = SharedSocket::new(queue.clone(), Box::new(server), false, usize::MAX);
    let ws = yawc::WebSocket::from_stream(socket, yawc::Role::Server, config.ws_options())
        .expect("a server socket");
    let limiter = ConnectionLimiter::new(10, 10);
    let accepted = Accepted {
        codec: Codec::Json,
        remote: None,
        headers: http::HeaderMap::new(),
        query: None,
        principal,
        slot: limiter
            .try_acquire(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("a slot"),
    };
    tokio::spawn(super::run(ws, queue, env.clone(), accepted));
    Peer { io: client }
}

/// A session of an anonymous client, after its `welcome`; the connection's handle.
async fn welcomed(
    env: &Arc<SessionEnv>,
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) -> (Peer, ConnectionHandle) {
    let mut peer = connect(env, Some(Principal::anonymous()));
    let welcome = peer.json().await;
    assert_eq!(welcome["t"], "welcome", "{welcome}");
    let Some(Seen::Connected(conn)) = seen.recv().await else {
        panic!("on_connect")
    };
    (peer, conn)
}

async fn disconnected(seen: &mut mpsc::UnboundedReceiver<Seen>) -> DisconnectReason {
    loop {
        match seen.recv().await {
            Some(Seen::Disconnected(reason)) => return reason,
            Some(Seen::Connected(_)) => continue,
            None => panic!("the session's hooks are gone"),
        }
    }
}

fn heartbeat(interval: Duration) -> Setup {
    Setup {
        limits: Limits::default().heartbeat_interval(interval),
        ..Setup::default()
    }
}

const INTERVAL: Duration = Duration::from_secs(10);

// ---- heartbeat ------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_pinged_then_closed_4002_after_two_intervals() {
    let (env, mut seen) = env(heartbeat(INTERVAL));
    let started = Instant::now();
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    let mut pings = Vec::new();
    let code = loop {
        match peer.frame().await {
            Some((PING, _)) => pings.push(started.elapsed()),
            Some((CLOSE, payload)) => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    assert_eq!(pings, [INTERVAL], "one ping, at the first beat");
    assert_eq!(started.elapsed(), INTERVAL * 2, "closed at the second beat");
    // The peer never answers the close: the session gives up after its close timeout.
    assert_eq!(
        disconnected(&mut seen).await,
        DisconnectReason::ServerClosed(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_stays_connected() {
    let (env, mut seen) = env(heartbeat(INTERVAL));
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    let until = Instant::now() + INTERVAL * 5 + INTERVAL / 2;
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, peer.frame()).await {
        match frame {
            Some((PING, payload)) => {
                pings += 1;
                peer.send(PONG, &payload).await;
            }
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    assert_eq!(pings, 5, "a ping every interval");
    assert!(seen.try_recv().is_err(), "no disconnect");
    assert_eq!(env.open.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn application_frames_count_as_alive() {
    let (env, mut seen) = env(heartbeat(INTERVAL));
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    // Never a WebSocket pong, as a browser that cannot answer pings: `{"t":"ping"}` instead.
    for _ in 0..10 {
        tokio::time::sleep(INTERVAL / 2).await;
        peer.send_json(json!({"t": "ping"})).await;
        assert_eq!(peer.json().await, json!({"t": "pong"}));
    }
    assert!(seen.try_recv().is_err(), "no disconnect");
}

// ---- timeouts ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_1000_after_the_idle_timeout() {
    let setup = Setup {
        limits: Limits::default().idle_timeout(Duration::from_secs(30)),
        ..Setup::default()
    };
    let (env, mut seen) = env(setup);
    let started = Instant::now();
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    assert_eq!(peer.close_code().await, 1000);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(
        disconnected(&mut seen).await,
        DisconnectReason::ServerClosed(CloseCode::NORMAL, "idle timeout".into())
    );
}

/// A router whose `sleep` request sleeps its params' seconds; a cancelled one reports why.
fn sleeper(cancelled: mpsc::UnboundedSender<CancelReason>) -> Router {
    Router::new().request("sleep", move |ctx: CallContext, secs: u64| {
        let cancelled = cancelled.clone();
        async move {
            ctx.on_cancel(move |reason| {
                let _ = cancelled.send(reason);
            });
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, RpcError>(secs)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_call_in_progress_is_not_idleness() {
    let setup = Setup {
        router: sleeper(mpsc::unbounded_channel().0),
        limits: Limits::default().idle_timeout(Duration::from_secs(30)),
        ..Setup::default()
    };
    let (env, mut seen) = env(setup);
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    let started = Instant::now();
    // The call outlasts the idle timeout twice over; it still gets its answer.
    peer.send_json(json!({"t": "req", "id": 1, "m": "sleep", "d": 70}))
        .await;
    assert_eq!(peer.json().await, json!({"t": "res", "id": 1, "d": 70}));
    assert_eq!(started.elapsed(), Duration::from_secs(70));
    // Then the connection is idle, and closed as such, one idle timeout after the answer.
    assert_eq!(peer.close_code().await, 1000);
    assert_eq!(started.elapsed(), Duration::from_secs(100));
    assert_eq!(
        disconnected(&mut seen).await,
        DisconnectReason::ServerClosed(CloseCode::NORMAL, "idle timeout".into())
    );
}

#[tokio::test(start_paused = true)]
async fn no_hello_within_the_handshake_timeout_closes_4000() {
    let (env, mut seen) = env(Setup {
        authenticate: true,
        ..Setup::default()
    });
    let started = Instant::now();
    let mut peer = connect(&env, None);
    assert_eq!(peer.close_code().await, 4000);
    assert_eq!(started.elapsed(), env.limits.handshake_timeout);
    assert!(seen.try_recv().is_err(), "never welcomed: no hooks");
}

// ---- cancellation and the drain ----------------------------------------------------------

/// Nothing arrives for a minute (of paused time).
async fn silence(peer: &mut Peer) {
    match tokio::time::timeout(Duration::from_secs(60), peer.json()).await {
        Err(_) => {}
        Ok(frame) => panic!("expected silence, got {frame}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_runs_its_cleanup_at_once_and_sends_nothing() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let (env, mut seen) = env(Setup {
        router: sleeper(cancelled_tx),
        ..Setup::default()
    });
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    peer.send_json(json!({"t": "req", "id": 7, "m": "sleep", "d": 3600}))
        .await;
    // A request on the same connection answered means the sleep has started.
    peer.send_json(json!({"t": "ping"})).await;
    assert_eq!(peer.json().await, json!({"t": "pong"}));
    let sent = Instant::now();
    peer.send_json(json!({"t": "cancel", "id": 7})).await;
    assert_eq!(cancelled.recv().await, Some(CancelReason::Cancelled));
    assert_eq!(
        sent.elapsed(),
        Duration::ZERO,
        "no time passes before the cleanup"
    );
    silence(&mut peer).await;
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_cancels_its_calls_with_disconnected() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let (env, mut seen) = env(Setup {
        router: sleeper(cancelled_tx),
        ..Setup::default()
    });
    let (mut peer, _conn) = welcomed(&env, &mut seen).await;
    peer.send_json(json!({"t": "req", "id": 1, "m": "sleep", "d": 3600}))
        .await;
    peer.send_json(json!({"t": "ping"})).await;
    assert_eq!(peer.json().await, json!({"t": "pong"}));
    drop(peer);
    assert_eq!(cancelled.recv().await, Some(CancelReason::Disconnected));
    assert!(matches!(
        disconnected(&mut seen).await,
        DisconnectReason::Transport(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_lets_calls_finish_then_closes_1001() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let (env, mut seen) = env(Setup {
        router: sleeper(cancelled_tx),
        ..Setup::default()
    });
    let (mut peer, conn) = welcomed(&env, &mut seen).await;
    peer.send_json(json!({"t": "req", "id": 1, "m": "sleep", "d": 3}))
        .await;
    peer.send_json(json!({"t": "ping"})).await;
    assert_eq!(peer.json().await, json!({"t": "pong"}));
    let started = Instant::now();
    env.shutting_down.store(true, Ordering::Release);
    conn.kick();
    // A new call is refused meanwhile; the one in flight finishes.
    peer.send_json(json!({"t": "req", "id": 2, "m": "sleep", "d": 1}))
        .await;
    let refused = peer.json().await;
    assert_eq!(
        (refused["id"].clone(), refused["e"]["code"].clone()),
        (json!(2), json!("UNAVAILABLE"))
    );
    assert_eq!(peer.json().await, json!({"t": "res", "id": 1, "d": 3}));
    assert_eq!(peer.close_code().await, 1001);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(cancelled.try_recv().is_err(), "nothing was cut short");
    assert_eq!(
        disconnected(&mut seen).await,
        DisconnectReason::ServerClosed(CloseCode::GOING_AWAY, "server shutting down".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_outlasts_the_drain_is_cancelled_with_shutdown() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let (env, mut seen) = env(Setup {
        router: sleeper(cancelled_tx),
        ..Setup::default()
    });
    let (mut peer, conn) = welcomed(&env, &mut seen).await;
    peer.send_json(json!({"t": "req", "id": 1, "m": "sleep", "d": 3600}))
        .await;
    peer.send_json(json!({"t": "ping"})).await;
    assert_eq!(peer.json().await, json!({"t": "pong"}));
    let started = Instant::now();
    env.shutting_down.store(true, Ordering::Release);
    conn.kick();
    assert_eq!(peer.close_code().await, 1001);
    assert_eq!(started.elapsed(), env.limits.drain_timeout);
    assert_eq!(cancelled.recv().await, Some(CancelReason::Shutdown));
}

// ---- calls the server makes --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_request_to_the_client_times_out_and_sends_cancel() {
    let (env, mut seen) = env(Setup::default());
    let (mut peer, conn) = welcomed(&env, &mut seen).await;
    let started = Instant::now();
    let asking = tokio::spawn(async move {
        conn.request_timeout::<Value>("client.slow", &json!(null), Duration::from_secs(5))
            .await
    });
    let call = peer.json().await;
    assert_eq!(
        (call["t"].clone(), call["m"].clone()),
        (json!("req"), json!("client.slow"))
    );
    let error = asking.await.unwrap().unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(peer.json().await, json!({"t": "cancel", "id": call["id"]}));
}

// ---- credential refresh --------------------------------------------------------------------

/// A session authenticated in band with `token`, after its `welcome`.
async fn authenticated(env: &Arc<SessionEnv>, token: &str) -> Peer {
    let mut peer = connect(env, None);
    peer.send_json(json!({"t": "hello", "token": token})).await;
    let welcome = peer.json().await;
    assert_eq!(welcome["t"], "welcome", "{welcome}");
    peer
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_credential_keeps_the_connection_and_a_missing_one_closes_it_at_expiry() {
    let (env, mut seen) = env(Setup {
        authenticate: true,
        ..Setup::default()
    });
    let started = Instant::now();
    let mut peer = authenticated(&env, "ok-120").await;
    // Asked 30 s before expiry, with the expiry as Unix seconds.
    let ask = peer.json().await;
    assert_eq!(
        (ask["t"].clone(), ask["m"].clone()),
        (json!("req"), json!("$refresh"))
    );
    assert!(ask["d"]["exp"].as_u64().is_some(), "{ask}");
    let asked_after = started.elapsed();
    assert!(
        asked_after.abs_diff(Duration::from_secs(90)) < Duration::from_secs(1),
        "asked after {asked_after:?}"
    );
    peer.send_json(json!({"t": "res", "id": ask["id"], "d": {"token": "ok-600"}}))
        .await;
    // The next ask comes 30 s before the new expiry; left unanswered, the connection closes
    // with 4001 when the credential expires.
    let again = peer.json().await;
    assert_eq!(again["m"], "$refresh");
    let asked_again = started.elapsed();
    assert!(
        asked_again.abs_diff(Duration::from_secs(90 + 570)) < Duration::from_secs(1),
        "asked again after {asked_again:?}"
    );
    assert_eq!(peer.close_code().await, 4001);
    let closed = started.elapsed();
    assert!(
        closed.abs_diff(Duration::from_secs(90 + 600)) < Duration::from_secs(1),
        "closed after {closed:?}"
    );
    assert_eq!(
        disconnected(&mut seen).await,
        DisconnectReason::ServerClosed(CloseCode::NOT_AUTHORIZED, "not authorized".into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_drops_a_permission_stops_its_calls_with_forbidden() {
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let router = sleeper(cancelled_tx).requires_all("sleep", "admin");
    let (env, _seen) = env(Setup {
        router,
        authenticate: true,
        ..Setup::default()
    });
    let mut peer = authenticated(&env, "admin-120").await;
    peer.send_json(json!({"t": "req", "id": 1, "m": "sleep", "d": 3600}))
        .await;
    let ask = peer.json().await;
    assert_eq!(ask["m"], "$refresh");
    peer.send_json(json!({"t": "res", "id": ask["id"], "d": {"token": "ok-600"}}))
        .await;
    let stopped = peer.json().await;
    assert_eq!(
        (stopped["t"].clone(), stopped["id"].clone()),
        (json!("err"), json!(1))
    );
    assert_eq!(stopped["e"]["code"], "FORBIDDEN");
    assert_eq!(cancelled.recv().await, Some(CancelReason::Forbidden));
}

/// What every idle connection costs: the session's future (it lives as long as the
/// connection) and the state its handles share. Rare paths are boxed so that they take no
/// room in the future; this keeps it that way.
#[tokio::test]
async fn an_idle_connection_stays_small() {
    let (env, _seen) = env(Setup::default());
    let (server, _client) = tokio::io::duplex(64);
    let queue = Arc::new(OutboundQueue::new(16));
    let socket = SharedSocket::new(queue.clone(), Box::new(server), false, usize::MAX);
    let ws = yawc::WebSocket::from_stream(
        socket,
        yawc::Role::Server,
        EndpointConfig::default().ws_options(),
    )
    .unwrap();
    let limiter = ConnectionLimiter::new(10, 10);
    let accepted = Accepted {
        codec: Codec::Json,
        remote: None,
        headers: http::HeaderMap::new(),
        query: None,
        principal: Some(Principal::anonymous()),
        slot: limiter
            .try_acquire(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .unwrap(),
    };
    let future = super::run(ws, queue, env, accepted);
    let session = std::mem::size_of_val(&future);
    let shared = std::mem::size_of_val(&*ConnectionHandle::for_test(Principal::anonymous()).shared);
    // 3,340 while `run` was an `async fn` whose arguments kept their room beside the session.
    assert!(
        session <= 1_850,
        "the session's future grew to {session} bytes"
    );
    assert!(
        shared <= 544,
        "a connection's shared state grew to {shared} bytes"
    );
}
