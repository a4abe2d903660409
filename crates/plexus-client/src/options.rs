//! Options: of the client, of reconnecting, of one call, of one stream.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue};
use plexus_protocol::{Codec, IntoPayload, Payload, Position};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use url::Url;

use crate::credentials::{self, CredentialsFn};
use crate::error::BoxError;
use crate::router::Router;

/// The hook run before every connection attempt.
pub(crate) type BeforeConnect = Arc<
    dyn for<'a> Fn(&'a mut ConnectRequest) -> BoxFuture<'a, Result<(), BoxError>> + Send + Sync,
>;

/// The hook that opens a connection attempt's byte stream instead of TCP.
pub(crate) type Connector =
    Arc<dyn Fn() -> BoxFuture<'static, std::io::Result<Box<dyn Transport>>> + Send + Sync>;

/// A byte stream a client can speak WebSocket over: what a
/// [`connector`](ClientOptions::connector) opens. Every `AsyncRead + AsyncWrite` stream that
/// is `Send + Unpin + 'static` is one (`tokio::io::DuplexStream`, `UnixStream`, …).
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// How a [`Client`](crate::Client) connects, calls and reconnects.
///
/// Start from [`ClientOptions::default`] and chain the setters:
///
/// ```
/// use std::time::Duration;
/// use plexus_client::{ClientOptions, ReconnectOptions};
/// use plexus_protocol::Codec;
///
/// let options = ClientOptions::default()
///     .codec(Codec::MsgPack)
///     .token("secret")
///     .call_timeout(Duration::from_secs(5))
///     .reconnect(ReconnectOptions::default().max_attempts(Some(10)));
/// # let _ = options;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The wire codec; offered as `Sec-WebSocket-Protocol: plexus.v1.json` or
    /// `plexus.v1.msgpack`. Default JSON.
    pub codec: Codec,
    /// Extra headers of the upgrade request.
    pub headers: HeaderMap,
    /// A static credential: sent as `Authorization: Bearer <token>`, or in a `hello` frame
    /// when [`ClientOptions::credentials_in_hello`] is set, and given as the answer to the
    /// server's `$refresh`. A hook set with [`ClientOptions::credentials`] takes precedence.
    pub token: Option<String>,
    /// Send the credential in band, as `{"t":"hello","token":...,"data":...}` right after
    /// the upgrade, and wait for `welcome` or `reject`, instead of the `Authorization`
    /// header. Default `false`.
    pub credentials_in_hello: bool,
    /// Application data for the server's authenticator, sent as `data` of the `hello`
    /// frame (so only with [`ClientOptions::credentials_in_hello`]). Default `None`.
    pub hello_data: Option<Payload>,
    /// Default deadline of a request (and of a queued call waiting for the connection).
    /// Default 30 s.
    pub call_timeout: Duration,
    /// Deadline of one connection attempt: TCP, TLS, upgrade and `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// Reconnecting with backoff.
    pub reconnect: ReconnectOptions,
    /// How long past the server's heartbeat interval the client waits, hearing nothing
    /// at all, before it treats the connection as half-open and reconnects. Default 10 s.
    pub heartbeat_grace: Duration,
    /// How many notifications and retryable calls may wait while disconnected. Default 1024.
    pub offline_queue: usize,
    /// Offer permessage-deflate. Default `false`.
    pub compression: bool,
    /// The largest WebSocket message sent or accepted, in bytes. Default 1 MiB, as the
    /// server's default.
    pub max_message_size: usize,
    /// How many events of server-side subscriptions wait for the application, all channels
    /// together (at least 1; default [`DEFAULT_CHANNEL_BUFFER`]). Past it, the events of
    /// the channels that do not fit are dropped and each such channel yields
    /// [`ChannelEvent::Lagged`](crate::ChannelEvent::Lagged): see
    /// [`ServerSubscriptions`](crate::ServerSubscriptions).
    pub server_subscription_buffer: usize,
    /// Serve as a provider through a relay: after every `welcome` the client calls
    /// `$provide` with this node id and these services (see [`ClientOptions::provide`]).
    pub provide: Option<Provide>,
    pub(crate) credentials: Option<CredentialsFn>,
    pub(crate) before_connect: Option<BeforeConnect>,
    pub(crate) connector: Option<Connector>,
    /// The methods the server may call on this client.
    pub(crate) router: Router,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            codec: Codec::Json,
            headers: HeaderMap::new(),
            token: None,
            credentials_in_hello: false,
            hello_data: None,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect: ReconnectOptions::default(),
            heartbeat_grace: Duration::from_secs(10),
            offline_queue: 1024,
            compression: false,
            max_message_size: 1024 * 1024,
            server_subscription_buffer: DEFAULT_CHANNEL_BUFFER,
            provide: None,
            credentials: None,
            before_connect: None,
            connector: None,
            router: Router::default(),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("codec", &self.codec)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("credentials_in_hello", &self.credentials_in_hello)
            .field("hello_data", &self.hello_data.is_some())
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("heartbeat_grace", &self.heartbeat_grace)
            .field("offline_queue", &self.offline_queue)
            .field("compression", &self.compression)
            .field("max_message_size", &self.max_message_size)
            .field(
                "server_subscription_buffer",
                &self.server_subscription_buffer,
            )
            .field("provide", &self.provide)
            .field("credentials", &self.credentials.is_some())
            .field("before_connect", &self.before_connect.is_some())
            .field("connector", &self.connector.is_some())
            .field("router", &self.router)
            .finish()
    }
}

