//! Soak accounting for `lab --soak-interval`: what one interval of a long
//! overload run did, and whether it filled what the rate limits admit.
//!
//! Sans-IO: the driver takes a [`Sample`] (listener counters, gaps opened
//! per flow, an engine scrape, the engine's RSS) at each interval boundary;
//! [`Soak::push`] turns two consecutive samples into an [`Interval`] row.
//!
//! # What the limits admit
//! Every fill costs at least one admitted NACK, and the chain tier admits
//! at most `rl_chain_rate` NACKs per (source IP, HashKey) per
//! `rl_chain_window`. A lab listener NACKs from one address, so in an
//! interval of length `T` flow `k` can be filled at most
//! `budget = rl_chain_rate · T / rl_chain_window` times, and never more than
//! the `gaps_k` gaps it opened:
//!
//! ```text
//! admitted(interval) = Σ_k min(gaps_k, budget)
//! ```
//!
//! An interval is healthy when `filled ≥ 90 % · admitted` and, if any gap
//! was admitted, `filled > 0`. (Fills in an interval may close gaps opened
//! in the previous one; the bound counts gaps opened in this one, so a
//! steady state is judged on its own rate.)

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::escalate::Stats;
use crate::out::{self, row};

/// The floor an interval's fills must reach, as a fraction of what the
/// limits admit.
pub const HEALTHY_FRACTION: f64 = 0.9;

/// The chain tier's settings, as the engine was started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChainTier {
    /// NACKs per (source IP, HashKey) per window.
    pub rate: f64,
    /// Window, seconds.
    pub window_s: f64,
}

impl Default for ChainTier {
    /// The engine's defaults (`--rl-chain-rate 500`, `--rl-chain-window 1m`).
    fn default() -> Self {
        ChainTier { rate: 500.0, window_s: 60.0 }
    }
}

impl ChainTier {
    /// The tier an engine started with `args` runs: `--rl-chain-rate` /
    /// `--rl-chain-window` (either `--flag=v` or `--flag v`), falling back
    /// to the older `--rl-sender-*` names and then the defaults, as the
    /// engine resolves them. Environment variables are not considered.
    pub fn from_engine_args(args: &[String]) -> Result<Self, String> {
        let get = |name: &str| -> Option<String> {
            let eq = format!("--{name}=");
            let mut last = None;
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if let Some(v) = a.strip_prefix(&eq) {
                    last = Some(v.to_string());
                } else if a == &format!("--{name}") {
                    last = it.next().cloned();
                }
            }
            last
        };
        let num = |name: &str| -> Result<Option<f64>, String> {
            get(name)
                .map(|v| v.parse::<f64>().map_err(|_| format!("--{name} {v:?}: not a number")))
                .transpose()
                .map(|v| v.filter(|&x| x > 0.0))
        };
        let dur = |name: &str| -> Result<Option<f64>, String> {
            get(name)
                .map(|v| v.parse::<out::Dur>().map(|d| d.0.as_secs_f64()))
                .transpose()
                .map(|v| v.filter(|&x| x > 0.0))
        };
        let d = ChainTier::default();
        let rate = num("rl-chain-rate")?.or(num("rl-sender-rate")?).unwrap_or(d.rate);
        let window_s = dur("rl-chain-window")?.or(dur("rl-sender-window")?).unwrap_or(d.window_s);
        Ok(ChainTier { rate, window_s })
    }

    /// NACKs one flow may have admitted in `secs`.
    pub fn budget(&self, secs: f64) -> f64 {
        self.rate * secs / self.window_s
    }
}

/// What the driver reads at an interval boundary.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// The listener's escalation counters.
    pub stats: Stats,
    /// Gaps opened so far, per flow.
    pub gaps_by_flow: HashMap<u64, u64>,
    /// The engine's /metrics, summed per metric.
    pub engine: BTreeMap<String, f64>,
    /// The engine's resident set, KiB (0 if unknown).
    pub rss_kib: u64,
}

