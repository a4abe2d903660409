//! From a frame to a call: decode, check the budgets (bad frames, rates, calls in flight),
//! look the method up with its permission, and start the handler — or route the client's
//! answer to a call the server made.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::{CloseCode, ErrorBody, ErrorCode, Frame, Payload};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::Session;
use super::calls::{Spawned, guarded, panicked, poll_once, pump, reply_frame};
use super::event_loop::Step;
use crate::conn::Inbound;
use crate::error::shown;
use crate::metrics::{CallMeter, MethodMeter, OpenStream};
use crate::rpc::handler::{CallParts, Started};
use crate::rpc::router::Method;

/// A method a connection may call, and the permission that allowed it (if it needs one).
type Allowed = (Method, Option<Arc<str>>, Arc<MethodMeter>);

/// The bad frames of the last minute.
#[derive(Default)]
pub(super) struct BadFrames {
    seen: VecDeque<Instant>,
}

impl BadFrames {
    /// Counts one; whether more than `per_minute` came within a minute.
    fn exceeded(&mut self, per_minute: u32) -> bool {
        let now = Instant::now();
        while self
            .seen
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.seen.pop_front();
        }
        self.seen.push_back(now);
        self.seen.len() > per_minute as usize
    }
}

impl Session {
    /// A frame read from the socket.
    pub(super) fn inbound(&mut self, frame: yawc::Frame) -> Step {
        self.last_seen = Instant::now();
        let (payload, binary) = match Inbound::of(frame) {
            Inbound::Message { payload, binary } => (payload, binary),
            Inbound::Control => return Step::Continue,
            Inbound::PeerClosed(code) => return Step::PeerClosed(code),
            Inbound::Ended(reason) => return Step::Ended(reason),
        };
        let metrics = crate::metrics::server();
        metrics.messages_received.increment(1);
        metrics.bytes_received.increment(payload.len() as u64);
        if binary != self.codec().is_binary() {
            let message = if binary {
                "binary message on the JSON protocol (plexus.v1.json takes text messages)"
            } else {
                "text message on the MessagePack protocol (plexus.v1.msgpack takes binary messages)"
            };
            return self.bad_frame(None, message.into());
        }
        match self.codec().decode(payload) {
            Ok(frame) => self.dispatch(frame),
            Err(e) => self.bad_frame(e.id(), e.message().to_owned()),
        }
    }

    /// Answers a frame that cannot be served with `BAD_FRAME`; too many close the
    /// connection with 4029.
    pub(super) fn bad_frame(&mut self, id: Option<u64>, message: String) -> Step {
        if self
            .bad_frames
            .exceeded(self.env.limits.max_bad_frames_per_minute)
        {
            return Step::Close(CloseCode::TOO_MANY_BAD_FRAMES, "too many bad frames");
        }
        self.error(id, ErrorCode::BAD_FRAME, message);
        Step::Continue
    }

    fn dispatch(&mut self, frame: Frame) -> Step {
        match frame {
            Frame::Req {
                id,
                method,
                data,
                node,
            } => {
                self.last_call = self.last_seen;
                self.request(id, method, data, node)
            }
            Frame::Sub {
                id,
                method,
                data,
                credit,
                node,
            } => {
                self.last_call = self.last_seen;
                self.stream(id, method, data, credit, node)
            }
            Frame::Ntf { method, data, node } => {
                self.last_call = self.last_seen;
                self.notification(method, data, node)
            }
            Frame::Cancel { id } => {
                self.calls.cancel(id);
                Step::Continue
            }
            Frame::Credit { id, n } => {
                self.calls.add_credit(id, n);
                Step::Continue
            }
            Frame::Res { id, data } => {
                self.handle.client_calls().answer(id, Ok(data));
                Step::Continue
            }
            Frame::Err {
                id: Some(id),
                error,
            } => {
                self.handle.client_calls().answer(id, Err(error));
                Step::Continue
            }
            Frame::Err { id: None, error } => {
                tracing::warn!(conn = %self.handle.id(), %error, "client reported an error");
                Step::Continue
            }
            Frame::Item { id, data } => {
                self.handle.client_calls().stream_event(id, Ok(Some(data)));
                Step::Continue
            }
            Frame::End { id } => {
                self.handle.client_calls().stream_event(id, Ok(None));
                Step::Continue
            }
            Frame::Ping => {
                self.write_frame(&Frame::Pong);
                Step::Continue
            }
            Frame::Pong | Frame::Hello { .. } => Step::Continue,
            Frame::Join {
                id,
                channel,
                since,
                filter,
            } => self.join(id, channel, since, filter),
            Frame::Leave { id, channel } => self.leave(id, channel),
            Frame::Pub { id, channel, data } => self.publish(id, channel, data),
            other => {
                let message = format!("`{}` frames are sent by the server only", other.tag());
                self.bad_frame(other.id(), message)
            }
        }
    }

