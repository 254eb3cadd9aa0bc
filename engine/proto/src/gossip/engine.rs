//! The gossip engine: one sans-IO state machine tying the hypercube, the
//! dedup LRU, the ACK tracker, anti-entropy and the limits together.
//!
//! # Contract
//! - Inputs: [`Gossip::handle`] (a datagram), [`Gossip::handle_timeout`]
//!   (the timer from [`Gossip::poll_timeout`] fired) and the commands
//!   [`Gossip::set_members`], [`Gossip::publish`], [`Gossip::query`],
//!   [`Gossip::pull`], [`Gossip::reconcile`], [`Gossip::send_frame`].
//!   Outputs: datagrams and
//!   [`Event`]s in the caller's [`Outbox`], moved there at the end of every
//!   call (datagrams only as far as the egress cap allows; the rest wait
//!   for a later call or the egress timer).
//! - The protocol rules are in the [module docs](super); the invariants
//!   kept here: a rumor body is retained exactly as long as a send of it
//!   awaits an ACK; watermarks move only on completed exchanges; every
//!   table is bounded by a [`Config`] field; no input panics.

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ricochet_wire::Error as WireError;
use ricochet_wire::gossip::{
    Cells, DigestRepr, ExchangeRepr, GossipFrame, IbltCell, MAX_PULL_RESPONSE, ORIGIN_DIMENSION,
    PullRepr, ReconcileKind, ReconcileMode, ReconcileRepr, RumorAckRepr, RumorRepr, rumor_id,
};
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD, Opened};

use super::dedup::{Admission, DELIVERED, FWD_DUAL, FWD_FALLBACK, FWD_PRIMARY, RumorLru};
use super::entries::{self, Chunked, Entries, META_BACKPRESSURE};
use super::hypercube::{Cube, DimensionHealth, Sender, expected_sender, tree_targets};
use super::iblt::{self, Difference, HASH_COUNT, Iblt, RatelessEncoder};
use super::limit::{EgressQueue, PeerLimiter, TokenBucket};
use super::reconcile::{self, Assembly, Fed, Stream};
use super::replay::{ReplayGuard, Sealer};
use super::stats::Stats;
use super::sync::{AdaptiveInterval, Backoff, Outcome, PeerSync};
use super::{
    AMPLIFICATION, Config, Event, Member, Outbox, PublishError, Store, TopicError, TopicMode,
    Transmit,
};
use crate::dht::rng::Rng;

/// A rumor's id: BLAKE3-256 of its payload.
pub type RumorId = [u8; 32];

/// Names one [`Gossip::query`]; carried in its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u32);

/// G3 from-dimension: random-peer fallback push.
pub const FALLBACK_DIMENSION: u8 = 0xFE;
/// G3 from-dimension bit: the dual cube.
pub const DUAL_BIT: u8 = 0x80;
/// G3 from-dimension bit: sent around a silent member (no sender check).
pub const REROUTE_BIT: u8 = 0x40;
/// Highest dimension the from-dimension byte can name.
pub const MAX_DIMENSION: u8 = 0x1F;

/// G1 exchange-id bit 31: this chunk answers a request, a pull or a query.
const RESPONSE_BIT: u32 = 0x8000_0000;
/// Times a G4 session we decode asks again for cells that did not arrive.
const MAX_GAP_REQUESTS: u8 = 3;
/// Egress priority of G5 ACKs: above everything else.
const ACK_PRIORITY: u8 = u8::MAX;
/// Bytes of a G1 frame besides its topic and entries.
const G1_OVERHEAD: usize = 24;
/// Bytes of a G3 frame besides its topic and payload.
const G3_OVERHEAD: usize = 10;
/// Bytes a query adds in front of its payload: query id and origin id.
const QUERY_HEADER: usize = 4 + 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Primary,
    Dual,
    Fallback,
}

