//! Frame codecs: JSON text and MessagePack binary, with the same keys and values.

pub(crate) mod json;
pub(crate) mod msgpack;

use std::borrow::Cow;

use bytes::Bytes;

use crate::{ErrorBody, ErrorCode, Frame, Payload, Position, PresenceEvent};

/// How deep a value may sit below the frame (the frame's own fields are at depth 1): deeper
/// nesting is refused by both decoders, so that decoding a payload later cannot overflow the
/// stack and a value accepted in one codec can be transcoded into the other.
pub(crate) const MAX_DEPTH: usize = 128;

/// A wire codec, chosen per connection by WebSocket subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// `plexus.v1.json`: one JSON object per text message. The default.
    #[default]
    Json,
    /// `plexus.v1.msgpack`: one MessagePack map per binary message.
    MsgPack,
}

/// Why bytes could not be decoded into a [`Frame`]. The answer to it is a `BAD_FRAME` error
/// frame, carrying [`DecodeError::id`] when the call id could still be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    id: Option<u64>,
    message: String,
}

impl DecodeError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            id: None,
            message: message.into(),
        }
    }

    pub(crate) fn with_id(mut self, id: Option<u64>) -> Self {
        self.id = id.filter(|id| *id > 0);
        self
    }

    /// The call id of the bad frame, when it could be read.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why a frame could not be encoded (only possible when a payload must be transcoded from
/// MessagePack to JSON and holds something JSON cannot express, such as a non-string map key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode frame: {0}")]
pub struct EncodeError(pub(crate) String);

impl Codec {
    /// The subprotocol name that selects this codec.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "plexus.v1.json",
            Codec::MsgPack => "plexus.v1.msgpack",
        }
    }

    /// A short name, `json` or `msgpack`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// Whether frames travel as binary WebSocket messages (else text).
    pub const fn is_binary(self) -> bool {
        matches!(self, Codec::MsgPack)
    }

    /// The codec for a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            "plexus.v1.json" => Some(Codec::Json),
            "plexus.v1.msgpack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// Picks the codec from a `Sec-WebSocket-Protocol` header value (a comma-separated list
    /// in the client's order of preference). `None` when the client offered subprotocols but
    /// none of ours; a missing header means JSON.
    pub fn negotiate(offered: Option<&str>) -> Option<Self> {
        match offered {
            None => Some(Codec::Json),
            Some(list) => list.split(',').find_map(Codec::from_subprotocol),
        }
    }

    /// Decodes one WebSocket message into a frame. Never panics.
    pub fn decode(self, input: Bytes) -> Result<Frame, DecodeError> {
        match self {
            Codec::Json => json::decode(&input),
            Codec::MsgPack => msgpack::decode(&input),
        }
    }

    /// Encodes a frame into one WebSocket message.
    pub fn encode(self, frame: &Frame) -> Result<Bytes, EncodeError> {
        let fields = fields_of(frame);
        let out = match self {
            Codec::Json => json::encode(&fields)?,
            Codec::MsgPack => msgpack::encode(&fields)?,
        };
        Ok(out.into())
    }
}

