//! One task per socket: read, dispatch, write, heartbeat, limits, close.

mod handle;
mod queue;
mod signal;
mod task;

pub use handle::{ClientStream, ConnectionHandle};
pub(crate) use handle::{ConnShared, Outbound, Pending, decode_answer};
pub(crate) use queue::{OutboundQueue, SharedSocket};
pub(crate) use signal::Signal;
pub use task::DisconnectReason;
pub(crate) use task::{Accepted, MAX_CONTROL_PAYLOAD, run, write_close_reply};
