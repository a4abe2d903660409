//! `plexus serve --config FILE`: the TOML configuration, its validation, and how it combines
//! with the command-line flags (a flag wins over the file).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_server::auth::{JwtAuthenticator, JwtConfig, JwtConfigError};
use plexus_server::{
    ChannelAction, ChannelOptions, Compression, EndpointConfig, Namespaces, OriginPolicy,
    RateLimit, ServerBuilder, StrictModeError,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::parse_duration;

/// A duration written as `500ms`, `30s`, `2m`, `1h` or a number of seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dur(pub(crate) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => parse_duration(&text)
                .map(Dur)
                .map_err(serde::de::Error::custom),
            Raw::Seconds(s) => Duration::try_from_secs_f64(s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `compression = "off" | "on" | "no-context-takeover"`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum CompressionSetting {
    Off,
    On,
    NoContextTakeover,
}

impl From<CompressionSetting> for Compression {
    fn from(setting: CompressionSetting) -> Self {
        match setting {
            CompressionSetting::Off => Compression::Off,
            CompressionSetting::On => Compression::On,
            CompressionSetting::NoContextTakeover => Compression::NoContextTakeover,
        }
    }
}

/// `call_rate` / `publish_rate`: `"off"` or `{ per_second = N, burst = N }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RateSetting {
    Off,
    Limit(RateLimit),
}

impl RateSetting {
    fn limit(self) -> Option<RateLimit> {
        match self {
            RateSetting::Off => None,
            RateSetting::Limit(limit) => Some(limit),
        }
    }
}

impl<'de> Deserialize<'de> for RateSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RateVisitor;

        impl<'de> Visitor<'de> for RateVisitor {
            type Value = RateSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""off" or { per_second = N, burst = N }"#)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "off" => Ok(RateSetting::Off),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RateLimit::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RateSetting::Limit)
            }
        }

        d.deserialize_any(RateVisitor)
    }
}

/// One `[[pipe]]` table: foreign clients at `path` piped to channels of `namespace`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipeFile {
    pub(crate) path: String,
    pub(crate) namespace: String,
}

/// What `plexus serve` limits unless the file says otherwise (the library has no rate
/// limits and allows 10,000 connections per address by default).
const SERVE_CALL_RATE: (u32, u32) = (500, 1000);
const SERVE_PUBLISH_RATE: (u32, u32) = (100, 200);
const SERVE_MAX_CONNECTIONS_PER_IP: usize = 1000;

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) path: Option<String>,
    pub(crate) echo_path: Option<String>,
    /// Raw sockets piped to channels (`[[pipe]]` tables).
    #[serde(default)]
    pub(crate) pipe: Vec<PipeFile>,
    pub(crate) node_id: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) compression: Option<CompressionSetting>,
    /// Which web pages may connect (default: same origin or localhost).
    pub(crate) origins: Option<OriginPolicy>,
    /// Whether `/metrics` serves Prometheus metrics (default: true).
    pub(crate) metrics: Option<bool>,
    /// Whether `/` serves the page: a dashboard and a demo chat (default: true).
    pub(crate) page: Option<bool>,
    #[serde(default)]
    pub(crate) auth: AuthFile,
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// Channel namespaces by pattern (`"room:*"` or an exact name).
    pub(crate) namespaces: Option<BTreeMap<String, NamespaceFile>>,
    /// Which engine carries channels across nodes (default: memory, this node alone).
    #[serde(default)]
    pub(crate) engine: super::engine::EngineFile,
    /// The file this came from, for error messages (none: no file).
    #[serde(skip)]
    source: Option<PathBuf>,
}

/// `[auth]`: who may connect.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    /// `[auth.jwt]`: how tokens are verified. Without it (and without `--jwt-secret`)
    /// connections are anonymous.
    jwt: Option<JwtConfig>,
    /// The cookie holding the token (default `plexus_token`).
    cookie: Option<String>,
    /// A permission every connection's token must grant.
    connect_permission: Option<String>,
    /// Refuse to start while a channel namespace does not say who may use it.
    #[serde(default)]
    strict: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    max_message_size: Option<usize>,
    max_in_flight: Option<usize>,
    outbound_queue: Option<usize>,
    max_subscriptions: Option<usize>,
    max_bad_frames_per_minute: Option<u32>,
    heartbeat: Option<Dur>,
    handshake_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    drain_timeout: Option<Dur>,
    server_call_timeout: Option<Dur>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    call_rate: Option<RateSetting>,
    publish_rate: Option<RateSetting>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamespaceFile {
    #[serde(default)]
    history_size: usize,
    history_ttl: Option<Dur>,
    #[serde(default = "yes")]
    recovery: bool,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    join_leave_events: bool,
    #[serde(default)]
    client_publish: bool,
    max_subscribers: Option<usize>,
    /// Open to every connection, anonymous ones included, for the actions `require` does
    /// not name.
    #[serde(default)]
    public: bool,
    /// The permission each action needs.
    #[serde(default)]
    require: RequireFile,
}