impl ClientOptions {
    /// Sets the wire codec.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets a static credential (replacing a [`credentials`](ClientOptions::credentials)
    /// hook): the same token for every connection attempt and every `$refresh`. For a
    /// token that expires, use [`credentials`](ClientOptions::credentials).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self.credentials = None;
        self
    }

    /// Fetches the credential with `hook` (replacing a static [`token`](ClientOptions::token)):
    ///
    /// - before every connection attempt, reconnects included, so an expired token is
    ///   replaced after the server refused it (HTTP 401, `reject` `NOT_AUTHORIZED`, close
    ///   4001);
    /// - for each `$refresh` request of the server, which asks for a new token before the
    ///   current one expires; the answer is `{"token": ...}`.
    ///
    /// `Ok(None)` means no credential: the attempt goes without one, and `$refresh` is
    /// answered with `UNAVAILABLE`. An error (or taking longer than
    /// [`connect_timeout`](ClientOptions::connect_timeout) before an attempt) fails the
    /// attempt with [`ConnectError::Credentials`](crate::ConnectError::Credentials), retried
    /// like any other failed attempt, and answers `$refresh` with `UNAVAILABLE`.
    ///
    /// ```
    /// use plexus_client::{BoxError, ClientOptions};
    ///
    /// async fn fetch_token() -> Result<Option<String>, BoxError> {
    ///     // Ask the identity provider for a fresh token.
    ///     Ok(Some("eyJhbGciOi...".to_owned()))
    /// }
    ///
    /// let options = ClientOptions::default().credentials(fetch_token);
    /// # let _ = options;
    /// ```
    pub fn credentials<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<String>, BoxError>> + Send + 'static,
    {
        self.credentials = Some(Arc::new(move || Box::pin(hook())));
        self.token = None;
        self
    }

    /// Sends the credential in a `hello` frame right after the upgrade (`true`) instead of
    /// the `Authorization: Bearer` header of the upgrade request (`false`, the default).
    pub fn credentials_in_hello(mut self, in_hello: bool) -> Self {
        self.credentials_in_hello = in_hello;
        self
    }

    /// Sets the application data of the `hello` frame (sent in the client's codec; only
    /// with [`credentials_in_hello`](ClientOptions::credentials_in_hello)).
    pub fn hello_data(mut self, data: serde_json::Value) -> Self {
        self.hello_data = Some(
            Payload::encode(Codec::Json, &data).unwrap_or_else(|_| Payload::null(Codec::Json)),
        );
        self
    }

    /// Where the credential comes from: the hook, or the static token as a hook.
    pub(crate) fn credential_source(&self) -> Option<CredentialsFn> {
        if let Some(hook) = &self.credentials {
            return Some(hook.clone());
        }
        self.token.clone().map(credentials::fixed)
    }

    /// Sets the default request deadline.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the deadline of one connection attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the reconnect options.
    pub fn reconnect(mut self, reconnect: ReconnectOptions) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets the grace period added to the server's heartbeat interval.
    pub fn heartbeat_grace(mut self, grace: Duration) -> Self {
        self.heartbeat_grace = grace;
        self
    }

    /// Sets the capacity of the offline queue.
    pub fn offline_queue(mut self, capacity: usize) -> Self {
        self.offline_queue = capacity;
        self
    }

    /// Offers permessage-deflate (or not).
    pub fn compression(mut self, compression: bool) -> Self {
        self.compression = compression;
        self
    }

    /// Sets the largest message sent or accepted.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets how many events of server-side subscriptions are buffered (at least 1).
    pub fn server_subscription_buffer(mut self, events: usize) -> Self {
        self.server_subscription_buffer = events;
        self
    }

    /// Runs `hook` before every connection attempt (the first one included). It gets a
    /// [`ConnectRequest`] built afresh from these options each time (its token from the
    /// [`credentials`](ClientOptions::credentials) hook, called first), and may change its
    /// URL, headers and token. An error fails the attempt, which is then retried like any
    /// other failed attempt. To fetch tokens, prefer
    /// [`credentials`](ClientOptions::credentials): it also answers the server's `$refresh`.
    ///
    /// ```
    /// use plexus_client::ClientOptions;
    ///
    /// let options = ClientOptions::default().before_connect(|req| {
    ///     Box::pin(async move {
    ///         req.token = Some(format!("token-for-attempt-{}", req.attempt()));
    ///         Ok(())
    ///     })
    /// });
    /// # let _ = options;
    /// ```
    pub fn before_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut ConnectRequest) -> BoxFuture<'a, Result<(), BoxError>>
            + Send
            + Sync
            + 'static,
    {
        self.before_connect = Some(Arc::new(hook));
        self
    }

    /// Opens each connection attempt's byte stream with `connect` instead of a TCP (and TLS)
    /// connection to the URL's host: an in-memory pipe to a server in the same process (what
    /// the `plexus` test kit's clients use), a Unix socket, a tunnel. The WebSocket upgrade
    /// then runs over it as usual, its request built from the URL (host, path, query) and the
    /// headers; a `wss://` URL adds no TLS here, the stream is used as it comes. A failure
    /// to open fails the attempt, which is retried like any other.
    ///
    /// ```
    /// use plexus_client::{ClientOptions, Transport};
    ///
    /// let options = ClientOptions::default().connector(|| async {
    ///     let (ours, _theirs) = tokio::io::duplex(64 * 1024); // give `_theirs` to a server
    ///     Ok(Box::new(ours) as Box<dyn Transport>)
    /// });
    /// # let _ = options;
    /// ```
    pub fn connector<F, Fut>(mut self, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<Box<dyn Transport>>> + Send + 'static,
    {
        self.connector = Some(Arc::new(move || Box::pin(connect())));
        self
    }

    /// Sets the methods the server may call on this client (see [`Router`]).
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Hands the notifications the router does not serve to `handler` (see
    /// [`Router::notify_any`]), keeping the router's methods.
    pub fn notify_any<F>(mut self, handler: F) -> Self
    where
        F: Fn(&str, Payload) + Send + Sync + 'static,
    {
        self.router = std::mem::take(&mut self.router).notify_any(handler);
        self
    }

    /// Provides `services` as node `node` through the relay this client connects to: the
    /// client calls `$provide` after every `welcome` (so a reconnect provides again), and
    /// the relay routes calls of `<Service>.<method>` to this client's [`Router`]. A node id
    /// that another live connection still holds (`CONFLICT`, e.g. this process's previous,
    /// half-open connection) is asked for again with backoff. See
    /// [`Client::provided`](crate::Client::provided).
    pub fn provide<S: Into<String>>(
        mut self,
        node: impl Into<String>,
        services: impl IntoIterator<Item = S>,
    ) -> Self {
        self.provide = Some(Provide {
            node: node.into(),
            services: services.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Sets [`ClientOptions::headers`] (replacing those added so far).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }
}

/// What a provider offers a relay: see [`ClientOptions::provide`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Provide {
    /// The provider's node id, unique among the relay's live providers.
    pub node: String,
    /// The services it answers, e.g. `["Greeting"]` for `Greeting.<method>` calls.
    pub services: Vec<String>,
}

/// Reconnecting: exponential backoff with full jitter.
///
/// The delay before retry `n` (0 for the first retry after a session dropped, or after the
/// first failed attempt) is a uniformly random duration in
/// `[0, min(max_delay, initial_delay * 2^n)]` ("full jitter"), so a crowd of clients that
/// lost the same server spreads out instead of returning in waves. A session that ends
/// sooner than `max_delay` after it opened counts as a failed attempt, so a server that
/// accepts and drops at once is not hammered at the first step.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// Whether to reconnect at all. Default `true`.
    pub enabled: bool,
    /// The ceiling of the first delay. Default 250 ms.
    pub initial_delay: Duration,
    /// The largest ceiling. Default 10 s.
    pub max_delay: Duration,
    /// How many consecutive failed attempts before giving up and going
    /// [`Status::Closed`](crate::Status::Closed); `None` (the default) retries forever once
    /// a first session was open.
    ///
    /// This also governs [`connect`](crate::connect): with `Some(n)`, the first connection
    /// is tried up to `n` times (with backoff) before `connect` fails; with `None`, `connect`
    /// fails on the first failed attempt, so that a wrong address does not hang forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectOptions {
    /// Never reconnect: the first drop closes the client.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Enables or disables reconnecting.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets the ceiling of the first delay.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the largest ceiling.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the number of consecutive failed attempts before giving up.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The ceiling of the delay before retry `n`: `min(max_delay, initial_delay * 2^n)`.
    pub fn delay_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// The delay before retry `n`: uniformly random in `[0, delay_ceiling(n)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        full_jitter(self.delay_ceiling(retry), &mut rand::rng())
    }
}

