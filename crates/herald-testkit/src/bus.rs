//! Event-bus servers owned by a test: `rabbitmq-server` on free ports, with its state in a
//! temporary directory kept across restarts (a bus restarted mid-stream must still have its
//! messages), and a TCP proxy that can hold a server's replies back. (`nats-server` is
//! [`crate::NatsServer`].)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::free_port;

/// Waits until something accepts TCP connections on `port`; panics naming `what` after `limit`.
fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not start on port {port} within {limit:?}");
}

/// Kills a process group with SIGKILL (a server and every helper it started) and reaps the
/// leader.
fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// A `rabbitmq-server` node owned by a test: free AMQP and distribution ports, a unique node
/// name, and its database, logs, cookie and config in a temporary directory (the machine's
/// own RabbitMQ, its config and its plugins are left alone). It takes seconds to boot: start
/// one per test binary unless the test restarts it.
pub struct RabbitMqServer {
    /// The AMQP port.
    pub port: u16,
    dist_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RabbitMqServer {
    /// Starts a fresh node and waits until its AMQP listener is up.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write");
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").expect("write");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("write");
        let mut s = Self {
            port,
            dist_port,
            child: None,
            dir,
        };
        s.restart();
        s
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL of the node and its helpers. Durable queues and persistent messages stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    /// Starts the node (again) with the same ports, name and database.
    pub fn restart(&mut self) {
        self.kill();
        let d = self.dir.path();
        // A node shared through a `static` is never dropped, so a watchdog shell kills the
        // whole process group (itself, the node, epmd-less helpers) once the test process or
        // the node is gone: a test binary never leaves a RabbitMQ behind.
        let watchdog = format!(
            "/usr/lib/rabbitmq/bin/rabbitmq-server & node=$!; \
             while kill -0 {} 2>/dev/null && kill -0 $node 2>/dev/null; do sleep 1; done; \
             kill -KILL 0",
            std::process::id()
        );
        let child = Command::new("sh")
            .args(["-c", &watchdog])
            .env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env(
                "RABBITMQ_NODENAME",
                format!("herald-test-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(90), "rabbitmq-server");
    }
}

impl Drop for RabbitMqServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a server, for putting a client *between* two steps: with
/// [`HoldProxy::hold_replies`], requests still reach the server (it acts on them) but its
/// replies are held back, as if the client died right after the server did the work.
pub struct HoldProxy {
    /// The port clients connect to.
    pub port: u16,
    hold: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HoldProxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<upstream>`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (hold.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let never = Arc::new(AtomicBool::new(false));
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    never,
                    st.clone(),
                );
                pipe(server, client, h.clone(), st.clone());
            }
        });
        Self { port, hold, stop }
    }

    /// Holds every reply from the server from now on (requests still go through).
    pub fn hold_replies(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// `redis://127.0.0.1:<port>` (for a Redis behind the proxy).
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` → `to` on a thread; while `hold` is set, what is read is kept, never written.
fn pipe(mut from: TcpStream, mut to: TcpStream, hold: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 16 * 1024];
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if hold.load(Ordering::SeqCst) {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
