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
    let max_frame = node.config.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            node.tasks.track_future(
                Session::new(admitted).run(WsTransport::new(socket), Opening::default()),
            )
        })
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
        match self.socket.recv().await {
            None => Inbound::Gone,
            Some(Err(e)) if is_capacity_error(&e) => Inbound::Violation(Goodbye::FrameTooLarge),
            Some(Err(_)) => Inbound::Gone,
            Some(Ok(Message::Text(text))) => Inbound::from_v1_text(&text),
            Some(Ok(Message::Binary(_))) => Inbound::Violation(Goodbye::Binary),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Inbound::Alive,
            Some(Ok(Message::Close(_))) => Inbound::Closed,
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
        let socket = &mut self.socket;
        match ending {
            Ending::Gone => {}
            // The library queued the echo of the peer's close frame (RFC 6455 §5.5.1); it
            // leaves with the next flush.
            Ending::PeerClosed => {
                let _ = tokio::time::timeout(CLOSE_LINGER, socket.flush()).await;
            }
            Ending::Goodbye(g) => {
                let bye = async {
                    socket
                        .feed(Message::Text(Utf8Bytes::from(g.frame())))
                        .await?;
                    socket
                        .send(Message::Close(Some(CloseFrame {
                            code: g.code(),
                            reason: Utf8Bytes::from_static(g.reason()),
                        })))
                        .await?;
                    // §7.1.1: having sent a close frame, read (and discard) until the peer's
                    // close arrives, so the peer sees a clean close, not a reset.
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
}

/// True when tungstenite refused a frame or message over `max_frame_bytes`.
fn is_capacity_error(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}
