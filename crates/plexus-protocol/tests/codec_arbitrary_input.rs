//! Untrusted input: arbitrary bytes, mutated frames and every malformed frame the server must
//! answer with `BAD_FRAME` go through `Codec::decode` without panicking.

mod common;

use bytes::Bytes;
use common::{CODECS, any_frame, encode_value, json_value, to_msgpack};
use plexus_protocol::{Codec, DecodeError, Frame, Payload};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// Decodes `input`; on success checks that the frame re-encodes and decodes to an equal frame,
/// on failure that the error says something.
fn check(codec: Codec, input: Bytes) -> Result<(), TestCaseError> {
    match codec.decode(input.clone()) {
        Ok(frame) => {
            let bytes = codec.encode(&frame).map_err(|e| {
                TestCaseError::fail(format!("re-encode of {frame:?} from {input:?}: {e}"))
            })?;
            let again = codec.decode(bytes.clone()).map_err(|e| {
                TestCaseError::fail(format!(
                    "decode of re-encoded {bytes:?} (from {input:?}): {e}"
                ))
            })?;
            prop_assert_eq!(&again, &frame, "input {:?}", input);
        }
        Err(e) => {
            prop_assert!(
                !e.message().is_empty(),
                "empty error message for {:?}",
                input
            );
            prop_assert!(e.id() != Some(0));
        }
    }
    Ok(())
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    let byte = prop_oneof![
        any::<u8>(),
        // Bytes that change the structure: JSON punctuation and MessagePack markers.
        prop::sample::select(
            &b"{}[]\":,\\0-e.tn \xc0\xc1\xc2\xcc\xcf\xd3\xd9\xdb\xdc\xdd\xde\xdf\x80\x8f\x90\xa0\xbf\xff"[..]
        ),
    ];
    prop_oneof![
        (at, 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (at, byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (at, byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        at.prop_map(Edit::Remove),
        at.prop_map(Edit::Truncate),
        (at, at).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Flip(i, b) if len > 0 => bytes[i % len] ^= b,
            Edit::Set(i, b) if len > 0 => bytes[i % len] = b,
            Edit::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Edit::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Edit::Truncate(i) => bytes.truncate(i % (len + 1)),
            Edit::Duplicate(i, n) if len > 0 => {
                let start = i % len;
                let end = start + 1 + n % (len - start).min(16);
                let piece = bytes[start..end.min(len)].to_vec();
                bytes.splice(start..start, piece);
            }
            _ => {}
        }
    }
    bytes
}

/// Keys the decoders know, and a few they don't.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "t",
            "id",
            "m",
            "d",
            "e",
            "ch",
            "o",
            "n",
            "since",
            "filter",
            "credit",
            "token",
            "data",
            "conn",
            "node",
            "heartbeat",
            "user",
            "x",
        ][..],
    )
    .prop_map(str::to_owned)
}

/// Values that are often the right type for a known key, and often not.
fn field_value() -> impl Strategy<Value = Value> {
    let tag = prop::sample::select(
        &[
            "hello", "welcome", "reject", "req", "res", "err", "ntf", "sub", "item", "end",
            "cancel", "credit", "join", "leave", "pub", "msg", "pjoin", "pleave", "ping", "pong",
            "nope",
        ][..],
    );
    prop_oneof![
        tag.prop_map(Value::from),
        (0..4u64).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2..0i64).prop_map(Value::from),
        json!({"epoch": "e1", "offset": 3}).boxed_just(),
        json!({"code": "X", "message": "m", "data": [1]}).boxed_just(),
        json!({"code": "X"}).boxed_just(),
        json!({"code": "X", "message": null, "data": null}).boxed_just(),
        json!({"epoch": "e1", "offset": -1}).boxed_just(),
        json_value(),
    ]
}

trait BoxedJust {
    fn boxed_just(self) -> BoxedStrategy<Value>;
}

impl BoxedJust for Value {
    fn boxed_just(self) -> BoxedStrategy<Value> {
        Just(self).boxed()
    }
}

