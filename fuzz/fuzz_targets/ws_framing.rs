//! The RFC 6455 frame decoder of Herald's WebSocket server (`herald_server::transport::
//! framing::Decoder`): arbitrary bytes as a client's stream.
//!
//! Input: the first byte picks the chunk size the stream is fed in (1–64 bytes, or all at
//! once) and whether `permessage-deflate` was negotiated; the rest is the stream.
//!
//! Invariants: chunking changes nothing (the same events and the same error, whatever the
//! read boundaries); every uncompressed text message is UTF-8; no message exceeds the limit
//! and no control payload exceeds 125 bytes; a close status is a valid code; once failed the
//! decoder stays failed; and the events, re-encoded as masked client frames (each message
//! split into two fragments with a pong in between), decode back to the same events.

#![no_main]

use herald_server::transport::framing::{Decoder, Error, Event, MAX_CONTROL, valid_close_code};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

/// Every event of `input` fed in chunks of `step` bytes, and the error that stopped it.
fn run(rsv1: bool, input: &[u8], step: usize) -> (Vec<Event>, Option<Error>) {
    let mut d = Decoder::new(LIMIT, rsv1);
    let mut events = Vec::new();
    for chunk in input.chunks(step) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match d.decode(rest) {
                Ok((n, ev)) => {
                    assert!(n <= rest.len());
                    assert!(n > 0 || ev.is_some(), "no progress");
                    rest = &rest[n..];
                    events.extend(ev);
                }
                Err(e) => {
                    assert!(d.failed() && d.decode(b"\x81\x80").is_err(), "stays failed");
                    return (events, Some(e));
                }
            }
        }
    }
    (events, None)
}

/// A masked client frame.
fn frame(out: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let rsv1 = first & 0x80 != 0;
    let step = match first & 0x7f {
        0 => usize::MAX,
        n => usize::from(n % 64) + 1,
    };
    let (events, error) = run(rsv1, input, usize::MAX);
    assert_eq!(run(rsv1, input, step), (events.clone(), error), "chunking changed the result");

    let mask = [first, first ^ 0x5a, 0x33, 0xc4];
    let mut again = Vec::new();
    for ev in &events {
        match ev {
            Event::Message {
                binary,
                compressed,
                data,
            } => {
                assert!(data.len() <= LIMIT);
                assert!(!*compressed || rsv1);
                if !binary && !compressed {
                    assert!(std::str::from_utf8(data).is_ok());
                }
                let (a, b) = data.split_at(data.len() / 2);
                let opcode = if *binary { 2 } else { 1 };
                frame(&mut again, false, *compressed, opcode, a, mask);
                frame(&mut again, true, false, 0xA, b"", mask);
                frame(&mut again, true, false, 0, b, mask);
            }
            Event::Ping(p) => {
                assert!(p.len() <= MAX_CONTROL);
                frame(&mut again, true, false, 0x9, p, mask);
            }
            Event::Pong => frame(&mut again, true, false, 0xA, b"", mask),
            Event::Close(status) => {
                let mut p = Vec::new();
                if let Some((code, reason)) = status {
                    assert!(valid_close_code(*code));
                    p.extend_from_slice(&code.to_be_bytes());
                    p.extend_from_slice(reason.as_bytes());
                }
                frame(&mut again, true, false, 0x8, &p, mask);
            }
        }
    }
    let (back, err) = run(rsv1, &again, step);
    assert_eq!(err, None, "re-encoded events failed to decode");
    let expected: Vec<Event> = events
        .into_iter()
        .flat_map(|ev| match ev {
            m @ Event::Message { .. } => vec![Event::Pong, m],
            other => vec![other],
        })
        .collect();
    assert_eq!(back, expected);
});
