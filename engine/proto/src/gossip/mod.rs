//! whisper: the gossip control plane between sibling endpoints (sans-IO).
//!
//! Speaks the frames of `docs/PROTOCOL.md` § "Gossip (G1–G6)"
//! ([`ricochet_wire::gossip`]) under the cluster MAC of § "Cluster MAC"
//! ([`ricochet_wire::mac`]). The model — topics in three modes, rumor push
//! over a virtual hypercube, digest-gated delta exchange with per-peer
//! watermarks, adaptive intervals, backpressure — follows seed 002 (the Go
//! package `whisper`); this code and the rules below are ricochet's own.
//!
//! # Contract
//! - **No I/O.** [`Gossip`] never opens a socket, spawns a thread or reads
//!   a clock. Time enters as `now: Instant` on every call; datagrams enter
//!   through [`Gossip::handle`] as `(source, bytes)`; datagrams to send and
//!   [`Event`]s leave through a caller-owned [`Outbox`]. The caller arms one
//!   timer for [`Gossip::poll_timeout`] and calls [`Gossip::handle_timeout`]
//!   when it fires.
//! - **Deterministic.** All randomness (exchange ids, jitter, fallback
//!   peers) comes from a generator seeded by [`Config::seed`], and no
//!   behaviour depends on hash-map iteration order, so a simulation replays
//!   exactly (`engine/proto/tests/gossip_sim.rs`).
//! - **Untrusted input.** Every datagram must carry a valid v2 envelope
//!   (cluster MAC, a stamp within the time window that was never accepted
//!   before: [replay protection](#replay-protection-and-amplification))
//!   and parse as a gossip frame; it must come from a source under its
//!   per-peer token bucket (100 msg/s, burst 500 by default). Anything
//!   else is dropped and counted by reason ([`Stats::drops`]), never a
//!   panic, never an allocation beyond the datagram's own size and the
//!   bounded tables below.
//! - **Bounded.** The rumor dedup LRU, retained rumor bodies, outstanding
//!   ACKs, in-flight exchanges, pulls, queries, tracked rate-limit peers and
//!   the egress queue all have caps ([`Config`]).
//! - **Datagram budget.** Every datagram, envelope included, is at most
//!   [`Config::max_datagram`] bytes (1232 by default). G1 exchanges larger
//!   than that are chunked; a single record or rumor that cannot fit is
//!   refused ([`PublishError::TooLarge`]) or skipped and counted.
//! - **Egress.** Datagrams leave through a priority queue under a global
//!   byte-rate cap: G5 ACKs first, then rumors by priority, then
//!   anti-entropy ([`Config::sync_priority`]). Whatever the cap holds back
//!   is deferred; when the queue is full the lowest priority is dropped
//!   first, and [`Gossip::publish`] refuses new work with
//!   [`PublishError::Backpressure`] once the queue passes
//!   [`Config::overload_threshold`].
//!
//! # Rumor routing (G3/G5)
//! Members, the local node included, are sorted by id; a member's index in
//! that order is its position in a virtual hypercube of
//! `d = ceil(log2 N)` dimensions. The origin sends on every dimension, a
//! receiver forwards only on dimensions above the one the rumor arrived on
//! ([`hypercube`]), so every member receives each rumor exactly once.
//!
//! **Missing partners** (N not a power of two): positions `N..2^d` are
//! *virtual*. A node whose partner on dimension `k` is virtual does that
//! partner's work itself: it sends directly to the virtual node's partners
//! on the dimensions above `k` (recursively, if those are virtual too),
//! labelling each message with the dimension that reaches it. Each real
//! member still receives exactly one message, from its nearest real
//! ancestor in the broadcast tree, so a broadcast to N members costs
//! exactly N − 1 G3 messages for every N, and at most `d` hops
//! ([`hypercube::tree_targets`]).
//!
//! **From-dimension byte.** The wire's G3 field carries the dimension a
//! rumor arrived on, `0xFF` telling the receiver to act as an origin
//! (forward on every dimension). This engine gives the byte more
//! structure, within the wire's meaning:
//!
//! | value                | meaning                                        |
//! |----------------------|------------------------------------------------|
//! | `0x00 \| d` (d < 32) | primary cube, dimension `d`                    |
//! | `0x40 \| d`          | primary cube, dimension `d`, sent around a silent member (retry) |
//! | `0x80 \| d`          | dual cube (members sorted by BLAKE3 of the id), dimension `d` |
//! | `0xC0 \| d`          | dual cube, sent around a silent member         |
//! | `0xFE`               | random-peer fallback push                      |
//! | `0xFF`               | act as origin                                  |
//!
//! Every other value is dropped as `bad_dimension`.
//!
//! **Validity and fallback.** The cube is used when the local view has at
//! least [`Config::min_cube_members`] members and views agree. A receiver
//! checks that a rumor which arrived on dimension `j` came from its
//! partner on `j` (or that the partner is virtual; rerouted copies are not
//! checked); anything else means the
//! sender sorts the membership differently, so the receiver falls back to
//! random-peer push for [`Config::fallback_hold`] (or until the membership
//! changes): `fallback_fanout` random peers, each receiver forwarding with
//! probability `P / (1 + hop)` below the hop limit.
//!
//! **ACKs and retries.** Every G3 sent expects a G5 ACK (the receiver ACKs
//! duplicates too). After [`Config::ack_timeout`] without one the send is
//! retried, at most [`Config::rumor_retries`] times. Every retry resends
//! over the same edge (a single lost datagram is the common case, and that
//! edge is the only one reaching the target itself). From the second retry
//! on — or already on the first when the dimension's health weight has
//! fallen below [`Config::reroute_below`] — the retry also goes over the
//! *alternate edges around* the silent target: to the members it would
//! have forwarded to, marked rerouted, so its subtree is reached even if
//! the target is down. Each timeout halves the dimension's weight, each
//! ACK restores 0.1 of it. In fallback mode a retry goes to another random
//! peer. A send whose budget runs out is reported
//! ([`Event::RumorDropped`]); anti-entropy still carries StatefulMerge
//! records.
//!
//! Rumor dedup keys on the BLAKE3-256 of the payload ([`dedup`]): a
//! bounded O(1) LRU recording, per rumor, whether it was delivered and
//! which forwarding routes (primary cube, dual cube, fallback push) a
//! copy has claimed. Each copy claims every route it could forward on
//! ([`dedup::arrival_routes`]): the first copy is delivered, and a rumor
//! is forwarded at most once per route — a copy that claimed its cube
//! route and fallback push uses one of them (the cube while it is valid).
//! Standing alone the engine keeps the LRU itself; in the daemon it is
//! sharded over the workers by rumor id ([`Config::external_dedup`],
//! [`Gossip::handle_admitted`]): the worker owning the id ACKs every copy,
//! absorbs duplicates and hands the engine only what a copy may still
//! do.
//!
//! # Anti-entropy (G2/G1/G4)
//! Every adaptive interval ([`sync::AdaptiveInterval`]: 2 s while records
//! are arriving, 10 s base, doubling to 60 s while idle, ±15 % jitter) the
//! engine sends a 12-byte G2 probe carrying its combined fingerprint to the
//! next peer of a shuffled round-robin. G2 flag *match* set always means a
//! reply and clear always means a probe, so probes never bounce: on a
//! match the probed peer answers with a matched G2; on a mismatch it
//! starts a G1 exchange toward the prober instead of answering.
//!
//! A G1 exchange runs per StatefulMerge topic. The initiator sends its
//! store's delta since the peer last acknowledged (its own watermark) and,
//! in the watermark field, how far it holds the peer's changes (in the
//! peer's clock); the responder applies every chunk and, once all chunks of
//! the request are in, answers with its delta since that watermark and its
//! own watermark. Watermarks advance only when a whole exchange completed,
//! so a lost chunk means the next exchange repeats the delta. Every N
//! exchanges with a peer are full (snapshots both ways); N starts at 10 and
//! adapts per peer in [5, 20] — halved when a full sync found records the
//! deltas had missed, raised by 2 when it found none.
//!
//! G1 exchange-id bit 31 tells a response (set) from a request (clear);
//! responses are never answered. The entries are ricochet's codec
//! ([`entries`]): a meta byte (bit 0: *backpressure*) then length-prefixed
//! records. A node whose in-flight inbound exchanges exceed
//! [`Config::backpressure_threshold`] (or whose egress queue is over the
//! overload threshold) answers with an empty, backpressure-flagged
//! response; the initiator then leaves that peer alone for 30 s, doubling
//! to 120 s while the signal repeats. A peer that fails two probe rounds in
//! a row is backed off the same way.
//!
//! G4 pull ([`Gossip::pull`]) asks one peer for its records of a topic
//! newer than our watermark for it; the answer is a G1 response.
//!
//! # Reconciliation (G4 IBLT)
//! **When.** A delta exchange is already proportional to what changed, but
//! a *full* one ships both whole stores. So whenever a probe mismatch would
//! start a full G1 exchange for a StatefulMerge topic — first contact with
//! a peer (no watermark) or every N-th exchange — the probed member runs an
//! IBLT reconciliation instead ([`Config::reconcile`], on by default), which
//! costs cells in proportion to the *difference*, then only the differing
//! records. Delta exchanges stay G1. [`Gossip::reconcile`] starts one on
//! demand.
//!
//! **Elements.** A record's element id is the first 8 bytes of its BLAKE3
//! hash ([`iblt::element_id`]); [`Store::element_ids`] lists them and
//! [`Store::records_for`] maps them back. Two versions of one key are two
//! elements: both travel, and the store's merge keeps the winner.
//!
//! **Fixed mode first.** The initiator estimates the difference as twice
//! the records it changed since the peer last acknowledged its changes
//! (`delta_since(sent)`: the peer is assumed to have changed as many; 0 on
//! first contact), and sends a table of `⌈1.5 d̂⌉` cells — at least one
//! datagram's worth (58 cells at the default budget: tiny rate-1.5 tables
//! fail often, a full datagram decodes small differences 99 % of the time,
//! perf/gossip-iblt.md), rounded up to whole datagrams, at most
//! [`Config::reconcile_max_cells`]. The responder subtracts its own table of
//! the size the frames state and peels. On success it sends the records
//! the initiator lacks as G1 response chunks (exchange id = session id |
//! bit 31, always at least one chunk, carrying its watermark) and a *reply*
//! listing the keys it lacks (pure cells, count −1); the initiator answers
//! the reply with those records the same way. The initiator's session is
//! complete once it holds the whole reply and all of the responder's
//! chunks; it counts as a full sync (watermarks and cadence as for a full
//! G1 exchange).
//!
//! **Decode failure → rateless → G1.** A table that does not decode is
//! answered with flag `0x03`; the initiator flips the peer to rateless and
//! at once starts a new session streaming rateless symbols
//! ([`iblt::RatelessEncoder`]). Symbols go in bursts: the first is the size
//! of the failed table (or of the table the estimate asks for), at most
//! [`Config::reconcile_burst`] datagrams; the responder's decoder asks for
//! each next one with a request without cells once it holds the whole
//! burst — half as many symbols again as it has, in whole datagrams, so at
//! most about a third of the stream overshoots the decoding point — and
//! finishes as above when symbol 0 empties. A rateless success flips the
//! peer back to fixed mode (the next difference is new changes, which the
//! estimate covers). Cells of a table or burst that have not arrived
//! [`Config::ack_timeout`] after the session last made progress (frames
//! reorder) are asked for again with a request, at most 3 times. A stream
//! that is inconsistent or reaches [`Config::reconcile_max_symbols`] is
//! answered with a rateless `0x03`, and the initiator falls back to a G1
//! exchange at once. A session that times out (lost datagrams) makes the
//! peer's next full sync a G1 exchange. An overloaded responder answers a
//! table with an empty, backpressure-flagged G1 chunk.
//!
//! **Bounds.** Tables are at most [`Config::reconcile_max_cells`] cells and
//! streams [`Config::reconcile_max_symbols`] symbols (the responder answers
//! `0x03` beyond them); a peer may have at most
//! [`Config::max_reconcile_sessions`] sessions decoding here; our own
//! sessions share the cap on outbound exchanges; frames past a gap are
//! buffered up to one burst; every session expires after
//! [`Config::exchange_timeout`] without progress. Every step is counted in
//! [`Stats`] (`reconcile_*`).
//!
//! # Topics
//! - **BroadcastOnly**: rumors only; subscribers get [`Event::Delivered`].
//! - **StatefulMerge**: a [`Store`]; published records are applied locally
//!   and rumored; received ones are applied; G1 repairs whatever rumors
//!   missed.
//! - **RequestResponse**: [`Gossip::query`] rumors a request
//!   (`[u32 query id][32-byte origin id][payload]`) to every member; each
//!   member's [`Responder`] may answer with a single-datagram G1 response
//!   (exchange id = query id | bit 31) unicast to the origin, reported as
//!   [`Event::QueryReply`] until [`Event::QueryDone`].
//!
//! # Replay protection and amplification
//! docs/PROTOCOL.md § "Gossip envelope (v2)". Every datagram leaves
//! stamped (sender id, wall-clock ms, counter) under the v2 MAC; the stamp
//! is written when the datagram leaves the egress queue, so counters reach
//! each peer in send order. On receipt the engine acts on a datagram only
//! if its stamp is within [`replay::WINDOW_MS`] (±30 s) of its clock and
//! its `(sender, counter)` was never accepted ([`replay::ReplayGuard`]): a
//! captured G2 or G4 delivered again — seconds or hours later — is dropped
//! and counted (`replayed`, `out_of_window`), never answered. Version-1
//! datagrams are counted as `bad_version`. The wall clock enters through
//! [`Gossip::set_unix_time`]; the engine never reads one.
//!
//! Answers are bounded by the request: a datagram from a source outside
//! the member view draws at most [`AMPLIFICATION`] (3) times its size in
//! answers; what would exceed it is not queued (`amplification`). Such a
//! source's mismatching G2 draws a G1 request without records (never a G4
//! table), its G4 pull or G1 request at most one G1 chunk within the bound;
//! our own pulls are padded to `⌈max_datagram / 3⌉` bytes so a peer that
//! does not know us yet can answer with a full chunk. Members are answered
//! up to [`Config::max_exchange_bytes`].
//!
//! # Integration points not driven here
//! G6 snapshot frames ([`snapshot`]) are authenticated, parsed and handed to
//! the caller as [`Event::Frame`]; their driver sends through
//! [`Gossip::send_frame`], which seals and queues like any other gossip
//! datagram. A driver that takes frames past [`Gossip::handle`] opens them
//! with [`Gossip::authenticate`], so replays are refused on every path.

