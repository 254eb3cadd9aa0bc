//! Invertible Bloom lookup tables (IBLTs) for G4 set reconciliation.
//!
//! Two siblings that each hold a set of 64-bit element ids learn their
//! symmetric difference while exchanging a number of cells proportional to
//! the *difference*, not to the sets. The cell is the one the wire carries in
//! G4 reconciliation frames (docs/PROTOCOL.md § "G4 `0x4734`"):
//! [`IbltCell`] = `[i32 count][u64 key sum][u64 hash sum]`. The wire fixes
//! only that layout; the check hash, the element-id derivation and the cell
//! mappings are defined here, and both peers must agree on them.
//!
//! Two modes, as issue 6 asks:
//!
//! - **Fixed** ([`Iblt`]): a table of [`Iblt::cells_for`]`(d)` cells, rate
//!   [`RATE`] = 1.5 cells per expected difference. Every key lands in
//!   [`HASH_COUNT`] = 3 cells, one in each third of the table. The responder
//!   builds a table of the same size over its own set, subtracts the
//!   initiator's and [`Iblt::decode`]s the result by peeling. Decoding fails
//!   (reported, never a panic) when the true difference is too large for the
//!   table; the G4 driver then flips the peer to rateless.
//! - **Rateless** ([`RatelessEncoder`], [`RatelessDecoder`]): an unbounded
//!   stream of coded symbols (rateless IBLT). Every element maps into symbol
//!   0 and then into a deterministic, geometrically thinning sequence of
//!   later symbols — it lands in symbol `i` with probability about
//!   `1 / (1 + i/2)`, so early symbols mix many elements and late ones few.
//!   The receiver subtracts its own symbols as they arrive and peels
//!   continuously; it is done when symbol 0 has been emptied, after roughly
//!   1.35 symbols per difference for large differences (measured figures in
//!   `perf/gossip-iblt.md`).
//!
//! # Contract
//! - Pure: no I/O, no clocks, no randomness beyond the deterministic hashes
//!   below. The same key set always yields the same cells on every platform
//!   (the rateless mapping uses only correctly rounded IEEE-754 operations).
//! - Cells from the network are untrusted. Decoding never panics and never
//!   allocates beyond the size of its inputs: fixed tables are at most
//!   [`MAX_CELLS`] cells, a rateless decoder stops at the symbol limit it was
//!   built with, and the number of elements peeled out of `n` cells is capped
//!   at `n`. Garbage shows up as [`IbltError::DecodeFailed`] or
//!   [`IbltError::Corrupt`].
//! - Sets are sets: the encoders fold each distinct key once. Inserting the
//!   same key twice into an [`Iblt`] by hand is the caller's mistake (the
//!   table then holds it with count 2 and it will not peel).
//! - Sign convention: a [`Difference`] is always seen from side A, the side
//!   that decodes. For [`Iblt::subtract`] A is `self` and B the table
//!   subtracted; for [`RatelessDecoder`] A is the decoder's local set and B
//!   the encoder's. In cells, +1 is A's side and −1 is B's.
//!
//! # On the wire
//! A G4 reconciliation frame names its session's mode and carries cells
//! `first_cell..first_cell + n` of a sequence ending at `end_cell` (the
//! table size, or the end of a rateless burst), so a table or a stream
//! spans as many datagrams as it needs (59 cells each at the default
//! 1232-byte budget and a 5-byte topic). [`Iblt::to_repr`] builds the frame
//! of a table that fits one datagram; the engine (`super::reconcile`)
//! splits larger ones, and feeds [`RatelessDecoder::push_cells`] each
//! frame's `first_cell`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;

use ricochet_wire::gossip::{Cells, IbltCell, ReconcileKind, ReconcileMode, ReconcileRepr};

/// Cells each key occupies in a fixed-size table (one per third).
pub const HASH_COUNT: usize = 3;
/// Cells per expected difference in a fixed-size table.
pub const RATE: f64 = 1.5;
/// The largest fixed-size table this module builds or accepts (the engine
/// caps tables lower, at [`Config::reconcile_max_cells`](super::Config)).
pub const MAX_CELLS: usize = u16::MAX as usize;
/// A sensible cap on the symbols a [`RatelessDecoder`] accepts (≈ 3 MiB of
/// cells, enough for tens of thousands of differences); pass it to
/// [`RatelessDecoder::new`] unless the caller knows better.
pub const DEFAULT_MAX_SYMBOLS: usize = 1 << 17;

/// Why a table could not be built, combined or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IbltError {
    /// A fixed-size table must hold between [`HASH_COUNT`] and [`MAX_CELLS`]
    /// cells.
    CellCount {
        /// The size asked for or received.
        got: usize,
    },
    /// Two tables of different sizes cannot be subtracted.
    SizeMismatch {
        /// Cells in `self`.
        ours: usize,
        /// Cells in the other table.
        theirs: usize,
    },
    /// Peeling stopped with cells still non-empty: the difference is larger
    /// than the table (or the cells are not an honest table).
    DecodeFailed {
        /// Elements peeled out before peeling stalled.
        recovered: usize,
        /// Cells left non-empty.
        remaining: usize,
    },
    /// The cells cannot come from two honest key sets: an element peeled out
    /// twice, or more elements than cells. Drop the session.
    Corrupt,
    /// A cell that should be pure (reply and request frames) is not.
    NotPure {
        /// Position of the offending cell.
        index: usize,
    },
    /// A rateless symbol arrived out of order: the decoder needs symbol
    /// `expected` next.
    Gap {
        /// The next symbol index the decoder needs.
        expected: u64,
        /// The index that arrived.
        got: u64,
    },
    /// The rateless decoder reached the symbol limit it was built with.
    TooManySymbols {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for IbltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CellCount { got } => {
                write!(f, "IBLT needs {HASH_COUNT}..={MAX_CELLS} cells, got {got}")
            }
            Self::SizeMismatch { ours, theirs } => {
                write!(f, "cannot subtract a {theirs}-cell IBLT from a {ours}-cell one")
            }
            Self::DecodeFailed { recovered, remaining } => write!(
                f,
                "IBLT decode failed: {recovered} elements recovered, {remaining} cells left"
            ),
            Self::Corrupt => f.write_str("IBLT cells are inconsistent"),
            Self::NotPure { index } => write!(f, "cell {index} is not pure"),
            Self::Gap { expected, got } => {
                write!(f, "rateless symbol {got} arrived, symbol {expected} expected")
            }
            Self::TooManySymbols { max } => write!(f, "rateless decoder reached {max} symbols"),
        }
    }
}

