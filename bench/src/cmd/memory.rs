//! `memory`: fills a `ricochet_proto::retry::Cache` with N frames and
//! reports the resident memory each frame costs beyond its own bytes (VmRSS
//! from /proc/self/status before and after).
//!
//! Frames are made the way the engine makes them — `Bytes::copy_from_slice`
//! of the received datagram, one allocation per frame — and inserted in
//! arrival order, round-robin over `--flows` flows with SeqNums from 1, so
//! each flow's log grows like a live one. The figure includes everything
//! the process pays: the cache's slots and FIFO entries, `VecDeque` growth
//! slack, per-flow state and the allocator's own per-allocation overhead.
//! It is reported as measured and again after `malloc_trim(0)` hands freed
//! pages back (the growth of the logs frees their old buffers).

use std::time::Instant;

use ricochet_proto::retry::cache::{Origin, TtlClass};
use ricochet_proto::retry::{Cache, CacheSettings};
use ricochet_wire::frame::FrameKey;
use serde::{Deserialize, Serialize};

use crate::out::{self, row};

/// `memory` options.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Frames to cache.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u64,
    /// Bytes per frame (the whole datagram).
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// Flows the frames are spread over.
    #[arg(long, default_value_t = 64)]
    pub flows: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// `memory` results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryResult {
    /// Frames cached.
    pub frames: u64,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// Flows.
    pub flows: u64,
    /// VmRSS before filling, KiB.
    pub rss_before_kib: u64,
    /// VmRSS after filling, KiB.
    pub rss_after_kib: u64,
    /// VmRSS after malloc_trim(0), KiB.
    pub rss_trimmed_kib: u64,
    /// Resident bytes per frame (after − before) / frames.
    pub rss_per_frame: f64,
    /// ... minus the frame's bytes: the cache's overhead per frame.
    pub overhead_per_frame: f64,
    /// The same after malloc_trim.
    pub overhead_per_frame_trimmed: f64,
    /// What the cache charges its byte budget per frame beyond the frame's
    /// bytes (segment headers and slack, index slots), from its own stats.
    pub charged_overhead: usize,
    /// Nanoseconds per insert (copy + insert).
    pub insert_ns: f64,
}

/// VmRSS of this process in KiB.
pub fn rss_kib() -> u64 {
    crate::soak::rss_kib(std::process::id())
}

/// Runs `memory`.
pub fn run(a: MemoryArgs) -> Result<MemoryResult, String> {
    let flows = a.flows.max(1);
    let per_flow = a.frames.div_ceil(flows) as usize;
    let settings = CacheSettings {
        max_per_flow: per_flow.max(1) + 1,
        max_flows: flows as usize + 1,
        ..CacheSettings::default()
    };
    let start = Instant::now();
    let mut cache = Cache::new(settings, start);
    let mut frame = crate::tx_frame(a.size.saturating_sub(92), 0);
    frame.resize(a.size.max(92), 0xA5);
    let before = rss_kib();
    let t0 = Instant::now();
    for i in 0..a.frames {
        let flow = i % flows;
        let seq = i / flows + 1;
        let hash_key = 0x1000_0000_0000_0000 | (flow.wrapping_mul(0x9E37_79B9) + 1);
        frame[40..48].copy_from_slice(&hash_key.to_be_bytes());
        frame[48..56].copy_from_slice(&seq.to_be_bytes());
        // As a worker does: the receive buffer is copied once, into the
        // cache's segment log.
        cache.insert(
            start,
            FrameKey { hash_key, seq },
            TtlClass::Tx,
            (flow % 4) as u16,
            &frame[..],
            Origin::Fabric,
        );
    }
    let insert_ns = t0.elapsed().as_nanos() as f64 / a.frames.max(1) as f64;
    let after = rss_kib();
    // SAFETY: malloc_trim only returns free heap memory to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
    let trimmed = rss_kib();
    if cache.len() as u64 != a.frames {
        return Err(format!("only {} of {} frames were cached", cache.len(), a.frames));
    }
    let n = a.frames.max(1) as f64;
    let per = |kib: u64| (kib.saturating_sub(before) * 1024) as f64 / n;
    let r = MemoryResult {
        frames: a.frames,
        frame_bytes: frame.len(),
        flows,
        rss_before_kib: before,
        rss_after_kib: after,
        rss_trimmed_kib: trimmed,
        rss_per_frame: per(after),
        overhead_per_frame: per(after) - frame.len() as f64,
        overhead_per_frame_trimmed: per(trimmed) - frame.len() as f64,
        charged_overhead: {
            let st = cache.stats();
            (st.charged_bytes.saturating_sub(st.bytes) / a.frames.max(1)) as usize
        },
        insert_ns,
    };
    std::hint::black_box(&cache);
    out::print_table(
        "memory summary",
        &[
            row("frames cached", r.frames),
            row("bytes per frame", r.frame_bytes),
            row(
                "VmRSS before / after / trimmed (MiB)",
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    before as f64 / 1024.0,
                    after as f64 / 1024.0,
                    trimmed as f64 / 1024.0
                ),
            ),
            row("resident bytes per frame", format!("{:.1}", r.rss_per_frame)),
            row("overhead per frame (beyond its bytes)", format!("{:.1} B", r.overhead_per_frame)),
            row(
                "overhead per frame after malloc_trim",
                format!("{:.1} B", r.overhead_per_frame_trimmed),
            ),
            row("overhead the cache charges itself", format!("{} B", r.charged_overhead)),
            row("copy + insert", format!("{:.0} ns/frame", r.insert_ns)),
        ],
    );
    out::maybe_json(&a.json, &r)?;
    Ok(r)
}
