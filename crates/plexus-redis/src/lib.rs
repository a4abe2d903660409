//! A plexus engine on Redis: several plexus nodes share channels, history, presence and
//! messages to each other's connections through one Redis server.
//!
//! How channels map to Redis (`<p>` is the key prefix, `plexus` unless set):
//!
//! - `<p>:{<channel>}:meta`: a hash with the channel's epoch and last offset;
//! - `<p>:{<channel>}:history`: a stream of the kept publications, entry id `<offset>-0`,
//!   capped at the namespace's history size and expired with its TTL;
//! - `<p>:{<channel>}:members` and `…:member-expiry`: presence, each member with a deadline
//!   its node keeps pushing forward, so the members of a node that died disappear on their
//!   own (announced as leaves) within the presence TTL;
//! - `<p>:channel:<channel>`: the pub/sub topic of publications and presence changes, which
//!   each node subscribes to once while it has subscribers of the channel;
//! - `<p>:nodes`: the pub/sub topic of node messages; `<p>:node:<id>`: a node id's lease.
//!
//! A publication is one Lua script: next offset, history entry and pub/sub message in one
//! atomic step, so offsets reach every node in order. Each node gets each publication once,
//! whatever its number of subscribers. The epoch is made when a channel's meta is created and
//! lives as long as it does (refreshed by every publication, for [`RedisOptions::meta_ttl`]):
//! if Redis loses it (restart without persistence, eviction, expiry), the channel starts over
//! in a new epoch, so a position from before is never taken for one after.
//!
//! Redis pub/sub does not replay what was sent while a node's link was down: when the link
//! breaks, the node reports every watched channel interrupted, its subscribers join again with
//! recovery from the history, and the link is restored with backoff.

#![warn(missing_docs)]

mod envelope;
mod keys;
mod listener;
mod presence;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use plexus_engine::{
    Engine, EngineError, EngineErrorKind, EngineFuture, EngineSink, HistoryPage, Member,
    NodeMessage, Retention,
};
use plexus_protocol::{Payload, Position};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::keys::ChannelKeys;
use crate::listener::{Command, Listener, PresenceChannels, unavailable};

/// Watch and unwatch commands waiting for the listener task, at most.
const COMMAND_QUEUE: usize = 1024;

/// How long a node id's lease lasts without being renewed.
const NODE_LEASE: Duration = Duration::from_secs(10);
/// How long connecting or one command may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how a [`RedisEngine`] connects.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    url: String,
    prefix: String,
    presence_ttl: Duration,
    meta_ttl: Duration,
}

impl RedisOptions {
    /// Options for the Redis server at `url` (`redis://[user:password@]host:port[/db]`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "plexus".into(),
            presence_ttl: Duration::from_secs(10),
            meta_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }

    /// The prefix of every key and topic (`plexus`): clusters with different prefixes can
    /// share one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a member stays in presence after its node last renewed it (10 s); a node
    /// renews its members four times per period, so only a dead or cut-off node's members
    /// lapse.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// How long a channel's position (epoch and offset) is kept after its last publication
    /// (30 days). After that, the channel starts over in a new epoch.
    pub fn meta_ttl(mut self, ttl: Duration) -> Self {
        self.meta_ttl = ttl.max(Duration::from_secs(1));
        self
    }
}

/// The Redis engine. Create it with [`RedisEngine::connect`], optionally claim the node id
/// with [`RedisEngine::claim_node`], and hand it to the server builder's `engine`.
pub struct RedisEngine {
    shared: Arc<Shared>,
    /// Commands for the listener task; set by `start`.
    commands: OnceLock<mpsc::Sender<Command>>,
    /// The pub/sub connection made by `connect`, until `start` hands it to the listener.
    first_pubsub: Mutex<Option<PubSub>>,
}

/// What the engine's background tasks share with it.
struct Shared {
    options: RedisOptions,
    client: redis::Client,
    connection: ConnectionManager,
    /// This process, as the sender of node messages and the holder of a node lease.
    instance: Uuid,
    /// Members added through this node, renewed until removed: channel → connection → JSON.
    own_members: Mutex<HashMap<String, HashMap<String, String>>>,
    presence_channels: PresenceChannels,
    claimed: Mutex<Option<String>>,
    /// Whether the pub/sub link is up; kept by the listener.
    linked: Arc<AtomicBool>,
}

impl RedisEngine {
    /// Connects to Redis with the default options.
    pub async fn connect(url: &str) -> Result<Self, EngineError> {
        Self::connect_with(RedisOptions::new(url)).await
    }

