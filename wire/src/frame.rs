//! Data frames: BRC-124 and its family (BRC-128/131/132/134/149), BRC-12
//! legacy, BRC-130 fragments and BRC-142 bundles.
//!
//! docs/PROTOCOL.md § "Data frames". A frame is one UDP datagram. Four header
//! layouts exist, chosen by the frame version at byte 6:
//!
//! | layout | versions | header | length field | payload |
//! |---|---|---|---|---|
//! | BRC-124 | 0x02 0x04 0x05 0x06 0x09 | 92 B | u32 @88 | @92 |
//! | BRC-130 fragment | 0x03 | 104 B | u32 @88 (data only) | @104 |
//! | BRC-142 bundle | 0x08 | 66 B | u32 @62 | @66 (members) |
//! | BRC-12 legacy | 0x01 | 44 B | u32 @40 | @44 |
//!
//! Every keyed layout has HashKey at 40..48 and SeqNum at 48..56, which is
//! what the cache and the steering code read. As in the reference parser, the
//! length field may be shorter than the datagram (trailing bytes are kept in
//! [`Frame::as_bytes`], so a retransmit is byte-identical to what arrived) but
//! never longer. A bundle's member section is walked once at check time: the
//! members must fill the payload exactly and number `TxCount`.

use crate::error::{Error, Result};
use crate::field::{Field, Writer, array_ref, need, slice, u8_at, u16_at, u32_at, u64_at};
use crate::prefix::{self, Kind};

const BYTE7: usize = 7;
const ID: Field = 8..40;
const HASH_KEY: Field = 40..48;
const SEQ: Field = 48..56;
const SUBTREE_ID: Field = 56..88;
const PAYLOAD_LEN: Field = 88..92;
const LEGACY_PAYLOAD_LEN: Field = 40..44;
// BRC-130 fragment header, after the BRC-124 header.
const FRAG_ORIG_LEN: Field = 92..96;
const FRAG_INDEX: Field = 96..98;
const FRAG_TOTAL: Field = 98..100;
const FRAG_ORIG_VERSION: usize = 100;
const FRAG_RESERVED: Field = 101..104;
// BRC-142 bundle header tail.
const BUNDLE_GROUP: Field = 56..58;
const BUNDLE_SHARD_BITS: usize = 58;
const BUNDLE_RESERVED: usize = 59;
const BUNDLE_TX_COUNT: Field = 60..62;
const BUNDLE_PAYLOAD_LEN: Field = 62..66;

/// Header length of a BRC-124 frame.
pub const HEADER_LEN: usize = 92;
/// Header length of a legacy BRC-12 frame.
pub const LEGACY_HEADER_LEN: usize = 44;
/// Header length of a BRC-130 fragment, including its fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 104;
/// Header length of a BRC-142 bundle.
pub const BUNDLE_HEADER_LEN: usize = 66;
/// The largest payload of one IPv4 UDP datagram; no frame can exceed it.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bundle flag: every member carries its 32-byte TxID.
pub const BUNDLE_TXIDS_PRESENT: u8 = 0x01;

/// Frame versions seen on the wire (byte 6 of a data frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameVersion {
    /// 0x01 — legacy BRC-12, 44-byte header, no flow key.
    Legacy = 0x01,
    /// 0x02 — transaction (BRC-124/128).
    Tx = 0x02,
    /// 0x03 — fragment of a larger frame (BRC-130).
    Fragment = 0x03,
    /// 0x04 — block control (BRC-131).
    Block = 0x04,
    /// 0x05 — subtree data (BRC-132).
    Subtree = 0x05,
    /// 0x06 — anchor transaction (BRC-134).
    Anchor = 0x06,
    /// 0x08 — bundle of transactions (BRC-142).
    Bundle = 0x08,
    /// 0x09 — BEEF object (BRC-149).
    Beef = 0x09,
}

impl FrameVersion {
    /// Every known version, in wire order.
    pub const ALL: [FrameVersion; 8] = [
        FrameVersion::Legacy,
        FrameVersion::Tx,
        FrameVersion::Fragment,
        FrameVersion::Block,
        FrameVersion::Subtree,
        FrameVersion::Anchor,
        FrameVersion::Bundle,
        FrameVersion::Beef,
    ];

