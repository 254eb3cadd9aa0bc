//! The iterative lookup (Kademlia §2.3) as a pure state machine.
//!
//! # Contract
//! - Candidates are kept sorted by XOR distance from the target; at most
//!   `4·k` are kept (the farthest never-contacted ones are dropped first).
//! - `Lookup::next` hands out never-contacted candidates among the
//!   `width` closest not-failed ones (`width` is k for lookups, less for
//!   bucket refreshes), keeping at most `α` requests in flight.
//! - The lookup is finished when the `width` closest not-failed candidates
//!   have all replied, or when nothing is in flight and no candidate is
//!   left to ask. The caller applies per-request timeouts and reports them
//!   with `Lookup::timed_out` (the candidate is asked again, up to
//!   `retries` times, so one lost datagram does not drop the node closest
//!   to the target from the result) or `Lookup::failed`.
//! - Hop counting: a candidate from the local routing table is at hop 1;
//!   one learned from a hop-`h` node's reply is at hop `h + 1` (the lowest
//!   such `h` wins). A lookup's hop count is the hop of the node that
//!   answered it (the value holder, or the closest node found).

use ricochet_wire::dht::NodeInfo;

use super::id::{Distance, NodeId};

/// Identifies a lookup started by `find_node`, `find_value` or `put`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u64);

/// Per-target outcome counts of a put's STOREs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutAcks {
    /// STOREs sent (targets × records).
    pub sent: u32,
    /// Answered "stored".
    pub stored: u32,
    /// Answered "stale seq".
    pub stale: u32,
    /// Answered "store full".
    pub full: u32,
    /// Answered "rejected".
    pub rejected: u32,
    /// Not answered in time.
    pub timed_out: u32,
}

impl PutAcks {
    /// STOREs still unanswered.
    pub fn outstanding(&self) -> u32 {
        self.sent
            .saturating_sub(self.stored + self.stale + self.full + self.rejected + self.timed_out)
    }
}

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Waiting,
    InFlight,
    Replied,
    Failed,
}

#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) info: NodeInfo,
    /// Distance from the lookup's target.
    pub(crate) dist: Distance,
    pub(crate) state: State,
    pub(crate) hop: u8,
    tries: u8,
}

/// One iterative lookup towards `target`.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    target: NodeId,
    target_words: [u64; 4],
    k: usize,
    width: usize,
    alpha: usize,
    retries: u8,
    cands: Vec<Candidate>,
    in_flight: usize,
    /// Requests handed out so far.
    pub(crate) requests: u32,
}

impl Lookup {
    /// A lookup keeping `4·k` candidates that converges on the `width`
    /// closest, with `alpha` requests in flight and `retries` repeats of a
    /// timed-out request.
    pub(crate) fn new(target: NodeId, k: usize, width: usize, alpha: usize, retries: u8) -> Self {
        Lookup {
            target,
            target_words: target.words(),
            k: k.max(1),
            width: width.clamp(1, k.max(1)),
            alpha: alpha.max(1),
            retries,
            cands: Vec::with_capacity(4 * k),
            in_flight: 0,
            requests: 0,
        }
    }

    pub(crate) fn target(&self) -> NodeId {
        self.target
    }

    /// Adds a candidate at hop `hop` (or lowers a known one's hop); returns
    /// whether it is new.
    pub(crate) fn add(&mut self, info: NodeInfo, hop: u8) -> bool {
        let id = NodeId(info.id);
        let dist = Distance::between(&id.words(), &self.target_words);
        let pos = match self.cands.binary_search_by(|c| c.dist.cmp(&dist)) {
            Ok(pos) => {
                let c = &mut self.cands[pos];
                c.hop = c.hop.min(hop);
                return false;
            }
            Err(pos) => pos,
        };
        let cap = 4 * self.k;
        if self.cands.len() >= cap {
            // Drop the farthest never-contacted candidate, if it is farther
            // than the newcomer.
            match self.cands.iter().rposition(|c| c.state == State::Waiting) {
                Some(last) if last >= pos => {
                    self.cands.remove(last);
                }
                _ => return false,
            }
        }
        self.cands.insert(pos, Candidate { info, dist, state: State::Waiting, hop, tries: 0 });
        true
    }

    /// Adds a candidate that a peer's reply listed, unless `known_bad`:
    /// the local routing table holds it as Bad (it failed our recent
    /// requests), so asking it would only make the lookup wait out its
    /// timeouts — the table's own seeds skip such peers too. Returns
    /// whether it is a new candidate.
    pub(crate) fn add_reported(&mut self, info: NodeInfo, hop: u8, known_bad: bool) -> bool {
        !known_bad && self.add(info, hop)
    }

