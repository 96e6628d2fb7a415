//! Protocol v1: the JSON text frames exchanged over `GET /v1/ws`.
//!
//! Client frames are parsed in two steps so errors can be precise: text that is not a JSON
//! object cannot be answered at all (the connection closes with 4400), while an object with a
//! bad shape gets a `bad_request` reply carrying the frame's `id` when it had one. Server
//! frames are encoded here too; the `pub` frame is written by hand because it is the one on the
//! hot path and is encoded once per publication, whatever the number of subscribers.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::broker::{Position, Publication};
use crate::input::{KeyCheckError, check_unique_keys};

/// Stable error codes used in replies and in API error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    UnknownChannel,
    Forbidden,
    InvalidPayload,
    AlreadySubscribed,
    NotSubscribed,
    TooManySubscriptions,
    TooManyConnections,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    NotFound,
    /// A plain HTTP request reached a WebSocket endpoint: the credentials would be accepted,
    /// but the request did not ask for an upgrade (RFC 9110 §15.5.22, status 426).
    UpgradeRequired,
    /// HTTP only: the path exists but not with this method (405, with `Allow`).
    MethodNotAllowed,
    /// The backend answered an `rpc` call with an error of its own (its message is passed on).
    RpcError,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RpcError => "rpc_error",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The error object carried by replies and API responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// JSON pointer into `data` for `invalid_payload`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pointer: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            pointer: None,
        }
    }
}

/// Why the server ends a connection: one value per path, each knowing its code, its text and
/// whether the client should reconnect. Every transport says it its own way (a v1 `disconnect`
/// frame and the WebSocket close frame, an SSE `disconnect` event, a Socket.IO DISCONNECT), with
/// the same code and reason. The codes are the WebSocket close codes of `docs/protocol.md`:
/// 1001, 1002, 1007 and 1013 from RFC 6455 §7.4.1 / the IANA registry, the 4xxx range is
/// Herald's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Goodbye {
    /// The node is shutting down (1001); reconnect elsewhere.
    GoingAway,
    /// The broker could not take the connection's subscriptions (1013); try again later.
    Unavailable,
    /// The identity's token expired and was not refreshed (4001).
    TokenExpired,
    /// The outbound queue overflowed its byte limit (4008).
    SlowConsumer,
    /// A pending subscription fell too far behind the live stream (4008).
    SlowSubscription,
    /// A frame or message over `limits.max_frame_bytes` (4009); do not reconnect unchanged.
    FrameTooLarge,
    /// More frames than `limits.frame_rate` allows (4029).
    RateLimited,
    /// A text frame that is not a JSON object (4400).
    NotJson,
    /// A binary frame where only text is spoken (4400).
    Binary,
    /// Kicked by the server API (4403); do not reconnect.
    Kicked,
    /// The client stayed silent past `ping_interval + pong_timeout` (4408).
    PingTimeout,
    /// The client broke the WebSocket framing rules (1002, RFC 6455 §7.4.1): reserved bits,
    /// unknown opcodes, fragmented or oversized control frames, bad continuations.
    ProtocolError,
    /// A text message (or fragment) that is not valid UTF-8 (1007, RFC 6455 §8.1).
    InvalidUtf8,
    /// A `permessage-deflate` message whose payload is not valid DEFLATE data (1007, RFC 6455
    /// §7.4.1; RFC 7692 §7.2.2).
    InvalidCompressed,
}

impl Goodbye {
    /// The close code (RFC 6455 §7.4 for 1xxx; 4000–4999 are Herald's own).
    pub fn code(self) -> u16 {
        match self {
            Goodbye::GoingAway => 1001,
            Goodbye::Unavailable => 1013,
            Goodbye::TokenExpired => 4001,
            Goodbye::SlowConsumer | Goodbye::SlowSubscription => 4008,
            Goodbye::FrameTooLarge => 4009,
            Goodbye::RateLimited => 4029,
            Goodbye::NotJson | Goodbye::Binary => 4400,
            Goodbye::Kicked => 4403,
            Goodbye::PingTimeout => 4408,
            Goodbye::ProtocolError => 1002,
            Goodbye::InvalidUtf8 | Goodbye::InvalidCompressed => 1007,
        }
    }

