//! TLS (`rediss://`) against a `redis-server` that speaks only TLS and asks for a client
//! certificate, with a CA generated for the test: Herald trusts the configured CA (not the
//! system's roots) and presents its client certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_conformance::{Recorder, channel};
use herald_core::protocol::raw_json;
use herald_core::{Broker, BrokerError, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions, TlsFiles};
use herald_testkit::RedisTls;
use serde_json::json;

async fn ready(b: &RedisBroker) -> Result<(), BrokerError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = b.health().await;
        if r.is_ok() || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_delivers_over_tls_with_a_custom_ca() {
    let server = RedisTls::start();
    let rec = Arc::new(Recorder::default());
    let broker = RedisBroker::start(
        RedisOptions {
            tls: TlsFiles {
                ca_file: Some(server.file("ca.crt")),
                cert_file: Some(server.file("client.crt")),
                key_file: Some(server.file("client.key")),
            },
            ..RedisOptions::new(server.url())
        },
        rec.clone(),
    )
    .unwrap();
    ready(&broker).await.expect("ready over TLS");
    let ch = channel("tls");
    broker.subscribe(&ch).await.unwrap();
    let pos = broker
        .publish(PublishRequest {
            channel: Arc::from(ch.as_str()),
            data: raw_json(&json!({ "over": "tls" })),
            history: None,
            idempotency_key: None,
            from: None,
        })
        .await
        .unwrap();
    assert_eq!(pos.offset, 1);
    rec.until("the publication", |r| r.publications(&ch).len() == 1)
        .await;

    // Without the CA the server's certificate is not trusted: never ready, publishing 503s.
    let untrusting = RedisBroker::start(
        RedisOptions {
            tls: TlsFiles {
                ca_file: None,
                cert_file: Some(server.file("client.crt")),
                key_file: Some(server.file("client.key")),
            },
            ..RedisOptions::new(server.url())
        },
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let refused = untrusting
        .publish(PublishRequest {
            channel: Arc::from(ch.as_str()),
            data: raw_json(&json!({})),
            history: None,
            idempotency_key: None,
            from: None,
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(untrusting.health().await.is_err());

    // A plain-text URL to the TLS port gets nowhere either.
    let plain = RedisBroker::start(
        RedisOptions::new(format!("redis://127.0.0.1:{}", server.port)),
        Arc::new(Recorder::default()),
    )
    .unwrap();
    assert!(plain.health().await.is_err());
}
