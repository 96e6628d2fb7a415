//! Two publication streams on every connection at once — the broadcast channel and the
//! connection's own user channel — measured across several load processes (S8) and across
//! connections that come and go (the soak).
//!
//! Unlike [`crate::load`], where one process both receives and publishes in rate steps, the
//! receivers and the publisher here are separate processes driven by an orchestrator
//! ([`crate::cluster`], [`crate::soak`]): `herald-bench receive` holds connections (and churns
//! some when asked), `herald-bench publish` publishes both streams on a fixed schedule for a
//! fixed time. The orchestrator talks to a receiver over its stdin and stdout, one line each:
//!
//! - receiver → `{"connected":…}` ([`Ready`]) once every connection is up or has failed;
//! - `go <start_ns>` → publishing starts at that wall-clock instant (churn starts now);
//! - `stop` → churn stops (publishing has ended);
//! - `report <broadcasts> <unicasts>` → how many of each were scheduled; the receiver answers
//!   with one [`ReceiveReport`] line. Closing stdin ends the receiver.
//!
//! **Loss.** Publication `i` of a stream is due at `start + i/rate` and carries that instant and
//! `i` in its payload ([`crate::payload`]; the payload's `k` says which stream: 0 broadcast,
//! 1 unicast). Unicast `i` goes to user `u<i mod users>`. A connection's subscriptions are
//! acknowledged at a known instant (the v1 `welcome` carries the auto-subscribed user channel,
//! the `subscribe` reply the broadcast one); every publication due *after* that instant was
//! sent after it, so the connection must receive it. Per connection (per *incarnation*: a
//! churned connection reconnects as a new one) and per stream, the expected publications are
//! those due after the acknowledgement up to the last one scheduled — or, for an incarnation
//! that was closed before the end, up to the last one it received (what was in flight when it
//! closed cannot be demanded). Loss is expected minus received within that range, so a hole in
//! the middle of a churned connection's stream counts as well as a missing tail of one that
//! stayed. A publish request that failed shows up as loss too (the publisher reports its
//! errors separately).

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::dialect::{Dialect, Incoming, PusherApp};
use crate::payload::{self, Stamp};
use crate::procfs;
use crate::stats::{Latency, Recorder};
use crate::wire::{self, Client, Event};

/// The payload's `k` of a broadcast.
pub const BROADCAST: u32 = 0;
/// The payload's `k` of a unicast.
pub const UNICAST: u32 = 1;

/// When a stream's publications are due: number `i` at `start_ns + i * 1e9 / rate`
/// (wall-clock nanoseconds, so every process on the machine agrees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub start_ns: u64,
    /// Publications per second; 0 means the stream is off.
    pub rate: u64,
}

impl Schedule {
    pub fn due_ns(&self, seq: u64) -> u64 {
        self.start_ns + seq * 1_000_000_000 / self.rate.max(1)
    }

    /// The first sequence number due strictly after `t_ns`: a subscription acknowledged at
    /// `t_ns` must receive it and every later one.
    pub fn first_after(&self, t_ns: u64) -> u64 {
        if self.rate == 0 || t_ns < self.start_ns {
            return 0;
        }
        let s = (t_ns - self.start_ns) as u128 * u128::from(self.rate) / 1_000_000_000;
        let mut s = u64::try_from(s.min(u128::from(u64::MAX / 2))).unwrap_or(0);
        // The integer division in due_ns can round either way; settle on the exact one.
        while self.due_ns(s) <= t_ns {
            s += 1;
        }
        while s > 0 && self.due_ns(s - 1) > t_ns {
            s -= 1;
        }
        s
    }
}

/// How many numbers `s` with `s % stride == class` lie in `[from, to)`, `from` being one of them.
fn count_in_class(from: u64, to: u64, stride: u64) -> u64 {
    if to > from {
        (to - from - 1) / stride.max(1) + 1
    } else {
        0
    }
}

/// One incarnation's view of one stream: which sequence numbers it must see, and which it saw.
#[derive(Debug, Clone, Copy)]
pub struct Track {
    stride: u64,
    /// The first expected sequence number (in this connection's class).
    from: u64,
    /// Received numbers ≥ `from`, each newer than the one before.
    seen: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// Received numbers below `from`: in flight when the subscription was acknowledged.
    early: u64,
    reorders: u64,
}

