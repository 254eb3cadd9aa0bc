//! Egress: the transmit queue, the byte budget that drains it, sealing,
//! and the amplification bound on answers to sources outside the view.
//!
//! Invariants kept by [`Egress`]: a frame is sealed (stamped and MACed)
//! only when it leaves the queue, so each peer sees stamp counters in
//! wire order; bytes leave no faster than the egress token bucket allows
//! (the rest wait, with a wake-up time); while a datagram from a source
//! outside the view is handled, what is queued to that source stays within
//! [`AMPLIFICATION`] times the datagram's size; the queue is bounded by
//! [`Config::max_queue`] (what does not fit is dropped and counted).

use core::net::SocketAddr;
use std::time::Instant;

use ricochet_wire::gossip::GossipFrame;
use ricochet_wire::mac::{ClusterKey, GOSSIP_OVERHEAD};

#[cfg(doc)]
use super::super::AMPLIFICATION;
use super::super::limit::{EgressQueue, TokenBucket};
use super::super::replay::Sealer;
use super::super::stats::Stats;
use super::super::{Config, Outbox, Transmit};
use super::Gossip;

/// A frame waiting for egress budget. It is sealed (stamped and MACed)
/// only when it leaves the queue, so stamp counters follow wire order.
#[derive(Debug)]
pub(super) struct OutDatagram {
    dest: SocketAddr,
    /// The frame; the envelope is appended on the way out.
    payload: Vec<u8>,
    /// Zero bytes of padding the envelope carries.
    padding: usize,
    frame: u8,
}

impl OutDatagram {
    /// Bytes on the wire once sealed.
    fn wire_len(&self) -> usize {
        self.payload.len() + self.padding + GOSSIP_OVERHEAD
    }
}

/// The transmit queue and what lets frames out of it.
#[derive(Debug)]
pub(super) struct Egress {
    queue: EgressQueue<OutDatagram>,
    bucket: TokenBucket,
    /// The largest take from the bucket (so one large frame can still go).
    burst: f64,
    /// When the bucket lets the next queued frame go, if one waits.
    wakeup: Option<Instant>,
    /// Stamps what we send.
    sealer: Sealer,
    /// While a datagram from a source outside the view is handled: that
    /// source and the bytes we may still send it in answer.
    budget: Option<(SocketAddr, usize)>,
    /// G3 datagrams queued so far (to count forwards).
    queued_rumors: u64,
}

impl Egress {
    /// An empty queue for the member `id`, sized and paced by `config`.
    pub(super) fn new(config: &Config, id: [u8; 32]) -> Self {
        Egress {
            queue: EgressQueue::new(config.max_queue),
            bucket: TokenBucket::new(config.egress_rate, config.egress_burst),
            burst: config.egress_burst,
            wakeup: None,
            sealer: Sealer::new(Sealer::sender_from(&[&config.seed, &id, b"engine"])),
            budget: None,
            queued_rumors: 0,
        }
    }

    /// Datagrams waiting for budget.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// When the next waiting datagram may leave, if one waits.
    pub(super) fn wakeup(&self) -> Option<Instant> {
        self.wakeup
    }

    /// Our stamp sender id.
    pub(super) fn sender(&self) -> u64 {
        self.sealer.sender()
    }

    /// G3 datagrams queued so far.
    pub(super) fn rumors_queued(&self) -> u64 {
        self.queued_rumors
    }

    /// Sets (or with `None` ends) the amplification budget: `(source,
    /// bytes)` while a datagram from a source outside the view is handled.
    pub(super) fn set_budget(&mut self, budget: Option<(SocketAddr, usize)>) {
        self.budget = budget;
    }

    /// The bytes we may still send `peer` in answer, if it is the source
    /// outside the view being answered.
    pub(super) fn budget_for(&self, peer: SocketAddr) -> Option<usize> {
        self.budget.filter(|(src, _)| *src == peer).map(|(_, left)| left)
    }