/// One interval of a soak.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// Start, seconds since the run started.
    pub t_start_s: f64,
    /// End.
    pub t_end_s: f64,
    /// Whether frames were being published throughout (false: the drain
    /// after publishing stopped, not judged).
    pub publishing: bool,
    /// Gaps opened.
    pub gaps_opened: u64,
    /// Gaps opened per flow (HashKey as 16 hex digits), so a reader can
    /// recompute `admitted` from its own idea of the chain tier.
    #[serde(default)]
    pub gaps_by_flow: BTreeMap<String, u64>,
    /// Gaps filled (whenever opened).
    pub filled: u64,
    /// filled / gaps_opened.
    pub fill_ratio: f64,
    /// Σ_k min(gaps_k, chain budget): the most fills the limits admit.
    pub admitted: f64,
    /// filled / admitted.
    pub fill_of_admitted: f64,
    /// Gaps given up after the listener's retries.
    pub abandoned: u64,
    /// NACKs the listener sent.
    pub nacks_sent: u64,
    /// ACKs received (hits).
    pub acks: u64,
    /// MISSes received.
    pub misses: u64,
    /// THROTTLEDs received.
    pub throttled: u64,
    /// Attempts with no answer in time.
    pub timeouts: u64,
    /// Of those, NACKs the engine refused silently: IP-tier refusals, and
    /// sequence- and chain-tier refusals not answered THROTTLED (the group
    /// tier refuses after the lookup, with an ACK or THROTTLED).
    pub timeouts_rate_limited: u64,
    /// The rest: the NACK or its answer was lost, or came late.
    pub timeouts_other: u64,
    /// The engine's refusals by tier: ip, sequence, chain, group.
    pub engine_refused: [u64; 4],
    /// Frames the engine found / did not find.
    pub engine_hits: u64,
    /// See `engine_hits`.
    pub engine_misses: u64,
    /// Frames the engine evicted to stay within --cache-max-bytes.
    pub engine_evicted_bytes_bound: u64,
    /// Engine RSS at the end of the interval, KiB.
    pub rss_kib: u64,
    /// Every engine counter that moved.
    pub engine: BTreeMap<String, f64>,
}

impl Interval {
    /// Fills at least [`HEALTHY_FRACTION`] of what the limits admit, and
    /// some fill whenever anything was admitted.
    pub fn healthy(&self) -> bool {
        let floor = HEALTHY_FRACTION * self.admitted;
        self.filled as f64 >= floor.floor() && (self.admitted < 1.0 || self.filled > 0)
    }
}

/// A whole soak run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SoakReport {
    /// Interval length, seconds.
    pub interval_s: f64,
    /// The chain tier the bound is computed from.
    pub chain: ChainTier,
    /// Intervals in order; the last may be the drain.
    pub intervals: Vec<Interval>,
    /// Every publishing interval healthy.
    pub healthy: bool,
    /// Publishing intervals with no fill at all.
    pub zero_fill_intervals: u64,
    /// Highest engine RSS seen, KiB.
    pub peak_rss_kib: u64,
}

/// Builds a [`SoakReport`] from samples.
#[derive(Debug)]
pub struct Soak {
    chain: ChainTier,
    interval_s: f64,
    last: Sample,
    intervals: Vec<Interval>,
}

impl Soak {
    /// Starts at `first` (the sample taken when publishing began).
    pub fn new(chain: ChainTier, interval_s: f64, first: Sample) -> Self {
        Soak { chain, interval_s, last: first, intervals: vec![] }
    }

