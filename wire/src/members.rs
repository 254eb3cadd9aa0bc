//! Member heartbeat records: the StatefulMerge topic [`TOPIC`] (`members`)
//! sibling endpoints gossip to know who is live and what each one caches.
//!
//! Implements `docs/PROTOCOL.md` § "Topic `members` — heartbeat records";
//! the layout is ricochet's own. The merge and liveness rules live with the
//! member table (`ricochet_proto::cluster::members`).
//!
//! # Record layout
//!
//! All integers big-endian; 64 bytes with IPv4 addresses, 88 with IPv6.
//!
//! | offset | size   | field |
//! |--------|--------|-------|
//! | 0      | 1      | record version, `1` |
//! | 1      | 32     | member id: BLAKE3 of the member's per-start ed25519 key (its PEX node id) |
//! | 33     | 8      | incarnation: unix ms when the process started |
//! | 41     | 8      | heartbeat: unix ms when the record was made |
//! | 49     | 1      | flags: bit 0 *leaving*; other bits zero |
//! | 50     | 7 / 19 | gossip address: `[u8 family 4/6][IP][u16 port]` |
//! | …      | 7 / 19 | NACK address, the same way |
//! | …      | 0 or 1 + 28·n | holdings (optional): `[u8 n ≥ 1]` then n × `[u64 HashKey][u64 lo][u64 hi][u32 missing]` |
//!
//! The holdings block is the member's cache digest for sibling fill: its
//! most recently active flows, each with the SeqNum span `lo..=hi` of its
//! cache log and how many SeqNums inside it are missing (`lo ≤ hi`,
//! `missing ≤ hi − lo`). A member with nothing cached sends no block;
//! `n = 0` is refused, so each state has one encoding.
//!
//! # Contract
//! - [`Record::new_checked`] never panics and never allocates; once it
//!   succeeds no accessor can panic.
//! - The encoding is canonical: a record that parses re-encodes (with its
//!   holdings) to the same bytes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::field::{Writer, array, array_ref, need, u8_at, u16_at, u32_at, u64_at};

/// The StatefulMerge topic heartbeats travel on.
pub const TOPIC: &[u8] = b"members";
/// Record layout version.
pub const RECORD_VERSION: u8 = 1;
/// Most flows in a record's holdings block.
pub const MAX_HOLDINGS: usize = 32;
/// Bytes per flow in the holdings block.
pub const HOLDING_LEN: usize = 28;
/// Bytes before the addresses.
pub const HEAD_LEN: usize = 50;
/// Longest record without a holdings block (two IPv6 addresses).
pub const BASE_MAX: usize = HEAD_LEN + 2 * ADDR_V6_LEN;
/// Flags bit 0: the member announced it is stopping.
pub const FLAG_LEAVING: u8 = 0x01;

const ADDR_V4_LEN: usize = 1 + 4 + 2;
const ADDR_V6_LEN: usize = 1 + 16 + 2;

mod layout {
    use crate::field::Field;

    pub(super) const VERSION: usize = 0;
    pub(super) const ID: Field = 1..33;
    pub(super) const INCARNATION: Field = 33..41;
    pub(super) const HEARTBEAT: Field = 41..49;
    pub(super) const FLAGS: usize = 49;
    pub(super) const GOSSIP: usize = 50;

    /// An address, from its start.
    pub(super) const FAMILY: usize = 0;
    pub(super) const IP: usize = 1;

    /// One holding, from its start.
    pub(super) const HASH_KEY: Field = 0..8;
    pub(super) const LO: Field = 8..16;
    pub(super) const HI: Field = 16..24;
    pub(super) const MISSING: Field = 24..28;
}

/// A checked view of one member record (holdings block included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    buf: &'a [u8],
    nack_at: usize,
    holdings_at: usize,
}

