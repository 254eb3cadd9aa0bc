//! `ricochet-bench`: the `ricochet-loadgen` load generator, its baselines,
//! the perf report, and the packet samples the criterion benches use.
//!
//! # Layout
//! - Sans-IO logic, unit-tested on a virtual clock: [`pace`] (open-loop
//!   schedules), [`latency`] (HdrHistograms corrected for coordinated
//!   omission, `.hgrm` export), [`gap`] (per-flow gap tracking),
//!   [`escalate`] (the listener's NACK escalation), [`source`] (what a
//!   shard-proxy publishes), [`rng`] (seeded, reproducible randomness).
//! - I/O: [`net`] (sendmmsg/recvmmsg batches, multicast sockets), [`proc`]
//!   (child processes with kill-on-drop guards, the engine binary),
//!   [`metrics`] (the engine's /metrics).
//! - [`soak`]: per-interval accounting of `lab --soak-interval` against
//!   what the engine's rate limits admit (sans-IO; the lab feeds it).
//! - [`cmd`]: one module per subcommand; [`report`] and [`charts`] turn
//!   `perf/results/*.json` into `perf/REPORT.md` and SVG charts.
//!
//! Hot loops (publish, nack, reflect, sink, listen) allocate nothing per
//! datagram: batches, histograms and tables are sized up front.
//!
//! Samples below are built from fixed inputs, so every run measures the
//! same bytes.

pub mod charts;
pub mod cmd;
pub mod escalate;
pub mod gap;
pub mod latency;
pub mod metrics;
pub mod net;
pub mod out;
pub mod pace;
pub mod proc;
pub mod report;
pub mod rng;
pub mod soak;
pub mod source;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use ricochet_proto::retry::cache::{Origin, TtlClass};
use ricochet_proto::retry::{
    AllowList, Cache, CacheSettings, LimitSettings, Prefix, Service, Settings,
};
use ricochet_wire::control::{NackFlags, NackRepr};
use ricochet_wire::frame::{Extra, FrameKey, FrameRepr, FrameVersion};
use ricochet_wire::record::{RecordRepr, RecordType, SigningKey};

/// A BRC-124 transaction frame with a `payload_len`-byte payload.
pub fn tx_frame(payload_len: usize, seq: u64) -> Vec<u8> {
    let payload = vec![0xA5; payload_len];
    let repr = FrameRepr {
        version: FrameVersion::Tx,
        byte7: 0,
        id: core::array::from_fn(|i| i as u8 ^ seq as u8),
        hash_key: 0x0123_4567_89AB_CDEF,
        seq,
        subtree_id: [0x20; 32],
        extra: Extra::None,
        payload: &payload,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).expect("sample frame encodes");
    buf
}

/// A single-frame NACK for `seq` of the flow [`tx_frame`] belongs to.
pub fn nack(seq: u64) -> [u8; 64] {
    nack_for(0x0123_4567_89AB_CDEF, seq)
}

/// A single-frame NACK for `seq` of flow `hash_key`.
pub fn nack_for(hash_key: u64, seq: u64) -> [u8; 64] {
    let mut buf = [0u8; 64];
    NackRepr {
        flags: NackFlags(0),
        hash_key,
        start_seq: seq,
        end_seq: seq,
        subtree_id: [0x20; 32],
    }
    .emit(&mut buf)
    .expect("sample NACK encodes");
    buf
}

/// A signed endpoint record with a 64-byte payload.
pub fn signed_record() -> Vec<u8> {
    let payload = [0x42u8; 64];
    let mut repr =
        RecordRepr::unsigned(RecordType::Endpoint, [9; 32], 1, 1_700_000_000, 3600, &payload);
    repr.sign(&SigningKey::from_bytes(&[7; 32])).expect("sample record signs");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).expect("sample record encodes");
    buf
}

// Set-ups shared by the criterion benches (`benches/engine.rs`) and the
// callgrind driver (`examples/nack_hit_count.rs`), so both measure the same
// state.

/// Flows the benchmark caches are filled over, round-robin.
pub const FLOWS: u64 = 64;

/// Frames in the caches of `cache/hit` and `cache/range_16`.
pub const CACHED: u64 = 100_000;

/// Frames of the one flow (`flow_key(0)`) that [`nack_service`] holds.
pub const SERVICE_FRAMES: u64 = 4096;

/// The HashKey of benchmark flow `flow`: scattered, odd, never zero.
pub fn flow_key(flow: u64) -> u64 {
    0x1000_0000_0000_0000 | (flow.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8) | 1
}

/// Writes `hash_key` and `seq` into a BRC-124 frame's header in place.
pub fn stamp(frame: &mut [u8], hash_key: u64, seq: u64) {
    frame[40..48].copy_from_slice(&hash_key.to_be_bytes());
    frame[48..56].copy_from_slice(&seq.to_be_bytes());
}

/// A 300-byte transaction frame (`tx_frame(208, 1)`); callers [`stamp`]
/// HashKey and SeqNum in place.
pub fn frame_template() -> Vec<u8> {
    let f = tx_frame(300 - 92, 1);
    assert_eq!(f.len(), 300);
    f
}

