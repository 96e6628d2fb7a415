//! A deliberately small WebSocket client.
//!
//! The load generator runs on one core and must not be the bottleneck, so received frames are
//! parsed straight out of one read buffer per connection, with no allocation per message. Only
//! what the gateways under test send is supported: unfragmented text and binary frames, ping and
//! close; no extensions (nobody here negotiates permessage-deflate).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Any key works: the server only echoes a hash of it, and we do not check the hash.
const CLIENT_KEY: &str = "aGVyYWxkLWJlbmNoLWtleQ==";

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

    /// The next frame. The returned slice borrows the read buffer until the next call.
    pub async fn next(&mut self) -> Result<Event<'_>, WsError> {
        loop {
            if let Some((opcode, hdr, len)) = parse_frame(&self.buf[self.start..self.end])? {
                let at = self.start + hdr;
                self.start = at + len;
                if opcode == 0xA {
                    // An unsolicited pong: nothing to do.
                    continue;
                }
                let payload = &self.buf[at..at + len];
                return match opcode {
                    0x1 => Ok(Event::Text(payload)),
                    0x2 => Ok(Event::Binary(payload)),
                    0x9 => Ok(Event::Ping(payload)),
                    0x8 => Ok(Event::Close(
                        (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    )),
                    _ => Err(WsError::Protocol("unsupported opcode")),
                };
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

/// `(opcode, header length, payload length)` of a complete frame at the start of `buf`.
fn parse_frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
        return Err(WsError::Protocol("fragmented frames are not supported"));
    }
    if b0 & 0x70 != 0 {
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
    Ok(Some((b0 & 0x0f, hdr, len)))
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
            let (op, hdr, n) = parse_frame(&frame).unwrap().unwrap();
            assert_eq!((op, n), (1, len));
            assert_eq!(hdr + n, frame.len());
            // A truncated frame is incomplete, not an error.
            assert!(parse_frame(&frame[..frame.len() - 1]).unwrap().is_none() || len == 0);
        }
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
