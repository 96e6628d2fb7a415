//! What the Redis broker adds over the conformance suite: several nodes on one Redis, one of
//! which dies without a goodbye (its broker is dropped: it stops beating, as after SIGKILL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_conformance::{Recorder, channel};
use herald_core::protocol::ClientInfo;
use herald_core::protocol::raw_json;
use herald_core::{Broker, PresenceEvent, PublicationSink, PublishRequest};
use herald_redis::{RedisBroker, RedisOptions};
use herald_testkit::{RedisServer, TcpProxy};

const TTL: Duration = Duration::from_secs(1);

fn node(server: &RedisServer, sink: Arc<dyn PublicationSink>) -> RedisBroker {
    RedisBroker::start(
        RedisOptions {
            prefix: "herald-test".into(),
            presence_ttl: TTL,
            ..RedisOptions::new(server.url())
        },
        sink,
    )
    .unwrap()
}

/// A dead node's members leave (an event on every node, within the presence TTL) and its
/// sessions stop counting against the per-user limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_and_its_sessions_are_freed() {
    let server = RedisServer::start();
    let rec = Arc::new(Recorder::default());
    let survivor = node(&server, rec.clone());
    let dying = node(&server, Arc::new(Recorder::default()));
    let ch = channel("reaped");
    survivor.subscribe(&ch).await.unwrap();
    let member = ClientInfo {
        client: "dying-1".into(),
        user: Some("zoe".into()),
        info: None,
    };
    let stays = ClientInfo {
        client: "survivor-1".into(),
        user: Some("yan".into()),
        info: None,
    };
    dying.presence_add(&ch, member.clone()).await.unwrap();
    survivor.presence_add(&ch, stays.clone()).await.unwrap();
    assert!(dying.session_open(&member, 1).await.unwrap());
    let again = ClientInfo {
        client: "survivor-2".into(),
        user: Some("zoe".into()),
        info: None,
    };
    assert!(
        !survivor.session_open(&again, 1).await.unwrap(),
        "zoe is at her limit"
    );
    rec.until("two joins", |r| r.events(&ch).len() >= 2).await;

    drop(dying);
    let died = Instant::now();
    let leave = PresenceEvent::Leave(member.clone());
    let deadline = Instant::now() + TTL * 3;
    while !rec.events(&ch).contains(&leave) {
        assert!(Instant::now() < deadline, "no leave: {:?}", rec.events(&ch));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(died.elapsed() <= TTL, "leave after {:?}", died.elapsed());
    assert_eq!(survivor.presence(&ch).await.unwrap(), vec![stays.clone()]);
    assert!(
        survivor.session_open(&again, 1).await.unwrap(),
        "the dead node's slot is free"
    );
    assert_eq!(survivor.kick("zoe").await.unwrap(), 1);

    // The survivor itself is never reaped: its member stays past several TTLs.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(survivor.presence(&ch).await.unwrap(), vec![stays.clone()]);
    assert!(!rec.events(&ch).contains(&PresenceEvent::Leave(stays)));
}

/// Redis restarted empty: at their next beat the nodes put back their presence entries and
/// their sessions, so presence and the per-user limit are whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gets_every_nodes_members_and_sessions_back() {
    let mut server = RedisServer::start();
    let rec = Arc::new(Recorder::default());
    let a = node(&server, rec.clone());
    let ch = channel("back");
    a.subscribe(&ch).await.unwrap();
    let member = ClientInfo {
        client: "a-1".into(),
        user: Some("xia".into()),
        info: None,
    };
    a.presence_add(&ch, member.clone()).await.unwrap();
    assert!(a.session_open(&member, 1).await.unwrap());
    rec.until("the join", |r| !r.events(&ch).is_empty()).await;

    let observer_rec = Arc::new(Recorder::default());
    let observer = node(&server, observer_rec.clone());
    observer.subscribe(&ch).await.unwrap();
    server.kill();
    server.restart();
    // Redis came back empty: nobody knows `a`; its next beat puts its entries back.
    let deadline = Instant::now() + TTL * 5;
    loop {
        if observer.presence(&ch).await.ok() == Some(vec![member.clone()]) {
            break;
        }
        assert!(Instant::now() < deadline, "a's member never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = ClientInfo {
        client: "o-1".into(),
        user: Some("xia".into()),
        info: None,
    };
    assert!(
        !observer.session_open(&other, 1).await.unwrap(),
        "a's session counts again"
    );
}

