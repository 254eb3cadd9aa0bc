//! The reference endpoint's four NACK rate-limit tiers, in bounded memory.
//!
//! | tier | key | limit (default) | when limited |
//! |---|---|---|---|
//! | [`Tier::Ip`] | source IP | token bucket, 100/s, burst 10 | silent drop, always (no reflection) |
//! | [`Tier::Sequence`] | (HashKey, StartSeq), any source | 100 per 60 s window | THROTTLED bucket 2, or silent |
//! | [`Tier::Chain`] | (source IP, HashKey); HashKey 0 bypasses | 500 *answered* NACKs per 60 s window (see "Overload") | THROTTLED bucket 3, or silent |
//! | [`Tier::Group`] | (source IP, group index), after lookup | token bucket, 200/s, burst 50 | THROTTLED bucket 4, or ACK without retransmit |
//!
//! What to send back is the service's business; this module only decides.
//!
//! # Contract
//! - **Limits are per endpoint**, as in the reference, whatever the number
//!   of workers. NACKs are steered to the worker that owns their HashKey, so
//!   only the chain tier (keyed by HashKey) sees all of a key's NACKs on one
//!   shard and keeps a per-shard table. The IP, sequence and group tiers are
//!   kept in one [`SharedLimits`] per endpoint, fixed-size lock-free tables
//!   of atomic cells that every shard's limiter holds an `Arc` of
//!   ([`Limiter::with_shared`]): a source NACKing flows on 8 workers gets
//!   one allowance, not 8. A limiter built with [`Limiter::new`] keeps all
//!   four tiers to itself, which is the same thing for a lone shard.
//! - **Deterministic**: every decision is a pure function of the settings
//!   and the sequence of `(now, key)` calls. Time is integer nanoseconds
//!   since the limiter's origin; no floating point after construction.
//!   With shared tables, the calls of all shards together, in the order
//!   their compare-exchanges land; past a set's capacity, the hash seed
//!   also decides which keys share (see [`shared_limit`](super::shared_limit)).
//! - **Fair**: every tier except the sequence tier is keyed by source
//!   address, so a source flooding NACKs empties only its own buckets and
//!   cannot starve another source (in the shared tables, as long as its
//!   set of 8 cells is not over capacity). The sequence tier is, as in the
//!   newest reference, shared by everyone asking for the same gap — the
//!   same StartSeq of the same flow (HashKey): it is the per-gap storm
//!   damper, not a fairness mechanism. Keyed by the flow too, NACKs for
//!   other flows' SeqNums cannot use up a gap's budget (older references
//!   keyed it by StartSeq alone, so anyone could silence a SeqNum on every
//!   flow).
//! - **Bounded**: each tier's table holds at most `max_entries` keys, however
//!   many source addresses a flood uses (see [`LimitSettings::max_entries`]);
//!   the shared tables are allocated whole at construction and never grow.
//!
//! # Overload
//! The reference charges the chain tier before the cache lookup, for every
//! NACK it admits. Under overload (listeners asking a flow more than the
//! tier admits) that collapses: gaps the budget could not fill in time are
//! evicted, their listeners go on re-NACKing them, those NACKs take the
//! budget and are answered MISS, fresh gaps are refused, and more gaps are
//! evicted unfilled. In a recorded reference run every NACK the chain tier
//! admitted after t ≈ 200 s was for an evicted frame (39 730 MISS, 0 hits):
//! no gap was filled at all.
//!
//! ricochet spends the budget only on NACKs that can be answered with a
//! frame: [`Limiter::check_before_lookup`] *peeks* at the chain tier (a
//! flow whose budget is spent is still refused before the lookup, with
//! THROTTLED bucket 3 where throttle responses are on), and the service
//! charges it with [`Limiter::charge_chain`] on the NACK's first hit —
//! once per NACK, a range included. A NACK answered MISS spends nothing
//! of its flow's budget, so the re-NACKs of evicted frames cannot starve
//! fresh gaps: however many of them a listener sends, it still has about
//! the whole chain budget (500 frames a minute per flow by default) filled
//! (the service's `overload_keeps_filling_fresh_gaps_every_minute`
//! simulates it against the reference's order). Misses
//! stay bounded by the IP tier (charged before the lookup, as in the
//! reference, and silent), by the per-gap sequence tier, and, for the
//! recovery a miss may start, by the recovery queue. A listener whose
//! re-NACKs of evicted frames exceed its IP rate still starves itself;
//! that is the listener's retry policy to fix, not something the endpoint
//! can tell apart from a flood.
//!
//! # Algorithms
//! Token buckets are kept as GCRA: one "theoretical arrival time" per key;
//! a request is admitted if pushing it forward by one emission interval
//! stays within `burst` intervals of now. A key whose time is in the past
//! holds a full bucket, i.e. carries no information, so losing it is free.
//!
//! Windows are sliding-window counters: counts for the current and previous
//! fixed window (anchored at the key's first request), the previous one
//! weighted by how much of it still overlaps the sliding window. Exact
//! sliding windows would need every timestamp (up to 500 per key); the
//! two-counter estimate costs 16 bytes and is exact when requests are spread
//! evenly over a window.
//!
//! Each table is two generations of at most `max_entries / 2` keys. A key
//! found in the old generation is moved to the new one; when the new one
//! fills, the old one is dropped and the new one becomes old. So a key is
//! forgotten only after `max_entries / 2` other keys have been seen since it
//! was last used, every operation is O(1) amortised, and a flood from
//! millions of addresses costs at most `max_entries` entries per tier. A
//! forgotten key restarts with a full bucket, which is the right default for
//! a source that has been quiet (relative to the flood) for that long.
//! (The shared tables cannot move keys between generations without a lock;
//! they are set-associative instead, and past capacity a newcomer inherits
//! the least-informed cell's state: see [`shared_limit`](super::shared_limit).)

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ricochet_wire::control::{BUCKET_PER_FLOW, BUCKET_PER_GAP, BUCKET_PER_GROUP};

