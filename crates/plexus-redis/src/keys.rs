//! Where a channel lives in Redis.
//!
//! Every key of one channel carries the channel name as a hash tag (`{…}`), so the scripts
//! that touch several of them stay within one slot should the keys ever be spread over a
//! Redis Cluster.

/// The keys and the pub/sub topic of one channel.
pub(crate) struct ChannelKeys {
    /// Hash: `e` the epoch, `o` the last offset.
    pub(crate) meta: String,
    /// Stream of kept publications, entry id `<offset>-0`, fields `c` (codec), `d` (data),
    /// `x` (expiry, Unix ms, 0 for none).
    pub(crate) history: String,
    /// Hash: connection id → member (JSON).
    pub(crate) members: String,
    /// Sorted set: connection id → when the member expires (Unix ms).
    pub(crate) member_expiry: String,
    /// The pub/sub topic that carries the channel's publications and presence changes, in
    /// the order the scripts made them.
    pub(crate) topic: String,
}

impl ChannelKeys {
    pub(crate) fn new(prefix: &str, channel: &str) -> Self {
        Self {
            meta: format!("{prefix}:{{{channel}}}:meta"),
            history: format!("{prefix}:{{{channel}}}:history"),
            members: format!("{prefix}:{{{channel}}}:members"),
            member_expiry: format!("{prefix}:{{{channel}}}:member-expiry"),
            topic: topic(prefix, channel),
        }
    }
}

/// The pub/sub topic of a channel.
pub(crate) fn topic(prefix: &str, channel: &str) -> String {
    format!("{prefix}:channel:{channel}")
}

/// The topic every node listens to for node messages.
pub(crate) fn nodes_topic(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

/// The key that holds a node id's lease.
pub(crate) fn node_lease(prefix: &str, node: &str) -> String {
    format!("{prefix}:node:{node}")
}
