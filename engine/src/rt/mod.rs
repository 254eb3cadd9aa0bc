//! The runtime: the only code that touches sockets, threads and clocks on
//! the packet path.
//!
//! # Dependencies
//! `rt` sits just above the protocol cores (`ricochet-proto`,
//! `ricochet-wire`) and the crate's leaf modules (`crate::metrics`,
//! `crate::addr`, `crate::wallclock`); it names none of the drivers above it (`store`,
//! `cluster`, `discovery`, `admin`, `otlp`). What crosses between a worker
//! and the control thread is typed here, and the drivers use these types:
//! [`Control`] and [`ControlEvent`] (control thread ↔ workers),
//! [`store_queue`] (a worker's requests to the shared store and its
//! answers), [`nack_trace`] (sampled-NACK records for the OTLP exporter),
//! the DHT and gossip hand-offs ([`DhtRequest`], [`GossipInbound`]) and the
//! statistics snapshots admin reads ([`WorkerSnapshot`], [`Shared`]).
//!
//! # Process model
//! One worker thread per configured CPU, pinned to it. Worker `i` owns:
//! - an ingress socket joined to its share of the multicast groups
//!   (groups are dealt round-robin; MULTICAST_ALL is off, so each datagram
//!   reaches exactly one worker); under `--source-mode ssm` the joins are
//!   `(S,G)` only, made and moved by the control thread ([`ssm`]);
//! - member `i` of the SO_REUSEPORT NACK group — a classic-BPF program steers
//!   each NACK to `owner(HashKey)`, so NACKs arrive where their flow lives;
//! - its shard of the retry state ([`crate::retry::Service`]);
//! - with the DHT on, member `i` of the SO_REUSEPORT group on
//!   `--dht-port` and its own DHT node and store shard (`dht_shard`): a
//!   classic-BPF program steers each DHT datagram to the worker owning its
//!   key, or, for a response, to the worker whose node asked;
//! - with a cluster (`--cluster-key-file`), member `i` of the
//!   SO_REUSEPORT group on `--gossip-port` and shard `i` of the rumor-dedup
//!   LRU (`gossip_shard`): the worker owning a rumor's id ACKs every copy
//!   and absorbs duplicates; the rest of gossip runs on the control thread,
//!   whose socket is the group's last member;
//! - an inbox (bounded channel + eventfd) through which other workers hand
//!   it frames of flows it owns: a frame crosses at most one thread, and is
//!   copied once, from the receive buffer into the `Bytes` the cache keeps.
//!
//! No locks on the packet path: the only shared state a worker touches per
//! packet is its peers' inboxes. Statistics are published to the control
//! thread every tick (100 ms) through a per-worker mutex nobody else holds
//! on the packet path.
//!
//! Backends: `uring` (multishot RecvMsg on provided-buffer rings, batched
//! SendMsg) and `epoll` (recvmmsg/sendmmsg) share every line of packet logic
//! (`worker::Core`); `--backend auto` probes io_uring and falls back to
//! epoll with the reason logged.
//!
//! Both answer a batch of NACKs (an io_uring round, a recvmmsg batch) with
//! a lookahead: before answering a NACK the worker asks the CPU to fetch
//! what the answer to the NACK 8 datagrams further on will read first —
//! its sequence-tier line in the shared limiter tables and the bytes of
//! the frame it asks for (`Service::nack_footprint`, `sys::prefetch`,
//! `worker::fetch_ahead`). Under a storm those are cache misses (random
//! lines of a 512 KiB table at the default 65 536 entries, frames spread
//! over the whole cache); taken one NACK at a time they queue, fetched
//! ahead they overlap. perf/prefetch-2026-12-07.md has the measurements.
//!
//! # What ingress accepts
//! The cache holds what the fabric multicast, so the data port takes a
//! datagram only if it arrived *as multicast to one of the configured
//! groups*: its IP destination (`ipi_addr` of IP_PKTINFO, `ipi6_addr` of
//! IPV6_PKTINFO — the header's destination, not the local address) must be
//! a group address whose index is in `--groups`. Ingress sockets are bound
//! to the wildcard, since one socket takes several groups, so the kernel
//! also hands them unicast (and broadcast) sent to the data port; binding
//! cannot exclude it. Without this check one forged unicast datagram from
//! anyone who can reach the port would be cached and served as if the
//! publisher had sent it, bypassing whatever guards the multicast fabric
//! (scoping, TTL, IGMP/MLD snooping, source filters). Everything else —
//! unicast, broadcast, an unconfigured group, a datagram without packet
//! info — is dropped before it is parsed or copied, counted in
//! `ingress_datagrams` and under [`NOT_MULTICAST`] in `dropped`
//! (`ricochet_dropped_total{reason="not_multicast"}`). The check is a walk
//! over the receive's fixed control area (`sys::pktinfo_destination`),
//! an address-to-index mapping and a binary search: no allocation, no
//! syscall. Both backends read the destination the same way (recvmmsg's
//! `msg_control`; the control area of io_uring's `io_uring_recvmsg_out`)
//! and hand it to `worker::Core::on_ingress`, which decides.
//!
//! On an any-source (ASM) fabric a datagram that passes this check can
//! still come from any host that reaches the group. `--ingress-allow`
//! lists the publishers' addresses or networks; a datagram from any other
//! source (or without one) is dropped the same way, before parsing, under
//! [`SOURCE_NOT_ALLOWED`] (`ricochet_dropped_total{reason="source_not_allowed"}`):
//! a linear scan of the list, no allocation. Under SSM the kernel already
//! filters by source; the list applies there too.
//!
//! # Sending: GSO and the reply's source address
//! Runs of transmits to one destination leave as one UDP GSO send (`gso`
//! decides which); a GSO send the kernel refuses (`EIO`, or
//! `EMSGSIZE`/`EINVAL` for a segment over the route's MTU) is sent again
//! one datagram at a time and narrows what the worker merges from then on.
//! With the NACK socket bound to a wildcard address, every NACK's local
//! address is read from its packet info (`ipi_spec_dst` / `ipi6_addr`) and
//! the requester's unicast replies (ACK, MISS, THROTTLED, unicast
//! retransmits) carry it as `IP_PKTINFO` / `IPV6_PKTINFO`, so on a
//! multihomed host they leave from the address the NACK was sent to
//! (`reply_source`).
//!
//! # Oversized datagrams
//! A datagram longer than its socket reads whole is dropped as
//! `too_long` (`ricochet_wire::Error::TooLong`) on both backends, whether
//! the kernel truncated it into a receive slot (MSG_TRUNC) or it fit and is
//! longer than its protocol allows: [`MAX_NACK_DATAGRAM`] on the NACK
//! socket, `ricochet_wire::frame::MAX_DATAGRAM` on the data port. On the
//! data port the destination is checked first (an oversized unicast is
//! `not_multicast`); an oversized multicast also counts as
//! `fabric_malformed`. Both backends' receive slots hold any UDP datagram
//! on the data port, so there "too long" means longer than a frame may
//! be; the NACK socket's io_uring buffers are smaller, hence its limit.

