//! What the admin dashboard needs from a node: its internal channels, the ticket seam its
//! connection is admitted through, and the statistics each node publishes for it.
//!
//! The dashboard (served by `herald-server` at `/admin`) is a client of the gateway like any
//! other: it connects to `/v1/ws` and subscribes. What it subscribes to are *internal*
//! channels, named `$admin:…`: the `$` can never start a registry name (names are segments of
//! `[A-Za-z0-9_-]`), so they are not part of the registry, no token can name them into
//! existence, and gate 2 refuses them as `unknown_channel` to everyone but an admin session
//! ([`herald_core::Identity::admin`], set only by redeeming an [`AdminTickets`] ticket).
//!
//! Every node publishes a [`snapshot`] of itself on [`NODES`] every `admin.stats_interval`
//! through the broker, so with Redis each node's dashboard sees every node; the page turns
//! two snapshots of cumulative counters into rates. With the in-memory broker (one node) a
//! snapshot is only built while a dashboard is subscribed here, so an unwatched node pays
//! nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::Identity;
use herald_core::PublishRequest;
use herald_core::config::BrokerKind;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::hub::ChannelStats;
use crate::node::Node;

/// The prefix of every internal channel.
pub const INTERNAL_PREFIX: &str = "$admin:";

/// The channel every node publishes its [`snapshot`] on.
pub const NODES: &str = "$admin:nodes";

/// The prefix of an admin ticket (`?token=` of the dashboard's connection): never a JWT,
/// whose first character is `e` (`{"` in base64url).
pub const TICKET_PREFIX: &str = "herald-admin.";

/// Most channels one snapshot lists (the busiest by subscribers); the rest are counted.
pub const MAX_CHANNELS: usize = 200;

/// Whether `channel` is internal (`$admin:…`): not in the registry, admin sessions only.
pub fn is_internal(channel: &str) -> bool {
    channel.starts_with(INTERNAL_PREFIX)
}

/// Redeems the one-time tickets the dashboard's connection presents at gate 1.
/// Implemented by the server's admin sign-in, which issues them to signed-in operators.
pub trait AdminTickets: Send + Sync + 'static {
    /// The admin identity behind `ticket` (whose `admin` is true), once: a ticket that is
    /// unknown, expired or already used gives `None`.
    fn redeem(&self, ticket: &str) -> Option<Identity>;

    /// The implementation itself, for the server that installed it to find it again.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// One node's statistics as published on [`NODES`]. Counters are cumulative since the node
/// started; gauges are the value now.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// The node's random id (the prefix of its client ids).
    pub node: String,
    /// The `herald` version it runs.
    pub version: &'static str,
    /// When the node started, Unix milliseconds.
    pub started_ms: u64,
    /// When this snapshot was taken, Unix milliseconds.
    pub at_ms: u64,
    /// Open client connections (every transport).
    pub connections: i64,
    /// Open connections by transport (`websocket`, `sse`, `socketio`).
    pub transports: Vec<(&'static str, i64)>,
    /// Subscriptions held by this node's connections.
    pub subscriptions: i64,
    /// Publications accepted by this node (API, clients, sources).
    pub publications: u64,
    /// Frames queued to this node's subscribers.
    pub deliveries: u64,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: u64,
    /// Refusals: (gate, code, count).
    pub rejects: Vec<(&'static str, &'static str, u64)>,
    /// Resident memory of the process in bytes (Linux; `None` elsewhere).
    pub rss_bytes: Option<u64>,
    /// `memory` or `redis`.
    pub broker: &'static str,
    /// `None` when the broker answers; otherwise why not.
    pub broker_error: Option<String>,
    /// Readiness flags of the event sources: (name, ready).
    pub sources: Vec<(String, bool)>,
    /// Shutting down.
    pub draining: bool,
    /// Channels with subscribers on this node, busiest first, at most [`MAX_CHANNELS`].
    pub channels: Vec<ChannelView>,
    /// How many channels have subscribers on this node (including those not listed).
    pub channels_total: usize,
}

/// A channel line of a [`Snapshot`].
#[derive(Debug, Serialize)]
pub struct ChannelView {
    /// The channel's name.
    pub channel: Arc<str>,
    /// Subscribers on this node.
    pub subscribers: usize,
    /// Publications fanned out on this node (cumulative).
    pub publications: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `VmRSS` of this process from `/proc/self/status`, in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The transports whose connections a snapshot counts.
const TRANSPORTS: [&str; 3] = ["websocket", "sse", "socketio"];

/// This node's statistics now. Asks the broker whether it answers (one round trip with
/// Redis, none in memory).
pub async fn snapshot(node: &Node) -> Snapshot {
    let m = &node.metrics;
    let mut channels: Vec<ChannelStats> = node.hub.channel_stats();
    let channels_total = channels.len();
    channels.sort_by(|a, b| {
        b.subscribers
            .cmp(&a.subscribers)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    channels.truncate(MAX_CHANNELS);
    let broker_error = node.broker.health().await.err().map(|e| e.to_string());
    Snapshot {
        node: node.id().to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        started_ms: unix_ms(node.started),
        at_ms: unix_ms(SystemTime::now()),
        connections: m.connections.get(),
        transports: TRANSPORTS
            .iter()
            .map(|t| (*t, m.transport_connections(t).get()))
            .collect(),
        subscriptions: m.subscriptions.get(),
        publications: m.publications_total(),
        deliveries: m.deliveries.get(),
        slow_consumers: m.slow_consumers.get(),
        rejects: m
            .rejects_snapshot()
            .into_iter()
            .map(|(gate, code, n)| (gate_name(gate), code, n))
            .collect(),
        rss_bytes: rss_bytes(),
        broker: match node.config.broker.kind {
            BrokerKind::Memory => "memory",
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        },
        broker_error,
        sources: node.readiness(),
        draining: node.is_draining(),
        channels: channels
            .into_iter()
            .map(|c| ChannelView {
                channel: c.channel,
                subscribers: c.subscribers,
                publications: c.publications,
            })
            .collect(),
        channels_total,
    }
}

fn gate_name(gate: crate::metrics::Gate) -> &'static str {
    use crate::metrics::Gate;
    match gate {
        Gate::connect => "connect",
        Gate::subscribe => "subscribe",
        Gate::publish => "publish",
        Gate::frame => "frame",
    }
}

/// Publishes this node's [`snapshot`] on [`NODES`] every `interval` until the node shuts
/// down. With the in-memory broker only while a dashboard here is subscribed (nobody else
/// could receive it); with Redis always, since dashboards on other nodes listen.
pub async fn publish_stats(node: Arc<Node>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shared = node.config.broker.kind != BrokerKind::Memory;
    let channel: Arc<str> = Arc::from(NODES);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !shared && !node.hub.has_subscribers(NODES) {
            continue;
        }
        let snap = snapshot(&node).await;
        let Ok(data) = serde_json::to_string(&snap).and_then(RawValue::from_string) else {
            continue;
        };
        let published = node
            .broker
            .publish(PublishRequest {
                channel: channel.clone(),
                data: Arc::from(data),
                history: None,
                idempotency_key: None,
                from: None,
            })
            .await;
        if let Err(e) = published {
            tracing::debug!(error = %e, "admin statistics not published");
        }
    }
}

/// Whether a readiness flag is up, for [`Snapshot::sources`].
pub(crate) fn flag_up(flag: &std::sync::atomic::AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}
