//! `publish`: act as the fabric's shard-proxy — stamped BRC-124 frames on
//! the data groups (the IPv4 lab mapping or BRC-129 IPv6 groups) at a
//! paced rate or as fast as sendmmsg goes.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::Socket;

use crate::metrics::{self, MetricsUrl};
use crate::net::{Batch, GroupArgs, Groups, UdpCounters};
use crate::out::{self, Clock, Common, Progress, Rate, row};
use crate::pace::Schedule;
use crate::proc;
use crate::rng::Rng;
use crate::source::{Class, FlowSet, Made, Mix, PayloadDist, payload_pool};

/// `publish` options.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Data port the engine listens on (its --listen-port).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Frames per second (e.g. 50000, 50k), or max.
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// Transaction flows (sender, shard group, SubtreeID); block and anchor
    /// flows are added when the mix asks for them.
    #[arg(long, default_value_t = 16)]
    pub flows: usize,
    /// Frame version mix: tx=90,fragment=2,block=4,anchor=2,legacy=2.
    #[arg(long, default_value = "tx")]
    pub mix: Mix,
    /// Payload size: N, fixed:N, uniform:LO-HI or txlike.
    #[arg(long, default_value = "300")]
    pub payload: PayloadDist,
    /// Shard bits of the data groups (the engine's --shard-bits).
    #[arg(long, default_value_t = 2)]
    pub shard_bits: u8,
    /// Frames per sendmmsg.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// The endpoint's Prometheus metrics (`http://HOST:PORT/metrics`, or
    /// `HOST:PORT`): report frames cached and lost.
    #[arg(long = "metrics", alias = "metrics-addr", value_name = "URL")]
    pub metrics: Option<MetricsUrl>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub groups: GroupArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// One interval line.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PublishInterval {
    /// Seconds since start.
    pub t: f64,
    /// Frames per second sent in the interval.
    pub sent_rate: f64,
    /// Frames per second the engine cached in the interval (with --metrics-addr).
    pub cached_rate: Option<f64>,
}

/// `publish` results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PublishResult {
    /// Target rate (None = max).
    pub rate_target: Option<f64>,
    /// Seconds spent sending.
    pub duration_s: f64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Frames of cacheable classes sent (all but legacy).
    pub cacheable_sent: u64,
    /// Frames per second achieved.
    pub send_rate: f64,
    /// Frames sent per class.
    pub by_class: BTreeMap<String, u64>,
    /// Failed sends.
    pub send_errors: u64,
    /// Frames the engine cached during the run (with --metrics-addr).
    pub engine_cached: Option<u64>,
    /// `engine_cached / duration_s`.
    pub engine_cached_rate: Option<f64>,
    /// Cacheable frames sent but not cached.
    pub lost: Option<u64>,
    /// Engine counter deltas.
    pub engine: BTreeMap<String, f64>,
    /// Machine-wide UDP counter deltas (RcvbufErrors = drops at full sockets).
    pub udp: UdpCounters,
    /// Interval lines.
    pub intervals: Vec<PublishInterval>,
}

/// A proxy-like frame source sending batches with sendmmsg.
#[derive(Debug)]
pub struct Publisher {
    sock: Socket,
    groups: Groups,
    port: u16,
    batch: Batch,
    /// The flows and their last SeqNums.
    pub flows: FlowSet,
    rng: Rng,
    dist: PayloadDist,
    pool: Vec<u8>,
    /// Frames sent.
    pub sent: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Cacheable frames sent.
    pub cacheable: u64,
    /// Frames sent per class (index = `Class as usize`).
    pub by_class: [u64; 5],
    /// Failed sends.
    pub errors: u64,
}

impl Publisher {
    /// A publisher of `flows` to `groups` on `port`.
    pub fn new(
        groups: Groups,
        port: u16,
        flows: FlowSet,
        dist: PayloadDist,
        seed: u64,
        batch: usize,
    ) -> std::io::Result<Self> {
        Ok(Publisher {
            sock: groups.sender(false)?,
            groups,
            port,
            batch: Batch::new(batch.max(1), FlowSet::max_frame(&dist)),
            flows,
            rng: Rng::stream(seed, 0x9AB),
            pool: payload_pool(&dist, seed),
            dist,
            sent: 0,
            bytes: 0,
            cacheable: 0,
            by_class: [0; 5],
            errors: 0,
        })
    }

    /// Makes and sends up to `n` frames (at most one batch); returns how
    /// many went. `on_made` sees each frame before it is sent.
    pub fn send_with(&mut self, n: usize, mut on_made: impl FnMut(&Made, &[u8])) -> usize {
        let n = n.min(self.batch.capacity());
        for _ in 0..n {
            let buf = self.batch.next_buf();
            let m = self.flows.make(&mut self.rng, &self.dist, &self.pool, buf);
            on_made(&m, &buf[..m.len]);
            self.bytes += m.len as u64;
            self.by_class[m.class as usize] += 1;
            self.cacheable += u64::from(m.class.cached());
            self.batch.push(m.len, self.groups.addr(m.group, self.port));
        }
        match self.batch.send(self.sock.as_raw_fd()) {
            Ok(k) => {
                self.errors += (n - k) as u64;
                self.sent += k as u64;
                k
            }
            Err(_) => {
                self.errors += n as u64;
                0
            }
        }
    }

    /// Makes and sends up to `n` frames.
    pub fn send(&mut self, n: usize) -> usize {
        self.send_with(n, |_, _| {})
    }

