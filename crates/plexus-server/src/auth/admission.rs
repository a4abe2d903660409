//! [`Admission`]: how an authenticating server decides who connects.

use std::sync::Arc;

use super::{AuthError, AuthRequest, Authenticator};
use crate::principal::Principal;

/// An authenticating server's policy: the authenticator, where a browser's credential
/// cookie is, and the permission every connection must hold.
pub(crate) struct Admission {
    pub(crate) authenticator: Arc<dyn Authenticator>,
    /// The cookie read for a credential.
    pub(crate) cookie: String,
    /// The permission every connection must hold (none: anyone authenticated may connect).
    pub(crate) connect_permission: Option<String>,
}

impl Admission {
    /// Authenticates a credential (from the upgrade, a `hello` or a refresh) and checks the
    /// connect permission.
    pub(crate) async fn authenticate(
        &self,
        request: AuthRequest<'_>,
    ) -> Result<Principal, AuthError> {
        let result = self.check(request).await;
        if let Err(e) = &result {
            crate::metrics::auth_failed(e.kind_label());
        }
        result
    }

    async fn check(&self, request: AuthRequest<'_>) -> Result<Principal, AuthError> {
        if request.credential.is_none() {
            return Err(AuthError::not_authorized("missing credential"));
        }
        let principal = self.authenticator.authenticate(request).await?;
        match &self.connect_permission {
            Some(permission) if !principal.can(permission) => Err(AuthError::forbidden(format!(
                "the `{permission}` permission is needed to connect"
            ))),
            _ => Ok(principal),
        }
    }
}
