//! The handshake: the client's `hello` when it authenticates in band, the pool's handler
//! taking the connection, then `welcome`.

use std::panic::AssertUnwindSafe;
use std::pin::pin;

use futures_util::FutureExt;
use plexus_protocol::{CloseCode, Frame};
use tokio::time::Instant;

use super::refresh::keep_credential_fresh;
use super::{Session, SessionEnv};
use crate::auth::{AuthError, AuthRequest, Credential, CredentialSource};
use crate::conn::{CloseReason, ConnectionHandle, DisconnectReason, Inbound, Wire, close_reason};

impl Session {
    /// Waits for the client's `hello` and authenticates it. Nothing else is served before:
    /// any other frame closes the connection with 4000; a refused credential gets `reject`
    /// and close 4001 or 4003.
    pub(super) async fn hello(&mut self) -> Result<(), DisconnectReason> {
        let result = self.await_hello().await;
        if result.is_err() {
            crate::metrics::handshake_failed(crate::metrics::HandshakeFailure::Hello);
        }
        result
    }

    async fn await_hello(&mut self) -> Result<(), DisconnectReason> {
        let rules = HelloRules {
            others: BeforeHello::Close,
            authenticated: false,
            read_token: true,
        };
        await_hello(&mut self.wire, &self.handle, &self.env, rules).await
    }

    /// Asks the handler the pool gave this connection to take it: a refusal (or no answer
    /// within the handshake timeout) closes the connection with 1013 and the reason, before
    /// any `welcome`; a panic closes it with 1011. A close request or the shutdown meanwhile
    /// drops the handler's future and closes as asked.
    pub(super) async fn hand_over(&mut self) -> Result<(), DisconnectReason> {
        let timeout = self.env.limits.handshake_timeout;
        let outcome = {
            let taking = AssertUnwindSafe(tokio::time::timeout(
                timeout,
                self.handler.connected(&self.handle),
            ))
            .catch_unwind();
            let mut taking = pin!(taking);
            match taking.as_mut().now_or_never() {
                Some(answer) => Ok(answer),
                None => {
                    // The handshake's `101` is held back to leave with the `welcome` (see
                    // `endpoint::held_upgrade`): a handler that takes its time must not
                    // hold up the handshake too.
                    self.wire.drain(&self.handle).await?;
                    loop {
                        tokio::select! {
                            biased;
                            answer = &mut taking => break Ok(answer),
                            () = std::future::poll_fn(|cx| self.handle.shared.queue.poll_kick(cx)) => {
                                if let Some(wanted) = self.env.close_wanted(&self.handle) {
                                    break Err(wanted);
                                }
                            }
                        }
                    }
                }
            }
        };
        let why = match outcome {
            Ok(Ok(Ok(Ok(())))) => return Ok(()),
            Ok(Ok(Ok(Err(why)))) => CloseReason::Owned(why),
            Ok(Ok(Err(_))) => {
                CloseReason::Borrowed("the handler did not take the connection in time")
            }
            Ok(Err(_)) => {
                tracing::error!(conn = %self.handle.id(), "a pool handler's `connected` panicked: closing with 1011");
                return Err(self.close(CloseCode::INTERNAL, "internal error").await);
            }
            Err((code, reason)) => return Err(self.wire.close(code, reason).await),
        };
        tracing::warn!(conn = %self.handle.id(), reason = %why, "the pool's handler refused the connection");
        Err(self
            .wire
            .close(CloseCode::TRY_AGAIN_LATER, close_reason(why))
            .await)
    }

    /// Sends `welcome`, then starts what runs beside an open session: the `on_connect` hook
    /// and, for a credential that expires, the refresh keeper.
    pub(super) async fn welcome(&mut self) -> Result<(), DisconnectReason> {
        self.welcomed = true;
        // In a block of its own, so the frame is not kept for the life of the session.
        {
            let welcome = welcome_frame(&self.handle, &self.env);
            self.write_frame(&welcome);
        }
        self.drain().await?;
        if let Some(hook) = self.env.on_connect.clone() {
            tokio::spawn(hook(self.handle.clone()));
        }
        if self.env.admission.is_some() && self.handle.principal().expires_at.is_some() {
            tokio::spawn(keep_credential_fresh(self.env.clone(), self.handle.clone()));
        }
        Ok(())
    }
}

