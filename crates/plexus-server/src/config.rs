//! Endpoint configuration: limits, timeouts, compression and allowed origins.

use std::time::Duration;

use crate::guard::{OriginPolicy, RateLimit};

/// permessage-deflate (RFC 7692) policy of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Never negotiate compression.
    Off,
    /// Negotiate when the client offers it, with context takeover (best ratio, about 300 KiB
    /// of zlib state per connection).
    On,
    /// Negotiate when offered, without server context takeover: less memory per connection
    /// and the same output for the same message on every connection.
    #[default]
    NoContextTakeover,
}

/// Limits and timings of an endpoint. Every field has a sensible default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Largest message accepted; a larger one closes the connection with 1009. Default 1 MiB.
    pub max_message_size: usize,
    /// Calls (requests and streams) a connection may have in flight; more get `RATE_LIMITED`.
    /// Default 1,024.
    pub max_in_flight: usize,
    /// Frames that may wait to be written to one connection; when a push finds it full the
    /// connection is closed with 4008 (slow consumer). Default 1,024.
    pub outbound_queue: usize,
    /// Time allowed for the WebSocket upgrade to complete after the HTTP request was
    /// accepted, then for the client's `hello` when it authenticates in band (else close
    /// 4000), then for a pool's handler to take the connection (else close 1013). Default
    /// 10 s.
    pub handshake_timeout: Duration,
    /// Close (1000) a connection after this long without application traffic: no frame from
    /// the client, none pushed to it, and no call in progress either way. Default: none.
    pub idle_timeout: Option<Duration>,
    /// Interval of WebSocket pings; a peer silent for about two intervals is closed (4002).
    /// Default 25 s.
    pub heartbeat_interval: Duration,
    /// Channels one connection may have joined at once; more joins get `RATE_LIMITED`.
    /// Default 1,024.
    pub max_subscriptions: usize,
    /// Bad frames tolerated per minute before the connection is closed with 4029. Default 100.
    pub max_bad_frames_per_minute: u32,
    /// Default timeout of calls from the server to the client. Default 30 s.
    pub server_call_timeout: Duration,
    /// How long a graceful shutdown lets calls in flight finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Connections the endpoint holds at once; more upgrades get HTTP 503. Default 100,000.
    pub max_connections: usize,
    /// Connections from one client address at once (IPv6: one /64); more upgrades get HTTP
    /// 429. Default 10,000 (behind a proxy every client shares its address).
    pub max_connections_per_ip: usize,
    /// Calls (`req`, `sub`, `ntf`, `join`, `leave`) one connection may make, as a token
    /// bucket; more get `RATE_LIMITED`. Default: none (`plexus serve` sets one).
    pub call_rate: Option<RateLimit>,
    /// Publications (`pub`) one connection may make, as a token bucket; more get
    /// `RATE_LIMITED`. Default: none (`plexus serve` sets one).
    pub publish_rate: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_in_flight: 1024,
            outbound_queue: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: None,
            heartbeat_interval: Duration::from_secs(25),
            max_subscriptions: 1024,
            max_bad_frames_per_minute: 100,
            server_call_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            call_rate: None,
            publish_rate: None,
        }
    }
}

