//! Reading what a stream keeps under a subject: the last message, or every message.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use futures_util::StreamExt;
use plexus_engine::EngineError;

use crate::unavailable;

/// How long reading a subject's messages may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The last message kept under `subject`, if any.
pub(crate) async fn last(
    stream: &Stream,
    subject: &str,
) -> Result<Option<StreamMessage>, EngineError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(unavailable(&e.to_string())),
    }
}

/// One kept message: its subject, stream sequence, headers and payload.
pub(crate) struct Kept {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) headers: Option<async_nats::HeaderMap>,
    pub(crate) payload: Bytes,
}

/// Every message kept under `filter` (`last_per_subject`: only the last of each subject), in
/// stream order, as of now.
pub(crate) async fn all(
    stream: &Stream,
    filter: &str,
    last_per_subject: bool,
) -> Result<Vec<Kept>, EngineError> {
    let read = async {
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: if last_per_subject {
                    DeliverPolicy::LastPerSubject
                } else {
                    DeliverPolicy::All
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let pending = consumer.cached_info().num_pending;
        let mut kept = Vec::with_capacity(usize::try_from(pending).unwrap_or(0));
        if pending == 0 {
            return Ok(kept);
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, left) = (info.stream_sequence, info.pending);
            kept.push(Kept {
                subject: message.subject.to_string(),
                sequence,
                headers: message.headers.clone(),
                payload: message.payload.clone(),
            });
            if left == 0 || kept.len() as u64 >= pending {
                break;
            }
        }
        Ok::<_, String>(kept)
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(kept)) => Ok(kept),
        Ok(Err(e)) => Err(unavailable(&e)),
        Err(_) => Err(unavailable("reading the stream timed out")),
    }
}
