//! One load run: open the connections, publish in rising rate steps, drain, report.
//!
//! The publisher is open-loop: message `i` of a step at rate `r` is due at `start + i/r` and
//! carries that instant as its stamp, whether or not the previous request has returned. Each
//! step is followed by a drain window so that its deliveries are counted against it; a step
//! fails when its p99 passes the limit or any expected delivery is missing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::dialect::{Dialect, Incoming};
use crate::payload::{self, Stamp};
use crate::procfs;
use crate::sse::SseClient;
use crate::stats::{Latency, Recorder, SeqCheck};
use crate::wire::{self, Client, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Connect, hold, measure memory; no publications.
    Idle,
    /// One channel (room) that every connection receives.
    Broadcast,
    /// One message per publication to one user's own channel (room), round-robin over users.
    Unicast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Publisher {
    /// Herald's server API: `POST /v1/publish` and `/v1/publish/batch` with the API key.
    Herald,
    /// The peers' trigger: `POST /publish` (payload as body) and `POST /publish/batch`
    /// (`[{"user","data"}]`).
    Peer,
    /// Pusher's HTTP API (Sockudo), signed with the app secret: `POST /apps/<id>/events`
    /// (`{"name","channels","data"}`, data a JSON string) for broadcast, `POST
    /// /apps/<id>/batch_events` (`{"batch":[{"channel","name","data"}]}`) for unicast to the
    /// users' private channels.
    Pusher,
}

/// The event name of every publication on the Pusher dialect.
const PUSHER_EVENT: &str = "bench";

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct LoadArgs {
    /// Gateway address (host:port of the WebSocket endpoint and of the publish trigger).
    #[arg(long)]
    pub server: SocketAddr,
    /// Where publications are posted, when not `--server`: another node sharing the broker,
    /// so every delivery crosses it (Redis, Redis Cluster). Latency is still publish → frame.
    #[arg(long)]
    pub publish_server: Option<SocketAddr>,
    #[arg(long, value_enum, default_value = "herald")]
    pub dialect: Dialect,
    #[arg(long, value_enum, default_value = "herald")]
    pub publisher: Publisher,
    #[arg(long, value_enum, default_value = "broadcast")]
    pub mode: Mode,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// User ids are `u<offset + i>`; several load processes use disjoint ranges.
    #[arg(long, default_value_t = 0)]
    pub user_offset: usize,
    /// Broadcast channel (Herald) or room name (peers).
    #[arg(long, default_value = "bench.fanout")]
    pub channel: String,
    /// Prefix of the per-user channels (Herald): `<prefix>.<user>`.
    #[arg(long, default_value = "bench.user")]
    pub user_channel: String,
    #[arg(long, default_value = "bench-secret")]
    pub jwt_secret: String,
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// The Pusher app (dialect and publisher `pusher`).
    #[command(flatten)]
    pub pusher: crate::dialect::PusherApp,
    /// Publications per second, one step each (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    pub rates: Vec<u64>,
    #[arg(long, default_value_t = 3.0)]
    pub step_secs: f64,
    /// Longest wait after a step for its last deliveries.
    #[arg(long, default_value_t = 2.0)]
    pub drain_secs: f64,
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// What fills the payload: `padded` (a run of `x`) or `json` (realistic records, for
    /// compression runs).
    #[arg(long, value_enum, default_value = "padded")]
    #[serde(default)]
    pub payload_kind: payload::Kind,
    /// Offer `permessage-deflate` (RFC 7692) on every WebSocket, as a browser does
    /// ([`wire::DEFLATE_OFFER`]); the report counts the connections whose server accepted.
    #[arg(long)]
    #[serde(default)]
    pub permessage_deflate: bool,
    /// Fraction of connections that stop reading once publishing starts (slow consumers).
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,
    /// A step whose p99 exceeds this fails (and ends the run unless --keep-going).
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    #[arg(long)]
    pub keep_going: bool,
    /// Server processes to watch (CPU and RSS are summed).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Publish requests in flight at once. 1 keeps sequence order equal to the order the server
    /// assigns offsets, so a reorder seen by a receiver is the gateway's; a request that has to
    /// wait still carries its intended time, so the wait counts as latency.
    #[arg(long, default_value_t = 1)]
    pub publish_concurrency: usize,
    /// How many loopback source addresses (127.0.0.1..) to spread connections over.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// After connecting, wait this long before the idle memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// Give up on connections not ready after this long.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout_secs: f64,
    /// Print progress on stderr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub progress: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub dialect: String,
    pub mode: String,
    pub connections: usize,
    pub connected: usize,
    pub connect_failed: usize,
    pub connect_errors: BTreeMap<String, u64>,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    /// Server CPU spent per accepted connection during the connect phase.
    pub server_cpu_us_per_connect: f64,
    pub server_rss_start_kb: u64,
    pub server_rss_idle_kb: u64,
    pub kb_per_connection: f64,
    /// Connections whose server accepted `permessage-deflate` (with `--permessage-deflate`).
    #[serde(default)]
    pub deflate_negotiated: usize,
    /// Server RSS once the last step has drained and the connections are idle again: what
    /// traffic left behind (buffers kept, compression state).
    #[serde(default)]
    pub server_rss_after_kb: u64,
    /// `server_rss_after_kb` over the connect-phase baseline, per connection.
    #[serde(default)]
    pub kb_per_connection_after: f64,
    pub steps: Vec<StepReport>,
    /// Connections that ended before the run did, by reason (`close:<code>`, `eof`, `io`).
    pub disconnects: BTreeMap<String, u64>,
    pub fd_limit: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepReport {
    pub rate: u64,
    pub payload_bytes: usize,
    pub secs: f64,
    pub sent: u64,
    pub accepted: u64,
    pub publish_errors: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub reorders: u64,
    pub deliveries_per_sec: f64,
    pub server_cpu_pct: f64,
    pub cpu_us_per_delivery: f64,
    pub server_rss_kb: u64,
    pub client_cpu_pct: f64,
    /// WebSocket frame bytes (header and payload as received, compressed or not) per
    /// publication delivered; 0 for SSE.
    #[serde(default)]
    pub wire_bytes_per_delivery: f64,
    pub latency: Latency,
    pub healthy_disconnects: u64,
    pub ok: bool,
}

/// State shared by the connection tasks and the publisher.
struct Shared {
    args: LoadArgs,
    rec: Recorder,
    ready: AtomicU64,
    failed: AtomicU64,
    deflate: AtomicU64,
    healthy_gone: AtomicU64,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<String, u64>>,
    connect_hist: Mutex<Histogram<u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

fn bump_by(map: &Mutex<BTreeMap<String, u64>>, key: &str, n: u64) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_string())
        .or_default() += n;
}

fn progress(args: &LoadArgs, msg: std::fmt::Arguments<'_>) {
    if args.progress {
        eprintln!("[herald-bench] {msg}");
    }
}

/// The connections of a finished run; they close when this is dropped.
pub struct Held(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs one load and returns its report, with the connections still open.
pub async fn run(args: LoadArgs) -> anyhow::Result<(Report, Held)> {
    let fd_limit = procfs::raise_nofile();
    if args.connections as u64 + 64 > fd_limit {
        progress(
            &args,
            format_args!(
                "warning: {} connections but only {fd_limit} file descriptors: one load process \
                 cannot go past the hard limit; use several (--user-offset)",
                args.connections
            ),
        );
    }
    let steps = if args.mode == Mode::Idle {
        0
    } else {
        args.rates.len()
    };
    let shared = Arc::new(Shared {
        rec: Recorder::new(steps),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        deflate: AtomicU64::new(0),
        healthy_gone: AtomicU64::new(0),
        connect_errors: Mutex::default(),
        disconnects: Mutex::default(),
        connect_hist: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        args: args.clone(),
    });
    let mut report = Report {
        dialect: format!("{:?}", args.dialect).to_lowercase(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        connections: args.connections,
        fd_limit,
        ..Report::default()
    };

    // Connect phase.
    let before = procfs::sample_all(&args.server_pids);
    report.server_rss_start_kb = before.rss_kb;
    let (go_tx, go_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let slow_every = if args.slow_fraction > 0.0 {
        (1.0 / args.slow_fraction).round().max(1.0) as usize
    } else {
        0
    };
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let slow = slow_every > 0 && i % slow_every == slow_every - 1;
        let permit = gate.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(connection(
            i,
            slow,
            shared.clone(),
            permit,
            go_rx.clone(),
        )));
        if i % 2000 == 1999 {
            progress(
                &args,
                format_args!(
                    "connecting: {} ready, {} failed of {}",
                    shared.ready.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    args.connections
                ),
            );
        }
    }
    // Wait for every connection to be ready or failed.
    let deadline = started + Duration::from_secs_f64(args.connect_timeout_secs);
    loop {
        let done = shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.connections as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let after = procfs::sample_all(&args.server_pids);
    report.connected = shared.ready.load(Ordering::Relaxed) as usize;
    report.connect_failed = args.connections - report.connected;
    let unfinished =
        (report.connect_failed as u64).saturating_sub(shared.failed.load(Ordering::Relaxed));
    if unfinished > 0 {
        bump_by(
            &shared.connect_errors,
            "not ready by --connect-timeout-secs",
            unfinished,
        );
    }
    report.connect_errors = shared
        .connect_errors
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    report.connect_secs = connect_secs;
    report.connects_per_sec = report.connected as f64 / connect_secs.max(1e-9);
    {
        let h = shared
            .connect_hist
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        report.connect_p50_ms = h.value_at_quantile(0.5) as f64 / 1000.0;
        report.connect_p99_ms = h.value_at_quantile(0.99) as f64 / 1000.0;
    }
    if report.connected > 0 && !args.server_pids.is_empty() {
        report.server_cpu_us_per_connect =
            (after.cpu_us() - before.cpu_us()) / report.connected as f64;
    }
    progress(
        &args,
        format_args!(
            "connected {} of {} in {connect_secs:.1}s ({:.0}/s), {} failed {:?}",
            report.connected,
            args.connections,
            report.connects_per_sec,
            report.connect_failed,
            report.connect_errors
        ),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let idle = procfs::sample_all(&args.server_pids);
    report.server_rss_idle_kb = idle.rss_kb;
    if report.connected > 0 && !args.server_pids.is_empty() {
        report.kb_per_connection =
            (idle.rss_kb as f64 - before.rss_kb as f64) / report.connected as f64;
        progress(
            &args,
            format_args!(
                "server RSS {} KB -> {} KB: {:.2} KB per connection",
                before.rss_kb, idle.rss_kb, report.kb_per_connection
            ),
        );
    }

    if args.mode != Mode::Idle {
        let _ = go_tx.send(true);
        // The slow ones stop reading by design; only the others are expected to receive.
        let slow_count = report.connected.checked_div(slow_every).unwrap_or(0);
        let healthy = (report.connected - slow_count.min(report.connected)) as u64;
        report.steps = publish_steps(&shared, healthy).await;
        // Idle again: what did the traffic leave behind in the server?
        tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
        let after = procfs::sample_all(&args.server_pids);
        report.server_rss_after_kb = after.rss_kb;
        if report.connected > 0 && !args.server_pids.is_empty() {
            report.kb_per_connection_after =
                (after.rss_kb as f64 - before.rss_kb as f64) / report.connected as f64;
        }
    }
    report.deflate_negotiated = shared.deflate.load(Ordering::Relaxed) as usize;
    report.disconnects = shared
        .disconnects
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    Ok((report, Held(tasks)))
}

/// One connection: connect, handshake, then receive until aborted.
async fn connection(
    i: usize,
    slow: bool,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    go: watch::Receiver<bool>,
) {
    let args = &shared.args;
    let user = format!("u{}", args.user_offset + i);
    let t0 = Instant::now();
    let opened = async {
        let token = herald_core::identity::mint_hs256(
            &args.jwt_secret,
            &user,
            &[],
            "roles",
            Duration::from_secs(3600),
        )
        .map_err(|_| wire::WsError::Protocol("cannot mint a token"))?;
        let subscribe = (args.mode == Mode::Broadcast
            && matches!(
                args.dialect,
                Dialect::Herald | Dialect::Sse | Dialect::HeraldSocketio | Dialect::Pusher
            ))
        .then_some(args.channel.as_str());
        let (path, mut headers) = args.dialect.request(&user, &token, subscribe, &args.pusher);
        if args.permessage_deflate && args.dialect != Dialect::Sse {
            headers.push((
                "Sec-WebSocket-Extensions".into(),
                wire::DEFLATE_OFFER.into(),
            ));
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let source = wire::source_addr(i, args.sources);
        if args.dialect == Dialect::Sse {
            let mut c = SseClient::connect(source, args.server, &path, &headers).await?;
            crate::dialect::sse_handshake(&mut c, subscribe).await?;
            Ok::<_, wire::WsError>(Conn::Sse(c))
        } else {
            let mut c = Client::connect(source, args.server, &path, &headers).await?;
            if c.deflate() {
                shared.deflate.fetch_add(1, Ordering::Relaxed);
            }
            let user_channel = crate::dialect::PusherApp::user_channel(&args.user_channel, &user);
            args.dialect
                .handshake(&mut c, subscribe, &user_channel, &args.pusher)
                .await?;
            Ok(Conn::Ws(c))
        }
    };
    let timeout = Duration::from_secs_f64(args.connect_timeout_secs);
    let conn = match tokio::time::timeout(timeout, opened).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            bump(&shared.connect_errors, error_key(&e));
            return;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            bump(&shared.connect_errors, "timeout".into());
            return;
        }
    };
    let _ = shared
        .connect_hist
        .lock()
        .map(|mut h| h.saturating_record(t0.elapsed().as_micros() as u64));
    shared.ready.fetch_add(1, Ordering::Relaxed);
    drop(permit);

    let stride = if args.mode == Mode::Unicast {
        args.connections as u64
    } else {
        1
    };
    let seq = SeqCheck::new(stride);
    match conn {
        Conn::Ws(client) => receive_ws(i, slow, &shared, client, go, seq).await,
        Conn::Sse(client) => receive_sse(i, slow, &shared, client, go, seq).await,
    }
}

/// An open connection of either kind.
enum Conn {
    Ws(Client),
    Sse(SseClient),
}

/// Records one received publication: latency from its intended time, its sequence number, and
/// the bytes it took on the wire.
fn record(shared: &Shared, i: usize, seq: &mut SeqCheck, frame: &[u8], wire_bytes: usize) {
    if let Some(stamp) = payload::parse(frame) {
        let now = payload::unix_ns();
        let (gaps, reorder) = seq.observe(stamp.seq);
        let lat_us = now.saturating_sub(stamp.intended_ns) / 1000;
        shared.rec.record(
            i,
            stamp.step as usize,
            lat_us,
            gaps,
            reorder,
            wire_bytes as u64,
        );
    }
}

/// Receives on a WebSocket until it ends, answering keep-alives; a slow one stops reading
/// when publishing starts.
async fn receive_ws(
    i: usize,
    slow: bool,
    shared: &Shared,
    mut client: Client,
    mut go: watch::Receiver<bool>,
    mut seq: SeqCheck,
) {
    let args = &shared.args;
    if slow {
        // Keep answering keep-alives until publishing starts, then never read again: the
        // server sees a consumer whose receive window fills and stays full.
        loop {
            let action = tokio::select! {
                _ = go.wait_for(|g| *g) => break,
                ev = client.next() => idle_action(ev, args.dialect),
            };
            let sent = match action {
                Ok(Some((op, text))) => client
                    .send(op, text.as_bytes())
                    .await
                    .map_err(|e| error_key(&e)),
                Ok(None) => Ok(()),
                Err(why) => Err(why),
            };
            if let Err(why) = sent {
                bump(&shared.disconnects, format!("slow-before-go:{why}"));
                return;
            }
        }
        client.stall().await;
        return;
    }

    let why = loop {
        let reply: Option<(u8, &'static str)> = match client.next_sized().await {
            Ok((Event::Text(t), wire_bytes)) => match args.dialect.classify(t) {
                Incoming::Publication => {
                    record(shared, i, &mut seq, t, wire_bytes);
                    None
                }
                Incoming::Ping(pong) => Some((0x1, pong)),
                Incoming::Other => None,
            },
            Ok((Event::Ping(_), _)) => Some((0xA, "")),
            Ok((Event::Binary(_), _)) => None,
            Ok((Event::Close(code), _)) => break format!("close:{}", code.unwrap_or(1005)),
            Err(e) => break error_key(&e),
        };
        if let Some((op, text)) = reply
            && let Err(e) = client.send(op, text.as_bytes()).await
        {
            break error_key(&e);
        }
    };
    shared.healthy_gone.fetch_add(1, Ordering::Relaxed);
    bump(&shared.disconnects, why);
}

/// Receives on an SSE stream until it ends. Nothing is ever sent back: keep-alives are
/// comments the parser skips. A slow one stops reading when publishing starts.
async fn receive_sse(
    i: usize,
    slow: bool,
    shared: &Shared,
    mut client: SseClient,
    mut go: watch::Receiver<bool>,
    mut seq: SeqCheck,
) {
    if slow {
        loop {
            let ended = tokio::select! {
                _ = go.wait_for(|g| *g) => break,
                ev = client.next() => ev.err().map(|e| error_key(&e)),
            };
            if let Some(why) = ended {
                bump(&shared.disconnects, format!("slow-before-go:{why}"));
                return;
            }
        }
        client.stall().await;
        return;
    }
    let why = loop {
        match client.next().await {
            Ok(ev) if ev.kind == b"pub" => record(shared, i, &mut seq, ev.data, 0),
            // The server's goodbye names its code: `{"type":"disconnect","code":4008,…}`.
            Ok(ev) if ev.kind == b"disconnect" => {
                let code = crate::wire::find(ev.data, br#""code":"#)
                    .map(|at| &ev.data[at + 7..])
                    .map(|rest| {
                        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                        String::from_utf8_lossy(&rest[..n]).into_owned()
                    })
                    .unwrap_or_default();
                break format!("disconnect:{code}");
            }
            Ok(_) => {}
            Err(e) => break error_key(&e),
        }
    };
    shared.healthy_gone.fetch_add(1, Ordering::Relaxed);
    bump(&shared.disconnects, why);
}

/// What to answer to one event while idle; Err carries why the connection ended.
fn idle_action(
    ev: Result<Event<'_>, wire::WsError>,
    dialect: Dialect,
) -> Result<Option<(u8, &'static str)>, String> {
    match ev {
        Ok(Event::Text(t)) => Ok(match dialect.classify(t) {
            Incoming::Ping(p) => Some((0x1, p)),
            _ => None,
        }),
        Ok(Event::Ping(_)) => Ok(Some((0xA, ""))),
        Ok(Event::Close(code)) => Err(format!("close:{}", code.unwrap_or(1005))),
        Ok(Event::Binary(_)) => Ok(None),
        Err(e) => Err(error_key(&e)),
    }
}

fn error_key(e: &wire::WsError) -> String {
    match e {
        wire::WsError::Io(io) => format!("io:{:?}", io.kind()),
        wire::WsError::Refused(s) => format!("http:{s}"),
        wire::WsError::Protocol(m) => format!("protocol:{m}"),
        wire::WsError::Eof => "eof".into(),
    }
}

/// Counts what the publisher got back.
#[derive(Default)]
struct PubCounters {
    accepted: AtomicU64,
    errors: AtomicU64,
}

async fn publish_steps(shared: &Arc<Shared>, healthy: u64) -> Vec<StepReport> {
    let args = &shared.args;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let base = format!("http://{}", args.publish_server.unwrap_or(args.server));
    let in_flight = Arc::new(Semaphore::new(args.publish_concurrency.max(1)));
    let mut seq: u64 = 0;
    let mut out = Vec::new();
    for (k, &rate) in args.rates.iter().enumerate() {
        let rate = rate.max(1);
        let n = (rate as f64 * args.step_secs).round() as u64;
        let counters = Arc::new(PubCounters::default());
        let server0 = procfs::sample_all(&args.server_pids);
        let client0 = procfs::sample(0).unwrap_or_default();
        let gone0 = shared.healthy_gone.load(Ordering::Relaxed);
        let start = Instant::now();
        let start_ns = payload::unix_ns();
        let mut requests = Vec::new();
        let mut i = 0u64;
        while i < n {
            let due = Duration::from_nanos(i * 1_000_000_000 / rate);
            tokio::time::sleep_until(start + due).await;
            let now = start.elapsed();
            // Everything due by now leaves in this round, stamped with when it was due.
            let mut batch = Vec::new();
            while i < n
                && Duration::from_nanos(i * 1_000_000_000 / rate) <= now
                && batch.len() < 1000
            {
                let stamp = Stamp {
                    seq,
                    intended_ns: start_ns + i * 1_000_000_000 / rate,
                    step: k as u32,
                };
                batch.push(stamp);
                seq += 1;
                i += 1;
            }
            match args.mode {
                Mode::Broadcast => {
                    for stamp in batch {
                        let data =
                            payload::build_kind(stamp, args.payload_bytes, args.payload_kind);
                        let (url, body) = match args.publisher {
                            Publisher::Herald => (
                                format!("{base}/v1/publish"),
                                format!(r#"{{"channel":"{}","data":{data}}}"#, args.channel),
                            ),
                            Publisher::Peer => (format!("{base}/publish"), data),
                            Publisher::Pusher => {
                                let body = format!(
                                    r#"{{"name":"{PUSHER_EVENT}","channels":["{}"],"data":{}}}"#,
                                    args.channel,
                                    json_string(&data)
                                );
                                let path = format!("/apps/{}/events", args.pusher.app_id);
                                (pusher_url(&base, &args.pusher, &path, &body), body)
                            }
                        };
                        // Taken here, in sequence order, so requests start in that order.
                        let permit = in_flight.clone().acquire_owned().await.expect("open");
                        requests.push(tokio::spawn(send(
                            http.clone(),
                            url,
                            args.api_key.clone(),
                            body,
                            1,
                            args.publisher,
                            counters.clone(),
                            permit,
                        )));
                    }
                }
                Mode::Unicast => {
                    let users = args.connections as u64;
                    let items: Vec<String> = batch
                        .iter()
                        .map(|s| {
                            let user = args.user_offset as u64 + s.seq % users;
                            let data =
                                payload::build_kind(*s, args.payload_bytes, args.payload_kind);
                            match args.publisher {
                                Publisher::Herald => format!(
                                    r#"{{"channel":"{}.u{user}","data":{data}}}"#,
                                    args.user_channel
                                ),
                                Publisher::Peer => format!(r#"{{"user":"u{user}","data":{data}}}"#),
                                Publisher::Pusher => format!(
                                    r#"{{"channel":"{}","name":"{PUSHER_EVENT}","data":{}}}"#,
                                    crate::dialect::PusherApp::user_channel(
                                        &args.user_channel,
                                        &format!("u{user}")
                                    ),
                                    json_string(&data)
                                ),
                            }
                        })
                        .collect();
                    let count = items.len() as u64;
                    let (url, body) = match args.publisher {
                        Publisher::Pusher => {
                            let body = format!(r#"{{"batch":[{}]}}"#, items.join(","));
                            let path = format!("/apps/{}/batch_events", args.pusher.app_id);
                            (pusher_url(&base, &args.pusher, &path, &body), body)
                        }
                        Publisher::Herald => (
                            format!("{base}/v1/publish/batch"),
                            format!(r#"{{"publications":[{}]}}"#, items.join(",")),
                        ),
                        Publisher::Peer => (
                            format!("{base}/publish/batch"),
                            format!("[{}]", items.join(",")),
                        ),
                    };
                    let permit = in_flight.clone().acquire_owned().await.expect("open");
                    requests.push(tokio::spawn(send(
                        http.clone(),
                        url,
                        args.api_key.clone(),
                        body,
                        count,
                        args.publisher,
                        counters.clone(),
                        permit,
                    )));
                }
                Mode::Idle => {}
            }
        }
        let publish_secs = start.elapsed().as_secs_f64();
        for r in requests {
            let _ = r.await;
        }
        let accepted = counters.accepted.load(Ordering::Relaxed);
        let per_msg = if args.mode == Mode::Broadcast {
            healthy
        } else {
            1
        };
        // Unicast to a slow user is not expected to arrive; they are excluded by design
        // (slow consumers are only used with broadcast).
        let expected = accepted * per_msg;
        let drain_until = Instant::now() + Duration::from_secs_f64(args.drain_secs);
        while shared.rec.received(k) < expected && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let server1 = procfs::sample_all(&args.server_pids);
        let client1 = procfs::sample(0).unwrap_or_default();
        let st = shared.rec.merged(k);
        let latency = st.latency();
        let lost = expected.saturating_sub(st.received);
        let server_cpu_us = server1.cpu_us() - server0.cpu_us();
        let publish_errors = counters.errors.load(Ordering::Relaxed);
        let healthy_disconnects = shared.healthy_gone.load(Ordering::Relaxed) - gone0;
        let ok = lost == 0
            && publish_errors == 0
            && healthy_disconnects == 0
            && latency.p99_ms <= args.p99_limit_ms;
        let step = StepReport {
            rate,
            payload_bytes: args.payload_bytes,
            secs,
            sent: n,
            accepted,
            publish_errors,
            expected,
            received: st.received,
            lost,
            gaps: st.gaps,
            reorders: st.reorders,
            // Deliveries over the publishing window: the drain only collects stragglers.
            deliveries_per_sec: st.received as f64 / publish_secs.max(1e-9),
            server_cpu_pct: server_cpu_us / 1e4 / secs,
            cpu_us_per_delivery: if st.received > 0 {
                server_cpu_us / st.received as f64
            } else {
                0.0
            },
            server_rss_kb: server1.rss_kb,
            client_cpu_pct: (client1.cpu_us() - client0.cpu_us()) / 1e4 / secs,
            wire_bytes_per_delivery: if st.received > 0 {
                st.wire_bytes as f64 / st.received as f64
            } else {
                0.0
            },
            latency,
            healthy_disconnects,
            ok,
        };
        progress(
            args,
            format_args!(
                "step {k} rate {rate}/s: {}/{} delivered ({} lost, {} gaps, {} reordered, {} \
                 publish errors), {:.0} deliveries/s, p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms, \
                 server CPU {:.0}% ({:.2} us/delivery) RSS {} KB, load CPU {:.0}%{}",
                step.received,
                step.expected,
                step.lost,
                step.gaps,
                step.reorders,
                step.publish_errors,
                step.deliveries_per_sec,
                latency.p50_ms,
                latency.p99_ms,
                latency.p999_ms,
                step.server_cpu_pct,
                step.cpu_us_per_delivery,
                step.server_rss_kb,
                step.client_cpu_pct,
                if ok { "" } else { "  FAILED" }
            ),
        );
        out.push(step);
        if !ok && !args.keep_going {
            break;
        }
    }
    out
}

/// `data` as a JSON string literal (Pusher's `data` is a string).
fn json_string(data: &str) -> String {
    serde_json::to_string(data).unwrap_or_default()
}

/// A Pusher HTTP API URL for a POST of `body` to `path`, signed now.
fn pusher_url(base: &str, app: &crate::dialect::PusherApp, path: &str, body: &str) -> String {
    let now = payload::unix_ns() / 1_000_000_000;
    format!(
        "{base}{}",
        app.signed_path("POST", path, body.as_bytes(), now)
    )
}

#[allow(clippy::too_many_arguments)]
async fn send(
    http: reqwest::Client,
    url: String,
    key: String,
    body: String,
    count: u64,
    publisher: Publisher,
    counters: Arc<PubCounters>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let res = http
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let (ok, failed) = match res {
        Ok(r) if r.status().is_success() => {
            if publisher == Publisher::Herald {
                // A batch answers per item; count the items that failed.
                let text = r.text().await.unwrap_or_default();
                let bad = text.matches(r#""error""#).count() as u64;
                (count.saturating_sub(bad), bad)
            } else {
                (count, 0)
            }
        }
        _ => (0, count),
    };
    counters.accepted.fetch_add(ok, Ordering::Relaxed);
    counters.errors.fetch_add(failed, Ordering::Relaxed);
}
