use super::*;
use herald_core::protocol::raw_json;
use herald_core::registry::HistoryPolicy;

#[derive(Default)]
struct Collect(Mutex<Vec<Publication>>);
impl PublicationSink for Collect {
    fn deliver(&self, p: &Publication) {
        lock(&self.0).push(p.clone());
    }
    fn presence(&self, _: &str, _: &PresenceEvent) {}
    fn kick(&self, _: &str) {}
}

fn req(channel: &str, n: u64, history: Option<HistoryPolicy>) -> PublishRequest {
    PublishRequest {
        channel: Arc::from(channel),
        data: raw_json(&serde_json::json!({ "n": n })),
        history,
        idempotency_key: None,
        from: None,
    }
}

/// A request whose payload is `len` bytes of JSON text.
fn sized(channel: &str, len: usize, history: Option<HistoryPolicy>) -> PublishRequest {
    let data = raw_json(&serde_json::json!("x".repeat(len - 2)));
    assert_eq!(data.get().len(), len);
    PublishRequest {
        data,
        ..req(channel, 0, history)
    }
}

const KEEP3: Option<HistoryPolicy> = Some(HistoryPolicy {
    size: 3,
    ttl: Duration::from_secs(60),
});

const KEEP100: Option<HistoryPolicy> = Some(HistoryPolicy {
    size: 100,
    ttl: Duration::from_secs(600),
});

fn all() -> HistoryQuery {
    HistoryQuery {
        after: Some(0),
        limit: 1000,
    }
}

fn offsets(h: &HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

fn load(v: &std::sync::atomic::AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

#[tokio::test]
async fn offsets_are_consecutive_per_channel() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::new(sink.clone(), Duration::from_secs(120));
    for n in 1..=5 {
        assert_eq!(b.publish(req("a", n, None)).await.unwrap().offset, n);
    }
    assert_eq!(b.publish(req("b", 1, None)).await.unwrap().offset, 1);
    let got = lock(&sink.0);
    let offsets: Vec<u64> = got
        .iter()
        .filter(|p| &*p.channel == "a")
        .map(|p| p.offset)
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_by_size_and_ttl() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(120));
    for n in 1..=5 {
        b.publish(req("a", n, KEEP3)).await.unwrap();
    }
    let h = b.history("a", all()).await.unwrap();
    assert_eq!(h.position.offset, 5);
    assert_eq!(h.earliest, 3);
    assert_eq!(offsets(&h), vec![3, 4, 5]);
    tokio::time::advance(Duration::from_secs(61)).await;
    let h = b.history("a", all()).await.unwrap();
    assert!(h.publications.is_empty());
    assert_eq!(h.earliest, 6);
    assert_eq!(
        load(&b.stats().history_bytes),
        0,
        "expired bytes are given back"
    );
    assert_eq!(load(&b.stats().history_publications), 0);
}

#[tokio::test(start_paused = true)]
async fn idempotent_publish_delivers_once() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::new(sink.clone(), Duration::from_secs(120));
    let mut r = req("a", 1, None);
    r.idempotency_key = Some("k".into());
    let first = b.publish(r.clone()).await.unwrap();
    let second = b.publish(r.clone()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(lock(&sink.0).len(), 1);
    tokio::time::advance(Duration::from_secs(121)).await;
    let third = b.publish(r).await.unwrap();
    assert_eq!(third.offset, 2, "a key past its window publishes again");
}

#[tokio::test(start_paused = true)]
async fn idle_streams_are_evicted_with_a_new_epoch() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(1));
    let first = b.publish(req("a", 1, None)).await.unwrap();
    b.sweep();
    assert_eq!(b.stream_count(), 1, "recently used streams stay");
    tokio::time::advance(IDLE_EVICTION + Duration::from_secs(1)).await;
    b.sweep();
    assert_eq!(b.stream_count(), 0);
    let next = b.publish(req("a", 2, None)).await.unwrap();
    assert_eq!(next.offset, 1);
    assert_ne!(next.epoch, first.epoch);
}

