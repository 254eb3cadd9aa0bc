//! `nack`: many listeners in one process sending NACKs at a target rate
//! (open loop) or as fast as a window of outstanding NACKs allows (`--rate
//! max`, closed loop), measuring NACK → ACK/MISS latency.
//!
//! # Matching responses to NACKs
//! Responses carry no request id: an ACK names a SeqNum, a THROTTLED echoes
//! StartSeq, a MISS names nothing. So each listener socket NACKs exactly one
//! cached flow (ACKs match by SeqNum through a per-SeqNum table) and one
//! flow that is never published (its MISSes come back in order — one flow
//! is steered to one engine core, which answers one socket in order — and
//! match a FIFO). Miss NACKs use SeqNums from 2^62 up so a THROTTLED tells
//! which kind it answers.
//!
//! # Latency
//! Every NACK has an intended send time from the open-loop schedule;
//! latency is `response received − intended`, so a stall (the engine's or
//! our own) is charged to every NACK that should have gone out during it
//! (coordinated-omission correction). The uncorrected figure is kept too.
//! In `--rate max` mode intended = actual send time (closed loop).
//!
//! # Frames
//! With `--prefill N` the command first publishes N frames over `--flows`
//! flows and waits until the engine's /metrics count them cached, and keeps
//! their bytes, so unicast retransmits are compared byte for byte. With
//! `--no-publish` the same frame set is NACKed without being published
//! (for the `reflect` baseline, which regenerates the same frames from the
//! same seed instead of caching them).
//!
//! # Addressing
//! The target may be IPv4 or IPv6; the prefill goes to the groups
//! [`GroupArgs`] name (the `--ipv4-lab` mapping, or BRC-129 IPv6 groups
//! from scope, group id and port), so any endpoint can be driven. With
//! `--retransmit-port` a receiver joins those groups on the endpoint's
//! retransmit port and counts (and byte-checks) multicast retransmits.
//!
//! # Silence
//! A NACK with no answer is not necessarily lost: an endpoint may refuse
//! it for its rate limits without a THROTTLED, or its kernel (or ours) may
//! drop a datagram at a full receive queue. Every listener socket reads
//! `SO_RXQ_OVFL`; with `--metrics` the endpoint's counters are read before
//! and after, and the summary says which of these explain the timeouts.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use ricochet_wire::control::{NackFlags, NackRepr, ResponseKind, ResponseRepr};
use ricochet_wire::frame::peek_key;
use serde::{Deserialize, Serialize};
use socket2::Socket;

use crate::latency::{self, CurvePoint, Percentiles, Recorder};
use crate::metrics::{self, MetricsUrl, Silence};
use crate::net::{self, Batch, GroupArgs, Groups, GsoBatch, UdpCounters};
use crate::out::{self, Clock, Common, Dur, Progress, Rate, row};
use crate::pace::Schedule;
use crate::proc;
use crate::rng::Rng;
use crate::source::{FlowSet, Mix, PayloadDist, payload_pool};

/// Miss NACKs ask for SeqNums from here up.
pub const MISS_SEQ_BASE: u64 = 1 << 62;

