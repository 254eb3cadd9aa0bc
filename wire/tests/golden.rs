//! Golden vectors from docs/PROTOCOL.md, checked in both directions: the
//! repr emits exactly the documented bytes, and the documented bytes parse
//! back to the repr. The HashKey and CRC32c vectors were cross-checked with
//! independent implementations (Python `xxhash` and `crc32c`).

use ricochet_wire::control::{
    AckFlags, AdvertFlags, AdvertRepr, AdvertScope, Control, NackFlags, NackRepr, ResponseRepr,
};
use ricochet_wire::frame::{BundleInfo, Extra, FragmentInfo, FrameRepr, FrameVersion};
use ricochet_wire::group::Scope;
use ricochet_wire::mac::ClusterKey;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn seq_bytes(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start + i as u8)
}

const TXID: u8 = 0xC0;
const SUBTREE: u8 = 0x20;
const HASH_KEY: u64 = 0x0123_4567_89AB_CDEF;

fn check_frame(repr: FrameRepr<'_>, hex: &str) {
    let want = unhex(hex);
    let mut got = vec![0u8; repr.buffer_len()];
    assert_eq!(repr.emit(&mut got), Ok(want.len()));
    assert_eq!(got, want, "emit");
    assert_eq!(FrameRepr::parse(&want), Ok(repr), "parse");
}

fn check_control(msg: Control, hex: &str) {
    let want = unhex(hex);
    let mut got = [0u8; 64];
    let n = msg.emit(&mut got).unwrap();
    assert_eq!(&got[..n], &want[..], "emit");
    assert_eq!(Control::parse(&want), Ok(msg), "parse");
}

#[test]
fn tx_frame() {
    check_frame(
        FrameRepr {
            version: FrameVersion::Tx,
            byte7: 0,
            id: seq_bytes(TXID),
            hash_key: HASH_KEY,
            seq: 42,
            subtree_id: seq_bytes(SUBTREE),
            extra: Extra::None,
            payload: b"ricochet",
        },
        "e3e1f3e8 02bf 02 00
         c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
         0123456789abcdef 000000000000002a
         202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
         00000008 7269636f63686574",
    );
}

/// A BEEF object (0x09, BRC-148/149): the BRC-124 layout, its ContentID in
/// the TxID slot and its TopicID in the SubtreeID slot; retransmitted to
/// `0x1000 + shard(TopicID)` at the BEEF shard bits.
#[test]
fn beef_frame() {
    let repr = FrameRepr {
        version: FrameVersion::Beef,
        byte7: 0,
        id: seq_bytes(TXID),
        hash_key: HASH_KEY,
        seq: 7,
        subtree_id: seq_bytes(0x90),
        extra: Extra::None,
        payload: b"beef",
    };
    let hex = "e3e1f3e8 02bf 09 00
         c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
         0123456789abcdef 0000000000000007
         909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadaeaf
         00000004 62656566";
    check_frame(repr, hex);
    let bytes = unhex(hex);
    let frame = ricochet_wire::frame::Frame::new_checked(&bytes[..]).unwrap();
    // TopicID 0x9091… : the top 4 bits are 9; zero bits is the one group.
    assert_eq!(ricochet_wire::group::retransmit_index(&frame, 2, 4), Ok(0x1009));
    assert_eq!(ricochet_wire::group::retransmit_index(&frame, 2, 0), Ok(0x1000));
    assert_eq!(ricochet_wire::group::retransmit_index(&frame, 2, 12), Ok(0x1909));
}

#[test]
fn legacy_frame() {
    check_frame(
        FrameRepr {
            version: FrameVersion::Legacy,
            byte7: 0,
            id: seq_bytes(TXID),
            hash_key: 0,
            seq: 0,
            subtree_id: [0; 32],
            extra: Extra::None,
            payload: b"abc",
        },
        "e3e1f3e8 02bf 01 00
         c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
         00000003 616263",
    );
}

#[test]
fn fragment_frame() {
    check_frame(
        FrameRepr {
            version: FrameVersion::Fragment,
            byte7: 0,
            id: seq_bytes(TXID),
            hash_key: HASH_KEY,
            seq: 43,
            subtree_id: seq_bytes(SUBTREE),
            extra: Extra::Fragment(FragmentInfo {
                orig_len: 3000,
                index: 1,
                total: 3,
                orig_version: 0,
            }),
            payload: b"frag",
        },
        "e3e1f3e8 02bf 03 00
         c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf
         0123456789abcdef 000000000000002b
         202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
         00000004 00000bb8 0001 0003 00 000000 66726167",
    );
}