/// The history budget holds across channels, and what goes first is the oldest publication
/// of the whole broker, so every channel's history stays a contiguous run of its latest.
#[tokio::test]
async fn the_budget_evicts_the_oldest_publications_across_channels() {
    let cost = (1000 + PUBLICATION_OVERHEAD) as u64;
    let b = MemoryBroker::with_options(
        Arc::new(Collect::default()),
        MemoryOptions {
            history_budget_bytes: 5 * cost as usize,
            ..MemoryOptions::default()
        },
    );
    // a1 b1 a2 b2 c1 c2 c3 (in time order): seven publications, room for five.
    for ch in ["a", "b", "a", "b", "c", "c", "c"] {
        b.publish(sized(ch, 1000, KEEP100)).await.unwrap();
    }
    let stats = b.stats();
    assert_eq!(load(&stats.history_bytes), 5 * cost);
    assert_eq!(load(&stats.history_publications), 5);
    assert_eq!(load(&stats.history_evictions), 2);
    let a = b.history("a", all()).await.unwrap();
    assert_eq!(offsets(&a), vec![2], "a1 was the oldest");
    assert_eq!(a.earliest, 2);
    let bh = b.history("b", all()).await.unwrap();
    assert_eq!(offsets(&bh), vec![2], "b1 was next");
    assert_eq!(bh.position.offset, 2, "the position survives eviction");
    assert_eq!(
        offsets(&b.history("c", all()).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        lock(&b.ages).index.len(),
        5,
        "the age index holds only what is kept"
    );
}

/// Trimming by size or TTL gives bytes back and leaves nothing behind in the age index (which
/// would otherwise grow with every publication on a short-history channel).
#[tokio::test(start_paused = true)]
async fn trimming_leaves_no_bookkeeping_behind() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(1));
    for n in 1..=1000 {
        b.publish(req("a", n, KEEP3)).await.unwrap();
    }
    assert_eq!(lock(&b.ages).index.len(), 3);
    assert_eq!(load(&b.stats().history_publications), 3);
    tokio::time::advance(Duration::from_secs(61)).await;
    b.sweep();
    assert!(lock(&b.ages).index.is_empty());
    assert_eq!(load(&b.stats().history_bytes), 0);
    let streams = lock(&b.streams);
    let Some(Record::Live(stream)) = streams.map.get("a") else {
        panic!("a published channel has a stream");
    };
    let s = lock(stream);
    assert!(
        s.history.capacity() <= 16,
        "an emptied history gives its ring back"
    );
}

/// Retained publications share their stream's channel name rather than holding a copy each.
#[tokio::test]
async fn retained_publications_share_the_channel_name() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(1));
    for n in 1..=3 {
        b.publish(req("a.long.channel.name", n, KEEP3))
            .await
            .unwrap();
    }
    let h = b.history("a.long.channel.name", all()).await.unwrap();
    assert!(Arc::ptr_eq(
        &h.publications[0].channel,
        &h.publications[2].channel
    ));
}

#[tokio::test]
async fn idempotency_keys_are_capped_oldest_first() {
    let sink = Arc::new(Collect::default());
    let b = MemoryBroker::with_options(
        sink.clone(),
        MemoryOptions {
            max_idempotency_keys: 2,
            ..MemoryOptions::default()
        },
    );
    let publish = async |channel: &str, key: &str| {
        let mut r = req(channel, 0, None);
        r.idempotency_key = Some(key.into());
        b.publish(r).await.unwrap().offset
    };
    assert_eq!(publish("a", "k1").await, 1);
    assert_eq!(publish("b", "k1").await, 1, "keys are per channel");
    assert_eq!(publish("a", "k2").await, 2);
    assert_eq!(load(&b.stats().idempotency_keys), 2);
    assert_eq!(load(&b.stats().idempotency_evictions), 1);
    assert_eq!(publish("a", "k2").await, 2, "the newest is remembered");
    assert_eq!(publish("b", "k1").await, 1);
    assert_eq!(publish("a", "k1").await, 3, "the oldest was forgotten");
    assert_eq!(lock(&b.idempotency).order.len(), 2);
}

/// Channel records that retain nothing are capped, least recently used first; records with
/// history and records in use are kept.
#[tokio::test(start_paused = true)]
async fn idle_channel_records_are_capped() {
    let b = MemoryBroker::with_options(
        Arc::new(Collect::default()),
        MemoryOptions {
            max_idle_channels: 10,
            ..MemoryOptions::default()
        },
    );
    let kept = b.publish(req("kept", 1, KEEP3)).await.unwrap();
    for i in 0..100 {
        tokio::time::advance(Duration::from_millis(1)).await;
        b.history(&format!("idle.{i}"), HistoryQuery::default())
            .await
            .unwrap();
    }
    assert!(b.stream_count() <= 11, "{}", b.stream_count());
    assert_eq!(load(&b.stats().channels), b.stream_count() as u64);
    assert!(load(&b.stats().channel_evictions) >= 89);
    let h = b.history("kept", all()).await.unwrap();
    assert_eq!(h.position, kept, "a channel with history is not dropped");
    let streams = lock(&b.streams);
    assert!(streams.map.contains_key("idle.99"), "the most recent stay");
    assert!(!streams.map.contains_key("idle.0"), "the least recent go");
}

