//! Keeps the load generator honest and working, in seconds: the tool's counts are checked
//! against the null gateway (everything sent is delivered; one deliberately dropped broadcast
//! is reported as exactly one loss per connection), and a small run against the real `herald`
//! binary must deliver everything, over WebSocket, Server-Sent Events and Socket.IO.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use herald_bench::load::Report;

/// A child process killed on drop, so a failing assertion never leaks a server.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server and returns it with the address from its first stdout line.
fn start(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .to_string();
    (Proc(child), addr)
}

fn bench(args: &[&str]) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("run")
        .arg("--json")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("herald-bench runs");
    assert!(out.status.success(), "herald-bench failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a report")).expect("a JSON report")
}

fn null(extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-null"));
    cmd.args(extra);
    start(cmd)
}

const CONNS: u64 = 200;

#[test]
fn null_gateway_delivers_everything_that_was_sent() {
    let (srv, addr) = null(&[]);
    let pid = srv.0.id().to_string();
    let r = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--connections",
        "200",
        "--rates",
        "40,80",
        "--step-secs",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r.connected, 200, "{r:?}");
    assert_eq!(r.steps.len(), 2);
    for s in &r.steps {
        assert_eq!(s.accepted, s.sent);
        assert_eq!(s.expected, s.sent * CONNS);
        assert_eq!(s.received, s.expected, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders), (0, 0, 0));
        assert!(s.ok);
    }
    assert!(r.server_rss_idle_kb > 0, "server memory is read from /proc");
}

#[test]
fn a_dropped_broadcast_is_reported_as_loss() {
    // The 8th broadcast (index 7) is never written to anyone.
    let (_srv, addr) = null(&["--drop-seq", "7"]);
    let r = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--connections",
        "200",
        "--rates",
        "40",
        "--step-secs",
        "1",
    ]);
    let s = &r.steps[0];
    assert_eq!(s.sent, 40);
    assert_eq!(
        s.lost, CONNS,
        "one message missing on every connection: {s:?}"
    );
    assert_eq!(
        s.gaps, CONNS,
        "seen as a gap in the sequence on every connection"
    );
    assert_eq!(s.received, 39 * CONNS);
    assert!(!s.ok);
}

#[test]
fn null_gateway_unicast_reaches_each_user_once() {
    let (_srv, addr) = null(&[]);
    let r = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--mode",
        "unicast",
        "--connections",
        "200",
        "--rates",
        "400",
        "--step-secs",
        "1",
    ]);
    let s = &r.steps[0];
    assert_eq!(s.received, 400, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders), (0, 0, 0));
}

#[test]
fn batching_null_gateway_delivers_everything_in_order() {
    // The fair ceiling's shared log and sweeper: every broadcast reaches every connection in
    // order, at a rate where frames pile up between sweeps (1 KB at 400/s × 200 connections,
    // 80 MB/s: short writes happen and the connections' tasks take over).
    let (srv, addr) = null(&["--batching"]);
    let pid = srv.0.id().to_string();
    let r = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--connections",
        "200",
        "--rates",
        "40,400",
        "--payload-bytes",
        "1024",
        "--step-secs",
        "1",
        "--drain-secs",
        "5",
        "--p99-limit-ms",
        "10000",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r.connected, 200, "{r:?}");
    for s in &r.steps {
        assert_eq!(s.received, s.sent * CONNS, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders), (0, 0, 0), "{s:?}");
    }
    // Unicast on the same server: written directly from the publishing task.
    let u = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--mode",
        "unicast",
        "--connections",
        "200",
        "--user-offset",
        "1000",
        "--rates",
        "400",
        "--step-secs",
        "1",
    ]);
    let s = &u.steps[0];
    assert_eq!(s.received, 400, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders), (0, 0, 0));
}

#[test]
fn batching_null_gateway_loss_is_reported() {
    let (_srv, addr) = null(&["--batching", "--drop-seq", "7"]);
    let r = bench(&[
        "--server",
        &addr,
        "--dialect",
        "raw",
        "--publisher",
        "peer",
        "--connections",
        "200",
        "--rates",
        "40",
        "--step-secs",
        "1",
    ]);
    let s = &r.steps[0];
    assert_eq!((s.lost, s.gaps), (CONNS, CONNS), "{s:?}");
    assert_eq!(s.received, 39 * CONNS);
}

/// The `herald` binary of this workspace, found the way cargo builds it (`HERALD_BIN`, else
/// `cargo metadata`'s target directory, which honours `CARGO_TARGET_DIR`), and built when
/// missing: `cargo test -p herald-bench` alone does not build other packages' binaries.
fn herald_binary() -> PathBuf {
    let bin = herald_testkit::HeraldBin::locate(None);
    bin.build_if_missing();
    bin.path
}

#[test]
fn herald_broadcast_and_unicast_smoke() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/herald-bench.toml");
    let mut cmd = Command::new(herald_binary());
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("HERALD_LOG", "warn");
    let (srv, addr) = start(cmd);
    let pid = srv.0.id().to_string();
    let r = bench(&[
        "--server",
        &addr,
        "--connections",
        "300",
        "--rates",
        "20,40",
        "--step-secs",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(r.connected, 300, "{r:?}");
    for s in &r.steps {
        assert_eq!(s.received, s.sent * 300, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
    }
    assert!(r.kb_per_connection > 0.0);
    let u = bench(&[
        "--server",
        &addr,
        "--mode",
        "unicast",
        "--connections",
        "300",
        "--user-offset",
        "1000",
        "--rates",
        "600",
        "--step-secs",
        "1",
    ]);
    let s = &u.steps[0];
    assert_eq!(s.received, 600, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));

    // The same two loads over Server-Sent Events: broadcast asks for the channel at connect
    // (`?channel=`), unicast relies on the auto-subscribed per-user channel.
    let b = bench(&[
        "--server",
        &addr,
        "--dialect",
        "sse",
        "--connections",
        "300",
        "--user-offset",
        "2000",
        "--rates",
        "20,40",
        "--step-secs",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(b.connected, 300, "{b:?}");
    assert_eq!(b.steps.len(), 2);
    for s in &b.steps {
        assert_eq!(s.received, s.sent * 300, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
    }
    let u = bench(&[
        "--server",
        &addr,
        "--dialect",
        "sse",
        "--mode",
        "unicast",
        "--connections",
        "300",
        "--user-offset",
        "3000",
        "--rates",
        "600",
        "--step-secs",
        "1",
    ]);
    let s = &u.steps[0];
    assert_eq!(s.received, 600, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));

    // And over Herald's Socket.IO endpoint: broadcast subscribers send a `subscribe` event and
    // wait for its ack, unicast relies on the auto-subscribed per-user channel.
    let b = bench(&[
        "--server",
        &addr,
        "--dialect",
        "herald-socketio",
        "--connections",
        "300",
        "--user-offset",
        "4000",
        "--rates",
        "20,40",
        "--step-secs",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(b.connected, 300, "{b:?}");
    assert_eq!(b.steps.len(), 2);
    for s in &b.steps {
        assert_eq!(s.received, s.sent * 300, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
    }
    let u = bench(&[
        "--server",
        &addr,
        "--dialect",
        "herald-socketio",
        "--mode",
        "unicast",
        "--connections",
        "300",
        "--user-offset",
        "5000",
        "--rates",
        "600",
        "--step-secs",
        "1",
    ]);
    let s = &u.steps[0];
    assert_eq!(s.received, 600, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
}
