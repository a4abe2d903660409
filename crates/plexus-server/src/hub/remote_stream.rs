//! Streams that cross nodes: a caller here, the connection on another node.
//!
//! The opening node broadcasts a [`NodeMessage::StreamOpen`] with an id and a credit; the
//! node that holds the connection calls the client and sends back numbered
//! [`NodeMessage::StreamEvent`]s: `Alive` first and whenever the stream has been quiet for
//! [`ALIVE_EVERY`], each item, and the end. It pulls the client's next item only within the
//! credit the opening node grants ([`NodeMessage::StreamCredit`]) as its caller consumes
//! them, so a slow caller slows the client, not memory. Dropping the stream early broadcasts
//! a `CancelRequest`, which drops the call on the client's node and sends the client `cancel`.
//!
//! What goes wrong is said, never waited out: no node answering the open within the call's
//! timeout is `TIMEOUT`, a lost event (a gap in the numbers) or silence for
//! [`SILENCE_LIMIT`] (the other node or the broker gone) is `UNAVAILABLE`. A keep-alive of a
//! stream the opening node no longer has gets another cancel, so that a lost cancel does not
//! leave a client streaming for no one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use plexus_engine::{NodeMessage, StreamEvent};
use plexus_protocol::{ErrorBody, ErrorCode, Payload};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::cluster::{lock, spawn};
use super::{Hub, HubError};
use crate::conn::ConnectionHandle;

/// Items a node takes from a stream on another node before it grants more.
const REMOTE_STREAM_WINDOW: u32 = 64;

/// Streams this node has open on other nodes' connections, and streams it serves for
/// other nodes, each at most this many.
const MAX_REMOTE_STREAMS: usize = 10_000;

/// How often a quiet stream says it is still there.
const ALIVE_EVERY: Duration = Duration::from_secs(5);

/// How long a stream may stay silent (not even `Alive`) before its opener gives it up.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// What reaches a stream opened here.
enum Event {
    /// The holding node answered the open.
    Answered,
    Item(Payload),
    /// The holding node ended the stream.
    End(Result<(), ErrorBody>),
    /// This node gave the stream up (an event lost, or more items than the credit).
    Broken(ErrorBody),
}

/// A stream opened here, as the node messages about it arrive.
pub(super) struct Opened {
    events: mpsc::Sender<Event>,
    next_seq: u64,
    /// When the holding node was last heard from, in milliseconds since `heard_since`.
    heard: Arc<AtomicU64>,
}

/// A stream served here for another node: how to stop it, and its credit.
pub(super) struct Served {
    call: AbortHandle,
    credit: Arc<Semaphore>,
}

/// This node's streams across nodes, both ways.
pub(super) struct RemoteStreams {
    opened: Mutex<HashMap<u64, Opened>>,
    served: Mutex<HashMap<(String, u64), Served>>,
    /// What `Opened::heard` counts from.
    heard_since: Instant,
}

impl Default for RemoteStreams {
    fn default() -> Self {
        Self {
            opened: Mutex::default(),
            served: Mutex::default(),
            heard_since: Instant::now(),
        }
    }
}