impl Route {
    fn flag(self) -> u8 {
        match self {
            Route::Primary => FWD_PRIMARY,
            Route::Dual => FWD_DUAL,
            Route::Fallback => FWD_FALLBACK,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    Origin,
    Cube { route: Route, dim: u32, rerouted: bool },
    Fallback,
}

fn decode_dimension(b: u8) -> Option<Arrival> {
    match b {
        ORIGIN_DIMENSION => Some(Arrival::Origin),
        FALLBACK_DIMENSION => Some(Arrival::Fallback),
        _ if b & 0x20 != 0 => None,
        _ => {
            let route = if b & DUAL_BIT != 0 { Route::Dual } else { Route::Primary };
            Some(Arrival::Cube {
                route,
                dim: u32::from(b & MAX_DIMENSION),
                rerouted: b & REROUTE_BIT != 0,
            })
        }
    }
}

fn encode_dimension(route: Route, dim: u32, rerouted: bool) -> u8 {
    let d = (dim as u8) & MAX_DIMENSION;
    let r = if rerouted { REROUTE_BIT } else { 0 };
    match route {
        Route::Primary => d | r,
        Route::Dual => DUAL_BIT | d | r,
        Route::Fallback => FALLBACK_DIMENSION,
    }
}

/// A rumor body kept while sends of it await ACKs.
#[derive(Debug)]
struct Held {
    topic: Vec<u8>,
    payload: Vec<u8>,
    priority: u8,
    refs: u32,
}

#[derive(Debug, Clone, Copy)]
struct PendingAck {
    rumor: RumorId,
    target: SocketAddr,
    route: Route,
    dim: u32,
    target_pos: usize,
    epoch: u64,
    hop: u8,
    attempt: u8,
    /// Fallback: the member we got the rumor from (never pushed back to).
    source: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Ack(u64),
    Round(u64),
    Exchange(u32),
    Pull(u64),
    Query(u32),
    Reconcile(u32),
    Gap(SocketAddr, u32),
}

/// Which chunks of an exchange have arrived.
#[derive(Debug, Clone)]
struct Chunks {
    count: u16,
    seen: Vec<u64>,
    missing: u16,
}

impl Chunks {
    fn new(count: u16) -> Self {
        Chunks { count, seen: vec![0; usize::from(count).div_ceil(64)], missing: count }
    }

    /// Marks a chunk; false if it was already seen (or out of range).
    fn mark(&mut self, index: u16) -> bool {
        if index >= self.count {
            return false;
        }
        let i = usize::from(index);
        let Some(w) = self.seen.get_mut(i / 64) else { return false };
        let bit = 1u64 << (i % 64);
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.missing -= 1;
        true
    }

    fn complete(&self) -> bool {
        self.missing == 0
    }
}

/// An exchange we started.
#[derive(Debug)]
struct OutExchange {
    peer: SocketAddr,
    topic: Vec<u8>,
    full: bool,
    /// Our watermark when we sent (None if the request was cut short).
    sent_to: Option<i64>,
    deadline: Instant,
    /// The answer: its chunks, watermark and full flag, once it starts.
    answer: Option<(Chunks, i64, bool)>,
    applied: u64,
    backpressure: bool,
}

/// A peer's exchange we are reassembling and answering.
#[derive(Debug)]
struct InExchange {
    topic: Vec<u8>,
    full: bool,
    watermark: i64,
    chunks: Chunks,
    applied: u64,
    /// Element ids of the records the initiator sent: the answer leaves
    /// them out (it holds them), so a delta is not echoed back.
    received: BTreeSet<u64>,
    answered: bool,
    deadline: Instant,
}

#[derive(Debug)]
struct PullState {
    peer: SocketAddr,
    topic: Vec<u8>,
    answer: Option<(u32, Chunks, i64, bool)>,
    applied: u64,
}

/// A G4 reconciliation session we started: we hold the table or stream.
#[derive(Debug)]
struct OutSession {
    peer: SocketAddr,
    topic: Vec<u8>,
    mode: ReconcileMode,
    /// Extended on every frame of progress.
    deadline: Instant,
    /// Our store's watermark when the table was built.
    mark: i64,
    /// Fixed: the whole table. Rateless: the symbols produced so far (kept
    /// for re-requests; at most `reconcile_max_symbols`).
    cells: Vec<IbltCell>,
    encoder: Option<RatelessEncoder>,
    per_frame: usize,
    /// Cells we may still send in answer to requests (so a peer cannot make
    /// us resend a table or stream without end).
    budget: usize,
    /// The keys the responder lacks, as the reply arrives.
    reply: Option<Assembly>,
    /// We sent the records the reply asked for.
    answered: bool,
    /// The responder's record chunks, and its watermark.
    records: Option<(Chunks, i64)>,
    applied: u64,
    backpressure: bool,
}

/// A peer's G4 session we are decoding.
#[derive(Debug)]
struct InSession {
    topic: Vec<u8>,
    mode: ReconcileMode,
    deadline: Instant,
    per_frame: usize,
    state: InState,
    /// When to ask again for cells that have not arrived (pushed back by
    /// every frame of progress), if armed.
    gap_at: Option<Instant>,
    /// A `Timer::Gap` for this session is pending.
    gap_timer: bool,
    gap_requests: u8,
}

#[derive(Debug)]
enum InState {
    /// A fixed table arriving.
    Table(Assembly),
    /// A rateless stream arriving.
    Stream(Box<Stream>),
    /// Decoded and answered; the records we asked for are on their way.
    Awaiting { chunks: Option<Chunks>, applied: u64 },
    /// Finished or failed; kept until the deadline so late frames of the
    /// session are recognised and ignored.
    Done,
}

impl InSession {
    fn active(&self) -> bool {
        !matches!(self.state, InState::Done)
    }
}

#[derive(Debug)]
struct QueryState {
    topic: Vec<u8>,
    replies: u32,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    seq: u64,
    peer: SocketAddr,
    /// The peer answered the probe with an exchange (either direction).
    syncing: bool,
}

#[derive(Debug, Default)]
struct PeerState {
    topics: BTreeMap<Vec<u8>, PeerSync>,
    backoff: Backoff,
    failures: u32,
}

#[derive(Debug)]
struct TopicState {
    mode: TopicMode,
    priority: u8,
    subscribed: bool,
    hash: u64,
}

/// A frame waiting for egress budget. It is sealed (stamped and MACed)
/// only when it leaves the queue, so stamp counters follow wire order.
#[derive(Debug)]
struct OutDatagram {
    dest: SocketAddr,
    /// The frame; the envelope is appended on the way out.
    payload: Vec<u8>,
    /// Zero bytes of padding the envelope carries.
    padding: usize,
    frame: u8,
}

impl OutDatagram {
    /// Bytes on the wire once sealed.
    fn wire_len(&self) -> usize {
        self.payload.len() + self.padding + GOSSIP_OVERHEAD
    }
}

/// The gossip engine (see the [module docs](super)).
#[derive(Debug)]
pub struct Gossip {
    config: Config,
    key: ClusterKey,
    me: Member,
    rng: Rng,
    members: Vec<Member>,
    by_addr: BTreeMap<SocketAddr, usize>,
    by_id: BTreeMap<[u8; 32], usize>,
    self_index: usize,
    primary: Cube,
    dual: Cube,
    health: [DimensionHealth; 2],
    epoch: u64,
    mismatch_until: Option<Instant>,
    topics: BTreeMap<Vec<u8>, TopicState>,
    dedup: RumorLru,
    held: BTreeMap<RumorId, Held>,
    pending: BTreeMap<u64, PendingAck>,
    pending_index: BTreeMap<(RumorId, SocketAddr), u64>,
    next_seq: u64,
    timers: BTreeSet<(Instant, Timer)>,
    peers: BTreeMap<SocketAddr, PeerState>,
    limiter: PeerLimiter,
    egress: EgressQueue<OutDatagram>,
    egress_bucket: TokenBucket,
    egress_wakeup: Option<Instant>,
    interval: AdaptiveInterval,
    next_probe: Option<Instant>,
    round: Option<Round>,
    probe_order: Vec<SocketAddr>,
    probe_cursor: usize,
    outbound: BTreeMap<u32, OutExchange>,
    inbound: BTreeMap<(SocketAddr, u32), InExchange>,
    pulls: BTreeMap<u64, PullState>,
    pull_index: BTreeMap<(SocketAddr, Vec<u8>), u64>,
    queries: BTreeMap<u32, QueryState>,
    out_sessions: BTreeMap<u32, OutSession>,
    in_sessions: BTreeMap<(SocketAddr, u32), InSession>,
    events: Vec<Event>,
    /// Rumors originated here, for the caller's dedup shards
    /// ([`Config::external_dedup`]).
    marks: Vec<(RumorId, u8)>,
    /// G3 datagrams queued so far (to count forwards).
    queued_rumors: u64,
    /// Stamps what we send.
    sealer: Sealer,
    /// Refuses replayed and out-of-window datagrams.
    guard: ReplayGuard,
    /// The wall clock anchor: unix ms at an instant.
    clock: (Instant, u64),
    /// While a datagram from a source outside the view is handled: that
    /// source and the bytes we may still send it in answer.
    budget: Option<(SocketAddr, usize)>,
    stats: Stats,
}

impl Gossip {
    /// An engine for the member `(id, addr)` with no peers and no topics.
    /// The first probe round is due within one base interval.
    pub fn new(
        id: [u8; 32],
        addr: SocketAddr,
        key: ClusterKey,
        config: Config,
        now: Instant,
    ) -> Self {
        let mut rng = Rng::from_seed(config.seed);
        let dedup = RumorLru::new(config.dedup_capacity, rng.next_u64());
        let first = now + config.interval_min + rng.jitter(config.interval_base);
        let me = Member { id, addr };
        let mut g = Gossip {
            key,
            me,
            members: Vec::new(),
            by_addr: BTreeMap::new(),
            by_id: BTreeMap::new(),
            self_index: 0,
            primary: Cube::default(),
            dual: Cube::default(),
            health: [DimensionHealth::default(), DimensionHealth::default()],
            epoch: 0,
            mismatch_until: None,
            topics: BTreeMap::new(),
            dedup,
            held: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_index: BTreeMap::new(),
            next_seq: 1,
            timers: BTreeSet::new(),
            peers: BTreeMap::new(),
            limiter: PeerLimiter::new(
                config.peer_rate,
                config.peer_burst,
                config.max_tracked_peers,
            ),
            egress: EgressQueue::new(config.max_queue),
            egress_bucket: TokenBucket::new(config.egress_rate, config.egress_burst),
            egress_wakeup: None,
            interval: AdaptiveInterval::new(
                config.interval_min,
                config.interval_base,
                config.interval_max,
                config.interval_jitter,
            ),
            next_probe: Some(first),
            round: None,
            probe_order: Vec::new(),
            probe_cursor: 0,
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            pulls: BTreeMap::new(),
            pull_index: BTreeMap::new(),
            queries: BTreeMap::new(),
            out_sessions: BTreeMap::new(),
            in_sessions: BTreeMap::new(),
            events: Vec::new(),
            marks: Vec::new(),
            queued_rumors: 0,
            sealer: Sealer::new(Sealer::sender_from(&[&config.seed, &id, b"engine"])),
            guard: ReplayGuard::new(config.max_replay_senders),
            clock: (now, 0),
            budget: None,
            stats: Stats::default(),
            rng,
            config,
        };
        g.install_members(vec![me]);
        g
    }

    // ----------------------------------------------------------------------
    // Accessors
    // ----------------------------------------------------------------------

    /// This member.
    pub fn me(&self) -> Member {
        self.me
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the wall clock: `unix_ms` (unix milliseconds) at `now`. Stamps
    /// carry it and received stamps are judged by it; until the first call
    /// it reads 0 at the `now` the engine was created with. The driver
    /// calls it periodically so clock corrections reach the engine.
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.clock = (now, unix_ms);
    }

    /// The wall clock at `now`, unix ms.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.clock;
        let ahead = now.saturating_duration_since(at).as_millis() as u64;
        let behind = at.saturating_duration_since(now).as_millis() as u64;
        ms.saturating_add(ahead).saturating_sub(behind)
    }

    /// This engine's stamp sender id.
    pub fn sender_id(&self) -> u64 {
        self.sealer.sender()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The membership view, sorted by id, this member included.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Our position in the primary cube.
    pub fn position(&self) -> usize {
        self.primary.position_of(self.self_index).unwrap_or(0)
    }

    /// Whether rumors use the hypercube at `now` (else random-peer push).
    pub fn cube_valid(&self, now: Instant) -> bool {
        !self.config.force_fallback
            && self.members.len() >= self.config.min_cube_members.max(2)
            && self.mismatch_until.is_none_or(|t| now >= t)
    }

    /// Per-dimension health weights of the primary (`dual = false`) or
    /// dual cube.
    pub fn dimension_weights(&self, dual: bool) -> &[f64] {
        self.health[usize::from(dual)].weights()
    }

    /// The G2 fingerprint: every StatefulMerge store's fingerprint, mixed
    /// with its topic name, XORed together.
    pub fn fingerprint(&self) -> u64 {
        self.topics
            .values()
            .filter_map(|t| match &t.mode {
                TopicMode::StatefulMerge(s) => Some(mix(s.fingerprint() ^ t.hash)),
                _ => None,
            })
            .fold(0, |a, b| a ^ b)
    }

    /// A StatefulMerge topic's store.
    pub fn store(&self, topic: &[u8]) -> Option<&(dyn Store + Send)> {
        match &self.topics.get(topic)?.mode {
            TopicMode::StatefulMerge(s) => Some(s.as_ref()),
            _ => None,
        }
    }

    /// A StatefulMerge topic's store, for local changes that should travel
    /// by anti-entropy only (use [`Gossip::publish`] to rumor them too).
    pub fn store_mut(&mut self, topic: &[u8]) -> Option<&mut (dyn Store + Send + 'static)> {
        match &mut self.topics.get_mut(topic)?.mode {
            TopicMode::StatefulMerge(s) => Some(s.as_mut()),
            _ => None,
        }
    }

    /// The unjittered anti-entropy interval.
    pub fn interval(&self) -> Duration {
        self.interval.current()
    }

    /// G3 sends awaiting an ACK.
    pub fn pending_acks(&self) -> usize {
        self.pending.len()
    }

    /// Rumor ids in the dedup LRU.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Datagrams waiting for egress budget.
    pub fn queued(&self) -> usize {
        self.egress.len()
    }

    /// Whether we signal backpressure: too many inbound exchanges in
    /// flight, or the egress queue over the overload threshold.
    pub fn overloaded(&self) -> bool {
        let active = self.inbound.values().filter(|x| !x.answered).count()
            + self.in_sessions.values().filter(|s| s.active()).count();
        active > self.config.backpressure_threshold
            || self.egress.len() >= self.config.overload_threshold
    }

    /// When a peer's backoff ends, if it is backed off.
    pub fn peer_backoff(&self, peer: SocketAddr) -> Option<Instant> {
        self.peers.get(&peer).and_then(|p| p.backoff.until())
    }

    /// Our anti-entropy state with a peer for a topic (watermarks, cadence,
    /// G4 mode), once there is any.
    pub fn sync_state(&self, peer: SocketAddr, topic: &[u8]) -> Option<PeerSync> {
        self.peers.get(&peer)?.topics.get(topic).copied()
    }

    /// The full-sync cadence N for a peer and topic, once they exchanged.
    pub fn full_sync_every(&self, peer: SocketAddr, topic: &[u8]) -> Option<u32> {
        self.peers.get(&peer)?.topics.get(topic).map(PeerSync::full_every)
    }

    /// The largest payload [`Gossip::publish`] accepts on a topic name of
    /// `topic_len` bytes: one G3 frame plus MAC in one datagram.
    pub fn max_rumor_payload(&self, topic_len: usize) -> usize {
        self.config.max_datagram.saturating_sub(GOSSIP_OVERHEAD + G3_OVERHEAD + topic_len)
    }

    /// When [`Gossip::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.timers.first().map(|(t, _)| *t), self.next_probe, self.egress_wakeup]
            .into_iter()
            .flatten()
            .min()
    }

    // ----------------------------------------------------------------------
    // Commands
    // ----------------------------------------------------------------------

    /// Replaces the membership view. `members` may include this member or
    /// not; duplicates by id are dropped, the list is cut to
    /// [`Config::max_members`]. A changed view renumbers the cube, ends a
    /// view-mismatch fallback and forgets state of departed peers.
    pub fn set_members(&mut self, members: &[Member]) {
        let mut list: Vec<Member> = members
            .iter()
            .filter(|m| m.id != self.me.id && m.addr != self.me.addr)
            .copied()
            .collect();
        list.sort_unstable();
        list.dedup_by(|a, b| a.id == b.id);
        list.truncate(self.config.max_members.saturating_sub(1));
        list.push(self.me);
        list.sort_unstable();
        if list != self.members {
            self.install_members(list);
            self.epoch += 1;
            self.mismatch_until = None;
            self.probe_order.clear();
            self.probe_cursor = 0;
            let by_addr = &self.by_addr;
            self.peers.retain(|a, _| by_addr.contains_key(a));
        }
    }

    /// Registers a topic. `priority` is its rumors' egress priority
    /// (higher first; G5 ACKs always go first).
    pub fn register_topic(
        &mut self,
        name: &[u8],
        mode: TopicMode,
        priority: u8,
    ) -> Result<(), TopicError> {
        if name.len() > ricochet_wire::gossip::MAX_TOPIC {
            return Err(TopicError::NameTooLong);
        }
        if self.topics.contains_key(name) {
            return Err(TopicError::Exists);
        }
        if self.topics.len() >= self.config.max_topics {
            return Err(TopicError::TooMany);
        }
        let h = blake3::hash(name);
        let hash = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        self.topics.insert(name.to_vec(), TopicState { mode, priority, subscribed: false, hash });
        Ok(())
    }

    /// Emit [`Event::Delivered`] and [`Event::Applied`] for this topic.
    pub fn subscribe(&mut self, topic: &[u8]) -> Result<(), PublishError> {
        self.topics.get_mut(topic).ok_or(PublishError::UnknownTopic)?.subscribed = true;
        Ok(())
    }

    /// Stop emitting events for this topic (propagation continues).
    pub fn unsubscribe(&mut self, topic: &[u8]) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.subscribed = false;
        }
    }

    /// Publishes `payload` on a BroadcastOnly or StatefulMerge topic (for
    /// the latter it is a record, applied locally first) and rumors it to
    /// every member. Returns its rumor id.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &[u8],
        payload: &[u8],
        priority: u8,
        out: &mut Outbox,
    ) -> Result<RumorId, PublishError> {
        let max = self.max_rumor_payload(topic.len());
        let overloaded = self.egress.len() >= self.config.overload_threshold;
        let t = self.topics.get_mut(topic).ok_or(PublishError::UnknownTopic)?;
        match &mut t.mode {
            TopicMode::RequestResponse(_) => return Err(PublishError::WrongMode),
            _ if payload.len() > max => return Err(PublishError::TooLarge { max }),
            _ if overloaded => return Err(PublishError::Backpressure),
            TopicMode::StatefulMerge(store) => {
                store.apply(payload).map_err(|_| PublishError::Rejected)?;
            }
            TopicMode::BroadcastOnly => {}
        }
        self.stats.rumors_published += 1;
        let id = self.originate(now, topic, payload, priority);
        self.flush(now, out);
        Ok(id)
    }

    /// Sends a query on a RequestResponse topic to every member; replies
    /// come as [`Event::QueryReply`] until [`Event::QueryDone`] after
    /// [`Config::query_timeout`].
    pub fn query(
        &mut self,
        now: Instant,
        topic: &[u8],
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<QueryId, PublishError> {
        let max = self.max_rumor_payload(topic.len()).saturating_sub(QUERY_HEADER);
        let t = self.topics.get(topic).ok_or(PublishError::UnknownTopic)?;
        if !matches!(t.mode, TopicMode::RequestResponse(_)) {
            return Err(PublishError::WrongMode);
        }
        let priority = t.priority;
        if payload.len() > max {
            return Err(PublishError::TooLarge { max });
        }
        if self.egress.len() >= self.config.overload_threshold {
            return Err(PublishError::Backpressure);
        }
        if self.queries.len() >= self.config.max_outstanding {
            return Err(PublishError::Busy);
        }
        let qid = loop {
            let q = (self.rng.next_u64() as u32) & !RESPONSE_BIT;
            if q != 0 && !self.queries.contains_key(&q) {
                break q;
            }
        };
        let mut body = Vec::with_capacity(QUERY_HEADER + payload.len());
        body.extend_from_slice(&qid.to_be_bytes());
        body.extend_from_slice(&self.me.id);
        body.extend_from_slice(payload);
        let deadline = now + self.config.query_timeout;
        self.queries.insert(qid, QueryState { topic: topic.to_vec(), replies: 0 });
        self.timers.insert((deadline, Timer::Query(qid)));
        self.stats.queries_sent += 1;
        self.originate(now, topic, &body, priority);
        self.flush(now, out);
        Ok(QueryId(qid))
    }

    /// One-shot catch-up (G4): asks `peer` for its records of a
    /// StatefulMerge topic newer than our watermark for it. Ends with
    /// [`Event::PullDone`].
    pub fn pull(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &[u8],
        out: &mut Outbox,
    ) -> Result<(), PublishError> {
        match self.topics.get(topic).map(|t| &t.mode) {
            None => return Err(PublishError::UnknownTopic),
            Some(TopicMode::StatefulMerge(_)) => {}
            Some(_) => return Err(PublishError::WrongMode),
        }
        let key = (peer, topic.to_vec());
        if self.pulls.len() >= self.config.max_outstanding || self.pull_index.contains_key(&key) {
            return Err(PublishError::Busy);
        }
        let since = self.peer_sync(peer, topic).ok_or(PublishError::Busy)?.recv.unwrap_or(0);
        let max_response = self.config.max_exchange_bytes.min(MAX_PULL_RESPONSE as usize) as u32;
        let frame = GossipFrame::Pull(PullRepr { topic, since_ns: since.max(0), max_response });
        // Padded so that a peer that does not count us as a member yet may
        // answer with one full datagram under the amplification bound.
        let wire = frame.buffer_len() + GOSSIP_OVERHEAD;
        let padding = self.pull_size().saturating_sub(wire);
        self.send_padded(peer, self.config.sync_priority, &frame, padding);
        let seq = self.next_seq();
        let deadline = now + self.config.exchange_timeout;
        self.pulls.insert(seq, PullState { peer, topic: topic.to_vec(), answer: None, applied: 0 });
        self.pull_index.insert(key, seq);
        self.timers.insert((deadline, Timer::Pull(seq)));
        self.stats.pulls_sent += 1;
        self.flush(now, out);
        Ok(())
    }

    /// Starts a G4 IBLT reconciliation of a StatefulMerge topic with `peer`
    /// now, in the peer's current mode ([module docs](super)), whatever the
    /// full-sync cadence says. It runs to completion by itself: records it
    /// brings show as [`Event::Applied`], its steps in [`Stats`]
    /// (`reconcile_*`).
    pub fn reconcile(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &[u8],
        out: &mut Outbox,
    ) -> Result<(), PublishError> {
        match self.topics.get(topic).map(|t| &t.mode) {
            None => return Err(PublishError::UnknownTopic),
            Some(TopicMode::StatefulMerge(_)) => {}
            Some(_) => return Err(PublishError::WrongMode),
        }
        if peer == self.me.addr
            || !self.by_addr.contains_key(&peer)
            || self.out_sessions.values().any(|s| s.peer == peer && s.topic == topic)
        {
            return Err(PublishError::Busy);
        }
        let rateless = self.peer_sync(peer, topic).ok_or(PublishError::Busy)?.rateless;
        if !self.start_reconcile(now, peer, topic, rateless, None) {
            return Err(PublishError::Busy);
        }
        self.flush(now, out);
        Ok(())
    }

    /// Seals and queues a gossip frame built elsewhere (the snapshot
    /// driver) to `dest`, at `priority`.
    pub fn send_frame(
        &mut self,
        now: Instant,
        dest: SocketAddr,
        frame: &[u8],
        priority: u8,
        out: &mut Outbox,
    ) -> Result<(), PublishError> {
        let max = self.config.max_datagram.saturating_sub(GOSSIP_OVERHEAD);
        if frame.len() > max {
            return Err(PublishError::TooLarge { max });
        }
        let n = frame.get(1).map_or(0, |b| b.wrapping_sub(0x30));
        self.enqueue(dest, priority, n, frame.to_vec(), 0);
        self.flush(now, out);
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------

    /// Processes one datagram from `from`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], out: &mut Outbox) {
        self.stats.rx_datagrams += 1;
        self.stats.rx_bytes += bytes.len() as u64;
        self.receive(now, from, bytes);
        self.flush(now, out);
    }

    /// Processes a G3 rumor whose dedup was decided outside the engine
    /// ([`Config::external_dedup`]): `body` is the frame, its envelope
    /// already verified (MAC, time window, replay) and removed, its source
    /// already under the rate
    /// limit, its G5 ACK already sent, and `admission` what the dedup
    /// shard that owns its id ([`super::dedup::RumorLru::admit`]) allowed.
    /// Anything but a G3 frame is dropped as malformed.
    pub fn handle_admitted(
        &mut self,
        now: Instant,
        from: SocketAddr,
        body: &[u8],
        admission: Admission,
        out: &mut Outbox,
    ) {
        self.stats.rx_datagrams += 1;
        self.stats.rx_bytes += (body.len() + GOSSIP_OVERHEAD) as u64;
        match GossipFrame::parse(body) {
            Ok(GossipFrame::Rumor(r)) => {
                self.stats.received.bump(3);
                self.on_admitted(now, from, &r, admission);
            }
            Ok(f) => self.stats.drops.malformed(WireError::UnknownType(frame_number(&f))),
            Err(e) => self.stats.drops.malformed(e),
        }
        self.flush(now, out);
    }

    /// Processes every timer due at `now`: ACK deadlines (retries), probe
    /// rounds, exchange, pull and query deadlines, the egress cap.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Ack(seq) => self.ack_timeout(now, seq),
                Timer::Round(seq) => {
                    if self.round.is_some_and(|r| r.seq == seq) {
                        self.finish_round(now, Outcome::Failed);
                    }
                }
                Timer::Exchange(id) => self.exchange_timeout(now, id),
                Timer::Pull(seq) => self.pull_timeout(seq),
                Timer::Reconcile(id) => self.reconcile_timeout(now, id),
                Timer::Gap(peer, id) => self.gap_timeout(now, peer, id),
                Timer::Query(q) => {
                    if let Some(s) = self.queries.remove(&q) {
                        self.events
                            .push(Event::QueryDone { query: QueryId(q), replies: s.replies });
                    }
                }
            }
        }
        if self.next_probe.is_some_and(|t| now >= t) {
            self.start_round(now);
        }
        self.flush(now, out);
    }

    // ----------------------------------------------------------------------
    // Receive path
    // ----------------------------------------------------------------------

    fn receive(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if from == self.me.addr {
            self.stats.drops.self_source += 1;
            return;
        }
        if bytes.len() > self.config.max_datagram {
            self.stats
                .drops
                .malformed(WireError::TooLong { max: self.config.max_datagram, got: bytes.len() });
            return;
        }
        let Some(body) = self.authenticate(now, bytes) else { return };
        if !self.limiter.allow(now, from) {
            self.stats.drops.rate_limited += 1;
            return;
        }
        let frame = match GossipFrame::parse(body) {
            Ok(f) => f,
            Err(e) => {
                self.stats.drops.malformed(e);
                return;
            }
        };
        self.stats.received.bump(usize::from(frame_number(&frame)));
        // Amplification bound: a source outside the view may draw at most
        // AMPLIFICATION times this datagram's bytes in answer to it.
        self.budget = (!self.by_addr.contains_key(&from))
            .then(|| (from, bytes.len().saturating_mul(AMPLIFICATION)));
        self.dispatch(now, from, frame, body);
        self.budget = None;
    }

    /// Verifies a gossip datagram's envelope: the v2 MAC, the stamp's time
    /// window and that its `(sender, counter)` was not accepted before.
    /// Returns the frame, or counts the drop and returns `None`. Drivers
    /// that take some frames past the engine (the cluster's G6 fast path)
    /// must open them here, so that a replay is refused on every path.
    pub fn authenticate<'a>(&mut self, now: Instant, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let Opened { frame, stamp, .. } = match self.key.open_gossip(bytes) {
            Ok(o) => o,
            Err(e) => {
                self.stats.drops.malformed(e);
                return None;
            }
        };
        match self.guard.check(self.unix_ms(now), &stamp) {
            Ok(()) => Some(frame),
            Err(r) => {
                self.stats.drops.refused(r);
                None
            }
        }
    }

    fn dispatch(&mut self, now: Instant, from: SocketAddr, frame: GossipFrame<'_>, body: &[u8]) {
        match frame {
            GossipFrame::Exchange(x) if x.exchange_id & RESPONSE_BIT != 0 => {
                self.on_answer(now, from, &x);
            }
            GossipFrame::Exchange(x) => self.on_request(now, from, &x),
            GossipFrame::Digest(d) => self.on_digest(now, from, d),
            GossipFrame::Rumor(r) => self.on_rumor(now, from, &r),
            GossipFrame::Pull(p) => self.on_pull(from, &p),
            GossipFrame::RumorAck(a) => self.on_ack(from, &a.rumor_id),
            GossipFrame::Reconcile(r) => self.on_reconcile(now, from, &r),
            GossipFrame::Snapshot(_) => {
                self.stats.frames_handed_off += 1;
                self.events.push(Event::Frame { from, bytes: body.to_vec() });
            }
        }
    }

    // ----------------------------------------------------------------------
    // G3 / G5: rumors
    // ----------------------------------------------------------------------

    /// Starts a rumor here: remembers it as delivered and fans it out.
    fn originate(&mut self, now: Instant, topic: &[u8], payload: &[u8], priority: u8) -> RumorId {
        let id = rumor_id(payload);
        self.hold(id, topic, payload, priority);
        if self.cube_valid(now) {
            let dual = if self.config.dual_cube { FWD_DUAL } else { 0 };
            // Fallback push too: the whole cube has it, as a cube copy
            // claims fallback wherever it arrives (dedup::arrival_routes).
            self.mark(id, DELIVERED | FWD_PRIMARY | dual | FWD_FALLBACK);
            self.cube_fanout(now, id, Route::Primary, None, 1);
            if self.config.dual_cube {
                self.cube_fanout(now, id, Route::Dual, None, 1);
            }
        } else {
            self.mark(id, DELIVERED | FWD_FALLBACK);
            self.fallback_fanout(now, id, 1, None);
        }
        self.release(&id);
        id
    }

    /// Records a rumor originated here as delivered and forwarded on
    /// `flags`, in our LRU and, with external dedup, for the caller.
    fn mark(&mut self, id: RumorId, flags: u8) {
        self.dedup.insert(id, flags);
        if self.config.external_dedup {
            self.marks.push((id, flags));
        }
    }

    fn on_rumor(&mut self, now: Instant, from: SocketAddr, r: &RumorRepr<'_>) {
        let Some(routes) = super::dedup::arrival_routes(r.from_dimension, self.config.dual_cube)
        else {
            self.stats.drops.bad_dimension += 1;
            return;
        };
        let id = rumor_id(r.payload);
        // ACK every copy, duplicates too: the sender may have missed our
        // first ACK and must stop retrying.
        self.send(from, ACK_PRIORITY, &GossipFrame::RumorAck(RumorAckRepr { rumor_id: id }));
        match self.dedup.admit(&id, routes) {
            Some(a) => self.on_admitted(now, from, r, a),
            None => self.stats.rumor_duplicates += 1,
        }
    }

    /// Acts on a copy of a rumor as far as its [`Admission`] allows:
    /// delivers it if it is the first, forwards it on the routes it
    /// claimed (the cube ones while the cube is valid, else by fallback
    /// push).
    fn on_admitted(&mut self, now: Instant, from: SocketAddr, r: &RumorRepr<'_>, a: Admission) {
        let Some(arrival) = decode_dimension(r.from_dimension) else {
            self.stats.drops.bad_dimension += 1;
            return;
        };
        let id = rumor_id(r.payload);
        if a.deliver {
            self.stats.rumors_delivered += 1;
            self.deliver(from, r);
        } else {
            self.stats.rumor_duplicates += 1;
        }
        let claimed = a.claimed;
        let hop = r.hop_count.saturating_add(1);
        let forwarded_before = self.queued_rumors;
        self.hold(id, r.topic, r.payload, r.priority);
        match arrival {
            Arrival::Origin => {
                if self.cube_valid(now) {
                    for route in self.cube_routes() {
                        if claimed & route.flag() != 0 {
                            self.cube_fanout(now, id, route, None, hop);
                        }
                    }
                } else if claimed & FWD_FALLBACK != 0 {
                    self.fallback_fanout(now, id, hop, Some(from));
                }
            }
            Arrival::Cube { route, dim, rerouted } => {
                if claimed & route.flag() != 0 {
                    if !rerouted && !self.sender_consistent(route, dim, from) {
                        self.view_mismatch(now, from);
                    }
                    if self.cube_valid(now) {
                        self.cube_fanout(now, id, route, Some(dim), hop);
                    } else if claimed & FWD_FALLBACK != 0 {
                        self.fallback_forward(now, id, r.hop_count, from);
                    }
                }
            }
            Arrival::Fallback => {
                if claimed & FWD_FALLBACK != 0 {
                    self.fallback_forward(now, id, r.hop_count, from);
                }
            }
        }
        self.stats.rumor_forwards += self.queued_rumors - forwarded_before;
        self.release(&id);
    }

    /// Local effects of a rumor seen for the first time.
    fn deliver(&mut self, from: SocketAddr, r: &RumorRepr<'_>) {
        let Some(t) = self.topics.get_mut(r.topic) else {
            self.stats.unknown_topic_rumors += 1;
            return;
        };
        let subscribed = t.subscribed;
        let event = |changed| Event::Delivered {
            topic: r.topic.to_vec(),
            payload: r.payload.to_vec(),
            from,
            hops: r.hop_count,
            changed,
        };
        match &mut t.mode {
            TopicMode::BroadcastOnly => {
                if subscribed {
                    self.events.push(event(false));
                }
            }
            TopicMode::StatefulMerge(store) => match store.apply(r.payload) {
                Ok(changed) => {
                    if subscribed {
                        self.events.push(event(changed));
                    }
                }
                Err(_) => self.stats.drops.apply_rejected += 1,
            },
            TopicMode::RequestResponse(responder) => {
                let Some((head, query)) = r.payload.split_first_chunk::<QUERY_HEADER>() else {
                    self.stats.drops.bad_query += 1;
                    return;
                };
                let qid = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let mut origin = [0u8; 32];
                origin.copy_from_slice(&head[4..]);
                if origin == self.me.id || qid & RESPONSE_BIT != 0 {
                    return;
                }
                if let Some(reply) = responder.respond(&origin, query) {
                    self.send_reply(r.topic, qid, &origin, &reply);
                }
            }
        }
    }

    fn send_reply(&mut self, topic: &[u8], qid: u32, origin: &[u8; 32], reply: &[u8]) {
        let Some(&m) = self.by_id.get(origin) else {
            self.stats.drops.unknown_peer += 1;
            return;
        };
        let dest = self.members[m].addr;
        let c = entries::chunk(&[reply], self.g1_capacity(topic), usize::MAX, 0);
        if c.included != 1 || c.chunks.len() != 1 {
            self.stats.drops.reply_too_large += 1;
            return;
        }
        let priority = self.topics.get(topic).map_or(0, |t| t.priority);
        self.emit_chunks(dest, topic, qid | RESPONSE_BIT, false, 0, &c, priority);
    }

    fn cube_routes(&self) -> Vec<Route> {
        if self.config.dual_cube { vec![Route::Primary, Route::Dual] } else { vec![Route::Primary] }
    }

    fn cube(&self, route: Route) -> &Cube {
        if route == Route::Dual { &self.dual } else { &self.primary }
    }

    fn health_mut(&mut self, route: Route) -> &mut DimensionHealth {
        &mut self.health[usize::from(route == Route::Dual)]
    }

    /// Sends on every tree edge below us in `route`'s cube.
    fn cube_fanout(&mut self, now: Instant, id: RumorId, route: Route, from: Option<u32>, hop: u8) {
        let cube = self.cube(route);
        let Some(me) = cube.position_of(self.self_index) else { return };
        let targets: Vec<(u32, usize, SocketAddr)> = tree_targets(cube.len(), me, from)
            .into_iter()
            .filter_map(|(d, p)| cube.member_at(p).map(|m| (d, p, self.members[m].addr)))
            .collect();
        for (dim, pos, addr) in targets {
            self.send_rumor(now, id, addr, route, dim, pos, hop, 0, None, false);
        }
    }

    /// Random-peer push to `fallback_fanout` members other than us and
    /// `exclude`.
    fn fallback_fanout(&mut self, now: Instant, id: RumorId, hop: u8, exclude: Option<SocketAddr>) {
        let mut cands: Vec<SocketAddr> = self
            .members
            .iter()
            .map(|m| m.addr)
            .filter(|a| *a != self.me.addr && Some(*a) != exclude)
            .collect();
        let k = self.config.fallback_fanout.min(cands.len());
        for i in 0..k {
            let j = i + self.rng.index(cands.len() - i);
            cands.swap(i, j);
        }
        for &addr in &cands[..k] {
            self.send_rumor(now, id, addr, Route::Fallback, 0, 0, hop, 0, exclude, false);
        }
    }

    /// Fallback forwarding of a rumor that travelled `hop` hops: with
    /// probability `P / (1 + hop)`, below the hop limit.
    fn fallback_forward(&mut self, now: Instant, id: RumorId, hop: u8, from: SocketAddr) {
        if hop >= self.config.max_hops {
            return;
        }
        let p = self.config.fallback_forward_p / (1.0 + f64::from(hop));
        if self.rng.chance(p) {
            self.fallback_fanout(now, id, hop.saturating_add(1), Some(from));
        }
    }

    /// Sends one G3 copy of a held rumor and tracks its ACK.
    #[allow(clippy::too_many_arguments)]
    fn send_rumor(
        &mut self,
        now: Instant,
        id: RumorId,
        dest: SocketAddr,
        route: Route,
        dim: u32,
        target_pos: usize,
        hop: u8,
        attempt: u8,
        source: Option<SocketAddr>,
        rerouted: bool,
    ) {
        if dest == self.me.addr {
            return;
        }
        let Some(h) = self.held.get(&id) else { return };
        let priority = h.priority;
        let frame = GossipFrame::Rumor(RumorRepr {
            hop_count: hop,
            from_dimension: encode_dimension(route, dim, rerouted),
            priority,
            topic: &h.topic,
            payload: &h.payload,
        });
        let Some(bytes) = emit(&frame) else { return };
        self.enqueue(dest, priority, 3, bytes, 0);
        if route == Route::Fallback {
            self.stats.fallback_sends += 1;
        }
        if self.pending.len() >= self.config.max_pending_acks {
            self.stats.untracked_sends += 1;
            return;
        }
        let seq = self.next_seq();
        let p = PendingAck {
            rumor: id,
            target: dest,
            route,
            dim,
            target_pos,
            epoch: self.epoch,
            hop,
            attempt,
            source,
        };
        if let Some(h) = self.held.get_mut(&id) {
            h.refs += 1;
        }
        if let Some(old) = self.pending_index.insert((id, dest), seq) {
            if self.pending.remove(&old).is_some() {
                self.unref(&id);
            }
        }
        self.pending.insert(seq, p);
        self.timers.insert((now + self.config.ack_timeout, Timer::Ack(seq)));
    }

    fn on_ack(&mut self, from: SocketAddr, id: &RumorId) {
        let Some(seq) = self.pending_index.remove(&(*id, from)) else {
            self.stats.acks_unmatched += 1;
            return;
        };
        let Some(p) = self.pending.remove(&seq) else { return };
        self.stats.acks_matched += 1;
        if p.route != Route::Fallback {
            self.health_mut(p.route).success(p.dim);
        }
        self.unref(id);
    }

    fn ack_timeout(&mut self, now: Instant, seq: u64) {
        let Some(p) = self.pending.remove(&seq) else { return };
        if self.pending_index.get(&(p.rumor, p.target)) == Some(&seq) {
            self.pending_index.remove(&(p.rumor, p.target));
        }
        if p.route != Route::Fallback {
            self.health_mut(p.route).loss(p.dim);
        }
        if p.attempt >= self.config.rumor_retries {
            self.stats.rumors_dropped += 1;
            self.events.push(Event::RumorDropped { rumor: p.rumor, peer: p.target });
            self.unref(&p.rumor);
            return;
        }
        self.stats.rumor_retries += 1;
        let attempt = p.attempt + 1;
        match p.route {
            Route::Fallback => {
                let cands: Vec<SocketAddr> = self
                    .members
                    .iter()
                    .map(|m| m.addr)
                    .filter(|a| *a != self.me.addr && *a != p.target && Some(*a) != p.source)
                    .collect();
                let dest =
                    if cands.is_empty() { p.target } else { cands[self.rng.index(cands.len())] };
                self.send_rumor(now, p.rumor, dest, p.route, 0, 0, p.hop, attempt, p.source, false);
            }
            route => {
                let weight = self.health[usize::from(route == Route::Dual)].weight(p.dim);
                let direct =
                    (attempt == 1 && weight >= self.config.reroute_below) || p.epoch != self.epoch;
                let cube = self.cube(route);
                let around: Vec<(u32, usize, SocketAddr)> = if direct {
                    Vec::new()
                } else {
                    tree_targets(cube.len(), p.target_pos, Some(p.dim))
                        .into_iter()
                        .filter_map(|(d, q)| {
                            cube.member_at(q).map(|m| (d, q, self.members[m].addr))
                        })
                        .collect()
                };
                // The target itself always gets another copy (it may only
                // have lost our datagram); a reroute adds its subtree.
                self.send_rumor(
                    now,
                    p.rumor,
                    p.target,
                    route,
                    p.dim,
                    p.target_pos,
                    p.hop,
                    attempt,
                    None,
                    false,
                );
                let hop = p.hop.saturating_add(1);
                for (d, q, addr) in around {
                    self.stats.rumor_reroutes += 1;
                    self.send_rumor(now, p.rumor, addr, route, d, q, hop, attempt, None, true);
                }
            }
        }
        self.unref(&p.rumor);
    }

    /// Whether a rumor that arrived on `dim` of `route`'s cube came from
    /// the member our view puts there.
    fn sender_consistent(&self, route: Route, dim: u32, from: SocketAddr) -> bool {
        let cube = self.cube(route);
        let Some(me) = cube.position_of(self.self_index) else { return false };
        match expected_sender(cube.len(), me, dim) {
            None => false,
            // The partner is virtual: its nearest real ancestor, some member,
            // sends in its place.
            Some(Sender::Virtual) => self.by_addr.contains_key(&from),
            Some(Sender::Partner(p)) => {
                cube.member_at(p).map(|m| self.members[m].addr) == Some(from)
            }
        }
    }

    fn view_mismatch(&mut self, now: Instant, from: SocketAddr) {
        self.stats.view_mismatches += 1;
        if self.mismatch_until.is_none_or(|t| now >= t) {
            self.events.push(Event::ViewMismatch { from });
        }
        self.mismatch_until = Some(now + self.config.fallback_hold);
    }

    fn hold(&mut self, id: RumorId, topic: &[u8], payload: &[u8], priority: u8) {
        self.held.entry(id).or_insert_with(|| Held {
            topic: topic.to_vec(),
            payload: payload.to_vec(),
            priority,
            refs: 0,
        });
    }

    /// Drops a held body nobody waits on.
    fn release(&mut self, id: &RumorId) {
        if self.held.get(id).is_some_and(|h| h.refs == 0) {
            self.held.remove(id);
        }
    }

    fn unref(&mut self, id: &RumorId) {
        if let Some(h) = self.held.get_mut(id) {
            h.refs = h.refs.saturating_sub(1);
        }
        self.release(id);
    }

    // ----------------------------------------------------------------------
    // G2: probe rounds
    // ----------------------------------------------------------------------

    fn start_round(&mut self, now: Instant) {
        self.next_probe = None;
        self.sweep(now);
        let stateful = self.topics.values().any(|t| matches!(t.mode, TopicMode::StatefulMerge(_)));
        let peer = if stateful && self.round.is_none() { self.pick_peer(now) } else { None };
        let Some(peer) = peer else {
            self.next_probe = Some(now + self.interval.sample(&mut self.rng));
            return;
        };
        let fingerprint = self.fingerprint();
        self.send(
            peer,
            self.config.sync_priority,
            &GossipFrame::Digest(DigestRepr { fingerprint, matched: false }),
        );
        self.stats.probes_sent += 1;
        let seq = self.next_seq();
        self.round = Some(Round { seq, peer, syncing: false });
        self.timers.insert((now + self.config.exchange_timeout, Timer::Round(seq)));
    }

    /// The next member of a shuffled round-robin that is not backed off.
    fn pick_peer(&mut self, now: Instant) -> Option<SocketAddr> {
        for _ in 0..=self.members.len() {
            if self.probe_cursor >= self.probe_order.len() {
                self.probe_order =
                    self.members.iter().map(|m| m.addr).filter(|a| *a != self.me.addr).collect();
                self.rng.shuffle(&mut self.probe_order);
                self.probe_cursor = 0;
                if self.probe_order.is_empty() {
                    return None;
                }
            }
            let a = self.probe_order[self.probe_cursor];
            self.probe_cursor += 1;
            if self.by_addr.contains_key(&a)
                && !self.peers.get(&a).is_some_and(|p| p.backoff.active(now))
            {
                return Some(a);
            }
        }
        None
    }

    fn finish_round(&mut self, now: Instant, outcome: Outcome) {
        let Some(r) = self.round.take() else { return };
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        if let Some(p) = self.peers.get_mut(&r.peer) {
            if outcome == Outcome::Failed {
                if !r.syncing {
                    p.failures += 1;
                    if p.failures >= 2 {
                        p.backoff.signal(now, initial, max);
                    }
                }
            } else {
                p.failures = 0;
            }
        }
        if outcome == Outcome::Failed {
            self.stats.rounds_failed += 1;
        }
        self.interval.observe(outcome);
        let wait = if self.overloaded() {
            super::sync::jittered(
                self.config.interval_max,
                self.config.interval_jitter,
                &mut self.rng,
            )
        } else {
            self.interval.sample(&mut self.rng)
        };
        self.next_probe = Some(now + wait);
    }

    /// Records arrived outside our own round: probe again soon.
    fn note_applied(&mut self, now: Instant, applied: u64) {
        if applied == 0 {
            return;
        }
        self.interval.observe(Outcome::Applied(applied));
        if let Some(t) = self.next_probe {
            let soon = now + self.interval.sample_min(&mut self.rng);
            self.next_probe = Some(t.min(soon));
        }
    }

    fn on_digest(&mut self, now: Instant, from: SocketAddr, d: DigestRepr) {
        if d.matched {
            // A reply (probes never set the flag).
            if self.round.is_some_and(|r| r.peer == from && !r.syncing) {
                self.stats.digest_matches += 1;
                self.finish_round(now, Outcome::Idle);
            }
            return;
        }
        let fingerprint = self.fingerprint();
        if d.fingerprint == fingerprint {
            self.send(
                from,
                self.config.sync_priority,
                &GossipFrame::Digest(DigestRepr { fingerprint, matched: true }),
            );
            return;
        }
        if self.overloaded() {
            self.stats.drops.overloaded += 1;
            return;
        }
        if self.peers.get(&from).is_some_and(|p| p.backoff.active(now))
            || self.outbound.values().any(|x| x.peer == from)
            || self.out_sessions.values().any(|s| s.peer == from)
        {
            return;
        }
        if let Some(r) = self.round.as_mut().filter(|r| r.peer == from) {
            r.syncing = true;
        }
        let topics: Vec<Vec<u8>> = self
            .topics
            .iter()
            .filter(|(_, t)| matches!(t.mode, TopicMode::StatefulMerge(_)))
            .map(|(n, _)| n.clone())
            .collect();
        for t in topics {
            self.start_sync(now, from, &t);
        }
    }

    /// Whether `peer` is in the member view.
    fn is_member(&self, peer: SocketAddr) -> bool {
        self.by_addr.contains_key(&peer)
    }

    /// Bytes of records one answer to `peer` of `topic` may carry: all
    /// [`Config::max_exchange_bytes`] for a member; for anyone else, what
    /// one G1 chunk within the amplification budget can hold.
    fn answer_cap(&self, peer: SocketAddr, topic: &[u8]) -> usize {
        match self.budget {
            Some((src, left)) if src == peer => left
                .saturating_sub(GOSSIP_OVERHEAD + G1_OVERHEAD + topic.len() + 1)
                .min(self.g1_capacity(topic).saturating_sub(1))
                .min(self.config.max_exchange_bytes),
            _ => self.config.max_exchange_bytes,
        }
    }

    /// Datagram size of a G4 pull: padded so that AMPLIFICATION times it
    /// covers one full datagram.
    fn pull_size(&self) -> usize {
        self.config.max_datagram.div_ceil(AMPLIFICATION)
    }

    /// Anti-entropy for one topic with a peer whose fingerprint differs: a
    /// G4 reconciliation where a full exchange is due (unless the last one
    /// timed out), else a G1 exchange.
    fn start_sync(&mut self, now: Instant, peer: SocketAddr, topic: &[u8]) {
        let Some(ps) = self.peer_sync(peer, topic).copied() else {
            self.stats.drops.unknown_peer += 1;
            return;
        };
        if self.config.reconcile
            && self.is_member(peer)
            && ps.full_due()
            && !ps.g1_next
            && self.start_reconcile(now, peer, topic, ps.rateless, None)
        {
            return;
        }
        self.start_exchange(now, peer, topic);
    }

    // ----------------------------------------------------------------------
    // G1: exchanges
    // ----------------------------------------------------------------------

    fn start_exchange(&mut self, now: Instant, peer: SocketAddr, topic: &[u8]) {
        if self.outbound.len() >= self.config.max_inbound_exchanges {
            return;
        }
        let Some(ps) = self.peer_sync(peer, topic).copied() else {
            self.stats.drops.unknown_peer += 1;
            return;
        };
        let full = ps.full_due();
        if full {
            if let Some(ps) = self.peer_sync(peer, topic) {
                ps.g1_next = false;
            }
        }
        let Some(store) = self.store(topic) else { return };
        // A peer outside our view gets an exchange without records: it
        // answers with its own, and until it is a member our records go to
        // it only within the amplification budget (pull, or its requests).
        let member = self.by_addr.contains_key(&peer);
        let records = match (full, ps.sent) {
            _ if !member => Vec::new(),
            (false, Some(sent)) => store.delta_since(sent),
            _ => store.snapshot(),
        };
        let mark = store.watermark().max(0);
        let id = self.fresh_exchange_id();
        let meta = if self.overloaded() { META_BACKPRESSURE } else { 0 };
        let cap = if member { self.config.max_exchange_bytes } else { 0 };
        let c = self.chunk(topic, &records, cap, meta);
        let watermark = if full { 0 } else { ps.recv.unwrap_or(0).max(0) };
        self.emit_chunks(peer, topic, id, full, watermark, &c, self.config.sync_priority);
        let deadline = now + self.config.exchange_timeout;
        self.outbound.insert(
            id,
            OutExchange {
                peer,
                topic: topic.to_vec(),
                full,
                sent_to: (member && !c.truncated).then_some(mark),
                deadline,
                answer: None,
                applied: 0,
                backpressure: false,
            },
        );
        self.timers.insert((deadline, Timer::Exchange(id)));
        self.stats.exchanges_started += 1;
        if full {
            self.stats.full_syncs += 1;
        }
    }

    /// A chunk of a peer's exchange: apply it; once every chunk is in,
    /// answer.
    fn on_request(&mut self, now: Instant, from: SocketAddr, x: &ExchangeRepr<'_>) {
        let Ok(entries) = entries::parse(x.entries) else {
            self.stats.drops.bad_entries += 1;
            return;
        };
        match self.topics.get(x.topic).map(|t| &t.mode) {
            None => {
                self.stats.drops.unknown_topic += 1;
                return;
            }
            Some(TopicMode::StatefulMerge(_)) => {}
            Some(_) => {
                self.stats.drops.wrong_mode += 1;
                return;
            }
        }
        let key = (from, x.exchange_id);
        if !self.inbound.contains_key(&key) {
            if self.inbound.len() >= self.config.max_inbound_exchanges {
                self.sweep(now);
            }
            if self.inbound.len() >= self.config.max_inbound_exchanges {
                self.stats.drops.exchange_table_full += 1;
                return;
            }
            self.inbound.insert(
                key,
                InExchange {
                    topic: x.topic.to_vec(),
                    full: x.full,
                    watermark: x.watermark_ns,
                    chunks: Chunks::new(x.chunk_count),
                    applied: 0,
                    received: BTreeSet::new(),
                    answered: false,
                    deadline: now + self.config.exchange_timeout,
                },
            );
        }
        let Some(ex) = self.inbound.get_mut(&key) else { return };
        if ex.topic != x.topic
            || ex.chunks.count != x.chunk_count
            || ex.full != x.full
            || ex.watermark != x.watermark_ns
        {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !ex.chunks.mark(x.chunk_index) {
            return;
        }
        if entries.backpressure() {
            self.backpressure_from(now, from);
        }
        let applied = self.apply_records(x.topic, from, &entries);
        let Some(ex) = self.inbound.get_mut(&key) else { return };
        ex.applied += applied;
        ex.received.extend(entries.iter().map(iblt::element_id));
        if let Some(r) = self.round.as_mut().filter(|r| r.peer == from) {
            r.syncing = true;
        }
        if ex.chunks.complete() && !ex.answered {
            ex.answered = true;
            let (full, watermark, total) = (ex.full, ex.watermark, ex.applied);
            let received = std::mem::take(&mut ex.received);
            self.answer(from, x.topic, x.exchange_id, full, watermark, &received);
            if self.round.is_some_and(|r| r.peer == from) {
                self.finish_round(now, outcome_of(total));
            } else {
                self.note_applied(now, total);
            }
        }
    }

    /// Answers a completed inbound exchange with our records (all of them
    /// for a full one, else those changed after `watermark`), minus the
    /// ones the initiator just sent (`received`, element ids).
    fn answer(
        &mut self,
        to: SocketAddr,
        topic: &[u8],
        id: u32,
        full: bool,
        watermark: i64,
        received: &BTreeSet<u64>,
    ) {
        self.stats.exchanges_answered += 1;
        let answer_id = id | RESPONSE_BIT;
        let priority = self.config.sync_priority;
        if self.overloaded() {
            self.stats.backpressure_sent += 1;
            let c = self.chunk(topic, &[] as &[&[u8]], 0, META_BACKPRESSURE);
            self.emit_chunks(to, topic, answer_id, false, watermark, &c, priority);
            return;
        }
        let Some(store) = self.store(topic) else { return };
        let mut records = if full { store.snapshot() } else { store.delta_since(watermark) };
        let mark = store.watermark().max(0);
        if !received.is_empty() {
            records.retain(|r| !received.contains(&iblt::element_id(r)));
        }
        let cap = self.answer_cap(to, topic);
        let c = self.chunk(topic, &records, cap, 0);
        // A cut answer must not move the requester's watermark past what it
        // carries: report the one it asked from.
        let wm = if c.truncated { if full { 0 } else { watermark } } else { mark };
        self.emit_chunks(to, topic, answer_id, full, wm, &c, priority);
    }

    /// A G1 response: the answer to our exchange, pull or query.
    fn on_answer(&mut self, now: Instant, from: SocketAddr, x: &ExchangeRepr<'_>) {
        let Ok(entries) = entries::parse(x.entries) else {
            self.stats.drops.bad_entries += 1;
            return;
        };
        let id = x.exchange_id & !RESPONSE_BIT;
        if self.outbound.get(&id).is_some_and(|o| o.peer == from && o.topic == x.topic) {
            self.on_exchange_answer(now, from, id, x, &entries);
        } else if self.out_sessions.get(&id).is_some_and(|s| s.peer == from && s.topic == x.topic) {
            self.on_session_records(now, from, id, x, &entries);
        } else if self
            .in_sessions
            .get(&(from, id))
            .is_some_and(|s| s.topic == x.topic && matches!(s.state, InState::Awaiting { .. }))
        {
            self.on_requested_records(now, from, id, x, &entries);
        } else if self.queries.get(&id).is_some_and(|q| q.topic == x.topic) {
            let Some(reply) = entries.iter().next().filter(|_| x.chunk_count == 1) else {
                self.stats.drops.reply_too_large += 1;
                return;
            };
            if let Some(q) = self.queries.get_mut(&id) {
                q.replies += 1;
            }
            self.stats.query_replies += 1;
            self.events.push(Event::QueryReply {
                query: QueryId(id),
                from,
                payload: reply.to_vec(),
            });
        } else if let Some(&seq) = self.pull_index.get(&(from, x.topic.to_vec())) {
            self.on_pull_answer(now, from, seq, x, &entries);
        } else {
            self.stats.drops.unsolicited += 1;
        }
    }

    fn on_exchange_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let Some(ex) = self.outbound.get_mut(&id) else { return };
        let (chunks, wm, full) =
            ex.answer.get_or_insert_with(|| (Chunks::new(x.chunk_count), x.watermark_ns, x.full));
        if chunks.count != x.chunk_count || *wm != x.watermark_ns || *full != x.full {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !chunks.mark(x.chunk_index) {
            return;
        }
        let complete = chunks.complete();
        if entries.backpressure() {
            ex.backpressure = true;
            self.backpressure_from(now, from);
        }
        let applied = self.apply_records(x.topic, from, entries);
        if let Some(ex) = self.outbound.get_mut(&id) {
            ex.applied += applied;
        }
        if complete {
            self.complete_exchange(now, id);
        }
    }

    fn complete_exchange(&mut self, now: Instant, id: u32) {
        let Some(ex) = self.outbound.remove(&id) else { return };
        self.stats.exchanges_completed += 1;
        let (recv_to, answer_full) = match ex.answer {
            Some((_, wm, full)) if !ex.backpressure => (Some(wm), full),
            _ => (None, false),
        };
        if let Some(p) = self.peers.get_mut(&ex.peer) {
            if !ex.backpressure {
                p.backoff.clear();
                p.failures = 0;
            }
            if let Some(ps) = p.topics.get_mut(&ex.topic) {
                ps.completed(ex.full && answer_full, recv_to, ex.sent_to, ex.applied);
            }
        }
        if self.round.is_some_and(|r| r.peer == ex.peer && r.syncing) {
            self.finish_round(now, outcome_of(ex.applied));
        } else {
            self.note_applied(now, ex.applied);
        }
    }

    fn exchange_timeout(&mut self, now: Instant, id: u32) {
        if self.outbound.get(&id).is_none_or(|x| x.deadline > now) {
            return;
        }
        let Some(ex) = self.outbound.remove(&id) else { return };
        self.stats.exchanges_failed += 1;
        if self.round.is_some_and(|r| r.peer == ex.peer) {
            self.finish_round(now, Outcome::Failed);
        }
        self.note_applied(now, ex.applied);
    }

    fn apply_records(&mut self, topic: &[u8], from: SocketAddr, entries: &Entries<'_>) -> u64 {
        let Some(t) = self.topics.get_mut(topic) else { return 0 };
        let TopicMode::StatefulMerge(store) = &mut t.mode else { return 0 };
        let mut applied = 0;
        for rec in entries.iter() {
            match store.apply(rec) {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(_) => self.stats.drops.apply_rejected += 1,
            }
        }
        self.stats.records_applied += applied;
        if applied > 0 && t.subscribed {
            self.events.push(Event::Applied { topic: topic.to_vec(), from, records: applied });
        }
        applied
    }

    fn backpressure_from(&mut self, now: Instant, from: SocketAddr) {
        self.stats.backpressure_received += 1;
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        if let Some(p) = self.peer_state(from) {
            p.backoff.signal(now, initial, max);
        }
    }

    // ----------------------------------------------------------------------
    // G4: pull
    // ----------------------------------------------------------------------

    fn on_pull(&mut self, from: SocketAddr, p: &PullRepr<'_>) {
        match self.topics.get(p.topic).map(|t| &t.mode) {
            None => {
                self.stats.drops.unknown_topic += 1;
                return;
            }
            Some(TopicMode::StatefulMerge(_)) => {}
            Some(_) => {
                self.stats.drops.wrong_mode += 1;
                return;
            }
        }
        if self.overloaded() {
            self.stats.drops.overloaded += 1;
            return;
        }
        let cap = match p.max_response {
            0 => self.config.max_exchange_bytes,
            n => (n as usize).min(self.config.max_exchange_bytes),
        }
        .min(self.answer_cap(from, p.topic));
        let Some(store) = self.store(p.topic) else { return };
        let full = p.since_ns == 0;
        let records = if full { store.snapshot() } else { store.delta_since(p.since_ns) };
        let mark = store.watermark().max(0);
        let c = self.chunk(p.topic, &records, cap, 0);
        let wm = if c.truncated { p.since_ns } else { mark };
        let id = self.fresh_exchange_id() | RESPONSE_BIT;
        self.emit_chunks(from, p.topic, id, full, wm, &c, self.config.sync_priority);
        self.stats.pulls_answered += 1;
    }

    fn on_pull_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        seq: u64,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let Some(pull) = self.pulls.get_mut(&seq) else { return };
        let (eid, chunks, wm, full) = pull.answer.get_or_insert_with(|| {
            (x.exchange_id, Chunks::new(x.chunk_count), x.watermark_ns, x.full)
        });
        if *eid != x.exchange_id {
            self.stats.drops.unsolicited += 1;
            return;
        }
        if chunks.count != x.chunk_count || *wm != x.watermark_ns || *full != x.full {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !chunks.mark(x.chunk_index) {
            return;
        }
        let (complete, wm, full) = (chunks.complete(), *wm, *full);
        let applied = self.apply_records(x.topic, from, entries);
        let Some(pull) = self.pulls.get_mut(&seq) else { return };
        pull.applied += applied;
        if complete {
            let Some(pull) = self.pulls.remove(&seq) else { return };
            self.pull_index.remove(&(pull.peer, pull.topic.clone()));
            if let Some(ps) = self.peer_sync(from, x.topic) {
                if full {
                    ps.recv = Some(wm);
                } else {
                    ps.pulled(wm);
                }
            }
            self.events.push(Event::PullDone {
                topic: pull.topic,
                peer: pull.peer,
                records: pull.applied,
                complete: true,
            });
            self.note_applied(now, pull.applied);
        }
    }

    fn pull_timeout(&mut self, seq: u64) {
        let Some(pull) = self.pulls.remove(&seq) else { return };
        self.pull_index.remove(&(pull.peer, pull.topic.clone()));
        self.events.push(Event::PullDone {
            topic: pull.topic,
            peer: pull.peer,
            records: pull.applied,
            complete: false,
        });
    }

    // ----------------------------------------------------------------------
    // G4: IBLT reconciliation
    // ----------------------------------------------------------------------

    /// Starts a session with `peer` for `topic`: a fixed table sized from
    /// the estimate, or (`rateless`, or an estimate too large for a table) a
    /// first burst of rateless symbols, `first_burst` of them if given.
    /// False if our session table is full or the topic has no store.
    fn start_reconcile(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        topic: &[u8],
        rateless: bool,
        first_burst: Option<usize>,
    ) -> bool {
        if self.outbound.len() + self.out_sessions.len() >= self.config.max_inbound_exchanges {
            return false;
        }
        let sent = self.peers.get(&peer).and_then(|p| p.topics.get(topic)).and_then(|ps| ps.sent);
        let per_frame = reconcile::cells_per_datagram(self.config.max_datagram, topic.len());
        let max_cells = self.max_table_cells();
        let max_symbols = self.max_symbols();
        let max_burst = per_frame.saturating_mul(self.config.reconcile_burst.max(1));
        let Some(store) = self.store(topic) else { return false };
        let ids = store.element_ids();
        let mark = store.watermark().max(0);
        let d = reconcile::estimate(sent.map_or(0, |s| store.delta_since(s).len()));
        let table = if rateless { None } else { reconcile::table_cells(d, per_frame, max_cells) };
        let (mode, cells, encoder) = match table {
            Some(m) => match Iblt::from_keys(m, ids) {
                Ok(t) => (ReconcileMode::Fixed, t.cells().to_vec(), None),
                Err(_) => return false,
            },
            None => {
                let want = first_burst.unwrap_or_else(|| {
                    reconcile::table_cells(d, per_frame, usize::MAX).unwrap_or(per_frame)
                });
                let burst = want.clamp(per_frame, max_burst.max(per_frame)).min(max_symbols);
                let mut enc = RatelessEncoder::new(ids);
                (ReconcileMode::Rateless, enc.next_symbols(burst), Some(enc))
            }
        };
        let id = self.fresh_exchange_id();
        let end = cells.len();
        // Requests may fetch a table three times more (lost frames), a
        // stream up to twice the symbol cap.
        let budget = match mode {
            ReconcileMode::Fixed => end.saturating_mul(3),
            ReconcileMode::Rateless => max_symbols.saturating_mul(2),
        };
        let sent_cells =
            self.send_cells(peer, ReconcileKind::Table, id, mode, topic, &cells, 0, end, per_frame);
        self.stats.reconcile_started += 1;
        if mode == ReconcileMode::Rateless {
            self.stats.reconcile_rateless += 1;
        }
        self.stats.reconcile_cells_sent += sent_cells;
        let deadline = now + self.config.exchange_timeout;
        self.out_sessions.insert(
            id,
            OutSession {
                peer,
                topic: topic.to_vec(),
                mode,
                deadline,
                mark,
                cells,
                encoder,
                per_frame,
                budget,
                reply: None,
                answered: false,
                records: None,
                applied: 0,
                backpressure: false,
            },
        );
        self.timers.insert((deadline, Timer::Reconcile(id)));
        true
    }

    fn on_reconcile(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        match r.kind {
            ReconcileKind::Table => self.on_table(now, from, r),
            ReconcileKind::Reply => self.on_reply(now, from, r),
            ReconcileKind::Request if r.cells.is_empty() => self.on_cell_request(now, from, r),
            // Keys wanted by request: this engine asks by reply only.
            ReconcileKind::Request => self.stats.drops.reconcile_mismatch += 1,
            ReconcileKind::DecodeFailed => self.on_decode_failed(now, from, r),
        }
    }

    /// Responder: a frame of a peer's table or stream.
    fn on_table(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        match self.topics.get(r.topic).map(|t| &t.mode) {
            None => {
                self.stats.drops.unknown_topic += 1;
                return;
            }
            Some(TopicMode::StatefulMerge(_)) => {}
            Some(_) => {
                self.stats.drops.wrong_mode += 1;
                return;
            }
        }
        let key = (from, r.session_id);
        if !self.in_sessions.contains_key(&key) && !self.open_session(now, from, r) {
            return;
        }
        let Some(mut s) = self.in_sessions.remove(&key) else { return };
        if s.topic != r.topic || s.mode != r.mode {
            self.stats.drops.reconcile_mismatch += 1;
            self.in_sessions.insert(key, s);
            return;
        }
        let (first, end, n) = (r.first_cell as usize, r.end_cell as usize, r.cells.len());
        let timeout = self.config.exchange_timeout;
        match &mut s.state {
            InState::Table(asm) => {
                self.stats.reconcile_cells_received += n as u64;
                if end != asm.len() || asm.place(first, r.cells).is_none() {
                    self.stats.drops.reconcile_mismatch += 1;
                } else if asm.complete() {
                    let ids = self.store(r.topic).map(|st| st.element_ids()).unwrap_or_default();
                    match reconcile::decode_table(asm.cells(), ids) {
                        Ok(diff) => self.finish_decoded(now, from, r.session_id, &mut s, &diff),
                        Err(_) => self.refuse_session(from, r.session_id, &mut s),
                    }
                } else {
                    s.deadline = now + timeout;
                    self.arm_gap(now, from, r.session_id, &mut s);
                }
            }
            InState::Stream(st) => {
                self.stats.reconcile_cells_received += n as u64;
                if end > self.max_symbols() {
                    self.refuse_session(from, r.session_id, &mut s);
                } else {
                    match st.feed(u64::from(r.first_cell), u64::from(r.end_cell), r.cells) {
                        Fed::Decoded => {
                            self.stats.reconcile_symbols_used += st.received();
                            let diff = st.difference().unwrap_or_default();
                            self.finish_decoded(now, from, r.session_id, &mut s, &diff);
                        }
                        Fed::Failed => self.refuse_session(from, r.session_id, &mut s),
                        Fed::Refused => self.stats.drops.reconcile_mismatch += 1,
                        Fed::Pending => {
                            s.deadline = now + timeout;
                            self.stream_progress(now, from, r.session_id, &mut s);
                        }
                    }
                }
            }
            InState::Awaiting { .. } | InState::Done => {}
        }
        self.in_sessions.insert(key, s);
    }

    /// Responder: a pending stream took a frame. Asks for the next burst
    /// once the current one is in (refusing the stream at the symbol cap),
    /// else waits for the rest of the burst.
    fn stream_progress(&mut self, now: Instant, to: SocketAddr, id: u32, s: &mut InSession) {
        let InState::Stream(st) = &mut s.state else { return };
        let max = self.max_symbols() as u64;
        let per = s.per_frame;
        if st.wants_more() {
            let got = st.received();
            if got >= max {
                self.refuse_session(to, id, s);
                return;
            }
            let end = (got + reconcile::next_burst(got, per, self.config.reconcile_burst)).min(max);
            st.requested(end);
            let topic = s.topic.clone();
            self.request_cells(to, id, s.mode, &topic, got as usize, end as usize);
        }
        // Whether the rest of this burst or the next is awaited, ask again
        // if it does not come.
        self.arm_gap(now, to, id, s);
    }

    /// Responder: cells of the table or burst are still to come; unless
    /// they arrive within [`Config::ack_timeout`] (frames reorder), ask for
    /// them again.
    fn arm_gap(&mut self, now: Instant, from: SocketAddr, id: u32, s: &mut InSession) {
        if s.gap_requests >= MAX_GAP_REQUESTS {
            return;
        }
        let at = now + self.config.ack_timeout;
        s.gap_at = Some(at);
        if !s.gap_timer {
            s.gap_timer = true;
            self.timers.insert((at, Timer::Gap(from, id)));
        }
    }

    /// Responder: the gap timer fired. Unless frames arrived since, asks for
    /// the span of cells still missing (from the first to the last gap) and
    /// re-arms, at most [`MAX_GAP_REQUESTS`] times per session.
    fn gap_timeout(&mut self, now: Instant, from: SocketAddr, id: u32) {
        let Some(mut s) = self.in_sessions.remove(&(from, id)) else { return };
        s.gap_timer = false;
        if let Some(at) = s.gap_at.filter(|&t| t > now) {
            // Frames arrived since: wait on.
            s.gap_timer = true;
            self.timers.insert((at, Timer::Gap(from, id)));
        } else if s.gap_at.is_some() {
            s.gap_at = None;
            let span = match &s.state {
                InState::Table(asm) => asm.missing_span(),
                InState::Stream(st) => {
                    // The rest of the burst (up to the first frame past a
                    // gap), or the burst we asked for.
                    let upto = st.gap().map_or(st.burst_end().max(st.requested_end()), |(_, b)| b);
                    (st.received() < upto).then_some((st.received() as usize, upto as usize))
                }
                _ => None,
            };
            if let Some((a, b)) = span {
                s.gap_requests += 1;
                let topic = s.topic.clone();
                self.request_cells(from, id, s.mode, &topic, a, b);
                self.arm_gap(now, from, id, &mut s);
            }
        }
        self.in_sessions.insert((from, id), s);
    }

    /// Responder: the first frame of a session. False if it is refused
    /// (counted, and answered where the initiator can act on it).
    fn open_session(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) -> bool {
        let priority = self.config.sync_priority;
        let cap = self.config.max_reconcile_sessions;
        if self.overloaded() {
            self.stats.backpressure_sent += 1;
            let c = self.chunk(r.topic, &[] as &[&[u8]], 0, META_BACKPRESSURE);
            self.emit_chunks(from, r.topic, r.session_id | RESPONSE_BIT, false, 0, &c, priority);
            // Remember the session, so its other frames are not answered again.
            if self.in_sessions.len() < cap.saturating_mul(4) {
                let s = InSession {
                    topic: r.topic.to_vec(),
                    mode: r.mode,
                    deadline: now + self.config.exchange_timeout,
                    per_frame: 1,
                    state: InState::Done,
                    gap_at: None,
                    gap_timer: false,
                    gap_requests: 0,
                };
                self.in_sessions.insert((from, r.session_id), s);
            }
            return false;
        }
        let full = |g: &Self| {
            g.in_sessions.values().filter(|s| s.active()).count() >= cap
                || g.in_sessions.len() >= cap.saturating_mul(4).max(1)
        };
        if full(self) {
            self.sweep(now);
            if self.in_sessions.len() >= cap.saturating_mul(4).max(1) {
                self.in_sessions.retain(|_, s| s.active());
            }
        }
        if full(self) {
            self.stats.drops.reconcile_table_full += 1;
            return false;
        }
        let per_frame = reconcile::cells_per_datagram(self.config.max_datagram, r.topic.len());
        let state = match r.mode {
            ReconcileMode::Fixed => {
                let m = r.end_cell as usize;
                if m < HASH_COUNT {
                    self.stats.drops.reconcile_mismatch += 1;
                    return false;
                }
                if m > self.max_table_cells() {
                    // Too large for us: the initiator streams instead.
                    InState::Done
                } else {
                    InState::Table(Assembly::new(m))
                }
            }
            ReconcileMode::Rateless => {
                let ids = self.store(r.topic).map(|st| st.element_ids()).unwrap_or_default();
                let pending = self.config.reconcile_burst.max(1);
                InState::Stream(Box::new(Stream::new(ids, self.max_symbols(), pending)))
            }
        };
        if let Some(round) = self.round.as_mut().filter(|x| x.peer == from) {
            round.syncing = true;
        }
        let mut s = InSession {
            topic: r.topic.to_vec(),
            mode: r.mode,
            deadline: now + self.config.exchange_timeout,
            per_frame,
            state,
            gap_at: None,
            gap_timer: false,
            gap_requests: 0,
        };
        if matches!(s.state, InState::Done) {
            self.refuse_session(from, r.session_id, &mut s);
        }
        self.in_sessions.insert((from, r.session_id), s);
        true
    }

    /// Responder: the difference is known. Sends the records the initiator
    /// lacks (G1, at least one chunk) and the reply naming the keys we lack.
    fn finish_decoded(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: u32,
        s: &mut InSession,
        diff: &Difference,
    ) {
        self.stats.reconcile_decoded += 1;
        self.stats.reconcile_differences += diff.len() as u64;
        s.state = InState::Done;
        let Some(store) = self.store(&s.topic) else { return };
        // Seen from here, side A is ours: `only_in_a` is what the initiator
        // lacks, `only_in_b` what we lack.
        let records = store.records_for(&diff.only_in_a);
        let mark = store.watermark().max(0);
        let meta = if self.overloaded() { META_BACKPRESSURE } else { 0 };
        let topic = s.topic.clone();
        let c = self.chunk(&topic, &records, self.config.max_exchange_bytes, meta);
        self.stats.reconcile_records_sent += c.included as u64;
        self.emit_chunks(to, &topic, id | RESPONSE_BIT, false, mark, &c, self.config.sync_priority);
        let keys: Vec<IbltCell> =
            diff.only_in_b.iter().map(|&k| iblt::pure_cell(k, false)).collect();
        self.stats.reconcile_key_cells_sent += keys.len() as u64;
        let (n, per) = (keys.len(), s.per_frame);
        self.send_cells(to, ReconcileKind::Reply, id, s.mode, &topic, &keys, 0, n, per);
        s.deadline = now + self.config.exchange_timeout;
        if keys.is_empty() {
            self.session_answered(now, to, 0);
        } else {
            s.state = InState::Awaiting { chunks: None, applied: 0 };
        }
    }

    /// Responder: the table or stream did not decode (or is beyond our
    /// caps): `0x03` in the session's mode.
    fn refuse_session(&mut self, to: SocketAddr, id: u32, s: &mut InSession) {
        self.stats.reconcile_decode_failed += 1;
        s.state = InState::Done;
        let topic = s.topic.clone();
        self.send_cells(to, ReconcileKind::DecodeFailed, id, s.mode, &topic, &[], 0, 0, 1);
    }

    /// Responder: our part of a session is over; so is the probe round it
    /// answered, if it was ours.
    fn session_answered(&mut self, now: Instant, peer: SocketAddr, applied: u64) {
        if self.round.is_some_and(|r| r.peer == peer && r.syncing) {
            self.finish_round(now, outcome_of(applied));
        } else {
            self.note_applied(now, applied);
        }
    }

    /// Responder: a chunk of the records our reply asked for.
    fn on_requested_records(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let Some(s) = self.in_sessions.get_mut(&(from, id)) else { return };
        let InState::Awaiting { chunks, .. } = &mut s.state else { return };
        let c = chunks.get_or_insert_with(|| Chunks::new(x.chunk_count));
        if c.count != x.chunk_count {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !c.mark(x.chunk_index) {
            return;
        }
        let complete = c.complete();
        if entries.backpressure() {
            self.backpressure_from(now, from);
        }
        let got = self.apply_records(x.topic, from, entries);
        let Some(s) = self.in_sessions.get_mut(&(from, id)) else { return };
        let InState::Awaiting { applied, .. } = &mut s.state else { return };
        *applied += got;
        let total = *applied;
        if complete {
            s.state = InState::Done;
            self.session_answered(now, from, total);
        }
    }

    /// Initiator: a chunk of the records the responder found we lack.
    fn on_session_records(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u32,
        x: &ExchangeRepr<'_>,
        entries: &Entries<'_>,
    ) {
        let timeout = self.config.exchange_timeout;
        let Some(s) = self.out_sessions.get_mut(&id) else { return };
        let (c, wm) = s.records.get_or_insert_with(|| (Chunks::new(x.chunk_count), x.watermark_ns));
        if c.count != x.chunk_count || *wm != x.watermark_ns {
            self.stats.drops.chunk_mismatch += 1;
            return;
        }
        if !c.mark(x.chunk_index) {
            return;
        }
        s.deadline = now + timeout;
        if entries.backpressure() {
            s.backpressure = true;
            self.backpressure_from(now, from);
        }
        let applied = self.apply_records(x.topic, from, entries);
        if let Some(s) = self.out_sessions.get_mut(&id) {
            s.applied += applied;
        }
        self.complete_session(now, id);
    }

    /// Initiator: a frame of the reply, the keys the responder lacks. Once
    /// the whole list is in, sends those records.
    fn on_reply(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let id = r.session_id;
        let Some(mut s) = self.take_session(from, r) else { return };
        let end = r.end_cell as usize;
        let mut asm = match &mut s.reply {
            Some(a) if a.len() == end => Some(a),
            Some(_) => None,
            None if end <= self.max_table_cells().max(self.max_symbols()) => {
                Some(s.reply.insert(Assembly::new(end)))
            }
            None => None,
        };
        let placed =
            asm.as_mut().is_some_and(|a| a.place(r.first_cell as usize, r.cells).is_some());
        let Some(asm) = asm.filter(|_| placed) else {
            self.stats.drops.reconcile_mismatch += 1;
            self.out_sessions.insert(id, s);
            return;
        };
        s.deadline = now + self.config.exchange_timeout;
        if asm.complete() && !s.answered {
            s.answered = true;
            let mut keys = Vec::with_capacity(asm.len());
            for cell in asm.cells() {
                match iblt::pure_key(cell) {
                    Some((k, false)) => keys.push(k),
                    _ => self.stats.drops.reconcile_mismatch += 1,
                }
            }
            if !keys.is_empty() {
                if let Some(store) = self.store(&s.topic) {
                    let records = store.records_for(&keys);
                    let mark = store.watermark().max(0);
                    let topic = s.topic.clone();
                    let c = self.chunk(&topic, &records, self.config.max_exchange_bytes, 0);
                    self.stats.reconcile_records_sent += c.included as u64;
                    let priority = self.config.sync_priority;
                    self.emit_chunks(from, &topic, id | RESPONSE_BIT, false, mark, &c, priority);
                }
            }
        }
        self.out_sessions.insert(id, s);
        self.complete_session(now, id);
    }

    /// Initiator: the responder wants cells `first..end` of our table, or
    /// the next rateless burst.
    fn on_cell_request(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let id = r.session_id;
        let Some(mut s) = self.take_session(from, r) else { return };
        let first = r.first_cell as usize;
        let cap = s.per_frame.saturating_mul(self.config.reconcile_burst.max(1));
        let (end, seq_end) = match s.mode {
            ReconcileMode::Fixed => (r.end_cell as usize, s.cells.len()),
            ReconcileMode::Rateless => {
                let end = (r.end_cell as usize).min(self.max_symbols()).min(first + cap);
                if let Some(enc) = s.encoder.as_mut() {
                    while s.cells.len() < end {
                        s.cells.push(enc.next_symbol());
                    }
                }
                (end, end)
            }
        };
        match s.cells.get(first..end) {
            Some(cells) if first < end && end - first <= s.budget => {
                s.budget -= end - first;
                let topic = s.topic.clone();
                let cells = cells.to_vec();
                let per = s.per_frame;
                let n = self.send_cells(
                    from,
                    ReconcileKind::Table,
                    id,
                    s.mode,
                    &topic,
                    &cells,
                    first,
                    seq_end,
                    per,
                );
                self.stats.reconcile_cells_sent += n;
                s.deadline = now + self.config.exchange_timeout;
            }
            _ => self.stats.drops.reconcile_mismatch += 1,
        }
        self.out_sessions.insert(id, s);
    }

    /// Initiator: the responder could not decode. A fixed table flips the
    /// peer to rateless and streams at once; a failed stream falls back to
    /// G1.
    fn on_decode_failed(&mut self, now: Instant, from: SocketAddr, r: &ReconcileRepr<'_>) {
        let Some(s) = self.take_session(from, r) else { return };
        let (peer, topic) = (s.peer, s.topic.clone());
        match s.mode {
            ReconcileMode::Fixed => {
                self.stats.reconcile_flips += 1;
                if let Some(ps) = self.peer_sync(peer, &topic) {
                    ps.rateless = true;
                }
                if !self.start_reconcile(now, peer, &topic, true, Some(s.cells.len())) {
                    self.start_exchange(now, peer, &topic);
                }
            }
            ReconcileMode::Rateless => {
                self.stats.reconcile_fallbacks += 1;
                if let Some(ps) = self.peer_sync(peer, &topic) {
                    ps.rateless = false;
                }
                self.start_exchange(now, peer, &topic);
            }
        }
    }

    /// Removes our session a frame names, if it is from the session's peer,
    /// for its topic and in its mode (else counts the frame).
    fn take_session(&mut self, from: SocketAddr, r: &ReconcileRepr<'_>) -> Option<OutSession> {
        match self.out_sessions.get(&r.session_id) {
            None => {
                self.stats.drops.unsolicited += 1;
                None
            }
            Some(s) if s.peer != from => {
                self.stats.drops.unsolicited += 1;
                None
            }
            Some(s) if s.topic != r.topic || s.mode != r.mode => {
                self.stats.drops.reconcile_mismatch += 1;
                None
            }
            Some(_) => self.out_sessions.remove(&r.session_id),
        }
    }

    /// Initiator: ends the session once the responder's records and (unless
    /// it signalled backpressure) its whole reply are in. A completed
    /// session counts as a full sync.
    fn complete_session(&mut self, now: Instant, id: u32) {
        let Some(s) = self.out_sessions.get(&id) else { return };
        let records_in = s.records.as_ref().is_some_and(|(c, _)| c.complete());
        if !records_in || !(s.answered || s.backpressure) {
            return;
        }
        let Some(s) = self.out_sessions.remove(&id) else { return };
        let synced = !s.backpressure;
        if synced {
            self.stats.reconcile_completed += 1;
        }
        if let Some(p) = self.peers.get_mut(&s.peer) {
            if synced {
                p.backoff.clear();
                p.failures = 0;
            }
            if let Some(ps) = p.topics.get_mut(&s.topic).filter(|_| synced) {
                let recv_to = s.records.as_ref().map(|(_, wm)| *wm);
                ps.completed(true, recv_to, Some(s.mark), s.applied);
                ps.g1_next = false;
                ps.rateless = false;
            }
        }
        if self.round.is_some_and(|r| r.peer == s.peer && r.syncing) {
            self.finish_round(now, outcome_of(s.applied));
        } else {
            self.note_applied(now, s.applied);
        }
    }

    fn reconcile_timeout(&mut self, now: Instant, id: u32) {
        let Some(s) = self.out_sessions.get(&id) else { return };
        if s.deadline > now {
            // Progress moved the deadline: one timer per session, re-armed.
            self.timers.insert((s.deadline, Timer::Reconcile(id)));
            return;
        }
        let Some(s) = self.out_sessions.remove(&id) else { return };
        self.stats.reconcile_timeouts += 1;
        if let Some(ps) = self.peers.get_mut(&s.peer).and_then(|p| p.topics.get_mut(&s.topic)) {
            ps.g1_next = true;
        }
        if self.round.is_some_and(|r| r.peer == s.peer) {
            self.finish_round(now, Outcome::Failed);
        }
        self.note_applied(now, s.applied);
    }

    /// Asks the initiator for cells `first..end` of its table or stream.
    fn request_cells(
        &mut self,
        to: SocketAddr,
        id: u32,
        mode: ReconcileMode,
        topic: &[u8],
        first: usize,
        end: usize,
    ) {
        self.stats.reconcile_requests += 1;
        self.send_cells(to, ReconcileKind::Request, id, mode, topic, &[], first, end, 1);
    }

    /// Sends `cells` as positions `first..` of a sequence ending at `end`,
    /// `per_frame` to a frame; one frame without cells if there are none.
    /// Returns the cells sent.
    #[allow(clippy::too_many_arguments)]
    fn send_cells(
        &mut self,
        to: SocketAddr,
        kind: ReconcileKind,
        session_id: u32,
        mode: ReconcileMode,
        topic: &[u8],
        cells: &[IbltCell],
        first: usize,
        end: usize,
        per_frame: usize,
    ) -> u64 {
        let pos = |p: usize| u32::try_from(p).unwrap_or(u32::MAX);
        let priority = self.config.sync_priority;
        if cells.is_empty() {
            let frame = GossipFrame::Reconcile(ReconcileRepr {
                kind,
                session_id,
                mode,
                first_cell: pos(first),
                end_cell: pos(end),
                topic,
                cells: Cells::from(cells),
            });
            self.send(to, priority, &frame);
            return 0;
        }
        let per = per_frame.max(1);
        for (i, chunk) in cells.chunks(per).enumerate() {
            let frame = GossipFrame::Reconcile(ReconcileRepr {
                kind,
                session_id,
                mode,
                first_cell: pos(first + i * per),
                end_cell: pos(end),
                topic,
                cells: Cells::from(chunk),
            });
            self.send(to, priority, &frame);
        }
        cells.len() as u64
    }

    /// The largest fixed table we build or decode.
    fn max_table_cells(&self) -> usize {
        self.config.reconcile_max_cells.clamp(HASH_COUNT, iblt::MAX_CELLS)
    }

    /// The most rateless symbols a session streams or decodes.
    fn max_symbols(&self) -> usize {
        self.config.reconcile_max_symbols.clamp(1, u32::MAX as usize / 2)
    }

    // ----------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------

    fn install_members(&mut self, list: Vec<Member>) {
        self.by_addr = list.iter().enumerate().map(|(i, m)| (m.addr, i)).collect();
        self.by_id = list.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        self.self_index = self.by_id.get(&self.me.id).copied().unwrap_or(0);
        let ids: Vec<[u8; 32]> = list.iter().map(|m| m.id).collect();
        let hashed: Vec<[u8; 32]> = ids.iter().map(|id| *blake3::hash(id).as_bytes()).collect();
        self.primary = Cube::new(&ids);
        self.dual = Cube::new(&hashed);
        self.members = list;
    }

    fn peer_state(&mut self, peer: SocketAddr) -> Option<&mut PeerState> {
        if !self.peers.contains_key(&peer)
            && self.peers.len() >= self.config.max_members.saturating_mul(2)
        {
            return None;
        }
        Some(self.peers.entry(peer).or_default())
    }

    fn peer_sync(&mut self, peer: SocketAddr, topic: &[u8]) -> Option<&mut PeerSync> {
        let range = self.config.full_sync_every;
        let p = self.peer_state(peer)?;
        Some(p.topics.entry(topic.to_vec()).or_insert_with(|| PeerSync::new(range)))
    }

    /// An id for a G1 exchange or a G4 session of ours, unused by either.
    fn fresh_exchange_id(&mut self) -> u32 {
        loop {
            let id = (self.rng.next_u64() as u32) & !RESPONSE_BIT;
            if id != 0 && !self.outbound.contains_key(&id) && !self.out_sessions.contains_key(&id) {
                return id;
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Bytes of entries one G1 chunk of `topic` can carry.
    fn g1_capacity(&self, topic: &[u8]) -> usize {
        self.config.max_datagram.saturating_sub(GOSSIP_OVERHEAD + G1_OVERHEAD + topic.len())
    }

    fn chunk<R: AsRef<[u8]>>(
        &mut self,
        topic: &[u8],
        records: &[R],
        max: usize,
        meta: u8,
    ) -> Chunked {
        let c = entries::chunk(records, self.g1_capacity(topic), max, meta);
        self.stats.records_oversize += c.oversize as u64;
        if c.truncated {
            self.stats.exchanges_truncated += 1;
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_chunks(
        &mut self,
        dest: SocketAddr,
        topic: &[u8],
        id: u32,
        full: bool,
        watermark: i64,
        c: &Chunked,
        priority: u8,
    ) {
        let count = c.chunks.len().min(usize::from(u16::MAX)) as u16;
        for (i, e) in c.chunks.iter().take(usize::from(count)).enumerate() {
            let frame = GossipFrame::Exchange(ExchangeRepr {
                full,
                exchange_id: id,
                chunk_index: i as u16,
                chunk_count: count,
                topic,
                watermark_ns: watermark.max(0),
                entries: e,
            });
            self.send(dest, priority, &frame);
        }
        self.stats.records_sent += c.included as u64;
    }

    fn send(&mut self, dest: SocketAddr, priority: u8, frame: &GossipFrame<'_>) {
        self.send_padded(dest, priority, frame, 0);
    }

    fn send_padded(
        &mut self,
        dest: SocketAddr,
        priority: u8,
        frame: &GossipFrame<'_>,
        padding: usize,
    ) {
        if let Some(buf) = emit(frame) {
            self.enqueue(dest, priority, frame_number(frame), buf, padding);
        }
    }

    /// Queues a frame; refuses it (counted) where it would break the
    /// amplification bound of the datagram being answered.
    fn enqueue(
        &mut self,
        dest: SocketAddr,
        priority: u8,
        frame: u8,
        payload: Vec<u8>,
        padding: usize,
    ) {
        let d = OutDatagram { dest, payload, padding, frame };
        if let Some((_, left)) = self.budget.as_mut().filter(|(src, _)| *src == dest) {
            match left.checked_sub(d.wire_len()) {
                Some(rest) => *left = rest,
                None => {
                    self.stats.drops.amplification += 1;
                    return;
                }
            }
        }
        if frame == 3 {
            self.queued_rumors += 1;
        }
        if self.egress.push(priority, d).is_err() {
            self.stats.drops.egress_full += 1;
        }
    }

    /// Moves what the egress cap allows into the outbox, and the events.
    fn flush(&mut self, now: Instant, out: &mut Outbox) {
        self.egress_wakeup = None;
        while let Some(next) = self.egress.peek() {
            let need = (next.wire_len() as f64).min(self.config.egress_burst);
            if !self.egress_bucket.take(now, need) {
                self.stats.egress_deferred += 1;
                self.egress_wakeup = Some(self.egress_bucket.ready_at(now, need));
                break;
            }
            let Some(q) = self.egress.pop() else { break };
            let mut d = q.item;
            // Sealed here, in wire order: counters reach each peer in order.
            let stamp = self.sealer.next(self.unix_ms(now));
            let len = d.payload.len();
            d.payload.resize(d.wire_len(), 0);
            if self.key.seal_gossip(&mut d.payload, len, d.padding, &stamp).is_err() {
                continue;
            }
            self.stats.tx_datagrams += 1;
            self.stats.tx_bytes += d.payload.len() as u64;
            self.stats.sent.bump(usize::from(d.frame));
            out.transmits.push(Transmit { dest: d.dest, payload: d.payload });
        }
        out.events.append(&mut self.events);
        out.marks.append(&mut self.marks);
    }

    /// Forgets inbound exchanges and reconciliation sessions past their
    /// deadline and idle rate-limit entries.
    fn sweep(&mut self, now: Instant) {
        self.inbound.retain(|_, x| x.deadline > now);
        self.in_sessions.retain(|_, s| s.deadline > now);
        self.limiter.sweep(now);
        self.guard.sweep(self.unix_ms(now));
        if self.mismatch_until.is_some_and(|t| now >= t) {
            self.mismatch_until = None;
        }
    }
}

/// A frame's bytes, with room for the envelope reserved.
fn emit(frame: &GossipFrame<'_>) -> Option<Vec<u8>> {
    let len = frame.buffer_len();
    let mut buf = Vec::with_capacity(len + GOSSIP_OVERHEAD);
    buf.resize(len, 0);
    frame.emit(&mut buf).ok()?;
    Some(buf)
}

fn outcome_of(applied: u64) -> Outcome {
    if applied > 0 { Outcome::Applied(applied) } else { Outcome::Unchanged }
}

fn frame_number(f: &GossipFrame<'_>) -> u8 {
    match f {
        GossipFrame::Exchange(_) => 1,
        GossipFrame::Digest(_) => 2,
        GossipFrame::Rumor(_) => 3,
        GossipFrame::Pull(_) | GossipFrame::Reconcile(_) => 4,
        GossipFrame::RumorAck(_) => 5,
        GossipFrame::Snapshot(_) => 6,
    }
}

/// splitmix64's finaliser: spreads a topic's fingerprint before XOR.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_dimension_codes_round_trip() {
        for dim in 0..=u32::from(MAX_DIMENSION) {
            for route in [Route::Primary, Route::Dual] {
                for rerouted in [false, true] {
                    let b = encode_dimension(route, dim, rerouted);
                    assert_eq!(decode_dimension(b), Some(Arrival::Cube { route, dim, rerouted }));
                }
            }
        }
        assert_eq!(decode_dimension(0xFF), Some(Arrival::Origin));
        assert_eq!(decode_dimension(0xFE), Some(Arrival::Fallback));
        for bad in [0x20, 0x3F, 0x60, 0xA0, 0xE0, 0xFD] {
            assert_eq!(decode_dimension(bad), None, "{bad:#x}");
        }
    }

    #[test]
    fn chunks_track_arrivals() {
        let mut c = Chunks::new(70);
        assert!(!c.complete());
        for i in 0..70 {
            assert!(c.mark(i));
            assert!(!c.mark(i));
        }
        assert!(!c.mark(70));
        assert!(c.complete());
        assert!(Chunks::new(0).complete());
    }
}