    /// Every flow's (HashKey, last SeqNum sent).
    pub fn tails(&self) -> Vec<(u64, u64)> {
        self.flows
            .flows
            .iter()
            .filter(|f| f.last_seq > 0)
            .map(|f| (f.hash_key, f.last_seq))
            .collect()
    }
}

/// Sleeps or spins until `wait_ns` has passed, cheaply: sleeps for long
/// waits, yields for short ones.
pub fn pause(wait_ns: u64) {
    if wait_ns > 300_000 {
        std::thread::sleep(Duration::from_nanos(wait_ns - 200_000));
    } else if wait_ns > 20_000 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Runs `publish`.
pub fn run(a: PublishArgs) -> Result<PublishResult, String> {
    a.common.pin()?;
    let groups = a.groups.resolve(None)?;
    let flows = FlowSet::new(a.flows, a.mix, a.shard_bits, a.common.seed);
    let mut p = Publisher::new(groups, a.port, flows, a.payload, a.common.seed, a.batch)
        .map_err(|e| format!("a sender for {}: {e}", groups.addr(0, a.port)))?;
    let before = a.metrics.as_ref().map(MetricsUrl::scrape);
    let udp0 = UdpCounters::read();
    let duration = a.common.duration.0;
    let dur_ns = duration.as_nanos() as u64;
    let progress = Progress::new(duration, a.common.quiet);
    let clock = Clock::default();
    let sched = a.rate.pps().map(|r| Schedule::new(0, r));
    let total = sched.map_or(u64::MAX, |s| s.total(dur_ns));
    let iv_ns = a.common.interval.0.as_nanos().max(1) as u64;
    let (mut next_iv, mut iv_sent, mut iv_cached) = (iv_ns, 0u64, before.as_ref().map(cached));
    let mut intervals = vec![];
    let mut now = 0;
    while now < dur_ns && p.sent < total && !proc::stopped() {
        let want = match sched {
            Some(s) => s.due(now).min(total).saturating_sub(p.sent) as usize,
            None => usize::MAX,
        };
        if want == 0 {
            pause(sched.map_or(0, |s| s.wait_for(p.sent, now)).min(next_iv.saturating_sub(now)));
        } else {
            p.send(want);
        }
        now = clock.now_ns();
        if now >= next_iv {
            let secs = iv_ns as f64 / 1e9;
            let sent_rate = (p.sent - iv_sent) as f64 / secs;
            let cached_now = a.metrics.as_ref().map(|m| cached(&m.scrape()));
            let cached_rate = match (cached_now, iv_cached) {
                (Some(c), Some(b)) => Some((c - b) / secs),
                _ => None,
            };
            iv_cached = cached_now;
            iv_sent = p.sent;
            let t = next_iv as f64 / 1e9;
            intervals.push(PublishInterval { t, sent_rate, cached_rate });
            let cached_txt =
                cached_rate.map(|r| format!("  cached {}", out::rate(r))).unwrap_or_default();
            progress.line(&format!("t={t:5.1}s  sent {}{cached_txt}", out::rate(sent_rate)));
            progress.set(Duration::from_nanos(now));
            next_iv += iv_ns;
            now = clock.now_ns();
        }
    }
    let elapsed = clock.now_ns().min(dur_ns.max(1)) as f64 / 1e9;
    progress.finish();
    let mut r = PublishResult {
        rate_target: a.rate.pps(),
        duration_s: elapsed,
        frames_sent: p.sent,
        bytes_sent: p.bytes,
        cacheable_sent: p.cacheable,
        send_rate: p.sent as f64 / elapsed,
        by_class: Class::ALL
            .iter()
            .filter(|&&c| p.by_class[c as usize] > 0)
            .map(|&c| (c.name().to_string(), p.by_class[c as usize]))
            .collect(),
        send_errors: p.errors,
        intervals,
        ..PublishResult::default()
    };
    if let (Some(url), Some(before)) = (&a.metrics, before) {
        // Let the engine catch up with what is queued, then read its count.
        let target = cached(&before) + p.cacheable as f64;
        metrics::wait_for(url, "ricochet_frames_cached_total", target, Duration::from_secs(3));
        let after = url.scrape();
        let got = (cached(&after) - cached(&before)).max(0.0) as u64;
        r.engine_cached = Some(got);
        r.engine_cached_rate = Some(got as f64 / elapsed);
        r.lost = Some(p.cacheable.saturating_sub(got));
        r.engine = metrics::delta(&before, &after);
    }
    r.udp = UdpCounters::read().since(&udp0);
    let mut rows = vec![
        row("frames sent", r.frames_sent),
        row("send rate", out::rate(r.send_rate)),
        row("bytes sent", r.bytes_sent),
        row("send errors", r.send_errors),
        row("kernel receive-buffer drops (machine)", r.udp.rcvbuf_errors),
    ];
    for (c, n) in &r.by_class {
        rows.push(row(&format!("  {c}"), n));
    }
    if let (Some(c), Some(l)) = (r.engine_cached, r.lost) {
        rows.push(row("engine frames cached", c));
        rows.push(row("engine cache rate", out::rate(r.engine_cached_rate.unwrap_or(0.0))));
        rows.push(row("cacheable frames lost", l));
    }
    out::print_table("publish summary", &rows);
    out::maybe_json(&a.common.json, &r)?;
    Ok(r)
}

fn cached(m: &BTreeMap<String, f64>) -> f64 {
    m.get("ricochet_frames_cached_total").copied().unwrap_or(0.0)
}
