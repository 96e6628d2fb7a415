//! Per user and per channel means cluster-wide (DESIGN §7, issue 12 class 3): kicks, the
//! per-user connection limit and presence `leave` events hold across real `herald` processes
//! on one real `redis-server`, including when a node dies without a goodbye (SIGKILL).

use std::time::{Duration, Instant};

use herald_core::identity::mint_hs256;
use herald_testkit::{Api, HeraldBin, HeraldProcess, RedisServer, WsClient, eventually};
use serde_json::Value;

const SECRET: &str = "cluster-test-secret";
const KEY: &str = "cluster-test-key";
/// `broker.presence_ttl` of every node in these tests.
const PRESENCE_TTL: Duration = Duration::from_secs(2);

fn config(redis_url: &str, max_per_user: usize) -> String {
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
[limits]
max_connections_per_user = {max_per_user}

[[channel]]
name = "chat.room.{{roomId}}"
scope = "authenticated"
presence = true
schema = {{ type = "object" }}
"#
    )
}

struct Node {
    process: HeraldProcess,
    api: Api,
}

impl Node {
    fn start(redis: &RedisServer, max_per_user: usize) -> Node {
        let process = HeraldProcess::builder(config(&redis.url(), max_per_user))
            .bin(HeraldBin::locate(option_env!("CARGO_BIN_EXE_herald")))
            .start();
        let api = Api::new(process.url(), KEY);
        Node { process, api }
    }

    fn token(user: &str) -> String {
        mint_hs256(SECRET, user, &[], "roles", Duration::from_secs(600)).unwrap()
    }

    async fn client(&self, user: &str) -> WsClient {
        WsClient::connect(&self.process.ws_url(), Some(&Self::token(user))).await
    }

    /// The HTTP status of an upgrade attempt (101 when admitted).
    async fn upgrade_status(&self, user: &str) -> (u16, Option<WsClient>) {
        match WsClient::open(&self.process.ws_url(), Some(&Self::token(user))).await {
            Ok(c) => (101, Some(c)),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => (res.status().as_u16(), None),
            Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
        }
    }
}

fn close_code(c: &herald_testkit::Closed) -> Option<u16> {
    c.close.as_ref().map(|f| u16::from(f.code))
}

/// The issue's example: a user connected once to each node; the kick on A closes both, says
/// so, and leaves other users alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_closes_the_users_connections_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis, 64), Node::start(&redis, 64));
    let mut alice_a = a.client("alice").await;
    let mut alice_b = b.client("alice").await;
    let mut bob_b = b.client("bob").await;

    let (status, body) = a.api.post("/v1/users/alice/disconnect", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 2, "both of alice's sessions: {body}");
    for (name, c) in [("on A", &mut alice_a), ("on B", &mut alice_b)] {
        let closed = c.closed(Duration::from_secs(5)).await;
        assert_eq!(close_code(&closed), Some(4403), "alice {name}: {closed:?}");
        assert_eq!(closed.disconnect.unwrap()["reconnect"], false);
    }
    assert_eq!(
        bob_b.request(serde_json::json!({"type": "ping"})).await["ok"],
        true,
        "bob stays connected"
    );
    // Nobody left to kick: the count says so, from either node.
    eventually(
        Duration::from_secs(5),
        "the kicked sessions to be gone",
        || async {
            let (_, body) = b.api.post("/v1/users/alice/disconnect", Value::Null).await;
            (body["disconnected"] == 0).then_some(())
        },
    )
    .await;
}

/// `limits.max_connections_per_user` counts the user's connections on every node, and a
/// closed connection gives its slot back cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_every_node() {
    let redis = RedisServer::start();
    let (a, b) = (Node::start(&redis, 2), Node::start(&redis, 2));
    let first = a.client("carol").await;
    let _second = b.client("carol").await;
    let (status, _) = a.upgrade_status("carol").await;
    assert_eq!(status, 429, "a third connection on A");
    let (status, _) = b.upgrade_status("carol").await;
    assert_eq!(status, 429, "a third connection on B");
    let _dave = a.client("dave").await;

    drop(first);
    let _third = eventually(
        Duration::from_secs(5),
        "the closed connection's slot to be free on the other node",
        || async {
            match b.upgrade_status("carol").await {
                (101, c) => c,
                _ => None,
            }
        },
    )
    .await;
}

/// A node killed with SIGKILL sends no goodbye: the survivors still see `leave` for every
/// member it had, within `broker.presence_ttl`, and its members vanish from presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_see_leave_for_every_member_of_a_killed_node() {
    let redis = RedisServer::start();
    let a = Node::start(&redis, 64);
    let mut b = Node::start(&redis, 64);
    let mut erin = a.client("erin").await;
    assert_eq!(erin.subscribe("chat.room.1", None).await["ok"], true);
    let mut members = Vec::new();
    // Kept open until the node dies: a closed client would say goodbye on its own.
    let mut clients = Vec::new();
    for (user, room) in [
        ("frank", "chat.room.1"),
        ("gina", "chat.room.1"),
        ("frank", "chat.room.2"),
    ] {
        let mut c = b.client(user).await;
        assert_eq!(c.subscribe(room, None).await["ok"], true);
        members.push((c.welcome["client"].as_str().unwrap().to_owned(), room));
        clients.push(c);
    }
    for _ in 0..2 {
        let f = erin.next().await;
        assert_eq!(f["type"], "join", "{f}");
    }
    // erin also watches room 2, where nobody of A is a member.
    assert_eq!(erin.subscribe("chat.room.2", None).await["ok"], true);

    b.process.kill();
    let killed = Instant::now();
    let mut left = Vec::new();
    while left.len() < members.len() {
        let Some(f) = erin.next_within(PRESENCE_TTL * 2).await else {
            panic!(
                "only {left:?} of {members:?} left within {:?}",
                PRESENCE_TTL * 2
            );
        };
        if f["type"] == "leave" {
            left.push((
                f["client"].as_str().unwrap().to_owned(),
                f["channel"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let took = killed.elapsed();
    assert!(
        took <= PRESENCE_TTL,
        "leave events took {took:?}, over the presence TTL"
    );
    let mut want: Vec<(String, String)> = members
        .iter()
        .map(|(c, r)| (c.clone(), (*r).to_owned()))
        .collect();
    want.sort();
    left.sort();
    assert_eq!(left, want);
    for room in ["chat.room.1", "chat.room.2"] {
        let (_, p) = a.api.get(&format!("/v1/channels/{room}/presence")).await;
        let users: Vec<&str> = p["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["user"].as_str())
            .collect();
        assert_eq!(users, ["erin"], "{room}: {p}");
    }
}
