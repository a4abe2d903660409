//! Who is on the other end of a connection.

use std::collections::BTreeSet;

/// The identity and permissions of a connection, resolved once at the handshake.
/// Anonymous unless the endpoint authenticates connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The user id (`sub`), if authenticated.
    pub user: Option<String>,
    /// The permissions granted to the connection.
    pub permissions: BTreeSet<String>,
}

impl Principal {
    /// The anonymous principal.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// An authenticated user with the given permissions.
    pub fn user(user: impl Into<String>, permissions: impl IntoIterator<Item = String>) -> Self {
        Self {
            user: Some(user.into()),
            permissions: permissions.into_iter().collect(),
        }
    }

    /// Whether the connection is anonymous.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// Whether the connection holds `permission`.
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }
}