impl<'a> Record<'a> {
    /// Checks version, flags, both addresses, the holdings block and the
    /// exact length.
    ///
    /// Errors: [`Error::Truncated`]; [`Error::BadVersion`]; [`Error::BadField`]
    /// (`"members.flags"`, `"members.family"`, `"members.addr"`,
    /// `"members.port"`, `"members.holdings"`, `"members.holding"`);
    /// [`Error::TooLong`] for more than [`MAX_HOLDINGS`] flows;
    /// [`Error::LengthMismatch`] when the block does not fill the rest.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        need(buf, HEAD_LEN)?;
        let version = u8_at(buf, layout::VERSION);
        if version != RECORD_VERSION {
            return Err(Error::BadVersion { got: u16::from(version) });
        }
        if u8_at(buf, layout::FLAGS) & !FLAG_LEAVING != 0 {
            return Err(Error::BadField("members.flags"));
        }
        let nack_at = check_addr_at(buf, layout::GOSSIP)?;
        let holdings_at = check_addr_at(buf, nack_at)?;
        check_holdings(buf, holdings_at)?;
        Ok(Record { buf, nack_at, holdings_at })
    }

    /// Member id.
    pub fn id(&self) -> &'a [u8; 32] {
        array_ref(self.buf, layout::ID.start)
    }

    /// Unix ms when the member's process started.
    pub fn incarnation_ms(&self) -> u64 {
        u64_at(self.buf, layout::INCARNATION.start)
    }

    /// Unix ms when the record was made.
    pub fn heartbeat_ms(&self) -> u64 {
        u64_at(self.buf, layout::HEARTBEAT.start)
    }

    /// The member announced it is stopping.
    pub fn leaving(&self) -> bool {
        u8_at(self.buf, layout::FLAGS) & FLAG_LEAVING != 0
    }

    /// Where it takes gossip.
    pub fn gossip(&self) -> SocketAddr {
        addr_at(self.buf, layout::GOSSIP)
    }

    /// Where it takes NACKs.
    pub fn nack(&self) -> SocketAddr {
        addr_at(self.buf, self.nack_at)
    }

    /// The holdings block's flows (none when the record has no block).
    pub fn holdings(&self) -> Holdings<'a> {
        let body = self.buf.get(self.holdings_at + 1..).unwrap_or_default();
        Holdings { chunks: body.chunks_exact(HOLDING_LEN) }
    }
}

/// The flows of a [`Record`]'s holdings block.
#[derive(Debug, Clone)]
pub struct Holdings<'a> {
    chunks: core::slice::ChunksExact<'a, u8>,
}

impl Iterator for Holdings<'_> {
    type Item = HoldingRepr;

    fn next(&mut self) -> Option<HoldingRepr> {
        self.chunks.next().map(HoldingRepr::read)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for Holdings<'_> {}

/// One flow of a holdings block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HoldingRepr {
    /// The flow.
    pub hash_key: u64,
    /// Lowest SeqNum of the flow's log.
    pub lo: u64,
    /// Highest SeqNum of the flow's log.
    pub hi: u64,
    /// SeqNums in `lo..=hi` the member does not hold.
    pub missing: u32,
}

impl HoldingRepr {
    fn read(b: &[u8]) -> Self {
        HoldingRepr {
            hash_key: u64_at(b, layout::HASH_KEY.start),
            lo: u64_at(b, layout::LO.start),
            hi: u64_at(b, layout::HI.start),
            missing: u32_at(b, layout::MISSING.start),
        }
    }

    /// `lo ≤ hi` and `missing ≤ hi − lo`.
    pub fn is_valid(&self) -> bool {
        self.lo <= self.hi && u64::from(self.missing) <= self.hi - self.lo
    }
}

/// The parsed form of a [`Record`], without its holdings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRepr {
    /// Member id.
    pub id: [u8; 32],
    /// Unix ms when the member's process started.
    pub incarnation_ms: u64,
    /// Unix ms when the record was made.
    pub heartbeat_ms: u64,
    /// The member announced it is stopping.
    pub leaving: bool,
    /// Where it takes gossip.
    pub gossip: SocketAddr,
    /// Where it takes NACKs.
    pub nack: SocketAddr,
}

