//! The broker conformance suite.
//!
//! One set of checks any [`Broker`] implementation must pass, written against the trait only.
//! A broker crate runs it with [`conformance_tests!`], giving an async function that builds a
//! fresh broker delivering to the given sink (and anything that must live as long as it, such
//! as a Redis server process, in [`Subject::guard`]). Channel names are random per check, so
//! the checks may share one backend.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::broker::{HistoryQuery, PresenceEvent};
use herald_core::protocol::{ClientInfo, raw_json};
use herald_core::registry::HistoryPolicy;
use herald_core::{Broker, Publication, PublicationSink, PublishRequest};
use rand::Rng;
use serde_json::json;
use tokio::sync::Notify;

/// A broker under test and whatever must outlive it.
pub struct Subject {
    pub broker: Arc<dyn Broker>,
    pub guard: Box<dyn Any + Send>,
}

/// Records what the broker delivers, for the checks to wait on.
#[derive(Default)]
pub struct Recorder {
    publications: Mutex<Vec<Publication>>,
    events: Mutex<Vec<(String, PresenceEvent)>>,
    kicks: Mutex<Vec<String>>,
    changed: Notify,
}

impl PublicationSink for Recorder {
    fn deliver(&self, p: &Publication) {
        self.publications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        self.changed.notify_waiters();
    }

    fn presence(&self, channel: &str, event: &PresenceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((channel.to_owned(), event.clone()));
        self.changed.notify_waiters();
    }

    fn kick(&self, user: &str) {
        self.kicks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(user.to_owned());
        self.changed.notify_waiters();
    }
}

impl Recorder {
    pub fn publications(&self, channel: &str) -> Vec<Publication> {
        self.publications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|p| &*p.channel == channel)
            .cloned()
            .collect()
    }

    /// The users whose kick reached this sink, in order.
    pub fn kicks(&self) -> Vec<String> {
        self.kicks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn events(&self, channel: &str) -> Vec<PresenceEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Waits until `cond` holds (brokers may deliver asynchronously), at most 5 s.
    pub async fn until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                assert!(cond(self), "timed out waiting for {what}");
                return;
            }
        }
    }
}

/// A channel name no other check uses.
pub fn channel(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("conformance.{prefix}.{n:x}")
}

fn request(channel: &str, n: u64, history: Option<HistoryPolicy>) -> PublishRequest {
    PublishRequest {
        channel: Arc::from(channel),
        data: raw_json(&json!({ "n": n, "text": "é \"quoted\"" })),
        history,
        idempotency_key: None,
        from: None,
    }
}

