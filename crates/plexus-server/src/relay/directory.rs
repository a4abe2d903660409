//! The providers of every relay node of a cluster, shared through the engine: each node keeps
//! its own providers as members of the presence of one reserved channel, and follows that
//! channel to learn the others'. A provider on another node is reached through the hub
//! (requests and notifications cross nodes as node messages); its node's presence lease is
//! what takes it offline when that node dies.

use std::sync::{Arc, Weak};
use std::time::Duration;

use plexus_engine::Member;
use plexus_protocol::{Codec, Payload, PresenceEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Relay, RelayInner};
use crate::hub::{Followed, Hub};

/// The reserved channel whose presence is the directory (`$` names are not clients').
pub(super) const DIRECTORY: &str = "$relay:providers";
/// How many directory changes may wait to be written; more make `$provide` refuse.
pub(super) const BACKLOG: usize = 4096;
/// How long to wait before listing the directory again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// What a member of the directory says about its provider.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) node: String,
    pub(super) services: Vec<String>,
}

/// A change this node makes to the directory.
pub(super) enum Change {
    /// The provider on connection `conn` is node `node` with these services.
    Provide {
        conn: String,
        node: Arc<str>,
        services: Vec<Arc<str>>,
    },
    /// The provider on connection `conn` is gone.
    Withdraw { conn: String },
}

/// Writes this node's changes to the directory, in order.
pub(super) async fn write(hub: Hub, mut changes: mpsc::Receiver<Change>) {
    while let Some(change) = changes.recv().await {
        let written = match change {
            Change::Provide {
                conn,
                node,
                services,
            } => {
                let entry = Entry {
                    node: node.to_string(),
                    services: services.iter().map(|s| s.to_string()).collect(),
                };
                let member = Member {
                    user: None,
                    conn,
                    info: Payload::encode(Codec::Json, &entry).ok(),
                };
                hub.add_member_to(DIRECTORY, &member).await
            }
            Change::Withdraw { conn } => hub.remove_member_from(DIRECTORY, &conn).await,
        };
        if let Err(e) = written {
            // The engine is away: other nodes see this node's providers lapse with its
            // presence lease, and come back when they are renewed.
            tracing::warn!(error = %e, "cannot update the relay directory");
        }
    }
}

/// Follows the other nodes' providers into `relay`, until the relay is gone.
pub(super) async fn follow(relay: Weak<RelayInner>, hub: Hub) {
    let relay = move || relay.upgrade().map(|inner| Relay { inner });
    let mut events = loop {
        match hub.follow(DIRECTORY).await {
            Ok(events) => break events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the relay directory; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let mut resync = true;
    loop {
        if resync {
            match hub.members_of(DIRECTORY).await {
                Ok(members) => {
                    let Some(relay) = relay() else { return };
                    relay.remote_resync(&members);
                    resync = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the relay directory; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let event = events.recv().await;
        let Some(relay) = relay() else { return };
        match event {
            Some(Followed::Presence(PresenceEvent::Join, member)) => relay.remote_joined(&member),
            Some(Followed::Presence(PresenceEvent::Leave, member)) => {
                relay.remote_left(&member.conn)
            }
            Some(Followed::Resync) => resync = true,
            None => return,
        }
    }
}

/// The provider a directory member describes: node and sorted services.
pub(super) fn entry_of(member: &Member) -> Option<(Arc<str>, Vec<Arc<str>>)> {
    let entry: Entry = member.info.as_ref()?.decode().ok()?;
    let mut services: Vec<Arc<str>> = entry.services.iter().map(|s| s.as_str().into()).collect();
    services.sort_unstable();
    services.dedup();
    Some((entry.node.into(), services))
}
