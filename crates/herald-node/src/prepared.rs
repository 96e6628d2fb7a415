//! A frame shared by every subscriber on the node, encoded once per wire format.
//!
//! The hub builds one [`Prepared`] per publication (or presence event, or resubscribe notice)
//! and queues the same `Arc` to every subscriber. The protocol v1 JSON is encoded eagerly: it
//! is what WebSocket and SSE carry and what the outbox counts. Any other representation (the
//! WebSocket library's own text type, a Socket.IO event) is made lazily by the first
//! transport that needs it and cached in a per-format slot, so it is built once per
//! publication, not once per subscriber, and outside the hub's shard lock. This is the model
//! of Centrifugo's `preparedData` keyed by protocol.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use herald_core::protocol::{FrameKind, ServerFrame, encode_pub};
use herald_core::{PresenceEvent, Publication};
use serde_json::value::RawValue;

/// The lazily filled representations a [`Prepared`] can cache, one slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The WebSocket library's text message type (validated once, shared after).
    WebSocket = 0,
    /// A Socket.IO / Engine.IO packet.
    SocketIo = 1,
    /// A second slot for a transport's own use (e.g. SSE framing with multi-line data).
    Sse = 2,
    /// The v1 text compressed for `permessage-deflate` (RFC 7692, no context takeover): one
    /// compression per publication, shared by every subscriber that negotiated it.
    WebSocketDeflate = 3,
}

const SLOTS: usize = 4;

/// One shared frame: its kind, what it is about, its v1 text and the lazily built others.
pub struct Prepared {
    /// `pub`, `join`, `leave` or `unsubscribed`.
    pub kind: FrameKind,
    /// The channel it concerns.
    pub channel: Arc<str>,
    /// For `pub`: the publication's offset (0 otherwise).
    pub offset: u64,
    /// For `pub`: the publication's epoch (empty otherwise).
    pub epoch: Arc<str>,
    /// For `pub`: the payload bytes as accepted.
    pub data: Option<Arc<RawValue>>,
    /// For `pub`: who published it (`None`: the server), as in [`Publication::from`].
    pub from: Option<Arc<RawValue>>,
    v1: String,
    lazy: [OnceLock<Box<dyn Any + Send + Sync>>; SLOTS],
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("kind", &self.kind)
            .field("channel", &self.channel)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    fn new(kind: FrameKind, channel: Arc<str>, v1: String) -> Self {
        Self {
            kind,
            channel,
            offset: 0,
            epoch: Arc::from(""),
            data: None,
            from: None,
            v1,
            lazy: Default::default(),
        }
    }

    /// A `pub` frame for `p`.
    pub fn publication(p: &Publication) -> Arc<Self> {
        // Built field by field: `..Self::new(…)` would allocate the empty epoch it replaces,
        // once per publication.
        Arc::new(Self {
            kind: FrameKind::Pub,
            channel: p.channel.clone(),
            offset: p.offset,
            epoch: p.epoch.clone(),
            data: Some(p.data.clone()),
            from: p.from.clone(),
            v1: encode_pub(p),
            lazy: Default::default(),
        })
    }

    /// A `join` or `leave` frame.
    pub fn presence(channel: &str, event: &PresenceEvent) -> Arc<Self> {
        let (kind, frame) = match event {
            PresenceEvent::Join(info) => (
                FrameKind::Join,
                ServerFrame::Join {
                    channel,
                    user: info.user.as_deref(),
                    client: &info.client,
                    info: info.info.as_deref(),
                },
            ),
            PresenceEvent::Leave(info) => (
                FrameKind::Leave,
                ServerFrame::Leave {
                    channel,
                    user: info.user.as_deref(),
                    client: &info.client,
                },
            ),
        };
        Arc::new(Self::new(kind, Arc::from(channel), frame.encode()))
    }

    /// An `unsubscribed` frame (server-side removal, e.g. `resubscribe`).
    pub fn unsubscribed(channel: &str, reason: &str) -> Arc<Self> {
        let v1 = ServerFrame::Unsubscribed { channel, reason }.encode();
        Arc::new(Self::new(FrameKind::Unsubscribed, Arc::from(channel), v1))
    }

    /// The protocol v1 JSON text.
    pub fn v1(&self) -> &str {
        &self.v1
    }

