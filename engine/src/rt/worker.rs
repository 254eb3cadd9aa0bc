//! The backend-independent half of a worker: what happens to a datagram
//! once it is read, and what must be sent. `epoll` and `uring` differ only
//! in how bytes move between sockets and these methods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ricochet_wire::frame::Frame;
use socket2::SockAddr;

use super::store_queue::{Answer, DELETE_BATCH, Op, ReplyTo, StoreClient};
use super::sys::EventFd;
use super::{ControlEvent, Options, Shared, WorkerCounters, WorkerSnapshot, owner, socket};
use crate::retry::effects::{Parts, Router, StoreOp, StoreQueue};
use crate::retry::{
    Claims, Dest, Effect, FrameOutcome, Outbox, PendingMulticast, Recovery, Service, Siblings,
    Transmit,
};
use ricochet_wire::frame::FrameKey;

/// What one worker hands another.
#[derive(Debug)]
pub(crate) enum Handoff {
    /// A data frame of a flow the receiver owns, already copied out of the
    /// sender's receive buffer, with the address it arrived from.
    Frame(Bytes, Option<std::net::IpAddr>),
    /// A NACK that arrived on the wrong worker (no steering program), with
    /// the local address it was sent to (its packet info).
    Nack(SocketAddr, Option<std::net::IpAddr>, [u8; 64], u8),
    /// Drop every cached frame of this flow (from `/admin/invalidate`).
    Invalidate(u64),
    /// A new upstream list (upstream discovery).
    Upstreams(Arc<[SocketAddr]>),
    /// The shared store's answer to a parked request.
    Store(u64, Answer),
    /// The live siblings (gossip membership), for gap ownership.
    Siblings(Arc<Siblings>),
    /// Send the hot part of the cache (up to this many bytes) back, for a
    /// sibling's warm restart.
    Export(usize, Sender<Vec<Bytes>>),
    /// A frame from a sibling's snapshot (warm restart): cached like a
    /// recovered frame, never starting an epoch.
    Warm(Bytes),
    /// A DHT datagram that arrived on the wrong worker (no steering
    /// program): handled by the receiver as if read from its own socket.
    DhtDatagram(SocketAddr, Bytes),
    /// A DHT operation from the control thread (discovery).
    Dht(super::DhtRequest),
    /// A rumor whose id this worker owns, read and authenticated by
    /// another worker: `(source, id, frame without its MAC)`.
    GossipRumor(SocketAddr, crate::gossip::RumorId, Bytes),
    /// A rumor this member originated: record it in the dedup shard.
    GossipMark(crate::gossip::RumorId, u8),
    /// A rumor datagram the control thread's socket read (no steering
    /// program): handled as if read from this worker's gossip socket.
    GossipDatagram(SocketAddr, Bytes),
}

/// The socket an oversized datagram arrived on, for
/// [`Core::on_oversized`]'s per-socket counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Oversized {
    /// The data port, with the datagram's source and destination (packet
    /// info): one not multicast to a group, or from a source
    /// `--ingress-allow` does not list, is refused as such, whatever its
    /// size.
    Ingress { src: Option<std::net::IpAddr>, dest: Option<std::net::IpAddr> },
    /// The NACK socket.
    Nack,
    /// The upstream, DHT or gossip socket.
    Other,
}

/// A worker's queue to the shared store, as the router asks it: answers
/// come back to this worker's inbox under the router's token.
struct StoreLink<'a> {
    client: Option<&'a StoreClient>,
    worker: usize,
}

impl StoreQueue for StoreLink<'_> {
    fn try_send(&mut self, token: u64, op: StoreOp) -> bool {
        let reply = ReplyTo { worker: self.worker, token };
        let op = match op {
            StoreOp::Claim { kind, key } => Op::Claim { kind, key, reply },
            StoreOp::Get { key } => Op::Get { key, reply },
        };
        self.client.is_some_and(|c| c.try_send(op).is_ok())
    }
}

