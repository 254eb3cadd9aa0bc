//! Membership: heartbeat records in the StatefulMerge topic [`TOPIC`]
//! (`members`), and which members are live.
//!
//! Every member publishes its own record every heartbeat period
//! (the engine's cluster driver, 1 s); rumors (G3) carry it at once and
//! anti-entropy (G2/G1) repairs whatever rumors missed. A member is *live*
//! while its latest heartbeat is younger than the live timeout the caller
//! passes to [`MemberTable::live`] (5 s in the engine) and it has not
//! announced that it is leaving.
//!
//! The record's bytes are `ricochet_wire::members` (docs/PROTOCOL.md §
//! "Topic `members` — heartbeat records"): a version byte, the member id,
//! incarnation and heartbeat, the leaving flag, the gossip and NACK
//! addresses and an optional holdings block — the member's cache digest
//! for sibling fill ([`crate::retry::siblings`]).
//!
//! # Contract
//! - Merge is last-writer-wins per member id on `(heartbeat, leaving,
//!   record bytes)`: commutative, associative, idempotent, so every replica
//!   converges whatever order records arrive in; equal tables have equal
//!   fingerprints (XOR of a BLAKE3-derived hash per record).
//! - Bounded: at most [`MAX_MEMBERS`] records. Records whose heartbeat is
//!   older than [`RETAIN`] are purged ([`MemberTable::purge`]) and refused
//!   when they come back, as are heartbeats more than [`MAX_FUTURE`] ahead
//!   of the local clock, so a dead member's record cannot linger.
//! - Liveness uses the wall clock of the member that wrote the record:
//!   siblings need synchronised clocks (NTP), with a skew well below the
//!   live timeout. A heartbeat from the future counts as age 0.
//! - Parsing never panics; a malformed record is refused
//!   ([`RecordRejected`]) and counted by the engine (`apply_rejected`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ricochet_wire::members::HoldingRepr;
pub use ricochet_wire::members::{BASE_MAX, HOLDING_LEN, MAX_HOLDINGS, RECORD_VERSION, TOPIC};

use crate::gossip::{RecordRejected, Store};
use crate::retry::Holding;

/// Most records a table holds.
pub const MAX_MEMBERS: usize = 1024;
/// How long a record is kept after its last heartbeat.
pub const RETAIN: Duration = Duration::from_secs(60);
/// How far ahead of the local clock a heartbeat may be.
pub const MAX_FUTURE: Duration = Duration::from_secs(60);

/// One member's heartbeat record: the wire form, with its codec
/// (`encode`, `encode_with`, `parse`, `parse_with_holdings`), the sibling
/// id and the heartbeat's age.
pub use ricochet_wire::members::RecordRepr as MemberRecord;
pub use ricochet_wire::members::sibling_id;

impl From<HoldingRepr> for Holding {
    fn from(h: HoldingRepr) -> Self {
        Holding { hash_key: h.hash_key, lo: h.lo, hi: h.hi, missing: h.missing }
    }
}

impl From<Holding> for HoldingRepr {
    fn from(h: Holding) -> Self {
        HoldingRepr { hash_key: h.hash_key, lo: h.lo, hi: h.hi, missing: h.missing }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    record: MemberRecord,
    holdings: Vec<Holding>,
    bytes: Vec<u8>,
    version: i64,
    hash: u64,
}

/// Every member's latest record, with the clock liveness is judged by.
#[derive(Debug, Clone, Default)]
pub struct MemberTable {
    entries: BTreeMap<[u8; 32], Entry>,
    by_version: BTreeMap<i64, [u8; 32]>,
    version: i64,
    fingerprint: u64,
    now_ms: u64,
    purged: u64,
}

impl MemberTable {
    /// An empty table.
    pub fn new() -> Self {
        MemberTable::default()
    }

    /// Sets the wall clock (unix ms) used to judge records.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The wall clock last set.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records dropped by [`MemberTable::purge`] so far.
    pub fn purged(&self) -> u64 {
        self.purged
    }

    /// Every record, by member id.
    pub fn records(&self) -> impl Iterator<Item = &MemberRecord> + '_ {
        self.entries.values().map(|e| &e.record)
    }

    /// The record held for `id`.
    pub fn get(&self, id: &[u8; 32]) -> Option<&MemberRecord> {
        self.entries.get(id).map(|e| &e.record)
    }

    /// The holdings digest in the record held for `id` (empty if none).
    pub fn holdings(&self, id: &[u8; 32]) -> &[Holding] {
        self.entries.get(id).map_or(&[], |e| e.holdings.as_slice())
    }

