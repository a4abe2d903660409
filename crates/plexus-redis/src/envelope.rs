//! What travels on the pub/sub topics, and how it is read back.
//!
//! A channel's topic carries publications and presence changes as the scripts write them:
//! `p<epoch>\n<offset>\n<codec><data>`, `j<member JSON>` (joined), `l<member JSON>` (left).
//! The data is the publication's raw bytes in its own codec, so a node decodes nothing it
//! only forwards. The nodes' topic carries node messages as `NodeMessage::to_wire` writes
//! them.

use bytes::Bytes;
use plexus_engine::Member;
use plexus_protocol::{Codec, Payload, PresenceEvent};

/// A message read from a channel's topic.
pub(crate) enum ChannelEvent {
    /// A publication.
    Publication {
        /// Its channel's epoch.
        epoch: String,
        /// Its offset.
        offset: u64,
        /// Its data.
        data: Payload,
    },
    /// A member joined or left.
    Presence(PresenceEvent, Member),
}

/// The one-byte tag of a payload's codec, as stored and published.
pub(crate) fn codec_tag(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "j",
        Codec::MsgPack => "m",
    }
}

fn codec_of(tag: u8) -> Option<Codec> {
    match tag {
        b'j' => Some(Codec::Json),
        b'm' => Some(Codec::MsgPack),
        _ => None,
    }
}

/// A payload kept in the history: its codec tag and bytes.
pub(crate) fn stored_payload(tag: &[u8], data: Vec<u8>) -> Option<Payload> {
    let codec = codec_of(*tag.first()?)?;
    Some(Payload::from_raw(codec, Bytes::from(data)))
}

/// Reads a channel topic's message; `None` for anything this version does not write.
pub(crate) fn channel_event(message: &[u8]) -> Option<ChannelEvent> {
    let (&kind, rest) = message.split_first()?;
    match kind {
        b'p' => {
            let mut parts = rest.splitn(3, |&b| b == b'\n');
            let epoch = std::str::from_utf8(parts.next()?).ok()?.to_owned();
            let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
            let (&tag, data) = parts.next()?.split_first()?;
            let data = Payload::from_raw(codec_of(tag)?, Bytes::copy_from_slice(data));
            Some(ChannelEvent::Publication {
                epoch,
                offset,
                data,
            })
        }
        b'j' | b'l' => {
            let member = serde_json::from_slice(rest).ok()?;
            let event = if kind == b'j' {
                PresenceEvent::Join
            } else {
                PresenceEvent::Leave
            };
            Some(ChannelEvent::Presence(event, member))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_reads_back_with_its_codec_and_bytes() {
        let message = b"pe1\n42\nm\x93\x01\x02\x0a";
        let Some(ChannelEvent::Publication {
            epoch,
            offset,
            data,
        }) = channel_event(message)
        else {
            panic!("a publication");
        };
        assert_eq!((epoch.as_str(), offset), ("e1", 42));
        assert_eq!(data.codec(), Codec::MsgPack);
        assert_eq!(
            data.raw(),
            &b"\x93\x01\x02\x0a"[..],
            "a newline in data stays"
        );
    }

    #[test]
    fn garbage_is_ignored() {
        for bad in [&b""[..], b"x", b"p", b"pe\nnan\nj1", b"pe\n1\nz1", b"j{"] {
            assert!(channel_event(bad).is_none(), "{bad:?}");
        }
    }
}
