//! The in-memory broker: one node, history and offsets in this process.
//!
//! Each channel is a `Stream` behind its own mutex: assigning the offset, appending to history,
//! remembering the idempotency key and handing the publication to the sink all happen under
//! that lock, so the sink sees each channel in offset order and a replayed history can never
//! race a live publication. The lock is never held across an `.await`.
//!
//! Every stream gets a random epoch when it is created. Streams that hold nothing worth keeping
//! (no retained history, no live idempotency key) and have been idle for [`IDLE_EVICTION`] are
//! dropped by [`MemoryBroker::sweep`]; if the channel is used again it starts a new epoch, so a
//! client recovering across that gap is told `recovered: false` instead of being shown a silent
//! hole.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::broker::{HistoryQuery, HistoryResult, new_epoch};
use herald_core::protocol::ClientInfo;
use herald_core::registry::HistoryPolicy;
use herald_core::{
    Broker, BrokerError, Position, PresenceEvent, Publication, PublicationSink, PublishRequest,
};
use tokio::time::Instant;

/// Idle streams with nothing retained are forgotten after this long.
pub const IDLE_EVICTION: Duration = Duration::from_secs(3600);

/// How often the background sweeper runs.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<(Instant, Publication)>,
    idempotency: HashMap<String, (Instant, Position)>,
    idempotency_order: VecDeque<(Instant, String)>,
    touched: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Arc::from(new_epoch()),
            offset: 0,
            history: VecDeque::new(),
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            touched: now,
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    /// Drops history past its TTL and idempotency keys past the window.
    fn prune(&mut self, now: Instant, ttl: Option<Duration>, window: Duration) {
        if let Some(ttl) = ttl {
            while self
                .history
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > ttl)
            {
                self.history.pop_front();
            }
        }
        while let Some((t, _)) = self.idempotency_order.front() {
            if now.duration_since(*t) <= window {
                break;
            }
            if let Some((_, key)) = self.idempotency_order.pop_front() {
                self.idempotency.remove(&key);
            }
        }
    }
}

/// The in-memory broker.
pub struct MemoryBroker {
    sink: Arc<dyn PublicationSink>,
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    /// TTL of each channel's history, remembered from its publish requests for pruning.
    ttls: Mutex<HashMap<Arc<str>, Duration>>,
    /// Presence per channel, by client id.
    presence: Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>,
    /// Open sessions per user (the per-user limit and the kick's count).
    sessions: Mutex<HashMap<String, BTreeSet<String>>>,
    idempotency_window: Duration,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (counters, queues):
    // still consistent enough to keep serving, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryBroker {
    /// A broker delivering to `sink`, remembering idempotency keys for `idempotency_window`.
    pub fn new(sink: Arc<dyn PublicationSink>, idempotency_window: Duration) -> Arc<Self> {
        Arc::new(Self {
            sink,
            streams: Mutex::new(HashMap::new()),
            ttls: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            idempotency_window,
        })
    }

