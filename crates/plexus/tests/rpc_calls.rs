//! End-to-end: session start and request/response over real sockets, for both codecs.

#[macro_use]
mod support;

use plexus_server::{CallContext, Codec, ErrorCode, Router, RpcError, Server};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{RawClient, assert_err, recv, start, start_with, sys, within};
use tokio::sync::mpsc;

codec_tests!(
    welcome_has_conn_node_and_heartbeat,
    ping_gets_pong,
    echo_returns_params_unchanged,
    unknown_fields_are_ignored,
    typed_params_and_validation_path,
    unknown_method_is_not_found_with_id,
    unknown_notification_is_not_found_without_id,
    notification_runs_handler_and_gets_no_answer,
    wrong_call_kind_is_bad_frame_with_hint,
    panicking_handlers_give_internal_and_connection_survives,
    custom_error_code_message_and_data_pass_through,
    handler_sees_its_context,
    duplicate_id_in_flight_is_bad_frame,
    large_ids_and_large_payloads_round_trip,
    notification_errors_are_reported_without_id,
);

#[derive(Debug, Deserialize)]
struct CreateUser {
    user: User,
}

#[derive(Debug, Deserialize)]
struct User {
    name: String,
    age: u32,
}

const PANIC_TEXT: &str = "secret panic text 4711";

fn router() -> Router {
    sys()
        .request("users.create", |p: CreateUser| async move {
            Ok::<_, RpcError>(
                json!({"greeting": format!("hello {}", p.user.name), "next_age": p.user.age + 1}),
            )
        })
        .request("boom.now", |_: Value| async move {
            if true {
                panic!("{PANIC_TEXT}");
            }
            Ok::<_, RpcError>(())
        })
        .request("boom.later", |_: Value| async move {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if true {
                panic!("{PANIC_TEXT}");
            }
            Ok::<_, RpcError>(())
        })
        .request(
            "boom.sync",
            |_: Value| -> std::future::Ready<Result<(), RpcError>> { panic!("{PANIC_TEXT}") },
        )
        .request("app.fail", |_: Value| async move {
            Err::<(), _>(
                RpcError::new(ErrorCode::new("APP_ERR"), "the app said no")
                    .with_data(&json!({"field": "x", "limits": [1, 2, 3], "ok": false})),
            )
        })
        .request("ctx.info", |ctx: CallContext, _: Value| async move {
            Ok::<_, RpcError>(json!({
                "call": ctx.call_id(),
                "conn": ctx.connection_id(),
                "codec": ctx.conn().codec().name(),
                "remote_is_local": ctx.remote_addr().is_some_and(|a| a.ip().is_loopback()),
            }))
        })
}

async fn welcome_has_conn_node_and_heartbeat(codec: Codec) {
    let mut config = support::config();
    config.limits.heartbeat_interval = std::time::Duration::from_millis(12_345);
    let server = start_with(
        Server::builder()
            .router(sys())
            .config(config)
            .node_id("node-under-test"),
    )
    .await;
    let a = server.client(codec).await;
    let b = server.client(codec).await;
    for client in [&a, &b] {
        let w = &client.welcome;
        assert_eq!(w["t"], "welcome");
        assert_eq!(w["node"], "node-under-test");
        assert_eq!(w["heartbeat"], 12_345);
        assert!(
            w["conn"].as_str().is_some_and(|c| !c.is_empty()),
            "conn id: {w}"
        );
        assert!(
            w.get("user").is_none(),
            "anonymous connection has no user: {w}"
        );
    }
    assert_ne!(
        a.welcome["conn"], b.welcome["conn"],
        "connection ids are unique"
    );
    assert_eq!(server.server.node_id(), "node-under-test");
}

#[tokio::test]
async fn no_subprotocol_means_json() {
    let server = start(sys(), support::config()).await;
    let mut client = RawClient::connect(server.addr, None).await;
    assert_eq!(client.welcome["t"], "welcome");
    client.assert_echo(1).await;
}

#[tokio::test]
async fn preferred_subprotocol_is_the_first_supported_offer() {
    let server = start(sys(), support::config()).await;
    let (_, head, _) = support::raw_upgrade(
        server.addr,
        &[(
            "Sec-WebSocket-Protocol",
            "chat.v9, plexus.v1.msgpack, plexus.v1.json",
        )],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        support::header(&head, "sec-websocket-protocol"),
        Some("plexus.v1.msgpack")
    );
}

async fn ping_gets_pong(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client.send_json(json!({"t": "ping"})).await;
    assert_eq!(client.recv_json().await, json!({"t": "pong"}));
    // Twice, and interleaved with a call.
    client.send_json(json!({"t": "ping"})).await;
    assert_eq!(client.recv_json().await, json!({"t": "pong"}));
    client.assert_echo(1).await;
}

