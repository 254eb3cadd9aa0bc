//! Peer exchange (PEX): signed peer entries and the book of known peers.
//!
//! Siblings learn about endpoints beyond their `--gossip-peers` seeds by
//! trading signed peer entries inside G1 exchanges of topic [`TOPIC`]
//! (`pex`). The limits come from seed 002: at most
//! [`MAX_ENTRIES_PER_EXCHANGE`] (10) entries per exchange, at most
//! [`MAX_KNOWN_PEERS`] (500) peers remembered, an entry stale
//! [`MAX_AGE_SECS`] (1 h) after it was signed. The byte layout is ricochet's
//! own.
//!
//! # Entry layout
//!
//! All integers big-endian. 111 bytes for IPv4, 123 for IPv6.
//!
//! | offset | size  | field |
//! |--------|-------|-------|
//! | 0      | 1     | address family: `0x04` IPv4, `0x06` IPv6; anything else is `unknown_type` |
//! | 1      | 32    | ed25519 public key of the node (its node id is BLAKE3 of it) |
//! | 33     | 8     | timestamp: unix seconds when the node signed the entry |
//! | 41     | 2     | gossip UDP port, not 0 |
//! | 43     | 4/16  | IP address: not unspecified, not multicast; IPv6 never IPv4-mapped (IPv4 travels as family `0x04`) |
//! | 47/59  | 64    | ed25519 signature |
//!
//! A G1 body of topic `pex` carries a list: `[u8 count ≤ 10][entry] × count`,
//! nothing after. Ten IPv4 entries (1111 bytes) fit one default 1232-byte
//! datagram with the G1 header and cluster MAC; a list with many IPv6
//! entries (at most [`MAX_LIST_LEN`] = 1231 bytes) takes two G1 chunks.
//!
//! # Signature
//!
//! Pure ed25519, checked with strict verification (`verify_strict`: no
//! non-canonical `S`, no small-order key or `R`), made with
//! [`record::sign_detached`] under the tag [`SIGNING_TAG`]
//! (`ricochet/pex/v1`) over every entry byte before the signature: family,
//! public key, timestamp, port and address. The tag binds the signature to
//! PEX: it verifies as no DHT record and no other signed message.
//!
//! # Contract
//! - Pure: the caller passes `now` as unix seconds; nothing here reads a
//!   clock or a socket.
//! - [`PexEntry::parse`] and [`decode_entries`] never panic on any input and
//!   allocate at most [`MAX_ENTRIES_PER_EXCHANGE`] entries; they check the
//!   structure only. [`PexBook::accept`] verifies signatures before storing.
//! - The encoding is canonical: whatever parses re-encodes to the same bytes.
//! - [`PexBook`] never holds more than [`MAX_KNOWN_PEERS`] peers besides the
//!   local node's own entry.
//! - This file depends on `ricochet_wire` and `std` only, so the `pex` fuzz
//!   target can include it directly.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ricochet_wire::Error;
use ricochet_wire::record::{self, SigningKey};

/// The G1 topic PEX entries travel under.
pub const TOPIC: &[u8] = b"pex";
/// Most entries one exchange may carry.
pub const MAX_ENTRIES_PER_EXCHANGE: usize = 10;
/// Most peers a [`PexBook`] remembers.
pub const MAX_KNOWN_PEERS: usize = 500;
/// Seconds after its timestamp at which an entry is stale (1 h).
pub const MAX_AGE_SECS: u64 = 3600;
/// How far in the future an entry's timestamp may be before it is refused:
/// tolerance for clock skew between siblings, and a cap on how long a node
/// can make its entry last.
pub const MAX_FUTURE_SECS: u64 = 300;
/// The tag PEX signatures are made under (see the module docs).
pub const SIGNING_TAG: &[u8] = b"ricochet/pex/v1";
/// Length of an entry carrying an IPv4 address.
pub const V4_LEN: usize = 111;
/// Length of an entry carrying an IPv6 address.
pub const V6_LEN: usize = 123;
/// Longest list [`encode_entries`] writes: the count byte and ten IPv6
/// entries.
pub const MAX_LIST_LEN: usize = 1 + MAX_ENTRIES_PER_EXCHANGE * V6_LEN;

