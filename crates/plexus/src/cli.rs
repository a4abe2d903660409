//! Command-line interface.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use plexus_server::{Compression, EndpointConfig, Server};

mod call;

/// plexus: a real-time WebSocket server, and a client to talk to one.
#[derive(Parser, Debug)]
#[command(name = "plexus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server with the built-in methods (sys.echo, sys.count, sys.sleep); no config needed.
    Serve(ServeArgs),
    /// Call METHOD on the server at URL and print the result as JSON.
    ///
    /// Exits 0 with the result on stdout, or 1 with `CODE: message` on stderr.
    Call(call::CallArgs),
    /// Send a notification; exits 1 if the server reports an error for it.
    Notify(call::CallArgs),
    /// Open a stream and print one JSON item per line until it ends (or Ctrl-C).
    Stream(call::CallArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787", env = "PLEXUS_LISTEN")]
    listen: SocketAddr,
    /// WebSocket path of the plexus endpoint.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Also serve a plain WebSocket echo endpoint at this path (for the Autobahn suite),
    /// on the same WebSocket settings; it accepts messages up to 16 MiB.
    #[arg(long)]
    echo_path: Option<String>,
    /// permessage-deflate: off, on (context takeover), or no-context-takeover.
    #[arg(long, value_enum, default_value_t = CompressionArg::NoContextTakeover)]
    compression: CompressionArg,
    /// Heartbeat interval (e.g. 25s); a peer silent for two intervals is closed.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Largest message accepted, in bytes; larger ones close the connection with 1009.
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: usize,
    /// Node id sent in `welcome` (default: random).
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompressionArg {
    Off,
    On,
    NoContextTakeover,
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 30s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands report outcomes themselves; their logs would only repeat them.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => match serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Call(args) => call::call(args).await,
            Command::Notify(args) => call::notify(args).await,
            Command::Stream(args) => call::stream(args).await,
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = EndpointConfig::default();
    config.compression = match args.compression {
        CompressionArg::Off => Compression::Off,
        CompressionArg::On => Compression::On,
        CompressionArg::NoContextTakeover => Compression::NoContextTakeover,
    };
    config.limits.heartbeat_interval = args.heartbeat;
    config.limits.max_message_size = args.max_message_size;
    let mut builder = Server::builder()
        .router(plexus::sys::router())
        .config(config.clone());
    if let Some(node) = args.node_id {
        builder = builder.node_id(node);
    }
    let server = builder.build();
    let mut app = server.route(&args.path);
    if let Some(echo) = &args.echo_path {
        app = app.merge(plexus_server::echo_route(echo, &config));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        node = server.node_id(),
        "plexus listening on ws://{local}{}",
        args.path
    );
    if let Some(echo) = &args.echo_path {
        tracing::info!("echo endpoint on ws://{local}{echo}");
    }
    server.serve(listener, app, shutdown_signal()).await?;
    tracing::info!("plexus stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining calls, then closing connections with 1001");
}
