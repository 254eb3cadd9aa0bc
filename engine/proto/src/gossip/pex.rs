//! Peer exchange (PEX): signed peer entries and the book of known peers.
//!
//! Siblings learn about endpoints beyond their `--gossip-peers` seeds by
//! trading signed peer entries inside G1 exchanges of topic [`TOPIC`]
//! (`pex`). The limits come from seed 002: at most
//! [`MAX_ENTRIES_PER_EXCHANGE`] (10) entries per exchange, at most
//! [`MAX_KNOWN_PEERS`] (500) peers remembered, an entry stale
//! [`MAX_AGE_SECS`] (1 h) after it was signed.
//!
//! The entry and list codec is `ricochet_wire::pex` (docs/PROTOCOL.md §
//! "Topic `pex` — peer exchange entries"), re-exported here.
//!
//! # Contract
//! - Pure: the caller passes `now` as unix seconds; nothing here reads a
//!   clock or a socket.
//! - [`PexBook::accept`] verifies signatures before storing.
//! - [`PexBook`] never holds more than [`MAX_KNOWN_PEERS`] peers besides the
//!   local node's own entry.

use std::collections::BTreeMap;

use ricochet_wire::Error;
pub use ricochet_wire::pex::{
    Entry, List, MAX_AGE_SECS, MAX_ENTRIES_PER_EXCHANGE, MAX_FUTURE_SECS, MAX_LIST_LEN, PexEntry,
    SIGNING_TAG, TOPIC, V4_LEN, V6_LEN, decode_entries, encode_entries, entries_len,
};

/// Most peers a [`PexBook`] remembers.
pub const MAX_KNOWN_PEERS: usize = 500;

/// Why [`PexBook`] did not store an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PexReject {
    /// The signature did not verify (or the key is invalid).
    BadSignature,
    /// The entry is [`MAX_AGE_SECS`] old or older.
    Stale,
    /// The timestamp lies more than [`MAX_FUTURE_SECS`] ahead.
    FromFuture,
    /// The entry advertises the local node; only [`PexBook::set_local`]
    /// sets that.
    Local,
    /// The book is full of fresher entries.
    Full,
    /// Past the first [`MAX_ENTRIES_PER_EXCHANGE`] entries of one exchange.
    OverLimit,
}

/// What [`PexBook::accept_entry`] did with a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// A peer the book did not know.
    Added,
    /// A newer entry for a known peer replaced the old one.
    Updated,
    /// Not newer than the entry held; nothing changed.
    Unchanged,
}

/// What one exchange's entries did to a [`PexBook`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptReport {
    /// Public keys of peers the book did not know before (at most 10), so
    /// the caller can reach out to them.
    pub discovered: Vec<[u8; 32]>,
    /// Known peers whose entry was replaced by a newer one.
    pub updated: usize,
    /// Entries no newer than the one held.
    pub unchanged: usize,
    /// Entries refused, by reason, in arrival order.
    pub rejected: Vec<PexReject>,
    /// Entries evicted to make room.
    pub evicted: usize,
}

/// The known peers: at most [`MAX_KNOWN_PEERS`] verified entries, one per
/// public key, plus the local node's own entry.
#[derive(Debug, Clone)]
pub struct PexBook {
    local_key: [u8; 32],
    local: Option<PexEntry>,
    /// Ordered by key so iteration, eviction and sampling are deterministic.
    peers: BTreeMap<[u8; 32], PexEntry>,
}

impl PexBook {
    /// An empty book for the node whose public key is `local_key`.
    pub fn new(local_key: [u8; 32]) -> Self {
        PexBook { local_key, local: None, peers: BTreeMap::new() }
    }

