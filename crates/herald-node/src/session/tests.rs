//! Unit tests of the session core: an in-memory [`Transport`] (two channels) and the real
//! in-memory broker, under Tokio's paused clock, so timers are exact and instant.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use herald_core::Config;
use herald_core::broker::{HistoryQuery, HistoryResult};
use herald_core::identity::mint_hs256;
use herald_core::protocol::ClientInfo;
use herald_core::protocol::{ClientFrame, Goodbye, RawJson, Since};
use herald_core::{Broker, BrokerError, Position, PublishRequest};
use herald_memory::MemoryBroker;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::transport::{Ending, Inbound, Outgoing, Transport};
use super::{Opening, Session};
use crate::admission::{Admitted, Handshake};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node::Node;

const SECRET: &str = "unit-secret";

/// The client's side of an in-memory transport.
struct Peer {
    to_session: mpsc::UnboundedSender<Inbound>,
    from_session: mpsc::UnboundedReceiver<String>,
    ended: oneshot::Receiver<Ending>,
    next_id: u64,
}

struct MemTransport {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    outbound: mpsc::UnboundedSender<String>,
    ended: Option<oneshot::Sender<Ending>>,
    answers_pings: bool,
}

impl Transport for MemTransport {
    fn answers_pings(&self) -> bool {
        self.answers_pings
    }

    async fn recv(&mut self) -> Inbound {
        self.inbound.recv().await.unwrap_or(Inbound::Gone)
    }

    async fn send(&mut self, batch: &mut Vec<Outgoing>) -> std::io::Result<()> {
        for item in batch.drain(..) {
            let _ = self.outbound.send(item.v1().to_owned());
        }
        Ok(())
    }

    async fn close(mut self, ending: Ending) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(ending);
        }
    }
}

fn node(extra: &str) -> Arc<Node> {
    node_with("", extra)
}

/// A node with `auth` lines added to `[auth]` and `extra` sections.
fn node_with(auth: &str, extra: &str) -> Arc<Node> {
    node_over(&config_toml(auth, extra), |broker| broker)
}

/// The test configuration with `auth` lines added to `[auth]` and `extra` sections.
fn config_toml(auth: &str, extra: &str) -> String {
    format!(
        r#"
[auth]
hs256_secret = "{SECRET}"
{auth}
{extra}

[[channel]]
name = "notifications.user.{{userId}}"
scope = "user"
auto_subscribe = true
schema = {{ type = "object" }}

[[channel]]
name = "chat.room.{{roomId}}"
scope = "authenticated"
publish = "authenticated"
history = {{ size = 100, ttl = "10m" }}
schema = {{ type = "object", required = ["text"] }}

[[channel]]
name = "lobby.{{roomId}}"
scope = "authenticated"
presence = true
schema = {{ type = "object" }}
"#
    )
}

/// A node configured by `toml` over the memory broker, as `wrap` returns it.
fn node_over(toml: &str, wrap: impl FnOnce(Arc<MemoryBroker>) -> Arc<dyn Broker>) -> Arc<Node> {
    let config = Config::from_toml_str(toml, std::path::Path::new(".")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    // Wired as `herald_server::build` wires it: the fan-out behind its queue and task.
    let fanout = crate::fanout::FanoutQueue::spawn(hub.clone());
    let broker = MemoryBroker::new(fanout.clone(), Duration::from_secs(60));
    let node = Node::new(config, hub, wrap(broker), metrics);
    let _ = node.fanout.set(fanout);
    Arc::new(node)
}

/// The memory broker with a gate on `subscribe` for the `chat.` channels: a call waits while
/// the gate is closed, as with a backend one network latency away. Those calls are counted.
/// Reading the history of a channel whose name ends in `.broken` fails.
struct Gated {
    inner: Arc<MemoryBroker>,
    open: tokio::sync::watch::Sender<bool>,
    subscribes: AtomicUsize,
    unsubscribes: AtomicUsize,
    /// The next `chat.` subscribe fails (once the gate opens).
    refuse_next: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Broker for Gated {
    async fn publish(&self, request: PublishRequest) -> Result<Position, BrokerError> {
        self.inner.publish(request).await
    }
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if channel.starts_with("chat.") {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
            let refuse = self.refuse_next.swap(false, Ordering::SeqCst);
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            if refuse {
                return Err(BrokerError::Unavailable("the test refused it".into()));
            }
        }
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if channel.starts_with("chat.") {
            self.unsubscribes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.unsubscribe(channel).await
    }
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        if channel.ends_with(".broken") {
            return Err(BrokerError::Unavailable("the test broke it".into()));
        }
        self.inner.history(channel, query).await
    }
    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        self.inner.presence_add(channel, client).await
    }
    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        self.inner.presence_remove(channel, client).await
    }
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        self.inner.presence(channel).await
    }
    async fn session_open(&self, client: &ClientInfo, max: usize) -> Result<bool, BrokerError> {
        self.inner.session_open(client, max).await
    }
    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        self.inner.session_close(client).await
    }
    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        self.inner.kick(user).await
    }
    async fn resume_put(
        &self,
        key: &str,
        owner: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        self.inner.resume_put(key, owner, state, ttl).await
    }
    async fn resume_take(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.inner.resume_take(key, owner, ttl).await
    }
    async fn health(&self) -> Result<(), BrokerError> {
        self.inner.health().await
    }
    fn idempotency_window(&self) -> Duration {
        self.inner.idempotency_window()
    }
}

