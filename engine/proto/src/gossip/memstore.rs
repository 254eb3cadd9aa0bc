//! [`MemStore`]: an in-memory last-writer-wins map implementing [`Store`],
//! for small StatefulMerge topics (membership, gap ownership) and tests.
//!
//! Record layout (big-endian):
//!
//! ```text
//! [u8 key length][key][u64 stamp][value]
//! ```
//!
//! # Contract
//! - A key holds the record with the highest `(stamp, value)`; ties on the
//!   stamp are broken by the value bytes, so every replica picks the same
//!   winner whatever the order records arrive in (merge is commutative,
//!   associative and idempotent).
//! - The fingerprint is the XOR of a BLAKE3-derived 64-bit hash of every
//!   winning record: equal maps have equal fingerprints, independent of
//!   insertion order.
//! - Every change gets the next local version; [`Store::delta_since`]
//!   returns the records changed after a version, oldest change first.
//! - Every winning record's element id (`iblt::element_id`, the same BLAKE3
//!   hash the fingerprint uses) is kept in an index, so G4 reconciliation
//!   lists ids and looks records up without hashing the store.

use std::collections::BTreeMap;

use super::{RecordRejected, Store};

#[derive(Debug, Clone)]
struct Entry {
    stamp: u64,
    value: Vec<u8>,
    version: i64,
    hash: u64,
    id: u64,
}

/// An in-memory LWW map (module docs).
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    entries: BTreeMap<Vec<u8>, Entry>,
    by_version: BTreeMap<i64, Vec<u8>>,
    by_id: BTreeMap<u64, Vec<u8>>,
    version: i64,
    fingerprint: u64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Encodes a record; `None` if the key is longer than 255 bytes.
    pub fn record(key: &[u8], stamp: u64, value: &[u8]) -> Option<Vec<u8>> {
        let klen = u8::try_from(key.len()).ok()?;
        let mut r = Vec::with_capacity(1 + key.len() + 8 + value.len());
        r.push(klen);
        r.extend_from_slice(key);
        r.extend_from_slice(&stamp.to_be_bytes());
        r.extend_from_slice(value);
        Some(r)
    }

    /// Splits a record into `(key, stamp, value)`.
    pub fn split(record: &[u8]) -> Option<(&[u8], u64, &[u8])> {
        let (&klen, rest) = record.split_first()?;
        let (key, rest) = rest.split_at_checked(usize::from(klen))?;
        let (stamp, value) = rest.split_first_chunk::<8>()?;
        Some((key, u64::from_be_bytes(*stamp), value))
    }

    /// The winning `(stamp, value)` of a key.
    pub fn get(&self, key: &[u8]) -> Option<(u64, &[u8])> {
        self.entries.get(key).map(|e| (e.stamp, e.value.as_slice()))
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn encode(key: &[u8], e: &Entry) -> Vec<u8> {
        // Keys in the map came from valid records, so they fit a u8 length.
        Self::record(key, e.stamp, &e.value).unwrap_or_default()
    }
}

/// The fingerprint hash (little-endian) and the element id (big-endian) of
/// a record: the same 8 bytes of its BLAKE3 hash.
fn record_hash(record: &[u8]) -> (u64, u64) {
    let h = blake3::hash(record);
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(w), u64::from_be_bytes(w))
}

impl Store for MemStore {
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn watermark(&self) -> i64 {
        self.version
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.by_version
            .values()
            .filter_map(|k| self.entries.get(k).map(|e| Self::encode(k, e)))
            .collect()
    }

    fn delta_since(&self, since: i64) -> Vec<Vec<u8>> {
        self.by_version
            .range(since.saturating_add(1)..)
            .filter_map(|(_, k)| self.entries.get(k).map(|e| Self::encode(k, e)))
            .collect()
    }

    fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected> {
        let (key, stamp, value) = Self::split(record).ok_or(RecordRejected)?;
        if let Some(old) = self.entries.get(key)
            && (old.stamp, old.value.as_slice()) >= (stamp, value)
        {
            return Ok(false);
        }
        self.version += 1;
        let (hash, id) = record_hash(record);
        let entry = Entry { stamp, value: value.to_vec(), version: self.version, hash, id };
        if let Some(old) = self.entries.insert(key.to_vec(), entry) {
            self.fingerprint ^= old.hash;
            self.by_version.remove(&old.version);
            self.by_id.remove(&old.id);
        }
        self.fingerprint ^= hash;
        self.by_version.insert(self.version, key.to_vec());
        self.by_id.insert(id, key.to_vec());
        Ok(true)
    }