/// One signed peer advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PexEntry {
    /// The node's ed25519 public key; identifies the peer.
    pub public_key: [u8; 32],
    /// Where the node takes gossip.
    pub addr: SocketAddr,
    /// When the node signed the entry, unix seconds.
    pub timestamp: u64,
    /// ed25519 signature (see the module docs for what it covers).
    pub signature: [u8; 64],
}

impl PexEntry {
    /// Signs an entry for the node holding `key`, reachable at `addr`, at
    /// `timestamp` (unix seconds). An IPv4-mapped IPv6 address is stored as
    /// IPv4; IPv6 flow info and scope id are not carried.
    ///
    /// Errors: [`Error::BadField`] (`"pex.port"`, `"pex.addr"`) for an
    /// address a peer would refuse.
    pub fn sign(key: &SigningKey, addr: SocketAddr, timestamp: u64) -> Result<Self, Error> {
        let addr = canonical(addr);
        check_addr(&addr)?;
        let public_key = key.verifying_key().to_bytes();
        let mut entry = PexEntry { public_key, addr, timestamp, signature: [0; SIGNATURE_LEN] };
        let mut buf = [0u8; V6_LEN];
        let signed = entry.signed_bytes(&mut buf)?;
        entry.signature = record::sign_detached(key, SIGNING_TAG, signed)?;
        Ok(entry)
    }

    /// Writes the entry and returns the bytes its signature covers:
    /// everything before the signature.
    fn signed_bytes<'b>(&self, buf: &'b mut [u8; V6_LEN]) -> Result<&'b [u8], Error> {
        let len = self.emit(buf)?;
        Ok(&buf[..len - SIGNATURE_LEN])
    }

    /// Strictly verifies the signature; [`Error::BadSignature`] otherwise
    /// (including for an invalid or small-order public key), and
    /// [`Error::BadField`] for an address [`PexEntry::parse`] would refuse.
    pub fn verify(&self) -> Result<(), Error> {
        let mut buf = [0u8; V6_LEN];
        let signed = self.signed_bytes(&mut buf)?;
        record::verify_detached(&self.public_key, SIGNING_TAG, signed, &self.signature)
    }

    /// The node id, BLAKE3 of the public key.
    pub fn node_id(&self) -> [u8; 32] {
        record::node_id(&self.public_key)
    }

    /// Whether the entry is stale at `now` (unix seconds): it is fresh for
    /// `now < timestamp + MAX_AGE_SECS`.
    pub fn is_stale(&self, now: u64) -> bool {
        now >= self.timestamp.saturating_add(MAX_AGE_SECS)
    }

    /// Whether the timestamp lies more than [`MAX_FUTURE_SECS`] after `now`.
    pub fn is_from_future(&self, now: u64) -> bool {
        self.timestamp > now.saturating_add(MAX_FUTURE_SECS)
    }

    /// Bytes [`PexEntry::emit`] writes: [`V4_LEN`] or [`V6_LEN`].
    pub fn buffer_len(&self) -> usize {
        match self.addr {
            SocketAddr::V4(_) => V4_LEN,
            SocketAddr::V6(_) => V6_LEN,
        }
    }

    /// Writes the entry into the start of `buf` and returns its length.
    ///
    /// Errors: [`Error::BadField`] for an address [`PexEntry::parse`] would
    /// refuse, [`Error::Truncated`] if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        check_addr(&self.addr)?;
        let len = self.buffer_len();
        let got = buf.len();
        let out = buf.get_mut(..len).ok_or(Error::Truncated { needed: len, got })?;
        out[layout::PUBLIC_KEY].copy_from_slice(&self.public_key);
        out[layout::TIMESTAMP].copy_from_slice(&self.timestamp.to_be_bytes());
        out[layout::PORT].copy_from_slice(&self.addr.port().to_be_bytes());
        match &self.addr {
            SocketAddr::V4(a) => {
                out[layout::FAMILY] = FAMILY_V4;
                out[layout::ADDR..layout::ADDR + 4].copy_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                out[layout::FAMILY] = FAMILY_V6;
                out[layout::ADDR..layout::ADDR + 16].copy_from_slice(&a.ip().octets());
            }
        }
        out[len - SIGNATURE_LEN..].copy_from_slice(&self.signature);
        Ok(len)
    }

    /// Parses exactly one entry (structure only: call [`PexEntry::verify`]
    /// before trusting it).
    ///
    /// Errors: [`Error::Truncated`], [`Error::UnknownType`] for an unknown
    /// family byte, [`Error::BadField`] (`"pex.port"`, `"pex.addr"`), and
    /// [`Error::LengthMismatch`] for trailing bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (entry, len) = Self::parse_prefix(buf)?;
        if len != buf.len() {
            return Err(Error::LengthMismatch { declared: len, actual: buf.len() });
        }
        Ok(entry)
    }

    /// Parses the entry at the start of `buf`, returning it and its length.
    fn parse_prefix(buf: &[u8]) -> Result<(Self, usize), Error> {
        let family = *buf.first().ok_or(Error::Truncated { needed: 1, got: 0 })?;
        let len = match family {
            FAMILY_V4 => V4_LEN,
            FAMILY_V6 => V6_LEN,
            other => return Err(Error::UnknownType(other)),
        };
        let b = buf.get(..len).ok_or(Error::Truncated { needed: len, got: buf.len() })?;
        let port = u16::from_be_bytes(array(b, layout::PORT.start));
        let ip = match family {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(array::<4>(b, layout::ADDR))),
            _ => IpAddr::V6(Ipv6Addr::from(array::<16>(b, layout::ADDR))),
        };
        let addr = SocketAddr::new(ip, port);
        check_addr(&addr)?;
        let entry = PexEntry {
            public_key: array(b, layout::PUBLIC_KEY.start),
            addr,
            timestamp: u64::from_be_bytes(array(b, layout::TIMESTAMP.start)),
            signature: array(b, len - SIGNATURE_LEN),
        };
        Ok((entry, len))
    }
}

