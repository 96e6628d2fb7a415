//! `permessage-deflate` (RFC 7692) for `/v1/ws`: the negotiation, and the message transforms
//! the WebSocket codec applies to frames with RSV1 set.
//!
//! Herald always runs the extension without context takeover, in both directions
//! (`server_no_context_takeover; client_no_context_takeover`):
//!
//! - a broadcast is compressed **once per publication** and the same bytes go to every
//!   subscriber that negotiated the extension ([`compressed`] caches them in the publication's
//!   [`Wire::WebSocketDeflate`] slot). With context takeover each connection's output would
//!   depend on what that connection was sent before, so every subscriber would need its own
//!   compression of every message;
//! - no zlib state lives in a connection: the compressor and the decompressor are one per
//!   thread, reset before each message ([`compress`], [`inflate`]). An idle connection that
//!   negotiated compression costs what one that did not costs.
//!
//! The price is the ratio: each message is compressed without the dictionary of the previous
//! ones (on realistic 1 KB JSON publications, 2.4× at level 6 where Node `ws` with a warm
//! window reached 3.7×; see `docs/benchmarks.md`, issue 16 part six).
//!
//! [`negotiate`] reads every offer in the request's `Sec-WebSocket-Extensions` headers (RFC
//! 6455 §9.1 grammar) and accepts the first acceptable `permessage-deflate` one (RFC 7692 §5,
//! §7.1). Offers Herald cannot honour are declined, never answered with something the client
//! did not allow; see [`Agreement`] for the rules.

use std::cell::RefCell;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use herald_core::protocol::Goodbye;
use herald_node::{Prepared, Wire};

/// The extension's registered name (RFC 7692 §7).
pub const EXTENSION: &str = "permessage-deflate";

/// The response Herald gives to every accepted offer (RFC 7692 §7.1.1.1, §7.1.1.2: a server
/// may add both parameters whatever the client offered).
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The trailer a sync flush ends with, removed from every compressed message and appended
/// again before inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The default DEFLATE level (`websocket.deflate_level`): zlib's own default.
pub const DEFAULT_LEVEL: u32 = 6;

/// An accepted `permessage-deflate` offer.
///
/// Rules applied to each offer (RFC 7692 §7): an unknown parameter, a repeated parameter, a
/// parameter with a value it must not have (the two `*_no_context_takeover`) or without one it
/// must have (`server_max_window_bits`), or a window size outside 8–15 declines the offer.
/// `server_max_window_bits` below 15 declines it too: one compression of a publication is
/// shared by every subscriber, so every subscriber must accept the same (32 KiB) window; a
/// client that offers a smaller one usually follows with a plainer offer, which is accepted. `client_max_window_bits` (with or without a value) is accepted and not answered:
/// the decompressor takes any window up to 32 KiB, and §7.1.2.2 lets the server omit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The `client_max_window_bits` the client offered (`Some(15)` for the bare parameter),
    /// for the record; it changes nothing on the server.
    pub client_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 response: [`RESPONSE`].
    pub fn response(&self) -> HeaderValue {
        HeaderValue::from_static(RESPONSE)
    }
}

/// The first acceptable `permessage-deflate` offer of a request (every
/// `Sec-WebSocket-Extensions` header, each a comma-separated list of offers), or `None` when
/// there is none: the connection then runs uncompressed and the response carries no
/// `Sec-WebSocket-Extensions` header.
pub fn negotiate(headers: &HeaderMap) -> Option<Agreement> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        // A value that is not visible ASCII cannot be the §9.1 grammar: skip the header.
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| split_unquoted(v, ','))
        .find_map(accept)
}

/// Splits `s` on `sep` outside quoted strings, trimming each piece (HTTP optional whitespace).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

/// RFC 7230 `token` (RFC 6455 §9.1 uses it for extension and parameter names and values).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A parameter value: a token, or a quoted string whose content (unescaped) is a token
/// (RFC 6455 §9.1). `None` when it is neither.
fn param_value(raw: &str) -> Option<String> {
    match raw.strip_prefix('"') {
        None => is_token(raw).then(|| raw.to_owned()),
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            is_token(&out).then_some(out)
        }
    }
}