/// A TCP proxy in front of Redis that can be cut (every connection dropped, new ones refused)
/// and restored: a network partition between one node and Redis.
struct Proxy {
    port: u16,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    async fn start(redis_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(tokio::sync::watch::Sender::new(false));
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: refused while cut
                }
                let mut cut = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// A node cut off from Redis for longer than its life is taken for dead by the others (its
/// members leave, its sessions stop counting); when the link is back it notices at its next
/// beat, announces its members again (`join`) and counts its sessions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_and_taken_for_dead_comes_back() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port).await;
    let rec = Arc::new(Recorder::default());
    let observer = node(&server, rec.clone());
    let cut_off = RedisBroker::start(
        RedisOptions {
            prefix: "herald-test".into(),
            presence_ttl: TTL,
            ..RedisOptions::new(format!("redis://127.0.0.1:{}", proxy.port))
        },
        Arc::new(Recorder::default()),
    )
    .unwrap();
    let ch = channel("partition");
    observer.subscribe(&ch).await.unwrap();
    let member = ClientInfo {
        client: "cut-1".into(),
        user: Some("wes".into()),
        info: None,
    };
    cut_off.presence_add(&ch, member.clone()).await.unwrap();
    assert!(cut_off.session_open(&member, 1).await.unwrap());
    rec.until("the join", |r| !r.events(&ch).is_empty()).await;

    proxy.set_cut(true);
    rec.until("the leave of the cut-off node's member", |r| {
        r.events(&ch)
            .contains(&PresenceEvent::Leave(member.clone()))
    })
    .await;
    assert!(observer.presence(&ch).await.unwrap().is_empty());
    let elsewhere = ClientInfo {
        client: "obs-1".into(),
        user: Some("wes".into()),
        info: None,
    };
    assert!(observer.session_open(&elsewhere, 2).await.unwrap());
    observer.session_close(&elsewhere).await.unwrap();

    proxy.set_cut(false);
    rec.until("the member to join again", |r| {
        r.events(&ch)
            == [
                PresenceEvent::Join(member.clone()),
                PresenceEvent::Leave(member.clone()),
                PresenceEvent::Join(member.clone()),
            ]
    })
    .await;
    assert_eq!(observer.presence(&ch).await.unwrap(), vec![member.clone()]);
    assert!(
        !observer.session_open(&elsewhere, 1).await.unwrap(),
        "the cut-off node's session counts again"
    );
}

/// A publication on `ch` saying what it comes after.
fn after(ch: &str, what: &str) -> PublishRequest {
    PublishRequest {
        channel: Arc::from(ch),
        data: raw_json(&serde_json::json!({ "after": what })),
        history: None,
        idempotency_key: None,
        from: None,
    }
}

