//! A deliberately small Server-Sent Events client over HTTP/1.1, the counterpart of [`wire`]
//! for Herald's `GET /v1/sse`.
//!
//! Same budget as the WebSocket reader: one buffer per connection and no allocation per event.
//! The buffer holds, in order, bytes already consumed, decoded event-stream bytes not parsed
//! yet, and raw bytes still in HTTP chunked framing; chunk headers are cut out in place (the
//! chunk data slides down over them), and a multi-line `data:` field is joined in place (the
//! continuation lines slide down over their `data:` prefixes), so an event's data is always one
//! slice of the buffer.
//!
//! What is supported is what Herald sends and what an `EventSource` would accept of it: `event`,
//! `data`, `id` and `retry` fields, comments (`: ping`), lines ending in `\n` or `\r\n` (a bare
//! `\r` line ending is not), and a body that is either chunked or delimited by the close.
//!
//! [`wire`]: crate::wire

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::wire::{WsError, find};

/// The buffer an idle connection holds; it grows only for an event larger than this.
const INITIAL_BUFFER: usize = 4096;

/// An event is refused past this size (Herald's frames are far smaller).
const MAX_BUFFER: usize = 16 << 20;

/// Longest event type kept (`unsubscribed` is the longest Herald sends).
const KIND_CAP: usize = 24;

/// One dispatched event. The slices borrow the parser's buffer until the next call.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, `message` when the event had none (as `EventSource` does).
    pub kind: &'a [u8],
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No transfer coding: every byte is stream data until the connection closes.
    Identity,
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The zero-size chunk arrived: the response is over.
    Done,
}

/// The event-stream parser and chunked decoder, without I/O, so it can be fed any split.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Parsed (event-stream) up to here.
    start: usize,
    /// Decoded event-stream bytes end here.
    dend: usize,
    /// Raw bytes not decoded yet start here (`dend <= rstart`).
    rstart: usize,
    /// Filled up to here.
    end: usize,
    /// `[start..scanned]` is known to hold no complete event: where the next scan resumes.
    scanned: usize,
    body: Body,
    kind: [u8; KIND_CAP],
    kind_len: usize,
    /// The last `retry:` the server sent, in ms.
    pub retry_ms: Option<u64>,
}

impl SseParser {
    /// A parser for a body that is chunked (`Transfer-Encoding: chunked`) or not.
    pub fn new(chunked: bool) -> Self {
        Self {
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            dend: 0,
            rstart: 0,
            end: 0,
            scanned: 0,
            body: if chunked { Body::Size } else { Body::Identity },
            kind: [0; KIND_CAP],
            kind_len: 0,
            retry_ms: None,
        }
    }

    /// True once a chunked body has ended (a close-delimited one ends with the connection).
    pub fn finished(&self) -> bool {
        self.body == Body::Done && self.start == self.dend
    }

    /// Room to read into, after making some (compacting, or growing for a large event).
    pub fn spare(&mut self) -> Result<&mut [u8], WsError> {
        if self.end == self.buf.len() {
            // Slide the unparsed decoded bytes and the raw tail down to the front.
            let decoded = self.dend - self.start;
            self.buf.copy_within(self.start..self.dend, 0);
            self.buf.copy_within(self.rstart..self.end, decoded);
            let raw = self.end - self.rstart;
            self.scanned -= self.start;
            self.start = 0;
            self.dend = decoded;
            self.rstart = decoded;
            self.end = decoded + raw;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            if len > MAX_BUFFER {
                return Err(WsError::Protocol("event larger than 16 MiB"));
            }
            self.buf.resize(len, 0);
        }
        Ok(&mut self.buf[self.end..])
    }

    /// Takes `n` bytes just read into [`spare`](Self::spare), and decodes the chunk framing.
    pub fn filled(&mut self, n: usize) -> Result<(), WsError> {
        self.end += n;
        self.decode()
    }