use super::SeededState;
use super::shared_limit::SharedLimits;

/// One of the four NACK rate-limit tiers, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Per source IP token bucket; always silent.
    Ip,
    /// Per StartSeq window.
    Sequence,
    /// Per (source IP, HashKey) window.
    Chain,
    /// Per (source IP, group index) token bucket, after the cache lookup.
    Group,
}

impl Tier {
    /// Every tier, in application order.
    pub const ALL: [Tier; 4] = [Tier::Ip, Tier::Sequence, Tier::Chain, Tier::Group];

    /// The metric label (`ricochet_rate_limit_drops_total{level=…}` uses the
    /// reference's names).
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Ip => "ip",
            Tier::Sequence => "sequence",
            Tier::Chain => "chain",
            Tier::Group => "group",
        }
    }

    /// The THROTTLED back-off bucket this tier answers with when throttle
    /// responses are on; `None` for the IP tier, which never answers (a
    /// spoofed source must not be able to aim replies at a victim).
    pub const fn throttle_bucket(self) -> Option<u8> {
        match self {
            Tier::Ip => None,
            Tier::Sequence => Some(BUCKET_PER_GAP),
            Tier::Chain => Some(BUCKET_PER_FLOW),
            Tier::Group => Some(BUCKET_PER_GROUP),
        }
    }
}

