//! A TTL class's append-only log of frames, stored in segments.
//!
//! Every frame of one class is appended, in insert order, as a *record* to
//! the class's log: a 9-byte header (owning flow's slab index, the low 24
//! bits of its SeqNum, the frame's length, 24 bits each) followed by the
//! datagram's bytes. Records are packed into segments of up to
//! [`SEGMENT_MAX`] bytes; a segment is one allocation, written once and then
//! frozen into a [`Bytes`], so a cached frame is served as a slice of its
//! segment: no copy, one reference count. What a lookup needs (where the
//! record is, its length, group and insert time) is in the flow's index slot
//! ([`Slot`]), so a hit reads its slot and its segment's descriptor, never
//! the frame's memory.
//!
//! # Invariants
//! - **Order.** Records are appended with non-decreasing insert times, and a
//!   class has one TTL, so a log is in deadline order; its front is always
//!   the next frame to expire, and the globally oldest frame is the oldest of
//!   the six logs' fronts.
//! - **Addresses.** A record's [`Addr`] is its class, its segment's id and
//!   its offset; segment ids count up per log (wrapping at 2²⁵, far more
//!   than a log ever holds at once), so an address is never reused while any
//!   record could still name it.
//! - **Liveness lives in the flow index.** A record is live exactly while its
//!   flow's index slot for its SeqNum holds its address; the log only counts
//!   (`live`, per segment and in all) and never decides.
//! - **Cursor.** Every record of the front segment before `cursor` is dead;
//!   the front segment always holds a live record (a segment whose last live
//!   record dies is freed at once, and a log with none left is emptied).
//! - **Charge.** [`ClassLog::charge`] is the memory the log holds: the
//!   capacity of every allocated segment (dead records and the open
//!   segment's unwritten tail included; a sealed segment is shrunk to its
//!   records) plus its descriptor table's capacity, [`SEGMENT_BYTES`] per
//!   descriptor. Below 64 descriptors the table grows and shrinks exactly,
//!   so a small log is charged no spare.
//!
//! The newest segment is *open* while it has room: it is a `BytesMut` that
//! records are appended to, and it is frozen when the next record does not
//! fit. A lookup of a record still in the open segment copies it (it cannot
//! be shared before the segment is frozen); under load the open segment
//! holds the last few milliseconds of frames, newer than the frames almost
//! every NACK asks for. A segment is also sealed once open for 8.7 minutes,
//! as its records keep their insert times relative to its first one.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::SEGMENT_BYTES;

/// Bytes of a record's header: flow, SeqNum's low bits and length, 24 bits
/// each.
pub(super) const HEADER: usize = 9;

/// The header's fields are 24 bits wide.
pub(super) const LOW_MASK: u32 = (1 << 24) - 1;

/// The largest segment a log allocates (a frame larger than this gets a
/// segment of its own size).
pub(super) const SEGMENT_MAX: usize = 64 << 10;

/// The smallest segment a log allocates when the budget allows it; a log
/// doubles its segments from here up to [`SEGMENT_MAX`], so a quiet class
/// does not pin a large segment for a few frames.
pub(super) const SEGMENT_MIN: usize = 4 << 10;

/// Largest frame a record can hold (its length fits a slot).
pub(super) const FRAME_MAX: usize = (1 << LEN_BITS) - 1;

const OFF_BITS: u32 = 16;
const ID_BITS: u32 = 25;
const LEN_BITS: u32 = 17;
const GROUP_BITS: u32 = 16;
const REL_BITS: u32 = 19;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

/// The longest a segment stays open, in ms (its records' insert times are
/// kept relative to its first one, in [`REL_BITS`] bits: 8.7 minutes).
const REL_MAX: u64 = (1 << REL_BITS) - 1;

/// Below this many descriptors a log's table is kept at its exact size.
const EXACT_TABLE: usize = 64;

/// Where a record is: its class's log, its segment's id, its offset.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Addr {
    class: u8,
    id: u32,
    off: u16,
}

/// One flow index slot: a held frame's [`Addr`], length, retransmit group
/// and insert time (relative to its segment's first record), in 96 bits;
/// all zero for a hole (a held slot's class field is its class plus one).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Slot([u32; 3]);

