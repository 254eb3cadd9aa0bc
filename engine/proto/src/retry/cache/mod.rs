//! One shard of the retry cache: per-flow indexes over per-class
//! append-only logs of whole datagrams.
//!
//! # Model
//! Every stamped frame belongs to a flow (its HashKey) and has a SeqNum the
//! proxy counts up from 1. A frame is stored once, as the whole datagram
//! exactly as received (so a retransmit is byte-identical, trailing bytes
//! included), by copying it into the open segment of its TTL class's log
//! (`segment.rs`): segments of up to 64 KiB that are frozen into [`Bytes`]
//! once full, so a hit is a slice of its segment (a reference count, no
//! copy). A flow's frames are found through its index (`flow.rs`): one 12-byte
//! slot per SeqNum from its lowest held to its highest, holding the record's
//! address, so an in-order append is a `push_back` and a lookup one
//! subtraction. A range NACK reads consecutive slots of one index after a
//! single hash lookup ([`Cache::view`], [`FlowView::range`]).
//!
//! # Invariants
//! - **Nothing expired is ever returned.** A frame's deadline is
//!   `insert time + TTL of its class` at 1 ms resolution (a frame may expire
//!   up to 1 ms early, never late); lookups compare against it, so expiry
//!   does not depend on [`Cache::expire`] having run.
//! - **Per flow, at most `max_per_flow` SeqNums are held**: the index spans
//!   at most the newest `max_per_flow` SeqNums below and including the
//!   highest one seen (holes included), so a flow's index is bounded even
//!   when frames were lost on the way in. A frame older than that window is
//!   refused ([`Insert::Stale`]); frames pushed out of it are evicted
//!   (`per_flow`). Epoch detection (below) comes first, so with the default
//!   settings a fabric frame is only ever Stale if `regression_threshold` is
//!   raised to `max_per_flow` or beyond; recovered frames can be. (Values of
//!   `max_per_flow` above 2²³ act as 2²³, and of `max_flows` above 2²⁴ − 1
//!   as 2²⁴ − 1: a record names its flow and SeqNum in 24 bits each.)
//! - **Global bounds**: at most `max_flows` flows (the least recently
//!   appended-to flow is evicted whole), at most `max_keys` frames and at
//!   most `max_bytes` of charge. The charge is the memory the shard's frame
//!   structures really hold, whatever the SeqNum pattern: every allocated
//!   segment's capacity (records, their headers, records already dead and
//!   the open segment's unwritten tail alike), every segment descriptor
//!   allocated ([`SEGMENT_BYTES`]), every index slot allocated, held or not
//!   ([`SLOT_BYTES`]: holes between held SeqNums and the `VecDeque`'s spare
//!   capacity alike), and each epoch candidate (below) its frames plus
//!   [`CANDIDATE_OVERHEAD`]. A flow holding SeqNums 1 and 65 536 is charged
//!   its 65 536 slots (768 KiB), so sparse flows are evicted by the ordinary
//!   byte-bound eviction, oldest first, as dense ones are. The key and byte
//!   bounds evict the globally oldest frame or candidate (insertion order)
//!   first; a segment's memory is given back when its last live frame goes,
//!   so under the byte budget eviction frees whole segments, oldest first.
//!   A log whose dead records hold more than its live ones plus four
//!   segments is compacted (its live records copied, in order, into fresh
//!   segments), so dead frames pinned by a long-lived neighbour cannot
//!   accumulate either.
//! - **Memory**: the shard's heap is at most `max_bytes` plus a constant
//!   that no SeqNum pattern changes: per-flow state, at most `max_flows` ×
//!   [`FLOW_STATE_BYTES`] (hash index, slab record and LRU links; 16 MB at
//!   the default 100 000 flows), one frozen segment's shared header each (a
//!   few dozen bytes per up to 64 KiB) and the candidate FIFO. Frames handed
//!   out by a lookup keep their segment alive until dropped, which the
//!   caller does once they are sent. Before index slots were charged, 1 500
//!   flows of two frames each at SeqNums 1 and 65 536 held 3.9 GB of slots
//!   against a 64 MiB budget.
//! - **Epochs**: a restarted proxy reuses its HashKey and counts from 1
//!   again. Three signs *suggest* a new epoch: a frame whose (HashKey,
//!   SeqNum) is held with other bytes (the same key cannot name two frames
//!   within one epoch); a SeqNum below every frame the flow holds and more
//!   than `regression_threshold` below its highest (a hole between held
//!   frames is a late frame, even when a forged frame far ahead raised the
//!   highest); and a SeqNum more than the larger of `max_per_flow` and
//!   `regression_threshold` above the highest (a jump that would push every
//!   held frame out of the window, which drops the flow as surely as a
//!   reset). Each can be forged with one datagram, so none resets the flow
//!   alone: the frame is held aside as *evidence* in the flow's candidate
//!   epoch (`epoch.rs`), never served and never replacing a held frame, while
//!   the old frames keep being served. The reset happens only when
//!   [`EPOCH_EVIDENCE`] (3) distinct SeqNums have arrived as candidates,
//!   consistent with one restarted proxy (all within the smaller of
//!   `regression_threshold` and `max_per_flow` − 1 of each other, so one
//!   window holds them all) and without the old epoch continuing in
//!   between: a fabric frame above the flow's highest SeqNum that is not
//!   itself evidence discards the candidate. (One exception, so that a
//!   proxy that restarts after fewer than [`EPOCH_EVIDENCE`] frames is still
//!   detected: while the flow holds fewer frames than that and the
//!   candidate has caught up with its head, the candidate's next SeqNum is
//!   evidence too. Only for such flows: in a larger one, forged evidence at
//!   the head would make the next genuine frame count.) On
//!   confirmation the flow's old frames are dropped, so a pre-restart frame
//!   is never served for a post-restart SeqNum, and the candidates become
//!   the flow's frames, stored as of the confirmation (so one may outlive
//!   its arrival by its TTL plus at most [`EPOCH_EVIDENCE_TTL`]); only then
//!   does [`Insert::Inserted`] report `new_epoch`. A candidate ages out
//!   [`EPOCH_EVIDENCE_TTL`] after its first frame, counts against the byte
//!   budget and is evicted like a frame of its age. Plain reordering is no
//!   evidence: one flow spans every shard group, so frames reach their
//!   owning core out of order by design, which is why the listener's "≤ 100
//!   while the highest is > 100" rule is not used here.
//!   [`Cache::invalidate`] drops a flow at once on request. Frames from the
//!   recovery path ([`Origin::Recovered`]) are late by nature: they are never
//!   evidence and never discard a candidate.
//! - **Duplicates** of a held (HashKey, SeqNum) keep the first copy.
//! - `entries`, `bytes` and `flows` in [`CacheStats`] are exact at all times.
//!
//! # Bookkeeping and cost
//! A frame costs, beyond its bytes, its 9-byte record header and its
//! 12-byte index slot (which also holds its length, group and insert time,
//! so a lookup never touches the frame's memory), plus its share of its
//! segment's descriptor and of its index's spare capacity (indexes grow by a
//! quarter, not double; a sealed segment is shrunk to its records): about 26
//! bytes allocated, 28–31 resident, where one `Bytes` per frame alone would
//! be 32 plus its allocation's header. The
//! logs double as the expiry FIFOs: within a class every frame has the same
//! TTL and the insert clock never runs backwards, so each log is in deadline
//! order; expiry reads fronts, O(1) per frame, and the globally oldest frame
//! is the oldest of six fronts. A record names its flow by slab index and
//! SeqNum, and is live exactly while that flow's slot holds its address, so
//! frames dropped wholesale (epoch, invalidation, eviction) need no visit of
//! their records: those become dead records, skipped when they reach the
//! front and freed with their segment.
//!
//! A flow's index keeps its slot capacity in step with the charge: every
//! operation that can change `VecDeque::capacity` (append, trim, shrink,
//! clear) re-reads it, one comparison on the hot path, so the charge is the
//! allocation, not an estimate. A candidate epoch is a boxed array of at
//! most [`EPOCH_EVIDENCE`] − 1 frames hung off the flow, with one entry in a
//! seventh FIFO ordered by age (a fixed TTL, so also in deadline order) that
//! ages and evicts them the way the class logs do for frames.

