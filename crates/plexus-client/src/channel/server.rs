//! Server-side subscriptions: channels the server subscribed this connection to (`joined`
//! frames), delivered to the application through one [`ServerSubscriptions`] stream.
//!
//! Their state lives in [`Channels::server`](super::Channels), under the client's
//! one mutex, like the application's own subscriptions. One bounded queue holds the events
//! of every server-side channel. When it is full, a channel's events are not queued but
//! *folded* into its entry (the channel lags): what the application must still be told
//! (that the subscription started, that events were dropped, that it ended) is queued later,
//! in [`ServerChannels::flush`], once the application has made room.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use plexus_protocol::{Payload, Position};

use super::{ChannelEvent, Publication};
use crate::error::CallError;
use crate::state::Inner;

/// One live server-side subscription.
struct ServerChannel {
    /// For dropping duplicates: the epoch of the `joined` and the offset of the last `msg`
    /// accepted (queued or dropped for lack of room).
    tracked: Position,
    /// The position of the last publication queued for the application (at first, that of
    /// the `joined`): the position of the `Lagged` event after a gap.
    delivered: Position,
    /// The channel's events are folded rather than queued: the queue was full when one came.
    lagged: bool,
    /// `Subscribed` was queued.
    announced: bool,
    /// Events of the channel were dropped: `Lagged` is owed.
    missed: bool,
}

/// A subscription that ended while its channel lagged: what the application must still be
/// told of it. Kept apart from the live ones, so that a new `joined` of the same channel
/// starts a subscription of its own after this one's `Closed`.
struct OwedEnd {
    channel: String,
    /// `Lagged` at this position comes first, if events were dropped.
    lagged: Option<Position>,
    error: CallError,
}

/// Every server-side subscription of the client and the queue of their events.
#[derive(Default)]
pub(crate) struct ServerChannels {
    /// Live subscriptions by channel name (ordered, so that owed events come in a
    /// predictable order).
    map: BTreeMap<String, ServerChannel>,
    /// Some live subscription lags: [`flush`](Self::flush) has something to look at.
    lagging: bool,
    /// Ended subscriptions whose end is still to be told, oldest first.
    ends: VecDeque<OwedEnd>,
    queue: VecDeque<(String, ChannelEvent)>,
    waker: Option<Waker>,
    /// A [`ServerSubscriptions`] is alive.
    taken: bool,
    /// The client is done: the stream ends once everything owed was yielded.
    finished: bool,
}

impl ServerChannels {
    /// Whether the server has `channel` subscribed for this client (and has not ended it).
    pub(crate) fn is_live(&self, channel: &str) -> bool {
        self.map.contains_key(channel)
    }

    /// Queues an event, or gives it back when the queue is full.
    fn try_push(
        &mut self,
        capacity: usize,
        channel: &str,
        event: ChannelEvent,
    ) -> Result<Option<Waker>, ChannelEvent> {
        if self.queue.len() >= capacity {
            return Err(event);
        }
        self.queue.push_back((channel.to_owned(), event));
        Ok(self.waker.take())
    }

    /// A `joined` frame for a channel the application did not join.
    pub(crate) fn on_joined(
        &mut self,
        capacity: usize,
        channel: &str,
        position: Position,
    ) -> Option<Waker> {
        if self.map.contains_key(channel) {
            // Subscribed already: the server renewed the subscription without a gap (an
            // epoch does not change under a live subscription). Nothing to tell.
            tracing::debug!(channel, "`joined` for a channel subscribed already");
            return None;
        }
        let mut entry = ServerChannel {
            tracked: position.clone(),
            delivered: position.clone(),
            lagged: false,
            announced: false,
            missed: false,
        };
        let pushed = self.try_push(capacity, channel, ChannelEvent::Subscribed { position });
        let waker = match pushed {
            Ok(waker) => {
                entry.announced = true;
                waker
            }
            Err(_) => {
                entry.lagged = true;
                self.lagging = true;
                None
            }
        };
        tracing::debug!(channel, "server-side subscription");
        self.map.insert(channel.to_owned(), entry);
        waker
    }

    /// A `msg` of a server-side channel.
    pub(crate) fn on_msg(
        &mut self,
        capacity: usize,
        channel: &str,
        offset: u64,
        data: Payload,
    ) -> Option<Waker> {
        let full = self.queue.len() >= capacity;
        let entry = self.map.get_mut(channel)?;
        if offset <= entry.tracked.offset {
            tracing::debug!(
                channel,
                offset,
                last = entry.tracked.offset,
                "duplicate `msg` dropped"
            );
            return None;
        }
        entry.tracked.offset = offset;
        if entry.lagged || full {
            entry.lagged = true;
            entry.missed = true;
            self.lagging = true;
            return None;
        }
        // The epoch is the `joined`'s for the whole subscription: only the offset moves.
        entry.delivered.offset = offset;
        let event = ChannelEvent::Publication(Publication { offset, data });
        self.try_push(capacity, channel, event).ok().flatten()
    }

