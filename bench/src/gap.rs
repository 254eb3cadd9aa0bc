//! Per-flow gap detection for a listener, as the reference shard-listener
//! does it (research notes §5, "Gap tracking"), sans-IO.
//!
//! - A flow is a HashKey. Its first frame sets the baseline; nothing before
//!   it is a gap.
//! - A frame above the flow's highest SeqNum opens every SeqNum in between
//!   as a gap, unless it jumped more than `max_forward_jump` ahead (4096),
//!   which re-baselines the flow instead (the sender was away, or this is a
//!   different stream under the same key).
//! - A SeqNum ≤ 100 while the highest is > 100 is a proxy restart: the flow
//!   starts again from that frame and its open gaps are void.
//! - Anything else at or below the highest is [`Arrival::Old`]: a fill if
//!   it was a gap, else a duplicate — the caller's recovery state knows.
//!
//! The tracker holds one word per flow and caps the flows it follows
//! (`max_flows`, 100 000 by default): beyond that, new flows are ignored
//! and counted, so memory stays bounded whatever arrives.

use std::collections::HashMap;
use std::ops::Range;

/// The reference listener's restart rule threshold.
pub const RESTART_SEQ: u64 = 100;

/// What one arriving frame means for its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The flow's first frame: baseline set, no gaps.
    First,
    /// The flow advanced to this SeqNum; `gaps` (possibly empty) were skipped.
    Advanced {
        /// SeqNums skipped, now open gaps.
        gaps: Range<u64>,
    },
    /// Jumped more than `max_forward_jump` ahead: re-baselined, no gaps.
    Rebaselined,
    /// Proxy restart: the flow starts over at this frame; drop its gaps.
    Restarted,
    /// At or below the flow's highest: a gap fill or a duplicate.
    Old,
    /// Not followed: the flow table is full.
    Untracked,
}

/// Gap detection state for every flow a listener hears.
#[derive(Debug, Clone)]
pub struct GapTracker {
    highest: HashMap<u64, u64>,
    max_flows: usize,
    max_forward_jump: u64,
    /// Frames of flows ignored because the table was full.
    pub untracked: u64,
}

impl Default for GapTracker {
    fn default() -> Self {
        GapTracker::new(100_000, 4096)
    }
}

impl GapTracker {
    /// A tracker following at most `max_flows` flows, re-baselining on jumps
    /// larger than `max_forward_jump`.
    pub fn new(max_flows: usize, max_forward_jump: u64) -> Self {
        GapTracker {
            highest: HashMap::with_capacity(max_flows.min(4096)),
            max_flows,
            max_forward_jump,
            untracked: 0,
        }
    }

    /// Accounts for a frame `(hash_key, seq)` that arrived.
    pub fn on_frame(&mut self, hash_key: u64, seq: u64) -> Arrival {
        let len = self.highest.len();
        let Some(highest) = self.highest.get_mut(&hash_key) else {
            if len >= self.max_flows {
                self.untracked += 1;
                return Arrival::Untracked;
            }
            self.highest.insert(hash_key, seq);
            return Arrival::First;
        };
        let h = *highest;
        if seq > h {
            *highest = seq;
            if seq - h > self.max_forward_jump {
                return Arrival::Rebaselined;
            }
            return Arrival::Advanced { gaps: h + 1..seq };
        }
        if seq <= RESTART_SEQ && h > RESTART_SEQ {
            *highest = seq;
            return Arrival::Restarted;
        }
        Arrival::Old
    }

    /// Tells the tracker a flow's last SeqNum (a tail hint: what a tail probe
    /// would learn). Returns the trailing SeqNums never seen, as gaps.
    pub fn on_tail(&mut self, hash_key: u64, last_seq: u64) -> Range<u64> {
        match self.highest.get_mut(&hash_key) {
            Some(h) if last_seq > *h && last_seq - *h <= self.max_forward_jump => {
                let gaps = *h + 1..last_seq + 1;
                *h = last_seq;
                gaps
            }
            _ => 0..0,
        }
    }

    /// The highest SeqNum seen for a flow.
    pub fn highest(&self, hash_key: u64) -> Option<u64> {
        self.highest.get(&hash_key).copied()
    }

    /// Flows followed.
    pub fn flows(&self) -> usize {
        self.highest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_frames_open_no_gaps() {
        let mut t = GapTracker::default();
        assert_eq!(t.on_frame(7, 1), Arrival::First);
        for s in 2..10 {
            assert_eq!(t.on_frame(7, s), Arrival::Advanced { gaps: s..s });
        }
        assert_eq!(t.highest(7), Some(9));
    }

    #[test]
    fn a_skip_opens_the_missing_seqnums_and_a_late_frame_is_old() {
        let mut t = GapTracker::default();
        t.on_frame(1, 10);
        assert_eq!(t.on_frame(1, 14), Arrival::Advanced { gaps: 11..14 });
        assert_eq!(t.on_frame(1, 12), Arrival::Old);
        assert_eq!(t.on_frame(1, 14), Arrival::Old, "duplicate of the highest");
        // Flows are independent.
        assert_eq!(t.on_frame(2, 100), Arrival::First);
        assert_eq!(t.on_frame(2, 102), Arrival::Advanced { gaps: 101..102 });
        assert_eq!(t.flows(), 2);
    }

    #[test]
    fn a_huge_jump_rebaselines_and_a_low_seq_after_100_is_a_restart() {
        let mut t = GapTracker::new(10, 4096);
        t.on_frame(1, 5);
        assert_eq!(t.on_frame(1, 5 + 4097), Arrival::Rebaselined);
        assert_eq!(t.on_frame(1, 5 + 4098), Arrival::Advanced { gaps: 4103..4103 });
        assert_eq!(t.on_frame(1, 3), Arrival::Restarted);
        assert_eq!(t.highest(1), Some(3));
        assert_eq!(t.on_frame(1, 5), Arrival::Advanced { gaps: 4..5 });
        // Below the restart threshold a low SeqNum is just old.
        let mut t = GapTracker::default();
        t.on_frame(9, 50);
        assert_eq!(t.on_frame(9, 3), Arrival::Old);
    }

    #[test]
    fn the_flow_table_is_bounded() {
        let mut t = GapTracker::new(2, 4096);
        t.on_frame(1, 1);
        t.on_frame(2, 1);
        assert_eq!(t.on_frame(3, 1), Arrival::Untracked);
        assert_eq!(t.untracked, 1);
        assert_eq!(t.on_frame(1, 2), Arrival::Advanced { gaps: 2..2 });
    }

    #[test]
    fn a_tail_hint_opens_the_trailing_gaps() {
        let mut t = GapTracker::default();
        t.on_frame(4, 1);
        t.on_frame(4, 2);
        assert_eq!(t.on_tail(4, 5), 3..6);
        assert_eq!(t.on_tail(4, 5), 0..0, "nothing left");
        assert_eq!(t.on_tail(99, 5), 0..0, "unknown flow");
    }
}
