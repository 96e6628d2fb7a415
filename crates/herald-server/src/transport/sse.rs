//! Server-Sent Events: `GET /v1/sse` (the stream) and `POST /v1/sse/{session}` (commands).
//!
//! For networks that block WebSocket, for `curl`, and for `EventSource`. Gate 1 runs on the
//! `GET` before any byte is streamed (the same statuses and JSON bodies as `/v1/ws`). The
//! session then writes each frame as one event: `event:` the v1 frame type, `data:` the v1
//! frame, and `id:` a resume cursor covering every subscribed channel whenever it moves (the
//! welcome, each `pub`, subscribe and unsubscribe replies). `Last-Event-ID` (what
//! `EventSource` sends when it reconnects) or `?since=` resumes every channel in the cursor
//! like a v1 subscribe with `since`.
//!
//! Commands arrive on `POST /v1/sse/{session}`, authenticated like the stream and for the same
//! user: the session id (unguessable, in the welcome) routes the command, it never authorises
//! it. Replies come back on the stream, in order with publications.
//!
//! `Accept: application/x-ndjson` or `?format=ndjson` gives the same frames as
//! newline-delimited JSON for programs that do not speak SSE.
//!
//! The cursor is `channel:offset:epoch` per channel, joined by `,`: opaque to `EventSource`
//! users, documented (`docs/protocol.md`) for programs that build one.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::protocol::{ClientFrame, ErrorCode, FrameKind, Goodbye};
use herald_node::{Ending, Inbound, Node, Opening, Outgoing, Session, Transport, Wire};
use serde_json::json;
use tokio::sync::mpsc;

use super::cursor::{self, Cursor};
use super::{handshake, query_pairs, query_value, refused};
use crate::api::ApiError;

/// A write the client does not take for this long means it is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands waiting for the session at most; more are refused with 429.
const COMMAND_INBOX: usize = 64;

/// Chunks between the session and the HTTP body at most. One: while the client does not
/// take it, the session blocks in `send` and publications pile up in the outbox, whose byte
/// limit is the slow-consumer policy. A deeper channel would hold batches outside that limit.
const BODY_CHUNKS: usize = 1;

/// The two encodings of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`: one v1 frame per line.
    Ndjson,
}

/// `GET /v1/sse`: gate 1, then the stream.
pub async fn stream(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<crate::Peer>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let wants_ndjson = query_value(&pairs, "format") == Some("ndjson")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-ndjson"));
    let format = if wants_ndjson {
        Format::Ndjson
    } else {
        Format::Sse
    };
    let since = query_value(&pairs, "since").or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    });
    let resume = match since.map(cursor::parse).transpose() {
        Ok(r) => r.unwrap_or_default(),
        Err(message) => return ApiError::new(ErrorCode::BadRequest, message).into_response(),
    };
    let channels: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.clone())
        .collect();
    let h = handshake(&headers, query_value(&pairs, "token"), peer.map(|p| p.0.0));
    let mut admitted = match node.admit(&h).await {
        Ok(a) => a,
        Err(r) => return refused(r),
    };
    let (key, inbox) = admitted.slot.open_route(COMMAND_INBOX);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    if format == Format::Sse {
        let retry = node.config.server.sse_retry.as_millis();
        // Cannot fail: the channel is new and empty.
        let _ = body_tx.try_send(Bytes::from(format!("retry: {retry}\n\n")));
    }
    let transport = SseTransport {
        body: body_tx,
        inbox,
        format,
        cursor: Cursor::default(),
    };
    let opening = Opening {
        channels,
        resume,
        session: Some(key),
        all_or_nothing: false,
    };
    node.tasks
        .spawn(Session::new(admitted).run(transport, opening));
    let body = Body::from_stream(futures_util::stream::unfold(body_rx, |mut rx| async {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    let content_type = match format {
        Format::Sse => "text/event-stream; charset=utf-8",
        Format::Ndjson => "application/x-ndjson",
    };
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // No caching and no transformation (compression would buffer the stream), and no
    // buffering in nginx-style reverse proxies.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// `POST /v1/sse/{session}`: one v1 client frame for a live session.
pub async fn command(
    State(node): State<Arc<Node>>,
    Path(session): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let bytes = match crate::api::read_body(body, node.config.limits.max_frame_bytes).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let Some(route) = node.sessions.route(&session) else {
        return ApiError::new(
            ErrorCode::NotFound,
            "no such session (it ended, or never was)",
        )
        .into_response();
    };
    let inbound = match std::str::from_utf8(&bytes) {
        Ok(text) => Inbound::from_v1_text(text),
        Err(_) => Inbound::Violation(Goodbye::NotJson),
    };
    if matches!(inbound, Inbound::Violation(_)) {
        return ApiError::new(
            ErrorCode::BadRequest,
            "the body must be one protocol v1 frame (a JSON object)",
        )
        .into_response();
    }
    // Who is asking: the request's credentials, or for `refresh` the new token itself (the
    // old one may be what expired).
    let pairs = query_pairs(query.as_deref());
    let identity = match node
        .authenticate(&handshake(&headers, query_value(&pairs, "token"), None))
        .await
    {
        Ok(identity) => identity,
        Err(refusal) => match &inbound {
            Inbound::Frame(ClientFrame::Refresh { token, .. }) => match node.auth().verify(token) {
                Ok(identity) => identity,
                Err(_) => return refused(refusal),
            },
            _ => return refused(refusal),
        },
    };
    if identity.user != route.handle.user {
        return ApiError::new(ErrorCode::Forbidden, "this session belongs to another user")
            .into_response();
    }
    match route.inbox.try_send(inbound) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "accepted": true }))).into_response(),
        Err(mpsc::error::TrySendError::Full(_)) => ApiError::new(
            ErrorCode::RateLimited,
            "too many commands waiting for this session",
        )
        .into_response(),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            ApiError::new(ErrorCode::NotFound, "the session ended").into_response()
        }
    }
}

