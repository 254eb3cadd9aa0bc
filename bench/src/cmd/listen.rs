//! `listen`: act as a listener — join the groups, track gaps per flow, drop
//! a fraction of frames on purpose, NACK the gaps with the reference
//! listener's escalation rules and measure how completely and how fast they
//! are filled.
//!
//! [`ListenCore`] is the I/O driver around the two sans-IO machines
//! ([`GapTracker`] and [`Recovery`]): it owns a data socket (the fabric's
//! frames, subject to the deliberate drop), an optional retransmit socket
//! (the endpoint's multicast retransmits, on its egress port, never
//! dropped), and one fresh ephemeral socket per NACK attempt (as the
//! reference does), on which the endpoint's response and any unicast copy
//! arrive. `lab` reuses it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use ricochet_wire::control::{NackFlags, NackRepr, ResponseRepr};
use ricochet_wire::frame::Frame;
use serde::{Deserialize, Serialize};
use socket2::Socket;

use crate::escalate::{self, AttemptId, Event, Recovery};
use crate::gap::{Arrival, GapTracker};
use crate::latency::{self, CurvePoint, Percentiles};
use crate::net::{self, Batch, GroupArgs, Groups};
use crate::out::{self, Clock, Common, Progress, row};
use crate::proc;
use crate::rng::Rng;

/// A fraction argument: `1%`, `0.01`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction(pub f64);

impl std::str::FromStr for Fraction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let v = match s.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
            None => s.trim().parse::<f64>(),
        }
        .map_err(|_| format!("{s:?}: expected a fraction such as 1% or 0.01"))?;
        if (0.0..=1.0).contains(&v) {
            Ok(Fraction(v))
        } else {
            Err(format!("{s:?}: must be within 0..=100%"))
        }
    }
}

/// `listen` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Data port the fabric publishes to (the engine's --listen-port).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Port the endpoint's multicast retransmits arrive on (its
    /// --egress-port), if different from --port.
    #[arg(long)]
    pub retransmit_port: Option<u16>,
    /// Group indices to join.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,65534")]
    pub groups: Vec<u16>,
    /// Endpoint NACK addresses, in preference order (repeat or
    /// comma-separate): `127.0.0.1:9300`, `[::1]:9300`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9300")]
    pub endpoint: Vec<SocketAddr>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub addressing: GroupArgs,
    /// Fraction of arriving frames to drop on purpose (never a flow's first).
    #[arg(long, default_value = "1%")]
    pub drop: Fraction,
    /// Most NACK attempts in flight.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: usize,
    /// Write the fill-latency distribution as an HdrHistogram .hgrm file.
    #[arg(long)]
    pub hgrm: Option<std::path::PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Where a frame came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The fabric (data port).
    Data,
    /// A multicast retransmit (egress port).
    Retransmit,
    /// A unicast copy on an attempt socket.
    Unicast,
}

/// Counters of the listener beyond the escalation machine's.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenCounts {
    /// Frames that arrived on the data port (dropped ones included).
    pub frames_arrived: u64,
    /// Dropped on purpose.
    pub dropped_on_purpose: u64,
    /// Gaps opened for frames dropped on purpose.
    pub gaps_deliberate: u64,
    /// Gaps opened for frames that never arrived (loss on the way).
    pub gaps_other_loss: u64,
    /// Fills by a multicast retransmit.
    pub filled_by_multicast: u64,
    /// Fills by a unicast copy.
    pub filled_by_unicast: u64,
    /// Fills by a late original.
    pub filled_by_original: u64,
    /// Frames that were neither new nor a gap (duplicates, others' retransmits).
    pub duplicates: u64,
    /// Legacy or malformed datagrams.
    pub ignored: u64,
    /// Flow restarts seen.
    pub restarts: u64,
}

/// What a listener reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ListenReport {
    /// Listener counters.
    pub counts: ListenCounts,
    /// Escalation counters.
    pub recovery: escalate::Stats,
    /// Gaps still open at the end.
    pub open_at_end: u64,
    /// filled / (opened − voided), 1.0 when nothing was missing.
    pub completeness: f64,
    /// Detection → fill latency.
    pub fill_latency: Percentiles,
    /// First NACK → fill latency.
    pub nack_to_fill: Percentiles,
    /// Fill latency curve.
    pub curve: Vec<CurvePoint>,
}

struct AttemptSlot {
    sock: Option<Socket>,
    attempt: Option<AttemptId>,
}