    /// The human-readable reason (also the WebSocket close frame's reason, ≤ 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            Goodbye::GoingAway => "server shutting down",
            Goodbye::Unavailable => "temporarily unavailable",
            Goodbye::TokenExpired => "token expired",
            Goodbye::SlowConsumer => "slow consumer: outbound queue full",
            Goodbye::SlowSubscription => "slow consumer: subscription could not catch up",
            Goodbye::FrameTooLarge => "frame too large",
            Goodbye::RateLimited => "too many frames",
            Goodbye::NotJson => "frame is not a JSON object",
            Goodbye::Binary => "binary frames are not supported",
            Goodbye::Kicked => "disconnected by the server",
            Goodbye::PingTimeout => "no pong from client",
            Goodbye::ProtocolError => "websocket protocol error",
            Goodbye::InvalidUtf8 => "text is not valid UTF-8",
            Goodbye::InvalidCompressed => "invalid compressed data",
        }
    }

    /// Whether the client should reconnect (with backoff). False for input that would be
    /// refused again unchanged, and for kicks. True for the WebSocket-layer failures (1002,
    /// 1007): no `disconnect` frame tells the client anything there, so it goes by the close
    /// code alone, and browsers cannot send such frames: a middlebox that mangled the stream
    /// is the likely cause, and a new connection is the cure.
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            Goodbye::FrameTooLarge | Goodbye::NotJson | Goodbye::Binary | Goodbye::Kicked
        )
    }

    /// True for failures of the WebSocket layer itself (RFC 6455 §7.1.7, "Fail the WebSocket
    /// Connection"): the peer's framing cannot be trusted, so the close frame alone says
    /// goodbye, with no v1 `disconnect` frame before it.
    pub fn fails_the_websocket(self) -> bool {
        matches!(
            self,
            Goodbye::ProtocolError | Goodbye::InvalidUtf8 | Goodbye::InvalidCompressed
        )
    }

    /// Every goodbye, for tables and tests.
    pub const ALL: [Goodbye; 14] = [
        Goodbye::GoingAway,
        Goodbye::Unavailable,
        Goodbye::TokenExpired,
        Goodbye::SlowConsumer,
        Goodbye::SlowSubscription,
        Goodbye::FrameTooLarge,
        Goodbye::RateLimited,
        Goodbye::NotJson,
        Goodbye::Binary,
        Goodbye::Kicked,
        Goodbye::PingTimeout,
        Goodbye::ProtocolError,
        Goodbye::InvalidUtf8,
        Goodbye::InvalidCompressed,
    ];

    /// The v1 `disconnect` frame that announces this goodbye.
    pub fn frame(self) -> String {
        ServerFrame::Disconnect {
            code: self.code(),
            reason: self.reason(),
            reconnect: self.reconnect(),
        }
        .encode()
    }
}

/// The type of a server frame: the v1 `type` field, and the SSE `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Welcome,
    Reply,
    Pub,
    Join,
    Leave,
    Unsubscribed,
    Error,
    Ping,
    Pong,
    Disconnect,
}

impl FrameKind {
    /// The frame's `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Welcome => "welcome",
            FrameKind::Reply => "reply",
            FrameKind::Pub => "pub",
            FrameKind::Join => "join",
            FrameKind::Leave => "leave",
            FrameKind::Unsubscribed => "unsubscribed",
            FrameKind::Error => "error",
            FrameKind::Ping => "ping",
            FrameKind::Pong => "pong",
            FrameKind::Disconnect => "disconnect",
        }
    }
}

/// `since` in a subscribe frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        id: Option<u64>,
        channel: String,
        since: Option<Since>,
        /// A subscription token, for channels with `scope = "token"` (ignored by others).
        #[serde(default)]
        token: Option<String>,
    },
    Unsubscribe {
        id: Option<u64>,
        channel: String,
    },
    Publish {
        id: Option<u64>,
        channel: String,
        /// The payload as the client wrote it (see [`crate::input::accept_payload`]).
        data: RawJson,
    },
    Presence {
        id: Option<u64>,
        channel: String,
    },
    Refresh {
        id: Option<u64>,
        token: String,
    },
    /// Calls a `[[rpc]]` method: the backend's answer comes back in the reply; nothing is
    /// published.
    Rpc {
        id: Option<u64>,
        method: String,
        data: RawJson,
    },
    /// Renews a token-scoped subscription with a new subscription token for the same channel
    /// and user, before the old one expires.
    SubRefresh {
        id: Option<u64>,
        channel: String,
        token: String,
    },
    Ping {
        id: Option<u64>,
    },
    Pong {
        id: Option<u64>,
    },
}

