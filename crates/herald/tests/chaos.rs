//! Chaos (issue 12, acceptance 4): a node is killed with SIGKILL while clients on it and on a
//! surviving node are subscribed, publishing and in a presence room, all on one real Redis.
//!
//! What must hold: the survivors see `leave` for every member of the dead node within
//! `broker.presence_ttl`; every client of the dead node that reconnects to the survivor and
//! resubscribes with `since` gets every publication it missed (no gap, no duplicate, against
//! the offsets the publishers were acknowledged); the survivor's subscribers never miss one;
//! and the survivor's `/readyz` stays honest: ready throughout the node's death, not ready
//! while Redis is down, ready again once it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_core::identity::mint_hs256;
use herald_testkit::{Api, HeraldBin, HeraldProcess, RedisServer, WsClient, eventually};
use serde_json::{Value, json};

const SECRET: &str = "chaos-secret";
const KEY: &str = "chaos-key";
const PRESENCE_TTL: Duration = Duration::from_secs(2);
const ROOM: &str = "chat.room.chaos";
const FEED: &str = "blog.article.feed";

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
history = {{ size = 10000, ttl = "10m" }}
schema = {{ type = "object" }}

[[channel]]
name = "chat.room.{{roomId}}"
scope = "authenticated"
publish = "authenticated"
presence = true
history = {{ size = 10000, ttl = "10m" }}
schema = {{ type = "object" }}
"#
    )
}

fn start(redis: &RedisServer) -> HeraldProcess {
    HeraldProcess::builder(config(&redis.url()))
        .bin(HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald")))
        .start()
}

async fn connect(node: &HeraldProcess, user: &str) -> WsClient {
    let token = mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(600)).unwrap();
    WsClient::connect(&node.ws_url(), Some(&token)).await
}

/// What one subscriber saw, per channel.
#[derive(Debug, Default)]
struct Seen {
    /// Offsets received (live `pub` frames and publications replayed by a recovering
    /// subscribe), in arrival order.
    offsets: HashMap<String, Vec<u64>>,
    /// Where the subscriber stands, per channel: what it resubscribes `since`.
    position: HashMap<String, Value>,
    /// `leave` events: (client id, when).
    leaves: Vec<(String, Instant)>,
    /// Frames that should never come here (`unsubscribed`, errors, …).
    unexpected: Vec<Value>,
}

impl Seen {
    fn absorb(&mut self, f: &Value) {
        match f["type"].as_str() {
            Some("pub") => self.record(f["channel"].as_str().unwrap(), f),
            Some("leave") => self
                .leaves
                .push((f["client"].as_str().unwrap().to_owned(), Instant::now())),
            Some("join") | Some("reply") => {}
            _ => self.unexpected.push(f.clone()),
        }
    }

    fn record(&mut self, channel: &str, p: &Value) {
        let offset = p["offset"].as_u64().unwrap();
        self.offsets
            .entry(channel.to_owned())
            .or_default()
            .push(offset);
        let epoch = self.position[channel]["epoch"].clone();
        self.position.insert(
            channel.to_owned(),
            json!({"offset": offset, "epoch": epoch}),
        );
    }

    fn last(&self, channel: &str) -> u64 {
        self.position[channel]["offset"].as_u64().unwrap()
    }

    /// Subscribes (recovering from the known position, if any), recording everything that
    /// arrives meanwhile: a live `pub` of the first channel may come before the second reply.
    async fn subscribe(&mut self, c: &mut WsClient, channel: &str, id: u64) {
        let mut frame = json!({"type": "subscribe", "id": id, "channel": channel});
        let since = self.position.get(channel).cloned();
        if let Some(since) = &since {
            frame["since"] = since.clone();
        }
        c.send_json(&frame).await;
        loop {
            let f = c.next().await;
            if f["type"] == "reply" && f["id"] == id {
                assert_eq!(f["ok"], true, "subscribe {channel}: {f}");
                if let Some(since) = &since {
                    assert_eq!(f["recovered"], true, "recovery of {channel}: {f}");
                    assert_eq!(f["epoch"], since["epoch"]);
                }
                self.position.insert(
                    channel.to_owned(),
                    json!({"offset": f["offset"], "epoch": f["epoch"]}),
                );
                let start = f["offset"].as_u64().unwrap();
                let replay = f["publications"].as_array().unwrap();
                // The reply's offset is the channel's position; replayed ones lead up to it.
                let first = start + 1 - replay.len() as u64;
                if let Some(since) = &since {
                    assert_eq!(first, since["offset"].as_u64().unwrap() + 1, "{f}");
                }
                for p in replay {
                    let offset = p["offset"].as_u64().unwrap();
                    self.offsets
                        .entry(channel.to_owned())
                        .or_default()
                        .push(offset);
                }
                return;
            }
            self.absorb(&f);
        }
    }

