//! One shard of the retry cache: per-flow append-only logs of whole datagrams.
//!
//! # Model
//! Every stamped frame belongs to a flow (its HashKey) and has a SeqNum the
//! proxy counts up from 1. A flow's frames are kept in a log indexed by
//! SeqNum: a `VecDeque` of slots whose first slot holds SeqNum `base`, so an
//! in-order append is a `push_back` and a lookup is one subtraction. A frame
//! is stored as the whole datagram exactly as received (a [`Bytes`] the
//! caller copied once out of its receive buffer), so a retransmit is
//! byte-identical, trailing bytes included.
//!
//! # Invariants
//! - **Nothing expired is ever returned.** A frame's deadline is
//!   `insert time + TTL of its class` at 1 ms resolution (a frame may expire
//!   up to 1 ms early, never late); lookups compare against it, so expiry
//!   does not depend on [`Cache::expire`] having run.
//! - **Per flow, at most `max_per_flow` SeqNums are held**: the log spans at
//!   most the newest `max_per_flow` SeqNums below and including the highest
//!   one seen (holes included), so a flow's memory is bounded even when
//!   frames were lost on the way in. A frame older than that window is
//!   refused ([`Insert::Stale`]); frames pushed out of it are evicted
//!   (`per_flow`). Epoch detection (below) comes first, so with the default
//!   settings a fabric frame is only ever Stale if `regression_threshold` is
//!   raised to `max_per_flow` or beyond; recovered frames can be.
//! - **Global bounds**: at most `max_flows` flows (the least recently
//!   appended-to flow is evicted whole), at most `max_keys` frames and at
//!   most `max_bytes` of charge. The charge is the memory the shard's
//!   per-frame structures really hold, whatever the SeqNum pattern: each
//!   frame its length plus [`OVERHEAD_PER_ENTRY`], each *unused* slot of a
//!   flow's log (holes between held SeqNums and the `VecDeque`'s spare
//!   capacity alike) [`SLOT_BYTES`], and each epoch candidate (below) its
//!   frames plus [`CANDIDATE_OVERHEAD`]. A flow holding SeqNums 1 and 65 536
//!   is charged its 65 536 slots (2.6 MB), so sparse flows are evicted by the
//!   ordinary byte-bound eviction, oldest first, as dense ones are. The key
//!   and byte bounds evict the globally oldest frame or candidate
//!   (insertion order) first.
//! - **Memory**: the shard's heap is at most `max_bytes` plus a constant
//!   that no SeqNum pattern changes: per-flow state, at most `max_flows` ×
//!   [`FLOW_STATE_BYTES`] (index, slab and LRU links; 16 MB at the default
//!   100 000 flows), plus the allocator's share of each frame (its
//!   header and size-class rounding, and the `bytes` crate's 24-byte shared
//!   header on the first clone) and the class FIFOs' tombstones and spare
//!   capacity, both bounded per frame held (see
//!   [`OVERHEAD_PER_ENTRY`]). Before this rule the log slots of holes were
//!   not charged, and 1 500 flows of two frames each at SeqNums 1 and
//!   65 536 held 3.9 GB of slots against a 64 MiB budget.
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
//!   epoch, never served and never replacing a held frame, while the old
//!   frames keep being served. The reset happens only when
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
//! Each frame has one slot in its flow's log (`Option<Bytes>` plus a packed
//! word holding the deadline, the TTL class and the retransmit group) and one
//! 16-byte entry in the FIFO of its TTL class. Within a class every frame has
//! the same TTL and the insert clock never runs backwards, so each FIFO is
//! also in deadline order: expiry pops fronts, O(1) per frame, and the
//! globally oldest frame is the oldest of six fronts. Entries name their flow
//! by slab index and generation, so validating one never hashes; a flow's
//! generation changes whenever its frames are dropped wholesale (epoch,
//! invalidation, eviction), which turns the old entries into tombstones that
//! are skipped, and popped, when they reach the front. Frames pushed out of
//! a busy flow's window leave tombstones too; an insert into a FIFO whose
//! tombstones outnumber its live entries compacts it in one pass, so a busy
//! FIFO stays within about twice the frames held, at O(1) amortised cost per
//! insert (and an idle one sheds its tombstones as they reach the front).
//!
//! A flow's log keeps its slot capacity in step with the charge: every
//! operation that can change `VecDeque::capacity` (append, trim, shrink,
//! clear) re-reads it, one comparison on the hot path, so the charge is the
//! allocation, not an estimate. An in-order append is still a `push_back`
//! and a lookup one subtraction; a candidate epoch is a boxed array of at
//! most [`EPOCH_EVIDENCE`] − 1 frames hung off the flow, with one entry in a
//! seventh FIFO ordered by age (a fixed TTL, so also in deadline order) that
//! ages and evicts them the way the class FIFOs do for frames.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::frame::{Extra, Frame, FrameKey, FrameVersion};

use super::SeededState;
use super::siblings::Holding;

/// Bytes of bookkeeping one cached frame costs beyond its datagram: its log
/// slot ([`SLOT_BYTES`]: 32-byte `Option<Bytes>` + 8-byte packed
/// deadline/class/group) plus its 16-byte entry in its class FIFO. Checked
/// against `size_of` in the tests. Not included, and bounded per frame held
/// rather than charged: the `bytes` crate's shared header (24 bytes plus
/// allocator rounding, allocated when a `Bytes` made from a `Vec`, as
/// `Bytes::copy_from_slice` makes it, is first cloned), the allocator's
/// rounding of the datagram, and FIFO tombstones and spare capacity (a FIFO
/// is compacted when tombstones outnumber its live entries, and shrunk when
/// mostly empty). Unused log slots — holes and spare capacity — are charged
/// separately, [`SLOT_BYTES`] each. The byte budget charges this figure per
/// frame so that it tracks real memory, not just payload.
pub const OVERHEAD_PER_ENTRY: usize = 56;

/// Bytes one log slot costs, held or not: a flow's log is charged
/// `capacity × SLOT_BYTES` in all, of which a held frame's slot is part of
/// its [`OVERHEAD_PER_ENTRY`].
pub const SLOT_BYTES: usize = 40;

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

/// Expired fronts an insert pops from its own class FIFO on the way in, so
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
    /// Byte budget, charging each frame its length plus
    /// [`OVERHEAD_PER_ENTRY`]; 0 = unlimited. The daemon sets one.
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
    /// Inserts refused because one frame exceeds the whole byte budget.
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
    /// Larger than the whole byte budget; not stored.
    TooLarge,
}

/// A cached frame found by a lookup.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    /// The datagram exactly as received.
    pub frame: &'a Bytes,
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
    /// keeps each class FIFO in deadline order.
    clock_ms: u64,
    index: HashMap<u64, u32, SeededState>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    lru_head: u32,
    lru_tail: u32,
    queues: [VecDeque<QEntry>; CLASSES],
    /// Frames held per class, to tell how much of each FIFO is tombstones.
    class_live: [usize; CLASSES],
    /// Log slots allocated over all flows (the sum of their capacities).
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
    pub fn get(&self, seq: u64) -> Option<Hit<'a>> {
        let flow = self.flow;
        let slot = &flow.log[flow.pos(seq)?];
        let frame = slot.frame.as_ref()?;
        (slot.meta.deadline() > self.now_ms).then_some(Hit { frame, group: slot.meta.group() })
    }

    /// Highest SeqNum stored in the flow's current epoch.
    pub fn highest(&self) -> u64 {
        self.flow.highest
    }
}

