//! The node's one pub/sub connection: which channels it watches, what reaches the sink, and
//! what happens when the link to Redis breaks.
//!
//! One task owns the connection and the watch counts, and takes watch and unwatch commands
//! in the order the calls were made, so the counts need no lock and a later unwatch can never
//! overtake an earlier watch. A watch completes when Redis has confirmed the subscription:
//! from then on no publication of the channel can be missed. When the connection breaks, every
//! watched channel is reported interrupted (Redis pub/sub does not replay what was sent
//! meanwhile; the hub makes its subscribers join again with recovery) and the task connects
//! again with backoff, subscribing again to what is still watched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_engine::{EngineError, EngineSink, NodeMessage, Publication};
use redis::aio::{PubSub, PubSubSink};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::envelope::{self, ChannelEvent};
use crate::keys;

/// How long connecting or a subscription may take before the link counts as broken.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle link is checked (a half-open TCP connection says nothing by itself).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Backoff between connection attempts: from the first to the most.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A request to the listener task.
pub(crate) enum Command {
    /// One more watch of a channel; answered once it is live (or failed: then not counted).
    Watch(Arc<str>, oneshot::Sender<Result<(), EngineError>>),
    /// One watch fewer; answered once Redis stopped sending the channel when that was the last.
    Unwatch(Arc<str>, oneshot::Sender<Result<(), EngineError>>),
}

/// Channels of which this node saw presence while watching them: the ones whose expired
/// members it sweeps away.
pub(crate) type PresenceChannels = Arc<Mutex<HashSet<Arc<str>>>>;

/// What the listener task owns.
pub(crate) struct Listener {
    pub(crate) client: redis::Client,
    pub(crate) prefix: String,
    pub(crate) instance: Uuid,
    pub(crate) sink: Arc<dyn EngineSink>,
    pub(crate) presence_channels: PresenceChannels,
    /// Whether the pub/sub link is up (the engine's availability).
    linked: Arc<AtomicBool>,
    nodes_topic: String,
    /// Watch counts, by channel.
    watched: HashMap<Arc<str>, usize>,
    /// Channel names by topic, for the channels with a count above zero.
    topics: HashMap<String, Arc<str>>,
}

enum Link {
    /// The engine was dropped: stop.
    Closed,
    /// The connection broke: report and connect again.
    Broken(String),
}

