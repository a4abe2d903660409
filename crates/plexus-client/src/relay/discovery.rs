//! Finding services: `$services`, the `$watch` stream, waiting for a service.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::CallError;
use crate::stream::CallStream;

/// A live provider, as a relay lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Its node id (what [`CallOptions::node`](crate::CallOptions::node) pins to).
    pub node: String,
    /// The services it answers.
    pub services: Vec<String>,
}

impl Provider {
    /// Whether it answers `service`.
    pub fn provides(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

/// A change of a relay's providers, from [`Client::watch_services`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceEvent {
    /// The providers live when the watch started (always the first event).
    Snapshot(Vec<Provider>),
    /// A provider came online, or changed its services.
    Online(Provider),
    /// A provider went offline: disconnected, or took another node id.
    Offline {
        /// The node id that is gone.
        node: String,
    },
}

/// One `$watch` item on the wire: the first is the list, the others a change.
#[derive(Deserialize)]
#[serde(untagged)]
enum WatchItem {
    Snapshot(Vec<Provider>),
    Change(Change),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Online(Provider),
    Offline { node: String },
}

/// The providers of a relay as they change: a [`Stream`] of [`ServiceEvent`]s that also
/// keeps the current list ([`ServiceWatch::providers`]). From [`Client::watch_services`].
///
/// It ends with an `Err` when the connection drops (the relay forgets nothing, but this
/// client cannot know what changed meanwhile): watch again after the reconnect.
pub struct ServiceWatch {
    items: CallStream<WatchItem>,
    providers: BTreeMap<String, Vec<String>>,
}

impl ServiceWatch {
    /// The live providers, as of the events yielded so far.
    pub fn providers(&self) -> Vec<Provider> {
        self.providers
            .iter()
            .map(|(node, services)| Provider {
                node: node.clone(),
                services: services.clone(),
            })
            .collect()
    }

    /// The node ids of the live providers of `service`, as of the events yielded so far.
    pub fn nodes_of(&self, service: &str) -> Vec<String> {
        self.providers
            .iter()
            .filter(|(_, services)| services.iter().any(|s| s == service))
            .map(|(node, _)| node.clone())
            .collect()
    }

    fn apply(&mut self, item: WatchItem) -> ServiceEvent {
        match item {
            WatchItem::Snapshot(list) => {
                self.providers = list
                    .iter()
                    .map(|p| (p.node.clone(), p.services.clone()))
                    .collect();
                ServiceEvent::Snapshot(list)
            }
            WatchItem::Change(Change::Online(provider)) => {
                self.providers
                    .insert(provider.node.clone(), provider.services.clone());
                ServiceEvent::Online(provider)
            }
            WatchItem::Change(Change::Offline { node }) => {
                self.providers.remove(&node);
                ServiceEvent::Offline { node }
            }
        }
    }
}

impl Stream for ServiceWatch {
    type Item = Result<ServiceEvent, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.items.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(this.apply(item)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for ServiceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceWatch")
            .field("providers", &self.providers)
            .finish()
    }
}

impl Client {
    /// The relay's live providers (`$services`).
    pub async fn services(&self) -> Result<Vec<Provider>, CallError> {
        self.request("$services", &()).await
    }

    /// Watches the relay's providers (`$watch`): first a [`ServiceEvent::Snapshot`], then
    /// each change.
    pub async fn watch_services(&self) -> Result<ServiceWatch, CallError> {
        let items = self.stream::<WatchItem>("$watch", &()).await?;
        Ok(ServiceWatch {
            items,
            providers: BTreeMap::new(),
        })
    }

    /// Waits until some provider answers `service` and returns the node ids of those that
    /// do; fails with `TIMEOUT` past `timeout`.
    pub async fn wait_for_service(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, CallError> {
        let wait = async {
            let mut watch = self.watch_services().await?;
            while let Some(event) = watch.next().await {
                event?;
                let nodes = watch.nodes_of(service);
                if !nodes.is_empty() {
                    return Ok(nodes);
                }
            }
            Err(CallError::closed())
        };
        // Dropping the watch on timeout sends `cancel`.
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| Err(CallError::timeout()))
    }
}
