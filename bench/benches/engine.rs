//! Micro-benchmarks of the engine's sans-IO pieces (ricochet-bench): the
//! retry cache (insert, hit, miss, eviction), the NACK rate limiter (per
//! shard and with the endpoint's shared tables), the
//! whole NACK service on a hit, and steering a HashKey to its worker.
//!
//! Frames are 300-byte BRC-124 datagrams built by `ricochet_bench`; time is
//! virtual (`Instant`s computed from a fixed origin), so every run does the
//! same work.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ricochet_bench::{
    CACHED, FLOWS, filled_cache, flow_key, frame_template, nack_service, open_limits,
    scattered_keys, service_nacks, stamp,
};
use ricochet_proto::retry::cache::{Origin, TtlClass};
use ricochet_proto::retry::{Cache, CacheSettings, LimitSettings, Limiter, Outbox, SharedLimits};
use ricochet_wire::frame::FrameKey;

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();

    // Copy a 300-byte datagram into Bytes and insert it in order, as an
    // ingress worker does; the cache is replaced every 65 536 frames (not
    // timed) so memory stays bounded whatever criterion's iteration count.
    g.bench_function("insert_300B", |b| {
        b.iter_custom(|iters| {
            let mut f = frame_template();
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let chunk = (iters - done).min(65_536);
                let mut cache = Cache::new(CacheSettings::default(), t0);
                let start = Instant::now();
                for i in 0..chunk {
                    let (flow, seq) = (i % FLOWS, i / FLOWS + 1);
                    stamp(&mut f, flow_key(flow), seq);
                    let bytes = Bytes::copy_from_slice(&f);
                    black_box(cache.insert(
                        t0,
                        FrameKey { hash_key: flow_key(flow), seq },
                        TtlClass::Tx,
                        0,
                        bytes,
                        Origin::Fabric,
                    ));
                }
                total += start.elapsed();
                drop(cache);
                done += chunk;
            }
            total
        })
    });

    let n = CACHED;
    let full = filled_cache(n, CacheSettings::default(), t0);
    let keys = scattered_keys(n);
    let mut i = 0usize;
    g.bench_function("hit", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            full.get(black_box(keys[i]), t0).map(|h| h.frame.len())
        })
    });
    g.bench_function("miss_unknown_flow", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            full.get(
                black_box(FrameKey { hash_key: keys[i].hash_key ^ 0xFF00, seq: keys[i].seq }),
                t0,
            )
            .is_none()
        })
    });
    g.bench_function("miss_beyond_head", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            full.get(black_box(FrameKey { hash_key: keys[i].hash_key, seq: n }), t0).is_none()
        })
    });

    // Steady state at the key bound: every insert evicts the oldest frame.
    let bound = CacheSettings { max_keys: 65_536, ..CacheSettings::default() };
    let mut at_bound = filled_cache(65_536, bound, t0);
    let mut f = frame_template();
    let mut next = 65_536u64;
    g.bench_function("insert_evicting_300B", |b| {
        b.iter(|| {
            let (flow, seq) = (next % FLOWS, next / FLOWS + 1);
            next += 1;
            stamp(&mut f, flow_key(flow), seq);
            let bytes = Bytes::copy_from_slice(&f);
            at_bound.insert(
                t0,
                FrameKey { hash_key: flow_key(flow), seq },
                TtlClass::Tx,
                0,
                bytes,
                Origin::Fabric,
            )
        })
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let ips: Vec<IpAddr> =
        (0..1024u32).map(|i| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i))).collect();

    // Every tier admits: the cost of the three pre-lookup tiers plus the
    // group tier for a well-behaved population of 1024 sources.
    let open = open_limits();
    let mut l = Limiter::new(&open, t0);
    let mut k = 0u64;
    g.bench_function("admit_all_tiers", |b| {
        b.iter(|| {
            k += 1;
            let now = t0 + Duration::from_nanos(k * 100);
            let ip = ips[(k & 1023) as usize];
            let ok = l.check_before_lookup(now, ip, flow_key(k & 63), k).is_ok();
            ok && l.check_group(now, ip, (k & 3) as u16)
        })
    });

    // One source far over its IP-tier rate (reference defaults): the
    // flood path, refused at the first tier.
    let mut l = Limiter::new(&LimitSettings::default(), t0);
    let flood = ips[0];
    g.bench_function("refuse_flood_ip_tier", |b| {
        b.iter(|| {
            k += 1;
            l.check_before_lookup(t0 + Duration::from_nanos(k * 100), flood, 7, k).is_err()
        })
    });

    // The same two, with the IP, sequence and group tiers in the endpoint's
    // shared lock-free tables (what the runtime's workers use): the cost of
    // the atomic cells against the per-shard hash maps, uncontended.
    let shared = std::sync::Arc::new(SharedLimits::new(&open, t0));
    let mut l = Limiter::with_shared(&open, shared, t0);
    g.bench_function("shared_admit_all_tiers", |b| {
        b.iter(|| {
            k += 1;
            let now = t0 + Duration::from_nanos(k * 100);
            let ip = ips[(k & 1023) as usize];
            let ok = l.check_before_lookup(now, ip, flow_key(k & 63), k).is_ok();
            ok && l.check_group(now, ip, (k & 3) as u16)
        })
    });
    let defaults = LimitSettings::default();
    let shared = std::sync::Arc::new(SharedLimits::new(&defaults, t0));
    let mut l = Limiter::with_shared(&defaults, shared, t0);
    g.bench_function("shared_refuse_flood_ip_tier", |b| {
        b.iter(|| {
            k += 1;
            l.check_before_lookup(t0 + Duration::from_nanos(k * 100), flood, 7, k).is_err()
        })
    });
    g.finish();
}

fn service(c: &mut Criterion) {
    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    // 4 096 frames of one flow, every limiter tier open, the source allowed
    // to proxy: the benchmark measures the full answer (multicast copy,
    // unicast copy, ACK).
    let (mut s, src) = nack_service(t0);
    let nacks = service_nacks();
    let mut out = Outbox::with_capacity(8);
    let mut i = 0u64;
    g.bench_function("nack_hit_multicast_unicast_ack", |b| {
        b.iter(|| {
            i += 1;
            out.clear();
            s.on_nack(
                t0 + Duration::from_nanos(i * 100),
                src,
                black_box(&nacks[(i & 4095) as usize]),
                &mut out,
            )
            .unwrap();
            out.transmits().len()
        })
    });
    g.finish();
}

fn steering(c: &mut Criterion) {
    let mut g = c.benchmark_group("steering");
    g.throughput(Throughput::Elements(1));
    let mut key = 0x9E37_79B9_7F4A_7C15u64;
    g.bench_function("owner", |b| {
        b.iter(|| {
            key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ricochet::rt::owner(black_box(key), 4)
        })
    });
    let nack = ricochet_bench::nack(42);
    g.bench_function("peek_nack_key_then_owner", |b| {
        b.iter(|| {
            ricochet_wire::control::peek_nack_key(black_box(&nack))
                .map(|k| ricochet::rt::owner(k, 4))
        })
    });
    g.finish();
}

criterion_group!(benches, cache, limiter, service, steering);
criterion_main!(benches);
