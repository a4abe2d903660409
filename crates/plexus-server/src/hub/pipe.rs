//! What a channel's publication becomes on a raw socket piped to the channel: one message,
//! with no protocol around it.

use bytes::Bytes;
use plexus_protocol::{Codec, Payload};

use crate::conn::RawMessage;

/// A publication as a piped raw socket receives it: a string as its text, MessagePack
/// binary as a binary message of its bytes, any other value as its JSON text. `None` for
/// data that cannot be read (never published by plexus itself).
pub(crate) fn piped(data: &Payload) -> Option<RawMessage> {
    let raw = data.raw();
    match data.codec() {
        Codec::MsgPack => {
            if let Some(bytes) = data.as_bin() {
                return Some(RawMessage::binary(bytes));
            }
        }
        // JSON text that is not a string goes out as it is, without a copy.
        Codec::Json if raw.first() != Some(&b'"') => {
            return RawMessage::text_from_bytes(raw.clone());
        }
        Codec::Json => {}
    }
    match data.to_json_value().ok()? {
        serde_json::Value::String(text) => Some(RawMessage::text(text)),
        other => Some(RawMessage::text(other.to_string())),
    }
}

/// What a piped raw socket's message publishes: text as a JSON string, binary as
/// MessagePack bin.
pub(crate) fn publication_of(message: &RawMessage) -> Payload {
    match message.as_text() {
        Some(text) => {
            Payload::encode(Codec::Json, text).unwrap_or_else(|_| Payload::null(Codec::Json))
        }
        None => {
            let bytes = message.bytes();
            let mut raw = Vec::with_capacity(bytes.len() + 5);
            // rmp's writer into a Vec cannot fail.
            let _ = rmp::encode::write_bin(&mut raw, bytes);
            Payload::from_raw(Codec::MsgPack, Bytes::from(raw))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_become_messages_as_documented() {
        let json = |text: &str| Payload::from_raw(Codec::Json, Bytes::from(text.to_owned()));
        assert_eq!(piped(&json(r#""hi""#)), Some(RawMessage::text("hi")));
        assert_eq!(
            piped(&json(r#"{"a":1}"#)),
            Some(RawMessage::text(r#"{"a":1}"#))
        );
        assert_eq!(piped(&json("42")), Some(RawMessage::text("42")));
        let bin = publication_of(&RawMessage::binary(vec![0u8, 1, 255]));
        assert_eq!(piped(&bin), Some(RawMessage::binary(vec![0u8, 1, 255])));
        let big = publication_of(&RawMessage::binary(vec![7u8; 70_000]));
        assert_eq!(piped(&big), Some(RawMessage::binary(vec![7u8; 70_000])));
        let text = publication_of(&RawMessage::text("héllo \"q\""));
        assert_eq!(piped(&text), Some(RawMessage::text("héllo \"q\"")));
        let map = Payload::encode(Codec::MsgPack, &serde_json::json!({"k": [1, 2]})).unwrap();
        assert_eq!(piped(&map), Some(RawMessage::text(r#"{"k":[1,2]}"#)));
    }
}
