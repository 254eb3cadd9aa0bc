//! The DHT node: one state machine owning a routing table, a store shard,
//! the outstanding requests and the running lookups.
//!
//! # Contract
//! - Inputs: [`Node::handle`] (a datagram), [`Node::handle_timeout`] (the
//!   timer from [`Node::poll_timeout`] fired), and the commands
//!   [`Node::bootstrap`], [`Node::find_node`], [`Node::find_value`],
//!   [`Node::put`]. Outputs: datagrams and [`Event`]s in the caller's
//!   [`Outbox`]. Nothing else leaves the node.
//! - Requests (PING, FIND_NODE, FIND_VALUE, STORE) are answered to the
//!   datagram's source address after the per-IP rate limit; a reply is
//!   never larger than [`DATAGRAM_BUDGET`].
//! - A response is accepted only if its transaction id names an
//!   outstanding request, it comes from the address that request went to,
//!   it is the message type that request expects, and — when the request
//!   went to a known id — its sender id is that id. Anything else is
//!   dropped and counted (`unsolicited`, `addr_mismatch`,
//!   `type_mismatch`, `id_mismatch`); a wrong id also counts as a failure
//!   of the peer we meant to reach. Transaction ids are BLAKE3 outputs
//!   keyed by the seed, so other peers cannot predict them; with
//!   [`super::Config::txid_tag`] their first byte names the node's shard.
//! - Every outstanding request has a deadline (`request_timeout`); on
//!   expiry it counts as a failure of that peer in the routing table (back-
//!   off, Bad after repeated failures) and of the lookup that sent it.
//! - Lookups: α requests in flight, converge on the k closest (see
//!   [`super::query`]). A node that a reply lists but our routing table
//!   holds as Bad at that address is not asked (`bad_peer_skipped`): it
//!   failed our recent requests, so asking would only wait out its
//!   timeouts. FIND_VALUE stops at the first verified record and
//!   reports one record per slot. A put stores locally, looks up the key,
//!   then STOREs to the k closest that answered.
//! - Maintenance on each tick: expired records purged; stale buckets
//!   refreshed (a lookup for a random id in the bucket); records due
//!   re-stored to the key's current k closest. A STORE of a record this
//!   node holds pushes its own re-store back, so one holder per interval
//!   does the work.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use ricochet_wire::Error as WireError;
use ricochet_wire::dht::{
    Body, BodyRepr, DATAGRAM_BUDGET, HEADER_LEN, MAX_NODES, MAX_RECORDS, Message, MessageRepr,
    MessageType, NODE_LEN, NodeInfo, NodeList, REQUEST_PADDING, RecordList, StoreStatus,
    reply_budget,
};
use ricochet_wire::record::{self, Record, RecordRepr};

use super::estimate::{Estimator, SizeEstimate};
use super::id::{Distance, NodeId};
use super::limit::Limiter;
use super::query::{Lookup, PutAcks, QueryId};
use super::rng::Rng;
use super::routing::{Contact, Failure, Filter, Observed, Refusal as RoutingRefusal, RoutingTable};
use super::stats::Stats;
use super::store::{self, Accepted, RecordBuf, Refusal, Store};
use super::{AllowAll, Config, Event, Outbox, RecordPolicy, Transmit};

/// Why [`Node::put`] refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutError {
    /// Not a structurally valid record.
    Malformed(WireError),
    /// The record failed a store check (stale, expired, bad signature…).
    Refused(Refusal),
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Malformed(e) => write!(f, "malformed record: {e}"),
            PutError::Refused(r) => write!(f, "record refused: {}", r.reason()),
        }
    }
}

impl std::error::Error for PutError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingFor {
    Bootstrap,
    Probe,
}

/// What an outstanding request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    Ping(PingFor),
    FindNode(QueryId),
    FindValue(QueryId),
    Store(QueryId),
}

