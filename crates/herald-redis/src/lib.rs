//! The Redis broker: many gateway nodes, one channel space.
//!
//! Every node talks to the same Redis. Per channel, Redis holds a meta hash (`offset`, `epoch`),
//! a stream with the retained history and, for presence channels, a hash of present clients.
//! Publishing is one Lua script: idempotency check, offset increment, history append and
//! `PUBLISH` happen atomically, so offsets are gap-free and global, and every node's pub/sub
//! connection receives a channel's publications in offset order. A batch
//! ([`Broker::publish_batch`]) is one round trip: its items are grouped by channel, each
//! channel's run in batch order by one script call (per 100 items), and the calls go out in
//! one pipeline (on a Cluster, concurrently to each channel's shard).
//!
//! A node subscribes to a channel's Redis pub/sub channel only while it has local subscribers
//! (counted here, one per local subscriber, so a concurrent last-unsubscribe and
//! first-subscribe can never leave the node deaf). Every subscribe waits for Redis'
//! acknowledgement of the channel before the connection reads the channel's position, also a
//! second subscriber's while the first one's SUBSCRIBE is still unanswered: no publication can
//! fall between the two.
//!
//! Faults: commands fail fast with `Unavailable` while Redis is away (publishers get 503 and
//! decide; nothing is dropped silently); the pub/sub task reconnects with backoff, resubscribes
//! and then asks the sink to resync every channel, so subscribers that missed publications
//! recover with `since`. A Redis that lost its data gives the channel a new epoch at the next
//! publish or read, so clients see `recovered: false` rather than a gap.
//!
//! Cluster-wide state per node: every node has a random id and a heartbeat in the sorted set
//! `{<prefix>}:nodes` (score: the moment it counts as dead, 3/5 of `presence_ttl` after its last
//! beat; it beats [`BEATS`] times per `presence_ttl`). Each node records what it owns
//! under `{<prefix>}:node:<id>:presence` (its members of every presence channel) and
//! `{<prefix>}:node:<id>:sessions` (its users' sessions), and each user's sessions are in
//! `{<prefix>}:user:<user>` (session → node). At every beat each node also reaps the nodes whose
//! heartbeat is over: one script takes a dead node's records and frees its users' sessions, then
//! the reaper removes its presence entries channel by channel and publishes a `leave` for each.
//! So a node killed without a goodbye has its members leave within 4/5 of `presence_ttl`, and
//! its sessions stop counting against the per-user limit.
//! The per-user limit and the kick read `{<prefix>}:user:<user>`, counting only live nodes'
//! sessions; a kick is published on `{<prefix>}:ctl`, which every node listens to. A node that
//! was reaped while alive (cut off from Redis for longer than its life) notices at its next beat
//! and announces its members again (`join`) and re-registers its sessions.
//!
//! Topologies ([`Topology`]): one server (`redis://`, `rediss://`, `unix://`), a
//! Sentinel-managed master followed through failovers (`redis+sentinel://`), or a Redis Cluster
//! (`redis+cluster://`). The key layout is the same for all and made for the Cluster: a
//! channel's keys and its pub/sub channel share the hash tag `{<channel>}` (one slot, so the
//! publish stays one atomic script on the slot's master), and the cluster-wide keys share
//! `{<prefix>}` (one slot, so the session and heartbeat scripts stay atomic too). No script
//! names a key it computes. On a Cluster, publications and presence events go out with
//! `SPUBLISH` (sharded pub/sub, `pubsub.rs`), elsewhere with `PUBLISH`. TLS (`rediss…`) uses
//! rustls, with the system's roots or the CA in [`TlsFiles`].

mod lua;
mod pubsub;
mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herald_core::broker::{
    FanoutStats, HistoryQuery, HistoryResult, LocalSessions, new_epoch, random_id,
};
use herald_core::protocol::ClientInfo;
use herald_core::{Broker, BrokerError, Position, Publication, PublicationSink, PublishRequest};
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::lua::{Call, Lua};
use crate::pubsub::{Control, Source, control_channel, pubsub_channel};
use crate::topology::{Conn, Following};
pub use crate::topology::{SentinelTarget, TlsFiles, Topology};

/// Channels with no publication for this long forget their offset (a new epoch starts).
const META_IDLE: Duration = Duration::from_secs(3600);

/// Every command gives up after this, so a dead Redis answers 503 quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Most items of one channel in one batch script call, and most bytes of their data (a call
/// has one item at least). Redis runs a script to its end and serves nobody else meanwhile:
/// 100 items of 100 bytes took 1.7 ms on a loaded 2-core machine, 1000 in one call 18 ms.
const CHUNK_ITEMS: usize = 100;
const CHUNK_BYTES: usize = 1 << 20;

/// A node beats this many times per `presence_ttl`.
pub const BEATS: u32 = 5;

/// A node counts as dead this many beats after its last one (so one or two late beats on a
/// loaded machine do not kill it), which is 3/5 of `presence_ttl`; the next beat of a survivor
/// reaps it, so its members' `leave` is published within 4/5 of `presence_ttl`.
const NODE_LIFE: u32 = 3;

/// Registers a session unless its user has `max` on live nodes (dropping entries of dead ones).
const SESSION_OPEN_LUA: &str = r#"
-- KEYS: user hash, nodes zset, this node's sessions hash
-- ARGV: client, node id, max, now ms, this node's expiry ms, user
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
local entries = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[4])
local n = 0
for i = 1, #entries, 2 do
  local alive = redis.call('ZSCORE', KEYS[2], entries[i + 1])
  if entries[i] == ARGV[1] then
    -- already registered (a retry)
  elseif alive and tonumber(alive) >= now then
    n = n + 1
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
if n >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
return 1
"#;

/// Counts the user's sessions on live nodes and tells every node to close them.
/// Resumable session state (`resume_put`): KEYS[1] the state; ARGV owner, state, ttl ms.
/// Stored as `owner \n state`; a live key of another owner is left alone (0).
const RESUME_PUT_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
local tag = ARGV[1] .. '\n'
if cur and string.sub(cur, 1, #tag) ~= tag then
  return 0
end
redis.call('SET', KEYS[1], tag .. ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Resumable session state (`resume_take`): KEYS[1] the state; ARGV new owner, ttl ms.
/// Returns the state (false when none or empty) and leaves an empty one held by the new owner.
const RESUME_TAKE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1] .. '\n', 'PX', ARGV[2])
if not cur then
  return false
end
local nl = string.find(cur, '\n', 1, true)
if not nl or nl == #cur then
  return false
end
return string.sub(cur, nl + 1)
"#;

const KICK_LUA: &str = r#"
-- KEYS: user hash, nodes zset
-- ARGV: now ms, control channel, message, PUBLISH or SPUBLISH
local entries = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[1])
local n = 0
for i = 1, #entries, 2 do
  local alive = redis.call('ZSCORE', KEYS[2], entries[i + 1])
  if alive and tonumber(alive) >= now then
    n = n + 1
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
redis.call(ARGV[4], ARGV[2], ARGV[3])
return n
"#;