impl Track {
    /// `stride` and `class`: the connection sees the numbers `s` with `s % stride == class`
    /// (broadcast: 1 and 0; unicast over `n` users: `n` and the user's index).
    /// `first_due` is [`Schedule::first_after`] of the acknowledgement.
    pub fn new(stride: u64, class: u64, first_due: u64) -> Self {
        let stride = stride.max(1);
        let class = class % stride;
        // The first number ≥ first_due in the class.
        let base = first_due - first_due % stride + class;
        let from = if base >= first_due {
            base
        } else {
            base + stride
        };
        Self {
            stride,
            from,
            seen: 0,
            first: None,
            last: None,
            early: 0,
            reorders: 0,
        }
    }

    /// Records a received number; returns `(gaps, reordered)` for the histogram recorder.
    pub fn observe(&mut self, seq: u64) -> (u64, bool) {
        if seq < self.from {
            self.early += 1;
            return (0, false);
        }
        match self.last {
            Some(last) if seq <= last => {
                self.reorders += 1;
                (0, true)
            }
            prev => {
                let after = prev.map_or(self.from, |l| l + self.stride);
                self.first.get_or_insert(seq);
                self.seen += 1;
                self.last = Some(seq);
                (seq.saturating_sub(after) / self.stride, false)
            }
        }
    }

    /// `(expected, lost)`. `scheduled`: how many the stream published, when this incarnation
    /// was still connected at the end; `None` for one closed before (expected up to the last
    /// one it received).
    pub fn settle(&self, scheduled: Option<u64>) -> (u64, u64) {
        let to = match scheduled {
            Some(n) => n,
            None => self.last.map_or(self.from, |l| l + 1),
        };
        let expected = count_in_class(self.from, to, self.stride);
        (expected, expected.saturating_sub(self.seen))
    }

    /// Where the lost ones were (they add up to [`Track::settle`]'s): before the first one
    /// received (the subscription did not take effect when acknowledged), between received
    /// ones (dropped on the way), after the last one received (not delivered by the end of
    /// the drain; only for an incarnation connected to the end).
    pub fn losses(&self, scheduled: Option<u64>) -> Losses {
        match (self.first, self.last) {
            (Some(first), Some(last)) => Losses {
                head: count_in_class(self.from, first, self.stride),
                middle: count_in_class(first, last + 1, self.stride).saturating_sub(self.seen),
                tail: scheduled.map_or(0, |n| count_in_class(last + self.stride, n, self.stride)),
            },
            _ => Losses {
                tail: scheduled.map_or(0, |n| count_in_class(self.from, n, self.stride)),
                ..Losses::default()
            },
        }
    }

    /// The sequence number after the last one received in range (0: none yet).
    fn next(&self) -> u64 {
        self.last.map_or(0, |l| l + 1)
    }
}

/// Lost publications by where they were missing (see [`Track::losses`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Losses {
    pub head: u64,
    pub middle: u64,
    pub tail: u64,
}

/// One stream's totals over the incarnations of one or more receivers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Every publication of this stream that arrived.
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    /// Arrived, but due before the subscription was acknowledged (not expected).
    pub early: u64,
    pub reorders: u64,
    /// Where the lost ones were missing.
    #[serde(default)]
    pub lost_at: Losses,
    /// Latency histogram as `(value µs, count)` pairs, so processes' histograms merge exactly.
    pub hist: Vec<(u64, u64)>,
}

impl Tally {
    fn add_track(&mut self, t: &Track, scheduled: Option<u64>) {
        let (expected, lost) = t.settle(scheduled);
        self.expected += expected;
        self.lost += lost;
        self.early += t.early;
        self.reorders += t.reorders;
        let l = t.losses(scheduled);
        self.lost_at.head += l.head;
        self.lost_at.middle += l.middle;
        self.lost_at.tail += l.tail;
    }