    /// The version for a wire byte. 0x07 (BRC-135 block headers) is never
    /// cached or retransmitted by an endpoint and counts as unknown here.
    pub const fn from_u8(v: u8) -> Result<Self> {
        Ok(match v {
            0x01 => FrameVersion::Legacy,
            0x02 => FrameVersion::Tx,
            0x03 => FrameVersion::Fragment,
            0x04 => FrameVersion::Block,
            0x05 => FrameVersion::Subtree,
            0x06 => FrameVersion::Anchor,
            0x08 => FrameVersion::Bundle,
            0x09 => FrameVersion::Beef,
            other => return Err(Error::UnknownFrameVersion(other)),
        })
    }

    /// Bytes of header before the payload (for fragments, before the data).
    pub const fn header_len(self) -> usize {
        match self {
            FrameVersion::Legacy => LEGACY_HEADER_LEN,
            FrameVersion::Fragment => FRAGMENT_HEADER_LEN,
            FrameVersion::Bundle => BUNDLE_HEADER_LEN,
            _ => HEADER_LEN,
        }
    }

    const fn length_field(self) -> Field {
        match self {
            FrameVersion::Legacy => LEGACY_PAYLOAD_LEN,
            FrameVersion::Bundle => BUNDLE_PAYLOAD_LEN,
            _ => PAYLOAD_LEN,
        }
    }

    /// A short lower-case name, for logs and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            FrameVersion::Legacy => "legacy",
            FrameVersion::Tx => "tx",
            FrameVersion::Fragment => "fragment",
            FrameVersion::Block => "block",
            FrameVersion::Subtree => "subtree",
            FrameVersion::Anchor => "anchor",
            FrameVersion::Bundle => "bundle",
            FrameVersion::Beef => "beef",
        }
    }
}

/// The 16-byte cache key of a stamped frame: HashKey ‖ SeqNum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    /// Per-flow HashKey.
    pub hash_key: u64,
    /// Per-flow sequence number.
    pub seq: u64,
}

impl FrameKey {
    /// The key as it sits on the wire (bytes 40..56 of a frame).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.hash_key.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }
}

/// Per-layout fields beyond the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extra {
    /// BRC-124 (and legacy): nothing more.
    None,
    /// BRC-130 fragment header.
    Fragment(FragmentInfo),
    /// BRC-142 bundle header tail.
    Bundle(BundleInfo),
}

/// The BRC-130 fragment header of a 0x03 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentInfo {
    /// Length of the original (unfragmented) payload.
    pub orig_len: u32,
    /// Index of this fragment, `< total`.
    pub index: u16,
    /// Number of fragments of the original frame, `≥ 1`.
    pub total: u16,
    /// Frame version byte of the original frame (0x00 and 0x02 both mean a
    /// transaction); see [`FragmentInfo::orig_frame_version`].
    pub orig_version: u8,
}

impl FragmentInfo {
    /// The original frame's version, where it is one ricochet knows
    /// (0x00 is read as a transaction, as senders write it).
    pub fn orig_frame_version(&self) -> Option<FrameVersion> {
        match self.orig_version {
            0x00 => Some(FrameVersion::Tx),
            v => FrameVersion::from_u8(v).ok(),
        }
    }
}

/// The BRC-142 bundle header fields after SeqNum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleInfo {
    /// Shard group index the bundle was built for.
    pub group_index: u16,
    /// Shard bits `group_index` was computed at (0 = unset).
    pub shard_bits: u8,
    /// Number of member transactions.
    pub tx_count: u16,
}

/// A checked, zero-copy view of one data frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    buf: &'a [u8],
    version: FrameVersion,
    payload_end: usize,
}

