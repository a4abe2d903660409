//! Channels: [`Subscription`]s, their [`ChannelEvent`]s, and the client's side of recovery.
//!
//! All channel state lives in [`State::channels`](crate::state::State), under the client's
//! one mutex, so that a `res` of a `join` and the `msg` frames after it are handled in the
//! order they arrived, and a reconnect sees every subscription in a consistent state.
//!
//! Per subscription the client keeps the *tracked position*: the epoch of the last `join`
//! answer and the offset of the last `msg` put in the subscription's buffer. Re-joins send it
//! as `since`; `msg` frames at or below it are duplicates and are dropped.
//!
//! The parts:
//! - [`registry`]: what the client keeps per subscription ([`Channels`]), and its phases;
//! - `calls`: the client's `join` and `leave` calls, their answers, and what a session's
//!   start and end do to the subscriptions;
//! - `frames`: the channel frames the server pushes (`msg`, `pjoin`, `pleave`, `joined`,
//!   `left`);
//! - [`subscription`]: the application's handle, a [`Stream`](futures_util::Stream) of
//!   events;
//! - [`server`]: subscriptions the server made (`joined`), as one stream;
//! - `wire`: the shapes of results on the wire.

mod calls;
mod frames;
mod registry;
mod server;
mod subscription;
mod wire;

pub(crate) use registry::Channels;
pub use server::ServerSubscriptions;
pub(crate) use subscription::Attachment;
pub use subscription::Subscription;
pub(crate) use wire::{WireHistory, WirePosition};

use plexus_protocol::{Payload, Position};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::CallError;

/// One publication of a channel: its offset within the channel's epoch and its value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Publication {
    /// The offset of the publication (`o`), strictly increasing within the epoch.
    pub offset: u64,
    /// The published value (`d`), as it came on the wire.
    pub data: Payload,
}

impl Publication {
    /// Decodes the value into `T`; on failure the error (kind
    /// [`Decode`](crate::CallErrorKind::Decode)) names the field that did not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        self.data.decode().map_err(|e| CallError::decode(&e))
    }
}

/// A member of a channel: one connection joined to it, as `pjoin`, `pleave` and
/// [`Client::presence`](crate::Client::presence) describe it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The user of the connection; `None` for anonymous connections.
    #[serde(default)]
    pub user: Option<String>,
    /// The connection id.
    pub conn: String,
    /// Application data attached to the member, if any.
    #[serde(default)]
    pub info: Option<Payload>,
}

/// What a [`Subscription`] yields, and (paired with the channel's name) what
/// [`ServerSubscriptions`] yields.
///
/// On a [`Subscription`], publications come in offset order, each exactly once, across
/// reconnects, overflows and interruptions of the server's stream: the client re-joins with
/// the position of the last publication it buffered and drops any duplicate. When that is
/// not possible (the server's history no longer holds the missed publications, or the
/// channel's epoch changed), [`ChannelEvent::Resubscribed`] says `recovered: false`.
/// Server-side subscriptions are not re-joined by the client: see
/// [`ServerSubscriptions`] for what these events mean there.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The server subscribed this client to the channel (a `joined` frame): the first event
    /// of each server-side subscription, only on
    /// [`ServerSubscriptions`]. The publications after
    /// `position` follow; to build the channel's state, load it from the application's
    /// source of truth (or [`Client::history`](crate::Client::history)) up to `position`,
    /// then apply them.
    Subscribed {
        /// The channel's position when the server subscribed the client: its epoch, and
        /// the offset of its latest publication then.
        position: Position,
    },
    /// A publication (`msg`).
    Publication(Publication),
    /// A member joined the channel (`pjoin`; only where the server sends presence events).
    MemberJoined(Member),
    /// A member left the channel (`pleave`).
    MemberLeft(Member),
    /// The client joined the channel again: after a reconnect, after
    /// [`ChannelEvent::Lagged`], or after the server interrupted the subscription (a `left`
    /// frame with code `UNAVAILABLE`: the server's stream of the channel broke off). Only on
    /// a [`Subscription`].
    ///
    /// With `recovered: true`, the publications missed meanwhile follow, then live ones:
    /// nothing was lost. With `recovered: false` **publications were missed and will not be
    /// delivered** (the server's history window passed, or the channel's epoch changed): the
    /// application must reload its state from its source of truth (for example with
    /// [`Client::history`](crate::Client::history) or its own API), then apply the
    /// publications that follow, which are those after `position`. Presence events missed
    /// while disconnected are not replayed either; [`Client::presence`](crate::Client::presence)
    /// gives the members now.
    Resubscribed {
        /// Whether every publication missed since the last one delivered follows.
        recovered: bool,
        /// The channel's position when it was joined again (its epoch, and the offset of
        /// its latest publication then).
        position: Position,
    },
    /// The application read too slowly: the subscription's buffer
    /// ([`JoinOptions::buffer`](crate::JoinOptions::buffer)) was full, so the client stopped
    /// buffering after the publication at `position` instead of growing its memory or
    /// stalling the connection.
    ///
    /// On a [`Subscription`] nothing is lost yet: once the application has read this event
    /// (it is the last one buffered), the client joins the channel again with `since` =
    /// `position` and [`ChannelEvent::Resubscribed`] follows, then the missed publications
    /// from the server's history. Presence events that did not fit are not recovered.
    /// Re-joining costs a `leave` and a `join`, so other members may see this connection
    /// leave and join again.
    ///
    /// On [`ServerSubscriptions`] the publications after
    /// `position`, up to the next one yielded for the channel, **were dropped** and are not
    /// recovered (the client does not re-join server-side subscriptions): fetch them with
    /// [`Client::history`](crate::Client::history) if they matter.
    Lagged {
        /// The position of the last publication delivered before the gap.
        position: Position,
    },
    /// The subscription ended without [`Subscription::leave`]: the client was closed, the
    /// server refused a re-join (for example `FORBIDDEN` after the credential changed), or
    /// the server ended the subscription (a `left` frame: kind
    /// [`Remote`](crate::CallErrorKind::Remote) with the server's error, or code
    /// `UNSUBSCRIBED` and message "unsubscribed by the server" when it gave none). It is
    /// the last event; the subscription is not re-joined after a reconnect. Join again to
    /// resume.
    ///
    /// On [`ServerSubscriptions`], the last event of one
    /// server-side subscription (see there why it ends).
    Closed(CallError),
}

/// The publications kept in a channel's history: see [`Client::history`](crate::Client::history).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The channel's current position.
    pub position: Position,
    /// The publications returned, oldest first. To detect a gap, compare
    /// `position.epoch` and the first offset with the position asked for.
    pub publications: Vec<Publication>,
}
