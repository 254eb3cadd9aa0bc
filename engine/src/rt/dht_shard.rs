//! The DHT on the workers (DESIGN.md § "Process model"): worker `i` owns
//! member `i` of the SO_REUSEPORT group on `--dht-port` and runs its own
//! [`dht::Node`] — one shard of the endpoint's DHT presence.
//!
//! # Contract
//! - Every worker's node has the same identity (the node key, so the same
//!   node id) and answers from the same address and port; peers see one
//!   node. Each has its own routing table (learned from what is steered
//!   to it and from its own lookups), its own outstanding requests and its
//!   own store shard.
//! - Ownership ([`dht_owner`]): a request is owned by the worker owning its
//!   key ([`key_owner`], the first 8 bytes of the 32-byte key, as
//!   [`super::owner`] takes a HashKey): FIND_NODE/FIND_VALUE by the key
//!   at offset 44, STORE by its record's key at offset 50. A response is
//!   owned by the worker whose node sent the request: every node tags its
//!   transaction ids ([`dht::Config::txid_tag`]) so the id's first byte
//!   names it mod the worker count. A PING goes by its sender id; anything
//!   else to worker 0, whose node drops and counts it.
//! - Steering: the classic-BPF program [`super::sys::dht_steering_program`]
//!   computes [`dht_owner`] in the kernel, so each datagram is read by its
//!   owner. Where it cannot be attached, a worker that reads a datagram it
//!   does not own hands it to the owner (one hop, counted in
//!   [`DhtSnapshot::forwarded`]); the owner handles it without looking at
//!   ownership again.
//! - A store shard therefore holds exactly the keys its worker owns. The
//!   distinct-key cap (`max_keys`, 100 000 by default) is the endpoint's:
//!   each shard holds at most `⌈max_keys / workers⌉` keys, so the
//!   endpoint's memory bound does not grow with its worker count (a shard
//!   at its share answers STORE_ACK "store full").
//! - The control thread (discovery) does not touch the nodes: it sends
//!   [`DhtRequest`]s — bootstrap every worker, put or look up a key at its
//!   owner — and gets each result back as one [`DhtReply`] on the channel
//!   the request names. A result that does not fit that channel is dropped
//!   (counted); the control thread gives up on it after its own timeout.
//! - Node timers run in the worker's tick (100 ms), which is far below the
//!   node's shortest timer (the 2 s request timeout).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ricochet_wire::dht::NodeInfo;

use crate::dht::{self, Event, Health, QueryId, SizeEstimate};

/// Byte offsets the ownership rules read, shared by [`dht_owner`] and the
/// steering program: `ricochet_wire::dht::layout` (`docs/PROTOCOL.md` §
/// "DHT (UDP 9320)") as the `u32` offsets classic BPF loads take.
pub(crate) mod layout {
    use ricochet_wire::dht::layout as wire;

    /// Message type.
    pub(crate) const TYPE: u32 = wire::TYPE as u32;
    /// Transaction id (8 bytes, big-endian).
    pub(crate) const TXID: u32 = wire::TRANSACTION_ID.start as u32;
    /// Sender node id (32 bytes).
    pub(crate) const SENDER: u32 = wire::SENDER.start as u32;
    /// FIND_NODE target / FIND_VALUE key: the body, after the 44-byte
    /// header.
    pub(crate) const KEY: u32 = wire::TARGET.start as u32;
    /// STORE: `u16 length ‖ record`, and the record's key at record offset
    /// 4 (after magic, version and type).
    pub(crate) const STORE_KEY: u32 = wire::STORE_RECORD_KEY.start as u32;
}

/// The worker owning a 32-byte DHT key: [`super::owner`] of its first 8
/// bytes read big-endian (so the low 32 bits are bytes 4..8, what the
/// steering program reads).
pub fn key_owner(key: &[u8; 32], workers: usize) -> usize {
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    super::owner(u64::from_be_bytes(first), workers)
}