    /// Queues a frame; refuses it (counted) where it would break the
    /// amplification bound of the datagram being answered.
    fn push(&mut self, priority: u8, d: OutDatagram, stats: &mut Stats) {
        if let Some((_, left)) = self.budget.as_mut().filter(|(src, _)| *src == d.dest) {
            match left.checked_sub(d.wire_len()) {
                Some(rest) => *left = rest,
                None => {
                    stats.drops.amplification += 1;
                    return;
                }
            }
        }
        if d.frame == 3 {
            self.queued_rumors += 1;
        }
        if self.queue.push(priority, d).is_err() {
            stats.drops.egress_full += 1;
        }
    }

    /// Seals and moves what the bucket allows into `out`; arms the wake-up
    /// if a frame has to wait. `unix_ms` is the wall clock at `now`.
    fn flush(
        &mut self,
        now: Instant,
        unix_ms: u64,
        key: &ClusterKey,
        stats: &mut Stats,
        out: &mut Outbox,
    ) {
        self.wakeup = None;
        while let Some(next) = self.queue.peek() {
            let need = (next.wire_len() as f64).min(self.burst);
            if !self.bucket.take(now, need) {
                stats.egress_deferred += 1;
                self.wakeup = Some(self.bucket.ready_at(now, need));
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            let mut d = q.item;
            // Sealed here, in wire order: counters reach each peer in order.
            let stamp = self.sealer.next(unix_ms);
            let len = d.payload.len();
            d.payload.resize(d.wire_len(), 0);
            if key.seal_gossip(&mut d.payload, len, d.padding, &stamp).is_err() {
                continue;
            }
            stats.tx_datagrams += 1;
            stats.tx_bytes += d.payload.len() as u64;
            stats.sent.bump(usize::from(d.frame));
            out.transmits.push(Transmit { dest: d.dest, payload: d.payload });
        }
    }
}

impl Gossip {
    pub(super) fn send(&mut self, dest: SocketAddr, priority: u8, frame: &GossipFrame<'_>) {
        self.send_padded(dest, priority, frame, 0);
    }

    pub(super) fn send_padded(
        &mut self,
        dest: SocketAddr,
        priority: u8,
        frame: &GossipFrame<'_>,
        padding: usize,
    ) {
        if let Some(buf) = emit(frame) {
            self.enqueue(dest, priority, frame_number(frame), buf, padding);
        }
    }

    /// Queues a frame of type `frame` (G1..G6) for egress.
    pub(super) fn enqueue(
        &mut self,
        dest: SocketAddr,
        priority: u8,
        frame: u8,
        payload: Vec<u8>,
        padding: usize,
    ) {
        self.egress.push(priority, OutDatagram { dest, payload, padding, frame }, &mut self.stats);
    }

    /// Moves what the egress cap allows into the outbox, and the events.
    pub(super) fn flush(&mut self, now: Instant, out: &mut Outbox) {
        let unix_ms = self.unix_ms(now);
        self.egress.flush(now, unix_ms, &self.key, &mut self.stats, out);
        out.events.append(&mut self.events);
        out.marks.append(&mut self.marks);
    }
}

/// A frame's bytes, with room for the envelope reserved.
pub(super) fn emit(frame: &GossipFrame<'_>) -> Option<Vec<u8>> {
    let len = frame.buffer_len();
    let mut buf = Vec::with_capacity(len + GOSSIP_OVERHEAD);
    buf.resize(len, 0);
    frame.emit(&mut buf).ok()?;
    Some(buf)
}

/// The frame type number (G1..G6) a frame is counted under.
pub(super) fn frame_number(f: &GossipFrame<'_>) -> u8 {
    match f {
        GossipFrame::Exchange(_) => 1,
        GossipFrame::Digest(_) => 2,
        GossipFrame::Rumor(_) => 3,
        GossipFrame::Pull(_) | GossipFrame::Reconcile(_) => 4,
        GossipFrame::RumorAck(_) => 5,
        GossipFrame::Snapshot(_) => 6,
    }
}
