//! Re-resolution of a bootstrap source list (IPv6 literals and DNS names).
//!
//! The reference's rules (shard-common `bootstrap/bootstrap.go`):
//! - Start is fail-closed: a list that yields no IPv6 address refuses to
//!   start.
//! - A refresh never empties the set: a failed refresh, or one that would
//!   leave nothing, keeps the last good set and counts an error.
//! - Only AAAA answers count; IPv4 and IPv4-mapped answers are dropped.
//! - The change is reported as a diff, for the `(S,G)` joins and leaves.
//!
//! One deliberate difference: the reference re-resolves the list as a whole
//! and, when one name fails but another resolves, replaces the set with the
//! partial answer, so the failing name's publishers are left. Here each
//! name keeps its own last good answer, so a name that fails to resolve
//! keeps its addresses until it resolves again; a name that resolves to no
//! AAAA record gives up its addresses (unless the whole list would then be
//! empty).
//!
//! [`next_set`] is the rule for one resolution; [`BootstrapList`] applies
//! it per name and keeps the union.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::SourceDiff;
use super::joins::SourceList;
use super::posture::BootstrapEntry;
use super::usable_source;

/// The outcome of one refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    /// The set now in force.
    pub set: BTreeSet<Ipv6Addr>,
    /// How it moved (empty if unchanged).
    pub diff: SourceDiff,
    /// Whether the resolution failed (or came back empty) and the last good
    /// set was kept; the driver counts these.
    pub kept_last_good: bool,
}

impl Refresh {
    /// Whether the set changed.
    pub fn changed(&self) -> bool {
        !self.diff.is_empty()
    }
}

/// The usable IPv6 sources among resolver answers.
pub fn usable(answers: &[IpAddr]) -> BTreeSet<Ipv6Addr> {
    answers
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) if usable_source(v6) => Some(*v6),
            _ => None,
        })
        .collect()
}

/// The next set from the last good one and a resolution result: an error,
/// or an answer with no usable IPv6 address, keeps the last good set.
pub fn next_set<E>(last_good: &BTreeSet<Ipv6Addr>, result: Result<&[IpAddr], E>) -> Refresh {
    let next = match result {
        Ok(answers) => usable(answers),
        Err(_) => BTreeSet::new(),
    };
    if next.is_empty() {
        return Refresh {
            set: last_good.clone(),
            diff: SourceDiff::default(),
            kept_last_good: true,
        };
    }
    Refresh { diff: SourceDiff::between(last_good, &next), set: next, kept_last_good: false }
}

/// A list that resolved to nothing at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NothingResolved {
    /// The list.
    pub list: SourceList,
    /// How many of its names failed to resolve.
    pub failed: usize,
}

impl fmt::Display for NothingResolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.list.flag() {
            Some(flag) => flag.to_string(),
            None => "the manifest publisher list".to_owned(),
        };
        write!(
            f,
            "{what} resolved to no IPv6 address ({} of its names failed to resolve); SSM \
             start is fail-closed: list IPv6 literals or names with AAAA records",
            self.failed
        )
    }
}

impl std::error::Error for NothingResolved {}

/// One bootstrap list: its literals, the last good answer of each name,
/// and the union in force.
#[derive(Debug, Clone)]
pub struct BootstrapList {
    list: SourceList,
    literals: BTreeSet<Ipv6Addr>,
    names: Vec<String>,
    answers: Vec<BTreeSet<Ipv6Addr>>,
    current: BTreeSet<Ipv6Addr>,
    errors: u64,
}

impl BootstrapList {
    /// A list of `entries` (as [`super::posture::SsmPosture::entries`]
    /// gives them), not yet resolved.
    pub fn new(list: SourceList, entries: &[BootstrapEntry]) -> Self {
        let mut literals = BTreeSet::new();
        let mut names = Vec::new();
        for e in entries {
            match e {
                BootstrapEntry::Literal(a) => {
                    literals.insert(*a);
                }
                BootstrapEntry::Name(n) => names.push(n.clone()),
            }
        }
        let answers = vec![BTreeSet::new(); names.len()];
        BootstrapList { list, literals, names, answers, current: BTreeSet::new(), errors: 0 }
    }

    /// The names the driver must resolve, in the order it passes results.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The set in force.
    pub fn current(&self) -> &BTreeSet<Ipv6Addr> {
        &self.current
    }

    /// Refreshes that kept a last good answer.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The first resolution, fail-closed: refuses when the list yields no
    /// usable address. `results[i]` answers `names()[i]`.
    pub fn start<E>(
        &mut self,
        results: &[Result<Vec<IpAddr>, E>],
    ) -> Result<SourceDiff, NothingResolved> {
        let mut failed = 0;
        for (slot, result) in self.answers.iter_mut().zip(results) {
            *slot = match result {
                Ok(answers) => usable(answers),
                Err(_) => {
                    failed += 1;
                    BTreeSet::new()
                }
            };
        }
        let union = self.union();
        if union.is_empty() {
            return Err(NothingResolved { list: self.list, failed });
        }
        let diff = SourceDiff::between(&self.current, &union);
        self.current = union;
        Ok(diff)
    }

    /// A periodic re-resolution: each name that failed keeps its last good
    /// answer; if the union would be empty the last good set stays.
    pub fn refresh<E>(&mut self, results: &[Result<Vec<IpAddr>, E>]) -> Refresh {
        let mut kept = false;
        let mut next_answers = self.answers.clone();
        for (slot, result) in next_answers.iter_mut().zip(results) {
            match result {
                Ok(answers) => *slot = usable(answers),
                Err(_) => kept = true,
            }
        }
        let previous = std::mem::replace(&mut self.answers, next_answers);
        let union = self.union();
        if union.is_empty() {
            self.answers = previous;
            self.errors += 1;
            return Refresh {
                set: self.current.clone(),
                diff: SourceDiff::default(),
                kept_last_good: true,
            };
        }
        if kept {
            self.errors += 1;
        }
        let diff = SourceDiff::between(&self.current, &union);
        self.current = union;
        Refresh { set: self.current.clone(), diff, kept_last_good: kept }
    }

