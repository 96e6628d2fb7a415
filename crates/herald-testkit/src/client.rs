//! Talking to a running gateway the way users do: a protocol v1 WebSocket client and the
//! server API over HTTP. Both speak JSON values, so a test asserts on what a user would see.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A protocol v1 client over a real WebSocket. Server pings are answered and never returned.
#[derive(Debug)]
pub struct WsClient {
    /// The socket, for tests that need raw frames.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `welcome` frame, once read by [`WsClient::connect`].
    pub welcome: Value,
    next_id: u64,
}

/// What a client saw when the server closed it.
#[derive(Debug, Default)]
pub struct Closed {
    /// The `disconnect` frame, if one came.
    pub disconnect: Option<Value>,
    /// The close frame, if one came.
    pub close: Option<CloseFrame>,
    /// Publications received before the goodbye.
    pub pubs: Vec<Value>,
}

impl WsClient {
    /// Opens `url` (`ws://…/v1/ws`) with `Authorization: Bearer <token>` and reads the
    /// `welcome`; panics when the upgrade is refused or no welcome comes.
    pub async fn connect(url: &str, token: Option<&str>) -> WsClient {
        let mut c = Self::open(url, token)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade at {url} refused: {e}"));
        let welcome = c.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }

    /// Opens the socket without reading anything (to test refusals and the welcome itself).
    pub async fn open(url: &str, token: Option<&str>) -> Result<WsClient, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .expect("a token is a valid header"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient {
            ws,
            welcome: Value::Null,
            next_id: 1,
        })
    }

    /// Sends one JSON frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("the socket is open");
    }

    /// The next frame as JSON; panics after 10 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    /// The next frame within `limit`, or `None` on timeout or close.
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
                        self.send_json(&json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// True when no frame arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        self.next_within(d).await.is_none()
    }

    /// Sends `frame` with a fresh `id` and returns the `reply` carrying it (other frames
    /// read meanwhile are dropped).
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = id.into();
        self.send_json(&frame).await;
        loop {
            let v = self.next().await;
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    /// Subscribes to `channel`, with `since` (`{"offset","epoch"}`) to recover.
    pub async fn subscribe(&mut self, channel: &str, since: Option<Value>) -> Value {
        let mut f = json!({"type": "subscribe", "channel": channel});
        if let Some(s) = since {
            f["since"] = s;
        }
        self.request(f).await
    }

    /// Reads until the server closes (or `limit`): the `disconnect` frame, the close frame
    /// and any publications before them.
    pub async fn closed(&mut self, limit: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Closed::default();
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
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
}

/// The server API of one gateway, authenticated with its API key.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    /// `base` is `http://host:port`.
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Api {
        Api {
            base: base.into().trim_end_matches('/').to_owned(),
            key: key.into(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /v1/publish`: the status and the JSON body (`Null` when the body is not JSON).
    pub async fn publish(&self, channel: &str, data: Value) -> (u16, Value) {
        self.post("/v1/publish", json!({"channel": channel, "data": data}))
            .await
    }

    /// `POST <path>` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `GET <path>`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, and returns that; panics naming `what`
/// after `within`. Replaces the hand-written wait loops tests kept repeating.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
