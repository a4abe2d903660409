//! A plexus engine on NATS with JetStream: several plexus nodes share channels, history,
//! presence and messages to each other's connections through one NATS server (or cluster).
//!
//! How channels map to NATS (`<p>` is the subject prefix, `plexus` unless set; a channel name
//! is one base64url token, `<ch>`):
//!
//! - stream `<p>-publications`, subjects `<p>.in.>`: the kept publications of `<ch>` under
//!   `<p>.in.<ch>`, at most [`NatsOptions::max_history`] per channel, each carrying its epoch
//!   and offset in headers; the stream **republishes** each message it keeps to
//!   `<p>.ch.<ch>`, which is what watching nodes subscribe to (servers before 2.12 can swap
//!   two republished messages: each node puts them back in offset order);
//! - stream `<p>-presence`, subjects `<p>.pr.>`: one message per member (`<p>.pr.<ch>.<conn>`)
//!   with a deadline its node keeps renewing, or a tombstone; node-id leases likewise;
//! - core subject `<p>.ch.<ch>` also carries presence changes (a header tells them apart),
//!   and `<p>.nodes` carries node messages.
//!
//! A publication is a compare-and-set: the node reads the channel's last kept message (its
//! epoch and offset) and publishes the next offset with `Nats-Expected-Last-Subject-Sequence`
//! set to that message's sequence; a concurrent publisher makes it fail, and it reads and tries
//! again. So offsets are dense, and the stream (hence the republished subject) holds them in
//! offset order. A channel with nothing kept starts a new epoch: a position from before can
//! never be taken for one after. A publication crosses NATS once per watching node.
//!
//! Core NATS does not replay what was sent while a node's link was down: when the link drops,
//! the node reports every watched channel interrupted and its subscribers join again with
//! recovery from the stream. The client reconnects by itself.

#![warn(missing_docs)]

mod envelope;
mod listener;
mod order;
mod presence;
mod read;
mod subjects;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::header::{HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, DiscardPolicy, Republish, StorageType, Stream};
use async_nats::{Client, Subscriber};
use bytes::Bytes;
use plexus_engine::{
    Engine, EngineError, EngineErrorKind, EngineFuture, EngineSink, HistoryPage, Member,
    NodeMessage, Retention,
};
use plexus_protocol::{Payload, Position};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::envelope::{Stored, now_ms};
use crate::listener::{Command, Listener, PresenceChannels};
use crate::subjects::Subjects;

/// Watch and unwatch commands waiting for the listener task, at most.
const COMMAND_QUEUE: usize = 1024;

/// How long a node id's lease lasts without being renewed.
const NODE_LEASE: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many compare-and-set rounds a publication may take under contention.
const PUBLISH_ATTEMPTS: usize = 64;

/// Where and how a [`NatsEngine`] connects.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    url: String,
    prefix: String,
    presence_ttl: Duration,
    meta_ttl: Duration,
    max_history: usize,
    memory_storage: bool,
}

impl NatsOptions {
    /// Options for the NATS server at `url` (`nats://host:port`); it needs JetStream
    /// (`nats-server -js`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "plexus".into(),
            presence_ttl: Duration::from_secs(10),
            meta_ttl: Duration::from_secs(30 * 24 * 3600),
            max_history: 1000,
            memory_storage: false,
        }
    }

    /// The prefix of every subject and stream (`plexus`): clusters with different prefixes
    /// can share one NATS. Letters, digits, `-` and `_` only.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a member stays in presence after its node last renewed it (10 s).
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// How long a channel's last publication (and so its epoch and offset) is kept (30
    /// days): the stream's age limit.
    pub fn meta_ttl(mut self, ttl: Duration) -> Self {
        self.meta_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// The most publications kept per channel (1000), whatever a namespace's history size
    /// asks: the stream's per-subject limit.
    pub fn max_history(mut self, max: usize) -> Self {
        self.max_history = max.max(1);
        self
    }

    /// Keeps the streams in the server's memory rather than on its disk (default: disk).
    pub fn memory_storage(mut self, memory: bool) -> Self {
        self.memory_storage = memory;
        self
    }
}