impl RecordRepr {
    /// Lifts a checked view (the holdings are [`Record::holdings`]).
    pub fn from_view(view: &Record<'_>) -> Self {
        RecordRepr {
            id: *view.id(),
            incarnation_ms: view.incarnation_ms(),
            heartbeat_ms: view.heartbeat_ms(),
            leaving: view.leaving(),
            gossip: view.gossip(),
            nack: view.nack(),
        }
    }

    /// Checks and lifts; errors as [`Record::new_checked`].
    pub fn parse(buf: &[u8]) -> Result<Self> {
        Record::new_checked(buf).map(|v| RecordRepr::from_view(&v))
    }

    /// Checks and lifts a record and its holdings block, converting each
    /// flow to the caller's type; errors as [`Record::new_checked`].
    pub fn parse_with_holdings<H: From<HoldingRepr>>(buf: &[u8]) -> Result<(Self, Vec<H>)> {
        let view = Record::new_checked(buf)?;
        Ok((RecordRepr::from_view(&view), view.holdings().map(H::from).collect()))
    }

    /// The record's bytes with a holdings block of the first
    /// [`MAX_HOLDINGS`] of `holdings` (none when empty); `None` where
    /// [`RecordRepr::emit`] fails (an address or a flow a peer would
    /// refuse).
    pub fn encode_with<H: Copy + Into<HoldingRepr>>(&self, holdings: &[H]) -> Option<Vec<u8>> {
        let mut held = [HoldingRepr { hash_key: 0, lo: 0, hi: 0, missing: 0 }; MAX_HOLDINGS];
        let mut n = 0;
        for (out, h) in held.iter_mut().zip(holdings) {
            *out = (*h).into();
            n += 1;
        }
        let mut out = vec![0u8; self.buffer_len(n)];
        self.emit(&held[..n], &mut out).ok()?;
        Some(out)
    }

    /// The record's bytes without a holdings block; `None` for an address
    /// a peer would refuse.
    pub fn encode(&self) -> Option<Vec<u8>> {
        self.encode_with::<HoldingRepr>(&[])
    }

    /// The 64-bit id sibling gap ownership hashes with: the member id's
    /// first 8 bytes, big-endian.
    pub fn sibling_id(&self) -> u64 {
        sibling_id(&self.id)
    }

    /// Milliseconds since the heartbeat at `now_ms` (0 for one from the
    /// future).
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heartbeat_ms)
    }

    /// Bytes [`RecordRepr::emit`] writes with `holdings` flows.
    pub fn buffer_len(&self, holdings: usize) -> usize {
        let block = if holdings == 0 { 0 } else { 1 + holdings * HOLDING_LEN };
        HEAD_LEN + addr_len(&self.gossip) + addr_len(&self.nack) + block
    }

    /// Writes the record with a holdings block of `holdings` (none when
    /// empty) into the start of `buf` and returns its length. An
    /// IPv4-mapped IPv6 address is written as IPv4.
    ///
    /// Errors: [`Error::BadField`] (`"members.addr"`, `"members.port"`) for
    /// an address a peer would refuse, `"members.holding"` for a flow that
    /// breaks `lo ≤ hi`, `missing ≤ hi − lo`; [`Error::TooLong`] for more
    /// than [`MAX_HOLDINGS`] flows; [`Error::Truncated`] if `buf` is short.
    pub fn emit(&self, holdings: &[HoldingRepr], buf: &mut [u8]) -> Result<usize> {
        check_addr(&self.gossip)?;
        check_addr(&self.nack)?;
        if holdings.len() > MAX_HOLDINGS {
            return Err(Error::TooLong { max: MAX_HOLDINGS, got: holdings.len() });
        }
        if !holdings.iter().all(HoldingRepr::is_valid) {
            return Err(Error::BadField("members.holding"));
        }
        let len = self.buffer_len(holdings.len());
        let mut w = Writer::new(buf, len)?;
        w.u8(layout::VERSION, RECORD_VERSION);
        w.bytes(layout::ID.start, &self.id);
        w.u64(layout::INCARNATION.start, self.incarnation_ms);
        w.u64(layout::HEARTBEAT.start, self.heartbeat_ms);
        w.u8(layout::FLAGS, if self.leaving { FLAG_LEAVING } else { 0 });
        let at = write_addr(&mut w, layout::GOSSIP, &self.gossip);
        let mut at = write_addr(&mut w, at, &self.nack);
        if !holdings.is_empty() {
            // At most MAX_HOLDINGS (checked above), so it fits the byte.
            w.u8(at, holdings.len() as u8);
            at += 1;
            for h in holdings {
                w.u64(at + layout::HASH_KEY.start, h.hash_key);
                w.u64(at + layout::LO.start, h.lo);
                w.u64(at + layout::HI.start, h.hi);
                w.u32(at + layout::MISSING.start, h.missing);
                at += HOLDING_LEN;
            }
        }
        Ok(len)
    }
}

