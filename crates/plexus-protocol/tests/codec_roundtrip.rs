//! Property tests: every frame survives encode → decode in both codecs, including frames whose
//! payloads are in the other codec (the transcoding path).

mod common;

use common::{CODECS, any_frame, frame, json_value, other};
use plexus_protocol::{Codec, Frame, Payload};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn roundtrip(codec: Codec, original: &Frame) -> Result<(), TestCaseError> {
    let bytes = codec
        .encode(original)
        .map_err(|e| TestCaseError::fail(format!("{} encode failed: {e}", codec.name())))?;
    if codec == Codec::Json {
        prop_assert!(
            std::str::from_utf8(&bytes).is_ok(),
            "JSON frame is not UTF-8"
        );
    }
    let decoded = codec
        .decode(bytes.clone())
        .map_err(|e| TestCaseError::fail(format!("{} decode failed: {e}", codec.name())))?;
    prop_assert_eq!(&decoded, original, "{} bytes: {:?}", codec.name(), bytes);
    prop_assert_eq!(decoded.tag(), original.tag());
    prop_assert_eq!(decoded.id(), original.id());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Frames whose payloads are in JSON, through both codecs.
    #[test]
    fn json_payload_frames_roundtrip(frame in frame(Codec::Json)) {
        for codec in CODECS {
            roundtrip(codec, &frame)?;
        }
    }

    /// Frames whose payloads are in MessagePack, through both codecs.
    #[test]
    fn msgpack_payload_frames_roundtrip(frame in frame(Codec::MsgPack)) {
        for codec in CODECS {
            roundtrip(codec, &frame)?;
        }
    }

    /// A frame encoded in one codec with payloads from the other: the payloads are transcoded
    /// on encode and come back in the frame's codec, holding the same values.
    #[test]
    fn transcoded_payloads_roundtrip(frame in any_frame(), codec in prop_oneof![Just(Codec::Json), Just(Codec::MsgPack)]) {
        let bytes = codec.encode(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded = codec.decode(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &frame);
        // Decoded payloads are in the codec of the frame they arrived in.
        if let Frame::Req { data, .. } | Frame::Res { data, .. } | Frame::Msg { data, .. } = &decoded {
            prop_assert_eq!(data.codec(), codec);
        }
        // And re-encoding the decoded frame in the other codec transcodes back.
        let back = other(codec);
        let bytes = back.encode(&decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = back.decode(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &frame);
    }

    /// A payload keeps its value through `to_codec` in both directions and through `decode`.
    #[test]
    fn payload_transcodes_both_ways(value in json_value()) {
        for codec in CODECS {
            let p = Payload::encode(codec, &value).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(p.is_null(), value.is_null());
            let decoded: serde_json::Value = p.decode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &value);
            let q = p.to_codec(other(codec)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(q.codec(), other(codec));
            prop_assert_eq!(&q, &p);
            let decoded: serde_json::Value = q.decode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &value);
            prop_assert!(Payload::from_raw_checked(codec, p.raw().clone()).is_ok());
        }
    }
}

/// The same frame in both codecs carries the same keys: the MessagePack map, read back as a
/// JSON value, equals the JSON object.
#[test]
fn both_codecs_use_the_same_keys() {
    let mut runner = proptest::test_runner::TestRunner::default();
    let strategy = frame(Codec::Json);
    for _ in 0..256 {
        let frame = strategy.new_tree(&mut runner).unwrap().current();
        let json: serde_json::Value =
            serde_json::from_slice(&Codec::Json.encode(&frame).unwrap()).unwrap();
        let packed: serde_json::Value =
            rmp_serde::from_slice(&Codec::MsgPack.encode(&frame).unwrap()).unwrap();
        assert_eq!(json, packed, "{frame:?}");
        assert_eq!(json["t"], frame.tag());
    }
}

/// The examples of `PROTOCOL.md`, byte for byte in JSON.
#[test]
fn documented_examples_decode_and_reencode_exactly() {
    let examples: &[&str] = &[
        r#"{"t":"hello","token":"eyJhbGciOi...","data":{"device":"web"}}"#,
        r#"{"t":"welcome","conn":"c-7f3a","node":"n1","heartbeat":25000,"user":"alice"}"#,
        r#"{"t":"reject","e":{"code":"NOT_AUTHORIZED","message":"token expired"}}"#,
        r#"{"t":"req","id":1,"m":"greet.hello","d":{"name":"Ada"}}"#,
        r#"{"t":"res","id":1,"d":{"text":"hello, Ada"}}"#,
        r#"{"t":"err","id":1,"e":{"code":"VALIDATION_ERROR","message":"invalid type: string \"x\", expected u32","data":{"path":"user.age"}}}"#,
        r#"{"t":"err","e":{"code":"BAD_FRAME","message":"not valid JSON"}}"#,
        r#"{"t":"ntf","m":"log.event","d":{"level":"info"}}"#,
        r#"{"t":"sub","id":2,"m":"ticks.count","d":{"every":1000},"credit":64}"#,
        r#"{"t":"item","id":2,"d":1}"#,
        r#"{"t":"end","id":2}"#,
        r#"{"t":"cancel","id":2}"#,
        r#"{"t":"credit","id":2,"n":32}"#,
        r#"{"t":"join","id":3,"ch":"room:1","since":{"epoch":"e1","offset":41},"filter":{"kind":"chat"}}"#,
        r#"{"t":"leave","id":4,"ch":"room:1"}"#,
        r#"{"t":"pub","id":5,"ch":"room:1","d":{"text":"hi"}}"#,
        r#"{"t":"msg","ch":"room:1","o":46,"d":{"text":"hi"}}"#,
        r#"{"t":"pjoin","ch":"room:1","d":{"user":"alice","conn":"c-7f3a","info":{"name":"Alice"}}}"#,
        r#"{"t":"pleave","ch":"room:1","d":{"user":"alice","conn":"c-7f3a","info":null}}"#,
        r#"{"t":"ping"}"#,
        r#"{"t":"pong"}"#,
    ];
    for example in examples {
        let frame = Codec::Json
            .decode(example.as_bytes().to_vec().into())
            .unwrap_or_else(|e| panic!("{example}: {e}"));
        let bytes = Codec::Json.encode(&frame).unwrap();
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), *example);
        let packed = Codec::MsgPack.encode(&frame).unwrap();
        assert_eq!(Codec::MsgPack.decode(packed).unwrap(), frame);
    }
}

