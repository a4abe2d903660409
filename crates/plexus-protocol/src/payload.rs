use std::any::Any;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Codec;
use crate::codec::{json, msgpack};

/// An application value (a frame's `d`), held as the raw bytes of one codec.
///
/// Keeping the raw bytes means a server can echo, forward or fan out a value without parsing
/// it; [`Payload::decode`] parses it into a typed value when a handler needs one. Cloning is
/// cheap (a reference count).
#[derive(Clone)]
pub struct Payload {
    codec: Codec,
    raw: Bytes,
}

/// Why a [`Payload`] could not be decoded into a type or encoded from one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PayloadError {
    path: String,
    message: String,
}

impl PayloadError {
    /// The serde path of the offending field (`"."` for the value itself), e.g. `user.age`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What was wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Payload {
    /// `null` in the given codec.
    pub fn null(codec: Codec) -> Self {
        let raw = match codec {
            Codec::Json => Bytes::from_static(b"null"),
            Codec::MsgPack => Bytes::from_static(&[0xc0]),
        };
        Self { codec, raw }
    }

    /// Wraps bytes that are known to hold exactly one complete value in `codec`.
    ///
    /// Nothing is checked here: a wrong value makes the peer's decoder fail, not this process.
    /// Use [`Payload::from_raw_checked`] for bytes from an untrusted source.
    pub fn from_raw(codec: Codec, raw: Bytes) -> Self {
        Self { codec, raw }
    }

    /// Wraps bytes after checking they hold exactly one well-formed value in `codec`, nested
    /// no deeper than a frame's decoder allows.
    pub fn from_raw_checked(codec: Codec, raw: Bytes) -> Result<Self, PayloadError> {
        let ok = match codec {
            Codec::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&raw).is_ok()
                    && json::nesting_ok(&raw)
            }
            Codec::MsgPack => msgpack::value_len(&raw) == Some(raw.len()),
        };
        if ok {
            Ok(Self { codec, raw })
        } else {
            Err(PayloadError {
                path: ".".into(),
                message: format!("not a single {} value", codec.name()),
            })
        }
    }

    /// Serializes `value` in `codec`.
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Self, PayloadError> {
        let raw = match codec {
            Codec::Json => serde_json::to_vec(value).map_err(|e| PayloadError {
                path: ".".into(),
                message: e.to_string(),
            })?,
            Codec::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| PayloadError {
                path: ".".into(),
                message: e.to_string(),
            })?,
        };
        Ok(Self {
            codec,
            raw: raw.into(),
        })
    }

    /// Serializes `value` in `codec`, or hands it over as it is when it is a [`Payload`]
    /// already in `codec` (transcoded when in the other): for APIs that take either.
    pub fn encode_as<T: Serialize + 'static>(codec: Codec, value: T) -> Result<Self, PayloadError> {
        match (&value as &dyn Any).downcast_ref::<Payload>() {
            Some(payload) if payload.codec == codec => Ok(payload.clone()),
            Some(payload) => payload.to_codec(codec),
            None => Self::encode(codec, &value),
        }
    }

    /// Deserializes the value into `T`. On failure the error names the serde path of the
    /// field that did not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        let mut track = serde_path_to_error::Track::new();
        let result = match self.codec {
            Codec::Json => {
                let mut de = serde_json::Deserializer::from_slice(&self.raw);
                T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
                    .map_err(|e| e.to_string())
            }
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.raw[..]);
                T::deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
                    .map_err(|e| e.to_string())
            }
        };
        result.map_err(|message| PayloadError {
            path: track.path().to_string(),
            message,
        })
    }

    /// Deserializes the value into `T`, or hands the payload itself over when `T` is
    /// [`Payload`] (no parse): for APIs that return either a typed value or the raw one.
    pub fn decode_as<T: DeserializeOwned + 'static>(self) -> Result<T, PayloadError> {
        let mut slot = Some(self);
        if let Some(raw) = (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>()
            && let Some(value) = raw.take()
        {
            return Ok(value);
        }
        match slot {
            Some(payload) => payload.decode(),
            None => unreachable!("taken only when `T` is `Payload`"),
        }
    }

    /// The codec the raw bytes are in.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The raw encoded value.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The bytes of a MessagePack `bin` value that is the whole payload (no copy); `None`
    /// for anything else.
    pub fn as_bin(&self) -> Option<Bytes> {
        if self.codec != Codec::MsgPack {
            return None;
        }
        let raw = &self.raw;
        let (header, len): (usize, usize) = match *raw.first()? {
            0xc4 => (2, usize::from(*raw.get(1)?)),
            0xc5 => (
                3,
                usize::from(u16::from_be_bytes(raw.get(1..3)?.try_into().ok()?)),
            ),
            0xc6 => (
                5,
                usize::try_from(u32::from_be_bytes(raw.get(1..5)?.try_into().ok()?)).ok()?,
            ),
            _ => return None,
        };
        (raw.len() == header.checked_add(len)?).then(|| raw.slice(header..))
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        match self.codec {
            Codec::Json => self.raw.trim_ascii() == b"null",
            Codec::MsgPack => self.raw[..] == [0xc0],
        }
    }

    /// The same value in `codec`: free when it is already in that codec, otherwise transcoded.
    pub fn to_codec(&self, codec: Codec) -> Result<Payload, PayloadError> {
        if self.codec == codec {
            return Ok(self.clone());
        }
        // Bytes that are the whole value read best as base64 text; `bin` inside other values
        // becomes an array of byte values (serde_json's rendering of bytes).
        if let Some(bytes) = self.as_bin() {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            return Ok(Payload {
                codec: Codec::Json,
                raw: serde_json::to_vec(&text).unwrap_or_default().into(),
            });
        }
        let mut out = Vec::with_capacity(self.raw.len() + 8);
        let result = match (self.codec, codec) {
            (Codec::Json, Codec::MsgPack) => {
                let mut de = serde_json::Deserializer::from_slice(&self.raw);
                let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
                serde_transcode::transcode(&mut de, &mut ser).map_err(|e| e.to_string())
            }
            (Codec::MsgPack, Codec::Json) => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.raw[..]);
                let mut ser = serde_json::Serializer::new(&mut out);
                serde_transcode::transcode(&mut de, &mut ser).map_err(|e| e.to_string())
            }
            _ => unreachable!("same codec handled above"),
        };
        result.map_err(|message| PayloadError {
            path: ".".into(),
            message,
        })?;
        Ok(Payload {
            codec,
            raw: out.into(),
        })
    }

    /// The value as a `serde_json::Value` (transcoding MessagePack). Convenient in tests and
    /// tools; handlers should prefer [`Payload::decode`] into their own types.
    pub fn to_json_value(&self) -> Result<serde_json::Value, PayloadError> {
        self.decode()
    }
}