    /// Connects to Redis: fails at once if the URL is wrong or Redis cannot be reached, so a
    /// node never starts without its engine. Later outages are survived (see the crate docs).
    pub async fn connect_with(options: RedisOptions) -> Result<Self, EngineError> {
        let client = redis::Client::open(options.url.as_str()).map_err(|e| {
            EngineError::new(
                EngineErrorKind::Invalid,
                format!("`{}` is not a Redis URL: {e}", options.url),
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let unreachable = |e: &dyn std::fmt::Display| {
            unavailable(&format!("{} cannot be reached: {e}", options.url))
        };
        let connection =
            tokio::time::timeout(TIMEOUT, client.get_connection_manager_with_config(config))
                .await
                .map_err(|e| unreachable(&e))?
                .map_err(|e| unreachable(&e))?;
        let pubsub = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys::nodes_topic(&options.prefix)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(TIMEOUT, pubsub)
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                options,
                client,
                connection,
                instance: Uuid::new_v4(),
                own_members: Mutex::default(),
                presence_channels: PresenceChannels::default(),
                claimed: Mutex::new(None),
                linked: Arc::new(AtomicBool::new(true)),
            }),
            commands: OnceLock::new(),
            first_pubsub: Mutex::new(Some(pubsub)),
        })
    }

    /// Claims `node` as this process's node id in the cluster, for as long as the engine
    /// lives (a lease renewed in the background). Fails with [`EngineErrorKind::Conflict`]
    /// while another live process holds it; the lease of a process that died lapses within
    /// ten seconds.
    pub async fn claim_node(&self, node: &str) -> Result<(), EngineError> {
        let holder = claim(&self.shared, node).await?;
        if holder != self.shared.instance.to_string() {
            return Err(EngineError::new(
                EngineErrorKind::Conflict,
                format!(
                    "node id `{node}` is held by another live node (a dead node's claim lapses within {} s)",
                    NODE_LEASE.as_secs()
                ),
            ));
        }
        *lock(&self.shared.claimed) = Some(node.to_owned());
        let shared = Arc::downgrade(&self.shared);
        let node = node.to_owned();
        tokio::spawn(async move {
            let mut renew = tokio::time::interval(NODE_LEASE / 4);
            renew.tick().await;
            loop {
                renew.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                match claim(&shared, &node).await {
                    Ok(holder) if holder == shared.instance.to_string() => {}
                    Ok(_) => tracing::error!(
                        node,
                        "another process took this node's id while its lease lapsed: two nodes now share it"
                    ),
                    Err(e) => tracing::warn!(node, error = %e, "cannot renew the node id's lease"),
                }
            }
        });
        Ok(())
    }

    fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), EngineError>>) -> Command,
    ) -> EngineFuture<'_, ()> {
        let (reply, answer) = oneshot::channel();
        let command = make(reply);
        let commands = self.commands.get().cloned();
        Box::pin(async move {
            let Some(commands) = commands else {
                return Err(EngineError::unavailable("the Redis engine is not started"));
            };
            // Waits for room when the listener is behind (the broker slow): callers slow
            // down rather than the queue growing.
            if commands.send(command).await.is_err() {
                return Err(EngineError::unavailable("the Redis engine stopped"));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(EngineError::unavailable("the Redis engine stopped")))
        })
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.shared.options.prefix, channel)
    }

    /// Gives the claimed node id back at once (a node that stops cleanly calls this), so a
    /// process restarted with it need not wait for the lease to lapse.
    pub async fn release_node(&self) {
        let Some(node) = lock(&self.shared.claimed).take() else {
            return;
        };
        release(&self.shared, &node).await;
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        let Some(node) = lock(&self.shared.claimed).take() else {
            return;
        };
        // Give the id back now rather than when its lease lapses (if a runtime still runs).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move { release(&shared, &node).await });
        }
    }
}

async fn release(shared: &Shared, node: &str) {
    let key = keys::node_lease(&shared.options.prefix, node);
    let released: Result<i64, _> = scripts::RELEASE_NODE
        .key(key)
        .arg(shared.instance.to_string())
        .invoke_async(&mut shared.connection.clone())
        .await;
    if let Err(e) = released {
        tracing::warn!(node, error = %e, "cannot give the node id back; it lapses on its own");
    }
}

async fn claim(shared: &Shared, node: &str) -> Result<String, EngineError> {
    scripts::CLAIM_NODE
        .key(keys::node_lease(&shared.options.prefix, node))
        .arg(shared.instance.to_string())
        .arg(NODE_LEASE.as_millis() as u64)
        .invoke_async(&mut shared.connection.clone())
        .await
        .map_err(redis_error)
}

