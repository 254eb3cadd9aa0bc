//! A node's counters: what it did ([`Stats`], one Prometheus counter per
//! field) and what it dropped, by reason ([`Drops`]). Plain data, summed
//! over the workers' nodes by the daemon.

use ricochet_wire::Error as WireError;

use super::store::Refusal;

/// Counters of one node. Every field maps to a Prometheus counter
/// `ricochet_dht_<field>_total`; [`Drops`] holds the drop reasons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Datagrams handed to [`Node::handle`](super::Node::handle)(super::Node::handle).
    pub rx_datagrams: u64,
    /// Datagrams queued for sending.
    pub tx_datagrams: u64,
    /// Requests answered.
    pub requests_answered: u64,
    /// Replies cut short to stay within three times their request's size
    /// (the requester did not pad its FIND_NODE or FIND_VALUE).
    pub replies_trimmed: u64,
    /// Responses matched to an outstanding request.
    pub responses_matched: u64,
    /// Matched responses for a lookup that had already finished.
    pub late_responses: u64,
    /// Requests that went unanswered.
    pub timeouts: u64,
    /// Liveness probes sent for full buckets.
    pub probes_sent: u64,
    /// Routing entries evicted or removed after failures.
    pub evictions: u64,
    /// Lookups started (user, bootstrap, refresh, replication).
    pub queries_started: u64,
    /// Lookups finished.
    pub queries_finished: u64,
    /// Replication lookups started.
    pub replications: u64,
    /// Records newly stored or replaced (from STOREs and puts).
    pub records_stored: u64,
    /// Byte-identical copies of held records received.
    pub records_refreshed: u64,
    /// Records purged at expiry.
    pub records_expired: u64,
    /// ed25519 verifications performed (store and lookups).
    pub verifications: u64,
    /// Everything dropped, by reason.
    pub drops: Drops,
}

impl Stats {
    /// Every drop counter as `(reason, count)`, for
    /// `ricochet_dht_dropped_total{reason=…}`.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        self.drops.by_reason()
    }

    /// Adds `other`'s counters to these (several nodes' totals).
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            rx_datagrams,
            tx_datagrams,
            requests_answered,
            replies_trimmed,
            responses_matched,
            late_responses,
            timeouts,
            probes_sent,
            evictions,
            queries_started,
            queries_finished,
            replications,
            records_stored,
            records_refreshed,
            records_expired,
            verifications,
            drops,
        } = other;
        self.rx_datagrams += rx_datagrams;
        self.tx_datagrams += tx_datagrams;
        self.requests_answered += requests_answered;
        self.replies_trimmed += replies_trimmed;
        self.responses_matched += responses_matched;
        self.late_responses += late_responses;
        self.timeouts += timeouts;
        self.probes_sent += probes_sent;
        self.evictions += evictions;
        self.queries_started += queries_started;
        self.queries_finished += queries_finished;
        self.replications += replications;
        self.records_stored += records_stored;
        self.records_refreshed += records_refreshed;
        self.records_expired += records_expired;
        self.verifications += verifications;
        self.drops.add(drops);
    }
}

/// Drop counters by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// Malformed datagrams, indexed like [`WireError::REASONS`].
    pub malformed: [u64; WireError::REASONS.len()],
    /// Datagrams claiming our own node id.
    pub own_id: u64,
    /// Datagrams from an unusable source (port 0, unspecified, multicast,
    /// broadcast).
    pub bad_source: u64,
    /// Requests over the per-source rate.
    pub rate_limited: u64,
    /// Responses with no outstanding request under their transaction id.
    pub unsolicited: u64,
    /// Responses from another address than the request went to.
    pub addr_mismatch: u64,
    /// Responses of the wrong type for their request.
    pub type_mismatch: u64,
    /// Responses from another node id than the request went to.
    pub id_mismatch: u64,
    /// Requests not sent because `max_pending` were outstanding.
    pub pending_full: u64,
    /// Nodes in NODES/VALUE lists with an unusable address or our own id.
    pub bad_node: u64,
    /// Nodes in NODES/VALUE lists not asked because our routing table holds
    /// them (at that address) as [`super::Health::Bad`]: they failed our
    /// recent requests, and asking would only wait out another timeout.
    pub bad_peer_skipped: u64,
    /// Records in a VALUE for another key than the one asked for.
    pub record_wrong_key: u64,
    /// Records over `max_record_len`.
    pub record_oversize: u64,
    /// Expired records.
    pub record_expired: u64,
    /// Records timestamped too far in the future.
    pub record_future_timestamp: u64,
    /// Records with a TTL over `max_ttl`.
    pub record_ttl_too_long: u64,
    /// Records with a stale seq for their slot.
    pub record_stale: u64,
    /// Records refused because the store holds `max_keys` keys.
    pub record_store_full: u64,
    /// Records refused because their key holds `max_records_per_key`.
    pub record_key_full: u64,
    /// Records failing strict signature verification.
    pub record_bad_signature: u64,
    /// Records refused by the record policy.
    pub record_policy: u64,
    /// Peers not taken into the routing table: subnet limit.
    pub routing_subnet_limit: u64,
    /// Peers not taken into the routing table: a good entry holds the id
    /// at another address.
    pub routing_addr_conflict: u64,
}