/// `require = { join = "…", publish = "…", presence = "…", history = "…" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequireFile {
    join: Option<String>,
    publish: Option<String>,
    presence: Option<String>,
    history: Option<String>,
}

impl RequireFile {
    fn actions(&self) -> [(ChannelAction, &'static str, Option<&str>); 4] {
        [
            (ChannelAction::Join, "join", self.join.as_deref()),
            (ChannelAction::Publish, "publish", self.publish.as_deref()),
            (
                ChannelAction::Presence,
                "presence",
                self.presence.as_deref(),
            ),
            (ChannelAction::History, "history", self.history.as_deref()),
        ]
    }

    /// The first action with a permission, if any.
    fn first(&self) -> Option<&'static str> {
        self.actions()
            .into_iter()
            .find_map(|(_, action, permission)| permission.map(|_| action))
    }
}

fn yes() -> bool {
    true
}

/// Reads and validates a configuration file; the error names the file, the key and the
/// problem. Relative key file paths in `[auth.jwt]` are taken from the file's directory.
pub(crate) fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut config: FileConfig =
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
    config.source = Some(path.to_owned());
    config.validate().map_err(|e| config.invalid(&e))?;
    if let Some(jwt) = &mut config.auth.jwt {
        let dir = path.parent().unwrap_or(Path::new(""));
        for file in [&mut jwt.public_key_file, &mut jwt.jwks_file]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
    }
    Ok(config)
}

fn check(ok: bool, key: &str, problem: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("`{key}` {problem}"))
    }
}