#![warn(missing_docs)]

pub mod dedup;
pub mod engine;
pub mod entries;
pub mod hypercube;
pub mod iblt;
pub mod limit;
pub mod memstore;
pub mod pex;
mod reconcile;
pub mod replay;
pub mod shard;
pub mod snapshot;
pub mod stats;
pub mod sync;

#[cfg(test)]
mod tests;

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

pub use engine::{Gossip, QueryId, RumorId};
pub use memstore::MemStore;
pub use stats::{Drops, FrameCounts, Stats};

/// A cluster member: its 32-byte id (sorting key of the hypercube) and its
/// gossip address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// Node id.
    pub id: [u8; 32],
    /// Gossip socket address.
    pub addr: SocketAddr,
}

/// A StatefulMerge topic's state, driven by G1/G3/G4.
///
/// Only [`Store::element_ids`] and [`Store::records_for`] have default
/// implementations (correct but linear in the store's size per call).
///
/// Records are opaque byte strings; merge rules (last-writer-wins,
/// tombstones…) are the store's. Versions are the store's own monotone
/// clock (`i64`, not negative): every local change — including one caused
/// by [`Store::apply`] — gets a version above every earlier one.
pub trait Store {
    /// Order-independent summary of the whole state (XOR of per-record
    /// hashes); equal fingerprints mean equal states. Must change on every
    /// mutation.
    fn fingerprint(&self) -> u64;
    /// The version of the latest local change (0 when empty).
    fn watermark(&self) -> i64;
    /// Every live record, oldest change first.
    fn snapshot(&self) -> Vec<Vec<u8>>;
    /// Every record changed after version `since`, oldest change first.
    /// Over-sending is harmless: peers merge idempotently.
    fn delta_since(&self, since: i64) -> Vec<Vec<u8>>;
    /// Merges one record from a peer or a local publish. `Ok(true)` if the
    /// state changed, `Ok(false)` if it already held it (or newer).
    fn apply(&mut self, record: &[u8]) -> Result<bool, RecordRejected>;
    /// The element id ([`iblt::element_id`]) of every live record, for G4
    /// reconciliation, in any order. The default hashes the snapshot; a
    /// store that keeps the ids should return them instead.
    fn element_ids(&self) -> Vec<u64> {
        self.snapshot().iter().map(|r| iblt::element_id(r)).collect()
    }
    /// The live records whose element ids are among `ids`, in any order;
    /// ids it does not hold (any more) are skipped. The default scans the
    /// snapshot.
    fn records_for(&self, ids: &[u64]) -> Vec<Vec<u8>> {
        let want: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
        self.snapshot().into_iter().filter(|r| want.contains(&iblt::element_id(r))).collect()
    }
}

