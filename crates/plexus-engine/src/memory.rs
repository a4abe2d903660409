//! The in-memory engine: one process, any number of nodes.
//!
//! Each channel's stream (epoch, offset, history, members, watching nodes) sits behind its
//! own mutex, and a publication is handed to the watching nodes' sinks under it: that is what
//! orders delivery by offset. Every call does its work when it is made, so the futures are
//! ready at once and a hub may poll them inline.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use plexus_protocol::{Payload, Position, PresenceEvent};

use crate::{
    Engine, EngineError, EngineErrorKind, EngineFuture, EngineSink, HistoryPage, HistoryStats,
    Member, NodeMessage, Publication, Retention,
};

/// Channels kept at once unless configured otherwise.
const DEFAULT_MAX_CHANNELS: usize = 100_000;

/// The in-memory engine of one node. Engines made with [`MemoryEngine::peer`] share their
/// channels, as nodes of a cluster would (useful to test multi-node behaviour in one
/// process); [`MemoryEngine::new`] starts a fresh, unshared one.
pub struct MemoryEngine {
    broker: Arc<Broker>,
    slot: u64,
}

struct Broker {
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    nodes: RwLock<HashMap<u64, Arc<dyn EngineSink>>>,
    next_slot: AtomicU64,
    max_channels: usize,
    /// What every channel's history holds together, kept as entries come and go so that
    /// reading it takes no lock.
    kept_publications: AtomicU64,
    kept_bytes: AtomicU64,
}

impl Broker {
    fn kept(&self, publications: u64, bytes: u64) {
        self.kept_publications
            .fetch_add(publications, Ordering::Relaxed);
        self.kept_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn dropped(&self, dropped: Dropped) {
        if dropped.publications > 0 {
            self.kept_publications
                .fetch_sub(dropped.publications, Ordering::Relaxed);
            self.kept_bytes.fetch_sub(dropped.bytes, Ordering::Relaxed);
        }
    }
}

struct Stream {
    /// The channel's name, shared by every publication delivered.
    name: Arc<str>,
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Stored>,
    members: HashMap<String, Member>,
    /// Watch counts by node slot.
    watchers: HashMap<u64, usize>,
}

struct Stored {
    offset: u64,
    /// When it leaves the history, if the channel has a time to live.
    expires: Option<Instant>,
    data: Payload,
}

/// What leaving entries took out of a history.
#[derive(Default)]
struct Dropped {
    publications: u64,
    bytes: u64,
}

impl Dropped {
    fn add(&mut self, stored: &Stored) {
        self.publications += 1;
        self.bytes += stored.data.raw().len() as u64;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn new_epoch() -> Arc<str> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Arc::from(&id[..8])
}

fn ready<'a, T: Send + 'a>(result: Result<T, EngineError>) -> EngineFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    /// A fresh engine keeping at most 100,000 channels.
    pub fn new() -> Self {
        Self::with_max_channels(DEFAULT_MAX_CHANNELS)
    }

    /// A fresh engine keeping at most `max` channels; publishing to or joining one more
    /// fails with [`EngineErrorKind::Limit`].
    pub fn with_max_channels(max: usize) -> Self {
        let broker = Arc::new(Broker {
            streams: Mutex::new(HashMap::new()),
            nodes: RwLock::new(HashMap::new()),
            next_slot: AtomicU64::new(1),
            max_channels: max,
            kept_publications: AtomicU64::new(0),
            kept_bytes: AtomicU64::new(0),
        });
        Self::attach(broker)
    }

    /// Another node's engine sharing this one's channels.
    pub fn peer(&self) -> Self {
        Self::attach(self.broker.clone())
    }

    fn attach(broker: Arc<Broker>) -> Self {
        let slot = broker.next_slot.fetch_add(1, Ordering::Relaxed);
        Self { broker, slot }
    }

    /// How many channels the engine keeps now.
    pub fn channel_count(&self) -> usize {
        lock(&self.broker.streams).len()
    }

