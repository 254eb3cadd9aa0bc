//! The sans-IO part of discovery: what ricochet does with the DHT —
//! publish this endpoint's record, look up the upstream domain, keep the
//! upstream list.
//!
//! # Contract
//! - No I/O, no clock and no DHT node: the nodes run on the workers, one
//!   per worker (`rt::dht_owner` says which one a key belongs to). Time
//!   enters as `now` (and a unix-time anchor, [`Core::set_unix_time`]),
//!   timers through [`Core::poll_timeout`] / [`Core::handle_timeout`]. The
//!   core's DHT operations leave as [`Command`]s ([`Core::take_commands`]:
//!   bootstrap every shard, put or look up a key at its owner) and their
//!   results come back through [`Core::on_reply`], as the node's
//!   [`Event`]s. The shards' routing-table sizes come in through
//!   [`Core::set_routing_peers`]. Things worth logging leave as [`Note`]s
//!   ([`Core::take_notes`]), the upstream list as [`Core::take_upstreams`].
//! - A bootstrap ends when every shard answered it (a shard that could not
//!   take it answers with an error): joined if any shard joined. Every
//!   operation has a deadline ([`OP_TIMEOUT`], beyond the nodes' own query
//!   timeout): one whose result never comes (lost between threads) is
//!   given up and counted, so it cannot hold a put or lookup slot forever.
//! - Publishing: every `refresh` (and at once after a bootstrap or a change
//!   of the draining state) the record is re-signed with a higher seq
//!   (`max(previous + 1, unix seconds × 1000)`, so a restart with the same
//!   key still supersedes what the DHT holds) and a fresh timestamp, and
//!   put. Its TTL is [`ttl_for`]`(refresh)`, so a stopped endpoint's record
//!   is gone from the DHT a few refresh periods after its last put.
//! - Discovery: every `refresh` (and at once after a bootstrap) the
//!   upstream domain's topic key is looked up. A record counts only if it
//!   passed the node's strict checks (signature, liveness, TTL, size) and
//!   is an endpoint record for exactly that domain, not ours, signed by a
//!   key [`Trust`] allows (`--upstream-keys`), with a
//!   usable NACK address of a family the upstream socket can reach. Each
//!   publisher keeps its newest record (highest seq); one whose newest
//!   record carries the Draining flag is kept but not listed, so an older
//!   copy held by a slower node cannot bring it back. An endpoint leaves
//!   the list when its record expires, when it publishes itself as
//!   draining, or when [`MISSES_TO_DROP`] consecutive *conclusive* lookups
//!   did not find its record.
//! - A lookup is conclusive when it found at least one usable record and
//!   its result was small enough that no endpoint record can have been
//!   left out of the VALUE reply for lack of room: a FIND_VALUE ends at the
//!   first node that returns records, and that node sends only what fits
//!   one datagram (at most 8 records, 1 186 bytes of them), starting at a
//!   random record. A crowded domain (or junk records under its key) thus
//!   never makes a live endpoint flap out of the list; its record's expiry
//!   still applies. A lookup that finds nothing usable changes nothing
//!   either: that looks like our own trouble reaching the DHT.
//! - The upstream list is the static list in its order, then the
//!   discovered endpoints by tier ascending, preference descending (the
//!   reference listener's order; ties by publisher id), without
//!   duplicates, at most [`MAX_DISCOVERED`] of them.
//! - Rejoining: while some shard's routing table is empty, a bootstrap is
//!   due every `bootstrap_retry` (the driver adds the peers the other
//!   shards know to the bootstrap addresses, so a seed's shards learn from
//!   each other).
//! - Bounded: at most [`MAX_DISCOVERED`] discovered endpoints are held
//!   (a record that would exceed it is ignored), at most
//!   [`MAX_PUTS`]/[`MAX_LOOKUPS`] puts/lookups of ours run at once, and
//!   at most [`MAX_NOTES`] notes wait.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::time::Instant;

