//! The RFC 6455 base framing protocol (§5) as Herald's server speaks it: a streaming
//! [`Decoder`] for what clients send and [`encode_header`] for what the server sends. No I/O:
//! the socket (`ws::Socket`) reads into a scratch buffer and hands the bytes here.
//!
//! Designed for idle memory: a decoder between messages is a limit, two flags and an empty
//! `Option<Box<_>>`. Only an incomplete frame header, a frame whose payload has not all
//! arrived, or a fragmented message allocate (the `Partial` box, the message bytes); the box
//! is freed as soon as the decoder is back between messages. Payload bytes are unmasked
//! straight into the message buffer as they arrive, and text is UTF-8 checked chunk by chunk,
//! so an invalid byte fails the connection when it arrives, not when the message ends
//! (Autobahn 6.x "fail fast").
//!
//! The rules checked, each with its section: masking is required from clients (§5.1, §5.3);
//! RSV bits must be zero unless an extension defines them (§5.2; RSV1 on the first frame of a
//! data message when `permessage-deflate` was negotiated, RFC 7692 §6); unknown opcodes fail
//! (§5.2); payload lengths use the minimal encoding (§5.2) and the 64-bit form has its most
//! significant bit clear; control frames are at most 125 bytes and never fragmented (§5.5);
//! continuation frames only continue a fragmented message, and a new data message cannot begin
//! inside one, while control frames may be interleaved (§5.4); text is UTF-8 (§5.6, §8.1);
//! a close frame's payload is empty or a valid status code (§7.4) and a UTF-8 reason (§5.5.1).

/// A frame's opcode (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a further fragment of a data message.
    Continuation = 0x0,
    /// 0x1: a text (UTF-8) message.
    Text = 0x1,
    /// 0x2: a binary message.
    Binary = 0x2,
    /// 0x8: the closing handshake.
    Close = 0x8,
    /// 0x9: a ping, answered with a pong carrying the same payload.
    Ping = 0x9,
    /// 0xA: a pong.
    Pong = 0xA,
}

impl OpCode {
    fn of(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of masking key (§5.2).
const MAX_HEAD: usize = 14;

/// One complete thing a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete data message. For text that is not `compressed` the bytes are valid UTF-8
    /// (checked here); a `compressed` one (RSV1 on its first frame, RFC 7692 §6) is the raw
    /// DEFLATE payload, to be inflated (and then checked) by the caller.
    Message {
        /// Binary (opcode 0x2) rather than text (0x1).
        binary: bool,
        /// RSV1 was set on the first frame.
        compressed: bool,
        /// Every fragment's payload, unmasked, in order.
        data: Vec<u8>,
    },
    /// A ping with its payload (at most 125 bytes), to be echoed in a pong (§5.5.2).
    Ping(Vec<u8>),
    /// A pong (§5.5.3).
    Pong,
    /// A close frame (§5.5.1): the status code and reason when the payload had any.
    Close(Option<(u16, String)>),
}

/// How a client broke the framing rules; the connection fails (§7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A framing rule was broken (close 1002); the text names which, for logs and tests.
    Protocol(&'static str),
    /// A frame or message larger than the limit (Herald's `limits.max_frame_bytes`).
    TooLarge,
    /// Text that is not UTF-8 (close 1007, §8.1).
    Utf8,
}

/// The parsed head of the frame being received.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    /// Payload bytes still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes already unmasked (the key is applied cyclically, §5.3).
    done: u64,
}

/// A data message being received (possibly across several frames).
#[derive(Debug)]
struct Message {
    binary: bool,
    compressed: bool,
    data: Vec<u8>,
    /// `data[..checked]` is known to be valid UTF-8 (text only): the incremental check.
    checked: usize,
}

/// Everything a decoder holds between two reads when it is not between messages. Boxed so an
/// idle connection pays one pointer for it.
#[derive(Debug, Default)]
struct Partial {
    head: [u8; MAX_HEAD],
    head_len: u8,
    frame: Option<Frame>,
    message: Option<Message>,
    /// The payload of a control frame received so far (at most 125 bytes).
    control: Vec<u8>,
}

impl Partial {
    fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.message.is_none()
    }
}

