//! Anti-entropy bookkeeping: the adaptive interval, per-peer backoff and
//! per-peer watermarks with the adaptive full-sync cadence.
//!
//! # Contract
//! - [`AdaptiveInterval`]: records arriving snap the interval to `min`
//!   (2 s); a digest match (idle) doubles it up to `max` (60 s); an
//!   exchange that changed nothing, or a failed round, returns it to
//!   `base` (10 s). [`AdaptiveInterval::sample`] applies ±`jitter` (15 %)
//!   from the caller's seeded generator, so peers that started together do
//!   not probe in lockstep.
//! - [`Backoff`]: each signal (backpressure, or a peer that keeps failing
//!   rounds) backs a peer off for `initial` (30 s), doubling per repeated
//!   signal up to `max` (120 s); [`Backoff::clear`] resets it.
//! - [`PeerSync`]: per peer and topic, `recv` is how far we hold the
//!   peer's changes (the peer's clock) and `sent` how far the peer holds
//!   ours (our clock); both advance only when an exchange completed (a
//!   full answer may move `recv` back: the peer restarted). Every
//!   `full_every` exchanges is a full one; `full_every` starts at the
//!   midpoint of its range, halves (to the range's low end) when a full
//!   sync applied records the deltas had missed and grows by 2 (to the high
//!   end) when it applied none. A completed G4 reconciliation counts as a
//!   full sync. [`PeerSync::rateless`] and [`PeerSync::g1_next`] hold the
//!   G4 mode state for the peer (module docs of `gossip`).

use core::time::Duration;
use std::time::Instant;

use crate::dht::rng::Rng;

/// What an anti-entropy round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Records changed our state: still converging.
    Applied(u64),
    /// Fingerprints matched: nothing to do.
    Idle,
    /// An exchange ran but changed nothing here.
    Unchanged,
    /// The round timed out or was refused.
    Failed,
}

/// The anti-entropy interval (module docs).
#[derive(Debug, Clone)]
pub struct AdaptiveInterval {
    min: Duration,
    base: Duration,
    max: Duration,
    jitter: f64,
    current: Duration,
    idle_rounds: u32,
}

impl AdaptiveInterval {
    /// Starts at `base`.
    pub fn new(min: Duration, base: Duration, max: Duration, jitter: f64) -> Self {
        let min = min.min(base);
        let max = max.max(base);
        AdaptiveInterval {
            min,
            base,
            max,
            jitter: jitter.clamp(0.0, 0.9),
            current: base,
            idle_rounds: 0,
        }
    }

    /// Folds in a round's outcome; returns the new unjittered interval.
    pub fn observe(&mut self, outcome: Outcome) -> Duration {
        match outcome {
            Outcome::Applied(n) if n > 0 => {
                self.current = self.min;
                self.idle_rounds = 0;
            }
            Outcome::Idle => {
                self.idle_rounds = self.idle_rounds.saturating_add(1);
                self.current = (self.current * 2).min(self.max);
            }
            Outcome::Applied(_) | Outcome::Unchanged | Outcome::Failed => {
                self.current = self.base;
                self.idle_rounds = 0;
            }
        }
        self.current
    }

    /// The unjittered interval.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Consecutive idle rounds.
    pub fn idle_rounds(&self) -> u32 {
        self.idle_rounds
    }

    /// Whether records arrived in the latest round.
    pub fn converging(&self) -> bool {
        self.current == self.min
    }

    /// The current interval with ±jitter.
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        jittered(self.current, self.jitter, rng)
    }

    /// The fastest interval with ±jitter.
    pub fn sample_min(&self, rng: &mut Rng) -> Duration {
        jittered(self.min, self.jitter, rng)
    }
}

/// `d` scaled by a uniform factor in `[1 − j, 1 + j)`.
pub fn jittered(d: Duration, j: f64, rng: &mut Rng) -> Duration {
    let f = 1.0 + j * (2.0 * rng.unit() - 1.0);
    d.mul_f64(f.max(0.0))
}

/// Exponential per-peer backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    level: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// Backs off from `now`: `initial · 2^k` for the k-th consecutive
    /// signal, at most `max`. Returns the end of the backoff.
    pub fn signal(&mut self, now: Instant, initial: Duration, max: Duration) -> Instant {
        let factor = 1u32 << self.level.min(16);
        let d = initial.saturating_mul(factor).min(max);
        self.level = self.level.saturating_add(1);
        let until = now + d;
        self.until = Some(until);
        until
    }

    /// The peer answered normally: no backoff.
    pub fn clear(&mut self) {
        *self = Backoff::default();
    }

    /// Whether the peer is backed off at `now`.
    pub fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// End of the current backoff, if any.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

/// Watermarks and full-sync cadence for one peer and topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSync {
    /// How far we hold the peer's changes, in the peer's clock.
    pub recv: Option<i64>,
    /// How far the peer holds our changes, in our clock.
    pub sent: Option<i64>,
    /// G4: the next reconciliation streams rateless symbols (a fixed table
    /// failed to decode; a rateless success clears it).
    pub rateless: bool,
    /// G4: the next full sync is a G1 exchange (a reconciliation timed out).
    pub g1_next: bool,
    since_full: u32,
    full_every: u32,
    range: (u32, u32),
}

