//! The channels one connection is subscribed to: a bounded set kept on its handle, so that
//! the hub can subscribe a connection from anywhere and forget them all when it ends.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use plexus_protocol::{ErrorBody, ErrorCode};

/// A connection's subscriptions (joined or being joined), at most `max` at once.
pub(crate) struct Subscriptions {
    names: Mutex<HashSet<Arc<str>>>,
    /// Set (under the lock) once the connection has left the hub: no new ones.
    closed: AtomicBool,
    max: usize,
}

impl Subscriptions {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            names: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<Arc<str>>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a subscription to `channel`, within the limit (`RATE_LIMITED` past it,
    /// `UNAVAILABLE` once the connection has ended).
    pub(crate) fn add(&self, channel: &str) -> Result<(), ErrorBody> {
        let mut names = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(ErrorBody::new(
                ErrorCode::UNAVAILABLE,
                "the connection is closed",
            ));
        }
        if names.contains(channel) {
            return Ok(());
        }
        if names.len() >= self.max {
            return Err(ErrorBody::new(
                ErrorCode::RATE_LIMITED,
                format!("a connection may join at most {} channels", self.max),
            ));
        }
        names.insert(channel.into());
        Ok(())
    }

    /// Forgets a subscription; whether there was one.
    pub(crate) fn remove(&self, channel: &str) -> bool {
        self.lock().remove(channel)
    }

    /// Every subscription, forgotten; none may be added afterwards.
    pub(crate) fn close(&self) -> Vec<Arc<str>> {
        let mut names = self.lock();
        self.closed.store(true, Ordering::Release);
        names.drain().collect()
    }

    /// The channels subscribed to now.
    pub(crate) fn list(&self) -> Vec<Arc<str>> {
        self.lock().iter().cloned().collect()
    }

    /// Whether `channel` is among them.
    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.lock().contains(channel)
    }
}
