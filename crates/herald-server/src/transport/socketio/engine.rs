//! The Engine.IO v4 wire of one Socket.IO connection: HTTP long-polling, WebSocket, and the
//! upgrade from one to the other.
//!
//! An [`Engine`] is owned by the connection's task (later by its session's transport) and
//! reads and writes Engine.IO packets as text, whatever the wire underneath:
//!
//! - **WebSocket**: one packet per text message, binary messages are binary packets.
//! - **Polling**: the requests of the connection reach the engine through its [`Shared`]
//!   half, found by `sid` in [`Engines`]. A `POST` body (packets joined by `\x1e`) goes to the
//!   engine's inbox; packets the engine writes wait in `Shared::out` until a `GET` takes them.
//!   A write returns once a poll took it (the long-poll's backpressure, like a TCP write that
//!   blocks), so the session's outbox stays where the slow-consumer policy looks.
//! - **Upgrade** (polling → WebSocket): the probe runs in the upgrade request's own task
//!   (`2probe` → `3probe`, then every pending poll is answered with a `6` noop so the client
//!   can pause polling, then `5`); the socket is then handed to the engine, which switches and
//!   writes there whatever no poll had taken.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_core::protocol::Goodbye;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::packet::split_payload;
use crate::transport::framing::OpCode;
use crate::transport::ws::{self, Socket, WsRead};

/// A write that no poll (or WebSocket) takes for this long means the client is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing waits for the last packets to be taken and the WebSocket close to be
/// answered.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// POST bodies waiting for the engine at most; a further POST waits for room.
const INBOX: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks (queues, flags): still consistent after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This node's polling engines by Engine.IO `sid`: how the requests of a polling connection,
/// and its upgrade, find it. WebSocket-only connections are not listed (nothing routes to
/// them).
#[derive(Debug, Default)]
pub struct Engines {
    map: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
}

impl Engines {
    /// The engine with this sid, if it lives on this node.
    pub fn get(&self, sid: &str) -> Option<Arc<Shared>> {
        lock(&self.map).get(sid).cloned()
    }

    /// Number of polling engines (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True when no polling engine lives on this node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, shared: Arc<Shared>) {
        lock(&self.map).insert(shared.sid.clone(), shared);
    }

    /// Forgets an engine that ended; its requests get `Session ID unknown` from now on.
    pub fn remove(&self, sid: &str) {
        lock(&self.map).remove(sid);
    }
}

/// What a polling engine's `GET` takes.
#[derive(Debug, Default)]
struct Out {
    /// Encoded packets not yet taken by a poll.
    packets: Vec<String>,
    /// The upgrade probe passed: polls are answered with a noop at once.
    upgrading: bool,
    /// The engine moved to WebSocket: polls are refused.
    on_websocket: bool,
}

/// The half of a polling engine that its HTTP requests touch.
#[derive(Debug)]
pub struct Shared {
    /// The Engine.IO session id.
    pub sid: Arc<str>,
    out: Mutex<Out>,
    /// Wakes the pending poll: packets queued, the upgrade probe passed, or the engine closed.
    readable: Notify,
    /// Wakes the engine: a poll took the queued packets.
    taken: Notify,
    inbox: mpsc::Sender<String>,
    /// The upgraded socket, between the probe's `5` and the engine taking it.
    upgrade: Mutex<Option<Box<Socket>>>,
    upgraded: Notify,
    poll_pending: AtomicBool,
    post_pending: AtomicBool,
    /// Cancelled when the engine ended (or a request broke the protocol and ended it).
    pub closed: CancellationToken,
}

/// What a poll is answered.
#[derive(Debug)]
pub enum Poll {
    /// A payload: packets joined by `\x1e`.
    Payload(String),
    /// Another poll is pending (Node answers 400 and closes the engine; so does this).
    Overlap,
    /// The engine is on WebSocket now: polling is over.
    Mismatch,
}

/// Why a POST was refused.
#[derive(Debug)]
pub enum PostError {
    /// Another POST of this engine is in flight (400; the engine is closed, as Node does).
    Overlap,
    /// The engine is on WebSocket now.
    Mismatch,
    /// The engine ended.
    Gone,
}