/// The NATS engine. Create it with [`NatsEngine::connect`], optionally claim the node id with
/// [`NatsEngine::claim_node`], and hand it to the server builder's `engine`.
pub struct NatsEngine {
    shared: Arc<Shared>,
    commands: OnceLock<mpsc::Sender<Command>>,
    /// What `start` hands to the listener: the nodes' subscription and connection events.
    pending: Mutex<Option<(Subscriber, mpsc::UnboundedReceiver<async_nats::Event>)>>,
}

/// What the engine's background tasks share with it.
struct Shared {
    options: NatsOptions,
    subjects: Subjects,
    client: Client,
    jetstream: async_nats::jetstream::Context,
    publications: Stream,
    presence: Stream,
    /// Cleared when a call fails or the link comes back: the next call first makes sure the
    /// streams exist again.
    streams_ok: Arc<AtomicBool>,
    instance: Uuid,
    /// Members added through this node, renewed until removed: channel → connection → JSON.
    own_members: Mutex<HashMap<String, HashMap<String, Bytes>>>,
    presence_channels: PresenceChannels,
    claimed: Mutex<Option<String>>,
    /// Channels being published to from this node (by stored subject): their publications
    /// go one at a time, each knowing the last one's epoch, offset and stream sequence.
    publishing: Mutex<HashMap<String, Tail>>,
}

/// A channel's last kept publication as this node last saw it: epoch, offset, sequence.
type Tail = Arc<tokio::sync::Mutex<Option<(String, u64, u64)>>>;

