//! What the server counts, through the [`metrics`] facade: nothing is recorded until the
//! application installs a recorder (`plexus serve` installs the Prometheus one and serves it
//! at `/metrics`), and then only through handles registered once, so that a counted message
//! costs an atomic add, not a lookup.
//!
//! Labels stay few whatever clients do: methods only as registered on the router (others
//! are `(other)`, relayed calls `(relayed)`), namespaces as configured, outcomes as error
//! codes up to [`MAX_OUTCOMES`] distinct ones, relayed services up to [`MAX_SERVICES`],
//! close codes, and fixed reasons. No connection
//! id, channel name or user is ever a label. The handles come from the recorder installed
//! when they are first used (install it before building a server); several servers in one
//! process share their series.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use plexus_protocol::{ErrorBody, ErrorCode};

use crate::conn::DisconnectReason;

/// Distinct outcome labels (error codes) kept; later codes count as `OTHER`.
const MAX_OUTCOMES: usize = 64;

/// Distinct service labels kept; later services count as `(other)`.
const MAX_SERVICES: usize = 64;

/// The method label of a call the router does not serve.
const OTHER_METHOD: &str = "(other)";

/// The method label of a call relayed to a provider.
const RELAYED_METHOD: &str = "(relayed)";

/// The service label of services past [`MAX_SERVICES`], and of those nobody provides.
const OTHER_SERVICE: &str = "(other)";

/// The server-wide series, registered once.
pub(crate) struct Metrics {
    pub(crate) connections_open: Gauge,
    pub(crate) connections_opened: Counter,
    pub(crate) messages_received: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) messages_sent: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) outbound_queue_depth: Histogram,
    pub(crate) streams_open: Gauge,
    pub(crate) subscriptions: Gauge,
    pub(crate) slow_consumer_cuts: Counter,
    pub(crate) call_rate_limited: Counter,
    pub(crate) publish_rate_limited: Counter,
    other_method: Arc<MethodMeter>,
    relayed: Arc<MethodMeter>,
}

/// The server-wide series.
pub(crate) fn server() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// What each series means, for the recorder's help text.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("plexus_connections_open", "WebSocket connections open now");
    describe_counter!(
        "plexus_connections_opened_total",
        "connections whose session started"
    );
    describe_counter!(
        "plexus_connections_closed_total",
        "connections ended, by close code (1006: no close handshake)"
    );
    describe_counter!(
        "plexus_handshake_failures_total",
        "connection attempts refused before the session, by reason"
    );
    describe_counter!("plexus_auth_failures_total", "credentials refused, by kind");
    describe_counter!(
        "plexus_calls_total",
        "calls by method (as registered; `(other)`, `(relayed)`) and outcome (`ok`, an error code, `cancelled`)"
    );
    describe_histogram!(
        "plexus_call_duration_seconds",
        Unit::Seconds,
        "time from a call's arrival to its answer (a stream: to its end)"
    );
    describe_gauge!("plexus_streams_open", "streams running now");
    describe_counter!(
        "plexus_messages_received_total",
        "data messages read from clients"
    );
    describe_counter!(
        "plexus_bytes_received_total",
        Unit::Bytes,
        "payload bytes of the data messages read"
    );
    describe_counter!(
        "plexus_messages_sent_total",
        "data messages written to clients"
    );
    describe_counter!(
        "plexus_bytes_sent_total",
        Unit::Bytes,
        "payload bytes of the data messages written"
    );
    describe_histogram!(
        "plexus_outbound_queue_depth",
        "frames waiting when a connection's writer wakes up"
    );
    describe_counter!(
        "plexus_slow_consumer_cuts_total",
        "connections closed (4008) because their outbound queue was full"
    );
    describe_counter!(
        "plexus_rate_limited_total",
        "calls and publications refused with RATE_LIMITED"
    );
    describe_gauge!("plexus_subscriptions", "channel subscriptions on this node");
    describe_gauge!(
        "plexus_history_publications",
        "publications kept in channel histories by the in-memory engine (Redis and NATS keep them in the broker)"
    );
    describe_gauge!(
        "plexus_history_bytes",
        Unit::Bytes,
        "payload bytes of the publications kept in channel histories by the in-memory engine"
    );
    describe_counter!(
        "plexus_publications_total",
        "publications accepted, by namespace"
    );
    describe_counter!(
        "plexus_deliveries_total",
        "publications handed to subscribers on this node, by namespace"
    );
    describe_counter!(
        "plexus_engine_operations_total",
        "engine operations, by operation"
    );
    describe_counter!(
        "plexus_engine_errors_total",
        "engine operations that failed, by operation"
    );
    describe_gauge!(
        "plexus_relay_providers",
        "relay providers, connected here or to another relay node"
    );
    describe_gauge!(
        "plexus_relay_service_providers",
        "live providers of each service, connected here or to another relay node (the first 64 services named; later ones are `(other)`)"
    );
    describe_counter!(
        "plexus_relay_routes_total",
        "relayed calls by service and route: `service` (round-robin), `node` (pinned), `offline` (no provider: SERVICE_OFFLINE)"
    );
}

