//! BRC-126 retransmission control: NACK, MISS, ACK, THROTTLED and ADVERT.
//!
//! docs/PROTOCOL.md § "Retransmission control (BRC-126)". Every message opens
//! with the common prefix (magic, protocol version) and its type at byte 6.
//! Each message has one fixed size; a datagram of any other size is refused
//! ([`Error::Truncated`] when short, [`Error::LengthMismatch`] when long), so
//! a response can never be made to carry more than its request.

use core::net::Ipv6Addr;
use core::time::Duration;

use crate::error::{Error, Result};
use crate::field::{Field, Writer, array_ref, exact, u8_at, u16_at, u32_at, u64_at};
use crate::group::Scope;
use crate::prefix::{self, Kind};

/// Message types (byte 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    /// 0x10 — negative acknowledgement (listener → endpoint).
    Nack = 0x10,
    /// 0x11 — the endpoint does not hold the frame.
    Miss = 0x11,
    /// 0x12 — the frame was retransmitted.
    Ack = 0x12,
    /// 0x13 — the request was rate limited; back off.
    Throttled = 0x13,
    /// 0x20 — endpoint beacon.
    Advert = 0x20,
}

impl MsgType {
    /// The type for a wire byte.
    pub const fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0x10 => MsgType::Nack,
            0x11 => MsgType::Miss,
            0x12 => MsgType::Ack,
            0x13 => MsgType::Throttled,
            0x20 => MsgType::Advert,
            other => return Err(Error::UnknownType(other)),
        })
    }

    /// The one size a message of this type has.
    pub const fn size(self) -> usize {
        match self {
            MsgType::Nack => NACK_LEN,
            MsgType::Miss | MsgType::Ack | MsgType::Throttled => RESPONSE_LEN,
            MsgType::Advert => ADVERT_LEN,
        }
    }
}

/// Checks the prefix and returns the control type at byte 6.
pub fn peek_type(buf: &[u8]) -> Result<MsgType> {
    match prefix::classify(buf)? {
        Kind::Control(t) => MsgType::from_u8(t),
        Kind::Frame(v) => Err(Error::UnknownType(v)),
    }
}

fn check(buf: &[u8], want: MsgType) -> Result<()> {
    let got = peek_type(buf)?;
    if got != want {
        return Err(Error::UnknownType(got as u8));
    }
    exact(buf, want.size())
}

// ───────────────────────────── NACK ─────────────────────────────

/// Size of a NACK.
pub const NACK_LEN: usize = 64;
const FLAGS: usize = 7;
const NACK_HASH_KEY: Field = 8..16;
const NACK_START: Field = 16..24;
const NACK_END: Field = 24..32;
const NACK_SUBTREE: Field = 32..64;

/// NACK flag bits (byte 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NackFlags(pub u8);

impl NackFlags {
    /// Sent by an endpoint on behalf of a downstream domain: MUST NOT be
    /// proxied again and is always answered with a unicast copy.
    pub const PROXIED: u8 = 0x01;
    /// ricochet's extension: forwarded by a sibling endpoint of the same
    /// domain to the sibling that owns the gap, which recovers it whatever
    /// its own view of ownership (so a forward never bounces). Endpoints
    /// that do not know the bit ignore it, as BRC-126 reserves it.
    pub const SIBLING: u8 = 0x02;

    /// Whether the Proxied bit is set.
    pub const fn proxied(self) -> bool {
        self.0 & Self::PROXIED != 0
    }

    /// Whether the Sibling bit is set.
    pub const fn sibling(self) -> bool {
        self.0 & Self::SIBLING != 0
    }
}

/// A checked, zero-copy view of a NACK; the key sits at offset 8, which is
/// what the reuseport steering program reads.
#[derive(Debug, Clone, Copy)]
pub struct Nack<'a> {
    buf: &'a [u8],
}

