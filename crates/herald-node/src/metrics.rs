//! Prometheus metrics served at `/metrics`.
//!
//! Hot-path counters (deliveries) are plain atomics with no labels; labelled families are only
//! touched on rarer events (publications, rejects), where their lookup cost does not matter.
//! What the broker holds in memory ([`MemoryStats`]) is counted by the broker itself and read
//! at scrape time, so the broker crate needs no metrics library.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use herald_core::broker::{FanoutStats, MemoryStats};
use herald_core::source::SourceStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which gate refused something.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Gate {
    connect,
    subscribe,
    publish,
    frame,
}

/// Where a publication came from.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Source {
    api,
    client,
    outbox,
    notify,
    nats,
    redis_stream,
    amqp,
}

/// Labels of `herald_rejects_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// The gate that refused.
    pub gate: Gate,
    /// The stable error code.
    pub code: &'static str,
}

/// Labels of `herald_transport_connections`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// The transport's name: `websocket`, `sse`, `socketio`.
    pub transport: &'static str,
}

/// Labels of `herald_publications_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Where the publication came from.
    pub source: Source,
}

/// Labels of `herald_proxy_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    /// The `[[proxy]]` name.
    pub proxy: String,
    /// `allow`, `deny` or `error` (no usable answer: refused with `unavailable`).
    pub result: &'static str,
}

/// Labels of `herald_proxy_cache_hits_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyNameLabels {
    /// The `[[proxy]]` name.
    pub proxy: String,
}

/// Labels of `herald_webhook_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookDropLabels {
    /// The webhook's name.
    pub webhook: String,
    /// `queue_full` or `retries`.
    pub reason: &'static str,
}

/// Labels of `herald_webhook_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub webhook: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The node's metrics. Every field is registered under the `herald_` prefix.
#[derive(Debug)]
pub struct Metrics {
    /// Open client sessions, every transport.
    pub connections: Gauge,
    /// Channel subscriptions held by sessions on this node.
    pub subscriptions: Gauge,
    /// Publications accepted, by source.
    pub publications: Family<SourceLabels, Counter>,
    /// Frames queued to subscribers (the fan-out's output).
    pub deliveries: Counter,
    /// Sessions closed because their outbound queue overflowed.
    pub slow_consumers: Counter,
    /// Requests refused, by gate and code.
    pub rejects: Family<RejectLabels, Counter>,
    /// The label sets `rejects` has seen, so the admin dashboard can read them all (a
    /// `Family` cannot be iterated). Touched only on a refusal's first occurrence.
    reject_labels: std::sync::Mutex<Vec<RejectLabels>>,
    /// Open client sessions by transport.
    pub transports: Family<TransportLabels, Gauge>,
    /// What the broker holds in this process (filled by the memory broker).
    pub memory: Arc<MemoryStats>,
    /// What the broker's fan-out brought to this node (filled by the Redis broker).
    pub fanout: Arc<FanoutStats>,
    /// Calls to subscribe proxies, by proxy and result.
    pub proxy_requests: Family<ProxyLabels, Counter>,
    /// Subscribe proxy decisions answered from the cache, by proxy.
    pub proxy_cache_hits: Family<ProxyNameLabels, Counter>,
    /// Webhook events dropped, by webhook and reason.
    pub webhook_dropped: Family<WebhookDropLabels, Counter>,
    /// Webhook requests (attempts), by webhook and result.
    pub webhook_requests: Family<WebhookLabels, Counter>,
    /// Each bus source's counters, by source name ([`Metrics::source_stats`]).
    sources: SourceTable,
    registry: Registry,
}

/// Each bus source's name and counters, in registration order.
type SourceTable = Arc<Mutex<Vec<(String, Arc<SourceStats>)>>>;

/// Labels of `herald_source_messages_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceOutcomeLabels {
    source: String,
    outcome: &'static str,
}

/// Labels of `herald_source_lag`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceNameLabels {
    source: String,
}

