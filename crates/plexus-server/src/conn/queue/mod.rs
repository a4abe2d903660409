//! The bounded outbound queue of one connection: what its task writes, in order.
//!
//! Like a bounded tokio mpsc channel with one receiver, except that an idle connection's
//! queue holds no buffer: tokio's channel allocates its first block of 32 slots up front,
//! which is a large share of an idle connection's memory. This one allocates on first use
//! and gives the memory back once a burst has been written. A kick wakes the consumer
//! without an item (to look at its flags). Publications may skip the queue and go straight
//! to an idle connection's socket: see [`direct`].

mod direct;
mod read_ahead;

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

pub(crate) use direct::SharedSocket;
use direct::{Direct, SocketState};

/// A message for the connection task's writer.
pub(crate) enum Outbound {
    /// An encoded frame to write as is.
    Frame(Bytes),
    /// A stream item of the client's call `id`, dropped if that call is no longer in flight.
    Item { id: u64, seq: u64, bytes: Bytes },
    /// The last frame of the call `id` (`res`, `err` or `end`; empty when the call answered
    /// otherwise, or for a notification, `id` 0): the call leaves the in-flight table.
    Final { id: u64, seq: u64, bytes: Bytes },
    /// Encoded frames to write as they are, in order.
    Batch(Vec<Bytes>),
    /// A raw socket's message, written as a binary message when `binary`, else as text.
    Message { bytes: Bytes, binary: bool },
}

/// Capacity kept after the queue empties; more is released.
const KEEP_CAPACITY: usize = 16;

pub(crate) struct OutboundQueue {
    state: Mutex<State>,
    /// The connection's socket (see [`SharedSocket`]).
    socket: Mutex<SocketState>,
    capacity: usize,
    /// Items queued and whether the queue is closed, readable without the lock: the
    /// connection task looks at an empty queue on every turn of its loop.
    len: AtomicUsize,
    closed: AtomicBool,
    /// Set by `kick`: the consumer should look at its flags.
    kicked: AtomicBool,
    /// The connection task (the single consumer) while it waits for an item.
    consumer: AtomicWaker,
    /// Wakes producers waiting for room.
    room: Notify,
    /// Producers waiting for room: a pop skips `room` (and the lock it takes) while none is.
    waiting: AtomicUsize,
    /// Set by a direct write: the connection's idle timer counts it as activity.
    written_directly: AtomicBool,
}

struct State {
    items: VecDeque<Outbound>,
    closed: bool,
    direct: Direct,
}

/// Counts a producer as waiting for room for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the consumer of the queue is woken for.
pub(crate) enum QueueEvent {
    Item(Outbound),
    Kick,
    Closed,
}

/// Why an item was not queued.
pub(crate) enum PushError {
    Full,
    Closed,
}

