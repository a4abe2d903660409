//! Per-call deadlines: TIMEOUT, `cancel` on the wire, no leaked pending calls. Against the
//! real server.

mod real;

use std::time::Duration;

use plexus_client::{CallErrorKind, CallOptions, ClientOptions, ErrorCode};
use plexus_protocol::Frame;
use real::{RealServer as TestServer, Script, connect_to};

#[tokio::test]
async fn timeout_fails_the_call_and_sends_cancel() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;

    let error = client
        .request::<u32>("never", &1)
        .options(CallOptions::default().timeout(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Timeout);
    assert_eq!(error.code(), &ErrorCode::TIMEOUT);
    assert!(error.is_timeout());
    assert_eq!(error.to_string(), "call timed out");

    let (_, req) = server.frame().await;
    let (_, cancel) = server.frame().await;
    assert!(matches!(req, Frame::Req { id: 1, .. }), "{req:?}");
    assert_eq!(cancel, Frame::Cancel { id: 1 });
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn default_call_timeout_applies() {
    let mut server = TestServer::start(Script::default()).await;
    let options = ClientOptions::default().call_timeout(Duration::from_millis(50));
    let (client, _) = connect_to(&mut server, options).await;
    let error = client.request::<u32>("never", &1).await.unwrap_err();
    assert!(error.is_timeout());
    server
        .frame_where(|f| matches!(f, Frame::Cancel { .. }))
        .await;
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn many_timeouts_leave_no_pending_calls() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let calls = (0..20).map(|i| {
        let client = client.clone();
        async move {
            client
                .request::<u32>("never", &i)
                .options(CallOptions::default().timeout(Duration::from_millis(50)))
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap_err().is_timeout()));
    assert_eq!(client.pending_calls(), 0);
    let mut cancels = 0;
    for _ in 0..40 {
        if let (_, Frame::Cancel { .. }) = server.frame().await {
            cancels += 1;
        }
    }
    assert_eq!(cancels, 20);
}

#[tokio::test]
async fn dropping_a_request_sends_cancel() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let task = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u32>("never", &1).await })
    };
    let (_, req) = server.frame().await;
    let id = req.id().unwrap();
    task.abort();
    let (_, cancel) = server.frame().await;
    assert_eq!(cancel, Frame::Cancel { id });
    assert_eq!(client.pending_calls(), 0);
}