/// Exports every bus source's [`SourceStats`] at scrape time: throughput as
/// `herald_source_messages_total{source,outcome}` (received, published, unrouted,
/// dead_lettered) and lag as `herald_source_lag{source}`.
#[derive(Debug)]
struct SourceCollector(SourceTable);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = crate::lock(&self.0).clone();
        if sources.is_empty() {
            return Ok(());
        }
        let read = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "source_messages",
            "Messages taken from each event-bus source, by outcome (received, published, unrouted, dead_lettered)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, stats) in &sources {
            for (outcome, value) in [
                ("received", read(&stats.received)),
                ("published", read(&stats.published)),
                ("unrouted", read(&stats.unrouted)),
                ("dead_lettered", read(&stats.dead_lettered)),
            ] {
                let labels = SourceOutcomeLabels {
                    source: name.clone(),
                    outcome,
                };
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "source_lag",
            "Messages waiting in each event-bus source for this gateway's consumer, as the bus last reported",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (name, stats) in &sources {
            let labels = SourceNameLabels {
                source: name.clone(),
            };
            let lag = i64::try_from(read(&stats.lag)).unwrap_or(i64::MAX);
            ConstGauge::new(lag).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Exports [`MemoryStats`] at scrape time.
#[derive(Debug)]
struct MemoryCollector(Arc<MemoryStats>);

impl Collector for MemoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let read = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        let gauges = [
            (
                "history_bytes",
                "Bytes of history held by the memory broker (payloads and bookkeeping)",
                read(&m.history_bytes),
            ),
            (
                "history_publications",
                "Publications retained in the memory broker's history",
                read(&m.history_publications),
            ),
            (
                "broker_channels",
                "Channel records (offset and epoch) held by the memory broker",
                read(&m.channels),
            ),
            (
                "idempotency_keys",
                "Idempotency keys remembered by the memory broker",
                read(&m.idempotency_keys),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let counters = [
            (
                "history_evictions",
                "Publications evicted from history, oldest first, to stay within broker.history_budget_bytes",
                read(&m.history_evictions),
            ),
            (
                "broker_channel_evictions",
                "Idle channel records dropped at broker.max_idle_channels",
                read(&m.channel_evictions),
            ),
            (
                "idempotency_evictions",
                "Idempotency keys forgotten before their window ended, at broker.max_idempotency_keys",
                read(&m.idempotency_evictions),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Exports [`FanoutStats`] at scrape time.
#[derive(Debug)]
struct FanoutCollector(Arc<FanoutStats>);

impl Collector for FanoutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let counters = [
            (
                "broker_messages",
                "Pub/sub messages (publications, presence events) this node received from the broker",
                m.messages.load(Ordering::Relaxed),
            ),
            (
                "broker_messages_unwanted",
                "Pub/sub messages received for a channel with no subscriber on this node",
                m.unwanted.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let m = Self {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            publications: Family::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            rejects: Family::default(),
            reject_labels: Default::default(),
            transports: Family::default(),
            memory: Arc::default(),
            fanout: Arc::default(),
            proxy_requests: Family::default(),
            proxy_cache_hits: Family::default(),
            webhook_dropped: Family::default(),
            webhook_requests: Family::default(),
            sources: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "transport_connections",
            "Open client connections by transport",
            m.transports.clone(),
        );
        registry.register(
            "subscriptions",
            "Channel subscriptions held by connections on this node",
            m.subscriptions.clone(),
        );
        registry.register(
            "publications",
            "Publications accepted, by source",
            m.publications.clone(),
        );
        registry.register(
            "deliveries",
            "Publications queued to subscribers on this node",
            m.deliveries.clone(),
        );
        registry.register(
            "slow_consumers",
            "Connections closed because their outbound queue overflowed (drops)",
            m.slow_consumers.clone(),
        );
        registry.register(
            "rejects",
            "Requests refused, by gate and error code",
            m.rejects.clone(),
        );
        registry.register(
            "proxy_requests",
            "Requests to the backend's subscribe proxies, by proxy and result (allow, deny, error)",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_cache_hits",
            "Subscribe proxy decisions taken from the cache instead of the backend, by proxy",
            m.proxy_cache_hits.clone(),
        );
        registry.register(
            "webhook_dropped",
            "Webhook events dropped: the queue was full, or the batch failed max_attempts times",
            m.webhook_dropped.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook requests (each attempt), by result",
            m.webhook_requests.clone(),
        );
        registry.register_collector(Box::new(MemoryCollector(m.memory.clone())));
        registry.register_collector(Box::new(SourceCollector(m.sources.clone())));
        registry.register_collector(Box::new(FanoutCollector(m.fanout.clone())));
        Self { registry, ..m }
    }

    /// The gauge of open connections over `transport` (a [`crate::Transport`]'s `NAME`).
    pub fn transport_connections(&self, transport: &'static str) -> Gauge {
        self.transports
            .get_or_create_owned(&TransportLabels { transport })
    }

    /// Every refusal counted so far: (gate, code, count), in first-seen order.
    pub fn rejects_snapshot(&self) -> Vec<(Gate, &'static str, u64)> {
        let labels = crate::lock(&self.reject_labels).clone();
        labels
            .into_iter()
            .map(|l| {
                let n = self.rejects.get(&l).map_or(0, |c| c.get());
                (l.gate, l.code, n)
            })
            .collect()
    }

    /// Publications accepted so far, every source.
    pub fn publications_total(&self) -> u64 {
        [Source::api, Source::client, Source::outbox, Source::notify]
            .into_iter()
            .map(|source| {
                self.publications
                    .get(&SourceLabels { source })
                    .map_or(0, |c| c.get())
            })
            .sum()
    }

    /// Counts one call to a subscribe proxy and its result.
    pub fn proxy_call(&self, proxy: &str, result: &'static str) {
        self.proxy_requests
            .get_or_create(&ProxyLabels {
                proxy: proxy.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts one subscribe proxy decision served from the cache.
    pub fn proxy_cache_hit(&self, proxy: &str) {
        self.proxy_cache_hits
            .get_or_create(&ProxyNameLabels {
                proxy: proxy.to_owned(),
            })
            .inc();
    }

    /// Counts `n` dropped webhook events.
    pub fn webhook_dropped(&self, webhook: &str, reason: &'static str, n: u64) {
        self.webhook_dropped
            .get_or_create(&WebhookDropLabels {
                webhook: webhook.to_owned(),
                reason,
            })
            .inc_by(n);
    }

    /// Counts one webhook request and its result.
    pub fn webhook_delivery(&self, webhook: &str, result: &'static str) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts one refusal.
    pub fn reject(&self, gate: Gate, code: herald_core::protocol::ErrorCode) {
        let labels = RejectLabels {
            gate,
            code: code.as_str(),
        };
        if self.rejects.get(&labels).is_none() {
            let mut seen = crate::lock(&self.reject_labels);
            if !seen.contains(&labels) {
                seen.push(labels.clone());
            }
        }
        self.rejects.get_or_create(&labels).inc();
    }

    /// The counters of the bus source `name`, created on first use and exported from then on.
    pub fn source_stats(&self, name: &str) -> Arc<SourceStats> {
        let mut sources = crate::lock(&self.sources);
        if let Some((_, s)) = sources.iter().find(|(n, _)| n == name) {
            return s.clone();
        }
        let stats = Arc::new(SourceStats::default());
        sources.push((name.to_owned(), stats.clone()));
        stats
    }

    /// Counts one accepted publication.
    pub fn published(&self, source: Source) {
        self.publications
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
