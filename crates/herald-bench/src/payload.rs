//! The stamped payload every publisher sends and every receiver parses.
//!
//! `{"s":SEQ,"t":INTENDED_UNIX_NS,"k":STEP,"p":"xxxx"}`, padded to the requested size
//! ([`Kind::Padded`]), or with `"p"` an array of order-book-like records ([`Kind::Json`]): JSON
//! as an application sends it, repeated keys and varying values, for the compression runs
//! (a run of `x` compresses ~50×, which would flatter any compressor). The
//! time is the moment the schedule *meant* to send it, not when the request left: if the
//! server stalls the publisher, the stall shows up as latency instead of vanishing (coordinated
//! omission). Wall-clock nanoseconds so that several processes on this machine agree.
//!
//! Receivers find the three keys inside whatever envelope the dialect wraps the object in, so
//! parsing costs a short scan and three integers, never a JSON parse.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The fields a receiver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub intended_ns: u64,
    pub step: u32,
}

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What fills a payload up to its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `"p":"xxxx…"`: cheap to build and parse; compresses absurdly well.
    #[default]
    Padded,
    /// `"p":[{"id":…,"sym":"…","px":…,…},…]`: realistic JSON whose values change with every
    /// publication (seeded by the sequence number), so no two payloads are the same.
    Json,
}

/// A payload of (at least) `size` bytes carrying `stamp`, filled as `kind` says.
pub fn build_kind(stamp: Stamp, size: usize, kind: Kind) -> String {
    match kind {
        Kind::Padded => build(stamp, size),
        Kind::Json => build_json(stamp, size),
    }
}

/// Symbols and words the records draw from: what market data or chat carries.
const SYMBOLS: [&str; 12] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "BRK.B", "JPM", "V", "XOM", "UNH",
];
const WORDS: [&str; 16] = [
    "filled",
    "partial",
    "open",
    "cancelled",
    "limit",
    "market",
    "stop",
    "day",
    "gtc",
    "ioc",
    "maker",
    "taker",
    "lit",
    "dark",
    "auction",
    "close",
];

/// `{"s":…,"t":…,"k":…,"p":[records…],"n":"…"}`, exactly `size` bytes when `size` ≥ 128: as
/// many whole records as fit, then a note of pseudo-random letters to the exact length.
fn build_json(stamp: Stamp, size: usize) -> String {
    // xorshift64*, seeded by the sequence number: deterministic, different per publication.
    let mut state = stamp.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = format!(
        r#"{{"s":{},"t":{},"k":{},"p":["#,
        stamp.seq, stamp.intended_ns, stamp.step
    );
    // The tail is `],"n":"<note>"}` (9 bytes around the note).
    let mut first = true;
    loop {
        let r = next();
        let record = format!(
            r#"{{"id":{},"sym":"{}","px":{}.{:02},"qty":{},"side":"{}","state":"{}","venue":"X{}","ts":{}}}"#,
            10_000_000 + r % 90_000_000,
            SYMBOLS[(r >> 20) as usize % SYMBOLS.len()],
            10 + (r >> 24) % 990,
            (r >> 34) % 100,
            1 + (r >> 41) % 5000,
            if (r >> 54) & 1 == 0 { "buy" } else { "sell" },
            WORDS[(r >> 56) as usize % WORDS.len()],
            (r >> 60) % 8,
            stamp.intended_ns / 1_000_000 + (r >> 8) % 1000
        );
        let sep = usize::from(!first);
        if out.len() + sep + record.len() + 9 > size {
            break;
        }
        if !first {
            out.push(',');
        }
        out.push_str(&record);
        first = false;
    }
    out.push_str(r#"],"n":""#);
    while out.len() + 2 < size {
        out.push(char::from(b'a' + (next() % 26) as u8));
    }
    out.push_str("\"}");
    out
}

/// A payload of (at least) `size` bytes carrying `stamp`.
pub fn build(stamp: Stamp, size: usize) -> String {
    let mut out = format!(
        r#"{{"s":{},"t":{},"k":{},"p":""#,
        stamp.seq, stamp.intended_ns, stamp.step
    );
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// Finds and reads the stamp inside a received frame, whatever the envelope. Keys are looked
/// up one by one: a gateway may re-serialize the object with its keys in another order (Herald
/// sorts them), and no envelope here has keys named `s`, `t` or `k`. Pusher carries the data
/// as a JSON string, so there the keys come escaped (`\"s\":`).
pub fn parse(frame: &[u8]) -> Option<Stamp> {
    parse_keys(frame, [br#""s":"#, br#""t":"#, br#""k":"#])
        .or_else(|| parse_keys(frame, [br#"\"s\":"#, br#"\"t\":"#, br#"\"k\":"#]))
}

fn parse_keys<const N: usize>(frame: &[u8], [s, t, k]: [&[u8; N]; 3]) -> Option<Stamp> {
    let seq = field(frame, s)?;
    let intended_ns = field(frame, t)?;
    let step = field(frame, k)?;
    Some(Stamp {
        seq,
        intended_ns,
        step: u32::try_from(step).ok()?,
    })
}

fn field(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    int(&frame[at..]).map(|(v, _)| v)
}

fn int(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((v, &b[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_to_size_and_parses_back_inside_envelopes() {
        let stamp = Stamp {
            seq: 42,
            intended_ns: 1_700_000_000_123_456_789,
            step: 3,
        };
        for size in [10, 100, 1024] {
            let p = build(stamp, size);
            assert!(p.len() >= size.min(p.len()));
            if size >= 100 {
                assert_eq!(p.len(), size);
            }
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["s"], 42);
            let herald = format!(r#"{{"type":"pub","channel":"c","offset":7,"data":{p}}}"#);
            let sio = format!(r#"42["pub",{p}]"#);
            let sorted = serde_json::to_string(&v).unwrap();
            let pusher = format!(
                r#"{{"event":"bench","channel":"bench.fanout","data":{}}}"#,
                serde_json::to_string(&p).unwrap()
            );
            for frame in [p.clone(), herald, sio, sorted, pusher] {
                assert_eq!(parse(frame.as_bytes()), Some(stamp));
            }
        }
        assert_eq!(parse(br#"{"type":"ping"}"#), None);
    }

    #[test]
    fn json_payloads_are_exact_valid_and_vary() {
        let stamp = |seq| Stamp {
            seq,
            intended_ns: 1_700_000_000_123_456_789,
            step: 1,
        };
        for size in [128, 300, 1024, 4096] {
            let p = build_kind(stamp(7), size, Kind::Json);
            assert_eq!(p.len(), size, "{p}");
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["s"], 7);
            assert_eq!(parse(p.as_bytes()), Some(stamp(7)));
            if size >= 1024 {
                assert!(v["p"].as_array().unwrap().len() >= 5, "{p}");
            }
        }
        assert_ne!(
            build_kind(stamp(1), 1024, Kind::Json)[40..],
            build_kind(stamp(2), 1024, Kind::Json)[40..]
        );
    }
}
