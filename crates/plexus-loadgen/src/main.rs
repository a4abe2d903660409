//! `plexus-loadgen`: the load generator of plexus's benchmark (`bench/run.sh`), driven by
//! flags: `rpc`, `fanout`, `conns` and `report` (see the library's documentation). Only
//! loopback targets are accepted, and a watchdog ends the process after `--max-runtime`
//! seconds whatever happens.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use plexus_loadgen::connect::{Scope, Target};
use plexus_loadgen::template::Template;
use plexus_loadgen::{conns, fanout, record, report, rpc};

#[derive(Parser)]
#[command(
    name = "plexus-loadgen",
    about = "WebSocket load generator: templates in, figures out"
)]
struct Cli {
    /// Runtime threads of the generator
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop request/response over C connections
    Rpc(RpcArgs),
    /// One publisher, N subscribers on one channel
    Fanout(FanoutArgs),
    /// Hold N idle connections; memory and CPU per connection
    Conns(ConnsArgs),
    /// Print the table of JSON-lines result files
    Report {
        /// results.jsonl files
        files: Vec<String>,
    },
}

#[derive(Args)]
struct Common {
    /// ws:// URL of the server (loopback only)
    #[arg(long)]
    url: String,
    /// fanout: URLs of other nodes of the same cluster; subscribers are spread over every
    /// node, the publisher stays on --url (repeatable)
    #[arg(long = "also-url")]
    also_url: Vec<String>,
    /// After the upgrade: `send:TEMPLATE` or `expect:TEXT` (repeatable, in order)
    #[arg(long = "handshake")]
    handshake: Vec<String>,
    /// Connections come from 127.0.0.1 to 127.0.0.N
    #[arg(long, default_value_t = 8)]
    src_addrs: u8,
    /// Bytes of `x` in `{pad}`
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// The server's process id, for its CPU time (with its child processes': a cluster
    /// started by one script counts whole) and memory
    #[arg(long)]
    server_pid: Option<u32>,
    /// Labels of the record
    #[arg(long, default_value = "server")]
    server: String,
    #[arg(long, default_value = "case")]
    case: String,
    #[arg(long, default_value_t = 0)]
    rep: u32,
    /// Append the record to this file
    #[arg(long)]
    json_out: Option<String>,
    /// Ends the process after this many seconds, whatever happens
    #[arg(long, default_value_t = 300)]
    max_runtime: u64,
}

impl Common {
    async fn target(&self, url: &str) -> anyhow::Result<Target> {
        Target::resolve(url, self.handshake.clone(), self.src_addrs, Scope::Loopback).await
    }

    fn pad(&self) -> String {
        "x".repeat(self.pad)
    }
}

#[derive(Args)]
struct RpcArgs {
    #[command(flatten)]
    common: Common,
    /// Connections
    #[arg(short = 'c', default_value_t = 50)]
    conns: usize,
    /// Seconds measured
    #[arg(short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The request template
    #[arg(long)]
    request: String,
    /// Text that identifies the answer to request {seq}
    #[arg(long)]
    reply_contains: String,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers
    #[arg(short = 'n', default_value_t = 1000)]
    subscribers: usize,
    #[arg(short = 'd', default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// What each subscriber sends once
    #[arg(long)]
    subscribe: String,
    /// Text of the subscription's acknowledgement, waited for
    #[arg(long)]
    subscribe_ack: Option<String>,
    /// What the publisher sends; must carry {ts} under the key "ts"
    #[arg(long)]
    publish: String,
    /// Messages per second; 0 = as fast as --window allows
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// With --rate 0: messages not yet delivered to every subscriber, at most
    #[arg(long, default_value_t = 10)]
    window: u64,
    #[arg(long, default_value = "bench")]
    channel: String,
}

#[derive(Args)]
struct ConnsArgs {
    #[command(flatten)]
    common: Common,
    #[arg(short = 'n', default_value_t = 10_000)]
    count: usize,
    /// Seconds to hold them before reading the server's memory
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn watchdog(seconds: u64) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        eprintln!("plexus-loadgen: --max-runtime of {seconds}s reached; stopping");
        std::process::exit(3);
    });
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread by default: the generator is pinned to one core, where more worker threads
    // would only steal work from each other.
    let runtime = plexus_loadgen::runtime(cli.threads.max(1))?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (common, record) = match command {
        Command::Report { files } => {
            print!("{}", report::table(&files)?);
            return Ok(());
        }
        Command::Rpc(args) => {
            watchdog(args.common.max_runtime);
            let run = rpc::Rpc {
                target: args.common.target(&args.common.url).await?,
                conns: args.conns,
                warmup: seconds(args.warmup),
                duration: seconds(args.duration),
                request: Template::new(args.request),
                reply: Template::new(args.reply_contains),
                refusal: None,
                pad: args.common.pad(),
                server_pid: args.common.server_pid,
                progress: Default::default(),
            };
            (args.common, ("rpc", run.run().await?))
        }
        Command::Fanout(args) => {
            watchdog(args.common.max_runtime);
            let mut also = Vec::new();
            for url in &args.common.also_url {
                also.push(args.common.target(url).await?);
            }
            let run = fanout::Fanout {
                target: args.common.target(&args.common.url).await?,
                also,
                subscribers: args.subscribers,
                warmup: seconds(args.warmup),
                duration: seconds(args.duration),
                subscribe: Template::new(args.subscribe),
                subscribe_ack: args.subscribe_ack,
                publish: Template::new(args.publish),
                refusal: None,
                rate: args.rate,
                window: args.window.max(1),
                channel: args.channel,
                pad: args.common.pad(),
                server_pid: args.common.server_pid,
                progress: Default::default(),
            };
            (args.common, ("fanout", run.run().await?))
        }
        Command::Conns(args) => {
            watchdog(args.common.max_runtime);
            let server_pid = args
                .common
                .server_pid
                .ok_or_else(|| anyhow::anyhow!("conns needs --server-pid"))?;
            let run = conns::Conns {
                target: args.common.target(&args.common.url).await?,
                count: args.count,
                hold: seconds(args.hold),
                server_pid: Some(server_pid),
                progress: Default::default(),
            };
            (args.common, ("conns", run.run().await?))
        }
    };
    let (scenario, record) = record;
    let labels = record::labels(&common.server, &common.case, common.rep, scenario);
    record.emit(&labels, common.json_out.as_deref())
}
