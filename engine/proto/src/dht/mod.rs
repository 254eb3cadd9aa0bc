//! The sans-IO Kademlia DHT: routing table, record store shard, iterative
//! lookups and replication, for cross-domain upstream discovery (issue 7).
//!
//! Speaks the messages of `docs/PROTOCOL.md` § "DHT (UDP 9320)" and stores
//! the records of § "Signed records" ([`ricochet_wire::dht`],
//! [`ricochet_wire::record`]). The RPC set and the record model follow
//! seed 001 (a Go DHT); this code is ricochet's own.
//!
//! # Contract
//! - **No I/O.** [`Node`] never opens a socket, spawns a thread or reads a
//!   clock. Time enters as `now: Instant` on every call, and wall-clock
//!   unix seconds (for record timestamps and TTLs) are derived from an
//!   anchor the caller sets with [`Node::set_unix_time`]. Datagrams enter
//!   through [`Node::handle`]; datagrams to send and query results leave
//!   through a caller-owned [`Outbox`]. The caller arms a timer for
//!   [`Node::poll_timeout`] and calls [`Node::handle_timeout`] when it
//!   fires.
//! - **Deterministic.** All randomness comes from a generator seeded by
//!   [`Config::seed`], and no iteration order depends on a hash seed, so
//!   the same inputs give the same outputs — which is what makes the
//!   simulation in `engine/proto/tests/dht_sim.rs` reproducible. In
//!   production the seed must be random: it also keys the transaction ids.
//! - **Untrusted input.** Every datagram is checked by the wire decoder;
//!   anything malformed, from our own id, from an unusable source address,
//!   over the per-source request rate, or a response that does not match an
//!   outstanding request by transaction id, source address, message type
//!   and (when known) node id, is dropped and counted by reason
//!   ([`Stats::drops`]), never a panic. Records are verified strictly
//!   before they are stored, served or returned ([`store`]); a flood of
//!   new addresses cannot evict good routing entries ([`routing`]).
//! - **Bounded.** Outstanding requests, queries, candidates per lookup,
//!   routing entries, replacement caches, store keys, records per key and
//!   rate-limiter state all have caps.
//!
//! # Modules
//! - [`node`]: the state machine tying everything together.
//! - [`routing`]: k-buckets with liveness-aware replacement, subnet limits
//!   and peer health (Good / Unknown / Bad with back-off).
//! - [`store`]: the record store shard and the record-authority hook.
//! - [`query`]: the iterative lookup (α parallel requests).
//! - [`estimate`]: network size estimate with a confidence interval.
//! - [`peers`]: the persisted peer cache format.
//! - [`limit`]: per-source request rate limits.
//! - [`id`], [`rng`]: ids and XOR distance; the seeded generator.
//!
//! # Using it
//! ```
//! use std::time::Instant;
//! use ricochet_proto::dht::{Config, Node, Outbox};
//!
//! let now = Instant::now();
//! let mut node = Node::new(&[7u8; 32], Config::new([1u8; 32]), now, 1_767_225_600);
//! let mut out = Outbox::new();
//! node.bootstrap(now, &["192.0.2.1:9320".parse().unwrap()], &mut out);
//! for t in out.drain_transmits() {
//!     // socket.send_to(&t.payload, t.dest)
//!     assert_eq!(t.dest.port(), 9320);
//! }
//! assert!(node.poll_timeout().is_some());
//! ```
//!
//! The driver's loop: feed every datagram from the DHT socket to
//! [`Node::handle`]; arm one timer for [`Node::poll_timeout`] (re-read it
//! after every call) and call [`Node::handle_timeout`] when it fires; after
//! each call send `out.transmits` and act on `out.events`. Commands
//! ([`Node::find_value`], [`Node::put`]…) return a [`QueryId`] that the
//! matching [`Event`] carries. A node's replies must reach the same
//! `Node` that sent the request (transaction ids are per node). The daemon
//! runs one `Node` per worker, all with the same identity on one
//! SO_REUSEPORT port: [`Config::txid_tag`] marks each node's transaction
//! ids so responses can be steered back to it, and each node's store is
//! the shard of the keys its worker owns ([`store::Store`] can also be
//! used on its own).

#![warn(missing_docs)]

pub mod estimate;
pub mod id;
pub mod limit;
pub mod node;
pub mod peers;
pub mod query;
pub mod rng;
pub mod routing;
pub mod stats;
pub mod store;

#[cfg(test)]
mod tests;

use core::net::SocketAddr;
use core::time::Duration;

use ricochet_wire::dht::NodeInfo;

pub use estimate::SizeEstimate;
pub use id::{Distance, NodeId};
pub use limit::RateSettings;
pub use node::{Node, PutError};
pub use query::{PutAcks, QueryId};
pub use routing::{Health, RoutingSettings};
pub use stats::{Drops, Stats};
pub use store::{AllowAll, RecordBuf, RecordPolicy, Refusal, StoreSettings};