    fn stream(
        &self,
        channel: &str,
        create: bool,
    ) -> Result<Option<Arc<Mutex<Stream>>>, EngineError> {
        let mut streams = lock(&self.broker.streams);
        if let Some(stream) = streams.get(channel) {
            return Ok(Some(stream.clone()));
        }
        if !create {
            return Ok(None);
        }
        if streams.len() >= self.broker.max_channels {
            return Err(EngineError::new(
                EngineErrorKind::Limit,
                "too many channels are kept",
            ));
        }
        let name: Arc<str> = channel.into();
        let stream = Arc::new(Mutex::new(Stream {
            name: name.clone(),
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            members: HashMap::new(),
            watchers: HashMap::new(),
        }));
        streams.insert(name, stream.clone());
        Ok(Some(stream))
    }

    /// Forgets a stream that holds nothing any more; a later one starts a new epoch.
    fn release(&self, channel: &str, stream: &Arc<Mutex<Stream>>) {
        let mut streams = lock(&self.broker.streams);
        let state = lock(stream);
        if state.history.is_empty()
            && state.members.is_empty()
            && state.watchers.is_empty()
            && streams.get(channel).is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(channel);
        }
    }

    /// Calls `deliver` with the sink of every node watching `state`'s channel.
    fn to_watchers(&self, state: &Stream, mut deliver: impl FnMut(&dyn EngineSink)) {
        if state.watchers.is_empty() {
            return;
        }
        let nodes = self.broker.nodes.read().unwrap_or_else(|p| p.into_inner());
        for slot in state.watchers.keys() {
            if let Some(sink) = nodes.get(slot) {
                deliver(sink.as_ref());
            }
        }
    }

    fn publish_now(
        &self,
        channel: &str,
        data: Payload,
        options: &Retention,
    ) -> Result<Position, EngineError> {
        let stream = self.stream(channel, true)?.expect("created");
        let position = {
            let mut state = lock(&stream);
            state.offset += 1;
            let offset = state.offset;
            if options.history_size > 0 {
                let now = Instant::now();
                self.broker.kept(1, data.raw().len() as u64);
                state.history.push_back(Stored {
                    offset,
                    expires: options.history_ttl.map(|ttl| now + ttl),
                    data: data.clone(),
                });
                let dropped = state.trim(options.history_size, now);
                self.broker.dropped(dropped);
            }
            if !state.watchers.is_empty() {
                let publication = Publication {
                    channel: state.name.clone(),
                    epoch: state.epoch.clone(),
                    offset,
                    data,
                };
                self.to_watchers(&state, |sink| sink.publication(&publication));
            }
            Position {
                epoch: state.epoch.to_string(),
                offset,
            }
        };
        self.release(channel, &stream);
        Ok(position)
    }

    fn history_now(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, EngineError> {
        let Some(stream) = self.stream(channel, false)? else {
            // Nothing kept: a new epoch, which no position from before can match.
            return Ok(HistoryPage {
                position: Position {
                    epoch: new_epoch().to_string(),
                    offset: 0,
                },
                publications: Vec::new(),
                recoverable: false,
            });
        };
        let mut state = lock(&stream);
        let dropped = state.expire(Instant::now());
        self.broker.dropped(dropped);
        let same_epoch = since.filter(|since| *since.epoch == *state.epoch);
        let after = same_epoch.map_or(0, |since| since.offset);
        let recoverable = same_epoch.is_some_and(|since| {
            since.offset == state.offset
                || (since.offset < state.offset
                    && state
                        .history
                        .front()
                        .is_some_and(|first| first.offset <= since.offset + 1))
        });
        let publications = state
            .history
            .iter()
            .filter(|stored| stored.offset > after)
            .take(limit.unwrap_or(usize::MAX))
            .map(|stored| (stored.offset, stored.data.clone()))
            .collect();
        Ok(HistoryPage {
            position: Position {
                epoch: state.epoch.to_string(),
                offset: state.offset,
            },
            publications,
            recoverable,
        })
    }

    fn watch_now(&self, channel: &str, delta: isize) -> Result<(), EngineError> {
        let Some(stream) = self.stream(channel, delta > 0)? else {
            return Ok(());
        };
        {
            let mut state = lock(&stream);
            let count = state.watchers.entry(self.slot).or_insert(0);
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                state.watchers.remove(&self.slot);
            }
        }
        if delta < 0 {
            self.release(channel, &stream);
        }
        Ok(())
    }

