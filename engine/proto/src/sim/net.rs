//! The virtual network: nodes at addresses, a queue of deliveries and
//! timers ordered by virtual time, and the link model.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Latency, Node, Partition, Transmit};
use crate::dht::rng::Rng;

/// Steps at one virtual instant before a run is called a livelock, unless
/// [`Net::set_stall_limit`] says otherwise.
const DEFAULT_STALL_LIMIT: u32 = 100_000;

/// What became of the datagrams sent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Handed to [`Net::send`] or [`Net::inject`].
    pub sent: u64,
    /// Handed to a node that was up.
    pub delivered: u64,
    /// Lost to the loss draw.
    pub lost_random: u64,
    /// Stopped by a partition.
    pub blocked: u64,
    /// Sent to an address no node holds.
    pub unknown: u64,
    /// Arrived at a node that was down.
    pub down: u64,
}

impl Stats {
    /// Every datagram that was not delivered (still in flight excluded).
    pub fn lost(&self) -> u64 {
        self.lost_random + self.blocked + self.unknown + self.down
    }
}

/// Nodes on a virtual network with a virtual clock; see the [module
/// docs](super).
#[derive(Debug)]
pub struct Net<N> {
    base: Instant,
    now: Duration,
    rng: Rng,
    latency: Latency,
    loss: f64,
    /// Chance that a datagram is held back, and by how much.
    reorder: Option<(f64, Duration)>,
    partition: Partition,
    slots: Vec<Slot<N>>,
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<Item>>,
    /// Queue insertions so far: the tie-break among equal times.
    seq: u64,
    stats: Stats,
    stall_limit: u32,
    /// Steps taken at `now` so far.
    steps_now: u32,
    /// Reused between flushes.
    scratch: Vec<Transmit>,
}

#[derive(Debug)]
struct Slot<N> {
    node: N,
    addr: SocketAddr,
    up: bool,
    /// The one timer event of this node that is still live.
    timer: Option<Duration>,
}

#[derive(Debug)]
enum What {
    Deliver { to: usize, from: SocketAddr, payload: Vec<u8> },
    Timer { node: usize },
}

