//! The built-in requests a client makes of the hub: `$presence` and `$history`.

use plexus_protocol::{Codec, ErrorCode, Payload, Position};
use serde::{Deserialize, Serialize};

use super::{Hub, HubError};
use crate::channel::ChannelAction;
use crate::conn::ConnectionHandle;
use crate::error::{RpcError, shown};

/// The params of both built-ins.
#[derive(Deserialize)]
struct ChannelParams {
    ch: String,
    since: Option<WirePosition>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct WirePosition {
    epoch: String,
    offset: u64,
}

/// `$history`'s answer, as PROTOCOL.md gives it.
#[derive(Serialize)]
struct WireHistory<'a> {
    epoch: &'a str,
    offset: u64,
    pubs: Vec<WireEntry<'a>>,
}

#[derive(Serialize)]
struct WireEntry<'a> {
    o: u64,
    d: &'a Payload,
}

fn encode<T: Serialize>(codec: Codec, value: &T) -> Result<Payload, HubError> {
    Payload::encode(codec, value).map_err(|e| RpcError::internal(e).into_body().into())
}

impl Hub {
    /// Answers the built-in requests `$presence` and `$history`, in the connection's codec.
    pub(crate) async fn builtin(
        &self,
        conn: &ConnectionHandle,
        method: &str,
        params: &Payload,
    ) -> Result<Payload, HubError> {
        // The name first: an unknown built-in is NOT_FOUND whatever its params.
        let action = match method {
            "$presence" => ChannelAction::Presence,
            "$history" => ChannelAction::History,
            _ => {
                return Err(HubError::new(
                    ErrorCode::NOT_FOUND,
                    format!("unknown built-in method `{}`", shown(method)),
                ));
            }
        };
        let p: ChannelParams = params
            .decode()
            .map_err(|e| HubError::from(RpcError::invalid_params(&e).into_body()))?;
        let options = self.options(&p.ch)?;
        // Permission first: a connection that may not look learns nothing of the channel.
        if !options.allows(conn, &p.ch, action) {
            return Err(HubError::new(
                ErrorCode::FORBIDDEN,
                "not allowed to look at this channel",
            ));
        }
        if action == ChannelAction::Presence {
            if !options.presence {
                return Err(HubError::new(
                    ErrorCode::NOT_FOUND,
                    "presence is off for this channel",
                ));
            }
            return encode(conn.codec(), &self.presence(&p.ch).await?);
        }
        let since = p.since.map(|s| Position {
            epoch: s.epoch,
            offset: s.offset,
        });
        let history = self.history(&p.ch, since.as_ref(), p.limit).await?;
        let wire = WireHistory {
            epoch: &history.position.epoch,
            offset: history.position.offset,
            pubs: history
                .publications
                .iter()
                .map(|publication| WireEntry {
                    o: publication.offset,
                    d: &publication.data,
                })
                .collect(),
        };
        encode(conn.codec(), &wire)
    }
}
