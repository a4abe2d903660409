//! [`CallStream`]: the items of a stream the client opened.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use plexus_protocol::{Frame, Payload};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::error::CallError;
use crate::state::{CallGuard, StreamEvent};

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
    deadline: Option<Pin<Box<Sleep>>>,
    window: Option<u32>,
    consumed: u32,
    done: bool,
}

impl<T> CallStream<T> {
    pub(crate) fn new(
        guard: CallGuard,
        events: mpsc::Receiver<StreamEvent>,
        decode: fn(Payload) -> Result<T, CallError>,
        deadline: Option<Pin<Box<Sleep>>>,
        window: Option<u32>,
    ) -> Self {
        Self {
            guard,
            events,
            decode,
            deadline,
            window,
            consumed: 0,
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

    /// Counts one consumed item and grants more credit once half the window is used.
    fn consumed_one(&mut self) {
        let Some(window) = self.window else {
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
}

impl<T> Stream for CallStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // All fields are Unpin (the timer is boxed).
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(StreamEvent::Item(payload))) => {
                this.consumed_one();
                return Poll::Ready(Some((this.decode)(payload)));
            }
            Poll::Ready(Some(StreamEvent::End)) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(StreamEvent::Error(error))) => {
                this.finish();
                return Poll::Ready(Some(Err(error)));
            }
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(Some(Err(CallError::closed())));
            }
            Poll::Pending => {}
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Forget the call and send `cancel` now, not when the stream is dropped.
            this.done = true;
            this.guard.inner().abandon(this.guard.id());
            this.guard.disarm();
            return Poll::Ready(Some(Err(CallError::timeout())));
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
