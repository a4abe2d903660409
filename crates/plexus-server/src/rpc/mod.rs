//! Typed RPC: the router, handler traits and the call context.

pub(crate) mod context;
pub(crate) mod handler;
pub(crate) mod router;
