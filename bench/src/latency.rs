//! Latency recording in HdrHistograms, corrected for coordinated omission.
//!
//! An open-loop load generator knows when each request was *supposed* to be
//! sent (its [`crate::pace::Schedule`] slot). Recording `receive − intended`
//! instead of `receive − actual send` charges any stall — the server's or the
//! sender's own — to every request that should have gone out during it,
//! which is what a real client population, which does not wait, would have
//! seen. [`Recorder`] keeps both: `corrected` (the number reported) and
//! `uncorrected` (service time as the socket saw it), so the report can
//! show how far apart they are.
//!
//! Values are nanoseconds, tracked from 1 ns to 60 s at 3 significant
//! digits; larger values saturate at the top.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency: 60 s in ns.
pub const MAX_NS: u64 = 60_000_000_000;

/// A corrected and an uncorrected latency histogram.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// `receive − intended send time`: what the report quotes.
    pub corrected: Histogram<u64>,
    /// `receive − actual send time`.
    pub uncorrected: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { corrected: new_histogram(), uncorrected: new_histogram() }
    }
}

/// An empty histogram with ricochet-bench's bounds (1 ns ..= 60 s, 3 digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

impl Recorder {
    /// Records one response received at `recv_ns` for a request intended for
    /// `intended_ns` and actually sent at `sent_ns` (all on one clock).
    /// `sent_ns` is never earlier than `intended_ns` for a paced sender; a
    /// closed-loop sender passes the same value for both.
    #[inline]
    pub fn record(&mut self, intended_ns: u64, sent_ns: u64, recv_ns: u64) {
        self.corrected.saturating_record(recv_ns.saturating_sub(intended_ns).max(1));
        self.uncorrected.saturating_record(recv_ns.saturating_sub(sent_ns).max(1));
    }

    /// Adds another recorder's counts.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
    }
}

/// The usual percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest, µs.
    pub max_us: f64,
}

impl Percentiles {
    /// Summarises `h` (ns values).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One point of a percentile curve: (percentile 0..=100, value µs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// Percentile, 0..=100.
    pub percentile: f64,
    /// Latency at that percentile, µs.
    pub us: f64,
}

/// The percentile curve of `h` at HdrHistogram's usual spacing (5 ticks per
/// half distance), for charts.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    h.iter_quantiles(5)
        .map(|v| CurvePoint {
            percentile: v.quantile_iterated_to() * 100.0,
            us: v.value_iterated_to() as f64 / 1000.0,
        })
        .collect()
}

/// The histogram as HdrHistogram's `.hgrm` percentile-distribution text
/// (the format of Java's `outputPercentileDistribution` and what the
/// HdrHistogram plotter reads), values in microseconds like every latency
/// in the JSON results (`p50_us`, `curve[].us`).
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1_000.0; // ns → µs
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / SCALE;
        if q < 1.0 {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let (mean, sd, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(s, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len());
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        (2 * 10u64.pow(h.sigfig().into())).next_power_of_two()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_latency_charges_a_stall_to_every_request_behind_it() {
        // 1000 requests scheduled every 1 ms; the server stalls for 100 ms
        // at request 500, then answers everything queued at once.
        let sched = crate::pace::Schedule::new(0, 1_000.0);
        let mut r = Recorder::default();
        let service = 50_000; // 50 µs when healthy
        let stall_end = sched.intended(500) + 100_000_000;
        for k in 0..1_000 {
            let intended = sched.intended(k);
            // Open loop: the request goes out on time whatever the server does.
            let sent = intended;
            let recv = if (500..600).contains(&k) {
                stall_end.max(intended + service)
            } else {
                intended + service
            };
            r.record(intended, sent, recv);
        }
        // The same data without correction, as a closed-loop client would
        // see it: it would not have sent requests 501..600 during the stall,
        // so it records a single 100 ms sample.
        let mut closed = new_histogram();
        for k in 0..1_000u64 {
            closed.record(if k == 500 { 100_000_000 } else { service }).unwrap();
        }
        let corrected = Percentiles::of(&r.corrected);
        let naive = Percentiles::of(&closed);
        assert_eq!(corrected.count, 1_000);
        // 10 % of requests waited in the stall: the corrected p95 shows it,
        // the closed-loop p95 hides it.
        assert!(r.corrected.value_at_quantile(0.95) > 40_000_000);
        assert!(closed.value_at_quantile(0.95) < 60_000);
        assert!(corrected.p99_us > 90_000.0 && naive.p99_us < 60.0);
        // A request whose send slipped behind schedule is charged the slip.
        let mut r = Recorder::default();
        r.record(1_000, 501_000, 551_000);
        assert_eq!(r.corrected.max(), r.corrected.highest_equivalent(550_000));
        assert_eq!(r.uncorrected.max(), r.uncorrected.highest_equivalent(50_000));
    }

    #[test]
    fn hgrm_ends_at_the_maximum_and_counts_everything() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1_000).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let last_row = text.lines().rfind(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
        let cols: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(cols[1], "1.000000000000");
        assert_eq!(cols[2], "10000");
        assert!(text.contains("Total count    =        10000"));
        let p = Percentiles::of(&h);
        assert!((p.p50_us - 5_000.0).abs() < 10.0, "{p:?}");
        // Values in µs, as in the JSON: the maximum, 10 ms, reads 10000.
        let max: f64 = last_row.split_whitespace().next().unwrap().parse().unwrap();
        assert!((max - 10_000.0).abs() < 10.0, "{last_row}");
        assert!(!curve(&h).is_empty());
    }

    #[test]
    fn zero_latency_is_recorded_as_one_ns() {
        let mut r = Recorder::default();
        r.record(10, 10, 10);
        assert_eq!(r.corrected.len(), 1);
        let mut other = Recorder::default();
        other.record(0, 0, 5);
        r.merge(&other);
        assert_eq!(r.uncorrected.len(), 2);
    }
}