/// Objects made of plausible keys and values, most of them type confusions.
fn plausible_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(key(), field_value(), 0..7)
        .prop_map(|map| Value::Object(map.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for codec in CODECS {
            check(codec, Bytes::from(bytes.clone()))?;
        }
    }

    /// Text made of JSON's punctuation and the first letters of the keys reaches deeper.
    #[test]
    fn json_like_text_never_panics(text in "[{}\\[\\]\":,\\\\ tidmechosnfrqulp0-9.\\-]{0,64}") {
        check(Codec::Json, Bytes::from(text.clone()))?;
        let mut braced = String::from("{");
        braced.push_str(&text);
        check(Codec::Json, Bytes::from(braced))?;
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in any_frame(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        for codec in CODECS {
            let encoded = codec.encode(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mutated = apply(encoded.to_vec(), &edits);
            check(codec, Bytes::from(mutated.clone()))?;
            // The same bytes offered to the other codec too.
            check(common::other(codec), Bytes::from(mutated))?;
        }
    }

    #[test]
    fn plausible_objects_never_panic(value in plausible_object()) {
        for codec in CODECS {
            check(codec, encode_value(codec, &value))?;
        }
    }

    /// Whatever one codec accepts from an object, the other accepts as the same frame.
    #[test]
    fn codecs_agree_on_plausible_objects(value in plausible_object()) {
        let json = Codec::Json.decode(encode_value(Codec::Json, &value));
        let packed = Codec::MsgPack.decode(encode_value(Codec::MsgPack, &value));
        match (json, packed) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.id(), b.id(), "{} / {}", a, b),
            (a, b) => prop_assert!(false, "codecs disagree on {}: {:?} / {:?}", value, a, b),
        }
    }
}

// ---- Malformed frames the server answers with BAD_FRAME ----

fn json_err(input: &str) -> DecodeError {
    match Codec::Json.decode(Bytes::copy_from_slice(input.as_bytes())) {
        Ok(frame) => panic!("{input} decoded as {frame:?}"),
        Err(e) => {
            assert!(!e.message().is_empty());
            e
        }
    }
}

fn msgpack_err(input: &[u8]) -> DecodeError {
    match Codec::MsgPack.decode(Bytes::copy_from_slice(input)) {
        Ok(frame) => panic!("{input:02x?} decoded as {frame:?}"),
        Err(e) => {
            assert!(!e.message().is_empty());
            e
        }
    }
}

/// The error for `value` in both codecs, checking they agree on the id.
fn both_err(value: &Value) -> DecodeError {
    let a = json_err(&value.to_string());
    let b = msgpack_err(&to_msgpack(value));
    assert_eq!(a.id(), b.id(), "{value}: {a} / {b}");
    a
}

/// A MessagePack map written by hand, so that keys can repeat.
fn msgpack_map(pairs: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, pairs.len() as u32).unwrap();
    for (key, value) in pairs {
        rmp::encode::write_str(&mut out, key).unwrap();
        out.extend(to_msgpack(value));
    }
    out
}

#[test]
fn not_json() {
    for input in [
        "",
        " ",
        "hello",
        "{",
        "{\"t\":",
        "{\"t\":\"req\",}",
        "\u{feff}{}",
        "{'t':1}",
    ] {
        let e = json_err(input);
        assert_eq!(e.id(), None, "{input}");
    }
    assert_eq!(json_err("nope").message(), "not valid JSON");
}

#[test]
fn not_msgpack() {
    for input in [
        &[][..],
        &[0xc1],
        &[0x81],
        &[0x81, 0xa1],
        &[0xde, 0x00],
        &[0xc1, 0x80],
    ] {
        let e = msgpack_err(input);
        assert_eq!(e.id(), None, "{input:02x?}");
    }
    assert_eq!(msgpack_err(&[0xc1]).message(), "not valid MessagePack");
}

#[test]
fn not_an_object() {
    for value in [
        json!([1, 2]),
        json!("req"),
        json!(42),
        json!(null),
        json!(true),
        json!([{"t": "ping"}]),
    ] {
        assert_eq!(
            json_err(&value.to_string()).message(),
            "a frame must be a JSON object"
        );
        assert_eq!(
            msgpack_err(&to_msgpack(&value)).message(),
            "a frame must be a MessagePack map"
        );
    }
    // Whitespace before the object is fine.
    assert_eq!(
        Codec::Json.decode(Bytes::from_static(b" \n{\"t\":\"ping\"}")),
        Ok(Frame::Ping)
    );
}

#[test]
fn missing_t() {
    assert_eq!(both_err(&json!({})).message(), "missing `t`");
    let e = both_err(&json!({"id": 4, "m": "a.b"}));
    assert_eq!(e.message(), "missing `t`");
    assert_eq!(e.id(), Some(4));
    assert_eq!(both_err(&json!({"t": null, "id": 4})).id(), Some(4));
}

