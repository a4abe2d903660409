//! The connection task: the supervisor loop (connect, run a session, back off, reconnect)
//! and the session loop, which owns the WebSocket.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt};
use http::header::{AUTHORIZATION, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use plexus_protocol::{ErrorBody, ErrorCode, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use yawc::{OpCode, TcpWebSocket, WebSocketError};

use crate::credentials;
use crate::error::ConnectError;
use crate::incoming::Incoming;
use crate::options::{ConnectRequest, Transport};
use crate::state::{Inner, Link};
use crate::status::Status;

/// Capacity of a connection's outbound queue of calls and notifications.
const OUTBOUND_CAPACITY: usize = 256;
/// Capacity of the queue of replies from handlers of the server's calls.
const REPLY_CAPACITY: usize = 64;
/// Frames written per batch before one flush.
const WRITE_BATCH: usize = 64;
/// The largest heartbeat interval taken from `welcome` (one day).
const MAX_HEARTBEAT_MS: u64 = 86_400_000;
/// A deadline that never comes (and cannot overflow `Instant`).
const FAR: Duration = Duration::from_secs(86_400 * 365);
/// How long a closing client waits for the server's Close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// [`Client::close`](crate::Client::close) or the last client handle dropped.
    Shutdown,
    /// The server closed with this code (1005 when its Close frame had none) and reason.
    Closed { code: u16, reason: String },
    /// The socket failed, or went silent past heartbeat + grace.
    Dropped,
}

impl SessionEnd {
    /// The end of a socket after the server's Close frame, if one came.
    fn after(close: Option<(u16, String)>) -> Self {
        match close {
            Some((code, reason)) => SessionEnd::Closed { code, reason },
            None => SessionEnd::Dropped,
        }
    }
}

/// An open session: the socket after `welcome`.
struct Session {
    ws: Socket,
    conn: String,
    heartbeat: Option<Duration>,
}

/// The socket of a session: over TCP (and TLS), or over a stream the application's
/// [`connector`](crate::ClientOptions::connector) opened.
// Held only from `welcome` until the session loop takes it apart: boxing a variant would
// save nothing.
#[allow(clippy::large_enum_variant)]
enum Socket {
    Tcp(TcpWebSocket),
    Custom(yawc::WebSocket<Box<dyn Transport>>),
}

/// The supervisor: runs until the client is closed or gives up. `ready` gets the outcome
/// of the first connection.
pub(crate) async fn run(inner: Arc<Inner>, ready: oneshot::Sender<Result<(), ConnectError>>) {
    let mut ready = Some(ready);
    let reconnect = inner.options.reconnect.clone();
    let mut failures: u32 = 0;
    let mut connected_once = false;
    // Bounded by `max_attempts`, by `close()` and by terminal close codes.
    'supervise: loop {
        inner.status.send_replace(if connected_once {
            Status::Reconnecting
        } else {
            Status::Connecting
        });
        let attempt = tokio::select! {
            _ = inner.shutdown.cancelled() => break 'supervise,
            attempt = establish(&inner, failures) => attempt,
        };
        match attempt {
            Ok(session) => {
                connected_once = true;
                let opened = Instant::now();
                let end = run_session(&inner, session, &mut ready).await;
                tracing::debug!(?end, "session ended");
                // A session that dies at once counts as a failed attempt, so a server that
                // accepts and drops is not hammered at the first backoff step.
                failures = if opened.elapsed() < reconnect.max_delay {
                    failures.saturating_add(1)
                } else {
                    0
                };
                let error = match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Closed { code, reason } => {
                        ConnectError::from_close(Some(code), reason)
                    }
                    SessionEnd::Dropped => ConnectError::Closed(None),
                };
                // 4001 (the token expired) is `Unauthorized`: retried with a fresh credential.
                if error.is_fatal() || !reconnect.enabled {
                    tracing::warn!(error = %error, "session ended; not reconnecting");
                    inner.set_close_reason(error);
                    break;
                }
                if error.is_unauthorized() {
                    tracing::info!(error = %error, "session ended; reconnecting with a fresh credential");
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let give_up = error.is_fatal()
                    || !reconnect.enabled
                    || match reconnect.max_attempts {
                        Some(max) => failures >= max,
                        None => !connected_once,
                    };
                if give_up {
                    tracing::warn!(error = %DisplayChain(&error), failures, "giving up connecting");
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Err(error));
                        }
                        None => inner.set_close_reason(error),
                    }
                    break;
                }
                if error.is_unauthorized() {
                    tracing::warn!(error = %error, failures, "credential refused; retrying with a fresh one");
                } else {
                    tracing::debug!(error = %DisplayChain(&error), failures, "connection attempt failed");
                }
            }
        }
        let delay = reconnect.delay(failures);
        tokio::select! {
            _ = inner.shutdown.cancelled() => break 'supervise,
            _ = sleep(delay) => {}
        }
    }
    inner.finish();
    if let Some(ready) = ready.take() {
        let _ = ready.send(Err(ConnectError::Aborted));
    }
}