impl Drops {
    /// Every counter as `(reason, count)`; malformed datagrams under their
    /// wire reason ([`WireError::reason`]).
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> =
            WireError::REASONS.iter().copied().zip(self.malformed).collect();
        v.extend([
            ("own_id", self.own_id),
            ("bad_source", self.bad_source),
            ("rate_limited", self.rate_limited),
            ("unsolicited", self.unsolicited),
            ("addr_mismatch", self.addr_mismatch),
            ("type_mismatch", self.type_mismatch),
            ("id_mismatch", self.id_mismatch),
            ("pending_full", self.pending_full),
            ("bad_node", self.bad_node),
            ("bad_peer_skipped", self.bad_peer_skipped),
            ("record_wrong_key", self.record_wrong_key),
            ("record_oversize", self.record_oversize),
            ("record_expired", self.record_expired),
            ("record_future_timestamp", self.record_future_timestamp),
            ("record_ttl_too_long", self.record_ttl_too_long),
            ("record_stale", self.record_stale),
            ("record_store_full", self.record_store_full),
            ("record_key_full", self.record_key_full),
            ("record_bad_signature", self.record_bad_signature),
            ("record_policy", self.record_policy),
            ("routing_subnet_limit", self.routing_subnet_limit),
            ("routing_addr_conflict", self.routing_addr_conflict),
        ]);
        v
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &Drops) {
        for (a, b) in self.malformed.iter_mut().zip(other.malformed) {
            *a += b;
        }
        let Drops {
            malformed: _,
            own_id,
            bad_source,
            rate_limited,
            unsolicited,
            addr_mismatch,
            type_mismatch,
            id_mismatch,
            pending_full,
            bad_node,
            bad_peer_skipped,
            record_wrong_key,
            record_oversize,
            record_expired,
            record_future_timestamp,
            record_ttl_too_long,
            record_stale,
            record_store_full,
            record_key_full,
            record_bad_signature,
            record_policy,
            routing_subnet_limit,
            routing_addr_conflict,
        } = other;
        self.own_id += own_id;
        self.bad_source += bad_source;
        self.rate_limited += rate_limited;
        self.unsolicited += unsolicited;
        self.addr_mismatch += addr_mismatch;
        self.type_mismatch += type_mismatch;
        self.id_mismatch += id_mismatch;
        self.pending_full += pending_full;
        self.bad_node += bad_node;
        self.bad_peer_skipped += bad_peer_skipped;
        self.record_wrong_key += record_wrong_key;
        self.record_oversize += record_oversize;
        self.record_expired += record_expired;
        self.record_future_timestamp += record_future_timestamp;
        self.record_ttl_too_long += record_ttl_too_long;
        self.record_stale += record_stale;
        self.record_store_full += record_store_full;
        self.record_key_full += record_key_full;
        self.record_bad_signature += record_bad_signature;
        self.record_policy += record_policy;
        self.routing_subnet_limit += routing_subnet_limit;
        self.routing_addr_conflict += routing_addr_conflict;
    }

    /// Total datagrams and records dropped.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    pub(super) fn malformed(&mut self, e: WireError) {
        if let Some(i) = WireError::REASONS.iter().position(|r| *r == e.reason()) {
            self.malformed[i] += 1;
        }
    }

    pub(super) fn record(&mut self, r: Refusal) {
        let c = match r {
            Refusal::Oversize => &mut self.record_oversize,
            Refusal::Expired => &mut self.record_expired,
            Refusal::FutureTimestamp => &mut self.record_future_timestamp,
            Refusal::TtlTooLong => &mut self.record_ttl_too_long,
            Refusal::Stale => &mut self.record_stale,
            Refusal::StoreFull => &mut self.record_store_full,
            Refusal::KeyFull => &mut self.record_key_full,
            Refusal::BadSignature => &mut self.record_bad_signature,
            Refusal::Policy => &mut self.record_policy,
        };
        *c += 1;
    }
}
