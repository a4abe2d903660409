//! How cluster engines carry a [`NodeMessage`] between nodes: the sending engine's instance
//! id (16 bytes, so that a node skips its own messages on a topic every node reads), then
//! the message as JSON. One format for every engine, so that none writes its own.

use uuid::Uuid;

use crate::{EngineError, EngineErrorKind, NodeMessage};

impl NodeMessage {
    /// The message as sent by engine instance `sender`.
    pub fn to_wire(&self, sender: Uuid) -> Result<Vec<u8>, EngineError> {
        let mut out = sender.as_bytes().to_vec();
        serde_json::to_writer(&mut out, self)
            .map_err(|e| EngineError::new(EngineErrorKind::Invalid, e.to_string()))?;
        Ok(out)
    }

    /// Reads what [`NodeMessage::to_wire`] wrote: the sender and the message; `None` for
    /// anything else.
    pub fn from_wire(bytes: &[u8]) -> Option<(Uuid, NodeMessage)> {
        let sender = Uuid::from_slice(bytes.get(..16)?).ok()?;
        let message = serde_json::from_slice(&bytes[16..]).ok()?;
        Some((sender, message))
    }
}

/// Bytes as base64 text (standard alphabet, padded): a third larger, where a JSON array
/// of numbers would be up to four times.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_with_its_sender() {
        let sender = Uuid::new_v4();
        let message = NodeMessage::CancelRequest {
            node: "a".into(),
            id: 7,
        };
        let wire = message.to_wire(sender).expect("encodes");
        assert_eq!(NodeMessage::from_wire(&wire), Some((sender, message)));
        assert!(NodeMessage::from_wire(b"short").is_none());
        assert!(NodeMessage::from_wire(&wire[..20]).is_none(), "cut JSON");
    }

    #[test]
    fn a_binary_write_crosses_as_base64() {
        let sender = Uuid::new_v4();
        let message = NodeMessage::Write {
            conn: "c".into(),
            message: crate::RawData::Binary(vec![0, 255, 1, 2]),
        };
        let wire = message.to_wire(sender).expect("encodes");
        assert!(String::from_utf8_lossy(&wire[16..]).contains("\"AP8BAg==\""));
        assert_eq!(NodeMessage::from_wire(&wire), Some((sender, message)));
    }
}
