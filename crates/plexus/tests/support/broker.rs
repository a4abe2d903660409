//! The brokers the cluster tests run on: a throwaway redis-server or nats-server each, and
//! pairs of engines of one cluster (on a broker, or linked memory engines).

use std::sync::Arc;

use plexus_nats::NatsEngine;
use plexus_nats::testing::NatsServer;
use plexus_redis::RedisEngine;
use plexus_redis::testing::RedisServer;
use plexus_server::{Engine, MemoryEngine};

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Redis,
    Nats,
}

/// A running broker, stopped when dropped.
pub(crate) enum Broker {
    Redis(RedisServer),
    Nats(NatsServer),
}

impl Broker {
    pub(crate) async fn start(kind: Kind) -> Self {
        match kind {
            Kind::Redis => Self::Redis(RedisServer::start().await),
            Kind::Nats => Self::Nats(NatsServer::start().await),
        }
    }

    /// The URL `--engine` takes.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Redis(server) => server.url(),
            Self::Nats(server) => server.url(),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        match self {
            Self::Redis(server) => server.port(),
            Self::Nats(server) => server.port(),
        }
    }

    /// SIGSTOP: it stops answering, its sockets stay open.
    pub(crate) fn pause(&self) {
        match self {
            Self::Redis(server) => server.pause(),
            Self::Nats(server) => server.pause(),
        }
    }

    /// SIGCONT.
    pub(crate) fn resume(&self) {
        match self {
            Self::Redis(server) => server.resume(),
            Self::Nats(server) => server.resume(),
        }
    }

    /// SIGKILL.
    pub(crate) async fn kill(&mut self) {
        match self {
            Self::Redis(server) => server.kill().await,
            Self::Nats(server) => server.kill().await,
        }
    }

    /// Starts it again, empty, on the same port.
    pub(crate) async fn restart(&mut self) {
        match self {
            Self::Redis(server) => server.restart().await,
            Self::Nats(server) => server.restart().await,
        }
    }
}

/// What carries two in-process nodes' channels (see `backend_tests!`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Memory,
    Redis,
    Nats,
}

/// Two engines of one cluster; the broker they share lives as long as the guard.
pub(crate) async fn engines(
    backend: Backend,
) -> (Arc<dyn Engine>, Arc<dyn Engine>, Option<Broker>) {
    match backend {
        Backend::Memory => {
            let a = MemoryEngine::new();
            let b = a.peer();
            (Arc::new(a), Arc::new(b), None)
        }
        Backend::Redis => {
            let redis = Broker::start(Kind::Redis).await;
            let a = RedisEngine::connect(&redis.url())
                .await
                .expect("redis is up");
            let b = RedisEngine::connect(&redis.url())
                .await
                .expect("redis is up");
            (Arc::new(a), Arc::new(b), Some(redis))
        }
        Backend::Nats => {
            let nats = Broker::start(Kind::Nats).await;
            let a = NatsEngine::connect(&nats.url()).await.expect("nats is up");
            let b = NatsEngine::connect(&nats.url()).await.expect("nats is up");
            (Arc::new(a), Arc::new(b), Some(nats))
        }
    }
}
