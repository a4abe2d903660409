//! Authentication: the credentials hook, header or `hello`, refusals (HTTP 401/403,
//! `reject`, close 4001/4003) and their retry policy, and the `$refresh` built-in; against
//! the real server (tokens `good`, `good-*` accepted, `forbidden*` refused as forbidden).

mod real;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use plexus_client::{
    BoxError, CallOptions, ClientOptions, ConnectError, ReconnectOptions, Status, connect,
};
use plexus_protocol::{Codec, ErrorCode, Frame};
use real::{Event, RealServer as TestServer, Script, WAIT, wait_status};
use serde_json::json;
use tokio::time::timeout;

type Hook = Box<dyn Fn() -> BoxFuture<'static, Result<Option<String>, BoxError>> + Send + Sync>;

/// A credentials hook handing out `tokens` in turn (the last one again once they run out;
/// `Err` for an entry `"!error"`), and the number of times it was called.
fn hook(tokens: &[Option<&str>]) -> (Hook, Arc<AtomicUsize>) {
    let tokens: Vec<Option<String>> = tokens.iter().map(|t| t.map(str::to_owned)).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let hook: Hook = Box::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let token = tokens[n.min(tokens.len() - 1)].clone();
        Box::pin(async move {
            match token.as_deref() {
                Some("!error") => Err("identity provider down".into()),
                _ => Ok(token),
            }
        })
    });
    (hook, calls)
}

fn with_hook(options: ClientOptions, hook: Hook) -> ClientOptions {
    options.credentials(hook)
}

fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions::default()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

fn header_auth() -> Script {
    Script {
        auth: true,
        ..Script::default()
    }
}

fn hello_auth() -> Script {
    header_auth()
}

async fn connect_within(url: &str, options: ClientOptions) -> plexus_client::Client {
    timeout(WAIT, connect(url, options))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

#[tokio::test]
async fn the_hook_token_goes_in_the_authorization_header() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("good-1")]);
    let client = connect_within(&server.url(), with_hook(ClientOptions::default(), hook)).await;
    let (conn, headers) = server.upgrade().await;
    assert_eq!(headers["authorization"], "Bearer good-1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // No `hello`: the first frame the server gets is the first call.
    let n: u32 = client.request("echo", &1).await.unwrap();
    assert_eq!(n, 1);
    assert!(matches!(server.frame_of(conn).await, Frame::Req { .. }));
}

