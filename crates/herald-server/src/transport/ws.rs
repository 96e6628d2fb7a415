//! Protocol v1 over WebSocket: `GET /v1/ws`.
//!
//! Gate 1 runs on the HTTP request, before the upgrade: refused credentials get their JSON
//! body (401, 403, 429, 503) and no WebSocket ever exists. The same request without upgrade
//! headers is a probe: it answers the refusal, or 426 `upgrade_required` when the credentials
//! would be accepted, so a browser client (which cannot see a failed upgrade's status) can
//! learn why. After the upgrade, [`WsTransport`] is the session's wire: text messages become
//! commands, batches leave with one flush, and every ending completes the closing handshake
//! (RFC 6455 §7.1.1).
//!
//! The framing is Herald's own ([`super::framing`], [`Socket`]), designed for idle memory: after
//! the upgrade the raw `TcpStream` is taken back from hyper (no boxed I/O, no HTTP state), reads
//! go into a scratch buffer on the stack, and only the bytes of an unfinished frame or message,
//! or of a write in progress, are kept on the heap. An idle connection holds no buffer at all
//! (S1 in `docs/benchmarks.md`).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use herald_core::protocol::{ErrorCode, Goodbye};
use herald_node::{Ending, Inbound, Node, Opening, Outgoing, Session, Transport};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::deflate::{self, Deflate};
use super::framing::{self, Decoder, Event, OpCode};
use super::{handshake, query_pairs, query_value, refused};
use crate::api::ApiError;

/// The scratch buffer one read fills, on the stack of the poll (never part of a connection's
/// state): client frames are small JSON commands, a larger message takes several reads.
const READ_CHUNK: usize = 8 * 1024;

/// A batch is written whenever this much is encoded, so a long batch does not double its size
/// in one buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// Pongs and close echoes not yet written, at most: past this the socket stops reading until
/// the peer reads (a ping flood from a peer that takes nothing grows nothing).
const CONTROL_BACKLOG: usize = 16 * 1024;

/// A write that makes no progress for this long means the peer is gone or stuck: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// When the framing is lost (a frame over the limit, a protocol error), the rest of the
/// client's bytes are read raw and dropped until it has been quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// Gate 1, then the upgrade (or the probe's answer).
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let remote = req.extensions().get::<crate::Peer>().map(|p| p.0);
    let headers = req.headers();
    let h = handshake(headers, query_value(&pairs, "token"), remote);
    let key = match upgrade_key(headers) {
        Upgrade::No => {
            return match node.authenticate(&h).await {
                Err(r) => refused(r),
                Ok(_) => ApiError::new(
                    ErrorCode::UpgradeRequired,
                    "credentials accepted; this endpoint speaks WebSocket (send Upgrade: websocket)",
                )
                .into_response(),
            };
        }
        Upgrade::Bad(response) => return response,
        Upgrade::Key(key) => key,
    };
    let admitted = match node.admit(&h).await {
        Ok(a) => a,
        Err(r) => return refused(r),
    };
    let max_frame = node.config.limits.max_frame_bytes;
    // RFC 7692: compression when the config allows it and the client offered it.
    let (deflate, extensions) = Deflate::negotiate(headers, &node.config.websocket).unzip();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        // Dropping `admitted` (an upgrade that never completes) frees the user's slot.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let transport = WsTransport::new(Socket::new(upgraded, max_frame), deflate);
        Session::new(admitted)
            .run(transport, Opening::default())
            .await;
    });
    let mut res = switching_protocols(&key);
    if let Some(extensions) = extensions {
        res.headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    res
}

