//! A relay, a provider and a caller in one process: the provider serves `Greeting` through
//! the relay, and the caller reaches it without knowing where it runs. In a real mesh each
//! runs in its own process (see `plexus relay` and `plexus provide`).
//!
//! Run: `cargo run -p plexus --example relay`.

use std::time::Duration;

use plexus::client::{ClientOptions, Router, RpcError, connect};
use plexus::server::{RelayConfig, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The relay: a plexus server with relaying on.
    let relay = Server::builder().relay(RelayConfig::default()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let app = relay.route("/ws");
    tokio::spawn(async move { relay.serve(listener, app, std::future::pending()).await });

    // A provider: the client's router, provided again after every reconnect.
    let router = Router::new().request("Greeting.hello", |name: String| async move {
        Ok::<_, RpcError>(format!("hello, {name}"))
    });
    let provider = connect(
        &url,
        ClientOptions::default()
            .router(router)
            .provide("a", ["Greeting"]),
    )
    .await?;

    // A caller.
    let caller = connect(&url, ClientOptions::default()).await?;
    caller
        .wait_for_service("Greeting", Duration::from_secs(5))
        .await?;
    let text: String = caller
        .request("Greeting.hello", "Ada")
        .offline_retries(3) // while no provider has it: 100 ms to 2 s backoff
        .fallback("hello, whoever".into()) // instead of SERVICE_OFFLINE
        .await?;
    println!("{text}");

    caller.close().await;
    provider.close().await;
    Ok(())
}