    fn union(&self) -> BTreeSet<Ipv6Addr> {
        self.literals.iter().chain(self.answers.iter().flatten()).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, i)
    }

    fn ip(i: u16) -> IpAddr {
        IpAddr::V6(a(i))
    }

    #[test]
    fn one_resolution() {
        let last: BTreeSet<_> = [a(1), a(2)].into();
        let r = next_set::<()>(&last, Err(()));
        assert_eq!((r.set.clone(), r.changed(), r.kept_last_good), (last.clone(), false, true));
        let v4: [IpAddr; 2] = ["192.0.2.1".parse().unwrap(), "::ffff:192.0.2.1".parse().unwrap()];
        let r = next_set::<()>(&last, Ok(&v4));
        assert!(r.kept_last_good && r.set == last, "nothing usable keeps the last good set");
        let r = next_set::<()>(&last, Ok(&[ip(2), ip(3), ip(3)]));
        assert_eq!(r.set, [a(2), a(3)].into());
        assert_eq!(r.diff, SourceDiff { join: vec![a(3)], leave: vec![a(1)] });
        assert!(r.changed() && !r.kept_last_good);
        let r = next_set::<()>(&last, Ok(&[ip(2), ip(1)]));
        assert!(!r.changed() && !r.kept_last_good);
    }

    #[test]
    fn start_is_fail_closed() {
        let entries =
            [BootstrapEntry::Name("a.example".into()), BootstrapEntry::Name("b.example".into())];
        let mut l = BootstrapList::new(SourceList::BootstrapBeacon, &entries);
        let e = l.start::<()>(&[Err(()), Ok(vec!["192.0.2.1".parse().unwrap()])]).unwrap_err();
        assert_eq!(e, NothingResolved { list: SourceList::BootstrapBeacon, failed: 1 });
        assert!(e.to_string().contains("--ssm-bootstrap-beacon (SSM_BOOTSTRAP_BEACON)"));
        // A literal alone is enough, even if every name fails.
        let entries = [BootstrapEntry::Literal(a(7)), BootstrapEntry::Name("a.example".into())];
        let mut l = BootstrapList::new(SourceList::BootstrapManifest, &entries);
        assert_eq!(l.start::<()>(&[Err(())]).unwrap().join, [a(7)]);
    }

    #[test]
    fn a_failing_name_keeps_its_addresses() {
        let entries = [BootstrapEntry::Name("a".into()), BootstrapEntry::Name("b".into())];
        let mut l = BootstrapList::new(SourceList::PublishersStatic, &entries);
        l.start::<()>(&[Ok(vec![ip(1)]), Ok(vec![ip(2)])]).unwrap();
        let r = l.refresh::<()>(&[Err(()), Ok(vec![ip(3)])]);
        assert_eq!(r.diff, SourceDiff { join: vec![a(3)], leave: vec![a(2)] });
        assert!(r.kept_last_good && l.errors() == 1);
        assert_eq!(l.current(), &[a(1), a(3)].into());
        // A name answering with nothing gives its addresses up...
        let r = l.refresh::<()>(&[Ok(vec![]), Ok(vec![ip(3)])]);
        assert_eq!(r.diff.leave, [a(1)]);
        // ...unless the whole list would be empty.
        let r = l.refresh::<()>(&[Ok(vec![]), Ok(vec![])]);
        assert!(r.kept_last_good && !r.changed() && l.current() == &[a(3)].into());
        assert_eq!(l.errors(), 2);
    }

    proptest! {
        /// A refresh never empties a started list, the diffs applied in
        /// order reproduce the current set, and with no failure the set is
        /// exactly the usable answers.
        #[test]
        fn refreshes_never_empty_and_diffs_replay(
            start in proptest::collection::vec(proptest::collection::vec(0u16..6, 1..4), 3),
            rounds in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(proptest::collection::vec(0u16..6, 0..4)), 3),
                1..20,
            ),
        ) {
            let entries: Vec<_> = ["a", "b", "c"].iter().map(|n| BootstrapEntry::Name((*n).into())).collect();
            let mut l = BootstrapList::new(SourceList::BootstrapBeacon, &entries);
            let first: Vec<Result<Vec<IpAddr>, ()>> =
                start.iter().map(|v| Ok(v.iter().map(|&i| ip(i)).collect())).collect();
            let mut applied = BTreeSet::new();
            l.start(&first).unwrap().apply_to(&mut applied);
            for round in rounds {
                let results: Vec<Result<Vec<IpAddr>, ()>> = round
                    .iter()
                    .map(|o| o.as_ref().map(|v| v.iter().map(|&i| ip(i)).collect()).ok_or(()))
                    .collect();
                let before = l.current().clone();
                let r = l.refresh(&results);
                prop_assert!(!r.set.is_empty());
                for s in before.intersection(&r.set) {
                    prop_assert!(!r.diff.join.contains(s) && !r.diff.leave.contains(s));
                }
                r.diff.apply_to(&mut applied);
                prop_assert_eq!(&applied, l.current());
                prop_assert_eq!(&r.set, l.current());
                if round.iter().all(Option::is_some) {
                    let all: BTreeSet<Ipv6Addr> =
                        round.iter().flatten().flatten().map(|&i| a(i)).collect();
                    if !all.is_empty() {
                        prop_assert_eq!(&all, l.current());
                    }
                }
            }
        }
    }
}
