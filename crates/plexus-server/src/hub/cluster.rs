//! The cluster link: what this node sends other nodes through the engine, and what it does
//! with what they send.
//!
//! Every message for a connection goes to every node; the node holding the connection acts
//! (with the same code the hub's API runs for a connection of its own), the others ignore
//! it. A request carries the asking node's name and an id: the client's node calls the
//! client and broadcasts a `Reply` for the asking node, which hands it to the waiting caller
//! (at most [`MAX_REMOTE_REQUESTS`] wait per node; the caller stops waiting [`REPLY_GRACE`]
//! after the client's timeout, so a connection no node holds ends in `TIMEOUT`). A caller
//! that gives up first broadcasts a `CancelRequest`; the client's node drops the call (up to
//! [`MAX_CANCELLABLE`] are kept cancellable), which sends the client its `cancel`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use plexus_engine::{NodeMessage, RawData};
use plexus_protocol::{CloseCode, ErrorBody, ErrorCode, Payload};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::join::JoinReply;
use super::{Hub, HubError};
use crate::conn::{ConnectionHandle, RawMessage};

/// Requests to connections on other nodes this node waits for at once; more get
/// `RATE_LIMITED`.
const MAX_REMOTE_REQUESTS: usize = 10_000;

/// Requests from other nodes this node answers at once that can be cancelled early (when
/// their caller gives up); past that, a call still runs, to its own timeout.
const MAX_CANCELLABLE: usize = 10_000;

/// How long past the client's own timeout a node waits for another node's reply: the
/// client's node answers `TIMEOUT` itself, this only covers the way back.
const REPLY_GRACE: Duration = Duration::from_secs(2);

type Answer = Result<Payload, ErrorBody>;

/// This node's side of the requests that cross nodes.
pub(super) struct Cluster {
    /// This node's name, which replies from other nodes are addressed to.
    pub(super) node: String,
    /// Requests sent to connections on other nodes, waiting for their replies.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_request: AtomicU64,
    /// Requests from other nodes to this node's connections, by asking node and id, so
    /// that a [`NodeMessage::CancelRequest`] can stop them.
    answering: Mutex<HashMap<(String, u64), AbortHandle>>,
}