impl Cache {
    /// An empty shard whose clock starts at `now`.
    pub fn new(settings: CacheSettings, now: Instant) -> Self {
        let ttl_ms = TtlClass::ALL.map(|c| duration_ms(settings.ttls.get(c)));
        Cache {
            settings,
            ttl_ms,
            origin: now,
            clock_ms: 0,
            index: HashMap::with_hasher(SeededState::random()),
            flows: Vec::new(),
            free: Vec::new(),
            lru_head: NIL,
            lru_tail: NIL,
            queues: Default::default(),
            class_live: [0; CLASSES],
            slots: 0,
            cands: VecDeque::new(),
            cand_live: 0,
            cand_charge: 0,
            next_cand: 0,
            stats: CacheStats::default(),
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
            for slot in flow.log.iter().rev() {
                let Some(frame) = &slot.frame else { continue };
                if slot.meta.deadline() <= now_ms {
                    continue;
                }
                if bytes + frame.len() > max_bytes {
                    return out;
                }
                bytes += frame.len();
                out.push(frame.clone());
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
    /// `class`, remembering `group` as where to retransmit it. O(1) amortised
    /// for in-order arrivals; see the module docs for what may be evicted to
    /// make room and when a flow starts a new epoch.
    pub fn insert(
        &mut self,
        now: Instant,
        key: FrameKey,
        class: TtlClass,
        group: u16,
        frame: Bytes,
        origin: Origin,
    ) -> Insert {
        let now_ms = self.ms(now).max(self.clock_ms);
        self.clock_ms = now_ms;
        let len = frame.len();
        let max_bytes = self.settings.max_bytes;
        if max_bytes != 0 && len.saturating_add(OVERHEAD_PER_ENTRY) > max_bytes {
            self.stats.refused_too_large += 1;
            return Insert::TooLarge;
        }
        self.sweep_class(class, now_ms, INSERT_SWEEP, NIL);
        self.sweep_cands(now_ms, INSERT_SWEEP);

        let seq = key.seq;
        let mut new_epoch = false;
        let mut promoted = 0;
        let mut frame = frame;
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
                    let slot = &flow.log[pos];
                    if let Some(held) = &slot.frame {
                        let live = slot.meta.deadline() > now_ms;
                        if live && (*held == frame || !fabric) {
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
                            // yet. Its FIFO entry, and every entry ahead of
                            // it, is expired too, so sweeping that class
                            // frees the slot and keeps "one live entry per
                            // slot" exact.
                            let old_class = slot.meta.class();
                            self.sweep_class(old_class, now_ms, usize::MAX, idx);
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
                    match self.add_evidence(idx, now_ms, seq, class, group, frame) {
                        Ok(held) => return held,
                        Err(confirming) => frame = confirming,
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
        // append (a jump, a log that grew, promoted candidates) added.
        let room = Keep { flow: idx, seq: None, cand: false };
        self.fit(room, Some(len));
        self.put(idx, now_ms, seq, class, group, frame);
        self.fit(Keep { seq: Some(seq), ..room }, None);
        Insert::Inserted { new_epoch, promoted }
    }

    /// The unexpired frame under `key`, if held.
    pub fn get(&self, key: FrameKey, now: Instant) -> Option<Hit<'_>> {
        self.view(key.hash_key, now)?.get(key.seq)
    }

    /// A view of one flow as of `now`, for reading several SeqNums with a
    /// single hash lookup.
    pub fn view(&self, hash_key: u64, now: Instant) -> Option<FlowView<'_>> {
        let &idx = self.index.get(&hash_key)?;
        Some(FlowView { flow: &self.flows[idx as usize], now_ms: self.ms(now) })
    }

    /// Removes expired frames, examining at most [`EXPIRE_BUDGET`] FIFO
    /// entries. Lookups never return expired frames whether or not this has
    /// run; it only gives the memory back.
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
        self.settings.max_per_flow.max(1) as u64
    }

    fn regressed(&self, highest: u64, seq: u64) -> bool {
        seq < highest && highest - seq > self.settings.regression_threshold
    }

    /// Allocates a flow for `hash_key`, evicting the least recently
    /// appended-to flow first if the shard is at `max_flows`.
    fn new_flow(&mut self, hash_key: u64) -> u32 {
        if self.index.len() >= self.settings.max_flows.max(1) && self.lru_head != NIL {
            let victim = self.lru_head;
            let dropped = self.clear_flow(victim);
            self.remove_flow(victim);
            self.stats.evicted_flows += dropped;
        }
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.flows.push(Flow::empty(0));
                (self.flows.len() - 1) as u32
            }
        };
        let flow = &mut self.flows[idx as usize];
        let gen_ = flow.gen_;
        *flow = Flow::empty(gen_);
        flow.hash_key = hash_key;
        self.index.insert(hash_key, idx);
        self.link_tail(idx);
        idx
    }

    /// Drops every held frame of a flow and moves it to a new generation,
    /// which turns its FIFO entries into tombstones. The flow stays mapped.
    /// Returns the number of frames dropped.
    fn clear_flow(&mut self, idx: u32) -> u64 {
        self.drop_cand(idx);
        let flow = &mut self.flows[idx as usize];
        let mut dropped = 0u64;
        let mut bytes = 0u64;
        for slot in flow.log.drain(..) {
            if let Some(f) = slot.frame {
                dropped += 1;
                bytes += f.len() as u64;
                self.class_live[slot.meta.class() as usize] -= 1;
            }
        }
        flow.live = 0;
        flow.highest = 0;
        flow.base = 0;
        flow.gen_ = flow.gen_.wrapping_add(1);
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
        // A new generation, so entries of this flow are tombstones even after
        // the slot is reused.
        flow.gen_ = flow.gen_.wrapping_add(1);
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
        while flow.base < low {
            let Some(slot) = flow.log.pop_front() else { break };
            flow.base += 1;
            if let Some(f) = slot.frame {
                evicted += 1;
                bytes += f.len() as u64;
                self.class_live[slot.meta.class() as usize] -= 1;
            }
        }
        flow.live -= evicted as usize;
        flow.trim();
        self.recap(idx);
        self.stats.entries -= evicted;
        self.stats.bytes -= bytes;
        self.stats.evicted_per_flow += evicted;
    }

    /// Stores a frame whose slot is free and inside the flow's window.
    fn put(&mut self, idx: u32, now_ms: u64, seq: u64, class: TtlClass, group: u16, frame: Bytes) {
        let len = frame.len() as u64;
        let deadline = now_ms.saturating_add(self.ttl_ms[class as usize]);
        let slot = Slot { frame: Some(frame), meta: Meta::new(deadline, class, group) };
        let flow = &mut self.flows[idx as usize];
        flow.place(seq, slot);
        flow.live += 1;
        let gen_ = flow.gen_;
        self.recap(idx);
        let c = class as usize;
        self.queues[c].push_back(QEntry { flow: idx, gen_, seq });
        self.class_live[c] += 1;
        if self.queues[c].len() > 2 * self.class_live[c] + COMPACT_SLACK {
            self.compact(c);
        }
        self.stats.entries += 1;
        self.stats.bytes += len;
        self.stats.inserted += 1;
    }

    /// What the byte budget is compared against; see the module docs.
    fn charge(&self) -> u64 {
        let s = &self.stats;
        s.bytes
            + s.entries * (OVERHEAD_PER_ENTRY - SLOT_BYTES) as u64
            + self.slots * SLOT_BYTES as u64
            + self.cand_charge
    }

    /// Re-reads a flow's log capacity into the slot total. Called after
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
    /// unmapping its flow. With `incoming`, makes room for one more frame of
    /// that length, as far as evicting can.
    fn fit(&mut self, keep: Keep, incoming: Option<usize>) {
        // The frame and its FIFO entry; its slot is charged with its log's
        // capacity, which the call after the append settles.
        let (more_keys, more_bytes) =
            incoming.map_or((0, 0), |len| (1, len + OVERHEAD_PER_ENTRY - SLOT_BYTES));
        let max_keys = self.settings.max_keys as u64;
        if max_keys != 0 {
            while self.stats.entries + more_keys > max_keys {
                if self.evict_oldest(keep, true).is_none() {
                    break;
                }
                self.stats.evicted_max_keys += 1;
            }
        }
        let max_bytes = self.settings.max_bytes as u64;
        if max_bytes != 0 {
            while self.charge() + more_bytes as u64 > max_bytes {
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
    }

    /// Removes the frame inserted first among the six class FIFO fronts,
    /// or the candidate epoch started first if it is older (unless
    /// `frames_only`).
    fn evict_oldest(&mut self, keep: Keep, frames_only: bool) -> Option<Evicted> {
        // (inserted ms, class FIFO or CLASSES for the candidate FIFO)
        let mut best: Option<(u64, usize)> = None;
        for c in 0..CLASSES {
            while let Some(&e) = self.queues[c].front() {
                match self.resolve(e) {
                    Some(pos) => {
                        // The kept frame is its FIFO's newest entry, so at
                        // the front it is the only live one.
                        if e.flow == keep.flow && keep.seq == Some(e.seq) {
                            break;
                        }
                        let deadline = self.flows[e.flow as usize].log[pos].meta.deadline();
                        let inserted = deadline.saturating_sub(self.ttl_ms[c]);
                        if best.is_none_or(|(t, _)| inserted < t) {
                            best = Some((inserted, c));
                        }
                        break;
                    }
                    None => {
                        self.queues[c].pop_front();
                    }
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
        let e = self.queues[c].pop_front()?;
        let pos = self.resolve(e)?;
        self.take(e.flow, pos, keep.flow);
        Some(Evicted::Frame)
    }

    /// The candidate a candidate-FIFO entry refers to, `None` for a
    /// tombstone.
    fn cand_of(&self, e: CEntry) -> Option<&Candidate> {
        self.flows.get(e.flow as usize)?.cand.as_deref().filter(|c| c.id == e.id)
    }

    /// Holds a frame as evidence of a new epoch for flow `idx`, or, when it
    /// is the [`EPOCH_EVIDENCE`]th, hands it back (`Err`) for
    /// [`Cache::start_epoch`].
    fn add_evidence(
        &mut self,
        idx: u32,
        now_ms: u64,
        seq: u64,
        class: TtlClass,
        group: u16,
        frame: Bytes,
    ) -> Result<Insert, Bytes> {
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
                return Ok(Insert::Duplicate);
            }
            let (lo, hi) = c.bounds();
            if hi.max(seq) - lo.min(seq) > span {
                // Not the same restarted proxy: the newest evidence wins.
                self.drop_cand(idx);
            }
        }
        let n = self.flows[idx as usize].cand.as_ref().map_or(0, |c| c.n);
        if n + 1 >= EPOCH_EVIDENCE {
            return Err(frame);
        }
        self.stats.epoch_candidates += 1;
        self.cand_charge += frame.len() as u64;
        let pending = Pending { seq, frame: Some(frame), meta: Meta::new(0, class, group) };
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
        Ok(Insert::Candidate)
    }

    /// Confirms flow `idx`'s candidate epoch: drops its old frames and
    /// stores the candidates as of `now_ms`. Returns how many were stored.
    fn start_epoch(&mut self, idx: u32, now_ms: u64) -> usize {
        let cand = self.flows[idx as usize].cand.take();
        if let Some(c) = &cand {
            self.cand_charge -= c.charge();
            self.cand_live -= 1;
        }
        let dropped = self.clear_flow(idx);
        self.stats.epoch_resets += 1;
        self.stats.evicted_epoch += dropped;
        let Some(mut c) = cand else { return 0 };
        let n = c.n;
        c.frames[..n].sort_unstable_by_key(|p| p.seq);
        for p in &mut c.frames[..n] {
            let Some(frame) = p.frame.take() else { continue };
            self.advance(idx, p.seq);
            self.put(idx, now_ms, p.seq, p.meta.class(), p.meta.group(), frame);
        }
        n
    }

    /// Drops flow `idx`'s candidate epoch, if any.
    fn drop_cand(&mut self, idx: u32) {
        let Some(c) = self.flows[idx as usize].cand.take() else { return };
        self.cand_charge -= c.charge();
        self.cand_live -= 1;
        self.stats.epoch_candidates_dropped += 1;
    }

    /// Pops aged (and tombstone) fronts of the candidate FIFO, examining at
    /// most `budget` entries. Returns whether the budget ran out.
    fn sweep_cands(&mut self, now_ms: u64, budget: usize) -> bool {
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

    /// Pops expired (and tombstone) fronts of one class FIFO, examining at
    /// most `budget` entries. Returns (frames expired, entries examined,
    /// budget ran out).
    fn sweep_class(
        &mut self,
        class: TtlClass,
        now_ms: u64,
        budget: usize,
        pin: u32,
    ) -> (usize, usize, bool) {
        let q = class as usize;
        let (mut expired, mut work) = (0, 0);
        while let Some(&e) = self.queues[q].front() {
            if work == budget {
                return (expired, work, true);
            }
            work += 1;
            if let Some(pos) = self.resolve(e) {
                if self.flows[e.flow as usize].log[pos].meta.deadline() > now_ms {
                    break;
                }
                self.take(e.flow, pos, pin);
                self.stats.evicted_ttl += 1;
                expired += 1;
            }
            self.queues[q].pop_front();
        }
        shrink_queue(&mut self.queues[q]);
        (expired, work, false)
    }

    /// The log position a FIFO entry refers to, or `None` for a tombstone.
    /// Exact: within one generation a SeqNum's slot is emptied only by
    /// popping its entry or by sliding below the window, which it can never
    /// re-enter, so an occupied slot always belongs to the entry naming it.
    fn resolve(&self, e: QEntry) -> Option<usize> {
        resolve(&self.flows, e)
    }

    /// Drops one FIFO's tombstones. Called when they outnumber its live
    /// entries (plus slack), so the O(len) pass is paid for by the
    /// tombstones made since the last one: O(1) amortised, and a FIFO never
    /// holds much more than twice its live entries.
    fn compact(&mut self, c: usize) {
        let flows = &self.flows;
        let q = &mut self.queues[c];
        q.retain(|&e| resolve(flows, e).is_some());
        shrink_queue(q);
    }

    /// Empties one slot, keeping the log tight around held frames and
    /// unmapping the flow when it empties (unless it is `pin`).
    fn take(&mut self, idx: u32, pos: usize, pin: u32) {
        let flow = &mut self.flows[idx as usize];
        let Some(frame) = flow.log[pos].frame.take() else { return };
        self.class_live[flow.log[pos].meta.class() as usize] -= 1;
        flow.live -= 1;
        flow.trim();
        let empty = flow.live == 0;
        self.recap(idx);
        self.stats.entries -= 1;
        self.stats.bytes -= frame.len() as u64;
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

const NIL: u32 = u32::MAX;

/// Tombstones a FIFO may hold beyond its live entries before compaction.
const COMPACT_SLACK: usize = 1024;

fn resolve(flows: &[Flow], e: QEntry) -> Option<usize> {
    let flow = flows.get(e.flow as usize)?;
    if flow.gen_ != e.gen_ {
        return None;
    }
    let pos = flow.pos(e.seq)?;
    flow.log[pos].frame.is_some().then_some(pos)
}

/// Gives back FIFO capacity left over from a burst, once it is mostly
/// unused (O(1) amortised, as for logs).
fn shrink_queue<T>(q: &mut VecDeque<T>) {
    let (len, cap) = (q.len(), q.capacity());
    if cap > COMPACT_SLACK && len < cap / 4 {
        q.shrink_to(len * 2);
    }
}

/// One flow's log. `log[i]` holds SeqNum `base + i`.
struct Flow {
    hash_key: u64,
    log: VecDeque<Slot>,
    base: u64,
    highest: u64,
    live: usize,
    /// `log.capacity()` as last counted in the shard's slot total.
    cap: usize,
    /// Evidence of a new epoch, if any (see the module docs).
    cand: Option<Box<Candidate>>,
    gen_: u32,
    prev: u32,
    next: u32,
}

impl Flow {
    fn empty(gen_: u32) -> Self {
        Flow {
            hash_key: 0,
            log: VecDeque::new(),
            base: 0,
            highest: 0,
            live: 0,
            cap: 0,
            cand: None,
            gen_,
            prev: NIL,
            next: NIL,
        }
    }

    fn pos(&self, seq: u64) -> Option<usize> {
        let off = seq.checked_sub(self.base)?;
        (off < self.log.len() as u64).then_some(off as usize)
    }

    /// Lowest SeqNum the flow may hold: the window is the newest
    /// `max_per_flow` SeqNums up to the highest.
    fn window_low(&self, max_per_flow: u64) -> u64 {
        self.highest.saturating_sub(max_per_flow - 1)
    }

    /// Puts `slot` at `seq`, growing the log with empty slots as needed. The
    /// caller has checked `seq` is inside the window and its slot empty, so
    /// the log never spans more than `max_per_flow` SeqNums.
    fn place(&mut self, seq: u64, slot: Slot) {
        if self.log.is_empty() {
            self.base = seq;
            self.log.push_back(slot);
        } else if seq < self.base {
            for _ in seq + 1..self.base {
                self.log.push_front(Slot::VACANT);
            }
            self.log.push_front(slot);
            self.base = seq;
        } else if let Some(pos) = self.pos(seq) {
            self.log[pos] = slot;
        } else {
            let holes = (seq - self.base) as usize - self.log.len();
            if holes > 0 {
                // Room for the frame too, so a long jump allocates once
                // (the larger of double and what it needs), not the jump
                // and then double that for the frame.
                self.log.reserve(holes + 1);
                self.log.resize_with(self.log.len() + holes, || Slot::VACANT);
            }
            self.log.push_back(slot);
        }
    }

    /// Drops empty slots at both ends, so the log spans only held frames.
    fn trim(&mut self) {
        while self.log.front().is_some_and(|s| s.frame.is_none()) {
            self.log.pop_front();
            self.base += 1;
        }
        while self.log.back().is_some_and(|s| s.frame.is_none()) {
            self.log.pop_back();
        }
        self.shrink();
    }

    /// Gives back capacity once a log has emptied to a quarter of it (halving
    /// the copy cost over the removals that got it there: O(1) amortised).
    fn shrink(&mut self) {
        let (len, cap) = (self.log.len(), self.log.capacity());
        if cap > 64 && len < cap / 4 {
            self.log.shrink_to(len * 2);
        }
    }
}

/// One log position: the datagram, if held, and its packed metadata.
struct Slot {
    frame: Option<Bytes>,
    meta: Meta,
}

impl Slot {
    const VACANT: Slot = Slot { frame: None, meta: Meta(0) };
}

/// Deadline (ms since the cache's origin, 44 bits: 557 years), TTL class
/// (4 bits) and retransmit group (16 bits) in one word, so a slot is exactly
/// a `Bytes` plus 8 bytes.
#[derive(Clone, Copy)]
struct Meta(u64);

impl Meta {
    const DEADLINE_MAX: u64 = (1 << 44) - 1;

    fn new(deadline_ms: u64, class: TtlClass, group: u16) -> Self {
        Meta(
            (deadline_ms.min(Self::DEADLINE_MAX) << 20) | ((class as u64) << 16) | u64::from(group),
        )
    }

    fn deadline(self) -> u64 {
        self.0 >> 20
    }

    fn class(self) -> TtlClass {
        TtlClass::ALL[(((self.0 >> 16) & 0xF) as usize).min(CLASSES - 1)]
    }

    fn group(self) -> u16 {
        self.0 as u16
    }
}

/// A flow's candidate epoch: up to [`EPOCH_EVIDENCE`] − 1 frames that
/// conflict with or fall far below its current epoch.
struct Candidate {
    /// Matches its entry in the candidate FIFO.
    id: u64,
    /// When its first frame arrived; it ages out [`EPOCH_EVIDENCE_TTL`] later.
    started_ms: u64,
    n: usize,
    frames: [Pending; EPOCH_EVIDENCE - 1],
}

impl Candidate {
    fn held(&self) -> &[Pending] {
        &self.frames[..self.n]
    }

    /// Lowest and highest SeqNum held (`n` ≥ 1 while it exists).
    fn bounds(&self) -> (u64, u64) {
        let seqs = self.held().iter().map(|p| p.seq);
        (seqs.clone().min().unwrap_or(0), seqs.max().unwrap_or(0))
    }

    /// Whether it has reached the old epoch's head.
    fn caught_up(&self, highest: u64) -> bool {
        self.bounds().1 >= highest
    }

    /// What the byte budget charges for it.
    fn charge(&self) -> u64 {
        let frames: usize =
            self.held().iter().map(|p| p.frame.as_ref().map_or(0, Bytes::len)).sum();
        (CANDIDATE_OVERHEAD + frames) as u64
    }
}

/// One frame of evidence; `meta` carries its class and group (no deadline:
/// it is stored as of the confirmation).
struct Pending {
    seq: u64,
    frame: Option<Bytes>,
    meta: Meta,
}

impl Pending {
    const VACANT: Pending = Pending { seq: 0, frame: None, meta: Meta(0) };
}

/// A candidate FIFO entry: the flow's slab index and the candidate's id.
#[derive(Clone, Copy)]
struct CEntry {
    flow: u32,
    id: u64,
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

/// A class FIFO entry: which flow (slab index and generation) and SeqNum.
#[derive(Clone, Copy)]
struct QEntry {
    flow: u32,
    gen_: u32,
    seq: u64,
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
            let held: Vec<&Slot> = f.log.iter().filter(|s| s.frame.is_some()).collect();
            assert_eq!(held.len(), f.live, "live count");
            assert!(f.live > 0, "empty flows are unmapped");
            assert!(f.log.front().is_some_and(|s| s.frame.is_some()), "tight front");
            assert!(f.log.back().is_some_and(|s| s.frame.is_some()), "tight back");
            assert!(f.log.len() as u64 <= mpf, "log spans at most max_per_flow");
            assert!(f.base >= f.window_low(mpf));
            assert!(f.base + f.log.len() as u64 - 1 <= f.highest);
            for s in held {
                entries += 1;
                bytes += s.frame.as_ref().map_or(0, |b| b.len() as u64);
                per_class[s.meta.class() as usize] += 1;
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
        for (c, q) in self.queues.iter().enumerate() {
            let mut live = 0;
            let mut last = 0;
            for &e in q {
                if let Some(pos) = self.resolve(e) {
                    let slot = &self.flows[e.flow as usize].log[pos];
                    assert_eq!(slot.meta.class() as usize, c, "entry in its class FIFO");
                    assert!(slot.meta.deadline() >= last, "FIFO in deadline order");
                    last = slot.meta.deadline();
                    live += 1;
                }
            }
            assert_eq!(live, per_class[c], "one live FIFO entry per held frame");
            assert_eq!(self.class_live[c], per_class[c]);
        }
        let mut n = 0;
        let mut at = self.lru_head;
        while at != NIL {
            n += 1;
            at = self.flows[at as usize].next;
        }
        assert_eq!(n, self.index.len(), "LRU list holds every flow");
        if self.settings.max_keys != 0 {
            assert!(entries <= self.settings.max_keys as u64);
        }
        if self.settings.max_bytes != 0 {
            assert!(self.memory() <= self.settings.max_bytes as u64, "within the byte budget");
        }
        assert!(self.index.len() <= self.settings.max_flows.max(1));
    }

    /// The memory the shard's per-frame structures hold, recomputed from the
    /// allocations themselves: frames with their bookkeeping, every log's
    /// allocated slots, candidates. What the byte budget bounds.
    pub(crate) fn memory(&self) -> u64 {
        let mut m = 0u64;
        for &idx in self.index.values() {
            let f = &self.flows[idx as usize];
            m += (f.log.capacity() * SLOT_BYTES) as u64;
            for s in f.log.iter() {
                if let Some(b) = &s.frame {
                    m += (b.len() + OVERHEAD_PER_ENTRY - SLOT_BYTES) as u64;
                }
            }
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
                if let Some(b) = &s.frame {
                    out.push((FrameKey { hash_key, seq: f.base + i as u64 }, b.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(hash_key: u64, seq: u64) -> FrameKey {
        FrameKey { hash_key, seq }
    }

    fn frame(hk: u64, seq: u64, len: usize) -> Bytes {
        let mut v = vec![0u8; len.max(16)];
        v[..8].copy_from_slice(&hk.to_be_bytes());
        v[8..16].copy_from_slice(&seq.to_be_bytes());
        Bytes::from(v)
    }

    fn put(c: &mut Cache, now: Instant, hk: u64, seq: u64) -> Insert {
        c.insert(now, key(hk, seq), TtlClass::Tx, 7, frame(hk, seq, 100), Origin::Fabric)
    }

    fn has(c: &Cache, now: Instant, hk: u64, seq: u64) -> bool {
        c.get(key(hk, seq), now).is_some()
    }

    const NEW: Insert = Insert::Inserted { new_epoch: false, promoted: 0 };

    #[test]
    fn per_entry_overhead_matches_the_structures() {
        let computed = size_of::<Slot>() + size_of::<QEntry>();
        assert_eq!(size_of::<Option<Bytes>>(), 32, "Option<Bytes> uses the niche");
        assert_eq!(size_of::<Slot>(), 40);
        assert_eq!(size_of::<QEntry>(), 16);
        assert_eq!(OVERHEAD_PER_ENTRY, computed);
        assert_eq!(SLOT_BYTES, size_of::<Slot>());
        const { assert!(OVERHEAD_PER_ENTRY <= 64) };
        // A candidate's box, its FIFO entry and one tombstone's worth.
        assert_eq!(CANDIDATE_OVERHEAD, size_of::<Candidate>() + 2 * size_of::<CEntry>());
        // A flow's slab record, its index entry at worst load (a table at
        // 7/8 that just doubled: 16-byte bucket + 1 control byte, twice
        // over) and its free-list slot.
        let index = 2 * (size_of::<(u64, u32)>() + 1);
        assert!(size_of::<Flow>() + index + size_of::<u32>() <= FLOW_STATE_BYTES);
    }

    #[test]
    fn append_lookup_and_range() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=10 {
            assert_eq!(put(&mut c, t0, 1, seq), NEW);
        }
        let hit = c.get(key(1, 4), t0).unwrap();
        assert_eq!(hit.frame, &frame(1, 4, 100));
        assert_eq!(hit.group, 7);
        assert!(!has(&c, t0, 1, 0) && !has(&c, t0, 1, 11) && !has(&c, t0, 2, 1));
        let view = c.view(1, t0).unwrap();
        let got: Vec<u64> = (3..=12).filter(|&s| view.get(s).is_some()).collect();
        assert_eq!(got, (3..=10).collect::<Vec<_>>());
        assert_eq!(view.highest(), 10);
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.flows, s.inserted), (10, 1000, 1, 10));
        c.check_invariants();
    }

    #[test]
    fn out_of_order_and_holes() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in [5, 3, 9, 4, 1] {
            assert_eq!(put(&mut c, t0, 1, seq), NEW);
            c.check_invariants();
        }
        for seq in 0..=10 {
            assert_eq!(has(&c, t0, 1, seq), [1, 3, 4, 5, 9].contains(&seq), "{seq}");
        }
    }

    #[test]
    fn duplicates_keep_the_first_copy() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        let first = frame(1, 1, 50);
        c.insert(t0, key(1, 1), TtlClass::Tx, 1, first.clone(), Origin::Fabric);
        // A byte-identical copy (e.g. our own retransmit looping back).
        let again = c.insert(t0, key(1, 1), TtlClass::Tx, 2, first.clone(), Origin::Fabric);
        assert_eq!(again, Insert::Duplicate);
        let hit = c.get(key(1, 1), t0).unwrap();
        assert_eq!((hit.frame, hit.group), (&first, 1));
        assert_eq!((c.stats().duplicates, c.stats().bytes), (1, 50));
        c.check_invariants();
    }

    #[test]
    fn ttl_per_class_at_exact_boundaries() {
        let t0 = Instant::now();
        let ttls = Ttls {
            tx: Duration::from_secs(10),
            block: Duration::from_secs(20),
            subtree: Duration::from_secs(30),
            anchor: Duration::from_secs(40),
            beef: Duration::from_secs(50),
            fallback: Duration::from_secs(70),
        };
        let mut c = Cache::new(CacheSettings { ttls, ..Default::default() }, t0);
        for (i, class) in TtlClass::ALL.into_iter().enumerate() {
            let hk = 100 + i as u64;
            c.insert(t0, key(hk, 1), class, 0, frame(hk, 1, 64), Origin::Fabric);
        }
        for (i, class) in TtlClass::ALL.into_iter().enumerate() {
            let hk = 100 + i as u64;
            let ttl = ttls.get(class);
            let just_before = t0 + ttl - Duration::from_millis(1);
            assert!(has(&c, just_before, hk, 1), "{class:?} alive 1 ms before its TTL");
            assert!(has(&c, t0 + ttl - Duration::from_nanos(1), hk, 1), "{class:?}");
            assert!(!has(&c, t0 + ttl, hk, 1), "{class:?} gone at exactly its TTL");
            // The sweep removes it at the same instant, and nothing younger.
            let before = c.len();
            let sweep = c.expire(t0 + ttl);
            assert_eq!((sweep.expired, c.len()), (1, before - 1), "{class:?}");
            assert!(!sweep.more);
            assert_eq!(c.stats().evicted_ttl, i as u64 + 1);
            c.check_invariants();
        }
        assert!(c.is_empty());
        assert_eq!(c.stats().flows, 0, "empty flows are dropped");
    }

    #[test]
    fn expire_is_bounded_per_call() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=10 {
            put(&mut c, t0, 1, seq);
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(c.expire_bounded(later, 4), Sweep { expired: 4, more: true });
        assert_eq!(c.expire_bounded(later, 100), Sweep { expired: 6, more: false });
        c.check_invariants();
    }

    #[test]
    fn expired_but_unswept_copy_is_replaced() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=5 {
            put(&mut c, t0, 1, seq);
        }
        // The insert's own small sweep reaches only the first two; the held
        // copy of 5 is expired but still in its slot.
        let later = t0 + Duration::from_secs(60);
        let fresh = frame(1, 5, 77);
        let r = c.insert(later, key(1, 5), TtlClass::Tx, 3, fresh.clone(), Origin::Recovered);
        assert_eq!(r, NEW);
        let hit = c.get(key(1, 5), later).unwrap();
        assert_eq!((hit.frame, hit.group), (&fresh, 3));
        assert!(!has(&c, later, 1, 4));
        assert_eq!((c.len(), c.stats().evicted_ttl, c.stats().duplicates), (1, 5, 0));
        c.check_invariants();
    }

    #[test]
    fn max_keys_evicts_the_globally_oldest() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings { max_keys: 3, ..Default::default() }, t0);
        let ms = Duration::from_millis;
        put(&mut c, t0, 1, 1);
        c.insert(t0 + ms(1), key(2, 1), TtlClass::Block, 0, frame(2, 1, 10), Origin::Fabric);
        put(&mut c, t0 + ms(2), 1, 2);
        c.insert(t0 + ms(3), key(3, 1), TtlClass::Beef, 0, frame(3, 1, 10), Origin::Fabric);
        let now = t0 + ms(3);
        assert!(!has(&c, now, 1, 1), "oldest went first");
        assert!(has(&c, now, 2, 1) && has(&c, now, 1, 2) && has(&c, now, 3, 1));
        // The block frame has the longest TTL but is now the oldest: next out.
        put(&mut c, t0 + ms(4), 4, 1);
        assert!(!has(&c, now, 2, 1) && has(&c, now, 1, 2));
        assert_eq!((c.len(), c.stats().evicted_max_keys), (3, 2));
        c.check_invariants();
    }

    #[test]
    fn max_bytes_charges_overhead_and_refuses_giants() {
        let t0 = Instant::now();
        // Three frames and the log's four allocated slots (a `VecDeque`'s
        // smallest allocation), one of them unused.
        let budget = 3 * (100 + OVERHEAD_PER_ENTRY) + SLOT_BYTES;
        let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
        for seq in 1..=5 {
            put(&mut c, t0, 1, seq);
            c.check_invariants();
        }
        assert_eq!(c.len(), 3);
        assert!(!has(&c, t0, 1, 2) && has(&c, t0, 1, 3) && has(&c, t0, 1, 5));
        assert_eq!(c.stats().evicted_max_bytes, 2);
        let giant = frame(1, 6, budget - OVERHEAD_PER_ENTRY + 1);
        let r = c.insert(t0, key(1, 6), TtlClass::Tx, 0, giant, Origin::Fabric);
        assert_eq!(r, Insert::TooLarge);
        assert_eq!((c.len(), c.stats().refused_too_large), (3, 1), "nothing evicted for it");
    }

    #[test]
    fn per_flow_window_evicts_and_refuses_stale() {
        let t0 = Instant::now();
        let settings =
            CacheSettings { max_per_flow: 4, regression_threshold: 1000, ..Default::default() };
        let mut c = Cache::new(settings, t0);
        for seq in 1..=6 {
            put(&mut c, t0, 1, seq);
        }
        assert!(!has(&c, t0, 1, 2) && has(&c, t0, 1, 3) && has(&c, t0, 1, 6));
        assert_eq!(c.stats().evicted_per_flow, 2);
        assert_eq!(put(&mut c, t0, 1, 2), Insert::Stale);
        // A jump past the window evicts the rest, holes never count as frames.
        assert_eq!(put(&mut c, t0, 1, 100), NEW);
        assert_eq!((c.len(), c.stats().evicted_per_flow), (1, 6));
        assert_eq!(put(&mut c, t0, 1, 98), NEW);
        assert_eq!(c.stats().refused_stale, 1);
        c.check_invariants();
    }

    #[test]
    fn fifo_tombstones_stay_bounded_for_a_busy_flow() {
        // 100 000 frames within one TTL through a 64-SeqNum window: all but
        // 64 are evicted per flow, and their FIFO entries must not pile up.
        let t0 = Instant::now();
        let settings = CacheSettings { max_per_flow: 64, ..Default::default() };
        let mut c = Cache::new(settings, t0);
        for seq in 1..=100_000 {
            put(&mut c, t0, 1, seq);
        }
        assert_eq!(c.len(), 64);
        assert!(c.queues[0].len() <= 2 * 64 + COMPACT_SLACK + 1, "{}", c.queues[0].len());
        assert!(c.queues[0].capacity() < 16 * 1024, "{}", c.queues[0].capacity());
        c.check_invariants();
    }

    #[test]
    fn max_flows_evicts_the_least_recently_appended_flow() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings { max_flows: 2, ..Default::default() }, t0);
        put(&mut c, t0, 1, 1);
        put(&mut c, t0, 2, 1);
        put(&mut c, t0, 1, 2); // flow 1 is now the most recent
        put(&mut c, t0, 3, 1);
        assert!(has(&c, t0, 1, 1) && has(&c, t0, 1, 2) && has(&c, t0, 3, 1));
        assert!(!has(&c, t0, 2, 1));
        let s = c.stats();
        assert_eq!((s.flows, s.evicted_flows, s.entries), (2, 1, 3));
        c.check_invariants();
    }

    fn forged(hk: u64, seq: u64) -> Bytes {
        let mut v = frame(hk, seq, 100).to_vec();
        v[99] = 0xEE;
        Bytes::from(v)
    }

    fn put_bytes(c: &mut Cache, now: Instant, hk: u64, seq: u64, b: &Bytes) -> Insert {
        c.insert(now, key(hk, seq), TtlClass::Tx, 7, b.clone(), Origin::Fabric)
    }

    fn serves(c: &Cache, now: Instant, hk: u64, seq: u64, want: &Bytes) -> bool {
        c.get(key(hk, seq), now).is_some_and(|h| h.frame == want)
    }

    #[test]
    fn one_forged_frame_never_changes_served_bytes_nor_resets() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=100 {
            put(&mut c, t0, 1, seq);
        }
        for seq in 3000..=3050 {
            put(&mut c, t0, 2, seq);
        }
        // Same key, other bytes: evidence, not a reset.
        assert_eq!(put_bytes(&mut c, t0, 1, 50, &forged(1, 50)), Insert::Candidate);
        // A SeqNum far below the head: evidence too, and not served.
        assert_eq!(put_bytes(&mut c, t0, 2, 1, &forged(2, 1)), Insert::Candidate);
        assert!(!has(&c, t0, 2, 1));
        for seq in 1..=100 {
            assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{seq}");
        }
        for seq in 3000..=3050 {
            assert!(serves(&c, t0, 2, seq, &frame(2, seq, 100)), "{seq}");
        }
        let s = c.stats();
        assert_eq!((s.epoch_resets, s.evicted_epoch, s.epoch_candidates), (0, 0, 2));
        assert_eq!((s.entries, s.bytes), (151, 15_100), "candidates are not frames");
        c.check_invariants();
        // Two forgeries, then the old epoch goes on: the candidate is gone,
        // so two more forgeries still confirm nothing.
        assert_eq!(put_bytes(&mut c, t0, 1, 51, &forged(1, 51)), Insert::Candidate);
        assert_eq!(put(&mut c, t0, 1, 101), NEW);
        assert_eq!(c.stats().epoch_candidates_dropped, 1);
        assert_eq!(put_bytes(&mut c, t0, 1, 52, &forged(1, 52)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 1, 53, &forged(1, 53)), Insert::Candidate);
        // The same forged SeqNum again, whatever its bytes, is no more
        // evidence.
        assert_eq!(put_bytes(&mut c, t0, 1, 53, &frame(1, 53, 99)), Insert::Duplicate);
        for seq in 1..=101 {
            assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{seq}");
        }
        assert_eq!(c.stats().epoch_resets, 0);
        c.check_invariants();
    }

    #[test]
    fn a_restart_is_confirmed_by_its_third_frame() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        let new = |seq: u64| forged(1, seq);
        for seq in 1..=200 {
            put(&mut c, t0, 1, seq);
        }
        // The restarted proxy counts 1, 2, ... with other frames.
        assert_eq!(put_bytes(&mut c, t0, 1, 1, &new(1)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 1, 2, &new(2)), Insert::Candidate);
        assert!(serves(&c, t0, 1, 2, &frame(1, 2, 100)), "unconfirmed: the old frame");
        // A late frame of the old epoch (reordering) does not discard it.
        assert_eq!(put(&mut c, t0, 1, 150), Insert::Duplicate);
        let r = put_bytes(&mut c, t0, 1, 3, &new(3));
        assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
        for seq in 1..=3 {
            assert!(serves(&c, t0, 1, seq, &new(seq)), "{seq}");
        }
        for seq in 4..=200 {
            assert!(!has(&c, t0, 1, seq), "pre-restart {seq} served");
        }
        for seq in 4..=300 {
            assert_eq!(put_bytes(&mut c, t0, 1, seq, &new(seq)), NEW, "{seq}");
        }
        let s = c.stats();
        assert_eq!((s.epoch_resets, s.evicted_epoch, s.entries), (1, 200, 300));
        c.check_invariants();

        // Regression rather than conflict: a flow far ahead.
        for seq in 5000..5010 {
            put(&mut c, t0, 2, seq);
        }
        assert_eq!(put(&mut c, t0, 2, 4000), NEW, "small reordering is no evidence");
        assert_eq!(put_bytes(&mut c, t0, 2, 1, &forged(2, 1)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 2, 3, &forged(2, 3)), Insert::Candidate);
        let r = put_bytes(&mut c, t0, 2, 2, &forged(2, 2));
        assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
        assert!((4000..5010).all(|seq| !has(&c, t0, 2, seq)));
        assert!((1..=3).all(|seq| serves(&c, t0, 2, seq, &forged(2, seq))));

        // A flow that held fewer frames than the evidence needs: the
        // candidate catches up with the old head and counts on above it.
        put(&mut c, t0, 3, 1);
        assert_eq!(put_bytes(&mut c, t0, 3, 1, &forged(3, 1)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 3, 2, &forged(3, 2)), Insert::Candidate);
        assert!(!has(&c, t0, 3, 2));
        let r = put_bytes(&mut c, t0, 3, 3, &forged(3, 3));
        assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
        assert!(serves(&c, t0, 3, 1, &forged(3, 1)));
        assert_eq!(c.stats().epoch_resets, 3);
        c.check_invariants();
    }

    #[test]
    fn a_jump_past_the_window_takes_evidence_too() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=100 {
            put(&mut c, t0, 1, seq);
        }
        // One forged frame far ahead would push every held frame out.
        let far = 100 + 65_537;
        assert_eq!(put_bytes(&mut c, t0, 1, far, &forged(1, far)), Insert::Candidate);
        assert!((1..=100).all(|seq| serves(&c, t0, 1, seq, &frame(1, seq, 100))));
        assert!(!has(&c, t0, 1, far));
        // The flow goes on; the candidate goes.
        assert_eq!(put(&mut c, t0, 1, 101), NEW);
        assert_eq!((c.cand_live, c.stats().evicted_per_flow), (0, 0));
        // A real jump (a long outage) is confirmed by its third frame, and
        // the two before it are kept.
        let jump = 101 + 70_000;
        assert_eq!(put(&mut c, t0, 1, jump), Insert::Candidate);
        assert_eq!(put(&mut c, t0, 1, jump + 2), Insert::Candidate);
        let r = put(&mut c, t0, 1, jump + 1);
        assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
        assert!((jump..jump + 3).all(|seq| has(&c, t0, 1, seq)));
        assert_eq!(c.len(), 3);
        c.check_invariants();
    }