/// A channel that is only read (every auto-subscribed user channel until something is sent to
/// it) holds no stream, and its first publication continues the position the read answered:
/// same epoch, offset 1, so its subscribers see no discontinuity.
#[tokio::test]
async fn a_read_channel_holds_no_stream_until_published() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(120));
    let read = b.history("u.1", all()).await.unwrap();
    assert_eq!(read.position.offset, 0);
    assert_eq!(read.earliest, 1);
    assert!(read.publications.is_empty());
    assert!(matches!(
        lock(&b.streams).map.get("u.1"),
        Some(Record::Fresh { .. })
    ));
    assert_eq!(b.stream_count(), 1);
    assert_eq!(load(&b.stats().channels), 1);
    let again = b.history("u.1", all()).await.unwrap();
    assert_eq!(again.position, read.position);

    let first = b.publish(req("u.1", 1, KEEP3)).await.unwrap();
    assert_eq!(first.offset, 1);
    assert_eq!(first.epoch, read.position.epoch, "the epoch the read told");
    assert!(matches!(
        lock(&b.streams).map.get("u.1"),
        Some(Record::Live(_))
    ));
    assert_eq!(offsets(&b.history("u.1", all()).await.unwrap()), vec![1]);
}

/// Records made between two drops share one epoch allocation; a dropped channel comes back
/// under an epoch it never had, whether its record was fresh or published to.
#[tokio::test(start_paused = true)]
async fn epochs_are_shared_until_a_record_is_dropped() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(1));
    let a = b.history("a", all()).await.unwrap().position;
    let c = b.history("c", all()).await.unwrap().position;
    let p = b.publish(req("p", 1, None)).await.unwrap();
    assert!(Arc::ptr_eq(&a.epoch, &c.epoch), "one allocation for both");
    assert_eq!(p.epoch, a.epoch);

    tokio::time::advance(IDLE_EVICTION + Duration::from_secs(1)).await;
    b.history("d", all()).await.unwrap();
    b.sweep();
    assert_eq!(b.stream_count(), 1, "only the record just used stays");
    let a2 = b.history("a", all()).await.unwrap().position;
    let p2 = b.publish(req("p", 2, None)).await.unwrap();
    assert_ne!(a2.epoch, a.epoch);
    assert_eq!((p2.offset, &p2.epoch), (1, &a2.epoch));
    assert_ne!(p2.epoch, p.epoch);
}

/// One user's sessions: one id inline, more in a vector, back to one, then none (the user's
/// entry gone); the cap counts them all and an id already open is admitted again.
#[tokio::test]
async fn sessions_per_user_grow_and_shrink() {
    let b = MemoryBroker::new(Arc::new(Collect::default()), Duration::from_secs(120));
    let info = |c: &str| ClientInfo {
        client: c.to_owned(),
        user: Some("u".to_owned()),
        info: None,
    };
    assert!(!b.session_open(&info("x"), 0).await.unwrap());
    assert!(
        lock(&b.sessions).is_empty(),
        "a refusal leaves nothing behind"
    );
    assert!(b.session_open(&info("a"), 3).await.unwrap());
    assert!(matches!(lock(&b.sessions).get("u"), Some(Open::One(_))));
    assert!(b.session_open(&info("a"), 1).await.unwrap(), "already open");
    assert!(!b.session_open(&info("b"), 1).await.unwrap());
    assert!(b.session_open(&info("b"), 3).await.unwrap());
    assert!(b.session_open(&info("c"), 3).await.unwrap());
    assert!(!b.session_open(&info("d"), 3).await.unwrap());
    assert_eq!(b.kick("u").await.unwrap(), 3);
    b.session_close(&info("a")).await.unwrap();
    b.session_close(&info("nobody")).await.unwrap();
    b.session_close(&info("c")).await.unwrap();
    assert!(matches!(lock(&b.sessions).get("u"), Some(Open::One(id)) if &**id == "b"));
    assert_eq!(b.kick("u").await.unwrap(), 1);
    b.session_close(&info("b")).await.unwrap();
    assert!(lock(&b.sessions).is_empty());
    assert_eq!(b.kick("u").await.unwrap(), 0);
}
