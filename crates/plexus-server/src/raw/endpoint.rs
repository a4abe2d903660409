//! [`RawEndpoint`]: a raw socket's path, kind, options and handlers.

use std::sync::Arc;

use super::path::{EndpointError, PathPattern};
use super::{RawHandler, session};
use crate::auth::{CredentialSource, REQUEST_SOURCES};
use crate::conn::{ConnectionInfo, OutboundQueue, Socket};
use crate::guard::ConnectionSlot;
use crate::principal::Principal;
use crate::rpc::handler::BoxFuture;
use crate::rpc::pool::RoundRobin;
use crate::session::SessionEnv;

/// The two kinds of raw socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawKind {
    /// For clients you do not control: no in-band handshake. Authentication runs on the
    /// upgrade request only (header, cookie, query), and a refusal is HTTP 401/403 before
    /// the upgrade. May take a prefix path (`/app/*`).
    Foreign,
    /// For clients that speak plexus's handshake: the client's `hello` and the server's
    /// `welcome` (or `reject` and a close) come first, then the socket is the
    /// application's. A credential may also come in the `hello`. Anything the client sends
    /// before its `hello` is dropped. An exact path only.
    Handshaked,
}

impl RawKind {
    fn name(self) -> &'static str {
        match self {
            RawKind::Foreign => "foreign-client raw",
            RawKind::Handshaked => "handshaked raw",
        }
    }
}

/// A raw socket endpoint, registered with `ServerBuilder::raw`.
///
/// ```
/// use plexus_server::{RawConnection, RawEndpoint, RawHandler, RawMessage};
///
/// struct Echo;
///
/// impl RawHandler for Echo {
///     async fn message(&self, conn: &RawConnection, message: RawMessage) {
///         let _ = conn.send(message);
///     }
/// }
///
/// let endpoint = RawEndpoint::foreign("/echo/*").handler(Echo);
/// ```
pub struct RawEndpoint {
    pub(crate) path: String,
    pub(crate) kind: RawKind,
    pub(crate) credentials: Vec<CredentialSource>,
    pub(crate) permission: Option<Arc<str>>,
    /// Declared open to every connection (strict mode needs this or a permission).
    pub(crate) public: bool,
    pub(crate) subprotocols: Vec<String>,
    /// `None`: the endpoint configuration's call rate.
    pub(crate) message_rate: Option<crate::guard::RateLimit>,
    pub(crate) handlers: Option<Arc<dyn Serve>>,
}

