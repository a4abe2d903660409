//! The HTTP API for backends in any language: publish, broadcast, channels, presence,
//! disconnect, server-side subscriptions, messages to raw sockets. Guarded by an API key sent as `Authorization: apikey KEY`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_protocol::{CloseCode, Codec, ErrorBody, ErrorCode, Payload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::endpoint::Server;

/// Most channels one broadcast may name.
const MAX_BROADCAST: usize = 1000;

struct ApiState {
    server: Server,
    key: String,
}

/// Answers with `{"error":{"code","message"}}` and a status that fits the code.
struct ApiError(ErrorBody);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.0.code.as_str() {
            "NOT_AUTHORIZED" => StatusCode::UNAUTHORIZED,
            "FORBIDDEN" => StatusCode::FORBIDDEN,
            "NOT_FOUND" => StatusCode::NOT_FOUND,
            "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
            "VALIDATION_ERROR" | "BAD_FRAME" => StatusCode::BAD_REQUEST,
            "TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
            "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = json!({"error": {"code": self.0.code.as_str(), "message": self.0.message}});
        (status, Json(body)).into_response()
    }
}

impl From<crate::hub::HubError> for ApiError {
    fn from(e: crate::hub::HubError) -> Self {
        Self(e.into_body())
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self(body)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError(ErrorBody::new(ErrorCode::VALIDATION_ERROR, message))
}

/// Compares in time independent of where the strings differ.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "))
        .map(str::trim);
    match given {
        Some(key) if same_key(key.as_bytes(), state.key.as_bytes()) => Ok(()),
        _ => Err(ApiError(ErrorBody::new(
            ErrorCode::NOT_AUTHORIZED,
            "send the API key as `Authorization: apikey KEY`",
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    data: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    channels: Vec<String>,
    data: serde_json::Value,
}

#[derive(Serialize)]
struct Published {
    channel: String,
    epoch: String,
    offset: u64,
}

#[derive(Deserialize)]
struct PresenceQuery {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: Option<String>,
    conn: Option<String>,
    /// The close code: 1000 (the default; clients reconnect), 4001 (clients reconnect only
    /// with a fresh credential) or 4003 (clients do not reconnect).
    code: Option<u16>,
}

/// A server-side subscription to make or end.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    conn: String,
    channel: String,
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(body: Body<T>) -> Result<T, ApiError> {
    body.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(ErrorBody::new(ErrorCode::TOO_LARGE, rejection.body_text()))
        } else {
            invalid(rejection.body_text())
        }
    })
}

async fn publish(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Publish>,
) -> Result<Json<Published>, ApiError> {
    authorize(&state, &headers)?;
    let request = body(request)?;
    let data = Payload::encode(Codec::Json, &request.data).map_err(|e| invalid(e.to_string()))?;
    let position = state.server.hub().publish(&request.channel, data).await?;
    Ok(Json(Published {
        channel: request.channel,
        epoch: position.epoch,
        offset: position.offset,
    }))
}

async fn broadcast(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Broadcast>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let request = body(request)?;
    if request.channels.len() > MAX_BROADCAST {
        return Err(invalid(format!(
            "at most {MAX_BROADCAST} channels per broadcast"
        )));
    }
    // Encoded once, shared by every channel.
    let data = Payload::encode(Codec::Json, &request.data).map_err(|e| invalid(e.to_string()))?;
    let mut results = Vec::with_capacity(request.channels.len());
    for channel in request.channels {
        results.push(match state.server.hub().publish(&channel, data.clone()).await {
            Ok(position) => json!({"channel": channel, "epoch": position.epoch, "offset": position.offset}),
            Err(error) => json!({"channel": channel, "error": {"code": error.code().as_str(), "message": error.message()}}),
        });
    }
    Ok(Json(json!({ "results": results })))
}

async fn channels(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let mut channels = state.server.hub().channels();
    channels.sort();
    let channels: Vec<_> = channels
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

async fn presence(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let members = state.server.hub().presence(&query.channel).await?;
    Ok(Json(json!({ "members": members })))
}

/// What the API answers count for a connection: 1 if this node holds it. One on another node
/// is reached through the engine, and this node cannot tell whether it exists.
fn held_here(hub: &crate::hub::Hub, conn: &str) -> usize {
    usize::from(hub.connection(conn).is_some())
}

/// `POST /api/subscribe`: the connection gets `joined`, then the channel's publications.
async fn subscribe(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Subscribe>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let request = body(request)?;
    let hub = state.server.hub();
    let here = held_here(hub, &request.conn);
    hub.subscribe(&request.conn, &request.channel).await?;
    Ok(Json(json!({ "subscribed": here })))
}

/// `POST /api/unsubscribe`: the connection gets `left`.
async fn unsubscribe(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Subscribe>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let request = body(request)?;
    let hub = state.server.hub();
    let here = held_here(hub, &request.conn);
    hub.unsubscribe(&request.conn, &request.channel).await?;
    Ok(Json(json!({ "unsubscribed": here })))
}

async fn disconnect(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Disconnect>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let request = body(request)?;
    let hub = state.server.hub();
    const REASON: &str = "disconnected by the server";
    let code = match request.code {
        None | Some(1000) => CloseCode::NORMAL,
        Some(4001) => CloseCode::NOT_AUTHORIZED,
        Some(4003) => CloseCode::FORBIDDEN,
        Some(other) => {
            return Err(invalid(format!(
                "`code` must be 1000, 4001 or 4003, not {other}"
            )));
        }
    };
    // Connections on other nodes are reached through the engine; the count is this node's.
    let count = match (request.user, request.conn) {
        (Some(user), None) => hub.disconnect_user(&user, code, REASON).await?,
        (None, Some(conn)) => {
            let here = held_here(hub, &conn);
            hub.disconnect(&conn, code, REASON).await?;
            here
        }
        _ => return Err(invalid("give exactly one of `user` and `conn`")),
    };
    Ok(Json(json!({ "disconnected": count })))
}

/// A message for a raw socket.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    conn: String,
    /// The text, or with `"type":"binary"` the bytes in base64.
    data: String,
    /// `text` (the default) or `binary`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /api/send`: a message to a raw socket, on any node.
async fn send(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Body<Send>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use base64::Engine as _;
    authorize(&state, &headers)?;
    let request = body(request)?;
    let message = match request.kind.as_deref() {
        None | Some("text") => crate::conn::RawMessage::text(request.data),
        Some("binary") => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(request.data.as_bytes())
                .map_err(|e| invalid(format!("`data` is not base64: {e}")))?;
            crate::conn::RawMessage::binary(bytes)
        }
        Some(other) => {
            return Err(invalid(format!("`type` is text or binary, not `{other}`")));
        }
    };
    let hub = state.server.hub();
    let here = held_here(hub, &request.conn);
    hub.send(&request.conn, message).await?;
    Ok(Json(json!({ "sent": here })))
}

impl Server {
    /// The HTTP API under `/api`, guarded by `api_key` (sent as `Authorization: apikey KEY`;
    /// 401 without it): `POST /api/publish` `{"channel","data"}`, `POST /api/broadcast`
    /// `{"channels":[...],"data"}`, `GET /api/channels`, `GET /api/presence?channel=`,
    /// `POST /api/disconnect` `{"user"}` or `{"conn"}`, with an optional close `code` (1000,
    /// 4001, 4003), `POST /api/subscribe` and `POST /api/unsubscribe` `{"conn","channel"}`
    /// (server-side subscriptions, on any node), `POST /api/send` `{"conn","data"}` (a
    /// text message to a raw socket, on any node; `"type":"binary"` with `data` in base64).
    /// Bodies are limited to the endpoint's message size.
    pub fn api_routes(&self, api_key: impl Into<String>) -> Router {
        let state = Arc::new(ApiState {
            server: self.clone(),
            key: api_key.into(),
        });
        Router::new()
            .route("/api/publish", post(publish))
            .route("/api/broadcast", post(broadcast))
            .route("/api/channels", get(channels))
            .route("/api/presence", get(presence))
            .route("/api/disconnect", post(disconnect))
            .route("/api/subscribe", post(subscribe))
            .route("/api/unsubscribe", post(unsubscribe))
            .route("/api/send", post(send))
            .layer(DefaultBodyLimit::max(self.config().limits.max_message_size))
            .with_state(state)
    }
}
