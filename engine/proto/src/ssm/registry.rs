//! Data-plane publishers learned from BRC-139 shard manifests.
//!
//! The consumer rules of the reference (shard-common
//! `manifest/registry.go`, `manifest/evaluator.go`) and BRC-139:
//! - An entry is keyed by the datagram's source address and the manifest's
//!   instance id; the in-frame announcer address is informational.
//! - A manifest replaces its announcer's entry. The entry lives for the
//!   manifest's TTL from the moment it was received; a TTL of 0 means the
//!   consumer default, [`RegistryConfig::default_ttl`] when set, else three
//!   announce intervals. It is gone once `now >= received + ttl`.
//! - Shutdown removes the entry at once.
//! - The publisher set is the union of the sources of every live entry,
//!   Authoritative or not (sources are not gated by quorum).
//!
//! ricochet's additions: a manifest whose effective TTL is zero (TTL 0 and
//! announce interval 0, no default) removes its entry instead of storing one
//! that is already expired (the reference stores it and evicts it on the
//! next sweep, joining and leaving its sources in between); unusable
//! sources (unspecified, multicast, IPv4-mapped) are dropped; and both the
//! announcers and the distinct publishers are capped, a manifest that
//! would pass a cap being refused whole and counted.
//!
//! Every call returns the [`SourceDiff`] of the publisher union, refcounted
//! across announcers: a publisher leaves only when no live manifest lists
//! it any more, and a refresh that lists the same sources changes nothing.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ricochet_wire::manifest::{ManifestFlags, ShardManifest};

use super::{SourceDiff, usable_source};

/// Limits and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Lifetime of a manifest that carries TTL 0; `None` means three
    /// announce intervals, as BRC-139 suggests.
    pub default_ttl: Option<Duration>,
    /// Most announcers held at once.
    pub max_announcers: usize,
    /// Most distinct publishers held at once (each is an `(S,G)` filter on
    /// every data-plane group; Linux's `net.ipv6.mld_max_msf` must exceed
    /// it).
    pub max_publishers: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { default_ttl: None, max_announcers: 1024, max_publishers: 1024 }
    }
}

/// An announcer: the datagram source and the manifest's instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Announcer {
    /// Source address of the datagram.
    pub source: Ipv6Addr,
    /// Instance id from the manifest.
    pub instance_id: u32,
}

/// What the registry keeps of one announcer's latest manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its usable sources, ascending, without duplicates.
    pub sources: Vec<Ipv6Addr>,
    /// Announcer bits and section bits as received.
    pub flags: ManifestFlags,
    /// Transaction-plane shard bits.
    pub shard_bits: u8,
    /// Generation id.
    pub generation_id: [u8; 16],
    /// When the manifest arrived.
    pub received: Instant,
    /// When the entry expires.
    pub expires: Instant,
}

/// Why a manifest was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// A new announcer past [`RegistryConfig::max_announcers`].
    TooManyAnnouncers,
    /// Its sources would take the union past
    /// [`RegistryConfig::max_publishers`].
    TooManyPublishers,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Manifests stored (new or refreshed).
    pub stored: u64,
    /// Entries removed by a Shutdown manifest (or a zero effective TTL).
    pub shutdowns: u64,
    /// Entries that expired.
    pub expired: u64,
    /// Manifests refused by a cap.
    pub refused: u64,
}

/// The live manifests and the union of their sources.
#[derive(Debug, Clone, Default)]
pub struct PublisherRegistry {
    cfg: RegistryConfig,
    entries: BTreeMap<Announcer, Entry>,
    /// How many live entries list each publisher.
    counts: BTreeMap<Ipv6Addr, u32>,
    stats: RegistryStats,
}

impl PublisherRegistry {
    /// An empty registry.
    pub fn new(cfg: RegistryConfig) -> Self {
        PublisherRegistry { cfg, ..Self::default() }
    }

