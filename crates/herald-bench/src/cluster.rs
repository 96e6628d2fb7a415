//! S8: past one process's file-descriptor limit. 100,000 connections over six Herald nodes
//! sharing one Redis, one load process per node, every connection subscribed to one broadcast
//! channel and to its own user channel; then the same per-node fan-out on one node, with the
//! memory broker and with Redis, for what going through Redis costs a node.
//!
//! Also the orchestration the soak ([`crate::soak`]) shares: starting Redis and nodes pinned to
//! the server core, one `herald-bench receive` per node and one `herald-bench publish`
//! ([`crate::streams`]), and reading CPU, memory and open files from `/proc` around them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::payload;
use crate::procfs;
use crate::stats::Latency;
use crate::streams::{PublishReport, Ready, ReceiveReport, Tally};

#[derive(Debug, Clone, clap::Args)]
pub struct S8Args {
    /// S8: Herald nodes sharing one Redis (one load process each).
    #[arg(long, default_value_t = 6)]
    pub s8_nodes: usize,
    /// S8: connections over all nodes (each node, and each load process, stays under the
    /// 20,000 fd hard limit: 100k / 6 = 16.7k).
    #[arg(long, default_value_t = 100_000)]
    pub s8_connections: usize,
    /// S8: broadcasts per second (each delivered to every connection).
    #[arg(long, default_value_t = 2)]
    pub s8_broadcast_rate: u64,
    /// S8: unicasts per second over all users (round-robin), through `/v1/publish/batch`
    /// (over Redis one round trip per batch; the publisher's lag is reported). When each item
    /// was its own script call, 1000/s made the publisher fall behind on the loaded 2-core
    /// machine.
    #[arg(long, default_value_t = 500)]
    pub s8_unicast_rate: u64,
    /// S8: publishing time of each run.
    #[arg(long, default_value_t = 60.0)]
    pub s8_secs: f64,
    /// S8: skip the one-node runs (memory broker and Redis).
    #[arg(long)]
    pub s8_no_single: bool,
    /// Loopback source addresses the S8 load spreads over (each has its own ephemeral ports).
    #[arg(long, default_value_t = 16)]
    pub s8_sources: u8,
    /// The `redis-server` binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
}

/// Where the binaries are and how servers are pinned (from the suite's settings).
#[derive(Debug, Clone)]
pub struct Launch {
    /// `herald-bench` itself (for `receive` and `publish`).
    pub me: PathBuf,
    pub herald: PathBuf,
    pub config: PathBuf,
    pub server_cpu: String,
    pub logs: PathBuf,
    pub redis_server: PathBuf,
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `redis-server` on a free port, pinned to the server core, with no persistence.
pub fn start_redis(l: &Launch) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let log = l.logs.join(format!("redis-{port}.log"));
    let child = Command::new("taskset")
        .arg("-c")
        .arg(&l.server_cpu)
        .arg(&l.redis_server)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&l.logs)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", l.redis_server.display()))?;
    let proc = Proc { child, log };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"PING\r\n")?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b)?;
            Ok(b)
        });
        if matches!(pong, Ok(b) if &b == b"+PONG\r\n") {
            return Ok((proc, port));
        }
        if Instant::now() > until {
            bail!(
                "redis-server did not answer PING; see {}",
                proc.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts one Herald node on the bench config, pinned to the server core; `redis`: the broker
/// URL (else the memory broker). Returns it with its address.
pub fn start_node(l: &Launch, name: &str, redis: Option<&str>) -> anyhow::Result<(Proc, String)> {
    let log = l.logs.join(format!("{name}.log"));
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(&l.server_cpu)
        .arg(&l.herald)
        .arg("serve")
        .arg("--config")
        .arg(&l.config)
        .env("HERALD_LOG", "warn");
    if let Some(url) = redis {
        cmd.env("HERALD_BROKER__KIND", "redis")
            .env("HERALD_BROKER__URL", url);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", l.herald.display()))?;
    let line = crate::suite::first_line(&mut child, Duration::from_secs(20));
    let proc = Proc { child, log };
    let line = match line {
        Some(l) => l,
        None => bail!(
            "{name} did not print its address; see {}",
            proc.log.display()
        ),
    };
    let addr = line
        .split("http://")
        .nth(1)
        .context("no address in the node's first line")?
        .trim()
        .to_string();
    Ok((proc, addr))
}

/// A `herald-bench receive` child and its command pipe.
struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Receiver {
    fn line<T: serde::de::DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the receiver ended without answering");
        }
        serde_json::from_str(&line).context("parsing a receiver's line")
    }

    fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("receiver stdin closed")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Closing stdin ends it; kill it if it does not.
        drop(self.stdin.take());
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One fan-out run: what to start and how hard to publish.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub nodes: usize,
    pub redis: bool,
    pub connections: usize,
    pub broadcast_rate: u64,
    pub unicast_rate: u64,
    pub secs: f64,
    pub drain_secs: f64,
    /// Connections closed and reopened per second (over all receivers).
    pub churn_per_sec: usize,
    pub sources: u8,
    /// Offsets from the start of publishing (s) at which node 0's RSS and open fds are read.
    pub sample_at: Vec<f64>,
}

/// CPU and memory of one process over a run's publishing window (and its drain).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcUse {
    pub name: String,
    pub cpu_pct: f64,
    pub rss_idle_kb: u64,
    pub rss_end_kb: u64,
}

