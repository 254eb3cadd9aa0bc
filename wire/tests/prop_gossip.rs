//! Property tests for the gossip frames G1–G6 (docs/PROTOCOL.md § "Gossip (G1–G6)"):
//! every valid Repr survives emit → parse unchanged, the encoding is
//! canonical, and no byte string makes the parser panic.

use proptest::collection::vec;
use proptest::prelude::*;
use ricochet_wire::gossip::{
    Cells, DigestRepr, ExchangeRepr, GossipFrame, IbltCell, MAX_PULL_RESPONSE, MAX_TOPIC, PullRepr,
    ReconcileKind, ReconcileMode, ReconcileRepr, RumorAckRepr, RumorRepr, SnapshotRepr,
};

/// emit → parse gives back the frame, and re-emitting the parse gives the
/// same bytes.
fn round_trip(frame: GossipFrame<'_>) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; frame.buffer_len()];
    prop_assert_eq!(frame.emit(&mut buf), Ok(buf.len()));
    let parsed = GossipFrame::parse(&buf);
    prop_assert_eq!(parsed, Ok(frame));
    Ok(())
}

/// Whatever parses re-emits to the identical bytes and parses again to the
/// same frame (the fuzz target's body).
fn reparse(data: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(frame) = GossipFrame::parse(data) {
        let mut buf = vec![0u8; frame.buffer_len()];
        prop_assert_eq!(frame.emit(&mut buf), Ok(data.len()));
        prop_assert_eq!(&buf[..], data);
        prop_assert_eq!(GossipFrame::parse(&buf), Ok(frame));
    }
    Ok(())
}

fn topic() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=MAX_TOPIC)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// `(index, count)` with `index < count`.
fn chunk() -> impl Strategy<Value = (u16, u16)> {
    (1..=u16::MAX).prop_flat_map(|count| (0..count, Just(count)))
}

fn cell() -> impl Strategy<Value = IbltCell> {
    (any::<i32>(), any::<u64>(), any::<u64>()).prop_map(|(count, key_sum, hash_sum)| IbltCell {
        count,
        key_sum,
        hash_sum,
    })
}

fn reconcile_kind() -> impl Strategy<Value = ReconcileKind> {
    prop_oneof![
        Just(ReconcileKind::Table),
        Just(ReconcileKind::Reply),
        Just(ReconcileKind::Request),
        Just(ReconcileKind::DecodeFailed),
    ]
}

fn reconcile_mode() -> impl Strategy<Value = ReconcileMode> {
    prop_oneof![Just(ReconcileMode::Fixed), Just(ReconcileMode::Rateless)]
}

/// `(first_cell, end_cell)` for `n` cells: `first + n ≤ end`, with values
/// near the top of the u32 range too.
fn cell_range(n: usize) -> impl Strategy<Value = (u32, u32)> {
    let n = n as u32;
    (0..=u32::MAX - n).prop_flat_map(move |first| (Just(first), first + n..=u32::MAX))
}

/// A valid manifest's `(k, m, total, shard_size, chunk_size)`.
fn manifest_layout() -> impl Strategy<Value = (u8, u8, u32, u32, u32)> {
    (1..=255u8, any::<u32>(), 1..=u32::MAX)
        .prop_flat_map(|(k, shard_size, chunk_size)| {
            // Keep a shard within 65 535 chunks.
            let min_chunk = shard_size.div_ceil(u32::from(u16::MAX)).max(1);
            let chunk_size = chunk_size.max(min_chunk);
            let max_total = (u64::from(k) * u64::from(shard_size)).min(u64::from(u32::MAX));
            (Just(k), 0..=255 - k, 0..=max_total, Just(shard_size), Just(chunk_size))
        })
        .prop_map(|(k, m, total, shard_size, chunk_size)| {
            (k, m, u32::try_from(total).unwrap_or(u32::MAX), shard_size, chunk_size)
        })
}

/// Bytes that start like a gossip frame, so the parser gets past the magic.
fn gossip_like() -> impl Strategy<Value = Vec<u8>> {
    (0x30..=0x37u8, any::<u8>(), bytes(96)).prop_map(|(frame, second, rest)| {
        let mut b = vec![0x47, frame, second];
        b.extend(rest);
        b
    })
}