/// A worker's sockets.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// Multicast ingress, joined to this worker's groups.
    pub(crate) ingress: socket2::Socket,
    /// Member of the NACK reuseport group; also sends retransmits and
    /// responses.
    pub(crate) nack: socket2::Socket,
    /// Ephemeral-port socket for Proxied NACKs; upstream replies return here.
    pub(crate) upstream: socket2::Socket,
    /// Member of the DHT reuseport group, when the DHT is on.
    pub(crate) dht: Option<socket2::Socket>,
    /// Member of the gossip reuseport group, with a cluster.
    pub(crate) gossip: Option<socket2::Socket>,
    /// One socket per egress interface after the first: each sends a copy
    /// of every multicast retransmit.
    pub(crate) egress: Vec<socket2::Socket>,
}

/// Everything a worker owns besides its sockets and its I/O machinery.
pub(crate) struct Core {
    pub(crate) index: usize,
    workers: usize,
    inbox: Receiver<Handoff>,
    peers: Vec<Sender<Handoff>>,
    pub(crate) wakers: Vec<Arc<EventFd>>,
    pub(crate) shared: Arc<Shared>,
    service: Service,
    recovery: Recovery,
    pub(crate) outbox: Outbox,
    pub(crate) counters: WorkerCounters,
    /// Destination of every group, resolved once.
    group_dests: std::collections::HashMap<u16, SockAddr>,
    /// Peers handed something since the last [`Core::wake_peers`].
    to_wake: Vec<bool>,
    /// The shared store, when `REDIS_ADDR` is set.
    store: Option<StoreClient>,
    /// What the service's effects lead to, and the requests parked for
    /// the store's answer.
    router: Router,
    /// Multicast retransmits sent within the dedup window: the whole dedup
    /// when Redis is down, a shortcut when it is up.
    local_dedup: Claims<FrameKey>,
    /// Live siblings: a gap another one owns is forwarded to it.
    siblings: Arc<Siblings>,
    /// This worker's DHT node, when the DHT is on.
    pub(crate) dht: Option<super::dht_shard::Shard>,
    /// This worker's gossip member and rumor-dedup shard, with a cluster.
    pub(crate) gossip: Option<super::gossip_shard::Shard>,
    /// `-debug` per-event lines.
    events: super::event_log::EventLog,
    /// Picks the NACKs traced over OTLP (`--trace-sampling`).
    nack_trace: Option<super::nack_trace::NackSampler>,
    /// What the ingress socket's datagrams must have been sent to.
    ingress_filter: socket::IngressFilter,
    /// The local address each requester's NACK was sent to, for the
    /// replies' source.
    pub(crate) reply_sources: super::reply_source::ReplySources,
    pub(crate) opts: Options,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(
        index: usize,
        opts: &Options,
        inbox: Receiver<Handoff>,
        peers: Vec<Sender<Handoff>>,
        wakers: Vec<Arc<EventFd>>,
        shared: Arc<Shared>,
    ) -> Self {
        let workers = peers.len();
        let limits = shared.limits.clone();
        Core {
            index,
            workers,
            inbox,
            peers,
            wakers,
            shared,
            service: Service::with_shared_limits(opts.retry.clone(), limits, Instant::now()),
            recovery: Recovery::new(opts.recovery.clone()),
            outbox: Outbox::default(),
            counters: WorkerCounters::default(),
            group_dests: std::collections::HashMap::new(),
            to_wake: vec![false; workers],
            store: opts.store.clone(),
            router: Router::default(),
            local_dedup: Claims::new(opts.dedup_window, 1 << 20),
            siblings: Arc::default(),
            dht: opts.dht.as_ref().map(|d| {
                let (now, unix) = (Instant::now(), crate::wallclock::unix_secs());
                super::dht_shard::Shard::new(index, workers, d, opts.nack_bind, now, unix)
            }),
            gossip: opts
                .gossip
                .as_ref()
                .map(|g| super::gossip_shard::Shard::new(index, workers, g)),
            events: super::event_log::EventLog::new(opts.debug_events),
            nack_trace: opts.nack_tracing.as_ref().map(|t| t.sampler(index)),
            ingress_filter: socket::IngressFilter::new(opts),
            reply_sources: super::reply_source::ReplySources::new(opts.nack_bind),
            opts: opts.clone(),
        }
    }

