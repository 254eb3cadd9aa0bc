//! The routing table: 256 k-buckets ordered by XOR distance from our id.
//!
//! # Contract
//! - Bucket `i` holds at most `k` live entries (least recently seen first)
//!   and a replacement cache of at most `replacements` candidates.
//! - **Liveness-aware replacement** (Kademlia §2.2): a newcomer for a full
//!   bucket never evicts a responsive entry. It replaces an entry that is
//!   already [`Health::Bad`]; otherwise it waits in the replacement cache
//!   and the caller is asked ([`Observed::Probe`]) to ping the bucket's
//!   least-recently-seen entry, which is evicted only after failing
//!   `bad_after` requests in a row. Hence a flood of new ids or addresses,
//!   from one source or many, can churn the replacement cache but cannot
//!   push out good entries.
//! - **Subnet limits**: at most `bucket_subnet_limit` entries per /24 (IPv4)
//!   or /64 (IPv6) in one bucket, `table_subnet_limit` in the whole table,
//!   and the same per-bucket limit in each replacement cache. Loopback
//!   addresses are exempt unless `limit_loopback` is set (so several
//!   endpoints on one lab host can find each other).
//! - **Health** is derived from observations, never stored: `Bad` after
//!   `bad_after` consecutive failed requests, `Good` if the peer answered
//!   one of our requests within `good_for`, `Unknown` otherwise (seen only
//!   through its own requests, or not lately). Each failure also sets an
//!   exponential back-off (`backoff_base · 2^(n-1)`, capped at
//!   `backoff_max`) during which lookups do not pick the peer.
//! - Only a reply to our own request (matched by transaction id and
//!   address) proves a peer's liveness. A known id is never moved to a new
//!   address while its entry is `Good`; a request from a new address under
//!   a known id is refused as [`Refusal::AddrConflict`].

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::BTreeMap;
use std::time::Instant;

use ricochet_wire::dht::NodeInfo;

use super::id::{Distance, ID_BITS, NodeId};

/// Routing-table limits and timings.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    /// Bucket size, Kademlia's k.
    pub k: usize,
    /// Replacement-cache size per bucket.
    pub replacements: usize,
    /// Most entries from one /24 (IPv4) or /64 (IPv6) in one bucket.
    pub bucket_subnet_limit: usize,
    /// Most entries from one /24 or /64 in the whole table.
    pub table_subnet_limit: usize,
    /// Apply the subnet limits to loopback addresses too.
    pub limit_loopback: bool,
    /// Consecutive failures after which a peer is [`Health::Bad`].
    pub bad_after: u32,
    /// Consecutive failures after which a peer is removed even when no
    /// replacement is waiting.
    pub remove_after: u32,
    /// How long a reply keeps a peer [`Health::Good`].
    pub good_for: Duration,
    /// A full bucket's least-recently-seen entry is pinged for a newcomer
    /// only if it has not been heard from for this long.
    pub probe_after: Duration,
    /// Back-off after the first failure; doubles with each further one.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            k: 20,
            replacements: 10,
            bucket_subnet_limit: 2,
            table_subnet_limit: 10,
            limit_loopback: false,
            bad_after: 2,
            remove_after: 5,
            good_for: Duration::from_secs(15 * 60),
            probe_after: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// A peer's health as seen from its answers to our requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Health {
    /// Answered one of our requests recently, no failure since.
    Good,
    /// No recent answer, but not failing either.
    Unknown,
    /// Failed `bad_after` requests in a row.
    Bad,
}

/// How a peer was heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    /// It sent us a request (its liveness is not proven: UDP sources can be
    /// forged, and it may not be reachable).
    Request,
    /// It answered our request, matched by transaction id and address.
    Reply {
        /// Round-trip time of that request.
        rtt: Duration,
    },
}

/// What [`RoutingTable::observe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A known entry was refreshed.
    Updated,
    /// A new entry was added to a bucket with room.
    Inserted,
    /// A new entry took the place of a [`Health::Bad`] one.
    Replaced {
        /// The evicted peer.
        evicted: NodeId,
    },
    /// The peer waits in the bucket's replacement cache.
    Cached,
    /// The peer waits in the replacement cache; ping this least-recently-
    /// seen entry and report the outcome through [`RoutingTable::observe`]
    /// or [`RoutingTable::on_failure`].
    Probe(NodeInfo),
    /// The peer was not taken.
    Refused(Refusal),
}

