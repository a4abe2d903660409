//! Where a channel lives in NATS.
//!
//! A channel name becomes one subject token (base64url, so `.`, `*`, `>` and spaces in
//! names are safe); a connection id in a presence subject likewise.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A name as one subject token.
pub(crate) fn token(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

/// The subjects and stream names of one engine's prefix.
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of kept publications: subjects `<p>.in.>`, republished to `<p>.ch.>`.
    pub(crate) fn publications_stream(&self) -> String {
        format!("{}-publications", self.prefix)
    }

    /// The stream of presence members and node leases: subjects `<p>.pr.>`, one message per
    /// subject.
    pub(crate) fn presence_stream(&self) -> String {
        format!("{}-presence", self.prefix)
    }

    pub(crate) fn stored_wildcard(&self) -> String {
        format!("{}.in.>", self.prefix)
    }

    pub(crate) fn live_wildcard(&self) -> String {
        format!("{}.ch.>", self.prefix)
    }

    pub(crate) fn presence_wildcard(&self) -> String {
        format!("{}.pr.>", self.prefix)
    }

    /// Where a channel's publications are published (and kept).
    pub(crate) fn stored(&self, channel: &str) -> String {
        format!("{}.in.{}", self.prefix, token(channel))
    }

    /// Where watching nodes get a channel's publications (republished by the stream once
    /// kept) and its presence changes.
    pub(crate) fn live(&self, channel: &str) -> String {
        format!("{}.ch.{}", self.prefix, token(channel))
    }

    /// A member of a channel's presence.
    pub(crate) fn member(&self, channel: &str, conn: &str) -> String {
        format!("{}.pr.{}.{}", self.prefix, token(channel), token(conn))
    }

    /// Every member of a channel's presence.
    pub(crate) fn members(&self, channel: &str) -> String {
        format!("{}.pr.{}.*", self.prefix, token(channel))
    }

    /// A node id's lease (`~` never starts a base64url channel token).
    pub(crate) fn node_lease(&self, node: &str) -> String {
        format!("{}.pr.~node.{}", self.prefix, token(node))
    }

    /// Messages between nodes.
    pub(crate) fn nodes(&self) -> String {
        format!("{}.nodes", self.prefix)
    }
}
