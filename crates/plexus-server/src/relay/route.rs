//! Routing a call to a provider, and relaying what comes back.
//!
//! A call of `<Service>.<method>` goes to the provider of `<Service>` whose turn it is (one
//! cursor per service), or to the node its `node` field pins. A request to a provider
//! connected here is forwarded ([`ConnectionHandle::forward`]): the provider's session
//! writes the answer for the caller as it reads it, with no task per call. A stream becomes
//! a call from the relay to the provider's connection, made through its `ConnectionHandle`,
//! so its items (within the credit the relay's stream grants as the caller consumes them)
//! and a `cancel` when the caller stops waiting flow as they do for any call the server
//! makes. Values keep their bytes; a payload crosses codecs only when the caller and the
//! provider speak different ones.
//!
//! A provider connected to another relay node of the cluster is reached through the hub:
//! requests, notifications and streams cross nodes as node messages (their values as
//! JSON), a stream's items within the credit the caller's consumption grants, as here.
//!
//! `SERVICE_OFFLINE` says no provider took the call: its data is `{"started": false}` when
//! none was live (the call can be retried anywhere), `{"node": .., "started": true}` when
//! the provider's connection ended (or its node left the cluster) while it had the call.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use plexus_protocol::{ErrorBody, ErrorCode, Payload, RpcError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Relay;
use super::providers::Target;
use crate::conn::{ConnectionHandle, Forwarded};
use crate::error::{CallError, shown};
use crate::hub::{Hub, RemoteStream};
use crate::metrics::CallMeter;

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

/// What a caller hears when its provider's connection ended with its request.
fn provider_gone(method: &str, node: &str) -> ErrorBody {
    offline(method, Some(node))
}

/// Where a relayed request went.
pub(crate) enum Forward {
    /// To a provider connected here, under its id `.1` there: the answer will be queued for
    /// the caller as the call's last frame.
    Waiting(ConnectionHandle, u64),
    /// Answered at once, the answer queued for the caller as the call's last frame.
    Answered,
    /// No provider took it: the caller's answer.
    Refused(ErrorBody),
    /// To a provider on another node: resolves with the answer.
    Elsewhere(BoxFuture<'static, Reply>),
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

    /// Relays call `id` of `caller` (its sequence number `seq` in the caller's session), a
    /// request, timed by `meter`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &self,
        caller: &ConnectionHandle,
        id: u64,
        seq: u64,
        method: String,
        data: Payload,
        node: Option<String>,
        meter: CallMeter,
    ) -> Forward {
        let target = match self.route(&method, node.as_deref()) {
            Ok(target) => target,
            Err(error) => {
                meter.finish(Err(&error.code));
                return Forward::Refused(error);
            }
        };
        let timeout = self.inner.config.call_timeout;
        match target {
            Target::Local(node, provider) => {
                let now = tokio::time::Instant::now();
                // A timeout too large to add is no timeout: a century is as good.
                let deadline = now
                    .checked_add(timeout)
                    .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
                let caller = caller.clone();
                let forwarded = provider.forward(method, data, |method| Forwarded {
                    caller,
                    id,
                    seq,
                    method,
                    node,
                    gone: provider_gone,
                    meter,
                    deadline,
                });
                match forwarded {
                    Some(id) => Forward::Waiting(provider, id),
                    None => Forward::Answered,
                }
            }
            Target::Remote(node, conn, gone) => {
                let hub = self.hub().cloned();
                Forward::Elsewhere(Box::pin(async move {
                    let hub = hub?;
                    let reply = tokio::select! {
                        answer = hub.request::<Payload>(&conn, &method, data, timeout) => {
                            answer.map_err(|e| remote_failed(&method, &node, e.into_body()))
                        }
                        () = gone.cancelled() => Err(offline(&method, Some(&node))),
                    };
                    meter.finish_with(&reply);
                    reply
                }))
            }
        }
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
