//! The seam between the session core and a wire: what a transport hands the session
//! ([`Inbound`]), what the session hands back ([`Outgoing`]), and how a connection ends
//! ([`Ending`]).
//!
//! A transport is generic, not boxed: [`Session::run`](crate::Session::run) is monomorphised per
//! transport, so the WebSocket path stays one task per connection with no extra allocation.

use std::future::Future;
use std::io;
use std::sync::Arc;

use herald_core::Position;
use herald_core::protocol::{ClientFrame, FrameError, FrameKind, Goodbye, parse_client_frame};

use crate::prepared::Prepared;

/// What a session needs from the wire. One implementation per transport.
pub trait Transport: Send {
    /// The transport's name as the backend sees it (the subscribe proxy's `transport`).
    const NAME: &'static str = "other";

    /// Whether the client answers the session's `ping` frames (WebSocket does). A one-way
    /// transport (SSE) cannot, so the session does not close it for silence; a dead peer is
    /// found by writes that fail or stall instead.
    fn answers_pings(&self) -> bool;

    /// The next thing the client did. Must be cancel-safe: it sits in the session's `select!`
    /// beside the outbox and the timers.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;

    /// Writes every item of `batch` (draining it) with one flush. `Err`: the peer is gone or
    /// stuck (the transport bounds the write in time).
    fn send(&mut self, batch: &mut Vec<Outgoing>) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the connection the transport's way, bounded in time: WebSocket sends `disconnect`
    /// and a close frame and waits for the peer's close (RFC 6455 §7.1.1); SSE writes a
    /// `disconnect` event and ends the stream.
    fn close(self, ending: Ending) -> impl Future<Output = ()> + Send;
}

/// One thing the client did, in protocol terms.
#[derive(Debug)]
pub enum Inbound {
    /// A client command (protocol v1 vocabulary, whatever the wire).
    Frame(ClientFrame),
    /// A command of the wrong shape: answered with `bad_request`, the connection stays.
    BadRequest {
        /// The request id, when the frame had a usable one.
        id: Option<u64>,
        /// What was wrong, for the client.
        message: String,
    },
    /// A transport-level frame with no command (a WebSocket Ping or Pong): it still counts
    /// against `limits.frame_rate` and shows the client is alive.
    Alive,
    /// Input that ends the connection (unparsable, too large, binary).
    Violation(Goodbye),
    /// The transport ends the session for a reason of its own (not the client's fault, so no
    /// refusal is counted): e.g. Socket.IO after a continuity loss it cannot express.
    End(Goodbye),
    /// The peer started the closing handshake (a WebSocket close frame).
    Closed,
    /// The peer vanished (EOF, reset, I/O error).
    Gone,
}

impl Inbound {
    /// Classifies one protocol v1 text frame (WebSocket text message, SSE command body).
    pub fn from_v1_text(text: &str) -> Inbound {
        match parse_client_frame(text) {
            Ok(frame) => Inbound::Frame(frame),
            Err(FrameError::Unparseable(_)) => Inbound::Violation(Goodbye::NotJson),
            Err(FrameError::BadRequest { id, message }) => Inbound::BadRequest { id, message },
        }
    }
}

/// How a connection ends, as the transport must carry it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server says goodbye: announce it (code, reason, reconnect) and close.
    Goodbye(Goodbye),
    /// The peer closed first: complete its closing handshake.
    PeerClosed,
    /// The peer is gone: nothing can be sent.
    Gone,
}

/// One item of a session's outbound queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A publication, presence event or resubscribe notice, shared by every subscriber on the
    /// node: encoded once per wire format.
    Shared(Arc<Prepared>),
    /// One of this session's own frames (welcome, replies, pings, errors).
    Own(Own),
}

/// A frame only this session sends, already encoded as protocol v1 JSON.
#[derive(Debug, Clone)]
pub struct Own {
    /// The frame's `type` (the SSE event name).
    pub kind: FrameKind,
    /// The v1 JSON text.
    pub json: String,
    /// What this frame tells a transport that keeps a resume cursor (SSE `id:`).
    pub cursor: CursorUpdate,
}

/// How a frame moves a per-connection resume cursor (SSE's `id:`, covering every channel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CursorUpdate {
    /// Leaves it as it is.
    #[default]
    Keep,
    /// The client now holds each channel up to this position (welcome, subscribe reply).
    Set(Vec<(Arc<str>, Position)>),
    /// The channel is no longer subscribed (unsubscribe reply).
    Forget(Arc<str>),
}

impl Outgoing {
    /// An own frame that does not move the cursor.
    pub fn own(kind: FrameKind, json: String) -> Self {
        Outgoing::Own(Own {
            kind,
            json,
            cursor: CursorUpdate::Keep,
        })
    }

    /// The frame's type.
    pub fn kind(&self) -> FrameKind {
        match self {
            Outgoing::Shared(p) => p.kind,
            Outgoing::Own(o) => o.kind,
        }
    }

    /// The protocol v1 JSON text.
    pub fn v1(&self) -> &str {
        match self {
            Outgoing::Shared(p) => p.v1(),
            Outgoing::Own(o) => &o.json,
        }
    }

    /// Bytes charged to the outbox (the v1 size: what most connections write).
    pub fn len(&self) -> usize {
        self.v1().len()
    }

    /// True for an empty frame (never produced; for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
