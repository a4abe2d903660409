//! Typed RPC: the router, handler traits, the call context and handler pools.

pub(crate) mod context;
pub(crate) mod handler;
pub(crate) mod pool;
pub(crate) mod router;
pub(crate) mod schema;