/// One stream's outcome over all receivers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamResult {
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub early: u64,
    pub reorders: u64,
    #[serde(default)]
    pub lost_at: crate::streams::Losses,
    pub latency: Latency,
}

impl From<&Tally> for StreamResult {
    fn from(t: &Tally) -> Self {
        Self {
            received: t.received,
            expected: t.expected,
            lost: t.lost,
            early: t.early,
            reorders: t.reorders,
            lost_at: t.lost_at,
            latency: t.latency(),
        }
    }
}

/// A reading of node 0 during a run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Reading {
    /// Seconds since publishing started.
    pub at_secs: f64,
    pub rss_kb: u64,
    pub fds: u64,
    /// Cumulative CPU seconds of the process.
    pub cpu_secs: f64,
}

/// What one fan-out run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fanout {
    pub label: String,
    pub nodes: usize,
    pub broker: String,
    pub connections: usize,
    pub connected: usize,
    pub connect_failed: usize,
    pub connect_errors: BTreeMap<String, u64>,
    pub connect_secs: f64,
    pub broadcast_rate: u64,
    pub unicast_rate: u64,
    pub secs: f64,
    /// Loopback source addresses the connections came from.
    pub sources: u8,
    pub published: PublishReport,
    pub broadcast: StreamResult,
    pub unicast: StreamResult,
    /// Deliveries (both streams) per second of the publishing window.
    pub deliveries_per_sec: f64,
    /// The nodes' CPU (summed) per delivery, over publishing and drain.
    pub node_cpu_us_per_delivery: f64,
    pub redis_cpu_us_per_delivery: Option<f64>,
    /// The nodes, then Redis.
    pub processes: Vec<ProcUse>,
    /// The receivers' CPU, summed, % of one core.
    pub load_cpu_pct: f64,
    pub churned: u64,
    pub reconnect_failures: u64,
    pub disconnects: BTreeMap<String, u64>,
    /// Longest the receivers waited after publishing for the last deliveries, s.
    #[serde(default)]
    pub drain_secs: f64,
    /// Connections still missing their last publication when that wait ended.
    #[serde(default)]
    pub incomplete: u64,
    pub readings: Vec<Reading>,
    /// Warnings and errors the nodes and Redis logged, with counts.
    pub server_log: Vec<(String, u64)>,
    /// Every connection up, every publication accepted, nothing lost, nobody dropped.
    pub ok: bool,
}

