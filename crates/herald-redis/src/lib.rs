//! The Redis broker: many gateway nodes, one channel space.
//!
//! Every node talks to the same Redis. Per channel, Redis holds a meta hash (`offset`, `epoch`),
//! a stream with the retained history and, for presence channels, a hash of present clients.
//! Publishing is one Lua script: idempotency check, offset increment, history append and
//! `PUBLISH` happen atomically, so offsets are gap-free and global, and every node's pub/sub
//! connection receives a channel's publications in offset order.
//!
//! A node subscribes to a channel's Redis pub/sub channel only while it has local subscribers
//! (reference-counted here, so a concurrent last-unsubscribe and first-subscribe can never
//! leave the node deaf). Subscribing waits for Redis' acknowledgement before the connection
//! reads the channel's position: no publication can fall between the two.
//!
//! Faults: commands fail fast with `Unavailable` while Redis is away (publishers get 503 and
//! decide; nothing is dropped silently); the pub/sub task reconnects with backoff, resubscribes
//! and then asks the sink to resync every channel, so subscribers that missed publications
//! recover with `since`. A Redis that lost its data gives the channel a new epoch at the next
//! publish or read, so clients see `recovered: false` rather than a gap.
//!
//! Cluster-wide state per node: every node has a random id and a heartbeat in the sorted set
//! `<prefix>:nodes` (score: the moment it counts as dead, 3/5 of `presence_ttl` after its last
//! beat; it beats [`BEATS`] times per `presence_ttl`). Each node records what it owns
//! under `<prefix>:node:<id>:presence` (its members of every presence channel) and
//! `<prefix>:node:<id>:sessions` (its users' sessions), and each user's sessions are in
//! `<prefix>:user:<user>` (session → node). At every beat each node also reaps the nodes whose
//! heartbeat is over: one script removes a dead node's presence entries and publishes a `leave`
//! for each, and frees its users' sessions. So a node killed without a goodbye has its members
//! leave within 4/5 of `presence_ttl`, and its sessions stop counting against the per-user
//! limit.
//! The per-user limit and the kick read `<prefix>:user:<user>`, counting only live nodes'
//! sessions; a kick is published on `<prefix>:ctl`, which every node listens to. A node that was
//! reaped while alive (cut off from Redis for longer than its life) notices at its next beat
//! and announces its members again (`join`) and re-registers its sessions. These scripts name
//! keys they compute, which Redis Cluster forbids: another reason Cluster is not supported.
//!
//! Supported URLs are those of the `redis` crate built without TLS: `redis://` and
//! `redis+unix://`/`unix://`. Sentinel and Cluster are not supported yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{HistoryQuery, HistoryResult, PresenceEvent, new_epoch, random_id};
use herald_core::protocol::ClientInfo;
use herald_core::{Broker, BrokerError, Position, Publication, PublicationSink, PublishRequest};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

/// Channels with no publication for this long forget their offset (a new epoch starts).
const META_IDLE: Duration = Duration::from_secs(3600);

/// Every command gives up after this, so a dead Redis answers 503 quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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
-- ARGV: now ms, control channel, message
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
redis.call('PUBLISH', ARGV[2], ARGV[3])
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

/// Removes every node whose heartbeat is over: its presence entries (publishing `leave` for
/// each) and its sessions. Only one node wins each dead node (ZREM answers 1 once).
const REAP_LUA: &str = r#"
-- KEYS: nodes zset
-- ARGV: now ms, key prefix, reaped marker ttl ms
local prefix = ARGV[2]
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local reaped = 0
for _, node in ipairs(dead) do
  if redis.call('ZREM', KEYS[1], node) == 1 then
    reaped = reaped + 1
    local nk = prefix .. ':node:' .. node
    local members = redis.call('HGETALL', nk .. ':presence')
    for i = 1, #members, 2 do
      local sep = string.find(members[i], '\n', 1, true)
      local channel = string.sub(members[i], 1, sep - 1)
      local client = string.sub(members[i], sep + 1)
      redis.call('HDEL', prefix .. ':{' .. channel .. '}:presence', client)
      redis.call('PUBLISH', prefix .. ':ch:' .. channel, 'l ' .. members[i + 1])
    end
    local sessions = redis.call('HGETALL', nk .. ':sessions')
    for i = 1, #sessions, 2 do
      redis.call('HDEL', prefix .. ':user:' .. sessions[i + 1], sessions[i])
    end
    redis.call('DEL', nk .. ':presence', nk .. ':sessions')
    redis.call('SET', nk .. ':reaped', '1', 'PX', ARGV[3])
  end
