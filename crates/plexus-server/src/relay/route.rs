//! Routing a call to a provider, and relaying what comes back.
//!
//! A call of `<Service>.<method>` goes to the provider of `<Service>` whose turn it is (one
//! cursor per service), or to the node its `node` field pins. It becomes a call from the
//! relay to that provider's connection, made through its `ConnectionHandle`, so the
//! provider's answer, its items (within the credit the relay's stream grants as the caller
//! consumes them) and a `cancel` when the caller stops waiting all flow as they do for any
//! call the server makes. Values keep their bytes; a payload crosses codecs only when the
//! caller and the provider speak different ones.
//!
//! `SERVICE_OFFLINE` says no provider took the call: its data is `{"started": false}` when
//! none was live (the call can be retried anywhere), `{"node": .., "started": true}` when
//! the provider's connection ended while it had the call.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use plexus_protocol::{ErrorBody, ErrorCode, Payload, RpcError};
use serde::Serialize;

use super::Relay;
use crate::conn::ConnectionHandle;
use crate::error::{CallError, shown};

/// A relayed call's outcome.
type Reply = Result<Payload, ErrorBody>;

#[derive(Serialize)]
struct Offline<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    started: bool,
}

/// `SERVICE_OFFLINE` for `method`: no provider (`node` `None`), or the provider `node`
/// gone while it had the call.
fn offline(method: &str, node: Option<&str>) -> ErrorBody {
    let message = match node {
        None => format!("no provider serves `{}`", shown(method)),
        Some(node) => format!(
            "provider `{}` went offline during `{}`",
            shown(node),
            shown(method)
        ),
    };
    RpcError::new(ErrorCode::SERVICE_OFFLINE, message)
        .with_data(&Offline {
            node,
            started: node.is_some(),
        })
        .into_body()
}

/// The service a method belongs to: what comes before its first `.`.
fn service_of(method: &str) -> &str {
    method
        .split_once('.')
        .map_or(method, |(service, _)| service)
}

/// A failed call to a provider, as its caller sees it.
fn provider_failed(method: &str, node: &str, error: CallError) -> ErrorBody {
    if error.is_closed() {
        offline(method, Some(node))
    } else {
        error.into_body()
    }
}

impl Relay {
    /// The provider for a call of `method`, pinned to `node` when given.
    fn route(
        &self,
        method: &str,
        node: Option<&str>,
    ) -> Result<(Arc<str>, ConnectionHandle), ErrorBody> {
        self.providers()
            .pick(service_of(method), node)
            .ok_or_else(|| offline(method, None))
    }

    /// Relays a request; resolves with the provider's answer.
    pub(crate) fn request(
        &self,
        method: String,
        data: Payload,
        node: Option<String>,
    ) -> BoxFuture<'static, Reply> {
        let routed = self.route(&method, node.as_deref());
        let timeout = self.inner.config.call_timeout;
        Box::pin(async move {
            let (node, provider) = routed?;
            provider
                .request_timeout::<Payload>(&method, data, timeout)
                .await
                .map_err(|e| provider_failed(&method, &node, e))
        })
    }

    /// Relays a stream; resolves once the provider's stream is open (its items follow).
    pub(crate) fn stream(
        &self,
        method: String,
        data: Payload,
        node: Option<String>,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Reply>, ErrorBody>> {
        let routed = self.route(&method, node.as_deref());
        Box::pin(async move {
            let (node, provider) = routed?;
            let items = provider
                .stream::<Payload>(&method, data)
                .await
                .map_err(|e| provider_failed(&method, &node, e))?;
            let method: Arc<str> = method.into();
            Ok(items
                .map(move |item| item.map_err(|e| provider_failed(&method, &node, e)))
                .boxed())
        })
    }

    /// Relays a notification.
    pub(crate) fn notify(
        &self,
        method: &str,
        data: Payload,
        node: Option<&str>,
    ) -> Result<(), ErrorBody> {
        let (node, provider) = self.route(method, node)?;
        provider
            .notify_raw(method, data)
            .map_err(|e| provider_failed(method, &node, e))
    }
}
