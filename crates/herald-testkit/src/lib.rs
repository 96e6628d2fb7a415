//! Test support for Herald's integration tests and benchmarks (a dev-dependency only: never
//! in a product crate's `[dependencies]`).
//!
//! - [`HeraldBin`] finds the `herald` binary the way cargo builds it (`HERALD_BIN`, cargo's
//!   `CARGO_BIN_EXE_herald`, else `cargo metadata`'s target directory), and
//!   [`HeraldProcess`] runs it on a free port with a given config, kills or SIGTERMs it, and
//!   says why when it does not start (the path, the exit code, the last lines of stderr).
//! - [`WsClient`] speaks protocol v1 over a real WebSocket, [`Api`] the server API over HTTP,
//!   and [`eventually`] waits for a condition instead of a hand-written sleep loop.
//! - [`RedisServer`] and [`PostgresServer`] start their own servers on free ports (no
//!   persistence), so tests can kill and restart them to prove the gateway survives faults,
//!   and never depend on a server somebody else left running. [`NatsServer`] does the same
//!   for `nats-server -js`, with a JetStream store of its own that survives its restarts
//!   (as a real deployment's does) unless the test wipes it. [`TcpProxy`] stands between
//!   one process and such a server, and can be cut (a network partition) or hold requests
//!   back (a server one latency away).
//!   [`RabbitMqServer`] does the same for RabbitMQ, keeping its data across a restart;
//!   [`HoldProxy`] can hold a server's replies back to stop a client between two steps.
//!   [`RedisCluster`] (3 masters, 3
//!   replicas), [`RedisSentinel`] (master, replica, Sentinel) and [`RedisTls`] (TLS only, a
//!   CA generated for the test) do the same for the topologies past one server.
//!   [`redis_log_every_command`] and [`redis_logged_commands`] count what a client sent.

mod binary;
mod bus;
mod client;
mod process;
mod proxy;
mod redis_topologies;

pub use binary::{BIN_VARS, HeraldBin};
pub use bus::{HoldProxy, RabbitMqServer};
pub use client::{Api, Closed, WsClient, eventually};
pub use process::{HeraldBuilder, HeraldProcess, herald_command};
pub use proxy::TcpProxy;
pub use redis_topologies::{
    RedisCluster, RedisSentinel, RedisTls, SENTINEL_MASTER, redis_cli, redis_log_every_command,
    redis_logged_commands,
};

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` process owned by a test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    durable: bool,
}

impl RedisServer {
    /// Starts a fresh server without persistence on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server whose data survives [`RedisServer::restart`] (and a kill): an
    /// append-only file synced on every write, as a Redis holding a stream of events runs.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            durable,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients). Its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port: empty (as after a restart without
    /// persistence), or with its data when started with [`RedisServer::start_durable`].
    pub fn restart(&mut self) {
        self.kill();
        let aof = if self.durable {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server -js` process owned by a test: a free port, its own JetStream store
/// directory (`-sd`), no cluster.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a fresh server with JetStream on a free port and waits until it answers.
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients). Its JetStream store stays on
    /// disk, so [`NatsServer::restart`] brings the streams back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and deletes its JetStream store: the next start is empty (a NATS
    /// that lost its data).
    pub fn wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.path().join("jetstream"));
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let program = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // Ready once it greets (the INFO line); JetStream is up by then.
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"INFO" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not start on port {}", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server (`initdb` + `pg_ctl`) owned by a test, on a free port, trust auth.
/// As root (CI), it runs as the `postgres` user: Postgres refuses to run as root.
pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_command(tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", tool]);
        c
    } else {
        Command::new(tool)
    }
}

impl PostgresServer {
    /// Creates a cluster and starts it; waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status();
        }
        let status = pg_command("initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb is installed (scripts/test.sh installs postgresql)");
        assert!(status.success(), "initdb failed");
        let mut s = Self {
            port: free_port(),
            dir,
            running: false,
        };
        s.start_again();
        s
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped server again, same data and port.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.path().display()
        );
        let status = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl start failed");
        self.running = true;
    }

    /// Stops the server (fast mode: clients are disconnected, data kept).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
