//! One raw socket's life: registration, the handshake of a handshaked socket, the
//! `connected` event, the loop (messages in, queued messages out, heartbeats, close
//! requests, the shutdown, an expiring credential), and exactly one `disconnected`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use futures_util::FutureExt;

use plexus_protocol::CloseCode;
use tokio::time::Instant;

use super::endpoint::{RawKind, RawStart};
use super::{RawConnection, RawHandler, refusal};
use crate::conn::{
    Beat, CloseReason, ConnectionHandle, DisconnectReason, Heartbeat, Inbound, Outbound,
    OutboundQueue, QueueEvent, RawMessage, Socket, WRITE_BATCH, Wire, close_reason,
    sleep_until_opt,
};
use crate::guard::CallRateLimiter;
use crate::metrics::{HandshakeFailure, handshake_failed};
use crate::session::{
    BeforeHello, HelloRules, SessionEnv, await_hello, count_closed, forget_connection, new_handle,
    register_connection, reject, welcome_frame,
};

/// Serves one raw socket to its end with `handler`.
///
/// Not an `async fn`, so that the future holds the session once and not its arguments
/// beside it (see `session::run`).
pub(crate) fn run<H: RawHandler>(
    start: RawStart,
    ws: Socket,
    queue: Arc<OutboundQueue>,
    handler: Arc<H>,
) -> impl Future<Output = ()> + Send + 'static {
    let RawStart {
        env,
        info,
        principal,
        slot,
        kind,
        permission,
        hello_credential,
        message_rate,
    } = start;
    let authenticated = principal.is_some();
    let handle = new_handle(&env, info, principal, queue.clone());
    let mut session = RawSession {
        wire: Wire::new(ws, queue, false),
        handle: handle.clone(),
        env: env.clone(),
        last_seen: Instant::now(),
        last_active: Instant::now(),
        rate: message_rate.map(CallRateLimiter::new),
    };
    async move {
        register_connection(&env, &handle);
        let conn = RawConnection::new(handle.clone(), env.hub.clone());
        let span = tracing::debug_span!("raw", id = %handle.id(), path = conn.path());
        // Set once `connected` has taken the connection: `disconnected` is then owed.
        let taken = AtomicBool::new(false);
        let life = async {
            if kind == RawKind::Handshaked {
                let rules = HelloRules {
                    others: BeforeHello::Drop,
                    authenticated,
                    read_token: hello_credential,
                };
                session
                    .handshake(rules, permission.as_deref())
                    .await
                    .inspect_err(|_| handshake_failed(HandshakeFailure::Hello))?;
            }
            // The upgrade's `101` is held back to leave with the first bytes after it (see
            // `endpoint::held_upgrade`): a handler slow to take the socket must not hold up
            // the handshake too. (A handshaked socket has written its `welcome` already.)
            session.wire.drain(&session.handle).await?;
            match session.while_writing(handler.connected(&conn)).await? {
                Some(Ok(())) => taken.store(true, Ordering::Relaxed),
                Some(Err(why)) => {
                    tracing::warn!(conn = %handle.id(), reason = %why, "the raw socket's handler refused the connection");
                    let reason = close_reason(why.into());
                    return Err(session.wire.close(CloseCode::TRY_AGAIN_LATER, reason).await);
                }
                // Closed (or the server shut down) while `connected` ran: it was dropped.
                None => return Err(session.close_as_wanted().await),
            }
            Ok(session.serve(&*handler, &conn).await)
        };
        let reason = match AssertUnwindSafe(tracing::Instrument::instrument(life, span))
            .catch_unwind()
            .await
        {
            Ok(Ok(reason) | Err(reason)) => reason,
            Err(_) => {
                tracing::error!(conn = %handle.id(), "a raw socket's handler panicked: closing it with 1011");
                let reason = CloseReason::Borrowed("internal error");
                session.wire.close(CloseCode::INTERNAL, reason).await
            }
        };
        forget_connection(&env, &handle).await;
        handle.mark_ended();
        drop(session);
        // Gives the connection's place under the limits back before anyone hears it ended.
        drop(slot);
        count_closed(&env, &handle, &reason);
        if taken.load(Ordering::Relaxed)
            && AssertUnwindSafe(handler.disconnected(&conn, &reason))
                .catch_unwind()
                .await
                .is_err()
        {
            tracing::error!(conn = %handle.id(), "a raw socket's `disconnected` panicked");
        }
    }
}

