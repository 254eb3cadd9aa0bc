//! Property tests for the fabric formats: data frames, BRC-126 control
//! messages, group addressing and the cluster MAC.

use std::net::Ipv6Addr;

use proptest::prelude::*;
use ricochet_wire::control::{
    AckFlags, AdvertFlags, AdvertRepr, AdvertScope, Control, NackFlags, NackRepr, ResponseKind,
    ResponseRepr,
};
use ricochet_wire::frame::{BundleInfo, Extra, FragmentInfo, Frame, FrameRepr, FrameVersion};
use ricochet_wire::group::{self, Scope, SourceMode};
use ricochet_wire::mac::ClusterKey;

fn version() -> impl Strategy<Value = FrameVersion> {
    proptest::sample::select(FrameVersion::ALL.to_vec())
}

prop_compose! {
    fn frame_parts()(
        version in version(),
        byte7 in any::<u8>(),
        id in any::<[u8; 32]>(),
        hash_key in any::<u64>(),
        seq in any::<u64>(),
        subtree_id in any::<[u8; 32]>(),
        orig_len in any::<u32>(),
        total in 1u16..,
        index_frac in 0.0f64..1.0,
        orig_version in any::<u8>(),
        group_index in any::<u16>(),
        shard_bits in any::<u8>(),
        members in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
        data in proptest::collection::vec(any::<u8>(), 0..1500),
    ) -> (FrameVersion, u8, [u8; 32], u64, u64, [u8; 32], Extra, Vec<u8>) {
        let (legacy, bundle) = (version == FrameVersion::Legacy, version == FrameVersion::Bundle);
        let with_ids = byte7 & 1 != 0;
        let (extra, payload) = match version {
            FrameVersion::Fragment => (Extra::Fragment(FragmentInfo {
                orig_len,
                index: ((total as f64 * index_frac) as u16).min(total - 1),
                total,
                orig_version,
            }), data),
            FrameVersion::Bundle => {
                let mut section = Vec::new();
                for m in &members {
                    section.extend_from_slice(&(m.len() as u16).to_be_bytes());
                    if with_ids { section.extend_from_slice(&id); }
                    section.extend_from_slice(m);
                }
                (Extra::Bundle(BundleInfo { group_index, shard_bits, tx_count: members.len() as u16 }), section)
            }
            _ => (Extra::None, data),
        };
        (
            version,
            byte7,
            id,
            if legacy { 0 } else { hash_key },
            if legacy { 0 } else { seq },
            if legacy || bundle { [0; 32] } else { subtree_id },
            extra,
            payload,
        )
    }
}

fn scope() -> impl Strategy<Value = Scope> {
    proptest::sample::select(vec![Scope::Link, Scope::Site, Scope::Org, Scope::Global])
}

proptest! {
    #[test]
    fn frame_round_trip(
        (version, byte7, id, hash_key, seq, subtree_id, extra, payload) in frame_parts(),
        trailing in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let repr = FrameRepr { version, byte7, id, hash_key, seq, subtree_id, extra, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(FrameRepr::parse(&buf), Ok(repr));
        // Trailing bytes are kept by the view and left out of the repr.
        buf.extend_from_slice(&trailing);
        let view = Frame::new_checked(&buf).unwrap();
        prop_assert_eq!(view.payload(), &payload[..]);
        prop_assert_eq!(view.trailing(), &trailing[..]);
        prop_assert_eq!(FrameRepr::from_view(&view), repr);
    }

    #[test]
    fn nack_round_trip(
        flags in any::<u8>(), hash_key in any::<u64>(), a in any::<u64>(), b in any::<u64>(),
        subtree_id in any::<[u8; 32]>(),
    ) {
        let repr = NackRepr {
            flags: NackFlags(flags), hash_key, start_seq: a.min(b), end_seq: a.max(b), subtree_id,
        };
        let mut buf = [0u8; 64];
        prop_assert_eq!(repr.emit(&mut buf), Ok(64));
        prop_assert_eq!(Control::parse(&buf), Ok(Control::Nack(repr)));
    }

    #[test]
    fn response_round_trip(which in 0u8..3, flags in any::<u8>(), seq in any::<u64>()) {
        let kind = match which {
            0 => ResponseKind::Miss,
            1 => ResponseKind::Ack(AckFlags(flags)),
            _ => ResponseKind::Throttled { bucket: flags & 0x0F },
        };
        let repr = ResponseRepr { kind, seq };
        let mut buf = [0u8; 16];
        prop_assert_eq!(repr.emit(&mut buf), Ok(16));
        prop_assert_eq!(ResponseRepr::parse(&buf), Ok(repr));
    }

    #[test]
    fn advert_round_trip(
        scope in scope(), all in any::<bool>(), addr in any::<[u8; 16]>(), port in any::<u16>(), tier in 0u8..=254,
        preference in any::<u8>(), interval in any::<u16>(), flags in any::<u16>(), id in any::<u32>(),
    ) {
        let scope = if all { AdvertScope::All } else { AdvertScope::Group(scope) };
        let repr = AdvertRepr {
            scope, nack_addr: Ipv6Addr::from(addr), nack_port: port, tier, preference,
            interval_secs: interval, flags: AdvertFlags(flags), instance_id: id,
        };
        let mut buf = [0u8; 56];
        prop_assert_eq!(repr.emit(&mut buf), Ok(56));
        prop_assert_eq!(AdvertRepr::parse(&buf), Ok(repr));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Frame::new_checked(&data).map(|f| (f.key(), f.payload().len(), f.extra(), f.bundle_members().count()));
        let _ = Control::parse(&data);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_prefix_never_panic(
        kind in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut data = vec![0xE3, 0xE1, 0xF3, 0xE8, 0x02, 0xBF, kind];
        data.extend_from_slice(&rest);
        let _ = Frame::new_checked(&data).map(|f| (f.key(), f.payload().len(), f.extra(), f.bundle_members().count()));
        let _ = Control::parse(&data);
    }

    #[test]
    fn groups_invert(mode_ssm in any::<bool>(), scope in scope(), gid in any::<u16>(), index in any::<u16>()) {
        let mode = if mode_ssm { SourceMode::Ssm } else { SourceMode::Asm };
        match group::ipv6_group(mode, scope, gid, index) {
            Ok(addr) => prop_assert_eq!(group::ipv6_group_index(addr, mode, scope, gid), Some(index)),
            Err(_) => prop_assert!(mode == SourceMode::Ssm && matches!(scope, Scope::Link | Scope::Org)),
        }
        prop_assert_eq!(group::ipv4_lab_index(group::ipv4_lab_group(index)), Some(index));
    }

    #[test]
    fn shard_index_is_in_range(txid in any::<[u8; 32]>(), bits in 0u8..=12) {
        let idx = group::shard_index(&txid, bits).unwrap();
        prop_assert!(u32::from(idx) < (1u32 << bits));
    }

    #[test]
    fn mac_opens_only_what_it_sealed(body in proptest::collection::vec(any::<u8>(), 0..300), flip in any::<usize>()) {
        let key = ClusterKey::new([9; 32]);
        let mut buf = body.clone();
        buf.extend_from_slice(&[0; 16]);
        let n = key.seal(&mut buf, body.len()).unwrap();
        prop_assert_eq!(key.open(&buf[..n]), Ok(&body[..]));
        let i = flip % n;
        buf[i] ^= 0x01;
        prop_assert!(key.open(&buf[..n]).is_err());
    }
}
