//! Calls from the server to the client: registered handlers, NOT_FOUND, cancel, credit.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{StreamExt, stream};
use plexus_client::{ClientOptions, ErrorBody, ErrorCode, Payload, Router, RpcError};
use plexus_protocol::{Codec, Frame};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{Script, TestServer, WAIT, connect_to, json_payload};
use tokio::sync::mpsc;
use tokio::time::timeout;

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize)]
struct Sum {
    sum: i64,
}

fn req(id: u64, method: &str, data: serde_json::Value) -> Frame {
    Frame::Req {
        id,
        method: method.into(),
        data: json_payload(Codec::Json, data),
    }
}

#[tokio::test]
async fn server_requests_reach_typed_handlers() {
    let mut server = TestServer::start(Script::default()).await;
    let options = ClientOptions::default().router(
        Router::new()
            .request("client.add", |p: Add| async move {
                Ok::<_, ErrorBody>(Sum { sum: p.a + p.b })
            })
            .request(
                "client.raw",
                |p: Payload| async move { Ok::<_, RpcError>(p) },
            ),
    );
    let (_client, conn) = connect_to(&mut server, options).await;

    server.send(conn, req(1, "client.add", json!({"a": 2, "b": 3})));
    let (_, res) = server.frame().await;
    match res {
        Frame::Res { id, data } => {
            assert_eq!(id, 1);
            assert_eq!(data.to_json_value().unwrap(), json!({"sum": 5}));
        }
        other => panic!("expected res, got {other:?}"),
    }

    server.send(conn, req(2, "client.raw", json!([true])));
    let (_, res) = server.frame().await;
    assert!(
        matches!(&res, Frame::Res { id: 2, data } if data.to_json_value().unwrap() == json!([true])),
        "{res:?}"
    );
}

#[tokio::test]
async fn handler_errors_and_bad_params_are_err_frames() {
    let mut server = TestServer::start(Script::default()).await;
    let options = ClientOptions::default().router(
        Router::new()
            .request("client.add", |p: Add| async move {
                Ok::<_, ErrorBody>(Sum { sum: p.a + p.b })
            })
            .request("client.deny", |_: serde_json::Value| async move {
                Err::<(), _>(ErrorBody::new(ErrorCode::FORBIDDEN, "not you"))
            }),
    );
    let (_client, conn) = connect_to(&mut server, options).await;

    server.send(conn, req(7, "client.add", json!({"a": "x", "b": 1})));
    match server.frame().await {
        (_, Frame::Err { id: Some(7), error }) => {
            assert_eq!(error.code, ErrorCode::VALIDATION_ERROR);
            let data = error.data.unwrap().to_json_value().unwrap();
            assert_eq!(data["path"], "a");
        }
        other => panic!("expected err, got {other:?}"),
    }

    server.send(conn, req(8, "client.deny", json!(null)));
    match server.frame().await {
        (_, Frame::Err { id: Some(8), error }) => {
            assert_eq!(error.code, ErrorCode::FORBIDDEN);
            assert_eq!(error.message, "not you");
        }
        other => panic!("expected err, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_methods_get_not_found() {
    let mut server = TestServer::start(Script::default()).await;
    let (_client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    server.send(conn, req(3, "client.nope", json!(null)));
    match server.frame().await {
        (_, Frame::Err { id: Some(3), error }) => assert_eq!(error.code, ErrorCode::NOT_FOUND),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    server.send(
        conn,
        Frame::Sub {
            id: 4,
            method: "client.nostream".into(),
            data: json_payload(Codec::Json, json!(null)),
            credit: None,
        },
    );
    match server.frame().await {
        (_, Frame::Err { id: Some(4), error }) => assert_eq!(error.code, ErrorCode::NOT_FOUND),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    // An unknown notification is only logged.
    server.send(
        conn,
        Frame::Ntf {
            method: "client.unknown".into(),
            data: json_payload(Codec::Json, json!(1)),
        },
    );
    server.send(conn, req(5, "client.nope", json!(null)));
    let (_, next) = server.frame().await;
    assert_eq!(next.id(), Some(5));
}

#[tokio::test]
async fn server_notifications_reach_handlers() {
    let mut server = TestServer::start(Script::default()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let options = ClientOptions::default().router(Router::new().notify(
        "client.note",
        move |text: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(text);
            }
        },
    ));
    let (_client, conn) = connect_to(&mut server, options).await;
    server.send(
        conn,
        Frame::Ntf {
            method: "client.note".into(),
            data: json_payload(Codec::Json, json!("hi")),
        },
    );
    let got = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, "hi");
}

#[tokio::test]
async fn server_streams_are_served() {
    let mut server = TestServer::start(Script::default()).await;
    let options = ClientOptions::default().router(
        Router::new()
            .stream("client.count", |n: u64| async move {
                Ok::<_, RpcError>(stream::iter((0..n).map(Ok::<_, ErrorBody>)))
            })
            .stream("client.broken", |_: Payload| async move {
                Ok::<_, RpcError>(stream::iter(vec![Err::<Payload, _>(ErrorBody::new(
                    ErrorCode::INTERNAL,
                    "nope",
                ))]))
            }),
    );
    let (_client, conn) = connect_to(&mut server, options).await;
    server.send(
        conn,
        Frame::Sub {
            id: 9,
            method: "client.count".into(),
            data: json_payload(Codec::Json, json!(3)),
            credit: None,
        },
    );
    for expected in 0..3u64 {
        match server.frame().await {
            (_, Frame::Item { id: 9, data }) => {
                assert_eq!(data.decode::<u64>().unwrap(), expected)
            }
            other => panic!("expected item, got {other:?}"),
        }
    }
    assert_eq!(server.frame().await.1, Frame::End { id: 9 });

    server.send(
        conn,
        Frame::Sub {
            id: 10,
            method: "client.broken".into(),
            data: json_payload(Codec::Json, json!(null)),
            credit: None,
        },
    );
    match server.frame().await {
        (
            _,
            Frame::Err {
                id: Some(10),
                error,
            },
        ) => assert_eq!(error.code, ErrorCode::INTERNAL),
        other => panic!("expected err, got {other:?}"),
    }
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
    let options = ClientOptions::default().router(
        Router::new()
            .request("client.slow", move |_: serde_json::Value| {
                let started = started_tx.clone();
                let signal = DropSignal(Some(dropped_tx.clone()));
                async move {
                    let _signal = signal;
                    let _ = started.send(());
                    futures_util::future::pending::<()>().await;
                    Ok::<_, ErrorBody>(())
                }
            })
            .request("client.add", |p: Add| async move {
                Ok::<_, ErrorBody>(Sum { sum: p.a + p.b })
            }),
    );
    let (_client, conn) = connect_to(&mut server, options).await;
    server.send(conn, req(1, "client.slow", json!(null)));
    timeout(WAIT, started.recv()).await.unwrap().unwrap();
    server.send(conn, Frame::Cancel { id: 1 });
    timeout(WAIT, dropped.recv()).await.unwrap().unwrap();
    // Nothing is sent for the cancelled call: the next frame answers the next request.
    server.send(conn, req(2, "client.add", json!({"a": 1, "b": 1})));
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 2, .. }), "{next:?}");
}