impl Metrics {
    fn new() -> Self {
        describe();
        Self {
            connections_open: gauge!("plexus_connections_open"),
            connections_opened: counter!("plexus_connections_opened_total"),
            messages_received: counter!("plexus_messages_received_total"),
            bytes_received: counter!("plexus_bytes_received_total"),
            messages_sent: counter!("plexus_messages_sent_total"),
            bytes_sent: counter!("plexus_bytes_sent_total"),
            outbound_queue_depth: histogram!("plexus_outbound_queue_depth"),
            streams_open: gauge!("plexus_streams_open"),
            subscriptions: gauge!("plexus_subscriptions"),
            slow_consumer_cuts: counter!("plexus_slow_consumer_cuts_total"),
            call_rate_limited: counter!("plexus_rate_limited_total", "kind" => "call"),
            publish_rate_limited: counter!("plexus_rate_limited_total", "kind" => "publish"),
            other_method: Arc::new(MethodMeter::new(OTHER_METHOD)),
            relayed: Arc::new(MethodMeter::new(RELAYED_METHOD)),
        }
    }

    /// The meter of calls the router does not serve.
    pub(crate) fn other_method(&self) -> &Arc<MethodMeter> {
        &self.other_method
    }

    /// The meter of relayed calls.
    pub(crate) fn relayed(&self) -> &Arc<MethodMeter> {
        &self.relayed
    }
}

/// A connection ended: counted by its close code.
pub(crate) fn connection_closed(reason: &DisconnectReason) {
    let code = match reason {
        DisconnectReason::ServerClosed(code, _) => code.0,
        DisconnectReason::ClientClosed(code) => code.unwrap_or(1005),
        DisconnectReason::Transport(_) => 1006,
    };
    counter!("plexus_connections_closed_total", "code" => close_label(code)).increment(1);
}

/// Close codes as labels: the defined ones as themselves, the rest of each range as one.
fn close_label(code: u16) -> String {
    match code {
        1000..=1015 | 4000..=4099 => code.to_string(),
        3000..=3999 => "3xxx".into(),
        4100..=4999 => "4xxx".into(),
        _ => "other".into(),
    }
}

/// Why a connection attempt failed before its session started.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HandshakeFailure {
    /// Refused by the connection limits.
    Limit,
    /// Its origin is not allowed.
    Origin,
    /// Its credential was refused.
    Auth,
    /// Not a valid WebSocket upgrade.
    BadUpgrade,
    /// The upgrade did not complete in time.
    UpgradeTimeout,
    /// The in-band `hello` was missing, late or refused.
    Hello,
    /// The server is draining.
    Draining,
}

