//! Real `herald` processes on Redis past one server: a 3-master/3-replica Redis Cluster and a
//! Sentinel-managed master, both started by the test from Debian's `redis-server`.
//!
//! - On one Cluster (nothing killed): cross-node delivery with global offsets, recovery on
//!   the other node, and sharded delivery counted in `/metrics`.
//! - On a Cluster of its own, and on a Sentinel setup: the master of the channel is killed
//!   mid-stream; publishing resumes on the promoted replica, `/readyz` says 503 while the
//!   outage lasts, and a subscriber on the other node that follows the protocol (resubscribe
//!   with `since` when told) gets every acknowledged publication exactly once, or is told to
//!   refetch (`recovered: false`) with a state that includes it: never a silent loss.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::identity::mint_hs256;
use herald_testkit::eventually;
use herald_testkit::{Api, HeraldBin, HeraldProcess, RedisCluster, RedisSentinel, WsClient};
use serde_json::{Value, json};

const SECRET: &str = "topology-test-secret";
const KEY: &str = "topology-test-key";

fn config(redis_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
hs256_secret = "{SECRET}"
[api]
key = "{KEY}"
[broker]
kind = "redis"
url = "{redis_url}"
presence_ttl = "2s"

[[channel]]
name = "feed.{{id}}"
scope = "public"
history = {{ size = 1000, ttl = "10m" }}
schema = {{ type = "object" }}
"#
    )
}

struct Node {
    process: HeraldProcess,
    api: Api,
}

impl Node {
    fn start(url: &str) -> Node {
        let process = HeraldProcess::builder(config(url))
            .bin(HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald")))
            .start();
        let api = Api::new(process.url(), KEY);
        Node { process, api }
    }

    async fn client(&self, user: &str) -> WsClient {
        let token = mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(600)).unwrap();
        WsClient::connect(&self.process.ws_url(), Some(&token)).await
    }

    async fn ready(&self) -> bool {
        self.api.get("/readyz").await.0 == 200
    }

    async fn wait_ready(&self) {
        eventually(Duration::from_secs(15), "the node to be ready", || async {
            self.ready().await.then_some(())
        })
        .await;
    }

    /// A counter of `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.process.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// `n` channels `feed.*` whose pub/sub channels sit on `n` different masters.
fn channels_on_distinct_masters(cluster: &RedisCluster, n: usize) -> Vec<String> {
    let mut by_master = BTreeMap::new();
    for i in 0.. {
        let ch = format!("feed.s{i}");
        let slot = cluster.slot(&format!("herald:ch:{{{ch}}}"));
        by_master.entry(cluster.master_of_slot(slot)).or_insert(ch);
        if by_master.len() == n {
            break;
        }
    }
    by_master.into_values().collect()
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
}

/// Cross-node delivery, recovery on the other node and sharded delivery, on one Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = (Node::start(&cluster.url()), Node::start(&cluster.url()));
    a.wait_ready().await;
    b.wait_ready().await;

