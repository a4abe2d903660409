//! Streams the client opens: items, end, err, cancel on drop, credit, deadline. Against the
//! real server, except a server that ignores credit (`client_misbehaving_server.rs`).

mod real;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{
    CallErrorKind, ClientOptions, DEFAULT_STREAM_WINDOW, ErrorCode, StreamOptions,
};
use plexus_protocol::{Codec, Frame, Payload};
use real::{RealServer as TestServer, Script, WAIT, connect_to};
use tokio::time::timeout;

#[tokio::test]
async fn items_then_end() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut server = TestServer::start(Script::default()).await;
        let (client, _) = connect_to(&mut server, ClientOptions::default().codec(codec)).await;
        let stream = client.stream::<u64>("count", &5).await.unwrap();
        let items: Vec<u64> = timeout(WAIT, stream.map(Result::unwrap).collect())
            .await
            .unwrap();
        assert_eq!(items, vec![0, 1, 2, 3, 4]);
        let (_, sub) = server.frame().await;
        assert!(
            matches!(&sub, Frame::Sub { method, credit: Some(DEFAULT_STREAM_WINDOW), .. } if method == "count"),
            "{sub:?}"
        );
        assert_eq!(client.pending_calls(), 0);
    }
}

#[tokio::test]
async fn err_yields_one_error_then_ends() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let mut stream = client.stream::<u64>("fail_stream", &()).await.unwrap();
    let first = timeout(WAIT, stream.next()).await.unwrap().unwrap();
    assert_eq!(first.unwrap(), 0);
    let second = timeout(WAIT, stream.next()).await.unwrap().unwrap();
    let error = second.unwrap_err();
    assert_eq!(error.kind(), CallErrorKind::Remote);
    assert_eq!(error.code(), &ErrorCode::new("BROKEN"));
    assert!(stream.next().await.is_none());
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn dropping_a_stream_sends_cancel() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let stream = client.stream::<u64>("forever", &()).await.unwrap();
    let id = stream.id();
    let (_, sub) = server.frame().await;
    assert_eq!(sub.id(), Some(id));
    assert_eq!(client.pending_calls(), 1);
    drop(stream);
    let (_, cancel) = server.frame().await;
    assert_eq!(cancel, Frame::Cancel { id });
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn a_finished_stream_sends_no_cancel() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let mut stream = client.stream::<u64>("count", &1).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), 0);
    assert!(timeout(WAIT, stream.next()).await.unwrap().is_none());
    drop(stream);
    // The next frame the server sees is the next call, not a cancel.
    client.notify("marker", &()).await.unwrap();
    let (_, sub) = server.frame().await;
    assert!(matches!(sub, Frame::Sub { .. }));
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Ntf { .. }), "{next:?}");
}

#[tokio::test]
async fn credit_is_granted_as_items_are_consumed() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    // The server sends at most the credit it was given: the stream only completes if the
    // client keeps granting more.
    let stream = client
        .stream::<u64>("credit", &20)
        .options(StreamOptions::default().credit(4))
        .await
        .unwrap();
    let items: Vec<u64> = timeout(WAIT, stream.map(Result::unwrap).collect())
        .await
        .unwrap();
    assert_eq!(items, (0..20).collect::<Vec<_>>());

    let (_, sub) = server.frame().await;
    assert!(
        matches!(
            sub,
            Frame::Sub {
                credit: Some(4),
                ..
            }
        ),
        "{sub:?}"
    );
    let mut granted = 0;
    for _ in 0..100 {
        match server.frame().await {
            (_, Frame::Credit { n, .. }) => {
                assert_eq!(n, 2, "credit is granted per half window");
                granted += n;
                if 4 + granted >= 20 {
                    break;
                }
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(4 + granted >= 20);
}

#[tokio::test]
async fn stream_deadline_times_out_and_cancels() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    let mut stream = client
        .stream::<u64>("forever", &())
        .options(StreamOptions::default().timeout(Duration::from_millis(100)))
        .await
        .unwrap();
    let error = timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(error.is_timeout());
    assert!(stream.next().await.is_none());
    let (_, sub) = server.frame().await;
    let (_, cancel) = server.frame().await;
    assert_eq!(
        cancel,
        Frame::Cancel {
            id: sub.id().unwrap()
        }
    );
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn raw_streams_yield_payloads_and_bad_items_are_errors() {
    let mut server = TestServer::start(Script::default()).await;
    let (client, _) = connect_to(&mut server, ClientOptions::default()).await;
    // `items` yields its params' elements, then ends.
    let mut stream = client
        .stream::<Payload>("items", &serde_json::json!([{"a": 1}]))
        .options(StreamOptions::default())
        .await
        .unwrap();
    let first = timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.to_json_value().unwrap(), serde_json::json!({"a": 1}));
    drop(stream);

    let mut typed = client
        .stream::<u64>("items", &serde_json::json!(["nope", 3]))
        .await
        .unwrap();
    let bad = timeout(WAIT, typed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(bad.kind(), CallErrorKind::Decode);
    assert_eq!(
        timeout(WAIT, typed.next()).await.unwrap().unwrap().unwrap(),
        3
    );
    assert!(timeout(WAIT, typed.next()).await.unwrap().is_none());
}
