//! The NATS broker: many gateway nodes, one channel space, for deployments that already run
//! NATS with JetStream.
//!
//! Every node talks to the same NATS system. What lives there, all named under the
//! configured prefix `<p>` (`herald` by default; `<P>` is the same with every character
//! outside `[A-Za-z0-9_-]` made `_`, as stream and bucket names require):
//!
//! - **The channel stream `<P>_channels`** over the subjects `<p>.s.<channel>`: one message
//!   per publication, its body the publication's `data`, its headers the offset
//!   (`Herald-Offset`), the epoch (`Herald-Epoch`), the publisher (`Herald-From`) and the
//!   channel's history policy at that moment (`Herald-History: <size> <ttl ms>`).
//!   `max_msgs_per_subject` is the largest history size configured, `max_age` the longest of
//!   one hour and the longest history TTL, so the last message of every channel (its offset
//!   and epoch) outlives an idle hour, as the Redis broker's channel meta does.
//! - **Offsets** come from that stream: a publish reads the channel's last message (offset
//!   `n`, stream sequence `s`) and appends offset `n + 1` with
//!   `Nats-Expected-Last-Subject-Sequence: s`. JetStream refuses the append if anything was
//!   appended to the channel since, and the publisher reads again and retries; so offsets
//!   are gap-free and global, and the append, the history and the offset are one write. A
//!   channel that holds no message (never used, idle past `max_age`, or a NATS that lost its
//!   store) starts a new epoch; reading its position writes an offset-0 marker so the epoch is
//!   fixed before the first publication. Publishes on one channel from one node are
//!   serialised here (they could not both win anyway) and the node remembers the last
//!   sequence it wrote, so an uncontended publish is one round trip.
//! - **Fan-out** is core NATS: the stream republishes every stored message, in stream order,
//!   to `<p>.d.<channel>`, and a node subscribes to that subject only while it has local
//!   subscribers there (counted; a subscribe returns once the server confirmed the `SUB`: a
//!   request sent after it comes back). Only the nodes that asked receive a channel's traffic, and they
//!   receive it in offset order (the stream's order). Presence `join`/`leave` travel on the
//!   same subject (header `Herald-Presence`), kicks on `<p>.ctl`, which every node listens to.
//! - **History** is read back from the stream: the retained publications are the channel's
//!   last `size` offsets no older than its `ttl`, both taken from its latest message.
//! - **Idempotency**: the publish carries `Nats-Msg-Id` (channel and key), and the stream's
//!   duplicate window is the idempotency window, so JetStream stores a repeated key once and
//!   answers the first message's sequence; its offset and epoch are read from that message,
//!   or, when the channel has since evicted it, from the bucket `<P>_idem` (written after
//!   every keyed publish, entries live for the window).
//! - **Presence** is the KV bucket `<P>_presence` (`max_age` = 2 × `presence_ttl`; entries
//!   older than `presence_ttl` are not members), one key per
//!   member: `<channel>.<node>.<client>`. The owning node rewrites its members every
//!   `presence_ttl / 5`, so a member of a node that died disappears within `presence_ttl`.
//! - **Nodes, sessions and kicks** mirror the Redis broker: every node beats in the bucket
//!   `<P>_nodes` (value: the moment it counts as dead, 3/5 of `presence_ttl` after its beat)
//!   and at each beat looks for nodes whose time is over: it removes each of their members by
//!   compare-and-set on its revision (so one reaper wins each), publishes a `leave` for each
//!   it removed, then marks the node `reaped`. A user's
//!   sessions are one entry of `<P>_sessions` (client → node), changed by compare-and-set;
//!   the per-user limit and the kick count only sessions of live nodes. A node that was taken
//!   for dead while alive (cut off for longer than its life) notices at its next beat,
//!   registers its sessions again and announces its members again (`join`); a node whose
//!   NATS lost its store registers both again without a `join` (nobody was told they left).
//! - **Resumable session state** is `<P>_resume` (value `owner \n expiry ms \n state`),
//!   changed by compare-and-set with the semantics of the Redis broker's scripts. The
//!   bucket keeps an entry a day at most, so a longer `socketio.max_disconnection` is cut to
//!   a day.
//!
//! Faults: requests fail fast with `Unavailable` while NATS is away (publishers get 503 and
//! decide). The client reconnects by itself and subscribes again; after every reconnect (and
//! after a subscription fell behind and NATS dropped messages for it) the broker asks the
//! sink to resync every subscribed channel, so subscribers that missed publications recover
//! with `since`. JetStream keeps its store across a restart, so offsets and history survive
//! a restarted `nats-server`; a store that was lost starts new epochs (`recovered: false`).
//!
//! Channel names are dot-separated `[A-Za-z0-9_-]` segments (`herald_core::name`), valid NATS
//! subject tokens as they are. Keys that come from elsewhere (clients, users, resume keys, and
//! channels inside KV keys, where a channel must be one token) are escaped by [`token`]:
//! `[A-Za-z0-9_-]` as is, every other byte `=XX`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::{self, DirectGetErrorKind, DiscardPolicy, Republish};
use async_nats::{Client, Event, HeaderMap, Subscriber, jetstream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use herald_core::broker::{
    FanoutPace, HistoryQuery, HistoryResult, LocalSessions, PresenceEvent, new_epoch, random_id,
    resync_channels,
};
use herald_core::protocol::ClientInfo;
use herald_core::{Broker, BrokerError, Position, Publication, PublicationSink, PublishRequest};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Channels with no publication for this long forget their offset (a new epoch starts),
/// unless their history lives longer.
const META_IDLE: Duration = Duration::from_secs(3600);

/// Every request gives up after this, so a dead NATS answers 503 quickly.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one pull of a scan waits for messages not delivered yet (see [`NatsBroker::scan`]).
const SCAN_WAIT: Duration = Duration::from_millis(100);

/// A node beats this many times per `presence_ttl`.
pub const BEATS: u32 = 5;

/// A node counts as dead this many beats after its last one (3/5 of `presence_ttl`; see the
/// Redis broker, whose rule this is).
const NODE_LIFE: u32 = 3;

/// How long entries of `<P>_nodes` (and of the resume bucket) are kept at most: a live node
/// rewrites its entry every beat, a dead one's `reaped` marker goes after this.
const NODE_RECORD_AGE: Duration = Duration::from_secs(86_400);

/// Stripes of the per-channel publish lock (publishes on one channel from one node queue).
const STRIPES: usize = 64;

/// Channels whose last written sequence a node remembers (forgotten all at once past it).
const LAST_CACHE: usize = 65_536;

/// Attempts of one compare-and-set before giving up (each loses only to another writer).
const CAS_ATTEMPTS: usize = 64;

const H_OFFSET: &str = "Herald-Offset";
const H_EPOCH: &str = "Herald-Epoch";
const H_FROM: &str = "Herald-From";
const H_HISTORY: &str = "Herald-History";
const H_PRESENCE: &str = "Herald-Presence";
const H_EXPECTED_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
const H_MSG_ID: &str = "Nats-Msg-Id";
const H_KV_OPERATION: &str = "KV-Operation";

/// How to reach NATS and size what the broker keeps there.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port` (several comma-separated for a cluster; `tls://` for TLS).
    pub url: String,
    /// Prefix of every subject, stream and bucket, so several gateways can share one NATS.
    pub prefix: String,
    pub presence_ttl: Duration,
    pub idempotency_window: Duration,
    /// The largest history size of any channel (the stream's `max_msgs_per_subject`; at
    /// least 1, the message that holds a channel's offset).
    pub history_size: usize,
    /// The longest history TTL of any channel.
    pub history_ttl: Duration,
    /// JetStream replicas of the stream and buckets (1; 3 on a clustered JetStream).
    pub replicas: usize,
}

