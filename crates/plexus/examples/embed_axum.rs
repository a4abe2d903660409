//! Embedding plexus in your own axum app: the WebSocket endpoint sits beside your routes.
//!
//! Run: `cargo run -p plexus --example embed_axum`, then
//! `plexus call ws://127.0.0.1:3000/ws greet.hello '{"name":"Ada"}'`.

use axum::routing::get;
use plexus::server::{CallContext, Router, RpcError, Server};
use serde::Deserialize;

#[derive(Deserialize)]
struct Greet {
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let methods = Router::new()
        .request("greet.hello", |p: Greet| async move {
            Ok::<_, RpcError>(format!("hello, {}", p.name))
        })
        .request("conn.id", |ctx: CallContext, _: ()| async move {
            Ok::<_, RpcError>(ctx.connection_id().to_owned())
        });
    let plexus = Server::builder().router(methods).build();

    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(plexus.route("/ws"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    // Ctrl-C: stop accepting, let calls in flight finish, close connections with 1001.
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    plexus.serve(listener, app, ctrl_c).await?;
    Ok(())
}