/// Makes sure the two streams exist (they vanish with a NATS server that lost its store).
async fn create_streams(
    jetstream: &async_nats::jetstream::Context,
    subjects: &Subjects,
    options: &NatsOptions,
) -> Result<(Stream, Stream), String> {
    let storage = if options.memory_storage {
        StorageType::Memory
    } else {
        StorageType::File
    };
    let publications = jetstream
        .get_or_create_stream(Config {
            name: subjects.publications_stream(),
            subjects: vec![subjects.stored_wildcard()],
            max_messages_per_subject: i64::try_from(options.max_history).unwrap_or(i64::MAX),
            max_age: options.meta_ttl,
            discard: DiscardPolicy::Old,
            storage,
            allow_direct: true,
            allow_rollup: true,
            republish: Some(Republish {
                source: subjects.stored_wildcard(),
                destination: subjects.live_wildcard(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("no JetStream stream (is JetStream on? nats-server -js): {e}"))?;
    let presence = jetstream
        .get_or_create_stream(Config {
            name: subjects.presence_stream(),
            subjects: vec![subjects.presence_wildcard()],
            max_messages_per_subject: 1,
            // Garbage collection only: deadlines in the messages say who is present.
            max_age: (options.presence_ttl * 10).max(Duration::from_secs(60)),
            discard: DiscardPolicy::Old,
            storage,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("no JetStream stream: {e}"))?;
    Ok((publications, presence))
}

pub(crate) fn unavailable(why: &str) -> EngineError {
    EngineError::unavailable(format!("NATS is unavailable: {why}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn new_epoch() -> String {
    Uuid::new_v4().simple().to_string()
}

impl Shared {
    /// Runs `call` if the link is up; after a failure the next call first recreates the
    /// streams, which a NATS server that restarted without its store no longer has.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        // While the link is down a call would wait for its timeout: say so at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(unavailable("not connected"));
        }
        if !self.streams_ok.load(Ordering::Acquire) {
            create_streams(&self.jetstream, &self.subjects, &self.options)
                .await
                .map_err(|e| unavailable(&e))?;
            self.streams_ok.store(true, Ordering::Release);
        }
        let result = call.await;
        if result.is_err() {
            self.streams_ok.store(false, Ordering::Release);
        }
        result
    }
}

impl NatsEngine {
    /// Connects with the default options.
    pub async fn connect(url: &str) -> Result<Self, EngineError> {
        Self::connect_with(NatsOptions::new(url)).await
    }

    /// Connects to NATS and makes sure its streams exist: fails at once if the URL is wrong,
    /// NATS cannot be reached or has no JetStream, so a node never starts without its engine.
    /// Later outages are survived (see the crate docs).
    pub async fn connect_with(options: NatsOptions) -> Result<Self, EngineError> {
        let prefix_ok = !options.prefix.is_empty()
            && options
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return Err(EngineError::new(
                EngineErrorKind::Invalid,
                format!(
                    "`{}` is not a NATS prefix (letters, digits, - and _)",
                    options.prefix
                ),
            ));
        }
        if !options.url.starts_with("nats://") && !options.url.starts_with("tls://") {
            return Err(EngineError::new(
                EngineErrorKind::Invalid,
                format!("`{}` is not a NATS URL (nats://HOST:PORT)", options.url),
            ));
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            unavailable(&format!("{} cannot be reached: {e}", options.url))
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            // A server that stopped answering (hung, or cut off without a reset) is noticed
            // within two pings, not the default two minutes.
            .ping_interval(Duration::from_secs(5))
            // Back soon after NATS is: full jitter up to 100 ms × 2^attempt, at most 2 s.
            .reconnect_delay_callback(|attempts| {
                let ceiling = Duration::from_millis(100)
                    .saturating_mul(1 << attempts.min(5))
                    .min(Duration::from_secs(2));
                ceiling.mul_f64(rand::random::<f64>())
            })
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send(event);
                }
            })
            .connect(options.url.as_str())
            .await
            .map_err(|e| unreachable(&e))?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let subjects = Subjects::new(&options.prefix);
        let (publications, presence) = create_streams(&jetstream, &subjects, &options)
            .await
            .map_err(|e| unreachable(&e))?;
        let nodes = client
            .subscribe(subjects.nodes())
            .await
            .map_err(|e| unreachable(&e))?;
        client.flush().await.map_err(|e| unreachable(&e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                options,
                subjects,
                client,
                jetstream,
                publications,
                presence,
                streams_ok: Arc::new(AtomicBool::new(true)),
                instance: Uuid::new_v4(),
                own_members: Mutex::default(),
                presence_channels: PresenceChannels::default(),
                claimed: Mutex::new(None),
                publishing: Mutex::default(),
            }),
            commands: OnceLock::new(),
            pending: Mutex::new(Some((nodes, events))),
        })
    }

    /// Claims `node` as this process's node id in the cluster, for as long as the engine
    /// lives (a lease renewed in the background). Fails with [`EngineErrorKind::Conflict`]
    /// while another live process holds it; the lease of a process that died lapses within
    /// ten seconds.
    pub async fn claim_node(&self, node: &str) -> Result<(), EngineError> {
        let claimed = self
            .shared
            .guarded(presence::claim(&self.shared, node, millis(NODE_LEASE)))
            .await?;
        if !claimed {
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
                match presence::claim(&shared, &node, millis(NODE_LEASE)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        node,
                        "another process took this node's id while its lease lapsed: two nodes now share it"
                    ),
                    Err(e) => tracing::warn!(node, error = %e, "cannot renew the node id's lease"),
                }
            }
        });
        Ok(())
    }

    /// Gives the claimed node id back at once (a node that stops cleanly calls this).
    pub async fn release_node(&self) {
        let Some(node) = lock(&self.shared.claimed).take() else {
            return;
        };
        if let Err(e) = presence::release(&self.shared, &node).await {
            tracing::warn!(node, error = %e, "cannot give the node id back; it lapses on its own");
        }
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
                return Err(EngineError::unavailable("the NATS engine is not started"));
            };
            // Waits for room when the listener is behind (the broker slow): callers slow
            // down rather than the queue growing.
            if commands.send(command).await.is_err() {
                return Err(EngineError::unavailable("the NATS engine stopped"));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(EngineError::unavailable("the NATS engine stopped")))
        })
    }

    /// The channel's last kept message; a channel with none gets an anchor first: offset 0
    /// in a new epoch, so that a subscriber who joins before the first publication holds a
    /// position the publications then continue.
    async fn top_or_anchor(&self, subject: &str) -> Result<Stored, EngineError> {
        let shared = &self.shared;
        for _ in 0..PUBLISH_ATTEMPTS {
            let last = read::last(&shared.publications, subject).await?;
            if let Some(top) = last.as_ref().and_then(|m| Stored::read(&m.headers)) {
                return Ok(top);
            }
            let anchor = Stored {
                epoch: new_epoch(),
                offset: 0,
                codec: plexus_protocol::Codec::Json,
                expires: 0,
                keep: 0,
            };
            let mut headers = anchor.headers();
            let expected = last.as_ref().map_or(0, |m| m.sequence);
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(expected),
            );
            let ack = shared
                .jetstream
                .publish_with_headers(subject.to_owned(), headers, Bytes::new())
                .await
                .map_err(|e| unavailable(&e.to_string()))?;
            match ack.await {
                Ok(_) => return Ok(anchor),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(unavailable(&e.to_string())),
            }
        }
        Err(unavailable("the channel is too contended"))
    }

    /// One compare-and-set round of a publication: `None` when another publisher won.
    /// `tail` is the channel's last kept publication as this node last saw it (epoch, offset,
    /// stream sequence): with it, an uncontended publication is one round trip.
    async fn try_publish(
        &self,
        subject: &str,
        data: &Payload,
        options: &Retention,
        tail: &mut Option<(String, u64, u64)>,
    ) -> Result<Option<Position>, EngineError> {
        let shared = &self.shared;
        let (epoch, offset, expected) = match tail.take() {
            Some((epoch, offset, sequence)) => (epoch, offset + 1, sequence),
            None => {
                let last = read::last(&shared.publications, subject).await?;
                match last
                    .as_ref()
                    .and_then(|m| Stored::read(&m.headers).map(|s| (s, m.sequence)))
                {
                    Some((stored, sequence)) => (stored.epoch, stored.offset + 1, sequence),
                    None => (new_epoch(), 1, last.as_ref().map_or(0, |m| m.sequence)),
                }
            }
        };
        let keep = options.history_size.min(shared.options.max_history) as u64;
        let stored = Stored {
            epoch,
            offset,
            codec: data.codec(),
            expires: options.history_ttl.map_or(0, |ttl| now_ms() + millis(ttl)),
            keep,
        };
        let mut headers = stored.headers();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        if keep <= 1 {
            // Nothing (or one) to keep: the publication replaces what the subject held.
            headers.insert("Nats-Rollup", "sub");
        }
        let ack = shared
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, data.raw().clone())
            .await
            .map_err(|e| unavailable(&e.to_string()))?;
        let sequence = match ack.await {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Ok(None),
            Err(e) => return Err(unavailable(&e.to_string())),
        };
        // Trim to the channel's own history size now and then (the stream keeps up to
        // `max_history`; reads never look past `keep` anyway).
        if keep > 1
            && (keep as usize) < shared.options.max_history
            && offset % (keep / 4).max(1) == 0
        {
            let purged = shared.publications.purge().filter(subject).keep(keep).await;
            if let Err(e) = purged {
                tracing::debug!(error = %e, "trimming a channel's history failed");
            }
        }
        *tail = Some((stored.epoch.clone(), offset, sequence));
        Ok(Some(Position {
            epoch: stored.epoch,
            offset,
        }))
    }
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        let Some(node) = lock(&self.shared.claimed).take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                let _ = presence::release(&shared, &node).await;
            });
        }
    }
}