/// A window size parameter's value, 8 to 15 (RFC 7692 §7.1.2.1, §7.1.2.2).
fn window_bits(v: &str) -> Option<u8> {
    // §7.1.2.1: digits only, no leading zero.
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// One offer (`name; param; param=value`), accepted or not.
fn accept(offer: &str) -> Option<Agreement> {
    let mut parts = split_unquoted(offer, ';').into_iter();
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut agreement = Agreement {
        client_max_window_bits: None,
    };
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(param_value(v.trim())?)),
            None => (part, None),
        };
        if !is_token(name) {
            return None;
        }
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value.as_deref()) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                if window_bits(v)? < 15 {
                    return None;
                }
            }
            ("client_max_window_bits", None) => agreement.client_max_window_bits = Some(15),
            ("client_max_window_bits", Some(v)) => {
                agreement.client_max_window_bits = Some(window_bits(v)?);
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreement)
}

thread_local! {
    // One per thread, reset per message: a connection never holds zlib state (module docs).
    // Keyed by level (one level per node in practice: the config's).
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// [`compress_level`] at [`DEFAULT_LEVEL`].
pub fn compress(message: &[u8]) -> Vec<u8> {
    compress_level(message, DEFAULT_LEVEL)
}

/// The payload of a compressed message (RFC 7692 §7.2.1): `message` as raw DEFLATE at `level`
/// (1–9) from a fresh state, ended with a sync flush whose `00 00 ff ff` trailer is removed.
/// The frame that carries it has RSV1 set on its first fragment.
pub fn compress_level(message: &[u8], level: u32) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut slot = c.borrow_mut();
        let c = match &mut *slot {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            other => {
                &mut other
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        // Usually smaller than the input; stored blocks add 5 bytes per 64 KiB at worst.
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        let mut read = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // Sync flush with all input given: done once the output has room left over.
            c.compress_vec(&message[read..], &mut out, FlushCompress::Sync)
                .expect("raw deflate of a byte slice cannot fail");
            read += (c.total_in() - before) as usize;
            if read == message.len() && out.len() < out.capacity() {
                break;
            }
        }
        debug_assert!(out.ends_with(&TAIL), "a sync flush ends with 00 00 ff ff");
        out.truncate(out.len().saturating_sub(TAIL.len()));
        out
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the limit (a decompression bomb, or just too large). Nothing beyond
    /// `limit + 1` bytes was ever allocated.
    #[error("inflated message larger than the limit")]
    TooLarge,
    /// Not a valid DEFLATE stream.
    #[error("invalid compressed data")]
    Corrupt,
}

impl InflateError {
    /// How the connection ends: [`Goodbye::FrameTooLarge`] (4009, the same as an uncompressed
    /// message over `limits.max_frame_bytes`), or [`Goodbye::InvalidCompressed`] (1007: RFC
    /// 6455 §7.4.1, "data within a message that was not consistent with the type of the
    /// message"; what Node's `ws` and Autobahn's reference servers use for a broken
    /// permessage-deflate stream).
    pub fn goodbye(self) -> Goodbye {
        match self {
            InflateError::TooLarge => Goodbye::FrameTooLarge,
            InflateError::Corrupt => Goodbye::InvalidCompressed,
        }
    }
}

/// The message a compressed payload (all its frames' payloads, concatenated) carries (RFC 7692
/// §7.2.2): `00 00 ff ff` appended, raw-inflated from a fresh state, at most `limit` bytes.
/// Data after a final block (BFINAL, §7.2.3.4) is ignored.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        // A guess (JSON inflates ~2-4x), never past the limit: `feed` grows it as needed.
        let mut out = Vec::with_capacity((payload.len() * 2).max(64).min(limit.saturating_add(1)));
        if feed(&mut d, payload, &mut out, limit, FlushDecompress::None)? {
            return Ok(out);
        }
        feed(&mut d, &TAIL, &mut out, limit, FlushDecompress::Sync)?;
        Ok(out)
    })
}

