//! The calls a client makes: one method per kind ([`Client::request`], [`Client::stream`],
//! [`Client::notify`], [`Client::publish`]), each taking typed or raw values alike.
//!
//! Params (and published data) are any `&T` where `T: Serialize`, or a [`Payload`] sent as
//! it is; results (and stream items) decode into any `DeserializeOwned` type, or stay a
//! [`Payload`] as they came. A request, a stream or a publication is a future that is also a
//! builder: set its options ([`Request::timeout`], [`Request::retryable`],
//! [`StreamRequest::credit`], ...), then `.await` it (or select, join or spawn it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use plexus_protocol::{ErrorCode, Frame, IntoPayload, Payload, Position};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::channel::WirePosition;
use crate::client::Client;
use crate::error::CallError;
use crate::options::{CallOptions, StreamOptions, UNCREDITED_STREAM_BUFFER};
use crate::relay;
use crate::state::{CallGuard, StreamEvent, Waiter};
use crate::stream::CallStream;

type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send + 'a>>;

/// A request being made: set its options, then `.await` its result. See [`Client::request`].
///
/// It is a future: nothing is sent until it is first polled, and the options set after
/// that have no effect.
#[must_use = "a request does nothing until it is awaited"]
pub struct Request<'a, R> {
    client: &'a Client,
    method: &'a str,
    params: Option<Result<Payload, CallError>>,
    options: CallOptions,
    fallback: Option<R>,
    running: Option<Pending<'a, R>>,
}

impl<R> Request<'_, R> {
    /// Sets the deadline (default [`ClientOptions::call_timeout`](crate::ClientOptions)):
    /// past it the call fails with `TIMEOUT` and the client sends `cancel`. It covers time
    /// spent waiting in the offline queue.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Marks the call as retryable (see [`CallOptions::retryable`]): only for idempotent
    /// methods.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.options.retryable = retryable;
        self
    }

    /// Pins the call to the provider with this node id, through a relay (see
    /// [`CallOptions::node`]).
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.options.node = Some(node.into());
        self
    }

    /// Sends the call again, up to `retries` times, while the relay answers
    /// `SERVICE_OFFLINE` for it before any provider started it (see
    /// [`CallOptions::offline_retries`]).
    pub fn offline_retries(mut self, retries: u32) -> Self {
        self.options.offline_retries = retries;
        self
    }

    /// Resolves to `value` instead of failing when the relay answers `SERVICE_OFFLINE`
    /// (after the offline retries, if any). Other errors still fail the call.
    pub fn fallback(mut self, value: R) -> Self {
        self.fallback = Some(value);
        self
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }
}

// The fallback value is moved, never pinned: a request is `Unpin` whatever `R` is.
impl<R> Unpin for Request<'_, R> {}

impl<'a, R: DeserializeOwned + Send + 'static> Future for Request<'a, R> {
    type Output = Result<R, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let running = this.running.get_or_insert_with(|| {
            let (client, method, options) = (this.client, this.method, this.options.clone());
            let params = this
                .params
                .take()
                .unwrap_or_else(|| Err(CallError::closed()));
            let fallback = this.fallback.take();
            Box::pin(async move {
                match client.request_with_retries(method, params?, options).await {
                    Ok(result) => result.decode_as().map_err(|e| CallError::decode(&e)),
                    Err(e) if e.is_remote() && *e.code() == ErrorCode::SERVICE_OFFLINE => {
                        fallback.ok_or(e)
                    }
                    Err(e) => Err(e),
                }
            })
        });
        running.as_mut().poll(cx)
    }
}

/// A stream being opened: set its options, then `.await` the [`CallStream`]. See
/// [`Client::stream`]. Like [`Request`], it is a future that sends nothing before its
/// first poll.
#[must_use = "a stream is not opened until it is awaited"]
pub struct StreamRequest<'a, T> {
    client: &'a Client,
    method: &'a str,
    params: Option<Result<Payload, CallError>>,
    options: StreamOptions,
    running: Option<Pending<'a, CallStream<T>>>,
}

impl<T> StreamRequest<'_, T> {
    /// Sets the credit window (see [`StreamOptions::credit`]).
    pub fn credit(mut self, window: u32) -> Self {
        self.options.credit = Some(window);
        self
    }

    /// Turns flow control off (see [`StreamOptions::credit`]).
    pub fn without_credit(mut self) -> Self {
        self.options.credit = None;
        self
    }

    /// Sets a deadline for the whole stream.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Marks the stream as retryable (see [`StreamOptions::retryable`]).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.options.retryable = retryable;
        self
    }

    /// Fails the stream when this long passes without an item (see
    /// [`StreamOptions::idle_timeout`]).
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options.idle_timeout = Some(timeout);
        self
    }

    /// Pins the stream to the provider with this node id, through a relay.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.options.node = Some(node.into());
        self
    }

    /// Opens the stream again, up to `retries` times, while the relay answers
    /// `SERVICE_OFFLINE` before any provider started it (see
    /// [`StreamOptions::offline_retries`]).
    pub fn offline_retries(mut self, retries: u32) -> Self {
        self.options.offline_retries = retries;
        self
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: StreamOptions) -> Self {
        self.options = options;
        self
    }
}

