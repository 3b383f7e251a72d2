//! Prometheus metrics, exported at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    LongPoll,
    /// NDJSON and iframe streaming.
    Stream,
    /// STOMP over WebSocket: one per subscription (each holds its own hub connection).
    Stomp,
    /// The gRPC `Subscribe` stream, and gRPC-Web's.
    Grpc,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
            Transport::Stream => "stream",
            Transport::Stomp => "stomp",
            Transport::Grpc => "grpc",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

/// Every metric the service keeps. Cheap to clone: the handles are shared.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    connections: Family<TransportLabel, Gauge>,
    pub published: Counter,
    pub delivered: Counter,
    /// Notifications deleted because their `expires_at` passed (one per recipient).
    pub expired: Counter,
    pub latency: Histogram,
    pub bus_reconnects: Counter,
    pub slow_consumers: Counter,
    /// Events this replica's bus subscription delivered to it, from any replica.
    pub bus_received: Counter,
    /// Of those, the ones not for a user held here (or sent by this replica itself).
    pub bus_dropped: Counter,
    /// Bus events this release could not read (another release's, during an upgrade), by
    /// reason: `version`, `kind`, `malformed`.
    bus_skipped: Family<ReasonLabel, Counter>,
    /// Redis channels this replica is subscribed to now (one per user held, plus one).
    pub bus_subscriptions: Gauge,
    /// Times every channel was subscribed again: after a reconnect, a slot move, a fail-over.
    pub bus_resubscribes: Counter,
    /// Present when the MQTT bridge is on.
    pub mqtt: Option<MqttMetrics>,
    /// Present when Web Push is on.
    pub webpush: Option<WebPushMetrics>,
    pub retention: RetentionMetrics,
    pub oidc: OidcMetrics,
}

/// The OpenID Connect key set's fetches (see `auth::oidc`): a failing provider shows here
/// while the cached keys keep serving.
#[derive(Clone, Debug, Default)]
pub struct OidcMetrics {
    pub fetches: Counter,
    pub failures: Counter,
    /// Keys in the cached set.
    pub keys: Gauge,
    /// 1 while the last fetch failed (the cached keys, if any, are still in use).
    pub stale: Gauge,
}

