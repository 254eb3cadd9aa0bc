//! Upstream discovery through the DHT: the daemon's driver for
//! [`crate::dht::Node`] (issue 7).
//!
//! With `--dht-enabled` (or `--upstream-discovery dht`) the endpoint is a
//! DHT node on UDP `--dht-port`, bound like the NACK socket (`NACK_ADDR` if
//! set, else `0.0.0.0` in `--ipv4-lab`, else `[::]` dual-stack). With a `--domain` it publishes a signed endpoint record —
//! its NACK address and port, ADVERT tier, preference and flags, the
//! domain id and its shard bits — under the domain's topic key
//! ([`ricochet_wire::endpoint::domain_topic_key`], `docs/PROTOCOL.md`
//! § "Domain topic keys"), re-signed with a higher seq every
//! `--dht-refresh` and with a TTL of three refresh periods (at least 10 s). With
//! `--upstream-discovery dht --upstream-domain NAME` it looks that
//! domain's key up every `--dht-refresh` and hands the workers the static
//! `UPSTREAM_RETRY_ENDPOINTS` followed by the endpoints found
//! ([`rt::Control::set_upstreams`]). The rules (which records count, the
//! order, when an endpoint drops out) are in [`machine`].
//!
//! # Where it runs
//! As DESIGN.md § "Process model" has it: the DHT runs over UDP
//! `--dht-port` on the workers. Worker `i` owns member `i` of an
//! SO_REUSEPORT group on the port and its own [`crate::dht::Node`] — all
//! with this endpoint's node key, so peers see one node at one address —
//! with its own routing table and the store shard of the keys it owns
//! (`rt::dht_shard` has the rules). A classic-BPF program steers each
//! datagram to its owner: a FIND_NODE/FIND_VALUE/STORE by the key at its
//! fixed offset ([`rt::key_owner`]), a response by the transaction id's
//! first byte, which every worker's node sets to its own index (mod the
//! worker count), a PING by the sender id. Where the program cannot be
//! attached, the worker that reads a datagram it does not own hands it to
//! the owner (one hop, `ricochet_dht_forwarded_total`). The distinct-key
//! cap (100 000) is the endpoint's: each shard holds at most its share,
//! `⌈100 000 / workers⌉` keys.
//!
//! This driver is the control thread's part: a tokio task with the
//! timer-driven rules of [`machine`] (publish our record, look the upstream
//! domain up, drain, hand the upstream list over). It holds no node and no
//! socket: it sends each operation to the worker owning its key
//! ([`rt::Control::dht`]; a bootstrap to every worker) and gets the result
//! back on a channel it awaits. The workers publish their nodes' state
//! with their other statistics every 100 ms; `/debug/dht` and the
//! `ricochet_dht_*` metrics add it up and show it per worker.
//!
//! # Contract
//! - Startup errors (key file, socket bind) name the flag and the fix;
//!   nothing after startup stops the endpoint: DNS and send errors are
//!   logged or counted (`ricochet_dht_socket_errors_total`) and the nodes
//!   retry on their timers.
//! - Every datagram goes to a node, which drops and counts anything
//!   malformed, unsolicited or over rate.
//! - Addresses are canonical inside the nodes (IPv4-mapped IPv6 sources
//!   become IPv4); on a dual-stack socket IPv4 destinations are sent
//!   IPv4-mapped.
//! - Every worker bootstraps from the peer cache, `--dht-bootstrap` and
//!   the good peers any worker knows (so a seed's workers learn from each
//!   other), again while some worker's routing table is empty.
//! - While the endpoint drains, and when the driver stops
//!   ([`Running::stop`], after at most [`STOP_GRACE`] for the put), our
//!   record is republished with the Draining flag, so downstream endpoints
//!   drop it at their next lookup rather than after its TTL.
//! - The peer cache (the good peers of every worker) is saved every
//!   [`PEER_CACHE_INTERVAL`] and on a clean stop, only when there are
//!   peers.
//! - The discovery state is shared with `/debug/dht` and `/metrics`
//!   through one mutex that is never held across an `await`.