/// The `101 Switching Protocols` answer (RFC 6455 §4.2.2) for a `Sec-WebSocket-Accept` value.
pub fn switching_protocols(accept: &str) -> Response {
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

/// What a request's headers say about an upgrade (RFC 6455 §4.2.1).
pub enum Upgrade {
    /// A plain HTTP request: the probe.
    No,
    /// An upgrade request that cannot be honoured, with the answer.
    Bad(Response),
    /// A valid upgrade; the `Sec-WebSocket-Accept` value.
    Key(String),
}

/// Reads an upgrade request's headers: not an upgrade, a bad one (with its answer), or the
/// `Sec-WebSocket-Accept` value of a good one.
pub fn upgrade_key(headers: &HeaderMap) -> Upgrade {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !(has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")) {
        return Upgrade::No;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        // §4.4: answer with the versions this server speaks.
        let mut res = ApiError::new(
            ErrorCode::UpgradeRequired,
            "unsupported WebSocket version (this server speaks 13)",
        )
        .into_response();
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Upgrade::Bad(res);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => {
            Upgrade::Key(tungstenite::handshake::derive_accept_key(key.as_bytes()))
        }
        _ => Upgrade::Bad(
            ApiError::new(ErrorCode::BadRequest, "missing Sec-WebSocket-Key").into_response(),
        ),
    }
}

/// The WebSocket wire of one session.
pub struct WsTransport {
    socket: Socket,
    /// The `permessage-deflate` policy, when negotiated (RFC 7692). Boxed: 8 bytes instead of
    /// 16 in every connection's state, and most connections do not negotiate it.
    deflate: Option<Box<Deflate>>,
}

impl WsTransport {
    /// Wraps an upgraded socket; `deflate` when `permessage-deflate` was negotiated (the
    /// socket then accepts compressed messages, and frames are sent compressed by the policy).
    pub fn new(socket: Socket, deflate: Option<Deflate>) -> Self {
        let socket = if deflate.is_some() {
            socket.permessage_deflate()
        } else {
            socket
        };
        Self {
            socket,
            deflate: deflate.map(Box::new),
        }
    }
}

impl Transport for WsTransport {
    const NAME: &'static str = "websocket";

    fn answers_pings(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Inbound {
        match self.socket.read().await {
            WsRead::Text(text) => Inbound::from_v1_text(&text),
            WsRead::Binary(_) => Inbound::Violation(Goodbye::Binary),
            WsRead::Control => Inbound::Alive,
            WsRead::Closed => Inbound::Closed,
            WsRead::Violation(g) => Inbound::Violation(g),
            WsRead::Gone => Inbound::Gone,
        }
    }

    // A plain fn returning the bounded write, not an `async fn`: an async fn would hold the
    // write future twice (its own local and the timeout's copy, rust-lang/rust#62958), and
    // this future is part of every session's state (S1 in docs/benchmarks.md).
    fn send(&mut self, batch: &mut Vec<Outgoing>) -> impl Future<Output = io::Result<()>> + Send {
        let socket = &mut self.socket;
        let deflate = self.deflate.as_deref().copied();
        bounded_write(WRITE_TIMEOUT, async move {
            for item in batch.drain(..) {
                // A shared frame's text is the publication's own bytes, encoded once by the
                // hub (and compressed once per publication, RFC 7692 without context
                // takeover); only the 2–10 byte header is this connection's.
                let text = item.v1().as_bytes();
                let packed = deflate.and_then(|d| match &item {
                    Outgoing::Shared(p) => d.shared(p),
                    Outgoing::Own(_) => d.own(text).map(Bytes::from),
                });
                match packed {
                    Some(packed) => socket.queue(OpCode::Text, true, &packed),
                    None => socket.queue(OpCode::Text, false, text),
                }
                if socket.unwritten() >= WRITE_CHUNK {
                    socket.flush().await?;
                }
            }
            socket.flush().await
        })
    }

    async fn close(mut self, ending: Ending) {
        finish(&mut self.socket, ending).await;
    }
}

/// A WebSocket write that must finish within `limit`: `TimedOut` when the peer took nothing
/// for that long (gone or stuck). Every Herald WebSocket write goes through here (`/v1/ws`,
/// Socket.IO's engine).
pub fn bounded_write<W>(limit: Duration, write: W) -> impl Future<Output = io::Result<()>>
where
    W: Future<Output = io::Result<()>>,
{
    // A combinator rather than an `async fn`, so `write` is stored once (see `send`).
    tokio::time::timeout(limit, write).map(|r| match r {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    })
}

/// One read from a WebSocket, classified.
#[derive(Debug)]
pub enum WsRead {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A Ping (its pong is already queued) or a Pong; it still counts as a frame.
    Control,
    /// The peer's close frame (its echo is already queued, §5.5.1).
    Closed,
    /// The peer broke a rule: the connection ends with this goodbye.
    Violation(Goodbye),
    /// EOF, reset or another I/O error: nobody is left to tell.
    Gone,
}

/// The byte stream under a WebSocket: the `TcpStream` taken back from hyper (the plain-TCP
/// server's case), or hyper's upgraded I/O when it wraps something else (boxed: it is the
/// rare case, and it carries hyper's own state).
enum Io {
    Tcp(TcpStream),
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Upgraded(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One server-side WebSocket connection (RFC 6455) after the upgrade: reads classified
/// messages ([`Socket::read`]), answers pings and the peer's close by itself, and writes
/// queued frames in one go ([`Socket::queue`], [`Socket::flush`]).
///
/// Between messages it holds no buffer: reads fill a scratch buffer on the stack and the
/// [`Decoder`] keeps only an unfinished frame or message; `input` holds bytes only when one
/// read brought more than one message; `out` only while a write is in progress.
pub struct Socket {
    io: Io,
    decoder: Decoder,
    /// Bytes read past the last event, not decoded yet (capacity 0 when empty).
    input: Vec<u8>,
    /// Encoded frames not written yet; the first `written` bytes are.
    out: Vec<u8>,
    written: usize,
    /// A close frame was queued: nothing more may be sent (§5.5.1).
    close_sent: bool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("decoder", &self.decoder)
            .field("input", &self.input.len())
            .field("unwritten", &self.unwritten())
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// The socket of a connection hyper upgraded, messages bounded by `max_frame` bytes. The
    /// plain `TcpStream` is taken back from hyper when that is what it serves (with the bytes
    /// it had read past the request, which are the first frames).
    pub fn new(upgraded: Upgraded, max_frame: usize) -> Self {
        let (io, input) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), parts.read_buf.to_vec()),
            Err(upgraded) => (Io::Upgraded(Box::new(TokioIo::new(upgraded))), Vec::new()),
        };
        Self::on(io, input, max_frame)
    }

    fn on(io: Io, input: Vec<u8>, max_frame: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(max_frame, false),
            input,
            out: Vec::new(),
            written: 0,
            close_sent: false,
        }
    }

    /// The same socket with `permessage-deflate` negotiated (RFC 7692): a data message whose
    /// first frame has RSV1 set is inflated ([`deflate::inflate`], bounded by the message
    /// limit) before it is classified. Without it, RSV1 fails the connection (1002).
    pub fn permessage_deflate(mut self) -> Self {
        let limit = self.decoder.limit();
        self.decoder = Decoder::new(limit, true);
        self
    }

    /// Reads the next message and classifies it. Cancel-safe: all state lives in the socket
    /// between polls. Pings are answered and the peer's close is echoed by queueing the frame
    /// and writing it as far as the socket takes it now (the rest goes with the next write).
    pub fn read(&mut self) -> impl Future<Output = WsRead> + Send + '_ {
        poll_fn(move |cx| self.poll_read(cx))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<WsRead> {
        loop {
            if !self.input.is_empty() {
                let (n, event) = match self.decoder.decode(&self.input) {
                    Ok(r) => r,
                    Err(e) => return Poll::Ready(violation(e)),
                };
                if n == self.input.len() {
                    self.input = Vec::new();
                } else {
                    self.input.drain(..n);
                }
                if let Some(event) = event {
                    return Poll::Ready(self.on_event(event, cx));
                }
            }
            // Control answers the peer has not taken yet hold reading back past a bound.
            if self.unwritten() > 0
                && self.poll_write_out(cx).is_pending()
                && self.unwritten() > CONTROL_BACKLOG
            {
                return Poll::Pending;
            }
            let mut buf = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut buf);
            if ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)).is_err() {
                return Poll::Ready(WsRead::Gone);
            }
            let mut data = buf.filled();
            if data.is_empty() {
                return Poll::Ready(WsRead::Gone);
            }
            while !data.is_empty() {
                let (n, event) = match self.decoder.decode(data) {
                    Ok(r) => r,
                    Err(e) => return Poll::Ready(violation(e)),
                };
                data = &data[n..];
                if let Some(event) = event {
                    self.input.extend_from_slice(data);
                    return Poll::Ready(self.on_event(event, cx));
                }
            }
        }
    }

    fn on_event(&mut self, event: Event, cx: &mut Context<'_>) -> WsRead {
        match event {
            Event::Message {
                binary,
                compressed,
                data,
            } => {
                // The decoder allows RSV1 only when `permessage-deflate` was negotiated.
                let data = if compressed {
                    match deflate::inflate(&data, self.decoder.limit()) {
                        Ok(d) => d,
                        Err(e) => return WsRead::Violation(e.goodbye()),
                    }
                } else {
                    data
                };
                if binary {
                    WsRead::Binary(data)
                } else {
                    // Checked already unless it was compressed; the check is cheap either way.
                    match String::from_utf8(data) {
                        Ok(text) => WsRead::Text(text),
                        Err(_) => WsRead::Violation(Goodbye::InvalidUtf8),
                    }
                }
            }
            Event::Ping(payload) => {
                // §5.5.2; none once our close is queued (§5.5.1: nothing after a close).
                if !self.close_sent {
                    framing::encode(&mut self.out, OpCode::Pong, false, &payload);
                    let _ = self.poll_write_out(cx);
                }
                WsRead::Control
            }
            Event::Pong => WsRead::Control,
            Event::Close(status) => {
                // §5.5.1: echo the status code (not the reason) unless our close went first.
                if !self.close_sent {
                    self.close_sent = true;
                    framing::encode_close(&mut self.out, status.map(|(code, _)| code), "");
                    let _ = self.poll_write_out(cx);
                }
                WsRead::Closed
            }
        }
    }

    /// Queues one unfragmented data frame (`opcode` Text or Binary; `rsv1` for a payload
    /// compressed with `permessage-deflate`, RFC 7692 §6). Written by the next [`Socket::flush`].
    /// Nothing is queued once a close frame was (§5.5.1).
    pub fn queue(&mut self, opcode: OpCode, rsv1: bool, payload: &[u8]) {
        if !self.close_sent {
            framing::encode(&mut self.out, opcode, rsv1, payload);
        }
    }

    /// Queues the close frame (once): `code` and `reason` (cut to the 123 bytes a close frame
    /// has room for), or an empty close for `None`.
    pub fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        if !self.close_sent {
            self.close_sent = true;
            framing::encode_close(&mut self.out, code, reason);
        }
    }

    /// Bytes queued and not written yet.
    pub fn unwritten(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes everything queued, then frees the buffer. Cancel-safe: what was written stays
    /// written, the rest waits for the next flush (or read).
    pub fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        poll_fn(move |cx| self.poll_write_out(cx))
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.out.capacity() > 0 {
            // An idle connection keeps no write buffer (one allocation per burst instead).
            self.out = Vec::new();
            self.written = 0;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads and drops whatever the peer still sends, until EOF, an error, or `quiet` without
    /// a byte.
    async fn drain(&mut self, quiet: Duration) {
        self.input = Vec::new();
        loop {
            let read = poll_fn(|cx| {
                let mut buf = [0u8; READ_CHUNK];
                let mut buf = ReadBuf::new(&mut buf);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
                Poll::Ready(io::Result::Ok(buf.filled().len()))
            });
            match tokio::time::timeout(quiet, read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// A framing error as the connection's goodbye: a peer that broke the framing rules is told
/// so with a close frame (RFC 6455 §7.1.7: 1002, or 1007 for bad UTF-8) instead of a silent
/// TCP close that its library would report as 1006.
fn violation(e: framing::Error) -> WsRead {
    WsRead::Violation(match e {
        framing::Error::TooLarge => Goodbye::FrameTooLarge,
        framing::Error::Utf8 => Goodbye::InvalidUtf8,
        framing::Error::Protocol(_) => Goodbye::ProtocolError,
    })
}

/// Ends a WebSocket connection the way every Herald path does, bounded by `CLOSE_LINGER` (2 s):
/// a goodbye sends the v1 `disconnect` frame (not for a failure of the WebSocket layer, whose
/// framing cannot be trusted: RFC 6455 §7.1.7, [`Goodbye::fails_the_websocket`]) and the close
/// frame, then reads and discards until the peer's close (§7.1.1); a peer's close gets its
/// queued echo flushed (§5.5.1). When the framing is lost (a frame over the limit, a protocol
/// error) the client's remaining bytes are drained raw until it has been quiet for
/// `DRAIN_QUIET` (200 ms), so closing never makes the kernel reset the connection (a reset makes the
/// client's kernel drop our close frame before the application reads it).
pub async fn finish(socket: &mut Socket, ending: Ending) {
    match ending {
        Ending::Gone => {}
        Ending::PeerClosed => {
            let _ = tokio::time::timeout(CLOSE_LINGER, socket.flush()).await;
        }
        Ending::Goodbye(g) => {
            let bye = async {
                if !g.fails_the_websocket() {
                    socket.queue(OpCode::Text, false, g.frame().as_bytes());
                }
                socket.queue_close(Some(g.code()), g.reason());
                if socket.flush().await.is_err() {
                    return;
                }
                if !socket.decoder.failed() {
                    loop {
                        match socket.read().await {
                            WsRead::Closed => return,
                            WsRead::Gone | WsRead::Violation(_) => break,
                            _ => {}
                        }
                    }
                }
                socket.drain(DRAIN_QUIET).await;
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, bye).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;
    use herald_core::Config;
    use herald_core::identity::mint_hs256;
    use herald_node::{Handshake, Opening, Session};

    use super::*;

    /// The state an idle `/v1/ws` connection's task holds is the size of this future (S1 in
    /// docs/benchmarks.md): it must not grow back. Measured 2026-11-30 with tungstenite: the
    /// transport 328 B; with Herald's framing: see the assertions.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let config = Config::from_toml_str(
            "[auth]\nhs256_secret = \"unit\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let node = crate::build(config).unwrap();
        let token = mint_hs256("unit", "u1", &[], "roles", Duration::from_secs(60)).unwrap();
        let bearer = format!("Bearer {token}");
        let admitted = node
            .admit(&Handshake {
                authorization: vec![&bearer],
                ..Handshake::default()
            })
            .now_or_never()
            .expect("the memory broker answers at once")
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut transport = WsTransport::new(Socket::on(Io::Tcp(server), Vec::new(), 1024), None);
        let recv_size = std::mem::size_of_val(&transport.recv());
        let transport_size = std::mem::size_of_val(&transport);
        eprintln!(
            "Sleep {} B, Notified {} B, cancelled {} B, Timeout<send> {} B",
            std::mem::size_of::<tokio::time::Sleep>(),
            std::mem::size_of::<tokio::sync::futures::Notified<'static>>(),
            std::mem::size_of_val(&node.shutdown.cancelled()),
            std::mem::size_of_val(&transport.send(&mut Vec::new())),
        );
        let session = Session::new(admitted);
        let session_size = std::mem::size_of_val(&session);
        let run = session.run(transport, Opening::default());
        let run_size = std::mem::size_of_val(&run);
        eprintln!(
            "WsTransport {transport_size} B, its recv future {recv_size} B, Session {session_size} B, \
             Session::run future {run_size} B"
        );
        assert!(transport_size <= 128, "WsTransport is {transport_size} B");
        assert!(run_size <= 1312, "the session future is {run_size} B");
    }
}