impl Slot {
    pub(super) const VACANT: Slot = Slot([0; 3]);

    fn new(at: Addr, len: usize, group: u16, rel_ms: u64) -> Self {
        let mut v = u128::from(at.off);
        let mut shift = OFF_BITS;
        for (x, bits) in [
            (u128::from(at.id), ID_BITS),
            (u128::from(at.class) + 1, 3),
            (len as u128, LEN_BITS),
            (u128::from(group), GROUP_BITS),
            (u128::from(rel_ms), REL_BITS),
        ] {
            v |= x << shift;
            shift += bits;
        }
        Slot([v as u32, (v >> 32) as u32, (v >> 64) as u32])
    }

    fn bits(self, at: u32, n: u32) -> u64 {
        let v = u128::from(self.0[0]) | u128::from(self.0[1]) << 32 | u128::from(self.0[2]) << 64;
        ((v >> at) & ((1 << n) - 1)) as u64
    }

    /// Whether the slot holds a frame.
    pub(super) fn held(self) -> bool {
        self != Slot::VACANT
    }

    /// The class index of a held slot's frame.
    pub(super) fn class(self) -> usize {
        self.bits(OFF_BITS + ID_BITS, 3).saturating_sub(1) as usize
    }

    pub(super) fn addr(self) -> Addr {
        Addr {
            class: self.class() as u8,
            id: self.bits(OFF_BITS, ID_BITS) as u32,
            off: self.bits(0, OFF_BITS) as u16,
        }
    }

    /// The frame's length.
    pub(super) fn len(self) -> usize {
        self.bits(OFF_BITS + ID_BITS + 3, LEN_BITS) as usize
    }

    /// The frame's retransmit group.
    pub(super) fn group(self) -> u16 {
        self.bits(OFF_BITS + ID_BITS + 3 + LEN_BITS, GROUP_BITS) as u16
    }

    fn rel_ms(self) -> u64 {
        self.bits(OFF_BITS + ID_BITS + 3 + LEN_BITS + GROUP_BITS, REL_BITS)
    }
}

/// One record's header, decoded.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    /// The owning flow's slab index.
    pub(super) flow: u32,
    /// The low 24 bits of the frame's SeqNum.
    pub(super) seq_lo: u32,
    /// The frame's length (the header's 9 bytes not included).
    pub(super) len: usize,
}

/// One segment's descriptor. `bytes` is empty while the segment is open
/// (its bytes are the log's `open` buffer) and once it is freed.
pub(super) struct Segment {
    bytes: Bytes,
    /// Insert time of its first record, ms since the cache's origin.
    base_ms: u64,
    /// Allocated bytes (what the segment is charged); 0 once freed.
    cap: u32,
    /// Live records.
    live: u32,
}

/// One TTL class's log. See the module docs.
pub(super) struct ClassLog {
    /// The class index, part of every address.
    class: usize,
    segs: VecDeque<Segment>,
    /// Id of `segs[0]`.
    head_id: u64,
    /// The open segment's buffer, when the newest segment is open.
    open: Option<BytesMut>,
    /// Offset in `segs[0]` of its first record not known to be dead.
    cursor: usize,
    /// Live records and their bytes (headers included).
    live: usize,
    live_bytes: u64,
    /// Capacity of the allocated segments.
    held: u64,
    /// Capacity of the last segment allocated, for doubling.
    last_cap: usize,
}

impl ClassLog {
    /// An empty log for class index `class`.
    pub(super) fn new(class: usize) -> Self {
        ClassLog {
            class,
            segs: VecDeque::new(),
            head_id: 0,
            open: None,
            cursor: 0,
            live: 0,
            live_bytes: 0,
            held: 0,
            last_cap: 0,
        }
    }

    /// Makes this (empty) log's ids go on after `old`'s, for compaction.
    pub(super) fn continue_ids(&mut self, old: &ClassLog) {
        self.head_id = old.head_id.wrapping_add(old.segs.len() as u64) & ID_MASK;
        self.last_cap = old.last_cap;
    }

