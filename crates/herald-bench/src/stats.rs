//! Per-step latency histograms and delivery counters.
//!
//! Receivers record from many tasks at once, so the state is split into shards (a connection
//! always uses the same one) to keep lock contention negligible; a step's figures are the merge
//! of all shards.

use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

const SHARDS: usize = 16;
/// Latencies are recorded in microseconds, up to a minute, 3 significant digits.
const MAX_US: u64 = 60_000_000;

/// What one step of one run saw on the receiving side.
#[derive(Debug, Clone)]
pub struct StepStats {
    pub hist: Histogram<u64>,
    pub received: u64,
    /// Sequence numbers skipped on a connection (a message that never arrived before a later one).
    pub gaps: u64,
    /// Messages older than one already seen on the same connection (reordered or duplicated).
    pub reorders: u64,
    /// WebSocket frame bytes of the deliveries (header and payload as received).
    pub wire_bytes: u64,
}

impl StepStats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds"),
            received: 0,
            gaps: 0,
            reorders: 0,
            wire_bytes: 0,
        }
    }

    fn add(&mut self, o: &StepStats) {
        let _ = self.hist.add(&o.hist);
        self.received += o.received;
        self.gaps += o.gaps;
        self.reorders += o.reorders;
        self.wire_bytes += o.wire_bytes;
    }

    pub fn latency(&self) -> Latency {
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The receivers' shared record for every step of a run.
pub struct Recorder {
    shards: Vec<Mutex<Vec<StepStats>>>,
}

impl Recorder {
    pub fn new(steps: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new((0..steps).map(|_| StepStats::new()).collect()))
                .collect(),
        }
    }

    /// Records one delivery of `step` seen by connection `conn`, which took `wire_bytes` on the
    /// wire (0 when not measured).
    pub fn record(
        &self,
        conn: usize,
        step: usize,
        latency_us: u64,
        gaps: u64,
        reorder: bool,
        wire_bytes: u64,
    ) {
        let mut shard = self.shards[conn % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(s) = shard.get_mut(step) else {
            return;
        };
        s.received += 1;
        s.gaps += gaps;
        s.reorders += u64::from(reorder);
        s.wire_bytes += wire_bytes;
        s.hist.saturating_record(latency_us.clamp(1, MAX_US));
    }

    pub fn received(&self, step: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.get(step).map_or(0, |x| x.received)
            })
            .sum()
    }

    pub fn merged(&self, step: usize) -> StepStats {
        let mut out = StepStats::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(x) = s.get(step) {
                out.add(x);
            }
        }
        out
    }
}

/// Tracks one connection's sequence numbers: with a broadcast every connection sees every
/// sequence number (stride 1); with unicast over N users, user i sees i, i+N, i+2N...
#[derive(Debug, Clone, Copy)]
pub struct SeqCheck {
    last: Option<u64>,
    stride: u64,
}

impl SeqCheck {
    pub fn new(stride: u64) -> Self {
        Self {
            last: None,
            stride: stride.max(1),
        }
    }

    /// `(gaps, reordered)` for a newly received sequence number.
    pub fn observe(&mut self, seq: u64) -> (u64, bool) {
        match self.last {
            None => {
                self.last = Some(seq);
                (0, false)
            }
            Some(last) if seq <= last => (0, true),
            Some(last) => {
                self.last = Some(seq);
                ((seq - last) / self.stride - 1, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_and_reorders() {
        let mut c = SeqCheck::new(1);
        assert_eq!(c.observe(0), (0, false));
        assert_eq!(c.observe(1), (0, false));
        assert_eq!(c.observe(4), (2, false));
        assert_eq!(c.observe(3), (0, true));
        let mut u = SeqCheck::new(10);
        assert_eq!(u.observe(3), (0, false));
        assert_eq!(u.observe(13), (0, false));
        assert_eq!(u.observe(43), (2, false));
    }

    #[test]
    fn recorder_merges_shards() {
        let r = Recorder::new(2);
        for conn in 0..100 {
            r.record(conn, 1, 1000 + conn as u64, 0, false, 100);
        }
        r.record(5, 0, 50, 1, true, 7);
        assert_eq!(r.received(1), 100);
        let m = r.merged(1);
        assert_eq!((m.received, m.wire_bytes), (100, 10_000));
        assert!((m.latency().p50_ms - 1.05).abs() < 0.01);
        let z = r.merged(0);
        assert_eq!((z.received, z.gaps, z.reorders), (1, 1, 1));
    }
}
