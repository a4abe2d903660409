//! The heartbeat timer of a connection, and the other timing its loops share.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// What a due heartbeat calls for.
pub(crate) enum Beat {
    /// Send a ping.
    Ping,
    /// The peer has been silent for two intervals: close it (4002).
    Silent,
}

/// Messages a connection task writes in one batch before it flushes and reads again.
pub(crate) const WRITE_BATCH: usize = 64;

/// Sleeps until `deadline`, or for ever without one (one timer for a loop's deadlines).
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The heartbeat timer, polled only when due: once its `Sleep` has the task's waker, the
/// timer wakes the task at the deadline, so a turn of the loop for anything else (one per
/// publication delivered) need not touch it.
pub(crate) struct Heartbeat {
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: Instant,
    interval: Duration,
    /// The `Sleep` holds the task's waker for `deadline`.
    armed: bool,
}

impl Heartbeat {
    pub(crate) fn new(interval: Duration) -> Self {
        let deadline = Instant::now() + interval;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            interval,
            armed: false,
        }
    }

    /// Ready once per interval with what the beat calls for: a peer last heard from
    /// `last_seen` that has been silent for two intervals is gone, else it gets a ping.
    pub(crate) fn poll_beat(&mut self, cx: &mut Context<'_>, last_seen: Instant) -> Poll<Beat> {
        std::task::ready!(self.poll_due(cx));
        Poll::Ready(if last_seen.elapsed() >= self.interval * 2 {
            Beat::Silent
        } else {
            Beat::Ping
        })
    }

    /// Ready once per interval; the next deadline counts from when it was seen, so a busy
    /// task does not fire a burst of missed ticks.
    pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && Instant::now() < self.deadline {
            return Poll::Pending;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.deadline = Instant::now() + self.interval;
                self.sleep.as_mut().reset(self.deadline);
                self.armed = false;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_once_per_interval_without_bursts() {
        let mut heartbeat = Heartbeat::new(Duration::from_secs(10));
        let started = Instant::now();
        std::future::poll_fn(|cx| heartbeat.poll_due(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A task busy for three intervals sees one beat, then waits a full interval again.
        tokio::time::advance(Duration::from_secs(30)).await;
        std::future::poll_fn(|cx| heartbeat.poll_due(cx)).await;
        let seen = Instant::now();
        std::future::poll_fn(|cx| heartbeat.poll_due(cx)).await;
        assert_eq!(seen.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_for_two_intervals_is_gone() {
        let mut heartbeat = Heartbeat::new(Duration::from_secs(10));
        let seen = Instant::now();
        let beat = std::future::poll_fn(|cx| heartbeat.poll_beat(cx, seen)).await;
        assert!(matches!(beat, Beat::Ping), "heard from one interval ago");
        let beat = std::future::poll_fn(|cx| heartbeat.poll_beat(cx, seen)).await;
        assert!(matches!(beat, Beat::Silent), "silent for two intervals");
        let beat = std::future::poll_fn(|cx| heartbeat.poll_beat(cx, Instant::now())).await;
        assert!(matches!(beat, Beat::Ping), "heard from just now");
    }
}