/// Why a peer was not taken into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The id is our own.
    OwnId,
    /// Its /24 or /64 already has its share of the bucket or table.
    SubnetLimit,
    /// A good entry with this id sits at another address.
    AddrConflict,
}

/// What [`RoutingTable::on_failure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer is not in the table (or is there under another address).
    Unknown,
    /// Failure recorded; the peer stays.
    Marked,
    /// The peer was removed (a replacement was promoted if one was waiting).
    Removed,
}

/// One routing-table entry.
#[derive(Debug, Clone)]
pub struct Entry {
    id: NodeId,
    /// `id.words()`, cached: distances are computed per lookup per entry.
    words: [u64; 4],
    addr: SocketAddr,
    /// `addr`'s subnet for the limits (`None` if exempt).
    subnet: Option<Subnet>,
    last_seen: Instant,
    last_reply: Option<Instant>,
    failures: u32,
    backoff_until: Option<Instant>,
    rtt: Option<Duration>,
}

impl Entry {
    fn new(now: Instant, id: NodeId, addr: SocketAddr, subnet: Option<Subnet>) -> Self {
        Entry {
            id,
            words: id.words(),
            addr,
            subnet,
            last_seen: now,
            last_reply: None,
            failures: 0,
            backoff_until: None,
            rtt: None,
        }
    }

    /// The peer's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Where the peer takes DHT datagrams.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer as a wire node.
    pub fn info(&self) -> NodeInfo {
        NodeInfo { id: self.id.0, addr: self.addr }
    }

    /// When anything was last heard from the peer.
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }

    /// When the peer last answered one of our requests.
    pub fn last_reply(&self) -> Option<Instant> {
        self.last_reply
    }

    /// Consecutive failed requests.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Whether a failure back-off is running at `now`.
    pub fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }

    /// The peer's health at `now` under `settings`.
    pub fn health(&self, now: Instant, settings: &RoutingSettings) -> Health {
        if self.failures >= settings.bad_after {
            Health::Bad
        } else if self
            .last_reply
            .is_some_and(|t| now.saturating_duration_since(t) < settings.good_for)
        {
            Health::Good
        } else {
            Health::Unknown
        }
    }

    fn touch(&mut self, now: Instant, contact: Contact) {
        self.last_seen = now;
        if let Contact::Reply { rtt } = contact {
            self.last_reply = Some(now);
            self.failures = 0;
            self.backoff_until = None;
            self.rtt = Some(rtt);
        }
    }
}

/// Which entries [`RoutingTable::closest`] may return.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Leave out this id (typically the requester).
    pub exclude: Option<NodeId>,
    /// Leave out [`Health::Bad`] entries.
    pub skip_bad: bool,
    /// Leave out entries in failure back-off.
    pub skip_backoff: bool,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Oldest first.
    replacements: Vec<Entry>,
    /// The entry being pinged on behalf of a waiting replacement.
    probe: Option<NodeId>,
    /// Last lookup in this bucket's range, or last reply from its members.
    last_activity: Option<Instant>,
}

/// Sorts a short run of (distance, entry) pairs by distance. At most
/// k + a few elements arrive here; a plain insertion sort on the first
/// distance word (the rest only on ties) beats the generic sort by a wide
/// margin in debug builds, which the simulation runs in.
fn insertion_sort(v: &mut [(Distance, &Entry)]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && less(&v[j].0, &v[j - 1].0) {
            v.swap(j, j - 1);
            j -= 1;
        }
    }
}

fn less(a: &Distance, b: &Distance) -> bool {
    if a.0[0] != b.0[0] { a.0[0] < b.0[0] } else { a < b }
}

/// The /24 (IPv4) or /64 (IPv6) an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Subnet {
    V4([u8; 3]),
    V6([u8; 8]),
}

/// 256 k-buckets around our own id.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    settings: RoutingSettings,
    buckets: Vec<Bucket>,
    /// Entries per subnet across all buckets (replacement caches excluded).
    subnets: BTreeMap<Subnet, u32>,
    len: usize,
    /// Index of the nearest non-empty bucket ([`ID_BITS`] when empty): the
    /// buckets below it are empty, so scans start here.
    lowest: usize,
}

