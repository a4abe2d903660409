//! `--engine` / `[engine]`: which engine carries channels across nodes.
//!
//! Without one, a node runs alone on the in-memory engine. With `redis://…` or `nats://…`,
//! nodes that share the broker (and prefix) behave as one: see the plexus-redis and
//! plexus-nats crates.

use std::sync::Arc;
use std::time::Duration;

use plexus_engine::{Engine, EngineError, EngineErrorKind};
use plexus_nats::{NatsEngine, NatsOptions};
use plexus_redis::{RedisEngine, RedisOptions};
use serde::Deserialize;

use super::config::Dur;

/// `[engine]` in the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineFile {
    /// `memory` (the default), `redis://host:port[/db]` or `nats://host:port`.
    pub(crate) url: Option<String>,
    /// Prefix of every key, subject and stream, so clusters can share a broker (default
    /// `plexus`).
    prefix: Option<String>,
    /// How long a dead node's members stay in presence (default 10s).
    presence_ttl: Option<Dur>,
}

/// Which engine, as the flag and the file say together.
pub(crate) enum EngineChoice {
    Memory,
    Redis(RedisOptions),
    Nats(NatsOptions),
}

impl EngineFile {
    /// Checks the table, naming the offending key.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            kind_of(url).map_err(|e| format!("`engine.url` {e}"))?;
        }
        if let Some(prefix) = &self.prefix
            && (prefix.is_empty()
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err("`engine.prefix` must be letters, digits, `-` and `_`".into());
        }
        if let Some(ttl) = &self.presence_ttl
            && ttl.0 < Duration::from_secs(1)
        {
            return Err("`engine.presence_ttl` must be at least 1s".into());
        }
        Ok(())
    }

    /// The engine to run, the flag (`--engine`) winning over `engine.url`.
    pub(crate) fn choose(&self, flag: Option<&str>) -> Result<EngineChoice, String> {
        let (url, key) = match (flag, &self.url) {
            (Some(url), _) => (url, "--engine"),
            (None, Some(url)) => (url.as_str(), "engine.url"),
            (None, None) => return Ok(EngineChoice::Memory),
        };
        match kind_of(url).map_err(|e| format!("`{key}` {e}"))? {
            Kind::Memory => Ok(EngineChoice::Memory),
            Kind::Redis => {
                let mut options = RedisOptions::new(url);
                if let Some(prefix) = &self.prefix {
                    options = options.prefix(prefix.clone());
                }
                if let Some(ttl) = &self.presence_ttl {
                    options = options.presence_ttl(ttl.0);
                }
                Ok(EngineChoice::Redis(options))
            }
            Kind::Nats => {
                let mut options = NatsOptions::new(url);
                if let Some(prefix) = &self.prefix {
                    options = options.prefix(prefix.clone());
                }
                if let Some(ttl) = &self.presence_ttl {
                    options = options.presence_ttl(ttl.0);
                }
                Ok(EngineChoice::Nats(options))
            }
        }
    }
}

enum Kind {
    Memory,
    Redis,
    Nats,
}

fn kind_of(url: &str) -> Result<Kind, String> {
    if url == "memory" {
        return Ok(Kind::Memory);
    }
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "rediss") => Ok(Kind::Redis),
        Some("nats" | "tls") => Ok(Kind::Nats),
        _ => Err(format!(
            "is `{url}`: use `memory`, redis://HOST:PORT (rediss:// for TLS) or nats://HOST:PORT"
        )),
    }
}

/// A connected cluster engine, and what claims the node id on it.
pub(crate) enum ClusterEngine {
    Redis(Arc<RedisEngine>),
    Nats(Arc<NatsEngine>),
}

impl ClusterEngine {
    /// Connects to the broker `choice` names (`None` for the memory engine); an unreachable
    /// one is an error naming its URL.
    pub(crate) async fn connect(choice: EngineChoice) -> anyhow::Result<Option<Self>> {
        let engine = match choice {
            EngineChoice::Memory => return Ok(None),
            EngineChoice::Redis(options) => RedisEngine::connect_with(options)
                .await
                .map(|e| Self::Redis(Arc::new(e))),
            EngineChoice::Nats(options) => NatsEngine::connect_with(options)
                .await
                .map(|e| Self::Nats(Arc::new(e))),
        };
        engine.map(Some).map_err(|e| anyhow::anyhow!("engine: {e}"))
    }

    /// The engine, for the server builder.
    pub(crate) fn engine(&self) -> Arc<dyn Engine> {
        match self {
            Self::Redis(engine) => engine.clone(),
            Self::Nats(engine) => engine.clone(),
        }
    }

    async fn try_claim(&self, node: &str) -> Result<(), EngineError> {
        match self {
            Self::Redis(engine) => engine.claim_node(node).await,
            Self::Nats(engine) => engine.claim_node(node).await,
        }
    }

    /// Claims `node` for this process. A node that was killed leaves its claim behind for up
    /// to a lease: wait that long before giving up.
    pub(crate) async fn claim_node(&self, node: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        let mut told = false;
        loop {
            match self.try_claim(node).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == EngineErrorKind::Conflict => {
                    if tokio::time::Instant::now() >= deadline {
                        anyhow::bail!("{e}: give each node its own --node-id");
                    }
                    if !told {
                        tracing::warn!("{e}; waiting for it to lapse");
                        told = true;
                    }
                    // A lease held elsewhere is only seen by asking again.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("engine: {e}"),
            }
        }
    }

    /// Gives the node id back, for a clean stop.
    pub(crate) async fn release_node(&self) {
        match self {
            Self::Redis(engine) => engine.release_node().await,
            Self::Nats(engine) => engine.release_node().await,
        }
    }
}