impl RemoteStreams {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.heard_since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Hub {
    /// Opens a stream on the connection `conn` of another node. `timeout` bounds the wait
    /// for the node that holds it to answer.
    pub(crate) async fn stream_elsewhere(
        &self,
        conn: &str,
        method: &str,
        data: Payload,
        timeout: Duration,
    ) -> Result<RemoteStream, HubError> {
        let streams = &self.inner.remote_streams;
        let id = self.next_call_id();
        // Room for the whole window, the end, and the error for a node that would send more.
        let (tx, rx) = mpsc::channel(REMOTE_STREAM_WINDOW as usize + 2);
        let heard = Arc::new(AtomicU64::new(streams.now_ms()));
        {
            let mut opened = lock(&streams.opened);
            if opened.len() >= MAX_REMOTE_STREAMS {
                return Err(HubError::new(
                    ErrorCode::RATE_LIMITED,
                    "too many streams to connections on other nodes are open",
                ));
            }
            opened.insert(
                id,
                Opened {
                    events: tx,
                    next_seq: 0,
                    heard: heard.clone(),
                },
            );
        }
        let mut stream = RemoteStream {
            hub: self.clone(),
            id,
            conn: conn.to_owned(),
            events: rx,
            consumed: 0,
            finished: false,
            ended: false,
            answered: false,
            heard,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        };
        let sent = self
            .broadcast(NodeMessage::StreamOpen {
                conn: conn.to_owned(),
                method: method.to_owned(),
                data,
                node: self.inner.cluster.node.clone(),
                id,
                credit: REMOTE_STREAM_WINDOW,
            })
            .await;
        if let Err(e) = sent {
            // Never sent: nothing to cancel.
            stream.ended = true;
            return Err(e);
        }
        Ok(stream)
    }

    /// An event of a stream this node opened.
    pub(super) fn on_stream_event(&self, id: u64, seq: u64, event: StreamEvent) {
        let streams = &self.inner.remote_streams;
        let mut opened = lock(&streams.opened);
        let Some(stream) = opened.get_mut(&id) else {
            if matches!(event, StreamEvent::Alive) {
                // A stream this node no longer has (its cancel was lost, or this is a new
                // process under the same node name): ask again, once per keep-alive.
                drop(opened);
                self.cancel_elsewhere(id);
            }
            return;
        };
        stream.heard.store(streams.now_ms(), Ordering::Relaxed);
        let broken = |message: &str| Event::Broken(ErrorBody::new(ErrorCode::UNAVAILABLE, message));
        if seq != stream.next_seq {
            let lost = broken("events of a stream from another node were lost on the way");
            if let Some(stream) = opened.remove(&id) {
                let _ = stream.events.try_send(lost);
            }
            return;
        }
        stream.next_seq += 1;
        let event = match event {
            // Noted above; only the first one needs to reach the stream.
            StreamEvent::Alive if seq == 0 => Event::Answered,
            StreamEvent::Alive => return,
            StreamEvent::Item(item) => Event::Item(item),
            StreamEvent::End(result) => Event::End(result),
        };
        let last = matches!(event, Event::End(_));
        // The last free place is kept for the error.
        let overflow = stream.events.capacity() <= 1 || stream.events.try_send(event).is_err();
        if overflow || last {
            let stream = opened.remove(&id);
            if overflow && let Some(stream) = stream {
                let _ = stream.events.try_send(broken(
                    "another node sent more stream items than its credit allowed",
                ));
            }
        }
    }

    /// Another node opens a stream on this node's connection `handle`.
    pub(super) fn serve_stream(
        &self,
        handle: ConnectionHandle,
        method: String,
        data: Payload,
        key: (String, u64),
        credit: u32,
    ) {
        let credit = Arc::new(Semaphore::new(credit.min(REMOTE_STREAM_WINDOW) as usize));
        // Held across the spawn, so the stream cannot end (and forget itself) before it is noted.
        let mut served = lock(&self.inner.remote_streams.served);
        if served.contains_key(&key) {
            // The same open delivered twice: it is being served.
            return;
        }
        let mut events = EventSender {
            hub: self.clone(),
            key: key.clone(),
            seq: 0,
            quiet: Box::pin(tokio::time::sleep(ALIVE_EVERY)),
        };
        if served.len() >= MAX_REMOTE_STREAMS {
            drop(served);
            return spawn(async move {
                let refused = ErrorBody::new(
                    ErrorCode::RATE_LIMITED,
                    "too many streams from other nodes are open on this node",
                );
                let _ = events.send(StreamEvent::End(Err(refused))).await;
            });
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return tracing::warn!("a stream was opened outside a tokio runtime; dropped");
        };
        let call = runtime.spawn({
            let credit = credit.clone();
            async move {
                if let Err(e) = events.run(handle, &method, data, &credit).await {
                    tracing::debug!(error = %e, "a stream for another node stopped: its events cannot be sent");
                }
                lock(&events.hub.inner.remote_streams.served).remove(&events.key);
            }
        });
        served.insert(
            key,
            Served {
                call: call.abort_handle(),
                credit,
            },
        );
    }

