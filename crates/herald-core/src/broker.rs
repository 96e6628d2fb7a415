//! The `Broker` interface: offsets, history and fan-out between gateway nodes.
//!
//! A broker assigns each publication the next offset of its channel, keeps history, and hands
//! every publication to the [`PublicationSink`] of each node that asked for the channel (the
//! node's hub, which fans it out to local connections). Sinks receive the publications of one
//! channel in offset order; that is the only ordering promise, and the one clients rely on.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::ClientInfo;
use crate::registry::HistoryPolicy;

/// A fresh random epoch (10 alphanumerics: about 60 bits, so two histories of one channel
/// never share a name). Every broker names new histories with it.
pub fn new_epoch() -> String {
    random_id(10)
}

/// `len` random alphanumerics (62 symbols, about 5.95 bits each) from the thread's CSPRNG:
/// epochs, node ids, and the unguessable session ids of request-routed transports.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A publication as it travels from broker to sinks: cheap to clone (all shared).
#[derive(Debug, Clone)]
pub struct Publication {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub data: Arc<RawValue>,
    /// Who published it, as the gateway authenticated them: `{"user":…,"client":…}` for a
    /// client publication, `None` for the server (the API, event sources). Never part of
    /// `data`: no payload can set it.
    pub from: Option<Arc<RawValue>>,
}

/// Where a channel's stream stands: the offset of its latest publication (0 before any) and
/// the epoch naming this unbroken history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// A request to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: Arc<str>,
    pub data: Arc<RawValue>,
    /// Retention for the channel (from its descriptor); `None` keeps no history.
    pub history: Option<HistoryPolicy>,
    /// Same key within `idempotency_window` returns the first result and publishes nothing.
    pub idempotency_key: Option<String>,
    /// The vouched publisher (see [`Publication::from`]); stored and delivered with it.
    pub from: Option<Arc<RawValue>>,
}

/// What a history read returns.
#[derive(Debug, Clone)]
pub struct HistoryResult {
    /// The channel's current position.
    pub position: Position,
    /// Retained publications with offset greater than the requested one, oldest first, at most
    /// `limit`.
    pub publications: Vec<Publication>,
    /// Offset of the oldest retained publication (`position.offset + 1` when none is kept).
    pub earliest: u64,
}

/// A history query.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryQuery {
    /// Return publications with offset greater than this.
    pub after: Option<u64>,
    /// At most this many (0: only the position).
    pub limit: usize,
}

/// Broker failures. `Unavailable` is what callers see when the backend is down: the API maps
/// it to 503 and never turns it into a silent drop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker error: {0}")]
    Internal(String),
}

/// A change in a presence channel's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Join(ClientInfo),
    Leave(ClientInfo),
}

/// Receives publications (and presence changes) for the channels its node subscribed to.
pub trait PublicationSink: Send + Sync + 'static {
    /// Called in offset order per channel. Must not block: it runs on the broker's delivery path.
    fn deliver(&self, publication: &Publication);

    /// A client joined or left a presence channel (on any node).
    fn presence(&self, channel: &str, event: &PresenceEvent);

    /// The broker may have missed publications of `channel` (its link to the backend was
    /// down); `position` is where the channel stands now. A sink that delivered up to another
    /// position must make its subscribers recover (they resubscribe with `since`).
    fn resync(&self, channel: &str, position: &Position) {
        let _ = (channel, position);
    }

    /// Close every session of `user` on this node (4403): a kick made on any node.
    fn kick(&self, user: &str);
}

/// Paces a task that delivers to a [`PublicationSink`] (the memory broker's fan-out task, the
/// Redis pub/sub reader, a NATS subscription's reader): it counts the bytes handed over and
/// says when the task should yield, once every [`FanoutPace::SLICE_BYTES`].
///
/// Why: such a task can hold far more than one connection's outbound queue at once (one
/// `/v1/publish/batch` of 1,000 × 1.5 KB to one channel; a pub/sub connection's read buffer
/// full of them). Handed over without a pause, all of it landed in every subscriber's queue
/// before any connection task could write, and prompt readers were closed as slow consumers
/// (4008). Yielding after each slice lets the writers send it first, so a queue only grows
/// for a client that reads slower than the gateway writes.
///
/// ```
/// # use herald_core::broker::FanoutPace;
/// let mut pace = FanoutPace::default();
/// assert!(!pace.delivered(FanoutPace::SLICE_BYTES - 1));
/// assert!(pace.delivered(1)); // yield now; counting starts again
/// assert!(!pace.delivered(1));
/// ```
#[derive(Debug, Default)]
pub struct FanoutPace {
    since_yield: usize,
}

