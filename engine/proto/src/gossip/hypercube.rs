//! The virtual hypercube G3 rumors travel on: pure routing functions and
//! per-dimension health.
//!
//! # Contract
//! - Positions are `0..n`: a member's index in a sorted member list. The
//!   cube has [`dimensions`]`(n) = ceil(log2 n)` dimensions; positions
//!   `n..2^d` are *virtual* (no member holds them).
//! - [`tree_targets`] is dimension-ordered broadcast with virtual
//!   substitution: the node at `pos` that received on dimension `from`
//!   (`None` at the origin) sends on every dimension above `from`; where
//!   the partner `pos ^ (1 << k)` is virtual, the node does the virtual
//!   partner's work itself — sends to *its* partners above `k`, recursing
//!   through virtual ones. Starting from any origin, every position in
//!   `0..n` other than the origin is returned exactly once over the whole
//!   broadcast, so a broadcast costs exactly `n − 1` messages and at most
//!   `d` hops (property-tested below).
//! - A receiver at `pos` that got a rumor on dimension `k` can check the
//!   sender: `pos ^ (1 << k)` is either the sender's position or virtual
//!   ([`expected_sender`]); every broadcast edge passes that check.
//! - [`Cube`] maps positions to member indices for one ordering (the
//!   primary cube sorts by id, the dual cube by BLAKE3 of the id).

/// Dimensions of a cube holding `n` positions: `ceil(log2 n)`, 0 for n ≤ 1.
pub fn dimensions(n: usize) -> u32 {
    if n <= 1 { 0 } else { usize::BITS - (n - 1).leading_zeros() }
}

