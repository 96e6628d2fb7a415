//! What the Redis broker's `publish_batch` adds over the conformance suite's batch check (which
//! runs here too, on one Redis, a Cluster and Sentinel): a whole batch is one round trip to
//! Redis, an item that Redis refuses fails alone, and a batch survives an emptied script cache
//! and a Redis that went away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_conformance::{Recorder, channel, history_ns};
use herald_core::protocol::raw_json;
use herald_core::registry::HistoryPolicy;
use herald_core::{Broker, BrokerError, Position, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::{
    RedisServer, TcpProxy, redis_cli, redis_log_every_command, redis_logged_commands,
};
use serde_json::json;

const PREFIX: &str = "herald-test";

fn broker(url: String) -> RedisBroker {
    RedisBroker::start(
        RedisOptions {
            prefix: PREFIX.into(),
            // One beat at start, then none while a test counts commands.
            presence_ttl: Duration::from_secs(3600),
            ..RedisOptions::new(url)
        },
        Arc::new(Recorder::default()),
    )
    .unwrap()
}

fn item(channel: &str, n: usize) -> PublishRequest {
    PublishRequest {
        channel: Arc::from(channel),
        data: raw_json(&json!({ "n": n })),
        history: Some(HistoryPolicy {
            size: 1000,
            ttl: Duration::from_secs(600),
        }),
        idempotency_key: None,
        from: None,
    }
}

fn keyed(channel: &str, n: usize, key: &str) -> PublishRequest {
    PublishRequest {
        idempotency_key: Some(key.into()),
        ..item(channel, n)
    }
}

/// The script calls Redis ran for `channels` (their first key is the channel's meta hash).
fn script_calls_on(port: u16, channels: &[String]) -> usize {
    let metas: Vec<String> = channels
        .iter()
        .map(|c| format!("{PREFIX}:{{{c}}}:meta"))
        .collect();
    redis_logged_commands(port)
        .iter()
        .filter(|args| {
            args.len() > 3
                && matches!(args[0].to_ascii_uppercase().as_str(), "EVALSHA" | "EVAL")
                && metas.contains(&args[3])
        })
        .count()
}

/// 750 items, sent to a Redis one 50 ms latency away: 10 on each of 50 channels and, between
/// them, 250 on one more channel (more than one script call's worth). The batch takes about
/// one latency (one at a time it took 750 of them, over 35 s); Redis runs one script call per
/// channel, three for the long one; every channel has its items at consecutive offsets in
/// batch order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_round_trip() {
    const LATENCY: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let proxy = TcpProxy::start_with_latency(server.port, LATENCY).await;
    let b = broker(format!("redis://127.0.0.1:{}", proxy.port));
    // A fresh Redis knows no script yet: the first call loads it (a second round trip).
    let warm = channel("warm");
    b.publish_batch(vec![item(&warm, 0)]).await[0]
        .clone()
        .unwrap();

    let channels: Vec<String> = (0..50).map(|_| channel("rtt")).collect();
    let long = channel("long");
    let plan: Vec<&String> = (0..750)
        .map(|i| {
            if i % 3 == 2 {
                &long
            } else {
                &channels[(i - i / 3) % channels.len()]
            }
        })
        .collect();
    let batch: Vec<PublishRequest> = plan.iter().enumerate().map(|(i, c)| item(c, i)).collect();
    redis_log_every_command(server.port);
    let started = Instant::now();
    // The bound is 20 latencies: far above one round trip (and a scheduler's hiccups on a
    // loaded machine), far below the 750 that one call per item costs.
    let results = tokio::time::timeout(LATENCY * 20, b.publish_batch(batch))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a batch of 750 took longer than {:?}: more than 20 round trips",
                LATENCY * 20
            )
        });
    eprintln!(
        "750 items, 51 channels, {LATENCY:?} away: {:?}",
        started.elapsed()
    );
    assert_eq!(script_calls_on(server.port, &channels), channels.len());
    assert_eq!(script_calls_on(server.port, std::slice::from_ref(&long)), 3);

    // What one-by-one publishing gives: per channel, offsets 1, 2, … in batch order.
    let mut published: std::collections::HashMap<&String, Vec<(u64, u64)>> = Default::default();
    assert_eq!(results.len(), plan.len());
    for (i, (r, c)) in results.iter().zip(&plan).enumerate() {
        let on_channel = published.entry(*c).or_default();
        let expected = on_channel.len() as u64 + 1;
        let pos = r.as_ref().expect("every item publishes");
        assert_eq!(pos.offset, expected, "item {i} on {c}");
        on_channel.push((expected, i as u64));
    }
    assert_eq!(published[&long].len(), 250);
    for (ch, expected) in published {
        assert_eq!(history_ns(&b, ch, 0, 1000).await, expected, "{ch}");
    }
}