/// What a frame other than `hello` does while the server waits for the `hello`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeforeHello {
    /// Closes the connection with 4000 (a protocol connection).
    Close,
    /// Is dropped unread (a handshaked raw socket, whose client may send early).
    Drop,
}

/// How a `hello` is awaited.
pub(crate) struct HelloRules {
    pub(crate) others: BeforeHello,
    /// The connection's principal came with the upgrade: the `hello` only completes the
    /// handshake.
    pub(crate) authenticated: bool,
    /// Whether the `hello`'s token is a credential (an endpoint may not read it there).
    pub(crate) read_token: bool,
}

/// Waits for the client's `hello` and authenticates it as `rules` say.
/// A refused credential gets `reject` and close 4001 or 4003; no `hello` within the
/// handshake timeout closes with 4000.
pub(crate) async fn await_hello(
    wire: &mut Wire,
    handle: &ConnectionHandle,
    env: &SessionEnv,
    rules: HelloRules,
) -> Result<(), DisconnectReason> {
    let deadline = Instant::now() + env.limits.handshake_timeout;
    let codec = handle.codec();
    loop {
        let frame = match tokio::time::timeout_at(deadline, wire.next_frame()).await {
            Err(_) => {
                let reason = CloseReason::Borrowed("no hello in time");
                return Err(wire.close(CloseCode::BAD_HANDSHAKE, reason).await);
            }
            Ok(Err(e)) => return Err(wire.read_failed(e).await),
            Ok(Ok(frame)) => frame,
        };
        let (payload, binary) = match Inbound::of(frame) {
            Inbound::Message { payload, binary } => (payload, binary),
            Inbound::Control => continue,
            Inbound::PeerClosed(code) => return Err(wire.peer_closed(code).await),
            Inbound::Ended(reason) => return Err(reason),
        };
        let decoded = if binary == codec.is_binary() {
            codec.decode(payload).ok()
        } else {
            None
        };
        let Some(Frame::Hello { token, data }) = decoded else {
            if rules.others == BeforeHello::Drop {
                continue;
            }
            let reason = CloseReason::Borrowed("expected hello");
            return Err(wire.close(CloseCode::BAD_HANDSHAKE, reason).await);
        };
        if rules.authenticated {
            return Ok(());
        }
        let credential = token
            .filter(|token| rules.read_token && !token.is_empty())
            .map(|token| Credential::new(token, CredentialSource::Hello));
        let request = AuthRequest::new(handle.headers())
            .with_credential(credential.as_ref())
            .with_remote(handle.remote_addr())
            .with_hello_data(data.as_ref());
        match env.authenticate(request).await {
            Ok(principal) => {
                handle.set_principal(principal);
                return Ok(());
            }
            Err(e) => return Err(reject(wire, handle, &e).await),
        }
    }
}

/// Refuses a connection in its handshake: `reject` with the error, then the close code
/// that goes with it (4001 or 4003).
pub(crate) async fn reject(
    wire: &mut Wire,
    handle: &ConnectionHandle,
    error: &AuthError,
) -> DisconnectReason {
    if let Ok(bytes) = handle.codec().encode(&Frame::Reject {
        error: error.to_error_body(),
    }) {
        wire.push(bytes);
    }
    if let Err(reason) = wire.drain(handle).await {
        return reason;
    }
    let reason = CloseReason::Borrowed(error.close_reason());
    wire.close(error.close_code(), reason).await
}

/// The `welcome` frame of a connection.
pub(crate) fn welcome_frame(handle: &ConnectionHandle, env: &SessionEnv) -> Frame {
    Frame::Welcome {
        conn: handle.id().to_owned(),
        node: env.node.clone(),
        heartbeat: env.limits.heartbeat_interval.as_millis() as u64,
        user: handle.principal().user.clone(),
    }
}
