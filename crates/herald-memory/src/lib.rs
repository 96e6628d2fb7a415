//! The in-memory broker: one node, history and offsets in this process.
//!
//! Each channel is a `Stream` behind its own mutex: assigning the offset, appending to history,
//! checking and remembering the idempotency key and handing the publication to the sink all
//! happen under that lock, so the sink sees each channel in offset order and a replayed
//! history can never race a live publication. No lock is ever held across an `.await`.
//!
//! Every stream gets a random epoch when it is created. What the broker holds grows with its
//! input, so each kind of state has a bound (see [`MemoryOptions`]):
//! - **history**, across all channels, is kept under a byte budget. Every retained publication
//!   gets a global sequence number in an age index; when the budget is exceeded the oldest
//!   publications of the whole broker are evicted first, whatever their channel. Eviction only
//!   ever removes a channel's *oldest* retained publications, so a history stays contiguous
//!   and recovery across an evicted gap answers `recovered: false` like any trimmed history;
//! - **idempotency keys** are remembered for the window, and at most a fixed number at once
//!   (the oldest forgotten first);
//! - **channel records** that retain nothing (a channel subscribed to but never published to,
//!   or whose history expired) are dropped after [`IDLE_EVICTION`] by [`MemoryBroker::sweep`],
//!   and beyond a fixed number at once, least recently used first. A channel used again starts
//!   a new epoch, so a client recovering across that gap is told `recovered: false` instead of
//!   being shown a silent hole.
//!
//! Lock order: the channel map, then a stream, then the age index or the idempotency table.
//! Eviction takes the age index alone, lets it go, then locks the stream it names.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::broker::{HistoryQuery, HistoryResult, MemoryStats, new_epoch};
use herald_core::protocol::ClientInfo;
use herald_core::{
    Broker, BrokerError, Position, PresenceEvent, Publication, PublicationSink, PublishRequest,
};
use serde_json::value::RawValue;
use tokio::time::Instant;

/// Idle streams with nothing retained are forgotten after this long.
pub const IDLE_EVICTION: Duration = Duration::from_secs(3600);

/// How often the background sweeper runs.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Bytes charged to the history budget for each retained publication on top of its payload:
/// the history entry, the payload's `Arc` header and the age index's share (a B-tree entry
/// with its node overhead). An estimate, so that the budget follows what the process really
/// holds and not only payload bytes. The channel name and epoch live once in the stream, not
/// in each entry.
pub const PUBLICATION_OVERHEAD: usize = std::mem::size_of::<Entry>() + 16 + 48;

// A payload of a few hundred bytes must not cost several times its size: an entry that grows
// (a field that belongs in the stream) fails the build here.
const _: () = assert!(PUBLICATION_OVERHEAD <= 128);

/// Bounds on what the broker keeps. Every field has a default sized for one node of a web app.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
    /// Most bytes of history (payloads plus [`PUBLICATION_OVERHEAD`] each) across channels.
    pub history_budget_bytes: usize,
    /// Most idempotency keys remembered at once, across channels.
    pub max_idempotency_keys: usize,
    /// Most channel records kept that retain no history.
    pub max_idle_channels: usize,
    /// Where the broker reports what it holds (the node exports it in `/metrics`).
    pub stats: Arc<MemoryStats>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            idempotency_window: Duration::from_secs(120),
            history_budget_bytes: 256 << 20,
            max_idempotency_keys: 100_000,
            max_idle_channels: 100_000,
            stats: Arc::default(),
        }
    }
}

/// One retained publication: what is not already in its stream.
struct Entry {
    at: Instant,
    /// Its key in the age index.
    seq: u64,
    offset: u64,
    data: Arc<RawValue>,
    /// The vouched publisher of a client publication (`None` for the server).
    from: Option<Arc<RawValue>>,
}

impl Entry {
    fn cost(&self) -> u64 {
        let from = self.from.as_ref().map_or(0, |f| f.get().len() + 16);
        (self.data.get().len() + from + PUBLICATION_OVERHEAD) as u64
    }
}

struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Entry>,
    /// The history TTL, learned from the channel's publish requests.
    ttl: Option<Duration>,
    touched: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Arc::from(new_epoch()),
            offset: 0,
            history: VecDeque::new(),
            ttl: None,
            touched: now,
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

