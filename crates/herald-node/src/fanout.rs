//! [`FanoutQueue`]: a [`PublicationSink`] that hands what the broker delivers to a task of its
//! own, so that the broker's caller (a publish request) is answered as soon as the publication
//! is numbered and retained, and the fan-out to every subscriber's outbox runs beside it.
//!
//! Why: with the in-memory broker the fan-out ran inside `Broker::publish`, so the HTTP answer
//! of a broadcast to 10,000 subscribers waited for 10,000 outbox pushes and wake-ups, and a
//! publisher with one request in flight could not send the next publication while the previous
//! one was being fanned out (docs/benchmarks.md, issue 16). The Redis and NATS brokers already
//! deliver from their own subscription task, after answering; this makes the memory broker
//! behave the same way, which the hub is built for (a subscriber activated at a position
//! skips the publications up to it that arrive later).
//!
//! Order: every event (publication, presence, resync, kick) goes through one FIFO, pushed
//! while the broker holds the lock that ordered it, so the sink behind sees each channel in
//! offset order and a client's join before its leave, exactly as a direct call would.
//! Bound: the queue holds at most [`FanoutQueue::HIGH_WATER`] events; [`FanoutQueue::ready`]
//! lets a publisher wait below it, so a flood is slowed down instead of growing memory.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use herald_core::broker::FanoutPace;
use herald_core::{Position, PresenceEvent, Publication, PublicationSink};
use tokio::sync::Notify;

use crate::lock;

enum Event {
    Deliver(Publication),
    Presence(Arc<str>, PresenceEvent),
    Resync(Arc<str>, Position),
    Kick(Box<str>),
}

/// The queue and its wake-ups, shared by the sink and its draining task.
#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Event>>,
    /// Wakes the draining task (an empty→non-empty edge, or the sink's drop).
    work: Notify,
    /// Wakes publishers waiting in [`FanoutQueue::ready`].
    room: Notify,
    /// Set when the sink is dropped: the task drains what is left and ends.
    closed: AtomicBool,
}

/// A FIFO of sink events drained by one task into the sink behind it (the hub).
pub struct FanoutQueue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FanoutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutQueue").finish_non_exhaustive()
    }
}

impl Drop for FanoutQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.work.notify_one();
    }
}

impl FanoutQueue {
    /// Events queued beyond which [`FanoutQueue::ready`] makes publishers wait.
    pub const HIGH_WATER: usize = 4096;

    /// A queue in front of `inner`, and the task draining it (spawned on the current runtime;
    /// it ends once the queue is dropped and drained).
    pub fn spawn(inner: Arc<dyn PublicationSink>) -> Arc<Self> {
        let shared = Arc::new(Shared::default());
        let q = shared.clone();
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            loop {
                let notified = q.work.notified();
                std::mem::swap(&mut batch, &mut *lock(&q.queue));
                if batch.is_empty() {
                    if q.closed.load(Ordering::Acquire) {
                        return;
                    }
                    notified.await;
                    continue;
                }
                q.room.notify_waiters();
                let mut pace = FanoutPace::default();
                while let Some(event) = batch.pop_front() {
                    let bytes = match &event {
                        Event::Deliver(p) => p.data.get().len(),
                        _ => 0,
                    };
                    // One task delivers for the whole node: a bug that panics on one event must
                    // cost that event, not every later delivery while publishes still succeed.
                    // (With the fan-out inside the publish, the panic failed that request only.)
                    let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| match event {
                        Event::Deliver(p) => inner.deliver(&p),
                        Event::Presence(ch, e) => inner.presence(&ch, &e),
                        Event::Resync(ch, pos) => inner.resync(&ch, &pos),
                        Event::Kick(user) => inner.kick(&user),
                    }));
                    if delivered.is_err() {
                        tracing::error!("the fan-out panicked on one event; it was dropped");
                    }
                    if pace.delivered(bytes) {
                        // Let the writers this slice woke send it before the next slice is
                        // queued behind it (see `FanoutPace`).
                        tokio::task::yield_now().await;
                    }
                }
                // Let the connection tasks this batch woke (and the next request) run.
                tokio::task::yield_now().await;
            }
        });
        Arc::new(Self { shared })
    }

    fn push(&self, event: Event) {
        let mut queue = lock(&self.shared.queue);
        let was_empty = queue.is_empty();
        queue.push_back(event);
        drop(queue);
        if was_empty {
            self.shared.work.notify_one();
        }
    }

    /// Waits until the queue is below [`FanoutQueue::HIGH_WATER`].
    pub async fn ready(&self) {
        loop {
            let room = self.shared.room.notified();
            if lock(&self.shared.queue).len() < Self::HIGH_WATER {
                return;
            }
            room.await;
        }
    }
}

impl PublicationSink for FanoutQueue {
    fn deliver(&self, publication: &Publication) {
        self.push(Event::Deliver(publication.clone()));
    }

    fn presence(&self, channel: &str, event: &PresenceEvent) {
        self.push(Event::Presence(Arc::from(channel), event.clone()));
    }