    /// More credit for a stream this node serves.
    pub(super) fn on_stream_credit(&self, key: &(String, u64), credit: u32) {
        if let Some(served) = lock(&self.inner.remote_streams.served).get(key) {
            // Never more outstanding than one window, whatever the other node claims.
            let room =
                (REMOTE_STREAM_WINDOW as usize).saturating_sub(served.credit.available_permits());
            served.credit.add_permits((credit as usize).min(room));
        }
    }

    /// Stops a stream this node serves, if it does (its opener gave up).
    pub(super) fn cancel_served_stream(&self, key: &(String, u64)) {
        if let Some(served) = lock(&self.inner.remote_streams.served).remove(key) {
            served.call.abort();
        }
    }
}

/// Sends the events of a stream this node serves to the node that opened it, numbered.
struct EventSender {
    hub: Hub,
    key: (String, u64),
    seq: u64,
    /// When the stream will have been quiet for [`ALIVE_EVERY`]: one timer for the stream,
    /// pushed back by every event sent.
    quiet: Pin<Box<Sleep>>,
}

impl EventSender {
    async fn send(&mut self, event: StreamEvent) -> Result<(), HubError> {
        let (node, id) = self.key.clone();
        let seq = self.seq;
        self.seq += 1;
        self.quiet
            .as_mut()
            .reset(tokio::time::Instant::now() + ALIVE_EVERY);
        self.hub
            .broadcast(NodeMessage::StreamEvent {
                node,
                id,
                seq,
                event,
            })
            .await
    }

    /// Waits for `future`, saying `Alive` whenever the stream has been quiet for
    /// [`ALIVE_EVERY`].
    async fn alive_while<F: Future>(&mut self, future: F) -> Result<F::Output, HubError> {
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Ok(output),
                () = self.quiet.as_mut() => self.send(StreamEvent::Alive).await?,
            }
        }
    }

    /// Calls the client and passes its items on within `credit`, until the stream ends.
    async fn run(
        &mut self,
        handle: ConnectionHandle,
        method: &str,
        data: Payload,
        credit: &Semaphore,
    ) -> Result<(), HubError> {
        self.send(StreamEvent::Alive).await?;
        let mut items = match handle.stream::<Payload>(method, data).await {
            Ok(items) => items,
            Err(e) => return self.send(StreamEvent::End(Err(e.into_body()))).await,
        };
        loop {
            match self.alive_while(credit.acquire()).await? {
                Ok(permit) => permit.forget(),
                Err(_) => return Ok(()),
            }
            let event = match self.alive_while(items.next()).await? {
                Some(Ok(item)) => StreamEvent::Item(item),
                Some(Err(e)) => StreamEvent::End(Err(e.into_body())),
                None => StreamEvent::End(Ok(())),
            };
            let last = matches!(event, StreamEvent::End(_));
            self.send(event).await?;
            if last {
                return Ok(());
            }
        }
    }
}

/// The items of a stream on another node's connection, as its client sends them. Dropping
/// it before the end cancels the call on the client.
pub(crate) struct RemoteStream {
    hub: Hub,
    id: u64,
    conn: String,
    events: mpsc::Receiver<Event>,
    consumed: u32,
    finished: bool,
    /// The holding node ended the stream: nothing to cancel.
    ended: bool,
    /// The holding node has been heard from.
    answered: bool,
    heard: Arc<AtomicU64>,
    /// When the stream is given up unless the other node is heard from.
    deadline: Pin<Box<Sleep>>,
}