    /// A number that changes whenever a record is added, replaced or
    /// dropped.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Merges one record (module docs). `Ok(false)` when it changes
    /// nothing, is outside the time window, or the table is full of
    /// fresher records.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<bool, RecordRejected> {
        let (record, holdings) =
            MemberRecord::parse_with_holdings(bytes).map_err(|_| RecordRejected)?;
        let retain = RETAIN.as_millis() as u64;
        let future = MAX_FUTURE.as_millis() as u64;
        if record.heartbeat_ms.saturating_add(retain) <= self.now_ms
            || record.heartbeat_ms > self.now_ms.saturating_add(future)
        {
            return Ok(false);
        }
        if let Some(old) = self.entries.get(&record.id) {
            let rank = |r: &MemberRecord, b: &[u8]| (r.heartbeat_ms, r.leaving, b.to_vec());
            if rank(&old.record, &old.bytes) >= rank(&record, bytes) {
                return Ok(false);
            }
        } else if self.entries.len() >= MAX_MEMBERS {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.record.heartbeat_ms)
                .map(|(id, e)| (*id, e.record.heartbeat_ms));
            match oldest {
                Some((id, hb)) if hb < record.heartbeat_ms => self.remove(&id),
                _ => return Ok(false),
            }
        }
        self.version += 1;
        let hash = record_hash(bytes);
        let entry = Entry { record, holdings, bytes: bytes.to_vec(), version: self.version, hash };
        if let Some(old) = self.entries.insert(record.id, entry) {
            self.fingerprint ^= old.hash;
            self.by_version.remove(&old.version);
        }
        self.fingerprint ^= hash;
        self.by_version.insert(self.version, record.id);
        Ok(true)
    }

    /// Drops records whose heartbeat is [`RETAIN`] old; returns how many.
    pub fn purge(&mut self) -> usize {
        let retain = RETAIN.as_millis() as u64;
        let old: Vec<[u8; 32]> = self
            .entries
            .iter()
            .filter(|(_, e)| e.record.heartbeat_ms.saturating_add(retain) <= self.now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            self.remove(id);
        }
        self.purged += old.len() as u64;
        old.len()
    }

    fn remove(&mut self, id: &[u8; 32]) {
        if let Some(old) = self.entries.remove(id) {
            self.fingerprint ^= old.hash;
            self.by_version.remove(&old.version);
            // A removal is a change: later deltas must not skip what it hid.
            self.version += 1;
        }
    }

    /// The live members other than `me` at the table's clock, sorted by
    /// id: not leaving, heartbeat younger than `timeout`. Records sharing
    /// the gossip or NACK address of `me` or of a fresher incarnation
    /// (an endpoint restarted at the same address) are left out.
    pub fn live(&self, me: &MemberRecord, timeout: Duration) -> Vec<MemberRecord> {
        let timeout = timeout.as_millis() as u64;
        let mut by_gossip: BTreeMap<SocketAddr, MemberRecord> = BTreeMap::new();
        let candidates = self.records().filter(|r| {
            r.id != me.id
                && r.gossip != me.gossip
                && r.nack != me.nack
                && !r.leaving
                && r.age_ms(self.now_ms) < timeout
        });
        let newer = |a: &MemberRecord, b: &MemberRecord| {
            (a.incarnation_ms, a.heartbeat_ms, a.id) > (b.incarnation_ms, b.heartbeat_ms, b.id)
        };
        for r in candidates {
            match by_gossip.get(&r.gossip) {
                Some(held) if !newer(r, held) => {}
                _ => {
                    by_gossip.insert(r.gossip, *r);
                }
            }
        }
        let mut by_nack: BTreeMap<SocketAddr, MemberRecord> = BTreeMap::new();
        for r in by_gossip.into_values() {
            match by_nack.get(&r.nack) {
                Some(held) if !newer(&r, held) => {}
                _ => {
                    by_nack.insert(r.nack, r);
                }
            }
        }
        let mut out: Vec<MemberRecord> = by_nack.into_values().collect();
        out.sort_unstable_by_key(|r| r.id);
        out
    }

    fn encoded_since(&self, since: i64) -> Vec<Vec<u8>> {
        self.by_version
            .range(since.saturating_add(1)..)
            .filter_map(|(_, id)| self.entries.get(id).map(|e| e.bytes.clone()))
            .collect()
    }
}

/// The [`Store`] of topic [`TOPIC`]: a handle on a [`MemberTable`] the
/// cluster driver shares (to set the clock, purge and read liveness).
#[derive(Debug, Clone)]
pub struct MembersStore {
    table: Arc<Mutex<MemberTable>>,
}

