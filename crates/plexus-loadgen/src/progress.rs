//! What a running scenario has done so far, readable from another task (a progress bar)
//! while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a scenario moves as it goes: answers received (`rpc`), deliveries (`fanout`) or
/// connections opened (`conns`), warm-up included, and failures.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
}

impl Progress {
    /// Operations done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Operations failed so far (a connection that broke, an answer that never came).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Sequentially consistent, as `done` is: the fan-out's publisher announces that it
    /// waits, then reads `done`; a subscriber adds, then reads whether to wake it. Weaker
    /// orderings would let both miss each other and the publisher sleep to the end.
    pub(crate) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::SeqCst);
    }

    pub(crate) fn add_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}
