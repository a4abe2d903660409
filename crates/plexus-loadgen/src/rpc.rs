//! `rpc`: C connections, each closed-loop — send a request, wait for its answer, again —
//! for D seconds after a warm-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::Target;
use crate::cpu;
use crate::progress::Progress;
use crate::record::{Record, histogram};
use crate::template::{Fill, Template};

/// How long one request may wait for its answer before its connection stops.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `rpc` scenario.
pub struct Rpc {
    /// The server.
    pub target: Target,
    /// Connections, each with one request in flight.
    pub conns: usize,
    /// Load before measuring.
    pub warmup: Duration,
    /// Load measured.
    pub duration: Duration,
    /// The request.
    pub request: Template,
    /// Text that identifies the answer to request `{seq}`.
    pub reply: Template,
    /// Text that marks an answer as a refusal (an error answer): counted as `refused`, its
    /// latency left out.
    pub refusal: Option<String>,
    /// What `{pad}` stands for.
    pub pad: String,
    /// The server's process, for its CPU time (a local server only).
    pub server_pid: Option<u32>,
    /// Answers received and connections failed so far.
    pub progress: Arc<Progress>,
}

/// What one connection saw while measuring.
struct Tally {
    latencies: Histogram<u64>,
    refused: u64,
    timeouts: u64,
    errors: u64,
}

impl Rpc {
    /// Opens the connections, loads the server for the warm-up and the duration, and
    /// returns what was measured: `requests` (answered while measuring), `answered_total`
    /// (warm-up included), `rps`, `refused`, `timeouts`, `errors`, latency
    /// percentiles, and the server's CPU time per request when its process is known.
    pub async fn run(self) -> anyhow::Result<Record> {
        let this = Arc::new(self);
        let mut sockets = Vec::with_capacity(this.conns);
        for conn in 0..this.conns {
            sockets.push(this.target.open(conn, &this.pad).await?);
        }
        let start = Arc::new(Barrier::new(this.conns + 1));
        let measuring = Instant::now() + this.warmup + Duration::from_millis(100);
        let end = measuring + this.duration;
        let mut tasks = Vec::new();
        for (conn, ws) in sockets.into_iter().enumerate() {
            let (this, start) = (this.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                this.closed_loop(conn, ws, measuring, end).await
            }));
        }
        start.wait().await;
        tokio::time::sleep_until(measuring.into()).await;
        let window = cpu::Window::start(this.server_pid);
        tokio::time::sleep_until(end.into()).await;
        let usage = window.finish();
        let mut all = histogram();
        let (mut refused, mut timeouts, mut errors) = (0, 0, 0);
        for task in tasks {
            let tally = task.await?;
            all.add(&tally.latencies)?;
            refused += tally.refused;
            timeouts += tally.timeouts;
            errors += tally.errors;
        }
        let n = all.len();
        let mut record = Record::new();
        record
            .set("connections", this.conns)
            .set("duration_s", this.duration.as_secs_f64())
            .set("requests", n)
            .set("answered_total", this.progress.done())
            .set("rps", (n as f64 / this.duration.as_secs_f64()).round())
            .set("refused", refused)
            .set("timeouts", timeouts)
            .set("errors", errors)
            .latency(&all)
            .cpu(&usage, n);
        Ok(record)
    }

    async fn closed_loop(
        &self,
        conn: usize,
        mut ws: crate::connect::Ws,
        measuring: Instant,
        end: Instant,
    ) -> Tally {
        let mut tally = Tally {
            latencies: histogram(),
            refused: 0,
            timeouts: 0,
            errors: 0,
        };
        let mut seq = 0u64;
        while Instant::now() < end {
            seq += 1;
            let fill = Fill {
                seq,
                conn,
                pad: &self.pad,
                ..Fill::default()
            };
            let reply = self.reply.render(fill);
            let sent = Instant::now();
            if ws
                .send(Message::text(self.request.render(fill)))
                .await
                .is_err()
            {
                tally.errors += 1;
                self.progress.add_failed();
                break;
            }
            let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
                while let Some(message) = ws.next().await {
                    match message {
                        Ok(Message::Text(text)) if text.as_str().contains(reply.as_str()) => {
                            let refused = self
                                .refusal
                                .as_ref()
                                .is_some_and(|refusal| text.as_str().contains(refusal.as_str()));
                            return Some(refused);
                        }
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
                None
            })
            .await;
            match answered {
                Ok(Some(true)) => {
                    tally.refused += 1;
                    self.progress.add_failed();
                }
                Ok(Some(false)) => {
                    self.progress.add_done(1);
                    if sent >= measuring && Instant::now() <= end {
                        let us = sent.elapsed().as_micros() as u64;
                        let _ = tally.latencies.record(us.max(1));
                    }
                }
                Ok(None) => {
                    tally.errors += 1;
                    self.progress.add_failed();
                    break;
                }
                Err(_) => {
                    tally.timeouts += 1;
                    self.progress.add_failed();
                    break;
                }
            }
        }
        let _ = ws.close(None).await;
        tally
    }
}
