//! The MessagePack codec (`plexus.v1.msgpack`).
//!
//! Decoding walks the bytes by hand so that `d` (and other application values) stay raw
//! sub-slices of the input instead of being parsed into a tree.

use std::borrow::Cow;

use bytes::Bytes;

use super::{Codec, DecodeError, EncodeError, Fields, MAX_DEPTH, RawFrame, Value};
use crate::{ErrorBody, ErrorCode, Payload, Position};

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Res<T> = Result<T, DecodeError>;

fn truncated() -> DecodeError {
    DecodeError::new("not valid MessagePack: truncated")
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Res<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn peek(&self) -> Res<u8> {
        self.buf.get(self.pos).copied().ok_or_else(truncated)
    }

    fn map_len(&mut self) -> Res<usize> {
        match self.byte()? {
            m @ 0x80..=0x8f => Ok(usize::from(m & 0x0f)),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            _ => Err(DecodeError::new("expected a map")),
        }
    }

    fn str(&mut self) -> Res<&'a str> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err(DecodeError::new("expected a string")),
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::new("string is not UTF-8"))
    }

    fn uint(&mut self) -> Res<u64> {
        let value = match self.byte()? {
            m @ 0x00..=0x7f => u64::from(m),
            0xcc => self.be(1)?,
            0xcd => self.be(2)?,
            0xce => self.be(4)?,
            0xcf => self.be(8)?,
            0xd0 => i64::from(self.be(1)? as u8 as i8) as u64 | neg_guard(self.buf, self.pos, 1)?,
            0xd1 => i64::from(self.be(2)? as u16 as i16) as u64 | neg_guard(self.buf, self.pos, 2)?,
            0xd2 => i64::from(self.be(4)? as u32 as i32) as u64 | neg_guard(self.buf, self.pos, 4)?,
            0xd3 => self.be(8)? as i64 as u64 | neg_guard(self.buf, self.pos, 8)?,
            _ => return Err(DecodeError::new("expected a non-negative integer")),
        };
        Ok(value)
    }

    /// Skips one complete value and returns its bytes.
    fn value(&mut self, depth: usize) -> Res<&'a [u8]> {
        let start = self.pos;
        self.skip(depth)?;
        Ok(&self.buf[start..self.pos])
    }

    fn skip(&mut self, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::new("value nested too deeply"));
        }
        let marker = self.byte()?;
        let (data, items) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (self.be(1)?, 0),
            0xc5 | 0xda => (self.be(2)?, 0),
            0xc6 | 0xdb => (self.be(4)?, 0),
            0xc7 => (self.be(1)? + 1, 0),
            0xc8 => (self.be(2)? + 1, 0),
            0xc9 => (self.be(4)? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.be(2)?),
            0xdd => (0, self.be(4)?),
            0xde => (0, 2 * self.be(2)?),
            0xdf => (0, 2 * self.be(4)?),
            0xc1 => {
                return Err(DecodeError::new(
                    "not valid MessagePack: reserved byte 0xc1",
                ));
            }
        };
        self.take(usize::try_from(data).map_err(|_| truncated())?)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Ok(())
    }

    fn is_nil(&self) -> bool {
        self.peek() == Ok(0xc0)
    }
}

/// Signed integers are accepted as ids and counts only when they are not negative.
fn neg_guard(buf: &[u8], end: usize, width: usize) -> Res<u64> {
    if buf[end - width] & 0x80 != 0 {
        Err(DecodeError::new("expected a non-negative integer"))
    } else {
        Ok(0)
    }
}

/// The length in bytes of the first complete MessagePack value in `buf`, if it holds one.
pub(crate) fn value_len(buf: &[u8]) -> Option<usize> {
    let mut reader = Reader::new(buf);
    reader.skip(0).ok().map(|()| reader.pos)
}

fn payload(input: &Bytes, raw: &[u8]) -> Payload {
    Payload::from_raw(Codec::MsgPack, input.slice_ref(raw))
}