impl FanoutPace {
    /// Bytes delivered between two yields: small beside the default 1 MiB outbound queue
    /// (and the configuration keeps any queue at least twice the largest payload).
    pub const SLICE_BYTES: usize = 32 * 1024;

    /// Counts `bytes` handed to the sink; `true` when the task should yield now (the count
    /// then starts again).
    pub fn delivered(&mut self, bytes: usize) -> bool {
        self.since_yield += bytes;
        if self.since_yield >= Self::SLICE_BYTES {
            self.since_yield = 0;
            return true;
        }
        false
    }
}

/// What a broker holds in this process's memory and what it had to let go of to stay within
/// its bounds: counters the broker updates and the node exports in `/metrics`. The memory
/// broker fills them; a broker whose state lives elsewhere (Redis) leaves them at zero.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// Bytes of retained history (payloads plus per-publication bookkeeping).
    pub history_bytes: AtomicU64,
    /// Publications retained in history.
    pub history_publications: AtomicU64,
    /// Publications evicted from history before their size or TTL said so, to stay within
    /// the history byte budget.
    pub history_evictions: AtomicU64,
    /// Channel records held (offset and epoch of every channel seen recently).
    pub channels: AtomicU64,
    /// Channel records that retained nothing and were dropped at the cap.
    pub channel_evictions: AtomicU64,
    /// Idempotency keys remembered.
    pub idempotency_keys: AtomicU64,
    /// Idempotency keys forgotten before their window ended, at the cap.
    pub idempotency_evictions: AtomicU64,
}

/// What a broker's fan-out brought to this node: counters the broker updates and the node
/// exports in `/metrics`. A broker that fans out through another system (Redis pub/sub, NATS)
/// fills them; the memory broker, whose fan-out is a function call, leaves them at zero.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// Messages (publications, presence events) this node received from the fan-out backend.
    pub messages: AtomicU64,
    /// Of them, those for a channel with no subscriber on this node: zero when the backend
    /// sends a node only the channels it asked for (sharded pub/sub on a Redis Cluster), a
    /// few after an unsubscribe races a publication.
    pub unwanted: AtomicU64,
}

/// Channel positions [`resync_channels`] reads at once.
pub const RESYNC_CONCURRENCY: usize = 64;

