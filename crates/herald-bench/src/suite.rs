//! The benchmark suite: every scenario against Herald and each peer, one after the other, each
//! on a fresh server process pinned to its own core, then the tables in `docs/benchmarks.md`.
//!
//! Every load runs in a child `herald-bench run` process (its own fd limit, its own memory),
//! inheriting this process's CPU affinity; the script `bench/run-suite.sh` pins this process to
//! the load core. Servers are started under `taskset -c <server core>`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::load::Report;
use crate::procfs;

#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// The markdown file whose generated section is rewritten.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Raw results (every step of every run).
    #[arg(long, default_value = "bench/results/latest.json")]
    pub json_out: PathBuf,
    /// Directory holding the `herald` and `herald-null` binaries (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The `bench/` directory (config and peers).
    #[arg(long, default_value = "bench")]
    pub bench_dir: PathBuf,
    /// Gateways to run, in the report's order: `herald` (WebSocket), `herald-sse` (the same
    /// server over Server-Sent Events), `herald-socketio` (the same server's `/socket.io/`),
    /// `herald-base` (WebSocket against `--baseline-bin`), `null` (one write per frame),
    /// `null-batch` (Herald's batching: the fair ceiling), `ws`, `socketio` (Node),
    /// `socketioxide` (Rust; built by `bench/run-suite.sh`), `sockudo` (Rust, Pusher protocol;
    /// installed by `bench/run-suite.sh`); for the compression comparison
    /// (scenario `s3z`) `herald-deflate` (`websocket.permessage_deflate = true`) and
    /// `ws-deflate` (Node ws with `perMessageDeflate`), whose clients offer permessage-deflate
    /// as a browser does.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "herald,herald-socketio,null-batch,null,ws,socketio,socketioxide,sockudo"
    )]
    pub peers: Vec<String>,
    /// Another `herald` binary (e.g. built from an older commit) run as the `herald-base`
    /// peer, for before/after comparisons within one run.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// The socketioxide peer's binary (default: where `bench/run-suite.sh` builds it,
    /// `<bench-dir>/peers/socketioxide/target/release/herald-bench-socketioxide`).
    #[arg(long)]
    pub socketioxide_bin: Option<PathBuf>,
    /// The Sockudo binary (default: where `bench/run-suite.sh` installs it,
    /// `<bench-dir>/peers/sockudo/root/bin/sockudo`). It runs with
    /// `<bench-dir>/peers/sockudo/config.toml`.
    #[arg(long)]
    pub sockudo_bin: Option<PathBuf>,
    /// Scenarios: `s1` (with `s2`), `s3`, `s4`, `s7`, and `s3z`: S3 with realistic 1 KB JSON
    /// payloads for the compression comparison (run it for `herald,herald-deflate,ws,ws-deflate`);
    /// the long ones, never by default: `s8` (100k connections over six nodes and Redis, ~5 min)
    /// and `soak` (~12 min).
    #[arg(long, value_delimiter = ',', default_value = "s1,s3,s4,s7")]
    pub scenarios: Vec<String>,
    /// Also run the long scenarios (`s8`, `soak`).
    #[arg(long)]
    pub long: bool,
    #[command(flatten)]
    pub s8: crate::cluster::S8Args,
    #[command(flatten)]
    pub soak: crate::soak::SoakArgs,
    /// CPU list for the servers (`taskset -c`).
    #[arg(long, default_value = "0")]
    pub server_cpu: String,
    #[arg(long, default_value_t = 10_000)]
    pub s1_small: usize,
    /// Connections of the large idle run, over `--s1-nodes` processes: 57k = 19k per process,
    /// as many as one process holds under the 20,000 fd hard limit.
    #[arg(long, default_value_t = 57_000)]
    pub s1_large: usize,
    /// Server processes the large idle run is spread over (one process cannot hold 57k fds).
    #[arg(long, default_value_t = 3)]
    pub s1_nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pub s3_subscribers: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,20,40,80,160,320,640"
    )]
    pub s3_rates: Vec<u64>,
    /// Payload sizes of S3, one run each. 1 KB (`--s3-sizes 100,1024`) is left out of the
    /// default set to keep it under 25 minutes (issue 16).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub s3_sizes: Vec<usize>,
    /// Run every S3 rate even after a step fails, so gateways compare at the same rates
    /// (on a busy machine the first step may already miss the p99 limit).
    #[arg(long)]
    pub s3_keep_going: bool,
    /// Subscribers of `s3z` (fewer than S3's: a gateway that compresses per subscriber holds
    /// a compressor per connection).
    #[arg(long, default_value_t = 5_000)]
    pub s3z_subscribers: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,10,40,160")]
    pub s3z_rates: Vec<u64>,
    #[arg(long, default_value_t = 18_000)]
    pub s4_users: usize,
    /// Run every S4 rate even after a step fails (as `--s3-keep-going`).
    #[arg(long)]
    pub s4_keep_going: bool,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,4000,8000,16000,32000,64000"
    )]
    pub s4_rates: Vec<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub s7_subscribers: usize,
    #[arg(long, default_value_t = 40)]
    pub s7_rate: u64,
    /// S7 rate steps (6 × 2 s: the default set stays under 25 minutes).
    #[arg(long, default_value_t = 6)]
    pub s7_steps: usize,
    /// Seconds of publishing per rate step (2: the default set stays under 25 minutes).
    #[arg(long, default_value_t = 2.0)]
    pub step_secs: f64,
    /// A sentence on the conditions of this run, written into the report.
    #[arg(long, default_value = "")]
    pub conditions: String,
    /// Rewrite the report from the saved results (`--json-out`) without running anything.
    #[arg(long)]
    pub render_only: bool,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    name: &'static str,
    label: &'static str,
    dialect: &'static str,
    publisher: &'static str,
    /// Started with permessage-deflate enabled; its load offers it.
    deflate: bool,
}