/// One beat: this node's expiry moves on. Answers whether it had been reaped meanwhile, and
/// how many sessions and members Redis holds for it (fewer than it has: Redis lost them).
const BEAT_LUA: &str = r#"
-- KEYS: nodes zset, this node's reaped marker, its sessions hash, its presence hash
-- ARGV: node id, expiry ms
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local reaped = 0
if redis.call('GET', KEYS[2]) then
  redis.call('DEL', KEYS[2])
  reaped = 1
end
return {reaped, redis.call('HLEN', KEYS[3]), redis.call('HLEN', KEYS[4])}
"#;

/// Takes every node whose heartbeat is over: frees its sessions, deletes its records and
/// returns its presence members as `channel, client, member JSON` triples, for the caller to
/// remove from each channel (another slot on a Cluster) with a `leave`. Only one node wins
/// each dead node (ZREM answers 1 once).
const REAP_LUA: &str = r#"
-- KEYS: nodes zset
-- ARGV: now ms, cluster-wide key prefix ('{<prefix>}'), reaped marker ttl ms
local prefix = ARGV[2]
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local out = {}
for _, node in ipairs(dead) do
  if redis.call('ZREM', KEYS[1], node) == 1 then
    local nk = prefix .. ':node:' .. node
    local members = redis.call('HGETALL', nk .. ':presence')
    for i = 1, #members, 2 do
      local sep = string.find(members[i], '\n', 1, true)
      table.insert(out, string.sub(members[i], 1, sep - 1))
      table.insert(out, string.sub(members[i], sep + 1))
      table.insert(out, members[i + 1])
    end
    local sessions = redis.call('HGETALL', nk .. ':sessions')
    for i = 1, #sessions, 2 do
      redis.call('HDEL', prefix .. ':user:' .. sessions[i + 1], sessions[i])
    end
    redis.call('DEL', nk .. ':presence', nk .. ':sessions')
    redis.call('SET', nk .. ':reaped', '1', 'PX', ARGV[3])
  end
end
return out
"#;

/// A presence change on one channel (its slot): `j` records the member and announces it, `l`
/// removes it and announces the `leave` only if it was there (`force`: announce anyway, for
/// the reaper, whose members may have been cleaned lazily already).
const PRESENCE_LUA: &str = r#"
-- KEYS: the channel's presence hash
-- ARGV: kind (j, l or L for a forced leave), client, entry JSON, ttl ms, pub/sub channel,
--       member JSON, PUBLISH or SPUBLISH
local kind = ARGV[1]
if kind == 'j' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  local removed = redis.call('HDEL', KEYS[1], ARGV[2])
  if removed == 0 and kind == 'l' then return 0 end
  kind = 'l'
end
redis.call(ARGV[7], ARGV[5], kind .. ' ' .. ARGV[6])
return 1
"#;

/// The channel's epoch, started afresh (offset 0, history dropped) when there is none or
/// when the fence says the history may have lost its tail. Prepended to the publish and
/// history scripts.
///
/// The fence (on a Cluster and on Sentinel, where a replica can be promoted): replication is
/// asynchronous, so a promoted replica may lack the last publications its master made, which
/// some subscribers already received. Its next publication would reuse their offsets and be
/// dropped as a duplicate by every node that delivered the lost ones: a silent loss. So each
/// channel records the replication ID of the master that wrote it (`rid`); a promotion gives
/// the new master a new replication ID, so the first use after a failover starts a new epoch,
/// and clients get `recovered: false` (refetch), as after a Redis restart that lost data.
const EPOCH_LUA: &str = r#"
local replid
local function current_epoch(meta, stream, candidate, fence, ttl)
  local rid = ''
  if fence == '1' then
    -- Asked once per script call: a batch's items all see the same master.
    if not replid then
      replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
    end
    rid = replid
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch and fence == '1' then
    local was = redis.call('HGET', meta, 'rid')
    if was and was ~= rid then epoch = nil end
  end
  if not epoch then
    epoch = candidate
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('EXPIRE', meta, ttl)
  end
  if fence == '1' then redis.call('HSET', meta, 'rid', rid) end
  return epoch
end
"#;

/// One publication on one channel: idempotency check, offset increment, history append and
/// `PUBLISH`. A function, prepended to the single and the batch publish scripts, so both run
/// the same code.
const PUBLISH_FN_LUA: &str = r#"
-- meta, stream: the channel's keys; idem: the idempotency key (meta again when unused);
-- pubsub: the pub/sub channel; data; size: history size; hist_ms: history ttl ms;
-- idem_ms: idempotency window ms (0: none); candidate: the epoch if a new history starts;
-- meta_ttl: s; from: the vouched publisher's JSON ('' for the server); cmd: PUBLISH or
-- SPUBLISH (a Cluster: the pub/sub channel is in the keys' slot); fence: see EPOCH_LUA
local function publish_one(meta, stream, idem, pubsub, data, size, hist_ms, idem_ms,
                           candidate, meta_ttl, from, cmd, fence)
  if tonumber(idem_ms) > 0 then
    local prev = redis.call('GET', idem)
    if prev then
      local sep = string.find(prev, ':', 1, true)
      return {tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)}
    end
  end
  local epoch = current_epoch(meta, stream, candidate, fence, meta_ttl)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  local ttl = tonumber(meta_ttl)
  size = tonumber(size)
  if size > 0 then
    hist_ms = tonumber(hist_ms)
    if from ~= '' then
      redis.call('XADD', stream, 'MAXLEN', size, '*', 'o', offset, 'd', data, 'f', from)
    else
      redis.call('XADD', stream, 'MAXLEN', size, '*', 'o', offset, 'd', data)
    end
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('XTRIM', stream, 'MINID', now_ms - hist_ms)
    redis.call('PEXPIRE', stream, hist_ms)
    if hist_ms / 1000 > ttl then ttl = math.ceil(hist_ms / 1000) end
  end
  redis.call('EXPIRE', meta, ttl)
  if from == '' then from = '-' end
  redis.call(cmd, pubsub, 'p ' .. offset .. ' ' .. epoch .. ' ' .. from .. ' ' .. data)
  if tonumber(idem_ms) > 0 then
    redis.call('SET', idem, offset .. ':' .. epoch, 'PX', idem_ms)
  end
  return {offset, epoch}
end
"#;

