//! The hub: this node's registry of connections, channels and their subscribers.
//!
//! Each channel's state (position, history, subscribers, members) sits behind one mutex.
//! A publication takes its offset, enters the history and is handed to every subscriber's
//! outbound queue under that lock, so that a `join` (which also runs under it) sees every
//! publication either in the history it recovers from or as a live `msg`, never both and
//! never neither. The `msg` frame is encoded once per codec and the same bytes are shared by
//! every subscriber's queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use plexus_protocol::{
    CloseCode, Codec, ErrorBody, ErrorCode, Frame, Payload, Position, PresenceEvent,
};
use serde::{Deserialize, Serialize};

use super::filter::Filter;
use super::options::{ChannelAction, ChannelOptions, Namespaces};
use crate::conn::ConnectionHandle;

/// Most channels this node keeps at once; more get `RATE_LIMITED`.
const DEFAULT_MAX_CHANNELS: usize = 100_000;

/// A member of a channel, as `$presence` and `pjoin`/`pleave` show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The user id, `None` for anonymous connections.
    pub user: Option<String>,
    /// The connection id.
    pub conn: String,
    /// Application data attached to the member.
    pub info: Option<Payload>,
}

/// Publications from a channel's history.
#[derive(Clone, Debug, Serialize)]
pub struct History {
    /// The channel's epoch.
    pub epoch: String,
    /// The channel's current offset.
    pub offset: u64,
    /// The publications, oldest first.
    pub pubs: Vec<HistoryEntry>,
}

/// One publication of a [`History`].
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    /// Its offset.
    pub o: u64,
    /// Its data.
    pub d: Payload,
}

/// What a `join` established.
pub(crate) struct Joined {
    pub(crate) position: Position,
    pub(crate) recovered: bool,
    /// Missed publications to deliver right after the `res`, in order.
    pub(crate) missed: Vec<(u64, Payload)>,
}

struct Stored {
    offset: u64,
    at: Instant,
    data: Payload,
}

struct Subscriber {
    conn: ConnectionHandle,
    filter: Option<Filter>,
}

struct ChannelState {
    epoch: String,
    offset: u64,
    history: VecDeque<Stored>,
    subscribers: HashMap<String, Subscriber>,
    members: HashMap<String, Member>,
}

struct Channel {
    name: Arc<str>,
    options: Arc<ChannelOptions>,
    state: Mutex<ChannelState>,
}

struct HubInner {
    namespaces: Namespaces,
    channels: Mutex<HashMap<Arc<str>, Arc<Channel>>>,
    connections: Mutex<HashMap<String, ConnectionHandle>>,
    max_channels: usize,
}

/// The node's hub: publish to channels, look at presence and history, reach connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

impl ChannelState {
    fn trim(&mut self, options: &ChannelOptions, now: Instant) {
        while self.history.len() > options.history_size {
            self.history.pop_front();
        }
        if let Some(ttl) = options.history_ttl {
            while self
                .history
                .front()
                .is_some_and(|stored| now.duration_since(stored.at) > ttl)
            {
                self.history.pop_front();
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }

    /// Whether nothing would be lost by forgetting the channel.
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.members.is_empty() && self.history.is_empty()
    }
}

impl Hub {
    /// A hub serving the channels that `namespaces` describes.
    pub fn new(namespaces: Namespaces) -> Self {
        Self {
            inner: Arc::new(HubInner {
                namespaces,
                channels: Mutex::new(HashMap::new()),
                connections: Mutex::new(HashMap::new()),
                max_channels: DEFAULT_MAX_CHANNELS,
            }),
        }
    }

    /// Whether any namespace is configured (otherwise channel frames get `NOT_FOUND`).
    pub fn has_channels(&self) -> bool {
        !self.inner.namespaces.is_empty()
    }

    fn channel(&self, name: &str, create: bool) -> Result<Option<Arc<Channel>>, ErrorBody> {
        let options = self.inner.namespaces.resolve(name).ok_or_else(|| {
            error(
                ErrorCode::NOT_FOUND,
                format!("no channel namespace matches `{}`", shown(name)),
            )
        })?;
        let mut channels = lock(&self.inner.channels);
        if let Some(channel) = channels.get(name) {
            return Ok(Some(channel.clone()));
        }
        if !create {
            return Ok(None);
        }
        if channels.len() >= self.inner.max_channels {
            return Err(error(
                ErrorCode::RATE_LIMITED,
                "too many channels on this node",
            ));
        }
        let name: Arc<str> = name.into();
        let channel = Arc::new(Channel {
            name: name.clone(),
            options,
            state: Mutex::new(ChannelState {
                epoch: new_epoch(),
                offset: 0,
                history: VecDeque::new(),
                subscribers: HashMap::new(),
                members: HashMap::new(),
            }),
        });
        channels.insert(name, channel.clone());
        Ok(Some(channel))
    }

