//! `plexus provide | services`: serve services through a relay, and list its providers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::{StreamExt, stream};
use plexus_client::{Payload, Provided, ReconnectOptions, Router, RpcError, Status};

use super::call::{ConnectArgs, DEFAULT_TIMEOUT, Failure, exit, print_json};
use plexus::sys::{CountParams, SleepParams, Slept, check_ms};

/// Arguments of `provide`.
#[derive(Args, Debug)]
pub(crate) struct ProvideArgs {
    /// Relay URL, e.g. ws://127.0.0.1:8787/ws
    url: String,
    /// This provider's node id, unique among the relay's providers
    #[arg(long)]
    node: String,
    /// A service to provide (repeatable): answers `<SERVICE>.echo`, `.count`, `.sleep` and
    /// `.node`
    #[arg(long = "service", required = true, value_name = "SERVICE")]
    services: Vec<String>,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Arguments of `services`.
#[derive(Args, Debug)]
pub(crate) struct ServicesArgs {
    /// Relay URL, e.g. ws://127.0.0.1:8787/ws
    url: String,
    /// Print the providers, then one line per change (`{"online":..}`, `{"offline":..}`)
    /// until Ctrl-C or --timeout
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// The demo methods of one service, the same as `plexus serve`'s `sys.*`, plus
/// `<service>.node`, which answers the node id (to see which provider answered).
fn service_router(service: &str, node: &str) -> Router {
    let node = node.to_owned();
    Router::new()
        .request(&format!("{service}.echo"), |params: Payload| async move {
            Ok::<_, RpcError>(params)
        })
        .request(&format!("{service}.node"), move |_: Payload| {
            let node = node.clone();
            async move { Ok::<_, RpcError>(node) }
        })
        .stream(&format!("{service}.count"), |p: CountParams| async move {
            let interval = check_ms("interval_ms", p.interval_ms)?;
            let items = stream::unfold(0u64, move |i| async move {
                if i >= p.n {
                    return None;
                }
                if i > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                Some((Ok::<_, RpcError>(i), i + 1))
            });
            Ok::<_, RpcError>(items)
        })
        .request(&format!("{service}.sleep"), |p: SleepParams| async move {
            tokio::time::sleep(check_ms("ms", p.ms)?).await;
            Ok::<_, RpcError>(Slept { slept: p.ms })
        })
}

pub(crate) async fn provide(args: ProvideArgs) -> ExitCode {
    exit(
        async {
            let router = args
                .services
                .iter()
                .fold(Router::new(), |router, service| {
                    router.merge(service_router(service, &args.node))
                });
            // A provider stays: it reconnects (and provides again) until stopped.
            let client = args
                .conn
                .connect_providing(
                    &args.url,
                    router,
                    &args.node,
                    &args.services,
                    // A provider may start before its relay: it waits for it, and comes back
                    // whenever the relay does.
                    ReconnectOptions::default().max_attempts(Some(u32::MAX)),
                )
                .await?;
            let mut provided = client.provided();
            let mut status = client.status();
            let outcome = loop {
                let state = provided.borrow_and_update().clone();
                match state {
                    Provided::Node(node) => eprintln!(
                        "providing {} as node {node} through {}",
                        args.services.join(", "),
                        args.url
                    ),
                    Provided::Refused(error) => {
                        break Err(Failure::remote(error));
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = provided.changed() => if changed.is_err() { break Ok(()) },
                    _ = status.wait_for(|s| *s == Status::Closed) => {
                        break Err(Failure::local("UNAVAILABLE", format!("lost {} for good", args.url)));
                    }
                    _ = super::shutdown_signal() => break Ok(()),
                }
            };
            client.close().await;
            outcome
        }
        .await,
    )
}

pub(crate) async fn services(args: ServicesArgs) -> ExitCode {
    exit(
        async {
            let client = args.conn.connect(&args.url).await?;
            let outcome = if args.watch {
                watch(&client, args.conn.timeout()).await
            } else {
                let answer = client
                    .request::<Payload>("$services", &())
                    .timeout(args.conn.timeout().unwrap_or(DEFAULT_TIMEOUT))
                    .await;
                answer
                    .map_err(Failure::from)
                    .and_then(|list| print_json(&list))
            };
            client.close().await;
            outcome
        }
        .await,
    )
}

/// Prints the `$watch` items as they come, until Ctrl-C or `limit`.
async fn watch(client: &plexus_client::Client, limit: Option<Duration>) -> Result<(), Failure> {
    let mut items = client.stream::<Payload>("$watch", &()).await?;
    let until = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    loop {
        tokio::select! {
            item = items.next() => match item {
                Some(Ok(item)) => print_json(&item)?,
                Some(Err(e)) => return Err(Failure::from(e)),
                None => return Ok(()),
            },
            _ = &mut until => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