const PUBLISH_LUA: &str = r#"
-- KEYS: meta, stream, idempotency key (or meta again when unused)
-- ARGV: pubsub channel, data, history size, history ttl ms, idem window ms (0: none),
--       epoch candidate, meta ttl s, from, PUBLISH or SPUBLISH, fence
return publish_one(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                   ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
"#;

/// Consecutive items of a batch on one channel (a chunk: see [`CHUNK_ITEMS`]), in batch
/// order, as one script call: atomic, so a call the cluster client retries after a redirect
/// ran nothing before, and no other call's fate can reorder its items. Each item runs under
/// `pcall`: an error is that item's answer alone, as if it had been published by itself, and
/// the items after it go on (an error leaves what the item had written before it, as a single
/// publish's error does).
const PUBLISH_MANY_LUA: &str = r#"
-- KEYS: meta, stream, then each item's idempotency key (meta again when unused)
-- ARGV: pubsub channel, meta ttl s, PUBLISH or SPUBLISH, fence, then 6 per item: data,
--       history size, history ttl ms, idem window ms (0: none), epoch candidate, from
-- Returns per item {offset, epoch}, or the error that item met.
local out = {}
for i = 1, #KEYS - 2 do
  local a = 4 + (i - 1) * 6
  local ok, res = pcall(publish_one, KEYS[1], KEYS[2], KEYS[2 + i], ARGV[1], ARGV[a + 1],
                        ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[2],
                        ARGV[a + 6], ARGV[3], ARGV[4])
  if ok then
    out[i] = res
  elseif type(res) == 'table' and res.err then
    out[i] = res
  else
    res = tostring(res)
    -- A Redis error starts with its code (WRONGTYPE, OOM, ...); anything else is Lua's.
    if not string.find(res, '^%u+ ') then res = 'ERR ' .. res end
    out[i] = {err = res}
  end
end
return out
"#;

const HISTORY_LUA: &str = r#"
-- KEYS: meta, stream
-- ARGV: epoch candidate, meta ttl s, after, limit, history ttl ms (0: no history),
--       fence (see EPOCH_LUA)
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[1], ARGV[6], ARGV[2])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local hist_ms = tonumber(ARGV[5])
local out = {offset, epoch, offset + 1}
if hist_ms <= 0 then return out end
local t = redis.call('TIME')
local min_id = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) - hist_ms
if min_id < 0 then min_id = 0 end
local oldest = redis.call('XRANGE', KEYS[2], min_id, '+', 'COUNT', 1)
if #oldest == 0 then return out end
out[3] = tonumber(oldest[1][2][2])
local after = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local want = offset - after
if want <= 0 or limit <= 0 then return out end
local entries = redis.call('XREVRANGE', KEYS[2], '+', min_id, 'COUNT', want)
local picked = 0
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  local o = tonumber(fields[2])
  if o > after and picked < limit then
    table.insert(out, o)
    table.insert(out, fields[4])
    table.insert(out, fields[6] or '')
    picked = picked + 1
  end
end
return out
"#;

/// How to reach Redis and name things there.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `broker.url`: the topology and its addresses ([`Topology::parse`]).
    pub url: String,
    /// PEM files for `rediss…` URLs.
    pub tls: TlsFiles,
    /// Prefix of every key and pub/sub channel, so several gateways can share one Redis.
    pub prefix: String,
    /// How long a presence entry lives without its node's refresh (`broker.presence_ttl`);
    /// a node beats [`BEATS`] times per TTL and counts as dead 3/5 of it after its last beat.
    pub presence_ttl: Duration,
    /// How long an idempotency key is remembered (`limits.idempotency_window`).
    pub idempotency_window: Duration,
    /// Where the pub/sub task counts what it receives (exported in `/metrics`).
    pub stats: Arc<FanoutStats>,
}

impl RedisOptions {
    /// Options for `url` with the defaults of `[broker]`: prefix `herald`, presence TTL 30 s,
    /// idempotency window 120 s, no custom TLS files.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: TlsFiles::default(),
            prefix: "herald".into(),
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
            stats: Arc::default(),
        }
    }
}

/// This node's interest in one channel ([`Inner::interest`]).
#[derive(Debug, Default)]
pub(crate) struct Interest {
    /// `subscribe` calls not yet undone: one per local subscriber.
    pub(crate) subscribers: usize,
    /// Whether Redis answered a SUBSCRIBE of it: from then on a subscribe returns at once (a
    /// connection lost later resubscribes and resyncs every channel).
    pub(crate) acknowledged: bool,
    /// The subscribes waiting for that answer. One SUBSCRIBE is in flight for all of them:
    /// the first one's; the pub/sub task answers every waiter when Redis answers it.
    pub(crate) waiters: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// Unique per entry: the SUBSCRIBE of an entry removed since (its UNSUBSCRIBE queued
    /// behind it) must not answer this one's waiters.
    pub(crate) generation: u64,
}

/// The next [`Interest::generation`].
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Inner {
    cmd: Conn,
    sink: Arc<dyn PublicationSink>,
    opts: RedisOptions,
    stats: Arc<FanoutStats>,
    /// `PUBLISH`, or `SPUBLISH` on a Cluster (sharded pub/sub).
    publish_cmd: &'static str,
    /// `1` where a replica can be promoted (Cluster, Sentinel): see `EPOCH_LUA`.
    fence: &'static str,
    publish: Lua,
    /// A batch's items on one channel ([`PUBLISH_MANY_LUA`]).
    publish_many: Lua,
    history: Lua,
    /// Node-level interest: channel → its local subscribers and whether Redis acknowledged.
    interest: Mutex<HashMap<String, Interest>>,
    control: mpsc::UnboundedSender<Control>,
    pubsub_up: AtomicBool,
    /// Presence entries this node owns, refreshed so they outlive `presence_ttl`.
    local_presence: Mutex<HashMap<(String, String), ClientInfo>>,
    /// Sessions this node registered, and those whose unregistering failed.
    local_sessions: LocalSessions,
    /// This node's name in `{<prefix>}:nodes`.
    node: String,
    session_open: Lua,
    kick: Lua,
    resume_put: Lua,
    resume_take: Lua,
    beat: Lua,
    reap: Lua,
    presence: Lua,
    /// `<prefix>:ch:{`, stripped from every pub/sub message (computed once, not per message).
    channel_prefix: String,
    /// `{<prefix>}:ctl`.
    control_channel: String,
}

/// The Redis broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.inner.opts.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Unavailable` (503, the publisher retries) for what a restart or a failover causes;
/// `Internal` for the rest.
pub(crate) fn unavailable(e: RedisError) -> BrokerError {
    use redis::ServerErrorKind as S;
    let moving = matches!(
        e.kind(),
        redis::ErrorKind::Server(
            S::ReadOnly
                | S::MasterDown
                | S::TryAgain
                | S::ClusterDown
                | S::BusyLoading
                | S::Moved
                | S::Ask
        )
    );
    if moving
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        BrokerError::Unavailable(format!("redis: {e}"))
    } else {
        BrokerError::Internal(format!("redis: {e}"))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(BrokerError::Unavailable("redis: command timed out".into())),
    }
}