fn read_node(pid: u32, at_secs: f64) -> Reading {
    let s = procfs::sample(pid).unwrap_or_default();
    Reading {
        at_secs,
        rss_kb: s.rss_kb,
        fds: procfs::open_fds(pid).unwrap_or(0),
        cpu_secs: s.cpu_us() / 1e6,
    }
}

/// Runs one fan-out: Redis (if asked), the nodes, one receiver per node, the publisher on
/// node 0; then settles loss and reads `/proc`.
pub fn fanout(l: &Launch, spec: &Spec) -> anyhow::Result<Fanout> {
    eprintln!(
        "[suite] {}: {} connections over {} node(s), {} broadcasts/s + {} unicasts/s for {} s",
        spec.label, spec.connections, spec.nodes, spec.broadcast_rate, spec.unicast_rate, spec.secs
    );
    let nodes = spec.nodes.max(1);
    let redis = if spec.redis {
        Some(start_redis(l)?)
    } else {
        None
    };
    let url = redis
        .as_ref()
        .map(|(_, port)| format!("redis://127.0.0.1:{port}"));
    let mut servers = Vec::new();
    for n in 0..nodes {
        let tag = format!("{}-node{n}", if spec.redis { "redis" } else { "memory" });
        servers.push(start_node(l, &tag, url.as_deref())?);
    }
    // Let the runtimes settle before the idle readings.
    std::thread::sleep(Duration::from_millis(500));
    let mut pids: Vec<u32> = servers.iter().map(|(p, _)| p.pid()).collect();
    let mut names: Vec<String> = (0..nodes).map(|n| format!("node {n}")).collect();
    if let Some((r, _)) = &redis {
        pids.push(r.pid());
        names.push("Redis".into());
    }
    let per = spec.connections.div_ceil(nodes);
    let mut receivers = Vec::new();
    for (n, (_, addr)) in servers.iter().enumerate() {
        let offset = n * per;
        let count = per.min(spec.connections.saturating_sub(offset));
        let churn = spec.churn_per_sec * count / spec.connections.max(1);
        let mut child = Command::new(&l.me)
            .arg("receive")
            .args(["--server", addr])
            .args(["--connections", &count.to_string()])
            .args(["--user-offset", &offset.to_string()])
            .args(["--users", &spec.connections.to_string()])
            .args(["--broadcast-rate", &spec.broadcast_rate.to_string()])
            .args(["--unicast-rate", &spec.unicast_rate.to_string()])
            .args(["--churn-per-sec", &churn.to_string()])
            .args(["--sources", &spec.sources.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("receiver stdout")?);
        receivers.push(Receiver {
            child,
            stdin,
            stdout,
        });
    }
    let mut out = Fanout {
        label: spec.label.clone(),
        nodes,
        broker: if spec.redis { "redis" } else { "memory" }.into(),
        connections: spec.connections,
        broadcast_rate: spec.broadcast_rate,
        unicast_rate: spec.unicast_rate,
        secs: spec.secs,
        sources: spec.sources,
        ..Fanout::default()
    };
    for r in &mut receivers {
        let ready: Ready = r.line()?;
        out.connected += ready.connected;
        out.connect_failed += ready.failed;
        out.connect_secs = out.connect_secs.max(ready.connect_secs);
        for (k, v) in ready.errors {
            *out.connect_errors.entry(k).or_default() += v;
        }
    }
    eprintln!(
        "[suite] {}: {} connected, {} failed {:?} in {:.1} s",
        spec.label, out.connected, out.connect_failed, out.connect_errors, out.connect_secs
    );
    std::thread::sleep(Duration::from_secs(2));
    let idle: Vec<procfs::Sample> = pids
        .iter()
        .map(|&p| procfs::sample(p).unwrap_or_default())
        .collect();

    let start_ns = payload::unix_ns() + 1_000_000_000;
    for r in &mut receivers {
        r.send(&format!("go {start_ns}"))?;
    }
    let mut publisher = Command::new(&l.me)
        .arg("publish")
        .args(["--server", &servers[0].1])
        .args(["--start-ns", &start_ns.to_string()])
        .args(["--secs", &spec.secs.to_string()])
        .args(["--broadcast-rate", &spec.broadcast_rate.to_string()])
        .args(["--unicast-rate", &spec.unicast_rate.to_string()])
        .args(["--users", &spec.connections.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let wait_until_ns = |ns: u64| {
        let now = payload::unix_ns();
        if ns > now {
            std::thread::sleep(Duration::from_nanos(ns - now));
        }
    };
    wait_until_ns(start_ns);
    let t0 = Instant::now();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|&p| procfs::sample(p).map_or(0.0, |s| s.cpu_us()))
        .collect();
    let load_pids: Vec<u32> = receivers.iter().map(|r| r.child.id()).collect();
    let load0 = procfs::sample_all(&load_pids).cpu_us();
    let mut pending: Vec<f64> = spec.sample_at.clone();
    pending.sort_by(f64::total_cmp);
    pending.reverse();
    loop {
        let el = t0.elapsed().as_secs_f64();
        while pending.last().is_some_and(|&at| at <= el) {
            pending.pop();
            let r = read_node(pids[0], el);
            eprintln!(
                "[suite] {}: at {:.0} s node 0 RSS {} KB, {} fds",
                spec.label, r.at_secs, r.rss_kb, r.fds
            );
            out.readings.push(r);
        }
        if pending.is_empty() && publisher.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut line = String::new();
    BufReader::new(publisher.stdout.take().context("publisher stdout")?).read_line(&mut line)?;
    let _ = publisher.wait();
    out.published = serde_json::from_str(&line).context("the publisher's report")?;
    for r in &mut receivers {
        r.send("stop")?;
    }
    std::thread::sleep(Duration::from_secs_f64(spec.drain_secs));
    let window = t0.elapsed().as_secs_f64();
    let end: Vec<procfs::Sample> = pids
        .iter()
        .map(|&p| procfs::sample(p).unwrap_or_default())
        .collect();
    let load1 = procfs::sample_all(&load_pids).cpu_us();
    let (mut b, mut u) = (Tally::default(), Tally::default());
    for r in &mut receivers {
        r.send(&format!(
            "report {} {}",
            out.published.broadcast.scheduled, out.published.unicast.scheduled
        ))?;
        let rep: ReceiveReport = r.line()?;
        b.merge(&rep.broadcast);
        u.merge(&rep.unicast);
        out.churned += rep.churned;
        out.reconnect_failures += rep.reconnect_failures;
        out.drain_secs = out.drain_secs.max(rep.drain_secs);
        out.incomplete += rep.incomplete;
        for (k, v) in rep.disconnects {
            *out.disconnects.entry(k).or_default() += v;
        }
    }
    drop(receivers);
    out.broadcast = (&b).into();
    out.unicast = (&u).into();
    let deliveries = b.received + u.received;
    out.deliveries_per_sec = deliveries as f64 / spec.secs.max(1e-9);
    out.load_cpu_pct = (load1 - load0) / 1e4 / window;
    for (i, name) in names.iter().enumerate() {
        let cpu_us = end[i].cpu_us() - cpu0[i];
        out.processes.push(ProcUse {
            name: name.clone(),
            cpu_pct: cpu_us / 1e4 / window,
            rss_idle_kb: idle[i].rss_kb,
            rss_end_kb: end[i].rss_kb,
        });
    }
    let node_cpu: f64 = (0..nodes).map(|i| end[i].cpu_us() - cpu0[i]).sum();
    out.node_cpu_us_per_delivery = node_cpu / deliveries.max(1) as f64;
    if spec.redis {
        out.redis_cpu_us_per_delivery =
            Some((end[nodes].cpu_us() - cpu0[nodes]) / deliveries.max(1) as f64);
    }
    let mut logs: Vec<PathBuf> = servers.iter().map(|(p, _)| p.log.clone()).collect();
    logs.extend(redis.iter().map(|(p, _)| p.log.clone()));
    out.server_log = crate::suite::summarize_logs(&logs)
        .into_iter()
        .filter(|(line, _)| !is_redis_chatter(line))
        .collect();
    let errors = out.published.broadcast.errors + out.published.unicast.errors;
    out.ok = out.connect_failed == 0
        && errors == 0
        && out.broadcast.lost == 0
        && out.unicast.lost == 0
        && out.disconnects.is_empty()
        && out.reconnect_failures == 0;
    eprintln!(
        "[suite] {}: {:.0} deliveries/s, broadcast p50 {:.2} p99 {:.2} p999 {:.2} ms, lost {} {:?} + \
         {} {:?} (unicast; drain {:.1} s), node CPU {:.2} µs/delivery{}, {}",
        spec.label,
        out.deliveries_per_sec,
        out.broadcast.latency.p50_ms,
        out.broadcast.latency.p99_ms,
        out.broadcast.latency.p999_ms,
        out.broadcast.lost,
        out.broadcast.lost_at,
        out.unicast.lost,
        out.unicast.lost_at,
        out.drain_secs,
        out.node_cpu_us_per_delivery,
        out.redis_cpu_us_per_delivery
            .map_or(String::new(), |r| format!(", Redis {r:.2} µs/delivery")),
        if out.ok { "ok" } else { "FAILED" }
    );
    Ok(out)
}

/// Redis writes its start-up banner and notices to the same log as its warnings; keep
/// warnings and errors only (Herald's lines carry `WARN`/`ERROR`, Redis' `WARNING`).
fn is_redis_chatter(line: &str) -> bool {
    !(line.contains("WARN") || line.contains("ERROR") || line.to_lowercase().contains("error"))
}

/// S8's three runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S8Results {
    pub cluster: Option<Fanout>,
    pub single_memory: Option<Fanout>,
    pub single_redis: Option<Fanout>,
    /// `net.ipv4.ip_local_port_range` during the run.
    pub port_range: String,
}

/// Runs S8: the cluster, then (unless skipped) the one-node runs at one node's share.
pub fn run_s8(l: &Launch, a: &S8Args) -> anyhow::Result<S8Results> {
    let mut res = S8Results {
        port_range: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("–"),
        ..S8Results::default()
    };
    let nodes = a.s8_nodes.max(1);
    let spec = Spec {
        label: format!("S8 {nodes} nodes + Redis"),
        nodes,
        redis: true,
        connections: a.s8_connections,
        broadcast_rate: a.s8_broadcast_rate,
        unicast_rate: a.s8_unicast_rate,
        secs: a.s8_secs,
        drain_secs: 5.0,
        churn_per_sec: 0,
        sources: a.s8_sources,
        sample_at: Vec::new(),
    };
    match fanout(l, &spec) {
        Ok(f) => res.cluster = Some(f),
        Err(e) => eprintln!("[suite] {} failed: {e:#}", spec.label),
    }
    if !a.s8_no_single {
        // One node's share: its connections, the same broadcast rate, its share of unicasts.
        let per = a.s8_connections.div_ceil(nodes);
        let share = |u: u64| (u as f64 * per as f64 / a.s8_connections.max(1) as f64).round();
        for redis in [false, true] {
            let one = Spec {
                label: format!("S8 1 node, {}", if redis { "Redis" } else { "memory" }),
                nodes: 1,
                redis,
                connections: per,
                unicast_rate: share(a.s8_unicast_rate) as u64,
                ..spec.clone()
            };
            match fanout(l, &one) {
                Ok(f) if redis => res.single_redis = Some(f),
                Ok(f) => res.single_memory = Some(f),
                Err(e) => eprintln!("[suite] {} failed: {e:#}", one.label),
            }
        }
    }
    Ok(res)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn lost_cell(f: &Fanout) -> String {
    let errors = f.published.broadcast.errors + f.published.unicast.errors;
    let at = |r: &StreamResult| {
        if r.lost == 0 {
            String::new()
        } else {
            format!(
                " (head {}, middle {}, tail {})",
                r.lost_at.head, r.lost_at.middle, r.lost_at.tail
            )
        }
    };
    let mut s = format!(
        "{}{} + {}{}",
        f.broadcast.lost,
        at(&f.broadcast),
        f.unicast.lost,
        at(&f.unicast)
    );
    if errors > 0 {
        let _ = write!(s, " ({errors} publish errors)");
    }
    if !f.disconnects.is_empty() {
        let _ = write!(s, " (disconnects {:?})", f.disconnects);
    }
    if f.connect_failed > 0 {
        let _ = write!(s, " ({} not connected)", f.connect_failed);
    }
    s
}

/// S8's part of the report.
pub fn render(o: &mut String, res: Option<&S8Results>) {
    let Some(res) = res else { return };
    let runs: Vec<&Fanout> = [&res.cluster, &res.single_memory, &res.single_redis]
        .into_iter()
        .flatten()
        .collect();
    let Some(first) = runs.first() else { return };
    let _ = writeln!(
        o,
        "\n### S8: {} connections over {} nodes sharing one Redis\n\n\
         Every connection subscribed to the broadcast channel and (auto-subscribed) to its own \
         user channel; {} broadcasts/s (each delivered to every connection) and {} unicasts/s \
         round-robin over the users, 100 B, for {} s, all published through node 0's HTTP API \
         (`/v1/publish`, `/v1/publish/batch`), so every delivery on the other nodes crosses \
         Redis. One `herald-bench receive` process per node (each under the 20,000 fd limit), \
         connections from {} loopback source addresses (ephemeral ports {}). The nodes and \
         Redis share the server core, the load processes the load core. Then one node's share \
         (same broadcast rate, its share of the unicasts) on one node, with the memory broker \
         and with Redis: the difference is what going through Redis costs a node. Loss: every \
         publication due after a connection's subscriptions were acknowledged, broadcast + \
         unicast; latency from the publication's due time (so a publisher that falls behind shows \
         as latency, and as its lag).\n",
        first.connections,
        first.nodes,
        first.broadcast_rate,
        first.unicast_rate,
        first.secs,
        first.sources,
        res.port_range
    );
    let _ = writeln!(
        o,
        "| run | connections (failed) | deliveries/s | broadcast p50 ms | p99 ms | p999 ms | unicast p50 ms | p99 ms | lost (broadcast + unicast) | publisher max lag ms (broadcast / unicast) | node CPU µs/delivery | Redis CPU µs/delivery | load CPU % | ok |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in &runs {
        let _ = writeln!(
            o,
            "| {} | {} ({}) | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} / {:.0} | {:.2} | {} | {:.0} | {} |",
            f.label,
            f.connected,
            f.connect_failed,
            f.deliveries_per_sec,
            f.broadcast.latency.p50_ms,
            f.broadcast.latency.p99_ms,
            f.broadcast.latency.p999_ms,
            f.unicast.latency.p50_ms,
            f.unicast.latency.p99_ms,
            lost_cell(f),
            f.published.broadcast.max_behind_ms,
            f.published.unicast.max_behind_ms,
            f.node_cpu_us_per_delivery,
            f.redis_cpu_us_per_delivery
                .map_or("–".into(), |r| format!("{r:.2}")),
            f.load_cpu_pct,
            if f.ok { "✓" } else { "✗" },
        );
    }
    let _ = writeln!(
        o,
        "\nEach process over the publishing window and its drain (CPU % of one core; RSS after \
         the connections were up, and at the end):\n\n| run | process | CPU % | RSS idle MB | RSS end MB |\n|---|---|---|---|---|"
    );
    for f in &runs {
        for p in &f.processes {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} | {:.0} | {:.0} |",
                f.label,
                p.name,
                p.cpu_pct,
                mb(p.rss_idle_kb),
                mb(p.rss_end_kb)
            );
        }
    }
    for f in &runs {
        if !f.server_log.is_empty() {
            let _ = writeln!(o, "\n{} logged:\n", f.label);
            for (line, n) in &f.server_log {
                let _ = writeln!(o, "- {n}× `{}`", line.replace('`', "'"));
            }
        }
    }
}
