//! Which datagrams a partition stops: isolated addresses, blocked pairs,
//! and groups that cannot reach each other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// The partitions standing on a [`Net`](super::Net); empty by default.
///
/// A datagram from `a` to `b` is blocked if either end is isolated, if the
/// pair is blocked (both directions), or if both ends are in groups of a
/// split and the groups differ. An address in no group reaches every
/// group.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    isolated: BTreeSet<SocketAddr>,
    /// Each pair once, the smaller address first.
    pairs: BTreeSet<(SocketAddr, SocketAddr)>,
    group: BTreeMap<SocketAddr, usize>,
}

impl Partition {
    /// Whether a datagram from `from` to `to` is stopped.
    pub fn blocks(&self, from: SocketAddr, to: SocketAddr) -> bool {
        if self.is_empty() {
            return false;
        }
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.pairs.contains(&ordered(from, to))
            || matches!(
                (self.group.get(&from), self.group.get(&to)),
                (Some(a), Some(b)) if a != b
            )
    }

    /// Whether nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.isolated.is_empty() && self.pairs.is_empty() && self.group.is_empty()
    }

    /// Cuts `addr` off from everyone, both ways.
    pub fn isolate(&mut self, addr: SocketAddr) {
        self.isolated.insert(addr);
    }

    /// Blocks the pair `a`–`b`, both ways.
    pub fn block(&mut self, a: SocketAddr, b: SocketAddr) {
        self.pairs.insert(ordered(a, b));
    }

    /// Lifts an isolation of `addr` and every pair block involving it, and
    /// takes it out of its group.
    pub fn restore(&mut self, addr: SocketAddr) {
        self.isolated.remove(&addr);
        self.pairs.retain(|&(a, b)| a != addr && b != addr);
        self.group.remove(&addr);
    }

    /// Splits the network into `groups` (replacing any earlier split):
    /// members of different groups cannot reach each other.
    pub fn split<G: AsRef<[SocketAddr]>>(&mut self, groups: &[G]) {
        self.group.clear();
        for (g, members) in groups.iter().enumerate() {
            for &a in members.as_ref() {
                self.group.insert(a, g);
            }
        }
    }

    /// Lifts every partition.
    pub fn heal(&mut self) {
        *self = Partition::default();
    }
}

fn ordered(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}
