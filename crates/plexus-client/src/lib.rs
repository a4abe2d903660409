//! The plexus Rust client: typed calls, streams and channels over one WebSocket that
//! reconnects by itself.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use plexus_client::{ChannelEvent, ClientOptions, JoinOptions, Payload, Router, RpcError, connect};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize)]
//! struct Hello<'a> {
//!     name: &'a str,
//! }
//!
//! #[derive(Deserialize)]
//! struct Greeting {
//!     text: String,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The server may call the client too: handlers on a router shaped like the server's.
//! let router = Router::new().request("client.ping", |n: u32| async move { Ok::<_, RpcError>(n + 1) });
//! let options = ClientOptions::default().token("secret").router(router);
//! let client = connect("ws://127.0.0.1:8080/ws", options).await?;
//!
//! // Request / response, typed on both ends.
//! let greeting: Greeting = client.request("greet.hello", &Hello { name: "Ada" }).await?;
//! println!("{}", greeting.text);
//!
//! // An idempotent call may wait for a reconnect instead of failing.
//! let n: u64 = client.request("counter.get", &()).retryable(true).await?;
//!
//! // The same call surface takes raw values: a `Payload` goes and comes back as it is.
//! let echoed: Payload = client.request("sys.echo", Payload::null(client.codec())).await?;
//! # let _ = echoed;
//!
//! // A stream with flow control: the server sends at most 32 items ahead.
//! let mut ticks = client.stream::<u64>("ticks.count", &n).credit(32).await?;
//! while let Some(tick) = ticks.next().await {
//!     println!("tick {}", tick?);
//! }
//!
//! // Fire and forget; queued while disconnected.
//! client.notify("log.event", &"done").await?;
//!
//! // Channels: publications in order, each once, across reconnects.
//! let mut room = client.join("room:1", JoinOptions::default()).await?;
//! client.publish("room:1", &Hello { name: "Ada" }).await?;
//! while let Some(event) = room.next().await {
//!     match event {
//!         ChannelEvent::Publication(publication) => {
//!             let text: serde_json::Value = publication.decode()?;
//!             println!("#{} {text}", publication.offset);
//!         }
//!         // Publications were missed for good (history window passed): reload the state.
//!         ChannelEvent::Resubscribed { recovered: false, .. } => {}
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - **Session.** [`connect`] resolves once the server's `welcome` arrived.
//!   [`Client::status`] is a watch of [`Status`].
//! - **Authentication.** The credential is a static [`ClientOptions::token`] or comes from
//!   a [`ClientOptions::credentials`] hook, called before every connection attempt. It goes
//!   in the `Authorization: Bearer` header, or in a `hello` frame (with
//!   [`ClientOptions::hello_data`]) with [`ClientOptions::credentials_in_hello`]. A refused
//!   credential (HTTP 401, `reject` `NOT_AUTHORIZED`, close 4001 when a token expires) is
//!   [`ConnectError::Unauthorized`]: the client asks the hook again and retries with
//!   backoff. A forbidden one (HTTP 403, `reject` `FORBIDDEN`, close 4003) is
//!   [`ConnectError::Forbidden`]: the client stops and [`Client::close_reason`] says so.
//!   Before the token expires, the server may call `$refresh`; the client answers it
//!   with the hook's new token by itself.
//!
//!   ```no_run
//!   # async fn run() -> Result<(), plexus_client::ConnectError> {
//!   use plexus_client::{BoxError, ClientOptions, connect};
//!
//!   async fn fetch_token() -> Result<Option<String>, BoxError> {
//!       Ok(Some("eyJhbGciOi...".to_owned())) // from the identity provider
//!   }
//!
//!   let options = ClientOptions::default()
//!       .credentials(fetch_token)
//!       .credentials_in_hello(true)
//!       .hello_data(serde_json::json!({"device": "cli"}));
//!   let client = connect("wss://example.com/ws", options).await?;
//!   # let _ = client;
//!   # Ok(())
//!   # }
//!   ```
//! - **Calls.** [`Client::request`] (one result), [`Client::notify`] (no answer),
//!   [`Client::stream`] (a [`CallStream`] of items; dropping it sends `cancel`),
//!   [`Client::publish`]. Each takes typed params (`&T: Serialize`) or a raw [`Payload`]
//!   ([`IntoPayload`]), and gives typed results or the raw [`Payload`]; a request, a stream or
//!   a publication is a future with option setters ([`Request::timeout`],
//!   [`Request::retryable`], [`StreamRequest::credit`]). Every failure is a [`CallError`]
//!   with a wire [`ErrorCode`]; server errors keep their code, message and data.
//! - **Deadlines.** A request that outlives its deadline fails with `TIMEOUT` and the client
//!   sends `cancel` for it.
//! - **Reconnect.** When the socket drops, the server goes away (1001) or goes silent for
//!   its heartbeat plus [`ClientOptions::heartbeat_grace`], the client reconnects with
//!   exponential backoff and full jitter ([`ReconnectOptions`]). Close codes 1008, 4000
//!   and 4003 end the client instead; 4001 is retried with a fresh credential.
//! - **Offline queue.** Notifications, and calls marked retryable, issued while
//!   disconnected wait in a bounded queue and go out in order after the next `welcome`;
//!   a full queue fails at once ([`CallErrorKind::QueueFull`]). Calls in flight when the
//!   connection drops fail with `UNAVAILABLE`, unless retryable: those are sent again.
//! - **Server → client calls.** Handlers on a [`Router`] (given with
//!   [`ClientOptions::router`]) answer the server, shaped like the server's router and
//!   returning the same [`RpcError`]; unknown methods get `NOT_FOUND`, a server `cancel`
//!   drops the handler. Names starting with `$` are the built-ins' (`$refresh`) and cannot
//!   be registered.
//! - **Hooks.** [`ClientOptions::before_connect`] runs before every attempt (after the
//!   credentials hook) and may change the URL, headers and token.
//! - **Channels.** [`Client::join`] gives a [`Subscription`], a stream of [`ChannelEvent`]s:
//!   publications, presence events, and [`ChannelEvent::Resubscribed`] after every re-join.
//!   The client tracks the position of the last publication of each subscription, re-joins
//!   with it as `since` after a reconnect and drops duplicates, so each publication is seen
//!   once, in order; `recovered: false` tells the application when the server could not
//!   provide what was missed. Each subscription buffers a bounded number of events
//!   ([`JoinOptions::buffer`]); a slow application gets [`ChannelEvent::Lagged`] and the
//!   missed publications are recovered from the history once it catches up, never blocking
//!   the connection. The server may interrupt a subscription (`left` with `UNAVAILABLE`:
//!   re-joined the same way) or end it ([`ChannelEvent::Closed`]). [`Client::publish`],
//!   [`Client::presence`] and [`Client::history`] complete the set.
//! - **Server-side subscriptions.** The server may subscribe the connection to channels
//!   itself (`joined`, `left`). [`Client::server_subscriptions`] gives them as one
//!   [`ServerSubscriptions`] stream of `(channel, event)` pairs: [`ChannelEvent::Subscribed`],
//!   publications (in order, duplicates dropped), presence events, and
//!   [`ChannelEvent::Closed`] when the server ends one or the connection drops. The client
//!   never re-joins them: the server subscribes each new connection again as it decides. A
//!   bounded buffer ([`ClientOptions::server_subscription_buffer`]) drops what does not fit
//!   and says so with [`ChannelEvent::Lagged`].