impl PeerSync {
    /// No watermarks yet; full sync every `(lo + hi) / 2` exchanges.
    pub fn new(range: (u32, u32)) -> Self {
        let lo = range.0.max(1);
        let hi = range.1.max(lo);
        PeerSync {
            recv: None,
            sent: None,
            rateless: false,
            g1_next: false,
            since_full: 0,
            full_every: (lo + hi) / 2,
            range: (lo, hi),
        }
    }

    /// Whether the next exchange must be full: no watermark yet, or
    /// `full_every` delta exchanges since the last full one.
    pub fn full_due(&self) -> bool {
        self.recv.is_none() || self.since_full + 1 >= self.full_every
    }

    /// The current cadence N.
    pub fn full_every(&self) -> u32 {
        self.full_every
    }

    /// A whole exchange completed: `recv_to` is the peer's watermark from
    /// its answer (or `None` if it must not advance), `sent_to` our
    /// watermark when we sent, `applied` the records its answer changed.
    pub fn completed(
        &mut self,
        full: bool,
        recv_to: Option<i64>,
        sent_to: Option<i64>,
        applied: u64,
    ) {
        if let Some(r) = recv_to {
            // A full answer states the peer's whole state, so its watermark
            // replaces ours (a peer that restarted with a fresh store has a
            // lower clock); a delta only ever moves it forward.
            self.recv = Some(if full { r } else { self.recv.map_or(r, |old| old.max(r)) });
        }
        if let Some(s) = sent_to {
            self.sent = Some(self.sent.map_or(s, |old| old.max(s)));
        }
        if full {
            self.since_full = 0;
            let (lo, hi) = self.range;
            self.full_every = if applied > 0 {
                (self.full_every / 2).max(lo)
            } else {
                (self.full_every + 2).min(hi)
            };
        } else {
            self.since_full = self.since_full.saturating_add(1);
        }
    }

    /// A pull answer brought us up to `recv_to` in the peer's clock.
    pub fn pulled(&mut self, recv_to: i64) {
        self.recv = Some(self.recv.map_or(recv_to, |old| old.max(recv_to)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval() -> AdaptiveInterval {
        AdaptiveInterval::new(
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(60),
            0.15,
        )
    }

    #[test]
    fn interval_adapts() {
        let mut a = interval();
        assert_eq!(a.current(), Duration::from_secs(10));
        assert_eq!(a.observe(Outcome::Applied(3)), Duration::from_secs(2));
        assert!(a.converging());
        let idle: Vec<u64> = (0..6).map(|_| a.observe(Outcome::Idle).as_secs()).collect();
        assert_eq!(idle, vec![4, 8, 16, 32, 60, 60]);
        assert_eq!(a.idle_rounds(), 6);
        assert_eq!(a.observe(Outcome::Unchanged), Duration::from_secs(10));
        assert_eq!(a.observe(Outcome::Applied(0)), Duration::from_secs(10));
        assert_eq!(a.observe(Outcome::Failed), Duration::from_secs(10));
        assert_eq!(a.idle_rounds(), 0);
    }

    #[test]
    fn jitter_stays_within_fifteen_percent_and_spreads() {
        let a = interval();
        let mut rng = Rng::seed_from_u64(5);
        let samples: Vec<f64> = (0..2000).map(|_| a.sample(&mut rng).as_secs_f64()).collect();
        assert!(samples.iter().all(|&s| (8.5..=11.5).contains(&s)), "out of ±15 %");
        let lo = samples.iter().filter(|&&s| s < 9.0).count();
        let hi = samples.iter().filter(|&&s| s > 11.0).count();
        assert!(lo > 200 && hi > 200, "jitter not spread: {lo} {hi}");
        let again = a.sample(&mut Rng::seed_from_u64(5)).as_secs_f64();
        assert_eq!(again, samples[0], "seeded");
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_clears() {
        let t0 = Instant::now();
        let (i, m) = (Duration::from_secs(30), Duration::from_secs(120));
        let mut b = Backoff::default();
        assert!(!b.active(t0));
        let ends: Vec<u64> =
            (0..4).map(|_| b.signal(t0, i, m).duration_since(t0).as_secs()).collect();
        assert_eq!(ends, vec![30, 60, 120, 120]);
        assert!(b.active(t0 + Duration::from_secs(119)));
        assert!(!b.active(t0 + Duration::from_secs(120)));
        b.clear();
        assert_eq!(b.signal(t0, i, m), t0 + i);
    }

    #[test]
    fn watermarks_and_full_sync_cadence() {
        let mut s = PeerSync::new((5, 20));
        assert_eq!(s.full_every(), 12);
        assert!(s.full_due(), "no watermark yet");
        s.completed(true, Some(40), Some(7), 0);
        assert_eq!((s.recv, s.sent, s.full_every()), (Some(40), Some(7), 14));
        for _ in 0..13 {
            assert!(!s.full_due());
            s.completed(false, Some(41), Some(8), 0);
        }
        assert!(s.full_due(), "every 14th exchange is full");
        // A full sync that found records the deltas missed halves N.
        s.completed(true, Some(42), None, 3);
        assert_eq!(s.full_every(), 7);
        s.completed(true, Some(43), None, 9);
        assert_eq!(s.full_every(), 5, "floor");
        for _ in 0..20 {
            s.completed(true, None, None, 0);
        }
        assert_eq!(s.full_every(), 20, "ceiling");
        // Watermarks never go back.
        s.completed(false, Some(1), Some(1), 0);
        assert_eq!((s.recv, s.sent), (Some(43), Some(8)));
        s.pulled(100);
        assert_eq!(s.recv, Some(100));
    }
}
