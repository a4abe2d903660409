//! End-to-end: the server calls the client (`ConnectionHandle::request`, `request_timeout`,
//! `notify`, `stream`), from an `on_connect` hook's handle and from a handler through
//! `ctx.conn()`; the raw client answers by hand. Both codecs.

#[macro_use]
mod support;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_server::{CallContext, CallError, Codec, ConnectionHandle, RpcError, Server};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{RawClient, TestServer, recv, start_with, sys, with_connect_hook};
use tokio::sync::mpsc;

codec_tests!(
    request_gets_client_result,
    request_gets_client_error,
    request_answer_of_wrong_shape_is_validation_error,
    request_timeout_sends_cancel,
    concurrent_requests_get_their_own_answers,
    notify_arrives_as_ntf,
    stream_yields_items_then_none,
    stream_grants_credit_as_items_are_consumed,
    stream_error_from_client,
    dropping_stream_sends_cancel,
    handler_calls_client_through_context,
    pending_call_fails_when_connection_closes,
    handler_notifications_arrive_before_its_reply,
);

#[derive(Debug, Deserialize, PartialEq)]
struct Sum {
    sum: i64,
}

async fn setup(codec: Codec) -> (TestServer, RawClient, ConnectionHandle) {
    let router = sys()
        .request("ask.client", |ctx: CallContext, p: Value| async move {
            let answer: Value = ctx.conn().request("client.name", &p).await?;
            Ok::<_, RpcError>(json!({"client_said": answer}))
        })
        .request("progress.now", |ctx: CallContext, n: u32| async move {
            for i in 0..n {
                ctx.conn().notify("progress.step", &i)?;
            }
            Ok::<_, RpcError>("done")
        })
        .request("progress.later", |ctx: CallContext, n: u32| async move {
            tokio::task::yield_now().await;
            for i in 0..n {
                ctx.conn().notify("progress.step", &i)?;
            }
            Ok::<_, RpcError>("done")
        });
    let (builder, mut conns) = with_connect_hook(Server::builder().router(router));
    let server = start_with(builder).await;
    let client = server.client(codec).await;
    let conn = recv(&mut conns, "on_connect").await;
    assert_eq!(
        conn.id(),
        client.welcome["conn"],
        "the hook sees this connection"
    );
    assert_eq!(conn.codec(), codec);
    (server, client, conn)
}

/// Reads the next frame and checks it is a call of `kind` (`req`/`sub`) to `method` with
/// `d`; returns its id.
async fn expect_call(client: &mut RawClient, kind: &str, method: &str, d: Value) -> u64 {
    let frame = client.recv_json().await;
    let id = frame["id"]
        .as_u64()
        .filter(|id| *id > 0)
        .unwrap_or_else(|| panic!("{frame}"));
    let mut expected = json!({"t": kind, "id": id, "m": method, "d": d});
    if kind == "sub" {
        expected["credit"] = json!(64);
    }
    assert_eq!(frame, expected);
    id
}

/// Runs `f` in a task and delivers its output through a channel.
fn spawn_reporting<T, F>(f: F) -> mpsc::UnboundedReceiver<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = tx.send(f.await);
    });
    rx
}

async fn request_gets_client_result(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        conn.request::<Sum>("client.add", &json!({"a": 1, "b": 2}))
            .await
    });
    let id = expect_call(&mut client, "req", "client.add", json!({"a": 1, "b": 2})).await;
    client
        .send_json(json!({"t": "res", "id": id, "d": {"sum": 3}}))
        .await;
    let answer = recv(&mut out, "request result").await;
    assert_eq!(answer.expect("answer"), Sum { sum: 3 });
}

async fn request_gets_client_error(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out =
        spawn_reporting(async move { conn.request::<Value>("client.add", &json!({"a": 1})).await });
    let id = expect_call(&mut client, "req", "client.add", json!({"a": 1})).await;
    client
        .send_json(json!({"t": "err", "id": id, "e": {"code": "CLIENT_ERR", "message": "no b", "data": {"missing": "b"}}}))
        .await;
    let error: CallError = recv(&mut out, "request result")
        .await
        .expect_err("client error");
    assert_eq!(error.code().as_str(), "CLIENT_ERR");
    assert_eq!(error.message(), "no b");
    let data = error.data().expect("data").to_json_value().expect("json");
    assert_eq!(data, json!({"missing": "b"}));
    assert!(!error.is_timeout() && !error.is_unavailable());
}