/// Gate 1 for `user` with a token living `ttl`.
fn admit(node: &Arc<Node>, user: &str, ttl: Duration) -> Admitted {
    let token = mint_hs256(SECRET, user, &[], "roles", ttl).unwrap();
    let bearer = format!("Bearer {token}");
    node.admit(&Handshake {
        authorization: vec![&bearer],
        ..Handshake::default()
    })
    .now_or_never()
    .expect("the memory broker answers at once")
    .unwrap()
}

/// Admits `user` with a token living `ttl` and runs a session over an in-memory transport.
fn connect(node: &Arc<Node>, user: &str, ttl: Duration, answers_pings: bool) -> Peer {
    connect_with(node, user, ttl, answers_pings, Opening::default())
}

/// [`connect`] with what the transport asks for at connect (channels to resume…).
fn connect_with(
    node: &Arc<Node>,
    user: &str,
    ttl: Duration,
    answers_pings: bool,
    opening: Opening,
) -> Peer {
    let admitted = admit(node, user, ttl);
    let (to_session, inbound) = mpsc::unbounded_channel();
    let (outbound, from_session) = mpsc::unbounded_channel();
    let (ended_tx, ended) = oneshot::channel();
    let transport = MemTransport {
        inbound,
        outbound,
        ended: Some(ended_tx),
        answers_pings,
    };
    tokio::spawn(Session::new(admitted).run(transport, opening));
    Peer {
        to_session,
        from_session,
        ended,
        next_id: 1,
    }
}

impl Peer {
    async fn frame(&mut self) -> Value {
        let text = self.from_session.recv().await.expect("a frame");
        serde_json::from_str(&text).unwrap()
    }

    /// The next frame that is not a ping.
    async fn next(&mut self) -> Value {
        loop {
            let v = self.frame().await;
            if v["type"] != "ping" {
                return v;
            }
        }
    }

    fn send(&self, frame: ClientFrame) {
        self.to_session.send(Inbound::Frame(frame)).unwrap();
    }

    async fn request(&mut self, make: impl FnOnce(Option<u64>) -> ClientFrame) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(make(Some(id)));
        loop {
            let v = self.next().await;
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(|id| ClientFrame::Subscribe {
            id,
            channel: channel.into(),
            since: None,
            token: None,
        })
        .await
    }

