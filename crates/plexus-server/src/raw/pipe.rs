//! [`ChannelPipe`]: a raw socket handler that pipes foreign clients to channels, so that a
//! client with nothing but a WebSocket (wscat, a device) talks with protocol clients.

use plexus_protocol::CloseCode;

use super::{RawConnection, RawHandler};
use crate::conn::RawMessage;
use crate::hub::publication_of;

/// Pipes each connection at `<base>/<name>` to the channel `<namespace>:<name>`: every text
/// message it sends is published there as a JSON string (a binary one as MessagePack bin,
/// base64 for JSON subscribers), and every publication of the channel is written to it as
/// one message (a string as its text, binary as a binary message, any other value as its
/// JSON text).
///
/// The channel's namespace decides as for any client: joining needs its join permission,
/// and publishing needs `client_publish` and its publish permission. A connection whose path
/// names no channel, that may not join, or whose message may not be published is closed
/// with 1008 and the reason; one the engine cannot take a publication from, with 1011.
#[derive(Clone, Debug)]
pub struct ChannelPipe {
    base: String,
    namespace: String,
}

impl ChannelPipe {
    /// A pipe for an endpoint at `path` (`/pipe/*`, or an exact path whose last segment
    /// names the channel) to channels of `namespace` (`demo` for `demo:*`).
    pub fn new(path: &str, namespace: impl Into<String>) -> Self {
        let base = match path.strip_suffix("/*") {
            Some(base) => base.to_owned(),
            None => path
                .rsplit_once('/')
                .map_or("", |(base, _)| base)
                .to_owned(),
        };
        Self {
            base,
            namespace: namespace.into(),
        }
    }

    /// The channel of a connection at `path`, if the path names one.
    fn channel(&self, path: &str) -> Option<String> {
        let name = path.strip_prefix(&self.base)?.strip_prefix('/')?;
        (!name.is_empty()).then(|| format!("{}:{name}", self.namespace))
    }
}

/// The channel a piped connection publishes to, kept on the connection.
#[derive(Clone)]
struct Piped(std::sync::Arc<str>);

impl RawHandler for ChannelPipe {
    async fn connected(&self, conn: &RawConnection) -> Result<(), String> {
        let Some(channel) = self.channel(conn.path()) else {
            conn.close(CloseCode::POLICY, "the path names no channel");
            return Ok(());
        };
        match conn.hub().pipe(conn.handle(), &channel).await {
            Ok(()) => {
                conn.insert_extension(Piped(channel.into()));
            }
            Err(e) => conn.close(close_code(e.code().as_str()), e.message().to_owned()),
        }
        Ok(())
    }

    async fn message(&self, conn: &RawConnection, message: RawMessage) {
        let Some(Piped(channel)) = conn.extension::<Piped>() else {
            return; // closing: the path named no channel, or joining it was refused
        };
        let data = publication_of(&message);
        if let Err(e) = conn
            .hub()
            .client_publish(conn.handle(), &channel, data)
            .await
        {
            let code = close_code(e.code().as_str());
            tracing::debug!(conn = %conn.id(), %channel, error = %e, "a piped message was not published");
            conn.close(code, e.message().to_owned());
        }
    }
}

/// A refusal (permissions, a bad name, a limit) is a policy close; anything else (the engine
/// failed) an internal one.
fn close_code(error: &str) -> CloseCode {
    match error {
        "FORBIDDEN" | "NOT_FOUND" | "VALIDATION_ERROR" | "TOO_LARGE" | "RATE_LIMITED" => {
            CloseCode::POLICY
        }
        _ => CloseCode::INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelPipe;

    #[test]
    fn the_path_names_the_channel() {
        let pipe = ChannelPipe::new("/pipe/*", "demo");
        assert_eq!(pipe.channel("/pipe/room1").as_deref(), Some("demo:room1"));
        assert_eq!(pipe.channel("/pipe/a/b").as_deref(), Some("demo:a/b"));
        assert_eq!(pipe.channel("/pipe"), None);
        assert_eq!(pipe.channel("/pipe/"), None);
        let exact = ChannelPipe::new("/lobby", "demo");
        assert_eq!(exact.channel("/lobby").as_deref(), Some("demo:lobby"));
    }
}
