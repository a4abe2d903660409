//! The nodes of a cluster, as each sees them: every node is a member of the presence of one
//! reserved channel, which its engine renews while the node lives (and lets lapse within the
//! presence TTL when it dies), and leaves when it shuts down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_engine::Member;
use plexus_protocol::{Codec, Payload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Hub, HubError};

/// The reserved channel whose presence is the list of nodes (`$` names are not clients').
const NODES: &str = "$cluster:nodes";
/// How long to wait before announcing again after the engine refused.
const RETRY: Duration = Duration::from_secs(1);

/// A node of the cluster, as it announced itself when it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The node's id.
    pub node: String,
    /// Whether the node is a relay.
    #[serde(default)]
    pub relay: bool,
    /// When it started, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_at: u64,
}

impl NodeInfo {
    /// This node, starting now.
    pub(crate) fn starting(node: &str, relay: bool) -> Self {
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self {
            node: node.to_owned(),
            relay,
            started_at,
        }
    }
}

impl Hub {
    /// The live nodes of the cluster, this one included once it has announced itself
    /// (just after it is built, when built within a tokio runtime), sorted by id. A node
    /// that dies leaves the list within the engine's presence TTL (Redis, NATS; the memory
    /// engine has none: a peer dropped without `Server::shutdown` stays listed).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, HubError> {
        let members = self.members_of(NODES).await?;
        let mut nodes: Vec<NodeInfo> = members
            .iter()
            .filter_map(|member| member.info.as_ref()?.decode().ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Announces this node in the background, again each second while the engine refuses,
    /// until it is done or `stop` is cancelled (then nothing more is added). Needs a tokio
    /// runtime.
    pub(crate) fn announce_node(
        &self,
        info: NodeInfo,
        stop: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("without a tokio runtime, this node is not listed among the nodes");
            return None;
        };
        let member = Member {
            user: None,
            conn: info.node.clone(),
            info: Payload::encode(Codec::Json, &info).ok(),
        };
        let hub = self.clone();
        Some(runtime.spawn(async move {
            loop {
                let announced = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    announced = hub.add_member_to(NODES, &member) => announced,
                };
                match announced {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot announce this node; retrying"),
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }))
    }

    /// Takes this node off the list now, rather than when its presence lapses (which it
    /// does anyway, should the engine not answer within [`RETRY`]).
    pub(crate) async fn withdraw_node(&self) {
        let withdrawn = self.remove_member_from(NODES, &self.inner.cluster.node);
        match tokio::time::timeout(RETRY, withdrawn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot take this node off the list"),
            Err(_) => tracing::debug!("the engine did not take this node off the list in time"),
        }
    }
}
