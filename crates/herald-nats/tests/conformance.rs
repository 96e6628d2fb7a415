//! The broker conformance suite against the NATS broker, on a `nats-server -js` of its own.

use std::sync::Arc;
use std::time::Duration;

use herald_conformance::{Subject, conformance_tests};
use herald_core::PublicationSink;
use herald_nats::{NatsBroker, NatsOptions};
use herald_testkit::NatsServer;

async fn nats(sink: Arc<dyn PublicationSink>) -> Subject {
    let server = NatsServer::start();
    let broker = NatsBroker::start(
        NatsOptions {
            url: server.url(),
            prefix: "herald-test".into(),
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
            // The suite's largest history is 100 publications.
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            replicas: 1,
        },
        sink,
    )
    .unwrap();
    Subject {
        broker: Arc::new(broker),
        guard: Box::new(server),
    }
}

conformance_tests!(nats);
