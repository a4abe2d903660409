//! Channel namespaces: how the channels of each namespace behave and who may use them. The
//! channels themselves live in the hub (`crate::hub`).

mod options;

pub use options::{ChannelAction, ChannelOptions, Namespaces};
