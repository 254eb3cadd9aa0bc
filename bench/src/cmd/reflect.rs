//! `reflect` and `sink`: logic-free baselines — the kernel's floor for each
//! workload on this machine.
//!
//! - `reflect` (the fair baseline, `--answer frame-ack`) answers each NACK
//!   with the same datagrams ricochet sends: every frame asked for (to the
//!   NACK's source, or with `--retransmit multicast` to the frame's group
//!   on `--egress-port`), then an ACK per frame; a MISS for a flow it does
//!   not know. It holds no cache: it regenerates the `nack` command's
//!   frame set from the same `--prefill`, `--flows`, `--payload` and
//!   `--seed`, and looks frames up by (HashKey, SeqNum). recvmmsg in,
//!   sendmmsg out; `--gso` sends each same-destination run (a NACK
//!   source's frames, its ACKs, a group's frames) as one UDP GSO message.
//! - `--answer echo` answers every datagram with one 16-byte datagram (an
//!   ACK echoing EndSeq): half the datagrams ricochet sends, so it is only
//!   the kernel's per-datagram figure, not a baseline for the engine.
//! - `sink` joins the data groups and counts what recvmmsg hands it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ricochet_wire::control::{AckFlags, Nack, ResponseKind, ResponseRepr};
use serde::{Deserialize, Serialize};

use crate::cmd::nack::FrameStore;
use crate::net::{self, Batch, GroupArgs, Groups, GsoBatch, UdpCounters};
use crate::out::{self, Clock, Common, Progress, row};
use crate::proc;
use crate::source::PayloadDist;

/// What `reflect` answers a NACK with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Answer {
    /// One 16-byte datagram per datagram received.
    Echo,
    /// The frames asked for, then an ACK per frame (what ricochet sends).
    FrameAck,
}

/// Where retransmitted frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Retransmit {
    /// To the NACK's source.
    Unicast,
    /// To the frame's group on --egress-port.
    Multicast,
}

/// `reflect` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReflectArgs {
    /// UDP port to answer on.
    #[arg(long, default_value_t = 9300)]
    pub port: u16,
    /// Address to answer on (127.0.0.1, ::1, …).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// frame-ack (the frames asked for + an ACK each: ricochet's datagrams)
    /// or echo (one 16-byte datagram: the kernel's per-datagram floor).
    #[arg(long, value_enum, default_value = "frame-ack")]
    pub answer: Answer,
    /// Where frames go: unicast (to the NACK's source) or multicast (to the
    /// frame's group on --egress-port).
    #[arg(long, value_enum, default_value = "unicast")]
    pub retransmit: Retransmit,
    /// Send each same-destination run as one UDP GSO message.
    #[arg(long)]
    pub gso: bool,
    /// Destination port of multicast retransmits (the listeners' data port).
    #[arg(long, default_value_t = 9001)]
    pub egress_port: u16,
    /// Frames of the `nack` command's set (its --prefill).
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
    /// Flows of that set (its --flows).
    #[arg(long, default_value_t = 8)]
    pub flows: usize,
    /// Payload sizes of that set (its --payload).
    #[arg(long, default_value = "300")]
    pub payload: PayloadDist,
    /// Most frames answered per range NACK (ricochet's --max-range).
    #[arg(long, default_value_t = 64)]
    pub max_range: u64,
    /// Datagrams per recvmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub groups: GroupArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `sink` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Data port (the publisher's --port).
    #[arg(long, default_value_t = 9001)]
    pub port: u16,
    /// Group indices to join (default: shard groups 0-3 and the block group).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,65534")]
    pub groups: Vec<u16>,
    /// Datagrams per recvmmsg.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub addressing: GroupArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// What a `reflect` or `sink` run saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerResult {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Datagrams sent (reflect).
    pub replied: u64,
    /// Frames retransmitted (reflect frame-ack).
    #[serde(default)]
    pub frames: u64,
    /// MISSes sent (reflect frame-ack).
    #[serde(default)]
    pub misses: u64,
    /// Sends the kernel refused (each loses the rest of its batch).
    #[serde(default)]
    pub send_errors: u64,
    /// Seconds from the first datagram to the last.
    pub active_s: f64,
    /// `received / active_s`.
    pub rate: f64,
    /// Machine-wide UDP counter deltas.
    pub udp: UdpCounters,
}

