//! What the NATS broker adds over the conformance suite: several nodes on one NATS (only
//! interested nodes receive a channel), one of which dies without a goodbye (its broker is
//! dropped: it stops beating, as after SIGKILL), a node cut off from NATS, and a
//! `nats-server` restarted with and without its store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_conformance::{Recorder, channel};
use herald_core::broker::HistoryQuery;
use herald_core::protocol::{ClientInfo, raw_json};
use herald_core::registry::HistoryPolicy;
use herald_core::{Broker, Position, PresenceEvent, PublicationSink, PublishRequest};
use herald_nats::{NatsBroker, NatsOptions};
use herald_testkit::{NatsServer, TcpProxy};

const TTL: Duration = Duration::from_secs(1);

fn options(url: String) -> NatsOptions {
    NatsOptions {
        url,
        prefix: "herald-test".into(),
        presence_ttl: TTL,
        idempotency_window: Duration::from_secs(120),
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        replicas: 1,
    }
}

fn node(server: &NatsServer, sink: Arc<dyn PublicationSink>) -> NatsBroker {
    NatsBroker::start(options(server.url()), sink).unwrap()
}

fn publication(ch: &str, n: u64) -> PublishRequest {
    PublishRequest {
        channel: Arc::from(ch),
        data: raw_json(&serde_json::json!({ "n": n })),
        history: Some(HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(60),
        }),
        idempotency_key: None,
        from: None,
    }
}

/// A sink that also records resyncs.
#[derive(Default)]
struct Resyncs {
    rec: Recorder,
    resyncs: std::sync::Mutex<Vec<(String, Position)>>,
}

impl PublicationSink for Resyncs {
    fn deliver(&self, p: &herald_core::Publication) {
        self.rec.deliver(p);
    }
    fn presence(&self, channel: &str, event: &PresenceEvent) {
        self.rec.presence(channel, event);
    }
    fn resync(&self, channel: &str, position: &Position) {
        self.resyncs
            .lock()
            .unwrap()
            .push((channel.to_owned(), position.clone()));
    }
    fn kick(&self, user: &str) {
        self.rec.kick(user);
    }
}

/// Publications cross nodes in offset order, and only to the nodes that subscribed to the
/// channel; a node that unsubscribed stops receiving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_interested_nodes_receive_a_channel() {
    let server = NatsServer::start();
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let a = node(&server, ra.clone());
    let b = node(&server, rb.clone());
    let (both, only_a) = (channel("both"), channel("only-a"));
    a.subscribe(&both).await.unwrap();
    b.subscribe(&both).await.unwrap();
    a.subscribe(&only_a).await.unwrap();
    for n in 1..=5 {
        // Publishers on both nodes share one offset sequence.
        let by = if n % 2 == 0 { &a } else { &b };
        assert_eq!(by.publish(publication(&both, n)).await.unwrap().offset, n);
        b.publish(publication(&only_a, n)).await.unwrap();
    }
    for r in [&ra, &rb] {
        r.until("5 deliveries", |r| r.publications(&both).len() == 5)
            .await;
        let offsets: Vec<u64> = r.publications(&both).iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    }
    ra.until("only-a", |r| r.publications(&only_a).len() == 5)
        .await;
    assert!(rb.publications(&only_a).is_empty(), "b never asked for it");

    b.unsubscribe(&both).await.unwrap();
    a.publish(publication(&both, 6)).await.unwrap();
    ra.until("the 6th", |r| r.publications(&both).len() == 6)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rb.publications(&both).len(), 5, "b unsubscribed");
}

/// Presence entries are rewritten all the time (every node rewrites its members at each
/// beat, and members come and go), so a read of a channel's members must end with what the
/// bucket held when it began instead of chasing the writes behind it: every read answers
/// at once and finds the members that are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_do_not_chase_members_being_rewritten() {
    let server = NatsServer::start();
    let writer = node(&server, Arc::new(Recorder::default()));
    let reader = node(&server, Arc::new(Recorder::default()));
    let ch = channel("churning");
    let members: Vec<ClientInfo> = (0..3)
        .map(|i| ClientInfo {
            client: format!("churn-{i}"),
            user: Some(format!("u{i}")),
            info: None,
        })
        .collect();
    for m in &members {
        writer.presence_add(&ch, m.clone()).await.unwrap();
    }
    // Rewrites the same members as fast as NATS takes them (a busy node's beat, compressed).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let (writer, ch, members, stop) =
            (writer.clone(), ch.clone(), members.clone(), stop.clone());
        async move {
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for m in &members {
                    writer.presence_add(&ch, m.clone()).await.unwrap();
                    writes += 1;
                }
            }
            writes
        }
    });
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        let began = Instant::now();
        let got = reader.presence(&ch).await.unwrap();
        slowest = slowest.max(began.elapsed());
        assert_eq!(got, members, "every member, once");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = churn.await.unwrap();
    assert!(
        writes > 100,
        "the members were rewritten meanwhile ({writes} writes)"
    );
    // A read is a handful of requests (milliseconds); chasing the writes ran to the 2 s
    // request timeout.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest read {slowest:?}"
    );
}