mod batch_wait;
pub mod beacon;
mod dht_shard;
mod epoll;
mod event_log;
mod gossip_shard;
mod gso;
pub mod nack_trace;
mod reply_source;
mod socket;
pub mod ssm;
pub mod store_queue;
pub mod sys;
mod uring;
mod worker;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use ricochet_wire::group::{Scope, SourceMode};

use crate::retry::{self, Stats};

#[cfg(test)]
pub(crate) use dht_shard::Shard as DhtShard;
pub use dht_shard::{
    DhtOptions, DhtReply, DhtRequest, DhtSnapshot, DhtWhat, EXPORTED_PEERS, LISTED_RECORDS,
    PeerView, RecordView, VIEWS_EVERY, dht_owner, key_owner,
};
pub use gossip_shard::{GossipInbound, GossipOptions, GossipSnapshot, INBOUND_DEPTH};

/// Which packet backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring where available, else epoll (the reason is logged).
    Auto,
    /// io_uring only; fail at startup if unavailable.
    Uring,
    /// epoll with recvmmsg/sendmmsg.
    Epoll,
}

/// How group indices map to addresses.
#[derive(Debug, Clone)]
pub enum Addressing {
    /// `--ipv4-lab`: 239.11.x.y on an IPv4 interface (127.0.0.1 in the lab).
    Ipv4Lab {
        /// Interface address used to join and send.
        interface: Ipv4Addr,
    },
    /// BRC-129 IPv6 groups.
    Ipv6 {
        /// ASM or SSM.
        mode: SourceMode,
        /// Scope.
        scope: Scope,
        /// Group id.
        group_id: u16,
        /// Interface index to join and send on.
        interface_index: u32,
    },
}

/// An interface multicast retransmits leave on (`EGRESS_IFACE`): an IPv4
/// interface address in the lab, an interface index otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// `--ipv4-lab`: the interface's IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 interface index.
    V6(u32),
}

/// Everything the runtime needs, already validated (see `config`).
#[derive(Debug, Clone)]
pub struct Options {
    /// CPUs to run one worker each on, in worker order.
    pub cpus: Vec<usize>,
    /// Packet backend.
    pub backend: Backend,
    /// Group addressing.
    pub addressing: Addressing,
    /// Data port (LISTEN_PORT).
    pub listen_port: u16,
    /// Port retransmits are sent to (EGRESS_PORT).
    pub egress_port: u16,
    /// Group indices to join.
    pub groups: Vec<u16>,
    /// Sources whose frames ingress takes (`--ingress-allow`); empty =
    /// every source.
    pub ingress_allow: retry::AllowList,
    /// NACK bind address (NACK_ADDR or the wildcard).
    pub nack_bind: IpAddr,
    /// NACK port.
    pub nack_port: u16,
    /// Loop retransmits back to local listeners (needed on loopback).
    pub multicast_loop: bool,
    /// Multicast TTL / hop limit of retransmits.
    pub multicast_hops: u32,
    /// Interfaces every multicast retransmit leaves on, at least one; the
    /// first is the NACK socket's (and the beacon's), each further one has
    /// an egress socket of its own on every worker.
    pub egress: Vec<Egress>,
    /// `-debug`: per-event debug lines (retransmits, rate-limit drops,
    /// misses, frames cached), within a per-worker line budget.
    pub debug_events: bool,
    /// Retry-service settings, one copy per worker shard.
    pub retry: retry::Settings,
    /// Cross-domain recovery (upstreams resolved); no upstreams = off.
    pub recovery: retry::RecoverySettings,
    /// Datagrams per recvmmsg/sendmmsg batch.
    pub batch: usize,
    /// io_uring: the longest a worker waits to gather a batch of
    /// completions before it handles those it has (`--uring-batch-wait`;
    /// shorter under load, `batch_wait`).
    pub uring_batch_wait: Duration,
    /// The shared store (Redis) when `REDIS_ADDR` is set.
    pub store: Option<store_queue::StoreClient>,
    /// `DEDUP_WINDOW`: how long a multicast retransmit stays claimed when
    /// retransmits are deduplicated across siblings.
    pub dedup_window: Duration,
    /// The DHT on the workers (`--dht-enabled`), with the node identity.
    pub dht: Option<DhtOptions>,
    /// Gossip rumor dedup on the workers (`--cluster-key-file`).
    pub gossip: Option<GossipOptions>,
    /// NACK tracing (`--trace-sampling` with `--otlp-endpoint`): each
    /// worker samples NACKs and queues their records for the control thread.
    pub nack_tracing: Option<nack_trace::NackTracing>,
}