#[derive(Debug)]
struct Item {
    at: Duration,
    seq: u64,
    what: What,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<N: Node> Net<N> {
    /// An empty network whose virtual time starts at `base`: no loss, no
    /// latency, no partition, randomness from `seed`.
    pub fn new(base: Instant, seed: u64) -> Self {
        Net {
            base,
            now: Duration::ZERO,
            rng: Rng::seed_from_u64(seed),
            latency: Latency::Fixed(Duration::ZERO),
            loss: 0.0,
            reorder: None,
            partition: Partition::default(),
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            stats: Stats::default(),
            stall_limit: DEFAULT_STALL_LIMIT,
            steps_now: 0,
            scratch: Vec::new(),
        }
    }

    /// Sets the one-way latency of datagrams sent from now on.
    pub fn set_latency(&mut self, latency: Latency) {
        self.latency = latency;
    }

    /// Sets the chance that a datagram sent from now on is lost.
    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    /// Holds a datagram back by `hold` more with chance `p`, so that later
    /// ones overtake it (`p` = 0 turns this off and draws nothing).
    pub fn set_reorder(&mut self, p: f64, hold: Duration) {
        self.reorder = (p > 0.0).then_some((p, hold));
    }

    /// Sets how many steps one virtual instant may take before a run panics
    /// as a livelock.
    pub fn set_stall_limit(&mut self, steps: u32) {
        self.stall_limit = steps;
    }

    /// The network's generator; tests draw their own choices from it too.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The partitions standing; change them at any time.
    pub fn partition(&mut self) -> &mut Partition {
        &mut self.partition
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.base + self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Where virtual time started.
    pub fn base(&self) -> Instant {
        self.base
    }

    /// Datagram counts so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Adds `node` at `addr` (up, no timer armed until it is flushed) and
    /// returns its index.
    ///
    /// # Panics
    /// If another node holds `addr`.
    pub fn add(&mut self, addr: SocketAddr, node: N) -> usize {
        let idx = self.slots.len();
        let prev = self.by_addr.insert(addr, idx);
        assert!(prev.is_none(), "two nodes at {addr}");
        self.slots.push(Slot { node, addr, up: true, timer: None });
        idx
    }

    /// A new incarnation at node `idx`'s address, up; the old one's timer
    /// is dropped, datagrams in flight reach the new one. Flush it to arm
    /// its timer.
    pub fn replace(&mut self, idx: usize, node: N) -> N {
        let slot = &mut self.slots[idx];
        slot.up = true;
        slot.timer = None;
        std::mem::replace(&mut slot.node, node)
    }

    /// Takes node `idx` down (datagrams reaching it are dropped, its timers
    /// skipped) or brings it back up.
    pub fn set_up(&mut self, idx: usize, up: bool) {
        self.slots[idx].up = up;
    }

    /// Whether node `idx` is up.
    pub fn is_up(&self, idx: usize) -> bool {
        self.slots[idx].up
    }

    /// Number of nodes, up or down.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no node.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Node `idx`.
    pub fn node(&self, idx: usize) -> &N {
        &self.slots[idx].node
    }

    /// Node `idx`, to call it directly; flush it afterwards so what it sent
    /// goes out and its timer is re-armed.
    pub fn node_mut(&mut self, idx: usize) -> &mut N {
        &mut self.slots[idx].node
    }

    /// Every node, up or down, in index order.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.slots.iter().map(|s| &s.node)
    }

    /// Node `idx`'s address.
    pub fn addr(&self, idx: usize) -> SocketAddr {
        self.slots[idx].addr
    }

    /// The node at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// Puts what node `idx` sent on the network and arms its timer if it
    /// now wants one earlier than the one armed.
    pub fn flush(&mut self, idx: usize) {
        let now = self.now();
        let mut out = std::mem::take(&mut self.scratch);
        self.slots[idx].node.drain_transmits(now, &mut out);
        for t in out.drain(..) {
            self.send(t);
        }
        self.scratch = out;
        if let Some(t) = self.slots[idx].node.poll_timeout() {
            let at = t.saturating_duration_since(self.base).max(self.now);
            if self.slots[idx].timer.is_none_or(|cur| at < cur) {
                self.slots[idx].timer = Some(at);
                self.push(at, What::Timer { node: idx });
            }
        }
    }

    /// [`Net::flush`] for every node, in index order.
    pub fn flush_all(&mut self) {
        for idx in 0..self.slots.len() {
            self.flush(idx);
        }
    }

    /// Sends one datagram through the link model.
    pub fn send(&mut self, t: Transmit) {
        self.stats.sent += 1;
        let Some(to) = self.index_of(t.to) else {
            self.stats.unknown += 1;
            return;
        };
        if self.partition.blocks(t.from, t.to) {
            self.stats.blocked += 1;
            return;
        }
        if self.rng.chance(self.loss) {
            self.stats.lost_random += 1;
            return;
        }
        let mut delay = self.latency.draw(&mut self.rng);
        if let Some((p, hold)) = self.reorder
            && self.rng.chance(p)
        {
            delay += hold;
        }
        self.push(self.now + delay, What::Deliver { to, from: t.from, payload: t.payload });
    }

    /// Delivers one datagram at the current instant, past partitions, loss
    /// and latency (a test's forged or hand-made datagram).
    ///
    /// # Panics
    /// If no node holds `t.to`.
    pub fn inject(&mut self, t: Transmit) {
        let to = self.index_of(t.to).unwrap_or_else(|| panic!("no node at {}", t.to));
        self.stats.sent += 1;
        self.push(self.now, What::Deliver { to, from: t.from, payload: t.payload });
    }

    /// Runs until virtual time `end`, or until `after_step` returns true.
    /// `after_step(net, idx)` runs after every step of a node (a delivery
    /// or a timer, once its output is flushed), with the node's index.
    /// Returns whether `after_step` stopped the run; if not, the clock
    /// stands at `end` afterwards.
    pub fn run_until(
        &mut self,
        end: Duration,
        mut after_step: impl FnMut(&mut Self, usize) -> bool,
    ) -> bool {
        while let Some(Reverse(item)) = self.queue.peek() {
            if item.at > end {
                break;
            }
            let Some(Reverse(item)) = self.queue.pop() else { break };
            if item.at != self.now {
                self.steps_now = 0;
            }
            self.now = item.at;
            let now = self.now();
            let idx = match item.what {
                What::Deliver { to, from, payload } => {
                    if !self.slots[to].up {
                        self.stats.down += 1;
                        continue;
                    }
                    self.stats.delivered += 1;
                    self.stall(to);
                    self.slots[to].node.handle(now, from, &payload);
                    to
                }
                What::Timer { node } => {
                    if self.slots[node].timer != Some(item.at) {
                        continue; // superseded by an earlier timer
                    }
                    self.slots[node].timer = None;
                    if !self.slots[node].up {
                        continue;
                    }
                    self.stall(node);
                    self.slots[node].node.handle_timeout(now);
                    node
                }
            };
            self.flush(idx);
            if after_step(self, idx) {
                return true;
            }
        }
        self.now = self.now.max(end);
        false
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_, _| false);
    }

    fn push(&mut self, at: Duration, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Item { at, seq: self.seq, what }));
    }

    /// Counts a step at the current instant.
    fn stall(&mut self, idx: usize) {
        self.steps_now += 1;
        assert!(
            self.steps_now <= self.stall_limit,
            "virtual time stuck at {:?}: {} steps, the last at node {idx} ({}), which asks for \
             a timer at {:?}",
            self.now,
            self.steps_now,
            self.slots[idx].addr,
            self.slots[idx].node.poll_timeout().map(|t| t.saturating_duration_since(self.base)),
        );
    }
}
