//! Per-session limits and deadlines: the token bucket behind `limits.frame_rate` and
//! `limits.publish_rate`, and the token-expiry deadline.

use std::time::{Duration, SystemTime};

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

/// The Tokio instant at which a token whose `exp` is `expires_at` runs out; `None` for a token
/// without `exp`. Measured from the clock's sub-second now: whole seconds would let a session
/// outlive its token by up to one.
pub(crate) fn deadline_of(expires_at: Option<SystemTime>) -> Option<Instant> {
    let left = expires_at?
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // `exp` is at most year 9999 (identity), but an overflow must never panic the session.
    let now = Instant::now();
    Some(now.checked_add(left).unwrap_or(now + FAR))
}

/// Later than any session lives, and within every clock's range.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_keeps_the_fraction_and_never_overflows() {
        let now = Instant::now();
        let in_3_5 = SystemTime::now() + Duration::from_millis(3500);
        let d = deadline_of(Some(in_3_5)).unwrap() - now;
        assert!(
            d <= Duration::from_millis(3500) && d > Duration::from_millis(3400),
            "{d:?}"
        );
        // Already past: due now, not in a wrapped-around future.
        let past = SystemTime::now() - Duration::from_secs(10);
        assert_eq!(deadline_of(Some(past)), Some(now));
        assert_eq!(deadline_of(None), None);
        // The latest time the clock can hold, far beyond what identity accepts: a far
        // deadline, not a panic.
        let far = std::time::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert!(deadline_of(Some(far)).unwrap() > now + Duration::from_secs(86_400 * 365));
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_bursts_of_twice_the_rate_then_refills() {
        let mut b = Bucket::new(10);
        assert_eq!((0..25).filter(|_| b.take()).count(), 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..25).filter(|_| b.take()).count(), 5);
    }
}
