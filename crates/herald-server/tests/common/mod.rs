//! Shared harness for end-to-end tests: a real gateway on 127.0.0.1:0, real WebSocket clients
//! (tokio-tungstenite) and a real HTTP client (reqwest).

#![allow(dead_code)]

pub mod sio;
pub mod sse;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::Config;
use herald_core::identity::mint_hs256;
use herald_node::Node;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";

/// The registry every test uses unless it needs something else.
pub const CHANNELS: &str = r#"
[[channel]]
name = "blog.article.feed"
scope = "public"
history = { size = 100, ttl = "10m" }
schema = { type = "object", required = ["id", "title"], additionalProperties = false, properties = { id = { type = "string" }, title = { type = "string" } } }

[[channel]]
name = "notifications.user.{userId}"
scope = "user"
auto_subscribe = true
schema = { type = "object", required = ["type"], properties = { type = { enum = ["mention", "reply", "system"] }, text = { type = "string" } } }

[[channel]]
name = "chat.room.{roomId}"
scope = "authenticated"
publish = "authenticated"
presence = true
schema = { type = "object", required = ["text"], properties = { text = { type = "string", maxLength = 2000 } } }

[[channel]]
name = "ops.alerts"
scope = { role = "admin" }
schema = { type = "object" }

[[channel]]
name = "history.small"
scope = "public"
history = { size = 5, ttl = "10m" }
schema = { type = "object" }

[[channel]]
name = "bench.feed"
scope = "public"
schema = { type = "object" }
"#;

pub fn config_toml(extra: &str) -> String {
    config_with_auth("", extra)
}

/// Like [`config_toml`], with more keys in `[auth]` (one TOML table cannot be opened twice).
pub fn config_with_auth(auth: &str, extra: &str) -> String {
    format!(
        "[auth]\nhs256_secret = \"{SECRET}\"\n{auth}\n[api]\nkey = \"{API_KEY}\"\n{extra}\n{CHANNELS}"
    )
}

/// An `[admin]` section that turns the dashboard on (user `ops`, password [`ADMIN_PASSWORD`]);
/// the Argon2 hash is made once per test binary.
pub fn admin_section() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash =
        HASH.get_or_init(|| herald_server::admin::auth::hash_password(ADMIN_PASSWORD).unwrap());
    format!(
        "[admin]\nenabled = true\nuser = \"ops\"\npassword_hash = \"{hash}\"\nstats_interval = \"200ms\"\n"
    )
}

/// The password of [`admin_section`]'s operator.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Now as a NumericDate with its fraction (seconds since the Unix epoch).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An HS256 token (signed with [`SECRET`]) whose claims set is exactly `claims_json`, byte for
/// byte: fractions, strings where numbers belong, repeated names, whatever the test needs.
pub fn sign_raw_claims(claims_json: &str) -> String {
    let raw = serde_json::value::RawValue::from_string(claims_json.to_owned())
        .expect("the claims are JSON");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &raw,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub gw: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(&config_toml("")).await
    }

    pub async fn with_config(toml: &str) -> Self {
        let config = Config::from_toml_str(toml, Path::new(".")).expect("test config is valid");
        let gw = herald_server::build(config).expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(herald_server::serve(listener, gw.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            gw,
            stop: Some(tx),
            done,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Triggers graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn publish(&self, channel: &str, data: Value) -> (u16, Value) {
        self.post("/v1/publish", json!({ "channel": channel, "data": data }))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Connects with a token for `user` and reads the welcome.
    pub async fn client(&self, user: &str) -> Client {
        self.client_with_roles(user, &[]).await
    }

    pub async fn client_with_roles(&self, user: &str, roles: &[&str]) -> Client {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let token = mint_hs256(SECRET, user, &roles, "roles", Duration::from_secs(600)).unwrap();
        let mut c = Client::connect(&self.ws_url(), Some(&token)).await.unwrap();
        let welcome = c.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn token(user: &str, roles: &[&str], ttl: Duration) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    mint_hs256(SECRET, user, &roles, "roles", ttl).unwrap()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
}

/// What a client saw when the server closed it.
#[derive(Debug)]
pub struct Goodbye {
    pub disconnect: Option<Value>,
    pub close: Option<CloseFrame>,
    /// Publications received before the goodbye.
    pub pubs: Vec<Value>,
}

impl Client {
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
        })
    }

    /// Connects with extra request headers (cookies, `Origin`, …) and no token.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request().unwrap();
        for (name, value) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
        })
    }

    /// Connects over a socket with a tiny receive buffer (to stall quickly when not reading).
    pub async fn connect_small_rcvbuf(addr: SocketAddr, token: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
        };
        c.welcome = c.next().await;
        c
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::Text(t.into())).await.unwrap();
    }

    /// The next text frame as JSON (server pings are answered and skipped). Panics after 5 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("expected a frame within 5 s")
    }

    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if v["type"] == "ping" {
                        self.send_json(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Sends a request with a fresh id and returns its reply (skipping other frames, which
    /// are returned in `others`).
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = id.into();
        self.send_json(frame).await;
        loop {
            let v = self.next().await;
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(json!({"type": "subscribe", "channel": channel}))
            .await
    }

    /// Reads until the server closes: the `disconnect` frame, the close frame, and any
    /// publications before them.
    pub async fn goodbye(&mut self, limit: Duration) -> Goodbye {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Goodbye {
            disconnect: None,
            close: None,
            pubs: Vec::new(),
        };
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("disconnect") => out.disconnect = Some(v),
                        Some("pub") => out.pubs.push(v),
                        _ => {}
                    }
                }
                Ok(Message::Close(c)) => {
                    out.close = c;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }

    /// True when no frame arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        match self.next_within(d).await {
            None => true,
            Some(v) => {
                eprintln!("unexpected frame: {v}");
                false
            }
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics after 5 s.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