impl<'a> Nack<'a> {
    /// Checks prefix, type, exact size and `start_seq <= end_seq`.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        check(buf, MsgType::Nack)?;
        let n = Nack { buf };
        if n.end_seq() < n.start_seq() {
            return Err(Error::BadField("end_seq"));
        }
        Ok(n)
    }

    /// Flags byte.
    pub fn flags(&self) -> NackFlags {
        NackFlags(u8_at(self.buf, FLAGS))
    }
    /// Flow HashKey.
    pub fn hash_key(&self) -> u64 {
        u64_at(self.buf, NACK_HASH_KEY.start)
    }
    /// First SeqNum asked for (inclusive).
    pub fn start_seq(&self) -> u64 {
        u64_at(self.buf, NACK_START.start)
    }
    /// Last SeqNum asked for (inclusive; equal to start for one frame).
    pub fn end_seq(&self) -> u64 {
        u64_at(self.buf, NACK_END.start)
    }
    /// SubtreeID (informational).
    pub fn subtree_id(&self) -> &'a [u8; 32] {
        array_ref(self.buf, NACK_SUBTREE.start)
    }
    /// Number of frames the range names (at least 1).
    pub fn span(&self) -> u64 {
        (self.end_seq() - self.start_seq()).saturating_add(1)
    }
}

/// The parsed form of a NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NackRepr {
    /// Flags.
    pub flags: NackFlags,
    /// Flow HashKey.
    pub hash_key: u64,
    /// First SeqNum (inclusive).
    pub start_seq: u64,
    /// Last SeqNum (inclusive), `>= start_seq`.
    pub end_seq: u64,
    /// SubtreeID.
    pub subtree_id: [u8; 32],
}

impl NackRepr {
    /// Checks and lifts.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let n = Nack::new_checked(buf)?;
        Ok(NackRepr {
            flags: n.flags(),
            hash_key: n.hash_key(),
            start_seq: n.start_seq(),
            end_seq: n.end_seq(),
            subtree_id: *n.subtree_id(),
        })
    }

    /// Always [`NACK_LEN`].
    pub const fn buffer_len(&self) -> usize {
        NACK_LEN
    }

    /// Writes the NACK, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if self.end_seq < self.start_seq {
            return Err(Error::BadField("end_seq"));
        }
        let mut w = Writer::new(buf, NACK_LEN)?;
        prefix::write(&mut w, MsgType::Nack as u8);
        w.u8(FLAGS, self.flags.0);
        w.u64(NACK_HASH_KEY.start, self.hash_key);
        w.u64(NACK_START.start, self.start_seq);
        w.u64(NACK_END.start, self.end_seq);
        w.bytes(NACK_SUBTREE.start, &self.subtree_id);
        Ok(NACK_LEN)
    }
}

// ─────────────────────── MISS / ACK / THROTTLED ───────────────────────

/// Size of MISS, ACK and THROTTLED.
pub const RESPONSE_LEN: usize = 16;
const RESPONSE_SEQ: Field = 8..16;

/// ACK flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AckFlags(pub u8);

impl AckFlags {
    /// The frame was retransmitted to its multicast group.
    pub const MULTICAST: u8 = 0x01;
    /// The frame was sent by unicast to the requester.
    pub const UNICAST: u8 = 0x02;

    /// Whether a multicast retransmit was sent.
    pub const fn multicast(self) -> bool {
        self.0 & Self::MULTICAST != 0
    }
    /// Whether a unicast copy was sent.
    pub const fn unicast(self) -> bool {
        self.0 & Self::UNICAST != 0
    }
}

/// Which response, with its flag-borne details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// 0x11 — not held; the listener moves to its next endpoint at once.
    Miss,
    /// 0x12 — retransmitted, as the flags say.
    Ack(AckFlags),
    /// 0x13 — rate limited; hold for [`throttle_backoff`]`(bucket)`.
    Throttled {
        /// Back-off bucket, 0..=15 (the low nibble of the flags byte).
        bucket: u8,
    },
}

/// Back-off bucket a THROTTLED from the per-gap (SeqNum) tier carries.
pub const BUCKET_PER_GAP: u8 = 2;
/// Back-off bucket of the per-flow (source, HashKey) tier.
pub const BUCKET_PER_FLOW: u8 = 3;
/// Back-off bucket of the per-group tier.
pub const BUCKET_PER_GROUP: u8 = 4;