async fn request_answer_of_wrong_shape_is_validation_error(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out =
        spawn_reporting(async move { conn.request::<Sum>("client.add", &json!([1, 2])).await });
    let id = expect_call(&mut client, "req", "client.add", json!([1, 2])).await;
    client
        .send_json(json!({"t": "res", "id": id, "d": {"sum": "three"}}))
        .await;
    let error = recv(&mut out, "request result")
        .await
        .expect_err("wrong shape");
    assert_eq!(error.code().as_str(), "VALIDATION_ERROR");
    assert!(error.message().contains("sum"), "{error}");
}

async fn request_timeout_sends_cancel(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        conn.request_timeout::<Value>("client.slow", &json!(null), Duration::from_millis(200))
            .await
    });
    let id = expect_call(&mut client, "req", "client.slow", json!(null)).await;
    // The client does not answer: it gets `cancel` for that id, the caller gets TIMEOUT.
    assert_eq!(client.recv_json().await, json!({"t": "cancel", "id": id}));
    let error = recv(&mut out, "request result").await.expect_err("timeout");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(error.code().as_str(), "TIMEOUT");
    // A late answer is ignored and the connection keeps working.
    client
        .send_json(json!({"t": "res", "id": id, "d": "too late"}))
        .await;
    client.assert_echo(1).await;
}

async fn concurrent_requests_get_their_own_answers(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let first = conn.clone();
    let mut out_a =
        spawn_reporting(async move { first.request::<Value>("client.which", &json!("a")).await });
    let id_a = expect_call(&mut client, "req", "client.which", json!("a")).await;
    let mut out_b =
        spawn_reporting(async move { conn.request::<Value>("client.which", &json!("b")).await });
    let id_b = expect_call(&mut client, "req", "client.which", json!("b")).await;
    assert_ne!(id_a, id_b, "calls in flight have distinct ids");
    // Answer in reverse order.
    client
        .send_json(json!({"t": "res", "id": id_b, "d": "answer b"}))
        .await;
    client
        .send_json(json!({"t": "res", "id": id_a, "d": "answer a"}))
        .await;
    assert_eq!(recv(&mut out_b, "b").await.expect("b"), json!("answer b"));
    assert_eq!(recv(&mut out_a, "a").await.expect("a"), json!("answer a"));
}

async fn notify_arrives_as_ntf(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    conn.notify("client.event", &json!({"kind": "update", "text": "ünï 🎉"}))
        .expect("notify");
    assert_eq!(
        client.recv_json().await,
        json!({"t": "ntf", "m": "client.event", "d": {"kind": "update", "text": "ünï 🎉"}})
    );
    conn.notify("client.empty", &()).expect("notify");
    assert_eq!(
        client.recv_json().await,
        json!({"t": "ntf", "m": "client.empty", "d": null})
    );
}

async fn stream_yields_items_then_none(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        let mut stream = conn
            .stream::<Value>("client.items", &json!({"from": 1}))
            .await
            .expect("open stream");
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item.expect("item"));
        }
        // After None it stays finished.
        assert!(stream.next().await.is_none());
        items
    });
    let id = expect_call(&mut client, "sub", "client.items", json!({"from": 1})).await;
    for d in [json!(1), json!({"two": 2}), json!("three")] {
        client
            .send_json(json!({"t": "item", "id": id, "d": d}))
            .await;
    }
    client.send_json(json!({"t": "end", "id": id})).await;
    assert_eq!(
        recv(&mut out, "stream items").await,
        [json!(1), json!({"two": 2}), json!("three")]
    );
    client.assert_echo(1).await;
}

async fn stream_grants_credit_as_items_are_consumed(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        let stream = conn
            .stream::<u64>("client.numbers", &json!(null))
            .await
            .expect("open stream");
        stream
            .map(|item| item.expect("item"))
            .collect::<Vec<_>>()
            .await
    });
    let id = expect_call(&mut client, "sub", "client.numbers", json!(null)).await;
    for i in 0..40u64 {
        client
            .feed_json(json!({"t": "item", "id": id, "d": i}))
            .await;
    }
    client.feed_json(json!({"t": "end", "id": id})).await;
    client.flush().await;
    assert_eq!(
        recv(&mut out, "stream items").await,
        (0..40).collect::<Vec<u64>>()
    );
    // Half the window (32 of 64) consumed: the server grants that much again.
    assert_eq!(
        client.recv_json().await,
        json!({"t": "credit", "id": id, "n": 32})
    );
}

