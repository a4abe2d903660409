//! Where an endpoint is served: one exact path, or every path under a prefix (`/app/*`),
//! and the mistakes a server refuses to start with.

/// Why a server (or a route) cannot be built as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A path that does not start with `/`.
    #[error("`{0}`: an endpoint path starts with `/`")]
    NotAbsolute(String),
    /// A `*` anywhere but as the last segment, or a route parameter.
    #[error(
        "`{0}`: `*` may only end a path, as in `/prefix/*`, and a parameter is written `{{name}}`"
    )]
    BadWildcard(String),
    /// A prefix path on an endpoint that speaks plexus's handshake.
    #[error(
        "`{path}`: a prefix path is only for foreign-client raw sockets (applications that use \
         the paths under it themselves); a {kind} endpoint is reached at one exact path and \
         tells its calls apart in band, so give it a path without `*`"
    )]
    PrefixNotAllowed {
        /// The path given.
        path: String,
        /// The kind of endpoint (`protocol` or `handshaked raw`).
        kind: &'static str,
    },
    /// Two endpoints at the same path.
    #[error("`{0}` is served by two endpoints")]
    Duplicate(String),
    /// A foreign-client raw socket told to read its credential from the `hello`.
    #[error(
        "`{0}`: a foreign-client raw socket has no in-band handshake, so it cannot read a \
         credential from a `hello`; use the header, the cookie or the query"
    )]
    HelloCredential(String),
    /// Strict mode: a raw endpoint that says neither who may connect nor that anyone may.
    #[error(
        "`{0}`: strict mode needs every raw endpoint to say who may connect: \
         `RawEndpoint::require(permission)` or `RawEndpoint::public()`"
    )]
    Undeclared(String),
    /// A raw endpoint without a handler.
    #[error("`{0}`: a raw endpoint needs at least one handler")]
    NoHandler(String),
}

/// An endpoint's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathPattern {
    /// This path only.
    Exact(String),
    /// This path and every path under it (held without the trailing `/`; empty for `/*`).
    Prefix(String),
}

impl PathPattern {
    /// Reads `/path` or `/prefix/*`.
    pub(crate) fn parse(path: &str) -> Result<Self, EndpointError> {
        if !path.starts_with('/') {
            return Err(EndpointError::NotAbsolute(path.to_owned()));
        }
        let (base, prefix) = match path.strip_suffix("/*") {
            Some(base) => (base, true),
            None => (path, false),
        };
        // `{name}` segments are the router's parameters and stay allowed; a catch-all
        // (`{*rest}`) is what `/*` says, and `:name` is not a parameter in this router.
        if base.contains('*') || base.split('/').any(|segment| segment.starts_with(':')) {
            return Err(EndpointError::BadWildcard(path.to_owned()));
        }
        Ok(if prefix {
            Self::Prefix(base.to_owned())
        } else {
            Self::Exact(base.to_owned())
        })
    }

    /// An exact path, or the error that names the `kind` of endpoint that needs one.
    pub(crate) fn exact(path: &str, kind: &'static str) -> Result<String, EndpointError> {
        match Self::parse(path)? {
            Self::Exact(path) => Ok(path),
            Self::Prefix(_) => Err(EndpointError::PrefixNotAllowed {
                path: path.to_owned(),
                kind,
            }),
        }
    }

    /// The router paths that serve it. A prefix serves itself, itself with a trailing
    /// `/`, and everything under it; the router prefers an exact path to a prefix and a
    /// longer prefix to a shorter one, and `/app/*` never matches `/appX`.
    pub(crate) fn routes(&self) -> Vec<String> {
        match self {
            Self::Exact(path) => vec![path.clone()],
            Self::Prefix(base) if base.is_empty() => vec!["/".to_owned(), "/{*rest}".to_owned()],
            Self::Prefix(base) => vec![
                base.clone(),
                format!("{base}/"),
                format!("{base}/{{*rest}}"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_exact_or_prefix() {
        assert_eq!(
            PathPattern::parse("/ws"),
            Ok(PathPattern::Exact("/ws".into()))
        );
        assert_eq!(
            PathPattern::parse("/code-server/*"),
            Ok(PathPattern::Prefix("/code-server".into()))
        );
        assert_eq!(
            PathPattern::parse("/*"),
            Ok(PathPattern::Prefix(String::new()))
        );
        assert!(matches!(
            PathPattern::parse("ws"),
            Err(EndpointError::NotAbsolute(_))
        ));
        assert_eq!(
            PathPattern::parse("/t/{tenant}/ws"),
            Ok(PathPattern::Exact("/t/{tenant}/ws".into()))
        );
        for bad in ["/a*", "/*/b", "/a/{*rest}", "/a/*/*", "/a/:id"] {
            assert!(
                matches!(PathPattern::parse(bad), Err(EndpointError::BadWildcard(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_prefix_on_an_exact_only_endpoint_says_why() {
        let error = PathPattern::exact("/ws/*", "protocol").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("only for foreign-client raw sockets"),
            "{error}"
        );
        assert_eq!(PathPattern::exact("/ws", "protocol"), Ok("/ws".to_owned()));
    }
}