/// Bytes [`encode_entries`] writes for `entries`.
pub fn entries_len(entries: &[PexEntry]) -> usize {
    1 + entries.iter().map(PexEntry::buffer_len).sum::<usize>()
}

/// Writes a PEX list (`[u8 count][entries]`) into the start of `buf` and
/// returns its length: the entries of one G1 `pex` exchange.
///
/// Errors: [`Error::TooLong`] for more than [`MAX_ENTRIES_PER_EXCHANGE`]
/// entries, and as [`PexEntry::emit`].
pub fn encode_entries(entries: &[PexEntry], buf: &mut [u8]) -> Result<usize, Error> {
    if entries.len() > MAX_ENTRIES_PER_EXCHANGE {
        return Err(Error::TooLong { max: MAX_ENTRIES_PER_EXCHANGE, got: entries.len() });
    }
    let len = entries_len(entries);
    if buf.len() < len {
        return Err(Error::Truncated { needed: len, got: buf.len() });
    }
    // Bounded by the check above, so it fits the count byte.
    buf[0] = entries.len() as u8;
    let mut at = 1;
    for entry in entries {
        at += entry.emit(&mut buf[at..])?;
    }
    Ok(at)
}

/// Parses a PEX list. Structure only: [`PexBook::accept`] verifies.
///
/// Errors: [`Error::TooLong`] for a count over [`MAX_ENTRIES_PER_EXCHANGE`]
/// (judged before any entry is read), [`Error::LengthMismatch`] for bytes
/// after the last entry, and as [`PexEntry::parse`].
pub fn decode_entries(buf: &[u8]) -> Result<Vec<PexEntry>, Error> {
    let count = usize::from(*buf.first().ok_or(Error::Truncated { needed: 1, got: 0 })?);
    if count > MAX_ENTRIES_PER_EXCHANGE {
        return Err(Error::TooLong { max: MAX_ENTRIES_PER_EXCHANGE, got: count });
    }
    let mut entries = Vec::with_capacity(count);
    let mut at = 1;
    for _ in 0..count {
        let rest = buf.get(at..).unwrap_or_default();
        let (entry, len) = PexEntry::parse_prefix(rest).map_err(|e| shift_truncated(e, at))?;
        entries.push(entry);
        at += len;
    }
    if at != buf.len() {
        return Err(Error::LengthMismatch { declared: at, actual: buf.len() });
    }
    Ok(entries)
}

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

