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

use plexus_protocol::{Frame, IntoPayload, Payload, Position};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::channel::WirePosition;
use crate::client::Client;
use crate::error::CallError;
use crate::options::{CallOptions, StreamOptions, UNCREDITED_STREAM_BUFFER};
use crate::state::Waiter;
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

    /// Replaces every option at once.
    pub fn options(mut self, options: CallOptions) -> Self {
        self.options = options;
        self
    }
}

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
            Box::pin(async move {
                let data = params?;
                let id = client.inner.next_id();
                let bytes = client.inner.encode(&Frame::Req {
                    id,
                    method: method.to_owned(),
                    data,
                    node: None,
                })?;
                let result = client.call(id, bytes, options).await?;
                result.decode_as().map_err(|e| CallError::decode(&e))
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
    let data = params?;
    let inner = &client.inner;
    let id = inner.next_id();
    let bytes = inner.encode(&Frame::Sub {
        id,
        method: method.to_owned(),
        data,
        credit: options.credit,
        node: None,
    })?;
    // Room for what the server may send before we grant more, plus the final event.
    let in_transit = options
        .credit
        .map_or(UNCREDITED_STREAM_BUFFER, |window| window as usize);
    let (tx, rx) = mpsc::channel(in_transit + 1);
    let deadline = options.timeout.map(|t| Box::pin(tokio::time::sleep(t)));
    let guard = inner
        .start_call(id, bytes, Waiter::Stream(tx), options.retryable)
        .await?;
    let decode = |payload: Payload| payload.decode_as().map_err(|e| CallError::decode(&e));
    Ok(CallStream::new(guard, rx, decode, deadline, options.credit))
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
            running: None,
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
        let bytes = self.inner.encode(&Frame::Ntf {
            method: method.to_owned(),
            data: self.payload(params)?,
            node: None,
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
