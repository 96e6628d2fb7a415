//! Several real `herald` processes sharing one real `redis-server` (started by the test on a
//! free port, killed and restarted to prove the gateway survives it).

use std::io::{BufRead, BufReader};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::identity::mint_hs256;
use herald_testkit::RedisServer;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
const SECRET: &str = "redis-test-secret";
const KEY: &str = "redis-test-key";

fn config(redis_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
hs256_secret = "{SECRET}"
[api]
key = "{KEY}"
[broker]
kind = "redis"
url = "{redis_url}"
presence_ttl = "2s"

[[channel]]
name = "blog.article.feed"
scope = "public"
history = {{ size = 100, ttl = "10m" }}
schema = {{ type = "object" }}

[[channel]]
name = "notifications.user.{{userId}}"
scope = "user"
auto_subscribe = true
history = {{ size = 100, ttl = "10m" }}
schema = {{ type = "object" }}

[[channel]]
name = "chat.room.{{roomId}}"
scope = "authenticated"
presence = true
schema = {{ type = "object" }}
"#
    )
}

struct Node {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(redis: &RedisServer) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herald.toml"), config(&redis.url())).unwrap();
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir.path())
            .env_remove("HERALD_CONFIG")
            .env("HERALD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("herald listening on ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .to_owned();
        Node {
            child,
            url,
            _dir: dir,
        }
    }

    async fn publish(&self, channel: &str, data: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/publish", self.url))
            .bearer_auth(KEY)
            .json(&json!({"channel": channel, "data": data}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn client(&self, user: &str) -> Client {
        let token = mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(600)).unwrap();
        let mut req = format!("{}/v1/ws", self.url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut c = Client {
            ws,
            next_id: 1,
            welcome: Value::Null,
        };
        c.welcome = c.next().await;
        assert_eq!(c.welcome["type"], "welcome");
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    welcome: Value,
}

impl Client {
    async fn next_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            if let Ok(Message::Text(t)) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "ping" {
                    return Some(v);
                }
            }
        }
    }

    async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    async fn request(&mut self, mut frame: Value) -> Value {
        frame["id"] = self.next_id.into();
        self.next_id += 1;
        let id = frame["id"].clone();
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        loop {
            let v = self.next().await;
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, since: Option<Value>) -> Value {
        let mut f = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = since {
            f["since"] = s;
        }
        self.request(f).await
    }
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
}

/// Acceptance 1: publish through node A; subscribers on A and B get it with the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_node_with_global_offsets() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    let mut on_a = a.client("u1").await;
    let mut on_b = b.client("u2").await;
    assert_eq!(on_a.subscribe("blog.article.feed", None).await["ok"], true);
    assert_eq!(on_b.subscribe("blog.article.feed", None).await["ok"], true);
    for n in 0..10 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (status, body) = node.publish("blog.article.feed", json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], n + 1);
    }
    for c in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(c.next().await);
        }
        assert_eq!(offsets(&got), (1..=10).collect::<Vec<_>>());
        assert_eq!(got[3]["data"]["n"], 3);
    }
}

/// Acceptance 2: per-user events reach alice on both nodes and never bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_channels_span_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    let mut alice_a = a.client("alice").await;
    let mut alice_b = b.client("alice").await;
    let mut bob_b = b.client("bob").await;
    let (status, _) = a
        .publish("notifications.user.alice", json!({"text": "hi"}))
        .await;
    assert_eq!(status, 200);
    for c in [&mut alice_a, &mut alice_b] {
        let p = c.next().await;
        assert_eq!(
            (p["channel"].as_str(), p["offset"].as_u64()),
            (Some("notifications.user.alice"), Some(1))
        );
    }
    assert!(
        bob_b
            .next_within(Duration::from_millis(500))
            .await
            .is_none()
    );
}

