//! The soak: one node (memory broker) holding as many connections as one process may
//! (19,000 under the 20,000 fd limit) for ten minutes while 1% of them close and reconnect
//! every second (re-subscribing) and broadcasts and unicasts keep flowing. What it shows: the
//! node's memory and open file descriptors stay flat (within 5% from the end of the warm-up to
//! the end) — nothing a closed connection held is left behind — and a client that stays
//! connected loses nothing ([`crate::streams`] says exactly what is owed to whom).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cluster::{self, Fanout, Launch, Reading, Spec};

/// Largest drift of RSS and open fds allowed from the start to the end (issue 16).
pub const FLAT_PCT: f64 = 5.0;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Soak: connections on the one node.
    #[arg(long, default_value_t = 19_000)]
    pub soak_connections: usize,
    /// Soak: percent of the connections closed and reopened every second.
    #[arg(long, default_value_t = 1.0)]
    pub soak_churn_pct: f64,
    /// Soak: measured time, from the end of the warm-up.
    #[arg(long, default_value_t = 600.0)]
    pub soak_secs: f64,
    /// Soak: churn and publishing before the start reading (the allocator and the runtime
    /// reach their working size).
    #[arg(long, default_value_t = 30.0)]
    pub soak_warmup_secs: f64,
    /// Soak: seconds between readings of RSS and open fds.
    #[arg(long, default_value_t = 30.0)]
    pub soak_sample_secs: f64,
    #[arg(long, default_value_t = 2)]
    pub soak_broadcast_rate: u64,
    #[arg(long, default_value_t = 200)]
    pub soak_unicast_rate: u64,
}

/// What the soak measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakReport {
    pub warmup_secs: f64,
    pub soak_secs: f64,
    pub churn_per_sec: usize,
    pub run: Fanout,
    pub start: Reading,
    pub end: Reading,
    pub rss_drift_pct: f64,
    pub fd_drift_pct: f64,
    /// Both drifts within [`FLAT_PCT`].
    pub flat: bool,
}

/// Change from `start` to `end`, in percent of `start` (0 when `start` is 0).
pub fn drift_pct(start: u64, end: u64) -> f64 {
    if start == 0 {
        return 0.0;
    }
    (end as f64 - start as f64) * 100.0 / start as f64
}

/// Whether a drift is within the allowed band, either way.
pub fn is_flat(drift: f64) -> bool {
    drift.abs() <= FLAT_PCT
}

/// The offsets (s from the start of publishing) of the readings: the end of the warm-up,
/// every `every` seconds after it, and the end.
pub fn reading_times(warmup: f64, secs: f64, every: f64) -> Vec<f64> {
    let mut at = vec![warmup];
    if every > 0.0 {
        let mut t = warmup + every;
        while t < warmup + secs - 1e-6 {
            at.push(t);
            t += every;
        }
    }
    at.push(warmup + secs);
    at
}

pub fn run(l: &Launch, a: &SoakArgs) -> anyhow::Result<SoakReport> {
    let churn = (a.soak_connections as f64 * a.soak_churn_pct / 100.0).round() as usize;
    let at = reading_times(a.soak_warmup_secs, a.soak_secs, a.soak_sample_secs);
    let spec = Spec {
        label: format!("soak {} connections", a.soak_connections),
        nodes: 1,
        redis: false,
        connections: a.soak_connections,
        broadcast_rate: a.soak_broadcast_rate,
        unicast_rate: a.soak_unicast_rate,
        // Publishing (and churn) go on a little past the end reading, so it is taken in the
        // steady state rather than as things wind down.
        secs: a.soak_warmup_secs + a.soak_secs + 2.0,
        drain_secs: 3.0,
        churn_per_sec: churn,
        sources: 8,
        sample_at: at,
    };
    let run = cluster::fanout(l, &spec)?;
    let start = run.readings.first().copied().unwrap_or_default();
    let end = run.readings.last().copied().unwrap_or_default();
    let rss_drift_pct = drift_pct(start.rss_kb, end.rss_kb);
    let fd_drift_pct = drift_pct(start.fds, end.fds);
    let rep = SoakReport {
        warmup_secs: a.soak_warmup_secs,
        soak_secs: a.soak_secs,
        churn_per_sec: churn,
        start,
        end,
        rss_drift_pct,
        fd_drift_pct,
        flat: is_flat(rss_drift_pct) && is_flat(fd_drift_pct),
        run,
    };
    eprintln!(
        "[suite] soak: RSS {} → {} KB ({:+.2}%), fds {} → {} ({:+.2}%), {} churned, lost {} + {}",
        rep.start.rss_kb,
        rep.end.rss_kb,
        rep.rss_drift_pct,
        rep.start.fds,
        rep.end.fds,
        rep.fd_drift_pct,
        rep.run.churned,
        rep.run.broadcast.lost,
        rep.run.unicast.lost
    );
    Ok(rep)
}

