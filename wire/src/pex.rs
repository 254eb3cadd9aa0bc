//! PEX entries: signed peer advertisements traded in G1 bodies of topic
//! [`TOPIC`] (`pex`).
//!
//! Implements `docs/PROTOCOL.md` § "Topic `pex` — peer exchange entries".
//! The limits come from seed 002 (at most [`MAX_ENTRIES_PER_EXCHANGE`]
//! entries per exchange, an entry stale [`MAX_AGE_SECS`] after it was
//! signed); the byte layout is ricochet's own. The book of known peers that
//! consumes these entries is `ricochet_proto::gossip::pex`.
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
//! - [`Entry::new_checked`] and [`List::new_checked`] never panic and never
//!   allocate; they check the structure only ([`PexEntry::verify`] checks
//!   the signature). [`decode_entries`] allocates at most
//!   [`MAX_ENTRIES_PER_EXCHANGE`] entries.
//! - The encoding is canonical: whatever parses re-encodes to the same bytes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::field::{Writer, array, array_ref, slice, u8_at, u16_at, u64_at};
use crate::record::{self, SigningKey};

/// The G1 topic PEX entries travel under.
pub const TOPIC: &[u8] = b"pex";
/// Most entries one exchange may carry.
pub const MAX_ENTRIES_PER_EXCHANGE: usize = 10;
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
/// Family byte of an entry carrying an IPv4 address.
pub const FAMILY_V4: u8 = 0x04;
/// Family byte of an entry carrying an IPv6 address.
pub const FAMILY_V6: u8 = 0x06;

/// Entry field offsets; the address runs from `ADDR` to the signature.
mod layout {
    use crate::field::Field;

    pub(super) const FAMILY: usize = 0;
    pub(super) const PUBLIC_KEY: Field = 1..33;
    pub(super) const TIMESTAMP: Field = 33..41;
    pub(super) const PORT: Field = 41..43;
    pub(super) const ADDR: usize = 43;
    /// List: the count byte, then the entries.
    pub(super) const COUNT: usize = 0;
    pub(super) const ENTRIES: usize = 1;
}

const SIGNATURE_LEN: usize = record::SIGNATURE_LEN;

/// A checked view of exactly one PEX entry (structure only: the signature
/// is not verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    buf: &'a [u8],
}

impl<'a> Entry<'a> {
    /// Checks the family, the length (exactly one entry), the port and the
    /// address.
    ///
    /// Errors: [`Error::Truncated`], [`Error::UnknownType`] for an unknown
    /// family byte, [`Error::BadField`] (`"pex.port"`, `"pex.addr"`), and
    /// [`Error::LengthMismatch`] for trailing bytes.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        let len = check_entry(buf, 0)?;
        if len != buf.len() {
            return Err(Error::LengthMismatch { declared: len, actual: buf.len() });
        }
        Ok(Entry { buf })
    }

    /// The whole entry.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The node's ed25519 public key.
    pub fn public_key(&self) -> &'a [u8; 32] {
        array_ref(self.buf, layout::PUBLIC_KEY.start)
    }

    /// Unix seconds when the node signed the entry.
    pub fn timestamp(&self) -> u64 {
        u64_at(self.buf, layout::TIMESTAMP.start)
    }

    /// The node's gossip address (never port 0, unspecified, multicast or
    /// IPv4-mapped).
    pub fn addr(&self) -> SocketAddr {
        entry_addr(self.buf)
    }

    /// The bytes the signature covers: everything before it.
    pub fn signed_bytes(&self) -> &'a [u8] {
        slice(self.buf, 0..self.buf.len() - SIGNATURE_LEN)
    }

    /// The ed25519 signature.
    pub fn signature(&self) -> &'a [u8; 64] {
        array_ref(self.buf, self.buf.len() - SIGNATURE_LEN)
    }
}

/// A checked view of a PEX list, `[u8 count ≤ 10][entry] × count`, nothing
/// after (structure only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List<'a> {
    buf: &'a [u8],
}