    /// Copies `bytes` in (tests, and the bytes that followed the response head).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), WsError> {
        while !bytes.is_empty() {
            let room = self.spare()?;
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.filled(n)?;
        }
        Ok(())
    }

    /// Moves raw bytes into the decoded region, dropping chunk headers and trailers.
    fn decode(&mut self) -> Result<(), WsError> {
        loop {
            match self.body {
                Body::Identity => {
                    self.take(self.end - self.rstart);
                    return Ok(());
                }
                Body::Data(left) => {
                    let n = left.min(self.end - self.rstart);
                    self.take(n);
                    if n == left {
                        self.body = Body::DataEnd;
                    } else {
                        self.body = Body::Data(left - n);
                        return Ok(());
                    }
                }
                Body::DataEnd => {
                    if self.end - self.rstart < 2 {
                        return Ok(());
                    }
                    if &self.buf[self.rstart..self.rstart + 2] != b"\r\n" {
                        return Err(WsError::Protocol("chunk data not followed by CRLF"));
                    }
                    self.rstart += 2;
                    self.body = Body::Size;
                }
                Body::Size => {
                    let raw = &self.buf[self.rstart..self.end];
                    let Some(eol) = find(raw, b"\r\n") else {
                        if raw.len() > 64 {
                            return Err(WsError::Protocol("chunk size line too long"));
                        }
                        return Ok(());
                    };
                    // `size[;extensions]`, hexadecimal.
                    let line = &raw[..eol];
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .ok_or(WsError::Protocol("bad chunk size"))?;
                    self.rstart += eol + 2;
                    // The last chunk's trailer section is not read: the stream is over.
                    self.body = if size == 0 {
                        Body::Done
                    } else {
                        Body::Data(size)
                    };
                }
                Body::Done => return Ok(()),
            }
        }
    }

    /// Appends the next `n` raw bytes to the decoded region (in place when nothing was cut).
    fn take(&mut self, n: usize) {
        if self.dend != self.rstart {
            self.buf
                .copy_within(self.rstart..self.rstart + n, self.dend);
        }
        self.dend += n;
        self.rstart += n;
    }

    /// The next complete event, if one is buffered. Comments and blocks without data (the
    /// opening `retry:`, a lone `event:`) are consumed and skipped, as `EventSource` does.
    pub fn next_event(&mut self) -> Option<SseEvent<'_>> {
        let data = self.next_data()?;
        Some(self.event(data))
    }

    /// [`next_event`](Self::next_event) as the range of its data, so a caller can loop
    /// around it without holding a borrow.
    fn next_data(&mut self) -> Option<(usize, usize)> {
        loop {
            let (block_end, next) = self.block()?;
            let data_end = self.parse_block(block_end);
            let data_start = self.start;
            self.start = next;
            self.scanned = next;
            if data_end > data_start {
                return Some((data_start, data_end));
            }
        }
    }

    fn event(&self, (start, end): (usize, usize)) -> SseEvent<'_> {
        SseEvent {
            kind: if self.kind_len == 0 {
                b"message"
            } else {
                &self.kind[..self.kind_len]
            },
            data: &self.buf[start..end],
        }
    }

    /// Finds the blank line that ends the first buffered event: `(where the blank line
    /// starts, where the next event starts)`. Remembers how far it looked, so an event that
    /// arrives in many reads is scanned once, not once per read.
    fn block(&mut self) -> Option<(usize, usize)> {
        let buf = &self.buf[..self.dend];
        let line_start = |p: usize| p == self.start || buf[p - 1] == b'\n';
        for p in self.scanned.max(self.start)..self.dend {
            if buf[p] != b'\n' {
                continue;
            }
            if line_start(p) {
                return Some((p, p + 1));
            }
            if buf[p - 1] == b'\r' && line_start(p - 1) {
                return Some((p - 1, p + 1));
            }
        }
        self.scanned = self.dend;
        None
    }

    /// Reads the fields of the event in `[start..end)` (whole lines, each ending in `\n`),
    /// joins its data lines in place from `start` on, and returns where the data ends.
    fn parse_block(&mut self, end: usize) -> usize {
        self.kind_len = 0;
        let mut w = self.start;
        let mut first = true;
        let mut line = self.start;
        while line < end {
            let eol = line
                + self.buf[line..end]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(end - line);
            let next = eol + 1;
            let text_end = if eol > line && self.buf[eol - 1] == b'\r' {
                eol - 1
            } else {
                eol
            };
            let text = &self.buf[line..text_end];
            if text.first() == Some(&b':') {
                line = next;
                continue; // a comment: the keep-alive
            }
            let colon = text.iter().position(|&b| b == b':');
            let (name_len, mut value) = match colon {
                Some(c) => (c, line + c + 1),
                None => (text.len(), text_end),
            };
            if value < text_end && self.buf[value] == b' ' {
                value += 1;
            }
            match &self.buf[line..line + name_len] {
                b"data" => {
                    // The write cursor never passes the line being read (each line gave up at
                    // least its `data:` prefix), so sliding the value down is safe.
                    if !first {
                        self.buf[w] = b'\n';
                        w += 1;
                    }
                    first = false;
                    self.buf.copy_within(value..text_end, w);
                    w += text_end - value;
                }
                b"event" => {
                    let v = &self.buf[value..text_end];
                    let n = v.len().min(KIND_CAP);
                    self.kind[..n].copy_from_slice(&v[..n]);
                    self.kind_len = n;
                }
                b"retry" => {
                    if let Some(ms) = std::str::from_utf8(&self.buf[value..text_end])
                        .ok()
                        .and_then(|v| v.parse().ok())
                    {
                        self.retry_ms = Some(ms);
                    }
                }
                // `id:` is the resume cursor; a load run never resumes.
                _ => {}
            }
            line = next;
        }
        w
    }
}

