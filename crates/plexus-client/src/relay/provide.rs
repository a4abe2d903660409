//! Providing services through a relay: `$provide` after every `welcome`.

use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::{ErrorBody, ErrorCode, Frame, Payload};
use tokio::sync::oneshot;

use crate::error::CallError;
use crate::options::Provide;
use crate::state::{Inner, Waiter};

/// The first wait before asking again for a node id another connection holds.
const CONFLICT_FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest such wait: the relay closes a half-open connection within two of its
/// heartbeat intervals, so the id comes free in well under a minute.
const CONFLICT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether the relay routes this client's services to it on the current session: see
/// [`Client::provided`](crate::Client::provided).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Provided {
    /// Not on the current session (yet): connecting, waiting for the answer to
    /// `$provide`, or waiting to ask again for a node id another connection still holds.
    Pending,
    /// The relay took `$provide`: calls of the services reach this client as this node.
    Node(String),
    /// The relay refused `$provide` for good on this session (e.g. `FORBIDDEN` without the
    /// provide permission, `NOT_FOUND` from a server that is not a relay). It is asked
    /// again after the next reconnect.
    Refused(ErrorBody),
}

/// Starts providing on the session that just opened, when the client provides anything.
pub(crate) fn provide_on_welcome(inner: &Arc<Inner>) {
    let Some(spec) = inner.options.provide.clone() else {
        return;
    };
    let session = inner.lock().conn_id.clone();
    tokio::spawn(ProvideCall { spec, session }.run(inner.clone()));
}

/// The `$provide` of one session, asked again while its node id is taken.
pub(crate) struct ProvideCall {
    spec: Provide,
    /// The session it belongs to (the `conn` of its `welcome`).
    session: Option<String>,
}

impl ProvideCall {
    async fn run(self, inner: Arc<Inner>) {
        let mut conflicts: u32 = 0;
        loop {
            let outcome = tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                outcome = self.ask(&inner) => outcome,
            };
            match outcome {
                Ok(_) => {
                    tracing::debug!(node = %self.spec.node, "provided");
                    inner
                        .provided
                        .send_replace(Provided::Node(self.spec.node.clone()));
                    return;
                }
                Err(e) if e.is_remote() && *e.code() == ErrorCode::CONFLICT || e.is_timeout() => {
                    let delay = CONFLICT_FIRST_DELAY
                        .saturating_mul(1 << conflicts.min(5))
                        .min(CONFLICT_MAX_DELAY);
                    conflicts = conflicts.saturating_add(1);
                    tracing::info!(node = %self.spec.node, error = %e, ?delay, "provide again");
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    // A later session provides for itself.
                    let st = inner.lock();
                    if st.link.is_none() || st.conn_id != self.session {
                        return;
                    }
                }
                Err(e) if e.is_remote() => {
                    tracing::warn!(node = %self.spec.node, error = %e, "the relay refused $provide");
                    let body = e.to_error_body();
                    let _ = inner.errors.send(body.clone());
                    inner.provided.send_replace(Provided::Refused(body));
                    return;
                }
                // The session ended: the next `welcome` provides again.
                Err(_) => return,
            }
        }
    }

    /// One `$provide` and its answer (bounded by the client's call timeout).
    async fn ask(&self, inner: &Arc<Inner>) -> Result<Payload, CallError> {
        let id = inner.next_id();
        let data = Payload::encode(inner.codec(), &self.spec).map_err(CallError::encode)?;
        let bytes = inner.encode(&Frame::Req {
            id,
            method: "$provide".into(),
            data,
            node: None,
        })?;
        let (tx, rx) = oneshot::channel();
        let mut guard = inner
            .start_call(id, bytes, Waiter::Request(tx), false)
            .await?;
        match tokio::time::timeout(inner.options.call_timeout, rx).await {
            Ok(answer) => {
                guard.disarm();
                answer.unwrap_or_else(|_| Err(CallError::closed()))
            }
            // Dropping the armed guard forgets the call and sends `cancel`.
            Err(_) => Err(CallError::timeout()),
        }
    }
}
