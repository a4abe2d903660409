//! Channels that a part of the server follows itself, rather than connections: the relay
//! follows its directory of providers across nodes through the engine's presence.

use std::collections::HashMap;
use std::sync::Mutex;

use plexus_engine::Member;
use plexus_protocol::PresenceEvent;
use tokio::sync::mpsc;

use super::{Hub, HubError};

/// How many presence changes a follower may fall behind before it must list the members
/// again.
const BACKLOG: usize = 1024;

/// What a follower receives.
#[derive(Debug)]
pub(crate) enum Followed {
    /// A member joined or left.
    Presence(PresenceEvent, Member),
    /// Changes may have been missed (the engine's stream broke, or the follower fell behind
    /// and changes were dropped): list the members again.
    Resync,
}

/// The followers, by channel.
#[derive(Default)]
pub(super) struct Followers {
    by_channel: Mutex<HashMap<String, Follower>>,
}

struct Follower {
    events: mpsc::Sender<Followed>,
    /// Set when an event could not be queued: the next one queued is a `Resync`.
    dropped: bool,
}

impl Followers {
    /// Hands `event` to the follower of `channel`, if there is one. Never blocks.
    pub(super) fn offer(&self, channel: &str, event: impl FnOnce() -> Followed) {
        let mut followers = self.by_channel.lock().unwrap_or_else(|p| p.into_inner());
        let Some(follower) = followers.get_mut(channel) else {
            return;
        };
        if follower.dropped {
            if follower.events.try_send(Followed::Resync).is_err() {
                return;
            }
            follower.dropped = false;
        }
        if follower.events.try_send(event()).is_err() {
            follower.dropped = true;
        }
    }
}

impl Hub {
    /// Follows the presence of `channel` across nodes: once this returns, every later change
    /// comes on the receiver (or a `Resync`). List the members with
    /// [`Hub::members_of`] after it. One follower per channel.
    pub(crate) async fn follow(&self, channel: &str) -> Result<mpsc::Receiver<Followed>, HubError> {
        let (events, receiver) = mpsc::channel(BACKLOG);
        self.inner
            .followers
            .by_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                channel.to_owned(),
                Follower {
                    events,
                    dropped: false,
                },
            );
        self.inner.engine.watch(channel).await?;
        Ok(receiver)
    }

    /// The members of a followed channel, across nodes.
    pub(crate) async fn members_of(&self, channel: &str) -> Result<Vec<Member>, HubError> {
        Ok(self.inner.engine.members(channel).await?)
    }

    /// Adds (or replaces) a member of a followed channel.
    pub(crate) async fn add_member_to(
        &self,
        channel: &str,
        member: &Member,
    ) -> Result<(), HubError> {
        Ok(self.inner.engine.add_member(channel, member).await?)
    }

    /// Removes a member of a followed channel.
    pub(crate) async fn remove_member_from(
        &self,
        channel: &str,
        conn: &str,
    ) -> Result<(), HubError> {
        Ok(self.inner.engine.remove_member(channel, conn).await?)
    }
}