mod epoch;
mod flow;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::frame::{Extra, Frame, FrameKey, FrameVersion};

use super::SeededState;
use super::siblings::Holding;
use epoch::CEntry;
use flow::{Flow, NIL};
use segment::{Addr, ClassLog, HEADER, Header, SEGMENT_MAX, Slot};

/// Bytes one segment descriptor costs in its log's table: a segment's
/// frozen [`Bytes`], its first record's time, its capacity and live count.
pub const SEGMENT_BYTES: usize = size_of::<segment::Segment>();

/// Bytes of bookkeeping the byte budget charges a frame beyond its datagram
/// when it is alone in its segment, as under a small budget: its record
/// header (16), its index slot ([`SLOT_BYTES`]) and a segment descriptor
/// ([`SEGMENT_BYTES`]). A frame whose length plus this exceeds the budget is
/// refused ([`Insert::TooLarge`]); any other fits alone. In a full segment
/// the descriptor is shared by hundreds of frames, so the real cost is the
/// header and the slot plus a fraction of a byte (see the module docs);
/// checked against `size_of` in the tests.
pub const OVERHEAD_PER_ENTRY: usize = HEADER + SLOT_BYTES + SEGMENT_BYTES;

/// Bytes one index slot costs, held or not: a flow's index is charged
/// `capacity × SLOT_BYTES` in all.
pub const SLOT_BYTES: usize = size_of::<Slot>();

/// Distinct SeqNums of evidence that confirm a flow's new epoch (a proxy
/// restart); see the module docs. Three, so that one forged datagram, or
/// two, never drops a flow: an attacker must forge a consistent run, and
/// any frame of the old epoch arriving meanwhile discards it.
pub const EPOCH_EVIDENCE: usize = 3;

/// How long a candidate epoch waits for its [`EPOCH_EVIDENCE`] frames,
/// from its first one. A restarting proxy sends its first frames within
/// milliseconds; this only has to outlast a quiet flow's gaps.
pub const EPOCH_EVIDENCE_TTL: Duration = Duration::from_secs(10);

/// Bytes of bookkeeping one candidate epoch costs beyond its frames' bytes:
/// its boxed record and its entry in the candidate FIFO. Checked against
/// `size_of` in the tests.
pub const CANDIDATE_OVERHEAD: usize = 152;

/// Upper bound of the memory one flow's state costs whatever it holds: its
/// slab record, its index entry (with the table's load factor and
/// power-of-two growth) and its free-list slot. `max_flows` times this is
/// the constant part of the shard's memory; checked in the tests.
pub const FLOW_STATE_BYTES: usize = 160;

/// Queue entries [`Cache::expire`] examines per call, so one call's work is
/// bounded however far behind the sweep is.
pub const EXPIRE_BUDGET: usize = 4096;

/// Expired fronts an insert pops from its own class log on the way in, so
/// the FIFOs keep pace with arrivals even if the caller rarely sweeps.
const INSERT_SWEEP: usize = 2;

/// Cache TTL per frame class (BRC-124 family). Every TTL must be > 0; the
/// config layer refuses zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    /// Transactions (0x02) and bundles (0x08): `CACHE_TTL_TX`, 60 s.
    pub tx: Duration,
    /// Block control (0x04): `CACHE_TTL_BLOCK`, 10 min.
    pub block: Duration,
    /// Subtree data (0x05): `CACHE_TTL_SUBTREE`, 5 min.
    pub subtree: Duration,
    /// Anchor transactions (0x06): `CACHE_TTL_ANCHOR`, 2 min.
    pub anchor: Duration,
    /// BEEF objects (0x09): `CACHE_TTL_BEEF`, 60 s.
    pub beef: Duration,
    /// Fragments whose original frame version is not a cacheable class:
    /// `CACHE_TTL`, 60 s.
    pub fallback: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Ttls {
            tx: Duration::from_secs(60),
            block: Duration::from_secs(600),
            subtree: Duration::from_secs(300),
            anchor: Duration::from_secs(120),
            beef: Duration::from_secs(60),
            fallback: Duration::from_secs(60),
        }
    }
}

impl Ttls {
    /// The TTL of a class.
    pub const fn get(&self, class: TtlClass) -> Duration {
        match class {
            TtlClass::Tx => self.tx,
            TtlClass::Block => self.block,
            TtlClass::Subtree => self.subtree,
            TtlClass::Anchor => self.anchor,
            TtlClass::Beef => self.beef,
            TtlClass::Fallback => self.fallback,
        }
    }
}

/// Which TTL a cached frame gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TtlClass {
    /// Transactions and bundles.
    Tx = 0,
    /// Block control.
    Block = 1,
    /// Subtree data.
    Subtree = 2,
    /// Anchor transactions.
    Anchor = 3,
    /// BEEF objects.
    Beef = 4,
    /// Fragments of an original frame of no cacheable class.
    Fallback = 5,
}

const CLASSES: usize = 6;

impl TtlClass {
    /// Every class, in discriminant order.
    pub const ALL: [TtlClass; CLASSES] = [
        TtlClass::Tx,
        TtlClass::Block,
        TtlClass::Subtree,
        TtlClass::Anchor,
        TtlClass::Beef,
        TtlClass::Fallback,
    ];

