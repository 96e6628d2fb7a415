//! Issue 12, class 4: payload fidelity. A gateway delivers the bytes of `data` it accepted
//! (validated, not rewritten) or refuses them with a clear error; it never changes them. Each
//! way in (API, batch, WebSocket publish, SSE command) and each way out (live `pub`, a
//! recovery replay, the history API) is checked against the raw text a subscriber receives.
//! The Postgres doors are in `postgres.rs`.

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::{Client, TestServer, token};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Payloads a `Value` round trip would change: integers beyond 64 bits, decimals beyond
/// `f64`, exponents, negative zero, escapes, key order, and whitespace inside strings.
const PAYLOADS: &[&str] = &[
    r#"{"text":"big","a":123456789012345678901234567890}"#,
    r#"{"text":"decimal","a":0.1000000000000000055511151231257827021181583404541015625}"#,
    r#"{"text":"exp","a":1E+2,"b":-0,"c":2.50}"#,
    r#"{"text":"\u00e9\n\"q\"","z":1,"a":2}"#,
    r#"{"text":"  spaced  ","nested":{"y":[3,2,1],"x":{}}}"#,
];

/// The raw text of the next `pub` frame's `data` (the bytes between `"data":` and `,"from":`).
async fn next_pub_data(c: &mut Client) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .expect("a frame within 5 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg
            && t.starts_with(r#"{"type":"pub""#)
        {
            let at = t.find(r#""data":"#).unwrap() + 7;
            // `from` follows `data` and contains no `,"from":` itself.
            let end = t.rfind(r#","from":"#).unwrap();
            return t[at..end].to_owned();
        }
    }
}

async fn raw_post(s: &TestServer, path: &str, body: String) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(s.url(path))
        .bearer_auth(common::API_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_door_delivers_the_bytes_it_accepted() {
    let s = TestServer::start().await;
    let mut sub = s.client("bob").await;
    assert_eq!(sub.subscribe("chat.room.1").await["ok"], true);
    let mut publisher = s.client("alice").await;
    let sse = SseClient::connect(
        &s.url(""),
        Some(&token("carol", &[], Duration::from_secs(600))),
        "",
        None,
    )
    .await
    .unwrap();
    for (door, payload) in ["api", "batch", "websocket", "sse"]
        .iter()
        .flat_map(|d| PAYLOADS.iter().map(move |p| (*d, *p)))
    {
        match door {
            "api" => {
                let body = format!(r#"{{"channel":"chat.room.1","data":{payload}}}"#);
                let (status, b) = raw_post(&s, "/v1/publish", body).await;
                assert_eq!(status, 200, "{b}");
            }
            "batch" => {
                let body =
                    format!(r#"{{"publications":[{{"channel":"chat.room.1","data":{payload}}}]}}"#);
                let (status, b) = raw_post(&s, "/v1/publish/batch", body).await;
                assert_eq!(status, 200, "{b}");
                assert!(b["results"][0]["offset"].is_u64(), "{b}");
            }
            "websocket" => {
                let frame = format!(
                    r#"{{"type":"publish","id":1,"channel":"chat.room.1","data":{payload}}}"#
                );
                publisher.send_text(&frame).await;
                let r = publisher.next().await;
                assert_eq!(r["ok"], true, "{r}");
            }
            _ => {
                // Posted as raw text, not through `Value` (which would itself rewrite it).
                let body =
                    format!(r#"{{"type":"publish","channel":"chat.room.1","data":{payload}}}"#);
                let res = reqwest::Client::new()
                    .post(s.url(&format!("/v1/sse/{}", sse.session)))
                    .bearer_auth(token("carol", &[], Duration::from_secs(600)))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status().as_u16(), 202);
            }
        }
        assert_eq!(next_pub_data(&mut sub).await, payload, "through {door}");
    }
}

#[tokio::test]
async fn replays_and_history_keep_the_bytes() {
    let s = TestServer::start().await;
    let mut c = s.client("bob").await;
    let r = c.subscribe("blog.article.feed").await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    let payload = r#"{"id":"1","title":"\u00e9 123456789012345678901234567890"}"#;
    let (status, b) = raw_post(
        &s,
        "/v1/publish",
        format!(r#"{{"channel":"blog.article.feed","data":{payload}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(next_pub_data(&mut c).await, payload);
    // A recovery replay carries the same bytes.
    let mut again = s.client("bob").await;
    again
        .send_text(&format!(
            r#"{{"type":"subscribe","id":9,"channel":"blog.article.feed","since":{{"offset":0,"epoch":"{epoch}"}}}}"#
        ))
        .await;
    let text = loop {
        match again.ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.contains(r#""id":9"#) => break t.to_string(),
            _ => {}
        }
    };
    assert!(text.contains(&format!(r#""data":{payload}"#)), "{text}");
    // And so does the history API.
    let res = reqwest::Client::new()
        .get(s.url("/v1/channels/blog.article.feed/history?since=0"))
        .bearer_auth(common::API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(res.contains(payload), "{res}");
}

#[tokio::test]
async fn unrepresentable_numbers_are_refused_clearly() {
    let s = TestServer::start().await;
    let (status, b) = raw_post(
        &s,
        "/v1/publish",
        r#"{"channel":"chat.room.1","data":{"text":"x","a":1e400}}"#.into(),
    )
    .await;
    assert_eq!(status, 400, "{b}");
    assert_eq!(b["error"]["code"], "bad_request");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{b}"
    );
}

/// Found by the `client_frame` fuzz target: a publish whose payload is valid JSON syntax but
/// holds no value (a lone surrogate escape) is answered with `bad_request`, the connection
/// stays, and nothing is published.
#[tokio::test]
async fn a_payload_with_a_lone_surrogate_is_refused() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.send_text(r#"{"type":"publish","id":1,"channel":"chat.room.1","data":{"text":"\ude00"}}"#)
        .await;
    let r = c.next().await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(c.subscribe("chat.room.1").await["offset"], 0);
}
