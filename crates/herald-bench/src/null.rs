//! The null gateway: the machine's ceiling for WebSocket fan-out.
//!
//! It does the least any gateway must do: accept upgrades, and on a publish trigger frame the
//! payload once and hand those bytes to every subscribed socket. No auth, no JSON on the
//! delivery path, no per-connection protocol. Whatever a real gateway achieves is measured
//! against it. It runs in one of two ways:
//!
//! - **naive** (default, suite peer `null`): the publishing task writes the frame straight into
//!   every socket (`try_write`, one syscall per delivery, no task wake-up), queueing only what
//!   the kernel does not take at once. The ceiling for a gateway that writes each frame alone.
//! - **batching** (`--batching`, suite peer `null-batch`): the fair ceiling for Herald's model,
//!   "write as soon as possible, and whatever piled up meanwhile goes out in one write". A
//!   publication only appends its frame (framed once, shared, never copied per connection) to
//!   one broadcast log and answers the publisher at once; a single sweeper task walks every
//!   connection and writes, with one vectored `try_write`, everything that connection is owed:
//!   the log from its cursor to the end. Publications that arrive while a sweep is under way
//!   are picked up by the connections not yet visited and by the next sweep, so under load each
//!   connection gets several frames per syscall; at low rates each gets one frame per syscall as
//!   soon as the sweep reaches it, like the naive mode. No task is woken per delivery, no frame
//!   is copied per connection, no lock is contended (one thread); only a connection whose
//!   kernel buffer is full gets its own task woken, when it becomes writable. Unicast
//!   (`/publish/batch`) is written directly from the publishing task when the connection owes
//!   nothing else: one user's messages are too far apart to coalesce, and a wake-up would only
//!   add cost.
//!
//! Why this is the lower bound for a batching gateway on one core: the irreducible work per
//! delivery is the socket write (the syscall, and on loopback the receiving side's TCP
//! processing, charged to the sender); opportunistic batching divides the syscall part by the
//! number of frames that piled up, and the sweep adds nothing per delivery beyond a cursor
//! compare. Herald does the same writes plus a hub fan-out into per-connection outboxes, one
//! task wake-up per connection per burst, and its protocol; the distance between the two is
//! what those cost. A gateway could spend less CPU only by delaying writes on purpose (Nagle
//! style), trading latency Herald does not trade.
//!
//! Triggers: `POST /publish` (body: the payload, to every connection) and `POST /publish/batch`
//! (`[{"user":"u1","data":{…}}, …]`, each to that user's connection). `--drop-seq N` silently
//! skips the N-th broadcast (0-based) so the load generator's loss detection can be checked.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::wire::{find, server_text_frame};

#[derive(Debug, Clone, clap::Args)]
pub struct NullArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Skip the broadcast with this 0-based index (a deliberate loss, for cross-checking).
    #[arg(long)]
    pub drop_seq: Option<u64>,
    /// Herald's model at its cheapest: broadcasts go to a shared log that one sweeper task
    /// writes to every connection, everything a connection is owed in one vectored write
    /// (see the module docs), instead of one `try_write` per frame from the publishing task.
    #[arg(long)]
    pub batching: bool,
}

/// How many connections the sweeper writes before it yields, so that publish requests are
/// read during a sweep (and their frames join it) rather than after it.
const SWEEP_YIELD_EVERY: usize = 64;

/// Most pieces (frames) in one vectored write; more are written by the next call.
const MAX_IOV: usize = 64;

struct State {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    users: Mutex<HashMap<String, Arc<Conn>>>,
    next_id: AtomicU64,
    published: AtomicU64,
    drop_seq: Option<u64>,
    batching: bool,
    /// Batching: broadcast frames some connection has not been written yet.
    log: Mutex<Log>,
    /// Batching: a frame was appended to the log.
    sweep: Notify,
}

/// The broadcast log of the batching mode: frames by sequence number, from `first` on. Frames
/// every connection has been written are trimmed after each sweep.
#[derive(Default)]
struct Log {
    first: u64,
    frames: VecDeque<Bytes>,
}

impl Log {
    fn end(&self) -> u64 {
        self.first + self.frames.len() as u64
    }
}

/// A copy of the log's frames (reference counts, not bytes) that the sweeper writes from.
struct Snapshot {
    first: u64,
    frames: Vec<Bytes>,
}

impl State {
    fn snapshot(&self) -> Snapshot {
        let log = lock(&self.log);
        Snapshot {
            first: log.first,
            frames: log.frames.iter().cloned().collect(),
        }
    }
}

/// One upgraded socket.
struct Conn {
    stream: TcpStream,
    /// Naive mode: what the kernel did not take at once, flushed by the connection's task.
    pending: Mutex<Vec<u8>>,
    /// Batching mode: what the connection is owed.
    out: Mutex<Out>,
    /// Wakes the connection's task: it has bytes the kernel did not take.
    wake: Notify,
}