/// A JSON value kept as its text. Equal when the texts are equal.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl RawJson {
    /// Wraps JSON text known to be valid (tests, examples). Panics on invalid JSON.
    pub fn from_value(value: &Value) -> Self {
        Self(RawValue::from_string(value.to_string()).expect("a Value serializes to valid JSON"))
    }
}

/// Why a client frame was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not a JSON object: nothing can be answered; close with 4400.
    Unparseable(String),
    /// A JSON object of the wrong shape: reply `bad_request` (with the id, if there was one).
    BadRequest { id: Option<u64>, message: String },
}

/// The `type` of a frame, everything else skipped.
#[derive(Deserialize)]
struct FrameType<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// A `publish` frame, read as a plain struct so `data` keeps its text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    id: Option<u64>,
    channel: String,
    data: RawJson,
}

/// An `rpc` frame, read like a publish (its `data` keeps its text).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcFrame {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    id: Option<u64>,
    method: String,
    data: RawJson,
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    // One pass for the common case: straight from the text (a `Value` first would also lose
    // the payload's exact bytes, which a publish must keep). A publish is read through its own
    // struct: serde buffers the fields of an internally tagged enum, and a raw value cannot
    // be read back from that buffer.
    let parsed = match serde_json::from_str::<FrameType<'_>>(text) {
        Ok(FrameType { kind: Some(k) }) if k == "publish" => {
            serde_json::from_str::<PublishFrame>(text).map(|p| ClientFrame::Publish {
                id: p.id,
                channel: p.channel,
                data: p.data,
            })
        }
        Ok(FrameType { kind: Some(k) }) if k == "rpc" => serde_json::from_str::<RpcFrame>(text)
            .map(|r| ClientFrame::Rpc {
                id: r.id,
                method: r.method,
                data: r.data,
            }),
        _ => serde_json::from_str::<ClientFrame>(text),
    };
    // A `Value` keeps only the last of a repeated key, serde's derive the first or neither;
    // the API refuses those, and so does the socket (one rule for every way a publication
    // enters, `crate::input`).
    let duplicate = match check_unique_keys(text) {
        Err(KeyCheckError::Duplicate(d)) => Some(d),
        _ => None,
    };
    if let (Ok(frame), None) = (&parsed, &duplicate) {
        return Ok(frame.clone());
    }
    // Something is wrong: read it as a `Value` to say precisely what, with the id if usable.
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::Unparseable(format!("not JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(FrameError::Unparseable(
            "a frame must be a JSON object".into(),
        ));
    };
    let id = map.get("id").and_then(Value::as_u64);
    if map.get("id").is_some_and(|v| !v.is_u64()) {
        return Err(FrameError::BadRequest {
            id: None,
            message: "id must be a non-negative integer".into(),
        });
    }
    if let Some(d) = duplicate {
        let id = if d.pointer.is_empty() && d.key == "id" {
            None
        } else {
            id
        };
        return Err(FrameError::BadRequest {
            id,
            message: d.to_string(),
        });
    }
    let message = match parsed {
        Err(e) => crate::input::without_position(&e),
        Ok(_) => "malformed frame".into(),
    };
    Err(FrameError::BadRequest { id, message })
}

/// A channel position as sent in `welcome` and replies.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelPosition<'a> {
    pub channel: &'a str,
    pub offset: u64,
    pub epoch: &'a str,
    /// Only when the connection resumed this channel (SSE `Last-Event-ID` / `since`): whether
    /// every missed publication follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A publication inside a subscribe reply or a history response:
/// `{"offset":…,"data":…,"from":…}`.
#[derive(Debug, Clone)]
pub struct PublicationView<'a> {
    pub offset: u64,
    pub data: &'a RawValue,
    pub from: Option<&'a RawValue>,
}

impl Serialize for PublicationView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("PublicationView", 3)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("data", self.data)?;
        match self.from {
            Some(from) => st.serialize_field("from", from)?,
            None => st.serialize_field("from", &ServerFrom { server: true })?,
        }
        st.end()
    }
}

/// `from` of a publication the server made (the API, an event source).
#[derive(Serialize)]
struct ServerFrom {
    server: bool,
}

/// The `from` text of a server publication.
pub const FROM_SERVER: &str = r#"{"server":true}"#;