/// The stream and buckets, set up once connected (and again after NATS lost them).
struct Handles {
    channels: stream::Stream,
    presence: kv::Store,
    presence_stream: stream::Stream,
    nodes: kv::Store,
    nodes_stream: stream::Stream,
    sessions: kv::Store,
    resume: kv::Store,
    idem: kv::Store,
}

/// What this node last wrote to a channel: the next publish expects it to be still last.
#[derive(Clone)]
struct Last {
    seq: u64,
    offset: u64,
    epoch: Arc<str>,
}

/// A channel's latest message as read from the stream.
struct Head {
    last: Last,
    size: u64,
    ttl: Duration,
    /// Where a history scan starts: the latest message's time less the TTL (nothing older
    /// can be retained).
    scan_from: DeliverPolicy,
}

/// This node's interest in one channel ([`Inner::interest`]).
#[derive(Debug)]
struct Interest {
    /// `subscribe` calls not yet undone: one per local subscriber.
    subscribers: usize,
    /// Whether the server confirmed the SUB ([`NatsBroker::confirm`]): from then on a subscribe
    /// returns at once (a reconnect subscribes again and resyncs every channel).
    confirmed: bool,
    /// The task that owns the subscription; aborting it unsubscribes.
    task: JoinHandle<()>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    sink: Arc<dyn PublicationSink>,
    opts: NatsOptions,
    /// `<P>`: stream and bucket names.
    names: String,
    handles: tokio::sync::Mutex<Option<Arc<Handles>>>,
    /// Node-level interest: channel → its local subscribers, whether the server confirmed
    /// the subscription, and the task that owns it.
    interest: tokio::sync::Mutex<HashMap<String, Interest>>,
    connected: AtomicBool,
    last: Mutex<HashMap<String, Last>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    local_presence: Mutex<HashMap<(String, String), ClientInfo>>,
    /// Sessions this node registered, and those whose unregistering failed.
    local_sessions: LocalSessions,
    node: String,
    /// The revision of this node's entry in `<P>_nodes` after its last beat (0: none yet).
    beat_revision: AtomicU64,
    /// `<p>.d.`, stripped from every delivered subject.
    delivery_prefix: String,
}

/// The NATS broker. Cheap to clone.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.inner.opts.prefix)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats: {what}: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| unavailable(what, e)),
        Err(_) => Err(BrokerError::Unavailable(format!("nats: {what}: timed out"))),
    }
}

/// Escapes any string into one NATS subject token (and KV key token): `[A-Za-z0-9_-]` stay,
/// every other byte becomes `=` and two hex digits. Injective, so two names never share a key.
pub fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