use ricochet_wire::control::AdvertFlags;
use ricochet_wire::dht::{DATAGRAM_BUDGET, HEADER_LEN, MAX_RECORDS};
use ricochet_wire::endpoint::domain_topic_key;
use ricochet_wire::record::{self, EndpointPayload, RecordRepr, RecordType, SigningKey};

use crate::dht::{Event, NodeId, PutAcks, RecordBuf};

/// Most discovered endpoints held and listed.
pub const MAX_DISCOVERED: usize = 32;
/// Most puts of our own record running at once.
pub const MAX_PUTS: usize = 8;
/// Most upstream lookups running at once.
pub const MAX_LOOKUPS: usize = 2;
/// Most notes kept for the driver to log.
pub const MAX_NOTES: usize = 64;
/// Lookups in a row that found the domain but not an endpoint's record
/// before that endpoint is dropped.
pub const MISSES_TO_DROP: u8 = 2;
/// How often the core re-checks expiries and retries a bootstrap.
pub const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long the core waits for an operation's result before giving it
/// up: the nodes end every lookup (with its STOREs) within their 60 s
/// query timeout.
pub const OP_TIMEOUT: Duration = Duration::from_secs(90);

/// The TTL of our record for a given refresh period: three periods (so one
/// or two lost puts do not make it expire), at least [`MIN_TTL_SECS`], at
/// most a day.
pub fn ttl_for(refresh: Duration) -> u32 {
    let secs = refresh.as_secs_f64().ceil() as u64;
    secs.saturating_mul(3).clamp(MIN_TTL_SECS, 86_400) as u32
}

/// The shortest TTL: a put STOREs only after its lookup converges, and a
/// lookup that meets a dead node waits out its request timeouts (2 s,
/// asked twice) first, so with a very short refresh the copies held
/// elsewhere would expire before the next put lands.
pub const MIN_TTL_SECS: u64 = 10;

/// Which addresses the workers' upstream sockets (bound like the NACK
/// socket) can send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// An IPv4 socket: IPv4 only.
    V4,
    /// An IPv6 socket bound to a specific address: IPv6 only.
    V6,
    /// A dual-stack `[::]` socket: IPv6, and IPv4 written IPv4-mapped.
    Dual,
}

impl Family {
    /// The family of a socket bound to `ip`.
    pub fn of_bind(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(v6) if v6.is_unspecified() => Family::Dual,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `addr` as such a socket sends to it, or `None` if it cannot.
    pub fn fit(self, addr: SocketAddr) -> Option<SocketAddr> {
        let ip = addr.ip().to_canonical();
        let ip = match (self, ip) {
            (Family::V4, IpAddr::V4(_)) | (Family::V6 | Family::Dual, IpAddr::V6(_)) => ip,
            (Family::Dual, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => return None,
        };
        Some(SocketAddr::new(ip, addr.port()))
    }
}

/// What this endpoint publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The domain served (`--domain`), 1–64 bytes.
    pub domain: String,
    /// Where it takes NACKs (the address its ADVERTs carry).
    pub nack: SocketAddr,
    /// ADVERT tier.
    pub tier: u8,
    /// ADVERT preference.
    pub preference: u8,
    /// ADVERT flags besides Draining.
    pub flags: u16,
    /// Data-shard bits.
    pub shard_bits: u8,
}

/// What the core does.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Our record, if we publish one.
    pub publish: Option<Publish>,
    /// The upstream domain to discover, if any.
    pub upstream_domain: Option<String>,
    /// Whose records under it may become upstreams (`--upstream-keys`).
    pub trust: Trust,
    /// `UPSTREAM_RETRY_ENDPOINTS`, resolved; listed first.
    pub static_upstreams: Vec<SocketAddr>,
    /// What the upstream sockets can reach.
    pub family: Family,
    /// Lookup and republish period.
    pub refresh: Duration,
    /// Delay before retrying a failed bootstrap (or rejoining after a
    /// shard's routing table emptied).
    pub bootstrap_retry: Duration,
    /// DHT shards (one per worker): how many answers a bootstrap waits for.
    pub shards: usize,
}