/// Binds the control thread's member of the gossip reuseport group (after
/// the workers', so it is the group's last member, as the steering program
/// expects). Errors name `--gossip-port` and the fix.
pub fn gossip_socket(bind: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    socket::gossip_member(bind).map(Into::into)
}

/// The worker that owns a flow: `low32(hash_key) % workers`. The low 32
/// bits because the reuseport steering program (classic BPF, 32-bit
/// arithmetic) computes exactly this from the NACK's HashKey; HashKeys are
/// XXH64 values, so the low bits are as uniform as the whole.
pub fn owner(hash_key: u64, workers: usize) -> usize {
    (hash_key as u32 % workers.max(1) as u32) as usize
}

/// Deals group indices to workers round-robin.
pub fn partition_groups(groups: &[u16], workers: usize) -> Vec<Vec<u16>> {
    let mut out = vec![Vec::new(); workers.max(1)];
    for (i, &g) in groups.iter().enumerate() {
        out[i % workers.max(1)].push(g);
    }
    out
}

/// The `dropped` reason of an ingress datagram that did not arrive as
/// multicast to a configured group (see "What ingress accepts").
pub const NOT_MULTICAST: &str = "not_multicast";

/// The `dropped` reason of an ingress datagram from a source
/// `--ingress-allow` does not list (see "What ingress accepts").
pub const SOURCE_NOT_ALLOWED: &str = "source_not_allowed";

/// Drop reasons the runtime counts besides [`ricochet_wire::Error::REASONS`],
/// for pre-registering metrics.
pub const DROP_REASONS: [&str; 2] = [NOT_MULTICAST, SOURCE_NOT_ALLOWED];

/// Longest datagram the NACK socket takes: a NACK is 64 bytes; anything
/// longer than this is counted `too_long` on both backends (the io_uring
/// NACK buffers hold at least this much payload), shorter misfits
/// `length_mismatch`.
pub const MAX_NACK_DATAGRAM: usize = 256;

/// Counters a worker keeps itself (beyond the retry service's).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerCounters {
    /// Datagrams received on the ingress socket.
    pub ingress_datagrams: u64,
    /// Datagrams received on the NACK socket.
    pub nack_datagrams: u64,
    /// Datagrams received on the upstream socket (answers to Proxied NACKs).
    pub upstream_datagrams: u64,
    /// Frames handed to another worker.
    pub handoffs_out: u64,
    /// Frames and NACKs received from other workers.
    pub handoffs_in: u64,
    /// Hand-offs dropped because the owner's inbox was full.
    pub handoff_drops: u64,
    /// Wake-ups sent to peers (MSG_RING on io_uring, eventfd on epoll).
    pub peer_wakes: u64,
    /// MSG_RING wake-ups that failed and fell back to the peer's eventfd.
    pub peer_wake_fallbacks: u64,
    /// NACKs that arrived on a worker other than their owner (steering
    /// missing or bypassed) and were forwarded.
    pub nacks_forwarded: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Sends that carried more than one datagram (UDP GSO).
    pub gso_sends: u64,
    /// Times an io_uring worker handed a round's queued answers to the
    /// kernel before the round's end, the round being long (0 on epoll,
    /// which sends after every receive batch).
    pub uring_early_submits: u64,
    /// GSO sends the kernel refused (`EMSGSIZE`, `EINVAL`: a segment over
    /// the path MTU; `EIO`: a device that cannot checksum segments) and whose
    /// datagrams were sent again one at a time.
    pub gso_fallbacks: u64,
    /// Control events dropped because the control thread's queue was full.
    pub events_dropped: u64,
    /// Sends the kernel refused or that found the socket buffer full.
    pub send_errors: u64,
    /// Shared-store requests answered unavailable by the worker itself:
    /// the store's queue was full, too many were parked, or no answer came
    /// by the deadline.
    pub store_unavailable: u64,
    /// Frames taken from a sibling's snapshot at a warm restart.
    pub warm_frames: u64,
    /// Gaps forwarded to the sibling that owns them (gossip membership).
    pub gaps_forwarded_to_owner: u64,
    /// Replies from siblings to forwarded NACKs (ignored).
    pub sibling_replies: u64,
    /// Shared-store requests waiting for their answer now (a gauge).
    pub store_pending: u64,
    /// The batch wait the io_uring worker waits with now, in microseconds
    /// (a gauge: `--uring-batch-wait`, shorter under load; 0 on epoll or
    /// with batching off).
    pub uring_batch_wait_microseconds: u64,
    /// Frames not written to the shared cache because its queue was full.
    pub store_puts_dropped: u64,
    /// Deletes of an old epoch's keys from the shared cache not sent
    /// because its queue was full (each of up to 256 keys).
    pub store_deletes_dropped: u64,
    /// Well-formed frames from the fabric (the ingress sockets) that reached
    /// the cache of the worker owning their flow; recovered, warmed and
    /// looked-up frames are not counted.
    pub fabric_frames: u64,
    /// Of those, frames the cache holds after their arrival: newly cached,
    /// or a copy of one already held.
    pub fabric_frames_cached: u64,
    /// Ingress datagrams dropped as malformed (any reason; `dropped` has
    /// the reasons, for every socket).
    pub fabric_malformed: u64,
    /// Responses the kernel refused or the worker could not queue, by type.
    pub response_send_errors: ResponseCounts,
    /// [`Self::fabric_frames_cached`] by the source address the frame
    /// arrived from (the `bre_cache_stored_total` series).
    #[serde(skip)]
    pub cached_by_source: SourceCounts,
    /// Datagrams dropped, by label: `Error::reason` for malformed ones,
    /// [`DROP_REASONS`] for the runtime's own refusals.
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
}

