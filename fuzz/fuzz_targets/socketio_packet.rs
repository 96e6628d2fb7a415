//! The Engine.IO v4 and Socket.IO v5 packet parsers (`herald_server::transport::socketio::
//! packet`): what a client sends in a polling POST body (packets joined by `\x1e`) or a
//! WebSocket text message.
//!
//! Invariants: no panic; a Socket.IO packet's data, when present, is JSON text of the shape its
//! type requires (CONNECT an object, EVENT a non-empty array, ACK an array with an id,
//! DISCONNECT nothing); the namespace starts with `/`; attachments only on binary types and
//! bounded; the packet re-encoded (namespace `/` omitted, as clients write it) parses back to
//! the same packet; an EVENT that splits has a string name and one argument per remaining
//! element.

#![no_main]

use herald_server::transport::socketio::packet::{
    EnginePacket, Kind, parse_engine, parse_event, parse_socketio, split_payload,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    for piece in split_payload(text) {
        let Ok(EnginePacket::Message(m)) = parse_engine(piece) else {
            continue;
        };
        let Ok(p) = parse_socketio(m) else {
            continue;
        };
        assert!(p.namespace.starts_with('/'), "{m:?}");
        let binary = matches!(p.kind, Kind::BinaryEvent | Kind::BinaryAck);
        assert!(binary || p.attachments == 0, "{m:?}");
        assert!(p.attachments <= 64, "{m:?}");
        if let Some(d) = p.data {
            // JSON syntax (a number beyond f64 is still JSON; the payload rules refuse it later).
            assert!(
                serde_json::from_str::<&serde_json::value::RawValue>(d).is_ok(),
                "{m:?}"
            );
        }
        match p.kind {
            Kind::Connect => assert!(p.data.is_none_or(|d| d.starts_with('{'))),
            Kind::Disconnect => assert!(p.data.is_none()),
            Kind::Event | Kind::BinaryEvent => assert!(p.data.is_some_and(|d| d.starts_with('['))),
            Kind::Ack | Kind::BinaryAck => assert!(p.id.is_some()),
            Kind::ConnectError => {}
        }
        let digit = match p.kind {
            Kind::Connect => '0',
            Kind::Disconnect => '1',
            Kind::Event => '2',
            Kind::Ack => '3',
            Kind::ConnectError => '4',
            Kind::BinaryEvent => '5',
            Kind::BinaryAck => '6',
        };
        let mut again = String::from(digit);
        if binary {
            again.push_str(&format!("{}-", p.attachments));
        }
        if p.namespace != "/" {
            again.push_str(p.namespace);
            if p.id.is_some() || p.data.is_some() {
                again.push(',');
            }
        }
        if let Some(id) = p.id {
            again.push_str(&id.to_string());
        }
        if let Some(d) = p.data {
            again.push_str(d);
        }
        let back = parse_socketio(&again).unwrap_or_else(|e| panic!("{again:?} from {m:?}: {e}"));
        assert_eq!(back, p, "{again:?} from {m:?}");
        if matches!(p.kind, Kind::Event | Kind::BinaryEvent) {
            if let Ok(e) = parse_event(p.data.unwrap()) {
                let all: Vec<&serde_json::value::RawValue> =
                    serde_json::from_str(p.data.unwrap()).unwrap();
                let name: String = serde_json::from_str(all[0].get()).unwrap();
                assert_eq!(name, e.name);
                assert_eq!(e.args.len(), all.len() - 1);
            }
        }
    }
});
