//! Per-event debug lines (`-debug`), as the reference endpoint writes them:
//! a frame retransmitted, a NACK refused by a rate-limit tier, a cache
//! miss, a frame cached. They are gated by `-debug` itself (as in the
//! reference, raising the log level does not turn them on) and by a
//! per-worker line budget, so a NACK flood cannot turn them into a log
//! storm: at most [`LINES_PER_SECOND`] lines a second per worker, and one
//! line per second saying how many were left out.
//!
//! What happened is read from the retry service's statistics before and
//! after the event (its outbox says what was sent, not why), so the packet
//! path pays nothing when `-debug` is off.

use std::time::{Duration, Instant};

use crate::retry::{Stats, Tier};

/// Most per-event lines one worker writes in a second.
pub(crate) const LINES_PER_SECOND: u32 = 50;

/// A worker's per-event debug log.
#[derive(Debug)]
pub(crate) struct EventLog {
    enabled: bool,
    budget: Budget,
}

/// What one NACK did, read from the service's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NackEvent {
    /// Refused by the named rate-limit tier (the reference's `level`).
    RateLimited(&'static str),
    /// Not in the cache.
    Miss,
    /// Retransmitted (to the group, to the requester, or both).
    Retransmitted,
}

impl EventLog {
    /// A log writing lines only when `enabled` (`-debug`).
    pub(crate) fn new(enabled: bool) -> Self {
        EventLog { enabled, budget: Budget::default() }
    }

    /// Whether lines are written at all; callers skip their bookkeeping
    /// when not.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Logs what one NACK for `hash_key` `start..=end` did, from the
    /// service statistics before and after it.
    pub(crate) fn nack(
        &mut self,
        now: Instant,
        hash_key: u64,
        start: u64,
        before: &Stats,
        after: &Stats,
    ) {
        for event in nack_events(before, after) {
            if !self.budget.take(now) {
                continue;
            }
            match event {
                NackEvent::RateLimited(level) => {
                    tracing::debug!(
                        level,
                        hash_key = format_args!("{hash_key:016x}"),
                        start_seq = start,
                        "rate limited"
                    )
                }
                NackEvent::Miss => {
                    tracing::debug!(
                        hash_key = format_args!("{hash_key:016x}"),
                        start_seq = start,
                        "cache miss"
                    )
                }
                NackEvent::Retransmitted => tracing::debug!(
                    hash_key = format_args!("{hash_key:016x}"),
                    seq_num = start,
                    "retransmitted frame"
                ),
            }
        }
    }

    /// Logs a frame cached from the fabric.
    pub(crate) fn cached(&mut self, now: Instant, txid: &[u8; 32], hash_key: u64, seq: u64) {
        if self.budget.take(now) {
            tracing::debug!(
                txid = format_args!(
                    "{:016x}",
                    u64::from_be_bytes(txid[..8].try_into().unwrap_or([0; 8]))
                ),
                hash_key = format_args!("{hash_key:016x}"),
                seq_num = seq,
                "frame cached"
            );
        }
    }
}

/// The events one NACK caused, from the statistics before and after it.
pub(crate) fn nack_events(before: &Stats, after: &Stats) -> impl Iterator<Item = NackEvent> {
    let e = after.since(before);
    let limited = Tier::ALL
        .into_iter()
        .zip(e.limited)
        .filter(|(_, n)| *n > 0)
        .map(|(t, _)| NackEvent::RateLimited(t.name()));
    let misses = e.misses;
    // A frame sent both to its group and to the requester is one line.
    let sent = e.multicast.max(e.unicast);
    let miss =
        std::iter::repeat_n(NackEvent::Miss, misses.min(u64::from(LINES_PER_SECOND)) as usize);
    let sent = std::iter::repeat_n(
        NackEvent::Retransmitted,
        sent.min(u64::from(LINES_PER_SECOND)) as usize,
    );
    limited.chain(miss).chain(sent)
}

/// A line budget: [`LINES_PER_SECOND`] per one-second window, and a
/// summary of the lines left out when the next window opens.
#[derive(Debug, Default)]
struct Budget {
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Budget {
    /// Whether one more line may be written at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let open =
            self.window.is_some_and(|w| now.saturating_duration_since(w) < Duration::from_secs(1));
        if !open {
            if self.suppressed > 0 {
                tracing::debug!(
                    suppressed = self.suppressed,
                    "per-event debug lines left out (at most {LINES_PER_SECOND} a second per worker)"
                );
            }
            *self = Budget { window: Some(now), used: 0, suppressed: 0 };
        }
        if self.used < LINES_PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_lines_per_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut b = Budget::default();
        let taken = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(taken, LINES_PER_SECOND as usize);
        assert_eq!(b.suppressed, 1000 - u64::from(LINES_PER_SECOND));
        assert!(!b.take(t0 + Duration::from_millis(999)));
        assert!(b.take(t0 + Duration::from_secs(1)), "a new window opens");
        assert_eq!((b.used, b.suppressed), (1, 0));
    }

    #[test]
    fn events_are_read_from_the_statistics() {
        let before = Stats::default();
        let mut after = before;
        after.rate_limited_chain += 1;
        assert_eq!(
            nack_events(&before, &after).collect::<Vec<_>>(),
            [NackEvent::RateLimited("chain")]
        );
        let mut after = before;
        after.cache_misses += 2;
        after.retransmits_multicast += 1;
        after.retransmits_unicast += 1;
        assert_eq!(
            nack_events(&before, &after).collect::<Vec<_>>(),
            [NackEvent::Miss, NackEvent::Miss, NackEvent::Retransmitted],
            "one frame to its group and to the requester is one retransmit"
        );
        assert_eq!(nack_events(&before, &before).count(), 0);
    }
}