/// The `from` of a client publication: the identity the gateway authenticated and the
/// connection it came from, `{"user":"alice","client":"k3x9a0qz-17"}` (`user` is `null` for an
/// anonymous connection).
pub fn client_from(user: Option<&str>, client: &str) -> Arc<RawValue> {
    #[derive(Serialize)]
    struct From<'a> {
        user: Option<&'a str>,
        client: &'a str,
    }
    let text = serde_json::to_string(&From { user, client }).unwrap_or_default();
    Arc::from(
        RawValue::from_string(text)
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON")),
    )
}

impl<'a> From<&'a Publication> for PublicationView<'a> {
    fn from(p: &'a Publication) -> Self {
        Self {
            offset: p.offset,
            data: &p.data,
            from: p.from.as_deref(),
        }
    }
}

/// A presence entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client: String,
    pub user: Option<String>,
    /// What the backend attached when it admitted the client (the subscribe proxy's `info`),
    /// as it sent it; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<RawValue>>,
}

impl ClientInfo {
    /// The fields that order and compare entries (`info` by its text).
    fn key(&self) -> (&str, Option<&str>, Option<&str>) {
        (
            &self.client,
            self.user.as_deref(),
            self.info.as_deref().map(RawValue::get),
        )
    }
}

impl PartialEq for ClientInfo {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ClientInfo {}

impl PartialOrd for ClientInfo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ClientInfo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Frames the server sends (all but `pub`, which [`encode_pub`] writes).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        client: &'a str,
        user: Option<&'a str>,
        ping_interval_ms: u64,
        subscriptions: Vec<ChannelPosition<'a>>,
        /// Request-routed transports only (SSE): the id commands are posted to.
        #[serde(skip_serializing_if = "Option::is_none")]
        session: Option<&'a str>,
    },
    Reply {
        id: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a ErrorBody>,
        #[serde(flatten)]
        body: ReplyBody<'a>,
    },
    Join {
        channel: &'a str,
        user: Option<&'a str>,
        client: &'a str,
        /// The backend's `info` about the member (subscribe proxy), when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    },
    Leave {
        channel: &'a str,
        user: Option<&'a str>,
        client: &'a str,
    },
    Unsubscribed {
        channel: &'a str,
        reason: &'a str,
    },
    Ping,
    Pong,
    Disconnect {
        code: u16,
        reason: &'a str,
        reconnect: bool,
    },
}

/// The request-specific part of a successful reply.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ReplyBody<'a> {
    Empty {},
    Subscribed {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        recovered: bool,
        publications: Vec<PublicationView<'a>>,
    },
    Published {
        offset: u64,
        epoch: &'a str,
    },
    Presence {
        channel: &'a str,
        clients: &'a [ClientInfo],
    },
    /// An `rpc` answer: the backend's `data`, as it sent it (validated).
    Rpc {
        data: &'a RawValue,
    },
}

impl ServerFrame<'_> {
    /// Serializes the frame to the text of one message.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A successful reply with a body.
pub fn reply_ok(id: u64, body: ReplyBody<'_>) -> String {
    ServerFrame::Reply {
        id,
        ok: true,
        error: None,
        body,
    }
    .encode()
}

/// An error reply.
pub fn reply_err(id: u64, error: &ErrorBody) -> String {
    ServerFrame::Reply {
        id,
        ok: false,
        error: Some(error),
        body: ReplyBody::Empty {},
    }
    .encode()
}

/// An error about a frame that carried no `id` (so no reply can name it): an `error` frame.
pub fn error_frame(error: &ErrorBody) -> String {
    channel_error_frame(None, error)
}

/// An `error` frame about one channel that no request named (a channel asked for at connect
/// through a transport's URL, refused by gate 2): `{"type":"error","channel":…,"error":…}`.
pub fn channel_error_frame(channel: Option<&str>, error: &ErrorBody) -> String {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        error: &'a ErrorBody,
    }
    serde_json::to_string(&ErrorFrame {
        kind: "error",
        channel,
        error,
    })
    .unwrap_or_default()
}