impl OidcMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("oidc");
        r.register(
            "jwks_fetches",
            "JWKS fetches that succeeded",
            self.fetches.clone(),
        );
        r.register(
            "jwks_fetch_failures",
            "JWKS (or discovery) fetches that failed; the cached keys stay in use",
            self.failures.clone(),
        );
        r.register("jwks_keys", "Keys in the cached JWKS", self.keys.clone());
        r.register(
            "jwks_stale",
            "1 while the last JWKS fetch failed",
            self.stale.clone(),
        );
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The retention task's metrics.
#[derive(Clone, Debug, Default)]
pub struct RetentionMetrics {
    /// Inbox rows pruned, by reason (`age`, `count`).
    pruned: Family<ReasonLabel, Counter>,
    /// Messages deleted because no inbox row referenced them any more.
    pub messages: Counter,
    /// Runs this replica did (it held the lock).
    pub runs: Counter,
    /// Runs skipped because another replica held the lock.
    pub skipped: Counter,
    /// Runs that stopped on a database error, and failed attempts at the lock.
    pub failures: Counter,
    /// How long this replica's last run took.
    pub last_run_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl RetentionMetrics {
    pub fn pruned(&self, reason: &str) -> Counter {
        self.pruned
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .clone()
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("retention");
        for reason in ["age", "count"] {
            let _ = self.pruned(reason);
        }
        r.register(
            "pruned_rows",
            "Notifications (inbox rows) pruned by retention, by reason",
            self.pruned.clone(),
        );
        r.register(
            "messages_deleted",
            "Messages deleted once no inbox row referenced them",
            self.messages.clone(),
        );
        r.register(
            "runs",
            "Retention runs done by this replica",
            self.runs.clone(),
        );
        r.register(
            "runs_skipped",
            "Retention runs skipped because another replica was pruning",
            self.skipped.clone(),
        );
        r.register(
            "failures",
            "Retention runs stopped by a database error",
            self.failures.clone(),
        );
        r.register(
            "last_run_seconds",
            "How long this replica's last retention run took",
            self.last_run_seconds.clone(),
        );
    }
}

/// The MQTT bridge's metrics; registered only when the bridge is on.
#[derive(Clone, Debug)]
pub struct MqttMetrics {
    /// Publishes handed to the broker (repeats after a reconnect count again).
    pub published: Counter,
    /// Publishes the broker acknowledged (PUBACK): their rows are deleted.
    pub acknowledged: Counter,
    /// Batches abandoned because the broker went away or did not acknowledge in time.
    pub failures: Counter,
    /// Rows dropped unpublished because they passed `TIDINGS__MQTT__MAX_AGE_SECONDS`.
    pub dropped: Counter,
    /// Rows waiting in the outbox (counted up to a cap), as last measured.
    pub outbox_depth: Gauge,
    /// 1 while this replica's bridge holds an acknowledged connection to the broker.
    pub connected: Gauge,
    /// From handing a publish to the broker to its PUBACK.
    pub ack_latency: Histogram,
}

impl MqttMetrics {
    fn new() -> Self {
        Self {
            published: Counter::default(),
            acknowledged: Counter::default(),
            failures: Counter::default(),
            dropped: Counter::default(),
            outbox_depth: Gauge::default(),
            connected: Gauge::default(),
            ack_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
            ),
        }
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mqtt");
        r.register(
            "published",
            "Publishes handed to the MQTT broker",
            self.published.clone(),
        );
        r.register(
            "acknowledged",
            "Publishes the MQTT broker acknowledged (PUBACK)",
            self.acknowledged.clone(),
        );
        r.register(
            "failures",
            "MQTT batches abandoned (broker gone or no PUBACK in time); their rows are retried",
            self.failures.clone(),
        );
        r.register(
            "outbox_dropped",
            "Outbox rows dropped unpublished for passing the configured maximum age",
            self.dropped.clone(),
        );
        r.register(
            "outbox_depth",
            "Rows waiting in the MQTT outbox",
            self.outbox_depth.clone(),
        );
        r.register(
            "connected",
            "1 while the bridge is connected to the MQTT broker",
            self.connected.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "From publish to PUBACK",
            self.ack_latency.clone(),
        );
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The push service's HTTP status, or `none` when it did not answer.
    pub status: String,
}

/// The Web Push sender's metrics; registered only when Web Push is on.
#[derive(Clone, Debug)]
pub struct WebPushMetrics {
    /// Pushes a push service accepted (201, or any 2xx).
    pub sent: Counter,
    /// Pushes that failed, by the push service's status (`none`: no answer).
    pub failed: Family<StatusLabel, Counter>,
    /// Subscriptions deleted because the push service said they are gone (404, 410).
    pub removed: Counter,
    /// Rows waiting in the Web Push outbox (counted up to a cap), as last measured.
    pub outbox_depth: Gauge,
    /// From sending a push to the push service's answer.
    pub latency: Histogram,
}

impl WebPushMetrics {
    fn new() -> Self {
        Self {
            sent: Counter::default(),
            failed: Family::default(),
            removed: Counter::default(),
            outbox_depth: Gauge::default(),
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 16,
            )),
        }
    }

    pub fn failed(&self, status: Option<u16>) {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.failed.get_or_create(&StatusLabel { status }).inc();
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("webpush");
        r.register("sent", "Pushes a push service accepted", self.sent.clone());
        r.register(
            "failed",
            "Pushes that failed, by the push service's status (none: no answer)",
            self.failed.clone(),
        );
        r.register(
            "subscriptions_removed",
            "Subscriptions deleted because the push service said they are gone (404, 410)",
            self.removed.clone(),
        );
        r.register(
            "outbox_depth",
            "Rows waiting in the Web Push outbox",
            self.outbox_depth.clone(),
        );
        r.register(
            "send_latency_seconds",
            "From sending a push to the push service's answer",
            self.latency.clone(),
        );
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_mqtt(false)
    }

    /// The metrics, with the MQTT bridge's when it is on.
    pub fn with_mqtt(mqtt: bool) -> Self {
        Self::with_bridges(mqtt, false)
    }

    /// The metrics, with each bridge's when it is on.
    pub fn with_bridges(mqtt: bool, webpush: bool) -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let connections = Family::<TransportLabel, Gauge>::default();
        let published = Counter::default();
        let delivered = Counter::default();
        let expired = Counter::default();
        registry.register(
            "notifications_expired",
            "Notifications deleted because their expiry passed (one per recipient)",
            expired.clone(),
        );
        // 0.5 ms to ~16 s: local delivery is sub-millisecond, cross-replica a few ms.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0005, 2.0, 16,
        ));
        let bus_reconnects = Counter::default();
        let slow_consumers = Counter::default();
        let bus_received = Counter::default();
        let bus_dropped = Counter::default();
        let bus_skipped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "bus_events_skipped",
            "Events received from the Redis bus that this release cannot read, by reason",
            bus_skipped.clone(),
        );
        let bus_subscriptions = Gauge::default();
        let bus_resubscribes = Counter::default();
        registry.register(
            "bus_events_received",
            "Events received from the Redis bus",
            bus_received.clone(),
        );
        registry.register(
            "bus_events_dropped",
            "Events received from the Redis bus for no user held here, or sent by this replica",
            bus_dropped.clone(),
        );
        registry.register(
            "bus_subscriptions",
            "Redis channels this replica is subscribed to",
            bus_subscriptions.clone(),
        );
        registry.register(
            "bus_resubscribes",
            "Times the bus subscribed to its channels again (reconnect, slot move, fail-over)",
            bus_resubscribes.clone(),
        );
        registry.register(
            "connections",
            "Open streams, sockets and waiting long-polls",
            connections.clone(),
        );
        registry.register(
            "notifications_published",
            "Notifications committed (one per recipient)",
            published.clone(),
        );
        registry.register(
            "notifications_delivered",
            "Notifications handed to a live connection",
            delivered.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From commit to hand-off to a live connection",
            latency.clone(),
        );
        registry.register(
            "bus_reconnects",
            "Times the Redis subscription was re-established",
            bus_reconnects.clone(),
        );
        registry.register(
            "slow_consumers_dropped",
            "Connections cut off because they did not read fast enough",
            slow_consumers.clone(),
        );
        for transport in [
            Transport::Sse,
            Transport::WebSocket,
            Transport::LongPoll,
            Transport::Stream,
            Transport::Stomp,
            Transport::Grpc,
        ] {
            let _ = connections.get_or_create(&TransportLabel { transport });
        }
        let retention = RetentionMetrics::default();
        retention.register(&mut registry);
        let oidc = OidcMetrics::default();
        oidc.register(&mut registry);
        let mqtt = mqtt.then(|| {
            let m = MqttMetrics::new();
            m.register(&mut registry);
            m
        });
        let webpush = webpush.then(|| {
            let m = WebPushMetrics::new();
            m.register(&mut registry);
            m
        });
        Self {
            expired,
            mqtt,
            webpush,
            retention,
            oidc,
            registry: Arc::new(registry),
            connections,
            published,
            delivered,
            latency,
            bus_reconnects,
            slow_consumers,
            bus_received,
            bus_dropped,
            bus_skipped,
            bus_subscriptions,
            bus_resubscribes,
        }
    }

    pub fn bus_skipped(&self, reason: &str) {
        self.bus_skipped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn connection_opened(&self, transport: Transport) {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    pub fn connection_closed(&self, transport: Transport) {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .dec();
    }

    pub fn connections(&self, transport: Transport) -> i64 {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .get()
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