const PEERS: &[Peer] = &[
    Peer {
        name: "herald",
        label: "Herald",
        dialect: "herald",
        publisher: "herald",
        deflate: false,
    },
    Peer {
        name: "herald-deflate",
        label: "Herald, permessage-deflate",
        dialect: "herald",
        publisher: "herald",
        deflate: true,
    },
    Peer {
        name: "herald-sse",
        label: "Herald SSE",
        dialect: "sse",
        publisher: "herald",
        deflate: false,
    },
    Peer {
        name: "herald-socketio",
        label: "Herald Socket.IO",
        dialect: "herald-socketio",
        publisher: "herald",
        deflate: false,
    },
    Peer {
        name: "herald-base",
        label: "Herald, baseline binary",
        dialect: "herald",
        publisher: "herald",
        deflate: false,
    },
    Peer {
        name: "null",
        label: "null gateway, naive (one write per frame)",
        dialect: "raw",
        publisher: "peer",
        deflate: false,
    },
    Peer {
        name: "null-batch",
        label: "null gateway, batching (fair ceiling)",
        dialect: "raw",
        publisher: "peer",
        deflate: false,
    },
    Peer {
        name: "ws",
        label: "Node ws",
        dialect: "raw",
        publisher: "peer",
        deflate: false,
    },
    Peer {
        name: "ws-deflate",
        label: "Node ws, perMessageDeflate",
        dialect: "raw",
        publisher: "peer",
        deflate: true,
    },
    Peer {
        name: "socketio",
        label: "Node Socket.IO",
        dialect: "socketio",
        publisher: "peer",
        deflate: false,
    },
    Peer {
        name: "socketioxide",
        label: "socketioxide (Rust)",
        dialect: "socketio",
        publisher: "peer",
        deflate: false,
    },
    Peer {
        name: "sockudo",
        label: "Sockudo (Rust, Pusher)",
        dialect: "pusher",
        publisher: "pusher",
        deflate: false,
    },
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LargeIdle {
    pub nodes: usize,
    pub connected: usize,
    pub failed: usize,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub kb_per_connection: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerResults {
    pub name: String,
    pub label: String,
    pub s1_small: Option<Report>,
    pub s1_large: Option<LargeIdle>,
    pub s3: Vec<Report>,
    pub s4: Option<Report>,
    pub s7: Option<Report>,
    /// S3 with realistic 1 KB JSON (the compression comparison).
    #[serde(default)]
    pub s3z: Option<Report>,
    /// Warnings and errors the server printed, deduplicated, with counts.
    pub server_log: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub started: String,
    pub minutes: f64,
    pub machine: Vec<(String, String)>,
    pub conditions: String,
    pub command: String,
    pub peers: Vec<PeerResults>,
    pub s8: Option<crate::cluster::S8Results>,
    pub soak: Option<crate::soak::SoakReport>,
}

/// A server under test; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    args: SuiteArgs,
    bin_dir: PathBuf,
    me: PathBuf,
    logs: PathBuf,
    seq: usize,
}

impl Env {
    fn start(&mut self, peer: &Peer) -> anyhow::Result<Server> {
        self.seq += 1;
        let log = self.logs.join(format!("{}-{}.log", peer.name, self.seq));
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(&self.args.server_cpu);
        match peer.name {
            "herald" | "herald-deflate" | "herald-sse" | "herald-socketio" | "herald-base" => {
                let bin = match (&self.args.baseline_bin, peer.name) {
                    (Some(base), "herald-base") => base.clone(),
                    (None, "herald-base") => bail!("the herald-base peer needs --baseline-bin"),
                    _ => self.bin_dir.join("herald"),
                };
                cmd.arg(bin)
                    .arg("serve")
                    .arg("--config")
                    .arg(self.args.bench_dir.join("herald-bench.toml"))
                    .env("HERALD_LOG", "warn");
                if peer.deflate {
                    cmd.env("HERALD_WEBSOCKET__PERMESSAGE_DEFLATE", "true");
                }
            }
            "null" => {
                cmd.arg(self.bin_dir.join("herald-null"));
            }
            "null-batch" => {
                cmd.arg(self.bin_dir.join("herald-null")).arg("--batching");
            }
            "socketioxide" => {
                cmd.arg(socketioxide_bin(&self.args));
            }
            "ws-deflate" => {
                cmd.arg("node")
                    .arg(self.args.bench_dir.join("peers/ws/server.js"))
                    .env("PERMESSAGE_DEFLATE", "1");
            }
            "sockudo" => return self.start_sockudo(cmd, log),
            other => {
                cmd.arg("node").arg(
                    self.args
                        .bench_dir
                        .join("peers")
                        .join(other)
                        .join("server.js"),
                );
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", peer.name))?;
        let line = match first_line(&mut child, Duration::from_secs(20)) {
            Some(l) => l,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not print its address; see {}",
                    peer.name,
                    log.display()
                );
            }
        };
        let addr = line
            .split("http://")
            .nth(1)
            .context("no address in the first line")?
            .trim()
            .to_string();
        // Let the runtime settle before the baseline memory reading.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Server { child, addr, log })
    }

    /// Sockudo prints no address: it is given a free port (`PORT`) and is up once that port
    /// accepts connections. Its fd soft limit is raised to the hard one first (a shell
    /// `ulimit`, then `exec`: the pid stays Sockudo's), as Herald and the null gateway do
    /// themselves, so that one process holds ~19.5k sockets like the others.
    fn start_sockudo(&self, mut cmd: Command, log: PathBuf) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        cmd.arg("sh")
            .arg("-c")
            .arg(r#"ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
            .arg(sockudo_bin(&self.args))
            .arg("--config")
            .arg(self.args.bench_dir.join("peers/sockudo/config.toml"))
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .env("LOG_COLORS_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::OpenOptions::new().append(true).open(&log)?);
        let child = cmd.spawn().context("starting sockudo")?;
        let server = Server {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&server.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "sockudo did not listen on {}; see {}",
                    server.addr,
                    server.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the runtime settle before the baseline memory reading, as for the others.
        std::thread::sleep(Duration::from_millis(500));
        Ok(server)
    }

    fn load_cmd(&self, peer: &Peer, server: &Server, extra: &[String]) -> Command {
        let mut cmd = Command::new(&self.me);
        cmd.arg("run")
            .arg("--json")
            .arg("--server")
            .arg(&server.addr)
            .arg("--dialect")
            .arg(peer.dialect)
            .arg("--publisher")
            .arg(peer.publisher)
            .arg("--server-pid")
            .arg(server.pid().to_string())
            .args(extra);
        if peer.deflate {
            cmd.arg("--permessage-deflate");
        }
        cmd
    }

    fn load(&self, peer: &Peer, server: &Server, extra: &[String]) -> anyhow::Result<Report> {
        let out = self
            .load_cmd(peer, server, extra)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().context("load printed no report")?;
        serde_json::from_str(line).context("parsing the load report")
    }
}

/// The first line a started server prints on stdout (its address), if it comes within
/// `within`. The rest of its stdout is drained on a thread, so a chatty server never blocks on
/// a full pipe. Used for every process the suite starts (peers here, S8's nodes in `cluster`).
pub(crate) fn first_line(child: &mut Child, within: Duration) -> Option<String> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    match rx.recv_timeout(within) {
        Ok(Some(Ok(l))) => Some(l),
        _ => None,
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn rates(r: &[u64]) -> String {
    r.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run(args: SuiteArgs) -> anyhow::Result<()> {
    if args.render_only {
        let text = std::fs::read_to_string(&args.json_out)
            .with_context(|| format!("reading {}", args.json_out.display()))?;
        let mut results: Results = serde_json::from_str(&text)?;
        if !args.conditions.is_empty() {
            results.conditions = args.conditions.clone();
        }
        std::fs::write(&args.json_out, serde_json::to_string_pretty(&results)?)?;
        return write_section(&args.out, &render(&results, &args));
    }
    let started = Instant::now();
    eprintln!(
        "[suite] estimated duration: {:.0} min (every step run; a peer that fails a step \
         stops that scenario earlier)",
        estimate_secs(&args) / 60.0
    );
    let me = std::env::current_exe()?;
    let bin_dir = args
        .bin_dir
        .clone()
        .or_else(|| me.parent().map(Path::to_path_buf))
        .context("binary directory")?;
    let logs = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let mut env = Env {
        args: args.clone(),
        bin_dir,
        me,
        logs,
        seq: 0,
    };
    let mut results = Results {
        started: shell("date -u +%Y-%m-%dT%H:%MZ"),
        machine: machine(&env),
        conditions: args.conditions.clone(),
        command: "bench/run-suite.sh".into(),
        ..Results::default()
    };
    let want = |s: &str| {
        args.scenarios.iter().any(|x| x == s) || (args.long && matches!(s, "s8" | "soak"))
    };
    for peer in PEERS
        .iter()
        .filter(|p| args.peers.iter().any(|n| n == p.name))
    {
        eprintln!("[suite] ===== {} =====", peer.label);
        let mut r = PeerResults {
            name: peer.name.into(),
            label: peer.label.into(),
            ..PeerResults::default()
        };
        let mut logs = Vec::new();
        let mut step =
            |what: &str, f: &mut dyn FnMut(&mut Env, &mut Vec<PathBuf>) -> anyhow::Result<()>| {
                eprintln!("[suite] {} {what}", peer.label);
                if let Err(e) = f(&mut env, &mut logs) {
                    eprintln!("[suite] {} {what} failed: {e:#}", peer.label);
                }
            };
        if want("s1") || want("s2") {
            step("S1/S2 idle", &mut |env, logs| {
                let srv = env.start(peer)?;
                logs.push(srv.log.clone());
                let rep = env.load(
                    peer,
                    &srv,
                    &[
                        s("--mode"),
                        s("idle"),
                        s("--connections"),
                        s(args.s1_small),
                        s("--settle-secs"),
                        s(3),
                    ],
                )?;
                r.s1_small = Some(rep);
                Ok(())
            });
            step("S1 large", &mut |env, logs| {
                r.s1_large = Some(large_idle(env, peer, logs)?);
                Ok(())
            });
        }
        if want("s3") {
            for &size in &args.s3_sizes {
                step(&format!("S3 {size} B"), &mut |env, logs| {
                    let srv = env.start(peer)?;
                    logs.push(srv.log.clone());
                    let mut extra = vec![
                        s("--mode"),
                        s("broadcast"),
                        s("--connections"),
                        s(args.s3_subscribers),
                        s("--payload-bytes"),
                        s(size),
                        s("--rates"),
                        rates(&args.s3_rates),
                        s("--step-secs"),
                        s(args.step_secs),
                    ];
                    if args.s3_keep_going {
                        extra.push(s("--keep-going"));
                    }
                    let rep = env.load(peer, &srv, &extra)?;
                    r.s3.push(rep);
                    Ok(())
                });
            }
        }
        if want("s3z") {
            step("S3 1 KB JSON (compression)", &mut |env, logs| {
                let srv = env.start(peer)?;
                logs.push(srv.log.clone());
                let rep = env.load(
                    peer,
                    &srv,
                    &[
                        s("--mode"),
                        s("broadcast"),
                        s("--connections"),
                        s(args.s3z_subscribers),
                        s("--payload-bytes"),
                        s(1024),
                        s("--payload-kind"),
                        s("json"),
                        s("--rates"),
                        rates(&args.s3z_rates),
                        s("--step-secs"),
                        s(args.step_secs),
                        s("--keep-going"),
                    ],
                )?;
                r.s3z = Some(rep);
                Ok(())
            });
        }
        if want("s4") {
            step("S4 unicast", &mut |env, logs| {
                let srv = env.start(peer)?;
                logs.push(srv.log.clone());
                let mut extra = vec![
                    s("--mode"),
                    s("unicast"),
                    s("--connections"),
                    s(args.s4_users),
                    s("--rates"),
                    rates(&args.s4_rates),
                    s("--step-secs"),
                    s(args.step_secs),
                ];
                if args.s4_keep_going {
                    extra.push(s("--keep-going"));
                }
                r.s4 = Some(env.load(peer, &srv, &extra)?);
                Ok(())
            });
        }
        if want("s7") {
            step("S7 slow consumers", &mut |env, logs| {
                let srv = env.start(peer)?;
                logs.push(srv.log.clone());
                r.s7 = Some(env.load(
                    peer,
                    &srv,
                    &[
                        s("--mode"),
                        s("broadcast"),
                        s("--connections"),
                        s(args.s7_subscribers),
                        s("--slow-fraction"),
                        s(0.05),
                        s("--payload-bytes"),
                        s(1024),
                        s("--rates"),
                        rates(&vec![args.s7_rate; args.s7_steps]),
                        s("--step-secs"),
                        s(args.step_secs),
                        s("--keep-going"),
                    ],
                )?);
                Ok(())
            });
        }
        r.server_log = summarize_logs(&logs);
        results.peers.push(r);
    }
    // The long runs are Herald's alone (no peers).
    let launch = crate::cluster::Launch {
        me: env.me.clone(),
        herald: env.bin_dir.join("herald"),
        config: args.bench_dir.join("herald-bench.toml"),
        server_cpu: args.server_cpu.clone(),
        logs: env.logs.clone(),
        redis_server: args.s8.redis_server.clone(),
    };
    if want("s8") {
        match crate::cluster::run_s8(&launch, &args.s8) {
            Ok(r) => results.s8 = Some(r),
            Err(e) => eprintln!("[suite] S8 failed: {e:#}"),
        }
    }
    if want("soak") {
        match crate::soak::run(&launch, &args.soak) {
            Ok(r) => results.soak = Some(r),
            Err(e) => eprintln!("[suite] soak failed: {e:#}"),
        }
    }
    results.minutes = started.elapsed().as_secs_f64() / 60.0;
    merge_previous(&mut results, &args.json_out);
    if let Some(dir) = args.json_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&results)?)?;
    let section = render(&results, &args);
    write_section(&args.out, &section)?;
    eprintln!(
        "[suite] done in {:.1} min: {} and {}",
        results.minutes,
        args.out.display(),
        args.json_out.display()
    );
    Ok(())
}

/// Connections per second a peer accepts on this machine, for [`estimate_secs`]: the Node
/// peers verify each JWT in ~0.85–1.35 ms of CPU (S2, 2026-11-30), Herald and the other Rust
/// peers in < 0.1 ms; Sockudo accepted 450–780/s on a busy machine and ~4,400/s on a quieter
/// one (issue 16): the busy figures, so that the estimate errs long.
fn connect_rate(peer: &str) -> f64 {
    match peer {
        "ws" | "socketio" | "sockudo" => 700.0,
        _ => 4000.0,
    }
}

/// How long a run with `args` takes, in seconds: per scenario a server start (~1 s), the
/// connects at the peer's rate, the settle time, and per rate step its `--step-secs` plus the
/// drain and readings (~1.5 s: the drain ends as soon as everything arrived, 2 s at most). An
/// upper bound when every step passes or `--*-keep-going` is given; S3 and S4 stop earlier for a
/// peer that fails a step.
pub fn estimate_secs(args: &SuiteArgs) -> f64 {
    let want = |s: &str| args.scenarios.iter().any(|x| x == s);
    let step = args.step_secs + 1.5;
    let start = 1.0;
    let mut total = 0.0;
    for peer in PEERS
        .iter()
        .filter(|p| args.peers.iter().any(|n| n == p.name))
    {
        let connect = |n: usize| n as f64 / connect_rate(peer.name);
        if want("s1") || want("s2") {
            // The small run settles 3 s; the large one runs its nodes side by side, then 3 s.
            total += start + connect(args.s1_small) + 3.0;
            total += start * args.s1_nodes as f64 + connect(args.s1_large) + 3.0;
        }
        // Broadcast and unicast loads settle 2 s (`--settle-secs` default) before publishing.
        if want("s3") {
            total += args.s3_sizes.len() as f64
                * (start + connect(args.s3_subscribers) + 2.0 + args.s3_rates.len() as f64 * step);
        }
        if want("s4") {
            total += start + connect(args.s4_users) + 2.0 + args.s4_rates.len() as f64 * step;
        }
        if want("s7") {
            total += start + connect(args.s7_subscribers) + 2.0 + args.s7_steps as f64 * step;
        }
    }
    total
}

/// A partial run (some peers or scenarios) keeps the previous run's figures for the rest, so
/// the report stays whole; the conditions say which parts were re-run.
fn merge_previous(results: &mut Results, path: &Path) {
    let Some(old) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<Results>(&t).ok())
    else {
        return;
    };
    merge(results, old);
}

/// [`merge_previous`] on parsed results. The earlier run's conditions are quoted ("Earlier
/// parts: …") only when some of its figures stay in the report: a run that re-measured
/// everything the earlier one had is described by its own conditions alone.
fn merge(results: &mut Results, old: Results) {
    let mut kept = false;
    let mut merged = Vec::new();
    for peer in PEERS {
        let new = results.peers.iter().find(|p| p.name == peer.name).cloned();
        let prev = old.peers.iter().find(|p| p.name == peer.name).cloned();
        match (new, prev) {
            (Some(mut n), Some(o)) => {
                fn keep<T>(new: &mut Option<T>, old: Option<T>, kept: &mut bool) {
                    if new.is_none() && old.is_some() {
                        *new = old;
                        *kept = true;
                    }
                }
                keep(&mut n.s1_small, o.s1_small, &mut kept);
                keep(&mut n.s1_large, o.s1_large, &mut kept);
                if n.s3.is_empty() && !o.s3.is_empty() {
                    n.s3 = o.s3;
                    kept = true;
                }
                keep(&mut n.s4, o.s4, &mut kept);
                keep(&mut n.s7, o.s7, &mut kept);
                keep(&mut n.s3z, o.s3z, &mut kept);
                // The servers' logs are not figures: keeping them quotes nothing.
                if n.server_log.is_empty() {
                    n.server_log = o.server_log;
                }
                merged.push(n);
            }
            (Some(n), None) => merged.push(n),
            (None, Some(o)) => {
                merged.push(o);
                kept = true;
            }
            (None, None) => {}
        }
    }
    results.peers = merged;
    kept |= results.s8.is_none() && old.s8.is_some();
    kept |= results.soak.is_none() && old.soak.is_some();
    results.s8 = results.s8.take().or(old.s8);
    results.soak = results.soak.take().or(old.soak);
    if results.conditions.is_empty() {
        results.conditions = old.conditions;
    } else if kept && !old.conditions.is_empty() && old.conditions != results.conditions {
        results.conditions = format!("{} Earlier parts: {}", results.conditions, old.conditions);
    }
    // `minutes` stays this run's own: the earlier parts' durations are not part of it.
}

/// S1 at a size one process cannot hold: several independent server processes, one load
/// process each, all connected at once; the memory is the sum over the servers.
fn large_idle(env: &mut Env, peer: &Peer, logs: &mut Vec<PathBuf>) -> anyhow::Result<LargeIdle> {
    let nodes = env.args.s1_nodes.max(1);
    let per = env.args.s1_large.div_ceil(nodes);
    let mut servers = Vec::new();
    for _ in 0..nodes {
        let srv = env.start(peer)?;
        logs.push(srv.log.clone());
        servers.push(srv);
    }
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let before = procfs::sample_all(&pids);
    let mut loads: Vec<(Child, ChildStdin)> = Vec::new();
    for (n, srv) in servers.iter().enumerate() {
        let mut child = env
            .load_cmd(
                peer,
                srv,
                &[
                    s("--mode"),
                    s("idle"),
                    s("--connections"),
                    s(per),
                    s("--user-offset"),
                    s(n * per),
                    s("--settle-secs"),
                    s(0),
                    s("--connect-timeout-secs"),
                    s(180),
                    s("--hold"),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().context("load stdin")?;
        loads.push((child, stdin));
    }
    let mut connected = 0;
    let mut failed = 0;
    for (child, _) in &mut loads {
        let stdout = child.stdout.take().context("load stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let rep: Report = serde_json::from_str(&line).context("large idle report")?;
        connected += rep.connected;
        failed += rep.connect_failed;
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = procfs::sample_all(&pids);
    for (mut child, stdin) in loads {
        drop(stdin);
        let _ = child.wait();
    }
    Ok(LargeIdle {
        nodes,
        connected,
        failed,
        rss_before_kb: before.rss_kb,
        rss_after_kb: after.rss_kb,
        kb_per_connection: (after.rss_kb as f64 - before.rss_kb as f64) / connected.max(1) as f64,
    })
}

pub(crate) fn summarize_logs(paths: &[PathBuf]) -> Vec<(String, u64)> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for p in paths {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // Strip the timestamp so repeats of one message collapse.
            let key: String = line
                .split_once(" WARN ")
                .map(|(_, m)| format!("WARN {m}"))
                .or_else(|| {
                    line.split_once(" ERROR ")
                        .map(|(_, m)| format!("ERROR {m}"))
                })
                .unwrap_or_else(|| line.to_string());
            let key: String = key.chars().take(200).collect();
            *counts.entry(key).or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(10);
    v
}

fn shell(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Issue 13's comparison, when Herald's `/socket.io/` was measured: Herald over Socket.IO
/// beside Node Socket.IO and socketioxide (server CPU per delivery at each publish rate, the
/// gateways having met the same offered load) and beside Herald's own `/v1/ws` (idle memory).
fn render_socketio(o: &mut String, res: &Results, args: &SuiteArgs) {
    let Some(hs) = res.peers.iter().find(|p| p.name == "herald-socketio") else {
        return;
    };
    let find = |name: &str| res.peers.iter().find(|p| p.name == name);
    let cols: Vec<&PeerResults> = ["herald", "herald-socketio", "socketio", "socketioxide"]
        .iter()
        .filter_map(|n| find(n))
        .collect();
    let _ = writeln!(
        o,
        "\n### Socket.IO v4: Herald's `/socket.io/` beside Node Socket.IO and socketioxide\n\n\
         All three speak Engine.IO v4 over the websocket transport; the peers put every \
         connection in a room at connect, Herald auto-subscribes the per-user channel and the \
         broadcast subscribers send a `subscribe` event (acked). Targets (issue 13): Herald \
         over Socket.IO at least 10× Node Socket.IO's deliveries per server CPU-second, more \
         than socketioxide's, and at most 1.33× the idle memory of Herald's `/v1/ws`.\n"
    );
    let _ = writeln!(
        o,
        "| Gateway | S1 {}: KB/conn | vs Herald `/v1/ws` | S1 {}: KB/conn | vs Herald `/v1/ws` |\n|---|---|---|---|---|",
        args.s1_small, args.s1_large
    );
    let ws = find("herald");
    for p in &cols {
        let small = p.s1_small.as_ref().map(|r| r.kb_per_connection);
        let large = p.s1_large.as_ref().map(|l| l.kb_per_connection);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            p.label,
            small.map_or("–".into(), |v| format!("{v:.2}")),
            small.map_or("–".into(), |v| ratio(
                v,
                ws.and_then(|w| w.s1_small.as_ref().map(|r| r.kb_per_connection))
            )),
            large.map_or("–".into(), |v| format!("{v:.2}")),
            large.map_or("–".into(), |v| ratio(
                v,
                ws.and_then(|w| w.s1_large.as_ref().map(|l| l.kb_per_connection))
            )),
        );
    }
    // Per-delivery CPU at each rate; "×" columns are Herald Socket.IO's deliveries per
    // CPU-second over the other's (the inverse ratio of µs per delivery).
    let step_at = |p: Option<&PeerResults>, scenario: Option<usize>, rate: u64| {
        let rep = match scenario {
            Some(i) => p.and_then(|p| p.s3.get(i)),
            None => p.and_then(|p| p.s4.as_ref()),
        };
        rep.and_then(|r| r.steps.iter().find(|s| s.rate == rate))
            .filter(|s| s.cpu_us_per_delivery > 0.0)
            .cloned()
    };
    let cell = |st: &Option<crate::load::StepReport>| match st {
        Some(st) => format!(
            "{:.2}{}",
            st.cpu_us_per_delivery,
            if st.ok { "" } else { " ✗" }
        ),
        None => "–".into(),
    };
    let times = |mine: &Option<crate::load::StepReport>,
                 other: &Option<crate::load::StepReport>| {
        match (mine, other) {
            (Some(m), Some(x)) => format!("{:.1}×", x.cpu_us_per_delivery / m.cpu_us_per_delivery),
            _ => "–".into(),
        }
    };
    let _ = writeln!(
        o,
        "\nServer CPU µs per delivery at each publish rate (✗: the step failed, e.g. p99 over \
         100 ms; its CPU still counts). The last two columns are Herald Socket.IO's deliveries \
         per CPU-second over Node Socket.IO's and socketioxide's.\n"
    );
    let _ = writeln!(
        o,
        "| scenario | rate/s | Herald `/v1/ws` | Herald Socket.IO | Node Socket.IO | socketioxide | vs Node Socket.IO | vs socketioxide |\n|---|---|---|---|---|---|---|---|"
    );
    let mut rows: Vec<(String, Option<usize>, u64)> = Vec::new();
    for (i, rep) in hs.s3.iter().enumerate() {
        let size = rep.steps.first().map_or(0, |s| s.payload_bytes);
        for st in &rep.steps {
            rows.push((format!("S3 {size} B"), Some(i), st.rate));
        }
    }
    for st in hs.s4.iter().flat_map(|r| r.steps.iter()) {
        rows.push(("S4".into(), None, st.rate));
    }
    for (name, scenario, rate) in rows {
        let h = step_at(ws, scenario, rate);
        let me = step_at(Some(hs), scenario, rate);
        let node = step_at(find("socketio"), scenario, rate);
        let rs = step_at(find("socketioxide"), scenario, rate);
        let _ = writeln!(
            o,
            "| {name} | {rate} | {} | {} | {} | {} | {} | {} |",
            cell(&h),
            cell(&me),
            cell(&node),
            cell(&rs),
            times(&me, &node),
            times(&me, &rs)
        );
    }
}

/// Where the Sockudo binary is.
fn sockudo_bin(args: &SuiteArgs) -> PathBuf {
    args.sockudo_bin
        .clone()
        .unwrap_or_else(|| args.bench_dir.join("peers/sockudo/root/bin/sockudo"))
}

/// Where the socketioxide peer's binary is.
fn socketioxide_bin(args: &SuiteArgs) -> PathBuf {
    args.socketioxide_bin.clone().unwrap_or_else(|| {
        args.bench_dir
            .join("peers/socketioxide/target/release/herald-bench-socketioxide")
    })
}

fn machine(env: &Env) -> Vec<(String, String)> {
    let peers = env.args.bench_dir.join("peers");
    let pkg = |p: &str, m: &str| {
        shell(&format!(
            "node -p \"require('./{}/node_modules/{m}/package.json').version\" 2>/dev/null",
            peers.join(p).display()
        ))
    };
    vec![
        (
            "CPU".into(),
            shell("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        ),
        ("cores".into(), shell("nproc --all")),
        (
            "memory".into(),
            shell("free -g | awk '/Mem:/{print $2\" GiB\"}'"),
        ),
        ("kernel".into(), shell("uname -r")),
        ("fd limit (hard)".into(), shell("ulimit -Hn")),
        ("rustc".into(), shell("rustc --version")),
        (
            "herald".into(),
            shell(&format!(
                "{} --version; echo tree; git rev-parse --short HEAD 2>/dev/null",
                env.bin_dir.join("herald").display()
            ))
            .replace('\n', " @ "),
        ),
        (
            "herald baseline".into(),
            env.args
                .baseline_bin
                .as_ref()
                .map(|b| shell(&format!("{} --version", b.display())))
                .unwrap_or_else(|| "–".into()),
        ),
        ("node".into(), shell("node --version")),
        ("ws".into(), pkg("ws", "ws")),
        ("socket.io".into(), pkg("socketio", "socket.io")),
        (
            "socketioxide".into(),
            // The version its lock file pins (the peer is built from it).
            shell(&format!(
                "awk '/^name = \"socketioxide\"$/ {{getline; print $3}}' {} | tr -d '\"'",
                peers.join("socketioxide/Cargo.lock").display()
            )),
        ),
        (
            "sockudo".into(),
            shell(&format!(
                "{} --version 2>/dev/null",
                sockudo_bin(&env.args).display()
            )),
        ),
        (
            "pinning".into(),
            format!(
                "server: taskset -c {}; load: the rest (bench/run-suite.sh)",
                env.args.server_cpu
            ),
        ),
    ]
}

const BEGIN: &str = "<!-- BEGIN GENERATED by herald-bench suite: do not edit by hand -->";
const END: &str = "<!-- END GENERATED -->";

/// Replaces the generated section of `path` (or creates the file), leaving the prose around it.
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{BEGIN}\n{section}{END}{}",
            &old[..b],
            &old[e + END.len()..]
        ),
        _ => format!("# Benchmarks\n\n{BEGIN}\n{section}{END}\n{old}"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(new.as_bytes())?;
    Ok(())
}

/// The step with the most deliveries per second among those that passed.
fn best(rep: &Report) -> Option<&crate::load::StepReport> {
    rep.steps
        .iter()
        .filter(|s| s.ok)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec))
}

/// The passing step whose rate is closest to half the best one's.
fn half(rep: &Report) -> Option<&crate::load::StepReport> {
    let top = best(rep)?.rate as f64 / 2.0;
    rep.steps.iter().filter(|s| s.ok).min_by(|a, b| {
        (a.rate as f64 - top)
            .abs()
            .total_cmp(&(b.rate as f64 - top).abs())
    })
}

fn why_stopped(rep: &Report) -> String {
    match rep.steps.iter().find(|s| !s.ok) {
        None => "all steps passed".into(),
        Some(s) => {
            let mut why = Vec::new();
            if s.lost > 0 {
                why.push(format!("{} lost", s.lost));
            }
            if s.latency.p99_ms > 100.0 {
                why.push(format!("p99 {:.0} ms", s.latency.p99_ms));
            }
            if s.publish_errors > 0 {
                why.push(format!("{} publish errors", s.publish_errors));
            }
            if s.healthy_disconnects > 0 {
                why.push(format!("{} disconnects", s.healthy_disconnects));
            }
            format!("{}/s: {}", s.rate, why.join(", "))
        }
    }
}

/// Herald against the batching null gateway at every S3 rate step (issue 16: deliveries per
/// CPU-second within 80% of the ceiling at every step, p99 within 1.15× at 1 and 10/s).
fn render_ceiling(o: &mut String, res: &Results, args: &SuiteArgs) {
    let find = |name: &str| res.peers.iter().find(|p| p.name == name);
    let (Some(herald), Some(ceiling)) = (find("herald"), find("null-batch")) else {
        return;
    };
    let _ = writeln!(
        o,
        "\n### S3 against the fair ceiling\n\nHerald `/v1/ws` beside the batching null gateway \
         (`herald-null --batching`: every publication framed once into a shared log, one \
         sweeper writing each connection everything it is owed with one vectored write, no \
         task wake-up per delivery; see `crates/herald-bench/src/null.rs`), step by step, each \
         step's figures whether or not it passed. Targets (issue 16): Herald's deliveries per \
         CPU-second ≥ 80% of the ceiling's at every step; p99 ≤ 1.15× the ceiling's at 1 and 10 \
         publications/s.\n"
    );
    let _ = writeln!(
        o,
        "| payload | rate/s | Herald deliveries/s | ceiling deliveries/s | Herald µs/delivery | ceiling µs/delivery | Herald per CPU-s, % of ceiling | Herald p99 ms | ceiling p99 ms | p99 vs ceiling |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, size) in args.s3_sizes.iter().enumerate() {
        let (Some(h), Some(c)) = (herald.s3.get(i), ceiling.s3.get(i)) else {
            continue;
        };
        for hs in &h.steps {
            let Some(cs) = c.steps.iter().find(|s| s.rate == hs.rate) else {
                continue;
            };
            // Deliveries per CPU-second is the inverse of CPU per delivery.
            let per_cpu = cs.cpu_us_per_delivery / hs.cpu_us_per_delivery.max(1e-9);
            let p99 = hs.latency.p99_ms / cs.latency.p99_ms.max(1e-9);
            let p99_target = matches!(hs.rate, 1 | 10);
            let _ = writeln!(
                o,
                "| {} B | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}% {} | {:.2} | {:.2} | {:.2}×{} |",
                size,
                hs.rate,
                hs.deliveries_per_sec,
                cs.deliveries_per_sec,
                hs.cpu_us_per_delivery,
                cs.cpu_us_per_delivery,
                per_cpu * 100.0,
                if per_cpu >= 0.8 { "✓" } else { "✗" },
                hs.latency.p99_ms,
                cs.latency.p99_ms,
                p99,
                if !p99_target {
                    ""
                } else if p99 <= 1.15 {
                    " ✓"
                } else {
                    " ✗"
                },
            );
        }
    }
}

/// Issue 16's compression comparison: S1 idle memory and S3 with realistic 1 KB JSON, with
/// permessage-deflate on and off, Herald beside Node ws.
fn render_compression(o: &mut String, res: &Results, args: &SuiteArgs) {
    let rows: Vec<&PeerResults> = res.peers.iter().filter(|p| p.s3z.is_some()).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n### Compression (permessage-deflate): S1 and S3 with 1 KB JSON\n\n\
         {} subscribers of one channel, realistic 1 KB JSON payloads (records with repeated \
         keys and values that change with every publication), publish rates {} per second, \
         {} s each. The `-deflate` rows' clients offer `{}` as a browser does; each server \
         picks its context policy (Herald: no context takeover, one compression per \
         publication; ws: context takeover, one compression per subscriber). Wire bytes are \
         WebSocket frame bytes (header and payload as received) per delivery. \"After \
         traffic\" is the server's RSS growth per connection once the last step has drained \
         and the connections are idle again.\n",
        args.s3z_subscribers,
        rates(&args.s3z_rates),
        args.step_secs,
        crate::wire::DEFLATE_OFFER
    );
    let _ = writeln!(
        o,
        "| Gateway | negotiated | S1 idle KB/conn | KB/conn after traffic | wire bytes/delivery |\n|---|---|---|---|---|"
    );
    for p in &rows {
        let Some(z) = &p.s3z else { continue };
        let wire = z
            .steps
            .iter()
            .find(|s| s.received > 0)
            .map_or("–".into(), |s| {
                format!("{:.0}", s.wire_bytes_per_delivery)
            });
        let _ = writeln!(
            o,
            "| {} | {}/{} | {} | {:.2} | {} |",
            p.label,
            z.deflate_negotiated,
            z.connected,
            p.s1_small
                .as_ref()
                .map_or("–".into(), |r| format!("{:.2}", r.kb_per_connection)),
            z.kb_per_connection_after,
            wire
        );
    }
    let _ = writeln!(
        o,
        "\nServer CPU µs per delivery and p99 at each rate (✗: the step failed: p99 over \
         100 ms or a loss; its CPU still counts).\n"
    );
    let _ = write!(o, "| rate/s |");
    for p in &rows {
        let _ = write!(o, " {} µs/delivery | p99 ms |", p.label);
    }
    let _ = write!(o, "\n|---|");
    for _ in &rows {
        let _ = write!(o, "---|---|");
    }
    let _ = writeln!(o);
    for rate in &args.s3z_rates {
        let _ = write!(o, "| {rate} |");
        for p in &rows {
            match p
                .s3z
                .as_ref()
                .and_then(|z| z.steps.iter().find(|s| s.rate == *rate))
            {
                Some(st) => {
                    let _ = write!(
                        o,
                        " {:.2}{} | {:.2} |",
                        st.cpu_us_per_delivery,
                        if st.ok { "" } else { " ✗" },
                        st.latency.p99_ms
                    );
                }
                None => {
                    let _ = write!(o, " – | – |");
                }
            }
        }
        let _ = writeln!(o);
    }
}

fn ratio(v: f64, herald: Option<f64>) -> String {
    match herald {
        Some(h) if h > 0.0 && v > 0.0 => format!("{:.2}×", v / h),
        _ => "–".into(),
    }
}

fn render(res: &Results, args: &SuiteArgs) -> String {
    let mut o = String::new();
    let herald = res.peers.iter().find(|p| p.name == "herald");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} in {:.0} min.\n",
        res.command, res.started, res.minutes
    );
    if !res.conditions.is_empty() {
        let _ = writeln!(o, "**Conditions:** {}\n", res.conditions);
    }
    let _ = writeln!(o, "### Machine and versions\n\n| | |\n|---|---|");
    for (k, v) in &res.machine {
        let _ = writeln!(o, "| {k} | {v} |");
    }

    // S1
    let _ = writeln!(
        o,
        "\n### S1: idle memory\n\nServer RSS growth per idle connection (each with its \
         per-user subscription: Herald's auto-subscribed `bench.user.{{userId}}`, the user room \
         in Socket.IO, the user map entry in `ws`). {} connections on one process; {} over {} \
         independent processes (one process cannot hold more than ~19.5k sockets under the \
         20,000 fd hard limit), summed.\n",
        args.s1_small, args.s1_large, args.s1_nodes
    );
    let _ = writeln!(
        o,
        "| Gateway | {}: RSS MB | KB/conn | {}: RSS MB (sum) | KB/conn | KB/conn vs Herald |\n|---|---|---|---|---|---|",
        args.s1_small, args.s1_large
    );
    let h_kb = herald.and_then(|h| h.s1_large.as_ref().map(|l| l.kb_per_connection));
    for p in &res.peers {
        let small = p.s1_small.as_ref();
        let large = p.s1_large.as_ref();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            p.label,
            small.map_or("–".into(), |r| format!(
                "{:.0}",
                r.server_rss_idle_kb as f64 / 1024.0
            )),
            small.map_or("–".into(), |r| format!("{:.2}", r.kb_per_connection)),
            large.map_or("–".into(), |l| format!(
                "{:.0}{}",
                l.rss_after_kb as f64 / 1024.0,
                if l.failed > 0 {
                    format!(" ({} failed)", l.failed)
                } else {
                    String::new()
                }
            )),
            large.map_or("–".into(), |l| format!("{:.2}", l.kb_per_connection)),
            large.map_or("–".into(), |l| ratio(l.kb_per_connection, h_kb)),
        );
    }

    // S2
    let _ = writeln!(
        o,
        "\n### S2: connect rate (JWT verified on every connect)\n\n{} connections, {} in \
         flight, spread over 127.0.0.1–8. Every peer verifies an HS256 JWT per connection \
         (Sockudo, whose protocol has no connect token: the HMAC-SHA256 signature of the \
         connection's private user-channel subscription).\n",
        args.s1_small, 200
    );
    let _ = writeln!(
        o,
        "| Gateway | connects/s | connect p50 ms | p99 ms | server CPU µs/connect | failed | vs Herald (rate) |\n|---|---|---|---|---|---|---|"
    );
    let h_rate = herald.and_then(|h| h.s1_small.as_ref().map(|r| r.connects_per_sec));
    for p in &res.peers {
        if let Some(r) = &p.s1_small {
            let _ = writeln!(
                o,
                "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {}{} | {} |",
                p.label,
                r.connects_per_sec,
                r.connect_p50_ms,
                r.connect_p99_ms,
                r.server_cpu_us_per_connect,
                r.connect_failed,
                if r.connect_errors.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", r.connect_errors)
                },
                ratio(r.connects_per_sec, h_rate)
            );
        }
    }

    // S3
    for (i, size) in args.s3_sizes.iter().enumerate() {
        let _ = writeln!(
            o,
            "\n### S3: broadcast fan-out, 1 channel × {} subscribers, {size} B payload\n\n\
             Publish rates {} per second, {} s each, until p99 > 100 ms or any loss. \"Max\" \
             is the passing step with the most deliveries/s; CPU is the server's (utime+stime) \
             over that step and its drain.\n",
            args.s3_subscribers,
            rates(&args.s3_rates),
            args.step_secs
        );
        let _ = writeln!(
            o,
            "| Gateway | max deliveries/s | at publish rate | server CPU µs/delivery | deliveries per CPU-second | p50 ms | p99 ms | p999 ms | p99 at ~half max | stopped at | load CPU % | max vs Herald | per-CPU-s vs Herald |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let hb = herald.and_then(|h| h.s3.get(i)).and_then(best);
        for p in &res.peers {
            let Some(rep) = p.s3.get(i) else { continue };
            match best(rep) {
                Some(b) => {
                    let hf = half(rep);
                    let _ = writeln!(
                        o,
                        "| {} | {:.0} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} | {} |",
                        p.label,
                        b.deliveries_per_sec,
                        b.rate,
                        b.cpu_us_per_delivery,
                        1e6 / b.cpu_us_per_delivery.max(1e-9),
                        b.latency.p50_ms,
                        b.latency.p99_ms,
                        b.latency.p999_ms,
                        hf.map_or("–".into(), |s| format!(
                            "{:.2} ms @ {}/s",
                            s.latency.p99_ms, s.rate
                        )),
                        why_stopped(rep),
                        b.client_cpu_pct,
                        ratio(b.deliveries_per_sec, hb.map(|h| h.deliveries_per_sec)),
                        ratio(
                            1.0 / b.cpu_us_per_delivery.max(1e-9),
                            hb.map(|h| 1.0 / h.cpu_us_per_delivery.max(1e-9))
                        ),
                    );
                }
                None => match rep.steps.first() {
                    // Nothing passed: show the first (lowest) step, so the costs still compare.
                    Some(f) => {
                        let _ = writeln!(
                            o,
                            "| {} | none passed; first step: {:.0} ✗ | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | – | {} | {:.0} | – | {} |",
                            p.label,
                            f.deliveries_per_sec,
                            f.rate,
                            f.cpu_us_per_delivery,
                            1e6 / f.cpu_us_per_delivery.max(1e-9),
                            f.latency.p50_ms,
                            f.latency.p99_ms,
                            f.latency.p999_ms,
                            why_stopped(rep),
                            f.client_cpu_pct,
                            ratio(
                                1.0 / f.cpu_us_per_delivery.max(1e-9),
                                herald
                                    .and_then(|h| h.s3.get(i))
                                    .and_then(|r| r.steps.first())
                                    .map(|h| 1.0 / h.cpu_us_per_delivery.max(1e-9))
                            ),
                        );
                    }
                    None => {
                        let _ = writeln!(o, "| {} | no steps | | | | | | | | | | | |", p.label);
                    }
                },
            }
        }
    }

    // S4
    let _ = writeln!(
        o,
        "\n### S4: per-user unicast, {} users\n\nOne message per publication to one user's own \
         channel (Herald: the auto-subscribed `bench.user.{{userId}}`; peers: a room or map \
         entry per user), round-robin over users, sent in batches of whatever is due (Herald: \
         `POST /v1/publish/batch`). {} users rather than 20k: one server process cannot hold \
         more sockets under the 20,000 fd hard limit.\n",
        args.s4_users, args.s4_users
    );
    let _ = writeln!(
        o,
        "| Gateway | max messages/s | server CPU µs/message | p50 ms | p99 ms | p999 ms | p99 at ~half max | stopped at | load CPU % | max vs Herald |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let h4 = herald.and_then(|h| h.s4.as_ref()).and_then(best);
    for p in &res.peers {
        let Some(rep) = &p.s4 else { continue };
        match best(rep) {
            Some(b) => {
                let _ = writeln!(
                    o,
                    "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} |",
                    p.label,
                    b.deliveries_per_sec,
                    b.cpu_us_per_delivery,
                    b.latency.p50_ms,
                    b.latency.p99_ms,
                    b.latency.p999_ms,
                    half(rep).map_or("–".into(), |s| format!(
                        "{:.2} ms @ {}/s",
                        s.latency.p99_ms, s.rate
                    )),
                    why_stopped(rep),
                    b.client_cpu_pct,
                    ratio(b.deliveries_per_sec, h4.map(|h| h.deliveries_per_sec)),
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "| {} | no step passed | | | | | | {} | | |",
                    p.label,
                    why_stopped(rep)
                );
            }
        }
    }

    render_ceiling(&mut o, res, args);
    render_compression(&mut o, res, args);
    render_socketio(&mut o, res, args);

    // S7
    let _ = writeln!(
        o,
        "\n### S7: slow consumers\n\n{} subscribers, 1 KB broadcasts at {}/s for {} × {} s; \
         5% of the connections stop reading when publishing starts. Healthy clients' latency \
         and the server's RSS, first and last step.\n",
        args.s7_subscribers, args.s7_rate, args.s7_steps, args.step_secs
    );
    let _ = writeln!(
        o,
        "| Gateway | healthy p99 first → last (ms) | healthy p999 last (ms) | healthy lost | healthy disconnects | server RSS first → last (MB) |\n|---|---|---|---|---|---|"
    );
    for p in &res.peers {
        let Some(rep) = &p.s7 else { continue };
        let (Some(first), Some(last)) = (rep.steps.first(), rep.steps.last()) else {
            continue;
        };
        let lost: u64 = rep.steps.iter().map(|s| s.lost).sum();
        let gone: u64 = rep.steps.iter().map(|s| s.healthy_disconnects).sum();
        let _ = writeln!(
            o,
            "| {} | {:.2} → {:.2} | {:.2} | {} | {} | {:.0} → {:.0} |",
            p.label,
            first.latency.p99_ms,
            last.latency.p99_ms,
            last.latency.p999_ms,
            lost,
            gone,
            first.server_rss_kb as f64 / 1024.0,
            last.server_rss_kb as f64 / 1024.0
        );
    }

    crate::cluster::render(&mut o, res.s8.as_ref());
    crate::soak::render(&mut o, res.soak.as_ref());

    // Every step, for the record.
    let _ = writeln!(
        o,
        "\n### Every step\n\n<details><summary>All rate steps of S3, S4 and S7</summary>\n"
    );
    let _ = writeln!(
        o,
        "| Gateway | scenario | rate/s | delivered | expected | lost | deliveries/s | server CPU % | µs/delivery | RSS MB | p50 | p99 | p999 | max | load CPU % |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &res.peers {
        let runs =
            p.s3.iter()
                .map(|r| {
                    (
                        format!("S3 {} B", r.steps.first().map_or(0, |s| s.payload_bytes)),
                        r,
                    )
                })
                .chain(p.s3z.iter().map(|r| ("S3 1 KB JSON".to_string(), r)))
                .chain(p.s4.iter().map(|r| ("S4".to_string(), r)))
                .chain(p.s7.iter().map(|r| ("S7".to_string(), r)));
        for (name, rep) in runs {
            for st in &rep.steps {
                let _ = writeln!(
                    o,
                    "| {} | {name} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
                    p.label,
                    st.rate,
                    st.received,
                    st.expected,
                    st.lost,
                    st.deliveries_per_sec,
                    st.server_cpu_pct,
                    st.cpu_us_per_delivery,
                    st.server_rss_kb as f64 / 1024.0,
                    st.latency.p50_ms,
                    st.latency.p99_ms,
                    st.latency.p999_ms,
                    st.latency.max_ms,
                    st.client_cpu_pct
                );
            }
        }
    }
    let _ = writeln!(o, "\n</details>\n");
    let _ = writeln!(o, "### What the servers logged\n");
    for p in &res.peers {
        if p.server_log.is_empty() {
            let _ = writeln!(o, "- {}: nothing", p.label);
        } else {
            let _ = writeln!(o, "- {}:", p.label);
            for (line, n) in &p.server_log {
                let _ = writeln!(o, "  - {n}× `{}`", line.replace('`', "'"));
            }
        }
    }
    o.push('\n');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SuiteArgs,
    }

    #[test]
    fn the_compression_table_has_a_row_per_gateway_that_ran_s3z() {
        let args = Cli::parse_from(["suite", "--s3z-rates", "1,10"]).args;
        let step = |rate, wire, cpu| crate::load::StepReport {
            rate,
            wire_bytes_per_delivery: wire,
            cpu_us_per_delivery: cpu,
            received: 10,
            ok: true,
            ..Default::default()
        };
        let peer = |name: &str, label: &str, negotiated, wire| PeerResults {
            name: name.into(),
            label: label.into(),
            s3z: Some(Report {
                connected: 5000,
                deflate_negotiated: negotiated,
                kb_per_connection_after: 1.5,
                steps: vec![step(1, wire, 2.0), step(10, wire, 1.0)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let res = Results {
            peers: vec![
                peer("herald", "Herald", 0, 1110.0),
                peer("ws-deflate", "Node ws, perMessageDeflate", 5000, 280.0),
            ],
            ..Default::default()
        };
        let text = render(&res, &args);
        assert!(
            text.contains("### Compression (permessage-deflate)"),
            "{text}"
        );
        assert!(
            text.contains("| Herald | 0/5000 | – | 1.50 | 1110 |"),
            "{text}"
        );
        assert!(
            text.contains("| Node ws, perMessageDeflate | 5000/5000 | – | 1.50 | 280 |"),
            "{text}"
        );
        assert!(
            text.contains("| 10 | 1.00 | 0.00 | 1.00 | 0.00 |"),
            "{text}"
        );
        // Without any s3z run, no compression section.
        let none = Results::default();
        assert!(!render(&none, &args).contains("Compression"));
    }

    /// A run that re-measured everything the saved results held does not quote their
    /// conditions as "earlier parts" (the acceptance run of issue 16 did, wrongly); a partial
    /// run does, and keeps the figures it did not re-measure.
    #[test]
    fn earlier_conditions_are_quoted_only_for_figures_kept() {
        let peer = |name: &str, s4: bool| PeerResults {
            name: name.into(),
            s4: s4.then(Report::default),
            ..Default::default()
        };
        let old = Results {
            conditions: "old run".into(),
            peers: vec![peer("herald", true), peer("ws", true)],
            ..Default::default()
        };
        let mut whole = Results {
            conditions: "new run".into(),
            peers: vec![peer("herald", true), peer("ws", true)],
            ..Default::default()
        };
        merge(&mut whole, old.clone());
        assert_eq!(whole.conditions, "new run");

        // Only Herald re-run: ws's figures stay, and so does the word on how they were taken.
        let mut part = Results {
            conditions: "new run".into(),
            peers: vec![peer("herald", true)],
            ..Default::default()
        };
        merge(&mut part, old.clone());
        assert_eq!(part.conditions, "new run Earlier parts: old run");
        assert_eq!(part.peers.len(), 2);

        // Herald re-run without S4: its S4 figures are the earlier run's.
        let mut fewer = Results {
            conditions: "new run".into(),
            peers: vec![peer("herald", false), peer("ws", true)],
            ..Default::default()
        };
        merge(&mut fewer, old);
        assert!(fewer.conditions.contains("Earlier parts"));
        assert!(fewer.peers[0].s4.is_some());
    }

    /// Issue 16: the default set of `bench/run-suite.sh` runs in under 25 minutes.
    #[test]
    fn the_default_suite_fits_in_25_minutes() {
        let args = Cli::parse_from(["suite"]).args;
        let minutes = estimate_secs(&args) / 60.0;
        assert!(
            minutes < 25.0,
            "default suite estimated at {minutes:.1} min"
        );
        // And the estimate is not vacuous: every default peer and scenario counts.
        assert!(minutes > 10.0, "{minutes:.1} min");
    }
}