    /// The class of a checked frame, `None` for legacy frames (never cached).
    /// A bundle is a batch of transactions and takes the tx TTL; a fragment
    /// takes its original frame's class (BRC-130 OrigFrameVer, 0x00 meaning
    /// tx), or [`TtlClass::Fallback`] when that is not a cacheable class. The
    /// reference uses the tx TTL there; both default to 60 s.
    pub fn of(frame: &Frame<'_>) -> Option<TtlClass> {
        match frame.extra() {
            Extra::Fragment(f) => Some(
                f.orig_frame_version().and_then(Self::of_version).unwrap_or(TtlClass::Fallback),
            ),
            _ => Self::of_version(frame.version()),
        }
    }

    const fn of_version(v: FrameVersion) -> Option<TtlClass> {
        match v {
            FrameVersion::Tx | FrameVersion::Bundle => Some(TtlClass::Tx),
            FrameVersion::Block => Some(TtlClass::Block),
            FrameVersion::Subtree => Some(TtlClass::Subtree),
            FrameVersion::Anchor => Some(TtlClass::Anchor),
            FrameVersion::Beef => Some(TtlClass::Beef),
            FrameVersion::Legacy | FrameVersion::Fragment => None,
        }
    }

    /// A lower-case name, for metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            TtlClass::Tx => "tx",
            TtlClass::Block => "block",
            TtlClass::Subtree => "subtree",
            TtlClass::Anchor => "anchor",
            TtlClass::Beef => "beef",
            TtlClass::Fallback => "fallback",
        }
    }
}

/// Bounds and policy of one cache shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// TTL per frame class.
    pub ttls: Ttls,
    /// SeqNums held per flow (the newest ones); 65 536. Values below 1 act
    /// as 1.
    pub max_per_flow: usize,
    /// Flows held; the least recently appended-to is evicted; 100 000.
    /// Values below 1 act as 1.
    pub max_flows: usize,
    /// Frames held (`CACHE_MAX_KEYS`); 0 = unlimited (the reference default).
    pub max_keys: usize,
    /// Byte budget, charging the memory the frames' segments, indexes and
    /// candidates hold (see the module docs); 0 = unlimited. The daemon sets
    /// one.
    pub max_bytes: usize,
    /// A SeqNum more than this far below the flow's highest is evidence of
    /// a new epoch, and a candidate epoch's SeqNums lie within this of each
    /// other; 1024.
    pub regression_threshold: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            ttls: Ttls::default(),
            max_per_flow: 65_536,
            max_flows: 100_000,
            max_keys: 0,
            max_bytes: 0,
            regression_threshold: 1024,
        }
    }
}

/// Counters and gauges of one shard. `entries`, `bytes`, `flows`,
/// `charged_bytes` and `max_bytes` are gauges (`ricochet_cache_entries`,
/// …); every other field is a counter exported as
/// `ricochet_cache_<field>_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Frames held.
    pub entries: u64,
    /// Datagram bytes held (exactly the sum of the held frames' lengths).
    pub bytes: u64,
    /// Flows held.
    pub flows: u64,
    /// What the shard is charged against `max_bytes`: `bytes` plus the
    /// per-frame overhead, unused log slots and epoch candidates (see the
    /// module docs). Byte-budget evictions start when it reaches
    /// `max_bytes`, so a dashboard divides this, not `bytes`, by the budget.
    pub charged_bytes: u64,
    /// The shard's byte budget, [`CacheSettings::max_bytes`] (0 =
    /// unlimited); summed over the shards, the endpoint's budget.
    pub max_bytes: u64,
    /// Frames stored.
    pub inserted: u64,
    /// Inserts of a (HashKey, SeqNum) already held; the first copy was kept.
    pub duplicates: u64,
    /// Inserts refused because the SeqNum is older than the flow's window.
    pub refused_stale: u64,
    /// Inserts refused because one frame exceeds the whole byte budget (or
    /// 128 KiB, twice the largest UDP datagram, which a slot cannot name).
    pub refused_too_large: u64,
    /// Frames removed because their TTL ran out.
    pub evicted_ttl: u64,
    /// Frames evicted to stay within `max_keys`.
    pub evicted_max_keys: u64,
    /// Frames evicted to stay within `max_bytes`.
    pub evicted_max_bytes: u64,
    /// Frames pushed out of their flow's `max_per_flow` window.
    pub evicted_per_flow: u64,
    /// Frames dropped with a whole flow evicted to stay within `max_flows`.
    pub evicted_flows: u64,
    /// New epochs started because [`EPOCH_EVIDENCE`] frames confirmed that a
    /// flow's proxy restarted.
    pub epoch_resets: u64,
    /// Frames dropped by those epoch resets.
    pub evicted_epoch: u64,
    /// Frames held aside as evidence of a new epoch (a held key with other
    /// bytes, or a SeqNum far below or far above the flow's), not served.
    pub epoch_candidates: u64,
    /// Candidate epochs discarded unconfirmed: the old epoch continued, the
    /// evidence was inconsistent or aged out, or the budget evicted it.
    pub epoch_candidates_dropped: u64,
    /// Explicit [`Cache::invalidate`] calls that found a flow.
    pub invalidations: u64,
    /// Frames dropped by those invalidations.
    pub evicted_invalidated: u64,
}

/// Where a frame handed to [`Cache::insert`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Received from the fabric: a conflicting copy, or a SeqNum far below
    /// or far above the flow's, is evidence of a new epoch.
    Fabric,
    /// Recovered from an upstream endpoint for a gap: such frames are old by
    /// nature, so they never start an epoch; one older than the flow's
    /// window is refused instead.
    Recovered,
}

/// What [`Cache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insert {
    /// Stored. `new_epoch` is set when this frame confirmed a new epoch: the
    /// flow's older frames were dropped first and its candidate frames were
    /// stored with it.
    Inserted {
        /// The flow started a new epoch.
        new_epoch: bool,
        /// Candidate frames stored along with this one (0 unless
        /// `new_epoch`).
        promoted: usize,
    },
    /// Held as evidence of a new epoch (see the module docs): not served,
    /// and the flow's frames are unchanged until the epoch is confirmed.
    Candidate,
    /// Already held; the first copy was kept.
    Duplicate,
    /// Older than the flow's `max_per_flow` window (or a recovered frame far
    /// behind the flow); not stored.
    Stale,
    /// Larger than the whole byte budget, or than 128 KiB − 1 (twice the
    /// largest UDP datagram; a slot holds 17 bits of length); not stored.
    TooLarge,
}

/// A cached frame found by a lookup.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The datagram exactly as received: a view into its segment.
    pub frame: Bytes,
    /// The group index to retransmit it to, as given at insert.
    pub group: u16,
}

/// What one [`Cache::expire`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Frames removed.
    pub expired: usize,
    /// The work budget ran out: call again soon.
    pub more: bool,
}

