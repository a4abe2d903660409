//! The method table: names to handlers.

use std::collections::HashMap;
use std::sync::Arc;

use super::handler::{
    BoxStream, CallParts, NotifyHandler, Reply, RequestHandler, Started, StreamHandler,
};
use plexus_protocol::ErrorBody;

type ErasedRequest = Arc<dyn Fn(CallParts) -> Started<Reply> + Send + Sync>;
type ErasedNotify = Arc<dyn Fn(CallParts) -> Started<Result<(), ErrorBody>> + Send + Sync>;
type ErasedStream =
    Arc<dyn Fn(CallParts) -> Started<Result<BoxStream<Reply>, ErrorBody>> + Send + Sync>;

/// What a method is.
#[derive(Clone)]
pub(crate) enum Method {
    Request(ErasedRequest),
    Notify(ErasedNotify),
    Stream(ErasedStream),
}

impl Method {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Method::Request(_) => "request",
            Method::Notify(_) => "notification",
            Method::Stream(_) => "stream",
        }
    }
}

/// Maps method names (`service.method`) to handlers.
///
/// ```
/// use plexus_server::{CallContext, Router, RpcError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// let router = Router::new()
///     .request("math.add", |p: Add| async move { Ok::<_, RpcError>(p.a + p.b) })
///     .request("who.am_i", |ctx: CallContext, _: ()| async move {
///         Ok::<_, RpcError>(ctx.connection_id().to_owned())
///     });
/// assert!(router.contains("math.add"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    methods: HashMap<Arc<str>, Method>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, name: &str, method: Method) -> Self {
        assert!(
            !name.is_empty() && !name.starts_with('$'),
            "method names must be non-empty and not start with `$` (reserved): {name:?}"
        );
        if self.methods.insert(name.into(), method).is_some() {
            panic!("method {name:?} registered twice");
        }
        self
    }

    /// Registers a request handler. Panics if the name is taken or reserved.
    pub fn request<M, H: RequestHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Request(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Registers a notification handler. Panics if the name is taken or reserved.
    pub fn notify<M, H: NotifyHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Notify(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Registers a stream handler. Panics if the name is taken or reserved.
    pub fn stream<M, H: StreamHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Stream(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Adds every method of `other`. Panics on a name registered in both.
    pub fn merge(mut self, other: Router) -> Self {
        for (name, method) in other.methods {
            self = self.insert(&name, method);
        }
        self
    }

    /// Whether a method of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }
}
