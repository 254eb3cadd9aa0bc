//! Epoch evidence: frames held aside as a flow's candidate epoch.
//!
//! # Invariants
//! - A flow has at most one candidate, of 1 to [`EPOCH_EVIDENCE`] − 1
//!   frames with distinct SeqNums, all within the smaller of
//!   `regression_threshold` and `max_per_flow` − 1 of each other.
//! - Candidate frames are never served and never replace a held frame; they
//!   are stored in the class logs only when the [`EPOCH_EVIDENCE`]th frame
//!   confirms the epoch, as of that moment (so in insert order).
//! - Each candidate has exactly one live entry in the candidate FIFO, which
//!   is in age order (one fixed TTL, [`EPOCH_EVIDENCE_TTL`]); an entry whose
//!   id no longer matches its flow's candidate is a tombstone.
//! - `cand_charge` is exactly the sum of [`Candidate::charge`]: the frames'
//!   bytes plus [`CANDIDATE_OVERHEAD`] each.

use bytes::Bytes;

use super::{
    CANDIDATE_OVERHEAD, COMPACT_SLACK, Cache, EPOCH_EVIDENCE, EPOCH_EVIDENCE_TTL, Insert, Keep,
    Meta, TtlClass, duration_ms, shrink_queue,
};

impl Cache {
    /// The candidate a candidate-FIFO entry refers to, `None` for a
    /// tombstone.
    pub(super) fn cand_of(&self, e: CEntry) -> Option<&Candidate> {
        self.flows.get(e.flow as usize)?.cand.as_deref().filter(|c| c.id == e.id)
    }

    /// Holds a frame as evidence of a new epoch for flow `idx` (a copy of
    /// it: candidates are rare and few), or, when it is the
    /// [`EPOCH_EVIDENCE`]th, returns `None` for [`Cache::start_epoch`].
    pub(super) fn add_evidence(
        &mut self,
        idx: u32,
        now_ms: u64,
        seq: u64,
        class: TtlClass,
        group: u16,
        frame: &[u8],
    ) -> Option<Insert> {
        let evidence_ms = duration_ms(EPOCH_EVIDENCE_TTL);
        // A restarted proxy's first frames lie close together, and within
        // one window so that all of them can be stored.
        let span = self.settings.regression_threshold.min(self.max_per_flow() - 1);
        let cand = &self.flows[idx as usize].cand;
        if cand.as_ref().is_some_and(|c| c.started_ms.saturating_add(evidence_ms) <= now_ms) {
            self.drop_cand(idx);
        }
        if let Some(c) = &self.flows[idx as usize].cand {
            if c.held().iter().any(|p| p.seq == seq) {
                // Keep the first copy, as for frames.
                self.stats.duplicates += 1;
                return Some(Insert::Duplicate);
            }
            let (lo, hi) = c.bounds();
            if hi.max(seq) - lo.min(seq) > span {
                // Not the same restarted proxy: the newest evidence wins.
                self.drop_cand(idx);
            }
        }
        let n = self.flows[idx as usize].cand.as_ref().map_or(0, |c| c.n);
        if n + 1 >= EPOCH_EVIDENCE {
            return None;
        }
        self.stats.epoch_candidates += 1;
        self.cand_charge += frame.len() as u64;
        let frame = Bytes::copy_from_slice(frame);
        let pending = Pending { seq, frame: Some(frame), meta: Meta::new(class, group) };
        let flow = &mut self.flows[idx as usize];
        match &mut flow.cand {
            Some(c) => {
                c.frames[c.n] = pending;
                c.n += 1;
            }
            None => {
                let id = self.next_cand;
                self.next_cand += 1;
                let mut frames = [Pending::VACANT; EPOCH_EVIDENCE - 1];
                frames[0] = pending;
                flow.cand = Some(Box::new(Candidate { id, started_ms: now_ms, n: 1, frames }));
                self.cands.push_back(CEntry { flow: idx, id });
                self.cand_live += 1;
                self.cand_charge += CANDIDATE_OVERHEAD as u64;
                if self.cands.len() > 2 * self.cand_live + COMPACT_SLACK {
                    let flows = &self.flows;
                    self.cands.retain(|&e| {
                        flows[e.flow as usize].cand.as_ref().is_some_and(|c| c.id == e.id)
                    });
                    shrink_queue(&mut self.cands);
                }
            }
        }
        self.fit(Keep { flow: idx, seq: None, cand: true }, None);
        if self.flows[idx as usize].live == 0 {
            // The budget took every frame of the old epoch: nothing is left
            // for the evidence to replace.
            self.remove_flow(idx);
        }
        Some(Insert::Candidate)
    }