#[tokio::test]
async fn server_credit_is_honoured() {
    let mut server = TestServer::start(Script::default()).await;
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let options = ClientOptions::default().router(
        Router::new()
            .stream("client.many", move |_: serde_json::Value| {
                let counter = counter.clone();
                async move {
                    Ok::<_, RpcError>(stream::iter(0..1000u64).map(move |i| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, ErrorBody>(i)
                    }))
                }
            })
            .request("client.add", |p: Add| async move {
                Ok::<_, ErrorBody>(Sum { sum: p.a + p.b })
            }),
    );
    let (_client, conn) = connect_to(&mut server, options).await;
    server.send(
        conn,
        Frame::Sub {
            id: 5,
            method: "client.many".into(),
            data: json_payload(Codec::Json, json!(null)),
            credit: Some(3),
        },
    );
    for expected in 0..3u64 {
        match server.frame().await {
            (_, Frame::Item { id: 5, data }) => assert_eq!(data.decode::<u64>().unwrap(), expected),
            other => panic!("expected item, got {other:?}"),
        }
    }
    // A round trip through the client: no item beyond the credit came meanwhile.
    server.send(conn, req(6, "client.add", json!({"a": 1, "b": 2})));
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 6, .. }), "{next:?}");
    assert_eq!(produced.load(Ordering::SeqCst), 3);

    server.send(conn, Frame::Credit { id: 5, n: 2 });
    for expected in 3..5u64 {
        match server.frame().await {
            (_, Frame::Item { id: 5, data }) => assert_eq!(data.decode::<u64>().unwrap(), expected),
            other => panic!("expected item, got {other:?}"),
        }
    }
    server.send(conn, Frame::Cancel { id: 5 });
    server.send(conn, req(7, "client.add", json!({"a": 1, "b": 2})));
    let (_, next) = server.frame().await;
    assert!(matches!(next, Frame::Res { id: 7, .. }), "{next:?}");
}

#[tokio::test]
async fn server_ping_frames_get_pong() {
    let mut server = TestServer::start(Script::default()).await;
    let (_client, conn) = connect_to(&mut server, ClientOptions::default()).await;
    server.send(conn, Frame::Ping);
    assert_eq!(server.frame().await.1, Frame::Pong);
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error() {
    let mut server = TestServer::start(Script::default()).await;
    async fn panics(_: Payload) -> Result<Payload, RpcError> {
        panic!("handler bug");
    }
    let options =
        ClientOptions::default().router(Router::new().request("client.panic", panics).request(
            "client.panic_early",
            |_: Payload| -> std::future::Ready<Result<Payload, RpcError>> {
                panic!("handler bug before the future");
            },
        ));
    let (_client, conn) = connect_to(&mut server, options).await;
    server.send(conn, req(1, "client.panic", json!(null)));
    server.send(conn, req(2, "client.panic_early", json!(null)));
    let mut ids = Vec::new();
    for _ in 0..2 {
        match server.frame().await {
            (
                _,
                Frame::Err {
                    id: Some(id),
                    error,
                },
            ) => {
                assert_eq!(error.code, ErrorCode::INTERNAL);
                ids.push(id);
            }
            other => panic!("expected err, got {other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids, [1, 2]);
    // The connection goes on.
    server.send(conn, Frame::Ping);
    assert_eq!(server.frame().await.1, Frame::Pong);
}
