//! Raw socket endpoints on the HTTP side: their routes (exact and prefix paths), and the
//! upgrade with the checks every connection passes plus the endpoint's own (a credential
//! for a foreign client, the endpoint's permission, the subprotocol).

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, header};
use plexus_protocol::Codec;

use super::Server;
use super::serve::LocalAddr;
use super::upgrade::{Admitted, auth_refused, detach_headers};
use crate::auth::{AuthError, CredentialSource};
use crate::conn::{ConnectionInfo, RawInfo};
use crate::raw::{PathPattern, RawEndpoint, RawKind, RawStart, Serve, refusal};

/// A raw endpoint as the server holds it, checked.
pub(crate) struct ServedRaw {
    pub(crate) endpoint: RawEndpoint,
    pub(crate) pattern: PathPattern,
    pub(crate) handlers: Arc<dyn Serve>,
}

impl Server {
    /// An axum router serving every raw socket endpoint given to `ServerBuilder::raw`;
    /// merge it into your app beside [`Server::route`]. A path given to two routers makes
    /// axum panic when they are merged.
    pub fn raw_routes(&self) -> axum::Router {
        let mut router = axum::Router::new();
        for (index, served) in self.inner.raw.iter().enumerate() {
            for path in served.pattern.routes() {
                let server = self.clone();
                let upgrade =
                    move |request: Request| async move { server.upgrade_raw(index, request).await };
                router = router.route(&path, get(upgrade));
            }
        }
        router
    }

    async fn upgrade_raw(&self, index: usize, request: Request) -> Response {
        let served = &self.inner.raw[index];
        let endpoint = &served.endpoint;
        let offered = request
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        // A handshaked socket speaks plexus's codecs for its handshake; a foreign one agrees
        // on the first subprotocol the client offers that the endpoint speaks.
        let (codec, subprotocol) = match endpoint.kind {
            RawKind::Handshaked => {
                let chosen = offered.and_then(|list| Codec::negotiate(Some(list)));
                (
                    chosen.unwrap_or(Codec::Json),
                    chosen.map(|codec| codec.subprotocol().to_owned()),
                )
            }
            _ => (
                Codec::Json,
                offered.and_then(|o| agree(o, &endpoint.subprotocols)),
            ),
        };
        // The upgrade reads the sources a request can carry (the `hello` is looked at later).
        let Admitted { arrival, upgrade } = match self.admit(request, &endpoint.credentials).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let authenticates = self.inner.env.admission.is_some();
        if arrival.principal.is_none() && endpoint.kind == RawKind::Foreign && authenticates {
            let refusal = AuthError::not_authorized(
                "a credential is needed in the upgrade request (header, cookie or query)",
            );
            return auth_refused(&refusal);
        }
        if let (Some(permission), Some(principal)) = (&endpoint.permission, &arrival.principal)
            && let Some(refusal) = refusal(principal, permission)
        {
            return auth_refused(&refusal);
        }
        let parts = &arrival.parts;
        let info = ConnectionInfo {
            id: crate::session::new_connection_id(),
            codec,
            remote: arrival.remote,
            headers: detach_headers(&parts.headers),
            query: parts.uri.query().map(str::to_owned),
            raw: Some(Box::new(RawInfo {
                path: parts.uri.path().into(),
                local: parts.extensions.get::<LocalAddr>().map(|local| local.0),
                subprotocol: subprotocol.as_deref().map(Into::into),
            })),
        };
        let header = subprotocol.and_then(|name| HeaderValue::from_str(&name).ok());
        let handlers = served.handlers.clone();
        let start = RawStart {
            env: self.inner.env.clone(),
            info,
            principal: arrival.principal,
            slot: arrival.slot,
            kind: endpoint.kind,
            permission: endpoint.permission.clone(),
            hello_credential: endpoint.credentials.contains(&CredentialSource::Hello),
            message_rate: endpoint.message_rate.or(self.inner.config.limits.call_rate),
        };
        self.start(upgrade, header, false, move |ws, queue| {
            handlers.serve(start, ws, queue)
        })
    }
}

/// The first of the client's `offered` subprotocols (a comma-separated list, in its order of
/// preference) that the endpoint speaks.
fn agree(offered: &str, spoken: &[String]) -> Option<String> {
    offered
        .split(',')
        .map(str::trim)
        .find(|name| spoken.iter().any(|s| s == name))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::agree;

    #[test]
    fn the_first_offered_subprotocol_spoken_is_agreed() {
        let spoken = ["tty".to_owned(), "binary".to_owned()];
        assert_eq!(agree("x, binary, tty", &spoken).as_deref(), Some("binary"));
        assert_eq!(agree("tty", &spoken).as_deref(), Some("tty"));
        assert_eq!(agree("x,y", &spoken), None);
    }
}