/// Counts a failed handshake.
pub(crate) fn handshake_failed(reason: HandshakeFailure) {
    let reason = match reason {
        HandshakeFailure::Limit => "limit",
        HandshakeFailure::Origin => "origin",
        HandshakeFailure::Auth => "auth",
        HandshakeFailure::BadUpgrade => "bad_upgrade",
        HandshakeFailure::UpgradeTimeout => "upgrade_timeout",
        HandshakeFailure::Hello => "hello",
        HandshakeFailure::Draining => "draining",
    };
    counter!("plexus_handshake_failures_total", "reason" => reason).increment(1);
}

/// Counts a refused credential, by its kind ([`AuthError::kind_label`](crate::auth::AuthError)).
pub(crate) fn auth_failed(kind: &'static str) {
    counter!("plexus_auth_failures_total", "kind" => kind).increment(1);
}

/// Values of a label that clients choose (error codes, service names): each as itself up
/// to a number of distinct ones, then all others as one.
struct BoundedLabels {
    seen: OnceLock<Mutex<HashSet<String>>>,
    max: usize,
    other: &'static str,
}

impl BoundedLabels {
    const fn new(max: usize, other: &'static str) -> Self {
        Self {
            seen: OnceLock::new(),
            max,
            other,
        }
    }

    fn label(&self, value: &str) -> String {
        let mut seen = self
            .seen
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        self.other.into()
    }

    /// `value` if it has its own label already, else the shared one: for values that must
    /// not claim a label of their own.
    fn known(&self, value: &str) -> String {
        let seen = self
            .seen
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            value.to_owned()
        } else {
            self.other.into()
        }
    }
}

/// An error code as an outcome label: itself, for the first [`MAX_OUTCOMES`] codes seen.
fn outcome_label(code: &ErrorCode) -> String {
    static OUTCOMES: BoundedLabels = BoundedLabels::new(MAX_OUTCOMES, "OTHER");
    OUTCOMES.label(code.as_str())
}

/// Relayed services' names as labels: the first [`MAX_SERVICES`] that providers name. A
/// caller's call of a service nobody provides does not claim one (callers could fill them
/// with made-up names); it counts as `(other)`.
static SERVICES: BoundedLabels = BoundedLabels::new(MAX_SERVICES, OTHER_SERVICE);

/// The series of one service a relay routes to, registered once per service it knows.
pub(crate) struct ServiceMeter {
    /// Its live providers connected to this node (moved by one as each comes and goes, so
    /// that services sharing the `(other)` label add up).
    pub(crate) providers_here: Gauge,
    /// Its live providers connected to other relay nodes of the cluster.
    pub(crate) providers_elsewhere: Gauge,
    /// Calls routed to its providers in turn.
    pub(crate) routed: Counter,
    /// Calls routed to the provider they named (`node`).
    pub(crate) pinned: Counter,
}

impl ServiceMeter {
    /// The series of `service`, which a provider names.
    pub(crate) fn new(service: &str) -> Self {
        let service = SERVICES.label(service);
        Self {
            providers_here: gauge!("plexus_relay_service_providers", "service" => service.clone(), "connected" => "here"),
            providers_elsewhere: gauge!("plexus_relay_service_providers", "service" => service.clone(), "connected" => "elsewhere"),
            routed: counter!("plexus_relay_routes_total", "service" => service.clone(), "route" => "service"),
            pinned: counter!("plexus_relay_routes_total", "service" => service, "route" => "node"),
        }
    }

    /// The gauge of its providers connected here (`here`) or elsewhere.
    pub(crate) fn providers(&self, here: bool) -> &Gauge {
        if here {
            &self.providers_here
        } else {
            &self.providers_elsewhere
        }
    }
}

/// Counts a call of `service` that no provider could take (`SERVICE_OFFLINE`).
pub(crate) fn relay_offline(service: &str) {
    counter!("plexus_relay_routes_total", "service" => SERVICES.known(service), "route" => "offline")
        .increment(1);
}

/// The series of one method: its successes and its latency, registered once.
pub(crate) struct MethodMeter {
    name: Arc<str>,
    ok: Counter,
    duration: Histogram,
}

