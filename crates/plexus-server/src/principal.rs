//! Who is on the other end of a connection.

use std::collections::BTreeSet;
use std::time::SystemTime;

/// The identity and permissions of a connection, resolved once at the handshake.
/// Anonymous unless the endpoint authenticates connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The user id (`sub`), if authenticated.
    pub user: Option<String>,
    /// The permissions granted to the connection.
    pub permissions: BTreeSet<String>,
    /// Public information about the user (a display name, an avatar), shown to the other
    /// members in presence. Never put secrets here.
    pub info: Option<serde_json::Value>,
    /// When the credential stops being valid (a token's `exp`), if it expires.
    pub expires_at: Option<SystemTime>,
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
            info: None,
            expires_at: None,
        }
    }

    /// The same principal with `info` shown in presence.
    pub fn with_info(mut self, info: serde_json::Value) -> Self {
        self.info = Some(info);
        self
    }

    /// The same principal with a credential that expires at `expires_at`.
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
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
