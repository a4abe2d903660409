//! The session's loop: it selects over the outbound queue, the socket, the heartbeat and
//! one deadline timer (drain, idle, or a forwarded request's), and acts on the flags a kick
//! may have set.
//!
//! Every branch only changes state and queues frames on the [`Wire`](crate::conn::Wire);
//! one place (`drain`) writes them and flushes. That keeps this future, which lives as long
//! as the connection, under 2 KiB, and the rare endings (close handshakes, read errors) are
//! boxed so they take no room in it.

use std::sync::atomic::Ordering;

use plexus_protocol::{CloseCode, Frame};
use tokio::time::Instant;

use super::Session;
use crate::conn::{
    Beat, CloseReason, Deadline, DisconnectReason, Heartbeat, Outbound, QueueEvent, WRITE_BATCH,
};

/// What a turn of the loop decided.
pub(super) enum Step {
    Continue,
    Close(CloseCode, &'static str),
    PeerClosed(Option<u16>),
    ReadFailed(yawc::WebSocketError),
    Ended(DisconnectReason),
}

impl Session {
    /// Serves the connection after `welcome` until it ends.
    pub(super) async fn serve(&mut self) -> DisconnectReason {
        let limits = &self.env.limits;
        let mut heartbeat = Heartbeat::new(limits.heartbeat_interval);
        let idle = limits.idle_timeout;
        // A refreshed principal, a close request and the server's shutdown are flags looked
        // at after a kick: setting one kicks the outbound queue, which wakes this task.
        // (Polling a `Notified` every turn would take its waiter lock every time, and the
        // shutdown signal is shared by every connection.)
        let mut kicked = true;
        let mut deadline = Deadline::default();
        // From here until a close begins, publications may be written to the socket directly.
        self.queue().set_direct(true);
        loop {
            if std::mem::take(&mut kicked)
                && let Err(reason) = Box::pin(self.look_at_flags()).await
            {
                return reason;
            }
            // One timer for the drain deadline, the idle deadline and the oldest request
            // forwarded to this client, whichever comes first.
            deadline.at_most(self.draining);
            deadline.at_most(idle.map(|idle| self.last_call + idle));
            let forwarded = self.handle.client_calls().next_deadline();
            if forwarded.is_some_and(|at| at <= Instant::now()) {
                // Checked on every turn too: on a busy provider the biased select below
                // always has something before the timer.
                self.expire_forwarded();
            }
            deadline.at_most(forwarded);
            // A popped item marks the task busy (no direct writes) until a flush; one that
            // writes nothing (the end of a notification, a stale stream item) still needs it.
            let mut popped = false;
            let step = tokio::select! {
                biased;
                event = std::future::poll_fn(|cx| self.handle.shared.queue.poll_event(cx)) => match event {
                    QueueEvent::Item(out) => {
                        popped = true;
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
                () = std::future::poll_fn(|cx| deadline.poll_fired(cx)), if deadline.is_armed() => self.deadline_reached(),
            };
            if popped && self.handle.client_calls().len() > 1 {
                // Many calls to this client at once (a relay's provider): their tasks are
                // queueing more; one turn later one write takes them all, not one each.
                tokio::task::yield_now().await;
                if let Some(out) = self.queue().try_pop() {
                    self.outbound(out);
                }
            }
            if (popped || self.wire.has_pending())
                && let Err(reason) = self.drain().await
            {
                return reason;
            }
            // The rare endings are boxed so that their futures take no room in this one.
            match step {
                Step::Continue => {
                    if self.draining.is_some() && self.calls.is_empty() {
                        return Box::pin(self.close(CloseCode::GOING_AWAY, "server shutting down"))
                            .await;
                    }
                }
                Step::Close(code, reason) => return Box::pin(self.close(code, reason)).await,
                Step::PeerClosed(code) => return Box::pin(self.wire.peer_closed(code)).await,
                Step::ReadFailed(e) => return Box::pin(self.wire.read_failed(e)).await,
                Step::Ended(reason) => return self.wire.abandon(reason),
            }
        }
    }

    /// Acts on the flags a kick may have set. `Err` ends the connection for the reason given.
    /// Rare, so the loop awaits it boxed: this future then takes no room in the loop's.
    async fn look_at_flags(&mut self) -> Result<(), DisconnectReason> {
        if self.queue().has_backlog() {
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
        if let Some((code, reason)) = self.handle.requested_close() {
            // What was queued before the close request (say, a notification of why) goes
            // out before the close frame.
            self.take_queued();
            return Err(self.wire.close(code, reason).await);
        }
        if self.draining.is_none() && self.env.is_shutting_down() {
            self.draining = Some(Instant::now() + self.env.limits.drain_timeout);
            if self.calls.is_empty() {
                self.take_queued();
                return Err(self
                    .close(CloseCode::GOING_AWAY, "server shutting down")
                    .await);
            }
        }
        Ok(())
    }

    fn deadline_reached(&mut self) -> Step {
        let now = Instant::now();
        if self.draining.is_some_and(|drain| now >= drain) {
            return Step::Close(CloseCode::GOING_AWAY, "server shutting down");
        }
        self.expire_forwarded();
        let idle = self.env.limits.idle_timeout;
        if idle.is_none_or(|idle| now < self.last_call + idle) {
            return Step::Continue;
        }
        // Publications written straight to the socket are activity too.
        let waiting = self.queue().take_written_directly()
            || !self.calls.is_empty()
            || !self.handle.client_calls().is_empty();
        if waiting {
            // A call in progress, either way, is not idleness.
            self.last_call = now;
            Step::Continue
        } else {
            Step::Close(CloseCode::NORMAL, "idle timeout")
        }
    }

    /// Requests forwarded to this client that timed out: their callers are answered, and
    /// the client is told to stop.
    fn expire_forwarded(&mut self) {
        for id in self.handle.client_calls().expire(Instant::now()) {
            self.write_frame(&Frame::Cancel { id });
        }
    }

    /// Closes the connection with `code` (see [`Wire::close`](crate::conn::Wire::close)).
    pub(super) async fn close(
        &mut self,
        code: CloseCode,
        reason: &'static str,
    ) -> DisconnectReason {
        self.wire.close(code, CloseReason::Borrowed(reason)).await
    }

    /// Writes and flushes what the session queued.
    pub(super) async fn drain(&mut self) -> Result<(), DisconnectReason> {
        self.wire.drain(&self.handle).await
    }

    /// Writes one outbound message and whatever else is already queued, up to a batch.
    fn outbound(&mut self, first: Outbound) {
        // Frames pushed to the client count as activity for the idle timeout.
        if self.env.limits.idle_timeout.is_some() {
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
                        self.wire.push(bytes);
                    }
                    None
                }
                Outbound::Item { id, seq, bytes } => {
                    self.calls.is_current(id, seq).then_some(bytes)
                }
                Outbound::Final { id, seq, bytes } => self.calls.finished(id, seq).then_some(bytes),
                Outbound::Message { bytes, binary } => {
                    // Never queued for a protocol connection (the hub refuses), but if it
                    // were, it goes out as asked.
                    self.wire.push_message(bytes, binary);
                    written += 1;
                    None
                }
            };
            if let Some(bytes) = bytes.filter(|bytes| !bytes.is_empty()) {
                self.wire.push(bytes);
                written += 1;
            }
            if written < WRITE_BATCH {
                next = self.queue().try_pop();
            }
        }
    }

    /// Moves every frame queued so far to the writer, so that a frame written afterwards (a
    /// reply, a close) follows them.
    pub(super) fn take_queued(&mut self) {
        // Each round takes at least one frame: this takes all that were queued at the start.
        for _ in 0..self.env.limits.outbound_queue.max(1) {
            match self.queue().try_pop() {
                Some(out) => self.outbound(out),
                None => break,
            }
        }
    }
}
