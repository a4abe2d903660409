//! The server's calls to this client in flight on one connection: each runs the handler
//! the [`Router`](crate::Router) names (or the built-in `$refresh`) on a task the server
//! can cancel, and its replies go back through the connection.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Frame, Payload};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use crate::credentials::{self, CredentialsFn};
use crate::options::ClientOptions;
use crate::router::{Method, Router};

/// A call from the server that a handler is working on.
pub(crate) struct IncomingCall {
    abort: AbortHandle,
    credit: Option<Arc<Semaphore>>,
}

/// The server's calls in flight on one connection, owned by the connection task.
pub(crate) struct Incoming {
    router: Router,
    /// Answers `$refresh`.
    credentials: Option<CredentialsFn>,
    /// How long `$refresh` waits for the credentials hook.
    credentials_timeout: Duration,
    calls: HashMap<u64, IncomingCall>,
    replies: mpsc::Sender<Frame>,
}

/// The server asks for a new token before the connection's current one expires.
pub(crate) const REFRESH: &str = "$refresh";

/// Credit beyond which further grants are ignored (keeps the semaphore far from its limit).
const MAX_CREDIT: usize = 1 << 30;

impl Incoming {
    pub(crate) fn new(options: &ClientOptions, replies: mpsc::Sender<Frame>) -> Self {
        Self {
            router: options.router.clone(),
            credentials: options.credential_source(),
            credentials_timeout: options.connect_timeout,
            calls: HashMap::new(),
            replies,
        }
    }

    /// Starts a handler for a `req`; returns a frame to send at once (e.g. `NOT_FOUND`).
    /// `$` names are the built-ins', never the application's.
    pub(crate) fn request(&mut self, id: u64, method: &str, data: Payload) -> Option<Frame> {
        if self.calls.contains_key(&id) {
            tracing::warn!(id, "server reused the id of a call in flight; ignoring it");
            return None;
        }
        if method == REFRESH {
            let codec = data.codec();
            let exp = data.decode::<RefreshParams>().ok().and_then(|p| p.exp);
            tracing::debug!(id, ?exp, "server asks for a fresh token");
            let refreshing = refresh(self.credentials.clone(), self.credentials_timeout, codec);
            self.spawn_request(id, refreshing.boxed());
            return None;
        }
        // `$` names cannot be registered (see `Router::request`).
        let Some(Method::Request(handler)) = self.router.get(method) else {
            return Some(not_found(id, method));
        };
        // The handler is user code: a panic, even while building the future, becomes an
        // INTERNAL error for this call, not the end of the connection task.
        let Ok(fut) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(data))) else {
            return Some(internal(id));
        };
        self.spawn_request(id, fut);
        None
    }

    /// Runs a request's answer as a task the server can cancel.
    fn spawn_request(&mut self, id: u64, fut: BoxFuture<'static, Result<Payload, ErrorBody>>) {
        let replies = self.replies.clone();
        let task = tokio::spawn(async move {
            let frame = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(data)) => Frame::Res { id, data },
                Ok(Err(error)) => Frame::Err {
                    id: Some(id),
                    error,
                },
                Err(_) => internal(id),
            };
            let _ = replies.send(frame).await;
        });
        self.calls.insert(
            id,
            IncomingCall {
                abort: task.abort_handle(),
                credit: None,
            },
        );
    }

    /// Starts a handler for a `sub`; returns a frame to send at once (e.g. `NOT_FOUND`).
    pub(crate) fn stream(
        &mut self,
        id: u64,
        method: &str,
        data: Payload,
        credit: Option<u32>,
    ) -> Option<Frame> {
        if self.calls.contains_key(&id) {
            tracing::warn!(id, "server reused the id of a call in flight; ignoring it");
            return None;
        }
        let Some(Method::Stream(handler)) = self.router.get(method) else {
            return Some(not_found(id, method));
        };
        let semaphore = credit.map(|n| Arc::new(Semaphore::new((n as usize).min(MAX_CREDIT))));
        let permits = semaphore.clone();
        let handler = handler.clone();
        let replies = self.replies.clone();
        let task = tokio::spawn(async move {
            let Ok(opening) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(data))) else {
                let _ = replies.send(internal(id)).await;
                return;
            };
            let stream = match AssertUnwindSafe(opening).catch_unwind().await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let _ = replies
                        .send(Frame::Err {
                            id: Some(id),
                            error,
                        })
                        .await;
                    return;
                }
                Err(_) => {
                    let _ = replies.send(internal(id)).await;
                    return;
                }
            };
            let mut stream = AssertUnwindSafe(stream);
            // Bounded by the stream itself: it ends on `end`, `err`, or the task's abort.
            loop {
                if let Some(permits) = &permits {
                    match permits.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                }
                let frame = match AssertUnwindSafe(stream.next()).catch_unwind().await {
                    Ok(Some(Ok(data))) => Frame::Item { id, data },
                    Ok(Some(Err(error))) => Frame::Err {
                        id: Some(id),
                        error,
                    },
                    Ok(None) => Frame::End { id },
                    Err(_) => internal(id),
                };
                let last = !matches!(frame, Frame::Item { .. });
                if replies.send(frame).await.is_err() || last {
                    return;
                }
            }
        });
        self.calls.insert(
            id,
            IncomingCall {
                abort: task.abort_handle(),
                credit: semaphore,
            },
        );
        None
    }

    /// Runs a notification handler, detached.
    pub(crate) fn notify(&self, method: &str, data: Payload) {
        match self.router.get(method) {
            Some(Method::Notify(handler)) => {
                let Ok(fut) = std::panic::catch_unwind(AssertUnwindSafe(|| handler(data))) else {
                    tracing::warn!(%method, "notification handler panicked");
                    return;
                };
                let method = method.to_owned();
                tokio::spawn(async move {
                    if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
                        tracing::warn!(%method, "notification handler panicked");
                    }
                });
            }
            _ => match self.router.other_notifications() {
                Some(handler) => handler(method, data),
                None => tracing::debug!(%method, "no handler for notification"),
            },
        }
    }

    /// The server cancelled call `id`: stop its handler.
    pub(crate) fn cancel(&mut self, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            call.abort.abort();
        }
    }

    /// The server granted `n` more items on stream `id`.
    pub(crate) fn credit(&mut self, id: u64, n: u32) {
        if let Some(semaphore) = self.calls.get(&id).and_then(|c| c.credit.as_ref())
            && semaphore.available_permits() < MAX_CREDIT
        {
            semaphore.add_permits((n as usize).min(MAX_CREDIT));
        }
    }

    /// Whether a handler's reply may go out; the last reply of a call forgets the call.
    pub(crate) fn admit(&mut self, frame: &Frame) -> bool {
        match frame {
            Frame::Item { id, .. } => self.calls.contains_key(id),
            Frame::Res { id, .. } | Frame::End { id } | Frame::Err { id: Some(id), .. } => {
                self.calls.remove(id).is_some()
            }
            _ => true,
        }
    }

    /// The connection ended: stop every handler.
    pub(crate) fn abort_all(&mut self) {
        for (_, call) in self.calls.drain() {
            call.abort.abort();
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.abort_all();
    }
}

