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

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use herald_core::protocol::{ErrorCode, Goodbye};
use herald_node::{Ending, Inbound, Node, Opening, Outgoing, Session, Transport, Wire};

use super::{handshake, query_pairs, query_value, refused};
use crate::api::ApiError;

/// Read buffer per connection. Client frames are small JSON; larger frames still work (the
/// buffer grows up to `max_frame_bytes`), this only sets what an idle connection holds.
const READ_BUFFER: usize = 1024;

/// Frames are buffered up to this before a write syscall, so a burst goes out in few writes.
const WRITE_BUFFER: usize = 8 * 1024;

/// A write that makes no progress for this long means the peer is gone or stuck: drop it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for the peer's close frame after sending its own.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Gate 1, then the upgrade (or the probe's answer).
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let h = handshake(&headers, query_value(&pairs, "token"));
    let Ok(ws) = ws else {
        return match node.authenticate(&h) {
            Err(r) => refused(r),
            Ok(_) => ApiError::new(
                ErrorCode::UpgradeRequired,
                "credentials accepted; this endpoint speaks WebSocket (send Upgrade: websocket)",
            )
            .into_response(),
        };
    };
    let admitted = match node.admit(&h) {
        Ok(a) => a,
        Err(r) => return refused(r),
    };
    configure(ws, node.config.limits.max_frame_bytes).on_upgrade(move |socket| {
        node.tasks
            .track_future(Session::new(admitted).run(WsTransport::new(socket), Opening::default()))
    })
}

/// The WebSocket settings of every Herald upgrade: small buffers, and frames and messages
/// bounded by `max_frame` (`limits.max_frame_bytes`). Shared with the Autobahn echo server
/// (`examples/ws_echo.rs`) so the conformance run tests these exact settings.
pub fn configure(ws: WebSocketUpgrade, max_frame: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
}

/// One read from the socket at the WebSocket layer, before protocol v1 looks at the text.
#[derive(Debug)]
pub enum WsRead {
    /// A complete text message (UTF-8 already checked by the library).
    Text(Utf8Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A Ping or Pong. The library has queued the Pong answer; the next read or write flushes it.
    Control,
    /// The peer's close frame; the library has queued its echo (RFC 6455 §5.5.1).
    Closed,
    /// The peer broke a rule: the connection ends with this goodbye.
    Violation(Goodbye),
    /// EOF, reset or another I/O error: nobody is left to tell.
    Gone,
}

/// Reads the next message and classifies it. Cancel-safe (a single `recv`).
pub async fn read(socket: &mut WebSocket) -> WsRead {
    match socket.recv().await {
        None => WsRead::Gone,
        Some(Err(e)) => read_error(&e),
        Some(Ok(Message::Text(text))) => WsRead::Text(text),
        Some(Ok(Message::Binary(bytes))) => WsRead::Binary(bytes),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => WsRead::Control,
        Some(Ok(Message::Close(_))) => WsRead::Closed,
    }
}

/// The WebSocket wire of one session.
pub struct WsTransport {
    socket: WebSocket,
}

impl WsTransport {
    /// Wraps an upgraded socket.
    pub fn new(socket: WebSocket) -> Self {
        Self { socket }
    }
}

impl Transport for WsTransport {
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

    async fn send(&mut self, batch: &mut Vec<Outgoing>) -> io::Result<()> {
        let socket = &mut self.socket;
        let write = async {
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
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    async fn close(mut self, ending: Ending) {
        finish(&mut self.socket, ending).await;
    }
}

/// Ends a WebSocket connection the way every Herald path does, bounded by [`CLOSE_LINGER`]:
/// a goodbye sends the v1 `disconnect` frame (not for a failure of the WebSocket layer, see
/// [`Goodbye::fails_the_websocket`]) and the close frame, then reads and discards until the
/// peer's close (RFC 6455 §7.1.1); a peer's close gets its queued echo flushed.
pub async fn finish(socket: &mut WebSocket, ending: Ending) {
    match ending {
        Ending::Gone => {}
        // The library queued the echo of the peer's close frame (RFC 6455 §5.5.1); it
        // leaves with the next flush.
        Ending::PeerClosed => {
            let _ = tokio::time::timeout(CLOSE_LINGER, socket.flush()).await;
        }
        Ending::Goodbye(g) => {
            let bye = async {
                if !g.fails_the_websocket() {
                    socket
                        .feed(Message::Text(Utf8Bytes::from(g.frame())))
                        .await?;
                }
                socket
                    .send(Message::Close(Some(CloseFrame {
                        code: g.code(),
                        reason: Utf8Bytes::from_static(g.reason()),
                    })))
                    .await?;
                // §7.1.1: having sent a close frame, read (and discard) until the peer's
                // close arrives, so the peer sees a clean close, not a reset. (After a read
                // error the library reads nothing more: the socket closes at once, as §7.1.7
                // wants for a failed connection.)
                while let Some(msg) = socket.recv().await {
                    if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                        break;
                    }
                }
                Ok::<(), axum::Error>(())
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, bye).await;
        }
    }
}

/// What a read error means for the connection. A peer that broke the framing rules is told
/// so with a close frame (RFC 6455 §7.1.7: 1002, or 1007 for bad UTF-8) instead of a silent
/// TCP close that its library would report as 1006; only a vanished peer gets nothing.
fn read_error(e: &axum::Error) -> WsRead {
    use tungstenite::error::ProtocolError;
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<tungstenite::Error>()) {
        Some(tungstenite::Error::Capacity(_)) => WsRead::Violation(Goodbye::FrameTooLarge),
        Some(tungstenite::Error::Utf8(_)) => WsRead::Violation(Goodbye::InvalidUtf8),
        // EOF in the middle of the connection: the peer is gone, not misbehaving.
        Some(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            WsRead::Gone
        }
        Some(tungstenite::Error::Protocol(_)) => WsRead::Violation(Goodbye::ProtocolError),
        _ => WsRead::Gone,
    }
}
