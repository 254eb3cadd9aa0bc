//! Rate limits: token buckets, the per-peer receive limiter and the
//! priority egress queue.
//!
//! # Contract
//! - [`TokenBucket`] refills continuously at `rate` per second up to
//!   `burst`; it starts full. Time enters as an argument.
//! - [`PeerLimiter`] gives each source address its own bucket (100 msg/s,
//!   burst 500 by default). At most `max_tracked` sources are tracked; when
//!   the table is full, sources whose bucket has refilled are swept (at most
//!   once a second) and sources that still find no room share one overflow
//!   bucket, so a flood from many forged addresses cannot grow the table.
//! - [`EgressQueue`] holds datagrams by priority (higher first, FIFO within
//!   a priority), at most `capacity`. A push into a full queue evicts the
//!   newest datagram of the lowest priority if that priority is below the
//!   new one's, else the new datagram is refused.

use core::net::SocketAddr;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A continuous token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(0.0);
        TokenBucket { rate: rate.max(0.0), burst, tokens: burst, at: None }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
    }

    /// Takes `n` tokens if there are that many.
    pub fn take(&mut self, now: Instant, n: f64) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// When `n` tokens will be available: now if they are, else strictly
    /// later (an hour at most, also for a bucket that never refills). A
    /// request above the burst is treated as a full bucket.
    pub fn ready_at(&mut self, now: Instant, n: f64) -> Instant {
        self.refill(now);
        let missing = n.min(self.burst) - self.tokens;
        if missing <= 0.0 {
            return now;
        }
        let secs = if self.rate > 0.0 { (missing / self.rate).min(3600.0) } else { 3600.0 };
        // Rounded up to whole nanoseconds, at least one: truncating (as
        // `Duration::from_secs_f64` does) wakes the caller a hair early,
        // the bucket is still short, and a caller whose clock has not moved
        // (a virtual one) would be told `now` again, forever.
        now + Duration::from_nanos(((secs * 1e9).ceil() as u64).max(1))
    }

    /// Whether the bucket would be full at `now` (idle long enough).
    pub fn full_at(&self, now: Instant) -> bool {
        let dt =
            self.at.map_or(f64::INFINITY, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens + dt * self.rate >= self.burst
    }
}

/// Per-source receive limits in bounded memory.
#[derive(Debug, Clone)]
pub struct PeerLimiter {
    rate: f64,
    burst: f64,
    max_tracked: usize,
    peers: BTreeMap<SocketAddr, TokenBucket>,
    overflow: TokenBucket,
    last_sweep: Option<Instant>,
}

impl PeerLimiter {
    /// `rate` messages/s with `burst` per source, `max_tracked` sources;
    /// the overflow bucket allows the same rate and burst for all
    /// untracked sources together.
    pub fn new(rate: f64, burst: f64, max_tracked: usize) -> Self {
        PeerLimiter {
            rate,
            burst,
            max_tracked,
            peers: BTreeMap::new(),
            overflow: TokenBucket::new(rate, burst),
            last_sweep: None,
        }
    }

    /// Whether one more message from `from` is allowed at `now`.
    pub fn allow(&mut self, now: Instant, from: SocketAddr) -> bool {
        if let Some(b) = self.peers.get_mut(&from) {
            return b.take(now, 1.0);
        }
        if self.peers.len() >= self.max_tracked {
            self.sweep(now);
        }
        if self.peers.len() < self.max_tracked {
            let mut b = TokenBucket::new(self.rate, self.burst);
            let ok = b.take(now, 1.0);
            self.peers.insert(from, b);
            ok
        } else {
            self.overflow.take(now, 1.0)
        }
    }

    /// Sources tracked individually.
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }

    /// Forgets sources whose bucket has refilled (at most once a second).
    pub fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.peers.retain(|_, b| !b.full_at(now));
    }
}

/// A datagram waiting for egress budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    /// Higher leaves first.
    pub priority: u8,
    /// The datagram (or whatever the caller queues).
    pub item: T,
}

/// Why [`EgressQueue::push`] refused or displaced a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Displaced<T> {
    /// The new datagram was refused (queue full of equal or higher
    /// priorities).
    Refused(T),
    /// The new datagram was queued; this older, lower-priority one was
    /// dropped to make room.
    Evicted(T),
}

/// A bounded priority queue: highest priority first, FIFO within one.
#[derive(Debug, Clone)]
pub struct EgressQueue<T> {
    classes: BTreeMap<u8, VecDeque<T>>,
    len: usize,
    capacity: usize,
}