/// A record a [`Store`] refused (malformed for this topic, or policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRejected;

impl fmt::Display for RecordRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("record rejected by the topic's store")
    }
}

impl std::error::Error for RecordRejected {}

/// Answers the queries of a RequestResponse topic.
pub trait Responder {
    /// Called once per query received from another member (`origin` is its
    /// id). `Some(bytes)` sends a reply to the origin; it must fit one
    /// datagram or it is dropped (counted as `reply_too_large`).
    fn respond(&mut self, origin: &[u8; 32], query: &[u8]) -> Option<Vec<u8>>;
}

/// How a topic propagates.
pub enum TopicMode {
    /// Rumors only, no state.
    BroadcastOnly,
    /// Rumors plus anti-entropy over a store.
    StatefulMerge(Box<dyn Store + Send>),
    /// Solicit/reply.
    RequestResponse(Box<dyn Responder + Send>),
}

impl TopicMode {
    /// A stable name, for logs and `/debug`.
    pub fn name(&self) -> &'static str {
        match self {
            TopicMode::BroadcastOnly => "broadcast_only",
            TopicMode::StatefulMerge(_) => "stateful_merge",
            TopicMode::RequestResponse(_) => "request_response",
        }
    }
}

impl fmt::Debug for TopicMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a topic could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Topic names travel with a one-byte length: at most 255 bytes.
    NameTooLong,
    /// A topic of that name exists.
    Exists,
    /// [`Config::max_topics`] topics are registered.
    TooMany,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::NameTooLong => "topic name longer than 255 bytes",
            TopicError::Exists => "topic already registered",
            TopicError::TooMany => "too many topics",
        })
    }
}