/// A count per BRC-126 response type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResponseCounts {
    /// ACKs.
    pub ack: u64,
    /// MISSes.
    pub miss: u64,
    /// THROTTLEDs.
    pub throttled: u64,
}

impl ResponseCounts {
    /// Counts `payload` when it is a response; frames and NACKs are not.
    pub(crate) fn count(&mut self, payload: &retry::Payload) {
        use ricochet_wire::control::{ResponseKind, ResponseRepr};
        let retry::Payload::Control { .. } = payload else { return };
        match ResponseRepr::parse(payload.as_bytes()).map(|r| r.kind) {
            Ok(ResponseKind::Ack(_)) => self.ack += 1,
            Ok(ResponseKind::Miss) => self.miss += 1,
            Ok(ResponseKind::Throttled { .. }) => self.throttled += 1,
            Err(_) => {}
        }
    }
}

/// Most source addresses a worker counts apart; frames from further
/// sources are counted under `None` (a flood of spoofed sources must not
/// grow the table, or the scrape, without bound).
pub const MAX_SOURCES: usize = 256;

/// Counts by source address, in first-seen order. Publishers are few, so a
/// short vector scanned from the most recent hit beats a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCounts {
    counts: Vec<(Option<IpAddr>, u64)>,
    last: usize,
}

impl SourceCounts {
    /// Adds one for `src` (`None`: unknown).
    pub fn add(&mut self, src: Option<IpAddr>) {
        if self.counts.get(self.last).is_some_and(|(s, _)| *s == src) {
            self.counts[self.last].1 += 1;
            return;
        }
        let find = |counts: &[(Option<IpAddr>, u64)], src| counts.iter().position(|c| c.0 == src);
        // A new source past the cap is counted as unknown.
        let src = match find(&self.counts, src) {
            Some(_) => src,
            None if self.counts.len() >= MAX_SOURCES => None,
            None => src,
        };
        self.last = find(&self.counts, src).unwrap_or_else(|| {
            self.counts.push((src, 0));
            self.counts.len() - 1
        });
        self.counts[self.last].1 += 1;
    }

    /// `(source, count)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (Option<IpAddr>, u64)> + '_ {
        self.counts.iter().copied()
    }
}

/// A worker's published state.
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    /// CPU the worker is pinned to.
    pub cpu: usize,
    /// Its own counters.
    pub counters: WorkerCounters,
    /// Its retry shard's counters.
    pub retry: Stats,
    /// Its recovery path's counters.
    pub recovery: retry::RecoveryStats,
    /// Its DHT node's state, when the DHT is on.
    pub dht: Option<DhtSnapshot>,
    /// Its gossip member's state, with a cluster.
    pub gossip: Option<GossipSnapshot>,
    /// What its cache shard holds of its most recently active flows
    /// (at most [`HOLDINGS_PER_WORKER`]), for siblings' fill decisions.
    pub holdings: Vec<retry::Holding>,
}

/// Flows per worker in the holdings digest a cluster member gossips.
pub const HOLDINGS_PER_WORKER: usize = 32;

/// What workers tell the control thread (for `/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    /// A flow started a new epoch: its proxy restarted and reused the
    /// HashKey, and every frame of the old epoch was dropped.
    EpochReset {
        /// The flow.
        hash_key: u64,
    },
}

/// Events queued for the control thread before workers drop (and count)
/// them; it drains the queue every 100 ms.
const EVENT_QUEUE: usize = 4096;

/// One of the workers' receiving sockets, named for the kernel's drop
/// counts (`ricochet_kernel_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    /// `ingress`, `nack`, `upstream`, `dht` or `gossip`.
    pub kind: &'static str,
    /// The worker that reads it.
    pub worker: usize,
    /// Its inode, as `/proc/net/udp*` lists it.
    pub inode: u64,
}

