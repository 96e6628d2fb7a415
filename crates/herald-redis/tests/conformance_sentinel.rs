//! The broker conformance suite on a Sentinel-managed Redis (master, replica, Sentinel; one
//! setup for every check), the broker finding the master through the Sentinel.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::{Recorder, Subject, channel, conformance_tests};
use herald_core::broker::HistoryQuery;
use herald_core::protocol::raw_json;
use herald_core::registry::HistoryPolicy;
use herald_core::{PublicationSink, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::{RedisSentinel, redis_cli};
use serde_json::json;

async fn on_sentinel(setup: &Arc<RedisSentinel>, sink: Arc<dyn PublicationSink>) -> Subject {
    let prefix = format!("t{}", herald_core::broker::random_id(6));
    let broker = RedisBroker::start(
        RedisOptions {
            prefix,
            presence_ttl: Duration::from_secs(30),
            ..RedisOptions::new(setup.url())
        },
        sink,
    )
    .unwrap();
    Subject {
        broker: Arc::new(broker),
        guard: Box::new(setup.clone()),
    }
}

fn start() -> Arc<RedisSentinel> {
    Arc::new(RedisSentinel::start())
}

conformance_tests!(
    sequential conformance_on_a_sentinel_managed_redis,
    start,
    on_sentinel,
    then a_new_replication_id_starts_a_new_epoch
);

/// The failover fence: a master with another replication ID than the one that wrote a
/// channel (a promoted replica, which may lack the tail its old master published) starts a
/// new epoch, so subscribers recover with `recovered: false` instead of seeing reused
/// offsets dropped as duplicates. `DEBUG CHANGE-REPL-ID` gives the master a new ID as a
/// promotion does.
async fn a_new_replication_id_starts_a_new_epoch(setup: &Arc<RedisSentinel>) {
    let rec = Arc::new(Recorder::default());
    let subject = on_sentinel(setup, rec.clone()).await;
    let b = subject.broker;
    let ch = channel("fence");
    let request = |n: u64| PublishRequest {
        channel: Arc::from(ch.as_str()),
        data: raw_json(&json!({ "n": n })),
        history: Some(HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(60),
        }),
        idempotency_key: None,
        from: None,
    };
    let first = b.publish(request(1)).await.unwrap();
    assert_eq!(b.publish(request(2)).await.unwrap().epoch, first.epoch);
    let master = setup.master_port().unwrap();
    assert_eq!(redis_cli(master, &["debug", "change-repl-id"]).trim(), "OK");
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    assert_ne!(h.position.epoch, first.epoch, "a new epoch");
    assert_eq!(h.position.offset, 0);
    let next = b.publish(request(3)).await.unwrap();
    assert_eq!((next.offset, &next.epoch), (1, &h.position.epoch));
}
