//! The transport conformance suite: one list of user-visible behaviours, run against every
//! transport over real sockets (the counterpart of the broker conformance suite). Each
//! transport implements [`Conn`]; `transport_conformance!` instantiates every test for it.
//! Socket.IO joins through a Socket.IO client ([`common::sio`]) whose events are read back as
//! v1 frames; it has no welcome frame (its CONNECT reply names the socket and the recovery
//! id), so the checks of the welcome's contents are skipped for it, not the behaviours.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use common::sio::{Refused, SioClient};
use common::sse::SseClient;
use common::{Client, TestServer, config_toml, config_with_auth, sign_raw_claims, token, unix_now};
use serde_json::{Value, json};

/// A client connection of one transport, as the suite drives it.
trait Conn: Sized {
    /// Whether the transport has protocol v1's welcome frame (user, subscriptions).
    const WELCOME: bool = true;
    /// Connects with `token` and reads the welcome.
    async fn open(s: &TestServer, token: &str) -> Self;
    /// The welcome frame.
    fn welcome(&self) -> &Value;
    /// The next frame (pings skipped), or `None` after `limit` or at the end.
    async fn next_within(&mut self, limit: Duration) -> Option<Value>;
    /// Sends a command with a fresh id and returns its reply.
    async fn request(&mut self, frame: Value) -> Value;
    /// Where this connection stands on `channel`, as the transport resumes from it (a v1
    /// `since`, an SSE `Last-Event-ID`).
    fn position(&self, channel: &str) -> String;
    /// A new connection resuming `channel` from `position`. Returns it and whether it
    /// recovered; replayed publications come next from `next_within`.
    async fn reopen(s: &TestServer, token: &str, channel: &str, position: &str) -> (Self, bool);
    /// Tries to connect with `token`: the HTTP status of the refusal, or what happened
    /// instead (a session opened, which is dropped; or the connection broke).
    async fn refusal(s: &TestServer, token: &str) -> Result<u16, String>;
    /// Reads until the server ends the connection: its `disconnect` frame (if any) and the
    /// publications before it.
    async fn goodbye(&mut self, limit: Duration) -> (Option<Value>, Vec<Value>);

    async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }

    /// The next `pub` frame (other frames skipped).
    async fn next_pub(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == "pub" {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(json!({"type": "subscribe", "channel": channel}))
            .await
    }
}

/// Protocol v1 over WebSocket; tracks positions to resubscribe with `since`.
struct Ws {
    c: Client,
    positions: HashMap<String, (u64, String)>,
    queued: VecDeque<Value>,
}