/// After a break in a broker's fan-out (its subscription link was lost and made again): reads
/// the position of every channel in `channels` through `broker` and hands it to
/// `sink.resync`, [`RESYNC_CONCURRENCY`] at a time. One after another, a node with many
/// channels told the last of them about a loss a round trip per channel later (1,000 channels
/// with Redis 30 ms away: 37 s). Returns the channels whose position could not be read, with
/// the error, for the broker to log.
pub async fn resync_channels(
    broker: &dyn Broker,
    sink: &dyn PublicationSink,
    channels: Vec<String>,
) -> Vec<(String, BrokerError)> {
    use futures_util::StreamExt;
    futures_util::stream::iter(channels)
        .map(|ch| async move {
            match broker.history(&ch, HistoryQuery::default()).await {
                Ok(h) => {
                    sink.resync(&ch, &h.position);
                    None
                }
                Err(e) => Some((ch, e)),
            }
        })
        .buffer_unordered(RESYNC_CONCURRENCY)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// The fan-out, history and presence backend shared by all transports.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Assigns the next offset, appends to history and delivers to every interested node.
    async fn publish(&self, request: PublishRequest) -> Result<Position, BrokerError>;

    /// Publishes `requests` as if each were given to [`Broker::publish`] in turn, and answers
    /// one result per request, in the same order (the answer has `requests.len()` entries).
    ///
    /// The contract, which every implementation keeps:
    /// - Items on the same channel get offsets in batch order (consecutive, unless an item
    ///   between them failed or another publisher's publication came in between), and sinks
    ///   and history see them in that order. Items on different channels are independent.
    /// - Each item succeeds or fails alone, with the error a single publish of it would
    ///   have had: one item's failure (a backend error on its channel, its idempotency key)
    ///   neither fails nor reorders the others.
    /// - Idempotency keys behave as for single publishes, inside the batch too: a second item
    ///   with the key of an earlier item on the same channel (earlier in this batch, or within
    ///   [`Broker::idempotency_window`] before it) publishes nothing and is answered with the
    ///   first one's position.
    ///
    /// The default publishes one at a time (one backend round trip per item); a broker that
    /// can do better (Redis: one round trip for the whole batch) overrides it.
    async fn publish_batch(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Vec<Result<Position, BrokerError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(self.publish(request).await);
        }
        results
    }

    /// One more local subscriber of `channel`: deliver the channel's publications to this
    /// node's sink.
    ///
    /// The contract, which every implementation keeps:
    /// - Calls are counted, one per local subscriber: each successful call is undone by one
    ///   [`Broker::unsubscribe`], and the node receives the channel while the count is above
    ///   zero. A failed call counts nothing.
    /// - A call returns once this node receives every publication of `channel` made after it
    ///   returns, also when another call for the same channel is still in flight: the caller
    ///   reads the channel's position next, and no publication may fall between the two.
    ///
    /// Errors: `Unavailable` when the backend cannot confirm the subscription in time.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// One local subscriber of `channel` fewer; after the last, this node stops receiving it.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// The channel's position and retained publications after `query.after`.
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError>;

    /// Records `client` as present on `channel` and tells every node's subscribers (`join`).
    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError>;

    /// Removes `client` from `channel`'s presence and tells the subscribers (`leave`).
    /// Removing an absent client is not an error and sends nothing.
    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError>;

    /// The clients present on `channel`, sorted by client id.
    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError>;

    /// Registers a session of `client.user` cluster-wide, unless the user already has `max`
    /// sessions open on live nodes: `Ok(false)` then, and nothing is registered. Anonymous
    /// sessions (no user) are not counted and always admitted. Sessions of a node that died
    /// stop counting once the broker has noticed (see each broker's docs).
    async fn session_open(&self, client: &ClientInfo, max: usize) -> Result<bool, BrokerError>;

    /// Unregisters a session registered by [`Broker::session_open`]. Closing an unknown or
    /// anonymous session is not an error.
    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError>;

    /// Tells every node to close the sessions of `user` (each node's sink gets
    /// [`PublicationSink::kick`]) and returns how many sessions of the user were registered on
    /// live nodes when the kick was made: the number that are being closed, cluster-wide.
    async fn kick(&self, user: &str) -> Result<usize, BrokerError>;

    /// Keeps a transport's resumable session state (Socket.IO connection state recovery: the
    /// session's subscriptions, docs/socketio.md) under `key` for `ttl`, on behalf of `owner`
    /// (the session's client id), so a reconnect on any node sharing the broker can take it.
    /// A key held by another owner is left alone and `Ok(false)` returned: a session that
    /// resumed elsewhere must not be overwritten by its old node noticing late that it left.
    async fn resume_put(
        &self,
        key: &str,
        owner: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError>;

    /// Takes the state under `key` for the session `owner` that resumes it: returns it and
    /// leaves an empty state held by `owner` for `ttl`, so one state resumes at most one
    /// session and the old holder's late writes are refused (the resumed session writes its
    /// own under the same key). `None` when there is none, it expired, or it was taken.
    async fn resume_take(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError>;

    /// Whether the backend is reachable (drives `/readyz`).
    async fn health(&self) -> Result<(), BrokerError>;

    /// How long idempotency keys are remembered.
    fn idempotency_window(&self) -> Duration;
}

/// The books a shared broker (Redis, NATS) keeps of the sessions it registered for this node's
/// clients: client → user, registered again when the backend lost them, and the clients
/// whose unregistering failed (the backend was away), retried at every beat so a user is never
/// locked out by a slot nobody holds.
#[derive(Debug, Default)]
pub struct LocalSessions {
    open: std::sync::Mutex<std::collections::HashMap<String, String>>,
    orphans: std::sync::Mutex<Vec<ClientInfo>>,
}

impl LocalSessions {
    fn open(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, Vec<ClientInfo>> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a session the backend accepted.
    pub fn opened(&self, client: String, user: String) {
        self.open().insert(client, user);
    }

    /// Every open session, (client, user), to register again.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.open()
            .iter()
            .map(|(c, u)| (c.clone(), u.clone()))
            .collect()
    }

    /// Closes `client`'s session: when this node had registered it, `unregister(client,
    /// user)`; a failure keeps the client for [`LocalSessions::retry_orphans`] and is returned.
    pub async fn close<F, Fut>(&self, client: &ClientInfo, unregister: F) -> Result<(), BrokerError>
    where
        F: FnOnce(String, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        let Some(user) = &client.user else {
            return Ok(());
        };
        if self.open().remove(&client.client).is_none() {
            return Ok(());
        }
        let result = unregister(client.client.clone(), user.clone()).await;
        if result.is_err() {
            self.orphans().push(client.clone());
        }
        result
    }

    /// Tries again to unregister every session whose unregistering failed; those that fail
    /// again stay for the next beat.
    pub async fn retry_orphans<F, Fut>(&self, mut unregister: F)
    where
        F: FnMut(String, String) -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        let orphans = std::mem::take(&mut *self.orphans());
        for o in orphans {
            if let Some(user) = &o.user
                && unregister(o.client.clone(), user.clone()).await.is_err()
            {
                self.orphans().push(o);
            }
        }
    }
}
