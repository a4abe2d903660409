//! `fanout`: N subscribers join one channel (spread over a cluster's nodes when several URLs
//! are given); one publisher publishes at a fixed rate, or as fast as a window of
//! undelivered messages allows. Latency is end to end: each subscriber
//! reads the `"ts"` the publisher put in the message, wherever the server's envelope puts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Notify, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{Target, expect};
use crate::cpu;
use crate::progress::Progress;
use crate::record::{Record, histogram};
use crate::template::{Fill, Template, now_ns, number_after};

/// How long the subscribers may take to receive what was published, after the last one.
const DRAIN: Duration = Duration::from_secs(5);
/// Connections opened at once.
const OPENING: usize = 64;

/// The `fanout` scenario.
pub struct Fanout {
    /// The publisher's node, and the first subscribers'.
    pub target: Target,
    /// Other nodes of a cluster: subscribers are spread over all nodes in turn.
    pub also: Vec<Target>,
    /// Subscribers.
    pub subscribers: usize,
    /// Publishing before measuring.
    pub warmup: Duration,
    /// Publishing measured.
    pub duration: Duration,
    /// What each subscriber sends once.
    pub subscribe: Template,
    /// Text of the subscription's acknowledgement, waited for.
    pub subscribe_ack: Option<String>,
    /// What the publisher sends; carries `{ts}` under the key `"ts"`.
    pub publish: Template,
    /// Text that marks the server's answer to a publication as a refusal: counted as
    /// `refused`.
    pub refusal: Option<String>,
    /// Messages per second; 0 = as fast as `window` allows.
    pub rate: f64,
    /// With `rate` 0: at most this many messages not yet delivered to every subscriber.
    pub window: u64,
    /// What `{channel}` stands for.
    pub channel: String,
    /// What `{pad}` stands for.
    pub pad: String,
    /// The server's process, for its CPU time (a local server only).
    pub server_pid: Option<u32>,
    /// Deliveries so far, and subscribers whose connection failed.
    pub progress: Arc<Progress>,
}

/// Shared by the subscribers.
struct Deliveries {
    /// Its `done` counts the deliveries, its `failed` the subscribers whose connection broke.
    progress: Arc<Progress>,
    /// Wakes the publisher waiting for the window to open (only while it waits: a wake per
    /// delivery would cost the generator more than reading the delivery).
    window_open: Notify,
    waiting: AtomicBool,
    /// Latencies of messages published while measuring.
    latencies: Mutex<Histogram<u64>>,
}

