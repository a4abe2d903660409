//! The handshake: the client's `hello` when it authenticates in band, then `welcome`.

use plexus_protocol::{CloseCode, Frame};
use tokio::time::Instant;

use super::Session;
use super::refresh::keep_credential_fresh;
use crate::auth::{AuthRequest, Credential, CredentialSource};
use crate::conn::{DisconnectReason, Inbound};

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
        let deadline = Instant::now() + self.env.limits.handshake_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.wire.next_frame()).await {
                Err(_) => {
                    return Err(self
                        .close(CloseCode::BAD_HANDSHAKE, "no hello in time")
                        .await);
                }
                Ok(Err(e)) => return Err(self.wire.read_failed(e).await),
                Ok(Ok(frame)) => frame,
            };
            let (payload, binary) = match Inbound::of(frame) {
                Inbound::Message { payload, binary } => (payload, binary),
                Inbound::Control => continue,
                Inbound::PeerClosed(code) => return Err(self.wire.peer_closed(code).await),
                Inbound::Ended(reason) => return Err(reason),
            };
            let decoded = if binary == self.codec().is_binary() {
                self.codec().decode(payload).ok()
            } else {
                None
            };
            let Some(Frame::Hello { token, data }) = decoded else {
                return Err(self.close(CloseCode::BAD_HANDSHAKE, "expected hello").await);
            };
            let credential = token
                .filter(|token| !token.is_empty())
                .map(|token| Credential::new(token, CredentialSource::Hello));
            let request = AuthRequest::new(self.handle.headers())
                .with_credential(credential.as_ref())
                .with_remote(self.handle.remote_addr())
                .with_hello_data(data.as_ref());
            match self.env.authenticate(request).await {
                Ok(principal) => {
                    self.handle.set_principal(principal);
                    return Ok(());
                }
                Err(e) => {
                    self.write_frame(&Frame::Reject {
                        error: e.to_error_body(),
                    });
                    self.drain().await?;
                    let reason = e.close_reason();
                    return Err(self.close(e.close_code(), reason).await);
                }
            }
        }
    }

    /// Sends `welcome`, then starts what runs beside an open session: the `on_connect` hook
    /// and, for a credential that expires, the refresh keeper.
    pub(super) async fn welcome(&mut self) -> Result<(), DisconnectReason> {
        self.welcomed = true;
        // In a block of its own, so the frame is not kept for the life of the session.
        {
            let welcome = Frame::Welcome {
                conn: self.handle.id().to_owned(),
                node: self.env.node.clone(),
                heartbeat: self.env.limits.heartbeat_interval.as_millis() as u64,
                user: self.handle.principal().user.clone(),
            };
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