#[test]
fn t_of_the_wrong_type() {
    let e = both_err(&json!({"t": 1, "id": 4}));
    assert_eq!(e.id(), Some(4));
}

#[test]
fn unknown_t() {
    let e = both_err(&json!({"t": "nope", "id": 3}));
    assert_eq!(e.message(), "unknown frame type `nope`");
    assert_eq!(e.id(), Some(3));
    // A long tag is shortened in the message.
    let e = both_err(&json!({"t": "x".repeat(10_000)}));
    assert!(e.message().len() < 100, "{}", e.message());
    assert_eq!(e.id(), None);
}

#[test]
fn req_without_id() {
    let e = both_err(&json!({"t": "req", "m": "a.b", "d": 1}));
    assert_eq!(e.message(), "`req` frame needs `id`");
    assert_eq!(e.id(), None);
    assert_eq!(
        both_err(&json!({"t": "req", "id": null, "m": "a.b"})).id(),
        None
    );
}

#[test]
fn req_without_m() {
    let e = both_err(&json!({"t": "req", "id": 7}));
    assert_eq!(e.message(), "`req` frame needs `m`");
    assert_eq!(e.id(), Some(7));
}

#[test]
fn m_of_the_wrong_type_keeps_the_id() {
    let e = both_err(&json!({"t": "req", "id": 7, "m": 5}));
    assert_eq!(e.id(), Some(7));
    // Also when the id comes after the bad field.
    let e = both_err(&json!({"m": 5, "t": "req", "id": 7}));
    assert_eq!(e.id(), Some(7));
    let e = json_err(r#"{"m":5,"t":"req","id":7}"#);
    assert_eq!(e.id(), Some(7));
    let e = msgpack_err(&msgpack_map(&[
        ("m", json!(5)),
        ("t", json!("req")),
        ("id", json!(7)),
    ]));
    assert_eq!(e.id(), Some(7));
}

#[test]
fn id_of_the_wrong_type() {
    for id in [
        json!("7"),
        json!(-7),
        json!(7.5),
        json!([7]),
        json!({"id": 7}),
        json!(true),
    ] {
        let e = both_err(&json!({"t": "req", "id": id, "m": "a.b"}));
        assert_eq!(e.id(), None, "{id}");
    }
    // Beyond u64.
    let e = json_err(r#"{"t":"req","id":18446744073709551616,"m":"a.b"}"#);
    assert_eq!(e.id(), None);
}

#[test]
fn id_zero_is_rejected() {
    for t in ["req", "res", "sub", "item", "end", "cancel", "err"] {
        let e = both_err(
            &json!({"t": t, "id": 0, "m": "a.b", "n": 1, "e": {"code": "X", "message": ""}}),
        );
        assert_eq!(e.message(), "`id` must be a positive integer", "{t}");
        assert_eq!(e.id(), None);
    }
}

#[test]
fn duplicate_keys_are_rejected() {
    let e = json_err(r#"{"t":"req","id":1,"id":2,"m":"a.b"}"#);
    assert!(e.message().contains("duplicate field `id`"), "{e}");
    let e = json_err(r#"{"t":"req","t":"res","id":1,"m":"a.b"}"#);
    assert!(e.message().contains("duplicate field `t`"), "{e}");
    let e = msgpack_err(&msgpack_map(&[
        ("t", json!("req")),
        ("id", json!(1)),
        ("id", json!(2)),
        ("m", json!("a.b")),
    ]));
    assert_eq!(e.message(), "duplicate field `id`");
    let e = msgpack_err(&msgpack_map(&[
        ("t", json!("req")),
        ("t", json!("res")),
        ("id", json!(1)),
    ]));
    assert_eq!(e.message(), "duplicate field `t`");
    // Inside `e` and `since` too.
    let e = json_err(r#"{"t":"err","id":3,"e":{"code":"A","code":"B"}}"#);
    assert!(e.message().contains("duplicate field `code`"), "{e}");
    assert_eq!(e.id(), Some(3));
    let mut e_map = Vec::new();
    rmp::encode::write_map_len(&mut e_map, 2).unwrap();
    for code in ["A", "B"] {
        rmp::encode::write_str(&mut e_map, "code").unwrap();
        rmp::encode::write_str(&mut e_map, code).unwrap();
    }
    let mut bytes = msgpack_map(&[("t", json!("err")), ("id", json!(3))]);
    bytes[0] = 0x83;
    rmp::encode::write_str(&mut bytes, "e").unwrap();
    bytes.extend(e_map);
    let e = msgpack_err(&bytes);
    assert_eq!(e.message(), "duplicate field `code`");
    assert_eq!(e.id(), Some(3));
    json_err(r#"{"t":"join","id":3,"ch":"c","since":{"epoch":"a","offset":1,"offset":2}}"#);
    let mut since = Vec::new();
    rmp::encode::write_map_len(&mut since, 3).unwrap();
    rmp::encode::write_str(&mut since, "epoch").unwrap();
    rmp::encode::write_str(&mut since, "a").unwrap();
    for offset in [1, 2] {
        rmp::encode::write_str(&mut since, "offset").unwrap();
        rmp::encode::write_uint(&mut since, offset).unwrap();
    }
    let mut bytes = msgpack_map(&[("t", json!("join")), ("id", json!(3)), ("ch", json!("c"))]);
    bytes[0] = 0x84;
    rmp::encode::write_str(&mut bytes, "since").unwrap();
    bytes.extend(since);
    assert_eq!(msgpack_err(&bytes).message(), "duplicate field `offset`");
    // Unknown keys may repeat: they are ignored.
    let ok = msgpack_map(&[("x", json!(1)), ("x", json!(2)), ("t", json!("ping"))]);
    assert_eq!(Codec::MsgPack.decode(ok.into()), Ok(Frame::Ping));
    assert_eq!(
        Codec::Json.decode(Bytes::from_static(br#"{"x":1,"x":2,"t":"ping"}"#)),
        Ok(Frame::Ping)
    );
}

#[test]
fn missing_fields_of_every_frame_type() {
    let cases = [
        (json!({"t": "res"}), "`res` frame needs `id`"),
        (json!({"t": "err", "id": 1}), "`err` frame needs `e`"),
        (json!({"t": "err", "e": {"message": "m"}}), ""),
        (json!({"t": "ntf"}), "`ntf` frame needs `m`"),
        (json!({"t": "sub", "id": 1}), "`sub` frame needs `m`"),
        (json!({"t": "item"}), "`item` frame needs `id`"),
        (json!({"t": "end"}), "`end` frame needs `id`"),
        (json!({"t": "cancel"}), "`cancel` frame needs `id`"),
        (json!({"t": "credit", "id": 1}), "`credit` frame needs `n`"),
        (json!({"t": "join", "id": 1}), "`join` frame needs `ch`"),
        (
            json!({"t": "join", "id": 1, "ch": "c", "since": {"epoch": "e"}}),
            "",
        ),
        (json!({"t": "leave", "id": 1}), "`leave` frame needs `ch`"),
        (json!({"t": "pub", "id": 1}), "`pub` frame needs `ch`"),
        (json!({"t": "msg", "ch": "c"}), "`msg` frame needs `o`"),
        (json!({"t": "pjoin"}), "`pjoin` frame needs `ch`"),
        (
            json!({"t": "welcome", "conn": "c", "node": "n"}),
            "`welcome` frame needs `heartbeat`",
        ),
        (json!({"t": "reject"}), "`reject` frame needs `e`"),
    ];
    for (value, message) in cases {
        let e = both_err(&value);
        if !message.is_empty() {
            assert_eq!(e.message(), message, "{value}");
        }
    }
}

#[test]
fn error_message_may_be_null_or_missing() {
    for e in [json!({"code": "X", "message": null}), json!({"code": "X"})] {
        let value = json!({"t": "err", "id": 1, "e": e});
        for codec in CODECS {
            let frame = codec.decode(encode_value(codec, &value)).unwrap();
            let Frame::Err { error, .. } = frame else {
                panic!("not an err");
            };
            assert_eq!((error.code.as_str(), error.message.as_str()), ("X", ""));
        }
    }
}

#[test]
fn counts_beyond_u32_are_rejected() {
    let e = both_err(&json!({"t": "credit", "id": 5, "n": u64::from(u32::MAX) + 1}));
    assert_eq!(e.message(), "`n` is too large");
    assert_eq!(e.id(), Some(5));
    let e = both_err(&json!({"t": "sub", "id": 5, "m": "a", "credit": u64::MAX}));
    assert_eq!(e.message(), "`credit` is too large");
}

#[test]
fn negative_msgpack_integers_are_not_ids() {
    // id as int8 -1 (0xd0 0xff) and as int64 7 (0xd3 ...): the first is refused, the second read.
    let mut neg = msgpack_map(&[("t", json!("end"))]);
    neg[0] = 0x82;
    neg.extend([0xa2, b'i', b'd', 0xd0, 0xff]);
    assert_eq!(msgpack_err(&neg).id(), None);
    let mut pos = msgpack_map(&[("t", json!("end"))]);
    pos[0] = 0x82;
    pos.extend([0xa2, b'i', b'd', 0xd3, 0, 0, 0, 0, 0, 0, 0, 7]);
    assert_eq!(Codec::MsgPack.decode(pos.into()), Ok(Frame::End { id: 7 }));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = to_msgpack(&json!({"t": "ping"}));
    bytes.push(0xc0);
    assert_eq!(
        msgpack_err(&bytes).message(),
        "trailing bytes after the frame"
    );
    json_err(r#"{"t":"ping"} {}"#);
    json_err(r#"{"t":"ping"}x"#);
}

#[test]
fn truncated_msgpack() {
    let frame = Frame::Join {
        id: 300,
        channel: "room:ü".into(),
        since: Some(plexus_protocol::Position {
            epoch: "e1".into(),
            offset: 1 << 40,
        }),
        filter: Some(Payload::encode(Codec::MsgPack, &json!({"k": [1, 2.5, "x"]})).unwrap()),
    };
    let bytes = Codec::MsgPack.encode(&frame).unwrap();
    assert_eq!(Codec::MsgPack.decode(bytes.clone()), Ok(frame));
    for len in 0..bytes.len() {
        let e = msgpack_err(&bytes[..len]);
        assert!(e.id().is_none() || e.id() == Some(300), "{len}: {e:?}");
    }
    // A length prefix far beyond the input.
    msgpack_err(&[0x81, 0xa1, b't', 0xdb, 0xff, 0xff, 0xff, 0xff]);
    msgpack_err(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b't']);
    msgpack_err(&[0x81, 0xa1, b'd', 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]);
}

#[test]
fn invalid_utf8_in_msgpack_strings() {
    let mut bytes = to_msgpack(&json!({"t": "ntf", "m": "ab"}));
    let at = bytes.len() - 2;
    bytes[at] = 0xff;
    assert_eq!(msgpack_err(&bytes).message(), "string is not UTF-8");
}

/// `depth` nested one-element arrays around `null`.
fn nested_msgpack(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91; depth];
    v.push(0xc0);
    v
}

fn frame_with_d(d: &[u8]) -> Vec<u8> {
    let mut bytes = msgpack_map(&[("t", json!("res")), ("id", json!(2))]);
    bytes[0] = 0x83;
    bytes.extend([0xa1, b'd']);
    bytes.extend(d);
    bytes
}

#[test]
fn deeply_nested_msgpack_is_refused() {
    // 128 levels of arrays in `d` are accepted and can be decoded.
    let ok = frame_with_d(&nested_msgpack(127));
    let Ok(Frame::Res { data, .. }) = Codec::MsgPack.decode(ok.into()) else {
        panic!("127 levels refused");
    };
    let value: Value = data.decode().unwrap();
    assert!(value.is_array());
    // Deeper is refused, without overflowing the stack, wherever the value is.
    for depth in [129, 200, 100_000, 5_000_000] {
        let nested = nested_msgpack(depth);
        let e = msgpack_err(&frame_with_d(&nested));
        assert_eq!(e.message(), "value nested too deeply");
        assert_eq!(e.id(), Some(2));
        let mut unknown = vec![0x81, 0xa1, b'x'];
        unknown.extend(&nested);
        assert_eq!(msgpack_err(&unknown).message(), "value nested too deeply");
        let mut maps = vec![0x81, 0xa1, b'x'];
        maps.extend(std::iter::repeat_n([0x81, 0xa1, b'k'], depth).flatten());
        maps.push(0xc0);
        assert_eq!(msgpack_err(&maps).message(), "value nested too deeply");
        assert!(Payload::from_raw_checked(Codec::MsgPack, nested.into()).is_err());
    }
}

#[test]
fn deeply_nested_json_is_refused() {
    let nested = |depth: usize| format!("{}0{}", "[".repeat(depth), "]".repeat(depth));
    // As in MessagePack: 127 levels of arrays in `d` are accepted, decoded and transcoded.
    let ok = format!(r#"{{"t":"res","id":2,"d":{}}}"#, nested(127));
    let frame = Codec::Json.decode(ok.into()).unwrap();
    let Frame::Res { data, .. } = &frame else {
        panic!("not a res");
    };
    assert!(data.decode::<Value>().unwrap().is_array());
    let packed = Codec::MsgPack.encode(&frame).unwrap();
    assert_eq!(Codec::MsgPack.decode(packed).unwrap(), frame);
    // Brackets inside strings do not count.
    let strings = format!(
        r#"{{"t":"res","id":2,"d":["{}\"{}"]}}"#,
        "[".repeat(300),
        "{".repeat(300)
    );
    assert!(Codec::Json.decode(strings.into()).is_ok());
    // Deeper is refused, in `d`, in an unknown field, in `e.data`, without overflowing the stack.
    for depth in [128, 200, 100_000, 5_000_000] {
        let d = nested(depth);
        let e = json_err(&format!(r#"{{"t":"res","id":2,"d":{d}}}"#));
        assert_eq!(e.message(), "value nested too deeply");
        assert_eq!(e.id(), Some(2));
        let e = json_err(&format!(r#"{{"x":{d},"t":"ping"}}"#));
        assert_eq!(e.message(), "value nested too deeply");
        let e = json_err(&format!(
            r#"{{"t":"err","id":2,"e":{{"code":"X","data":{d}}}}}"#
        ));
        assert_eq!(e.id(), Some(2));
        json_err(&d);
        let e = json_err(&format!(
            r#"{{"t":"res","id":2,"d":{}}}"#,
            "[".repeat(depth)
        ));
        assert!(e.id().is_none() || e.id() == Some(2));
        // A payload on its own is one level higher: its value is at depth 0.
        let checked = Payload::from_raw_checked(Codec::Json, d.into());
        assert_eq!(checked.is_ok(), depth == 128, "{depth}");
    }
}

/// Both codecs put the limit at the same depth, for `d` and for values inside `e`.
#[test]
fn codecs_agree_on_the_depth_limit() {
    fn wrap(depth: usize) -> Value {
        (0..depth).fold(json!(0), |v, _| json!([v]))
    }
    for depth in [125, 126, 127, 128, 129] {
        for value in [
            json!({"t": "res", "id": 2, "d": wrap(depth)}),
            json!({"t": "err", "id": 2, "e": {"code": "X", "data": wrap(depth)}}),
            json!({"t": "join", "id": 2, "ch": "c", "since": {"epoch": "e", "offset": 1, "x": wrap(depth)}}),
            json!({"t": "ping", "x": wrap(depth)}),
        ] {
            let text = serde_json::to_vec(&value).unwrap();
            let json = Codec::Json.decode(text.into());
            let packed = Codec::MsgPack.decode(to_msgpack(&value).into());
            assert_eq!(
                json.is_ok(),
                packed.is_ok(),
                "{depth}: {json:?} / {packed:?}"
            );
        }
    }
}

// ---- Payload::decode names the bad field ----

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Params {
    user: User,
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct User {
    name: String,
    age: u32,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Tag {
    label: String,
}

#[test]
fn payload_decode_reports_the_serde_path() {
    let cases = [
        (
            json!({"user": {"name": "ada", "age": "old"}, "tags": []}),
            "user.age",
        ),
        (
            json!({"user": {"name": "ada", "age": -1}, "tags": []}),
            "user.age",
        ),
        (
            json!({"user": {"name": 3, "age": 1}, "tags": []}),
            "user.name",
        ),
        (
            json!({"user": {"name": "ada", "age": 1}, "tags": [{"label": "a"}, {"label": 2}]}),
            "tags[1].label",
        ),
        (json!({"user": {"name": "ada"}, "tags": []}), "user"),
        (json!("params"), "."),
    ];
    for (value, path) in &cases {
        for codec in CODECS {
            let payload = Payload::encode(codec, value).unwrap();
            let e = payload.decode::<Params>().unwrap_err();
            assert_eq!(e.path(), *path, "{} {value}: {e}", codec.name());
            assert!(!e.message().is_empty());
        }
    }
    // The same through a decoded frame, whose payload is a slice of the message.
    for codec in CODECS {
        let frame = json!({"t": "req", "id": 1, "m": "user.create", "d": cases[0].0});
        let Ok(Frame::Req { data, .. }) = codec.decode(encode_value(codec, &frame)) else {
            panic!("not a req");
        };
        assert_eq!(data.decode::<Params>().unwrap_err().path(), "user.age");
        let fine = json!({"user": {"name": "ada", "age": 36}, "tags": [{"label": "x"}]});
        let payload = Payload::encode(codec, &fine).unwrap();
        let params: Params = payload.decode().unwrap();
        assert_eq!(params.user.age, 36);
    }
}
