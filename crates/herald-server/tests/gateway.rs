//! End-to-end tests of protocol v1 and the server API over real sockets.

mod common;

use std::time::Duration;

use common::{API_KEY, Client, TestServer, config_toml, token};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

fn expect_401(result: Result<Client, tungstenite::Error>) -> Value {
    match result {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 401);
            let body = res.body().as_ref().expect("401 has a body");
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
            v
        }
        Err(e) => panic!("expected HTTP 401, got {e}"),
        Ok(_) => panic!("expected HTTP 401, the upgrade succeeded"),
    }
}

/// Acceptance 1: no / garbage / expired / wrong-key / alg none tokens get 401 and no upgrade.
#[tokio::test]
async fn bad_credentials_get_401_without_upgrade() {
    let s = TestServer::start().await;
    let url = s.ws_url();
    expect_401(Client::connect(&url, None).await);
    expect_401(Client::connect(&url, Some("garbage")).await);
    expect_401(Client::connect(&url, Some("a.b.c")).await);
    let expired = {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("exp".into(), 1_000_000u64.into());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let v = expect_401(Client::connect(&url, Some(&expired)).await);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    let wrong_key = herald_core::identity::mint_hs256(
        "not-the-secret",
        "alice",
        &[],
        "roles",
        Duration::from_secs(60),
    )
    .unwrap();
    expect_401(Client::connect(&url, Some(&wrong_key)).await);
    // {"alg":"none"} with a valid-looking payload and an empty signature.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        "eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0"
    );
    expect_401(Client::connect(&url, Some(&none)).await);
    // ?token= works for browsers, and is checked the same way.
    expect_401(Client::connect(&format!("{url}?token=garbage"), None).await);
    let good = token("alice", &[], Duration::from_secs(60));
    let mut c = Client::connect(&format!("{url}?token={good}"), None)
        .await
        .unwrap();
    assert_eq!(c.next().await["type"], "welcome");
    assert!(
        s.metrics()
            .await
            .contains(r#"herald_rejects_total{gate="connect",code="unauthorized"} 7"#)
    );
}

/// Acceptance 2: welcome names the user and lists the auto-subscribed per-user channel.
#[tokio::test]
async fn welcome_lists_auto_subscriptions() {
    let s = TestServer::start().await;
    let c = s.client("alice").await;
    let w = &c.welcome;
    assert_eq!(w["user"], "alice");
    assert!(w["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(w["ping_interval_ms"], 25000);
    let subs = w["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{w}");
    assert_eq!(subs[0]["channel"], "notifications.user.alice");
    assert_eq!(subs[0]["offset"], 0);
    assert!(subs[0]["epoch"].as_str().is_some());
}

/// Acceptance 3: per-user isolation.
#[tokio::test]
async fn per_user_isolation() {
    let s = TestServer::start().await;
    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let mut bob = s.client("bob").await;
    let (status, body) = s
        .publish(
            "notifications.user.alice",
            json!({"type": "mention", "text": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for c in [&mut a1, &mut a2] {
        let p = c.next().await;
        assert_eq!(p["type"], "pub");
        assert_eq!(p["channel"], "notifications.user.alice");
        assert_eq!(p["offset"], 1);
        assert_eq!(p["data"]["text"], "hi");
    }
    assert!(bob.silent_for(Duration::from_millis(300)).await);
    let r = a1.subscribe("notifications.user.bob").await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "forbidden");
    // Nor can she get bob's events by any other road.
    s.publish("notifications.user.bob", json!({"type": "system"}))
        .await;
    assert_eq!(bob.next().await["channel"], "notifications.user.bob");
    assert!(a1.silent_for(Duration::from_millis(300)).await);
}

/// Acceptance 4: role scope.
#[tokio::test]
async fn role_scope() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    let mut root = s.client_with_roles("root", &["admin"]).await;
    let r = alice.subscribe("ops.alerts").await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = root.subscribe("ops.alerts").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["channel"], "ops.alerts");
    assert_eq!(r["recovered"], false);
    s.publish("ops.alerts", json!({"disk": "full"})).await;
    let p = root.next().await;
    assert_eq!(p["data"]["disk"], "full");
    assert!(alice.silent_for(Duration::from_millis(300)).await);
}

/// Acceptance 5: unknown and crafted names are refused everywhere.
#[tokio::test]
async fn crafted_names_are_refused() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    for name in [
        "notifications.user.alice.x",
        "notifications.user.",
        "notifications.user.{userId}",
        "*",
        ">",
        "",
        "notifications.user.alice\u{0}",
        "notifications.*.alice",
        "no.such.channel",
    ] {
        let r = alice.subscribe(name).await;
        assert_eq!(r["ok"], false, "{name:?}: {r}");
        assert_eq!(r["error"]["code"], "unknown_channel", "{name:?}: {r}");
        let (status, body) = s.publish(name, json!({"type": "system"})).await;
        assert_eq!(status, 404, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "unknown_channel");
    }
}

/// Acceptance 6: 20 subscribers × 50 publications, all in order with consecutive offsets.
#[tokio::test]
async fn fan_out_in_order() {
    let s = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = s.client(&format!("u{i}")).await;
        assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
        clients.push(c);
    }
    let publisher = async {
        for n in 1..=50 {
            let (status, _) = s
                .publish(
                    "blog.article.feed",
                    json!({"id": n.to_string(), "title": "t"}),
                )
                .await;
            assert_eq!(status, 200);
        }
    };
    let readers = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        let mut got = Vec::new();
        while got.len() < 50 {
            let p = c.next().await;
            assert_eq!(p["type"], "pub");
            got.push((p["offset"].as_u64().unwrap(), p["data"]["id"].clone()));
        }
        got
    }));
    let ((), results) = tokio::join!(publisher, readers);
    for got in results {
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
        let ids: Vec<String> = got
            .iter()
            .map(|(_, id)| id.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            (1..=50).map(|n: i32| n.to_string()).collect::<Vec<_>>()
        );
    }
    assert!(s.metrics().await.contains("herald_deliveries_total 1000"));
}

