//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use plexus_server::Compression;

mod bench;
mod call;
mod channels;
mod codegen;
mod config;
mod engine;
mod metrics;
mod page;
mod relay;
mod token;

/// plexus: a real-time WebSocket server, and a client to talk to one.
#[derive(Parser, Debug)]
#[command(name = "plexus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line);
    /// RUST_LOG filters them (e.g. `plexus_server=debug` adds a span per call)
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PLEXUS_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server with the built-in methods (sys.echo, sys.count, sys.sleep); no config needed.
    Serve(ServeArgs),
    /// Run a relay: a server (same options as `serve`) that also routes `<Service>.<method>`
    /// calls to the connections that provide the service (`$provide`).
    Relay(ServeArgs),
    /// Provide demo services through a relay (`<SERVICE>.echo`, `.count`, `.sleep`,
    /// `.node`) until Ctrl-C; waits for the relay to listen, and reconnects and provides
    /// again whenever it drops.
    Provide(relay::ProvideArgs),
    /// List a relay's live providers as JSON (`$services`), or --watch them change.
    Services(relay::ServicesArgs),
    /// Call METHOD on the server at URL and print the result as JSON.
    ///
    /// Exits 0 with the result on stdout, or 1 with `CODE: message` on stderr.
    Call(call::CallArgs),
    /// Send a notification; exits 1 if the server reports an error for it.
    Notify(call::CallArgs),
    /// Open a stream and print one JSON item per line until it ends (or Ctrl-C).
    Stream(call::CallArgs),
    /// Join CHANNEL and print each publication as {"o":OFFSET,"d":DATA} until Ctrl-C or
    /// --timeout; reconnects and recovers what was missed.
    Sub(channels::SubArgs),
    /// Publish JSON to CHANNEL and print its position.
    Pub(channels::PubArgs),
    /// Generate code from a server's contracts: `plexus codegen ts URL -o contracts.ts`.
    #[command(subcommand)]
    Codegen(codegen::CodegenCommand),
    /// Print an HS256 token (JWT) for the user --sub, signed with the server's JWT --secret.
    Token(token::TokenArgs),
    /// Load a plexus server and measure it (closed-loop calls, fan-out, held connections),
    /// with a progress bar, latency percentiles and a histogram. One client first makes the
    /// call (or join and publication) the load will make, and a refusal stops the run.
    Bench(bench::BenchArgs),
    /// Check a configuration file as `serve` would at start (syntax, unknown keys, values,
    /// key files, engine URL, strict mode) without starting: exits 0, or 1 naming the key
    /// and the problem.
    Checkconfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the example configuration: every key, with its default unless its comment says
    /// otherwise (the repository's plexus.example.toml).
    Genconfig,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// A TOML configuration file (see plexus.example.toml); flags given here win over it.
    #[arg(long, env = "PLEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787]
    #[arg(long, env = "PLEXUS_LISTEN")]
    listen: Option<SocketAddr>,
    /// WebSocket path of the plexus endpoint [default: /ws]
    #[arg(long)]
    path: Option<String>,
    /// Also serve a raw WebSocket echo at this path (exact, or a prefix such as /echo/*):
    /// every message comes back as it was sent. A foreign-client raw socket like any
    /// other: authentication (on the upgrade request), origins, limits and metrics apply.
    /// Not at one of serve's HTTP routes (/health/…, /metrics, /, /plexus-page.js, /api/…).
    #[arg(long)]
    echo_path: Option<String>,
    /// Pipe foreign clients to channels (repeatable): PATH=NAMESPACE, e.g. '/pipe/*=demo'
    /// sends a client at /pipe/room1 to channel demo:room1. Each text message it sends is
    /// published there as a JSON string (binary as bytes), and each publication is written
    /// to it as one message (a string as its text, bytes as a binary message, any other
    /// value as its JSON text).
    /// Replaces the file's [[pipe]] tables.
    #[arg(long, value_name = "PATH=NAMESPACE", value_parser = parse_pipe)]
    pipe: Vec<(String, String)>,
    /// Enables the HTTP API under /api for backends, guarded by this key
    /// (`Authorization: apikey KEY`).
    #[arg(long, env = "PLEXUS_API_KEY")]
    api_key: Option<String>,
    /// permessage-deflate: off, on (context takeover), or no-context-takeover
    /// [default: no-context-takeover]
    #[arg(long, value_enum)]
    compression: Option<CompressionArg>,
    /// Heartbeat interval (e.g. 25s); a peer silent for two intervals is closed [default: 25s]
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Largest message accepted, in bytes; larger ones close the connection with 1009
    /// [default: 1048576]
    #[arg(long)]
    max_message_size: Option<usize>,
    /// This node's id: sent in `welcome`, and its name in a cluster (with --engine, no
    /// other live node may hold it) [default: random]
    #[arg(long, env = "PLEXUS_NODE_ID")]
    node_id: Option<String>,
    /// The engine that carries channels, presence and connection routing across nodes:
    /// `memory` (this node alone), redis://HOST:PORT or nats://HOST:PORT (NATS with
    /// JetStream): every node on the same broker behaves as one. Replaces the file's
    /// engine.url [default: memory]
    #[arg(long, env = "PLEXUS_ENGINE")]
    engine: Option<String>,
    /// Turns on authentication: connections must present an HS256 token (JWT) signed with
    /// this secret, e.g. from `plexus token --secret`, as `Authorization: Bearer`, the auth
    /// cookie (`plexus_token` unless [auth] cookie says otherwise), `?token=` or a `hello`
    /// frame. Replaces the key of the file's [auth.jwt].
    /// [default: no authentication]
    #[arg(long, env = "PLEXUS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Prometheus metrics at /metrics: on or off. Replaces the file's `metrics`
    /// [default: on]
    #[arg(long, value_enum, env = "PLEXUS_METRICS")]
    metrics: Option<Switch>,
    /// The page at / (a dashboard of /metrics and a demo chat on demo:chat): on or off.
    /// Replaces the file's `page` [default: on]
    #[arg(long, value_enum, env = "PLEXUS_PAGE")]
    page: Option<Switch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CompressionArg {
    Off,
    On,
    NoContextTakeover,
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `2d`, or a bare number of seconds.
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
        "d" => value * 86400.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands report outcomes themselves; their logs would only repeat them.
    let default_filter = match cli.command {
        Command::Serve(_) | Command::Relay(_) => "info",
        _ => "error",
    };
    init_logs(cli.log_format, default_filter);
    let runtime = match &cli.command {
        Command::Bench(args) => bench::runtime(args),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => report(serve(args, false).await),
            Command::Relay(args) => report(serve(args, true).await),
            Command::Provide(args) => relay::provide(args).await,
            Command::Services(args) => relay::services(args).await,
            Command::Call(args) => call::call(args).await,
            Command::Notify(args) => call::notify(args).await,
            Command::Stream(args) => call::stream(args).await,
            Command::Sub(args) => channels::sub(args).await,
            Command::Pub(args) => channels::publish(args).await,
            Command::Token(args) => token::token(args),
            Command::Codegen(command) => codegen::codegen(command).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Checkconfig { file } => match config::check::check(&file) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Genconfig => {
                print!("{}", config::check::EXAMPLE);
                ExitCode::SUCCESS
            }
        }
    })
}