/// How an endpoint runs its WebSocket layer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Limits and timings.
    pub limits: Limits,
    /// permessage-deflate policy.
    pub compression: Compression,
    /// Messages smaller than this are sent uncompressed even when compression is on.
    /// Default 256 bytes.
    pub compression_threshold: usize,
    /// Initial capacity of each connection's socket read buffer. Smaller saves memory on
    /// idle connections; it grows for large messages (and shrinks back). Default 512 bytes.
    pub read_buffer: usize,
    /// Initial capacity of each connection's socket write buffer; grows as needed. Default 0:
    /// allocated on the first write (the `welcome`), sized to it, so that an idle connection
    /// keeps no more than its largest message needed.
    pub write_buffer: usize,
    /// Which `Origin`s may open a connection (against cross-site WebSocket hijacking);
    /// others get HTTP 403. Default: the same origin as the `Host`, or localhost.
    pub origins: OriginPolicy,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            compression: Compression::default(),
            compression_threshold: 256,
            read_buffer: 512,
            write_buffer: 0,
            origins: OriginPolicy::default(),
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_message_size`].
    pub fn max_message_size(mut self, max_message_size: usize) -> Self {
        self.max_message_size = max_message_size;
        self
    }

    /// Sets [`Limits::max_in_flight`].
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`Limits::outbound_queue`].
    pub fn outbound_queue(mut self, outbound_queue: usize) -> Self {
        self.outbound_queue = outbound_queue;
        self
    }

    /// Sets [`Limits::handshake_timeout`].
    pub fn handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`Limits::idle_timeout`].
    pub fn idle_timeout(mut self, idle_timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = idle_timeout.into();
        self
    }

    /// Sets [`Limits::heartbeat_interval`].
    pub fn heartbeat_interval(mut self, heartbeat_interval: Duration) -> Self {
        self.heartbeat_interval = heartbeat_interval;
        self
    }

    /// Sets [`Limits::max_subscriptions`].
    pub fn max_subscriptions(mut self, max_subscriptions: usize) -> Self {
        self.max_subscriptions = max_subscriptions;
        self
    }

    /// Sets [`Limits::max_bad_frames_per_minute`].
    pub fn max_bad_frames_per_minute(mut self, max_bad_frames_per_minute: u32) -> Self {
        self.max_bad_frames_per_minute = max_bad_frames_per_minute;
        self
    }

    /// Sets [`Limits::server_call_timeout`].
    pub fn server_call_timeout(mut self, server_call_timeout: Duration) -> Self {
        self.server_call_timeout = server_call_timeout;
        self
    }

    /// Sets [`Limits::drain_timeout`].
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Sets [`Limits::max_connections`].
    pub fn max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`Limits::max_connections_per_ip`].
    pub fn max_connections_per_ip(mut self, max_connections_per_ip: usize) -> Self {
        self.max_connections_per_ip = max_connections_per_ip;
        self
    }

    /// Sets [`Limits::call_rate`].
    pub fn call_rate(mut self, call_rate: impl Into<Option<RateLimit>>) -> Self {
        self.call_rate = call_rate.into();
        self
    }

    /// Sets [`Limits::publish_rate`].
    pub fn publish_rate(mut self, publish_rate: impl Into<Option<RateLimit>>) -> Self {
        self.publish_rate = publish_rate.into();
        self
    }
}

impl EndpointConfig {
    /// Sets [`EndpointConfig::limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`EndpointConfig::compression`].
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`EndpointConfig::compression_threshold`].
    pub fn compression_threshold(mut self, compression_threshold: usize) -> Self {
        self.compression_threshold = compression_threshold;
        self
    }

    /// Sets [`EndpointConfig::read_buffer`].
    pub fn read_buffer(mut self, read_buffer: usize) -> Self {
        self.read_buffer = read_buffer;
        self
    }

    /// Sets [`EndpointConfig::write_buffer`].
    pub fn write_buffer(mut self, write_buffer: usize) -> Self {
        self.write_buffer = write_buffer;
        self
    }

    /// Sets [`EndpointConfig::origins`].
    pub fn origins(mut self, origins: OriginPolicy) -> Self {
        self.origins = origins;
        self
    }

    /// The yawc options that implement this configuration.
    pub(crate) fn ws_options(&self) -> yawc::Options {
        // yawc's size limit is exclusive: a message of exactly `max_message_size` must pass.
        let max = self.limits.max_message_size.saturating_add(1);
        let options = yawc::Options::default()
            .with_utf8()
            .with_no_delay()
            .with_limits(max, max)
            .with_read_buffer_capacity(self.read_buffer)
            .with_write_buffer_capacity(self.write_buffer);
        match self.compression {
            Compression::Off => options.without_compression(),
            Compression::On => options
                .with_low_latency_compression()
                .with_compression_threshold(self.compression_threshold),
            Compression::NoContextTakeover => options
                .with_low_latency_compression()
                .server_no_context_takeover()
                .with_compression_threshold(self.compression_threshold),
        }
    }
}
