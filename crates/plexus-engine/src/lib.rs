//! The seam between a plexus node's hub and whatever carries channels across nodes.
//!
//! A hub keeps the node's own connections and subscribers. Everything that must agree across
//! nodes goes through an [`Engine`]: the position of each publication, the history kept for
//! recovery, presence, and messages addressed to connections held by other nodes. The
//! [`MemoryEngine`] does all of this in one process and is the default; the Redis and NATS
//! engines (crates `plexus-redis` and `plexus-nats`) implement the same trait for nodes in
//! several processes, and pass the same conformance suite (the `conformance` module, behind
//! the feature of that name).
//!
//! The contract, in short:
//!
//! - **Positions.** [`Engine::publish`] gives each publication of a channel an offset one
//!   above the previous one, within the channel's epoch. When an engine loses a channel's
//!   history (it expired, was evicted, or the backend restarted), the channel starts over in
//!   a new epoch, so a position from before can never be mistaken for one after.
//! - **Delivery.** After [`Engine::watch`] for a channel has completed, this node's
//!   [`EngineSink`] receives every later publication of that channel exactly once and in
//!   offset order, until the watch is undone. Watches are counted per node: the node stays
//!   watching while it has made more `watch` calls than `unwatch` calls, and each call takes
//!   effect in the order the calls were made, whenever their futures complete.
//! - **Recovery.** [`Engine::history`] reads what is kept after a position and says whether
//!   it is everything since then. A hub joins a subscriber by watching first, then reading
//!   history, and merging by offset: nothing falls between the two.
//! - **Presence** is the set of members of each channel across nodes; changes reach the
//!   sinks of the nodes watching the channel.
//! - **Node messages** ([`NodeMessage`]) reach every other node; the node holding the
//!   addressed connection acts on them.
//!
//! The sink is called from inside the engine (the memory engine calls it while it holds the
//! channel's lock, which is what keeps the order): it must not block or call back into the
//! engine.

#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
mod memory;
mod wire;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryEngine;
use plexus_protocol::{ErrorBody, Payload, Position, PresenceEvent};
use serde::{Deserialize, Serialize};

/// What engine calls return: a boxed future, so that engines can be used as
/// `Arc<dyn Engine>`. The memory engine's futures are ready at once.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send + 'a>>;

/// Carries channels (positions, history, presence) and node-to-node messages for one node.
/// See the [crate documentation](crate) for the contract every implementation keeps.
pub trait Engine: Send + Sync + 'static {
    /// Starts the engine for the node `node`: from now on it calls `sink` with what reaches
    /// this node. Called once, before anything else.
    fn start<'a>(&'a self, node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()>;

    /// Publishes `data` to `channel`, keeping it in the history as `options` say; returns
    /// its position. Every node watching the channel receives it.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position>;

    /// The channel's current position and the kept publications after `since` (all kept,
    /// without it), oldest first, at most `limit`.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage>;

    /// Starts delivering the channel's publications and presence changes to this node's
    /// sink. Completes once no later publication can be missed.
    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()>;

    /// Undoes one [`watch`](Engine::watch).
    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()>;

    /// Adds (or replaces, without an event) a member of the channel's presence.
    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()>;

    /// Removes the member with connection id `conn` from the channel's presence.
    fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()>;

    /// The channel's members across all nodes.
    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>>;

    /// Sends `message` to every other node.
    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()>;

    /// Whether the engine has its link to the backend right now (what a readiness check
    /// reports). An engine without a backend is always available.
    fn available(&self) -> bool {
        true
    }

    /// What the histories this engine keeps in the process hold, for metrics; `None` from an
    /// engine whose histories live in its backend (the backend's own metrics show them). It
    /// is read right after [`publish`](Engine::publish) and [`history`](Engine::history)
    /// are called, before their futures are awaited: an engine that reports stats does
    /// their work when they are called, as the memory engine does.
    fn history_stats(&self) -> Option<HistoryStats> {
        None
    }
}

/// What [`Engine::history_stats`] reports: the histories of every channel, together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryStats {
    /// Publications kept (an expired one counts until its channel is next published to or
    /// read).
    pub publications: u64,
    /// Their payloads' bytes.
    pub bytes: u64,
}

impl HistoryStats {
    /// Stats of `publications` kept publications of `bytes` bytes together.
    pub fn new(publications: u64, bytes: u64) -> Self {
        Self {
            publications,
            bytes,
        }
    }
}

/// Where an engine delivers what reaches a node. Implemented by the hub.
///
/// Called from inside the engine, possibly under its locks: implementations hand the event
/// on without blocking and never call back into the engine.
pub trait EngineSink: Send + Sync + 'static {
    /// A publication of a watched channel, in offset order per channel.
    fn publication(&self, publication: &Publication);

    /// A member joined or left a watched channel.
    fn presence(&self, channel: &str, event: PresenceEvent, member: &Member);

    /// A message from another node.
    fn message(&self, message: NodeMessage);

    /// The engine may have missed publications of a watched channel (its link to the
    /// backend broke): subscribers must join again with recovery.
    fn interrupted(&self, channel: &str);
}

/// How a channel keeps its publications, given with each publication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// How many publications to keep (0: none).
    pub history_size: usize,
    /// How long to keep each one; `None`: until pushed out by newer ones.
    pub history_ttl: Option<Duration>,
}

