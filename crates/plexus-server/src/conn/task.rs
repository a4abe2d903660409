//! The connection task: the only owner of the socket and of the table of calls in flight.
//!
//! It selects over the socket, the outbound queue, the heartbeat and the close/shutdown
//! signals. Request handlers are polled once inline (most finish at once and their reply is
//! written without a task switch); a handler that is not ready is spawned and its reply
//! comes back through the outbound queue, tagged with a sequence number so that a reply for
//! a call cancelled meanwhile is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::HeaderMap;
use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, Frame, Payload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use yawc::{OpCode, WebSocket};

use super::queue::QueueEvent;
use super::{ConnShared, ConnectionHandle, Outbound, OutboundQueue, Pending, Signal};
use crate::auth::{AuthError, AuthRequest, Credential, CredentialSource};
use crate::endpoint::ServerInner;
use crate::error::shown;
use crate::guard::{CallRateLimiter, ConnectionSlot};
use crate::principal::Principal;
use crate::rpc::context::{CallState, CancelReason};
use crate::rpc::handler::{BoxFuture, CallParts, Reply, Started};
use crate::rpc::router::Method;

/// Why a connection ended, as given to `on_disconnect`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client closed the connection (with this close code, if it gave one).
    ClientClosed(Option<u16>),
    /// The server closed it with this code and reason.
    ServerClosed(CloseCode, &'static str),
    /// The socket failed or ended without a close handshake.
    Transport(String),
}

/// What the upgrade established about a new connection.
pub(crate) struct Accepted {
    pub(crate) codec: Codec,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) headers: HeaderMap,
    pub(crate) query: Option<String>,
    /// `None`: the client must authenticate with `hello` before anything else.
    pub(crate) principal: Option<Principal>,
    /// The connection's place under the connection limits, given back when it ends.
    pub(crate) slot: ConnectionSlot,
}

/// A method a connection may call, and the permission that allowed it (if it needs one).
type Allowed = (Method, Option<Arc<str>>);

struct InFlight {
    seq: u64,
    abort: Option<AbortHandle>,
    state: Option<Arc<CallState>>,
    credit: Option<Arc<Semaphore>>,
    /// The permission the method requires: checked again when the principal changes.
    needs: Option<Arc<str>>,
}

/// Granted credit beyond this is ignored (it would mean "unlimited" anyway) so that no
/// sequence of `credit` frames can overflow the semaphore.
const MAX_CREDIT: usize = 1 << 30;
/// Control frames carry at most 125 bytes (RFC 6455, 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames written in one batch before the writer flushes and looks at the socket again.
const WRITE_BATCH: usize = 64;