impl<T> EgressQueue<T> {
    /// An empty queue of at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        EgressQueue { classes: BTreeMap::new(), len: 0, capacity: capacity.max(1) }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item`; on a full queue, displaces the newest item of the
    /// lowest priority if it is below `priority`.
    pub fn push(&mut self, priority: u8, item: T) -> Result<(), Displaced<T>> {
        let mut evicted = None;
        if self.len >= self.capacity {
            let lowest = self.classes.keys().next().copied();
            match lowest {
                Some(low) if low < priority => {
                    if let Some(q) = self.classes.get_mut(&low) {
                        evicted = q.pop_back();
                        if q.is_empty() {
                            self.classes.remove(&low);
                        }
                        self.len -= 1;
                    }
                }
                _ => return Err(Displaced::Refused(item)),
            }
        }
        self.classes.entry(priority).or_default().push_back(item);
        self.len += 1;
        match evicted {
            Some(e) => Err(Displaced::Evicted(e)),
            None => Ok(()),
        }
    }

    /// The next item to send (highest priority, oldest).
    pub fn peek(&self) -> Option<&T> {
        self.classes.iter().next_back().and_then(|(_, q)| q.front())
    }

    /// Removes and returns the next item.
    pub fn pop(&mut self) -> Option<Queued<T>> {
        let (&priority, q) = self.classes.iter_mut().next_back()?;
        let item = q.pop_front()?;
        if q.is_empty() {
            self.classes.remove(&priority);
        }
        self.len -= 1;
        Some(Queued { priority, item })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr};

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 9310)
    }

    #[test]
    fn bucket_refills_and_caps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 500.0);
        for _ in 0..500 {
            assert!(b.take(t0, 1.0));
        }
        assert!(!b.take(t0, 1.0));
        assert_eq!(b.ready_at(t0, 1.0), t0 + Duration::from_millis(10));
        assert!(b.take(t0 + Duration::from_millis(10), 1.0));
        assert!(!b.take(t0 + Duration::from_millis(10), 1.0));
        // A long idle refills only to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((b.available(later) - 500.0).abs() < 1e-9);
        assert!(b.full_at(later));
        // Time going backwards never adds tokens.
        assert!((b.available(t0) - 500.0).abs() < 1e-9);
    }

    #[test]
    fn waiting_until_ready_at_always_gets_the_tokens() {
        // The egress cap: 10 MiB/s, datagrams of 1232 bytes. Sleeping until
        // `ready_at` must end with the tokens taken, or at least with a
        // later wake-up; a wake-up at the same instant spins a virtual clock.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0 * 1024.0 * 1024.0, 1024.0 * 1024.0);
        let mut now = t0;
        let mut sent = 0;
        let mut waits = 0;
        while sent < 20_000 {
            if b.take(now, 1232.0) {
                sent += 1;
                continue;
            }
            let at = b.ready_at(now, 1232.0);
            assert!(at > now, "a short bucket is ready strictly later");
            now = at;
            waits += 1;
        }
        // Retries after an early wake-up are rare; a few per cent at most.
        assert!(waits < 20_000, "{waits}");
        let mut never = TokenBucket::new(0.0, 1.0);
        assert!(never.take(t0, 1.0));
        assert_eq!(never.ready_at(t0, 1.0), t0 + Duration::from_secs(3600));
    }

    #[test]
    fn peers_have_their_own_buckets_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = PeerLimiter::new(100.0, 500.0, 2);
        for _ in 0..500 {
            assert!(l.allow(t0, addr(1)));
        }
        assert!(!l.allow(t0, addr(1)));
        assert!(l.allow(t0, addr(2)));
        // Third source: table full, nobody idle → shared overflow bucket.
        assert_eq!(l.tracked(), 2);
        for _ in 0..500 {
            assert!(l.allow(t0, addr(3)));
        }
        assert!(!l.allow(t0, addr(4)), "overflow bucket is shared");
        assert_eq!(l.tracked(), 2);
        // After the buckets refill, idle sources are swept and 4 gets a slot.
        let later = t0 + Duration::from_secs(10);
        assert!(l.allow(later, addr(4)));
        assert!(l.tracked() <= 2);
    }

    #[test]
    fn egress_queue_orders_and_evicts_lowest_first() {
        let mut q = EgressQueue::new(3);
        q.push(1, "a").unwrap();
        q.push(5, "b").unwrap();
        q.push(1, "c").unwrap();
        assert_eq!(q.peek(), Some(&"b"));
        // Full: a higher priority displaces the newest lowest.
        assert_eq!(q.push(9, "d"), Err(Displaced::Evicted("c")));
        // Full of >= 1: an equal-lowest priority is refused.
        assert_eq!(q.push(1, "e"), Err(Displaced::Refused("e")));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|x| (x.priority, x.item)).collect();
        assert_eq!(order, vec![(9, "d"), (5, "b"), (1, "a")]);
        assert!(q.is_empty());
    }
}
