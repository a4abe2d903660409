//! The plexus server: typed RPC in both directions over WebSocket, on axum and tokio.
//!
//! ```no_run
//! use plexus_server::{Router, RpcError, Server};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Greet { name: String }
//!
//! # async fn run() -> std::io::Result<()> {
//! let router = Router::new()
//!     .request("greet.hello", |p: Greet| async move { Ok::<_, RpcError>(format!("hello, {}", p.name)) });
//! let server = Server::builder().router(router).build();
//! let app = server.route("/ws"); // an axum::Router: merge it into your own app
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! server.serve(listener, app, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Concepts:
//!
//! - [`Router`]: method names to handlers. Handlers are async functions or closures over
//!   serde types, taking an optional [`CallContext`] first: request handlers return
//!   `Result<R, E>`, stream handlers return `Result<impl Stream<Item = Result<T, E>>, E>`,
//!   notification handlers return `()`. Params that do not fit give `VALIDATION_ERROR` with
//!   the serde path of the bad field; a panicking handler gives `INTERNAL`.
//! - [`CallContext`]: the connection, cancellation (`cancelled()`, `on_cancel`), headers,
//!   query, remote address, principal and shared extensions of one call.
//! - [`ConnectionHandle`]: reach a connection from any task: call the client
//!   (`request`, `stream`), notify it, close it.
//! - [`auth`]: who connects. An [`Authenticator`] (the built-in [`JwtAuthenticator`], or
//!   your own) turns the connection's [`Credential`] into a [`Principal`], or refuses it with
//!   an [`AuthError`].
//! - [`EndpointConfig`] and [`Limits`]: message size, calls in flight, outbound queue,
//!   heartbeat, handshake and idle timeouts, bad-frame budget, compression.
//! - Guards: [`ConnectionLimiter`] (connections in total and per client address),
//!   [`OriginPolicy`] (which web pages may connect), [`CallRateLimiter`] (frames per second
//!   per connection), and permissions declared where methods and namespaces are registered
//!   ([`Router::requires`], [`ChannelOptions::require`]), all declared in strict mode
//!   ([`check_strict`]).
//!
//! The wire protocol is in the `plexus-protocol` crate and `PROTOCOL.md`.

mod api;
pub mod auth;
mod channel;
mod config;
mod conn;
mod endpoint;
mod error;
mod guard;
mod hub;
mod metrics;
mod principal;
mod raw;
mod relay;
mod rpc;
mod session;

pub use auth::{
    AuthError, AuthRequest, Authenticator, Credential, CredentialSource, JwtAuthenticator,
    JwtConfig,
};
pub use channel::{ChannelAction, ChannelOptions, Namespaces};
pub use config::{Compression, EndpointConfig, Limits};
pub use conn::{ClientStream, CloseReason, ConnectionHandle, DisconnectReason, RawMessage};
pub use endpoint::{
    BuildError, DEFAULT_AUTH_COOKIE, Readiness, Server, ServerBuilder, StrictModeError,
    check_strict, random_node_id,
};
pub use error::{CallError, RpcError};
pub use guard::{
    AllowedOrigin, CallRateLimiter, ConnectionLimiter, ConnectionSlot, InvalidOrigin,
    InvalidRateLimit, LimitRefusal, OriginPolicy, RateLimit,
};
pub use hub::{History, Hub, HubError, HubErrorKind, Member, NodeInfo, Publication};
pub use plexus_engine as engine;
pub use plexus_engine::{Engine, MemoryEngine};
pub use plexus_protocol as protocol;
pub use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, IntoPayload, Payload, Position};
pub use principal::Principal;
pub use raw::{ChannelPipe, EndpointError, RawConnection, RawEndpoint, RawHandler, RawKind};
pub use relay::{ProviderEvent, ProviderInfo, Relay, RelayConfig};
pub use rpc::context::{CallContext, CancelReason};
pub use rpc::handler::{NotifyHandler, RequestHandler, StreamHandler};
pub use rpc::pool::ProtocolHandler;
pub use rpc::router::Router;
pub use rpc::schema::{ContractSchema, MethodKind, MethodSchema, ServedBy, definition_name};
