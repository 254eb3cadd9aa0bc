//! Peer exchange in the running cluster: a [`PexBook`] behind the
//! StatefulMerge topic [`pex::TOPIC`] (`pex`).
//!
//! Each record is one signed peer entry as a one-entry PEX list
//! (`[u8 count = 1][entry]`, [`pex::encode_entries`]), so every record fits
//! one G1 chunk whatever the address family. A snapshot or delta carries at
//! most [`pex::MAX_ENTRIES_PER_EXCHANGE`] entries — the local node's own
//! first, then a sample of fresh peers that changes from exchange to
//! exchange — so the ≤ 10-per-exchange rule holds on the sending side.
//! Received entries go through [`PexBook::accept`]: strictly verified,
//! fresh (≤ 1 h old, ≤ 5 min ahead), at most 500 peers kept.
//!
//! What PEX adds to the membership records of [`super::members`]: entries
//! are signed by the node they describe, so an address learnt this way
//! really belongs to the holder of that key; the driver pulls membership
//! from such peers when it does not hear them as members (beyond its
//! `--gossip-peers` seeds).
//!
//! # Contract
//! - The book's clock (unix seconds) is set by the driver
//!   ([`PexState::set_now`]); nothing here reads a clock.
//! - `apply` refuses (counted by the engine as `apply_rejected`) a record
//!   that does not parse or whose entry fails its signature or is from the
//!   future; stale entries and our own entry are ignored (`Ok(false)`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::gossip::pex::{self, PexBook, PexEntry, PexReject};
use crate::gossip::{RecordRejected, Store};

/// The book and what the store needs around it.
#[derive(Debug, Clone)]
pub struct PexState {
    book: PexBook,
    now: u64,
    version: i64,
    changed: BTreeMap<[u8; 32], i64>,
    fingerprint: u64,
    sample_seed: u64,
    /// Entries refused for a bad signature or a future timestamp.
    pub rejected: u64,
    /// Peers learnt.
    pub discovered: u64,
}

impl PexState {
    /// An empty book for the node with public key `local_key`.
    pub fn new(local_key: [u8; 32]) -> Self {
        PexState {
            book: PexBook::new(local_key),
            now: 0,
            version: 0,
            changed: BTreeMap::new(),
            fingerprint: 0,
            sample_seed: 0,
            rejected: 0,
            discovered: 0,
        }
    }

    /// Sets the clock (unix seconds) entries are judged by.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Replaces the local node's own entry (re-signed by the caller).
    pub fn set_local(&mut self, entry: PexEntry) -> Result<(), PexReject> {
        self.book.set_local(entry)?;
        self.touch(entry.public_key);
        Ok(())
    }

    /// The book.
    pub fn book(&self) -> &PexBook {
        &self.book
    }

    /// Drops stale entries; returns how many.
    pub fn prune(&mut self) -> usize {
        let n = self.book.prune(self.now);
        if n > 0 {
            self.refresh();
        }
        n
    }

    fn touch(&mut self, key: [u8; 32]) {
        self.version += 1;
        self.changed.insert(key, self.version);
        self.refresh();
    }

    /// Recomputes the fingerprint and forgets change marks of entries the
    /// book no longer holds.
    fn refresh(&mut self) {
        let book = &self.book;
        let local = book.local().map(|e| e.public_key);
        self.changed.retain(|k, _| Some(*k) == local || book.get(k).is_some());
        self.fingerprint =
            book.local().into_iter().chain(book.iter()).map(entry_hash).fold(0, |a, b| a ^ b);
    }

    fn records(&mut self, since: Option<i64>) -> Vec<Vec<u8>> {
        self.sample_seed = self.sample_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let entries: Vec<PexEntry> = match since {
            None => self.book.choose(self.now, None, self.sample_seed),
            Some(since) => {
                let mut newest: Vec<(i64, [u8; 32])> = self
                    .changed
                    .iter()
                    .filter(|(_, v)| **v > since)
                    .map(|(k, v)| (*v, *k))
                    .collect();
                newest.sort_unstable_by(|a, b| b.cmp(a));
                newest
                    .into_iter()
                    .filter_map(|(_, k)| {
                        self.book.get(&k).or(self.book.local().filter(|l| l.public_key == k))
                    })
                    .filter(|e| !e.is_stale(self.now))
                    .take(pex::MAX_ENTRIES_PER_EXCHANGE)
                    .copied()
                    .collect()
            }
        };
        entries
            .iter()
            .filter_map(|e| {
                let mut buf = vec![0u8; pex::entries_len(std::slice::from_ref(e))];
                pex::encode_entries(std::slice::from_ref(e), &mut buf).ok().map(|_| buf)
            })
            .collect()
    }

    fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected> {
        let entries = pex::decode_entries(record).map_err(|_| RecordRejected)?;
        let before: Vec<Option<u64>> =
            entries.iter().map(|e| self.book.get(&e.public_key).map(|h| h.timestamp)).collect();
        let report = self.book.accept(&entries, self.now);
        let hard = report
            .rejected
            .iter()
            .filter(|r| {
                matches!(r, PexReject::BadSignature | PexReject::FromFuture | PexReject::OverLimit)
            })
            .count();
        self.rejected += hard as u64;
        self.discovered += report.discovered.len() as u64;
        let mut changed = false;
        for (e, held) in entries.iter().zip(before) {
            if self.book.get(&e.public_key) == Some(e) && held != Some(e.timestamp) {
                self.touch(e.public_key);
                changed = true;
            }
        }
        if hard > 0 && !changed {
            return Err(RecordRejected);
        }
        Ok(changed)
    }
}

/// The [`Store`] of topic [`pex::TOPIC`], over a [`PexState`] the driver
/// shares.
#[derive(Debug, Clone)]
pub struct PexStore {
    state: Arc<Mutex<PexState>>,
}

impl PexStore {
    /// A store over `state`.
    pub fn new(state: Arc<Mutex<PexState>>) -> Self {
        PexStore { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PexState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for PexStore {
    fn fingerprint(&self) -> u64 {
        self.lock().fingerprint
    }

    fn watermark(&self) -> i64 {
        self.lock().version
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.lock().records(None)
    }

    fn delta_since(&self, since: i64) -> Vec<Vec<u8>> {
        self.lock().records(Some(since))
    }

    fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected> {
        self.lock().apply(record)
    }
}

fn entry_hash(e: &PexEntry) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&e.public_key);
    h.update(&e.timestamp.to_be_bytes());
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ricochet_wire::record::SigningKey;
    use std::net::SocketAddr;

    const NOW: u64 = 1_767_225_600;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn entry(n: u8, ts: u64) -> PexEntry {
        PexEntry::sign(&key(n), SocketAddr::from(([10, 0, 0, n], 9310)), ts).unwrap()
    }

    fn store(n: u8) -> (PexStore, Arc<Mutex<PexState>>) {
        let mut s = PexState::new(key(n).verifying_key().to_bytes());
        s.set_now(NOW);
        s.set_local(entry(n, NOW)).unwrap();
        let s = Arc::new(Mutex::new(s));
        (PexStore::new(s.clone()), s)
    }

    #[test]
    fn entries_spread_between_two_books() {
        let (mut a, a_state) = store(1);
        let (mut b, b_state) = store(2);
        let fp = a.fingerprint();
        for r in b.snapshot() {
            assert_eq!(a.apply(&r), Ok(true));
        }
        assert_ne!(a.fingerprint(), fp);
        assert_eq!(a_state.lock().unwrap().book().len(), 1);
        // a now shares both its own entry and b's; b ignores its own.
        let recs = a.delta_since(0);
        assert_eq!(recs.len(), 2);
        let applied: Vec<_> = recs.iter().map(|r| b.apply(r)).collect();
        assert!(applied.contains(&Ok(true)) && applied.contains(&Ok(false)), "{applied:?}");
        assert_eq!(b_state.lock().unwrap().book().len(), 1);
        // Nothing new after the watermark.
        let mark = a.watermark();
        assert!(a.delta_since(mark).is_empty());
        // A newer entry of a known peer is an update.
        let mut buf = [0u8; 200];
        let n = pex::encode_entries(&[entry(2, NOW + 5)], &mut buf).unwrap();
        assert_eq!(a.apply(&buf[..n]), Ok(true));
        assert_eq!(a.delta_since(mark).len(), 1);
    }

    #[test]
    fn forged_and_malformed_entries_are_refused() {
        let (mut a, a_state) = store(1);
        let mut forged = entry(3, NOW);
        forged.timestamp += 1;
        let mut buf = [0u8; 200];
        let n = pex::encode_entries(&[forged], &mut buf).unwrap();
        assert_eq!(a.apply(&buf[..n]), Err(RecordRejected));
        assert_eq!(a.apply(&[1, 2, 3]), Err(RecordRejected));
        let n = pex::encode_entries(&[entry(3, NOW - 7200)], &mut buf).unwrap();
        assert_eq!(a.apply(&buf[..n]), Ok(false), "stale is ignored");
        let s = a_state.lock().unwrap();
        assert_eq!((s.book().len(), s.rejected), (0, 1));
    }
}
