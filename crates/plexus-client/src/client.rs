//! [`Client`] and [`connect`].

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use plexus_protocol::{Codec, ErrorBody};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::channel::{
    Attachment, History, Member, ServerSubscriptions, Subscription, WireHistory, WirePosition,
};
use crate::conn;
use crate::error::{CallError, ConnectError};
use crate::options::{ClientOptions, HistoryOptions, JoinOptions};
use crate::relay::Provided;
use crate::state::Inner;
use crate::status::Status;

/// Connects to a plexus endpoint (`ws://host:port/ws`) and resolves once the first session
/// is open (`welcome` received).
///
/// With [`ReconnectOptions::max_attempts`](crate::ReconnectOptions::max_attempts) set to
/// `Some(n)`, the first connection is tried up to `n` times with backoff before this fails;
/// with `None` (the default) it fails on the first failed attempt, and only later drops are
/// retried forever.
///
/// A refused credential (HTTP 401, `reject` `NOT_AUTHORIZED`) fails with
/// [`ConnectError::Unauthorized`], and is retried like other failures, the
/// [`credentials`](ClientOptions::credentials) hook being asked again each time; a
/// forbidden one (HTTP 403, `reject` `FORBIDDEN`) fails with [`ConnectError::Forbidden`]
/// at once.
///
/// Must be called within a Tokio runtime: the connection runs on a spawned task.
pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ConnectError> {
    let url = Url::parse(url).map_err(|e| ConnectError::InvalidUrl(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(ConnectError::InvalidUrl(format!(
            "scheme must be ws or wss, not `{}`",
            url.scheme()
        )));
    }
    let inner = Inner::new(url, options);
    let (ready_tx, ready_rx) = oneshot::channel();
    let task_inner = inner.clone();
    tokio::spawn(async move {
        // Should the connection task ever panic, calls still end and the status says so.
        let run = AssertUnwindSafe(conn::run(task_inner.clone(), ready_tx));
        if run.catch_unwind().await.is_err() {
            tracing::error!("plexus client connection task panicked");
            task_inner.finish();
        }
    });
    let client = Client {
        inner: inner.clone(),
        _life: Arc::new(Lifeline(inner.shutdown.clone())),
    };
    match ready_rx.await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ConnectError::Aborted),
    }
}

/// Stops the connection task when the last [`Client`] clone is dropped.
struct Lifeline(CancellationToken);

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A reconnecting plexus client. Cheap to clone; all clones share one connection, which
/// closes when the last clone is dropped (or on [`Client::close`]).
///
/// Calls made while the connection is down fail at once with `UNAVAILABLE`, unless they
/// are notifications or marked retryable: those wait in the offline queue and go out, in
/// order, right after the next `welcome`.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _life: Arc<Lifeline>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url.as_str())
            .field("status", &*self.inner.status.borrow())
            .field("conn_id", &self.conn_id())
            .finish()
    }
}