    /// Adds another process's tally.
    pub fn merge(&mut self, o: &Tally) {
        self.received += o.received;
        self.expected += o.expected;
        self.lost += o.lost;
        self.early += o.early;
        self.reorders += o.reorders;
        self.lost_at.head += o.lost_at.head;
        self.lost_at.middle += o.lost_at.middle;
        self.lost_at.tail += o.lost_at.tail;
        let mut h = self.histogram();
        let _ = h.add(o.histogram());
        self.hist = buckets(&h);
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for &(v, n) in &self.hist {
            h.saturating_record_n(v, n);
        }
        h
    }

    pub fn latency(&self) -> Latency {
        let h = self.histogram();
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    /// The node to connect to (host:port).
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// User ids are `u<offset + i>`; receivers of one run use disjoint ranges.
    #[arg(long, default_value_t = 0)]
    pub user_offset: usize,
    /// Users over all receivers of the run: unicast `i` goes to `u<i mod users>`.
    #[arg(long)]
    pub users: u64,
    #[arg(long, default_value = "bench.fanout")]
    pub channel: String,
    #[arg(long, default_value = "bench-secret")]
    pub jwt_secret: String,
    /// Broadcasts per second (the publisher's `--broadcast-rate`), to know which were due
    /// after a subscription.
    #[arg(long, default_value_t = 0)]
    pub broadcast_rate: u64,
    #[arg(long, default_value_t = 0)]
    pub unicast_rate: u64,
    /// Connections closed and reopened per second between `go` and `stop` (round-robin, so
    /// each lives `connections / churn` seconds).
    #[arg(long, default_value_t = 0)]
    pub churn_per_sec: usize,
    /// Loopback source addresses (127.0.0.1..) to spread connections over: each has its own
    /// ephemeral port range.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    #[arg(long, default_value_t = 120.0)]
    pub connect_timeout_secs: f64,
    /// On `report`, wait at most this long for every connected incarnation to have received
    /// the last publication owed to it (what is still missing then is lost).
    #[arg(long, default_value_t = 30.0)]
    pub max_drain_secs: f64,
}

/// The receiver's first line: the connect phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connected: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, u64>,
    pub connect_secs: f64,
}

/// The receiver's answer to `report`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiveReport {
    /// Connections open when `report` came.
    pub connected: u64,
    pub broadcast: Tally,
    pub unicast: Tally,
    /// Closed and reopened on purpose.
    pub churned: u64,
    /// Reopens (after churn or an unexpected end) that failed, each retried a second later.
    pub reconnect_failures: u64,
    /// Connections that ended without being asked to, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// This process's CPU time (utime + stime), seconds.
    pub cpu_secs: f64,
    /// How long `report` waited for the last deliveries.
    #[serde(default)]
    pub drain_secs: f64,
    /// Connected incarnations still missing their last publication when the wait ended.
    #[serde(default)]
    pub incomplete: u64,
}

/// One connection slot: what it is told through its [`Notify`], and where its current
/// incarnation is in each stream (so `report` can wait for the last deliveries).
struct Slot {
    wake: Notify,
    churn: AtomicBool,
    live: AtomicBool,
    /// Per stream: the first number owed, and the one after the last received (0: none).
    from: [AtomicU64; 2],
    next: [AtomicU64; 2],
}

impl Slot {
    /// Whether this slot owes nothing more: not connected, or it has received the last of
    /// `scheduled` owed to it in each stream (`user` receives unicasts `user mod users`).
    fn complete(&self, scheduled: (u64, u64), users: u64, user: u64) -> bool {
        if !self.live.load(Ordering::Relaxed) {
            return true;
        }
        let (b, u) = scheduled;
        let from = |k: usize| self.from[k].load(Ordering::Relaxed);
        let next = |k: usize| self.next[k].load(Ordering::Relaxed);
        let broadcast_done = b == 0 || from(0) >= b || next(0) >= b;
        let users = users.max(1);
        let class = user % users;
        let unicast_done = if u == 0 || class >= u {
            true
        } else {
            let last_owed = class + (u - 1 - class) / users * users;
            last_owed < from(1) || next(1) > last_owed
        };
        broadcast_done && unicast_done
    }
}

