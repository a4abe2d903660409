//! A session's side of relaying: calls its router does not serve (or that pin a provider
//! with `node`) go to the relay, when the server is one, and so do `$provide`, `$services`
//! and `$watch`.

use std::sync::Arc;

use plexus_protocol::{Frame, Payload};
use tokio::sync::Semaphore;

use super::Session;
use super::calls::{Spawned, pump, reply_frame};
use super::dispatch::metered_stream;
use super::event_loop::Step;
use crate::relay::Forward;

impl Session {
    /// Whether a call of `method` (pinned to `node`, maybe) goes to the relay.
    pub(super) fn relays(&self, method: &str, node: Option<&str>) -> bool {
        self.env.relay.is_some() && (node.is_some() || !self.handler.router().contains(method))
    }

    /// A relay built-in request (`$provide`, `$services`), if `method` is one and the
    /// server relays; answered at once.
    pub(super) fn relay_builtin(&mut self, id: u64, method: &str, data: &Payload) -> bool {
        let Some(relay) = &self.env.relay else {
            return false;
        };
        let reply = match method {
            "$provide" => relay.provide(&self.handle, data, self.env.admission.is_some()),
            "$services" => relay.list(self.codec()),
            _ => return false,
        };
        self.reply(id, reply);
        true
    }

    /// Relays a request: to a provider connected here with no task of its own (the
    /// provider's session queues the answer for this one), elsewhere on a task.
    pub(super) fn relay_request(
        &mut self,
        id: u64,
        method: String,
        data: Payload,
        node: Option<String>,
    ) -> Step {
        let Some(relay) = self.env.relay.clone() else {
            return Step::Continue;
        };
        let meter = crate::metrics::server().relayed().start();
        let seq = self.calls.next_seq();
        match relay.request(&self.handle, id, seq, method, data, node, meter) {
            Forward::Waiting(provider, provider_id) => {
                self.calls.forwarded(id, seq, Some((provider, provider_id)));
            }
            Forward::Answered => self.calls.forwarded(id, seq, None),
            Forward::Refused(error) => self.reply(id, Err(error)),
            Forward::Elsewhere(answer) => {
                let call = Spawned {
                    state: None,
                    credit: None,
                    needs: None,
                    abortable: true,
                };
                self.spawn_call_as(
                    id,
                    seq,
                    Some(call),
                    Box::pin(async move { Some(reply_frame(id, answer.await)) }),
                );
            }
        }
        Step::Continue
    }

    /// Relays a stream (`$watch` included), with the caller's credit.
    pub(super) fn relay_stream(
        &mut self,
        id: u64,
        method: String,
        data: Payload,
        credit: Option<u32>,
        node: Option<String>,
    ) -> Step {
        let Some(relay) = self.env.relay.clone() else {
            return Step::Continue;
        };
        let codec = self.codec();
        let start = if method == "$watch" {
            let watching = relay.watch(codec);
            Box::pin(async move { Ok(watching) }) as _
        } else {
            relay.stream(method, data, node)
        };
        let credit = credit.map(|n| Arc::new(Semaphore::new(n as usize)));
        let (queue, items) = (self.queue().clone(), credit.clone());
        let call = Spawned {
            state: None,
            credit,
            needs: None,
            abortable: true,
        };
        let metered = crate::metrics::server().relayed().start();
        self.spawn_call(id, Some(call), move |seq| {
            Box::pin(metered_stream(
                metered,
                pump(start, codec, id, seq, queue, items),
            ))
        });
        Step::Continue
    }

    /// Relays a notification; a failure (no provider) is an `err` without id.
    pub(super) fn relay_notify(&mut self, method: &str, data: Payload, node: Option<&str>) -> Step {
        let Some(relay) = &self.env.relay else {
            return Step::Continue;
        };
        let result = relay.notify(method, data, node);
        crate::metrics::server()
            .relayed()
            .count_unrun(result.as_ref().map(|_| ()).map_err(|e| &e.code));
        if let Err(error) = result {
            self.write_frame(&Frame::Err { id: None, error });
        }
        Step::Continue
    }
}
