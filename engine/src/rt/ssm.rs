//! The SSM driver (RFC 4607): resolves the `--ssm-*` source lists, joins
//! every worker's ingress socket to `(S,G)` for the groups that worker
//! owns, re-resolves the lists every `--ssm-bootstrap-refresh`, and, with
//! `--ssm-bootstrap-manifest`, reads BRC-139 shard manifests on the beacon
//! group and joins the publishers they announce on every data group —
//! joining and leaving only the sources that moved.
//!
//! # Contract
//! - The pure rules live in [`ricochet_proto::ssm`]: which list feeds which
//!   group ([`JoinTable`]), how a refresh moves a list ([`BootstrapList`]).
//!   This module only resolves names, issues the socket calls and counts.
//! - Under SSM an ingress socket makes no `(*,G)` join at all
//!   (`socket::ingress`); a group with no known source stays unjoined.
//! - Start is fail-closed: a list that resolves to no IPv6 address refuses
//!   to start, naming the flag ([`SsmStart::resolve`]).
//! - A refresh that fails, or resolves to nothing, keeps the last good set;
//!   it is counted (`ricochet_ssm_refresh_failures_total`) and logged.
//! - Manifests are read on a socket of the control thread's own, bound to
//!   the SSM beacon group of the data scope at the beacon port (manifests
//!   share group and port with ADVERTs), and taken only from a
//!   `--ssm-bootstrap-manifest` address; the registry's TTL, Shutdown and
//!   cap rules ([`PublisherRegistry`]) decide the publisher set.
//! - Membership calls are made on a duplicate of each worker's ingress
//!   descriptor, from the control thread: a membership belongs to the
//!   socket, not the descriptor, and the kernel serialises socket options
//!   against the receive path, so the worker is never interrupted and no
//!   message crosses its inbox. Joins of a diff go before its leaves, so a
//!   group that swaps its whole source set is never left in between.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use ricochet_proto::ssm::bootstrap::BootstrapList;
use ricochet_proto::ssm::joins::{GroupDiff, JoinTable, SourceList};
use ricochet_proto::ssm::posture::SsmPosture;
use ricochet_proto::ssm::registry::{PublisherRegistry, RegistryConfig};
use ricochet_wire::group::{INDEX_BEACON, INDEX_BLOCK, INDEX_SUBTREE, INDEX_SUBTREE_GROUP};
use serde::Serialize;

use super::sys::{self, SourceMembership};
use super::{Addressing, Options, Shared};

/// The SSM state resolved before the workers start (`rt::Runtime::start_ssm`).
#[derive(Debug, Clone)]
pub struct SsmStart {
    posture: SsmPosture,
    lists: Vec<(SourceList, BootstrapList)>,
    table: JoinTable,
    /// The beacon port, where shard manifests arrive (with manifest
    /// emitters configured).
    manifest_port: Option<u16>,
}

impl SsmStart {
    /// Resolves every configured list once (names: AAAA answers only), so
    /// the first joins have their sources. Fail-closed: a list that yields
    /// no usable IPv6 address is an error naming its flag.
    pub fn resolve(posture: SsmPosture) -> Result<SsmStart, String> {
        let mut table = JoinTable::new(posture.bind_source);
        let mut lists = Vec::new();
        for list in SourceList::ALL {
            let entries = posture.entries(list);
            if entries.is_empty() {
                continue;
            }
            let mut l = BootstrapList::new(list, entries);
            let results = resolve_names(l.names());
            let diff = l.start(&results).map_err(|e| {
                let failures: Vec<String> = l
                    .names()
                    .iter()
                    .zip(&results)
                    .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
                    .collect();
                if failures.is_empty() {
                    e.to_string()
                } else {
                    format!("{e} [{}]", failures.join("; "))
                }
            })?;
            table.apply(list, &diff);
            lists.push((list, l));
        }
        Ok(SsmStart { posture, lists, table, manifest_port: None })
    }

    /// Takes BRC-139 shard manifests at `[beacon group]:port` (the beacon
    /// port, which manifests share with ADVERTs) when
    /// `--ssm-bootstrap-manifest` is set.
    pub fn with_manifest_port(mut self, port: u16) -> Self {
        self.manifest_port = (!self.posture.bootstrap_manifest.is_empty()).then_some(port);
        self
    }