/// The params of `$refresh`: the current token's expiry, in Unix seconds.
#[derive(Deserialize)]
struct RefreshParams {
    exp: Option<u64>,
}

/// The result of `$refresh`.
#[derive(Serialize)]
struct RefreshResult {
    token: String,
}

/// Answers `$refresh` with the credentials hook's token, or `UNAVAILABLE` when it has none
/// or fails (the hook's error is logged, not sent).
async fn refresh(
    credentials: Option<CredentialsFn>,
    limit: Duration,
    codec: Codec,
) -> Result<Payload, ErrorBody> {
    let unavailable = |message: &str| ErrorBody::new(ErrorCode::UNAVAILABLE, message);
    let Some(hook) = credentials else {
        return Err(unavailable("the client has no credentials"));
    };
    match credentials::fetch(hook, limit).await {
        Ok(Some(token)) => Payload::encode(codec, &RefreshResult { token }).map_err(|e| {
            tracing::warn!("cannot encode the answer to $refresh: {e}");
            ErrorBody::new(ErrorCode::INTERNAL, "cannot encode result")
        }),
        Ok(None) => Err(unavailable("no credential available")),
        Err(e) => {
            tracing::warn!("credentials hook failed for $refresh: {e}");
            Err(unavailable("cannot fetch a credential"))
        }
    }
}

fn not_found(id: u64, method: &str) -> Frame {
    let shown: String = method.chars().take(64).collect();
    Frame::Err {
        id: Some(id),
        error: ErrorBody::new(ErrorCode::NOT_FOUND, format!("no handler for `{shown}`")),
    }
}

fn internal(id: u64) -> Frame {
    tracing::warn!(id, "handler panicked");
    Frame::Err {
        id: Some(id),
        error: ErrorBody::new(ErrorCode::INTERNAL, "handler failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::router::Router;

    #[tokio::test]
    async fn notifications_without_a_handler_go_to_notify_any() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .notify("known", |_: serde_json::Value| async {})
            .notify_any({
                let seen = seen.clone();
                move |method, data| seen.lock().unwrap().push((method.to_owned(), data))
            });
        let (replies, _) = mpsc::channel(1);
        let incoming = Incoming::new(&ClientOptions::default().router(router), replies);
        let data = Payload::encode(plexus_protocol::Codec::Json, &1).unwrap();
        incoming.notify("known", data.clone());
        incoming.notify("other.note", data.clone());
        assert_eq!(*seen.lock().unwrap(), [("other.note".to_owned(), data)]);
    }

    #[test]
    fn merging_keeps_one_notify_any() {
        let router = Router::new()
            .notify_any(|_, _| {})
            .merge(Router::new().notify("a", |_: u8| async {}));
        assert!(
            router.other_notifications().is_some(),
            "kept when the other has none"
        );
        assert!(router.contains("a"));
    }
}