proptest! {
    #[test]
    fn exchange_round_trips(
        full: bool,
        exchange_id: u32,
        (chunk_index, chunk_count) in chunk(),
        topic in topic(),
        watermark_ns in 0..=i64::MAX,
        entries in bytes(512),
    ) {
        round_trip(GossipFrame::Exchange(ExchangeRepr {
            full, exchange_id, chunk_index, chunk_count, topic: &topic, watermark_ns, entries: &entries,
        }))?;
    }

    #[test]
    fn digest_round_trips(fingerprint: u64, matched: bool) {
        round_trip(GossipFrame::Digest(DigestRepr { fingerprint, matched }))?;
    }

    #[test]
    fn rumor_round_trips(
        hop_count: u8,
        from_dimension: u8,
        priority: u8,
        topic in topic(),
        payload in bytes(1024),
    ) {
        round_trip(GossipFrame::Rumor(RumorRepr {
            hop_count, from_dimension, priority, topic: &topic, payload: &payload,
        }))?;
    }

    #[test]
    fn pull_round_trips(topic in topic(), since_ns in 0..=i64::MAX, max_response in 0..=MAX_PULL_RESPONSE) {
        round_trip(GossipFrame::Pull(PullRepr { topic: &topic, since_ns, max_response }))?;
    }

    #[test]
    fn reconcile_round_trips(
        kind in reconcile_kind(),
        session_id: u32,
        mode in reconcile_mode(),
        topic in topic(),
        (cells, (first_cell, end_cell)) in vec(cell(), 0..64)
            .prop_flat_map(|cells| { let n = cells.len(); (Just(cells), cell_range(n)) }),
    ) {
        let (cells, first_cell, end_cell) = if kind == ReconcileKind::DecodeFailed {
            (&cells[..0], 0, 0)
        } else {
            (&cells[..], first_cell, end_cell)
        };
        round_trip(GossipFrame::Reconcile(ReconcileRepr {
            kind, session_id, mode, first_cell, end_cell, topic: &topic, cells: Cells::from(cells),
        }))?;
    }

    /// Cells past the end of their sequence are refused by emit and, with
    /// the same error, by parse.
    #[test]
    fn reconcile_range_is_enforced(
        kind in reconcile_kind(),
        mode in reconcile_mode(),
        cells in vec(cell(), 1..8),
        first_cell: u32,
        short in 1u64..16,
    ) {
        let need = u64::from(first_cell) + cells.len() as u64;
        let end_cell = u32::try_from(need.saturating_sub(short)).unwrap_or(u32::MAX);
        let bad = ReconcileRepr {
            kind, session_id: 1, mode, first_cell, end_cell, topic: b"t", cells: Cells::from(&cells[..]),
        };
        let err = bad.emit(&mut vec![0u8; bad.buffer_len()]).unwrap_err();
        let ok = ReconcileRepr { kind: ReconcileKind::Table, first_cell: 0, end_cell: cells.len() as u32, ..bad };
        let mut buf = vec![0u8; ok.buffer_len()];
        ok.emit(&mut buf).unwrap();
        buf[2] = kind as u8;
        buf[8..12].copy_from_slice(&first_cell.to_be_bytes());
        buf[12..16].copy_from_slice(&end_cell.to_be_bytes());
        prop_assert_eq!(ReconcileRepr::parse(&buf), Err(err));
    }

    #[test]
    fn rumor_ack_round_trips(rumor_id: [u8; 32]) {
        round_trip(GossipFrame::RumorAck(RumorAckRepr { rumor_id }))?;
    }

    #[test]
    fn manifest_request_round_trips(request_id: u32) {
        round_trip(GossipFrame::Snapshot(SnapshotRepr::ManifestRequest { request_id }))?;
    }

    #[test]
    fn manifest_round_trips(
        request_id: u32,
        hlc: u64,
        fingerprint: u64,
        (data_shards, parity_shards, total_bytes, shard_size, chunk_size) in manifest_layout(),
        blob_hash: [u8; 32],
    ) {
        round_trip(GossipFrame::Snapshot(SnapshotRepr::Manifest {
            request_id, hlc, fingerprint, total_bytes, data_shards, parity_shards, shard_size, chunk_size,
            blob_hash,
        }))?;
    }

    #[test]
    fn shard_request_round_trips(
        request_id: u32,
        shard_index in 0..=254u8,
        (first_chunk, chunk_count) in (0..=u16::MAX)
            .prop_flat_map(|first| (Just(first), 1..=u16::MAX - first.saturating_sub(1))),
    ) {
        round_trip(GossipFrame::Snapshot(SnapshotRepr::ShardRequest {
            request_id, shard_index, first_chunk, chunk_count,
        }))?;
    }

    #[test]
    fn shard_chunk_round_trips(
        request_id: u32,
        shard_index in 0..=254u8,
        (chunk_index, chunk_count) in chunk(),
        data in bytes(1024),
    ) {
        round_trip(GossipFrame::Snapshot(SnapshotRepr::ShardChunk {
            request_id, shard_index, chunk_index, chunk_count, data: &data,
        }))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(256)) {
        reparse(&data)?;
    }

    #[test]
    fn gossip_like_bytes_never_panic(data in gossip_like()) {
        reparse(&data)?;
    }

    /// Valid frames with one byte changed and cut short: the parser must
    /// still not panic, and whatever it accepts must be canonical.
    #[test]
    fn mutated_frames_never_panic(
        topic in vec(any::<u8>(), 0..8),
        cells in vec(cell(), 0..4),
        at: prop::sample::Index,
        byte: u8,
        cut: prop::sample::Index,
    ) {
        let frames = [
            GossipFrame::Exchange(ExchangeRepr {
                full: false, exchange_id: 1, chunk_index: 0, chunk_count: 2,
                topic: &topic, watermark_ns: 1, entries: &topic,
            }),
            GossipFrame::Rumor(RumorRepr {
                hop_count: 0, from_dimension: 0xFF, priority: 0, topic: &topic, payload: &topic,
            }),
            GossipFrame::Pull(PullRepr { topic: &topic, since_ns: 0, max_response: 1 }),
            GossipFrame::Reconcile(ReconcileRepr {
                kind: ReconcileKind::Reply, session_id: 1, mode: ReconcileMode::Rateless,
                first_cell: 2, end_cell: 9, topic: &topic, cells: Cells::from(&cells[..]),
            }),
            GossipFrame::Snapshot(SnapshotRepr::ShardChunk {
                request_id: 1, shard_index: 0, chunk_index: 0, chunk_count: 1, data: &topic,
            }),
        ];
        for frame in frames {
            let mut buf = vec![0u8; frame.buffer_len()];
            prop_assert!(frame.emit(&mut buf).is_ok());
            let i = at.index(buf.len());
            buf[i] = byte;
            reparse(&buf)?;
            reparse(&buf[..cut.index(buf.len() + 1)])?;
        }
    }
}
