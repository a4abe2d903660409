//! `plexus bench`: load a plexus server with the repository's own load generator
//! (`plexus-loadgen`) and show what it measured. Before loading, one real client makes the
//! call (or the join and the publication) the load will make, so that a refusal is reported
//! with the server's own error instead of as a run full of failures.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use plexus_client::{ClientOptions, ErrorBody, JoinOptions, ReconnectOptions};
use plexus_loadgen::connect::{Scope, Target};
use plexus_loadgen::progress::Progress;
use plexus_loadgen::record::{self, Record};
use plexus_loadgen::template::Template;
use plexus_loadgen::{conns, fanout, rpc};
use serde_json::Value;

use super::parse_duration;

mod report;
mod storm;

/// Arguments of `plexus bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Closed-loop calls: C connections, each sending its next request as soon as the last
    /// one is answered; requests per second and round-trip latency.
    Rpc(RpcArgs),
    /// One publisher and N subscribers on one channel, publishing at a fixed rate or as fast
    /// as the subscribers keep up; deliveries per second, end-to-end latency and loss.
    Fanout(FanoutArgs),
    /// Open N connections and hold them: set-up rate and latency, and with --server-pid the
    /// server's memory and CPU per connection.
    Conns(ConnsArgs),
    /// A reconnect storm: N Rust clients subscribed to one channel while a publisher
    /// publishes; --cut drops them all at once (restart the server on a Redis or NATS
    /// engine, so that history survives); how long until every client is back, the server's
    /// CPU and memory meanwhile, publications lost and delivered twice.
    Storm(StormArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// The server's WebSocket endpoint (ws:// only: measure behind the TLS terminator)
    #[arg(long, default_value = "ws://127.0.0.1:8787/ws", env = "PLEXUS_URL")]
    url: String,
    /// Credential for every connection, sent as `Authorization: Bearer TOKEN`
    #[arg(long, env = "PLEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Load a server on another machine. Without it only loopback addresses are loaded, so
    /// that a mistyped URL cannot flood someone else's server: load only servers you run.
    #[arg(long)]
    allow_remote: bool,
    /// The server's process id, when it runs on this machine: its CPU time per operation
    /// (and in `conns`, its memory per connection) is reported
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the figures as one JSON object instead of the report
    #[arg(long)]
    json: bool,
    /// Stop after this long whatever happens
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    max_runtime: Duration,
    /// Threads generating the load [default: the cores this process may run on]
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct Timing {
    /// How long the load is measured
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// How long the load runs before it is measured
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
}

#[derive(Args, Debug)]
struct RpcArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    timing: Timing,
    /// Connections, each with one request in flight
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// The method called
    #[arg(long, default_value = "sys.echo")]
    method: String,
    /// The params, as JSON; `{pad}` in it stands for --size bytes of `x`
    #[arg(long, default_value = r#"{"pad":"{pad}"}"#)]
    params: String,
    /// Bytes of padding in the params' `{pad}`
    #[arg(long, default_value_t = 0)]
    size: usize,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    timing: Timing,
    /// Subscribers
    #[arg(short = 'n', long, default_value_t = 1000)]
    subscribers: usize,
    /// The channel; its namespace must let these connections join and publish [default: a
    /// new `bench:run-…` channel per run, so that nothing else published there counts]
    #[arg(long)]
    channel: Option<String>,
    /// Publications per second (at least 0.01); 0: as fast as the subscribers keep up (see
    /// --window)
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    rate: f64,
    /// With --rate 0: publications not yet delivered to every subscriber, at most
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Bytes of padding in each publication
    #[arg(long, default_value_t = 0)]
    size: usize,
}

#[derive(Args, Debug)]
struct ConnsArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open and hold
    #[arg(short = 'n', long, default_value_t = 1000)]
    count: usize,
    /// How long to hold them before reading the server's memory
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    hold: Duration,
}