    /// Spends one token of a rate limit; `false` when the call was answered `RATE_LIMITED`.
    pub(super) fn within_rate(&mut self, publication: bool, id: Option<u64>) -> bool {
        let limiter = if publication {
            &self.publish_rate
        } else {
            &self.call_rate
        };
        match limiter {
            Some(limiter) if !limiter.check() => {
                let metrics = crate::metrics::server();
                if publication {
                    metrics.publish_rate_limited.increment(1);
                } else {
                    metrics.call_rate_limited.increment(1);
                }
                let what = if publication { "publications" } else { "calls" };
                self.error(
                    id,
                    ErrorCode::RATE_LIMITED,
                    format!("too many {what}: slow down"),
                );
                false
            }
            _ => true,
        }
    }

    /// The method `name` and the permission it requires, if the connection may call it;
    /// `Err` when it was answered: `FORBIDDEN`, `NOT_FOUND`, or `BAD_FRAME` when the method
    /// is of another kind than `sent` (`req`, `sub`, `ntf`) asks for.
    fn lookup(&mut self, id: Option<u64>, name: &str, sent: &str) -> Result<Allowed, Step> {
        let Some((method, permission, meter)) = self.handler.router().get_with_permission(name)
        else {
            let message = format!("unknown method `{}`", shown(name));
            crate::metrics::server()
                .other_method()
                .count_unrun(Err(&ErrorCode::NOT_FOUND));
            self.error(id, ErrorCode::NOT_FOUND, message);
            return Err(Step::Continue);
        };
        // Most methods need no permission: no need to look at the principal then.
        let allowed = permission.is_open() || self.handle.with_principal(|p| permission.allows(p));
        if !allowed {
            meter.count_unrun(Err(&ErrorCode::FORBIDDEN));
            let message = format!("not allowed to call `{}`", shown(name));
            self.error(id, ErrorCode::FORBIDDEN, message);
            return Err(Step::Continue);
        }
        let expected = match method {
            Method::Request(_) => "req",
            Method::Stream(_) => "sub",
            Method::Notify(_) => "ntf",
        };
        if expected != sent {
            let message = format!(
                "`{name}` is a {} method: call it with `{expected}`, not `{sent}`",
                method.kind()
            );
            return Err(self.bad_frame(id, message));
        }
        Ok((
            method.clone(),
            permission.required().cloned(),
            meter.clone(),
        ))
    }

    fn parts(&self, id: u64, params: Payload) -> CallParts {
        CallParts {
            conn: self.handle.clone(),
            id,
            params,
        }
    }

    fn request(&mut self, id: u64, method: String, data: Payload, node: Option<String>) -> Step {
        if !self.admit(id, true) || !self.within_rate(false, Some(id)) {
            return Step::Continue;
        }
        if method.starts_with('$') {
            if method == "$contracts" {
                let contracts = self
                    .handle
                    .with_principal(|principal| self.handler.router().contracts_for(principal));
                let reply = Payload::encode(self.codec(), &contracts).map_err(|e| {
                    ErrorBody::new(ErrorCode::INTERNAL, format!("cannot encode: {e}"))
                });
                self.reply(id, reply);
                return Step::Continue;
            }
            if self.relay_builtin(id, &method, &data) {
                return Step::Continue;
            }
            return self.builtin(id, method, data);
        }
        if self.relays(&method, node.as_deref()) {
            return self.relay_request(id, method, data, node);
        }
        let (Method::Request(start), needs, meter) = (match self.lookup(Some(id), &method, "req") {
            Ok(allowed) => allowed,
            Err(step) => return step,
        }) else {
            unreachable!("lookup checked the kind")
        };
        let span = tracing::debug_span!("call", %method, id, outcome = tracing::field::Empty);
        let metered = meter.start_traced(span.clone());
        let parts = self.parts(id, data);
        let Some(Started { mut future, state }) = span.in_scope(|| guarded(|| start(parts))) else {
            let reply = Err(panicked());
            metered.finish_with(&reply);
            self.reply(id, reply);
            return Step::Continue;
        };
        // Most handlers finish without waiting: answer those right here, after what the
        // handler queued for this client (notifications, calls) as it ran.
        match span.in_scope(|| poll_once(&mut future)) {
            Some(reply) => {
                metered.finish_with(&reply);
                self.take_queued();
                self.reply(id, reply);
            }
            None => {
                let call = Spawned {
                    state,
                    credit: None,
                    needs,
                    abortable: true,
                };
                self.spawn_call(id, Some(call), move |_| {
                    Box::pin(tracing::Instrument::instrument(
                        async move {
                            let reply = future.await;
                            metered.finish_with(&reply);
                            Some(reply_frame(id, reply))
                        },
                        span,
                    ))
                });
            }
        }
        Step::Continue
    }

