//! End-to-end tests of history and recovery, presence, kicks, token lifetime and idempotent
//! publishing, over real sockets.

mod common;

use std::time::Duration;

use common::{Client, TestServer, token};
use serde_json::{Value, json};

async fn publish_n(s: &TestServer, channel: &str, from: u64, to: u64) {
    for n in from..=to {
        let (status, body) = s
            .publish(channel, json!({"id": n.to_string(), "title": "t"}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

fn ids(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

/// Acceptance 1: `since` two-thirds back in a 10-message history → exactly the missing ones.
#[tokio::test]
async fn recovers_exactly_the_missing_publications() {
    let s = TestServer::start().await;
    publish_n(&s, "blog.article.feed", 1, 10).await;
    let mut c = s.client("alice").await;
    let first = c.subscribe("blog.article.feed").await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert_eq!(first["offset"], 10);
    let r = c
        .request(json!({"type": "unsubscribe", "channel": "blog.article.feed"}))
        .await;
    assert_eq!(r["ok"], true);
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed",
                        "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(ids(&r["publications"]), (4..=10).collect::<Vec<_>>());
    assert_eq!(r["publications"][0]["data"]["id"], "4");
    // Nothing is sent twice afterwards.
    assert!(c.silent_for(Duration::from_millis(200)).await);
    publish_n(&s, "blog.article.feed", 11, 11).await;
    assert_eq!(c.next().await["offset"], 11);

    // The history API agrees.
    let (status, h) = s
        .get("/v1/channels/blog.article.feed/history?since=8&limit=10")
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(ids(&h["publications"]), vec![9, 10, 11]);
    assert_eq!(h["epoch"], epoch.as_str());
    let (status, _) = s.get("/v1/channels/ops.alerts/history").await;
    assert_eq!(status, 404, "no history configured");
}

/// Acceptance 2: wrong epoch, or a gap older than `size` → `recovered: false`.
#[tokio::test]
async fn unrecoverable_gaps_say_so() {
    let s = TestServer::start().await;
    for n in 1..=8u64 {
        s.publish("history.small", json!({"n": n})).await;
    }
    let mut c = s.client("alice").await;
    let epoch = {
        let r = c.subscribe("history.small").await;
        c.request(json!({"type": "unsubscribe", "channel": "history.small"}))
            .await;
        r["epoch"].as_str().unwrap().to_owned()
    };
    let r = c
        .request(json!({"type": "subscribe", "channel": "history.small",
                        "since": {"offset": 2, "epoch": "some-other-epoch"}}))
        .await;
    assert_eq!(
        (r["ok"].as_bool(), r["recovered"].as_bool()),
        (Some(true), Some(false)),
        "{r}"
    );
    assert_eq!(r["publications"], json!([]));
    assert_eq!(r["offset"], 8);
    c.request(json!({"type": "unsubscribe", "channel": "history.small"}))
        .await;
    // Offsets 3..8 are retained (size 5 keeps 4..8): 3 is gone.
    let r = c
        .request(json!({"type": "subscribe", "channel": "history.small",
                        "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    c.request(json!({"type": "unsubscribe", "channel": "history.small"}))
        .await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "history.small",
                        "since": {"offset": 3, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(ids(&r["publications"]), vec![4, 5, 6, 7, 8]);
}

/// The replay cap: a gap larger than `limits.max_recovery` is refused, not replayed.
#[tokio::test]
async fn recovery_is_capped() {
    let s = TestServer::with_config(&common::config_toml("[limits]\nmax_recovery = 3")).await;
    publish_n(&s, "blog.article.feed", 1, 8).await;
    let mut c = s.client("alice").await;
    let epoch = c.subscribe("blog.article.feed").await["epoch"].clone();
    c.request(json!({"type": "unsubscribe", "channel": "blog.article.feed"}))
        .await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed",
                        "since": {"offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], false, "6 missing > cap 3: {r}");
    c.request(json!({"type": "unsubscribe", "channel": "blog.article.feed"}))
        .await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed",
                        "since": {"offset": 5, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(ids(&r["publications"]), vec![6, 7, 8]);
}

/// Acceptance 3: away for 20 messages, back with `since` while a publisher keeps going: every
/// offset exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_during_publishing_has_no_gap_and_no_duplicate() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let r = c.subscribe("blog.article.feed").await;
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    publish_n(&s, "blog.article.feed", 1, 5).await;
    for n in 1..=5 {
        assert_eq!(c.next().await["offset"], n);
    }
    drop(c);
    publish_n(&s, "blog.article.feed", 6, 25).await;

    const LAST: u64 = 125;
    let publisher = async {
        publish_n(&s, "blog.article.feed", 26, LAST).await;
    };
    let reader = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut c = s.client("alice").await;
        let r = c
            .request(json!({"type": "subscribe", "channel": "blog.article.feed",
                            "since": {"offset": 5, "epoch": epoch}}))
            .await;
        assert_eq!(r["recovered"], true, "{r}");
        let mut seen: Vec<u64> = ids(&r["publications"]);
        while seen.last().copied().unwrap_or(5) < LAST {
            let p = c.next().await;
            assert_eq!(p["type"], "pub");
            seen.push(p["offset"].as_u64().unwrap());
        }
        assert_eq!(seen, (6..=LAST).collect::<Vec<_>>());
        assert!(c.silent_for(Duration::from_millis(200)).await);
    };
    tokio::join!(publisher, reader);
}

/// Acceptance 4: a restarted gateway has a new epoch; the old one gives `recovered: false`.
#[tokio::test]
async fn restart_changes_the_epoch() {
    let s = TestServer::start().await;
    publish_n(&s, "blog.article.feed", 1, 3).await;
    let mut c = s.client("alice").await;
    let before = c.subscribe("blog.article.feed").await;
    drop(c);
    drop(s);
    let s = TestServer::start().await;
    publish_n(&s, "blog.article.feed", 1, 3).await;
    let mut c = s.client("alice").await;
    let r = c
        .request(json!({"type": "subscribe", "channel": "blog.article.feed",
                        "since": {"offset": 3, "epoch": before["epoch"]}}))
        .await;
    assert_ne!(r["epoch"], before["epoch"]);
    assert_eq!(r["recovered"], false, "{r}");
}

/// Acceptance 5: presence lists both users; join and leave reach the other subscriber; leave
/// also fires when a connection dies without unsubscribing.
#[tokio::test]
async fn presence_join_and_leave() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    assert_eq!(alice.subscribe("chat.room.7").await["ok"], true);
    let mut bob = s.client("bob").await;
    assert_eq!(bob.subscribe("chat.room.7").await["ok"], true);
    let join = alice.next().await;
    assert_eq!(join["type"], "join");
    assert_eq!(join["user"], "bob");
    assert_eq!(join["client"], bob.welcome["client"]);

    let r = alice
        .request(json!({"type": "presence", "channel": "chat.room.7"}))
        .await;
    let users: Vec<&str> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    let mut sorted = users.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["alice", "bob"], "{r}");
    let (status, p) = s.get("/v1/channels/chat.room.7/presence").await;
    assert_eq!(status, 200);
    assert_eq!(p["clients"].as_array().unwrap().len(), 2);
    // Not a presence channel, and not allowed: errors.
    let r = alice
        .request(json!({"type": "presence", "channel": "blog.article.feed"}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request");
    let r = alice
        .request(json!({"type": "presence", "channel": "ops.alerts"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");

    // Unsubscribe → leave.
    bob.request(json!({"type": "unsubscribe", "channel": "chat.room.7"}))
        .await;
    let leave = alice.next().await;
    assert_eq!(
        (leave["type"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("bob"))
    );

    // A connection killed without unsubscribing → leave too.
    let mut carol = s.client("carol").await;
    assert_eq!(carol.subscribe("chat.room.7").await["ok"], true);
    assert_eq!(alice.next().await["type"], "join");
    let tcp = carol.ws.get_ref();
    if let tokio_tungstenite::MaybeTlsStream::Plain(stream) = tcp {
        socket2::SockRef::from(stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(carol); // RST, no close frame
    let leave = alice.next().await;
    assert_eq!(
        (leave["type"].as_str(), leave["user"].as_str()),
        (Some("leave"), Some("carol"))
    );
    let (_, p) = s.get("/v1/channels/chat.room.7/presence").await;
    assert_eq!(p["clients"].as_array().unwrap().len(), 1);
}

/// Acceptance 6: the same idempotency key twice → same offset, one delivery.
#[tokio::test]
async fn idempotency_key_delivers_once() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let body = json!({"channel": "notifications.user.alice", "data": {"type": "system"},
                      "idempotency_key": "invoice-17"});
    let (_, first) = s.post("/v1/publish", body.clone()).await;
    let (_, second) = s.post("/v1/publish", body).await;
    assert_eq!(first, second);
    assert_eq!(first["offset"], 1);
    assert_eq!(c.next().await["offset"], 1);
    assert!(c.silent_for(Duration::from_millis(300)).await);
}

/// Acceptance 7: kick closes every connection of that user with 4403 and nobody else's.
#[tokio::test]
async fn kick_closes_only_that_user() {
    let s = TestServer::start().await;
    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let mut bob = s.client("bob").await;
    let (status, body) = s.post("/v1/users/alice/disconnect", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["disconnected"], 2);
    for c in [&mut a1, &mut a2] {
        let bye = c.goodbye(Duration::from_secs(5)).await;
        let d = bye.disconnect.unwrap();
        assert_eq!(
            (d["code"].as_u64(), d["reconnect"].as_bool()),
            (Some(4403), Some(false))
        );
        assert_eq!(u16::from(bye.close.unwrap().code), 4403);
    }
    assert_eq!(bob.request(json!({"type": "ping"})).await["ok"], true);
    let (_, channels) = s.get("/v1/channels").await;
    assert_eq!(
        channels["channels"],
        json!([{"channel": "notifications.user.bob", "subscribers": 1}])
    );
}

/// A kick made after a publish was answered comes after that publication: the user's sessions
/// receive it, then the 4403 goodbye. The backend's "you were removed" then kick must not lose
/// the message to the kick overtaking it (the publish is answered before its fan-out, so a
/// kick that closes sessions at once would overtake every publication still being fanned out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_comes_after_the_publications_answered_before_it() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    // 200 readers of a broadcast keep the fan-out busy while the kick arrives.
    let mut crowd = Vec::new();
    for i in 0..200 {
        let mut c = s.client(&format!("crowd{i}")).await;
        assert_eq!(c.subscribe("bench.feed").await["ok"], true);
        crowd.push(c);
    }
    const N: usize = 500;
    let items: Vec<Value> = (0..N)
        .flat_map(|n| {
            [
                json!({"channel": "bench.feed", "data": {"n": n}}),
                json!({"channel": "notifications.user.alice", "data": {"type": "system", "text": n.to_string()}}),
            ]
        })
        .collect();
    let (status, body) = s
        .post("/v1/publish/batch", json!({"publications": items}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.post("/v1/users/alice/disconnect", json!({})).await;
    assert_eq!((status, body["disconnected"].clone()), (200, json!(1)));
    let bye = alice.goodbye(Duration::from_secs(10)).await;
    assert_eq!(bye.disconnect.expect("told why")["code"], 4403);
    let texts: Vec<String> = bye
        .pubs
        .iter()
        .map(|p| p["data"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, (0..N).map(|n| n.to_string()).collect::<Vec<_>>());
}

/// Acceptance 8: a 3-second token with a refresh stays open past 4 s; one without gets 4001.
#[tokio::test]
async fn token_expiry_and_refresh() {
    let s = TestServer::start().await;
    let short = token("alice", &[], Duration::from_secs(3));
    let mut refreshed = Client::connect(&s.ws_url(), Some(&short)).await.unwrap();
    let mut expiring = Client::connect(&s.ws_url(), Some(&short)).await.unwrap();
    refreshed.next().await;
    expiring.next().await;

    let r = refreshed
        .request(json!({"type": "refresh", "token": token("bob", &[], Duration::from_secs(60))}))
        .await;
    assert_eq!(
        r["error"]["code"], "forbidden",
        "another user's token is refused"
    );
    let r = refreshed
        .request(json!({"type": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(r["error"]["code"], "unauthorized");
    let r = refreshed
        .request(json!({"type": "refresh", "token": token("alice", &[], Duration::from_secs(60))}))
        .await;
    assert_eq!(r["ok"], true);

    let bye = expiring.goodbye(Duration::from_secs(6)).await;
    let d = bye.disconnect.expect("expired connection is told");
    assert_eq!(
        (d["code"].as_u64(), d["reconnect"].as_bool()),
        (Some(4001), Some(true))
    );
    // By now (> 3 s) the refreshed one is still open and answering.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(refreshed.request(json!({"type": "ping"})).await["ok"], true);
}
