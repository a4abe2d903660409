//! The providers a relay knows: which connection holds which node id, which services each
//! node provides, and a round-robin cursor per service.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::ErrorCode;
use serde::Serialize;

use super::RelayConfig;
use crate::conn::ConnectionHandle;
use crate::error::{RpcError, shown};

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

/// The nodes providing one service, in the order they came, and whose turn it is.
#[derive(Default)]
struct Service {
    nodes: Vec<Arc<str>>,
    next: usize,
}

/// The relay's registry of providers.
#[derive(Default)]
pub(super) struct Providers {
    by_node: HashMap<Arc<str>, Provider>,
    /// The node id each provider connection holds.
    by_conn: HashMap<String, Arc<str>>,
    by_service: HashMap<Arc<str>, Service>,
}

/// What a `$provide` changed.
pub(super) struct Provided {
    pub(super) events: Vec<ProviderEvent>,
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
        if let Some(holder) = self.by_node.get(node)
            && holder.conn.id() != conn.id()
            && !holder.conn.is_closed()
        {
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
        for service in &services {
            self.by_service
                .entry(service.clone())
                .or_default()
                .nodes
                .push(node.clone());
        }
        self.by_conn.insert(conn.id().to_owned(), node.clone());
        self.by_node.insert(
            node.clone(),
            Provider {
                conn: conn.clone(),
                services: services.clone(),
            },
        );
        events.push(ProviderEvent::Online(ProviderInfo { node, services }));
        Ok(Provided { events })
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
        for service in &provider.services {
            if let Some(entry) = self.by_service.get_mut(service) {
                entry.nodes.retain(|n| &**n != node);
                if entry.nodes.is_empty() {
                    self.by_service.remove(service);
                }
            }
        }
    }

    /// The provider of `service` whose turn it is, or the one `pinned` (if it provides
    /// the service): its node id and connection.
    pub(super) fn pick(
        &mut self,
        service: &str,
        pinned: Option<&str>,
    ) -> Option<(Arc<str>, ConnectionHandle)> {
        if let Some(node) = pinned {
            let (node, provider) = self.by_node.get_key_value(node)?;
            if provider.conn.is_closed() || !provider.services.iter().any(|s| &**s == service) {
                return None;
            }
            return Some((node.clone(), provider.conn.clone()));
        }
        let entry = self.by_service.get_mut(service)?;
        // Skip providers whose connection ended but has not been forgotten yet.
        for _ in 0..entry.nodes.len() {
            let index = entry.next % entry.nodes.len();
            entry.next = entry.next.wrapping_add(1);
            let node = &entry.nodes[index];
            if let Some(provider) = self.by_node.get(node)
                && !provider.conn.is_closed()
            {
                return Some((node.clone(), provider.conn.clone()));
            }
        }
        None
    }

    /// Every live provider, sorted by node id.
    pub(super) fn list(&self) -> Vec<ProviderInfo> {
        let mut list: Vec<ProviderInfo> = self
            .by_node
            .iter()
            .filter(|(_, p)| !p.conn.is_closed())
            .map(|(node, p)| ProviderInfo {
                node: node.clone(),
                services: p.services.clone(),
            })
            .collect();
        list.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        list
    }
}