/// The worker owning a DHT datagram (see the module docs). This is the
/// Rust mirror of `rt::sys::dht_steering_program`: the same loads at
/// the same offsets, and 0 where a load would run past the end.
pub fn dht_owner(datagram: &[u8], workers: usize) -> usize {
    let word = |at: u32| {
        let at = at as usize;
        datagram.get(at..at + 4).map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    let v = match datagram.get(layout::TYPE as usize) {
        Some(0x03 | 0x05) => word(layout::KEY + 4),
        Some(0x07) => word(layout::STORE_KEY + 4),
        Some(0x01) => word(layout::SENDER + 4),
        Some(0x02 | 0x04 | 0x06 | 0x08) => datagram.get(layout::TXID as usize).map(|b| (*b).into()),
        _ => None,
    };
    v.map_or(0, |v| (v % workers.max(1) as u32) as usize)
}

/// What the runtime needs to run the DHT on the workers.
#[derive(Debug, Clone)]
pub struct DhtOptions {
    /// `--dht-port`; every worker's member binds it on the NACK bind
    /// address.
    pub port: u16,
    /// The node key's public half (the node id is its BLAKE3).
    pub public_key: [u8; 32],
    /// The node configuration: its seed must be random (each worker's is
    /// derived from it), its `store.max_keys` is the endpoint's cap (each
    /// shard holds its share).
    pub config: dht::Config,
}

impl DhtOptions {
    /// Worker `index`'s node configuration (of `workers`).
    pub fn worker_config(&self, index: usize, workers: usize) -> dht::Config {
        let mut c = self.config.clone();
        let mut material = c.seed.to_vec();
        material.extend_from_slice(&(index as u64).to_be_bytes());
        c.seed = *blake3::hash(&material).as_bytes();
        c.txid_tag = (workers > 1).then_some((index as u8, workers as u8));
        c.store.max_keys = c.store.max_keys.div_ceil(workers.max(1)).max(1);
        c
    }
}

/// What the control thread asks a worker's node to do.
#[derive(Debug)]
pub struct DhtRequest {
    /// The caller's id for the operation, echoed in the reply.
    pub op: u64,
    /// The operation.
    pub what: DhtWhat,
    /// Where the result goes.
    pub reply: tokio::sync::mpsc::Sender<DhtReply>,
}

/// A DHT operation.
#[derive(Debug, Clone)]
pub enum DhtWhat {
    /// Join through these addresses ([`dht::Node::bootstrap`]); sent to
    /// every worker. Replies with `Bootstrapped` or `BootstrapFailed`.
    Bootstrap(Arc<[SocketAddr]>),
    /// Publish a signed record ([`dht::Node::put`]) at its key's owner.
    /// Replies with `PutDone`, or an error if the node refused it.
    Put(Vec<u8>),
    /// Look a key up ([`dht::Node::find_value`]) at its owner. Replies with
    /// `FindValueDone`.
    FindValue([u8; 32]),
}

impl DhtWhat {
    /// The worker that must run it (`None`: every worker).
    pub fn owner(&self, workers: usize) -> Option<usize> {
        match self {
            DhtWhat::Bootstrap(_) => None,
            DhtWhat::Put(record) => {
                let rec = ricochet_wire::record::Record::new_checked(record).ok();
                Some(rec.map_or(0, |r| key_owner(r.key(), workers)))
            }
            DhtWhat::FindValue(key) => Some(key_owner(key, workers)),
        }
    }
}

/// A worker's answer to a [`DhtRequest`].
#[derive(Debug, Clone)]
pub struct DhtReply {
    /// The request's `op`.
    pub op: u64,
    /// The worker that ran it.
    pub worker: usize,
    /// The node's event ending the operation (its `query` is the worker's
    /// own and means nothing to the caller), or why it did not start.
    pub result: Result<Event, String>,
}

/// One routing-table entry, for `/debug/dht`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// k-bucket index.
    pub bucket: usize,
    /// Node id.
    pub id: [u8; 32],
    /// Address.
    pub addr: SocketAddr,
    /// Health now.
    pub health: Health,
    /// Consecutive failures.
    pub failures: u32,
    /// In back-off after a failure.
    pub in_backoff: bool,
    /// Last round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Seconds since last heard from.
    pub last_seen_s_ago: u64,
    /// Seconds since its last reply.
    pub last_reply_s_ago: Option<u64>,
}

