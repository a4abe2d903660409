//! `conns`: open N connections, hold them idle, and read what they cost the server: resident
//! memory per connection, CPU per connection established, and the establishment rate.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::connect::Target;
use crate::cpu;
use crate::record::{Record, histogram};

/// Connections opened at once.
const OPENING: usize = 128;

pub(crate) struct Conns {
    pub(crate) target: Target,
    pub(crate) count: usize,
    pub(crate) hold: Duration,
    pub(crate) server_pid: u32,
}

impl Conns {
    pub(crate) async fn run(self) -> anyhow::Result<Record> {
        let before = cpu::rss_kib(self.server_pid).context("cannot read the server's RSS")?;
        let window = cpu::Window::start(Some(self.server_pid));
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
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        let establish = started.elapsed();
        let usage = window.finish();
        // Let the server settle (allocators return what they cache lazily), then measure.
        tokio::time::sleep(self.hold).await;
        let after = cpu::rss_kib(self.server_pid).context("cannot read the server's RSS")?;
        let connected = held.len();
        let per_conn = (after.saturating_sub(before)) as f64 / connected.max(1) as f64;
        drop(held);
        let mut record = Record::new();
        record
            .set("connections", connected)
            .set("connect_failed", failed)
            .set("rss_kib_per_conn", (per_conn * 100.0).round() / 100.0)
            .set(
                "server_rss_mib",
                (after as f64 / 1024.0 * 10.0).round() / 10.0,
            )
            .set(
                "conns_per_s",
                (connected as f64 / establish.as_secs_f64()).round(),
            )
            .latency(&latencies)
            .cpu(&usage, connected as u64);
        Ok(record)
    }
}
