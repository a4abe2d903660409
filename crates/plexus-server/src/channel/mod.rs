//! Channels: pub/sub with history, recovery, presence and filters.

mod filter;
mod hub;
mod options;

pub use hub::{History, HistoryEntry, Hub, Member};
pub use options::{ChannelAction, ChannelOptions, Namespaces};
