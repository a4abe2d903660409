//! Handler pools for the protocol endpoint: each new connection goes to one of N handlers,
//! round-robin, and is served by that handler's router for its whole life.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::router::Router;
use crate::conn::{ConnectionHandle, DisconnectReason};

/// One handler of a protocol endpoint's pool (`ServerBuilder::pool`): the methods it serves
/// and, optionally, whether it takes a connection and what it does when one ends. A
/// [`Router`] is one, taking every connection; so is an `Arc` of one, for an application
/// that keeps its handlers (to read their state) as well as giving them to the pool.
///
/// ```
/// use plexus_server::{
///     ConnectionHandle, DisconnectReason, ProtocolHandler, Router, RpcError, Server,
/// };
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// /// One shard of a game: at most 100 players, each player's calls go to its shard.
/// struct Shard {
///     router: Router,
///     players: AtomicUsize,
/// }
///
/// impl ProtocolHandler for Shard {
///     fn router(&self) -> &Router {
///         &self.router
///     }
///
///     async fn connected(&self, _conn: &ConnectionHandle) -> Result<(), String> {
///         match self.players.fetch_add(1, Ordering::Relaxed) {
///             n if n < 100 => Ok(()),
///             _ => {
///                 self.players.fetch_sub(1, Ordering::Relaxed);
///                 Err("this shard is full".into())
///             }
///         }
///     }
///
///     async fn disconnected(&self, _conn: &ConnectionHandle, _reason: &DisconnectReason) {
///         self.players.fetch_sub(1, Ordering::Relaxed);
///     }
/// }
///
/// let shards = (0..4).map(|n| Shard {
///     router: Router::new()
///         .request("shard.id", move |_: ()| async move { Ok::<_, RpcError>(n) })
///         .public(),
///     players: AtomicUsize::new(0),
/// });
/// let server = Server::builder().pool(shards).build();
/// ```
pub trait ProtocolHandler: Send + Sync + 'static {
    /// The methods this handler serves to the connections it takes.
    fn router(&self) -> &Router;

    /// A new connection, authenticated, before its `welcome`: `Ok` takes it, `Err` refuses
    /// it: the connection is closed at once with 1013 (try again later) and the reason,
    /// which is also logged; no `welcome` is sent and no other event follows. Nothing of
    /// the connection is served until this returns (to call the client once it is open,
    /// use `ServerBuilder::on_connect`).
    ///
    /// The future is dropped where it stands, and the connection closed without
    /// `disconnected`, when it has not finished within the handshake timeout (closed with
    /// 1013), or when a close is requested or the server shuts down meanwhile: undo there
    /// what it did before its last `.await` (a guard's `Drop` does).
    fn connected(
        &self,
        conn: &ConnectionHandle,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// A connection this handler took has ended, for `reason`. Called once for each, in the
    /// connection's task: `Server::wait_closed` waits for it (`Server::serve` waits up to
    /// its close deadline), so keep it short.
    fn disconnected(
        &self,
        conn: &ConnectionHandle,
        reason: &DisconnectReason,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, reason);
        async {}
    }
}

impl ProtocolHandler for Router {
    fn router(&self) -> &Router {
        self
    }
}

impl<H: ProtocolHandler> ProtocolHandler for Arc<H> {
    fn router(&self) -> &Router {
        H::router(self)
    }

    fn connected(
        &self,
        conn: &ConnectionHandle,
    ) -> impl Future<Output = Result<(), String>> + Send {
        H::connected(self, conn)
    }

    fn disconnected(
        &self,
        conn: &ConnectionHandle,
        reason: &DisconnectReason,
    ) -> impl Future<Output = ()> + Send {
        H::disconnected(self, conn, reason)
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`ProtocolHandler`] behind a type the pool can hold.
pub(crate) trait Member: Send + Sync {
    fn router(&self) -> &Router;
    fn connected<'a>(&'a self, conn: &'a ConnectionHandle) -> Boxed<'a, Result<(), String>>;
    fn disconnected<'a>(
        &'a self,
        conn: &'a ConnectionHandle,
        reason: &'a DisconnectReason,
    ) -> Boxed<'a, ()>;
}

impl<H: ProtocolHandler> Member for H {
    fn router(&self) -> &Router {
        ProtocolHandler::router(self)
    }

    fn connected<'a>(&'a self, conn: &'a ConnectionHandle) -> Boxed<'a, Result<(), String>> {
        Box::pin(ProtocolHandler::connected(self, conn))
    }

    fn disconnected<'a>(
        &'a self,
        conn: &'a ConnectionHandle,
        reason: &'a DisconnectReason,
    ) -> Boxed<'a, ()> {
        Box::pin(ProtocolHandler::disconnected(self, conn, reason))
    }
}

/// Members taken in turn: the first, the second, ..., the first again. The one rotation of
/// the protocol endpoint's pool and of a raw endpoint's.
pub(crate) struct RoundRobin<T> {
    members: Vec<T>,
    next: AtomicUsize,
}

impl<T> RoundRobin<T> {
    /// A rotation of `members`; `None` when there are none.
    pub(crate) fn of(members: impl IntoIterator<Item = T>) -> Option<Self> {
        let members: Vec<T> = members.into_iter().collect();
        (!members.is_empty()).then(|| Self {
            members,
            next: AtomicUsize::new(0),
        })
    }

    /// The member whose turn it is.
    pub(crate) fn next(&self) -> &T {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        &self.members[turn]
    }

    /// Every member, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.members.iter()
    }
}

/// The handlers of the protocol endpoint, taken in turn by new connections.
pub(crate) struct HandlerPool(RoundRobin<Arc<dyn Member>>);

impl HandlerPool {
    /// A pool of `handlers`; `None` when there are none.
    pub(crate) fn of<H: ProtocolHandler>(handlers: impl IntoIterator<Item = H>) -> Option<Self> {
        let members = handlers
            .into_iter()
            .map(|handler| Arc::new(handler) as Arc<dyn Member>);
        RoundRobin::of(members).map(Self)
    }

    /// A pool of one handler, which takes every connection.
    pub(crate) fn one<H: ProtocolHandler>(handler: H) -> Self {
        Self::of([handler]).expect("one handler")
    }

    /// The handler for the next connection (connection 1 to the first, 2 to the second...).
    pub(crate) fn next(&self) -> Arc<dyn Member> {
        self.0.next().clone()
    }

    /// Every handler's router.
    pub(crate) fn routers(&self) -> impl Iterator<Item = &Router> {
        self.0.iter().map(|member| member.router())
    }
}
