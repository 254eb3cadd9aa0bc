//! Golden vectors for the gossip frames G1–G6, copied from docs/PROTOCOL.md
//! § "Gossip (G1–G6)" and checked in both directions: emitting the Repr gives
//! the hex, parsing the hex gives the Repr.

use ricochet_wire::gossip::{
    Cells, DigestRepr, ExchangeRepr, GossipFrame, IbltCell, ORIGIN_DIMENSION, PullRepr,
    ReconcileKind, ReconcileMode, ReconcileRepr, RumorAckRepr, RumorRepr, SnapshotRepr, rumor_id,
};

/// 2023-11-14T22:13:20Z in unix nanoseconds.
const WATERMARK_NS: i64 = 1_700_000_000_000_000_000;

const CELLS: [IbltCell; 2] = [
    IbltCell { count: 1, key_sum: 0x0102_0304_0506_0708, hash_sum: 0x1112_1314_1516_1718 },
    IbltCell { count: -1, key_sum: 0x2122_2324_2526_2728, hash_sum: 0x3132_3334_3536_3738 },
];

/// Each vector: name, hex from the docs, the frame it encodes.
fn vectors() -> Vec<(&'static str, &'static str, GossipFrame<'static>)> {
    vec![
        (
            "G1 exchange",
            "473100000019030a0b0c0d00000002046761707317979cfe362a0000010203",
            GossipFrame::Exchange(ExchangeRepr {
                full: true,
                exchange_id: 0x0A0B_0C0D,
                chunk_index: 0,
                chunk_count: 2,
                topic: b"gaps",
                watermark_ns: WATERMARK_NS,
                entries: &[1, 2, 3],
            }),
        ),
        (
            "G2 digest",
            "47320123456789abcdef0001",
            GossipFrame::Digest(DigestRepr { fingerprint: 0x0123_4567_89AB_CDEF, matched: true }),
        ),
        (
            "G3 rumor",
            "473301ff02036f776e0000000568656c6c6f",
            GossipFrame::Rumor(RumorRepr {
                hop_count: 1,
                from_dimension: ORIGIN_DIMENSION,
                priority: 2,
                topic: b"own",
                payload: b"hello",
            }),
        ),
        (
            "G4 pull",
            "473410046761707317979cfe362a000000010000",
            GossipFrame::Pull(PullRepr {
                topic: b"gaps",
                since_ns: WATERMARK_NS,
                max_response: 65_536,
            }),
        ),
        (
            "G4 reconciliation table",
            "4734001122334400\
             0000003b00000096\
             0467617073\
             00020000000101020304050607081112131415161718\
             ffffffff21222324252627283132333435363738",
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::Table,
                session_id: 0x1122_3344,
                mode: ReconcileMode::Fixed,
                first_cell: 59,
                end_cell: 150,
                topic: b"gaps",
                cells: Cells::from(&CELLS[..]),
            }),
        ),
        (
            "G4 reconciliation request",
            "473402112233440100000076000000ec04676170730000",
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::Request,
                session_id: 0x1122_3344,
                mode: ReconcileMode::Rateless,
                first_cell: 118,
                end_cell: 236,
                topic: b"gaps",
                cells: Cells::from(&CELLS[..0]),
            }),
        ),
        (
            "G5 rumor ACK",
            "4735ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f",
            GossipFrame::RumorAck(RumorAckRepr { rumor_id: rumor_id(b"hello") }),
        ),
        (
            "G6 manifest request",
            "4736000000051000000001",
            GossipFrame::Snapshot(SnapshotRepr::ManifestRequest { request_id: 1 }),
        ),
        (
            "G6 manifest",
            "473600000043110000000100000189d5e6f7000123456789abcdef000003e80201000001f400000100\
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            GossipFrame::Snapshot(SnapshotRepr::Manifest {
                request_id: 1,
                hlc: 0x0000_0189_D5E6_F700,
                fingerprint: 0x0123_4567_89AB_CDEF,
                total_bytes: 1000,
                data_shards: 2,
                parity_shards: 1,
                shard_size: 500,
                chunk_size: 256,
                blob_hash: core::array::from_fn(|i| i as u8),
            }),
        ),
        (
            "G6 shard request",
            "47360000000a12000000020200000002",
            GossipFrame::Snapshot(SnapshotRepr::ShardRequest {
                request_id: 2,
                shard_index: 2,
                first_chunk: 0,
                chunk_count: 2,
            }),
        ),
        (
            "G6 shard chunk",
            "47360000000e130000000202000100027461696c",
            GossipFrame::Snapshot(SnapshotRepr::ShardChunk {
                request_id: 2,
                shard_index: 2,
                chunk_index: 1,
                chunk_count: 2,
                data: b"tail",
            }),
        ),
    ]
}

fn unhex(s: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a lowercase hex digit: {c:?}"),
    };
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    s.as_bytes().chunks(2).map(|p| digit(p[0]) << 4 | digit(p[1])).collect()
}

#[test]
fn emit_matches_golden_hex() {
    for (name, hex, frame) in vectors() {
        let want = unhex(hex);
        assert_eq!(frame.buffer_len(), want.len(), "{name}: buffer_len");
        let mut out = vec![0u8; want.len()];
        assert_eq!(frame.emit(&mut out), Ok(want.len()), "{name}");
        assert_eq!(out, want, "{name}");
    }
}

#[test]
fn parse_of_golden_hex_matches_repr() {
    for (name, hex, frame) in vectors() {
        let bytes = unhex(hex);
        assert_eq!(GossipFrame::parse(&bytes), Ok(frame), "{name}");
    }
}

#[test]
fn golden_rumor_ack_names_the_golden_rumor() {
    let id = "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f";
    assert_eq!(rumor_id(b"hello").to_vec(), unhex(id));
}
