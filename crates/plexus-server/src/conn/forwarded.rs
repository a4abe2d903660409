//! A request of one connection (the caller) forwarded to another (the relay's provider),
//! whose answer is written for the caller the moment it arrives: the provider's session
//! encodes it and queues it on the caller's connection, with no task and no channel in
//! between. The relay forwards requests to providers connected to its own node this way.
//!
//! The entry waits in the provider's table of calls ([`super::client_calls`]) under the id
//! the provider sees. It ends in exactly one of four ways: the provider answers; the
//! provider's connection ends (the caller hears `gone`); its deadline passes (`TIMEOUT`,
//! and the provider gets `cancel`); or the caller stops waiting (it cancels or goes: the
//! caller's session withdraws the entry and the provider gets `cancel`).

use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::{ErrorBody, ErrorCode, Frame, Payload};
use tokio::time::Instant;

use super::ConnectionHandle;
use super::queue::Outbound;
use crate::error::RpcError;
use crate::metrics::CallMeter;

/// What a caller hears when the provider's connection ended with its call: made from the
/// call's method and the provider's node id only when it happens.
pub(crate) type Gone = fn(method: &str, node: &str) -> ErrorBody;

/// A caller's request waiting for the provider's answer.
pub(crate) struct Forwarded {
    pub(crate) caller: ConnectionHandle,
    /// The caller's id of the call.
    pub(crate) id: u64,
    /// The call's sequence number in the caller's session.
    pub(crate) seq: u64,
    pub(crate) method: Box<str>,
    /// The provider's node id.
    pub(crate) node: Arc<str>,
    pub(crate) gone: Gone,
    pub(crate) meter: CallMeter,
    /// When the caller is answered `TIMEOUT` if the provider has not answered.
    pub(crate) deadline: Instant,
}

impl Forwarded {
    /// The provider answered.
    pub(super) fn answer(self, answer: Result<Payload, ErrorBody>) {
        self.finish(answer);
    }

    /// The provider's connection ended with the call.
    pub(super) fn provider_gone(self) {
        let error = (self.gone)(&self.method, &self.node);
        self.finish(Err(error));
    }

    /// The deadline passed without an answer.
    pub(super) fn timed_out(self) {
        let error = ErrorBody::new(ErrorCode::TIMEOUT, "the provider did not answer in time");
        self.finish(Err(error));
    }

    /// The caller stopped waiting: nothing is written for it (its meter counts a cancel).
    pub(crate) fn withdrawn(self) {}

    /// Writes the call's last frame for the caller. Its size is bounded by the caller's
    /// calls in flight, so it is queued whatever the caller's queue holds, like any call's
    /// last frame; the caller's session drops it if the call was cancelled meanwhile.
    fn finish(self, reply: Result<Payload, ErrorBody>) {
        self.meter.finish_with(&reply);
        let frame = match reply {
            Ok(data) => Frame::Res { id: self.id, data },
            Err(error) => Frame::Err {
                id: Some(self.id),
                error,
            },
        };
        let bytes = self.caller.encode(&frame).unwrap_or_else(|e| {
            let error = RpcError::internal(e.message()).into_body();
            self.caller
                .encode(&Frame::Err {
                    id: Some(self.id),
                    error,
                })
                .unwrap_or_else(|_| Bytes::new())
        });
        let last = Outbound::Final {
            id: self.id,
            seq: self.seq,
            bytes,
        };
        // A caller that is gone has stopped its calls already.
        let _ = self.caller.shared.queue.force_push(last);
    }
}
