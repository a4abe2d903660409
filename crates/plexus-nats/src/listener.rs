//! The node's subscriptions: which channels it watches, what reaches the sink, and what happens
//! when its link to NATS breaks.
//!
//! One task owns the watch counts and takes watch and unwatch commands in the order the calls
//! were made. A channel's first watch subscribes to its live subject (where the stream
//! republishes each kept publication, and where presence changes go) and completes once the
//! server confirmed it with a flush and the channel's last kept offset was read: from then
//! on nothing can be missed. Each watched channel has a small task that hands its messages
//! to the sink, publications in offset order. When the link
//! drops (or the client had to drop messages of a slow subscription), every watched channel is
//! reported interrupted: core NATS does not replay what was sent meanwhile, so the hub makes
//! its subscribers join again with recovery from the stream. The client reconnects and
//! subscribes again by itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::stream::Stream;
use async_nats::{Client, Event, Subscriber};
use futures_util::StreamExt;
use plexus_engine::{EngineError, EngineSink, Member, NodeMessage, Publication};
use plexus_protocol::PresenceEvent;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::envelope::{self, Stored};
use crate::order::InOrder;
use crate::read;
use crate::subjects::Subjects;

/// How long a subscription may take to be confirmed before the link counts as broken.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a first watch waits to read where the channel stands (it holds up every other
/// watch meanwhile).
const READ_LAST_TIMEOUT: Duration = Duration::from_secs(1);

/// A request to the listener task.
pub(crate) enum Command {
    /// One more watch of a channel; answered once it is live (or failed: then not counted).
    Watch(Arc<str>, oneshot::Sender<Result<(), EngineError>>),
    /// One watch fewer; answered once nothing more of the channel reaches the sink.
    Unwatch(Arc<str>, oneshot::Sender<Result<(), EngineError>>),
}

/// Channels of which this node saw presence while watching them: the ones it sweeps.
pub(crate) type PresenceChannels = Arc<Mutex<HashSet<Arc<str>>>>;

struct Watched {
    count: usize,
    forwarder: JoinHandle<()>,
}

/// What the listener task owns.
pub(crate) struct Listener {
    client: Client,
    subjects: Subjects,
    /// The stream of kept publications: where a watched channel stands when its watch begins.
    publications: Stream,
    instance: Uuid,
    sink: Arc<dyn EngineSink>,
    presence_channels: PresenceChannels,
    /// Cleared when the link comes back: the server may have lost its streams meanwhile.
    streams_ok: Arc<AtomicBool>,
    watched: HashMap<Arc<str>, Watched>,
}

