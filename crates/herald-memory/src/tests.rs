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
    let s = lock(&streams["a"]);
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
    assert!(streams.contains_key("idle.99"), "the most recent stay");
    assert!(!streams.contains_key("idle.0"), "the least recent go");
}