    /// Closes the interval ending at `now`.
    pub fn push(&mut self, now: Sample, publishing: bool) -> &Interval {
        let (a, b) = (&self.last.stats, &now.stats);
        let secs = (now.t_s - self.last.t_s).max(0.0);
        let budget = self.chain.budget(secs);
        let gaps_by_flow: BTreeMap<String, u64> = now
            .gaps_by_flow
            .iter()
            .map(|(k, &n)| {
                (format!("{k:016x}"), n - self.last.gaps_by_flow.get(k).copied().unwrap_or(0))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        let admitted = gaps_by_flow.values().fold(0.0, |a, &n| a + (n as f64).min(budget));
        let e = |name: &str| {
            let v = now.engine.get(name).copied().unwrap_or(0.0)
                - self.last.engine.get(name).copied().unwrap_or(0.0);
            v.max(0.0) as u64
        };
        let refused = [
            e("ricochet_rate_limited_ip_total"),
            e("ricochet_rate_limited_sequence_total"),
            e("ricochet_rate_limited_chain_total"),
            e("ricochet_rate_limited_group_total"),
        ];
        let gaps_opened = b.gaps_opened - a.gaps_opened;
        let filled = b.filled - a.filled;
        let timeouts = b.timeouts - a.timeouts;
        let throttled = b.throttled - a.throttled;
        // The IP tier is always silent; the sequence and chain tiers answer
        // THROTTLED when --rl-throttle-response is on, else are silent too.
        let silent =
            (refused[0] + (refused[1] + refused[2]).saturating_sub(throttled)).min(timeouts);
        let iv = Interval {
            t_start_s: self.last.t_s,
            t_end_s: now.t_s,
            publishing,
            gaps_opened,
            gaps_by_flow,
            filled,
            fill_ratio: ratio(filled as f64, gaps_opened as f64),
            admitted,
            fill_of_admitted: ratio(filled as f64, admitted),
            abandoned: b.abandoned - a.abandoned,
            nacks_sent: b.nacks_sent - a.nacks_sent,
            acks: b.acks - a.acks,
            misses: b.misses - a.misses,
            throttled,
            timeouts,
            timeouts_rate_limited: silent,
            timeouts_other: timeouts - silent,
            engine_refused: refused,
            engine_hits: e("ricochet_cache_hits_total"),
            engine_misses: e("ricochet_cache_misses_total"),
            engine_evicted_bytes_bound: e("ricochet_cache_evicted_max_bytes_total"),
            rss_kib: now.rss_kib,
            engine: crate::metrics::delta(&self.last.engine, &now.engine),
        };
        self.intervals.push(iv);
        self.last = now;
        self.intervals.last().expect("just pushed")
    }

    /// The report.
    pub fn finish(self) -> SoakReport {
        let judged = self.intervals.iter().filter(|i| i.publishing);
        let healthy = judged.clone().all(Interval::healthy);
        let zero = judged.filter(|i| i.filled == 0).count() as u64;
        SoakReport {
            interval_s: self.interval_s,
            chain: self.chain,
            peak_rss_kib: self.intervals.iter().map(|i| i.rss_kib).max().unwrap_or(0),
            intervals: self.intervals,
            healthy,
            zero_fill_intervals: zero,
        }
    }
}

fn ratio(n: f64, d: f64) -> f64 {
    if d <= 0.0 { 1.0 } else { n / d }
}

/// The engine's resident set size, KiB, from `/proc/<pid>/status` (0 if it
/// cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

const HEADER: [&str; 17] = [
    "t_start_s",
    "t_end_s",
    "gaps",
    "filled",
    "fill_ratio",
    "admitted",
    "fill_of_admitted",
    "abandoned",
    "nacks",
    "ack",
    "miss",
    "throttled",
    "timeouts_rate_limited",
    "timeouts_other",
    "engine_refused_chain",
    "engine_evicted",
    "rss_mib",
];

/// One line per interval, for a terminal.
pub fn line(i: &Interval) -> String {
    // The drain closes gaps opened before it: a ratio to its own gaps
    // means nothing.
    let pct = |v: f64| if i.publishing { format!("{:.1}%", 100.0 * v) } else { "-".into() };
    format!(
        "{:>4.0}-{:<4.0}s {:>6} {:>6} {:>6} {:>7.0} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7.1}{}",
        i.t_start_s,
        i.t_end_s,
        i.gaps_opened,
        i.filled,
        pct(i.fill_ratio),
        i.admitted,
        pct(i.fill_of_admitted),
        i.nacks_sent,
        i.acks,
        i.misses,
        i.throttled,
        i.timeouts_rate_limited,
        i.timeouts_other,
        i.abandoned,
        i.engine_refused[2],
        i.engine_evicted_bytes_bound,
        i.rss_kib as f64 / 1024.0,
        match (i.publishing, i.healthy()) {
            (false, _) => "  (drain)",
            (true, true) => "",
            (true, false) => "  < 90 % of admitted",
        }
    )
}

/// The column titles of [`line()`].
pub fn title() -> String {
    format!(
        "{:<10} {:>6} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7}",
        "interval",
        "gaps",
        "filled",
        "fill",
        "admit",
        "f/adm",
        "NACKs",
        "ACK",
        "MISS",
        "THROT",
        "t/o:rl",
        "t/o:?",
        "aband",
        "rl-chain",
        "evicted",
        "RSS MiB"
    )
}

/// Prints the interval table and a verdict.
pub fn print(r: &SoakReport) {
    println!("\nsoak: per {:.0} s interval", r.interval_s);
    println!("{}", title());
    for i in &r.intervals {
        println!("{}", line(i));
    }
    let rows = vec![
        row(
            "chain tier",
            format!(
                "{} NACKs / flow / {} s → {:.0} per flow per interval",
                r.chain.rate,
                r.chain.window_s,
                r.chain.budget(r.interval_s)
            ),
        ),
        row("publishing intervals with no fill", r.zero_fill_intervals),
        row("peak engine RSS", format!("{:.1} MiB", r.peak_rss_kib as f64 / 1024.0)),
        row(
            "verdict",
            if r.healthy {
                "every interval filled ≥ 90 % of what the limits admit"
            } else {
                "SOME INTERVAL FILLED < 90 % OF WHAT THE LIMITS ADMIT"
            },
        ),
    ];
    out::print_table("soak summary", &rows);
}

/// The intervals as CSV (header line first).
pub fn csv(r: &SoakReport) -> String {
    let mut s = HEADER.join(",");
    s.push_str(",publishing,healthy,engine_hits,engine_misses,engine_refused_ip,engine_refused_sequence,engine_refused_group\n");
    for i in &r.intervals {
        s.push_str(&format!(
            "{:.1},{:.1},{},{},{:.4},{:.1},{:.4},{},{},{},{},{},{},{},{},{},{:.1},{},{},{},{},{},{},{}\n",
            i.t_start_s,
            i.t_end_s,
            i.gaps_opened,
            i.filled,
            i.fill_ratio,
            i.admitted,
            i.fill_of_admitted,
            i.abandoned,
            i.nacks_sent,
            i.acks,
            i.misses,
            i.throttled,
            i.timeouts_rate_limited,
            i.timeouts_other,
            i.engine_refused[2],
            i.engine_evicted_bytes_bound,
            i.rss_kib as f64 / 1024.0,
            i.publishing,
            i.healthy(),
            i.engine_hits,
            i.engine_misses,
            i.engine_refused[0],
            i.engine_refused[1],
            i.engine_refused[3],
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn the_chain_tier_is_read_as_the_engine_resolves_it() {
        assert_eq!(ChainTier::from_engine_args(&[]).unwrap(), ChainTier::default());
        let t = ChainTier::from_engine_args(&args(&[
            "--rl-ip-rate=1000",
            "--rl-chain-rate=40",
            "--rl-chain-window",
            "10s",
        ]))
        .unwrap();
        assert_eq!(t, ChainTier { rate: 40.0, window_s: 10.0 });
        assert_eq!(t.budget(5.0), 20.0);
        // 0 means "the older name", then the default.
        let t = ChainTier::from_engine_args(&args(&["--rl-chain-rate=0", "--rl-sender-rate=7"]))
            .unwrap();
        assert_eq!(t, ChainTier { rate: 7.0, window_s: 60.0 });
        assert!(ChainTier::from_engine_args(&args(&["--rl-chain-rate=x"])).is_err());
    }

    fn sample(t_s: f64, opened: u64, filled: u64, flows: &[(u64, u64)]) -> Sample {
        Sample {
            t_s,
            stats: Stats { gaps_opened: opened, filled, ..Stats::default() },
            gaps_by_flow: flows.iter().copied().collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn admitted_is_the_sum_of_per_flow_minima() {
        // 10 NACKs per flow per 10 s; interval 10 s. Flow 1 opened 30 gaps
        // (over budget), flow 2 opened 4 (under): 10 + 4 admitted.
        let chain = ChainTier { rate: 10.0, window_s: 10.0 };
        let mut s = Soak::new(chain, 10.0, sample(0.0, 0, 0, &[]));
        let i = s.push(sample(10.0, 34, 13, &[(1, 30), (2, 4)]), true).clone();
        assert_eq!(i.admitted, 14.0);
        assert_eq!(i.filled, 13);
        assert!(i.healthy(), "13 ≥ ⌊0.9 · 14⌋");
        // The next interval counts only gaps opened in it.
        let i = s.push(sample(20.0, 44, 13, &[(1, 35), (2, 9)]), true).clone();
        assert_eq!((i.gaps_opened, i.admitted, i.filled), (10, 10.0, 0));
        assert!(!i.healthy(), "no fill although 10 were admitted");
        let i = s.push(sample(25.0, 44, 20, &[(1, 35), (2, 9)]), false).clone();
        assert!(!i.publishing);
        let r = s.finish();
        assert!(!r.healthy);
        assert_eq!(r.zero_fill_intervals, 1, "the drain is not judged");
        assert_eq!(csv(&r).lines().count(), 4);
    }
}
