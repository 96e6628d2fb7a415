//! The broker conformance suite on a Sentinel-managed Redis (master, replica, Sentinel; one
//! setup for every check), the broker finding the master through the Sentinel.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::{Subject, conformance_tests};
use herald_core::PublicationSink;
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::RedisSentinel;

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

conformance_tests!(sequential conformance_on_a_sentinel_managed_redis, start, on_sentinel);
