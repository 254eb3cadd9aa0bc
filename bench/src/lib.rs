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

use ricochet_wire::control::{NackFlags, NackRepr};
use ricochet_wire::frame::{Extra, FrameRepr, FrameVersion};
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

/// A single-frame NACK.
pub fn nack(seq: u64) -> [u8; 64] {
    let mut buf = [0u8; 64];
    NackRepr {
        flags: NackFlags(0),
        hash_key: 0x0123_4567_89AB_CDEF,
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
}