    fn member_now(
        &self,
        channel: &str,
        add: Option<&Member>,
        remove: &str,
    ) -> Result<(), EngineError> {
        let Some(stream) = self.stream(channel, add.is_some())? else {
            return Ok(());
        };
        {
            let mut state = lock(&stream);
            match add {
                Some(member) => {
                    let replaced = state.members.insert(member.conn.clone(), member.clone());
                    if replaced.is_none() {
                        self.to_watchers(&state, |sink| {
                            sink.presence(channel, PresenceEvent::Join, member)
                        });
                    }
                }
                None => {
                    if let Some(member) = state.members.remove(remove) {
                        self.to_watchers(&state, |sink| {
                            sink.presence(channel, PresenceEvent::Leave, &member)
                        });
                    }
                }
            }
        }
        if add.is_none() {
            self.release(channel, &stream);
        }
        Ok(())
    }
}

impl Stream {
    fn trim(&mut self, size: usize, now: Instant) -> Dropped {
        let mut dropped = Dropped::default();
        while self.history.len() > size {
            if let Some(stored) = self.history.pop_front() {
                dropped.add(&stored);
            }
        }
        let expired = self.expire(now);
        dropped.publications += expired.publications;
        dropped.bytes += expired.bytes;
        dropped
    }

    /// Drops what outlived its time to live. Each entry's deadline is fixed when it is
    /// stored, so reading needs no options.
    fn expire(&mut self, now: Instant) -> Dropped {
        let mut dropped = Dropped::default();
        while self
            .history
            .front()
            .is_some_and(|stored| stored.expires.is_some_and(|at| at <= now))
        {
            if let Some(stored) = self.history.pop_front() {
                dropped.add(&stored);
            }
        }
        dropped
    }
}

impl Engine for MemoryEngine {
    fn start<'a>(&'a self, _node: &'a str, sink: Arc<dyn EngineSink>) -> EngineFuture<'a, ()> {
        self.broker
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.slot, sink);
        ready(Ok(()))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Payload,
        options: &'a Retention,
    ) -> EngineFuture<'a, Position> {
        ready(self.publish_now(channel, data, options))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: Option<usize>,
    ) -> EngineFuture<'a, HistoryPage> {
        ready(self.history_now(channel, since, limit))
    }

    fn watch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        ready(self.watch_now(channel, 1))
    }

    fn unwatch<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        ready(self.watch_now(channel, -1))
    }

    fn add_member<'a>(&'a self, channel: &'a str, member: &'a Member) -> EngineFuture<'a, ()> {
        ready(self.member_now(channel, Some(member), ""))
    }

    fn remove_member<'a>(&'a self, channel: &'a str, conn: &'a str) -> EngineFuture<'a, ()> {
        ready(self.member_now(channel, None, conn))
    }

    fn members<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<Member>> {
        let members = self.stream(channel, false).map(|stream| {
            stream.map_or_else(Vec::new, |s| lock(&s).members.values().cloned().collect())
        });
        ready(members)
    }

    fn history_stats(&self) -> Option<HistoryStats> {
        Some(HistoryStats {
            publications: self.broker.kept_publications.load(Ordering::Relaxed),
            bytes: self.broker.kept_bytes.load(Ordering::Relaxed),
        })
    }

    fn broadcast(&self, message: NodeMessage) -> EngineFuture<'_, ()> {
        let others: Vec<Arc<dyn EngineSink>> = self
            .broker
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(slot, _)| **slot != self.slot)
            .map(|(_, sink)| sink.clone())
            .collect();
        for sink in others {
            sink.message(message.clone());
        }
        ready(Ok(()))
    }
}

impl Drop for MemoryEngine {
    fn drop(&mut self) {
        self.broker
            .nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.slot);
    }
}
