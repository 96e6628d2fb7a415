//! Per-session limits and deadlines: the token bucket behind `limits.frame_rate` and
//! `limits.publish_rate`, and the token-expiry deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A token bucket: `rate` per second, bursts up to `2 × rate`. Uses Tokio's clock, so tests
/// under `tokio::time::pause()` control it.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            tokens: f64::from(rate) * 2.0,
            rate: f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty (the caller refuses the event).
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The Tokio instant at which a token whose `exp` is `expires_at` (seconds since the Unix
/// epoch, RFC 7519 NumericDate) runs out; `None` for a token without `exp`.
pub(crate) fn deadline_of(expires_at: Option<u64>) -> Option<Instant> {
    let exp = expires_at?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_bursts_of_twice_the_rate_then_refills() {
        let mut b = Bucket::new(10);
        assert_eq!((0..25).filter(|_| b.take()).count(), 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..25).filter(|_| b.take()).count(), 5);
    }
}