/// An SSE connection: the response head is read, events follow.
pub struct SseClient {
    stream: TcpStream,
    parser: SseParser,
}

impl SseClient {
    /// TCP connect from `source`, then `GET path_and_query` with extra headers; succeeds once
    /// a `200` response head has arrived.
    pub async fn connect(
        source: IpAddr,
        server: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient, WsError> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {server}\r\nAccept: text/event-stream\r\n\
             Cache-Control: no-cache\r\n"
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        // The head is read into a buffer of its own that is gone once connected; whatever
        // follows it is already body and goes to the parser.
        let mut head = vec![0u8; 2048];
        let mut filled = 0;
        let (pos, chunked) = loop {
            if let Some(pos) = find(&head[..filled], b"\r\n\r\n") {
                let text = &head[..pos];
                let status = crate::wire::parse_status(text)
                    .ok_or(WsError::Protocol("bad HTTP response"))?;
                if status != 200 {
                    return Err(WsError::Refused(status));
                }
                let lower = String::from_utf8_lossy(text).to_ascii_lowercase();
                if !lower.contains("content-type: text/event-stream") {
                    return Err(WsError::Protocol("not a text/event-stream response"));
                }
                break (pos, lower.contains("transfer-encoding: chunked"));
            }
            if filled == head.len() {
                return Err(WsError::Protocol("HTTP response head too large"));
            }
            let n = stream.read(&mut head[filled..]).await?;
            if n == 0 {
                return Err(WsError::Eof);
            }
            filled += n;
        };
        let mut parser = SseParser::new(chunked);
        parser.feed(&head[pos + 4..filled])?;
        Ok(SseClient { stream, parser })
    }