struct Shared {
    args: ReceiveArgs,
    /// The `go` instant (0: publishing has not started).
    start_ns: AtomicU64,
    /// Set by `report`: the scheduled counts, and that every slot must settle and end.
    scheduled: Mutex<Option<(u64, u64)>>,
    ending: AtomicBool,
    rec: Recorder,
    tallies: Mutex<[Tally; 2]>,
    slots: Vec<Slot>,
    connected: AtomicU64,
    settled: AtomicU64,
    ready: AtomicU64,
    failed: AtomicU64,
    churned: AtomicU64,
    reconnect_failures: AtomicU64,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

fn error_key(e: &wire::WsError) -> String {
    match e {
        wire::WsError::Io(io) => format!("io:{:?}", io.kind()),
        wire::WsError::Refused(s) => format!("http:{s}"),
        wire::WsError::Protocol(m) => format!("protocol:{m}"),
        wire::WsError::Eof => "eof".into(),
    }
}

/// `herald-bench receive`: holds the connections and answers the orchestrator (module docs).
pub async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    procfs::raise_nofile();
    let shared = Arc::new(Shared {
        slots: (0..args.connections)
            .map(|_| Slot {
                wake: Notify::new(),
                churn: AtomicBool::new(false),
                live: AtomicBool::new(false),
                from: [AtomicU64::new(0), AtomicU64::new(0)],
                next: [AtomicU64::new(0), AtomicU64::new(0)],
            })
            .collect(),
        args: args.clone(),
        start_ns: AtomicU64::new(0),
        scheduled: Mutex::new(None),
        ending: AtomicBool::new(false),
        rec: Recorder::new(2),
        tallies: Mutex::default(),
        connected: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        churned: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        connect_errors: Mutex::default(),
        disconnects: Mutex::default(),
    });
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(slot(i, shared.clone(), permit)));
    }
    let deadline = started + Duration::from_secs_f64(args.connect_timeout_secs);
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < args.connections as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = Ready {
        connected: shared.ready.load(Ordering::Relaxed) as usize,
        failed: args.connections - shared.ready.load(Ordering::Relaxed) as usize,
        errors: shared
            .connect_errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default(),
        connect_secs: started.elapsed().as_secs_f64(),
    };
    emit(&ready)?;

    // Commands from the orchestrator, read on a blocking thread.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut churner: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["go", start] => {
                shared.start_ns.store(start.parse()?, Ordering::Relaxed);
                if args.churn_per_sec > 0 {
                    churner = Some(tokio::spawn(churn(shared.clone())));
                }
            }
            ["stop"] => {
                if let Some(c) = churner.take() {
                    c.abort();
                }
            }
            ["report", b, u] => {
                if let Some(c) = churner.take() {
                    c.abort();
                }
                let scheduled: (u64, u64) = (b.parse()?, u.parse()?);
                *shared.scheduled.lock().unwrap_or_else(|e| e.into_inner()) = Some(scheduled);
                // Publishing is over: wait for what is still on its way, up to a limit.
                let waited = Instant::now();
                let until = waited + Duration::from_secs_f64(args.max_drain_secs);
                let incomplete = loop {
                    let missing = shared
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(i, s)| {
                            !s.complete(scheduled, args.users, (args.user_offset + i) as u64)
                        })
                        .count() as u64;
                    if missing == 0 || Instant::now() >= until {
                        break missing;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let drain_secs = waited.elapsed().as_secs_f64();
                let open = shared.connected.load(Ordering::Relaxed);
                shared.ending.store(true, Ordering::Relaxed);
                for s in &shared.slots {
                    s.wake.notify_one();
                }
                // Every open incarnation settles itself; give them a moment.
                let until = Instant::now() + Duration::from_secs(10);
                while shared.settled.load(Ordering::Relaxed) < open && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let mut t = shared
                    .tallies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for (k, tally) in t.iter_mut().enumerate() {
                    let st = shared.rec.merged(k);
                    tally.received = st.received;
                    tally.hist = buckets(&st.hist);
                }
                let [broadcast, unicast] = t;
                emit(&ReceiveReport {
                    connected: open,
                    broadcast,
                    unicast,
                    churned: shared.churned.load(Ordering::Relaxed),
                    reconnect_failures: shared.reconnect_failures.load(Ordering::Relaxed),
                    disconnects: shared
                        .disconnects
                        .lock()
                        .map(|m| m.clone())
                        .unwrap_or_default(),
                    cpu_secs: procfs::sample(0).map_or(0.0, |s| s.cpu_us() / 1e6),
                    drain_secs,
                    incomplete,
                })?;
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn emit(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(v)?)?;
    out.flush()?;
    Ok(())
}

/// Every second, asks the next `churn_per_sec` slots (round-robin) to close and reopen.
async fn churn(shared: Arc<Shared>) {
    let per = shared.args.churn_per_sec;
    let n = shared.slots.len();
    if n == 0 {
        return;
    }
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for _ in 0..per.min(n) {
            let s = &shared.slots[next];
            s.churn.store(true, Ordering::Relaxed);
            s.wake.notify_one();
            next = (next + 1) % n;
        }
    }
}