/// Clears a pending flag when the request's future ends, however it ends.
struct Pending<'a>(&'a AtomicBool);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Shared {
    /// `GET` with this sid: waits until there is something to send (or the engine ends).
    pub async fn poll(&self) -> Poll {
        if self.poll_pending.swap(true, Ordering::SeqCst) {
            self.closed.cancel();
            return Poll::Overlap;
        }
        let _pending = Pending(&self.poll_pending);
        loop {
            let notified = self.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut out = lock(&self.out);
                if out.on_websocket {
                    return Poll::Mismatch;
                }
                if !out.packets.is_empty() {
                    let payload = out.packets.join("\x1e");
                    out.packets.clear();
                    drop(out);
                    self.taken.notify_one();
                    return Poll::Payload(payload);
                }
                if out.upgrading {
                    return Poll::Payload("6".into());
                }
            }
            if self.closed.is_cancelled() {
                // Ended without a goodbye (the client vanished, or broke the protocol): the
                // close packet tells a poll still listening.
                return Poll::Payload("1".into());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.closed.cancelled() => {}
            }
        }
    }

    /// `POST` with this sid: hands the body (packets joined by `\x1e`) to the engine.
    pub async fn post(&self, body: String) -> Result<(), PostError> {
        if self.post_pending.swap(true, Ordering::SeqCst) {
            self.closed.cancel();
            return Err(PostError::Overlap);
        }
        let _pending = Pending(&self.post_pending);
        if lock(&self.out).on_websocket {
            return Err(PostError::Mismatch);
        }
        tokio::select! {
            sent = self.inbox.send(body) => sent.map_err(|_| PostError::Gone),
            _ = self.closed.cancelled() => Err(PostError::Gone),
        }
    }

    /// True when the engine already moved to WebSocket (a second upgrade is refused).
    pub fn on_websocket(&self) -> bool {
        lock(&self.out).on_websocket
    }

    /// The probe passed: the pending poll (and any new one) is answered with a noop, so the
    /// client can pause polling and send `5`.
    pub fn begin_upgrade(&self) {
        lock(&self.out).upgrading = true;
        self.readable.notify_one();
    }

    /// The probe failed: polling goes on.
    pub fn cancel_upgrade(&self) {
        lock(&self.out).upgrading = false;
    }

    /// `5` arrived on the probed socket: the engine takes it over.
    pub fn complete_upgrade(&self, socket: Socket) {
        *lock(&self.upgrade) = Some(Box::new(socket));
        self.upgraded.notify_one();
    }
}

/// One thing read from the wire.
#[derive(Debug)]
pub enum Read {
    /// One Engine.IO text packet.
    Text(String),
    /// A binary packet (a WebSocket binary message; `b…` packets arrive as [`Read::Text`]).
    Binary,
    /// The peer sent a WebSocket close frame.
    Closed,
    /// The WebSocket framing broke.
    Violation(Goodbye),
    /// The peer is gone (EOF, reset, the engine was ended by a request).
    Gone,
}

/// The Engine.IO wire of one connection.
pub struct Engine {
    /// The polling half, `None` for a connection that started on WebSocket.
    shared: Option<Arc<Shared>>,
    inbox: Option<mpsc::Receiver<String>>,
    socket: Option<Box<Socket>>,
    /// Packets of a POST body not read yet.
    pending: VecDeque<String>,
    /// Packets no poll took before the upgrade: they leave first on the socket.
    unsent: VecDeque<String>,
}

impl Engine {
    /// A new polling engine, listed in `engines` under `sid`.
    pub fn polling(engines: &Engines, sid: Arc<str>) -> (Self, Arc<Shared>) {
        let (tx, rx) = mpsc::channel(INBOX);
        let shared = Arc::new(Shared {
            sid,
            out: Mutex::new(Out::default()),
            readable: Notify::new(),
            taken: Notify::new(),
            inbox: tx,
            upgrade: Mutex::new(None),
            upgraded: Notify::new(),
            poll_pending: AtomicBool::new(false),
            post_pending: AtomicBool::new(false),
            closed: CancellationToken::new(),
        });
        engines.insert(shared.clone());
        let engine = Self {
            shared: Some(shared.clone()),
            inbox: Some(rx),
            socket: None,
            pending: VecDeque::new(),
            unsent: VecDeque::new(),
        };
        (engine, shared)
    }

    /// An engine on an upgraded WebSocket from the start (`transport=websocket`, no sid).
    pub fn websocket(socket: Socket) -> Self {
        Self {
            shared: None,
            inbox: None,
            socket: Some(Box::new(socket)),
            pending: VecDeque::new(),
            unsent: VecDeque::new(),
        }
    }

    /// The polling half, if this engine has one.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Takes over an upgraded socket, if the probe handed one: polls are refused from now on,
    /// and packets no poll took wait in `unsent` for the socket. No await: nothing is lost
    /// when the caller's future is dropped.
    fn switch_if_upgraded(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let Some(socket) = lock(&shared.upgrade).take() else {
            return;
        };
        {
            let mut out = lock(&shared.out);
            out.on_websocket = true;
            out.upgrading = false;
            self.unsent.extend(out.packets.drain(..));
        }
        // A poll still waiting returns (refused: the transport changed).
        shared.readable.notify_one();
        self.socket = Some(socket);
        // Bodies POSTed before the client sent `5` (engine.io-client flushes its buffer, and
        // waits for those POSTs to be answered, before it upgrades) may still wait in the
        // inbox: read them before it goes, or those packets are lost although their POST was
        // answered 200. They come before anything the client sends on the WebSocket.
        if let Some(inbox) = &mut self.inbox {
            while let Ok(body) = inbox.try_recv() {
                self.pending.extend(split_payload(&body).map(str::to_owned));
            }
        }
        self.inbox = None;
    }

