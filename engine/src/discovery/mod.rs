//! Upstream discovery through the DHT: the daemon's driver for
//! [`crate::dht::Node`] (issue 7).
//!
//! With `--dht-enabled` (or `--upstream-discovery dht`) the endpoint runs
//! one DHT node on UDP `--dht-port`, bound like the NACK socket
//! (`NACK_ADDR` if set, else `0.0.0.0` in `--ipv4-lab`, else `[::]`
//! dual-stack). With a `--domain` it publishes a signed endpoint record —
//! its NACK address and port, ADVERT tier, preference and flags, the
//! domain id and its shard bits — under the domain's topic key
//! ([`ricochet_wire::endpoint::domain_topic_key`], `docs/PROTOCOL.md`
//! § "Domain topic keys"), re-signed with a higher seq every
//! `--dht-refresh` and with a TTL of three refresh periods (at least 10 s). With
//! `--upstream-discovery dht --upstream-domain NAME` it looks that
//! domain's key up every `--dht-refresh` and hands the workers the static
//! `UPSTREAM_RETRY_ENDPOINTS` followed by the endpoints found
//! ([`rt::Control::set_upstreams`]). The rules (which records count, the
//! order, when an endpoint drops out) are in [`core`].
//!
//! # Where it runs — a deliberate deviation from DESIGN.md
//! DESIGN.md puts a member of a DHT socket group on every worker, with a
//! reuseport BPF program steering each datagram to the worker owning its
//! key, and one store shard per worker. This driver instead runs the whole
//! node — one socket, one routing table, one store shard — as a tokio task
//! on the control thread (the current-thread runtime `main` builds). DHT
//! traffic is control-plane rate (a few datagrams per refresh period per
//! peer, rate-limited per source by the node), so the packet path gains
//! nothing from sharding it, and one node keeps transaction ids, the
//! routing table and the record store in one place. The node is sans-IO,
//! so moving it to the workers later changes only this driver.
//!
//! # Contract
//! - Startup errors (key file, socket bind) name the flag and the fix;
//!   nothing after startup stops the endpoint: DNS, send and receive
//!   errors are logged or counted (`ricochet_dht_socket_errors_total`) and
//!   the node retries on its timers.
//! - Every datagram goes to the node, which drops and counts anything
//!   malformed, unsolicited or over rate; a burst is read at most
//!   [`RECV_BATCH`] datagrams at a time, so admin requests interleave.
//! - Addresses are canonical inside the node (IPv4-mapped IPv6 sources
//!   become IPv4); on a dual-stack socket IPv4 destinations are sent
//!   IPv4-mapped.
//! - While the endpoint drains, and when the driver stops
//!   ([`Running::stop`], after at most [`STOP_GRACE`] for the put), our
//!   record is republished with the Draining flag, so downstream endpoints
//!   drop it at their next lookup rather than after its TTL.
//! - The peer cache is saved every [`PEER_CACHE_INTERVAL`] and on a clean
//!   stop, only when the routing table holds peers; the start bootstraps
//!   from it plus `--dht-bootstrap`.
//! - State is shared with `/debug/dht` and `/metrics` through one mutex
//!   that is never held across an `await`.

pub mod files;
pub mod machine;
pub mod section;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Host, HostPort, UpstreamDiscovery};
use crate::dht;
use crate::rt::{self, beacon::BeaconSettings};

pub use self::machine::{Core, CoreSettings, Family, Publish, Source, Upstream};
pub use self::section::DhtSection;

/// Most datagrams read in one go before timers and admin get a turn.
pub const RECV_BATCH: usize = 64;
/// How often the peer cache is saved while running.
pub const PEER_CACHE_INTERVAL: Duration = Duration::from_secs(60);
/// Most peers saved in the peer cache.
pub const PEER_CACHE_PEERS: usize = 64;
/// How often the driver checks draining, retries a refused upstream
/// hand-over and re-anchors wall-clock time.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Longest a stopping driver waits for its Draining record's put.
pub const STOP_GRACE: Duration = Duration::from_millis(500);
/// Longest wait for the DHT socket to take one datagram.
const SEND_WAIT: Duration = Duration::from_millis(100);
/// Longest wait for a bootstrap host name to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the driver needs, derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address the DHT socket binds.
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
    /// resolved static upstreams) and the ADVERT contents (published NACK
    /// address, tier, preference, flags) `main` derived from it.
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
                static_upstreams: opts.recovery.upstreams.clone(),
                family: Family::of_bind(opts.nack_bind),
                refresh: d.refresh,
                bootstrap_retry: d.refresh.clamp(Duration::from_secs(1), Duration::from_secs(30)),
            },
        }
    }
}