    /// The sources group `index` is joined from.
    pub fn sources(&self, index: u16) -> Vec<Ipv6Addr> {
        self.table.sources(index).into_iter().collect()
    }
}

/// Resolves each name to its addresses (the system resolver, so
/// `/etc/hosts` counts); IPv4 answers are dropped by the caller's rules.
fn resolve_names(names: &[String]) -> Vec<io::Result<Vec<IpAddr>>> {
    names
        .iter()
        .map(|n| {
            (n.as_str(), 0)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).filter(IpAddr::is_ipv6).collect())
        })
        .collect()
}

/// The role of a group in metrics: which lists feed it.
fn role(index: u16) -> &'static str {
    match index {
        INDEX_BLOCK => "block",
        INDEX_BEACON => "beacon",
        INDEX_SUBTREE | INDEX_SUBTREE_GROUP => "subtree",
        _ => "data",
    }
}

/// The name of a list in metrics and `/debug`.
fn list_name(list: SourceList) -> &'static str {
    match list {
        SourceList::PublishersStatic => "publishers_static",
        SourceList::ManifestPublishers => "manifest_publishers",
        SourceList::BootstrapManifest => "bootstrap_manifest",
        SourceList::BootstrapBeacon => "bootstrap_beacon",
        SourceList::BootstrapSubtreeAnnounce => "bootstrap_subtree_announce",
    }
}

/// The worker sockets groups are joined on, and who owns which group.
#[derive(Debug)]
struct Membership {
    interface: u32,
    addressing: Addressing,
    /// Group index → the worker whose ingress socket takes it.
    owner: BTreeMap<u16, usize>,
    /// A duplicate of each worker's ingress descriptor, then the manifest
    /// socket's (if any).
    sockets: Vec<socket2::Socket>,
    /// How many of `sockets` are workers'.
    workers: usize,
}

impl Membership {
    fn group_addr(&self, index: u16) -> Option<Ipv6Addr> {
        match &self.addressing {
            Addressing::Ipv6 { mode, scope, group_id, .. } => {
                ricochet_wire::group::ipv6_group(*mode, *scope, *group_id, index).ok()
            }
            Addressing::Ipv4Lab { .. } => None,
        }
    }