/// Encodes `{"type":"pub","channel":…,"offset":…,"data":…,"from":…}` once for all subscribers.
pub fn encode_pub(p: &Publication) -> String {
    let data = p.data.get();
    let from = p.from.as_deref().map_or(FROM_SERVER, RawValue::get);
    let mut out = String::with_capacity(56 + p.channel.len() + data.len() + from.len());
    out.push_str(r#"{"type":"pub","channel":"#);
    // Channel names are [A-Za-z0-9_.-] only, but escape anyway: the encoder must never be the
    // place where an unvalidated name turns into broken JSON.
    push_json_str(&mut out, &p.channel);
    let _ = write!(out, r#","offset":{},"data":"#, p.offset);
    out.push_str(data);
    out.push_str(r#","from":"#);
    out.push_str(from);
    out.push('}');
    out
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Converts a position for the welcome frame.
pub fn channel_position<'a>(channel: &'a str, pos: &'a Position) -> ChannelPosition<'a> {
    ChannelPosition {
        channel,
        offset: pos.offset,
        epoch: &pos.epoch,
        recovered: None,
    }
}

/// Turns a validated JSON value into the shared raw form publications carry.
pub fn raw_json(value: &Value) -> Arc<RawValue> {
    // `to_string` of a `Value` is always valid JSON, so `from_string` cannot fail here.
    let text = value.to_string();
    Arc::from(
        RawValue::from_string(text).unwrap_or_else(|_| {
            RawValue::from_string("null".to_owned()).expect("null is valid JSON")
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"type":"subscribe","id":1,"channel":"a.b"}"#).unwrap(),
            ClientFrame::Subscribe {
                id: Some(1),
                channel: "a.b".into(),
                since: None,
                token: None,
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"sub_refresh","id":2,"channel":"a.b","token":"t"}"#)
                .unwrap(),
            ClientFrame::SubRefresh {
                id: Some(2),
                channel: "a.b".into(),
                token: "t".into(),
            }
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping { id: None })
        ));
    }

    #[test]
    fn malformed_frames_are_classified() {
        assert!(matches!(
            parse_client_frame("not json"),
            Err(FrameError::Unparseable(_))
        ));
        assert!(matches!(
            parse_client_frame("[1,2]"),
            Err(FrameError::Unparseable(_))
        ));
        assert_eq!(
            parse_client_frame(r#"{"type":"subscribe","id":7}"#),
            Err(FrameError::BadRequest {
                id: Some(7),
                message: "missing field `channel`".into()
            })
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"dance","id":3}"#),
            Err(FrameError::BadRequest { id: Some(3), .. })
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"ping","id":-1}"#),
            Err(FrameError::BadRequest { id: None, .. })
        ));
    }

    #[test]
    fn pub_frame_is_valid_json() {
        let p = Publication {
            channel: Arc::from("a.b"),
            offset: 42,
            epoch: Arc::from("e"),
            data: raw_json(&serde_json::json!({"x": "y\"z"})),
            from: None,
        };
        let bytes = encode_pub(&p);
        let v: Value = serde_json::from_str(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"pub","channel":"a.b","offset":42,"data":{"x":"y\"z"},"from":{"server":true}})
        );
    }

    #[test]
    fn goodbyes_keep_their_documented_codes() {
        let table: Vec<(u16, bool)> = Goodbye::ALL
            .iter()
            .map(|g| (g.code(), g.reconnect()))
            .collect();
        assert_eq!(
            table,
            [
                (1001, true),
                (1013, true),
                (4001, true),
                (4008, true),
                (4008, true),
                (4009, false),
                (4029, true),
                (4400, false),
                (4400, false),
                (4403, false),
                (4408, true),
                (1002, true),
                (1007, true),
                (1007, true)
            ]
        );
        for g in Goodbye::ALL {
            assert!(
                g.reason().len() <= 123,
                "RFC 6455 §5.5: control payload ≤ 125"
            );
        }
        assert_eq!(
            Goodbye::Kicked.frame(),
            r#"{"type":"disconnect","code":4403,"reason":"disconnected by the server","reconnect":false}"#
        );
    }

    #[test]
    fn replies_serialize_flat() {
        let pos = Position {
            offset: 3,
            epoch: Arc::from("ep"),
        };
        let bytes = reply_ok(
            9,
            ReplyBody::Published {
                offset: pos.offset,
                epoch: &pos.epoch,
            },
        );
        let v: Value = serde_json::from_str(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reply","id":9,"ok":true,"offset":3,"epoch":"ep"})
        );
        let err = reply_err(2, &ErrorBody::new(ErrorCode::Forbidden, "no"));
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
        assert_eq!(v["ok"], false);
    }
}