/// The streaming decoder of client frames. Feed it bytes as they arrive with
/// [`Decoder::decode`]; after an error it keeps failing (the framing is lost).
#[derive(Debug)]
pub struct Decoder {
    /// u32, not usize: with the two flags it packs into 8 bytes (every connection holds one).
    limit: u32,
    /// RSV1 is allowed on a data message's first frame (`permessage-deflate` negotiated).
    rsv1: bool,
    failed: bool,
    partial: Option<Box<Partial>>,
}

impl Decoder {
    /// A decoder for messages of at most `limit` bytes (the sum of a message's frames; for a
    /// compressed message, its compressed size), RSV1 allowed when `rsv1`.
    pub fn new(limit: usize, rsv1: bool) -> Self {
        Self {
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            rsv1,
            failed: false,
            partial: None,
        }
    }

    /// The largest message accepted, in bytes.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// True once a call returned an error: nothing more can be decoded.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// True between messages: no byte of an unfinished frame or message is held.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Consumes bytes of `input` up to the end of the next complete [`Event`] (or all of it
    /// when none completes), returning how many were consumed and the event if one completed.
    /// The bytes after an event are the caller's to feed again.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Error> {
        if self.failed {
            return Err(Error::Protocol("the framing was already lost"));
        }
        let r = self.step(input);
        match &r {
            Err(_) => {
                self.failed = true;
                self.partial = None;
            }
            Ok(_) => {
                if self.partial.as_ref().is_some_and(|p| p.is_idle()) {
                    self.partial = None;
                }
            }
        }
        r
    }

    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), Error> {
        let mut pos = 0;
        while pos < input.len() {
            let p = self.partial.get_or_insert_with(Box::default);
            let Some(frame) = p.frame else {
                pos += Self::take_head(p, &input[pos..]);
                if let Some(frame) = parse_head(&p.head[..p.head_len as usize])? {
                    p.head_len = 0;
                    self.begin(frame)?;
                    if let Some(event) = self.end_frame_if_done()? {
                        return Ok((pos, Some(event)));
                    }
                }
                continue;
            };
            // Payload bytes of the current frame.
            let n = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len() - pos);
            let chunk = &input[pos..pos + n];
            pos += n;
            let (control, message) = (&mut p.control, &mut p.message);
            let dest = if frame.opcode.is_control() {
                control
            } else {
                &mut message
                    .as_mut()
                    .expect("a data frame's message was begun")
                    .data
            };
            let start = dest.len();
            dest.extend_from_slice(chunk);
            unmask(&mut dest[start..], frame.mask, frame.done);
            let f = p.frame.as_mut().expect("checked above");
            f.remaining -= n as u64;
            f.done += n as u64;
            if !frame.opcode.is_control()
                && let Some(m) = p.message.as_mut()
            {
                check_utf8(m, false)?;
            }
            if let Some(event) = self.end_frame_if_done()? {
                return Ok((pos, Some(event)));
            }
        }
        Ok((pos, None))
    }

    /// Copies header bytes into `p.head` until the header is complete (its length is known
    /// from the first two bytes); returns how many bytes of `input` it took.
    fn take_head(p: &mut Partial, input: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let have = p.head_len as usize;
            let need = if have < 2 { 2 } else { head_len(&p.head) };
            if have >= need || taken == input.len() {
                return taken;
            }
            let n = (need - have).min(input.len() - taken);
            p.head[have..have + n].copy_from_slice(&input[taken..taken + n]);
            p.head_len += n as u8;
            taken += n;
        }
    }

    /// Checks a complete frame head against the state (fragmentation, RSV1, the limit) and
    /// makes it the current frame.
    fn begin(&mut self, frame: Head) -> Result<(), Error> {
        let p = self
            .partial
            .as_mut()
            .expect("begin runs on a partial state");
        if frame.rsv & 0b011 != 0 {
            return Err(Error::Protocol("RSV2 or RSV3 set without an extension"));
        }
        let rsv1 = frame.rsv & 0b100 != 0;
        if frame.opcode.is_control() {
            if rsv1 {
                return Err(Error::Protocol("RSV1 set on a control frame"));
            }
            if !frame.fin {
                return Err(Error::Protocol("fragmented control frame"));
            }
            if frame.len > MAX_CONTROL as u64 {
                return Err(Error::Protocol("control frame payload over 125 bytes"));
            }
        } else {
            match (frame.opcode, &p.message) {
                (OpCode::Continuation, None) => {
                    return Err(Error::Protocol("continuation frame without a message"));
                }
                (OpCode::Continuation, Some(_)) if rsv1 => {
                    return Err(Error::Protocol("RSV1 set on a continuation frame"));
                }
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(Error::Protocol("new message inside a fragmented one"));
                }
                (OpCode::Text | OpCode::Binary, None) => {
                    if rsv1 && !self.rsv1 {
                        return Err(Error::Protocol("RSV1 set without permessage-deflate"));
                    }
                    p.message = Some(Message {
                        binary: frame.opcode == OpCode::Binary,
                        compressed: rsv1,
                        data: Vec::new(),
                        checked: 0,
                    });
                }
                _ => {}
            }
            let held = p.message.as_ref().map_or(0, |m| m.data.len()) as u64;
            if held.saturating_add(frame.len) > u64::from(self.limit) {
                return Err(Error::TooLarge);
            }
            if let Some(m) = p.message.as_mut() {
                // At most the limit (checked above), and only what the frame announced.
                m.data.reserve(frame.len as usize);
            }
        }
        p.frame = Some(Frame {
            opcode: frame.opcode,
            fin: frame.fin,
            remaining: frame.len,
            mask: frame.mask,
            done: 0,
        });
        Ok(())
    }

    /// When the current frame's payload is complete: ends it, and returns the event it
    /// completes (a control frame, or the last frame of a data message).
    fn end_frame_if_done(&mut self) -> Result<Option<Event>, Error> {
        let p = self.partial.as_mut().expect("a frame is being received");
        let Some(frame) = p.frame else {
            return Ok(None);
        };
        if frame.remaining > 0 {
            return Ok(None);
        }
        p.frame = None;
        let event = match frame.opcode {
            OpCode::Ping => Event::Ping(std::mem::take(&mut p.control)),
            OpCode::Pong => {
                p.control.clear();
                Event::Pong
            }
            OpCode::Close => close_payload(&std::mem::take(&mut p.control))?,
            _ if !frame.fin => return Ok(None),
            _ => {
                let mut m = p.message.take().expect("a data frame's message was begun");
                check_utf8(&mut m, true)?;
                Event::Message {
                    binary: m.binary,
                    compressed: m.compressed,
                    data: m.data,
                }
            }
        };
        Ok(Some(event))
    }
}

