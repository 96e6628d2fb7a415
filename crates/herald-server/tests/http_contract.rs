//! The HTTP contract of issue 20 (classes 3 to 5), against a real gateway on port 0 with real
//! HTTP and WebSocket clients: one parser for every way a publication enters, the JSON error
//! envelope on every error of every route (walking `docs/openapi.json`), and the header
//! details RFC 9110 fixes.

mod common;

use std::time::Duration;

use common::{API_KEY, Client, TestServer};
use serde_json::{Value, json};

async fn post_raw(s: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// Class 3: one parser and one validation for every way a publication enters.

/// Bad publication objects, each sent as a `/v1/publish` body and as a `/v1/publish/batch`
/// item. Before the fix the batch published the first one to `bench.feed` (last key won) and
/// worded the other errors differently.
const BAD_PUBLICATIONS: &[&str] = &[
    r#"{"channel":"history.small","channel":"bench.feed","data":{"n":1}}"#,
    r#"{"channel":"bench.feed","data":{"n":1,"n":2}}"#,
    r#"{"channel":"bench.feed","data":{"deep":[{"k":1,"k":1}]}}"#,
    r#"{"channel":"bench.feed","data":{"n":1},"extra":true}"#,
    r#"{"channel":"bench.feed"}"#,
    r#"{"data":{}}"#,
    r#"{"channel":7,"data":{}}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":""}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":7}"#,
    r#"{"channel":"bench.feed","data":{},"idempotency_key":"a","idempotency_key":"b"}"#,
    "[]",
    "1",
    "null",
    r#""bench.feed""#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_batch_publish_share_one_parser() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    assert_eq!(c.subscribe("history.small").await["ok"], true);
    for case in BAD_PUBLICATIONS {
        let (status, single) = post_raw(&s, "/v1/publish", case).await;
        assert_eq!(status, 400, "{case}: {single}");
        assert_eq!(single["error"]["code"], "bad_request", "{case}: {single}");
        let (status, batch) = post_raw(
            &s,
            "/v1/publish/batch",
            &format!(r#"{{"publications":[{case}]}}"#),
        )
        .await;
        assert_eq!(status, 200, "{case}: {batch}");
        assert_eq!(
            batch["results"][0], single,
            "{case}: the batch item and the single publish disagree"
        );
    }
    assert!(
        c.silent_for(Duration::from_millis(300)).await,
        "a refused publication was published"
    );
    // And the same good object publishes the same way through both.
    let good = r#"{"channel":"bench.feed","data":{"n":1}}"#;
    let (status, single) = post_raw(&s, "/v1/publish", good).await;
    assert_eq!((status, single["offset"].as_u64()), (200, Some(1)));
    let (_, batch) = post_raw(
        &s,
        "/v1/publish/batch",
        &format!(r#"{{"publications":[{good}]}}"#),
    )
    .await;
    assert_eq!(batch["results"][0]["offset"], 2);
}

/// The client publish (and every client frame) goes by the same rule: a repeated key is
/// refused, not resolved to its last value. Before the fix the first frame published to
/// `chat.room.b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_refuse_repeated_keys() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    for room in ["chat.room.a", "chat.room.b", "chat.room.c", "chat.room.d"] {
        assert_eq!(c.subscribe(room).await["ok"], true);
    }
    let frames = [
        (
            r#"{"type":"publish","id":91,"channel":"chat.room.a","channel":"chat.room.b","data":{"text":"x"}}"#,
            "duplicate field `channel`",
        ),
        (
            r#"{"type":"publish","id":92,"channel":"chat.room.a","data":{"text":"x","text":"y"}}"#,
            "duplicate key `text` in /data",
        ),
        (
            r#"{"type":"subscribe","id":93,"channel":"chat.room.c","channel":"chat.room.d"}"#,
            "duplicate field `channel`",
        ),
        (
            r#"{"type":"unsubscribe","type":"publish","id":94,"channel":"chat.room.a","data":{"text":"x"}}"#,
            "duplicate field `type`",
        ),
    ];
    for (frame, message) in frames {
        c.send_text(frame).await;
        let reply = c.next().await;
        assert_eq!(reply["type"], "reply", "{frame}: {reply}");
        assert_eq!(reply["ok"], false, "{frame}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{frame}: {reply}");
        let got = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(got.ends_with(message), "{frame}: {got}");
    }
    // The API says the same about the same payload.
    let (_, api) = post_raw(
        &s,
        "/v1/publish",
        r#"{"channel":"chat.room.a","data":{"text":"x","text":"y"}}"#,
    )
    .await;
    assert!(
        api["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .ends_with("duplicate key `text` in /data"),
        "{api}"
    );
    assert!(c.silent_for(Duration::from_millis(300)).await);
    // Still subscribed to chat.room.a (the refused unsubscribe did nothing).
    let (status, _) = s
        .publish("chat.room.a", json!({"text": "still here"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.next().await["data"]["text"], "still here");
}