/// One publication, as the engine delivers it to watching nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    /// The channel.
    pub channel: Arc<str>,
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// Its offset within the epoch.
    pub offset: u64,
    /// Its data.
    pub data: Payload,
}

/// What [`Engine::history`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    /// The channel's current position (offset 0 in a new epoch if it has none).
    pub position: Position,
    /// Kept publications after `since`, oldest first: `(offset, data)`.
    pub publications: Vec<(u64, Payload)>,
    /// Whether `since` was given and nothing after it is missing: same epoch, not ahead of
    /// the channel, and the history still holds every publication after it.
    pub recoverable: bool,
}

/// A member of a channel, as presence shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The user id, `None` for anonymous connections.
    pub user: Option<String>,
    /// The connection id.
    pub conn: String,
    /// Application data attached to the member (from the connection's credentials).
    pub info: Option<Payload>,
}

/// A message for a connection or user that may be on another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NodeMessage {
    /// Send a notification to a connection.
    Notify {
        /// Connection id.
        conn: String,
        /// Method name.
        method: String,
        /// Params.
        data: Payload,
    },
    /// Subscribe a connection to a channel (a server-side subscription).
    Subscribe {
        /// Connection id.
        conn: String,
        /// Channel.
        channel: String,
    },
    /// End a connection's subscription to a channel.
    Unsubscribe {
        /// Connection id.
        conn: String,
        /// Channel.
        channel: String,
    },
    /// Close a connection.
    Disconnect {
        /// Connection id.
        conn: String,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Send a request to a connection. The node that holds it answers with
    /// [`NodeMessage::Reply`] to `node`; the others ignore it.
    Request {
        /// Connection id.
        conn: String,
        /// Method name.
        method: String,
        /// Params.
        data: Payload,
        /// The node that asks, which the reply is for.
        node: String,
        /// The asking node's id for the request.
        id: u64,
        /// How long the client has to answer, in milliseconds.
        timeout_ms: u64,
    },
    /// The answer to a [`NodeMessage::Request`], for the node that sent it.
    Reply {
        /// The node the reply is for.
        node: String,
        /// The request's id on that node.
        id: u64,
        /// The client's result, or why there is none.
        result: Result<Payload, ErrorBody>,
    },
    /// The asking node stopped waiting for its [`NodeMessage::Request`] or
    /// [`NodeMessage::StreamOpen`] `id` (its caller gave up): the node that holds the
    /// connection cancels the call on the client.
    CancelRequest {
        /// The node that asked.
        node: String,
        /// The request's id on that node.
        id: u64,
    },
    /// Open a stream on a connection. The node that holds it calls the client and sends its
    /// items to `node` as [`NodeMessage::StreamEvent`]s, at most `credit` ahead of the
    /// [`NodeMessage::StreamCredit`] that node grants; the others ignore it.
    StreamOpen {
        /// Connection id.
        conn: String,
        /// Method name.
        method: String,
        /// Params.
        data: Payload,
        /// The node that asks, which the events are for.
        node: String,
        /// The asking node's id for the stream (from the ids of its requests).
        id: u64,
        /// Items the asking node takes before it grants more.
        credit: u32,
    },
    /// What happened to a stream opened with [`NodeMessage::StreamOpen`], for the node
    /// that opened it.
    StreamEvent {
        /// The node the event is for.
        node: String,
        /// The stream's id on that node.
        id: u64,
        /// Counts the stream's events from 0, so that a lost one is noticed.
        seq: u64,
        /// The event.
        event: StreamEvent,
    },
    /// The node that opened stream `id` takes `credit` more items.
    StreamCredit {
        /// The node that opened the stream.
        node: String,
        /// The stream's id on that node.
        id: u64,
        /// How many more items it takes.
        credit: u32,
    },
    /// Write a message to a raw socket.
    Write {
        /// Connection id.
        conn: String,
        /// The message.
        message: RawData,
    },
    /// Close every connection of a user.
    DisconnectUser {
        /// User id.
        user: String,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// A raw socket's message as it crosses nodes ([`NodeMessage::Write`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RawData {
    /// A text message.
    Text(String),
    /// A binary message (base64 in the node message's JSON).
    Binary(#[serde(with = "wire::base64_bytes")] Vec<u8>),
}

/// One event of a stream that crosses nodes ([`NodeMessage::StreamEvent`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamEvent {
    /// The holding node is working on the stream: sent first, then whenever the stream has
    /// been quiet for a while, so that the opening node can tell a quiet stream from a lost
    /// one.
    Alive,
    /// An item.
    Item(Payload),
    /// The stream ended: completed, or failed with the error.
    End(Result<(), ErrorBody>),
}

/// Why an engine call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineError {
    kind: EngineErrorKind,
    message: String,
}

/// The kind of an [`EngineError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineErrorKind {
    /// The backend cannot be reached or answered with an error; a retry may succeed.
    Unavailable,
    /// A limit of the engine was reached (channels kept, say).
    Limit,
    /// Something is already taken by another live node (its node id, say).
    Conflict,
    /// The engine's configuration is wrong (a URL that cannot be parsed, say).
    Invalid,
}

impl EngineError {
    /// An error of `kind`.
    pub fn new(kind: EngineErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The backend is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(EngineErrorKind::Unavailable, message)
    }

    /// Its kind.
    pub fn kind(&self) -> EngineErrorKind {
        self.kind
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}
