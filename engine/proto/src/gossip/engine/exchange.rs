//! G2 probe rounds and G1 exchanges: the digest probe that starts
//! anti-entropy with one peer per round, and the chunked record exchange
//! (and its answer) that follows when fingerprints differ.
//!
//! Invariants: at most one probe round is in flight, and it ends exactly
//! once (answered, synced or timed out) before the next is scheduled;
//! [`ProbeOrder`] probes every peer once per pass, in a fresh random order;
//! [`Chunks`] counts each chunk of an answer once, and an exchange or
//! answer completes only when every chunk is in; a peer's watermarks move
//! only when an exchange completes, and not past what a cut answer
//! carried; the inbound table is bounded by
//! [`Config::max_inbound_exchanges`] and each inbound exchange is
//! answered once.

use core::net::SocketAddr;
use std::collections::BTreeSet;
use std::time::Instant;

use ricochet_wire::gossip::{DigestRepr, ExchangeRepr, GossipFrame};
use ricochet_wire::mac::GOSSIP_OVERHEAD;

#[cfg(doc)]
use super::super::Config;
use super::super::entries::{self, Chunked, Entries, META_BACKPRESSURE};
use super::super::iblt;
use super::super::sync::Outcome;
use super::super::{Event, TopicMode};
use super::session::InState;
use super::{Gossip, QueryId, RESPONSE_BIT, Timer};
use crate::dht::rng::Rng;

/// Bytes of a G1 frame besides its topic and entries.
const G1_OVERHEAD: usize = 24;

/// Which chunks of an exchange have arrived.
#[derive(Debug, Clone)]
pub(super) struct Chunks {
    count: u16,
    seen: Vec<u64>,
    missing: u16,
}

impl Chunks {
    pub(super) fn new(count: u16) -> Self {
        Chunks { count, seen: vec![0; usize::from(count).div_ceil(64)], missing: count }
    }

    /// Marks a chunk; false if it was already seen (or out of range).
    pub(super) fn mark(&mut self, index: u16) -> bool {
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

    /// The number of chunks expected.
    pub(super) fn count(&self) -> u16 {
        self.count
    }

    pub(super) fn complete(&self) -> bool {
        self.missing == 0
    }
}

/// An exchange we started.
#[derive(Debug)]
pub(super) struct OutExchange {
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
pub(super) struct InExchange {
    topic: Vec<u8>,
    full: bool,
    watermark: i64,
    chunks: Chunks,
    applied: u64,
    /// Element ids of the records the initiator sent: the answer leaves
    /// them out (it holds them), so a delta is not echoed back.
    received: BTreeSet<u64>,
    pub(super) answered: bool,
    pub(super) deadline: Instant,
}

/// The G2 probe round in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    pub(super) seq: u64,
    pub(super) peer: SocketAddr,
    /// The peer answered the probe with an exchange (either direction).
    pub(super) syncing: bool,
}

/// The order G2 probes visit peers: a shuffled round robin over the view,
/// so every peer is probed once per pass, in a fresh order each pass.
#[derive(Debug, Default)]
pub(super) struct ProbeOrder {
    order: Vec<SocketAddr>,
    cursor: usize,
}

impl ProbeOrder {
    /// Starts a fresh pass at the next pick (the view changed).
    pub(super) fn reset(&mut self) {
        self.order.clear();
        self.cursor = 0;
    }

    /// The next peer of the pass that `eligible` accepts, looking at most
    /// `tries` times; a pass that runs out starts again from `peers()`,
    /// shuffled.
    fn next(
        &mut self,
        tries: usize,
        rng: &mut Rng,
        peers: impl Fn() -> Vec<SocketAddr>,
        eligible: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        for _ in 0..tries {
            if self.cursor >= self.order.len() {
                self.order = peers();
                rng.shuffle(&mut self.order);
                self.cursor = 0;
                if self.order.is_empty() {
                    return None;
                }
            }
            let a = self.order[self.cursor];
            self.cursor += 1;
            if eligible(a) {
                return Some(a);
            }
        }
        None
    }
}

impl Gossip {
    // ----------------------------------------------------------------------
    // G2: probe rounds
    // ----------------------------------------------------------------------

    pub(super) fn start_round(&mut self, now: Instant) {
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
        let (members, me, by_addr, peers) =
            (&self.members, self.me.addr, &self.by_addr, &self.peers);
        self.probe_order.next(
            members.len() + 1,
            &mut self.rng,
            || members.iter().map(|m| m.addr).filter(|a| *a != me).collect(),
            |a| by_addr.contains_key(&a) && !peers.get(&a).is_some_and(|p| p.backoff.active(now)),
        )
    }

