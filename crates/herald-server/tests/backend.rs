//! The backend stays in charge: the subscribe proxy and signed backend requests, against a
//! real backend process (`tests/backend/backend.mjs`, Node builtins only) that verifies every
//! signature the way docs/backend.md tells a backend to. Also `[auth.subscription]`.
//!
//! What is checked: allow and deny (with the backend's reason) on every transport's gate 2;
//! the request body; the signature (by the Node backend, and again here in Rust as a Rust
//! backend would); failing closed (`unavailable`) when the backend is down, answers 500, answers
//! a malformed body, refuses our signature, or is slower than the timeout, while other clients
//! on the node are served meanwhile; and the decision cache with its counters in /metrics.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::sio::SioClient;
use common::{Client, TestServer, config_toml, config_with_auth, sign_raw_claims, token, unix_now};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BACKEND_SECRET: &str = "backend-secret";

/// The backend process, killed when dropped.
struct Backend {
    port: u16,
    _child: Child,
}

impl Backend {
    async fn start() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/backend/backend.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .arg(BACKEND_SECRET)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (the backend tests need Node.js, like the TypeScript tests)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the backend starts within 10 s")
            .unwrap()
            .expect("the backend prints its port");
        let port = line.strip_prefix("listening ").unwrap().parse().unwrap();
        Backend {
            port,
            _child: child,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request the backend received, oldest first.
    async fn requests(&self) -> Vec<Value> {
        reqwest::get(self.url("/requests"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A config with `[backend]`, a `[[proxy]]` per (name, path, extra keys) and a proxy-scoped
/// template channel `<name>.room.{roomId}` for each.
fn proxy_config(backend: &Backend, secret: &str, proxies: &[(&str, &str, &str)]) -> String {
    let mut extra = format!("[backend]\nsecret = \"{secret}\"\n");
    for (name, path, keys) in proxies {
        extra.push_str(&format!(
            "[[proxy]]\nname = \"{name}\"\nurl = \"{}\"\n{keys}\n\
             [[channel]]\nname = \"{name}.room.{{roomId}}\"\nscope = {{ proxy = \"{name}\" }}\n\
             presence = true\nschema = {{ type = \"object\" }}\n",
            backend.url(path)
        ));
    }
    config_toml(&extra)
}

/// Verifies a request's signature as a Rust backend would (the docs/backend.md snippet):
/// HMAC-SHA256 over "<timestamp>.<body>", compared in constant time, timestamp fresh.
fn verify_like_a_backend(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(ts) > 300 {
        return false;
    }
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn tok(user: &str) -> String {
    token(user, &[], Duration::from_secs(600))
}

#[tokio::test]
async fn subscribe_proxy_allows_denies_and_signs() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&proxy_config(
        &b,
        BACKEND_SECRET,
        &[("rooms", "/rooms", "")],
    ))
    .await;

    let mut alice = s.client("alice").await;
    let r = alice.subscribe("rooms.room.1").await;
    assert_eq!(r["ok"], true, "{r}");
    s.publish("rooms.room.1", json!({"n": 1})).await;
    let p = alice.next().await;
    assert_eq!(
        (p["type"].clone(), p["data"]["n"].clone()),
        (json!("pub"), json!(1))
    );

    let mut bob = s.client("bob").await;
    let r = bob.subscribe("rooms.room.1").await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    assert_eq!(r["error"]["message"], "bob is not invited to room 1", "{r}");

    // The same gate on Socket.IO and SSE.
    let mut carol = SioClient::connect(s.addr, json!({ "token": tok("carol") }))
        .await
        .unwrap();
    let r = carol
        .request(json!({"type": "subscribe", "channel": "rooms.room.1"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut dave = common::sse::SseClient::connect(&s.url(""), Some(&tok("dave")), "", None)
        .await
        .unwrap();
    let r = dave
        .request(json!({"type": "subscribe", "channel": "rooms.room.1"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    let seen = b.requests().await;
    assert_eq!(seen.len(), 4, "one backend call per subscribe: {seen:#?}");
    let transports: Vec<_> = seen
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["transport"].clone()
        })
        .collect();
    assert_eq!(
        transports,
        [
            json!("websocket"),
            json!("websocket"),
            json!("socketio"),
            json!("sse")
        ]
    );
    let first: Value = serde_json::from_str(seen[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"user": "alice", "roles": [], "channel": "rooms.room.1",
               "params": {"roomId": "1"}, "client": alice.welcome["client"],
               "transport": "websocket"})
    );
    for r in &seen {
        // The Node backend verified it (or it would have answered 401: unavailable)…
        assert_eq!(r["verified"], true, "{r}");
        // …and so does a Rust backend, and a changed byte does not verify.
        let (ts, sig) = (
            r["headers"]["herald-timestamp"].as_str().unwrap(),
            r["headers"]["herald-signature"].as_str().unwrap(),
        );
        let body = r["body"].as_str().unwrap().as_bytes();
        assert!(verify_like_a_backend(BACKEND_SECRET, ts, sig, body), "{r}");
        let mut tampered = body.to_vec();
        tampered[2] ^= 1;
        assert!(!verify_like_a_backend(BACKEND_SECRET, ts, sig, &tampered));
        assert!(!verify_like_a_backend("another-secret", ts, sig, body));
        let old = (ts.parse::<u64>().unwrap() - 3600).to_string();
        assert!(
            !verify_like_a_backend(BACKEND_SECRET, &old, sig, body),
            "a replayed timestamp"
        );
    }
}

#[tokio::test]
async fn backend_failures_fail_closed() {
    let b = Backend::start().await;
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{closed}/rooms");
    let config = proxy_config(
        &b,
        BACKEND_SECRET,
        &[("err", "/status500", ""), ("junk", "/malformed", "")],
    )
    .replace(
        "[backend]",
        &format!(
            "[[proxy]]\nname = \"down\"\nurl = \"{down}\"\n\
             [[channel]]\nname = \"down.room.{{roomId}}\"\nscope = {{ proxy = \"down\" }}\n\
             schema = {{ type = \"object\" }}\n[backend]"
        ),
    );
    let s = TestServer::with_config(&config).await;
    let mut c = s.client("alice").await;
    for channel in ["down.room.1", "err.room.1", "junk.room.1"] {
        let r = c.subscribe(channel).await;
        assert_eq!(r["error"]["code"], "unavailable", "{channel}: {r}");
        s.publish(channel, json!({"n": 1})).await;
    }
    assert!(
        c.silent_for(Duration::from_millis(300)).await,
        "nothing delivered from a refused channel"
    );
    // A gateway whose signature the backend refuses (another secret): 401, so unavailable.
    let s2 = TestServer::with_config(&proxy_config(
        &b,
        "wrong-secret",
        &[("rooms", "/rooms", "")],
    ))
    .await;
    let mut c2 = s2.client("alice").await;
    let r = c2.subscribe("rooms.room.1").await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("401"),
        "{r}"
    );
    let m = s.metrics().await;
    assert!(
        m.contains(r#"herald_proxy_requests_total{proxy="err",result="error"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn slow_backend_times_out_while_other_clients_are_served() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&proxy_config(
        &b,
        BACKEND_SECRET,
        &[("slow", "/slow", "timeout = \"600ms\"")],
    ))
    .await;
    let mut waiting = s.client("alice").await;
    let mut other = s.client("bob").await;
    assert_eq!(other.subscribe("blog.article.feed").await["ok"], true);

    let started = Instant::now();
    let asking = async {
        let r = waiting.subscribe("slow.room.1").await;
        (r, started.elapsed())
    };
    let meanwhile = async {
        // While alice's gate waits for the backend, bob subscribes and receives at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        assert_eq!(other.subscribe("history.small").await["ok"], true);
        s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
            .await;
        let p = other.next().await;
        assert_eq!(p["type"], "pub", "{p}");
        t.elapsed()
    };
    let ((r, waited), served) = tokio::join!(asking, meanwhile);
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_millis(1500),
        "refused after {waited:?} (timeout 600ms)"
    );
    assert!(
        served < Duration::from_millis(300),
        "bob waited {served:?} for alice's backend call"
    );
    assert!(served + Duration::from_millis(100) < waited);
}

#[tokio::test]
async fn decisions_are_cached_per_user_and_channel() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&proxy_config(
        &b,
        BACKEND_SECRET,
        &[("rooms", "/rooms", "cache_ttl = \"1m\"")],
    ))
    .await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    for _ in 0..2 {
        assert_eq!(alice.subscribe("rooms.room.1").await["ok"], true);
        let r = alice
            .request(json!({"type": "unsubscribe", "channel": "rooms.room.1"}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        let r = bob.subscribe("rooms.room.1").await;
        assert_eq!(r["error"]["message"], "bob is not invited to room 1", "{r}");
    }
    // Another channel is another decision.
    assert_eq!(alice.subscribe("rooms.room.open").await["ok"], true);
    let seen = b.requests().await;
    assert_eq!(seen.len(), 3, "alice/1, bob/1, alice/open: {seen:#?}");
    let m = s.metrics().await;
    assert!(
        m.contains(r#"herald_proxy_cache_hits_total{proxy="rooms"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"herald_proxy_requests_total{proxy="rooms",result="allow"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"herald_proxy_requests_total{proxy="rooms",result="deny"} 1"#),
        "{m}"
    );
}

/// `[auth.subscription]`: subscription tokens are verified with that key, not the connection's.
#[tokio::test]
async fn subscription_tokens_with_a_key_of_their_own() {
    let s = TestServer::with_config(&config_with_auth(
        "[auth.subscription]\nhs256_secret = \"subscription-secret\"",
        "[[channel]]\nname = \"private.room.{roomId}\"\nscope = \"token\"\nschema = { type = \"object\" }",
    ))
    .await;
    let mut c: Client = s.client("alice").await;
    let exp = unix_now() as u64 + 600;
    let claims = json!({"sub": "alice", "channel": "private.room.1", "exp": exp});
    // Signed with the connection secret: not good enough here.
    let with_connection_key = sign_raw_claims(&claims.to_string());
    let r = c
        .request(
            json!({"type": "subscribe", "channel": "private.room.1", "token": with_connection_key}),
        )
        .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let with_subscription_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"subscription-secret"),
    )
    .unwrap();
    let r = c
        .request(json!({"type": "subscribe", "channel": "private.room.1", "token": with_subscription_key}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

/// The HTTP status a refused upgrade got, and its JSON body.
fn refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, Value) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => (
            r.status().as_u16(),
            serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap_or(Value::Null),
        ),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// `[auth] connect_proxy`: a connection without a token is authenticated by the backend from
/// its cookies and the proxy's chosen headers; refused with 401 before the upgrade when the
/// backend says no, 503 when it cannot answer, 403 for a cross-origin cookie; the backend's
/// `expires_at` ends the session like a token's `exp`; tokens still work beside it.
#[tokio::test]
async fn connect_proxy_authenticates_by_cookie() {
    let b = Backend::start().await;
    let proxy = |url: String| {
        config_with_auth(
            "connect_proxy = \"sessions\"",
            &format!(
                "[backend]\nsecret = \"{BACKEND_SECRET}\"\n\
                 [[proxy]]\nname = \"sessions\"\nurl = \"{url}\"\nheaders = [\"X-Tenant\"]\n\
                 [[channel]]\nname = \"tenant.acme\"\nscope = {{ role = \"tenant:acme\" }}\n\
                 schema = {{ type = \"object\" }}\n"
            ),
        )
    };
    let s = TestServer::with_config(&proxy(b.url("/connect"))).await;
    let cookie = ("cookie", "theme=dark; session=s3cret-alice");

    let mut alice = Client::connect_with_headers(
        &s.ws_url(),
        &[cookie, ("x-tenant", "acme"), ("x-other", "not forwarded")],
    )
    .await
    .unwrap();
    let welcome = alice.next().await;
    assert_eq!(welcome["user"], "alice", "{welcome}");
    assert_eq!(
        welcome["subscriptions"][0]["channel"],
        "notifications.user.alice"
    );
    // The roles the backend answered are the identity's (from the forwarded header here).
    assert_eq!(alice.subscribe("tenant.acme").await["ok"], true);
    let seen = b.requests().await;
    let body: Value = serde_json::from_str(seen[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"cookies": {"theme": "dark", "session": "s3cret-alice"},
               "headers": {"x-tenant": "acme"}})
    );
    assert_eq!(seen[0]["verified"], true);

    // Refused by the backend: 401 before the upgrade, with its reason.
    let e = Client::connect_with_headers(&s.ws_url(), &[("cookie", "session=forged")])
        .await
        .err()
        .expect("refused");
    let (status, body) = refusal(e);
    assert_eq!(
        (status, body["error"]["message"].clone()),
        (401, json!("no valid session"))
    );
    // A cookie is CSRF-checked: another site's page cannot use it.
    let e =
        Client::connect_with_headers(&s.ws_url(), &[cookie, ("origin", "https://evil.example")])
            .await
            .err()
            .expect("refused");
    assert_eq!(refusal(e).0, 403);
    // A token is verified as before, without the backend.
    let before = b.requests().await.len();
    let carol = s.client("carol").await;
    assert_eq!(carol.welcome["user"], "carol");
    assert_eq!(b.requests().await.len(), before);

    // The backend's expires_at ends the session like a token's exp (4001).
    let mut bob = Client::connect_with_headers(&s.ws_url(), &[("cookie", "session=short-bob")])
        .await
        .unwrap();
    assert_eq!(bob.next().await["user"], "bob");
    let g = bob.goodbye(Duration::from_secs(5)).await;
    assert_eq!(g.disconnect.expect("a disconnect frame")["code"], 4001);

    // Socket.IO: the same gate at CONNECT (the cookie of the upgrade request), and its
    // refusal as a CONNECT_ERROR.
    let mut sio = SioClient::connect_with_headers(s.addr, &[cookie], json!({}))
        .await
        .expect("admitted by the backend");
    let r = sio
        .request(json!({"type": "subscribe", "channel": "tenant.acme"}))
        .await;
    assert_eq!(
        r["error"]["code"], "forbidden",
        "no x-tenant header this time: {r}"
    );
    let r = sio
        .request(json!({"type": "subscribe", "channel": "notifications.user.alice"}))
        .await;
    assert_eq!(
        r["error"]["code"], "already_subscribed",
        "alice's own channel: {r}"
    );
    match SioClient::connect_with_headers(s.addr, &[("cookie", "session=forged")], json!({})).await
    {
        Err(common::sio::Refused::ConnectError(e)) => {
            assert_eq!(e["data"]["code"], "unauthorized", "{e}")
        }
        Err(other) => panic!("expected CONNECT_ERROR, got {other:?}"),
        Ok(_) => panic!("a forged session was admitted"),
    }

    // The backend unreachable: 503, fail closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s2 = TestServer::with_config(&proxy(format!("http://127.0.0.1:{closed}/connect"))).await;
    let e = Client::connect_with_headers(&s2.ws_url(), &[cookie])
        .await
        .err()
        .expect("refused");
    let (status, body) = refusal(e);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("unavailable"))
    );
}

/// The config of the publish proxy and rpc tests.
fn publish_and_rpc_config(b: &Backend) -> String {
    config_toml(&format!(
        r#"[backend]
secret = "{BACKEND_SECRET}"

[[proxy]]
name = "chat"
url = "{chat}"

[[proxy]]
name = "app"
url = "{rpc}"
timeout = "600ms"

[[rpc]]
method = "room.invite"
proxy = "app"
request = {{ type = "object", required = ["room", "user"], properties = {{ room = {{ type = "string" }}, user = {{ type = "string" }} }} }}
response = {{ type = "object", required = ["invited"], properties = {{ invited = {{ type = "string" }} }} }}

[[rpc]]
method = "bad.answer"
proxy = "app"
request = {{ type = "object" }}
response = {{ type = "object", required = ["invited"], properties = {{ invited = {{ type = "string" }} }} }}

[[rpc]]
method = "slow.op"
proxy = "app"
request = {{ type = "object" }}
response = {{ type = "object" }}

[[channel]]
name = "moderated.room.{{roomId}}"
scope = "authenticated"
publish = {{ proxy = "chat" }}
schema = {{ type = "object", required = ["text"], additionalProperties = false, properties = {{ text = {{ type = "string" }}, author = {{ type = "string" }} }} }}
"#,
        chat = b.url("/publish"),
        rpc = b.url("/rpc"),
    ))
}

/// `publish = { proxy }`: the backend refuses (with its reason), accepts as sent, or replaces
/// the data (here with a server-set author); a replacement that breaks the schema is refused
/// and nothing is published; a payload that breaks the schema never reaches the backend.
#[tokio::test]
async fn publish_proxy_refuses_and_rewrites() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&publish_and_rpc_config(&b)).await;
    let mut alice = s.client("alice").await;
    let mut reader = s.client("reader").await;
    assert_eq!(reader.subscribe("moderated.room.1").await["ok"], true);
    let publish = |text: Value| json!({"type": "publish", "channel": "moderated.room.1", "data": {"text": text}});

    let r = alice.request(publish(json!("buy spam now"))).await;
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["message"].clone()),
        (json!("forbidden"), json!("no spam")),
        "{r}"
    );
    let r = alice.request(publish(json!("break"))).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("publish proxy"),
        "{r}"
    );
    let before = b.requests().await.len();
    let r = alice.request(publish(json!(5))).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert_eq!(
        b.requests().await.len(),
        before,
        "an invalid payload is not sent to the backend"
    );

    let r = alice.request(publish(json!("hello"))).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = alice.request(publish(json!("as-is"))).await;
    assert_eq!(r["ok"], true, "{r}");
    let p = reader.next().await;
    assert_eq!(
        p["data"],
        json!({"text": "hello", "author": "alice"}),
        "rewritten: {p}"
    );
    assert_eq!(p["from"]["user"], "alice");
    let p = reader.next().await;
    assert_eq!(p["data"], json!({"text": "as-is"}), "{p}");
    assert!(
        reader.silent_for(Duration::from_millis(200)).await,
        "refused ones were not published"
    );
    let seen = b.requests().await;
    let body: Value = serde_json::from_str(seen[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"], json!({"text": "buy spam now"}));
    assert_eq!(
        (body["user"].clone(), body["channel"].clone()),
        (json!("alice"), json!("moderated.room.1"))
    );
}

/// `rpc`: the backend's answer in the reply (nothing published), its error as `rpc_error`,
/// a request that breaks the method's schema refused before the backend, an answer that breaks
/// the response schema and a slow backend (600ms timeout) as `unavailable`; an unknown method
/// is `not_found`. Also through Socket.IO.
#[tokio::test]
async fn rpc_answers_errors_and_timeouts() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&publish_and_rpc_config(&b)).await;
    let mut c = s.client("alice").await;
    let rpc = |method: &str, data: Value| json!({"type": "rpc", "method": method, "data": data});

    let r = c
        .request(rpc("room.invite", json!({"room": "1", "user": "bob"})))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["data"],
        json!({"invited": "bob", "room": "1", "by": "alice"})
    );
    let r = c
        .request(rpc("room.invite", json!({"room": "1", "user": "mallory"})))
        .await;
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["message"].clone()),
        (json!("rpc_error"), json!("mallory is banned")),
        "{r}"
    );
    let before = b.requests().await.len();
    let r = c.request(rpc("room.invite", json!({"room": 1}))).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    let r = c.request(rpc("no.such", json!({}))).await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    assert_eq!(
        b.requests().await.len(),
        before,
        "refused calls never reach the backend"
    );
    let r = c.request(rpc("bad.answer", json!({}))).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    let t = Instant::now();
    let r = c.request(rpc("slow.op", json!({}))).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        t.elapsed() >= Duration::from_millis(550) && t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    let mut sio = SioClient::connect(s.addr, json!({ "token": tok("carol") }))
        .await
        .unwrap();
    let r = sio
        .request(
            json!({"type": "rpc", "method": "room.invite", "data": {"room": "2", "user": "dan"}}),
        )
        .await;
    assert_eq!(
        r["data"],
        json!({"invited": "dan", "room": "2", "by": "carol"}),
        "{r}"
    );
}

