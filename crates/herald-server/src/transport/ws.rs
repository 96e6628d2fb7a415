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
//! Buffers are kept small on purpose: an idle connection costs a few KB (see
//! `docs/benchmarks.md`), because the read buffer is sized for client frames (small JSON), not
//! for the 128 KiB default.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_core::protocol::{ErrorCode, Goodbye};
use herald_node::{Ending, Inbound, Node, Opening, Outgoing, Session, Transport, Wire};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

use super::{handshake, query_pairs, query_value, refused};
use crate::api::ApiError;

/// Read buffer per connection. Client frames are small JSON commands (a subscribe is ~60 B);
/// larger frames still work (the buffer grows up to `max_frame_bytes`), this only sets what
/// an idle connection holds: 256 B, where 1 KiB was a quarter of an idle connection's heap.
const READ_BUFFER: usize = 256;

/// Frames are buffered up to this before a write syscall, so a burst goes out in few writes.
const WRITE_BUFFER: usize = 8 * 1024;

/// A write that makes no progress for this long means the peer is gone or stuck: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// When the framing is lost (a frame over the limit, a protocol error), the rest of the
/// client's bytes are read raw and dropped until it has been quiet this long.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// The socket of an upgraded connection.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

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
    let config = config(node.config.limits.max_frame_bytes);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        // Dropping `admitted` (an upgrade that never completes) frees the user's slot.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        Session::new(admitted)
            .run(WsTransport::new(socket), Opening::default())
            .await;
    });
    switching_protocols(&key)
}

/// The socket settings of every Herald WebSocket: small buffers (an idle connection costs a
/// few KB), frames and messages bounded by `max_frame` bytes.
pub fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
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
}

impl WsTransport {
    /// Wraps an upgraded socket.
    pub fn new(socket: Socket) -> Self {
        Self { socket }
    }
}

impl Transport for WsTransport {
    const NAME: &'static str = "websocket";

    fn answers_pings(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Inbound {
        match read(&mut self.socket).await {
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
    fn send(
        &mut self,
        batch: &mut Vec<Outgoing>,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        let socket = &mut self.socket;
        bounded_write(WRITE_TIMEOUT, async move {
            for item in batch.drain(..) {
                let text = match item {
                    // Validated as UTF-8 once per publication, then shared by every subscriber.
                    Outgoing::Shared(p) => {
                        p.cached(Wire::WebSocket, |p| Utf8Bytes::from(p.v1().to_owned()))
                    }
                    Outgoing::Own(o) => Utf8Bytes::from(o.json),
                };
                socket.feed(Message::Text(text)).await?;
            }
            socket.flush().await
        })
    }

    async fn close(mut self, ending: Ending) {
        finish(&mut self.socket, ending).await;
    }
}

/// A WebSocket write that must finish within `limit`: the library's error as `io::Error`, or
/// `TimedOut` when the peer took nothing for that long (gone or stuck). Every Herald
/// WebSocket write goes through here (`/v1/ws`, Socket.IO's engine).
pub fn bounded_write<W>(
    limit: Duration,
    write: W,
) -> impl std::future::Future<Output = io::Result<()>>
where
    W: std::future::Future<Output = Result<(), tungstenite::Error>>,
{
    // A combinator rather than an `async fn`, so `write` is stored once (see `send`).
    tokio::time::timeout(limit, write).map(|r| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io::Error::other(e)),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    })
}

/// One read from a WebSocket, classified.
#[derive(Debug)]
pub enum WsRead {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(axum::body::Bytes),
    /// A Ping or Pong (answered by the library); it still counts as a frame.
    Control,
    /// The peer's close frame.
    Closed,
    /// The peer broke a rule: the connection ends with this goodbye.
    Violation(Goodbye),
    /// EOF, reset or another I/O error: nobody is left to tell.
    Gone,
}

/// Reads the next message and classifies it. Cancel-safe (one `next`).
pub async fn read(socket: &mut Socket) -> WsRead {
    match socket.next().await {
        None => WsRead::Gone,
        Some(Err(e)) => read_error(&e),
        Some(Ok(Message::Text(text))) => WsRead::Text(text),
        Some(Ok(Message::Binary(bytes))) => WsRead::Binary(bytes),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => WsRead::Control,
        Some(Ok(Message::Close(_))) => WsRead::Closed,
    }
}

/// Ends a WebSocket connection the way every Herald path does, bounded by [`CLOSE_LINGER`]:
/// a goodbye sends the v1 `disconnect` frame (not for a failure of the WebSocket layer, whose
/// framing cannot be trusted: RFC 6455 §7.1.7, [`Goodbye::fails_the_websocket`]) and the close
/// frame, then reads and discards until the peer's close (§7.1.1); a peer's close gets its
/// queued echo flushed (§5.5.1). When the framing is lost (a frame over the limit, a protocol
/// error) the client's remaining bytes are drained raw until it has been quiet for
/// [`DRAIN_QUIET`], so closing never makes the kernel reset the connection (a reset makes the
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
                    let _ = socket.feed(Message::Text(Utf8Bytes::from(g.frame()))).await;
                }
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: g.code().into(),
                        reason: Utf8Bytes::from_static(g.reason()),
                    })))
                    .await;
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Close(_))) => return,
                        Some(Ok(_)) => {}
                        // After an error the library may also just end the stream.
                        Some(Err(_)) | None => break,
                    }
                }
                let raw = socket.get_mut();
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) = tokio::time::timeout(DRAIN_QUIET, raw.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, bye).await;
        }
    }
}

/// What a read error means for the connection. A peer that broke the framing rules is told
/// so with a close frame (RFC 6455 §7.1.7: 1002, or 1007 for bad UTF-8) instead of a silent
/// TCP close that its library would report as 1006; only a vanished peer gets nothing.
fn read_error(e: &tungstenite::Error) -> WsRead {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    match e {
        Error::Capacity(_) => WsRead::Violation(Goodbye::FrameTooLarge),
        Error::Utf8(_) => WsRead::Violation(Goodbye::InvalidUtf8),
        // EOF in the middle of the connection: the peer is gone, not misbehaving.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => WsRead::Gone,
        Error::Protocol(_) => WsRead::Violation(Goodbye::ProtocolError),
        _ => WsRead::Gone,
    }
}