    /// Issues `diffs` (joins, then leaves) and counts them; returns the
    /// first error.
    fn apply(&self, diffs: &[GroupDiff], stats: &SsmStats) -> io::Result<()> {
        let mut first_err = None;
        for d in diffs {
            let (Some(&w), Some(group)) = (self.owner.get(&d.group), self.group_addr(d.group))
            else {
                continue;
            };
            let sock = &self.sockets[w];
            let ops = d
                .diff
                .join
                .iter()
                .map(|s| (SourceMembership::Join, s))
                .chain(d.diff.leave.iter().map(|s| (SourceMembership::Leave, s)));
            for (op, &source) in ops {
                let r = sys::source_membership(sock, op, self.interface, group, source);
                let worker = (w < self.workers).then_some(w);
                stats.record(d.group, group, source, op, worker, &r);
                if let Err(e) = r {
                    let verb = if op == SourceMembership::Join { "join" } else { "leave" };
                    tracing::warn!(%group, %source, worker = w, error = %e, "SSM {verb} failed");
                    first_err.get_or_insert_with(|| {
                        let hint = if e.raw_os_error() == Some(libc::ENOBUFS) {
                            " (more sources than net.ipv6.mld_max_msf allows per socket and \
                             group: raise that sysctl)"
                        } else {
                            ""
                        };
                        io::Error::new(
                            e.kind(),
                            format!("SSM {verb} of ({source}, {group}) failed: {e}{hint}"),
                        )
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The running SSM driver, handed to the control thread after the workers
/// started ([`super::Runtime::take_ssm`]).
#[derive(Debug)]
pub struct Ssm {
    start: SsmStart,
    membership: Membership,
    registry: PublisherRegistry,
    /// The socket shard manifests arrive on, joined `(S,G)` to the beacon
    /// group from the manifest emitters and beacon sources.
    manifests: Option<std::net::UdpSocket>,
    stats: Arc<SsmStats>,
}

impl Ssm {
    /// Joins every `(S,G)` the table holds for `opts.groups` on the socket
    /// of the worker owning each group; an error stops the start.
    pub(super) fn join_all(
        mut start: SsmStart,
        opts: &Options,
        shares: &[Vec<u16>],
        ingress: &[socket2::Socket],
    ) -> io::Result<Ssm> {
        let Addressing::Ipv6 { interface_index, .. } = opts.addressing else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SSM is IPv6 only; --ipv4-lab cannot join (S,G)",
            ));
        };
        let mut owner: BTreeMap<u16, usize> = shares
            .iter()
            .enumerate()
            .flat_map(|(w, groups)| groups.iter().map(move |&g| (g, w)))
            .collect();
        let mut sockets: Vec<socket2::Socket> =
            ingress.iter().map(socket2::Socket::try_clone).collect::<io::Result<_>>()?;
        let mut groups = opts.groups.clone();
        let manifests = match (start.manifest_port, &opts.addressing) {
            (Some(port), Addressing::Ipv6 { mode, scope, group_id, .. }) => {
                let beacon =
                    ricochet_wire::group::ipv6_group(*mode, *scope, *group_id, INDEX_BEACON)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let s = super::socket::manifest(beacon, port)?;
                owner.insert(INDEX_BEACON, sockets.len());
                sockets.push(s.try_clone()?);
                groups.push(INDEX_BEACON);
                Some(std::net::UdpSocket::from(s))
            }
            _ => None,
        };
        let membership = Membership {
            interface: interface_index,
            addressing: opts.addressing.clone(),
            owner,
            sockets,
            workers: ingress.len(),
        };
        let stats = Arc::new(SsmStats::new(&start));
        let diffs: Vec<GroupDiff> = groups.iter().map(|&g| start.table.join_group(g)).collect();
        membership.apply(&diffs, &stats)?;
        for (list, l) in &start.lists {
            stats.set_list(*list, l);
        }
        Ok(Ssm {
            start,
            membership,
            registry: PublisherRegistry::new(RegistryConfig::default()),
            manifests,
            stats,
        })
    }

    /// Metrics and the `/debug/ssm` page.
    pub fn section(&self) -> Arc<SsmStats> {
        self.stats.clone()
    }

    /// Until the runtime stops: re-resolves the lists that hold names every
    /// `--ssm-bootstrap-refresh`, and, with `--ssm-bootstrap-manifest`,
    /// takes the shard manifests workers read on the beacon group every
    /// 100 ms and expires the publishers whose manifests lapsed. Each move
    /// is joined and left at once.
    pub async fn run(mut self, shared: Arc<Shared>) {
        let names = self.start.lists.iter().any(|(_, l)| !l.names().is_empty());
        let manifests = match self.manifests.take().map(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        }) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::error!(error = %e, "SSM manifest socket failed; no shard manifests will be read");
                None
            }
            None => None,
        };
        if !names && manifests.is_none() {
            return; // literals only and no manifests: nothing ever moves
        }
        let refresh = self.start.posture.refresh;
        let mut next_refresh = tokio::time::Instant::now() + refresh;
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 65_536];
        while !shared.stopping() {
            let received = match &manifests {
                Some(sock) => tokio::select! {
                    r = sock.recv_from(&mut buf) => r.ok(),
                    _ = poll.tick() => None,
                },
                None => {
                    poll.tick().await;
                    None
                }
            };
            let now = std::time::Instant::now();
            if let Some((n, from)) = received {
                self.on_manifest(now, from.ip(), &buf[..n]);
            }
            self.expire(now);
            if names && tokio::time::Instant::now() >= next_refresh {
                next_refresh = tokio::time::Instant::now() + refresh;
                let names: Vec<Vec<String>> =
                    self.start.lists.iter().map(|(_, l)| l.names().to_vec()).collect();
                let Ok(results) = tokio::task::spawn_blocking(move || {
                    names.iter().map(|n| resolve_names(n)).collect::<Vec<_>>()
                })
                .await
                else {
                    continue;
                };
                self.refresh(&results);
            }
        }
    }

