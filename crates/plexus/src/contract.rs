//! Typed contracts: an API declared once as a trait, checked by the compiler at both ends.
//!
//! [`#[contract]`](crate::contract) on a trait of `async fn`s gives, beside the trait:
//!
//! - `<Trait>Contract::router(implementation)`: a [`Router`](crate::Router) serving every
//!   method as `<Trait>.<method>` (`#[contract(name = "chat")]` changes the prefix,
//!   `#[rename = "..."]` a method's name), to merge with others;
//! - `<Trait>Client::new(client)`: typed calls over a [`Client`](crate::Client): a request
//!   returns the client's `Request` (set a timeout, then `.await` its answer), a
//!   notification is sent, a stream returns the client's `StreamRequest` (dropping the
//!   stream cancels it);
//! - `<Trait>Contract::NAME` and `METHODS` (names on the wire and kinds);
//! - for a contract the server calls on its clients: `<Trait>Contract::client_router`
//!   (a `plexus::client::Router` the client serves it with; there when no method takes a
//!   `CallContext`) and `<Trait>Connection::new(conn)`, typed calls through a server-side
//!   [`ConnectionHandle`](crate::ConnectionHandle).
//!
//! A method is a request (`-> Result<T, E>`, `E` into [`RpcError`](crate::RpcError): its code
//! and data reach the caller), a `#[notification]` (returns nothing), or a `#[stream]`
//! (`-> Result<ItemStream<T>, E>`). It takes `&self`, optionally the call's
//! [`CallContext`](crate::CallContext) first (the caller does not send it), and one parameter
//! at most (several go in a struct). `#[public]` or `#[requires("permission")]` declare who
//! may call it (strict mode needs one); `#[timeout_ms = N]` gives it a deadline of its own on
//! callers' stubs (not on a stream the server opens on a client); other attributes (docs,
//! `#[deprecated]`) are kept on both sides.
//!
//! ```
//! use plexus::contract::ItemStream;
//! use plexus::{RpcError, contract};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! pub struct Line {
//!     pub text: String,
//! }
//!
//! /// A chat room.
//! #[contract]
//! pub trait Chat {
//!     /// Posts a line; answers its number.
//!     #[public]
//!     async fn send(&self, line: Line) -> Result<u64, RpcError>;
//!     /// Someone is typing.
//!     #[notification]
//!     #[public]
//!     async fn typing(&self, who: String);
//!     /// The lines so far, then nothing.
//!     #[stream]
//!     #[requires("chat:read")]
//!     async fn lines(&self) -> Result<ItemStream<Line>, RpcError>;
//! }
//!
//! struct Room;
//!
//! impl Chat for Room {
//!     async fn send(&self, line: Line) -> Result<u64, RpcError> {
//!         Ok(line.text.len() as u64)
//!     }
//!     async fn typing(&self, _who: String) {}
//!     async fn lines(&self) -> Result<ItemStream<Line>, RpcError> {
//!         let line = Line { text: "hi".into() };
//!         Ok(Box::pin(futures_util::stream::iter([Ok(line)])))
//!     }
//! }
//!
//! let router = plexus::sys::router().merge(ChatContract::router(Room));
//! assert!(router.contains("Chat.send"));
//! assert_eq!(ChatContract::METHODS.len(), 3);
//! # async fn call(client: plexus::Client) -> Result<(), plexus::client::CallError> {
//! let chat = ChatClient::new(client);
//! let number = chat.send(&Line { text: "hello".into() }).await?;
//! # let _ = number;
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;

use futures_util::Stream;

/// What a `#[stream]` method returns: its items, each a value or an error that ends it.
pub type ItemStream<T, E = crate::RpcError> = Pin<Box<dyn Stream<Item = Result<T, E>> + Send>>;

/// A method of a contract, as `<Trait>Contract::METHODS` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Its name on the wire: `<Contract>.<method>`.
    pub name: &'static str,
    /// What it is.
    pub kind: MethodKind,
}

mod typescript;

pub use plexus_server::{ContractSchema, MethodKind, MethodSchema, ServedBy, definition_name};
pub use typescript::{TypescriptError, typescript};

/// What the code `#[contract]` writes uses; not for use by hand.
#[doc(hidden)]
pub mod __private {
    pub use plexus_client::{CallError, Client, Request, Router as ClientRouter, StreamRequest};
    pub use plexus_server::{CallError as ServerCallError, ClientStream, ConnectionHandle, Router};
    pub use std::sync::Arc;

    /// Fails to compile, at the type, when a method's error cannot become an `RpcError`.
    pub fn error_into_rpc_error<E: Into<crate::RpcError>>() {}

    /// The generator of one contract's schemas (JSON Schema 2020-12; named types go to
    /// `$defs`).
    pub fn schema_generator() -> schemars::SchemaGenerator {
        schemars::generate::SchemaSettings::draft2020_12().into_generator()
    }

    /// `T`'s schema, named types referred to (fails to compile, at the type, without
    /// `JsonSchema`).
    pub fn schema_of<T: schemars::JsonSchema>(
        generator: &mut schemars::SchemaGenerator,
    ) -> serde_json::Value {
        generator.subschema_for::<T>().to_value()
    }

    /// The contract's schema, served by the server, with the named types `generator` met.
    pub fn contract_schema(
        name: &str,
        description: Option<String>,
        methods: Vec<super::MethodSchema>,
        mut generator: schemars::SchemaGenerator,
    ) -> super::ContractSchema {
        super::ContractSchema {
            name: name.to_owned(),
            served_by: super::ServedBy::Server,
            description,
            methods,
            definitions: generator.take_definitions(true),
        }
    }
}
