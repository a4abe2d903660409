//! The node's registry of its connections, by id.

use std::collections::HashMap;
use std::sync::RwLock;

use plexus_protocol::CloseCode;

use crate::conn::{CloseReason, ConnectionHandle};

/// This node's connections, by id.
#[derive(Default)]
pub(super) struct Registry {
    connections: RwLock<HashMap<String, ConnectionHandle>>,
}

impl Registry {
    pub(super) fn insert(&self, conn: &ConnectionHandle) {
        self.write().insert(conn.id().to_owned(), conn.clone());
    }

    pub(super) fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// The connection with this id, if it is on this node.
    pub(super) fn get(&self, id: &str) -> Option<ConnectionHandle> {
        self.read().get(id).cloned()
    }

    /// Every connection (a snapshot: the lock is not held while the caller uses them).
    pub(super) fn all(&self) -> Vec<ConnectionHandle> {
        self.read().values().cloned().collect()
    }

    /// Closes every connection of `user` on this node; how many there were.
    pub(super) fn close_user(&self, user: &str, code: CloseCode, reason: &CloseReason) -> usize {
        let matching: Vec<ConnectionHandle> = self
            .read()
            .values()
            .filter(|c| c.principal().user.as_deref() == Some(user))
            .cloned()
            .collect();
        for conn in &matching {
            conn.close(code, reason.clone());
        }
        matching.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ConnectionHandle>> {
        self.connections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ConnectionHandle>> {
        self.connections.write().unwrap_or_else(|p| p.into_inner())
    }
}
