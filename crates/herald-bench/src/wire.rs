//! A deliberately small WebSocket client.
//!
//! The load generator runs on one core and must not be the bottleneck, so received frames are
//! parsed straight out of one read buffer per connection, with no allocation per message. Only
//! what the gateways under test send is supported: unfragmented text and binary frames, ping and
//! close, and `permessage-deflate` (RFC 7692) when the caller offers it in the upgrade's
//! headers ([`DEFLATE_OFFER`]) and the server accepts: frames with RSV1 are inflated into a
//! buffer of the connection, with a decompressor kept per connection only when the server
//! keeps its compression context (it did not answer `server_no_context_takeover`).
//!
//! [`Client::next_sized`] also tells what each frame cost on the wire (header and payload as
//! received, compressed or not), for the bytes-per-delivery figure.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use flate2::{Decompress, FlushDecompress, Status};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Any key works: the server only echoes a hash of it, and we do not check the hash.
const CLIENT_KEY: &str = "aGVyYWxkLWJlbmNoLWtleQ==";

/// The `Sec-WebSocket-Extensions` offer a browser sends (Chrome, Firefox): the server chooses
/// whether to keep its compression context between messages.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Largest inflated message accepted from a server.
const MAX_INFLATED: usize = 16 << 20;

thread_local! {
    // For servers without context takeover: one decompressor per thread, reset per message,
    // so the load process holds no inflate state per connection either.
    static FRESH: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// `permessage-deflate` as a server agreed to it.
struct Inflater {
    /// The decompressor of a server that keeps its context (its window carries over from one
    /// message to the next); `None` when it answered `server_no_context_takeover`.
    kept: Option<Box<Decompress>>,
    out: Vec<u8>,
}

impl Inflater {
    /// Reads the `Sec-WebSocket-Extensions` line of a 101 response head, if any.
    fn from_head(head: &[u8]) -> Option<Inflater> {
        let text = std::str::from_utf8(head).ok()?;
        let value = text.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-extensions")
                .then_some(value)
        })?;
        let mut params = value.split(';').map(str::trim);
        if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let takeover = !params.any(|p| p.eq_ignore_ascii_case("server_no_context_takeover"));
        Some(Inflater {
            kept: takeover.then(|| Box::new(Decompress::new(false))),
            out: Vec::new(),
        })
    }

    /// Inflates one message's payload (RFC 7692 §7.2.2) into `self.out`.
    fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], WsError> {
        self.out.clear();
        match &mut self.kept {
            Some(d) => inflate_into(d, payload, &mut self.out)?,
            None => FRESH.with(|d| {
                let mut d = d.borrow_mut();
                d.reset(false);
                inflate_into(&mut d, payload, &mut self.out)
            })?,
        }
        Ok(&self.out)
    }
}

/// `payload` then `00 00 ff ff` through `d`, appended to `out`.
fn inflate_into(d: &mut Decompress, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WsError> {
    for (input, flush) in [
        (payload, FlushDecompress::None),
        (&[0x00, 0x00, 0xff, 0xff][..], FlushDecompress::Sync),
    ] {
        let mut read = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_INFLATED {
                    return Err(WsError::Protocol("inflated message over 16 MiB"));
                }
                out.reserve(out.capacity().max(1024));
            }
            let before = d.total_in();
            let status = d
                .decompress_vec(&input[read..], out, flush)
                .map_err(|_| WsError::Protocol("invalid compressed data"))?;
            read += (d.total_in() - before) as usize;
            if status == Status::StreamEnd {
                return Ok(());
            }
            if read == input.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    Ok(())
}

/// What the read loop hands back.
#[derive(Debug)]
pub enum Event<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Close(Option<u16>),
}

#[derive(Debug)]
pub enum WsError {
    Io(io::Error),
    /// The upgrade was answered with something else than 101 (401, 429, 503...).
    Refused(u16),
    Protocol(&'static str),
    Eof,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "io: {e}"),
            WsError::Refused(s) => write!(f, "upgrade refused with HTTP {s}"),
            WsError::Protocol(m) => write!(f, "protocol: {m}"),
            WsError::Eof => write!(f, "connection closed"),
        }
    }
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

