//! A plain WebSocket echo endpoint on the same WebSocket layer and settings as the protocol
//! endpoint, for conformance testing (the Autobahn suite) of that layer.

use std::time::Duration;

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
        while let Ok(frame) = ws.next_frame().await {
            let opcode = frame.opcode();
            if matches!(opcode, OpCode::Text | OpCode::Binary) {
                if ws.send(frame).await.is_err() {
                    break;
                }
            } else if opcode == OpCode::Close {
                // yawc has queued its close reply: write it, then drop the TCP connection
                // ourselves, as the server should (RFC 6455, 7.1.1). An oversized close
                // frame is a protocol error that yawc would echo: just drop the connection.
                if frame.payload().len() <= crate::conn::MAX_CONTROL_PAYLOAD {
                    let reply = crate::conn::write_close_reply(&mut ws);
                    let _ = tokio::time::timeout(Duration::from_secs(2), reply).await;
                }
                break;
            }
        }
    });
    response.map(axum::body::Body::new)
}
