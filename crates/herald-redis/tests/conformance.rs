//! The broker conformance suite against the Redis broker, on a `redis-server` of its own.

use std::sync::Arc;

use herald_conformance::{Subject, conformance_tests};
use herald_core::PublicationSink;
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::RedisServer;

async fn redis(sink: Arc<dyn PublicationSink>) -> Subject {
    let server = RedisServer::start();
    let broker = RedisBroker::start(
        RedisOptions {
            prefix: "herald-test".into(),
            ..RedisOptions::new(server.url())
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