/// Where the node at `pos` sends a rumor it received on dimension `from`
/// (`None`: it is the origin), as `(dimension, target position)` pairs
/// sorted by dimension. Virtual partners are replaced by their real
/// descendants (module docs). Empty when `pos >= n`.
pub fn tree_targets(n: usize, pos: usize, from: Option<u32>) -> Vec<(u32, usize)> {
    let d = dimensions(n);
    let mut out = Vec::new();
    if pos >= n {
        return out;
    }
    // (position acted for, first dimension it sends on)
    let mut stack = vec![(pos, from.map_or(0, |f| f.saturating_add(1)))];
    while let Some((at, first)) = stack.pop() {
        for k in first..d {
            let q = at ^ (1usize << k);
            if q < n {
                out.push((k, q));
            } else {
                stack.push((q, k + 1));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Who may send a rumor that arrived on some dimension (see
/// [`expected_sender`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The partner position is real: the sender must hold it.
    Partner(usize),
    /// The partner position is virtual: its nearest real ancestor sends in
    /// its place.
    Virtual,
}

/// What a receiver at `pos` expects of the sender of a rumor that arrived
/// on dimension `dim`; `None` if `dim` is not a dimension of this cube (or
/// `pos` not a position).
pub fn expected_sender(n: usize, pos: usize, dim: u32) -> Option<Sender> {
    if dim >= dimensions(n) || pos >= n {
        return None;
    }
    let q = pos ^ (1usize << dim);
    Some(if q < n { Sender::Partner(q) } else { Sender::Virtual })
}

/// One ordering of the members as cube positions.
#[derive(Debug, Clone, Default)]
pub struct Cube {
    /// Position → member index.
    order: Vec<usize>,
    /// Member index → position.
    position: Vec<usize>,
}

impl Cube {
    /// A cube over members `0..keys.len()` ordered by `keys` (ties by index).
    pub fn new<K: Ord>(keys: &[K]) -> Self {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(&keys[b]).then(a.cmp(&b)));
        let mut position = vec![0; keys.len()];
        for (p, &m) in order.iter().enumerate() {
            position[m] = p;
        }
        Cube { order, position }
    }

    /// Positions in the cube.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cube is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The member index at a position.
    pub fn member_at(&self, pos: usize) -> Option<usize> {
        self.order.get(pos).copied()
    }

    /// The position of a member index.
    pub fn position_of(&self, member: usize) -> Option<usize> {
        self.position.get(member).copied()
    }

    /// Dimensions of this cube.
    pub fn dimensions(&self) -> u32 {
        dimensions(self.len())
    }
}

/// Per-dimension delivery health: a weight in `[MIN_WEIGHT, 1]` that each
/// ACK timeout halves and each ACK raises by 0.1, plus failure counters.
#[derive(Debug, Clone, Default)]
pub struct DimensionHealth {
    weight: Vec<f64>,
    failures: Vec<u64>,
}

/// The floor of a dimension's weight.
pub const MIN_WEIGHT: f64 = 0.1;

impl DimensionHealth {
    /// Current weight of `dim` (1.0 if never seen).
    pub fn weight(&self, dim: u32) -> f64 {
        self.weight.get(dim as usize).copied().unwrap_or(1.0)
    }

    /// ACK timeouts seen on `dim`.
    pub fn failures(&self, dim: u32) -> u64 {
        self.failures.get(dim as usize).copied().unwrap_or(0)
    }

    /// Every dimension's weight, lowest dimension first.
    pub fn weights(&self) -> &[f64] {
        &self.weight
    }

    /// An ACK timed out on `dim`.
    pub fn loss(&mut self, dim: u32) {
        let i = self.slot(dim);
        self.weight[i] = (self.weight[i] * 0.5).max(MIN_WEIGHT);
        self.failures[i] += 1;
    }

    /// An ACK arrived on `dim`.
    pub fn success(&mut self, dim: u32) {
        let i = self.slot(dim);
        self.weight[i] = (self.weight[i] + 0.1).min(1.0);
    }

    fn slot(&mut self, dim: u32) -> usize {
        let i = dim as usize;
        if self.weight.len() <= i {
            self.weight.resize(i + 1, 1.0);
            self.failures.resize(i + 1, 0);
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a whole broadcast from `origin`; returns receipts per position,
    /// messages sent and the deepest hop.
    fn broadcast(n: usize, origin: usize) -> (Vec<u32>, usize, u32) {
        let mut got = vec![0u32; n];
        let mut sent = 0;
        let mut max_hop = 0;
        let mut queue = vec![(origin, None, 0u32)];
        while let Some((pos, from, hop)) = queue.pop() {
            for (dim, to) in tree_targets(n, pos, from) {
                sent += 1;
                got[to] += 1;
                max_hop = max_hop.max(hop + 1);
                // The receiver's check must accept the sender.
                if let Some(Sender::Partner(p)) = expected_sender(n, to, dim) {
                    assert_eq!(p, pos, "n={n} {pos}->{to} on {dim}");
                }
                queue.push((to, Some(dim), hop + 1));
            }
        }
        (got, sent, max_hop)
    }

    #[test]
    fn dimensions_are_ceil_log2() {
        let cases = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (16, 4), (17, 5), (256, 8)];
        for (n, d) in cases {
            assert_eq!(dimensions(n), d, "n={n}");
        }
    }

    #[test]
    fn four_nodes_match_the_textbook_example() {
        // 00 sends to 01 (dim 0) and 10 (dim 1); 01 forwards to 11 on dim 1.
        assert_eq!(tree_targets(4, 0, None), vec![(0, 1), (1, 2)]);
        assert_eq!(tree_targets(4, 1, Some(0)), vec![(1, 3)]);
        assert_eq!(tree_targets(4, 2, Some(1)), vec![]);
    }

    #[test]
    fn virtual_partner_is_substituted() {
        // n = 5 (d = 3): origin 0's partner on dim 2 is 4 (real); origin 3's
        // partner on dim 2 is 7 (virtual), whose partners above 2 do not
        // exist, so 3 sends only on dims 0 and 1.
        assert_eq!(tree_targets(5, 0, None), vec![(0, 1), (1, 2), (2, 4)]);
        assert_eq!(tree_targets(5, 3, None), vec![(0, 2), (1, 1)]);
        // Origin 4 in n = 6: partner on dim 1 is 6 (virtual); 6's partner on
        // dim 2 is 2, which 4 reaches directly, labelled dim 2.
        assert_eq!(tree_targets(6, 4, None), vec![(0, 5), (2, 0), (2, 2)]);
        assert_eq!(expected_sender(6, 2, 2), Some(Sender::Virtual));
        assert_eq!(expected_sender(6, 0, 2), Some(Sender::Partner(4)));
        assert_eq!(expected_sender(6, 0, 3), None);
    }

    #[test]
    fn every_size_up_to_70_delivers_exactly_once() {
        for n in 1..=70 {
            let d = dimensions(n);
            for origin in 0..n {
                let (got, sent, hops) = broadcast(n, origin);
                assert_eq!(sent, n - 1, "n={n} origin={origin}");
                for (p, &c) in got.iter().enumerate() {
                    assert_eq!(c, u32::from(p != origin), "n={n} origin={origin} pos={p}");
                }
                assert!(hops <= d, "n={n} hops={hops}");
            }
        }
    }

    #[test]
    fn cube_orders_and_inverts() {
        let c = Cube::new(&[30u8, 10, 20]);
        assert_eq!((c.member_at(0), c.member_at(1), c.member_at(2)), (Some(1), Some(2), Some(0)));
        assert_eq!(c.position_of(0), Some(2));
        assert_eq!(c.member_at(3), None);
        assert_eq!(c.dimensions(), 2);
    }

    #[test]
    fn health_weights_fall_and_recover() {
        let mut h = DimensionHealth::default();
        assert_eq!(h.weight(3), 1.0);
        h.loss(3);
        h.loss(3);
        assert!((h.weight(3) - 0.25).abs() < 1e-9);
        for _ in 0..10 {
            h.loss(3);
        }
        assert_eq!(h.weight(3), MIN_WEIGHT);
        assert_eq!(h.failures(3), 12);
        for _ in 0..20 {
            h.success(3);
        }
        assert_eq!(h.weight(3), 1.0);
        assert_eq!(h.weights().len(), 4);
    }

    proptest! {
        #[test]
        fn broadcast_costs_n_minus_one(n in 1usize..1500, o in 0usize..1500) {
            let origin = o % n;
            let (got, sent, hops) = broadcast(n, origin);
            prop_assert_eq!(sent, n - 1);
            prop_assert!(got.iter().enumerate().all(|(p, &c)| c == u32::from(p != origin)));
            prop_assert!(hops <= dimensions(n));
        }
    }
}
