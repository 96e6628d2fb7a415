//! Redis deployments past one server, started by a test from Debian's `redis-server` on free
//! ports: a 3-master/3-replica [`RedisCluster`], a Sentinel-managed master with one replica
//! ([`RedisSentinel`]), and a TLS-only server with a CA generated for the test
//! ([`RedisTls`]). Timeouts are low (a failover takes one to two seconds) and nothing is
//! persisted. Every process is SIGKILLed on drop. They are driven with `redis-cli`, so the
//! test kit needs no Redis client library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// One `redis-server` process with its arguments, restartable on the same port.
struct Proc {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    fn spawn(port: u16, args: Vec<String>) -> Proc {
        let mut p = Proc {
            port,
            args,
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_port(self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not start on port {port}");
}

fn strings<const N: usize>(a: [&str; N]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `redis-cli -p <port> <args…>` and returns its output (empty when it failed).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Makes the Redis on `port` log every command it runs from now on (its slowlog with a zero
/// threshold, room for 100,000 entries), forgetting what it had logged:
/// [`redis_logged_commands`] then lists them. For tests that count what a client sent.
pub fn redis_log_every_command(port: u16) {
    for args in [
        ["config", "set", "slowlog-log-slower-than", "0"],
        ["config", "set", "slowlog-max-len", "100000"],
    ] {
        assert_eq!(redis_cli(port, &args).trim(), "OK", "redis-cli {args:?}");
    }
    assert_eq!(redis_cli(port, &["slowlog", "reset"]).trim(), "OK");
}

/// The commands the Redis on `port` ran since [`redis_log_every_command`], oldest first, each
/// as its arguments (Redis keeps the first 32 arguments of a command and 128 bytes of each).
pub fn redis_logged_commands(port: u16) -> Vec<Vec<String>> {
    let out = redis_cli(port, &["--json", "slowlog", "get", "-1"]);
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("SLOWLOG GET: {e}: {out}"));
    let mut commands: Vec<(u64, Vec<String>)> = entries
        .iter()
        .map(|e| {
            let args = e[3]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (e[0].as_u64().unwrap_or_default(), args)
        })
        .collect();
    // Newest first in the log; ids grow.
    commands.sort_by_key(|(id, _)| *id);
    commands.into_iter().map(|(_, args)| args).collect()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of three masters, each with one replica (six `redis-server` processes),
/// `cluster-node-timeout` 500 ms so a killed master's replica takes over in one to two seconds.
pub struct RedisCluster {
    nodes: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create … --cluster-replicas 1`
    /// and waits until every node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let port = free_port();
            // The bus port defaults to port + 10000, which may be taken or past 65535.
            let bus = free_port();
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut args = strings([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "500",
                // Any replica may take over, however long since it heard from its master.
                "--cluster-replica-validity-factor",
                "0",
            ]);
            args.extend([
                "--port".into(),
                port.to_string(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                node_dir.join("nodes.conf").display().to_string(),
                "--dir".into(),
                node_dir.display().to_string(),
            ]);
            nodes.push(Proc::spawn(port, args));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and three masters serve slots.
    pub fn wait_ok(&self) {
        wait_until("cluster_state:ok", Duration::from_secs(20), || {
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| redis_cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
                && self.masters().len() == 3
        });
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Ports of the nodes that are masters serving slots now, as a live node sees it.
    pub fn masters(&self) -> Vec<u16> {
        let Some(live) = self.nodes.iter().find(|n| n.child.is_some()) else {
            return Vec::new();
        };
        redis_cli(live.port, &["cluster", "nodes"])
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
            })
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect()
    }

    /// The hash slot of a key (or of a pub/sub channel name).
    pub fn slot(&self, key: &str) -> u16 {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a node");
        redis_cli(live.port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot")
    }

    /// The port of the master serving `slot` now (each master lists its own slot ranges
    /// on its `myself` line of `CLUSTER NODES`).
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        for port in self.masters() {
            let nodes = redis_cli(port, &["cluster", "nodes"]);
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
                continue;
            };
            let owns = me
                .split_whitespace()
                .skip(8)
                .any(|range| match range.split_once('-') {
                    Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    },
                    None => range.parse::<u16>().ok() == Some(slot),
                });
            if owns {
                return port;
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// SIGKILLs the node on `port` (no goodbye): its replica takes over after the node timeout.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// A counter from `CLUSTER INFO` summed over the live nodes, e.g.
    /// `cluster_stats_messages_publish_sent` (classic `PUBLISH` broadcast over the bus).
    pub fn info_sum(&self, field: &str) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                redis_cli(n.port, &["cluster", "info"])
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{field}:")))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A master, one replica and one Sentinel watching them as `herald-master` (quorum 1,
/// `down-after-milliseconds` 500): a killed master's replica is promoted within a few seconds.
pub struct RedisSentinel {
    master: Proc,
    replica: Proc,
    sentinel: Proc,
    _dir: tempfile::TempDir,
}

/// The master's name in the test Sentinel's configuration.
pub const SENTINEL_MASTER: &str = "herald-master";

impl RedisSentinel {
    /// Starts master and replica, waits for the replica to sync, then starts the Sentinel and
    /// waits until it knows the replica.
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = strings([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // DEBUG CHANGE-REPL-ID from the test: what a promotion does to a master's id.
            "--enable-debug-command",
            "local",
        ]);
        let server = |port: u16, extra: &[String]| {
            let mut args = base.clone();
            args.extend(["--port".into(), port.to_string()]);
            args.extend(extra.iter().cloned());
            args.extend(["--dir".into(), dir.path().display().to_string()]);
            // Each writes its own files.
            args.extend(["--dbfilename".into(), format!("dump-{port}.rdb")]);
            Proc::spawn(port, args)
        };
        let master = server(free_port(), &[]);
        let replica = server(
            free_port(),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        wait_until("the replica to sync", Duration::from_secs(10), || {
            redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
        });
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("sentinel.conf");
        // `redis-server --sentinel` is what `redis-sentinel` runs.
        let sentinel = Proc::spawn(port, vec![conf.display().to_string(), "--sentinel".into()]);
        let s = RedisSentinel {
            master,
            replica,
            sentinel,
            _dir: dir,
        };
        wait_until(
            "the sentinel to know the replica",
            Duration::from_secs(15),
            || {
                redis_cli(s.sentinel.port, &["sentinel", "replicas", SENTINEL_MASTER])
                    .contains(&s.replica.port.to_string())
            },
        );
        s
    }

    /// `redis+sentinel://127.0.0.1:<sentinel>/herald-master`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{SENTINEL_MASTER}",
            self.sentinel.port
        )
    }

    /// The master's port, as the Sentinel says now.
    pub fn master_port(&self) -> Option<u16> {
        redis_cli(
            self.sentinel.port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
        )
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
    }

    /// SIGKILLs the current master (no goodbye); the Sentinel promotes the replica.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port().expect("a master");
        for p in [&mut self.master, &mut self.replica] {
            if p.port == port {
                p.kill();
            }
        }
        port
    }
}

/// A `redis-server` that speaks only TLS (`--port 0 --tls-port`), with a CA, a server
/// certificate (for `localhost` and 127.0.0.1) and a client certificate generated by
/// `openssl` for this test. It asks clients for a certificate (`tls-auth-clients yes`).
pub struct RedisTls {
    pub port: u16,
    _server: Proc,
    dir: tempfile::TempDir,
}

impl RedisTls {
    pub fn start() -> RedisTls {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &["req", "-x509", "-nodes", "-days", "1"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt"],
                &["-subj", "/CN=herald-test-ca"],
            ]
            .concat(),
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("ext file");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext file");
        for (who, subj) in [("server", "/CN=localhost"), ("client", "/CN=herald")] {
            openssl(
                &[
                    &["req", "-nodes"][..],
                    &ec,
                    &[
                        "-keyout",
                        &format!("{who}.key"),
                        "-out",
                        &format!("{who}.csr"),
                    ],
                    &["-subj", subj],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        let port = free_port();
        let path = |f: &str| d.join(f).display().to_string();
        let mut args = strings([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        args.extend([
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--dir".into(),
            path(""),
        ]);
        let server = Proc::spawn(port, args);
        RedisTls {
            port,
            _server: server,
            dir,
        }
    }

    /// `rediss://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// The directory holding `ca.crt`, `client.crt` and `client.key`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in [`RedisTls::dir`].
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