    /// A shard manifest read on the beacon group from `from`: taken only
    /// from a `--ssm-bootstrap-manifest` emitter (the beacon group's other
    /// sources are retry endpoints), checked, and its publishers joined on
    /// every data group.
    fn on_manifest(&mut self, now: std::time::Instant, from: IpAddr, bytes: &[u8]) {
        if !ricochet_wire::manifest::is_shard_manifest(bytes) {
            return; // an ADVERT, which shares the group and port
        }
        let emitter = match from {
            IpAddr::V6(a) if self.start.table.list(SourceList::BootstrapManifest).contains(&a) => a,
            _ => return self.stats.manifest(Err("not_emitter")),
        };
        let view = match ricochet_wire::manifest::ShardManifest::new_checked(bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(%from, error = %e, "shard manifest refused");
                return self.stats.manifest(Err("malformed"));
            }
        };
        match self.registry.upsert(now, emitter, &view) {
            Ok(diff) => {
                self.stats.manifest(Ok(()));
                self.publishers_moved(&diff);
            }
            Err(e) => {
                tracing::warn!(%from, reason = ?e, "shard manifest refused: a cap would be passed");
                self.stats.manifest(Err("cap"));
            }
        }
    }

    /// Drops the publishers of manifests whose TTL ran out.
    fn expire(&mut self, now: std::time::Instant) {
        if self.registry.next_expiry().is_some_and(|t| t <= now) {
            let diff = self.registry.expire(now);
            self.publishers_moved(&diff);
        }
    }

    fn publishers_moved(&mut self, diff: &ricochet_proto::ssm::SourceDiff) {
        if diff.is_empty() {
            return;
        }
        tracing::info!(join = ?diff.join, leave = ?diff.leave, "SSM publishers from manifests moved");
        let list = SourceList::ManifestPublishers;
        let diffs = self.start.table.apply(list, diff);
        let _ = self.membership.apply(&diffs, &self.stats);
        let publishers: Vec<Ipv6Addr> = self.start.table.list(list).iter().copied().collect();
        self.stats.set_publishers(publishers, self.registry.len());
    }

    /// One refresh with the resolver's answers (`results[i]` answers the
    /// names of list `i`).
    fn refresh(&mut self, results: &[Vec<io::Result<Vec<IpAddr>>>]) {
        for ((list, l), results) in self.start.lists.iter_mut().zip(results) {
            let list = *list;
            if l.names().is_empty() {
                continue;
            }
            let r = l.refresh(results);
            self.stats.refreshed(list, r.kept_last_good);
            if r.kept_last_good {
                let failed: Vec<String> = l
                    .names()
                    .iter()
                    .zip(results)
                    .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
                    .collect();
                tracing::warn!(
                    list = list_name(list),
                    kept = r.set.len(),
                    failed = ?failed,
                    "SSM refresh failed for some names; keeping their last good addresses"
                );
            }
            if r.changed() {
                tracing::info!(list = list_name(list), join = ?r.diff.join, leave = ?r.diff.leave, "SSM sources moved");
                let diffs = self.start.table.apply(list, &r.diff);
                let _ = self.membership.apply(&diffs, &self.stats);
            }
            self.stats.set_list(list, l);
        }
    }
}