    /// A presence event of a server-side channel (`MemberJoined` or `MemberLeft`).
    pub(crate) fn on_presence(
        &mut self,
        capacity: usize,
        channel: &str,
        event: ChannelEvent,
    ) -> Option<Waker> {
        let full = self.queue.len() >= capacity;
        let entry = self.map.get_mut(channel)?;
        if entry.lagged || full {
            entry.lagged = true;
            entry.missed = true;
            self.lagging = true;
            return None;
        }
        self.try_push(capacity, channel, event).ok().flatten()
    }

    /// The server-side subscription of `channel` ended (`left`, or the connection is gone).
    pub(crate) fn on_left(
        &mut self,
        capacity: usize,
        channel: &str,
        error: CallError,
    ) -> Option<Waker> {
        let entry = self.map.remove(channel)?;
        tracing::debug!(channel, code = %error.code(), "server-side subscription ended");
        if entry.lagged || self.queue.len() >= capacity {
            // Started and ended while the queue was full: never told at all.
            if entry.announced {
                self.ends.push_back(OwedEnd {
                    channel: channel.to_owned(),
                    lagged: entry.missed.then_some(entry.delivered),
                    error,
                });
            }
            return None;
        }
        self.try_push(capacity, channel, ChannelEvent::Closed(error))
            .ok()
            .flatten()
    }

    /// Every server-side subscription ends (the connection dropped, or the client is done).
    pub(crate) fn end_all(&mut self, capacity: usize, error: &CallError) -> Option<Waker> {
        let live: Vec<String> = self.map.keys().cloned().collect();
        let mut waker = None;
        for channel in live {
            waker = self.on_left(capacity, &channel, error.clone()).or(waker);
        }
        waker
    }

    /// The client is done: every subscription ends with `error`, then the stream ends.
    pub(crate) fn finish(&mut self, capacity: usize, error: &CallError) -> Option<Waker> {
        let waker = self.end_all(capacity, error);
        self.finished = true;
        waker.or_else(|| self.waker.take())
    }

    /// Queues what is owed, while there is room: first the ends of subscriptions that ended
    /// while lagging (`Lagged` if events were dropped, then `Closed`), then, for live lagged
    /// channels, `Subscribed` if it was never queued and `Lagged` if events were dropped.
    /// Each queues at most two events, so the queue holds at most `capacity + 1`.
    fn flush(&mut self, capacity: usize) {
        while self.queue.len() < capacity
            && let Some(end) = self.ends.pop_front()
        {
            if let Some(position) = end.lagged {
                let event = ChannelEvent::Lagged { position };
                self.queue.push_back((end.channel.clone(), event));
            }
            self.queue
                .push_back((end.channel, ChannelEvent::Closed(end.error)));
        }
        if !self.lagging {
            return;
        }
        for (channel, entry) in self.map.iter_mut().filter(|(_, e)| e.lagged) {
            if self.queue.len() >= capacity {
                return;
            }
            if !entry.announced {
                let position = entry.delivered.clone();
                self.queue
                    .push_back((channel.clone(), ChannelEvent::Subscribed { position }));
                entry.announced = true;
            }
            if entry.missed {
                let position = entry.delivered.clone();
                tracing::debug!(channel, ?position, "server-side subscription lagged");
                self.queue
                    .push_back((channel.clone(), ChannelEvent::Lagged { position }));
                entry.missed = false;
            }
            entry.lagged = false;
        }
        self.lagging = false;
    }