/// A config with one `[[webhook]]` (its extra keys after the URL).
fn webhook_config(url: &str, keys: &str) -> String {
    config_toml(&format!(
        "[backend]\nsecret = \"{BACKEND_SECRET}\"\n[[webhook]]\nurl = \"{url}\"\n{keys}\n"
    ))
}

/// The events of every request the backend received on `path`, in order.
async fn hook_events(b: &Backend, path: &str) -> Vec<Value> {
    b.requests()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .flat_map(|r| {
            assert_eq!(r["verified"], true, "signed: {r}");
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            body["events"].as_array().unwrap().clone()
        })
        .collect()
}

/// Connection, occupancy and presence events reach the webhook, signed, in order, batched.
#[tokio::test]
async fn webhooks_are_delivered_signed_and_batched() {
    let b = Backend::start().await;
    let s =
        TestServer::with_config(&webhook_config(&b.url("/hooks"), "batch_wait = \"100ms\"")).await;
    let mut alice = s.client("alice").await;
    let client = alice.welcome["client"].clone();
    assert_eq!(alice.subscribe("chat.room.1").await["ok"], true);
    let r = alice
        .request(json!({"type": "unsubscribe", "channel": "chat.room.1"}))
        .await;
    assert_eq!(r["ok"], true);
    drop(alice);
    let mut events = Vec::new();
    for _ in 0..50 {
        events = hook_events(&b, "/hooks").await;
        if events.iter().any(|e| e["type"] == "client_disconnect") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mine: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e["channel"].is_null() || e["channel"] == "chat.room.1")
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["channel"].clone()))
        .collect();
    let room = json!("chat.room.1");
    assert_eq!(
        mine,
        [
            ("client_connect".to_owned(), Value::Null),
            ("channel_occupied".to_owned(), room.clone()),
            ("presence_join".to_owned(), room.clone()),
            ("presence_leave".to_owned(), room.clone()),
            ("channel_vacated".to_owned(), room.clone()),
            ("client_disconnect".to_owned(), Value::Null),
        ],
        "{events:#?}"
    );
    let connect = &events[0];
    assert_eq!(
        (
            connect["client"].clone(),
            connect["user"].clone(),
            connect["transport"].clone()
        ),
        (client, json!("alice"), json!("websocket"))
    );
    assert!(connect["id"].is_string() && connect["at"].as_u64().unwrap() > 1_700_000_000_000);
    // The auto-subscription's occupancy too (notifications.user.alice), and fewer requests
    // than events: they are batched.
    assert!(events.len() >= 8, "{events:#?}");
    let requests = b
        .requests()
        .await
        .iter()
        .filter(|r| r["path"] == "/hooks")
        .count();
    assert!(
        requests < events.len(),
        "{requests} requests for {} events",
        events.len()
    );
}