/// Items Redis refuses (a channel whose meta key is not a hash; an item whose idempotency key
/// is not a string) fail alone, with the error a single publish of them gets; every other
/// item, on those channels too, publishes at consecutive offsets in batch order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_redis_refuses_fails_alone() {
    let server = RedisServer::start();
    let b = broker(server.url());
    let (fine, broken, one_bad) = (channel("fine"), channel("broken"), channel("one-bad"));
    redis_cli(
        server.port,
        &["set", &format!("{PREFIX}:{{{broken}}}:meta"), "not a hash"],
    );
    redis_cli(
        server.port,
        &[
            "hset",
            &format!("{PREFIX}:{{{one_bad}}}:idem:bad"),
            "f",
            "v",
        ],
    );
    let results = b
        .publish_batch(vec![
            item(&fine, 1),
            item(&broken, 2),
            item(&one_bad, 3),
            keyed(&one_bad, 4, "bad"),
            item(&fine, 5),
            keyed(&one_bad, 6, "good"),
            item(&broken, 7),
            item(&one_bad, 8),
        ])
        .await;
    let offset = |r: &Result<Position, BrokerError>| r.as_ref().map(|p| p.offset).ok();
    assert_eq!(
        results.iter().map(offset).collect::<Vec<_>>(),
        vec![
            Some(1),
            None,
            Some(1),
            None,
            Some(2),
            Some(2),
            None,
            Some(3)
        ],
        "{results:?}"
    );
    // The errors a single publish of the same items gets.
    let alone = [
        b.publish(item(&broken, 2)).await,
        b.publish(keyed(&one_bad, 4, "bad")).await,
    ];
    for (batched, single) in [(&results[1], &alone[0]), (&results[3], &alone[1])] {
        match (batched, single) {
            (Err(BrokerError::Internal(m)), Err(BrokerError::Internal(s))) => {
                assert!(m.contains("WRONGTYPE"), "{m}");
                // Redis adds where in which script the error was raised, when it ends one.
                assert!(s.starts_with(m.as_str()), "single: {s}, batched: {m}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(results[6], Err(BrokerError::Internal(_))));
    assert_eq!(history_ns(&b, &fine, 0, 1000).await, vec![(1, 1), (2, 5)]);
    assert_eq!(
        history_ns(&b, &one_bad, 0, 1000).await,
        vec![(1, 3), (2, 6), (3, 8)]
    );
    // The key of the item that published is remembered like any other.
    assert_eq!(
        b.publish(keyed(&one_bad, 9, "good")).await.unwrap(),
        results[5].clone().unwrap()
    );
}

/// Redis forgot its scripts (`SCRIPT FLUSH`, a restart, a failover to a replica): the batch
/// loads them and publishes everything, in order. Redis gone: every item answers
/// `Unavailable`, and once it is back batches publish again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_flushed_script_cache_and_a_redis_away() {
    let mut server = RedisServer::start();
    let b = broker(server.url());
    let (x, y) = (channel("x"), channel("y"));
    let batch = |base: usize| {
        vec![
            item(&x, base),
            item(&y, base + 1),
            item(&x, base + 2),
            item(&x, base + 3),
            item(&y, base + 4),
        ]
    };
    let offsets = |rs: Vec<Result<Position, BrokerError>>| {
        rs.into_iter()
            .map(|r| r.unwrap().offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        offsets(b.publish_batch(batch(0)).await),
        vec![1, 1, 2, 3, 2]
    );
    assert_eq!(redis_cli(server.port, &["script", "flush"]).trim(), "OK");
    assert_eq!(
        offsets(b.publish_batch(batch(10)).await),
        vec![4, 3, 5, 6, 4]
    );
    assert_eq!(
        history_ns(&b, &x, 0, 1000).await,
        vec![(1, 0), (2, 2), (3, 3), (4, 10), (5, 12), (6, 13)]
    );
    // Again, with a channel of several script calls (a pipeline that loads the script first).
    assert_eq!(redis_cli(server.port, &["script", "flush"]).trim(), "OK");
    let long = channel("long");
    let results = b
        .publish_batch((0..250).map(|n| item(&long, n)).collect())
        .await;
    assert_eq!(offsets(results), (1..=250).collect::<Vec<_>>());
    assert_eq!(
        history_ns(&b, &long, 0, 1000).await,
        (0..250).map(|n| (n + 1, n)).collect::<Vec<_>>()
    );

    server.kill();
    let results = b.publish_batch(batch(20)).await;
    assert_eq!(results.len(), 5);
    for r in &results {
        assert!(matches!(r, Err(BrokerError::Unavailable(_))), "{r:?}");
    }
    server.restart();
    // Back (empty) once a single publish goes through again; then a batch publishes whole,
    // in a new epoch (offsets from 1), its scripts loaded again.
    let probe = channel("probe");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.publish(item(&probe, 0)).await.is_err() {
        assert!(Instant::now() < deadline, "redis never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        offsets(b.publish_batch(batch(30)).await),
        vec![1, 1, 2, 3, 2]
    );
}