impl<'a> List<'a> {
    /// Checks the count and every entry, and that nothing follows the last.
    ///
    /// Errors: [`Error::TooLong`] for a count over
    /// [`MAX_ENTRIES_PER_EXCHANGE`] (judged before any entry is read),
    /// [`Error::LengthMismatch`] for bytes after the last entry, and as
    /// [`Entry::new_checked`] (a truncation counted from the list's start).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        let count = usize::from(*buf.first().ok_or(Error::Truncated { needed: 1, got: 0 })?);
        if count > MAX_ENTRIES_PER_EXCHANGE {
            return Err(Error::TooLong { max: MAX_ENTRIES_PER_EXCHANGE, got: count });
        }
        let mut at = layout::ENTRIES;
        for _ in 0..count {
            at += check_entry(buf, at)?;
        }
        if at != buf.len() {
            return Err(Error::LengthMismatch { declared: at, actual: buf.len() });
        }
        Ok(List { buf })
    }

    /// Entries in the list.
    pub fn len(&self) -> usize {
        usize::from(u8_at(self.buf, layout::COUNT))
    }

    /// Whether the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> ListIter<'a> {
        ListIter { rest: slice(self.buf, layout::ENTRIES..self.buf.len()) }
    }
}

/// The entries of a [`List`].
#[derive(Debug, Clone)]
pub struct ListIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ListIter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        // The list was checked: every entry is well-formed.
        let len = check_entry(self.rest, 0).ok()?;
        let (head, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(Entry { buf: head })
    }
}

/// One signed peer advertisement: the parsed form of an [`Entry`].
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
    pub fn sign(key: &SigningKey, addr: SocketAddr, timestamp: u64) -> Result<Self> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        check_addr(&addr)?;
        let public_key = key.verifying_key().to_bytes();
        let mut entry = PexEntry { public_key, addr, timestamp, signature: [0; SIGNATURE_LEN] };
        let mut buf = [0u8; V6_LEN];
        let len = entry.emit(&mut buf)?;
        entry.signature = record::sign_detached(key, SIGNING_TAG, &buf[..len - SIGNATURE_LEN])?;
        Ok(entry)
    }

    /// Strictly verifies the signature; [`Error::BadSignature`] otherwise
    /// (including for an invalid or small-order public key), and
    /// [`Error::BadField`] for an address [`PexEntry::parse`] would refuse.
    pub fn verify(&self) -> Result<()> {
        let mut buf = [0u8; V6_LEN];
        let len = self.emit(&mut buf)?;
        let signed = &buf[..len - SIGNATURE_LEN];
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

    /// Lifts a checked view.
    pub fn from_view(view: &Entry<'_>) -> Self {
        PexEntry {
            public_key: *view.public_key(),
            addr: view.addr(),
            timestamp: view.timestamp(),
            signature: *view.signature(),
        }
    }

    /// Parses exactly one entry (structure only: call [`PexEntry::verify`]
    /// before trusting it). Errors as [`Entry::new_checked`].
    pub fn parse(buf: &[u8]) -> Result<Self> {
        Entry::new_checked(buf).map(|v| PexEntry::from_view(&v))
    }

    /// Writes the entry into the start of `buf` and returns its length.
    ///
    /// Errors: [`Error::BadField`] for an address [`PexEntry::parse`] would
    /// refuse, [`Error::Truncated`] if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        check_addr(&self.addr)?;
        let len = self.buffer_len();
        let mut w = Writer::new(buf, len)?;
        w.bytes(layout::PUBLIC_KEY.start, &self.public_key);
        w.u64(layout::TIMESTAMP.start, self.timestamp);
        w.u16(layout::PORT.start, self.addr.port());
        match &self.addr {
            SocketAddr::V4(a) => {
                w.u8(layout::FAMILY, FAMILY_V4);
                w.bytes(layout::ADDR, &a.ip().octets());
            }
            SocketAddr::V6(a) => {
                w.u8(layout::FAMILY, FAMILY_V6);
                w.bytes(layout::ADDR, &a.ip().octets());
            }
        }
        w.bytes(len - SIGNATURE_LEN, &self.signature);
        Ok(len)
    }
}

/// Bytes [`encode_entries`] writes for `entries`.
pub fn entries_len(entries: &[PexEntry]) -> usize {
    layout::ENTRIES + entries.iter().map(PexEntry::buffer_len).sum::<usize>()
}

