//! The upgrade: from an HTTP request to a session, after the doors' checks (origin,
//! connection limits, a credential found in the request).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use plexus_protocol::Codec;

use super::Server;
use super::held_upgrade::UpgradeHold;
use crate::auth::{
    AuthError, AuthRequest, CredentialSource, REQUEST_SOURCES, credential_from_sources,
};
use crate::conn::{OutboundQueue, SharedSocket, Socket};
use crate::guard::ConnectionSlot;
use crate::metrics::HandshakeFailure;
use crate::principal::Principal;
use crate::session::{self, Accepted};

/// An upgrade request that passed the doors (shutdown, origin, connection limits, a
/// credential in the request).
pub(crate) struct Admitted {
    pub(crate) arrival: Arrival,
    pub(crate) upgrade: PendingUpgrade,
}

/// What the doors learned about a request.
pub(crate) struct Arrival {
    pub(crate) parts: http::request::Parts,
    pub(crate) remote: Option<SocketAddr>,
    /// The connection's place under the connection limits.
    pub(crate) slot: ConnectionSlot,
    /// The principal of the request's credential; `None` when it carried none (and the
    /// server authenticates).
    pub(crate) principal: Option<Principal>,
}

/// The upgrade, not yet answered.
pub(crate) struct PendingUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    upgrade: yawc::IncomingUpgrade,
    /// Armed as the upgrade is answered: the `101` then waits to leave with the session's
    /// first write (absent when the request did not come through `serve`).
    hold: Option<UpgradeHold>,
}

impl Server {
    /// Upgrades one HTTP request to a plexus connection; for use from your own axum handler.
    pub async fn upgrade(&self, request: Request) -> Response {
        let offered = request
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        // No subprotocol offered, none answered: JSON.
        let chosen = offered.and_then(|list| Codec::negotiate(Some(list)));
        let Admitted { arrival, upgrade } = match self.admit(request, &REQUEST_SOURCES).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let accepted = Accepted {
            codec: chosen.unwrap_or(Codec::Json),
            remote: arrival.remote,
            query: arrival.parts.uri.query().map(str::to_owned),
            headers: detach_headers(&arrival.parts.headers),
            principal: arrival.principal,
            slot: arrival.slot,
        };
        let binary = accepted.codec.is_binary();
        let subprotocol = chosen.map(|codec| HeaderValue::from_static(codec.subprotocol()));
        let env = self.inner.env.clone();
        self.start(upgrade, subprotocol, binary, move |ws, queue| {
            session::run(ws, queue, env, accepted)
        })
    }

