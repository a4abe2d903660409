//! Handler traits: how plain async functions and closures over serde types become methods.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use plexus_protocol::{Codec, ErrorBody, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{CallContext, CallState};
use crate::conn::ConnectionHandle;
use crate::error::RpcError;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;
/// A call's outcome, its payload already in the connection's codec.
pub(crate) type Reply = Result<Payload, ErrorBody>;

/// Everything a handler invocation starts from.
#[doc(hidden)]
pub struct CallParts {
    pub(crate) conn: ConnectionHandle,
    pub(crate) id: u64,
    pub(crate) params: Payload,
}

impl CallParts {
    fn codec(&self) -> Codec {
        self.conn.codec()
    }

    /// Builds a context; its cancellation state goes to the connection's in-flight table.
    fn context(&self, state: &mut Option<Arc<CallState>>) -> CallContext {
        let shared = state.get_or_insert_with(Default::default).clone();
        CallContext::new(self.conn.clone(), self.id, shared)
    }
}

/// The output of an erased request handler: its future, and its cancellation state when the
/// handler took a [`CallContext`].
#[doc(hidden)]
pub struct Started<T> {
    pub(crate) future: BoxFuture<T>,
    pub(crate) state: Option<Arc<CallState>>,
}

/// Params for a handler: `Payload` itself passes through untouched (no parse), anything else
/// is deserialized with the bad field's path reported.
fn params<P: DeserializeOwned + 'static>(payload: Payload) -> Result<P, ErrorBody> {
    payload
        .decode_as()
        .map_err(|e| RpcError::invalid_params(&e).into_body())
}

/// A handler's result in the connection's codec: a `Payload` result is passed through.
fn result<R: Serialize + 'static>(codec: Codec, value: R) -> Reply {
    Payload::encode_as(codec, value)
        .map_err(|e| RpcError::internal(format!("result not serializable: {e}")).into_body())
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<T> {
    Box::pin(std::future::ready(value))
}

/// A request handler: an async function or closure taking `(CallContext, P)` or `(P)` and
/// returning `Result<R, E>`, where `P: Deserialize`, `R: Serialize` and `E: Into<RpcError>`.
/// `P` or `R` may be [`Payload`] to take or give the raw value.
pub trait RequestHandler<M>: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn start(&self, parts: CallParts) -> Started<Reply>;
}

/// A notification handler: an async function or closure taking `(CallContext, P)` or `(P)`
/// and returning nothing.
pub trait NotifyHandler<M>: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn start(&self, parts: CallParts) -> Started<Result<(), ErrorBody>>;
}

/// A stream handler: an async function or closure taking `(CallContext, P)` or `(P)` and
/// returning `Result<S, E>` where `S: Stream<Item = Result<T, E2>>`; each `T` is sent as an
/// `item`, the end of `S` as `end`, an `Err` item as `err` (which ends the stream).
pub trait StreamHandler<M>: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn start(&self, parts: CallParts) -> Started<Result<BoxStream<Reply>, ErrorBody>>;
}

macro_rules! impl_handlers {
    ($($ctx:ident)?) => {
        impl<F, Fut, P, R, E> RequestHandler<($($ctx,)? P,)> for F
        where
            F: Fn($($ctx,)? P) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<R, E>> + Send + 'static,
            P: DeserializeOwned + Send + 'static,
            R: Serialize + Send + 'static,
            E: Into<RpcError> + 'static,
        {
            fn start(&self, parts: CallParts) -> Started<Reply> {
                #[allow(unused_mut)]
                let mut state = None;
                $(let ctx: $ctx = parts.context(&mut state);)?
                let codec = parts.codec();
                let future = match params::<P>(parts.params) {
                    Ok(p) => {
                        let fut = self($(impl_handlers!(@pass ctx $ctx),)? p);
                        Box::pin(async move {
                            match fut.await {
                                Ok(value) => result(codec, value),
                                Err(e) => Err(e.into().into_body()),
                            }
                        }) as BoxFuture<Reply>
                    }
                    Err(e) => ready(Err(e)),
                };
                Started { future, state }
            }
        }

        impl<F, Fut, P> NotifyHandler<($($ctx,)? P,)> for F
        where
            F: Fn($($ctx,)? P) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = ()> + Send + 'static,
            P: DeserializeOwned + Send + 'static,
        {
            fn start(&self, parts: CallParts) -> Started<Result<(), ErrorBody>> {
                #[allow(unused_mut)]
                let mut state = None;
                $(let ctx: $ctx = parts.context(&mut state);)?
                let future = match params::<P>(parts.params) {
                    Ok(p) => {
                        let fut = self($(impl_handlers!(@pass ctx $ctx),)? p);
                        Box::pin(async move {
                            fut.await;
                            Ok(())
                        }) as BoxFuture<Result<(), ErrorBody>>
                    }
                    Err(e) => ready(Err(e)),
                };
                Started { future, state }
            }
        }

        impl<F, Fut, P, S, T, E, E2> StreamHandler<($($ctx,)? P,)> for F
        where
            F: Fn($($ctx,)? P) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<S, E>> + Send + 'static,
            P: DeserializeOwned + Send + 'static,
            S: Stream<Item = Result<T, E2>> + Send + 'static,
            T: Serialize + Send + 'static,
            E: Into<RpcError> + 'static,
            E2: Into<RpcError> + 'static,
        {
            fn start(&self, parts: CallParts) -> Started<Result<BoxStream<Reply>, ErrorBody>> {
                #[allow(unused_mut)]
                let mut state = None;
                $(let ctx: $ctx = parts.context(&mut state);)?
                let codec = parts.codec();
                let future = match params::<P>(parts.params) {
                    Ok(p) => {
                        let fut = self($(impl_handlers!(@pass ctx $ctx),)? p);
                        Box::pin(async move {
                            match fut.await {
                                Ok(stream) => Ok(Box::pin(stream.map(move |item| match item {
                                    Ok(value) => result(codec, value),
                                    Err(e) => Err(e.into().into_body()),
                                })) as BoxStream<Reply>),
                                Err(e) => Err(e.into().into_body()),
                            }
                        }) as BoxFuture<Result<BoxStream<Reply>, ErrorBody>>
                    }
                    Err(e) => ready(Err(e)),
                };
                Started { future, state }
            }
        }
    };
    (@pass $ctx:ident $ty:ident) => { $ctx };
}

impl_handlers!();
impl_handlers!(CallContext);
