//! The broker conformance suite against the Redis broker, on a `redis-server` of its own.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::{Subject, conformance_tests};
use herald_core::PublicationSink;
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::RedisServer;

async fn redis(sink: Arc<dyn PublicationSink>) -> Subject {
    let server = RedisServer::start();
    let broker = RedisBroker::start(
        RedisOptions {
            url: server.url(),
            prefix: "herald-test".into(),
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
        },
        sink,
    )
    .unwrap();
    Subject {
        broker: Arc::new(broker),
        guard: Box::new(server),
    }
}

conformance_tests!(redis);
