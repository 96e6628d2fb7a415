//! The load client's permessage-deflate (RFC 7692) against a real implementation: the Node
//! `ws` peer of the suite (`bench/peers/ws/server.js`) with `PERMESSAGE_DEFLATE=1`, which keeps
//! its compression context between messages, so the client's per-connection inflater is
//! exercised on a window that carries over. Every publication must arrive intact (the stamp
//! parses out of the inflated text), the report must count the negotiated connections, and
//! the bytes on the wire must be the compressed ones. The same peer without the variable must
//! decline the offer and run as it always did.
//!
//! Needs `node` on the PATH; the peer's `node_modules` are installed with `npm ci` when
//! missing, as `bench/run-suite.sh` does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use herald_bench::load::Report;

/// A child process killed on drop, so a failing assertion never leaks a server.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers/ws")
}

/// Installs the peer's `node_modules` once per test process.
///
/// The tests of this file run on parallel threads and both start the peer: two `npm ci` at
/// once in one directory delete and rewrite each other's files, and a peer started meanwhile
/// loads half of one `ws` release and half of another (CI saw `isBlob is not a function`). The
/// lock makes the second test wait for the first one's install; the marker is the hidden
/// lockfile npm writes when an install has finished, so an install killed halfway is redone.
fn ensure_node_modules(dir: &Path) {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if dir.join("node_modules/.package-lock.json").is_file() {
        return;
    }
    let ok = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("npm runs (Node.js is needed for this test)")
        .success();
    assert!(ok, "npm ci in {}", dir.display());
}

/// Starts the `ws` peer, with permessage-deflate or not; returns it with its address.
fn ws_peer(deflate: bool) -> (Proc, String) {
    let dir = peer_dir();
    ensure_node_modules(&dir);
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("server.js"));
    if deflate {
        cmd.env("PERMESSAGE_DEFLATE", "1");
    } else {
        cmd.env_remove("PERMESSAGE_DEFLATE");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
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

fn bench(addr: &str, extra: &[&str]) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "run",
            "--json",
            "--server",
            addr,
            "--dialect",
            "raw",
            "--publisher",
            "peer",
            "--connections",
            "50",
            "--payload-bytes",
            "1024",
            "--payload-kind",
            "json",
            "--rates",
            "20,40",
            "--step-secs",
            "1",
            "--settle-secs",
            "0.2",
        ])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("herald-bench runs");
    assert!(out.status.success(), "herald-bench failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a report")).expect("a JSON report")
}

fn assert_all_delivered(r: &Report) {
    assert_eq!(r.connected, 50, "{r:?}");
    assert_eq!(r.steps.len(), 2, "{r:?}");
    for s in &r.steps {
        assert_eq!(s.received, s.sent * 50, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
    }
}

#[test]
fn compressed_deliveries_from_node_ws_are_inflated_and_counted() {
    let (_srv, addr) = ws_peer(true);
    let r = bench(&addr, &["--permessage-deflate"]);
    assert_all_delivered(&r);
    assert_eq!(r.deflate_negotiated, 50, "every connection negotiated");
    for s in &r.steps {
        // 1 KB of JSON with a warm window: well under the 1028 bytes of the plain frame.
        assert!(
            s.wire_bytes_per_delivery > 100.0 && s.wire_bytes_per_delivery < 800.0,
            "{s:?}"
        );
    }

    // Not offering: the same server sends plain frames, 1024 bytes of payload + 4 of header.
    let plain = bench(&addr, &[]);
    assert_all_delivered(&plain);
    assert_eq!(plain.deflate_negotiated, 0);
    for s in &plain.steps {
        assert_eq!(s.wire_bytes_per_delivery, 1028.0, "{s:?}");
    }
}

#[test]
fn the_default_ws_peer_declines_the_offer() {
    let (_srv, addr) = ws_peer(false);
    let r = bench(&addr, &["--permessage-deflate"]);
    assert_all_delivered(&r);
    assert_eq!(r.deflate_negotiated, 0);
    for s in &r.steps {
        assert_eq!(s.wire_bytes_per_delivery, 1028.0, "{s:?}");
    }
}