enum Step {
    Continue,
    Close(CloseCode, &'static str),
    PeerClosed(Option<u16>),
    ReadFailed(yawc::WebSocketError),
    Ended(DisconnectReason),
}

struct Connection<S> {
    ws: WebSocket<S>,
    handle: ConnectionHandle,
    server: Arc<ServerInner>,
    queue: Arc<OutboundQueue>,
    in_flight: HashMap<u64, InFlight>,
    /// Notification handlers still running, by sequence number.
    notifying: HashMap<u64, AbortHandle>,
    seq: u64,
    bad_frames: VecDeque<Instant>,
    last_seen: Instant,
    last_call: Instant,
    draining: Option<Instant>,
    /// Frames waiting to be written by `drain`.
    out: VecDeque<yawc::Frame>,
    /// Whether the client must send `hello` first.
    awaiting_hello: bool,
    /// Whether `welcome` was sent (hooks run only for such connections).
    welcomed: bool,
    call_rate: Option<CallRateLimiter>,
    publish_rate: Option<CallRateLimiter>,
    _slot: ConnectionSlot,
}

/// Runs one connection to its end.
/// Serves one upgraded connection; `queue` is the one its socket is shared through (see
/// [`super::SharedSocket`]).
pub(crate) async fn run<S>(
    ws: WebSocket<S>,
    queue: Arc<OutboundQueue>,
    server: Arc<ServerInner>,
    accepted: Accepted,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &server.config.limits;
    let awaiting_hello = accepted.principal.is_none();
    let shared = Arc::new(ConnShared {
        id: uuid::Uuid::now_v7().simple().to_string(),
        codec: accepted.codec,
        remote: accepted.remote,
        headers: accepted.headers,
        query: accepted.query,
        principal: std::sync::RwLock::new(Arc::new(accepted.principal.unwrap_or_default())),
        principal_changed: Default::default(),
        extensions: server.extensions.clone(),
        local: Mutex::new(http::Extensions::new()),
        queue: queue.clone(),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        max_pending: limits.max_in_flight,
        call_timeout: limits.server_call_timeout,
        close: Signal::default(),
        close_code: OnceLock::new(),
        gone: Signal::default(),
        channels: Mutex::new(std::collections::HashSet::new()),
        channels_closed: Default::default(),
        max_subscriptions: limits.max_subscriptions,
    });
    let handle = ConnectionHandle { shared };
    let now = Instant::now();
    let mut conn = Connection {
        ws,
        handle: handle.clone(),
        server: server.clone(),
        queue,
        in_flight: HashMap::new(),
        notifying: HashMap::new(),
        seq: 0,
        bad_frames: VecDeque::new(),
        last_seen: now,
        last_call: now,
        draining: None,
        out: VecDeque::new(),
        awaiting_hello,
        welcomed: false,
        call_rate: limits.call_rate.map(CallRateLimiter::new),
        publish_rate: limits.publish_rate.map(CallRateLimiter::new),
        _slot: accepted.slot,
    };
    server
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    server.hub.register(&handle);
    let reason = conn.run().await;
    server.hub.unregister(&handle).await;
    conn.finish(&reason);
    let welcomed = conn.welcomed;
    // Gives the connection's place under the limits back before anyone hears it ended.
    drop(conn);
    server
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(conn = %handle.id(), ?reason, "connection ended");
    if !welcomed {
        return;
    }
    if let Some(hook) = server.on_disconnect.clone() {
        tokio::spawn(hook(handle, reason));
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn codec(&self) -> Codec {
        self.handle.shared.codec
    }

    async fn run(&mut self) -> DisconnectReason {
        if self.awaiting_hello
            && let Err(reason) = Box::pin(self.hello()).await
        {
            return reason;
        }
        self.welcomed = true;
        // In a block of its own, so the frame is not kept for the life of this future.
        {
            let welcome = Frame::Welcome {
                conn: self.handle.id().to_owned(),
                node: self.server.node.clone(),
                heartbeat: self.server.config.limits.heartbeat_interval.as_millis() as u64,
                user: self.handle.principal().user.clone(),
            };
            self.write_frame(&welcome);
        }
        if let Err(reason) = self.drain().await {
            return reason;
        }
        if let Some(hook) = self.server.on_connect.clone() {
            tokio::spawn(hook(self.handle.clone()));
        }
        if self.server.auth.is_some() && self.handle.principal().expires_at.is_some() {
            tokio::spawn(keep_credential_fresh(
                self.server.clone(),
                self.handle.clone(),
            ));
        }
        let interval = self.server.config.limits.heartbeat_interval;
        let mut heartbeat = Heartbeat::new(interval);
        let idle = self.server.config.limits.idle_timeout;
        // A refreshed principal, a close request and the server's shutdown are flags looked
        // at after a kick: setting one kicks the outbound queue, which wakes this task.
        // (Polling a `Notified` every turn would take its waiter lock every time, and the
        // shutdown signal is shared by every connection.)
        let mut kicked = true;
        // From here until a close begins, publications may be written to the socket directly.
        self.queue.set_direct(true);
        loop {
            if std::mem::take(&mut kicked)
                && let Err(reason) = Box::pin(self.look_at_flags()).await
            {
                return reason;
            }
            // One timer for the drain deadline and the idle deadline, whichever comes first.
            let idle_deadline = idle.map(|idle| self.last_call + idle);
            let deadline = match (self.draining, idle_deadline) {
                (Some(drain), Some(idle)) => Some(drain.min(idle)),
                (drain, idle) => drain.or(idle),
            };
            // Every branch only updates state and queues frames; the one place that writes is
            // `drain` below. That keeps this future, which lives as long as the connection, small.
            // A popped item marks the task busy (no direct writes) until a flush; one that
            // writes nothing (the end of a notification, a stale stream item) still needs it.
            let mut popped = false;
            let step = tokio::select! {
                biased;
                event = std::future::poll_fn(|cx| self.queue.poll_event(cx)) => match event {
                    QueueEvent::Item(out) => {
                        popped = true;
                        self.outbound(out)
                    }
                    QueueEvent::Kick | QueueEvent::Closed => {
                        kicked = true;
                        Step::Continue
                    }
                },
                frame = self.ws.next_frame() => match frame {
                    Ok(frame) => self.inbound(frame),
                    Err(e) => Step::ReadFailed(e),
                },
                () = std::future::poll_fn(|cx| heartbeat.poll_due(cx)) => {
                    if self.last_seen.elapsed() >= interval * 2 {
                        Step::Close(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    } else {
                        self.out.push_back(yawc::Frame::ping(Bytes::new()));
                        Step::Continue
                    }
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => self.deadline_reached(),
            };
            if (popped || !self.out.is_empty())
                && let Err(reason) = self.drain().await
            {
                return reason;
            }
            // The rare endings are boxed so that their futures take no room in this one.
            match step {
                Step::Continue => {
                    if self.draining.is_some() && self.in_flight.is_empty() {
                        return Box::pin(self.close(CloseCode::GOING_AWAY, "server shutting down"))
                            .await;
                    }
                }
                Step::Close(code, reason) => return Box::pin(self.close(code, reason)).await,
                Step::PeerClosed(code) => {
                    // yawc has queued its close reply: write it, then drop the TCP connection
                    // ourselves, as the server should (RFC 6455, 7.1.1).
                    self.queue.set_direct(false);
                    let reply = write_close_reply(&mut self.ws);
                    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, reply)).await;
                    return DisconnectReason::ClientClosed(code);
                }
                Step::ReadFailed(e) => return Box::pin(self.read_failed(e)).await,
                Step::Ended(reason) => {
                    self.queue.set_direct(false);
                    return reason;
                }
            }
        }
    }

    /// Acts on the flags a kick may have set. `Err` ends the connection for the reason given.
    /// Rare, so the loop awaits it boxed: this future then takes no room in the loop's.
    async fn look_at_flags(&mut self) -> Result<(), DisconnectReason> {
        if self.queue.has_backlog() {
            // A direct write was cut short: its rest goes before anything else.
            self.drain().await?;
        }
        // A kick is looked at before queued items; what was queued before it still comes
        // first where it matters.
        if self.handle.shared.principal_changed.load(Ordering::Acquire) {
            // A call whose answer is queued already ends with it, not with FORBIDDEN.
            self.take_queued();
            self.recheck_calls();
            self.drain().await?;
        }
        if self.handle.shared.close.is_fired() {
            let (code, reason) = self
                .handle
                .shared
                .close_code
                .get()
                .copied()
                .unwrap_or((CloseCode::NORMAL, ""));
            // What was queued before the close request (say, a notification of why) goes
            // out before the close frame.
            self.take_queued();
            return Err(self.close(code, reason).await);
        }
        if self.draining.is_none() && self.server.is_shutting_down() {
            self.draining = Some(Instant::now() + self.server.config.limits.drain_timeout);
            if self.in_flight.is_empty() {
                self.take_queued();
                return Err(self
                    .close(CloseCode::GOING_AWAY, "server shutting down")
                    .await);
            }
        }
        Ok(())
    }

    /// Waits for the client's `hello` and authenticates it. Nothing else is served before:
    /// any other frame closes the connection with 4000; a refused credential gets `reject`
    /// and close 4001 or 4003.
    async fn hello(&mut self) -> Result<(), DisconnectReason> {
        let deadline = Instant::now() + self.server.config.limits.handshake_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next_frame()).await {
                Err(_) => {
                    return Err(self
                        .close(CloseCode::BAD_HANDSHAKE, "no hello in time")
                        .await);
                }
                Ok(Err(e)) => return Err(self.read_failed(e).await),
                Ok(Ok(frame)) => frame,
            };
            let binary = match frame.opcode() {
                OpCode::Text => false,
                OpCode::Binary => true,
                OpCode::Close => {
                    let reply = write_close_reply(&mut self.ws);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, reply).await;
                    return Err(DisconnectReason::ClientClosed(
                        frame.close_code().map(u16::from),
                    ));
                }
                _ => continue,
            };
            let decoded = if binary == self.codec().is_binary() {
                self.codec().decode(frame.into_payload()).ok()
            } else {
                None
            };
            let Some(Frame::Hello { token, data }) = decoded else {
                return Err(self.close(CloseCode::BAD_HANDSHAKE, "expected hello").await);
            };
            let credential = token
                .filter(|token| !token.is_empty())
                .map(|token| Credential::new(token, CredentialSource::Hello));
            let shared = &self.handle.shared;
            let request = AuthRequest::new(&shared.headers)
                .with_credential(credential.as_ref())
                .with_remote(shared.remote)
                .with_hello_data(data.as_ref());
            match self.server.authenticate(request).await {
                Ok(principal) => {
                    self.handle.set_principal(principal);
                    return Ok(());
                }
                Err(e) => {
                    self.write_frame(&Frame::Reject {
                        error: e.to_error_body(),
                    });
                    self.drain().await?;
                    let reason = refused_reason(&e);
                    return Err(self.close(e.close_code(), reason).await);
                }
            }
        }
    }

    /// After a token refresh: calls in flight whose method needs a permission the new
    /// principal lacks are stopped and answered `FORBIDDEN`.
    fn recheck_calls(&mut self) {
        self.handle
            .shared
            .principal_changed
            .store(false, Ordering::Release);
        let principal = self.handle.principal();
        let revoked: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, call)| call.needs.as_deref().is_some_and(|p| !principal.can(p)))
            .map(|(id, _)| *id)
            .collect();
        for id in revoked {
            if let Some(call) = self.in_flight.remove(&id) {
                stop(call, CancelReason::Forbidden);
                let error = ErrorBody::new(
                    ErrorCode::FORBIDDEN,
                    "the refreshed credential does not allow this call",
                );
                self.reply(id, Err(error));
            }
        }
    }

    /// Spends one token of a rate limit; `Err` answers the call with `RATE_LIMITED`.
    fn within_rate(&mut self, publication: bool, id: Option<u64>) -> Result<(), Step> {
        let limiter = if publication {
            &self.publish_rate
        } else {
            &self.call_rate
        };
        match limiter {
            Some(limiter) if !limiter.check() => {
                let what = if publication { "publications" } else { "calls" };
                Err(self.error(
                    id,
                    ErrorCode::RATE_LIMITED,
                    format!("too many {what}: slow down"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn deadline_reached(&mut self) -> Step {
        let now = Instant::now();
        if self.draining.is_some_and(|drain| now >= drain) {
            return Step::Close(CloseCode::GOING_AWAY, "server shutting down");
        }
        // Publications written straight to the socket are activity too.
        let waiting = self.queue.take_written_directly()
            || !self.in_flight.is_empty()
            || !self
                .handle
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
        if waiting {
            // A call in progress, either way, is not idleness.
            self.last_call = now;
            Step::Continue
        } else {
            Step::Close(CloseCode::NORMAL, "idle timeout")
        }
    }

    // ---- writing ----------------------------------------------------------------------

    /// Writes every queued frame and flushes. A peer that stopped reading must not keep us
    /// from acting on a close request, so a stalled write gives way to one.
    async fn drain(&mut self) -> Result<(), DisconnectReason> {
        let close = &self.handle.shared.close;
        let ws = &mut self.ws;
        let out = &mut self.out;
        let write = async {
            while let Some(frame) = out.pop_front() {
                ws.feed(frame).await?;
            }
            ws.flush().await
        };
        let result = tokio::select! {
            biased;
            result = write => result.map_err(|e| DisconnectReason::Transport(e.to_string())),
            _ = close.fired() => Err(requested_close(&self.handle)),
        };
        if result.is_ok() {
            self.queue.flushed();
        }
        if self.out.capacity() > 64 {
            self.out = VecDeque::new();
        }
        result
    }

    fn ws_frame(&self, bytes: Bytes) -> yawc::Frame {
        if self.codec().is_binary() {
            yawc::Frame::binary(bytes)
        } else {
            yawc::Frame::text(bytes)
        }
    }

    /// Encodes a frame and queues it for the writer.
    fn write_frame(&mut self, frame: &Frame) {
        match self.codec().encode(frame) {
            Ok(bytes) => self.queue(bytes),
            Err(e) => tracing::error!(error = %e, "could not encode a frame"),
        }
    }

    fn queue(&mut self, bytes: Bytes) {
        let frame = self.ws_frame(bytes);
        self.out.push_back(frame);
    }

    fn reply(&mut self, id: u64, reply: Reply) -> Step {
        let frame = match reply {
            Ok(data) => Frame::Res { id, data },
            Err(error) => Frame::Err {
                id: Some(id),
                error,
            },
        };
        {
            self.write_frame(&frame);
            Step::Continue
        }
    }

    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: String) -> Step {
        let frame = Frame::Err {
            id,
            error: ErrorBody::new(code, message),
        };
        {
            self.write_frame(&frame);
            Step::Continue
        }
    }

    /// Writes one outbound message and whatever else is already queued, up to a batch.
    fn outbound(&mut self, first: Outbound) -> Step {
        // Frames pushed to the client count as activity for the idle timeout.
        if self.server.config.limits.idle_timeout.is_some() {
            self.last_call = Instant::now();
        }
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            let bytes = match out {
                Outbound::Frame(bytes) => Some(bytes),
                Outbound::Batch(frames) => {
                    written += frames.len();
                    for bytes in frames {
                        self.queue(bytes);
                    }
                    None
                }
                Outbound::Item { id, seq, bytes } => self
                    .in_flight
                    .get(&id)
                    .filter(|call| call.seq == seq)
                    .map(|_| bytes),
                Outbound::Final { id, seq, bytes } => {
                    if id == 0 {
                        self.notifying.remove(&seq);
                        None
                    } else if self.in_flight.get(&id).is_some_and(|call| call.seq == seq) {
                        self.in_flight.remove(&id);
                        Some(bytes)
                    } else {
                        None
                    }
                }
            };
            if let Some(bytes) = bytes {
                self.queue(bytes);
                written += 1;
            }
            if written < WRITE_BATCH {
                next = self.queue.try_pop();
            }
        }
        Step::Continue
    }

    /// Moves every frame queued so far to the writer, so that a frame written afterwards (a
    /// reply, a close) follows them.
    fn take_queued(&mut self) {
        // Each round takes at least one frame: this takes all that were queued at the start.
        for _ in 0..self.server.config.limits.outbound_queue.max(1) {
            match self.queue.try_pop() {
                Some(out) => {
                    self.outbound(out);
                }
                None => break,
            }
        }
    }

    // ---- reading ----------------------------------------------------------------------

    async fn read_failed(&mut self, error: yawc::WebSocketError) -> DisconnectReason {
        self.queue.set_direct(false);
        if matches!(error, yawc::WebSocketError::ConnectionClosed) {
            return DisconnectReason::Transport("connection closed".into());
        }
        // yawc has queued a close frame with the matching code (1002, 1007, 1009, ...);
        // it is written by the next read poll, so keep polling until the socket ends.
        let code = match error {
            yawc::WebSocketError::FrameTooLarge => CloseCode::TOO_LARGE,
            yawc::WebSocketError::InvalidUTF8 => CloseCode::INVALID_DATA,
            _ => CloseCode::PROTOCOL_ERROR,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while self.ws.next_frame().await.is_ok() {}
        })
        .await;
        let reason = match code {
            CloseCode::TOO_LARGE => "message too large",
            CloseCode::INVALID_DATA => "invalid UTF-8",
            _ => "protocol error",
        };
        DisconnectReason::ServerClosed(code, reason)
    }

    fn inbound(&mut self, frame: yawc::Frame) -> Step {
        self.last_seen = Instant::now();
        let binary = match frame.opcode() {
            OpCode::Text => false,
            OpCode::Binary => true,
            OpCode::Close => {
                if frame.payload().len() > MAX_CONTROL_PAYLOAD {
                    // A protocol error that yawc would echo back: drop the connection instead.
                    return Step::Ended(DisconnectReason::ServerClosed(
                        CloseCode::PROTOCOL_ERROR,
                        "oversized close frame",
                    ));
                }
                return Step::PeerClosed(frame.close_code().map(u16::from));
            }
            _ => return Step::Continue,
        };
        if binary != self.codec().is_binary() {
            let message = if binary {
                "binary message on the JSON protocol (plexus.v1.json takes text messages)"
            } else {
                "text message on the MessagePack protocol (plexus.v1.msgpack takes binary messages)"
            };
            return self.bad_frame(None, message.into());
        }
        match self.codec().decode(frame.into_payload()) {
            Ok(frame) => self.dispatch(frame),
            Err(e) => self.bad_frame(e.id(), e.message().to_owned()),
        }
    }

    fn bad_frame(&mut self, id: Option<u64>, message: String) -> Step {
        let now = Instant::now();
        while self
            .bad_frames
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.bad_frames.pop_front();
        }
        self.bad_frames.push_back(now);
        if self.bad_frames.len() > self.server.config.limits.max_bad_frames_per_minute as usize {
            return Step::Close(CloseCode::TOO_MANY_BAD_FRAMES, "too many bad frames");
        }
        self.error(id, ErrorCode::BAD_FRAME, message)
    }

    fn dispatch(&mut self, frame: Frame) -> Step {
        match frame {
            Frame::Req { id, method, data } => {
                self.last_call = self.last_seen;
                self.request(id, method, data)
            }
            Frame::Sub {
                id,
                method,
                data,
                credit,
            } => {
                self.last_call = self.last_seen;
                self.stream(id, method, data, credit)
            }
            Frame::Ntf { method, data } => {
                self.last_call = self.last_seen;
                self.notification(method, data)
            }
            Frame::Cancel { id } => {
                if let Some(call) = self.in_flight.remove(&id) {
                    stop(call, CancelReason::Cancelled);
                }
                Step::Continue
            }
            Frame::Credit { id, n } => {
                if let Some(credit) = self.in_flight.get(&id).and_then(|c| c.credit.as_ref())
                    && credit.available_permits() < MAX_CREDIT
                {
                    credit.add_permits(n as usize);
                }
                Step::Continue
            }
            Frame::Res { id, data } => {
                self.answer(id, Ok(data));
                Step::Continue
            }
            Frame::Err {
                id: Some(id),
                error,
            } => {
                self.answer(id, Err(error));
                Step::Continue
            }
            Frame::Err { id: None, error } => {
                tracing::warn!(conn = %self.handle.id(), %error, "client reported an error");
                Step::Continue
            }
            Frame::Item { id, data } => {
                self.stream_event(id, Ok(Some(data)));
                Step::Continue
            }
            Frame::End { id } => {
                self.stream_event(id, Ok(None));
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

    /// Checks a new call's id and the in-flight limit; `Err` carries the step to take.
    fn admit(&mut self, id: u64) -> Result<(), Step> {
        if self.draining.is_some() {
            return Err(self.error(
                Some(id),
                ErrorCode::UNAVAILABLE,
                "the server is shutting down".into(),
            ));
        }
        if self.in_flight.contains_key(&id) {
            return Err(self.bad_frame(Some(id), format!("call id {id} is already in flight")));
        }
        if self.in_flight.len() >= self.server.config.limits.max_in_flight {
            return Err(self.error(
                Some(id),
                ErrorCode::RATE_LIMITED,
                format!(
                    "too many calls in flight (limit {})",
                    self.server.config.limits.max_in_flight
                ),
            ));
        }
        Ok(())
    }

    /// The method `name` and the permission it requires, if the connection may call it;
    /// `Err` answers `FORBIDDEN`.
    fn lookup(&mut self, id: Option<u64>, name: &str) -> Result<Option<Allowed>, Step> {
        let Some((method, permission)) = self.server.router.get_with_permission(name) else {
            return Ok(None);
        };
        // Most methods need no permission: no need to look at the principal then.
        let allowed = permission.is_open() || {
            let principal = self.handle.shared.principal.read();
            let principal = principal.as_deref().unwrap_or_else(|p| p.get_ref());
            permission.allows(principal)
        };
        if allowed {
            Ok(Some((method.clone(), permission.required().cloned())))
        } else {
            let message = format!("not allowed to call `{}`", shown(name));
            Err(self.error(id, ErrorCode::FORBIDDEN, message))
        }
    }

    fn parts(&self, id: u64, params: Payload) -> CallParts {
        CallParts {
            conn: self.handle.clone(),
            id,
            params,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn request(&mut self, id: u64, method: String, data: Payload) -> Step {
        if let Err(step) = self.admit(id) {
            return step;
        }
        if let Err(step) = self.within_rate(false, Some(id)) {
            return step;
        }
        if method.starts_with('$') {
            let hub = self.server.hub.clone();
            let conn = self.handle.clone();
            return self.hub_call(id, async move {
                hub.builtin(&conn, &method, &data).await.map(Some)
            });
        }
        let (start, needs) = match self.lookup(Some(id), &method) {
            Err(step) => return step,
            Ok(Some((Method::Request(start), needs))) => (start, needs),
            Ok(Some((other, _))) => return self.wrong_kind(Some(id), &method, &other, "req"),
            Ok(None) => return self.unknown(Some(id), &method),
        };
        let parts = self.parts(id, data);
        let Some(Started { mut future, state }) = guarded(|| start(parts)) else {
            return self.reply(id, Err(panicked()));
        };
        // Most handlers finish without waiting: answer those right here, after what the
        // handler queued for this client (notifications, calls) as it ran.
        match poll_once(&mut future) {
            Some(reply) => {
                self.take_queued();
                self.reply(id, reply)
            }
            None => {
                let seq = self.next_seq();
                let tx = self.handle.shared.queue.clone();
                let codec = self.codec();
                let task = tokio::spawn(async move {
                    let reply = AssertUnwindSafe(future)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(panicked()));
                    let bytes = encode_reply(codec, id, reply);
                    let _ = tx.push(Outbound::Final { id, seq, bytes }).await;
                });
                self.in_flight.insert(
                    id,
                    InFlight {
                        seq,
                        abort: Some(task.abort_handle()),
                        state,
                        credit: None,
                        needs,
                    },
                );
                Step::Continue
            }
        }
    }

    fn stream(&mut self, id: u64, method: String, data: Payload, credit: Option<u32>) -> Step {
        if let Err(step) = self.admit(id) {
            return step;
        }
        if let Err(step) = self.within_rate(false, Some(id)) {
            return step;
        }
        let (start, needs) = match self.lookup(Some(id), &method) {
            Err(step) => return step,
            Ok(Some((Method::Stream(start), needs))) => (start, needs),
            Ok(Some((other, _))) => return self.wrong_kind(Some(id), &method, &other, "sub"),
            Ok(None) => return self.unknown(Some(id), &method),
        };
        let parts = self.parts(id, data);
        let Some(Started { future, state }) = guarded(|| start(parts)) else {
            return self.reply(id, Err(panicked()));
        };
        let credit = credit.map(|n| Arc::new(Semaphore::new(n as usize)));
        let seq = self.next_seq();
        let tx = self.handle.shared.queue.clone();
        let codec = self.codec();
        let task_credit = credit.clone();
        let task = tokio::spawn(async move {
            let last = AssertUnwindSafe(pump(future, codec, id, seq, &tx, task_credit))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Frame::Err {
                    id: Some(id),
                    error: panicked(),
                });
            let bytes = codec
                .encode(&last)
                .unwrap_or_else(|_| encode_reply(codec, id, Err(panicked())));
            let _ = tx.push(Outbound::Final { id, seq, bytes }).await;
        });
        self.in_flight.insert(
            id,
            InFlight {
                seq,
                abort: Some(task.abort_handle()),
                state,
                credit,
                needs,
            },
        );
        Step::Continue
    }

    fn notification(&mut self, method: String, data: Payload) -> Step {
        if let Err(step) = self.within_rate(false, None) {
            return step;
        }
        let (start, _) = match self.lookup(None, &method) {
            Err(step) => return step,
            Ok(Some((Method::Notify(start), needs))) => (start, needs),
            Ok(Some((other, _))) => return self.wrong_kind(None, &method, &other, "ntf"),
            Ok(None) => return self.unknown(None, &method),
        };
        if self.draining.is_some() {
            return Step::Continue;
        }
        if self.notifying.len() >= self.server.config.limits.max_in_flight {
            return self.error(
                None,
                ErrorCode::RATE_LIMITED,
                format!("too many notifications in progress; `{method}` was dropped"),
            );
        }
        let parts = self.parts(0, data);
        let Some(Started { mut future, .. }) = guarded(|| start(parts)) else {
            return self.error(
                None,
                ErrorCode::INTERNAL,
                format!("notification `{method}` failed"),
            );
        };
        match poll_once(&mut future) {
            Some(Ok(())) => Step::Continue,
            Some(Err(error)) => {
                self.write_frame(&Frame::Err { id: None, error });
                Step::Continue
            }
            None => {
                let seq = self.next_seq();
                let tx = self.handle.shared.queue.clone();
                let codec = self.codec();
                let task = tokio::spawn(async move {
                    // A panic is reported as at the first poll: `INTERNAL`, without id.
                    let outcome = AssertUnwindSafe(future)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(panicked()));
                    if let Err(error) = outcome
                        && let Ok(bytes) = codec.encode(&Frame::Err { id: None, error })
                    {
                        let _ = tx.push(Outbound::Frame(bytes)).await;
                    }
                    let _ = tx
                        .push(Outbound::Final {
                            id: 0,
                            seq,
                            bytes: Bytes::new(),
                        })
                        .await;
                });
                self.notifying.insert(seq, task.abort_handle());
                Step::Continue
            }
        }
    }

    // ---- channels ------------------------------------------------------------------------

    fn channels_enabled(&mut self, id: u64) -> Result<crate::channel::Hub, Step> {
        self.last_call = self.last_seen;
        let hub = self.server.hub.clone();
        if hub.has_channels() {
            Ok(hub)
        } else {
            Err(self.error(
                Some(id),
                ErrorCode::NOT_FOUND,
                "channels are not enabled on this endpoint".into(),
            ))
        }
    }

    fn join(
        &mut self,
        id: u64,
        channel: String,
        since: Option<plexus_protocol::Position>,
        filter: Option<Payload>,
    ) -> Step {
        let hub = match self.channels_enabled(id) {
            Ok(hub) => hub,
            Err(step) => return step,
        };
        if let Err(step) = self.within_rate(false, Some(id)) {
            return step;
        }
        let conn = self.handle.clone();
        // The hub queues the `res` and the missed publications itself, ahead of live ones.
        self.hub_call(id, async move {
            hub.join(&conn, &channel, since.as_ref(), filter.as_ref(), id)
                .await
                .map(|()| None)
        })
    }

    fn leave(&mut self, id: u64, channel: String) -> Step {
        let hub = match self.channels_enabled(id) {
            Ok(hub) => hub,
            Err(step) => return step,
        };
        if let Err(step) = self.within_rate(false, Some(id)) {
            return step;
        }
        let conn = self.handle.clone();
        let codec = self.codec();
        self.hub_call(id, async move {
            hub.leave(&conn, &channel)
                .await
                .map(|()| Some(Payload::null(codec)))
        })
    }

    fn publish(&mut self, id: u64, channel: String, data: Payload) -> Step {
        let hub = match self.channels_enabled(id) {
            Ok(hub) => hub,
            Err(step) => return step,
        };
        if let Err(step) = self.within_rate(true, Some(id)) {
            return step;
        }
        let conn = self.handle.clone();
        let codec = self.codec();
        self.hub_call(id, async move {
            let position = hub.client_publish(&conn, &channel, data).await?;
            #[derive(serde::Serialize)]
            struct PubReply<'a> {
                epoch: &'a str,
                offset: u64,
            }
            Payload::encode(
                codec,
                &PubReply {
                    epoch: &position.epoch,
                    offset: position.offset,
                },
            )
            .map(Some)
            .map_err(|e| crate::error::RpcError::internal(e).into_body())
        })
    }

    /// Runs a hub operation for the client's call `id`: inline when it completes at once
    /// (always, on the memory engine), otherwise on a task of its own. `Ok(None)` means the
    /// hub has answered the call itself.
    fn hub_call(
        &mut self,
        id: u64,
        future: impl Future<Output = Result<Option<Payload>, ErrorBody>> + Send + 'static,
    ) -> Step {
        let mut future: BoxFuture<Result<Option<Payload>, ErrorBody>> = Box::pin(future);
        match poll_once(&mut future) {
            Some(reply) => {
                // What the operation queued (our own `msg` when publishing to a channel we
                // joined, a join's `res`) goes out first, as for any other subscriber.
                self.take_queued();
                match reply {
                    Ok(None) => Step::Continue,
                    Ok(Some(data)) => self.reply(id, Ok(data)),
                    Err(error) => self.reply(id, Err(error)),
                }
            }
            None => {
                let tx = self.handle.shared.queue.clone();
                let codec = self.codec();
                tokio::spawn(async move {
                    let reply = AssertUnwindSafe(future)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(panicked()));
                    let reply = match reply {
                        Ok(None) => return,
                        Ok(Some(data)) => Ok(data),
                        Err(error) => Err(error),
                    };
                    let _ = tx
                        .push(Outbound::Frame(encode_reply(codec, id, reply)))
                        .await;
                });
                Step::Continue
            }
        }
    }

    fn unknown(&mut self, id: Option<u64>, method: &str) -> Step {
        self.error(
            id,
            ErrorCode::NOT_FOUND,
            format!("unknown method `{}`", shown(method)),
        )
    }

    fn wrong_kind(&mut self, id: Option<u64>, method: &str, actual: &Method, sent: &str) -> Step {
        let frame = match actual {
            Method::Request(_) => "req",
            Method::Stream(_) => "sub",
            Method::Notify(_) => "ntf",
        };
        let message = format!(
            "`{method}` is a {} method: call it with `{frame}`, not `{sent}`",
            actual.kind()
        );
        self.bad_frame(id, message)
    }

    /// Routes the client's answer to a call the server made.
    fn answer(&mut self, id: u64, answer: Result<Payload, ErrorBody>) {
        let pending = self
            .handle
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match pending {
            Some(Pending::Request(tx)) => {
                let _ = tx.send(answer);
            }
            Some(Pending::Stream(tx)) => {
                let _ = tx.try_send(answer.map(Some));
            }
            None => {}
        }
    }

    fn stream_event(&mut self, id: u64, event: Result<Option<Payload>, ErrorBody>) {
        let mut pending = self
            .handle
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(Pending::Stream(tx)) = pending.get(&id) else {
            return;
        };
        let last = !matches!(event, Ok(Some(_)));
        if tx.try_send(event).is_err() {
            // The client sent more than the credit it was given: end the stream with an error.
            if let Some(Pending::Stream(tx)) = pending.remove(&id) {
                let _ = tx.try_send(Err(ErrorBody::new(
                    ErrorCode::BAD_FRAME,
                    "the client sent more items than its credit allowed",
                )));
            }
        } else if last {
            pending.remove(&id);
        }
    }

    // ---- closing ----------------------------------------------------------------------

    async fn close(&mut self, code: CloseCode, reason: &'static str) -> DisconnectReason {
        // Nothing may follow the close frame.
        self.queue.set_direct(false);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            // Frames taken for writing before the close go first.
            while let Some(frame) = self.out.pop_front() {
                if self.ws.feed(frame).await.is_err() {
                    return;
                }
            }
            if self
                .ws
                .send(yawc::Frame::close(
                    yawc::close::CloseCode::from(code.0),
                    reason,
                ))
                .await
                .is_ok()
            {
                // Wait for the client's close reply (or the end of the socket).
                while self.ws.next_frame().await.is_ok() {}
            }
        })
        .await;
        DisconnectReason::ServerClosed(code, reason)
    }

    /// Stops everything the connection still runs and wakes everyone waiting on it.
    fn finish(&mut self, reason: &DisconnectReason) {
        let cancel = if matches!(
            reason,
            DisconnectReason::ServerClosed(CloseCode::GOING_AWAY, _)
        ) {
            CancelReason::Shutdown
        } else {
            CancelReason::Disconnected
        };
        for (_, call) in self.in_flight.drain() {
            stop(call, cancel);
        }
        for (_, task) in self.notifying.drain() {
            task.abort();
        }
        // Dropping the senders fails every call the server made to this client.
        self.handle
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.handle.shared.gone.fire();
        self.queue.close();
    }
}