/// The publisher travels with the publication, byte for byte: to every node's sink and into
/// history. Server publications carry none.
pub async fn the_publisher_travels_with_the_publication(s: Subject, rec: Arc<Recorder>) {
    let ch = channel("from");
    s.broker.subscribe(&ch).await.unwrap();
    let keep = Some(HistoryPolicy {
        size: 10,
        ttl: Duration::from_secs(60),
    });
    let from = herald_core::protocol::client_from(Some("alice"), "n1-7");
    s.broker
        .publish(PublishRequest {
            from: Some(from.clone()),
            ..request(&ch, 1, keep)
        })
        .await
        .unwrap();
    s.broker.publish(request(&ch, 2, keep)).await.unwrap();
    rec.until("both delivered", |r| r.publications(&ch).len() == 2)
        .await;
    let froms = |ps: &[Publication]| {
        ps.iter()
            .map(|p| p.from.as_ref().map(|f| f.get().to_owned()))
            .collect::<Vec<_>>()
    };
    let expected = vec![Some(from.get().to_owned()), None];
    assert_eq!(froms(&rec.publications(&ch)), expected);
    let h = s
        .broker
        .history(
            &ch,
            HistoryQuery {
                after: Some(0),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(froms(&h.publications), expected);
}

fn offsets(ps: &[Publication]) -> Vec<u64> {
    ps.iter().map(|p| p.offset).collect()
}

/// Concurrent publishers get consecutive offsets; the sink sees them in offset order.
pub async fn offsets_are_consecutive_and_ordered(s: Subject, rec: Arc<Recorder>) {
    let ch = channel("order");
    s.broker.subscribe(&ch).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let b = s.broker.clone();
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                got.push(
                    b.publish(request(&ch, t * 100 + i, None))
                        .await
                        .unwrap()
                        .offset,
                );
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
    rec.until("100 deliveries", |r| r.publications(&ch).len() == 100)
        .await;
    assert_eq!(
        offsets(&rec.publications(&ch)),
        (1..=100).collect::<Vec<_>>()
    );
}

/// Offsets are per channel; one epoch per channel history; data round-trips exactly.
pub async fn channels_are_independent(s: Subject, rec: Arc<Recorder>) {
    let (a, b) = (channel("a"), channel("b"));
    s.broker.subscribe(&a).await.unwrap();
    s.broker.subscribe(&b).await.unwrap();
    let untouched = s.broker.history(&a, HistoryQuery::default()).await.unwrap();
    assert_eq!(untouched.position.offset, 0);
    let a1 = s.broker.publish(request(&a, 1, None)).await.unwrap();
    let a2 = s.broker.publish(request(&a, 2, None)).await.unwrap();
    let b1 = s.broker.publish(request(&b, 1, None)).await.unwrap();
    assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
    assert_eq!(a1.epoch, a2.epoch);
    assert_eq!(
        a1.epoch, untouched.position.epoch,
        "epoch fixed before the first publication"
    );
    rec.until("3 deliveries", |r| {
        r.publications(&a).len() == 2 && r.publications(&b).len() == 1
    })
    .await;
    let delivered = rec.publications(&a);
    assert_eq!(delivered[0].epoch, a1.epoch);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(delivered[0].data.get()).unwrap(),
        json!({ "n": 1, "text": "é \"quoted\"" })
    );
    let pos = s.broker.history(&a, HistoryQuery::default()).await.unwrap();
    assert_eq!(pos.position, a2);
}

/// `subscribe` counts its callers (one per local subscriber): concurrent calls for one channel
/// each return once the node receives it, and the node keeps receiving it until every call is
/// undone, not after the first `unsubscribe`.
pub async fn every_subscribe_counts(s: Subject, rec: Arc<Recorder>) {
    let ch = channel("counted");
    let (a, b, c) = tokio::join!(
        s.broker.subscribe(&ch),
        s.broker.subscribe(&ch),
        s.broker.subscribe(&ch)
    );
    for r in [a, b, c] {
        r.unwrap();
    }
    s.broker.publish(request(&ch, 1, None)).await.unwrap();
    rec.until("the publication after three subscribes", |r| {
        r.publications(&ch).len() == 1
    })
    .await;
    s.broker.unsubscribe(&ch).await.unwrap();
    s.broker.unsubscribe(&ch).await.unwrap();
    s.broker.publish(request(&ch, 2, None)).await.unwrap();
    rec.until("the publication with one subscriber left", |r| {
        r.publications(&ch).len() == 2
    })
    .await;
    s.broker.unsubscribe(&ch).await.unwrap();
}

/// History keeps the last `size` publications and answers `after` and `limit`.
pub async fn history_is_bounded_by_size(s: Subject, _rec: Arc<Recorder>) {
    let ch = channel("size");
    let keep = Some(HistoryPolicy {
        size: 5,
        ttl: Duration::from_secs(60),
    });
    for n in 1..=8 {
        s.broker.publish(request(&ch, n, keep)).await.unwrap();
    }
    let h = s
        .broker
        .history(
            &ch,
            HistoryQuery {
                after: Some(0),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(h.position.offset, 8);
    assert_eq!(h.earliest, 4);
    assert_eq!(offsets(&h.publications), vec![4, 5, 6, 7, 8]);
    let h = s
        .broker
        .history(
            &ch,
            HistoryQuery {
                after: Some(6),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&h.publications), vec![7, 8]);
    let h = s
        .broker
        .history(
            &ch,
            HistoryQuery {
                after: Some(3),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&h.publications), vec![4, 5]);
    let h = s
        .broker
        .history(&ch, HistoryQuery::default())
        .await
        .unwrap();
    assert!(
        h.publications.is_empty(),
        "limit 0 returns only the position"
    );
}

/// History drops publications older than `ttl`; offsets keep counting.
pub async fn history_is_bounded_by_ttl(s: Subject, _rec: Arc<Recorder>) {
    let ch = channel("ttl");
    let keep = Some(HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(1),
    });
    s.broker.publish(request(&ch, 1, keep)).await.unwrap();
    s.broker.publish(request(&ch, 2, keep)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.broker.publish(request(&ch, 3, keep)).await.unwrap();
    let h = s
        .broker
        .history(
            &ch,
            HistoryQuery {
                after: Some(0),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(offsets(&h.publications), vec![3]);
    assert_eq!(h.earliest, 3);
    assert_eq!(h.position.offset, 3);
}

/// The same idempotency key on a channel returns the first result and delivers once.
pub async fn idempotent_publish(s: Subject, rec: Arc<Recorder>) {
    let (ch, other) = (channel("idem"), channel("idem2"));
    s.broker.subscribe(&ch).await.unwrap();
    let mut r = request(&ch, 1, None);
    r.idempotency_key = Some("order-42".into());
    let first = s.broker.publish(r.clone()).await.unwrap();
    let again = s.broker.publish(r.clone()).await.unwrap();
    assert_eq!(first, again);
    let mut different = request(&ch, 2, None);
    different.idempotency_key = Some("order-43".into());
    assert_eq!(s.broker.publish(different).await.unwrap().offset, 2);
    let mut elsewhere = request(&other, 1, None);
    elsewhere.idempotency_key = Some("order-42".into());
    assert_eq!(
        s.broker.publish(elsewhere).await.unwrap().offset,
        1,
        "keys are per channel"
    );
    rec.until("2 deliveries", |r| r.publications(&ch).len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(offsets(&rec.publications(&ch)), vec![1, 2]);
}

/// The `n` of each publication's data (see [`request`]), in the order given.
fn ns(ps: &[Publication]) -> Vec<u64> {
    ps.iter()
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(p.data.get()).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// `(offset, n)` of `channel`'s retained publications after `after` (at most `limit`), oldest
/// first, for checks of a broker's history beyond this suite's: `n` is read from each
/// publication's data, `{"n": …}` as the suite's publications carry it.
pub async fn history_ns(
    b: &dyn Broker,
    channel: &str,
    after: u64,
    limit: usize,
) -> Vec<(u64, u64)> {
    let h = b
        .history(
            channel,
            HistoryQuery {
                after: Some(after),
                limit,
            },
        )
        .await
        .unwrap();
    h.publications
        .iter()
        .map(|p| p.offset)
        .zip(ns(&h.publications))
        .collect()
}

/// A batch is the same as publishing its items one by one: per channel, offsets in batch
/// order, and the sink and history see the items in that order; an idempotency key repeated
/// inside the batch, or repeating a key published before it, is answered with the first
/// position and publishes nothing. One result per item, in order; an empty batch answers
/// nothing.
pub async fn batch_publish_is_ordered_and_idempotent(s: Subject, rec: Arc<Recorder>) {
    let (a, b, c) = (channel("batch-a"), channel("batch-b"), channel("batch-c"));
    for ch in [&a, &b, &c] {
        s.broker.subscribe(ch).await.unwrap();
    }
    let keep = Some(HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    });
    let keyed = |ch: &str, n: u64, key: &str| PublishRequest {
        idempotency_key: Some(key.into()),
        ..request(ch, n, keep)
    };
    let before = s.broker.publish(keyed(&c, 0, "before")).await.unwrap();
    assert!(s.broker.publish_batch(Vec::new()).await.is_empty());

    let results = s
        .broker
        .publish_batch(vec![
            request(&a, 1, keep),
            request(&b, 1, keep),
            request(&a, 2, keep),
            keyed(&c, 1, "k1"),
            request(&a, 3, keep),
            request(&b, 2, keep),
            // The same key as item 3, in the same batch: item 3's position, nothing published.
            keyed(&c, 91, "k1"),
            // The key of the publication before the batch.
            keyed(&c, 92, "before"),
            // The same key on another channel is another key.
            keyed(&a, 4, "k1"),
            request(&c, 2, keep),
        ])
        .await;
    let positions: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every item publishes"))
        .collect();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 1, 2, 2, 3, 2, 2, 1, 4, 3]
    );
    assert_eq!(
        positions[6], positions[3],
        "a key repeated inside the batch"
    );
    assert_eq!(positions[7], before, "a key published before the batch");
    assert_eq!(positions[9].epoch, before.epoch);
    assert_eq!(positions[0].epoch, positions[8].epoch);

    rec.until("the batch's deliveries", |r| {
        r.publications(&a).len() == 4
            && r.publications(&b).len() == 2
            && r.publications(&c).len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (ch, expected) in [
        (&a, vec![1, 2, 3, 4]),
        (&b, vec![1, 2]),
        (&c, vec![0, 1, 2]),
    ] {
        let delivered = rec.publications(ch);
        assert_eq!(ns(&delivered), expected, "delivered on {ch}");
        assert_eq!(
            offsets(&delivered),
            (1..=expected.len() as u64).collect::<Vec<_>>()
        );
        let h = s
            .broker
            .history(
                ch,
                HistoryQuery {
                    after: Some(0),
                    limit: 100,
                },
            )
            .await
            .unwrap();
        assert_eq!(ns(&h.publications), expected, "history of {ch}");
        assert_eq!(
            offsets(&h.publications),
            (1..=expected.len() as u64).collect::<Vec<_>>()
        );
    }
}

/// Presence lists members, announces joins and leaves, and ignores unknown leaves.
pub async fn presence_tracks_members(s: Subject, rec: Arc<Recorder>) {
    let ch = channel("presence");
    s.broker.subscribe(&ch).await.unwrap();
    // With the backend's `info` (subscribe proxy): kept as it was given, on every broker.
    let a = ClientInfo {
        client: "c-a".into(),
        user: Some("alice".into()),
        info: Some(herald_core::protocol::raw_json(
            &serde_json::json!({"role": "guest", "n": [1, 2]}),
        )),
    };
    let b = ClientInfo {
        client: "c-b".into(),
        user: None,
        info: None,
    };
    s.broker.presence_add(&ch, b.clone()).await.unwrap();
    s.broker.presence_add(&ch, a.clone()).await.unwrap();
    assert_eq!(
        s.broker.presence(&ch).await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    s.broker.presence_remove(&ch, a.clone()).await.unwrap();
    s.broker.presence_remove(&ch, a.clone()).await.unwrap();
    assert_eq!(s.broker.presence(&ch).await.unwrap(), vec![b.clone()]);
    rec.until("3 presence events", |r| r.events(&ch).len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        rec.events(&ch),
        vec![
            PresenceEvent::Join(b.clone()),
            PresenceEvent::Join(a.clone()),
            PresenceEvent::Leave(a)
        ]
    );
    s.broker.presence_remove(&ch, b).await.unwrap();
    assert!(s.broker.presence(&ch).await.unwrap().is_empty());
    assert!(s.broker.health().await.is_ok());
}

/// The per-user session count: at most `max` per user, anonymous sessions never counted,
/// a closed session frees its slot; a kick reaches the sink and answers how many the user had.
pub async fn sessions_are_counted_per_user_and_kicked(s: Subject, rec: Arc<Recorder>) {
    // A subscription first: a broker with a separate fan-out link has it up after this.
    s.broker.subscribe(&channel("sessions")).await.unwrap();
    let user = channel("user");
    let info = |n: u32| ClientInfo {
        client: format!("{user}-c{n}"),
        user: Some(user.clone()),
        info: None,
    };
    assert!(s.broker.session_open(&info(1), 2).await.unwrap());
    assert!(s.broker.session_open(&info(2), 2).await.unwrap());
    assert!(
        !s.broker.session_open(&info(3), 2).await.unwrap(),
        "a third session over max 2"
    );
    let anonymous = ClientInfo {
        client: format!("{user}-anon"),
        user: None,
        info: None,
    };
    assert!(s.broker.session_open(&anonymous, 0).await.unwrap());
    s.broker.session_close(&info(1)).await.unwrap();
    s.broker.session_close(&info(9)).await.unwrap();
    s.broker.session_close(&anonymous).await.unwrap();
    assert!(
        s.broker.session_open(&info(3), 2).await.unwrap(),
        "a freed slot"
    );

    assert_eq!(s.broker.kick(&user).await.unwrap(), 2);
    rec.until("the kick to reach the sink", |r| r.kicks().contains(&user))
        .await;
    assert_eq!(s.broker.kick(&channel("nobody")).await.unwrap(), 0);
    s.broker.session_close(&info(2)).await.unwrap();
    s.broker.session_close(&info(3)).await.unwrap();
    assert_eq!(s.broker.kick(&user).await.unwrap(), 0);
}

/// Resumable session state (Socket.IO recovery): stored for its owner, never overwritten by
/// another owner while it lives, taken at most once (the taker then holds the key and the old
/// owner's late writes are refused), gone after its TTL.
pub async fn resumable_state_is_owned_taken_once_and_expires(s: Subject, _rec: Arc<Recorder>) {
    let key = channel("pid");
    let b = &s.broker;
    let long = Duration::from_secs(60);
    assert_eq!(
        b.resume_take(&key, "c0", long).await.unwrap(),
        None,
        "nothing stored yet"
    );
    assert!(
        !b.resume_put(&key, "c1", "state-0", long).await.unwrap(),
        "the key is held by the session that looked for it"
    );
    let key = channel("pid");
    assert!(b.resume_put(&key, "c1", "state-1", long).await.unwrap());
    assert!(
        b.resume_put(&key, "c1", "state-2", long).await.unwrap(),
        "the owner rewrites its own state"
    );
    assert!(
        !b.resume_put(&key, "c2", "intruder", long).await.unwrap(),
        "another owner's write is refused"
    );
    assert_eq!(
        b.resume_take(&key, "c2", long).await.unwrap().as_deref(),
        Some("state-2")
    );
    assert_eq!(
        b.resume_take(&key, "c3", long).await.unwrap(),
        None,
        "taken once"
    );
    // Taken by c2 then c3: the old owner's late write is refused, the holder's accepted.
    assert!(!b.resume_put(&key, "c1", "late", long).await.unwrap());
    assert!(b.resume_put(&key, "c3", "resumed", long).await.unwrap());
    assert_eq!(
        b.resume_take(&key, "c4", long).await.unwrap().as_deref(),
        Some("resumed")
    );

    let short = channel("pid-short");
    assert!(
        b.resume_put(&short, "c1", "x", Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.resume_take(&short, "c2", Duration::from_millis(200))
            .await
            .unwrap(),
        None,
        "expired"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        b.resume_put(&short, "c9", "y", long).await.unwrap(),
        "an expired key is anyone's"
    );
}

/// Generates the conformance tests.
///
/// - `conformance_tests!(make)`: one `#[tokio::test]` per check, each with its own backend.
///   `make` is an async fn `(Arc<dyn PublicationSink>) -> Subject`.
/// - `conformance_tests!(sequential name, setup, make)`: one test `name` that calls `setup()`
///   once (a backend that is dear to start, such as a six-process Redis Cluster) and runs
///   every check in turn on it; `make` is an async fn `(&Shared, Arc<dyn PublicationSink>)
///   -> Subject` (give each subject its own key prefix so checks cannot see each other).
///   `conformance_tests!(sequential name, setup, make, then after)` also runs the broker's
///   own `async fn after(&Shared)` at the end, on the same backend.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@list @each $make);
    };
    (sequential $name:ident, $setup:path, $make:path $(, then $after:path)?) => {
        $crate::conformance_tests!(@list @seq $name $setup, $make, [$($after)?]);
    };
    (@list @$how:ident $($args:tt)*) => {
        $crate::conformance_tests!(@$how $($args)*,
            offsets_are_consecutive_and_ordered,
            channels_are_independent,
            every_subscribe_counts,
            history_is_bounded_by_size,
            history_is_bounded_by_ttl,
            idempotent_publish,
            batch_publish_is_ordered_and_idempotent,
            presence_tracks_members,
            the_publisher_travels_with_the_publication,
            sessions_are_counted_per_user_and_kicked,
            resumable_state_is_owned_taken_once_and_expires);
    };
    (@each $make:path, $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let rec = ::std::sync::Arc::new($crate::Recorder::default());
                let sink: ::std::sync::Arc<dyn ::herald_core::PublicationSink> = rec.clone();
                let subject = $make(sink).await;
                $crate::$check(subject, rec).await;
            }
        )+
    };
    (@seq $name:ident $setup:path, $make:path, [$($after:path)?], $($check:ident),+) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let shared = $setup();
            $(
                {
                    eprintln!("conformance check: {}", stringify!($check));
                    let rec = ::std::sync::Arc::new($crate::Recorder::default());
                    let sink: ::std::sync::Arc<dyn ::herald_core::PublicationSink> = rec.clone();
                    let subject = $make(&shared, sink).await;
                    $crate::$check(subject, rec).await;
                }
            )+
            $(
                eprintln!("then: {}", stringify!($after));
                $after(&shared).await;
            )?
        }
    };
}