impl SocketInfo {
    fn of(kind: &'static str, worker: usize, s: &socket2::Socket) -> Option<SocketInfo> {
        use std::os::unix::fs::MetadataExt as _;
        // A duplicate of the descriptor, closed again at once.
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(s.try_clone().ok()?));
        Some(SocketInfo { kind, worker, inode: file.metadata().ok()?.ino() })
    }
}

/// State shared between workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    stop: AtomicBool,
    failed: AtomicBool,
    draining: AtomicBool,
    ready: AtomicBool,
    warming: AtomicBool,
    /// Workers whose event loop is running (`/readyz` `workers_ready`).
    running: AtomicUsize,
    /// Per-worker snapshots, refreshed every tick.
    pub snapshots: Vec<Mutex<WorkerSnapshot>>,
    /// The backend actually running.
    pub backend: &'static str,
    /// Whether reuseport steering is active (else NACKs are forwarded).
    pub steering: AtomicBool,
    /// Whether the DHT group's steering program is attached (else DHT
    /// datagrams read by the wrong worker are forwarded to their owner).
    pub dht_steering: AtomicBool,
    /// Whether the gossip group's steering program is attached (else the
    /// kernel spreads gossip datagrams and they are handed on).
    pub gossip_steering: AtomicBool,
    /// The port the gossip group is bound to (with a cluster), for the
    /// control thread's socket to join.
    pub gossip_port: Option<u16>,
    /// ADVERTs sent by the beacon task.
    pub beacons_sent: std::sync::atomic::AtomicU64,
    /// The workers' receiving sockets.
    pub sockets: Vec<SocketInfo>,
    /// The endpoint's IP, sequence and group rate-limit tables, shared by
    /// every worker's retry service: limits are per endpoint.
    pub limits: Arc<retry::SharedLimits>,
    /// Workers → control thread events (bounded; a full queue drops).
    pub(crate) events: crossbeam_channel::Sender<ControlEvent>,
    events_rx: crossbeam_channel::Receiver<ControlEvent>,
}

impl Shared {
    /// State for `workers` workers built in a test, without a runtime:
    /// ready, no steering.
    #[cfg(test)]
    pub(crate) fn for_test(workers: usize) -> Arc<Shared> {
        let (events, events_rx) = crossbeam_channel::bounded(16);
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(true),
            warming: AtomicBool::new(false),
            running: AtomicUsize::new(workers),
            snapshots: (0..workers).map(|_| Mutex::new(WorkerSnapshot::default())).collect(),
            backend: "test",
            steering: AtomicBool::new(false),
            dht_steering: AtomicBool::new(false),
            gossip_steering: AtomicBool::new(false),
            gossip_port: None,
            beacons_sent: std::sync::atomic::AtomicU64::new(0),
            sockets: Vec::new(),
            limits: Arc::new(retry::SharedLimits::new(
                &retry::LimitSettings::default(),
                std::time::Instant::now(),
            )),
            events,
            events_rx,
        })
    }

    /// Whether a drain has been requested.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// Whether every worker has started, none has failed and no warm-up
    /// from siblings is in progress.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.failed() && !self.warming()
    }
    /// Whether the cache is being warmed from siblings (`/readyz` 503
    /// "warming"), bounded by `--warmup-timeout`.
    pub fn warming(&self) -> bool {
        self.warming.load(Ordering::Relaxed)
    }
    /// Starts or ends the warm-up period.
    pub fn set_warming(&self, on: bool) {
        self.warming.store(on, Ordering::Relaxed);
    }
    /// Workers whose event loop is running now, of [`Shared::workers_total`].
    pub fn workers_ready(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
    /// Workers configured (one per CPU).
    pub fn workers_total(&self) -> usize {
        self.snapshots.len()
    }
    /// Whether a worker stopped on an error; the process should exit.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    /// Marks the endpoint as draining: still serving, but /readyz 503 and
    /// ADVERT Draining.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// The workers' holdings digests merged, at most `max` flows: each
    /// worker's most recently active flows first, taken in turns (a flow
    /// lives on one worker only, so nothing repeats).
    pub fn holdings(&self, max: usize) -> Vec<retry::Holding> {
        let lists: Vec<Vec<retry::Holding>> = self
            .snapshots
            .iter()
            .map(|s| s.lock().map(|s| s.holdings.clone()).unwrap_or_default())
            .collect();
        let mut out = Vec::with_capacity(max);
        for i in 0.. {
            let before = out.len();
            for l in &lists {
                if out.len() == max {
                    return out;
                }
                if let Some(h) = l.get(i) {
                    out.push(*h);
                }
            }
            if out.len() == before {
                break;
            }
        }
        out
    }

    /// Takes the events workers queued since the last call.
    pub fn drain_events(&self) -> impl Iterator<Item = ControlEvent> + '_ {
        self.events_rx.try_iter()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running set of workers.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<sys::EventFd>>,
    control: Control,
    /// The SSM driver, until the control thread takes it.
    ssm: Option<ssm::Ssm>,
}

