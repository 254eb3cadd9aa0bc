//! BRC-129 group addressing, and ricochet's IPv4 lab mapping.
//!
//! docs/PROTOCOL.md § "Group addressing (BRC-129)". An IPv6 group is
//! `prefix (2 B) ‖ 10 zero bytes ‖ group-id (2 B) ‖ index (2 B)`. Data frames
//! of transactions are spread over `2^shard_bits` shard groups by the top bits
//! of the TxID; network services sit at fixed indices near the top of the
//! space. `--ipv4-lab` maps index `i` to `239.11.(i >> 8).(i & 0xFF)` so the
//! whole fabric runs on loopback without IPv6 multicast.

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};
use crate::frame::{Extra, Frame, FrameVersion};

/// Default BRC-129 group id.
pub const DEFAULT_GROUP_ID: u16 = 0x000B;
/// Default number of shard bits.
pub const DEFAULT_SHARD_BITS: u8 = 2;
/// Most shard bits a data plane may use.
pub const MAX_SHARD_BITS: u8 = 12;

/// Block headers.
pub const INDEX_BLOCK_HEADERS: u16 = 0xFFFA;
/// Subtree announcements (subtree data, frame 0x05).
pub const INDEX_SUBTREE: u16 = 0xFFFB;
/// Subtree-group announcements.
pub const INDEX_SUBTREE_GROUP: u16 = 0xFFFC;
/// Beacon (ADVERT).
pub const INDEX_BEACON: u16 = 0xFFFD;
/// Block broadcast (frames 0x04 and 0x06).
pub const INDEX_BLOCK: u16 = 0xFFFE;
/// Reserved.
pub const INDEX_RESERVED: u16 = 0xFFFF;
/// First index of the object planes (0x1000–0xEFFF).
pub const INDEX_OBJECT_FIRST: u16 = 0x1000;
/// Last index of the BEEF object plane (0x1000–0x1FFF).
pub const INDEX_BEEF_LAST: u16 = 0x1FFF;

/// Multicast scope; the discriminant is the IPv6 scope nibble, which is also
/// the ADVERT scope byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scope {
    /// Link-local (ASM only).
    Link = 0x02,
    /// Site-local (the default).
    Site = 0x05,
    /// Organisation-local (ASM only).
    Org = 0x08,
    /// Global.
    Global = 0x0E,
}

impl Scope {
    /// The scope for a nibble value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x02 => Some(Scope::Link),
            0x05 => Some(Scope::Site),
            0x08 => Some(Scope::Org),
            0x0E => Some(Scope::Global),
            _ => None,
        }
    }

    /// The configuration name (`link`, `site`, `org`, `global`).
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Link => "link",
            Scope::Site => "site",
            Scope::Org => "org",
            Scope::Global => "global",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(s: &str) -> Option<Self> {
        [Scope::Link, Scope::Site, Scope::Org, Scope::Global]
            .into_iter()
            .find(|sc| sc.name().eq_ignore_ascii_case(s))
    }
}

/// Any-source or source-specific multicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceMode {
    /// Any-source multicast (FF0x prefixes).
    #[default]
    Asm,
    /// Source-specific multicast (FF3x prefixes; site and global only).
    Ssm,
}