#[derive(Args, Debug)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers (each a real Rust client: its backoff, jitter and recovery)
    #[arg(short = 'n', long, default_value_t = 10_000)]
    subscribers: usize,
    /// The channel; its namespace must keep history (history_size ≥ rate × the outage) and
    /// let these clients join and publish [default: a new `bench:storm-…` channel]
    #[arg(long)]
    channel: Option<String>,
    /// Publications per second, before, during and after the storm
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    rate: f64,
    /// The shell command that drops every connection at once, e.g. a script that kills the
    /// server and starts it again
    #[arg(long)]
    cut: String,
    /// A file where the cut command leaves the server's (new) process id: its CPU and peak
    /// memory during the storm are reported
    #[arg(long)]
    server_pid_file: Option<String>,
    /// Publishing before the cut
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    before: Duration,
    /// Publishing once every client is back
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    after: Duration,
}

/// The frames of plexus's JSON protocol that the load is made of.
const WELCOME: &str = r#"expect:"t":"welcome""#;
const REPLY: &str = r#""id":{seq},"#;
const REFUSAL: &str = r#""t":"err""#;
const JOIN: &str = r#"{"t":"join","id":1,"ch":"{channel}"}"#;
const JOINED: &str = r#""recovered""#;
const PUBLISH: &str =
    r#"{"t":"pub","id":{seq},"ch":"{channel}","d":{"seq":{seq},"ts":{ts},"pad":"{pad}"}}"#;

impl BenchArgs {
    fn common(&self) -> &Common {
        match &self.scenario {
            Scenario::Rpc(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
            Scenario::Conns(a) => &a.common,
            Scenario::Storm(a) => &a.common,
        }
    }
}

/// The runtime the load runs on.
pub(crate) fn runtime(args: &BenchArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = args.common().threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    plexus_loadgen::runtime(threads)
}

pub(crate) async fn bench(args: BenchArgs) -> ExitCode {
    let common = args.common();
    let scenario = match &args.scenario {
        Scenario::Rpc(_) => "rpc",
        Scenario::Fanout(_) => "fanout",
        Scenario::Conns(_) => "conns",
        Scenario::Storm(_) => "storm",
    };
    if let Scenario::Storm(storm) = &args.scenario {
        return run_storm(storm).await;
    }
    let outcome = tokio::time::timeout(common.max_runtime, run(&args.scenario)).await;
    let record = match outcome {
        Ok(Ok(record)) => record,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!(
                "error: --max-runtime of {:?} reached; stopped",
                common.max_runtime
            );
            return ExitCode::FAILURE;
        }
    };
    if common.json {
        let labels = record::labels(&common.url, scenario, 0, scenario);
        println!("{}", record.to_json(&labels));
    } else {
        print!("{}", report::text(scenario, &record));
    }
    ExitCode::SUCCESS
}

async fn run(scenario: &Scenario) -> anyhow::Result<Record> {
    let progress = Arc::new(Progress::default());
    match scenario {
        Scenario::Rpc(args) => {
            let pad = "x".repeat(args.size);
            let params = args.params.replace("{pad}", &pad);
            let params: Value = serde_json::from_str(&params)
                .map_err(|e| anyhow::anyhow!("--params is not JSON ({e}): {params}"))?;
            preflight(&args.common, async |client| {
                client.request::<Value>(&args.method, &params).await?;
                Ok(())
            })
            .await?;
            let request = format!(
                r#"{{"t":"req","id":{{seq}},"m":{},"d":{}}}"#,
                Value::from(args.method.as_str()),
                args.params
            );
            let run = rpc::Rpc {
                target: target(&args.common).await?,
                conns: args.connections.max(1),
                warmup: args.timing.warmup,
                duration: args.timing.duration,
                request: Template::new(request),
                reply: Template::new(REPLY),
                refusal: Some(REFUSAL.into()),
                pad,
                server_pid: args.common.server_pid,
                progress: progress.clone(),
            };
            let what = format!("{} connections calling {}", run.conns, args.method);
            let bar = report::Bar::timed(&what, "answers", &args.timing, &progress);
            let record = run.run().await;
            bar.finish();
            record
        }
        Scenario::Fanout(args) => {
            let channel = args.channel.clone().unwrap_or_else(|| {
                // Unique enough to keep concurrent runs apart: the clock's nanoseconds and
                // this process.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.subsec_nanos());
                format!("bench:run-{:08x}", nanos ^ std::process::id())
            });
            preflight(&args.common, async |client| {
                let _joined = client.join(&channel, JoinOptions::default()).await?;
                client
                    .publish(&channel, &serde_json::json!({"seq": 0, "ts": 0}))
                    .await?;
                Ok(())
            })
            .await?;
            let run = fanout::Fanout {
                target: target(&args.common).await?,
                also: Vec::new(),
                subscribers: args.subscribers.max(1),
                warmup: args.timing.warmup,
                duration: args.timing.duration,
                subscribe: Template::new(JOIN),
                subscribe_ack: Some(JOINED.into()),
                publish: Template::new(PUBLISH),
                refusal: Some(REFUSAL.into()),
                rate: args.rate.max(0.0),
                window: args.window.max(1),
                channel: channel.clone(),
                pad: "x".repeat(args.size),
                server_pid: args.common.server_pid,
                progress: progress.clone(),
            };
            let what = format!("{} subscribers of {channel}", run.subscribers);
            let bar = report::Bar::timed(&what, "deliveries", &args.timing, &progress);
            let record = run.run().await;
            bar.finish();
            record
        }
        Scenario::Storm(_) => unreachable!("the storm runs on its own"),
        Scenario::Conns(args) => {
            preflight(&args.common, async |_| Ok(())).await?;
            let run = conns::Conns {
                target: target(&args.common).await?,
                count: args.count.max(1),
                hold: args.hold,
                server_pid: args.common.server_pid,
                progress: progress.clone(),
            };
            let bar = report::Bar::counted("connections", run.count as u64, &progress);
            let record = run.run().await;
            bar.finish();
            record
        }
    }
}