/// Whether `name` may name a cookie (an RFC 6265 token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FileConfig {
    /// `problem` as an error of this file (as is without a file).
    fn invalid(&self, problem: &str) -> String {
        match &self.source {
            Some(path) => format!("invalid config {}: {problem}", path.display()),
            None => problem.to_owned(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.engine.validate()?;
        if let Some(path) = &self.path {
            check(path.starts_with('/'), "path", "must start with `/`")?;
        }
        if let Some(cookie) = &self.auth.cookie {
            check(
                is_cookie_name(cookie),
                "auth.cookie",
                "is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
            )?;
        }
        if let Some(permission) = &self.auth.connect_permission {
            check(
                !permission.is_empty(),
                "auth.connect_permission",
                "is empty",
            )?;
        }
        let l = &self.limits;
        if let Some(size) = l.max_message_size {
            check(
                (1024..=64 << 20).contains(&size),
                "limits.max_message_size",
                "must be between 1024 and 67108864 bytes",
            )?;
        }
        for (key, value) in [
            ("limits.max_in_flight", l.max_in_flight),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.max_subscriptions", l.max_subscriptions),
        ] {
            if let Some(value) = value {
                check(
                    (1..=1_000_000).contains(&value),
                    key,
                    "must be between 1 and 1000000",
                )?;
            }
        }
        for (key, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
        ] {
            if let Some(value) = value {
                check(value >= 1, key, "must be at least 1")?;
            }
        }
        if let Some(Dur(heartbeat)) = l.heartbeat {
            check(
                heartbeat >= Duration::from_millis(100),
                "limits.heartbeat",
                "must be at least 100ms",
            )?;
        }
        for (pattern, ns) in self.namespaces.iter().flatten() {
            let key = |field: &str| format!("namespaces.\"{pattern}\".{field}");
            check(!pattern.is_empty(), "namespaces", "has an empty pattern")?;
            check(
                !pattern.trim_end_matches('*').contains('*'),
                &format!("namespaces.\"{pattern}\""),
                "may only have `*` at its end",
            )?;
            check(
                ns.history_size <= 1_000_000,
                &key("history_size"),
                "must be at most 1000000",
            )?;
            check(
                !ns.join_leave_events || ns.presence,
                &key("join_leave_events"),
                "needs `presence = true`",
            )?;
            check(
                ns.history_ttl.is_none() || ns.history_size > 0,
                &key("history_ttl"),
                "needs `history_size` above 0",
            )?;
            for (_, action, permission) in ns.require.actions() {
                let Some(permission) = permission else {
                    continue;
                };
                let key = key(&format!("require.{action}"));
                check(!permission.is_empty(), &key, "is empty")?;
                match action {
                    "publish" => check(ns.client_publish, &key, "needs `client_publish = true`")?,
                    "presence" => check(ns.presence, &key, "needs `presence = true`")?,
                    "history" => check(ns.history_size > 0, &key, "needs `history_size` above 0")?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Whether the file configures JWT authentication (`[auth.jwt]`).
    pub(crate) fn has_jwt(&self) -> bool {
        self.auth.jwt.is_some()
    }

    /// The server the file describes with the built-in methods, on `endpoint` (the file's,
    /// with the flags applied), authenticated as [`auth`](Self::auth) says.
    pub(crate) fn server_builder(
        &self,
        endpoint: EndpointConfig,
        jwt_secret: Option<&str>,
    ) -> Result<ServerBuilder, String> {
        let builder = plexus_server::Server::builder()
            .router(plexus::sys::router())
            .config(endpoint)
            .channels(self.namespaces());
        self.auth(builder, jwt_secret)
    }

    /// Configures authentication on `builder`: HS256 tokens signed with `jwt_secret` (the
    /// `--jwt-secret` flag, which replaces the key and `algorithms` of `[auth.jwt]` and keeps
    /// its other checks), else `[auth.jwt]`, plus the cookie, the connect permission and
    /// strict mode. Key files are read here: a bad one is refused naming its key.
    pub(crate) fn auth(
        &self,
        mut builder: ServerBuilder,
        jwt_secret: Option<&str>,
    ) -> Result<ServerBuilder, String> {
        let auth = &self.auth;
        let jwt = match (jwt_secret, &auth.jwt) {
            (Some(secret), file) => {
                if secret.is_empty() {
                    return Err("--jwt-secret is empty".into());
                }
                let mut jwt = file.clone().unwrap_or_default();
                jwt.secret = Some(secret.to_owned());
                jwt.public_key_file = None;
                jwt.jwks_file = None;
                jwt.algorithms = vec!["HS256".to_owned()];
                Some(jwt)
            }
            (None, file) => file.clone(),
        };
        builder = builder.strict(auth.strict);
        let Some(jwt) = jwt else {
            // Without authentication every connection is anonymous and holds no permission.
            let required = self.namespaces.iter().flatten().find_map(|(pattern, ns)| {
                let action = ns.require.first()?;
                Some(format!("namespaces.\"{pattern}\".require.{action}"))
            });
            let connect = auth
                .connect_permission
                .as_ref()
                .map(|_| "auth.connect_permission".to_owned());
            if let Some(key) = connect.or(required) {
                return Err(self.invalid(&format!(
                    "`{key}` needs authentication: an `[auth.jwt]` table or --jwt-secret"
                )));
            }
            return Ok(builder);
        };
        let jwks = jwt.jwks_file.is_some();
        let authenticator = JwtAuthenticator::new(jwt).map_err(|e| {
            let mut message = format!("`{}`: {e}", jwt_error_key(&e, jwks));
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            self.invalid(&message)
        })?;
        builder = builder.authenticator(authenticator);
        if let Some(cookie) = &auth.cookie {
            builder = builder.auth_cookie(cookie);
        }
        if let Some(permission) = &auth.connect_permission {
            builder = builder.connect_permission(permission);
        }
        Ok(builder)
    }

    /// The `[[pipe]]` tables as `(path, namespace)` pairs, as `--pipe` gives them.
    pub(crate) fn pipes(&self) -> Vec<(String, String)> {
        self.pipe
            .iter()
            .map(|pipe| (pipe.path.clone(), pipe.namespace.clone()))
            .collect()
    }

    /// The message for a refusal to build the server, in the file's terms.
    pub(crate) fn build_error(&self, error: &plexus_server::BuildError) -> String {
        match error {
            plexus_server::BuildError::Strict(strict) => self.strict_error(strict),
            other => other.to_string(),
        }
    }

    /// The message for a strict-mode refusal, in the file's terms.
    fn strict_error(&self, error: &StrictModeError) -> String {
        fn quoted(names: impl Iterator<Item = String>) -> String {
            names
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
        let mut problems = Vec::new();
        let namespaces = error.namespaces();
        if !namespaces.is_empty() {
            let (says, give) = if namespaces.len() == 1 {
                ("does not say who may use its channels", "give it")
            } else {
                ("do not say who may use their channels", "give each")
            };
            problems.push(format!(
                "{} {says} ({give} `require = {{ join = \"permission\" }}`, also with \
                 `publish`, `presence` or `history`, or `public = true`)",
                quoted(namespaces.iter().map(|p| format!("namespaces.\"{p}\""))),
            ));
        }
        if !error.methods().is_empty() {
            problems.push(format!(
                "the methods {} declare no permission",
                quoted(error.methods().iter().cloned()),
            ));
        }
        self.invalid(&format!(
            "`auth.strict` is on, but {}",
            problems.join("; and ")
        ))
    }

    /// The endpoint configuration the file describes (for what it leaves out, the library's
    /// defaults, except for the rate limits and connections per address `plexus serve` sets).
    pub(crate) fn endpoint(&self) -> EndpointConfig {
        let mut config = EndpointConfig::default();
        let limits = &mut config.limits;
        let rate = |(per_second, burst)| {
            Some(RateLimit::new(per_second, burst).expect("the serve defaults are nonzero"))
        };
        limits.call_rate = rate(SERVE_CALL_RATE);
        limits.publish_rate = rate(SERVE_PUBLISH_RATE);
        limits.max_connections_per_ip = SERVE_MAX_CONNECTIONS_PER_IP;
        let l = &self.limits;
        if let Some(v) = l.max_message_size {
            limits.max_message_size = v;
        }
        if let Some(v) = l.max_in_flight {
            limits.max_in_flight = v;
        }
        if let Some(v) = l.outbound_queue {
            limits.outbound_queue = v;
        }
        if let Some(v) = l.max_subscriptions {
            limits.max_subscriptions = v;
        }
        if let Some(v) = l.max_bad_frames_per_minute {
            limits.max_bad_frames_per_minute = v;
        }
        if let Some(Dur(v)) = l.heartbeat {
            limits.heartbeat_interval = v;
        }
        if let Some(Dur(v)) = l.handshake_timeout {
            limits.handshake_timeout = v;
        }
        if let Some(Dur(v)) = l.idle_timeout {
            limits.idle_timeout = Some(v);
        }
        if let Some(Dur(v)) = l.drain_timeout {
            limits.drain_timeout = v;
        }
        if let Some(Dur(v)) = l.server_call_timeout {
            limits.server_call_timeout = v;
        }
        if let Some(v) = l.max_connections {
            limits.max_connections = v;
        }
        if let Some(v) = l.max_connections_per_ip {
            limits.max_connections_per_ip = v;
        }
        if let Some(v) = l.call_rate {
            limits.call_rate = v.limit();
        }
        if let Some(v) = l.publish_rate {
            limits.publish_rate = v.limit();
        }
        if let Some(compression) = self.compression {
            config.compression = compression.into();
        }
        if let Some(origins) = &self.origins {
            config.origins = origins.clone();
        }
        config
    }

    /// The channel namespaces: the file's, or (with no `[namespaces]` at all) the demo one.
    pub(crate) fn namespaces(&self) -> Namespaces {
        let Some(namespaces) = &self.namespaces else {
            return demo_namespaces();
        };
        namespaces
            .iter()
            .fold(Namespaces::new(), |all, (pattern, ns)| {
                let mut options = ChannelOptions::default()
                    .history_size(ns.history_size)
                    .history_ttl(ns.history_ttl.map(|d| d.0))
                    .recovery(ns.recovery)
                    .presence(ns.presence)
                    .join_leave_events(ns.presence && ns.join_leave_events)
                    .client_publish(ns.client_publish);
                if let Some(max) = ns.max_subscribers {
                    options = options.max_subscribers(max);
                }
                for (action, _, permission) in ns.require.actions() {
                    if let Some(permission) = permission {
                        options = options.require(action, permission);
                    }
                }
                if ns.public {
                    options = options.public_access();
                }
                all.namespace(pattern, options)
            })
    }
}

/// The key of `[auth.jwt]` a [`JwtConfigError`] is about (`jwks`: a JWKS file is set).
fn jwt_error_key(error: &JwtConfigError, jwks: bool) -> &'static str {
    match error {
        JwtConfigError::EmptySecret => "auth.jwt.secret",
        JwtConfigError::Read { .. } if jwks => "auth.jwt.jwks_file",
        JwtConfigError::Read { .. } | JwtConfigError::Key { .. } => "auth.jwt.public_key_file",
        JwtConfigError::Jwks { .. } => "auth.jwt.jwks_file",
        JwtConfigError::UnknownAlgorithm(_) | JwtConfigError::AlgorithmMismatch { .. } => {
            "auth.jwt.algorithms"
        }
        JwtConfigError::Leeway(_) => "auth.jwt.leeway_secs",
        _ => "auth.jwt",
    }
}

/// What `plexus serve` offers with no configuration: `demo:*` channels with a history of 100
/// publications, presence with join/leave events, and client publish, open to every
/// connection.
pub(crate) fn demo_namespaces() -> Namespaces {
    Namespaces::new().namespace(
        "demo:*",
        ChannelOptions::default()
            .history_size(100)
            .presence(true)
            .join_leave_events(true)
            .client_publish(true)
            .public_access(),
    )
}

pub(crate) mod check;
#[cfg(test)]
mod tests;