impl Cluster {
    pub(super) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            waiting: Mutex::new(HashMap::new()),
            // A random start: a late reply meant for an earlier process of the same node
            // name must not match a new request.
            next_request: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0),
            answering: Mutex::new(HashMap::new()),
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// Sends `message` to every other node.
    pub(super) async fn broadcast(&self, message: NodeMessage) -> Result<(), HubError> {
        self.inner
            .engine
            .broadcast(message)
            .await
            .map_err(HubError::from)
    }

    /// Acts on the connection `conn` with `here` if this node holds it; otherwise hands
    /// `elsewhere` to the other nodes, which do not report back (`Ok` then means handed on).
    pub(super) async fn on_connection<F, Fut>(
        &self,
        conn: &str,
        here: F,
        elsewhere: impl FnOnce() -> NodeMessage,
    ) -> Result<(), HubError>
    where
        F: FnOnce(ConnectionHandle) -> Fut,
        Fut: Future<Output = Result<(), HubError>>,
    {
        match self.connection(conn) {
            Some(handle) => here(handle).await,
            None => self.broadcast(elsewhere()).await,
        }
    }

    /// Calls the connection `conn` on another node and waits for the reply.
    pub(super) async fn request_elsewhere(
        &self,
        conn: &str,
        method: &str,
        data: Payload,
        timeout: Duration,
    ) -> Result<Payload, HubError> {
        let cluster = &self.inner.cluster;
        let id = self.next_call_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = lock(&cluster.waiting);
            if waiting.len() >= MAX_REMOTE_REQUESTS {
                return Err(HubError::new(
                    ErrorCode::RATE_LIMITED,
                    "too many requests to connections on other nodes are waiting",
                ));
            }
            waiting.insert(id, tx);
        }
        // Forgets the request however this future ends (answered, timed out or dropped), and
        // cancels it on the client's node when dropped before either.
        let mut waiting = RemoteRequest {
            hub: self,
            id,
            over: false,
        };
        let sent = self
            .broadcast(NodeMessage::Request {
                conn: conn.to_owned(),
                method: method.to_owned(),
                data,
                node: cluster.node.clone(),
                id,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            })
            .await;
        if let Err(e) = sent {
            // Never sent: nothing to cancel.
            waiting.over = true;
            return Err(e);
        }
        let outcome = tokio::time::timeout(timeout.saturating_add(REPLY_GRACE), rx).await;
        waiting.over = true;
        match outcome {
            Ok(Ok(result)) => result.map_err(HubError::from),
            Ok(Err(_)) => Err(HubError::new(
                ErrorCode::UNAVAILABLE,
                "the hub was shut down",
            )),
            Err(_) => Err(HubError::new(
                ErrorCode::TIMEOUT,
                format!(
                    "no answer from connection {conn}: no node holds it, or its node did not reply"
                ),
            )),
        }
    }

    /// A new id for a request or stream to another node's connection.
    pub(super) fn next_call_id(&self) -> u64 {
        self.inner
            .cluster
            .next_request
            .fetch_add(1, Ordering::Relaxed)
    }

    /// Tells the other nodes that this node gave up its request or stream `id`.
    pub(super) fn cancel_elsewhere(&self, id: u64) {
        let hub = self.clone();
        let message = NodeMessage::CancelRequest {
            node: self.inner.cluster.node.clone(),
            id,
        };
        spawn(async move {
            if let Err(e) = hub.broadcast(message).await {
                tracing::debug!(error = ?e, "a cancel did not reach the other nodes");
            }
        });
    }

    /// Acts on a message from another node.
    pub(super) fn on_node_message(&self, message: NodeMessage) {
        match message {
            NodeMessage::Notify { conn, method, data } => {
                if let Some(handle) = self.connection(&conn) {
                    let _ = handle.notify_raw(&method, data);
                }
            }
            NodeMessage::Write { conn, message } => {
                if let Some(handle) = self.connection(&conn) {
                    let message = match message {
                        RawData::Text(text) => RawMessage::text(text),
                        RawData::Binary(bytes) => RawMessage::binary(bytes),
                    };
                    if let Err(e) = handle.send_message(message) {
                        tracing::debug!(conn = %conn, error = %e, "a raw message from another node was not written");
                    }
                }
            }
            NodeMessage::Request {
                conn,
                method,
                data,
                node,
                id,
                timeout_ms,
            } => {
                if let Some(handle) = self.connection(&conn) {
                    self.answer_request(handle, method, data, node, id, timeout_ms);
                }
            }
            NodeMessage::CancelRequest { node, id } => {
                // Dropping the call sends the client its `cancel`.
                let key = (node, id);
                if let Some(call) = lock(&self.inner.cluster.answering).remove(&key) {
                    call.abort();
                } else {
                    self.cancel_served_stream(&key);
                }
            }
            NodeMessage::StreamOpen {
                conn,
                method,
                data,
                node,
                id,
                credit,
            } => {
                if let Some(handle) = self.connection(&conn) {
                    self.serve_stream(handle, method, data, (node, id), credit);
                }
            }
            NodeMessage::StreamEvent {
                node,
                id,
                seq,
                event,
            } => {
                if node == self.inner.cluster.node {
                    self.on_stream_event(id, seq, event);
                }
            }
            NodeMessage::StreamCredit { node, id, credit } => {
                self.on_stream_credit(&(node, id), credit);
            }
            NodeMessage::Reply { node, id, result } => {
                let cluster = &self.inner.cluster;
                if node == cluster.node
                    && let Some(waiting) = lock(&cluster.waiting).remove(&id)
                {
                    let _ = waiting.send(result);
                }
            }
            NodeMessage::Disconnect { conn, code, reason } => {
                if let Some(handle) = self.connection(&conn) {
                    handle.close(CloseCode(code), reason);
                }
            }
            NodeMessage::DisconnectUser { user, code, reason } => {
                self.inner
                    .registry
                    .close_user(&user, CloseCode(code), &reason.into());
            }
            NodeMessage::Subscribe { conn, channel } => {
                if let Some(handle) = self.connection(&conn) {
                    let hub = self.clone();
                    spawn(async move {
                        let _ = hub
                            .join_as(&handle, &channel, None, None, JoinReply::Push, false)
                            .await;
                    });
                }
            }
            NodeMessage::Unsubscribe { conn, channel } => {
                if let Some(handle) = self.connection(&conn) {
                    let hub = self.clone();
                    spawn(async move { hub.unsubscribe_local(&handle, &channel, None).await });
                }
            }
            other => tracing::debug!(?other, "node message not handled by this version"),
        }
    }

    /// Calls this node's connection for another node, and sends that node the answer.
    fn answer_request(
        &self,
        handle: ConnectionHandle,
        method: String,
        data: Payload,
        node: String,
        id: u64,
        timeout_ms: u64,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return tracing::warn!("a request arrived outside a tokio runtime; dropped");
        };
        let key = (node, id);
        // Held across the spawn, so the call cannot end (and forget itself) before it is noted.
        let mut answering = lock(&self.inner.cluster.answering);
        if answering.contains_key(&key) {
            // The same request delivered twice: it is being answered.
            return;
        }
        let call = runtime.spawn({
            let hub = self.clone();
            let key = key.clone();
            async move {
                let timeout = Duration::from_millis(timeout_ms);
                let result = handle
                    .request_timeout::<Payload>(&method, data, timeout)
                    .await
                    .map_err(|e| e.into_body());
                lock(&hub.inner.cluster.answering).remove(&key);
                let (node, id) = key;
                if let Err(e) = hub.broadcast(NodeMessage::Reply { node, id, result }).await {
                    tracing::warn!(error = %e, "a reply to another node was lost");
                }
            }
        });
        if answering.len() < MAX_CANCELLABLE {
            answering.insert(key, call.abort_handle());
        }
    }
}

/// A request to another node's connection, forgotten when its caller stops waiting.
struct RemoteRequest<'a> {
    hub: &'a Hub,
    id: u64,
    /// Answered, or waited for as long as the client had: nothing to cancel.
    over: bool,
}

impl Drop for RemoteRequest<'_> {
    fn drop(&mut self) {
        let cluster = &self.hub.inner.cluster;
        let waiting = lock(&cluster.waiting).remove(&self.id).is_some();
        if waiting && !self.over {
            // The caller gave up early: the client need not answer any more.
            self.hub.cancel_elsewhere(self.id);
        }
    }
}

/// Runs `future` on the current runtime (a node message or a cancel may arrive outside one).
pub(super) fn spawn(future: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(future);
        }
        Err(_) => tracing::warn!("no tokio runtime to act on a node message (or send a cancel)"),
    }
}
