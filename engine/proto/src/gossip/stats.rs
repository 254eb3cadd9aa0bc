//! Counters of one gossip engine, for `/metrics` and `/debug/stats`.
//!
//! Every field of [`Stats`] maps to a Prometheus counter
//! `ricochet_gossip_<field>_total`; [`FrameCounts`] add a `frame` label
//! (`g1`…`g6`) and [`Drops::by_reason`] a `reason` label.

use ricochet_wire::Error as WireError;

/// Datagrams per frame type, G1 first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameCounts(pub [u64; 6]);

impl FrameCounts {
    /// Label of each slot.
    pub const NAMES: [&'static str; 6] = ["g1", "g2", "g3", "g4", "g5", "g6"];

    /// The count for frame `n` (1–6).
    pub fn get(&self, n: usize) -> u64 {
        n.checked_sub(1).and_then(|i| self.0.get(i)).copied().unwrap_or(0)
    }

    /// Sum over every frame type.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn bump(&mut self, n: usize) {
        if let Some(c) = n.checked_sub(1).and_then(|i| self.0.get_mut(i)) {
            *c += 1;
        }
    }
}

/// Counters of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Datagrams handed to `handle`.
    pub rx_datagrams: u64,
    /// Bytes handed to `handle`.
    pub rx_bytes: u64,
    /// Datagrams released to the outbox.
    pub tx_datagrams: u64,
    /// Bytes released to the outbox.
    pub tx_bytes: u64,
    /// Authenticated, well-formed datagrams received, by frame type.
    pub received: FrameCounts,
    /// Datagrams released to the outbox, by frame type.
    pub sent: FrameCounts,
    /// Rumors published here.
    pub rumors_published: u64,
    /// Rumors from peers seen for the first time.
    pub rumors_delivered: u64,
    /// Rumors received again (dedup hit).
    pub rumor_duplicates: u64,
    /// G3 sends forwarding someone else's rumor.
    pub rumor_forwards: u64,
    /// G3 sends in random-peer fallback mode.
    pub fallback_sends: u64,
    /// ACK timeouts that led to a retry.
    pub rumor_retries: u64,
    /// Retry sends that went around a silent target.
    pub rumor_reroutes: u64,
    /// G3 sends whose retry budget ran out.
    pub rumors_dropped: u64,
    /// G3 sends not tracked for an ACK (pending table full).
    pub untracked_sends: u64,
    /// G5 ACKs matched to an outstanding send.
    pub acks_matched: u64,
    /// G5 ACKs for no outstanding send (duplicates, late).
    pub acks_unmatched: u64,
    /// Rumors whose dimension disagreed with our view.
    pub view_mismatches: u64,
    /// Rumors received for topics not registered here (still forwarded).
    pub unknown_topic_rumors: u64,
    /// G2 probes sent.
    pub probes_sent: u64,
    /// Probe rounds that found equal fingerprints.
    pub digest_matches: u64,
    /// Probe rounds that timed out.
    pub rounds_failed: u64,
    /// G1 exchanges started here.
    pub exchanges_started: u64,
    /// G1 exchanges started here that completed.
    pub exchanges_completed: u64,
    /// G1 exchanges started here that timed out.
    pub exchanges_failed: u64,
    /// Inbound G1 exchanges answered.
    pub exchanges_answered: u64,
    /// Full exchanges started here.
    pub full_syncs: u64,
    /// Records from G1 that changed a store.
    pub records_applied: u64,
    /// Records sent in G1 chunks.
    pub records_sent: u64,
    /// Records too large for one chunk (never sent).
    pub records_oversize: u64,
    /// Exchanges cut at `max_exchange_bytes`.
    pub exchanges_truncated: u64,
    /// Backpressure-flagged answers sent.
    pub backpressure_sent: u64,
    /// Backpressure signals received.
    pub backpressure_received: u64,
    /// G4 pulls sent.
    pub pulls_sent: u64,
    /// G4 pulls answered.
    pub pulls_answered: u64,
    /// Queries sent.
    pub queries_sent: u64,
    /// Query replies received.
    pub query_replies: u64,
    /// Times the egress cap held datagrams back.
    pub egress_deferred: u64,
    /// G4 reconciliation sessions started here (either mode).
    pub reconcile_started: u64,
    /// Of those, sessions streaming rateless symbols.
    pub reconcile_rateless: u64,
    /// Sessions started here that completed (difference resolved, records
    /// exchanged both ways).
    pub reconcile_completed: u64,
    /// Sessions started here that timed out.
    pub reconcile_timeouts: u64,
    /// Fixed tables of ours that did not decode (`0x03` received): the peer
    /// flipped to rateless.
    pub reconcile_flips: u64,
    /// Rateless streams of ours that did not decode (`0x03` received): fell
    /// back to G1.
    pub reconcile_fallbacks: u64,
    /// Sessions with a full table or stream decoded here (as responder).
    pub reconcile_decoded: u64,
    /// Decode failures answered here with `0x03` (either mode).
    pub reconcile_decode_failed: u64,
    /// Differences (elements) decoded here.
    pub reconcile_differences: u64,
    /// Table cells and rateless symbols sent (re-sends included).
    pub reconcile_cells_sent: u64,
    /// Table cells and rateless symbols received.
    pub reconcile_cells_received: u64,
    /// Rateless symbols the decoder consumed until it decoded.
    pub reconcile_symbols_used: u64,
    /// Pure cells sent in replies (keys the responder wants).
    pub reconcile_key_cells_sent: u64,
    /// Requests for more symbols or missing cells sent.
    pub reconcile_requests: u64,
    /// Records sent because a reconciliation found the peer lacks them.
    pub reconcile_records_sent: u64,
    /// G6 frames handed to the caller.
    pub frames_handed_off: u64,
    /// Everything dropped, by reason.
    pub drops: Drops,
}

