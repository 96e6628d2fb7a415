//! The per-connection outbound queue, bounded in bytes.
//!
//! Producers (the hub's fan-out, the connection's own replies) never wait: a push that would
//! take the queue past its byte limit closes the outbox instead, dropping what it held, and the
//! connection task then says goodbye with 4008. That is the slow-consumer policy: one client
//! that stops reading costs at most `limit` bytes and never slows anybody else down.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// One encoded text frame. Cloning shares the bytes: a publication is encoded once and the
/// same buffer is queued to every subscriber.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Why an outbox stopped accepting frames; the connection task turns it into a `disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: &'static str,
    pub reconnect: bool,
}

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<Closed>,
}

/// A byte-bounded, multi-producer, single-consumer queue of encoded text frames.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
}

/// What [`Outbox::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The outbox was already closed; the frame was dropped.
    Closed,
    /// This push overflowed the limit: the outbox is now closed as a slow consumer.
    Overflowed,
}

impl Outbox {
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Frame) -> Pushed {
        let mut inner = self.lock();
        if inner.closed.is_some() {
            return Pushed::Closed;
        }
        if inner.bytes + frame.len() > self.limit {
            inner.frames = VecDeque::new();
            inner.bytes = 0;
            inner.closed = Some(Closed {
                code: herald_core::protocol::close::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
                reconnect: true,
            });
            drop(inner);
            self.notify.notify_one();
            return Pushed::Overflowed;
        }
        let was_empty = inner.frames.is_empty();
        inner.bytes += frame.len();
        inner.frames.push_back(frame);
        drop(inner);
        // The consumer drains everything per wake-up, so only the empty→non-empty edge needs
        // a notification; this keeps fan-out at one wake per connection per burst.
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Closes the outbox (kick, token expiry, shutdown). Frames already queued are still
    /// delivered before the `disconnect`; later pushes are dropped. The first reason wins.
    pub fn close(&self, closed: Closed) {
        let mut inner = self.lock();
        if inner.closed.is_none() {
            inner.closed = Some(closed);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Waits until there are frames or the outbox is closed; moves the frames into `out`.
    /// Returns the close reason once the queue is closed (and, for a graceful close, empty).
    /// Cancel-safe: nothing is taken until the wait completes.
    pub async fn next_batch(&self, out: &mut Vec<Frame>) -> Option<Closed> {
        loop {
            {
                let mut inner = self.lock();
                if !inner.frames.is_empty() {
                    out.extend(inner.frames.drain(..));
                    inner.bytes = 0;
                    // Give back the ring's memory after a burst: idle connections stay small.
                    if inner.frames.capacity() > 64 {
                        inner.frames = VecDeque::new();
                    }
                    return None;
                }
                if let Some(c) = inner.closed {
                    return Some(c);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Frame queued right now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_and_frees() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Frame::from_static("12345")), Pushed::Queued);
        assert_eq!(o.push(Frame::from_static("12345")), Pushed::Queued);
        assert_eq!(o.push(Frame::from_static("1")), Pushed::Overflowed);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(Frame::from_static("1")), Pushed::Closed);
        let mut out = Vec::new();
        let closed = o.next_batch(&mut out).await.unwrap();
        assert_eq!(closed.code, 4008);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn graceful_close_delivers_queued_frames_first() {
        let o = Outbox::new(100);
        o.push(Frame::from_static("a"));
        o.close(Closed {
            code: 1001,
            reason: "bye",
            reconnect: true,
        });
        let mut out = Vec::new();
        assert_eq!(o.next_batch(&mut out).await, None);
        assert_eq!(out, vec![Frame::from_static("a")]);
        assert_eq!(o.next_batch(&mut out).await.unwrap().code, 1001);
    }
}