/// The control thread's way to hand workers work: each message goes to the
/// worker that owns the flow, through the same inbox peers use.
#[derive(Debug, Clone)]
pub struct Control {
    inboxes: Vec<crossbeam_channel::Sender<worker::Handoff>>,
    wakers: Vec<Arc<sys::EventFd>>,
}

impl Control {
    /// Hands a shared-store answer to the worker that asked. An answer
    /// that does not fit the inbox is lost; the worker gives up on it after
    /// [`STORE_ANSWER_DEADLINE`] and goes ahead as if Redis were down.
    pub(crate) fn answer(&self, to: store_queue::ReplyTo, answer: store_queue::Answer) {
        if let Some(inbox) = self.inboxes.get(to.worker)
            && inbox.try_send(worker::Handoff::Store(to.token, answer)).is_ok()
        {
            self.wakers[to.worker].wake();
        }
    }

    /// Gives every worker the live siblings (gossip membership) for gap
    /// ownership. Returns how many workers could not take it now.
    pub fn set_siblings(&self, view: retry::Siblings) -> usize {
        let view = Arc::new(view);
        let mut missed = 0;
        for (inbox, waker) in self.inboxes.iter().zip(&self.wakers) {
            if inbox.try_send(worker::Handoff::Siblings(view.clone())).is_ok() {
                waker.wake();
            } else {
                missed += 1;
            }
        }
        missed
    }

    /// Collects the hot part of every worker's cache, up to `max_bytes` in
    /// all (split evenly), for a sibling's warm restart. Workers answer
    /// between packet batches; a worker that does not answer within
    /// `wait` (busy, or its inbox full) contributes nothing.
    pub fn export_hot(&self, max_bytes: usize, wait: Duration) -> Vec<Bytes> {
        let share = max_bytes / self.inboxes.len().max(1);
        let (tx, rx) = crossbeam_channel::bounded(self.inboxes.len());
        let mut asked = 0;
        for (inbox, waker) in self.inboxes.iter().zip(&self.wakers) {
            if inbox.try_send(worker::Handoff::Export(share, tx.clone())).is_ok() {
                waker.wake();
                asked += 1;
            }
        }
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        for _ in 0..asked {
            match rx.recv_deadline(deadline) {
                Ok(frames) => out.extend(frames),
                Err(_) => break,
            }
        }
        out
    }

    /// Hands a frame from a sibling's snapshot to the worker that owns its
    /// flow; false when it is not a keyed frame or that inbox is full.
    pub fn warm(&self, frame: Bytes) -> bool {
        let Some(key) = ricochet_wire::frame::Frame::new_checked(&frame).ok().and_then(|f| f.key())
        else {
            return false;
        };
        let w = owner(key.hash_key, self.inboxes.len());
        if self.inboxes[w].try_send(worker::Handoff::Warm(frame)).is_err() {
            return false;
        }
        self.wakers[w].wake();
        true
    }