/// The hold a THROTTLED bucket asks for: 125 ms << bucket.
pub const fn throttle_backoff(bucket: u8) -> Duration {
    Duration::from_millis(125u64 << (bucket & 0x0F))
}

/// A checked MISS, ACK or THROTTLED (all 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseRepr {
    /// Which response.
    pub kind: ResponseKind,
    /// SeqNum: the frame's for ACK, StartSeq echoed for THROTTLED, 0 for MISS.
    pub seq: u64,
}

impl ResponseRepr {
    /// A MISS (flags 0, SeqNum 0).
    pub const fn miss() -> Self {
        ResponseRepr { kind: ResponseKind::Miss, seq: 0 }
    }

    /// An ACK for `seq`.
    pub const fn ack(seq: u64, flags: AckFlags) -> Self {
        ResponseRepr { kind: ResponseKind::Ack(flags), seq }
    }

    /// A THROTTLED echoing `start_seq`.
    pub const fn throttled(start_seq: u64, bucket: u8) -> Self {
        ResponseRepr { kind: ResponseKind::Throttled { bucket: bucket & 0x0F }, seq: start_seq }
    }

    /// Checks and lifts. Unused high-nibble bits of a THROTTLED's flags are
    /// ignored.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let t = peek_type(buf)?;
        if !matches!(t, MsgType::Miss | MsgType::Ack | MsgType::Throttled) {
            return Err(Error::UnknownType(t as u8));
        }
        exact(buf, RESPONSE_LEN)?;
        let flags = u8_at(buf, FLAGS);
        let kind = match t {
            MsgType::Ack => ResponseKind::Ack(AckFlags(flags)),
            MsgType::Throttled => ResponseKind::Throttled { bucket: flags & 0x0F },
            _ => ResponseKind::Miss,
        };
        Ok(ResponseRepr { kind, seq: u64_at(buf, RESPONSE_SEQ.start) })
    }

    /// Always [`RESPONSE_LEN`].
    pub const fn buffer_len(&self) -> usize {
        RESPONSE_LEN
    }

    /// Writes the response, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let (t, flags) = match self.kind {
            ResponseKind::Miss => (MsgType::Miss, 0),
            ResponseKind::Ack(f) => (MsgType::Ack, f.0),
            ResponseKind::Throttled { bucket } => {
                if bucket > 0x0F {
                    return Err(Error::BadField("bucket"));
                }
                (MsgType::Throttled, bucket)
            }
        };
        let mut w = Writer::new(buf, RESPONSE_LEN)?;
        prefix::write(&mut w, t as u8);
        w.u8(FLAGS, flags);
        w.u64(RESPONSE_SEQ.start, self.seq);
        Ok(RESPONSE_LEN)
    }
}

// ───────────────────────────── ADVERT ─────────────────────────────

/// Size of an ADVERT.
pub const ADVERT_LEN: usize = 56;
const ADV_SCOPE: usize = 7;
const ADV_ADDR: Field = 8..24;
const ADV_PORT: Field = 24..26;
const ADV_TIER: usize = 26;
const ADV_PREFERENCE: usize = 27;
const ADV_INTERVAL: Field = 28..30;
const ADV_FLAGS: Field = 30..32;
const ADV_INSTANCE: Field = 32..36;
const ADV_RESERVED: Field = 36..56;

/// ADVERT flag bits (u16 at offset 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AdvertFlags(pub u16);

impl AdvertFlags {
    /// Proxying to an upstream domain is on.
    pub const HAS_PARENT: u16 = 0x0002;
    /// The endpoint is draining; listeners should prefer others.
    pub const DRAINING: u16 = 0x0004;
    /// Retransmits are sent by unicast to the requester.
    pub const UNICAST_RETRANSMIT: u16 = 0x0008;
    /// Retransmits are sent to the frame's multicast group.
    pub const MULTICAST_RETRANSMIT: u16 = 0x0010;

    /// Whether every bit of `bits` is set.
    pub const fn has(self, bits: u16) -> bool {
        self.0 & bits == bits
    }
}

