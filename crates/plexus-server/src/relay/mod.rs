//! The relay: provider connections advertise services (`$provide`), and calls to
//! `<Service>.<method>` from any connection are routed to one of them — round-robin per
//! service, or to the node a call pins with its `node` field — as calls from the relay to
//! that provider's connection. Answers, items, credit and cancels flow back and forth under
//! each side's own ids. `$services` lists the live providers; `$watch` streams their
//! comings and goings.
//!
//! A session hands the relay what its router does not serve (`route.rs`); the providers
//! are kept in `providers.rs`; the built-ins are in `builtins.rs`. Relay nodes of one
//! cluster share their providers through the engine (`directory.rs`): a call to a provider
//! connected to another relay node goes there through the hub.

mod builtins;
mod directory;
mod providers;
mod route;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use plexus_engine::Member;
use tokio::sync::{broadcast, mpsc};

pub use providers::{ProviderEvent, ProviderInfo};
pub(crate) use route::Forward;

use crate::conn::ConnectionHandle;
use crate::hub::Hub;
use directory::Change;
use providers::Providers;

/// How a relay behaves. Every field has a default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Providers (node ids) the relay holds at once; more `$provide`s get `RATE_LIMITED`.
    /// Default 10,000.
    pub max_providers: usize,
    /// Services one `$provide` may name. Default 256.
    pub max_services: usize,
    /// How long a relayed request may wait for its provider's answer before the caller gets
    /// `TIMEOUT` (the caller's own deadline usually comes first, and its `cancel` is passed
    /// on). Default 10 minutes.
    pub call_timeout: Duration,
    /// With authentication on, the permission that lets a connection provide any service;
    /// `<permission>:<Service>` lets it provide that service only. Default `relay:provide`.
    pub provide_permission: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_providers: 10_000,
            max_services: 256,
            call_timeout: Duration::from_secs(600),
            provide_permission: "relay:provide".to_owned(),
        }
    }
}

impl RelayConfig {
    /// Sets [`RelayConfig::max_providers`].
    pub fn max_providers(mut self, max_providers: usize) -> Self {
        self.max_providers = max_providers;
        self
    }

    /// Sets [`RelayConfig::max_services`].
    pub fn max_services(mut self, max_services: usize) -> Self {
        self.max_services = max_services;
        self
    }

    /// Sets [`RelayConfig::call_timeout`].
    pub fn call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// Sets [`RelayConfig::provide_permission`].
    pub fn provide_permission(mut self, provide_permission: impl Into<String>) -> Self {
        self.provide_permission = provide_permission.into();
        self
    }
}

/// How many provider events a slow `$watch` may fall behind before its stream ends.
const WATCH_BACKLOG: usize = 1024;

struct RelayInner {
    config: RelayConfig,
    providers: Mutex<Providers>,
    events: broadcast::Sender<ProviderEvent>,
    /// The node's hub, for providers on other relay nodes; set when the server is built.
    hub: OnceLock<Hub>,
    /// This node's changes to the cluster's directory of providers.
    directory: OnceLock<mpsc::Sender<Change>>,
}

/// A node's relay: its providers and the routing of calls to them. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<RelayInner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub(crate) fn new(config: RelayConfig) -> Self {
        Self {
            inner: Arc::new(RelayInner {
                config,
                providers: Mutex::new(Providers::default()),
                events: broadcast::Sender::new(WATCH_BACKLOG),
                hub: OnceLock::new(),
                directory: OnceLock::new(),
            }),
        }
    }

    /// Joins the cluster's directory of providers through `hub`'s engine: this node's
    /// providers are written to it, the other nodes' are followed. Needs a tokio runtime.
    pub(crate) fn attach(&self, hub: &Hub) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("the relay needs a tokio runtime to share its providers");
            return;
        };
        let (changes, receiver) = mpsc::channel(directory::BACKLOG);
        if self.inner.directory.set(changes).is_err() || self.inner.hub.set(hub.clone()).is_err() {
            return;
        }
        runtime.spawn(directory::write(hub.clone(), receiver));
        runtime.spawn(directory::follow(Arc::downgrade(&self.inner), hub.clone()));
    }

    /// Queues a change to the directory; false when too many wait (the caller refuses).
    fn publish_change(&self, change: Change) -> bool {
        match self.inner.directory.get() {
            Some(changes) => changes.try_send(change).is_ok(),
            None => true,
        }
    }

    /// A provider on another node joined the directory.
    fn remote_joined(&self, member: &Member) {
        let Some((node, services)) = directory::entry_of(member) else {
            tracing::warn!(conn = %member.conn, "an unreadable relay directory entry");
            return;
        };
        let mut providers = self.providers();
        let events = providers.remote_joined(&member.conn, node, services, &self.inner.config);
        self.announce(events);
    }

    /// A provider on another node left the directory.
    fn remote_left(&self, conn: &str) {
        let mut providers = self.providers();
        let events = providers.remote_left(conn);
        self.announce(events);
    }

    /// The directory as listed now: whoever is not in it any more left.
    fn remote_resync(&self, members: &[Member]) {
        let mut providers = self.providers();
        let listed: std::collections::HashSet<&str> =
            members.iter().map(|m| m.conn.as_str()).collect();
        let mut events = Vec::new();
        for conn in providers.remote_conns() {
            if !listed.contains(conn.as_str()) {
                events.extend(providers.remote_left(&conn));
            }
        }
        for member in members {
            if let Some((node, services)) = directory::entry_of(member) {
                events.extend(providers.remote_joined(
                    &member.conn,
                    node,
                    services,
                    &self.inner.config,
                ));
            }
        }
        self.announce(events);
    }

    fn providers(&self) -> MutexGuard<'_, Providers> {
        self.inner
            .providers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn announce(&self, events: Vec<ProviderEvent>) {
        for event in events {
            // Nobody watching is fine.
            let _ = self.inner.events.send(event);
        }
    }

    /// The live providers, sorted by node id.
    pub fn services(&self) -> Vec<ProviderInfo> {
        self.providers().list()
    }

    /// A connection ended: if it was a provider, its node goes offline for everyone.
    pub(crate) fn connection_ended(&self, conn: &ConnectionHandle) {
        let ended = self.providers().connection_ended(conn.id());
        if let Some(node) = ended {
            tracing::debug!(node = %node, "provider offline");
            self.announce(vec![ProviderEvent::Offline(node)]);
            if !self.publish_change(Change::Withdraw {
                conn: conn.id().to_owned(),
            }) {
                tracing::warn!("the relay directory is behind: a provider lapses with its lease");
            }
        }
    }
}
