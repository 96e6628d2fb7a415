//! The null gateway: the machine's ceiling for WebSocket fan-out.
//!
//! It does the least any gateway must do: accept upgrades, and on a publish trigger frame the
//! payload once and write those bytes straight into every socket from the publishing task
//! (`try_write`: one syscall per socket, no task wake-up), queueing only what the kernel does
//! not take at once. No auth, no JSON on the delivery path, no
//! per-connection protocol. Whatever a real gateway achieves is measured against this.
//!
//! With `--batching` it writes the way Herald does instead: the publisher only appends the frame
//! to each connection's queue and wakes its task, which drains everything queued since its last
//! wake-up in one write. Fewer syscalls per delivery under load, one task wake-up per
//! connection per burst: the fair ceiling for a gateway that batches (issue 16), where the
//! default (naive) mode is the ceiling for one syscall per frame.
//!
//! Triggers: `POST /publish` (body: the payload, to every connection) and `POST /publish/batch`
//! (`[{"user":"u1","data":{…}}, …]`, each to that user's connection). `--drop-seq N` silently
//! skips the N-th broadcast (0-based) so the load generator's loss detection can be checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Queue frames per connection and let each connection's task write all that is queued
    /// with one syscall per wake-up (Herald's model), instead of one `try_write` per frame
    /// from the publishing task.
    #[arg(long)]
    pub batching: bool,
}

struct State {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    users: Mutex<HashMap<String, Arc<Conn>>>,
    next_id: AtomicU64,
    published: AtomicU64,
    drop_seq: Option<u64>,
    batching: bool,
}

/// One upgraded socket. The publisher writes to it directly (`try_write`, no task wake-up);
/// only what the kernel does not take right away is queued for the connection's own task.
struct Conn {
    stream: TcpStream,
    pending: Mutex<Vec<u8>>,
    wake: Notify,
}

impl Conn {
    fn send(&self, frame: &[u8], batching: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if batching {
            // Queue only; the connection's task writes the whole queue at its next wake-up.
            let was_empty = pending.is_empty();
            pending.extend_from_slice(frame);
            if was_empty {
                self.wake.notify_one();
            }
            return;
        }
        self.send_now(pending, frame);
    }

    /// The naive path: one `try_write` per frame from the publishing task.
    fn send_now(&self, mut pending: std::sync::MutexGuard<'_, Vec<u8>>, frame: &[u8]) {
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
}

pub async fn serve(listener: TcpListener, args: NullArgs) {
    let state = Arc::new(State {
        conns: Mutex::default(),
        users: Mutex::default(),
        next_id: AtomicU64::new(0),
        published: AtomicU64::new(0),
        drop_seq: args.drop_seq,
        batching: args.batching,
    });
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
                    let conns: Vec<Arc<Conn>> = lock(&state.conns).values().cloned().collect();
                    for c in conns {
                        c.send(&frame, state.batching);
                    }
                }
                ("200 OK", "{}")
            }
            ("POST", "/publish/batch") => match serde_json::from_slice::<Vec<Item<'_>>>(&body) {
                Ok(items) => {
                    for item in items {
                        let conn = lock(&state.users).get(item.user).cloned();
                        if let Some(c) = conn {
                            c.send(
                                &server_text_frame(item.data.get().as_bytes()),
                                state.batching,
                            );
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

/// After the upgrade: discard what the client sends, flush what the publisher could not write.
async fn websocket(stream: TcpStream, user: String, state: Arc<State>) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let conn = Arc::new(Conn {
        stream,
        pending: Mutex::default(),
        wake: Notify::new(),
    });
    lock(&state.conns).insert(id, conn.clone());
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
    // Batching: each wake-up takes the whole queue out of the lock (the publisher keeps
    // appending to a fresh one) and writes it with as few syscalls as the kernel allows; the
    // buffer is dropped afterwards, so an idle connection holds none.
    let batch_flusher = async {
        loop {
            conn.wake.notified().await;
            let batch = std::mem::take(&mut *lock(&conn.pending));
            let mut at = 0;
            while at < batch.len() {
                if conn.stream.writable().await.is_err() {
                    return;
                }
                match conn.stream.try_write(&batch[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    };
    let batching = state.batching;
    tokio::select! {
        _ = reader => {}
        _ = flusher, if !batching => {}
        _ = batch_flusher, if batching => {}
    }
    lock(&state.conns).remove(&id);
    if !user.is_empty() {
        lock(&state.users).remove(&user);
    }
}