/// A node `latency` away from Redis (every byte it sends is held that long by a proxy), ready;
/// the proxy must live as long as the node.
async fn far_node(
    server: &RedisServer,
    latency: Duration,
    sink: Arc<dyn PublicationSink>,
) -> (Arc<RedisBroker>, TcpProxy) {
    let proxy = TcpProxy::start_with_latency(server.port, latency).await;
    let far = RedisBroker::start(
        RedisOptions {
            prefix: "herald-test".into(),
            presence_ttl: TTL,
            ..RedisOptions::new(format!("redis://127.0.0.1:{}", proxy.port))
        },
        sink,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while far.health().await.is_err() {
        assert!(Instant::now() < deadline, "the far node never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Arc::new(far), proxy)
}

/// `Broker::subscribe` returns once the node receives the channel, also for a second local
/// subscriber whose call comes while the first one's SUBSCRIBE is still unanswered: the node
/// reads the channel's position next, and a publication made in between must reach it. Redis
/// is one network latency (300 ms) away from the subscribing node, so the first SUBSCRIBE is
/// in flight for that long; the publisher is near. Before the fix the second call returned at
/// once and the publication was lost to this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_return_once_the_node_receives_the_channel() {
    const LATENCY: Duration = Duration::from_millis(300);
    let server = RedisServer::start();
    let rec = Arc::new(Recorder::default());
    let (far, _proxy) = far_node(&server, LATENCY, rec.clone()).await;
    let near = node(&server, Arc::new(Recorder::default()));
    // One subscriber: the call returns once the server has the subscription.
    let alone = channel("alone");
    far.subscribe(&alone).await.unwrap();
    near.publish(after(&alone, "the only subscribe"))
        .await
        .unwrap();
    rec.until(
        "the publication made after the only subscribe returned",
        |r| r.publications(&alone).len() == 1,
    )
    .await;

    let ch = channel("second");
    let first = tokio::spawn({
        let (far, ch) = (far.clone(), ch.clone());
        async move { far.subscribe(&ch).await }
    });
    tokio::time::sleep(LATENCY / 6).await; // the first SUBSCRIBE is on its way
    let started = Instant::now();
    far.subscribe(&ch).await.unwrap();
    near.publish(after(&ch, "the second subscribe"))
        .await
        .unwrap();
    rec.until(
        "the publication made after the second subscribe returned",
        |r| r.publications(&ch).len() == 1,
    )
    .await;
    first.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= LATENCY / 2,
        "the second subscribe waited for Redis: {:?}",
        started.elapsed()
    );
    // Both calls count: the node still receives the channel after one of them is undone.
    far.unsubscribe(&ch).await.unwrap();
    near.publish(after(&ch, "one unsubscribe")).await.unwrap();
    rec.until("the publication made with one subscriber left", |r| {
        r.publications(&ch).len() == 2
    })
    .await;
}

/// A herd of subscribes with Redis 50 ms away: 100 subscribers of one new channel wait for
/// one SUBSCRIBE between them, and 100 subscribers of 100 new channels (a connect storm's
/// auto-subscriptions) for pipelined SUBSCRIBEs, not one round trip each. Before: every
/// waiting subscriber of the channel sent its own SUBSCRIBE and the pub/sub task answered
/// them one at a time, so most callers hit the 2 s timeout (and the task, reading nothing
/// else meanwhile, held up every channel's delivery); distinct channels were as slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_subscribes_costs_a_round_trip_not_one_each() {
    const LATENCY: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let (far, _proxy) = far_node(&server, LATENCY, Arc::new(Recorder::default())).await;
    let one = channel("herd");
    let many: Vec<String> = (0..100)
        .map(|i| format!("{}-{i}", channel("storm")))
        .collect();
    for (what, channels) in [("one channel", vec![one; 100]), ("100 channels", many)] {
        let started = Instant::now();
        let calls = channels.iter().map(|ch| {
            let far = far.clone();
            let ch = ch.clone();
            tokio::spawn(async move { far.subscribe(&ch).await })
        });
        let answers = futures_util::future::join_all(calls).await;
        let failed = answers
            .into_iter()
            .filter(|a| !matches!(a, Ok(Ok(()))))
            .count();
        let took = started.elapsed();
        assert_eq!(
            failed, 0,
            "{what}: {failed} of 100 subscribes failed ({took:?})"
        );
        assert!(
            took < Duration::from_secs(1),
            "{what}: 100 subscribes took {took:?} with Redis {LATENCY:?} away"
        );
    }
}