    /// Forgets a channel that holds nothing any more (a later one starts a new epoch).
    fn release(&self, channel: &Arc<Channel>) {
        let mut channels = lock(&self.inner.channels);
        let state = lock(&channel.state);
        if state.is_empty()
            && channels
                .get(&channel.name)
                .is_some_and(|c| Arc::ptr_eq(c, channel))
        {
            channels.remove(&channel.name);
        }
    }

    // ---- the Rust API ------------------------------------------------------------------

    /// Publishes `data` to `channel` (whatever its `client_publish` setting); returns the
    /// publication's position.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Position, ErrorBody> {
        let payload = Payload::encode(Codec::Json, data)
            .map_err(|e| error(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        self.publish_raw(channel, payload)
    }

    /// Publishes an encoded value.
    pub fn publish_raw(&self, channel: &str, data: Payload) -> Result<Position, ErrorBody> {
        let channel = self.channel(channel, true)?.expect("created");
        let position = {
            let mut state = lock(&channel.state);
            state.offset += 1;
            let offset = state.offset;
            let now = Instant::now();
            if channel.options.history_size > 0 {
                state.history.push_back(Stored {
                    offset,
                    at: now,
                    data: data.clone(),
                });
                state.trim(&channel.options, now);
            }
            fan_out(&state, &channel.name, offset, &data);
            state.position()
        };
        self.release(&channel);
        Ok(position)
    }

    /// The members of `channel`.
    pub fn presence(&self, channel: &str) -> Result<Vec<Member>, ErrorBody> {
        let Some(channel) = self.channel(channel, false)? else {
            return Ok(Vec::new());
        };
        let state = lock(&channel.state);
        Ok(state.members.values().cloned().collect())
    }

    /// The publications of `channel` after `since` (all kept, without it), at most `limit`.
    pub fn history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<History, ErrorBody> {
        let Some(channel) = self.channel(channel, false)? else {
            return Ok(History {
                epoch: String::new(),
                offset: 0,
                pubs: Vec::new(),
            });
        };
        let mut state = lock(&channel.state);
        state.trim(&channel.options, Instant::now());
        let after = since
            .filter(|since| since.epoch == state.epoch)
            .map_or(0, |since| since.offset);
        let pubs = state
            .history
            .iter()
            .filter(|stored| stored.offset > after)
            .take(limit.unwrap_or(usize::MAX))
            .map(|stored| HistoryEntry {
                o: stored.offset,
                d: stored.data.clone(),
            })
            .collect();
        Ok(History {
            epoch: state.epoch.clone(),
            offset: state.offset,
            pubs,
        })
    }

    /// Every channel this node holds, with its subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let channels: Vec<Arc<Channel>> = lock(&self.inner.channels).values().cloned().collect();
        channels
            .iter()
            .map(|c| (c.name.to_string(), lock(&c.state).subscribers.len()))
            .collect()
    }

    /// The connection with this id, if it is on this node.
    pub fn connection(&self, id: &str) -> Option<ConnectionHandle> {
        lock(&self.inner.connections).get(id).cloned()
    }

    /// Closes every connection of `user` with `code`; returns how many.
    pub fn disconnect_user(&self, user: &str, code: CloseCode, reason: &'static str) -> usize {
        let matching: Vec<ConnectionHandle> = lock(&self.inner.connections)
            .values()
            .filter(|c| c.principal().user.as_deref() == Some(user))
            .cloned()
            .collect();
        for conn in &matching {
            conn.close(code, reason);
        }
        matching.len()
    }

    // ---- what connections do -------------------------------------------------------------

    /// Wakes every connection's task, to look at the server's flags (shutdown).
    pub(crate) fn kick_all(&self) {
        let connections: Vec<ConnectionHandle> =
            lock(&self.inner.connections).values().cloned().collect();
        for conn in connections {
            conn.kick();
        }
    }

    pub(crate) fn register(&self, conn: &ConnectionHandle) {
        lock(&self.inner.connections).insert(conn.id().to_owned(), conn.clone());
    }