/// The scope byte of an ADVERT (docs/PROTOCOL.md, "ADVERT").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdvertScope {
    /// The scope of the beacon group it was sent to (0x02 link, 0x05 site,
    /// 0x08 org, 0x0E global).
    Group(Scope),
    /// 0xFF: sent to the beacon group of every scope, as the reference
    /// endpoint marks its ADVERTs with `BEACON_SCOPE=both`/`all`.
    All,
}

impl AdvertScope {
    /// The byte of [`AdvertScope::All`].
    pub const ALL_BYTE: u8 = 0xFF;

    /// The scope for a byte, if it is one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match (v, Scope::from_u8(v)) {
            (Self::ALL_BYTE, _) => Some(AdvertScope::All),
            (_, Some(s)) => Some(AdvertScope::Group(s)),
            (_, None) => None,
        }
    }

    /// Its byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            AdvertScope::Group(s) => s as u8,
            AdvertScope::All => Self::ALL_BYTE,
        }
    }
}

/// The parsed form of an ADVERT beacon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdvertRepr {
    /// Scope byte of the beacon.
    pub scope: AdvertScope,
    /// Address NACKs should go to (IPv4 endpoints use the v4-mapped form).
    pub nack_addr: Ipv6Addr,
    /// NACK port.
    pub nack_port: u16,
    /// Tier 0–254 (lower is preferred); 255 is refused.
    pub tier: u8,
    /// Preference (default 128).
    pub preference: u8,
    /// Beacon interval, seconds.
    pub interval_secs: u16,
    /// Flags.
    pub flags: AdvertFlags,
    /// Instance id: CRC32c of the hostname unless configured.
    pub instance_id: u32,
}

impl AdvertRepr {
    /// Checks and lifts. The reserved tail (36..56) is not required to be
    /// zero on receipt, so a later revision may use it.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        check(buf, MsgType::Advert)?;
        let scope = AdvertScope::from_u8(u8_at(buf, ADV_SCOPE)).ok_or(Error::BadField("scope"))?;
        let tier = u8_at(buf, ADV_TIER);
        if tier == 255 {
            return Err(Error::BadField("tier"));
        }
        Ok(AdvertRepr {
            scope,
            nack_addr: Ipv6Addr::from(*array_ref::<16>(buf, ADV_ADDR.start)),
            nack_port: u16_at(buf, ADV_PORT.start),
            tier,
            preference: u8_at(buf, ADV_PREFERENCE),
            interval_secs: u16_at(buf, ADV_INTERVAL.start),
            flags: AdvertFlags(u16_at(buf, ADV_FLAGS.start)),
            instance_id: u32_at(buf, ADV_INSTANCE.start),
        })
    }

    /// Always [`ADVERT_LEN`].
    pub const fn buffer_len(&self) -> usize {
        ADVERT_LEN
    }

    /// Writes the ADVERT, returning its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if self.tier == 255 {
            return Err(Error::BadField("tier"));
        }
        let mut w = Writer::new(buf, ADVERT_LEN)?;
        prefix::write(&mut w, MsgType::Advert as u8);
        w.u8(ADV_SCOPE, self.scope.to_u8());
        w.bytes(ADV_ADDR.start, &self.nack_addr.octets());
        w.u16(ADV_PORT.start, self.nack_port);
        w.u8(ADV_TIER, self.tier);
        w.u8(ADV_PREFERENCE, self.preference);
        w.u16(ADV_INTERVAL.start, self.interval_secs);
        w.u16(ADV_FLAGS.start, self.flags.0);
        w.u32(ADV_INSTANCE.start, self.instance_id);
        w.zero(ADV_RESERVED);
        Ok(ADVERT_LEN)
    }
}

/// Any BRC-126 message, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A NACK.
    Nack(NackRepr),
    /// MISS, ACK or THROTTLED.
    Response(ResponseRepr),
    /// An ADVERT.
    Advert(AdvertRepr),
}