/// The loopback source address for connection `i`: spreading connections over
/// 127.0.0.1–127.0.0.8 gives each its own ~28k ephemeral ports towards one server port.
pub fn source_addr(i: usize, spread: u8) -> IpAddr {
    let spread = spread.max(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (i % usize::from(spread)) as u8,
    ))
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Parsed up to here.
    start: usize,
    /// Filled up to here.
    end: usize,
    mask_state: u32,
    /// Set when the server accepted `permessage-deflate`.
    deflate: Option<Box<Inflater>>,
}

impl Client {
    /// TCP connect from `source`, then the HTTP upgrade of `path_and_query` with extra headers.
    pub async fn connect(
        source: IpAddr,
        server: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, WsError> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut client = Client {
            stream,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            mask_state: 0x9e37_79b9 ^ (server.port() as u32),
            deflate: None,
        };
        client.stream.write_all(req.as_bytes()).await?;
        // Read the response head; whatever follows it is already frames.
        loop {
            if let Some(pos) = find(&client.buf[..client.end], b"\r\n\r\n") {
                let head = &client.buf[..pos];
                let status = parse_status(head).ok_or(WsError::Protocol("bad HTTP response"))?;
                if status != 101 {
                    return Err(WsError::Refused(status));
                }
                client.deflate = Inflater::from_head(head).map(Box::new);
                client.start = pos + 4;
                break;
            }
            if client.end == client.buf.len() {
                return Err(WsError::Protocol("HTTP response head too large"));
            }
            let n = client.stream.read(&mut client.buf[client.end..]).await?;
            if n == 0 {
                return Err(WsError::Eof);
            }
            client.end += n;
        }
        Ok(client)
    }

    /// Whether the server accepted `permessage-deflate`.
    pub fn deflate(&self) -> bool {
        self.deflate.is_some()
    }

    /// The next frame. The returned slice borrows the read buffer (or, for a compressed
    /// message, the inflate buffer) until the next call.
    pub async fn next(&mut self) -> Result<Event<'_>, WsError> {
        self.next_sized().await.map(|(event, _)| event)
    }

    /// The next frame, with what it took on the wire: its header and its payload as received
    /// (compressed when it was).
    pub async fn next_sized(&mut self) -> Result<(Event<'_>, usize), WsError> {
        loop {
            let frame = parse_frame(&self.buf[self.start..self.end], self.deflate.is_some())?;
            if let Some(Frame {
                opcode,
                compressed,
                hdr,
                len,
            }) = frame
            {
                let at = self.start + hdr;
                self.start = at + len;
                if opcode == 0xA {
                    // An unsolicited pong: nothing to do.
                    continue;
                }
                let mut payload = &self.buf[at..at + len];
                if compressed && let Some(inflater) = self.deflate.as_mut() {
                    payload = inflater.inflate(payload)?;
                }
                let event = match opcode {
                    0x1 => Event::Text(payload),
                    0x2 => Event::Binary(payload),
                    0x9 => Event::Ping(payload),
                    0x8 => Event::Close(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    ),
                    _ => return Err(WsError::Protocol("unsupported opcode")),
                };
                return Ok((event, hdr + len));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), WsError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // One frame larger than the buffer: grow (bounded by what the servers send).
            let len = self.buf.len() * 2;
            if len > 16 << 20 {
                return Err(WsError::Protocol("frame larger than 16 MiB"));
            }
            self.buf.resize(len, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(WsError::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// Sends one masked frame (clients must mask; the key only has to vary, not be secret here).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let key = self.mask_state.to_be_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(0x1, text.as_bytes()).await
    }

    /// Waits until the peer closes, without reading a byte: what a stalled consumer does.
    pub async fn stall(&mut self) {
        std::future::pending::<()>().await
    }
}

/// A complete frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    opcode: u8,
    /// RSV1 on a data frame of a `permessage-deflate` connection (RFC 7692 §6).
    compressed: bool,
    /// Header length.
    hdr: usize,
    /// Payload length.
    len: usize,
}

/// The complete frame at the start of `buf`, if there is one. `deflate`: RSV1 is allowed on
/// data frames (the extension was agreed).
fn parse_frame(buf: &[u8], deflate: bool) -> Result<Option<Frame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
        return Err(WsError::Protocol("fragmented frames are not supported"));
    }
    let opcode = b0 & 0x0f;
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !(deflate && matches!(opcode, 0x1 | 0x2))) {
        return Err(WsError::Protocol("reserved bits set (extension?)"));
    }
    let masked = b1 & 0x80 != 0;
    let (hdr, len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b) as usize)
        }
        n => (2, usize::from(n)),
    };
    if masked {
        // Servers never mask; refuse rather than misread.
        return Err(WsError::Protocol("masked server frame"));
    }
    if buf.len() < hdr + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode,
        compressed,
        hdr,
        len,
    }))
}

