//! The providers a relay knows: which connection holds which node id, which services each
//! node provides, and a round-robin cursor per service.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::ErrorCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::RelayConfig;
use crate::conn::ConnectionHandle;
use crate::error::{RpcError, shown};
use crate::metrics::{ServiceMeter, relay_offline};

/// A provider as `$services` and `$watch` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    /// The provider's node id.
    pub node: Arc<str>,
    /// The services it provides, sorted.
    pub services: Vec<Arc<str>>,
}

/// A change in the set of providers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEvent {
    /// A node started providing these services (or now provides another set).
    Online(ProviderInfo),
    /// A node stopped providing anything.
    Offline(Arc<str>),
}

struct Provider {
    conn: ConnectionHandle,
    services: Vec<Arc<str>>,
}

/// A provider connected to another relay node of the cluster (from the directory).
struct RemoteProvider {
    conn: String,
    services: Vec<Arc<str>>,
    /// Cancelled when it leaves the directory: its calls in flight fail at once.
    gone: CancellationToken,
}

/// Where a call goes.
pub(super) enum Target {
    /// A provider connected here.
    Local(Arc<str>, ConnectionHandle),
    /// A provider connected to another node: its node id, connection id, and the token
    /// cancelled when it goes.
    Remote(Arc<str>, String, CancellationToken),
}

/// The nodes providing one service, in the order they came, and whose turn it is.
struct Service {
    nodes: Vec<Arc<str>>,
    next: usize,
    meter: ServiceMeter,
}

impl Service {
    fn new(name: &str) -> Self {
        Self {
            nodes: Vec::new(),
            next: 0,
            meter: ServiceMeter::new(name),
        }
    }
}

/// The relay's registry of providers: its own, and those of the other relay nodes.
#[derive(Default)]
pub(super) struct Providers {
    by_node: HashMap<Arc<str>, Provider>,
    /// The node id each provider connection holds.
    by_conn: HashMap<String, Arc<str>>,
    /// Providers on other relay nodes, by node id; bounded like the local ones.
    remote: HashMap<Arc<str>, RemoteProvider>,
    remote_by_conn: HashMap<String, Arc<str>>,
    /// Local and remote nodes by service.
    by_service: HashMap<Arc<str>, Service>,
}

/// What a `$provide` changed.
pub(super) struct Provided {
    pub(super) events: Vec<ProviderEvent>,
}

impl Drop for Providers {
    /// The gauges are the process's: what a relay going away still counted leaves them.
    fn drop(&mut self) {
        for entry in self.by_service.values() {
            for node in &entry.nodes {
                entry
                    .meter
                    .providers(self.by_node.contains_key(node))
                    .decrement(1.0);
            }
        }
    }
}

impl Providers {
    /// Registers `conn` as node `node` providing `services`, replacing what it provided
    /// before. A node id held by another live connection is refused with `CONFLICT`.
    pub(super) fn provide(
        &mut self,
        conn: &ConnectionHandle,
        node: &str,
        mut services: Vec<Arc<str>>,
        config: &RelayConfig,
    ) -> Result<Provided, RpcError> {
        services.sort_unstable();
        services.dedup();
        let held_here = self
            .by_node
            .get(node)
            .is_some_and(|holder| holder.conn.id() != conn.id() && !holder.conn.is_closed());
        if held_here || self.remote.contains_key(node) {
            return Err(RpcError::new(
                ErrorCode::CONFLICT,
                format!("node `{}` is provided by another connection", shown(node)),
            ));
        }
        let mut events = Vec::new();
        let previous = self.by_conn.get(conn.id()).cloned();
        match previous {
            Some(old) if &*old != node => {
                // A new node id takes the old one offline for everyone.
                self.remove_node(&old);
                events.push(ProviderEvent::Offline(old));
            }
            Some(old) => {
                if self
                    .by_node
                    .get(&old)
                    .is_some_and(|p| p.services == services)
                {
                    // The same again: nothing changed, nothing announced.
                    return Ok(Provided { events });
                }
                self.remove_node(&old);
            }
            None => {
                if self.by_node.len() >= config.max_providers && !self.by_node.contains_key(node) {
                    return Err(RpcError::new(
                        ErrorCode::RATE_LIMITED,
                        format!("the relay holds {} providers already", config.max_providers),
                    ));
                }
            }
        }
        // A node id left behind by a connection that ended is taken over.
        if self.by_node.contains_key(node) {
            self.remove_node(node);
        }
        let node: Arc<str> = node.into();
        self.add_service_nodes(&node, &services, true);
        self.by_conn.insert(conn.id().to_owned(), node.clone());
        self.by_node.insert(
            node.clone(),
            Provider {
                conn: conn.clone(),
                services: services.clone(),
            },
        );
        events.push(ProviderEvent::Online(ProviderInfo { node, services }));
        self.count();
        Ok(Provided { events })
    }

    /// Sets the providers' gauges (`plexus_relay_providers`, by where they are connected).
    fn count(&self) {
        metrics::gauge!("plexus_relay_providers", "connected" => "here")
            .set(self.by_node.len() as f64);
        metrics::gauge!("plexus_relay_providers", "connected" => "elsewhere")
            .set(self.remote.len() as f64);
    }

    /// Forgets the provider on connection `conn`, if it is one; its node id.
    pub(super) fn connection_ended(&mut self, conn: &str) -> Option<Arc<str>> {
        let node = self.by_conn.get(conn)?.clone();
        self.remove_node(&node);
        Some(node)
    }

