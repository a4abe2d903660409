//! The shapes of channel results on the wire.

use plexus_protocol::{Payload, Position};
use serde::{Deserialize, Serialize};

use super::{History, Publication};

/// The result of `join` (and the `d` of `joined`): `{"epoch","offset","recovered"}`.
#[derive(Deserialize)]
pub(super) struct JoinResult {
    pub(super) epoch: String,
    pub(super) offset: u64,
    #[serde(default)]
    pub(super) recovered: Option<bool>,
}

/// A position as it is on the wire (`{"epoch","offset"}`).
#[derive(Serialize, Deserialize)]
pub(crate) struct WirePosition {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

impl From<WirePosition> for Position {
    fn from(p: WirePosition) -> Self {
        Position {
            epoch: p.epoch,
            offset: p.offset,
        }
    }
}

impl From<&Position> for WirePosition {
    fn from(p: &Position) -> Self {
        WirePosition {
            epoch: p.epoch.clone(),
            offset: p.offset,
        }
    }
}

/// The result of `$history`.
#[derive(Deserialize)]
pub(crate) struct WireHistory {
    epoch: String,
    offset: u64,
    #[serde(default)]
    pubs: Vec<WirePublication>,
}

#[derive(Deserialize)]
struct WirePublication {
    o: u64,
    #[serde(default)]
    d: Option<Payload>,
}

impl WireHistory {
    pub(crate) fn into_history(self, codec: plexus_protocol::Codec) -> History {
        History {
            position: Position {
                epoch: self.epoch,
                offset: self.offset,
            },
            publications: self
                .pubs
                .into_iter()
                .map(|p| Publication {
                    offset: p.o,
                    data: p.d.unwrap_or_else(|| Payload::null(codec)),
                })
                .collect(),
        }
    }
}