impl Control {
    /// Dispatches on byte 6.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        Ok(match peek_type(buf)? {
            MsgType::Nack => Control::Nack(NackRepr::parse(buf)?),
            MsgType::Miss | MsgType::Ack | MsgType::Throttled => {
                Control::Response(ResponseRepr::parse(buf)?)
            }
            MsgType::Advert => Control::Advert(AdvertRepr::parse(buf)?),
        })
    }

    /// Writes whichever message this is.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Control::Nack(n) => n.emit(buf),
            Control::Response(r) => r.emit(buf),
            Control::Advert(a) => a.emit(buf),
        }
    }
}

/// Reads a NACK's HashKey at its fixed offset (8) without checking the rest,
/// for steering to the owning core.
pub fn peek_nack_key(buf: &[u8]) -> Option<u64> {
    (buf.len() >= NACK_HASH_KEY.end).then(|| u64_at(buf, NACK_HASH_KEY.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack() -> NackRepr {
        NackRepr {
            flags: NackFlags(NackFlags::PROXIED),
            hash_key: 42,
            start_seq: 10,
            end_seq: 12,
            subtree_id: [9; 32],
        }
    }

    #[test]
    fn nack_round_trip_and_checks() {
        let mut b = [0u8; 64];
        nack().emit(&mut b).unwrap();
        let v = Nack::new_checked(&b).unwrap();
        assert!(v.flags().proxied());
        assert_eq!(v.span(), 3);
        assert_eq!(peek_nack_key(&b), Some(42));
        assert_eq!(NackRepr::parse(&b), Ok(nack()));
        for n in 0..64 {
            assert!(matches!(NackRepr::parse(&b[..n]), Err(Error::Truncated { .. })));
        }
        let mut long = [0u8; 65];
        long[..64].copy_from_slice(&b);
        assert_eq!(NackRepr::parse(&long), Err(Error::LengthMismatch { declared: 64, actual: 65 }));
        b[16..24].copy_from_slice(&13u64.to_be_bytes());
        assert_eq!(NackRepr::parse(&b), Err(Error::BadField("end_seq")));
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            ResponseRepr::miss(),
            ResponseRepr::ack(5, AckFlags(AckFlags::MULTICAST | AckFlags::UNICAST)),
            ResponseRepr::throttled(77, BUCKET_PER_GROUP),
        ] {
            let mut b = [0u8; 16];
            assert_eq!(r.emit(&mut b), Ok(16));
            assert_eq!(ResponseRepr::parse(&b), Ok(r));
            assert_eq!(Control::parse(&b), Ok(Control::Response(r)));
        }
        assert_eq!(throttle_backoff(BUCKET_PER_GAP), Duration::from_millis(500));
        assert_eq!(throttle_backoff(BUCKET_PER_GROUP), Duration::from_secs(2));
    }

    #[test]
    fn wrong_type_for_the_parser_is_refused() {
        let mut b = [0u8; 64];
        nack().emit(&mut b).unwrap();
        assert_eq!(ResponseRepr::parse(&b), Err(Error::UnknownType(0x10)));
        b[6] = 0x14;
        assert_eq!(Control::parse(&b), Err(Error::UnknownType(0x14)));
        b[6] = 0x02; // a data frame
        assert_eq!(Control::parse(&b), Err(Error::UnknownType(0x02)));
    }

    #[test]
    fn advert_round_trip_and_scope_check() {
        let a = AdvertRepr {
            scope: AdvertScope::Group(Scope::Site),
            nack_addr: "fd00::1".parse().unwrap(),
            nack_port: 9300,
            tier: 1,
            preference: 128,
            interval_secs: 60,
            flags: AdvertFlags(AdvertFlags::HAS_PARENT | AdvertFlags::MULTICAST_RETRANSMIT),
            instance_id: 0xDEAD_BEEF,
        };
        let mut b = [0u8; 56];
        a.emit(&mut b).unwrap();
        assert_eq!(b[7], 0x05);
        assert_eq!(AdvertRepr::parse(&b), Ok(a));
        b[7] = 0xFF;
        assert_eq!(AdvertRepr::parse(&b), Ok(AdvertRepr { scope: AdvertScope::All, ..a }));
        b[7] = 0x03;
        assert_eq!(AdvertRepr::parse(&b), Err(Error::BadField("scope")));
    }
}
