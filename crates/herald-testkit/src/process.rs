//! A real `herald serve` process owned by a test.
//!
//! One harness instead of a copy per test file: it writes the config, strips the developer's
//! own `HERALD_*` variables (a `HERALD_API__KEY` in someone's shell must not change a test),
//! binds port 0 (or a given port, to restart where clients expect it), reads the address from
//! the first stdout line, and keeps the last lines of stderr so a gateway that dies says why.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::binary::HeraldBin;

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 40;
/// How long `serve` may take to print its address (a cold debug binary validating schemas).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment a test's `herald` runs with: this process's, minus every `HERALD_*`
/// variable (config overrides, `HERALD_CONFIG`), with `HERALD_LOG=warn` unless the developer
/// asked for more. Use it for one-shot commands too (`herald check`, `herald token`).
pub fn herald_command(bin: &HeraldBin) -> Command {
    let mut cmd = Command::new(&bin.path);
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("HERALD_")
        {
            cmd.env_remove(&name);
        }
    }
    cmd.env(
        "HERALD_LOG",
        std::env::var_os("HERALD_LOG").unwrap_or_else(|| "warn".into()),
    );
    cmd
}

/// How to start a [`HeraldProcess`]; see [`HeraldProcess::builder`].
#[derive(Debug)]
pub struct HeraldBuilder {
    bin: Option<HeraldBin>,
    config: Option<String>,
    config_path: Option<PathBuf>,
    dir: Option<PathBuf>,
    files: Vec<(PathBuf, String)>,
    env: Vec<(String, String)>,
    port: Option<u16>,
    wrapper: Vec<String>,
}

impl HeraldBuilder {
    /// The binary to run (default: [`HeraldBin::locate`] without `CARGO_BIN_EXE_herald`).
    pub fn bin(mut self, bin: HeraldBin) -> Self {
        self.bin = Some(bin);
        self
    }

    /// Runs with an existing config file instead of writing one.
    pub fn config_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    /// Runs in this directory (relative `schema_file`s resolve here) instead of a fresh
    /// temporary one. The config text, if any, is written to `herald.toml` in it.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Writes another file (a schema, a key) into the process's directory before starting.
    pub fn file(mut self, relative: impl Into<PathBuf>, contents: impl Into<String>) -> Self {
        self.files.push((relative.into(), contents.into()));
        self
    }

    /// Sets an environment variable for the process (after the `HERALD_*` clean-up).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Binds this port on 127.0.0.1 instead of a free one (through `HERALD_SERVER__LISTEN`,
    /// so the config text needs no `listen`).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs the binary under another program, e.g. `["taskset", "-c", "0"]` to pin it.
    pub fn wrapper<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.wrapper = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Starts the process and waits for its address; panics with the reason when it cannot.
    pub fn start(self) -> HeraldProcess {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the process and waits for its address. The error says why it did not start:
    /// the binary and where its path came from, the exit code, the last lines of its output.
    pub fn try_start(self) -> Result<HeraldProcess, String> {
        let bin = self.bin.clone().unwrap_or_else(|| HeraldBin::locate(None));
        let (dir, tempdir) = match &self.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        if let Some(text) = &self.config {
            std::fs::write(dir.join("herald.toml"), text)
                .map_err(|e| format!("writing herald.toml: {e}"))?;
        }
        for (rel, contents) in &self.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{e}"))?;
            }
            std::fs::write(&path, contents)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        let config = self
            .config_path
            .clone()
            .unwrap_or_else(|| dir.join("herald.toml"));
        let mut process = HeraldProcess {
            bin,
            dir,
            _tempdir: tempdir,
            config,
            env: self.env,
            wrapper: self.wrapper,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: Arc::default(),
        };
        process.spawn(self.port.unwrap_or(0))?;
        Ok(process)
    }
}

/// A running `herald serve`, killed (SIGKILL) on drop so a failing assertion never leaks it;
/// when the test is failing, the drop prints the last lines of its log. Set
/// `TEST_HERALD_VERBOSE=1` (as for the TypeScript tests) to see every line as it comes.
pub struct HeraldProcess {
    bin: HeraldBin,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    config: PathBuf,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl std::fmt::Debug for HeraldProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeraldProcess")
            .field("addr", &self.addr)
            .field("bin", &self.bin.path)
            .finish_non_exhaustive()
    }
}