    /// How long a manifest with these fields lives.
    pub fn effective_ttl(&self, ttl_secs: u16, announce_interval_secs: u16) -> Duration {
        match (ttl_secs, self.cfg.default_ttl) {
            (0, Some(d)) => d,
            (0, None) => Duration::from_secs(3 * u64::from(announce_interval_secs)),
            (t, _) => Duration::from_secs(u64::from(t)),
        }
    }

    /// Takes a checked manifest that arrived from `from` at `now`, returning
    /// how the publisher union moved.
    pub fn upsert(
        &mut self,
        now: Instant,
        from: Ipv6Addr,
        m: &ShardManifest<'_>,
    ) -> Result<SourceDiff, Refused> {
        let key = Announcer { source: from, instance_id: m.instance_id() };
        let ttl = self.effective_ttl(m.ttl_secs(), m.announce_interval_secs());
        if m.flags().has(ManifestFlags::SHUTDOWN) || ttl.is_zero() {
            let diff = self.remove(&key);
            if diff.is_some() {
                self.stats.shutdowns += 1;
            }
            return Ok(diff.unwrap_or_default());
        }
        let mut sources: Vec<Ipv6Addr> = m.sources().filter(usable_source).collect();
        sources.sort_unstable();
        sources.dedup();

        let old = self.entries.get(&key);
        if old.is_none() && self.entries.len() >= self.cfg.max_announcers {
            self.stats.refused += 1;
            return Err(Refused::TooManyAnnouncers);
        }
        let old_sources = old.map_or(&[][..], |e| &e.sources[..]);
        let added = sources.iter().filter(|s| !self.counts.contains_key(s)).count();
        let dropped = old_sources
            .iter()
            .filter(|s| self.counts.get(s) == Some(&1) && sources.binary_search(s).is_err())
            .count();
        if self.counts.len() + added - dropped > self.cfg.max_publishers {
            self.stats.refused += 1;
            return Err(Refused::TooManyPublishers);
        }

        let entry = Entry {
            sources,
            flags: m.flags(),
            shard_bits: m.shard_bits(),
            generation_id: m.generation_id(),
            received: now,
            expires: now + ttl,
        };
        let mut diff = SourceDiff::default();
        for s in &entry.sources {
            let c = self.counts.entry(*s).or_insert(0);
            *c += 1;
            if *c == 1 {
                diff.join.push(*s);
            }
        }
        if let Some(old) = self.entries.insert(key, entry) {
            self.release(&old.sources, &mut diff.leave);
        }
        // A source both in the old and the new list went 1 → 2 → 1: it was
        // never reported, as neither step crossed zero.
        self.stats.stored += 1;
        Ok(diff)
    }

    /// Drops every entry whose time is up at `now`.
    pub fn expire(&mut self, now: Instant) -> SourceDiff {
        let due: Vec<Announcer> =
            self.entries.iter().filter(|(_, e)| now >= e.expires).map(|(k, _)| *k).collect();
        let mut diff = SourceDiff::default();
        for key in due {
            if let Some(old) = self.entries.remove(&key) {
                self.stats.expired += 1;
                self.release(&old.sources, &mut diff.leave);
            }
        }
        diff.leave.sort_unstable();
        diff
    }