/// Every retained publication by its global sequence number: the first entry is the oldest
/// publication the broker holds, on whichever channel.
#[derive(Default)]
struct Ages {
    next: u64,
    index: BTreeMap<u64, Arc<str>>,
}

/// Idempotency keys of every channel, in the order they were first used.
#[derive(Default)]
struct Idempotency {
    keys: HashMap<(Arc<str>, String), (Instant, Position)>,
    order: VecDeque<(Instant, Arc<str>, String)>,
}

impl Idempotency {
    /// Forgets keys past the window.
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > window)
        {
            self.pop_oldest();
        }
    }

    /// Forgets the oldest key; true when it was still live.
    fn pop_oldest(&mut self) -> bool {
        let Some((t, channel, key)) = self.order.pop_front() else {
            return false;
        };
        let id = (channel, key);
        // A key re-remembered after it expired has a newer entry: leave that one.
        if self.keys.get(&id).is_some_and(|(at, _)| *at == t) {
            self.keys.remove(&id);
            return true;
        }
        false
    }
}

/// The in-memory broker.
pub struct MemoryBroker {
    sink: Arc<dyn PublicationSink>,
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    ages: Mutex<Ages>,
    idempotency: Mutex<Idempotency>,
    /// Presence per channel, by client id.
    presence: Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>,
    /// Streams whose history is not empty (the others count against `max_idle_channels`).
    retaining: AtomicUsize,
    options: MemoryOptions,
    /// Open sessions per user (the per-user limit and the kick's count).
    sessions: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Resumable session states ([`Broker::resume_put`]).
    resumable: Mutex<Resumable>,
}

/// Resumable session states by key, each with its owner and expiry. Expired entries are
/// dropped when read and swept whenever the map has doubled since the last sweep, so it never
/// holds more than twice the live entries.
#[derive(Debug, Default)]
struct Resumable {
    entries: HashMap<String, (String, String, std::time::Instant)>,
    swept_at_len: usize,
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
    /// A broker delivering to `sink`, remembering idempotency keys for `idempotency_window`,
    /// with the default bounds.
    pub fn new(sink: Arc<dyn PublicationSink>, idempotency_window: Duration) -> Arc<Self> {
        Self::with_options(
            sink,
            MemoryOptions {
                idempotency_window,
                ..MemoryOptions::default()
            },
        )
    }

    /// A broker delivering to `sink`, bounded by `options`.
    pub fn with_options(sink: Arc<dyn PublicationSink>, options: MemoryOptions) -> Arc<Self> {
        Arc::new(Self {
            sink,
            streams: Mutex::new(HashMap::new()),
            ages: Mutex::new(Ages::default()),
            idempotency: Mutex::new(Idempotency::default()),
            presence: Mutex::new(HashMap::new()),
            retaining: AtomicUsize::new(0),
            options,
            sessions: Mutex::new(HashMap::new()),
            resumable: Mutex::new(Resumable::default()),
        })
    }

    /// What the broker holds right now.
    pub fn stats(&self) -> &Arc<MemoryStats> {
        &self.options.stats
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

    /// Prunes expired history and idempotency keys, and forgets idle streams that retain
    /// nothing.
    pub fn sweep(&self) {
        let now = Instant::now();
        {
            let mut idem = lock(&self.idempotency);
            idem.prune(now, self.options.idempotency_window);
            self.set_key_count(&idem);
        }
        let mut streams = lock(&self.streams);
        streams.retain(|_, stream| {
            let mut s = lock(stream);
            self.prune(&mut s, now);
            let idle = now.duration_since(s.touched) > IDLE_EVICTION;
            !(idle && s.history.is_empty())
        });
        self.set_channel_count(&streams);
    }

    /// Number of channels with state (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).len()
    }

    fn set_channel_count(&self, streams: &HashMap<Arc<str>, Arc<Mutex<Stream>>>) {
        let stats = &self.options.stats;
        stats
            .channels
            .store(streams.len() as u64, Ordering::Relaxed);
    }

    fn set_key_count(&self, idem: &Idempotency) {
        let stats = &self.options.stats;
        stats
            .idempotency_keys
            .store(idem.keys.len() as u64, Ordering::Relaxed);
    }

