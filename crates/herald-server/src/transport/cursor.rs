//! The resume cursor of a transport that cannot resume per channel by itself: every
//! subscribed channel's position in one string, `channel:offset:epoch` entries joined by `,`.
//!
//! SSE sends it as the event `id:` (what `EventSource` returns in `Last-Event-ID`); Socket.IO
//! sends it as the last argument of each publication (what `socket.io-client` returns as
//! `offset` when it reconnects). Channel names (`[A-Za-z0-9_.-]`) and epochs (alphanumeric)
//! need no escaping in either. The format is documented in `docs/protocol.md`.

use std::io::Write as _;
use std::sync::Arc;

use herald_core::protocol::Since;
use herald_node::CursorUpdate;

/// Where the client stands on each subscribed channel, in subscription order.
#[derive(Debug, Default)]
pub struct Cursor {
    entries: Vec<(Arc<str>, u64, Arc<str>)>,
}

impl Cursor {
    /// Applies a frame's cursor update; true when the cursor changed.
    pub fn apply(&mut self, update: &CursorUpdate) -> bool {
        match update {
            CursorUpdate::Keep => false,
            CursorUpdate::Set(positions) => {
                for (channel, pos) in positions {
                    self.set(channel, pos.offset, &pos.epoch);
                }
                true
            }
            CursorUpdate::Forget(channel) => self.forget(channel),
        }
    }

    /// Sets one channel's position (adding the channel when new).
    pub fn set(&mut self, channel: &Arc<str>, offset: u64, epoch: &Arc<str>) {
        match self.entries.iter_mut().find(|(c, ..)| c == channel) {
            Some(e) => {
                e.1 = offset;
                e.2 = epoch.clone();
            }
            None => self.entries.push((channel.clone(), offset, epoch.clone())),
        }
    }

    /// Moves a subscribed channel to a publication's position; false when the channel is not
    /// in the cursor (a publication the cursor does not cover).
    pub fn advance(&mut self, channel: &str, offset: u64, epoch: &Arc<str>) -> bool {
        match self.entries.iter_mut().find(|(c, ..)| &**c == channel) {
            Some(e) => {
                e.1 = offset;
                // Almost always the same epoch: skip the reference count round trip (an
                // atomic pair per delivery on a cache line every runtime thread touches).
                if !Arc::ptr_eq(&e.2, epoch) {
                    e.2 = epoch.clone();
                }
                true
            }
            None => false,
        }
    }

    /// Drops a channel; true when it was there.
    pub fn forget(&mut self, channel: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(c, ..)| &**c != channel);
        self.entries.len() != before
    }

    /// The entries: (channel, offset, epoch).
    pub fn entries(&self) -> &[(Arc<str>, u64, Arc<str>)] {
        &self.entries
    }

    /// Writes the cursor text. Formatted in place: this runs for every event of every
    /// session.
    pub fn write(&self, out: &mut Vec<u8>) {
        self.write_to(out);
    }

    /// [`Cursor::write`] into a `String`.
    pub fn write_str(&self, out: &mut String) {
        self.write_to(out);
    }

    /// The length of the cursor text, to size a buffer before [`Cursor::write_str`].
    pub fn len_hint(&self) -> usize {
        self.entries
            .iter()
            .map(|(c, _, e)| c.len() + e.len() + 22)
            .sum()
    }

    fn write_to(&self, out: &mut impl Sink) {
        for (i, (channel, offset, epoch)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.put(",");
            }
            out.put(channel);
            out.put(":");
            out.put_u64(*offset);
            out.put(":");
            out.put(epoch);
        }
    }
}

/// Where a cursor is written: SSE builds bytes, Socket.IO builds a `String`.
trait Sink {
    fn put(&mut self, s: &str);
    fn put_u64(&mut self, n: u64);
}

impl Sink for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    fn put_u64(&mut self, n: u64) {
        let _ = write!(self, "{n}");
    }
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    fn put_u64(&mut self, n: u64) {
        use std::fmt::Write as _;
        let _ = write!(self, "{n}");
    }
}

/// Parses a resume cursor: `channel:offset:epoch` entries joined by `,` (empty entries are
/// skipped). Errors name the expected shape.
pub fn parse(text: &str) -> Result<Vec<(String, Since)>, String> {
    let bad = || format!("malformed resume cursor {text:?} (expected channel:offset:epoch,…)");
    text.split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let mut parts = entry.split(':');
            let (Some(channel), Some(offset), Some(epoch), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad());
            };
            let offset = offset.parse::<u64>().map_err(|_| bad())?;
            if channel.is_empty() || epoch.is_empty() {
                return Err(bad());
            }
            Ok((
                channel.to_owned(),
                Since {
                    offset,
                    epoch: epoch.to_owned(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Position;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = parse("a.b:3:ep1,notifications.user.alice:0:x").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, "a.b");
        assert_eq!(c[0].1.offset, 3);
        assert_eq!(c[1].1.epoch, "x");
        for bad in ["a.b", "a.b:x:e", "a.b:1", "a.b:1:e:z", ":1:e", "a:1:"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn updates_move_the_text() {
        let mut c = Cursor::default();
        let e: Arc<str> = Arc::from("e");
        assert!(c.apply(&CursorUpdate::Set(vec![
            (
                Arc::from("a"),
                Position {
                    offset: 1,
                    epoch: e.clone()
                }
            ),
            (
                Arc::from("b"),
                Position {
                    offset: 0,
                    epoch: e.clone()
                }
            ),
        ])));
        assert!(c.advance("b", 5, &e));
        assert!(!c.advance("z", 5, &e));
        let mut out = Vec::new();
        c.write(&mut out);
        assert_eq!(out, b"a:1:e,b:5:e");
        assert!(c.apply(&CursorUpdate::Forget(Arc::from("a"))));
        assert!(!c.apply(&CursorUpdate::Keep));
        out.clear();
        c.write(&mut out);
        assert_eq!(out, b"b:5:e");
    }
}