impl RedisBroker {
    /// Connects lazily: the broker starts even while Redis is down (not ready until it is up).
    /// Must be called inside a Tokio runtime; spawns the pub/sub and heartbeat tasks (and on
    /// Sentinel, the task that follows the master).
    ///
    /// Errors: a URL that does not parse, or TLS files that cannot be read.
    pub fn start(opts: RedisOptions, sink: Arc<dyn PublicationSink>) -> Result<Self, BrokerError> {
        let topology = Topology::parse(&opts.url)
            .map_err(|e| BrokerError::Internal(format!("redis url: {e}")))?;
        let certs = opts.tls.load()?;
        let (tx, rx) = mpsc::unbounded_channel();
        enum Pubsub {
            Classic(Source),
            Sharded(
                Box<redis::cluster::ClusterClient>,
                mpsc::UnboundedReceiver<redis::PushInfo>,
            ),
        }
        let mut following = None;
        let (cmd, pubsub) = match &topology {
            Topology::Single(url) => {
                let client = topology::client(url, &certs)?;
                let cmd = ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    topology::manager_config(COMMAND_TIMEOUT),
                )
                .map_err(|e| BrokerError::Internal(format!("redis: {e}")))?;
                (
                    Conn::Single(cmd),
                    Pubsub::Classic(Source::Fixed(Box::new(client))),
                )
            }
            Topology::Sentinel(target) => {
                let f = Arc::new(Following::new(target, &certs, COMMAND_TIMEOUT)?);
                following = Some(f.clone());
                (
                    Conn::Sentinel(f.clone()),
                    Pubsub::Classic(Source::Sentinel(f)),
                )
            }
            Topology::Cluster(seeds) => {
                let build = |push: Option<mpsc::UnboundedSender<redis::PushInfo>>| {
                    let mut b = redis::cluster::ClusterClientBuilder::new(topology::seeds(seeds)?)
                        .connection_timeout(Duration::from_secs(1))
                        .response_timeout(COMMAND_TIMEOUT)
                        // Enough to follow a failover's MOVED and refreshes; every call is
                        // still bounded by COMMAND_TIMEOUT.
                        .retries(8)
                        .min_retry_wait(50)
                        .max_retry_wait(400);
                    if let Some(c) = &certs {
                        b = b.certs(c.clone());
                    }
                    if let Some(tx) = push {
                        b = b
                            .use_protocol(redis::ProtocolVersion::RESP3)
                            .push_sender(tx);
                    }
                    b.build()
                        .map_err(|e| BrokerError::Internal(format!("redis cluster: {e}")))
                };
                let (push_tx, push_rx) = mpsc::unbounded_channel();
                let pubsub_client = build(Some(push_tx))?;
                let cmd_client = build(None)?;
                // The cluster connection connects eagerly; a lazy wrapper keeps `start`
                // synchronous and lets the node start while the Cluster is down.
                (
                    Conn::Cluster(topology::LazyCluster::new(cmd_client)),
                    Pubsub::Sharded(Box::new(pubsub_client), push_rx),
                )
            }
        };
        let inner = Arc::new(Inner {
            cmd,
            sink,
            stats: opts.stats.clone(),
            publish_cmd: if topology.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            publish: Lua::new(&format!("{EPOCH_LUA}{PUBLISH_FN_LUA}{PUBLISH_LUA}")),
            publish_many: Lua::new(&format!("{EPOCH_LUA}{PUBLISH_FN_LUA}{PUBLISH_MANY_LUA}")),
            history: Lua::new(&format!("{EPOCH_LUA}{HISTORY_LUA}")),
            fence: if matches!(topology, Topology::Single(_)) {
                "0"
            } else {
                "1"
            },
            interest: Mutex::new(HashMap::new()),
            control: tx.clone(),
            pubsub_up: AtomicBool::new(false),
            local_presence: Mutex::new(HashMap::new()),
            local_sessions: LocalSessions::default(),
            node: random_id(12),
            session_open: Lua::new(SESSION_OPEN_LUA),
            kick: Lua::new(KICK_LUA),
            resume_put: Lua::new(RESUME_PUT_LUA),
            resume_take: Lua::new(RESUME_TAKE_LUA),
            beat: Lua::new(BEAT_LUA),
            reap: Lua::new(REAP_LUA),
            presence: Lua::new(PRESENCE_LUA),
            channel_prefix: pubsub_channel(&opts.prefix, "")
                .trim_end_matches('}')
                .to_owned(),
            control_channel: control_channel(&opts.prefix),
            opts,
        });
        match pubsub {
            Pubsub::Classic(source) => {
                tokio::spawn(pubsub::classic_task(Arc::downgrade(&inner), source, rx));
            }
            Pubsub::Sharded(client, pushes) => {
                tokio::spawn(pubsub::sharded_task(
                    Arc::downgrade(&inner),
                    *client,
                    pushes,
                    rx,
                ));
            }
        }
        if let Some(f) = following {
            tokio::spawn(follow_master(Arc::downgrade(&inner), f, tx));
        }
        tokio::spawn(heartbeat_task(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn key(&self, channel: &str, what: &str) -> String {
        // The hash tag keeps all of one channel's keys in one cluster slot (scripts need that).
        format!("{}:{{{channel}}}:{what}", self.inner.opts.prefix)
    }

    fn meta_ttl(&self) -> u64 {
        META_IDLE.as_secs()
    }

    /// `{<prefix>}`: the hash tag of every cluster-wide key (one slot on a Cluster).
    fn global_tag(&self) -> String {
        format!("{{{}}}", self.inner.opts.prefix)
    }

    /// `{<prefix>}:<what>`: keys that belong to no channel.
    fn global_key(&self, what: &str) -> String {
        format!("{}:{what}", self.global_tag())
    }

    /// `<prefix>:resume:<key>`: resumable session state, a key of its own anywhere.
    fn resume_key(&self, key: &str) -> String {
        format!("{}:resume:{key}", self.inner.opts.prefix)
    }

    /// `{<prefix>}:node:<this node>:<what>`.
    fn node_key(&self, what: &str) -> String {
        format!("{}:node:{}:{what}", self.global_tag(), self.inner.node)
    }

    /// When this node counts as dead if it does not beat again.
    fn node_expiry(&self) -> u64 {
        now_ms() + (self.inner.opts.presence_ttl * NODE_LIFE / BEATS).as_millis() as u64
    }

    /// Runs the presence script on `channel`'s slot: `kind` `j` (join), `l` (leave if
    /// present) or `L` (leave, announced anyway). Answers whether it announced anything.
    async fn presence_change(
        &self,
        channel: &str,
        kind: &str,
        info: &ClientInfo,
        exp: u64,
    ) -> Result<bool, BrokerError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let ttl_ms = self.inner.opts.presence_ttl.as_millis() as u64;
        let entry = serde_json::json!({
            "client": info.client, "user": info.user, "info": info.info, "exp": exp,
        })
        .to_string();
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.presence.prepare_invoke();
        inv.key(self.key(channel, "presence"))
            .arg(kind)
            .arg(&info.client)
            .arg(entry)
            .arg(ttl_ms * 2)
            .arg(pubsub_channel(&self.inner.opts.prefix, channel))
            .arg(json)
            .arg(self.inner.publish_cmd);
        let announced: u64 = timed(inv.invoke_async(&mut con)).await?;
        Ok(announced == 1)
    }

    /// What the fan-out brought to this node (also exported through [`RedisOptions::stats`]).
    pub fn stats(&self) -> &FanoutStats {
        &self.inner.stats
    }
}

/// What a publish request adds to the script's keys and arguments besides its data.
struct ItemArgs<'a> {
    /// The idempotency key, or the channel's meta key again when the request has none.
    idem_key: String,
    /// History size (0: no history).
    size: usize,
    /// History TTL, ms.
    hist_ms: u64,
    /// How long the key is remembered, ms (0: no key).
    idem_ms: u64,
    /// The vouched publisher's JSON, `""` for the server. No space can occur in it (compact
    /// JSON of ids made of [A-Za-z0-9_-]), so the pub/sub message stays space-separated.
    from: &'a str,
}