    async fn ended(self) -> Ending {
        self.ended.await.expect("the session ends")
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_ping_interval_plus_pong_timeout() {
    let node = node("[server]\nping_interval = \"10s\"\npong_timeout = \"5s\"");
    let start = Instant::now();
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(peer.frame().await["type"], "welcome");
    assert_eq!(peer.frame().await["type"], "ping", "pinged at the interval");
    let ending = peer.ended().await;
    assert_eq!(ending, Ending::Goodbye(Goodbye::PingTimeout));
    // Silence is checked at each tick: the first tick past 15 s of silence is at 20 s.
    assert_eq!(start.elapsed(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_stays() {
    let node = node("[server]\nping_interval = \"10s\"\npong_timeout = \"5s\"");
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(peer.frame().await["type"], "welcome");
    for _ in 0..10 {
        assert_eq!(peer.frame().await["type"], "ping");
        peer.send(ClientFrame::Pong { id: None });
    }
    assert!(peer.ended.try_recv().is_err(), "still open after 100 s");
}

#[tokio::test(start_paused = true)]
async fn one_way_transports_are_not_closed_for_silence() {
    let node = node("[server]\nping_interval = \"10s\"\npong_timeout = \"5s\"");
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), false);
    assert_eq!(peer.frame().await["type"], "welcome");
    for _ in 0..10 {
        assert_eq!(peer.frame().await["type"], "ping", "keep-alives still flow");
    }
    assert!(peer.ended.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn token_expiry_ends_the_session_unless_refreshed() {
    // Pings far apart: this test is about expiry, not silence.
    let node = node_with("leeway = \"0s\"", "[server]\nping_interval = \"1h\"");
    let start = Instant::now();
    let peer = connect(&node, "alice", Duration::from_secs(30), true);
    assert_eq!(peer.ended().await, Ending::Goodbye(Goodbye::TokenExpired));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(29) && took <= Duration::from_secs(30),
        "{took:?}"
    );

    let start = Instant::now();
    let mut peer = connect(&node, "alice", Duration::from_secs(30), true);
    assert_eq!(peer.next().await["type"], "welcome");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let fresh = mint_hs256(SECRET, "alice", &[], "roles", Duration::from_secs(3600)).unwrap();
    let r = peer
        .request(|id| ClientFrame::Refresh { id, token: fresh })
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let other = mint_hs256(SECRET, "bob", &[], "roles", Duration::from_secs(3600)).unwrap();
    let r = peer
        .request(|id| ClientFrame::Refresh { id, token: other })
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        peer.ended.try_recv().is_err(),
        "alive {:?} in",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn every_frame_counts_against_the_frame_rate_control_frames_included() {
    let node = node("[limits]\nframe_rate = 10");
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(peer.next().await["type"], "welcome");
    // A burst of twice the rate is allowed…
    for _ in 0..20 {
        peer.to_session.send(Inbound::Alive).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(peer.ended.try_recv().is_err());
    // …refilled at the rate…
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..10 {
        peer.to_session.send(Inbound::Alive).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(peer.ended.try_recv().is_err());
    // …and one more is over it.
    peer.to_session.send(Inbound::Alive).unwrap();
    assert_eq!(peer.ended().await, Ending::Goodbye(Goodbye::RateLimited));
    let m = node.metrics.render();
    assert!(
        m.contains(r#"herald_rejects_total{gate="frame",code="rate_limited"} 1"#),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_publish_rate_refuses_without_closing() {
    let node = node("[limits]\npublish_rate = 2");
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(peer.next().await["type"], "welcome");
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = peer
            .request(|id| ClientFrame::Publish {
                id,
                channel: "chat.room.1".into(),
                data: RawJson::from_value(&json!({"text": "x"})),
            })
            .await;
        codes.push(r["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "ok", "rate_limited"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = peer
        .request(|id| ClientFrame::Publish {
            id,
            channel: "chat.room.1".into(),
            data: RawJson::from_value(&json!({"text": "x"})),
        })
        .await;
    assert_eq!(r["ok"], true, "refilled after a second: {r}");
}

#[tokio::test(start_paused = true)]
async fn subscription_limits() {
    // The auto-subscribed notifications channel counts too.
    let node = node("[limits]\nmax_subscriptions = 3");
    let mut peer = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(peer.next().await["type"], "welcome");
    assert_eq!(peer.subscribe("chat.room.1").await["ok"], true);
    assert_eq!(
        peer.subscribe("chat.room.1").await["error"]["code"],
        "already_subscribed"
    );
    assert_eq!(peer.subscribe("chat.room.2").await["ok"], true);
    assert_eq!(
        peer.subscribe("chat.room.3").await["error"]["code"],
        "too_many_subscriptions"
    );
    let r = peer
        .request(|id| ClientFrame::Unsubscribe {
            id,
            channel: "chat.room.1".into(),
        })
        .await;
    assert_eq!(r["ok"], true);
    assert_eq!(peer.subscribe("chat.room.3").await["ok"], true);
    assert_eq!(
        peer.subscribe("notifications.user.bob").await["error"]["code"],
        "forbidden"
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_at_connect_replays_then_goes_live() {
    let node = node("");
    let mut first = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(first.next().await["type"], "welcome");
    let r = first.subscribe("chat.room.1").await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for n in 0..3 {
        let r = first
            .request(|id| ClientFrame::Publish {
                id,
                channel: "chat.room.1".into(),
                data: RawJson::from_value(&json!({"text": n.to_string()})),
            })
            .await;
        assert_eq!(r["ok"], true);
    }
    // A second session resumes from offset 1 at connect (what SSE does with Last-Event-ID).
    let opening = Opening {
        resume: vec![(
            "chat.room.1".into(),
            Since {
                offset: 1,
                epoch: epoch.clone(),
            },
        )],
        ..Opening::default()
    };
    let mut second = connect_with(&node, "alice", Duration::from_secs(3600), true, opening);
    let welcome = second.frame().await;
    let sub = welcome["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["channel"] == "chat.room.1")
        .cloned()
        .unwrap();
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["offset"], 3);
    for offset in [2, 3] {
        let p = second.frame().await;
        assert_eq!(
            (p["type"].clone(), p["offset"].clone()),
            (json!("pub"), json!(offset))
        );
    }
}

/// `all_or_nothing` (Socket.IO's one `recovered` flag): when one resumed channel cannot be
/// recovered, none is — the explicit ones are dropped, the auto-subscription stays at its
/// current position, nothing is replayed, and the welcome says nothing `recovered`. When all
/// can be, it is the ordinary resume.
#[tokio::test(start_paused = true)]
async fn all_or_nothing_resume() {
    let node = node("");
    let mut first = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(first.next().await["type"], "welcome");
    let r = first.subscribe("chat.room.1").await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    let r = first
        .request(|id| ClientFrame::Publish {
            id,
            channel: "chat.room.1".into(),
            data: RawJson::from_value(&json!({"text": "1"})),
        })
        .await;
    assert_eq!(r["ok"], true);
    let open = |resume: Vec<(String, Since)>| {
        let opening = Opening {
            resume,
            all_or_nothing: true,
            ..Opening::default()
        };
        connect_with(&node, "alice", Duration::from_secs(3600), true, opening)
    };
    let since = |offset, epoch: &str| Since {
        offset,
        epoch: epoch.to_owned(),
    };
    // chat.room.1 can be recovered, chat.room.2 cannot (an epoch that never was).
    let mut peer = open(vec![
        ("chat.room.1".into(), since(0, &epoch)),
        ("chat.room.2".into(), since(5, "gone")),
    ]);
    let welcome = peer.frame().await;
    let subs = welcome["subscriptions"].as_array().unwrap();
    let channels: Vec<&str> = subs
        .iter()
        .map(|s| s["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["notifications.user.alice"], "{welcome}");
    assert!(subs.iter().all(|s| s["recovered"] != true), "{welcome}");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), peer.from_session.recv())
            .await
            .is_err(),
        "nothing replayed"
    );
    // Every channel recoverable: replayed as usual.
    let mut peer = open(vec![("chat.room.1".into(), since(0, &epoch))]);
    let welcome = peer.frame().await;
    let sub = welcome["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["channel"] == "chat.room.1")
        .cloned()
        .unwrap();
    assert_eq!(sub["recovered"], true);
    let p = peer.frame().await;
    assert_eq!(
        (p["type"].clone(), p["offset"].clone()),
        (json!("pub"), json!(1))
    );
}

/// A node over [`Gated`], its gate closed.
fn gated_node(extra: &str) -> (Arc<Node>, Arc<Gated>) {
    let (open, _) = tokio::sync::watch::channel(false);
    let mut gate = None;
    let node = node_over(&config_toml("", extra), |inner| {
        let gated = Arc::new(Gated {
            inner,
            open,
            subscribes: AtomicUsize::new(0),
            unsubscribes: AtomicUsize::new(0),
            refuse_next: Default::default(),
        });
        gate = Some(gated.clone());
        gated
    });
    (node, gate.unwrap())
}

/// A subscribe that fails after the session took the channel but before it announced the
/// member (here: the history read fails) undoes the subscription without a `presence_leave`
/// for a `presence_join` that never happened; a subscribe that succeeds then unsubscribes
/// sends both. (Before: the failed one emitted a `presence_leave` on its own. The same undo
/// runs when an all-or-nothing resume drops its channels.)
#[tokio::test(start_paused = true)]
async fn a_subscribe_undone_before_joining_announces_no_leave() {
    let (node, gate) =
        gated_node("[backend]\nsecret = \"s\"\n[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n");
    gate.open.send_replace(true);
    let mut queue = node.take_webhook_queues().pop().expect("one webhook");
    let mut alice = connect(&node, "alice", Duration::from_secs(3600), true);
    assert_eq!(alice.next().await["type"], "welcome");
    let refused = alice.subscribe("lobby.broken").await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(alice.subscribe("lobby.ok").await["ok"], true);
    let r = alice
        .request(|id| ClientFrame::Unsubscribe {
            id,
            channel: "lobby.ok".into(),
        })
        .await;
    assert_eq!(r["ok"], true);
    let mut presence = Vec::new();
    while let Ok(e) = queue.try_recv() {
        if e.kind.starts_with("presence_") {
            presence.push((e.kind, e.channel.as_deref().unwrap_or_default().to_owned()));
        }
    }
    assert_eq!(
        presence,
        [
            ("presence_join", "lobby.ok".to_owned()),
            ("presence_leave", "lobby.ok".to_owned())
        ]
    );
}

/// Every local subscriber asks the broker and waits for it, not only the node's first: the
/// session reads the channel's position right after, and a second subscriber that read it while
/// the first one's broker subscription was still on its way could miss a publication (until the
/// next one revealed the gap). The broker counts the calls; each is undone once.
#[tokio::test(start_paused = true)]
async fn a_second_subscriber_waits_for_the_broker_like_the_first() {
    let (node, gate) = gated_node("");
    let hour = Duration::from_secs(3600);
    let mut alice = connect(&node, "alice", hour, true);
    let mut bob = connect(&node, "bob", hour, true);
    assert_eq!(alice.next().await["type"], "welcome");
    assert_eq!(bob.next().await["type"], "welcome");

    let subscribe = |id| ClientFrame::Subscribe {
        id: Some(id),
        channel: "chat.room.1".into(),
        since: None,
        token: None,
    };
    alice.send(subscribe(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    bob.send(subscribe(1));
    let early = tokio::time::timeout(Duration::from_secs(1), bob.next()).await;
    assert!(
        early.is_err(),
        "bob was answered while the node's subscription was on its way: {early:?}"
    );
    assert_eq!(gate.subscribes.load(Ordering::SeqCst), 2);

    gate.open.send_replace(true);
    for peer in [&mut alice, &mut bob] {
        let reply = peer.next().await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    drop(alice);
    drop(bob);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gate.unsubscribes.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "every subscribe is undone once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.unsubscribes.load(Ordering::SeqCst), 2);
}

/// `channel_occupied` and `channel_vacated` pair up when the node's first subscriber of a
/// channel fails at the broker while a later one succeeds: occupied is said by the one that
/// succeeded. (Before: occupied was said only by the node's first subscriber, so here never,
/// and vacated was said when the last left.)
#[tokio::test(start_paused = true)]
async fn occupied_and_vacated_pair_up_when_the_first_subscriber_fails() {
    let (node, gate) =
        gated_node("[backend]\nsecret = \"s\"\n[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n");
    let mut queue = node.take_webhook_queues().pop().expect("one webhook");
    let hour = Duration::from_secs(3600);
    let mut alice = connect(&node, "alice", hour, true);
    let mut bob = connect(&node, "bob", hour, true);
    assert_eq!(alice.next().await["type"], "welcome");
    assert_eq!(bob.next().await["type"], "welcome");
    gate.refuse_next.store(true, Ordering::SeqCst);
    let subscribe = |id| ClientFrame::Subscribe {
        id: Some(id),
        channel: "chat.room.1".into(),
        since: None,
        token: None,
    };
    alice.send(subscribe(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    bob.send(subscribe(1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    gate.open.send_replace(true);
    assert_eq!(
        alice.next().await["ok"],
        false,
        "the broker refused alice's"
    );
    assert_eq!(bob.next().await["ok"], true);
    drop(bob);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    while !events.contains(&"channel_vacated") {
        assert!(Instant::now() < deadline, "no vacated: {events:?}");
        while let Ok(e) = queue.try_recv() {
            if e.kind.starts_with("channel_") && e.channel.as_deref() == Some("chat.room.1") {
                events.push(e.kind);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(events, ["channel_occupied", "channel_vacated"]);
}