/// The SSE (or NDJSON) wire of one session.
pub struct SseTransport {
    body: mpsc::Sender<Bytes>,
    inbox: mpsc::Receiver<Inbound>,
    format: Format,
    /// Where the client stands on each channel (the `id:` of each event that moves it).
    cursor: Cursor,
}

impl SseTransport {
    fn write_id(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        self.cursor.write(out);
        out.push(b'\n');
    }

    fn encode(&mut self, item: Outgoing, out: &mut Vec<u8>) {
        if self.format == Format::Ndjson {
            out.extend_from_slice(item.v1().as_bytes());
            out.push(b'\n');
            return;
        }
        if item.kind() == FrameKind::Ping {
            // A comment: keeps proxies and the browser's connection alive, is no event.
            out.extend_from_slice(b": ping\n\n");
            return;
        }
        match item {
            Outgoing::Shared(p) => {
                if p.kind == FrameKind::Pub {
                    self.cursor.advance(&p.channel, p.offset, &p.epoch);
                    self.write_id(out);
                }
                let event: Bytes = p.cached(Wire::Sse, |p| event_bytes(p.kind, p.v1()));
                out.extend_from_slice(&event);
            }
            Outgoing::Own(o) => {
                if self.cursor.apply(&o.cursor) {
                    self.write_id(out);
                }
                out.extend_from_slice(&event_bytes(o.kind, &o.json));
            }
        }
    }
}

/// `event: <kind>` and the JSON as `data:` lines (one per line of the text, as the SSE format
/// requires; the receiver joins them with `\n`), then the blank line that ends the event.
fn event_bytes(kind: FrameKind, json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'\n');
    for line in json.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

impl Transport for SseTransport {
    const NAME: &'static str = "sse";

    fn answers_pings(&self) -> bool {
        false
    }

    async fn recv(&mut self) -> Inbound {
        tokio::select! {
            cmd = self.inbox.recv() => cmd.unwrap_or(Inbound::Gone),
            // The HTTP body was dropped: the client went away.
            _ = self.body.closed() => Inbound::Gone,
        }
    }

    async fn send(&mut self, batch: &mut Vec<Outgoing>) -> io::Result<()> {
        let mut out = Vec::new();
        for item in batch.drain(..) {
            self.encode(item, &mut out);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.body.send(Bytes::from(out))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    async fn close(self, ending: Ending) {
        if let Ending::Goodbye(g) = ending {
            let chunk = match self.format {
                Format::Sse => event_bytes(FrameKind::Disconnect, &g.frame()),
                Format::Ndjson => Bytes::from(g.frame() + "\n"),
            };
            let _ = tokio::time::timeout(WRITE_TIMEOUT, self.body.send(chunk)).await;
        }
        // Dropping the sender ends the HTTP body: the response completes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_json_becomes_several_data_lines() {
        let e = event_bytes(FrameKind::Pub, "{\"a\":\n1}");
        assert_eq!(&e[..], b"event: pub\ndata: {\"a\":\ndata: 1}\n\n");
    }
}