/// The storm, printed as one JSON object (its figures are its own, not a load's).
async fn run_storm(args: &StormArgs) -> ExitCode {
    let channel = args.channel.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        format!("bench:storm-{:08x}", nanos ^ std::process::id())
    });
    let storm = storm::Storm {
        url: args.common.url.clone(),
        token: args.common.token.clone(),
        subscribers: args.subscribers,
        channel,
        rate: args.rate.max(0.01),
        before: args.before,
        after: args.after,
        cut: args.cut.clone(),
        server_pid_file: args.server_pid_file.clone(),
    };
    let outcome = async {
        // Loopback only, unless told otherwise, as every scenario.
        target(&args.common).await?;
        storm.run().await
    };
    match tokio::time::timeout(args.common.max_runtime, outcome).await {
        Ok(Ok(figures)) => {
            println!("{figures}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "error: --max-runtime of {:?} reached; stopped",
                args.common.max_runtime
            );
            ExitCode::FAILURE
        }
    }
}

/// `--rate`: 0, or from 0.01 to 10,000,000 publications a second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if rate == 0.0 || (0.01..=10_000_000.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("the rate is 0 (as fast as the subscribers keep up) or from 0.01 to 10000000".into())
    }
}

/// Where the load goes: loopback unless --allow-remote, each connection authenticated as
/// the preflight client was.
async fn target(common: &Common) -> anyhow::Result<Target> {
    let scope = if common.allow_remote {
        Scope::Any
    } else {
        Scope::Loopback
    };
    let mut target = Target::resolve(&common.url, vec![WELCOME.into()], 8, scope)
        .await
        .map_err(|e| {
            if scope == Scope::Loopback {
                e.context("pass --allow-remote to load a server on another machine that you run")
            } else {
                e
            }
        })?;
    if let Some(token) = &common.token {
        target = target.header("authorization", &format!("Bearer {token}"))?;
    }
    Ok(target)
}

/// Connects one client as the load will and runs `check` with it: a refusal stops the run
/// before it starts, with the server's error.
async fn preflight(
    common: &Common,
    check: impl AsyncFnOnce(&plexus_client::Client) -> Result<(), plexus_client::CallError>,
) -> anyhow::Result<()> {
    // The address is checked first: not even one connection goes where load may not.
    target(common).await?;
    let mut options = ClientOptions::default()
        .reconnect(ReconnectOptions::disabled())
        .connect_timeout(Duration::from_secs(10));
    if let Some(token) = &common.token {
        options = options.token(token.clone());
    }
    let client = plexus_client::connect(&common.url, options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", common.url))?;
    let checked = check(&client).await;
    client.close().await;
    checked.map_err(|e| {
        let ErrorBody { code, message, .. } = e.to_error_body();
        anyhow::anyhow!("the server refused what the load would do: {code}: {message}")
    })
}
