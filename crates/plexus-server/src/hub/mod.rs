//! The hub: this node's connections and channels, and the way to everything beyond the node.
//!
//! What must agree across nodes (positions, history, presence, messages for connections held
//! elsewhere) lives in the [`Engine`]; the hub keeps only this node's part. It is made of
//! parts with a name each:
//!
//! - `registry.rs`: this node's connections, by id;
//! - `cluster.rs`: the link to other nodes (messages for their connections, requests and
//!   replies across nodes), and what this node does with theirs;
//! - `remote_stream.rs`: streams to connections on other nodes, with credit across nodes;
//! - `local.rs`: the channels this node has subscribers for, and their subscribers;
//! - `join.rs`: joining (with recovery) and leaving;
//! - `fanout.rs`: a publication to every subscriber, encoded once per codec;
//! - `builtins.rs`: `$presence` and `$history`;
//! - `sink.rs`: what the engine hands to this node;
//! - `filter.rs`: delivery filters;
//! - `metered_engine.rs`: the engine with its operations counted;
//! - `nodes.rs`: the live nodes of the cluster, each announced by itself.

mod builtins;
mod cluster;
mod error;
mod fanout;
mod filter;
mod follow;
mod join;
mod local;
mod metered_engine;
mod nodes;
mod pipe;
mod registry;
mod remote_stream;
mod sink;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use plexus_engine::{Engine, EngineSink, NodeMessage, RawData};
use plexus_protocol::{CloseCode, Codec, ErrorCode, IntoPayload, Payload, Position};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{HubError, HubErrorKind};
pub(crate) use follow::Followed;
pub use nodes::NodeInfo;
pub(crate) use pipe::publication_of;
pub use plexus_engine::{Member, Publication};
pub(crate) use remote_stream::RemoteStream;

use crate::channel::{ChannelAction, ChannelOptions, Namespaces};
use crate::conn::{ConnectionHandle, RawMessage, decode_answer};
use crate::error::shown;
use cluster::Cluster;
use join::JoinReply;
use local::LocalChannels;
use registry::Registry;
use sink::HubSink;

/// Publications of a channel from its history.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The channel's current position.
    pub position: Position,
    /// The publications returned, oldest first.
    pub publications: Vec<Publication>,
}

struct HubInner {
    namespaces: Namespaces,
    engine: Arc<dyn Engine>,
    registry: Registry,
    channels: LocalChannels,
    cluster: Cluster,
    remote_streams: remote_stream::RemoteStreams,
    followers: follow::Followers,
}