impl Fanout {
    /// Subscribes, publishes for the warm-up and the duration, waits (a bounded time) for
    /// the last deliveries, and returns what was measured: `published` (while measuring),
    /// `published_total` (warm-up included), `deliveries_per_s`, `lost`, `refused`, end-to-end latency percentiles, and the server's CPU time per delivery when
    /// its process is known.
    pub async fn run(self) -> anyhow::Result<Record> {
        let deliveries = Arc::new(Deliveries {
            progress: self.progress.clone(),
            window_open: Notify::new(),
            waiting: AtomicBool::new(false),
            latencies: Mutex::new(histogram()),
        });
        // Published while measuring: from `from_ns` to `to_ns` on the generator's clock.
        let span = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)));
        let (stop_tx, stop) = watch::channel(false);
        let mut readers = Vec::with_capacity(self.subscribers);
        for first in (0..self.subscribers).step_by(OPENING) {
            let last = (first + OPENING).min(self.subscribers);
            let opened = futures_util::future::join_all((first..last).map(|conn| self.join(conn)));
            for ws in opened.await {
                let (deliveries, span, stop) = (deliveries.clone(), span.clone(), stop.clone());
                readers.push(tokio::spawn(read(ws?, deliveries, span, stop)));
            }
        }
        let publisher = self.target.open(self.subscribers, &self.pad).await?;
        let (mut sink, mut acks) = publisher.split();
        // What the server answers the publisher is read, and only refusals counted.
        let refused = Arc::new(AtomicU64::new(0));
        let ack_reader = {
            let (refused, refusal) = (refused.clone(), self.refusal.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = acks.next().await {
                    if let (Message::Text(text), Some(refusal)) = (&message, &refusal)
                        && text.as_str().contains(refusal.as_str())
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };

        let n = self.subscribers as u64;
        let start = Instant::now();
        let measuring = start + self.warmup;
        let end = measuring + self.duration;
        let mut published = 0u64;
        let mut window: Option<(cpu::Window, u64)> = None;
        let mut at_measure = 0u64;
        while Instant::now() < end {
            if window.is_none() && Instant::now() >= measuring {
                span.0.store(now_ns(), Ordering::Relaxed);
                at_measure = deliveries.progress.done();
                window = Some((cpu::Window::start(self.server_pid), published));
            }
            if self.rate > 0.0 {
                // A rate so low that the next one is due past any clock: none is.
                let due = Duration::try_from_secs_f64(published as f64 / self.rate)
                    .ok()
                    .and_then(|after| start.checked_add(after))
                    .unwrap_or(end)
                    .min(end);
                tokio::time::sleep_until(due.into()).await;
                if Instant::now() >= end {
                    break;
                }
            } else {
                // Wait while a window's worth of deliveries is outstanding.
                loop {
                    let progress = deliveries.window_open.notified();
                    tokio::pin!(progress);
                    progress.as_mut().enable();
                    deliveries.waiting.store(true, Ordering::SeqCst);
                    // Subscribers whose connection broke receive nothing more, and frames
                    // from another publisher on the channel may count as deliveries: the
                    // window must neither wait for the first nor underflow with the second.
                    let live = n.saturating_sub(deliveries.progress.failed()).max(1);
                    let outstanding = (published * live).saturating_sub(deliveries.progress.done());
                    if outstanding < self.window * live {
                        deliveries.waiting.store(false, Ordering::Relaxed);
                        break;
                    }
                    tokio::select! {
                        _ = &mut progress => {}
                        _ = tokio::time::sleep_until(end.into()) => break,
                    }
                }
            }
            published += 1;
            let fill = Fill {
                seq: published,
                channel: &self.channel,
                pad: &self.pad,
                ..Fill::default()
            };
            sink.send(Message::text(self.publish.render(fill))).await?;
        }
        span.1.store(now_ns(), Ordering::Relaxed);
        let (window, published_before) = window.unwrap_or((cpu::Window::start(None), 0));
        let usage = window.finish();
        let delivered_in_window = deliveries.progress.done().saturating_sub(at_measure);

        // Drain: every subscriber should have every message.
        let drain_end = Instant::now() + DRAIN;
        while deliveries.progress.done() < published * n && Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered = deliveries.progress.done();
        let _ = stop_tx.send(true);
        for reader in readers {
            let _ = reader.await;
        }
        ack_reader.abort();
        let latencies = deliveries.latencies.lock().await;
        let mut record = Record::new();
        record
            .set("subscribers", self.subscribers)
            .set("duration_s", self.duration.as_secs_f64())
            .set("published", published - published_before)
            .set("published_total", published)
            .set(
                "deliveries_per_s",
                (delivered_in_window as f64 / self.duration.as_secs_f64()).round(),
            )
            .set("lost", (published * n).saturating_sub(delivered))
            .set("refused", refused.load(Ordering::Relaxed))
            .latency(&latencies)
            .cpu(&usage, delivered_in_window);
        Ok(record)
    }

    /// Subscriber `conn`: connected (to node `conn` modulo the nodes), subscribed,
    /// acknowledged.
    async fn join(&self, conn: usize) -> anyhow::Result<crate::connect::Ws> {
        let node = conn % (1 + self.also.len());
        let target = if node == 0 {
            &self.target
        } else {
            &self.also[node - 1]
        };
        let mut ws = target.open(conn, &self.pad).await?;
        let fill = Fill {
            conn,
            channel: &self.channel,
            pad: &self.pad,
            ..Fill::default()
        };
        ws.send(Message::text(self.subscribe.render(fill))).await?;
        if let Some(ack) = &self.subscribe_ack {
            tokio::time::timeout(Duration::from_secs(10), expect(&mut ws, ack)).await??;
        }
        Ok(ws)
    }
}

/// One subscriber: counts deliveries, and records the latency of those published while
/// measuring.
async fn read(
    mut ws: crate::connect::Ws,
    deliveries: Arc<Deliveries>,
    span: Arc<(AtomicU64, AtomicU64)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut local = histogram();
    let mut pending = 0u32;
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = stop.changed() => break,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(_)) => {
                deliveries.progress.add_failed();
                break;
            }
            None => break,
        };
        let Message::Text(text) = message else {
            continue;
        };
        let Some(ts) = number_after(text.as_str(), "\"ts\"") else {
            continue;
        };
        let now = now_ns();
        deliveries.progress.add_done(1);
        if deliveries.waiting.load(Ordering::SeqCst) {
            deliveries.window_open.notify_one();
        }
        let (from, to) = (
            span.0.load(Ordering::Relaxed),
            span.1.load(Ordering::Relaxed),
        );
        if ts >= from && ts <= to {
            let _ = local.record((now.saturating_sub(ts) / 1000).max(1));
            pending += 1;
        }
        // Merged in batches, so that subscribers do not contend on one lock per message.
        if pending >= 256 {
            deliveries.latencies.lock().await.add(&local).ok();
            local.reset();
            pending = 0;
        }
    }
    deliveries.latencies.lock().await.add(&local).ok();
}