impl Engine for NatsEngine {
    fn start<'a>(&'a self, _node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
        let Some((nodes, events)) = lock(&self.pending).take() else {
            return Box::pin(async {
                Err(EngineError::unavailable(
                    "the NATS engine is already started",
                ))
            });
        };
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let _ = self.commands.set(commands);
        let shared = &self.shared;
        let listener = Listener::new(
            shared.client.clone(),
            shared.subjects.clone(),
            shared.publications.clone(),
            shared.instance,
            sink,
            shared.presence_channels.clone(),
            shared.streams_ok.clone(),
        );
        tokio::spawn(listener.run(nodes, receiver, events));
        tokio::spawn(presence::renew(Arc::downgrade(shared)));
        Box::pin(async { Ok(()) })
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position> {
        Box::pin(self.shared.guarded(async move {
            let subject = self.shared.subjects.stored(channel);
            // This node's publications to a channel go one at a time: they would only lose
            // races to each other, and the one before tells the next where the channel is.
            let tail = lock(&self.shared.publishing)
                .entry(subject.clone())
                .or_default()
                .clone();
            let published = async {
                let mut known = tail.lock().await;
                for _ in 0..PUBLISH_ATTEMPTS {
                    if let Some(position) = self
                        .try_publish(&subject, &data, options, &mut known)
                        .await?
                    {
                        return Ok(position);
                    }
                }
                Err(unavailable("the channel is too contended"))
            }
            .await;
            let mut publishing = lock(&self.shared.publishing);
            // Forgotten once no publication of the channel is in flight here (the map and
            // this one hold it): the map stays as small as the work in progress.
            if Arc::strong_count(&tail) == 2 {
                publishing.remove(&subject);
            }
            published
        }))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage> {
        Box::pin(self.shared.guarded(async move {
            let shared = &self.shared;
            let subject = shared.subjects.stored(channel);
            let top = self.top_or_anchor(&subject).await?;
            let position = Position {
                epoch: top.epoch.clone(),
                offset: top.offset,
            };
            let same_epoch = since.filter(|s| s.epoch == top.epoch);
            let up_to_date = same_epoch.is_some_and(|s| s.offset >= top.offset);
            if limit == Some(0) && since.is_none() || up_to_date || top.keep == 0 {
                let recoverable = same_epoch.is_some_and(|s| s.offset == top.offset);
                return Ok(HistoryPage {
                    position,
                    publications: Vec::new(),
                    recoverable,
                });
            }
            let after = same_epoch.map_or(0, |s| s.offset);
            let oldest = top.offset.saturating_sub(top.keep);
            let now = now_ms();
            let mut first = None;
            let mut publications = Vec::new();
            for kept in read::all(&shared.publications, &subject, false).await? {
                let Some(stored) = kept.headers.as_ref().and_then(Stored::read) else {
                    continue;
                };
                // Later ones (published since the last was read) belong to the live stream:
                // the page stops at its position.
                if stored.epoch != top.epoch
                    || stored.offset <= oldest.max(after)
                    || stored.offset > top.offset
                    || !stored.live(now)
                {
                    continue;
                }
                first.get_or_insert(stored.offset);
                if publications.len() < limit.unwrap_or(usize::MAX) {
                    publications.push((stored.offset, stored.payload(kept.payload)));
                }
            }
            let recoverable = same_epoch.is_some_and(|s| first == Some(s.offset + 1));
            Ok(HistoryPage {
                position,
                publications,
                recoverable,
            })
        }))
    }

    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.command(|reply| Command::Watch(channel.into(), reply))
    }

    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.command(|reply| Command::Unwatch(channel.into(), reply))
    }

    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let json = Bytes::from(
                serde_json::to_vec(member)
                    .map_err(|e| EngineError::new(EngineErrorKind::Invalid, e.to_string()))?,
            );
            lock(&self.shared.own_members)
                .entry(channel.to_owned())
                .or_default()
                .insert(member.conn.clone(), json.clone());
            self.shared
                .guarded(presence::add(&self.shared, channel, &member.conn, &json))
                .await
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
            self.shared
                .guarded(presence::remove(&self.shared, channel, conn))
                .await
        })
    }

    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
        Box::pin(self.shared.guarded(presence::sweep(&self.shared, channel)))
    }

    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
        Box::pin(async move {
            let bytes = message.to_wire(self.shared.instance)?;
            self.shared
                .client
                .publish(self.shared.subjects.nodes(), bytes.into())
                .await
                .map_err(|e| unavailable(&e.to_string()))
        })
    }

    fn available(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }
}
