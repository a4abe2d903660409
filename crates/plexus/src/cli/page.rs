//! The page `plexus serve` and `plexus relay` show at `/`: a dashboard read from `/metrics` and
//! a demo chat on `demo:chat`. Its HTML and its script (built from `clients/js/page` with the
//! TypeScript client) are in `crates/plexus/assets`, embedded here, so nothing is fetched from
//! anywhere else.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../../assets/index.html");
const SCRIPT: &str = include_str!("../../assets/plexus-page.js");

/// `GET /` and `GET /plexus-page.js`; the page connects to the endpoint at `ws_path`.
pub(crate) fn routes(ws_path: &str) -> axum::Router {
    let index = INDEX.replace("{{WS_PATH}}", &escape_attribute(ws_path));
    axum::Router::new()
        .route(
            "/",
            get(move || {
                let index = index.clone();
                async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], index) }
            }),
        )
        .route("/plexus-page.js", get(script))
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// `text` inside a double-quoted HTML attribute.
fn escape_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
