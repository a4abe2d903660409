//! Node messages survive the serialization a cluster engine puts them through.

use plexus_engine::NodeMessage;
use plexus_protocol::{Codec, ErrorBody, ErrorCode, Payload};
use serde_json::json;

fn round_trip(message: &NodeMessage) -> NodeMessage {
    let text = serde_json::to_string(message).expect("serialize");
    serde_json::from_str(&text).expect("deserialize")
}

#[test]
fn requests_and_replies_round_trip_through_json() {
    let params = Payload::encode(Codec::Json, &json!({"q": "sure?"})).unwrap();
    let request = NodeMessage::Request {
        conn: "c1".into(),
        method: "ui.confirm".into(),
        data: params,
        node: "a".into(),
        id: 42,
        timeout_ms: 30_000,
    };
    assert_eq!(round_trip(&request), request);
    let cancel = NodeMessage::CancelRequest {
        node: "a".into(),
        id: 42,
    };
    assert_eq!(round_trip(&cancel), cancel);

    let error = ErrorBody::new(ErrorCode::new("DECLINED"), "no")
        .with_data(Payload::encode(Codec::Json, &json!({"why": "busy"})).unwrap());
    let refused = NodeMessage::Reply {
        node: "a".into(),
        id: 42,
        result: Err(error),
    };
    assert_eq!(round_trip(&refused), refused);

    // A MessagePack answer arrives as the same value (in JSON, the codec used between nodes).
    let answer = Payload::encode(Codec::MsgPack, &json!({"ok": true, "n": [1, 2]})).unwrap();
    let NodeMessage::Reply { result, .. } = round_trip(&NodeMessage::Reply {
        node: "a".into(),
        id: 43,
        result: Ok(answer),
    }) else {
        panic!("not a reply");
    };
    assert_eq!(
        result.unwrap().decode::<serde_json::Value>().unwrap(),
        json!({"ok": true, "n": [1, 2]})
    );
}
