//! End-to-end: streams (`sub` → `item`* → `end` | `err`) and credit flow control, for both
//! codecs.

#[macro_use]
mod support;

use std::time::Duration;

use futures_util::{StreamExt, stream};
use plexus_server::{Codec, ErrorCode, Router, RpcError};
use serde_json::{Value, json};
use support::{assert_err, start, sys};

codec_tests!(
    count_yields_items_then_end,
    count_zero_ends_at_once,
    credit_limits_items_until_granted,
    credit_granted_in_small_steps,
    stream_setup_error_is_err,
    stream_item_error_ends_stream_with_err,
    stream_bad_params_is_validation_error,
    concurrent_streams_interleave_by_id,
    huge_credit_is_harmless,
    panicking_streams_give_internal,
);

fn router() -> Router {
    sys()
        .stream("app.refuse", |_: Value| async move {
            Err::<stream::Empty<Result<u8, RpcError>>, _>(
                RpcError::new(ErrorCode::new("NO_STREAM"), "not today")
                    .with_data(&json!({"retry": 5})),
            )
        })
        .stream("boom.setup", |_: Value| -> std::future::Ready<Result<stream::Empty<Result<u8, RpcError>>, RpcError>> {
            panic!("{PANIC_TEXT}")
        })
        .stream("boom.open", |_: Value| async move {
            tokio::task::yield_now().await;
            if true {
                panic!("{PANIC_TEXT}");
            }
            Ok::<stream::Empty<Result<u8, RpcError>>, RpcError>(stream::empty())
        })
        .stream("boom.second", |_: Value| async move {
            Ok::<_, RpcError>(stream::iter(0..3).map(|i| {
                if i == 1 {
                    panic!("{PANIC_TEXT}");
                }
                Ok::<_, RpcError>(i)
            }))
        })
        .stream("app.fail_after_two", |_: Value| async move {
            Ok::<_, RpcError>(stream::iter(vec![
                Ok(json!("a")),
                Ok(json!("b")),
                Err(RpcError::new(ErrorCode::new("BROKEN"), "item three failed")),
                Ok(json!("never")),
            ]))
        })
}

const PANIC_TEXT: &str = "secret stream panic 0815";

fn item(id: u64, d: Value) -> Value {
    json!({"t": "item", "id": id, "d": d})
}

fn end(id: u64) -> Value {
    json!({"t": "end", "id": id})
}

async fn count_yields_items_then_end(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 3, "m": "sys.count", "d": {"n": 5}}))
        .await;
    for i in 0..5 {
        assert_eq!(client.recv_json().await, item(3, json!(i)));
    }
    assert_eq!(client.recv_json().await, end(3));
    client.assert_echo(3).await;
}

async fn count_zero_ends_at_once(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": 0}}))
        .await;
    assert_eq!(client.recv_json().await, end(1));
    // With zero credit the (empty) stream still ends: `end` is not an item.
    client
        .send_json(json!({"t": "sub", "id": 2, "m": "sys.count", "d": {"n": 0}, "credit": 0}))
        .await;
    assert_eq!(client.recv_json().await, end(2));
}

async fn credit_limits_items_until_granted(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 7, "m": "sys.count", "d": {"n": 5}, "credit": 2}))
        .await;
    assert_eq!(client.recv_json().await, item(7, json!(0)));
    assert_eq!(client.recv_json().await, item(7, json!(1)));
    // Bounded negative check: no third item without credit.
    client.expect_silence(Duration::from_millis(300)).await;
    client
        .send_json(json!({"t": "credit", "id": 7, "n": 3}))
        .await;
    for i in 2..5 {
        assert_eq!(client.recv_json().await, item(7, json!(i)));
    }
    assert_eq!(
        client.recv_json().await,
        end(7),
        "`end` needs no credit: the stream must finish once the last item is sent"
    );
    client.assert_echo(8).await;
}

async fn credit_granted_in_small_steps(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": 4}, "credit": 0}))
        .await;
    client.expect_silence(Duration::from_millis(150)).await;
    for i in 0..4 {
        client
            .send_json(json!({"t": "credit", "id": 1, "n": 1}))
            .await;
        assert_eq!(client.recv_json().await, item(1, json!(i)));
    }
    assert_eq!(client.recv_json().await, end(1));
    // Credit for a finished or unknown stream is ignored silently.
    client
        .send_json(json!({"t": "credit", "id": 1, "n": 10}))
        .await;
    client
        .send_json(json!({"t": "credit", "id": 999, "n": 10}))
        .await;
    client.assert_echo(2).await;
}

async fn stream_setup_error_is_err(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 4, "m": "app.refuse", "d": null}))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"t": "err", "id": 4, "e": {"code": "NO_STREAM", "message": "not today", "data": {"retry": 5}}})
    );
    // sys.count refuses an interval over a day before yielding anything.
    client
        .send_json(json!({"t": "sub", "id": 5, "m": "sys.count", "d": {"n": 2, "interval_ms": 100_000_000u64}}))
        .await;
    let reply = client.recv_json().await;
    assert_err(&reply, Some(5), "VALIDATION_ERROR");
    assert_eq!(reply["e"]["data"]["path"], "interval_ms", "{reply}");
    client.assert_echo(6).await;
}