/// Rates, bursts, windows and table bounds of the four tiers. A rate of 0
/// (or not finite) or a window count of 0 disables that tier; the config
/// layer decides whether to allow that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    /// `RL_IP_RATE`: NACKs per second per source IP; 100.
    pub ip_rate: f64,
    /// `RL_IP_BURST`: bucket size; 10. Values below 1 act as 1.
    pub ip_burst: u32,
    /// `RL_SEQUENCE_MAX`: NACKs per window per StartSeq; 100.
    pub sequence_max: u32,
    /// `RL_SEQUENCE_WINDOW`: 60 s.
    pub sequence_window: Duration,
    /// `RL_CHAIN_RATE`: NACKs per window per (source IP, HashKey); 500.
    pub chain_max: u32,
    /// `RL_CHAIN_WINDOW`: 60 s.
    pub chain_window: Duration,
    /// `RL_GROUP_RATE`: retransmits per second per (source IP, group); 200.
    pub group_rate: f64,
    /// `RL_GROUP_BURST`: bucket size; 50. Values below 1 act as 1.
    pub group_burst: u32,
    /// Keys each tier's table may hold (65 536). Values below 2 act as 2;
    /// a shared table ([`SharedLimits`]) rounds down to a multiple of 8 and
    /// holds at least 8.
    pub max_entries: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            ip_rate: 100.0,
            ip_burst: 10,
            sequence_max: 100,
            sequence_window: Duration::from_secs(60),
            chain_max: 500,
            chain_window: Duration::from_secs(60),
            group_rate: 200.0,
            group_burst: 50,
            max_entries: 65_536,
        }
    }
}

/// How many keys each tier's table holds right now (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimiterEntries {
    /// Source IPs tracked.
    pub ip: usize,
    /// StartSeqs tracked.
    pub sequence: usize,
    /// (source IP, HashKey) pairs tracked.
    pub chain: usize,
    /// (source IP, group) pairs tracked.
    pub group: usize,
}

/// The four tiers' state for one shard; with [`Limiter::with_shared`], the
/// IP, sequence and group tiers' state is the endpoint's.
pub struct Limiter {
    origin: Instant,
    ip: Bucket,
    ip_tab: GenMap<u128, u64>,
    seq: Window,
    seq_tab: GenMap<(u64, u64), Count>,
    chain: Window,
    chain_tab: GenMap<(u128, u64), Count>,
    group: Bucket,
    group_tab: GenMap<(u128, u16), u64>,
    /// The endpoint's IP, sequence and group tiers; `None` keeps them here.
    shared: Option<Arc<SharedLimits>>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("shared", &self.shared.is_some())
            .field("chain_entries", &self.chain_tab.len())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// Empty tables, with the limiter's clock starting at `now`.
    pub fn new(settings: &LimitSettings, now: Instant) -> Self {
        let half = settings.max_entries.max(2) / 2;
        Limiter {
            origin: now,
            ip: Bucket::new(settings.ip_rate, settings.ip_burst),
            ip_tab: GenMap::new(half),
            seq: Window::new(settings.sequence_max, settings.sequence_window),
            seq_tab: GenMap::new(half),
            chain: Window::new(settings.chain_max, settings.chain_window),
            chain_tab: GenMap::new(half),
            group: Bucket::new(settings.group_rate, settings.group_burst),
            group_tab: GenMap::new(half),
            shared: None,
        }
    }

    /// A shard's limiter whose IP, sequence and group tiers are `shared`
    /// by every shard of the endpoint (their settings are the ones `shared`
    /// was built with); the chain tier stays in this shard, its clock
    /// starting at `now`.
    pub fn with_shared(settings: &LimitSettings, shared: Arc<SharedLimits>, now: Instant) -> Self {
        Limiter { shared: Some(shared), ..Limiter::new(settings, now) }
    }

    /// The endpoint's shared tables, if this limiter uses them.
    pub fn shared(&self) -> Option<&Arc<SharedLimits>> {
        self.shared.as_ref()
    }

    /// Applies the tiers that come before the cache lookup, in the
    /// reference's order (IP, sequence, chain), stopping at the first that
    /// refuses. A refused request consumes nothing in the later tiers.
    ///
    /// The chain tier is only *peeked* here: a request it would admit
    /// spends nothing yet. The caller charges it with
    /// [`Limiter::charge_chain`] once the lookup found a frame, so NACKs
    /// for frames no longer held do not use up a flow's budget (see
    /// "Overload" in the module docs). The IP and sequence tiers are
    /// charged here, as in the reference.
    pub fn check_before_lookup(
        &mut self,
        now: Instant,
        ip: IpAddr,
        hash_key: u64,
        start_seq: u64,
    ) -> Result<(), Tier> {
        let t = self.tick(now);
        let ip = ip_key(ip);
        if !self.admit_ip(now, t, ip) {
            return Err(Tier::Ip);
        }
        if !self.admit_sequence(now, t, hash_key, start_seq) {
            return Err(Tier::Sequence);
        }
        if !self.peek_chain_key(t, ip, hash_key) {
            return Err(Tier::Chain);
        }
        Ok(())
    }