impl std::error::Error for IbltError {}

/// The symmetric difference of two key sets, seen from side A (see the
/// module docs for which side is A).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// Keys A holds and B lacks, in the order they were peeled.
    pub only_in_a: Vec<u64>,
    /// Keys B holds and A lacks, in the order they were peeled.
    pub only_in_b: Vec<u64>,
}

impl Difference {
    /// Total number of differing keys.
    pub fn len(&self) -> usize {
        self.only_in_a.len() + self.only_in_b.len()
    }

    /// Whether the two sets were equal.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same difference seen from side B.
    pub fn swapped(self) -> Self {
        Difference { only_in_a: self.only_in_b, only_in_b: self.only_in_a }
    }

    /// Sorts both lists, for comparisons that ignore peeling order.
    pub fn sorted(mut self) -> Self {
        self.only_in_a.sort_unstable();
        self.only_in_b.sort_unstable();
        self
    }

    /// The difference as pure cells for a G4 reply frame: count +1 for each
    /// key in `only_in_a`, −1 for each in `only_in_b`.
    pub fn to_cells(&self) -> Vec<IbltCell> {
        let a = self.only_in_a.iter().map(|&k| pure_cell(k, true));
        a.chain(self.only_in_b.iter().map(|&k| pure_cell(k, false))).collect()
    }

    /// Reads the pure cells of a G4 reply or request frame back into a
    /// difference (+1 cells into `only_in_a`, −1 into `only_in_b`).
    ///
    /// Errors: [`IbltError::NotPure`] for the first cell that is not pure.
    /// Allocation is bounded by the number of cells (at most 65 535 on the
    /// wire).
    pub fn from_cells(cells: Cells<'_>) -> Result<Self, IbltError> {
        let mut out = Difference::default();
        for (index, cell) in cells.iter().enumerate() {
            match pure_key(&cell) {
                Some((key, true)) => out.only_in_a.push(key),
                Some((key, false)) => out.only_in_b.push(key),
                None => return Err(IbltError::NotPure { index }),
            }
        }
        Ok(out)
    }
}

/// The 64-bit element id of a record: the first 8 bytes of its BLAKE3 hash,
/// big-endian. Siblings must derive ids the same way for reconciliation to
/// find anything in common.
pub fn element_id(record: &[u8]) -> u64 {
    let hash = blake3::hash(record);
    let mut id = [0u8; 8];
    id.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(id)
}

/// The check hash of a key, folded into a cell's hash sum; a cell is pure
/// when its count is ±1 and its hash sum is the check hash of its key sum.
pub fn check_hash(key: u64) -> u64 {
    mix64(key ^ CHECK_SEED)
}

/// A pure cell holding `key` alone, with count +1 (`positive`) or −1.
pub fn pure_cell(key: u64, positive: bool) -> IbltCell {
    IbltCell { count: if positive { 1 } else { -1 }, key_sum: key, hash_sum: check_hash(key) }
}

/// The key a pure cell holds and whether its count is +1, or `None` if the
/// cell is not pure.
pub fn pure_key(cell: &IbltCell) -> Option<(u64, bool)> {
    let positive = match cell.count {
        1 => true,
        -1 => false,
        _ => return None,
    };
    (cell.hash_sum == check_hash(cell.key_sum)).then_some((cell.key_sum, positive))
}

/// A fixed-size IBLT over 64-bit keys (the "rate-1.5" mode).
#[derive(Clone, PartialEq, Eq)]
pub struct Iblt {
    cells: Vec<IbltCell>,
}

impl Iblt {
    /// Cells of a table sized for `expected_differences`: `⌈1.5 · d⌉`, at
    /// least [`HASH_COUNT`] and at most [`MAX_CELLS`].
    pub fn cells_for(expected_differences: usize) -> usize {
        // ⌈1.5 d⌉ in integers, so both peers agree exactly.
        let cells = expected_differences.saturating_mul(3).div_ceil(2);
        cells.clamp(HASH_COUNT, MAX_CELLS)
    }

    /// An empty table sized for `expected_differences` (see
    /// [`Iblt::cells_for`]).
    pub fn for_differences(expected_differences: usize) -> Self {
        Iblt { cells: vec![IbltCell::default(); Self::cells_for(expected_differences)] }
    }

    /// An empty table of exactly `cells` cells — the size a peer's table
    /// arrived with, so the two can be subtracted.
    ///
    /// Errors: [`IbltError::CellCount`] outside `HASH_COUNT..=MAX_CELLS`.
    pub fn with_cells(cells: usize) -> Result<Self, IbltError> {
        check_cell_count(cells)?;
        Ok(Iblt { cells: vec![IbltCell::default(); cells] })
    }

