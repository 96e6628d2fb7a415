//! The per-session outbound queue, bounded in bytes.
//!
//! Producers (the hub's fan-out, the session's own replies, a kick from the API) never wait: a
//! push that would take the queue past its byte limit closes the outbox instead, dropping what
//! it held, and the session then says goodbye with 4008. That is the slow-consumer policy: one
//! client that stops reading costs at most `limit` bytes and never slows anybody else down.

use std::collections::VecDeque;
use std::sync::Mutex;

use herald_core::protocol::Goodbye;
use tokio::sync::Notify;

use crate::lock;
use crate::session::transport::Outgoing;

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<Goodbye>,
}

/// A byte-bounded, multi-producer, single-consumer queue of [`Outgoing`] frames.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
}

/// What [`Outbox::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the session's next write.
    Queued,
    /// The outbox was already closed; the frame was dropped.
    Closed,
    /// This push overflowed the limit: the outbox is now closed as a slow consumer.
    Overflowed,
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes (v1 sizes) at a time.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// Queues a frame without waiting.
    pub fn push(&self, item: Outgoing) -> Pushed {
        let mut inner = lock(&self.inner);
        if inner.closed.is_some() {
            return Pushed::Closed;
        }
        let len = item.len();
        if inner.bytes + len > self.limit {
            inner.items = VecDeque::new();
            inner.bytes = 0;
            inner.closed = Some(Goodbye::SlowConsumer);
            drop(inner);
            self.notify.notify_one();
            return Pushed::Overflowed;
        }
        let was_empty = inner.items.is_empty();
        inner.bytes += len;
        inner.items.push_back(item);
        drop(inner);
        // The consumer drains everything per wake-up, so only the empty→non-empty edge needs
        // a notification; this keeps fan-out at one wake per connection per burst.
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Closes the outbox (kick, token expiry, shutdown). Frames already queued are still
    /// delivered before the goodbye; later pushes are dropped. The first reason wins.
    pub fn close(&self, goodbye: Goodbye) {
        let mut inner = lock(&self.inner);
        if inner.closed.is_none() {
            inner.closed = Some(goodbye);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Waits until there are frames or the outbox is closed; moves the frames into `out`.
    /// Returns the goodbye once the queue is closed (and, for a graceful close, empty).
    /// Cancel-safe: nothing is taken until the wait completes.
    pub async fn next_batch(&self, out: &mut Vec<Outgoing>) -> Option<Goodbye> {
        loop {
            {
                let mut inner = lock(&self.inner);
                if !inner.items.is_empty() {
                    // The queue's buffer moves out whole (no copy when `out` is empty, as the
                    // session leaves it): an idle outbox holds no memory, and the next burst
                    // allocates afresh.
                    let items = Vec::from(std::mem::take(&mut inner.items));
                    inner.bytes = 0;
                    if out.is_empty() {
                        *out = items;
                    } else {
                        out.extend(items);
                    }
                    return None;
                }
                if let Some(g) = inner.closed {
                    return Some(g);
                }
            }
            self.notify.notified().await;
        }
    }

    /// The most bytes this outbox holds at a time.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued right now.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::protocol::FrameKind;

    fn frame(s: &str) -> Outgoing {
        Outgoing::own(FrameKind::Pong, s.to_owned())
    }

    #[tokio::test]
    async fn overflow_closes_and_frees() {
        let o = Outbox::new(10);
        assert_eq!(o.push(frame("12345")), Pushed::Queued);
        assert_eq!(o.push(frame("12345")), Pushed::Queued);
        assert_eq!(o.push(frame("1")), Pushed::Overflowed);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(frame("1")), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out).await, Some(Goodbye::SlowConsumer));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn graceful_close_delivers_queued_frames_first() {
        let o = Outbox::new(100);
        o.push(frame("a"));
        o.close(Goodbye::GoingAway);
        o.close(Goodbye::Kicked);
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out).await, None);
        assert_eq!(out.iter().map(Outgoing::v1).collect::<Vec<_>>(), ["a"]);
        assert_eq!(o.next_batch(&mut out).await, Some(Goodbye::GoingAway));
    }

    mod properties {
        use std::collections::VecDeque;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Push a frame of this many bytes.
            Push(usize),
            /// A graceful close (kick, expiry, shutdown) with this reason.
            Close(Goodbye),
            /// The session takes a batch (only when one is ready, so the test never waits).
            Drain,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (1usize..40).prop_map(Op::Push),
                1 => prop::sample::select(Goodbye::ALL.to_vec()).prop_map(Op::Close),
                3 => Just(Op::Drain),
            ]
        }

        proptest! {
            /// Against a model of the policy: queued bytes never exceed the limit; a push that
            /// would exceed it drops everything queued and closes with SlowConsumer; a closed
            /// outbox takes nothing; a graceful close delivers what was queued first, in order,
            /// then its (first) reason.
            #[test]
            fn outbox_follows_the_slow_consumer_policy(
                limit in 1usize..100,
                ops in prop::collection::vec(op(), 0..60),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let outbox = Outbox::new(limit);
                let mut queued: VecDeque<String> = VecDeque::new();
                let mut closed: Option<Goodbye> = None;
                for (n, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Push(len) => {
                            let text = format!("{n:0len$}").chars().take(len).collect::<String>();
                            let bytes: usize = queued.iter().map(String::len).sum();
                            let expected = if closed.is_some() {
                                Pushed::Closed
                            } else if bytes + text.len() > limit {
                                queued.clear();
                                closed = Some(Goodbye::SlowConsumer);
                                Pushed::Overflowed
                            } else {
                                queued.push_back(text.clone());
                                Pushed::Queued
                            };
                            prop_assert_eq!(outbox.push(frame(&text)), expected);
                        }
                        Op::Close(g) => {
                            outbox.close(g);
                            closed.get_or_insert(g);
                        }
                        Op::Drain => {
                            if queued.is_empty() && closed.is_none() {
                                continue;
                            }
                            let mut out = Vec::new();
                            let end = rt.block_on(outbox.next_batch(&mut out));
                            let got: Vec<&str> = out.iter().map(Outgoing::v1).collect();
                            if queued.is_empty() {
                                prop_assert_eq!(end, closed);
                                prop_assert!(got.is_empty());
                            } else {
                                prop_assert_eq!(end, None);
                                prop_assert_eq!(got, queued.drain(..).collect::<Vec<_>>());
                            }
                        }
                    }
                    let bytes: usize = queued.iter().map(String::len).sum();
                    prop_assert!(outbox.queued_bytes() <= limit);
                    prop_assert_eq!(outbox.queued_bytes(), bytes);
                }
            }
        }
    }
}