impl<'a> Frame<'a> {
    /// Checks prefix, frame version, header length, the length field against
    /// the datagram, and the fragment header or bundle members.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self> {
        let version = match prefix::classify(buf)? {
            Kind::Frame(v) => FrameVersion::from_u8(v)?,
            Kind::Control(t) => return Err(Error::UnknownFrameVersion(t)),
        };
        let header = version.header_len();
        need(buf, header)?;
        let declared = u32_at(buf, version.length_field().start) as usize;
        let payload_end = header.saturating_add(declared);
        if payload_end > buf.len() {
            return Err(Error::LengthMismatch { declared: payload_end, actual: buf.len() });
        }
        match version {
            FrameVersion::Fragment => {
                let frag = read_fragment(buf);
                if frag.total == 0 || frag.index >= frag.total {
                    return Err(Error::BadField("frag_index"));
                }
            }
            FrameVersion::Bundle => check_bundle(
                slice(buf, header..payload_end),
                u8_at(buf, BYTE7),
                u16_at(buf, BUNDLE_TX_COUNT.start),
            )?,
            _ => {}
        }
        Ok(Frame { buf, version, payload_end })
    }

    /// The frame version.
    pub fn version(&self) -> FrameVersion {
        self.version
    }

    /// Byte 7: reserved (0) in most versions, the MsgType of subtree data,
    /// the flags of a bundle.
    pub fn byte7(&self) -> u8 {
        u8_at(self.buf, BYTE7)
    }

    /// Bytes 8..40: the TxID of a transaction, the object id of other
    /// frames, the ContentID of a BEEF object, the SubtreeID of a bundle.
    pub fn id(&self) -> &'a [u8; 32] {
        array_ref(self.buf, ID.start)
    }

    /// HashKey; 0 for legacy and unstamped frames.
    pub fn hash_key(&self) -> u64 {
        if self.is_legacy() { 0 } else { u64_at(self.buf, HASH_KEY.start) }
    }

    /// SeqNum; 0 for legacy and unstamped frames.
    pub fn seq(&self) -> u64 {
        if self.is_legacy() { 0 } else { u64_at(self.buf, SEQ.start) }
    }

    /// Bytes 56..88 of BRC-124 layouts: the SubtreeID (the TopicID of a BEEF
    /// object); all zero for legacy frames and bundles (a bundle's subtree is
    /// its [`Frame::id`]).
    pub fn subtree_id(&self) -> [u8; 32] {
        match self.version {
            FrameVersion::Legacy | FrameVersion::Bundle => [0; 32],
            _ => *array_ref(self.buf, SUBTREE_ID.start),
        }
    }

    /// The cache key, or `None` when the frame is legacy or unstamped
    /// (HashKey or SeqNum 0): such frames are accepted but never cached.
    pub fn key(&self) -> Option<FrameKey> {
        let key = FrameKey { hash_key: self.hash_key(), seq: self.seq() };
        (key.hash_key != 0 && key.seq != 0).then_some(key)
    }

    /// Payload bytes the length field declares (a fragment's data, a
    /// bundle's member section).
    pub fn payload(&self) -> &'a [u8] {
        slice(self.buf, self.version.header_len()..self.payload_end)
    }

    /// Bytes after the declared payload (kept, never interpreted).
    pub fn trailing(&self) -> &'a [u8] {
        slice(self.buf, self.payload_end..self.buf.len())
    }

    /// Everything per-layout: fragment header or bundle fields.
    pub fn extra(&self) -> Extra {
        match self.version {
            FrameVersion::Fragment => Extra::Fragment(read_fragment(self.buf)),
            FrameVersion::Bundle => Extra::Bundle(BundleInfo {
                group_index: u16_at(self.buf, BUNDLE_GROUP.start),
                shard_bits: u8_at(self.buf, BUNDLE_SHARD_BITS),
                tx_count: u16_at(self.buf, BUNDLE_TX_COUNT.start),
            }),
            _ => Extra::None,
        }
    }

    /// The members of a bundle (empty for other versions).
    pub fn bundle_members(&self) -> BundleMembers<'a> {
        let rest = if self.version == FrameVersion::Bundle { self.payload() } else { &[] };
        BundleMembers { rest, txids: self.byte7() & BUNDLE_TXIDS_PRESENT != 0 }
    }

    /// The whole datagram, as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    fn is_legacy(&self) -> bool {
        self.version == FrameVersion::Legacy
    }
}

/// One transaction inside a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleMember<'a> {
    /// The member's TxID, when the bundle carries them.
    pub txid: Option<&'a [u8; 32]>,
    /// The raw transaction.
    pub tx: &'a [u8],
}

/// Iterator over a bundle's member section; yields an error (and stops) at
/// a member that overruns the section.
#[derive(Debug, Clone)]
pub struct BundleMembers<'a> {
    rest: &'a [u8],
    txids: bool,
}