    /// Charges the chain tier for a NACK that [`Limiter::check_before_lookup`]
    /// passed and the cache could answer with a frame. Nothing runs between
    /// the two calls on a shard (the chain tier is the shard's own), so this
    /// admits exactly when the peek did, unless the window rolled meanwhile.
    /// Returns whether it admitted.
    pub fn charge_chain(&mut self, now: Instant, ip: IpAddr, hash_key: u64) -> bool {
        let t = self.tick(now);
        self.admit_chain(t, ip_key(ip), hash_key)
    }

    /// Whether the chain tier would admit `(ip, hash_key)` now, changing
    /// nothing.
    pub fn peek_chain(&self, now: Instant, ip: IpAddr, hash_key: u64) -> bool {
        self.peek_chain_key(self.tick(now), ip_key(ip), hash_key)
    }

    /// The IP tier alone: may `ip` send another NACK now?
    pub fn check_ip(&mut self, now: Instant, ip: IpAddr) -> bool {
        let t = self.tick(now);
        self.admit_ip(now, t, ip_key(ip))
    }

    /// The sequence tier alone: may anyone NACK `start_seq` of the flow
    /// `hash_key` again now?
    pub fn check_sequence(&mut self, now: Instant, hash_key: u64, start_seq: u64) -> bool {
        let t = self.tick(now);
        self.admit_sequence(now, t, hash_key, start_seq)
    }

    /// The chain tier alone. HashKey 0 (unstamped) always passes and leaves
    /// no state, as in the reference.
    pub fn check_chain(&mut self, now: Instant, ip: IpAddr, hash_key: u64) -> bool {
        let t = self.tick(now);
        self.admit_chain(t, ip_key(ip), hash_key)
    }

    /// The group tier: may `ip` have another frame retransmitted to `group`?
    pub fn check_group(&mut self, now: Instant, ip: IpAddr, group: u16) -> bool {
        if let Some(shared) = &self.shared {
            return shared.admit_group(now, ip_key(ip), group);
        }
        if !self.group.enabled() {
            return true;
        }
        let t = self.tick(now);
        let tat = self.group_tab.slot((ip_key(ip), group), 0);
        self.group.admit(tat, t)
    }

    /// Keys held per tier; for shared tiers, the endpoint's cells in use
    /// (see [`SharedLimits::entries`]).
    pub fn entries(&self) -> LimiterEntries {
        let chain = self.chain_tab.len();
        match &self.shared {
            Some(shared) => LimiterEntries { chain, ..shared.entries() },
            None => LimiterEntries {
                ip: self.ip_tab.len(),
                sequence: self.seq_tab.len(),
                chain,
                group: self.group_tab.len(),
            },
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn admit_ip(&mut self, now: Instant, t: u64, ip: u128) -> bool {
        if let Some(shared) = &self.shared {
            return shared.admit_ip(now, ip);
        }
        if !self.ip.enabled() {
            return true;
        }
        let tat = self.ip_tab.slot(ip, 0);
        self.ip.admit(tat, t)
    }

    fn admit_sequence(&mut self, now: Instant, t: u64, hash_key: u64, start_seq: u64) -> bool {
        if let Some(shared) = &self.shared {
            return shared.admit_sequence(now, hash_key, start_seq);
        }
        if !self.seq.enabled() {
            return true;
        }
        let count = self.seq_tab.slot((hash_key, start_seq), Count::starting(t));
        self.seq.admit(count, t)
    }

    fn peek_chain_key(&self, t: u64, ip: u128, hash_key: u64) -> bool {
        if hash_key == 0 || !self.chain.enabled() {
            return true;
        }
        let mut count = self.chain_tab.get(&(ip, hash_key)).copied().unwrap_or(Count::starting(t));
        self.chain.admit(&mut count, t)
    }

    fn admit_chain(&mut self, t: u64, ip: u128, hash_key: u64) -> bool {
        if hash_key == 0 || !self.chain.enabled() {
            return true;
        }
        let count = self.chain_tab.slot((ip, hash_key), Count::starting(t));
        self.chain.admit(count, t)
    }
}

/// v4 and v4-mapped v6 are one source, as on the wire of a dual-stack socket.
pub(super) fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// GCRA token bucket parameters; the per-key state is a `u64` theoretical
/// arrival time (ns since the origin), 0 for a full bucket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// Nanoseconds one token takes to refill; 0 = tier disabled.
    pub(super) interval: u64,
    /// `burst × interval`: how far ahead of now the arrival time may run.
    pub(super) span: u64,
}

impl Bucket {
    pub(super) fn new(rate: f64, burst: u32) -> Self {
        let interval = if rate.is_finite() && rate > 0.0 {
            // Saturating float→int cast; at least 1 ns so a huge rate still
            // limits bursts.
            ((1e9 / rate).round() as u64).max(1)
        } else {
            0
        };
        Bucket { interval, span: interval.saturating_mul(u64::from(burst.max(1))) }
    }

