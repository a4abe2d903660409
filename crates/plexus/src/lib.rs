//! plexus: a real-time WebSocket framework and server — typed RPC in both directions,
//! channels with history, recovery and presence, over one socket.
//!
//! ```no_run
//! # #[cfg(all(feature = "server", feature = "client"))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use plexus::{ClientOptions, Router, RpcError, Server, connect};
//!
//! // A server with one method...
//! let router = Router::new().request("greet.hello", |name: String| async move {
//!     Ok::<_, RpcError>(format!("hello, {name}"))
//! });
//! let server = Server::builder().router(router).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! let app = server.route("/ws");
//! tokio::spawn(async move { server.serve(listener, app, std::future::pending()).await });
//!
//! // ...and a client that calls it.
//! let client = connect("ws://127.0.0.1:8787/ws", ClientOptions::default()).await?;
//! let greeting: String = client.request("greet.hello", &"Ada").await?;
//! assert_eq!(greeting, "hello, Ada");
//! # Ok(())
//! # }
//! ```
//!
//! This facade re-exports the parts, behind features:
//!
//! | feature | default | what |
//! | --- | --- | --- |
//! | `server` | yes | [`server`] (`plexus-server`): router, connections, hub, auth, axum endpoint; and [`sys`], the built-in `sys.*` methods |
//! | `client` | yes | [`client`] (`plexus-client`): the reconnecting Rust client; with `server`, [`contract`](mod@contract): APIs declared once as traits |
//! | `testing` | no | [`testing`]: a test kit for applications (your server in the test's process, clients connected to it, bounded waits) |
//! | `cli` | no | the `plexus` command (`serve`, `call`, `sub`, `pub`, `token`, ...), with its own dependencies (clap, toml, anyhow, tracing-subscriber) |
//!
//! [`protocol`] (`plexus-protocol`: frames, codecs, codes) is always there. The headline
//! types are re-exported here; the client's own [`Router`](client::Router) (for calls the
//! server makes to the client) is `plexus::client::Router`.

pub use plexus_protocol as protocol;
pub use plexus_protocol::{Codec, ErrorBody, ErrorCode, IntoPayload, Payload, Position, RpcError};

#[cfg(feature = "server")]
pub use plexus_server as server;
#[cfg(feature = "server")]
pub use plexus_server::{
    CallContext, ChannelOptions, ConnectionHandle, EndpointConfig, Hub, Limits, Namespaces, Router,
    Server, ServerBuilder,
};

#[cfg(feature = "server")]
pub mod sys;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(all(feature = "server", feature = "client"))]
pub mod contract;
/// Declares a contract: see the [`contract`](mod@contract) module.
#[cfg(all(feature = "server", feature = "client"))]
pub use plexus_macros::contract;
/// The JSON Schema derive that contracts' types need (`#[derive(JsonSchema)]`), for
/// applications that do not depend on `schemars` themselves
/// (`#[schemars(crate = "plexus::schemars")]` on each type then).
#[cfg(all(feature = "server", feature = "client"))]
pub use schemars;

#[cfg(feature = "client")]
pub use plexus_client as client;
#[cfg(feature = "client")]
pub use plexus_client::{Client, ClientOptions, JoinOptions, Subscription, connect};