/// Logs to stderr as `format` says, filtered by RUST_LOG (else `default_filter`). Spans are
/// logged when they close (a connection's or, at debug, a call's, with its outcome).
fn init_logs(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

fn report(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `serve`, or `relay` when `relay` is set.
async fn serve(args: ServeArgs, relay: bool) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::load(path).map_err(|e| anyhow::anyhow!(e))?,
        None => config::FileConfig::default(),
    };
    let metrics_on = match args.metrics {
        Some(switch) => switch == Switch::On,
        None => file.metrics.unwrap_or(true),
    };
    // Before the server is built: its series are registered with the recorder there is.
    let metrics = if metrics_on {
        Some(metrics::install()?)
    } else {
        None
    };
    let mut endpoint = file.endpoint();
    if let Some(compression) = args.compression {
        endpoint.compression = match compression {
            CompressionArg::Off => Compression::Off,
            CompressionArg::On => Compression::On,
            CompressionArg::NoContextTakeover => Compression::NoContextTakeover,
        };
    }
    if let Some(heartbeat) = args.heartbeat {
        anyhow::ensure!(
            heartbeat >= Duration::from_millis(100),
            "--heartbeat must be at least 100ms"
        );
        endpoint.limits.heartbeat_interval = heartbeat;
    }
    if let Some(size) = args.max_message_size {
        endpoint.limits.max_message_size = size;
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8787)));
    let path = args
        .path
        .or(file.path.clone())
        .unwrap_or_else(|| "/ws".into());
    let echo_path = args.echo_path.or(file.echo_path.clone());
    let pipes = if args.pipe.is_empty() {
        file.pipes()
    } else {
        args.pipe
    };
    let api_key = args.api_key.or(file.api_key.clone());

    let authenticated = args.jwt_secret.is_some() || file.has_jwt();
    let mut builder = file
        .server_builder(endpoint.clone(), args.jwt_secret.as_deref())
        .map_err(anyhow::Error::msg)?;
    let node = args
        .node_id
        .or(file.node_id.clone())
        .unwrap_or_else(plexus_server::random_node_id);
    builder = builder.node_id(&node);
    let choice = file
        .engine
        .choose(args.engine.as_deref())
        .map_err(anyhow::Error::msg)?;
    let cluster = engine::ClusterEngine::connect(choice).await?;
    if let Some(cluster) = &cluster {
        // Before the server is built: a built server announces itself among the nodes, and
        // a second process given a live node's id must not.
        cluster.claim_node(&node).await?;
        builder = builder.engine(cluster.engine());
    }
    if relay {
        builder = builder.relay(plexus_server::RelayConfig::default());
    }
    let page_on = match args.page {
        Some(switch) => switch == Switch::On,
        None => file.page.unwrap_or(true),
    };
    builder = with_raw_endpoints(
        builder,
        &path,
        echo_path.as_deref(),
        &pipes,
        endpoint.limits.publish_rate,
        &http_routes(metrics.is_some(), page_on, api_key.is_some()),
    )?;
    let server = builder
        .try_build()
        .map_err(|e| anyhow::anyhow!(file.build_error(&e)))?;
    let mut app = server
        .try_route(&path)
        .map_err(|e| anyhow::anyhow!("--path: {e}"))?;
    app = app.merge(server.raw_routes()).merge(server.health_routes());
    if let Some(metrics) = &metrics {
        app = app.merge(metrics::route(metrics.clone()));
    }
    if page_on {
        app = app.merge(page::routes(&path));
    }
    if let Some(key) = &api_key {
        app = app.merge(server.api_routes(key.clone()));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        node = server.node_id(),
        "plexus {} on ws://{local}{path}",
        if relay {
            "relay listening"
        } else {
            "listening"
        }
    );
    if let Some(echo) = &echo_path {
        tracing::info!("echo endpoint on ws://{local}{echo}");
    }
    for (pipe, namespace) in &pipes {
        tracing::info!("pipe to {namespace}:* channels on ws://{local}{pipe}");
    }
    if api_key.is_some() {
        tracing::info!("HTTP API on http://{local}/api");
    }
    tracing::info!(
        "health checks on http://{local}/health/live, /health/ready and /health/cluster"
    );
    if metrics.is_some() {
        tracing::info!("Prometheus metrics on http://{local}/metrics");
    }
    if authenticated {
        tracing::info!("JWT authentication on: connections need a token");
    }
    server.serve(listener, app, shutdown_signal()).await?;
    if let Some(cluster) = &cluster {
        cluster.release_node().await;
    }
    tracing::info!("plexus stopped");
    Ok(())
}