/// Everything a [`Node`] can be tuned by. Build with [`Config::new`] and
/// adjust fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the node's generator and keys its transaction ids. Must be
    /// random in production (fixed only in simulations).
    pub seed: [u8; 32],
    /// Parallel requests per lookup, Kademlia's α.
    pub alpha: usize,
    /// Times a lookup asks a node again after a timeout before giving up
    /// on it.
    pub lookup_retries: u8,
    /// How long a request may go unanswered before it counts as failed.
    pub request_timeout: Duration,
    /// How long a lookup (with its STOREs) may run in total.
    pub query_timeout: Duration,
    /// Most outstanding requests.
    pub max_pending: usize,
    /// Most concurrent lookups; a user lookup beyond this completes at once
    /// with an empty result.
    pub max_queries: usize,
    /// Period of the maintenance tick (store purge, refresh, replication).
    pub tick: Duration,
    /// A bucket with no lookup in its range and no reply from a member for
    /// this long gets a refresh lookup for a random id in its range.
    pub refresh_interval: Duration,
    /// Refresh the buckets beyond the nearest one right after bootstrap.
    pub refresh_on_bootstrap: bool,
    /// Concurrent refresh lookups.
    pub max_refreshes: usize,
    /// A refresh lookup ends when this many of the nodes closest to its
    /// random target have answered (fewer than k: a refresh only needs to
    /// reach the bucket's range, and every answer fills the bucket).
    pub refresh_width: usize,
    /// Each held record is re-stored to the k closest nodes this often,
    /// unless another holder stored it here meanwhile (plus up to 25 %
    /// jitter so holders do not fire together).
    pub replicate_interval: Duration,
    /// Concurrent replication lookups.
    pub max_replications: usize,
    /// How long a lookup's distances count towards the size estimate.
    pub estimate_window: Duration,
    /// Routing-table limits; `routing.k` is Kademlia's k everywhere.
    pub routing: RoutingSettings,
    /// Store limits.
    pub store: StoreSettings,
    /// Request rate limits.
    pub rate: RateSettings,
    /// `Some((shard, shards))` when this node is one of `shards` nodes
    /// sharing one identity and one UDP port (one per worker): the first
    /// byte of every transaction id it generates is then ≡ `shard` (mod
    /// `shards`), so a reuseport steering program can send each response
    /// to the node that asked (`ricochet::rt::dht_owner`). `None`: ids are
    /// untouched.
    pub txid_tag: Option<(u8, u8)>,
}

impl Config {
    /// Defaults (k = 20, α = 3, 2 s request timeout, 15 min refresh,
    /// 1 h replication) with the given seed.
    pub fn new(seed: [u8; 32]) -> Self {
        Config {
            seed,
            alpha: 3,
            lookup_retries: 1,
            request_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(60),
            max_pending: 4096,
            max_queries: 256,
            tick: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(15 * 60),
            refresh_on_bootstrap: true,
            max_refreshes: 2,
            refresh_width: 5,
            replicate_interval: Duration::from_secs(3600),
            max_replications: 4,
            estimate_window: Duration::from_secs(30 * 60),
            routing: RoutingSettings::default(),
            store: StoreSettings::default(),
            rate: RateSettings::default(),
            txid_tag: None,
        }
    }
}

/// A datagram to send: a DHT message of at most
/// `ricochet_wire::dht::DATAGRAM_BUDGET` bytes. The crate's one
/// [`crate::Transmit`].
pub use crate::Transmit;

/// A result for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A bootstrap's self-lookup finished.
    Bootstrapped {
        /// Routing-table entries afterwards.
        peers: usize,
    },
    /// No bootstrap address answered and the table is empty: retry later.
    BootstrapFailed,
    /// A [`Node::find_node`] finished.
    FindNodeDone {
        /// The query.
        query: QueryId,
        /// The looked-up id.
        target: NodeId,
        /// The closest nodes that answered, nearest first (at most k).
        nodes: Vec<NodeInfo>,
        /// Hop count to the closest of them (see [`query`]).
        hops: u8,
        /// Requests sent.
        requests: u32,
    },
    /// A [`Node::find_value`] finished.
    FindValueDone {
        /// The query.
        query: QueryId,
        /// The looked-up key.
        key: NodeId,
        /// Verified, live records under the key, at most one per slot
        /// (highest seq); empty if none was found. Includes records this
        /// node holds itself.
        records: Vec<RecordBuf>,
        /// Hop count to the first node that returned a record (0 if only
        /// the local store had one or nothing was found).
        hops: u8,
        /// Requests sent.
        requests: u32,
    },
    /// A [`Node::put`] finished.
    PutDone {
        /// The query.
        query: QueryId,
        /// The record's key.
        key: NodeId,
        /// Nodes the record was sent to (the k closest that answered).
        targets: u32,
        /// Their answers.
        acks: PutAcks,
    },
    /// The majority of recent PONGs report a new external address for us.
    ExternalAddr(SocketAddr),
}

/// Where [`Node`] puts its effects; the caller drains it and may reuse it.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Datagrams to send, in order.
    pub transmits: Vec<Transmit>,
    /// Results, in order.
    pub events: Vec<Event>,
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
        self.transmits.is_empty() && self.events.is_empty()
    }
}