/// One retry cache shard. See the module docs for its invariants.
pub struct Cache {
    settings: CacheSettings,
    ttl_ms: [u64; CLASSES],
    origin: Instant,
    /// Insert clock in ms since `origin`; never goes backwards, which is what
    /// keeps each class log in deadline order.
    clock_ms: u64,
    /// The size segments are allocated at (at most 1/32 of the budget).
    segment_target: usize,
    /// Dead bytes a log may hold beyond its live ones before compaction.
    compact_slack: u64,
    index: HashMap<u64, u32, SeededState>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    lru_head: u32,
    lru_tail: u32,
    /// The class logs, which are also the expiry FIFOs.
    queues: [ClassLog; CLASSES],
    /// Index slots allocated over all flows (the sum of their capacities).
    slots: u64,
    /// Candidate epochs by age; an entry whose id no longer matches its
    /// flow's candidate is a tombstone.
    cands: VecDeque<CEntry>,
    /// Candidate epochs held.
    cand_live: usize,
    /// What the candidate epochs are charged: their frames' bytes plus
    /// [`CANDIDATE_OVERHEAD`] each.
    cand_charge: u64,
    next_cand: u64,
    stats: CacheStats,
    /// The last epoch reset, until taken ([`Cache::take_last_reset`]).
    last_reset: Option<EpochReset>,
}

/// A flow's epoch reset: which SeqNums the old epoch held when it was
/// dropped, as a bitmap over its log (at most `max_per_flow` bits: 8 KiB at
/// the default). Frames the window had already let go of are not in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochReset {
    /// The flow.
    pub hash_key: u64,
    /// The SeqNum of bit 0.
    base: u64,
    /// Bit `i` set: SeqNum `base + i` was held.
    held: Vec<u64>,
}

impl EpochReset {
    /// The old epoch's held SeqNums, ascending.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.held.iter().enumerate().flat_map(move |(w, &bits)| {
            (0..64)
                .filter(move |b| bits >> b & 1 == 1)
                .map(move |b| self.base + (w * 64 + b) as u64)
        })
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A borrowed view of one flow for reading a range with one hash lookup.
#[derive(Clone, Copy)]
pub struct FlowView<'a> {
    flow: &'a Flow,
    logs: &'a [ClassLog; CLASSES],
    ttl_ms: &'a [u64; CLASSES],
    now_ms: u64,
}

impl fmt::Debug for FlowView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowView")
            .field("hash_key", &self.flow.hash_key)
            .field("base", &self.flow.base)
            .field("highest", &self.flow.highest)
            .field("live", &self.flow.live)
            .finish()
    }
}

impl<'a> FlowView<'a> {
    /// The unexpired frame with this SeqNum, if held.
    pub fn get(&self, seq: u64) -> Option<Hit> {
        let flow = self.flow;
        self.hit(flow.log[flow.pos(seq)?])
    }

    /// Where the frame held for `seq` lies, expired or not: what
    /// [`FlowView::get`] would read, for fetching it ahead of a batch.
    pub fn peek(&self, seq: u64) -> Option<&'a [u8]> {
        let slot = self.flow.log[self.flow.pos(seq)?];
        slot.held().then(|| self.logs[slot.class()].bytes(slot))
    }

    /// The unexpired frames held from `start` up to and including `end`, in
    /// SeqNum order, with their SeqNums: consecutive index slots, read after
    /// the one hash lookup of [`Cache::view`].
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, Hit)> + 'a {
        let view = *self;
        let flow = self.flow;
        let lo = start.max(flow.base);
        let hi = end.min((flow.base + flow.log.len() as u64).saturating_sub(1));
        (lo..=hi).filter_map(move |seq| Some((seq, view.hit(flow.log[flow.pos(seq)?])?)))
    }

    /// Highest SeqNum stored in the flow's current epoch.
    pub fn highest(&self) -> u64 {
        self.flow.highest
    }

    fn hit(&self, slot: Slot) -> Option<Hit> {
        if !slot.held() {
            return None;
        }
        let c = slot.class();
        let frame = self.logs[c].serve(slot, self.ttl_ms[c], self.now_ms)?;
        Some(Hit { frame, group: slot.group() })
    }
}

impl Cache {
    /// An empty shard whose clock starts at `now`.
    pub fn new(settings: CacheSettings, now: Instant) -> Self {
        let ttl_ms = TtlClass::ALL.map(|c| duration_ms(settings.ttls.get(c)));
        let segment_target = match settings.max_bytes {
            0 => SEGMENT_MAX,
            b => (b / 32).min(SEGMENT_MAX),
        };
        Cache {
            settings,
            ttl_ms,
            origin: now,
            clock_ms: 0,
            segment_target,
            compact_slack: COMPACT_SEGMENTS * SEGMENT_MAX as u64,
            index: HashMap::with_hasher(SeededState::random()),
            flows: Vec::new(),
            free: Vec::new(),
            lru_head: NIL,
            lru_tail: NIL,
            queues: std::array::from_fn(ClassLog::new),
            slots: 0,
            cands: VecDeque::new(),
            cand_live: 0,
            cand_charge: 0,
            next_cand: 0,
            stats: CacheStats::default(),
            last_reset: None,
        }
    }

    /// The hot part of the shard, for a sibling's warm restart: unexpired
    /// frames of the most recently used flows first, each flow's newest
    /// frames first, until `max_bytes` of frames are collected. Work is
    /// bounded by the frames returned plus the slots skipped.
    pub fn hot(&self, now: Instant, max_bytes: usize) -> Vec<Bytes> {
        let now_ms = self.ms(now);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut at = self.lru_tail;
        while at != NIL {
            let flow = &self.flows[at as usize];
            let view = FlowView { flow, logs: &self.queues, ttl_ms: &self.ttl_ms, now_ms };
            for &slot in flow.log.iter().rev() {
                let Some(hit) = view.hit(slot) else { continue };
                if bytes + hit.frame.len() > max_bytes {
                    return out;
                }
                bytes += hit.frame.len();
                out.push(hit.frame);
            }
            at = flow.prev;
        }
        out
    }

    /// What the shard holds of its most recently appended-to flows, newest
    /// first, at most `max_flows` of them: per flow the SeqNum span of its
    /// log and how many SeqNums inside it are not held. O(`max_flows`).
    /// Frames whose TTL ran out but that [`Cache::expire`] has not removed
    /// yet still count as held; the digest is advice for siblings
    /// ([`crate::retry::siblings`]), never an answer to a listener.
    pub fn holdings(&self, max_flows: usize) -> Vec<Holding> {
        let mut out = Vec::with_capacity(max_flows.min(self.index.len()));
        let mut at = self.lru_tail;
        while at != NIL && out.len() < max_flows {
            let flow = &self.flows[at as usize];
            if let Some(last) = flow.log.len().checked_sub(1) {
                out.push(Holding {
                    hash_key: flow.hash_key,
                    lo: flow.base,
                    hi: flow.base + last as u64,
                    missing: (flow.log.len() - flow.live).min(u32::MAX as usize) as u32,
                });
            }
            at = flow.prev;
        }
        out
    }