fn opt<'a, T>(r: &mut Reader<'a>, read: impl FnOnce(&mut Reader<'a>) -> Res<T>) -> Res<Option<T>> {
    if r.is_nil() {
        r.byte()?;
        Ok(None)
    } else {
        read(r).map(Some)
    }
}

/// Marks `key` as read (`bit` in `seen`); a key that repeats is an error, as in JSON.
fn first_time(seen: &mut u8, bit: u8, key: &str) -> Res<()> {
    if *seen & bit != 0 {
        return Err(DecodeError::new(format!("duplicate field `{key}`")));
    }
    *seen |= bit;
    Ok(())
}

fn error_body<'a>(r: &mut Reader<'a>, input: &Bytes) -> Res<ErrorBody> {
    let len = r.map_len()?;
    let (mut code, mut message, mut data) = (None, String::new(), None);
    let mut seen = 0;
    for _ in 0..len {
        match r.str()? {
            key @ "code" => {
                first_time(&mut seen, 1, key)?;
                code = Some(r.str()?);
            }
            key @ "message" => {
                first_time(&mut seen, 2, key)?;
                message = opt(r, |r| r.str())?.unwrap_or_default().to_owned();
            }
            key @ "data" => {
                first_time(&mut seen, 4, key)?;
                data = opt(r, |r| r.value(2))?.map(|raw| payload(input, raw));
            }
            _ => {
                r.skip(2)?;
            }
        }
    }
    let code = code.ok_or_else(|| DecodeError::new("`e` needs `code`"))?;
    Ok(ErrorBody {
        code: ErrorCode::new(code.to_owned()),
        message,
        data,
    })
}

fn position(r: &mut Reader<'_>) -> Res<Position> {
    let len = r.map_len()?;
    let (mut epoch, mut offset) = (None, None);
    let mut seen = 0;
    for _ in 0..len {
        match r.str()? {
            key @ "epoch" => {
                first_time(&mut seen, 1, key)?;
                epoch = Some(r.str()?.to_owned());
            }
            key @ "offset" => {
                first_time(&mut seen, 2, key)?;
                offset = Some(r.uint()?);
            }
            _ => r.skip(2)?,
        }
    }
    match (epoch, offset) {
        (Some(epoch), Some(offset)) => Ok(Position { epoch, offset }),
        _ => Err(DecodeError::new("`since` needs `epoch` and `offset`")),
    }
}

fn read_frame<'a>(r: &mut Reader<'a>, input: &Bytes) -> Res<RawFrame<'a>> {
    let len = r.map_len()?;
    let mut f = RawFrame::default();
    let mut seen = 0u32;
    for _ in 0..len {
        let key = r.str()?;
        let bit = match key {
            "t" => 0,
            "id" => 1,
            "m" => 2,
            "d" => 3,
            "e" => 4,
            "ch" => 5,
            "o" => 6,
            "n" => 7,
            "since" => 8,
            "filter" => 9,
            "credit" => 10,
            "token" => 11,
            "data" => 12,
            "conn" => 13,
            "node" => 14,
            "heartbeat" => 15,
            "user" => 16,
            _ => {
                r.skip(1)?;
                continue;
            }
        };
        if seen & (1 << bit) != 0 {
            return Err(DecodeError::new(format!("duplicate field `{key}`")));
        }
        seen |= 1 << bit;
        let s = |r: &mut Reader<'a>| opt(r, |r| r.str().map(Cow::Borrowed));
        let u = |r: &mut Reader<'a>| opt(r, |r| r.uint());
        let v = |r: &mut Reader<'a>| {
            opt(r, |r| r.value(1)).map(|raw| raw.map(|raw| payload(input, raw)))
        };
        match bit {
            0 => f.t = s(r)?,
            1 => f.id = u(r)?,
            2 => f.m = s(r)?,
            3 => f.d = v(r)?,
            4 => f.e = opt(r, |r| error_body(r, input))?,
            5 => f.ch = s(r)?,
            6 => f.o = u(r)?,
            7 => f.n = u(r)?,
            8 => f.since = opt(r, position)?,
            9 => f.filter = v(r)?,
            10 => f.credit = u(r)?,
            11 => f.token = s(r)?,
            12 => f.data = v(r)?,
            13 => f.conn = s(r)?,
            14 => f.node = s(r)?,
            15 => f.heartbeat = u(r)?,
            _ => f.user = s(r)?,
        }
    }
    if r.pos != r.buf.len() {
        return Err(DecodeError::new("trailing bytes after the frame"));
    }
    Ok(f)
}

