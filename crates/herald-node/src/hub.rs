//! The node-local subscription table and fan-out.
//!
//! The hub is this node's [`PublicationSink`]: the broker hands it each publication once, the
//! hub wraps it in one [`Prepared`] (the v1 `pub` frame encoded once, other wire formats on
//! demand) and pushes the same `Arc` into every subscriber's outbox.
//! Channels are spread over shards so fan-outs on different channels do not contend.
//!
//! A new subscription starts *pending*: live publications are buffered for it while the
//! connection reads the channel's position (and, when recovering, its history) from the
//! broker. [`Hub::activate`] then queues the subscribe reply and the buffered publications that
//! come after it, under the shard lock, so the client sees reply, then every later offset
//! exactly once: no gap and no duplicate between replay and live delivery.
//!
//! The hub also watches each channel's continuity: it remembers the last offset and epoch it
//! delivered, drops duplicates, and when the stream jumps (a publication lost between the
//! broker and this node, or a new epoch because the broker lost its history) it does not paper
//! over the hole: every subscriber gets `{"type":"unsubscribed","reason":"resubscribe"}` and
//! resubscribes with `since`, which tells it exactly what it can recover.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use herald_core::protocol::Goodbye;
use herald_core::{Position, PresenceEvent, Publication, PublicationSink};

use crate::admission::Sessions;
use crate::lock;
use crate::metrics::Metrics;
use crate::outbox::Pushed;
use crate::prepared::Prepared;
use crate::session::SessionHandle;
use crate::session::transport::Outgoing;

const SHARDS: usize = 64;

/// Live publications buffered for one pending subscription before it is treated as too slow
/// (besides the byte bound, the connection's outbox limit, which catches large payloads).
const MAX_PENDING: usize = 10_000;

/// The reason sent with `unsubscribed` when a subscriber must resubscribe to recover.
pub const RESUBSCRIBE: &str = "resubscribe";

enum State {
    /// Publications buffered while the session reads its position, with their v1 bytes.
    Pending(Vec<Arc<Prepared>>, usize),
    Active,
    /// Told to resubscribe; receives nothing until its session removes it.
    Evicted,
}

struct Sub {
    conn: Arc<SessionHandle>,
    state: State,
    /// The last offset this subscriber has: the position it was told at activation (its
    /// reply or replay ended there), then each publication delivered to it. With Redis the
    /// position is read on another connection than the fan-out's, so the publications up to
    /// it may still be on their way to this node: when they arrive they are skipped for this
    /// subscriber, which has them already, and given to one told an earlier position.
    told: Option<(u64, Arc<str>)>,
}

#[derive(Default)]
struct Channel {
    subs: Vec<Sub>,
    /// Last offset and epoch delivered on this node.
    last: Option<(u64, Arc<str>)>,
    /// Publications fanned out on this node since the channel's first subscriber here (the
    /// admin dashboard turns two readings into a rate).
    publications: u64,
    /// Whether `channel_occupied` was said for this channel (by the first subscriber whose
    /// broker subscription succeeded), so `channel_vacated` is said only after it.
    occupied: bool,
}

/// One channel with subscribers on this node, as the admin dashboard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// The channel's name.
    pub channel: Arc<str>,
    /// Subscribers on this node.
    pub subscribers: usize,
    /// Publications fanned out on this node since it had a first subscriber.
    pub publications: u64,
}

type Shard = Mutex<HashMap<Arc<str>, Channel>>;

/// The node's subscription table: channel → subscribers, sharded by channel name.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// The node's live sessions, shared with [`crate::Node`]: a kick made on any node reaches
    /// this node through the broker, as a call on the hub.
    pub(crate) sessions: Arc<Sessions>,
}

