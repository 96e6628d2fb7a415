//! Event buses as Herald sources: NATS JetStream ([`nats`]), Redis Streams ([`redis_stream`])
//! and RabbitMQ ([`amqp`]).
//!
//! Domain events that already flow on a service bus reach browsers without a second publish
//! in every service: each source consumes its bus with the bus's own durable consumer (a
//! JetStream durable pull consumer, a Redis consumer group, a RabbitMQ queue), passes each
//! message through the source's allowlist ([`herald_core::route`]), and publishes through the
//! same gate as `POST /v1/publish`.
//!
//! One crate with a module per bus, because everything but the client is shared and must
//! behave the same on the three buses ([`Consumer`]): routing, the decision between
//! publish, count-and-drop (no route) and dead-letter (the message can never be published),
//! the retry while the gateway cannot publish (broker down), the counters and the reconnect
//! with backoff ([`supervise`]). The per-bus modules only read, acknowledge and dead-letter.
//!
//! Guarantees common to the three (each module adds its bus's details):
//! - **At least once from the bus**: a message is acknowledged only after the broker accepted
//!   its publication (or it was dead-lettered, or no route matched). A crash before the
//!   acknowledgement means the bus delivers it again.
//! - **Once into the channel**: every publication carries an idempotency key derived from the
//!   bus's message id (JetStream stream sequence, Redis entry id, AMQP `message-id`), scoped
//!   to the source with [`herald_core::source::scoped_key`], so the broker drops a redelivery
//!   within its idempotency window (`limits.idempotency_window`).
//! - **Order**: messages are published one at a time in the order the bus delivers them, and
//!   one gateway at a time consumes (JetStream: one unacknowledged message per consumer;
//!   Redis: a lease; RabbitMQ: a single-active-consumer queue), so the channel order follows
//!   the bus order across any number of gateways.

pub mod amqp;
pub mod nats;
pub mod redis_stream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::route::Routes;
use herald_core::source::{Publisher, SourceKind, SourceStats, is_permanent};
use tokio_util::sync::CancellationToken;

/// How long to wait before publishing again while the gateway cannot take a publication.
const RETRY: Duration = Duration::from_millis(500);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What became of one message; every outcome but shutdown is acknowledged on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Published to a channel (or recognised by the broker as a redelivery).
    Published,
    /// No route matched: counted, not published.
    Unrouted,
    /// It matched a route but can never be published; the reason goes with the dead letter.
    Dead(String),
}

/// The bus-independent half of a source: routes a message and publishes it.
pub struct Consumer {
    kind: SourceKind,
    routes: Routes,
    publisher: Arc<dyn Publisher>,
    /// The source's counters (exported at `/metrics`).
    pub stats: Arc<SourceStats>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer of `kind` publishing through `publisher`, counting under `metrics_name`.
    pub fn new(
        kind: SourceKind,
        routes: Routes,
        publisher: Arc<dyn Publisher>,
        metrics_name: &str,
        shutdown: CancellationToken,
    ) -> Self {
        let stats = publisher.source_stats(metrics_name);
        Self {
            kind,
            routes,
            publisher,
            stats,
            shutdown,
        }
    }

    /// Routes and publishes one message, publishing again every 500 ms while the gateway
    /// cannot take it (the broker is down), so nothing behind it overtakes it. `None` only
    /// when shutdown began first: the message is then left unacknowledged for the bus to
    /// deliver again.
    pub async fn settle(
        &self,
        subject: &str,
        message: &[u8],
        idempotency_key: Option<String>,
    ) -> Option<Verdict> {
        SourceStats::count(&self.stats.received);
        let routed = match self.routes.route(subject, message) {
            Ok(Some(r)) => r,
            Ok(None) => {
                SourceStats::count(&self.stats.unrouted);
                tracing::debug!(subject, "no route: message not published");
                return Some(Verdict::Unrouted);
            }
            Err(e) => return Some(self.dead(subject, e.0)),
        };
        loop {
            match self
                .publisher
                .publish(
                    self.kind,
                    &routed.channel,
                    routed.data,
                    idempotency_key.clone(),
                )
                .await
            {
                Ok(_) => {
                    SourceStats::count(&self.stats.published);
                    return Some(Verdict::Published);
                }
                Err(e) if is_permanent(e.code) => {
                    let reason = match &e.pointer {
                        Some(p) => format!(
                            "{}: {} (at {p:?}) on channel {}",
                            e.code.as_str(),
                            e.message,
                            routed.channel
                        ),
                        None => format!(
                            "{}: {} on channel {}",
                            e.code.as_str(),
                            e.message,
                            routed.channel
                        ),
                    };
                    return Some(self.dead(subject, reason));
                }
                Err(e) => {
                    tracing::warn!(subject, channel = %routed.channel, error = %e.message, "bus message publish deferred");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }

    fn dead(&self, subject: &str, reason: String) -> Verdict {
        SourceStats::count(&self.stats.dead_lettered);
        tracing::warn!(subject, error = %reason, "bus message dead-lettered");
        Verdict::Dead(reason)
    }

    /// Counts a message the source could not even hand to [`Consumer::settle`] (an entry
    /// without its payload field) before dead-lettering it.
    pub fn malformed(&self, subject: &str, reason: String) -> Verdict {
        SourceStats::count(&self.stats.received);
        self.dead(subject, reason)
    }
}

/// What every bus source's `run` does: registers its readiness flag (`ready_name`), builds the
/// [`Consumer`] (counting under `metrics_name`), then [`supervise`]s `session`, called with the
/// shared config, the consumer and the readiness flag for each connection.
pub(crate) fn start<C, F, Fut>(
    kind: SourceKind,
    (ready_name, metrics_name): (String, String),
    routes: Routes,
    cfg: C,
    publisher: Arc<dyn Publisher>,
    shutdown: CancellationToken,
    mut session: F,
) -> impl Future<Output = ()> + Send + 'static
where
    C: Send + Sync + 'static,
    F: FnMut(Arc<C>, Arc<Consumer>, Arc<AtomicBool>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let ready = publisher.readiness(&ready_name);
    let consumer = Arc::new(Consumer::new(
        kind,
        routes,
        publisher,
        &metrics_name,
        shutdown.clone(),
    ));
    let cfg = Arc::new(cfg);
    async move {
        supervise(&ready_name, ready.clone(), shutdown, || {
            session(cfg.clone(), consumer.clone(), ready.clone())
        })
        .await;
    }
}

/// Runs `session` until shutdown, again and again with backoff (200 ms doubling to 2 s, reset
/// after a session that lasted 10 s) while it fails. `ready` is down between sessions; the
/// session raises it once it consumes. A session returns `Ok` only at shutdown.
pub async fn supervise<F, Fut>(
    name: &str,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session() => r,
        };
        ready.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(source = name, error = %e, "bus source disconnected; retrying")
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A random consumer name for this process (Redis consumer, AMQP consumer tag).
pub(crate) fn instance_name() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("herald-{n:016x}")
}
