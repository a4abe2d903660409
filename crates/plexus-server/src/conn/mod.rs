//! The bottom layer: one socket. Its bounded outbound queue (and the direct writes that may
//! skip it), the [`Wire`] a session reads and writes through, heartbeats, closing, and the
//! [`ConnectionHandle`] anyone can reach the connection with. Nothing here knows about
//! methods or channels: that is the session's (`crate::session`) and the hub's.

mod client_calls;
mod close;
mod deadline;
mod forwarded;
mod handle;
mod heartbeat;
mod message;
mod queue;
mod signal;
mod subscriptions;
mod wire;

pub use client_calls::ClientStream;
pub(crate) use client_calls::decode_answer;
pub(crate) use close::close_reason;
pub use close::{CloseReason, DisconnectReason};
pub(crate) use deadline::Deadline;
pub(crate) use forwarded::Forwarded;
pub use handle::ConnectionHandle;
pub(crate) use handle::{ConnectionInfo, HandleLimits, RawInfo};
pub(crate) use heartbeat::{Beat, Heartbeat, WRITE_BATCH, sleep_until_opt};
pub use message::RawMessage;
pub(crate) use queue::{Outbound, OutboundQueue, QueueEvent, SharedSocket};
pub(crate) use signal::Signal;
pub(crate) use wire::{Inbound, Socket, Wire};