/// What the loop changes as it goes.
struct RawSession {
    wire: Wire,
    handle: ConnectionHandle,
    env: Arc<SessionEnv>,
    /// When the peer was last heard from (any frame, pongs included).
    last_seen: Instant,
    /// When a data message last went either way (for the idle timeout).
    last_active: Instant,
    /// Messages per second the peer may send.
    rate: Option<CallRateLimiter>,
}

/// What a turn of the loop decided.
enum Step {
    Continue,
    Deliver(RawMessage),
    Close(CloseCode, &'static str),
    PeerClosed(Option<u16>),
    ReadFailed(yawc::WebSocketError),
    Ended(DisconnectReason),
}

impl RawSession {
    /// The plexus handshake: the client's `hello` as `rules` say, the endpoint's
    /// `permission`, then `welcome`.
    async fn handshake(
        &mut self,
        rules: HelloRules,
        permission: Option<&str>,
    ) -> Result<(), DisconnectReason> {
        let (wire, handle, env) = (&mut self.wire, &self.handle, &self.env);
        await_hello(wire, handle, env, rules).await?;
        if let Some(refusal) =
            permission.and_then(|permission| handle.with_principal(|p| refusal(p, permission)))
        {
            return Err(reject(wire, handle, &refusal).await);
        }
        if let Ok(bytes) = handle.codec().encode(&welcome_frame(handle, env)) {
            wire.push(bytes);
        }
        wire.drain(handle).await
    }