    fn enabled(&self) -> bool {
        self.interval != 0
    }

    fn admit(&self, tat: &mut u64, now: u64) -> bool {
        let next = (*tat).max(now).saturating_add(self.interval);
        if next - now > self.span {
            return false;
        }
        *tat = next;
        true
    }
}

/// Sliding-window counter parameters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) max: u32,
    /// Window length in ns; 0 = tier disabled.
    pub(super) len: u64,
}

/// Per-key window state: the current fixed window's start and count, and the
/// previous window's count.
#[derive(Debug, Clone, Copy)]
struct Count {
    start: u64,
    cur: u32,
    prev: u32,
}

impl Count {
    fn starting(now: u64) -> Self {
        Count { start: now, cur: 0, prev: 0 }
    }
}

impl Window {
    pub(super) fn new(max: u32, len: Duration) -> Self {
        let len = u64::try_from(len.as_nanos()).unwrap_or(u64::MAX);
        Window { max, len: if max == 0 { 0 } else { len } }
    }

    fn enabled(&self) -> bool {
        self.len != 0
    }

    fn admit(&self, c: &mut Count, now: u64) -> bool {
        let w = self.len;
        if now >= c.start.saturating_add(w.saturating_mul(2)) {
            *c = Count::starting(now);
        } else if now >= c.start.saturating_add(w) {
            *c = Count { start: c.start + w, cur: 0, prev: c.cur };
        }
        // Estimate = cur + prev × (part of the previous window still inside
        // the sliding window), compared as integers scaled by w.
        let elapsed = now.saturating_sub(c.start).min(w);
        let estimate =
            u128::from(c.prev) * u128::from(w - elapsed) + u128::from(c.cur) * u128::from(w);
        if estimate >= u128::from(self.max) * u128::from(w) {
            return false;
        }
        c.cur = c.cur.saturating_add(1);
        true
    }
}

/// A two-generation table holding at most `2 × half` keys (see the module
/// docs).
struct GenMap<K, V> {
    cur: HashMap<K, V, SeededState>,
    old: HashMap<K, V, SeededState>,
    half: usize,
}

impl<K: Hash + Eq + Copy, V> GenMap<K, V> {
    fn new(half: usize) -> Self {
        GenMap {
            cur: HashMap::with_hasher(SeededState::random()),
            old: HashMap::with_hasher(SeededState::random()),
            half,
        }
    }

    fn len(&self) -> usize {
        self.cur.len() + self.old.len()
    }

    /// The value for `k`, if known; changes nothing.
    fn get(&self, k: &K) -> Option<&V> {
        self.cur.get(k).or_else(|| self.old.get(k))
    }

