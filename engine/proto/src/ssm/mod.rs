//! Source-specific multicast (RFC 4607): the pure half of ricochet's SSM
//! posture — which flags make a valid configuration, which sources each
//! group is joined from, the data-plane publishers learned from BRC-139
//! shard manifests, and how a DNS bootstrap list moves when it is
//! re-resolved.
//!
//! # Contract
//! - No sockets, no resolver, no clock. The driver resolves names, receives
//!   manifests and reads the time; it passes results and `now` in and gets
//!   back the `(S,G)` joins and leaves to issue
//!   (`MCAST_JOIN_SOURCE_GROUP` / `MCAST_LEAVE_SOURCE_GROUP`).
//! - Diffs are minimal: a source that stays in a group's set never appears
//!   in a diff, so a refresh or a new manifest never bounces a live
//!   membership. Applying the diffs in the order they are returned
//!   reproduces [`joins::JoinTable::sources`] for every group
//!   (property-tested).
//! - A node never joins its own `--bind-source`, and never joins the
//!   unspecified address, a multicast address or an IPv4-mapped address as
//!   a source.
//! - Under SSM a group whose source set is empty has no membership at all:
//!   nothing is joined until a source is known. (The reference endpoint
//!   falls back to an any-source join of the FF3x group, which RFC 4607
//!   does not allow.)
//! - Every table has a cap ([`registry::RegistryConfig`]); a manifest that
//!   would pass one is refused and counted, never a panic.
//!
//! # Modules
//! - [`posture`]: `--source-mode`/`--scope` validation (ASM at global scope
//!   refused, RFC 8815), `--bind-source`, the four SSM source-list flags and
//!   their fail-closed rules; errors name the flags to set.
//! - [`joins`]: which source list feeds which group, as the reference maps
//!   them, and the per-group `(S,G)` membership diffs.
//! - [`registry`]: data-plane publishers from shard manifests, with the
//!   reference consumer's TTL, Shutdown and union rules.
//! - [`bootstrap`]: re-resolution of a DNS/literal bootstrap list; a failed
//!   refresh keeps the last good set.
//!
//! Facts come from lightwebinc/retry-endpoint (`config/config.go`,
//! `main.go` `buildSSMGroupSources`), lightwebinc/shard-common
//! (`shard/mode.go`, `bootstrap/bootstrap.go`, `manifest/registry.go`,
//! `manifest/evaluator.go`) and BRC-139; docs/PROTOCOL.md § "Shard manifest
//! (SSM publisher discovery)" has the wire layout.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

pub mod bootstrap;
pub mod joins;
pub mod posture;
pub mod registry;

/// Sources to add and sources to drop, each ascending and disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceDiff {
    /// Sources to join.
    pub join: Vec<Ipv6Addr>,
    /// Sources to leave.
    pub leave: Vec<Ipv6Addr>,
}