    fn stream(
        &mut self,
        id: u64,
        method: String,
        data: Payload,
        credit: Option<u32>,
        node: Option<String>,
    ) -> Step {
        if !self.admit(id, true) || !self.within_rate(false, Some(id)) {
            return Step::Continue;
        }
        if self.relays(&method, node.as_deref()) {
            return self.relay_stream(id, method, data, credit, node);
        }
        let (Method::Stream(start), needs, meter) = (match self.lookup(Some(id), &method, "sub") {
            Ok(allowed) => allowed,
            Err(step) => return step,
        }) else {
            unreachable!("lookup checked the kind")
        };
        let span = tracing::debug_span!("stream", %method, id, outcome = tracing::field::Empty);
        let metered = meter.start_traced(span.clone());
        let parts = self.parts(id, data);
        let Some(Started { future, state }) = span.in_scope(|| guarded(|| start(parts))) else {
            let reply = Err(panicked());
            metered.finish_with(&reply);
            self.reply(id, reply);
            return Step::Continue;
        };
        let credit = credit.map(|n| Arc::new(Semaphore::new(n as usize)));
        let (queue, codec, items) = (self.queue().clone(), self.codec(), credit.clone());
        let call = Spawned {
            state,
            credit,
            needs,
            abortable: true,
        };
        self.spawn_call(id, Some(call), move |seq| {
            Box::pin(tracing::Instrument::instrument(
                metered_stream(metered, pump(future, codec, id, seq, queue, items)),
                span,
            ))
        });
        Step::Continue
    }

    fn notification(&mut self, method: String, data: Payload, node: Option<String>) -> Step {
        if !self.within_rate(false, None) {
            return Step::Continue;
        }
        if self.relays(&method, node.as_deref()) {
            return self.relay_notify(&method, data, node.as_deref());
        }
        let (Method::Notify(start), meter) = (match self.lookup(None, &method, "ntf") {
            Ok((method, _, meter)) => (method, meter),
            Err(step) => return step,
        }) else {
            unreachable!("lookup checked the kind")
        };
        if self.draining.is_some() {
            return Step::Continue;
        }
        if self.calls.notifications() >= self.env.limits.max_in_flight {
            self.error(
                None,
                ErrorCode::RATE_LIMITED,
                format!("too many notifications in progress; `{method}` was dropped"),
            );
            return Step::Continue;
        }
        let span = tracing::debug_span!("notification", %method, outcome = tracing::field::Empty);
        let metered = meter.start_traced(span.clone());
        let parts = self.parts(0, data);
        let Some(Started { mut future, .. }) = span.in_scope(|| guarded(|| start(parts))) else {
            metered.finish(Err(&ErrorCode::INTERNAL));
            let message = format!("notification `{method}` failed");
            self.error(None, ErrorCode::INTERNAL, message);
            return Step::Continue;
        };
        match span.in_scope(|| poll_once(&mut future)) {
            Some(result) => {
                metered.finish_with(&result);
                if let Err(error) = result {
                    self.write_frame(&Frame::Err { id: None, error });
                }
            }
            None => self.spawn_call(0, None, move |_| {
                Box::pin(tracing::Instrument::instrument(
                    async move {
                        let result = future.await;
                        metered.finish_with(&result);
                        result.err().map(notification_error)
                    },
                    span,
                ))
            }),
        }
        Step::Continue
    }
}

/// A stream's run, counted: open while it runs, then its outcome by its last frame.
pub(super) async fn metered_stream(
    metered: CallMeter,
    run: impl Future<Output = Option<Frame>>,
) -> Option<Frame> {
    let _open = OpenStream::new();
    let last = run.await;
    match &last {
        Some(Frame::Err { error, .. }) => metered.finish(Err(&error.code)),
        _ => metered.finish(Ok(())),
    }
    last
}

/// The `err` (without id) of a notification whose handler failed.
fn notification_error(error: ErrorBody) -> Frame {
    Frame::Err { id: None, error }
}