    fn remove_node(&mut self, node: &str) {
        let Some(provider) = self.by_node.remove(node) else {
            return;
        };
        self.by_conn.remove(provider.conn.id());
        self.forget_service_nodes(node, &provider.services, true);
        self.count();
    }

    /// The provider of `service` whose turn it is, or the one `pinned` (if it provides
    /// the service); with `local_only`, only providers connected here count.
    pub(super) fn pick(&mut self, service: &str, pinned: Option<&str>) -> Option<Target> {
        let picked = self.pick_uncounted(service, pinned);
        match (&picked, self.by_service.get(service)) {
            (Some(_), Some(entry)) if pinned.is_some() => entry.meter.pinned.increment(1),
            (Some(_), Some(entry)) => entry.meter.routed.increment(1),
            // Cannot be: `target` only returns a provider listed under the service.
            (Some(_), None) => {}
            (None, _) => relay_offline(service),
        }
        picked
    }

    fn pick_uncounted(&mut self, service: &str, pinned: Option<&str>) -> Option<Target> {
        if let Some(node) = pinned {
            return self.target(node, service);
        }
        let entry = self.by_service.get(service)?;
        let (count, start) = (entry.nodes.len(), entry.next);
        // Skip providers whose connection ended but has not been forgotten yet.
        for step in 0..count {
            let node = self.by_service.get(service)?.nodes[(start + step) % count].clone();
            if let Some(target) = self.target(&node, service) {
                if let Some(entry) = self.by_service.get_mut(service) {
                    entry.next = start.wrapping_add(step + 1);
                }
                return Some(target);
            }
        }
        None
    }

    fn target(&self, node: &str, service: &str) -> Option<Target> {
        let provides = |services: &[Arc<str>]| services.iter().any(|s| &**s == service);
        if let Some((node, provider)) = self.by_node.get_key_value(node) {
            return (!provider.conn.is_closed() && provides(&provider.services))
                .then(|| Target::Local(node.clone(), provider.conn.clone()));
        }
        let (node, remote) = self.remote.get_key_value(node)?;
        provides(&remote.services)
            .then(|| Target::Remote(node.clone(), remote.conn.clone(), remote.gone.clone()))
    }

    /// A provider on another node joined the directory (or changed its services); the
    /// events to announce. A node id held here wins: the other one is ignored.
    pub(super) fn remote_joined(
        &mut self,
        conn: &str,
        node: Arc<str>,
        services: Vec<Arc<str>>,
        config: &RelayConfig,
    ) -> Vec<ProviderEvent> {
        if self.by_conn.contains_key(conn) {
            return Vec::new(); // one of ours, seen through the engine
        }
        if self.by_node.contains_key(&node) {
            tracing::warn!(node = %node, "a node id provided on two relay nodes; keeping ours");
            return Vec::new();
        }
        let mut events = self.remote_left(conn);
        if let Some(old) = self.remote.get(&node) {
            let old_conn = old.conn.clone();
            events.extend(self.remote_left(&old_conn));
        }
        if self.remote.len() >= config.max_providers {
            tracing::warn!(node = %node, "the relay holds too many remote providers; ignoring one");
            return events;
        }
        self.add_service_nodes(&node, &services, false);
        self.remote_by_conn.insert(conn.to_owned(), node.clone());
        self.remote.insert(
            node.clone(),
            RemoteProvider {
                conn: conn.to_owned(),
                services: services.clone(),
                gone: CancellationToken::new(),
            },
        );
        events.push(ProviderEvent::Online(ProviderInfo { node, services }));
        self.count();
        events
    }

    /// A provider on another node left the directory: its calls in flight fail.
    pub(super) fn remote_left(&mut self, conn: &str) -> Vec<ProviderEvent> {
        let Some(node) = self.remote_by_conn.remove(conn) else {
            return Vec::new();
        };
        if let Some(remote) = self.remote.remove(&node) {
            remote.gone.cancel();
            self.forget_service_nodes(&node, &remote.services, false);
        }
        self.count();
        vec![ProviderEvent::Offline(node)]
    }

    /// The connections of the remote providers now known.
    pub(super) fn remote_conns(&self) -> Vec<String> {
        self.remote_by_conn.keys().cloned().collect()
    }

    /// Lists `node` (connected here, or to another relay node) among the providers of
    /// `services`.
    fn add_service_nodes(&mut self, node: &Arc<str>, services: &[Arc<str>], here: bool) {
        for service in services {
            let entry = self
                .by_service
                .entry(service.clone())
                .or_insert_with(|| Service::new(service));
            entry.nodes.push(node.clone());
            entry.meter.providers(here).increment(1.0);
        }
    }

    fn forget_service_nodes(&mut self, node: &str, services: &[Arc<str>], here: bool) {
        for service in services {
            if let Some(entry) = self.by_service.get_mut(service) {
                let before = entry.nodes.len();
                entry.nodes.retain(|n| &**n != node);
                entry
                    .meter
                    .providers(here)
                    .decrement((before - entry.nodes.len()) as f64);
                if entry.nodes.is_empty() {
                    self.by_service.remove(service);
                }
            }
        }
    }

    /// Every live provider, here and on other nodes, sorted by node id.
    pub(super) fn list(&self) -> Vec<ProviderInfo> {
        let mut list: Vec<ProviderInfo> = self
            .by_node
            .iter()
            .filter(|(_, p)| !p.conn.is_closed())
            .map(|(node, p)| ProviderInfo {
                node: node.clone(),
                services: p.services.clone(),
            })
            .chain(self.remote.iter().map(|(node, r)| ProviderInfo {
                node: node.clone(),
                services: r.services.clone(),
            }))
            .collect();
        list.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        list
    }
}