/// Runs a stream handler: sends each item once credit allows, and returns the final frame.
async fn pump(
    start: BoxFuture<Result<crate::rpc::handler::BoxStream<Reply>, ErrorBody>>,
    codec: Codec,
    id: u64,
    seq: u64,
    tx: &OutboundQueue,
    credit: Option<Arc<Semaphore>>,
) -> Frame {
    let mut stream = match start.await {
        Ok(stream) => stream,
        Err(error) => {
            return Frame::Err {
                id: Some(id),
                error,
            };
        }
    };
    loop {
        match stream.next().await {
            Some(Ok(data)) => {
                // Credit counts items only: take it for an item in hand, so that `end` (or
                // `err`) never waits for credit once the last granted item has gone out.
                if let Some(credit) = &credit {
                    match credit.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return Frame::End { id },
                    }
                }
                let Ok(bytes) = codec.encode(&Frame::Item { id, data }) else {
                    return Frame::Err {
                        id: Some(id),
                        error: panicked(),
                    };
                };
                // Waiting here is the stream's backpressure: it goes no faster than the socket.
                if tx.push(Outbound::Item { id, seq, bytes }).await.is_err() {
                    return Frame::End { id };
                }
            }
            Some(Err(error)) => {
                return Frame::Err {
                    id: Some(id),
                    error,
                };
            }
            None => return Frame::End { id },
        }
    }
}