/// A value in an encoded frame.
pub(crate) enum Value<'a> {
    Str(&'a str),
    U64(u64),
    Data(&'a Payload),
    Error(&'a ErrorBody),
    Position(&'a Position),
}

/// Up to eight `(key, value)` pairs, `t` first; the single mapping from frames to keys used
/// by both encoders.
pub(crate) type Fields<'a> = [Option<(&'static str, Value<'a>)>; 8];

fn fields_of(frame: &Frame) -> Fields<'_> {
    use Value::*;
    let t = Some(("t", Str(frame.tag())));
    let id = |id: &u64| Some(("id", U64(*id)));
    type Field<'a> = Option<(&'static str, Value<'a>)>;
    fn d(p: &Payload) -> Field<'_> {
        Some(("d", Data(p)))
    }
    fn d_opt<'a>(key: &'static str, p: &'a Option<Payload>) -> Field<'a> {
        p.as_ref().map(|p| (key, Data(p)))
    }
    fn s<'a>(key: &'static str, v: &'a str) -> Field<'a> {
        Some((key, Str(v)))
    }
    fn s_opt<'a>(key: &'static str, v: &'a Option<String>) -> Field<'a> {
        v.as_deref().map(|v| (key, Str(v)))
    }
    match frame {
        Frame::Hello { token, data } => [
            t,
            s_opt("token", token),
            d_opt("data", data),
            None,
            None,
            None,
            None,
            None,
        ],
        Frame::Welcome {
            conn,
            node,
            heartbeat,
            user,
        } => [
            t,
            s("conn", conn),
            s("node", node),
            Some(("heartbeat", U64(*heartbeat))),
            s_opt("user", user),
            None,
            None,
            None,
        ],
        Frame::Reject { error } => [
            t,
            Some(("e", Error(error))),
            None,
            None,
            None,
            None,
            None,
            None,
        ],
        Frame::Req {
            id: i,
            method,
            data,
            node,
        } => [
            t,
            id(i),
            s("m", method),
            d(data),
            s_opt("node", node),
            None,
            None,
            None,
        ],
        Frame::Sub {
            id: i,
            method,
            data,
            credit,
            node,
        } => [
            t,
            id(i),
            s("m", method),
            d(data),
            credit.map(|credit| ("credit", U64(u64::from(credit)))),
            s_opt("node", node),
            None,
            None,
        ],
        Frame::Res { id: i, data } | Frame::Item { id: i, data } => {
            [t, id(i), d(data), None, None, None, None, None]
        }
        Frame::Err { id: i, error } => [
            t,
            i.as_ref().and_then(id),
            Some(("e", Error(error))),
            None,
            None,
            None,
            None,
            None,
        ],
        Frame::Ntf { method, data, node } => [
            t,
            s("m", method),
            d(data),
            s_opt("node", node),
            None,
            None,
            None,
            None,
        ],
        Frame::End { id: i } | Frame::Cancel { id: i } => {
            [t, id(i), None, None, None, None, None, None]
        }
        Frame::Credit { id: i, n } => [
            t,
            id(i),
            Some(("n", U64(u64::from(*n)))),
            None,
            None,
            None,
            None,
            None,
        ],
        Frame::Join {
            id: i,
            channel,
            since,
            filter,
        } => [
            t,
            id(i),
            s("ch", channel),
            since.as_ref().map(|p| ("since", Position(p))),
            d_opt("filter", filter),
            None,
            None,
            None,
        ],
        Frame::Leave { id: i, channel } => {
            [t, id(i), s("ch", channel), None, None, None, None, None]
        }
        Frame::Pub {
            id: i,
            channel,
            data,
        } => [t, id(i), s("ch", channel), d(data), None, None, None, None],
        Frame::Msg {
            channel,
            offset,
            data,
        } => [
            t,
            s("ch", channel),
            Some(("o", U64(*offset))),
            d(data),
            None,
            None,
            None,
            None,
        ],
        Frame::Presence { channel, data, .. } => {
            [t, s("ch", channel), d(data), None, None, None, None, None]
        }
        Frame::Joined { channel, data } => {
            [t, s("ch", channel), d(data), None, None, None, None, None]
        }
        Frame::Left { channel, error } => [
            t,
            s("ch", channel),
            error.as_ref().map(|e| ("e", Error(e))),
            None,
            None,
            None,
            None,
            None,
        ],
        Frame::Ping | Frame::Pong => [t, None, None, None, None, None, None, None],
    }
}

/// The fields of a decoded frame before validation, shared by both decoders. Strings borrow
/// from the input where they can; raw values are sub-slices of it.
#[derive(Default)]
pub(crate) struct RawFrame<'a> {
    pub(crate) t: Option<Cow<'a, str>>,
    pub(crate) id: Option<u64>,
    pub(crate) m: Option<Cow<'a, str>>,
    pub(crate) d: Option<Payload>,
    pub(crate) e: Option<ErrorBody>,
    pub(crate) ch: Option<Cow<'a, str>>,
    pub(crate) o: Option<u64>,
    pub(crate) n: Option<u64>,
    pub(crate) since: Option<Position>,
    pub(crate) filter: Option<Payload>,
    pub(crate) credit: Option<u64>,
    pub(crate) token: Option<Cow<'a, str>>,
    pub(crate) data: Option<Payload>,
    pub(crate) conn: Option<Cow<'a, str>>,
    pub(crate) node: Option<Cow<'a, str>>,
    pub(crate) heartbeat: Option<u64>,
    pub(crate) user: Option<Cow<'a, str>>,
}

