//! The multi-process runs (S8, the soak) in miniature against the real `herald` binary: the
//! receivers' loss accounting reports nothing lost when nothing is, exactly what is missing
//! when publications are missing, and an S8-shaped run over two nodes sharing a real Redis
//! delivers everything.

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use herald_bench::cluster::{self, Launch, Spec};
use herald_bench::payload;
use herald_bench::streams::{PublishReport, Ready, ReceiveReport};

fn herald_binary() -> PathBuf {
    let bin = herald_testkit::HeraldBin::locate(None);
    bin.build_if_missing();
    bin.path
}

fn launch(logs: &std::path::Path) -> Launch {
    Launch {
        me: PathBuf::from(env!("CARGO_BIN_EXE_herald-bench")),
        herald: herald_binary(),
        config: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/herald-bench.toml"),
        // Whatever this machine has: the test checks counts, not speed.
        server_cpu: format!(
            "0-{}",
            std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
        ),
        logs: logs.to_path_buf(),
        redis_server: "redis-server".into(),
    }
}

/// A receiver child, killed on drop.
struct Recv {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Recv {
    fn start(addr: &str, offset: usize, n: usize, users: usize, churn: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .arg("receive")
            .args(["--server", addr])
            .args(["--connections", &n.to_string()])
            .args(["--user-offset", &offset.to_string()])
            .args(["--users", &users.to_string()])
            .args(["--broadcast-rate", "10", "--unicast-rate", "100"])
            .args(["--churn-per-sec", &churn.to_string()])
            // Counts are claimed wrong on purpose below: do not wait long for those.
            .args(["--max-drain-secs", "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("receiver starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn line<T: serde::de::DeserializeOwned>(&mut self) -> T {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn receivers_settle_loss_exactly_with_and_without_churn() {
    let logs = tempfile::tempdir().unwrap();
    let l = launch(logs.path());
    let (_node, addr) = cluster::start_node(&l, "node", None).unwrap();
    // A churns 10 of its 100 connections per second; B holds its 100.
    let mut a = Recv::start(&addr, 0, 100, 200, 10);
    let mut b = Recv::start(&addr, 100, 100, 200, 0);
    for r in [&mut a, &mut b] {
        let ready: Ready = r.line();
        assert_eq!((ready.connected, ready.failed), (100, 0), "{ready:?}");
    }
    let start = payload::unix_ns() + 500_000_000;
    a.send(&format!("go {start}"));
    b.send(&format!("go {start}"));
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("publish")
        .args(["--server", &addr, "--start-ns", &start.to_string()])
        .args([
            "--secs",
            "3",
            "--broadcast-rate",
            "10",
            "--unicast-rate",
            "100",
        ])
        .args(["--users", "200"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let p: PublishReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((p.broadcast.accepted, p.broadcast.errors), (30, 0), "{p:?}");
    assert_eq!((p.unicast.accepted, p.unicast.errors), (300, 0), "{p:?}");
    a.send("stop");
    b.send("stop");
    std::thread::sleep(Duration::from_secs(1));

    // Honest counts: nothing lost, though A closed and reopened connections meanwhile.
    a.send("report 30 300");
    let ra: ReceiveReport = a.line();
    assert!(ra.churned >= 20, "{ra:?}");
    assert_eq!((ra.broadcast.lost, ra.unicast.lost), (0, 0), "{ra:?}");
    assert_eq!(ra.reconnect_failures, 0);
    assert!(ra.disconnects.is_empty(), "{:?}", ra.disconnects);
    // Users u0..u99 are A's: half of the unicasts, each owed to whichever incarnation was up.
    assert!(ra.unicast.expected > 100, "{ra:?}");

    // Claim 3 more broadcasts and 3 more unicasts than were published: B, which stayed
    // connected, must report each of those as lost on every connection that was owed one
    // (unicasts 300–302 belong to users u100–u102, all B's; of the 300 published, B's users
    // u100–u199 got numbers 100–199).
    b.send("report 33 303");
    let rb: ReceiveReport = b.line();
    assert_eq!(rb.churned, 0);
    assert_eq!(rb.broadcast.expected, 100 * 33, "{rb:?}");
    assert_eq!(rb.broadcast.received, 100 * 30, "{rb:?}");
    assert_eq!(rb.broadcast.lost, 100 * 3, "{rb:?}");
    assert_eq!(rb.unicast.received, 100, "{rb:?}");
    assert_eq!(rb.unicast.expected, 103, "{rb:?}");
    assert_eq!(rb.unicast.lost, 3, "{rb:?}");
    // All of it missing at the tail, on every connection (each lacks broadcasts 30–32).
    assert_eq!(rb.broadcast.lost_at.tail, 300, "{rb:?}");
    assert_eq!(rb.unicast.lost_at.tail, 3, "{rb:?}");
    assert_eq!(rb.incomplete, 100, "{rb:?}");
    assert_eq!(ra.incomplete, 0, "{ra:?}");
    assert!(rb.broadcast.latency().p50_ms > 0.0);
}

#[test]
fn s8_in_miniature_over_two_nodes_and_redis() {
    let logs = tempfile::tempdir().unwrap();
    let l = launch(logs.path());
    let f = cluster::fanout(
        &l,
        &Spec {
            label: "test".into(),
            nodes: 2,
            redis: true,
            connections: 300,
            broadcast_rate: 5,
            unicast_rate: 100,
            secs: 3.0,
            drain_secs: 2.0,
            churn_per_sec: 0,
            sources: 4,
            sample_at: vec![1.0, 2.0],
        },
    )
    .unwrap();
    assert_eq!((f.connected, f.connect_failed), (300, 0), "{f:?}");
    assert_eq!(f.broadcast.received, 15 * 300, "{f:?}");
    assert_eq!(f.unicast.received, 300, "{f:?}");
    assert_eq!((f.broadcast.lost, f.unicast.lost), (0, 0));
    assert!(f.ok, "{f:?}");
    // Two nodes and Redis, each read from /proc; node 0 read at 1 s and 2 s.
    assert_eq!(f.processes.len(), 3);
    assert!(f.processes.iter().all(|p| p.rss_end_kb > 0));
    assert!(f.redis_cpu_us_per_delivery.is_some());
    assert_eq!(f.readings.len(), 2);
    assert!(f.readings.iter().all(|r| r.fds > 150 && r.rss_kb > 0));
}