/// Why a connection ends when a close was requested (slow consumer, `ConnectionHandle::close`)
/// while a write was stalled: the requested close, though its frame cannot get through.
fn requested_close(handle: &ConnectionHandle) -> DisconnectReason {
    let (code, reason) = handle
        .shared
        .close_code
        .get()
        .copied()
        .unwrap_or((CloseCode::NORMAL, ""));
    DisconnectReason::ServerClosed(code, reason)
}

fn stop(call: InFlight, reason: CancelReason) {
    if let Some(state) = &call.state {
        state.cancel(reason);
    }
    if let Some(abort) = call.abort {
        abort.abort();
    }
}

fn encode_reply(codec: Codec, id: u64, reply: Reply) -> Bytes {
    let frame = match reply {
        Ok(data) => Frame::Res { id, data },
        Err(error) => Frame::Err {
            id: Some(id),
            error,
        },
    };
    codec.encode(&frame).unwrap_or_else(|e| {
        let error = crate::error::RpcError::internal(e).into_body();
        codec
            .encode(&Frame::Err {
                id: Some(id),
                error,
            })
            .unwrap_or_default()
    })
}

fn panicked() -> ErrorBody {
    crate::error::RpcError::internal("handler panicked").into_body()
}

/// Runs `f`, turning a panic into `None`.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Polls a handler's future once; a panic becomes an `INTERNAL` reply.
fn poll_once<T>(future: &mut BoxFuture<Result<T, ErrorBody>>) -> Option<Result<T, ErrorBody>> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match guarded(|| future.as_mut().poll(&mut cx)) {
        Some(Poll::Ready(out)) => Some(out),
        Some(Poll::Pending) => None,
        None => Some(Err(panicked())),
    }
}