impl Hub {
    /// An empty hub counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            metrics,
            sessions: Arc::default(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        let h = self.hasher.hash_one(channel) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds a pending subscription. Returns true when it is the node's first subscriber of
    /// the channel. The broker is asked by every subscriber, not here.
    pub fn add(&self, channel: &Arc<str>, conn: &Arc<SessionHandle>) -> bool {
        let mut shard = lock(self.shard(channel));
        let (ch, first) = match shard.entry(channel.clone()) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (e.insert(Channel::default()), true),
        };
        if ch.subs.is_empty() {
            // Most channels have one subscriber on a node (a user's own channel): room for
            // one, not the four a first `push` reserves.
            ch.subs.reserve_exact(1);
        }
        ch.subs.push(Sub {
            conn: conn.clone(),
            state: State::Pending(Vec::new(), 0),
            told: None,
        });
        self.metrics.subscriptions.inc();
        first
    }

    /// Ends the pending phase at `position` (what the client was told): queues `reply` (if
    /// any), then every buffered publication after it, and from now on delivers live.
    pub fn activate(
        &self,
        channel: &str,
        conn: &Arc<SessionHandle>,
        position: &Position,
        reply: Option<Outgoing>,
    ) {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        let others_active = ch
            .subs
            .iter()
            .any(|s| !Arc::ptr_eq(&s.conn, conn) && matches!(s.state, State::Active));
        // The channel's continuity (`last`) is what its active subscribers received. With
        // none but this one, it is this one's: its position, unless a later publication of
        // the same epoch already arrived (buffered below). A `last` left behind by messages
        // that were still on their way when the node last unsubscribed would otherwise make
        // the next publication look like a gap. With other active subscribers it stays
        // theirs: a position ahead of it means publications still on their way here (they
        // fill it) or lost (the next one reveals the gap to them).
        let behind = match &ch.last {
            None => true,
            Some((offset, epoch)) => *epoch != position.epoch || *offset < position.offset,
        };
        if ch.last.is_none() || (behind && !others_active) {
            ch.last = Some((position.offset, position.epoch.clone()));
        }
        let Some(sub) = ch.subs.iter_mut().find(|s| Arc::ptr_eq(&s.conn, conn)) else {
            return;
        };
        let State::Pending(pending, _) = std::mem::replace(&mut sub.state, State::Active) else {
            return;
        };
        if let Some(reply) = reply {
            self.push(conn, reply);
        }
        // Each publication once and in order, from the first after the position on.
        let mut told = position.offset;
        for p in pending {
            if p.epoch == position.epoch && p.offset > told {
                told = p.offset;
                self.push(conn, Outgoing::Shared(p));
            }
        }
        sub.told = Some((told, position.epoch.clone()));
    }

    /// Marks the channel occupied once a subscriber's broker subscription succeeded. True the
    /// first time (say `channel_occupied`): not necessarily for the node's first subscriber,
    /// whose broker subscription may have failed while a later one's succeeded.
    pub fn occupy(&self, channel: &str) -> bool {
        let mut shard = lock(self.shard(channel));
        match shard.get_mut(channel) {
            Some(ch) if !ch.occupied => {
                ch.occupied = true;
                true
            }
            _ => false,
        }
    }

    /// Removes a subscription. Returns true when the channel has no subscriber left on this
    /// node and was said occupied ([`Hub::occupy`]): say `channel_vacated`.
    pub fn remove(&self, channel: &str, conn: &Arc<SessionHandle>) -> bool {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.get_mut(channel) else {
            return false;
        };
        let Some(i) = ch.subs.iter().position(|s| Arc::ptr_eq(&s.conn, conn)) else {
            return false;
        };
        ch.subs.swap_remove(i);
        self.metrics.subscriptions.dec();
        if ch.subs.is_empty() {
            shard.remove(channel).is_some_and(|ch| ch.occupied)
        } else {
            false
        }
    }

    /// Channels with subscribers on this node and their subscriber counts, sorted by name.
    pub fn channels(&self) -> Vec<(Arc<str>, usize)> {
        let mut out: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.subs.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Whether `channel` has a subscriber on this node.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        lock(self.shard(channel)).contains_key(channel)
    }