/// What the driver did, for `/metrics` and `/debug/ssm`.
#[derive(Debug, Default)]
pub struct SsmStats {
    inner: Mutex<SsmView>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct SsmView {
    mode: &'static str,
    bind_source: Option<Ipv6Addr>,
    refresh_secs: u64,
    /// The live `(S,G)` set: group address → its sources and worker.
    groups: BTreeMap<String, GroupView>,
    /// Each configured list's current set.
    lists: BTreeMap<&'static str, Vec<Ipv6Addr>>,
    joins: u64,
    leaves: u64,
    join_errors: u64,
    leave_errors: u64,
    refreshes: BTreeMap<&'static str, u64>,
    refresh_failures: BTreeMap<&'static str, u64>,
    /// Shard manifests stored (new or refreshed).
    manifests_accepted: u64,
    /// Shard manifests refused, by reason.
    manifests_rejected: BTreeMap<&'static str, u64>,
    /// Announcers with a live manifest.
    manifest_announcers: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
struct GroupView {
    index: u16,
    role: &'static str,
    /// The worker whose ingress socket holds the memberships (`None`: the
    /// control thread's manifest socket).
    worker: Option<usize>,
    sources: Vec<Ipv6Addr>,
}

impl SsmStats {
    fn new(start: &SsmStart) -> Self {
        let view = SsmView {
            mode: start.posture.mode.name(),
            bind_source: start.posture.bind_source,
            refresh_secs: start.posture.refresh.as_secs(),
            ..SsmView::default()
        };
        SsmStats { inner: Mutex::new(view) }
    }

    fn view(&self) -> SsmView {
        self.inner.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record(
        &self,
        index: u16,
        group: Ipv6Addr,
        source: Ipv6Addr,
        op: SourceMembership,
        worker: Option<usize>,
        r: &io::Result<()>,
    ) {
        let Ok(mut v) = self.inner.lock() else { return };
        match (op, r.is_ok()) {
            (SourceMembership::Join, true) => v.joins += 1,
            (SourceMembership::Join, false) => v.join_errors += 1,
            (SourceMembership::Leave, true) => v.leaves += 1,
            (SourceMembership::Leave, false) => v.leave_errors += 1,
        }
        let g = v.groups.entry(group.to_string()).or_insert_with(|| GroupView {
            index,
            role: role(index),
            worker,
            sources: Vec::new(),
        });
        match op {
            SourceMembership::Join if r.is_ok() => {
                if let Err(at) = g.sources.binary_search(&source) {
                    g.sources.insert(at, source);
                }
            }
            // A failed leave leaves the kernel's state unknown; the table
            // has dropped the source, so the view does too.
            SourceMembership::Leave => g.sources.retain(|s| *s != source),
            SourceMembership::Join => {}
        }
        if g.sources.is_empty() {
            v.groups.remove(&group.to_string());
        }
    }

    fn set_list(&self, list: SourceList, l: &BootstrapList) {
        if let Ok(mut v) = self.inner.lock() {
            v.lists.insert(list_name(list), l.current().iter().copied().collect());
        }
    }

    fn manifest(&self, outcome: Result<(), &'static str>) {
        if let Ok(mut v) = self.inner.lock() {
            match outcome {
                Ok(()) => v.manifests_accepted += 1,
                Err(reason) => *v.manifests_rejected.entry(reason).or_default() += 1,
            }
        }
    }

    fn set_publishers(&self, publishers: Vec<Ipv6Addr>, announcers: usize) {
        if let Ok(mut v) = self.inner.lock() {
            v.lists.insert(list_name(SourceList::ManifestPublishers), publishers);
            v.manifest_announcers = announcers;
        }
    }

    fn refreshed(&self, list: SourceList, failed: bool) {
        if let Ok(mut v) = self.inner.lock() {
            *v.refreshes.entry(list_name(list)).or_default() += 1;
            if failed {
                *v.refresh_failures.entry(list_name(list)).or_default() += 1;
            }
        }
    }
}

impl crate::metrics::Section for SsmStats {
    fn name(&self) -> &'static str {
        "ssm"
    }

    fn metrics(&self, out: &mut String) {
        use crate::metrics::{gauge, labelled};
        let v = self.view();
        let mut by_role: BTreeMap<&'static str, u64> =
            ["data", "block", "beacon", "subtree"].into_iter().map(|r| (r, 0)).collect();
        for g in v.groups.values() {
            *by_role.entry(g.role).or_default() += g.sources.len() as u64;
        }
        let rows: Vec<(String, u64)> =
            by_role.iter().map(|(r, n)| (format!("role=\"{r}\""), *n)).collect();
        labelled(
            out,
            "ricochet_ssm_sources_joined",
            "gauge",
            "(S,G) memberships held now, summed over the groups of each role.",
            &rows,
        );
        let groups = v.groups.len() as u64;
        gauge(
            out,
            "ricochet_ssm_groups_joined",
            "Groups with at least one (S,G) membership.",
            groups as f64,
        );
        labelled(
            out,
            "ricochet_ssm_membership_changes_total",
            "counter",
            "MCAST_JOIN_SOURCE_GROUP / MCAST_LEAVE_SOURCE_GROUP calls, by operation and result.",
            &[
                ("op=\"join\",result=\"ok\"".into(), v.joins),
                ("op=\"join\",result=\"error\"".into(), v.join_errors),
                ("op=\"leave\",result=\"ok\"".into(), v.leaves),
                ("op=\"leave\",result=\"error\"".into(), v.leave_errors),
            ],
        );
        let lists: Vec<&'static str> = v.lists.keys().copied().collect();
        let per_list = |m: &BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
            lists
                .iter()
                .map(|l| (format!("list=\"{l}\""), m.get(l).copied().unwrap_or(0)))
                .collect()
        };
        labelled(
            out,
            "ricochet_ssm_refreshes_total",
            "counter",
            "Re-resolutions of SSM source lists that hold DNS names.",
            &per_list(&v.refreshes),
        );
        labelled(
            out,
            "ricochet_ssm_refresh_failures_total",
            "counter",
            "Refreshes in which a name failed to resolve, or the list would have been empty; \
             the last good addresses were kept.",
            &per_list(&v.refresh_failures),
        );
        let sizes: Vec<(String, u64)> =
            v.lists.iter().map(|(l, s)| (format!("list=\"{l}\""), s.len() as u64)).collect();
        labelled(
            out,
            "ricochet_ssm_list_sources",
            "gauge",
            "Addresses each SSM source list holds now (literals and resolved names).",
            &sizes,
        );
        labelled(
            out,
            "ricochet_ssm_manifests_total",
            "counter",
            "BRC-139 shard manifests read on the beacon group: accepted, or rejected by reason \
             (not_emitter: sender not in --ssm-bootstrap-manifest; malformed; cap).",
            &std::iter::once(("result=\"accepted\"".to_owned(), v.manifests_accepted))
                .chain(["not_emitter", "malformed", "cap"].into_iter().map(|r| {
                    (
                        format!("result=\"rejected\",reason=\"{r}\""),
                        v.manifests_rejected.get(r).copied().unwrap_or(0),
                    )
                }))
                .collect::<Vec<_>>(),
        );
        gauge(
            out,
            "ricochet_ssm_manifest_announcers",
            "Manifest emitters with a live (unexpired) shard manifest.",
            v.manifest_announcers as f64,
        );
    }

    fn debug(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_without_a_resolver_and_skip_the_own_source() {
        use ricochet_proto::ssm::posture::{SsmFlags, validate};
        use ricochet_wire::group::{Scope, SourceMode};
        let statics = vec!["fd20::1".to_owned(), "fd20::9".to_owned()];
        let flags = SsmFlags {
            source_mode: SourceMode::Ssm,
            scope: Scope::Site,
            bind_source: Some("fd20::9"),
            bootstrap_manifest: &[],
            bootstrap_beacon: &[],
            bootstrap_subtree_announce: &[],
            publishers_static: &statics,
            bootstrap_refresh: std::time::Duration::from_secs(30),
        };
        let start = SsmStart::resolve(validate(&flags).unwrap()).unwrap();
        assert_eq!(
            start.sources(0),
            ["fd20::1".parse::<Ipv6Addr>().unwrap()],
            "own source skipped"
        );
        assert!(start.sources(INDEX_BLOCK).is_empty());
    }

    fn a(i: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, i)
    }

    /// The `(S,G)` filters the kernel holds for `group` on `lo`.
    fn kernel_sources(group: Ipv6Addr) -> Vec<Ipv6Addr> {
        let hex = format!("{:032x}", u128::from(group));
        let text = std::fs::read_to_string("/proc/thread-self/net/mcfilter6").unwrap_or_default();
        let mut out: Vec<Ipv6Addr> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 6 && f[2] == hex && f[4] != "0")
                    .then(|| u128::from_str_radix(f[3], 16).ok().map(Ipv6Addr::from))
                    .flatten()
            })
            .collect();
        out.sort();
        out
    }

    /// The driver against the real kernel, on `lo`: the start joins the
    /// resolved source on every group; a failed refresh keeps it (counted);
    /// a moved name joins the new source and leaves the old one, and the
    /// kernel's filters follow exactly.
    #[test]
    fn refresh_joins_and_leaves_only_what_moved() {
        use ricochet_proto::ssm::posture::BootstrapEntry;
        use ricochet_wire::group::{Scope, SourceMode};
        let mut o = crate::rt::dht_shard::tests::options(1);
        o.dht = None;
        // A group id of this test's own, so parallel tests never share it.
        let group_id = 0x5A00 | (std::process::id() as u16 & 0xFF);
        o.addressing = Addressing::Ipv6 {
            mode: SourceMode::Ssm,
            scope: Scope::Site,
            group_id,
            interface_index: 1,
        };
        o.groups = vec![0, 1];
        let statics = vec!["fd20::1".to_owned(), "publisher.example".to_owned()];
        let flags = ricochet_proto::ssm::posture::SsmFlags {
            source_mode: SourceMode::Ssm,
            scope: Scope::Site,
            bind_source: None,
            bootstrap_manifest: &[],
            bootstrap_beacon: &[],
            bootstrap_subtree_announce: &[],
            publishers_static: &statics,
            bootstrap_refresh: std::time::Duration::from_secs(30),
        };
        let posture = ricochet_proto::ssm::posture::validate(&flags).unwrap();
        assert_eq!(posture.publishers_static[1], BootstrapEntry::Name("publisher.example".into()));
        // Resolved by hand: no resolver in a unit test.
        let mut list = BootstrapList::new(SourceList::PublishersStatic, &posture.publishers_static);
        let mut table = JoinTable::new(None);
        let d = list.start(&[Ok::<_, io::Error>(vec![IpAddr::V6(a(2))])]).unwrap();
        table.apply(SourceList::PublishersStatic, &d);
        let start = SsmStart {
            posture,
            lists: vec![(SourceList::PublishersStatic, list)],
            table,
            manifest_port: None,
        };
        let sock = crate::rt::socket::ingress(&o, &[0, 1]).unwrap();
        let shares = [vec![0, 1]];
        let mut ssm = Ssm::join_all(start, &o, &shares, std::slice::from_ref(&sock)).unwrap();
        let g = |i| {
            ricochet_wire::group::ipv6_group(SourceMode::Ssm, Scope::Site, group_id, i).unwrap()
        };
        for i in [0, 1] {
            assert_eq!(kernel_sources(g(i)), [a(1), a(2)], "group {i} at start");
        }
        // The name fails: its last answer stays joined; the failure counts.
        ssm.refresh(&[vec![Err(io::Error::other("resolver down"))]]);
        for i in [0, 1] {
            assert_eq!(kernel_sources(g(i)), [a(1), a(2)], "group {i} after a failure");
        }
        let v = ssm.stats.view();
        assert_eq!(
            (v.refreshes["publishers_static"], v.refresh_failures["publishers_static"]),
            (1, 1)
        );
        assert_eq!((v.joins, v.leaves), (4, 0));
        // The name moves: only a(2) is left and a(3) joined; a(1) untouched.
        ssm.refresh(&[vec![Ok(vec![IpAddr::V6(a(3)), "192.0.2.1".parse().unwrap()])]]);
        for i in [0, 1] {
            assert_eq!(kernel_sources(g(i)), [a(1), a(3)], "group {i} after the move");
        }
        let v = ssm.stats.view();
        assert_eq!((v.joins, v.leaves, v.join_errors, v.leave_errors), (6, 2, 0, 0));
        assert_eq!(v.groups[&g(0).to_string()].sources, [a(1), a(3)]);
        assert_eq!(v.lists["publishers_static"], [a(1), a(3)]);
        let mut text = String::new();
        crate::metrics::Section::metrics(&*ssm.stats, &mut text);
        assert!(text.contains("ricochet_ssm_sources_joined{role=\"data\"} 4\n"), "{text}");
        assert!(
            text.contains("ricochet_ssm_refresh_failures_total{list=\"publishers_static\"} 1\n"),
            "{text}"
        );
        drop(sock);
        drop(ssm);
        assert!(kernel_sources(g(0)).is_empty(), "closing the sockets leaves every group");
    }

    #[test]
    fn roles_follow_the_group_index() {
        assert_eq!(role(0), "data");
        assert_eq!(role(0x1000), "data");
        assert_eq!(role(INDEX_BLOCK), "block");
        assert_eq!(role(INDEX_SUBTREE), "subtree");
        assert_eq!(role(INDEX_BEACON), "beacon");
    }
}