/// Writes the close reply yawc queued when it read the peer's close. yawc writes such
/// replies from `poll_ready` (or the next read), not from `flush`.
pub(crate) async fn write_close_reply<S>(ws: &mut WebSocket<S>) -> Result<(), yawc::WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
    ws.flush().await
}

/// The heartbeat timer, polled only when due: once its `Sleep` has this task's waker, the
/// timer wakes the task at the deadline, so a turn of the loop for anything else (one per
/// publication delivered) need not touch it.
struct Heartbeat {
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: Instant,
    interval: Duration,
    /// The `Sleep` holds this task's waker for `deadline`.
    armed: bool,
}

impl Heartbeat {
    fn new(interval: Duration) -> Self {
        let deadline = Instant::now() + interval;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            deadline,
            interval,
            armed: false,
        }
    }

    /// Ready once per interval; the next deadline counts from when it was seen, so a busy
    /// task does not fire a burst of missed ticks.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && Instant::now() < self.deadline {
            return Poll::Pending;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.deadline = Instant::now() + self.interval;
                self.sleep.as_mut().reset(self.deadline);
                self.armed = false;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The close reason for a refused credential.
fn refused_reason(error: &AuthError) -> &'static str {
    match error {
        AuthError::Forbidden(_) => "forbidden",
        _ => "not authorized",
    }
}