impl<'a> Iterator for BundleMembers<'a> {
    type Item = Result<BundleMember<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let id_len = if self.txids { 32 } else { 0 };
        let Some((len, rest)) = self.rest.split_first_chunk::<2>() else {
            self.rest = &[];
            return Some(Err(Error::BadField("bundle_member")));
        };
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() < id_len + len {
            self.rest = &[];
            return Some(Err(Error::BadField("bundle_member")));
        }
        let (id, rest) = rest.split_at(id_len);
        let (tx, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Ok(BundleMember { txid: <&[u8; 32]>::try_from(id).ok(), tx }))
    }
}

/// The parsed form of a data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRepr<'a> {
    /// Frame version.
    pub version: FrameVersion,
    /// Byte 7 (reserved, subtree MsgType or bundle flags).
    pub byte7: u8,
    /// Bytes 8..40 (TxID, object id, ContentID; a bundle's SubtreeID).
    pub id: [u8; 32],
    /// HashKey (0 for legacy frames).
    pub hash_key: u64,
    /// SeqNum (0 for legacy frames).
    pub seq: u64,
    /// Bytes 56..88 of BRC-124 layouts (zero, not emitted, for legacy and
    /// bundles).
    pub subtree_id: [u8; 32],
    /// Fragment or bundle fields; must match `version`.
    pub extra: Extra,
    /// The declared payload (fragment data; bundle member section).
    pub payload: &'a [u8],
}

impl<'a> FrameRepr<'a> {
    /// Checks `buf` and lifts it into a repr borrowing the payload. Trailing
    /// bytes are not part of the repr.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        Ok(Self::from_view(&Frame::new_checked(buf)?))
    }

    /// Lifts an already checked view.
    pub fn from_view(f: &Frame<'a>) -> Self {
        FrameRepr {
            version: f.version(),
            byte7: f.byte7(),
            id: *f.id(),
            hash_key: f.hash_key(),
            seq: f.seq(),
            subtree_id: f.subtree_id(),
            extra: f.extra(),
            payload: f.payload(),
        }
    }

    /// Bytes [`FrameRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        self.version.header_len() + self.payload.len()
    }

    /// Writes the frame into `buf`, returning its length. Refuses a repr
    /// whose `extra` does not fit its version, and a bundle whose members
    /// do not fill the payload.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        if len > MAX_DATAGRAM {
            return Err(Error::TooLong { max: MAX_DATAGRAM, got: len });
        }
        match (self.version, self.extra) {
            (FrameVersion::Fragment, Extra::Fragment(fr))
                if fr.total > 0 && fr.index < fr.total => {}
            (FrameVersion::Bundle, Extra::Bundle(b)) => {
                check_bundle(self.payload, self.byte7, b.tx_count)?;
            }
            (FrameVersion::Fragment | FrameVersion::Bundle, _)
            | (_, Extra::Fragment(_) | Extra::Bundle(_)) => {
                return Err(Error::BadField("extra"));
            }
            _ => {}
        }
        let mut w = Writer::new(buf, len)?;
        prefix::write(&mut w, self.version as u8);
        w.u8(BYTE7, self.byte7);
        w.bytes(ID.start, &self.id);
        let declared = self.payload.len() as u32;
        match self.extra {
            _ if self.version == FrameVersion::Legacy => {
                w.u32(LEGACY_PAYLOAD_LEN.start, declared);
            }
            Extra::Bundle(b) => {
                w.u64(HASH_KEY.start, self.hash_key);
                w.u64(SEQ.start, self.seq);
                w.u16(BUNDLE_GROUP.start, b.group_index);
                w.u8(BUNDLE_SHARD_BITS, b.shard_bits);
                w.u8(BUNDLE_RESERVED, 0);
                w.u16(BUNDLE_TX_COUNT.start, b.tx_count);
                w.u32(BUNDLE_PAYLOAD_LEN.start, declared);
            }
            extra => {
                w.u64(HASH_KEY.start, self.hash_key);
                w.u64(SEQ.start, self.seq);
                w.bytes(SUBTREE_ID.start, &self.subtree_id);
                w.u32(PAYLOAD_LEN.start, declared);
                if let Extra::Fragment(fr) = extra {
                    w.u32(FRAG_ORIG_LEN.start, fr.orig_len);
                    w.u16(FRAG_INDEX.start, fr.index);
                    w.u16(FRAG_TOTAL.start, fr.total);
                    w.u8(FRAG_ORIG_VERSION, fr.orig_version);
                    w.zero(FRAG_RESERVED);
                }
            }
        }
        w.bytes(self.version.header_len(), self.payload);
        Ok(len)
    }
}

