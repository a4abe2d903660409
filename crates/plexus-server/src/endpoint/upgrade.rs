//! The upgrade: from an HTTP request to a session, after the doors' checks (origin,
//! connection limits, a credential found in the request).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use plexus_protocol::Codec;

use super::Server;
use crate::auth::{AuthRequest, credential_from_request};
use crate::conn::{OutboundQueue, SharedSocket};
use crate::metrics::HandshakeFailure;
use crate::principal::Principal;
use crate::session::{self, Accepted};

impl Server {
    /// Upgrades one HTTP request to a plexus connection; for use from your own axum handler.
    pub async fn upgrade(&self, request: Request) -> Response {
        if self.inner.shutdown.is_cancelled() {
            crate::metrics::handshake_failed(HandshakeFailure::Draining);
            return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").into_response();
        }
        let (mut parts, _body) = request.into_parts();
        let offered = parts
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let chosen = offered
            .as_deref()
            .and_then(|list| Codec::negotiate(Some(list)));
        // The upgrade itself stays ours, so that the connection's socket can be shared with
        // publishers (`conn::SharedSocket`); yawc answers the handshake (accept key, agreed
        // extensions) holding a stand-in.
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            crate::metrics::handshake_failed(HandshakeFailure::BadUpgrade);
            return (
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request",
            )
                .into_response();
        };
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        let upgrade = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(status) => {
                crate::metrics::handshake_failed(HandshakeFailure::BadUpgrade);
                return (status, "expected a WebSocket upgrade request").into_response();
            }
        };
        // Against cross-site WebSocket hijacking: a browser page from another origin.
        if !self.inner.config.origins.check(&parts.headers) {
            crate::metrics::handshake_failed(HandshakeFailure::Origin);
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        // Without the peer's address (an app served without connect info) every client
        // counts as one address.
        let ip = remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let slot = match self.inner.limiter.try_acquire(ip) {
            Ok(slot) => slot,
            Err(refusal) => {
                crate::metrics::handshake_failed(HandshakeFailure::Limit);
                return (refusal.http_status(), refusal.to_string()).into_response();
            }
        };
        // Credentials in the upgrade are checked before upgrading; without any, the client
        // may still authenticate in band with `hello`.
        let env = &self.inner.env;
        let principal = match &env.admission {
            None => Some(Principal::anonymous()),
            Some(admission) => {
                match credential_from_request(&parts.headers, parts.uri.query(), &admission.cookie)
                {
                    None => None,
                    Some(credential) => {
                        let request = AuthRequest::new(&parts.headers)
                            .with_credential(Some(&credential))
                            .with_remote(remote);
                        match admission.authenticate(request).await {
                            Ok(principal) => Some(principal),
                            Err(e) => {
                                crate::metrics::handshake_failed(HandshakeFailure::Auth);
                                return (e.http_status(), e.message().to_owned()).into_response();
                            }
                        }
                    }
                }
            }
        };
        let options = self.inner.config.ws_options();
        let (mut response, _stand_in) = match upgrade.upgrade(options.clone()) {
            Ok(pair) => pair,
            Err(e) => {
                crate::metrics::handshake_failed(HandshakeFailure::BadUpgrade);
                return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
            }
        };
        let extensions = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(codec) = chosen {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(codec.subprotocol()),
            );
        }
        let accepted = Accepted {
            codec: chosen.unwrap_or(Codec::Json),
            remote,
            query: parts.uri.query().map(str::to_owned),
            headers: detach_headers(&parts.headers),
            principal,
            slot,
        };
        let env = self.inner.env.clone();
        let outbound_queue = self.inner.config.limits.outbound_queue;
        let handshake_timeout = self.inner.config.limits.handshake_timeout;
        // A compressed connection sends small messages uncompressed (yawc's threshold), and
        // only those may be written directly.
        let max_direct_len = match extensions {
            Some(_) => self.inner.config.compression_threshold.saturating_sub(1),
            None => usize::MAX,
        };
        self.inner.tasks.spawn(async move {
            let upgraded = match tokio::time::timeout(handshake_timeout, on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => return tracing::debug!(error = %e, "upgrade failed"),
                Err(_) => {
                    crate::metrics::handshake_failed(HandshakeFailure::UpgradeTimeout);
                    return tracing::debug!(
                        "upgrade did not complete within the handshake timeout"
                    );
                }
            };
            let queue = Arc::new(OutboundQueue::new(outbound_queue));
            let socket = SharedSocket::new(
                queue.clone(),
                Box::new(hyper_util::rt::TokioIo::new(upgraded)),
                accepted.codec.is_binary(),
                max_direct_len,
            );
            match yawc::WebSocket::from_stream_with_extensions(
                socket,
                yawc::Role::Server,
                extensions.as_deref(),
                options,
            ) {
                Ok(ws) => session::run(ws, queue, env, accepted).await,
                Err(e) => tracing::debug!(error = %e, "cannot set up the agreed extensions"),
            }
        });
        response.map(axum::body::Body::new)
    }
}

/// Copies the headers a handler may want into allocations of their own. hyper's header
/// values are slices of its 8-16 KiB read buffer, so keeping them as they are would keep that
/// whole buffer alive for the life of the connection. The headers of the WebSocket handshake
/// itself mean nothing once it is done and are left out.
fn detach_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    const HANDSHAKE: [header::HeaderName; 5] = [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ];
    let kept = |name: &header::HeaderName| !HANDSHAKE.contains(name);
    // Sized to what is kept: a map grown from empty holds room for 32 headers, which is
    // most of its size on every connection.
    let mut detached = http::HeaderMap::with_capacity(headers.keys().filter(|n| kept(n)).count());
    for (name, value) in headers {
        if !kept(name) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            detached.append(name.clone(), value);
        }
    }
    detached
}