impl Req {
    fn expects(self) -> MessageType {
        match self {
            Req::Ping(_) => MessageType::Pong,
            Req::FindNode(_) => MessageType::Nodes,
            Req::FindValue(_) => MessageType::Value,
            Req::Store(_) => MessageType::StoreAck,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    addr: SocketAddr,
    expect: Option<NodeId>,
    what: Req,
    sent_at: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request(u64),
    Query(QueryId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    User,
    Bootstrap,
    Refresh,
    Replicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FindNode,
    FindValue,
    Put,
}

#[derive(Debug)]
struct Query {
    purpose: Purpose,
    kind: Kind,
    lookup: Lookup,
    deadline: Instant,
    found: Vec<RecordBuf>,
    found_hop: Option<u8>,
    /// Records to STORE once the lookup converges (puts).
    puts: Vec<RecordBuf>,
    /// Set once the STOREs went out: (targets, acks).
    storing: Option<(u32, PutAcks)>,
}

#[derive(Debug, Clone, Copy)]
struct Bootstrap {
    outstanding: usize,
    lookup_started: bool,
}

/// Most bootstrap addresses pinged at once.
const MAX_BOOTSTRAP: usize = 64;
/// PONG observations kept for the external-address vote.
const VOTES: usize = 16;
/// Samples kept by the size estimator.
const ESTIMATOR_SAMPLES: usize = 16;

/// A DHT node (see the module docs).
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    config: Config,
    rng: Rng,
    txid_key: [u8; 32],
    txid_counter: u64,
    table: RoutingTable,
    store: Store,
    pending: BTreeMap<u64, Pending>,
    timers: BTreeSet<(Instant, Timer)>,
    queries: BTreeMap<QueryId, Query>,
    next_query: u64,
    limiter: Limiter,
    estimator: Estimator,
    votes: VecDeque<(NodeId, SocketAddr)>,
    external: Option<SocketAddr>,
    unix_anchor: (Instant, u64),
    next_tick: Instant,
    bootstrap: Option<Bootstrap>,
    refresh_queue: VecDeque<usize>,
    refreshing: usize,
    replicating: usize,
    lookup_verifications: u64,
    stats: Stats,
}

impl Node {
    /// A node for the holder of `public_key` (its id is
    /// `BLAKE3(public_key)`), accepting every verified record.
    /// `now_unix` is the wall-clock unix time at `now`.
    pub fn new(public_key: &[u8; 32], config: Config, now: Instant, now_unix: u64) -> Self {
        Node::with_policy(public_key, config, Box::new(AllowAll), now, now_unix)
    }

    /// As [`Node::new`] with a record-authority policy.
    pub fn with_policy(
        public_key: &[u8; 32],
        config: Config,
        policy: Box<dyn RecordPolicy>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        let id = NodeId::from_public_key(public_key);
        let mut rng = Rng::from_seed(config.seed);
        let mut key_material = config.seed;
        key_material[0] ^= 0x7A;
        let txid_key = record::node_id(&key_material);
        let k = config.routing.k;
        let first_tick = now + config.tick / 2 + rng.jitter(config.tick / 2);
        Node {
            id,
            rng,
            txid_key,
            txid_counter: 0,
            table: RoutingTable::new(id, config.routing.clone()),
            store: Store::new(config.store.clone(), policy),
            pending: BTreeMap::new(),
            timers: BTreeSet::new(),
            queries: BTreeMap::new(),
            next_query: 1,
            limiter: Limiter::new(config.rate.clone()),
            estimator: Estimator::new(ESTIMATOR_SAMPLES, k.div_ceil(2), config.estimate_window),
            votes: VecDeque::with_capacity(VOTES),
            external: None,
            unix_anchor: (now, now_unix),
            next_tick: first_tick,
            bootstrap: None,
            refresh_queue: VecDeque::new(),
            refreshing: 0,
            replicating: 0,
            lookup_verifications: 0,
            stats: Stats::default(),
            config,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-anchors wall-clock time: `now_unix` is the unix time at `now`
    /// (call after a clock step; unix time between calls is derived from
    /// `now`).
    pub fn set_unix_time(&mut self, now: Instant, now_unix: u64) {
        self.unix_anchor = (now, now_unix);
    }

    /// Unix seconds at `now`, from the anchor.
    pub fn now_unix(&self, now: Instant) -> u64 {
        let (at, unix) = self.unix_anchor;
        unix.saturating_add(now.saturating_duration_since(at).as_secs())
    }

    /// The routing table (for `/debug/dht` and the peer cache).
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The record store shard.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.verifications = self.store.verifications() + self.lookup_verifications;
        s
    }

    /// Outstanding requests.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Running lookups (user and internal).
    pub fn running_queries(&self) -> usize {
        self.queries.len()
    }

    /// The external address most recent PONGs agree on.
    pub fn external_addr(&self) -> Option<SocketAddr> {
        self.external
    }

    /// The network size estimate with its 95 % interval, from recent
    /// lookups and the nodes closest to our own id (see
    /// [`super::estimate`]); `None` until enough nodes are known.
    pub fn size_estimate(&self, now: Instant) -> Option<SizeEstimate> {
        let k = self.config.routing.k;
        let filter = Filter { skip_bad: true, ..Filter::default() };
        let own: Vec<Distance> = self
            .table
            .closest(now, &self.id, k, filter)
            .iter()
            .map(|e| e.id().distance(&self.id))
            .collect();
        self.estimator.estimate(now, &own)
    }

    /// The peer cache to persist: up to `max` good peers, encoded with
    /// [`super::peers::encode`]. Feed the decoded addresses to
    /// [`Node::bootstrap`] after a restart.
    pub fn export_peers(&self, now: Instant, max: usize) -> Vec<u8> {
        super::peers::encode(&self.table.export(now, max))
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.timers.first().map(|(t, _)| *t);
        Some(next.map_or(self.next_tick, |t| t.min(self.next_tick)))
    }

    /// Processes one datagram from `from`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], out: &mut Outbox) {
        self.stats.rx_datagrams += 1;
        let msg = match Message::new_checked(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.drops.malformed(e);
                return;
            }
        };
        let sender = NodeId(*msg.sender());
        if sender == self.id {
            self.stats.drops.own_id += 1;
            return;
        }
        if !usable(&from) {
            self.stats.drops.bad_source += 1;
            return;
        }
        match msg.body() {
            Body::Ping | Body::FindNode { .. } | Body::FindValue { .. } | Body::Store(_) => {
                self.on_request(now, from, sender, &msg, out);
            }
            _ => self.on_response(now, from, sender, &msg, out),
        }
        self.start_refreshes(now, out);
    }

    /// Processes every timer due at `now`: request deadlines, lookup
    /// deadlines and the maintenance tick.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Request(txid) => {
                    if let Some(p) = self.pending.remove(&txid) {
                        self.stats.timeouts += 1;
                        self.request_failed(now, p, true, out);
                    }
                }
                Timer::Query(qid) => {
                    if let Some(q) = self.queries.remove(&qid) {
                        self.query_expired(now, qid, q, out);
                    }
                }
            }
        }
        if now >= self.next_tick {
            self.maintain(now, out);
        }
        // Lookups held back by `max_pending` resume as requests complete.
        let ids: Vec<QueryId> = self.queries.keys().copied().collect();
        for qid in ids {
            if let Some(q) = self.queries.remove(&qid) {
                self.step(now, qid, q, out);
            }
        }
        self.start_refreshes(now, out);
    }

    /// Joins the network through `addrs` (addresses only, ids unknown):
    /// pings each, then looks up our own id through those that answer and
    /// (if configured) refreshes the buckets beyond the nearest. Ends with
    /// [`Event::Bootstrapped`] or [`Event::BootstrapFailed`].
    pub fn bootstrap(&mut self, now: Instant, addrs: &[SocketAddr], out: &mut Outbox) {
        let mut sent = 0;
        let mut seen = BTreeSet::new();
        for addr in addrs.iter().filter(|a| usable(a)).take(MAX_BOOTSTRAP) {
            if seen.insert(*addr)
                && self.request(
                    now,
                    out,
                    *addr,
                    None,
                    Req::Ping(PingFor::Bootstrap),
                    BodyRepr::Ping,
                )
            {
                sent += 1;
            }
        }
        let b = self.bootstrap.get_or_insert(Bootstrap { outstanding: 0, lookup_started: false });
        b.outstanding += sent;
        if !b.lookup_started && !self.table.is_empty() {
            b.lookup_started = true;
            self.start_lookup(now, Purpose::Bootstrap, Kind::FindNode, self.id, Vec::new(), out);
        } else if !b.lookup_started && b.outstanding == 0 {
            self.bootstrap = None;
            out.events.push(Event::BootstrapFailed);
        }
    }

    /// Starts an iterative FIND_NODE for `target`; ends with
    /// [`Event::FindNodeDone`].
    pub fn find_node(&mut self, now: Instant, target: NodeId, out: &mut Outbox) -> QueryId {
        self.start_lookup(now, Purpose::User, Kind::FindNode, target, Vec::new(), out)
    }

    /// Starts an iterative FIND_VALUE for `key`; ends with
    /// [`Event::FindValueDone`].
    pub fn find_value(&mut self, now: Instant, key: NodeId, out: &mut Outbox) -> QueryId {
        self.start_lookup(now, Purpose::User, Kind::FindValue, key, Vec::new(), out)
    }

    /// Publishes a signed record: checks it as a STORE would (signature
    /// included), keeps it in the local store, looks up its key and STOREs
    /// it to the k closest nodes; ends with [`Event::PutDone`]. From then on
    /// (if the local store took it) the record is re-stored every
    /// `replicate_interval` until it expires; re-sign it with a higher seq
    /// and put it again to extend its life.
    pub fn put(
        &mut self,
        now: Instant,
        record: &[u8],
        out: &mut Outbox,
    ) -> Result<QueryId, PutError> {
        let rec = Record::new_checked(record).map_err(PutError::Malformed)?;
        let now_unix = self.now_unix(now);
        let next = self.next_replication(now);
        match self.store.put(now_unix, &rec, next) {
            Ok(Accepted::Refreshed) => self.stats.records_refreshed += 1,
            Ok(_) => self.stats.records_stored += 1,
            // A full local store does not stop publishing elsewhere.
            Err(Refusal::StoreFull | Refusal::KeyFull) => {
                self.lookup_verifications += 1;
                store::check(&rec, now_unix, self.store.settings(), self.store.policy())
                    .map_err(PutError::Refused)?;
            }
            Err(r) => return Err(PutError::Refused(r)),
        }
        let buf = RecordBuf::verified(&rec);
        Ok(self.start_lookup(now, Purpose::User, Kind::Put, NodeId(*rec.key()), vec![buf], out))
    }

    // ---- requests -------------------------------------------------------

    fn on_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: NodeId,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        if !self.limiter.allow(now, from.ip())
            || (matches!(msg.body(), Body::Store(_)) && !self.limiter.allow_store(now))
        {
            self.stats.drops.rate_limited += 1;
            return;
        }
        let observed = self.table.observe(now, sender, from, Contact::Request);
        self.after_observe(now, observed, out);
        let txid = msg.transaction_id();
        // The source is not proven: the reply is at most three times the
        // request (PONG and STORE_ACK always are; NODES and VALUE are cut).
        let budget = reply_budget(msg.as_bytes().len());
        let bytes = match msg.body() {
            Body::Ping => encode(&self.id, txid, BodyRepr::Pong { observed: from }),
            Body::FindNode { target, .. } => {
                let fit = (budget - HEADER_LEN - 1) / NODE_LEN;
                let (nodes, more) = self.closest_list(now, &NodeId(*target), sender, fit);
                if more && fit < MAX_NODES {
                    self.stats.replies_trimmed += 1;
                }
                encode(&self.id, txid, BodyRepr::Nodes(nodes))
            }
            Body::FindValue { key, .. } => self.value_reply(now, txid, key, sender, budget),
            Body::Store(record) => {
                let status = self.on_store(now, &record);
                encode(&self.id, txid, BodyRepr::StoreAck(status))
            }
            _ => None,
        };
        if let Some(payload) = bytes {
            self.stats.requests_answered += 1;
            self.transmit(out, from, payload);
        }
    }

    fn on_store(&mut self, now: Instant, record: &Record<'_>) -> StoreStatus {
        let now_unix = self.now_unix(now);
        let next = self.next_replication(now);
        match self.store.put(now_unix, record, next) {
            Ok(Accepted::Refreshed) => {
                self.stats.records_refreshed += 1;
                StoreStatus::Stored
            }
            Ok(_) => {
                self.stats.records_stored += 1;
                StoreStatus::Stored
            }
            Err(r) => {
                self.stats.drops.record(r);
                r.status()
            }
        }
    }

    /// VALUE within `reply` bytes: as many live records under `key` as fit
    /// (starting at a random one, so every publisher gets served), then the
    /// closest nodes that still fit.
    fn value_reply(
        &mut self,
        now: Instant,
        txid: u64,
        key: &[u8; 32],
        requester: NodeId,
        reply: usize,
    ) -> Option<Vec<u8>> {
        let now_unix = self.now_unix(now);
        let count = self.store.get(key, now_unix).count();
        let start = self.rng.index(count);
        // After the header, the record count and the node count: `budget`
        // is what this reply may still use, `full` what a padded request's
        // reply could (to tell when the budget cut something).
        let mut budget = reply - HEADER_LEN - 2;
        let mut full = DATAGRAM_BUDGET - HEADER_LEN - 2;
        let mut records = RecordList::new();
        let mut trimmed = false;
        let held: Vec<&RecordBuf> = self.store.get(key, now_unix).collect();
        for r in held.iter().cycle().skip(start).take(count) {
            let need = 2 + r.as_bytes().len();
            if need > full || records.len() >= MAX_RECORDS {
                continue;
            }
            full -= need;
            if need > budget {
                trimmed = true;
            } else if records.push(RecordRepr::from_view(&r.view())).is_ok() {
                budget -= need;
            }
        }
        let fit = budget / NODE_LEN;
        let (nodes, more) = self.closest_list(now, &NodeId(*key), requester, fit);
        if trimmed || (more && fit < MAX_NODES.min(full / NODE_LEN)) {
            self.stats.replies_trimmed += 1;
        }
        encode(&self.id, txid, BodyRepr::Value { records, nodes })
    }

    /// Up to `n` of the known nodes closest to `target` (never `exclude`,
    /// nor a Bad one), and whether the table held more than `n`.
    fn closest_list(
        &self,
        now: Instant,
        target: &NodeId,
        exclude: NodeId,
        n: usize,
    ) -> (NodeList, bool) {
        let filter = Filter { exclude: Some(exclude), skip_bad: true, skip_backoff: false };
        let n = n.min(MAX_NODES);
        let found = self.table.closest(now, target, n + 1, filter);
        let mut list = NodeList::new();
        for e in found.iter().take(n) {
            if list.push(e.info()).is_err() {
                break;
            }
        }
        (list, found.len() > n)
    }

    // ---- responses ------------------------------------------------------

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: NodeId,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let txid = msg.transaction_id();
        let Some(p) = self.pending.get(&txid).copied() else {
            self.stats.drops.unsolicited += 1;
            return;
        };
        if p.addr != from {
            self.stats.drops.addr_mismatch += 1;
            return;
        }
        if p.what.expects() != msg.message_type() {
            self.stats.drops.type_mismatch += 1;
            return;
        }
        self.pending.remove(&txid);
        self.timers.remove(&(p.deadline, Timer::Request(txid)));
        if let Some(expected) = p.expect
            && expected != sender
        {
            self.stats.drops.id_mismatch += 1;
            self.request_failed(now, p, false, out);
            return;
        }
        self.stats.responses_matched += 1;
        let rtt = now.saturating_duration_since(p.sent_at);
        let observed = self.table.observe(now, sender, from, Contact::Reply { rtt });
        self.after_observe(now, observed, out);
        match (p.what, msg.body()) {
            (Req::Ping(why), Body::Pong { observed }) => {
                self.note_external(sender, observed, out);
                if why == PingFor::Bootstrap {
                    self.bootstrap_answer(now, true, out);
                }
            }
            (Req::FindNode(qid), Body::Nodes(nodes)) => {
                self.lookup_reply(now, qid, sender, nodes.iter(), None, out);
            }
            (Req::FindValue(qid), Body::Value { records, nodes }) => {
                self.lookup_reply(now, qid, sender, nodes.iter(), Some(records), out);
            }
            (Req::Store(qid), Body::StoreAck(status)) => {
                self.store_ack(now, qid, Some(status), out)
            }
            _ => {}
        }
    }

    fn lookup_reply(
        &mut self,
        now: Instant,
        qid: QueryId,
        sender: NodeId,
        nodes: impl Iterator<Item = NodeInfo>,
        records: Option<ricochet_wire::dht::Records<'_>>,
        out: &mut Outbox,
    ) {
        let Some(mut q) = self.queries.remove(&qid) else {
            self.stats.late_responses += 1;
            return;
        };
        let Some(hop) = q.lookup.replied(&sender) else {
            self.stats.late_responses += 1;
            self.queries.insert(qid, q);
            return;
        };
        for n in nodes {
            if NodeId(n.id) == self.id || !usable(&n.addr) {
                self.stats.drops.bad_node += 1;
                continue;
            }
            let settings = self.table.settings();
            let bad = self.table.get(&NodeId(n.id)).is_some_and(|e| {
                e.addr() == n.addr && e.health(now, settings) == super::Health::Bad
            });
            if !q.lookup.add_reported(n, hop.saturating_add(1), bad) && bad {
                self.stats.drops.bad_peer_skipped += 1;
            }
        }
        if let Some(records) = records {
            let now_unix = self.now_unix(now);
            let target = q.lookup.target();
            for r in records.iter() {
                if *r.key() != target.0 {
                    self.stats.drops.record_wrong_key += 1;
                    continue;
                }
                if q.found.iter().any(|f| f.as_bytes() == r.as_bytes()) {
                    continue;
                }
                self.lookup_verifications += 1;
                match store::check(&r, now_unix, self.store.settings(), self.store.policy()) {
                    Ok(()) => {
                        merge(&mut q.found, RecordBuf::verified(&r));
                        q.found_hop.get_or_insert(hop);
                    }
                    Err(refusal) => self.stats.drops.record(refusal),
                }
            }
        }
        self.step(now, qid, q, out);
    }

    fn store_ack(
        &mut self,
        now: Instant,
        qid: QueryId,
        status: Option<StoreStatus>,
        out: &mut Outbox,
    ) {
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        if let Some((_, acks)) = q.storing.as_mut() {
            match status {
                Some(StoreStatus::Stored) => acks.stored += 1,
                Some(StoreStatus::StaleSeq) => acks.stale += 1,
                Some(StoreStatus::StoreFull) => acks.full += 1,
                Some(StoreStatus::Rejected) => acks.rejected += 1,
                None => acks.timed_out += 1,
            }
        }
        self.step(now, qid, q, out);
    }

    /// A request failed: it `timed_out`, or the address answered under
    /// another id.
    fn request_failed(&mut self, now: Instant, p: Pending, timed_out: bool, out: &mut Outbox) {
        if let Some(id) = p.expect
            && self.table.on_failure(now, &id, p.addr) == Failure::Removed
        {
            self.stats.evictions += 1;
        }
        match p.what {
            Req::Ping(PingFor::Bootstrap) => self.bootstrap_answer(now, false, out),
            Req::Ping(PingFor::Probe) => {}
            Req::FindNode(qid) | Req::FindValue(qid) => {
                if let Some(mut q) = self.queries.remove(&qid) {
                    if let Some(id) = p.expect {
                        if timed_out {
                            q.lookup.timed_out(&id);
                        } else {
                            q.lookup.failed(&id);
                        }
                    }
                    self.step(now, qid, q, out);
                }
            }
            Req::Store(qid) => self.store_ack(now, qid, None, out),
        }
    }

    fn after_observe(&mut self, now: Instant, observed: Observed, out: &mut Outbox) {
        match observed {
            Observed::Replaced { .. } => self.stats.evictions += 1,
            Observed::Probe(info) => {
                self.stats.probes_sent += 1;
                let id = NodeId(info.id);
                if !self.request(
                    now,
                    out,
                    info.addr,
                    Some(id),
                    Req::Ping(PingFor::Probe),
                    BodyRepr::Ping,
                ) {
                    // Clears the bucket's probe so a later newcomer retries.
                    self.table.on_failure(now, &id, info.addr);
                }
            }
            Observed::Refused(RoutingRefusal::SubnetLimit) => {
                self.stats.drops.routing_subnet_limit += 1
            }
            Observed::Refused(RoutingRefusal::AddrConflict) => {
                self.stats.drops.routing_addr_conflict += 1;
            }
            _ => {}
        }
    }

    fn bootstrap_answer(&mut self, now: Instant, answered: bool, out: &mut Outbox) {
        let Some(b) = self.bootstrap.as_mut() else { return };
        b.outstanding = b.outstanding.saturating_sub(1);
        if b.lookup_started {
            return;
        }
        if answered {
            b.lookup_started = true;
            self.start_lookup(now, Purpose::Bootstrap, Kind::FindNode, self.id, Vec::new(), out);
        } else if b.outstanding == 0 {
            self.bootstrap = None;
            out.events.push(Event::BootstrapFailed);
        }
    }

    fn note_external(&mut self, reporter: NodeId, addr: SocketAddr, out: &mut Outbox) {
        if let Some(pos) = self.votes.iter().position(|(r, _)| *r == reporter) {
            self.votes.remove(pos);
        }
        if self.votes.len() >= VOTES {
            self.votes.pop_front();
        }
        self.votes.push_back((reporter, addr));
        // Only the reported address can overtake the current winner.
        if self.external == Some(addr) {
            return;
        }
        let count = |a: SocketAddr| self.votes.iter().filter(|(_, b)| *b == a).count();
        if count(addr) > self.external.map_or(0, count) {
            self.external = Some(addr);
            out.events.push(Event::ExternalAddr(addr));
        }
    }

    // ---- lookups --------------------------------------------------------

    fn start_lookup(
        &mut self,
        now: Instant,
        purpose: Purpose,
        kind: Kind,
        target: NodeId,
        puts: Vec<RecordBuf>,
        out: &mut Outbox,
    ) -> QueryId {
        let qid = QueryId(self.next_query);
        self.next_query += 1;
        self.stats.queries_started += 1;
        let k = self.config.routing.k;
        let width = if purpose == Purpose::Refresh { self.config.refresh_width } else { k };
        let mut lookup =
            Lookup::new(target, k, width, self.config.alpha, self.config.lookup_retries);
        if self.queries.len() < self.config.max_queries {
            let preferred = Filter { exclude: None, skip_bad: true, skip_backoff: true };
            let mut seeds = self.table.closest(now, &target, k, preferred);
            if seeds.is_empty() {
                seeds = self.table.closest(now, &target, k, Filter::default());
            }
            for e in seeds {
                lookup.add(e.info(), 1);
            }
        }
        let deadline = now + self.config.query_timeout;
        self.timers.insert((deadline, Timer::Query(qid)));
        let q = Query {
            purpose,
            kind,
            lookup,
            deadline,
            found: Vec::new(),
            found_hop: None,
            puts,
            storing: None,
        };
        self.step(now, qid, q, out);
        qid
    }

    /// Sends what the query may send now, then finishes it or parks it.
    fn step(&mut self, now: Instant, qid: QueryId, mut q: Query, out: &mut Outbox) {
        if let Some((_, acks)) = q.storing {
            if acks.outstanding() == 0 {
                self.finish(now, qid, q, out);
            } else {
                self.queries.insert(qid, q);
            }
            return;
        }
        let found = q.kind == Kind::FindValue && !q.found.is_empty();
        if !found {
            let budget = self.config.max_pending.saturating_sub(self.pending.len());
            let target = q.lookup.target();
            for (info, _) in q.lookup.next(budget) {
                let id = NodeId(info.id);
                let (what, body) = match q.kind {
                    // Padded, so the reply may use the whole budget.
                    Kind::FindValue => (
                        Req::FindValue(qid),
                        BodyRepr::FindValue { key: target.0, padding: REQUEST_PADDING },
                    ),
                    _ => (
                        Req::FindNode(qid),
                        BodyRepr::FindNode { target: target.0, padding: REQUEST_PADDING },
                    ),
                };
                if !self.request(now, out, info.addr, Some(id), what, body) {
                    q.lookup.failed(&id);
                }
            }
        }
        if found || q.lookup.finished() {
            self.lookup_done(now, qid, q, out);
        } else {
            self.queries.insert(qid, q);
        }
    }

    fn query_expired(&mut self, now: Instant, qid: QueryId, mut q: Query, out: &mut Outbox) {
        if let Some((_, acks)) = q.storing.as_mut() {
            acks.timed_out += acks.outstanding();
            self.finish(now, qid, q, out);
        } else {
            self.lookup_done(now, qid, q, out);
        }
    }

    fn lookup_done(&mut self, now: Instant, qid: QueryId, mut q: Query, out: &mut Outbox) {
        let k = self.config.routing.k;
        let target = q.lookup.target();
        // Only full-width lookups that ran to convergence sample the size:
        // a refresh converges on a few nodes, and the rest of its answers
        // are path nodes, not the k closest.
        let converged =
            (q.kind != Kind::FindValue || q.found.is_empty()) && q.purpose != Purpose::Refresh;
        if converged {
            let dists: Vec<Distance> = q.lookup.closest_replied(k).map(|c| c.dist).collect();
            self.estimator.add(now, &dists);
        }
        if let Some(b) = self.table.bucket_of(&target) {
            self.table.mark_activity(now, b);
        }
        if q.kind != Kind::Put {
            self.finish(now, qid, q, out);
            return;
        }
        let targets: Vec<NodeInfo> = q.lookup.closest_replied(k).map(|c| c.info).collect();
        let mut acks = PutAcks::default();
        let mut reached = 0;
        for info in &targets {
            let mut any = false;
            for rec in &q.puts {
                let body = BodyRepr::Store(RecordRepr::from_view(&rec.view()));
                if self.request(now, out, info.addr, Some(NodeId(info.id)), Req::Store(qid), body) {
                    acks.sent += 1;
                    any = true;
                }
            }
            reached += u32::from(any);
        }
        q.storing = Some((reached, acks));
        if acks.sent == 0 {
            self.finish(now, qid, q, out);
        } else {
            self.queries.insert(qid, q);
        }
    }

    fn finish(&mut self, now: Instant, qid: QueryId, q: Query, out: &mut Outbox) {
        self.timers.remove(&(q.deadline, Timer::Query(qid)));
        self.stats.queries_finished += 1;
        let k = self.config.routing.k;
        let target = q.lookup.target();
        match (q.purpose, q.kind) {
            (Purpose::User, Kind::FindNode) => {
                let closest: Vec<_> = q.lookup.closest_replied(k).collect();
                out.events.push(Event::FindNodeDone {
                    query: qid,
                    target,
                    hops: closest.first().map_or(0, |c| c.hop),
                    nodes: closest.iter().map(|c| c.info).collect(),
                    requests: q.lookup.requests,
                });
            }
            (Purpose::User, Kind::FindValue) => {
                let now_unix = self.now_unix(now);
                let mut records = q.found;
                for local in self.store.get(&target.0, now_unix) {
                    merge(&mut records, local.clone());
                }
                out.events.push(Event::FindValueDone {
                    query: qid,
                    key: target,
                    records,
                    hops: q.found_hop.unwrap_or(0),
                    requests: q.lookup.requests,
                });
            }
            (Purpose::User, Kind::Put) => {
                let (targets, acks) = q.storing.unwrap_or_default();
                out.events.push(Event::PutDone { query: qid, key: target, targets, acks });
            }
            (Purpose::Bootstrap, _) => {
                self.bootstrap = None;
                out.events.push(Event::Bootstrapped { peers: self.table.len() });
                if self.config.refresh_on_bootstrap
                    && let Some(nearest) = self.table.nearest_bucket()
                {
                    for b in nearest + 1..super::id::ID_BITS {
                        if !self.refresh_queue.contains(&b) {
                            self.refresh_queue.push_back(b);
                        }
                    }
                }
            }
            (Purpose::Refresh, _) => self.refreshing = self.refreshing.saturating_sub(1),
            (Purpose::Replicate, _) => self.replicating = self.replicating.saturating_sub(1),
        }
    }

    // ---- maintenance ----------------------------------------------------

    fn maintain(&mut self, now: Instant, out: &mut Outbox) {
        self.next_tick = now + self.config.tick;
        let now_unix = self.now_unix(now);
        self.stats.records_expired += self.store.purge_expired(now_unix) as u64;
        for b in self.table.stale_buckets(now, self.config.refresh_interval) {
            if !self.refresh_queue.contains(&b) {
                self.refresh_queue.push_back(b);
            }
        }
        let free = self.config.max_replications.saturating_sub(self.replicating);
        for key in self.store.due_keys(now, now_unix, free) {
            let next = self.next_replication(now);
            let records = self.store.take_due(now, now_unix, &key, next);
            if records.is_empty() {
                continue;
            }
            self.replicating += 1;
            self.stats.replications += 1;
            self.start_lookup(now, Purpose::Replicate, Kind::Put, NodeId(key), records, out);
        }
    }

    /// Starts queued bucket refreshes up to `max_refreshes` at a time.
    fn start_refreshes(&mut self, now: Instant, out: &mut Outbox) {
        while self.refreshing < self.config.max_refreshes {
            let Some(b) = self.refresh_queue.pop_front() else { break };
            let target = self.id.random_in_bucket(b, &mut self.rng);
            self.table.mark_activity(now, b);
            self.refreshing += 1;
            self.start_lookup(now, Purpose::Refresh, Kind::FindNode, target, Vec::new(), out);
        }
    }

    fn next_replication(&mut self, now: Instant) -> Instant {
        let interval = self.config.replicate_interval;
        now + interval + self.rng.jitter(interval / 4)
    }

    // ---- sending --------------------------------------------------------

    /// Sends a request and records it as outstanding; false if
    /// `max_pending` requests are outstanding already.
    fn request(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        addr: SocketAddr,
        expect: Option<NodeId>,
        what: Req,
        body: BodyRepr<'_>,
    ) -> bool {
        if self.pending.len() >= self.config.max_pending {
            self.stats.drops.pending_full += 1;
            return false;
        }
        let txid = self.new_txid();
        let Some(payload) = encode(&self.id, txid, body) else { return false };
        let deadline = now + self.config.request_timeout;
        self.pending.insert(txid, Pending { addr, expect, what, sent_at: now, deadline });
        self.timers.insert((deadline, Timer::Request(txid)));
        self.transmit(out, addr, payload);
        true
    }

    fn transmit(&mut self, out: &mut Outbox, dest: SocketAddr, payload: Vec<u8>) {
        self.stats.tx_datagrams += 1;
        out.transmits.push(Transmit { dest, payload });
    }

    /// A fresh transaction id: BLAKE3 of the secret key with a counter
    /// folded in, so ids are unique per node and unpredictable to peers.
    fn new_txid(&mut self) -> u64 {
        loop {
            self.txid_counter += 1;
            let mut block = self.txid_key;
            for (b, c) in block.iter_mut().zip(self.txid_counter.to_le_bytes()) {
                *b ^= c;
            }
            let h = record::node_id(&block);
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[..8]);
            let txid = tag_txid(u64::from_le_bytes(w), self.config.txid_tag);
            if !self.pending.contains_key(&txid) {
                return txid;
            }
        }
    }
}

