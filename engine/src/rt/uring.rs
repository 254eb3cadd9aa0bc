//! The io_uring backend: multishot RecvMsg on provided-buffer rings (one
//! ring per socket kind, recycled as soon as a datagram is handled), SendMsg
//! submissions batched per round (a long round hands its answers in every
//! [`EARLY_SUBMIT_TRANSMITS`]), an eventfd read for cross-core wakes and a
//! timeout for the periodic tick. One ring per worker, single issuer.
//!
//! A worker that hands a peer work wakes it with IORING_OP_MSG_RING, which
//! posts a completion straight into the peer's ring as part of this
//! worker's next submission (no extra syscall); if that fails (the peer's
//! ring is not enabled yet, or the kernel lacks MSG_RING) it falls back to
//! the peer's eventfd, which every worker keeps a read armed on.
//!
//! The ingress socket's RecvMsg reserves a control area ([`PktinfoCmsg`])
//! between the name and the payload of every provided buffer, where the
//! kernel writes the datagram's packet info; the worker reads the
//! destination from it (`rt` docs, "What ingress accepts").
//!
//! Not used (README: status): registered files.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use io_uring::types::{BufRingEntry, RecvMsgOut, Timespec};
use io_uring::{EnterFlags, IoUring, cqueue, opcode, types};
use socket2::{SockAddr, Socket};

use super::batch_wait::{BATCH_WANT, BatchWait};
use super::gso::{GsoLimit, GsoOrder, gso_runs};
use super::sys::{
    PktinfoCmsg, SendCmsg, gso_refused, packet_info, pktinfo_destination, socket_addr,
    write_send_cmsgs,
};
use super::worker::{Core, Oversized, Sockets, fetch_ahead};
use crate::retry::{Dest, Payload, Transmit};

const UD_INGRESS: u64 = 1 << 32;
const UD_NACK: u64 = 2 << 32;
const UD_WAKE: u64 = 3 << 32;
const UD_TICK: u64 = 4 << 32;
const UD_SEND: u64 = 5 << 32;
/// A peer's MSG_RING landing in this ring: nothing to do but wake.
const UD_PEER_WAKE: u64 = 6 << 32;
/// Completion of a MSG_RING this worker sent; low bits: the peer index.
const UD_MSG_SENT: u64 = 7 << 32;
const UD_UPSTREAM: u64 = 8 << 32;
const UD_DHT: u64 = 9 << 32;
const UD_GOSSIP: u64 = 10 << 32;
const UD_KIND: u64 = 0xFFFF_FFFF << 32;

const GROUP_INGRESS: u16 = 0;
const GROUP_NACK: u16 = 1;
/// What precedes the payload in a multishot RecvMsg buffer: the
/// `io_uring_recvmsg_out` header (16 bytes), the name area
/// (`msg_namelen`: a sockaddr_storage) and the control area
/// (`msg_controllen`: a [`PktinfoCmsg`] on the ingress socket, none
/// elsewhere — counted here for every socket, as a bound).
const RECV_HEAD: usize = 16 + size_of::<libc::sockaddr_storage>() + size_of::<PktinfoCmsg>();
/// Ingress buffers hold the largest UDP datagram plus the recvmsg header.
const INGRESS_BUF: usize = 65_536 + 256;
const INGRESS_BUFS: u16 = 256;
/// NACK buffers: a NACK is 64 bytes; a datagram longer than
/// [`super::MAX_NACK_DATAGRAM`] is `too_long` whether it arrives whole or
/// truncated.
const NACK_BUF: usize = 512;
const NACK_BUFS: u16 = 1024;
const _: () = assert!(INGRESS_BUF - RECV_HEAD >= 65_535 && NACK_BUF - RECV_HEAD > 256);

/// Answers a round queues before the worker hands them to the kernel
/// without waiting for the round's end: about 64 NACKs' frames and ACKs.
///
/// A round normally sends everything once, with the next wait. Under a
/// storm a round holds hundreds of NACKs, and a requester that keeps a
/// window of NACKs outstanding would get none of its answers until the
/// whole round is served, then send its next NACKs while this worker
/// sleeps in its batch wait: each side idles while the other works.
/// Submitting every 128 answers lets them overlap (closed-loop storms with
/// multicast answers, perf/early-submit-2026-12-08.md: the worker 93–95 %
/// busy instead of 86–89 %, 1.06–1.11× the NACKs/s per round). Rounds at
/// fixed rates up to 100 k NACK/s (35–39 NACKs, about 75 answers) stay one
/// submission each, but for the odd one after a stall.
const EARLY_SUBMIT_TRANSMITS: usize = 128;