/// Writes a PEX list (`[u8 count][entries]`) into the start of `buf` and
/// returns its length: the entries of one G1 `pex` exchange.
///
/// Errors: [`Error::TooLong`] for more than [`MAX_ENTRIES_PER_EXCHANGE`]
/// entries, and as [`PexEntry::emit`].
pub fn encode_entries(entries: &[PexEntry], buf: &mut [u8]) -> Result<usize> {
    if entries.len() > MAX_ENTRIES_PER_EXCHANGE {
        return Err(Error::TooLong { max: MAX_ENTRIES_PER_EXCHANGE, got: entries.len() });
    }
    let len = entries_len(entries);
    let got = buf.len();
    let out = buf.get_mut(..len).ok_or(Error::Truncated { needed: len, got })?;
    // Bounded by the check above, so it fits the count byte.
    out[layout::COUNT] = entries.len() as u8;
    let mut at = layout::ENTRIES;
    for entry in entries {
        at += entry.emit(&mut out[at..])?;
    }
    Ok(at)
}

/// Parses a PEX list into its entries. Structure only; errors as
/// [`List::new_checked`].
pub fn decode_entries(buf: &[u8]) -> Result<Vec<PexEntry>> {
    let list = List::new_checked(buf)?;
    Ok(list.iter().map(|e| PexEntry::from_view(&e)).collect())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Checks the entry starting at `buf[at..]` and returns its length. A
/// truncation is reported against the whole of `buf`.
fn check_entry(buf: &[u8], at: usize) -> Result<usize> {
    let got = buf.len();
    let family = *buf.get(at).ok_or(Error::Truncated { needed: at + 1, got })?;
    let len = match family {
        FAMILY_V4 => V4_LEN,
        FAMILY_V6 => V6_LEN,
        other => return Err(Error::UnknownType(other)),
    };
    let entry = buf.get(at..at + len).ok_or(Error::Truncated { needed: at + len, got })?;
    check_addr(&entry_addr(entry))?;
    Ok(len)
}

/// The address of an entry whose family and length are checked.
fn entry_addr(entry: &[u8]) -> SocketAddr {
    let port = u16_at(entry, layout::PORT.start);
    let ip = match u8_at(entry, layout::FAMILY) {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(array::<4>(entry, layout::ADDR))),
        _ => IpAddr::V6(Ipv6Addr::from(array::<16>(entry, layout::ADDR))),
    };
    SocketAddr::new(ip, port)
}