impl MethodMeter {
    pub(crate) fn new(name: &str) -> Self {
        let label = name.to_owned();
        Self {
            name: name.into(),
            ok: counter!("plexus_calls_total", "method" => label.clone(), "outcome" => "ok"),
            duration: histogram!("plexus_call_duration_seconds", "method" => label),
        }
    }

    /// Starts timing a call.
    pub(crate) fn start(self: &Arc<Self>) -> CallMeter {
        self.start_traced(tracing::Span::none())
    }

    /// Starts timing a call whose `span` gets its `outcome` when it ends.
    pub(crate) fn start_traced(self: &Arc<Self>, span: tracing::Span) -> CallMeter {
        CallMeter {
            meter: self.clone(),
            started: Instant::now(),
            done: false,
            span,
        }
    }

    /// Counts a call answered without running (refused, or a notification handed on): no
    /// latency sample.
    pub(crate) fn count_unrun(&self, outcome: Result<(), &ErrorCode>) {
        self.count(outcome, &tracing::Span::none());
    }

    fn count(&self, outcome: Result<(), &ErrorCode>, span: &tracing::Span) {
        if !span.is_disabled() {
            span.record("outcome", outcome.err().map_or("ok", ErrorCode::as_str));
        }
        match outcome {
            Ok(()) => self.ok.increment(1),
            Err(code) => counter!(
                "plexus_calls_total",
                "method" => self.name.to_string(),
                "outcome" => outcome_label(code),
            )
            .increment(1),
        }
    }
}

/// One call being timed; a call dropped before it finished counts as `cancelled`.
pub(crate) struct CallMeter {
    meter: Arc<MethodMeter>,
    started: Instant,
    done: bool,
    span: tracing::Span,
}

impl CallMeter {
    /// The call ended with `outcome`.
    pub(crate) fn finish(mut self, outcome: Result<(), &ErrorCode>) {
        self.done = true;
        self.meter
            .duration
            .record(self.started.elapsed().as_secs_f64());
        self.meter.count(outcome, &self.span);
    }

    /// The call ended with `result`.
    pub(crate) fn finish_with<T>(self, result: &Result<T, ErrorBody>) {
        self.finish(result.as_ref().map(|_| ()).map_err(|e| &e.code));
    }
}

impl Drop for CallMeter {
    fn drop(&mut self) {
        if !self.done {
            self.meter
                .duration
                .record(self.started.elapsed().as_secs_f64());
            self.meter
                .count(Err(&ErrorCode::from_static("cancelled")), &self.span);
        }
    }
}

/// Counts one open stream while it lives.
pub(crate) struct OpenStream(Gauge);

impl OpenStream {
    pub(crate) fn new() -> Self {
        let open = &server().streams_open;
        open.increment(1.0);
        Self(open.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The series of one channel namespace, registered once.
pub(crate) struct NamespaceMeter {
    pub(crate) publications: Counter,
    pub(crate) deliveries: Counter,
}

impl NamespaceMeter {
    pub(crate) fn new(namespace: &str) -> Self {
        let label = namespace.to_owned();
        Self {
            publications: counter!("plexus_publications_total", "namespace" => label.clone()),
            deliveries: counter!("plexus_deliveries_total", "namespace" => label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedLabels;

    #[test]
    fn labels_past_the_bound_share_one_value() {
        let labels = BoundedLabels::new(2, "(other)");
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), "(other)");
        assert_eq!(
            labels.label("a"),
            "a",
            "values seen before keep their label"
        );
        assert_eq!(labels.label("d"), "(other)");
        assert_eq!(labels.known("b"), "b");
        assert_eq!(labels.known("e"), "(other)", "looking up claims nothing");
        let fresh = BoundedLabels::new(2, "(other)");
        assert_eq!(fresh.known("a"), "(other)");
        assert_eq!(fresh.label("a"), "a", "the lookup left the label free");
    }
}