    fn element_ids(&self) -> Vec<u64> {
        self.by_id.keys().copied().collect()
    }

    fn records_for(&self, ids: &[u64]) -> Vec<Vec<u8>> {
        ids.iter()
            .filter_map(|id| self.by_id.get(id))
            .filter_map(|k| self.entries.get(k).map(|e| Self::encode(k, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(k: &str, stamp: u64, v: &str) -> Vec<u8> {
        MemStore::record(k.as_bytes(), stamp, v.as_bytes()).unwrap()
    }

    #[test]
    fn lww_and_deltas() {
        let mut s = MemStore::new();
        assert_eq!(s.apply(&rec("a", 5, "x")), Ok(true));
        assert_eq!(s.apply(&rec("b", 1, "y")), Ok(true));
        assert_eq!(s.apply(&rec("a", 4, "z")), Ok(false), "older stamp loses");
        assert_eq!(s.apply(&rec("a", 5, "x")), Ok(false), "idempotent");
        assert_eq!(s.apply(&rec("a", 5, "w")), Ok(false), "tie: smaller value loses");
        assert_eq!(s.watermark(), 2);
        assert_eq!(s.delta_since(1), vec![rec("b", 1, "y")]);
        assert_eq!(s.apply(&rec("a", 6, "q")), Ok(true));
        assert_eq!(s.delta_since(1), vec![rec("b", 1, "y"), rec("a", 6, "q")]);
        assert_eq!(s.snapshot(), s.delta_since(0));
        assert_eq!(s.get(b"a"), Some((6, &b"q"[..])));
        assert_eq!(s.apply(&[3, b'a']), Err(RecordRejected));
        assert_eq!(s.len(), 2);
        assert!(MemStore::record(&[0; 256], 0, b"").is_none());
    }

    #[test]
    fn element_ids_follow_the_winners() {
        use crate::gossip::iblt::element_id;
        let mut s = MemStore::new();
        s.apply(&rec("a", 1, "x")).unwrap();
        s.apply(&rec("b", 1, "y")).unwrap();
        s.apply(&rec("a", 2, "z")).unwrap();
        let mut ids = s.element_ids();
        ids.sort_unstable();
        let mut want = vec![element_id(&rec("a", 2, "z")), element_id(&rec("b", 1, "y"))];
        want.sort_unstable();
        assert_eq!(ids, want);
        // The trait's default (hashing the snapshot) agrees.
        let mut default: Vec<u64> = s.snapshot().iter().map(|r| element_id(r)).collect();
        default.sort_unstable();
        assert_eq!(default, want);
        let got = s.records_for(&[element_id(&rec("a", 2, "z")), element_id(&rec("a", 1, "x")), 7]);
        assert_eq!(got, vec![rec("a", 2, "z")], "superseded and unknown ids are skipped");
    }

    proptest! {
        /// Any order of applying the same records gives the same state and
        /// fingerprint.
        #[test]
        fn merge_is_order_independent(
            recs in prop::collection::vec((0u8..6, 0u64..4, 0u8..3), 0..30),
            seed in any::<u64>(),
        ) {
            let recs: Vec<Vec<u8>> =
                recs.iter().map(|(k, s, v)| MemStore::record(&[*k], *s, &[*v]).unwrap()).collect();
            let mut a = MemStore::new();
            for r in &recs {
                a.apply(r).unwrap();
            }
            let mut shuffled = recs.clone();
            crate::dht::rng::Rng::seed_from_u64(seed).shuffle(&mut shuffled);
            let mut b = MemStore::new();
            for r in &shuffled {
                b.apply(r).unwrap();
            }
            prop_assert_eq!(a.fingerprint(), b.fingerprint());
            let mut sa = a.snapshot();
            let mut sb = b.snapshot();
            sa.sort();
            sb.sort();
            prop_assert_eq!(sa, sb);
        }
    }
}
