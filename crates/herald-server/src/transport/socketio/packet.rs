//! The Engine.IO v4 and Socket.IO v5 packet codecs: text in, typed packets out, and the
//! encoders for what Herald sends.
//!
//! Engine.IO (github.com/socketio/engine.io-protocol, v4): one packet is a type digit and its
//! data (`0` open, `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop); a
//! polling payload joins packets with the record separator `\x1e`; a binary packet is a
//! WebSocket binary frame, or `b` + base64 in a polling payload.
//!
//! Socket.IO (github.com/socketio/socket.io-protocol, v5) rides in Engine.IO `message`
//! packets: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]` with types `0` CONNECT,
//! `1` DISCONNECT, `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK.
//! The namespace `/` is written by omission.
//!
//! Parsing never panics and never allocates for what it refuses (fuzzed: `fuzz/`).

use serde::Deserialize;
use serde_json::value::RawValue;

/// The record separator between packets of one polling payload.
pub const SEPARATOR: char = '\x1e';

/// Largest attachment count a BINARY_EVENT may announce (Node's parser has no bound; this one
/// only counts them, and refuses the event anyway).
const MAX_ATTACHMENTS: usize = 64;

/// One Engine.IO packet a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `1`: the client closes the engine.
    Close,
    /// `2` with its data (`probe` during an upgrade).
    Ping(&'a str),
    /// `3` with its data.
    Pong(&'a str),
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`.
    Noop,
    /// `b…` in a polling payload: a binary packet (its bytes are not needed: Herald only
    /// counts and drops attachments).
    Binary,
}

/// Input that is not a packet of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PacketError(pub &'static str);

/// Reads one Engine.IO text packet.
pub fn parse_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let mut chars = text.char_indices();
    let Some((_, kind)) = chars.next() else {
        return Err(PacketError("empty Engine.IO packet"));
    };
    let data = &text[kind.len_utf8()..];
    Ok(match kind {
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(data),
        '3' => EnginePacket::Pong(data),
        '4' => EnginePacket::Message(data),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        'b' => EnginePacket::Binary,
        // `0` (open) is the server's alone.
        _ => return Err(PacketError("unknown Engine.IO packet type")),
    })
}

/// The packets of one polling payload, in order.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(SEPARATOR)
}

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`.
    Connect,
    /// `1`.
    Disconnect,
    /// `2`.
    Event,
    /// `3`.
    Ack,
    /// `4`.
    ConnectError,
    /// `5`.
    BinaryEvent,
    /// `6`.
    BinaryAck,
}

/// One Socket.IO packet, borrowing from the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet type.
    pub kind: Kind,
    /// Binary attachments announced (BINARY_EVENT, BINARY_ACK), 0 otherwise.
    pub attachments: usize,
    /// The namespace, `/` when omitted.
    pub namespace: &'a str,
    /// The ack id, when the sender wants an ack (or this is one).
    pub id: Option<u64>,
    /// The JSON text after the header, `None` when there is none. Checked to be JSON.
    pub data: Option<&'a str>,
}

/// Reads one Socket.IO packet (the data of an Engine.IO `message`).
pub fn parse_socketio(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(PacketError("unknown Socket.IO packet type")),
    };
    let mut at = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let digits = digits_at(bytes, at);
        if digits == 0 || bytes.get(at + digits) != Some(&b'-') {
            return Err(PacketError("a binary packet must announce its attachments"));
        }
        attachments = text[at..at + digits]
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_ATTACHMENTS)
            .ok_or(PacketError("too many attachments"))?;
        at += digits + 1;
    }
    let mut namespace = "/";
    if bytes.get(at) == Some(&b'/') {
        let end = text[at..].find(',').map_or(text.len(), |i| at + i);
        namespace = &text[at..end];
        at = (end + 1).min(text.len());
    }
    let digits = digits_at(bytes, at);
    let id = if digits > 0 {
        let id = text[at..at + digits]
            .parse::<u64>()
            .map_err(|_| PacketError("ack id out of range"))?;
        at += digits;
        Some(id)
    } else {
        None
    };
    let rest = &text[at..];
    let data = if rest.is_empty() {
        None
    } else {
        // Checked here, so everything after may borrow raw values from it.
        serde_json::from_str::<&RawValue>(rest)
            .map_err(|_| PacketError("packet data is not JSON"))?;
        Some(rest)
    };
    let valid = match kind {
        Kind::Connect => data.is_none_or(|d| d.starts_with('{')),
        Kind::Disconnect => data.is_none(),
        Kind::Event | Kind::BinaryEvent => data.is_some_and(|d| d.starts_with('[')),
        Kind::Ack | Kind::BinaryAck => id.is_some() && data.is_some_and(|d| d.starts_with('[')),
        // An object (or a string), as Node's parser accepts: never a number, which would run
        // into the id's digits.
        Kind::ConnectError => data.is_none_or(|d| d.starts_with(['{', '"'])),
    };
    if !valid {
        return Err(PacketError("packet data of the wrong shape for its type"));
    }
    Ok(Packet {
        kind,
        attachments,
        namespace,
        id,
        data,
    })
}

fn digits_at(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..)
        .unwrap_or_default()
        .iter()
        // The whole run, as Node's parser reads it: an id too long for u64 is then refused
        // (stopping early would read the rest of the run as data).
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// An EVENT's name and arguments, borrowed from the packet's data.
#[derive(Debug)]
pub struct Event<'a> {
    /// The event name (the array's first element).
    pub name: String,
    /// The other elements, as JSON text.
    pub args: Vec<&'a RawValue>,
}

