//! Calls from the server to the client: handlers on the client's router, NOT_FOUND, cancel,
//! credit, panics. The real server calls through `ConnectionHandle`; the recording proxy
//! shows what the client answered on the wire.

mod real;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};
use plexus_client::{ClientOptions, ErrorBody, ErrorCode, Payload, Router, RpcError};
use plexus_protocol::Frame;
use real::{RealServer as TestServer, Script, WAIT, connect_to};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize)]
struct Sum {
    sum: i64,
}

fn add() -> Router {
    Router::new().request("client.add", |p: Add| async move {
        Ok::<_, ErrorBody>(Sum { sum: p.a + p.b })
    })
}

#[tokio::test]
async fn server_requests_reach_typed_handlers() {
    let mut server = TestServer::start(Script::default()).await;
    let router = add().request(
        "client.raw",
        |p: Payload| async move { Ok::<_, RpcError>(p) },
    );
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);

    let sum: Value = handle
        .request("client.add", &json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(sum, json!({"sum": 5}));
    let (_, res) = server.frame().await;
    assert!(matches!(res, Frame::Res { id: 1, .. }), "{res:?}");

    let raw: Value = handle.request("client.raw", &json!([true])).await.unwrap();
    assert_eq!(raw, json!([true]));
}

#[tokio::test]
async fn handler_errors_and_bad_params_are_err_frames() {
    let mut server = TestServer::start(Script::default()).await;
    let router = add().request("client.deny", |_: Value| async move {
        Err::<(), _>(ErrorBody::new(ErrorCode::FORBIDDEN, "not you"))
    });
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);

    let error = handle
        .request::<Value>("client.add", &json!({"a": "x", "b": 1}))
        .await
        .unwrap_err();
    assert_eq!(error.code(), &ErrorCode::VALIDATION_ERROR);
    let data = error.data().unwrap().to_json_value().unwrap();
    assert_eq!(data["path"], "a");
    match server.frame().await {
        (_, Frame::Err { id: Some(1), error }) => {
            assert_eq!(error.code, ErrorCode::VALIDATION_ERROR)
        }
        other => panic!("expected err, got {other:?}"),
    }

    let error = handle
        .request::<Value>("client.deny", &json!(null))
        .await
        .unwrap_err();
    assert_eq!(error.code(), &ErrorCode::FORBIDDEN);
    assert_eq!(error.message(), "not you");
}

#[tokio::test]
async fn unknown_methods_get_not_found() {
    let mut server = TestServer::start(Script::default()).await;
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(add())).await;
    let handle = server.handle(conn);
    let error = handle
        .request::<Value>("client.nope", &json!(null))
        .await
        .unwrap_err();
    assert_eq!(error.code(), &ErrorCode::NOT_FOUND);
    let mut items = handle
        .stream::<Value>("client.nostream", &json!(null))
        .await
        .unwrap();
    let error = timeout(WAIT, items.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), &ErrorCode::NOT_FOUND);
    // An unknown notification is only logged: the connection goes on.
    handle.notify("client.unknown", &1).unwrap();
    let sum: Sum = handle
        .request("client.add", &json!({"a": 1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(sum.sum, 2);
}

#[tokio::test]
async fn server_notifications_reach_handlers() {
    let mut server = TestServer::start(Script::default()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let router = Router::new().notify("client.note", move |text: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(text);
        }
    });
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    server.handle(conn).notify("client.note", &"hi").unwrap();
    let got = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, "hi");
}

#[tokio::test]
async fn server_streams_are_served() {
    let mut server = TestServer::start(Script::default()).await;
    let router = Router::new()
        .stream("client.count", |n: u64| async move {
            Ok::<_, RpcError>(stream::iter((0..n).map(Ok::<_, ErrorBody>)))
        })
        .stream("client.broken", |_: Payload| async move {
            Ok::<_, RpcError>(stream::iter(vec![Err::<Payload, _>(ErrorBody::new(
                ErrorCode::INTERNAL,
                "nope",
            ))]))
        });
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);
    let items: Vec<u64> = handle
        .stream::<u64>("client.count", &3)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2]);
    for expected in 0..3u64 {
        match server.frame().await {
            (_, Frame::Item { id: 1, data }) => {
                assert_eq!(data.decode::<u64>().unwrap(), expected)
            }
            other => panic!("expected item, got {other:?}"),
        }
    }
    assert_eq!(server.frame().await.1, Frame::End { id: 1 });

    let mut broken = handle
        .stream::<Value>("client.broken", &json!(null))
        .await
        .unwrap();
    let error = timeout(WAIT, broken.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), &ErrorCode::INTERNAL);
}