/// One connection slot: open, receive until churned or ended, settle, reopen.
async fn slot(i: usize, shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) {
    let args = &shared.args;
    let user = args.user_offset + i;
    let me = &shared.slots[i];
    let mut first = Some(permit);
    loop {
        let opened = tokio::time::timeout(
            Duration::from_secs_f64(args.connect_timeout_secs),
            open(args, i, user),
        )
        .await
        .unwrap_or_else(|_| Err(wire::WsError::Protocol("connect timeout")));
        let mut client = match opened {
            Ok(c) => c,
            Err(e) => {
                if first.take().is_some() {
                    // The initial connect: counted by the connect phase, not retried.
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    bump(&shared.connect_errors, error_key(&e));
                    return;
                }
                shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                bump(&shared.disconnects, format!("reconnect:{}", error_key(&e)));
                if shared.ending.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acked = payload::unix_ns();
        if first.take().is_some() {
            shared.ready.fetch_add(1, Ordering::Relaxed);
        }
        let start = shared.start_ns.load(Ordering::Relaxed);
        let first_due = |rate: u64| {
            if start == 0 {
                0
            } else {
                Schedule {
                    start_ns: start,
                    rate,
                }
                .first_after(acked)
            }
        };
        let mut tracks = [
            Track::new(1, 0, first_due(args.broadcast_rate)),
            Track::new(args.users, user as u64, first_due(args.unicast_rate)),
        ];
        for (k, t) in tracks.iter().enumerate() {
            me.from[k].store(t.from, Ordering::Relaxed);
            me.next[k].store(0, Ordering::Relaxed);
        }
        me.live.store(true, Ordering::Relaxed);
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let ended = receive_until(i, &shared, me, &mut client, &mut tracks).await;
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        me.live.store(false, Ordering::Relaxed);
        let ending = shared.ending.load(Ordering::Relaxed);
        let scheduled = if ending && ended.is_none() {
            *shared.scheduled.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            None
        };
        {
            let mut t = shared.tallies.lock().unwrap_or_else(|e| e.into_inner());
            t[0].add_track(&tracks[0], scheduled.map(|s| s.0));
            t[1].add_track(&tracks[1], scheduled.map(|s| s.1));
        }
        match ended {
            // Told to end: settled as connected to the end.
            None if ending => {
                shared.settled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Churned: close cleanly (we close first, so TIME_WAIT stays on our side).
            None => {
                shared.churned.fetch_add(1, Ordering::Relaxed);
                let _ = client.send(0x8, &1000u16.to_be_bytes()).await;
                drop(client);
            }
            Some(why) => {
                bump(&shared.disconnects, why);
                if ending {
                    shared.settled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens one connection: upgrade, `welcome` (the user channel is auto-subscribed), then the
/// broadcast channel's `subscribe` and its reply.
async fn open(args: &ReceiveArgs, i: usize, user: usize) -> Result<Client, wire::WsError> {
    let user = format!("u{user}");
    let token = herald_core::identity::mint_hs256(
        &args.jwt_secret,
        &user,
        &[],
        "roles",
        Duration::from_secs(24 * 3600),
    )
    .map_err(|_| wire::WsError::Protocol("cannot mint a token"))?;
    let d = Dialect::Herald;
    let (path, headers) = d.request(&user, &token, Some(&args.channel), &PusherApp::default());
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut c = Client::connect(
        wire::source_addr(i, args.sources),
        args.server,
        &path,
        &headers,
    )
    .await?;
    // Herald auto-subscribes the user channel: no user channel to name here.
    d.handshake(&mut c, Some(&args.channel), "", &PusherApp::default())
        .await?;
    Ok(c)
}

/// Receives until this slot is woken (`None`: churn or end) or the connection ends
/// (`Some(reason)`).
async fn receive_until(
    i: usize,
    shared: &Shared,
    me: &Slot,
    client: &mut Client,
    tracks: &mut [Track; 2],
) -> Option<String> {
    // Registered once and re-armed after each wake-up, not once per frame; a wake-up that
    // came before the first poll is kept as Notify's permit.
    let mut woken = pin!(me.wake.notified());
    loop {
        if shared.ending.load(Ordering::Relaxed) || me.churn.swap(false, Ordering::Relaxed) {
            return None;
        }
        let reply: Option<(u8, &'static str)> = tokio::select! {
            _ = woken.as_mut() => {
                woken.set(me.wake.notified());
                continue;
            }
            ev = client.next() => match ev {
                Ok(Event::Text(t)) => match Dialect::Herald.classify(t) {
                    Incoming::Publication => {
                        if let Some(stamp) = payload::parse(t) {
                            record(i, shared, me, tracks, stamp);
                        }
                        None
                    }
                    Incoming::Ping(pong) => Some((0x1, pong)),
                    Incoming::Other => None,
                },
                Ok(Event::Ping(_)) => Some((0xA, "")),
                Ok(Event::Binary(_)) => None,
                Ok(Event::Close(code)) => return Some(format!("close:{}", code.unwrap_or(1005))),
                Err(e) => return Some(error_key(&e)),
            },
        };
        if let Some((op, text)) = reply
            && let Err(e) = client.send(op, text.as_bytes()).await
        {
            return Some(error_key(&e));
        }
    }
}

fn record(i: usize, shared: &Shared, me: &Slot, tracks: &mut [Track; 2], stamp: Stamp) {
    let k = stamp.step as usize;
    let Some(track) = tracks.get_mut(k) else {
        return;
    };
    let (gaps, reorder) = track.observe(stamp.seq);
    me.next[k].store(track.next(), Ordering::Relaxed);
    let lat_us = payload::unix_ns().saturating_sub(stamp.intended_ns) / 1000;
    shared.rec.record(i, k, lat_us, gaps, reorder, 0);
}

#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The node whose HTTP API takes the publications.
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    #[arg(long, default_value = "bench.fanout")]
    pub channel: String,
    /// Prefix of the per-user channels: `<prefix>.u<i>`.
    #[arg(long, default_value = "bench.user")]
    pub user_channel: String,
    /// Wall-clock instant (Unix ns) publication 0 of each stream is due.
    #[arg(long)]
    pub start_ns: u64,
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 1)]
    pub broadcast_rate: u64,
    #[arg(long, default_value_t = 0)]
    pub unicast_rate: u64,
    /// Unicast `i` goes to `u<i mod users>`.
    #[arg(long)]
    pub users: u64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
}

/// What the publisher did, per stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Published {
    pub scheduled: u64,
    pub accepted: u64,
    pub errors: u64,
    /// Longest a publication left after it was due (the publisher falling behind), ms.
    pub max_behind_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishReport {
    pub broadcast: Published,
    pub unicast: Published,
}

/// `herald-bench publish`: both streams, open-loop, one request in flight per stream (so the
/// order requests leave in is the order the server assigns offsets); prints a
/// [`PublishReport`] line when both are done.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .timeout(Duration::from_secs(30))
        .build()?;
    let b = tokio::spawn(stream(args.clone(), http.clone(), BROADCAST));
    let u = tokio::spawn(stream(args.clone(), http, UNICAST));
    let report = PublishReport {
        broadcast: b.await?,
        unicast: u.await?,
    };
    emit(&report)
}

async fn stream(args: PublishArgs, http: reqwest::Client, kind: u32) -> Published {
    let rate = if kind == BROADCAST {
        args.broadcast_rate
    } else {
        args.unicast_rate
    };
    let mut out = Published::default();
    if rate == 0 {
        return out;
    }
    let sched = Schedule {
        start_ns: args.start_ns,
        rate,
    };
    let n = (rate as f64 * args.secs).round() as u64;
    out.scheduled = n;
    // Wall-clock due times, slept on with the monotonic clock.
    let now_ns = payload::unix_ns();
    let base = Instant::now();
    let at = |ns: u64| base + Duration::from_nanos(ns.saturating_sub(now_ns));
    let url = if kind == BROADCAST {
        format!("http://{}/v1/publish", args.server)
    } else {
        format!("http://{}/v1/publish/batch", args.server)
    };
    let mut i = 0u64;
    while i < n {
        tokio::time::sleep_until(at(sched.due_ns(i))).await;
        let now = payload::unix_ns();
        out.max_behind_ms = out
            .max_behind_ms
            .max(now.saturating_sub(sched.due_ns(i)) as f64 / 1e6);
        // Everything due by now leaves in this request, stamped with when it was due.
        let mut items = Vec::new();
        while i < n && sched.due_ns(i) <= now && items.len() < 1000 {
            let data = payload::build(
                Stamp {
                    seq: i,
                    intended_ns: sched.due_ns(i),
                    step: kind,
                },
                args.payload_bytes,
            );
            let channel = if kind == BROADCAST {
                args.channel.clone()
            } else {
                format!("{}.u{}", args.user_channel, i % args.users.max(1))
            };
            items.push(format!(r#"{{"channel":"{channel}","data":{data}}}"#));
            i += 1;
            if kind == BROADCAST {
                // One publication per request: `/v1/publish`.
                break;
            }
        }
        if items.is_empty() {
            // Woken a hair before the wall clock reached the due time: try again.
            continue;
        }
        let count = items.len() as u64;
        let body = if kind == BROADCAST {
            items.pop().unwrap_or_default()
        } else {
            format!(r#"{{"publications":[{}]}}"#, items.join(","))
        };
        let res = http
            .post(&url)
            .bearer_auth(&args.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                // A batch answers per item; count the items that failed.
                let text = r.text().await.unwrap_or_default();
                let bad = text.matches(r#""error""#).count() as u64;
                out.accepted += count.saturating_sub(bad);
                out.errors += bad.min(count);
            }
            _ => out.errors += count,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_after_is_the_first_publication_due_after_an_instant() {
        let s = Schedule {
            start_ns: 1_000,
            rate: 3,
        };
        // Due at 1000, 1000+333333333, 1000+666666666, 1000+1e9...
        assert_eq!(s.first_after(0), 0);
        assert_eq!(s.first_after(999), 0);
        assert_eq!(s.first_after(1_000), 1);
        assert_eq!(s.first_after(1_000 + 333_333_332), 1);
        assert_eq!(s.first_after(1_000 + 333_333_333), 2);
        assert_eq!(s.first_after(1_000 + 1_000_000_000), 4);
        for t in (0..5_000_000_000u64).step_by(7_777_777) {
            let f = s.first_after(t);
            assert!(s.due_ns(f) > t);
            assert!(f == 0 || s.due_ns(f - 1) <= t, "t {t} f {f}");
        }
        assert_eq!(
            Schedule {
                start_ns: 5,
                rate: 0
            }
            .first_after(100),
            0
        );
    }

    #[test]
    fn a_connection_that_stays_must_see_everything_after_its_ack() {
        // Broadcast: acknowledged before number 5 was due.
        let mut t = Track::new(1, 0, 5);
        // 4 was in flight: received, not expected.
        assert_eq!(t.observe(4), (0, false));
        assert_eq!(t.observe(5), (0, false));
        assert_eq!(t.observe(6), (0, false));
        assert_eq!(t.observe(9), (2, false));
        assert_eq!(t.observe(8), (0, true));
        // 10 were scheduled: 5..=9 expected, 7 and 8 (late, not counted) missing.
        assert_eq!(t.settle(Some(10)), (5, 2));
        // 12 scheduled: 10 and 11 missing too.
        assert_eq!(t.settle(Some(12)), (7, 4));
        // Closed early: only up to its last (9) is owed.
        assert_eq!(t.settle(None), (5, 2));
        assert_eq!((t.early, t.reorders), (1, 1));
        // 7 and 8 in the middle; with 12 scheduled, 10 and 11 at the tail.
        let at = |head, middle, tail| Losses { head, middle, tail };
        assert_eq!(t.losses(Some(12)), at(0, 2, 2));
        assert_eq!(t.losses(None), at(0, 2, 0));
    }

    #[test]
    fn a_missing_head_counts_as_loss() {
        let mut t = Track::new(1, 0, 3);
        t.observe(5);
        assert_eq!(t.settle(Some(6)), (3, 2));
        let at = |head, middle, tail| Losses { head, middle, tail };
        assert_eq!(t.losses(Some(6)), at(2, 0, 0));
        assert_eq!(Track::new(1, 0, 3).losses(Some(6)), at(0, 0, 3));
        // Nothing received and closed before the end: nothing can be demanded.
        assert_eq!(Track::new(1, 0, 3).settle(None), (0, 0));
        // Nothing received but connected to the end: all of it is lost.
        assert_eq!(Track::new(1, 0, 3).settle(Some(6)), (3, 3));
    }

    #[test]
    fn unicast_tracks_only_the_users_own_numbers() {
        // 10 users, user 3: numbers 3, 13, 23, ...; acknowledged before 14 was due.
        let mut t = Track::new(10, 3, 14);
        assert_eq!(t.from, 23);
        assert_eq!(t.observe(13), (0, false));
        assert_eq!(t.observe(23), (0, false));
        assert_eq!(t.observe(53), (2, false));
        // 60 scheduled: 23, 33, 43, 53 owed; 33 and 43 missing.
        assert_eq!(t.settle(Some(60)), (4, 2));
        assert_eq!(t.settle(Some(54)), (4, 2));
        assert_eq!(
            t.losses(Some(80)),
            Losses {
                head: 0,
                middle: 2,
                tail: 2
            }
        );
        // Class equal to the first due: that one counts.
        assert_eq!(Track::new(10, 4, 14).from, 14);
        assert_eq!(Track::new(10, 3, 0).from, 3);
    }

    #[test]
    fn a_slot_is_complete_once_it_has_the_last_publication_owed_to_it() {
        let slot = Slot {
            wake: Notify::new(),
            churn: AtomicBool::new(false),
            live: AtomicBool::new(true),
            from: [AtomicU64::new(0), AtomicU64::new(3)],
            next: [AtomicU64::new(10), AtomicU64::new(44)],
        };
        // 10 broadcasts (0..=9 received); unicasts to user 3 of 10: 3, 13, …, 43 received.
        assert!(slot.complete((10, 50), 10, 3));
        assert!(!slot.complete((11, 50), 10, 3));
        // 53 is owed as well once 54 unicasts were scheduled.
        assert!(!slot.complete((10, 54), 10, 3));
        // User 5's class: 45 owed to it, not to user 3.
        assert!(slot.complete((10, 46), 10, 3));
        // Subscribed after the last one was due: nothing owed.
        slot.from[1].store(63, Ordering::Relaxed);
        assert!(slot.complete((10, 54), 10, 3));
        slot.live.store(false, Ordering::Relaxed);
        assert!(slot.complete((99, 99), 10, 3));
    }

    #[test]
    fn tallies_merge_histograms_exactly() {
        let mut a = Tally::default();
        let mut h = new_hist();
        for v in 1..=1000 {
            h.record(v * 10).unwrap();
        }
        a.hist = buckets(&h);
        a.received = 1000;
        let mut b = Tally {
            received: 1000,
            ..Tally::default()
        };
        let mut h2 = new_hist();
        for v in 1..=1000 {
            h2.record(v * 10 + 10_000).unwrap();
        }
        b.hist = buckets(&h2);
        a.merge(&b);
        assert_eq!(a.received, 2000);
        let l = a.latency();
        // Median of 10..=10000 ∪ 10010..=20000 (µs): ~10 ms.
        assert!((l.p50_ms - 10.0).abs() < 0.05, "{l:?}");
        assert!((l.max_ms - 20.0).abs() < 0.05, "{l:?}");
    }
}