fn redis_error(e: redis::RedisError) -> EngineError {
    unavailable(&e.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Engine for RedisEngine {
    fn start<'a>(&'a self, _node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
        let Some(pubsub) = lock(&self.first_pubsub).take() else {
            return Box::pin(async {
                Err(EngineError::unavailable(
                    "the Redis engine is already started",
                ))
            });
        };
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let _ = self.commands.set(commands);
        let shared = &self.shared;
        let listener = Listener::new(
            shared.client.clone(),
            shared.options.prefix.clone(),
            shared.instance,
            sink,
            shared.presence_channels.clone(),
            shared.linked.clone(),
        );
        tokio::spawn(listener.run(pubsub, receiver));
        tokio::spawn(presence::renew(Arc::downgrade(shared)));
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position> {
        Box::pin(async move {
            let keys = self.keys(channel);
            let (epoch, offset): (String, u64) = scripts::PUBLISH
                .key(&keys.meta)
                .key(&keys.history)
                .arg(Uuid::new_v4().simple().to_string())
                .arg(envelope::codec_tag(data.codec()))
                .arg(&data.raw()[..])
                .arg(options.history_size)
                .arg(options.history_ttl.map_or(0, millis))
                .arg(millis(self.shared.options.meta_ttl))
                .arg(&keys.topic)
                .invoke_async(&mut self.shared.connection.clone())
                .await
                .map_err(redis_error)?;
            Ok(Position { epoch, offset })
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage> {
        Box::pin(async move {
            let keys = self.keys(channel);
            let (epoch, top, recoverable, entries): (String, u64, u8, Vec<Vec<u8>>) =
                scripts::HISTORY
                    .key(&keys.meta)
                    .key(&keys.history)
                    .arg(since.map_or("", |s| s.epoch.as_str()))
                    .arg(since.map_or(0, |s| s.offset))
                    .arg(limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)))
                    .arg(Uuid::new_v4().simple().to_string())
                    .arg(millis(self.shared.options.meta_ttl))
                    .invoke_async(&mut self.shared.connection.clone())
                    .await
                    .map_err(redis_error)?;
            let mut publications = Vec::with_capacity(entries.len() / 3);
            let mut entries = entries.into_iter();
            while let (Some(offset), Some(codec), Some(data)) =
                (entries.next(), entries.next(), entries.next())
            {
                let offset = std::str::from_utf8(&offset)
                    .ok()
                    .and_then(|o| o.parse().ok());
                match (offset, envelope::stored_payload(&codec, data)) {
                    (Some(offset), Some(data)) => publications.push((offset, data)),
                    _ => return Err(unavailable("an unreadable history entry")),
                }
            }
            Ok(HistoryPage {
                position: Position { epoch, offset: top },
                publications,
                recoverable: recoverable == 1,
            })
        })
    }

    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.command(|reply| Command::Watch(channel.into(), reply))
    }

    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.command(|reply| Command::Unwatch(channel.into(), reply))
    }

    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let json = serde_json::to_string(member)
                .map_err(|e| EngineError::new(EngineErrorKind::Invalid, e.to_string()))?;
            lock(&self.shared.own_members)
                .entry(channel.to_owned())
                .or_default()
                .insert(member.conn.clone(), json.clone());
            presence::add(&self.shared, channel, &member.conn, &json).await
        })
    }

    fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            {
                let mut own = lock(&self.shared.own_members);
                if let Some(members) = own.get_mut(channel) {
                    members.remove(conn);
                    if members.is_empty() {
                        own.remove(channel);
                    }
                }
            }
            let keys = self.keys(channel);
            let _: i64 = scripts::REMOVE_MEMBER
                .key(&keys.members)
                .key(&keys.member_expiry)
                .arg(conn)
                .arg(&keys.topic)
                .invoke_async(&mut self.shared.connection.clone())
                .await
                .map_err(redis_error)?;
            Ok(())
        })
    }

    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
        Box::pin(async move {
            let members = presence::sweep(&self.shared, channel, true).await?;
            Ok(members
                .iter()
                .filter_map(|json| serde_json::from_slice(json).ok())
                .collect())
        })
    }

    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
        Box::pin(async move {
            let bytes = message.to_wire(self.shared.instance)?;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(keys::nodes_topic(&self.shared.options.prefix))
                .arg(bytes)
                .query_async(&mut self.shared.connection.clone())
                .await
                .map_err(redis_error)?;
            Ok(())
        })
    }

    fn available(&self) -> bool {
        self.shared.linked.load(Ordering::Acquire)
    }
}
