//! A test kit for applications built on plexus: your server, in the test's own process, and
//! clients connected to it, with helpers that wait (boundedly) for what a test asserts on.
//!
//! ```no_run
//! # async fn test() {
//! use plexus::testing::TestServer;
//! use plexus::{Router, RpcError, Server};
//! use serde_json::{Value, json};
//!
//! let router = Router::new().request("greet.hello", |name: String| async move {
//!     Ok::<_, RpcError>(format!("hello, {name}"))
//! });
//! let server = TestServer::start(Server::builder().router(router)).await;
//! let mut alice = server.client().await;
//! assert_eq!(alice.call::<String>("greet.hello", &"Ada").await.unwrap(), "hello, Ada");
//!
//! // What the server pushes: a notification from a handler or the hub...
//! server.hub().notify(&alice.conn_id(), "chat.note", &json!({"text": "hi"})).await.unwrap();
//! let note: Value = alice.notification("chat.note").await;
//! assert_eq!(note["text"], "hi");
//! # }
//! ```
//!
//! The server runs its real endpoint (upgrade, authentication, limits, codecs), and the
//! clients are the real Rust client; they reach each other through in-memory pipes, with no
//! socket and no port (the server also listens on a loopback port the kit chooses, for
//! anything else: [`TestServer::url`], [`TestServer::addr`]). [`TestClient::join`] and
//! [`TestSubscription::publication`] follow channels; [`TestClient::notification`] reads what
//! the server pushed (kept per method from the moment the client connected). Every wait is
//! bounded by [`WAIT`] and fails the test with what it was waiting for.
//!
//! **Time.** Because nothing travels through a socket, a test may run on Tokio's paused
//! clock (`#[tokio::test(start_paused = true)]`, or [`time::pause`]): whenever every task
//! waits, the clock jumps to the next timer, so an hour of heartbeats, timeouts and
//! reconnect backoff passes in milliseconds, and [`time::advance`] moves it on by hand. What
//! follows that clock: Tokio timers, so call and handshake timeouts, heartbeats and
//! half-open detection, the client's backoff, the server's countdown to a token's expiry
//! (`$refresh`, then close 4001), and your handlers' own `sleep`s and `interval`s. What does
//! not: checking a token as it arrives (wall-clock time, as in the token), the in-memory
//! engine's history time to live, and rate limits. The kit's own waits ([`WAIT`]) are on the
//! same clock: they give up after 5 s of it, so a call that should take longer goes through
//! [`TestClient::client`], and you let time pass before waiting for what a timer causes. To let a long span
//! pass, `tokio::time::sleep` in the test: the clock then jumps from timer to timer, and
//! what each one starts (a heartbeat's ping and its pong) happens in between;
//! [`time::advance`] moves the clock in one step, firing every timer due at once.
//!
//! ```no_run
//! # async fn test() {
//! use std::time::Duration;
//! use plexus::testing::{TestServer, time};
//! use plexus::{ErrorCode, Router, RpcError, Server};
//!
//! // Inside #[tokio::test(start_paused = true)]:
//! let router = Router::new().request("report.slow", |_: ()| async move {
//!     tokio::time::sleep(Duration::from_secs(3600)).await;
//!     Ok::<_, RpcError>("done")
//! });
//! let server = TestServer::start(Server::builder().router(router)).await;
//! let alice = server.client().await;
//! let started = tokio::time::Instant::now();
//! // The client's 30 s call timeout (not the kit's 5 s wait: `client()` has none).
//! let answer = alice.client().request::<String>("report.slow", &()).await;
//! assert_eq!(*answer.unwrap_err().code(), ErrorCode::TIMEOUT);
//! assert!(started.elapsed() >= Duration::from_secs(30)); // of the test's clock, not yours
//! # let _ = time::advance;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallError, ChannelEvent, Client, ClientOptions, JoinOptions, Subscription, Transport,
};
use plexus_protocol::{IntoPayload, Payload};
use plexus_server::{Hub, Server, ServerBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a helper waits for what must happen before it fails the test.
pub const WAIT: Duration = Duration::from_secs(5);

/// Bytes in flight each way in a client's in-memory pipe before the writer waits.
const PIPE_CAPACITY: usize = 256 * 1024;

/// Controlling the clock of a test's runtime (Tokio's test utilities): [`pause`] it (or
/// start paused), [`advance`] it, [`resume`] it.
pub mod time {
    pub use tokio::time::{advance, pause, resume};
}

/// Most notifications of one method a [`TestClient`] keeps unread; later ones are dropped
/// (and said so when the test reads).
const KEPT: usize = 1_024;

/// Waits for `future` up to [`WAIT`], failing the test with `what` if it takes longer.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Your server, serving on a loopback port of its own until dropped.
pub struct TestServer {
    server: Server,
    addr: SocketAddr,
    app: axum::Router,
    /// The port of the next client's made-up address (127.0.0.1:PORT).
    next_port: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Builds the server `builder` describes and serves it at `/ws` (with the health checks)
    /// on 127.0.0.1, on a port the kit chooses.
    pub async fn start(builder: ServerBuilder) -> Self {
        let server = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the test server");
        let addr = listener.local_addr().expect("the test server's address");
        let app = server.route("/ws").merge(server.health_routes());
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = server.clone();
        let served_app = app.clone();
        let served = tokio::spawn(async move {
            serving
                .serve(listener, served_app, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            server,
            addr,
            app,
            next_port: Arc::new(AtomicU16::new(1)),
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server's hub: publish, presence, history, reach a connection by id.
    pub fn hub(&self) -> &Hub {
        self.server.hub()
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Its address, for HTTP (`/health/ready`, your own routes are not served).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client with default options, connected (its `welcome` received).
    pub async fn client(&self) -> TestClient {
        self.client_with(ClientOptions::default()).await
    }

    /// A client with `options` (a token, a codec, a router of your own for calls from the
    /// server: the kit adds what it needs to capture notifications to it, and connects it
    /// through an in-memory pipe, reconnections included).
    pub async fn client_with(&self, options: ClientOptions) -> TestClient {
        let (server, app, ports) = (
            self.server.clone(),
            self.app.clone(),
            self.next_port.clone(),
        );
        let options = options.connector(move || {
            let (client_end, server_end) = tokio::io::duplex(PIPE_CAPACITY);
            let port = ports.fetch_add(1, Ordering::Relaxed).max(1);
            let remote = SocketAddr::from(([127, 0, 0, 1], port));
            let (server, app) = (server.clone(), app.clone());
            tokio::spawn(async move { server.serve_connection(server_end, remote, app).await });
            async move { Ok(Box::new(client_end) as Box<dyn Transport>) }
        });
        TestClient::connect(&self.url(), options).await
    }

    /// Shuts the server down gracefully (calls in flight finish, connections get 1001) and
    /// waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = within("the server to stop", served).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Notifications from the server, kept by method until the test reads them.
#[derive(Clone, Default)]
struct Inbox {
    by_method: Arc<Mutex<HashMap<String, Mailbox>>>,
}

struct Mailbox {
    tx: mpsc::Sender<Payload>,
    rx: Option<mpsc::Receiver<Payload>>,
}

impl Inbox {
    fn mailbox<T>(&self, method: &str, f: impl FnOnce(&mut Mailbox) -> T) -> T {
        let mut by_method = self.by_method.lock().unwrap_or_else(|p| p.into_inner());
        let mailbox = by_method.entry(method.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(KEPT);
            Mailbox { tx, rx: Some(rx) }
        });
        f(mailbox)
    }

    fn deliver(&self, method: &str, data: Payload) {
        let tx = self.mailbox(method, |m| m.tx.clone());
        if tx.try_send(data).is_err() {
            tracing::warn!(
                method,
                "test client: more than {KEPT} unread notifications; dropped one"
            );
        }
    }
}

/// A connected Rust client, with helpers for what tests do.
pub struct TestClient {
    client: Client,
    inbox: Inbox,
}

impl TestClient {
    async fn connect(url: &str, mut options: ClientOptions) -> Self {
        let inbox = Inbox::default();
        options = options.notify_any({
            let inbox = inbox.clone();
            move |method: &str, data: Payload| inbox.deliver(method, data)
        });
        let client = within(
            "the test client to connect",
            plexus_client::connect(url, options),
        )
        .await
        .unwrap_or_else(|e| panic!("the test client could not connect: {e}"));
        Self { client, inbox }
    }

    /// The client itself, for everything else it does.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This connection's id on the server (for `hub().notify(...)` and the like).
    pub fn conn_id(&self) -> String {
        self.client
            .conn_id()
            .expect("a connected client has a connection id")
    }

    /// Calls `method` and decodes the answer (within [`WAIT`]).
    pub async fn call<R: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: impl IntoPayload,
    ) -> Result<R, CallError> {
        within(
            &format!("the answer to `{method}`"),
            self.client.request(method, params),
        )
        .await
    }

    /// Sends a notification.
    pub async fn notify<P: Serialize + ?Sized>(&self, method: &str, params: &P) {
        self.client
            .notify(method, params)
            .await
            .unwrap_or_else(|e| panic!("notification `{method}` not sent: {e}"));
    }

    /// The next notification `method` the server sent this client (kept from the moment the
    /// client connected), decoded.
    pub async fn notification<T: DeserializeOwned>(&mut self, method: &str) -> T {
        let mut rx = self
            .inbox
            .mailbox(method, |m| m.rx.take())
            .unwrap_or_else(|| panic!("notifications `{method}` are read by one reader at a time"));
        let data = within(&format!("a `{method}` notification"), rx.recv()).await;
        self.inbox.mailbox(method, |m| m.rx = Some(rx));
        let data = data.expect("the client's inbox closed");
        data.decode()
            .unwrap_or_else(|e| panic!("a `{method}` notification does not decode: {e}"))
    }

    /// Asserts that no notification `method` arrives within `window` (a bounded negative
    /// check).
    pub async fn no_notification(&mut self, method: &str, window: Duration) {
        let mut rx = self
            .inbox
            .mailbox(method, |m| m.rx.take())
            .unwrap_or_else(|| panic!("notifications `{method}` are read by one reader at a time"));
        let got = tokio::time::timeout(window, rx.recv()).await;
        self.inbox.mailbox(method, |m| m.rx = Some(rx));
        if let Ok(Some(data)) = got {
            panic!("expected no `{method}` notification within {window:?}, got {data:?}");
        }
    }

    /// Joins `channel`.
    pub async fn join(&self, channel: &str) -> TestSubscription {
        let subscription = within(
            &format!("joining `{channel}`"),
            self.client.join(channel, JoinOptions::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("joining `{channel}` failed: {e}"));
        TestSubscription { subscription }
    }

    /// Publishes `data` to `channel`; its offset.
    pub async fn publish<P: Serialize + ?Sized>(&self, channel: &str, data: &P) -> u64 {
        within(
            &format!("publishing to `{channel}`"),
            self.client.publish(channel, data),
        )
        .await
        .unwrap_or_else(|e| panic!("publishing to `{channel}` failed: {e}"))
        .offset
    }

    /// Closes the connection (1000) and waits until it is closed.
    pub async fn close(self) {
        within("the client to close", self.client.close()).await;
    }
}

/// A channel subscription, with helpers.
pub struct TestSubscription {
    subscription: Subscription,
}

impl TestSubscription {
    /// The subscription itself.
    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.subscription
    }

    /// The next publication (presence events are skipped): its offset and data, decoded.
    pub async fn publication<T: DeserializeOwned>(&mut self) -> (u64, T) {
        let channel = self.subscription.channel().to_owned();
        within(&format!("a publication on `{channel}`"), async {
            loop {
                match self.subscription.next().await {
                    Some(ChannelEvent::Publication(publication)) => {
                        let data = publication.decode().unwrap_or_else(|e| {
                            panic!("a publication on `{channel}` does not decode: {e}")
                        });
                        return (publication.offset, data);
                    }
                    Some(ChannelEvent::MemberJoined(_) | ChannelEvent::MemberLeft(_)) => {}
                    Some(other) => panic!("expected a publication on `{channel}`, got {other:?}"),
                    None => panic!("the subscription to `{channel}` ended"),
                }
            }
        })
        .await
    }

    /// The next event of any kind.
    pub async fn event(&mut self) -> ChannelEvent {
        let channel = self.subscription.channel().to_owned();
        within(
            &format!("an event on `{channel}`"),
            self.subscription.next(),
        )
        .await
        .unwrap_or_else(|| panic!("the subscription to `{channel}` ended"))
    }
}
