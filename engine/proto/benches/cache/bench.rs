//! The retry cache alone (ricochet-proto): what a cached frame costs in
//! memory beyond its bytes, and the insert and lookup hot paths.
//!
//! Before the criterion groups run, `main` fills caches with 100 000 frames
//! of 200 and 1 400 bytes over 1 and 1 000 flows and prints, per frame
//! beyond its own bytes: the heap bytes requested (a counting global
//! allocator), the same rounded to glibc's chunks (8-byte header, 16-byte
//! granules, 32-byte minimum; page-rounded above the mmap threshold), and
//! the growth of VmRSS. Frames are handed to the cache the way a worker
//! receives them: copied once into a fresh `Bytes` (`bytes` rows) and, where
//! the cache can take the receive buffer itself, as a slice (`slice` rows).
//! `RICOCHET_BENCH_MEMORY_ONLY=1` stops after the table.
//!
//! The criterion benches cover what only the segment design has: the
//! one-copy insert (`cache/insert_slice_300B`, 1 024 in-order frames over 64
//! flows into a fresh cache per batch) and a 16-frame range read through one
//! flow view (`cache/range_16`). The classic `cache/*` and `service/*`
//! figures are `bench/benches/engine.rs`'s.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use ricochet_proto::retry::cache::{Origin, TtlClass};
use ricochet_proto::retry::{Cache, CacheSettings};
use ricochet_wire::frame::FrameKey;

/// Counts live heap bytes, as requested and as glibc would round them.
struct Counting;

static REQUESTED: AtomicI64 = AtomicI64::new(0);
static CHUNKED: AtomicI64 = AtomicI64::new(0);

/// What glibc's malloc really takes for a request of `n` bytes.
fn chunk(n: usize) -> i64 {
    if n >= 128 << 10 {
        ((n + 16 + 4095) & !4095) as i64
    } else {
        ((n + 8 + 15) & !15).max(32) as i64
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        REQUESTED.fetch_add(l.size() as i64, Relaxed);
        CHUNKED.fetch_add(chunk(l.size()), Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        REQUESTED.fetch_sub(l.size() as i64, Relaxed);
        CHUNKED.fetch_sub(chunk(l.size()), Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        REQUESTED.fetch_add(new as i64 - l.size() as i64, Relaxed);
        CHUNKED.fetch_add(chunk(new) - chunk(l.size()), Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const FLOWS: u64 = 64;

fn key_of(flow: u64) -> u64 {
    0x1000_0000_0000_0000 | (flow.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8) | 1
}

fn stamp(frame: &mut [u8], hash_key: u64, seq: u64) {
    frame[40..48].copy_from_slice(&hash_key.to_be_bytes());
    frame[48..56].copy_from_slice(&seq.to_be_bytes());
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident bytes per cached frame beyond its bytes, three ways; each case
/// runs in a fresh process, so VmRSS is not blurred by memory an earlier
/// case freed.
fn memory() {
    if let Ok(case) = std::env::var("RICOCHET_BENCH_MEMORY_CASE") {
        let v: Vec<u64> = case.split(',').filter_map(|x| x.parse().ok()).collect();
        memory_case(v[0] as usize, v[1], v[2] == 1);
        std::process::exit(0);
    }
    println!("resident bytes per cached frame beyond its own bytes (100 000 frames)");
    println!("| frame | flows | handed over | requested | glibc chunks | VmRSS |");
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("own path");
    for size in [200usize, 1400] {
        for flows in [1u64, 1000] {
            for slice in [0, 1] {
                let out = std::process::Command::new(&exe)
                    .env("RICOCHET_BENCH_MEMORY_CASE", format!("{size},{flows},{slice}"))
                    .output()
                    .expect("runs itself");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
    }
    println!();
}

fn memory_case(size: usize, flows: u64, slice: bool) {
    let n = 100_000u64;
    let settings = CacheSettings {
        max_per_flow: (n / flows) as usize + 1,
        max_flows: flows as usize + 1,
        ..CacheSettings::default()
    };
    let t0 = Instant::now();
    let mut f = vec![0xA5; size];
    let (req0, chunk0, rss0) = (REQUESTED.load(Relaxed), CHUNKED.load(Relaxed), rss_kib());
    let mut c = Cache::new(settings, t0);
    for i in 0..n {
        let (flow, seq) = (i % flows, i / flows + 1);
        stamp(&mut f, key_of(flow), seq);
        let key = FrameKey { hash_key: key_of(flow), seq };
        if slice {
            c.insert(t0, key, TtlClass::Tx, 0, &f[..], Origin::Fabric);
        } else {
            c.insert(t0, key, TtlClass::Tx, 0, Bytes::copy_from_slice(&f), Origin::Fabric);
        }
    }
    assert_eq!(c.len() as u64, n);
    let per = |d: i64| d as f64 / n as f64 - size as f64;
    println!(
        "| {size} B | {flows} | {} | {:.1} B | {:.1} B | {:.1} B |",
        if slice { "slice" } else { "bytes" },
        per(REQUESTED.load(Relaxed) - req0),
        per(CHUNKED.load(Relaxed) - chunk0),
        per((rss_kib() - rss0) * 1024),
    );
    black_box(&c);
}

fn cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    let t0 = Instant::now();
    let datagrams: Vec<(FrameKey, Vec<u8>)> = (0..1024u64)
        .map(|i| {
            let key = FrameKey { hash_key: key_of(i % FLOWS), seq: i / FLOWS + 1 };
            let mut f = vec![0xA5; 300];
            stamp(&mut f, key.hash_key, key.seq);
            (key, f)
        })
        .collect();
    g.throughput(Throughput::Elements(datagrams.len() as u64));
    g.bench_function("insert_slice_300B", |b| {
        b.iter_batched_ref(
            || Cache::new(CacheSettings::default(), t0),
            |cache| {
                for (key, f) in &datagrams {
                    black_box(cache.insert(t0, *key, TtlClass::Tx, 0, &f[..], Origin::Fabric));
                }
            },
            BatchSize::SmallInput,
        )
    });

    // 100 000 frames; a range NACK's worth of them read through one view.
    let mut full = Cache::new(CacheSettings::default(), t0);
    let mut f = vec![0xA5; 300];
    let n = 100_000u64;
    for i in 0..n {
        let key = FrameKey { hash_key: key_of(i % FLOWS), seq: i / FLOWS + 1 };
        stamp(&mut f, key.hash_key, key.seq);
        full.insert(t0, key, TtlClass::Tx, 0, &f[..], Origin::Fabric);
    }
    let mut i = 0u64;
    g.throughput(Throughput::Elements(16));
    g.bench_function("range_16", |b| {
        b.iter(|| {
            i = i.wrapping_add(2_654_435_761) % (n - 16 * FLOWS);
            let view = full.view(black_box(key_of(i % FLOWS)), t0).expect("flow held");
            let start = i / FLOWS + 1;
            view.range(start, start + 15).map(|(_, h)| h.frame.len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, cache);

fn main() {
    memory();
    if std::env::var_os("RICOCHET_BENCH_MEMORY_ONLY").is_some() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