async fn stream_item_error_ends_stream_with_err(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 2, "m": "app.fail_after_two"}))
        .await;
    assert_eq!(client.recv_json().await, item(2, json!("a")));
    assert_eq!(client.recv_json().await, item(2, json!("b")));
    assert_eq!(
        client.recv_json().await,
        json!({"t": "err", "id": 2, "e": {"code": "BROKEN", "message": "item three failed"}})
    );
    client.assert_echo(3).await;
}

async fn stream_bad_params_is_validation_error(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": "five"}}))
        .await;
    let reply = client.recv_json().await;
    assert_err(&reply, Some(1), "VALIDATION_ERROR");
    assert_eq!(reply["e"]["data"]["path"], "n", "{reply}");
}

async fn concurrent_streams_interleave_by_id(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    for id in 1..=3u64 {
        client
            .send_json(json!({"t": "sub", "id": id, "m": "sys.count", "d": {"n": 20 * id}}))
            .await;
    }
    let mut next = [0u64; 4];
    let mut ended = [false; 4];
    while !ended[1..].iter().all(|e| *e) {
        let frame = client.recv_json().await;
        let id = frame["id"].as_u64().expect("id") as usize;
        assert!(!ended[id], "frame after end: {frame}");
        match frame["t"].as_str() {
            Some("item") => {
                assert_eq!(frame["d"], next[id], "items of a stream are in order");
                next[id] += 1;
            }
            Some("end") => {
                assert_eq!(next[id], 20 * id as u64, "all items before end");
                ended[id] = true;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
}

async fn huge_credit_is_harmless(codec: Codec) {
    let server = start(sys(), support::config()).await;
    let mut client = server.client(codec).await;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": 3, "interval_ms": 50}, "credit": 0}))
        .await;
    for _ in 0..3 {
        client
            .send_json(json!({"t": "credit", "id": 1, "n": u32::MAX}))
            .await;
    }
    for i in 0..3 {
        assert_eq!(client.recv_json().await, item(1, json!(i)));
    }
    assert_eq!(client.recv_json().await, end(1));
    // A grant that does not fit 32 bits is a bad frame, with the stream's id.
    client
        .send_value(&json!({"t": "credit", "id": 1, "n": u64::from(u32::MAX) + 1}))
        .await;
    assert_err(&client.recv_json().await, Some(1), "BAD_FRAME");
    client.assert_echo(2).await;
}

async fn panicking_streams_give_internal(codec: Codec) {
    let server = start(router(), support::config()).await;
    let mut client = server.client(codec).await;
    for (id, method, items) in [
        (1, "boom.setup", 0),
        (2, "boom.open", 0),
        (3, "boom.second", 1),
    ] {
        client
            .send_json(json!({"t": "sub", "id": id, "m": method, "d": null}))
            .await;
        for i in 0..items {
            assert_eq!(client.recv_json().await, item(id, json!(i)), "{method}");
        }
        let reply = client.recv_json().await;
        assert_err(&reply, Some(id), "INTERNAL");
        assert!(
            reply["e"]["message"]
                .as_str()
                .unwrap()
                .contains("reference"),
            "{method}: {reply}"
        );
        assert!(!reply.to_string().contains(PANIC_TEXT), "{method}: {reply}");
        client.assert_echo(100 + id).await;
    }
}

/// A close request (here the hub's `disconnect`) is acted on while a fast stream keeps the
/// connection's outbound queue from ever emptying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_is_acted_on_while_a_fast_stream_keeps_the_queue_full() {
    use plexus_server::CloseCode;
    use support::Event;

    let server = start(sys(), support::config()).await;
    let mut client = server.client(Codec::Json).await;
    let n: u64 = 1_000_000_000;
    client
        .send_json(json!({"t": "sub", "id": 1, "m": "sys.count", "d": {"n": n}}))
        .await;
    for i in 0..100 {
        assert_eq!(client.recv_json().await, item(1, json!(i)));
    }
    let conn = client.welcome["conn"].as_str().unwrap().to_owned();
    server
        .server
        .hub()
        .disconnect(&conn, CloseCode::NORMAL, "bye")
        .await
        .unwrap();
    // Items keep coming until the close; it must not wait for the stream to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut after = 0u64;
    loop {
        match client.next_event(Duration::from_secs(10)).await {
            Some(Event::Frame(frame)) => {
                assert_eq!(frame["t"], "item", "{frame}");
                after += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no close after {after} more items"
                );
            }
            Some(Event::Close(code)) => {
                assert_eq!(code, Some(1000));
                break;
            }
            other => panic!("expected items then a close, got {other:?}"),
        }
    }
}