    /// A table of `cells` cells holding every distinct key of `keys`.
    ///
    /// Errors as [`Iblt::with_cells`].
    pub fn from_keys(cells: usize, keys: impl IntoIterator<Item = u64>) -> Result<Self, IbltError> {
        let mut table = Self::with_cells(cells)?;
        let mut keys: Vec<u64> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            table.insert(key);
        }
        Ok(table)
    }

    /// Lifts the cells of a received G4 table frame.
    ///
    /// Errors: [`IbltError::CellCount`] for fewer than [`HASH_COUNT`] cells
    /// (the wire already bounds the maximum).
    pub fn from_cells(cells: Cells<'_>) -> Result<Self, IbltError> {
        check_cell_count(cells.len())?;
        Ok(Iblt { cells: cells.iter().collect() })
    }

    /// A G4 frame carrying this whole table (kind [`ReconcileKind::Table`]
    /// for the initiator's table), fixed mode, cells `0..len`. The caller
    /// checks that it fits the datagram.
    pub fn to_repr<'a>(
        &'a self,
        kind: ReconcileKind,
        session_id: u32,
        topic: &'a [u8],
    ) -> ReconcileRepr<'a> {
        ReconcileRepr {
            kind,
            session_id,
            mode: ReconcileMode::Fixed,
            first_cell: 0,
            end_cell: u32::try_from(self.cells.len()).unwrap_or(u32::MAX),
            topic,
            cells: Cells::from(&self.cells[..]),
        }
    }

    /// The cells, in table order (what [`Iblt::to_repr`] sends).
    pub fn cells(&self) -> &[IbltCell] {
        &self.cells
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether every cell is empty (count, key sum and hash sum all zero):
    /// after a subtraction, the two sets were (almost certainly) equal.
    pub fn is_empty(&self) -> bool {
        self.cells.iter().all(is_zero)
    }

    /// Folds `key` into its cells.
    pub fn insert(&mut self, key: u64) {
        self.toggle(key, 1);
    }

    /// Takes `key` out of its cells (the inverse of [`Iblt::insert`]).
    pub fn remove(&mut self, key: u64) {
        self.toggle(key, -1);
    }

    /// `self −= other`, cell by cell. Afterwards the table holds the keys of
    /// A = `self` with count +1 and those of B = `other` with count −1; the
    /// keys both held cancel out.
    ///
    /// Errors: [`IbltError::SizeMismatch`] unless both have the same size.
    pub fn subtract(&mut self, other: &Iblt) -> Result<(), IbltError> {
        if self.cells.len() != other.cells.len() {
            return Err(IbltError::SizeMismatch {
                ours: self.cells.len(),
                theirs: other.cells.len(),
            });
        }
        for (mine, theirs) in self.cells.iter_mut().zip(&other.cells) {
            sub_cell(mine, theirs);
        }
        Ok(())
    }

    /// Peels the table into the keys only A holds (+1) and only B holds
    /// (−1); `self` is left untouched.
    ///
    /// Errors: [`IbltError::DecodeFailed`] when peeling stalls with cells
    /// left — the difference was too large for the table; the G4 driver
    /// answers with flag `0x03` (decode failed). [`IbltError::Corrupt`] when
    /// the cells cannot be an honest subtraction.
    pub fn decode(&self) -> Result<Difference, IbltError> {
        let n = self.cells.len();
        let mut cells = self.cells.clone();
        let mut queue: Vec<usize> = (0..n).filter(|&i| pure_key(&cells[i]).is_some()).collect();
        let mut seen = HashSet::new();
        let mut out = Difference::default();
        while let Some(i) = queue.pop() {
            let Some((key, positive)) = pure_key(&cells[i]) else { continue };
            let indices = cell_indices(key, n);
            // A cell holding one key is one of that key's own cells; anything
            // else is a hash-sum collision in a mixed cell, so skip it.
            if !indices.contains(&i) {
                continue;
            }
            if !seen.insert(key) || seen.len() > n {
                return Err(IbltError::Corrupt);
            }
            let side = if positive { &mut out.only_in_a } else { &mut out.only_in_b };
            side.push(key);
            let delta = if positive { -1 } else { 1 };
            for j in indices {
                toggle_cell(&mut cells[j], key, delta);
                if pure_key(&cells[j]).is_some() {
                    queue.push(j);
                }
            }
        }
        let remaining = cells.iter().filter(|c| !is_zero(c)).count();
        if remaining == 0 {
            Ok(out)
        } else {
            Err(IbltError::DecodeFailed { recovered: out.len(), remaining })
        }
    }

    fn toggle(&mut self, key: u64, delta: i32) {
        let n = self.cells.len();
        for i in cell_indices(key, n) {
            toggle_cell(&mut self.cells[i], key, delta);
        }
    }
}

impl fmt::Debug for Iblt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let non_empty = self.cells.iter().filter(|c| !is_zero(c)).count();
        f.debug_struct("Iblt")
            .field("cells", &self.cells.len())
            .field("non_empty", &non_empty)
            .finish()
    }
}

/// Produces the rateless coded-symbol stream of a key set: symbol 0, 1, 2, …
/// without end. Memory is one heap entry per key.
#[derive(Debug, Clone)]
pub struct RatelessEncoder {
    /// Every key's next symbol index, smallest first.
    heap: BinaryHeap<Reverse<Mapping>>,
    next: u64,
}

impl RatelessEncoder {
    /// An encoder over the distinct keys of `keys`.
    pub fn new(keys: impl IntoIterator<Item = u64>) -> Self {
        let mut keys: Vec<u64> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let heap = keys.into_iter().map(|k| Reverse(Mapping::new(k))).collect();
        RatelessEncoder { heap, next: 0 }
    }

    /// Index of the symbol [`RatelessEncoder::next_symbol`] returns next.
    pub fn symbols_emitted(&self) -> u64 {
        self.next
    }

    /// The next coded symbol.
    pub fn next_symbol(&mut self) -> IbltCell {
        let index = self.next;
        self.next = self.next.saturating_add(1);
        let mut cell = IbltCell::default();
        while let Some(mut top) = self.heap.peek_mut() {
            if top.0.index != index {
                break;
            }
            toggle_cell(&mut cell, top.0.key, 1);
            // Moving the key to a later symbol re-sorts the heap on drop.
            top.0.advance();
        }
        cell
    }