    pub(super) fn finish_round(&mut self, now: Instant, outcome: Outcome) {
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
            super::super::sync::jittered(
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
    pub(super) fn note_applied(&mut self, now: Instant, applied: u64) {
        if applied == 0 {
            return;
        }
        self.interval.observe(Outcome::Applied(applied));
        if let Some(t) = self.next_probe {
            let soon = now + self.interval.sample_min(&mut self.rng);
            self.next_probe = Some(t.min(soon));
        }
    }

    pub(super) fn on_digest(&mut self, now: Instant, from: SocketAddr, d: DigestRepr) {
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
    pub(super) fn answer_cap(&self, peer: SocketAddr, topic: &[u8]) -> usize {
        match self.egress.budget_for(peer) {
            Some(left) => left
                .saturating_sub(GOSSIP_OVERHEAD + G1_OVERHEAD + topic.len() + 1)
                .min(self.g1_capacity(topic).saturating_sub(1))
                .min(self.config.max_exchange_bytes),
            _ => self.config.max_exchange_bytes,
        }
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

    pub(super) fn start_exchange(&mut self, now: Instant, peer: SocketAddr, topic: &[u8]) {
        if self.outbound.len() >= self.config.max_inbound_exchanges {
            return;
        }
        let Some(ps) = self.peer_sync(peer, topic).copied() else {
            self.stats.drops.unknown_peer += 1;
            return;
        };
        let full = ps.full_due();
        if full && let Some(ps) = self.peer_sync(peer, topic) {
            ps.g1_next = false;
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
    pub(super) fn on_request(&mut self, now: Instant, from: SocketAddr, x: &ExchangeRepr<'_>) {
        let Ok(entries) = entries::parse(x.entries) else {
            self.stats.drops.bad_entries += 1;
            return;
        };
        if !self.admit_merge_topic(x.topic) {
            return;
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
            || ex.chunks.count() != x.chunk_count
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
    pub(super) fn on_answer(&mut self, now: Instant, from: SocketAddr, x: &ExchangeRepr<'_>) {
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
        } else if let Some(seq) = self.pulls.seq_for(from, x.topic) {
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
        if chunks.count() != x.chunk_count || *wm != x.watermark_ns || *full != x.full {
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

    pub(super) fn exchange_timeout(&mut self, now: Instant, id: u32) {
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

    pub(super) fn apply_records(
        &mut self,
        topic: &[u8],
        from: SocketAddr,
        entries: &Entries<'_>,
    ) -> u64 {
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

    pub(super) fn backpressure_from(&mut self, now: Instant, from: SocketAddr) {
        self.stats.backpressure_received += 1;
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        if let Some(p) = self.peer_state(from) {
            p.backoff.signal(now, initial, max);
        }
    }

    /// Bytes of entries one G1 chunk of `topic` can carry.
    pub(super) fn g1_capacity(&self, topic: &[u8]) -> usize {
        self.config.max_datagram.saturating_sub(GOSSIP_OVERHEAD + G1_OVERHEAD + topic.len())
    }

    pub(super) fn chunk<R: AsRef<[u8]>>(
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
    pub(super) fn emit_chunks(
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
}

pub(super) fn outcome_of(applied: u64) -> Outcome {
    if applied > 0 { Outcome::Applied(applied) } else { Outcome::Unchanged }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_order_visits_every_peer_once_per_pass() {
        let peers: Vec<SocketAddr> =
            (1..=5).map(|i| SocketAddr::from(([10, 0, 0, i], 1))).collect();
        let mut order = ProbeOrder::default();
        let mut rng = Rng::seed_from_u64(7);
        for _ in 0..3 {
            let mut pass: Vec<SocketAddr> = (0..5)
                .filter_map(|_| order.next(6, &mut rng, || peers.clone(), |_| true))
                .collect();
            pass.sort_unstable();
            assert_eq!(pass, peers);
        }
        // Peers that may not be probed now are passed over.
        for _ in 0..10 {
            let next = order.next(6, &mut rng, || peers.clone(), |a| a != peers[0]);
            assert!(next.is_some_and(|a| a != peers[0]));
        }
        order.reset();
        assert_eq!(order.next(6, &mut rng, Vec::new, |_| true), None);
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