/// `<P>`: the prefix as a stream or bucket name.
fn stream_names(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// Offset, epoch and history policy of a stored channel message.
fn parse_head(seq: u64, h: &HeaderMap) -> Option<Head> {
    let offset = header(h, H_OFFSET)?.parse().ok()?;
    let epoch = header(h, H_EPOCH)?;
    let (size, ttl) = header(h, H_HISTORY)?.split_once(' ')?;
    Some(Head {
        last: Last {
            seq,
            offset,
            epoch: Arc::from(epoch),
        },
        size: size.parse().ok()?,
        ttl: Duration::from_millis(ttl.parse().ok()?),
        scan_from: DeliverPolicy::All,
    })
}

fn is_not_found(e: &async_nats::jetstream::stream::DirectGetError) -> bool {
    matches!(e.kind(), DirectGetErrorKind::NotFound)
}

/// Where [`NatsBroker::scan`] ends.
enum ScanEnd {
    /// A channel's history: from `from` up to stream sequence `seq` (the head read before).
    Until { from: DeliverPolicy, seq: u64 },
    /// A KV bucket's current entries: the latest value of every key there when the read began.
    LastPerSubject,
}

/// A message read back by [`NatsBroker::scan`].
struct Scanned {
    subject: String,
    seq: u64,
    time_ms: u64,
    headers: HeaderMap,
    payload: Bytes,
}

impl NatsBroker {
    /// Returns once the server has handled everything this client sent before the call (a
    /// SUB above all). `flush` only writes the client's buffer to the socket; what proves the
    /// server read it is an answer to something sent after it: a request on a subject nobody
    /// serves, which the server answers at once with "no responders" (NATS 2.2+). One round
    /// trip; `Unavailable` if it does not come back within the command timeout.
    ///
    /// On a cluster of NATS servers this confirms the server the node is connected to; the
    /// others learn the interest shortly after (NATS propagates it asynchronously).
    async fn confirm(&self) -> Result<(), BrokerError> {
        let subject = format!("{}.confirm", self.inner.opts.prefix);
        let answer = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.inner.client.request(subject, Bytes::new()),
        )
        .await;
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(unavailable("confirm", e)),
            Err(_) => Err(BrokerError::Unavailable("nats: confirm: timed out".into())),
        }
    }

    /// Connects lazily: the broker starts even while NATS is down (not ready until it is up).
    /// Must be called inside a Tokio runtime; spawns the control, event and heartbeat tasks.
    pub fn start(opts: NatsOptions, sink: Arc<dyn PublicationSink>) -> Result<Self, BrokerError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let connect = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(1))
            .request_timeout(Some(COMMAND_TIMEOUT))
            .ping_interval(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100u64 << attempts.min(5)).min(2000))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(opts.url.as_str());
        // With `retry_on_initial_connect` the client is built without waiting for the
        // network (the connection is made by a task it spawns), so this completes at once.
        let client = match connect.now_or_never() {
            Some(Ok(client)) => client,
            Some(Err(e)) => return Err(BrokerError::Internal(format!("nats url: {e}"))),
            None => {
                return Err(BrokerError::Internal(
                    "nats: the client did not start without waiting".into(),
                ));
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(COMMAND_TIMEOUT);
        let names = stream_names(&opts.prefix);
        let inner = Arc::new(Inner {
            client,
            js,
            sink,
            delivery_prefix: format!("{}.d.", opts.prefix),
            opts,
            names,
            handles: tokio::sync::Mutex::new(None),
            interest: tokio::sync::Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            last: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            local_presence: Mutex::new(HashMap::new()),
            local_sessions: LocalSessions::default(),
            node: random_id(12),
            beat_revision: AtomicU64::new(0),
        });
        tokio::spawn(events_task(Arc::downgrade(&inner), events_rx));
        tokio::spawn(control_task(Arc::downgrade(&inner)));
        tokio::spawn(heartbeat_task(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// This node's id (its name in `<P>_nodes` and in presence keys).
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    fn stream_subject(&self, channel: &str) -> String {
        format!("{}.s.{channel}", self.inner.opts.prefix)
    }

    fn delivery_subject(&self, channel: &str) -> String {
        format!("{}.d.{channel}", self.inner.opts.prefix)
    }

    fn control_subject(prefix: &str) -> String {
        format!("{prefix}.ctl")
    }

    /// The stream and buckets, created or brought up to this node's needs on first use.
    async fn handles(&self) -> Result<Arc<Handles>, BrokerError> {
        let mut slot = self.inner.handles.lock().await;
        if let Some(h) = &*slot {
            return Ok(h.clone());
        }
        let h = match tokio::time::timeout(COMMAND_TIMEOUT * 2, self.setup()).await {
            Ok(r) => Arc::new(r?),
            Err(_) => return Err(BrokerError::Unavailable("nats: setup: timed out".into())),
        };
        *slot = Some(h.clone());
        Ok(h)
    }

    /// Forgets the handles: the next request checks the stream and buckets again.
    async fn reset_handles(&self) {
        *self.inner.handles.lock().await = None;
    }

    async fn setup(&self) -> Result<Handles, BrokerError> {
        let o = &self.inner.opts;
        let p = &o.prefix;
        let n = &self.inner.names;
        let js = &self.inner.js;
        let max_age = META_IDLE.max(o.history_ttl).max(o.idempotency_window);
        let wanted = stream::Config {
            name: format!("{n}_channels"),
            description: Some("Herald: channel publications (offsets, epochs, history)".into()),
            subjects: vec![format!("{p}.s.>")],
            max_messages_per_subject: o.history_size.max(1) as i64,
            max_age,
            duplicate_window: o.idempotency_window,
            discard: DiscardPolicy::Old,
            num_replicas: o.replicas.max(1),
            allow_direct: true,
            republish: Some(Republish {
                source: format!("{p}.s.>"),
                destination: format!("{p}.d.>"),
                headers_only: false,
            }),
            ..Default::default()
        };
        let channels = match js.get_stream(&wanted.name).await {
            Ok(mut s) => {
                // Several nodes (or versions) share it: keep the largest of every bound, so
                // no node cuts another's history.
                let have = s
                    .info()
                    .await
                    .map_err(|e| unavailable("stream info", e))?
                    .config
                    .clone();
                let merged = stream::Config {
                    max_messages_per_subject: have
                        .max_messages_per_subject
                        .max(wanted.max_messages_per_subject),
                    max_age: have.max_age.max(wanted.max_age),
                    duplicate_window: have.duplicate_window.max(wanted.duplicate_window),
                    ..wanted.clone()
                };
                if have.max_messages_per_subject != merged.max_messages_per_subject
                    || have.max_age != merged.max_age
                    || have.duplicate_window != merged.duplicate_window
                    || have.republish.is_none()
                    || !have.allow_direct
                {
                    js.update_stream(&merged)
                        .await
                        .map_err(|e| unavailable("stream update", e))?;
                }
                s
            }
            Err(_) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(s) => s,
                    // Another node created it meanwhile.
                    Err(_) => js
                        .get_stream(&wanted.name)
                        .await
                        .map_err(|e| unavailable("stream create", e))?,
                }
            }
        };
        // The bucket's stream is created here as the KV layout wants it (what the client's
        // `create_key_value` would send), because that call first asks for the account's
        // limits, whose reply from a 2.9 server this client version cannot parse.
        let bucket = |name: &str, max_age: Duration, what: &str| stream::Config {
            name: format!("KV_{n}_{name}"),
            description: Some(format!("Herald: {what}")),
            subjects: vec![format!("$KV.{n}_{name}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_messages: -1,
            max_age,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: o.replicas.max(1),
            ..Default::default()
        };
        let store = |cfg: stream::Config| async move {
            let bucket = cfg.name.trim_start_matches("KV_").to_owned();
            if js.get_stream(&cfg.name).await.is_err()
                && let Err(created) = js.create_stream(cfg.clone()).await
                // Another node may have created it meanwhile.
                && js.get_stream(&cfg.name).await.is_err()
            {
                return Err(unavailable(&format!("creating bucket {bucket}"), created));
            }
            js.get_key_value(&bucket)
                .await
                .map_err(|e| unavailable(&format!("bucket {bucket}"), e))
        };
        // Entries older than `presence_ttl` are not read as members; they are kept twice as
        // long so a late reaper still finds a dead node's members to announce their `leave`.
        let presence = store(bucket(
            "presence",
            o.presence_ttl * 2,
            "presence members (channel.node.client)",
        ))
        .await?;
        let nodes = store(bucket("nodes", NODE_RECORD_AGE, "gateway node heartbeats")).await?;
        let sessions = store(bucket(
            "sessions",
            Duration::ZERO,
            "sessions per user (client -> node)",
        ))
        .await?;
        let resume = store(bucket(
            "resume",
            NODE_RECORD_AGE,
            "resumable transport session state",
        ))
        .await?;
        let idem = store(bucket(
            "idem",
            o.idempotency_window,
            "results of idempotent publishes",
        ))
        .await?;
        let presence_stream = js
            .get_stream(format!("KV_{n}_presence"))
            .await
            .map_err(|e| unavailable("presence bucket", e))?;
        let nodes_stream = js
            .get_stream(format!("KV_{n}_nodes"))
            .await
            .map_err(|e| unavailable("nodes bucket", e))?;
        Ok(Handles {
            channels,
            presence,
            presence_stream,
            nodes,
            nodes_stream,
            sessions,
            resume,
            idem,
        })
    }

    /// The channel's latest message, `None` when it holds none.
    async fn head(&self, h: &Handles, channel: &str) -> Result<Option<Head>, BrokerError> {
        let subject = self.stream_subject(channel);
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            h.channels.direct_get_last_for_subject(subject),
        )
        .await
        {
            Ok(Ok(m)) => match parse_head(m.sequence, &m.headers) {
                Some(mut head) => {
                    head.scan_from = DeliverPolicy::ByStartTime {
                        start_time: m.time - head.ttl,
                    };
                    Ok(Some(head))
                }
                None => Err(BrokerError::Internal(
                    "nats: malformed channel message".into(),
                )),
            },
            Ok(Err(e)) if is_not_found(&e) => Ok(None),
            Ok(Err(e)) => Err(unavailable("read channel", e)),
            Err(_) => Err(BrokerError::Unavailable(
                "nats: read channel: timed out".into(),
            )),
        }
    }

    /// Appends to a channel's stream, expecting `expected` (0: nothing) to be its last
    /// sequence. `Ok(None)` when another writer came first.
    async fn append(
        &self,
        channel: &str,
        mut headers: HeaderMap,
        expected: u64,
        payload: Bytes,
    ) -> Result<Option<jetstream::publish::PublishAck>, BrokerError> {
        headers.insert(H_EXPECTED_SUBJECT_SEQ, expected.to_string().as_str());
        let subject = self.stream_subject(channel);
        let sent = timed(
            "publish",
            self.inner
                .js
                .publish_with_headers(subject, headers, payload),
        )
        .await?;
        match tokio::time::timeout(COMMAND_TIMEOUT, sent).await {
            Ok(Ok(ack)) => Ok(Some(ack)),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Ok(Err(e)) => {
                // The stream may be gone (deleted, or a store lost without a reconnect): the
                // next request sets it up again, and no remembered sequence is trusted.
                self.reset_handles().await;
                lock(&self.inner.last).clear();
                Err(unavailable("publish", e))
            }
            Err(_) => Err(BrokerError::Unavailable("nats: publish: timed out".into())),
        }
    }

    /// The position of a channel, fixing a new epoch (an offset-0 marker) when it has none.
    async fn head_or_mark(&self, h: &Handles, channel: &str) -> Result<Head, BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            if let Some(head) = self.head(h, channel).await? {
                return Ok(head);
            }
            let epoch = new_epoch();
            let mut headers = HeaderMap::new();
            headers.insert(H_OFFSET, "0");
            headers.insert(H_EPOCH, epoch.as_str());
            headers.insert(H_HISTORY, "0 0");
            if let Some(ack) = self.append(channel, headers, 0, Bytes::new()).await? {
                return Ok(Head {
                    last: Last {
                        seq: ack.sequence,
                        offset: 0,
                        epoch: Arc::from(epoch),
                    },
                    size: 0,
                    ttl: Duration::ZERO,
                    scan_from: DeliverPolicy::All,
                });
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too much contention on the channel".into(),
        ))
    }

    /// The subjects of `stream` matching `filter` that hold a message (for a KV bucket: its
    /// keys, deleted ones with their marker included) and the stream's last sequence then.
    async fn list_keys(
        stream: &stream::Stream,
        filter: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(std::collections::HashSet<String>, u64), BrokerError> {
        tokio::time::timeout_at(deadline, async {
            let mut subjects = stream
                .info_with_subjects(filter)
                .await
                .map_err(|e| unavailable("scan", e))?;
            let last = subjects.info.state.last_sequence;
            let mut keys = std::collections::HashSet::new();
            while let Some(s) = subjects.next().await {
                keys.insert(s.map_err(|e| unavailable("scan", e))?.0);
            }
            Ok((keys, last))
        })
        .await
        .map_err(|_| BrokerError::Unavailable("nats: scan: timed out".into()))?
    }

    /// Reads every message of `stream` whose subject matches `filter`, oldest first, through
    /// an ephemeral pull consumer, and ends at a point fixed before it starts, never by
    /// chasing what is written meanwhile:
    ///
    /// - [`ScanEnd::Until`]: after stream sequence `seq` (a channel's history up to its head);
    /// - [`ScanEnd::LastPerSubject`] (a KV bucket): once every key the bucket held when the
    ///   read began has been seen, with its latest value or a later one. The key list is taken
    ///   from the stream's state first, and again whenever the read passes the stream's end
    ///   as it was then with keys unseen, to stop waiting for keys gone without a trace. The
    ///   consumer's own pending count cannot end it: when a key is rewritten between the
    ///   consumer's creation and the delivery of its old value, the server skips the old
    ///   value but still counts it (nats-server 2.9), so the count never reaches zero while
    ///   keys are rewritten, a pull for "what is there" waits for the next write, and the
    ///   read chased the writes until the request timeout.
    ///
    /// A pull waits at most [`SCAN_WAIT`] for messages not there yet, which only happens when
    /// a message went away during the read (a key or a publication aged out).
    async fn scan(
        &self,
        stream: &stream::Stream,
        filter: String,
        end: ScanEnd,
    ) -> Result<Vec<Scanned>, BrokerError> {
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        // The stream's last sequence when the keys were (last) listed.
        let mut horizon = 0;
        let (deliver_policy, until, mut unseen) = match end {
            ScanEnd::Until { from, seq } => (from, Some(seq), None),
            ScanEnd::LastPerSubject => {
                let (keys, last) = Self::list_keys(stream, &filter, deadline).await?;
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
                horizon = last;
                (DeliverPolicy::LastPerSubject, None, Some(keys))
            }
        };
        let consumer = timed(
            "scan",
            stream.create_consumer(pull::Config {
                filter_subject: filter.clone(),
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                ..Default::default()
            }),
        )
        .await?;
        let pending = consumer.cached_info().num_pending as usize;
        let name = consumer.cached_info().name.clone();
        let mut out = Vec::with_capacity(unseen.as_ref().map_or(pending, |u| u.len()));
        let result: Result<(), BrokerError> = async {
            // (A key listing is never empty here: an empty one answered above.)
            let mut done = unseen.is_none() && pending == 0;
            while !done {
                let want = match &unseen {
                    Some(keys) => keys.len(),
                    None => pending.saturating_sub(out.len()),
                }
                .max(1);
                let mut messages = timed(
                    "scan",
                    consumer
                        .batch()
                        .max_messages(want)
                        .expires(SCAN_WAIT)
                        .messages(),
                )
                .await?;
                let mut got = 0;
                loop {
                    let next = tokio::time::timeout_at(deadline, messages.next()).await;
                    let m = match next {
                        Ok(Some(Ok(m))) => m,
                        Ok(Some(Err(e))) => return Err(unavailable("scan", e)),
                        Ok(None) => break,
                        Err(_) => {
                            return Err(BrokerError::Unavailable("nats: scan: timed out".into()));
                        }
                    };
                    let Ok(info) = m.info() else { continue };
                    got += 1;
                    let seq = info.stream_sequence;
                    if until.is_some_and(|u| seq > u) {
                        done = true;
                        break;
                    }
                    let subject = m.message.subject.to_string();
                    if let Some(keys) = &mut unseen {
                        keys.remove(&subject);
                    }
                    out.push(Scanned {
                        subject,
                        seq,
                        time_ms: (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                        headers: m.message.headers.clone().unwrap_or_default(),
                        payload: m.message.payload.clone(),
                    });
                    let end = match &unseen {
                        Some(keys) => keys.is_empty(),
                        None => info.pending == 0 || until == Some(seq),
                    };
                    if end {
                        done = true;
                        break;
                    }
                }
                if got == 0 {
                    done = true;
                }
                // Past the listing's last sequence with keys still unseen: each of those
                // that still exists has its current value ahead (a value at or before the
                // read's position was delivered, or superseded by a later one), but a key can
                // also have gone without a trace (a delete marker dropped at the bucket's
                // `max_age`), and while other keys are written no pull comes back empty. So
                // list again and stop waiting for the keys that are gone.
                if !done
                    && out.last().is_some_and(|m| m.seq > horizon)
                    && let Some(keys) = &mut unseen
                {
                    let (now, last) = Self::list_keys(stream, &filter, deadline).await?;
                    keys.retain(|k| now.contains(k));
                    horizon = last;
                    done = keys.is_empty();
                }
            }
            Ok(())
        }
        .await;
        if unseen.is_some() {
            // A key written during the read may come twice: keep its latest value.
            let mut latest: HashMap<String, u64> = HashMap::new();
            for m in &out {
                let e = latest.entry(m.subject.clone()).or_insert(m.seq);
                *e = (*e).max(m.seq);
            }
            out.retain(|m| latest.get(&m.subject) == Some(&m.seq));
        }
        // Not awaited by the caller: the consumer would go by itself after its inactivity
        // threshold, this only frees it sooner.
        let stream = stream.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, stream.delete_consumer(&name)).await;
        });
        result.map(|()| out)
    }

    fn presence_key(&self, channel: &str, node: &str, client: &str) -> String {
        format!("{}.{node}.{}", token(channel), token(client))
    }

    /// Publishes a `join` or `leave` for `info` to the channel's subscribers (core NATS).
    async fn announce(
        &self,
        channel: &str,
        kind: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(H_PRESENCE, kind);
        timed(
            "presence event",
            self.inner.client.publish_with_headers(
                self.delivery_subject(channel),
                headers,
                Bytes::from(json),
            ),
        )
        .await
    }

    /// Whether `node` is alive: this node always, others while their beat is not over.
    async fn alive(
        &self,
        h: &Handles,
        node: &str,
        seen: &mut HashMap<String, bool>,
        now: u64,
    ) -> Result<bool, BrokerError> {
        if node == self.inner.node {
            return Ok(true);
        }
        if let Some(a) = seen.get(node) {
            return Ok(*a);
        }
        let v = timed("node", h.nodes.get(node)).await?;
        let a = v
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .is_some_and(|exp| exp >= now);
        seen.insert(node.to_owned(), a);
        Ok(a)
    }

    /// Applies `change` to the user's sessions (client → node) with compare-and-set; the
    /// closure answers what to return and whether to write. An empty map deletes the key.
    async fn with_sessions<T>(
        &self,
        user: &str,
        mut change: impl FnMut(&mut HashMap<String, String>) -> (T, bool),
    ) -> Result<T, BrokerError> {
        let h = self.handles().await?;
        let key = token(user);
        for _ in 0..CAS_ATTEMPTS {
            let entry = timed("sessions", h.sessions.entry(key.clone())).await?;
            let (mut map, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice::<HashMap<String, String>>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (HashMap::new(), Some(e.revision)),
                None => (HashMap::new(), None),
            };
            let (answer, write) = change(&mut map);
            if !write {
                return Ok(answer);
            }
            let value = Bytes::from(serde_json::to_vec(&map).unwrap_or_default());
            let written = match (revision, map.is_empty()) {
                (None, true) => true,
                (Some(r), true) => {
                    match timed("sessions", async {
                        Ok::<_, String>(h.sessions.delete_expect_revision(&key, Some(r)).await)
                    })
                    .await?
                    {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "sessions delete lost a race");
                            false
                        }
                    }
                }
                (Some(r), false) => match timed("sessions", async {
                    Ok::<_, String>(h.sessions.update(&key, value, r).await)
                })
                .await?
                {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(unavailable("sessions", e)),
                },
                (None, false) => match timed("sessions", async {
                    Ok::<_, String>(h.sessions.create(&key, value).await)
                })
                .await?
                {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(unavailable("sessions", e)),
                },
            };
            if written {
                return Ok(answer);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too much contention on the user's sessions".into(),
        ))
    }

    /// Drops entries of dead nodes from a user's sessions map; returns how many stay
    /// (excluding `except`).
    async fn live_sessions(
        &self,
        h: &Handles,
        map: &HashMap<String, String>,
        except: Option<&str>,
    ) -> Result<(usize, Vec<String>), BrokerError> {
        let now = now_ms();
        let mut seen = HashMap::new();
        let mut live = 0;
        let mut dead = Vec::new();
        for (client, node) in map {
            if Some(client.as_str()) == except {
                continue;
            }
            if self.alive(h, node, &mut seen, now).await? {
                live += 1;
            } else {
                dead.push(client.clone());
            }
        }
        Ok((live, dead))
    }

    async fn unregister(&self, client: &str, user: &str) -> Result<(), BrokerError> {
        self.with_sessions(user, |map| {
            let removed = map.remove(client).is_some();
            ((), removed)
        })
        .await
    }

    async fn register(&self, client: &str, user: &str) -> Result<(), BrokerError> {
        let node = self.inner.node.clone();
        self.with_sessions(user, |map| {
            let changed = map.get(client) != Some(&node);
            map.insert(client.to_owned(), node.clone());
            ((), changed)
        })
        .await
    }

    async fn put_member(
        &self,
        h: &Handles,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let key = self.presence_key(channel, &self.inner.node, &info.client);
        let value = Bytes::from(serde_json::to_vec(info).unwrap_or_default());
        timed("presence", h.presence.put(key, value)).await?;
        Ok(())
    }

    /// Reads an idempotent publish's first result: from its message when the channel still
    /// holds it, else from `<P>_idem` (written right after the first publish was stored).
    async fn first_result(
        &self,
        h: &Handles,
        seq: u64,
        idem_key: &str,
    ) -> Result<Position, BrokerError> {
        match tokio::time::timeout(COMMAND_TIMEOUT, h.channels.direct_get(seq)).await {
            Ok(Ok(m)) => {
                if let Some(head) = parse_head(seq, &m.headers) {
                    return Ok(Position {
                        offset: head.last.offset,
                        epoch: head.last.epoch,
                    });
                }
            }
            Ok(Err(e)) if is_not_found(&e) => {}
            Ok(Err(e)) => return Err(unavailable("read publication", e)),
            Err(_) => {
                return Err(BrokerError::Unavailable(
                    "nats: read publication: timed out".into(),
                ));
            }
        }
        // Written by the first publisher right after its append: wait briefly for it.
        for _ in 0..20 {
            if let Some(v) = timed("idempotency", h.idem.get(idem_key)).await?
                && let Some((o, e)) = std::str::from_utf8(&v).ok().and_then(|s| s.split_once(' '))
                && let Ok(offset) = o.parse()
            {
                return Ok(Position {
                    offset,
                    epoch: Arc::from(e),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(BrokerError::Internal(
            "nats: the first result of this idempotency key is no longer known".into(),
        ))
    }

    /// Resume state: `(owner, expiry ms, state)` of a live entry, or `None`.
    fn parse_resume(e: &kv::Entry, now: u64) -> Option<(String, String)> {
        if e.operation != Operation::Put {
            return None;
        }
        let text = std::str::from_utf8(&e.value).ok()?;
        let mut parts = text.splitn(3, '\n');
        let owner = parts.next()?;
        let exp: u64 = parts.next()?.parse().ok()?;
        let state = parts.next().unwrap_or("");
        (exp > now).then(|| (owner.to_owned(), state.to_owned()))
    }

    /// Writes `value` under `key` of `store` if its revision is still `revision` (`None`:
    /// absent). `false` when another writer came first.
    async fn cas(
        store: &kv::Store,
        key: &str,
        value: Bytes,
        revision: Option<u64>,
    ) -> Result<bool, BrokerError> {
        match revision {
            Some(r) => match timed("kv", async {
                Ok::<_, String>(store.update(key, value, r).await)
            })
            .await?
            {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(unavailable("kv", e)),
            },
            None => match timed("kv", async {
                Ok::<_, String>(store.create(key, value).await)
            })
            .await?
            {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(unavailable("kv", e)),
            },
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, req: PublishRequest) -> Result<Position, BrokerError> {
        let h = self.handles().await?;
        let channel = &*req.channel;
        let (size, ttl_ms) = req
            .history
            .map_or((0, 0), |p| (p.size, p.ttl.as_millis() as u64));
        let idem_key = req
            .idempotency_key
            .as_deref()
            .map(|k| format!("{}.{}", token(channel), token(k)));
        // A fixed hash (not the process-random one): any spread over the stripes will do.
        let stripe = channel
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize))
            % STRIPES;
        let _queue = self.inner.stripes[stripe].lock().await;
        let mut last = lock(&self.inner.last).get(channel).cloned();
        if last.is_none() {
            last = self.head(&h, channel).await?.map(|h| h.last);
        }
        for _ in 0..CAS_ATTEMPTS {
            let (offset, epoch) = match &last {
                Some(l) => (l.offset + 1, l.epoch.clone()),
                None => (1, Arc::from(new_epoch())),
            };
            let mut headers = HeaderMap::new();
            headers.insert(H_OFFSET, offset.to_string().as_str());
            headers.insert(H_EPOCH, &*epoch);
            headers.insert(H_HISTORY, format!("{size} {ttl_ms}").as_str());
            if let Some(from) = &req.from {
                headers.insert(H_FROM, from.get());
            }
            if let Some(k) = &idem_key {
                headers.insert(H_MSG_ID, k.as_str());
            }
            let expected = last.as_ref().map_or(0, |l| l.seq);
            let payload = Bytes::copy_from_slice(req.data.get().as_bytes());
            match self.append(channel, headers, expected, payload).await {
                Ok(Some(ack)) if ack.duplicate => {
                    return self
                        .first_result(&h, ack.sequence, idem_key.as_deref().unwrap_or_default())
                        .await;
                }
                Ok(Some(ack)) => {
                    let written = Last {
                        seq: ack.sequence,
                        offset,
                        epoch: epoch.clone(),
                    };
                    {
                        let mut cache = lock(&self.inner.last);
                        if cache.len() >= LAST_CACHE {
                            cache.clear();
                        }
                        cache.insert(channel.to_owned(), written);
                    }
                    if let Some(k) = &idem_key {
                        let record = Bytes::from(format!("{offset} {epoch}"));
                        if let Err(e) = timed("idempotency", h.idem.put(k, record)).await {
                            tracing::warn!(error = %e, "could not record an idempotent publish's result");
                        }
                    }
                    return Ok(Position { offset, epoch });
                }
                Ok(None) => {
                    // Another node wrote the channel since (or this node's memory was old).
                    last = self.head(&h, channel).await?.map(|h| h.last);
                }
                Err(e) => {
                    lock(&self.inner.last).remove(channel);
                    return Err(e);
                }
            }
        }
        lock(&self.inner.last).remove(channel);
        Err(BrokerError::Unavailable(
            "nats: too much contention on the channel".into(),
        ))
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        {
            let mut interest = self.inner.interest.lock().await;
            if let Some(entry) = interest.get_mut(channel) {
                entry.subscribers += 1;
                if entry.confirmed {
                    return Ok(());
                }
                // The first subscriber's SUB is sent but not confirmed yet: returning now
                // would let this caller read the position before the server has it. The
                // confirmation below covers it too (the server handles a connection's
                // commands in order).
            } else {
                let sub = timed(
                    "subscribe",
                    self.inner.client.subscribe(self.delivery_subject(channel)),
                )
                .await?;
                let task = tokio::spawn(reader(Arc::downgrade(&self.inner), sub));
                interest.insert(
                    channel.to_owned(),
                    Interest {
                        subscribers: 1,
                        confirmed: false,
                        task,
                    },
                );
            }
        }
        // The server has the subscription once it answered a request sent after it: no
        // publication can fall between this and the caller's read of the position.
        if let Err(e) = self.confirm().await {
            self.unsubscribe(channel).await?;
            return Err(e);
        }
        if let Some(entry) = self.inner.interest.lock().await.get_mut(channel) {
            entry.confirmed = true;
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut interest = self.inner.interest.lock().await;
        if let Some(entry) = interest.get_mut(channel) {
            entry.subscribers -= 1;
            if entry.subscribers == 0
                && let Some(entry) = interest.remove(channel)
            {
                // Dropping the subscriber (with the task) unsubscribes.
                entry.task.abort();
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, BrokerError> {
        let h = self.handles().await?;
        let head = self.head_or_mark(&h, channel).await?;
        let position = Position {
            offset: head.last.offset,
            epoch: head.last.epoch.clone(),
        };
        let mut result = HistoryResult {
            earliest: position.offset + 1,
            position,
            publications: Vec::new(),
        };
        if head.size == 0 || head.last.offset == 0 {
            return Ok(result);
        }
        // Retained: the last `size` offsets, no older than `ttl` (the latest message's policy).
        let floor = head.last.offset.saturating_sub(head.size);
        let cutoff = now_ms().saturating_sub(head.ttl.as_millis() as u64);
        let retained =
            |offset: u64, time_ms: u64| offset > floor && offset > 0 && time_ms >= cutoff;
        let subject = self.stream_subject(channel);
        if query.limit == 0 {
            // Only the earliest: the oldest message the channel still holds, when it is in
            // the window (the usual case); else a scan below.
            match tokio::time::timeout(
                COMMAND_TIMEOUT,
                h.channels
                    .direct_get_next_for_subject(subject.clone(), None),
            )
            .await
            {
                Ok(Ok(m)) => {
                    if let Some(first) = parse_head(m.sequence, &m.headers)
                        && retained(
                            first.last.offset,
                            (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
                        )
                    {
                        result.earliest = first.last.offset;
                        return Ok(result);
                    }
                }
                Ok(Err(e)) if is_not_found(&e) => return Ok(result),
                Ok(Err(e)) => return Err(unavailable("read history", e)),
                Err(_) => {
                    return Err(BrokerError::Unavailable(
                        "nats: read history: timed out".into(),
                    ));
                }
            }
        }
        let start = head.scan_from;
        let messages = self
            .scan(
                &h.channels,
                subject,
                ScanEnd::Until {
                    from: start,
                    seq: head.last.seq,
                },
            )
            .await?;
        let channel: Arc<str> = Arc::from(channel);
        let after = query.after.unwrap_or(u64::MAX);
        let mut earliest = None;
        for m in messages {
            let Some(head) = parse_head(m.seq, &m.headers) else {
                continue;
            };
            let offset = head.last.offset;
            if !retained(offset, m.time_ms) {
                continue;
            }
            earliest.get_or_insert(offset);
            if offset <= after || result.publications.len() >= query.limit {
                continue;
            }
            let Ok(text) = String::from_utf8(m.payload.to_vec()) else {
                continue;
            };
            let Ok(data) = RawValue::from_string(text) else {
                continue;
            };
            let from = header(&m.headers, H_FROM)
                .and_then(|f| RawValue::from_string(f.to_owned()).ok())
                .map(Arc::from);
            result.publications.push(Publication {
                channel: channel.clone(),
                offset,
                epoch: head.last.epoch,
                data: Arc::from(data),
                from,
            });
        }
        if let Some(e) = earliest {
            result.earliest = e;
        }
        Ok(result)
    }

    async fn presence_add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let h = self.handles().await?;
        lock(&self.inner.local_presence)
            .insert((channel.to_owned(), client.client.clone()), client.clone());
        self.put_member(&h, channel, &client).await?;
        self.announce(channel, "join", &client).await
    }

    async fn presence_remove(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let h = self.handles().await?;
        lock(&self.inner.local_presence).remove(&(channel.to_owned(), client.client.clone()));
        let key = self.presence_key(channel, &self.inner.node, &client.client);
        let Some(entry) = timed("presence", h.presence.entry(key.clone())).await? else {
            return Ok(());
        };
        if entry.operation != Operation::Put {
            return Ok(());
        }
        let deleted = timed("presence", async {
            Ok::<_, String>(
                h.presence
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await,
            )
        })
        .await?;
        if deleted.is_err() {
            // Removed (or rewritten by this node's beat) meanwhile: the first remove speaks.
            let again = timed("presence", h.presence.entry(key.clone())).await?;
            match again {
                Some(e) if e.operation == Operation::Put => {
                    timed("presence", h.presence.delete(&key)).await?;
                }
                _ => return Ok(()),
            }
        }
        self.announce(channel, "leave", &client).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let h = self.handles().await?;
        let filter = format!("$KV.{}_presence.{}.*.*", self.inner.names, token(channel));
        let entries = self
            .scan(&h.presence_stream, filter, ScanEnd::LastPerSubject)
            .await?;
        let cutoff = now_ms().saturating_sub(self.inner.opts.presence_ttl.as_millis() as u64);
        let mut out: Vec<ClientInfo> = entries
            .into_iter()
            .filter(|m| header(&m.headers, H_KV_OPERATION).is_none_or(|op| op == "PUT"))
            .filter(|m| m.time_ms >= cutoff)
            .filter_map(|m| serde_json::from_slice::<ClientInfo>(&m.payload).ok())
            .collect();
        out.sort();
        out.dedup_by(|a, b| a.client == b.client);
        Ok(out)
    }

    async fn session_open(&self, client: &ClientInfo, max: usize) -> Result<bool, BrokerError> {
        let Some(user) = &client.user else {
            return Ok(true);
        };
        let h = self.handles().await?;
        let node = self.inner.node.clone();
        let id = client.client.clone();
        for _ in 0..CAS_ATTEMPTS {
            // Liveness is read outside the compare-and-set (it needs requests); the write
            // below only lands if the user's entry did not change meanwhile.
            let key = token(user);
            let entry = timed("sessions", h.sessions.entry(key.clone())).await?;
            let (map, revision) = match &entry {
                Some(e) if e.operation == Operation::Put => (
                    serde_json::from_slice::<HashMap<String, String>>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (HashMap::new(), Some(e.revision)),
                None => (HashMap::new(), None),
            };
            let (live, dead) = self.live_sessions(&h, &map, Some(&id)).await?;
            if live >= max {
                return Ok(false);
            }
            let mut next = map;
            for d in dead {
                next.remove(&d);
            }
            next.insert(id.clone(), node.clone());
            let value = Bytes::from(serde_json::to_vec(&next).unwrap_or_default());
            if Self::cas(&h.sessions, &key, value, revision).await? {
                self.inner.local_sessions.opened(id, user.clone());
                return Ok(true);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too much contention on the user's sessions".into(),
        ))
    }

    async fn session_close(&self, client: &ClientInfo) -> Result<(), BrokerError> {
        self.inner
            .local_sessions
            .close(client, |c, u| async move { self.unregister(&c, &u).await })
            .await
    }

    async fn kick(&self, user: &str) -> Result<usize, BrokerError> {
        let h = self.handles().await?;
        let entry = timed("sessions", h.sessions.entry(token(user))).await?;
        let map = match &entry {
            Some(e) if e.operation == Operation::Put => {
                serde_json::from_slice::<HashMap<String, String>>(&e.value).unwrap_or_default()
            }
            _ => HashMap::new(),
        };
        let (live, _) = self.live_sessions(&h, &map, None).await?;
        timed(
            "kick",
            self.inner.client.publish(
                Self::control_subject(&self.inner.opts.prefix),
                Bytes::from(user.to_owned()),
            ),
        )
        .await?;
        timed("kick", self.inner.client.flush()).await?;
        Ok(live)
    }

    async fn resume_put(
        &self,
        key: &str,
        owner: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<bool, BrokerError> {
        let h = self.handles().await?;
        let key = token(key);
        for _ in 0..CAS_ATTEMPTS {
            let now = now_ms();
            let entry = timed("resume", h.resume.entry(key.clone())).await?;
            if let Some(e) = &entry
                && let Some((holder, _)) = Self::parse_resume(e, now)
                && holder != owner
            {
                return Ok(false);
            }
            let exp = now + ttl.as_millis().max(1) as u64;
            let value = Bytes::from(format!("{owner}\n{exp}\n{state}"));
            if Self::cas(&h.resume, &key, value, entry.map(|e| e.revision)).await? {
                return Ok(true);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too much contention on the resume key".into(),
        ))
    }

    async fn resume_take(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let h = self.handles().await?;
        let key = token(key);
        for _ in 0..CAS_ATTEMPTS {
            let now = now_ms();
            let entry = timed("resume", h.resume.entry(key.clone())).await?;
            let state = entry
                .as_ref()
                .and_then(|e| Self::parse_resume(e, now))
                .map(|(_, s)| s)
                .filter(|s| !s.is_empty());
            let exp = now + ttl.as_millis().max(1) as u64;
            let value = Bytes::from(format!("{owner}\n{exp}\n"));
            if Self::cas(&h.resume, &key, value, entry.map(|e| e.revision)).await? {
                return Ok(state);
            }
        }
        Err(BrokerError::Unavailable(
            "nats: too much contention on the resume key".into(),
        ))
    }

    async fn health(&self) -> Result<(), BrokerError> {
        if !self.inner.connected.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable("nats is not connected".into()));
        }
        let h = self.handles().await?;
        timed("health", h.channels.get_info()).await?;
        Ok(())
    }

    fn idempotency_window(&self) -> Duration {
        self.inner.opts.idempotency_window
    }
}

/// Hands one delivered message to the sink.
fn dispatch(inner: &Inner, msg: &async_nats::Message) {
    let Some(channel) = msg.subject.as_str().strip_prefix(&inner.delivery_prefix) else {
        return;
    };
    let Some(headers) = &msg.headers else {
        return;
    };
    if let Some(kind) = header(headers, H_PRESENCE) {
        let Ok(info) = serde_json::from_slice::<ClientInfo>(&msg.payload) else {
            return;
        };
        let event = match kind {
            "join" => PresenceEvent::Join(info),
            "leave" => PresenceEvent::Leave(info),
            _ => return,
        };
        inner.sink.presence(channel, &event);
        return;
    }
    let Some(head) = parse_head(0, headers) else {
        tracing::warn!(channel, "malformed publication from nats");
        return;
    };
    if head.last.offset == 0 {
        return; // an epoch marker
    }
    let Ok(text) = std::str::from_utf8(&msg.payload) else {
        return;
    };
    let from = match header(headers, H_FROM) {
        None => Ok(None),
        Some(f) => RawValue::from_string(f.to_owned()).map(|f| Some(Arc::from(f))),
    };
    let (Ok(data), Ok(from)) = (RawValue::from_string(text.to_owned()), from) else {
        tracing::warn!(channel, "malformed publication from nats");
        return;
    };
    inner.sink.deliver(&Publication {
        channel: Arc::from(channel),
        offset: head.last.offset,
        epoch: head.last.epoch,
        data: Arc::from(data),
        from,
    });
}

/// Delivers one channel's messages until the subscription is dropped (its task aborted).
async fn reader(weak: Weak<Inner>, mut sub: Subscriber) {
    let mut pace = FanoutPace::default();
    while let Some(msg) = sub.next().await {
        let Some(inner) = weak.upgrade() else { return };
        dispatch(&inner, &msg);
        drop(inner);
        if pace.delivered(msg.payload.len()) {
            // The subscription's buffer can hold a whole batch: let the writers run.
            tokio::task::yield_now().await;
        }
    }
}

/// Kicks: every node listens on `<p>.ctl`.
async fn control_task(weak: Weak<Inner>) {
    let (client, subject) = match weak.upgrade() {
        Some(inner) => (
            inner.client.clone(),
            NatsBroker::control_subject(&inner.opts.prefix),
        ),
        None => return,
    };
    let Ok(mut sub) = client.subscribe(subject).await else {
        tracing::error!("nats: cannot subscribe to kicks");
        return;
    };
    while let Some(msg) = sub.next().await {
        let Some(inner) = weak.upgrade() else { return };
        if let Ok(user) = std::str::from_utf8(&msg.payload) {
            inner.sink.kick(user);
        }
    }
}

/// Follows the connection: readiness, and a resync of every subscribed channel after a
/// reconnect or after NATS dropped messages for a subscription that fell behind.
async fn events_task(weak: Weak<Inner>, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut connected_before = false;
    while let Some(event) = events.recv().await {
        let Some(inner) = weak.upgrade() else { return };
        let broker = NatsBroker { inner };
        match event {
            Event::Connected => {
                broker.inner.connected.store(true, Ordering::SeqCst);
                if connected_before {
                    tracing::info!("nats reconnected: resyncing subscribed channels");
                    // The store may have been lost: check the stream and buckets again.
                    broker.reset_handles().await;
                    lock(&broker.inner.last).clear();
                    tokio::spawn(resync_all(broker));
                }
                connected_before = true;
            }
            Event::Disconnected => {
                broker.inner.connected.store(false, Ordering::SeqCst);
                tracing::warn!("nats connection lost; reconnecting");
            }
            Event::SlowConsumer(_) => {
                tracing::warn!("nats dropped messages for a slow subscription: resyncing");
                tokio::spawn(resync_all(broker));
            }
            Event::Closed => {
                broker.inner.connected.store(false, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

async fn resync_all(broker: NatsBroker) {
    // The client subscribed again before this event; the server has those once it confirms.
    if broker.confirm().await.is_err() {
        return;
    }
    let channels: Vec<String> = broker.inner.interest.lock().await.keys().cloned().collect();
    let sink = broker.inner.sink.clone();
    for (channel, e) in resync_channels(&broker, &*sink, channels).await {
        tracing::warn!(channel, error = %e, "resync failed");
    }
}

/// This node's heartbeat, every `presence_ttl / BEATS`, until the broker is dropped.
async fn heartbeat_task(weak: Weak<Inner>) {
    let every = match weak.upgrade() {
        Some(inner) => inner.opts.presence_ttl / BEATS,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The node's own entry is written on the tick; the rest of the beat (members, sessions,
    // reaping: several requests) runs beside it, one at a time, so a slow round never delays
    // the entry past the node's life and gets it taken for dead.
    let upkeep_running = Arc::new(AtomicBool::new(false));
    // (lost, reaped) not yet acted on: kept until an upkeep round succeeds.
    let pending = Arc::new(Mutex::new((false, false)));
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let broker = NatsBroker { inner };
        match beat(&broker).await {
            Ok((l, r)) => {
                let mut p = lock(&pending);
                p.0 |= l;
                p.1 |= r;
            }
            Err(e) => {
                tracing::warn!(error = %e, "nats heartbeat failed");
                continue;
            }
        }
        if upkeep_running.swap(true, Ordering::SeqCst) {
            continue; // the flags wait for the next round
        }
        let (l, r) = std::mem::take(&mut *lock(&pending));
        let running = upkeep_running.clone();
        let pending = pending.clone();
        tokio::spawn(async move {
            if let Err(e) = upkeep(&broker, l, r).await {
                tracing::warn!(error = %e, "nats heartbeat failed");
                let mut p = lock(&pending);
                p.0 |= l;
                p.1 |= r;
            }
            running.store(false, Ordering::SeqCst);
        });
    }
}

/// One beat of this node's entry: moves its expiry on. Answers whether NATS did not hold the
/// entry as the node left it (`lost`: first beat, reaped, or a store that was lost) and
/// whether another node had taken it for dead (`reaped`).
async fn beat(broker: &NatsBroker) -> Result<(bool, bool), BrokerError> {
    let inner = &broker.inner;
    let h = broker.handles().await?;
    let expiry = now_ms() + (inner.opts.presence_ttl * NODE_LIFE / BEATS).as_millis() as u64;
    let value = Bytes::from(expiry.to_string());
    let known = inner.beat_revision.load(Ordering::SeqCst);
    // `lost`: NATS does not hold this node's entry as it left it (first beat, reaped, or a
    // store that was lost); `reaped`: another node took it for dead and told the others its
    // members left.
    let mut lost = known == 0;
    let mut reaped = false;
    let revision = if known != 0 {
        match timed("beat", async {
            Ok::<_, String>(h.nodes.update(&inner.node, value.clone(), known).await)
        })
        .await?
        {
            Ok(r) => Some(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                lost = true;
                reaped = timed("beat", h.nodes.get(&inner.node))
                    .await?
                    .is_some_and(|v| &v[..] == b"reaped");
                None
            }
            Err(e) => return Err(unavailable("beat", e)),
        }
    } else {
        None
    };
    let revision = match revision {
        Some(r) => r,
        None => timed("beat", h.nodes.put(&inner.node, value)).await?,
    };
    inner.beat_revision.store(revision, Ordering::SeqCst);
    if reaped {
        tracing::warn!(
            "this node was taken for dead (cut off from nats for too long): announcing its members again"
        );
    } else if lost && known != 0 {
        tracing::warn!("nats lost this node's records: registering its members and sessions again");
    }

    Ok((lost, reaped))
}

/// The rest of a beat: retries failed unregisterings, registers this node's sessions again
/// when its records were `lost`, rewrites its members (announcing them again when it had
/// been `reaped`), and reaps dead nodes.
async fn upkeep(broker: &NatsBroker, lost: bool, reaped: bool) -> Result<(), BrokerError> {
    let inner = &broker.inner;
    let h = broker.handles().await?;
    inner
        .local_sessions
        .retry_orphans(|c, u| async move { broker.unregister(&c, &u).await })
        .await;

    // Sessions first: once a member's `join` is seen, its session counts again too.
    if lost {
        let sessions: Vec<(String, String)> = inner.local_sessions.snapshot();
        for (client, user) in sessions {
            broker.register(&client, &user).await?;
        }
    }
    let members: Vec<((String, String), ClientInfo)> = lock(&inner.local_presence)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for ((channel, _), info) in &members {
        broker.put_member(&h, channel, info).await?;
        if reaped {
            // The others were told this member left; it is still here.
            broker.announce(channel, "join", info).await?;
        }
    }
    reap(broker, &h).await
}

/// Claims every node whose beat is over (one claimer wins each), removes its members and
/// publishes a `leave` for each.
async fn reap(broker: &NatsBroker, h: &Handles) -> Result<(), BrokerError> {
    let inner = &broker.inner;
    let filter = format!("$KV.{}_nodes.>", inner.names);
    let nodes = broker
        .scan(&h.nodes_stream, filter, ScanEnd::LastPerSubject)
        .await?;
    let now = now_ms();
    let prefix = format!("$KV.{}_nodes.", inner.names);
    for n in nodes {
        if header(&n.headers, H_KV_OPERATION).is_some_and(|op| op != "PUT") {
            continue;
        }
        let Some(node) = n.subject.strip_prefix(&prefix) else {
            continue;
        };
        if node == inner.node {
            continue;
        }
        let Some(exp) = std::str::from_utf8(&n.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue; // already reaped
        };
        if exp >= now {
            continue;
        }
        // Its members first, each removed by compare-and-set on its revision so that only
        // one reaper announces its `leave`; the node is marked reaped only once all are gone,
        // so a round that fails half-way is finished by the next one.
        let filter = format!("$KV.{}_presence.*.{node}.*", inner.names);
        let members = broker
            .scan(&h.presence_stream, filter, ScanEnd::LastPerSubject)
            .await?;
        let key_prefix = format!("$KV.{}_presence.", inner.names);
        let mut left = 0;
        for m in members {
            if header(&m.headers, H_KV_OPERATION).is_some_and(|op| op != "PUT") {
                continue;
            }
            let Ok(info) = serde_json::from_slice::<ClientInfo>(&m.payload) else {
                continue;
            };
            let Some(key) = m.subject.strip_prefix(&key_prefix) else {
                continue;
            };
            let Some(channel) = key.split('.').next().and_then(untoken) else {
                continue;
            };
            let deleted = timed("reap", async {
                Ok::<_, String>(h.presence.delete_expect_revision(key, Some(m.seq)).await)
            })
            .await?;
            if deleted.is_err() {
                continue; // another reaper (or the node itself, alive after all) came first
            }
            broker.announce(&channel, "leave", &info).await?;
            left += 1;
        }
        // The mark tells the node, should it come back, that it was taken for dead; it fails
        // harmlessly if the node beat meanwhile or another reaper marked it.
        NatsBroker::cas(&h.nodes, node, Bytes::from_static(b"reaped"), Some(n.seq)).await?;
        tracing::info!(node, members = left, "reaped a node that stopped beating");
    }
    Ok(())
}

/// The inverse of [`token`].
fn untoken(t: &str) -> Option<String> {
    let mut out = Vec::with_capacity(t.len());
    let bytes = t.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = t.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_subject_safe_and_round_trip() {
        for s in ["conformance.user.ab12", "c-a", "n1_7", "é x*>", ""] {
            let t = token(s);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{t}"
            );
            if !s.is_empty() {
                assert_eq!(untoken(&t).as_deref(), Some(s));
            }
        }
        assert_ne!(token("a.b"), token("a=2Eb"));
    }
}