    // Cross-node delivery: publications through either node, the same offsets everywhere.
    let mut on_a = a.client("u1").await;
    let mut on_b = b.client("u2").await;
    assert_eq!(on_a.subscribe("feed.x", None).await["ok"], true);
    assert_eq!(on_b.subscribe("feed.x", None).await["ok"], true);
    for n in 0..6 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (status, body) = node.api.publish("feed.x", json!({ "n": n })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], n + 1);
    }
    for c in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(c.next().await);
        }
        assert_eq!(offsets(&got), (1..=6).collect::<Vec<_>>());
    }
    drop((on_a, on_b));

    // Recovery on the other node: away from A, back on B with `since`.
    let mut c = a.client("carol").await;
    let r = c.subscribe("feed.x", None).await;
    let since = json!({ "offset": r["offset"], "epoch": r["epoch"] });
    drop(c);
    for n in 0..3 {
        a.api.publish("feed.x", json!({ "away": n })).await;
    }
    let mut c = b.client("carol").await;
    let r = c.subscribe("feed.x", Some(since)).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        offsets(r["publications"].as_array().unwrap()),
        vec![7, 8, 9]
    );
    drop(c);

    // Sharded delivery: A has a subscriber on one channel of three (one per shard); B has
    // none. A hears its channel only; B, publishing all of them, hears nothing.
    let channels = channels_on_distinct_masters(&cluster, 3);
    let mut sub = a.client("dora").await;
    assert_eq!(sub.subscribe(&channels[0], None).await["ok"], true);
    // (A's unsubscribes above may race a publication or two: counted as unwanted then.)
    let (a_before, b_before, unwanted_before) = (
        a.metric("herald_broker_messages_total").await,
        b.metric("herald_broker_messages_total").await,
        a.metric("herald_broker_messages_unwanted_total").await,
    );
    let bus_before = cluster.info_sum("cluster_stats_messages_publish_sent");
    for round in 0..4 {
        for ch in &channels {
            let (status, body) = b.api.publish(ch, json!({ "round": round })).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    for _ in 0..4 {
        assert_eq!(sub.next().await["channel"], channels[0].as_str());
    }
    assert!(sub.silent_for(Duration::from_millis(300)).await);
    assert_eq!(a.metric("herald_broker_messages_total").await - a_before, 4);
    assert_eq!(b.metric("herald_broker_messages_total").await, b_before);
    assert_eq!(
        a.metric("herald_broker_messages_unwanted_total").await,
        unwanted_before
    );
    assert_eq!(
        cluster.info_sum("cluster_stats_messages_publish_sent"),
        bus_before,
        "nothing was broadcast over the cluster bus (SPUBLISH, not PUBLISH)"
    );
}

/// What the subscriber saw: publications `(epoch, offset, n)` in arrival order, and each time
/// it was told to refetch (`recovered: false`).
#[derive(Default)]
struct Seen {
    publications: Vec<(String, u64, u64)>,
    refetches: Vec<Refetch>,
}

/// A `recovered: false`: the client left `from` (its last epoch) and refetched its state as of
/// `(epoch, offset)`, the position the reply carried.
struct Refetch {
    from: String,
    epoch: String,
    offset: u64,
}

impl Refetch {
    /// Whether the refetched state includes the publication at `(epoch, offset)`: one of the
    /// position's epoch up to its offset, or any of the epoch the client left (it had ended:
    /// a client leaves an epoch only when the stream moved on to another).
    fn covers(&self, epoch: &str, offset: u64) -> bool {
        (self.epoch == epoch && offset <= self.offset) || self.from == epoch
    }
}

/// Follows the protocol: records `pub` frames; on `unsubscribed` resubscribes with `since`
/// the last publication it has, taking the recovered ones or noting a refetch.
async fn follow(mut c: WsClient, channel: String, first: Value, seen: Arc<Mutex<Seen>>) {
    let mut last = (
        first["epoch"].as_str().unwrap_or_default().to_owned(),
        first["offset"].as_u64().unwrap_or(0),
    );
    loop {
        let Some(frame) = c.next_within(Duration::from_secs(30)).await else {
            return;
        };
        match frame["type"].as_str() {
            Some("pub") => {
                let o = frame["offset"].as_u64().unwrap();
                let n = frame["data"]["n"].as_u64().unwrap();
                seen.lock()
                    .unwrap()
                    .publications
                    .push((last.0.clone(), o, n));
                last.1 = o;
            }
            Some("unsubscribed") => {
                let since = json!({ "offset": last.1, "epoch": last.0 });
                let r = loop {
                    let r = c.subscribe(&channel, Some(since.clone())).await;
                    if r["ok"] == true {
                        break r;
                    }
                    // `unavailable` while the failover lasts: try again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                let epoch = r["epoch"].as_str().unwrap().to_owned();
                let mut s = seen.lock().unwrap();
                if r["recovered"] == true {
                    for p in r["publications"].as_array().unwrap() {
                        let n = p["data"]["n"].as_u64().unwrap();
                        s.publications
                            .push((epoch.clone(), p["offset"].as_u64().unwrap(), n));
                    }
                } else {
                    s.refetches.push(Refetch {
                        from: last.0.clone(),
                        epoch: epoch.clone(),
                        offset: r["offset"].as_u64().unwrap(),
                    });
                }
                last = (epoch, r["offset"].as_u64().unwrap());
            }
            _ => {}
        }
    }
}

/// Publishes through `a` while `kill` takes the channel's master down; checks the contract.
async fn failover_mid_stream(a: &Node, b: &Node, channel: &str, kill: impl FnOnce()) {
    a.wait_ready().await;
    b.wait_ready().await;
    let mut c = b.client("follower").await;
    let first = c.subscribe(channel, None).await;
    assert_eq!(first["ok"], true, "{first}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let follower = tokio::spawn(follow(c, channel.to_owned(), first, seen.clone()));

    // (n, epoch, offset) of every publication answered 200.
    let mut acked: Vec<(u64, String, u64)> = Vec::new();
    let mut statuses = BTreeMap::<u16, usize>::new();
    let mut n = 0;
    let mut publish = async |acked: &mut Vec<(u64, String, u64)>| {
        n += 1;
        let (status, body) = a.api.publish(channel, json!({ "n": n })).await;
        *statuses.entry(status).or_default() += 1;
        assert!(status == 200 || status == 503, "{status} {body}");
        if status == 200 {
            acked.push((
                n,
                body["epoch"].as_str().unwrap().to_owned(),
                body["offset"].as_u64().unwrap(),
            ));
        }
    };
    while acked.len() < 10 {
        publish(&mut acked).await;
    }
    // /readyz watched from the kill on, every 50 ms, beside the publisher.
    let unready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (readyz, unready) = (format!("{}/readyz", a.process.url()), unready.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(r) = reqwest::get(&readyz).await
                    && r.status() == 503
                {
                    unready.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    kill();
    let killed = Instant::now();
    let acked_before_kill = acked.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < acked_before_kill + 10 {
        assert!(
            Instant::now() < deadline,
            "publishing did not resume: {statuses:?}"
        );
        publish(&mut acked).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = killed.elapsed();
    a.wait_ready().await;
    watcher.abort();
    let unready = unready.load(std::sync::atomic::Ordering::Relaxed);
    assert!(unready > 0, "/readyz never reported the outage");
    // The subscriber catches up with the last publication (received, or refetched after it).
    let (last, last_epoch, last_offset) = acked.last().unwrap().clone();
    eventually(
        Duration::from_secs(10),
        "the follower to catch up",
        || async {
            let s = seen.lock().unwrap();
            (s.publications.iter().any(|p| p.2 == last)
                || s.refetches
                    .iter()
                    .any(|r| r.covers(&last_epoch, last_offset)))
            .then_some(())
        },
    )
    .await;
    follower.abort();
    let s = seen.lock().unwrap();
    let mut ns = HashSet::new();
    for p in &s.publications {
        assert!(
            ns.insert(p.2),
            "publication {} delivered twice: {:?}",
            p.2,
            s.publications
        );
    }
    for (n, epoch, offset) in &acked {
        assert!(
            ns.contains(n) || s.refetches.iter().any(|r| r.covers(epoch, *offset)),
            "acknowledged publication {n} neither delivered nor covered by a refetch: \
             seen {:?}, refetches {}",
            s.publications,
            s.refetches.len()
        );
    }
    // Offsets grow by one within each epoch, in arrival order.
    for w in s.publications.windows(2) {
        if w[0].0 == w[1].0 {
            assert_eq!(w[1].1, w[0].1 + 1, "{:?}", s.publications);
        }
    }
    eprintln!(
        "failover: publishing resumed {resumed:?} after the kill; statuses {statuses:?}; \
         /readyz 503 {unready} times (50 ms apart); {} delivered, {} refetches",
        s.publications.len(),
        s.refetches.len()
    );
}

/// The channel's master is SIGKILLed mid-stream; its replica takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_cluster_master_failover_mid_stream() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (Node::start(&cluster.url()), Node::start(&cluster.url()));
    let channel = "feed.failover";
    let master = cluster.master_of_slot(cluster.slot(&format!("herald:ch:{{{channel}}}")));
    failover_mid_stream(&a, &b, channel, || cluster.kill(master)).await;
    cluster.wait_ok();
    assert!(!cluster.masters().contains(&master));
}

/// The master Sentinel watches is SIGKILLed mid-stream; Sentinel promotes the replica and the
/// nodes follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_sentinel_failover_mid_stream() {
    let mut sentinel = RedisSentinel::start();
    let (a, b) = (Node::start(&sentinel.url()), Node::start(&sentinel.url()));
    let before = sentinel.master_port().unwrap();
    failover_mid_stream(&a, &b, "feed.failover", || {
        sentinel.kill_master();
    })
    .await;
    assert_ne!(sentinel.master_port(), Some(before));
}
