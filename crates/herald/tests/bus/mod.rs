//! The acceptance scenarios every event-bus source must pass, written once and run against
//! each bus (`tests/nats.rs`, `tests/redis_stream.rs`, `tests/amqp.rs` implement [`Bus`] and
//! invoke [`bus_scenarios!`]).
//!
//! Each scenario runs real `herald` processes on a real Redis broker (so two gateways, or a
//! gateway and its restarted self, share offsets, history and the idempotency window) and
//! reads what reached a channel through the history API: "published once" is "in the
//! channel's history once".

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use herald_core::identity::mint_hs256;
use herald_testkit::{Api, HeraldBin, HeraldProcess, HoldProxy, RedisServer, WsClient, eventually};
use serde_json::{Value, json};

pub const SECRET: &str = "bus-test-secret";
pub const KEY: &str = "bus-test-key";
/// How long a scenario waits for something the gateway should do.
pub const WAIT: Duration = Duration::from_secs(20);

/// One event bus as a scenario drives it.
pub trait Bus: Send + Sync + Sized {
    /// The source kind (`nats`, `redis_stream`, `amqp`).
    const KIND: &'static str;

    /// The `[[source.<kind>]]` table (without routes) for a gateway consuming this bus.
    fn source(&self) -> String;

    /// The metrics label of the source (`herald_source_messages_total{source=…}`).
    fn metrics_name(&self) -> String;

    /// Publishes one message on `subject`, with the bus's own message id `id` where the bus
    /// lets the publisher choose one (AMQP); returns once the bus has stored it.
    fn publish(&self, subject: &str, payload: &[u8], id: u64) -> impl Future<Output = ()> + Send;

    /// Everything in the source's dead-letter destination: `(reason, original bytes)`.
    fn dead_letters(&self) -> impl Future<Output = Vec<(String, Vec<u8>)>> + Send;

    /// Kills the bus (SIGKILL) and starts it again with its data; for the outage scenario,
    /// run on a bus of the test's own.
    fn kill(&mut self);

    /// Starts the killed bus again.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;
}

/// The gateway's config: two channels with history, the bus source and its allowlist.
pub fn config<B: Bus>(bus: &B, broker_url: &str) -> String {
    let kind = B::KIND;
    let source = bus.source();
    let routes = format!(
        r#"
[[source.{kind}.route]]
match = "orders.{{orderId}}.status"
channel = "orders.{{orderId}}"

[[source.{kind}.route]]
match = "users.>"
channel = "users.{{userId}}.feed"
params = {{ userId = "/user/id" }}
payload = "/event"
"#
    );
    format!(
        "{}
{source}
{routes}",
        channels(broker_url)
    )
}

/// The channels (and broker) every gateway of a scenario shares.
pub fn channels(broker_url: &str) -> String {
    format!(
        r#"
[auth]
hs256_secret = "{SECRET}"
[api]
key = "{KEY}"
[broker]
kind = "redis"
url = "{broker_url}"

[[channel]]
name = "orders.{{orderId}}"
scope = "public"
history = {{ size = 1000, ttl = "10m" }}
schema = {{ type = "object", required = ["status"], properties = {{ status = {{ type = "string" }} }} }}

[[channel]]
name = "users.{{userId}}.feed"
scope = "public"
history = {{ size = 1000, ttl = "10m" }}
schema = {{ type = "object" }}
"#
    )
}

/// A gateway process with its API.
pub struct Gateway {
    pub process: HeraldProcess,
    pub api: Api,
}

impl Gateway {
    /// Starts `herald serve` consuming `bus`, with `broker_url` as its Redis broker, and waits
    /// until `/readyz` says the source consumes.
    pub async fn start<B: Bus>(bus: &B, broker_url: &str) -> Gateway {
        let g = Self::start_unready(bus, broker_url);
        g.wait_ready(true).await;
        g
    }

    /// Starts it without waiting for readiness.
    pub fn start_unready<B: Bus>(bus: &B, broker_url: &str) -> Gateway {
        Self::with_config(config(bus, broker_url))
    }

    /// A gateway on the broker that consumes no source: it reads channels.
    pub fn reader(broker_url: &str) -> Gateway {
        Self::with_config(channels(broker_url))
    }

    fn with_config(config: String) -> Gateway {
        let process = HeraldProcess::builder(config)
            .bin(HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald")))
            .start();
        let api = Api::new(process.url(), KEY);
        Gateway { process, api }
    }

    /// `/readyz`'s status code.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.process.url()))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Waits until `/readyz` is 200 (`true`) or 503 (`false`).
    pub async fn wait_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        eventually(WAIT, &format!("/readyz {want}"), || async {
            (self.readyz().await == want).then_some(())
        })
        .await;
    }

