//! The offline queue and retryable calls across reconnects, against the real server.

mod real;

use std::time::Duration;

use plexus_client::{
    CallErrorKind, CallOptions, ClientOptions, ErrorCode, ReconnectOptions, Status,
};
use plexus_protocol::Frame;
use real::{RealServer as TestServer, Script, WAIT, connect_to, wait_status};
use tokio::time::timeout;

fn options() -> ClientOptions {
    ClientOptions::default().reconnect(
        ReconnectOptions::default()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(100)),
    )
}

#[tokio::test]
async fn notifications_sent_while_down_arrive_in_order_after_reconnect() {
    let mut server = TestServer::start(Script::default()).await;
    let port = server.port();
    let (client, _) = connect_to(&mut server, options()).await;
    let mut status = client.status();
    server.stop().await;
    wait_status(&mut status, Status::Reconnecting).await;

    for i in 0..5u32 {
        client.notify("log.line", &i).await.unwrap();
    }
    // A retryable request waits too, in the same order.
    let retryable = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request::<u32>("echo", &99)
                .options(CallOptions::default().retryable(true))
                .await
        })
    };
    // Wait until the request is queued (it is a pending call).
    for _ in 0..1000 {
        if client.pending_calls() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(client.pending_calls(), 1);
    client.notify("log.line", &5u32).await.unwrap();
    // Not retryable: fails at once.
    let error = client.request::<u32>("echo", &1).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Unavailable);
    assert_eq!(error.code(), &ErrorCode::UNAVAILABLE);

    let mut server = TestServer::start_on(port, Script::default()).await;
    wait_status(&mut status, Status::Connected).await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (_, frame) = server.frame().await;
        match frame {
            Frame::Ntf { method, data, .. } => {
                assert_eq!(method, "log.line");
                seen.push(format!("n{}", data.decode::<u32>().unwrap()));
            }
            Frame::Req { method, .. } => seen.push(method),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["n0", "n1", "n2", "n3", "n4", "echo", "n5"]);
    let n = timeout(WAIT, retryable).await.unwrap().unwrap().unwrap();
    assert_eq!(n, 99);
}

#[tokio::test]
async fn a_full_queue_fails_at_once() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options().offline_queue(3)).await;
    let mut status = client.status();
    server.stop().await;
    wait_status(&mut status, Status::Reconnecting).await;
    for i in 0..3 {
        client.notify("log", &i).await.unwrap();
    }
    let error = client.notify("log", &3).await.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::QueueFull);
    assert!(error.is_queue_full());
    assert_eq!(error.code(), &ErrorCode::RATE_LIMITED);
    assert_eq!(error.to_string(), "offline queue is full");
    // Retryable calls count against the same bound.
    let error = client
        .request::<u32>("echo", &1)
        .options(CallOptions::default().retryable(true))
        .await
        .unwrap_err();
    assert!(error.is_queue_full());
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn in_flight_calls_fail_unavailable_when_the_connection_drops() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options()).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u32>("never", &1).await })
    };
    let stream = client.stream::<u32>("forever", &()).await.unwrap();
    for _ in 0..2 {
        server.frame().await;
    }
    server.drop_all();
    let error = timeout(WAIT, call).await.unwrap().unwrap().unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Unavailable);
    assert!(error.is_unavailable());
    use futures_util::StreamExt;
    let mut stream = stream;
    let error = timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(error.is_unavailable());
    assert!(stream.next().await.is_none());
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn in_flight_retryable_calls_are_sent_again_after_reconnect() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, options()).await;
    let mut status = client.status();
    status.borrow_and_update();
    // `flaky` is not answered the first time the server sees it.
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request::<String>("flaky", &"again")
                .options(CallOptions::default().retryable(true))
                .await
        })
    };
    let (first_conn, req) = server.frame().await;
    let id = req.id().unwrap();
    server.drop_all();
    wait_status(&mut status, Status::Reconnecting).await;
    wait_status(&mut status, Status::Connected).await;
    let (second_conn, again) = server.frame_where(|f| matches!(f, Frame::Req { .. })).await;
    assert_ne!(first_conn, second_conn);
    assert_eq!(again.id(), Some(id));
    let answer = timeout(WAIT, call).await.unwrap().unwrap().unwrap();
    assert_eq!(answer, "again");
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn queued_calls_time_out_and_leave_the_queue() {
    let mut server = TestServer::start(Script::default()).await;
    let port = server.port();
    let (client, _) = connect_to(&mut server, options().offline_queue(1)).await;
    let mut status = client.status();
    server.stop().await;
    wait_status(&mut status, Status::Reconnecting).await;
    let error = client
        .request::<u32>("echo", &1)
        .options(
            CallOptions::default()
                .retryable(true)
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    assert_eq!(client.pending_calls(), 0);
    // Its slot is free again, and it is not sent after reconnecting.
    client.notify("after", &()).await.unwrap();
    let mut server = TestServer::start_on(port, Script::default()).await;
    wait_status(&mut status, Status::Connected).await;
    let (_, frame) = server.frame().await;
    assert!(
        matches!(&frame, Frame::Ntf { method, .. } if method == "after"),
        "{frame:?}"
    );
}