impl Listener {
    pub(crate) fn new(
        client: Client,
        subjects: Subjects,
        publications: Stream,
        instance: Uuid,
        sink: Arc<dyn EngineSink>,
        presence_channels: PresenceChannels,
        streams_ok: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            subjects,
            publications,
            instance,
            sink,
            presence_channels,
            streams_ok,
            watched: HashMap::new(),
        }
    }

    /// Runs until the engine is dropped.
    pub(crate) async fn run(
        mut self,
        mut nodes: Subscriber,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut link_broke = false;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.apply(command).await,
                    None => break,
                },
                event = events.recv() => match event {
                    Some(Event::Disconnected) => {
                        link_broke = true;
                        self.interrupt("the link to NATS broke");
                    }
                    Some(Event::SlowConsumer(_)) => self.interrupt("NATS dropped messages of a slow subscription"),
                    // The first connection is announced too: only a link that broke and came
                    // back may find the streams gone.
                    Some(Event::Connected) if std::mem::take(&mut link_broke) => {
                        tracing::info!("NATS link restored");
                        self.streams_ok.store(false, Ordering::Release);
                    }
                    Some(_) => {}
                    None => break,
                },
                message = nodes.next() => match message {
                    Some(message) => match NodeMessage::from_wire(&message.payload) {
                        Some((sender, _)) if sender == self.instance => {}
                        Some((_, message)) => self.sink.message(message),
                        None => tracing::warn!("unreadable node message"),
                    },
                    None => break,
                },
            }
        }
        for (_, watched) in self.watched.drain() {
            watched.forwarder.abort();
        }
    }

    fn interrupt(&self, why: &str) {
        tracing::warn!("{why}: every watched channel must be joined again");
        for channel in self.watched.keys() {
            self.sink.interrupted(channel);
        }
    }

    async fn apply(&mut self, command: Command) {
        match command {
            Command::Watch(channel, reply) => {
                if let Some(watched) = self.watched.get_mut(&channel) {
                    watched.count += 1;
                    let _ = reply.send(Ok(()));
                    return;
                }
                let _ = reply.send(self.subscribe(channel).await);
            }
            Command::Unwatch(channel, reply) => {
                if let Some(watched) = self.watched.get_mut(&channel) {
                    watched.count -= 1;
                    if watched.count == 0
                        && let Some(watched) = self.watched.remove(&channel)
                    {
                        // Stopped before the answer: nothing of the channel follows it.
                        watched.forwarder.abort();
                        let _ = watched.forwarder.await;
                        self.presence_channels
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&channel);
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn subscribe(&mut self, channel: Arc<str>) -> Result<(), EngineError> {
        if self.client.connection_state() != State::Connected {
            return Err(EngineError::unavailable(
                "NATS is unavailable: not connected",
            ));
        }
        let subscribe = async {
            let subscriber = self
                .client
                .subscribe(self.subjects.live(&channel))
                .await
                .map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(subscriber)
        };
        let subscriber = match tokio::time::timeout(CONFIRM_TIMEOUT, subscribe).await {
            Ok(Ok(subscriber)) => subscriber,
            Ok(Err(e)) => {
                return Err(EngineError::unavailable(format!(
                    "NATS is unavailable: {e}"
                )));
            }
            Err(_) => return Err(EngineError::unavailable("NATS is unavailable: no answer")),
        };
        let order = self.in_order(&channel).await;
        let forwarder = tokio::spawn(forward(
            subscriber,
            channel.clone(),
            order,
            self.sink.clone(),
            self.presence_channels.clone(),
        ));
        self.watched.insert(
            channel,
            Watched {
                count: 1,
                forwarder,
            },
        );
        Ok(())
    }

    /// Where a channel's live publications start, read once its subscription is live: what
    /// was kept by then is history. Not read while the streams may be missing (the server
    /// came back and no call has made them again yet) or when the read is slow: then the
    /// first publication is taken as it comes.
    async fn in_order(&self, channel: &str) -> InOrder {
        if !self.streams_ok.load(Ordering::Acquire) {
            return InOrder::unknown();
        }
        let subject = self.subjects.stored(channel);
        let read =
            tokio::time::timeout(READ_LAST_TIMEOUT, read::last(&self.publications, &subject));
        match read.await {
            Ok(Ok(last)) => InOrder::new(
                last.as_ref()
                    .and_then(|m| Stored::read(&m.headers))
                    .map(|stored| (stored.epoch, stored.offset)),
            ),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, channel, "where the channel stands is unknown");
                InOrder::unknown()
            }
            Err(_) => {
                tracing::debug!(channel, "reading where the channel stands timed out");
                InOrder::unknown()
            }
        }
    }
}

/// Hands one channel's messages to the sink: presence changes in the order they came,
/// publications in offset order (see [`crate::order`]).
async fn forward(
    mut subscriber: Subscriber,
    channel: Arc<str>,
    mut order: InOrder,
    sink: Arc<dyn EngineSink>,
    presence_channels: PresenceChannels,
) {
    loop {
        let message = match order.deadline() {
            Some(deadline) => tokio::select! {
                message = subscriber.next() => message,
                () = tokio::time::sleep_until(deadline) => {
                    report_gap(&channel, &sink, &mut order);
                    continue;
                }
            },
            None => subscriber.next().await,
        };
        let Some(message) = message else { break };
        let Some(headers) = &message.headers else {
            continue;
        };
        if let Some(joined) = envelope::read_presence_change(headers) {
            match serde_json::from_slice::<Member>(&message.payload) {
                Ok(member) => {
                    presence_channels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(channel.clone());
                    let event = if joined {
                        PresenceEvent::Join
                    } else {
                        PresenceEvent::Leave
                    };
                    sink.presence(&channel, event, &member);
                }
                Err(_) => tracing::warn!("unreadable presence change"),
            }
            continue;
        }
        let Some(stored) = Stored::read(headers) else {
            tracing::warn!("unreadable publication");
            continue;
        };
        let publication = || Publication {
            channel: channel.clone(),
            epoch: stored.epoch.as_str().into(),
            offset: stored.offset,
            data: stored.payload(message.payload.clone()),
        };
        let accepted = order.accept(&stored.epoch, stored.offset, publication, |p| {
            sink.publication(p)
        });
        if accepted.is_err() {
            report_gap(&channel, &sink, &mut order);
        }
    }
}

/// A publication of `channel` never came: its subscribers must recover from the stream.
fn report_gap(channel: &str, sink: &Arc<dyn EngineSink>, order: &mut InOrder) {
    tracing::warn!(
        channel,
        "a publication never reached this node: the channel's subscribers must join again"
    );
    order.reset();
    sink.interrupted(channel);
}