impl Client {
    /// Joins `channel` and resolves once the server answered the `join`: a
    /// [`Subscription`], the [`Stream`](futures_util::Stream) of the channel's
    /// [`ChannelEvent`](crate::ChannelEvent)s.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::CallError> {
    /// use futures_util::StreamExt;
    /// use plexus_client::{ChannelEvent, JoinOptions};
    ///
    /// let mut room = client.join("room:1", JoinOptions::default()).await?;
    /// while let Some(event) = room.next().await {
    ///     match event {
    ///         ChannelEvent::Publication(publication) => {
    ///             let text: String = publication.decode()?;
    ///             println!("{}: {text}", publication.offset);
    ///         }
    ///         ChannelEvent::Resubscribed { recovered: false, .. } => {
    ///             // Publications were missed for good: reload the state.
    ///         }
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// - The subscription lives across reconnects: see [`Subscription`] for recovery,
    ///   duplicates and the bounded buffer.
    /// - **While disconnected**, the join waits for the next session (like a retryable
    ///   call) rather than failing: subscriptions are re-joined after every reconnect anyway.
    ///   [`JoinOptions::timeout`] (default [`ClientOptions::call_timeout`]) bounds the wait;
    ///   past it the join fails with `TIMEOUT` (and a `leave` is sent if the `join` was).
    /// - **One subscription per channel**: joining a channel this client already has a
    ///   subscription to, or that the server subscribed it to
    ///   ([`Client::server_subscriptions`]), fails at once with
    ///   [`CallErrorKind::AlreadyJoined`](crate::CallErrorKind::AlreadyJoined).
    /// - **The server may end it** (a `left` frame): when its stream of the channel was
    ///   interrupted (code `UNAVAILABLE`) the client joins again with `since`, as after a
    ///   reconnect; otherwise the subscription ends with
    ///   [`ChannelEvent::Closed`](crate::ChannelEvent::Closed). A re-join the server
    ///   refuses as `UNAVAILABLE` (its engine lost its broker) is tried again with the
    ///   reconnect backoff until it succeeds; other refusals of a re-join end the
    ///   subscription.
    /// - Refusals keep the server's code (`FORBIDDEN`, `NOT_FOUND`, ...).
    pub async fn join(
        &self,
        channel: &str,
        options: JoinOptions,
    ) -> Result<Subscription, CallError> {
        let codec = self.inner.codec();
        let filter = options
            .filter
            .map(|filter| filter.to_codec(codec))
            .transpose()
            .map_err(CallError::encode)?;
        let (tx, rx) = oneshot::channel();
        let token = self
            .inner
            .join_channel(channel, filter, options.since, options.buffer, tx)?;
        // Dropped before the answer (timeout, or this future dropped): forget the
        // subscription and leave if the join went out.
        let attachment = Attachment::new(self.inner.clone(), token);
        let deadline = options.timeout.unwrap_or(self.inner.options.call_timeout);
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(reply))) => Ok(Subscription::new(attachment, channel.to_owned(), reply)),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(CallError::closed()),
            Err(_) => Err(CallError::timeout()),
        }
    }

    /// The members of `channel` now (`$presence`).
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, CallError> {
        #[derive(Serialize)]
        struct Params<'a> {
            ch: &'a str,
        }
        self.request("$presence", &Params { ch: channel }).await
    }

    /// The publications kept in `channel`'s history (`$history`), oldest first, after
    /// [`HistoryOptions::since`] and at most [`HistoryOptions::limit`].
    ///
    /// A `since` in another epoch, or older than the history window, returns what the
    /// history holds: compare [`History::position`](crate::History)'s epoch and the first
    /// offset with `since` to detect a gap.
    pub async fn history(
        &self,
        channel: &str,
        options: HistoryOptions,
    ) -> Result<History, CallError> {
        #[derive(Serialize)]
        struct Params<'a> {
            ch: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<WirePosition>,
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u64>,
        }
        let params = Params {
            ch: channel,
            since: options.since.as_ref().map(WirePosition::from),
            limit: options.limit,
        };
        let history: WireHistory = self.request("$history", &params).await?;
        Ok(history.into_history(self.inner.codec()))
    }

    /// How many channels this client has a live subscription to (joined, being joined, or
    /// waiting to be joined again after a reconnect), from [`Client::join`]; server-side
    /// subscriptions are not counted.
    pub fn subscriptions(&self) -> usize {
        self.inner.lock().channels.len()
    }

    /// The channels the server subscribed this client to (*server-side subscriptions*,
    /// `joined` frames), as one stream of `(channel, event)` pairs: see
    /// [`ServerSubscriptions`] for their lifecycle, order, bounded buffer and reconnects.
    ///
    /// There is one such stream per client: this returns `None` while a
    /// [`ServerSubscriptions`] of this client (or of a clone of it) is alive. Events are
    /// buffered from the first connection on, before this is called, and while no stream
    /// is alive; the next stream taken yields them.
    pub fn server_subscriptions(&self) -> Option<ServerSubscriptions> {
        self.inner.take_server_subscriptions()
    }

    /// Whether a relay took the `$provide` of [`ClientOptions::provide`] on the current
    /// session: [`Provided::Node`] once it did, [`Provided::Pending`] while connecting,
    /// waiting or after a drop (the next `welcome` provides again). `wait_for` on the
    /// receiver to wait until the client serves.
    pub fn provided(&self) -> watch::Receiver<Provided> {
        self.inner.provided.subscribe()
    }

    /// The connection's state; `changed().await` on the receiver to follow transitions.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Why the client stopped on its own, once its status is [`Status::Closed`]: the error
    /// of the last connection attempt when it gave up (for example
    /// [`ConnectError::Forbidden`] after HTTP 403, `reject` `FORBIDDEN` or close 4003, or
    /// the last error after `max_attempts`), or [`ConnectError::Closed`] with the close code
    /// that forbade reconnecting. `None` while it runs and after [`Client::close`].
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) {
    /// use plexus_client::Status;
    ///
    /// let mut status = client.status();
    /// let _ = status.wait_for(|s| *s == Status::Closed).await;
    /// if let Some(reason) = client.close_reason()
    ///     && reason.is_forbidden()
    /// {
    ///     // The credential is not allowed to connect: sign the user out.
    /// }
    /// # }
    /// ```
    pub fn close_reason(&self) -> Option<Arc<ConnectError>> {
        self.inner.lock().close_reason.clone()
    }

    /// The connection id from the last `welcome`.
    pub fn conn_id(&self) -> Option<String> {
        self.inner.lock().conn_id.clone()
    }

    /// The codec of this client's connections.
    pub fn codec(&self) -> Codec {
        self.inner.codec()
    }

    /// Errors the server reported without a call id (`err` frames without `id`), also
    /// logged at warn level. Only errors after subscribing are received.
    pub fn errors(&self) -> broadcast::Receiver<ErrorBody> {
        self.inner.errors.subscribe()
    }

    /// How many calls wait for an answer (in flight or in the offline queue). For
    /// diagnostics: it drops back as calls finish, time out or are cancelled.
    pub fn pending_calls(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Closes the connection with code 1000 and stops reconnecting; pending calls fail with
    /// [`CallErrorKind::Closed`](crate::CallErrorKind::Closed). Resolves once the status is
    /// [`Status::Closed`] (after at most a few seconds of waiting for the server's reply).
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let mut status = self.status();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| *s == Status::Closed),
        )
        .await;
    }
}
