//! A Socket.IO v4 test client over the Engine.IO `websocket` transport, written from the
//! protocol documents (not Herald's code), and a raw polling helper. It reads what a
//! `socket.io-client` would see and translates it back into protocol v1 frames, so the
//! transport conformance suite can drive Socket.IO like the other transports:
//! a publication event becomes `{"type":"pub","channel","offset","data","from"}`, the
//! `herald:*` events are their v1 frames, an ack is the v1 reply it carries, and a
//! server DISCONNECT becomes `{"type":"sio_disconnect"}`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connected Socket.IO client (namespace `/`).
pub struct SioClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The Engine.IO open packet's data.
    pub open: Value,
    /// The CONNECT reply's data (`sid`, `pid`).
    pub connect: Value,
    /// The last recovery cursor received (the last argument of a publication).
    pub offset: Option<String>,
    next_ack: u64,
    queued: VecDeque<Value>,
    /// The WebSocket closed (or broke).
    pub closed: bool,
}

/// What a CONNECT got instead of a session.
#[derive(Debug)]
pub enum Refused {
    /// CONNECT_ERROR with its data.
    ConnectError(Value),
    /// The connection closed or broke first.
    Closed(String),
}

/// The `/socket.io/` WebSocket URL.
pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
}

impl SioClient {
    /// Opens the engine and sends CONNECT with `auth`; `Err` carries the CONNECT_ERROR.
    pub async fn connect(addr: SocketAddr, auth: Value) -> Result<Self, Refused> {
        let (ws, _) = tokio_tungstenite::connect_async(url(addr))
            .await
            .map_err(|e| Refused::Closed(e.to_string()))?;
        Self::handshake(ws, auth).await
    }

    /// [`SioClient::connect`] with extra headers on the upgrade request (cookies, …).
    pub async fn connect_with_headers(
        addr: SocketAddr,
        headers: &[(&str, &str)],
        auth: Value,
    ) -> Result<Self, Refused> {
        let mut req = url(addr).into_client_request().unwrap();
        for (name, value) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| Refused::Closed(e.to_string()))?;
        Self::handshake(ws, auth).await
    }

    /// [`SioClient::connect`] over a socket with a 4 KiB receive buffer (a slow reader).
    pub async fn connect_small_rcvbuf(addr: SocketAddr, auth: Value) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let req = url(addr).into_client_request().unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Self::handshake(ws, auth).await.expect("connects")
    }

    async fn handshake(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        auth: Value,
    ) -> Result<Self, Refused> {
        let mut c = SioClient {
            ws,
            open: Value::Null,
            connect: Value::Null,
            offset: None,
            next_ack: 0,
            queued: VecDeque::new(),
            closed: false,
        };
        let open = c.raw_within(Duration::from_secs(5)).await;
        let open = open.ok_or_else(|| Refused::Closed("no open packet".into()))?;
        let open = open
            .strip_prefix('0')
            .ok_or_else(|| Refused::Closed(format!("not an open packet: {open}")))?;
        c.open = serde_json::from_str(open).unwrap();
        c.send_raw(&format!("40{auth}")).await;
        loop {
            let Some(p) = c.raw_within(Duration::from_secs(5)).await else {
                return Err(Refused::Closed("closed before CONNECT was answered".into()));
            };
            if let Some(data) = p.strip_prefix("40") {
                c.connect = serde_json::from_str(data).unwrap();
                return Ok(c);
            }
            if let Some(data) = p.strip_prefix("44") {
                return Err(Refused::ConnectError(serde_json::from_str(data).unwrap()));
            }
            if p != "2" {
                panic!("unexpected packet before CONNECT's answer: {p}");
            }
        }
    }

    /// Sends one Engine.IO packet.
    pub async fn send_raw(&mut self, packet: &str) {
        let _ = self.ws.send(Message::Text(packet.into())).await;
    }

    /// The next Engine.IO text packet; answers pings (`2` → `3`) and skips them. `None` at
    /// the end of the connection or after `limit`.
    pub async fn raw_within(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => self.send_raw("3").await,
                Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    self.closed = true;
                    return None;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame in v1 terms (see the module docs), `None` at the end or after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(v) = self.queued.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let p = self
                .raw_within(deadline - tokio::time::Instant::now())
                .await?;
            if let Some(v) = self.translate(&p) {
                return Some(v);
            }
        }
    }

    fn translate(&mut self, packet: &str) -> Option<Value> {
        if packet == "41" {
            return Some(json!({"type": "sio_disconnect"}));
        }
        if let Some(ack) = packet.strip_prefix("43") {
            let at = ack.find('[').unwrap();
            let mut args: Vec<Value> = serde_json::from_str(&ack[at..]).unwrap();
            return Some(args.remove(0));
        }
        let data = packet.strip_prefix("42")?;
        let args: Vec<Value> = serde_json::from_str(data).unwrap();
        let name = args[0].as_str().unwrap();
        if name.starts_with("herald:") {
            return Some(args[1].clone());
        }
        let meta = &args[2];
        if let Some(cursor) = args.get(3).and_then(Value::as_str) {
            self.offset = Some(cursor.to_owned());
        }
        Some(
            json!({"type": "pub", "event": name, "channel": meta["channel"],
                    "offset": meta["offset"], "epoch": meta["epoch"],
                    "data": args[1], "from": meta["from"]}),
        )
    }

    /// Emits `event` with `arg` and an ack id; returns the ack's argument (a v1 reply),
    /// queueing what arrives before it.
    pub async fn emit_with_ack(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_raw(&format!("42{id}{}", json!([event, arg])))
            .await;
        let mut before = Vec::new();
        let reply = loop {
            let p = self
                .raw_within(Duration::from_secs(5))
                .await
                .expect("an ack within 5 s");
            if let Some(rest) = p.strip_prefix("43")
                && rest.starts_with(&format!("{id}["))
            {
                break self.translate(&p).unwrap();
            }
            if let Some(v) = self.translate(&p) {
                before.push(v);
            }
        };
        self.queued.extend(before);
        reply
    }

    /// A protocol v1 command as its Socket.IO event with an ack.
    pub async fn request(&mut self, frame: Value) -> Value {
        let kind = frame["type"].as_str().unwrap().to_owned();
        let mut arg = frame;
        arg.as_object_mut().unwrap().remove("type");
        arg.as_object_mut().unwrap().remove("id");
        self.emit_with_ack(&kind, arg).await
    }
}