    /// Runs [`MemoryBroker::sweep`] periodically until the broker is dropped.
    /// Must be called from within a Tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(broker) => broker.sweep(),
                    None => break,
                }
            }
        });
    }

    /// Prunes expired history and forgets idle streams that retain nothing.
    pub fn sweep(&self) {
        let now = Instant::now();
        let ttls = lock(&self.ttls).clone();
        let mut streams = lock(&self.streams);
        streams.retain(|name, stream| {
            let mut s = lock(stream);
            s.prune(now, ttls.get(name).copied(), self.idempotency_window);
            let idle = now.duration_since(s.touched) > IDLE_EVICTION;
            !(idle && s.history.is_empty() && s.idempotency.is_empty())
        });
        let mut ttls = lock(&self.ttls);
        ttls.retain(|name, _| streams.contains_key(name));
    }

    /// Number of channels with state (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).len()
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(channel) {
            return s.clone();
        }
        let s = Arc::new(Mutex::new(Stream::new(Instant::now())));
        streams.insert(Arc::from(channel), s.clone());
        s
    }

    fn publish_sync(&self, req: PublishRequest) -> Position {
        let policy: Option<HistoryPolicy> = req.history;
        if let Some(p) = policy {
            let mut ttls = lock(&self.ttls);
            if ttls.get(&req.channel) != Some(&p.ttl) {
                ttls.insert(req.channel.clone(), p.ttl);
            }
        }
        let stream = self.stream(&req.channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.touched = now;
        s.prune(now, policy.map(|p| p.ttl), self.idempotency_window);
        if let Some(key) = &req.idempotency_key
            && let Some((_, pos)) = s.idempotency.get(key)
        {
            return pos.clone();
        }
        s.offset += 1;
        let publication = Publication {
            channel: req.channel,
            offset: s.offset,
            epoch: s.epoch.clone(),
            data: req.data,
        };
        if let Some(p) = policy {
            s.history.push_back((now, publication.clone()));
            while s.history.len() > p.size {
                s.history.pop_front();
            }
        }
        let position = s.position();
        if let Some(key) = req.idempotency_key {
            s.idempotency_order.push_back((now, key.clone()));
            s.idempotency.insert(key, (now, position.clone()));
        }
        // Delivered under the stream lock: this is what keeps per-channel order for the sink.
        self.sink.deliver(&publication);
        position
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, request: PublishRequest) -> Result<Position, BrokerError> {
        Ok(self.publish_sync(request))
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        // One node: every publication already reaches the only sink.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let ttl = lock(&self.ttls).get(channel).copied();
        let stream = self.stream(channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.touched = now;
        s.prune(now, ttl, self.idempotency_window);
        let earliest = s.history.front().map_or(s.offset + 1, |(_, p)| p.offset);
        let after = query.after.unwrap_or(s.offset);
        let publications = s
            .history
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.offset > after)
            .take(query.limit)
            .cloned()
            .collect();
        Ok(HistoryResult {
            position: s.position(),
            publications,
            earliest,
        })
    }

    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let mut presence = lock(&self.presence);
        presence
            .entry(channel.to_owned())
            .or_default()
            .insert(client.client.clone(), client.clone());
        // Under the presence lock, so join and leave of one client cannot be reordered.
        self.sink.presence(channel, &PresenceEvent::Join(client));
        Ok(())
    }

    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let mut presence = lock(&self.presence);
        let Some(members) = presence.get_mut(channel) else {
            return Ok(());
        };
        if members.remove(&client.client).is_none() {
            return Ok(());
        }
        if members.is_empty() {
            presence.remove(channel);
        }
        self.sink.presence(channel, &PresenceEvent::Leave(client));
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        Ok(lock(&self.presence)
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn session_open(&self, client: &ClientInfo, max: usize) -> Result<bool, BrokerError> {
        let Some(user) = &client.user else {
            return Ok(true);
        };
        let mut sessions = lock(&self.sessions);
        let open = sessions.entry(user.clone()).or_default();
        if open.len() >= max && !open.contains(&client.client) {
            return Ok(false);
        }
        open.insert(client.client.clone());
        Ok(true)
    }

    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        let Some(user) = &client.user else {
            return Ok(());
        };
        let mut sessions = lock(&self.sessions);
        if let Some(open) = sessions.get_mut(user) {
            open.remove(&client.client);
            if open.is_empty() {
                sessions.remove(user);
            }
        }
        Ok(())
    }

    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        let n = lock(&self.sessions).get(user).map_or(0, BTreeSet::len);
        // One node: its sink is every node there is.
        self.sink.kick(user);
        Ok(n)
    }

    async fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn idempotency_window(&self) -> Duration {
        self.idempotency_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::protocol::raw_json;

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
        }
    }

    const KEEP3: Option<HistoryPolicy> = Some(HistoryPolicy {
        size: 3,
        ttl: Duration::from_secs(60),
    });

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
        let h = b
            .history(
                "a",
                HistoryQuery {
                    after: Some(0),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(h.position.offset, 5);
        assert_eq!(h.earliest, 3);
        assert_eq!(
            h.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        let h = b
            .history(
                "a",
                HistoryQuery {
                    after: Some(0),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(h.earliest, 6);
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
}
