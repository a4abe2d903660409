//! The engine as the hub uses it: every operation counted (`plexus_engine_operations_total`
//! and, when it fails, `plexus_engine_errors_total`, by operation), in one place rather than
//! at each call. An engine that keeps histories in the process has them measured after
//! each operation that changes them (`plexus_history_publications`, `plexus_history_bytes`):
//! the gauges move by the change since this engine's last reading, so that several servers
//! in one process add up instead of overwriting each other.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};
use plexus_engine::{
    Engine, EngineError, EngineFuture, EngineSink, HistoryPage, HistoryStats, Member, NodeMessage,
    Retention,
};
use plexus_protocol::{Payload, Position};

/// An operation's two series, registered once.
struct Op {
    done: Counter,
    failed: Counter,
}

impl Op {
    fn new(op: &'static str) -> Self {
        Self {
            done: metrics::counter!("plexus_engine_operations_total", "op" => op),
            failed: metrics::counter!("plexus_engine_errors_total", "op" => op),
        }
    }

    fn count<'a, T: 'a>(
        &'a self,
        future: impl Future<Output = Result<T, EngineError>> + Send + 'a,
    ) -> EngineFuture<'a, T> {
        Box::pin(async move {
            let result = future.await;
            self.done.increment(1);
            if result.is_err() {
                self.failed.increment(1);
            }
            result
        })
    }
}

/// An engine whose operations are counted.
pub(super) struct MeteredEngine {
    inner: Arc<dyn Engine>,
    publish: Op,
    history: Op,
    watch: Op,
    unwatch: Op,
    add_member: Op,
    remove_member: Op,
    members: Op,
    broadcast: Op,
    history_publications: Gauge,
    history_bytes: Gauge,
    /// What this engine's histories held at its last reading.
    last_publications: AtomicU64,
    last_bytes: AtomicU64,
}

impl MeteredEngine {
    pub(super) fn new(inner: Arc<dyn Engine>) -> Self {
        Self {
            inner,
            publish: Op::new("publish"),
            history: Op::new("history"),
            watch: Op::new("watch"),
            unwatch: Op::new("unwatch"),
            add_member: Op::new("add_member"),
            remove_member: Op::new("remove_member"),
            members: Op::new("members"),
            broadcast: Op::new("broadcast"),
            history_publications: metrics::gauge!("plexus_history_publications"),
            history_bytes: metrics::gauge!("plexus_history_bytes"),
            last_publications: AtomicU64::new(0),
            last_bytes: AtomicU64::new(0),
        }
    }

    /// Moves the gauges by what the kept histories changed since the last reading. A memory
    /// engine's publish and history calls are done when made (see `Engine::history_stats`),
    /// so reading right after calling, before awaiting, sees them. Each reading swaps in
    /// its value, so concurrent readings still add up to the latest one.
    fn measure_history(&self) {
        if let Some(stats) = self.inner.history_stats() {
            let moved = |gauge: &Gauge, last: &AtomicU64, now: u64| {
                let before = last.swap(now, Ordering::Relaxed);
                gauge.increment(now as f64 - before as f64);
            };
            moved(
                &self.history_publications,
                &self.last_publications,
                stats.publications,
            );
            moved(&self.history_bytes, &self.last_bytes, stats.bytes);
        }
    }
}

impl Drop for MeteredEngine {
    /// What this engine counted leaves the process's gauges with it.
    fn drop(&mut self) {
        self.history_publications
            .decrement(*self.last_publications.get_mut() as f64);
        self.history_bytes
            .decrement(*self.last_bytes.get_mut() as f64);
    }
}

impl Engine for MeteredEngine {
    fn start<'a>(&'a self, node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
        self.inner.start(node, sink)
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position> {
        let publishing = self.inner.publish(channel, data, options);
        self.measure_history();
        self.publish.count(publishing)
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage> {
        let reading = self.inner.history(channel, since, limit);
        self.measure_history();
        self.history.count(reading)
    }

    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.watch.count(self.inner.watch(channel))
    }

    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.unwatch.count(self.inner.unwatch(channel))
    }

    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
        self.add_member
            .count(self.inner.add_member(channel, member))
    }

    fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()> {
        self.remove_member
            .count(self.inner.remove_member(channel, conn))
    }

    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
        self.members.count(self.inner.members(channel))
    }

    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
        self.broadcast.count(self.inner.broadcast(message))
    }

    fn available(&self) -> bool {
        self.inner.available()
    }

    fn history_stats(&self) -> Option<HistoryStats> {
        self.inner.history_stats()
    }
}