    /// Gives every worker a new upstream list (upstream discovery). Returns
    /// how many workers could not take it now (inbox full); call again.
    pub fn set_upstreams(&self, upstreams: &[std::net::SocketAddr]) -> usize {
        let list: Arc<[std::net::SocketAddr]> = upstreams.into();
        let mut missed = 0;
        for (inbox, waker) in self.inboxes.iter().zip(&self.wakers) {
            if inbox.try_send(worker::Handoff::Upstreams(list.clone())).is_ok() {
                waker.wake();
            } else {
                missed += 1;
            }
        }
        missed
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Hands a DHT operation to the worker that runs it ([`DhtWhat::owner`]:
    /// a key's owner, or every worker for a bootstrap). Each worker that
    /// takes it answers once on `reply` with `op`. Returns how many
    /// workers could not take it now (inbox full).
    pub fn dht(
        &self,
        op: u64,
        what: DhtWhat,
        reply: &tokio::sync::mpsc::Sender<DhtReply>,
    ) -> usize {
        let targets: Vec<usize> = match what.owner(self.inboxes.len()) {
            Some(w) => vec![w],
            None => (0..self.inboxes.len()).collect(),
        };
        let mut missed = 0;
        for w in targets {
            let req = DhtRequest { op, what: what.clone(), reply: reply.clone() };
            if self.inboxes[w].try_send(worker::Handoff::Dht(req)).is_ok() {
                self.wakers[w].wake();
            } else {
                missed += 1;
            }
        }
        missed
    }

    /// Records a rumor this member originated in the dedup shard of the
    /// worker owning its id; false when that inbox is full.
    pub fn gossip_mark(&self, id: crate::gossip::RumorId, flags: u8) -> bool {
        let w = crate::gossip::dedup::shard_of(&id, self.inboxes.len());
        if self.inboxes[w].try_send(worker::Handoff::GossipMark(id, flags)).is_err() {
            return false;
        }
        self.wakers[w].wake();
        true
    }

    /// Hands a rumor datagram the control thread's socket read (no
    /// steering program) to a worker, which treats it as read from its
    /// own gossip socket; false when that inbox is full.
    pub fn gossip_datagram(&self, from: std::net::SocketAddr, bytes: Bytes) -> bool {
        // The worker the steering program would pick (a datagram too
        // short to be a rumor: the last worker, whose shard drops it).
        let n = self.inboxes.len().max(1);
        let w = (sys::gossip_reader(&bytes, n as u32) as usize).min(n - 1);
        if self.inboxes[w].try_send(worker::Handoff::GossipDatagram(from, bytes)).is_err() {
            return false;
        }
        self.wakers[w].wake();
        true
    }

    /// Drops every cached frame of `hash_key` on its owning worker; returns
    /// that worker's index, or `None` if its inbox is full (try again).
    pub fn invalidate(&self, hash_key: u64) -> Option<usize> {
        let w = owner(hash_key, self.inboxes.len());
        self.inboxes[w].try_send(worker::Handoff::Invalidate(hash_key)).ok()?;
        self.wakers[w].wake();
        Some(w)
    }
}

impl Runtime {
    /// Opens every socket, then starts the workers. Socket errors (port in
    /// use, no multicast route, unknown interface) surface here, before any
    /// worker runs.
    pub fn start(opts: Options) -> io::Result<Runtime> {
        Self::start_ssm(opts, None)
    }

    /// [`Runtime::start`] under `--source-mode ssm`: each worker's ingress
    /// socket is joined `(S,G)` for its groups, from the sources `ssm`
    /// resolved (see [`ssm`]); a failed join stops the start.
    pub fn start_ssm(opts: Options, ssm: Option<ssm::SsmStart>) -> io::Result<Runtime> {
        let backend = select_backend(opts.backend)?;
        socket::nack_port_is_free(&opts)?;
        let n = opts.cpus.len().max(1);
        let shares = partition_groups(&opts.groups, n);
        let mut ingress = Vec::with_capacity(n);
        let mut nack = Vec::with_capacity(n);
        let mut upstream = Vec::with_capacity(n);
        let mut egress = Vec::with_capacity(n);
        let mut dht = Vec::with_capacity(n);
        let mut gossip = Vec::with_capacity(n);
        let mut gossip_port = opts.gossip.as_ref().map(|g| g.port);
        for share in &shares {
            ingress.push(socket::ingress(&opts, share)?);
            nack.push(socket::nack_member(&opts)?);
            upstream.push(socket::upstream(&opts)?);
            egress.push(socket::extra_egress(&opts)?);
            // DHT members in worker order, like the NACK group's.
            if let Some(d) = &opts.dht {
                dht.push(socket::dht_member(&opts, d.port)?);
            }
            // Gossip members in worker order too; the first may take an
            // ephemeral port, which the others (and the control thread's
            // socket) then join.
            if let Some(port) = gossip_port {
                let s = socket::gossip_member(std::net::SocketAddr::new(opts.nack_bind, port))?;
                gossip_port = s.local_addr()?.as_socket().map(|a| a.port()).or(Some(port));
                gossip.push(s);
            }
        }
        let mut sockets = Vec::new();
        for (w, ((ing, nk), up)) in ingress.iter().zip(&nack).zip(&upstream).enumerate() {
            sockets.extend(SocketInfo::of("ingress", w, ing));
            sockets.extend(SocketInfo::of("nack", w, nk));
            sockets.extend(SocketInfo::of("upstream", w, up));
            sockets.extend(dht.get(w).and_then(|d| SocketInfo::of("dht", w, d)));
            sockets.extend(gossip.get(w).and_then(|g| SocketInfo::of("gossip", w, g)));
        }
        let ssm = ssm.map(|s| ssm::Ssm::join_all(s, &opts, &shares, &ingress)).transpose()?;
        let steering = match sys::attach_reuseport_steering(&nack[0], 8, n as u32) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "reuseport steering unavailable; NACKs are forwarded to their owner (one hop)");
                false
            }
        };
        let dht_steering = match dht.first().map(|s| sys::attach_dht_steering(s, n as u32)) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "DHT reuseport steering unavailable; DHT datagrams are forwarded to their owner (one hop)");
                false
            }
            None => false,
        };
        let gossip_steering = match gossip.first().map(|s| sys::attach_gossip_steering(s, n as u32))
        {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "gossip reuseport steering unavailable; workers and the control thread hand gossip datagrams on");
                false
            }
            None => false,
        };
        let (events_tx, events_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            snapshots: (0..n).map(|_| Mutex::new(WorkerSnapshot::default())).collect(),
            backend,
            steering: AtomicBool::new(steering),
            dht_steering: AtomicBool::new(dht_steering),
            gossip_steering: AtomicBool::new(gossip_steering),
            gossip_port,
            beacons_sent: std::sync::atomic::AtomicU64::new(0),
            sockets,
            limits: Arc::new(retry::SharedLimits::new(
                &opts.retry.limits,
                std::time::Instant::now(),
            )),
            events: events_tx,
            events_rx,
        });
        let mut inboxes = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = crossbeam_channel::bounded::<worker::Handoff>(INBOX_DEPTH);
            inboxes.push(tx);
            receivers.push(rx);
        }
        let wakers: Vec<Arc<sys::EventFd>> =
            (0..n).map(|_| sys::EventFd::new().map(Arc::new)).collect::<io::Result<_>>()?;
        // Every worker is built (and every setup error surfaces) before any
        // runs; io_uring workers then learn each other's ring fds.
        let mut built = Vec::with_capacity(n);
        let mut dht = dht.into_iter();
        let mut gossip = gossip.into_iter();
        let mut egress = egress.into_iter();
        let sockets = ingress.into_iter().zip(nack).zip(upstream).zip(receivers);
        for (i, (((ing, nk), up), rx)) in sockets.enumerate() {
            let core =
                worker::Core::new(i, &opts, rx, inboxes.clone(), wakers.clone(), shared.clone());
            let socks = worker::Sockets {
                ingress: ing,
                nack: nk,
                upstream: up,
                dht: dht.next(),
                gossip: gossip.next(),
                egress: egress.next().unwrap_or_default(),
            };
            built.push(if backend == "io_uring" {
                AnyWorker::Uring(Box::new(uring::Worker::new(core, socks)?))
            } else {
                AnyWorker::Epoll(Box::new(epoll::Worker::new(core, socks)?))
            });
        }
        let rings: Vec<_> = built
            .iter()
            .filter_map(|w| match w {
                AnyWorker::Uring(u) => Some(u.ring_fd()),
                AnyWorker::Epoll(_) => None,
            })
            .collect();
        for w in &mut built {
            if let AnyWorker::Uring(u) = w {
                u.set_peer_rings(rings.clone());
            }
        }
        let mut workers = Vec::with_capacity(n);
        let started = Arc::new(std::sync::Barrier::new(n + 1));
        for (i, w) in built.into_iter().enumerate() {
            let cpu = opts.cpus.get(i).copied();
            let started = started.clone();
            let shared = shared.clone();
            let dht_role =
                if opts.dht.is_some() { format!(", DHT member {i}") } else { String::new() };
            let gossip_role =
                if opts.gossip.is_some() { format!(", gossip member {i}") } else { String::new() };
            let roles =
                format!("ingress groups {:?}, NACK member {i}{dht_role}{gossip_role}", shares[i]);
            workers.push(std::thread::Builder::new().name(format!("ricochet-w{i}")).spawn(
                move || {
                    if let Some(cpu) = cpu {
                        match sys::pin_current_thread(cpu) {
                            Ok(()) => tracing::info!(worker = i, cpu, roles, "worker pinned"),
                            Err(e) => {
                                tracing::warn!(worker = i, cpu, error = %e, "could not pin worker")
                            }
                        }
                    }
                    shared.running.fetch_add(1, Ordering::Relaxed);
                    started.wait();
                    w.run();
                    shared.running.fetch_sub(1, Ordering::Relaxed);
                },
            )?);
        }
        started.wait();
        shared.ready.store(true, Ordering::Relaxed);
        let control = Control { inboxes, wakers: wakers.clone() };
        Ok(Runtime { shared, workers, wakers, control, ssm })
    }

    /// Shared state for the control thread.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The SSM driver (with `--source-mode ssm`), once: the control thread
    /// runs it ([`ssm::Ssm::run`]) and exports its section.
    pub fn take_ssm(&mut self) -> Option<ssm::Ssm> {
        self.ssm.take()
    }

    /// A handle for sending workers control work.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Stops every worker after its current batch and joins them.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            w.wake();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Picks the backend, probing io_uring; `auto` falls back to epoll with the
