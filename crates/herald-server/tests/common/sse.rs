//! A real Server-Sent Events client for the end-to-end tests: an HTTP request kept open,
//! parsed event by event as the SSE format says (fields, multi-line `data:`, comments), with
//! commands posted to `/v1/sse/{session}`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// Where the stream's bytes come from: reqwest, or a raw socket (tiny receive buffers).
enum Body {
    Reqwest(reqwest::Response),
    Raw(TcpStream),
}

pub struct SseClient {
    body: Body,
    buf: Vec<u8>,
    events: VecDeque<Event>,
    /// The last `id:` seen (what `EventSource` would send as `Last-Event-ID`).
    pub last_id: Option<String>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    /// The `retry:` value announced, in ms.
    pub retry: Option<u64>,
    pub session: String,
    pub welcome: Value,
    base: String,
    token: Option<String>,
    next_id: u64,
    pub ended: bool,
}

/// The refusal of a stream request: status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl SseClient {
    /// `GET /v1/sse?{query}` with a bearer token and optional `Last-Event-ID`; reads the welcome.
    pub async fn connect(
        base: &str,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, Refused> {
        let mut req = reqwest::Client::new().get(format!("{base}/v1/sse?{query}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.json().await.unwrap_or(Value::Null);
            return Err(Refused { status, body });
        }
        assert_eq!(
            res.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        let mut c = SseClient {
            body: Body::Reqwest(res),
            buf: Vec::new(),
            events: VecDeque::new(),
            last_id: None,
            comments: 0,
            retry: None,
            session: String::new(),
            welcome: Value::Null,
            base: base.to_owned(),
            token: token.map(str::to_owned),
            next_id: 1,
            ended: false,
        };
        c.read_welcome().await;
        Ok(c)
    }

    /// Like [`connect`], over a socket whose receive buffer is tiny (to stall quickly when
    /// the test stops reading).
    pub async fn connect_small_rcvbuf(addr: SocketAddr, token: &str, query: &str) -> SseClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/sse?{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut c = SseClient {
            body: Body::Raw(stream),
            buf: Vec::new(),
            events: VecDeque::new(),
            last_id: None,
            comments: 0,
            retry: None,
            session: String::new(),
            welcome: Value::Null,
            base: format!("http://{addr}"),
            token: Some(token.to_owned()),
            next_id: 1,
            ended: false,
        };
        // Skip the response head; the body is chunked (each chunk's size line is skipped by
        // the parser below, which only looks at SSE lines).
        loop {
            c.fill().await;
            if let Some(end) = find(&c.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                c.buf.drain(..end + 4);
                break;
            }
        }
        c.read_welcome().await;
        c
    }

    async fn read_welcome(&mut self) {
        let welcome = self
            .next_event(Duration::from_secs(5))
            .await
            .expect("a welcome event");
        assert_eq!(welcome.event, "welcome", "{welcome:?}");
        self.session = welcome.data["session"].as_str().unwrap().to_owned();
        self.welcome = welcome.data;
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        match &mut self.body {
            Body::Reqwest(res) => match res.chunk().await {
                Ok(Some(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    true
                }
                _ => false,
            },
            Body::Raw(stream) => {
                let mut tmp = [0u8; 4096];
                match stream.read(&mut tmp).await {
                    Ok(0) | Err(_) => false,
                    Ok(n) => {
                        // Drop HTTP/1.1 chunk-size lines: a hex number alone on a line.
                        self.buf.extend_from_slice(&tmp[..n]);
                        true
                    }
                }
            }
        }
    }

    fn parse(&mut self) {
        let raw = matches!(self.body, Body::Raw(_));
        while let Some(end) = find(&self.buf, b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block).to_string();
            let mut event = String::from("message");
            let mut data: Vec<String> = Vec::new();
            let mut id = None;
            for line in text.split('\n') {
                let line = line.trim_end_matches('\r');
                if raw && !line.is_empty() && line.chars().all(|c| c.is_ascii_hexdigit()) {
                    continue; // a chunk-size line of the raw HTTP/1.1 body
                }
                if let Some(rest) = line.strip_prefix(':') {
                    let _ = rest;
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v.to_owned());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("retry: ") {
                    self.retry = v.parse().ok();
                }
            }
            if let Some(id) = &id {
                self.last_id = Some(id.clone());
            }
            if !data.is_empty() {
                let data: Value = serde_json::from_str(&data.join("\n")).expect("SSE data is JSON");
                self.events.push_back(Event { event, id, data });
            }
        }
    }

    /// The next event (keep-alives skipped), or `None` at the end of the stream or after
    /// `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.parse();
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => {
                    self.ended = true;
                }
                Err(_) => return None,
            }
        }
    }

    /// The next frame's data. Panics after 5 s.
    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("expected an event within 5 s")
    }

    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        self.next_event(limit).await.map(|e| {
            assert_eq!(e.data["type"], e.event.as_str(), "event name = frame type");
            e.data
        })
    }

    /// Posts one frame to the session's command endpoint: (status, JSON body).
    pub async fn post(&self, frame: &Value) -> (u16, Value) {
        post_command(&self.base, &self.session, self.token.as_deref(), frame).await
    }

    /// Posts a command with a fresh id and returns its reply from the stream.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = id.into();
        let (status, body) = self.post(&frame).await;
        assert_eq!(status, 202, "{body}");
        loop {
            let v = self.next().await;
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    /// Replaces the token used for commands.
    pub fn set_token(&mut self, token: &str) {
        self.token = Some(token.to_owned());
    }
}

/// `POST /v1/sse/{session}` with an optional bearer token.
pub async fn post_command(
    base: &str,
    session: &str,
    token: Option<&str>,
    frame: &Value,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/sse/{session}"))
        .body(frame.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(json!(null)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
