//! The SSE resume cursor (`herald_server::transport::cursor::parse`): what arrives in
//! `Last-Event-ID` or `?since=` as `channel:offset:epoch` entries joined by `,`. (The SSE
//! command body is protocol v1 text and is fuzzed by `client_frame`.)
//!
//! Invariants: every accepted entry has a non-empty channel and epoch without separators;
//! one entry per non-empty comma piece; the cursor re-encodes (as the transport writes its
//! `id:` line) to text that parses back to the same entries.

#![no_main]

use herald_server::transport::cursor::parse as parse_cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    let Ok(entries) = parse_cursor(text) else {
        return;
    };
    assert_eq!(
        entries.len(),
        text.split(',').filter(|e| !e.is_empty()).count()
    );
    for (channel, since) in &entries {
        for part in [channel.as_str(), since.epoch.as_str()] {
            assert!(!part.is_empty() && !part.contains([',', ':']), "{part:?}");
        }
    }
    let encoded = entries
        .iter()
        .map(|(c, s)| format!("{c}:{}:{}", s.offset, s.epoch))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        parse_cursor(&encoded),
        Ok(entries),
        "re-encoded as {encoded:?}"
    );
});