/// Whose endpoint records may become upstreams. The DHT is open: anyone
/// can sign a record under any domain's key, and an upstream's frames go
/// into the cache, so only the listed publishers' records are used unless
/// the operator chose [`Trust::Any`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Records signed by one of these ed25519 public keys (none: no
    /// record is used).
    Keys(Vec<[u8; 32]>),
    /// Every validly signed record (a closed lab, or a DHT nobody else can
    /// reach).
    Any,
}

impl Trust {
    /// Whether a record signed by `public_key` may be used.
    pub fn allows(&self, public_key: &[u8; 32]) -> bool {
        match self {
            Trust::Keys(keys) => keys.contains(public_key),
            Trust::Any => true,
        }
    }
}

/// A DHT operation for the shards (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Every shard joins through these addresses; each answers `op` with
    /// [`Event::Bootstrapped`] or [`Event::BootstrapFailed`].
    Bootstrap {
        /// Operation id.
        op: u64,
        /// Cached peers and `--dht-bootstrap`, resolved by the driver (it
        /// adds the peers its shards know).
        addrs: Vec<SocketAddr>,
    },
    /// The shard owning the record's key publishes it; answers
    /// [`Event::PutDone`].
    Put {
        /// Operation id.
        op: u64,
        /// The signed record.
        record: Vec<u8>,
    },
    /// The shard owning `key` looks it up; answers
    /// [`Event::FindValueDone`].
    FindValue {
        /// Operation id.
        op: u64,
        /// The key.
        key: [u8; 32],
    },
}

/// Where an upstream came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `UPSTREAM_RETRY_ENDPOINTS`.
    Static,
    /// A DHT record by this publisher (node id).
    Dht([u8; 32]),
}

/// One entry of the upstream list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// NACK address, as the upstream socket sends to it.
    pub addr: SocketAddr,
    /// Where it came from.
    pub source: Source,
}

/// An endpoint found under the upstream domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Its NACK address, fitted to the upstream family.
    pub addr: SocketAddr,
    /// ADVERT tier.
    pub tier: u8,
    /// ADVERT preference.
    pub preference: u8,
    /// ADVERT flags.
    pub flags: u16,
    /// Data-shard bits.
    pub shard_bits: u8,
    /// Its newest record carries the Draining flag: kept (so an older copy
    /// cannot bring it back) but not listed.
    pub draining: bool,
    /// Seq of the newest record seen.
    pub seq: u64,
    /// Unix second at which that record expires.
    pub expires_at: u64,
    /// Consecutive lookups that found the domain but not this record.
    pub misses: u8,
}

/// Our last published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its seq.
    pub seq: u64,
    /// Its timestamp (unix seconds).
    pub timestamp: u64,
    /// Its TTL (seconds).
    pub ttl: u32,
    /// Whether it carried the Draining flag.
    pub draining: bool,
    /// The answers to its put, once finished.
    pub acks: Option<(u32, PutAcks)>,
}

/// Discovery counters (`ricochet_dht_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Upstream lookups started.
    pub lookups_started: u64,
    /// Lookups that found at least one usable endpoint record.
    pub lookups_found: u64,
    /// Lookups that found no usable endpoint record.
    pub lookups_empty: u64,
    /// Lookups not started because [`MAX_LOOKUPS`] were running.
    pub lookups_skipped: u64,
    /// Puts of our record started.
    pub publishes: u64,
    /// Puts refused locally (should not happen) or skipped at [`MAX_PUTS`].
    pub publish_failures: u64,
    /// Bootstraps started.
    pub bootstraps: u64,
    /// Bootstraps that reached nobody.
    pub bootstrap_failures: u64,
    /// Times the upstream list changed.
    pub upstream_changes: u64,
    /// Endpoints dropped after [`MISSES_TO_DROP`] lookups without them.
    pub upstreams_missed: u64,
    /// Endpoints dropped because their record expired.
    pub upstreams_expired: u64,
    /// Operations whose result never came (given up after [`OP_TIMEOUT`])
    /// or that no shard could take.
    pub ops_lost: u64,
    /// Records found under the domain key but not used, by reason.
    pub rejected: Rejected,
}