/// `nack` options.
#[derive(Debug, Clone, clap::Args)]
pub struct NackArgs {
    /// The endpoint's NACK address: `127.0.0.1:9300` or `[::1]:9300`.
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub target: SocketAddr,
    /// The endpoint's Prometheus metrics (`http://HOST:PORT/metrics`; a bare
    /// `HOST:PORT` works): read before and after the run to wait for the
    /// prefill and to tell rate-limit refusals and kernel drops from timeouts.
    #[arg(long = "metrics", alias = "metrics-addr", value_name = "URL")]
    pub metrics: Option<MetricsUrl>,
    /// The endpoint's data port (the groups' port), for the prefill.
    #[arg(long, default_value_t = 9001)]
    pub listen_port: u16,
    /// Join the groups on this port (the endpoint's retransmit port) and
    /// count the multicast retransmits that arrive, byte for byte.
    #[arg(long)]
    pub retransmit_port: Option<u16>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub groups: GroupArgs,
    /// Frames to publish first (and NACK afterwards).
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Build the prefill frame set but do not publish it (baselines).
    #[arg(long)]
    pub no_publish: bool,
    /// Publish the prefill, wait until the endpoint reports it cached
    /// (with --metrics), and exit without sending a NACK. A later run with
    /// the same --prefill/--flows/--payload/--seed and --no-publish NACKs
    /// those frames, so a harness can time the endpoint's NACK service
    /// apart from its ingest of the prefill.
    #[arg(long, conflicts_with = "no_publish")]
    pub prefill_only: bool,
    /// Prefill publish rate, frames per second.
    #[arg(long, default_value_t = 50_000.0)]
    pub prefill_rate: f64,
    /// Flows the prefill is spread over.
    #[arg(long, default_value_t = 8)]
    pub flows: usize,
    /// Prefill payload size (N, fixed:N, uniform:LO-HI, txlike).
    #[arg(long, default_value = "300")]
    pub payload: PayloadDist,
    /// Listener sockets.
    #[arg(long, default_value_t = 8)]
    pub listeners: usize,
    /// NACKs per second (open loop), or max (closed loop, --window outstanding).
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// Outstanding NACKs in --rate max mode.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Fraction of NACKs for cached frames; the rest ask for a flow never published.
    #[arg(long, default_value_t = 1.0)]
    pub hit_ratio: f64,
    /// Frames per range NACK.
    #[arg(long, default_value_t = 4)]
    pub range: u64,
    /// Fraction of hit NACKs that are ranges (the rest are single).
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// A NACK unanswered this long (from its intended send time) is a timeout.
    #[arg(long, default_value = "1s")]
    pub timeout: Dur,
    /// Write the corrected latency distribution as an HdrHistogram .hgrm file.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// NACKs per sendmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Send each listener's batch of NACKs as one UDP GSO message: the
    /// kernel splits it, so the endpoint still receives one datagram per
    /// NACK, but this process pays one trip through the IP stack per batch.
    /// Lets a closed-loop storm from one core saturate an endpoint.
    #[arg(long)]
    pub gso: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// One interval line.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct NackInterval {
    /// Seconds since start.
    pub t: f64,
    /// NACKs sent per second.
    pub sent_rate: f64,
    /// NACKs answered per second.
    pub done_rate: f64,
    /// Median corrected latency in the interval, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

/// `nack` results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NackResult {
    /// NACK address.
    pub target: String,
    /// "max" (closed loop) or "open-loop".
    pub mode: String,
    /// Target rate (open loop).
    pub rate_target: Option<f64>,
    /// Outstanding NACKs (max mode).
    pub window: usize,
    /// Sending phase, seconds.
    pub duration_s: f64,
    /// Listener sockets.
    pub listeners: usize,
    /// Fraction of hit NACKs asked for.
    pub hit_ratio: f64,
    /// Frames per range NACK / fraction of ranges.
    pub range: u64,
    /// Fraction of hit NACKs that were ranges.
    pub range_ratio: f64,
    /// Frames prefilled.
    pub prefill: u64,
    /// Frames the engine reported cached after the prefill.
    pub prefill_cached: Option<u64>,
    /// NACKs sent.
    pub sent: u64,
    /// ... of which for cached frames.
    pub sent_hits: u64,
    /// ... of which ranges.
    pub sent_ranges: u64,
    /// NACKs answered (ACK for the last frame asked, MISS or THROTTLED).
    pub completed: u64,
    /// NACKs answered per second during the sending phase.
    pub throughput: f64,
    /// NACKs sent per second.
    pub send_rate: f64,
    /// ACK datagrams (one per frame retransmitted).
    pub acks: u64,
    /// MISS datagrams.
    pub misses: u64,
    /// THROTTLED datagrams.
    pub throttled: u64,
    /// NACKs never answered within --timeout.
    pub timeouts: u64,
    /// Responses matching no outstanding NACK (late, or unexpected kind).
    pub unmatched: u64,
    /// Unicast retransmits received.
    pub unicast_frames: u64,
    /// ... whose bytes differed from what was published.
    pub unicast_bad: u64,
    /// Corrected NACK → response latency.
    pub latency: Percentiles,
    /// Uncorrected (actual send → response).
    pub latency_uncorrected: Percentiles,
    /// Corrected percentile curve.
    pub curve: Vec<CurvePoint>,
    /// Engine counter deltas over the sending phase.
    pub engine: BTreeMap<String, f64>,
    /// Multicast retransmits received at the group receiver
    /// (`--retransmit-port`), and how many of them differed from what was
    /// published.
    #[serde(default)]
    pub multicast_frames: Option<u64>,
    /// ... of which with bytes that differ from the published frame.
    #[serde(default)]
    pub multicast_bad: u64,
    /// Datagrams the kernel dropped at this load generator's full sockets
    /// (sum of SO_RXQ_OVFL over its listener and group sockets).
    #[serde(default)]
    pub local_drops: u64,
    /// Rate-limit refusals and kernel drops the endpoint counted (with --metrics).
    #[serde(default)]
    pub silence: Option<Silence>,
    /// Why NACKs went unanswered, when something explains it.
    #[serde(default)]
    pub hint: Option<String>,
    /// Machine-wide UDP counter deltas.
    pub udp: UdpCounters,
    /// Interval lines.
    pub intervals: Vec<NackInterval>,
}

/// Where one stored frame sits: (offset, length, group index).
type Stored = (u32, u32, u16);

/// The prefilled frames, by flow and SeqNum.
#[derive(Debug, Default)]
pub struct FrameStore {
    data: Vec<u8>,
    /// Per flow: (HashKey, per SeqNum-1: (offset, len, group)).
    flows: Vec<(u64, Vec<Stored>)>,
}

