//! [`Router`]: the methods the server may call on this client, shaped like the server's
//! router: request, notification and stream handlers over serde types, returning
//! [`RpcError`] (the same error type a server handler returns).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use plexus_protocol::{ErrorBody, Payload, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A reply, in the codec of the call it answers.
pub(crate) type Reply = Result<Payload, ErrorBody>;
pub(crate) type RequestFn = Arc<dyn Fn(Payload) -> BoxFuture<'static, Reply> + Send + Sync>;
pub(crate) type NotifyFn = Arc<dyn Fn(Payload) -> BoxFuture<'static, ()> + Send + Sync>;
pub(crate) type StreamFn = Arc<
    dyn Fn(Payload) -> BoxFuture<'static, Result<BoxStream<'static, Reply>, ErrorBody>>
        + Send
        + Sync,
>;

/// What a method is.
#[derive(Clone)]
pub(crate) enum Method {
    Request(RequestFn),
    Notify(NotifyFn),
    Stream(StreamFn),
}

impl Method {
    fn kind(&self) -> &'static str {
        match self {
            Method::Request(_) => "request",
            Method::Notify(_) => "notification",
            Method::Stream(_) => "stream",
        }
    }
}

/// The methods the server may call on this client (`req`, `ntf` and `sub` frames the
/// server sends), by name. Give it to the client with
/// [`ClientOptions::router`](crate::ClientOptions::router).
///
/// Each handler is an async function or closure taking the params (any
/// `DeserializeOwned` type, or [`Payload`] as they came): request handlers return
/// `Result<R, E>` with `R: Serialize` (or [`Payload`]) and `E: Into<RpcError>`; stream
/// handlers return `Result<S, E>` where `S` is a stream of `Result<T, E2>`; notification
/// handlers return nothing. Params that do not fit get `VALIDATION_ERROR` naming the field
/// (a notification's are logged and dropped); a panic gets `INTERNAL`; a method nobody
/// registered gets `NOT_FOUND`.
///
/// ```
/// use futures_util::stream;
/// use plexus_client::{Router, RpcError};
///
/// let router = Router::new()
///     .request("client.add", |(a, b): (i64, i64)| async move { Ok::<_, RpcError>(a + b) })
///     .notify("client.note", |text: String| async move { println!("{text}") })
///     .stream("client.count", |n: u64| async move {
///         Ok::<_, RpcError>(stream::iter((0..n).map(Ok::<_, RpcError>)))
///     });
/// assert!(router.contains("client.add"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    methods: HashMap<Arc<str>, Method>,
    /// Takes the notifications no method of this router serves.
    other_notifications: Option<NotifyAny>,
}

/// A handler of any notification: its method and params, as they came.
pub(crate) type NotifyAny = Arc<dyn Fn(&str, Payload) + Send + Sync>;

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self
            .methods
            .iter()
            .map(|(name, method)| (name, method.kind()))
            .collect();
        methods.sort_unstable();
        f.debug_struct("Router").field("methods", &methods).finish()
    }
}

/// Decodes a handler's params; a mismatch is a `VALIDATION_ERROR` naming the field.
fn params<P: DeserializeOwned + 'static>(payload: Payload) -> Result<P, ErrorBody> {
    payload
        .decode_as()
        .map_err(|e| RpcError::invalid_params(&e).into_body())
}

/// Encodes a handler's result in the codec of the call.
fn result<R: Serialize + 'static>(codec: plexus_protocol::Codec, value: R) -> Reply {
    Payload::encode_as(codec, value).map_err(|e| {
        tracing::warn!("cannot encode a handler's result: {e}");
        RpcError::internal(format!("result not serializable: {e}")).into_body()
    })
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, name: &str, method: Method) -> Self {
        assert!(
            !name.is_empty() && !name.starts_with('$'),
            "method names must be non-empty and not start with `$` (reserved for built-ins \
             such as `$refresh`): {name:?}"
        );
        if self.methods.insert(name.into(), method).is_some() {
            panic!("method {name:?} registered twice");
        }
        self
    }

    /// Registers a request handler. Panics if the name is taken or reserved (`$...`).
    pub fn request<P, R, E, F, Fut>(self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<RpcError> + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        let start = move |payload: Payload| -> BoxFuture<'static, Reply> {
            let codec = payload.codec();
            match params::<P>(payload) {
                Ok(p) => {
                    let running = handler(p);
                    Box::pin(async move {
                        match running.await {
                            Ok(value) => result(codec, value),
                            Err(e) => Err(e.into().into_body()),
                        }
                    })
                }
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        };
        self.insert(name, Method::Request(Arc::new(start)))
    }

    /// Registers a notification handler. Params that do not fit are logged at debug level
    /// and dropped. Panics if the name is taken or reserved.
    pub fn notify<P, F, Fut>(self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let method: Arc<str> = name.into();
        let start = move |payload: Payload| -> BoxFuture<'static, ()> {
            match payload.decode_as::<P>() {
                Ok(p) => Box::pin(handler(p)),
                Err(e) => {
                    tracing::debug!(method = %method, path = e.path(), "dropping a notification with bad params: {e}");
                    Box::pin(std::future::ready(()))
                }
            }
        };
        self.insert(name, Method::Notify(Arc::new(start)))
    }

    /// Registers a stream handler: each item goes out as `item`, the end as `end`, an error
    /// item as `err` (which ends the stream); a `cancel` from the server drops it, and the
    /// server's credit is honoured. Panics if the name is taken or reserved.
    pub fn stream<P, T, E, E2, S, F, Fut>(self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<RpcError> + 'static,
        E2: Into<RpcError> + 'static,
        S: Stream<Item = Result<T, E2>> + Send + 'static,
        F: Fn(P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
    {
        let start = move |payload: Payload| -> BoxFuture<'static, Result<BoxStream<'static, Reply>, ErrorBody>> {
            let codec = payload.codec();
            match params::<P>(payload) {
                Ok(p) => {
                    let opening = handler(p);
                    Box::pin(async move {
                        match opening.await {
                            Ok(items) => Ok(items
                                .map(move |item| match item {
                                    Ok(value) => result(codec, value),
                                    Err(e) => Err(e.into().into_body()),
                                })
                                .boxed()),
                            Err(e) => Err(e.into().into_body()),
                        }
                    })
                }
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        };
        self.insert(name, Method::Stream(Arc::new(start)))
    }

    /// Hands every notification no method of this router serves to `handler`, with its
    /// method and params as they came (otherwise they are logged at debug level and
    /// dropped). It runs on the connection's task: hand the work on, do not block.
    pub fn notify_any<F>(mut self, handler: F) -> Self
    where
        F: Fn(&str, Payload) + Send + Sync + 'static,
    {
        self.other_notifications = Some(Arc::new(handler));
        self
    }

    /// Adds every method of `other`. Panics on a name registered in both. `other`'s
    /// [`notify_any`](Self::notify_any) handler, if any, replaces this one's.
    pub fn merge(mut self, other: Router) -> Self {
        for (name, method) in other.methods {
            self = self.insert(&name, method);
        }
        if other.other_notifications.is_some() {
            self.other_notifications = other.other_notifications;
        }
        self
    }

    pub(crate) fn other_notifications(&self) -> Option<&NotifyAny> {
        self.other_notifications.as_ref()
    }

    /// Whether a method of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }
}
