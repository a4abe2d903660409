//! One timer for a loop's deadlines that moves only when it must.
//!
//! A busy loop whose deadline moves on every turn (the idle deadline after each call, the
//! oldest forwarded request after each answer) would insert and remove a timer-wheel entry
//! on every turn if it made a new `Sleep` each time. This one is re-armed only for an
//! earlier deadline; a later one leaves it as it is, so it may fire early: the loop then
//! finds nothing due and sets it again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// A lazily moved timer (see the module documentation).
#[derive(Default)]
pub(crate) struct Deadline {
    /// Made at the first deadline and kept (boxed: most connections never set one).
    sleep: Option<Pin<Box<Sleep>>>,
    /// When it fires, while armed.
    armed: Option<Instant>,
}

impl Deadline {
    /// Makes sure the timer fires no later than `at` (if any).
    pub(crate) fn at_most(&mut self, at: Option<Instant>) {
        let Some(at) = at else { return };
        if self.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = Some(at);
    }

    /// Whether it will fire.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Ready once the armed deadline has passed; then disarmed.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(sleep), Some(_)) = (&mut self.sleep, self.armed) else {
            return Poll::Pending;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = None;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_leaves_the_timer_and_an_earlier_one_moves_it() {
        let mut deadline = Deadline::default();
        assert!(!deadline.is_armed());
        let start = Instant::now();
        deadline.at_most(Some(start + Duration::from_secs(10)));
        deadline.at_most(Some(start + Duration::from_secs(20)));
        deadline.at_most(None);
        std::future::poll_fn(|cx| deadline.poll_fired(cx)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "fires at the earliest"
        );
        assert!(!deadline.is_armed());

        let start = Instant::now();
        deadline.at_most(Some(start + Duration::from_secs(10)));
        deadline.at_most(Some(start + Duration::from_secs(3)));
        std::future::poll_fn(|cx| deadline.poll_fired(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3), "moved earlier");
    }
}
