//! Which sources each group is joined from, and the `(S,G)` membership
//! changes when a source list moves.
//!
//! Each list has its own source set; a group's set is the union of the
//! lists that feed it, minus this node's own `--bind-source`:
//!
//! | group (BRC-129 index) | lists |
//! |---|---|
//! | data plane, every object plane below 0xF800 | `--ssm-publishers-static` ∪ publishers learned from manifests |
//! | 0xFFFE block broadcast | `--ssm-bootstrap-manifest` |
//! | 0xFFFD beacon | `--ssm-bootstrap-beacon` ∪ `--ssm-bootstrap-manifest` |
//! | 0xFFFB subtree data, 0xFFFC subtree-group announcements | `--ssm-bootstrap-subtree-announce` |
//! | 0xFFFA block headers, 0xFFFF, 0xF800–0xFFF9 | none |
//!
//! The data-plane, block-broadcast, beacon and subtree rows are the
//! reference's (retry-endpoint `main.go` `buildSSMGroupSources`: the
//! block-broadcast group "follows manifest emitters"). Two ricochet
//! choices: the beacon group also takes the manifest emitters, because
//! BRC-139 sends manifests to the beacon group and a node that consumes
//! them must be joined to their senders; and the data plane is the union of
//! the static list and the manifest-learned publishers (the reference has
//! no manifest consumer yet and uses the static list alone when set).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use ricochet_wire::group::{INDEX_BEACON, INDEX_BLOCK, INDEX_SUBTREE, INDEX_SUBTREE_GROUP};
use ricochet_wire::manifest::CONTROL_BASE;

use super::posture::Flag;
use super::{SourceDiff, usable_source};

/// A source list: one configured flag, or the manifest-learned publishers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceList {
    /// `--ssm-publishers-static`: data-plane publishers (lab and CI).
    PublishersStatic,
    /// Data-plane publishers from the manifest registry.
    ManifestPublishers,
    /// `--ssm-bootstrap-manifest`: manifest emitters.
    BootstrapManifest,
    /// `--ssm-bootstrap-beacon`: retry endpoints that send ADVERTs.
    BootstrapBeacon,
    /// `--ssm-bootstrap-subtree-announce`: subtree announcers.
    BootstrapSubtreeAnnounce,
}

impl SourceList {
    /// Every list.
    pub const ALL: [SourceList; 5] = [
        SourceList::PublishersStatic,
        SourceList::ManifestPublishers,
        SourceList::BootstrapManifest,
        SourceList::BootstrapBeacon,
        SourceList::BootstrapSubtreeAnnounce,
    ];

    /// The flag that configures it (none for the learned publishers).
    pub const fn flag(self) -> Option<Flag> {
        match self {
            SourceList::PublishersStatic => Some(Flag::PublishersStatic),
            SourceList::ManifestPublishers => None,
            SourceList::BootstrapManifest => Some(Flag::BootstrapManifest),
            SourceList::BootstrapBeacon => Some(Flag::BootstrapBeacon),
            SourceList::BootstrapSubtreeAnnounce => Some(Flag::BootstrapSubtreeAnnounce),
        }
    }

    const fn slot(self) -> usize {
        self as usize
    }
}

const DATA: &[SourceList] = &[SourceList::PublishersStatic, SourceList::ManifestPublishers];
const BLOCK: &[SourceList] = &[SourceList::BootstrapManifest];
const BEACON: &[SourceList] = &[SourceList::BootstrapBeacon, SourceList::BootstrapManifest];
const SUBTREE: &[SourceList] = &[SourceList::BootstrapSubtreeAnnounce];

/// The lists whose union is `index`'s source set (the table above).
pub fn lists_for_group(index: u16) -> &'static [SourceList] {
    match index {
        INDEX_BLOCK => BLOCK,
        INDEX_BEACON => BEACON,
        INDEX_SUBTREE | INDEX_SUBTREE_GROUP => SUBTREE,
        i if u32::from(i) < CONTROL_BASE => DATA,
        _ => &[],
    }
}

/// The membership change of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDiff {
    /// BRC-129 group index.
    pub group: u16,
    /// Sources to join and leave on it.
    pub diff: SourceDiff,
}

/// The source sets of every list and the groups this node is joined to.
#[derive(Debug, Clone, Default)]
pub struct JoinTable {
    own: Option<Ipv6Addr>,
    lists: [BTreeSet<Ipv6Addr>; 5],
    groups: BTreeSet<u16>,
}

impl JoinTable {
    /// An empty table; `own_source` (`--bind-source`) is never joined.
    pub fn new(own_source: Option<Ipv6Addr>) -> Self {
        JoinTable { own: own_source, ..Self::default() }
    }

