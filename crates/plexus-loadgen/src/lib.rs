//! The load generator of plexus: it drives any WebSocket server through message templates,
//! so plexus and the servers it is compared with are measured by the same code. The
//! repository's benchmark (`bench/run.sh`) runs it as the `plexus-loadgen` binary, and
//! `plexus bench` runs it against a user's own server.
//!
//! - [`rpc::Rpc`]: closed-loop request/response over C connections;
//! - [`fanout::Fanout`]: one publisher, N subscribers, end-to-end latency and loss;
//! - [`conns::Conns`]: N idle connections, and what they cost the server;
//! - [`report::table`]: the table of a run's JSON lines.
//!
//! Placeholders: `{seq}` `{ts}` `{conn}` `{channel}` `{pad}` ([`template::Template`]). A
//! [`connect::Target`] is a loopback address unless made with [`connect::Scope::Any`]; every
//! scenario is bounded in time, and [`progress::Progress`] shows how far it is.

pub mod connect;
pub mod conns;
pub mod cpu;
pub mod fanout;
pub mod progress;
pub mod record;
pub mod report;
pub mod rpc;
pub mod template;

/// The runtime a generator of `threads` threads runs on: one thread runs a current-thread
/// runtime, which costs the generator less per message than a one-worker thread pool.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
