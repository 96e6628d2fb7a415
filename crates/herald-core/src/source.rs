//! What an event source (Postgres outbox, LISTEN/NOTIFY, NATS JetStream, Redis Streams,
//! RabbitMQ) needs from the gateway.
//!
//! Sources publish through the same gate as the server API (the channel must exist, the
//! payload must satisfy its schema), report their health for `/readyz`, and count what they
//! consume in a [`SourceStats`] the gateway exports at `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::broker::Position;
use crate::protocol::{ErrorBody, ErrorCode};

/// Where a publication came from (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A Postgres outbox row.
    Outbox,
    /// A Postgres NOTIFY payload.
    Notify,
    /// A NATS JetStream message.
    Nats,
    /// A Redis stream entry.
    RedisStream,
    /// A RabbitMQ (AMQP 0-9-1) delivery.
    Amqp,
}

/// What one bus source consumed, read by `/metrics` at scrape time (so sources need no
/// metrics library). Counters only grow; `lag` is the latest reading.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Messages taken from the bus (redeliveries included).
    pub received: AtomicU64,
    /// Messages published to a channel (a redelivery the broker recognised counts again).
    pub published: AtomicU64,
    /// Messages no route matched: acknowledged, never published.
    pub unrouted: AtomicU64,
    /// Messages sent to the dead-letter destination (or dropped when there is none).
    pub dead_lettered: AtomicU64,
    /// Messages waiting in the bus for this consumer, as the bus last reported it.
    pub lag: AtomicU64,
}

impl SourceStats {
    /// Adds one to a counter.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The gateway as seen by a source.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Validates and publishes, exactly like `POST /v1/publish`. `idempotency_key` is the
    /// broker's redelivery key: already scoped to its source with [`scoped_key`].
    async fn publish(
        &self,
        source: SourceKind,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<String>,
    ) -> Result<Position, ErrorBody>;

    /// Counts an input the source could not even turn into a publication (bad JSON…).
    fn rejected(&self, source: SourceKind, code: ErrorCode);

    /// A readiness flag named `name`: `/readyz` fails while any flag is false.
    fn readiness(&self, name: &str) -> Arc<AtomicBool>;

    /// The counters of the source named `name` (the `source` label of
    /// `herald_source_messages_total` and `herald_source_lag`). The default keeps them
    /// unexported, for publishers without metrics.
    fn source_stats(&self, name: &str) -> Arc<SourceStats> {
        let _ = name;
        Arc::default()
    }
}

/// Whether a publish error means the input is bad (dead-letter it) rather than the gateway
/// being unable to take it now (retry later).
pub fn is_permanent(code: ErrorCode) -> bool {
    !matches!(code, ErrorCode::Unavailable | ErrorCode::Internal)
}

/// The scope of keys given to `POST /v1/publish` (and its batch form).
pub const API_SCOPE: &str = "api";

/// A redelivery key scoped to the source it came from, so two sources (two databases, two
/// tables, a NOTIFY channel and the API) can never recognise each other's messages as
/// redeliveries. `scope` names the source and never contains `|`, so the result is unique per
/// (scope, key) pair.
pub fn scoped_key(scope: &str, key: &str) -> String {
    debug_assert!(!scope.contains('|'), "a scope never contains the separator");
    format!("{scope}|{key}")
}