/// Members that come and go leave a delete marker each, which the bucket drops at its
/// `max_age` (2 × `presence_ttl`): a read that listed such a key waits for it in vain, and
/// while other keys keep being written every pull brings something, so the read once chased
/// the writes to the 2 s request timeout (503). Reads over several marker lifetimes, with
/// members joining and leaving all along, answer at once with the members who stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_answer_while_members_come_and_go() {
    let server = NatsServer::start();
    let writer = node(&server, Arc::new(Recorder::default()));
    let reader = node(&server, Arc::new(Recorder::default()));
    let ch = channel("coming-and-going");
    let stay: Vec<ClientInfo> = (0..5)
        .map(|i| ClientInfo {
            client: format!("stay-{i}"),
            user: Some(format!("s{i}")),
            info: None,
        })
        .collect();
    for m in &stay {
        writer.presence_add(&ch, m.clone()).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = tokio::spawn({
        let (writer, ch, stop) = (writer.clone(), ch.clone(), stop.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let passing = ClientInfo {
                    client: format!("pass-{n}"),
                    user: Some(format!("p{n}")),
                    info: None,
                };
                writer.presence_add(&ch, passing.clone()).await.unwrap();
                writer.presence_remove(&ch, passing).await.unwrap();
                n += 1;
            }
            n
        }
    });
    let began = Instant::now();
    let (mut reads, mut slowest) = (0, Duration::ZERO);
    // Three marker lifetimes (max_age 2 s with a 1 s TTL).
    while began.elapsed() < TTL * 6 {
        let t = Instant::now();
        let got = reader.presence(&ch).await.unwrap_or_else(|e| {
            panic!("read {reads} after {:?}: {e}", began.elapsed());
        });
        slowest = slowest.max(t.elapsed());
        for m in &stay {
            assert!(got.contains(m), "read {reads} lacks {}: {got:?}", m.client);
        }
        reads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let passed = churn.await.unwrap();
    assert!(passed > 100, "members came and went meanwhile ({passed})");
    assert!(
        slowest < Duration::from_millis(500),
        "slowest of {reads} reads {slowest:?}"
    );
}

/// A dead node's members leave (an event on every node, within the presence TTL) and its
/// sessions stop counting against the per-user limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_and_its_sessions_are_freed() {
    let server = NatsServer::start();
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
    // The dying node has beaten at least once (its sessions count for the others).
    tokio::time::sleep(TTL / 4).await;
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
    assert!(
        died.elapsed() <= TTL + TTL / 2,
        "leave after {:?}",
        died.elapsed()
    );
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