pub mod files;
pub use ricochet_proto::discovery as machine;
pub mod section;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ricochet_wire::dht::NodeInfo;

use crate::addr::canonical;
use crate::config::{Config, Host, HostPort, UpstreamDiscovery};
use crate::dht;
use crate::rt::{self, beacon::BeaconSettings};
use crate::wallclock::unix_secs;

pub use self::machine::{Command, Core, CoreSettings, Family, Publish, Source, Upstream};
pub use self::section::DhtSection;

/// How often the peer cache is saved while running.
pub const PEER_CACHE_INTERVAL: Duration = Duration::from_secs(60);
/// Most peers saved in the peer cache.
pub const PEER_CACHE_PEERS: usize = 64;
/// How often the driver checks draining, retries a refused upstream
/// hand-over, reads the workers' routing tables and re-anchors wall-clock
/// time.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Longest a stopping driver waits for its Draining record's put.
pub const STOP_GRACE: Duration = Duration::from_millis(500);
/// Longest wait for a bootstrap host name to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Results the workers may queue for the driver; the core caps what it
/// asks for far below this, and a result that does not fit is given up
/// by the core after its timeout.
const REPLY_QUEUE: usize = 1024;

/// Everything the driver needs, derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address the workers' DHT sockets bind.
    pub bind: SocketAddr,
    /// `--dht-bootstrap`, resolved at each bootstrap attempt.
    pub bootstrap: Vec<HostPort>,
    /// `--node-key-file`.
    pub node_key_file: Option<PathBuf>,
    /// `--dht-peer-cache`.
    pub peer_cache: Option<PathBuf>,
    /// The discovery core's settings.
    pub core: CoreSettings,
}

impl Settings {
    /// The settings for `cfg`, with the runtime options (NACK bind address,
    /// resolved static upstreams, workers) and the ADVERT contents
    /// (published NACK address, tier, preference, flags) `main` derived
    /// from it.
    pub fn from_config(cfg: &Config, opts: &rt::Options, advert: &BeaconSettings) -> Settings {
        let d = &cfg.discovery;
        let nack = SocketAddr::new(IpAddr::V6(advert.nack_addr).to_canonical(), advert.nack_port);
        let publish = (!d.domain.is_empty()).then(|| Publish {
            domain: d.domain.clone(),
            nack,
            tier: advert.tier,
            preference: advert.preference,
            flags: advert.flags,
            shard_bits: cfg.network.shard_bits,
        });
        let upstream_domain = (d.upstream_discovery == UpstreamDiscovery::Dht
            && !d.upstream_domain.is_empty())
        .then(|| d.upstream_domain.clone());
        Settings {
            bind: SocketAddr::new(opts.nack_bind, d.port),
            bootstrap: d.bootstrap.clone(),
            node_key_file: d.node_key_file.clone(),
            peer_cache: d.peer_cache.clone(),
            core: CoreSettings {
                publish,
                upstream_domain,
                trust: d.upstream_keys.clone(),
                static_upstreams: opts.recovery.upstreams.clone(),
                family: Family::of_bind(opts.nack_bind),
                refresh: d.refresh,
                bootstrap_retry: d.refresh.clamp(Duration::from_secs(1), Duration::from_secs(30)),
                shards: opts.cpus.len().max(1),
            },
        }
    }
}

/// What the driver and the admin section share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) core: Core,
    pub(crate) bound: SocketAddr,
    pub(crate) started: Instant,
}

/// Discovery with its node key loaded, before the workers (which run the
/// DHT nodes) start.
#[derive(Debug)]
pub struct Discovery {
    state: Arc<Mutex<State>>,
    settings: Settings,
    public_key: [u8; 32],
    seed: [u8; 32],
}

