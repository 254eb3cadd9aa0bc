//! The bookkeeping of G4 reconciliation sessions: table sizing, burst
//! sizing, and the reassembly of tables, rateless streams and key lists
//! that arrive in positioned frames. The protocol (who sends what, when) is
//! in the [module docs](super) and is driven by [`super::Gossip`].
//!
//! # Contract
//! - Pure and bounded: every structure here is sized by the caller from a
//!   [`Config`](super::Config) cap before it sees a cell, and never grows
//!   past it, whatever the frames claim. Frames are untrusted: a frame that
//!   does not fit its sequence is refused (`false` / [`Fed::Refused`]),
//!   never a panic.
//! - Deterministic: nothing here reads a clock or a generator.

use std::collections::BTreeMap;

use ricochet_wire::gossip::{Cells, IbltCell};
use ricochet_wire::mac::GOSSIP_OVERHEAD;

use super::iblt::{DecodeState, Difference, HASH_COUNT, Iblt, IbltError, RatelessDecoder};

/// Bytes of a G4 reconciliation frame besides its topic and cells.
pub(super) const FRAME_OVERHEAD: usize = 19;

/// Cells one G4 frame of a topic of `topic_len` bytes can carry in a
/// datagram of `max_datagram` bytes (stamp and MAC included); at least 1.
pub(super) fn cells_per_datagram(max_datagram: usize, topic_len: usize) -> usize {
    let room = max_datagram.saturating_sub(GOSSIP_OVERHEAD + FRAME_OVERHEAD + topic_len);
    (room / IbltCell::LEN).max(1)
}

/// The difference an initiator expects: twice the records it changed since
/// the peer last acknowledged its changes (the peer is assumed to have
/// changed about as many), 0 when it has no watermark for the peer.
pub(super) fn estimate(local_changes: usize) -> usize {
    local_changes.saturating_mul(2)
}

/// Cells of a fixed table for an estimated difference `d`: `⌈1.5 d⌉`, at
/// least one datagram, rounded up to whole datagrams (the cells that fill
/// the last datagram cost nothing and make decoding likelier), at most
/// `max` cells; `None` when `⌈1.5 d⌉` is over `max` (the estimate does not
/// fit a fixed table: stream rateless symbols instead).
pub(super) fn table_cells(d: usize, per_datagram: usize, max: usize) -> Option<usize> {
    let want = Iblt::cells_for(d);
    if want > max {
        return None;
    }
    let per = per_datagram.max(1);
    let rounded = want.max(per).div_ceil(per).saturating_mul(per);
    Some(rounded.min(max).max(HASH_COUNT))
}

/// The next rateless burst the decoder asks for, having received
/// `received` symbols: half as many again (so bursts grow by 1.5× and at
/// most a third of a round's symbols overshoot the decoding point), in
/// whole datagrams, between one datagram and `max_datagrams`.
pub(super) fn next_burst(received: u64, per_datagram: usize, max_datagrams: usize) -> u64 {
    let per = per_datagram.max(1) as u64;
    let half = received.div_ceil(2).div_ceil(per).max(1);
    half.min(max_datagrams.max(1) as u64) * per
}

/// Cells of a sequence of known length (a fixed table or a key list)
/// placed as their frames arrive, in any order, duplicates ignored.
#[derive(Debug, Clone)]
pub(super) struct Assembly {
    cells: Vec<IbltCell>,
    seen: Vec<u64>,
    missing: usize,
}

impl Assembly {
    /// An empty sequence of `len` cells (the caller bounds `len`).
    pub(super) fn new(len: usize) -> Self {
        Assembly {
            cells: vec![IbltCell::default(); len],
            seen: vec![0; len.div_ceil(64)],
            missing: len,
        }
    }

    /// Length of the sequence.
    pub(super) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Places `cells` at positions `first..`; returns how many were new, or
    /// `None` (nothing placed) if they run past the end.
    pub(super) fn place(&mut self, first: usize, cells: Cells<'_>) -> Option<usize> {
        if first.checked_add(cells.len()).is_none_or(|end| end > self.cells.len()) {
            return None;
        }
        let mut new = 0;
        for (i, cell) in (first..).zip(cells.iter()) {
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            let Some(word) = self.seen.get_mut(w) else { return Some(new) };
            if *word & bit == 0 {
                *word |= bit;
                if let Some(c) = self.cells.get_mut(i) {
                    *c = cell;
                }
                self.missing -= 1;
                new += 1;
            }
        }
        Some(new)
    }

    /// Whether every cell arrived.
    pub(super) fn complete(&self) -> bool {
        self.missing == 0
    }