/// Signals when dropped: shows that a handler's future was dropped.
struct DropSignal(Option<mpsc::UnboundedSender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn server_cancel_drops_the_handler() {
    let mut server = TestServer::start(Script::default()).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let router = add().request("client.slow", move |_: Value| {
        let started = started_tx.clone();
        let signal = DropSignal(Some(dropped_tx.clone()));
        async move {
            let _signal = signal;
            let _ = started.send(());
            futures_util::future::pending::<()>().await;
            Ok::<_, ErrorBody>(())
        }
    });
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);
    // The server gives up waiting: it sends `cancel`.
    let slow = tokio::spawn({
        let handle = handle.clone();
        async move { handle.request::<Value>("client.slow", &json!(null)).await }
    });
    timeout(WAIT, started.recv()).await.unwrap().unwrap();
    slow.abort();
    timeout(WAIT, dropped.recv()).await.unwrap().unwrap();
    // Nothing is sent for the cancelled call: the next answer is the next request's.
    let sum: Sum = handle
        .request("client.add", &json!({"a": 1, "b": 1}))
        .await
        .unwrap();
    assert_eq!(sum.sum, 2);
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 2, .. }), "{next:?}");
}

#[tokio::test]
async fn server_credit_is_honoured() {
    // The server opens its streams with a window of 64 items and grants more as its
    // consumer reads them.
    const WINDOW: usize = 64;
    let mut server = TestServer::start(Script::default()).await;
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let router = add().stream("client.many", move |_: Value| {
        let counter = counter.clone();
        async move {
            Ok::<_, RpcError>(stream::iter(0..1000u64).map(move |i| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ErrorBody>(i)
            }))
        }
    });
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);
    let mut items = handle
        .stream::<u64>("client.many", &json!(null))
        .await
        .unwrap();
    // Nothing is read yet: the client sends the window's worth of items and no more.
    for _ in 0..WINDOW {
        match server.frame().await {
            (_, Frame::Item { id: 1, .. }) => {}
            other => panic!("expected an item, got {other:?}"),
        }
    }
    // A round trip through the client: no item beyond the credit came meanwhile.
    let _: Sum = handle
        .request("client.add", &json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 2, .. }), "{next:?}");
    assert!(produced.load(Ordering::SeqCst) <= WINDOW + 1);

    // Reading half the window grants that much credit: as many more items come.
    for expected in 0..(WINDOW / 2) as u64 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    for _ in 0..WINDOW / 2 {
        match server.frame().await {
            (_, Frame::Item { id: 1, .. }) => {}
            other => panic!("expected an item, got {other:?}"),
        }
    }
    let _: Sum = handle
        .request("client.add", &json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 3, .. }), "{next:?}");
    assert!(produced.load(Ordering::SeqCst) <= WINDOW + WINDOW / 2 + 1);
    // Dropping the stream cancels it on the client.
    drop(items);
    let sum: Sum = handle
        .request("client.add", &json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum.sum, 3);
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error() {
    let mut server = TestServer::start(Script::default()).await;
    async fn panics(_: Payload) -> Result<Payload, RpcError> {
        panic!("handler bug");
    }
    let router = add().request("client.panic", panics).request(
        "client.panic_early",
        |_: Payload| -> std::future::Ready<Result<Payload, RpcError>> {
            panic!("handler bug before the future");
        },
    );
    let (_client, conn) = connect_to(&mut server, ClientOptions::default().router(router)).await;
    let handle = server.handle(conn);
    for method in ["client.panic", "client.panic_early"] {
        let error = handle
            .request::<Value>(method, &json!(null))
            .await
            .unwrap_err();
        assert_eq!(error.code(), &ErrorCode::INTERNAL, "{method}");
    }
    // The connection goes on.
    let sum: Sum = handle
        .request("client.add", &json!({"a": 2, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum.sum, 4);
}
