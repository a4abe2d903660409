//! What a handler knows about its call: [`CallContext`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::conn::ConnectionHandle;
use crate::principal::Principal;

/// Why a call was stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The caller sent `cancel`.
    Cancelled,
    /// The connection closed.
    Disconnected,
    /// The server shut down before the call finished.
    Shutdown,
    /// The connection's refreshed credential no longer allows the method.
    Forbidden,
}

type Cleanup = Box<dyn FnOnce(CancelReason) + Send>;

/// Cancellation state of one call, shared by its context and the connection.
#[derive(Default)]
pub(crate) struct CallState {
    token: CancellationToken,
    cleanups: Mutex<Vec<Cleanup>>,
}

impl CallState {
    /// Fires the token and runs the registered cleanups with `reason`, once.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        if self.token.is_cancelled() {
            return;
        }
        self.token.cancel();
        let cleanups =
            std::mem::take(&mut *self.cleanups.lock().unwrap_or_else(|p| p.into_inner()));
        for cleanup in cleanups {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cleanup(reason))).is_err() {
                tracing::error!("a cancellation cleanup panicked");
            }
        }
    }
}

/// The context of one call: the connection it came on, its cancellation, and what the
/// handshake established. Cheap to clone.
#[derive(Clone)]
pub struct CallContext {
    conn: ConnectionHandle,
    id: u64,
    state: Arc<CallState>,
}

impl CallContext {
    pub(crate) fn new(conn: ConnectionHandle, id: u64, state: Arc<CallState>) -> Self {
        Self { conn, id, state }
    }

    /// The connection the call came on; use it to call the client back.
    pub fn conn(&self) -> &ConnectionHandle {
        &self.conn
    }

    /// The caller's id of this call (0 for notifications).
    pub fn call_id(&self) -> u64 {
        self.id
    }

    /// The connection's id.
    pub fn connection_id(&self) -> &str {
        self.conn.id()
    }

    /// The client's address, when the server was run with connect info (as `serve` does).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote_addr()
    }

    /// The headers of the upgrade request.
    pub fn headers(&self) -> &HeaderMap {
        self.conn.headers()
    }

    /// The query string of the upgrade request, if any.
    pub fn query(&self) -> Option<&str> {
        self.conn.query()
    }

    /// Who is calling (anonymous unless the endpoint authenticates).
    pub fn principal(&self) -> Arc<Principal> {
        self.conn.principal()
    }

    /// A typed value: the connection's own (`ConnectionHandle::insert_extension`), else the
    /// server's (`ServerBuilder::extension`).
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.conn.extension::<T>()
    }

    /// Completes when the call is cancelled (by the caller, a disconnect or shutdown).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.state.token.cancelled()
    }

    /// Whether the call has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.state.token.is_cancelled()
    }

    /// A token that fires when the call is cancelled, for work spawned outside the handler.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.state.token.clone()
    }

    /// Registers cleanup that runs with the reason if the call is cancelled before it
    /// finishes. It does not run when the call completes normally.
    pub fn on_cancel(&self, cleanup: impl FnOnce(CancelReason) + Send + 'static) {
        if self.state.token.is_cancelled() {
            return;
        }
        self.state
            .cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(cleanup));
    }
}