impl SourceDiff {
    /// The diff that turns `before` into `after`.
    pub fn between(before: &BTreeSet<Ipv6Addr>, after: &BTreeSet<Ipv6Addr>) -> Self {
        SourceDiff {
            join: after.difference(before).copied().collect(),
            leave: before.difference(after).copied().collect(),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.leave.is_empty()
    }

    /// Applies the diff to `set`.
    pub fn apply_to(&self, set: &mut BTreeSet<Ipv6Addr>) {
        for a in &self.leave {
            set.remove(a);
        }
        set.extend(self.join.iter().copied());
    }
}

/// Whether `addr` can be the source of an `(S,G)` join: not unspecified,
/// not multicast, not IPv4-mapped (the groups are IPv6).
pub fn usable_source(addr: &Ipv6Addr) -> bool {
    !addr.is_unspecified() && !addr.is_multicast() && addr.to_ipv4_mapped().is_none()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use ricochet_wire::group::{INDEX_BEACON, INDEX_BLOCK, Scope, SourceMode};
    use ricochet_wire::manifest::{ShardManifest, ShardManifestRepr};

    use super::bootstrap::BootstrapList;
    use super::joins::{GroupDiff, JoinTable, SourceList};
    use super::posture::{SsmFlags, validate};
    use super::registry::{PublisherRegistry, RegistryConfig};
    use super::*;

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, i)
    }

    /// The flow a driver follows: validate the flags, resolve the bootstrap
    /// lists, join the groups, then feed manifests and sweeps, issuing only
    /// the diffs.
    #[test]
    fn driver_flow() {
        let manifest = vec!["manifest.example".to_owned()];
        let beacon = vec!["fd20::b".to_owned()];
        let posture = validate(&SsmFlags {
            source_mode: SourceMode::Ssm,
            scope: Scope::Global,
            bind_source: Some("fd20::1"),
            bootstrap_manifest: &manifest,
            bootstrap_beacon: &beacon,
            bootstrap_subtree_announce: &[],
            publishers_static: &[],
            bootstrap_refresh: Duration::from_secs(30),
        })
        .unwrap();
        assert_eq!(posture.prefix, 0xFF3E);

        let mut table = JoinTable::new(posture.bind_source);
        for g in [0, 1, 2, 3, INDEX_BEACON, INDEX_BLOCK] {
            assert!(table.join_group(g).diff.is_empty(), "nothing to join before resolution");
        }
        let mut emitters = BootstrapList::new(
            SourceList::BootstrapManifest,
            posture.entries(SourceList::BootstrapManifest),
        );
        let answers: Vec<Result<Vec<IpAddr>, ()>> = vec![Ok(vec![IpAddr::V6(a(0xe))])];
        let d = emitters.start(&answers).unwrap();
        let joins = table.apply(SourceList::BootstrapManifest, &d);
        assert_eq!(joins.iter().map(|g| g.group).collect::<Vec<_>>(), [INDEX_BEACON, INDEX_BLOCK]);
        let mut beacons = BootstrapList::new(
            SourceList::BootstrapBeacon,
            posture.entries(SourceList::BootstrapBeacon),
        );
        let d = beacons.start::<()>(&[]).unwrap();
        assert_eq!(table.apply(SourceList::BootstrapBeacon, &d).len(), 1);

        // A publisher's manifest lists itself and this node: only the other
        // publisher is joined, on every data-plane group.
        let t0 = Instant::now();
        let mut registry = PublisherRegistry::new(RegistryConfig::default());
        let repr = ShardManifestRepr {
            instance_id: 7,
            ttl_secs: 60,
            sources: vec![a(0x50), a(1)],
            ..ShardManifestRepr::default()
        };
        let mut bytes = vec![0; repr.buffer_len()];
        repr.emit(&mut bytes).unwrap();
        let view = ShardManifest::new_checked(&bytes).unwrap();
        let d = registry.upsert(t0, a(0x50), &view).unwrap();
        let joins = table.apply(SourceList::ManifestPublishers, &d);
        let want = SourceDiff { join: vec![a(0x50)], leave: vec![] };
        assert_eq!(
            joins,
            (0..4).map(|group| GroupDiff { group, diff: want.clone() }).collect::<Vec<_>>()
        );
        // The same manifest again: no syscalls.
        let d = registry.upsert(t0 + Duration::from_secs(30), a(0x50), &view).unwrap();
        assert!(table.apply(SourceList::ManifestPublishers, &d).is_empty());
        // It stops announcing: left once its TTL runs out.
        assert_eq!(registry.next_expiry(), Some(t0 + Duration::from_secs(90)));
        let d = registry.expire(t0 + Duration::from_secs(90));
        let leaves = table.apply(SourceList::ManifestPublishers, &d);
        assert_eq!(leaves.len(), 4);
        assert!(leaves.iter().all(|g| g.diff.leave == [a(0x50)] && g.diff.join.is_empty()));
    }
}