pub(crate) fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Frames `payload` as one unmasked server text frame (used by the null gateway).
pub fn server_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    let len = payload.len();
    if len < 126 {
        frame.push(len as u8);
    } else if len <= 0xffff {
        frame.push(126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        for len in [0, 5, 125, 126, 1000, 70_000] {
            let payload = vec![b'x'; len];
            let frame = server_text_frame(&payload);
            let f = parse_frame(&frame, false).unwrap().unwrap();
            assert_eq!((f.opcode, f.len, f.compressed), (1, len, false));
            assert_eq!(f.hdr + f.len, frame.len());
            // A truncated frame is incomplete, not an error.
            assert!(
                parse_frame(&frame[..frame.len() - 1], false)
                    .unwrap()
                    .is_none()
                    || len == 0
            );
        }
    }

    #[test]
    fn rsv1_means_compressed_only_where_deflate_was_agreed() {
        // RFC 7692 §7.2.3.1: "Hello", compressed, in one text frame.
        let hello = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert!(parse_frame(&hello, false).is_err());
        let f = parse_frame(&hello, true).unwrap().unwrap();
        assert_eq!((f.opcode, f.compressed, f.hdr, f.len), (1, true, 2, 7));
        // Never on a control frame, and RSV2/RSV3 never.
        assert!(parse_frame(&[0xc9, 0x00], true).is_err());
        assert!(parse_frame(&[0xa1, 0x00], true).is_err());
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                     client_no_context_takeover";
        let mut inflater = Inflater::from_head(head).expect("agreed");
        assert!(
            inflater.kept.is_none(),
            "no context kept: nothing per connection"
        );
        assert_eq!(inflater.inflate(&hello[2..]).unwrap(), b"Hello");
        assert_eq!(inflater.inflate(&hello[2..]).unwrap(), b"Hello");
        // A server that keeps its context: the second "Hello" refers back to the first
        // (RFC 7692 §7.2.3.2), so the decompressor must be the connection's own.
        let head = b"HTTP/1.1 101 OK\r\nsec-websocket-extensions: permessage-deflate";
        let mut inflater = Inflater::from_head(head).expect("agreed");
        assert!(inflater.kept.is_some());
        assert_eq!(inflater.inflate(&hello[2..]).unwrap(), b"Hello");
        assert_eq!(
            inflater.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00]).unwrap(),
            b"Hello"
        );
        assert!(Inflater::from_head(b"HTTP/1.1 101 OK\r\nUpgrade: websocket").is_none());
    }

    #[test]
    fn status_line_is_read() {
        assert_eq!(parse_status(b"HTTP/1.1 101 Switching Protocols"), Some(101));
        assert_eq!(
            parse_status(b"HTTP/1.1 401 Unauthorized\r\nx: y"),
            Some(401)
        );
    }
}
