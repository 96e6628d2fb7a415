//! The protocol v1 client frame parser (`parse_client_frame`) and the transport-side
//! classification every wire uses (`Inbound::from_v1_text`: WebSocket text messages and the
//! SSE command body).
//!
//! Invariants: the two agree; "unparseable" (close 4400) means exactly "not a JSON object";
//! an accepted frame re-serialises to JSON that parses back to the same frame; a `bad_request`
//! carries the frame's own `id` when it has one.

#![no_main]

use herald_core::protocol::{ClientFrame, FrameError, Goodbye, parse_client_frame};
use herald_node::Inbound;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    let parsed = parse_client_frame(text);
    let as_object = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.as_object().cloned());

    match (&parsed, Inbound::from_v1_text(text)) {
        (Ok(f), Inbound::Frame(g)) => assert_eq!(*f, g),
        (Err(FrameError::Unparseable(_)), Inbound::Violation(Goodbye::NotJson)) => {}
        (
            Err(FrameError::BadRequest { id, message }),
            Inbound::BadRequest { id: i, message: m },
        ) => {
            assert_eq!((id, message), (&i, &m));
        }
        (p, i) => panic!("parser and transport disagree: {p:?} vs {i:?}"),
    }

    match parsed {
        Err(FrameError::Unparseable(_)) => {
            assert!(as_object.is_none(), "a JSON object was called unparseable");
        }
        Err(FrameError::BadRequest { id, .. }) => {
            let obj = as_object.expect("bad_request is only for JSON objects");
            if let Some(id) = id {
                assert_eq!(obj.get("id").and_then(Value::as_u64), Some(id));
            }
        }
        Ok(frame) => {
            let Some(obj) = as_object else {
                // A publish keeps its payload as text, checked for syntax only; a payload no
                // `Value` can hold (a lone surrogate escape, `1e400`) is accepted here and
                // refused when published, with `bad_request`.
                let ClientFrame::Publish { data, .. } = &frame else {
                    panic!("a frame that is not a JSON object: {frame:?}");
                };
                assert!(herald_core::input::accept_payload(&data.0).is_err());
                return;
            };
            assert_eq!(id_of(&frame), obj.get("id").and_then(Value::as_u64));
            // A publish keeps its payload as text; it round-trips as the same JSON value
            // (a `Value` re-encodes numbers and key order, so compare values, not bytes).
            let Some(json) = to_json(&frame) else {
                return;
            };
            let again = serde_json::to_string(&json).expect("serialises");
            let back = parse_client_frame(&again).expect("a re-serialised frame parses");
            assert!(same(&back, &frame), "re-serialised as {again}: {back:?} vs {frame:?}");
        }
    }
});

fn id_of(f: &ClientFrame) -> Option<u64> {
    match f {
        ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Publish { id, .. }
        | ClientFrame::Presence { id, .. }
        | ClientFrame::Refresh { id, .. }
        | ClientFrame::SubRefresh { id, .. }
        | ClientFrame::Rpc { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Pong { id } => *id,
    }
}

/// Equal frames, a publish's `data` compared as JSON values.
fn same(a: &ClientFrame, b: &ClientFrame) -> bool {
    match (a, b) {
        (
            ClientFrame::Publish { id, channel, data },
            ClientFrame::Publish {
                id: i,
                channel: c,
                data: d,
            },
        ) => {
            let v = |r: &herald_core::protocol::RawJson| serde_json::from_str::<Value>(r.0.get()).ok();
            id == i && channel == c && v(data) == v(d)
        }
        (
            ClientFrame::Rpc { id, method, data },
            ClientFrame::Rpc {
                id: i,
                method: m,
                data: d,
            },
        ) => {
            let v = |r: &herald_core::protocol::RawJson| serde_json::from_str::<Value>(r.0.get()).ok();
            id == i && method == m && v(data) == v(d)
        }
        _ => a == b,
    }
}

/// The frame as a client would write it (protocol v1, `docs/protocol.md`); `None` when a
/// publish's payload has a number no `Value` can hold (`1e400`).
fn to_json(f: &ClientFrame) -> Option<Value> {
    let mut m = Map::new();
    let kind = match f {
        ClientFrame::Subscribe {
            channel,
            since,
            token,
            ..
        } => {
            m.insert("channel".into(), json!(channel));
            if let Some(t) = token {
                m.insert("token".into(), json!(t));
            }
            if let Some(s) = since {
                m.insert(
                    "since".into(),
                    json!({ "offset": s.offset, "epoch": s.epoch }),
                );
            }
            "subscribe"
        }
        ClientFrame::Unsubscribe { channel, .. } => {
            m.insert("channel".into(), json!(channel));
            "unsubscribe"
        }
        ClientFrame::Publish { channel, data, .. } => {
            m.insert("channel".into(), json!(channel));
            m.insert("data".into(), serde_json::from_str(data.0.get()).ok()?);
            "publish"
        }
        ClientFrame::Presence { channel, .. } => {
            m.insert("channel".into(), json!(channel));
            "presence"
        }
        ClientFrame::Refresh { token, .. } => {
            m.insert("token".into(), json!(token));
            "refresh"
        }
        ClientFrame::SubRefresh { channel, token, .. } => {
            m.insert("channel".into(), json!(channel));
            m.insert("token".into(), json!(token));
            "sub_refresh"
        }
        ClientFrame::Rpc { method, data, .. } => {
            m.insert("method".into(), json!(method));
            m.insert("data".into(), serde_json::from_str(data.0.get()).ok()?);
            "rpc"
        }
        ClientFrame::Ping { .. } => "ping",
        ClientFrame::Pong { .. } => "pong",
    };
    m.insert("type".into(), json!(kind));
    if let Some(id) = id_of(f) {
        m.insert("id".into(), json!(id));
    }
    Some(Value::Object(m))
}