/// Inflates all of `input` into `out`, growing it up to `limit + 1` bytes; true when the
/// stream ended (a final block).
fn feed(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
    flush: FlushDecompress,
) -> Result<bool, InflateError> {
    let mut read = 0;
    loop {
        if out.len() == out.capacity() {
            // One byte past the limit is how "more than the limit" is seen.
            let room = limit.saturating_add(1) - out.len();
            if room == 0 {
                return Err(InflateError::TooLarge);
            }
            out.reserve_exact(out.capacity().max(64).min(room));
        }
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[read..], out, flush)
            .map_err(|_| InflateError::Corrupt)?;
        read += (d.total_in() - before_in) as usize;
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        // Everything consumed, and room left over: nothing is pending inside the inflater.
        if read == input.len() && out.len() < out.capacity() {
            return Ok(false);
        }
        if d.total_in() == before_in && d.total_out() == before_out && out.len() < out.capacity() {
            // No progress with input and room available: the stream is broken.
            return Err(InflateError::Corrupt);
        }
    }
}

/// A publication's compressed v1 frame (at `level`), built by the first subscriber that needs
/// it and shared by every other (the [`Wire::WebSocketDeflate`] slot; the level is the node's,
/// the same for every subscriber); `None` when compression does not make it smaller (the
/// frame then goes out uncompressed, RFC 7692 §6: compression is per message).
pub fn compressed(p: &Prepared, level: u32) -> Option<Bytes> {
    p.cached(Wire::WebSocketDeflate, |p| {
        let text = p.v1().as_bytes();
        let packed = compress_level(text, level);
        (packed.len() < text.len()).then(|| Bytes::from(packed))
    })
}

/// What one connection does about compression, decided at the upgrade: `None` in a
/// connection's state when the extension was not negotiated (or is disabled in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Messages shorter than this (bytes of v1 JSON) go out uncompressed:
    /// `websocket.deflate_min_bytes`.
    pub min_bytes: usize,
    /// DEFLATE level: `websocket.deflate_level`.
    pub level: u32,
}

impl Deflate {
    /// The compression policy for a connection whose request carried `headers`, under the
    /// node's `[websocket]` config, and the response header to send: `None` when
    /// `permessage_deflate` is off or no offer is acceptable.
    pub fn negotiate(
        headers: &HeaderMap,
        config: &herald_core::config::WebSocketConfig,
    ) -> Option<(Self, HeaderValue)> {
        if !config.permessage_deflate {
            return None;
        }
        let agreement = negotiate(headers)?;
        let policy = Self {
            min_bytes: config.deflate_min_bytes,
            level: config.deflate_level,
        };
        Some((policy, agreement.response()))
    }

    /// The compressed payload for a shared frame, or `None` to send it as plain text (under
    /// `min_bytes`, or not smaller compressed). Computed once per publication.
    pub fn shared(&self, p: &Prepared) -> Option<Bytes> {
        if p.v1().len() < self.min_bytes {
            return None;
        }
        compressed(p, self.level)
    }