/// A disconnect storm with Redis 50 ms away: 200 channels given up at once are unsubscribed
/// in pipelined batches, so a subscribe right behind them is answered in a few round trips.
/// Before: one UNSUBSCRIBE per round trip, 200 × 50 ms ahead of the subscribe, which timed
/// out after 2 s (a helper saw fresh subscribes fail for ~N × RTT after N clients left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_storm_does_not_hold_up_subscribes() {
    const LATENCY: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let (far, _proxy) = far_node(&server, LATENCY, Arc::new(Recorder::default())).await;
    let leaving: Vec<String> = (0..200)
        .map(|i| format!("{}-{i}", channel("leaving")))
        .collect();
    let subscribed =
        futures_util::future::join_all(leaving.iter().map(|ch| far.subscribe(ch))).await;
    assert!(subscribed.iter().all(Result::is_ok));
    for ch in &leaving {
        far.unsubscribe(ch).await.unwrap();
    }
    let started = Instant::now();
    far.subscribe(&channel("arriving")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a subscribe behind 200 unsubscribes took {:?}",
        started.elapsed()
    );
}

/// A subscribe is answered by the SUBSCRIBE of its own interest in the channel, not by one
/// sent for an interest given up since. Redis is 800 ms away and three runs of controls are
/// queued first (unsubscribe, subscribe, unsubscribe: one round trip each), so A's SUBSCRIBE is
/// answered after 3.2 s: A's subscribe times out at 2 s and gives the channel up (its
/// UNSUBSCRIBE queued behind A's SUBSCRIBE), then B subscribes. Before: A's SUBSCRIBE answered
/// B too; the UNSUBSCRIBE behind it then left the node deaf to the channel while B counted as
/// subscribed, until B's own SUBSCRIBE arrived. Now B waits for its own and, with Redis this
/// far behind, times out like A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_is_not_answered_for_an_interest_given_up_since() {
    const LATENCY: Duration = Duration::from_millis(800);
    let server = RedisServer::start();
    let (far, _proxy) = far_node(&server, LATENCY, Arc::new(Recorder::default())).await;
    let (x1, x2, y) = (channel("x1"), channel("x2"), channel("y"));
    let (r1, r2) = tokio::join!(far.subscribe(&x1), far.subscribe(&x2));
    r1.unwrap();
    r2.unwrap();
    far.unsubscribe(&x1).await.unwrap();
    let queued = tokio::spawn({
        let far = far.clone();
        async move { far.subscribe(&y).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    far.unsubscribe(&x2).await.unwrap();
    let ch = channel("given-up");
    let a = far.subscribe(&ch).await;
    assert!(a.is_err(), "A waits 2 s for an answer 3.2 s away: {a:?}");
    let b = far.subscribe(&ch).await;
    assert!(
        b.is_err(),
        "B was answered by A's SUBSCRIBE, with the node's UNSUBSCRIBE still to come"
    );
    queued.await.unwrap().ok();
}

/// Counts the resyncs a broker asks of its sink.
#[derive(Default)]
struct Resyncs(std::sync::Mutex<std::collections::HashSet<String>>);

impl PublicationSink for Resyncs {
    fn deliver(&self, _: &herald_core::Publication) {}
    fn presence(&self, _: &str, _: &PresenceEvent) {}
    fn resync(&self, channel: &str, _: &herald_core::Position) {
        self.0.lock().unwrap().insert(channel.to_owned());
    }
    fn kick(&self, _: &str) {}
}

/// After its pub/sub connection is lost, a node tells every channel's subscribers what they
/// may have missed (resync) within a few round trips, however many channels it serves: the
/// positions are read many at a time. Before: one after another, 300 channels with Redis 50 ms
/// away took 15 s, and a subscriber whose publication fell in the gap lacked it until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_is_resynced_promptly_after_a_pubsub_reconnect() {
    const LATENCY: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let sink = Arc::new(Resyncs::default());
    let (far, _proxy) = far_node(&server, LATENCY, sink.clone()).await;
    let channels: Vec<String> = (0..300).map(|i| format!("{}-{i}", channel("rs"))).collect();
    let subscribed =
        futures_util::future::join_all(channels.iter().map(|ch| far.subscribe(ch))).await;
    assert!(subscribed.iter().all(Result::is_ok));
    let killed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &server.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(killed.status.success(), "{killed:?}");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    while sink.0.lock().unwrap().len() < channels.len() {
        assert!(Instant::now() < deadline, "not every channel was resynced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "300 channels resynced in {:?} with Redis {LATENCY:?} away",
        started.elapsed()
    );
}
