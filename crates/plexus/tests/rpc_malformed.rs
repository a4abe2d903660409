//! End-to-end: malformed input. Each case runs on its own connection and must get exactly
//! one `err` with `BAD_FRAME` (with the id when it could be read), leave that connection
//! usable, and leave another, already-open connection unaffected.

mod support;

use plexus_server::Codec;
use serde_json::{Value, json};
use support::{assert_err, start, sys};

/// One malformed message.
enum Input {
    Text(String),
    Binary(Vec<u8>),
    /// Any value in the connection's codec (JSON text or MessagePack via rmp-serde).
    Value(Value),
}

fn text(s: &str) -> Input {
    Input::Text(s.to_owned())
}

/// Sends `input` on a fresh connection and checks the outcome; returns the error frame.
async fn bad_frame(codec: Codec, input: Input, id: Option<u64>) -> Value {
    let server = start(sys(), support::config()).await;
    let mut witness = server.client(codec).await;
    witness.assert_echo(1).await;
    let mut client = server.client(codec).await;
    match input {
        Input::Text(s) => client.send_text(s).await,
        Input::Binary(b) => client.send_binary(b).await,
        Input::Value(v) => client.send_value(&v).await,
    }
    let frame = client.recv_json().await;
    assert_err(&frame, id, "BAD_FRAME");
    // Not a disconnect: the same connection answers, and so does the other one.
    client.assert_echo(2).await;
    witness.assert_echo(2).await;
    frame
}

fn message(frame: &Value) -> &str {
    frame["e"]["message"].as_str().expect("message")
}

// ---- JSON ---------------------------------------------------------------------------------

#[tokio::test]
async fn json_not_json() {
    for input in ["not json at all", "{\"t\":\"req\",", "", "{]"] {
        let frame = bad_frame(Codec::Json, text(input), None).await;
        assert!(!message(&frame).is_empty());
    }
}

#[tokio::test]
async fn json_not_an_object() {
    for input in ["[1,2]", "42", "\"req\"", "null", "true"] {
        let frame = bad_frame(Codec::Json, text(input), None).await;
        assert!(message(&frame).contains("object"), "{input}: {frame}");
    }
}

#[tokio::test]
async fn json_missing_t() {
    bad_frame(Codec::Json, text(r#"{"m":"sys.echo","d":1}"#), None).await;
    // The id is still reported when it can be read.
    bad_frame(Codec::Json, text(r#"{"id":5,"m":"sys.echo"}"#), Some(5)).await;
}

#[tokio::test]
async fn json_unknown_t() {
    let frame = bad_frame(Codec::Json, text(r#"{"t":"nope","id":3}"#), Some(3)).await;
    assert!(message(&frame).contains("nope"), "{frame}");
    bad_frame(Codec::Json, text(r#"{"t":7,"id":3}"#), Some(3)).await;
}

#[tokio::test]
async fn json_req_without_id() {
    bad_frame(
        Codec::Json,
        text(r#"{"t":"req","m":"sys.echo","d":1}"#),
        None,
    )
    .await;
    bad_frame(
        Codec::Json,
        text(r#"{"t":"sub","m":"sys.count","d":{"n":1}}"#),
        None,
    )
    .await;
}

#[tokio::test]
async fn json_req_without_m() {
    let frame = bad_frame(Codec::Json, text(r#"{"t":"req","id":7}"#), Some(7)).await;
    assert!(message(&frame).contains("`m`"), "{frame}");
}

#[tokio::test]
async fn json_id_of_wrong_type() {
    for input in [
        r#"{"t":"req","id":"x","m":"sys.echo"}"#,
        r#"{"t":"req","id":-1,"m":"sys.echo"}"#,
        r#"{"t":"req","id":1.5,"m":"sys.echo"}"#,
        r#"{"t":"req","id":0,"m":"sys.echo"}"#,
        r#"{"t":"req","id":null,"m":"sys.echo"}"#,
    ] {
        bad_frame(Codec::Json, text(input), None).await;
    }
}

#[tokio::test]
async fn json_binary_message() {
    let frame = bad_frame(
        Codec::Json,
        Input::Binary(br#"{"t":"req","id":1,"m":"sys.echo"}"#.to_vec()),
        None,
    )
    .await;
    assert!(message(&frame).contains("binary"), "{frame}");
}

#[tokio::test]
async fn json_server_only_frames() {
    for frame in [
        json!({"t": "msg", "ch": "room:1", "o": 1, "d": "x"}),
        json!({"t": "welcome", "conn": "c", "node": "n", "heartbeat": 1000}),
        json!({"t": "welcome"}),
        json!({"t": "reject", "e": {"code": "NOT_AUTHORIZED", "message": "no"}}),
        json!({"t": "pjoin", "ch": "room:1", "d": {}}),
    ] {
        bad_frame(Codec::Json, Input::Value(frame), None).await;
    }
}

#[tokio::test]
async fn json_too_deep() {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let input = format!(r#"{{"t":"req","id":8,"m":"sys.echo","d":{deep}}}"#);
    bad_frame(Codec::Json, Input::Text(input), Some(8)).await;
}

// ---- MessagePack --------------------------------------------------------------------------

#[tokio::test]
async fn msgpack_text_message() {
    let frame = bad_frame(Codec::MsgPack, text(r#"{"t":"ping"}"#), None).await;
    assert!(message(&frame).contains("text"), "{frame}");
}

#[tokio::test]
async fn msgpack_not_msgpack() {
    for bytes in [
        vec![0xc1],
        vec![],
        vec![0x82, 0xa1, b't'],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
    ] {
        bad_frame(Codec::MsgPack, Input::Binary(bytes), None).await;
    }
}

#[tokio::test]
async fn msgpack_not_a_map() {
    for value in [json!([1, 2]), json!(42), json!("req"), json!(null)] {
        bad_frame(Codec::MsgPack, Input::Value(value), None).await;
    }
}

#[tokio::test]
async fn msgpack_missing_or_unknown_t() {
    bad_frame(Codec::MsgPack, Input::Value(json!({"m": "sys.echo"})), None).await;
    bad_frame(
        Codec::MsgPack,
        Input::Value(json!({"id": 5, "m": "sys.echo"})),
        Some(5),
    )
    .await;
    bad_frame(
        Codec::MsgPack,
        Input::Value(json!({"t": "nope", "id": 3})),
        Some(3),
    )
    .await;
}

#[tokio::test]
async fn msgpack_req_without_id_or_m() {
    bad_frame(
        Codec::MsgPack,
        Input::Value(json!({"t": "req", "m": "sys.echo", "d": 1})),
        None,
    )
    .await;
    bad_frame(
        Codec::MsgPack,
        Input::Value(json!({"t": "req", "id": 7})),
        Some(7),
    )
    .await;
}

#[tokio::test]
async fn msgpack_id_of_wrong_type() {
    for id in [json!("x"), json!(-1), json!(1.5), json!(0)] {
        bad_frame(
            Codec::MsgPack,
            Input::Value(json!({"t": "req", "id": id, "m": "sys.echo"})),
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn msgpack_server_only_frames() {
    for frame in [
        json!({"t": "msg", "ch": "room:1", "o": 1, "d": "x"}),
        json!({"t": "welcome", "conn": "c", "node": "n", "heartbeat": 1000}),
    ] {
        bad_frame(Codec::MsgPack, Input::Value(frame), None).await;
    }
}
