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
//!
//! # Layout
//! [`Gossip`] holds the membership view, the topics, the timers and the
//! per-peer sync state shared by every protocol part; each part keeps its
//! own state and invariants in its own file:
//! - `rumor`: G3 pushes and G5 ACKs, and the rumor bodies retained while
//!   sends of them await ACKs (`Retained`).
//! - `exchange`: G2 probe rounds (`ProbeOrder`) and G1 exchanges, and the
//!   chunk tracking every chunked answer uses (`Chunks`).
//! - `pull`: G4 pulls (`Pulls`) and request-response queries.
//! - `session`: G4 IBLT reconciliation sessions, both sides.
//! - `egress`: the transmit queue, its byte budget, sealing and the
//!   amplification bound (`Egress`).

mod egress;
mod exchange;
mod pull;
mod rumor;
mod session;

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ricochet_wire::Error as WireError;
use ricochet_wire::gossip::{GossipFrame, MAX_PULL_RESPONSE, PullRepr};
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD, Opened};

use super::dedup::{Admission, RumorLru};
use super::hypercube::{Cube, DimensionHealth};
use super::limit::PeerLimiter;
use super::replay::ReplayGuard;
use super::stats::Stats;
use super::sync::{AdaptiveInterval, Backoff, Outcome, PeerSync};
use super::{
    AMPLIFICATION, Config, Event, Member, Outbox, PublishError, Store, TopicError, TopicMode,
};
use crate::dht::rng::Rng;
use egress::{Egress, frame_number};
use exchange::{InExchange, OutExchange, ProbeOrder, Round};
use pull::{Pulls, QueryState};
use rumor::Retained;
use session::{InSession, OutSession};

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
/// Bytes of a G3 frame besides its topic and payload.
const G3_OVERHEAD: usize = 10;
/// Bytes a query adds in front of its payload: query id and origin id.
const QUERY_HEADER: usize = 4 + 32;

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
    retained: Retained,
    next_seq: u64,
    timers: BTreeSet<(Instant, Timer)>,
    peers: BTreeMap<SocketAddr, PeerState>,
    limiter: PeerLimiter,
    egress: Egress,
    interval: AdaptiveInterval,
    next_probe: Option<Instant>,
    round: Option<Round>,
    probe_order: ProbeOrder,
    outbound: BTreeMap<u32, OutExchange>,
    inbound: BTreeMap<(SocketAddr, u32), InExchange>,
    pulls: Pulls,
    queries: BTreeMap<u32, QueryState>,
    out_sessions: BTreeMap<u32, OutSession>,
    in_sessions: BTreeMap<(SocketAddr, u32), InSession>,
    events: Vec<Event>,
    /// Rumors originated here, for the caller's dedup shards
    /// ([`Config::external_dedup`]).
    marks: Vec<(RumorId, u8)>,
    /// Refuses replayed and out-of-window datagrams.
    guard: ReplayGuard,
    /// The wall clock anchor: unix ms at an instant.
    clock: (Instant, u64),
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
            retained: Retained::default(),
            next_seq: 1,
            timers: BTreeSet::new(),
            peers: BTreeMap::new(),
            limiter: PeerLimiter::new(
                config.peer_rate,
                config.peer_burst,
                config.max_tracked_peers,
            ),
            egress: Egress::new(&config, id),
            interval: AdaptiveInterval::new(
                config.interval_min,
                config.interval_base,
                config.interval_max,
                config.interval_jitter,
            ),
            next_probe: Some(first),
            round: None,
            probe_order: ProbeOrder::default(),
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            pulls: Pulls::default(),
            queries: BTreeMap::new(),
            out_sessions: BTreeMap::new(),
            in_sessions: BTreeMap::new(),
            events: Vec::new(),
            marks: Vec::new(),
            guard: ReplayGuard::new(config.max_replay_senders),
            clock: (now, 0),
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
        self.egress.sender()
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
        self.retained.pending()
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
        [self.timers.first().map(|(t, _)| *t), self.next_probe, self.egress.wakeup()]
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
            self.probe_order.reset();
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

    /// Whether `topic` is a registered StatefulMerge topic (the only kind
    /// pulls, exchanges and reconciliations apply to); the error says what
    /// it is instead.
    fn merge_topic(&self, topic: &[u8]) -> Result<(), PublishError> {
        match self.topics.get(topic).map(|t| &t.mode) {
            None => Err(PublishError::UnknownTopic),
            Some(TopicMode::StatefulMerge(_)) => Ok(()),
            Some(_) => Err(PublishError::WrongMode),
        }
    }

    /// [`Gossip::merge_topic`] for a frame received: false, with the drop
    /// counted by reason, when the frame's topic is not a StatefulMerge one.
    pub(super) fn admit_merge_topic(&mut self, topic: &[u8]) -> bool {
        match self.merge_topic(topic) {
            Ok(()) => true,
            Err(PublishError::UnknownTopic) => {
                self.stats.drops.unknown_topic += 1;
                false
            }
            Err(_) => {
                self.stats.drops.wrong_mode += 1;
                false
            }
        }
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
        self.merge_topic(topic)?;
        if self.pulls.len() >= self.config.max_outstanding || self.pulls.contains(peer, topic) {
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
        self.pulls.start(seq, peer, topic);
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
        self.merge_topic(topic)?;
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
        self.egress.set_budget(
            (!self.by_addr.contains_key(&from))
                .then(|| (from, bytes.len().saturating_mul(AMPLIFICATION))),
        );
        self.dispatch(now, from, frame, body);
        self.egress.set_budget(None);
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

/// splitmix64's finaliser: spreads a topic's fingerprint before XOR.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
