//! Configuration of the event-bus sources: `[[source.nats]]` (a JetStream durable consumer),
//! `[[source.redis_stream]]` (a Redis Streams consumer group) and `[[source.amqp]]` (a
//! RabbitMQ queue), each with its allowlist of `[[source.<bus>.route]]`s ([`crate::route`]).
//!
//! Every field is documented in `docs/configuration.md`; what each source guarantees
//! (delivery, ordering, dead letters) is in `docs/sources.md`.

use std::time::Duration;

use serde::Deserialize;

use crate::route::{RouteConfig, Routes};

/// `[[source.nats]]`: one JetStream stream, read through a durable pull consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://host:port` (credentials in the URL: `nats://user:pass@host:port`).
    pub url: String,
    /// The JetStream stream to read (it must exist: the services that publish own it).
    pub stream: String,
    /// The durable consumer's name, shared by every gateway of a cluster; created when missing.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Only subjects matching this filter are delivered to the consumer (default: all the
    /// stream's subjects). Routes still decide what is published.
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// How long the server waits for an acknowledgement before it redelivers (a crashed
    /// gateway's message goes to another one after this).
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Messages that match a route but cannot be published are published here (through
    /// JetStream, so a stream must capture the subject) with a `Herald-Error` header. Unset:
    /// they are logged, counted and acknowledged.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
    /// The allowlist.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// The compiled allowlist (filled by validation).
    #[serde(skip)]
    pub routes: Routes,
}

/// `[[source.redis_stream]]`: one Redis stream, read through a consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSourceConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The consumer group, shared by every gateway of a cluster; created (at `$`, or at the
    /// start with `start = "0"`) when missing.
    #[serde(default = "default_consumer")]
    pub group: String,
    /// Where a new group starts: `$` (entries added from now on) or `0` (the whole stream).
    #[serde(default = "default_start")]
    pub start: String,
    /// The entry field holding the message (JSON).
    #[serde(default = "default_payload_field")]
    pub payload_field: String,
    /// The entry field holding the subject routes match; entries without it are matched by
    /// the stream's key.
    #[serde(default = "default_subject_field")]
    pub subject_field: String,
    /// Entries read per `XREADGROUP`.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long one gateway holds the consumer lease without renewing it: after a crash,
    /// another gateway takes over (and claims the entries left pending) after this.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Dead letters are added to this stream (fields `error`, `stream`, `id`, then the
    /// entry's own fields). Unset: they are logged, counted and acknowledged.
    #[serde(default)]
    pub dead_letter_stream: Option<String>,
    /// The allowlist.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// The compiled allowlist (filled by validation).
    #[serde(skip)]
    pub routes: Routes,
}

/// `[[source.amqp]]`: one RabbitMQ queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// `amqp://user:pass@host:port/vhost` (`%2f` is the default vhost).
    pub url: String,
    /// The queue to consume. Declared durable with `x-single-active-consumer` when missing.
    pub queue: String,
    /// Bindings made at start (idempotent): `{ exchange = "events", routing_key = "orders.#" }`.
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
    /// Unacknowledged deliveries the broker may push ahead (`basic.qos` prefetch count).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Redeliveries are recognised by the `message-id` property, or by this header when set.
    #[serde(default)]
    pub message_id_header: Option<String>,
    /// Dead letters are published to this exchange with the original routing key and an
    /// `x-herald-error` header, confirmed before the original is acknowledged. Unset: they
    /// are rejected without requeue (the queue's own dead-letter exchange, if any, gets them).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// The allowlist.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// The compiled allowlist (filled by validation).
    #[serde(skip)]
    pub routes: Routes,
}

/// One queue binding of an `[[source.amqp]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    /// The exchange (it must exist).
    pub exchange: String,
    /// The binding key (topic exchanges: `orders.*`, `orders.#`).
    #[serde(default)]
    pub routing_key: String,
}

fn default_consumer() -> String {
    "herald".into()
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_start() -> String {
    "$".into()
}
fn default_payload_field() -> String {
    "data".into()
}
fn default_subject_field() -> String {
    "subject".into()
}
fn default_batch() -> usize {
    100
}
fn default_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_prefetch() -> u16 {
    100
}

/// A NATS subject token or name: no whitespace, no wildcard unless allowed.
fn is_nats_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

/// Problems of one bus source, as `(field, message)` relative to the source.
pub(crate) fn check_nats(c: &NatsSourceConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if !(c.url.starts_with("nats://") || c.url.starts_with("tls://")) {
        p.push(("url".into(), "must be a nats:// URL".into()));
    }
    if !is_nats_name(&c.stream) {
        p.push(("stream".into(), "must be a JetStream stream name".into()));
    }
    if !is_nats_name(&c.consumer) {
        p.push((
            "consumer".into(),
            "must be a JetStream consumer name".into(),
        ));
    }
    if c.ack_wait < Duration::from_secs(1) {
        p.push(("ack_wait".into(), "must be at least 1s".into()));
    }
    if let Some(s) = &c.dead_letter_subject
        && (s.is_empty() || s.contains(['*', '>', ' ']))
    {
        p.push((
            "dead_letter_subject".into(),
            "must be a subject without wildcards".into(),
        ));
    }
    p
}

pub(crate) fn check_redis(c: &RedisStreamSourceConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if !(c.url.starts_with("redis://") || c.url.starts_with("rediss://")) {
        p.push(("url".into(), "must be a redis:// URL".into()));
    }
    for (field, v) in [
        ("stream", &c.stream),
        ("group", &c.group),
        ("payload_field", &c.payload_field),
        ("subject_field", &c.subject_field),
    ] {
        if v.is_empty() {
            p.push((field.into(), "must not be empty".into()));
        }
    }
    if c.start != "$" && c.start != "0" {
        p.push(("start".into(), "must be \"$\" or \"0\"".into()));
    }
    if c.batch_size == 0 {
        p.push(("batch_size".into(), "must be greater than 0".into()));
    }
    if c.lease < Duration::from_secs(1) {
        p.push(("lease".into(), "must be at least 1s".into()));
    }
    if c.dead_letter_stream.as_deref().is_some_and(str::is_empty) {
        p.push(("dead_letter_stream".into(), "must not be empty".into()));
    }
    p
}

pub(crate) fn check_amqp(c: &AmqpSourceConfig) -> Vec<(String, String)> {
    let mut p = Vec::new();
    if !(c.url.starts_with("amqp://") || c.url.starts_with("amqps://")) {
        p.push(("url".into(), "must be an amqp:// URL".into()));
    }
    if c.queue.is_empty() || c.queue.starts_with("amq.") {
        p.push((
            "queue".into(),
            "must be a queue name (not empty, not amq.*)".into(),
        ));
    }
    if c.prefetch == 0 {
        p.push(("prefetch".into(), "must be greater than 0".into()));
    }
    if c.message_id_header.as_deref().is_some_and(str::is_empty) {
        p.push(("message_id_header".into(), "must not be empty".into()));
    }
    p
}
