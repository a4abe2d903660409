//! `plexus call | notify | stream`: talk to a server from the shell.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use plexus_client::{
    CallOptions, Client, ClientOptions, Codec, ConnectError, ErrorBody, Payload, ReconnectOptions,
    Router, StreamOptions,
};

use super::parse_duration;

/// Connection options shared by the client commands.
#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// Credential, sent as `Authorization: Bearer TOKEN`
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: Option<String>,
    /// Extra request header as `Name: value` (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Speak MessagePack (plexus.v1.msgpack) instead of JSON
    #[arg(long)]
    msgpack: bool,
    /// How long to wait (e.g. 500ms, 30s). call/notify/pub: default 30s. stream: no limit by
    /// default. sub: how long to stay subscribed once joined, then exit with success (default:
    /// until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// Arguments of `call`, `notify` and `stream`.
#[derive(Args, Debug)]
pub(crate) struct CallArgs {
    /// Server URL, e.g. ws://127.0.0.1:8787/ws
    url: String,
    /// Method name, e.g. sys.echo
    method: String,
    /// Params as JSON (default: null)
    params: Option<String>,
    /// Through a relay: the node id of the provider that must answer
    #[arg(long)]
    node: Option<String>,
    #[command(flatten)]
    conn: ConnectArgs,
}

/// A failure to report: `CODE: message` on stderr, exit 1.
pub(crate) struct Failure(ErrorBody);

impl Failure {
    /// An error the server reported.
    pub(crate) fn remote(error: ErrorBody) -> Self {
        Self(error)
    }

    pub(crate) fn local(code: &'static str, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(
            plexus_client::ErrorCode::from_static(code),
            message,
        ))
    }

    pub(crate) fn report(self) -> ExitCode {
        eprintln!("{}: {}", self.0.code, self.0.message);
        if let Some(data) = self
            .0
            .data
            .as_ref()
            .and_then(|d| d.to_codec(Codec::Json).ok())
        {
            eprintln!("data: {}", String::from_utf8_lossy(data.raw()));
        }
        ExitCode::FAILURE
    }
}

impl From<plexus_client::CallError> for Failure {
    fn from(e: plexus_client::CallError) -> Self {
        Self(e.to_error_body())
    }
}

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON value given on the command line.
pub(crate) fn json_arg(text: Option<&str>, what: &str) -> Result<Payload, Failure> {
    let text = text.unwrap_or("null");
    Payload::from_raw_checked(Codec::Json, Bytes::copy_from_slice(text.as_bytes())).map_err(|_| {
        Failure::local(
            "VALIDATION_ERROR",
            format!("{what} are not valid JSON: {text}"),
        )
    })
}

impl CallArgs {
    fn params(&self) -> Result<Payload, Failure> {
        json_arg(self.params.as_deref(), "params")
    }

    async fn connect(&self) -> Result<Client, Failure> {
        self.conn.connect(&self.url).await
    }

    fn timeout(&self) -> Option<Duration> {
        self.conn.timeout
    }
}

impl ConnectArgs {
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) async fn connect(&self, url: &str) -> Result<Client, Failure> {
        let connect_timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        self.connect_with(url, ReconnectOptions::disabled(), connect_timeout)
            .await
    }

    pub(crate) async fn connect_with(
        &self,
        url: &str,
        reconnect: ReconnectOptions,
        connect_timeout: Duration,
    ) -> Result<Client, Failure> {
        let options = self.options(reconnect, connect_timeout)?;
        connect(url, options).await
    }

    /// Connects to a relay as a provider of `services` (node `node`) served by `router`.
    pub(crate) async fn connect_providing(
        &self,
        url: &str,
        router: Router,
        node: &str,
        services: &[String],
        reconnect: ReconnectOptions,
    ) -> Result<Client, Failure> {
        let connect_timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let options = self
            .options(reconnect, connect_timeout)?
            .router(router)
            .provide(node, services.iter().cloned());
        connect(url, options).await
    }

    fn options(
        &self,
        reconnect: ReconnectOptions,
        connect_timeout: Duration,
    ) -> Result<ClientOptions, Failure> {
        let mut options = ClientOptions::default()
            .codec(if self.msgpack {
                Codec::MsgPack
            } else {
                Codec::Json
            })
            .reconnect(reconnect)
            .connect_timeout(connect_timeout);
        // Without a token the client says an empty `hello`, which a server that needs a
        // credential refuses at once (NOT_AUTHORIZED).
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        for header in &self.headers {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                Failure::local("BAD_HEADER", format!("`{header}` is not `Name: value`"))
            })?;
            let name = HeaderName::try_from(name.trim())
                .map_err(|e| Failure::local("BAD_HEADER", format!("{name}: {e}")))?;
            let value = HeaderValue::try_from(value.trim())
                .map_err(|e| Failure::local("BAD_HEADER", format!("{header}: {e}")))?;
            options = options.header(name, value);
        }
        Ok(options)
    }
}

