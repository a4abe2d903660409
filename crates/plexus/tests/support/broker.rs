//! The brokers the cluster tests run on: a throwaway redis-server or nats-server each.

use plexus_nats::testing::NatsServer;
use plexus_redis::testing::RedisServer;

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