/// One held record, for `/debug/dht`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// Its key.
    pub key: [u8; 32],
    /// Its type, lower case.
    pub record_type: String,
    /// Its publisher's node id.
    pub publisher: [u8; 32],
    /// Its seq.
    pub seq: u64,
    /// Unix second it expires at.
    pub expires_at: u64,
    /// Its length in bytes.
    pub len: usize,
}

/// Longest DHT datagram a worker hands to its owner: more than the largest
/// valid message but for padding (a VALUE with 8 records of 1 178 bytes and
/// 20 nodes is 10 506 bytes; a padded FIND is 411); anything longer is
/// malformed or padded far past what buys a full reply, and is dropped
/// where it landed.
pub(crate) const MAX_FORWARD: usize = 16 * 1024;

/// Most records each worker lists for `/debug/dht` (counts are whole).
pub const LISTED_RECORDS: usize = 100;
/// Most good peers each worker offers for the peer cache and for its
/// siblings' bootstraps.
pub const EXPORTED_PEERS: usize = 64;

/// How often a worker rebuilds the listings in its [`DhtSnapshot`]
/// (routing table, records, exported peers, health counts); the counters
/// are fresh every tick. The listings are for `/debug/dht`, the peer cache
/// and bootstraps, none of which needs them fresher, and rebuilding them
/// walks the whole routing table on the worker thread.
pub const VIEWS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's DHT state, published every tick (the listings every
/// [`VIEWS_EVERY`]).
#[derive(Debug, Clone, Default)]
pub struct DhtSnapshot {
    /// Its node's counters.
    pub stats: dht::Stats,
    /// DHT datagrams read from its socket.
    pub datagrams: u64,
    /// Datagrams it read but another worker owns, handed to that worker
    /// (the steering program is not attached, or was bypassed).
    pub forwarded: u64,
    /// Datagrams other workers handed it.
    pub forwarded_in: u64,
    /// Requests from the control thread it ran.
    pub requests: u64,
    /// Results it could not hand back (the control thread's channel was
    /// full or gone).
    pub replies_dropped: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Routing-table entries by health: good, unknown, bad.
    pub health: (usize, usize, usize),
    /// Replacement-cache entries.
    pub replacements: usize,
    /// The routing table, bucket by bucket.
    pub peers: Arc<[PeerView]>,
    /// Up to [`EXPORTED_PEERS`] good peers (peer cache, siblings'
    /// bootstraps).
    pub export: Arc<[NodeInfo]>,
    /// Distinct keys in its store shard.
    pub store_keys: usize,
    /// Records in its store shard.
    pub store_records: usize,
    /// Its share of the distinct-key cap.
    pub store_cap: usize,
    /// Up to [`LISTED_RECORDS`] of its records.
    pub records: Arc<[RecordView]>,
    /// Outstanding requests.
    pub pending_requests: usize,
    /// Running lookups.
    pub running_queries: usize,
    /// The address recent PONGs saw it at.
    pub external_addr: Option<SocketAddr>,
    /// Its network size estimate.
    pub size_estimate: Option<SizeEstimate>,
}

