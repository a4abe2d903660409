//! A chat room on typed contracts: the API is declared once (`contracts.rs`), served by the
//! room (`room.rs`), called by the Rust client (`chat client`) and by the TypeScript page
//! (`web/chat.ts`, its types generated from the server's `$contracts`).

pub mod contracts;
pub mod room;

use axum::response::Html;
use axum::routing::get;
use plexus::Router;

use contracts::{ChatContract, MemberContract};
use room::Room;

/// The page (`web/index.html`) and its script (`web/chat.js`, built from `web/chat.ts` by
/// `web/build.mjs`).
const PAGE: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/chat.js");

/// The plexus methods: `chat.*` served by `room`, and the `member` contract described so
/// that `$contracts` (and the TypeScript generated from it) lists what the server calls on
/// clients.
pub fn router(room: Room) -> Router {
    plexus::sys::router()
        .merge(ChatContract::router(room))
        .describe(MemberContract::client_schema())
}

/// The page's routes: `/` and `/chat.js`.
pub fn page() -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/chat.js",
            get(|| async { ([("content-type", "text/javascript; charset=utf-8")], SCRIPT) }),
        )
}