impl FrameStore {
    /// Generates `n` frames over `flows` tx flows (2 shard bits).
    pub fn generate(n: u64, flows: usize, dist: PayloadDist, seed: u64) -> Self {
        let mut set = FlowSet::new(flows, Mix::default(), 2, seed);
        let pool = payload_pool(&dist, seed);
        let mut rng = Rng::stream(seed, 0x9AB);
        let mut buf = vec![0u8; FlowSet::max_frame(&dist)];
        let mut store = FrameStore {
            data: Vec::with_capacity(n as usize * (dist.max() + 92)),
            flows: set.flows.iter().map(|f| (f.hash_key, vec![])).collect(),
        };
        for _ in 0..n {
            let m = set.make(&mut rng, &dist, &pool, &mut buf);
            let fi = m.flow.expect("tx frames have flows") as usize;
            let off = store.data.len() as u32;
            store.data.extend_from_slice(&buf[..m.len]);
            store.flows[fi].1.push((off, m.len as u32, m.group));
        }
        store
    }

    /// The frame `seq` (from 1) of flow `f`.
    pub fn get(&self, f: usize, seq: u64) -> Option<&[u8]> {
        let &(off, len, _) = self.flows.get(f)?.1.get(seq.checked_sub(1)? as usize)?;
        Some(&self.data[off as usize..(off + len) as usize])
    }

    /// Frames in flow `f`.
    pub fn frames(&self, f: usize) -> u64 {
        self.flows.get(f).map_or(0, |x| x.1.len() as u64)
    }

    /// Total frames.
    pub fn len(&self) -> u64 {
        self.flows.iter().map(|f| f.1.len() as u64).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The group indices the frames go to.
    pub fn group_indices(&self) -> Vec<u16> {
        let mut g: Vec<u16> = self.flows.iter().flat_map(|f| f.1.iter().map(|x| x.2)).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// The flow whose HashKey is `key` (few flows: a scan).
    pub fn flow_of(&self, key: u64) -> Option<usize> {
        self.flows.iter().position(|f| f.0 == key)
    }

    /// The group index of frame `seq` of flow `f`.
    pub fn group_of(&self, f: usize, seq: u64) -> Option<u16> {
        Some(self.flows.get(f)?.1.get(seq.checked_sub(1)? as usize)?.2)
    }

    /// Publishes every frame to `groups` on `port` at `rate` per second.
    pub fn publish(&self, groups: &Groups, port: u16, rate: f64) -> std::io::Result<u64> {
        let sock = groups.sender(false)?;
        let mut batch = Batch::new(
            64,
            self.flows.iter().flat_map(|f| f.1.iter()).map(|x| x.1 as usize).max().unwrap_or(0),
        );
        let clock = Clock::default();
        let sched = Schedule::new(0, rate);
        let mut sent = 0u64;
        let longest = self.flows.iter().map(|f| f.1.len()).max().unwrap_or(0);
        // Round-robin over flows so each flow's SeqNums arrive in order.
        for i in 0..longest {
            for f in &self.flows {
                let Some(&(off, len, group)) = f.1.get(i) else { continue };
                batch.push_copy(
                    &self.data[off as usize..(off + len) as usize],
                    groups.addr(group, port),
                );
                if batch.is_full() {
                    while sched.due(clock.now_ns()) < sent + batch.len() as u64 {
                        crate::cmd::publish::pause(
                            sched.wait_for(sent + batch.len() as u64, clock.now_ns()),
                        );
                    }
                    sent += batch.send(sock.as_raw_fd())? as u64;
                }
            }
        }
        if !batch.is_empty() {
            sent += batch.send(sock.as_raw_fd())? as u64;
        }
        Ok(sent)
    }
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: u64,
    end: u64,
    intended: u64,
    sent: u64,
    live: bool,
}

struct Listener {
    sock: Socket,
    flow: usize,
    key: u64,
    frames: u64,
    cursor: u64,
    cover: Vec<u32>,
    slots: Vec<Slot>,
    head: u64,
    tail: u64,
    miss_key: u64,
    miss_seq: u64,
    miss_fifo: VecDeque<(u64, u64)>,
    out: NackOut,
    /// The socket's SO_RXQ_OVFL count as last seen.
    ovfl: u32,
}

/// A listener's staged NACKs: one datagram each by sendmmsg, or (`--gso`)
/// one GSO message per batch.
enum NackOut {
    Plain(Batch),
    /// GSO, and the batch size to go back to plain sends with.
    Gso(GsoBatch, usize),
}

impl NackOut {
    fn new(batch: usize, gso: bool) -> Self {
        if gso {
            // NACKs share one size and one destination: a run per
            // GSO_MAX_SEGMENTS of them.
            NackOut::Gso(GsoBatch::new(batch.div_ceil(net::GSO_MAX_SEGMENTS)), batch)
        } else {
            NackOut::Plain(Batch::new(batch, 64))
        }
    }

    /// Stages one NACK; sends what is staged first if there is no room.
    fn push(&mut self, nack: &[u8], dest: SocketAddr, fd: std::os::fd::RawFd) {
        match self {
            NackOut::Plain(b) => {
                if b.is_full() {
                    let _ = b.send(fd);
                }
                b.push_copy(nack, dest);
            }
            NackOut::Gso(g, _) => {
                if !g.push(nack, dest) {
                    self.send(fd);
                    self.push(nack, dest, fd);
                }
            }
        }
    }

    /// Sends what is staged. A failed send is not retried: its NACKs time
    /// out, as lost datagrams would. A GSO send the kernel refuses (a
    /// device that cannot checksum the segments, a route whose MTU they
    /// exceed) turns this listener to plain sends, said once.
    fn send(&mut self, fd: std::os::fd::RawFd) {
        match self {
            NackOut::Plain(b) => {
                let _ = b.send(fd);
            }
            NackOut::Gso(g, batch) => {
                if let Err(e) = g.send(fd)
                    && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE))
                {
                    eprintln!(
                        "warning: --gso: the kernel refused a GSO send ({e}); this listener sends \
                         one datagram per NACK from here on, and that batch's NACKs time out"
                    );
                    *self = NackOut::Plain(Batch::new(*batch, 64));
                }
            }
        }
    }
}