impl Discovery {
    /// Loads (or creates) the node key. Errors name the flag to fix.
    pub fn new(mut settings: Settings) -> Result<Discovery, String> {
        if let Some(p) = &settings.core.publish
            && (p.nack.ip().is_unspecified() || p.nack.port() == 0)
        {
            tracing::warn!(
                domain = p.domain,
                "--domain is set but there is no NACK address to publish (NACK_ADDR is unset and \
                 --mc-iface has no global IPv6 address): set --nack-addr; publishing no record"
            );
            settings.core.publish = None;
        }
        let (key, origin, warning) = files::load_or_create_key(settings.node_key_file.as_deref())?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        let seed = files::random32().map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let now = Instant::now();
        let public_key = key.verifying_key().to_bytes();
        let core = Core::new(key, settings.core.clone(), now, unix_secs());
        let node_id = crate::hex::encode(&core.node_id().0);
        // Downstream endpoints list this public key in --upstream-keys.
        let shown = crate::hex::encode(&public_key);
        match (&origin, &settings.node_key_file) {
            (files::KeyOrigin::Ephemeral, _) => tracing::info!(
                node_id,
                public_key = %shown,
                "DHT node key: a new one for this run (set --node-key-file to keep the id)"
            ),
            (files::KeyOrigin::Created, Some(p)) => {
                tracing::info!(node_id, public_key = %shown, file = %p.display(), "DHT node key created")
            }
            _ => tracing::info!(node_id, public_key = %shown, "DHT node key loaded"),
        }
        let state = State { core, bound: settings.bind, started: now };
        Ok(Discovery { state: Arc::new(Mutex::new(state)), settings, public_key, seed })
    }

    /// What the runtime needs to run the DHT nodes on the workers
    /// (`rt::Options::dht`): the port, the identity and a random seed.
    pub fn runtime_options(&self) -> rt::DhtOptions {
        rt::DhtOptions {
            port: self.settings.bind.port(),
            public_key: self.public_key,
            config: dht::Config::new(self.seed),
        }
    }

    /// The admin section (`/debug/dht`, `ricochet_dht_*`), reading the
    /// workers' DHT state from `shared`.
    pub fn section(&self, shared: Arc<rt::Shared>) -> Arc<dyn crate::metrics::Section> {
        Arc::new(DhtSection::new(self.state.clone(), shared))
    }

    /// Starts the driver on the current tokio runtime, once the workers
    /// run.
    pub fn spawn(self, control: rt::Control, shared: Arc<rt::Shared>) -> Running {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(self.run(control, shared, stop_rx));
        Running { stop, task }
    }

