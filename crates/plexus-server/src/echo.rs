//! A plain WebSocket echo endpoint on the same WebSocket layer and settings as the protocol
//! endpoint, for conformance testing (the Autobahn suite) of that layer.

use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use http::StatusCode;
use yawc::OpCode;

use crate::config::EndpointConfig;

/// An axum router with an echo endpoint at `path`: every text and binary message comes back
/// unchanged. Messages up to 16 MiB are accepted.
pub fn echo_route(path: &str, config: &EndpointConfig) -> axum::Router {
    let mut config = config.clone();
    config.limits.max_message_size = 16 << 20;
    let options = config.ws_options();
    axum::Router::new().route(
        path,
        get(move |request: Request| {
            let options = options.clone();
            async move { echo(request, options).await }
        }),
    )
}

async fn echo(request: Request, options: yawc::Options) -> Response {
    let (mut parts, _) = request.into_parts();
    let upgrade = match yawc::IncomingUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(status) => return (status, "expected a WebSocket upgrade request").into_response(),
    };
    let (response, fut) = match upgrade.upgrade(options) {
        Ok(pair) => pair,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    tokio::spawn(async move {
        let Ok(mut ws) = fut.await else { return };
        // Keep reading until the socket ends: yawc writes its close reply on a read poll.
        while let Ok(frame) = ws.next_frame().await {
            if matches!(frame.opcode(), OpCode::Text | OpCode::Binary)
                && ws.send(frame).await.is_err()
            {
                break;
            }
        }
    });
    response.map(axum::body::Body::new)
}