/// Echoes every message of a raw socket back as it came.
struct Echo;

impl plexus_server::RawHandler for Echo {
    async fn message(
        &self,
        conn: &plexus_server::RawConnection,
        message: plexus_server::RawMessage,
    ) {
        // Waits for room (the peer's reading paces it); fails only once the socket closed.
        let _ = conn.send_waiting(message).await;
    }
}

/// Reads `--pipe PATH=NAMESPACE`.
fn parse_pipe(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((path, namespace)) if !path.is_empty() && !namespace.is_empty() => {
            Ok((path.to_owned(), namespace.to_owned()))
        }
        _ => Err(format!(
            "expected PATH=NAMESPACE, e.g. '/pipe/*=demo', not `{value}`"
        )),
    }
}

/// Adds `serve`'s raw endpoints: the echo at `echo` and the pipes, beside the protocol at
/// `path`. Also what `checkconfig` checks.
pub(crate) fn with_raw_endpoints(
    mut builder: plexus_server::ServerBuilder,
    path: &str,
    echo: Option<&str>,
    pipes: &[(String, String)],
    publish_rate: Option<plexus_server::RateLimit>,
    http_routes: &[&str],
) -> anyhow::Result<plexus_server::ServerBuilder> {
    ensure_distinct(path, echo, pipes, http_routes)?;
    if let Some(echo) = echo {
        // Open to every connection the server admits, as the protocol endpoint is.
        let endpoint = plexus_server::RawEndpoint::foreign(echo).public();
        builder = builder.raw(endpoint.handler(Echo));
    }
    for (pipe_path, namespace) in pipes {
        let pipe = plexus_server::ChannelPipe::new(pipe_path, namespace);
        // The namespace's permissions decide what a piped client may do.
        let mut endpoint = plexus_server::RawEndpoint::foreign(pipe_path)
            .public()
            .handler(pipe);
        // What a piped client sends are publications: the publication rate applies.
        if let Some(rate) = publish_rate {
            endpoint = endpoint.message_rate(rate);
        }
        builder = builder.raw(endpoint);
    }
    Ok(builder)
}