#[tokio::test]
async fn hello_comes_first_with_token_and_data_and_calls_wait_for_welcome() {
    let mut server = TestServer::start(hello_auth()).await;
    let (hook, calls) = hook(&[Some("good-1"), Some("good-2")]);
    let options = with_hook(ClientOptions::default(), hook)
        .credentials_in_hello(true)
        .hello_data(json!({"device": "test"}))
        .reconnect(fast_reconnect());
    let client = connect_within(&server.url(), options).await;
    let (conn, headers) = server.upgrade().await;
    assert!(headers.get("authorization").is_none());
    let Frame::Hello { token, data } = server.frame_of(conn).await else {
        panic!("the first frame is not hello");
    };
    assert_eq!(token.as_deref(), Some("good-1"));
    assert_eq!(
        data.expect("hello data").to_json_value().unwrap(),
        json!({"device": "test"})
    );

    // Reconnect to a server that holds `welcome` after `hello`.
    let mut status = client.status();
    status.borrow_and_update();
    server.hold_welcome(true);
    server.drop_all();
    wait_status(&mut status, Status::Reconnecting).await;
    let (conn, _) = server.upgrade().await;
    assert!(matches!(
        server.frame_of(conn).await,
        Frame::Hello { token: Some(t), .. } if t == "good-2"
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // No `welcome` yet: not connected, calls are not sent but fail or wait.
    assert_eq!(*client.status().borrow(), Status::Reconnecting);
    let error = client.request::<u32>("echo", &1).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");
    client.notify("log.event", &"queued").await.unwrap();
    let retryable = client
        .request::<u32>("echo", &7)
        .options(CallOptions::default().retryable(true));
    tokio::pin!(retryable);
    // One poll queues it (no link to send it on).
    assert!(futures_util::poll!(&mut retryable).is_pending());
    assert_eq!(client.pending_calls(), 1);

    server.release_welcome(conn);
    // The server reports frames it reads while holding `welcome`: none may come before it.
    let mut welcomed = false;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match server.event().await {
            Event::Welcome { conn: c } if c == conn => welcomed = true,
            Event::Frame { conn: c, frame } if c == conn => {
                assert!(welcomed, "{frame:?} was sent before welcome");
                seen.push(frame);
            }
            _ => {}
        }
    }
    assert!(matches!(&seen[0], Frame::Ntf { method, .. } if method == "log.event"));
    assert!(matches!(&seen[1], Frame::Req { method, .. } if method == "echo"));
    let n = timeout(WAIT, retryable).await.unwrap().unwrap();
    assert_eq!(n, 7);
}

#[tokio::test]
async fn reject_not_authorized_asks_the_hook_again_and_the_retry_succeeds() {
    let mut server = TestServer::start(hello_auth()).await;
    let (hook, calls) = hook(&[Some("expired"), Some("good-2")]);
    let options = with_hook(ClientOptions::default(), hook)
        .credentials_in_hello(true)
        .reconnect(fast_reconnect().max_attempts(Some(3)));
    let client = connect_within(&server.url(), options).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let tokens = [server.frame().await, server.frame().await].map(|(conn, frame)| match frame {
        Frame::Hello { token, .. } => (conn, token),
        other => panic!("expected hello, got {other:?}"),
    });
    assert_eq!(
        tokens,
        [(1, Some("expired".into())), (2, Some("good-2".into()))]
    );
    let n: u32 = client.request("echo", &2).await.unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_refused_first_connect_is_unauthorized_without_max_attempts() {
    let server = TestServer::start(hello_auth()).await;
    let (hook, calls) = hook(&[Some("expired")]);
    let options = with_hook(ClientOptions::default(), hook).credentials_in_hello(true);
    let error = connect(&server.url(), options).await.unwrap_err();
    match &error {
        ConnectError::Unauthorized { message } => assert_eq!(message, "bad token"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(!error.is_fatal());
    assert_eq!(error.to_string(), "not authorized: bad token");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_401_is_retried_with_a_fresh_token() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("stale"), Some("good-2")]);
    let options =
        with_hook(ClientOptions::default(), hook).reconnect(fast_reconnect().max_attempts(Some(3)));
    let client = connect_within(&server.url(), options).await;
    let (status, headers) = server.refused().await;
    assert_eq!(status, 401);
    assert_eq!(headers["authorization"], "Bearer stale");
    let (_, headers) = server.upgrade().await;
    assert_eq!(headers["authorization"], "Bearer good-2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(*client.status().borrow(), Status::Connected);
}

#[tokio::test]
async fn reject_forbidden_stops_at_once() {
    let mut server = TestServer::start(hello_auth()).await;
    let (hook, calls) = hook(&[Some("forbidden")]);
    let options = with_hook(ClientOptions::default(), hook)
        .credentials_in_hello(true)
        .reconnect(fast_reconnect().max_attempts(Some(5)));
    let error = connect(&server.url(), options).await.unwrap_err();
    match &error {
        ConnectError::Forbidden { message } => assert_eq!(message, "not allowed"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(error.is_fatal());
    // `connect` returned: the client has stopped, after one attempt.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.upgrade().await;
}

#[tokio::test]
async fn http_403_is_forbidden_and_not_retried() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("forbidden")]);
    let options =
        with_hook(ClientOptions::default(), hook).reconnect(fast_reconnect().max_attempts(Some(5)));
    let error = connect(&server.url(), options).await.unwrap_err();
    assert!(error.is_forbidden(), "{error:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.refused().await.0, 403);
}

#[tokio::test]
async fn close_4001_of_an_open_session_reconnects_with_a_fresh_token() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("good-1"), Some("good-2")]);
    let options = with_hook(ClientOptions::default(), hook).reconnect(fast_reconnect());
    let client = connect_within(&server.url(), options).await;
    server.upgrade().await;
    let mut status = client.status();
    status.borrow_and_update();

    server.close_all_with_reason(4001, "token expired");
    wait_status(&mut status, Status::Reconnecting).await;
    wait_status(&mut status, Status::Connected).await;
    let (_, headers) = server.upgrade().await;
    assert_eq!(headers["authorization"], "Bearer good-2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(client.close_reason().is_none());
}

#[tokio::test]
async fn close_4003_of_an_open_session_closes_the_client_with_the_reason() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("good-1")]);
    let options = with_hook(ClientOptions::default(), hook).reconnect(fast_reconnect());
    let client = connect_within(&server.url(), options).await;
    server.upgrade().await;
    let mut status = client.status();

    server.close_all_with_reason(4003, "banned");
    wait_status(&mut status, Status::Closed).await;
    let reason = client.close_reason().expect("a close reason");
    match &*reason {
        ConnectError::Forbidden { message } => assert_eq!(message, "banned"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // Closed is final: no attempt was made after the session.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_forbidden_reconnect_closes_the_client_with_the_reason() {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("good-1"), Some("forbidden")]);
    let options = with_hook(ClientOptions::default(), hook).reconnect(fast_reconnect());
    let client = connect_within(&server.url(), options).await;
    server.upgrade().await;
    let mut status = client.status();

    server.close_all(4001);
    wait_status(&mut status, Status::Closed).await;
    assert_eq!(server.refused().await.0, 403);
    let reason = client.close_reason().expect("a close reason");
    assert!(reason.is_forbidden(), "{reason:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let error = client.request::<u32>("echo", &1).await.unwrap_err();
    assert!(error.is_unavailable());
}

#[tokio::test]
async fn a_failing_hook_fails_the_attempt_and_none_sends_no_credential() {
    let server = TestServer::start(Script::default()).await;
    let (failing, _) = hook(&[Some("!error")]);
    let error = connect(&server.url(), with_hook(ClientOptions::default(), failing))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Credentials(_)), "{error:?}");
    assert!(!error.is_fatal());

    let mut server = TestServer::start(Script::default()).await;
    let (none, _) = hook(&[None]);
    let _client = connect_within(&server.url(), with_hook(ClientOptions::default(), none)).await;
    let (_, headers) = server.upgrade().await;
    assert!(headers.get("authorization").is_none());
}