#[test]
fn bundle_frame() {
    check_frame(
        FrameRepr {
            version: FrameVersion::Bundle,
            byte7: 0,
            id: seq_bytes(SUBTREE),
            hash_key: HASH_KEY,
            seq: 44,
            subtree_id: [0; 32],
            extra: Extra::Bundle(BundleInfo { group_index: 3, shard_bits: 2, tx_count: 1 }),
            payload: &[0x00, 0x03, b'a', b'b', b'c'],
        },
        "e3e1f3e8 02bf 08 00
         202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
         0123456789abcdef 000000000000002c
         0003 02 00 0001 00000005
         0003 616263",
    );
}

#[test]
fn nack() {
    check_control(
        Control::Nack(NackRepr {
            flags: NackFlags(0),
            hash_key: HASH_KEY,
            start_seq: 42,
            end_seq: 45,
            subtree_id: seq_bytes(SUBTREE),
        }),
        "e3e1f3e8 02bf 10 00 0123456789abcdef 000000000000002a 000000000000002d
         202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
    );
}

#[test]
fn responses() {
    check_control(Control::Response(ResponseRepr::miss()), "e3e1f3e8 02bf 11 00 0000000000000000");
    check_control(
        Control::Response(ResponseRepr::ack(42, AckFlags(AckFlags::MULTICAST | AckFlags::UNICAST))),
        "e3e1f3e8 02bf 12 03 000000000000002a",
    );
    check_control(
        Control::Response(ResponseRepr::throttled(42, 3)),
        "e3e1f3e8 02bf 13 03 000000000000002a",
    );
}

#[test]
fn advert() {
    let instance_id = ricochet_wire::crc32c::crc32c(b"edge-1");
    assert_eq!(instance_id, 0x48A1_A167);
    check_control(
        Control::Advert(AdvertRepr {
            scope: AdvertScope::Group(Scope::Site),
            nack_addr: "::ffff:127.0.0.1".parse().unwrap(),
            nack_port: 9300,
            tier: 0,
            preference: 128,
            interval_secs: 60,
            flags: AdvertFlags(AdvertFlags::HAS_PARENT | AdvertFlags::MULTICAST_RETRANSMIT),
            instance_id,
        }),
        "e3e1f3e8 02bf 20 05 00000000000000000000ffff7f000001 2454 00 80 003c 0012 48a1a167
         0000000000000000000000000000000000000000",
    );
}

/// `BEACON_SCOPE=all`: scope byte 0xFF, as the reference writes it;
/// global unique-local address, tier 2, preference 200, 30 s, Unicast +
/// Multicast, instance id 1.
#[test]
fn advert_all_scopes() {
    check_control(
        Control::Advert(AdvertRepr {
            scope: AdvertScope::All,
            nack_addr: "fd00::1".parse().unwrap(),
            nack_port: 9301,
            tier: 2,
            preference: 200,
            interval_secs: 30,
            flags: AdvertFlags(AdvertFlags::UNICAST_RETRANSMIT | AdvertFlags::MULTICAST_RETRANSMIT),
            instance_id: 1,
        }),
        "e3e1f3e8 02bf 20 ff fd000000000000000000000000000001 2455 02 c8 001e 0018 00000001
         0000000000000000000000000000000000000000",
    );
}

#[test]
fn flow_hash_key() {
    let key = ricochet_wire::flow::hash_key("fd00::1".parse().unwrap(), 3, &seq_bytes(SUBTREE));
    assert_eq!(key, 0x7016_1CD3_521F_D870);
}

#[test]
fn cluster_mac() {
    let key = ClusterKey::new([0x4B; 32]);
    let want = unhex("68656c6c6f20636c7573746572 fd7829f48db453070c46aa289f303539");
    let mut buf = b"hello cluster".to_vec();
    buf.extend_from_slice(&[0; 16]);
    assert_eq!(key.seal(&mut buf, 13), Ok(want.len()));
    assert_eq!(buf, want);
    assert_eq!(key.open(&want), Ok(&b"hello cluster"[..]));
}