/// The node's hub: publish to channels, presence and history, reach connections anywhere
/// in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.cluster.node)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub serving the channels that `namespaces` describes, on its own in-memory engine.
    pub fn new(namespaces: Namespaces) -> Self {
        Self::with_engine(
            namespaces,
            Arc::new(plexus_engine::MemoryEngine::new()),
            "local",
        )
    }

    /// A hub on `engine`, as node `node`. The engine is started here: its `start` should
    /// complete without waiting (connect to the backend before); if it does not, it is
    /// finished on the current tokio runtime.
    pub fn with_engine(namespaces: Namespaces, engine: Arc<dyn Engine>, node: &str) -> Self {
        let engine: Arc<dyn Engine> = Arc::new(metered_engine::MeteredEngine::new(engine));
        let inner = Arc::new(HubInner {
            namespaces,
            engine: engine.clone(),
            registry: Registry::default(),
            channels: LocalChannels::default(),
            cluster: Cluster::new(node),
            remote_streams: remote_stream::RemoteStreams::default(),
            followers: follow::Followers::default(),
        });
        let sink: Arc<dyn EngineSink> = Arc::new(HubSink(Arc::downgrade(&inner)));
        let node = node.to_owned();
        let start = async move {
            if let Err(e) = engine.start(&node, sink).await {
                tracing::error!(error = %e, "the channel engine did not start");
            }
        };
        let mut start = Box::pin(start);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if start.as_mut().poll(&mut cx).is_pending() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(start);
                }
                Err(_) => tracing::error!("the channel engine needs a tokio runtime to start"),
            }
        }
        Self { inner }
    }

    /// Whether any namespace is configured (otherwise channel frames get `NOT_FOUND`).
    pub fn has_channels(&self) -> bool {
        !self.inner.namespaces.is_empty()
    }

    fn options(&self, name: &str) -> Result<Arc<ChannelOptions>, HubError> {
        self.inner.namespaces.resolve(name).ok_or_else(|| {
            HubError::new(
                ErrorCode::NOT_FOUND,
                format!("no channel namespace matches `{}`", shown(name)),
            )
        })
    }

    // ---- channels ------------------------------------------------------------------------

    /// Publishes `data` to `channel` (whatever its `client_publish` setting); returns the
    /// publication's position. `data` is any `&T: Serialize`, or a [`Payload`] as it is.
    pub async fn publish(
        &self,
        channel: &str,
        data: impl IntoPayload,
    ) -> Result<Position, HubError> {
        let data = data
            .into_payload(Codec::Json)
            .map_err(|e| HubError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        let options = self.options(channel)?;
        self.publish_with(channel, data, &options).await
    }

    /// Publishes through the engine, counted in the namespace's series.
    async fn publish_with(
        &self,
        channel: &str,
        data: Payload,
        options: &ChannelOptions,
    ) -> Result<Position, HubError> {
        let position = self
            .inner
            .engine
            .publish(channel, data, &options.retention())
            .await?;
        options.meter().publications.increment(1);
        Ok(position)
    }

    /// A publication from a client: allowed only where the namespace says so.
    pub(crate) async fn client_publish(
        &self,
        conn: &ConnectionHandle,
        name: &str,
        data: Payload,
    ) -> Result<Position, HubError> {
        let options = self.options(name)?;
        if !options.client_publish || !options.allows(conn, name, ChannelAction::Publish) {
            return Err(HubError::new(
                ErrorCode::FORBIDDEN,
                format!("clients may not publish to `{}`", shown(name)),
            ));
        }
        self.publish_with(name, data, &options).await
    }

    /// The members of `channel`, across the cluster.
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, HubError> {
        self.options(channel)?;
        Ok(self.inner.engine.members(channel).await?)
    }

    /// The publications of `channel` after `since` (all kept, without it), at most `limit`.
    pub async fn history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: Option<usize>,
    ) -> Result<History, HubError> {
        self.options(channel)?;
        let page = self.inner.engine.history(channel, since, limit).await?;
        let (name, epoch): (Arc<str>, Arc<str>) =
            (channel.into(), page.position.epoch.as_str().into());
        let publications = page
            .publications
            .into_iter()
            .map(|(offset, data)| Publication {
                channel: name.clone(),
                epoch: epoch.clone(),
                offset,
                data,
            })
            .collect();
        Ok(History {
            position: page.position,
            publications,
        })
    }

    /// Every channel this node has subscribers for, with their number.
    pub fn channels(&self) -> Vec<(String, usize)> {
        self.inner.channels.list()
    }

    // ---- connections, on this node or another ---------------------------------------------

    /// The connection with this id, if it is on this node.
    pub fn connection(&self, id: &str) -> Option<ConnectionHandle> {
        self.inner.registry.get(id)
    }

    /// Whether the engine has its link to the broker (always, for the memory engine).
    pub fn engine_available(&self) -> bool {
        self.inner.engine.available()
    }

    /// Sends a notification to the connection `conn`, on this node or another one. A
    /// connection on another node is reached through the engine, which does not report
    /// back: `Ok` then means the message was handed on.
    pub async fn notify<P: Serialize + ?Sized>(
        &self,
        conn: &str,
        method: &str,
        params: &P,
    ) -> Result<(), HubError> {
        let data = &Payload::encode(Codec::Json, params)
            .map_err(|e| HubError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        self.on_connection(
            conn,
            |handle| async move { Ok(handle.notify_raw(method, data.clone())?) },
            || NodeMessage::Notify {
                conn: conn.to_owned(),
                method: method.to_owned(),
                data: data.clone(),
            },
        )
        .await
    }

    /// Writes `message` to the raw socket `conn`, on this node or another one (where it
    /// goes through the engine, which does not report back: `Ok` then means handed on).
    /// A full outbound queue closes the socket with 4008 and fails; a protocol connection
    /// takes no raw messages (`NOT_FOUND`).
    pub async fn send(&self, conn: &str, message: RawMessage) -> Result<(), HubError> {
        let message = &message;
        self.on_connection(
            conn,
            |handle| async move { Ok(handle.send_message(message.clone())?) },
            || NodeMessage::Write {
                conn: conn.to_owned(),
                message: match message.as_text() {
                    Some(text) => RawData::Text(text.to_owned()),
                    None => RawData::Binary(message.bytes().to_vec()),
                },
            },
        )
        .await
    }

    /// Sends a request to the connection `conn`, on this node or another one, and waits up
    /// to `timeout` for the client's answer. The client gets `cancel` when the time is up
    /// and the call fails with `TIMEOUT`, as it does when no node holds `conn`. Dropping the
    /// future before then also sends the client `cancel`, wherever it is.
    ///
    /// `params` is any `&T: Serialize`, or a [`Payload`] as it is; `R` any
    /// `DeserializeOwned` type, or [`Payload`] for the answer as it came.
    pub async fn request<R: DeserializeOwned + 'static>(
        &self,
        conn: &str,
        method: &str,
        params: impl IntoPayload,
        timeout: Duration,
    ) -> Result<R, HubError> {
        if let Some(handle) = self.connection(conn) {
            return Ok(handle.request_timeout(method, params, timeout).await?);
        }
        let data = params
            .into_payload(Codec::Json)
            .map_err(|e| HubError::new(ErrorCode::VALIDATION_ERROR, e.to_string()))?;
        let answer = self.request_elsewhere(conn, method, data, timeout).await?;
        Ok(decode_answer(answer)?)
    }

    /// Subscribes the connection `conn` to `channel` (a server-side subscription): the
    /// client gets a `joined` frame, then the channel's publications. The channel's
    /// namespace must exist; its permissions are the server's to decide, so they are not
    /// checked. A connection on another node is reached through the engine.
    pub async fn subscribe(&self, conn: &str, channel: &str) -> Result<(), HubError> {
        // Checked here too: a connection on another node is subscribed there, where a
        // failure could not be reported back.
        self.options(channel)?;
        self.on_connection(
            conn,
            |handle| async move {
                self.join_as(&handle, channel, None, None, JoinReply::Push, false)
                    .await
            },
            || NodeMessage::Subscribe {
                conn: conn.to_owned(),
                channel: channel.to_owned(),
            },
        )
        .await
    }

    /// Ends the connection's subscription to `channel`; the client gets a `left` frame.
    pub async fn unsubscribe(&self, conn: &str, channel: &str) -> Result<(), HubError> {
        self.on_connection(
            conn,
            |handle| async move {
                self.unsubscribe_local(&handle, channel, None).await;
                Ok(())
            },
            || NodeMessage::Unsubscribe {
                conn: conn.to_owned(),
                channel: channel.to_owned(),
            },
        )
        .await
    }

    /// Closes the connection `conn` with `code` and `reason` (cut to what a close frame
    /// can carry), on this node or another one.
    pub async fn disconnect(
        &self,
        conn: &str,
        code: CloseCode,
        reason: impl Into<Cow<'static, str>>,
    ) -> Result<(), HubError> {
        let reason = &reason.into();
        self.on_connection(
            conn,
            |handle| async move {
                handle.close(code, reason.clone());
                Ok(())
            },
            || NodeMessage::Disconnect {
                conn: conn.to_owned(),
                code: code.0,
                reason: reason.to_string(),
            },
        )
        .await
    }

    /// Closes every connection of `user` with `code`, on every node; returns how many were
    /// on this one.
    pub async fn disconnect_user(
        &self,
        user: &str,
        code: CloseCode,
        reason: impl Into<Cow<'static, str>>,
    ) -> Result<usize, HubError> {
        let reason = reason.into();
        let here = self.inner.registry.close_user(user, code, &reason);
        self.broadcast(NodeMessage::DisconnectUser {
            user: user.to_owned(),
            code: code.0,
            reason: reason.into_owned(),
        })
        .await?;
        Ok(here)
    }

    // ---- what connections do ---------------------------------------------------------------

    /// Wakes every connection's task, to look at the server's flags (shutdown).
    pub(crate) fn kick_all(&self) {
        for conn in self.inner.registry.all() {
            conn.kick();
        }
    }

    pub(crate) fn register(&self, conn: &ConnectionHandle) {
        self.inner.registry.insert(conn);
    }

    /// Forgets a connection that ended, and its subscriptions.
    pub(crate) async fn unregister(&self, conn: &ConnectionHandle) {
        self.inner.registry.remove(conn.id());
        for channel in conn.subscriptions().close() {
            self.leave_local(conn, &channel).await;
        }
    }
}