impl RedisBroker {
    fn item_args<'a>(&self, req: &'a PublishRequest) -> ItemArgs<'a> {
        let (size, hist_ms) = req
            .history
            .map_or((0, 0), |h| (h.size, h.ttl.as_millis() as u64));
        let (idem_key, idem_ms) = match &req.idempotency_key {
            Some(k) => (
                self.key(&req.channel, &format!("idem:{k}")),
                self.inner.opts.idempotency_window.as_millis() as u64,
            ),
            None => (self.key(&req.channel, "meta"), 0),
        };
        ItemArgs {
            idem_key,
            size,
            hist_ms,
            idem_ms,
            from: req.from.as_deref().map_or("", RawValue::get),
        }
    }

    /// One [`PUBLISH_MANY_LUA`] call for `requests[i]` of every `i` in `group` (all on one
    /// channel, in batch order).
    fn publish_many_call<'a>(&'a self, requests: &[PublishRequest], group: &[usize]) -> Call<'a> {
        let channel = &*requests[group[0]].channel;
        let items: Vec<(&PublishRequest, ItemArgs<'_>)> = group
            .iter()
            .map(|&i| (&requests[i], self.item_args(&requests[i])))
            .collect();
        let mut inv = self.inner.publish_many.prepare_invoke();
        inv.key(self.key(channel, "meta"))
            .key(self.key(channel, "stream"));
        for (_, item) in &items {
            inv.key(&item.idem_key);
        }
        inv.arg(pubsub_channel(&self.inner.opts.prefix, channel))
            .arg(self.meta_ttl())
            .arg(self.inner.publish_cmd)
            .arg(self.inner.fence);
        for (req, item) in &items {
            inv.arg(req.data.get())
                .arg(item.size)
                .arg(item.hist_ms)
                .arg(item.idem_ms)
                .arg(new_epoch())
                .arg(item.from);
        }
        inv
    }

    /// Every call in one pipeline (one round trip), each answered alone; `channels` holds
    /// each channel's calls in order. `EVALSHA` all, then `EVAL` in a second pipeline for the
    /// calls answered `NOSCRIPT` (Redis lost its scripts: a restart, a failover, a
    /// `SCRIPT FLUSH`). A call is retried only when no later call of its channel ran, or the
    /// retry would publish its items after those: then they answer `Unavailable`, as they do
    /// when Redis goes away mid-batch. A pipeline with a channel of several calls starts with
    /// `SCRIPT LOAD`, so that such a gap needs the cache emptied during the pipeline itself.
    async fn pipelined(&self, channels: &[Vec<Call<'_>>]) -> Vec<Vec<Result<Value, BrokerError>>> {
        let flat: Vec<(usize, &Call<'_>)> = channels
            .iter()
            .enumerate()
            .flat_map(|(c, calls)| calls.iter().map(move |call| (c, call)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if channels.iter().any(|calls| calls.len() > 1) {
            pipe.cmd("SCRIPT")
                .arg("LOAD")
                .arg(self.inner.publish_many.source())
                .ignore();
        }
        for (_, call) in &flat {
            pipe.add_command(call.by_hash());
        }
        let mut con = self.inner.cmd.clone();
        // `None`: answered NOSCRIPT, so it did not run (yet).
        let mut answers: Vec<Option<Result<Value, BrokerError>>> =
            match timed(pipe.query_async::<Vec<Result<Value, RedisError>>>(&mut con)).await {
                Ok(answers) => answers
                    .into_iter()
                    .map(|a| match a {
                        Err(e) if lua::is_noscript(&e) => None,
                        a => Some(a.map_err(unavailable)),
                    })
                    .collect(),
                Err(e) => vec![Some(Err(e)); flat.len()],
            };
        if answers.len() != flat.len() {
            let e = BrokerError::Internal(format!(
                "redis: {} answers to a pipeline of {} calls",
                answers.len(),
                flat.len()
            ));
            answers = vec![Some(Err(e)); flat.len()];
        }
        let channel_of: Vec<usize> = flat.iter().map(|(c, _)| *c).collect();
        let (retry, stranded) = retryable(&channel_of, &answers);
        for i in stranded {
            answers[i] = Some(Err(BrokerError::Unavailable(
                "redis: the script cache was emptied during the batch; publish again".into(),
            )));
        }
        if !retry.is_empty() {
            let mut again = redis::pipe();
            again.ignore_errors();
            for &i in &retry {
                again.add_command(flat[i].1.by_source());
            }
            let retried = timed(again.query_async::<Vec<Result<Value, RedisError>>>(&mut con))
                .await
                .and_then(|r| {
                    (r.len() == retry.len()).then_some(r).ok_or_else(|| {
                        BrokerError::Internal("redis: a pipeline's answers do not match".into())
                    })
                });
            // Whatever happens to the retry, the first pipeline's answers stand.
            match retried {
                Ok(retried) => {
                    for (i, answer) in retry.into_iter().zip(retried) {
                        answers[i] = Some(answer.map_err(unavailable));
                    }
                }
                Err(e) => {
                    for i in retry {
                        answers[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        let mut out: Vec<Vec<Result<Value, BrokerError>>> = channels
            .iter()
            .map(|c| Vec::with_capacity(c.len()))
            .collect();
        for ((c, _), answer) in flat.iter().zip(answers) {
            out[*c].push(answer.unwrap_or_else(|| {
                Err(BrokerError::Internal(
                    "redis: the script was not run".into(),
                ))
            }));
        }
        out
    }

    async fn unregister(&self, client: &str, user: &str) -> Result<(), BrokerError> {
        let mut con = self.inner.cmd.clone();
        // Both keys are cluster-wide ones (one slot), so this stays one transaction.
        timed(
            redis::pipe()
                .atomic()
                .hdel(self.global_key(&format!("user:{user}")), client)
                .ignore()
                .hdel(self.node_key("sessions"), client)
                .ignore()
                .query_async::<()>(&mut con),
        )
        .await
    }
}

/// The field of a member in its node's presence hash: `<channel>\n<client>` (a channel name
/// has no newline, so the reaper can split it).
fn member_field(channel: &str, info: &ClientInfo) -> String {
    format!("{channel}\n{}", info.client)
}

/// On Sentinel: asks the Sentinels where the master is every [`topology::SENTINEL_POLL`] and
/// whenever a command failed; when it moved, the pub/sub task reconnects to the new master.
async fn follow_master(
    weak: Weak<Inner>,
    following: Arc<Following>,
    control: mpsc::UnboundedSender<Control>,
) {
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        match following.refresh().await {
            Ok(true) => {
                let _ = control.send(Control::Reconnect);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "redis sentinel: no master"),
        }
        tokio::select! {
            _ = tokio::time::sleep(topology::SENTINEL_POLL) => {}
            _ = following.suspect.notified() => {
                // Many commands fail at once in a failover: one question is enough.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest) -> Result<Position, BrokerError> {
        let channel = &*req.channel;
        let mut con = self.inner.cmd.clone();
        let item = self.item_args(&req);
        let mut inv = self.inner.publish.prepare_invoke();
        inv.key(self.key(channel, "meta"))
            .key(self.key(channel, "stream"))
            .key(item.idem_key)
            .arg(pubsub_channel(&self.inner.opts.prefix, channel))
            .arg(req.data.get())
            .arg(item.size)
            .arg(item.hist_ms)
            .arg(item.idem_ms)
            .arg(new_epoch())
            .arg(self.meta_ttl())
            .arg(item.from)
            .arg(self.inner.publish_cmd)
            .arg(self.inner.fence);
        let (offset, epoch): (u64, String) = timed(inv.invoke_async(&mut con)).await?;
        Ok(Position {
            offset,
            epoch: Arc::from(epoch),
        })
    }

    /// One round trip for the whole batch (see the trait for the contract): the items are
    /// grouped by channel, batch order kept, and each channel's items cut into chunks of at
    /// most `CHUNK_ITEMS` items and `CHUNK_BYTES` of data; a chunk is one call of
    /// `PUBLISH_MANY_LUA`. On one Redis or Sentinel's master every chunk goes in one
    /// pipeline, a channel's chunks in order (`RedisBroker::pipelined`). On a Cluster each
    /// channel's chunks go to its shard one after the other, all channels at once: the
    /// cluster client takes no pipeline across slots, and it retries a whole pipeline of one
    /// slot when one of its commands met a redirect, running again those that had run, where
    /// a single script call that met one ran nothing. A channel has one chunk unless it has
    /// more than `CHUNK_ITEMS` items in the batch, so that is one round trip too.
    async fn publish_batch(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Vec<Result<Position, BrokerError>> {
        if requests.is_empty() {
            return Vec::new();
        }
        let channels = chunks(&requests);
        let calls: Vec<Vec<Call<'_>>> = channels
            .iter()
            .map(|chunks| {
                chunks
                    .iter()
                    .map(|chunk| self.publish_many_call(&requests, chunk))
                    .collect()
            })
            .collect();
        let answers: Vec<Vec<Result<Value, BrokerError>>> =
            if matches!(self.inner.cmd, Conn::Cluster(_)) {
                let per_channel = calls.iter().map(|chunks| {
                    let mut con = self.inner.cmd.clone();
                    async move {
                        let mut answers = Vec::with_capacity(chunks.len());
                        for call in chunks {
                            answers.push(timed(call.invoke_raw(&mut con)).await);
                        }
                        answers
                    }
                });
                futures_util::future::join_all(per_channel).await
            } else {
                self.pipelined(&calls).await
            };
        let mut results: Vec<Option<Result<Position, BrokerError>>> =
            (0..requests.len()).map(|_| None).collect();
        for (chunks, answers) in channels.iter().zip(answers) {
            for (chunk, answer) in chunks.iter().zip(answers) {
                let mut items = match answer.and_then(|v| parse_many(v, chunk.len())) {
                    Ok(items) => items.into_iter(),
                    Err(e) => vec![Err(e); chunk.len()].into_iter(),
                };
                for &i in chunk {
                    results[i] = items.next();
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BrokerError::Internal("redis: no answer".into()))))
            .collect()
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let rx = {
            let mut interest = lock(&self.inner.interest);
            let entry = interest
                .entry(channel.to_owned())
                .or_insert_with(|| Interest {
                    generation: GENERATION.fetch_add(1, Ordering::Relaxed),
                    ..Interest::default()
                });
            entry.subscribers += 1;
            if entry.acknowledged {
                return Ok(());
            }
            // The first subscriber, or one more while the first's SUBSCRIBE is unanswered:
            // returning now would let this caller read the position before the node receives
            // the channel. Every such caller waits for the one SUBSCRIBE in flight (a herd on
            // one channel costs one round trip, and the pub/sub task, which reads nothing else
            // while it waits, is not held up once per caller). Sent under the lock: the task
            // sees subscribes and unsubscribes in the order the counts changed.
            let (tx, rx) = oneshot::channel();
            let first = entry.waiters.is_empty();
            entry.waiters.push(tx);
            if first {
                let _ = self
                    .inner
                    .control
                    .send(Control::Subscribe(channel.to_owned(), entry.generation));
            }
            rx
        };
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(BrokerError::Unavailable(
                "redis: subscribing timed out".into(),
            )),
        };
        if result.is_err() {
            self.unsubscribe(channel).await?;
        }
        result
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut interest = lock(&self.inner.interest);
        if let Some(entry) = interest.get_mut(channel) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                interest.remove(channel);
                let _ = self
                    .inner
                    .control
                    .send(Control::Unsubscribe(channel.to_owned()));
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let mut con = self.inner.cmd.clone();
        // The history TTL is not known on reads; the stream itself expires and is trimmed on
        // publish, so reading everything still present is right. A day bounds the scan.
        let mut inv = self.inner.history.prepare_invoke();
        inv.key(self.key(channel, "meta"))
            .key(self.key(channel, "stream"))
            .arg(new_epoch())
            .arg(self.meta_ttl())
            .arg(query.after.unwrap_or(u64::MAX / 2))
            .arg(query.limit)
            .arg(86_400_000u64)
            .arg(self.inner.fence);
        let values: Vec<Value> = timed(inv.invoke_async(&mut con)).await?;
        parse_history(channel, values)
    }

    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        lock(&self.inner.local_presence)
            .insert((channel.to_owned(), client.client.clone()), client.clone());
        // What the reaper needs to say `leave` for this member if this node dies: written
        // before the entry, so no member is ever announced that the reaper could not find.
        let json = serde_json::to_string(&client).unwrap_or_default();
        let mut con = self.inner.cmd.clone();
        timed(
            redis::cmd("HSET")
                .arg(self.node_key("presence"))
                .arg(member_field(channel, &client))
                .arg(json)
                .query_async::<()>(&mut con),
        )
        .await?;
        let exp = now_ms() + self.inner.opts.presence_ttl.as_millis() as u64;
        self.presence_change(channel, "j", &client, exp).await?;
        Ok(())
    }

    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        lock(&self.inner.local_presence).remove(&(channel.to_owned(), client.client.clone()));
        self.presence_change(channel, "l", &client, 0).await?;
        let mut con = self.inner.cmd.clone();
        timed(
            redis::cmd("HDEL")
                .arg(self.node_key("presence"))
                .arg(member_field(channel, &client))
                .query_async::<()>(&mut con),
        )
        .await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let mut con = self.inner.cmd.clone();
        let key = self.key(channel, "presence");
        let all: HashMap<String, String> =
            timed(redis::cmd("HGETALL").arg(&key).query_async(&mut con)).await?;
        let now = now_ms();
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (client, entry) in all {
            let v: serde_json::Value = serde_json::from_str(&entry).unwrap_or_default();
            if v["exp"].as_u64().is_some_and(|exp| exp > now) {
                out.push(ClientInfo {
                    client,
                    user: v["user"].as_str().map(str::to_owned),
                    info: v
                        .get("info")
                        .filter(|i| !i.is_null())
                        .and_then(|i| RawValue::from_string(i.to_string()).ok())
                        .map(Arc::from),
                });
            } else {
                expired.push(client);
            }
        }
        if !expired.is_empty() {
            // Entries of nodes that died: clean up lazily.
            let _ = timed(
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&expired)
                    .query_async::<u64>(&mut con),
            )
            .await;
        }
        out.sort();
        Ok(out)
    }

    async fn session_open(&self, client: &ClientInfo, max: usize) -> Result<bool, BrokerError> {
        let Some(user) = &client.user else {
            return Ok(true);
        };
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.session_open.prepare_invoke();
        inv.key(self.global_key(&format!("user:{user}")))
            .key(self.global_key("nodes"))
            .key(self.node_key("sessions"))
            .arg(&client.client)
            .arg(&self.inner.node)
            .arg(max)
            .arg(now_ms())
            .arg(self.node_expiry())
            .arg(user);
        let admitted: u64 = timed(inv.invoke_async(&mut con)).await?;
        if admitted == 1 {
            self.inner
                .local_sessions
                .opened(client.client.clone(), user.clone());
        }
        Ok(admitted == 1)
    }

    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        self.inner
            .local_sessions
            .close(client, |c, u| async move { self.unregister(&c, &u).await })
            .await
    }

    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.kick.prepare_invoke();
        inv.key(self.global_key(&format!("user:{user}")))
            .key(self.global_key("nodes"))
            .arg(now_ms())
            .arg(&self.inner.control_channel)
            .arg(format!("k {user}"))
            .arg(self.inner.publish_cmd);
        let n: u64 = timed(inv.invoke_async(&mut con)).await?;
        Ok(n as usize)
    }

    async fn resume_put(
        &self,
        key: &str,
        owner: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.resume_put.prepare_invoke();
        inv.key(self.resume_key(key))
            .arg(owner)
            .arg(state)
            .arg(ttl.as_millis().max(1) as u64);
        let stored: u64 = timed(inv.invoke_async(&mut con)).await?;
        Ok(stored == 1)
    }

    async fn resume_take(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.resume_take.prepare_invoke();
        inv.key(self.resume_key(key))
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64);
        timed(inv.invoke_async(&mut con)).await
    }

    async fn health(&self) -> Result<(), BrokerError> {
        let mut con = self.inner.cmd.clone();
        // On a Cluster PING goes to every master the client knows of; a master that failed is
        // dropped from that list, so its shard's outage (until a replica takes over) is read
        // from the cluster's own view: `cluster_state:fail` while a slot has no master.
        timed(redis::cmd("PING").query_async::<String>(&mut con)).await?;
        if self.inner.publish_cmd == "SPUBLISH" {
            let info: String =
                timed(redis::cmd("CLUSTER").arg("INFO").query_async(&mut con)).await?;
            if !info.contains("cluster_state:ok") {
                return Err(BrokerError::Unavailable(
                    "redis cluster: a shard has no master (cluster_state is not ok)".into(),
                ));
            }
        }
        if !self.inner.pubsub_up.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable(
                "redis pub/sub is not connected".into(),
            ));
        }
        Ok(())
    }

    fn idempotency_window(&self) -> Duration {
        self.inner.opts.idempotency_window
    }
}

/// Of a pipeline's calls answered `NOSCRIPT` (`None`; `channel_of[i]` is call `i`'s
/// channel), those that may run again now, and those stranded: a later call of the same
/// channel ran (`Some(Ok)`), so running them now would publish their items after its.
fn retryable<T, E>(
    channel_of: &[usize],
    answers: &[Option<Result<T, E>>],
) -> (Vec<usize>, Vec<usize>) {
    let (mut retry, mut stranded) = (Vec::new(), Vec::new());
    for (i, answer) in answers.iter().enumerate() {
        if answer.is_some() {
            continue;
        }
        let later_ran = (i + 1..answers.len())
            .any(|j| channel_of[j] == channel_of[i] && matches!(answers[j], Some(Ok(_))));
        if later_ran {
            stranded.push(i);
        } else {
            retry.push(i);
        }
    }
    (retry, stranded)
}

/// The batch's items by channel (in order of each channel's first item), each channel's cut
/// into chunks in batch order: request indices.
fn chunks(requests: &[PublishRequest]) -> Vec<Vec<Vec<usize>>> {
    let mut channels: Vec<Vec<Vec<usize>>> = Vec::new();
    // Per channel: its index in `channels`, and the data bytes in its last chunk.
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, req) in requests.iter().enumerate() {
        let len = req.data.get().len();
        let (c, bytes) = seen.entry(&req.channel).or_insert_with(|| {
            channels.push(vec![Vec::new()]);
            (channels.len() - 1, 0)
        });
        let chunks = &mut channels[*c];
        let last = chunks.last().map_or(0, Vec::len);
        if last > 0 && (last == CHUNK_ITEMS || *bytes + len > CHUNK_BYTES) {
            chunks.push(Vec::new());
            *bytes = 0;
        }
        *bytes += len;
        chunks.last_mut().expect("a chunk").push(i);
    }
    channels
}