const FAMILY_V4: u8 = 0x04;
const SIGNATURE_LEN: usize = record::SIGNATURE_LEN;
const FAMILY_V6: u8 = 0x06;

/// Entry field offsets; the address runs from `ADDR` to the signature.
mod layout {
    use core::ops::Range;

    pub(super) const FAMILY: usize = 0;
    pub(super) const PUBLIC_KEY: Range<usize> = 1..33;
    pub(super) const TIMESTAMP: Range<usize> = 33..41;
    pub(super) const PORT: Range<usize> = 41..43;
    pub(super) const ADDR: usize = 43;
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn check_addr(addr: &SocketAddr) -> Result<(), Error> {
    if addr.port() == 0 {
        return Err(Error::BadField("pex.port"));
    }
    let ip = addr.ip();
    let mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if ip.is_unspecified() || ip.is_multicast() || mapped {
        return Err(Error::BadField("pex.addr"));
    }
    Ok(())
}

/// `N` bytes at `at`; the callers have checked the length, and a short
/// slice yields zeros rather than a panic.
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Reports a truncation inside a list relative to the whole list.
fn shift_truncated(e: Error, offset: usize) -> Error {
    match e {
        Error::Truncated { needed, got } => {
            Error::Truncated { needed: needed + offset, got: got + offset }
        }
        other => other,
    }
}

/// A per-exchange pseudo-random rank for sampling: the splitmix64 finaliser
/// of the key's first 8 bytes mixed with the seed.
fn sample_rank(public_key: &[u8; 32], seed: u64) -> u64 {
    let mut x = u64::from_be_bytes(array(public_key, 0)) ^ seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

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

    fn bytes(e: &PexEntry) -> Vec<u8> {
        let mut buf = vec![0; e.buffer_len()];
        assert_eq!(e.emit(&mut buf), Ok(buf.len()));
        buf
    }

    #[test]
    fn layout_is_as_documented() {
        let e = PexEntry::sign(&key(1), v4(7, 0x2456), 0x0102_0304_0506_0708).unwrap();
        let b = bytes(&e);
        assert_eq!(b.len(), V4_LEN);
        assert_eq!(b[0], 0x04);
        assert_eq!(&b[1..33], &key(1).verifying_key().to_bytes());
        assert_eq!(&b[33..41], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[41..43], &[0x24, 0x56]);
        assert_eq!(&b[43..47], &[10, 0, 0, 7]);
        assert_eq!(&b[47..], &e.signature);

        let ip6 = "2001:db8::1".parse().unwrap();
        let e6 =
            PexEntry::sign(&key(1), SocketAddr::V6(SocketAddrV6::new(ip6, 9310, 0, 0)), 5).unwrap();
        let b6 = bytes(&e6);
        assert_eq!((b6.len(), b6[0]), (V6_LEN, 0x06));
        assert_eq!(&b6[43..59], &ip6.octets());
        assert_eq!(PexEntry::parse(&b6), Ok(e6));
    }

    #[test]
    fn an_entry_signed_by_another_implementation_verifies() {
        // fuzz/seeds/pex/entry-v4 was signed with Python's `cryptography`
        // (seed [7; 32], 127.0.0.1:9310, timestamp 1 700 000 000).
        let e = PexEntry::parse(include_bytes!("../../../../fuzz/seeds/pex/entry-v4")).unwrap();
        e.verify().unwrap();
        assert_eq!((e.addr, e.timestamp), ("127.0.0.1:9310".parse().unwrap(), 1_700_000_000));
        let signer = SigningKey::from_bytes(&[7; 32]);
        assert_eq!(e, PexEntry::sign(&signer, e.addr, e.timestamp).unwrap());
    }

    #[test]
    fn the_signature_covers_the_entry_under_the_pex_tag() {
        // Pins the signed message: every byte before the signature, under
        // the tag ricochet/pex/v1.
        let e = entry(3, NOW);
        let b = bytes(&e);
        let sig = record::sign_detached(&key(3), b"ricochet/pex/v1", &b[..b.len() - 64]).unwrap();
        assert_eq!(sig, e.signature);
    }

    #[test]
    fn sign_parse_verify() {
        let e = entry(1, NOW);
        e.verify().unwrap();
        let parsed = PexEntry::parse(&bytes(&e)).unwrap();
        assert_eq!(parsed, e);
        parsed.verify().unwrap();
        assert_eq!(e.node_id(), record::node_id(&e.public_key));
    }

    #[test]
    fn every_covered_byte_is_covered() {
        let e = entry(2, NOW);
        let b = bytes(&e);
        for i in 0..b.len() - 64 {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            if let Ok(p) = PexEntry::parse(&bad) {
                assert_eq!(p.verify(), Err(Error::BadSignature), "byte {i}");
            }
        }
        let mut bad = b.clone();
        bad[V4_LEN - 1] ^= 0x80;
        assert_eq!(PexEntry::parse(&bad).unwrap().verify(), Err(Error::BadSignature));
    }

    #[test]
    fn non_canonical_signature_is_refused() {
        // S + L (the group order) verifies under lax rules but not strictly.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut e = entry(4, NOW);
        let mut carry = 0u16;
        for (s, l) in e.signature[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(e.verify(), Err(Error::BadSignature));
    }

    #[test]
    fn addresses_are_checked() {
        let k = key(1);
        assert_eq!(PexEntry::sign(&k, v4(1, 0), NOW), Err(Error::BadField("pex.port")));
        let unspecified = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 1);
        assert_eq!(PexEntry::sign(&k, unspecified, NOW), Err(Error::BadField("pex.addr")));
        let multicast = SocketAddr::new(Ipv4Addr::new(239, 1, 2, 3).into(), 1);
        assert_eq!(PexEntry::sign(&k, multicast, NOW), Err(Error::BadField("pex.addr")));
        // An IPv4-mapped address is signed and sent as IPv4 ...
        let mapped = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().into(), 5);
        let e = PexEntry::sign(&k, mapped, NOW).unwrap();
        assert_eq!(e.addr, v4(9, 5));
        // ... and the mapped form is refused on the wire.
        let mut b = vec![0u8; V6_LEN];
        b[0] = 0x06;
        b[41..43].copy_from_slice(&5u16.to_be_bytes());
        b[43..59].copy_from_slice(&Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().octets());
        assert_eq!(PexEntry::parse(&b), Err(Error::BadField("pex.addr")));
        let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 9310);
        assert!(PexEntry::sign(&k, loopback, NOW).is_ok(), "loopback clusters are fine");
    }

    #[test]
    fn parse_errors() {
        let b = bytes(&entry(1, NOW));
        assert_eq!(PexEntry::parse(&[]), Err(Error::Truncated { needed: 1, got: 0 }));
        assert_eq!(PexEntry::parse(&b[..50]), Err(Error::Truncated { needed: V4_LEN, got: 50 }));
        assert_eq!(PexEntry::parse(&[0x05]), Err(Error::UnknownType(0x05)));
        let long = [&b[..], &[0]].concat();
        assert_eq!(
            PexEntry::parse(&long),
            Err(Error::LengthMismatch { declared: V4_LEN, actual: V4_LEN + 1 })
        );
        assert_eq!(
            entry(1, NOW).emit(&mut [0; 10]),
            Err(Error::Truncated { needed: V4_LEN, got: 10 })
        );
    }

    #[test]
    fn lists() {
        let entries: Vec<_> = (0..10).map(|n| entry(n, NOW)).collect();
        let mut buf = [0u8; MAX_LIST_LEN];
        let n = encode_entries(&entries, &mut buf).unwrap();
        assert_eq!(n, 1 + 10 * V4_LEN);
        assert_eq!(decode_entries(&buf[..n]), Ok(entries.clone()));
        assert_eq!(decode_entries(&[0]), Ok(vec![]));
        assert_eq!(decode_entries(&[]), Err(Error::Truncated { needed: 1, got: 0 }));
        assert_eq!(decode_entries(&[11]), Err(Error::TooLong { max: 10, got: 11 }));
        assert_eq!(decode_entries(&buf[..n - 1]), Err(Error::Truncated { needed: n, got: n - 1 }));
        let mut trailing = buf[..n].to_vec();
        trailing.push(0);
        assert_eq!(
            decode_entries(&trailing),
            Err(Error::LengthMismatch { declared: n, actual: n + 1 })
        );
        let eleven: Vec<_> = (0..11).map(|n| entry(n, NOW)).collect();
        assert_eq!(encode_entries(&eleven, &mut buf), Err(Error::TooLong { max: 10, got: 11 }));
        // Ten IPv4 entries fit one default datagram: G1 header (24 + topic)
        // and cluster MAC (16) included. Ten IPv6 entries need two chunks.
        let g1_overhead = 24 + TOPIC.len() + 16;
        assert!(1 + 10 * V4_LEN + g1_overhead <= 1232);
        assert!(MAX_LIST_LEN + g1_overhead > 1232);
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

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
            (any::<[u8; 16]>(), 1u16..)
                .prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = PexEntry> {
        (any::<[u8; 32]>(), arb_addr(), any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(public_key, addr, timestamp, s1, s2)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&s1);
                signature[32..].copy_from_slice(&s2);
                PexEntry { public_key, addr, timestamp, signature }
            })
            .prop_filter("addresses a peer would accept", |e| check_addr(&e.addr).is_ok())
    }

    proptest! {
        #[test]
        fn prop_arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1400)) {
            if let Ok(e) = PexEntry::parse(&data) {
                prop_assert_eq!(bytes(&e), data.clone());
                let _ = e.verify();
            }
            if let Ok(list) = decode_entries(&data) {
                prop_assert!(list.len() <= MAX_ENTRIES_PER_EXCHANGE);
                let mut out = vec![0u8; data.len()];
                prop_assert_eq!(encode_entries(&list, &mut out), Ok(data.len()));
                prop_assert_eq!(out, data.clone());
            }
            let mut book = PexBook::new([1; 32]);
            let _ = book.accept_bytes(&data, NOW);
            prop_assert!(book.len() <= MAX_ENTRIES_PER_EXCHANGE);
        }

        #[test]
        fn prop_lists_of_plausible_bytes_never_panic(
            count in 0u8..12,
            family in prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
            tail in proptest::collection::vec(any::<u8>(), 0..1400),
        ) {
            let data = [&[count, family][..], &tail].concat();
            let _ = decode_entries(&data);
            let _ = PexEntry::parse(&data[1..]);
        }

        #[test]
        fn prop_entries_round_trip(e in arb_entry()) {
            let b = bytes(&e);
            prop_assert_eq!(PexEntry::parse(&b), Ok(e));
        }

        #[test]
        fn prop_lists_round_trip(list in proptest::collection::vec(arb_entry(), 0..=10)) {
            let mut buf = vec![0u8; entries_len(&list)];
            prop_assert_eq!(encode_entries(&list, &mut buf), Ok(buf.len()));
            prop_assert_eq!(decode_entries(&buf), Ok(list));
        }

        #[test]
        fn prop_signed_entries_verify(
            seed in any::<[u8; 32]>(),
            addr in arb_addr(),
            ts in any::<u64>(),
        ) {
            let key = SigningKey::from_bytes(&seed);
            if let Ok(e) = PexEntry::sign(&key, addr, ts) {
                let parsed = PexEntry::parse(&bytes(&e)).unwrap();
                prop_assert_eq!(parsed.verify(), Ok(()));
                let mut other = parsed;
                other.timestamp = ts.wrapping_add(1);
                prop_assert_eq!(other.verify(), Err(Error::BadSignature));
            }
        }
    }
}
