//! [`RawConnection`]: one raw socket, as its handler (or anyone holding it) sees it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use plexus_protocol::CloseCode;

use crate::conn::{ConnectionHandle, RawMessage};
use crate::error::CallError;
use crate::hub::Hub;
use crate::principal::Principal;

/// A raw socket: what its upgrade request said, and the way to write to it. Cheap to clone.
/// Anyone else reaches it by id through the hub (`Hub::send`), on any node.
#[derive(Clone, Debug)]
pub struct RawConnection {
    handle: ConnectionHandle,
    hub: Hub,
}

impl RawConnection {
    pub(crate) fn new(handle: ConnectionHandle, hub: Hub) -> Self {
        debug_assert!(handle.raw_info().is_some());
        Self { handle, hub }
    }

    /// The server's hub: publish, reach other connections (raw or not) by id.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The connection's id, unique in the cluster.
    pub fn id(&self) -> &str {
        self.handle.id()
    }

    /// The peer's address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.handle.remote_addr()
    }

    /// The server's address of the connection, when known (a connection served through
    /// `Server::serve`'s listener has one).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.handle.raw_info().and_then(|raw| raw.local)
    }

    /// The path of the upgrade request: the concrete one, under a prefix endpoint.
    pub fn path(&self) -> &str {
        self.handle.raw_info().map_or("", |raw| &raw.path)
    }

    /// The query string of the upgrade request.
    pub fn query(&self) -> Option<&str> {
        self.handle.query()
    }

    /// The URL the peer asked for: `ws://` (`wss://` behind a proxy that says
    /// `X-Forwarded-Proto: https`), the `Host` header (else the local address), the path
    /// and the query.
    pub fn url(&self) -> String {
        let headers = self.headers();
        let secure = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.local_addr().map(|a| a.to_string()))
            .unwrap_or_default();
        let scheme = if secure { "wss" } else { "ws" };
        match self.query() {
            Some(query) => format!("{scheme}://{host}{}?{query}", self.path()),
            None => format!("{scheme}://{host}{}", self.path()),
        }
    }

    /// The headers of the upgrade request (those of the WebSocket handshake itself left
    /// out).
    pub fn headers(&self) -> &HeaderMap {
        self.handle.headers()
    }

    /// The subprotocol agreed at the upgrade, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.handle
            .raw_info()
            .and_then(|raw| raw.subprotocol.as_deref())
    }

    /// Who is connected (anonymous when the server does not authenticate).
    pub fn principal(&self) -> Arc<Principal> {
        self.handle.principal()
    }

    /// Queues a message without waiting. A full outbound queue means the peer does not read
    /// fast enough: the connection is closed with 4008 (slow consumer) and this fails, as
    /// it does once the connection is closed.
    pub fn send(&self, message: RawMessage) -> Result<(), CallError> {
        self.handle.send_message(message)
    }

    /// Queues a text message (see [`RawConnection::send`]).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), CallError> {
        self.send(RawMessage::text(text))
    }

    /// Queues a binary message (see [`RawConnection::send`]).
    pub fn send_binary(&self, bytes: impl Into<Bytes>) -> Result<(), CallError> {
        self.send(RawMessage::binary(bytes))
    }

    /// Queues a message, waiting while the outbound queue is half full (the other half
    /// stays for [`RawConnection::send`]). Fails once the connection is closed.
    pub async fn send_waiting(&self, message: RawMessage) -> Result<(), CallError> {
        self.handle.send_message_waiting(message).await
    }

    /// Asks the connection to close with `code` and `reason` (cut to 123 bytes); what was
    /// queued before goes out first.
    pub fn close(&self, code: CloseCode, reason: impl Into<Cow<'static, str>>) {
        self.handle.close(code, reason);
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Completes when the connection has ended.
    pub async fn closed(&self) {
        self.handle.closed().await
    }

    /// A typed value: this connection's own, else the server's.
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.handle.extension()
    }

    /// Stores a typed value for this connection, returning the previous one of that type.
    pub fn insert_extension<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.handle.insert_extension(value)
    }

    /// The connection's handle (the hub's view of it).
    pub fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }
}