/// The listener's sockets and state machines.
pub struct ListenCore {
    data: Socket,
    retx: Option<Socket>,
    endpoints: Vec<SocketAddr>,
    slots: Vec<AttemptSlot>,
    fds: Vec<libc::pollfd>,
    tracker: GapTracker,
    recovery: Recovery,
    drop_p: f64,
    drop_rng: Rng,
    dropped: HashSet<(u64, u64)>,
    gaps_by_flow: HashMap<u64, u64>,
    rx: Option<Batch>,
    /// Counters.
    pub counts: ListenCounts,
    fill: Histogram<u64>,
    since_nack: Histogram<u64>,
}

impl std::fmt::Debug for ListenCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenCore").field("counts", &self.counts).finish_non_exhaustive()
    }
}

impl ListenCore {
    /// Joins `groups` (indices, addressed as `addressing` says) on `port`
    /// (and `retransmit_port`), NACKing `endpoints`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addressing: Groups,
        port: u16,
        retransmit_port: Option<u16>,
        groups: &[u16],
        endpoints: Vec<SocketAddr>,
        drop_p: f64,
        cfg: escalate::Config,
        seed: u64,
    ) -> std::io::Result<Self> {
        let data = addressing.receiver(port, groups, true)?;
        let retx = match retransmit_port {
            Some(p) if p != port => Some(addressing.receiver(p, groups, true)?),
            _ => None,
        };
        let cfg = escalate::Config { endpoints: endpoints.len().max(1), ..cfg };
        let slots = (0..cfg.max_inflight.max(1))
            .map(|_| AttemptSlot { sock: None, attempt: None })
            .collect();
        Ok(ListenCore {
            data,
            retx,
            endpoints,
            slots,
            fds: Vec::with_capacity(cfg.max_inflight + 2),
            tracker: GapTracker::default(),
            recovery: Recovery::new(cfg, seed ^ 0xE5CA),
            drop_p,
            drop_rng: Rng::stream(seed, 0xD209),
            dropped: HashSet::new(),
            gaps_by_flow: HashMap::new(),
            rx: Some(Batch::new(64, 65_536)),
            counts: ListenCounts::default(),
            fill: latency::new_histogram(),
            since_nack: latency::new_histogram(),
        })
    }

    /// Gaps open now.
    pub fn open_gaps(&self) -> usize {
        self.recovery.open_gaps()
    }

    /// Tells the listener a flow's last SeqNum (a tail probe's finding):
    /// trailing frames never seen become gaps.
    pub fn tail(&mut self, now: u64, hash_key: u64, last_seq: u64) {
        for seq in self.tracker.on_tail(hash_key, last_seq) {
            self.open_gap(now, hash_key, seq);
        }
    }

    /// Gaps opened so far, per flow (HashKey): what a per-flow rate limit
    /// is measured against.
    pub fn gaps_by_flow(&self) -> &HashMap<u64, u64> {
        &self.gaps_by_flow
    }

    fn open_gap(&mut self, now: u64, hash_key: u64, seq: u64) {
        if self.recovery.open(now, hash_key, seq) {
            *self.gaps_by_flow.entry(hash_key).or_insert(0) += 1;
            if self.dropped.remove(&(hash_key, seq)) {
                self.counts.gaps_deliberate += 1;
            } else {
                self.counts.gaps_other_loss += 1;
            }
        }
    }

    fn on_frame(&mut self, now: u64, bytes: &[u8], source: Source) {
        let Some(key) = Frame::new_checked(bytes).ok().and_then(|f| f.key()) else {
            self.counts.ignored += 1;
            return;
        };
        let (k, seq) = (key.hash_key, key.seq);
        if source == Source::Data {
            self.counts.frames_arrived += 1;
            let is_new = self.tracker.highest(k).is_some_and(|h| seq > h);
            if is_new && self.drop_p > 0.0 && self.drop_rng.chance(self.drop_p) {
                self.counts.dropped_on_purpose += 1;
                self.dropped.insert((k, seq));
                return;
            }
        }
        // A pending gap is filled whatever the tracker would say: a
        // retransmit of SeqNum ≤ 100 must not look like a proxy restart.
        if self.recovery.fill(now, k, seq) {
            match source {
                Source::Data => self.counts.filled_by_original += 1,
                Source::Retransmit => self.counts.filled_by_multicast += 1,
                Source::Unicast => self.counts.filled_by_unicast += 1,
            }
            return;
        }
        if source != Source::Data {
            // Someone else's retransmit, or a second copy.
            self.counts.duplicates += 1;
            return;
        }
        match self.tracker.on_frame(k, seq) {
            Arrival::Advanced { gaps } => {
                for s in gaps {
                    self.open_gap(now, k, s);
                }
            }
            Arrival::Old => self.counts.duplicates += 1,
            Arrival::Restarted => {
                self.counts.restarts += 1;
                self.recovery.void_flow(k);
            }
            Arrival::First | Arrival::Rebaselined | Arrival::Untracked => {}
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.recovery.poll_event() {
            match ev {
                Event::Filled { latency_ns, since_nack_ns, .. } => {
                    self.fill.saturating_record(latency_ns.max(1));
                    if let Some(n) = since_nack_ns {
                        self.since_nack.saturating_record(n.max(1));
                    }
                }
                Event::AttemptDone(a) => {
                    if let Some(s) = self.slots.iter_mut().find(|s| s.attempt == Some(a)) {
                        // Close the socket: a late reply to it is stale.
                        s.attempt = None;
                        s.sock = None;
                    }
                }
                Event::Abandoned { .. } | Event::Expired { .. } => {}
            }
        }
    }

    fn transmit(&mut self, now: u64) {
        let mut nack = [0u8; 64];
        while let Some(t) = self.recovery.poll_transmit(now) {
            let Some(slot) = self.slots.iter_mut().find(|s| s.attempt.is_none()) else { break };
            let to = self.endpoints[t.endpoint.min(self.endpoints.len() - 1)];
            let sock = match net::udp(net::any_for(to), true) {
                Ok(s) => s,
                Err(_) => continue, // the attempt times out like a lost NACK
            };
            NackRepr {
                flags: NackFlags(0),
                hash_key: t.hash_key,
                start_seq: t.seq,
                end_seq: t.seq,
                subtree_id: [0; 32],
            }
            .emit(&mut nack)
            .expect("64-byte NACK");
            let _ = sock.send_to(&nack, &to.into());
            slot.sock = Some(sock);
            slot.attempt = Some(t.attempt);
        }
    }

    /// One round: wait up to `max_wait_ns` for input or the next timer,
    /// take in everything that arrived, run timers, send due NACKs.
    pub fn step(&mut self, clock: &Clock, max_wait_ns: u64) -> std::io::Result<()> {
        let mut rx = self.rx.take().unwrap_or_else(|| Batch::new(64, 65_536));
        let mut fds = std::mem::take(&mut self.fds);
        let r = self.step_with(clock, max_wait_ns, &mut rx, &mut fds);
        self.rx = Some(rx);
        self.fds = fds;
        r
    }

    fn step_with(
        &mut self,
        clock: &Clock,
        max_wait_ns: u64,
        rx: &mut Batch,
        fds: &mut Vec<libc::pollfd>,
    ) -> std::io::Result<()> {
        let now = clock.now_ns();
        let wait = self
            .recovery
            .poll_timeout()
            .map_or(max_wait_ns, |t| t.saturating_sub(now).min(max_wait_ns));
        fds.clear();
        fds.push(net::pollfd(&self.data));
        if let Some(r) = &self.retx {
            fds.push(net::pollfd(r));
        }
        let base = fds.len();
        // fds[base + j] belongs to attempt slot slot_of[j].
        let mut slot_of = [usize::MAX; 256];
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(sock) = &s.sock
                && fds.len() - base < slot_of.len()
            {
                slot_of[fds.len() - base] = i;
                fds.push(net::pollfd(sock));
            }
        }
        if net::poll(fds, wait)? > 0 {
            for (fi, pfd) in fds.iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                let source = match fi {
                    0 => Source::Data,
                    f if f < base => Source::Retransmit,
                    _ => Source::Unicast,
                };
                loop {
                    let n = rx.recv(pfd.fd, false)?;
                    let now = clock.now_ns();
                    for i in 0..n {
                        let (bytes, _) = rx.get(i);
                        if source == Source::Unicast && bytes.len() == 16 {
                            let attempt =
                                self.slots.get(slot_of[fi - base]).and_then(|s| s.attempt);
                            match (ResponseRepr::parse(bytes), attempt) {
                                (Ok(resp), Some(a)) => self.recovery.on_response(now, a, resp),
                                _ => self.counts.ignored += 1,
                            }
                        } else {
                            self.on_frame(now, bytes, source);
                        }
                    }
                    if n < rx.capacity() {
                        break;
                    }
                }
            }
        }
        let now = clock.now_ns();
        self.recovery.handle_timeout(now);
        self.drain_events();
        self.transmit(now);
        self.drain_events();
        Ok(())
    }

    /// The escalation counters so far (cheaper than [`ListenCore::report`]).
    pub fn report_stats(&self) -> escalate::Stats {
        self.recovery.stats()
    }

    /// The report so far.
    pub fn report(&self) -> ListenReport {
        let s = self.recovery.stats();
        let denom = s.gaps_opened.saturating_sub(s.voided);
        ListenReport {
            counts: self.counts,
            recovery: s,
            open_at_end: self.recovery.open_gaps() as u64,
            completeness: if denom == 0 { 1.0 } else { s.filled as f64 / denom as f64 },
            fill_latency: Percentiles::of(&self.fill),
            nack_to_fill: Percentiles::of(&self.since_nack),
            curve: latency::curve(&self.fill),
        }
    }

    /// The fill-latency histogram as .hgrm text.
    pub fn hgrm(&self) -> String {
        latency::hgrm(&self.fill)
    }
}