    /// The sources `index` is (or would be) joined from.
    pub fn sources(&self, index: u16) -> BTreeSet<Ipv6Addr> {
        self.union_of(lists_for_group(index))
    }

    /// The current set of one list (own source and unusable addresses
    /// already removed).
    pub fn list(&self, list: SourceList) -> &BTreeSet<Ipv6Addr> {
        &self.lists[list.slot()]
    }

    /// The groups joined, ascending.
    pub fn groups(&self) -> impl Iterator<Item = u16> + '_ {
        self.groups.iter().copied()
    }

    /// Starts tracking `index`; the diff joins every source it has now
    /// (empty if already tracked, or if no source is known yet — the group
    /// then stays unjoined until one is).
    pub fn join_group(&mut self, index: u16) -> GroupDiff {
        let diff = if self.groups.insert(index) {
            SourceDiff { join: self.sources(index).into_iter().collect(), leave: Vec::new() }
        } else {
            SourceDiff::default()
        };
        GroupDiff { group: index, diff }
    }

    /// Stops tracking `index`; the diff leaves every source it had.
    pub fn leave_group(&mut self, index: u16) -> GroupDiff {
        let diff = if self.groups.remove(&index) {
            SourceDiff { join: Vec::new(), leave: self.sources(index).into_iter().collect() }
        } else {
            SourceDiff::default()
        };
        GroupDiff { group: index, diff }
    }

    /// Replaces one list's set and returns, for every tracked group whose
    /// set changed, what to join and leave; a source in a group's set both
    /// before and after is in neither.
    pub fn set_list(
        &mut self,
        list: SourceList,
        set: impl IntoIterator<Item = Ipv6Addr>,
    ) -> Vec<GroupDiff> {
        let own = self.own;
        let next: BTreeSet<Ipv6Addr> =
            set.into_iter().filter(|a| usable_source(a) && Some(*a) != own).collect();
        // Groups fed by the same lists share one diff: compute it once per
        // combination, not once per data-plane group.
        let mut combos: BTreeMap<&'static [SourceList], Vec<u16>> = BTreeMap::new();
        for &g in &self.groups {
            let lists = lists_for_group(g);
            if lists.contains(&list) {
                combos.entry(lists).or_default().push(g);
            }
        }
        let before: Vec<_> = combos.keys().map(|l| self.union_of(l)).collect();
        self.lists[list.slot()] = next;
        let mut out = Vec::new();
        for ((lists, groups), before) in combos.into_iter().zip(before) {
            let diff = SourceDiff::between(&before, &self.union_of(lists));
            if !diff.is_empty() {
                out.extend(groups.into_iter().map(|group| GroupDiff { group, diff: diff.clone() }));
            }
        }
        out.sort_by_key(|d| d.group);
        out
    }

    /// Applies a list's own diff (as [`super::registry::PublisherRegistry`]
    /// and [`super::bootstrap::BootstrapList`] return them).
    pub fn apply(&mut self, list: SourceList, diff: &SourceDiff) -> Vec<GroupDiff> {
        let mut next = self.lists[list.slot()].clone();
        diff.apply_to(&mut next);
        self.set_list(list, next)
    }

    fn union_of(&self, lists: &[SourceList]) -> BTreeSet<Ipv6Addr> {
        lists.iter().flat_map(|l| self.lists[l.slot()].iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, i)
    }

    #[test]
    fn the_reference_mapping() {
        assert_eq!(lists_for_group(0), DATA);
        assert_eq!(lists_for_group(0x1ABC), DATA); // a BEEF-plane group
        assert_eq!(lists_for_group(0xF7FF), DATA);
        assert_eq!(lists_for_group(0xFFFE), [SourceList::BootstrapManifest]);
        assert_eq!(
            lists_for_group(0xFFFD),
            [SourceList::BootstrapBeacon, SourceList::BootstrapManifest]
        );
        assert_eq!(lists_for_group(0xFFFB), [SourceList::BootstrapSubtreeAnnounce]);
        assert_eq!(lists_for_group(0xFFFC), [SourceList::BootstrapSubtreeAnnounce]);
        for i in [0xF800, 0xFFF9, 0xFFFA, 0xFFFF] {
            assert!(lists_for_group(i).is_empty(), "{i:#x}");
        }
    }

    #[test]
    fn own_source_and_unusable_addresses_are_never_joined() {
        let mut t = JoinTable::new(Some(a(1)));
        t.join_group(0);
        let d = t.set_list(
            SourceList::PublishersStatic,
            [a(1), a(2), Ipv6Addr::UNSPECIFIED, "ff05::1".parse().unwrap()],
        );
        assert_eq!(
            d,
            [GroupDiff { group: 0, diff: SourceDiff { join: vec![a(2)], leave: vec![] } }]
        );
        assert_eq!(t.sources(0), BTreeSet::from([a(2)]));
    }

    #[test]
    fn staying_sources_are_untouched_and_lists_are_independent() {
        let mut t = JoinTable::new(None);
        for g in [0, 1, 0xFFFD, 0xFFFE] {
            assert!(t.join_group(g).diff.is_empty(), "nothing known yet");
        }
        t.set_list(SourceList::BootstrapManifest, [a(9)]);
        let d = t.set_list(SourceList::ManifestPublishers, [a(1), a(2)]);
        assert_eq!(d.iter().map(|d| d.group).collect::<Vec<_>>(), [0, 1]);
        let d = t.set_list(SourceList::PublishersStatic, [a(2), a(3)]);
        // a(2) is already joined through the manifest list.
        assert!(d.iter().all(|d| d.diff == SourceDiff { join: vec![a(3)], leave: vec![] }));
        let d = t.set_list(SourceList::ManifestPublishers, [a(1)]);
        assert!(d.is_empty(), "a(2) stays through the static list: {d:?}");
        // The beacon group has the manifest emitters; adding a beacon
        // source to it does not touch them.
        let d = t.set_list(SourceList::BootstrapBeacon, [a(9), a(10)]);
        assert_eq!(
            d,
            [GroupDiff { group: 0xFFFD, diff: SourceDiff { join: vec![a(10)], leave: vec![] } }]
        );
        let d = t.leave_group(0xFFFD);
        assert_eq!(d.diff.leave, [a(9), a(10)]);
        assert!(t.set_list(SourceList::BootstrapBeacon, []).is_empty());
        // Joining a group later joins what its lists hold now.
        assert_eq!(t.join_group(0xFFFB).diff, SourceDiff::default());
        assert_eq!(t.join_group(7).diff.join, [a(1), a(2), a(3)]);
    }

    fn op() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
        // (kind, list or group, addresses from a small pool)
        (0u8..4, any::<u8>(), proptest::collection::vec(0u8..8, 0..6))
    }

    proptest! {
        /// A simulated kernel membership, changed only by the returned
        /// diffs, always equals the table's view; a source in a group's
        /// set before and after an operation is never in its diff.
        #[test]
        fn diffs_replay_to_the_table(own in proptest::option::of(0u8..8), ops in proptest::collection::vec(op(), 1..40)) {
            let groups = [0u16, 3, 0x1000, 0xFFFB, 0xFFFC, 0xFFFD, 0xFFFE, 0xFFFA];
            let mut t = JoinTable::new(own.map(|o| a(u16::from(o))));
            let mut kernel: BTreeMap<u16, BTreeSet<Ipv6Addr>> = BTreeMap::new();
            for (kind, pick, addrs) in ops {
                let joined = |t: &JoinTable, g: u16| {
                    if t.groups().any(|x| x == g) { t.sources(g) } else { BTreeSet::new() }
                };
                let before: BTreeMap<u16, BTreeSet<Ipv6Addr>> =
                    groups.iter().map(|&g| (g, joined(&t, g))).collect();
                let group = groups[usize::from(pick) % groups.len()];
                let diffs = match kind {
                    0 => vec![t.join_group(group)],
                    1 => vec![t.leave_group(group)],
                    _ => {
                        let list = SourceList::ALL[usize::from(pick) % 5];
                        let set: Vec<_> = addrs.iter().map(|&i| a(u16::from(i))).collect();
                        if kind == 2 {
                            t.set_list(list, set)
                        } else {
                            let mut cur = t.list(list).clone();
                            let d = SourceDiff::between(&cur, &set.iter().copied().collect());
                            d.apply_to(&mut cur);
                            t.apply(list, &d)
                        }
                    }
                };
                for gd in &diffs {
                    let k = kernel.entry(gd.group).or_default();
                    for s in &gd.diff.leave { prop_assert!(k.remove(s), "leave of a source not joined"); }
                    for s in &gd.diff.join { prop_assert!(k.insert(*s), "join of a source already joined"); }
                    let after = joined(&t, gd.group);
                    for s in before[&gd.group].intersection(&after) {
                        prop_assert!(!gd.diff.join.contains(s) && !gd.diff.leave.contains(s));
                    }
                }
                for &g in &groups {
                    let want = joined(&t, g);
                    prop_assert_eq!(kernel.get(&g).cloned().unwrap_or_default(), want.clone(), "group {:#x}", g);
                    if let Some(o) = own { prop_assert!(!want.contains(&a(u16::from(o)))); }
                }
            }
        }
    }
}