    /// The span from the first to the last missing cell, if any.
    pub(super) fn missing_span(&self) -> Option<(usize, usize)> {
        let is_missing =
            |i: &usize| self.seen.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) == 0);
        let first = (0..self.cells.len()).find(is_missing)?;
        let last = (first..self.cells.len()).rev().find(is_missing)?;
        Some((first, last + 1))
    }

    /// The cells, in order.
    pub(super) fn cells(&self) -> &[IbltCell] {
        &self.cells
    }
}

/// What feeding a frame to a [`Stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fed {
    /// Symbol 0 is empty: the difference is complete.
    Decoded,
    /// More symbols are needed.
    Pending,
    /// The stream is inconsistent, or reached the symbol cap.
    Failed,
    /// The frame was ahead of a gap and the out-of-order buffer is full;
    /// it was dropped.
    Refused,
}

/// A peer's rateless stream arriving in frames, possibly out of order
/// within a burst, fed to a [`RatelessDecoder`] in order.
#[derive(Debug)]
pub(super) struct Stream {
    decoder: RatelessDecoder,
    /// Frames past a gap, by first symbol index (at most `max_pending`).
    pending: BTreeMap<u64, Vec<IbltCell>>,
    max_pending: usize,
    /// End of the burst the latest frames belong to.
    burst_end: u64,
    /// Highest range end we asked for (so a burst is asked for once).
    requested: u64,
}

impl Stream {
    /// A stream decoded against `local` ids, accepting at most
    /// `max_symbols` symbols and buffering at most `max_pending` frames
    /// past a gap.
    pub(super) fn new(local: Vec<u64>, max_symbols: usize, max_pending: usize) -> Self {
        Stream {
            decoder: RatelessDecoder::new(local, max_symbols),
            pending: BTreeMap::new(),
            max_pending,
            burst_end: 0,
            requested: 0,
        }
    }

    /// Symbols received in order so far.
    pub(super) fn received(&self) -> u64 {
        self.decoder.symbols_received()
    }

    /// End of the current burst.
    pub(super) fn burst_end(&self) -> u64 {
        self.burst_end
    }

    /// Whether the whole current burst arrived without decoding, and the
    /// next one was not asked for yet.
    pub(super) fn wants_more(&self) -> bool {
        self.decoder.state() == DecodeState::Pending
            && self.received() >= self.burst_end
            && self.requested <= self.burst_end
    }

    /// The end of the latest range asked for (0 before any).
    pub(super) fn requested_end(&self) -> u64 {
        self.requested
    }

    /// Notes that symbols up to `end` were asked for.
    pub(super) fn requested(&mut self, end: u64) {
        self.requested = self.requested.max(end);
    }

    /// The gap before the first buffered frame, if frames wait past one.
    pub(super) fn gap(&self) -> Option<(u64, u64)> {
        let (&first, _) = self.pending.first_key_value()?;
        Some((self.received(), first))
    }

    /// Feeds the cells `first..first + cells.len()` of a burst ending at
    /// `end`.
    pub(super) fn feed(&mut self, first: u64, end: u64, cells: Cells<'_>) -> Fed {
        self.burst_end = self.burst_end.max(end);
        if first > self.received() {
            if self.pending.len() >= self.max_pending && !self.pending.contains_key(&first) {
                return Fed::Refused;
            }
            self.pending.insert(first, cells.iter().collect());
            return Fed::Pending;
        }
        let mut state = match self.decoder.push_cells(first, cells) {
            Ok(s) => s,
            Err(_) => return Fed::Failed,
        };
        // Frames that waited behind the gap.
        while state == DecodeState::Pending {
            let received = self.received();
            let Some(entry) = self.pending.first_entry() else { break };
            if *entry.key() > received {
                break;
            }
            let (at, cells) = entry.remove_entry();
            state = match self.decoder.push_cells(at, Cells::from(&cells[..])) {
                Ok(s) => s,
                Err(_) => return Fed::Failed,
            };
        }
        match state {
            DecodeState::Decoded => {
                self.pending.clear();
                Fed::Decoded
            }
            DecodeState::Pending => Fed::Pending,
            DecodeState::Failed => Fed::Failed,
        }
    }

    /// The difference, once decoded (seen from the decoder's side).
    pub(super) fn difference(&self) -> Option<Difference> {
        self.decoder.is_decoded().then(|| self.decoder.difference().clone())
    }
}