    /// The doors every upgrade passes, in the order PROTOCOL.md gives: not shutting down
    /// (503), a WebSocket upgrade (400), the origin (403), the connection limits (503, 429),
    /// then the credential found in the request at one of `sources` (401, 403).
    pub(crate) async fn admit(
        &self,
        request: Request,
        sources: &[CredentialSource],
    ) -> Result<Admitted, Response> {
        if self.inner.shutdown.is_cancelled() {
            crate::metrics::handshake_failed(HandshakeFailure::Draining);
            return Err(
                (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").into_response()
            );
        }
        let (mut parts, _body) = request.into_parts();
        // The upgrade itself stays ours, so that the connection's socket can be shared with
        // publishers (`conn::SharedSocket`); yawc answers the handshake (accept key, agreed
        // extensions) holding a stand-in.
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            crate::metrics::handshake_failed(HandshakeFailure::BadUpgrade);
            return Err(bad_upgrade(StatusCode::BAD_REQUEST));
        };
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        if self.inner.config.compression != crate::config::Compression::Off {
            super::offer::narrow_deflate_offers(&mut parts.headers);
        }
        let upgrade = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(status) => {
                crate::metrics::handshake_failed(HandshakeFailure::BadUpgrade);
                return Err(bad_upgrade(status));
            }
        };
        // Against cross-site WebSocket hijacking: a browser page from another origin.
        if !self.inner.config.origins.check(&parts.headers) {
            crate::metrics::handshake_failed(HandshakeFailure::Origin);
            return Err((StatusCode::FORBIDDEN, "origin not allowed").into_response());
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
                return Err((refusal.http_status(), refusal.to_string()).into_response());
            }
        };
        // Credentials in the upgrade are checked before upgrading; without any, a protocol
        // client may still authenticate in band with `hello`.
        let principal = match &self.inner.env.admission {
            None => Some(Principal::anonymous()),
            Some(admission) => {
                let credential = credential_from_sources(
                    &parts.headers,
                    parts.uri.query(),
                    &admission.cookie,
                    sources,
                );
                match credential {
                    None => None,
                    Some(credential) => {
                        let request = AuthRequest::new(&parts.headers)
                            .with_credential(Some(&credential))
                            .with_remote(remote);
                        match admission.authenticate(request).await {
                            Ok(principal) => Some(principal),
                            Err(e) => return Err(auth_refused(&e)),
                        }
                    }
                }
            }
        };
        let hold = parts.extensions.remove::<UpgradeHold>();
        Ok(Admitted {
            arrival: Arrival {
                parts,
                remote,
                slot,
                principal,
            },
            upgrade: PendingUpgrade {
                on_upgrade,
                upgrade,
                hold,
            },
        })
    }

    /// Answers the upgrade (with `subprotocol`, if any) and starts the connection's task:
    /// once the socket is upgraded, `run` serves it. Data frames written directly to it go
    /// out as binary messages when `binary`. What `run` keeps of the request should be
    /// copied out before (see `detach_headers`): the request head is not kept.
    pub(crate) fn start<F, Fut>(
        &self,
        pending: PendingUpgrade,
        subprotocol: Option<HeaderValue>,
        binary: bool,
        run: F,
    ) -> Response
    where
        F: FnOnce(Socket, Arc<OutboundQueue>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let options = self.inner.config.ws_options();
        let (mut response, _stand_in) = match pending.upgrade.upgrade(options.clone()) {
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
        if let Some(subprotocol) = subprotocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
        }
        let outbound_queue = self.inner.config.limits.outbound_queue;
        let handshake_timeout = self.inner.config.limits.handshake_timeout;
        // A compressed connection sends small messages uncompressed (yawc's threshold), and
        // only those may be written directly.
        let max_direct_len = match extensions {
            Some(_) => self.inner.config.compression_threshold.saturating_sub(1),
            None => usize::MAX,
        };
        let on_upgrade = pending.on_upgrade;
        let tasks = self.inner.tasks.clone();
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
                binary,
                max_direct_len,
            );
            match yawc::WebSocket::from_stream_with_extensions(
                socket,
                yawc::Role::Server,
                extensions.as_deref(),
                options,
            ) {
                // A task of its own, not awaited here: this one's room (the upgrade's timer,
                // `run` and what it captured) would otherwise stay with the connection for
                // its whole life.
                Ok(ws) => drop(tasks.spawn(run(ws, queue))),
                Err(e) => tracing::debug!(error = %e, "cannot set up the agreed extensions"),
            }
        });
        if let Some(hold) = pending.hold {
            hold.arm();
        }
        response.map(axum::body::Body::new)
    }
}

fn bad_upgrade(status: StatusCode) -> Response {
    (status, "expected a WebSocket upgrade request").into_response()
}

/// The HTTP answer to a credential refused at the upgrade: 401 or 403 with the reason.
pub(crate) fn auth_refused(error: &AuthError) -> Response {
    crate::metrics::handshake_failed(HandshakeFailure::Auth);
    (error.http_status(), error.message().to_owned()).into_response()
}

/// Copies the headers a handler may want into allocations of their own. hyper's header
/// values are slices of its 8-16 KiB read buffer, so keeping them as they are would keep that
/// whole buffer alive for the life of the connection. The headers of the WebSocket handshake
/// itself mean nothing once it is done and are left out.
pub(crate) fn detach_headers(headers: &http::HeaderMap) -> http::HeaderMap {
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