/// One connection attempt: credentials and `before_connect` hooks, upgrade, `hello` if
/// asked, `welcome`.
async fn establish(inner: &Inner, attempt: u32) -> Result<Session, ConnectError> {
    let options = &inner.options;
    let token = match options.credential_source() {
        Some(hook) => credentials::fetch(hook, options.connect_timeout)
            .await
            .map_err(ConnectError::Credentials)?,
        None => None,
    };
    let mut req = ConnectRequest {
        url: inner.url.clone(),
        headers: options.headers.clone(),
        token,
        attempt,
    };
    if let Some(hook) = &options.before_connect {
        hook(&mut req).await.map_err(ConnectError::Hook)?;
    }
    check_url(&req.url)?;

    let mut request = http::Request::builder();
    for (name, value) in &req.headers {
        request = request.header(name, value);
    }
    request = request.header(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(options.codec.subprotocol()),
    );
    if !options.credentials_in_hello
        && let Some(token) = &req.token
    {
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ConnectError::InvalidHeader("token is not a valid header value".into()))?;
        request = request.header(AUTHORIZATION, value);
    }

    let limit = options.max_message_size.saturating_add(1);
    let mut ws_options = yawc::Options::default()
        .with_utf8()
        .with_limits(limit, limit);
    if options.compression {
        ws_options = ws_options.with_balanced_compression();
    }

    let now = Instant::now();
    let deadline = now
        .checked_add(options.connect_timeout)
        .unwrap_or(now + FAR);
    let header_credential = !options.credentials_in_hello && req.token.is_some();
    match &options.connector {
        None => {
            let connecting = yawc::WebSocket::connect(req.url.clone())
                .with_options(ws_options)
                .with_request(request);
            open_session(
                inner,
                &req,
                header_credential,
                deadline,
                connecting,
                Socket::Tcp,
            )
            .await
        }
        Some(connect) => {
            let (url, connect) = (req.url.clone(), connect.clone());
            let connecting = async move {
                let io = connect().await?;
                yawc::WebSocket::handshake_with_request(url, io, ws_options, request).await
            };
            open_session(
                inner,
                &req,
                header_credential,
                deadline,
                connecting,
                Socket::Custom,
            )
            .await
        }
    }
}

/// Upgrades with `connecting`, then greets; the session on its socket, wrapped by `socket`.
async fn open_session<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    req: &ConnectRequest,
    header_credential: bool,
    deadline: Instant,
    connecting: impl Future<Output = Result<yawc::WebSocket<S>, WebSocketError>>,
    socket: fn(yawc::WebSocket<S>) -> Socket,
) -> Result<Session, ConnectError> {
    let mut ws = upgrade(deadline, connecting).await?;
    let (conn, heartbeat) = greet(inner, &mut ws, req, header_credential, deadline).await?;
    Ok(Session {
        ws: socket(ws),
        conn,
        heartbeat,
    })
}

/// Runs the WebSocket upgrade `connecting` until `deadline`.
async fn upgrade<S>(
    deadline: Instant,
    connecting: impl Future<Output = Result<yawc::WebSocket<S>, WebSocketError>>,
) -> Result<yawc::WebSocket<S>, ConnectError> {
    match timeout_at(deadline, AssertUnwindSafe(connecting).catch_unwind()).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(_)) => Err(ConnectError::Protocol(
            "websocket handshake panicked".into(),
        )),
        Ok(Ok(Err(WebSocketError::InvalidStatusCode(status)))) => {
            Err(ConnectError::from_status(status))
        }
        Ok(Ok(Err(WebSocketError::Redirected { status_code, .. }))) => {
            Err(ConnectError::Http(status_code))
        }
        Ok(Ok(Err(e))) => Err(ConnectError::Transport(Box::new(e))),
        Ok(Ok(Ok(ws))) => Ok(ws),
    }
}