    /// Forgets a connection that ended, and its subscriptions.
    pub(crate) fn unregister(
        &self,
        conn: &ConnectionHandle,
        joined: impl IntoIterator<Item = String>,
    ) {
        for channel in joined {
            let _ = self.leave(conn, &channel);
        }
        lock(&self.inner.connections).remove(conn.id());
    }

    pub(crate) fn join(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        since: Option<&Position>,
        filter: Option<&Payload>,
    ) -> Result<Joined, ErrorBody> {
        let filter = match filter {
            Some(filter) => {
                Filter::parse(filter).map_err(|e| error(ErrorCode::VALIDATION_ERROR, e))?
            }
            None => None,
        };
        let channel = self.channel(name, true)?.expect("created");
        if !channel.options.allows(conn, name, ChannelAction::Join) {
            self.release(&channel);
            return Err(error(
                ErrorCode::FORBIDDEN,
                format!("not allowed to join `{}`", shown(name)),
            ));
        }
        let joined = {
            let mut state = lock(&channel.state);
            let rejoin = state.subscribers.contains_key(conn.id());
            if !rejoin && state.subscribers.len() >= channel.options.max_subscribers {
                drop(state);
                self.release(&channel);
                return Err(error(
                    ErrorCode::RATE_LIMITED,
                    format!("`{}` has too many subscribers", shown(name)),
                ));
            }
            state.trim(&channel.options, Instant::now());
            let (recovered, missed) = recover(&state, &channel.options, since, filter.as_ref());
            state.subscribers.insert(
                conn.id().to_owned(),
                Subscriber {
                    conn: conn.clone(),
                    filter,
                },
            );
            if channel.options.presence && !rejoin {
                let member = Member {
                    user: conn.principal().user.clone(),
                    conn: conn.id().to_owned(),
                    info: None,
                };
                if channel.options.join_leave_events {
                    presence_event(&state, &channel.name, PresenceEvent::Join, &member);
                }
                state.members.insert(conn.id().to_owned(), member);
            }
            Joined {
                position: state.position(),
                recovered,
                missed,
            }
        };
        Ok(joined)
    }

    pub(crate) fn leave(&self, conn: &ConnectionHandle, name: &str) -> Result<(), ErrorBody> {
        let Some(channel) = self.channel(name, false)? else {
            return Ok(());
        };
        {
            let mut state = lock(&channel.state);
            state.subscribers.remove(conn.id());
            if let Some(member) = state.members.remove(conn.id())
                && channel.options.join_leave_events
            {
                presence_event(&state, &channel.name, PresenceEvent::Leave, &member);
            }
        }
        self.release(&channel);
        Ok(())
    }

    /// A publication from a client: allowed only where the namespace says so.
    pub(crate) fn client_publish(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        data: Payload,
    ) -> Result<Position, ErrorBody> {
        let options = self.inner.namespaces.resolve(name).ok_or_else(|| {
            error(
                ErrorCode::NOT_FOUND,
                format!("no channel namespace matches `{}`", shown(name)),
            )
        })?;
        if !options.client_publish || !options.allows(conn, name, ChannelAction::Publish) {
            return Err(error(
                ErrorCode::FORBIDDEN,
                format!("clients may not publish to `{}`", shown(name)),
            ));
        }
        self.publish_raw(name, data)
    }

    /// Answers the built-in requests `$presence` and `$history`.
    pub(crate) fn builtin(
        &self,
        conn: &ConnectionHandle,
        method: &str,
        params: &Payload,
    ) -> Result<Payload, ErrorBody> {
        #[derive(Deserialize)]
        struct ChannelParams {
            ch: String,
            since: Option<PositionParams>,
            limit: Option<usize>,
        }
        #[derive(Deserialize)]
        struct PositionParams {
            epoch: String,
            offset: u64,
        }
        let p: ChannelParams = params
            .decode()
            .map_err(|e| crate::error::validation_error(&e).into_body())?;
        let options = self.inner.namespaces.resolve(&p.ch).ok_or_else(|| {
            error(
                ErrorCode::NOT_FOUND,
                format!("no channel namespace matches `{}`", shown(&p.ch)),
            )
        })?;
        if !options.allows(conn, &p.ch, ChannelAction::Join) {
            return Err(error(
                ErrorCode::FORBIDDEN,
                "not allowed to look at this channel",
            ));
        }
        let encode = |value: &dyn erased::Value| value.encode(conn.codec());
        match method {
            "$presence" => {
                if !options.presence {
                    return Err(error(
                        ErrorCode::NOT_FOUND,
                        "presence is off for this channel",
                    ));
                }
                encode(&self.presence(&p.ch)?)
            }
            "$history" => {
                let since = p.since.map(|s| Position {
                    epoch: s.epoch,
                    offset: s.offset,
                });
                encode(&self.history(&p.ch, since.as_ref(), p.limit)?)
            }
            _ => Err(error(
                ErrorCode::NOT_FOUND,
                format!("unknown built-in method `{}`", shown(method)),
            )),
        }
    }
}

mod erased {
    use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload};
    use serde::Serialize;

