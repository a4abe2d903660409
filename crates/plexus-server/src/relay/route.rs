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
//! A provider connected to another relay node of the cluster is reached through the hub:
//! requests, notifications and streams cross nodes as node messages (their values as
//! JSON), a stream's items within the credit the caller's consumption grants, as here.
//!
//! `SERVICE_OFFLINE` says no provider took the call: its data is `{"started": false}` when
//! none was live (the call can be retried anywhere), `{"node": .., "started": true}` when
//! the provider's connection ended (or its node left the cluster) while it had the call.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use plexus_protocol::{ErrorBody, ErrorCode, Payload, RpcError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::providers::Target;
use crate::error::{CallError, shown};
use crate::hub::{Hub, RemoteStream};

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

/// A failed call to a provider on another node, as its caller sees it: the hub's
/// `UNAVAILABLE` (that node or the broker gone) means the provider went offline.
fn remote_failed(method: &str, node: &str, error: ErrorBody) -> ErrorBody {
    if error.code == ErrorCode::UNAVAILABLE {
        offline(method, Some(node))
    } else {
        error
    }
}

/// A remote provider's items, until it leaves the directory: then `SERVICE_OFFLINE`.
fn until_gone(
    items: RemoteStream,
    gone: CancellationToken,
    method: String,
    node: Arc<str>,
) -> BoxStream<'static, Reply> {
    let state = Some((items, gone, Arc::<str>::from(method), node));
    futures_util::stream::unfold(state, |state| async move {
        let (mut items, gone, method, node) = state?;
        tokio::select! {
            item = items.next() => {
                let item = item?.map_err(|e| remote_failed(&method, &node, e));
                let next = item.is_ok().then_some((items, gone, method, node));
                Some((item, next))
            }
            () = gone.cancelled() => Some((Err(offline(&method, Some(&node))), None)),
        }
    })
    .boxed()
}

impl Relay {
    /// The provider for a call of `method`, pinned to `node` when given.
    fn route(&self, method: &str, node: Option<&str>) -> Result<Target, ErrorBody> {
        self.providers()
            .pick(service_of(method), node)
            .ok_or_else(|| offline(method, None))
    }

    fn hub(&self) -> Result<&Hub, ErrorBody> {
        self.inner
            .hub
            .get()
            .ok_or_else(|| ErrorBody::new(ErrorCode::UNAVAILABLE, "the relay is not attached"))
    }

    /// Relays a request; resolves with the provider's answer.
    pub(crate) fn request(
        &self,
        method: String,
        data: Payload,
        node: Option<String>,
    ) -> BoxFuture<'static, Reply> {
        let routed = self.route(&method, node.as_deref());
        let hub = self.hub().cloned();
        let timeout = self.inner.config.call_timeout;
        Box::pin(async move {
            match routed? {
                Target::Local(node, provider) => provider
                    .request_timeout::<Payload>(&method, data, timeout)
                    .await
                    .map_err(|e| provider_failed(&method, &node, e)),
                Target::Remote(node, conn, gone) => {
                    let hub = hub?;
                    tokio::select! {
                        answer = hub.request::<Payload>(&conn, &method, data, timeout) => {
                            answer.map_err(|e| remote_failed(&method, &node, e.into_body()))
                        }
                        () = gone.cancelled() => Err(offline(&method, Some(&node))),
                    }
                }
            }
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
        let hub = self.hub().cloned();
        let timeout = self.inner.config.call_timeout;
        Box::pin(async move {
            match routed? {
                Target::Local(node, provider) => {
                    let items = provider
                        .stream::<Payload>(&method, data)
                        .await
                        .map_err(|e| provider_failed(&method, &node, e))?;
                    let method: Arc<str> = method.into();
                    Ok(items
                        .map(move |item| item.map_err(|e| provider_failed(&method, &node, e)))
                        .boxed())
                }
                Target::Remote(node, conn, gone) => {
                    let items = hub?
                        .stream_elsewhere(&conn, &method, data, timeout)
                        .await
                        .map_err(|e| remote_failed(&method, &node, e.into_body()))?;
                    Ok(until_gone(items, gone, method, node))
                }
            }
        })
    }

    /// Relays a notification.
    pub(crate) fn notify(
        &self,
        method: &str,
        data: Payload,
        node: Option<&str>,
    ) -> Result<(), ErrorBody> {
        match self.route(method, node)? {
            Target::Local(node, provider) => provider
                .notify_raw(method, data)
                .map_err(|e| provider_failed(method, &node, e)),
            Target::Remote(node, conn, _) => {
                let hub = self.hub()?.clone();
                let method = method.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = hub.notify(&conn, &method, &data).await {
                        tracing::debug!(node = %node, error = %e, "a relayed notification was not delivered");
                    }
                });
                Ok(())
            }
        }
    }
}