    #[test]
    fn evidence_must_be_consistent_and_recent() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=3000 {
            put(&mut c, t0, 1, seq);
        }
        // SeqNums farther apart than the regression threshold are not one
        // restarted proxy: the newest evidence starts over.
        assert_eq!(put_bytes(&mut c, t0, 1, 1, &forged(1, 1)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 1, 1900, &forged(1, 1900)), Insert::Candidate);
        assert_eq!(put_bytes(&mut c, t0, 1, 2, &forged(1, 2)), Insert::Candidate);
        assert_eq!(c.stats().epoch_resets, 0);
        // Evidence older than EPOCH_EVIDENCE_TTL ages out, swept or not.
        let later = t0 + EPOCH_EVIDENCE_TTL;
        assert_eq!(put_bytes(&mut c, later, 1, 3, &forged(1, 3)), Insert::Candidate);
        assert_eq!(c.stats().epoch_resets, 0);
        assert!(serves(&c, later, 1, 3, &frame(1, 3, 100)));
        let r = put_bytes(&mut c, later, 1, 4, &forged(1, 4));
        assert_eq!(r, Insert::Candidate);
        let r = put_bytes(&mut c, later, 1, 5, &forged(1, 5));
        assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
        c.check_invariants();
        // The sweep ages candidates out too.
        put_bytes(&mut c, later, 1, 1, &forged(1, 1));
        put(&mut c, later, 2, 5000);
        assert_eq!(put_bytes(&mut c, later, 2, 1, &forged(2, 1)), Insert::Candidate);
        assert_eq!(c.cand_live, 1);
        c.expire(later + EPOCH_EVIDENCE_TTL);
        assert_eq!((c.cand_live, c.cand_charge), (0, 0));
        c.check_invariants();
    }

    #[test]
    fn recovered_frames_are_never_evidence() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1000..3000 {
            put(&mut c, t0, 1, seq);
        }
        let mut late = |seq: u64| {
            c.insert(t0, key(1, seq), TtlClass::Tx, 0, forged(1, seq), Origin::Recovered)
        };
        for seq in [1, 2, 3, 4] {
            assert_eq!(late(seq), NEW, "far behind is just late");
        }
        for seq in [1000, 1001, 1002, 1003] {
            assert_eq!(late(seq), Insert::Duplicate, "other bytes: the first copy stays");
        }
        assert!(serves(&c, t0, 1, 1000, &frame(1, 1000, 100)));
        let s = c.stats();
        assert_eq!((s.epoch_resets, s.epoch_candidates), (0, 0));
        c.check_invariants();
    }

    #[test]
    fn sparse_seqnums_are_charged_their_span() {
        // The issue 18 attack, scaled down: flows of two tiny frames at
        // SeqNums 1 and 16 384. Before the span was charged, 200 such flows
        // held 200 × 16 384 slots (131 MB) against a 4 MiB budget.
        let t0 = Instant::now();
        let budget = 4 << 20;
        let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
        for hk in 1..=200 {
            put(&mut c, t0, hk, 1);
            put(&mut c, t0, hk, 16_384);
            assert!(c.memory() <= budget as u64, "flow {hk}: {}", c.memory());
        }
        c.check_invariants();
        // The slots really allocated, not just what the charge says.
        let slots: usize = c.index.values().map(|&i| c.flows[i as usize].log.capacity()).sum();
        assert!(slots * SLOT_BYTES <= budget, "{slots} slots");
        assert!(c.stats().evicted_max_bytes > 0);
        // A legitimate flow still gets its frames cached and served.
        for seq in 1..=1000 {
            assert_eq!(put(&mut c, t0, 9999, seq), NEW);
        }
        assert!((1..=1000).all(|seq| has(&c, t0, 9999, seq)));
        c.check_invariants();
    }

    #[test]
    fn a_lone_frame_that_fits_is_kept_even_when_its_log_is_sparse() {
        let t0 = Instant::now();
        let budget = 2 * (100 + OVERHEAD_PER_ENTRY) + CANDIDATE_OVERHEAD + 100;
        let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
        put(&mut c, t0, 1, 1);
        // 1 000 holes do not fit: the older frame goes, the new one stays.
        assert_eq!(put(&mut c, t0, 1, 1000), NEW);
        assert!(has(&c, t0, 1, 1000) && !has(&c, t0, 1, 1));
        c.check_invariants();
        // Candidates are charged too.
        assert_eq!(put_bytes(&mut c, t0, 1, 1000, &forged(1, 1000)), Insert::Candidate);
        assert!(serves(&c, t0, 1, 1000, &frame(1, 1000, 100)));
        assert_eq!(c.cand_charge, (CANDIDATE_OVERHEAD + 100) as u64);
        c.check_invariants();
        // A second flow's frame makes room by evicting the oldest: flow 1's
        // frame, and with the flow its candidate.
        put(&mut c, t0 + Duration::from_millis(1), 2, 1);
        assert_eq!((c.cand_live, c.stats().epoch_candidates_dropped), (0, 1));
        assert!(!has(&c, t0, 1, 1000) && has(&c, t0, 2, 1));
        c.check_invariants();
    }

    #[test]
    fn invalidate_drops_a_flow() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=3 {
            put(&mut c, t0, 1, seq);
            put(&mut c, t0, 2, seq);
        }
        assert_eq!(c.invalidate(1), 3);
        assert_eq!(c.invalidate(1), 0);
        assert!(!has(&c, t0, 1, 1) && has(&c, t0, 2, 1));
        let s = c.stats();
        assert_eq!((s.invalidations, s.evicted_invalidated, s.flows, s.entries), (1, 3, 1, 3));
        // The same HashKey starts afresh, and the old FIFO entries are inert.
        assert_eq!(put(&mut c, t0, 1, 2), NEW);
        assert_eq!(c.expire(t0 + Duration::from_secs(60)).expired, 4);
        c.check_invariants();
        assert!(c.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Store at the flow's cursor + `step` (mostly small steps forward,
        /// some reordering, the odd proxy restart).
        Insert {
            flow: usize,
            step: i64,
            len: usize,
            class: usize,
            recovered: bool,
        },
        Advance(u64),
        Expire(usize),
        /// Look up `back` below the flow's cursor.
        Lookup {
            flow: usize,
            back: u64,
        },
        Invalidate(usize),
    }

    const FLOWS: usize = 4;

    fn op() -> impl Strategy<Value = Op> {
        let step = prop_oneof![12 => 0..4i64, 3 => -60..0i64, 1 => Just(i64::MIN)];
        let len = prop_oneof![10 => 1..64usize, 1 => 64..400usize];
        prop_oneof![
            8 => (0..FLOWS, step, len, 0..CLASSES, any::<bool>()).prop_map(
                |(flow, step, len, class, r)| {
                    Op::Insert { flow, step, len, class, recovered: r && step < 0 }
                }
            ),
            2 => (0..3_000u64).prop_map(Op::Advance),
            1 => (0..20usize).prop_map(Op::Expire),
            4 => (0..FLOWS, 0..80u64).prop_map(|(flow, back)| Op::Lookup { flow, back }),
            1 => (0..FLOWS).prop_map(Op::Invalidate),
        ]
    }

    /// Runs `ops` against a cache and a model of what each key should hold.
    fn run(ops: Vec<Op>, settings: CacheSettings) -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let ttls = settings.ttls;
        let mut c = Cache::new(settings, t0);
        // What each key should hold if held: (bytes, deadline).
        let mut model: HashMap<FrameKey, (Bytes, Instant)> = HashMap::new();
        let stored = |model: &HashMap<FrameKey, (Bytes, Instant)>, k: FrameKey| {
            model
                .get(&k)
                .cloned()
                .ok_or_else(|| TestCaseError::fail(format!("{k:?} held but never stored")))
        };
        let mut now = t0;
        let mut stamp = 0u8;
        let mut cursor = [1u64; FLOWS];
        // Frames last held as evidence, and how many were since the flow's
        // last epoch: only candidates may appear when an epoch starts, and
        // only after EPOCH_EVIDENCE − 1 of them.
        let mut cands: HashMap<FrameKey, (Bytes, TtlClass)> = HashMap::new();
        let mut evidence = [0usize; FLOWS];
        for op in ops {
            match op {
                Op::Insert { flow: f, step, len, class, recovered } => {
                    let seq = cursor[f].saturating_add_signed(step).max(1);
                    cursor[f] = if step == i64::MIN { 1 } else { cursor[f].max(seq) };
                    let flow = f as u64 + 1;
                    stamp = stamp.wrapping_add(1);
                    let mut v = vec![stamp; len];
                    v[0] = flow as u8;
                    let b = Bytes::from(v);
                    let k = key(flow, seq);
                    let class = TtlClass::ALL[class];
                    let origin = if recovered { Origin::Recovered } else { Origin::Fabric };
                    match c.insert(now, k, class, 0, b.clone(), origin) {
                        Insert::Inserted { new_epoch, promoted } => {
                            if new_epoch {
                                prop_assert!(!recovered, "a recovered frame started an epoch");
                                prop_assert!(evidence[f] + 1 >= EPOCH_EVIDENCE, "{:?}", evidence);
                                model.retain(|mk, _| mk.hash_key != flow);
                                let mut n = 0;
                                for (hk, held) in c.held() {
                                    if hk.hash_key != flow || hk == k {
                                        continue;
                                    }
                                    let (want, class) =
                                        cands.get(&hk).cloned().ok_or_else(|| {
                                            TestCaseError::fail(format!("{hk:?} promoted unseen"))
                                        })?;
                                    prop_assert_eq!(&held, &want);
                                    model.insert(hk, (held, now + ttls.get(class)));
                                    n += 1;
                                }
                                prop_assert!(n <= promoted);
                                cands.retain(|mk, _| mk.hash_key != flow);
                                evidence[f] = 0;
                            } else {
                                prop_assert_eq!(promoted, 0);
                            }
                            model.insert(k, (b.clone(), now + ttls.get(class)));
                            prop_assert_eq!(c.get(k, now).map(|h| h.frame.clone()), Some(b));
                        }
                        Insert::Candidate => {
                            prop_assert!(!recovered, "a recovered frame is never evidence");
                            cands.insert(k, (b, class));
                            evidence[f] += 1;
                        }
                        Insert::Duplicate if c.get(k, now).is_none() => {
                            // A SeqNum the flow's candidate already holds.
                            prop_assert!(cands.contains_key(&k), "{:?}", k);
                        }
                        Insert::Duplicate => {
                            let (held, deadline) = stored(&model, k)?;
                            prop_assert!(deadline > now);
                            prop_assert_eq!(c.get(k, now).map(|h| h.frame.clone()), Some(held));
                        }
                        Insert::Stale | Insert::TooLarge => {}
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Expire(budget) => {
                    c.expire_bounded(now, budget);
                }
                Op::Lookup { flow, back } => {
                    let k = key(flow as u64 + 1, cursor[flow].saturating_sub(back));
                    if let Some(hit) = c.get(k, now) {
                        let (want, deadline) = stored(&model, k)?;
                        prop_assert!(now < deadline, "expired frame served");
                        prop_assert_eq!(hit.frame, &want);
                    }
                }
                Op::Invalidate(f) => {
                    let flow = f as u64 + 1;
                    c.invalidate(flow);
                    model.retain(|mk, _| mk.hash_key != flow);
                    cands.retain(|mk, _| mk.hash_key != flow);
                    evidence[f] = 0;
                }
            }
            c.check_invariants();
            // Everything held is what the model says was last stored (so
            // nothing evicted, invalidated or pre-restart lingers), and
            // `bytes` is exactly the sum of the held frames.
            let held = c.held();
            let total: u64 = held.iter().map(|(_, b)| b.len() as u64).sum();
            prop_assert_eq!(total, c.stats().bytes);
            prop_assert_eq!(held.len() as u64, c.stats().entries);
            for (k, b) in held {
                let (want, deadline) = stored(&model, k)?;
                prop_assert_eq!(b, want);
                // Served exactly while unexpired, swept or not.
                prop_assert_eq!(c.get(k, now).is_some(), now < deadline, "{:?}", k);
            }
        }
        // Once every TTL has passed and the sweep has run, nothing is left.
        let end = now + Duration::from_secs(60);
        while c.expire(end).more {}
        prop_assert!(c.is_empty());
        prop_assert_eq!(c.stats().flows, 0);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random inserts, expiries, lookups and invalidations never return
        /// an expired, evicted, invalidated or pre-restart frame, and the
        /// gauges stay exact.
        #[test]
        fn never_serves_what_it_should_not(
            ops in proptest::collection::vec(op(), 1..400),
            max_keys in prop_oneof![1 => Just(0usize), 2 => 1..16usize],
            max_bytes in prop_oneof![1 => Just(0usize), 2 => 200..1500usize],
            max_per_flow in 1..64usize,
            max_flows in 1..5usize,
        ) {
            let ttls = Ttls {
                tx: Duration::from_secs(10),
                block: Duration::from_secs(50),
                subtree: Duration::from_secs(30),
                anchor: Duration::from_secs(20),
                beef: Duration::from_secs(7),
                fallback: Duration::from_secs(15),
            };
            let settings = CacheSettings {
                ttls, max_per_flow, max_flows, max_keys, max_bytes, regression_threshold: 40,
            };
            run(ops, settings)?;
        }
    }

    /// One SeqNum per op from anywhere in a wide range, for the memory
    /// bound: sparse, dense, backwards, far ahead.
    fn any_seq() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 1..64u64,
            2 => 1..100_000u64,
            1 => Just(65_536u64),
            1 => any::<u64>().prop_map(|s| s.max(1)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the SeqNum pattern, the memory the shard's structures
        /// hold (log slots allocated, holes included; frames; candidates)
        /// stays within the byte budget, and the gauges stay exact
        /// (`check_invariants` recomputes both after every insert).
        #[test]
        fn memory_stays_within_the_budget_for_any_seqnums(
            ops in proptest::collection::vec(
                (0..8u64, any_seq(), 1..300usize, any::<bool>(), 0..3u8), 1..300),
            max_bytes in 2_000..200_000usize,
            max_per_flow in prop_oneof![Just(65_536usize), 1..5_000usize],
        ) {
            let t0 = Instant::now();
            let settings = CacheSettings { max_bytes, max_per_flow, ..Default::default() };
            let mut c = Cache::new(settings, t0);
            let mut now = t0;
            for (hk, seq, len, recovered, tick) in ops {
                let origin = if recovered { Origin::Recovered } else { Origin::Fabric };
                let b = frame(hk, seq, len);
                c.insert(now, key(hk, seq), TtlClass::Tx, 0, b, origin);
                prop_assert!(c.memory() <= max_bytes as u64, "{} > {}", c.memory(), max_bytes);
                c.check_invariants();
                now += Duration::from_millis(u64::from(tick) * 500);
            }
        }

        /// Up to EPOCH_EVIDENCE − 1 forged frames (a held key with other
        /// bytes, or a SeqNum past the window), anywhere in the history of a
        /// flow holding at least EPOCH_EVIDENCE frames, never reset it nor
        /// change what it serves.
        #[test]
        fn forged_frames_short_of_the_evidence_never_reset(
            n in EPOCH_EVIDENCE as u64..3_000u64,
            forged_at in proptest::collection::vec((any::<u64>(), EPOCH_EVIDENCE as u64..3_000u64), 1..EPOCH_EVIDENCE),
            tail in 0..50u64,
        ) {
            let t0 = Instant::now();
            let mut c = Cache::new(CacheSettings::default(), t0);
            let mut forgeries = forged_at.into_iter().peekable();
            for seq in 1..=n + tail {
                while let Some((x, _)) = forgeries.next_if(|&(_, after)| after < seq) {
                    // Any key the flow holds, with other bytes, or any
                    // SeqNum past its window.
                    let fseq = match x % 2 {
                        0 => x % (seq - 1).max(1) + 1,
                        _ => seq.saturating_add(65_536 + (x >> 20)),
                    };
                    let r = put_bytes(&mut c, t0, 1, fseq, &forged(1, fseq));
                    let reset = matches!(r, Insert::Inserted { new_epoch: true, .. });
                    prop_assert!(!reset, "forged {} reset the flow", fseq);
                }
                prop_assert_eq!(put(&mut c, t0, 1, seq), NEW);
            }
            for (x, _) in forgeries {
                let fseq = x % (n + tail) + 1;
                put_bytes(&mut c, t0, 1, fseq, &forged(1, fseq));
            }
            prop_assert_eq!(c.stats().epoch_resets, 0);
            for seq in 1..=n + tail {
                prop_assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{}", seq);
            }
            c.check_invariants();
        }

        /// A real restart — the proxy counting 1, 2, 3, ... again with new
        /// frames, late frames of the old epoch in between — is confirmed by
        /// its EPOCH_EVIDENCE-th frame, and from then on no pre-restart frame
        /// is served for any post-restart SeqNum.
        #[test]
        fn a_restart_is_confirmed_and_never_served_stale(
            n in 1..3_000u64,
            m in EPOCH_EVIDENCE as u64..60,
            late in proptest::collection::vec(0..3_000u64, 0..EPOCH_EVIDENCE),
        ) {
            let t0 = Instant::now();
            let mut c = Cache::new(CacheSettings::default(), t0);
            for seq in 1..=n {
                put(&mut c, t0, 1, seq);
            }
            for seq in 1..=m {
                // A late (identical) frame of the old epoch now and then
                // before the confirmation (after it, one is indistinguishable
                // from a new frame).
                if let Some(&l) = late.get(seq as usize).filter(|_| seq < EPOCH_EVIDENCE as u64) {
                    let l = l % n + 1;
                    put(&mut c, t0, 1, l);
                }
                let r = put_bytes(&mut c, t0, 1, seq, &forged(1, seq));
                let want = match seq.cmp(&(EPOCH_EVIDENCE as u64)) {
                    std::cmp::Ordering::Less => Insert::Candidate,
                    std::cmp::Ordering::Equal => {
                        Insert::Inserted { new_epoch: true, promoted: EPOCH_EVIDENCE - 1 }
                    }
                    std::cmp::Ordering::Greater => NEW,
                };
                prop_assert_eq!(r, want, "restart frame {}", seq);
            }
            prop_assert_eq!(c.stats().epoch_resets, 1);
            for seq in 1..=n.max(m) {
                match c.get(key(1, seq), t0) {
                    Some(hit) => prop_assert_eq!(hit.frame, &forged(1, seq), "{}", seq),
                    None => prop_assert!(seq > m, "{} not served", seq),
                }
            }
            c.check_invariants();
        }
    }

    #[test]
    fn hot_returns_recent_flows_newest_first_within_the_budget() {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        let frame = |seq: u64| Bytes::from(vec![seq as u8; 100]);
        for seq in 1..=3 {
            c.insert(
                t0,
                FrameKey { hash_key: 1, seq },
                TtlClass::Tx,
                0,
                frame(seq),
                Origin::Fabric,
            );
        }
        for seq in 1..=2 {
            c.insert(
                t0,
                FrameKey { hash_key: 2, seq },
                TtlClass::Tx,
                0,
                frame(seq),
                Origin::Fabric,
            );
        }
        let hot: Vec<u8> = c.hot(t0, 10_000).iter().map(|b| b[0]).collect();
        // Flow 2 was used last: its frames first, newest first, then flow 1's.
        assert_eq!(hot, [2, 1, 3, 2, 1]);
        assert_eq!(c.hot(t0, 250).len(), 2, "byte budget");
        // Expired frames are not exported.
        assert!(c.hot(t0 + Duration::from_secs(61), 10_000).is_empty());
    }
}