/// A batch the endpoint answers with 500 is retried (the same events) until it is taken.
#[tokio::test]
async fn webhooks_are_retried_after_a_500() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&webhook_config(
        &b.url("/flaky"),
        "events = [\"client_connect\"]\nbatch_wait = \"10ms\"",
    ))
    .await;
    let _alice = s.client("alice").await;
    let mut bodies = Vec::new();
    for _ in 0..50 {
        bodies = b
            .requests()
            .await
            .into_iter()
            .filter(|r| r["path"] == "/flaky")
            .map(|r| r["body"].as_str().unwrap().to_owned())
            .collect();
        if bodies.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bodies.len(), 3, "two 500s, then accepted");
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same batch each time"
    );
    let m = s.metrics().await;
    assert!(
        m.contains(r#"herald_webhook_requests_total{webhook="0",result="error"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"herald_webhook_requests_total{webhook="0",result="ok"} 1"#),
        "{m}"
    );
}

/// An endpoint that is down holds at most `queue_size` events (plus the batch being retried);
/// the rest are dropped and counted in /metrics, and sessions are not slowed by it.
#[tokio::test]
async fn webhook_queue_is_bounded() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = TestServer::with_config(&webhook_config(
        &format!("http://127.0.0.1:{closed}/hooks"),
        "events = [\"client_connect\"]\nqueue_size = 3\nbatch_size = 1\nmax_attempts = 1000",
    ))
    .await;
    let started = Instant::now();
    for i in 0..8 {
        let _c = s.client(&format!("u{i}")).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "connects were not held up"
    );
    let m = s.metrics().await;
    let dropped: u64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"herald_webhook_dropped_total{webhook="0",reason="queue_full"} "#)
        })
        .expect("drops are counted")
        .parse()
        .unwrap();
    // 8 events: one in the retried batch, three queued, the rest dropped (or one more if the
    // queue filled before the task took the first).
    assert!((4..=5).contains(&dropped), "dropped {dropped}\n{m}");
}

/// The subscribe proxy's `info` is shown with the member in presence: the presence reply and
/// the `join` other members receive.
#[tokio::test]
async fn proxy_info_is_shown_in_presence() {
    let b = Backend::start().await;
    let s = TestServer::with_config(&proxy_config(
        &b,
        BACKEND_SECRET,
        &[("rooms", "/rooms", "")],
    ))
    .await;
    let mut alice = s.client("alice").await;
    assert_eq!(alice.subscribe("rooms.room.open").await["ok"], true);
    let mut bob = s.client("bob").await;
    assert_eq!(bob.subscribe("rooms.room.open").await["ok"], true);
    let join = loop {
        let v = alice.next().await;
        if v["type"] == "join" && v["user"] == "bob" {
            break v;
        }
    };
    assert_eq!(join["info"], json!({"role": "guest"}), "{join}");
    let r = bob
        .request(json!({"type": "presence", "channel": "rooms.room.open"}))
        .await;
    let clients = r["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{r}");
    assert!(
        clients
            .iter()
            .all(|c| c["info"] == json!({"role": "guest"})),
        "{r}"
    );
}