    fn drop_reason(&mut self, e: ricochet_wire::Error) {
        *self.counters.dropped.entry(e.reason()).or_default() += 1;
    }

    /// A datagram from the ingress socket, sent from `src` to `dest` (its
    /// packet info): refused unless `dest` is a configured group (the `rt`
    /// docs, "What ingress accepts"), then validated here (cheap) so
    /// garbage is neither copied nor handed off, then cached here or by its
    /// owner.
    pub(crate) fn on_ingress(
        &mut self,
        now: Instant,
        data: &[u8],
        src: Option<std::net::IpAddr>,
        dest: Option<std::net::IpAddr>,
    ) {
        if !self.admit_ingress(src, dest) {
            return;
        }
        let frame = match Frame::new_checked(data) {
            Ok(f) => f,
            Err(e) => {
                self.counters.fabric_malformed += 1;
                return self.drop_reason(e);
            }
        };
        let dest = frame.key().map_or(self.index, |k| owner(k.hash_key, self.workers));
        if dest == self.index {
            // The one copy: receive buffer → the cache's segment log.
            self.store(now, data, src);
        } else {
            self.handoff(dest, Handoff::Frame(Bytes::copy_from_slice(data), src));
        }
    }

    /// Caches a frame from the fabric this worker owns; a new epoch (a
    /// restarted proxy reusing its HashKey) is reported to the control
    /// thread for `/events`.
    fn store(&mut self, now: Instant, bytes: &[u8], src: Option<std::net::IpAddr>) {
        let outcome = self.service.on_frame(now, bytes, None);
        if outcome.is_ok() {
            self.counters.fabric_frames += 1;
        }
        if let Ok(FrameOutcome::Cached { .. } | FrameOutcome::Duplicate(_)) = outcome {
            self.counters.fabric_frames_cached += 1;
            self.counters.cached_by_source.add(src);
        }
        match outcome {
            Ok(FrameOutcome::Cached { key, new_epoch, ttl, .. }) => {
                if self.events.enabled() {
                    let txid = Frame::new_checked(bytes).map(|f| *f.id()).unwrap_or([0; 32]);
                    self.events.cached(now, &txid, key.hash_key, key.seq);
                }
                if new_epoch
                    && self
                        .shared
                        .events
                        .try_send(ControlEvent::EpochReset { hash_key: key.hash_key })
                        .is_err()
                {
                    self.counters.events_dropped += 1;
                }
                if new_epoch {
                    // The shared cache still holds the old epoch's frames
                    // under these keys: the candidates promoted with this
                    // frame replace theirs, and the old epoch's other keys
                    // are deleted.
                    let old = self.service.take_dropped_epoch(key.hash_key);
                    if self.shared_store().is_some() {
                        let frames = self.service.flow_frames(now, key.hash_key);
                        if let Some(old) = old {
                            self.unshare_epoch(key.hash_key, old.seqs(), &frames);
                        }
                        for (key, ttl, frame) in frames {
                            self.share_frame(key, ttl, &frame);
                        }
                    }
                } else {
                    self.share_frame(key, ttl, bytes);
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.counters.fabric_malformed += 1;
                self.drop_reason(e);
            }
        }
    }

    /// Where cached frames are shared, if they are (`CACHE_BACKEND=redis`).
    fn shared_store(&self) -> Option<&StoreClient> {
        self.store.as_ref().filter(|s| s.shared_cache)
    }

    /// Deletes from the shared cache the keys of flow `hash_key`'s old
    /// epoch (`old`: the SeqNums it held, ascending) that the new epoch
    /// (`frames`, in SeqNum order) does not hold, in batches of
    /// [`DELETE_BATCH`]; a full queue drops a batch (counted). No more
    /// keys than frames the old epoch had cached here.
    fn unshare_epoch(
        &mut self,
        hash_key: u64,
        old: impl Iterator<Item = u64>,
        frames: &[(FrameKey, std::time::Duration, Bytes)],
    ) {
        let Some(store) = self.shared_store() else { return };
        let mut keys = Vec::with_capacity(DELETE_BATCH);
        let mut dropped = 0;
        for seq in not_held(old, frames.iter().map(|(k, ..)| k.seq)) {
            keys.push(FrameKey { hash_key, seq });
            if keys.len() == DELETE_BATCH {
                let batch = std::mem::replace(&mut keys, Vec::with_capacity(DELETE_BATCH));
                dropped += u64::from(store.try_send(Op::Delete { keys: batch }).is_err());
            }
        }
        if !keys.is_empty() {
            dropped += u64::from(store.try_send(Op::Delete { keys }).is_err());
        }
        self.counters.store_deletes_dropped += dropped;
    }

    /// Writes a newly cached frame to the shared cache, if there is one; a
    /// full queue drops the write (counted).
    fn share_frame(&mut self, key: FrameKey, ttl: std::time::Duration, frame: &[u8]) {
        let Some(store) = self.shared_store() else { return };
        let frame = Bytes::copy_from_slice(frame);
        if store.try_send(Op::Put { key, ttl, frame }).is_err() {
            self.counters.store_puts_dropped += 1;
        }
    }

    /// Counts an ingress datagram from `src` to `dest` and whether it may
    /// be looked at: only multicast to a configured group, from a source
    /// `--ingress-allow` lists when it lists any (the `rt` docs, "What
    /// ingress accepts"); anything else is counted under its reason.
    fn admit_ingress(
        &mut self,
        src: Option<std::net::IpAddr>,
        dest: Option<std::net::IpAddr>,
    ) -> bool {
        self.counters.ingress_datagrams += 1;
        let reason = match self.ingress_filter.admit(src, dest) {
            Ok(()) => return true,
            Err(socket::Refused::NotMulticast) => super::NOT_MULTICAST,
            Err(socket::Refused::SourceNotAllowed) => super::SOURCE_NOT_ALLOWED,
        };
        *self.counters.dropped.entry(reason).or_default() += 1;
        false
    }

    /// A datagram too long for the socket it arrived on (`got` bytes, or
    /// more: the kernel truncated it to `max`), dropped as `too_long` —
    /// the one label both backends use (the `rt` docs, "Oversized
    /// datagrams").
    pub(crate) fn on_oversized(&mut self, on: Oversized, max: usize, got: usize) {
        match on {
            Oversized::Ingress { src, dest } => {
                if !self.admit_ingress(src, dest) {
                    return;
                }
                self.counters.fabric_malformed += 1;
            }
            Oversized::Nack => self.counters.nack_datagrams += 1,
            Oversized::Other => {}
        }
        self.drop_reason(ricochet_wire::Error::TooLong { max, got });
    }

    /// Fetches ahead what answering the NACK `data` will read
    /// ([`Service::nack_footprint`]), when this worker owns it: call a few
    /// NACKs of a batch ahead of answering them ([`fetch_ahead`]).
    pub(crate) fn prefetch_nack(&self, now: Instant, data: &[u8]) {
        let owned = ricochet_wire::control::peek_nack_key(data)
            .is_some_and(|k| owner(k, self.workers) == self.index);
        if owned {
            self.service.nack_footprint(now, data, super::sys::prefetch);
        }
    }

    /// A datagram from the NACK socket, sent from `src` to the local
    /// address `local` (its packet info, when the socket asks for it).
    pub(crate) fn on_nack(
        &mut self,
        now: Instant,
        src: SocketAddr,
        local: Option<std::net::IpAddr>,
        data: &[u8],
    ) {
        if data.len() > super::MAX_NACK_DATAGRAM {
            return self.on_oversized(Oversized::Nack, super::MAX_NACK_DATAGRAM, data.len());
        }
        self.counters.nack_datagrams += 1;
        let dest = ricochet_wire::control::peek_nack_key(data)
            .map_or(self.index, |k| owner(k, self.workers));
        if dest != self.index && data.len() <= 64 {
            let mut copy = [0u8; 64];
            copy[..data.len()].copy_from_slice(data);
            self.counters.nacks_forwarded += 1;
            self.handoff(dest, Handoff::Nack(src, local, copy, data.len() as u8));
            return;
        }
        self.reply_sources.note(src, local);
        if let Err(e) = self.answer_nack(now, src, data) {
            self.drop_reason(e);
        }
        self.take_effects(now);
    }

    /// [`Core::serve_nack`], traced when the sampler picks the NACK (an
    /// unsampled one costs the sampler one draw): the span ends once the
    /// answer's effects are settled.
    fn answer_nack(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
    ) -> Result<(), ricochet_wire::Error> {
        let Some(begun) = self.nack_trace.as_mut().and_then(|t| t.begin(now, &self.service)) else {
            return self.serve_nack(now, src, data);
        };
        let r = self.serve_nack(now, src, data);
        self.take_effects(now);
        if let Some(t) = &self.nack_trace {
            t.end(begun, Instant::now(), data, &self.service);
        }
        r
    }

    /// Serves a NACK this worker owns, writing the `-debug` per-event
    /// lines when they are on.
    fn serve_nack(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
    ) -> Result<(), ricochet_wire::Error> {
        if !self.events.enabled() {
            return self.service.on_nack(now, src, data, &mut self.outbox);
        }
        let before = self.service.stats();
        let r = self.service.on_nack(now, src, data, &mut self.outbox);
        if let Ok(n) = ricochet_wire::control::Nack::new_checked(data) {
            let after = self.service.stats();
            self.events.nack(now, n.hash_key(), n.start_seq(), &before, &after);
        }
        r
    }

    /// A datagram from the DHT socket: handled here if this worker owns it,
    /// else handed to its owner (the steering program is missing).
    pub(crate) fn on_dht(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let Some(shard) = self.dht.as_mut() else { return };
        shard.counters.datagrams += 1;
        let dest = shard.owner(data);
        // Longer than any valid DHT message: not worth a copy, the node
        // here drops and counts it.
        if dest == self.index || data.len() > super::dht_shard::MAX_FORWARD {
            shard.on_datagram(now, src, data);
        } else {
            shard.counters.forwarded += 1;
            self.handoff(dest, Handoff::DhtDatagram(src, Bytes::copy_from_slice(data)));
        }
    }

    /// A datagram from the gossip socket: a rumor is decided here if this
    /// worker owns its id, else handed to its owner; anything else goes to
    /// the control thread (see `gossip_shard`).
    pub(crate) fn on_gossip(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        use super::gossip_shard::Read;
        let Some(g) = self.gossip.as_mut() else { return };
        match g.read(self.index, src, data) {
            Read::Done => {}
            Read::Own(id, body) => g.decide(now, src, &id, body),
            Read::Forward(owner, id, body) => {
                let h = Handoff::GossipRumor(src, id, Bytes::copy_from_slice(body));
                self.handoff(owner, h);
            }
        }
    }

    /// Carries out the service's effects until none are left (finishing
    /// one can queue another, e.g. a shared-cache miss asks for recovery):
    /// the policy is `retry::effects`; this worker lends it its state and
    /// its queue to the store.
    fn take_effects(&mut self, now: Instant) {
        self.with_router(|r, parts, store| r.route(now, parts, store));
    }

    /// A store answer arrived.
    fn on_store_answer(&mut self, now: Instant, token: u64, answer: Answer) {
        self.with_router(|r, parts, store| r.on_answer(now, token, answer, parts, store));
    }

    /// Goes ahead with requests whose answer is overdue.
    fn expire_store_waits(&mut self, now: Instant) {
        let deadline = super::STORE_ANSWER_DEADLINE;
        self.with_router(|r, parts, store| r.expire(now, deadline, parts, store));
    }

    /// Runs `f` with the router, the worker state it acts on and the
    /// worker's store queue.
    fn with_router<R>(
        &mut self,
        f: impl FnOnce(&mut Router, &mut Parts<'_>, &mut StoreLink<'_>) -> R,
    ) -> R {
        let mut parts = Parts {
            service: &mut self.service,
            recovery: &mut self.recovery,
            siblings: &self.siblings,
            local_dedup: &mut self.local_dedup,
            outbox: &mut self.outbox,
        };
        let mut store = StoreLink { client: self.store.as_ref(), worker: self.index };
        f(&mut self.router, &mut parts, &mut store)
    }

    /// A datagram on the upstream socket: an upstream's answer to a Proxied
    /// NACK. A recovered frame is re-cached and multicast into this domain,
    /// so every listener that lost it gets it.
    pub(crate) fn on_upstream(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        self.counters.upstream_datagrams += 1;
        if self.siblings.others().iter().any(|s| s.nack == src)
            && Frame::new_checked(data).is_err()
            && !self.recovery.is_waiting_on(src)
        {
            // The owner's MISS or ACK to a forwarded NACK: the frame itself
            // reaches this domain by multicast. (A sibling asked for a fill
            // answers into the recovery path below.)
            self.counters.sibling_replies += 1;
            return;
        }
        let Some(rec) = self.recovery.on_datagram(now, src, data, &mut self.outbox.transmits)
        else {
            return;
        };
        match self.service.on_recovered_frame(now, rec.frame.clone()) {
            Ok(FrameOutcome::Cached { key, group, ttl, .. }) => {
                self.share_frame(key, ttl, &rec.frame);
                if self.opts.retry.multicast_retransmit {
                    let m = PendingMulticast {
                        key,
                        group,
                        frame: rec.frame,
                        ack_to: None,
                        ack_flags: 0,
                    };
                    if self.opts.retry.retransmit_dedup {
                        // Siblings must not repeat it: the router claims it.
                        self.outbox.effects.push(Effect::Multicast(m));
                        self.take_effects(now);
                    } else {
                        self.service.on_multicast_claim(m, true, &mut self.outbox);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => self.drop_reason(e),
        }
    }

    /// Takes everything peers handed over. Returns whether anything came.
    pub(crate) fn drain_inbox(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Ok(h) = self.inbox.try_recv() {
            self.counters.handoffs_in += 1;
            any = true;
            let r = match h {
                Handoff::Frame(bytes, src) => {
                    self.store(now, &bytes, src);
                    Ok(())
                }
                Handoff::Nack(src, local, buf, len) => {
                    self.reply_sources.note(src, local);
                    self.answer_nack(now, src, &buf[..len as usize])
                }
                Handoff::Invalidate(hash_key) => {
                    self.service.invalidate(hash_key);
                    Ok(())
                }
                Handoff::Upstreams(list) => {
                    self.recovery.set_upstreams(list.to_vec());
                    Ok(())
                }
                Handoff::Siblings(view) => {
                    self.service.set_siblings(view.clone());
                    self.siblings = view;
                    Ok(())
                }
                Handoff::Export(max_bytes, reply) => {
                    let _ = reply.try_send(self.service.cache().hot(now, max_bytes));
                    Ok(())
                }
                Handoff::Warm(frame) => {
                    self.counters.warm_frames += 1;
                    self.service.on_recovered_frame(now, frame).map(|_| ())
                }
                Handoff::Store(token, answer) => {
                    self.on_store_answer(now, token, answer);
                    Ok(())
                }
                Handoff::DhtDatagram(src, bytes) => {
                    if let Some(shard) = self.dht.as_mut() {
                        shard.counters.forwarded_in += 1;
                        shard.on_datagram(now, src, &bytes);
                    }
                    Ok(())
                }
                Handoff::Dht(req) => {
                    if let Some(shard) = self.dht.as_mut() {
                        shard.on_request(now, req);
                    }
                    Ok(())
                }
                Handoff::GossipRumor(src, id, body) => {
                    if let Some(g) = self.gossip.as_mut() {
                        g.counters.forwarded_in += 1;
                        g.decide(now, src, &id, &body);
                    }
                    Ok(())
                }
                Handoff::GossipMark(id, flags) => {
                    if let Some(g) = self.gossip.as_mut() {
                        g.shard.mark(id, flags);
                    }
                    Ok(())
                }
                Handoff::GossipDatagram(src, bytes) => {
                    if let Some(g) = self.gossip.as_mut() {
                        g.counters.forwarded_in += 1;
                    }
                    self.on_gossip(now, src, &bytes);
                    Ok(())
                }
            };
            if let Err(e) = r {
                self.drop_reason(e);
            }
        }
        self.take_effects(now);
        any
    }

    fn handoff(&mut self, dest: usize, h: Handoff) {
        match self.peers[dest].try_send(h) {
            Ok(()) => {
                self.counters.handoffs_out += 1;
                self.to_wake[dest] = true;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.handoff_drops += 1;
            }
        }
    }

    /// One wake-up per peer that received something this round, by the
    /// backend's means (`wake(peer index, peer's eventfd)`).
    pub(crate) fn wake_peers(&mut self, mut wake: impl FnMut(usize, &EventFd)) {
        for (i, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                self.counters.peer_wakes += 1;
                wake(i, &self.wakers[i]);
            }
        }
    }

    /// The local address a transmit leaves from: for a reply to a
    /// requester, the one its NACK was sent to ([`ReplySources`]); `None`
    /// (the kernel's choice) otherwise.
    ///
    /// [`ReplySources`]: super::reply_source::ReplySources
    pub(crate) fn source(&self, t: &Transmit) -> Option<std::net::IpAddr> {
        match t.dest {
            Dest::Unicast(a) => self.reply_sources.get(a),
            Dest::Group(_) | Dest::Upstream(_) => None,
        }
    }

    /// The socket address a transmit goes to (group addresses resolved
    /// once and remembered).
    pub(crate) fn destination(&mut self, t: &Transmit) -> Option<SockAddr> {
        match t.dest {
            Dest::Unicast(a) | Dest::Upstream(a) => Some(a.into()),
            Dest::Group(g) => {
                if let Some(d) = self.group_dests.get(&g) {
                    return Some(d.clone());
                }
                let d = socket::group_dest(&self.opts, g)?;
                self.group_dests.insert(g, d.clone());
                Some(d)
            }
        }
    }

    /// Periodic work: recovery timeouts (their Proxied NACKs to the next
    /// upstream land in the outbox), cache expiry, and statistics for the
    /// control thread.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.recovery.handle_timeouts(now, &mut self.outbox.transmits);
        self.expire_store_waits(now);
        self.local_dedup.expire(now);
        self.service.expire(now);
        if let Some(shard) = self.dht.as_mut() {
            shard.tick(now, crate::wallclock::unix_secs());
        }
        if let Some(g) = self.gossip.as_mut() {
            g.tick(now);
        }
        self.publish();
    }

    pub(crate) fn publish(&mut self) {
        let routing = self.router.stats();
        self.counters.store_pending = self.router.parked() as u64;
        self.counters.store_unavailable = routing.store_unavailable;
        self.counters.gaps_forwarded_to_owner = routing.gaps_forwarded_to_owner;
        let holdings = self.service.cache().holdings(super::HOLDINGS_PER_WORKER);
        let dht = self.dht.as_mut().map(|d| d.snapshot(Instant::now()));
        let gossip = self.gossip.as_mut().map(|g| g.snapshot());
        if let Ok(mut s) = self.shared.snapshots[self.index].lock() {
            *s = WorkerSnapshot {
                cpu: self.opts.cpus.get(self.index).copied().unwrap_or(0),
                counters: self.counters.clone(),
                retry: self.service.stats(),
                recovery: self.recovery.stats(),
                dht,
                gossip,
                holdings,
            };
        }
    }
}

/// The SeqNums of `old` (ascending) that `held` (ascending) does not
/// name, in order.
fn not_held(
    old: impl Iterator<Item = u64>,
    held: impl IntoIterator<Item = u64>,
) -> impl Iterator<Item = u64> {
    let mut held = held.into_iter().peekable();
    old.filter(move |&seq| {
        while held.next_if(|&h| h < seq).is_some() {}
        held.next_if_eq(&seq).is_none()
    })
}

/// How many datagrams of a batch ahead of the one being answered the
/// workers fetch a NACK's memory ([`Core::prefetch_nack`]). Fetching the
/// whole batch first ran out of the core's miss buffers and the lines left
/// L1 before their NACK's turn; 8 ahead measured best of 4, 8, 16, 32 and
/// all (perf/prefetch-2026-12-07.md).
pub(crate) const FETCH_AHEAD: usize = 8;

/// The items of a batch of `n` to fetch ahead just before answering item
/// `i`: the first [`FETCH_AHEAD`] + 1 at item 0, then the one
/// [`FETCH_AHEAD`] further on. Each item is fetched once, and before its
/// answer.
pub(crate) fn fetch_ahead(i: usize, n: usize) -> std::ops::Range<usize> {
    if i == 0 {
        0..n.min(FETCH_AHEAD + 1)
    } else {
        let j = i + FETCH_AHEAD;
        if j < n { j..j + 1 } else { 0..0 }
    }
}

#[cfg(test)]
mod tests {
    use super::{FETCH_AHEAD, fetch_ahead, not_held};

    #[test]
    fn a_batch_is_fetched_once_each_and_a_few_items_ahead() {
        for n in [0, 1, FETCH_AHEAD, FETCH_AHEAD + 1, FETCH_AHEAD + 2, 32, 170] {
            let mut fetched = vec![];
            for i in 0..n {
                fetched.extend(fetch_ahead(i, n));
                assert!(fetched.contains(&i), "n {n}: item {i} answered before it was fetched");
                let lead = fetched.last().unwrap() - i;
                assert!(lead <= FETCH_AHEAD, "n {n}: {lead} ahead of item {i}");
                if i + FETCH_AHEAD < n {
                    assert_eq!(lead, FETCH_AHEAD, "n {n}: item {i}");
                }
            }
            assert_eq!(fetched, (0..n).collect::<Vec<_>>(), "n {n}: once each, in order");
        }
    }

    #[test]
    fn an_old_epoch_is_deleted_except_what_the_new_one_holds() {
        let v = |i: &mut dyn Iterator<Item = u64>| i.collect::<Vec<_>>();
        assert_eq!(v(&mut not_held(1..=10, [1, 2, 3])), (4..=10).collect::<Vec<_>>());
        assert_eq!(v(&mut not_held(1..=10, [0, 2, 5, 11])), [1, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(v(&mut not_held(5..=6, [5, 6])), [0u64; 0]);
        assert_eq!(v(&mut not_held(5..=6, [])), [5, 6]);
    }
}
