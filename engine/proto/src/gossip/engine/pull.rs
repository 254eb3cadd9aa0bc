//! G4 pulls and request-response queries: one-shot asks whose answer
//! comes back as G1 chunks.
//!
//! Invariants kept by [`Pulls`]: at most one pull is outstanding per peer
//! and topic, and the `(peer, topic)` index names a pull exactly while it
//! is outstanding (its answer completes or its deadline passes, and both
//! entries go together). A pull's answer is accepted from one exchange id
//! only, the first that answers. A query lives until its deadline, however
//! many replies arrive.

use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::time::Instant;

use ricochet_wire::gossip::{ExchangeRepr, PullRepr};

use super::super::entries::{self, Entries};
use super::super::{AMPLIFICATION, Event};
use super::exchange::Chunks;
use super::{Gossip, RESPONSE_BIT};

/// A G4 pull we sent, awaiting its answer.
#[derive(Debug)]
struct PullState {
    peer: SocketAddr,
    topic: Vec<u8>,
    /// The answer's exchange id, its chunks, watermark and full flag, once
    /// it starts.
    answer: Option<(u32, Chunks, i64, bool)>,
    applied: u64,
}

/// Our outstanding pulls, by sequence number and by `(peer, topic)`.
#[derive(Debug, Default)]
pub(super) struct Pulls {
    by_seq: BTreeMap<u64, PullState>,
    index: BTreeMap<(SocketAddr, Vec<u8>), u64>,
}

impl Pulls {
    /// Pulls outstanding.
    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Whether a pull of `topic` from `peer` is outstanding.
    pub(super) fn contains(&self, peer: SocketAddr, topic: &[u8]) -> bool {
        self.index.contains_key(&(peer, topic.to_vec()))
    }

    /// The outstanding pull of `topic` from `peer`, if any.
    pub(super) fn seq_for(&self, peer: SocketAddr, topic: &[u8]) -> Option<u64> {
        self.index.get(&(peer, topic.to_vec())).copied()
    }

    /// Records a pull sent as `seq`.
    pub(super) fn start(&mut self, seq: u64, peer: SocketAddr, topic: &[u8]) {
        self.by_seq
            .insert(seq, PullState { peer, topic: topic.to_vec(), answer: None, applied: 0 });
        self.index.insert((peer, topic.to_vec()), seq);
    }

    fn get_mut(&mut self, seq: &u64) -> Option<&mut PullState> {
        self.by_seq.get_mut(seq)
    }

    /// Ends a pull: it leaves both tables.
    fn remove(&mut self, seq: &u64) -> Option<PullState> {
        let pull = self.by_seq.remove(seq)?;
        self.index.remove(&(pull.peer, pull.topic.clone()));
        Some(pull)
    }
}

/// A query we sent: replies count until its deadline.
#[derive(Debug)]
pub(super) struct QueryState {
    pub(super) topic: Vec<u8>,
    pub(super) replies: u32,
}

impl Gossip {
    /// Datagram size of a G4 pull: padded so that AMPLIFICATION times it
    /// covers one full datagram.
    pub(super) fn pull_size(&self) -> usize {
        self.config.max_datagram.div_ceil(AMPLIFICATION)
    }

    pub(super) fn on_pull(&mut self, from: SocketAddr, p: &PullRepr<'_>) {
        if !self.admit_merge_topic(p.topic) {
            return;
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

    pub(super) fn on_pull_answer(
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
        if chunks.count() != x.chunk_count || *wm != x.watermark_ns || *full != x.full {
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

    pub(super) fn pull_timeout(&mut self, seq: u64) {
        let Some(pull) = self.pulls.remove(&seq) else { return };
        self.events.push(Event::PullDone {
            topic: pull.topic,
            peer: pull.peer,
            records: pull.applied,
            complete: false,
        });
    }

    /// Answers a query from `origin` with one G1 chunk, if the reply fits.
    pub(super) fn send_reply(&mut self, topic: &[u8], qid: u32, origin: &[u8; 32], reply: &[u8]) {
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
}