    /// The next event. The returned slices borrow the read buffer until the next call.
    pub async fn next(&mut self) -> Result<SseEvent<'_>, WsError> {
        loop {
            if let Some(data) = self.parser.next_data() {
                return Ok(self.parser.event(data));
            }
            if self.parser.finished() {
                return Err(WsError::Eof);
            }
            let room = self.parser.spare()?;
            let n = self.stream.read(room).await?;
            if n == 0 {
                return Err(WsError::Eof);
            }
            self.parser.filled(n)?;
        }
    }

    /// Waits until the peer closes, without reading a byte: what a stalled consumer does.
    pub async fn stall(&mut self) {
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Herald's opening bytes, a keep-alive, a publication and a two-line event.
    const STREAM: &[u8] = b"retry: 3000\n\n\
        event: welcome\nid: bench.fanout:0:e1\ndata: {\"type\":\"welcome\"}\n\n\
        : ping\n\n\
        event: pub\nid: bench.fanout:1:e1\ndata: {\"type\":\"pub\",\"offset\":1}\n\n\
        event: reply\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n\
        data: plain\n\n";

    fn expected() -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            ("welcome", r#"{"type":"welcome"}"#),
            ("pub", r#"{"type":"pub","offset":1}"#),
            ("reply", "{\"a\":\n1}"),
            ("message", "plain"),
        ]
        .iter()
        .map(|(k, d)| (k.as_bytes().to_vec(), d.as_bytes().to_vec()))
        .collect()
    }

    fn drain(p: &mut SseParser, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        while let Some(e) = p.next_event() {
            out.push((e.kind.to_vec(), e.data.to_vec()));
        }
    }

    /// `body` in HTTP chunked framing, cut into chunks of `size` bytes.
    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in body.chunks(size) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn events_survive_any_split_of_the_bytes() {
        for (is_chunked, raw) in [
            (false, STREAM.to_vec()),
            (true, chunked(STREAM, 7)),
            (true, chunked(STREAM, 1)),
            (true, chunked(STREAM, STREAM.len())),
        ] {
            // Every split point, and every read size from one byte up.
            for cut in 0..=raw.len() {
                let mut p = SseParser::new(is_chunked);
                let mut got = Vec::new();
                p.feed(&raw[..cut]).unwrap();
                drain(&mut p, &mut got);
                p.feed(&raw[cut..]).unwrap();
                drain(&mut p, &mut got);
                assert_eq!(got, expected(), "chunked {is_chunked}, cut at {cut}");
                assert_eq!(p.retry_ms, Some(3000));
                assert_eq!(p.finished(), is_chunked);
            }
            for step in 1..=raw.len().min(40) {
                let mut p = SseParser::new(is_chunked);
                let mut got = Vec::new();
                for piece in raw.chunks(step) {
                    p.feed(piece).unwrap();
                    drain(&mut p, &mut got);
                }
                assert_eq!(got, expected(), "chunked {is_chunked}, reads of {step}");
            }
        }
    }

    #[test]
    fn the_buffer_compacts_and_grows_without_losing_bytes() {
        // Many events through a small buffer, and one event larger than the initial buffer.
        let big = "x".repeat(3 * INITIAL_BUFFER);
        let mut body = Vec::new();
        for i in 0..500 {
            body.extend_from_slice(
                format!("event: pub\ndata: {{\"s\":{i}}}\n\n: ping\n\n").as_bytes(),
            );
        }
        body.extend_from_slice(format!("event: pub\ndata: {big}\n\n").as_bytes());
        let raw = chunked(&body, 100);
        let mut p = SseParser::new(true);
        let mut got = Vec::new();
        for piece in raw.chunks(333) {
            p.feed(piece).unwrap();
            drain(&mut p, &mut got);
        }
        assert_eq!(got.len(), 501);
        for (i, (kind, data)) in got.iter().take(500).enumerate() {
            assert_eq!(kind, b"pub");
            assert_eq!(data, format!("{{\"s\":{i}}}").as_bytes());
        }
        assert_eq!(got[500].1, big.as_bytes());
    }

    #[test]
    fn broken_chunk_framing_is_an_error() {
        let mut p = SseParser::new(true);
        assert!(p.feed(b"zz\r\n").is_err());
        let mut p = SseParser::new(true);
        assert!(p.feed(b"2\r\nabXY").is_err());
    }
}