async fn connect(url: &str, options: ClientOptions) -> Result<Client, Failure> {
    plexus_client::connect(url, options).await.map_err(|e| {
        // The server's refusals keep their codes; the rest is "could not get there".
        let code = match &e {
            ConnectError::Unauthorized { .. } => "NOT_AUTHORIZED",
            ConnectError::Forbidden { .. } => "FORBIDDEN",
            ConnectError::Rejected(body) => return Failure(body.clone()),
            _ => "UNAVAILABLE",
        };
        let mut message = format!("cannot connect to {url}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Failure::local(code, message)
    })
}

/// A value as JSON text; one that has no JSON form is an error, never a silent `null`.
pub(crate) fn json_text(payload: &Payload) -> Result<String, Failure> {
    let json = payload
        .to_codec(Codec::Json)
        .map_err(|e| Failure::local("INTERNAL", format!("cannot show the value as JSON: {e}")))?;
    Ok(String::from_utf8_lossy(json.raw()).into_owned())
}

pub(crate) fn print_json(payload: &Payload) -> Result<(), Failure> {
    println!("{}", json_text(payload)?);
    Ok(())
}

pub(crate) fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

pub(crate) async fn call(args: CallArgs) -> ExitCode {
    exit(
        async {
            let params = args.params()?;
            let client = args.connect().await?;
            let mut options =
                CallOptions::default().timeout(args.timeout().unwrap_or(DEFAULT_TIMEOUT));
            if let Some(node) = &args.node {
                options = options.node(node.clone());
            }
            let answer = client
                .request::<Payload>(&args.method, params)
                .options(options)
                .await;
            client.close().await;
            print_json(&answer?)
        }
        .await,
    )
}

pub(crate) async fn notify(args: CallArgs) -> ExitCode {
    exit(
        async {
            let params = args.params()?;
            let client = args.connect().await?;
            let mut errors = client.errors();
            match &args.node {
                Some(node) => client.notify_node(&args.method, params, node).await?,
                None => client.notify(&args.method, params).await?,
            }
            // The close handshake comes after the notification on the wire, so an error the
            // server reports for it (e.g. NOT_FOUND) has arrived once the close completes.
            client.close().await;
            match errors.try_recv() {
                Ok(error) => Err(Failure(error)),
                Err(_) => Ok(()),
            }
        }
        .await,
    )
}

pub(crate) async fn stream(args: CallArgs) -> ExitCode {
    exit(
        async {
            let params = args.params()?;
            let client = args.connect().await?;
            let mut options = StreamOptions::default();
            if let Some(timeout) = args.timeout() {
                options = options.timeout(timeout);
            }
            if let Some(node) = &args.node {
                options = options.node(node.clone());
            }
            let mut items = client
                .stream::<Payload>(&args.method, params)
                .options(options)
                .await?;
            let outcome = loop {
                tokio::select! {
                    item = items.next() => match item {
                        Some(Ok(item)) => print_json(&item)?,
                        Some(Err(e)) => break Err(Failure::from(e)),
                        None => break Ok(()),
                    },
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                }
            };
            // Dropping the stream before its end sends `cancel`.
            drop(items);
            client.close().await;
            outcome
        }
        .await,
    )
}