    /// The settings this shard was built with.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.stats.entries as usize
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.stats.entries == 0
    }

    /// Stores `frame` (the whole datagram) under `key` with the TTL of
    /// `class`, remembering `group` as where to retransmit it. The bytes are
    /// copied into the class's open segment, so `frame` may be the receive
    /// buffer itself (or a `Bytes` that is dropped after). O(1) amortised
    /// for in-order arrivals; see the module docs for what may be evicted to
    /// make room and when a flow starts a new epoch.
    pub fn insert(
        &mut self,
        now: Instant,
        key: FrameKey,
        class: TtlClass,
        group: u16,
        frame: impl AsRef<[u8]>,
        origin: Origin,
    ) -> Insert {
        self.insert_slice(now, key, class, group, frame.as_ref(), origin)
    }

    fn insert_slice(
        &mut self,
        now: Instant,
        key: FrameKey,
        class: TtlClass,
        group: u16,
        frame: &[u8],
        origin: Origin,
    ) -> Insert {
        let now_ms = self.ms(now).max(self.clock_ms);
        self.clock_ms = now_ms;
        let len = frame.len();
        let max_bytes = self.settings.max_bytes;
        let over = max_bytes != 0 && len.saturating_add(OVERHEAD_PER_ENTRY) > max_bytes;
        if over || len > segment::FRAME_MAX {
            self.stats.refused_too_large += 1;
            return Insert::TooLarge;
        }
        self.sweep_class(class, now_ms, INSERT_SWEEP, NIL);
        self.sweep_cands(now_ms, INSERT_SWEEP);

        let seq = key.seq;
        let mut new_epoch = false;
        let mut promoted = 0;
        let idx = match self.index.get(&key.hash_key) {
            Some(&idx) => {
                let fabric = origin == Origin::Fabric;
                let flow = &self.flows[idx as usize];
                // Below everything held as well as far below the head: a
                // hole between held frames is a late frame of this epoch,
                // even when one forged frame far ahead raised the head.
                let regressed = fabric && seq < flow.base && self.regressed(flow.highest, seq);
                // A jump that would push every held frame out of the window
                // drops the flow as surely as a reset, so it takes the same
                // evidence.
                let jump = self.max_per_flow().max(self.settings.regression_threshold);
                let jumped = fabric && seq.saturating_sub(flow.highest) > jump;
                if !regressed && seq < flow.window_low(self.max_per_flow()) {
                    self.stats.refused_stale += 1;
                    return Insert::Stale;
                }
                let mut evidence = regressed || jumped;
                if let Some(pos) = flow.pos(seq) {
                    let slot = flow.log[pos];
                    let c = slot.class();
                    if slot.held() {
                        let (log, held) = (&self.queues[c], self.queues[c].bytes(slot));
                        let live = log.inserted_ms(slot).saturating_add(self.ttl_ms[c]) > now_ms;
                        if live && (held == frame || !fabric) {
                            self.stats.duplicates += 1;
                            return Insert::Duplicate;
                        }
                        if live {
                            // Same key, other bytes: a restarted proxy
                            // reusing its HashKey, or a forgery. Evidence
                            // only; the held copy stays.
                            evidence = true;
                        } else if !regressed {
                            // The held copy has expired but not been swept
                            // yet. Its record, and every record ahead of it
                            // in its log, is expired too, so sweeping that
                            // class frees the slot and keeps "one live
                            // record per slot" exact.
                            self.sweep_class(TtlClass::ALL[c], now_ms, usize::MAX, idx);
                        }
                    }
                }
                let flow = &self.flows[idx as usize];
                if !evidence && fabric && seq > flow.highest {
                    match &flow.cand {
                        // In a flow holding fewer frames than the evidence
                        // needs, a candidate that has caught up with the
                        // head goes on counting above it. Only there: in a
                        // larger flow, forged evidence at the head would
                        // make the next genuine frame count.
                        Some(c)
                            if flow.live < EPOCH_EVIDENCE
                                && c.caught_up(flow.highest)
                                && seq == c.bounds().1 + 1 =>
                        {
                            evidence = true;
                        }
                        // The old epoch continues: the candidate was wrong.
                        Some(_) => self.drop_cand(idx),
                        None => {}
                    }
                }
                if evidence {
                    if let Some(held) = self.add_evidence(idx, now_ms, seq, class, group, frame) {
                        return held;
                    }
                    promoted = self.start_epoch(idx, now_ms);
                    new_epoch = true;
                }
                idx
            }
            None => self.new_flow(key.hash_key),
        };
        self.touch(idx);
        self.advance(idx, seq);
        // Room first, as a steady stream evicts the front of the very log
        // it appends to, which then need not grow; then for whatever the
        // append (a jump, an index that grew, promoted candidates) added.
        let room = Keep { flow: idx, seq: None, cand: false };
        self.fit(room, Some((class, len)));
        self.put(idx, now_ms, seq, class, group, frame);
        self.fit(Keep { seq: Some(seq), ..room }, None);
        Insert::Inserted { new_epoch, promoted }
    }

    /// Takes the last epoch reset that dropped frames: right after an
    /// insert that reported [`Insert::Inserted`] with `new_epoch`, that
    /// flow's. A shared cache holding the old epoch's frames under the same
    /// keys learns from it which to forget.
    pub fn take_last_reset(&mut self) -> Option<EpochReset> {
        self.last_reset.take()
    }

    /// The unexpired frame under `key`, if held.
    pub fn get(&self, key: FrameKey, now: Instant) -> Option<Hit> {
        self.view(key.hash_key, now)?.get(key.seq)
    }

    /// A view of one flow as of `now`, for reading several SeqNums with a
    /// single hash lookup.
    pub fn view(&self, hash_key: u64, now: Instant) -> Option<FlowView<'_>> {
        let &idx = self.index.get(&hash_key)?;
        Some(FlowView {
            flow: &self.flows[idx as usize],
            logs: &self.queues,
            ttl_ms: &self.ttl_ms,
            now_ms: self.ms(now),
        })
    }

    /// Removes expired frames, examining at most [`EXPIRE_BUDGET`] records.
    /// Lookups never return expired frames whether or not this has run; it
    /// only gives the memory back.
    pub fn expire(&mut self, now: Instant) -> Sweep {
        self.expire_bounded(now, EXPIRE_BUDGET)
    }

    /// [`Cache::expire`] with an explicit work budget.
    pub fn expire_bounded(&mut self, now: Instant, budget: usize) -> Sweep {
        let now_ms = self.ms(now);
        let mut sweep = Sweep::default();
        let mut left = budget;
        for class in TtlClass::ALL {
            let (expired, work, more) = self.sweep_class(class, now_ms, left, NIL);
            sweep.expired += expired;
            left -= work;
            if more {
                sweep.more = true;
                return sweep;
            }
        }
        sweep.more = self.sweep_cands(now_ms, left);
        sweep
    }

    /// Drops every frame of a flow (e.g. on an operator's request or a known
    /// proxy restart). Returns how many frames were dropped.
    pub fn invalidate(&mut self, hash_key: u64) -> usize {
        let Some(&idx) = self.index.get(&hash_key) else { return 0 };
        let dropped = self.clear_flow(idx);
        self.remove_flow(idx);
        self.stats.invalidations += 1;
        self.stats.evicted_invalidated += dropped;
        dropped as usize
    }

    /// A snapshot of the shard's counters and gauges.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            flows: self.index.len() as u64,
            charged_bytes: self.charge(),
            max_bytes: self.settings.max_bytes as u64,
            ..self.stats
        }
    }

    // ───────────────────────────── internals ─────────────────────────────

    fn ms(&self, now: Instant) -> u64 {
        duration_floor_ms(now.saturating_duration_since(self.origin))
    }

    fn max_per_flow(&self) -> u64 {
        // A record names its SeqNum by its low 24 bits (see `flow.rs`).
        self.settings.max_per_flow.clamp(1, 1 << 23) as u64
    }

    fn max_flows(&self) -> usize {
        // A record names its flow's slab index in 24 bits.
        self.settings.max_flows.clamp(1, segment::LOW_MASK as usize)
    }

    fn regressed(&self, highest: u64, seq: u64) -> bool {
        seq < highest && highest - seq > self.settings.regression_threshold
    }

    /// Allocates a flow for `hash_key`, evicting the least recently
    /// appended-to flow first if the shard is at `max_flows`.
    fn new_flow(&mut self, hash_key: u64) -> u32 {
        if self.index.len() >= self.max_flows() && self.lru_head != NIL {
            let victim = self.lru_head;
            let dropped = self.clear_flow(victim);
            self.remove_flow(victim);
            self.stats.evicted_flows += dropped;
        }
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.flows.push(Flow::empty());
                (self.flows.len() - 1) as u32
            }
        };
        let flow = &mut self.flows[idx as usize];
        *flow = Flow::empty();
        flow.hash_key = hash_key;
        self.index.insert(hash_key, idx);
        self.link_tail(idx);
        idx
    }

    /// Counts a held slot's record dead in its log (the slot has been
    /// emptied) and returns its frame's length.
    fn kill(&mut self, slot: Slot) -> u64 {
        self.queues[slot.class()].kill(slot);
        slot.len() as u64
    }

    /// Drops every held frame of a flow; its records become dead. The flow
    /// stays mapped. Returns the number of frames dropped.
    fn clear_flow(&mut self, idx: u32) -> u64 {
        self.drop_cand(idx);
        let log = std::mem::take(&mut self.flows[idx as usize].log);
        let mut dropped = 0u64;
        let mut bytes = 0u64;
        for slot in log.iter().filter(|s| s.held()) {
            dropped += 1;
            bytes += self.kill(*slot);
        }
        let flow = &mut self.flows[idx as usize];
        flow.log = log;
        flow.log.clear();
        flow.live = 0;
        flow.highest = 0;
        flow.base = 0;
        flow.shrink();
        self.recap(idx);
        self.stats.entries -= dropped;
        self.stats.bytes -= bytes;
        dropped
    }

    /// Unmaps an empty flow and returns its slab slot to the free list.
    fn remove_flow(&mut self, idx: u32) {
        debug_assert_eq!(self.flows[idx as usize].live, 0);
        self.drop_cand(idx);
        self.unlink(idx);
        let flow = &mut self.flows[idx as usize];
        self.index.remove(&flow.hash_key);
        flow.log = VecDeque::new();
        self.recap(idx);
        self.free.push(idx);
    }

    /// Raises the flow's highest SeqNum to `seq` if it is higher, evicting
    /// frames that fall out of the `max_per_flow` window.
    fn advance(&mut self, idx: u32, seq: u64) {
        let mpf = self.max_per_flow();
        let flow = &mut self.flows[idx as usize];
        if seq <= flow.highest {
            return;
        }
        flow.highest = seq;
        let low = flow.window_low(mpf);
        let mut evicted = 0u64;
        let mut bytes = 0u64;
        while self.flows[idx as usize].base < low {
            let flow = &mut self.flows[idx as usize];
            let Some(slot) = flow.log.pop_front() else { break };
            flow.base += 1;
            if slot.held() {
                flow.live -= 1;
                evicted += 1;
                bytes += self.kill(slot);
            }
        }
        self.flows[idx as usize].trim();
        self.recap(idx);
        self.stats.entries -= evicted;
        self.stats.bytes -= bytes;
        self.stats.evicted_per_flow += evicted;
    }

    /// Stores a frame whose slot is free and inside the flow's window.
    fn put(&mut self, idx: u32, now_ms: u64, seq: u64, class: TtlClass, group: u16, frame: &[u8]) {
        let c = class as usize;
        let slot = self.queues[c].append(idx, seq, now_ms, group, frame, self.segment_target);
        let flow = &mut self.flows[idx as usize];
        flow.place(seq, slot);
        flow.live += 1;
        self.recap(idx);
        self.stats.entries += 1;
        self.stats.bytes += frame.len() as u64;
        self.stats.inserted += 1;
        if self.queues[c].wants_compaction(self.compact_slack) {
            self.compact(c);
        }
    }

    /// Copies one log's live records, in order, into fresh segments and
    /// repoints their slots; the old segments go (or live on in frames
    /// handed out, until those are dropped). Called when dead records hold
    /// more than the live ones plus four segments, so the O(live) copy is
    /// paid for by the dead bytes made since the last one.
    fn compact(&mut self, c: usize) {
        let old = std::mem::replace(&mut self.queues[c], ClassLog::new(c));
        self.queues[c].continue_ids(&old);
        let moved: Vec<(u32, usize)> =
            old.records().filter_map(|(at, h)| self.live_at(at, &h)).collect();
        for (idx, pos) in moved {
            let flow = &self.flows[idx as usize];
            let (seq, slot) = (flow.base + pos as u64, flow.log[pos]);
            let (t, frame) = (old.inserted_ms(slot), old.bytes(slot));
            let new = self.queues[c].append(idx, seq, t, slot.group(), frame, self.segment_target);
            self.flows[idx as usize].log[pos] = new;
        }
    }

    /// Where the record at `addr` is live: its flow and the
    /// position of its slot.
    fn live_at(&self, at: Addr, h: &Header) -> Option<(u32, usize)> {
        let flow = self.flows.get(h.flow as usize)?;
        let pos = flow.pos_lo(h.seq_lo)?;
        let slot = flow.log[pos];
        (slot.held() && slot.addr() == at).then_some((h.flow, pos))
    }

    /// When the frame in flow `idx`'s slot `pos` was inserted.
    fn inserted_ms(&self, idx: u32, pos: usize) -> u64 {
        let slot = self.flows[idx as usize].log[pos];
        self.queues[slot.class()].inserted_ms(slot)
    }

    /// What the byte budget is compared against; see the module docs.
    fn charge(&self) -> u64 {
        let logs: u64 = self.queues.iter().map(ClassLog::charge).sum();
        logs + self.slots * SLOT_BYTES as u64 + self.cand_charge
    }

    /// Re-reads a flow's index capacity into the slot total. Called after
    /// every operation that may change it.
    fn recap(&mut self, idx: u32) {
        let flow = &mut self.flows[idx as usize];
        let cap = flow.log.capacity();
        if cap != flow.cap {
            self.slots = self.slots + cap as u64 - flow.cap as u64;
            flow.cap = cap;
        }
    }

    /// Evicts globally oldest frames and candidates until the shard is
    /// within its key and byte budgets, never what `keep` protects nor
    /// unmapping its flow. With `incoming` (class, length), makes room for
    /// one more frame, as far as evicting can.
    fn fit(&mut self, keep: Keep, incoming: Option<(TtlClass, usize)>) {
        let max_keys = self.settings.max_keys as u64;
        if max_keys != 0 {
            let more_keys = u64::from(incoming.is_some());
            while self.stats.entries + more_keys > max_keys {
                if self.evict_oldest(keep, true).is_none() {
                    break;
                }
                self.stats.evicted_max_keys += 1;
            }
        }
        let max_bytes = self.settings.max_bytes as u64;
        if max_bytes == 0 {
            return;
        }
        // The frame's record, if its log needs a segment for it; its slot is
        // charged with its index's capacity, which the call after the
        // append settles.
        let more = |c: &Self| {
            incoming
                .map_or(0, |(class, len)| c.queues[class as usize].extra_for(len, c.segment_target))
        };
        while self.charge() + more(self) > max_bytes {
            match self.evict_oldest(keep, false) {
                Some(Evicted::Frame) => self.stats.evicted_max_bytes += 1,
                Some(Evicted::Candidate) => {}
                None if incoming.is_some() => break,
                None => {
                    // Only what `keep` protects is left: give back the
                    // flow's spare slots (a lone frame then fits, since
                    // insert refused any that could not), and drop a
                    // candidate that still does not fit.
                    self.flows[keep.flow as usize].log.shrink_to_fit();
                    self.recap(keep.flow);
                    if keep.cand && self.charge() > max_bytes {
                        self.drop_cand(keep.flow);
                    }
                    break;
                }
            }
        }
    }

    /// Removes the frame inserted first among the six class logs' fronts,
    /// or the candidate epoch started first if it is older (unless
    /// `frames_only`).
    fn evict_oldest(&mut self, keep: Keep, frames_only: bool) -> Option<Evicted> {
        // (inserted ms, class log or CLASSES for the candidate FIFO)
        let mut best: Option<(u64, usize)> = None;
        for c in 0..CLASSES {
            while let Some((addr, h)) = self.queues[c].front() {
                match self.live_at(addr, &h) {
                    Some((idx, pos)) => {
                        // The kept frame is its log's newest record, so at
                        // the front it is the only live one.
                        let seq = self.flows[idx as usize].base + pos as u64;
                        if idx == keep.flow && keep.seq == Some(seq) {
                            break;
                        }
                        let inserted = self.inserted_ms(idx, pos);
                        if best.is_none_or(|(t, _)| inserted < t) {
                            best = Some((inserted, c));
                        }
                        break;
                    }
                    None => self.queues[c].skip(&h),
                }
            }
        }
        if !frames_only {
            while let Some(&e) = self.cands.front() {
                let Some(started) = self.cand_of(e).map(|c| c.started_ms) else {
                    self.cands.pop_front();
                    continue;
                };
                if !(keep.cand && e.flow == keep.flow) && best.is_none_or(|(t, _)| started < t) {
                    best = Some((started, CLASSES));
                }
                break;
            }
        }
        let (_, c) = best?;
        if c == CLASSES {
            let e = self.cands.pop_front()?;
            self.drop_cand(e.flow);
            return Some(Evicted::Candidate);
        }
        let (addr, h) = self.queues[c].front()?;
        let (idx, pos) = self.live_at(addr, &h)?;
        self.queues[c].skip(&h);
        self.take(idx, pos, keep.flow);
        Some(Evicted::Frame)
    }

    /// Pops expired (and dead) fronts of one class log, examining at most
    /// `budget` records. Returns (frames expired, records examined, budget
    /// ran out).
    fn sweep_class(
        &mut self,
        class: TtlClass,
        now_ms: u64,
        budget: usize,
        pin: u32,
    ) -> (usize, usize, bool) {
        let c = class as usize;
        let (mut expired, mut work) = (0, 0);
        while let Some((addr, h)) = self.queues[c].front() {
            if work == budget {
                return (expired, work, true);
            }
            work += 1;
            let live = self.live_at(addr, &h);
            if let Some((idx, pos)) = live
                && self.inserted_ms(idx, pos).saturating_add(self.ttl_ms[c]) > now_ms
            {
                break;
            }
            self.queues[c].skip(&h);
            if let Some((idx, pos)) = live {
                self.take(idx, pos, pin);
                self.stats.evicted_ttl += 1;
                expired += 1;
            }
        }
        (expired, work, false)
    }

    /// Empties one slot, keeping the index tight around held frames and
    /// unmapping the flow when it empties (unless it is `pin`).
    fn take(&mut self, idx: u32, pos: usize, pin: u32) {
        let flow = &mut self.flows[idx as usize];
        let slot = std::mem::replace(&mut flow.log[pos], Slot::VACANT);
        if !slot.held() {
            return;
        }
        flow.live -= 1;
        flow.trim();
        let empty = flow.live == 0;
        self.recap(idx);
        let len = self.kill(slot);
        self.stats.entries -= 1;
        self.stats.bytes -= len;
        if empty && idx != pin {
            self.remove_flow(idx);
        }
    }

    fn touch(&mut self, idx: u32) {
        if self.lru_tail != idx {
            self.unlink(idx);
            self.link_tail(idx);
        }
    }

    fn link_tail(&mut self, idx: u32) {
        let tail = self.lru_tail;
        {
            let f = &mut self.flows[idx as usize];
            f.prev = tail;
            f.next = NIL;
        }
        if tail == NIL {
            self.lru_head = idx;
        } else {
            self.flows[tail as usize].next = idx;
        }
        self.lru_tail = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let f = &self.flows[idx as usize];
            (f.prev, f.next)
        };
        if prev == NIL {
            self.lru_head = next;
        } else {
            self.flows[prev as usize].next = next;
        }
        if next == NIL {
            self.lru_tail = prev;
        } else {
            self.flows[next as usize].prev = prev;
        }
        let f = &mut self.flows[idx as usize];
        f.prev = NIL;
        f.next = NIL;
    }
}