impl<'a, T: DeserializeOwned + Send + 'static> Future for StreamRequest<'a, T> {
    type Output = Result<CallStream<T>, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let running = this.running.get_or_insert_with(|| {
            let (client, method, options) = (this.client, this.method, this.options.clone());
            let params = this
                .params
                .take()
                .unwrap_or_else(|| Err(CallError::closed()));
            Box::pin(open_stream(client, method, params, options))
        });
        running.as_mut().poll(cx)
    }
}

async fn open_stream<T: DeserializeOwned + Send + 'static>(
    client: &Client,
    method: &str,
    params: Result<Payload, CallError>,
    options: StreamOptions,
) -> Result<CallStream<T>, CallError> {
    let opening = Opening {
        method: method.to_owned(),
        data: params?,
        options,
    };
    let (guard, events) = opening.send(&client.inner).await?;
    let decode = |payload: Payload| payload.decode_as().map_err(|e| CallError::decode(&e));
    Ok(CallStream::new(guard, events, decode, opening))
}

/// What opens a stream: kept by the [`CallStream`], which sends it again when a relay
/// says no provider started it (see [`StreamOptions::offline_retries`]).
pub(crate) struct Opening {
    pub(crate) method: String,
    pub(crate) data: Payload,
    pub(crate) options: StreamOptions,
}

impl Opening {
    /// Sends a `sub` under a fresh id.
    pub(crate) async fn send(
        &self,
        inner: &std::sync::Arc<crate::state::Inner>,
    ) -> Result<(CallGuard, mpsc::Receiver<StreamEvent>), CallError> {
        let id = inner.next_id();
        let bytes = inner.encode(&Frame::Sub {
            id,
            method: self.method.clone(),
            data: self.data.clone(),
            credit: self.options.credit,
            node: self.options.node.clone(),
        })?;
        // Room for what the server may send before we grant more, plus the final event.
        let in_transit = self
            .options
            .credit
            .map_or(UNCREDITED_STREAM_BUFFER, |window| window as usize);
        let (tx, rx) = mpsc::channel(in_transit + 1);
        let guard = inner
            .start_call(id, bytes, Waiter::Stream(tx), self.options.retryable)
            .await?;
        Ok((guard, rx))
    }
}

/// A publication being made: set its options, then `.await` its position. See
/// [`Client::publish`]. Like [`Request`], it is a future that sends nothing before its
/// first poll.
#[must_use = "nothing is published until it is awaited"]
pub struct Publish<'a> {
    client: &'a Client,
    channel: &'a str,
    data: Option<Result<Payload, CallError>>,
    options: CallOptions,
    running: Option<Pending<'a, Position>>,
}

impl Publish<'_> {
    /// Sets the deadline (default [`ClientOptions::call_timeout`](crate::ClientOptions)).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Waits for the connection while disconnected and re-sends after a drop, so that the
    /// publication may be made twice.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.options.retryable = retryable;
        self
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }
}

impl Future for Publish<'_> {
    type Output = Result<Position, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let running = this.running.get_or_insert_with(|| {
            let (client, channel, options) = (this.client, this.channel, this.options.clone());
            let data = this.data.take().unwrap_or_else(|| Err(CallError::closed()));
            Box::pin(async move {
                let data = data?;
                let id = client.inner.next_id();
                let bytes = client.inner.encode(&Frame::Pub {
                    id,
                    channel: channel.to_owned(),
                    data,
                })?;
                let result = client.call(id, bytes, options).await?;
                let position: WirePosition = result.decode().map_err(|e| CallError::decode(&e))?;
                Ok(position.into())
            })
        });
        running.as_mut().poll(cx)
    }
}

impl Client {
    fn payload(&self, value: impl IntoPayload) -> Result<Payload, CallError> {
        value
            .into_payload(self.inner.codec())
            .map_err(CallError::encode)
    }