impl Listener {
    pub(crate) fn new(
        client: redis::Client,
        prefix: String,
        instance: Uuid,
        sink: Arc<dyn EngineSink>,
        presence_channels: PresenceChannels,
        linked: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            linked,
            nodes_topic: keys::nodes_topic(&prefix),
            prefix,
            instance,
            sink,
            presence_channels,
            watched: HashMap::new(),
            topics: HashMap::new(),
        }
    }

    /// Runs until the engine is dropped. `first` is the connection made when the engine was
    /// created, already subscribed to the nodes' topic.
    pub(crate) async fn run(mut self, first: PubSub, mut commands: mpsc::Receiver<Command>) {
        let mut connection = Some(first);
        let mut backoff = BACKOFF.0;
        loop {
            self.linked.store(connection.is_some(), Ordering::Release);
            let pubsub = match connection.take() {
                Some(pubsub) => pubsub,
                None => match self.reconnect().await {
                    Ok(pubsub) => {
                        tracing::info!("redis pub/sub link restored");
                        self.linked.store(true, Ordering::Release);
                        backoff = BACKOFF.0;
                        pubsub
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "redis pub/sub link down; retrying");
                        // Commands made meanwhile fail at once rather than wait for Redis.
                        let retry = tokio::time::sleep(jitter(backoff));
                        tokio::pin!(retry);
                        loop {
                            tokio::select! {
                                () = &mut retry => break,
                                command = commands.recv() => match command {
                                    Some(command) => self.refuse(command, &e),
                                    None => return,
                                },
                            }
                        }
                        backoff = (backoff * 2).min(BACKOFF.1);
                        continue;
                    }
                },
            };
            match self.serve(pubsub, &mut commands).await {
                Link::Closed => return,
                Link::Broken(why) => {
                    tracing::warn!(error = %why, "redis pub/sub link broke");
                    for channel in self.watched.keys() {
                        self.sink.interrupted(channel);
                    }
                }
            }
        }
    }

    async fn reconnect(&self) -> Result<PubSub, String> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.nodes_topic).await?;
            let topics: Vec<&String> = self.topics.keys().collect();
            if !topics.is_empty() {
                pubsub.subscribe(topics).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, connect).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connecting to redis timed out".into()),
        }
    }

    fn refuse(&mut self, command: Command, why: &str) {
        match command {
            Command::Watch(_, reply) => {
                let _ = reply.send(Err(unavailable(why)));
            }
            Command::Unwatch(channel, reply) => {
                // Nothing to undo on a link that is down; forget it so it is not restored.
                self.count_down(&channel);
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn serve(&mut self, pubsub: PubSub, commands: &mut mpsc::Receiver<Command>) -> Link {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(message) => self.dispatch(message.get_channel_name(), message.get_payload_bytes()),
                    None => return Link::Broken("the connection closed".into()),
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        if let Err(why) = self.apply(&mut sink, command).await {
                            return Link::Broken(why);
                        }
                    }
                    None => return Link::Closed,
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Link::Broken(e.to_string()),
                        Err(_) => return Link::Broken("no answer to a ping".into()),
                    }
                }
            }
        }
    }

    /// Applies a command; an error means the link broke (the command was answered).
    async fn apply(&mut self, sink: &mut PubSubSink, command: Command) -> Result<(), String> {
        match command {
            Command::Watch(channel, reply) => {
                let count = self.watched.entry(channel.clone()).or_insert(0);
                *count += 1;
                if *count > 1 {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let topic = keys::topic(&self.prefix, &channel);
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&topic)).await {
                    Ok(Ok(())) => {
                        self.topics.insert(topic, channel);
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "subscribing timed out".into(),
                        };
                        self.count_down(&channel);
                        let _ = reply.send(Err(unavailable(&why)));
                        Err(why)
                    }
                }
            }
            Command::Unwatch(channel, reply) => {
                if !self.count_down(&channel) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let topic = keys::topic(&self.prefix, &channel);
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&topic)).await {
                    Ok(Ok(())) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    failed => {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "unsubscribing timed out".into(),
                        };
                        // Not watched any more either way: the next connection leaves it out.
                        let _ = reply.send(Ok(()));
                        Err(why)
                    }
                }
            }
        }
    }

    /// Takes one watch off `channel`; true when that was the last one.
    fn count_down(&mut self, channel: &Arc<str>) -> bool {
        let Some(count) = self.watched.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.watched.remove(channel);
        self.topics.remove(&keys::topic(&self.prefix, channel));
        self.presence_channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(channel);
        true
    }

    fn dispatch(&self, topic: &str, payload: &[u8]) {
        if let Some(channel) = self.topics.get(topic) {
            match envelope::channel_event(payload) {
                Some(ChannelEvent::Publication {
                    epoch,
                    offset,
                    data,
                }) => self.sink.publication(&Publication {
                    channel: channel.clone(),
                    epoch: epoch.into(),
                    offset,
                    data,
                }),
                Some(ChannelEvent::Presence(event, member)) => {
                    self.presence_channels
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(channel.clone());
                    self.sink.presence(channel, event, &member);
                }
                None => tracing::warn!(topic, "unreadable message on a channel topic"),
            }
            return;
        }
        if topic == self.nodes_topic {
            match NodeMessage::from_wire(payload) {
                Some((sender, _)) if sender == self.instance => {}
                Some((_, message)) => self.sink.message(message),
                None => tracing::warn!("unreadable node message"),
            }
        }
        // Anything else is a channel unwatched meanwhile: Redis stops sending it.
    }
}

pub(crate) fn unavailable(why: &str) -> EngineError {
    EngineError::unavailable(format!("redis is unavailable: {why}"))
}

/// Full jitter: a random wait up to `limit`, so nodes that lost Redis together do not all
/// come back at the same instant.
fn jitter(limit: Duration) -> Duration {
    limit.mul_f64(rand::random::<f64>())
}