struct Hists {
    rec: Recorder,
    iv: Histogram<u64>,
}

impl Hists {
    fn record(&mut self, intended: u64, sent: u64, now: u64) {
        self.rec.record(intended, sent, now);
        self.iv.saturating_record(now.saturating_sub(intended).max(1));
    }
}

#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    sent_hits: u64,
    sent_ranges: u64,
    completed: u64,
    completed_in_window: u64,
    acks: u64,
    misses: u64,
    throttled: u64,
    timeouts: u64,
    unmatched: u64,
    unicast: u64,
    unicast_bad: u64,
    outstanding: u64,
}

const SLOTS: usize = 1 << 14;

impl Listener {
    fn expire_slot(&mut self, idx: usize, c: &mut Counts) {
        let s = self.slots[idx];
        if s.live {
            self.slots[idx].live = false;
            for seq in s.start..=s.end {
                if self.cover[(seq - 1) as usize] == idx as u32 {
                    self.cover[(seq - 1) as usize] = NONE;
                }
            }
            c.timeouts += 1;
            c.outstanding -= 1;
        }
    }

    fn complete(
        &mut self,
        idx: usize,
        now: u64,
        in_window: bool,
        c: &mut Counts,
        h: Option<&mut Hists>,
    ) {
        let s = self.slots[idx];
        self.slots[idx].live = false;
        c.completed += 1;
        c.completed_in_window += u64::from(in_window);
        c.outstanding -= 1;
        if let Some(h) = h {
            h.record(s.intended, s.sent, now);
        }
    }
}

