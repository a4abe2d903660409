//! Requests, notifications, errors, codecs and session start, against the real server.

mod real;

use http::{HeaderName, HeaderValue};
use plexus_client::{CallErrorKind, ClientOptions, ConnectError, ErrorCode, connect};
use plexus_protocol::{Codec, Frame, Payload};
use real::{Event, RealServer as TestServer, Script, connect_to};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    label: String,
}

async fn echo_roundtrip(codec: Codec) {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default().codec(codec)).await;
    assert_eq!(client.conn_id(), Some(server.id_of(1)));
    assert_eq!(client.codec(), codec);

    let point = Point {
        x: 7,
        label: "seven".into(),
    };
    let back: Point = client.request("echo", &point).await.unwrap();
    assert_eq!(back, point);
    let (_, frame) = server.frame().await;
    let Frame::Req { id, method, .. } = frame else {
        panic!("expected req, got {frame:?}")
    };
    assert_eq!((id, method.as_str()), (1, "echo"));

    // Ids increase per call.
    let _: Point = client.request("echo", &point).await.unwrap();
    let (_, frame) = server.frame().await;
    assert_eq!(frame.id(), Some(2));

    let raw = client
        .request::<Payload>("echo", Payload::encode(codec, &json!([1, 2, 3])).unwrap())
        .await
        .unwrap();
    assert_eq!(raw.to_json_value().unwrap(), json!([1, 2, 3]));
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn request_response_json() {
    echo_roundtrip(Codec::Json).await;
}

#[tokio::test]
async fn request_response_msgpack() {
    echo_roundtrip(Codec::MsgPack).await;
}

#[tokio::test]
async fn subprotocol_and_token_header_are_sent() {
    let mut server = TestServer::start(Script {
        auth: true,
        require_token: Some("abc".into()),
        ..Script::default()
    })
    .await;
    let options = ClientOptions::default()
        .codec(Codec::MsgPack)
        .token("abc")
        .header(
            HeaderName::from_static("x-app"),
            HeaderValue::from_static("test"),
        );
    let client = connect(&server.url(), options).await.unwrap();
    let (_, headers) = server.upgrade().await;
    assert_eq!(headers["sec-websocket-protocol"], "plexus.v1.msgpack");
    assert_eq!(headers["authorization"], "Bearer abc");
    assert_eq!(headers["x-app"], "test");
    drop(client);
}

#[tokio::test]
async fn wrong_token_header_is_http_401_unauthorized_and_retried() {
    let mut server = TestServer::start(Script {
        auth: true,
        require_token: Some("abc".into()),
        ..Script::default()
    })
    .await;
    let options = ClientOptions::default().token("nope").reconnect(
        plexus_client::ReconnectOptions::default()
            .max_attempts(Some(3))
            .initial_delay(std::time::Duration::from_millis(1)),
    );
    let error = connect(&server.url(), options).await.unwrap_err();
    assert!(error.is_unauthorized(), "{error:?}");
    assert!(!error.is_fatal());
    for _ in 0..3 {
        let (status, headers) = server.refused().await;
        assert_eq!(status, 401);
        assert_eq!(headers["authorization"], "Bearer nope");
    }
}

#[tokio::test]
async fn hello_sends_the_token_in_band() {
    let mut server = TestServer::start(Script {
        auth: true,
        ..Script::default()
    })
    .await;
    let client = connect(
        &server.url(),
        ClientOptions::default()
            .token("good")
            .credentials_in_hello(true),
    )
    .await
    .unwrap();
    let (_, headers) = server.upgrade().await;
    assert!(headers.get("authorization").is_none());
    let (_, frame) = server.frame().await;
    assert!(
        matches!(&frame, Frame::Hello { token: Some(t), .. } if t == "good"),
        "{frame:?}"
    );
    let n: u32 = client.request("echo", &5).await.unwrap();
    assert_eq!(n, 5);
}