/// Summary rows of a listener report.
pub fn report_rows(r: &ListenReport) -> Vec<(String, String)> {
    let c = &r.counts;
    let s = &r.recovery;
    vec![
        row("frames arrived (data port)", c.frames_arrived),
        row("dropped on purpose", c.dropped_on_purpose),
        row("gaps detected", s.gaps_opened),
        row(
            "  from deliberate drops / other loss",
            format!("{} / {}", c.gaps_deliberate, c.gaps_other_loss),
        ),
        row("gaps filled", s.filled),
        row(
            "  by multicast / unicast / late original",
            format!(
                "{} / {} / {}",
                c.filled_by_multicast, c.filled_by_unicast, c.filled_by_original
            ),
        ),
        row(
            "gaps abandoned / expired / open at end",
            format!("{} / {} / {}", s.abandoned, s.expired, r.open_at_end),
        ),
        row("completeness", format!("{:.3}%", r.completeness * 100.0)),
        row("NACKs sent", s.nacks_sent),
        row(
            "  answered ACK / MISS / THROTTLED",
            format!("{} / {} / {}", s.answered_ack, s.answered_miss, s.answered_throttled),
        ),
        row(
            "  timeout / frame arrived first / cut short / in flight",
            format!("{} / {} / {} / {}", s.timeouts, s.frame_first, s.cut_short, s.in_flight()),
        ),
        row(
            "responses received ACK / MISS / THROTTLED (late ones too)",
            format!("{} / {} / {}", s.acks, s.misses, s.throttled),
        ),
        row(
            "fill latency p50 / p99 / max (from detection)",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                r.fill_latency.p50_us / 1e3,
                r.fill_latency.p99_us / 1e3,
                r.fill_latency.max_us / 1e3
            ),
        ),
        row(
            "fill latency p50 / p99 (from first NACK)",
            format!("{:.2} / {:.2} ms", r.nack_to_fill.p50_us / 1e3, r.nack_to_fill.p99_us / 1e3),
        ),
    ]
}