/// A worker's DHT node and what it is doing for the control thread.
pub(crate) struct Shard {
    index: usize,
    workers: usize,
    node: dht::Node,
    out: dht::Outbox,
    /// Lookups and puts the control thread asked for.
    ops: BTreeMap<QueryId, (u64, tokio::sync::mpsc::Sender<DhtReply>)>,
    /// The control thread's bootstrap, while it runs.
    bootstrap: Option<(u64, tokio::sync::mpsc::Sender<DhtReply>)>,
    /// The socket is IPv6: IPv4 destinations are written IPv4-mapped.
    v6: bool,
    pub(crate) counters: ShardCounters,
    /// The listings of the last snapshot and when they were built.
    views: Option<(Instant, Views)>,
}

/// The parts of a [`DhtSnapshot`] rebuilt every [`VIEWS_EVERY`], shared
/// by the snapshots in between.
#[derive(Debug, Clone)]
struct Views {
    health: (usize, usize, usize),
    peers: Arc<[PeerView]>,
    export: Arc<[NodeInfo]>,
    records: Arc<[RecordView]>,
}

/// A shard's own counters (the node keeps the rest).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ShardCounters {
    pub(crate) datagrams: u64,
    pub(crate) forwarded: u64,
    pub(crate) forwarded_in: u64,
    pub(crate) requests: u64,
    pub(crate) replies_dropped: u64,
    pub(crate) send_errors: u64,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Shard {
    pub(crate) fn new(
        index: usize,
        workers: usize,
        opts: &DhtOptions,
        bind: IpAddr,
        now: Instant,
        now_unix: u64,
    ) -> Shard {
        let config = opts.worker_config(index, workers);
        Shard {
            index,
            workers,
            node: dht::Node::new(&opts.public_key, config, now, now_unix),
            out: dht::Outbox::new(),
            ops: BTreeMap::new(),
            bootstrap: None,
            v6: bind.is_ipv6(),
            counters: ShardCounters::default(),
            views: None,
        }
    }

    /// The worker that owns `datagram` (see [`dht_owner`]).
    pub(crate) fn owner(&self, datagram: &[u8]) -> usize {
        dht_owner(datagram, self.workers)
    }

    /// A datagram this worker owns (or was handed).
    pub(crate) fn on_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let src = SocketAddr::new(src.ip().to_canonical(), src.port());
        self.node.handle(now, src, data, &mut self.out);
        self.absorb();
    }

    /// Starts what the control thread asked for.
    pub(crate) fn on_request(&mut self, now: Instant, req: DhtRequest) {
        self.counters.requests += 1;
        let DhtRequest { op, what, reply } = req;
        match what {
            DhtWhat::Bootstrap(addrs) => {
                self.bootstrap = Some((op, reply));
                self.node.bootstrap(now, &addrs, &mut self.out);
            }
            DhtWhat::Put(record) => match self.node.put(now, &record, &mut self.out) {
                Ok(q) => {
                    self.ops.insert(q, (op, reply));
                }
                Err(e) => self.reply(&reply, op, Err(e.to_string())),
            },
            DhtWhat::FindValue(key) => {
                let q = self.node.find_value(now, dht::NodeId(key), &mut self.out);
                self.ops.insert(q, (op, reply));
            }
        }
        self.absorb();
    }

    /// The worker's tick: re-anchors wall-clock time (`now_unix` is the
    /// unix time at `now`) and runs due timers.
    pub(crate) fn tick(&mut self, now: Instant, now_unix: u64) {
        self.node.set_unix_time(now, now_unix);
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now, &mut self.out);
            self.absorb();
        }
    }

    /// Datagrams to send from the DHT socket, destinations as the socket
    /// takes them.
    pub(crate) fn drain_transmits(&mut self) -> impl Iterator<Item = dht::Transmit> + '_ {
        let v6 = self.v6;
        self.out.drain_transmits().map(move |mut t| {
            if let (true, IpAddr::V4(v4)) = (v6, t.dest.ip()) {
                t.dest = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), t.dest.port());
            }
            t
        })
    }

    /// When the node's next timer is due.
    #[cfg(test)]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }

    /// The node (tests read it directly).
    #[cfg(test)]
    pub(crate) fn node(&self) -> &dht::Node {
        &self.node
    }

    /// Whether datagrams wait to be sent.
    pub(crate) fn has_transmits(&self) -> bool {
        !self.out.transmits.is_empty()
    }

    /// The state to publish.
    pub(crate) fn snapshot(&mut self, now: Instant) -> DhtSnapshot {
        let views = match &self.views {
            Some((at, v)) if now.saturating_duration_since(*at) < VIEWS_EVERY => v.clone(),
            _ => {
                let v = self.views(now);
                self.views = Some((now, v.clone()));
                v
            }
        };
        let node = &self.node;
        let c = self.counters;
        DhtSnapshot {
            stats: node.stats(),
            datagrams: c.datagrams,
            forwarded: c.forwarded,
            forwarded_in: c.forwarded_in,
            requests: c.requests,
            replies_dropped: c.replies_dropped,
            send_errors: c.send_errors,
            health: views.health,
            replacements: node.table().replacements_len(),
            peers: views.peers,
            export: views.export,
            store_keys: node.store().keys(),
            store_records: node.store().len(),
            store_cap: node.config().store.max_keys,
            records: views.records,
            pending_requests: node.pending_requests(),
            running_queries: node.running_queries(),
            external_addr: node.external_addr(),
            size_estimate: node.size_estimate(now),
        }
    }

    /// Builds the listings: one walk of the routing table, up to
    /// [`LISTED_RECORDS`] records, the exported peers.
    fn views(&self, now: Instant) -> Views {
        let node = &self.node;
        let table = node.table();
        let settings = table.settings();
        let mut health = (0, 0, 0);
        let peers: Arc<[PeerView]> = table
            .iter()
            .map(|(bucket, e)| {
                let h = e.health(now, settings);
                match h {
                    Health::Good => health.0 += 1,
                    Health::Unknown => health.1 += 1,
                    Health::Bad => health.2 += 1,
                }
                PeerView {
                    bucket,
                    id: e.id().0,
                    addr: e.addr(),
                    health: h,
                    failures: e.failures(),
                    in_backoff: e.in_backoff(now),
                    rtt_ms: e.rtt().map(|r| r.as_secs_f64() * 1000.0),
                    last_seen_s_ago: now.saturating_duration_since(e.last_seen()).as_secs(),
                    last_reply_s_ago: e
                        .last_reply()
                        .map(|t| now.saturating_duration_since(t).as_secs()),
                }
            })
            .collect();
        let now_unix = node.now_unix(now);
        let records: Arc<[RecordView]> = node
            .store()
            .iter(now_unix)
            .take(LISTED_RECORDS)
            .map(|r| {
                let v = r.view();
                RecordView {
                    key: *v.key(),
                    record_type: format!("{:?}", v.record_type()).to_lowercase(),
                    publisher: v.publisher_id(),
                    seq: v.seq(),
                    expires_at: v.expires_at(),
                    len: r.as_bytes().len(),
                }
            })
            .collect();
        Views { health, peers, export: table.export(now, EXPORTED_PEERS).into(), records }
    }

    /// Hands finished operations back to the control thread.
    fn absorb(&mut self) {
        let events: Vec<Event> = self.out.drain_events().collect();
        for e in events {
            let to = match &e {
                Event::FindValueDone { query, .. } | Event::PutDone { query, .. } => {
                    self.ops.remove(query)
                }
                Event::Bootstrapped { .. } | Event::BootstrapFailed => self.bootstrap.take(),
                Event::FindNodeDone { .. } | Event::ExternalAddr(_) => None,
            };
            if let Some((op, reply)) = to {
                self.reply(&reply, op, Ok(e));
            }
        }
    }

    fn reply(
        &mut self,
        to: &tokio::sync::mpsc::Sender<DhtReply>,
        op: u64,
        result: Result<Event, String>,
    ) {
        if to.try_send(DhtReply { op, worker: self.index, result }).is_err() {
            self.counters.replies_dropped += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rt::sys::tests::run_cbpf;
    use crate::rt::sys::{attach_dht_steering, dht_steering_program};
    use ricochet_wire::dht::{BodyRepr, Message, MessageRepr, NodeList, StoreStatus};
    use ricochet_wire::record::{RecordRepr, RecordType, SigningKey};

    fn msg(txid: u64, sender: [u8; 32], body: BodyRepr<'_>) -> Vec<u8> {
        let m = MessageRepr { transaction_id: txid, sender, body };
        let mut buf = vec![0u8; m.buffer_len()];
        let n = m.emit(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn record(key: [u8; 32]) -> Vec<u8> {
        let mut r = RecordRepr::unsigned(RecordType::Topic, key, 1, 1_767_225_600, 600, b"x");
        r.sign(&SigningKey::from_bytes(&[3; 32])).unwrap();
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf).unwrap();
        buf
    }

    /// One datagram of every kind, keyed by `k` / tagged with `t`.
    fn samples(k: [u8; 32], t: u64, sender: [u8; 32]) -> Vec<(Vec<u8>, Option<usize>)> {
        let rec = record(k);
        let store = BodyRepr::Store(RecordRepr::parse(&rec).unwrap());
        let observed: SocketAddr = "192.0.2.1:9320".parse().unwrap();
        vec![
            (msg(t, sender, BodyRepr::FindNode { target: k, padding: 0 }), None),
            (msg(t, sender, BodyRepr::FindValue { key: k, padding: 0 }), None),
            (msg(t, sender, store), None),
            (msg(t, sender, BodyRepr::Ping), None),
            (msg(t, sender, BodyRepr::Pong { observed }), None),
            (msg(t, sender, BodyRepr::Nodes(NodeList::new())), None),
            (msg(t, sender, BodyRepr::StoreAck(StoreStatus::Stored)), None),
            (
                msg(
                    t,
                    sender,
                    BodyRepr::Value { records: Default::default(), nodes: NodeList::new() },
                ),
                None,
            ),
            // Too short for any load; an unknown type.
            (vec![0x52, 0x44, 0x01, 0x05, 9, 9], Some(0)),
            (msg(t, sender, BodyRepr::FindValue { key: k, padding: 0 })[..40].to_vec(), Some(0)),
            (
                {
                    let mut m = msg(t, sender, BodyRepr::Ping);
                    m[3] = 0x7F;
                    m
                },
                Some(0),
            ),
        ]
    }

    #[test]
    fn requests_go_to_the_key_owner_and_responses_to_the_tagged_worker() {
        for workers in 1..=6usize {
            for i in 0..40u8 {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&(u64::from(i) * 0x0101_0101_0301).to_be_bytes());
                k[20] = i;
                let sender = [i.wrapping_mul(7); 32];
                let t = dht::node::tag_txid(
                    0x1234_5678_9ABC_DEF0 ^ u64::from(i),
                    Some(((i as usize % workers) as u8, workers as u8)),
                );
                let s = samples(k, t, sender);
                let own = key_owner(&k, workers);
                assert_eq!(dht_owner(&s[0].0, workers), own, "FIND_NODE");
                assert_eq!(dht_owner(&s[1].0, workers), own, "FIND_VALUE");
                assert_eq!(dht_owner(&s[2].0, workers), own, "STORE");
                assert_eq!(dht_owner(&s[3].0, workers), key_owner(&sender, workers), "PING");
                for (m, _) in &s[4..8] {
                    assert_eq!(dht_owner(m, workers), i as usize % workers, "response");
                }
                for (m, fixed) in &s {
                    if let Some(w) = fixed {
                        assert_eq!(dht_owner(m, workers), *w);
                    }
                }
            }
        }
    }

    #[test]
    fn the_steering_program_computes_dht_owner() {
        for workers in 1..=8u32 {
            let prog = dht_steering_program(workers);
            for i in 0..30u8 {
                let mut k = [i; 32];
                k[4..8].copy_from_slice(&u32::from(i).wrapping_mul(2_654_435_761).to_be_bytes());
                let t = u64::from(i) << 56 | 0x42;
                for (m, _) in samples(k, t, [i ^ 0x5A; 32]) {
                    let want = dht_owner(&m, workers as usize);
                    assert_eq!(run_cbpf(&prog, &m) as usize, want, "{workers} {:02x?}", &m[..8]);
                }
            }
            // Every byte length up to past the STORE key, every type byte.
            for len in 0..64 {
                for ty in 0..=9u8 {
                    let mut m: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
                    if let Some(b) = m.get_mut(3) {
                        *b = ty;
                    }
                    assert_eq!(run_cbpf(&prog, &m) as usize, dht_owner(&m, workers as usize));
                }
            }
        }
    }

    #[test]
    fn worker_configs_tag_and_share_the_cap() {
        let opts = DhtOptions { port: 0, public_key: [1; 32], config: dht::Config::new([9; 32]) };
        let a = opts.worker_config(0, 3);
        let b = opts.worker_config(1, 3);
        assert_ne!(a.seed, b.seed);
        assert_eq!(a.txid_tag, Some((0, 3)));
        assert_eq!(b.txid_tag, Some((1, 3)));
        assert_eq!(a.store.max_keys, 33_334);
        let one = opts.worker_config(0, 1);
        assert_eq!((one.txid_tag, one.store.max_keys), (None, 100_000));
        let put = DhtWhat::Put(record([7; 32]));
        assert_eq!(put.owner(3), Some(key_owner(&[7; 32], 3)));
        assert_eq!(DhtWhat::Bootstrap(Arc::from(vec![])).owner(3), None);
    }

    /// The kernel runs the program: a datagram lands on the socket
    /// [`dht_owner`] names.
    #[test]
    fn the_kernel_steers_dht_datagrams_to_their_owner() {
        use crate::rt::sys::tests::{drain, reuseport_group};
        let workers = 3;
        let (members, dest) = reuseport_group(workers);
        if let Err(e) = attach_dht_steering(&members[0], workers as u32) {
            eprintln!("SKIPPED: cannot attach a reuseport program here: {e}");
            return;
        }
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sent = vec![Vec::new(); workers];
        for i in 0..12u8 {
            let mut k = [0u8; 32];
            k[7] = i;
            let t = u64::from(i) << 56;
            for (m, _) in samples(k, t, [i; 32]) {
                client.send_to(&m, dest).unwrap();
                sent[dht_owner(&m, workers)].push(m);
            }
        }
        for (w, want) in sent.iter().enumerate() {
            assert_eq!(&drain(&members[w]), want, "worker {w}");
        }
    }

    pub(crate) fn options(workers: usize) -> crate::rt::Options {
        crate::rt::Options {
            cpus: (0..workers).collect(),
            backend: crate::rt::Backend::Epoll,
            addressing: crate::rt::Addressing::Ipv4Lab { interface: std::net::Ipv4Addr::LOCALHOST },
            listen_port: 0,
            egress_port: 0,
            groups: Vec::new(),
            ingress_allow: crate::retry::AllowList::default(),
            nack_bind: IpAddr::from([0, 0, 0, 0]),
            nack_port: 0,
            multicast_loop: false,
            multicast_hops: 1,
            egress: vec![crate::rt::Egress::V4(std::net::Ipv4Addr::LOCALHOST)],
            debug_events: false,
            retry: crate::retry::Settings::default(),
            recovery: crate::retry::RecoverySettings::default(),
            batch: 8,
            uring_batch_wait: std::time::Duration::ZERO,
            store: None,
            dedup_window: std::time::Duration::from_secs(1),
            dht: Some(DhtOptions {
                port: 0,
                public_key: [1; 32],
                config: dht::Config::new([2; 32]),
            }),
            gossip: None,
            nack_tracing: None,
        }
    }

    /// Without the steering program: the worker that reads a datagram it
    /// does not own hands it to the owner, which handles it — a request
    /// for the other worker's key, and a response to the other worker's
    /// request (so its lookup, and the control thread's bootstrap, end).
    #[test]
    fn without_steering_workers_hand_dht_datagrams_to_their_owner() {
        use crate::rt::{Shared, sys::EventFd, worker};
        let opts = options(2);
        let shared = Shared::for_test(2);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| crossbeam_channel::bounded(64)).unzip();
        let wakers: Vec<Arc<EventFd>> = (0..2).map(|_| Arc::new(EventFd::new().unwrap())).collect();
        let mut cores: Vec<worker::Core> = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                worker::Core::new(i, &opts, rx, txs.clone(), wakers.clone(), shared.clone())
            })
            .collect();
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let peer_id = [0x22; 32];
        let sent = |c: &mut worker::Core| -> Vec<dht::Transmit> {
            c.dht.as_mut().unwrap().drain_transmits().collect()
        };

        // A FIND_VALUE for worker 1's key, read by worker 0.
        let key = [1u8; 32];
        assert_eq!(key_owner(&key, 2), 1);
        cores[0].on_dht(now, peer, &msg(7, peer_id, BodyRepr::FindValue { key, padding: 0 }));
        assert_eq!(cores[0].dht.as_ref().unwrap().counters.forwarded, 1);
        assert!(sent(&mut cores[0]).is_empty());
        cores[1].drain_inbox(now);
        let out = sent(&mut cores[1]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dest, peer);
        assert_eq!(Message::new_checked(&out[0].payload).unwrap().transaction_id(), 7);
        assert_eq!(cores[1].dht.as_ref().unwrap().counters.forwarded_in, 1);

        // The control thread bootstraps worker 0 through the peer; every
        // answer is read by worker 1 and handed over.
        let (tx, mut results) = tokio::sync::mpsc::channel(4);
        let what = DhtWhat::Bootstrap(Arc::from(vec![peer]));
        let shard = cores[0].dht.as_mut().unwrap();
        shard.on_request(now, DhtRequest { op: 42, what, reply: tx });
        let observed: SocketAddr = "127.0.0.1:9320".parse().unwrap();
        let ping = sent(&mut cores[0]).pop().unwrap();
        let m = Message::new_checked(&ping.payload).unwrap();
        let pong = msg(m.transaction_id(), peer_id, BodyRepr::Pong { observed });
        assert_eq!(dht_owner(&pong, 2), 0, "tagged for worker 0");
        cores[1].on_dht(now, peer, &pong);
        cores[0].drain_inbox(now);
        // Joined: worker 0 now looks its own id up through the peer.
        let find = sent(&mut cores[0]).pop().unwrap();
        let m = Message::new_checked(&find.payload).unwrap();
        let nodes = msg(m.transaction_id(), peer_id, BodyRepr::Nodes(NodeList::new()));
        cores[1].on_dht(now, peer, &nodes);
        cores[0].drain_inbox(now);
        let reply = results.try_recv().expect("the bootstrap's result");
        assert_eq!((reply.op, reply.worker), (42, 0));
        assert!(matches!(reply.result, Ok(Event::Bootstrapped { peers: 1 })), "{reply:?}");
        let st = cores[0].dht.as_ref().unwrap().node().stats();
        assert_eq!((st.responses_matched, st.drops.unsolicited), (2, 0));
        assert_eq!(cores[1].dht.as_ref().unwrap().counters.forwarded, 2);
        assert_eq!(cores[1].dht.as_ref().unwrap().node().stats().drops.unsolicited, 0);
    }
}
