//! Channel options by namespace.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::ConnectionHandle;

/// What a connection wants to do with a channel, as given to an authorization hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelAction {
    /// Join (subscribe), including `$presence` and `$history`.
    Join,
    /// Publish from the client.
    Publish,
}

type Authorize = Arc<dyn Fn(&ConnectionHandle, &str, ChannelAction) -> bool + Send + Sync>;

/// How the channels of one namespace behave.
#[derive(Clone)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Publications kept for recovery and `$history` (0: none). Default 0.
    pub history_size: usize,
    /// How long a publication stays in the history. Default: until pushed out by size.
    pub history_ttl: Option<Duration>,
    /// Whether a `join` with `since` may recover missed publications. Default true.
    pub recovery: bool,
    /// Whether the channel keeps a member list (`$presence`). Default false.
    pub presence: bool,
    /// Whether subscribers get `pjoin`/`pleave` events (needs `presence`). Default false.
    pub join_leave_events: bool,
    /// Whether clients may publish (`pub`). Default false: only the server publishes.
    pub client_publish: bool,
    /// Most subscribers a channel may have; more joins get `RATE_LIMITED`. Default 100,000.
    pub max_subscribers: usize,
    authorize: Option<Authorize>,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            history_size: 0,
            history_ttl: None,
            recovery: true,
            presence: false,
            join_leave_events: false,
            client_publish: false,
            max_subscribers: 100_000,
            authorize: None,
        }
    }
}

impl fmt::Debug for ChannelOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelOptions")
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("recovery", &self.recovery)
            .field("presence", &self.presence)
            .field("join_leave_events", &self.join_leave_events)
            .field("client_publish", &self.client_publish)
            .field("max_subscribers", &self.max_subscribers)
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

impl ChannelOptions {
    /// Keeps the last `size` publications.
    pub fn history(mut self, size: usize, ttl: Option<Duration>) -> Self {
        self.history_size = size;
        self.history_ttl = ttl;
        self
    }

    /// Turns recovery on or off.
    pub fn recovery(mut self, on: bool) -> Self {
        self.recovery = on;
        self
    }

    /// Keeps a member list; with `events`, subscribers also get `pjoin`/`pleave`.
    pub fn presence(mut self, on: bool, events: bool) -> Self {
        self.presence = on;
        self.join_leave_events = on && events;
        self
    }

    /// Lets clients publish.
    pub fn client_publish(mut self, on: bool) -> Self {
        self.client_publish = on;
        self
    }

    /// Caps the subscribers of one channel.
    pub fn max_subscribers(mut self, max: usize) -> Self {
        self.max_subscribers = max;
        self
    }

    /// A hook deciding whether a connection may join or publish to a channel (in addition
    /// to `client_publish`); refused calls get `FORBIDDEN`.
    pub fn authorize(
        mut self,
        hook: impl Fn(&ConnectionHandle, &str, ChannelAction) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(hook));
        self
    }

    /// How the engine keeps this channel's publications.
    pub(crate) fn stream(&self) -> plexus_engine::StreamOptions {
        plexus_engine::StreamOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }

    pub(crate) fn allows(
        &self,
        conn: &ConnectionHandle,
        channel: &str,
        action: ChannelAction,
    ) -> bool {
        self.authorize
            .as_ref()
            .is_none_or(|hook| hook(conn, channel, action))
    }
}

/// Channel options by name: exact names and `prefix*` patterns. The most specific rule
/// wins (an exact name, then the longest prefix); a channel no rule matches does not exist.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    rules: Vec<(String, bool, Arc<ChannelOptions>)>,
}

impl Namespaces {
    /// No namespaces: every channel is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: `"room:*"` matches every name that starts with `room:`, `"lobby"` only
    /// `lobby`, and `"*"` every name.
    pub fn namespace(mut self, pattern: &str, options: ChannelOptions) -> Self {
        let (prefix, wildcard) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix.to_owned(), true),
            None => (pattern.to_owned(), false),
        };
        self.rules
            .retain(|(p, w, _)| !(p == &prefix && *w == wildcard));
        self.rules.push((prefix, wildcard, Arc::new(options)));
        // Exact names first, then longer prefixes: the first match is the most specific.
        self.rules
            .sort_by(|a, b| a.1.cmp(&b.1).then(b.0.len().cmp(&a.0.len())));
        self
    }

    /// Whether any rule exists.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The options for `channel`, if a rule matches it.
    pub fn resolve(&self, channel: &str) -> Option<Arc<ChannelOptions>> {
        self.rules
            .iter()
            .find(|(prefix, wildcard, _)| {
                if *wildcard {
                    channel.starts_with(prefix.as_str())
                } else {
                    channel == prefix
                }
            })
            .map(|(_, _, options)| options.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_rule_wins() {
        let ns = Namespaces::new()
            .namespace("*", ChannelOptions::default())
            .namespace("room:*", ChannelOptions::default().history(10, None))
            .namespace("room:vip:*", ChannelOptions::default().history(20, None))
            .namespace("room:lobby", ChannelOptions::default().history(30, None));
        let size = |ch: &str| ns.resolve(ch).map(|o| o.history_size);
        assert_eq!(size("room:1"), Some(10));
        assert_eq!(size("room:vip:1"), Some(20));
        assert_eq!(size("room:lobby"), Some(30));
        assert_eq!(size("other"), Some(0));
        assert!(
            Namespaces::new()
                .namespace("a:*", ChannelOptions::default())
                .resolve("b")
                .is_none()
        );
    }
}