/// A uniformly random duration in `[0, ceiling]`, in nanoseconds.
pub(crate) fn full_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// The options of one request or publication: see [`Request::options`](crate::Request::options).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The deadline; `None` means [`ClientOptions::call_timeout`]. It covers time spent
    /// waiting in the offline queue.
    pub timeout: Option<Duration>,
    /// Whether the call may be sent again: issued while disconnected, it waits in the
    /// offline queue instead of failing with `UNAVAILABLE`; in flight when the connection
    /// drops, it is sent again after the next `welcome`. Only for idempotent methods.
    pub retryable: bool,
    /// Through a relay: the node id of the provider that must answer (`"node"` on the
    /// wire); `None` lets the relay pick one by round-robin.
    pub node: Option<String>,
    /// Through a relay: how many times to send the call again while the relay answers
    /// `SERVICE_OFFLINE` for a call no provider started (backoff from 100 ms to 2 s,
    /// within the deadline). Default 0. A call a provider may have started is never re-sent.
    pub offline_retries: u32,
}

impl CallOptions {
    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the call as retryable (or not).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Pins the call to the provider with this node id (through a relay).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets [`CallOptions::offline_retries`].
    pub fn offline_retries(mut self, retries: u32) -> Self {
        self.offline_retries = retries;
        self
    }
}

