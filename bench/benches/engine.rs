//! Micro-benchmarks of the engine's sans-IO pieces (ricochet-bench): the
//! retry cache (insert, hit, miss, eviction), the NACK rate limiter (per
//! shard and with the endpoint's shared tables), the
//! whole NACK service on a hit, and steering a HashKey to its worker.
//!
//! Frames are 300-byte BRC-124 datagrams built by `ricochet_bench`; time is
//! virtual (`Instant`s computed from a fixed origin), so every run does the
//! same work.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ricochet_proto::retry::cache::{Origin, TtlClass};
use ricochet_proto::retry::{
    Cache, CacheSettings, LimitSettings, Limiter, Outbox, Prefix, ProxyAllow, Service, Settings,
    SharedLimits,
};
use ricochet_wire::frame::FrameKey;

const FLOWS: u64 = 64;

fn key_of(flow: u64) -> u64 {
    0x1000_0000_0000_0000 | (flow.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8) | 1
}

/// A 300-byte frame template; callers patch HashKey and SeqNum in place.
fn template() -> Vec<u8> {
    let f = ricochet_bench::tx_frame(300 - 92, 1);
    assert_eq!(f.len(), 300);
    f
}

fn stamp(frame: &mut [u8], hash_key: u64, seq: u64) {
    frame[40..48].copy_from_slice(&hash_key.to_be_bytes());
    frame[48..56].copy_from_slice(&seq.to_be_bytes());
}

/// A cache holding `n` frames, round-robin over FLOWS flows.
fn filled(n: u64, settings: CacheSettings, t0: Instant) -> Cache {
    let mut c = Cache::new(settings, t0);
    let mut f = template();
    for i in 0..n {
        let (flow, seq) = (i % FLOWS, i / FLOWS + 1);
        stamp(&mut f, key_of(flow), seq);
        c.insert(
            t0,
            FrameKey { hash_key: key_of(flow), seq },
            TtlClass::Tx,
            0,
            Bytes::copy_from_slice(&f),
            Origin::Fabric,
        );
    }
    c
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    let t0 = Instant::now();

    // Copy a 300-byte datagram into Bytes and insert it in order, as an
    // ingress worker does; the cache is replaced every 65 536 frames (not
    // timed) so memory stays bounded whatever criterion's iteration count.
    g.bench_function("insert_300B", |b| {
        b.iter_custom(|iters| {
            let mut f = template();
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let chunk = (iters - done).min(65_536);
                let mut cache = Cache::new(CacheSettings::default(), t0);
                let start = Instant::now();
                for i in 0..chunk {
                    let (flow, seq) = (i % FLOWS, i / FLOWS + 1);
                    stamp(&mut f, key_of(flow), seq);
                    let bytes = Bytes::copy_from_slice(&f);
                    black_box(cache.insert(
                        t0,
                        FrameKey { hash_key: key_of(flow), seq },
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

    let n = 100_000u64;
    let full = filled(n, CacheSettings::default(), t0);
    let keys: Vec<FrameKey> = (0..4096u64)
        .map(|i| {
            let j = i.wrapping_mul(2_654_435_761) % n;
            FrameKey { hash_key: key_of(j % FLOWS), seq: j / FLOWS + 1 }
        })
        .collect();
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
    let mut at_bound = filled(65_536, bound, t0);
    let mut f = template();
    let mut next = 65_536u64;
    g.bench_function("insert_evicting_300B", |b| {
        b.iter(|| {
            let (flow, seq) = (next % FLOWS, next / FLOWS + 1);
            next += 1;
            stamp(&mut f, key_of(flow), seq);
            let bytes = Bytes::copy_from_slice(&f);
            at_bound.insert(
                t0,
                FrameKey { hash_key: key_of(flow), seq },
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
    let open = LimitSettings {
        ip_rate: 1e9,
        ip_burst: 1_000_000,
        sequence_max: u32::MAX,
        chain_max: u32::MAX,
        group_rate: 1e9,
        group_burst: 1_000_000,
        ..LimitSettings::default()
    };
    let mut l = Limiter::new(&open, t0);
    let mut k = 0u64;
    g.bench_function("admit_all_tiers", |b| {
        b.iter(|| {
            k += 1;
            let now = t0 + Duration::from_nanos(k * 100);
            let ip = ips[(k & 1023) as usize];
            let ok = l.check_before_lookup(now, ip, key_of(k & 63), k).is_ok();
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
            let ok = l.check_before_lookup(now, ip, key_of(k & 63), k).is_ok();
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
    let src = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
    let settings = Settings {
        unicast_retransmit: true,
        // The source may proxy, so its unicast copies are sent (as on a
        // real upstream): the benchmark measures the full answer.
        proxy_allow: ProxyAllow::new([Prefix::host(src.ip())]),
        limits: LimitSettings {
            ip_rate: 1e9,
            ip_burst: 1_000_000,
            sequence_max: u32::MAX,
            chain_max: u32::MAX,
            group_rate: 1e9,
            group_burst: 1_000_000,
            ..LimitSettings::default()
        },
        ..Settings::default()
    };
    let mut s = Service::new(settings, t0);
    let mut f = template();
    for seq in 1..=4096u64 {
        stamp(&mut f, key_of(0), seq);
        s.on_frame(t0, Bytes::copy_from_slice(&f), Some(0)).unwrap();
    }
    let nacks: Vec<[u8; 64]> = (1..=4096u64)
        .map(|seq| {
            let mut n = ricochet_bench::nack(seq);
            n[8..16].copy_from_slice(&key_of(0).to_be_bytes());
            n
        })
        .collect();
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