#[tokio::test]
async fn hello_with_a_bad_token_is_rejected() {
    let server = TestServer::start(Script {
        auth: true,
        ..Script::default()
    })
    .await;
    let error = connect(
        &server.url(),
        ClientOptions::default()
            .token("bad")
            .credentials_in_hello(true),
    )
    .await
    .unwrap_err();
    match error {
        ConnectError::Unauthorized { message } => assert_eq!(message, "bad token"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

async fn remote_error(codec: Codec) {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default().codec(codec)).await;
    let error = client
        .request::<serde_json::Value>("fail", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Remote);
    assert!(error.is_remote());
    assert_eq!(error.code(), &ErrorCode::VALIDATION_ERROR);
    assert_eq!(error.message(), "name is required");
    let data = error.data().expect("error data");
    assert_eq!(data.to_json_value().unwrap(), json!({"path": "name"}));
    assert!(!error.is_timeout() && !error.is_unavailable() && !error.is_cancelled());
    assert_eq!(
        error.to_string(),
        "server error VALIDATION_ERROR: name is required"
    );

    let error = client.request::<()>("no.such", &()).await.unwrap_err();
    assert_eq!(error.code(), &ErrorCode::NOT_FOUND);
}

#[tokio::test]
async fn server_errors_keep_code_message_and_data_json() {
    remote_error(Codec::Json).await;
}

#[tokio::test]
async fn server_errors_keep_code_message_and_data_msgpack() {
    remote_error(Codec::MsgPack).await;
}

#[tokio::test]
async fn result_that_does_not_fit_is_a_decode_error() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let error = client
        .request::<Point>("echo", &json!({"x": "not a number", "label": "a"}))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Decode);
    assert_eq!(error.code(), &ErrorCode::VALIDATION_ERROR);
    let data = error.data().unwrap().to_json_value().unwrap();
    assert_eq!(data["path"], "x");
}

#[tokio::test]
async fn notifications_reach_the_server() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    client.notify("log.event", &json!({"n": 1})).await.unwrap();
    let (_, frame) = server.frame().await;
    match frame {
        Frame::Ntf { method, data, .. } => {
            assert_eq!(method, "log.event");
            assert_eq!(data.to_json_value().unwrap(), json!({"n": 1}));
        }
        other => panic!("expected ntf, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_calls_fail_before_sending() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) =
        connect_to(&mut server, ClientOptions::default().max_message_size(1024)).await;
    let big = "x".repeat(2048);
    let error = client.request::<String>("echo", &big).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Encode);
    assert_eq!(error.code(), &ErrorCode::TOO_LARGE);
    let error = client.notify("log", &big).await.unwrap_err();
    assert_eq!(error.code(), &ErrorCode::TOO_LARGE);
    assert_eq!(client.pending_calls(), 0);
    // The connection is fine.
    let small: String = client.request("echo", "ok").await.unwrap();
    assert_eq!(small, "ok");
}

#[tokio::test]
async fn compression_can_be_negotiated() {
    let mut server = TestServer::start(Script {
        compression: true,
        ..Script::default()
    })
    .await;
    let client = connect(&server.url(), ClientOptions::default().compression(true))
        .await
        .unwrap();
    let (_, headers) = server.upgrade().await;
    let offer = headers["sec-websocket-extensions"].to_str().unwrap();
    assert!(offer.contains("permessage-deflate"), "{offer}");
    let text = "repetitive ".repeat(500);
    let back: String = client.request("echo", &text).await.unwrap();
    assert_eq!(back, text);
}

#[tokio::test]
async fn invalid_urls_fail_fast() {
    for url in ["http://127.0.0.1/ws", "not a url", "ws://"] {
        let error = connect(url, ClientOptions::default()).await.unwrap_err();
        assert!(
            matches!(error, ConnectError::InvalidUrl(_)),
            "{url}: {error:?}"
        );
    }
}

#[tokio::test]
async fn nothing_listening_fails_on_the_first_attempt_by_default() {
    // Bind and drop to get a port that is very likely closed.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let error = connect(
        &format!("ws://127.0.0.1:{port}/ws"),
        ClientOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ConnectError::Transport(_)), "{error:?}");
    assert!(!error.is_fatal());
}

#[tokio::test]
async fn close_sends_1000_and_fails_later_calls() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    let mut status = client.status();
    client.close().await;
    real::wait_status(&mut status, plexus_client::Status::Closed).await;
    let mut saw_close = false;
    for _ in 0..10 {
        match server.event().await {
            Event::Close { conn: c, code } => {
                assert_eq!((c, code), (conn, Some(1000)));
                saw_close = true;
            }
            Event::Gone { .. } => break,
            _ => {}
        }
    }
    assert!(saw_close);
    let error = client.request::<u32>("echo", &1).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Closed);
    assert!(error.is_unavailable());
    let error = client.notify("x", &1).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Closed);
}