    async fn run(
        self,
        control: rt::Control,
        shared: Arc<rt::Shared>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Discovery { state, settings, .. } = self;
        let v6 = settings.bind.is_ipv6();
        tracing::info!(
            addr = %settings.bind,
            workers = control.workers(),
            steering = shared.dht_steering.load(std::sync::atomic::Ordering::Relaxed),
            domain = settings.core.publish.as_ref().map(|p| p.domain.as_str()),
            upstream_domain = settings.core.upstream_domain.as_deref(),
            "DHT running on the workers"
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel::<rt::DhtReply>(REPLY_QUEUE);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_save = Instant::now() + PEER_CACHE_INTERVAL;
        let mut seed_logged = false;
        let mut external: Option<SocketAddr> = None;
        let mut stopping: Option<Instant> = None;
        loop {
            // Bootstrap when due: the cache, the configured seeds (resolved
            // now: names may move) and the peers the workers know.
            let due = lock(&state).core.bootstrap_due(Instant::now());
            if due {
                let mut addrs = bootstrap_addrs(&settings, v6).await;
                let known = known_peers(&shared);
                if addrs.is_empty() && known.is_empty() && !seed_logged {
                    seed_logged = true;
                    tracing::info!(
                        "DHT: no peer cache and no --dht-bootstrap address: waiting to be \
                         contacted (a seed node)"
                    );
                }
                for p in known {
                    if (v6 || p.addr.is_ipv4()) && !addrs.contains(&p.addr) {
                        addrs.push(p.addr);
                    }
                }
                lock(&state).core.bootstrap(Instant::now(), &addrs);
            }
            dispatch(&state, &control, &tx);
            after_step(&state, &control);

            let mut deadline = lock(&state).core.poll_timeout();
            if let Some(until) = stopping {
                // Stopping: wait for the Draining put to go out, briefly.
                if lock(&state).core.puts_running() == 0 || Instant::now() >= until {
                    break;
                }
                deadline = deadline.min(until);
            }
            tokio::select! {
                biased;
                // A dropped `Running` stops the driver too.
                _ = stop.changed(), if stopping.is_none() => {
                    let now = Instant::now();
                    lock(&state).core.set_draining(now, true);
                    stopping = Some(now + STOP_GRACE);
                }
                Some(r) = rx.recv() => {
                    let mut s = lock(&state);
                    s.core.on_reply(Instant::now(), r.op, r.result);
                    while let Ok(r) = rx.try_recv() {
                        s.core.on_reply(Instant::now(), r.op, r.result);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    lock(&state).core.handle_timeout(Instant::now());
                }
                _ = housekeeping.tick() => {
                    let now = Instant::now();
                    let shards = snapshots(&shared);
                    let peers: Vec<usize> = shards.iter().map(|d| d.peers.len()).collect();
                    let mut s = lock(&state);
                    s.core.set_routing_peers(&peers);
                    s.core.set_unix_time(now, unix_secs());
                    s.core.set_draining(now, shared.draining() || stopping.is_some());
                    drop(s);
                    let seen = shards.iter().find_map(|d| d.external_addr);
                    if let Some(addr) = seen
                        && seen != external
                    {
                        external = seen;
                        tracing::info!(%addr, "DHT: peers see us at");
                    }
                    if now >= next_save {
                        next_save = now + PEER_CACHE_INTERVAL;
                        save_peers(&shared, settings.peer_cache.as_deref());
                    }
                }
            }
        }
        save_peers(&shared, settings.peer_cache.as_deref());
        tracing::info!("DHT discovery stopped");
    }
}

/// A running driver.
#[derive(Debug)]
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the driver: it republishes our record with the Draining flag
    /// (if it was not draining already) and waits up to [`STOP_GRACE`] for
    /// that put, then saves the peer cache. Waits at most a second. Call
    /// it before stopping the workers, which run the put.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The rt request for a core command.
pub(crate) fn request(c: Command) -> (u64, rt::DhtWhat) {
    match c {
        Command::Bootstrap { op, addrs } => (op, rt::DhtWhat::Bootstrap(addrs.into())),
        Command::Put { op, record } => (op, rt::DhtWhat::Put(record)),
        Command::FindValue { op, key } => (op, rt::DhtWhat::FindValue(key)),
    }
}

/// Hands the core's commands to the workers; a worker that cannot take
/// one (inbox full) answers it with an error at once.
fn dispatch(
    state: &Mutex<State>,
    control: &rt::Control,
    reply: &tokio::sync::mpsc::Sender<rt::DhtReply>,
) {
    let mut s = lock(state);
    loop {
        let commands = s.core.take_commands();
        if commands.is_empty() {
            return;
        }
        for c in commands {
            let (op, what) = request(c);
            for _ in 0..control.dht(op, what, reply) {
                s.core.on_reply(Instant::now(), op, Err("the worker's inbox is full".into()));
            }
        }
    }
}

/// Logs the core's notes and hands a changed upstream list to the workers.
fn after_step(state: &Mutex<State>, control: &rt::Control) {
    let mut s = lock(state);
    for note in s.core.take_notes() {
        match note {
            machine::Note::Bootstrapped(peers) => tracing::info!(peers, "DHT bootstrapped"),
            machine::Note::BootstrapFailed => {
                tracing::warn!("DHT bootstrap: no peer answered; retrying")
            }
            machine::Note::UpstreamsChanged(list) => {
                let shown: Vec<String> = list
                    .iter()
                    .map(|u| match u.source {
                        Source::Static => format!("{} (static)", u.addr),
                        Source::Dht(id) => {
                            format!("{} (dht {})", u.addr, &crate::hex::encode(&id)[..16])
                        }
                    })
                    .collect();
                tracing::info!(upstreams = ?shown, "upstream list changed");
            }
            machine::Note::PublishFailed(why) => {
                tracing::warn!(%why, "DHT: cannot publish our record")
            }
        }
    }
    if let Some(list) = s.core.take_upstreams() {
        let missed = control.set_upstreams(&list);
        if missed > 0 {
            // Offered again after the next step (at most HOUSEKEEPING away).
            s.core.upstreams_not_taken();
            tracing::debug!(missed, "upstream list: some workers busy; retrying");
        }
    }
}

/// Every worker's DHT state, in worker order (empty for a worker that has
/// not published yet), so a worker's index is its label.
pub(crate) fn snapshots(shared: &rt::Shared) -> Vec<rt::DhtSnapshot> {
    shared
        .snapshots
        .iter()
        .map(|s| s.lock().ok().and_then(|s| s.dht.clone()).unwrap_or_default())
        .collect()
}

/// The good peers the workers know, without repeats, at most
/// [`PEER_CACHE_PEERS`].
fn known_peers(shared: &rt::Shared) -> Vec<NodeInfo> {
    merge_peers(snapshots(shared).iter().map(|d| &d.export[..]), PEER_CACHE_PEERS)
}

/// Peers from several shards, taken in turns, without repeated ids.
pub(crate) fn merge_peers<'a>(
    lists: impl Iterator<Item = &'a [NodeInfo]>,
    max: usize,
) -> Vec<NodeInfo> {
    let lists: Vec<&[NodeInfo]> = lists.collect();
    let mut out: Vec<NodeInfo> = Vec::new();
    let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    for i in 0..longest {
        for l in &lists {
            if let Some(p) = l.get(i)
                && out.len() < max
                && !out.iter().any(|o| o.id == p.id)
            {
                out.push(*p);
            }
        }
    }
    out
}

fn save_peers(shared: &rt::Shared, path: Option<&std::path::Path>) {
    let Some(path) = path else { return };
    let peers = known_peers(shared);
    if peers.is_empty() {
        return;
    }
    if let Err(e) = files::write_peer_cache(path, &dht::peers::encode(&peers)) {
        tracing::warn!(error = %e, file = %path.display(), "--dht-peer-cache: cannot save it");
    }
}

/// The peer cache's addresses and `--dht-bootstrap`, resolved.
async fn bootstrap_addrs(settings: &Settings, v6: bool) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    if let Some(path) = &settings.peer_cache {
        match files::read_peer_cache(path) {
            Ok(a) => addrs.extend(a),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    addrs.extend(resolve("--dht-bootstrap", &settings.bootstrap, v6).await);
    // An IPv4 socket cannot reach IPv6 peers.
    let mut seen = std::collections::BTreeSet::new();
    addrs.retain(|a| (v6 || a.is_ipv4()) && seen.insert(*a));
    addrs
}

/// Resolves `host:port` settings (names with a DNS timeout; failures are
/// logged under `flag` and skipped) to the addresses a socket of this
/// family reaches (`v6`: dual-stack), canonical and without repeats.
pub(crate) async fn resolve(flag: &str, list: &[HostPort], v6: bool) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for hp in list {
        let found: Vec<SocketAddr> = match &hp.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, hp.port)],
            Host::Any => Vec::new(),
            Host::Name(name) => {
                let q = tokio::net::lookup_host((name.as_str(), hp.port));
                match tokio::time::timeout(DNS_TIMEOUT, q).await {
                    Ok(Ok(it)) => it.collect(),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "{flag} {hp}: cannot resolve");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::warn!("{flag} {hp}: DNS timed out");
                        Vec::new()
                    }
                }
            }
        };
        addrs.extend(found.into_iter().map(canonical));
    }
    let mut seen = std::collections::BTreeSet::new();
    addrs.retain(|a| (v6 || a.is_ipv4()) && seen.insert(*a));
    addrs
}