impl std::error::Error for TopicError {}

/// Why [`Gossip::publish`], [`Gossip::query`] or [`Gossip::pull`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    /// No topic of that name.
    UnknownTopic,
    /// The topic's mode does not allow this (publish on RequestResponse,
    /// query on anything else, pull on a topic without a store).
    WrongMode,
    /// The payload cannot fit one datagram.
    TooLarge {
        /// The largest payload that fits.
        max: usize,
    },
    /// The egress queue is over [`Config::overload_threshold`]: retry later,
    /// drop, or push back on the caller.
    Backpressure,
    /// The topic's store refused the record.
    Rejected,
    /// Too many queries or pulls are outstanding, or the peer is unknown.
    Busy,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::UnknownTopic => f.write_str("unknown topic"),
            PublishError::WrongMode => f.write_str("operation not allowed in the topic's mode"),
            PublishError::TooLarge { max } => write!(f, "payload too large (max {max} bytes)"),
            PublishError::Backpressure => f.write_str("gossip engine overloaded"),
            PublishError::Rejected => f.write_str("record rejected by the topic's store"),
            PublishError::Busy => f.write_str("too many operations outstanding"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Everything a [`Gossip`] engine can be tuned by. Build with
/// [`Config::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the engine's generator (exchange ids, jitter, fallback peers,
    /// probe order). Must be random in production.
    pub seed: [u8; 32],
    /// Largest datagram, envelope (stamp and MAC) included
    /// (`--max-datagram`).
    pub max_datagram: usize,
    /// Most members in the view (larger lists are truncated).
    pub max_members: usize,
    /// Most registered topics.
    pub max_topics: usize,
    /// Fewest members (self included) for hypercube routing; below it,
    /// random-peer push.
    pub min_cube_members: usize,
    /// Route every rumor over a second cube too (members sorted by BLAKE3
    /// of their id): two independent trees, 2(N − 1) messages.
    pub dual_cube: bool,
    /// Always use random-peer push (for comparison runs).
    pub force_fallback: bool,
    /// How long random-peer push stays on after a view mismatch was seen.
    pub fallback_hold: Duration,
    /// Peers each fallback sender pushes to.
    pub fallback_fanout: usize,
    /// Fallback forward probability numerator P (forward with P/(1+hop)).
    pub fallback_forward_p: f64,
    /// Fallback hop limit.
    pub max_hops: u8,
    /// How long a G3 send waits for its G5; also how long a G4 decoder
    /// waits for missing cells before asking for them again.
    pub ack_timeout: Duration,
    /// Retries per G3 send after an ACK timeout.
    pub rumor_retries: u8,
    /// Dimension weight below which the first retry already goes around
    /// the target.
    pub reroute_below: f64,
    /// Rumor ids remembered for dedup.
    pub dedup_capacity: usize,
    /// Most G3 sends awaiting an ACK; beyond it sends go untracked.
    pub max_pending_acks: usize,
    /// Fastest anti-entropy interval (records arriving).
    pub interval_min: Duration,
    /// Normal anti-entropy interval.
    pub interval_base: Duration,
    /// Slowest anti-entropy interval (idle).
    pub interval_max: Duration,
    /// ± fraction of jitter on every interval.
    pub interval_jitter: f64,
    /// Full-sync cadence bounds: every N exchanges per peer, N in this range.
    pub full_sync_every: (u32, u32),
    /// First backoff when a peer signals backpressure or stops answering.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// How long a probe round, an exchange or a pull may take.
    pub exchange_timeout: Duration,
    /// Most bytes of records one exchange (or pull answer) carries.
    pub max_exchange_bytes: usize,
    /// Most exchanges in flight in each direction: inbound ones being
    /// reassembled, and our own awaiting their answer.
    pub max_inbound_exchanges: usize,
    /// Inbound exchanges in flight above which we signal backpressure.
    pub backpressure_threshold: usize,
    /// Per-peer receive rate, messages per second.
    pub peer_rate: f64,
    /// Per-peer receive burst.
    pub peer_burst: f64,
    /// Sources tracked individually by the receive limiter; the rest share
    /// one overflow bucket.
    pub max_tracked_peers: usize,
    /// Global egress cap, bytes per second.
    pub egress_rate: f64,
    /// Global egress burst, bytes.
    pub egress_burst: f64,
    /// Most datagrams queued for egress.
    pub max_queue: usize,
    /// Queued datagrams at which publishes are refused.
    pub overload_threshold: usize,
    /// Egress priority of anti-entropy traffic (G1, G2, G4).
    pub sync_priority: u8,
    /// How long a query collects replies.
    pub query_timeout: Duration,
    /// Most outstanding queries and pulls (each).
    pub max_outstanding: usize,
    /// Run G4 IBLT reconciliation in place of full G1 exchanges.
    pub reconcile: bool,
    /// Largest fixed IBLT table, in cells, we send or decode.
    pub reconcile_max_cells: usize,
    /// Most rateless symbols one session streams or decodes; past it the
    /// session falls back to G1.
    pub reconcile_max_symbols: usize,
    /// Largest rateless burst, in datagrams.
    pub reconcile_burst: usize,
    /// Most reconciliation sessions being decoded here at once.
    pub max_reconcile_sessions: usize,
    /// Rumor dedup lives outside the engine (the daemon's workers, one
    /// shard each): rumors arrive through [`Gossip::handle_admitted`], and
    /// every rumor originated here is reported in [`Outbox::marks`] so
    /// the shard owning its id learns it.
    pub external_dedup: bool,
    /// Most stamp senders the replay guard tracks ([`replay`]); a new
    /// sender beyond it is refused until a tracked one leaves the window.
    /// Each takes about 150 bytes (its counter ring), so the default
    /// 16 384 is under 3 MB; only MAC-verified datagrams create one.
    pub max_replay_senders: usize,
}