impl MembersStore {
    /// A store over `table`.
    pub fn new(table: Arc<Mutex<MemberTable>>) -> Self {
        MembersStore { table }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemberTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MembersStore {
    fn fingerprint(&self) -> u64 {
        self.lock().fingerprint
    }

    fn watermark(&self) -> i64 {
        self.lock().version
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.lock().encoded_since(0)
    }

    fn delta_since(&self, since: i64) -> Vec<Vec<u8>> {
        self.lock().encoded_since(since)
    }

    fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected> {
        self.lock().apply(record)
    }
}

fn record_hash(record: &[u8]) -> u64 {
    let h = blake3::hash(record);
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_767_225_600_000;

    fn rec(n: u8, heartbeat_ms: u64) -> MemberRecord {
        MemberRecord {
            id: [n; 32],
            incarnation_ms: NOW - 10_000,
            heartbeat_ms,
            leaving: false,
            gossip: SocketAddr::from(([10, 0, 0, n], 9310)),
            nack: SocketAddr::from(([10, 0, 0, n], 9300)),
        }
    }

    fn parse(b: &[u8]) -> Option<MemberRecord> {
        MemberRecord::parse(b).ok()
    }

    fn table() -> MemberTable {
        let mut t = MemberTable::new();
        t.set_now(NOW);
        t
    }

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let r = rec(1, NOW);
        let b = r.encode().unwrap();
        assert_eq!(b.len(), 64);
        assert_eq!(parse(&b), Some(r));
        let v6 = MemberRecord {
            gossip: "[2001:db8::1]:9310".parse().unwrap(),
            nack: "[2001:db8::1]:9300".parse().unwrap(),
            leaving: true,
            ..r
        };
        let b6 = v6.encode().unwrap();
        assert_eq!(b6.len(), 88);
        assert_eq!(parse(&b6), Some(v6));
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut]), None, "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(parse(&long), None);
        let mut bad = b.clone();
        bad[49] = 0x02;
        assert_eq!(parse(&bad), None, "reserved flag");
        let mut bad = b.clone();
        bad[0] = 2;
        assert_eq!(parse(&bad), None, "version");
        let held = [
            Holding { hash_key: 7, lo: 10, hi: 20, missing: 3 },
            Holding { hash_key: 8, lo: 5, hi: 5, missing: 0 },
        ];
        let bh = r.encode_with(&held).unwrap();
        assert_eq!(bh.len(), 64 + 1 + 2 * HOLDING_LEN);
        assert_eq!(MemberRecord::parse_with_holdings(&bh), Ok((r, held.to_vec())));
        assert_eq!(parse(&bh), Some(r));
        for cut in 65..bh.len() {
            assert_eq!(parse(&bh[..cut]), None, "cut at {cut}");
        }
        let mut bad = bh.clone();
        bad[64] = 3;
        assert_eq!(parse(&bad), None, "count beyond the block");
        let mut bad = bh.clone();
        bad[64 + 1 + 8..64 + 1 + 16].copy_from_slice(&21u64.to_be_bytes());
        assert_eq!(parse(&bad), None, "lo above hi");
        let mut bad = bh.clone();
        bad[64 + 1 + 24..64 + 1 + 28].copy_from_slice(&11u32.to_be_bytes());
        assert_eq!(parse(&bad), None, "more missing than the span");
        // docs/PROTOCOL.md § "Topic `members`" golden vector.
        let golden = "0101010101010101010101010101010101010101010101010101010101010101010000019b76\
                      da80f00000019b76daa80000040a000001245e040a0000012454010000000000000007000000\
                      000000000a000000000000001400000003";
        let one = r.encode_with(&held[..1]).unwrap();
        assert_eq!(one.iter().map(|b| format!("{b:02x}")).collect::<String>(), golden);
        let many = vec![held[1]; MAX_HOLDINGS + 5];
        let capped = r.encode_with(&many).unwrap();
        let (_, capped) = MemberRecord::parse_with_holdings::<Holding>(&capped).unwrap();
        assert_eq!(capped.len(), MAX_HOLDINGS);
        let unspecified = MemberRecord { nack: SocketAddr::from(([0, 0, 0, 0], 9300)), ..r };
        assert_eq!(unspecified.encode(), None);
        assert_eq!(r.sibling_id(), 0x0101_0101_0101_0101);
    }

    #[test]
    fn last_heartbeat_wins_and_liveness_times_out() {
        let mut t = table();
        let me = rec(9, NOW);
        assert_eq!(t.apply(&rec(1, NOW - 1000).encode().unwrap()), Ok(true));
        assert_eq!(t.apply(&rec(1, NOW - 2000).encode().unwrap()), Ok(false), "older");
        assert_eq!(t.apply(&rec(1, NOW - 1000).encode().unwrap()), Ok(false), "idempotent");
        assert_eq!(t.apply(&rec(2, NOW - 6000).encode().unwrap()), Ok(true));
        assert_eq!(t.apply(&me.encode().unwrap()), Ok(true));
        let live = t.live(&me, Duration::from_secs(5));
        assert_eq!(live.iter().map(|r| r.id[0]).collect::<Vec<_>>(), [1], "2 is too old");
        // Leaving wins a tie and drops the member at once.
        let leaving = MemberRecord { leaving: true, ..rec(1, NOW - 1000) };
        assert_eq!(t.apply(&leaving.encode().unwrap()), Ok(true));
        assert!(t.live(&me, Duration::from_secs(5)).is_empty());
        assert_eq!(t.apply(&[1, 2, 3]), Err(RecordRejected));
    }

    #[test]
    fn a_restarted_endpoint_replaces_its_old_incarnation() {
        let mut t = table();
        let me = rec(9, NOW);
        let old = rec(1, NOW - 500);
        let new = MemberRecord { id: [7; 32], incarnation_ms: NOW - 100, ..rec(1, NOW - 200) };
        t.apply(&old.encode().unwrap()).unwrap();
        t.apply(&new.encode().unwrap()).unwrap();
        assert_eq!(t.live(&me, Duration::from_secs(5)), vec![new]);
        // Our own earlier incarnation (same addresses, other id) is not a sibling.
        let my_old = MemberRecord { id: [8; 32], ..rec(9, NOW - 100) };
        t.apply(&my_old.encode().unwrap()).unwrap();
        assert_eq!(t.live(&me, Duration::from_secs(5)), vec![new]);
    }

    #[test]
    fn old_and_future_records_are_purged_and_refused() {
        let mut t = table();
        let retain = RETAIN.as_millis() as u64;
        assert_eq!(t.apply(&rec(1, NOW - retain).encode().unwrap()), Ok(false));
        assert_eq!(t.apply(&rec(1, NOW + 2 * retain).encode().unwrap()), Ok(false));
        assert_eq!(t.apply(&rec(1, NOW - 10).encode().unwrap()), Ok(true));
        let fp = Store::fingerprint(&MembersStore::new(Arc::new(Mutex::new(t.clone()))));
        assert_ne!(fp, 0);
        t.set_now(NOW + retain);
        assert_eq!(t.purge(), 1);
        assert!(t.is_empty());
        assert_eq!(t.fingerprint, 0);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_heartbeat() {
        let mut t = table();
        for i in 0..MAX_MEMBERS as u64 {
            let mut r = rec(1, NOW - 50_000 + i);
            r.id[..8].copy_from_slice(&i.to_be_bytes());
            assert_eq!(t.apply(&r.encode().unwrap()), Ok(true));
        }
        let mut stale = rec(2, NOW - 55_000);
        stale.id[0] = 0xFF;
        assert_eq!(t.apply(&stale.encode().unwrap()), Ok(false), "older than all");
        let mut fresh = rec(2, NOW);
        fresh.id[0] = 0xFF;
        assert_eq!(t.apply(&fresh.encode().unwrap()), Ok(true));
        assert_eq!(t.len(), MAX_MEMBERS);
        assert!(t.get(&fresh.id).is_some());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
        }

        /// Any order of the same records gives the same table.
        #[test]
        fn merge_is_order_independent(
            recs in proptest::collection::vec((1u8..5, 0u64..4, any::<bool>()), 0..20),
            seed in any::<u64>(),
        ) {
            let recs: Vec<Vec<u8>> = recs
                .iter()
                .map(|&(n, hb, leaving)| MemberRecord { leaving, ..rec(n, NOW - hb) }.encode().unwrap())
                .collect();
            let mut a = table();
            for r in &recs {
                a.apply(r).unwrap();
            }
            let mut shuffled = recs.clone();
            crate::dht::rng::Rng::seed_from_u64(seed).shuffle(&mut shuffled);
            let mut b = table();
            for r in &shuffled {
                b.apply(r).unwrap();
            }
            prop_assert_eq!(a.fingerprint, b.fingerprint);
            let mut sa = a.encoded_since(0);
            let mut sb = b.encoded_since(0);
            sa.sort();
            sb.sort();
            prop_assert_eq!(sa, sb);
        }
    }
}