impl RemoteStream {
    fn finish(&mut self, error: ErrorBody) -> Poll<Option<Result<Payload, ErrorBody>>> {
        self.finished = true;
        Poll::Ready(Some(Err(error)))
    }

    /// The deadline passed: gives up unless the other node was heard from meanwhile.
    fn check_silence(&mut self) -> Option<ErrorBody> {
        let streams = &self.hub.inner.remote_streams;
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        let quiet = streams.heard_since.elapsed().saturating_sub(heard);
        if self.answered && quiet < SILENCE_LIMIT {
            let next = streams.heard_since + heard + SILENCE_LIMIT;
            self.deadline.as_mut().reset(next);
            return None;
        }
        Some(if self.answered {
            ErrorBody::new(
                ErrorCode::UNAVAILABLE,
                "the node holding the stream's connection went silent",
            )
        } else {
            ErrorBody::new(
                ErrorCode::TIMEOUT,
                format!(
                    "no answer from connection {}: no node holds it, or its node did not reply",
                    self.conn
                ),
            )
        })
    }
}

impl Stream for RemoteStream {
    type Item = Result<Payload, ErrorBody>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            match this.events.poll_recv(cx) {
                Poll::Ready(Some(Event::Item(item))) => {
                    this.consumed += 1;
                    if this.consumed >= REMOTE_STREAM_WINDOW / 2 {
                        let credit = std::mem::take(&mut this.consumed);
                        let hub = this.hub.clone();
                        let message = NodeMessage::StreamCredit {
                            node: hub.inner.cluster.node.clone(),
                            id: this.id,
                            credit,
                        };
                        spawn(async move {
                            if let Err(e) = hub.broadcast(message).await {
                                tracing::debug!(error = %e, "a stream's credit did not reach the other node");
                            }
                        });
                    }
                    return Poll::Ready(Some(Ok(item)));
                }
                Poll::Ready(Some(Event::Answered)) => {
                    this.answered = true;
                    // From now on the deadline follows what is heard (checked when it passes).
                    let _ = this.check_silence();
                }
                Poll::Ready(Some(Event::End(result))) => {
                    this.ended = true;
                    this.finished = true;
                    return Poll::Ready(result.err().map(Err));
                }
                Poll::Ready(Some(Event::Broken(error))) => return this.finish(error),
                Poll::Ready(None) => {
                    return this.finish(ErrorBody::new(
                        ErrorCode::UNAVAILABLE,
                        "the hub was shut down",
                    ));
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let Some(error) = this.check_silence() {
                        return this.finish(error);
                    }
                }
            }
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        lock(&self.hub.inner.remote_streams.opened).remove(&self.id);
        if !self.ended {
            // Given up here (dropped, or broken or silent): the client need not go on.
            self.hub.cancel_elsewhere(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Namespaces;

    /// A stream opened on a lone node (no other node holds the connection), with its id.
    async fn opened(hub: &Hub) -> (RemoteStream, u64) {
        let stream = hub
            .stream_elsewhere(
                "c1",
                "Feed.watch",
                Payload::null(plexus_protocol::Codec::Json),
                Duration::from_secs(2),
            )
            .await
            .expect("opened");
        let id = stream.id;
        (stream, id)
    }

    fn one() -> Payload {
        Payload::encode(plexus_protocol::Codec::Json, &1).expect("encodes")
    }

    fn code(item: Option<Result<Payload, ErrorBody>>) -> ErrorCode {
        item.expect("an item").expect_err("an error").code
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_is_a_timeout_and_silence_is_unavailable() {
        let hub = Hub::new(Namespaces::new());
        let (mut stream, _) = opened(&hub).await;
        assert_eq!(code(stream.next().await), ErrorCode::TIMEOUT);
        assert!(stream.next().await.is_none());

        // Answered, then kept alive past the silence limit, then silent.
        let (mut stream, id) = opened(&hub).await;
        hub.on_stream_event(id, 0, StreamEvent::Alive);
        for seq in 1..=4 {
            tokio::time::advance(ALIVE_EVERY).await;
            hub.on_stream_event(id, seq, StreamEvent::Alive);
        }
        hub.on_stream_event(id, 5, StreamEvent::Item(one()));
        assert_eq!(stream.next().await.expect("an item").expect("ok"), one());
        let started = Instant::now();
        assert_eq!(code(stream.next().await), ErrorCode::UNAVAILABLE);
        assert_eq!(started.elapsed(), SILENCE_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_event_or_too_many_items_break_the_stream() {
        let hub = Hub::new(Namespaces::new());
        let (mut stream, id) = opened(&hub).await;
        hub.on_stream_event(id, 0, StreamEvent::Alive);
        hub.on_stream_event(id, 2, StreamEvent::Item(one()));
        assert_eq!(code(stream.next().await), ErrorCode::UNAVAILABLE);

        let (mut stream, id) = opened(&hub).await;
        for seq in 0..=u64::from(REMOTE_STREAM_WINDOW) + 1 {
            hub.on_stream_event(id, seq, StreamEvent::Item(one()));
        }
        // The window and one more (room kept for an `End`) pass, then the stream breaks.
        let items: Vec<_> = (&mut stream).collect().await;
        assert_eq!(items.len(), REMOTE_STREAM_WINDOW as usize + 2);
        assert!(
            items[..=REMOTE_STREAM_WINDOW as usize]
                .iter()
                .all(Result::is_ok)
        );
        assert_eq!(
            items
                .last()
                .cloned()
                .expect("items")
                .expect_err("the overflow")
                .code,
            ErrorCode::UNAVAILABLE
        );
        assert!(
            lock(&hub.inner.remote_streams.opened).is_empty(),
            "forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_from_the_other_node_ends_the_stream_as_sent() {
        let hub = Hub::new(Namespaces::new());
        let (mut stream, id) = opened(&hub).await;
        hub.on_stream_event(id, 0, StreamEvent::Item(one()));
        hub.on_stream_event(id, 1, StreamEvent::End(Ok(())));
        assert!(stream.next().await.expect("the item").is_ok());
        assert!(stream.next().await.is_none());
        assert!(stream.ended);

        let (mut stream, id) = opened(&hub).await;
        let refused = ErrorBody::new(ErrorCode::FORBIDDEN, "no");
        hub.on_stream_event(id, 0, StreamEvent::End(Err(refused.clone())));
        assert_eq!(stream.next().await, Some(Err(refused)));
        assert!(stream.next().await.is_none());
    }

    /// What reaches the other node of a two-node memory cluster.
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<NodeMessage>>);

    impl plexus_engine::EngineSink for Heard {
        fn publication(&self, _: &plexus_engine::Publication) {}
        fn presence(&self, _: &str, _: plexus_protocol::PresenceEvent, _: &plexus_engine::Member) {}
        fn message(&self, message: NodeMessage) {
            lock(&self.0).push(message);
        }
        fn interrupted(&self, _: &str) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_of_a_forgotten_stream_is_cancelled_again() {
        let here = plexus_engine::MemoryEngine::new();
        let there = here.peer();
        let heard = Arc::new(Heard::default());
        plexus_engine::Engine::start(&there, "b", heard.clone())
            .await
            .expect("started");
        let hub = Hub::with_engine(Namespaces::new(), Arc::new(here), "a");
        hub.on_stream_event(42, 3, StreamEvent::Item(one()));
        hub.on_stream_event(42, 4, StreamEvent::Alive);
        // The cancel goes out from a task: let it run.
        for _ in 0..100 {
            if !lock(&heard.0).is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *lock(&heard.0),
            [NodeMessage::CancelRequest {
                node: "a".into(),
                id: 42
            }],
            "one cancel, for the keep-alive only"
        );
    }
}
