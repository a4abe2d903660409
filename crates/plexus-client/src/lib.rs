//! The plexus Rust client: typed calls and streams over one WebSocket that reconnects by itself.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use plexus_client::{CallOptions, ClientOptions, ErrorBody, StreamOptions, connect};
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
//! let options = ClientOptions::default()
//!     .token("secret")
//!     // The server may call the client too.
//!     .on_request("client.ping", |n: u32| async move { Ok::<_, ErrorBody>(n + 1) });
//! let client = connect("ws://127.0.0.1:8080/ws", options).await?;
//!
//! // Request / response, typed on both ends.
//! let greeting: Greeting = client.request("greet.hello", &Hello { name: "Ada" }).await?;
//! println!("{}", greeting.text);
//!
//! // An idempotent call may wait for a reconnect instead of failing.
//! let n: u64 = client
//!     .request_with("counter.get", &(), CallOptions::default().retryable(true))
//!     .await?;
//!
//! // A stream with flow control: the server sends at most 32 items ahead.
//! let mut ticks = client
//!     .stream_with::<_, u64>("ticks.count", &n, StreamOptions::default().credit(32))
//!     .await?;
//! while let Some(tick) = ticks.next().await {
//!     println!("tick {}", tick?);
//! }
//!
//! // Fire and forget; queued while disconnected.
//! client.notify("log.event", &"done").await?;
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - **Session.** [`connect`] resolves once the server's `welcome` arrived. The credential
//!   goes in the `Authorization: Bearer` header, or in a `hello` frame with
//!   [`ClientOptions::hello`]. [`Client::status`] is a watch of [`Status`].
//! - **Calls.** [`Client::request`] (one result), [`Client::notify`] (no answer),
//!   [`Client::stream`] (a [`CallStream`] of items; dropping it sends `cancel`). Each has a
//!   `_raw` twin that takes and returns [`Payload`]s as they are on the wire. Every failure
//!   is a [`CallError`] with a wire [`ErrorCode`]; server errors keep their code, message and
//!   data.
//! - **Deadlines.** A request that outlives its deadline fails with `TIMEOUT` and the client
//!   sends `cancel` for it.
//! - **Reconnect.** When the socket drops, the server goes away (1001) or goes silent for
//!   its heartbeat plus [`ClientOptions::heartbeat_grace`], the client reconnects with
//!   exponential backoff and full jitter ([`ReconnectOptions`]). Close codes 1008, 4000,
//!   4001 and 4003 end the client instead.
//! - **Offline queue.** Notifications, and calls marked retryable, issued while
//!   disconnected wait in a bounded queue and go out in order after the next `welcome`;
//!   a full queue fails at once ([`CallErrorKind::QueueFull`]). Calls in flight when the
//!   connection drops fail with `UNAVAILABLE`, unless retryable: those are sent again.
//! - **Server → client calls.** Handlers registered on [`ClientOptions`]
//!   ([`on_request`](ClientOptions::on_request), [`on_notify`](ClientOptions::on_notify),
//!   [`on_stream`](ClientOptions::on_stream)) answer the server; unknown methods get
//!   `NOT_FOUND`, a server `cancel` drops the handler.
//! - **Hooks.** [`ClientOptions::before_connect`] runs before every attempt and may change
//!   the URL, headers and token.

mod client;
mod conn;
mod error;
mod handler;
mod options;
mod state;
mod stream;

pub use client::{Client, Status, connect};
pub use error::{BoxError, CallError, CallErrorKind, ConnectError};
pub use options::{
    CallOptions, ClientOptions, ConnectRequest, DEFAULT_STREAM_WINDOW, ReconnectOptions,
    StreamOptions,
};
pub use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload};
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
    }

    #[allow(dead_code)]
    fn futures_are_send(client: &Client) {
        assert_send(&client.request::<_, u32>("a.b", &1));
        assert_send(&client.notify("a.b", &1));
        assert_send(&client.stream::<_, u32>("a.b", &1));
        assert_send(&client.close());
        assert_send(&connect("ws://127.0.0.1:1/ws", ClientOptions::default()));
    }
}