fn serve(
    common: &Common,
    sock: &socket2::Socket,
    batch: usize,
    title: &str,
    mut reply: Option<&mut Responder>,
) -> Result<ServerResult, String> {
    common.pin()?;
    net::set_read_timeout(sock, Duration::from_millis(50)).map_err(|e| e.to_string())?;
    let mut rx = Batch::new(batch, 65_536);
    let udp0 = UdpCounters::read();
    let duration = common.duration.0;
    let dur_ns = duration.as_nanos() as u64;
    let progress = Progress::new(duration, common.quiet);
    let clock = Clock::default();
    let iv_ns = common.interval.0.as_nanos().max(1) as u64;
    let (mut next_iv, mut iv_rx) = (iv_ns, 0u64);
    let mut r = ServerResult::default();
    let (mut first, mut last) = (None, 0u64);
    loop {
        let now = clock.now_ns();
        if now >= dur_ns || proc::stopped() {
            break;
        }
        let n = rx.recv(sock.as_raw_fd(), true).map_err(|e| e.to_string())?;
        if n > 0 {
            let t = clock.now_ns();
            first.get_or_insert(t);
            last = t;
            r.received += n as u64;
            if let Some(out) = reply.as_deref_mut() {
                for i in 0..n {
                    r.bytes += rx.get(i).0.len() as u64;
                }
                out.answer(&rx, n, sock.as_raw_fd(), &mut r);
            } else {
                for i in 0..n {
                    r.bytes += rx.get(i).0.len() as u64;
                }
            }
        }
        let now = clock.now_ns();
        if now >= next_iv {
            let secs = iv_ns as f64 / 1e9;
            progress.line(&format!(
                "t={:5.1}s  received {}",
                next_iv as f64 / 1e9,
                out::rate((r.received - iv_rx) as f64 / secs)
            ));
            progress.set(Duration::from_nanos(now));
            iv_rx = r.received;
            next_iv += iv_ns;
        }
    }
    progress.finish();
    r.active_s = first.map_or(0.0, |f| (last - f) as f64 / 1e9);
    r.rate = if r.active_s > 0.0 { r.received as f64 / r.active_s } else { 0.0 };
    r.udp = UdpCounters::read().since(&udp0);
    out::print_table(
        title,
        &[
            row("received", r.received),
            row("datagrams sent", r.replied),
            row("frames / MISSes sent", format!("{} / {}", r.frames, r.misses)),
            row("sends refused by the kernel", r.send_errors),
            row("rate (first to last datagram)", out::rate(r.rate)),
            row("kernel receive-buffer drops (machine)", r.udp.rcvbuf_errors),
        ],
    );
    out::maybe_json(&common.json, &r)?;
    Ok(r)
}

/// The reflector's answering half: builds each batch's answers and sends
/// them with one sendmmsg (plain, or as GSO runs).
struct Responder {
    answer: Answer,
    retransmit: Retransmit,
    groups: Groups,
    egress_port: u16,
    max_range: u64,
    store: FrameStore,
    out: Out,
}

/// Answers staged for sending.
struct Out {
    plain: Batch,
    gso: Option<GsoBatch>,
    /// Staged answers for the GSO path: (destination, frames before ACKs,
    /// offset and length in `staged_bytes`), sorted by destination then
    /// kind so each destination's frames and ACKs form runs.
    staged: Vec<(SocketAddr, u8, u32, u32)>,
    staged_bytes: Vec<u8>,
}

/// Counts a send's datagrams, or its failure.
fn sent(res: std::io::Result<usize>, r: &mut ServerResult) {
    match res {
        Ok(n) => r.replied += n as u64,
        Err(_) => r.send_errors += 1,
    }
}

impl Out {
    fn emit(&mut self, bytes: &[u8], dest: SocketAddr, kind: u8, fd: i32, r: &mut ServerResult) {
        if self.gso.is_some() {
            let off = self.staged_bytes.len() as u32;
            self.staged_bytes.extend_from_slice(bytes);
            self.staged.push((dest, kind, off, bytes.len() as u32));
        } else {
            if self.plain.is_full() {
                sent(self.plain.send(fd), r);
            }
            self.plain.push_copy(bytes, dest);
        }
    }

    fn flush(&mut self, fd: i32, r: &mut ServerResult) {
        match self.gso.as_mut() {
            None => {
                if !self.plain.is_empty() {
                    sent(self.plain.send(fd), r);
                }
            }
            Some(g) => {
                self.staged.sort_by_key(|a| (a.0, a.1));
                for &(dest, _, off, len) in &self.staged {
                    let bytes = &self.staged_bytes[off as usize..(off + len) as usize];
                    if !g.push(bytes, dest) {
                        sent(g.send(fd), r);
                        g.push(bytes, dest);
                    }
                }
                if !g.is_empty() {
                    sent(g.send(fd), r);
                }
                self.staged.clear();
                self.staged_bytes.clear();
            }
        }
    }
}