    /// When [`PublisherRegistry::expire`] next has work.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.expires).min()
    }

    /// The publisher union, ascending.
    pub fn publishers(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.counts.keys().copied()
    }

    /// Number of distinct publishers.
    pub fn publisher_count(&self) -> usize {
        self.counts.len()
    }

    /// The live entries.
    pub fn entries(&self) -> impl Iterator<Item = (&Announcer, &Entry)> {
        self.entries.iter()
    }

    /// Number of live announcers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no announcer is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live Authoritative announcers (the reference's "pilots known").
    pub fn authoritative_count(&self) -> usize {
        self.entries.values().filter(|e| e.flags.has(ManifestFlags::AUTHORITATIVE)).count()
    }

    /// Counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    fn remove(&mut self, key: &Announcer) -> Option<SourceDiff> {
        let old = self.entries.remove(key)?;
        let mut diff = SourceDiff::default();
        self.release(&old.sources, &mut diff.leave);
        Some(diff)
    }

    fn release(&mut self, sources: &[Ipv6Addr], leave: &mut Vec<Ipv6Addr>) {
        for s in sources {
            if let Some(c) = self.counts.get_mut(s) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(s);
                    leave.push(*s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use ricochet_wire::manifest::{GroupClaim, ShardManifestRepr};

    use super::*;

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, i)
    }

    fn manifest(
        instance: u32,
        ttl: u16,
        interval: u16,
        sources: &[Ipv6Addr],
        flags: u8,
    ) -> Vec<u8> {
        let r = ShardManifestRepr {
            flags: ManifestFlags(flags),
            instance_id: instance,
            ttl_secs: ttl,
            announce_interval_secs: interval,
            shard_bits: 2,
            groups: GroupClaim::None,
            sources: sources.to_vec(),
            ..ShardManifestRepr::default()
        };
        let mut b = vec![0; r.buffer_len()];
        r.emit(&mut b).unwrap();
        b
    }

    fn up(
        r: &mut PublisherRegistry,
        now: Instant,
        from: u16,
        bytes: &[u8],
    ) -> Result<SourceDiff, Refused> {
        r.upsert(now, a(from), &ShardManifest::new_checked(bytes).unwrap())
    }

    fn join(v: &[Ipv6Addr]) -> SourceDiff {
        SourceDiff { join: v.to_vec(), leave: vec![] }
    }

    #[test]
    fn ttl_rules() {
        let r = PublisherRegistry::new(RegistryConfig::default());
        assert_eq!(r.effective_ttl(900, 300), Duration::from_secs(900));
        assert_eq!(r.effective_ttl(0, 300), Duration::from_secs(900));
        let r = PublisherRegistry::new(RegistryConfig {
            default_ttl: Some(Duration::from_secs(60)),
            ..RegistryConfig::default()
        });
        assert_eq!(r.effective_ttl(0, 300), Duration::from_secs(60));
        assert_eq!(r.effective_ttl(5, 300), Duration::from_secs(5));
    }

    #[test]
    fn union_refcounts_expiry_and_shutdown() {
        let t0 = Instant::now();
        let mut r = PublisherRegistry::new(RegistryConfig::default());
        let m1 = manifest(1, 10, 5, &[a(1), a(2), a(2)], 0);
        assert_eq!(up(&mut r, t0, 100, &m1), Ok(join(&[a(1), a(2)])));
        // The same announcer refreshing the same list changes nothing.
        assert_eq!(up(&mut r, t0 + Duration::from_secs(4), 100, &m1), Ok(SourceDiff::default()));
        // Another announcer (same address, other instance) also lists a(2).
        let m2 = manifest(2, 0, 5, &[a(2), a(3)], ManifestFlags::AUTHORITATIVE);
        assert_eq!(up(&mut r, t0 + Duration::from_secs(5), 100, &m2), Ok(join(&[a(3)])));
        assert_eq!((r.len(), r.authoritative_count()), (2, 1));
        // Announcer 1 drops a(2): still listed by announcer 2, so it stays.
        let m1b = manifest(1, 10, 5, &[a(1)], 0);
        assert_eq!(up(&mut r, t0 + Duration::from_secs(6), 100, &m1b), Ok(SourceDiff::default()));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(16)));
        // Expiry is at received + ttl exactly; m2 lives 3 × 5 s.
        assert!(r.expire(t0 + Duration::from_secs(15)).is_empty());
        let d = r.expire(t0 + Duration::from_secs(16));
        assert_eq!(d, SourceDiff { join: vec![], leave: vec![a(1)] });
        // Shutdown removes at once.
        let bye = manifest(2, 0, 5, &[], ManifestFlags::SHUTDOWN);
        let d = up(&mut r, t0 + Duration::from_secs(17), 100, &bye).unwrap();
        assert_eq!(d.leave, [a(2), a(3)]);
        assert!(r.is_empty() && r.publisher_count() == 0 && r.next_expiry().is_none());
        let s = r.stats();
        assert_eq!((s.stored, s.expired, s.shutdowns, s.refused), (4, 1, 1, 0));
    }

    #[test]
    fn zero_effective_ttl_and_unusable_sources() {
        let t0 = Instant::now();
        let mut r = PublisherRegistry::new(RegistryConfig::default());
        let m = manifest(1, 30, 0, &[a(1), Ipv6Addr::UNSPECIFIED, "ff3e::1".parse().unwrap()], 0);
        assert_eq!(up(&mut r, t0, 1, &m), Ok(join(&[a(1)])));
        let now_zero = manifest(1, 0, 0, &[a(1)], 0);
        assert_eq!(up(&mut r, t0, 1, &now_zero).unwrap().leave, [a(1)]);
        assert!(r.is_empty());
    }

    #[test]
    fn caps_refuse_whole_manifests() {
        let t0 = Instant::now();
        let cfg = RegistryConfig { max_announcers: 2, max_publishers: 3, default_ttl: None };
        let mut r = PublisherRegistry::new(cfg);
        up(&mut r, t0, 1, &manifest(1, 60, 0, &[a(1), a(2)], 0)).unwrap();
        up(&mut r, t0, 2, &manifest(1, 60, 0, &[a(2)], 0)).unwrap();
        assert_eq!(
            up(&mut r, t0, 3, &manifest(1, 60, 0, &[a(9)], 0)),
            Err(Refused::TooManyAnnouncers)
        );
        assert_eq!(
            up(&mut r, t0, 1, &manifest(1, 60, 0, &[a(1), a(3), a(4)], 0)),
            Err(Refused::TooManyPublishers)
        );
        // Swapping a(1) for a(3) keeps the union at 3 and is fine.
        let d = up(&mut r, t0, 1, &manifest(1, 60, 0, &[a(2), a(3), a(4)], 0)).unwrap();
        assert_eq!(d, SourceDiff { join: vec![a(3), a(4)], leave: vec![a(1)] });
        assert_eq!(r.stats().refused, 2);
    }

    proptest! {
        /// Any sequence of manifests, shutdowns and sweeps: the diffs, applied
        /// in order, reproduce the union; a publisher listed before and after
        /// a step is never in its diff; the union is exactly the sources of
        /// the live entries.
        #[test]
        fn diffs_reproduce_the_union(
            steps in proptest::collection::vec(
                (0u8..4, 0u16..4, 0u32..2, 0u16..20, proptest::collection::vec(0u16..10, 0..5), 0u64..30),
                1..60,
            )
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let cfg = RegistryConfig { max_announcers: 5, max_publishers: 8, default_ttl: None };
            let mut r = PublisherRegistry::new(cfg);
            let mut applied: BTreeSet<Ipv6Addr> = BTreeSet::new();
            for (kind, from, instance, ttl, srcs, advance) in steps {
                now += Duration::from_secs(advance);
                let before: BTreeSet<Ipv6Addr> = r.publishers().collect();
                let sources: Vec<Ipv6Addr> = srcs.iter().map(|&i| a(i)).collect();
                let diff = match kind {
                    0 => r.expire(now),
                    1 => up(&mut r, now, from, &manifest(instance, 0, 0, &[], ManifestFlags::SHUTDOWN)).unwrap(),
                    _ => up(&mut r, now, from, &manifest(instance, ttl, 2, &sources, 0)).unwrap_or_default(),
                };
                let after: BTreeSet<Ipv6Addr> = r.publishers().collect();
                for s in before.intersection(&after) {
                    prop_assert!(!diff.join.contains(s) && !diff.leave.contains(s));
                }
                for s in &diff.leave { prop_assert!(applied.remove(s)); }
                for s in &diff.join { prop_assert!(applied.insert(*s)); }
                prop_assert_eq!(&applied, &after);
                let live: BTreeSet<Ipv6Addr> =
                    r.entries().flat_map(|(_, e)| e.sources.iter().copied()).collect();
                prop_assert_eq!(&live, &after);
                prop_assert!(after.len() <= 8 && r.len() <= 5);
                prop_assert!(r.entries().all(|(_, e)| e.expires > e.received));
            }
        }
    }
}