/// reason logged, `uring` fails with it.
fn select_backend(wanted: Backend) -> io::Result<&'static str> {
    if wanted == Backend::Epoll {
        return Ok("epoll");
    }
    match uring::probe() {
        Ok(()) => Ok("io_uring"),
        Err(reason) if wanted == Backend::Auto => {
            tracing::warn!(%reason, "backend auto: io_uring unavailable, using epoll");
            Ok("epoll")
        }
        Err(reason) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("--backend uring: {reason}; fix that or run with --backend epoll"),
        )),
    }
}

enum AnyWorker {
    Epoll(Box<epoll::Worker>),
    Uring(Box<uring::Worker>),
}

impl AnyWorker {
    fn run(self) {
        match self {
            AnyWorker::Epoll(w) => w.run(),
            AnyWorker::Uring(w) => w.run(),
        }
    }
}

/// Depth of each worker's hand-off inbox. Full inboxes drop (counted):
/// blocking a worker on a peer would couple their latencies.
const INBOX_DEPTH: usize = 8192;
/// How long a worker waits for a shared-store answer before it goes ahead
/// as if Redis were down (answers normally come within `CACHE_OP_TIMEOUT`
/// or at once; this only catches answers lost to a full inbox).
pub const STORE_ANSWER_DEADLINE: Duration = Duration::from_secs(3);
/// How often a worker expires its cache and publishes statistics.
const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_matches_the_steering_program_arithmetic() {
        // The BPF program reads the key's low 32 bits (big-endian bytes
        // 12..16 of the NACK) and takes them modulo the group size.
        let key: u64 = 0x0123_4567_89AB_CDEF;
        let nack_low32 = u32::from_be_bytes(key.to_be_bytes()[4..8].try_into().unwrap());
        for n in 1..=8 {
            assert_eq!(owner(key, n), (nack_low32 % n as u32) as usize);
        }
    }

    #[test]
    fn groups_are_dealt_round_robin() {
        let p = partition_groups(&[0, 1, 2, 3, 0xFFFE], 2);
        assert_eq!(p, vec![vec![0, 2, 0xFFFE], vec![1, 3]]);
        assert_eq!(partition_groups(&[5], 1), vec![vec![5]]);
    }
}