/// What a connection of the batching mode is still owed. The runtime has one thread, so the
/// sweeper, the publishing task and the connection's task never hold this at the same time;
/// the lock is for `Send`.
#[derive(Default)]
struct Out {
    /// Sequence number of the next broadcast frame to write.
    next: u64,
    /// Bytes of frame `next` already written (a short write stopped inside it).
    partial: usize,
    /// Unicast frames not written yet (only while the connection is blocked).
    unicast: Vec<u8>,
    /// A write came up short: the connection's task resumes when the socket is writable, and
    /// the sweeper leaves the connection alone until then.
    blocked: bool,
}

/// Writes as much as the kernel takes of what `out` is owed, in byte-stream order: the rest of
/// a broadcast frame begun earlier, queued unicast frames, then the log's frames from
/// `out.next` (one vectored write per [`MAX_IOV`] pieces). `Ok(true)` when all of it went out.
fn flush(stream: &TcpStream, out: &mut Out, log: &Snapshot) -> std::io::Result<bool> {
    if out.next < log.first {
        // Joined after these frames were trimmed (cannot happen: trimming keeps every
        // connection's cursor); start at the log.
        out.next = log.first;
        out.partial = 0;
    }
    loop {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        let mut idx = (out.next - log.first) as usize;
        if out.partial > 0 {
            iov[0] = IoSlice::new(&log.frames[idx][out.partial..]);
            n = 1;
            idx += 1;
        }
        if !out.unicast.is_empty() {
            iov[n] = IoSlice::new(&out.unicast);
            n += 1;
        }
        while n < MAX_IOV && idx < log.frames.len() {
            iov[n] = IoSlice::new(&log.frames[idx]);
            n += 1;
            idx += 1;
        }
        if n == 0 {
            return Ok(true);
        }
        let total: usize = iov[..n].iter().map(|s| s.len()).sum();
        let written = match stream.try_write_vectored(&iov[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        advance(out, log, written);
        if written < total {
            return Ok(false);
        }
    }
}

/// Moves `out`'s cursor past `written` bytes, in the order [`flush`] laid them out.
fn advance(out: &mut Out, log: &Snapshot, mut written: usize) {
    let mut idx = (out.next - log.first) as usize;
    if out.partial > 0 {
        let rest = log.frames[idx].len() - out.partial;
        if written < rest {
            out.partial += written;
            return;
        }
        written -= rest;
        out.partial = 0;
        out.next += 1;
        idx += 1;
    }
    if !out.unicast.is_empty() {
        let took = written.min(out.unicast.len());
        out.unicast.drain(..took);
        written -= took;
        if !out.unicast.is_empty() {
            return;
        }
    }
    while written > 0 {
        let len = log.frames[idx].len();
        if written < len {
            out.partial = written;
            return;
        }
        written -= len;
        out.next += 1;
        idx += 1;
    }
}

impl Conn {
    /// Naive mode: one `try_write` per frame from the publishing task.
    fn send_now(&self, frame: &[u8]) {
        let mut pending = lock(&self.pending);
        if !pending.is_empty() {
            // Keep order: behind what is already waiting.
            pending.extend_from_slice(frame);
            return;
        }
        let written = match self.stream.try_write(frame) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        if written < frame.len() {
            pending.extend_from_slice(&frame[written..]);
            self.wake.notify_one();
        }
    }

    /// Batching mode, unicast: written at once unless the connection is blocked (then queued
    /// for its task, behind what it already owes).
    fn send_unicast(&self, frame: &[u8]) {
        let mut out = lock(&self.out);
        if out.blocked {
            out.unicast.extend_from_slice(frame);
            return;
        }
        // Not blocked: nothing half-written, no unicast queued, so the frame may go first.
        let written = match self.stream.try_write(frame) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        if written < frame.len() {
            out.unicast.extend_from_slice(&frame[written..]);
            out.blocked = true;
            self.wake.notify_one();
        }
    }
}

/// Batching mode: the sweeper. Each pass writes every unblocked connection what it is owed;
/// passes repeat while publications keep arriving, then it waits for the next one. Every
/// [`SWEEP_YIELD_EVERY`] connections it yields, so publish requests are served mid-pass and
/// their frames reach the connections not yet visited in the same pass.
async fn sweeper(state: Arc<State>) {
    loop {
        state.sweep.notified().await;
        loop {
            // Connections that join after `end0` was read start at or past it.
            let end0 = lock(&state.log).end();
            let conns: Vec<Arc<Conn>> = lock(&state.conns).values().cloned().collect();
            let mut snap = state.snapshot();
            let mut keep_from = end0;
            for (i, c) in conns.iter().enumerate() {
                if i % SWEEP_YIELD_EVERY == SWEEP_YIELD_EVERY - 1 {
                    tokio::task::yield_now().await;
                    snap = state.snapshot();
                }
                let mut out = lock(&c.out);
                if !out.blocked {
                    match flush(&c.stream, &mut out, &snap) {
                        Ok(true) => {}
                        // Short write: the connection's task takes over until it drains.
                        Ok(false) => {
                            out.blocked = true;
                            c.wake.notify_one();
                        }
                        // Broken: its reader sees it and unregisters it.
                        Err(_) => {}
                    }
                }
                keep_from = keep_from.min(out.next);
            }
            let mut log = lock(&state.log);
            while log.first < keep_from && !log.frames.is_empty() {
                log.frames.pop_front();
                log.first += 1;
            }
            // Connections visited before a mid-pass refresh may lack what came since `end0`.
            if log.end() == end0 {
                break;
            }
        }
    }
}

pub async fn serve(listener: TcpListener, args: NullArgs) {
    let state = Arc::new(State {
        conns: Mutex::default(),
        users: Mutex::default(),
        next_id: AtomicU64::new(0),
        published: AtomicU64::new(0),
        drop_seq: args.drop_seq,
        batching: args.batching,
        log: Mutex::default(),
        sweep: Notify::new(),
    });
    if args.batching {
        tokio::spawn(sweeper(state.clone()));
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors: keep serving who is connected.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(stream, state.clone()));
    }
}

/// One HTTP/1.1 connection: requests until it upgrades or closes.
async fn handle(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::with_capacity(1024);
    // Heap, not the future's state: an idle upgraded connection should not carry it.
    let mut chunk = vec![0u8; 4096];
    loop {
        let Some(head_end) = read_until_head(&mut stream, &mut buf, &mut chunk).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if method == "GET" && headers.contains_key("sec-websocket-key") {
            let user = target
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("user=")))
                .unwrap_or("")
                .to_string();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                headers["sec-websocket-key"].as_bytes(),
            );
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(resp.as_bytes()).await.is_ok() {
                drop((buf, chunk));
                websocket(stream, user, state).await;
            }
            return;
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        let (status, reply) = match (method, target) {
            ("POST", "/publish") => {
                let n = state.published.fetch_add(1, Ordering::Relaxed);
                if state.drop_seq != Some(n) {
                    let frame = server_text_frame(&body);
                    if state.batching {
                        // Framed once, shared by every connection; the sweeper writes it.
                        lock(&state.log).frames.push_back(Bytes::from(frame));
                        state.sweep.notify_one();
                    } else {
                        let conns: Vec<Arc<Conn>> = lock(&state.conns).values().cloned().collect();
                        for c in conns {
                            c.send_now(&frame);
                        }
                    }
                }
                ("200 OK", "{}")
            }
            ("POST", "/publish/batch") => match serde_json::from_slice::<Vec<Item<'_>>>(&body) {
                Ok(items) => {
                    for item in items {
                        let conn = lock(&state.users).get(item.user).cloned();
                        if let Some(c) = conn {
                            let frame = server_text_frame(item.data.get().as_bytes());
                            if state.batching {
                                c.send_unicast(&frame);
                            } else {
                                c.send_now(&frame);
                            }
                        }
                    }
                    ("200 OK", "{}")
                }
                Err(_) => ("400 Bad Request", r#"{"error":"bad batch"}"#),
            },
            _ => ("404 Not Found", r#"{"error":"not found"}"#),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[derive(Deserialize)]
struct Item<'a> {
    user: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn read_until_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<usize> {
    loop {
        if let Some(pos) = find(buf, b"\r\n\r\n") {
            return Some(pos);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match stream.read(chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// After the upgrade: discard what the client sends, write what the publisher (naive) or the
/// sweeper (batching) could not.
async fn websocket(stream: TcpStream, user: String, state: Arc<State>) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        stream,
        pending: Mutex::default(),
        out: Mutex::default(),
        wake: Notify::new(),
    });
    {
        // Under the log's lock: the sweeper trims up to the cursors of the connections it saw,
        // and a connection it did not see starts at the end it read.
        let log = lock(&state.log);
        lock(&conn.out).next = log.end();
        lock(&state.conns).insert(id, conn.clone());
    }
    if !user.is_empty() {
        lock(&state.users).insert(user.clone(), conn.clone());
    }
    let reader = async {
        let mut sink = [0u8; 256];
        loop {
            if conn.stream.readable().await.is_err() {
                return;
            }
            match conn.stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let flusher = async {
        loop {
            conn.wake.notified().await;
            loop {
                if conn.stream.writable().await.is_err() {
                    return;
                }
                let mut pending = lock(&conn.pending);
                if pending.is_empty() {
                    break;
                }
                match conn.stream.try_write(&pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    };
    // Batching: woken only after a short write; writes what the connection owes whenever the
    // socket is writable, until it owes nothing, then hands it back to the sweeper.
    let unblocker = async {
        loop {
            conn.wake.notified().await;
            loop {
                if conn.stream.writable().await.is_err() {
                    return;
                }
                let snap = state.snapshot();
                let mut out = lock(&conn.out);
                match flush(&conn.stream, &mut out, &snap) {
                    Ok(true) => {
                        out.blocked = false;
                        break;
                    }
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        }
    };
    let batching = state.batching;
    tokio::select! {
        _ = reader => {}
        _ = flusher, if !batching => {}
        _ = unblocker, if batching => {}
    }
    lock(&state.conns).remove(&id);
    if !user.is_empty() {
        lock(&state.users).remove(&user);
    }
}