/// The 64-bit sibling id of a 32-byte member id: its first 8 bytes,
/// big-endian.
pub fn sibling_id(id: &[u8; 32]) -> u64 {
    u64_at(id, 0)
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn addr_len(a: &SocketAddr) -> usize {
    match a.ip().to_canonical() {
        IpAddr::V4(_) => ADDR_V4_LEN,
        IpAddr::V6(_) => ADDR_V6_LEN,
    }
}

/// Writes `a` at `at` and returns the offset after it.
fn write_addr(w: &mut Writer<'_>, at: usize, a: &SocketAddr) -> usize {
    let (family, len) = match a.ip().to_canonical() {
        IpAddr::V4(v4) => {
            w.bytes(at + layout::IP, &v4.octets());
            (4, ADDR_V4_LEN)
        }
        IpAddr::V6(v6) => {
            w.bytes(at + layout::IP, &v6.octets());
            (6, ADDR_V6_LEN)
        }
    };
    w.u8(at + layout::FAMILY, family);
    w.u16(at + len - 2, a.port());
    at + len
}

/// The address at `at` of a buffer [`check_addr_at`] accepted.
fn addr_at(buf: &[u8], at: usize) -> SocketAddr {
    let (ip, port_at) = match u8_at(buf, at + layout::FAMILY) {
        4 => (IpAddr::V4(Ipv4Addr::from(array::<4>(buf, at + layout::IP))), at + 5),
        _ => (IpAddr::V6(Ipv6Addr::from(array::<16>(buf, at + layout::IP))), at + 17),
    };
    SocketAddr::new(ip, u16_at(buf, port_at))
}

/// Checks the address at `at` and returns the offset after it.
fn check_addr_at(buf: &[u8], at: usize) -> Result<usize> {
    need(buf, at + 1)?;
    let len = match u8_at(buf, at + layout::FAMILY) {
        4 => ADDR_V4_LEN,
        6 => ADDR_V6_LEN,
        _ => return Err(Error::BadField("members.family")),
    };
    need(buf, at + len)?;
    let a = addr_at(buf, at);
    // IPv4 travels as family 4: one encoding per address.
    if matches!(a.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
        return Err(Error::BadField("members.addr"));
    }
    check_addr(&a)?;
    Ok(at + len)
}

fn check_addr(a: &SocketAddr) -> Result<()> {
    if a.port() == 0 {
        return Err(Error::BadField("members.port"));
    }
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(Error::BadField("members.addr"));
    }
    Ok(())
}