    /// The compressed payload for a connection's own frame (replies, `welcome`), or `None` to
    /// send it as plain text.
    pub fn own(&self, text: &[u8]) -> Option<Vec<u8>> {
        if text.len() < self.min_bytes {
            return None;
        }
        let packed = compress_level(text, self.level);
        (packed.len() < text.len()).then_some(packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use flate2::read::DeflateDecoder;
    use herald_core::Publication;
    use herald_core::config::WebSocketConfig;
    use serde_json::value::RawValue;
    use std::io::Read;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        h
    }

    fn json_payload(n: usize) -> String {
        // Realistic JSON: keys repeat, values vary.
        let mut s = String::from("[");
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"id":{},"user":"user-{}","price":{}.{:02},"side":"{}","ts":{}}}"#,
                1000 + i * 7,
                i * 31 % 97,
                100 + i * 13 % 50,
                i * 17 % 100,
                if i % 3 == 0 { "buy" } else { "sell" },
                1_700_000_000_000u64 + (i as u64) * 1234
            ));
        }
        s.push(']');
        s
    }

    #[test]
    fn rfc_7692_hello_example() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        assert_eq!(
            compress(b"Hello"),
            [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
        assert_eq!(
            inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(),
            b"Hello"
        );
        // The same message compressed twice is the same bytes: no state carried over.
        assert_eq!(compress(b"Hello"), compress(b"Hello"));
    }

    #[test]
    fn rfc_7692_other_examples_inflate() {
        // §7.2.3.3: "Hello" in a stored (BTYPE=00) block.
        assert_eq!(
            inflate(
                &[
                    0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00
                ],
                100
            )
            .unwrap(),
            b"Hello"
        );
        // §7.2.3.4: a final block; the appended trailer is ignored.
        assert_eq!(
            inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.6: an empty message.
        assert_eq!(inflate(&[0x00], 100).unwrap(), b"");
        assert_eq!(inflate(&compress(b""), 100).unwrap(), b"");
    }

    #[test]
    fn every_level_round_trips_and_levels_do_not_leak_into_each_other() {
        let text = json_payload(30);
        let mut sizes = Vec::new();
        for level in 1..=9 {
            let packed = compress_level(text.as_bytes(), level);
            assert_eq!(inflate(&packed, text.len()).unwrap(), text.as_bytes());
            assert_eq!(
                packed,
                compress_level(text.as_bytes(), level),
                "deterministic"
            );
            sizes.push(packed.len());
        }
        assert!(
            sizes[5] < sizes[0],
            "level 6 smaller than level 1: {sizes:?}"
        );
    }

    #[test]
    fn round_trips_and_standard_decoders_agree() {
        for text in [
            String::new(),
            "x".into(),
            json_payload(1),
            json_payload(20),
            json_payload(2000),
        ] {
            let packed = compress(text.as_bytes());
            assert_eq!(inflate(&packed, text.len()).unwrap(), text.as_bytes());
            // An independent raw DEFLATE decoder reads the same (trailer restored).
            let mut framed = packed.clone();
            framed.extend_from_slice(&TAIL);
            let mut plain = Vec::new();
            let _ = DeflateDecoder::new(&framed[..]).read_to_end(&mut plain);
            assert_eq!(plain, text.as_bytes());
        }
        let big = json_payload(20);
        assert!(
            compress(big.as_bytes()).len() * 2 < big.len(),
            "JSON shrinks"
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 16 MiB of zeros compress to ~16 KB.
        let zeros = vec![0u8; 16 << 20];
        let packed = compress(&zeros);
        assert!(packed.len() < 64 * 1024);
        assert_eq!(inflate(&packed, 128 * 1024), Err(InflateError::TooLarge));
        assert_eq!(
            inflate(&packed, (16 << 20) - 1),
            Err(InflateError::TooLarge)
        );
        assert_eq!(inflate(&packed, 16 << 20).unwrap().len(), 16 << 20);
        // Exactly at the limit is fine, one byte past is not.
        let text = json_payload(10);
        let packed = compress(text.as_bytes());
        assert!(inflate(&packed, text.len()).is_ok());
        assert_eq!(
            inflate(&packed, text.len() - 1),
            Err(InflateError::TooLarge)
        );
        assert_eq!(
            InflateError::TooLarge.goodbye(),
            Goodbye::FrameTooLarge,
            "the same close as an oversized uncompressed frame"
        );
    }

    #[test]
    fn corrupt_data_is_refused() {
        // BTYPE=11 is reserved (RFC 1951 §3.2.3).
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
        // A stored block whose LEN and NLEN disagree.
        assert_eq!(
            inflate(&[0x00, 0x05, 0x00, 0x00, 0x00, b'H'], 1024),
            Err(InflateError::Corrupt)
        );
        assert_eq!(InflateError::Corrupt.goodbye().code(), 1007);
        // The thread's decompressor is usable again after an error.
        assert_eq!(inflate(&compress(b"after"), 10).unwrap(), b"after");
    }

    #[test]
    fn negotiation_accepts_the_first_acceptable_offer() {
        let ok = |v: &[&str]| negotiate(&headers(v));
        let plain = Some(Agreement {
            client_max_window_bits: None,
        });
        assert_eq!(ok(&[]), None);
        assert_eq!(ok(&["permessage-deflate"]), plain);
        assert_eq!(ok(&["Permessage-Deflate"]), plain);
        // What browsers send.
        assert_eq!(
            ok(&["permessage-deflate; client_max_window_bits"]),
            Some(Agreement {
                client_max_window_bits: Some(15)
            })
        );
        assert_eq!(
            ok(&["permessage-deflate;client_max_window_bits=\"10\""]),
            Some(Agreement {
                client_max_window_bits: Some(10)
            })
        );
        assert_eq!(
            ok(&[
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15"
            ]),
            plain
        );
        // Other extensions are skipped; several headers and several offers are all read.
        assert_eq!(ok(&["x-webkit-deflate-frame", "permessage-deflate"]), plain);
        assert_eq!(
            ok(&[
                "foo; a=\"b,c\", permessage-deflate; server_max_window_bits=10, permessage-deflate"
            ]),
            plain,
            "the 10-bit offer is declined, the plain one that follows is accepted"
        );
        assert_eq!(
            Agreement {
                client_max_window_bits: None
            }
            .response(),
            RESPONSE
        );
    }

    #[test]
    fn negotiation_declines_bad_offers() {
        for offer in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown_param",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; =15",
            "permessage-deflatex",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate(&headers(&[offer])), None, "{offer}");
        }
        // Disabled in the config (the default): never negotiated.
        let h = headers(&["permessage-deflate"]);
        let mut config = WebSocketConfig::default();
        assert_eq!(Deflate::negotiate(&h, &config), None);
        config.permessage_deflate = true;
        config.deflate_level = 1;
        let (d, answer) = Deflate::negotiate(&h, &config).unwrap();
        assert_eq!(
            d,
            Deflate {
                min_bytes: 256,
                level: 1
            }
        );
        assert_eq!(answer, HeaderValue::from_static(RESPONSE));
    }

    fn publication(data: &str) -> Arc<Prepared> {
        Prepared::publication(&Publication {
            channel: Arc::from("bench.fanout"),
            offset: 1,
            epoch: Arc::from("e"),
            data: Arc::from(RawValue::from_string(data.into()).unwrap()),
            from: None,
        })
    }

    #[test]
    fn a_broadcast_is_compressed_once_for_every_subscriber() {
        let p = publication(&json_payload(15));
        let deflate = Deflate {
            min_bytes: 256,
            level: DEFAULT_LEVEL,
        };
        let first = deflate.shared(&p).expect("1 KB of JSON compresses");
        for _ in 0..1000 {
            let again = deflate.shared(&p).unwrap();
            // The very same buffer: built once, shared by reference.
            assert_eq!(again.as_ptr(), first.as_ptr());
        }
        assert_eq!(inflate(&first, 1 << 20).unwrap(), p.v1().as_bytes());
        // Under the minimum: plain text, and nothing computed.
        let small = publication("1");
        assert_eq!(deflate.shared(&small), None);
        let everything = Deflate {
            min_bytes: 0,
            level: 1,
        };
        assert_eq!(everything.own(b"{}"), None, "not smaller: plain");
        let own = json_payload(15);
        let packed = deflate.own(own.as_bytes()).unwrap();
        assert_eq!(inflate(&packed, 1 << 20).unwrap(), own.as_bytes());
    }
}
