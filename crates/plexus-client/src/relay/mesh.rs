//! [`Mesh`]: a client of several relays at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_protocol::IntoPayload;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, connect};
use crate::error::{CallError, ConnectError};
use crate::options::{CallOptions, ClientOptions, StreamOptions};
use crate::status::Status;
use crate::stream::CallStream;

/// How long a relay's watch of its providers rests before it is opened again, so that a
/// connection that keeps failing is not hammered.
const REWATCH_DELAY: Duration = Duration::from_millis(250);

/// A client of several relays: each call goes through a connected relay where its service
/// has a provider (round-robin among them), so losing one of two relays does not interrupt
/// service. Each relay has its own reconnecting [`Client`] and its own [`Status`].
///
/// With [`ClientOptions::provide`], the mesh provides through every relay.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use plexus_client::{CallOptions, ClientOptions, Mesh};
///
/// let urls = ["ws://relay-a:8787/ws", "ws://relay-b:8787/ws"];
/// let mesh = Mesh::connect(urls, ClientOptions::default()).await?;
/// let text: String = mesh
///     .request("Greeting.hello", &"Ada", CallOptions::default().offline_retries(3))
///     .await?;
/// # let _ = text;
/// # Ok(())
/// # }
/// ```
///
/// A call that a relay took is never sent again through another one: when that relay dies
/// the call fails with `UNAVAILABLE`; the next call goes through a relay that is up.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    relays: Vec<Arc<RelaySlot>>,
    /// Bumped whenever a relay's status or providers change.
    changes: Arc<watch::Sender<u64>>,
    cursor: AtomicUsize,
    shutdown: CancellationToken,
}

impl Drop for MeshInner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One relay of the mesh.
struct RelaySlot {
    url: String,
    /// Present once the first connection succeeded.
    client: Mutex<Option<Client>>,
    /// Its providers: node id → services, from its `$watch`.
    providers: Mutex<BTreeMap<String, Vec<String>>>,
    /// Its client's status (`Connecting` until the first connection).
    status: watch::Sender<Status>,
    /// The mesh's change counter.
    changes: Arc<watch::Sender<u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl RelaySlot {
    fn client(&self) -> Option<Client> {
        lock(&self.client).clone()
    }

    fn status(&self) -> Status {
        *self.status.borrow()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn knows(&self, service: &str) -> bool {
        lock(&self.providers)
            .values()
            .any(|services| services.iter().any(|s| s == service))
    }
}

impl Mesh {
    /// Connects to every relay in `urls`, each with `options`, and resolves once one of
    /// them is connected; the others keep trying in the background (with the backoff of
    /// [`ClientOptions::reconnect`]). Fails when every relay failed its first attempt.
    pub async fn connect<I, S>(urls: I, options: ClientOptions) -> Result<Mesh, ConnectError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let changes = Arc::new(watch::Sender::new(0));
        let relays: Vec<Arc<RelaySlot>> = urls
            .into_iter()
            .map(|url| {
                Arc::new(RelaySlot {
                    url: url.into(),
                    client: Mutex::new(None),
                    providers: Mutex::new(BTreeMap::new()),
                    status: watch::Sender::new(Status::Connecting),
                    changes: changes.clone(),
                })
            })
            .collect();
        if relays.is_empty() {
            return Err(ConnectError::InvalidUrl(
                "a mesh needs at least one relay".into(),
            ));
        }
        let shutdown = CancellationToken::new();
        let (first_tx, mut first_rx) = mpsc::channel(relays.len());
        for slot in &relays {
            tokio::spawn(keep(
                slot.clone(),
                options.clone(),
                first_tx.clone(),
                shutdown.clone(),
            ));
        }
        drop(first_tx);
        let mesh = Mesh {
            inner: Arc::new(MeshInner {
                relays,
                changes,
                cursor: AtomicUsize::new(0),
                shutdown,
            }),
        };
        let mut last_error = None;
        while let Some(first) = first_rx.recv().await {
            match first {
                Ok(()) => return Ok(mesh),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(ConnectError::Aborted))
    }

    /// Each relay's URL and the status of its connection, in the order given.
    pub fn status(&self) -> Vec<(String, Status)> {
        self.inner
            .relays
            .iter()
            .map(|slot| (slot.url.clone(), slot.status()))
            .collect()
    }

    /// Follows the status of the relay at `url` (one of those given to
    /// [`Mesh::connect`]): `wait_for` on the receiver to wait for a relay to come or go.
    pub fn relay_status(&self, url: &str) -> Option<watch::Receiver<Status>> {
        self.inner
            .relays
            .iter()
            .find(|slot| slot.url == url)
            .map(|slot| slot.status.subscribe())
    }

    /// Waits until a connected relay of the mesh has a provider of `service`; fails with
    /// `TIMEOUT` past `timeout`.
    pub async fn wait_for_service(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let mut changes = self.inner.changes.subscribe();
        let known = changes.wait_for(|_| {
            self.inner
                .relays
                .iter()
                .any(|slot| slot.status() == Status::Connected && slot.knows(service))
        });
        match tokio::time::timeout(timeout, known).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CallError::closed()),
            Err(_) => Err(CallError::timeout()),
        }
    }

