//! `conns`: open N connections, hold them idle, and read what they cost the server: resident
//! memory per connection, CPU per connection established, and the establishment rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::connect::Target;
use crate::cpu;
use crate::progress::Progress;
use crate::record::{Record, histogram};

/// Connections opened at once.
const OPENING: usize = 128;

/// The `conns` scenario.
pub struct Conns {
    /// The server.
    pub target: Target,
    /// Connections to open and hold.
    pub count: usize,
    /// How long to hold them once open, before reading the server's memory.
    pub hold: Duration,
    /// The server's process, for its memory and CPU time (a local server only).
    pub server_pid: Option<u32>,
    /// Connections opened and failed so far.
    pub progress: Arc<Progress>,
}

impl Conns {
    /// Opens the connections (128 at a time), holds them, and returns what was measured:
    /// `connections`, `connect_failed`, `conns_per_s`, set-up latency percentiles, and with
    /// the server's process its memory and CPU time per connection.
    pub async fn run(self) -> anyhow::Result<Record> {
        let rss = |pid: u32| cpu::rss_kib(pid).context("cannot read the server's RSS");
        let before = self.server_pid.map(rss).transpose()?;
        let window = cpu::Window::start(self.server_pid);
        let started = Instant::now();
        let mut latencies = histogram();
        let mut held = Vec::with_capacity(self.count);
        let mut failed = 0usize;
        let target = &self.target;
        for first in (0..self.count).step_by(OPENING) {
            let last = (first + OPENING).min(self.count);
            let opening = (first..last).map(|conn| async move {
                let at = Instant::now();
                let ws = target.open(conn, "").await;
                (ws, at.elapsed())
            });
            for (ws, took) in futures_util::future::join_all(opening).await {
                match ws {
                    Ok(ws) => {
                        let _ = latencies.record((took.as_micros() as u64).max(1));
                        held.push(ws);
                        self.progress.add_done(1);
                    }
                    Err(_) => {
                        failed += 1;
                        self.progress.add_failed();
                    }
                }
            }
        }
        let establish = started.elapsed();
        let usage = window.finish();
        // Let the server settle (allocators return what they cache lazily), then measure.
        tokio::time::sleep(self.hold).await;
        let connected = held.len();
        let mut record = Record::new();
        if let (Some(pid), Some(before)) = (self.server_pid, before) {
            let after = rss(pid)?;
            let per_conn = (after.saturating_sub(before)) as f64 / connected.max(1) as f64;
            record
                .set("rss_kib_per_conn", (per_conn * 100.0).round() / 100.0)
                .set(
                    "server_rss_mib",
                    (after as f64 / 1024.0 * 10.0).round() / 10.0,
                );
        }
        drop(held);
        record
            .set("connections", connected)
            .set("connect_failed", failed)
            .set(
                "conns_per_s",
                (connected as f64 / establish.as_secs_f64()).round(),
            )
            .latency(&latencies)
            .cpu(&usage, connected as u64);
        Ok(record)
    }
}
