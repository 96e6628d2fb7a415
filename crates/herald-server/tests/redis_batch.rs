//! `POST /v1/publish/batch` over the Redis broker, where a batch is one round trip to Redis:
//! it answers byte for byte what publishing its items one by one answers, counts them the
//! same way, and its publications reach WebSocket subscribers on every node sharing the
//! Redis, in batch order per channel.

mod common;

use std::time::Duration;

use common::{API_KEY, TestServer, config_toml};
use herald_testkit::RedisServer;
use serde_json::{Value, json};

fn redis_broker(redis: &RedisServer) -> String {
    format!("[broker]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url())
}

async fn gateway(redis: &RedisServer) -> TestServer {
    TestServer::with_config(&config_toml(&redis_broker(redis))).await
}

/// POSTs `body` as it is; the status and the body's text.
async fn post_text(s: &TestServer, path: &str, body: String) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// `text` with every epoch (random per history) replaced by `*`.
fn mask_epochs(text: &str) -> String {
    const TAG: &str = "\"epoch\":\"";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(TAG) {
        out.push_str(&rest[..at + TAG.len()]);
        rest = &rest[at + TAG.len()..];
        let end = rest.find('"').expect("a closed string");
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The publication counters of `/metrics` (accepted by source, refused by gate and code),
/// sorted: the exposition's order of label sets is not part of it.
async fn publish_counters(s: &TestServer) -> Vec<String> {
    let mut lines: Vec<String> = s
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("herald_publications_total") || l.starts_with("herald_rejects_total")
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The same publications, as one batch on one gateway and one by one (`POST /v1/publish`) on
/// another, each on a Redis of its own: every item's answer in the batch is, byte for byte
/// (epochs aside, which are random), the single publish's body; the metrics count the same.
/// The items mix channels, a repeated channel, an idempotency key repeated inside the batch,
/// and every per-item refusal (bad JSON shape, repeated field, unknown channel, schema, size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_redis_answers_as_its_items_published_one_by_one() {
    let big = "x".repeat(70 * 1024);
    let items: Vec<String> = vec![
        json!({"channel": "blog.article.feed", "data": {"id": "1", "title": "one"}}).to_string(),
        json!({"channel": "notifications.user.alice", "data": {"type": "mention"}}).to_string(),
        json!({"channel": "blog.article.feed", "data": {"id": 2}}).to_string(),
        json!({"channel": "missing.channel", "data": {}}).to_string(),
        json!({"channel": "blog.article.feed"}).to_string(),
        r#"{"channel": "blog.article.feed", "channel": "ops.alerts", "data": {}}"#.to_owned(),
        json!({"channel": "history.small", "data": {"n": 1}, "idempotency_key": "k-1"}).to_string(),
        json!({"channel": "blog.article.feed", "data": {"id": "3", "title": big}}).to_string(),
        json!({"channel": "history.small", "data": {"n": 2}, "idempotency_key": "k-1"}).to_string(),
        json!({"channel": "notifications.user.alice", "data": {"type": "reply", "text": "é"}})
            .to_string(),
        json!({"channel": "blog.article.feed", "data": {"id": "4", "title": "four"}}).to_string(),
        json!({"channel": "history.small", "data": {"n": 3}}).to_string(),
    ];

    let (redis_a, redis_b) = (RedisServer::start(), RedisServer::start());
    let (batched, single) = (gateway(&redis_a).await, gateway(&redis_b).await);
    let (status, batch_answer) = post_text(
        &batched,
        "/v1/publish/batch",
        format!("{{\"publications\":[{}]}}", items.join(",")),
    )
    .await;
    assert_eq!(status, 200, "{batch_answer}");
    let mut answers = Vec::new();
    for item in &items {
        answers.push(post_text(&single, "/v1/publish", item.clone()).await.1);
    }
    let one_by_one = format!("{{\"results\":[{}]}}", answers.join(","));
    assert_eq!(mask_epochs(&batch_answer), mask_epochs(&one_by_one));

    // The answer is what it claims: offsets per channel in batch order, the repeated key
    // answered with the first item's position.
    let v: Value = serde_json::from_str(&batch_answer).unwrap();
    let offsets: Vec<Option<u64>> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64())
        .collect();
    assert_eq!(
        offsets,
        vec![
            Some(1),
            Some(1),
            None,
            None,
            None,
            None,
            Some(1),
            None,
            Some(1),
            Some(2),
            Some(2),
            Some(2)
        ]
    );
    assert_eq!(
        publish_counters(&batched).await,
        publish_counters(&single).await
    );
}

/// Two gateways sharing one Redis, WebSocket subscribers on both: two batches (one through
/// each gateway) interleaving a broadcast channel and two users' channels reach every
/// subscriber of each channel, on either node, complete and in batch order, at consecutive
/// offsets; nobody gets another user's items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_subscribers_on_every_node_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (gateway(&redis).await, gateway(&redis).await);
    // alice on both nodes and bob on b are subscribed to their own channel at connect.
    let mut alice_a = a.client("alice").await;
    let mut alice_b = b.client("alice").await;
    let mut bob_b = b.client("bob").await;
    let mut carol_a = a.client("carol").await;
    let mut dave_b = b.client("dave").await;
    for c in [&mut carol_a, &mut dave_b] {
        assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
    }

    const PER_BATCH: usize = 150;
    let item = |n: usize| match n % 3 {
        0 => json!({"channel": "blog.article.feed", "data": {"id": n.to_string(), "title": "t"}}),
        1 => {
            json!({"channel": "notifications.user.alice", "data": {"type": "mention", "text": n.to_string()}})
        }
        _ => {
            json!({"channel": "notifications.user.bob", "data": {"type": "reply", "text": n.to_string()}})
        }
    };
    for (node, range) in [(&a, 0..PER_BATCH), (&b, PER_BATCH..2 * PER_BATCH)] {
        let items: Vec<Value> = range.map(item).collect();
        let (status, body) = node
            .post("/v1/publish/batch", json!({ "publications": items }))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["offset"].is_u64()),
            "{body}"
        );
    }

    // Each channel got every third item, in batch order.
    let expected = |first: usize| -> Vec<String> {
        (first..2 * PER_BATCH)
            .step_by(3)
            .map(|n| n.to_string())
            .collect()
    };
    let feed = expected(0);
    let subscribers = [
        (&mut carol_a, "blog.article.feed", &feed, "id"),
        (&mut dave_b, "blog.article.feed", &feed, "id"),
        (
            &mut alice_a,
            "notifications.user.alice",
            &expected(1),
            "text",
        ),
        (
            &mut alice_b,
            "notifications.user.alice",
            &expected(1),
            "text",
        ),
        (&mut bob_b, "notifications.user.bob", &expected(2), "text"),
    ];
    for (client, channel, expected, field) in subscribers {
        let mut got = Vec::new();
        let mut offsets = Vec::new();
        while got.len() < expected.len() {
            let f = client
                .next_within(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{channel}: {} of {}", got.len(), expected.len()));
            if f["type"] != "pub" {
                continue;
            }
            assert_eq!(f["channel"], channel, "{f}");
            got.push(f["data"][field].as_str().unwrap().to_owned());
            offsets.push(f["offset"].as_u64().unwrap());
        }
        assert_eq!(&got, expected, "{channel}");
        assert_eq!(
            offsets,
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "{channel}"
        );
        assert!(client.silent_for(Duration::from_millis(200)).await);
    }
}
