//! `plexus sub | pub`: channels from the shell.

use std::process::ExitCode;

use clap::Args;
use futures_util::StreamExt;
use plexus_client::{CallOptions, ChannelEvent, JoinOptions, Position, ReconnectOptions};

use super::call::{ConnectArgs, DEFAULT_TIMEOUT, Failure, exit, json_arg, json_text};

/// Arguments of `sub`.
#[derive(Args, Debug)]
pub(crate) struct SubArgs {
    /// Server URL, e.g. ws://127.0.0.1:8787/ws
    url: String,
    /// Channel, e.g. demo:chat
    channel: String,
    /// Recover what was published after this position, as EPOCH:OFFSET (from an earlier
    /// `sub`'s output on stderr)
    #[arg(long, value_parser = parse_position)]
    since: Option<Position>,
    /// Deliver only publications whose top-level fields equal these, e.g. '{"kind":"chat"}'
    #[arg(long)]
    filter: Option<String>,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// Arguments of `pub`.
#[derive(Args, Debug)]
pub(crate) struct PubArgs {
    /// Server URL, e.g. ws://127.0.0.1:8787/ws
    url: String,
    /// Channel, e.g. demo:chat
    channel: String,
    /// The publication, as JSON
    data: String,
    #[command(flatten)]
    conn: ConnectArgs,
}

fn parse_position(text: &str) -> Result<Position, String> {
    let (epoch, offset) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not EPOCH:OFFSET"))?;
    let offset = offset
        .parse()
        .map_err(|_| format!("`{offset}` is not an offset"))?;
    Ok(Position {
        epoch: epoch.to_owned(),
        offset,
    })
}

/// Joins and prints each publication as `{"o":OFFSET,"d":DATA}` on stdout until Ctrl-C or
/// the end of `--timeout`; reconnects (recovering what was missed) when the connection drops.
pub(crate) async fn sub(args: SubArgs) -> ExitCode {
    exit(
        async {
            let mut options = JoinOptions::default();
            if let Some(since) = args.since.clone() {
                options = options.since(since);
            }
            if let Some(filter) = &args.filter {
                let filter = json_arg(Some(filter), "the filter's fields")?;
                options = options.filter(filter);
            }
            let client = args
                .conn
                // `--timeout` is how long to stay subscribed, not how long to connect.
                .connect_with(&args.url, ReconnectOptions::default(), DEFAULT_TIMEOUT)
                .await?;
            let mut subscription = client.join(&args.channel, options).await?;
            let position = subscription.position().clone();
            eprintln!(
                "joined {} at {}:{} (recovered: {})",
                args.channel,
                position.epoch,
                position.offset,
                subscription.recovered()
            );
            // `--timeout` bounds how long the subscription stays open; without it, until Ctrl-C.
            let until = args.conn.timeout().map(|t| tokio::time::Instant::now() + t);
            let outcome = loop {
                tokio::select! {
                    event = subscription.next() => match event {
                        Some(ChannelEvent::Publication(publication)) => {
                            println!("{{\"o\":{},\"d\":{}}}", publication.offset, json_text(&publication.data)?);
                        }
                        Some(ChannelEvent::MemberJoined(member)) => {
                            eprintln!("joined: {} ({})", member.user.as_deref().unwrap_or("anonymous"), member.conn);
                        }
                        Some(ChannelEvent::MemberLeft(member)) => {
                            eprintln!("left: {} ({})", member.user.as_deref().unwrap_or("anonymous"), member.conn);
                        }
                        Some(ChannelEvent::Resubscribed { recovered, position }) => {
                            eprintln!(
                                "rejoined at {}:{} (recovered: {recovered}{})",
                                position.epoch,
                                position.offset,
                                if recovered { "" } else { "; publications were missed" }
                            );
                        }
                        Some(ChannelEvent::Lagged { position }) => {
                            eprintln!("fell behind at {}:{}; recovering", position.epoch, position.offset);
                        }
                        Some(ChannelEvent::Closed(error)) => break Err(Failure::from(error)),
                        Some(_) => {}
                        None => break Ok(()),
                    },
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                    _ = sleep_until(until) => break Ok(()),
                }
            };
            let last = subscription.last_position().clone();
            eprintln!("last position {}:{}", last.epoch, last.offset);
            drop(subscription);
            client.close().await;
            outcome
        }
        .await,
    )
}

/// Publishes and prints the publication's position as `{"epoch":...,"offset":...}`.
pub(crate) async fn publish(args: PubArgs) -> ExitCode {
    exit(
        async {
            let data = json_arg(Some(&args.data), "the publication data")?;
            let client = args.conn.connect(&args.url).await?;
            let options =
                CallOptions::default().timeout(args.conn.timeout().unwrap_or(DEFAULT_TIMEOUT));
            let position = client.publish(&args.channel, data).options(options).await;
            client.close().await;
            let position = position?;
            println!(
                "{}",
                serde_json::json!({"epoch": position.epoch, "offset": position.offset})
            );
            Ok(())
        }
        .await,
    )
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