impl OutboundQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                direct: Direct::default(),
            }),
            socket: Mutex::new(SocketState::default()),
            capacity: capacity.max(1),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
            consumer: AtomicWaker::new(),
            room: Notify::new(),
            waiting: AtomicUsize::new(0),
            written_directly: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_socket(&self) -> std::sync::MutexGuard<'_, SocketState> {
        self.socket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item if there is room, without waiting.
    pub(crate) fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        self.offer(item, self.capacity).map_err(|(error, _)| error)
    }

    /// Queues an item whatever the queue holds (for items whose size is bounded elsewhere).
    pub(crate) fn force_push(&self, item: Outbound) -> Result<(), PushError> {
        self.offer(item, usize::MAX).map_err(|(error, _)| error)
    }

    /// The most items `try_push` queues.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues an item if fewer than `limit` are queued, or hands it back.
    fn offer(&self, item: Outbound, limit: usize) -> Result<(), (PushError, Outbound)> {
        let mut state = self.lock();
        if state.closed {
            return Err((PushError::Closed, item));
        }
        if state.items.len() >= limit {
            return Err((PushError::Full, item));
        }
        state.items.push_back(item);
        self.len.store(state.items.len(), Ordering::Release);
        drop(state);
        self.consumer.wake();
        Ok(())
    }

    /// Queues an item, waiting for room. Fails only when the queue is closed.
    ///
    /// Items that can wait (replies and stream items) fill at most half the queue: the rest
    /// stays free for `try_push`, which cannot wait and takes a full queue for a slow
    /// consumer. Otherwise a stream that keeps the queue full by design would make a client
    /// that reads everything look slow.
    pub(crate) async fn push(&self, item: Outbound) -> Result<(), PushError> {
        let limit = (self.capacity / 2).max(1);
        let item = match self.offer(item, limit) {
            Ok(()) => return Ok(()),
            Err((PushError::Closed, _)) => return Err(PushError::Closed),
            Err((PushError::Full, back)) => back,
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let mut item = item;
        loop {
            // Register for a wake-up before looking, so a pop in between is not missed.
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            match self.offer(item, limit) {
                Ok(()) => return Ok(()),
                Err((PushError::Closed, _)) => return Err(PushError::Closed),
                Err((PushError::Full, back)) => item = back,
            }
            room.await;
        }
    }

    /// Takes the next item without waiting.
    pub(crate) fn try_pop(&self) -> Option<Outbound> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut state = self.lock();
        let item = state.items.pop_front();
        self.len.store(state.items.len(), Ordering::Release);
        if item.is_some() {
            // Until it is flushed, a direct write would overtake it.
            state.direct.busy = true;
            if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
                state.items = VecDeque::new();
            }
            drop(state);
            // SeqCst pairs with the producer's increment: either it sees the pop's room
            // when it offers again, or this sees it waiting.
            if self.waiting.load(Ordering::SeqCst) > 0 {
                self.room.notify_waiters();
            }
        }
        item
    }

    /// Wakes the consumer without an item (its `poll_event` answers `Kick`).
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.consumer.wake();
    }

    /// The next item, a kick, or the end. Only the connection task calls this. A kick
    /// comes first: a queue that never empties (a fast stream, a busy channel) must not
    /// keep the task from a close request or a shutdown.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<QueueEvent> {
        for attempt in 0..2 {
            if self.kicked.load(Ordering::Acquire) && self.kicked.swap(false, Ordering::AcqRel) {
                return Poll::Ready(QueueEvent::Kick);
            }
            if let Some(item) = self.try_pop() {
                return Poll::Ready(QueueEvent::Item(item));
            }
            if self.closed.load(Ordering::Acquire) {
                return Poll::Ready(QueueEvent::Closed);
            }
            if attempt == 0 {
                self.consumer.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Ready on a kick or the end, leaving queued items where they are (for a connection
    /// that may not write yet). Only the connection task calls this.
    pub(crate) fn poll_kick(&self, cx: &mut Context<'_>) -> Poll<()> {
        for attempt in 0..2 {
            if self.kicked.swap(false, Ordering::AcqRel) || self.closed.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if attempt == 0 {
                self.consumer.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// Waits for the next item; `None` once closed (kicks are skipped).
    #[cfg(test)]
    pub(crate) async fn pop(&self) -> Option<Outbound> {
        loop {
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                QueueEvent::Item(item) => return Some(item),
                QueueEvent::Kick => continue,
                QueueEvent::Closed => return None,
            }
        }
    }

    /// Closes the queue: queued items are dropped and every waiting producer fails.
    pub(crate) fn close(&self) {
        let items = {
            let mut state = self.lock();
            state.closed = true;
            self.closed.store(true, Ordering::Release);
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut state.items)
        };
        drop(items);
        self.room.notify_waiters();
        self.consumer.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn item(n: u8) -> Outbound {
        Outbound::Frame(Bytes::from(vec![n]))
    }

    fn value(item: Outbound) -> u8 {
        match item {
            Outbound::Frame(bytes) => bytes[0],
            _ => unreachable!(),
        }
    }

    #[test]
    fn bounded_and_in_order() {
        let queue = OutboundQueue::new(2);
        assert!(queue.try_push(item(1)).is_ok());
        assert!(queue.try_push(item(2)).is_ok());
        assert!(matches!(queue.try_push(item(3)), Err(PushError::Full)));
        assert_eq!(queue.try_pop().map(value), Some(1));
        assert!(queue.try_push(item(3)).is_ok());
        assert_eq!(queue.try_pop().map(value), Some(2));
        assert_eq!(queue.try_pop().map(value), Some(3));
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn idle_queue_holds_no_buffer() {
        let queue = OutboundQueue::new(1024);
        assert_eq!(queue.lock().items.capacity(), 0);
        for n in 0..100 {
            assert!(queue.try_push(item(n)).is_ok());
        }
        while queue.try_pop().is_some() {}
        assert!(queue.lock().items.capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test]
    async fn push_waits_for_room() {
        let queue = Arc::new(OutboundQueue::new(1));
        assert!(queue.try_push(item(1)).is_ok());
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(2)).await.is_ok() }
        });
        assert_eq!(queue.pop().await.map(value), Some(1));
        assert_eq!(queue.pop().await.map(value), Some(2));
        assert!(producer.await.unwrap());
    }

    #[tokio::test]
    async fn waiting_pushes_leave_half_the_queue_to_try_push() {
        let queue = Arc::new(OutboundQueue::new(4));
        assert!(queue.push(item(1)).await.is_ok());
        assert!(queue.push(item(2)).await.is_ok());
        // Half full: a third waiting push waits, while try_push still finds room.
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(5)).await.is_ok() }
        });
        assert!(queue.try_push(item(3)).is_ok());
        assert!(queue.try_push(item(4)).is_ok());
        assert!(matches!(queue.try_push(item(9)), Err(PushError::Full)));
        for n in 1..=5 {
            assert_eq!(queue.pop().await.map(value), Some(n));
        }
        assert!(producer.await.unwrap());
    }

    #[tokio::test]
    async fn close_fails_waiting_producers_and_ends_the_consumer() {
        let queue = Arc::new(OutboundQueue::new(1));
        assert!(queue.try_push(item(1)).is_ok());
        let producer = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(item(2)).await.is_err() }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), producer)
                .await
                .unwrap()
                .unwrap()
        );
        assert!(queue.pop().await.is_none());
        assert!(matches!(queue.try_push(item(3)), Err(PushError::Closed)));
    }

    #[tokio::test]
    async fn a_dropped_pop_loses_nothing() {
        let queue = Arc::new(OutboundQueue::new(4));
        // A pop that is polled while empty, then dropped, must not swallow a later item.
        let _ = tokio::time::timeout(Duration::from_millis(1), queue.pop()).await;
        assert!(queue.try_push(item(7)).is_ok());
        assert_eq!(queue.pop().await.map(value), Some(7));
    }
}

#[cfg(test)]
mod kick_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_kick_wakes_the_consumer_without_an_item() {
        let queue = Arc::new(OutboundQueue::new(4));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move {
                matches!(
                    std::future::poll_fn(|cx| queue.poll_event(cx)).await,
                    QueueEvent::Kick
                )
            }
        });
        tokio::task::yield_now().await;
        queue.kick();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_kick_goes_before_queued_items() {
        let queue = OutboundQueue::new(4);
        assert!(
            queue
                .try_push(Outbound::Frame(Bytes::from_static(b"a")))
                .is_ok()
        );
        queue.kick();
        let next = || std::future::poll_fn(|cx| queue.poll_event(cx));
        assert!(matches!(next().await, QueueEvent::Kick));
        assert!(matches!(next().await, QueueEvent::Item(_)));
    }
}