async fn stream_error_from_client(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        let mut stream = conn
            .stream::<Value>("client.items", &json!(null))
            .await
            .expect("open stream");
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            seen.push(item.map_err(|e| (e.code().as_str().to_owned(), e.message().to_owned())));
        }
        seen
    });
    let id = expect_call(&mut client, "sub", "client.items", json!(null)).await;
    client
        .send_json(json!({"t": "item", "id": id, "d": "x"}))
        .await;
    client
        .send_json(json!({"t": "err", "id": id, "e": {"code": "GONE", "message": "source gone"}}))
        .await;
    assert_eq!(
        recv(&mut out, "stream outcome").await,
        [
            Ok(json!("x")),
            Err(("GONE".to_owned(), "source gone".to_owned()))
        ]
    );
}

async fn dropping_stream_sends_cancel(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let mut out = spawn_reporting(async move {
        let mut stream = conn
            .stream::<Value>("client.items", &json!(null))
            .await
            .expect("open stream");
        let first = stream.next().await;
        drop(stream);
        first.map(|item| item.expect("item"))
    });
    let id = expect_call(&mut client, "sub", "client.items", json!(null)).await;
    client
        .send_json(json!({"t": "item", "id": id, "d": "only"}))
        .await;
    assert_eq!(recv(&mut out, "first item").await, Some(json!("only")));
    assert_eq!(client.recv_json().await, json!({"t": "cancel", "id": id}));
}

async fn handler_calls_client_through_context(codec: Codec) {
    let (_server, mut client, _conn) = setup(codec).await;
    // The client's call id 1 and the server's call ids are separate spaces.
    client
        .send_json(json!({"t": "req", "id": 1, "m": "ask.client", "d": {"q": "name?"}}))
        .await;
    let server_id = expect_call(&mut client, "req", "client.name", json!({"q": "name?"})).await;
    client
        .send_json(json!({"t": "res", "id": server_id, "d": "Ada"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 1, "d": {"client_said": "Ada"}})
    );
    // A client error propagates as the handler's error.
    client
        .send_json(json!({"t": "req", "id": 2, "m": "ask.client", "d": null}))
        .await;
    let server_id = expect_call(&mut client, "req", "client.name", json!(null)).await;
    client
        .send_json(json!({"t": "err", "id": server_id, "e": {"code": "SHY", "message": "no name"}}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "err", "id": 2, "e": {"code": "SHY", "message": "no name"}})
    );
}

async fn pending_call_fails_when_connection_closes(codec: Codec) {
    let (_server, mut client, conn) = setup(codec).await;
    let handle = conn.clone();
    let mut out = spawn_reporting(async move {
        handle
            .request_timeout::<Value>("client.never", &json!(null), Duration::from_secs(60))
            .await
    });
    expect_call(&mut client, "req", "client.never", json!(null)).await;
    client.close().await;
    let error = recv(&mut out, "request result").await.expect_err("closed");
    assert!(error.is_unavailable(), "{error}");
    support::within("closed()", conn.closed()).await;
    assert!(conn.is_closed());
    // Calls on a closed connection fail at once.
    assert!(conn.notify("x.y", &1).expect_err("closed").is_unavailable());
    let error = support::within("request on closed", conn.request::<Value>("x.y", &1))
        .await
        .expect_err("closed");
    assert!(error.is_unavailable(), "{error}");
}

async fn handler_notifications_arrive_before_its_reply(codec: Codec) {
    let (_server, mut client, _conn) = setup(codec).await;
    // Whether the handler finishes at its first poll or later, what it sent the client
    // before returning arrives before its reply.
    for (id, method) in [
        (1, "progress.now"),
        (2, "progress.later"),
        (3, "progress.now"),
    ] {
        client
            .send_json(json!({"t": "req", "id": id, "m": method, "d": 3}))
            .await;
        for i in 0..3 {
            assert_eq!(
                client.recv_json().await,
                json!({"t": "ntf", "m": "progress.step", "d": i}),
                "{method}"
            );
        }
        assert_eq!(
            client.recv_json().await,
            json!({"t": "res", "id": id, "d": "done"}),
            "{method}"
        );
    }
}

/// Notifications queued before a close request reach the client before its close frame:
/// a server can say why it ends a session.
#[tokio::test]
async fn notifications_sent_before_a_close_arrive_before_it() {
    for codec in [Codec::Json, Codec::MsgPack] {
        let (_server, mut client, conn) = setup(codec).await;
        for n in 0..20 {
            conn.notify("session.ending", &json!({"n": n})).unwrap();
        }
        conn.close(plexus_server::CloseCode::FORBIDDEN, "revoked");
        for n in 0..20 {
            let frame = client.recv_json().await;
            assert_eq!(
                frame,
                json!({"t": "ntf", "m": "session.ending", "d": {"n": n}}),
                "{codec:?}"
            );
        }
        assert_eq!(client.recv_close().await, 4003);
    }
}