/// Acceptance 3: away from node A, back on node B with `since`: exactly the missed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_on_another_node() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis), Node::start(&redis));
    a.publish("blog.article.feed", json!({"n": 0})).await;
    let mut c = a.client("carol").await;
    let r = c.subscribe("blog.article.feed", None).await;
    let since = json!({"offset": r["offset"], "epoch": r["epoch"]});
    assert_eq!(r["offset"], 1);
    drop(c);
    for n in 1..=5 {
        b.publish("blog.article.feed", json!({"n": n})).await;
    }
    let mut c = b.client("carol").await;
    let r = c.subscribe("blog.article.feed", Some(since)).await;
    assert_eq!(r["recovered"], true, "{r}");
    let pubs = r["publications"].as_array().unwrap();
    assert_eq!(offsets(pubs), vec![2, 3, 4, 5, 6]);
    assert_eq!(pubs[0]["data"]["n"], 1);
    a.publish("blog.article.feed", json!({"n": 6})).await;
    assert_eq!(c.next().await["offset"], 7);
}

/// Acceptance 4: Redis dies: clients stay, not ready, publish 503. Redis returns (empty):
/// ready again without a gateway restart, delivery resumes, and the old epoch is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis);
    let mut c = a.client("dave").await;
    let r = c.subscribe("blog.article.feed", None).await;
    a.publish("blog.article.feed", json!({"n": 1})).await;
    assert_eq!(c.next().await["offset"], 1);
    let before = json!({"offset": 1, "epoch": r["epoch"]});

    redis.kill();
    let (status, body) = a.publish("blog.article.feed", json!({"n": 2})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let mut not_ready = false;
    for _ in 0..50 {
        if a.get("/readyz").await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "/readyz must report the outage");
    // Still connected and answering.
    assert_eq!(c.request(json!({"type": "ping"})).await["ok"], true);

    redis.restart();
    let mut ready = false;
    for _ in 0..100 {
        if a.get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again within 10 s of Redis returning");
    // The node noticed the stream it delivered from is gone: the subscriber must recover.
    let notice = c.next().await;
    assert_eq!(notice["type"], "unsubscribed", "{notice}");
    assert_eq!(notice["reason"], "resubscribe");
    let r = c.subscribe("blog.article.feed", Some(before)).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_ne!(r["epoch"], json!(null));
    let (status, body) = a.publish("blog.article.feed", json!({"n": 3})).await;
    assert_eq!(status, 200, "{body}");
    let p = c.next().await;
    assert_eq!(
        (p["type"].as_str(), p["offset"].as_u64()),
        (Some("pub"), Some(1))
    );
    assert_eq!(p["data"]["n"], 3);
}

/// Acceptance 5: presence of a killed node's clients disappears within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_dead_node_expires() {
    let redis = RedisServer::start();
    let a = Node::start(&redis);
    let mut b = Node::start(&redis);
    let mut on_a = a.client("erin").await;
    let mut on_b = b.client("frank").await;
    assert_eq!(on_a.subscribe("chat.room.1", None).await["ok"], true);
    assert_eq!(on_b.subscribe("chat.room.1", None).await["ok"], true);
    let join = on_a.next().await;
    assert_eq!(
        (join["type"].as_str(), join["user"].as_str()),
        (Some("join"), Some("frank"))
    );
    let (_, p) = a.get("/v1/channels/chat.room.1/presence").await;
    assert_eq!(p["clients"].as_array().unwrap().len(), 2, "{p}");

    b.kill(); // SIGKILL: no leave is ever sent
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, p) = a.get("/v1/channels/chat.room.1/presence").await;
    assert_eq!(
        p["clients"].as_array().unwrap().len(),
        2,
        "entries live until their TTL"
    );
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, p) = a.get("/v1/channels/chat.room.1/presence").await;
        let users: Vec<&str> = p["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["user"].as_str())
            .collect();
        if users == ["erin"] {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "frank's presence must expire within presence_ttl (2 s)"
    );
    // The live node keeps its own entry alive past the TTL.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, p) = a.get("/v1/channels/chat.room.1/presence").await;
    assert_eq!(p["clients"][0]["user"], "erin");
}