/// The key of the `i`-th frame the benchmark caches are filled with:
/// round-robin over [`FLOWS`] flows, sequence numbers from 1.
pub fn cached_key(i: u64) -> FrameKey {
    FrameKey { hash_key: flow_key(i % FLOWS), seq: i / FLOWS + 1 }
}

/// A cache holding `n` [`frame_template`] frames (keys [`cached_key`]`(0..n)`),
/// each copied into its own `Bytes` as an ingress worker does: `cache/hit`,
/// the misses and the eviction benches.
pub fn filled_cache(n: u64, settings: CacheSettings, t0: Instant) -> Cache {
    let mut c = Cache::new(settings, t0);
    let mut f = frame_template();
    for i in 0..n {
        let key = cached_key(i);
        stamp(&mut f, key.hash_key, key.seq);
        c.insert(t0, key, TtlClass::Tx, 0, Bytes::copy_from_slice(&f), Origin::Fabric);
    }
    c
}

/// 4 096 keys scattered over a cache of `n` frames filled as
/// [`filled_cache`] does: what `cache/hit` looks up, in turn.
pub fn scattered_keys(n: u64) -> Vec<FrameKey> {
    (0..4096u64).map(|i| cached_key(i.wrapping_mul(2_654_435_761) % n)).collect()
}

/// A default cache holding `n` 300-byte frames of `0xA5` bytes (keys
/// [`cached_key`]`(0..n)`), inserted as slices (the one-copy path): the
/// set-up of `cache/range_16` in `engine/proto/benches/cache/bench.rs`.
pub fn sliced_cache(n: u64, t0: Instant) -> Cache {
    let mut c = Cache::new(CacheSettings::default(), t0);
    let mut f = vec![0xA5; 300];
    for i in 0..n {
        let key = cached_key(i);
        stamp(&mut f, key.hash_key, key.seq);
        c.insert(t0, key, TtlClass::Tx, 0, &f[..], Origin::Fabric);
    }
    c
}

/// Rate limits with every tier wide open, so every NACK is admitted and
/// the benchmark measures the checks, not the refusals.
pub fn open_limits() -> LimitSettings {
    LimitSettings {
        ip_rate: 1e9,
        ip_burst: 1_000_000,
        sequence_max: u32::MAX,
        chain_max: u32::MAX,
        group_rate: 1e9,
        group_burst: 1_000_000,
        ..LimitSettings::default()
    }
}

/// The set-up of `service/nack_hit_multicast_unicast_ack`: a `Service`
/// created at `t0` with unicast retransmission on and [`open_limits`],
/// holding [`SERVICE_FRAMES`] frames (seq 1 to 4 096) of flow
/// `flow_key(0)`; and the NACK source it answers.
///
/// The source may proxy, so its unicast copies are sent (as on a real
/// upstream): a NACK hit yields the multicast copy, the unicast copy and
/// the ACK, the full answer.
pub fn nack_service(t0: Instant) -> (Service, SocketAddr) {
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
    let settings = Settings {
        unicast_retransmit: true,
        proxy_allow: AllowList::new([Prefix::host(src.ip())]),
        limits: open_limits(),
        ..Settings::default()
    };
    let mut s = Service::new(settings, t0);
    let mut f = frame_template();
    for seq in 1..=SERVICE_FRAMES {
        stamp(&mut f, flow_key(0), seq);
        s.on_frame(t0, Bytes::copy_from_slice(&f), Some(0)).expect("frame cached");
    }
    (s, src)
}

/// One single-frame NACK for each frame [`nack_service`] holds; index
/// `i & 4095` NACKs seq `i + 1`.
pub fn service_nacks() -> Vec<[u8; 64]> {
    (1..=SERVICE_FRAMES).map(|seq| nack_for(flow_key(0), seq)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse() {
        assert!(ricochet_wire::frame::Frame::new_checked(&tx_frame(300, 1)).is_ok());
        assert!(ricochet_wire::control::Nack::new_checked(&nack(5)).is_ok());
        let rec = signed_record();
        let r = ricochet_wire::record::Record::new_checked(&rec).unwrap();
        assert!(r.verify().is_ok());
    }

    #[test]
    fn nack_for_patches_only_the_hash_key() {
        let mut patched = nack(7);
        patched[8..16].copy_from_slice(&flow_key(0).to_be_bytes());
        assert_eq!(nack_for(flow_key(0), 7), patched);
    }

    #[test]
    fn shared_setups_hold_what_they_say() {
        let t0 = Instant::now();
        let c = filled_cache(1000, CacheSettings::default(), t0);
        for k in scattered_keys(1000) {
            assert_eq!(c.get(k, t0).expect("frame held").frame.len(), 300);
        }
        let c = sliced_cache(1000, t0);
        assert!(c.get(cached_key(999), t0).is_some());
        let (mut s, src) = nack_service(t0);
        let mut out = ricochet_proto::retry::Outbox::with_capacity(8);
        s.on_nack(t0, src, &service_nacks()[0], &mut out).expect("NACK answered");
        assert_eq!(out.transmits().len(), 3);
    }
}