    /// Live records.
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// Records held in allocated segments, live or dead (a test's view of
    /// how many tombstones the log carries).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let mut n = 0;
        for (i, s) in self.segs.iter().enumerate() {
            if s.cap == 0 {
                continue;
            }
            let data = self.data(i);
            let mut off = 0;
            while off + HEADER <= data.len() {
                n += 1;
                off += HEADER + read_header(data, off).len;
            }
        }
        n
    }

    /// Segment descriptors allocated.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.segs.capacity()
    }

    /// The memory the log holds; see the module docs.
    pub(super) fn charge(&self) -> u64 {
        self.held + (self.segs.capacity() * SEGMENT_BYTES) as u64
    }

    /// What appending a frame of `len` bytes would add to [`Self::charge`]
    /// with a segment target of `target` bytes.
    pub(super) fn extra_for(&self, len: usize, target: usize) -> u64 {
        let rec = HEADER + len;
        if self.open.as_ref().is_some_and(|b| b.capacity() - b.len() >= rec) {
            return 0;
        }
        let table = if self.segs.len() < self.segs.capacity() {
            0
        } else if self.segs.len() < EXACT_TABLE {
            1
        } else {
            self.segs.capacity().max(1)
        };
        (self.next_cap(rec, target) + table * SEGMENT_BYTES) as u64
    }

    /// The capacity of the next segment for a record of `rec` bytes.
    fn next_cap(&self, rec: usize, target: usize) -> usize {
        let grown = (self.last_cap * 2).clamp(SEGMENT_MIN, SEGMENT_MAX);
        grown.min(target).max(rec)
    }

    /// Appends a record and returns the slot that finds it. The frame must
    /// not exceed [`FRAME_MAX`]; `now_ms` must not be below any earlier
    /// record's time.
    pub(super) fn append(
        &mut self,
        flow: u32,
        seq: u64,
        now_ms: u64,
        group: u16,
        frame: &[u8],
        target: usize,
    ) -> Slot {
        let rec = HEADER + frame.len();
        let fits = self.open.as_ref().is_some_and(|b| b.capacity() - b.len() >= rec);
        let too_late = self.segs.back().is_some_and(|s| now_ms.saturating_sub(s.base_ms) > REL_MAX);
        if !fits || too_late {
            self.seal();
            let cap = self.next_cap(rec, target);
            if self.segs.is_empty() {
                self.head_id = self.head_id.wrapping_add(1) & ID_MASK;
                self.cursor = 0;
            }
            if self.segs.len() == self.segs.capacity() && self.segs.len() < EXACT_TABLE {
                self.segs.reserve_exact(1);
            }
            self.segs.push_back(Segment {
                bytes: Bytes::new(),
                base_ms: now_ms,
                cap: cap as u32,
                live: 0,
            });
            self.open = Some(BytesMut::with_capacity(cap));
            self.held += cap as u64;
            self.last_cap = cap;
        }
        let pos = self.segs.len() - 1;
        let id = self.head_id.wrapping_add(pos as u64) & ID_MASK;
        let seg = &mut self.segs[pos];
        seg.live += 1;
        let rel = now_ms - seg.base_ms;
        let Some(buf) = self.open.as_mut() else { unreachable!("a segment was just opened") };
        let off = buf.len();
        buf.put_uint_le(u64::from(flow), 3);
        buf.put_uint_le(seq & u64::from(LOW_MASK), 3);
        buf.put_uint_le(frame.len() as u64, 3);
        buf.extend_from_slice(frame);
        if buf.capacity() - buf.len() <= HEADER {
            // No frame fits any more: share it from now on.
            self.seal();
        }
        self.live += 1;
        self.live_bytes += rec as u64;
        let at = Addr { class: self.class as u8, id: id as u32, off: off as u16 };
        Slot::new(at, frame.len(), group, rel)
    }

    /// Freezes the open segment, if any (freeing it if nothing in it is
    /// live any more).
    fn seal(&mut self) {
        if let (Some(buf), Some(seg)) = (self.open.take(), self.segs.back_mut()) {
            // Give the unwritten tail back (the allocator shrinks a block in
            // place), so a segment costs what its records hold.
            let mut bytes = Vec::from(buf);
            bytes.shrink_to_fit();
            self.held -= u64::from(seg.cap) - bytes.capacity() as u64;
            seg.cap = bytes.capacity() as u32;
            seg.bytes = Bytes::from(bytes);
            if seg.live == 0 {
                self.release(self.segs.len() - 1);
            }
        }
    }

    /// Frees segment `pos` (it holds no live record and is not open), and
    /// pops freed segments off the front.
    fn release(&mut self, pos: usize) {
        let seg = &mut self.segs[pos];
        self.held -= u64::from(seg.cap);
        seg.cap = 0;
        seg.bytes = Bytes::new();
        let mut popped = false;
        while self.segs.front().is_some_and(|s| s.cap == 0) {
            self.segs.pop_front();
            self.head_id = self.head_id.wrapping_add(1) & ID_MASK;
            popped = true;
        }
        if popped {
            self.cursor = 0;
            self.shrink_table();
        }
    }

    /// The written bytes of segment `pos`.
    fn data(&self, pos: usize) -> &[u8] {
        match &self.open {
            Some(buf) if pos + 1 == self.segs.len() => buf,
            _ => &self.segs[pos].bytes,
        }
    }

    /// The position in `segs` of the segment with id `id`, if it is held.
    fn locate(&self, id: u32) -> Option<usize> {
        let pos = u64::from(id).wrapping_sub(self.head_id) & ID_MASK;
        usize::try_from(pos).ok().filter(|&p| p < self.segs.len())
    }

    /// When a held slot's frame was inserted, ms since the cache's origin.
    pub(super) fn inserted_ms(&self, slot: Slot) -> u64 {
        let pos = self.locate(slot.addr().id).expect("a held slot's segment is held");
        self.segs[pos].base_ms + slot.rel_ms()
    }

    /// The bytes of a held slot's frame, borrowed.
    pub(super) fn bytes(&self, slot: Slot) -> &[u8] {
        let at = slot.addr();
        let pos = self.locate(at.id).expect("a held slot's segment is held");
        let start = usize::from(at.off) + HEADER;
        &self.data(pos)[start..start + slot.len()]
    }

    /// A held slot's frame if it is unexpired at `now_ms` (given its
    /// class's TTL), as shared bytes: a slice of its frozen segment, or a
    /// copy while the segment is still open. Reads the segment's descriptor,
    /// not the frame.
    pub(super) fn serve(&self, slot: Slot, ttl_ms: u64, now_ms: u64) -> Option<Bytes> {
        let at = slot.addr();
        let pos = self.locate(at.id)?;
        let seg = &self.segs[pos];
        if seg.base_ms.saturating_add(slot.rel_ms()).saturating_add(ttl_ms) <= now_ms {
            return None;
        }
        let start = usize::from(at.off) + HEADER;
        let end = start + slot.len();
        Some(match &self.open {
            Some(buf) if pos + 1 == self.segs.len() => Bytes::copy_from_slice(&buf[start..end]),
            _ => seg.bytes.slice(start..end),
        })
    }

    /// The record at the cursor (possibly dead), with its address.
    pub(super) fn front(&self) -> Option<(Addr, Header)> {
        self.segs.front()?;
        let data = self.data(0);
        if self.cursor + HEADER > data.len() {
            return None;
        }
        let at = Addr { class: self.class as u8, id: self.head_id as u32, off: self.cursor as u16 };
        Some((at, read_header(data, self.cursor)))
    }

    /// Moves the cursor past the record at the front. The caller has
    /// killed it or is about to.
    pub(super) fn skip(&mut self, h: &Header) {
        self.cursor += HEADER + h.len;
    }

    /// Counts a held slot's record dead (the slot has been emptied), freeing
    /// its segment if that was its last live record.
    pub(super) fn kill(&mut self, slot: Slot) {
        let Some(pos) = self.locate(slot.addr().id) else { return };
        self.live -= 1;
        self.live_bytes -= (HEADER + slot.len()) as u64;
        let open = self.open.is_some() && pos + 1 == self.segs.len();
        let seg = &mut self.segs[pos];
        seg.live -= 1;
        if self.live == 0 {
            self.clear();
            return;
        }
        if seg.live == 0 && !open {
            self.release(pos);
        }
    }

    /// Frees every segment (the log holds no live record).
    pub(super) fn clear(&mut self) {
        let next = self.head_id.wrapping_add(self.segs.len() as u64) & ID_MASK;
        self.segs = VecDeque::new();
        // Ids go on from where they were, so no address held anywhere (a
        // stale one in a test's hands included) can name a new record.
        self.head_id = next.wrapping_sub(1) & ID_MASK;
        self.open = None;
        self.cursor = 0;
        self.live = 0;
        self.live_bytes = 0;
        self.held = 0;
        self.last_cap = 0;
    }

    fn shrink_table(&mut self) {
        let (len, cap) = (self.segs.len(), self.segs.capacity());
        if cap <= EXACT_TABLE {
            if len < cap {
                self.segs.shrink_to_fit();
            }
        } else if len < cap / 4 {
            self.segs.shrink_to(len * 2);
        }
    }

    /// Whether dead records hold more memory than the live ones plus
    /// `slack`: time to copy the live ones into fresh segments.
    pub(super) fn wants_compaction(&self, slack: u64) -> bool {
        self.held > 2 * self.live_bytes + slack
    }

    /// Every record held, in log order, with its address (live or dead).
    pub(super) fn records(&self) -> impl Iterator<Item = (Addr, Header)> + '_ {
        (0..self.segs.len()).flat_map(move |pos| {
            let seg = &self.segs[pos];
            let data = if seg.cap == 0 { &[][..] } else { self.data(pos) };
            let id = (self.head_id.wrapping_add(pos as u64) & ID_MASK) as u32;
            let class = self.class as u8;
            let mut off = if pos == 0 { self.cursor } else { 0 };
            std::iter::from_fn(move || {
                if off + HEADER > data.len() {
                    return None;
                }
                let h = read_header(data, off);
                let at = Addr { class, id, off: off as u16 };
                off += HEADER + h.len;
                Some((at, h))
            })
        })
    }

    /// Memory recomputed from the allocations (for the tests).
    #[cfg(test)]
    pub(super) fn allocated(&self) -> u64 {
        let segs: usize = self
            .segs
            .iter()
            .enumerate()
            .map(|(i, s)| match &self.open {
                Some(b) if i + 1 == self.segs.len() => b.capacity(),
                _ if s.cap == 0 => 0,
                _ => s.cap as usize,
            })
            .sum();
        (segs + self.segs.capacity() * SEGMENT_BYTES) as u64
    }

    /// Cross-checks the counters against the records (for the tests);
    /// `live` tells a live record's slot.
    #[cfg(test)]
    pub(super) fn check(&self, live: impl Fn(Addr, &Header) -> Option<Slot>) {
        let (mut n, mut bytes, mut held) = (0usize, 0u64, 0u64);
        let mut last = 0;
        for (pos, seg) in self.segs.iter().enumerate() {
            held += u64::from(seg.cap);
            let mut seg_live = 0;
            if seg.cap > 0 {
                let data = self.data(pos);
                let id = (self.head_id.wrapping_add(pos as u64) & ID_MASK) as u32;
                let mut off = 0;
                while off + HEADER <= data.len() {
                    let h = read_header(data, off);
                    let at = Addr { class: self.class as u8, id, off: off as u16 };
                    if let Some(slot) = live(at, &h) {
                        assert!(pos > 0 || off >= self.cursor, "live record behind the cursor");
                        assert_eq!(slot.len(), h.len, "slot and record agree");
                        let t = self.inserted_ms(slot);
                        assert!(t >= last, "live records in time order");
                        last = t;
                        seg_live += 1;
                        bytes += (HEADER + h.len) as u64;
                    }
                    off += HEADER + h.len;
                }
            }
            assert_eq!(seg_live, seg.live, "segment live count");
            assert!(seg.cap > 0 || seg.live == 0);
            n += seg_live as usize;
        }
        assert!(self.segs.front().is_none_or(|s| s.live > 0), "the front segment is live");
        assert_eq!((n, bytes, held), (self.live, self.live_bytes, self.held));
    }
}

fn read_header(data: &[u8], off: usize) -> Header {
    let word = |at: usize| {
        let at = off + at;
        u32::from_le_bytes([data[at], data[at + 1], data[at + 2], 0])
    };
    Header { flow: word(0), seq_lo: word(3), len: word(6) as usize }
}