/// A bundle's members must fill its member section exactly and number
/// `tx_count`; parse and emit run the same walk (emit before writing).
fn check_bundle(section: &[u8], byte7: u8, tx_count: u16) -> Result<()> {
    let members = BundleMembers { rest: section, txids: byte7 & BUNDLE_TXIDS_PRESENT != 0 };
    let mut count = 0usize;
    for m in members {
        m?;
        count += 1;
    }
    if count == tx_count as usize { Ok(()) } else { Err(Error::BadField("tx_count")) }
}

fn read_fragment(buf: &[u8]) -> FragmentInfo {
    FragmentInfo {
        orig_len: u32_at(buf, FRAG_ORIG_LEN.start),
        index: u16_at(buf, FRAG_INDEX.start),
        total: u16_at(buf, FRAG_TOTAL.start),
        orig_version: u8_at(buf, FRAG_ORIG_VERSION),
    }
}

/// Reads the cache key of a frame without a full check, for steering: the
/// key sits at a fixed offset (40..56) in every keyed layout, so a worker
/// that only has to decide which core owns a datagram need not validate it.
/// Returns `None` for anything shorter than 56 bytes or of legacy version.
pub fn peek_key(buf: &[u8]) -> Option<FrameKey> {
    if buf.len() < SEQ.end || u8_at(buf, prefix::KIND) == FrameVersion::Legacy as u8 {
        return None;
    }
    Some(FrameKey { hash_key: u64_at(buf, HASH_KEY.start), seq: u64_at(buf, SEQ.start) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(payload: &[u8]) -> FrameRepr<'_> {
        FrameRepr {
            version: FrameVersion::Tx,
            byte7: 0,
            id: [0xAA; 32],
            hash_key: 0x1122_3344_5566_7788,
            seq: 7,
            subtree_id: [0x55; 32],
            extra: Extra::None,
            payload,
        }
    }

    #[test]
    fn tx_round_trip_and_offsets() {
        let r = tx(b"hello");
        let mut buf = [0u8; 97];
        assert_eq!(r.emit(&mut buf), Ok(97));
        assert_eq!(&buf[40..48], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&buf[88..92], &5u32.to_be_bytes());
        assert_eq!(FrameRepr::parse(&buf), Ok(r));
        let f = Frame::new_checked(&buf).unwrap();
        assert_eq!(f.key(), Some(FrameKey { hash_key: 0x1122_3344_5566_7788, seq: 7 }));
        assert_eq!(peek_key(&buf), f.key());
    }

    #[test]
    fn every_truncation_is_refused() {
        let mut buf = [0u8; 97];
        tx(b"hello").emit(&mut buf).unwrap();
        for n in 0..buf.len() {
            let e = Frame::new_checked(&buf[..n]).unwrap_err();
            assert!(
                matches!(e, Error::Truncated { .. } | Error::LengthMismatch { .. }),
                "{n}: {e:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_kept_and_huge_lengths_refused() {
        let mut buf = [0u8; 99];
        tx(b"hello").emit(&mut buf).unwrap();
        let f = Frame::new_checked(&buf).unwrap();
        assert_eq!(f.payload(), b"hello");
        assert_eq!(f.trailing(), &[0, 0]);
        assert_eq!(f.as_bytes().len(), 99);
        buf[88..92].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Frame::new_checked(&buf), Err(Error::LengthMismatch { .. })));
    }

    #[test]
    fn unstamped_and_legacy_have_no_key() {
        let mut r = tx(b"x");
        r.seq = 0;
        let mut buf = [0u8; 93];
        r.emit(&mut buf).unwrap();
        assert_eq!(Frame::new_checked(&buf).unwrap().key(), None);

        let legacy = FrameRepr {
            version: FrameVersion::Legacy,
            hash_key: 0,
            seq: 0,
            subtree_id: [0; 32],
            ..tx(b"abc")
        };
        let mut buf = [0u8; 47];
        assert_eq!(legacy.emit(&mut buf), Ok(47));
        let f = Frame::new_checked(&buf).unwrap();
        assert_eq!(f.key(), None);
        assert_eq!(f.payload(), b"abc");
        assert_eq!(peek_key(&buf), None);
        assert_eq!(FrameRepr::parse(&buf), Ok(legacy));
    }

    #[test]
    fn fragment_header_is_checked() {
        let r = FrameRepr {
            version: FrameVersion::Fragment,
            extra: Extra::Fragment(FragmentInfo {
                orig_len: 3000,
                index: 1,
                total: 3,
                orig_version: 0,
            }),
            ..tx(b"part")
        };
        let mut buf = [0u8; 108];
        assert_eq!(r.emit(&mut buf), Ok(108));
        // The length field counts the fragment's data only (BRC-130).
        assert_eq!(&buf[88..92], &4u32.to_be_bytes());
        let f = Frame::new_checked(&buf).unwrap();
        assert_eq!(f.payload(), b"part");
        assert_eq!(FrameRepr::parse(&buf), Ok(r));
        let Extra::Fragment(fi) = f.extra() else { panic!("fragment") };
        assert_eq!(fi.orig_frame_version(), Some(FrameVersion::Tx));
        buf[96..98].copy_from_slice(&3u16.to_be_bytes()); // index == total
        assert_eq!(Frame::new_checked(&buf).unwrap_err(), Error::BadField("frag_index"));
        buf[98..100].copy_from_slice(&0u16.to_be_bytes()); // total 0
        assert_eq!(Frame::new_checked(&buf).unwrap_err(), Error::BadField("frag_index"));
        let mut short = [0u8; 100];
        tx(&[0; 8]).emit(&mut short).unwrap();
        short[6] = FrameVersion::Fragment as u8;
        assert!(matches!(Frame::new_checked(&short), Err(Error::Truncated { .. })));
    }

    #[test]
    fn bundle_members_are_walked() {
        // Two members with TxIDs: [len=3][id 32][3 bytes], [len=1][id 32][1 byte].
        let mut members = Vec::new();
        for (id, tx) in [(1u8, &b"abc"[..]), (2, &b"z"[..])] {
            members.extend_from_slice(&(tx.len() as u16).to_be_bytes());
            members.extend_from_slice(&[id; 32]);
            members.extend_from_slice(tx);
        }
        let r = FrameRepr {
            version: FrameVersion::Bundle,
            byte7: BUNDLE_TXIDS_PRESENT,
            subtree_id: [0; 32],
            extra: Extra::Bundle(BundleInfo { group_index: 3, shard_bits: 2, tx_count: 2 }),
            ..tx(&members)
        };
        let mut buf = vec![0u8; r.buffer_len()];
        assert_eq!(r.emit(&mut buf), Ok(66 + members.len()));
        assert_eq!(&buf[56..58], &3u16.to_be_bytes());
        let f = Frame::new_checked(&buf).unwrap();
        let got: Vec<_> = f.bundle_members().map(|m| m.unwrap()).collect();
        assert_eq!(got[0].tx, b"abc");
        assert_eq!(got[1].txid, Some(&[2u8; 32]));
        assert_eq!(FrameRepr::parse(&buf), Ok(r));
        buf[61] = 3; // tx_count disagrees with the members
        assert_eq!(Frame::new_checked(&buf).unwrap_err(), Error::BadField("tx_count"));
        buf[61] = 2;
        buf[7] = 0; // without TxIDs the members overrun the section
        assert_eq!(Frame::new_checked(&buf).unwrap_err(), Error::BadField("bundle_member"));
        let bad = FrameRepr {
            extra: Extra::Bundle(BundleInfo { group_index: 3, shard_bits: 2, tx_count: 1 }),
            ..r
        };
        assert_eq!(bad.emit(&mut buf), Err(Error::BadField("tx_count")));
    }

    #[test]
    fn unknown_versions_and_mismatched_extras_are_refused() {
        let mut buf = [0u8; 92];
        tx(b"").emit(&mut buf).unwrap();
        for v in [0x00, 0x07, 0x0A, 0x0F] {
            buf[6] = v;
            assert_eq!(Frame::new_checked(&buf).unwrap_err(), Error::UnknownFrameVersion(v));
        }
        let r = FrameRepr { version: FrameVersion::Fragment, ..tx(b"") };
        assert_eq!(r.emit(&mut [0u8; 200]), Err(Error::BadField("extra")));
    }
}