/// `nats-server` killed mid-stream and restarted with its store: offsets and the epoch
/// carry on (history survives), the subscribed node is told to resync, publishing fails
/// fast (never silently) while NATS is down, and health says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nats_keeps_offsets_and_the_nodes_resync() {
    let mut server = NatsServer::start();
    let sink = Arc::new(Resyncs::default());
    let a = node(&server, sink.clone());
    let ch = channel("restart");
    a.subscribe(&ch).await.unwrap();
    let before = a.publish(publication(&ch, 1)).await.unwrap();
    a.publish(publication(&ch, 2)).await.unwrap();
    sink.rec
        .until("2 deliveries", |r| r.publications(&ch).len() == 2)
        .await;
    assert!(a.health().await.is_ok());

    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.health().await.is_ok() {
        assert!(Instant::now() < deadline, "health still ok with nats down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down = tokio::time::timeout(Duration::from_secs(5), a.publish(publication(&ch, 3)))
        .await
        .expect("a publish fails fast while nats is down");
    assert!(
        matches!(down, Err(herald_core::BrokerError::Unavailable(_))),
        "{down:?}"
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.health().await.is_err() {
        assert!(Instant::now() < deadline, "never healthy again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sink.resyncs.lock().unwrap().iter().any(|(c, _)| *c == ch) {
        assert!(Instant::now() < deadline, "no resync after the reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The publish that failed may or may not have been stored (its ack was lost): either
    // way the history has no gap and the next offset follows it.
    let next = a.publish(publication(&ch, 4)).await.unwrap();
    assert_eq!(next.epoch, before.epoch, "the store survived the restart");
    assert!(next.offset == 3 || next.offset == 4, "{next:?}");
    sink.rec
        .until("the new publication", |r| {
            r.publications(&ch).iter().any(|p| p.offset == next.offset)
        })
        .await;
    let h = a
        .history(
            &ch,
            HistoryQuery {
                after: Some(0),
                limit: 10,
            },
        )
        .await
        .unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=next.offset).collect::<Vec<_>>());
}

/// NATS restarted without its store: channels start new epochs, and at their next beat
/// the nodes put back their presence entries and sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_lost_its_data_gets_every_nodes_members_and_sessions_back() {
    let mut server = NatsServer::start();
    let rec = Arc::new(Recorder::default());
    let a = node(&server, rec.clone());
    let ch = channel("back");
    a.subscribe(&ch).await.unwrap();
    let before = a.publish(publication(&ch, 1)).await.unwrap();
    let member = ClientInfo {
        client: "a-1".into(),
        user: Some("xia".into()),
        info: None,
    };
    a.presence_add(&ch, member.clone()).await.unwrap();
    assert!(a.session_open(&member, 1).await.unwrap());
    rec.until("the join", |r| !r.events(&ch).is_empty()).await;

    let observer = node(&server, Arc::new(Recorder::default()));
    server.wipe();
    server.restart();
    let deadline = Instant::now() + TTL * 10;
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
    let after = a.publish(publication(&ch, 2)).await.unwrap();
    assert_ne!(after.epoch, before.epoch, "a lost store is a new history");
    assert_eq!(after.offset, 1);
}

/// A node cut off from NATS for longer than its life is taken for dead by the others (its
/// members leave, its sessions stop counting); when the link is back it notices at its next
/// beat, announces its members again (`join`) and its sessions count again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_and_taken_for_dead_comes_back() {
    let server = NatsServer::start();
    let proxy = TcpProxy::start(server.port).await;
    let rec = Arc::new(Recorder::default());
    let observer = node(&server, rec.clone());
    let cut_off = NatsBroker::start(
        options(format!("nats://127.0.0.1:{}", proxy.port)),
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
    tokio::time::sleep(TTL / 4).await; // at least one beat of the cut-off node

    proxy.set_cut(true);
    let deadline = Instant::now() + TTL * 3;
    while !rec
        .events(&ch)
        .contains(&PresenceEvent::Leave(member.clone()))
    {
        assert!(Instant::now() < deadline, "no leave: {:?}", rec.events(&ch));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(observer.presence(&ch).await.unwrap().is_empty());
    let elsewhere = ClientInfo {
        client: "obs-1".into(),
        user: Some("wes".into()),
        info: None,
    };
    assert!(observer.session_open(&elsewhere, 1).await.unwrap());
    observer.session_close(&elsewhere).await.unwrap();

    proxy.set_cut(false);
    let deadline = Instant::now() + TTL * 6;
    while rec.events(&ch)
        != [
            PresenceEvent::Join(member.clone()),
            PresenceEvent::Leave(member.clone()),
            PresenceEvent::Join(member.clone()),
        ]
    {
        assert!(
            Instant::now() < deadline,
            "no second join: {:?}",
            rec.events(&ch)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(observer.presence(&ch).await.unwrap(), vec![member.clone()]);
    assert!(
        !observer.session_open(&elsewhere, 1).await.unwrap(),
        "the cut-off node's session counts again"
    );
}

/// `Broker::subscribe` returns once the node receives the channel: the node reads the
/// channel's position next, and a publication made in between must reach it. NATS is one
/// network latency (300 ms) away from the subscribing node; the publisher is near. Two faults
/// before the fix: a lone subscribe returned once its SUB was written to the socket (the
/// client's `flush` does not wait for the server), and a second local subscriber's call, made
/// while the first one's SUB was unconfirmed, returned at once; either lost the publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_return_once_the_node_receives_the_channel() {
    const LATENCY: Duration = Duration::from_millis(300);
    let server = NatsServer::start();
    let proxy = TcpProxy::start_with_latency(server.port, LATENCY).await;
    let rec = Arc::new(Recorder::default());
    let far = Arc::new(
        NatsBroker::start(
            options(format!("nats://127.0.0.1:{}", proxy.port)),
            rec.clone(),
        )
        .unwrap(),
    );
    let near = node(&server, Arc::new(Recorder::default()));
    // Connected once a subscription is confirmed (the far node never needs JetStream here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let warm = channel("warm");
    while far.subscribe(&warm).await.is_err() {
        assert!(Instant::now() < deadline, "the far node never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One subscriber: the call returns once the server has the subscription.
    let alone = channel("alone");
    far.subscribe(&alone).await.unwrap();
    near.publish(publication(&alone, 1)).await.unwrap();
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
    tokio::time::sleep(LATENCY / 6).await; // the first SUB is on its way
    let started = Instant::now();
    far.subscribe(&ch).await.unwrap();
    near.publish(publication(&ch, 1)).await.unwrap();
    rec.until(
        "the publication made after the second subscribe returned",
        |r| r.publications(&ch).len() == 1,
    )
    .await;
    first.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= LATENCY / 2,
        "the second subscribe waited for NATS: {:?}",
        started.elapsed()
    );
    // Both calls count: the node still receives the channel after one of them is undone.
    far.unsubscribe(&ch).await.unwrap();
    near.publish(publication(&ch, 2)).await.unwrap();
    rec.until("the publication made with one subscriber left", |r| {
        r.publications(&ch).len() == 2
    })
    .await;
}