/// The credit window of a stream unless [`StreamOptions::credit`] says otherwise.
pub const DEFAULT_STREAM_WINDOW: u32 = 256;

/// Items buffered for a stream opened without flow control; a server that sends more before
/// the application reads them fails the stream (`BAD_FRAME`) instead of growing memory.
pub(crate) const UNCREDITED_STREAM_BUFFER: usize = 4096;

/// The options of one stream: see [`StreamRequest::options`](crate::StreamRequest::options).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Flow control (default: a window of [`DEFAULT_STREAM_WINDOW`] items): `sub` carries
    /// `"credit": n` and the client grants more (`credit` frames) as the application consumes
    /// items, once half the window is used. `None` turns it off; the client then buffers at
    /// most 4,096 unread items and fails the stream if the server sends more.
    pub credit: Option<u32>,
    /// A deadline for the whole stream; `None` (the default) means none.
    pub timeout: Option<Duration>,
    /// As [`CallOptions::retryable`]; a stream that already yielded items is never re-sent
    /// (it fails with `UNAVAILABLE` instead).
    pub retryable: bool,
    /// Fails the stream with `TIMEOUT` (and sends `cancel`) when this long passes without
    /// an item, counting from the `sub`; `None` (the default) means no such limit.
    pub idle_timeout: Option<Duration>,
    /// As [`CallOptions::node`].
    pub node: Option<String>,
    /// As [`CallOptions::offline_retries`]: only the opening is retried, never a stream
    /// that a provider started.
    pub offline_retries: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            credit: Some(DEFAULT_STREAM_WINDOW),
            timeout: None,
            retryable: false,
            idle_timeout: None,
            node: None,
            offline_retries: 0,
        }
    }
}

impl StreamOptions {
    /// Turns flow control off (see [`StreamOptions::credit`]).
    pub fn without_credit(mut self) -> Self {
        self.credit = None;
        self
    }

    /// Sets the credit window.
    pub fn credit(mut self, window: u32) -> Self {
        self.credit = Some(window);
        self
    }

    /// Sets a deadline for the whole stream.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks the stream as retryable (or not).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets [`StreamOptions::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Pins the stream to the provider with this node id (through a relay).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets [`StreamOptions::offline_retries`].
    pub fn offline_retries(mut self, retries: u32) -> Self {
        self.offline_retries = retries;
        self
    }
}

