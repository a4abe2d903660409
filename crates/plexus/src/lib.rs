//! plexus: a real-time WebSocket framework and server.
//!
//! This facade re-exports the parts and holds the built-in `sys.*` methods that
//! `plexus serve` runs:
//!
//! | module | crate | what |
//! | --- | --- | --- |
//! | [`protocol`] | `plexus-protocol` | frames, codecs, error and close codes |
//! | [`server`] | `plexus-server` | router, connections, axum endpoint |
//! | [`client`] | `plexus-client` | the reconnecting Rust client |
//! | [`sys`] | here | `sys.echo`, `sys.count`, `sys.sleep` |

pub use plexus_client as client;
pub use plexus_protocol as protocol;
pub use plexus_server as server;

pub mod sys;
