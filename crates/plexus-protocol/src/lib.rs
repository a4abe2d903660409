//! The plexus wire protocol, v1: frames, codecs and codes. No I/O.
//!
//! Every plexus server and client speaks this protocol over WebSocket. One WebSocket message
//! carries one [`Frame`]; a [`Codec`] turns frames into bytes and back, either as JSON text
//! (`plexus.v1.json`) or as MessagePack binary (`plexus.v1.msgpack`).
//!
//! ```
//! use plexus_protocol::{Codec, Frame, Payload};
//!
//! let codec = Codec::Json;
//! let frame = codec.decode(br#"{"t":"req","id":1,"m":"sys.echo","d":{"x":1}}"#.as_slice().into())?;
//! let Frame::Req { id, method, data, .. } = frame else { unreachable!() };
//! assert_eq!((id, method.as_str()), (1, "sys.echo"));
//! let reply = codec.encode(&Frame::Res { id, data })?;
//! assert_eq!(&reply[..], br#"{"t":"res","id":1,"d":{"x":1}}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Concepts:
//!
//! - [`Frame`]: every frame type of the protocol, in both directions.
//! - [`Payload`]: an application value (`d`), kept as the raw bytes of the codec it arrived
//!   in, so that forwarding or echoing it costs no re-parse; [`Payload::decode`] turns it into a
//!   typed value and names the bad field when that fails.
//! - [`ErrorCode`], [`CloseCode`]: the error codes of `err` frames and the WebSocket close codes.
//! - [`RpcError`]: what a handler returns when a call fails, on the server and the client.
//!
//! The decoder never panics, whatever the input; it is property-tested and fuzzed.

mod code;
mod codec;
mod error;
mod frame;
mod payload;

pub use code::{CloseCode, ErrorBody, ErrorCode};
pub use codec::{Codec, DecodeError, EncodeError};
pub use error::RpcError;
pub use frame::{Frame, Position, PresenceEvent};
pub use payload::{IntoPayload, Payload, PayloadError};

/// The default WebSocket path of a plexus endpoint.
pub const DEFAULT_PATH: &str = "/ws";
