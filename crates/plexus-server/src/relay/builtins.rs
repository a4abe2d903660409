//! The relay's built-ins: `$provide`, `$services` and the `$watch` stream.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload, RpcError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::directory::Change;
use super::{ProviderEvent, ProviderInfo, Relay};
use crate::conn::ConnectionHandle;
use crate::error::shown;

/// Longest node id or service name accepted.
const MAX_NAME: usize = 128;

#[derive(Deserialize)]
struct ProvideParams {
    node: String,
    services: Vec<String>,
}

#[derive(Serialize)]
struct ProvideResult<'a> {
    node: &'a str,
}

/// One item of `$watch` after the first (the first is the list of providers).
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum WatchItem<'a> {
    Online(&'a ProviderInfo),
    Offline { node: &'a str },
}

fn encode<T: Serialize>(codec: Codec, value: &T) -> Result<Payload, ErrorBody> {
    Payload::encode(codec, value).map_err(|e| RpcError::internal(e).into_body())
}

fn invalid(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::VALIDATION_ERROR, message)
}

/// Checks a node id or service name.
fn valid_name(kind: &str, name: &str) -> Result<(), ErrorBody> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control()) {
        return Err(invalid(format!(
            "a {kind} is 1 to {MAX_NAME} bytes without control characters: `{}`",
            shown(name)
        )));
    }
    Ok(())
}

impl Relay {
    /// `$provide`: `conn` provides `services` as node `node` (replacing what it provided).
    /// With `authenticated`, each service needs the provide permission (see
    /// [`RelayConfig::provide_permission`](super::RelayConfig::provide_permission)).
    pub(crate) fn provide(
        &self,
        conn: &ConnectionHandle,
        params: &Payload,
        authenticated: bool,
    ) -> Result<Payload, ErrorBody> {
        let params: ProvideParams = params
            .decode()
            .map_err(|e| RpcError::invalid_params(&e).into_body())?;
        valid_name("node id", &params.node)?;
        let config = &self.inner.config;
        if params.services.len() > config.max_services {
            return Err(invalid(format!(
                "at most {} services per provider",
                config.max_services
            )));
        }
        for service in &params.services {
            valid_name("service name", service)?;
            if service.contains('.') {
                return Err(invalid(format!(
                    "a service name has no `.`: `{}`",
                    shown(service)
                )));
            }
        }
        if authenticated {
            let any = config.provide_permission.as_str();
            let allowed = conn.with_principal(|principal| {
                principal.can(any)
                    || params
                        .services
                        .iter()
                        .all(|service| principal.can(&format!("{any}:{service}")))
            });
            if !allowed {
                return Err(ErrorBody::new(
                    ErrorCode::FORBIDDEN,
                    format!("providing these services needs the `{any}` permission"),
                ));
            }
        }
        let services: Vec<Arc<str>> = params.services.iter().map(|s| s.as_str().into()).collect();
        {
            let mut providers = self.providers();
            let provided = providers
                .provide(conn, &params.node, services.clone(), config)
                .map_err(RpcError::into_body)?;
            if !provided.events.is_empty() {
                // The other relay nodes see the old entry leave and the new one join.
                let queued = self.publish_change(Change::Withdraw {
                    conn: conn.id().to_owned(),
                }) && self.publish_change(Change::Provide {
                    conn: conn.id().to_owned(),
                    node: params.node.as_str().into(),
                    services,
                });
                if !queued {
                    tracing::warn!(
                        "the relay directory is behind: other nodes may not see a provider"
                    );
                }
            }
            // Announced under the lock, so that a `$watch` starting meanwhile sees each
            // change once: in its first list or as an event.
            self.announce(provided.events);
        }
        tracing::debug!(conn = %conn.id(), node = %params.node, "provider online");
        encode(conn.codec(), &ProvideResult { node: &params.node })
    }

    /// `$services`: the live providers.
    pub(crate) fn list(&self, codec: Codec) -> Result<Payload, ErrorBody> {
        encode(codec, &self.services())
    }

    /// `$watch`: the live providers, then each change. A watcher that falls too far behind
    /// gets `UNAVAILABLE` (watch again) rather than a silent gap.
    pub(crate) fn watch(&self, codec: Codec) -> BoxStream<'static, Result<Payload, ErrorBody>> {
        let (first, events) = {
            let providers = self.providers();
            (providers.list(), self.inner.events.subscribe())
        };
        let first = stream::once(async move { encode(codec, &first) });
        let changes = stream::unfold(Some(events), move |events| async move {
            let mut events = events?;
            match events.recv().await {
                Ok(event) => {
                    let item = match &event {
                        ProviderEvent::Online(info) => encode(codec, &WatchItem::Online(info)),
                        ProviderEvent::Offline(node) => encode(codec, &WatchItem::Offline { node }),
                    };
                    Some((item, Some(events)))
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let error = ErrorBody::new(
                        ErrorCode::UNAVAILABLE,
                        format!("the watch fell {missed} changes behind: watch again"),
                    );
                    Some((Err(error), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        first.chain(changes).boxed()
    }
}
