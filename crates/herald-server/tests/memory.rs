//! End-to-end tests of the memory bounds of a one-node gateway: the history byte budget across
//! channels, the idempotency-key cap and the cap on idle channel records, over real sockets
//! (HTTP API, `/metrics`, WebSocket clients recovering).

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::{TestServer, token};
use serde_json::{Value, json};

/// One sample of `/metrics` (unlabelled series only), `None` when the series is absent.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok())?
    })
}

/// A gateway whose history may hold 64 KiB in all, with a history channel per `{n}` that on
/// its own would keep 100 publications for ten minutes.
async fn small_budget(extra: &str) -> TestServer {
    TestServer::with_config(&common::config_toml(&format!(
        r#"
[broker]
history_budget_bytes = 65536
{extra}
[limits]
max_payload_bytes = 4096
# The tests send a few hundred frames a second on one connection.
frame_rate = 10000

[[channel]]
name = "mem.{{n}}"
scope = "public"
history = {{ size = 100, ttl = "10m" }}
schema = {{ type = "object" }}
"#
    )))
    .await
}

/// About 2 KB of JSON.
fn payload(channel: usize, n: u64) -> Value {
    json!({ "channel": channel, "n": n, "pad": "x".repeat(2000) })
}

/// The regression test of issue 12, class 6: many channels with long histories used to grow
/// the process without limit. Now the history stays under the budget, the oldest publications
/// (whole old channels here) are evicted first and `/metrics` says so, a client recovering on
/// an evicted channel is told `recovered: false`, and a recent channel still recovers exactly.
#[tokio::test]
async fn history_budget_evicts_oldest_publications_across_channels() {
    let s = small_budget("").await;
    let mut epochs = Vec::new();
    // 40 channels × 10 publications × ~2 KB ≈ 800 KB offered to a 64 KiB budget.
    for ch in 0..40 {
        for n in 1..=10u64 {
            let (status, body) = s.publish(&format!("mem.{ch}"), payload(ch, n)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["offset"], n);
            if n == 1 {
                epochs.push(body["epoch"].as_str().unwrap().to_owned());
            }
        }
    }

    let metrics = s.metrics().await;
    let held = sample(&metrics, "herald_history_bytes").expect("herald_history_bytes exported");
    assert!(held > 0.0 && held <= 65536.0, "held {held}\n{metrics}");
    let evicted = sample(&metrics, "herald_history_evictions_total")
        .expect("herald_history_evictions_total exported");
    assert!(
        evicted >= 300.0,
        "most of the 400 were evicted: {evicted}\n{metrics}"
    );
    let retained = sample(&metrics, "herald_history_publications").expect("count exported");
    assert_eq!(retained + evicted, 400.0, "{metrics}");

    let mut c = s.client("alice").await;
    // The first channel's history went first: its gap cannot be recovered.
    let r = c
        .request(json!({"type": "subscribe", "channel": "mem.0",
                        "since": {"offset": 1, "epoch": epochs[0]}}))
        .await;
    let summary = json!([
        r["ok"],
        r["recovered"],
        r["offset"],
        r["epoch"],
        r["publications"].as_array().map(Vec::len)
    ]);
    assert_eq!(r["ok"], true, "{summary}");
    assert_eq!(r["recovered"], false, "{summary}");
    assert_eq!(r["offset"], 10, "the position survives eviction: {summary}");
    assert_eq!(r["epoch"], epochs[0].as_str(), "{summary}");
    // The latest channel is intact.
    let r = c
        .request(json!({"type": "subscribe", "channel": "mem.39",
                        "since": {"offset": 5, "epoch": epochs[39]}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let offsets: Vec<u64> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![6, 7, 8, 9, 10]);
    assert_eq!(r["publications"][0]["data"], payload(39, 6));

    // The history API agrees: nothing left on the first channel, its position intact.
    let (status, h) = s.get("/v1/channels/mem.0/history?since=0&limit=100").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["publications"], json!([]), "{h}");
    assert_eq!(h["offset"], 10, "{h}");
}

/// Idempotency keys are capped in number: past the cap the oldest key is forgotten first (a
/// retry with it publishes again), recent keys still deduplicate, and `/metrics` counts both.
#[tokio::test]
async fn idempotency_keys_are_capped() {
    let s = small_budget("max_idempotency_keys = 3").await;
    let publish = async |key: &str| {
        let (status, body) = s
            .post(
                "/v1/publish",
                json!({"channel": "mem.k", "data": {}, "idempotency_key": key}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["offset"].as_u64().unwrap()
    };
    for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
        assert_eq!(publish(key).await, i as u64 + 1);
    }
    assert_eq!(publish("d").await, 4, "a recent key still deduplicates");
    assert_eq!(publish("b").await, 2, "so does the oldest one kept");
    assert_eq!(
        publish("a").await,
        5,
        "the oldest key was forgotten at the cap"
    );
    let metrics = s.metrics().await;
    assert_eq!(
        sample(&metrics, "herald_idempotency_keys"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "herald_idempotency_evictions_total"),
        Some(2.0),
        "a, then b when a came back: {metrics}"
    );
}

/// Channel records that retain nothing are capped: subscribing to a thousand rooms that are
/// never published to does not leave a thousand records behind, and `/metrics` shows it.
#[tokio::test]
async fn idle_channel_records_are_capped() {
    let s = small_budget("max_idle_channels = 50").await;
    let mut c = s.client("alice").await;
    for room in 0..300 {
        let channel = format!("chat.room.r{room}");
        let r = c.subscribe(&channel).await;
        assert_eq!(r["ok"], true, "{r}");
        let r = c
            .request(json!({"type": "unsubscribe", "channel": channel}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let metrics = s.metrics().await;
    let channels = sample(&metrics, "herald_broker_channels").expect("exported");
    assert!(channels <= 50.0, "{channels}\n{metrics}");
    // A channel that still retains history is never dropped for the cap.
    let (_, body) = s.publish("mem.kept", json!({"n": 1})).await;
    for room in 300..400 {
        c.subscribe(&format!("chat.room.r{room}")).await;
        c.request(json!({"type": "unsubscribe", "channel": format!("chat.room.r{room}")}))
            .await;
    }
    let r = c
        .request(json!({"type": "subscribe", "channel": "mem.kept",
                        "since": {"offset": 0, "epoch": body["epoch"]}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["publications"][0]["data"], json!({"n": 1}));
}

/// A recovery the connection's outbound queue could not hold used to be queued anyway: the
/// queue overflowed, the client was closed as a slow consumer (4008), came back with the same
/// `since` and was closed again, forever, each time after the gateway encoded the whole replay.
/// Past half of `limits.outbound_queue_bytes` the gap is now not recovered, as past
/// `max_recovery`, and the connection stays up.
#[tokio::test]
async fn a_replay_larger_than_the_outbound_queue_is_not_recovered() {
    let s = small_queue().await;
    let mut epoch = String::new();
    // 40 × ~2 KB ≈ 80 KB of replay: more than the whole 64 KiB queue.
    for n in 1..=40u64 {
        let (status, body) = s.publish("mem.r", payload(0, n)).await;
        assert_eq!(status, 200, "{body}");
        epoch = body["epoch"].as_str().unwrap().to_owned();
    }
    let mut c = s.client("alice").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "mem.r",
                        "since": {"offset": 0, "epoch": epoch}}))
        .await;
    let summary = json!([
        r["ok"],
        r["recovered"],
        r["offset"],
        r["publications"].as_array().map(Vec::len)
    ]);
    assert_eq!(summary, json!([true, false, 40, 0]));
    // Still connected and subscribed.
    s.publish("mem.r", payload(0, 41)).await;
    let p = c.next().await;
    assert_eq!(
        (p["type"].as_str(), p["offset"].as_u64()),
        (Some("pub"), Some(41))
    );
    // A gap that fits is replayed.
    c.request(json!({"type": "unsubscribe", "channel": "mem.r"}))
        .await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "mem.r",
                        "since": {"offset": 31, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["publications"].as_array().map(Vec::len), Some(10));
}

/// A gateway whose connections queue at most 64 KiB.
async fn small_queue() -> TestServer {
    TestServer::with_config(&common::config_toml(
        r#"
[limits]
max_payload_bytes = 4096
outbound_queue_bytes = 65536

[[channel]]
name = "mem.{n}"
scope = "public"
history = { size = 100, ttl = "10m" }
schema = { type = "object" }
"#,
    ))
    .await
}

/// The same bound when an SSE connection resumes several channels at once (`Last-Event-ID`):
/// their replays share the queue, so once they would take more than half of it the next
/// channel is resumed with `recovered: false` rather than overflowing the queue.
#[tokio::test]
async fn resuming_several_channels_shares_the_replay_budget() {
    let s = small_queue().await;
    let mut cursor = Vec::new();
    // 12 × ~2 KB ≈ 25 KB per channel: either fits alone, not both.
    for channel in ["mem.a", "mem.b"] {
        let mut epoch = String::new();
        for n in 1..=12u64 {
            let (_, body) = s.publish(channel, payload(0, n)).await;
            epoch = body["epoch"].as_str().unwrap().to_owned();
        }
        cursor.push(format!("{channel}:0:{epoch}"));
    }
    let tok = token("alice", &[], Duration::from_secs(60));
    let mut c = SseClient::connect(&s.url(""), Some(&tok), "", Some(&cursor.join(",")))
        .await
        .expect("connected");
    let recovered: Vec<(Value, Value)> = c.welcome["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["channel"] != "notifications.user.alice")
        .map(|e| (e["channel"].clone(), e["recovered"].clone()))
        .collect();
    assert_eq!(
        recovered,
        [
            (json!("mem.a"), json!(true)),
            (json!("mem.b"), json!(false))
        ]
    );
    for n in 1..=12u64 {
        let p = c.next().await;
        assert_eq!(
            (p["channel"].as_str(), p["offset"].as_u64()),
            (Some("mem.a"), Some(n))
        );
    }
    // Live delivery on both afterwards: the connection was not closed.
    s.publish("mem.b", payload(0, 13)).await;
    let p = c.next().await;
    assert_eq!(
        (p["channel"].as_str(), p["offset"].as_u64()),
        (Some("mem.b"), Some(13))
    );
}