/// After the upgrade: `hello` if the credential goes in band (or there is none), then
/// `welcome` (its connection id and heartbeat) or `reject`, until `deadline`.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    ws: &mut yawc::WebSocket<S>,
    req: &ConnectRequest,
    header_credential: bool,
    deadline: Instant,
) -> Result<(String, Option<Duration>), ConnectError> {
    let options = &inner.options;
    let codec = options.codec;
    // Without a credential in the upgrade the client still says `hello` (with what it has,
    // maybe nothing): an endpoint that authenticates then answers at once (`welcome` or
    // `reject`) instead of waiting out its handshake timeout, and one that does not has sent
    // `welcome` already and ignores it.
    if !header_credential {
        // The first frame of the session; nothing else goes out before `welcome`: the
        // session's link to the calls is installed only after it.
        let data = options
            .hello_data
            .as_ref()
            .map(|data| data.to_codec(codec))
            .transpose()
            .map_err(|e| ConnectError::Protocol(format!("cannot encode hello data: {e}")))?;
        let hello = Frame::Hello {
            token: req.token.clone(),
            data,
        };
        let bytes = codec
            .encode(&hello)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        match timeout_at(deadline, ws.send(ws_frame(codec.is_binary(), bytes))).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Transport(Box::new(e))),
            Ok(Ok(())) => {}
        }
    }

    let mut close: Option<(u16, String)> = None;
    // Bounded by the connect deadline.
    loop {
        let frame = match timeout_at(deadline, ws.next_frame()).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => {
                return Err(match (close.take(), e) {
                    (Some((code, reason)), _) => ConnectError::from_close(Some(code), reason),
                    (None, WebSocketError::ConnectionClosed) => ConnectError::Closed(None),
                    (None, e) => ConnectError::Transport(Box::new(e)),
                });
            }
            Ok(Ok(frame)) => frame,
        };
        match frame.opcode() {
            OpCode::Text | OpCode::Binary => {}
            OpCode::Close => {
                close = Some(close_of(&frame));
                continue;
            }
            _ => continue,
        }
        match codec.decode(frame.into_payload()) {
            Ok(Frame::Welcome {
                conn, heartbeat, ..
            }) => {
                // Capped so that deadline arithmetic cannot overflow on a hostile value.
                let heartbeat =
                    (heartbeat > 0).then(|| Duration::from_millis(heartbeat.min(MAX_HEARTBEAT_MS)));
                return Ok((conn, heartbeat));
            }
            Ok(Frame::Reject { error }) => return Err(ConnectError::from_reject(error)),
            Ok(Frame::Err { id: None, error }) => report_error(inner, error),
            Ok(other) => tracing::debug!(t = other.tag(), "frame before welcome ignored"),
            Err(e) => {
                return Err(ConnectError::Protocol(format!(
                    "bad frame before welcome: {e}"
                )));
            }
        }
    }
}

/// The code (1005 when absent) and reason of a Close frame.
fn close_of(frame: &yawc::Frame) -> (u16, String) {
    let code = frame.close_code().map(u16::from).unwrap_or(1005);
    let reason = frame.close_reason().ok().flatten().unwrap_or_default();
    (code, reason.to_owned())
}

fn check_url(url: &url::Url) -> Result<(), ConnectError> {
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(ConnectError::InvalidUrl(format!(
            "scheme must be ws or wss, not `{}`",
            url.scheme()
        )));
    }
    if url.host().is_none() {
        return Err(ConnectError::InvalidUrl("the url has no host".into()));
    }
    // yawc builds the request target from the URL and would panic on one `http` refuses.
    if http::Uri::try_from(&url[url::Position::BeforePath..]).is_err() {
        return Err(ConnectError::InvalidUrl(
            "path and query are not a valid request target".into(),
        ));
    }
    Ok(())
}

fn ws_frame(binary: bool, bytes: Bytes) -> yawc::Frame {
    if binary {
        yawc::Frame::binary(bytes)
    } else {
        yawc::Frame::text(bytes)
    }
}

fn report_error(inner: &Inner, error: ErrorBody) {
    tracing::warn!(code = %error.code, message = %error.message, "server reported an error");
    let _ = inner.errors.send(error);
}