/// The optional holdings block at `at`: nothing, or a count of
/// 1..=[`MAX_HOLDINGS`] followed by exactly that many valid flows.
fn check_holdings(buf: &[u8], at: usize) -> Result<()> {
    if buf.len() == at {
        return Ok(());
    }
    let n = usize::from(u8_at(buf, at));
    if n == 0 {
        return Err(Error::BadField("members.holdings"));
    }
    if n > MAX_HOLDINGS {
        return Err(Error::TooLong { max: MAX_HOLDINGS, got: n });
    }
    let end = at + 1 + n * HOLDING_LEN;
    need(buf, end)?;
    if buf.len() != end {
        return Err(Error::LengthMismatch { declared: end, actual: buf.len() });
    }
    let body = buf.get(at + 1..end).unwrap_or_default();
    if !body.chunks_exact(HOLDING_LEN).map(HoldingRepr::read).all(|h| h.is_valid()) {
        return Err(Error::BadField("members.holding"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_767_225_600_000;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn sample() -> RecordRepr {
        RecordRepr {
            id: [1; 32],
            incarnation_ms: NOW - 10_000,
            heartbeat_ms: NOW,
            leaving: false,
            gossip: SocketAddr::from(([10, 0, 0, 1], 9310)),
            nack: SocketAddr::from(([10, 0, 0, 1], 9300)),
        }
    }

    fn emit(r: &RecordRepr, holdings: &[HoldingRepr]) -> Vec<u8> {
        let mut buf = vec![0; r.buffer_len(holdings.len())];
        assert_eq!(r.emit(holdings, &mut buf), Ok(buf.len()));
        buf
    }

    const FLOW: HoldingRepr = HoldingRepr { hash_key: 7, lo: 10, hi: 20, missing: 3 };

    /// docs/PROTOCOL.md § "Topic `members`" (fuzz/seeds/members/v4-holdings).
    const GOLDEN: &str = "01 0101010101010101010101010101010101010101010101010101010101010101
        0000019b76da80f0 0000019b76daa800 00
        040a000001245e 040a0000012454
        01 0000000000000007 000000000000000a 0000000000000014 00000003";

    #[test]
    fn golden_vector_both_ways() {
        let bytes = unhex(GOLDEN);
        assert_eq!(bytes.len(), 93);
        assert_eq!(bytes, include_bytes!("../../fuzz/seeds/members/v4-holdings"));
        assert_eq!(emit(&sample(), &[FLOW]), bytes);
        let view = Record::new_checked(&bytes).unwrap();
        assert_eq!(RecordRepr::from_view(&view), sample());
        assert_eq!(view.holdings().collect::<Vec<_>>(), [FLOW]);
        // Without the block: the first 64 bytes.
        assert_eq!(emit(&sample(), &[]), &bytes[..64]);
        assert_eq!(&bytes[..64], include_bytes!("../../fuzz/seeds/members/v4"));
        assert_eq!(Record::new_checked(&bytes[..64]).unwrap().holdings().len(), 0);
    }

    #[test]
    fn conveniences() {
        let r = sample();
        assert_eq!(r.encode(), Some(emit(&r, &[])));
        let many = [FLOW; MAX_HOLDINGS + 5];
        let capped = r.encode_with(&many).unwrap();
        let (back, held) = RecordRepr::parse_with_holdings::<HoldingRepr>(&capped).unwrap();
        assert_eq!((back, held.len()), (r, MAX_HOLDINGS));
        let unspecified = RecordRepr { nack: SocketAddr::from(([0, 0, 0, 0], 9300)), ..r };
        assert_eq!(unspecified.encode(), None);
        assert_eq!(r.sibling_id(), 0x0101_0101_0101_0101);
        assert_eq!((r.age_ms(NOW + 5), r.age_ms(NOW - 5)), (5, 0));
    }

    #[test]
    fn ipv6_and_leaving() {
        let v6 = RecordRepr {
            gossip: "[2001:db8::1]:9310".parse().unwrap(),
            nack: "[2001:db8::1]:9300".parse().unwrap(),
            leaving: true,
            ..sample()
        };
        let b = emit(&v6, &[]);
        assert_eq!(b.len(), BASE_MAX);
        assert_eq!((b[49], b[50], b[69]), (0x01, 6, 6));
        assert_eq!(RecordRepr::parse(&b), Ok(v6));
        // A mapped address is written as IPv4, and refused under family 6.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9310".parse().unwrap();
        assert_eq!(emit(&RecordRepr { gossip: mapped, ..sample() }, &[]), emit(&sample(), &[]));
        let mut bad = b.clone();
        bad[51..67].copy_from_slice(&Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets());
        assert_eq!(RecordRepr::parse(&bad), Err(Error::BadField("members.addr")));
    }

    #[test]
    fn refusals() {
        let b = emit(&sample(), &[FLOW, FLOW]);
        for cut in 0..b.len() {
            if cut != 64 {
                assert!(Record::new_checked(&b[..cut]).is_err(), "cut at {cut}");
            }
        }
        let with = |i: usize, v: u8| {
            let mut bad = b.clone();
            bad[i] = v;
            RecordRepr::parse(&bad)
        };
        assert_eq!(with(0, 2), Err(Error::BadVersion { got: 2 }));
        assert_eq!(with(49, 0x02), Err(Error::BadField("members.flags")));
        assert_eq!(with(50, 5), Err(Error::BadField("members.family")));
        let mut unspecified = b.clone();
        unspecified[51..55].fill(0);
        assert_eq!(RecordRepr::parse(&unspecified), Err(Error::BadField("members.addr")));
        assert_eq!(with(51, 224), Err(Error::BadField("members.addr")));
        assert_eq!(with(64, 0), Err(Error::BadField("members.holdings")));
        assert_eq!(with(64, 33), Err(Error::TooLong { max: 32, got: 33 }));
        assert_eq!(with(64, 3), Err(Error::Truncated { needed: 65 + 84, got: 65 + 56 }));
        assert_eq!(with(64, 1), Err(Error::LengthMismatch { declared: 93, actual: 121 }));
        assert_eq!(with(65 + 15, 21), Err(Error::BadField("members.holding")), "lo above hi");
        assert_eq!(with(65 + 27, 11), Err(Error::BadField("members.holding")), "missing");
        let mut port0 = b.clone();
        port0[55..57].fill(0);
        assert_eq!(RecordRepr::parse(&port0), Err(Error::BadField("members.port")));
        let unspecified = RecordRepr { nack: SocketAddr::from(([0, 0, 0, 0], 9300)), ..sample() };
        assert_eq!(unspecified.emit(&[], &mut [0; 100]), Err(Error::BadField("members.addr")));
        let many = [FLOW; MAX_HOLDINGS + 1];
        assert_eq!(sample().emit(&many, &mut [0; 2000]), Err(Error::TooLong { max: 32, got: 33 }));
        let bad = HoldingRepr { missing: 11, ..FLOW };
        assert_eq!(sample().emit(&[bad], &mut [0; 100]), Err(Error::BadField("members.holding")));
        assert_eq!(sample().emit(&[], &mut [0; 63]), Err(Error::Truncated { needed: 64, got: 63 }));
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
        .prop_map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .prop_filter("a peer would accept it", |a| check_addr(a).is_ok())
    }

    fn arb_holding() -> impl Strategy<Value = HoldingRepr> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(k, a, b, m)| {
            let (lo, hi) = (a.min(b), a.max(b));
            let missing = u32::try_from(u64::from(m).min(hi - lo)).unwrap_or(0);
            HoldingRepr { hash_key: k, lo, hi, missing }
        })
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            id in any::<[u8; 32]>(),
            times in any::<(u64, u64, bool)>(),
            gossip in arb_addr(),
            nack in arb_addr(),
            holdings in proptest::collection::vec(arb_holding(), 0..=MAX_HOLDINGS),
        ) {
            let (incarnation_ms, heartbeat_ms, leaving) = times;
            let r = RecordRepr { id, incarnation_ms, heartbeat_ms, leaving, gossip, nack };
            let b = emit(&r, &holdings);
            let view = Record::new_checked(&b).unwrap();
            prop_assert_eq!(RecordRepr::from_view(&view), r);
            prop_assert_eq!(view.holdings().collect::<Vec<_>>(), holdings);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(view) = Record::new_checked(&data) {
                let holdings: Vec<_> = view.holdings().collect();
                prop_assert!(holdings.iter().all(HoldingRepr::is_valid));
                prop_assert_eq!(emit(&RecordRepr::from_view(&view), &holdings), data);
            }
        }

        #[test]
        fn prop_plausible_heads_never_panic(
            family in prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
            tail in proptest::collection::vec(any::<u8>(), 0..1000),
        ) {
            let mut data = emit(&sample(), &[])[..HEAD_LEN].to_vec();
            data.push(family);
            data.extend_from_slice(&tail);
            let _ = Record::new_checked(&data).map(|v| v.holdings().count());
        }
    }
}