/// Tombstones the candidate FIFO may hold beyond its live entries before
/// compaction.
const COMPACT_SLACK: usize = 1024;

/// Segments' worth of dead records a class log may hold beyond its live
/// bytes before it is compacted.
const COMPACT_SEGMENTS: u64 = 4;

/// Gives back FIFO capacity left over from a burst, once it is mostly
/// unused (O(1) amortised, as for indexes).
fn shrink_queue<T>(q: &mut VecDeque<T>) {
    let (len, cap) = (q.len(), q.capacity());
    if cap > COMPACT_SLACK && len < cap / 4 {
        q.shrink_to(len * 2);
    }
}

/// A candidate frame's TTL class (4 bits) and retransmit group (16 bits) in
/// one word (the upper bits once held a deadline; a candidate has none).
#[derive(Clone, Copy)]
struct Meta(u64);

impl Meta {
    fn new(class: TtlClass, group: u16) -> Self {
        Meta(((class as u64) << 16) | u64::from(group))
    }

    fn class(self) -> TtlClass {
        TtlClass::ALL[(((self.0 >> 16) & 0xF) as usize).min(CLASSES - 1)]
    }

    fn group(self) -> u16 {
        self.0 as u16
    }
}

/// What [`Cache::fit`] must not evict: the frame just stored (flow and
/// SeqNum) or the flow's candidate; the flow itself is never unmapped.
#[derive(Clone, Copy)]
struct Keep {
    flow: u32,
    seq: Option<u64>,
    cand: bool,
}