/// Calls `$refresh` (with `exp`) from the server on `conn`, as its call `id` (the server
/// numbers a connection's calls 1, 2, ...), and returns the client's answer on the wire.
async fn refresh(server: &mut TestServer, conn: u64, _codec: Codec, id: u64) -> Frame {
    server.call(conn, "$refresh", json!({"exp": 1_700_000_000u64}));
    server
        .frame_where_on(
            conn,
            |f| matches!(f, Frame::Res { id: i, .. } | Frame::Err { id: Some(i), .. } if *i == id),
        )
        .await
}

async fn refresh_answers_with_the_hook_token(codec: Codec) {
    let mut server = TestServer::start(header_auth()).await;
    let (hook, calls) = hook(&[Some("good-1"), Some("good-2"), Some("good-3")]);
    let options = with_hook(ClientOptions::default().codec(codec), hook);
    let _client = connect_within(&server.url(), options).await;
    let (conn, _) = server.upgrade().await;
    for (id, want) in [(1, "good-2"), (2, "good-3")] {
        let Frame::Res { data, .. } = refresh(&mut server, conn, codec, id).await else {
            panic!("$refresh was not answered with res");
        };
        assert_eq!(data.codec(), codec);
        assert_eq!(data.to_json_value().unwrap(), json!({ "token": want }));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn refresh_is_answered_with_the_hook_token_json() {
    refresh_answers_with_the_hook_token(Codec::Json).await;
}

#[tokio::test]
async fn refresh_is_answered_with_the_hook_token_msgpack() {
    refresh_answers_with_the_hook_token(Codec::MsgPack).await;
}

async fn refresh_error(options: ClientOptions) -> plexus_protocol::ErrorBody {
    let mut server = TestServer::start(Script::default()).await;
    let _client = connect_within(&server.url(), options).await;
    let (conn, _) = server.upgrade().await;
    match refresh(&mut server, conn, Codec::Json, 1).await {
        Frame::Err { error, .. } => error,
        other => panic!("expected err, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_is_unavailable_when_the_hook_yields_nothing() {
    let (none, _) = hook(&[Some("good-1"), None]);
    let error = refresh_error(with_hook(ClientOptions::default(), none)).await;
    assert_eq!(error.code, ErrorCode::UNAVAILABLE);
}

#[tokio::test]
async fn refresh_is_unavailable_when_the_hook_fails() {
    let (failing, _) = hook(&[Some("good-1"), Some("!error")]);
    let error = refresh_error(with_hook(ClientOptions::default(), failing)).await;
    assert_eq!(error.code, ErrorCode::UNAVAILABLE);
    // The hook's own error stays on the client.
    assert!(!error.message.contains("identity provider"), "{error:?}");
}

#[tokio::test]
async fn refresh_is_unavailable_without_credentials() {
    let error = refresh_error(ClientOptions::default()).await;
    assert_eq!(error.code, ErrorCode::UNAVAILABLE);
}

#[tokio::test]
async fn a_static_token_answers_refresh_with_itself() {
    let mut server = TestServer::start(header_auth()).await;
    let _client =
        connect_within(&server.url(), ClientOptions::default().token("good-static")).await;
    let (conn, _) = server.upgrade().await;
    let Frame::Res { data, .. } = refresh(&mut server, conn, Codec::Json, 1).await else {
        panic!("$refresh was not answered with res");
    };
    assert_eq!(
        data.to_json_value().unwrap(),
        json!({"token": "good-static"})
    );
}

#[tokio::test]
async fn unknown_dollar_methods_are_not_found() {
    let mut server = TestServer::start(Script::default()).await;
    let _client = connect_within(&server.url(), ClientOptions::default()).await;
    let (conn, _) = server.upgrade().await;
    server.call(conn, "$presence", json!({"ch": "x"}));
    let frame = server
        .frame_where_on(conn, |f| matches!(f, Frame::Err { id: Some(1), .. }))
        .await;
    let Frame::Err { error, .. } = frame else {
        unreachable!()
    };
    assert_eq!(error.code, ErrorCode::NOT_FOUND);
}

#[test]
#[should_panic(expected = "reserved for built-ins")]
fn the_application_cannot_register_refresh() {
    let _ = plexus_client::Router::new().request("$refresh", |_: serde_json::Value| async {
        Ok::<_, plexus_protocol::ErrorBody>(json!({"token": "shadow"}))
    });
}

#[test]
fn the_last_of_token_and_credentials_wins() {
    let options = ClientOptions::default()
        .token("static")
        .credentials(|| async { Ok(Some("hooked".to_owned())) });
    assert!(options.token.is_none());
    assert!(format!("{options:?}").contains("credentials: true"));
    let options = options.token("static");
    assert_eq!(options.token.as_deref(), Some("static"));
    assert!(format!("{options:?}").contains("credentials: false"));
}
