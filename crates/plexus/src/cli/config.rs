//! `plexus serve --config FILE`: the TOML configuration, its validation, and how it combines
//! with the command-line flags (a flag wins over the file).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use plexus_server::{ChannelOptions, Compression, EndpointConfig, Namespaces};
use serde::Deserialize;

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

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) path: Option<String>,
    pub(crate) echo_path: Option<String>,
    pub(crate) node_id: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) compression: Option<CompressionSetting>,
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// Channel namespaces by pattern (`"room:*"` or an exact name).
    pub(crate) namespaces: Option<BTreeMap<String, NamespaceFile>>,
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
}

fn yes() -> bool {
    true
}

/// Reads and validates a configuration file; the error names the file, the key and the
/// problem.
pub(crate) fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: FileConfig =
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
    config
        .validate()
        .map_err(|e| format!("invalid config {}: {e}", path.display()))?;
    Ok(config)
}

fn check(ok: bool, key: &str, problem: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("`{key}` {problem}"))
    }
}

impl FileConfig {
    fn validate(&self) -> Result<(), String> {
        if let Some(path) = &self.path {
            check(path.starts_with('/'), "path", "must start with `/`")?;
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
        }
        Ok(())
    }

    /// The endpoint configuration the file describes (defaults for what it leaves out).
    pub(crate) fn endpoint(&self) -> EndpointConfig {
        let mut config = EndpointConfig::default();
        let limits = &mut config.limits;
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
        if let Some(compression) = self.compression {
            config.compression = compression.into();
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
                    .history(ns.history_size, ns.history_ttl.map(|d| d.0))
                    .recovery(ns.recovery)
                    .presence(ns.presence, ns.join_leave_events)
                    .client_publish(ns.client_publish);
                if let Some(max) = ns.max_subscribers {
                    options = options.max_subscribers(max);
                }
                all.namespace(pattern, options)
            })
    }
}

/// What `plexus serve` offers with no configuration: `demo:*` channels with a history of 100
/// publications, presence with join/leave events, and client publish.
pub(crate) fn demo_namespaces() -> Namespaces {
    Namespaces::new().namespace(
        "demo:*",
        ChannelOptions::default()
            .history(100, None)
            .presence(true, true)
            .client_publish(true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        let config: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plexus.example.toml");
        let config = load(Path::new(path)).unwrap();
        assert!(config.api_key.is_some());
        let namespaces = config.namespaces();
        assert!(namespaces.resolve("room:1").is_some());
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let error = parse("[limits]\nheartbeat = \"10ms\"").unwrap_err();
        assert_eq!(error, "`limits.heartbeat` must be at least 100ms");
        let error = parse("[limits]\nheartbeet = \"1s\"").unwrap_err();
        assert!(error.contains("unknown field `heartbeet`"), "{error}");
        let error = parse("[namespaces.\"room:*\"]\njoin_leave_events = true").unwrap_err();
        assert_eq!(
            error,
            "`namespaces.\"room:*\".join_leave_events` needs `presence = true`"
        );
        let error = parse("[namespaces.\"a*b\"]").unwrap_err();
        assert!(error.contains("may only have `*` at its end"), "{error}");
        let error = parse("[limits]\nheartbeat = \"soon\"").unwrap_err();
        assert!(error.contains("not a duration"), "{error}");
        let error = parse("compression = \"maybe\"").unwrap_err();
        assert!(error.contains("unknown variant `maybe`"), "{error}");
    }

    #[test]
    fn no_namespaces_table_means_the_demo_namespace() {
        let config = parse("").unwrap();
        assert!(config.namespaces().resolve("demo:chat").is_some());
        let config = parse("[namespaces]").unwrap();
        assert!(config.namespaces().resolve("demo:chat").is_none());
    }
}