/// Socket-level counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IoCounters {
    pub(crate) send_errors: u64,
    pub(crate) recv_errors: u64,
}

/// What the driver and the admin section share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) core: Core,
    pub(crate) bound: SocketAddr,
    pub(crate) io: IoCounters,
    pub(crate) started: Instant,
}

/// A DHT node ready to run: key loaded, socket bound.
#[derive(Debug)]
pub struct Discovery {
    state: Arc<Mutex<State>>,
    socket: std::net::UdpSocket,
    settings: Settings,
    control: rt::Control,
    shared: Arc<rt::Shared>,
}

impl Discovery {
    /// Loads (or creates) the node key and binds the DHT socket. Errors
    /// name the flag to fix.
    pub fn new(
        mut settings: Settings,
        control: rt::Control,
        shared: Arc<rt::Shared>,
    ) -> Result<Discovery, String> {
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
        let socket = bind(settings.bind)?;
        let bound = socket.local_addr().unwrap_or(settings.bind);
        let seed = files::random32().map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let now = Instant::now();
        let core = Core::new(key, dht::Config::new(seed), settings.core.clone(), now, unix_now());
        let node_id = files::hex(&core.node().id().0);
        match (&origin, &settings.node_key_file) {
            (files::KeyOrigin::Ephemeral, _) => tracing::info!(
                node_id,
                "DHT node key: a new one for this run (set --node-key-file to keep the id)"
            ),
            (files::KeyOrigin::Created, Some(p)) => {
                tracing::info!(node_id, file = %p.display(), "DHT node key created")
            }
            _ => tracing::info!(node_id, "DHT node key loaded"),
        }
        let state = State { core, bound, io: IoCounters::default(), started: now };
        Ok(Discovery { state: Arc::new(Mutex::new(state)), socket, settings, control, shared })
    }

    /// The admin section (`/debug/dht`, `ricochet_dht_*`).
    pub fn section(&self) -> Arc<dyn crate::admin::Section> {
        Arc::new(DhtSection::new(self.state.clone()))
    }