/// Checks that io_uring works here and supports what this backend needs,
/// returning a reason operators can act on when it does not.
pub(crate) fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not supported by this kernel, or a container's \
            seccomp profile refuses io_uring_setup (ENOSYS)"
            .to_string(),
        Some(libc::EPERM) => "io_uring is disabled (sysctl kernel.io_uring_disabled, or a seccomp \
            profile forbids it: EPERM)"
            .to_string(),
        Some(libc::ENOMEM) => "io_uring could not lock memory (raise the memlock limit: \
            ulimit -l, or LimitMEMLOCK= in the systemd unit)"
            .to_string(),
        _ => format!("io_uring setup failed: {e}"),
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::Read::CODE, "READ"),
        (opcode::MsgRingData::CODE, "MSG_RING"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks {name} on this kernel"));
        }
    }
    // Provided-buffer rings need 5.19; multishot recvmsg needs 6.0.
    let ring_check = BufRing::new(&ring, 7, 2, 64);
    ring_check
        .map(|b| b.release(&ring))
        .map_err(|e| format!("io_uring provided-buffer rings unavailable: {e}"))
}

/// Which socket a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Ingress,
    Nack,
    Upstream,
    Dht,
    Gossip,
}

/// A provided-buffer ring: `count` buffers of `size` bytes the kernel picks
/// from for multishot receives, handed back by [`BufRing::recycle`].
struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    size: usize,
    count: u16,
    tail: u16,
    group: u16,
}

