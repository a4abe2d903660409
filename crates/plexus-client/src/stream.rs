//! [`CallStream`]: the items of a stream the client opened.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use plexus_protocol::{Frame, Payload};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, sleep};

use crate::call::Opening;
use crate::error::CallError;
use crate::relay;
use crate::state::{CallGuard, StreamEvent};

/// Sync too, so that a [`CallStream`] stays `Sync`.
type Reopened = Pin<
    Box<
        dyn Future<Output = Result<(CallGuard, mpsc::Receiver<StreamEvent>), CallError>>
            + Send
            + Sync,
    >,
>;

/// The items of a stream opened with [`Client::stream`](crate::Client::stream).
///
/// Yields `Ok(item)` for each `item` frame and ends with `None` on `end`; on `err` it yields
/// that one `Err` and then ends. An item that does not fit `T` yields an `Err` of kind
/// [`Decode`](crate::CallErrorKind::Decode) and the stream goes on. Dropping the stream
/// before its end sends `cancel`. With a credit window
/// ([`StreamOptions::credit`](crate::StreamOptions::credit)), consuming items grants more.
pub struct CallStream<T> {
    guard: CallGuard,
    events: mpsc::Receiver<StreamEvent>,
    decode: fn(Payload) -> Result<T, CallError>,
    /// The whole stream's deadline ([`StreamOptions::timeout`](crate::StreamOptions)).
    deadline: Option<Pin<Box<Sleep>>>,
    /// The idle deadline, pushed back by each item
    /// ([`StreamOptions::idle_timeout`](crate::StreamOptions)).
    idle: Option<Pin<Box<Sleep>>>,
    opening: Opening,
    /// Offline retries made so far.
    retries: u32,
    /// The `sub` being sent again after a relay's `SERVICE_OFFLINE`.
    reopening: Option<Reopened>,
    consumed: u32,
    yielded: bool,
    done: bool,
}

impl<T> CallStream<T> {
    pub(crate) fn new(
        guard: CallGuard,
        events: mpsc::Receiver<StreamEvent>,
        decode: fn(Payload) -> Result<T, CallError>,
        opening: Opening,
    ) -> Self {
        let options = &opening.options;
        Self {
            guard,
            events,
            decode,
            deadline: options.timeout.map(|t| Box::pin(sleep(t))),
            idle: options.idle_timeout.map(|t| Box::pin(sleep(t))),
            opening,
            retries: 0,
            reopening: None,
            consumed: 0,
            yielded: false,
            done: false,
        }
    }

    /// The call id of the stream on the current connection.
    pub fn id(&self) -> u64 {
        self.guard.id()
    }

    fn finish(&mut self) {
        self.done = true;
        self.guard.disarm();
    }

    /// Gives up on the stream now: forgets the call and sends `cancel`.
    fn abandon(&mut self, error: CallError) -> Poll<Option<Result<T, CallError>>> {
        self.done = true;
        self.reopening = None;
        self.guard.inner().abandon(self.guard.id());
        self.guard.disarm();
        Poll::Ready(Some(Err(error)))
    }

    /// Counts one consumed item and grants more credit once half the window is used.
    fn consumed_one(&mut self) {
        let Some(window) = self.opening.options.credit else {
            return;
        };
        self.consumed += 1;
        if self.consumed >= (window / 2).max(1) {
            let n = std::mem::take(&mut self.consumed);
            let id = self.guard.id();
            self.guard
                .inner()
                .send_control(id, &Frame::Credit { id, n });
        }
    }

    /// Whether to open the stream again after `error`: a relay's `SERVICE_OFFLINE` before
    /// any provider started it, before any item, with retries left.
    fn should_reopen(&self, error: &CallError) -> bool {
        !self.yielded
            && self.retries < self.opening.options.offline_retries
            && relay::offline_before_start(error)
    }

    fn reopen(&mut self) {
        let delay = relay::offline_backoff(self.retries);
        self.retries += 1;
        let inner = self.guard.inner().clone();
        let opening = Opening {
            method: self.opening.method.clone(),
            data: self.opening.data.clone(),
            options: self.opening.options.clone(),
        };
        tracing::debug!(method = %opening.method, retries = self.retries, ?delay, "service offline; opening again");
        self.reopening = Some(Box::pin(async move {
            sleep(delay).await;
            opening.send(&inner).await
        }));
    }
}

impl<T> Stream for CallStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // All fields are Unpin (the timers and the reopening are boxed).
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(reopening) = &mut this.reopening {
            match reopening.as_mut().poll(cx) {
                Poll::Ready(Ok((mut guard, events))) => {
                    this.reopening = None;
                    // The old call ended with its `err`: nothing to cancel.
                    this.guard.disarm();
                    std::mem::swap(&mut this.guard, &mut guard);
                    this.events = events;
                }
                Poll::Ready(Err(e)) => {
                    this.reopening = None;
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return this.poll_deadlines(cx),
            }
        }
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(StreamEvent::Item(payload))) => {
                this.yielded = true;
                if let (Some(idle), Some(limit)) =
                    (&mut this.idle, this.opening.options.idle_timeout)
                {
                    idle.as_mut().reset(Instant::now() + limit);
                }
                this.consumed_one();
                Poll::Ready(Some((this.decode)(payload)))
            }
            Poll::Ready(Some(StreamEvent::End)) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(StreamEvent::Error(error))) => {
                if this.should_reopen(&error) {
                    this.reopen();
                    // Polls the reopening (and registers its waker).
                    return Pin::new(this).poll_next(cx);
                }
                this.finish();
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(Some(Err(CallError::closed())))
            }
            Poll::Pending => this.poll_deadlines(cx),
        }
    }
}

impl<T> CallStream<T> {
    /// Fails the stream when its deadline or its idle limit has passed.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, CallError>>> {
        if let Some(deadline) = &mut self.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return self.abandon(CallError::timeout());
        }
        if let Some(idle) = &mut self.idle
            && idle.as_mut().poll(cx).is_ready()
        {
            return self.abandon(CallError::idle_timeout());
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("id", &self.guard.id())
            .field("done", &self.done)
            .finish()
    }
}