fn check_addr(addr: &SocketAddr) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    const NOW: u64 = 1_767_225_600;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The node with seed `[n; 32]`, signing `10.0.0.n:9310` at `ts`.
    fn signed(n: u8, ts: u64) -> PexEntry {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, n), 9310));
        PexEntry::sign(&SigningKey::from_bytes(&[n; 32]), addr, ts).unwrap()
    }

    fn emitted(e: &PexEntry) -> Vec<u8> {
        let mut buf = vec![0; e.buffer_len()];
        assert_eq!(e.emit(&mut buf), Ok(buf.len()));
        buf
    }

    /// docs/PROTOCOL.md § "Topic `pex`": the entry of the node with seed
    /// `[7; 32]` at `127.0.0.1:9310`, signed at 1 700 000 000. The signature
    /// was made with Python's `cryptography` (fuzz/seeds/pex/entry-v4).
    const GOLDEN_V4: &str = "04
        ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c
        000000006553f100 245e 7f000001
        430587d4d1cb078bf24fb6a8556ee4d1c4e43c7d84e0fd2ab5fd5582e0e4c7b3
        cb62edad7fab8bdedf227d5f229c967d5d0d2772453e52e1b4b45c28dfb9e203";

    #[test]
    fn golden_vector_both_ways() {
        let bytes = unhex(GOLDEN_V4);
        assert_eq!(bytes, include_bytes!("../../fuzz/seeds/pex/entry-v4"));
        let view = Entry::new_checked(&bytes).unwrap();
        assert_eq!(view.timestamp(), 1_700_000_000);
        assert_eq!(view.addr(), "127.0.0.1:9310".parse().unwrap());
        assert_eq!(view.signed_bytes().len(), V4_LEN - 64);
        let e = PexEntry::parse(&bytes).unwrap();
        e.verify().unwrap();
        let signer = SigningKey::from_bytes(&[7; 32]);
        let again = PexEntry::sign(&signer, e.addr, e.timestamp).unwrap();
        assert_eq!(again, e);
        assert_eq!(emitted(&again), bytes);
        // The one-entry list is the count byte and the entry.
        let list = [&[1u8][..], &bytes].concat();
        assert_eq!(list, include_bytes!("../../fuzz/seeds/pex/list-one"));
        assert_eq!(decode_entries(&list), Ok(vec![e]));
        let mut out = [0u8; MAX_LIST_LEN];
        assert_eq!(encode_entries(&[e], &mut out), Ok(list.len()));
        assert_eq!(hex(&out[..list.len()]), hex(&list));
    }

    #[test]
    fn layout_is_as_documented() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 0x2456));
        let e = PexEntry::sign(&key, addr, 0x0102_0304_0506_0708).unwrap();
        let b = emitted(&e);
        assert_eq!(b.len(), V4_LEN);
        assert_eq!(b[0], 0x04);
        assert_eq!(&b[1..33], &key.verifying_key().to_bytes());
        assert_eq!(&b[33..41], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[41..43], &[0x24, 0x56]);
        assert_eq!(&b[43..47], &[10, 0, 0, 7]);
        assert_eq!(&b[47..], &e.signature);

        let ip6 = "2001:db8::1".parse().unwrap();
        let e6 =
            PexEntry::sign(&key, SocketAddr::V6(SocketAddrV6::new(ip6, 9310, 0, 0)), 5).unwrap();
        let b6 = emitted(&e6);
        assert_eq!((b6.len(), b6[0]), (V6_LEN, 0x06));
        assert_eq!(&b6[43..59], &ip6.octets());
        assert_eq!(PexEntry::parse(&b6), Ok(e6));
    }

    #[test]
    fn the_signature_covers_the_entry_under_the_pex_tag() {
        let e = signed(3, NOW);
        let b = emitted(&e);
        let key = SigningKey::from_bytes(&[3; 32]);
        let sig = record::sign_detached(&key, b"ricochet/pex/v1", &b[..b.len() - 64]).unwrap();
        assert_eq!(sig, e.signature);
        assert_eq!(e.node_id(), record::node_id(&e.public_key));
    }

    #[test]
    fn every_covered_byte_is_covered() {
        let b = emitted(&signed(2, NOW));
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
        let mut e = signed(4, NOW);
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
        let k = SigningKey::from_bytes(&[1; 32]);
        let at = |ip: IpAddr, port| SocketAddr::new(ip, port);
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert_eq!(
            PexEntry::sign(&k, at(v4(10, 0, 0, 1), 0), NOW),
            Err(Error::BadField("pex.port"))
        );
        let unspecified = at(Ipv4Addr::UNSPECIFIED.into(), 1);
        assert_eq!(PexEntry::sign(&k, unspecified, NOW), Err(Error::BadField("pex.addr")));
        let multicast = at(v4(239, 1, 2, 3), 1);
        assert_eq!(PexEntry::sign(&k, multicast, NOW), Err(Error::BadField("pex.addr")));
        // An IPv4-mapped address is signed and sent as IPv4 ...
        let mapped = at(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().into(), 5);
        assert_eq!(PexEntry::sign(&k, mapped, NOW).unwrap().addr, at(v4(10, 0, 0, 9), 5));
        // ... and the mapped form is refused on the wire.
        let mut b = vec![0u8; V6_LEN];
        b[0] = 0x06;
        b[41..43].copy_from_slice(&5u16.to_be_bytes());
        b[43..59].copy_from_slice(&Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped().octets());
        assert_eq!(PexEntry::parse(&b), Err(Error::BadField("pex.addr")));
        let loopback = at(Ipv4Addr::LOCALHOST.into(), 9310);
        assert!(PexEntry::sign(&k, loopback, NOW).is_ok(), "loopback clusters are fine");
    }

    #[test]
    fn parse_errors() {
        let b = emitted(&signed(1, NOW));
        assert_eq!(PexEntry::parse(&[]), Err(Error::Truncated { needed: 1, got: 0 }));
        assert_eq!(PexEntry::parse(&b[..50]), Err(Error::Truncated { needed: V4_LEN, got: 50 }));
        assert_eq!(PexEntry::parse(&[0x05]), Err(Error::UnknownType(0x05)));
        let long = [&b[..], &[0]].concat();
        assert_eq!(
            PexEntry::parse(&long),
            Err(Error::LengthMismatch { declared: V4_LEN, actual: V4_LEN + 1 })
        );
        assert_eq!(
            signed(1, NOW).emit(&mut [0; 10]),
            Err(Error::Truncated { needed: V4_LEN, got: 10 })
        );
    }

    #[test]
    fn lists() {
        let entries: Vec<_> = (1..=10).map(|n| signed(n, NOW)).collect();
        let mut buf = [0u8; MAX_LIST_LEN];
        let n = encode_entries(&entries, &mut buf).unwrap();
        assert_eq!(n, 1 + 10 * V4_LEN);
        let view = List::new_checked(&buf[..n]).unwrap();
        assert_eq!(view.len(), 10);
        assert!(view.iter().map(|e| PexEntry::from_view(&e)).eq(entries.iter().copied()));
        assert_eq!(decode_entries(&buf[..n]), Ok(entries.clone()));
        assert_eq!(decode_entries(&[0]), Ok(vec![]));
        assert!(List::new_checked(&[0]).unwrap().is_empty());
        assert_eq!(decode_entries(&[]), Err(Error::Truncated { needed: 1, got: 0 }));
        assert_eq!(decode_entries(&[11]), Err(Error::TooLong { max: 10, got: 11 }));
        assert_eq!(decode_entries(&buf[..n - 1]), Err(Error::Truncated { needed: n, got: n - 1 }));
        assert_eq!(decode_entries(&[1]), Err(Error::Truncated { needed: 2, got: 1 }));
        let mut trailing = buf[..n].to_vec();
        trailing.push(0);
        assert_eq!(
            decode_entries(&trailing),
            Err(Error::LengthMismatch { declared: n, actual: n + 1 })
        );
        let eleven: Vec<_> = (1..=11).map(|n| signed(n, NOW)).collect();
        assert_eq!(encode_entries(&eleven, &mut buf), Err(Error::TooLong { max: 10, got: 11 }));
        assert_eq!(
            encode_entries(&entries, &mut buf[..100]),
            Err(Error::Truncated { needed: n, got: 100 })
        );
        // Ten IPv4 entries fit one default datagram: G1 header (24 + topic)
        // and cluster MAC (16) included. Ten IPv6 entries need two chunks.
        let g1_overhead = 24 + TOPIC.len() + 16;
        assert!(1 + 10 * V4_LEN + g1_overhead <= 1232);
        assert!(MAX_LIST_LEN + g1_overhead > 1232);
    }

    #[test]
    fn freshness() {
        let e = signed(1, NOW);
        assert!(!e.is_stale(NOW + MAX_AGE_SECS - 1));
        assert!(e.is_stale(NOW + MAX_AGE_SECS));
        assert!(!e.is_from_future(NOW - MAX_FUTURE_SECS));
        assert!(e.is_from_future(NOW - MAX_FUTURE_SECS - 1));
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
                prop_assert_eq!(emitted(&e), data.clone());
                let _ = e.verify();
            }
            if let Ok(list) = decode_entries(&data) {
                prop_assert!(list.len() <= MAX_ENTRIES_PER_EXCHANGE);
                let mut out = vec![0u8; data.len()];
                prop_assert_eq!(encode_entries(&list, &mut out), Ok(data.len()));
                prop_assert_eq!(out, data.clone());
            }
        }

        #[test]
        fn prop_lists_of_plausible_bytes_never_panic(
            count in 0u8..12,
            family in prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
            tail in proptest::collection::vec(any::<u8>(), 0..1400),
        ) {
            let data = [&[count, family][..], &tail].concat();
            if let Ok(list) = List::new_checked(&data) {
                prop_assert_eq!(list.iter().count(), list.len());
            }
            let _ = PexEntry::parse(&data[1..]);
        }

        #[test]
        fn prop_entries_round_trip(e in arb_entry()) {
            let b = emitted(&e);
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
                let parsed = PexEntry::parse(&emitted(&e)).unwrap();
                prop_assert_eq!(parsed.verify(), Ok(()));
                let mut other = parsed;
                other.timestamp = ts.wrapping_add(1);
                prop_assert_eq!(other.verify(), Err(Error::BadSignature));
            }
        }
    }
}
