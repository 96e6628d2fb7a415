//! Two real `herald` processes sharing one real `nats-server -js` (started by the test on a
//! free port, killed and restarted mid-stream to prove the gateway keeps its contract).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::identity::mint_hs256;
use herald_testkit::{Api, HeraldBin, HeraldProcess, NatsServer, TcpProxy, WsClient, eventually};
use serde_json::{Value, json};

const SECRET: &str = "nats-test-secret";
const KEY: &str = "nats-test-key";

fn config(nats_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
hs256_secret = "{SECRET}"
[api]
key = "{KEY}"
[broker]
kind = "nats"
url = "{nats_url}"
presence_ttl = "2s"

[[channel]]
name = "blog.article.feed"
scope = "public"
history = {{ size = 1000, ttl = "10m" }}
schema = {{ type = "object" }}

[[channel]]
name = "chat.room.{{roomId}}"
scope = "authenticated"
presence = true
schema = {{ type = "object" }}
"#
    )
}

/// One gateway process on the shared NATS, with its API.
struct Node {
    process: HeraldProcess,
    api: Api,
}

impl Node {
    fn start(nats: &NatsServer) -> Node {
        Self::start_on(&nats.url())
    }

    fn start_on(url: &str) -> Node {
        let process = HeraldProcess::builder(config(url))
            .bin(HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald")))
            .start();
        let api = Api::new(process.url(), KEY);
        Node { process, api }
    }

    async fn client(&self, user: &str) -> WsClient {
        let token = mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(600)).unwrap();
        WsClient::connect(&self.process.ws_url(), Some(&token)).await
    }

    async fn ready(&self) -> u16 {
        self.api.get("/readyz").await.0
    }
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
}

/// Publications through either node reach subscribers on both with one offset sequence; a
/// client away from node A recovers exactly what it missed on node B; presence spans nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_recovery_and_presence() {
    let nats = NatsServer::start();
    let (a, b) = (Node::start(&nats), Node::start(&nats));
    let mut on_a = a.client("u1").await;
    let mut on_b = b.client("u2").await;
    let first = on_a.subscribe("blog.article.feed", None).await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(on_b.subscribe("blog.article.feed", None).await["ok"], true);
    for n in 0..6 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (status, body) = node.api.publish("blog.article.feed", json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], n + 1);
    }
    for c in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(c.next().await);
        }
        assert_eq!(offsets(&got), (1..=6).collect::<Vec<_>>());
        assert_eq!(got[3]["data"]["n"], 3);
    }
    // Away from A after offset 6; five more through B; back on B with `since`.
    let since = json!({"offset": 6, "epoch": first["epoch"]});
    drop(on_a);
    for n in 6..11 {
        b.api.publish("blog.article.feed", json!({"n": n})).await;
    }
    let mut back = b.client("u1").await;
    let r = back.subscribe("blog.article.feed", Some(since)).await;
    assert_eq!(r["recovered"], true, "{r}");
    let pubs = r["publications"].as_array().unwrap();
    assert_eq!(offsets(pubs), vec![7, 8, 9, 10, 11]);
    assert_eq!(pubs[0]["data"]["n"], 6);

    let mut erin = a.client("erin").await;
    let mut frank = b.client("frank").await;
    assert_eq!(erin.subscribe("chat.room.1", None).await["ok"], true);
    assert_eq!(frank.subscribe("chat.room.1", None).await["ok"], true);
    let join = erin.next().await;
    assert_eq!(
        (join["type"].as_str(), join["user"].as_str()),
        (Some("join"), Some("frank")),
        "{join}"
    );
    let (_, p) = a.api.get("/v1/channels/chat.room.1/presence").await;
    assert_eq!(p["clients"].as_array().unwrap().len(), 2, "{p}");
}