/// Splits an EVENT's data (`["name", …args]`).
pub fn parse_event(data: &str) -> Result<Event<'_>, PacketError> {
    let items: Vec<&RawValue> =
        serde_json::from_str(data).map_err(|_| PacketError("event data is not an array"))?;
    let (first, args) = items
        .split_first()
        .ok_or(PacketError("an event needs a name"))?;
    let name = serde_json::from_str::<String>(first.get())
        .map_err(|_| PacketError("an event name must be a string"))?;
    Ok(Event {
        name,
        args: args.to_vec(),
    })
}

/// What the client may put in CONNECT's auth object that Herald reads: the token, and
/// Socket.IO's recovery fields (`pid`, `offset`) that `socket.io-client` adds by itself.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectAuth {
    /// The JWT (gate 1), like `?token=`.
    #[serde(default)]
    pub token: Option<String>,
    /// The private session id of the connection to recover.
    #[serde(default)]
    pub pid: Option<String>,
    /// The recovery offset: the last publication's cursor the client received.
    #[serde(default)]
    pub offset: Option<String>,
}

/// Reads CONNECT's auth object; anything that is not an object with string fields reads as
/// no auth (gate 1 then decides with the other credentials).
pub fn connect_auth(data: Option<&str>) -> ConnectAuth {
    data.and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .map(|v| ConnectAuth {
            token: v.get("token").and_then(|t| t.as_str()).map(str::to_owned),
            pid: v.get("pid").and_then(|t| t.as_str()).map(str::to_owned),
            offset: v.get("offset").and_then(|t| t.as_str()).map(str::to_owned),
        })
        .unwrap_or_default()
}

/// Appends a JSON string literal of `s` (escaped) to `out`.
pub fn push_json_str(out: &mut String, s: &str) {
    // Cannot fail: a string always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Engine.IO `message` + Socket.IO EVENT on `/`: `42["name",<args…>]`, without the closing
/// `]` when `open` (the caller appends more arguments and closes it).
pub fn event(name: &str, args: &[&str], open: bool) -> String {
    let mut out =
        String::with_capacity(8 + name.len() + args.iter().map(|a| a.len() + 1).sum::<usize>());
    out.push_str("42[");
    push_json_str(&mut out, name);
    for a in args {
        out.push(',');
        out.push_str(a);
    }
    if !open {
        out.push(']');
    }
    out
}

/// Engine.IO `message` + Socket.IO ACK on `/`: `43<id>[<arg>]`.
pub fn ack(id: u64, arg: &str) -> String {
    format!("43{id}[{arg}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(parse_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(parse_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(parse_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(parse_engine("bAQID"), Ok(EnginePacket::Binary));
        for bad in ["", "0{}", "7", "x", "é"] {
            assert!(parse_engine(bad).is_err(), "{bad:?}");
        }
        let parts: Vec<&str> = split_payload("42[\"a\"]\x1e3\x1e6").collect();
        assert_eq!(parts, ["42[\"a\"]", "3", "6"]);
    }

    #[test]
    fn socketio_packets() {
        let p = parse_socketio("0").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.id, p.data),
            (Kind::Connect, "/", None, None)
        );
        let p = parse_socketio(r#"0{"token":"t"}"#).unwrap();
        assert_eq!(p.data, Some(r#"{"token":"t"}"#));
        let p = parse_socketio(r#"0/admin,{"token":"t"}"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        let p = parse_socketio("0/admin").unwrap();
        assert_eq!((p.namespace, p.data), ("/admin", None));
        let p = parse_socketio(r#"212["subscribe",{"channel":"a"}]"#).unwrap();
        assert_eq!((p.kind, p.id), (Kind::Event, Some(12)));
        let p = parse_socketio(r#"/chat,7["x"]"#);
        assert!(p.is_err(), "no type digit");
        let p = parse_socketio(r#"51-["up",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments, p.id), (Kind::BinaryEvent, 1, None));
        let p = parse_socketio(r#"52-/x,9["up"]"#).unwrap();
        assert_eq!((p.attachments, p.namespace, p.id), (2, "/x", Some(9)));
        let p = parse_socketio("1").unwrap();
        assert_eq!(p.kind, Kind::Disconnect);
        // The id is the whole digit run (leading zeros and all), never cut into id and data.
        let p = parse_socketio("400000004704000000004740").unwrap();
        assert_eq!((p.id, p.data), (Some(4704000000004740), None));
        for bad in [
            "",
            "9",
            "2",
            "2{}",
            "2[",
            "0[]",
            "1{}",
            "3[]",
            "5[\"x\"]",
            "5x-[\"x\"]",
            "565-[\"x\"]",
            "299999999999999999999999[\"x\"]",
            "4-1",
        ] {
            assert!(parse_socketio(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events_and_auth() {
        let e = parse_event(r#"["publish",{"channel":"a","data":{"x":1}},2]"#).unwrap();
        assert_eq!(e.name, "publish");
        assert_eq!(e.args.len(), 2);
        assert_eq!(e.args[0].get(), r#"{"channel":"a","data":{"x":1}}"#);
        assert!(parse_event("[]").is_err());
        assert!(parse_event("[1]").is_err());
        let a = connect_auth(Some(r#"{"token":"t","pid":"p","offset":"a:1:e"}"#));
        assert_eq!(
            (a.token.as_deref(), a.pid.as_deref(), a.offset.as_deref()),
            (Some("t"), Some("p"), Some("a:1:e"))
        );
        assert!(connect_auth(Some(r#"{"token":5}"#)).token.is_none());
        assert!(connect_auth(None).token.is_none());
    }

    #[test]
    fn encoders() {
        assert_eq!(event("a\"b", &["1", "{}"], false), r#"42["a\"b",1,{}]"#);
        assert_eq!(event("a", &["1"], true), r#"42["a",1"#);
        assert_eq!(ack(3, "{}"), "433[{}]");
    }
}
