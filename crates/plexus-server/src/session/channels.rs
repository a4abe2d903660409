//! Channel frames (`join`, `leave`, `pub`) and the built-in requests (`$presence`,
//! `$history`): each becomes one hub operation, answered like a call.

use std::future::Future;

use plexus_protocol::{ErrorBody, ErrorCode, Payload, Position};

use super::Session;
use super::calls::{Spawned, poll_once, reply_frame};
use super::event_loop::Step;
use crate::error::RpcError;
use crate::hub::{Hub, HubError};
use crate::rpc::handler::BoxFuture;

impl Session {
    /// The hub, if this endpoint serves channels (else the call is answered `NOT_FOUND`),
    /// once the call passed its budgets.
    fn channel_call(&mut self, id: u64, publication: bool) -> Option<Hub> {
        self.last_call = self.last_seen;
        if !self.env.hub.has_channels() {
            let message = "channels are not enabled on this endpoint".into();
            self.error(Some(id), ErrorCode::NOT_FOUND, message);
            return None;
        }
        if !self.within_rate(publication, Some(id)) || !self.admit(id, false) {
            return None;
        }
        Some(self.env.hub.clone())
    }

    pub(super) fn join(
        &mut self,
        id: u64,
        channel: String,
        since: Option<Position>,
        filter: Option<Payload>,
    ) -> Step {
        let Some(hub) = self.channel_call(id, false) else {
            return Step::Continue;
        };
        let conn = self.handle.clone();
        // The hub queues the `res` and the missed publications itself, ahead of live ones.
        self.hub_call(id, async move {
            hub.join(&conn, &channel, since.as_ref(), filter.as_ref(), id)
                .await
                .map(|()| None)
        })
    }

    pub(super) fn leave(&mut self, id: u64, channel: String) -> Step {
        let Some(hub) = self.channel_call(id, false) else {
            return Step::Continue;
        };
        let (conn, codec) = (self.handle.clone(), self.codec());
        self.hub_call(id, async move {
            hub.leave(&conn, &channel)
                .await
                .map(|()| Some(Payload::null(codec)))
        })
    }

    pub(super) fn publish(&mut self, id: u64, channel: String, data: Payload) -> Step {
        let Some(hub) = self.channel_call(id, true) else {
            return Step::Continue;
        };
        let (conn, codec) = (self.handle.clone(), self.codec());
        self.hub_call(id, async move {
            let position = hub.client_publish(&conn, &channel, data).await?;
            #[derive(serde::Serialize)]
            struct PubReply<'a> {
                epoch: &'a str,
                offset: u64,
            }
            let reply = PubReply {
                epoch: &position.epoch,
                offset: position.offset,
            };
            Payload::encode(codec, &reply)
                .map(Some)
                .map_err(|e| HubError::from(RpcError::internal(e).into_body()))
        })
    }

    /// A built-in request (`$presence`, `$history`), already admitted.
    pub(super) fn builtin(&mut self, id: u64, method: String, data: Payload) -> Step {
        let (hub, conn) = (self.env.hub.clone(), self.handle.clone());
        self.hub_call(id, async move {
            hub.builtin(&conn, &method, &data).await.map(Some)
        })
    }

    /// Runs a hub operation for the client's call `id`: inline when it completes at once
    /// (always, on the memory engine), otherwise as a spawned call that `cancel` does not
    /// stop (a join half done must finish or undo itself). `Ok(None)` means the hub has
    /// answered the call itself.
    fn hub_call(
        &mut self,
        id: u64,
        future: impl Future<Output = Result<Option<Payload>, HubError>> + Send + 'static,
    ) -> Step {
        let mut future: BoxFuture<Result<Option<Payload>, ErrorBody>> =
            Box::pin(async move { future.await.map_err(ErrorBody::from) });
        match poll_once(&mut future) {
            Some(reply) => {
                // What the operation queued (our own `msg` when publishing to a channel we
                // joined, a join's `res`) goes out first, as for any other subscriber.
                self.take_queued();
                if let Some(reply) = reply.transpose() {
                    self.reply(id, reply);
                }
            }
            None => {
                let call = Spawned {
                    state: None,
                    credit: None,
                    needs: None,
                    abortable: false,
                };
                self.spawn_call(id, Some(call), move |_| {
                    Box::pin(async move {
                        let reply = future.await.transpose()?;
                        Some(reply_frame(id, reply))
                    })
                });
            }
        }
        Step::Continue
    }
}
