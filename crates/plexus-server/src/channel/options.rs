//! Channel options by namespace.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::ConnectionHandle;
use crate::principal::Principal;

/// What a connection wants to do with a channel: what a permission is required for
/// ([`ChannelOptions::require`]) and what an authorization hook is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelAction {
    /// Join (subscribe).
    Join,
    /// Publish from the client.
    Publish,
    /// List the members (`$presence`).
    Presence,
    /// Read the kept publications (`$history`).
    History,
}

impl ChannelAction {
    /// Every action.
    pub const ALL: [ChannelAction; 4] = [
        ChannelAction::Join,
        ChannelAction::Publish,
        ChannelAction::Presence,
        ChannelAction::History,
    ];

    fn index(self) -> usize {
        match self {
            ChannelAction::Join => 0,
            ChannelAction::Publish => 1,
            ChannelAction::Presence => 2,
            ChannelAction::History => 3,
        }
    }
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
    /// Whether subscribers get `pjoin`/`pleave` events (only with `presence`). Default false.
    pub join_leave_events: bool,
    /// Whether clients may publish (`pub`). Default false: only the server publishes.
    pub client_publish: bool,
    /// Most subscribers a channel may have; more joins get `RATE_LIMITED`. Default 100,000.
    pub max_subscribers: usize,
    authorize: Option<Authorize>,
    /// The permission each action requires, by [`ChannelAction::index`].
    required: [Option<Arc<str>>; 4],
    /// Declared open to everyone (for actions without a requirement).
    public: bool,
    /// The pattern this namespace was registered under, its metrics label.
    namespace: Arc<str>,
    meter: std::sync::OnceLock<Arc<crate::metrics::NamespaceMeter>>,
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
            required: Default::default(),
            public: false,
            namespace: "".into(),
            meter: std::sync::OnceLock::new(),
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
            .field("required", &self.required)
            .field("public", &self.public)
            .finish()
    }
}

impl ChannelOptions {
    /// This namespace's series (publications, deliveries), registered at first use.
    pub(crate) fn meter(&self) -> &Arc<crate::metrics::NamespaceMeter> {
        self.meter
            .get_or_init(|| Arc::new(crate::metrics::NamespaceMeter::new(&self.namespace)))
    }

    /// Sets [`ChannelOptions::history_size`].
    pub fn history_size(mut self, history_size: usize) -> Self {
        self.history_size = history_size;
        self
    }

    /// Sets [`ChannelOptions::history_ttl`].
    pub fn history_ttl(mut self, history_ttl: impl Into<Option<Duration>>) -> Self {
        self.history_ttl = history_ttl.into();
        self
    }

    /// Sets [`ChannelOptions::recovery`].
    pub fn recovery(mut self, on: bool) -> Self {
        self.recovery = on;
        self
    }

    /// Sets [`ChannelOptions::presence`].
    pub fn presence(mut self, presence: bool) -> Self {
        self.presence = presence;
        self
    }

    /// Sets [`ChannelOptions::join_leave_events`].
    pub fn join_leave_events(mut self, join_leave_events: bool) -> Self {
        self.join_leave_events = join_leave_events;
        self
    }

    /// Sets [`ChannelOptions::client_publish`].
    pub fn client_publish(mut self, on: bool) -> Self {
        self.client_publish = on;
        self
    }

    /// Sets [`ChannelOptions::max_subscribers`].
    pub fn max_subscribers(mut self, max: usize) -> Self {
        self.max_subscribers = max;
        self
    }

    /// Only connections whose [`Principal`] holds `permission` may do `action`; others get
    /// `FORBIDDEN`. Checked before the [`authorize`](Self::authorize) hook, which is not
    /// called for a connection without the permission. [`Presence`](ChannelAction::Presence)
    /// and [`History`](ChannelAction::History) need the [`Join`](ChannelAction::Join)
    /// permission unless they are given their own (reading the members or the past of a
    /// channel is reading the channel). [`Publish`](ChannelAction::Publish) also needs
    /// `client_publish`. Requiring again for the same action replaces the permission.
    /// Panics if `permission` is empty.
    ///
    /// ```
    /// use plexus_server::{ChannelAction, ChannelOptions, Namespaces};
    ///
    /// let namespaces = Namespaces::new()
    ///     .namespace(
    ///         "chat:*",
    ///         ChannelOptions::default()
    ///             .client_publish(true)
    ///             .require(ChannelAction::Join, "chat.read")
    ///             .require(ChannelAction::Publish, "chat.write"),
    ///     )
    ///     .namespace("news:*", ChannelOptions::default().public_access());
    /// assert!(namespaces.undeclared().is_empty());
    /// ```
    pub fn require(mut self, action: ChannelAction, permission: &str) -> Self {
        assert!(!permission.is_empty(), "permission names must be non-empty");
        self.required[action.index()] = Some(permission.into());
        self
    }