    /// The next event (for [`ServerSubscriptions`]'s `poll_next`).
    fn poll(
        &mut self,
        capacity: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(String, ChannelEvent)>> {
        self.flush(capacity);
        if let Some(item) = self.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if self.finished && self.map.is_empty() && self.ends.is_empty() {
            return Poll::Ready(None);
        }
        match &mut self.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => self.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Inner {
    /// How many events the server-side subscriptions buffer.
    pub(crate) fn server_capacity(&self) -> usize {
        self.options.server_subscription_buffer.max(1)
    }

    /// Takes the server-side subscriptions' stream, unless it is taken.
    pub(crate) fn take_server_subscriptions(self: &Arc<Self>) -> Option<ServerSubscriptions> {
        let mut st = self.lock();
        let server = &mut st.channels.server;
        if server.taken {
            return None;
        }
        server.taken = true;
        Some(ServerSubscriptions {
            inner: self.clone(),
        })
    }
}

/// The channels the server subscribed this client to (*server-side subscriptions*), from
/// [`Client::server_subscriptions`](crate::Client::server_subscriptions): a [`Stream`] of
/// `(channel, event)` pairs.
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::CallError> {
/// use futures_util::StreamExt;
/// use plexus_client::ChannelEvent;
///
/// let mut server_subs = client.server_subscriptions().expect("taken once");
/// while let Some((channel, event)) = server_subs.next().await {
///     match event {
///         ChannelEvent::Subscribed { position } => println!("{channel}: subscribed at {position:?}"),
///         ChannelEvent::Publication(publication) => {
///             let value: serde_json::Value = publication.decode()?;
///             println!("{channel} #{}: {value}", publication.offset);
///         }
///         ChannelEvent::Closed(error) => println!("{channel}: ended ({error})"),
///         _ => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
///
/// - **Lifecycle of a channel.** A server-side subscription starts with
///   [`ChannelEvent::Subscribed`] (the server's `joined` frame), yields the channel's
///   publications in offset order, each once (duplicates are dropped by offset), and its
///   presence events, and ends with [`ChannelEvent::Closed`]:
///   - the server unsubscribed the client (`left`): kind
///     [`Remote`](crate::CallErrorKind::Remote) with the server's error, or code
///     `UNSUBSCRIBED` when it gave none. With code `UNAVAILABLE` (the server's stream of
///     the channel was interrupted) the client does **not** join the channel itself, since
///     it did not choose it: the server subscribes it again if it wants to (a new
///     `Subscribed`), or the application may [`Client::join`](crate::Client::join) it with
///     [`JoinOptions::since`](crate::JoinOptions::since) = the last position it saw;
///   - the connection dropped: kind [`Unavailable`](crate::CallErrorKind::Unavailable).
///     Server-side subscriptions do not outlive a connection: the client forgets them and
///     never re-joins them; after a reconnect the server subscribes the new connection to
///     what it decides, and each such channel starts again with `Subscribed`;
///   - the client was closed: kind [`Closed`](crate::CallErrorKind::Closed); the stream
///     then ends (`None`).
///
///   A channel subscribed again later starts a new lifecycle with `Subscribed`.
/// - **Order.** Events of one channel come in the order the server sent them; those of
///   different channels are interleaved as they arrived, except for the events told late
///   after an overflow (below).
/// - **Bounded memory.** At most
///   [`ClientOptions::server_subscription_buffer`](crate::ClientOptions::server_subscription_buffer)
///   events wait for the application (a few more when subscriptions end meanwhile). When
///   the buffer is full, the client drops the events of each channel that does not fit;
///   once the application has made room, that channel yields
///   [`ChannelEvent::Lagged`] with the position of the last publication delivered before
///   the gap, and its events resume. **The missed publications and presence events are
///   not recovered**: the client cannot re-join a channel it did not join. Fetch them with
///   [`Client::history`](crate::Client::history) and
///   [`HistoryOptions::since`](crate::HistoryOptions::since) = that position if they
///   matter (the history may also hold publications the stream yields next: skip offsets
///   already applied). A `Subscribed` or `Closed` that did not fit comes late, after the
///   events buffered before it; a subscription that started and ended while the buffer
///   was full is not reported at all.
/// - **Buffered from the start.** Events are buffered from the first connection on, so a
///   `joined` that arrives right after `welcome`, before the application called
///   [`Client::server_subscriptions`](crate::Client::server_subscriptions), is not lost.
/// - **One consumer.** While a `ServerSubscriptions` of the client is alive,
///   [`Client::server_subscriptions`](crate::Client::server_subscriptions) returns `None`.
///   Once it is dropped, events are still buffered (bounded as above) and the next call
///   takes the stream over from where it was left.
/// - **One subscription per channel.** [`Client::join`](crate::Client::join) of a channel
///   the server subscribed the client to fails with
///   [`CallErrorKind::AlreadyJoined`](crate::CallErrorKind::AlreadyJoined); a `joined`
///   for a channel the application joined itself is ignored: its
///   [`Subscription`](crate::Subscription) keeps receiving the publications.
pub struct ServerSubscriptions {
    inner: Arc<Inner>,
}

impl Stream for ServerSubscriptions {
    type Item = (String, ChannelEvent);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let capacity = self.inner.server_capacity();
        self.inner.lock().channels.server.poll(capacity, cx)
    }
}

impl Drop for ServerSubscriptions {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.channels.server.taken = false;
        st.channels.server.waker = None;
    }
}

impl fmt::Debug for ServerSubscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        let server = &st.channels.server;
        f.debug_struct("ServerSubscriptions")
            .field(
                "channels",
                &server.map.keys().map(String::as_str).collect::<Vec<_>>(),
            )
            .field("buffered", &server.queue.len())
            .finish()
    }
}
