//! Raw sockets: WebSocket endpoints whose frames are the application's, not plexus's
//! protocol, beside the protocol endpoints on the same server and port. They keep what the
//! server gives every connection (origin checks, authentication, connection and message
//! size limits, compression, the bounded outbound queue with its slow-consumer cut,
//! heartbeats by WebSocket ping, metrics, and an id the hub reaches from any node).
//!
//! Files: `endpoint.rs` ([`RawEndpoint`]: a path, a kind, options and a pool of handlers),
//! `path.rs` (exact and prefix paths, and the errors a server refuses to start with),
//! `connection.rs` ([`RawConnection`]: what a handler knows and writes with), `session.rs`
//! (one raw socket's life: the optional handshake, the events, the loop), `pipe.rs`
//! ([`ChannelPipe`]: foreign clients piped to channels).

mod connection;
mod endpoint;
mod path;
mod pipe;
mod session;

use std::future::Future;

pub use connection::RawConnection;
pub use endpoint::{RawEndpoint, RawKind};
pub(crate) use endpoint::{RawStart, Serve};
pub use path::EndpointError;
pub(crate) use path::PathPattern;
pub use pipe::ChannelPipe;

use crate::auth::AuthError;
use crate::conn::{DisconnectReason, RawMessage};
use crate::principal::Principal;

/// Why `principal` may not use an endpoint that requires `permission`: `NOT_AUTHORIZED`
/// for an anonymous one (a credential would help), `FORBIDDEN` otherwise.
pub(crate) fn refusal(principal: &Principal, permission: &str) -> Option<AuthError> {
    if principal.can(permission) {
        return None;
    }
    let message = format!("the `{permission}` permission is needed for this endpoint");
    Some(if principal.is_anonymous() {
        AuthError::not_authorized(message)
    } else {
        AuthError::forbidden(message)
    })
}

/// The application's side of a raw socket. A connection's events go to one handler (of a
/// pool, chosen round-robin when the connection opens), in order: `connected` once, then
/// `message` for each data message, then `disconnected` once, whatever ends it (the peer's
/// close, an error, a close from the server, a shutdown). Control frames never reach it.
///
/// The connection reads its next message only once `message` has returned, so a slow
/// handler slows its peer (TCP backpressure) instead of queueing; writes keep going out
/// meanwhile. A handler with long work should spawn it.
pub trait RawHandler: Send + Sync + 'static {
    /// The connection is open (for a handshaked socket: after `welcome`). An `Err` refuses
    /// it: the connection is closed at once with 1013 (try again later) and the reason,
    /// which is also logged, and no other event follows.
    fn connected(&self, conn: &RawConnection) -> impl Future<Output = Result<(), String>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// A data message, bytes and type as the peer sent them.
    fn message(&self, conn: &RawConnection, message: RawMessage)
    -> impl Future<Output = ()> + Send;

    /// The connection has ended, for `reason`. Called once for every connection
    /// `connected` took, before a shutdown completes.
    fn disconnected(
        &self,
        conn: &RawConnection,
        reason: &DisconnectReason,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, reason);
        async {}
    }
}