mod call;
mod channel;
mod client;
mod conn;
mod credentials;
mod error;
mod incoming;
mod options;
mod relay;
mod router;
mod state;
mod status;
mod stream;

pub use call::{Publish, Request, StreamRequest};
pub use channel::{ChannelEvent, History, Member, Publication, ServerSubscriptions, Subscription};
pub use client::{Client, connect};
pub use error::{BoxError, CallError, CallErrorKind, ConnectError};
pub use options::{
    CallOptions, ClientOptions, ConnectRequest, DEFAULT_CHANNEL_BUFFER, DEFAULT_STREAM_WINDOW,
    HistoryOptions, JoinOptions, Provide, ReconnectOptions, StreamOptions, Transport,
};
pub use plexus_protocol::{Codec, ErrorBody, ErrorCode, IntoPayload, Payload, Position, RpcError};
pub use relay::{Mesh, Provided, Provider, ServiceEvent, ServiceWatch};
pub use router::Router;
pub use status::Status;
pub use stream::CallStream;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<Client>();
        assert_send_sync::<CallError>();
        assert_send_sync::<ConnectError>();
        assert_send_sync::<ClientOptions>();
        assert_send_sync::<CallStream<u32>>();
        assert_send_sync::<Subscription>();
        assert_send_sync::<ServerSubscriptions>();
        assert_send_sync::<ChannelEvent>();
        assert_send_sync::<JoinOptions>();
    }

    #[allow(dead_code)]
    fn futures_are_send(client: &Client) {
        assert_send(&client.request::<u32>("a.b", &1));
        assert_send(&client.notify("a.b", &1));
        assert_send(&client.stream::<u32>("a.b", &1));
        assert_send(&client.close());
        assert_send(&client.join("a", JoinOptions::default()));
        assert_send(&client.publish("a", &1));
        assert_send(&client.presence("a"));
        assert_send(&client.history("a", HistoryOptions::default()));
    }

    #[allow(dead_code)]
    fn leave_is_send(subscription: Subscription) {
        assert_send(&subscription.leave());
        assert_send(&connect("ws://127.0.0.1:1/ws", ClientOptions::default()));
    }
}