    /// Starts the driver on the current tokio runtime.
    pub fn spawn(self) -> Running {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(self.run(stop_rx));
        Running { stop, task }
    }

    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Discovery { state, socket, settings, control, shared } = self;
        let sock = match tokio::net::UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "DHT socket: cannot register it with the runtime");
                return;
            }
        };
        let v6 = settings.bind.is_ipv6();
        let bound = settings.bind;
        tracing::info!(
            addr = %bound,
            domain = settings.core.publish.as_ref().map(|p| p.domain.as_str()),
            upstream_domain = settings.core.upstream_domain.as_deref(),
            "DHT node running"
        );
        let mut out = dht::Outbox::new();
        let mut buf = vec![0u8; 65_536];
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_save = Instant::now() + PEER_CACHE_INTERVAL;
        let mut seed_logged = false;
        let mut stopping: Option<Instant> = None;
        loop {
            // Bootstrap when due: the cache and the configured seeds,
            // resolved now (names may move).
            let due = lock(&state).core.bootstrap_due(Instant::now());
            if due {
                let addrs = bootstrap_addrs(&settings, v6).await;
                if addrs.is_empty() && !seed_logged {
                    seed_logged = true;
                    tracing::info!(
                        "DHT: no peer cache and no --dht-bootstrap address: waiting to be \
                         contacted (a seed node)"
                    );
                }
                lock(&state).core.bootstrap(Instant::now(), &addrs, &mut out);
            }
            flush(&sock, &state, &mut out, v6).await;
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
                    lock(&state).core.set_draining(now, true, &mut out);
                    stopping = Some(now + STOP_GRACE);
                }
                r = sock.recv_from(&mut buf) => {
                    let mut s = lock(&state);
                    match r {
                        Ok((n, from)) => {
                            s.core.handle(Instant::now(), canonical(from), &buf[..n], &mut out);
                            for _ in 1..RECV_BATCH {
                                match sock.try_recv_from(&mut buf) {
                                    Ok((n, from)) => s.core.handle(
                                        Instant::now(), canonical(from), &buf[..n], &mut out),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => {
                            s.io.recv_errors += 1;
                            tracing::debug!(error = %e, "DHT receive");
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    lock(&state).core.handle_timeout(Instant::now(), &mut out);
                }
                _ = housekeeping.tick() => {
                    let now = Instant::now();
                    let mut s = lock(&state);
                    s.core.set_unix_time(now, unix_now());
                    s.core.set_draining(now, shared.draining() || stopping.is_some(), &mut out);
                    drop(s);
                    if now >= next_save {
                        next_save = now + PEER_CACHE_INTERVAL;
                        save_peers(&state, settings.peer_cache.as_deref());
                    }
                }
            }
        }
        save_peers(&state, settings.peer_cache.as_deref());
        tracing::info!("DHT node stopped");
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
    /// that put, then saves the peer cache. Waits at most a second.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends what the core queued. A send waits for the socket to be writable
/// (a fresh socket's readiness is not known yet, and a full buffer drains
/// quickly at DHT rates) but at most [`SEND_WAIT`]; a datagram that cannot
/// go is lost as the network might lose it, and the node's timers retry.
async fn flush(
    sock: &tokio::net::UdpSocket,
    state: &Mutex<State>,
    out: &mut dht::Outbox,
    v6: bool,
) {
    if out.transmits.is_empty() {
        return;
    }
    let mut errors = 0;
    for t in out.drain_transmits() {
        let dest = match (v6, t.dest.ip()) {
            (true, IpAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), t.dest.port())
            }
            _ => t.dest,
        };
        let sent = match sock.try_send_to(&t.payload, dest) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(SEND_WAIT, sock.send_to(&t.payload, dest)).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(e),
                }
            }
            r => r.map(|_| ()),
        };
        if let Err(e) = sent {
            errors += 1;
            tracing::debug!(error = %e, %dest, "DHT send");
        }
    }
    lock(state).io.send_errors += errors;
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
                        Source::Dht(id) => format!("{} (dht {})", u.addr, &files::hex(&id)[..16]),
                    })
                    .collect();
                tracing::info!(upstreams = ?shown, "upstream list changed");
            }
            machine::Note::PublishFailed(why) => {
                tracing::warn!(%why, "DHT: cannot publish our record")
            }
            machine::Note::ExternalAddr(a) => tracing::info!(addr = %a, "DHT: peers see us at"),
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

fn save_peers(state: &Mutex<State>, path: Option<&std::path::Path>) {
    let Some(path) = path else { return };
    let bytes = {
        let s = lock(state);
        if s.core.node().table().is_empty() {
            return;
        }
        s.core.export_peers(Instant::now(), PEER_CACHE_PEERS)
    };
    if let Err(e) = files::write_peer_cache(path, &bytes) {
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

/// Binds the DHT socket: v6-stack when bound to `[::]`.
fn bind(addr: SocketAddr) -> Result<std::net::UdpSocket, String> {
    let fail = |e: std::io::Error| {
        format!(
            "--dht-port (RICOCHET_DHT_PORT) = {}: cannot bind {addr}: {e} (is another DHT node \
             or endpoint using the port? pick another with --dht-port)",
            addr.port()
        )
    };
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))
        .map_err(fail)?;
    if let IpAddr::V6(v6) = addr.ip() {
        s.set_only_v6(v6 != Ipv6Addr::UNSPECIFIED).map_err(fail)?;
    }
    s.bind(&addr.into()).map_err(fail)?;
    Ok(s.into())
}

/// IPv4-mapped IPv6 as IPv4.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => {
            SocketAddr::new(v6.ip().to_canonical(), v6.port())
        }
        _ => a,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