impl Ws {
    fn track(&mut self, v: &Value) {
        if v["type"] == "pub" {
            let ch = v["channel"].as_str().unwrap().to_owned();
            if let Some(p) = self.positions.get_mut(&ch) {
                p.0 = v["offset"].as_u64().unwrap();
            }
        } else if v["type"] == "reply" && v["epoch"].is_string() && v["channel"].is_string() {
            self.positions.insert(
                v["channel"].as_str().unwrap().to_owned(),
                (
                    v["offset"].as_u64().unwrap(),
                    v["epoch"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
}

impl Conn for Ws {
    async fn open(s: &TestServer, token: &str) -> Self {
        let mut c = Client::connect(&s.ws_url(), Some(token)).await.unwrap();
        c.welcome = c.next().await;
        assert_eq!(c.welcome["type"], "welcome");
        let mut positions = HashMap::new();
        for sub in c.welcome["subscriptions"].as_array().unwrap() {
            positions.insert(
                sub["channel"].as_str().unwrap().to_owned(),
                (
                    sub["offset"].as_u64().unwrap(),
                    sub["epoch"].as_str().unwrap().to_owned(),
                ),
            );
        }
        Ws {
            c,
            positions,
            queued: VecDeque::new(),
        }
    }

    fn welcome(&self) -> &Value {
        &self.c.welcome
    }

    async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(v) = self.queued.pop_front() {
            return Some(v);
        }
        let v = self.c.next_within(limit).await?;
        self.track(&v);
        Some(v)
    }

    async fn request(&mut self, frame: Value) -> Value {
        let reply = self.c.request(frame).await;
        self.track(&reply);
        reply
    }

    fn position(&self, channel: &str) -> String {
        let (offset, epoch) = &self.positions[channel];
        format!("{offset}:{epoch}")
    }

    async fn reopen(s: &TestServer, token: &str, channel: &str, position: &str) -> (Self, bool) {
        let (offset, epoch) = position.split_once(':').unwrap();
        let offset: u64 = offset.parse().unwrap();
        let mut next = Ws::open(s, token).await;
        let reply = next
            .request(json!({"type": "subscribe", "channel": channel,
                            "since": {"offset": offset, "epoch": epoch}}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        for p in reply["publications"].as_array().unwrap() {
            next.queued
                .push_back(json!({"type": "pub", "channel": channel,
                                         "offset": p["offset"], "data": p["data"]}));
        }
        (next, reply["recovered"] == true)
    }

    async fn refusal(s: &TestServer, token: &str) -> Result<u16, String> {
        match Client::connect(&s.ws_url(), Some(token)).await {
            Ok(mut c) => Err(match c.next_within(Duration::from_secs(5)).await {
                Some(first) => format!("a session opened: {first}"),
                None => "upgraded, then closed without a frame".to_owned(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Ok(res.status().as_u16()),
            Err(e) => Err(format!("the connection broke: {e}")),
        }
    }

    async fn goodbye(&mut self, limit: Duration) -> (Option<Value>, Vec<Value>) {
        let bye = self.c.goodbye(limit).await;
        if let Some(d) = &bye.disconnect {
            // The close frame carries the same code (RFC 6455 close handshake).
            let close = bye.close.as_ref().expect("a close frame after disconnect");
            assert_eq!(
                u64::from(u16::from(close.code)),
                d["code"].as_u64().unwrap()
            );
        }
        (bye.disconnect, bye.pubs)
    }
}

/// Server-Sent Events; resumes with `Last-Event-ID`.
struct Sse(SseClient);

impl Conn for Sse {
    async fn open(s: &TestServer, token: &str) -> Self {
        Sse(SseClient::connect(&s.url(""), Some(token), "", None)
            .await
            .expect("stream opens"))
    }

    fn welcome(&self) -> &Value {
        &self.0.welcome
    }

    async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        self.0.next_within(limit).await
    }

    async fn request(&mut self, frame: Value) -> Value {
        self.0.request(frame).await
    }

    fn position(&self, _channel: &str) -> String {
        self.0.last_id.clone().expect("an id was seen")
    }

    async fn reopen(s: &TestServer, token: &str, channel: &str, position: &str) -> (Self, bool) {
        let next = SseClient::connect(&s.url(""), Some(token), "", Some(position))
            .await
            .expect("stream resumes");
        let sub = next.welcome["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["channel"] == channel)
            .cloned()
            .expect("the resumed channel is in the welcome");
        (Sse(next), sub["recovered"] == true)
    }

    async fn refusal(s: &TestServer, token: &str) -> Result<u16, String> {
        // A stream that opens reads its welcome inside `connect`; one that breaks instead
        // panics there, which fails the test as it should.
        match SseClient::connect(&s.url(""), Some(token), "", None).await {
            Ok(c) => Err(format!("a session opened: {}", c.welcome)),
            Err(refused) => Ok(refused.status),
        }
    }

    async fn goodbye(&mut self, limit: Duration) -> (Option<Value>, Vec<Value>) {
        let mut pubs = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(v) = self
            .0
            .next_within(deadline - tokio::time::Instant::now())
            .await
        {
            match v["type"].as_str() {
                Some("pub") => pubs.push(v),
                Some("disconnect") => {
                    // The stream ends right after the disconnect event.
                    assert!(self.0.next_within(Duration::from_secs(2)).await.is_none());
                    return (Some(v), pubs);
                }
                _ => {}
            }
        }
        (None, pubs)
    }
}

/// Socket.IO over the websocket transport; resumes with its `pid` and the last cursor, as
/// `socket.io-client` does.
struct Sio {
    c: SioClient,
    welcome: Value,
}

impl Sio {
    fn new(c: SioClient) -> Self {
        let welcome = json!({"type": "welcome", "client": c.connect["sid"]});
        Sio { c, welcome }
    }
}

impl Conn for Sio {
    const WELCOME: bool = false;

    async fn open(s: &TestServer, token: &str) -> Self {
        Sio::new(
            SioClient::connect(s.addr, json!({ "token": token }))
                .await
                .expect("connects"),
        )
    }

    fn welcome(&self) -> &Value {
        &self.welcome
    }

    async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        self.c.next_within(limit).await
    }

    async fn request(&mut self, frame: Value) -> Value {
        self.c.request(frame).await
    }

    fn position(&self, _channel: &str) -> String {
        let pid = self.c.connect["pid"].as_str().expect("recovery is on");
        format!("{pid}|{}", self.c.offset.as_deref().unwrap_or(""))
    }

    async fn reopen(s: &TestServer, token: &str, _channel: &str, position: &str) -> (Self, bool) {
        let (pid, offset) = position.split_once('|').unwrap();
        let c = SioClient::connect(
            s.addr,
            json!({"token": token, "pid": pid, "offset": offset}),
        )
        .await
        .expect("reconnects");
        let recovered = c.connect["pid"] == pid;
        (Sio::new(c), recovered)
    }

    async fn refusal(s: &TestServer, token: &str) -> Result<u16, String> {
        match SioClient::connect(s.addr, json!({ "token": token })).await {
            Ok(c) => Err(format!("a session opened: {}", c.connect)),
            Err(Refused::ConnectError(d)) => {
                assert_eq!(d["message"], d["data"]["code"], "{d}");
                // The status `/v1/ws` answers for the same code.
                Ok(match d["data"]["code"].as_str() {
                    Some("unauthorized") => 401,
                    Some("forbidden") => 403,
                    Some("too_many_connections" | "rate_limited") => 429,
                    Some("unavailable") => 503,
                    _ => return Err(format!("unexpected CONNECT_ERROR {d}")),
                })
            }
            Err(Refused::Closed(e)) => Err(format!("the connection broke: {e}")),
        }
    }

    async fn goodbye(&mut self, limit: Duration) -> (Option<Value>, Vec<Value>) {
        let mut pubs = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(v) = self
            .c
            .next_within(deadline - tokio::time::Instant::now())
            .await
        {
            match v["type"].as_str() {
                Some("pub") => pubs.push(v),
                Some("disconnect") => {
                    // Then DISCONNECT for a goodbye not to retry ("io server disconnect"),
                    // and the engine closes either way ("transport close": a reconnect).
                    let next = self.c.next_within(Duration::from_secs(3)).await;
                    if v["reconnect"] == false {
                        assert_eq!(next, Some(json!({"type": "sio_disconnect"})), "{v}");
                        assert!(self.c.next_within(Duration::from_secs(3)).await.is_none());
                    } else {
                        assert_eq!(next, None, "the engine closes after {v}");
                    }
                    assert!(self.c.closed, "the WebSocket closed");
                    return (Some(v), pubs);
                }
                _ => {}
            }
        }
        (None, pubs)
    }
}

fn tok(user: &str) -> String {
    token(user, &[], Duration::from_secs(600))
}

/// Each user receives their own notifications and nobody else's.
async fn per_user_isolation<C: Conn>() {
    let s = TestServer::start().await;
    let mut alice = C::open(&s, &tok("alice")).await;
    let mut bob = C::open(&s, &tok("bob")).await;
    for (user, n) in [("alice", 1), ("bob", 2), ("alice", 3)] {
        let (status, _) = s
            .publish(
                &format!("notifications.user.{user}"),
                json!({"type": "mention", "text": format!("n{n}")}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let a1 = alice.next_pub().await;
    let a2 = alice.next_pub().await;
    assert_eq!(
        (a1["data"]["text"].clone(), a2["data"]["text"].clone()),
        (json!("n1"), json!("n3"))
    );
    assert_eq!(bob.next_pub().await["data"]["text"], "n2");
    assert!(bob.next_within(Duration::from_millis(300)).await.is_none());
}

/// The welcome lists the auto-subscribed per-user channel, and it delivers with no subscribe.
async fn auto_subscribe<C: Conn>() {
    let s = TestServer::start().await;
    let mut c = C::open(&s, &tok("carol")).await;
    if C::WELCOME {
        let subs = c.welcome()["subscriptions"].as_array().unwrap().clone();
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0]["channel"], "notifications.user.carol");
        assert_eq!(c.welcome()["user"], "carol");
    }
    s.publish("notifications.user.carol", json!({"type": "system"}))
        .await;
    let p = c.next_pub().await;
    assert_eq!(p["channel"], "notifications.user.carol");
    assert_eq!(p["offset"], 1);
}

/// Explicit subscribe works; other users' channels, role channels and unknown names are refused
/// with their codes, and the connection keeps working.
async fn explicit_and_refused_channels<C: Conn>() {
    let s = TestServer::start().await;
    let mut c = C::open(&s, &tok("dave")).await;
    let ok = c.subscribe("blog.article.feed").await;
    assert_eq!(ok["ok"], true, "{ok}");
    for (channel, code) in [
        ("notifications.user.erin", "forbidden"),
        ("ops.alerts", "forbidden"),
        ("no.such.channel", "unknown_channel"),
        ("blog..feed", "unknown_channel"),
    ] {
        let r = c.subscribe(channel).await;
        assert_eq!(r["ok"], false, "{channel}");
        assert_eq!(r["error"]["code"], code, "{channel}: {r}");
    }
    assert_eq!(
        c.subscribe("blog.article.feed").await["error"]["code"],
        "already_subscribed"
    );
    s.publish("blog.article.feed", json!({"id": "1", "title": "t"}))
        .await;
    assert_eq!(c.next_pub().await["data"]["id"], "1");
}

/// Gate 3: a client publishes where the descriptor allows it and the schema accepts it.
async fn client_publish_through_gate_3<C: Conn>() {
    let s = TestServer::start().await;
    let mut a = C::open(&s, &tok("alice")).await;
    let mut b = C::open(&s, &tok("bob")).await;
    assert_eq!(b.subscribe("chat.room.5").await["ok"], true);
    let r = a
        .request(json!({"type": "publish", "channel": "chat.room.5", "data": {"text": "hi"}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["offset"], 1);
    assert_eq!(b.next_pub().await["data"]["text"], "hi");
    let r = a
        .request(json!({"type": "publish", "channel": "chat.room.5", "data": {"text": 7}}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    assert_eq!(r["error"]["pointer"], "/text");
    let r = a
        .request(json!({"type": "publish", "channel": "blog.article.feed",
                        "data": {"id": "1", "title": "t"}}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
}

/// Presence: members are listed and others see joins and leaves.
async fn presence<C: Conn>() {
    let s = TestServer::start().await;
    let mut a = C::open(&s, &tok("alice")).await;
    assert_eq!(a.subscribe("chat.room.9").await["ok"], true);
    let mut b = C::open(&s, &tok("bob")).await;
    assert_eq!(b.subscribe("chat.room.9").await["ok"], true);
    let join = a.next().await;
    assert_eq!(
        (join["type"].clone(), join["user"].clone()),
        (json!("join"), json!("bob"))
    );
    let r = a
        .request(json!({"type": "presence", "channel": "chat.room.9"}))
        .await;
    let users: Vec<&str> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    let mut users = users;
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    drop(b);
    let leave = a.next().await;
    assert_eq!(
        (leave["type"].clone(), leave["user"].clone()),
        (json!("leave"), json!("bob"))
    );
}

/// A dropped connection resumes with every missed publication, in order, exactly once, and
/// then continues live.
async fn recovery_without_gap_or_duplicate<C: Conn>() {
    let s = TestServer::start().await;
    let t = tok("alice");
    let channel = "blog.article.feed";
    let publish = async |n: u64| {
        let (status, body) = s
            .publish(channel, json!({"id": n.to_string(), "title": "t"}))
            .await;
        assert_eq!(status, 200, "{body}");
    };
    let mut c = C::open(&s, &t).await;
    assert_eq!(c.subscribe(channel).await["ok"], true);
    for n in 1..=3 {
        publish(n).await;
        assert_eq!(c.next_pub().await["offset"], n);
    }
    // The connection drops (no goodbye); three publications happen while it is away.
    let position = c.position(channel);
    drop(c);
    for n in 4..=6 {
        publish(n).await;
    }
    let (mut c, recovered) = C::reopen(&s, &t, channel, &position).await;
    assert!(recovered);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(c.next_pub().await["offset"].as_u64().unwrap());
    }
    assert_eq!(seen, [4, 5, 6], "replayed in order, no gap");
    publish(7).await;
    assert_eq!(c.next_pub().await["offset"], 7, "then live, no duplicate");
    assert!(c.next_within(Duration::from_millis(300)).await.is_none());

    // Nothing missed: resuming from the latest position recovers with no replay.
    let position = c.position(channel);
    drop(c);
    let (mut c, recovered) = C::reopen(&s, &t, channel, &position).await;
    assert!(recovered);
    publish(8).await;
    assert_eq!(c.next_pub().await["offset"], 8);
}

/// Issue 12, class 7: every publication says who sent it, as the gateway authenticated them,
/// in `from` beside the payload: a client's user and connection (a payload claiming another
/// user changes nothing), or the server. Replays carry it too.
async fn publications_carry_the_vouched_publisher<C: Conn>() {
    // A client-publishable channel that keeps history, so replays can be checked too.
    let s = TestServer::with_config(&config_toml(
        "[[channel]]\nname = \"room.{id}\"\nscope = \"authenticated\"\npublish = \"authenticated\"\nhistory = { size = 10, ttl = \"1m\" }\nschema = { type = \"object\" }",
    ))
    .await;
    let mut alice = C::open(&s, &tok("alice")).await;
    let alice_client = alice.welcome()["client"].clone();
    let mut bob = C::open(&s, &tok("bob")).await;
    let reply = bob.subscribe("room.3").await;
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    let r = alice
        .request(json!({"type": "publish", "channel": "room.3",
                        "data": {"text": "hi", "user": "bob", "from": {"server": true}}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let p = bob.next_pub().await;
    assert_eq!(
        p["from"],
        json!({"user": "alice", "client": alice_client}),
        "{p}"
    );
    assert_eq!(
        p["data"]["user"], "bob",
        "the payload is delivered as sent, beside `from`"
    );
    s.publish("room.3", json!({"text": "from the backend"}))
        .await;
    assert_eq!(bob.next_pub().await["from"], json!({"server": true}));
    // A recovery replay says the same.
    let mut again = Ws::open(&s, &tok("bob")).await;
    let r = again
        .request(json!({"type": "subscribe", "channel": "room.3",
                        "since": {"offset": 0, "epoch": epoch}}))
        .await;
    let froms: Vec<Value> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["from"].clone())
        .collect();
    assert_eq!(
        froms,
        [
            json!({"user": "alice", "client": alice_client}),
            json!({"server": true})
        ]
    );
}

/// After a restart of the in-memory broker (a new epoch), resuming says `recovered:false`.
async fn not_recovered_after_restart<C: Conn>() {
    let t = tok("alice");
    let first = TestServer::start().await;
    let mut c = C::open(&first, &t).await;
    assert_eq!(c.subscribe("blog.article.feed").await["ok"], true);
    first
        .publish("blog.article.feed", json!({"id": "1", "title": "t"}))
        .await;
    c.next_pub().await;
    let second = TestServer::start().await;
    let position = c.position("blog.article.feed");
    drop(c);
    let (_c, recovered) = C::reopen(&second, &t, "blog.article.feed", &position).await;
    assert!(!recovered);
}

/// A client that stops reading is cut off with 4008; the others get everything.
async fn slow_consumer_is_cut_off<C: Conn>(slow: impl AsyncFnOnce(&TestServer) -> C) {
    let s = TestServer::with_config(&config_toml(
        "[server]\ntcp_send_buffer = 8192\n[limits]\nmax_payload_bytes = 16384\noutbound_queue_bytes = 65536",
    ))
    .await;
    let mut healthy = Vec::new();
    for i in 0..5 {
        let mut c = C::open(&s, &tok(&format!("h{i}"))).await;
        assert_eq!(c.subscribe("bench.feed").await["ok"], true);
        healthy.push(c);
    }
    let mut slow = slow(&s).await;
    const N: u64 = 600;
    let pad = "p".repeat(1000);
    // Lockstep: each batch of 10 is read by every healthy client before the next is published,
    // so a healthy reader is never more than 10 KB behind, far under the 64 KiB limit, however
    // the machine schedules it (the publisher is answered before the fan-out, so without the
    // lockstep a loaded machine could let a healthy reader fall a queue behind); only the one
    // that stopped reading overflows.
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
                assert_eq!(c.next_pub().await["offset"], expected);
            }
        }))
        .await;
    }
    let (disconnect, pubs) = slow.goodbye(Duration::from_secs(30)).await;
    let d = disconnect.expect("the slow consumer is told why");
    assert_eq!(d["code"], 4008, "{d}");
    assert_eq!(d["reconnect"], true);
    assert!((pubs.len() as u64) < N, "got {} of {N}", pubs.len());
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["offset"], i as u64 + 1, "a prefix of the stream");
    }
}

/// The token's `exp` ends the connection with 4001 (reconnect: true).
async fn token_expiry<C: Conn>() {
    let s = TestServer::start().await;
    let mut c = C::open(&s, &token("alice", &[], Duration::from_secs(2))).await;
    let (d, _) = c.goodbye(Duration::from_secs(6)).await;
    let d = d.expect("disconnect on expiry");
    assert_eq!(
        (d["code"].clone(), d["reconnect"].clone()),
        (json!(4001), json!(true))
    );
}

/// `[auth]` for the NumericDate tests: `exp` is required, so a token whose `exp` cannot be
/// read can only be refused, never taken as "no expiry".
const REQUIRE_EXP: &str = "require_exp = true";

/// The tokio instant at which the wall clock reads `at` (a NumericDate).
fn instant_at(at: f64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs_f64((at - unix_now()).max(0.0))
}

/// Reads until the server ends the connection while the API publishes `late` on
/// `notifications.user.{user}` at wall-clock time `publish_at`. Returns the goodbye, the
/// publications before it, and the wall-clock time at which the goodbye arrived.
async fn expiry_with_late_publication<C: Conn>(
    s: &TestServer,
    c: &mut C,
    user: &str,
    publish_at: f64,
) -> (Option<Value>, Vec<Value>, f64) {
    let reader = async {
        let (d, pubs) = c.goodbye(Duration::from_secs(8)).await;
        (d, pubs, unix_now())
    };
    let publisher = async {
        tokio::time::sleep_until(instant_at(publish_at)).await;
        let (status, _) = s
            .publish(
                &format!("notifications.user.{user}"),
                json!({"type": "system", "text": "late"}),
            )
            .await;
        assert_eq!(status, 200);
    };
    let (seen, ()) = tokio::join!(reader, publisher);
    seen
}

/// Asserts the connection ended with 4001 at `exp` (not before, and well before `exp + 0.5`)
/// and that the publication made after `exp` did not reach it.
fn assert_expired_at(exp: f64, (d, pubs, at): (Option<Value>, Vec<Value>, f64)) {
    let d = d.expect("the connection ends when the token expires");
    assert_eq!(
        (d["code"].clone(), d["reconnect"].clone()),
        (json!(4001), json!(true))
    );
    assert!(
        at >= exp - 0.05 && at < exp + 0.45,
        "the goodbye came {:.3} s after exp",
        at - exp
    );
    assert!(
        pubs.iter().all(|p| p["data"]["text"] != "late"),
        "a publication made after exp was delivered: {pubs:?}"
    );
}

/// RFC 7519 §2: a NumericDate may have a fraction. A token with `exp = now + 3.5` ends the
/// connection 3.5 s later with 4001, and a publication made after that is not delivered.
async fn fractional_exp_ends_the_connection_at_exp<C: Conn>() {
    let s = TestServer::with_config(&config_with_auth(REQUIRE_EXP, "")).await;
    let exp = unix_now() + 3.5;
    let t = sign_raw_claims(&format!(r#"{{"sub":"alice","exp":{exp:.3}}}"#));
    let mut c = C::open(&s, &t).await;
    s.publish(
        "notifications.user.alice",
        json!({"type": "system", "text": "early"}),
    )
    .await;
    assert_eq!(c.next_pub().await["data"]["text"], "early");
    let seen = expiry_with_late_publication(&s, &mut c, "alice", exp + 0.5).await;
    assert_expired_at(exp, seen);
}

/// The same through `refresh`: the new token's fractional `exp` becomes the deadline.
async fn refresh_to_fractional_exp_ends_at_the_new_exp<C: Conn>() {
    let s = TestServer::with_config(&config_with_auth(REQUIRE_EXP, "")).await;
    let mut c = C::open(&s, &tok("alice")).await;
    let exp = unix_now() + 2.5;
    let fresh = sign_raw_claims(&format!(r#"{{"sub":"alice","exp":{exp:.3}}}"#));
    let r = c.request(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(r["ok"], true, "{r}");
    let seen = expiry_with_late_publication(&s, &mut c, "alice", exp + 0.5).await;
    assert_expired_at(exp, seen);
}

/// A whole-second `exp` is not outlived either: the deadline is measured from the clock's
/// sub-second now, so a token minted late in a second does not gain up to a second of life.
async fn integer_exp_is_not_outlived<C: Conn>() {
    let s = TestServer::start().await;
    // Late in a second, so rounding now down to whole seconds would show.
    let now = unix_now();
    let wait = (now.floor() + 1.85 - now).rem_euclid(1.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let exp = unix_now().floor() + 3.0;
    let t = sign_raw_claims(&format!(r#"{{"sub":"alice","exp":{exp}}}"#));
    let mut c = C::open(&s, &t).await;
    let seen = expiry_with_late_publication(&s, &mut c, "alice", exp + 0.5).await;
    assert_expired_at(exp, seen);
}

/// Claims sets whose time claims are not NumericDates, or say the token is not valid now.
/// Each is signed correctly; each must be refused wherever a token is read.
fn bad_time_claims() -> Vec<(&'static str, String)> {
    let now = unix_now();
    let ok_exp = now.floor() as u64 + 600;
    let ms = (now * 1000.0) as u64 + 600_000;
    [
        ("exp a string", r#""exp":"9999999999""#.to_owned()),
        ("exp null", r#""exp":null"#.to_owned()),
        ("exp true", r#""exp":true"#.to_owned()),
        ("exp an array", format!(r#""exp":[{ok_exp}]"#)),
        ("exp negative", r#""exp":-1"#.to_owned()),
        ("exp in milliseconds", format!(r#""exp":{ms}"#)),
        ("exp past year 9999", r#""exp":253402300800"#.to_owned()),
        ("exp 1e300", r#""exp":1e300"#.to_owned()),
        ("exp missing", String::new()),
        ("exp past by 10.5 s", format!(r#""exp":{:.3}"#, now - 10.5)),
        ("exp twice", format!(r#""exp":1,"exp":{ok_exp}"#)),
        ("nbf a string", format!(r#""exp":{ok_exp},"nbf":"0""#)),
        ("nbf null", format!(r#""exp":{ok_exp},"nbf":null"#)),
        (
            "nbf in 30.5 s",
            format!(r#""exp":{ok_exp},"nbf":{:.3}"#, now + 30.5),
        ),
        (
            "iat in an hour",
            format!(r#""exp":{ok_exp},"iat":{}"#, ok_exp + 3000),
        ),
        (
            "iat a string",
            format!(r#""exp":{ok_exp},"iat":"2020-01-01""#),
        ),
        ("iat null", format!(r#""exp":{ok_exp},"iat":null"#)),
        ("iat negative", format!(r#""exp":{ok_exp},"iat":-5"#)),
        (
            "iat twice",
            format!(r#""exp":{ok_exp},"iat":1,"iat":{}"#, ok_exp + 3000),
        ),
        // Last: on a gateway that takes it, the session's timer overflows and the session dies.
        ("exp u64::MAX", format!(r#""exp":{}"#, u64::MAX)),
    ]
    .into_iter()
    .map(|(name, times)| {
        let sep = if times.is_empty() { "" } else { "," };
        (
            name,
            sign_raw_claims(&format!(r#"{{"sub":"alice"{sep}{times}}}"#)),
        )
    })
    .collect()
}

/// Gate 1 refuses every one of them with 401, and accepts the well-formed control token.
async fn bad_time_claims_are_refused_at_connect<C: Conn>() {
    let s = TestServer::with_config(&config_with_auth(REQUIRE_EXP, "")).await;
    let control = format!(
        r#"{{"sub":"alice","iat":{:.3},"exp":{:.3}}}"#,
        unix_now(),
        unix_now() + 600.25
    );
    assert!(C::refusal(&s, &sign_raw_claims(&control)).await.is_err());
    let mut accepted = Vec::new();
    for (name, t) in bad_time_claims() {
        match C::refusal(&s, &t).await {
            Ok(401) => {}
            other => accepted.push(format!("{name}: {other:?}")),
        }
    }
    assert!(accepted.is_empty(), "not refused with 401: {accepted:?}");
}

/// `refresh` refuses every one of them (`unauthorized`) and the session carries on with its
/// old identity.
async fn bad_time_claims_are_refused_on_refresh<C: Conn>() {
    let s = TestServer::with_config(&config_with_auth(REQUIRE_EXP, "")).await;
    let mut c = C::open(&s, &tok("alice")).await;
    let mut accepted = Vec::new();
    for (name, t) in bad_time_claims() {
        let r = c.request(json!({"type": "refresh", "token": t})).await;
        if r["ok"] != false || r["error"]["code"] != "unauthorized" {
            accepted.push(format!("{name}: {r}"));
        }
    }
    assert!(accepted.is_empty(), "not refused: {accepted:?}");
    s.publish(
        "notifications.user.alice",
        json!({"type": "system", "text": "still here"}),
    )
    .await;
    assert_eq!(c.next_pub().await["data"]["text"], "still here");
}

/// A leeway longer than the time since 1970 is absurd but must not overflow the arithmetic
/// of the time checks: the token is read, not the process crashed.
async fn huge_leeway_does_not_overflow<C: Conn>() {
    let s = TestServer::with_config(&config_with_auth("leeway = \"1000years\"", "")).await;
    let mut c = C::open(&s, &tok("alice")).await;
    if C::WELCOME {
        assert_eq!(c.welcome()["user"], "alice");
    }
    s.publish("notifications.user.alice", json!({"type": "system"}))
        .await;
    assert_eq!(c.next_pub().await["channel"], "notifications.user.alice");
}

/// `POST /v1/users/{user}/disconnect` closes that user's connections with 4403, no reconnect.
async fn kick<C: Conn>() {
    let s = TestServer::start().await;
    let mut a = C::open(&s, &tok("alice")).await;
    let mut b = C::open(&s, &tok("bob")).await;
    let (status, body) = s.post("/v1/users/alice/disconnect", json!({})).await;
    assert_eq!((status, body["disconnected"].clone()), (200, json!(1)));
    let (d, _) = a.goodbye(Duration::from_secs(5)).await;
    let d = d.expect("disconnect on kick");
    assert_eq!(
        (d["code"].clone(), d["reconnect"].clone()),
        (json!(4403), json!(false))
    );
    s.publish("notifications.user.bob", json!({"type": "system"}))
        .await;
    assert_eq!(b.next_pub().await["channel"], "notifications.user.bob");
}

/// Shutdown tells every client to reconnect (1001) and the server stops within its grace.
async fn shutdown<C: Conn>() {
    let mut s =
        TestServer::with_config(&config_toml("[server]\nshutdown_spread = \"100ms\"")).await;
    let mut a = C::open(&s, &tok("alice")).await;
    s.shutdown();
    let (d, _) = a.goodbye(Duration::from_secs(5)).await;
    let d = d.expect("disconnect on shutdown");
    assert_eq!(
        (d["code"].clone(), d["reconnect"].clone()),
        (json!(1001), json!(true))
    );
    tokio::time::timeout(Duration::from_secs(5), &mut s.done)
        .await
        .expect("the server stops within its grace period")
        .unwrap();
}

/// A token-scoped channel for the subscription token tests.
const TOKEN_CHANNEL: &str = r#"
[[channel]]
name = "private.room.{roomId}"
scope = "token"
presence = true
schema = { type = "object" }
"#;

/// A subscription token signed with the connection secret (no `[auth.subscription]`).
fn sub_token(user: &str, channel: &str, exp: f64) -> String {
    sign_raw_claims(&format!(
        r#"{{"sub":"{user}","channel":"{channel}","exp":{exp:.3}}}"#
    ))
}

/// `scope = "token"`: only a subscribe carrying a valid token for exactly that channel and
/// the connection's user is allowed; no token, another channel, another user, an expired or
/// badly signed token, or one without `exp` are refused, and nothing is delivered for them.
async fn subscription_tokens<C: Conn>() {
    let s = TestServer::with_config(&config_toml(TOKEN_CHANNEL)).await;
    let mut c = C::open(&s, &tok("alice")).await;
    let later = unix_now() + 600.0;
    let sub = |token: Option<String>| {
        let mut f = json!({"type": "subscribe", "channel": "private.room.1"});
        if let Some(t) = token {
            f["token"] = json!(t);
        }
        f
    };
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "channel": "private.room.1", "exp": later as u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    for (case, token, code) in [
        ("no token", None, "forbidden"),
        (
            "another channel",
            Some(sub_token("alice", "private.room.2", later)),
            "forbidden",
        ),
        (
            "another user",
            Some(sub_token("bob", "private.room.1", later)),
            "forbidden",
        ),
        (
            "expired",
            Some(sub_token("alice", "private.room.1", unix_now() - 60.0)),
            "unauthorized",
        ),
        ("another key", Some(other_key), "unauthorized"),
        (
            "no exp",
            Some(sign_raw_claims(
                r#"{"sub":"alice","channel":"private.room.1"}"#,
            )),
            "unauthorized",
        ),
    ] {
        let r = c.request(sub(token)).await;
        assert_eq!(r["ok"], false, "{case}: {r}");
        assert_eq!(r["error"]["code"], code, "{case}: {r}");
    }
    s.publish("private.room.1", json!({"n": 0})).await;
    let r = c
        .request(sub(Some(sub_token("alice", "private.room.1", later))))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    s.publish("private.room.1", json!({"n": 1})).await;
    let p = c.next_pub().await;
    assert_eq!(
        (p["channel"].clone(), p["data"]["n"].clone()),
        (json!("private.room.1"), json!(1))
    );
    // Presence needs the subscription, not a token.
    let r = c
        .request(json!({"type": "presence", "channel": "private.room.1"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = c
        .request(json!({"type": "presence", "channel": "private.room.2"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
}

/// A subscription token's `exp` ends that subscription alone (`unsubscribed`, reason
/// `token_expired`, at `exp`), unless `sub_refresh` brought a new one; the connection and its
/// other subscriptions carry on, and a refresh with a wrong token changes nothing.
async fn subscription_token_expiry_and_refresh<C: Conn>() {
    let s = TestServer::with_config(&config_toml(TOKEN_CHANNEL)).await;
    let mut c = C::open(&s, &tok("alice")).await;
    let exp = unix_now() + 2.5;
    for room in ["private.room.1", "private.room.2"] {
        let r = c
            .request(json!({"type": "subscribe", "channel": room,
                            "token": sub_token("alice", room, exp)}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let refresh = |channel: &str, token: String| json!({"type": "sub_refresh", "channel": channel, "token": token});
    let later = unix_now() + 600.0;
    // Wrong refreshes: refused, and room 2 still expires with its first token... unless the
    // right one follows.
    let r = c
        .request(refresh(
            "private.room.2",
            sub_token("alice", "private.room.1", later),
        ))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = c
        .request(refresh(
            "private.room.3",
            sub_token("alice", "private.room.3", later),
        ))
        .await;
    assert_eq!(r["error"]["code"], "not_subscribed", "{r}");
    let r = c
        .request(refresh(
            "private.room.2",
            sub_token("alice", "private.room.2", later),
        ))
        .await;
    assert_eq!(r["ok"], true, "{r}");

    let mut expired_at = None;
    let mut seen = Vec::new();
    while let Some(v) = c.next_within(Duration::from_secs(5)).await {
        if v["type"] == "unsubscribed" {
            expired_at = Some(unix_now());
            assert_eq!(v["channel"], "private.room.1", "{v}");
            assert_eq!(v["reason"], "token_expired", "{v}");
            break;
        }
        seen.push(v);
    }
    let at = expired_at.expect("unsubscribed when the subscription token expired");
    assert!(
        at >= exp - 0.05 && at < exp + 0.5,
        "ended {:.3} s after exp",
        at - exp
    );
    // The connection and room 2 live on; room 1 delivers nothing more.
    s.publish("private.room.1", json!({"n": "after"})).await;
    s.publish("private.room.2", json!({"n": "kept"})).await;
    let p = c.next_pub().await;
    assert_eq!(
        (p["channel"].clone(), p["data"]["n"].clone()),
        (json!("private.room.2"), json!("kept"))
    );
    // A fresh token subscribes again.
    let r = c
        .request(json!({"type": "subscribe", "channel": "private.room.1",
                        "token": sub_token("alice", "private.room.1", later)}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

macro_rules! transport_conformance {
    ($name:ident, $conn:ty, $slow:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn per_user_isolation() {
                super::per_user_isolation::<$conn>().await
            }
            #[tokio::test]
            async fn auto_subscribe() {
                super::auto_subscribe::<$conn>().await
            }
            #[tokio::test]
            async fn explicit_and_refused_channels() {
                super::explicit_and_refused_channels::<$conn>().await
            }
            #[tokio::test]
            async fn client_publish_through_gate_3() {
                super::client_publish_through_gate_3::<$conn>().await
            }
            #[tokio::test]
            async fn presence() {
                super::presence::<$conn>().await
            }
            #[tokio::test]
            async fn recovery_without_gap_or_duplicate() {
                super::recovery_without_gap_or_duplicate::<$conn>().await
            }
            #[tokio::test]
            async fn publications_carry_the_vouched_publisher() {
                super::publications_carry_the_vouched_publisher::<$conn>().await
            }
            #[tokio::test]
            async fn not_recovered_after_restart() {
                super::not_recovered_after_restart::<$conn>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn slow_consumer_is_cut_off() {
                super::slow_consumer_is_cut_off::<$conn>($slow).await
            }
            #[tokio::test]
            async fn token_expiry() {
                super::token_expiry::<$conn>().await
            }
            #[tokio::test]
            async fn fractional_exp_ends_the_connection_at_exp() {
                super::fractional_exp_ends_the_connection_at_exp::<$conn>().await
            }
            #[tokio::test]
            async fn refresh_to_fractional_exp_ends_at_the_new_exp() {
                super::refresh_to_fractional_exp_ends_at_the_new_exp::<$conn>().await
            }
            #[tokio::test]
            async fn integer_exp_is_not_outlived() {
                super::integer_exp_is_not_outlived::<$conn>().await
            }
            #[tokio::test]
            async fn bad_time_claims_are_refused_at_connect() {
                super::bad_time_claims_are_refused_at_connect::<$conn>().await
            }
            #[tokio::test]
            async fn bad_time_claims_are_refused_on_refresh() {
                super::bad_time_claims_are_refused_on_refresh::<$conn>().await
            }
            #[tokio::test]
            async fn huge_leeway_does_not_overflow() {
                super::huge_leeway_does_not_overflow::<$conn>().await
            }
            #[tokio::test]
            async fn subscription_tokens() {
                super::subscription_tokens::<$conn>().await
            }
            #[tokio::test]
            async fn subscription_token_expiry_and_refresh() {
                super::subscription_token_expiry_and_refresh::<$conn>().await
            }
            #[tokio::test]
            async fn kick() {
                super::kick::<$conn>().await
            }
            #[tokio::test]
            async fn shutdown() {
                super::shutdown::<$conn>().await
            }
        }
    };
}

transport_conformance!(websocket, Ws, async |s: &TestServer| {
    let mut c = Client::connect_small_rcvbuf(s.addr, &tok("slow")).await;
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    Ws {
        c,
        positions: HashMap::new(),
        queued: VecDeque::new(),
    }
});

transport_conformance!(sse, Sse, async |s: &TestServer| {
    Sse(SseClient::connect_small_rcvbuf(s.addr, &tok("slow"), "channel=bench.feed").await)
});

transport_conformance!(socketio, Sio, async |s: &TestServer| {
    let mut c =
        Sio::new(SioClient::connect_small_rcvbuf(s.addr, json!({ "token": tok("slow") })).await);
    assert_eq!(c.subscribe("bench.feed").await["ok"], true);
    c
});