/// How many events a [`Subscription`](crate::Subscription) buffers for the application
/// unless [`JoinOptions::buffer`] says otherwise, and the server-side subscriptions unless
/// [`ClientOptions::server_subscription_buffer`] does.
pub const DEFAULT_CHANNEL_BUFFER: usize = 1024;

/// The options of one join: see [`Client::join`](crate::Client::join).
///
/// ```
/// use std::time::Duration;
/// use plexus_client::{JoinOptions, Position};
///
/// let options = JoinOptions::default()
///     // Resume where a previous run stopped (see `Subscription::last_position`).
///     .since(Position { epoch: "e1".into(), offset: 41 })
///     .filter(&serde_json::json!({"kind": "chat"}))
///     .buffer(256)
///     .timeout(Duration::from_secs(5));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JoinOptions {
    /// Recover the publications after this position (`since` of the `join` frame): when the
    /// server still has them, they are delivered first and
    /// [`Subscription::recovered`](crate::Subscription::recovered) is `true`. Default `None`:
    /// only publications made after the join are delivered.
    pub since: Option<Position>,
    /// A delivery filter (`filter` of the `join` frame); its form is the server
    /// application's. It is sent again on every re-join. Default `None`.
    pub filter: Option<Payload>,
    /// How many events the subscription buffers while the application does not read them
    /// (at least 1; default [`DEFAULT_CHANNEL_BUFFER`]). When the buffer is full, the client
    /// stops buffering and later recovers what it missed from the channel's history: see
    /// [`ChannelEvent::Lagged`](crate::ChannelEvent::Lagged).
    pub buffer: usize,
    /// The deadline of the join, time waiting for a connection included; `None` means
    /// [`ClientOptions::call_timeout`].
    pub timeout: Option<Duration>,
}

impl Default for JoinOptions {
    fn default() -> Self {
        Self {
            since: None,
            filter: None,
            buffer: DEFAULT_CHANNEL_BUFFER,
            timeout: None,
        }
    }
}

impl JoinOptions {
    /// Recovers the publications after `position`.
    pub fn since(mut self, position: Position) -> Self {
        self.since = Some(position);
        self
    }

    /// Sets the delivery filter: any `&T: Serialize` (a `serde_json::Value`, say), or a
    /// [`Payload`] (transcoded to the client's codec when needed). A value that cannot be
    /// encoded becomes `null`: no filter.
    pub fn filter(mut self, filter: impl IntoPayload) -> Self {
        self.filter = Some(
            filter
                .into_payload(Codec::Json)
                .unwrap_or_else(|_| Payload::null(Codec::Json)),
        );
        self
    }

    /// Sets how many events the subscription buffers (at least 1).
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }

    /// Sets the deadline of the join.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The options of a history query: see [`Client::history`](crate::Client::history).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryOptions {
    /// Only publications after this position. Default `None`: from the oldest kept.
    pub since: Option<Position>,
    /// At most this many publications, oldest first. Default `None`: the server's limit.
    pub limit: Option<u64>,
}

impl HistoryOptions {
    /// Returns only the publications after `position`.
    pub fn since(mut self, position: Position) -> Self {
        self.since = Some(position);
        self
    }

    /// Returns at most `limit` publications.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// What the next connection attempt will use; the `before_connect` hook may change it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The endpoint URL (`ws://` or `wss://`).
    pub url: Url,
    /// The extra headers of the upgrade request.
    pub headers: HeaderMap,
    /// The credential, from the [`credentials`](ClientOptions::credentials) hook (called
    /// just before `before_connect`) or the static token; sent as header or in `hello` as the
    /// options say.
    pub token: Option<String>,
    pub(crate) attempt: u32,
}

impl ConnectRequest {
    /// How many attempts failed in a row before this one: 0 for the very first connection
    /// and for the first try after a session that lived longer than
    /// [`ReconnectOptions::max_delay`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let r = ReconnectOptions::default();
        assert_eq!(r.delay_ceiling(0), Duration::from_millis(250));
        assert_eq!(r.delay_ceiling(1), Duration::from_millis(500));
        assert_eq!(r.delay_ceiling(5), Duration::from_secs(8));
        assert_eq!(r.delay_ceiling(6), Duration::from_secs(10));
        assert_eq!(r.delay_ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = full_jitter(Duration::from_millis(100), &mut rng);
            assert!(d <= Duration::from_millis(100));
        }
        assert_eq!(full_jitter(Duration::ZERO, &mut rng), Duration::ZERO);
        let _ = full_jitter(Duration::MAX, &mut rng);
    }
}