    /// The client of a connected relay for `method` (`<Service>.<method>`): one where the
    /// service has a provider, round-robin among them; else any connected relay (which will
    /// answer `SERVICE_OFFLINE`, or route the call once a provider comes). Fails with
    /// `UNAVAILABLE` when no relay is connected.
    pub fn client_for(&self, method: &str) -> Result<Client, CallError> {
        self.candidates(method)
            .into_iter()
            .next()
            .ok_or_else(|| CallError::unavailable("no relay of the mesh is connected"))
    }

    /// The connected relays for `method`, best first, starting at the round-robin cursor.
    fn candidates(&self, method: &str) -> Vec<Client> {
        let service = method
            .split_once('.')
            .map_or(method, |(service, _)| service);
        let relays = &self.inner.relays;
        let start = self.inner.cursor.fetch_add(1, Ordering::Relaxed);
        let mut knowing = Vec::new();
        let mut others = Vec::new();
        for i in 0..relays.len() {
            let slot = &relays[(start + i) % relays.len()];
            let Some(client) = slot.client() else {
                continue;
            };
            if *client.status().borrow() != Status::Connected {
                continue;
            }
            if slot.knows(service) {
                knowing.push(client);
            } else {
                others.push(client);
            }
        }
        knowing.extend(others);
        knowing
    }

    /// Calls `method` through a relay chosen as by [`Mesh::client_for`]; a relay that went
    /// down before the call left the client is skipped for the next one.
    pub async fn request<R: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: impl IntoPayload,
        options: CallOptions,
    ) -> Result<R, CallError> {
        let mut candidates = self.candidates(method).into_iter();
        let Some(client) = candidates.next() else {
            return Err(CallError::unavailable("no relay of the mesh is connected"));
        };
        let params = params
            .into_payload(client.codec())
            .map_err(CallError::encode)?;
        let mut outcome = client
            .request(method, params.clone())
            .options(options.clone())
            .await;
        for client in candidates {
            match &outcome {
                Err(e) if e.is_not_connected() => {
                    outcome = client
                        .request(method, params.clone())
                        .options(options.clone())
                        .await;
                }
                _ => break,
            }
        }
        outcome
    }

    /// Opens a stream of `method` through a relay chosen as by [`Mesh::client_for`].
    pub async fn stream<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &str,
        params: impl IntoPayload,
        options: StreamOptions,
    ) -> Result<CallStream<T>, CallError> {
        let client = self.client_for(method)?;
        client.stream(method, params).options(options).await
    }

    /// Closes every relay's connection.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        for slot in &self.inner.relays {
            if let Some(client) = slot.client() {
                client.close().await;
            }
        }
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("relays", &self.status())
            .finish()
    }
}

/// Keeps one relay: connects (with backoff until it works), then follows its providers.
async fn keep(
    slot: Arc<RelaySlot>,
    options: ClientOptions,
    first: mpsc::Sender<Result<(), ConnectError>>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let client = loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = connect(&slot.url, options.clone()) => attempt,
        };
        match attempt {
            Ok(client) => break client,
            Err(error) => {
                let fatal = error.is_fatal();
                tracing::debug!(url = %slot.url, %error, "relay unreachable");
                if fatal {
                    slot.status.send_replace(Status::Closed);
                    let _ = first.try_send(Err(error));
                    return;
                }
                if failures == 0 {
                    let _ = first.try_send(Err(error));
                }
                let delay = options.reconnect.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    *lock(&slot.client) = Some(client.clone());
    tokio::spawn(mirror_status(
        client.status(),
        slot.clone(),
        shutdown.clone(),
    ));
    let _ = first.try_send(Ok(()));
    drop(first);
    let mut status = client.status();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = follow_providers(&slot, &client) => {}
        }
        lock(&slot.providers).clear();
        slot.changed();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REWATCH_DELAY) => {}
        }
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = wait_connected(&mut status) => next,
        };
        if !next {
            return;
        }
    }
}

/// Mirrors the client's status into the slot.
async fn mirror_status(
    mut status: watch::Receiver<Status>,
    slot: Arc<RelaySlot>,
    shutdown: CancellationToken,
) {
    loop {
        let now = *status.borrow_and_update();
        slot.status.send_replace(now);
        slot.changed();
        if now == Status::Closed {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Mirrors the relay's `$watch` into the slot until the watch ends.
async fn follow_providers(slot: &RelaySlot, client: &Client) {
    let Ok(mut watch) = client.watch_services().await else {
        return;
    };
    while let Some(Ok(_)) = watch.next().await {
        let providers = watch
            .providers()
            .into_iter()
            .map(|p| (p.node, p.services))
            .collect();
        *lock(&slot.providers) = providers;
        slot.changed();
    }
}

/// Waits until the client is connected (true) or closed for good (false).
async fn wait_connected(status: &mut watch::Receiver<Status>) -> bool {
    match status
        .wait_for(|s| matches!(s, Status::Connected | Status::Closed))
        .await
    {
        Ok(status) => *status == Status::Connected,
        Err(_) => false,
    }
}