/// The answer of a [`PUBLISH_MANY_LUA`] call of `n` items: each item's position, or the
/// error it met, mapped as a single publish's error is.
fn parse_many(value: Value, n: usize) -> Result<Vec<Result<Position, BrokerError>>, BrokerError> {
    let bad = || BrokerError::Internal("redis: unexpected batch reply".into());
    let items: Vec<Result<(u64, String), RedisError>> =
        redis::from_redis_value(value).map_err(|_| bad())?;
    if items.len() != n {
        return Err(bad());
    }
    Ok(items
        .into_iter()
        .map(|item| {
            let (offset, epoch) = item.map_err(unavailable)?;
            Ok(Position {
                offset,
                epoch: Arc::from(epoch),
            })
        })
        .collect())
}

fn parse_history(channel: &str, values: Vec<Value>) -> Result<HistoryResult, BrokerError> {
    let bad = || BrokerError::Internal("redis: unexpected history reply".into());
    let mut it = values.into_iter();
    let offset: u64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let epoch: String = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let earliest: u64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let epoch: Arc<str> = Arc::from(epoch);
    let channel: Arc<str> = Arc::from(channel);
    let mut publications = Vec::new();
    while let (Some(o), Some(d), Some(f)) = (it.next(), it.next(), it.next()) {
        let o: u64 = redis::from_redis_value(o).map_err(|_| bad())?;
        let d: String = redis::from_redis_value(d).map_err(|_| bad())?;
        let f: String = redis::from_redis_value(f).map_err(|_| bad())?;
        let data = RawValue::from_string(d).map_err(|_| bad())?;
        let from = match f.as_str() {
            "" => None,
            _ => Some(Arc::from(RawValue::from_string(f).map_err(|_| bad())?)),
        };
        publications.push(Publication {
            channel: channel.clone(),
            offset: o,
            epoch: epoch.clone(),
            data: Arc::from(data),
            from,
        });
    }
    Ok(HistoryResult {
        position: Position { offset, epoch },
        publications,
        earliest,
    })
}