    /// The next `n` coded symbols, e.g. to fill one G4 frame.
    pub fn next_symbols(&mut self, n: usize) -> Vec<IbltCell> {
        (0..n).map(|_| self.next_symbol()).collect()
    }
}

/// Receives a peer's rateless symbols in order, subtracts its own, and peels
/// as they arrive.
///
/// Side A is the decoder's local set, side B the encoder's.
#[derive(Debug, Clone)]
pub struct RatelessDecoder {
    local: RatelessEncoder,
    /// Difference symbols received so far, with every recovered key peeled out.
    cells: Vec<IbltCell>,
    /// Recovered keys' next symbol at or past `cells.len()`, so later symbols
    /// arrive with them already taken out. The flag is the key's side (A).
    recovered: BinaryHeap<Reverse<(Mapping, bool)>>,
    seen: HashSet<u64>,
    out: Difference,
    max_symbols: usize,
    state: DecodeState,
}

/// Where a [`RatelessDecoder`] stands after a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeState {
    /// More symbols are needed.
    Pending,
    /// Symbol 0 has been emptied: the difference is complete.
    Decoded,
    /// The symbols were inconsistent ([`IbltError::Corrupt`]) or the limit
    /// was reached; the decoder refuses further symbols.
    Failed,
}

impl RatelessDecoder {
    /// A decoder for a peer's stream against the local keys `local_keys`,
    /// accepting at most `max_symbols` symbols (see [`DEFAULT_MAX_SYMBOLS`]).
    pub fn new(local_keys: impl IntoIterator<Item = u64>, max_symbols: usize) -> Self {
        RatelessDecoder {
            local: RatelessEncoder::new(local_keys),
            cells: Vec::new(),
            recovered: BinaryHeap::new(),
            seen: HashSet::new(),
            out: Difference::default(),
            max_symbols,
            state: DecodeState::Pending,
        }
    }

    /// Feeds the peer's symbol number `index`. Symbols must arrive in order;
    /// a repeat of one already received is ignored.
    ///
    /// Returns the state after the symbol. Errors: [`IbltError::Gap`] for a
    /// symbol past the next one needed (nothing changes; ask for the missing
    /// ones), [`IbltError::TooManySymbols`] at the limit and
    /// [`IbltError::Corrupt`] for an inconsistent stream — both of which
    /// leave the decoder [`DecodeState::Failed`].
    pub fn push(&mut self, index: u64, cell: IbltCell) -> Result<DecodeState, IbltError> {
        match self.state {
            DecodeState::Decoded => return Ok(DecodeState::Decoded),
            DecodeState::Failed => return Err(IbltError::Corrupt),
            DecodeState::Pending => {}
        }
        let expected = self.cells.len() as u64;
        if index < expected {
            return Ok(self.state);
        }
        if index > expected {
            return Err(IbltError::Gap { expected, got: index });
        }
        if self.cells.len() >= self.max_symbols {
            self.state = DecodeState::Failed;
            return Err(IbltError::TooManySymbols { max: self.max_symbols });
        }
        // Difference symbol: local − remote, minus every key already peeled.
        let mut symbol = self.local.next_symbol();
        sub_cell(&mut symbol, &cell);
        while let Some(mut top) = self.recovered.peek_mut() {
            if top.0.0.index != index {
                break;
            }
            let (key, positive) = (top.0.0.key, top.0.1);
            toggle_cell(&mut symbol, key, if positive { -1 } else { 1 });
            top.0.0.advance();
        }
        self.cells.push(symbol);
        let slot = self.cells.len() - 1;
        if let Err(e) = self.peel_from(slot) {
            self.state = DecodeState::Failed;
            return Err(e);
        }
        if self.cells.first().is_some_and(is_zero) {
            self.state = DecodeState::Decoded;
        }
        Ok(self.state)
    }

    /// Feeds a run of consecutive symbols starting at `first_index`, e.g. the
    /// cells of one G4 frame (its `first_cell`), stopping early once decoded.
    pub fn push_cells(
        &mut self,
        first_index: u64,
        cells: Cells<'_>,
    ) -> Result<DecodeState, IbltError> {
        let mut state = self.state;
        for (offset, cell) in cells.iter().enumerate() {
            state = self.push(first_index.saturating_add(offset as u64), cell)?;
            if state == DecodeState::Decoded {
                break;
            }
        }
        Ok(state)
    }

    /// Where decoding stands.
    pub fn state(&self) -> DecodeState {
        self.state
    }

    /// Whether the difference is complete.
    pub fn is_decoded(&self) -> bool {
        self.state == DecodeState::Decoded
    }

    /// Symbols received so far (the index of the next one needed).
    pub fn symbols_received(&self) -> u64 {
        self.cells.len() as u64
    }

    /// The keys recovered so far; complete once [`RatelessDecoder::is_decoded`].
    pub fn difference(&self) -> &Difference {
        &self.out
    }

    /// Consumes the decoder, returning the difference if it is complete.
    pub fn into_difference(self) -> Option<Difference> {
        self.is_decoded().then_some(self.out)
    }

