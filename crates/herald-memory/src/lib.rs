//! The in-memory broker: one node, history and offsets in this process.
//!
//! Each channel is a `Stream` behind its own mutex: assigning the offset, appending to history,
//! checking and remembering the idempotency key and handing the publication to the sink all
//! happen under that lock, so the sink sees each channel in offset order. A node puts a queue
//! between this broker and its hub (`herald_node::fanout`), so a live publication may reach the
//! hub after a history read that already returned it, exactly as with Redis: the hub skips, per
//! subscriber, what that subscriber was told. No lock is ever held across an `.await`.
//!
//! A channel that is read (subscribed to) but never published to holds no stream: a *fresh*
//! record (its epoch and when it was last used) answers for it at offset 0 until the first
//! publication makes it a stream under that same epoch, so what its subscribers were told
//! stays true. Every user's auto-subscribed channel is such a channel until something is sent
//! to it, and one per idle connection is where the bytes are (issue 16).
//!
//! Epochs are random and shared: every record created between two drops of records gets the
//! broker's current epoch (one allocation for all of them), and dropping a record draws a new
//! current epoch under the same lock. A channel whose record was dropped therefore never comes
//! back under an epoch it had before, which is all an epoch has to say ("this unbroken
//! history"): two *different* channels sharing one is harmless. What the broker holds grows with its
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

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// A channel that has been published to.
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Entry>,
    /// The history TTL, learned from the channel's publish requests.
    ttl: Option<Duration>,
    touched: Instant,
}