async fn echo_returns_params_unchanged(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    let values = [
        json!({"a": {"b": {"c": [1, 2, {"d": null}]}}, "e": true, "f": -7, "g": 1.5}),
        json!("grüße, 世界, emoji 🎉, quote \" backslash \\ newline \n"),
        json!({"ключ": "значение", "🔑": ["🎉", {"ü": "ö"}]}),
        json!([]),
        json!({}),
        json!(null),
        json!(18_446_744_073_709_551_615u64),
        json!(-9_223_372_036_854_775_808i64),
    ];
    for (i, d) in values.into_iter().enumerate() {
        let id = i as u64 + 1;
        let reply = client.call(id, "sys.echo", d.clone()).await;
        assert_eq!(reply, json!({"t": "res", "id": id, "d": d}), "value #{i}");
    }
    // A request without `d` is called with null.
    client
        .send_json(json!({"t": "req", "id": 100, "m": "sys.echo"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 100, "d": null})
    );
}

async fn unknown_fields_are_ignored(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_value(&json!({"t": "req", "id": 5, "m": "sys.echo", "d": [1], "zz": {"x": 1}, "trace": "abc"}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 5, "d": [1]})
    );
}

async fn typed_params_and_validation_path(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;

    let ok = client
        .call(
            1,
            "users.create",
            json!({"user": {"name": "Zoë", "age": 41}}),
        )
        .await;
    assert_eq!(
        ok,
        json!({"t": "res", "id": 1, "d": {"greeting": "hello Zoë", "next_age": 42}})
    );

    let bad = client
        .call(
            2,
            "users.create",
            json!({"user": {"name": "Zoë", "age": "old"}}),
        )
        .await;
    assert_err(&bad, Some(2), "VALIDATION_ERROR");
    assert_eq!(bad["e"]["data"]["path"], "user.age", "{bad}");
    assert!(
        bad["e"]["message"].as_str().unwrap().contains("user.age"),
        "{bad}"
    );

    let negative = client
        .call(
            3,
            "users.create",
            json!({"user": {"name": "Zoë", "age": -1}}),
        )
        .await;
    assert_err(&negative, Some(3), "VALIDATION_ERROR");
    assert_eq!(negative["e"]["data"]["path"], "user.age", "{negative}");

    let missing = client
        .call(4, "users.create", json!({"user": {"age": 3}}))
        .await;
    assert_err(&missing, Some(4), "VALIDATION_ERROR");
    assert!(
        missing["e"]["data"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("user")),
        "{missing}"
    );

    let not_object = client.call(5, "users.create", json!(17)).await;
    assert_err(&not_object, Some(5), "VALIDATION_ERROR");

    // sys.sleep validates too, and the connection keeps serving.
    let sleep = client.call(6, "sys.sleep", json!({"ms": "soon"})).await;
    assert_err(&sleep, Some(6), "VALIDATION_ERROR");
    assert_eq!(sleep["e"]["data"]["path"], "ms", "{sleep}");
    client.assert_echo(7).await;
}

async fn unknown_method_is_not_found_with_id(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    let reply = client.call(42, "nope.missing", json!({"x": 1})).await;
    assert_err(&reply, Some(42), "NOT_FOUND");
    assert!(
        reply["e"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.missing"),
        "{reply}"
    );
    // Streams too.
    client
        .send_json(json!({"t": "sub", "id": 43, "m": "nope.stream"}))
        .await;
    assert_err(&client.recv_json().await, Some(43), "NOT_FOUND");
    client.assert_echo(44).await;
}

async fn unknown_notification_is_not_found_without_id(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "ntf", "m": "nope.event", "d": {"x": 1}}))
        .await;
    let reply = client.recv_json().await;
    assert_err(&reply, None, "NOT_FOUND");
    client.assert_echo(1).await;
}

async fn notification_runs_handler_and_gets_no_answer(codec: Codec) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let router = sys().notify("log.event", move |p: Value| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(p);
        }
    });
    let server = start(router, support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "ntf", "m": "log.event", "d": {"level": "info", "msg": "ünïcode"}}))
        .await;
    assert_eq!(
        recv(&mut rx, "notification handler").await,
        json!({"level": "info", "msg": "ünïcode"})
    );
    // Nothing answers a notification: the next frame is the echo's.
    client.assert_echo(1).await;
}

async fn wrong_call_kind_is_bad_frame_with_hint(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;

    let req_to_stream = client.call(1, "sys.count", json!({"n": 3})).await;
    assert_err(&req_to_stream, Some(1), "BAD_FRAME");
    let message = req_to_stream["e"]["message"].as_str().unwrap();
    assert!(
        message.contains("sys.count") && message.contains("`sub`"),
        "the message must say to call it with sub: {message}"
    );

    client
        .send_json(json!({"t": "sub", "id": 2, "m": "sys.echo", "d": 1}))
        .await;
    let sub_to_request = client.recv_json().await;
    assert_err(&sub_to_request, Some(2), "BAD_FRAME");
    let message = sub_to_request["e"]["message"].as_str().unwrap();
    assert!(
        message.contains("sys.echo") && message.contains("`req`"),
        "the message must say to call it with req: {message}"
    );

    // A notification to a request method: no id to answer with.
    client
        .send_json(json!({"t": "ntf", "m": "sys.echo", "d": 1}))
        .await;
    let ntf_to_request = client.recv_json().await;
    assert_err(&ntf_to_request, None, "BAD_FRAME");
    assert!(
        ntf_to_request["e"]["message"]
            .as_str()
            .unwrap()
            .contains("`req`"),
        "{ntf_to_request}"
    );

    // The ids are free again afterwards.
    client.assert_echo(1).await;
    client.assert_echo(2).await;
}

