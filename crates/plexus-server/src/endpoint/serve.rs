//! `serve`: the server's own accept loop, and its graceful shutdown.
//!
//! Not `axum::serve`, because that one sets no timer, so hyper's header-read timeout never
//! applies and a socket that sends nothing (or trickles a request head) is held forever.
//! Ours drops it after the handshake timeout, and inserts `ConnectInfo` itself. This is why
//! `hyper`, `hyper-util` and `tower` (for `map_request`) are direct dependencies; all three
//! were already in the graph through axum.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tower::ServiceExt;

use super::Server;
use super::held_upgrade::{HeldUpgrade, UpgradeHold};

impl Server {
    /// Serves `app` (which should include [`Server::route`]) on `listener` until `signal`
    /// completes, then shuts down gracefully: calls in flight may finish up to the drain
    /// timeout, then every connection is closed with 1001, and it returns. While draining
    /// it still answers HTTP (so a load balancer's readiness probe sees 503 from
    /// [`Server::health_routes`]) and refuses new upgrades with 503.
    ///
    /// Each accepted TCP connection must send its HTTP request head within the handshake
    /// timeout, or it is dropped: a client that opens sockets and sends nothing (or trickles
    /// bytes) cannot hold them open.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: axum::Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The accept loop is a task of the runtime. Run where `serve` is awaited (often
        // `main`, which a multi-threaded runtime does not run on its workers), it would take
        // each socket on that thread and hand its connection over to a worker: two threads
        // woken per connection (a futex and an eventfd write), and on a server given one
        // core, two threads taking turns on it. Stopping to await `serve` stops the loop too.
        let accepting = AbortOnDropHandle::new(tokio::spawn(
            self.clone().accept_loop(listener, app, signal),
        ));
        match accepting.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        app: axum::Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let server = self.clone();
        tokio::spawn(async move {
            signal.await;
            server.shutdown();
        });
        let header_timeout = self.inner.config.limits.handshake_timeout;
        let http = TaskTracker::new();
        // A socket accepted on a listener bound to one address has that address: asking
        // the kernel (`getsockname`) is needed only behind a wildcard bind (`[::ffff:0.0.0.0]`
        // too).
        let bound = listener
            .local_addr()
            .ok()
            .filter(|addr| !addr.ip().to_canonical().is_unspecified());
        // Set once the WebSocket connections have ended after the shutdown (or their time is
        // up): then HTTP stops too.
        let stopped = CancellationToken::new();
        let drained = {
            let server = self.clone();
            let stopped = stopped.clone();
            async move {
                server.inner.shutdown.cancelled().await;
                if tokio::time::timeout(server.close_deadline(), server.wait_closed())
                    .await
                    .is_err()
                {
                    tracing::warn!("some connections did not close in time");
                }
                stopped.cancel();
            }
        };
        tokio::spawn(drained);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            _ = stopped.cancelled() => break,
                        }
                    }
                },
                _ = stopped.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let local = bound.or_else(|| stream.local_addr().ok());
            let stopped = stopped.clone();
            http.spawn(http_connection(
                stream,
                remote,
                local,
                app.clone(),
                header_timeout,
                async move { stopped.cancelled().await },
            ));
        }
        drop(listener);
        http.close();
        // Requests in progress (and upgraded sockets, already closed) get a moment to finish.
        if tokio::time::timeout(Duration::from_secs(3), http.wait())
            .await
            .is_err()
        {
            tracing::warn!("some HTTP requests did not finish in time");
        }
        Ok(())
    }

    /// How long the WebSocket connections get to close after a shutdown: the drain
    /// timeout plus time for their close handshakes.
    fn close_deadline(&self) -> Duration {
        self.inner.config.limits.drain_timeout + Duration::from_secs(3)
    }

    /// Serves `app` on one connection that arrived some other way than through
    /// [`Server::serve`]'s listener: an in-memory pipe (how the `plexus` test kit connects its
    /// clients), a Unix socket, a tunnel. `remote` is the peer address its requests carry
    /// (what the per-address connection limit and the logs see). The connection gets the
    /// same handshake timeout as one accepted by [`Server::serve`]; the future ends when the
    /// peer closes it or an upgrade takes it over, or once the server's WebSocket connections
    /// have closed after [`Server::shutdown`]. After a shutdown it closes `io` at once.
    pub async fn serve_connection<I>(&self, io: I, remote: SocketAddr, app: axum::Router)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        if self.inner.shutdown.is_cancelled() {
            return; // dropping `io` closes it: a stopped server takes nothing new
        }
        let header_timeout = self.inner.config.limits.handshake_timeout;
        let server = self.clone();
        // As in `serve`: HTTP keeps answering while the WebSocket connections drain.
        let stopped = async move {
            server.inner.shutdown.cancelled().await;
            let _ = tokio::time::timeout(server.close_deadline(), server.wait_closed()).await;
        };
        http_connection(io, remote, None, app, header_timeout, stopped).await;
    }
}

/// The server's address of a connection, in each of its requests' extensions when known.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalAddr(pub(crate) SocketAddr);

/// One HTTP/1.1 connection with upgrades, its request head due within `header_timeout`,
/// shut down gracefully once `stopped` completes.
async fn http_connection<I>(
    io: I,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    app: axum::Router,
    header_timeout: Duration,
    stopped: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let hold = UpgradeHold::default();
    let io = HeldUpgrade::new(io, hold.clone());
    let service = app.map_request(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(hold.clone());
        if let Some(local) = local {
            request.extensions_mut().insert(LocalAddr(local));
        }
        request.map(axum::body::Body::new)
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = stopped => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