    /// Confirms flow `idx`'s candidate epoch: drops its old frames and
    /// stores the candidates as of `now_ms`. Returns how many were stored.
    pub(super) fn start_epoch(&mut self, idx: u32, now_ms: u64) -> usize {
        let cand = self.flows[idx as usize].cand.take();
        if let Some(c) = &cand {
            self.cand_charge -= c.charge();
            self.cand_live -= 1;
        }
        let flow = &self.flows[idx as usize];
        let mut held = vec![0u64; flow.log.len().div_ceil(64)];
        for (i, _) in flow.log.iter().enumerate().filter(|(_, s)| s.held()) {
            held[i / 64] |= 1 << (i % 64);
        }
        self.last_reset =
            Some(super::EpochReset { hash_key: flow.hash_key, base: flow.base, held });
        let dropped = self.clear_flow(idx);
        self.stats.epoch_resets += 1;
        self.stats.evicted_epoch += dropped;
        let Some(mut c) = cand else { return 0 };
        let n = c.n;
        c.frames[..n].sort_unstable_by_key(|p| p.seq);
        for p in &mut c.frames[..n] {
            let Some(frame) = p.frame.take() else { continue };
            self.advance(idx, p.seq);
            self.put(idx, now_ms, p.seq, p.meta.class(), p.meta.group(), &frame);
        }
        n
    }

    /// Drops flow `idx`'s candidate epoch, if any.
    pub(super) fn drop_cand(&mut self, idx: u32) {
        let Some(c) = self.flows[idx as usize].cand.take() else { return };
        self.cand_charge -= c.charge();
        self.cand_live -= 1;
        self.stats.epoch_candidates_dropped += 1;
    }

    /// Pops aged (and tombstone) fronts of the candidate FIFO, examining at
    /// most `budget` entries. Returns whether the budget ran out.
    pub(super) fn sweep_cands(&mut self, now_ms: u64, budget: usize) -> bool {
        let evidence_ms = duration_ms(EPOCH_EVIDENCE_TTL);
        let mut work = 0;
        while let Some(&e) = self.cands.front() {
            if work == budget {
                return true;
            }
            work += 1;
            if let Some(c) = self.cand_of(e) {
                if c.started_ms.saturating_add(evidence_ms) > now_ms {
                    break;
                }
                self.drop_cand(e.flow);
            }
            self.cands.pop_front();
        }
        shrink_queue(&mut self.cands);
        false
    }
}

/// A flow's candidate epoch: up to [`EPOCH_EVIDENCE`] − 1 frames that
/// conflict with or fall far below its current epoch.
pub(super) struct Candidate {
    /// Matches its entry in the candidate FIFO.
    pub(super) id: u64,
    /// When its first frame arrived; it ages out [`EPOCH_EVIDENCE_TTL`] later.
    pub(super) started_ms: u64,
    pub(super) n: usize,
    pub(super) frames: [Pending; EPOCH_EVIDENCE - 1],
}

impl Candidate {
    pub(super) fn held(&self) -> &[Pending] {
        &self.frames[..self.n]
    }

    /// Lowest and highest SeqNum held (`n` ≥ 1 while it exists).
    pub(super) fn bounds(&self) -> (u64, u64) {
        let seqs = self.held().iter().map(|p| p.seq);
        (seqs.clone().min().unwrap_or(0), seqs.max().unwrap_or(0))
    }

    /// Whether it has reached the old epoch's head.
    pub(super) fn caught_up(&self, highest: u64) -> bool {
        self.bounds().1 >= highest
    }

    /// What the byte budget charges for it.
    pub(super) fn charge(&self) -> u64 {
        let frames: usize =
            self.held().iter().map(|p| p.frame.as_ref().map_or(0, Bytes::len)).sum();
        (CANDIDATE_OVERHEAD + frames) as u64
    }
}

/// One frame of evidence; `meta` carries its class and group (no deadline:
/// it is stored as of the confirmation).
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) frame: Option<Bytes>,
    pub(super) meta: Meta,
}

impl Pending {
    pub(super) const VACANT: Pending = Pending { seq: 0, frame: None, meta: Meta(0) };
}

/// A candidate FIFO entry: the flow's slab index and the candidate's id.
#[derive(Clone, Copy)]
pub(super) struct CEntry {
    pub(super) flow: u32,
    pub(super) id: u64,
}