/// The amplification bound: a datagram from a source outside the member
/// view draws answers of at most this many times its own size (see the
/// module docs, "Replay protection and amplification").
pub use ricochet_wire::AMPLIFICATION;

impl Config {
    /// Defaults from seed 002 and issue 6, with the given seed.
    pub fn new(seed: [u8; 32]) -> Self {
        Config {
            seed,
            max_datagram: 1232,
            max_members: 4096,
            max_topics: 64,
            min_cube_members: 2,
            dual_cube: false,
            force_fallback: false,
            fallback_hold: Duration::from_secs(30),
            fallback_fanout: 4,
            fallback_forward_p: 1.0,
            max_hops: 8,
            ack_timeout: Duration::from_millis(500),
            rumor_retries: 3,
            reroute_below: 0.25,
            dedup_capacity: 65_536,
            max_pending_acks: 16_384,
            interval_min: Duration::from_secs(2),
            interval_base: Duration::from_secs(10),
            interval_max: Duration::from_secs(60),
            interval_jitter: 0.15,
            full_sync_every: (5, 20),
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(120),
            exchange_timeout: Duration::from_secs(3),
            max_exchange_bytes: 1 << 20,
            max_inbound_exchanges: 64,
            backpressure_threshold: 5,
            peer_rate: 100.0,
            peer_burst: 500.0,
            max_tracked_peers: 4096,
            egress_rate: 10.0 * 1024.0 * 1024.0,
            egress_burst: 1024.0 * 1024.0,
            max_queue: 4096,
            overload_threshold: 1024,
            sync_priority: 0,
            query_timeout: Duration::from_secs(2),
            max_outstanding: 256,
            reconcile: true,
            reconcile_max_cells: 8192,
            reconcile_max_symbols: 16_384,
            reconcile_burst: 8,
            max_reconcile_sessions: 16,
            external_dedup: false,
            max_replay_senders: 16_384,
        }
    }
}