    /// [`Hub::channels`] with each channel's publication count, internal channels left out.
    pub fn channel_stats(&self) -> Vec<ChannelStats> {
        let mut out: Vec<ChannelStats> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .filter(|(k, _)| !crate::admin::is_internal(k))
                    .map(|(k, v)| ChannelStats {
                        channel: k.clone(),
                        subscribers: v.subs.len(),
                        publications: v.publications,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    /// The channels `conn` is subscribed to on this node, sorted (walks the whole table: for
    /// the admin dashboard, never on a hot path).
    pub fn channels_of(&self, conn: &Arc<SessionHandle>) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .filter(|(_, ch)| ch.subs.iter().any(|sub| Arc::ptr_eq(&sub.conn, conn)))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    fn push(&self, conn: &SessionHandle, item: Outgoing) -> bool {
        match conn.outbox.push(item) {
            Pushed::Queued => true,
            Pushed::Closed => false,
            Pushed::Overflowed => {
                self.metrics.slow_consumers.inc();
                tracing::info!(client = %conn.id, "closing slow consumer");
                false
            }
        }
    }

    /// Tells every active subscriber of `ch` to resubscribe (continuity was lost).
    fn evict_active(&self, name: &str, ch: &mut Channel) {
        let frame = Prepared::unsubscribed(name, RESUBSCRIBE);
        let mut n = 0;
        for sub in ch
            .subs
            .iter_mut()
            .filter(|s| matches!(s.state, State::Active))
        {
            sub.state = State::Evicted;
            sub.conn.evict(Arc::from(name));
            self.push(&sub.conn, Outgoing::Shared(frame.clone()));
            n += 1;
        }
        if n > 0 {
            tracing::warn!(
                channel = name,
                subscribers = n,
                "stream discontinuity: subscribers resubscribe to recover"
            );
        }
    }
}

impl PublicationSink for Hub {
    fn deliver(&self, p: &Publication) {
        let mut shard = lock(self.shard(&p.channel));
        let Some(ch) = shard.get_mut(&*p.channel) else {
            return;
        };
        match &ch.last {
            // Behind the channel's continuity: a publication that was still on its way when
            // a later position was read (with Redis the position is read on another
            // connection than the fan-out's). The subscribers told that later position have
            // it; one told an earlier position, or still pending, does not.
            Some((offset, epoch)) if *epoch == p.epoch && p.offset <= *offset => {
                let needed = ch.subs.iter().any(|s| match s.state {
                    State::Pending(..) => true,
                    State::Active => !s
                        .told
                        .as_ref()
                        .is_some_and(|(o, e)| *e == p.epoch && p.offset <= *o),
                    State::Evicted => false,
                });
                if !needed {
                    return;
                }
            }
            Some((offset, epoch)) if *epoch != p.epoch || p.offset != offset + 1 => {
                self.evict_active(&p.channel, ch);
                ch.last = Some((p.offset, p.epoch.clone()));
                ch.publications += 1;
            }
            _ => {
                ch.last = Some((p.offset, p.epoch.clone()));
                ch.publications += 1;
            }
        }
        // Encoded once; every outbox gets a reference to the same prepared frame.
        let frame = Prepared::publication(p);
        let mut delivered = 0u64;
        for sub in ch.subs.iter_mut() {
            match &mut sub.state {
                State::Active => {
                    // `told` is the last offset this subscriber has (its position at
                    // activation, then each publication delivered): each once, in order.
                    match &mut sub.told {
                        Some((o, e)) if *e == p.epoch => {
                            if p.offset <= *o {
                                continue;
                            }
                            *o = p.offset;
                        }
                        told => *told = Some((p.offset, p.epoch.clone())),
                    }
                    if self.push(&sub.conn, Outgoing::Shared(frame.clone())) {
                        delivered += 1;
                    }
                }
                State::Pending(buffer, bytes)
                    if buffer.len() < MAX_PENDING
                        && *bytes + frame.v1().len() <= sub.conn.outbox.limit() =>
                {
                    *bytes += frame.v1().len();
                    buffer.push(frame.clone());
                }
                State::Pending(..) => {
                    // Activation queues the whole buffer at once, so past the outbox's bound
                    // the subscriber could only overflow it then: close it now, and free the
                    // buffer instead of holding it until the session cleans up.
                    sub.state = State::Evicted;
                    self.metrics.slow_consumers.inc();
                    sub.conn.outbox.close(Goodbye::SlowSubscription);
                }
                State::Evicted => {}
            }
        }
        // The dashboard's own feed is not traffic: it would show as deliveries at idle.
        if !crate::admin::is_internal(&p.channel) {
            self.metrics.deliveries.inc_by(delivered);
        }
    }

    fn presence(&self, channel: &str, event: &PresenceEvent) {
        let info = match event {
            PresenceEvent::Join(info) | PresenceEvent::Leave(info) => info,
        };
        let frame = Prepared::presence(channel, event);
        let shard = lock(self.shard(channel));
        for sub in shard
            .get(channel)
            .map(|c| c.subs.as_slice())
            .unwrap_or_default()
        {
            // The client itself knows it joined; pending subscribers learn the members from
            // a presence request after their subscribe.
            if matches!(sub.state, State::Active) && *sub.conn.id != *info.client {
                self.push(&sub.conn, Outgoing::Shared(frame.clone()));
            }
        }
    }

    fn kick(&self, user: &str) {
        let sessions = self.sessions.close_user(user, Goodbye::Kicked);
        if sessions > 0 {
            tracing::info!(sessions, "kicked a user's sessions on this node");
        }
    }

    fn resync(&self, channel: &str, position: &Position) {
        let mut shard = lock(self.shard(channel));
        let Some(ch) = shard.get_mut(channel) else {
            return;
        };
        let behind = match &ch.last {
            Some((offset, epoch)) => *epoch != position.epoch || *offset != position.offset,
            None => false,
        };
        if behind {
            self.evict_active(channel, ch);
            ch.last = Some((position.offset, position.epoch.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use serde_json::value::RawValue;

    fn publication(offset: u64, epoch: &str) -> Publication {
        Publication {
            channel: Arc::from("c"),
            offset,
            epoch: Arc::from(epoch),
            data: Arc::from(RawValue::from_string(offset.to_string()).unwrap()),
            from: None,
        }
    }

    /// A hub with one active subscriber of `c` at offset 0 of epoch `e`.
    fn subscribed() -> (Hub, Arc<SessionHandle>) {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let conn = Arc::new(SessionHandle::new(
            Arc::from("n-1"),
            None,
            Outbox::new(1 << 20),
        ));
        let channel: Arc<str> = Arc::from("c");
        assert!(hub.add(&channel, &conn));
        let position = Position {
            offset: 0,
            epoch: Arc::from("e"),
        };
        hub.activate("c", &conn, &position, None);
        (hub, conn)
    }

    async fn drained(conn: &SessionHandle) -> Vec<String> {
        let mut out = Vec::new();
        conn.outbox.next_batch(&mut out).await;
        out.iter().map(|o| o.v1().to_owned()).collect()
    }

    #[tokio::test]
    async fn duplicates_are_dropped() {
        let (hub, conn) = subscribed();
        hub.deliver(&publication(1, "e"));
        hub.deliver(&publication(1, "e"));
        hub.deliver(&publication(2, "e"));
        let frames = drained(&conn).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(frames[1].contains(r#""offset":2"#));
    }

    fn session(id: &str) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(
            Arc::from(id),
            None,
            Outbox::new(1 << 20),
        ))
    }

    fn at(offset: u64) -> Position {
        Position {
            offset,
            epoch: Arc::from("e"),
        }
    }

    fn offsets(frames: &[String]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap();
                v["offset"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("not a publication: {f}"))
            })
            .collect()
    }

    /// Two subscribers of a channel new on this node read its position at different moments
    /// (with Redis on another connection than the fan-out's): the later one activates first,
    /// at 3, while publications 2 and 3 are still on their way here. They must still reach
    /// the one told 1 — pending when they come, or already active. (Before: the hub took 3
    /// as the channel's continuity, dropped 2 and 3 as duplicates, and the first subscriber
    /// never got them, with no `resubscribe` either.)
    #[tokio::test]
    async fn publications_behind_a_later_position_reach_the_subscriber_told_an_earlier_one() {
        for earlier_active_first in [false, true] {
            let hub = Hub::new(Arc::new(Metrics::new()));
            let channel: Arc<str> = Arc::from("c");
            let (early, late) = (session("early"), session("late"));
            hub.add(&channel, &early);
            hub.add(&channel, &late);
            if earlier_active_first {
                hub.activate("c", &late, &at(3), None);
                hub.activate("c", &early, &at(1), None);
            } else {
                hub.activate("c", &late, &at(3), None);
            }
            hub.deliver(&publication(2, "e"));
            hub.deliver(&publication(3, "e"));
            if !earlier_active_first {
                hub.activate("c", &early, &at(1), None);
            }
            hub.deliver(&publication(4, "e"));
            assert_eq!(offsets(&drained(&early).await), [2, 3, 4], "told 1");
            assert_eq!(offsets(&drained(&late).await), [4], "told 3");
            assert!(early.take_evicted().is_empty() && late.take_evicted().is_empty());
        }
    }

    /// Unsubscribing the node's last subscriber and subscribing again at once: publications
    /// that were on their way before the node's unsubscribe arrive into the channel's fresh
    /// entry, behind the new subscriber's position. They must not become the channel's
    /// continuity, or the next publication looks like a gap and the subscriber is told to
    /// resubscribe for nothing (a helper saw 16–18 spurious notices in 400 such cycles).
    #[tokio::test]
    async fn stragglers_of_an_earlier_subscription_are_no_gap() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let channel: Arc<str> = Arc::from("c");
        let conn = session("again");
        hub.add(&channel, &conn);
        hub.deliver(&publication(5, "e")); // a straggler from before the unsubscribe
        hub.activate("c", &conn, &at(8), None);
        hub.deliver(&publication(6, "e")); // another one
        hub.deliver(&publication(9, "e"));
        assert_eq!(offsets(&drained(&conn).await), [9]);
        assert!(conn.take_evicted().is_empty(), "no resubscribe");
    }

    /// With another active subscriber the channel's continuity stays that subscriber's: a new
    /// subscriber told a later position does not hide a gap the first one would have.
    #[tokio::test]
    async fn a_later_position_does_not_hide_an_active_subscribers_gap() {
        let (hub, first) = subscribed();
        hub.deliver(&publication(1, "e"));
        let channel: Arc<str> = Arc::from("c");
        let second = session("second");
        hub.add(&channel, &second);
        hub.activate("c", &second, &at(4), None); // 2..4 never reach this node
        hub.deliver(&publication(5, "e"));
        let frames = drained(&first).await;
        assert!(
            frames.last().unwrap().contains("resubscribe"),
            "the first subscriber missed 2..4: {frames:?}"
        );
    }

    #[tokio::test]
    async fn a_gap_makes_subscribers_resubscribe() {
        let (hub, conn) = subscribed();
        hub.deliver(&publication(1, "e"));
        hub.deliver(&publication(3, "e"));
        let frames = drained(&conn).await;
        assert_eq!(
            frames[1],
            r#"{"type":"unsubscribed","channel":"c","reason":"resubscribe"}"#
        );
        assert_eq!(frames.len(), 2, "nothing after the hole: {frames:?}");
        assert_eq!(conn.take_evicted(), [Arc::from("c")]);
        hub.deliver(&publication(4, "e"));
        assert_eq!(
            conn.outbox.queued_bytes(),
            0,
            "an evicted subscriber gets nothing"
        );
    }

    #[tokio::test]
    async fn a_new_epoch_makes_subscribers_resubscribe() {
        let (hub, conn) = subscribed();
        hub.deliver(&publication(1, "e"));
        hub.deliver(&publication(1, "f"));
        let frames = drained(&conn).await;
        assert_eq!(frames.len(), 2);
        assert!(frames[1].contains("resubscribe"));
    }

    /// A pending subscriber buffers at most its outbox's byte limit: a burst of large
    /// publications while it reads history closes it and frees the buffer, rather than
    /// holding up to `MAX_PENDING` copies of a large frame.
    #[tokio::test]
    async fn pending_buffers_are_bounded_in_bytes() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let conn = Arc::new(SessionHandle::new(
            Arc::from("n-1"),
            None,
            Outbox::new(64 * 1024),
        ));
        let channel: Arc<str> = Arc::from("c");
        hub.add(&channel, &conn);
        let big = |offset: u64| Publication {
            data: Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(20_000))).unwrap()),
            ..publication(offset, "e")
        };
        for o in 1..=3 {
            hub.deliver(&big(o));
        }
        {
            let shard = lock(hub.shard("c"));
            let State::Pending(buffer, bytes) = &shard["c"].subs[0].state else {
                panic!("three 20 KB frames fit in 64 KiB");
            };
            assert_eq!(buffer.len(), 3);
            assert!(*bytes > 60_000);
        }
        hub.deliver(&big(4));
        assert!(
            matches!(lock(hub.shard("c"))["c"].subs[0].state, State::Evicted),
            "the buffer is dropped"
        );
        let mut out = Vec::new();
        assert_eq!(
            conn.outbox.next_batch(&mut out).await,
            Some(Goodbye::SlowSubscription)
        );
        assert_eq!(metrics.slow_consumers.get(), 1);
    }