impl RoutingTable {
    /// An empty table around `own`.
    pub fn new(own: NodeId, settings: RoutingSettings) -> Self {
        RoutingTable {
            own,
            settings,
            buckets: vec![Bucket::default(); ID_BITS],
            subnets: BTreeMap::new(),
            len: 0,
            lowest: ID_BITS,
        }
    }

    /// Our own id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The settings in force.
    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// Number of entries (replacement caches excluded).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket `id` falls in (`None` for our own id).
    pub fn bucket_of(&self, id: &NodeId) -> Option<usize> {
        self.own.distance(id).bucket()
    }

    /// The entry for `id`, if it is in a bucket.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let b = self.bucket_of(id)?;
        self.buckets[b].entries.iter().find(|e| e.id == *id)
    }

    /// Every entry with its bucket index, nearest buckets first.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Entry)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .skip(self.lowest)
            .flat_map(|(i, b)| b.entries.iter().map(move |e| (i, e)))
    }

    /// Number of peers waiting in replacement caches.
    pub fn replacements_len(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Records that `id` at `addr` was heard from (see the module docs).
    pub fn observe(
        &mut self,
        now: Instant,
        id: NodeId,
        addr: SocketAddr,
        contact: Contact,
    ) -> Observed {
        let Some(b) = self.bucket_of(&id) else {
            return Observed::Refused(Refusal::OwnId);
        };
        let settings = &self.settings;
        let bucket = &mut self.buckets[b];
        if let Contact::Reply { .. } = contact {
            bucket.last_activity = Some(now);
        }
        if let Some(pos) = bucket.entries.iter().position(|e| e.id == id) {
            let old_addr = bucket.entries[pos].addr;
            if old_addr != addr {
                let movable = matches!(contact, Contact::Reply { .. })
                    && bucket.entries[pos].health(now, settings) != Health::Good;
                if !movable {
                    return Observed::Refused(Refusal::AddrConflict);
                }
                let (old, new) = (self.buckets[b].entries[pos].subnet, self.subnet(addr.ip()));
                if old != new {
                    if !self.subnet_has_room(b, new, Some(pos)) {
                        return Observed::Refused(Refusal::SubnetLimit);
                    }
                    self.unaccount(old);
                    self.account(new);
                }
                self.buckets[b].entries[pos].subnet = new;
            }
            let bucket = &mut self.buckets[b];
            let mut entry = bucket.entries.remove(pos);
            entry.addr = addr;
            entry.touch(now, contact);
            if bucket.probe == Some(id) && matches!(contact, Contact::Reply { .. }) {
                bucket.probe = None;
            }
            bucket.entries.push(entry);
            return Observed::Updated;
        }
        if let Some(pos) = bucket.replacements.iter().position(|e| e.id == id) {
            let mut entry = bucket.replacements.remove(pos);
            if entry.addr == addr {
                entry.touch(now, contact);
                bucket.replacements.push(entry);
                return Observed::Cached;
            }
            // A new address: re-admit as a newcomer, through the limits.
        }
        let subnet = self.subnet(addr.ip());
        if !self.subnet_has_room(b, subnet, None) {
            return self.cache(now, b, id, addr, contact, subnet);
        }
        let mut entry = Entry::new(now, id, addr, subnet);
        entry.touch(now, contact);
        let settings = &self.settings;
        let bucket = &mut self.buckets[b];
        if bucket.entries.len() < settings.k {
            bucket.entries.push(entry);
            self.len += 1;
            self.lowest = self.lowest.min(b);
            self.account(subnet);
            return Observed::Inserted;
        }
        // Full: the worst Bad entry (most failures, then least recently seen)
        // gives way at once.
        let worst_bad = bucket
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.health(now, settings) == Health::Bad)
            .max_by_key(|(i, e)| (e.failures, usize::MAX - i))
            .map(|(i, _)| i);
        if let Some(pos) = worst_bad {
            let evicted = bucket.entries.remove(pos);
            if bucket.probe == Some(evicted.id) {
                bucket.probe = None;
            }
            bucket.entries.push(entry);
            self.unaccount(evicted.subnet);
            self.account(subnet);
            return Observed::Replaced { evicted: evicted.id };
        }
        self.cache(now, b, id, addr, contact, subnet)
    }

    /// Records a failed request to `id` at `addr` (a timeout, or a reply
    /// from another id). See the module docs for back-off and eviction.
    pub fn on_failure(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) -> Failure {
        let Some(b) = self.bucket_of(id) else {
            return Failure::Unknown;
        };
        let settings = &self.settings;
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.replacements.iter().position(|e| e.id == *id && e.addr == addr) {
            bucket.replacements.remove(pos);
            return Failure::Removed;
        }
        let Some(pos) = bucket.entries.iter().position(|e| e.id == *id && e.addr == addr) else {
            return Failure::Unknown;
        };
        if bucket.probe == Some(*id) {
            bucket.probe = None;
        }
        let e = &mut bucket.entries[pos];
        e.failures = e.failures.saturating_add(1);
        let shift = (e.failures - 1).min(20);
        let backoff = settings.backoff_base.saturating_mul(1u32 << shift).min(settings.backoff_max);
        e.backoff_until = Some(now + backoff);
        let remove = e.failures >= settings.remove_after
            || (e.failures >= settings.bad_after && !bucket.replacements.is_empty());
        if !remove {
            return Failure::Marked;
        }
        let removed = bucket.entries.remove(pos);
        self.len -= 1;
        self.unaccount(removed.subnet);
        self.promote(b);
        if b == self.lowest && self.buckets[b].entries.is_empty() {
            self.lowest =
                self.buckets.iter().position(|b| !b.entries.is_empty()).unwrap_or(ID_BITS);
        }
        Failure::Removed
    }

    /// Up to `count` entries closest to `target`, nearest first.
    pub fn closest(
        &self,
        now: Instant,
        target: &NodeId,
        count: usize,
        filter: Filter,
    ) -> Vec<&Entry> {
        let mut out: Vec<(Distance, &Entry)> = Vec::with_capacity(count + self.settings.k);
        // Entries of bucket j have distance from `target` with top bit j for
        // j > b, below 2^b for j = b, and top bit b for every j < b. So the
        // order is: bucket b, then buckets below b together, then b+1, b+2…
        match self.bucket_of(target) {
            None => {
                for bucket in self.buckets.iter().skip(self.lowest) {
                    if out.len() >= count {
                        break;
                    }
                    let need = count - out.len();
                    self.gather(now, target, core::slice::from_ref(bucket), filter, need, &mut out);
                }
            }
            Some(b) => {
                self.gather(now, target, &self.buckets[b..=b], filter, count, &mut out);
                if out.len() < count {
                    let need = count - out.len();
                    let lo = self.lowest.min(b);
                    self.gather(now, target, &self.buckets[lo..b], filter, need, &mut out);
                }
                for bucket in &self.buckets[b + 1..] {
                    if out.len() >= count {
                        break;
                    }
                    let need = count - out.len();
                    self.gather(now, target, core::slice::from_ref(bucket), filter, need, &mut out);
                }
            }
        }
        out.truncate(count);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// Appends the `need` entries of `buckets` closest to `target` that
    /// pass `filter`, nearest first.
    fn gather<'t>(
        &self,
        now: Instant,
        target: &NodeId,
        buckets: &'t [Bucket],
        filter: Filter,
        need: usize,
        out: &mut Vec<(Distance, &'t Entry)>,
    ) {
        let start = out.len();
        let t = target.words();
        let exclude = filter.exclude.map(|x| x.words());
        let bad_after = self.settings.bad_after;
        for bucket in buckets {
            for e in &bucket.entries {
                if exclude == Some(e.words)
                    || (filter.skip_bad && e.failures >= bad_after)
                    || (filter.skip_backoff && e.in_backoff(now))
                {
                    continue;
                }
                out.push((Distance::between(&e.words, &t), e));
            }
        }
        if need == 0 {
            out.truncate(start);
            return;
        }
        let group = &mut out[start..];
        if group.len() > need {
            group.select_nth_unstable_by(need - 1, |a, b| a.0.cmp(&b.0));
            out.truncate(start + need);
        }
        insertion_sort(&mut out[start..]);
    }

    /// Buckets due for a refresh lookup: from the nearest non-empty bucket
    /// outwards, those with no lookup in their range and no reply from a
    /// member within `interval`.
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<usize> {
        let Some(first) = self.nearest_bucket() else {
            return Vec::new();
        };
        (first..ID_BITS)
            .filter(|&i| {
                self.buckets[i]
                    .last_activity
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
            })
            .collect()
    }

    /// Notes a lookup in bucket `bucket`'s range.
    pub fn mark_activity(&mut self, now: Instant, bucket: usize) {
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.last_activity = Some(now);
        }
    }

    /// Index of the nearest non-empty bucket.
    pub fn nearest_bucket(&self) -> Option<usize> {
        (self.lowest < ID_BITS).then_some(self.lowest)
    }

    /// Up to `max` peers for a restart cache: good ones first, most recently
    /// answered first; bad ones never.
    pub fn export(&self, now: Instant, max: usize) -> Vec<NodeInfo> {
        let mut all: Vec<&Entry> = self
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.health(now, &self.settings) != Health::Bad)
            .collect();
        all.sort_by_key(|e| {
            (e.health(now, &self.settings), core::cmp::Reverse(e.last_reply), e.id)
        });
        all.into_iter().take(max).map(Entry::info).collect()
    }

    fn cache(
        &mut self,
        now: Instant,
        b: usize,
        id: NodeId,
        addr: SocketAddr,
        contact: Contact,
        subnet: Option<Subnet>,
    ) -> Observed {
        let limit = self.settings.bucket_subnet_limit;
        let cap = self.settings.replacements;
        let probe_after = self.settings.probe_after;
        if let Some(s) = subnet {
            let same = self.buckets[b].replacements.iter().filter(|e| e.subnet == Some(s)).count();
            if same >= limit {
                return Observed::Refused(Refusal::SubnetLimit);
            }
        }
        if cap == 0 {
            return Observed::Refused(Refusal::SubnetLimit);
        }
        let bucket = &mut self.buckets[b];
        let mut entry = Entry::new(now, id, addr, subnet);
        entry.touch(now, contact);
        if bucket.replacements.len() >= cap {
            bucket.replacements.remove(0);
        }
        bucket.replacements.push(entry);
        if bucket.probe.is_none()
            && bucket.entries.len() >= self.settings.k
            && let Some(lrs) = bucket.entries.first()
            && now.saturating_duration_since(lrs.last_seen) >= probe_after
        {
            bucket.probe = Some(lrs.id);
            return Observed::Probe(lrs.info());
        }
        Observed::Cached
    }

    /// Moves the most recent replacement that fits the subnet limits into
    /// bucket `b`.
    fn promote(&mut self, b: usize) {
        while let Some(candidate) = self.buckets[b].replacements.pop() {
            let subnet = candidate.subnet;
            if self.subnet_has_room(b, subnet, None) {
                self.buckets[b].entries.push(candidate);
                self.len += 1;
                self.lowest = self.lowest.min(b);
                self.account(subnet);
                return;
            }
        }
    }

    fn subnet(&self, ip: IpAddr) -> Option<Subnet> {
        let ip = ip.to_canonical();
        if ip.is_loopback() && !self.settings.limit_loopback {
            return None;
        }
        Some(match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Subnet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&v6.octets()[..8]);
                Subnet::V6(p)
            }
        })
    }

    /// Whether `subnet` may have one more entry in bucket `b` and in the
    /// table; `ignore` is an entry of `b` not to count (one being moved).
    fn subnet_has_room(&self, b: usize, subnet: Option<Subnet>, ignore: Option<usize>) -> bool {
        let Some(s) = subnet else { return true };
        if self.subnets.get(&s).copied().unwrap_or(0) as usize >= self.settings.table_subnet_limit {
            return false;
        }
        let in_bucket = self.buckets[b]
            .entries
            .iter()
            .enumerate()
            .filter(|(i, e)| Some(*i) != ignore && e.subnet == Some(s))
            .count();
        in_bucket < self.settings.bucket_subnet_limit
    }

    fn account(&mut self, subnet: Option<Subnet>) {
        if let Some(s) = subnet {
            *self.subnets.entry(s).or_insert(0) += 1;
        }
    }

    fn unaccount(&mut self, subnet: Option<Subnet>) {
        if let Some(s) = subnet
            && let Some(n) = self.subnets.get_mut(&s)
        {
            *n -= 1;
            if *n == 0 {
                self.subnets.remove(&s);
            }
        }
    }
}