    /// Up to `budget` candidates to ask now (marked in flight).
    pub(crate) fn next(&mut self, budget: usize) -> Vec<(NodeInfo, u8)> {
        let mut out = Vec::new();
        let mut room = self.alpha.saturating_sub(self.in_flight).min(budget);
        let mut seen = 0;
        for c in self.cands.iter_mut() {
            if room == 0 || seen >= self.width {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            seen += 1;
            if c.state == State::Waiting {
                c.state = State::InFlight;
                c.tries = c.tries.saturating_add(1);
                out.push((c.info, c.hop));
                room -= 1;
            }
        }
        self.in_flight += out.len();
        self.requests += out.len() as u32;
        out
    }

    /// Marks `id`'s request answered; returns its hop if it was in flight.
    pub(crate) fn replied(&mut self, id: &NodeId) -> Option<u8> {
        let c = self.cands.iter_mut().find(|c| c.info.id == id.0 && c.state == State::InFlight)?;
        c.state = State::Replied;
        self.in_flight -= 1;
        Some(c.hop)
    }

    /// Reports that `id`'s request went unanswered: it is asked again if
    /// it has retries left, else marked failed. Returns whether it will be
    /// retried.
    pub(crate) fn timed_out(&mut self, id: &NodeId) -> bool {
        let retries = self.retries;
        let Some(c) =
            self.cands.iter_mut().find(|c| c.info.id == id.0 && c.state == State::InFlight)
        else {
            return false;
        };
        self.in_flight -= 1;
        if c.tries <= retries {
            c.state = State::Waiting;
            true
        } else {
            c.state = State::Failed;
            false
        }
    }

    /// Marks `id`'s request failed for good (no retry).
    pub(crate) fn failed(&mut self, id: &NodeId) {
        if let Some(c) =
            self.cands.iter_mut().find(|c| c.info.id == id.0 && c.state == State::InFlight)
        {
            c.state = State::Failed;
            self.in_flight -= 1;
        }
    }

    /// Whether the lookup has converged or run out of candidates.
    pub(crate) fn finished(&self) -> bool {
        let mut seen = 0;
        let mut all_replied = true;
        let mut waiting = false;
        for c in self.cands.iter().filter(|c| c.state != State::Failed).take(self.width) {
            seen += 1;
            match c.state {
                State::Replied => {}
                State::Waiting => {
                    waiting = true;
                    all_replied = false;
                }
                _ => all_replied = false,
            }
        }
        (seen > 0 && all_replied) || (!waiting && self.in_flight == 0)
    }

    /// The `n` closest candidates that replied, nearest first.
    pub(crate) fn closest_replied(&self, n: usize) -> impl Iterator<Item = &Candidate> {
        self.cands.iter().filter(|c| c.state == State::Replied).take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;

    fn node(b: u8) -> NodeInfo {
        let mut id = [0u8; 32];
        id[0] = b;
        NodeInfo { id, addr: SocketAddr::from(([10, 0, 0, b], 9320)) }
    }

    #[test]
    fn converges_on_the_k_closest() {
        let mut l = Lookup::new(NodeId([0; 32]), 2, 2, 2, 0);
        assert!(l.finished(), "nothing to ask: finished at once");
        for b in [40, 30, 20] {
            assert!(l.add(node(b), 1));
        }
        assert!(!l.add(node(20), 1));
        let first = l.next(usize::MAX);
        assert_eq!(first.iter().map(|(n, _)| n.id[0]).collect::<Vec<_>>(), vec![20, 30]);
        assert!(l.next(usize::MAX).is_empty(), "α reached");
        assert_eq!(l.replied(&NodeId(node(20).id)), Some(1));
        assert_eq!(l.replied(&NodeId(node(20).id)), None);
        l.add(node(10), 2);
        let second = l.next(usize::MAX);
        assert_eq!(second[0].0.id[0], 10);
        assert_eq!(second[0].1, 2);
        l.failed(&NodeId(node(30).id));
        assert!(!l.finished());
        // 10 answered; k = 2 closest non-failed are 10 and 20, both replied.
        l.replied(&NodeId(node(10).id));
        assert!(l.finished());
        let best: Vec<u8> = l.closest_replied(5).map(|c| c.info.id[0]).collect();
        assert_eq!(best, vec![10, 20]);
        assert_eq!(l.requests, 3);
    }

    #[test]
    fn reported_bad_peers_are_not_asked() {
        let mut l = Lookup::new(NodeId([0; 32]), 4, 4, 3, 0);
        l.add(node(30), 1);
        assert!(!l.add_reported(node(10), 2, true), "held as Bad: not a candidate");
        assert!(l.add_reported(node(20), 2, false));
        let asked: Vec<u8> = l.next(9).iter().map(|(n, _)| n.id[0]).collect();
        assert_eq!(asked, vec![20, 30]);
        l.replied(&NodeId(node(20).id));
        l.replied(&NodeId(node(30).id));
        assert!(l.finished(), "nothing waits on the Bad peer");
    }

    #[test]
    fn keeps_a_bounded_candidate_list() {
        let mut l = Lookup::new(NodeId([0; 32]), 2, 2, 3, 0);
        for b in (1..=200).rev() {
            l.add(node(b), 1);
        }
        assert_eq!(l.cands.len(), 8);
        assert_eq!(l.cands[0].info.id[0], 1);
        assert!(!l.add(node(201), 1), "farther than every kept candidate");
    }

    #[test]
    fn retries_then_fails_and_narrow_width_finishes_early() {
        let mut l = Lookup::new(NodeId([0; 32]), 4, 1, 1, 1);
        for b in [10, 20, 30] {
            l.add(node(b), 1);
        }
        let id10 = NodeId(node(10).id);
        assert_eq!(l.next(9)[0].0.id[0], 10);
        assert!(l.timed_out(&id10), "first timeout: retried");
        assert_eq!(l.next(9)[0].0.id[0], 10, "the same node is asked again");
        assert!(!l.timed_out(&id10), "second timeout: failed");
        assert_eq!(l.next(9)[0].0.id[0], 20);
        l.replied(&NodeId(node(20).id));
        // width 1: the closest non-failed candidate (20) replied.
        assert!(l.finished());
        assert!(!l.timed_out(&id10), "not in flight");
    }
}