/// Runs `listen` for --duration.
pub fn run(a: ListenArgs) -> Result<ListenReport, String> {
    a.common.pin()?;
    let cfg = escalate::Config { max_inflight: a.max_inflight, ..escalate::Config::default() };
    let addressing = a.addressing.resolve(a.endpoint.first().map(|e| e.ip()))?;
    let mut core = ListenCore::new(
        addressing,
        a.port,
        a.retransmit_port,
        &a.groups,
        a.endpoint.clone(),
        a.drop.0,
        cfg,
        a.common.seed,
    )
    .map_err(|e| e.to_string())?;
    let duration = a.common.duration.0;
    let progress = Progress::new(duration, a.common.quiet);
    let clock = Clock::default();
    let iv_ns = a.common.interval.0.as_nanos().max(1) as u64;
    let mut next_iv = iv_ns;
    while clock.now_ns() < duration.as_nanos() as u64 && !proc::stopped() {
        core.step(&clock, 5_000_000).map_err(|e| e.to_string())?;
        if clock.now_ns() >= next_iv {
            let r = core.report();
            progress.line(&format!(
                "t={:5.1}s  frames {}  dropped {}  gaps {}  filled {}  open {}",
                next_iv as f64 / 1e9,
                r.counts.frames_arrived,
                r.counts.dropped_on_purpose,
                r.recovery.gaps_opened,
                r.recovery.filled,
                r.open_at_end
            ));
            progress.set(Duration::from_nanos(clock.now_ns()));
            next_iv += iv_ns;
        }
    }
    progress.finish();
    let r = core.report();
    out::print_table("listen summary", &report_rows(&r));
    if let Some(p) = &a.hgrm {
        std::fs::write(p, core.hgrm()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    out::maybe_json(&a.common.json, &r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_parse() {
        assert_eq!("1%".parse::<Fraction>().unwrap(), Fraction(0.01));
        assert_eq!("0.5".parse::<Fraction>().unwrap(), Fraction(0.5));
        assert!("150%".parse::<Fraction>().is_err());
    }
}