    /// Sets the local node's own entry, shared first by
    /// [`PexBook::choose`]. Re-sign it (with [`PexEntry::sign`]) well within
    /// [`MAX_AGE_SECS`] so it never goes stale, and whenever the address
    /// changes. [`PexReject::BadSignature`] unless the entry verifies and is
    /// signed by the local key.
    pub fn set_local(&mut self, entry: PexEntry) -> Result<(), PexReject> {
        if entry.public_key != self.local_key {
            return Err(PexReject::BadSignature);
        }
        entry.verify().map_err(|_| PexReject::BadSignature)?;
        self.local = Some(entry);
        Ok(())
    }

    /// The local node's own entry, if set.
    pub fn local(&self) -> Option<&PexEntry> {
        self.local.as_ref()
    }

    /// Known peers (the local entry not included).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The entry held for `public_key`.
    pub fn get(&self, public_key: &[u8; 32]) -> Option<&PexEntry> {
        self.peers.get(public_key)
    }

    /// Every known peer's entry, stale ones included until
    /// [`PexBook::prune`], ordered by public key.
    pub fn iter(&self) -> impl Iterator<Item = &PexEntry> + '_ {
        self.peers.values()
    }

    /// Forgets a peer (e.g. one that left the cluster); returns its entry.
    pub fn remove(&mut self, public_key: &[u8; 32]) -> Option<PexEntry> {
        self.peers.remove(public_key)
    }

    /// Drops every entry stale at `now`; returns how many.
    pub fn prune(&mut self, now: u64) -> usize {
        let before = self.peers.len();
        self.peers.retain(|_, e| !e.is_stale(now));
        before - self.peers.len()
    }

    /// Takes in the entries of one exchange received at `now` (unix
    /// seconds). Only the first [`MAX_ENTRIES_PER_EXCHANGE`] are looked at;
    /// each is checked for freshness and signature before it is stored.
    pub fn accept(&mut self, entries: &[PexEntry], now: u64) -> AcceptReport {
        let mut report = AcceptReport::default();
        for (i, entry) in entries.iter().enumerate() {
            if i >= MAX_ENTRIES_PER_EXCHANGE {
                report.rejected.push(PexReject::OverLimit);
                continue;
            }
            let before = self.peers.len();
            match self.accept_entry(entry, now) {
                Ok(Admission::Added) => {
                    report.discovered.push(entry.public_key);
                    // Adding to a full book evicts exactly one entry.
                    report.evicted += before + 1 - self.peers.len();
                }
                Ok(Admission::Updated) => report.updated += 1,
                Ok(Admission::Unchanged) => report.unchanged += 1,
                Err(reject) => {
                    report.evicted += before.saturating_sub(self.peers.len());
                    report.rejected.push(reject);
                }
            }
        }
        report
    }

    /// Decodes a G1 `pex` body with [`decode_entries`] and
    /// [`PexBook::accept`]s it. A malformed body changes nothing.
    pub fn accept_bytes(&mut self, body: &[u8], now: u64) -> Result<AcceptReport, Error> {
        let entries = decode_entries(body)?;
        Ok(self.accept(&entries, now))
    }

    /// Takes in one entry received at `now` (unix seconds).
    ///
    /// Refused: the local node's key, stale or future entries, a bad
    /// signature, and — when the book is full even after dropping stale
    /// entries — an entry older than every entry held. Otherwise a full book
    /// evicts its oldest entry.
    pub fn accept_entry(&mut self, entry: &PexEntry, now: u64) -> Result<Admission, PexReject> {
        if entry.public_key == self.local_key {
            return Err(PexReject::Local);
        }
        if entry.is_stale(now) {
            return Err(PexReject::Stale);
        }
        if entry.is_from_future(now) {
            return Err(PexReject::FromFuture);
        }
        let held = self.peers.get(&entry.public_key).map(|e| e.timestamp);
        if held.is_some_and(|ts| entry.timestamp <= ts) {
            // Not newer: skip the signature check, nothing would change.
            return Ok(Admission::Unchanged);
        }
        entry.verify().map_err(|_| PexReject::BadSignature)?;
        if held.is_some() {
            self.peers.insert(entry.public_key, *entry);
            return Ok(Admission::Updated);
        }
        if self.peers.len() >= MAX_KNOWN_PEERS {
            self.prune(now);
        }
        if self.peers.len() >= MAX_KNOWN_PEERS {
            let oldest =
                self.peers.iter().min_by_key(|(_, e)| e.timestamp).map(|(k, e)| (*k, e.timestamp));
            match oldest {
                Some((key, ts)) if ts < entry.timestamp => {
                    self.peers.remove(&key);
                }
                _ => return Err(PexReject::Full),
            }
        }
        self.peers.insert(entry.public_key, *entry);
        Ok(Admission::Added)
    }

    /// Up to [`MAX_ENTRIES_PER_EXCHANGE`] entries to send to the peer whose
    /// key is `recipient`: the local entry first (if set and fresh), then a
    /// sample of fresh known peers other than the recipient. `seed` picks
    /// the sample (pass a different value per exchange, e.g. from the
    /// exchange id) so that over time every peer gets shared.
    pub fn choose(&self, now: u64, recipient: Option<&[u8; 32]>, seed: u64) -> Vec<PexEntry> {
        let mut out = Vec::with_capacity(MAX_ENTRIES_PER_EXCHANGE);
        if let Some(local) = self.local.filter(|e| !e.is_stale(now)) {
            out.push(local);
        }
        let mut candidates: Vec<(u64, &PexEntry)> = self
            .peers
            .values()
            .filter(|e| !e.is_stale(now) && Some(&e.public_key) != recipient)
            .map(|e| (sample_rank(&e.public_key, seed), e))
            .collect();
        candidates.sort_unstable_by_key(|&(rank, e)| (rank, e.public_key));
        let room = MAX_ENTRIES_PER_EXCHANGE - out.len();
        out.extend(candidates.into_iter().take(room).map(|(_, e)| *e));
        out
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A per-exchange pseudo-random rank for sampling: the splitmix64 finaliser
/// of the key's first 8 bytes mixed with the seed.
fn sample_rank(public_key: &[u8; 32], seed: u64) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&public_key[..8]);
    let mut x = u64::from_be_bytes(first) ^ seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ricochet_wire::record::SigningKey;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    const NOW: u64 = 1_767_225_600;

    fn key(n: u16) -> SigningKey {
        let mut seed = [0x5Au8; 32];
        seed[..2].copy_from_slice(&n.to_be_bytes());
        SigningKey::from_bytes(&seed)
    }

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), port))
    }

    fn entry(n: u16, ts: u64) -> PexEntry {
        PexEntry::sign(&key(n), v4((n % 250) as u8 + 1, 9310), ts).unwrap()
    }

    #[test]
    fn book_accepts_verifies_and_refreshes() {
        let me = key(999);
        let mut book = PexBook::new(me.verifying_key().to_bytes());
        let a = entry(1, NOW - 10);
        let mut forged = entry(2, NOW);
        forged.timestamp += 1;
        let own = PexEntry::sign(&me, v4(9, 1), NOW).unwrap();
        let report =
            book.accept(&[a, forged, own, entry(3, NOW - MAX_AGE_SECS), entry(4, NOW + 301)], NOW);
        assert_eq!(report.discovered, vec![a.public_key]);
        assert_eq!(
            report.rejected,
            vec![
                PexReject::BadSignature,
                PexReject::Local,
                PexReject::Stale,
                PexReject::FromFuture
            ]
        );
        assert_eq!(book.len(), 1);

        // Same or older: unchanged. Newer: updated.
        let report = book.accept(&[a, entry(1, NOW - 20)], NOW);
        assert_eq!(report.unchanged, 2);
        let newer = entry(1, NOW);
        assert_eq!(book.accept_entry(&newer, NOW), Ok(Admission::Updated));
        assert_eq!(book.get(&a.public_key), Some(&newer));

        // Only ten per exchange.
        let many: Vec<_> = (100..112).map(|n| entry(n, NOW)).collect();
        let report = book.accept(&many, NOW);
        assert_eq!(report.discovered.len(), 10);
        assert_eq!(report.rejected, vec![PexReject::OverLimit; 2]);

        // Stale after an hour.
        assert_eq!(book.prune(NOW + MAX_AGE_SECS - 1), 0);
        assert_eq!(book.prune(NOW + MAX_AGE_SECS), 11);
        assert!(book.is_empty());
    }

    #[test]
    fn book_is_bounded_and_evicts_the_oldest() {
        let mut book = PexBook::new([0; 32]);
        for n in 0..MAX_KNOWN_PEERS as u16 {
            // Timestamps NOW-1000+n: entry 0 is the oldest.
            assert_eq!(
                book.accept_entry(&entry(n, NOW - 1000 + u64::from(n)), NOW),
                Ok(Admission::Added)
            );
        }
        assert_eq!(book.len(), MAX_KNOWN_PEERS);
        // Older than everything held: refused.
        assert_eq!(book.accept_entry(&entry(600, NOW - 2000), NOW), Err(PexReject::Full));
        // Newer: the oldest goes.
        let report = book.accept(&[entry(601, NOW)], NOW);
        assert_eq!((report.discovered.len(), report.evicted), (1, 1));
        assert_eq!(book.len(), MAX_KNOWN_PEERS);
        assert!(book.get(&key(0).verifying_key().to_bytes()).is_none());
        // Stale entries are dropped before anything fresh is evicted.
        let later = NOW - 1000 + 100 + MAX_AGE_SECS;
        assert_eq!(book.accept_entry(&entry(602, later), later), Ok(Admission::Added));
        assert_eq!(book.len(), MAX_KNOWN_PEERS - 100 + 1);
    }

    #[test]
    fn choose_shares_local_first_and_samples_the_rest() {
        let me = key(999);
        let mut book = PexBook::new(me.verifying_key().to_bytes());
        let own = PexEntry::sign(&me, v4(9, 9310), NOW).unwrap();
        assert_eq!(book.set_local(entry(1, NOW)), Err(PexReject::BadSignature));
        book.set_local(own).unwrap();
        assert_eq!(book.choose(NOW, None, 0), vec![own]);
        for n in 0..30 {
            book.accept_entry(&entry(n, NOW), NOW).unwrap();
        }
        let recipient = key(5).verifying_key().to_bytes();
        let a = book.choose(NOW, Some(&recipient), 1);
        assert_eq!(a.len(), MAX_ENTRIES_PER_EXCHANGE);
        assert_eq!(a[0], own);
        assert!(a.iter().all(|e| e.public_key != recipient));
        assert_eq!(a, book.choose(NOW, Some(&recipient), 1), "deterministic per seed");
        let b = book.choose(NOW, Some(&recipient), 2);
        assert_ne!(a, b, "another seed, another sample");
        // Nothing stale is shared, the local entry included.
        assert!(book.choose(NOW + MAX_AGE_SECS, None, 1).is_empty());
        // Round trip through a G1 body.
        let mut buf = [0u8; MAX_LIST_LEN];
        let n = encode_entries(&a, &mut buf).unwrap();
        let mut other = PexBook::new(recipient);
        let report = other.accept_bytes(&buf[..n], NOW).unwrap();
        assert_eq!(report.discovered.len(), 10);
        assert!(other.accept_bytes(&buf[..n - 1], NOW).is_err());
    }

    proptest! {
        #[test]
        fn prop_a_book_fed_arbitrary_bytes_stays_bounded(
            data in proptest::collection::vec(any::<u8>(), 0..1400),
        ) {
            let mut book = PexBook::new([1; 32]);
            let _ = book.accept_bytes(&data, NOW);
            prop_assert!(book.len() <= MAX_ENTRIES_PER_EXCHANGE);
        }
    }
}