/// Acceptance 7: API errors and partial batches.
#[tokio::test]
async fn api_errors() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    assert_eq!(alice.subscribe("blog.article.feed").await["ok"], true);

    let (status, body) = s
        .publish("blog.article.feed", json!({"id": 7, "title": "x"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_payload");
    assert_eq!(body["error"]["pointer"], "/id");

    let (status, body) = s
        .publish(
            "blog.article.feed",
            json!({"id": "1", "title": "x", "extra": true}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = s.publish("nope.nope", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_channel"))
    );

    let http = reqwest::Client::new();
    let body = json!({"channel": "blog.article.feed", "data": {"id": "1", "title": "x"}});
    for auth in [
        None,
        Some("wrong-key"),
        Some("test-api-ke"),
        Some("test-api-keyy"),
    ] {
        let mut req = http.post(s.url("/v1/publish")).json(&body);
        if let Some(k) = auth {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{auth:?}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }

    let res = http
        .post(s.url("/v1/publish"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{\"channel\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");

    let big = "x".repeat(70 * 1024);
    let (status, body) = s
        .publish("blog.article.feed", json!({"id": "1", "title": big}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Nothing above reached the subscriber.
    assert!(alice.silent_for(Duration::from_millis(200)).await);

    let (status, body) = s
        .post(
            "/v1/publish/batch",
            json!({"publications": [
                {"channel": "blog.article.feed", "data": {"id": "a", "title": "one"}},
                {"channel": "blog.article.feed", "data": {"id": 2}},
                {"channel": "missing.channel", "data": {}},
                {"channel": "blog.article.feed"},
                {"channel": "blog.article.feed", "data": {"id": "b", "title": "two"}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["error"]["code"], "invalid_payload");
    assert_eq!(results[2]["error"]["code"], "unknown_channel");
    assert_eq!(results[3]["error"]["code"], "bad_request");
    assert_eq!(results[4]["offset"], 2);
    let first = alice.next().await;
    let second = alice.next().await;
    assert_eq!(
        (first["data"]["id"].as_str(), first["offset"].as_u64()),
        (Some("a"), Some(1))
    );
    assert_eq!(
        (second["data"]["id"].as_str(), second["offset"].as_u64()),
        (Some("b"), Some(2))
    );
}

/// Acceptance 8: client publish where `publish` allows it, schema-checked on every message.
#[tokio::test]
async fn client_publish_gate() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    assert_eq!(bob.subscribe("chat.room.1").await["ok"], true);

    let r = alice
        .request(json!({"type": "publish", "channel": "chat.room.1", "data": {"text": "hello"}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offset"], 1);
    let p = bob.next().await;
    assert_eq!(p["data"]["text"], "hello");

    // The second message breaks the schema: checked again, not only once.
    let r = alice
        .request(json!({"type": "publish", "channel": "chat.room.1", "data": {"text": 5}}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert_eq!(r["error"]["pointer"], "/text");
    let long = "x".repeat(2001);
    let r = alice
        .request(json!({"type": "publish", "channel": "chat.room.1", "data": {"text": long}}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");

    for channel in [
        "blog.article.feed",
        "notifications.user.alice",
        "ops.alerts",
    ] {
        let r = alice
            .request(json!({"type": "publish", "channel": channel, "data": {}}))
            .await;
        assert_eq!(r["error"]["code"], "forbidden", "{channel}: {r}");
    }
    assert!(bob.silent_for(Duration::from_millis(200)).await);
}

/// Acceptance 8 (rate): a flood of publications is answered with `rate_limited`.
#[tokio::test]
async fn client_publish_rate_limit() {
    let s = TestServer::with_config(&config_toml("[limits]\npublish_rate = 5")).await;
    let mut alice = s.client("alice").await;
    let mut limited = 0;
    for _ in 0..20 {
        let r = alice
            .request(json!({"type": "publish", "channel": "chat.room.1", "data": {"text": "x"}}))
            .await;
        if r["error"]["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 9, "{limited} of 20 rate limited (burst is 10)");
}

/// Acceptance 9: malformed frames get bad_request or 4400 and never disturb others.
#[tokio::test]
async fn malformed_frames() {
    let s = TestServer::start().await;
    let mut bystander = s.client("carol").await;
    assert_eq!(bystander.subscribe("blog.article.feed").await["ok"], true);

    let mut c = s.client("alice").await;
    c.send_text(r#"{"type":"subscribe","id":1}"#).await;
    let r = c.next().await;
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_str()),
        (Some(1), Some("bad_request"))
    );
    c.send_text(r#"{"type":"teleport","id":2}"#).await;
    assert_eq!(c.next().await["error"]["code"], "bad_request");
    c.send_text(r#"{"type":"subscribe","channel":5}"#).await;
    let e = c.next().await;
    assert_eq!(
        (e["type"].as_str(), e["error"]["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    c.send_text(r#"{"type":"ping","id":"x"}"#).await;
    assert_eq!(c.next().await["error"]["code"], "bad_request");
    // Still usable after all that.
    assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);

    // Unparseable: 4400.
    c.send_text("this is not json").await;
    let bye = c.goodbye(Duration::from_secs(5)).await;
    assert_eq!(bye.disconnect.unwrap()["code"], 4400);
    assert_eq!(u16::from(bye.close.unwrap().code), 4400);

    let mut c = s.client("alice").await;
    c.ws.send_binary(vec![0, 1, 2]).await;
    let bye = c.goodbye(Duration::from_secs(5)).await;
    assert_eq!(u16::from(bye.close.unwrap().code), 4400);

    // Oversize: 4009, and the node stays healthy.
    let mut c = s.client("alice").await;
    let huge = format!(
        r#"{{"type":"publish","channel":"chat.room.1","data":{{"text":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    c.send_text(&huge).await;
    let bye = c.goodbye(Duration::from_secs(5)).await;
    assert_eq!(u16::from(bye.close.unwrap().code), 4009);

    s.publish(
        "blog.article.feed",
        json!({"id": "1", "title": "still here"}),
    )
    .await;
    assert_eq!(bystander.next().await["data"]["title"], "still here");
    let health = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

trait SendBinary {
    async fn send_binary(&mut self, data: Vec<u8>);
}

impl SendBinary
    for tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
{
    async fn send_binary(&mut self, data: Vec<u8>) {
        use futures_util::SinkExt;
        self.send(tungstenite::Message::Binary(data.into()))
            .await
            .unwrap();
    }
}

/// A cleared cookie (`name=""`) before the real one does not hide it. Found by the `admission`
/// fuzz target: the quoted empty value was taken as an empty token, so the upgrade got 401.
#[tokio::test]
async fn a_quoted_empty_cookie_does_not_hide_the_real_one() {
    use futures_util::StreamExt;
    use tungstenite::client::IntoClientRequest;
    let toml = format!(
        "[auth]\nhs256_secret = \"{}\"\ncookie = \"herald_token\"\n[api]\nkey = \"{API_KEY}\"\n{}",
        common::SECRET,
        common::CHANNELS
    );
    let s = TestServer::with_config(&toml).await;
    let jwt = token("alice", &[], Duration::from_secs(60));
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("herald_token=\"\"; herald_token={jwt}")
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the real cookie is used");
    let welcome = ws.next().await.unwrap().unwrap();
    let welcome: Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    assert_eq!(welcome["user"], "alice", "{welcome}");
}

/// A client that breaks the WebSocket framing rules gets a close frame saying so (RFC 6455
/// §7.1.7: 1002, or 1007 for text that is not UTF-8), not a silent TCP close that its library
/// would report as 1006. Raw bytes, because no client library sends such frames; each case is
/// one Autobahn found answered by a bare TCP close (sections 2, 3, 4, 5, 6).
#[tokio::test]
async fn websocket_protocol_errors_get_a_close_frame() {
    let s = TestServer::start().await;
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("reserved bit RSV1 set", masked(0xC1, b"{}"), 1002),
        ("unknown data opcode 3", masked(0x83, b"x"), 1002),
        ("ping of 126 bytes", masked(0x89, &[b'p'; 126]), 1002),
        ("fragmented ping", masked(0x09, b"p"), 1002),
        (
            "continuation with nothing to continue",
            masked(0x80, b"x"),
            1002,
        ),
        (
            "text that is not UTF-8",
            masked(0x81, &[b'"', 0xFF, b'"']),
            1007,
        ),
    ];
    for (what, frame, code) in cases {
        let mut c = s.client("alice").await;
        let (closed, rest) = raw_exchange(&mut c, &frame).await;
        let close = closed.unwrap_or_else(|| panic!("{what}: no close frame, only {rest:?}"));
        assert_eq!(close, code, "{what}");
    }
    // The node is unharmed: a new connection still works.
    let mut c = s.client("alice").await;
    assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
}

/// A client frame (masked, as RFC 6455 §5.3 requires) with the given first byte.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= 126,
        "this helper writes 7-bit and 16-bit lengths only"
    );
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Writes `frame` on the client's TCP stream, then reads raw bytes until EOF (5 s at most).
/// Returns the code of the first close frame the server sent, and every byte received.
async fn raw_exchange(c: &mut Client, frame: &[u8]) -> (Option<u16>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::MaybeTlsStream;
    let MaybeTlsStream::Plain(tcp) = c.ws.get_mut() else {
        panic!("plain TCP expected");
    };
    tcp.write_all(frame).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    // Server frames are unmasked; skip any text frames (none expected) up to the close.
    let mut at = 0;
    while at + 2 <= got.len() {
        let (opcode, len) = (got[at] & 0x0F, usize::from(got[at + 1] & 0x7F));
        assert!(len < 126, "short frames only from the server here");
        if opcode == 0x8 && len >= 2 && at + 4 <= got.len() {
            return (Some(u16::from_be_bytes([got[at + 2], got[at + 3]])), got);
        }
        at += 2 + len;
    }
    (None, got)
}

/// Acceptance 10: a client that stops reading is closed with 4008 within the queue bound while
/// 100 others keep receiving every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_alone() {
    const QUEUE: usize = 64 * 1024;
    let s = TestServer::with_config(&config_toml(&format!(
        "[server]\ntcp_send_buffer = 8192\n[limits]\nmax_payload_bytes = 16384\noutbound_queue_bytes = {QUEUE}"
    )))
    .await;
    let mut healthy = Vec::new();
    for i in 0..100 {
        let mut c = s.client(&format!("h{i}")).await;
        assert_eq!(c.subscribe("bench.feed").await["ok"], true);
        healthy.push(c);
    }
    let mut slow =
        Client::connect_small_rcvbuf(s.addr, &token("slow", &[], Duration::from_secs(600))).await;
    assert_eq!(slow.subscribe("bench.feed").await["ok"], true);
    // From here on `slow` reads nothing until the end.

    const N: u64 = 400;
    let pad = "p".repeat(1000);
    // Lockstep: each batch of 10 is read by every healthy client before the next is published,
    // so a healthy reader is never more than 10 KB behind the 64 KiB limit however the machine
    // schedules it (the publisher is answered before the fan-out: without the lockstep a loaded
    // machine could let a healthy reader fall a queue behind); only `slow` overflows.
    for chunk in (1..=N).collect::<Vec<_>>().chunks(10) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"channel": "bench.feed", "data": {"n": n, "pad": pad}}))
            .collect();
        let (status, _) = s
            .post("/v1/publish/batch", json!({"publications": items}))
            .await;
        assert_eq!(status, 200);
        futures_util::future::join_all(healthy.iter_mut().map(|c| async move {
            for &expected in chunk {
                let p = c
                    .next_within(Duration::from_secs(20))
                    .await
                    .expect("healthy client starved");
                assert_eq!(p["offset"], expected);
            }
        }))
        .await;
    }

    let bye = slow.goodbye(Duration::from_secs(10)).await;
    let disconnect = bye.disconnect.expect("slow consumer is told why");
    assert_eq!(disconnect["code"], 4008);
    assert_eq!(disconnect["reconnect"], true);
    assert_eq!(u16::from(bye.close.expect("close frame").code), 4008);
    // It got a prefix of the stream, cut off well before the end: at most what fits in the
    // queue plus the kernel buffers.
    let got = bye.pubs.len() as u64;
    eprintln!("slow consumer received {got} of {N} before 4008");
    assert!(got < N, "slow consumer received {got} of {N}");
    for (i, p) in bye.pubs.iter().enumerate() {
        assert_eq!(p["offset"], i as u64 + 1);
    }
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("herald_slow_consumers_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_connections 100"), "{metrics}");
}

/// Limits: subscriptions per connection and connections per user.
#[tokio::test]
async fn connection_limits() {
    let s = TestServer::with_config(&config_toml(
        "[limits]\nmax_subscriptions = 3\nmax_connections_per_user = 2",
    ))
    .await;
    let mut a = s.client("alice").await; // 1 auto-subscription
    assert_eq!(a.subscribe("chat.room.1").await["ok"], true);
    assert_eq!(
        a.subscribe("chat.room.1").await["error"]["code"],
        "already_subscribed"
    );
    assert_eq!(a.subscribe("chat.room.2").await["ok"], true);
    assert_eq!(
        a.subscribe("chat.room.3").await["error"]["code"],
        "too_many_subscriptions"
    );
    let r = a
        .request(json!({"type": "unsubscribe", "channel": "chat.room.2"}))
        .await;
    assert_eq!(r["ok"], true);
    let r = a
        .request(json!({"type": "unsubscribe", "channel": "chat.room.2"}))
        .await;
    assert_eq!(r["error"]["code"], "not_subscribed");
    assert_eq!(a.subscribe("chat.room.3").await["ok"], true);

    let _b = s.client("alice").await;
    let t = token("alice", &[], Duration::from_secs(60));
    match Client::connect(&s.ws_url(), Some(&t)).await {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status().as_u16(), 429),
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("third connection of alice was accepted"),
    }
    drop(a);
    // The slot comes back once the connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Client::connect(&s.ws_url(), Some(&t)).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "slot was not released");
}

/// Server pings, and a silent client is closed; an app-level ping gets a pong.
#[tokio::test]
async fn ping_pong_and_silence_timeout() {
    let s = TestServer::with_config(&config_toml(
        // pong_timeout leaves a loaded machine a second to answer (a 200 ms window made the
        // answering client fail under a load average of 20).
        "[server]\nping_interval = \"200ms\"\npong_timeout = \"1s\"",
    ))
    .await;
    let t = token("alice", &[], Duration::from_secs(60));
    let mut c = Client::connect(&s.ws_url(), Some(&t)).await.unwrap();
    let _welcome = c.next().await;
    c.send_json(json!({"type": "ping"})).await;
    // Read raw frames: the harness would answer pings for us.
    let bye = c.goodbye(Duration::from_secs(5)).await;
    assert_eq!(bye.disconnect.expect("told why")["code"], 4408);

    // A client that answers pings stays.
    let mut c = s.client("bob").await;
    assert!(c.silent_for(Duration::from_millis(1200)).await);
    assert_eq!(c.request(json!({"type": "ping"})).await["ok"], true);
}

/// The OpenAPI document is served and names every route the router has.
#[tokio::test]
async fn openapi_matches_routes() {
    let s = TestServer::with_config(&config_toml(&common::admin_section())).await;
    let doc: Value = reqwest::get(s.url("/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/v1/publish", "post"),
        ("/v1/publish/batch", "post"),
        ("/v1/channels", "get"),
        ("/v1/channels/{channel}/history", "get"),
        ("/v1/channels/{channel}/presence", "get"),
        ("/v1/users/{user}/disconnect", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/ws", "get"),
        ("/v1/sse", "get"),
        ("/v1/sse/{session}", "post"),
        ("/admin/api/login", "post"),
        ("/admin/api/session", "get"),
        ("/admin/api/logout", "post"),
        ("/admin/api/ticket", "post"),
        ("/admin/api/overview", "get"),
        ("/admin/api/registry", "get"),
        ("/admin/api/channels/{channel}", "get"),
        ("/admin/api/channels/{channel}/history", "get"),
        ("/admin/api/channels/{channel}/publish", "post"),
        ("/admin/api/users", "get"),
        ("/admin/api/users/{user}", "get"),
        ("/admin/api/users/{user}/disconnect", "post"),
        ("/admin/api/connections/{client}/disconnect", "post"),
    ];
    assert_eq!(
        paths.len(),
        expected.len(),
        "documented paths: {:?}",
        paths.keys()
    );
    let http = reqwest::Client::new();
    for (path, method) in expected {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} undocumented"
        );
        // Every documented route exists: anything but the router's 404 fallback.
        let concrete = path
            .replace("{channel}", "chat.room.1")
            .replace("{user}", "nobody")
            .replace("{client}", "nobody-1");
        let req = match method {
            "post" => http.post(s.url(&concrete)).json(&json!({})),
            _ => http.get(s.url(&concrete)),
        };
        let res = req.bearer_auth(API_KEY).send().await.unwrap();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["error"]["message"], "no such endpoint",
            "{method} {path} is not routed"
        );
    }
    let res = http.get(s.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

/// Graceful shutdown in-process: readiness flips, clients are told to reconnect with 1001.
#[tokio::test]
async fn graceful_shutdown_tells_clients() {
    let mut s =
        TestServer::with_config(&config_toml("[server]\nshutdown_spread = \"100ms\"")).await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    s.shutdown();
    for c in [&mut a, &mut b] {
        let bye = c.goodbye(Duration::from_secs(5)).await;
        let d = bye.disconnect.expect("disconnect frame");
        assert_eq!(d["code"], 1001);
        assert_eq!(d["reconnect"], true);
        assert_eq!(u16::from(bye.close.unwrap().code), 1001);
    }
    tokio::time::timeout(Duration::from_secs(5), &mut s.done)
        .await
        .expect("server stops within the grace period")
        .unwrap();
}