/// Found records not used, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// Not an endpoint record.
    pub wrong_type: u64,
    /// The payload does not parse.
    pub malformed: u64,
    /// The payload names another domain.
    pub wrong_domain: u64,
    /// Published by this endpoint.
    pub own: u64,
    /// Signed by a key not in `--upstream-keys`.
    pub untrusted: u64,
    /// Carries the Draining flag (the endpoint leaves the list).
    pub draining: u64,
    /// Unusable NACK address, or a family the upstream socket cannot reach.
    pub address: u64,
    /// Expired by the time it was looked at.
    pub expired: u64,
    /// Older than the record already held for its publisher.
    pub older: u64,
    /// [`MAX_DISCOVERED`] endpoints held already.
    pub full: u64,
}

impl Rejected {
    /// Every counter as `(reason, count)`.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("wrong_type", self.wrong_type),
            ("malformed", self.malformed),
            ("wrong_domain", self.wrong_domain),
            ("own", self.own),
            ("untrusted", self.untrusted),
            ("draining", self.draining),
            ("address", self.address),
            ("expired", self.expired),
            ("older", self.older),
            ("full", self.full),
        ]
    }
}

/// Something the driver should log.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A bootstrap finished with this many routing entries (summed over
    /// the shards).
    Bootstrapped(usize),
    /// A bootstrap reached nobody.
    BootstrapFailed,
    /// The upstream list changed to this.
    UpstreamsChanged(Vec<Upstream>),
    /// Our record could not be put (a local refusal, or no shard could
    /// take it).
    PublishFailed(String),
}

/// A bootstrap in progress.
#[derive(Debug, Clone, Copy)]
struct Joining {
    op: u64,
    deadline: Instant,
    /// Shards yet to answer.
    waiting: usize,
    /// Routing entries of the shards that joined.
    peers: usize,
    /// Some shard joined.
    joined: bool,
}

/// The discovery state machine (see the module docs).
#[derive(Debug)]
pub struct Core {
    key: SigningKey,
    public_key: [u8; 32],
    settings: CoreSettings,
    own_topic: Option<[u8; 32]>,
    upstream_topic: Option<[u8; 32]>,
    seq: u64,
    published: Option<Published>,
    /// Our puts running: op → (seq, deadline).
    puts: BTreeMap<u64, (u64, Instant)>,
    /// Our lookups running: op → deadline.
    lookups: BTreeMap<u64, Instant>,
    next_publish: Instant,
    next_lookup: Instant,
    next_housekeeping: Instant,
    draining: bool,
    discovered: BTreeMap<[u8; 32], Discovered>,
    upstreams: Vec<Upstream>,
    push_pending: bool,
    joining: Option<Joining>,
    next_bootstrap: Option<Instant>,
    bootstrapped_once: bool,
    last_lookup: Option<(Instant, usize)>,
    counters: Counters,
    notes: Vec<Note>,
    commands: Vec<Command>,
    next_op: u64,
    unix_anchor: (Instant, u64),
    /// Routing-table entries per shard, as last reported.
    routing: Vec<usize>,
}

impl Core {
    /// A core for the holder of `key`; `now_unix` is the wall-clock unix
    /// time at `now`. Publishing and the first lookup are due at once (they
    /// go out after the first bootstrap).
    pub fn new(key: SigningKey, settings: CoreSettings, now: Instant, now_unix: u64) -> Self {
        let public_key = key.verifying_key().to_bytes();
        let upstreams: Vec<Upstream> = settings
            .static_upstreams
            .iter()
            .map(|a| Upstream { addr: *a, source: Source::Static })
            .collect();
        Core {
            key,
            public_key,
            own_topic: settings.publish.as_ref().map(|p| domain_topic_key(p.domain.as_bytes())),
            upstream_topic: settings
                .upstream_domain
                .as_ref()
                .map(|d| domain_topic_key(d.as_bytes())),
            settings,
            seq: 0,
            published: None,
            puts: BTreeMap::new(),
            lookups: BTreeMap::new(),
            next_publish: now,
            next_lookup: now,
            next_housekeeping: now + HOUSEKEEPING,
            draining: false,
            discovered: BTreeMap::new(),
            upstreams,
            push_pending: false,
            joining: None,
            next_bootstrap: Some(now),
            bootstrapped_once: false,
            last_lookup: None,
            counters: Counters::default(),
            notes: Vec::new(),
            commands: Vec::new(),
            next_op: 1,
            unix_anchor: (now, now_unix),
            routing: Vec::new(),
        }
    }

