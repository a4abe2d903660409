//! A one-shot signal that many tasks can wait for: a `CancellationToken` without the tree
//! (and without its two allocations), since every connection has two of them.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// Fires the signal (once; later calls do nothing) and wakes every waiter.
    pub(crate) fn fire(&self) {
        if !self.fired.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once the signal has fired. Cancel-safe.
    pub(crate) async fn fired(&self) {
        loop {
            // Register before looking, so a `fire` in between is not missed.
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_every_waiter_and_stays_fired() {
        let signal = Arc::new(Signal::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let signal = signal.clone();
                tokio::spawn(async move { signal.fired().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!signal.is_fired());
        signal.fire();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap();
        }
        // Fired before waiting: completes at once.
        tokio::time::timeout(Duration::from_secs(5), signal.fired())
            .await
            .unwrap();
        signal.fire();
        assert!(signal.is_fired());
    }
}