    /// Runs a handler's future while writing what is queued meanwhile (so a handler that
    /// waits for room in the queue is not waiting on itself). `None` when a close request
    /// or the shutdown came first: the future is then dropped.
    async fn while_writing<F: Future>(
        &mut self,
        future: F,
    ) -> Result<Option<F::Output>, DisconnectReason> {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                biased;
                output = &mut future => return Ok(Some(output)),
                event = std::future::poll_fn(|cx| self.handle.shared.queue.poll_event(cx)) => match event {
                    QueueEvent::Item(out) => {
                        self.outbound(out);
                        self.wire.drain(&self.handle).await?;
                    }
                    QueueEvent::Kick | QueueEvent::Closed => {
                        if self.close_wanted().is_some() {
                            return Ok(None);
                        }
                    }
                },
            }
        }
    }

    /// Closes as asked (or for the shutdown), after what was queued before.
    async fn close_as_wanted(&mut self) -> DisconnectReason {
        let (code, reason) = self
            .close_wanted()
            .unwrap_or((CloseCode::NORMAL, CloseReason::Borrowed("")));
        self.take_queued();
        self.wire.close(code, reason).await
    }

    /// Moves every message queued so far to the writer, so that a close follows them.
    fn take_queued(&mut self) {
        for _ in 0..self.env.limits.outbound_queue.max(1) {
            match self.handle.shared.queue.try_pop() {
                Some(out) => self.outbound(out),
                None => break,
            }
        }
    }

    /// The loop, until the connection ends.
    async fn serve<H: RawHandler>(
        &mut self,
        handler: &H,
        conn: &RawConnection,
    ) -> DisconnectReason {
        let limits = &self.env.limits;
        let mut heartbeat = Heartbeat::new(limits.heartbeat_interval);
        let idle = limits.idle_timeout;
        // A credential that expires closes the socket then: a raw peer cannot be asked
        // for a fresh one.
        let expiry = self.handle.principal().expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now() + left
        });
        let mut kicked = true;
        loop {
            if std::mem::take(&mut kicked) && self.close_wanted().is_some() {
                return Box::pin(self.close_as_wanted()).await;
            }
            let idle_deadline = idle.map(|idle| self.last_active + idle);
            let deadline = match (expiry, idle_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let step = tokio::select! {
                biased;
                event = std::future::poll_fn(|cx| self.handle.shared.queue.poll_event(cx)) => match event {
                    QueueEvent::Item(out) => {
                        self.outbound(out);
                        Step::Continue
                    }
                    QueueEvent::Kick | QueueEvent::Closed => {
                        kicked = true;
                        Step::Continue
                    }
                },
                frame = self.wire.next_frame() => match frame {
                    Ok(frame) => self.inbound(frame),
                    Err(e) => Step::ReadFailed(e),
                },
                beat = std::future::poll_fn(|cx| heartbeat.poll_beat(cx, self.last_seen)) => match beat {
                    Beat::Silent => Step::Close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
                    Beat::Ping => {
                        self.wire.push_ping();
                        Step::Continue
                    }
                },
                () = sleep_until_opt(deadline), if deadline.is_some() => {
                    // Nothing is written to a raw socket directly (every message goes through
                    // its queue), so the deadline passing is idleness.
                    if expiry.is_some_and(|at| Instant::now() >= at) {
                        Step::Close(CloseCode::NOT_AUTHORIZED, "credential expired")
                    } else {
                        Step::Close(CloseCode::NORMAL, "idle timeout")
                    }
                }
            };
            let step = match step {
                Step::Deliver(message) => {
                    match self.while_writing(handler.message(conn, message)).await {
                        Ok(Some(())) => Step::Continue,
                        Ok(None) => {
                            kicked = true;
                            Step::Continue
                        }
                        Err(reason) => return reason,
                    }
                }
                step => step,
            };
            if self.wire.has_pending()
                && let Err(reason) = self.wire.drain(&self.handle).await
            {
                return reason;
            }
            match step {
                Step::Continue | Step::Deliver(_) => {}
                Step::Close(code, reason) => {
                    let reason = CloseReason::Borrowed(reason);
                    return Box::pin(self.wire.close(code, reason)).await;
                }
                Step::PeerClosed(code) => return Box::pin(self.wire.peer_closed(code)).await,
                Step::ReadFailed(e) => return Box::pin(self.wire.read_failed(e)).await,
                Step::Ended(reason) => return self.wire.abandon(reason),
            }
        }
    }

    /// A close the connection was asked for, or the server's shutdown.
    fn close_wanted(&self) -> Option<(CloseCode, CloseReason)> {
        self.env.close_wanted(&self.handle)
    }

    /// What a frame read from the socket means.
    fn inbound(&mut self, frame: yawc::Frame) -> Step {
        self.last_seen = Instant::now();
        match Inbound::of(frame) {
            Inbound::Message { payload, binary } => {
                if self.rate.as_ref().is_some_and(|rate| !rate.check()) {
                    crate::metrics::server().call_rate_limited.increment(1);
                    return Step::Close(CloseCode::POLICY, "message rate limit exceeded");
                }
                self.last_active = self.last_seen;
                let metrics = crate::metrics::server();
                metrics.messages_received.increment(1);
                metrics.bytes_received.increment(payload.len() as u64);
                Step::Deliver(RawMessage::read(payload, binary))
            }
            Inbound::Control => Step::Continue,
            Inbound::PeerClosed(code) => Step::PeerClosed(code),
            Inbound::Ended(reason) => Step::Ended(reason),
        }
    }

    /// Moves one queued message (and whatever else is queued, up to a batch) to the writer.
    fn outbound(&mut self, first: Outbound) {
        self.last_active = Instant::now();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(out) = next.take() {
            match out {
                Outbound::Message { bytes, binary } => self.wire.push_message(bytes, binary),
                // Protocol frames are refused for a raw socket (`ConnectionHandle::push`,
                // calls; fan-out and joins send it `Message`s): none is queued.
                Outbound::Frame(_)
                | Outbound::Batch(_)
                | Outbound::Item { .. }
                | Outbound::Final { .. } => {}
            }
            taken += 1;
            if taken < WRITE_BATCH {
                next = self.handle.shared.queue.try_pop();
            }
        }
    }
}
