use crate::{ErrorBody, Payload};

/// A position in a channel's stream of publications: the epoch (which changes when the
/// channel's history is lost) and the offset of a publication within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Identifies one unbroken history of the channel.
    pub epoch: String,
    /// The offset of a publication, strictly increasing within the epoch.
    pub offset: u64,
}

/// Whether a presence event is a member arriving or leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PresenceEvent {
    /// A member joined the channel (`"t":"pjoin"`).
    Join,
    /// A member left the channel (`"t":"pleave"`).
    Leave,
}

/// One protocol frame. `PROTOCOL.md` specifies each one with an example.
///
/// `data` fields hold the frame's `d`: a frame that had no `d` decodes with `null` there.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// Client → server: start the session with an in-band credential.
    Hello {
        /// The credential (e.g. a JWT), if any.
        token: Option<String>,
        /// Application data for the authenticator.
        data: Option<Payload>,
    },
    /// Server → client: the session is open.
    Welcome {
        /// This connection's id, addressable across the cluster.
        conn: String,
        /// The id of the node that holds the connection.
        node: String,
        /// Heartbeat interval in milliseconds.
        heartbeat: u64,
        /// The authenticated user, if any.
        user: Option<String>,
    },
    /// Server → client: the session was refused; the socket closes next.
    Reject {
        /// Why.
        error: ErrorBody,
    },
    /// A request: exactly one `res` or `err` answers it.
    Req {
        /// The caller's id for this call.
        id: u64,
        /// `service.method`.
        method: String,
        /// The params.
        data: Payload,
        /// Through a relay: the provider node the call is pinned to.
        node: Option<String>,
    },
    /// The success result of request `id`.
    Res {
        /// The call it answers.
        id: u64,
        /// The result.
        data: Payload,
    },
    /// The failure of call `id`, or (without id) of a frame that had none.
    Err {
        /// The call it answers, if known.
        id: Option<u64>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// A notification: never answered.
    Ntf {
        /// `service.method`.
        method: String,
        /// The params.
        data: Payload,
        /// Through a relay: the provider node the notification is pinned to.
        node: Option<String>,
    },
    /// Opens a stream: zero or more `item`, then one `end` or `err`.
    Sub {
        /// The caller's id for this call.
        id: u64,
        /// `service.method`.
        method: String,
        /// The params.
        data: Payload,
        /// When present, flow control is on: the callee sends at most this many items
        /// beyond what later `credit` frames grant.
        credit: Option<u32>,
        /// Through a relay: the provider node the stream is pinned to.
        node: Option<String>,
    },
    /// One item of stream `id`.
    Item {
        /// The stream.
        id: u64,
        /// The item.
        data: Payload,
    },
    /// Stream `id` finished normally.
    End {
        /// The stream.
        id: u64,
    },
    /// The caller abandons call `id` (request or stream).
    Cancel {
        /// The call.
        id: u64,
    },
    /// The caller grants `n` more items on stream `id`.
    Credit {
        /// The stream.
        id: u64,
        /// How many more items may be sent.
        n: u32,
    },
    /// Subscribe to a channel, optionally recovering from a position.
    Join {
        /// The caller's id for this call (answered by `res`).
        id: u64,
        /// The channel.
        channel: String,
        /// Recover publications after this position.
        since: Option<Position>,
        /// Deliver only publications that match this filter.
        filter: Option<Payload>,
    },
    /// Unsubscribe from a channel (answered by `res`).
    Leave {
        /// The caller's id for this call.
        id: u64,
        /// The channel.
        channel: String,
    },
    /// Publish to a channel (answered by `res` with the offset).
    Pub {
        /// The caller's id for this call.
        id: u64,
        /// The channel.
        channel: String,
        /// The publication.
        data: Payload,
    },
    /// A publication delivered to a subscriber.
    Msg {
        /// The channel.
        channel: String,
        /// Its offset within the channel's epoch.
        offset: u64,
        /// The publication.
        data: Payload,
    },
    /// A member joined or left a channel (to subscribers, where enabled).
    Presence {
        /// Join or leave.
        event: PresenceEvent,
        /// The channel.
        channel: String,
        /// The member: `{"user":...,"conn":...,"info":...}`.
        data: Payload,
    },
    /// The server subscribed this connection to a channel (a server-side subscription):
    /// `data` is `{"epoch","offset","recovered"}` as in a `join`'s result, and the channel's
    /// `msg` frames follow.
    Joined {
        /// The channel.
        channel: String,
        /// `{"epoch","offset","recovered"}`.
        data: Payload,
    },
    /// The server ended this connection's subscription to a channel. With `error` code
    /// `UNAVAILABLE` the client should join again, recovering from the last offset it saw.
    Left {
        /// The channel.
        channel: String,
        /// Why, when it is not simply the server unsubscribing the connection.
        error: Option<ErrorBody>,
    },
    /// Application-level ping (for clients that cannot send WebSocket pings).
    Ping,
    /// The answer to `ping`.
    Pong,
}

impl Frame {
    /// The frame's type tag, as it appears in `t`.
    pub fn tag(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Reject { .. } => "reject",
            Frame::Req { .. } => "req",
            Frame::Res { .. } => "res",
            Frame::Err { .. } => "err",
            Frame::Ntf { .. } => "ntf",
            Frame::Sub { .. } => "sub",
            Frame::Item { .. } => "item",
            Frame::End { .. } => "end",
            Frame::Cancel { .. } => "cancel",
            Frame::Credit { .. } => "credit",
            Frame::Join { .. } => "join",
            Frame::Leave { .. } => "leave",
            Frame::Pub { .. } => "pub",
            Frame::Msg { .. } => "msg",
            Frame::Presence {
                event: PresenceEvent::Join,
                ..
            } => "pjoin",
            Frame::Presence {
                event: PresenceEvent::Leave,
                ..
            } => "pleave",
            Frame::Joined { .. } => "joined",
            Frame::Left { .. } => "left",
            Frame::Ping => "ping",
            Frame::Pong => "pong",
        }
    }

    /// The call id the frame carries, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            Frame::Req { id, .. }
            | Frame::Res { id, .. }
            | Frame::Sub { id, .. }
            | Frame::Item { id, .. }
            | Frame::End { id }
            | Frame::Cancel { id }
            | Frame::Credit { id, .. }
            | Frame::Join { id, .. }
            | Frame::Leave { id, .. }
            | Frame::Pub { id, .. } => Some(*id),
            Frame::Err { id, .. } => *id,
            _ => None,
        }
    }
}