impl Stats {
    /// Every drop counter as `(reason, count)`.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        self.drops.by_reason()
    }
}

/// Drop counters by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// Datagrams failing the MAC or the frame decoder, indexed like
    /// [`WireError::REASONS`] (`bad_mac`, `truncated`, …).
    pub malformed: [u64; WireError::REASONS.len()],
    /// Datagrams from our own address.
    pub self_source: u64,
    /// Datagrams over the source's token bucket.
    pub rate_limited: u64,
    /// G1/G4 frames for a topic not registered here.
    pub unknown_topic: u64,
    /// Frames that do not fit the topic's mode.
    pub wrong_mode: u64,
    /// G3 frames with a from-dimension this engine does not use.
    pub bad_dimension: u64,
    /// G1 chunks whose entries do not parse.
    pub bad_entries: u64,
    /// G1 responses matching no exchange, pull or query of ours.
    pub unsolicited: u64,
    /// G1 chunks disagreeing with earlier chunks of their exchange, or
    /// announcing more chunks than an exchange may have.
    pub chunk_mismatch: u64,
    /// Inbound exchanges refused: table full.
    pub exchange_table_full: u64,
    /// Probes and pulls ignored while overloaded.
    pub overloaded: u64,
    /// Datagrams from a source we hold no state for, with the table full.
    pub unknown_peer: u64,
    /// Outgoing datagrams dropped from a full egress queue.
    pub egress_full: u64,
    /// Records a store refused.
    pub apply_rejected: u64,
    /// Query rumors whose payload is not a query.
    pub bad_query: u64,
    /// Replies that do not fit one datagram.
    pub reply_too_large: u64,
    /// G4 frames that disagree with their session (mode, size, topic,
    /// range), reply cells that are not pure, and requests with cells
    /// (this engine asks for records by reply only).
    pub reconcile_mismatch: u64,
    /// Reconciliation sessions refused: too many being decoded.
    pub reconcile_table_full: u64,
    /// Datagrams whose stamp `(sender, counter)` was accepted before, or
    /// lies too far below the sender's highest counter (a replay).
    pub replayed: u64,
    /// Datagrams whose stamp time is more than the window from our clock
    /// (a late replay, or a sibling's clock out of sync).
    pub out_of_window: u64,
    /// Datagrams from a new sender refused: the replay table is full of
    /// senders still in the window.
    pub replay_table_full: u64,
    /// Answers not sent to a source outside the member view: they would
    /// have exceeded the amplification bound.
    pub amplification: u64,
}

impl Drops {
    /// Every counter as `(reason, count)`; malformed datagrams under their
    /// wire reason ([`WireError::reason`]).
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> =
            WireError::REASONS.iter().copied().zip(self.malformed).collect();
        v.extend([
            ("self_source", self.self_source),
            ("rate_limited", self.rate_limited),
            ("unknown_topic", self.unknown_topic),
            ("wrong_mode", self.wrong_mode),
            ("bad_dimension", self.bad_dimension),
            ("bad_entries", self.bad_entries),
            ("unsolicited", self.unsolicited),
            ("chunk_mismatch", self.chunk_mismatch),
            ("exchange_table_full", self.exchange_table_full),
            ("overloaded", self.overloaded),
            ("unknown_peer", self.unknown_peer),
            ("egress_full", self.egress_full),
            ("apply_rejected", self.apply_rejected),
            ("bad_query", self.bad_query),
            ("reply_too_large", self.reply_too_large),
            ("reconcile_mismatch", self.reconcile_mismatch),
            ("reconcile_table_full", self.reconcile_table_full),
            ("replayed", self.replayed),
            ("out_of_window", self.out_of_window),
            ("replay_table_full", self.replay_table_full),
            ("amplification", self.amplification),
        ]);
        v
    }

    /// Total drops.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }

    /// The count for one reason label (0 if unknown).
    pub fn get(&self, reason: &str) -> u64 {
        self.by_reason().into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
    }

    pub(crate) fn refused(&mut self, r: super::replay::Refusal) {
        use super::replay::Refusal;
        match r {
            Refusal::OutOfWindow => self.out_of_window += 1,
            Refusal::Replayed => self.replayed += 1,
            Refusal::TableFull => self.replay_table_full += 1,
        }
    }

    pub(crate) fn malformed(&mut self, e: WireError) {
        if let Some(i) = WireError::REASONS.iter().position(|r| *r == e.reason()) {
            self.malformed[i] += 1;
        }
    }
}
