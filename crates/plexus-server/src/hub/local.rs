//! The channels this node has subscribers for, and each one's subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use plexus_engine::Publication;
use plexus_protocol::ErrorCode;

use super::HubError;
use super::filter::Filter;
use crate::channel::ChannelOptions;
use crate::conn::ConnectionHandle;

/// Most channels this node keeps subscribers for at once; more get `RATE_LIMITED`.
const DEFAULT_MAX_CHANNELS: usize = 100_000;

/// One subscriber of a channel on this node.
pub(super) struct Subscriber {
    pub(super) conn: ConnectionHandle,
    pub(super) filter: Option<Filter>,
    /// Live publications held back while the join reads the history; `None` once live.
    pub(super) joining: Option<Vec<Publication>>,
}

/// A channel's subscribers on this node, under the channel's lock.
#[derive(Default)]
pub(super) struct LocalState {
    pub(super) subscribers: HashMap<String, Subscriber>,
    /// How many subscribers are joining (their publications are buffered).
    pub(super) joining: usize,
    /// When the last frame was sent to the subscribers (see `fanout::DIRECT_QUIET`).
    pub(super) last_sent: Option<Instant>,
}

/// A channel this node has subscribers for.
pub(super) struct LocalChannel {
    pub(super) name: Arc<str>,
    pub(super) options: Arc<ChannelOptions>,
    /// Set once the engine delivers this channel's publications to the node.
    pub(super) watch: tokio::sync::OnceCell<()>,
    state: Mutex<LocalState>,
}

impl LocalChannel {
    pub(super) fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The subscribers' connections (a snapshot).
    pub(super) fn connections(&self) -> Vec<ConnectionHandle> {
        self.lock()
            .subscribers
            .values()
            .map(|s| s.conn.clone())
            .collect()
    }
}

/// The node's local channels, by name.
pub(super) struct LocalChannels {
    channels: RwLock<HashMap<Arc<str>, Arc<LocalChannel>>>,
    max: usize,
}

impl Default for LocalChannels {
    fn default() -> Self {
        Self {
            channels: RwLock::default(),
            max: DEFAULT_MAX_CHANNELS,
        }
    }
}

impl LocalChannels {
    pub(super) fn get(&self, name: &str) -> Option<Arc<LocalChannel>> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The local channel `name`, created (with `options`) if needed, within the limit.
    pub(super) fn get_or_create(
        &self,
        name: &str,
        options: &Arc<ChannelOptions>,
    ) -> Result<Arc<LocalChannel>, HubError> {
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(name) {
            return Ok(channel.clone());
        }
        if channels.len() >= self.max {
            return Err(HubError::new(
                ErrorCode::RATE_LIMITED,
                "too many channels on this node",
            ));
        }
        let name: Arc<str> = name.into();
        let channel = Arc::new(LocalChannel {
            name: name.clone(),
            options: options.clone(),
            watch: tokio::sync::OnceCell::new(),
            state: Mutex::new(LocalState::default()),
        });
        channels.insert(name, channel.clone());
        Ok(channel)
    }

    /// Forgets `channel` if it has no subscriber left (and is still the one kept under its
    /// name); whether the node should stop watching it.
    pub(super) fn forget_if_empty(&self, channel: &Arc<LocalChannel>) -> bool {
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let state = channel.lock();
        let forget = state.subscribers.is_empty()
            && channels
                .get(&channel.name)
                .is_some_and(|c| Arc::ptr_eq(c, channel));
        if forget {
            channels.remove(&channel.name);
        }
        forget && channel.watch.initialized()
    }

    /// Every local channel with its number of subscribers.
    pub(super) fn list(&self) -> Vec<(String, usize)> {
        let channels: Vec<Arc<LocalChannel>> = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        channels
            .iter()
            .map(|c| (c.name.to_string(), c.lock().subscribers.len()))
            .collect()
    }
}