end
return reaped
"#;

const PUBLISH_LUA: &str = r#"
-- KEYS: meta, stream, idempotency key (or meta again when unused)
-- ARGV: pubsub channel, data, history size, history ttl ms, idem window ms (0: none),
--       epoch candidate, meta ttl s, from (the vouched publisher's JSON; '' for the server)
if tonumber(ARGV[5]) > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local sep = string.find(prev, ':', 1, true)
    return {tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local ttl = tonumber(ARGV[7])
local size = tonumber(ARGV[3])
if size > 0 then
  local hist_ms = tonumber(ARGV[4])
  if ARGV[8] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', size, '*', 'o', offset, 'd', ARGV[2], 'f', ARGV[8])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', size, '*', 'o', offset, 'd', ARGV[2])
  end
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', KEYS[2], 'MINID', now_ms - hist_ms)
  redis.call('PEXPIRE', KEYS[2], hist_ms)
  if hist_ms / 1000 > ttl then ttl = math.ceil(hist_ms / 1000) end
end
redis.call('EXPIRE', KEYS[1], ttl)
local from = ARGV[8]
if from == '' then from = '-' end
redis.call('PUBLISH', ARGV[1], 'p ' .. offset .. ' ' .. epoch .. ' ' .. from .. ' ' .. ARGV[2])
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', ARGV[5])
end
return {offset, epoch}
"#;

const HISTORY_LUA: &str = r#"
-- KEYS: meta, stream
-- ARGV: epoch candidate, meta ttl s, after, limit, history ttl ms (0: no history)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
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
    pub url: String,
    pub prefix: String,
    pub presence_ttl: Duration,
    pub idempotency_window: Duration,
}