async fn panicking_handlers_give_internal_and_connection_survives(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    // Panics at the first poll, after an await (in the spawned task), and before the
    // handler's future even exists.
    for (id, method) in [(1, "boom.now"), (2, "boom.later"), (3, "boom.sync")] {
        let reply = client.call(id, method, json!({})).await;
        assert_err(&reply, Some(id), "INTERNAL");
        let message = reply["e"]["message"].as_str().unwrap();
        assert!(message.contains("reference"), "{method}: {message}");
        assert!(
            !message.contains(PANIC_TEXT) && !reply.to_string().contains(PANIC_TEXT),
            "{method}: the panic text leaked: {reply}"
        );
        client.assert_echo(100 + id).await;
    }
}

async fn custom_error_code_message_and_data_pass_through(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    let reply = client.call(9, "app.fail", json!(null)).await;
    assert_eq!(
        reply,
        json!({
            "t": "err",
            "id": 9,
            "e": {
                "code": "APP_ERR",
                "message": "the app said no",
                "data": {"field": "x", "limits": [1, 2, 3], "ok": false}
            }
        })
    );
}

async fn handler_sees_its_context(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    let conn = client.welcome["conn"].clone();
    let reply = client.call(77, "ctx.info", json!(null)).await;
    assert_eq!(
        reply,
        json!({"t": "res", "id": 77, "d": {
            "call": 77,
            "conn": conn,
            "codec": codec.name(),
            "remote_is_local": true,
        }})
    );
}

#[tokio::test]
async fn connections_are_independent() {
    let server = start(sys(), support::config()).await;
    let mut json_client = server.client(Codec::Json).await;
    let mut msgpack_client = server.client(Codec::MsgPack).await;
    // The same call id on two connections does not collide.
    json_client
        .send_json(json!({"t": "req", "id": 1, "m": "sys.sleep", "d": {"ms": 50}}))
        .await;
    msgpack_client.assert_echo(1).await;
    assert_eq!(
        within("sleep reply", json_client.recv_json()).await,
        json!({"t": "res", "id": 1, "d": {"slept": 50}})
    );
}

async fn duplicate_id_in_flight_is_bad_frame(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "req", "id": 1, "m": "sys.sleep", "d": {"ms": 200}}))
        .await;
    let duplicate = client.call(1, "sys.echo", json!("again")).await;
    assert_err(&duplicate, Some(1), "BAD_FRAME");
    assert!(
        duplicate["e"]["message"]
            .as_str()
            .unwrap()
            .contains("already in flight"),
        "{duplicate}"
    );
    // The first call is unaffected and answers once.
    assert_eq!(
        client.recv_json().await,
        json!({"t": "res", "id": 1, "d": {"slept": 200}})
    );
    client.assert_echo(1).await;
}

async fn large_ids_and_large_payloads_round_trip(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    for id in [(1u64 << 53) + 1, u64::MAX] {
        client.assert_echo(id).await;
    }
    // 900 KiB, under the default 1 MiB limit.
    let big = "ß".repeat(450 * 1024);
    let reply = client.call(2, "sys.echo", json!({"big": big})).await;
    assert_eq!(reply["t"], "res");
    assert_eq!(reply["d"]["big"].as_str().map(str::len), Some(big.len()));
    assert!(reply["d"]["big"] == big.as_str());
}

async fn notification_errors_are_reported_without_id(codec: Codec) {
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let router = sys()
        .notify("typed.event", move |p: User| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p.age);
            }
        })
        .notify("boom.event", |_: Value| async move {
            if true {
                panic!("{PANIC_TEXT}");
            }
        })
        .notify("boom.later_event", |_: Value| async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if true {
                panic!("{PANIC_TEXT}");
            }
        });
    let server = start(router, support::config()).await;
    let mut client = server.client(codec).await;

    client
        .send_json(json!({"t": "ntf", "m": "typed.event", "d": {"name": "a", "age": "x"}}))
        .await;
    let reply = client.recv_json().await;
    assert_err(&reply, None, "VALIDATION_ERROR");
    assert_eq!(reply["e"]["data"]["path"], "age", "{reply}");
    client
        .send_json(json!({"t": "ntf", "m": "typed.event", "d": {"name": "a", "age": 3}}))
        .await;
    assert_eq!(recv(&mut rx, "typed notification").await, 3);

    // A panicking notification handler is reported like a panicking request handler
    // (INTERNAL, no id, no panic text), whether it panics at once or after an await.
    for method in ["boom.event", "boom.later_event"] {
        client
            .send_json(json!({"t": "ntf", "m": method, "d": null}))
            .await;
        let reply = client.recv_json().await;
        assert_err(&reply, None, "INTERNAL");
        assert!(!reply.to_string().contains(PANIC_TEXT), "{method}: {reply}");
    }
    client.assert_echo(1).await;
}