/// `txid` with its first wire byte (the most significant, the id is
/// big-endian on the wire) moved to the nearest value ≡ `shard` (mod
/// `shards`) that still fits a byte (see [`super::Config::txid_tag`]).
pub fn tag_txid(txid: u64, tag: Option<(u8, u8)>) -> u64 {
    let Some((shard, shards)) = tag.filter(|&(_, n)| n > 1) else { return txid };
    let n = u16::from(shards);
    let top = (txid >> 56) as u16;
    let mut b = top / n * n + u16::from(shard) % n;
    if b > 0xFF {
        b -= n;
    }
    (txid & 0x00FF_FFFF_FFFF_FFFF) | (u64::from(b) << 56)
}

/// Encodes a message from `own`; `None` only if it would not fit the
/// datagram budget (every caller sizes its lists to fit).
fn encode(own: &NodeId, txid: u64, body: BodyRepr<'_>) -> Option<Vec<u8>> {
    let m = MessageRepr { transaction_id: txid, sender: own.0, body };
    let mut buf = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Whether datagrams can be sent to `addr`.
fn usable(addr: &SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// Adds `rec` to `records`, keeping one record per slot (the highest seq).
fn merge(records: &mut Vec<RecordBuf>, rec: RecordBuf) {
    let (slot, seq) = {
        let view = rec.view();
        (view.slot(), view.seq())
    };
    match records.iter().position(|r| r.view().slot() == slot) {
        Some(i) if records[i].view().seq() < seq => records[i] = rec,
        Some(_) => {}
        None => records.push(rec),
    }
}