fn require<T>(value: Option<T>, tag: &str, key: &str) -> Result<T, DecodeError> {
    value.ok_or_else(|| DecodeError::new(format!("`{tag}` frame needs `{key}`")))
}

impl RawFrame<'_> {
    /// Validates the fields for the frame type and builds the frame.
    pub(crate) fn into_frame(self, codec: Codec) -> Result<Frame, DecodeError> {
        let id_hint = self.id;
        self.build(codec).map_err(|e| e.with_id(id_hint))
    }

    fn build(self, codec: Codec) -> Result<Frame, DecodeError> {
        let tag = self.t.ok_or_else(|| DecodeError::new("missing `t`"))?;
        let tag = tag.as_ref();
        if self.id == Some(0) {
            return Err(DecodeError::new("`id` must be a positive integer"));
        }
        let id = || require(self.id, tag, "id");
        let data = self.d.unwrap_or_else(|| Payload::null(codec));
        let method = || require(self.m.as_deref(), tag, "m").map(str::to_owned);
        let channel = || require(self.ch.as_deref(), tag, "ch").map(str::to_owned);
        let small = |key: &str, n: Option<u64>| -> Result<Option<u32>, DecodeError> {
            n.map(|n| {
                u32::try_from(n).map_err(|_| DecodeError::new(format!("`{key}` is too large")))
            })
            .transpose()
        };
        let frame = match tag {
            "req" => Frame::Req {
                id: id()?,
                method: method()?,
                data,
                node: self.node.map(Cow::into_owned),
            },
            "res" => Frame::Res { id: id()?, data },
            "err" => Frame::Err {
                id: self.id,
                error: require(self.e, tag, "e")?,
            },
            "ntf" => Frame::Ntf {
                method: method()?,
                data,
                node: self.node.map(Cow::into_owned),
            },
            "sub" => Frame::Sub {
                id: id()?,
                method: method()?,
                data,
                credit: small("credit", self.credit)?,
                node: self.node.map(Cow::into_owned),
            },
            "item" => Frame::Item { id: id()?, data },
            "end" => Frame::End { id: id()? },
            "cancel" => Frame::Cancel { id: id()? },
            "credit" => Frame::Credit {
                id: id()?,
                n: require(small("n", self.n)?, tag, "n")?,
            },
            "join" => Frame::Join {
                id: id()?,
                channel: channel()?,
                since: self.since,
                filter: self.filter,
            },
            "leave" => Frame::Leave {
                id: id()?,
                channel: channel()?,
            },
            "pub" => Frame::Pub {
                id: id()?,
                channel: channel()?,
                data,
            },
            "msg" => Frame::Msg {
                channel: channel()?,
                offset: require(self.o, tag, "o")?,
                data,
            },
            "pjoin" | "pleave" => Frame::Presence {
                event: if tag == "pjoin" {
                    PresenceEvent::Join
                } else {
                    PresenceEvent::Leave
                },
                channel: channel()?,
                data,
            },
            "joined" => Frame::Joined {
                channel: channel()?,
                data,
            },
            "left" => Frame::Left {
                channel: channel()?,
                error: self.e,
            },
            "hello" => Frame::Hello {
                token: self.token.map(Cow::into_owned),
                data: self.data,
            },
            "welcome" => Frame::Welcome {
                conn: require(self.conn, tag, "conn")?.into_owned(),
                node: require(self.node, tag, "node")?.into_owned(),
                heartbeat: require(self.heartbeat, tag, "heartbeat")?,
                user: self.user.map(Cow::into_owned),
            },
            "reject" => Frame::Reject {
                error: require(self.e, tag, "e")?,
            },
            "ping" => Frame::Ping,
            "pong" => Frame::Pong,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(DecodeError::new(format!("unknown frame type `{shown}`")));
            }
        };
        Ok(frame)
    }
}

pub(crate) fn error_code(code: Cow<'_, str>) -> ErrorCode {
    ErrorCode::new(code.into_owned())
}