    /// The value for `k`, created as `fresh` if unknown. One hash for a key
    /// in the current generation; a generation turns over at most once per
    /// `half` new keys, and `clear` keeps the allocation, so steady state
    /// allocates nothing.
    fn slot(&mut self, k: K, fresh: V) -> &mut V {
        if self.cur.len() >= self.half {
            std::mem::swap(&mut self.cur, &mut self.old);
            self.cur.clear();
        }
        match self.cur.entry(k) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.old.remove(&k).unwrap_or(fresh)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ip_tier_is_a_token_bucket() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&LimitSettings::default(), t0);
        let a = ip(1);
        assert!((0..10).all(|_| l.check_ip(t0, a)), "burst of 10");
        assert!(!l.check_ip(t0, a), "11th refused");
        // 100/s: one token per 10 ms.
        assert!(!l.check_ip(t0 + 9 * MS, a));
        assert!(l.check_ip(t0 + 10 * MS, a));
        assert!(!l.check_ip(t0 + 10 * MS, a));
        // After a full refill, the burst is back, and no more.
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| l.check_ip(later, a)).count(), 10);
        // v4 and v4-mapped v6 are the same source.
        let mapped: IpAddr = "::ffff:0.0.0.1".parse().unwrap();
        assert!(!l.check_ip(later, mapped));
    }

    #[test]
    fn before_lookup_tiers_run_in_order_and_stop_at_the_first_refusal() {
        let t0 = Instant::now();
        let s = LimitSettings { ip_burst: 2, sequence_max: 1, ..Default::default() };
        let mut l = Limiter::new(&s, t0);
        assert_eq!(l.check_before_lookup(t0, ip(1), 9, 5), Ok(()));
        assert_eq!(l.check_before_lookup(t0, ip(1), 9, 5), Err(Tier::Sequence));
        assert_eq!(l.check_before_lookup(t0, ip(1), 9, 5), Err(Tier::Ip));
        // The chain tier was only peeked, and the IP refusal consumed
        // nothing in the later tiers.
        assert_eq!(l.entries().chain, 0);
    }

    #[test]
    fn the_chain_tier_is_peeked_before_lookup_and_charged_after() {
        let t0 = Instant::now();
        let s = LimitSettings {
            ip_burst: 1000,
            sequence_max: 1000,
            chain_max: 2,
            ..Default::default()
        };
        let mut l = Limiter::new(&s, t0);
        // Peeks alone (misses) spend nothing, however many.
        assert!((0..100).all(|n| l.check_before_lookup(t0, ip(1), 9, n).is_ok()));
        assert!(l.peek_chain(t0, ip(1), 9));
        // Two charges (hits) spend the budget; then the peek refuses.
        assert!(l.charge_chain(t0, ip(1), 9) && l.charge_chain(t0, ip(1), 9));
        assert!(!l.peek_chain(t0, ip(1), 9));
        assert_eq!(l.check_before_lookup(t0, ip(1), 9, 500), Err(Tier::Chain));
        assert!(!l.charge_chain(t0, ip(1), 9), "a charge past the budget is refused too");
        // Per (source, HashKey), and it slides as before.
        assert!(l.peek_chain(t0, ip(2), 9) && l.peek_chain(t0, ip(1), 10));
        assert!(l.peek_chain(t0 + Duration::from_secs(120), ip(1), 9));
        assert_eq!(l.entries().chain, 1);
    }

    #[test]
    fn sequence_tier_counts_per_gap_across_sources() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&LimitSettings::default(), t0);
        for n in 0..100 {
            assert!(l.check_sequence(t0 + n * MS, 7, 42), "{n}");
        }
        assert!(!l.check_sequence(t0 + 100 * MS, 7, 42), "101st in the window");
        assert!(l.check_sequence(t0 + 100 * MS, 7, 43), "another StartSeq is separate");
        assert!(l.check_sequence(t0 + 100 * MS, 8, 42), "the same SeqNum of another flow too");
        // Sliding: half a window after the first window ends, half of the
        // previous window's 100 still count.
        let w = Duration::from_secs(60);
        assert!(!l.check_sequence(t0 + w, 7, 42));
        let half = t0 + w + w / 2;
        assert_eq!((0..100).filter(|_| l.check_sequence(half, 7, 42)).count(), 50);
        // Two idle windows later the key starts from zero.
        let idle = half + 2 * w;
        assert_eq!((0..200).filter(|_| l.check_sequence(idle, 7, 42)).count(), 100);
    }

    #[test]
    fn chain_tier_counts_per_source_and_hash_key_and_hash_key_0_bypasses() {
        let t0 = Instant::now();
        let s = LimitSettings { chain_max: 5, ..Default::default() };
        let mut l = Limiter::new(&s, t0);
        assert_eq!((0..10).filter(|_| l.check_chain(t0, ip(1), 7)).count(), 5);
        assert!(l.check_chain(t0, ip(1), 8), "other HashKey");
        assert!(l.check_chain(t0, ip(2), 7), "other source");
        assert!((0..1000).all(|_| l.check_chain(t0, ip(1), 0)), "HashKey 0 bypasses");
        assert_eq!(l.entries().chain, 3, "and leaves no state");
        assert!(l.check_chain(t0 + Duration::from_secs(120), ip(1), 7), "window passed");
    }

    #[test]
    fn group_tier_is_a_token_bucket_per_source_and_group() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&LimitSettings::default(), t0);
        assert_eq!((0..100).filter(|_| l.check_group(t0, ip(1), 3)).count(), 50);
        assert!(l.check_group(t0, ip(1), 4), "other group");
        assert!(l.check_group(t0, ip(2), 3), "other source");
        // 200/s: one token per 5 ms.
        assert!(!l.check_group(t0 + 4 * MS, ip(1), 3));
        assert!(l.check_group(t0 + 5 * MS, ip(1), 3));
    }

    #[test]
    fn disabled_tiers_pass_everything() {
        let t0 = Instant::now();
        let s = LimitSettings {
            ip_rate: 0.0,
            sequence_max: 0,
            chain_max: 0,
            group_rate: f64::INFINITY,
            ..Default::default()
        };
        let mut l = Limiter::new(&s, t0);
        for _ in 0..10_000 {
            assert_eq!(l.check_before_lookup(t0, ip(1), 1, 1), Ok(()));
            assert!(l.check_group(t0, ip(1), 1));
        }
        assert_eq!(l.entries(), LimiterEntries::default());
    }

    #[test]
    fn a_flooding_source_cannot_starve_another() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&LimitSettings::default(), t0);
        let (flooder, victim) = (ip(666), ip(7));
        let mut victim_ok = 0;
        // One second: the flooder sends 100 NACKs per ms for its own flow,
        // the victim one every 20 ms for another.
        for ms in 0..1000u32 {
            let now = t0 + ms * MS;
            for i in 0..100u64 {
                let _ = l.check_before_lookup(now, flooder, 1, u64::from(ms) * 100 + i);
                let _ = l.check_group(now, flooder, 0);
            }
            if ms % 20 == 0 {
                let seq = 1_000_000 + u64::from(ms);
                if l.check_before_lookup(now, victim, 2, seq).is_ok()
                    && l.check_group(now, victim, 0)
                {
                    victim_ok += 1;
                }
            }
        }
        assert_eq!(victim_ok, 50, "every one of the victim's NACKs got through");
        // The flooder got its burst plus its rate, no more.
        let mut flooder_ok = 0;
        let mut l = Limiter::new(&LimitSettings::default(), t0);
        for ms in 0..1000u32 {
            let now = t0 + ms * MS;
            flooder_ok += (0..100).filter(|_| l.check_ip(now, flooder)).count();
        }
        assert_eq!(flooder_ok, 10 + 99);
    }

    #[test]
    fn tables_stay_bounded_under_an_address_flood() {
        let t0 = Instant::now();
        let s = LimitSettings { max_entries: 65_536, ..Default::default() };
        let mut l = Limiter::new(&s, t0);
        let mut peak = LimiterEntries::default();
        for n in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(n));
            let _ = l.check_before_lookup(now, ip(n), u64::from(n) | 1, u64::from(n));
            let _ = l.charge_chain(now, ip(n), u64::from(n) | 1);
            let _ = l.check_group(now, ip(n), (n % 7) as u16);
            let e = l.entries();
            peak.ip = peak.ip.max(e.ip);
            peak.sequence = peak.sequence.max(e.sequence);
            peak.chain = peak.chain.max(e.chain);
            peak.group = peak.group.max(e.group);
        }
        for (tier, n) in
            [("ip", peak.ip), ("seq", peak.sequence), ("chain", peak.chain), ("group", peak.group)]
        {
            assert!(n <= 65_536, "{tier}: {n}");
            assert!(n >= 32_768, "{tier} is used: {n}");
        }
        // A source active throughout the flood kept its state: still limited.
        let mut l = Limiter::new(&LimitSettings { max_entries: 1024, ..Default::default() }, t0);
        assert_eq!((0..20).filter(|_| l.check_ip(t0, ip(1))).count(), 10);
        for n in 2..100_000u32 {
            let _ = l.check_ip(t0, ip(n));
            if n % 100 == 0 {
                assert!(!l.check_ip(t0, ip(1)), "busy source forgotten at {n}");
            }
        }
        assert!(l.entries().ip <= 1024);
    }

    #[test]
    fn shards_share_the_ip_sequence_and_group_tiers_but_not_the_chain_tier() {
        let t0 = Instant::now();
        let s = LimitSettings { chain_max: 3, group_burst: 4, ..Default::default() };
        let shared = Arc::new(SharedLimits::with_seed(&s, t0, 3));
        let mut a = Limiter::with_shared(&s, shared.clone(), t0);
        let mut b = Limiter::with_shared(&s, shared, t0);
        // One IP bucket of 10 for both shards.
        let mut ok = 0;
        for n in 0..10u64 {
            let l = if n % 2 == 0 { &mut a } else { &mut b };
            ok += usize::from(l.check_before_lookup(t0, ip(1), 100 + n, n).is_ok());
        }
        assert_eq!(ok, 10);
        assert_eq!(a.check_before_lookup(t0, ip(1), 200, 99), Err(Tier::Ip));
        assert_eq!(b.check_before_lookup(t0, ip(1), 201, 98), Err(Tier::Ip));
        // One group bucket of 4.
        let groups = (0..4).filter(|n| [&mut a, &mut b][n % 2].check_group(t0, ip(2), 5)).count();
        assert_eq!((groups, a.check_group(t0, ip(2), 5)), (4, false));
        // One sequence window: 100 per StartSeq, across shards.
        let later = t0 + Duration::from_secs(1);
        let seq = (0..200u32)
            .filter(|&n| [&mut a, &mut b][n as usize % 2].check_sequence(later, 9, 1000))
            .count();
        assert_eq!(seq, 100);
        // The chain tier is the shard's own (its HashKey picks the shard).
        assert_eq!((0..5).filter(|_| a.check_chain(t0, ip(3), 7)).count(), 3);
        assert_eq!((0..5).filter(|_| b.check_chain(t0, ip(3), 7)).count(), 3);
        // (The lookups above only peeked at the chain tier: no entries.)
        let e = a.entries();
        assert_eq!((e.ip, e.sequence, e.group, e.chain), (1, 11, 1, 1), "{e:?}");
    }

    #[test]
    fn decisions_are_a_pure_function_of_the_calls() {
        let t0 = Instant::now();
        let run = |t0: Instant| {
            let mut l = Limiter::new(&LimitSettings { max_entries: 64, ..Default::default() }, t0);
            (0..5000u32)
                .map(|n| {
                    let now = t0 + Duration::from_micros(u64::from(n) * 137);
                    let r =
                        l.check_before_lookup(now, ip(n % 97), u64::from(n % 5), u64::from(n % 31));
                    (r, l.check_group(now, ip(n % 89), (n % 3) as u16))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(t0), run(t0 + Duration::from_secs(3600)));
    }
}
