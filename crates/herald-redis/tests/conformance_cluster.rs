//! The broker conformance suite on a 3-master/3-replica Redis Cluster (one cluster for every
//! check: six processes are dear to start), and the proof that delivery is sharded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_conformance::{Recorder, Subject, channel, conformance_tests};
use herald_core::protocol::raw_json;
use herald_core::{Broker, PublicationSink, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::RedisCluster;
use serde_json::json;

fn broker(cluster: &RedisCluster, prefix: &str, sink: Arc<dyn PublicationSink>) -> RedisBroker {
    RedisBroker::start(
        RedisOptions {
            prefix: prefix.into(),
            presence_ttl: Duration::from_secs(30),
            ..RedisOptions::new(cluster.url())
        },
        sink,
    )
    .unwrap()
}

async fn on_cluster(cluster: &Arc<RedisCluster>, sink: Arc<dyn PublicationSink>) -> Subject {
    // A prefix of its own per check: the checks share the cluster.
    let prefix = format!("t{}", herald_core::broker::random_id(6));
    Subject {
        broker: Arc::new(broker(cluster, &prefix, sink)),
        guard: Box::new(cluster.clone()),
    }
}

fn start() -> Arc<RedisCluster> {
    Arc::new(RedisCluster::start())
}

conformance_tests!(sequential conformance_on_a_redis_cluster, start, on_cluster, then cluster_only);

/// The checks only a Cluster has, on the suite's cluster.
async fn cluster_only(cluster: &Arc<RedisCluster>) {
    delivery_is_sharded(cluster).await;
    resubscribing_is_not_an_interruption(cluster).await;
}

/// Counts `resync` calls: each is the pub/sub task saying it may have missed something.
#[derive(Default)]
struct Resyncs {
    rec: Recorder,
    resyncs: AtomicUsize,
}

impl PublicationSink for Resyncs {
    fn deliver(&self, p: &herald_core::Publication) {
        self.rec.deliver(p);
    }
    fn presence(&self, channel: &str, event: &herald_core::PresenceEvent) {
        self.rec.presence(channel, event);
    }
    fn resync(&self, _channel: &str, _position: &herald_core::Position) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }
    fn kick(&self, user: &str) {
        self.rec.kick(user);
    }
}

/// A channel unsubscribed and subscribed again at once (a client leaving as another arrives,
/// a resubscribe): the reply to our own SUNSUBSCRIBE is not Redis moving the slot, so the
/// node neither stops listening nor makes every subscriber recover. (It did: every such
/// reply restarted the pub/sub task and resynced every channel, which under churn fed on
/// itself.)
async fn resubscribing_is_not_an_interruption(cluster: &Arc<RedisCluster>) {
    let sink = Arc::new(Resyncs::default());
    let b = broker(cluster, "churn", sink.clone());
    let a = broker(cluster, "churn", Arc::new(Recorder::default()));
    let chans: Vec<String> = (0..5).map(|_| channel("churn")).collect();
    for ch in &chans {
        b.subscribe(ch).await.unwrap();
    }
    for _ in 0..10 {
        for ch in &chans {
            b.unsubscribe(ch).await.unwrap();
            b.subscribe(ch).await.unwrap();
        }
    }
    for ch in &chans {
        a.publish(PublishRequest {
            channel: Arc::from(ch.as_str()),
            data: raw_json(&json!({})),
            history: None,
            idempotency_key: None,
            from: None,
        })
        .await
        .unwrap();
    }
    sink.rec
        .until("every publication", |r| {
            chans.iter().all(|ch| r.publications(ch).len() == 1)
        })
        .await;
    assert_eq!(sink.resyncs.load(Ordering::Relaxed), 0, "no interruption");
    assert!(b.health().await.is_ok());
}

/// Channels spread over the three shards; a node subscribed to one of them receives the
/// publications of that one only, and the cluster bus carries no classic `PUBLISH` broadcast
/// (publications go out with `SPUBLISH` to the owning shard alone).
async fn delivery_is_sharded(cluster: &Arc<RedisCluster>) {
    let prefix = "sharded";
    // One channel per master.
    let mut by_master = std::collections::BTreeMap::new();
    while by_master.len() < 3 {
        let ch = channel("shard");
        let slot = cluster.slot(&format!("{prefix}:ch:{{{ch}}}"));
        by_master.entry(cluster.master_of_slot(slot)).or_insert(ch);
    }
    let channels: Vec<String> = by_master.into_values().collect();
    let rec_a = Arc::new(Recorder::default());
    let rec_b = Arc::new(Recorder::default());
    let a = broker(cluster, prefix, rec_a.clone());
    let b = broker(cluster, prefix, rec_b.clone());
    a.subscribe(&channels[0]).await.unwrap();
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
    }
    let publish_sent = cluster.info_sum("cluster_stats_messages_publish_sent");
    for round in 0..5 {
        for ch in &channels {
            a.publish(PublishRequest {
                channel: Arc::from(ch.as_str()),
                data: raw_json(&json!({ "round": round })),
                history: None,
                idempotency_key: None,
                from: None,
            })
            .await
            .unwrap();
        }
    }
    rec_b
        .until("every publication on b", |r| {
            channels.iter().all(|ch| r.publications(ch).len() == 5)
        })
        .await;
    rec_a
        .until("a's channel on a", |r| {
            r.publications(&channels[0]).len() == 5
        })
        .await;
    // a heard only its own channel: 5 messages, none unwanted.
    assert_eq!(a.stats().messages.load(Ordering::Relaxed), 5);
    assert_eq!(a.stats().unwanted.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats().messages.load(Ordering::Relaxed), 15);
    for ch in &channels[1..] {
        assert!(rec_a.publications(ch).is_empty());
    }
    assert_eq!(
        cluster.info_sum("cluster_stats_messages_publish_sent"),
        publish_sent,
        "no publication was broadcast over the cluster bus"
    );
}
