//! Bursts bigger than a connection's outbound queue. One valid `/v1/publish/batch` can hold
//! more bytes for one channel than `limits.outbound_queue_bytes` (1,000 × 1.5 KB, or
//! 20 × 60 KB, against the default 1 MiB), and batches can follow each other. Subscribers
//! that read promptly (WebSocket and SSE) receive all of it, on every broker and on every
//! node: only a client that stops reading is a slow consumer. Before the fix the memory
//! broker's fan-out queued the whole batch to every subscriber before any writer ran, and the
//! Redis pub/sub reader did the same with what it had read from its socket (`FanoutPace`):
//! prompt readers were closed with 4008.

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::{Client, TestServer, config_toml, token};
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{Value, json};

/// A prompt reader over either transport: the next frame, or `None` after `limit`.
enum Reader {
    Ws(Client),
    Sse(SseClient),
}

impl Reader {
    async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        match self {
            Reader::Ws(c) => c.next_within(limit).await,
            Reader::Sse(c) => c.next_within(limit).await,
        }
    }
}

/// Subscribes 15 WebSocket and 5 SSE readers on `readers_at`, publishes the bursts through
/// `publisher` (1,000 × 1.5 KB; 20 × 60 KB; then three batches of 20 × 60 KB back to back,
/// 3.4 MiB, without waiting for the readers), and checks every reader receives every
/// publication in order without a goodbye, and that neither gateway counted a slow consumer.
async fn bursts_reach_prompt_readers(publisher: &TestServer, readers_at: &TestServer) {
    let mut readers: Vec<Reader> = Vec::new();
    for i in 0..15 {
        let mut c = readers_at.client(&format!("r{i}")).await;
        assert_eq!(c.subscribe("bench.feed").await["ok"], true);
        readers.push(Reader::Ws(c));
    }
    for i in 0..5 {
        let tok = token(&format!("s{i}"), &[], Duration::from_secs(600));
        let c = SseClient::connect(&readers_at.url(""), Some(&tok), "channel=bench.feed", None)
            .await
            .unwrap_or_else(|r| panic!("SSE refused: {} {}", r.status, r.body));
        readers.push(Reader::Sse(c));
    }
    for (batches, n, size) in [(1, 1000usize, 1500usize), (1, 20, 60_000), (3, 20, 60_000)] {
        let pad = "p".repeat(size);
        let mut offsets: Vec<u64> = Vec::new();
        for _ in 0..batches {
            let items: Vec<Value> = (0..n)
                .map(|i| json!({"channel": "bench.feed", "data": {"i": i, "pad": pad}}))
                .collect();
            let (status, body) = publisher
                .post("/v1/publish/batch", json!({"publications": items}))
                .await;
            assert_eq!(status, 200, "{body}");
            offsets.extend(
                body["results"]
                    .as_array()
                    .expect("one result per item")
                    .iter()
                    .map(|r| r["offset"].as_u64().expect("every item accepted")),
            );
        }
        let total = offsets.len();
        let what = format!("{batches} × {n} × {size} B");
        let got = futures_util::future::join_all(readers.iter_mut().map(|c| async move {
            let mut seen = Vec::new();
            while seen.len() < total {
                match c.next_within(Duration::from_secs(30)).await {
                    Some(p) if p["type"] == "pub" => seen.push(p["offset"].as_u64().unwrap()),
                    other => return Err(format!("after {} publications: {other:?}", seen.len())),
                }
            }
            Ok(seen)
        }))
        .await;
        for (i, r) in got.into_iter().enumerate() {
            let seen = r.unwrap_or_else(|e| panic!("reader {i}, {what}: {e}"));
            assert_eq!(seen, offsets, "reader {i}, {what}");
        }
    }
    for s in [publisher, readers_at] {
        let metrics = s.metrics().await;
        assert!(
            metrics.contains("herald_slow_consumers_total 0"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_bigger_than_the_queue_reaches_prompt_readers_on_the_memory_broker() {
    let s = TestServer::start().await;
    bursts_reach_prompt_readers(&s, &s).await;
}

/// Publishes on one node and reads on another, both on the broker at `url` of `kind`.
async fn across_two_nodes(kind: &str, url: &str) {
    let broker = format!("[broker]\nkind = \"{kind}\"\nurl = \"{url}\"\n");
    let a = TestServer::with_config(&config_toml(&broker)).await;
    let b = TestServer::with_config(&config_toml(&broker)).await;
    bursts_reach_prompt_readers(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_bigger_than_the_queue_reaches_prompt_readers_on_another_redis_node() {
    let redis = RedisServer::start();
    across_two_nodes("redis", &redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_bigger_than_the_queue_reaches_prompt_readers_on_another_nats_node() {
    let nats = NatsServer::start();
    across_two_nodes("nats", &nats.url()).await;
}
