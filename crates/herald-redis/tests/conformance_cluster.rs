//! The broker conformance suite on a 3-master/3-replica Redis Cluster (one cluster for every
//! check: six processes are dear to start), and the proof that delivery is sharded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_conformance::{Recorder, Subject, channel, conformance_tests, history_ns};
use herald_core::protocol::raw_json;
use herald_core::registry::HistoryPolicy;
use herald_core::{Broker, BrokerError, PublicationSink, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::{RedisCluster, redis_cli, redis_log_every_command, redis_logged_commands};
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
    a_batch_spans_the_shards(cluster).await;
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

/// A batch over channels on every shard, with an item one shard refuses: each channel's items
/// go to its shard as one script call (Redis Cluster takes no pipeline across slots), all
/// shards at once; every channel has its items at consecutive offsets in batch order, and the
/// refused items fail alone.
async fn a_batch_spans_the_shards(cluster: &Arc<RedisCluster>) {
    let prefix = "batch";
    let meta = |ch: &str| format!("{prefix}:{{{ch}}}:meta");
    // Four channels on each master.
    let mut per_master: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    while per_master.len() < 3 || per_master.values().any(|c| c.len() < 4) {
        let ch = channel("spread");
        let owner = cluster.master_of_slot(cluster.slot(&meta(&ch)));
        let on_it = per_master.entry(owner).or_default();
        if on_it.len() < 4 {
            on_it.push(ch);
        }
    }
    let channels: Vec<String> = per_master.values().flatten().cloned().collect();
    let (broken, one_bad) = (channels[0].clone(), channels[5].clone());
    let master_of = |key: &str| cluster.master_of_slot(cluster.slot(key));
    redis_cli(
        master_of(&meta(&broken)),
        &["set", &meta(&broken), "not a hash"],
    );
    let bad_key = format!("{prefix}:{{{one_bad}}}:idem:bad");
    redis_cli(master_of(&bad_key), &["hset", &bad_key, "f", "v"]);

    let b = broker(cluster, prefix, Arc::new(Recorder::default()));
    let keep = Some(HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    });
    let item = |ch: &str, n: usize, key: Option<&str>| PublishRequest {
        channel: Arc::from(ch),
        data: raw_json(&json!({ "n": n })),
        history: keep,
        idempotency_key: key.map(str::to_owned),
        from: None,
    };
    // The script loaded on every master first, so that the count below is of steady-state
    // calls (a master that does not know it yet answers NOSCRIPT and gets it: two calls).
    let mut warm = std::collections::BTreeSet::new();
    while warm.len() < 3 {
        let ch = channel("warm");
        if warm.insert(master_of(&meta(&ch))) {
            b.publish_batch(vec![item(&ch, 0, None)]).await[0]
                .clone()
                .unwrap();
        }
    }
    let masters = cluster.masters();
    for port in &masters {
        redis_log_every_command(*port);
    }
    let mut batch = Vec::new();
    for round in 0..10 {
        for (c, ch) in channels.iter().enumerate() {
            let n = round * 100 + c;
            // Round 3's item on `one_bad` carries the key Redis cannot read.
            let key = (ch == &one_bad && round == 3).then_some("bad");
            batch.push(item(ch, n, key));
        }
    }
    let results = b.publish_batch(batch).await;
    assert_eq!(results.len(), 10 * channels.len());
    let calls: usize = masters
        .iter()
        .map(|port| {
            redis_logged_commands(*port)
                .iter()
                .filter(|a| {
                    a.len() > 3
                        && matches!(a[0].to_ascii_uppercase().as_str(), "EVALSHA" | "EVAL")
                        && channels.iter().any(|ch| a[3] == meta(ch))
                })
                .count()
        })
        .sum();
    assert_eq!(calls, channels.len(), "one script call per channel");

    for (i, r) in results.iter().enumerate() {
        let (round, ch) = (i / channels.len(), &channels[i % channels.len()]);
        match r {
            Err(BrokerError::Internal(m)) if ch == &broken || (ch == &one_bad && round == 3) => {
                assert!(m.contains("WRONGTYPE"), "{m}");
            }
            Ok(p) if ch == &one_bad => {
                let expected = if round < 3 { round + 1 } else { round };
                assert_eq!(p.offset, expected as u64, "item {i}");
            }
            Ok(p) if ch != &broken => assert_eq!(p.offset, round as u64 + 1, "item {i}"),
            other => panic!("item {i} on {ch}: {other:?}"),
        }
    }
    for (c, ch) in channels.iter().enumerate() {
        if ch == &broken {
            continue;
        }
        let expected: Vec<(u64, u64)> = (0..10u64)
            .filter(|round| ch != &one_bad || *round != 3)
            .enumerate()
            .map(|(k, round)| (k as u64 + 1, round * 100 + c as u64))
            .collect();
        assert_eq!(
            history_ns(&b, ch, 0, 100).await,
            expected,
            "history of {ch}"
        );
    }

    // A channel with more items than one script call takes: its calls one after the other.
    let long = channel("long");
    let results = b
        .publish_batch((0..250).map(|n| item(&long, n, None)).collect())
        .await;
    let offsets: Vec<u64> = results.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (1..=250).collect::<Vec<_>>());
    assert_eq!(
        history_ns(&b, &long, 150, 100).await,
        (150..250).map(|n| (n + 1, n)).collect::<Vec<_>>(),
        "the last 100, in order"
    );
}
