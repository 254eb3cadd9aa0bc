//! Open-loop pacing: the intended send time of the k-th message of a
//! constant-rate schedule, and how many are due at a given instant.
//!
//! The schedule is pure integer arithmetic on nanoseconds so it never drifts:
//! message `k` (from 0) is due at `start + floor(k · 10^12 / rate_milli)` ns,
//! where `rate_milli` is the rate in thousandths of a message per second. A
//! sender that falls behind does not slow the schedule down; it sends what
//! is due as fast as it can, and latency is measured from the intended time
//! (see `latency`), which is what corrects for coordinated omission.

/// A constant-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    /// Messages per 1000 s (rate × 1000), ≥ 1.
    rate_milli: u64,
}

const PS_PER_S: u128 = 1_000_000_000_000; // ns per s × 1000

impl Schedule {
    /// `rate` messages per second starting at `start_ns` (the first is due
    /// at `start_ns`). Rates below 0.001/s are raised to that.
    pub fn new(start_ns: u64, rate: f64) -> Self {
        let rate_milli = (rate * 1000.0).round().max(1.0) as u64;
        Schedule { start_ns, rate_milli }
    }

    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.rate_milli as f64 / 1000.0
    }

    /// Intended send time of message `k`, in ns on the caller's clock.
    pub fn intended(&self, k: u64) -> u64 {
        self.start_ns + (u128::from(k) * PS_PER_S / u128::from(self.rate_milli)) as u64
    }

    /// How many messages are due at `now_ns`: the number of `k` with
    /// `intended(k) <= now_ns` (0 before the start).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = u128::from(now_ns - self.start_ns);
        // k ≤ elapsed · rate / 10^12 is exactly intended(k) ≤ now, up to the
        // floor in `intended`; fix the estimate up by stepping.
        let mut k = (elapsed * u128::from(self.rate_milli) / PS_PER_S) as u64 + 1;
        while k > 0 && self.intended(k - 1) > now_ns {
            k -= 1;
        }
        while self.intended(k) <= now_ns {
            k += 1;
        }
        k
    }

    /// Messages a run of `duration_ns` sends: those due strictly before
    /// `start + duration`.
    pub fn total(&self, duration_ns: u64) -> u64 {
        self.due(self.start_ns + duration_ns.max(1) - 1)
    }

    /// Nanoseconds from `now_ns` until message `k` is due (0 if it is).
    pub fn wait_for(&self, k: u64, now_ns: u64) -> u64 {
        self.intended(k).saturating_sub(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_exact_for_whole_rates() {
        let s = Schedule::new(1_000, 1_000.0);
        assert_eq!(s.intended(0), 1_000);
        assert_eq!(s.intended(1), 1_001_000);
        assert_eq!(s.intended(1_000), 1_000_001_000);
        let s = Schedule::new(0, 3.0);
        assert_eq!(s.intended(1), 333_333_333);
        assert_eq!(s.intended(3), 1_000_000_000);
    }

    #[test]
    fn due_counts_messages_at_or_before_now() {
        let s = Schedule::new(500, 1_000.0);
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(499), 0);
        assert_eq!(s.due(500), 1);
        assert_eq!(s.due(500 + 999_999), 1);
        assert_eq!(s.due(500 + 1_000_000), 2);
        // due(now) is the boundary: intended(due-1) <= now < intended(due).
        for rate in [0.5, 1.0, 7.0, 999.9, 12_345.678, 2_000_000.0] {
            let s = Schedule::new(10, rate);
            for now in (0..5_000_000_000u64).step_by(7_777_777) {
                let d = s.due(now);
                if d > 0 {
                    assert!(s.intended(d - 1) <= now, "rate {rate} now {now}");
                }
                assert!(s.intended(d) > now, "rate {rate} now {now}");
            }
        }
    }

    #[test]
    fn totals_match_rate_times_duration() {
        assert_eq!(Schedule::new(0, 1_000.0).total(1_000_000_000), 1_000);
        assert_eq!(Schedule::new(0, 2.5).total(2_000_000_000), 5);
        assert_eq!(Schedule::new(77, 100_000.0).total(10_000_000_000), 1_000_000);
        assert_eq!(Schedule::new(0, 1.0).rate(), 1.0);
    }

    #[test]
    fn wait_for_is_zero_when_due() {
        let s = Schedule::new(0, 10.0);
        assert_eq!(s.wait_for(1, 0), 100_000_000);
        assert_eq!(s.wait_for(1, 100_000_000), 0);
        assert_eq!(s.wait_for(1, 200_000_000), 0);
    }
}