impl BufRing {
    fn new(uring: &IoUring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two(), "buffer ring size is a power of two");
        let ring_layout = Layout::from_size_align(count as usize * size_of::<BufRingEntry>(), 4096)
            .map_err(io::Error::other)?;
        let bufs_layout =
            Layout::from_size_align(count as usize * size, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero size (count ≥ 1, size ≥ 1).
        let (ring, bufs): (*mut BufRingEntry, *mut u8) =
            unsafe { (alloc_zeroed(ring_layout).cast(), alloc_zeroed(bufs_layout)) };
        if ring.is_null() || bufs.is_null() {
            // SAFETY: whichever allocation succeeded was made just above
            // with its layout and is not registered with the kernel.
            unsafe {
                if !ring.is_null() {
                    dealloc(ring.cast(), ring_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // Not registered yet: dropped on the error below, it frees memory
        // the kernel never saw.
        let mut br = BufRing { ring, ring_layout, bufs, bufs_layout, size, count, tail: 0, group };
        // SAFETY: `ring` is a page-aligned array of `count` entries that
        // lives until `Drop`, which unregisters it first.
        unsafe { uring.submitter().register_buf_ring_with_flags(ring as u64, count, group, 0)? };
        for bid in 0..count {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `idx < count`, inside the ring allocation; the kernel
        // reads an entry only after the tail passes it (see `publish`).
        let e = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: `bid < count`, so the buffer is inside `bufs`.
        e.set_addr(unsafe { self.bufs.add(bid as usize * self.size) } as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives in entry 0 of the ring; the kernel
        // reads it concurrently, hence the atomic release store.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring).cast_mut().cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the ring from `uring` and frees it: how a ring is given
    /// up while its io_uring lives on (the probe, a worker whose
    /// construction failed after this ring was made). Should the kernel
    /// refuse, the memory is leaked rather than freed under it.
    fn release(self, uring: &IoUring) {
        if uring.submitter().unregister_buf_ring(self.group).is_err() {
            std::mem::forget(self);
        }
    }

    /// Hands buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`.
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid.min(self.count - 1) as usize;
        // SAFETY: the buffer is inside `bufs`; the kernel finished writing
        // it (its completion was reaped) and will not reuse it before
        // `recycle`.
        unsafe { std::slice::from_raw_parts(self.bufs.add(bid * self.size), len.min(self.size)) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts, and no longer
        // registered with a live io_uring instance: a worker drops its ring
        // (closing the instance, which releases the registration) before
        // its buffers (field order in `Worker`); every other path gives a
        // registered ring up through `release`, which unregisters it first
        // (or leaks it), and `new` drops it only before registering.
        unsafe {
            dealloc(self.ring.cast(), self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
}

/// An in-flight SendMsg: header, iovecs, control messages (GSO, source
/// address), socket, addresses and the bytes of every segment, at a stable
/// heap address until its completion. Slots are pooled, so their vectors
/// keep their capacity.
struct SendSlot {
    hdr: libc::msghdr,
    iovs: Vec<libc::iovec>,
    cmsg: SendCmsg,
    fd: std::os::fd::RawFd,
    addr: SockAddr,
    /// The local address it leaves from (`None`: the kernel's choice).
    from: Option<std::net::IpAddr>,
    payloads: Vec<Payload>,
    /// Sent from the DHT or gossip socket (its errors are counted there
    /// too).
    extra: Extra,
}

/// Which member socket besides the NACK and upstream ones a send used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Dht,
    Gossip,
}

pub(crate) struct Worker {
    // Field order matters for Drop: the ring goes first (releasing buffer
    // registrations and in-flight operations), then the memory they use.
    ring: IoUring,
    core: Core,
    ingress: Socket,
    nack: Socket,
    upstream: Socket,
    dht: Option<Socket>,
    gossip: Option<Socket>,
    /// Egress sockets of the second and further egress interfaces.
    egress: Vec<Socket>,
    ingress_bufs: BufRing,
    nack_bufs: BufRing,
    ingress_msg: Box<libc::msghdr>,
    nack_msg: Box<libc::msghdr>,
    upstream_msg: Box<libc::msghdr>,
    dht_msg: Box<libc::msghdr>,
    gossip_msg: Box<libc::msghdr>,
    wake_buf: Box<u64>,
    tick: Box<Timespec>,
    slots: Vec<Option<Box<SendSlot>>>,
    free: Vec<u32>,
    // Boxed on purpose: a slot's address is handed to the kernel and must
    // not move while its SendMsg is in flight.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<SendSlot>>,
    cqes: Vec<cqueue::Entry>,
    pending: Vec<Transmit>,
    runs: Vec<usize>,
    /// Groups each round's transmits into GSO runs.
    gso_order: GsoOrder,
    peer_rings: Vec<std::os::fd::RawFd>,
    wake_scratch: Vec<usize>,
    /// What the kernel lets this worker send as one GSO send.
    gso: GsoLimit,
    /// `min_wait_usec` of each wait (`--uring-batch-wait`, shorter under
    /// load); 0 waits for the first completion only.
    batch_wait: BatchWait,
    /// Datagrams received in the current round.
    round_datagrams: usize,
    /// Flags of the worker's wait ([`wait_flags`]).
    wait_flags: EnterFlags,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Worker").field("core", &self.core).finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers (buffer rings, msghdr templates, send slots) all
// point into allocations the worker owns; it is moved to its thread once,
// before any operation is submitted, and used only there.
unsafe impl Send for Worker {}

/// The longest one batch wait lasts (the tick wakes the worker sooner).
static IDLE_WAIT: Timespec = Timespec::new().sec(1);

/// The `min_wait_usec` a worker waits with: `wait`, where the kernel
/// supports a batch wait (6.12+, `IORING_FEAT_MIN_TIMEOUT`); else 0, said
/// once (by worker 0) in the log.
fn batch_wait_micros(ring: &IoUring, wait: std::time::Duration, worker: usize) -> u32 {
    let micros = u32::try_from(wait.as_micros()).unwrap_or(u32::MAX);
    if micros == 0 || ring.params().is_feature_min_timeout() {
        return micros;
    }
    if worker == 0 {
        tracing::info!(
            "--uring-batch-wait is ignored: this kernel has no io_uring batch wait \
             (IORING_FEAT_MIN_TIMEOUT, Linux 6.12+); each completion is handled as it comes"
        );
    }
    0
}

/// Flags of the worker's wait: `NO_IOWAIT` where the kernel has it (6.15+,
/// `IORING_FEAT_NO_IOWAIT`). Without it the kernel counts a worker waiting
/// with receives armed as in I/O wait, so an idle NACK core reads as
/// iowait, not idle, in `/proc/stat` (`node_cpu_seconds_total{mode="iowait"}`)
/// and cpufreq governors boost it as if it waited on a disk. Older kernels
/// get no flag (they would refuse it), said once (by worker 0) in the log.
fn wait_flags(ring: &IoUring, worker: usize) -> EnterFlags {
    if ring.params().is_feature_no_iowait() {
        return EnterFlags::NO_IOWAIT;
    }
    if worker == 0 {
        tracing::info!(
            "this kernel counts an idle io_uring worker's wait as I/O wait (no \
             IORING_FEAT_NO_IOWAIT, Linux 6.15+): its CPU shows iowait, not idle; \
             it is not disk I/O"
        );
    }
    EnterFlags::empty()
}

/// The msghdr a multishot RecvMsg reads its area sizes from; `control`
/// reserves a packet-info area ahead of the payload (the ingress and NACK
/// sockets).
fn recv_template(control: bool) -> Box<libc::msghdr> {
    // SAFETY: plain old data; zero is valid.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    if control {
        h.msg_controllen = size_of::<PktinfoCmsg>();
    }
    Box::new(h)
}

impl Worker {
    pub(crate) fn new(core: Core, socks: Sockets) -> io::Result<Worker> {
        let Sockets { ingress, nack, upstream, dht, gossip, egress } = socks;
        // Created disabled and enabled on the worker's own thread: a
        // single-issuer ring belongs to the thread that enables it.
        // DEFER_TASKRUN (6.1+): completions are posted when this thread
        // waits, instead of interrupting it with task work for every
        // datagram; older kernels get COOP_TASKRUN, which at least avoids
        // the inter-processor interrupt.
        let ring = IoUring::builder()
            .setup_cqsize(8192)
            .setup_single_issuer()
            .setup_r_disabled()
            .setup_defer_taskrun()
            .build(1024)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(8192)
                    .setup_single_issuer()
                    .setup_r_disabled()
                    .setup_coop_taskrun()
                    .build(1024)
            })?;
        let batch_wait_us = batch_wait_micros(&ring, core.opts.uring_batch_wait, core.index);
        let wait_flags = wait_flags(&ring, core.index);
        let ingress_bufs = BufRing::new(&ring, GROUP_INGRESS, INGRESS_BUFS, INGRESS_BUF)?;
        let nack_bufs = match BufRing::new(&ring, GROUP_NACK, NACK_BUFS, NACK_BUF) {
            Ok(b) => b,
            Err(e) => {
                ingress_bufs.release(&ring);
                return Err(e);
            }
        };
        Ok(Worker {
            ring,
            core,
            ingress,
            nack,
            upstream,
            dht,
            gossip,
            egress,
            ingress_bufs,
            nack_bufs,
            ingress_msg: recv_template(true),
            // Packet info, on a wildcard NACK socket: replies leave from
            // each NACK's local address.
            nack_msg: recv_template(true),
            upstream_msg: recv_template(false),
            dht_msg: recv_template(false),
            gossip_msg: recv_template(false),
            wake_buf: Box::new(0),
            tick: Box::new(Timespec::from(super::TICK)),
            slots: Vec::new(),
            free: Vec::new(),
            spare: Vec::new(),
            cqes: Vec::with_capacity(1024),
            pending: Vec::new(),
            runs: Vec::new(),
            gso_order: GsoOrder::default(),
            peer_rings: Vec::new(),
            wake_scratch: Vec::new(),
            gso: GsoLimit::default(),
            batch_wait: BatchWait::new(batch_wait_us, Instant::now()),
            round_datagrams: 0,
            wait_flags,
        })
    }

    pub(crate) fn run(mut self) {
        if let Err(e) = self.ring.submitter().register_enable_rings().and_then(|()| self.arm_all())
        {
            tracing::error!(worker = self.core.index, error = %e, "io_uring arm failed; worker stops");
            self.core.shared.fail();
            return;
        }
        while !self.core.shared.stopping() {
            // One syscall per round: submit, then wait (plus one per
            // EARLY_SUBMIT_TRANSMITS answers in a long round). With a batch
            // wait the kernel returns when the wait is over, with the
            // completions it has, or ETIME when it has none (a normal,
            // empty round); sooner only if BATCH_WANT pieces of task work
            // come in, and a socket's burst of datagrams is one
            // (`batch_wait` docs), so the wait is set from the arrival rate.
            let wait_us = self.batch_wait.micros();
            let args = types::SubmitArgs::new();
            let (want, args) = if wait_us > 0 {
                // The overall timeout keeps an idle worker asleep past the
                // batch wait (without one the kernel ends every wait there).
                (BATCH_WANT, args.min_wait_usec(wait_us).timespec(&IDLE_WAIT))
            } else {
                (1, args)
            };
            let waited =
                self.ring.submitter().submit_with_args_and_flags(want, &args, self.wait_flags);
            if let Err(e) = waited
                && !matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME))
            {
                tracing::error!(worker = self.core.index, error = %e, "io_uring wait failed; worker stops");
                self.core.shared.fail();
                break;
            }
            self.cqes.clear();
            self.cqes.extend(self.ring.completion());
            let now = Instant::now();
            for i in 0..self.cqes.len() {
                for j in fetch_ahead(i, self.cqes.len()) {
                    self.prefetch_nack(now, j);
                }
                let cqe = self.cqes[i].clone();
                self.complete(now, &cqe);
                if i + 1 < self.cqes.len()
                    && self.core.outbox.transmits.len() >= EARLY_SUBMIT_TRANSMITS
                {
                    self.submit_early();
                }
            }
            self.batch_wait.record(now, std::mem::take(&mut self.round_datagrams));
            self.core.counters.uring_batch_wait_microseconds = u64::from(self.batch_wait.micros());
            self.core.drain_inbox(now);
            self.flush();
            self.wake_peers();
        }
        self.core.publish();
    }

    /// Hands the answers this round queued so far to the kernel now, while
    /// the round's remaining completions are still to be served
    /// ([`EARLY_SUBMIT_TRANSMITS`]).
    fn submit_early(&mut self) {
        self.flush();
        self.core.counters.uring_early_submits += 1;
        // Should the kernel refuse, the entries stay queued: the round's own
        // submit hands them in and reports the error.
        let _ = self.ring.submit();
    }

    /// Gives the worker every worker's ring fd (its own included), for
    /// MSG_RING wake-ups.
    pub(crate) fn set_peer_rings(&mut self, rings: Vec<std::os::fd::RawFd>) {
        self.peer_rings = rings;
    }

    /// The ring's fd, for peers' MSG_RING wake-ups.
    pub(crate) fn ring_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }

    fn wake_peers(&mut self) {
        let mut targets = std::mem::take(&mut self.wake_scratch);
        self.core.wake_peers(|i, _| targets.push(i));
        for &i in &targets {
            match self.peer_rings.get(i) {
                Some(&fd) => {
                    let sqe = opcode::MsgRingData::new(types::Fd(fd), 0, UD_PEER_WAKE, None)
                        .build()
                        .user_data(UD_MSG_SENT | i as u64);
                    if self.push(sqe).is_err() {
                        self.core.wakers[i].wake();
                    }
                }
                None => self.core.wakers[i].wake(),
            }
        }
        targets.clear();
        self.wake_scratch = targets;
    }

    fn arm_all(&mut self) -> io::Result<()> {
        self.arm_recv(Source::Ingress)?;
        self.arm_recv(Source::Nack)?;
        self.arm_recv(Source::Upstream)?;
        if self.dht.is_some() {
            self.arm_recv(Source::Dht)?;
        }
        if self.gossip.is_some() {
            self.arm_recv(Source::Gossip)?;
        }
        self.arm_wake()?;
        self.arm_tick()
    }

    fn push(&mut self, sqe: io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every SQE built here points at memory the worker owns
            // and keeps alive until the matching completion (see callers).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand it to the kernel and retry.
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, source: Source) -> io::Result<()> {
        // Upstream replies are frames: they share the ingress buffers, and
        // so do DHT datagrams (up to 65 507 bytes are accepted).
        let (fd, msg, group, ud) = match source {
            Source::Ingress => (
                self.ingress.as_raw_fd(),
                &*self.ingress_msg as *const _,
                GROUP_INGRESS,
                UD_INGRESS,
            ),
            Source::Nack => {
                (self.nack.as_raw_fd(), &*self.nack_msg as *const _, GROUP_NACK, UD_NACK)
            }
            Source::Upstream => (
                self.upstream.as_raw_fd(),
                &*self.upstream_msg as *const _,
                GROUP_INGRESS,
                UD_UPSTREAM,
            ),
            Source::Dht => {
                let Some(dht) = &self.dht else { return Ok(()) };
                (dht.as_raw_fd(), &*self.dht_msg as *const _, GROUP_INGRESS, UD_DHT)
            }
            Source::Gossip => {
                let Some(g) = &self.gossip else { return Ok(()) };
                (g.as_raw_fd(), &*self.gossip_msg as *const _, GROUP_INGRESS, UD_GOSSIP)
            }
        };
        // The msghdr template is boxed and lives as long as the worker.
        let sqe = opcode::RecvMsgMulti::new(types::Fd(fd), msg, group).build().user_data(ud);
        self.push(sqe)
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let fd = self.core.wakers[self.core.index].fd();
        let buf = &mut *self.wake_buf as *mut u64 as *mut u8;
        self.push(opcode::Read::new(types::Fd(fd), buf, 8).build().user_data(UD_WAKE))
    }

    fn arm_tick(&mut self) -> io::Result<()> {
        let ts = &*self.tick as *const Timespec;
        self.push(opcode::Timeout::new(ts).build().user_data(UD_TICK))
    }

    fn complete(&mut self, now: Instant, cqe: &cqueue::Entry) {
        let ud = cqe.user_data();
        let res = cqe.result();
        let rearm = match ud & UD_KIND {
            UD_INGRESS | UD_NACK | UD_UPSTREAM | UD_DHT | UD_GOSSIP => {
                let source = match ud & UD_KIND {
                    UD_INGRESS => Source::Ingress,
                    UD_NACK => Source::Nack,
                    UD_DHT => Source::Dht,
                    UD_GOSSIP => Source::Gossip,
                    _ => Source::Upstream,
                };
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    if res >= 0 {
                        self.round_datagrams += 1;
                        self.on_datagram(now, source, bid, res as usize);
                    }
                    match source {
                        Source::Nack => self.nack_bufs.recycle(bid),
                        Source::Ingress | Source::Upstream | Source::Dht | Source::Gossip => {
                            self.ingress_bufs.recycle(bid)
                        }
                    }
                } else if res < 0 && res != -libc::ENOBUFS {
                    tracing::warn!(
                        worker = self.core.index,
                        ?source,
                        errno = -res,
                        "receive failed"
                    );
                }
                // A multishot receive ends (ENOBUFS, error, or the kernel
                // deciding so) without the MORE flag: arm it again.
                (!cqueue::more(cqe.flags())).then_some(source)
            }
            UD_WAKE => {
                if let Err(e) = self.arm_wake() {
                    tracing::error!(error = %e, "re-arming the wake read failed");
                }
                None
            }
            UD_TICK => {
                // Recovery timeouts queue transmits; the run loop flushes them.
                self.core.tick(now);
                if let Err(e) = self.arm_tick() {
                    tracing::error!(error = %e, "re-arming the tick failed");
                }
                None
            }
            UD_PEER_WAKE => None,
            UD_MSG_SENT => {
                if res < 0 {
                    // The peer's ring could not take it: use its eventfd.
                    self.core.counters.peer_wake_fallbacks += 1;
                    let peer = (ud & 0xFFFF_FFFF) as usize;
                    if let Some(w) = self.core.wakers.get(peer) {
                        w.wake();
                    }
                }
                None
            }
            UD_SEND => {
                let slot = (ud & 0xFFFF_FFFF) as u32;
                if let Some(mut b) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                    let segments = b.payloads.len() as u64;
                    if res < 0 && segments > 1 && gso_refused(-res) {
                        self.gso_refused(&mut b, -res);
                    } else if res >= 0 {
                        self.core.counters.sent += segments;
                    } else {
                        self.core.counters.send_errors += segments;
                        for p in &b.payloads {
                            self.core.counters.response_send_errors.count(p);
                        }
                        match (b.extra, self.core.dht.as_mut(), self.core.gossip.as_mut()) {
                            (Extra::Dht, Some(shard), _) => shard.counters.send_errors += segments,
                            (Extra::Gossip, _, Some(g)) => g.counters.send_errors += segments,
                            _ => {}
                        }
                    }
                    b.payloads.clear();
                    b.iovs.clear();
                    self.spare.push(b);
                    self.free.push(slot);
                }
                None
            }
            _ => None,
        };
        if let Some(source) = rearm
            && let Err(e) = self.arm_recv(source)
        {
            tracing::error!(error = %e, "re-arming receive failed");
        }
    }

    /// If completion `i` of the round is a NACK, has the memory its answer
    /// reads fetched ahead ([`Core::prefetch_nack`]).
    fn prefetch_nack(&self, now: Instant, i: usize) {
        let cqe = &self.cqes[i];
        let (res, flags) = (cqe.result(), cqe.flags());
        if cqe.user_data() & UD_KIND != UD_NACK || res < 0 {
            return;
        }
        let Some(bid) = cqueue::buffer_select(flags) else { return };
        let Ok(out) = RecvMsgOut::parse(self.nack_bufs.get(bid, res as usize), &self.nack_msg)
        else {
            return;
        };
        self.core.prefetch_nack(now, out.payload_data());
    }

    fn on_datagram(&mut self, now: Instant, source: Source, bid: u16, len: usize) {
        let (bufs, msg) = match source {
            Source::Ingress => (&self.ingress_bufs, &*self.ingress_msg),
            Source::Nack => (&self.nack_bufs, &*self.nack_msg),
            Source::Upstream => (&self.ingress_bufs, &*self.upstream_msg),
            Source::Dht => (&self.ingress_bufs, &*self.dht_msg),
            Source::Gossip => (&self.ingress_bufs, &*self.gossip_msg),
        };
        let Ok(out) = RecvMsgOut::parse(bufs.get(bid, len), msg) else { return };
        if out.is_payload_truncated() {
            let on = match source {
                Source::Ingress => Oversized::Ingress {
                    src: socket_addr(out.name_data()).map(|a| a.ip()),
                    dest: pktinfo_destination(out.control_data()),
                },
                Source::Nack => Oversized::Nack,
                _ => Oversized::Other,
            };
            let max = out.payload_data().len();
            let got = (out.incoming_payload_len() as usize).max(max + 1);
            return self.core.on_oversized(on, max, got);
        }
        // `data` borrows the buffer ring, a field disjoint from `core`; the
        // buffer goes back to the kernel only when the caller recycles it.
        let data = out.payload_data();
        match (source, socket_addr(out.name_data())) {
            (Source::Ingress, src) => {
                let dest = pktinfo_destination(out.control_data());
                self.core.on_ingress(now, data, src.map(|a| a.ip()), dest)
            }
            (Source::Nack, Some(src)) => {
                let local = packet_info(out.control_data()).map(|p| p.local);
                self.core.on_nack(now, src, local, data)
            }
            (Source::Upstream, Some(src)) => self.core.on_upstream(now, src, data),
            (Source::Dht, Some(src)) => self.core.on_dht(now, src, data),
            (Source::Gossip, Some(src)) => self.core.on_gossip(now, src, data),
            _ => {}
        }
    }

    /// Queues one SendMsg per transmit. Each keeps its bytes (a refcount on
    /// the cached frame, or the inline response) in a slot until its
    /// completion.
    fn flush(&mut self) {
        self.flush_dht();
        self.flush_gossip();
        if self.core.outbox.transmits.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend(self.core.outbox.drain_transmits());
        self.gso_order.arrange(&mut pending, self.gso.max_segment());
        let mut runs = std::mem::take(&mut self.runs);
        runs.extend(gso_runs(&pending, self.gso.max_segment()).map(|r| r.len()));
        let mut queued = pending.drain(..);
        for &n in &runs {
            if let Err(e) = self.send(queued.by_ref().take(n)) {
                self.core.counters.send_errors += n as u64;
                tracing::warn!(error = %e, "queueing a send failed");
            }
        }
        drop(queued);
        runs.clear();
        self.runs = runs;
        // The vector goes back empty, its capacity kept for the next round.
        self.pending = pending;
        self.core.reply_sources.trim();
        // No submit here: the run loop's submit_and_wait hands these to the
        // kernel together with the wait, one syscall per round (or
        // submit_early, within a long one).
    }

    /// Queues one SendMsg per datagram the DHT node queued, from the DHT
    /// socket; each owns its bytes until its completion.
    fn flush_dht(&mut self) {
        let (Some(fd), Some(shard)) =
            (self.dht.as_ref().map(|d| d.as_raw_fd()), self.core.dht.as_mut())
        else {
            return;
        };
        if !shard.has_transmits() {
            return;
        }
        let queued: Vec<crate::dht::Transmit> = shard.drain_transmits().collect();
        for t in queued {
            let payload = Payload::Frame(bytes::Bytes::from(t.payload));
            let to = t.dest.into();
            if let Err(e) = self.queue_send(fd, to, None, std::iter::once(payload), Extra::Dht) {
                if let Some(shard) = self.core.dht.as_mut() {
                    shard.counters.send_errors += 1;
                }
                tracing::warn!(error = %e, "queueing a DHT send failed");
            }
        }
    }

    /// Queues one SendMsg per rumor ACK the gossip shard queued, from the
    /// gossip socket.
    fn flush_gossip(&mut self) {
        let (Some(fd), Some(g)) =
            (self.gossip.as_ref().map(|s| s.as_raw_fd()), self.core.gossip.as_mut())
        else {
            return;
        };
        if !g.has_transmits() {
            return;
        }
        let queued: Vec<(std::net::SocketAddr, Vec<u8>)> = g.drain_transmits().collect();
        for (dest, ack) in queued {
            let payload = Payload::Frame(bytes::Bytes::from(ack));
            let to = dest.into();
            if let Err(e) = self.queue_send(fd, to, None, std::iter::once(payload), Extra::Gossip) {
                if let Some(g) = self.core.gossip.as_mut() {
                    g.counters.send_errors += 1;
                }
                tracing::warn!(error = %e, "queueing a gossip ACK failed");
            }
        }
    }

    /// Queues one SendMsg for a GSO run of transmits to one destination
    /// (and, for a multicast retransmit, a copy out of every further egress
    /// interface).
    fn send(&mut self, mut run: impl Iterator<Item = Transmit>) -> io::Result<()> {
        let Some(first) = run.next() else { return Ok(()) };
        let upstream = matches!(first.dest, Dest::Upstream(_));
        let Some(addr) = self.core.destination(&first) else {
            self.core.counters.send_errors += 1 + run.count() as u64;
            return Ok(());
        };
        let fd = if upstream { self.upstream.as_raw_fd() } else { self.nack.as_raw_fd() };
        let from = self.core.source(&first);
        let payloads = std::iter::once(first.payload).chain(run.map(|t| t.payload));
        if !matches!(first.dest, Dest::Group(_)) || self.egress.is_empty() {
            return self.queue_send(fd, addr, from, payloads, Extra::None);
        }
        // The payloads are refcounted: a copy costs a slot, not the bytes.
        let payloads: Vec<Payload> = payloads.collect();
        for i in 0..self.egress.len() {
            let efd = self.egress[i].as_raw_fd();
            let copies = payloads.iter().cloned();
            if self.queue_send(efd, addr.clone(), None, copies, Extra::None).is_err() {
                self.core.counters.send_errors += 1;
            }
        }
        self.queue_send(fd, addr, from, payloads.into_iter(), Extra::None)
    }

    /// The kernel would not segment the GSO send in `slot` (`errno`): its
    /// datagrams are queued again one per SendMsg, and GSO narrows
    /// ([`GsoLimit`]).
    fn gso_refused(&mut self, slot: &mut SendSlot, errno: i32) {
        let segment = slot.payloads.first().map_or(0, |p| p.as_bytes().len());
        let index = self.core.index;
        let to = slot.addr.as_socket();
        let sourced = slot.from.is_some();
        self.gso.on_refused(index, errno, segment, to, sourced, &mut self.core.counters);
        for p in std::mem::take(&mut slot.payloads) {
            let (fd, to, from, extra) = (slot.fd, slot.addr.clone(), slot.from, slot.extra);
            if let Err(e) = self.queue_send(fd, to, from, std::iter::once(p), extra) {
                self.core.counters.send_errors += 1;
                tracing::warn!(error = %e, "queueing a send failed");
            }
        }
    }

    /// Queues one SendMsg of `payloads` (more than one: a GSO send) to
    /// `addr` from `fd`, leaving from the local address `from` when given.
    fn queue_send(
        &mut self,
        fd: std::os::fd::RawFd,
        addr: SockAddr,
        from: Option<std::net::IpAddr>,
        payloads: impl Iterator<Item = Payload>,
        extra: Extra,
    ) -> io::Result<()> {
        let mut slot = self.spare.pop().unwrap_or_else(|| {
            Box::new(SendSlot {
                // SAFETY: plain old data; zero is valid.
                hdr: unsafe { std::mem::zeroed() },
                iovs: Vec::new(),
                cmsg: [0; 8],
                fd,
                addr: addr.clone(),
                from,
                payloads: Vec::new(),
                extra,
            })
        });
        slot.extra = extra;
        slot.payloads.extend(payloads);
        slot.fd = fd;
        slot.addr = addr;
        slot.from = from;
        let slot_ref = &mut *slot;
        slot_ref.iovs.clear();
        for p in &slot_ref.payloads {
            let data = p.as_bytes();
            slot_ref
                .iovs
                .push(libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() });
        }
        // SAFETY: plain old data; zero is valid.
        slot_ref.hdr = unsafe { std::mem::zeroed() };
        slot_ref.hdr.msg_name = slot_ref.addr.as_ptr() as *mut _;
        slot_ref.hdr.msg_namelen = slot_ref.addr.len();
        slot_ref.hdr.msg_iov = slot_ref.iovs.as_mut_ptr();
        slot_ref.hdr.msg_iovlen = slot_ref.iovs.len();
        let segment = (slot_ref.iovs.len() > 1).then(|| slot_ref.iovs[0].iov_len as u16);
        self.core.counters.gso_sends += u64::from(segment.is_some());
        let len = write_send_cmsgs(&mut slot_ref.cmsg, segment, slot_ref.from);
        if len > 0 {
            slot_ref.hdr.msg_control = slot_ref.cmsg.as_mut_ptr().cast();
            slot_ref.hdr.msg_controllen = len;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let hdr = &slot.hdr as *const libc::msghdr;
        self.slots[index as usize] = Some(slot);
        // The slot is boxed and its vectors are not touched until the
        // completion: every pointer in the header stays valid.
        let sqe =
            opcode::SendMsg::new(types::Fd(fd), hdr).build().user_data(UD_SEND | index as u64);
        let pushed = self.push(sqe);
        if pushed.is_err() {
            // The entry never reached the submission queue (it was full and
            // the submit that would have made room failed), so the kernel
            // holds no pointer into the slot: it is free again, its payloads
            // dropped, rather than kept until a completion that never comes.
            if let Some(mut slot) = self.slots[index as usize].take() {
                // Counted here, not on every send: a send that queues is
                // counted by its completion.
                for p in &slot.payloads {
                    self.core.counters.response_send_errors.count(p);
                }
                slot.payloads.clear();
                slot.iovs.clear();
                self.spare.push(slot);
            }
            self.free.push(index);
        }
        pushed
    }
}
