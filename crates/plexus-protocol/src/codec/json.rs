//! The JSON codec (`plexus.v1.json`).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Codec, DecodeError, EncodeError, Fields, MAX_DEPTH, RawFrame, Value, error_code};
use crate::{ErrorBody, Payload, Position};

/// `Option<Cow<str>>` that borrows from the input when the string has no escapes. serde's
/// `borrow` attribute only borrows a bare `Cow`; inside an `Option` it would always copy.
fn borrowed_str<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Str;
    impl<'de> serde::de::Visitor<'de> for Str {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    deserializer.deserialize_option(Str)
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    t: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    m: Option<Cow<'a, str>>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
    #[serde(borrow)]
    e: Option<WireError<'a>>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    ch: Option<Cow<'a, str>>,
    o: Option<u64>,
    n: Option<u64>,
    #[serde(borrow)]
    since: Option<WirePosition<'a>>,
    #[serde(borrow)]
    filter: Option<&'a RawValue>,
    credit: Option<u64>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    conn: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    node: Option<Cow<'a, str>>,
    heartbeat: Option<u64>,
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    user: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    /// `null` or missing reads as empty, as in MessagePack.
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WirePosition<'a> {
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    offset: u64,
}

/// Only the id, read leniently: used to tell which call a bad frame belonged to.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

fn payload(input: &Bytes, raw: &RawValue) -> Payload {
    // `RawValue` borrows from `input`, so this is a reference-counted sub-slice, not a copy.
    Payload::from_raw(Codec::Json, input.slice_ref(raw.get().as_bytes()))
}

pub(crate) fn decode(input: &Bytes) -> Result<crate::Frame, DecodeError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        return Err(DecodeError::new(
            if serde_json::from_slice::<serde::de::IgnoredAny>(input).is_ok() {
                "a frame must be a JSON object"
            } else {
                "not valid JSON"
            },
        ));
    }
    let wire: Wire<'_> = match serde_json::from_slice(input) {
        Ok(wire) => wire,
        Err(e) => {
            let id = serde_json::from_slice::<IdOnly<'_>>(input)
                .ok()
                .and_then(|w| w.id)
                .and_then(|raw| raw.get().parse::<u64>().ok());
            return Err(DecodeError::new(format!("invalid frame: {e}")).with_id(id));
        }
    };
    // serde_json keeps raw values and skips unknown fields without its recursion limit.
    if !nesting_ok(input) {
        return Err(DecodeError::new("value nested too deeply").with_id(wire.id));
    }
    let raw = RawFrame {
        t: wire.t,
        id: wire.id,
        m: wire.m,
        d: wire.d.map(|d| payload(input, d)),
        e: wire.e.map(|e| ErrorBody {
            code: error_code(e.code),
            message: e.message.map(Cow::into_owned).unwrap_or_default(),
            data: e.data.map(|d| payload(input, d)),
        }),
        ch: wire.ch,
        o: wire.o,
        n: wire.n,
        since: wire.since.map(|p| Position {
            epoch: p.epoch.into_owned(),
            offset: p.offset,
        }),
        filter: wire.filter.map(|f| payload(input, f)),
        credit: wire.credit,
        token: wire.token,
        data: wire.data.map(|d| payload(input, d)),
        conn: wire.conn,
        node: wire.node,
        heartbeat: wire.heartbeat,
        user: wire.user,
    };
    raw.into_frame(Codec::Json)
}

/// Whether well-formed JSON `text` nests no value deeper than [`MAX_DEPTH`] below its top
/// value (the MessagePack decoder's rule). serde_json applies its own recursion limit only to
/// values it parses, not to those it keeps raw (`d`) or skips (unknown fields).
pub(crate) fn nesting_ok(text: &[u8]) -> bool {
    // Fast path: no value can be deeper than the number of brackets (this count vectorizes).
    if text.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= MAX_DEPTH {
        return true;
    }
    let mut depth = 0usize;
    let mut bytes = text.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => continue,
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ => {}
        }
        // `b` starts (or continues) a value at `depth`.
        if depth > MAX_DEPTH {
            return false;
        }
        match b {
            b'[' | b'{' => depth += 1,
            b'"' => {
                while let Some(&c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    true
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_payload(out: &mut Vec<u8>, p: &Payload) -> Result<(), EncodeError> {
    if p.codec() == Codec::Json {
        out.extend_from_slice(p.raw());
    } else {
        let json = p
            .to_codec(Codec::Json)
            .map_err(|e| EncodeError(e.to_string()))?;
        out.extend_from_slice(json.raw());
    }
    Ok(())
}

pub(crate) fn encode(fields: &Fields<'_>) -> Result<Vec<u8>, EncodeError> {
    let extra: usize = fields
        .iter()
        .flatten()
        .map(|(_, v)| match v {
            Value::Data(p) => p.raw().len(),
            Value::Str(s) => s.len() + 2,
            Value::Error(e) => e.message.len() + 48,
            _ => 20,
        })
        .sum();
    let mut out = Vec::with_capacity(16 + 8 * fields.len() + extra);
    out.push(b'{');
    for (i, (key, value)) in fields.iter().flatten().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        match value {
            Value::Str(s) => write_str(&mut out, s),
            Value::U64(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Value::Data(p) => write_payload(&mut out, p)?,
            Value::Error(e) => {
                out.extend_from_slice(b"{\"code\":");
                write_str(&mut out, e.code.as_str());
                out.extend_from_slice(b",\"message\":");
                write_str(&mut out, &e.message);
                if let Some(data) = &e.data {
                    out.extend_from_slice(b",\"data\":");
                    write_payload(&mut out, data)?;
                }
                out.push(b'}');
            }
            Value::Position(p) => {
                out.extend_from_slice(b"{\"epoch\":");
                write_str(&mut out, &p.epoch);
                out.extend_from_slice(b",\"offset\":");
                out.extend_from_slice(itoa::Buffer::new().format(p.offset).as_bytes());
                out.push(b'}');
            }
        }
    }
    out.push(b'}');
    Ok(out)
}