/// Runs `nack`.
pub fn run(a: NackArgs) -> Result<NackResult, String> {
    if a.prefill_only && a.prefill == 0 {
        return Err("--prefill-only needs --prefill N (the frames to publish)".into());
    }
    a.common.pin()?;
    let groups = a.groups.resolve(Some(a.target.ip()))?;
    let store = FrameStore::generate(a.prefill, a.flows, a.payload, a.common.seed);
    let mut prefill_cached = None;
    if a.prefill > 0 && !a.no_publish {
        let before = a
            .metrics
            .as_ref()
            .map(|m| m.scrape().get("ricochet_frames_cached_total").copied().unwrap_or(0.0));
        if !a.common.quiet {
            println!(
                "prefill: publishing {} frames over {} flows at {}",
                a.prefill,
                a.flows,
                out::rate(a.prefill_rate)
            );
        }
        store
            .publish(&groups, a.listen_port, a.prefill_rate)
            .map_err(|e| format!("prefill to {}: {e}", groups.addr(0, a.listen_port)))?;
        if let (Some(m), Some(b)) = (&a.metrics, before) {
            let got = metrics::wait_for(
                m,
                "ricochet_frames_cached_total",
                b + a.prefill as f64,
                Duration::from_secs(30),
            ) - b;
            prefill_cached = Some(got.max(0.0) as u64);
            if got < a.prefill as f64 {
                eprintln!(
                    "warning: only {got} of {} prefilled frames were cached; NACKs for the rest will MISS",
                    a.prefill
                );
            } else if !a.common.quiet {
                println!("prefill: the engine cached all {} frames", a.prefill);
            }
        }
    }

    if a.prefill_only {
        let r = NackResult {
            target: a.target.to_string(),
            mode: "prefill-only".into(),
            prefill: a.prefill,
            prefill_cached,
            ..NackResult::default()
        };
        if !a.common.quiet {
            let cached =
                prefill_cached.map_or("not checked (no --metrics)".into(), |c| c.to_string());
            println!("prefill only: published {}, cached {cached}", a.prefill);
        }
        out::maybe_json(&a.common.json, &r)?;
        return Ok(r);
    }

    // The group receiver binds the retransmit port before the listener
    // sockets take ephemeral ports, so none of them can be handed that port.
    let mcast = match a.retransmit_port {
        Some(p) => {
            let s = groups
                .receiver(p, &store.group_indices(), true)
                .map_err(|e| format!("joining the groups on port {p}: {e}"))?;
            net::enable_rxq_ovfl(&s).map_err(|e| format!("SO_RXQ_OVFL: {e}"))?;
            Some(s)
        }
        None => None,
    };
    let mut rng = Rng::stream(a.common.seed, 0x4ACC);
    let n = a.listeners.max(1);
    let mut ls: Vec<Listener> = Vec::with_capacity(n);
    for i in 0..n {
        let flow = if store.flows.is_empty() { 0 } else { i % store.flows.len() };
        let frames = store.frames(flow);
        let key = store.flows.get(flow).map_or(0, |f| f.0);
        let sock = net::udp(net::any_for(a.target), true).map_err(|e| e.to_string())?;
        net::enable_rxq_ovfl(&sock).map_err(|e| format!("SO_RXQ_OVFL: {e}"))?;
        ls.push(Listener {
            sock,
            flow,
            key,
            frames,
            cursor: if frames > 0 { rng.below(frames) } else { 0 },
            cover: vec![NONE; frames as usize],
            slots: vec![Slot::default(); SLOTS],
            head: 0,
            tail: 0,
            miss_key: rng.next_u64() | 1,
            miss_seq: MISS_SEQ_BASE,
            miss_fifo: VecDeque::with_capacity(SLOTS),
            out: NackOut::new(a.batch.max(1), a.gso),
            ovfl: 0,
        });
    }
    let mut fds: Vec<libc::pollfd> = ls.iter().map(|l| net::pollfd(&l.sock)).collect();
    if let Some(s) = &mcast {
        // The group receiver is the last pollfd.
        fds.push(net::pollfd(s));
    }
    let (mut mc_frames, mut mc_bad, mut mc_ovfl) = (0u64, 0u64, 0u32);
    let mut rx = Batch::new(64, 65_536).with_rxq_ovfl();

    let before = a.metrics.as_ref().map(MetricsUrl::scrape);
    let udp0 = UdpCounters::read();
    let duration = a.common.duration.0;
    let dur_ns = duration.as_nanos() as u64;
    let timeout_ns = a.timeout.0.as_nanos() as u64;
    let progress = Progress::new(duration, a.common.quiet);
    let clock = Clock::default();
    let sched = a.rate.pps().map(|r| Schedule::new(0, r));
    let total = sched.map_or(u64::MAX, |s| s.total(dur_ns));
    let window = a.window.max(1) as u64;
    let mut h = Hists { rec: Recorder::default(), iv: latency::new_histogram() };
    let mut c = Counts::default();
    let mut cur = 0usize;
    let iv_ns = a.common.interval.0.as_nanos().max(1) as u64;
    let (mut next_iv, mut iv_sent, mut iv_done) = (iv_ns, 0u64, 0u64);
    let mut intervals = vec![];
    let mut next_scan = 0u64;
    let mut nack = [0u8; 64];
    let mut sending = true;
    let mut send_end = dur_ns;
    let mut now = 0u64;
    loop {
        if sending && (now >= dur_ns || c.sent >= total || proc::stopped()) {
            sending = false;
            send_end = now.min(dur_ns).max(1);
        }
        if !sending && (c.outstanding == 0 || now >= send_end + timeout_ns || proc::stopped()) {
            break;
        }
        // ── send what is due ──
        let mut quota = if !sending {
            0
        } else {
            match sched {
                Some(s) => s.due(now).min(total).saturating_sub(c.sent),
                None => window.saturating_sub(c.outstanding),
            }
        };
        let mut rounds = 0;
        while quota > 0 && rounds < n {
            let l = &mut ls[cur];
            let take = quota.min(a.batch.max(1) as u64);
            for _ in 0..take {
                let k = c.sent;
                let intended = sched.map_or(now, |s| s.intended(k));
                let hit = l.frames > 0 && (a.hit_ratio >= 1.0 || rng.chance(a.hit_ratio));
                let repr = if hit {
                    let r = if a.range > 1 && a.range_ratio > 0.0 && rng.chance(a.range_ratio) {
                        a.range.min(l.frames)
                    } else {
                        1
                    };
                    let mut start = l.cursor + 1;
                    if start + r - 1 > l.frames {
                        start = 1;
                    }
                    let end = start + r - 1;
                    l.cursor = end % l.frames;
                    let idx = (l.head as usize) & (SLOTS - 1);
                    if l.slots[idx].live {
                        l.expire_slot(idx, &mut c);
                    }
                    l.slots[idx] = Slot { start, end, intended, sent: now, live: true };
                    for s in start..=end {
                        l.cover[(s - 1) as usize] = idx as u32;
                    }
                    l.head += 1;
                    if l.head - l.tail > SLOTS as u64 {
                        l.tail = l.head - SLOTS as u64;
                    }
                    c.sent_hits += 1;
                    c.sent_ranges += u64::from(r > 1);
                    NackRepr {
                        flags: NackFlags(0),
                        hash_key: l.key,
                        start_seq: start,
                        end_seq: end,
                        subtree_id: [0x20; 32],
                    }
                } else {
                    let seq = l.miss_seq;
                    l.miss_seq += 1;
                    l.miss_fifo.push_back((intended, now));
                    NackRepr {
                        flags: NackFlags(0),
                        hash_key: l.miss_key,
                        start_seq: seq,
                        end_seq: seq,
                        subtree_id: [0x20; 32],
                    }
                };
                repr.emit(&mut nack).expect("64-byte NACK");
                l.out.push(&nack, a.target, l.sock.as_raw_fd());
                c.sent += 1;
                c.outstanding += 1;
            }
            l.out.send(l.sock.as_raw_fd());
            quota -= take;
            cur = (cur + 1) % n;
            rounds += 1;
        }
        now = clock.now_ns();

        // ── receive ──
        let wait = if !sending {
            1_000_000
        } else {
            match sched {
                Some(s) if s.due(now) <= c.sent => s.wait_for(c.sent, now).min(1_000_000),
                Some(_) => 0,
                None if c.outstanding >= window => 1_000_000,
                None => 0,
            }
        };
        let ready = net::poll(&mut fds, wait).map_err(|e| e.to_string())?;
        if ready > 0 {
            for (li, pfd) in fds.iter().enumerate() {
                if pfd.revents & libc::POLLIN == 0 {
                    continue;
                }
                loop {
                    let got = rx.recv(pfd.fd, false).map_err(|e| e.to_string())?;
                    if li == n {
                        // The group receiver: multicast retransmits.
                        for i in 0..got {
                            let bytes = rx.get(i).0;
                            mc_frames += 1;
                            let ok = peek_key(bytes).is_some_and(|k| {
                                store.flow_of(k.hash_key).and_then(|f| store.get(f, k.seq))
                                    == Some(bytes)
                            });
                            mc_bad += u64::from(!ok);
                        }
                        mc_ovfl = mc_ovfl.max(rx.rxq_ovfl().unwrap_or(0));
                        if got < rx.capacity() {
                            break;
                        }
                        continue;
                    }
                    let now = clock.now_ns();
                    let in_window = sending;
                    let l = &mut ls[li];
                    l.ovfl = l.ovfl.max(rx.rxq_ovfl().unwrap_or(0));
                    for i in 0..got {
                        let (bytes, _) = rx.get(i);
                        if bytes.len() == 16 {
                            match ResponseRepr::parse(bytes) {
                                Ok(ResponseRepr { kind: ResponseKind::Ack(_), seq }) => {
                                    c.acks += 1;
                                    let idx = if (1..=l.frames).contains(&seq) {
                                        l.cover[(seq - 1) as usize]
                                    } else {
                                        NONE
                                    };
                                    if idx != NONE
                                        && l.slots[idx as usize].live
                                        && l.slots[idx as usize].end == seq
                                    {
                                        l.complete(
                                            idx as usize,
                                            now,
                                            in_window,
                                            &mut c,
                                            Some(&mut h),
                                        );
                                    } else if seq >= MISS_SEQ_BASE {
                                        // A baseline acking a miss NACK: count it answered.
                                        match l.miss_fifo.pop_front() {
                                            Some((intended, sent)) => {
                                                c.completed += 1;
                                                c.completed_in_window += u64::from(in_window);
                                                c.outstanding -= 1;
                                                h.record(intended, sent, now);
                                            }
                                            None => c.unmatched += 1,
                                        }
                                    } else if idx == NONE || !l.slots[idx as usize].live {
                                        c.unmatched += 1;
                                    }
                                }
                                Ok(ResponseRepr { kind: ResponseKind::Miss, .. }) => {
                                    c.misses += 1;
                                    match l.miss_fifo.pop_front() {
                                        Some((intended, sent)) => {
                                            c.completed += 1;
                                            c.completed_in_window += u64::from(in_window);
                                            c.outstanding -= 1;
                                            h.record(intended, sent, now);
                                        }
                                        None => c.unmatched += 1,
                                    }
                                }
                                Ok(ResponseRepr { kind: ResponseKind::Throttled { .. }, seq }) => {
                                    c.throttled += 1;
                                    if seq >= MISS_SEQ_BASE {
                                        if l.miss_fifo.pop_front().is_some() {
                                            c.completed += 1;
                                            c.outstanding -= 1;
                                        } else {
                                            c.unmatched += 1;
                                        }
                                    } else {
                                        let idx = if (1..=l.frames).contains(&seq) {
                                            l.cover[(seq - 1) as usize]
                                        } else {
                                            NONE
                                        };
                                        if idx != NONE && l.slots[idx as usize].live {
                                            l.complete(idx as usize, now, in_window, &mut c, None);
                                        } else {
                                            c.unmatched += 1;
                                        }
                                    }
                                }
                                Err(_) => c.unmatched += 1,
                            }
                        } else if let Some(k) = peek_key(bytes) {
                            c.unicast += 1;
                            let ok = k.hash_key == l.key && store.get(l.flow, k.seq) == Some(bytes);
                            c.unicast_bad += u64::from(!ok);
                        } else {
                            c.unmatched += 1;
                        }
                    }
                    if got < rx.capacity() {
                        break;
                    }
                }
            }
        }
        now = clock.now_ns();

        // ── timeouts ──
        if now >= next_scan {
            next_scan = now + 1_000_000;
            for l in ls.iter_mut() {
                while l.tail < l.head {
                    let idx = (l.tail as usize) & (SLOTS - 1);
                    let s = l.slots[idx];
                    if s.live && now.saturating_sub(s.intended) <= timeout_ns {
                        break;
                    }
                    if s.live {
                        l.expire_slot(idx, &mut c);
                    }
                    l.tail += 1;
                }
                while let Some(&(intended, _)) = l.miss_fifo.front() {
                    if now.saturating_sub(intended) <= timeout_ns {
                        break;
                    }
                    l.miss_fifo.pop_front();
                    c.timeouts += 1;
                    c.outstanding -= 1;
                }
            }
        }

        // ── interval line ──
        if now >= next_iv && next_iv <= dur_ns {
            let secs = iv_ns as f64 / 1e9;
            let p = Percentiles::of(&h.iv);
            let line = NackInterval {
                t: next_iv as f64 / 1e9,
                sent_rate: (c.sent - iv_sent) as f64 / secs,
                done_rate: (c.completed - iv_done) as f64 / secs,
                p50_us: p.p50_us,
                p99_us: p.p99_us,
            };
            progress.line(&format!(
                "t={:5.1}s  sent {:>9}  answered {:>9}  p50 {:>8.1}us  p99 {:>8.1}us  timeouts {}",
                line.t,
                out::rate(line.sent_rate),
                out::rate(line.done_rate),
                line.p50_us,
                line.p99_us,
                c.timeouts
            ));
            progress.set(Duration::from_nanos(now));
            intervals.push(line);
            h.iv.reset();
            iv_sent = c.sent;
            iv_done = c.completed;
            next_iv += iv_ns;
        }
    }
    progress.finish();
    // Whatever is still outstanding after the drain timed out.
    c.timeouts += c.outstanding;
    let secs = send_end as f64 / 1e9;
    let local_drops = ls.iter().map(|l| u64::from(l.ovfl)).sum::<u64>() + u64::from(mc_ovfl);
    let mut r = NackResult {
        target: a.target.to_string(),
        mode: if sched.is_some() { "open-loop" } else { "max" }.into(),
        rate_target: a.rate.pps(),
        window: a.window,
        duration_s: secs,
        listeners: n,
        hit_ratio: a.hit_ratio,
        range: a.range,
        range_ratio: a.range_ratio,
        prefill: a.prefill,
        prefill_cached,
        sent: c.sent,
        sent_hits: c.sent_hits,
        sent_ranges: c.sent_ranges,
        completed: c.completed,
        throughput: c.completed_in_window as f64 / secs,
        send_rate: c.sent as f64 / secs,
        acks: c.acks,
        misses: c.misses,
        throttled: c.throttled,
        timeouts: c.timeouts,
        unmatched: c.unmatched,
        unicast_frames: c.unicast,
        unicast_bad: c.unicast_bad,
        latency: Percentiles::of(&h.rec.corrected),
        latency_uncorrected: Percentiles::of(&h.rec.uncorrected),
        curve: latency::curve(&h.rec.corrected),
        intervals,
        multicast_frames: mcast.as_ref().map(|_| mc_frames),
        multicast_bad: mc_bad,
        local_drops,
        ..NackResult::default()
    };
    if let (Some(m), Some(b)) = (&a.metrics, before) {
        // The engine publishes its counters every 100 ms tick.
        std::thread::sleep(Duration::from_millis(300));
        r.engine = metrics::delta(&b, &m.scrape());
        r.silence = Some(Silence::of(&r.engine));
    }
    r.hint = r.silence.unwrap_or_default().explain(r.timeouts, r.local_drops, r.silence.is_some());
    r.udp = UdpCounters::read().since(&udp0);
    if let Some(p) = &a.hgrm {
        std::fs::write(p, latency::hgrm(&h.rec.corrected))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    out::print_table(
        "nack summary",
        &[
            row(
                "mode",
                format!(
                    "{} {}",
                    r.mode,
                    r.rate_target.map(out::rate).unwrap_or_else(|| format!("window {}", r.window))
                ),
            ),
            row("NACKs sent", r.sent),
            row("  for cached frames / ranges", format!("{} / {}", r.sent_hits, r.sent_ranges)),
            row("answered", r.completed),
            row("throughput (answered/s)", out::rate(r.throughput)),
            row("ACK / MISS / THROTTLED", format!("{} / {} / {}", r.acks, r.misses, r.throttled)),
            row(
                "unanswered within --timeout",
                match &r.silence {
                    Some(s) if s.rate_limited > 0.0 => format!(
                        "{} (the endpoint rate-limited {:.0}: see below)",
                        r.timeouts, s.rate_limited
                    ),
                    _ => r.timeouts.to_string(),
                },
            ),
            row("unmatched responses", r.unmatched),
            row(
                "unicast retransmits (bad bytes)",
                format!("{} ({})", r.unicast_frames, r.unicast_bad),
            ),
            row(
                "latency p50 / p99 / p99.9 (CO-corrected)",
                format!(
                    "{:.1} / {:.1} / {:.1} us",
                    r.latency.p50_us, r.latency.p99_us, r.latency.p999_us
                ),
            ),
            row(
                "latency p50 / p99 (uncorrected)",
                format!(
                    "{:.1} / {:.1} us",
                    r.latency_uncorrected.p50_us, r.latency_uncorrected.p99_us
                ),
            ),
            row(
                "multicast retransmits at the group receiver (bad bytes)",
                r.multicast_frames.map_or("not counted (no --retransmit-port)".into(), |m| {
                    format!("{m} ({})", r.multicast_bad)
                }),
            ),
            row("answers dropped at our sockets (SO_RXQ_OVFL)", r.local_drops),
            row(
                "endpoint: rate-limited / THROTTLED sent / kernel drops",
                r.silence.map_or("(no --metrics)".into(), |s| {
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        s.rate_limited, s.throttled_sent, s.kernel_drops
                    )
                }),
            ),
            row("kernel receive-buffer drops (machine)", r.udp.rcvbuf_errors),
        ],
    );
    if let Some(h) = &r.hint {
        println!("note: {h}");
    }
    out::maybe_json(&a.common.json, &r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_store_keeps_every_frame_by_flow_and_seq() {
        let s = FrameStore::generate(100, 4, PayloadDist::Fixed(50), 3);
        assert_eq!(s.len(), 100);
        for f in 0..4 {
            for seq in 1..=s.frames(f) {
                let fr = ricochet_wire::frame::Frame::new_checked(s.get(f, seq).unwrap()).unwrap();
                assert_eq!(fr.key().unwrap().seq, seq);
                assert_eq!(fr.key().unwrap().hash_key, s.flows[f].0);
            }
            assert!(s.get(f, 0).is_none());
            assert!(s.get(f, s.frames(f) + 1).is_none());
        }
    }

    /// A receiving socket on loopback (2 s read timeout), its address, and
    /// a socket to send to it from.
    fn loopback_pair() -> (Socket, SocketAddr, Socket) {
        let rx = net::udp(SocketAddr::from(([127, 0, 0, 1], 0)), false).unwrap();
        net::set_read_timeout(&rx, Duration::from_secs(2)).unwrap();
        let to = rx.local_addr().unwrap().as_socket().unwrap();
        let tx = net::udp(net::any_for(to), false).unwrap();
        (rx, to, tx)
    }

    /// Both ways of sending a listener's NACKs hand the endpoint one
    /// 64-byte datagram per NACK, in order, including a batch longer than
    /// one GSO message carries.
    #[test]
    fn nacks_arrive_one_datagram_each_with_or_without_gso() {
        let (rx, to, tx) = loopback_pair();
        let batch = net::GSO_MAX_SEGMENTS + 9;
        for gso in [false, true] {
            let mut out = NackOut::new(batch, gso);
            for i in 0..batch {
                out.push(&[i as u8; 64], to, tx.as_raw_fd());
            }
            out.send(tx.as_raw_fd());
            let mut r = Batch::new(64, 2048);
            let mut got = vec![];
            while got.len() < batch {
                let n = r.recv(rx.as_raw_fd(), true).unwrap();
                assert!(n > 0, "gso={gso}: {} of {batch} NACKs arrived", got.len());
                got.extend((0..n).map(|i| r.get(i).0.to_vec()));
            }
            let want: Vec<Vec<u8>> = (0..batch).map(|i| vec![i as u8; 64]).collect();
            assert_eq!(got, want, "gso={gso}");
            assert_eq!(r.recv(rx.as_raw_fd(), false).unwrap(), 0);
        }
    }

    /// A GSO send the kernel refuses turns the listener to one datagram
    /// per NACK: the refused batch is lost (its NACKs time out, as the
    /// warning says) and every later NACK arrives. The kernel refuses UDP
    /// GSO from a socket that sends without checksums (`SO_NO_CHECK`).
    #[test]
    fn a_refused_gso_send_turns_the_listener_to_plain_sends() {
        let (rx, to, tx) = loopback_pair();
        net::set_int_option(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).expect("SO_NO_CHECK");
        let batch = 8;
        let mut out = NackOut::new(batch, true);
        for i in 0..batch {
            out.push(&[i as u8; 64], to, tx.as_raw_fd());
        }
        out.send(tx.as_raw_fd());
        assert!(matches!(out, NackOut::Plain(_)), "still sending GSO after a refusal");
        let mut r = Batch::new(64, 2048);
        assert_eq!(r.recv(rx.as_raw_fd(), false).unwrap(), 0, "the refused batch arrived");
        for i in 0..batch {
            out.push(&[0x80 | i as u8; 64], to, tx.as_raw_fd());
        }
        out.send(tx.as_raw_fd());
        let mut got = vec![];
        while got.len() < batch {
            let n = r.recv(rx.as_raw_fd(), true).unwrap();
            assert!(n > 0, "{} of {batch} NACKs arrived after the fallback", got.len());
            got.extend((0..n).map(|i| r.get(i).0.to_vec()));
        }
        let want: Vec<Vec<u8>> = (0..batch).map(|i| vec![0x80 | i as u8; 64]).collect();
        assert_eq!(got, want);
    }
}