/// Runs one session until it ends; cleans up the link and the server's calls after it.
async fn run_session(
    inner: &Arc<Inner>,
    session: Session,
    ready: &mut Option<oneshot::Sender<Result<(), ConnectError>>>,
) -> SessionEnd {
    let Session {
        ws,
        conn,
        heartbeat,
    } = session;
    match ws {
        Socket::Tcp(ws) => run_session_on(inner, ws, conn, heartbeat, ready).await,
        Socket::Custom(ws) => run_session_on(inner, ws, conn, heartbeat, ready).await,
    }
}

async fn run_session_on<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    mut ws: yawc::WebSocket<S>,
    conn: String,
    heartbeat: Option<Duration>,
    ready: &mut Option<oneshot::Sender<Result<(), ConnectError>>>,
) -> SessionEnd {
    let (out_tx, mut out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let (ordered_tx, mut ordered_rx) = mpsc::unbounded_channel();
    let (reply_tx, mut reply_rx) = mpsc::channel(REPLY_CAPACITY);
    let mut incoming = Incoming::new(&inner.options, reply_tx);
    let flush = inner.install_link(
        Link {
            out: out_tx,
            control: control_tx,
            ordered: ordered_tx,
        },
        conn.clone(),
    );
    tracing::debug!(conn = %conn, queued = flush.len(), "session open");
    crate::relay::provide_on_welcome(inner);
    inner.status.send_replace(Status::Connected);
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }

    let codec = inner.codec();
    let binary = codec.is_binary();
    let idle = heartbeat.map(|h| h.saturating_add(inner.options.heartbeat_grace).min(FAR));
    let write_limit = idle.unwrap_or(inner.options.connect_timeout);
    let mut last_seen = Instant::now();
    let watchdog = sleep_until(last_seen + idle.unwrap_or(FAR));
    tokio::pin!(watchdog);
    let mut close: Option<(u16, String)> = None;
    let mut batch: Vec<Bytes> = flush;

    let end = 'session: loop {
        if !batch.is_empty() {
            let frames = batch
                .drain(..)
                .map(|bytes| Ok::<_, WebSocketError>(ws_frame(binary, bytes)));
            let mut frames = futures_util::stream::iter(frames);
            match timeout(write_limit, ws.send_all(&mut frames)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if close.is_none() {
                        tracing::debug!("write failed: {e}");
                    }
                    break 'session SessionEnd::after(close);
                }
                Err(_) => {
                    tracing::warn!("write stalled; dropping the connection");
                    break 'session SessionEnd::Dropped;
                }
            }
        }
        // Unbiased: a server flooding frames must not starve writes or the watchdog.
        tokio::select! {
            _ = inner.shutdown.cancelled() => {
                // What the application handed over before closing is still written.
                batch.extend(batch_of(&mut out_rx, usize::MAX));
                if !batch.is_empty() {
                    let frames = batch
                        .drain(..)
                        .map(|bytes| Ok::<_, WebSocketError>(ws_frame(binary, bytes)));
                    let mut frames = futures_util::stream::iter(frames);
                    let _ = timeout(write_limit, ws.send_all(&mut frames)).await;
                }
                close_gracefully(inner, codec, &mut ws).await;
                break 'session SessionEnd::Shutdown;
            }
            frame = ws.next_frame() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        if close.is_none() {
                            tracing::debug!("socket ended: {e}");
                        }
                        break 'session SessionEnd::after(close);
                    }
                };
                last_seen = Instant::now();
                match frame.opcode() {
                    OpCode::Text | OpCode::Binary => {}
                    OpCode::Close => {
                        // yawc queues the Close reply and writes it on the next read poll,
                        // which then reports the end of the connection: keep polling.
                        close = Some(close_of(&frame));
                        continue 'session;
                    }
                    _ => continue 'session,
                }
                let frame = match codec.decode(frame.into_payload()) {
                    Ok(frame) => frame,
                    Err(e) => {
                        tracing::warn!(id = ?e.id(), "undecodable frame from server: {e}");
                        let error = Frame::Err {
                            id: None,
                            error: ErrorBody::new(ErrorCode::BAD_FRAME, e.message().to_owned()),
                        };
                        if let Ok(bytes) = codec.encode(&error) {
                            batch.push(bytes);
                        }
                        continue 'session;
                    }
                };
                if let Some(reply) = dispatch(inner, &mut incoming, frame)
                    && let Ok(bytes) = codec.encode(&reply)
                {
                    batch.push(bytes);
                }
            }
            Some(item) = out_rx.recv() => {
                batch.push(item.bytes);
                batch.extend(batch_of(&mut out_rx, WRITE_BATCH - 1));
            }
            Some(bytes) = control_rx.recv() => batch.push(bytes),
            Some(bytes) = ordered_rx.recv() => {
                batch.push(bytes);
                while batch.len() < WRITE_BATCH
                    && let Ok(bytes) = ordered_rx.try_recv()
                {
                    batch.push(bytes);
                }
            }
            Some(reply) = reply_rx.recv() => {
                if incoming.admit(&reply) {
                    match codec.encode(&reply) {
                        Ok(bytes) => batch.push(bytes),
                        Err(e) => {
                            tracing::warn!("cannot encode handler reply: {e}");
                            if let Some(id) = reply.id() {
                                let error = Frame::Err {
                                    id: Some(id),
                                    error: ErrorBody::new(ErrorCode::INTERNAL, "cannot encode reply"),
                                };
                                incoming.cancel(id);
                                if let Ok(bytes) = codec.encode(&error) {
                                    batch.push(bytes);
                                }
                            }
                        }
                    }
                }
            }
            _ = &mut watchdog, if idle.is_some() => {
                let idle = idle.unwrap_or(FAR);
                let due = last_seen + idle;
                if Instant::now() >= due {
                    tracing::warn!(?idle, "no traffic from the server; reconnecting");
                    break 'session SessionEnd::Dropped;
                }
                watchdog.as_mut().reset(due);
            }
        }
    };

    incoming.abort_all();
    inner.drop_link(&mut out_rx);
    end
}