enum Control {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

struct Inner {
    cmd: ConnectionManager,
    sink: Arc<dyn PublicationSink>,
    opts: RedisOptions,
    publish: Script,
    history: Script,
    /// Node-level interest: channel → number of `subscribe` calls not yet undone.
    interest: Mutex<HashMap<String, usize>>,
    control: mpsc::UnboundedSender<Control>,
    pubsub_up: AtomicBool,
    /// Presence entries this node owns, refreshed so they outlive `presence_ttl`.
    local_presence: Mutex<HashMap<(String, String), ClientInfo>>,
    /// Sessions this node registered (client → user), re-registered if the node was reaped.
    local_sessions: Mutex<HashMap<String, String>>,
    /// Sessions whose unregistering failed (Redis was away): retried at every beat, so a
    /// user is never locked out by a slot nobody holds.
    orphans: Mutex<Vec<ClientInfo>>,
    /// This node's name in `<prefix>:nodes`.
    node: String,
    session_open: Script,
    kick: Script,
    resume_put: Script,
    resume_take: Script,
    beat: Script,
    reap: Script,
    /// `<prefix>:ch:`, stripped from every pub/sub message (computed once, not per message).
    channel_prefix: String,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(e: RedisError) -> BrokerError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
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
    /// Must be called inside a Tokio runtime; spawns the pub/sub and presence tasks.
    pub fn start(opts: RedisOptions, sink: Arc<dyn PublicationSink>) -> Result<Self, BrokerError> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| BrokerError::Internal(format!("redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let cmd = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| BrokerError::Internal(format!("redis: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let opts_prefix = opts.prefix.clone();
        let inner = Arc::new(Inner {
            cmd,
            sink,
            opts,
            publish: Script::new(PUBLISH_LUA),
            history: Script::new(HISTORY_LUA),
            interest: Mutex::new(HashMap::new()),
            control: tx,
            pubsub_up: AtomicBool::new(false),
            local_presence: Mutex::new(HashMap::new()),
            local_sessions: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
            node: random_id(12),
            session_open: Script::new(SESSION_OPEN_LUA),
            kick: Script::new(KICK_LUA),
            resume_put: Script::new(RESUME_PUT_LUA),
            resume_take: Script::new(RESUME_TAKE_LUA),
            beat: Script::new(BEAT_LUA),
            reap: Script::new(REAP_LUA),
            channel_prefix: pubsub_channel(&opts_prefix, ""),
        });
        tokio::spawn(pubsub_task(Arc::downgrade(&inner), client, rx));
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

    /// `<prefix>:<what>`: keys that belong to no channel.
    fn global_key(&self, what: &str) -> String {
        format!("{}:{what}", self.inner.opts.prefix)
    }

    /// `<prefix>:node:<this node>:<what>`.
    fn node_key(&self, what: &str) -> String {
        format!("{}:node:{}:{what}", self.inner.opts.prefix, self.inner.node)
    }

    /// When this node counts as dead if it does not beat again.
    fn node_expiry(&self) -> u64 {
        now_ms() + (self.inner.opts.presence_ttl * NODE_LIFE / BEATS).as_millis() as u64
    }

    async fn publish_presence(
        &self,
        channel: &str,
        kind: char,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut con = self.inner.cmd.clone();
        let pubsub = pubsub_channel(&self.inner.opts.prefix, channel);
        let key = self.key(channel, "presence");
        let ttl_ms = self.inner.opts.presence_ttl.as_millis() as u64;
        let entry = serde_json::json!({
            "client": info.client, "user": info.user, "info": info.info, "exp": now_ms() + ttl_ms,
        })
        .to_string();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if kind == 'j' {
            pipe.hset(&key, &info.client, entry).ignore();
            pipe.pexpire(&key, (ttl_ms * 2) as i64).ignore();
            // What the reaper needs to say `leave` for this member if this node dies.
            pipe.hset(
                self.node_key("presence"),
                member_field(channel, info),
                &json,
            )
            .ignore();
        }
        pipe.publish(pubsub, format!("{kind} {json}")).ignore();
        timed(pipe.query_async::<()>(&mut con)).await
    }
}

impl RedisBroker {
    async fn unregister(&self, client: &str, user: &str) -> Result<(), BrokerError> {
        let mut con = self.inner.cmd.clone();
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

fn pubsub_channel(prefix: &str, channel: &str) -> String {
    format!("{prefix}:ch:{channel}")
}

/// Where kicks are published: every node listens.
fn control_channel(prefix: &str) -> String {
    format!("{prefix}:ctl")
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, req: PublishRequest) -> Result<Position, BrokerError> {
        let channel = &*req.channel;
        let mut con = self.inner.cmd.clone();
        let (size, hist_ms) = req
            .history
            .map_or((0, 0), |h| (h.size, h.ttl.as_millis() as u64));
        let idem_ms = if req.idempotency_key.is_some() {
            self.inner.opts.idempotency_window.as_millis() as u64
        } else {
            0
        };
        let idem_key = match &req.idempotency_key {
            Some(k) => self.key(channel, &format!("idem:{k}")),
            None => self.key(channel, "meta"),
        };
        let mut inv = self.inner.publish.prepare_invoke();
        inv.key(self.key(channel, "meta"))
            .key(self.key(channel, "stream"))
            .key(idem_key)
            .arg(pubsub_channel(&self.inner.opts.prefix, channel))
            .arg(req.data.get())
            .arg(size)
            .arg(hist_ms)
            .arg(idem_ms)
            .arg(new_epoch())
            .arg(self.meta_ttl())
            // No space can occur in it (compact JSON of ids made of [A-Za-z0-9_-]), so the
            // pub/sub message stays space-separated.
            .arg(req.from.as_deref().map_or("", RawValue::get));
        let (offset, epoch): (u64, String) = timed(inv.invoke_async(&mut con)).await?;
        Ok(Position {
            offset,
            epoch: Arc::from(epoch),
        })
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let rx = {
            let mut interest = lock(&self.inner.interest);
            let n = interest.entry(channel.to_owned()).or_insert(0);
            *n += 1;
            if *n > 1 {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            // Sent under the lock: the pub/sub task sees subscribes and unsubscribes in the
            // order the counts changed.
            let _ = self
                .inner
                .control
                .send(Control::Subscribe(channel.to_owned(), tx));
            rx
        };
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(BrokerError::Unavailable(
                "redis pub/sub is not connected".into(),
            )),
        };
        if result.is_err() {
            self.unsubscribe(channel).await?;
        }
        result
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut interest = lock(&self.inner.interest);
        if let Some(n) = interest.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
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
            .arg(86_400_000u64);
        let values: Vec<Value> = timed(inv.invoke_async(&mut con)).await?;
        parse_history(channel, values)
    }

    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        lock(&self.inner.local_presence)
            .insert((channel.to_owned(), client.client.clone()), client.clone());
        self.publish_presence(channel, 'j', &client).await
    }

    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        lock(&self.inner.local_presence).remove(&(channel.to_owned(), client.client.clone()));
        let mut con = self.inner.cmd.clone();
        let (removed, _): (u64, u64) = timed(
            redis::pipe()
                .atomic()
                .hdel(self.key(channel, "presence"), &client.client)
                .hdel(self.node_key("presence"), member_field(channel, &client))
                .query_async(&mut con),
        )
        .await?;
        if removed == 0 {
            return Ok(());
        }
        self.publish_presence(channel, 'l', &client).await
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
            lock(&self.inner.local_sessions).insert(client.client.clone(), user.clone());
        }
        Ok(admitted == 1)
    }

    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        let Some(user) = &client.user else {
            return Ok(());
        };
        if lock(&self.inner.local_sessions)
            .remove(&client.client)
            .is_none()
        {
            return Ok(());
        }
        let result = self.unregister(&client.client, user).await;
        if result.is_err() {
            lock(&self.inner.orphans).push(client.clone());
        }
        result
    }

    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        let mut con = self.inner.cmd.clone();
        let mut inv = self.inner.kick.prepare_invoke();
        inv.key(self.global_key(&format!("user:{user}")))
            .key(self.global_key("nodes"))
            .arg(now_ms())
            .arg(self.global_key("ctl"))
            .arg(format!("k {user}"));
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
        inv.key(self.global_key(&format!("resume:{key}")))
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
        inv.key(self.global_key(&format!("resume:{key}")))
            .arg(owner)
            .arg(ttl.as_millis().max(1) as u64);
        timed(inv.invoke_async(&mut con)).await
    }

    async fn health(&self) -> Result<(), BrokerError> {
        let mut con = self.inner.cmd.clone();
        timed(redis::cmd("PING").query_async::<String>(&mut con)).await?;
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

/// Parses one pub/sub message and hands it to the sink.
fn dispatch(inner: &Inner, redis_channel: &str, payload: &[u8]) {
    let Some(channel) = redis_channel.strip_prefix(&inner.channel_prefix) else {
        if redis_channel == control_channel(&inner.opts.prefix)
            && let Some(user) = payload.strip_prefix(b"k ")
            && let Ok(user) = std::str::from_utf8(user)
        {
            inner.sink.kick(user);
        }
        return;
    };
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let (kind, rest) = text.split_at(text.len().min(2));
    match kind {
        "p " => {
            let mut parts = rest.splitn(4, ' ');
            let (Some(o), Some(e), Some(f), Some(d)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            let from = match f {
                "-" => Ok(None),
                _ => RawValue::from_string(f.to_owned()).map(|f| Some(Arc::from(f))),
            };
            let (Ok(offset), Ok(data), Ok(from)) =
                (o.parse::<u64>(), RawValue::from_string(d.to_owned()), from)
            else {
                tracing::warn!(channel, "malformed publication from redis");
                return;
            };
            inner.sink.deliver(&Publication {
                channel: Arc::from(channel),
                offset,
                epoch: Arc::from(e),
                data: Arc::from(data),
                from,
            });
        }
        "j " | "l " => {
            let Ok(info) = serde_json::from_str::<ClientInfo>(rest) else {
                return;
            };
            let event = if kind == "j " {
                PresenceEvent::Join(info)
            } else {
                PresenceEvent::Leave(info)
            };
            inner.sink.presence(channel, &event);
        }
        _ => {}
    }
}

/// Owns the pub/sub connection: (re)connects, resubscribes, applies control messages and
/// dispatches messages, until the broker is dropped.
async fn pubsub_task(
    weak: Weak<Inner>,
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        let conn = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = conn else {
            // Answer pending subscribes: they must not wait for a Redis that is not there.
            while let Ok(c) = control.try_recv() {
                if let Control::Subscribe(_, tx) = c {
                    let _ = tx.send(Err(BrokerError::Unavailable("redis is unreachable".into())));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = match weak.upgrade() {
            Some(inner) => lock(&inner.interest).keys().cloned().collect(),
            None => return,
        };
        let prefix = match weak.upgrade() {
            Some(inner) => inner.opts.prefix.clone(),
            None => return,
        };
        // Kicks come on the control channel, whatever channels this node serves.
        let mut ok = sink.subscribe(control_channel(&prefix)).await.is_ok();
        for ch in &channels {
            if !ok {
                break;
            }
            if sink.subscribe(pubsub_channel(&prefix, ch)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        backoff = Duration::from_millis(100);
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(true, Ordering::SeqCst);
            if connected_before {
                tracing::info!(channels = channels.len(), "redis pub/sub reconnected");
                let broker = RedisBroker {
                    inner: inner.clone(),
                };
                tokio::spawn(async move {
                    for ch in channels {
                        if let Ok(h) = broker.history(&ch, HistoryQuery::default()).await {
                            broker.inner.sink.resync(&ch, &h.position);
                        }
                    }
                });
            }
        }
        connected_before = true;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    dispatch(&inner, msg.get_channel_name(), msg.get_payload_bytes());
                }
                c = control.recv() => {
                    let Some(c) = c else { return };
                    match c {
                        Control::Subscribe(ch, tx) => {
                            let r = sink.subscribe(pubsub_channel(&prefix, &ch)).await;
                            let failed = r.is_err();
                            let _ = tx.send(r.map_err(unavailable));
                            if failed { break; }
                        }
                        Control::Unsubscribe(ch) => {
                            if sink.unsubscribe(pubsub_channel(&prefix, &ch)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if let Some(inner) = weak.upgrade() {
            inner.pubsub_up.store(false, Ordering::SeqCst);
        }
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
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

    let orphans = std::mem::take(&mut *lock(&inner.orphans));
    for o in orphans {
        if let Some(user) = &o.user
            && broker.unregister(&o.client, user).await.is_err()
        {
            lock(&inner.orphans).push(o);
        }
    }

    let entries: Vec<((String, String), ClientInfo)> = lock(&inner.local_presence)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sessions: Vec<(String, String)> = lock(&inner.local_sessions)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Sessions and the reaper's record of members are written again only when Redis lost
    // them (reaped, or restarted empty); the members' own entries carry an expiry that every
    // beat moves on.
    let restore_sessions = reaped == 1 || held_sessions < sessions.len();
    let restore_members = reaped == 1 || held_members < entries.len();
    if !entries.is_empty() || restore_sessions {
        let ttl_ms = inner.opts.presence_ttl.as_millis() as u64;
        let exp = now_ms() + ttl_ms;
        let mut pipe = redis::pipe();
        let node_presence = broker.node_key("presence");
        for ((channel, client), info) in &entries {
            let key = broker.key(channel, "presence");
            let entry = serde_json::json!({ "client": client, "user": info.user, "info": info.info, "exp": exp });
            let json = serde_json::to_string(info).unwrap_or_default();
            pipe.hset(&key, client, entry.to_string()).ignore();
            pipe.pexpire(&key, (ttl_ms * 2) as i64).ignore();
            if restore_members {
                pipe.hset(&node_presence, member_field(channel, info), &json)
                    .ignore();
            }
            if reaped == 1 {
                // The others were told this member left; it is still here.
                pipe.publish(
                    pubsub_channel(&inner.opts.prefix, channel),
                    format!("j {json}"),
                )
                .ignore();
            }
        }
        let node_sessions = broker.node_key("sessions");
        if restore_sessions {
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

    let mut inv = inner.reap.prepare_invoke();
    inv.key(broker.global_key("nodes"))
        .arg(now_ms())
        .arg(&inner.opts.prefix)
        .arg(86_400_000u64);
    let dead: u64 = timed(inv.invoke_async(&mut con)).await?;
    if dead > 0 {
        tracing::info!(
            nodes = dead,
            "reaped nodes that stopped beating: their members left"
        );
    }
    Ok(())
}
