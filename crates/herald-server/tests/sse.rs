//! Server-Sent Events specifics over real sockets: refusals before the stream, channels and
//! resume cursors in the URL, the command endpoint's authentication, NDJSON, keep-alives and
//! headers. The behaviours every transport shares are in `transports.rs`.

mod common;

use std::time::Duration;

use common::sse::{SseClient, post_command};
use common::{TestServer, config_toml, token};
use serde_json::{Value, json};

fn tok(user: &str) -> String {
    token(user, &[], Duration::from_secs(600))
}

/// Gate 1 answers before any byte of the stream, with the same statuses and bodies as /v1/ws.
#[tokio::test]
async fn refusals_come_before_the_stream() {
    let s = TestServer::start().await;
    let base = s.url("");
    let r = SseClient::connect(&base, None, "", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let r = SseClient::connect(&base, Some("not-a-jwt"), "", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let r = SseClient::connect(&base, Some(&tok("a")), "since=garbage", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
}

/// Channels in the URL go through gate 2 one by one: a refused one is an `error` event, the
/// others work. The stream announces `retry:` and carries no-buffering headers.
#[tokio::test]
async fn channels_in_the_url() {
    let s = TestServer::with_config(&config_toml("[server]\nsse_retry = \"1500ms\"")).await;
    let res = reqwest::Client::new()
        .get(s.url("/v1/sse?channel=blog.article.feed"))
        .bearer_auth(tok("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "no-cache, no-transform");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    drop(res);
    let mut c = SseClient::connect(
        &s.url(""),
        Some(&tok("alice")),
        "channel=blog.article.feed&channel=ops.alerts&channel=notifications.user.bob&channel=nope",
        None,
    )
    .await
    .unwrap();
    assert_eq!(c.retry, Some(1500));
    let channels: Vec<&str> = c.welcome["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["notifications.user.alice", "blog.article.feed"]);
    let mut refused = Vec::new();
    for _ in 0..3 {
        let e = c.next().await;
        assert_eq!(e["type"], "error");
        refused.push((
            e["channel"].as_str().unwrap().to_owned(),
            e["error"]["code"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        refused,
        [
            ("ops.alerts".into(), "forbidden".into()),
            ("notifications.user.bob".into(), "forbidden".into()),
            ("nope".into(), "unknown_channel".into())
        ]
    );
    s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
        .await;
    let p = c.next().await;
    assert_eq!(
        (p["type"].clone(), p["offset"].clone()),
        (json!("pub"), json!(1))
    );
    let id = c.last_id.clone().unwrap();
    assert!(id.contains("blog.article.feed:1:"), "{id}");
    assert!(id.contains("notifications.user.alice:0:"), "{id}");
}

/// A session id alone never acts for a user: commands need the same user's credentials.
#[tokio::test]
async fn commands_are_authenticated_for_the_same_user() {
    let s = TestServer::start().await;
    let base = s.url("");
    let mut alice = SseClient::connect(&base, Some(&tok("alice")), "", None)
        .await
        .unwrap();
    let frame = json!({"type": "subscribe", "id": 1, "channel": "chat.room.1"});
    let (status, body) = post_command(&base, &alice.session, None, &frame).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let (status, body) = post_command(&base, &alice.session, Some(&tok("mallory")), &frame).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (status, body) = post_command(&base, "no-such-session", Some(&tok("alice")), &frame).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, body) =
        post_command(&base, &alice.session, Some(&tok("alice")), &json!([1])).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    // Nothing above reached the session: the first reply it sends is for this request.
    let r = alice
        .request(json!({"type": "subscribe", "channel": "chat.room.1"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    // A frame of the wrong shape is answered on the stream, like on a WebSocket.
    let r = alice
        .request(json!({"type": "subscribe", "channel": 5}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // Too large.
    let big = json!({"type": "publish", "id": 9, "channel": "chat.room.1",
                     "data": {"text": "x".repeat(1_100_000)}});
    let (status, _) = post_command(&base, &alice.session, Some(&tok("alice")), &big).await;
    assert_eq!(status, 413);
    // After the stream ends, its session id is gone.
    let session = alice.session.clone();
    drop(alice);
    common::eventually(async || {
        post_command(&base, &session, Some(&tok("alice")), &frame)
            .await
            .0
            == 404
    })
    .await;
}

/// `refresh` is authenticated by the new token itself (the old one may be what is about to
/// expire, or already has), and keeps the stream open past the old expiry.
#[tokio::test]
async fn refresh_through_the_command_endpoint() {
    let s = TestServer::start().await;
    let base = s.url("");
    let mut c = SseClient::connect(
        &base,
        Some(&token("alice", &[], Duration::from_secs(3))),
        "",
        None,
    )
    .await
    .unwrap();
    // No Authorization header: only the frame's own token speaks for the request.
    let frame = json!({"type": "refresh", "id": 1, "token": tok("alice")});
    let (status, body) = post_command(&base, &c.session, None, &frame).await;
    assert_eq!(status, 202, "{body}");
    let r = c.next().await;
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (json!(1), json!(true)),
        "{r}"
    );
    let frame = json!({"type": "refresh", "id": 2, "token": tok("bob")});
    let (status, body) = post_command(&base, &c.session, None, &frame).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    // Past the first token's expiry, the stream is still open.
    assert!(c.next_within(Duration::from_millis(3500)).await.is_none());
    assert!(!c.ended);
}

/// `?format=ndjson` (or `Accept: application/x-ndjson`): the same frames, one per line.
#[tokio::test]
async fn ndjson_stream() {
    let s = TestServer::with_config(&config_toml("[server]\nping_interval = \"200ms\"")).await;
    for (query, accept) in [("format=ndjson", None), ("", Some("application/x-ndjson"))] {
        let mut req = reqwest::Client::new()
            .get(s.url(&format!("/v1/sse?channel=blog.article.feed&{query}")))
            .bearer_auth(tok("alice"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let mut res = req.send().await.unwrap();
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
            .await;
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while text.lines().filter(|l| !l.is_empty()).count() < 3 {
            let chunk = tokio::time::timeout_at(deadline, res.chunk())
                .await
                .expect("lines within 3 s")
                .unwrap()
                .unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let frames: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON frame"))
            .collect();
        assert_eq!(frames[0]["type"], "welcome");
        assert!(frames.iter().any(|f| f["type"] == "pub"), "{frames:?}");
        assert!(
            frames.iter().any(|f| f["type"] == "ping"),
            "keep-alive lines: {frames:?}"
        );
    }
}

/// Keep-alives are SSE comments at the ping interval, not events; a silent SSE client is not
/// closed for not answering pings (it cannot).
#[tokio::test]
async fn keep_alive_comments() {
    let s = TestServer::with_config(&config_toml(
        "[server]\nping_interval = \"200ms\"\npong_timeout = \"200ms\"",
    ))
    .await;
    let mut c = SseClient::connect(&s.url(""), Some(&tok("alice")), "", None)
        .await
        .unwrap();
    assert!(c.next_within(Duration::from_millis(1200)).await.is_none());
    assert!(c.comments >= 3, "{} keep-alives", c.comments);
    assert!(!c.ended, "still open after several ping intervals");
}

/// `?since=` resumes like `Last-Event-ID`.
#[tokio::test]
async fn since_in_the_query() {
    let s = TestServer::start().await;
    let mut c = SseClient::connect(
        &s.url(""),
        Some(&tok("alice")),
        "channel=blog.article.feed",
        None,
    )
    .await
    .unwrap();
    s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
        .await;
    c.next().await;
    let cursor = c.last_id.clone().unwrap();
    drop(c);
    s.publish("blog.article.feed", json!({"id": "2", "title": "t"}))
        .await;
    let query = format!("since={}", urlencode(&cursor));
    let mut c = SseClient::connect(&s.url(""), Some(&tok("alice")), &query, None)
        .await
        .unwrap();
    let sub = c.welcome["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["channel"] == "blog.article.feed")
        .cloned()
        .unwrap();
    assert_eq!(sub["recovered"], true);
    assert_eq!(c.next().await["data"]["id"], "2");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The WebSocket endpoint, asked without an upgrade, says why an upgrade would be refused
/// (browsers hide a failed upgrade's status), or 426 when it would be accepted.
#[tokio::test]
async fn websocket_probe_tells_refused_from_reachable() {
    let s = TestServer::start().await;
    let http = reqwest::Client::new();
    let res = http.get(s.url("/v1/ws")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    let res = http
        .get(s.url(&format!("/v1/ws?token={}", tok("alice"))))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 426);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "upgrade_required"
    );
}