impl std::fmt::Debug for RawEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEndpoint")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl RawEndpoint {
    /// A foreign-client raw socket at `path` (exact, or a prefix `/app/*`).
    pub fn foreign(path: impl Into<String>) -> Self {
        Self::new(path.into(), RawKind::Foreign)
    }

    /// A handshaked raw socket at `path` (exact).
    pub fn handshaked(path: impl Into<String>) -> Self {
        Self::new(path.into(), RawKind::Handshaked)
    }

    fn new(path: String, kind: RawKind) -> Self {
        let mut credentials = REQUEST_SOURCES.to_vec();
        if kind == RawKind::Handshaked {
            credentials.push(CredentialSource::Hello);
        }
        Self {
            path,
            kind,
            credentials,
            permission: None,
            public: false,
            subprotocols: Vec::new(),
            message_rate: None,
            handlers: None,
        }
    }

    /// Every connection goes to `handler`.
    pub fn handler<H: RawHandler>(self, handler: H) -> Self {
        self.pool([handler])
    }

    /// Each new connection goes to the next of `handlers`, round-robin (connection 1 to
    /// the first, 2 to the second, ...), and all its events to that one.
    pub fn pool<H: RawHandler>(mut self, handlers: impl IntoIterator<Item = H>) -> Self {
        self.handlers = RoundRobin::of(handlers.into_iter().map(Arc::new))
            .map(|pool| Arc::new(pool) as Arc<dyn Serve>);
        self
    }

    /// Where the credential may be (default: the header, the cookie and the query, and
    /// for a handshaked socket the `hello` too), when the server authenticates. A
    /// foreign-client socket cannot read the `hello`: the server refuses to start.
    pub fn credentials(mut self, sources: impl IntoIterator<Item = CredentialSource>) -> Self {
        self.credentials = sources.into_iter().collect();
        self
    }

    /// A permission every connection of this endpoint must hold: without a credential the
    /// upgrade gets 401 (`NOT_AUTHORIZED`), with one that lacks it 403 (`FORBIDDEN`); a
    /// handshaked socket answers its `hello` with `reject` and closes with 4001 or 4003.
    pub fn require(mut self, permission: impl Into<String>) -> Self {
        self.permission = Some(Arc::from(permission.into()));
        self
    }

    /// Declares the endpoint open to every connection the server admits, which strict mode
    /// needs of an endpoint without [`RawEndpoint::require`].
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// How many messages per second a peer may send (default: the endpoint configuration's
    /// `call_rate`, none unless set). A peer over it is closed with 1008.
    pub fn message_rate(mut self, rate: crate::guard::RateLimit) -> Self {
        self.message_rate = Some(rate);
        self
    }

    /// The subprotocols a foreign-client endpoint speaks: the first the client offers (in
    /// the client's order) that is in this list is agreed. None offered or none in common:
    /// the upgrade goes on without one. A handshaked endpoint ignores the list: it agrees on
    /// plexus's codec for its handshake.
    pub fn subprotocols<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.subprotocols = names.into_iter().map(Into::into).collect();
        self
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The kind.
    pub fn kind(&self) -> RawKind {
        self.kind
    }

    /// The endpoint's path and handlers, or why it cannot be served.
    pub(crate) fn check(
        &self,
        strict: bool,
    ) -> Result<(PathPattern, Arc<dyn Serve>), EndpointError> {
        let Some(handlers) = self.handlers.clone() else {
            return Err(EndpointError::NoHandler(self.path.clone()));
        };
        if strict && self.permission.is_none() && !self.public {
            return Err(EndpointError::Undeclared(self.path.clone()));
        }
        let pattern = match self.kind {
            RawKind::Foreign => {
                if self.credentials.contains(&CredentialSource::Hello) {
                    return Err(EndpointError::HelloCredential(self.path.clone()));
                }
                PathPattern::parse(&self.path)?
            }
            RawKind::Handshaked => {
                PathPattern::Exact(PathPattern::exact(&self.path, self.kind.name())?)
            }
        };
        Ok((pattern, handlers))
    }
}

/// What a raw socket's task starts with.
pub(crate) struct RawStart {
    pub(crate) env: Arc<SessionEnv>,
    pub(crate) info: ConnectionInfo,
    /// `None`: a handshaked socket whose client must authenticate in its `hello`.
    pub(crate) principal: Option<Principal>,
    pub(crate) slot: ConnectionSlot,
    pub(crate) kind: RawKind,
    pub(crate) permission: Option<Arc<str>>,
    /// Whether the `hello`'s token is read (a handshaked endpoint declaring it).
    pub(crate) hello_credential: bool,
    /// Messages per second the peer may send.
    pub(crate) message_rate: Option<crate::guard::RateLimit>,
}

/// A pool of handlers of one type, behind a type the endpoint can hold.
pub(crate) trait Serve: Send + Sync {
    /// Serves one connection with the next handler.
    fn serve(&self, start: RawStart, ws: Socket, queue: Arc<OutboundQueue>) -> BoxFuture<()>;
}

impl<H: RawHandler> Serve for RoundRobin<Arc<H>> {
    fn serve(&self, start: RawStart, ws: Socket, queue: Arc<OutboundQueue>) -> BoxFuture<()> {
        Box::pin(session::run(start, ws, queue, self.next().clone()))
    }
}