impl PartialEq for Payload {
    /// Two payloads are equal when they hold the same value, whatever their codecs.
    fn eq(&self, other: &Self) -> bool {
        if self.codec == other.codec && self.raw == other.raw {
            return true;
        }
        match (self.to_json_value(), other.to_json_value()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.codec {
            Codec::Json => write!(f, "{}", String::from_utf8_lossy(&self.raw)),
            Codec::MsgPack => match self.to_codec(Codec::Json) {
                Ok(json) => write!(f, "msgpack:{}", String::from_utf8_lossy(&json.raw)),
                Err(_) => write!(f, "msgpack:{:02x?}", &self.raw[..]),
            },
        }
    }
}

/// Serializes the value itself (streamed from the raw bytes, whatever the target format), so
/// a `Payload` can sit inside any serializable type.
impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.codec {
            Codec::Json => {
                let mut de = serde_json::Deserializer::from_slice(&self.raw);
                serde_transcode::Transcoder::new(&mut de).serialize(serializer)
            }
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.raw[..]);
                serde_transcode::Transcoder::new(&mut de).serialize(serializer)
            }
        }
    }
}

/// Captures any value as a JSON payload, so a `Payload` field can take "anything" in a
/// typed struct.
impl<'de> serde::Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        serde_transcode::transcode(deserializer, &mut serde_json::Serializer::new(&mut out))
            .map_err(serde::de::Error::custom)?;
        Ok(Payload {
            codec: Codec::Json,
            raw: out.into(),
        })
    }
}

/// What a call or publication can carry: any `&T` where `T: Serialize`, encoded in the
/// connection's codec, or a [`Payload`] as it is (no parse; transcoded only when its codec is
/// not the connection's). This is how one `request` takes typed and raw params alike.
pub trait IntoPayload {
    /// The value in `codec`.
    fn into_payload(self, codec: Codec) -> Result<Payload, PayloadError>;
}

impl<T: Serialize + ?Sized> IntoPayload for &T {
    fn into_payload(self, codec: Codec) -> Result<Payload, PayloadError> {
        Payload::encode(codec, self)
    }
}

impl IntoPayload for Payload {
    fn into_payload(self, codec: Codec) -> Result<Payload, PayloadError> {
        if self.codec == codec {
            Ok(self)
        } else {
            self.to_codec(codec)
        }
    }
}