/// How long before its credential expires a connection is asked for a fresh one (or half
/// the time left, if that is less).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// Time a client always gets to answer `$refresh`, even when asked at the last moment.
const REFRESH_MIN_ANSWER: Duration = Duration::from_secs(2);

/// Keeps an authenticated connection's credential fresh: before it expires, asks the client
/// for a new one with `$refresh` and checks it; when none valid comes before the old one
/// expires, closes the connection with 4001 (4003 if the new one is refused as forbidden or
/// names another user).
async fn keep_credential_fresh(server: Arc<ServerInner>, handle: ConnectionHandle) {
    use std::time::{SystemTime, UNIX_EPOCH};

    #[derive(serde::Deserialize)]
    struct Refreshed {
        token: String,
    }
    let time_left = |expires: SystemTime| {
        expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    };
    loop {
        let principal = handle.principal();
        let Some(expires) = principal.expires_at else {
            return;
        };
        let left = time_left(expires);
        let ask_in = left.saturating_sub(REFRESH_AHEAD.min(left / 2));
        tokio::select! {
            _ = tokio::time::sleep(ask_in) => {}
            _ = handle.closed() => return,
        }
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let window = time_left(expires).max(REFRESH_MIN_ANSWER);
        let answer = handle
            .request_timeout::<_, Refreshed>("$refresh", &serde_json::json!({ "exp": exp }), window)
            .await;
        let outcome = match answer {
            Ok(refreshed) => {
                let credential = Credential::new(refreshed.token, CredentialSource::Hello);
                let request = AuthRequest::new(handle.headers())
                    .with_credential(Some(&credential))
                    .with_remote(handle.remote_addr());
                match server.authenticate(request).await {
                    Ok(fresh) if fresh.user == principal.user => Ok(fresh),
                    Ok(_) => Err(AuthError::forbidden(
                        "the refreshed credential is for another user",
                    )),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(AuthError::not_authorized(format!(
                "no fresh credential: {}",
                e.message()
            ))),
        };
        match outcome {
            Ok(fresh) => {
                tracing::debug!(conn = %handle.id(), "credential refreshed");
                handle.set_principal(fresh);
                // Subscriptions made under the old credential must still be allowed.
                server.hub.recheck_subscriptions(&handle).await;
            }
            Err(e) => {
                // The credential it has stays good until it expires.
                tokio::select! {
                    _ = tokio::time::sleep(time_left(expires)) => {}
                    _ = handle.closed() => return,
                }
                tracing::debug!(conn = %handle.id(), error = %e.message(), "credential expired");
                handle.close(e.close_code(), refused_reason(&e));
                return;
            }
        }
    }
}