    /// Writes `unsent` to the socket. Cancel-safe: a packet leaves the queue only once the
    /// socket took it, and a flush cut short is finished by the next one.
    async fn flush_unsent(&mut self) -> io::Result<()> {
        let Some(socket) = &mut self.socket else {
            return Ok(());
        };
        if self.unsent.is_empty() {
            return Ok(());
        }
        // The write future goes straight into the combinator: a named local would be kept
        // beside the combinator's copy across the await (see `ws::WsTransport::send`).
        ws::bounded_write(WRITE_TIMEOUT, async {
            // Queued (the socket's buffer) before any write: nothing is lost if cut short.
            while let Some(p) = self.unsent.pop_front() {
                socket.queue(OpCode::Text, false, p.as_bytes());
            }
            socket.flush().await
        })
        .await
    }

    /// The next packet. Cancel-safe: every await is on a cancel-safe source, and state only
    /// changes between them.
    pub async fn next(&mut self) -> Read {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Read::Text(p);
            }
            self.switch_if_upgraded();
            if self.flush_unsent().await.is_err() {
                return Read::Gone;
            }
            if let Some(socket) = &mut self.socket {
                return match socket.read().await {
                    WsRead::Text(t) => Read::Text(t),
                    WsRead::Binary(_) => Read::Binary,
                    // Answered by the library; not an Engine.IO packet.
                    WsRead::Control => continue,
                    WsRead::Closed => Read::Closed,
                    WsRead::Violation(g) => Read::Violation(g),
                    WsRead::Gone => Read::Gone,
                };
            }
            let (Some(shared), Some(inbox)) = (&self.shared, &mut self.inbox) else {
                return Read::Gone;
            };
            tokio::select! {
                body = inbox.recv() => match body {
                    Some(body) => self.pending.extend(split_payload(&body).map(str::to_owned)),
                    None => return Read::Gone,
                },
                _ = shared.upgraded.notified() => {}
                _ = shared.closed.cancelled() => return Read::Gone,
            }
        }
    }

    /// Writes encoded packets (draining `packets`): on WebSocket one message each and one
    /// flush; on polling, queued for the next poll and returned once a poll took them.
    /// `Err`: the client is gone or took nothing for `WRITE_TIMEOUT` (10 s).
    pub async fn write(&mut self, packets: &mut Vec<String>) -> io::Result<()> {
        self.switch_if_upgraded();
        self.flush_unsent().await?;
        if let Some(socket) = &mut self.socket {
            return ws::bounded_write(WRITE_TIMEOUT, async {
                for p in packets.drain(..) {
                    socket.queue(OpCode::Text, false, p.as_bytes());
                }
                socket.flush().await
            })
            .await;
        }
        let Some(shared) = self.shared.clone() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        lock(&shared.out).packets.append(packets);
        shared.readable.notify_one();
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let taken = shared.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if lock(&shared.out).packets.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = &mut taken => {}
                _ = shared.upgraded.notified() => {
                    // Whatever no poll took leaves on the new socket.
                    self.switch_if_upgraded();
                    if self.socket.is_some() {
                        return self.flush_unsent().await;
                    }
                }
                _ = shared.closed.cancelled() => return Err(io::ErrorKind::BrokenPipe.into()),
                _ = tokio::time::sleep_until(deadline) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// Ends the engine: writes `last` (unless the wire is `broken`), then the close (the
    /// WebSocket closing handshake, or a `1` close packet for the next poll), bounded by
    /// `CLOSE_LINGER` (2 s). The polling half is marked closed; the caller removes it from
    /// [`Engines`].
    pub async fn close(mut self, mut last: Vec<String>, broken: bool) {
        self.switch_if_upgraded();
        if !broken {
            let _ = self.flush_unsent().await;
        }
        if let Some(socket) = &mut self.socket {
            let bye = async {
                if !broken {
                    for p in last.drain(..) {
                        socket.queue(OpCode::Text, false, p.as_bytes());
                    }
                }
                socket.queue_close(Some(1000), "");
                if socket.flush().await.is_err() {
                    return;
                }
                // RFC 6455 §7.1.1: wait for the peer's close.
                loop {
                    match socket.read().await {
                        WsRead::Closed | WsRead::Gone | WsRead::Violation(_) => break,
                        _ => {}
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, bye).await;
        } else if let Some(shared) = &self.shared
            && !shared.closed.is_cancelled()
        {
            // The last packets and the close packet go in separate polls, as Node's engine
            // writes them. socket.io-client hands Socket.IO packets to the socket a tick
            // after it decodes their payload, but acts on a `1` at once: in one payload
            // with a DISCONNECT, the client would see "transport close" (and reconnect)
            // before it reads the DISCONNECT ("io server disconnect", no reconnect).
            let bye = async {
                if !last.is_empty() && self.write(&mut last).await.is_err() {
                    return;
                }
                let _ = self.write(&mut vec!["1".to_owned()]).await;
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, bye).await;
        }
        if let Some(shared) = &self.shared {
            shared.closed.cancel();
        }
    }
}