/// A datagram to send: the whole UDP payload is a gossip frame in its v2
/// envelope (padding, stamp, MAC). The crate's one [`crate::Transmit`].
pub use crate::Transmit;

/// Something the caller may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A rumor reached us for the first time on a subscribed topic.
    Delivered {
        /// Topic name.
        topic: Vec<u8>,
        /// The payload (for StatefulMerge, the record, already applied).
        payload: Vec<u8>,
        /// The member that sent it to us.
        from: SocketAddr,
        /// Hops it travelled from its origin.
        hops: u8,
        /// StatefulMerge: whether applying it changed the store.
        changed: bool,
    },
    /// Records from a G1 exchange, a pull or a G4 reconciliation changed a
    /// subscribed topic's store.
    Applied {
        /// Topic name.
        topic: Vec<u8>,
        /// The peer they came from.
        from: SocketAddr,
        /// Records that changed the store.
        records: u64,
    },
    /// A reply to one of our queries.
    QueryReply {
        /// The query.
        query: QueryId,
        /// The member that answered.
        from: SocketAddr,
        /// Its answer.
        payload: Vec<u8>,
    },
    /// A query's collection window closed.
    QueryDone {
        /// The query.
        query: QueryId,
        /// Replies received.
        replies: u32,
    },
    /// A [`Gossip::pull`] completed or timed out.
    PullDone {
        /// Topic name.
        topic: Vec<u8>,
        /// The peer asked.
        peer: SocketAddr,
        /// Records that changed the store.
        records: u64,
        /// Whether the whole answer arrived in time.
        complete: bool,
    },
    /// A G3 send exhausted its retry budget without an ACK.
    RumorDropped {
        /// The rumor.
        rumor: RumorId,
        /// The member that never acknowledged it.
        peer: SocketAddr,
    },
    /// A rumor arrived on a dimension that does not match our view of the
    /// membership: random-peer push is on for [`Config::fallback_hold`].
    ViewMismatch {
        /// The sender.
        from: SocketAddr,
    },
    /// An authenticated frame this engine does not drive (G6 snapshot), for
    /// the snapshot driver.
    Frame {
        /// The sender.
        from: SocketAddr,
        /// The frame, envelope removed.
        bytes: Vec<u8>,
    },
}

/// Where [`Gossip`] puts its effects; the caller drains it and may reuse it.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Datagrams to send, in order.
    pub transmits: Vec<Transmit>,
    /// Events, in order.
    pub events: Vec<Event>,
    /// Rumors originated here and their dedup flags, for the caller's
    /// dedup shards; only with [`Config::external_dedup`].
    pub marks: Vec<(RumorId, u8)>,
}

impl Outbox {
    /// Empty buffers.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Takes the queued datagrams, keeping the allocation.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.transmits.drain(..)
    }

    /// Takes the queued events, keeping the allocation.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.events.is_empty() && self.marks.is_empty()
    }
}