impl Stream {
    /// The stream of a fresh record's first publication: offset 0 in `epoch`, the position
    /// the record answered with.
    fn new(epoch: Arc<str>, now: Instant) -> Self {
        Self {
            epoch,
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

/// What the broker knows of one channel.
enum Record {
    /// Read but never published to: offset 0 in `epoch`. 32 B in the map, where a stream
    /// costs its own allocation (offset, history ring, TTL, lock) beside the map's entry.
    Fresh { epoch: Arc<str>, touched: Instant },
    /// Published to: offsets, history, under the stream's own lock.
    Live(Arc<Mutex<Stream>>),
}

/// The channel records and the epoch new records get.
struct Records {
    map: HashMap<Arc<str>, Record>,
    /// The epoch of records created from now on; replaced whenever a record is dropped.
    epoch: Arc<str>,
}

impl Records {
    /// Draws a new current epoch: called whenever records were dropped (see the module docs).
    fn rotate(&mut self) {
        self.epoch = Arc::from(new_epoch());
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
    streams: Mutex<Records>,
    ages: Mutex<Ages>,
    idempotency: Mutex<Idempotency>,
    /// Presence per channel, by client id.
    presence: Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>,
    /// Streams whose history is not empty (the others count against `max_idle_channels`).
    retaining: AtomicUsize,
    options: MemoryOptions,
    /// Open sessions per user (the per-user limit and the kick's count).
    sessions: Mutex<HashMap<Box<str>, Open>>,
    /// Resumable session states ([`Broker::resume_put`]).
    resumable: Mutex<Resumable>,
}

/// The client ids of one user's open sessions. Most users hold one connection, so one id is
/// kept inline and a vector only appears for the second: a set per user (a `BTreeSet`'s
/// first leaf is eleven slots) cost 278 B per idle connection (heaptrack, docs/benchmarks.md,
/// issue 16). Lookups in `Many` are linear: it holds at most `limits.max_connections_per_user`
/// ids (64 by default).
#[derive(Debug)]
enum Open {
    One(Box<str>),
    Many(Vec<Box<str>>),
}

impl Open {
    fn len(&self) -> usize {
        match self {
            Open::One(_) => 1,
            Open::Many(ids) => ids.len(),
        }
    }

    fn contains(&self, client: &str) -> bool {
        match self {
            Open::One(id) => **id == *client,
            Open::Many(ids) => ids.iter().any(|id| **id == *client),
        }
    }

    /// Adds `client` (known to be absent).
    fn push(&mut self, client: &str) {
        match self {
            Open::One(id) => {
                let first = std::mem::take(id);
                *self = Open::Many(vec![first, Box::from(client)]);
            }
            Open::Many(ids) => ids.push(Box::from(client)),
        }
    }

    /// Removes `client`; true when no session is left.
    fn remove(&mut self, client: &str) -> bool {
        match self {
            Open::One(id) => **id == *client,
            Open::Many(ids) => {
                ids.retain(|id| **id != *client);
                if let [last] = ids.as_mut_slice() {
                    *self = Open::One(std::mem::take(last));
                    return false;
                }
                ids.is_empty()
            }
        }
    }
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
            streams: Mutex::new(Records {
                map: HashMap::new(),
                epoch: Arc::from(new_epoch()),
            }),
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
        let before = streams.map.len();
        streams.map.retain(|_, record| match record {
            Record::Fresh { touched, .. } => now.duration_since(*touched) <= IDLE_EVICTION,
            Record::Live(stream) => {
                let mut s = lock(stream);
                self.prune(&mut s, now);
                let idle = now.duration_since(s.touched) > IDLE_EVICTION;
                !(idle && s.history.is_empty())
            }
        });
        if streams.map.len() < before {
            streams.rotate();
        }
        self.set_channel_count(&streams);
    }

    /// Number of channels with a record, fresh or published to (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).map.len()
    }

    fn set_channel_count(&self, streams: &Records) {
        let stats = &self.options.stats;
        stats
            .channels
            .store(streams.map.len() as u64, Ordering::Relaxed);
    }

    fn set_key_count(&self, idem: &Idempotency) {
        let stats = &self.options.stats;
        stats
            .idempotency_keys
            .store(idem.keys.len() as u64, Ordering::Relaxed);
    }

    /// The stream of `channel` (created if needed, from its fresh record if it has one) and
    /// the name it is filed under, which retained publications share instead of carrying a
    /// copy each.
    fn stream(&self, channel: &str) -> (Arc<str>, Arc<Mutex<Stream>>) {
        let mut streams = lock(&self.streams);
        let now = Instant::now();
        if let Some((name, record)) = streams.map.get_key_value(channel) {
            let name = name.clone();
            let s = match record {
                Record::Live(s) => return (name, s.clone()),
                Record::Fresh { epoch, .. } => {
                    Arc::new(Mutex::new(Stream::new(epoch.clone(), now)))
                }
            };
            streams.map.insert(name.clone(), Record::Live(s.clone()));
            return (name, s);
        }
        let name: Arc<str> = Arc::from(channel);
        let s = Arc::new(Mutex::new(Stream::new(streams.epoch.clone(), now)));
        streams.map.insert(name.clone(), Record::Live(s.clone()));
        self.trim_idle(&mut streams);
        self.set_channel_count(&streams);
        (name, s)
    }

    /// The position of a channel that has never been published to, recording it as fresh if
    /// it has no record yet; `None` when it has a stream (read that instead).
    fn fresh_position(&self, channel: &str) -> Option<Position> {
        let mut streams = lock(&self.streams);
        let now = Instant::now();
        match streams.map.get_mut(channel) {
            Some(Record::Live(_)) => None,
            Some(Record::Fresh { epoch, touched }) => {
                *touched = now;
                Some(Position {
                    offset: 0,
                    epoch: epoch.clone(),
                })
            }
            None => {
                let epoch = streams.epoch.clone();
                streams.map.insert(
                    Arc::from(channel),
                    Record::Fresh {
                        epoch: epoch.clone(),
                        touched: now,
                    },
                );
                self.trim_idle(&mut streams);
                self.set_channel_count(&streams);
                Some(Position { offset: 0, epoch })
            }
        }
    }

    /// Past `max_idle_channels` records that retain nothing, drops the least recently used
    /// of them, down to nine tenths of the cap so that the pass (which looks at every record)
    /// runs once per tenth of the cap of new channels, not on every one.
    fn trim_idle(&self, streams: &mut Records) {
        let cap = self.options.max_idle_channels;
        let idle = streams
            .map
            .len()
            .saturating_sub(self.retaining.load(Ordering::Relaxed));
        if idle <= cap {
            return;
        }
        let target = cap - cap / 10;
        let mut candidates: Vec<(Instant, Arc<str>)> = streams
            .map
            .iter()
            .filter_map(|(name, record)| match record {
                Record::Fresh { touched, .. } => Some((*touched, name.clone())),
                // A stream someone holds right now (a publish or a read in flight) stays:
                // dropping it would only make its next user start a new epoch for nothing.
                Record::Live(s) if Arc::strong_count(s) == 1 => {
                    let s = lock(s);
                    s.history.is_empty().then(|| (s.touched, name.clone()))
                }
                Record::Live(_) => None,
            })
            .collect();
        candidates.sort_unstable_by_key(|(touched, _)| *touched);
        let dropped = candidates.len().min(idle - target);
        for (_, name) in candidates.into_iter().take(dropped) {
            streams.map.remove(&name);
        }
        if dropped > 0 {
            streams.rotate();
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
            let stream = match lock(&self.streams).map.get(&name) {
                Some(Record::Live(s)) => s.clone(),
                _ => continue,
            };
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
        if let Some(position) = self.fresh_position(channel) {
            // Never published to: nothing retained, the next offset is the first.
            return Ok(HistoryResult {
                position,
                publications: Vec::new(),
                earliest: 1,
            });
        }
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
        match sessions.get_mut(user.as_str()) {
            Some(open) if open.contains(&client.client) => {}
            Some(open) if open.len() >= max => return Ok(false),
            Some(open) => open.push(&client.client),
            None if max == 0 => return Ok(false),
            None => {
                sessions.insert(
                    Box::from(user.as_str()),
                    Open::One(Box::from(client.client.as_str())),
                );
            }
        }
        Ok(true)
    }

    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        let Some(user) = &client.user else {
            return Ok(());
        };
        let mut sessions = lock(&self.sessions);
        if let Some(open) = sessions.get_mut(user.as_str())
            && open.remove(&client.client)
        {
            sessions.remove(user.as_str());
        }
        Ok(())
    }

    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        let n = lock(&self.sessions).get(user).map_or(0, Open::len);
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
