//! The stamped payload every publisher sends and every receiver parses.
//!
//! `{"s":SEQ,"t":INTENDED_UNIX_NS,"k":STEP,"p":"xxxx"}`, padded to the requested size. The
//! time is the moment the schedule *meant* to send it, not when the request left: if the
//! server stalls the publisher, the stall shows up as latency instead of vanishing (coordinated
//! omission). Wall-clock nanoseconds so that several processes on this machine agree.
//!
//! Receivers find the three keys inside whatever envelope the dialect wraps the object in, so
//! parsing costs a short scan and three integers, never a JSON parse.

use std::time::{SystemTime, UNIX_EPOCH};

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
}