/// Reads only `id`, leniently, to tell which call a bad frame belonged to.
fn id_hint(input: &[u8]) -> Option<u64> {
    let mut r = Reader::new(input);
    let len = r.map_len().ok()?;
    for _ in 0..len {
        let key = r.str().ok()?;
        if key == "id" {
            return r.uint().ok();
        }
        r.skip(1).ok()?;
    }
    None
}

pub(crate) fn decode(input: &Bytes) -> Result<crate::Frame, DecodeError> {
    if !matches!(input.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Err(DecodeError::new(if value_len(input) == Some(input.len()) {
            "a frame must be a MessagePack map"
        } else {
            "not valid MessagePack"
        }));
    }
    let mut reader = Reader::new(input);
    match read_frame(&mut reader, input) {
        Ok(raw) => raw.into_frame(Codec::MsgPack),
        Err(e) => Err(e.with_id(id_hint(input))),
    }
}

fn write_payload(out: &mut Vec<u8>, p: &Payload) -> Result<(), EncodeError> {
    if p.codec() == Codec::MsgPack {
        out.extend_from_slice(p.raw());
    } else {
        let packed = p
            .to_codec(Codec::MsgPack)
            .map_err(|e| EncodeError(e.to_string()))?;
        out.extend_from_slice(packed.raw());
    }
    Ok(())
}

// Writes into a Vec cannot fail, so the results of rmp's writers are ignored below.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = rmp::encode::write_str(out, s);
}

fn write_uint(out: &mut Vec<u8>, n: u64) {
    let _ = rmp::encode::write_uint(out, n);
}

pub(crate) fn encode(fields: &Fields<'_>) -> Result<Vec<u8>, EncodeError> {
    let count = fields.iter().flatten().count() as u32;
    let extra: usize = fields
        .iter()
        .flatten()
        .map(|(_, v)| match v {
            Value::Data(p) => p.raw().len(),
            Value::Str(s) => s.len() + 5,
            Value::Error(e) => e.message.len() + 32,
            _ => 16,
        })
        .sum();
    let mut out = Vec::with_capacity(8 + 8 * count as usize + extra);
    let _ = rmp::encode::write_map_len(&mut out, count);
    for (key, value) in fields.iter().flatten() {
        write_str(&mut out, key);
        match value {
            Value::Str(s) => write_str(&mut out, s),
            Value::U64(n) => write_uint(&mut out, *n),
            Value::Data(p) => write_payload(&mut out, p)?,
            Value::Error(e) => {
                let _ = rmp::encode::write_map_len(&mut out, 2 + u32::from(e.data.is_some()));
                write_str(&mut out, "code");
                write_str(&mut out, e.code.as_str());
                write_str(&mut out, "message");
                write_str(&mut out, &e.message);
                if let Some(data) = &e.data {
                    write_str(&mut out, "data");
                    write_payload(&mut out, data)?;
                }
            }
            Value::Position(p) => {
                let _ = rmp::encode::write_map_len(&mut out, 2);
                write_str(&mut out, "epoch");
                write_str(&mut out, &p.epoch);
                write_str(&mut out, "offset");
                write_uint(&mut out, p.offset);
            }
        }
    }
    Ok(out)
}
