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
}
