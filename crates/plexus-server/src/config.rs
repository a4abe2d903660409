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
    /// accepted, and then for the client's `hello` when it authenticates in band (else
    /// close 4000). Default 10 s.
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
    /// Initial capacity of each connection's socket write buffer; grows as needed. Default 512 bytes.
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
            write_buffer: 512,
            origins: OriginPolicy::default(),
        }
    }
}

impl EndpointConfig {
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