    /// Declares that the actions without a [`require`](Self::require)d permission are open
    /// to every connection, anonymous ones included (`client_publish` and the
    /// [`authorize`](Self::authorize) hook still apply). Without it, or a requirement, or a
    /// hook, the namespace is listed by [`Namespaces::undeclared`] and strict mode refuses
    /// to start.
    pub fn public_access(mut self) -> Self {
        self.public = true;
        self
    }

    /// Whether the options say who may use the channels: a required permission, a hook, or
    /// [`public_access`](Self::public_access).
    pub fn is_declared(&self) -> bool {
        self.public || self.authorize.is_some() || self.required.iter().any(Option::is_some)
    }

    /// The permission `action` requires, if any (for `Presence` and `History` without their
    /// own, `Join`'s).
    pub fn required_permission(&self, action: ChannelAction) -> Option<&str> {
        let own = &self.required[action.index()];
        let inherited = match action {
            ChannelAction::Presence | ChannelAction::History => {
                &self.required[ChannelAction::Join.index()]
            }
            _ => own,
        };
        own.as_ref().or(inherited.as_ref()).map(|p| &**p)
    }

    /// A hook deciding whether a connection may join, publish to, or look at (presence,
    /// history) a channel, in addition to `client_publish` and the required permissions;
    /// refused calls get `FORBIDDEN`.
    pub fn authorize(
        mut self,
        hook: impl Fn(&ConnectionHandle, &str, ChannelAction) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(hook));
        self
    }

    /// How the engine keeps this channel's publications.
    pub(crate) fn retention(&self) -> plexus_engine::Retention {
        plexus_engine::Retention {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }

    /// Whether `conn` may do `action` on `channel`: the required permission first, then the
    /// hook (`client_publish` is the caller's to check).
    pub(crate) fn allows(
        &self,
        conn: &ConnectionHandle,
        channel: &str,
        action: ChannelAction,
    ) -> bool {
        self.permits(&conn.principal(), action)
            && self
                .authorize
                .as_ref()
                .is_none_or(|hook| hook(conn, channel, action))
    }

    /// Whether `principal` holds the permission `action` requires (true if none is).
    pub(crate) fn permits(&self, principal: &Principal, action: ChannelAction) -> bool {
        self.required_permission(action)
            .is_none_or(|permission| principal.can(permission))
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
    pub fn namespace(mut self, pattern: &str, mut options: ChannelOptions) -> Self {
        options.namespace = pattern.into();
        options.meter = std::sync::OnceLock::new();
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

    /// The patterns (as given to [`namespace`](Self::namespace), sorted) whose options do
    /// not say who may use their channels: no [`require`](ChannelOptions::require)d
    /// permission, no [`authorize`](ChannelOptions::authorize) hook and no
    /// [`public_access`](ChannelOptions::public_access). Strict mode refuses to start while
    /// any is left.
    pub fn undeclared(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self
            .rules
            .iter()
            .filter(|(_, _, options)| !options.is_declared())
            .map(|(prefix, wildcard, _)| {
                if *wildcard {
                    format!("{prefix}*")
                } else {
                    prefix.clone()
                }
            })
            .collect();
        patterns.sort_unstable();
        patterns
    }

    /// The options for `channel`, if a rule matches it (never for a name starting with `$`).
    pub fn resolve(&self, channel: &str) -> Option<Arc<ChannelOptions>> {
        // `$` names are the server's own (the relay's directory of providers): no namespace,
        // not even `*`, opens them to clients or the HTTP API.
        if channel.starts_with('$') {
            return None;
        }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn user(permissions: &[&str]) -> Principal {
        Principal::user("u", permissions.iter().map(|p| p.to_string()))
    }

    #[test]
    fn required_permissions_are_checked_per_action() {
        let options = ChannelOptions::default()
            .require(ChannelAction::Join, "read")
            .require(ChannelAction::Publish, "write")
            .require(ChannelAction::History, "archive");
        let reader = user(&["read"]);
        let writer = user(&["write"]);
        let archivist = user(&["archive"]);
        let anonymous = Principal::anonymous();
        use ChannelAction::*;
        let allowed = |p: &Principal| ChannelAction::ALL.map(|a| options.permits(p, a));
        // [Join, Publish, Presence, History]; presence falls back to Join's permission.
        assert_eq!(allowed(&reader), [true, false, true, false]);
        assert_eq!(allowed(&writer), [false, true, false, false]);
        assert_eq!(allowed(&archivist), [false, false, false, true]);
        assert_eq!(allowed(&anonymous), [false; 4]);
        assert_eq!(options.required_permission(Presence), Some("read"));
        assert_eq!(options.required_permission(History), Some("archive"));
        // Nothing required: everyone.
        let open = ChannelOptions::default();
        assert_eq!(allowed_for(&open, &anonymous), [true; 4]);
        // Requiring again replaces.
        let replaced = ChannelOptions::default()
            .require(Join, "a")
            .require(Join, "b");
        assert!(replaced.permits(&user(&["b"]), Join));
        assert!(!replaced.permits(&user(&["a"]), Join));
    }

    fn allowed_for(options: &ChannelOptions, p: &Principal) -> [bool; 4] {
        ChannelAction::ALL.map(|a| options.permits(p, a))
    }

    #[test]
    fn the_permission_is_checked_before_the_hook() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let options = ChannelOptions::default()
            .require(ChannelAction::Join, "read")
            .authorize(move |_, channel, _| {
                seen.fetch_add(1, Ordering::SeqCst);
                channel != "room:closed"
            });
        let without = ConnectionHandle::for_test(Principal::anonymous());
        assert!(!options.allows(&without, "room:1", ChannelAction::Join));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "hook called without the permission"
        );
        let with = ConnectionHandle::for_test(user(&["read"]));
        assert!(options.allows(&with, "room:1", ChannelAction::Join));
        assert!(!options.allows(&with, "room:closed", ChannelAction::Join));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // No requirement for Publish: the hook alone decides.
        assert!(options.allows(&without, "room:1", ChannelAction::Publish));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    #[should_panic(expected = "permission names must be non-empty")]
    fn an_empty_permission_panics() {
        let _ = ChannelOptions::default().require(ChannelAction::Join, "");
    }

    #[test]
    fn undeclared_lists_namespaces_that_say_nothing() {
        let ns = Namespaces::new()
            .namespace("open:*", ChannelOptions::default())
            .namespace("lobby", ChannelOptions::default().history_size(10))
            .namespace("news:*", ChannelOptions::default().public_access())
            .namespace(
                "chat:*",
                ChannelOptions::default().require(ChannelAction::Publish, "write"),
            )
            .namespace(
                "hooked:*",
                ChannelOptions::default().authorize(|_, _, _| true),
            )
            .namespace("*", ChannelOptions::default());
        assert_eq!(ns.undeclared(), ["*", "lobby", "open:*"]);
        assert!(Namespaces::new().undeclared().is_empty());
        // public_access does not lift the requirements that are declared.
        let mixed = ChannelOptions::default()
            .public_access()
            .require(ChannelAction::Publish, "write");
        assert!(mixed.is_declared());
        assert_eq!(
            allowed_for(&mixed, &Principal::anonymous()),
            [true, false, true, true]
        );
    }

    #[test]
    fn the_most_specific_rule_wins() {
        let ns = Namespaces::new()
            .namespace("*", ChannelOptions::default())
            .namespace("room:*", ChannelOptions::default().history_size(10))
            .namespace("room:vip:*", ChannelOptions::default().history_size(20))
            .namespace("room:lobby", ChannelOptions::default().history_size(30));
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

    #[test]
    fn dollar_channels_belong_to_the_server() {
        let namespaces = Namespaces::new().namespace("*", ChannelOptions::default());
        assert!(namespaces.resolve("room:1").is_some());
        assert!(namespaces.resolve("$relay:providers").is_none());
    }
}
