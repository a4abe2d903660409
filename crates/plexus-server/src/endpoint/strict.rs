//! Strict mode: refuse to start while a method or a channel namespace does not say who may
//! use it.

use std::fmt;

use crate::channel::Namespaces;
use crate::rpc::router::Router;

/// Checks that every method of `router` declares its permission (`.requires(..)`,
/// `.public()` or a `requires_all` rule) and every namespace of `namespaces` says who may
/// use its channels (`require`, `public_access` or an `authorize` hook). In strict mode the
/// server refuses to start otherwise, so that forgetting a permission cannot leave a method
/// or a channel open to everyone.
///
/// ```
/// use plexus_server::{check_strict, ChannelOptions, Namespaces, Router, RpcError};
///
/// let router = Router::new().request("sys.ping", |_: ()| async { Ok::<_, RpcError>("pong") });
/// let namespaces = Namespaces::new().namespace("chat:*", ChannelOptions::default());
/// let err = check_strict(&router, &namespaces).unwrap_err();
/// assert_eq!(err.methods(), ["sys.ping"]);
/// assert_eq!(err.namespaces(), ["chat:*"]);
/// ```
pub fn check_strict(router: &Router, namespaces: &Namespaces) -> Result<(), StrictModeError> {
    let methods = router.undeclared_methods();
    let namespaces = namespaces.undeclared();
    if methods.is_empty() && namespaces.is_empty() {
        Ok(())
    } else {
        Err(StrictModeError {
            methods,
            namespaces,
        })
    }
}

/// Methods and channel namespaces that do not declare who may use them, found by
/// [`check_strict`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrictModeError {
    methods: Vec<String>,
    namespaces: Vec<String>,
}

impl StrictModeError {
    /// The methods without a permission declaration, sorted.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// The namespace patterns without a declaration, sorted.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl fmt::Display for StrictModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, names: &[String]) -> fmt::Result {
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{name}`")?;
            }
            Ok(())
        }
        f.write_str("strict mode: who may use these is not declared")?;
        if !self.methods.is_empty() {
            let s = if self.methods.len() == 1 { "" } else { "s" };
            write!(f, "; method{s} ")?;
            list(f, &self.methods)?;
            f.write_str(" (chain `.requires(\"permission\")` or `.public()` after registering)")?;
        }
        if !self.namespaces.is_empty() {
            let s = if self.namespaces.len() == 1 { "" } else { "s" };
            write!(f, "; channel namespace{s} ")?;
            list(f, &self.namespaces)?;
            f.write_str(
                " (give their options `.require(action, \"permission\")`, `.authorize(..)` or \
                 `.public_access()`)",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for StrictModeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelAction, ChannelOptions};
    use crate::error::RpcError;

    fn ok(_: ()) -> std::future::Ready<Result<(), RpcError>> {
        std::future::ready(Ok(()))
    }

    #[test]
    fn everything_declared_passes() {
        let router = Router::new()
            .request("a", ok)
            .public()
            .request("b", ok)
            .requires("x");
        let namespaces = Namespaces::new()
            .namespace("c:*", ChannelOptions::default().public_access())
            .namespace(
                "d",
                ChannelOptions::default().require(ChannelAction::Join, "y"),
            );
        assert_eq!(check_strict(&router, &namespaces), Ok(()));
        assert_eq!(check_strict(&Router::new(), &Namespaces::new()), Ok(()));
    }

    #[test]
    fn the_error_lists_everything_undeclared() {
        let router = Router::new()
            .request("b.two", ok)
            .request("a.one", ok)
            .request("c", ok)
            .public();
        let namespaces = Namespaces::new()
            .namespace("room:*", ChannelOptions::default())
            .namespace("lobby", ChannelOptions::default().public_access());
        let err = check_strict(&router, &namespaces).unwrap_err();
        assert_eq!(err.methods(), ["a.one", "b.two"]);
        assert_eq!(err.namespaces(), ["room:*"]);
        assert_eq!(
            err.to_string(),
            "strict mode: who may use these is not declared; methods `a.one`, `b.two` (chain \
             `.requires(\"permission\")` or `.public()` after registering); channel namespace \
             `room:*` (give their options `.require(action, \"permission\")`, `.authorize(..)` \
             or `.public_access()`)"
        );
        let only_namespaces = check_strict(&Router::new(), &namespaces).unwrap_err();
        assert!(!only_namespaces.to_string().contains("method"));
    }
}