    /// This frame in the representation `wire`, built by `make` the first time any subscriber
    /// asks and shared after. A transport must always use the same `T` for its slot.
    pub fn cached<T>(&self, wire: Wire, make: impl FnOnce(&Prepared) -> T) -> T
    where
        T: Any + Clone + Send + Sync,
    {
        let slot = &self.lazy[wire as usize];
        if let Some(v) = slot.get().and_then(|v| v.downcast_ref::<T>()) {
            return v.clone();
        }
        let value = make(self);
        // A lost race (two first subscribers at once) or a slot used with another type just
        // builds once more; the value is the same either way.
        let _ = slot.set(Box::new(value.clone()));
        value
    }
}

impl Prepared {
    /// Like [`Prepared::cached`], lending the cached value instead of cloning it: a transport
    /// that only reads it (copies its bytes into a per-connection frame) saves a reference
    /// count round trip per subscriber. `None` only when the slot holds another type (a
    /// transport broke the one-type-per-slot rule); the caller then builds the value itself.
    pub fn cached_ref<T>(&self, wire: Wire, make: impl FnOnce(&Prepared) -> T) -> Option<&T>
    where
        T: Any + Send + Sync,
    {
        self.lazy[wire as usize]
            .get_or_init(|| Box::new(make(self)))
            .downcast_ref::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn other_formats_are_built_once_per_publication() {
        let p = Publication {
            channel: Arc::from("a.b"),
            offset: 7,
            epoch: Arc::from("e"),
            data: Arc::from(RawValue::from_string("{\"x\":1}".into()).unwrap()),
            from: None,
        };
        let prepared = Prepared::publication(&p);
        assert_eq!(
            prepared.v1(),
            r#"{"type":"pub","channel":"a.b","offset":7,"data":{"x":1},"from":{"server":true}}"#
        );
        let calls = AtomicUsize::new(0);
        for _ in 0..100 {
            let s: Arc<str> = prepared.cached(Wire::SocketIo, |p| {
                calls.fetch_add(1, Ordering::Relaxed);
                Arc::from(format!("42[\"{}\"]", p.channel))
            });
            assert_eq!(&*s, "42[\"a.b\"]");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn each_slot_is_built_once_whatever_the_fan_out() {
        let p = Publication {
            channel: Arc::from("a.b"),
            offset: 2,
            epoch: Arc::from("e"),
            data: Arc::from(RawValue::from_string("[1,2,3]".into()).unwrap()),
            from: None,
        };
        let prepared = Prepared::publication(&p);
        let calls = [const { AtomicUsize::new(0) }; SLOTS];
        // 10,000 subscribers, some plain, some compressing: one build per format.
        for i in 0..10_000 {
            let wire = if i % 3 == 0 {
                Wire::WebSocket
            } else {
                Wire::WebSocketDeflate
            };
            let v: Arc<[u8]> = prepared.cached(wire, |p| {
                calls[wire as usize].fetch_add(1, Ordering::Relaxed);
                Arc::from(p.v1().as_bytes())
            });
            assert_eq!(&*v, prepared.v1().as_bytes());
        }
        assert_eq!(calls[Wire::WebSocket as usize].load(Ordering::Relaxed), 1);
        assert_eq!(
            calls[Wire::WebSocketDeflate as usize].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn lent_values_are_built_once_and_never_cloned() {
        let p = Publication {
            channel: Arc::from("a.b"),
            offset: 1,
            epoch: Arc::from("e"),
            data: Arc::from(RawValue::from_string("1".into()).unwrap()),
            from: None,
        };
        let prepared = Prepared::publication(&p);
        let calls = AtomicUsize::new(0);
        let make = |_: &Prepared| {
            calls.fetch_add(1, Ordering::Relaxed);
            Arc::<str>::from("x")
        };
        let first: *const Arc<str> = prepared.cached_ref(Wire::SocketIo, make).unwrap();
        for _ in 0..10 {
            let again = prepared.cached_ref(Wire::SocketIo, make).unwrap();
            assert!(std::ptr::eq(first, again), "the same value, lent");
            assert_eq!(Arc::strong_count(again), 1, "never cloned");
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(
            prepared.cached_ref(Wire::SocketIo, |_| 5u8).is_none(),
            "another type in the slot is refused, not mistaken"
        );
    }
}