/// Handles one frame from the server; returns a frame to answer with at once, if any.
fn dispatch(inner: &Inner, incoming: &mut Incoming, frame: Frame) -> Option<Frame> {
    match frame {
        Frame::Res { id, data } => inner.on_result(id, data),
        Frame::Err {
            id: Some(id),
            error,
        } => inner.on_error(id, error),
        Frame::Err { id: None, error } => report_error(inner, error),
        Frame::Item { id, data } => inner.on_item(id, data),
        Frame::End { id } => inner.on_end(id),
        Frame::Req {
            id, method, data, ..
        } => return incoming.request(id, &method, data),
        Frame::Sub {
            id,
            method,
            data,
            credit,
            ..
        } => return incoming.stream(id, &method, data, credit),
        Frame::Ntf { method, data, .. } => incoming.notify(&method, data),
        Frame::Cancel { id } => incoming.cancel(id),
        Frame::Credit { id, n } => incoming.credit(id, n),
        Frame::Msg {
            channel,
            offset,
            data,
        } => inner.on_msg(&channel, offset, data),
        Frame::Presence {
            event,
            channel,
            data,
        } => inner.on_presence(event, &channel, data),
        Frame::Joined { channel, data } => inner.on_server_joined(&channel, data),
        Frame::Left { channel, error } => inner.on_left(&channel, error),
        Frame::Ping => return Some(Frame::Pong),
        Frame::Pong => {}
        other => tracing::debug!(t = other.tag(), "frame not handled by this client"),
    }
    None
}

/// Takes up to `max` queued frames without waiting.
fn batch_of(out_rx: &mut mpsc::Receiver<crate::state::Outbound>, max: usize) -> Vec<Bytes> {
    let mut batch = Vec::new();
    while batch.len() < max {
        match out_rx.try_recv() {
            Ok(item) => batch.push(item.bytes),
            Err(_) => break,
        }
    }
    batch
}

/// Sends Close 1000 and reads until the server's reply ends the connection (bounded).
/// Errors the server reports meanwhile (an `err` without id, e.g. for the last notification)
/// still reach [`Client::errors`](crate::Client::errors).
async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    codec: plexus_protocol::Codec,
    ws: &mut yawc::WebSocket<S>,
) {
    let close = yawc::Frame::close(yawc::close::CloseCode::Normal, b"");
    if timeout(CLOSE_WAIT, ws.send(close)).await.is_err() {
        return;
    }
    let _ = timeout(CLOSE_WAIT, async {
        // Ends when the server's Close reply (or EOF) ends the stream; bounded by the timeout.
        while let Ok(frame) = ws.next_frame().await {
            if matches!(frame.opcode(), OpCode::Text | OpCode::Binary)
                && let Ok(Frame::Err { id: None, error }) = codec.decode(frame.into_payload())
            {
                report_error(inner, error);
            }
        }
    })
    .await;
}

/// Displays an error with its sources, `a: b: c`.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
