//! A fixed amount of hot-path work for counting instructions under
//! callgrind (`scripts/callgrind.sh`): wall-clock micro-benchmarks drift
//! on a shared machine, instruction counts do not.
//!
//! ```text
//! nack_hit_count <op> <N>     op: nack_hit | cache_hit | range_16
//! ```
//!
//! Builds the same set-up as the criterion benchmark of the same name (with
//! the same `ricochet_bench` functions), then performs exactly `N`
//! operations and prints `N` and a checksum of what they returned (so
//! nothing is optimised away):
//!
//! - `nack_hit`: `service/nack_hit_multicast_unicast_ack` in
//!   `bench/benches/engine.rs` — [`nack_service`]: a `Service` holding
//!   4 096 frames of one flow, every limiter tier open, the source allowed
//!   to proxy (so the multicast copy, the unicast copy and the ACK are all
//!   sent); each operation is one single-frame NACK through
//!   `Service::on_nack`, its transmits drained.
//! - `cache_hit`: `cache/hit` in the same file — `Cache::get` on a cache of
//!   100 000 frames over 64 flows ([`filled_cache`]), keys scattered over
//!   all of them ([`scattered_keys`]).
//! - `range_16`: `cache/range_16` in `engine/proto/benches/cache/bench.rs`
//!   — one flow view and a 16-frame range read on a cache of 100 000
//!   frames inserted as slices ([`sliced_cache`]).
//!
//! Sans-IO: no sockets; time is virtual (offsets from one `Instant`), so
//! every run does the same work. The set-up's cost is the same for every
//! `N`; running twice with `N` and `2N` and differencing removes it.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ricochet_bench::{
    CACHED, FLOWS, SERVICE_FRAMES, filled_cache, flow_key, nack_service, scattered_keys,
    service_nacks, sliced_cache,
};
use ricochet_proto::retry::{CacheSettings, Outbox};

const USAGE: &str = "usage: nack_hit_count <nack_hit|cache_hit|range_16> <N>";

/// The operation to repeat.
#[derive(Debug, Clone, Copy)]
enum Op {
    NackHit,
    CacheHit,
    Range16,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        match s {
            "nack_hit" => Some(Op::NackHit),
            "cache_hit" => Some(Op::CacheHit),
            "range_16" => Some(Op::Range16),
            _ => None,
        }
    }
}

/// `service/nack_hit_multicast_unicast_ack`: `n` NACKs, each answered from
/// the cache; the checksum is the bytes sent.
fn nack_hit(n: u64) -> u64 {
    let t0 = Instant::now();
    let (mut s, src) = nack_service(t0);
    let nacks = service_nacks();
    let mut out = Outbox::with_capacity(8);
    let mut sum = 0u64;
    for i in 1..=n {
        s.on_nack(
            t0 + Duration::from_nanos(i * 100),
            src,
            black_box(&nacks[(i & (SERVICE_FRAMES - 1)) as usize]),
            &mut out,
        )
        .expect("NACK answered");
        for t in out.drain_transmits() {
            sum = sum.wrapping_add(black_box(t.payload.as_bytes()).len() as u64);
        }
        out.clear();
    }
    sum
}

/// `cache/hit`: `n` lookups; the checksum is the bytes found.
fn cache_hit(n: u64) -> u64 {
    let t0 = Instant::now();
    let cache = filled_cache(CACHED, CacheSettings::default(), t0);
    let keys = scattered_keys(CACHED);
    let mut sum = 0u64;
    for i in 1..=n {
        let hit = cache.get(black_box(keys[(i & 4095) as usize]), t0).expect("frame held");
        sum = sum.wrapping_add(hit.frame.len() as u64);
    }
    sum
}

/// `cache/range_16`: `n` 16-frame range reads through one flow view; the
/// checksum is the bytes read.
fn range_16(n: u64) -> u64 {
    let t0 = Instant::now();
    let cache = sliced_cache(CACHED, t0);
    let mut i = 0u64;
    let mut sum = 0u64;
    for _ in 0..n {
        i = i.wrapping_add(2_654_435_761) % (CACHED - 16 * FLOWS);
        let view = cache.view(black_box(flow_key(i % FLOWS)), t0).expect("flow held");
        let start = i / FLOWS + 1;
        let bytes: usize = view.range(start, start + 15).map(|(_, h)| h.frame.len()).sum();
        sum = sum.wrapping_add(bytes as u64);
    }
    sum
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (op, n) = match args.as_slice() {
        [op, n] => match (Op::parse(op), n.parse::<u64>()) {
            (Some(op), Ok(n)) => (op, n),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sum = match op {
        Op::NackHit => nack_hit(n),
        Op::CacheHit => cache_hit(n),
        Op::Range16 => range_16(n),
    };
    println!("N={n} checksum={}", black_box(sum));
    ExitCode::SUCCESS
}