impl Responder {
    fn answer(&mut self, rx: &Batch, n: usize, fd: i32, r: &mut ServerResult) {
        let mut resp = [0u8; 16];
        for i in 0..n {
            let (bytes, from) = rx.get(i);
            if self.answer == Answer::Echo {
                if bytes.len() >= 32 {
                    resp[..6].copy_from_slice(&bytes[..6]);
                    resp[6] = 0x12;
                    resp[7] = 0;
                    resp[8..16].copy_from_slice(&bytes[24..32]);
                } else {
                    resp = [0; 16];
                }
                self.out.emit(&resp, from, 1, fd, r);
                continue;
            }
            let Ok(nack) = Nack::new_checked(bytes) else { continue };
            let (start, end) = (nack.start_seq(), nack.end_seq());
            let end = end.min(start.saturating_add(self.max_range - 1));
            let flow = self.store.flow_of(nack.hash_key());
            let mut found = false;
            if let Some(f) = flow {
                for seq in start..=end {
                    let (Some(frame), Some(g)) =
                        (self.store.get(f, seq), self.store.group_of(f, seq))
                    else {
                        break;
                    };
                    found = true;
                    let (dest, flags) = match self.retransmit {
                        Retransmit::Unicast => (from, AckFlags::UNICAST),
                        Retransmit::Multicast => {
                            (self.groups.addr(g, self.egress_port), AckFlags::MULTICAST)
                        }
                    };
                    self.out.emit(frame, dest, 0, fd, r);
                    r.frames += 1;
                    let ack = ResponseRepr { kind: ResponseKind::Ack(AckFlags(flags)), seq };
                    ack.emit(&mut resp).expect("16-byte response");
                    self.out.emit(&resp, from, 1, fd, r);
                }
            }
            if !found {
                ResponseRepr { kind: ResponseKind::Miss, seq: 0 }
                    .emit(&mut resp)
                    .expect("16-byte response");
                self.out.emit(&resp, from, 1, fd, r);
                r.misses += 1;
            }
        }
        self.out.flush(fd, r);
    }
}

/// Runs `reflect` until --duration or SIGTERM.
pub fn reflect(a: ReflectArgs) -> Result<ServerResult, String> {
    let groups = a.groups.resolve(Some(a.bind))?;
    let sock = net::udp(SocketAddr::new(a.bind, a.port), false).map_err(|e| e.to_string())?;
    if a.retransmit == Retransmit::Multicast {
        match groups {
            Groups::Ipv4Lab => {
                sock.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).map_err(|e| e.to_string())?;
                sock.set_multicast_loop_v4(true).map_err(|e| e.to_string())?;
            }
            Groups::Ipv6 { ifindex, .. } => {
                sock.set_multicast_if_v6(ifindex).map_err(|e| e.to_string())?;
                sock.set_multicast_loop_v6(true).map_err(|e| e.to_string())?;
            }
        }
        // An environment problem fails here, with the fix, not as a run of
        // unanswered NACKs: probe the route with an empty datagram.
        let probe = groups.addr(0, a.egress_port);
        if let Err(e) = sock.send_to(&[], &probe.into()) {
            return Err(format!(
                "cannot multicast to {probe}: {e}. IPv6 multicast on loopback needs \
                 `ip link set lo multicast on` and a route for ff00::/8 on lo \
                 (`ip -6 route add ff00::/8 dev lo table local`); or pass --mc-iface with an \
                 interface that has a multicast route"
            ));
        }
    }
    let store = if a.answer == Answer::FrameAck {
        FrameStore::generate(a.prefill, a.flows, a.payload, a.common.seed)
    } else {
        FrameStore::default()
    };
    let batch = a.batch.max(1);
    let mut out = Responder {
        answer: a.answer,
        retransmit: a.retransmit,
        groups,
        egress_port: a.egress_port,
        max_range: a.max_range.max(1),
        out: Out {
            plain: Batch::new(batch * 2, a.payload.max() + 128),
            gso: a.gso.then(|| GsoBatch::new(batch * 2)),
            staged: Vec::with_capacity(batch * 2),
            staged_bytes: Vec::with_capacity(batch * 2 * (a.payload.max() + 128)),
        },
        store,
    };
    serve(&a.common, &sock, batch, "reflect summary", Some(&mut out))
}

/// Runs `sink` until --duration or SIGTERM.
pub fn sink(a: SinkArgs) -> Result<ServerResult, String> {
    let groups = a.addressing.resolve(None)?;
    let sock = groups.receiver(a.port, &a.groups, false).map_err(|e| e.to_string())?;
    serve(&a.common, &sock, a.batch.max(1), "sink summary", None)
}