/// A frame header as it arrived, before the state is consulted.
#[derive(Debug)]
struct Head {
    fin: bool,
    rsv: u8,
    opcode: OpCode,
    len: u64,
    mask: [u8; 4],
}

/// The header length announced by the first two bytes of `head` (§5.2).
fn head_len(head: &[u8]) -> usize {
    let masked = head[1] & 0x80 != 0;
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Parses a header once all of its bytes are there (`None` until then). The rules that need
/// no state: opcode known, masked (§5.1), minimal length encoding (§5.2).
fn parse_head(head: &[u8]) -> Result<Option<Head>, Error> {
    if head.len() < 2 || head.len() < head_len(head) {
        return Ok(None);
    }
    let opcode = OpCode::of(head[0] & 0x0f).ok_or(Error::Protocol("reserved opcode"))?;
    if head[1] & 0x80 == 0 {
        return Err(Error::Protocol("client frame not masked"));
    }
    let (len, at) = match head[1] & 0x7f {
        126 => {
            let len = u64::from(u16::from_be_bytes([head[2], head[3]]));
            if len < 126 {
                return Err(Error::Protocol("length not minimally encoded"));
            }
            (len, 4)
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(Error::Protocol("64-bit length with its top bit set"));
            }
            if len <= u64::from(u16::MAX) {
                return Err(Error::Protocol("length not minimally encoded"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&head[at..at + 4]);
    Ok(Some(Head {
        fin: head[0] & 0x80 != 0,
        rsv: (head[0] >> 4) & 0b111,
        opcode,
        len,
        mask,
    }))
}

/// Unmasks `data`, the payload bytes from offset `done` on (§5.3: octet i is XORed with
/// key octet i mod 4).
fn unmask(data: &mut [u8], mask: [u8; 4], done: u64) {
    let shift = (done % 4) as usize;
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(i + shift) % 4];
    }
}

/// Advances the incremental UTF-8 check of a text message (not a compressed one: its bytes
/// are DEFLATE). An invalid sequence fails at once; an incomplete one at the end is allowed
/// until the message is `complete`.
fn check_utf8(m: &mut Message, complete: bool) -> Result<(), Error> {
    if m.binary || m.compressed {
        return Ok(());
    }
    match std::str::from_utf8(&m.data[m.checked..]) {
        Ok(_) => m.checked = m.data.len(),
        Err(e) if e.error_len().is_none() && !complete => m.checked += e.valid_up_to(),
        Err(_) => return Err(Error::Utf8),
    }
    Ok(())
}

/// A close frame's payload (§5.5.1): empty, or a status code Herald accepts from a peer
/// (§7.4.1, §7.4.2: 1000–1003, 1007–1014 and 3000–4999; 1004–1006, 1015 and the rest are
/// reserved or must not be sent) followed by a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Event, Error> {
    match payload {
        [] => Ok(Event::Close(None)),
        [_] => Err(Error::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(Error::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::Utf8)?;
            Ok(Event::Close(Some((code, reason.to_owned()))))
        }
    }
}

/// Whether a peer may send `code` in a close frame (§7.4.1, §7.4.2, IANA's registry).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends the header of one unmasked server frame (§5.2: servers never mask), FIN set:
/// Herald never fragments what it sends. `rsv1` marks a compressed message (RFC 7692 §6).
pub fn encode_header(out: &mut Vec<u8>, opcode: OpCode, rsv1: bool, len: usize) {
    let b0 = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode as u8;
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends one complete server frame.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, rsv1: bool, payload: &[u8]) {
    encode_header(out, opcode, rsv1, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (§5.5.1); the reason is cut to fit the
/// 125-byte control payload at a character boundary.
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let Some(code) = code else {
        encode(out, OpCode::Close, false, &[]);
        return;
    };
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    encode_header(out, OpCode::Close, false, 2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `input` in chunks of `step` bytes, collecting every event until an error.
    fn run(d: &mut Decoder, input: &[u8], step: usize) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (n, ev) = d.decode(rest)?;
                rest = &rest[n..];
                events.extend(ev);
            }
        }
        Ok(events)
    }

    fn text(s: &str) -> Event {
        Event::Message {
            binary: false,
            compressed: false,
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn messages_at_every_split_point() {
        let mut wire = client(true, 0, 1, b"hello");
        wire.extend(client(false, 0, 1, "caf\u{e9} ".as_bytes()));
        wire.extend(client(true, 0, 9, b"ping!"));
        wire.extend(client(true, 0, 0, &[b'x'; 300]));
        wire.extend(client(true, 0, 2, &[7u8; 70_000]));
        wire.extend(client(true, 0, 8, b"\x03\xe8bye"));
        let mut long = "caf\u{e9} ".to_owned();
        long.push_str(&"x".repeat(300));
        for step in [1, 2, 3, 7, 13, 64, 1000, usize::MAX] {
            let mut d = Decoder::new(1 << 20, false);
            let events = run(&mut d, &wire, step).unwrap();
            assert_eq!(
                events,
                vec![
                    text("hello"),
                    Event::Ping(b"ping!".to_vec()),
                    text(&long),
                    Event::Message {
                        binary: true,
                        compressed: false,
                        data: vec![7u8; 70_000]
                    },
                    Event::Close(Some((1000, "bye".into()))),
                ],
                "step {step}"
            );
            assert!(d.is_idle(), "nothing held between messages");
        }
    }

    #[test]
    fn framing_violations_fail() {
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (
                {
                    let mut f = client(true, 0, 1, b"x");
                    f[1] &= 0x7f; // unmasked, and the key bytes become payload
                    f
                },
                Error::Protocol("client frame not masked"),
            ),
            (
                client(true, 0b010, 1, b"x"),
                Error::Protocol("RSV2 or RSV3 set without an extension"),
            ),
            (
                client(true, 0b100, 1, b"x"),
                Error::Protocol("RSV1 set without permessage-deflate"),
            ),
            (client(true, 0, 3, b"x"), Error::Protocol("reserved opcode")),
            (
                client(true, 0, 0xb, b"x"),
                Error::Protocol("reserved opcode"),
            ),
            (
                client(false, 0, 9, b"x"),
                Error::Protocol("fragmented control frame"),
            ),
            (
                client(true, 0, 9, &[0; 126]),
                Error::Protocol("control frame payload over 125 bytes"),
            ),
            (
                client(true, 0, 0, b"x"),
                Error::Protocol("continuation frame without a message"),
            ),
            (
                {
                    let mut f = client(false, 0, 1, b"a");
                    f.extend(client(true, 0, 1, b"b"));
                    f
                },
                Error::Protocol("new message inside a fragmented one"),
            ),
            (
                vec![0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4],
                Error::Protocol("length not minimally encoded"),
            ),
            (
                vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
                Error::Protocol("length not minimally encoded"),
            ),
            (
                vec![0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
                Error::Protocol("64-bit length with its top bit set"),
            ),
            (client(true, 0, 1, &[0xce, 0xba, 0xff]), Error::Utf8),
            (client(true, 0, 1, &[0xce]), Error::Utf8),
            (
                client(true, 0, 8, &[3]),
                Error::Protocol("close payload of one byte"),
            ),
            (
                client(true, 0, 8, &[0x03, 0xed]),
                Error::Protocol("invalid close code"),
            ),
            (client(true, 0, 8, &[0x03, 0xe8, 0xff]), Error::Utf8),
            (client(true, 0, 2, &[0; 101]), Error::TooLarge),
            (
                {
                    let mut f = client(false, 0, 2, &[0; 60]);
                    f.extend(client(true, 0, 0, &[0; 41]));
                    f
                },
                Error::TooLarge,
            ),
        ];
        for (wire, want) in cases {
            let mut d = Decoder::new(100, false);
            assert_eq!(run(&mut d, &wire, usize::MAX), Err(want), "{wire:02x?}");
            assert!(d.failed());
            assert!(d.decode(b"\x81").is_err(), "stays failed");
        }
    }

    #[test]
    fn invalid_utf8_fails_before_the_message_ends() {
        // The first fragment ends in the middle of a valid sequence: fine so far.
        let mut d = Decoder::new(1000, false);
        assert!(run(&mut d, &client(false, 0, 1, &[b'a', 0xce]), 1).is_ok());
        // The invalid byte fails as soon as it arrives, the frame's remaining bytes unread.
        let next = client(false, 0, 0, &[0xba, b'b', 0xff, b'c', b'd']);
        let mut failed_at = None;
        for (i, b) in next.iter().enumerate() {
            if d.decode(std::slice::from_ref(b)).is_err() {
                failed_at = Some(i);
                break;
            }
        }
        assert_eq!(failed_at, Some(next.len() - 3));
    }

    #[test]
    fn compressed_messages_only_when_negotiated() {
        let mut d = Decoder::new(1000, true);
        let mut wire = client(false, 0b100, 1, &[0xff, 0xfe]);
        wire.extend(client(true, 0, 0, &[0x00]));
        assert_eq!(
            run(&mut d, &wire, 1).unwrap(),
            vec![Event::Message {
                binary: false,
                compressed: true,
                data: vec![0xff, 0xfe, 0x00]
            }]
        );
        let mut wire = client(false, 0b100, 1, b"a");
        wire.extend(client(true, 0b100, 0, b"b"));
        assert_eq!(
            run(&mut d, &wire, 1),
            Err(Error::Protocol("RSV1 set on a continuation frame"))
        );
        let mut d = Decoder::new(1000, true);
        assert_eq!(
            run(&mut d, &client(true, 0b100, 9, b""), 1),
            Err(Error::Protocol("RSV1 set on a control frame"))
        );
    }

    #[test]
    fn control_frames_between_fragments() {
        let mut wire = client(false, 0, 1, b"ab");
        wire.extend(client(true, 0, 10, b"p"));
        wire.extend(client(true, 0, 9, b""));
        wire.extend(client(true, 0, 0, b"cd"));
        let mut d = Decoder::new(1000, false);
        assert_eq!(
            run(&mut d, &wire, 3).unwrap(),
            vec![Event::Pong, Event::Ping(vec![]), text("abcd")]
        );
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        encode(&mut out, OpCode::Text, false, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        out.clear();
        encode_header(&mut out, OpCode::Binary, true, 300);
        assert_eq!(out, [0xc2, 126, 1, 44]);
        out.clear();
        encode_header(&mut out, OpCode::Text, false, 70_000);
        assert_eq!(out, [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        out.clear();
        let reason = "\u{e9}".repeat(100);
        encode_close(&mut out, Some(4009), &reason);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= MAX_CONTROL);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        out.clear();
        encode_close(&mut out, None, "");
        assert_eq!(out, [0x88, 0]);
    }
}
