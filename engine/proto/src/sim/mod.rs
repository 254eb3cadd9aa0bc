//! One deterministic network simulator for every sans-IO core: the gossip
//! and DHT simulations (`engine/proto/tests/`) and the cluster tests of the
//! daemon run their nodes on it.
//!
//! Test support, not part of the protocol: hidden from the docs, and no
//! protocol code uses it. It adds no dependency.
//!
//! # Model
//! - A node is anything that implements [`Node`], the sans-IO shape of
//!   every core here: datagrams in through [`Node::handle`], timers through
//!   [`Node::poll_timeout`] and [`Node::handle_timeout`], datagrams out
//!   through [`Node::drain_transmits`] as [`Transmit`]s.
//! - [`Net`] owns the nodes, each at one address, and a queue of
//!   happenings ordered by virtual time and then by the order they were
//!   queued; running it pops them one at a time, hands each to its node
//!   and puts what the node sent back on the network ("flushing" it).
//! - A datagram on its way: to an address no node holds, or across a
//!   [`Partition`] standing when it is sent, it is dropped; otherwise it is
//!   lost with the configured probability, else delivered after a
//!   [`Latency`] draw (plus, with reordering on, a hold-back now and then).
//!   Latency jitter alone reorders datagrams, as on a real network.
//! - A node can be taken down ([`Net::set_up`]): datagrams that reach it
//!   are dropped, its timers are skipped; [`Net::replace`] starts a new
//!   incarnation at the same address.
//!
//! # Contract
//! - **Deterministic.** Every random choice comes from one seeded
//!   [`Rng`](crate::dht::rng::Rng) the caller may draw from too
//!   ([`Net::rng`]); queue order breaks ties by insertion, never by a hash
//!   seed. The same seed and the same calls give the same run.
//! - **No clock.** The caller passes the base [`Instant`](std::time::Instant)
//!   virtual time starts from; time moves only when the queue is run.
//! - **Draw order is the contract of the reproduced tables.** Per datagram
//!   sent: nothing for an unknown address or a blocked one; then one loss
//!   draw (even at loss 0), then one latency draw (none for a fixed
//!   latency), then one reorder draw only if reordering is on. The perf/
//!   tables of the gossip and DHT simulations depend on this order.
//! - **A livelock fails loudly.** More than [`Net::set_stall_limit`] steps
//!   at one virtual instant (a node asking for a timer at `now` without
//!   acting, say) panic with the node and the instant.

mod net;
mod partition;

pub use net::{Net, Stats};
pub use partition::Partition;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dht::rng::Rng;

/// One datagram on the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The sending node's address.
    pub from: SocketAddr,
    /// The destination address.
    pub to: SocketAddr,
    /// The whole UDP payload.
    pub payload: Vec<u8>,
}

/// A sans-IO state machine as the simulator drives it.
pub trait Node {
    /// One datagram from `from`.
    fn handle(&mut self, now: Instant, from: SocketAddr, payload: &[u8]);

    /// The timer the node asked for is due (or earlier than asked: a node
    /// must tolerate an early call, as after any driver's spurious wake-up).
    fn handle_timeout(&mut self, now: Instant);

    /// When the node wants [`Node::handle_timeout`] next, if ever.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Moves the datagrams the node wants sent into `out`, in order. `now`
    /// is the virtual time, for a node whose driver acts on the core's
    /// other output (notes, events) before the datagrams go out.
    fn drain_transmits(&mut self, now: Instant, out: &mut Vec<Transmit>);
}

/// One-way delay of a delivered datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Always the same; draws nothing.
    Fixed(Duration),
    /// Uniform over `lo, lo + step, …, hi` (`hi − lo` a multiple of `step`),
    /// one draw of `Rng::below` per datagram.
    Uniform {
        /// Shortest delay.
        lo: Duration,
        /// Longest delay.
        hi: Duration,
        /// Resolution of the draw.
        step: Duration,
    },
}

impl Latency {
    /// Uniform over `lo..=hi` in steps of `step`.
    ///
    /// # Panics
    /// If `hi < lo` or `step` is zero.
    pub fn uniform(lo: Duration, hi: Duration, step: Duration) -> Self {
        assert!(lo <= hi && !step.is_zero(), "latency {lo:?}..={hi:?} in steps of {step:?}");
        Latency::Uniform { lo, hi, step }
    }

    /// One delay.
    pub fn draw(&self, rng: &mut Rng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { lo, hi, step } => {
                let steps = ((hi - lo).as_nanos() / step.as_nanos()) as u64;
                let k = rng.below(steps + 1);
                lo + Duration::from_nanos((step.as_nanos() as u64).saturating_mul(k))
            }
        }
    }
}

#[cfg(test)]
mod tests;
