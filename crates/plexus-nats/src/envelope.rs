//! What a message carries in its headers, and how it is read back.
//!
//! A publication is kept and republished with its payload untouched (the bytes in their own
//! codec: a node decodes nothing it only forwards) and headers `Plexus-Epoch`,
//! `Plexus-Offset`, `Plexus-Codec` (`j` or `m`), `Plexus-Expires` (Unix ms, 0: never) and
//! `Plexus-Keep` (the channel's history size when it was published). A presence change on a
//! channel's live subject has `Plexus-Presence` (`j` joined, `l` left) and the member as
//! JSON. A presence entry (or node lease) has `Plexus-Deadline` (Unix ms), or `Plexus-Gone`
//! once removed. Node messages are as `NodeMessage::to_wire` writes them.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use bytes::Bytes;
use plexus_protocol::{Codec, Payload};

pub(crate) const EPOCH: &str = "Plexus-Epoch";
pub(crate) const OFFSET: &str = "Plexus-Offset";
pub(crate) const CODEC: &str = "Plexus-Codec";
pub(crate) const EXPIRES: &str = "Plexus-Expires";
pub(crate) const KEEP: &str = "Plexus-Keep";
pub(crate) const PRESENCE: &str = "Plexus-Presence";
pub(crate) const DEADLINE: &str = "Plexus-Deadline";
pub(crate) const GONE: &str = "Plexus-Gone";

/// Now, as Unix milliseconds. Deadlines compare the nodes' clocks: keep them in sync (NTP).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    header(headers, name)?.parse().ok()
}

/// A kept publication's headers, read back.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
    pub(crate) codec: Codec,
    pub(crate) expires: u64,
    pub(crate) keep: u64,
}

impl Stored {
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(EPOCH, self.epoch.as_str());
        headers.insert(OFFSET, HeaderValue::from(self.offset));
        headers.insert(CODEC, codec_tag(self.codec));
        headers.insert(EXPIRES, HeaderValue::from(self.expires));
        headers.insert(KEEP, HeaderValue::from(self.keep));
        headers
    }

    pub(crate) fn read(headers: &HeaderMap) -> Option<Self> {
        Some(Self {
            epoch: header(headers, EPOCH)?.to_owned(),
            offset: number(headers, OFFSET)?,
            codec: codec_of(header(headers, CODEC)?)?,
            expires: number(headers, EXPIRES).unwrap_or(0),
            keep: number(headers, KEEP).unwrap_or(0),
        })
    }

    /// Whether it is still kept at `now`: within its TTL.
    pub(crate) fn live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }

    pub(crate) fn payload(&self, data: Bytes) -> Payload {
        Payload::from_raw(self.codec, data)
    }
}

fn codec_tag(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "j",
        Codec::MsgPack => "m",
    }
}

fn codec_of(tag: &str) -> Option<Codec> {
    match tag {
        "j" => Some(Codec::Json),
        "m" => Some(Codec::MsgPack),
        _ => None,
    }
}

/// A presence entry's (or lease's) state, from its headers.
pub(crate) enum Entry {
    /// Present until this deadline (Unix ms).
    Live(u64),
    /// Removed.
    Gone,
}

impl Entry {
    pub(crate) fn read(headers: Option<&HeaderMap>) -> Self {
        match headers {
            Some(h) if h.get(GONE).is_none() => Entry::Live(number(h, DEADLINE).unwrap_or(0)),
            _ => Entry::Gone,
        }
    }
}

/// Headers of a live presence entry or lease.
pub(crate) fn live_entry(deadline: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(DEADLINE, HeaderValue::from(deadline));
    headers
}

/// Headers of a removed one.
pub(crate) fn gone_entry() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(GONE, "1");
    headers
}

/// Headers of a presence change on a live subject.
pub(crate) fn presence_change(joined: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(PRESENCE, if joined { "j" } else { "l" });
    headers
}

/// Whether a live-subject message is a presence change, and which.
pub(crate) fn read_presence_change(headers: &HeaderMap) -> Option<bool> {
    match header(headers, PRESENCE)? {
        "j" => Some(true),
        "l" => Some(false),
        _ => None,
    }
}