/// Decodes a complete fixed table received from a peer against our own ids.
pub(super) fn decode_table(theirs: &[IbltCell], ours: Vec<u64>) -> Result<Difference, IbltError> {
    let theirs = Iblt::from_cells(Cells::from(theirs))?;
    let mut mine = Iblt::from_keys(theirs.len(), ours)?;
    mine.subtract(&theirs)?;
    mine.decode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::iblt::RatelessEncoder;

    #[test]
    fn sizing() {
        assert_eq!(cells_per_datagram(1232, 5), 58);
        assert_eq!(cells_per_datagram(1232, 0), 58);
        assert_eq!(cells_per_datagram(1232, 255), 45);
        assert_eq!(cells_per_datagram(10, 0), 1);
        // Floor of one datagram, rounded up to whole datagrams, capped.
        assert_eq!(table_cells(0, 59, 8192), Some(59));
        assert_eq!(table_cells(40, 59, 8192), Some(118));
        assert_eq!(table_cells(1000, 59, 8192), Some(1534));
        assert_eq!(table_cells(1000, 59, 1200), None);
        assert_eq!(table_cells(700, 59, 1060), Some(1060));
        assert_eq!(estimate(7), 14);
        // Bursts grow by half the symbols received, in datagrams.
        assert_eq!(next_burst(0, 59, 8), 59);
        assert_eq!(next_burst(59, 59, 8), 59);
        assert_eq!(next_burst(236, 59, 8), 118);
        assert_eq!(next_burst(10_000, 59, 8), 8 * 59);
    }

    #[test]
    fn assembly_places_in_any_order() {
        let c = |k| IbltCell { count: 1, key_sum: k, hash_sum: k };
        let cells: Vec<IbltCell> = (0..10).map(c).collect();
        let mut a = Assembly::new(10);
        assert_eq!(a.place(6, Cells::from(&cells[6..])), Some(4));
        assert_eq!(a.missing_span(), Some((0, 6)));
        assert_eq!(a.place(9, Cells::from(&cells[..2])), None, "past the end");
        assert_eq!(a.place(usize::MAX, Cells::from(&cells[..2])), None, "overflow");
        assert_eq!(a.place(6, Cells::from(&cells[6..8])), Some(0), "duplicates");
        assert!(!a.complete());
        assert_eq!(a.place(0, Cells::from(&cells[..6])), Some(6));
        assert!(a.complete());
        assert_eq!(a.missing_span(), None);
        assert_eq!(a.cells(), &cells[..]);
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn stream_reorders_within_a_burst() {
        let a: Vec<u64> = (0..200).collect();
        let b: Vec<u64> = (20..230).collect();
        let mut enc = RatelessEncoder::new(b.iter().copied());
        let symbols = enc.next_symbols(400);
        let mut s = Stream::new(a.clone(), 1000, 4);
        // Frames of 10 symbols; deliver each pair swapped.
        let mut fed = Fed::Pending;
        for pair in (0..40).collect::<Vec<u64>>().chunks(2) {
            for &f in pair.iter().rev() {
                let at = (f * 10) as usize;
                fed = s.feed(f * 10, 400, Cells::from(&symbols[at..at + 10]));
                if fed == Fed::Decoded {
                    break;
                }
            }
            if fed == Fed::Decoded {
                break;
            }
        }
        assert_eq!(fed, Fed::Decoded);
        let d = s.difference().unwrap().sorted();
        assert_eq!(d.only_in_a, (0..20).collect::<Vec<u64>>());
        assert_eq!(d.only_in_b, (200..230).collect::<Vec<u64>>());
    }

    #[test]
    fn stream_bounds_its_buffer_and_reports_gaps_and_bursts() {
        let mut s = Stream::new(vec![1, 2, 3], 100, 2);
        let cells = [IbltCell::default(); 5];
        assert_eq!(s.feed(10, 20, Cells::from(&cells[..])), Fed::Pending);
        assert_eq!(s.feed(15, 20, Cells::from(&cells[..])), Fed::Pending);
        assert_eq!(s.feed(5, 20, Cells::from(&cells[..])), Fed::Refused);
        assert_eq!(s.gap(), Some((0, 10)));
        assert_eq!(s.burst_end(), 20);
        assert!(!s.wants_more());
        // A stream of zero cells is not a difference of our set {1, 2, 3}:
        // nothing decodes, and the symbols are used up.
        let mut s = Stream::new(vec![], 100, 2);
        let zero = [IbltCell::default(); 4];
        assert_eq!(s.feed(0, 4, Cells::from(&zero[..])), Fed::Decoded);
        assert_eq!(s.difference(), Some(Difference::default()));
        let mut s = Stream::new(vec![7], 3, 2);
        let junk = [IbltCell { count: 5, key_sum: 1, hash_sum: 2 }; 4];
        assert_eq!(s.feed(0, 4, Cells::from(&junk[..])), Fed::Failed);
    }

    #[test]
    fn a_whole_table_decodes() {
        let a: Vec<u64> = (0..500).collect();
        let b: Vec<u64> = (10..505).collect();
        let theirs = Iblt::from_keys(59, b.iter().copied()).unwrap();
        let d = decode_table(theirs.cells(), a).unwrap().sorted();
        assert_eq!(d.only_in_a, (0..10).collect::<Vec<u64>>());
        assert_eq!(d.only_in_b, (500..505).collect::<Vec<u64>>());
        assert!(decode_table(&theirs.cells()[..2], vec![]).is_err());
    }
}