    /// The publications in `channel`'s history (their `data`), oldest first.
    pub async fn history(&self, channel: &str) -> Vec<Value> {
        let (status, body) = self
            .api
            .get(&format!("/v1/channels/{channel}/history?limit=1000"))
            .await;
        assert_eq!(status, 200, "{body}");
        body["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .map(|p| p["data"].clone())
            .collect()
    }

    /// Waits until `channel` holds `n` publications and returns them.
    pub async fn wait_history(&self, channel: &str, n: usize) -> Vec<Value> {
        eventually(WAIT, &format!("{n} publications in {channel}"), || async {
            let h = self.history(channel).await;
            assert!(
                h.len() <= n,
                "more than {n} publications in {channel}: {h:?}"
            );
            (h.len() == n).then_some(h)
        })
        .await
    }

    /// `herald_source_messages_total{source=<name>,outcome=<outcome>}`, 0 when absent.
    pub async fn counted(&self, name: &str, outcome: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.process.url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix =
            format!("herald_source_messages_total{{source=\"{name}\",outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().expect("a count"))
            .unwrap_or(0)
    }

    /// A v1 client for any user.
    pub async fn client(&self) -> WsClient {
        let token = mint_hs256(SECRET, "alice", &[], "roles", Duration::from_secs(600)).unwrap();
        WsClient::connect(&self.process.ws_url(), Some(&token)).await
    }
}

fn order(status: &str, n: u64) -> Vec<u8> {
    json!({"status": status, "n": n}).to_string().into_bytes()
}

/// Routed publish, parameters from the subject (`orders.{orderId}`) and from the payload
/// (`users.{userId}` from `/user/id`, payload `/event`), delivered to a live subscriber.
pub async fn routed_publish<B: Bus>(bus: B) {
    let redis = RedisServer::start();
    let g = Gateway::start(&bus, &redis.url()).await;
    let mut c = g.client().await;
    assert_eq!(c.subscribe("orders.42", None).await["ok"], true);
    assert_eq!(c.subscribe("users.alice.feed", None).await["ok"], true);

    // Bytes as a service wrote them (spacing, a long number): kept as sent.
    bus.publish(
        "orders.42.status",
        br#"{"status": "paid", "total": 12.50}"#,
        1,
    )
    .await;
    bus.publish(
        "users.signup",
        br#"{"user": {"id": "alice"}, "event": {"text": "welcome"}}"#,
        2,
    )
    .await;
    let first = c.next().await;
    assert_eq!(
        (first["type"].as_str(), first["channel"].as_str()),
        (Some("pub"), Some("orders.42")),
        "{first}"
    );
    assert_eq!(first["data"], json!({"status": "paid", "total": 12.50}));
    let second = c.next().await;
    assert_eq!(second["channel"], "users.alice.feed", "{second}");
    assert_eq!(second["data"], json!({"text": "welcome"}));
    assert_eq!(
        g.counted(&bus.metrics_name(), "published").await,
        2,
        "throughput counted"
    );
}

/// A message no route matches is counted and never published; the stream goes on.
pub async fn unrouted_is_counted<B: Bus>(bus: B) {
    let redis = RedisServer::start();
    let g = Gateway::start(&bus, &redis.url()).await;
    bus.publish("billing.invoice.created", br#"{"status": "due"}"#, 1)
        .await;
    bus.publish("orders.1.status", &order("after", 1), 2).await;
    g.wait_history("orders.1", 1).await;
    let name = bus.metrics_name();
    assert_eq!(g.counted(&name, "unrouted").await, 1);
    assert_eq!(g.counted(&name, "received").await, 2);
    assert_eq!(g.counted(&name, "published").await, 1);
    // Nothing in the dead letters either: unrouted is not an error.
    assert!(bus.dead_letters().await.is_empty());
}

/// A schema-breaking message and one that is not JSON go to the dead-letter destination with
/// the reason; the messages after them flow on.
pub async fn schema_breaking_is_dead_lettered<B: Bus>(bus: B) {
    let redis = RedisServer::start();
    let g = Gateway::start(&bus, &redis.url()).await;
    bus.publish("orders.7.status", br#"{"status": 5}"#, 1).await;
    bus.publish("orders.7.status", b"not json", 2).await;
    bus.publish("orders.7.status", &order("ok", 3), 3).await;
    let h = g.wait_history("orders.7", 1).await;
    assert_eq!(h[0]["status"], "ok");
    let dead = eventually(WAIT, "two dead letters", || async {
        let d = bus.dead_letters().await;
        (d.len() == 2).then_some(d)
    })
    .await;
    assert_eq!(dead[0].1, br#"{"status": 5}"#);
    assert!(
        dead[0].0.starts_with("invalid_payload:") && dead[0].0.contains("/status"),
        "reason: {}",
        dead[0].0
    );
    assert_eq!(dead[1].1, b"not json");
    assert!(
        dead[1].0.starts_with("the message is not JSON"),
        "reason: {}",
        dead[1].0
    );
    assert_eq!(g.counted(&bus.metrics_name(), "dead_lettered").await, 2);
}

/// The gateway is SIGKILLed after the broker accepted a publication but before it could
/// acknowledge the message on the bus (the broker's replies are held by a proxy, so it is
/// stuck exactly there). The bus redelivers to the restarted gateway, which publishes it
/// again with the same idempotency key: the channel holds it once.
pub async fn crash_between_publish_and_ack_publishes_once<B: Bus>(bus: B) {
    let redis = RedisServer::start();
    let proxy = HoldProxy::start(redis.port);
    // A second gateway, not consuming, reads the channel straight from Redis.
    let mut a = Gateway::start(&bus, &proxy.redis_url()).await;
    let reader = Gateway::reader(&redis.url());
    bus.publish("orders.9.status", &order("one", 1), 1).await;
    reader.wait_history("orders.9", 1).await;

    proxy.hold_replies();
    bus.publish("orders.9.status", &order("two", 2), 2).await;
    // The broker stored it: the gateway published, and is now waiting for the reply.
    reader.wait_history("orders.9", 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.process.kill();

    let b = Gateway::start(&bus, &redis.url()).await;
    bus.publish("orders.9.status", &order("three", 3), 3).await;
    let h = reader.wait_history("orders.9", 3).await;
    let statuses: Vec<&str> = h.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["one", "two", "three"]);
    // The restarted gateway did receive "two" again (a redelivery), and the broker dropped it.
    assert_eq!(
        b.counted(&bus.metrics_name(), "received").await,
        2,
        "the crashed message was redelivered to the new gateway"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reader.history("orders.9").await.len(), 3);
}

/// Two gateways consume one source: every message is published once, in the bus's order.
pub async fn two_gateways_share_without_duplicates<B: Bus>(bus: B) {
    const N: u64 = 40;
    let redis = RedisServer::start();
    let a = Gateway::start(&bus, &redis.url()).await;
    let b = Gateway::start(&bus, &redis.url()).await;
    for n in 0..N {
        bus.publish("orders.5.status", &order("s", n), n + 1).await;
    }
    let h = a.wait_history("orders.5", N as usize).await;
    let seen: Vec<u64> = h.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "once each, in order");
    let name = bus.metrics_name();
    let (ra, rb) = (
        a.counted(&name, "received").await,
        b.counted(&name, "received").await,
    );
    assert_eq!(ra + rb, N, "no message taken twice (a: {ra}, b: {rb})");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.history("orders.5").await.len(), N as usize);
}

/// The bus is killed mid-stream and restarted: `/readyz` reports the outage meanwhile, the
/// source reconnects, and every message is published once, in order.
pub async fn bus_restart_loses_nothing<B: Bus>(mut bus: B) {
    const N: u64 = 30;
    let redis = RedisServer::start();
    let g = Gateway::start(&bus, &redis.url()).await;
    for n in 0..N {
        bus.publish("orders.3.status", &order("s", n), n + 1).await;
    }
    bus.kill();
    g.wait_ready(false).await;
    let (status, body) = g.api.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_string().contains(&format!("{} source #1", B::KIND)),
        "/readyz names the source: {body}"
    );
    bus.restart().await;
    g.wait_ready(true).await;
    for n in N..N + 5 {
        bus.publish("orders.3.status", &order("s", n), n + 1).await;
    }
    let h = g.wait_history("orders.3", (N + 5) as usize).await;
    let seen: Vec<u64> = h.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert_eq!(seen, (0..N + 5).collect::<Vec<_>>());
}

/// Generates one `#[tokio::test]` per scenario for a bus type with `async fn start() -> Self`.
#[macro_export]
macro_rules! bus_scenarios {
    ($bus:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn routed_publish_with_params_from_subject_and_payload() {
            bus::routed_publish(<$bus>::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unrouted_message_is_counted_not_published() {
            bus::unrouted_is_counted(<$bus>::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn schema_breaking_message_is_dead_lettered_with_the_reason() {
            bus::schema_breaking_is_dead_lettered(<$bus>::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn crash_between_publish_and_ack_publishes_once() {
            bus::crash_between_publish_and_ack_publishes_once(<$bus>::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_gateways_share_the_source_without_duplicates() {
            bus::two_gateways_share_without_duplicates(<$bus>::start().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn bus_restart_mid_stream_loses_nothing() {
            bus::bus_restart_loses_nothing(<$bus>::start_own().await).await;
        }
    };
}
