//! What a real plexus server never does, and the client must survive: frames that do not
//! decode or answer nothing, a hostile heartbeat, answers after the deadline, a stream that
//! ignores credit, application-level pings, a server that stops pinging. Against the scripted server (`support`), which
//! can send anything.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallOptions, ClientOptions, ErrorCode, ReconnectOptions, Status, StreamOptions, connect,
};
use plexus_protocol::Frame;
use support::{Script, TestServer, WAIT, connect_to, wait_status};
use tokio::time::timeout;

#[tokio::test]
async fn server_ping_frames_get_pong() {
    let mut server = TestServer::start(Script::default()).await;
    let (_client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    server.send(conn, Frame::Ping);
    assert_eq!(server.frame().await.1, Frame::Pong);
}

#[tokio::test]
async fn bad_frames_from_the_server_do_not_break_the_client() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    let mut errors = client.errors();

    server.send_raw(conn, "{not json");
    server.send_raw(conn, r#"{"t":"bogus","id":3}"#);
    server.send_raw(conn, r#"{"t":"res","id":999,"d":1}"#);
    server.send_raw(conn, r#"{"t":"item","id":998,"d":1}"#);
    server.send(
        conn,
        Frame::Err {
            id: None,
            error: plexus_client::ErrorBody::new(ErrorCode::BAD_FRAME, "what was that"),
        },
    );

    // The client answers undecodable frames with BAD_FRAME (no id).
    for _ in 0..2 {
        let (_, frame) = server.frame().await;
        match frame {
            Frame::Err { id: None, error } => assert_eq!(error.code, ErrorCode::BAD_FRAME),
            other => panic!("expected err without id, got {other:?}"),
        }
    }
    let reported = tokio::time::timeout(support::WAIT, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reported.message, "what was that");

    let n: u32 = client.request("echo", &1).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_huge_heartbeat_in_welcome_is_harmless() {
    let mut server = TestServer::start(Script {
        heartbeat_ms: u64::MAX,
        ping: false,
        ..Script::default()
    })
    .await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let n: u32 = client.request("echo", &3).await.unwrap();
    assert_eq!(n, 3);
}

#[tokio::test]
async fn a_late_answer_after_timeout_is_ignored() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    let error = client
        .request::<u32>("never", &1)
        .options(CallOptions::default().timeout(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    server.send(
        conn,
        Frame::Res {
            id: 1,
            data: support::json_payload(plexus_protocol::Codec::Json, serde_json::json!(1)),
        },
    );
    let n: u32 = client.request("echo", &2).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(client.pending_calls(), 0);
}
#[tokio::test]
async fn a_server_ignoring_credit_fails_the_stream_instead_of_growing_memory() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    // "count" sends everything at once, whatever the credit: 10 items into a window of 4.
    let stream = client
        .stream::<u64>("count", &10)
        .options(StreamOptions::default().credit(4))
        .await
        .unwrap();
    let id = stream.id();
    let (_, sub) = server.frame().await;
    assert_eq!(sub.id(), Some(id));
    // The overflow cancels the stream on the server before the application reads anything.
    let (_, cancel) = server.frame().await;
    assert_eq!(cancel, Frame::Cancel { id });
    let results: Vec<_> = timeout(WAIT, stream.collect()).await.unwrap();
    let (items, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(
        items.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].as_ref().unwrap_err().code(),
        &ErrorCode::BAD_FRAME
    );
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn a_server_that_stops_pinging_is_left() {
    let mut server = TestServer::start(Script {
        ping: false,
        heartbeat_ms: 200,
        ..Script::default()
    })
    .await;
    let options = ClientOptions::default()
        .heartbeat_grace(Duration::from_millis(300))
        .reconnect(
            ReconnectOptions::default()
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(100)),
        );
    let client = timeout(WAIT, connect(&server.url(), options))
        .await
        .unwrap()
        .unwrap();
    server.upgrade().await;
    let mut status = client.status();
    wait_status(&mut status, Status::Reconnecting).await;
    wait_status(&mut status, Status::Connected).await;
    let (conn, _) = server.upgrade().await;
    assert_eq!(conn, 2);
}