/// What one eviction removed.
enum Evicted {
    Frame,
    Candidate,
}

fn duration_floor_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// TTLs round up to whole ms (at least 1), so a frame never outlives its TTL
/// by the rounding and a non-zero TTL never becomes zero.
fn duration_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
impl Cache {
    /// Recomputes every gauge and cross-structure invariant from scratch.
    pub(crate) fn check_invariants(&self) {
        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut per_class = [0usize; CLASSES];
        let mpf = self.max_per_flow();
        let (mut slots, mut cands, mut cand_charge) = (0u64, 0usize, 0u64);
        let span = self.settings.regression_threshold.min(mpf - 1);
        let records: Vec<HashMap<Addr, Header>> =
            self.queues.iter().map(|log| log.records().collect()).collect();
        for (&hk, &idx) in &self.index {
            let f = &self.flows[idx as usize];
            assert_eq!(f.hash_key, hk);
            assert_eq!(f.cap, f.log.capacity(), "slot charge follows the allocation");
            slots += f.log.capacity() as u64;
            if let Some(c) = &f.cand {
                assert!((1..EPOCH_EVIDENCE).contains(&c.n), "a candidate short of confirmation");
                let mut seqs: Vec<u64> = c.held().iter().map(|p| p.seq).collect();
                assert!(c.held().iter().all(|p| p.frame.is_some()));
                seqs.sort_unstable();
                seqs.dedup();
                assert_eq!(seqs.len(), c.n, "distinct SeqNums");
                let (lo, hi) = c.bounds();
                assert!(hi - lo <= span, "one restarted proxy's SeqNums");
                let live = self.cands.iter().filter(|e| e.flow == idx && e.id == c.id).count();
                assert_eq!(live, 1, "one FIFO entry per candidate");
                cands += 1;
                cand_charge += c.charge();
            }
            let held: Vec<(usize, Slot)> =
                f.log.iter().copied().enumerate().filter(|(_, s)| s.held()).collect();
            assert_eq!(held.len(), f.live, "live count");
            assert!(f.live > 0, "empty flows are unmapped");
            assert!(f.log.front().is_some_and(|s| s.held()), "tight front");
            assert!(f.log.back().is_some_and(|s| s.held()), "tight back");
            assert!(f.log.len() as u64 <= mpf, "log spans at most max_per_flow");
            assert!(f.base >= f.window_low(mpf));
            assert!(f.base + f.log.len() as u64 - 1 <= f.highest);
            for (pos, s) in held {
                let c = s.class();
                assert_eq!(self.queues[c].bytes(s).len(), s.len());
                assert!(records[c].contains_key(&s.addr()), "a slot names a record of its log");
                let (h, seq) = (records[c][&s.addr()], f.base + pos as u64);
                assert_eq!(
                    (h.flow, h.seq_lo, h.len),
                    (idx, seq as u32 & segment::LOW_MASK, s.len()),
                    "back-ref"
                );
                entries += 1;
                bytes += s.len() as u64;
                per_class[c] += 1;
            }
        }
        assert_eq!(entries, self.stats.entries);
        assert_eq!(bytes, self.stats.bytes);
        assert_eq!(slots, self.slots);
        assert_eq!((cands, cand_charge), (self.cand_live, self.cand_charge));
        for &idx in &self.free {
            let f = &self.flows[idx as usize];
            assert!(
                f.cap == 0 && f.log.capacity() == 0 && f.cand.is_none(),
                "free flows hold nothing"
            );
        }
        let mut last = 0;
        for &e in &self.cands {
            if let Some(c) = self.cand_of(e) {
                assert!(c.started_ms >= last, "candidate FIFO in age order");
                last = c.started_ms;
            }
        }
        for (c, log) in self.queues.iter().enumerate() {
            // One live record per held slot, in deadline order (the log
            // checks its own order and counts against this liveness).
            log.check(|at, h| {
                self.live_at(at, h).map(|(idx, pos)| self.flows[idx as usize].log[pos])
            });
            assert_eq!(log.live(), per_class[c], "one live record per held frame");
        }
        let mut n = 0;
        let mut at = self.lru_head;
        while at != NIL {
            n += 1;
            at = self.flows[at as usize].next;
        }
        assert_eq!(n, self.index.len(), "LRU list holds every flow");
        assert_eq!(self.memory(), self.charge(), "the charge is the allocation");
        if self.settings.max_keys != 0 {
            assert!(entries <= self.settings.max_keys as u64);
        }
        if self.settings.max_bytes != 0 {
            assert!(self.memory() <= self.settings.max_bytes as u64, "within the byte budget");
        }
        assert!(self.index.len() <= self.settings.max_flows.max(1));
    }

    /// The memory the shard's frame structures hold, recomputed from the
    /// allocations themselves: every log's segments and descriptors, every
    /// index's allocated slots, candidates. What the byte budget bounds.
    pub(crate) fn memory(&self) -> u64 {
        let mut m: u64 = self.queues.iter().map(ClassLog::allocated).sum();
        for &idx in self.index.values() {
            let f = &self.flows[idx as usize];
            m += (f.log.capacity() * SLOT_BYTES) as u64;
            m += f.cand.as_ref().map_or(0, |c| c.charge());
        }
        m
    }

    /// Every held frame (expired or not), for the property test.
    pub(crate) fn held(&self) -> Vec<(FrameKey, Bytes)> {
        let mut out = Vec::new();
        for (&hash_key, &idx) in &self.index {
            let f = &self.flows[idx as usize];
            for (i, s) in f.log.iter().enumerate() {
                if s.held() {
                    let frame = Bytes::copy_from_slice(self.queues[s.class()].bytes(*s));
                    out.push((FrameKey { hash_key, seq: f.base + i as u64 }, frame));
                }
            }
        }
        out
    }
}