    /// A serializable value behind `dyn`.
    pub(super) trait Value {
        fn encode(&self, codec: Codec) -> Result<Payload, ErrorBody>;
    }

    impl<T: Serialize> Value for T {
        fn encode(&self, codec: Codec) -> Result<Payload, ErrorBody> {
            Payload::encode(codec, self)
                .map_err(|e| ErrorBody::new(ErrorCode::INTERNAL, e.to_string()))
        }
    }
}

/// What a `join` with `since` can recover: every publication after `since`, when the epoch
/// is the same and the history still holds them all.
fn recover(
    state: &ChannelState,
    options: &ChannelOptions,
    since: Option<&Position>,
    filter: Option<&Filter>,
) -> (bool, Vec<(u64, Payload)>) {
    let Some(since) = since else {
        return (false, Vec::new());
    };
    if !options.recovery || since.epoch != state.epoch || since.offset > state.offset {
        return (false, Vec::new());
    }
    if since.offset == state.offset {
        return (true, Vec::new());
    }
    let complete = state
        .history
        .front()
        .is_some_and(|first| first.offset <= since.offset + 1);
    if !complete {
        return (false, Vec::new());
    }
    let missed = state
        .history
        .iter()
        .filter(|stored| stored.offset > since.offset)
        .filter(|stored| {
            filter.is_none_or(|f| f.matches(stored.data.to_json_value().ok().as_ref()))
        })
        .map(|stored| (stored.offset, stored.data.clone()))
        .collect();
    (true, missed)
}

/// Hands a publication to every subscriber whose filter matches.
fn fan_out(state: &ChannelState, channel: &str, offset: u64, data: &Payload) {
    if state.subscribers.is_empty() {
        return;
    }
    let frame = Frame::Msg {
        channel: channel.to_owned(),
        offset,
        data: data.clone(),
    };
    // Parsed once, and only if some subscriber has a filter.
    let mut parsed: Option<Option<serde_json::Value>> = None;
    send_to_subscribers(state, &frame, |subscriber| match &subscriber.filter {
        Some(filter) => {
            let value = parsed.get_or_insert_with(|| data.to_json_value().ok());
            filter.matches(value.as_ref())
        }
        None => true,
    });
}

fn presence_event(state: &ChannelState, channel: &str, event: PresenceEvent, member: &Member) {
    let Ok(data) = Payload::encode(Codec::Json, member) else {
        return;
    };
    let frame = Frame::Presence {
        event,
        channel: channel.to_owned(),
        data,
    };
    send_to_subscribers(state, &frame, |subscriber| {
        subscriber.conn.id() != member.conn
    });
}

/// Pushes `frame` to every subscriber `include` accepts, encoded at most once per codec: the
/// same `Bytes` go into every queue. A full queue closes that subscriber (4008); the others
/// are not slowed.
fn send_to_subscribers(
    state: &ChannelState,
    frame: &Frame,
    mut include: impl FnMut(&Subscriber) -> bool,
) {
    let mut encoded: [Option<Bytes>; 2] = [None, None];
    for subscriber in state.subscribers.values() {
        // One being closed (a slow consumer, say) leaves the channel when its task ends.
        if subscriber.conn.is_closing() || !include(subscriber) {
            continue;
        }
        let codec = subscriber.conn.codec();
        let slot = &mut encoded[usize::from(codec.is_binary())];
        if slot.is_none() {
            match codec.encode(frame) {
                Ok(bytes) => *slot = Some(bytes),
                Err(e) => {
                    tracing::warn!(frame = frame.tag(), error = %e, "cannot be encoded for a subscriber");
                    continue;
                }
            }
        }
        if let Some(bytes) = slot {
            let _ = subscriber.conn.push(bytes.clone());
        }
    }
}

fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}
