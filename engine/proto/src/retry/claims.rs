//! Time-boxed claims: "this worker does X for key K; nobody else does it
//! again until the window ends".
//!
//! The recovery path claims each gap it fetches upstream, and with a shared
//! store configured the NACK service claims each multicast retransmit, so a
//! frame goes out to its group once per window however many listeners ask
//! for it. This is the local half; the cross-instance half is the same claim
//! made as a Redis `SET NX PX` by the control thread (`ricochet::store`), and
//! this table is what remains when Redis is out of reach.
//!
//! # Contract
//! - [`Claims::try_claim`] succeeds once per key per window; the window
//!   starts at the first successful claim.
//! - Bounded: at most `cap` claims are held. When the table is full the
//!   oldest claim is forgotten early, so under a flood of distinct keys a
//!   key may be claimed twice within its window (one duplicate retransmit or
//!   fetch, never a lost one).
//! - Expired claims are forgotten by [`Claims::expire`] in time order; the
//!   work per call is the number of claims that expired.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A table of claims, each held for the same window.
#[derive(Debug)]
pub struct Claims<K> {
    window: Duration,
    cap: usize,
    until: HashMap<K, Instant>,
    /// (expiry, key) in expiry order: every claim lasts `window`, so pushing
    /// at the back keeps the queue sorted.
    order: VecDeque<(Instant, K)>,
}

impl<K: Copy + Eq + Hash> Claims<K> {
    /// Claims held for `window`, at most `cap` at once (at least 1).
    pub fn new(window: Duration, cap: usize) -> Self {
        Claims { window, cap: cap.max(1), until: HashMap::new(), order: VecDeque::new() }
    }

    /// Claims `key` unless it is already claimed; true when this call took
    /// it.
    pub fn try_claim(&mut self, now: Instant, key: K) -> bool {
        if self.is_claimed(now, key) {
            return false;
        }
        while self.until.len() >= self.cap {
            let Some((t, k)) = self.order.pop_front() else { break };
            if self.until.get(&k) == Some(&t) {
                self.until.remove(&k);
            }
        }
        let until = now + self.window;
        self.until.insert(key, until);
        self.order.push_back((until, key));
        true
    }

    /// Whether `key` is claimed at `now`.
    pub fn is_claimed(&self, now: Instant, key: K) -> bool {
        self.until.get(&key).is_some_and(|&until| until > now)
    }

    /// Whether `key` has a claim, expired or not, that [`Claims::expire`]
    /// has not yet forgotten.
    pub fn contains(&self, key: K) -> bool {
        self.until.contains_key(&key)
    }

    /// Forgets every claim that ended by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
    }

    /// Claims held (including ended ones not yet expired).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no claim is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn a_key_is_claimed_once_per_window() {
        let t0 = Instant::now();
        let mut c = Claims::new(W, 16);
        assert!(c.try_claim(t0, 1u64));
        assert!(!c.try_claim(t0 + Duration::from_secs(59), 1));
        assert!(c.try_claim(t0, 2));
        // The window ends; the key can be claimed again, even before expire.
        assert!(c.try_claim(t0 + W, 1));
        assert!(!c.try_claim(t0 + W + Duration::from_secs(1), 1));
    }

    #[test]
    fn expire_forgets_in_time_order_and_keeps_renewed_claims() {
        let t0 = Instant::now();
        let mut c = Claims::new(W, 16);
        c.try_claim(t0, 1u64);
        c.try_claim(t0 + Duration::from_secs(10), 2);
        // Key 1 re-claimed after its window: its first expiry entry is stale.
        c.try_claim(t0 + W, 1);
        c.expire(t0 + W + Duration::from_secs(5));
        assert!(c.contains(1) && c.contains(2));
        c.expire(t0 + W + Duration::from_secs(10));
        assert!(c.contains(1) && !c.contains(2));
        c.expire(t0 + 2 * W);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_table_forgets_its_oldest_claim() {
        let t0 = Instant::now();
        let mut c = Claims::new(W, 2);
        assert!(c.try_claim(t0, 1u64));
        assert!(c.try_claim(t0, 2));
        assert!(c.try_claim(t0, 3));
        assert_eq!(c.len(), 2);
        assert!(!c.contains(1) && c.contains(2) && c.contains(3));
        // The forgotten key can be claimed again: a duplicate, not a loss.
        assert!(c.try_claim(t0, 1));
    }
}