impl SourceMode {
    /// The configuration name (`asm`, `ssm`).
    pub const fn name(self) -> &'static str {
        match self {
            SourceMode::Asm => "asm",
            SourceMode::Ssm => "ssm",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(s: &str) -> Option<Self> {
        [SourceMode::Asm, SourceMode::Ssm].into_iter().find(|m| m.name().eq_ignore_ascii_case(s))
    }
}

/// The 2-byte IPv6 prefix for a source mode and scope.
pub const fn prefix(mode: SourceMode, scope: Scope) -> Result<u16> {
    match (mode, scope) {
        (SourceMode::Asm, s) => Ok(0xFF00 | s as u16),
        (SourceMode::Ssm, Scope::Site) => Ok(0xFF35),
        (SourceMode::Ssm, Scope::Global) => Ok(0xFF3E),
        (SourceMode::Ssm, _) => Err(Error::BadField("scope")),
    }
}

/// The IPv6 group address for `(mode, scope, group_id, index)`.
pub const fn ipv6_group(
    mode: SourceMode,
    scope: Scope,
    group_id: u16,
    index: u16,
) -> Result<Ipv6Addr> {
    match prefix(mode, scope) {
        Ok(p) => Ok(Ipv6Addr::new(p, 0, 0, 0, 0, 0, group_id, index)),
        Err(e) => Err(e),
    }
}

/// The IPv4 lab group for `index`: `239.11.(index >> 8).(index & 0xFF)`.
pub const fn ipv4_lab_group(index: u16) -> Ipv4Addr {
    Ipv4Addr::new(239, 11, (index >> 8) as u8, (index & 0xFF) as u8)
}

/// The group index an IPv4 lab address maps back to, if it is one.
pub const fn ipv4_lab_index(addr: Ipv4Addr) -> Option<u16> {
    let o = addr.octets();
    if o[0] == 239 && o[1] == 11 { Some(((o[2] as u16) << 8) | o[3] as u16) } else { None }
}

/// The group index an IPv6 group address carries (its last two bytes), if
/// its prefix and group id match.
pub fn ipv6_group_index(
    addr: Ipv6Addr,
    mode: SourceMode,
    scope: Scope,
    group_id: u16,
) -> Option<u16> {
    let s = addr.segments();
    let p = prefix(mode, scope).ok()?;
    (s[0] == p && s[1..6] == [0; 5] && s[6] == group_id).then_some(s[7])
}

/// The data shard a TxID belongs to: `u32(txid[0..4]) >> (32 − shard_bits)`.
pub const fn shard_index(txid: &[u8; 32], shard_bits: u8) -> Result<u16> {
    if shard_bits > MAX_SHARD_BITS {
        return Err(Error::BadField("shard_bits"));
    }
    if shard_bits == 0 {
        return Ok(0);
    }
    let top = u32::from_be_bytes([txid[0], txid[1], txid[2], txid[3]]);
    Ok((top >> (32 - shard_bits as u32)) as u16)
}

/// Default shard bits of the BEEF object plane (BRC-148): 0, the single
/// group 0x1000, as the reference endpoint and proxies default to.
pub const DEFAULT_BEEF_SHARD_BITS: u8 = 0;

/// The group index a frame is retransmitted to (BRC-129 with BRC-142/148):
/// block control and anchors on block broadcast, subtree data on the subtree
/// index, a bundle on the group its header names, a BEEF object on
/// `0x1000 + shard(TopicID)` at `beef_shard_bits`, a fragment by the class
/// of its original frame, and everything else on its TxID's shard group.
pub fn retransmit_index(frame: &Frame<'_>, shard_bits: u8, beef_shard_bits: u8) -> Result<u16> {
    let class = match frame.extra() {
        Extra::Bundle(b) => return Ok(b.group_index),
        Extra::Fragment(f) => f.orig_frame_version().unwrap_or(FrameVersion::Tx),
        Extra::None => frame.version(),
    };
    match class {
        FrameVersion::Block | FrameVersion::Anchor => Ok(INDEX_BLOCK),
        FrameVersion::Subtree => Ok(INDEX_SUBTREE),
        FrameVersion::Beef => {
            let topic = frame.subtree_id();
            let shard = shard_index(&topic, beef_shard_bits)?;
            Ok(INDEX_OBJECT_FIRST + shard)
        }
        _ => shard_index(frame.id(), shard_bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_groups() {
        let g = ipv6_group(SourceMode::Asm, Scope::Site, DEFAULT_GROUP_ID, 3).unwrap();
        assert_eq!(g, "ff05::b:3".parse::<Ipv6Addr>().unwrap());
        let g = ipv6_group(SourceMode::Ssm, Scope::Global, 0x0B, INDEX_BLOCK).unwrap();
        assert_eq!(g, "ff3e::b:fffe".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ipv6_group(SourceMode::Ssm, Scope::Org, 0x0B, 0), Err(Error::BadField("scope")));
        assert_eq!(ipv6_group_index(g, SourceMode::Ssm, Scope::Global, 0x0B), Some(INDEX_BLOCK));
        assert_eq!(ipv6_group_index(g, SourceMode::Asm, Scope::Global, 0x0B), None);
    }

    #[test]
    fn shards() {
        let mut txid = [0u8; 32];
        txid[0] = 0b1100_0000;
        assert_eq!(shard_index(&txid, 2), Ok(3));
        assert_eq!(shard_index(&txid, 0), Ok(0));
        txid[..4].copy_from_slice(&[0xFF; 4]);
        assert_eq!(shard_index(&txid, 12), Ok(0x0FFF));
        assert_eq!(shard_index(&txid, 13), Err(Error::BadField("shard_bits")));
    }

    #[test]
    fn lab_mapping_round_trips() {
        assert_eq!(ipv4_lab_group(0xFFFE), Ipv4Addr::new(239, 11, 255, 254));
        for i in [0u16, 1, 255, 256, 0x1234, 0xFFFF] {
            assert_eq!(ipv4_lab_index(ipv4_lab_group(i)), Some(i));
        }
        assert_eq!(ipv4_lab_index(Ipv4Addr::new(239, 12, 0, 1)), None);
    }

    #[test]
    fn retransmit_groups() {
        use crate::frame::{BundleInfo, FragmentInfo, FrameRepr};
        let mut topic = [0u8; 32];
        topic[0] = 0xF0;
        let base = FrameRepr {
            version: FrameVersion::Tx,
            byte7: 0,
            id: [0x80; 32],
            hash_key: 1,
            seq: 1,
            subtree_id: topic,
            extra: Extra::None,
            payload: &[],
        };
        let idx = |r: FrameRepr<'_>| {
            let mut buf = [0u8; 128];
            let n = r.emit(&mut buf).unwrap();
            retransmit_index(&Frame::new_checked(&buf[..n]).unwrap(), 2, 4).unwrap()
        };
        assert_eq!(idx(base), 2);
        assert_eq!(idx(FrameRepr { version: FrameVersion::Block, ..base }), INDEX_BLOCK);
        assert_eq!(idx(FrameRepr { version: FrameVersion::Anchor, ..base }), INDEX_BLOCK);
        assert_eq!(idx(FrameRepr { version: FrameVersion::Subtree, ..base }), INDEX_SUBTREE);
        assert_eq!(idx(FrameRepr { version: FrameVersion::Beef, ..base }), 0x100F);
        let frag = |orig_version| FrameRepr {
            version: FrameVersion::Fragment,
            extra: Extra::Fragment(FragmentInfo { orig_len: 9, index: 0, total: 2, orig_version }),
            ..base
        };
        assert_eq!(idx(frag(0x04)), INDEX_BLOCK);
        assert_eq!(idx(frag(0x00)), 2);
        let bundle = FrameRepr {
            version: FrameVersion::Bundle,
            extra: Extra::Bundle(BundleInfo { group_index: 1, shard_bits: 2, tx_count: 0 }),
            ..base
        };
        assert_eq!(idx(bundle), 1);
        assert_eq!(Scope::from_name("GLOBAL"), Some(Scope::Global));
        assert_eq!(SourceMode::from_name("ssm"), Some(SourceMode::Ssm));
    }
}
