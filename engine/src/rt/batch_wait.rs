//! How long an io_uring worker's next wait lingers for a batch
//! (`min_wait_usec`): `--uring-batch-wait` at most, shorter when datagrams
//! arrive fast enough that a batch gathers sooner.
//!
//! Why it adapts: the kernel ends a batch wait early only when the number
//! of completions *wanted* is reached, and with `DEFER_TASKRUN` a burst of
//! datagrams on one multishot receive is one piece of task work, so under
//! load the wait nearly always runs its full length (measured on Linux 6.18:
//! every sleep of a saturated worker ended on the timer). At a few
//! thousand NACKs per second that is the point: the wait gathers what
//! would otherwise be one wake-up each. At hundreds of thousands a round
//! already holds a batch when it starts, and the fixed wait is idle time
//! during which the listeners' next NACKs queue up (a closed-loop storm
//! idled the worker 13 % of the time at 200 µs).
//!
//! So the wait is the time [`BATCH_WANT`] datagrams take to arrive at the
//! rate measured over the last window of at least [`RATE_WINDOW`]: never
//! longer than the configured wait, which it stays at below
//! `BATCH_WANT / wait` datagrams per second (160 k/s at the 200 µs
//! default), and never zero, since a zero `min_wait` means no batch wait.
//! An idle worker's window measures no datagrams, and its first wait after
//! a quiet spell is the configured one.

use std::time::{Duration, Instant};

/// Completions a batch wait asks for: a round of sends the size of a GSO
/// run.
pub(crate) const BATCH_WANT: usize = 32;

/// The shortest span the arrival rate is measured over.
const RATE_WINDOW: Duration = Duration::from_millis(1);

/// A worker's batch wait, adapted to the arrival rate.
#[derive(Debug)]
pub(crate) struct BatchWait {
    /// `--uring-batch-wait` in microseconds; 0 turns batching off.
    max_us: u32,
    /// The wait the next round uses.
    current_us: u32,
    window_start: Instant,
    window_datagrams: u64,
}

impl BatchWait {
    pub(crate) fn new(max_us: u32, now: Instant) -> BatchWait {
        BatchWait { max_us, current_us: max_us, window_start: now, window_datagrams: 0 }
    }

    /// The `min_wait_usec` of the next wait; 0 when batching is off.
    pub(crate) fn micros(&self) -> u32 {
        self.current_us
    }

    /// Counts a round's received datagrams; once a window is full, sets the
    /// wait from the rate it saw.
    pub(crate) fn record(&mut self, now: Instant, datagrams: usize) {
        if self.max_us == 0 {
            return;
        }
        self.window_datagrams += datagrams as u64;
        let span = now.saturating_duration_since(self.window_start);
        if span < RATE_WINDOW {
            return;
        }
        self.current_us = match self.window_datagrams {
            0 => self.max_us,
            n => {
                let gather = span.as_micros().saturating_mul(BATCH_WANT as u128) / u128::from(n);
                u32::try_from(gather).unwrap_or(u32::MAX).clamp(1, self.max_us)
            }
        };
        self.window_start = now;
        self.window_datagrams = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate` datagrams per second in rounds of `round` for `for_`.
    fn feed(w: &mut BatchWait, start: Instant, rate: f64, round: usize, for_: Duration) -> Instant {
        let step = Duration::from_secs_f64(round as f64 / rate);
        let mut now = start;
        while now < start + for_ {
            now += step;
            w.record(now, round);
        }
        now
    }

    #[test]
    fn starts_at_the_configured_wait() {
        let w = BatchWait::new(200, Instant::now());
        assert_eq!(w.micros(), 200);
    }

    #[test]
    fn slow_arrivals_keep_the_configured_wait() {
        let t0 = Instant::now();
        let mut w = BatchWait::new(200, t0);
        // 100 k/s: 32 datagrams take 320 µs, longer than the wait.
        feed(&mut w, t0, 100_000.0, 3, Duration::from_millis(20));
        assert_eq!(w.micros(), 200);
    }

    #[test]
    fn fast_arrivals_wait_as_long_as_a_batch_takes() {
        let t0 = Instant::now();
        let mut w = BatchWait::new(200, t0);
        // 400 k/s: 32 datagrams arrive in 80 µs.
        let now = feed(&mut w, t0, 400_000.0, 140, Duration::from_millis(20));
        assert!((78..=82).contains(&w.micros()), "{}", w.micros());
        // 1.6 M/s: 20 µs.
        let now = feed(&mut w, now, 1_600_000.0, 140, Duration::from_millis(20));
        assert!((19..=21).contains(&w.micros()), "{}", w.micros());
        // A quiet spell: the window sees nothing, the wait is back to full.
        w.record(now + Duration::from_millis(5), 0);
        assert_eq!(w.micros(), 200);
    }

    #[test]
    fn changes_only_once_a_window_is_full() {
        let t0 = Instant::now();
        let mut w = BatchWait::new(200, t0);
        w.record(t0 + Duration::from_micros(500), 10_000);
        assert_eq!(w.micros(), 200, "half a window");
        w.record(t0 + Duration::from_micros(1_000), 0);
        // 10 000 datagrams in 1 ms: 32 in 3.2 µs.
        assert_eq!(w.micros(), 3);
    }

    #[test]
    fn never_zero_and_never_above_the_configured_wait() {
        let t0 = Instant::now();
        let mut w = BatchWait::new(50, t0);
        w.record(t0 + Duration::from_millis(1), 1_000_000);
        assert_eq!(w.micros(), 1, "a zero min_wait would mean no batch wait");
        w.record(t0 + Duration::from_millis(3), 1);
        assert_eq!(w.micros(), 50);
    }

    #[test]
    fn off_stays_off() {
        let t0 = Instant::now();
        let mut w = BatchWait::new(0, t0);
        feed(&mut w, t0, 400_000.0, 140, Duration::from_millis(5));
        w.record(t0 + Duration::from_millis(10), 0);
        assert_eq!(w.micros(), 0);
    }
}