    /// The stream of `channel` (created if needed) and the name it is filed under, which
    /// retained publications share instead of carrying a copy each.
    fn stream(&self, channel: &str) -> (Arc<str>, Arc<Mutex<Stream>>) {
        let mut streams = lock(&self.streams);
        if let Some((name, s)) = streams.get_key_value(channel) {
            return (name.clone(), s.clone());
        }
        let name: Arc<str> = Arc::from(channel);
        let s = Arc::new(Mutex::new(Stream::new(Instant::now())));
        streams.insert(name.clone(), s.clone());
        self.trim_idle(&mut streams);
        self.set_channel_count(&streams);
        (name, s)
    }

    /// Past `max_idle_channels` records that retain nothing, drops the least recently used
    /// of them, down to nine tenths of the cap so that the pass (which looks at every record)
    /// runs once per tenth of the cap of new channels, not on every one.
    fn trim_idle(&self, streams: &mut HashMap<Arc<str>, Arc<Mutex<Stream>>>) {
        let cap = self.options.max_idle_channels;
        let idle = streams
            .len()
            .saturating_sub(self.retaining.load(Ordering::Relaxed));
        if idle <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut candidates: Vec<(Instant, Arc<str>)> = streams
            .iter()
            // A stream someone holds right now (a publish or a read in flight) stays: dropping
            // it would only make its next user start a new epoch for nothing.
            .filter(|(_, s)| Arc::strong_count(s) == 1)
            .filter_map(|(name, s)| {
                let s = lock(s);
                s.history.is_empty().then(|| (s.touched, name.clone()))
            })
            .collect();
        candidates.sort_unstable_by_key(|(touched, _)| *touched);
        let dropped = candidates.len().min(idle - target);
        for (_, name) in candidates.into_iter().take(dropped) {
            streams.remove(&name);
        }
        self.options
            .stats
            .channel_evictions
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Appends the stream's latest publication to its history, charging the budget.
    fn retain(
        &self,
        name: &Arc<str>,
        s: &mut Stream,
        now: Instant,
        data: Arc<RawValue>,
        from: Option<Arc<RawValue>>,
    ) {
        let seq = {
            let mut ages = lock(&self.ages);
            let seq = ages.next;
            ages.next += 1;
            ages.index.insert(seq, name.clone());
            seq
        };
        let entry = Entry {
            at: now,
            seq,
            offset: s.offset,
            data,
            from,
        };
        let stats = &self.options.stats;
        stats
            .history_bytes
            .fetch_add(entry.cost(), Ordering::Relaxed);
        stats.history_publications.fetch_add(1, Ordering::Relaxed);
        if s.history.is_empty() {
            self.retaining.fetch_add(1, Ordering::Relaxed);
        }
        s.history.push_back(entry);
    }

    /// Removes a stream's oldest retained publication, giving its bytes back to the budget.
    fn drop_oldest(&self, s: &mut Stream) -> Option<Entry> {
        let entry = s.history.pop_front()?;
        lock(&self.ages).index.remove(&entry.seq);
        let stats = &self.options.stats;
        stats
            .history_bytes
            .fetch_sub(entry.cost(), Ordering::Relaxed);
        stats.history_publications.fetch_sub(1, Ordering::Relaxed);
        if s.history.is_empty() {
            self.retaining.fetch_sub(1, Ordering::Relaxed);
            // A burst once grew this ring; an idle channel should not keep its capacity.
            if s.history.capacity() > 16 {
                s.history = VecDeque::new();
            }
        }
        Some(entry)
    }

    /// Drops history past its TTL.
    fn prune(&self, s: &mut Stream, now: Instant) {
        let Some(ttl) = s.ttl else { return };
        while s
            .history
            .front()
            .is_some_and(|e| now.duration_since(e.at) > ttl)
        {
            self.drop_oldest(s);
        }
    }

    /// Evicts the broker's oldest publications until history fits its budget again.
    /// Called with no stream locked.
    fn enforce_budget(&self) {
        let stats = &self.options.stats;
        let budget = self.options.history_budget_bytes as u64;
        while stats.history_bytes.load(Ordering::Relaxed) > budget {
            let Some((seq, name)) = lock(&self.ages).index.pop_first() else {
                break;
            };
            let stream = lock(&self.streams).get(&name).cloned();
            let Some(stream) = stream else { continue };
            let mut s = lock(&stream);
            // Within a stream sequence numbers grow, so everything up to `seq` is older than
            // what the index still holds: gone too (a concurrent eviction may have taken an
            // older one from the index already and not reached the stream yet).
            while s.history.front().is_some_and(|e| e.seq <= seq) {
                self.drop_oldest(&mut s);
                stats.history_evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn publish_sync(&self, req: PublishRequest) -> Position {
        let (name, stream) = self.stream(&req.channel);
        let position = {
            let mut s = lock(&stream);
            let now = Instant::now();
            s.touched = now;
            if let Some(p) = req.history {
                s.ttl = Some(p.ttl);
            }
            self.prune(&mut s, now);
            let window = self.options.idempotency_window;
            if let Some(key) = &req.idempotency_key {
                let mut idem = lock(&self.idempotency);
                idem.prune(now, window);
                if let Some((_, pos)) = idem.keys.get(&(name.clone(), key.clone())) {
                    return pos.clone();
                }
            }
            s.offset += 1;
            let publication = Publication {
                channel: name.clone(),
                offset: s.offset,
                epoch: s.epoch.clone(),
                data: req.data,
                from: req.from,
            };
            if let Some(p) = req.history {
                self.retain(
                    &name,
                    &mut s,
                    now,
                    publication.data.clone(),
                    publication.from.clone(),
                );
                while s.history.len() > p.size {
                    self.drop_oldest(&mut s);
                }
            }
            let position = s.position();
            if let Some(key) = req.idempotency_key {
                self.remember(name, key, now, position.clone());
            }
            // Delivered under the stream lock: this is what keeps per-channel order for the sink.
            self.sink.deliver(&publication);
            position
        };
        self.enforce_budget();
        position
    }

    /// Remembers an idempotency key, forgetting the oldest beyond the cap.
    fn remember(&self, channel: Arc<str>, key: String, now: Instant, position: Position) {
        let mut idem = lock(&self.idempotency);
        idem.order.push_back((now, channel.clone(), key.clone()));
        idem.keys.insert((channel, key), (now, position));
        let mut forgotten = 0;
        while idem.keys.len() > self.options.max_idempotency_keys {
            if idem.pop_oldest() {
                forgotten += 1;
            }
        }
        let stats = &self.options.stats;
        stats
            .idempotency_evictions
            .fetch_add(forgotten, Ordering::Relaxed);
        self.set_key_count(&idem);
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
        let (name, stream) = self.stream(channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        s.touched = now;
        self.prune(&mut s, now);
        let earliest = s.history.front().map_or(s.offset + 1, |e| e.offset);
        let after = query.after.unwrap_or(s.offset);
        let publications = s
            .history
            .iter()
            .filter(|e| e.offset > after)
            .take(query.limit)
            .map(|e| Publication {
                channel: name.clone(),
                offset: e.offset,
                epoch: s.epoch.clone(),
                data: e.data.clone(),
                from: e.from.clone(),
            })
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

    async fn resume_put(
        &self,
        key: &str,
        owner: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let now = std::time::Instant::now();
        let mut r = lock(&self.resumable);
        if r.entries.len() >= (r.swept_at_len * 2).max(64) {
            r.entries.retain(|_, (_, _, expires)| *expires > now);
            r.swept_at_len = r.entries.len();
        }
        if let Some((held_by, _, expires)) = r.entries.get(key)
            && *expires > now
            && held_by != owner
        {
            return Ok(false);
        }
        r.entries.insert(
            key.to_owned(),
            (owner.to_owned(), state.to_owned(), now + ttl),
        );
        Ok(true)
    }

    async fn resume_take(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let now = std::time::Instant::now();
        let mut r = lock(&self.resumable);
        let state = r
            .entries
            .insert(key.to_owned(), (owner.to_owned(), String::new(), now + ttl))
            .filter(|(_, state, expires)| *expires > now && !state.is_empty())
            .map(|(_, state, _)| state);
        Ok(state)
    }

    async fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn idempotency_window(&self) -> Duration {
        self.options.idempotency_window
    }
}

#[cfg(test)]
mod tests;