/// `nats-server` killed while node B publishes to a subscriber on node A, then restarted
/// with its store: publishes during the outage answer 503 (never a silent drop), both nodes'
/// `/readyz` say 503 while it lasts and 200 after, and the subscriber ends with every
/// acknowledged publication exactly once and in order, through live delivery or, after an
/// `unsubscribed{reason:"resubscribe"}`, through recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_no_acknowledged_publication() {
    let mut nats = NatsServer::start();
    let (a, b) = (Node::start(&nats), Node::start(&nats));
    let mut c = a.client("grace").await;
    let r = c.subscribe("blog.article.feed", None).await;
    let epoch = r["epoch"].clone();

    // The publisher: one publication every 20 ms through B, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let api = Api::new(b.process.url(), KEY);
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut acked, mut refused) = (BTreeSet::new(), 0u32);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (status, body) = api.publish("blog.article.feed", json!({"n": n})).await;
                match status {
                    200 => {
                        acked.insert(body["offset"].as_u64().unwrap());
                    }
                    503 => refused += 1,
                    other => panic!("publish answered {other}: {body}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, refused)
        })
    };
    // Reads the subscriber until `until` offsets are in, recovering when told to.
    let mut seen: Vec<u64> = Vec::new();
    let mut resubscribed = 0;
    let mut read = async |c: &mut WsClient, seen: &mut Vec<u64>, target: u64| {
        while seen.last().copied().unwrap_or(0) < target {
            let f = c.next().await;
            match f["type"].as_str() {
                Some("pub") => seen.push(f["offset"].as_u64().unwrap()),
                Some("unsubscribed") => {
                    assert_eq!(f["reason"], "resubscribe", "{f}");
                    let since =
                        json!({"offset": seen.last().copied().unwrap_or(0), "epoch": epoch});
                    let r = c.subscribe("blog.article.feed", Some(since)).await;
                    assert_eq!(r["recovered"], true, "the store survived: {r}");
                    seen.extend(offsets(r["publications"].as_array().unwrap()));
                    resubscribed += 1;
                }
                _ => {}
            }
        }
    };
    read(&mut c, &mut seen, 10).await;

    nats.kill();
    for node in [&a, &b] {
        eventually(
            Duration::from_secs(5),
            "/readyz 503 while nats is down",
            || async { (node.ready().await == 503).then_some(()) },
        )
        .await;
    }
    // Longer than a publish waits for its acknowledgement (2 s): some are refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    for node in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "/readyz 200 once nats is back",
            || async { (node.ready().await == 200).then_some(()) },
        )
        .await;
    }
    // Let the publisher go on after the restart, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = publisher.await.unwrap();
    assert!(refused > 0, "publishing during the outage must be refused");
    let last = *acked.last().unwrap();
    read(&mut c, &mut seen, last).await;
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "in order, no gap, no duplicate ({resubscribed} resubscribes)"
    );
    assert!(
        acked.iter().all(|o| seen.contains(o)),
        "an acknowledged publication was lost"
    );
    eprintln!(
        "acknowledged {}, refused {refused}, received {}, resubscribes {resubscribed}",
        acked.len(),
        seen.len()
    );
}

/// Node A cut off from NATS while node B keeps publishing: A's `/readyz` says 503 (B's stays
/// 200), and when the link is back A's subscriber is told `unsubscribed{reason:"resubscribe"}`
/// and recovers exactly the publications it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_makes_its_subscribers_recover() {
    let nats = NatsServer::start();
    let proxy = TcpProxy::start(nats.port).await;
    let a = Node::start_on(&format!("nats://127.0.0.1:{}", proxy.port));
    let b = Node::start(&nats);
    let mut c = a.client("heidi").await;
    let r = c.subscribe("blog.article.feed", None).await;
    let epoch = r["epoch"].clone();
    let (status, _) = b.api.publish("blog.article.feed", json!({"n": 1})).await;
    assert_eq!(status, 200);
    let first = c.next().await;
    assert_eq!(first["offset"], 1, "{first}");

    proxy.set_cut(true);
    eventually(
        Duration::from_secs(15),
        "A's /readyz 503 while cut off",
        || async { (a.ready().await == 503).then_some(()) },
    )
    .await;
    assert_eq!(b.ready().await, 200, "B still reaches NATS");
    for n in 2..=4 {
        let (status, body) = b.api.publish("blog.article.feed", json!({"n": n})).await;
        assert_eq!(status, 200, "{body}");
    }
    proxy.set_cut(false);
    eventually(Duration::from_secs(10), "A ready again", || async {
        (a.ready().await == 200).then_some(())
    })
    .await;
    let notice = c.next().await;
    assert_eq!(
        (notice["type"].as_str(), notice["reason"].as_str()),
        (Some("unsubscribed"), Some("resubscribe")),
        "{notice}"
    );
    let r = c
        .subscribe(
            "blog.article.feed",
            Some(json!({"offset": 1, "epoch": epoch})),
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        offsets(r["publications"].as_array().unwrap()),
        vec![2, 3, 4]
    );
    b.api.publish("blog.article.feed", json!({"n": 5})).await;
    assert_eq!(c.next().await["offset"], 5);
}
