//! One flow's index: SeqNum → the address of its record in a class log.
//!
//! # Invariants
//! - `log[i]` is the slot of SeqNum `base + i`: where the frame's record is
//!   and what a lookup needs of it ([`Slot`]: 12 bytes), or a hole. An
//!   in-order append is a `push_back`, a lookup one subtraction and one
//!   load.
//! - While a flow holds frames its log is tight (first and last slots held)
//!   and spans at most `max_per_flow` SeqNums, holes included; every slot
//!   allocated, held or not, is charged [`super::SLOT_BYTES`], so a sparse
//!   flow pays for its span (see the module docs of [`super`]).
//! - `live` is the number of held slots; `cap` is the log's capacity as last
//!   added to the shard's slot total, re-read after every operation that may
//!   change it.
//! - A record names its flow by slab index and the low 24 bits of its
//!   SeqNum; [`Flow::pos_lo`] turns those bits back into a position, which is
//!   exact because a log spans fewer than 2²⁴ SeqNums.

use std::collections::VecDeque;

use super::epoch::Candidate;
use super::segment::Slot;

pub(super) const NIL: u32 = u32::MAX;

/// One flow's state. `log[i]` holds SeqNum `base + i`.
pub(super) struct Flow {
    pub(super) hash_key: u64,
    pub(super) log: VecDeque<Slot>,
    pub(super) base: u64,
    pub(super) highest: u64,
    pub(super) live: usize,
    /// `log.capacity()` as last counted in the shard's slot total.
    pub(super) cap: usize,
    /// Evidence of a new epoch, if any (see the module docs).
    pub(super) cand: Option<Box<Candidate>>,
    pub(super) prev: u32,
    pub(super) next: u32,
}

impl Flow {
    pub(super) fn empty() -> Self {
        Flow {
            hash_key: 0,
            log: VecDeque::new(),
            base: 0,
            highest: 0,
            live: 0,
            cap: 0,
            cand: None,
            prev: NIL,
            next: NIL,
        }
    }

    pub(super) fn pos(&self, seq: u64) -> Option<usize> {
        let off = seq.checked_sub(self.base)?;
        (off < self.log.len() as u64).then_some(off as usize)
    }

    /// The position of the SeqNum whose low 24 bits are `lo`, if the log
    /// spans it.
    pub(super) fn pos_lo(&self, lo: u32) -> Option<usize> {
        let off = (lo.wrapping_sub(self.base as u32) & super::segment::LOW_MASK) as usize;
        (off < self.log.len()).then_some(off)
    }

    /// Lowest SeqNum the flow may hold: the window is the newest
    /// `max_per_flow` SeqNums up to the highest.
    pub(super) fn window_low(&self, max_per_flow: u64) -> u64 {
        self.highest.saturating_sub(max_per_flow - 1)
    }

    /// Puts `slot` at `seq`, growing the log with holes as needed. The caller
    /// has checked `seq` is inside the window and its slot empty, so the log
    /// never spans more than `max_per_flow` SeqNums.
    pub(super) fn place(&mut self, seq: u64, slot: Slot) {
        if self.log.is_empty() {
            self.base = seq;
            self.grow(1);
            self.log.push_back(slot);
        } else if seq < self.base {
            self.grow((self.base - seq) as usize);
            for _ in seq + 1..self.base {
                self.log.push_front(Slot::VACANT);
            }
            self.log.push_front(slot);
            self.base = seq;
        } else if let Some(pos) = self.pos(seq) {
            self.log[pos] = slot;
        } else {
            let holes = (seq - self.base) as usize - self.log.len();
            // Room for the frame too, so a long jump allocates once.
            self.grow(holes + 1);
            self.log.resize(self.log.len() + holes, Slot::VACANT);
            self.log.push_back(slot);
        }
    }

    /// Makes room for `more` slots, growing by a quarter at least (not the
    /// `VecDeque`'s doubling): geometric, so O(1) amortised, with at most a
    /// fifth of the slots spare where doubling leaves up to half.
    fn grow(&mut self, more: usize) {
        let (len, cap) = (self.log.len(), self.log.capacity());
        if len + more > cap {
            self.log.reserve_exact((len + more - cap).max(cap / 4).max(4));
        }
    }

    /// Drops empty slots at both ends, so the log spans only held frames.
    pub(super) fn trim(&mut self) {
        while self.log.front().is_some_and(|s| !s.held()) {
            self.log.pop_front();
            self.base += 1;
        }
        while self.log.back().is_some_and(|s| !s.held()) {
            self.log.pop_back();
        }
        self.shrink();
    }

    /// Gives back capacity once a log has emptied to a quarter of it (halving
    /// the copy cost over the removals that got it there: O(1) amortised).
    pub(super) fn shrink(&mut self) {
        let (len, cap) = (self.log.len(), self.log.capacity());
        if cap > 64 && len < cap / 4 {
            self.log.shrink_to(len * 2);
        }
    }
}