    /// Peels every pure cell reachable from `start`.
    fn peel_from(&mut self, start: usize) -> Result<(), IbltError> {
        let mut queue = vec![start];
        let received = self.cells.len() as u64;
        while let Some(i) = queue.pop() {
            let Some((key, positive)) = self.cells.get(i).and_then(pure_key) else { continue };
            // The key must map to this very symbol, else the cell only looks
            // pure by a hash-sum collision.
            let mut mapping = Mapping::new(key);
            while mapping.index < i as u64 {
                mapping.advance();
            }
            if mapping.index != i as u64 {
                continue;
            }
            if !self.seen.insert(key) || self.seen.len() > self.cells.len() {
                return Err(IbltError::Corrupt);
            }
            let side = if positive { &mut self.out.only_in_a } else { &mut self.out.only_in_b };
            side.push(key);
            let delta = if positive { -1 } else { 1 };
            let mut mapping = Mapping::new(key);
            while mapping.index < received {
                // `index < received = cells.len()`, so it fits a usize.
                let j = mapping.index as usize;
                if let Some(cell) = self.cells.get_mut(j) {
                    toggle_cell(cell, key, delta);
                    if pure_key(cell).is_some() {
                        queue.push(j);
                    }
                }
                mapping.advance();
            }
            self.recovered.push(Reverse((mapping, positive)));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Seeds of the check hash, the three fixed-table cell hashes and the
/// rateless mapping: arbitrary odd constants, fixed forever.
const CHECK_SEED: u64 = 0x9E6C_63D0_676A_9A99;
const CELL_SEEDS: [u64; HASH_COUNT] =
    [0xA076_1D64_78BD_642F, 0xE703_7ED1_A0B4_28DB, 0x8EBC_6AF0_9C88_C6E3];
const MAPPING_SEED: u64 = 0x5899_65CC_7537_4CC3;

/// A 64-bit finaliser (the splitmix64 output function): a bijection with
/// good avalanche, cheap enough to call per key and per cell.
const fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Cell `j` of a key lies in the `j`-th third of the table, so a key's
/// three cells are always distinct.
fn cell_indices(key: u64, n: usize) -> [usize; HASH_COUNT] {
    let mut out = [0; HASH_COUNT];
    for (j, slot) in out.iter_mut().enumerate() {
        let lo = j * n / HASH_COUNT;
        let hi = (j + 1) * n / HASH_COUNT;
        let width = (hi - lo) as u64;
        // Multiply-high maps the hash onto 0..width without modulo bias.
        let offset = ((u128::from(mix64(key ^ CELL_SEEDS[j])) * u128::from(width)) >> 64) as usize;
        *slot = lo + offset;
    }
    out
}

fn check_cell_count(cells: usize) -> Result<(), IbltError> {
    if (HASH_COUNT..=MAX_CELLS).contains(&cells) {
        Ok(())
    } else {
        Err(IbltError::CellCount { got: cells })
    }
}

fn toggle_cell(cell: &mut IbltCell, key: u64, delta: i32) {
    cell.count = cell.count.wrapping_add(delta);
    cell.key_sum ^= key;
    cell.hash_sum ^= check_hash(key);
}

fn sub_cell(cell: &mut IbltCell, other: &IbltCell) {
    cell.count = cell.count.wrapping_sub(other.count);
    cell.key_sum ^= other.key_sum;
    cell.hash_sum ^= other.hash_sum;
}

fn is_zero(cell: &IbltCell) -> bool {
    cell.count == 0 && cell.key_sum == 0 && cell.hash_sum == 0
}

/// A key's position in the rateless symbol stream: the symbol it maps to
/// now, and the generator state that picks the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mapping {
    /// Field order matters: the heaps order by index first.
    index: u64,
    key: u64,
    state: u64,
}

impl Mapping {
    fn new(key: u64) -> Self {
        Mapping { index: 0, key, state: mix64(key ^ MAPPING_SEED) }
    }

    /// Moves to the next symbol the key maps to. With `u` uniform in
    /// (0, 1], the gap `⌈(i + 1.5)(1/√u − 1)⌉` makes the key land in symbol
    /// `i` with probability `1 / (1 + i/2)`: dense at the start of the
    /// stream, geometrically sparser later.
    fn advance(&mut self) {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let r = mix64(self.state);
        // 53 random bits, shifted into (0, 1] so the square root is finite.
        let u = ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let gap = ((self.index as f64 + 1.5) * (1.0 / u.sqrt() - 1.0)).ceil();
        // A float-to-int cast saturates, so a huge gap cannot wrap.
        self.index = self.index.saturating_add((gap as u64).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic test randomness (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(self.0)
        }
    }

    /// Two sets sharing `common` keys, with `only_a` and `only_b` keys apart.
    fn sets(rng: &mut Rng, common: usize, only_a: usize, only_b: usize) -> (Vec<u64>, Vec<u64>) {
        // A Vec in generation order keeps the split deterministic per seed.
        let (mut seen, mut all) = (HashSet::new(), Vec::new());
        while all.len() < common + only_a + only_b {
            let key = rng.next();
            if seen.insert(key) {
                all.push(key);
            }
        }
        let (shared, rest) = all.split_at(common);
        let (a_only, b_only) = rest.split_at(only_a);
        let a = shared.iter().chain(a_only).copied().collect();
        let b = shared.iter().chain(b_only).copied().collect();
        (a, b)
    }

    fn expected(a: &[u64], b: &[u64]) -> Difference {
        let (sa, sb): (HashSet<u64>, HashSet<u64>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        Difference {
            only_in_a: sa.difference(&sb).copied().collect(),
            only_in_b: sb.difference(&sa).copied().collect(),
        }
        .sorted()
    }

    fn fixed_round(a: &[u64], b: &[u64], cells: usize) -> Result<Difference, IbltError> {
        let mut ta = Iblt::from_keys(cells, a.iter().copied()).unwrap();
        let tb = Iblt::from_keys(cells, b.iter().copied()).unwrap();
        ta.subtract(&tb).unwrap();
        ta.decode().map(Difference::sorted)
    }

    /// Symbols a rateless decoder over `a` needs to decode `b`'s stream.
    fn rateless_round(a: &[u64], b: &[u64]) -> (u64, Difference) {
        let mut enc = RatelessEncoder::new(b.iter().copied());
        let mut dec = RatelessDecoder::new(a.iter().copied(), DEFAULT_MAX_SYMBOLS);
        loop {
            let index = enc.symbols_emitted();
            if dec.push(index, enc.next_symbol()).unwrap() == DecodeState::Decoded {
                let n = dec.symbols_received();
                return (n, dec.into_difference().unwrap().sorted());
            }
        }
    }

    #[test]
    fn cells_for_is_rate_one_and_a_half() {
        assert_eq!(Iblt::cells_for(0), 3);
        assert_eq!(Iblt::cells_for(1), 3);
        assert_eq!(Iblt::cells_for(10), 15);
        assert_eq!(Iblt::cells_for(11), 17);
        assert_eq!(Iblt::cells_for(1000), 1500);
        assert_eq!(Iblt::cells_for(usize::MAX), MAX_CELLS);
        assert_eq!(Iblt::with_cells(2), Err(IbltError::CellCount { got: 2 }));
        assert_eq!(
            Iblt::with_cells(MAX_CELLS + 1).unwrap_err(),
            IbltError::CellCount { got: MAX_CELLS + 1 }
        );
    }

    #[test]
    fn cell_indices_are_distinct_and_in_range() {
        let mut rng = Rng(1);
        for n in [3, 4, 5, 7, 15, 100, MAX_CELLS] {
            for _ in 0..200 {
                let idx = cell_indices(rng.next(), n);
                assert!(idx.iter().all(|&i| i < n), "{idx:?} / {n}");
                assert!(idx[0] < idx[1] && idx[1] < idx[2], "{idx:?} / {n}");
            }
        }
    }

    #[test]
    fn equal_sets_subtract_to_empty() {
        let mut rng = Rng(2);
        let (a, _) = sets(&mut rng, 500, 0, 0);
        let mut ta = Iblt::from_keys(30, a.iter().copied()).unwrap();
        let tb = Iblt::from_keys(30, a.iter().rev().copied()).unwrap();
        assert_eq!(ta, tb, "insertion order does not matter");
        ta.subtract(&tb).unwrap();
        assert!(ta.is_empty());
        assert_eq!(ta.decode(), Ok(Difference::default()));
    }

    #[test]
    fn insert_then_remove_is_identity() {
        let mut t = Iblt::with_cells(9).unwrap();
        t.insert(42);
        assert!(!t.is_empty());
        t.remove(42);
        assert!(t.is_empty());
    }

    #[test]
    fn fixed_decodes_a_small_difference() {
        let mut rng = Rng(3);
        let (a, b) = sets(&mut rng, 1000, 12, 8);
        let got = fixed_round(&a, &b, Iblt::cells_for(40)).unwrap();
        assert_eq!(got, expected(&a, &b));
    }

    #[test]
    fn fixed_reports_failure_when_overloaded() {
        let mut rng = Rng(4);
        let (a, b) = sets(&mut rng, 100, 60, 60);
        let err = fixed_round(&a, &b, Iblt::cells_for(10)).unwrap_err();
        assert!(
            matches!(err, IbltError::DecodeFailed { remaining, .. } if remaining > 0),
            "{err:?}"
        );
    }

    #[test]
    fn subtract_refuses_a_size_mismatch() {
        let mut a = Iblt::with_cells(6).unwrap();
        let b = Iblt::with_cells(9).unwrap();
        assert_eq!(a.subtract(&b), Err(IbltError::SizeMismatch { ours: 6, theirs: 9 }));
    }

    #[test]
    fn table_round_trips_through_a_g4_frame() {
        let mut rng = Rng(5);
        let (a, b) = sets(&mut rng, 50, 3, 2);
        let ta = Iblt::from_keys(Iblt::cells_for(20), a.iter().copied()).unwrap();
        let repr = ta.to_repr(ReconcileKind::Table, 7, b"gaps");
        let mut buf = vec![0; repr.buffer_len()];
        let len = repr.emit(&mut buf).unwrap();
        let parsed = ReconcileRepr::parse(&buf[..len]).unwrap();
        assert_eq!(
            (parsed.kind, parsed.session_id, parsed.topic),
            (ReconcileKind::Table, 7, &b"gaps"[..])
        );
        let received = Iblt::from_cells(parsed.cells).unwrap();
        assert_eq!(received, ta);

        // The responder: own table of the same size, minus the initiator's.
        let mut tb = Iblt::from_keys(received.len(), b.iter().copied()).unwrap();
        tb.subtract(&received).unwrap();
        let diff = tb.decode().unwrap();
        assert_eq!(diff.clone().swapped().sorted(), expected(&a, &b));

        // Reply frame: the difference as pure cells.
        let reply_cells = diff.to_cells();
        let reply = ReconcileRepr {
            kind: ReconcileKind::Reply,
            session_id: 7,
            mode: ReconcileMode::Fixed,
            first_cell: 0,
            end_cell: reply_cells.len() as u32,
            topic: b"gaps",
            cells: Cells::from(&reply_cells[..]),
        };
        let mut buf = vec![0; reply.buffer_len()];
        reply.emit(&mut buf).unwrap();
        let parsed = ReconcileRepr::parse(&buf).unwrap();
        assert_eq!(Difference::from_cells(parsed.cells), Ok(diff));
    }

    #[test]
    fn too_few_wire_cells_are_refused() {
        let cells = [IbltCell::default(); 2];
        assert_eq!(Iblt::from_cells(Cells::from(&cells[..])), Err(IbltError::CellCount { got: 2 }));
    }

    #[test]
    fn reply_cells_must_be_pure() {
        let cells = [pure_cell(9, true), IbltCell { count: 1, key_sum: 9, hash_sum: 0 }];
        assert_eq!(
            Difference::from_cells(Cells::from(&cells[..])),
            Err(IbltError::NotPure { index: 1 })
        );
        assert_eq!(pure_key(&pure_cell(5, false)), Some((5, false)));
        assert_eq!(pure_key(&IbltCell { count: 2, ..pure_cell(5, true) }), None);
    }

    #[test]
    fn a_key_peeled_twice_is_corrupt() {
        // Key 77 pure in one of its cells and absent from the other two:
        // peeling it leaves it pure with the opposite sign, which no
        // subtraction of two sets can produce.
        let mut t = Iblt::with_cells(6).unwrap();
        let [i0, _, _] = cell_indices(77, 6);
        t.cells[i0] = pure_cell(77, true);
        assert_eq!(t.decode(), Err(IbltError::Corrupt));
    }

    #[test]
    fn element_ids_are_blake3_prefixes() {
        let id = element_id(b"");
        // BLAKE3("") = af1349b9f5f9a1a6…
        assert_eq!(id, 0xaf13_49b9_f5f9_a1a6);
        assert_ne!(element_id(b"a"), element_id(b"b"));
    }

    #[test]
    fn rateless_mapping_thins_geometrically() {
        // P(key maps to symbol i) ≈ 1 / (1 + i/2).
        let mut rng = Rng(6);
        let trials = 20_000;
        let mut hits = [0u32; 4];
        let probes = [1u64, 10, 100, 1000];
        for _ in 0..trials {
            let mut m = Mapping::new(rng.next());
            for (slot, &p) in probes.iter().enumerate() {
                while m.index < p {
                    m.advance();
                }
                if m.index == p {
                    hits[slot] += 1;
                }
            }
        }
        for (slot, &p) in probes.iter().enumerate() {
            let got = f64::from(hits[slot]) / f64::from(trials);
            let want = 1.0 / (1.0 + p as f64 / 2.0);
            assert!((got - want).abs() < 0.25 * want + 0.002, "i={p}: {got} vs {want}");
        }
    }

    #[test]
    fn rateless_every_key_is_in_symbol_zero() {
        let mut enc = RatelessEncoder::new([1, 2, 3, 3]);
        let first = enc.next_symbol();
        assert_eq!(first.count, 3, "duplicates fold once");
        assert_eq!(first.key_sum, 1 ^ 2 ^ 3);
    }

    #[test]
    fn rateless_equal_sets_decode_after_one_symbol() {
        let mut rng = Rng(7);
        let (a, _) = sets(&mut rng, 300, 0, 0);
        let (n, diff) = rateless_round(&a, &a);
        assert_eq!((n, diff), (1, Difference::default()));
    }

    #[test]
    fn rateless_decodes_both_sides() {
        let mut rng = Rng(8);
        for (common, only_a, only_b) in [(0, 5, 0), (0, 0, 5), (100, 1, 1), (1000, 40, 60)] {
            let (a, b) = sets(&mut rng, common, only_a, only_b);
            let (n, diff) = rateless_round(&a, &b);
            assert_eq!(diff, expected(&a, &b));
            assert!(n as usize <= 4 * (only_a + only_b) + 4, "{n} symbols for {}", only_a + only_b);
        }
    }

    #[test]
    fn rateless_gap_duplicate_and_limit() {
        let mut enc = RatelessEncoder::new([10, 20, 30]);
        let mut dec = RatelessDecoder::new([10], 2);
        let s0 = enc.next_symbol();
        let s1 = enc.next_symbol();
        assert_eq!(dec.push(1, s1), Err(IbltError::Gap { expected: 0, got: 1 }));
        assert_eq!(dec.symbols_received(), 0);
        let st = dec.push(0, s0).unwrap();
        if st == DecodeState::Pending {
            assert_eq!(dec.push(0, s0), Ok(DecodeState::Pending), "a repeat is ignored");
            assert_eq!(dec.symbols_received(), 1);
            let st = dec.push(1, s1).unwrap();
            if st == DecodeState::Pending {
                assert_eq!(
                    dec.push(2, enc.next_symbol()),
                    Err(IbltError::TooManySymbols { max: 2 })
                );
                assert_eq!(dec.state(), DecodeState::Failed);
                assert_eq!(dec.push(3, IbltCell::default()), Err(IbltError::Corrupt));
            }
        }
    }

    #[test]
    fn rateless_frames_carry_symbols() {
        let mut rng = Rng(9);
        let (a, b) = sets(&mut rng, 200, 30, 30);
        let mut enc = RatelessEncoder::new(b.iter().copied());
        let mut dec = RatelessDecoder::new(a.iter().copied(), DEFAULT_MAX_SYMBOLS);
        let mut state = DecodeState::Pending;
        while state == DecodeState::Pending {
            let first = enc.symbols_emitted();
            let cells = enc.next_symbols(50);
            let repr = ReconcileRepr {
                kind: ReconcileKind::Table,
                session_id: 1,
                mode: ReconcileMode::Rateless,
                first_cell: first as u32,
                end_cell: first as u32 + 50,
                topic: b"",
                cells: Cells::from(&cells[..]),
            };
            let mut buf = vec![0; repr.buffer_len()];
            repr.emit(&mut buf).unwrap();
            let parsed = ReconcileRepr::parse(&buf).unwrap();
            state = dec.push_cells(u64::from(parsed.first_cell), parsed.cells).unwrap();
        }
        assert_eq!(dec.into_difference().unwrap().sorted(), expected(&a, &b));
    }

    /// Symbols each of `trials` rateless rounds needed for `d` differences.
    fn rateless_counts(d: usize, trials: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng(seed);
        (0..trials)
            .map(|_| {
                let (a, b) = sets(&mut rng, 1000, d / 2, d - d / 2);
                let (n, diff) = rateless_round(&a, &b);
                assert_eq!(diff.len(), d);
                n
            })
            .collect()
    }

    /// Average rateless symbols per difference over `trials` runs.
    fn rateless_overhead(d: usize, trials: usize, seed: u64) -> f64 {
        let counts = rateless_counts(d, trials, seed);
        counts.iter().sum::<u64>() as f64 / (trials * d) as f64
    }

    /// Fraction of rate-1.5 tables that decode a difference of `d`.
    fn fixed_success(d: usize, trials: usize, seed: u64) -> f64 {
        fixed_success_with(d, Iblt::cells_for(d), trials, seed)
    }

    /// Fraction of `cells`-cell tables that decode a difference of `d`.
    fn fixed_success_with(d: usize, cells: usize, trials: usize, seed: u64) -> f64 {
        let mut rng = Rng(seed);
        let mut ok = 0usize;
        for _ in 0..trials {
            let (a, b) = sets(&mut rng, 1000, d / 2, d - d / 2);
            match fixed_round(&a, &b, cells) {
                Ok(diff) => {
                    assert_eq!(diff, expected(&a, &b));
                    ok += 1;
                }
                Err(IbltError::DecodeFailed { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        ok as f64 / trials as f64
    }

    #[test]
    fn rateless_overhead_is_near_the_literature() {
        // Quick version of `report_iblt_figures`; bounds are loose on purpose.
        let o100 = rateless_overhead(100, 20, 10);
        assert!((1.1..1.9).contains(&o100), "d=100: {o100}");
        let o1000 = rateless_overhead(1000, 3, 11);
        assert!((1.2..1.6).contains(&o1000), "d=1000: {o1000}");
    }

    #[test]
    fn fixed_rate_decodes_large_differences() {
        let s = fixed_success(1000, 20, 12);
        assert!(s >= 0.9, "d=1000 success {s}");
    }

    /// Prints the figures recorded in perf/gossip-iblt.md, run as
    /// `cargo test -p ricochet-proto --release --lib report_iblt_figures -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: run by hand, writes figures for perf/gossip-iblt.md"]
    fn report_iblt_figures() {
        println!("| d | trials | symbols per difference, mean | median | 95th pct | max |");
        println!("|---|---|---|---|---|---|");
        for (d, trials) in [(1, 2000), (10, 1000), (100, 300), (1000, 100)] {
            let mut counts = rateless_counts(d, trials, 100 + d as u64);
            counts.sort_unstable();
            let per = |n: u64| n as f64 / d as f64;
            let mean = counts.iter().sum::<u64>() as f64 / (trials * d) as f64;
            let (p50, p95) = (counts[trials / 2], counts[trials * 95 / 100]);
            let max = counts[trials - 1];
            println!(
                "| {d} | {trials} | {mean:.3} | {:.2} | {:.2} | {:.2} |",
                per(p50),
                per(p95),
                per(max)
            );
        }
        println!();
        println!("| d | cells | trials | rate-1.5 decode success |");
        println!("|---|---|---|---|");
        for (d, trials) in
            [(1, 2000), (5, 2000), (10, 2000), (20, 2000), (50, 1000), (100, 1000), (1000, 300)]
        {
            let s = fixed_success(d, trials, 200 + d as u64);
            println!("| {d} | {} | {trials} | {:.1} % |", Iblt::cells_for(d), s * 100.0);
        }
        println!();
        println!("| d | cells | trials | decode success |");
        println!("|---|---|---|---|");
        // A floor of 60 cells: about what one default datagram carries (59
        // cells with a 5-byte topic; the engine floors at exactly one datagram).
        for d in [5, 10, 20, 40] {
            let cells = Iblt::cells_for(d).max(60);
            let s = fixed_success_with(d, cells, 2000, 300 + d as u64);
            println!("| {d} | {cells} | 2000 | {:.1} % |", s * 100.0);
        }
    }

    fn arb_cell() -> impl Strategy<Value = IbltCell> {
        (any::<i32>(), any::<u64>(), any::<u64>(), 0u8..4).prop_map(|(count, key, hash, kind)| {
            match kind {
                // Mostly plausible cells, so peeling gets somewhere.
                0 => pure_cell(key, count >= 0),
                1 => IbltCell::default(),
                _ => IbltCell { count, key_sum: key, hash_sum: hash },
            }
        })
    }

    proptest! {
        #[test]
        fn prop_fixed_recovers_what_fits(
            seed in any::<u64>(),
            common in 0usize..200,
            only_a in 0usize..20,
            only_b in 0usize..20,
        ) {
            let mut rng = Rng(seed);
            let (a, b) = sets(&mut rng, common, only_a, only_b);
            // A generous table always decodes; whatever decodes is exact.
            let cells = Iblt::cells_for(4 * (only_a + only_b) + 8);
            match fixed_round(&a, &b, cells) {
                Ok(diff) => prop_assert_eq!(diff, expected(&a, &b)),
                Err(e) => prop_assert!(matches!(e, IbltError::DecodeFailed { .. }), "{e}"),
            }
            let small = fixed_round(&a, &b, Iblt::cells_for(only_a + only_b));
            if let Ok(diff) = small {
                prop_assert_eq!(diff, expected(&a, &b));
            }
        }

        #[test]
        fn prop_rateless_is_exact(
            seed in any::<u64>(),
            common in 0usize..200,
            only_a in 0usize..30,
            only_b in 0usize..30,
        ) {
            let mut rng = Rng(seed);
            let (a, b) = sets(&mut rng, common, only_a, only_b);
            let (_, diff) = rateless_round(&a, &b);
            prop_assert_eq!(diff, expected(&a, &b));
        }

        #[test]
        fn prop_garbage_tables_never_panic(cells in proptest::collection::vec(arb_cell(), 0..200)) {
            if let Ok(t) = Iblt::from_cells(Cells::from(&cells[..]))
                && let Ok(diff) = t.decode() {
                    prop_assert!(diff.len() <= cells.len());
                }
            let _ = Difference::from_cells(Cells::from(&cells[..]));
        }

        #[test]
        fn prop_garbage_streams_never_panic(
            local in proptest::collection::vec(any::<u64>(), 0..50),
            cells in proptest::collection::vec(arb_cell(), 0..200),
        ) {
            let mut dec = RatelessDecoder::new(local, 150);
            for (i, cell) in cells.into_iter().enumerate() {
                match dec.push(i as u64, cell) {
                    Ok(DecodeState::Decoded) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            prop_assert!(dec.difference().len() <= dec.symbols_received() as usize);
        }

        #[test]
        fn prop_pure_cells_round_trip(key in any::<u64>(), positive in any::<bool>()) {
            prop_assert_eq!(pure_key(&pure_cell(key, positive)), Some((key, positive)));
        }
    }
}
