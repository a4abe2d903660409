//! Proptest strategies shared by the codec tests: arbitrary values, payloads and frames.

#![allow(dead_code)]

use plexus_protocol::{Codec, ErrorBody, ErrorCode, Frame, Payload, Position, PresenceEvent};
use proptest::prelude::*;
use serde_json::Value;

/// Both codecs.
pub(crate) const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// The other codec.
pub(crate) fn other(codec: Codec) -> Codec {
    match codec {
        Codec::Json => Codec::MsgPack,
        Codec::MsgPack => Codec::Json,
    }
}

/// Strings that stress escaping: arbitrary unicode, quotes, backslashes, control characters.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\"\\\\/a-z\u{0}-\u{1f}\u{7f}é€\u{2028}\u{fffd}😀]{0,16}",
        Just(String::new()),
    ]
}

/// Finite `f64`s (JSON has no NaN or infinity).
fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// Arbitrary JSON values, at most four levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A payload holding an arbitrary value, encoded in `codec`.
pub(crate) fn payload(codec: Codec) -> impl Strategy<Value = Payload> {
    json_value().prop_map(move |v| Payload::encode(codec, &v).expect("encode payload"))
}

/// An optional payload. On the wire an optional value that is `null` reads back as absent,
/// so `Some` never holds `null` here.
pub(crate) fn opt_payload(codec: Codec) -> impl Strategy<Value = Option<Payload>> {
    prop::option::of(
        json_value()
            .prop_filter("null is absent", |v| !v.is_null())
            .prop_map(move |v| Payload::encode(codec, &v).expect("encode payload")),
    )
}

/// Call ids: positive.
pub(crate) fn id() -> impl Strategy<Value = u64> {
    prop_oneof![1..=16u64, 1..=u64::MAX, Just(u64::MAX)]
}

/// Error bodies with arbitrary codes (built-in or not) and messages.
pub(crate) fn error_body(codec: Codec) -> impl Strategy<Value = ErrorBody> {
    let code = prop_oneof![
        Just(ErrorCode::BAD_FRAME),
        Just(ErrorCode::VALIDATION_ERROR),
        Just(ErrorCode::INTERNAL),
        text().prop_map(ErrorCode::new),
    ];
    (code, text(), opt_payload(codec)).prop_map(|(code, message, data)| ErrorBody {
        code,
        message,
        data,
    })
}

/// Every frame type, with payloads encoded in `codec`.
pub(crate) fn frame(codec: Codec) -> impl Strategy<Value = Frame> {
    let p = move || payload(codec);
    let position = (text(), any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset });
    let event = prop_oneof![Just(PresenceEvent::Join), Just(PresenceEvent::Leave)];
    prop_oneof![
        (prop::option::of(text()), opt_payload(codec))
            .prop_map(|(token, data)| Frame::Hello { token, data }),
        (text(), text(), any::<u64>(), prop::option::of(text())).prop_map(
            |(conn, node, heartbeat, user)| Frame::Welcome {
                conn,
                node,
                heartbeat,
                user,
            }
        ),
        error_body(codec).prop_map(|error| Frame::Reject { error }),
        (id(), text(), p(), prop::option::of(text())).prop_map(|(id, method, data, node)| {
            Frame::Req {
                id,
                method,
                data,
                node,
            }
        }),
        (id(), p()).prop_map(|(id, data)| Frame::Res { id, data }),
        (prop::option::of(id()), error_body(codec))
            .prop_map(|(id, error)| Frame::Err { id, error }),
        (text(), p(), prop::option::of(text())).prop_map(|(method, data, node)| Frame::Ntf {
            method,
            data,
            node,
        }),
        (
            id(),
            text(),
            p(),
            prop::option::of(any::<u32>()),
            prop::option::of(text())
        )
            .prop_map(|(id, method, data, credit, node)| Frame::Sub {
                id,
                method,
                data,
                credit,
                node,
            }),
        (id(), p()).prop_map(|(id, data)| Frame::Item { id, data }),
        id().prop_map(|id| Frame::End { id }),
        id().prop_map(|id| Frame::Cancel { id }),
        (id(), any::<u32>()).prop_map(|(id, n)| Frame::Credit { id, n }),
        (id(), text(), prop::option::of(position), opt_payload(codec)).prop_map(
            |(id, channel, since, filter)| Frame::Join {
                id,
                channel,
                since,
                filter,
            }
        ),
        (id(), text()).prop_map(|(id, channel)| Frame::Leave { id, channel }),
        (id(), text(), p()).prop_map(|(id, channel, data)| Frame::Pub { id, channel, data }),
        (text(), any::<u64>(), p()).prop_map(|(channel, offset, data)| Frame::Msg {
            channel,
            offset,
            data,
        }),
        (event, text(), p()).prop_map(|(event, channel, data)| Frame::Presence {
            event,
            channel,
            data,
        }),
        (text(), p()).prop_map(|(channel, data)| Frame::Joined { channel, data }),
        (text(), prop::option::of(error_body(codec)))
            .prop_map(|(channel, error)| Frame::Left { channel, error }),
        Just(Frame::Ping),
        Just(Frame::Pong),
    ]
}

/// Frames in either codec's payloads.
pub(crate) fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![frame(Codec::Json), frame(Codec::MsgPack)]
}

/// Encodes a JSON value as a MessagePack value (maps with string keys).
pub(crate) fn to_msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("msgpack encode")
}

/// `value` encoded in `codec`, as one WebSocket message would carry it.
pub(crate) fn encode_value(codec: Codec, value: &Value) -> bytes::Bytes {
    match codec {
        Codec::Json => serde_json::to_vec(value).expect("json encode").into(),
        Codec::MsgPack => to_msgpack(value).into(),
    }
}