    /// The offsets received on `channel` are exactly `from..=to`, each once, in order.
    fn assert_complete(&self, who: &str, channel: &str, from: u64, to: u64) {
        let got = self.offsets.get(channel).cloned().unwrap_or_default();
        let want: Vec<u64> = (from..=to).collect();
        assert!(
            got == want,
            "{who} on {channel}: expected {from}..={to}, got {} offsets; first difference at {:?}: {got:?}",
            got.len(),
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
}

/// Reads frames into `seen` until `done(seen)` holds, or until the socket ends after `killed`
/// was set (returns false then), or 20 s pass (a panic).
async fn read_until(
    c: &mut WsClient,
    seen: &mut Seen,
    killed: &AtomicBool,
    done: impl Fn(&Seen) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "reader stuck after 20 s at {:?}; leaves seen: {:?}; unexpected: {:?}",
            seen.position,
            seen.leaves,
            seen.unexpected
        );
        match c.next_within(Duration::from_millis(200)).await {
            Some(f) => seen.absorb(&f),
            // A quiet socket of a live node is just quiet; of a killed node it is gone.
            None if killed.load(Ordering::SeqCst) => return false,
            None => {}
        }
    }
    true
}

/// Publishes on `channel` until `stop`, through a v1 client; returns the acknowledged offsets.
async fn client_publisher(mut c: WsClient, channel: &str, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let frame = json!({"type": "publish", "id": n, "channel": channel, "data": {"n": n}});
        c.send_json(&frame).await;
        // A reply, or nothing because the node died under us.
        loop {
            match c.next_within(Duration::from_secs(2)).await {
                Some(f) if f["type"] == "reply" && f["id"] == n => {
                    assert_eq!(f["ok"], true, "{f}");
                    acked.push(f["offset"].as_u64().unwrap());
                    break;
                }
                Some(_) => {}
                None => return acked,
            }
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    acked
}

/// Publishes on `channel` until `stop` through the server API; returns the acknowledged offsets.
async fn api_publisher(api: Api, channel: &str, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (status, body) = api.publish(channel, json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
        acked.push(body["offset"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_node_while_clients_publish_subscribe_and_sit_in_presence() {
    let mut redis = RedisServer::start();
    let survivor = start(&redis);
    let mut victim = start(&redis);
    let api = Api::new(survivor.url(), KEY);
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    // The survivor's subscriber, and the dead node's subscribers (members of the room).
    let mut watcher = connect(&survivor, "watcher").await;
    let mut seen_w = Seen::default();
    seen_w.subscribe(&mut watcher, FEED, 1).await;
    seen_w.subscribe(&mut watcher, ROOM, 2).await;
    let mut members = Vec::new();
    for user in ["victim-1", "victim-2"] {
        let mut c = connect(&victim, user).await;
        let mut seen = Seen::default();
        seen.subscribe(&mut c, FEED, 1).await;
        seen.subscribe(&mut c, ROOM, 2).await;
        let client = c.welcome["client"].as_str().unwrap().to_owned();
        members.push((user, client, c, seen));
    }
    let start_feed: HashMap<&str, u64> = members
        .iter()
        .map(|(u, _, _, s)| (*u, s.last(FEED) + 1))
        .collect();
    let start_room: HashMap<&str, u64> = members
        .iter()
        .map(|(u, _, _, s)| (*u, s.last(ROOM) + 1))
        .collect();
    let (w_feed, w_room) = (seen_w.last(FEED) + 1, seen_w.last(ROOM) + 1);

    // Publishers on both nodes: the server API on the survivor, v1 clients on each node.
    let publishers = vec![
        tokio::spawn(api_publisher(api.clone(), FEED, stop.clone())),
        tokio::spawn(client_publisher(
            connect(&survivor, "talker-a").await,
            ROOM,
            stop.clone(),
        )),
        tokio::spawn(client_publisher(
            connect(&victim, "talker-b").await,
            ROOM,
            stop.clone(),
        )),
    ];
    // The survivor's readiness, sampled throughout the node's death.
    let readiness = {
        let api = api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                answers.push(api.get("/readyz").await.0);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        })
    };

    // Traffic flows for a while, then the node dies without a goodbye.
    tokio::time::sleep(Duration::from_millis(800)).await;
    victim.kill();
    let killed_at = Instant::now();
    killed.store(true, Ordering::SeqCst);

    // Each member of the dead node reads what was still in its socket, then reconnects to
    // the survivor and resubscribes with `since`.
    let mut recovered = Vec::new();
    for (user, client, mut c, mut seen) in members {
        let ended = read_until(&mut c, &mut seen, &killed, |_| false).await;
        assert!(!ended);
        drop(c);
        let mut c = connect(&survivor, user).await;
        seen.subscribe(&mut c, FEED, 1).await;
        seen.subscribe(&mut c, ROOM, 2).await;
        recovered.push((user, client, c, seen));
    }

    // The watcher sees every member of the dead node leave, within the presence TTL.
    let gone: Vec<String> = recovered.iter().map(|(_, id, ..)| id.clone()).collect();
    let left = |s: &Seen| gone.iter().all(|id| s.leaves.iter().any(|(c, _)| c == id));
    let ok = read_until(&mut watcher, &mut seen_w, &AtomicBool::new(false), left).await;
    assert!(ok);
    for id in &gone {
        let (_, at) = seen_w.leaves.iter().find(|(c, _)| c == id).unwrap();
        let after = at.duration_since(killed_at);
        assert!(
            after <= PRESENCE_TTL,
            "{id} left {after:?} after the kill, over the presence TTL {PRESENCE_TTL:?}"
        );
    }

    // Let traffic run on the survivor alone, then stop and collect the acknowledgements.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<Vec<u64>> = Vec::new();
    for p in publishers {
        acked.push(p.await.unwrap());
    }
    let ready_answers = readiness.await.unwrap();
    assert!(
        ready_answers.iter().all(|s| *s == 200),
        "the survivor's /readyz while Redis was up: {ready_answers:?}"
    );
    assert!(
        acked.iter().all(|a| !a.is_empty()),
        "every publisher published: {acked:?}"
    );
    assert!(
        acked[2].len() < acked[1].len(),
        "the dead node's publisher stopped with it"
    );
    let end_of = |channel: &'static str| {
        let api = api.clone();
        async move {
            let (_, h) = api
                .get(&format!("/v1/channels/{channel}/history?limit=0"))
                .await;
            h["offset"].as_u64().unwrap()
        }
    };
    let (feed_end, room_end) = (end_of(FEED).await, end_of(ROOM).await);
    // Every acknowledged publication is within what the channels hold.
    assert_eq!(*acked[0].last().unwrap(), feed_end);
    assert!(acked[1..].iter().flatten().all(|o| *o <= room_end));

    // Everybody, survivor or recovered, has every offset from where it started to the end.
    let all_in = |s: &Seen| s.last(FEED) >= feed_end && s.last(ROOM) >= room_end;
    let never = AtomicBool::new(false);
    assert!(read_until(&mut watcher, &mut seen_w, &never, all_in).await);
    seen_w.assert_complete("the survivor's watcher", FEED, w_feed, feed_end);
    seen_w.assert_complete("the survivor's watcher", ROOM, w_room, room_end);
    assert!(seen_w.unexpected.is_empty(), "{:?}", seen_w.unexpected);
    for (user, _, c, seen) in &mut recovered {
        assert!(read_until(c, seen, &never, all_in).await);
        seen.assert_complete(user, FEED, start_feed[*user], feed_end);
        seen.assert_complete(user, ROOM, start_room[*user], room_end);
        assert!(seen.unexpected.is_empty(), "{user}: {:?}", seen.unexpected);
    }
    // Presence now lists the watcher and the recovered members (new connections), only.
    let (_, p) = api.get(&format!("/v1/channels/{ROOM}/presence")).await;
    let mut clients: Vec<&str> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["client"].as_str())
        .collect();
    clients.sort();
    let mut want: Vec<&str> = recovered
        .iter()
        .map(|(_, _, c, _)| c.welcome["client"].as_str().unwrap())
        .chain([watcher.welcome["client"].as_str().unwrap()])
        .collect();
    want.sort();
    assert_eq!(clients, want, "{p}");

    // Readiness follows Redis: not ready while it is down, ready again once it is back.
    redis.kill();
    eventually(
        Duration::from_secs(5),
        "/readyz to say not ready without Redis",
        || async { (api.get("/readyz").await.0 == 503).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        api.get("/readyz").await.0,
        503,
        "still not ready: Redis is still down"
    );
    redis.restart();
    eventually(
        Duration::from_secs(10),
        "/readyz to be ready with Redis back",
        || async { (api.get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    let (status, body) = api.publish(FEED, json!({"after": "redis"})).await;
    assert_eq!(status, 200, "{body}");
}