    fn resync(&self, channel: &str, position: &Position) {
        self.push(Event::Resync(Arc::from(channel), position.clone()));
    }

    fn kick(&self, user: &str) {
        self.push(Event::Kick(Box::from(user)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::protocol::ClientInfo;
    use serde_json::value::RawValue;

    /// Records what reaches it, as text, in the order it arrived.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl PublicationSink for Recorder {
        fn deliver(&self, p: &Publication) {
            lock(&self.0).push(format!("{}#{}", p.channel, p.offset));
        }
        fn presence(&self, channel: &str, event: &PresenceEvent) {
            let what = match event {
                PresenceEvent::Join(c) => format!("join {}", c.client),
                PresenceEvent::Leave(c) => format!("leave {}", c.client),
            };
            lock(&self.0).push(format!("{channel} {what}"));
        }
        fn kick(&self, user: &str) {
            lock(&self.0).push(format!("kick {user}"));
        }
    }

    fn publication(channel: &str, offset: u64) -> Publication {
        Publication {
            channel: Arc::from(channel),
            offset,
            epoch: Arc::from("e"),
            data: Arc::from(RawValue::from_string("{}".into()).unwrap()),
            from: None,
        }
    }

    fn client(id: &str) -> ClientInfo {
        ClientInfo {
            client: id.into(),
            user: None,
            info: None,
        }
    }

    async fn settle(recorder: &Recorder, n: usize) -> Vec<String> {
        for _ in 0..1000 {
            if lock(&recorder.0).len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        lock(&recorder.0).clone()
    }

    #[tokio::test]
    async fn events_reach_the_sink_in_the_order_they_were_queued() {
        let recorder = Arc::new(Recorder::default());
        let q = FanoutQueue::spawn(recorder.clone());
        q.deliver(&publication("a", 1));
        q.presence("a", &PresenceEvent::Join(client("c1")));
        q.deliver(&publication("b", 1));
        q.deliver(&publication("a", 2));
        q.presence("a", &PresenceEvent::Leave(client("c1")));
        q.kick("u1");
        assert_eq!(
            settle(&recorder, 6).await,
            ["a#1", "a join c1", "b#1", "a#2", "a leave c1", "kick u1"]
        );
    }

    #[tokio::test]
    async fn ready_waits_while_the_queue_is_at_its_high_water_mark() {
        let recorder = Arc::new(Recorder::default());
        let q = FanoutQueue::spawn(recorder.clone());
        // A current-thread runtime: the draining task cannot run until this test yields.
        for i in 0..FanoutQueue::HIGH_WATER as u64 {
            q.deliver(&publication("a", i + 1));
        }
        let ready = q.ready();
        tokio::pin!(ready);
        assert!(
            futures_util::poll!(ready.as_mut()).is_pending(),
            "a full queue must make the publisher wait"
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), ready)
            .await
            .expect("ready once the task drained the queue");
        assert_eq!(
            settle(&recorder, FanoutQueue::HIGH_WATER).await.len(),
            FanoutQueue::HIGH_WATER
        );
    }

    #[tokio::test]
    async fn a_memory_broker_publish_is_answered_before_its_fan_out() {
        use herald_core::{Broker, PublishRequest};
        let recorder = Arc::new(Recorder::default());
        let broker = herald_memory::MemoryBroker::new(
            FanoutQueue::spawn(recorder.clone()),
            std::time::Duration::from_secs(60),
        );
        let request = PublishRequest {
            channel: Arc::from("a"),
            data: Arc::from(RawValue::from_string("{}".into()).unwrap()),
            history: None,
            idempotency_key: None,
            from: None,
        };
        let position = broker.publish(request).await.unwrap();
        assert_eq!(position.offset, 1);
        // A current-thread runtime, and nothing above yielded: the fan-out task has not run.
        assert!(lock(&recorder.0).is_empty(), "answered after the fan-out");
        assert_eq!(settle(&recorder, 1).await, ["a#1"]);
    }

    /// Panics on the publication at offset 2 of any channel, records the rest.
    struct Fragile(Recorder);

    impl PublicationSink for Fragile {
        fn deliver(&self, p: &Publication) {
            assert_ne!(p.offset, 2, "a sink bug");
            self.0.deliver(p);
        }
        fn presence(&self, channel: &str, event: &PresenceEvent) {
            self.0.presence(channel, event);
        }
        fn kick(&self, user: &str) {
            self.0.kick(user);
        }
    }

    #[tokio::test]
    async fn a_panic_on_one_event_does_not_stop_the_fan_out() {
        let sink = Arc::new(Fragile(Recorder::default()));
        let q = FanoutQueue::spawn(sink.clone());
        for offset in 1..=3 {
            q.deliver(&publication("a", offset));
        }
        // Let the task meet the panic before the last event is queued, in another batch too.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        q.deliver(&publication("a", 4));
        assert_eq!(settle(&sink.0, 3).await, ["a#1", "a#3", "a#4"]);
    }
}