    #[tokio::test]
    async fn a_subscriber_told_a_position_ahead_of_the_fan_out_gets_no_duplicate() {
        // The node's stream is at 1; the new subscriber read offset 3 (its reply replayed
        // 2 and 3) before 2 and 3 reached this node.
        let (hub, old) = subscribed();
        hub.deliver(&publication(1, "e"));
        let conn = Arc::new(SessionHandle::new(
            Arc::from("n-2"),
            None,
            Outbox::new(1 << 20),
        ));
        let channel: Arc<str> = Arc::from("c");
        hub.add(&channel, &conn);
        let position = Position {
            offset: 3,
            epoch: Arc::from("e"),
        };
        hub.activate("c", &conn, &position, None);
        for o in 2..=4 {
            hub.deliver(&publication(o, "e"));
        }
        let frames = drained(&conn).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].contains(r#""offset":4"#));
        assert_eq!(drained(&old).await.len(), 4, "the others get every one");
    }

    #[tokio::test]
    async fn pending_subscribers_get_what_came_after_their_position_once() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let conn = Arc::new(SessionHandle::new(
            Arc::from("n-1"),
            None,
            Outbox::new(1 << 20),
        ));
        let channel: Arc<str> = Arc::from("c");
        hub.add(&channel, &conn);
        // Live publications arrive while the session reads history…
        for o in 1..=4 {
            hub.deliver(&publication(o, "e"));
        }
        // …which said offset 2: the reply, then 3 and 4, exactly once.
        let reply = Outgoing::own(herald_core::protocol::FrameKind::Reply, "R".into());
        let position = Position {
            offset: 2,
            epoch: Arc::from("e"),
        };
        hub.activate("c", &conn, &position, Some(reply));
        let frames = drained(&conn).await;
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], "R");
        assert!(frames[1].contains(r#""offset":3"#) && frames[2].contains(r#""offset":4"#));
    }
}
