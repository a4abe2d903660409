//! The application's handle on a subscription: a [`Stream`] of [`ChannelEvent`]s.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use plexus_protocol::Position;
use tokio::sync::oneshot;

use super::ChannelEvent;
use super::registry::{ChannelCall, JoinReply, Phase};
use crate::error::CallError;
use crate::state::Inner;

impl Inner {
    /// The next event of subscription `token` (for [`Subscription`]'s `poll_next`).
    fn poll_channel(&self, token: u64, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let channels = &mut st.channels;
        let Some(sub) = channels.subs.get_mut(&token) else {
            return Poll::Ready(None);
        };
        if let Some(event) = sub.queue.pop_front() {
            if sub.lagged && sub.queue.is_empty() && !sub.closed {
                // Drained after an overflow: join again from the last buffered position.
                match (sub.phase, &st.link) {
                    (Phase::Joined, Some(link)) => {
                        let channel = sub.channel.clone();
                        if let Some(id) = self.send_leave(
                            link,
                            &mut channels.calls,
                            &channel,
                            ChannelCall::Resync { token },
                        ) && let Some(sub) = channels.subs.get_mut(&token)
                        {
                            sub.phase = Phase::Leaving(id);
                        }
                    }
                    (Phase::Idle, Some(link)) => {
                        // On failure nothing else is buffered: the Closed event comes next,
                        // from this very poll's caller, so there is no one else to wake.
                        let _ = self.rejoin(channels, link, token);
                    }
                    // Disconnected: the next session joins it. Otherwise underway already.
                    _ => {}
                }
            }
            return Poll::Ready(Some(event));
        }
        if sub.closed {
            return Poll::Ready(None);
        }
        match &mut sub.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => sub.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Detaches a subscription from the client when dropped.
pub(crate) struct Attachment {
    inner: Arc<Inner>,
    token: u64,
    armed: bool,
}

impl Attachment {
    pub(crate) fn new(inner: Arc<Inner>, token: u64) -> Self {
        Self {
            inner,
            token,
            armed: true,
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.armed {
            self.inner.detach_channel(self.token, None);
        }
    }
}

/// A subscription to a channel, from [`Client::join`](crate::Client::join): a
/// [`Stream`] of [`ChannelEvent`]s.
///
/// - Publications come in offset order, each once. The subscription outlives reconnects:
///   after every new session the client joins the channel again with `since` = the
///   position of the last publication it received, yields
///   [`ChannelEvent::Resubscribed`], then the publications missed meanwhile (or, with
///   `recovered: false`, tells the application to reload its state).
/// - Memory is bounded: at most [`JoinOptions::buffer`](crate::JoinOptions::buffer) events
///   wait for the application. Past that the client stops buffering, yields
///   [`ChannelEvent::Lagged`], and recovers the missed publications from the server's
///   history once the application has caught up. The connection never waits for a slow
///   subscription.
/// - The server may end the subscription (a `left` frame). When it says its stream of the
///   channel was interrupted (code `UNAVAILABLE`), the client joins again with `since`, as
///   after a reconnect: [`ChannelEvent::Resubscribed`] follows, then what was missed. Any
///   other end is final: [`ChannelEvent::Closed`], and no re-join after later reconnects.
/// - The stream ends (`None`) after [`ChannelEvent::Closed`].
/// - [`Subscription::leave`] leaves and waits for the server's answer; dropping the
///   subscription sends `leave` without waiting.
///
/// A client has at most one subscription per channel: a second
/// [`Client::join`](crate::Client::join) of the same channel fails with
/// [`CallErrorKind::AlreadyJoined`](crate::CallErrorKind::AlreadyJoined) until this one is
/// left or dropped. Share the events with a broadcast channel if several tasks need them.
pub struct Subscription {
    attachment: Attachment,
    channel: String,
    position: Position,
    recovered: bool,
    last: Position,
    done: bool,
}

impl Subscription {
    pub(crate) fn new(attachment: Attachment, channel: String, reply: JoinReply) -> Self {
        Self {
            attachment,
            channel,
            position: reply.position,
            recovered: reply.recovered,
            last: reply.last,
            done: false,
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's position when it was first joined: its epoch and the offset of its
    /// latest publication then (from the `res` of the `join`).
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Whether the first join recovered every publication after
    /// [`JoinOptions::since`](crate::JoinOptions::since): they are the first events. `false`
    /// without `since`, or when the server could not provide them (the application must
    /// then load its state some other way).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The position up to which this stream has yielded the channel's publications: the
    /// offset of the last publication yielded, in the epoch of the last join (after a
    /// [`ChannelEvent::Resubscribed`] with `recovered: false`, that event's position). Store
    /// it and pass it as [`JoinOptions::since`](crate::JoinOptions::since) to resume later.
    pub fn last_position(&self) -> &Position {
        &self.last
    }

    /// Leaves the channel: sends `leave` and waits for its answer (within
    /// [`ClientOptions::call_timeout`](crate::ClientOptions::call_timeout)). No event is
    /// yielded after this. Succeeds at once when the client is disconnected or closed: the
    /// server has no subscription to end then.
    pub async fn leave(mut self) -> Result<(), CallError> {
        self.attachment.armed = false;
        let inner = self.attachment.inner.clone();
        let (tx, rx) = oneshot::channel();
        inner.detach_channel(self.attachment.token, Some(tx));
        match tokio::time::timeout(inner.options.call_timeout, rx).await {
            Ok(Ok(result)) => result,
            // The connection went away with the leave in flight (or could not send it).
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(CallError::timeout()),
        }
    }
}

impl Stream for Subscription {
    type Item = ChannelEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = this
            .attachment
            .inner
            .poll_channel(this.attachment.token, cx);
        match &polled {
            Poll::Ready(Some(ChannelEvent::Publication(publication))) => {
                this.last.offset = publication.offset;
            }
            Poll::Ready(Some(ChannelEvent::Resubscribed {
                recovered: false,
                position,
            })) => this.last = position.clone(),
            Poll::Ready(Some(ChannelEvent::Closed(_)) | None) => this.done = true,
            _ => {}
        }
        polled
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("position", &self.position)
            .field("recovered", &self.recovered)
            .field("last_position", &self.last)
            .field("done", &self.done)
            .finish()
    }
}
