//! The Pusher dialect against the real Sockudo binary: connect, private-channel auth, public
//! broadcast and per-user unicast through the signed HTTP API, every delivery counted. Sockudo
//! is not built by `cargo test` (it takes ~20 minutes and protoc): the test runs when the
//! binary is there (`SOCKUDO_BIN`, else where `bench/run-suite.sh` installs it,
//! `bench/peers/sockudo/root/bin/sockudo`) and otherwise says why it skipped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_bench::load::Report;

/// A child process killed on drop, so a failing assertion never leaks a server.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sockudo_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("SOCKUDO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("bench/peers/sockudo/root/bin/sockudo"));
    bin.is_file().then_some(bin)
}

/// Starts Sockudo with the suite's config on a free port; returns it and its address.
fn start(bin: &PathBuf) -> (Proc, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg("--config")
        .arg(repo().join("bench/peers/sockudo/config.toml"))
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("RUST_LOG", "warn")
        .env("LOG_COLORS_ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sockudo starts");
    let proc = Proc(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "sockudo did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, addr)
}

fn bench(addr: &str, args: &[&str]) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["run", "--json", "--server", addr])
        .args(["--dialect", "pusher", "--publisher", "pusher"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("herald-bench runs");
    assert!(out.status.success(), "herald-bench failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a report")).expect("a JSON report")
}

#[test]
fn pusher_dialect_against_sockudo() {
    let Some(bin) = sockudo_binary() else {
        eprintln!(
            "skipped: no sockudo binary (set SOCKUDO_BIN, or run bench/run-suite.sh --peers \
             sockudo once to install it into bench/peers/sockudo/root)"
        );
        return;
    };
    let (srv, addr) = start(&bin);
    let pid = srv.0.id().to_string();

    // Broadcast on the public channel; each connection also holds its private user channel.
    let b = bench(
        &addr,
        &[
            "--connections",
            "200",
            "--rates",
            "20,40",
            "--step-secs",
            "1",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(b.connected, 200, "{b:?}");
    assert_eq!(b.steps.len(), 2);
    for s in &b.steps {
        assert_eq!(s.accepted, s.sent, "signed publishes accepted: {s:?}");
        assert_eq!(s.received, s.sent * 200, "{s:?}");
        assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));
    }
    assert!(
        b.kb_per_connection > 0.0,
        "server memory is read from /proc"
    );

    // Unicast to each user's private channel through the batch endpoint.
    let u = bench(
        &addr,
        &[
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
        ],
    );
    let s = &u.steps[0];
    assert_eq!(s.received, 400, "{s:?}");
    assert_eq!((s.lost, s.gaps, s.reorders, s.publish_errors), (0, 0, 0, 0));

    // The private-channel signature is checked: with another secret every subscription fails.
    let w = bench(
        &addr,
        &[
            "--mode",
            "idle",
            "--connections",
            "20",
            "--user-offset",
            "2000",
            "--settle-secs",
            "0",
            "--connect-timeout-secs",
            "10",
            "--pusher-secret",
            "not-the-secret",
        ],
    );
    assert_eq!(w.connected, 0, "{w:?}");
    assert_eq!(
        w.connect_errors.get("protocol:subscribe refused"),
        Some(&20),
        "{:?}",
        w.connect_errors
    );
}