impl HeraldProcess {
    /// A builder for a process running `config` (TOML text written to `herald.toml`).
    pub fn builder(config: impl Into<String>) -> HeraldBuilder {
        HeraldBuilder {
            config: Some(config.into()),
            ..Self::builder_without_config()
        }
    }

    /// A builder that writes no config: use [`HeraldBuilder::config_path`] or
    /// [`HeraldBuilder::dir`] with a `herald.toml` already there.
    pub fn builder_without_config() -> HeraldBuilder {
        HeraldBuilder {
            bin: None,
            config: None,
            config_path: None,
            dir: None,
            files: Vec::new(),
            env: Vec::new(),
            port: None,
            wrapper: Vec::new(),
        }
    }

    /// Starts `config` on a free port with the located binary.
    pub fn start(config: impl Into<String>) -> HeraldProcess {
        Self::builder(config).start()
    }

    fn spawn(&mut self, port: u16) -> Result<(), String> {
        let mut cmd = if self.wrapper.is_empty() {
            herald_command(&self.bin)
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(&self.bin.path);
            // The same clean environment as `herald_command`.
            let clean = herald_command(&self.bin);
            for (k, v) in clean.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .env("HERALD_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "herald did not start: cannot execute it: {e}\n  binary: {}",
                self.bin.describe()
            )
        })?;
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let stderr = child.stderr.take().expect("piped");
        let tail = self.stderr.clone();
        let echo = std::env::var_os("TEST_HERALD_VERBOSE").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[herald] {line}");
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        // The first stdout line is the address; the rest is drained so the pipe never fills.
        let (tx, rx) = mpsc::channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = stdout.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut stdout.by_ref(), &mut std::io::sink());
        });
        let line = rx.recv_timeout(START_TIMEOUT);
        self.child = Some(child);
        let why = match line {
            Ok(line) => match line
                .trim()
                .strip_prefix("herald listening on http://")
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                Some(addr) => {
                    self.addr = addr;
                    return Ok(());
                }
                None if line.is_empty() => "it closed stdout without printing its address".into(),
                None => format!("unexpected first line {line:?}"),
            },
            Err(_) => format!("no address printed within {START_TIMEOUT:?}"),
        };
        Err(self.start_failure(&why))
    }

    /// The error for a process that did not come up: waits briefly for its exit code and
    /// the rest of its output, then kills it.
    fn start_failure(&mut self, why: &str) -> String {
        let status = self.wait_exit(Duration::from_secs(2));
        self.kill();
        // Let the stderr reader catch the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let exit = match status {
            Some(s) => match s.code() {
                Some(code) => format!("exited with code {code}"),
                None => format!("ended by {s}"),
            },
            None => "still running (killed)".into(),
        };
        let tail = self.stderr_tail();
        let tail = if tail.is_empty() {
            "    (no output)".to_owned()
        } else {
            tail.lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "herald did not start: {why}; {exit}\n  binary: {}\n  config: {}\n  last lines of its output:\n{tail}",
            self.bin.describe(),
            self.config.display()
        )
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://<addr>/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The directory it runs in (its `herald.toml`, schemas).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binary it runs.
    pub fn bin(&self) -> &HeraldBin {
        &self.bin
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines it wrote to stderr (its logs), oldest first.
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGKILL and reap: no goodbye to its clients, its in-memory history is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: a graceful shutdown. Follow with [`HeraldProcess::wait_exit`].
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return None,
            }
        }
    }

    /// Kills it and starts a new process on the same port: a new epoch for every channel on
    /// the memory broker, while clients reconnect to the address they know.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.addr.port();
        self.spawn(port).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the gateway said, without TEST_HERALD_VERBOSE.
        if std::thread::panicking() {
            let tail = self.stderr_tail();
            if !tail.is_empty() {
                eprintln!("--- last lines of herald at {} ---\n{tail}", self.addr);
            }
        }
    }
}