    /// Our node id (BLAKE3 of the public key), which every shard shares.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public_key)
    }

    /// The settings in force.
    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// Our ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The topic key we publish under.
    pub fn own_topic(&self) -> Option<[u8; 32]> {
        self.own_topic
    }

    /// The topic key we look up.
    pub fn upstream_topic(&self) -> Option<[u8; 32]> {
        self.upstream_topic
    }

    /// Our last published record.
    pub fn published(&self) -> Option<Published> {
        self.published
    }

    /// The current upstream list (what the workers have, or will get).
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The endpoints found under the upstream domain, by publisher id.
    pub fn discovered(&self) -> &BTreeMap<[u8; 32], Discovered> {
        &self.discovered
    }

    /// When the last lookup finished and how many usable records it found.
    pub fn last_lookup(&self) -> Option<(Instant, usize)> {
        self.last_lookup
    }

    /// Puts of our record still running.
    pub fn puts_running(&self) -> usize {
        self.puts.len()
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether the last bootstrap (or any since) succeeded.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped_once
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

    /// The shards' routing-table sizes (one entry per shard).
    pub fn set_routing_peers(&mut self, per_shard: &[usize]) {
        self.routing.clear();
        self.routing.extend_from_slice(per_shard);
    }

    /// Whether some shard's routing table is empty (or none reported yet).
    fn some_shard_alone(&self) -> bool {
        self.routing.len() < self.settings.shards.max(1) || self.routing.contains(&0)
    }

    /// When [`Core::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_housekeeping;
        if self.settings.publish.is_some() {
            t = t.min(self.next_publish);
        }
        if self.upstream_topic.is_some() {
            t = t.min(self.next_lookup);
        }
        t
    }

    /// Whether the driver should (resolve and) call [`Core::bootstrap`]
    /// now: at start, after a failed bootstrap's retry delay, and while a
    /// shard's routing table is empty.
    pub fn bootstrap_due(&self, now: Instant) -> bool {
        self.joining.is_none() && self.next_bootstrap.is_some_and(|t| t <= now)
    }

    /// Joins through `addrs` (cached peers, `--dht-bootstrap` and the peers
    /// the shards know). With no address and no peer in any shard this
    /// node waits to be contacted (a seed node); the attempt is retried
    /// after `bootstrap_retry` while a shard's table is empty.
    pub fn bootstrap(&mut self, now: Instant, addrs: &[SocketAddr]) {
        self.next_bootstrap = None;
        if addrs.is_empty() && self.routing.iter().all(|&n| n == 0) {
            self.next_bootstrap = Some(now + self.settings.bootstrap_retry);
            return;
        }
        self.counters.bootstraps += 1;
        let op = self.op();
        self.joining = Some(Joining {
            op,
            deadline: now + OP_TIMEOUT,
            waiting: self.settings.shards.max(1),
            peers: 0,
            joined: false,
        });
        self.commands.push(Command::Bootstrap { op, addrs: addrs.to_vec() });
    }

    /// A shard's answer to the command `op`: the node's event that ended
    /// it, or why it did not run (the shard could not take it, or refused
    /// the record).
    pub fn on_reply(&mut self, now: Instant, op: u64, result: Result<Event, String>) {
        if self.joining.is_some_and(|j| j.op == op) {
            return self.bootstrap_answer(now, result);
        }
        match result {
            Ok(Event::FindValueDone { key, records, .. }) => {
                if self.lookups.remove(&op).is_some() && Some(key.0) == self.upstream_topic {
                    self.lookup_done(now, &records);
                }
            }
            Ok(Event::PutDone { targets, acks, .. }) => {
                if let Some((seq, _)) = self.puts.remove(&op)
                    && let Some(p) = self.published.as_mut()
                    && p.seq == seq
                {
                    p.acks = Some((targets, acks));
                }
            }
            Ok(_) => {}
            Err(why) => {
                if self.puts.remove(&op).is_some() {
                    self.counters.publish_failures += 1;
                    self.note(Note::PublishFailed(why));
                } else if self.lookups.remove(&op).is_some() {
                    self.counters.ops_lost += 1;
                }
            }
        }
    }

    /// Runs every timer due at `now`: publishing, lookups and housekeeping
    /// (expiry of discovered endpoints, overdue operations, rejoining).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.settings.publish.is_some() && self.next_publish <= now {
            self.publish(now);
        }
        if self.upstream_topic.is_some() && self.next_lookup <= now {
            self.lookup(now);
        }
        if self.next_housekeeping <= now {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.expire(now);
            let before = self.puts.len() + self.lookups.len();
            self.puts.retain(|_, (_, deadline)| now < *deadline);
            self.lookups.retain(|_, deadline| now < *deadline);
            self.counters.ops_lost += (before - self.puts.len() - self.lookups.len()) as u64;
            if let Some(j) = self.joining
                && j.deadline <= now
            {
                self.counters.ops_lost += 1;
                self.joining = None;
                self.join_done(now, j.joined, j.peers);
            }
            if self.some_shard_alone() && self.joining.is_none() && self.next_bootstrap.is_none() {
                self.next_bootstrap = Some(now + self.settings.bootstrap_retry);
            }
        }
    }

    /// Sets the draining state; a change republishes at once (a draining
    /// endpoint's record carries the Draining flag, so downstream endpoints
    /// stop using it).
    pub fn set_draining(&mut self, now: Instant, draining: bool) {
        if self.draining != draining {
            self.draining = draining;
            if self.settings.publish.is_some() {
                self.publish(now);
            }
        }
    }

    /// Takes the DHT operations queued since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        core::mem::take(&mut self.commands)
    }

    /// The upstream list to hand the workers, if it changed since the last
    /// call (or a hand-over failed: see [`Core::upstreams_not_taken`]).
    pub fn take_upstreams(&mut self) -> Option<Vec<SocketAddr>> {
        if !self.push_pending {
            return None;
        }
        self.push_pending = false;
        Some(self.upstreams.iter().map(|u| u.addr).collect())
    }

    /// Some worker could not take the list: offer it again.
    pub fn upstreams_not_taken(&mut self) {
        self.push_pending = true;
    }

    /// Takes the notes gathered since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        core::mem::take(&mut self.notes)
    }

    // ---- internals -------------------------------------------------------

    fn note(&mut self, n: Note) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(n);
        }
    }

    fn op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    /// One shard's answer to the running bootstrap.
    fn bootstrap_answer(&mut self, now: Instant, result: Result<Event, String>) {
        let Some(mut j) = self.joining else { return };
        if let Ok(Event::Bootstrapped { peers }) = result {
            j.joined = true;
            j.peers += peers;
        }
        j.waiting = j.waiting.saturating_sub(1);
        if j.waiting > 0 {
            self.joining = Some(j);
            return;
        }
        self.joining = None;
        self.join_done(now, j.joined, j.peers);
    }

    fn join_done(&mut self, now: Instant, joined: bool, peers: usize) {
        if joined {
            self.bootstrapped_once = true;
            self.note(Note::Bootstrapped(peers));
            // Publish and look up through the new routing tables now.
            self.next_publish = now;
            self.next_lookup = now;
        } else {
            self.counters.bootstrap_failures += 1;
            self.next_bootstrap = Some(now + self.settings.bootstrap_retry);
            self.note(Note::BootstrapFailed);
        }
    }

    fn publish(&mut self, now: Instant) {
        self.next_publish = now + self.settings.refresh;
        let (Some(p), Some(topic)) = (self.settings.publish.clone(), self.own_topic) else {
            return;
        };
        if self.puts.len() >= MAX_PUTS {
            self.counters.publish_failures += 1;
            return;
        }
        let now_unix = self.now_unix(now);
        let seq = (self.seq + 1).max(now_unix.saturating_mul(1000));
        let ttl = ttl_for(self.settings.refresh);
        let mut flags = p.flags & !AdvertFlags::DRAINING;
        if self.draining {
            flags |= AdvertFlags::DRAINING;
        }
        let mut payload = EndpointPayload {
            nack_addr: core::net::Ipv6Addr::UNSPECIFIED,
            nack_port: 0,
            tier: p.tier,
            preference: p.preference,
            flags,
            shard_bits: p.shard_bits,
            domain: p.domain.as_bytes(),
        };
        payload.set_nack(p.nack);
        let mut pbuf = [0u8; EndpointPayload::FIXED_LEN + EndpointPayload::MAX_DOMAIN];
        let record = payload.emit(&mut pbuf).and_then(|n| {
            let mut r = RecordRepr::unsigned(
                RecordType::Endpoint,
                topic,
                seq,
                now_unix,
                ttl,
                pbuf.get(..n).unwrap_or_default(),
            );
            r.sign(&self.key)?;
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut buf)?;
            Ok(buf)
        });
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                self.counters.publish_failures += 1;
                self.note(Note::PublishFailed(e.to_string()));
                return;
            }
        };
        let op = self.op();
        self.commands.push(Command::Put { op, record });
        self.seq = seq;
        self.counters.publishes += 1;
        self.puts.insert(op, (seq, now + OP_TIMEOUT));
        self.published =
            Some(Published { seq, timestamp: now_unix, ttl, draining: self.draining, acks: None });
    }

    fn lookup(&mut self, now: Instant) {
        self.next_lookup = now + self.settings.refresh;
        let Some(topic) = self.upstream_topic else { return };
        if self.lookups.len() >= MAX_LOOKUPS {
            self.counters.lookups_skipped += 1;
            return;
        }
        self.counters.lookups_started += 1;
        let op = self.op();
        self.commands.push(Command::FindValue { op, key: topic });
        self.lookups.insert(op, now + OP_TIMEOUT);
    }

    /// Folds a finished lookup's records into `discovered`.
    fn lookup_done(&mut self, now: Instant, records: &[RecordBuf]) {
        let now_unix = self.now_unix(now);
        let mut found = BTreeSet::new();
        for rec in records {
            if let Some(publisher) = self.consider(now_unix, rec) {
                found.insert(publisher);
            }
        }
        self.last_lookup = Some((now, found.len()));
        if found.is_empty() {
            self.counters.lookups_empty += 1;
        } else {
            self.counters.lookups_found += 1;
        }
        if !found.is_empty() && conclusive(records) {
            let mut dropped = 0;
            self.discovered.retain(|publisher, d| {
                if found.contains(publisher) {
                    d.misses = 0;
                    return true;
                }
                d.misses = d.misses.saturating_add(1);
                let keep = d.misses < MISSES_TO_DROP;
                dropped += u64::from(!keep);
                keep
            });
            self.counters.upstreams_missed += dropped;
        }
        self.expire(now);
        self.recompute();
    }

    /// Checks one verified record found under the upstream key; returns its
    /// publisher if it is a usable endpoint (and updates `discovered`).
    fn consider(&mut self, now_unix: u64, rec: &RecordBuf) -> Option<[u8; 32]> {
        let view = rec.view();
        let r = &mut self.counters.rejected;
        if view.record_type() != RecordType::Endpoint {
            r.wrong_type += 1;
            return None;
        }
        if view.public_key() == &self.public_key {
            r.own += 1;
            return None;
        }
        if !self.settings.trust.allows(view.public_key()) {
            r.untrusted += 1;
            return None;
        }
        if view.is_expired(now_unix) {
            r.expired += 1;
            return None;
        }
        let Ok(p) = EndpointPayload::parse(view.payload()) else {
            r.malformed += 1;
            return None;
        };
        let domain = self.settings.upstream_domain.as_deref().unwrap_or_default();
        if p.domain != domain.as_bytes() {
            r.wrong_domain += 1;
            return None;
        }
        let Some(addr) = Some(p.nack()).filter(usable).and_then(|a| self.settings.family.fit(a))
        else {
            r.address += 1;
            return None;
        };
        let draining = p.flags & AdvertFlags::DRAINING != 0;
        if draining {
            r.draining += 1;
        }
        let publisher = view.publisher_id();
        let entry = Discovered {
            addr,
            tier: p.tier,
            preference: p.preference,
            flags: p.flags,
            shard_bits: p.shard_bits,
            draining,
            seq: view.seq(),
            expires_at: view.expires_at(),
            misses: 0,
        };
        let held = self.discovered.len();
        match self.discovered.entry(publisher) {
            // A copy of an older record (a holder the newest put has not
            // reached yet): the publisher is there, its newest state stands.
            btree_map::Entry::Occupied(o) if o.get().seq > entry.seq => r.older += 1,
            btree_map::Entry::Occupied(mut o) => *o.get_mut() = entry,
            btree_map::Entry::Vacant(_) if held >= MAX_DISCOVERED => {
                r.full += 1;
                return None;
            }
            btree_map::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
        Some(publisher)
    }

    /// Drops discovered endpoints whose record has expired.
    fn expire(&mut self, now: Instant) {
        let now_unix = self.now_unix(now);
        let before = self.discovered.len();
        self.discovered.retain(|_, d| now_unix < d.expires_at);
        let expired = before - self.discovered.len();
        if expired > 0 {
            self.counters.upstreams_expired += expired as u64;
            self.recompute();
        }
    }

    /// Rebuilds the upstream list; notes and queues it if it changed.
    fn recompute(&mut self) {
        let mut list: Vec<Upstream> = self
            .settings
            .static_upstreams
            .iter()
            .map(|a| Upstream { addr: *a, source: Source::Static })
            .collect();
        let mut found: Vec<(&[u8; 32], &Discovered)> = self.discovered.iter().collect();
        found.sort_by_key(|(id, d)| (d.tier, core::cmp::Reverse(d.preference), **id));
        for (id, d) in found.into_iter().filter(|(_, d)| !d.draining) {
            if !list.iter().any(|u| same(u.addr, d.addr)) {
                list.push(Upstream { addr: d.addr, source: Source::Dht(*id) });
            }
        }
        if list != self.upstreams {
            self.upstreams = list.clone();
            self.push_pending = true;
            self.counters.upstream_changes += 1;
            self.note(Note::UpstreamsChanged(list));
        }
    }
}

/// Bytes of records a VALUE reply can carry (after the message header, the
/// record count and the node count).
const REPLY_BUDGET: usize = DATAGRAM_BUDGET - HEADER_LEN - 2;
/// The largest endpoint record: a 64-byte domain id.
const MAX_ENDPOINT_RECORD: usize =
    record::MIN_LEN + EndpointPayload::FIXED_LEN + EndpointPayload::MAX_DOMAIN;

/// Whether a lookup's records prove no endpoint record was left out of the
/// reply that carried them: the replying node skips a record only when it
/// no longer fits (or 8 are in), so if everything returned (a superset of
/// that reply: the local store is merged in) leaves room for the largest
/// endpoint record, nothing was skipped.
pub fn conclusive(records: &[RecordBuf]) -> bool {
    let used: usize = records.iter().map(|r| 2 + r.as_bytes().len()).sum();
    records.len() < MAX_RECORDS && used + 2 + MAX_ENDPOINT_RECORD <= REPLY_BUDGET
}

/// Whether two addresses name the same endpoint (IPv4-mapped = IPv4).
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// Whether NACKs can be sent to `addr` at all.
fn usable(addr: &SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}