/// The soak's part of the report.
pub fn render(o: &mut String, rep: Option<&SoakReport>) {
    let Some(s) = rep else { return };
    let r = &s.run;
    let _ = writeln!(
        o,
        "\n### Soak: {} connections on one node for {:.0} s, {} closing and reconnecting per \
         second\n\n\
         Memory broker; every connection subscribed to the broadcast channel and its own user \
         channel; {} broadcasts/s and {} unicasts/s (100 B) throughout; each second the next \
         {} connections (round-robin) close and reconnect, re-subscribing. Readings of the \
         node's RSS and open file descriptors (`/proc/<pid>/fd`) from the end of a {:.0} s \
         warm-up to the end; both must stay within {FLAT_PCT}%. Loss: every publication due \
         after a connection's subscriptions were acknowledged and up to the end (or, for a \
         connection closed by the churn, up to the last publication it received).\n",
        r.connections,
        s.soak_secs,
        s.churn_per_sec,
        r.broadcast_rate,
        r.unicast_rate,
        s.churn_per_sec,
        s.warmup_secs,
    );
    let _ = writeln!(
        o,
        "| RSS start → end MB | drift | RSS min–max MB | open fds start → end | drift | reconnected | reconnect failures | lost (broadcast + unicast) | broadcast p50 / p99 / p999 ms | unicast p99 ms | node CPU % | ok |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    // The band every reading fell in: a start or end reading taken during a transient (a
    // burst of outbound buffers, the allocator returning pages) shows against it.
    let rss = r.readings.iter().map(|x| x.rss_kb);
    let (lo, hi) = (rss.clone().min().unwrap_or(0), rss.max().unwrap_or(0));
    let cpu = r.processes.first().map_or(0.0, |p| p.cpu_pct);
    let ok = s.flat && r.ok;
    let _ = writeln!(
        o,
        "| {:.1} → {:.1} | {:+.2}% | {:.1}–{:.1} | {} → {} | {:+.2}% | {} | {} | {} + {}{} | {:.2} / {:.2} / {:.2} | {:.2} | {:.0} | {} |",
        s.start.rss_kb as f64 / 1024.0,
        s.end.rss_kb as f64 / 1024.0,
        s.rss_drift_pct,
        lo as f64 / 1024.0,
        hi as f64 / 1024.0,
        s.start.fds,
        s.end.fds,
        s.fd_drift_pct,
        r.churned,
        r.reconnect_failures,
        r.broadcast.lost,
        r.unicast.lost,
        if r.disconnects.is_empty() {
            String::new()
        } else {
            format!(" (disconnects {:?})", r.disconnects)
        },
        r.broadcast.latency.p50_ms,
        r.broadcast.latency.p99_ms,
        r.broadcast.latency.p999_ms,
        r.unicast.latency.p99_ms,
        cpu,
        if ok { "✓" } else { "✗" }
    );
    let _ = writeln!(
        o,
        "\n<details><summary>Every reading</summary>\n\n| s after publishing started | RSS MB | open fds | node CPU % since the previous reading |\n|---|---|---|---|"
    );
    let mut prev: Option<&Reading> = None;
    for x in &r.readings {
        let cpu = prev.map_or("–".into(), |p| {
            format!(
                "{:.0}",
                (x.cpu_secs - p.cpu_secs) * 100.0 / (x.at_secs - p.at_secs).max(1e-9)
            )
        });
        let _ = writeln!(
            o,
            "| {:.0} | {:.1} | {} | {cpu} |",
            x.at_secs,
            x.rss_kb as f64 / 1024.0,
            x.fds
        );
        prev = Some(x);
    }
    let _ = writeln!(o, "\n</details>");
    if !r.server_log.is_empty() {
        let _ = writeln!(o, "\nThe node logged:\n");
        for (line, n) in &r.server_log {
            let _ = writeln!(o, "- {n}× `{}`", line.replace('`', "'"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_is_the_change_in_percent_of_the_start() {
        assert_eq!(drift_pct(100, 105), 5.0);
        assert_eq!(drift_pct(200, 190), -5.0);
        assert_eq!(drift_pct(0, 50), 0.0);
        assert!(is_flat(drift_pct(19_000, 19_950)));
        assert!(!is_flat(drift_pct(19_000, 19_951)));
        assert!(is_flat(drift_pct(100_000, 95_000)));
        assert!(!is_flat(drift_pct(100_000, 94_999)));
    }

    #[test]
    fn readings_cover_the_warm_up_end_every_interval_and_the_end() {
        assert_eq!(
            reading_times(30.0, 600.0, 30.0),
            (1..=21).map(|k| f64::from(k) * 30.0).collect::<Vec<_>>()
        );
        assert_eq!(
            reading_times(10.0, 45.0, 20.0),
            vec![10.0, 30.0, 50.0, 55.0]
        );
        assert_eq!(reading_times(5.0, 60.0, 0.0), vec![5.0, 65.0]);
    }
}