/// A missing `d` decodes as `null`, and `null` is written out as `"d":null`.
#[test]
fn missing_d_is_null() {
    for codec in CODECS {
        let bytes =
            common::encode_value(codec, &serde_json::json!({"t": "req", "id": 1, "m": "a.b"}));
        let Frame::Req { data, .. } = codec.decode(bytes).unwrap() else {
            panic!("not a req");
        };
        assert!(data.is_null());
        assert_eq!(data.codec(), codec);
        assert_eq!(data, Payload::null(Codec::Json));
    }
}

/// Unknown fields are ignored, in any position and of any type.
#[test]
fn unknown_fields_are_ignored() {
    let value = serde_json::json!({
        "x": [1, {"y": null}], "t": "res", "id": 9, "zz": "q", "d": true, "e2": {"code": 1}
    });
    for codec in CODECS {
        let frame = codec.decode(common::encode_value(codec, &value)).unwrap();
        assert_eq!(
            frame,
            Frame::Res {
                id: 9,
                data: Payload::encode(Codec::Json, &true).unwrap()
            }
        );
    }
}

/// Every line of every JSON code block of the workspace's `PROTOCOL.md` is a frame that
/// decodes and re-encodes to the same bytes.
#[test]
fn protocol_md_examples_are_exact() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../PROTOCOL.md");
    let Ok(doc) = std::fs::read_to_string(path) else {
        return; // Not in the workspace (e.g. a packaged crate).
    };
    let mut blocks = 0;
    for block in doc.split("```json\n").skip(1) {
        let block = block.split("```").next().unwrap();
        for example in block.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let frame = Codec::Json
                .decode(example.as_bytes().to_vec().into())
                .unwrap_or_else(|e| panic!("{example}: {e}"));
            let bytes = Codec::Json.encode(&frame).unwrap();
            assert_eq!(std::str::from_utf8(&bytes).unwrap(), example);
        }
        blocks += 1;
    }
    assert!(blocks >= 20, "only {blocks} examples found");
}

/// MessagePack bytes that are the whole payload reach JSON as base64 text; bytes inside
/// other values as an array of byte values.
#[test]
fn bin_reaches_json_as_base64_when_it_is_the_whole_value() {
    let mut whole = Vec::new();
    rmp::encode::write_bin(&mut whole, &[0, 1, 2, 255]).unwrap();
    let whole = Payload::from_raw(Codec::MsgPack, whole.into());
    assert_eq!(whole.as_bin().as_deref(), Some(&[0u8, 1, 2, 255][..]));
    let json = whole.to_codec(Codec::Json).unwrap();
    assert_eq!(json.raw().as_ref(), br#""AAEC/w==""#);
    let mut nested = Vec::new();
    rmp::encode::write_array_len(&mut nested, 1).unwrap();
    rmp::encode::write_bin(&mut nested, &[7]).unwrap();
    let nested = Payload::from_raw(Codec::MsgPack, nested.into());
    assert_eq!(nested.as_bin(), None);
    assert_eq!(
        nested.to_codec(Codec::Json).unwrap().raw().as_ref(),
        b"[[7]]"
    );
    // A bin header that does not cover the payload exactly is not bytes.
    let cut = Payload::from_raw(Codec::MsgPack, vec![0xc4, 3, 1].into());
    assert_eq!(cut.as_bin(), None);
}