/// This node's heartbeat, every `presence_ttl / BEATS`, until the broker is dropped: keeps the
/// node alive in `<prefix>:nodes`, refreshes its presence entries and sessions, retries failed
/// unregisterings, and reaps dead nodes (their members leave, their sessions stop counting).
async fn heartbeat_task(weak: Weak<Inner>) {
    let every = match weak.upgrade() {
        Some(inner) => inner.opts.presence_ttl / BEATS,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let broker = RedisBroker { inner };
        if let Err(e) = beat(&broker).await {
            tracing::warn!(error = %e, "redis heartbeat failed");
        }
    }
}

async fn beat(broker: &RedisBroker) -> Result<(), BrokerError> {
    let inner = &broker.inner;
    let mut con = inner.cmd.clone();
    let mut inv = inner.beat.prepare_invoke();
    inv.key(broker.global_key("nodes"))
        .key(broker.node_key("reaped"))
        .key(broker.node_key("sessions"))
        .key(broker.node_key("presence"))
        .arg(&inner.node)
        .arg(broker.node_expiry());
    let (reaped, held_sessions, held_members): (u64, usize, usize) =
        timed(inv.invoke_async(&mut con)).await?;
    if reaped == 1 {
        tracing::warn!(
            "this node was taken for dead (cut off from redis for too long): announcing its members again"
        );
    }

    inner
        .local_sessions
        .retry_orphans(|c, u| async move { broker.unregister(&c, &u).await })
        .await;

    let entries: Vec<((String, String), ClientInfo)> = lock(&inner.local_presence)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sessions: Vec<(String, String)> = inner.local_sessions.snapshot();
    // Sessions and the reaper's record of members are written again only when Redis lost
    // them (reaped, or restarted empty); the members' own entries carry an expiry that every
    // beat moves on.
    let restore_sessions = reaped == 1 || held_sessions < sessions.len();
    let restore_members = reaped == 1 || held_members < entries.len();
    // The cluster-wide records (one slot): one pipeline.
    if restore_members || restore_sessions {
        let mut pipe = redis::pipe();
        let node_presence = broker.node_key("presence");
        if restore_members {
            for ((channel, _), info) in &entries {
                let json = serde_json::to_string(info).unwrap_or_default();
                pipe.hset(&node_presence, member_field(channel, info), json)
                    .ignore();
            }
        }
        if restore_sessions {
            let node_sessions = broker.node_key("sessions");
            for (client, user) in &sessions {
                pipe.hset(
                    broker.global_key(&format!("user:{user}")),
                    client,
                    &inner.node,
                )
                .ignore();
                pipe.hset(&node_sessions, client, user).ignore();
            }
        }
        timed(pipe.query_async::<()>(&mut con)).await?;
    }
    // The members' entries, one pipeline per channel (its slot), all at once.
    let mut per_channel: HashMap<&str, Vec<&ClientInfo>> = HashMap::new();
    for ((channel, _), info) in &entries {
        per_channel.entry(channel).or_default().push(info);
    }
    let ttl_ms = inner.opts.presence_ttl.as_millis() as u64;
    let exp = now_ms() + ttl_ms;
    let writes = per_channel.into_iter().map(|(channel, members)| {
        let key = broker.key(channel, "presence");
        let mut pipe = redis::pipe();
        for info in members {
            let entry = serde_json::json!({ "client": info.client, "user": info.user, "info": info.info, "exp": exp });
            pipe.hset(&key, &info.client, entry.to_string()).ignore();
            if reaped == 1 {
                // The others were told this member left; it is still here.
                let json = serde_json::to_string(info).unwrap_or_default();
                pipe.cmd(inner.publish_cmd)
                    .arg(pubsub_channel(&inner.opts.prefix, channel))
                    .arg(format!("j {json}"))
                    .ignore();
            }
        }
        pipe.pexpire(&key, (ttl_ms * 2) as i64).ignore();
        let mut con = inner.cmd.clone();
        async move { timed(pipe.query_async::<()>(&mut con)).await }
    });
    for r in futures_util::future::join_all(writes).await {
        r?;
    }

    let mut inv = inner.reap.prepare_invoke();
    inv.key(broker.global_key("nodes"))
        .arg(now_ms())
        .arg(broker.global_tag())
        .arg(86_400_000u64);
    let members: Vec<String> = timed(inv.invoke_async(&mut con)).await?;
    if !members.is_empty() {
        tracing::info!(
            members = members.len() / 3,
            "reaped nodes that stopped beating: their members leave"
        );
    }
    for m in members.chunks_exact(3) {
        let Ok(info) = serde_json::from_str::<ClientInfo>(&m[2]) else {
            continue;
        };
        // If this fails the entry still expires on its own (`exp`), only the event is lost.
        let _ = broker.presence_change(&m[0], "L", &info, 0).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(channel: &str, bytes: usize) -> PublishRequest {
        PublishRequest {
            channel: Arc::from(channel),
            data: Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap()),
            history: None,
            idempotency_key: None,
            from: None,
        }
    }

    #[test]
    fn chunks_keep_batch_order_per_channel_within_the_bounds() {
        let mut batch = Vec::new();
        for i in 0..250 {
            batch.push(req("a", 1));
            if i % 100 == 0 {
                batch.push(req("b", 1));
            }
        }
        let cut = chunks(&batch);
        assert_eq!(cut.len(), 2, "one entry per channel");
        let a: Vec<usize> = (0..batch.len())
            .filter(|&i| &*batch[i].channel == "a")
            .collect();
        assert_eq!(
            cut[0].iter().map(Vec::len).collect::<Vec<_>>(),
            vec![CHUNK_ITEMS, CHUNK_ITEMS, 50]
        );
        assert_eq!(cut[0].concat(), a, "a's items, in batch order");
        assert_eq!(cut[1], vec![vec![1, 102, 203]]);

        // Bytes: a chunk closes before the item that would take it past CHUNK_BYTES; an item
        // larger than that alone is a chunk of its own.
        let big = CHUNK_BYTES / 2;
        let batch = [
            req("c", big),
            req("c", big),
            req("c", 10),
            req("c", CHUNK_BYTES * 2),
        ];
        assert_eq!(chunks(&batch), vec![vec![vec![0], vec![1, 2], vec![3]]]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn a_noscript_call_is_retried_unless_a_later_call_of_its_channel_ran() {
        // Channels of calls 0..6: a a b a c c.
        let channel_of = [0, 0, 1, 0, 2, 2];
        let answers: Vec<Option<Result<(), ()>>> = vec![
            None,          // a: a later call of a ran (3): stranded
            Some(Err(())), // a: failed, did not publish
            None,          // b: alone, retried
            Some(Ok(())),  // a: ran
            None,          // c: retried, and so is the one after it
            None,
        ];
        assert_eq!(retryable(&channel_of, &answers), (vec![2, 4, 5], vec![0]));
    }
}