    /// Calls `method` with `params` and waits for its result.
    ///
    /// `params` is any `&T` where `T: Serialize`, or a [`Payload`] sent as it is; the
    /// result decodes into any `R: DeserializeOwned`, or stays as it came when `R` is
    /// [`Payload`]. Set a deadline or mark it retryable on the returned [`Request`] before
    /// awaiting it:
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::CallError> {
    /// use std::time::Duration;
    ///
    /// let sum: i64 = client.request("math.add", &[1, 2]).await?;
    /// let n: u64 = client
    ///     .request("counter.get", &())
    ///     .timeout(Duration::from_secs(2))
    ///     .retryable(true)
    ///     .await?;
    /// # let _ = (sum, n);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A request that outlives its deadline fails with `TIMEOUT` and the client sends
    /// `cancel` for it.
    pub fn request<'a, R>(&'a self, method: &'a str, params: impl IntoPayload) -> Request<'a, R> {
        Request {
            client: self,
            method,
            params: Some(self.payload(params)),
            options: CallOptions::default(),
            fallback: None,
            running: None,
        }
    }

    /// Sends a `req` (again, up to [`CallOptions::offline_retries`] times, while a relay
    /// says no provider started it), all within the call's one deadline.
    async fn request_with_retries(
        &self,
        method: &str,
        data: Payload,
        options: CallOptions,
    ) -> Result<Payload, CallError> {
        let deadline = Instant::now() + options.timeout.unwrap_or(self.inner.options.call_timeout);
        let mut retries = 0;
        loop {
            let id = self.inner.next_id();
            let bytes = self.inner.encode(&Frame::Req {
                id,
                method: method.to_owned(),
                data: data.clone(),
                node: options.node.clone(),
            })?;
            let attempt = CallOptions {
                timeout: Some(deadline.saturating_duration_since(Instant::now())),
                ..options.clone()
            };
            match self.call(id, bytes, attempt).await {
                Err(e) if retries < options.offline_retries && relay::offline_before_start(&e) => {
                    let delay = relay::offline_backoff(retries);
                    retries += 1;
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(method, retries, ?delay, "service offline; calling again");
                    tokio::time::sleep(delay).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Sends call `id` (a `req` or `pub`, encoded) and waits for its `res` or `err`.
    pub(crate) async fn call(
        &self,
        id: u64,
        bytes: bytes::Bytes,
        options: CallOptions,
    ) -> Result<Payload, CallError> {
        let deadline = options.timeout.unwrap_or(self.inner.options.call_timeout);
        let (tx, rx) = oneshot::channel();
        let call = async {
            let mut guard = self
                .inner
                .start_call(id, bytes, Waiter::Request(tx), options.retryable)
                .await?;
            let result = rx.await;
            guard.disarm();
            result.unwrap_or_else(|_| Err(CallError::closed()))
        };
        // On timeout the future (and its guard) is dropped: the call is forgotten and
        // cancelled.
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::timeout()),
        }
    }

    /// Sends a notification (`params` as for [`Client::request`]). While disconnected it
    /// waits in the offline queue; when the queue is full this fails at once with
    /// [`CallErrorKind::QueueFull`](crate::CallErrorKind::QueueFull).
    pub async fn notify(&self, method: &str, params: impl IntoPayload) -> Result<(), CallError> {
        self.send_notification(method, params, None).await
    }

    /// Sends a notification pinned to the provider with node id `node`, through a relay
    /// (`"node"` on the `ntf`); otherwise as [`Client::notify`].
    pub async fn notify_node(
        &self,
        method: &str,
        params: impl IntoPayload,
        node: &str,
    ) -> Result<(), CallError> {
        self.send_notification(method, params, Some(node)).await
    }

    async fn send_notification(
        &self,
        method: &str,
        params: impl IntoPayload,
        node: Option<&str>,
    ) -> Result<(), CallError> {
        let bytes = self.inner.encode(&Frame::Ntf {
            method: method.to_owned(),
            data: self.payload(params)?,
            node: node.map(str::to_owned),
        })?;
        self.inner.send_notification(bytes).await
    }

    /// Opens a stream: `sub` for `method` with `params` (as for [`Client::request`]); its
    /// items decode into `T` (or stay [`Payload`]s). Flow control is on by default (a
    /// credit window of [`DEFAULT_STREAM_WINDOW`](crate::DEFAULT_STREAM_WINDOW)); set the
    /// window, a deadline or retrying on the returned [`StreamRequest`]:
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::CallError> {
    /// use futures_util::StreamExt;
    ///
    /// let mut ticks = client.stream::<u64>("ticks.count", &10).credit(32).await?;
    /// while let Some(tick) = ticks.next().await {
    ///     println!("tick {}", tick?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream<'a, T>(
        &'a self,
        method: &'a str,
        params: impl IntoPayload,
    ) -> StreamRequest<'a, T> {
        StreamRequest {
            client: self,
            method,
            params: Some(self.payload(params)),
            options: StreamOptions::default(),
            running: None,
        }
    }

    /// Publishes `data` (any `&T: Serialize`, or a [`Payload`]) to `channel` (`pub`) and
    /// returns the publication's position.
    ///
    /// Not retried after a reconnect unless marked [`Publish::retryable`]: a `pub` whose
    /// answer was lost may or may not have been published. The publisher receives its own
    /// publication too if it joined the channel.
    pub fn publish<'a>(&'a self, channel: &'a str, data: impl IntoPayload) -> Publish<'a> {
        Publish {
            client: self,
            channel,
            data: Some(self.payload(data)),
            options: CallOptions::default(),
            running: None,
        }
    }
}