/// The HTTP routes `serve` adds beside its WebSocket endpoints, as their routers register
/// them (`health_routes`, `metrics::route`, `page::routes`, `api_routes`): a socket at one of
/// them would make axum panic merging the routers.
pub(crate) fn http_routes(metrics: bool, page: bool, api: bool) -> Vec<&'static str> {
    let mut routes = vec!["/health/live", "/health/ready", "/health/cluster"];
    if metrics {
        routes.push("/metrics");
    }
    if page {
        routes.extend(["/", "/plexus-page.js"]);
    }
    if api {
        routes.extend([
            "/api/publish",
            "/api/broadcast",
            "/api/channels",
            "/api/presence",
            "/api/disconnect",
            "/api/subscribe",
            "/api/unsubscribe",
            "/api/send",
        ]);
    }
    routes
}

/// Refuses a raw socket at the root or at the protocol endpoint's path, and any socket at
/// one of `http_routes` (an exact path, or a prefix's own path: `/metrics/*` serves
/// `/metrics` too).
fn ensure_distinct(
    path: &str,
    echo: Option<&str>,
    pipes: &[(String, String)],
    http_routes: &[&str],
) -> anyhow::Result<()> {
    let raw: Vec<&str> = echo
        .into_iter()
        .chain(pipes.iter().map(|(p, _)| p.as_str()))
        .collect();
    for other in &raw {
        let base = other.strip_suffix("/*").unwrap_or(other);
        anyhow::ensure!(
            !base.is_empty() && base != "/",
            "`{other}`: a raw socket at the root would take the page and every other path; \
             give it a path of its own, such as /echo/*"
        );
        anyhow::ensure!(
            base != path,
            "`{other}` is also the protocol endpoint's path (--path {path}): give it another"
        );
    }
    for socket in std::iter::once(&path).chain(&raw) {
        let base = socket.strip_suffix("/*").unwrap_or(socket);
        if http_routes.contains(&base) {
            anyhow::bail!(
                "`{socket}` would take `{base}`, one of plexus serve's HTTP routes here \
                 ({}): give the socket another path",
                http_routes.join(", ")
            );
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
