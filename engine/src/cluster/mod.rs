//! Sibling clusters: the daemon's driver for the whisper gossip engine
//! ([`crate::gossip`], issue 6).
//!
//! With `--cluster-key-file` set, the endpoint runs one gossip member on
//! UDP `--gossip-port` (default 9310), bound like the NACK socket
//! (`NACK_ADDR` if set, else `0.0.0.0` in `--ipv4-lab`, else `[::]`
//! dual-stack). Every datagram, both ways, carries the cluster MAC under
//! the key in that file ([`load_key`]) and fits `--max-datagram`.
//!
//! What the cluster does for the endpoint ([`machine`]):
//! - **Membership.** Heartbeat records on topic `members` every second; a
//!   sibling is live while its heartbeat is younger than 5 s
//!   ([`machine::HEARTBEAT`], [`machine::LIVE_TIMEOUT`]). New members join
//!   through `--gossip-peers` seeds and peers learnt by PEX (topic `pex`,
//!   ed25519-signed entries under a per-start key).
//! - **Gap ownership.** On every change of the live set the workers get a
//!   new view ([`crate::rt::Control::set_siblings`]): the live siblings'
//!   member ids and NACK addresses. A worker asked for a gap another
//!   sibling owns (rendezvous hashing, [`crate::retry::siblings`]) forwards
//!   the NACK to it, so each gap is fetched upstream once, without Redis.
//! - **Sibling fill.** Each heartbeat carries the member's cache digest
//!   (its most recently active flows: SeqNum span and holes,
//!   [`members`] § record layout), refreshed from the workers every
//!   250 ms; the workers' view carries every live sibling's digest, and a
//!   gap's owner that misses it asks the sibling most likely to hold it
//!   (a Proxied NACK, answered from that sibling's cache only) before
//!   going upstream ([`crate::retry::recover`]).
//! - **Leaving.** When the endpoint drains (SIGTERM) the member publishes a
//!   leaving record and siblings drop it at once.
//! - **Warm restarts** ([`warm`]). With seeds and `--warmup-timeout` > 0, a
//!   starting endpoint reports `/readyz` 503 "warming" while it pulls the
//!   hot cache of its siblings by G6 and imports it
//!   ([`crate::rt::Control::warm`]), until done, until no sibling answers,
//!   or until the timeout. Siblings build their snapshot from
//!   [`crate::rt::Control::export_hot`] (at most [`warm::WARM_MAX_BYTES`]);
//!   siblings with the same frames build the same snapshot, and the shards
//!   are fetched from all of them at once, parity covering one that goes
//!   silent.
//!
//! # Where it runs
//! The gossip port is an SO_REUSEPORT group: one member per worker, then
//! the control thread's socket, joined last ([`Prepared::start`]). The
//! per-packet part of the rumor path runs on the workers
//! (`rt::gossip_shard`): a steering program sends each G3 rumor to a
//! worker, which checks its MAC and hands it to the worker owning its id;
//! that worker's rumor-dedup shard ACKs every copy and absorbs duplicates,
//! and only admitted copies reach the engine. Everything else — the engine
//! itself (membership, forwarding and retries, anti-entropy, G4, G6,
//! PEX), its timers and our own sends — runs here, on the control thread:
//! one engine, one tokio task, like the DHT driver ([`crate::discovery`]).
//! Rumors this member originates are recorded in the owning worker's
//! shard ([`rt::Control::gossip_mark`]). The snapshot build (export and
//! Reed-Solomon coding) runs on tokio's blocking pool, and the import in a
//! task of its own, so neither stalls heartbeats.
//!
//! # Contract
//! - Startup errors (key file, socket, no address to advertise) name the
//!   flag and the fix; after startup nothing stops the endpoint: socket
//!   errors are counted (`ricochet_cluster_socket_errors_total`).
//! - Every datagram goes to a worker's rumor shard or to the core; both
//!   drop and count anything unauthenticated, malformed, oversized or
//!   over rate; a burst is read (or taken from the workers' queue) at most
//!   [`RECV_BATCH`] datagrams at a time.
//! - State is shared with `/debug/cluster` and `/metrics` through one
//!   mutex that is never held across an `await`.

pub use ricochet_proto::cluster::{machine, members, pexstore, warm};
pub mod section;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ricochet_wire::mac::ClusterKey;
use ricochet_wire::record::SigningKey;

use crate::config::{Config, HostPort};
use crate::discovery::files;
use crate::gossip::snapshot::{EncodedSnapshot, chunk_budget};
use crate::rt::{self, beacon::BeaconSettings};
use crate::wallclock::unix_ms;

pub use self::machine::{Core, CoreSettings, Identity, Note};
pub use self::section::ClusterSection;

/// Most datagrams read in one go before timers and admin get a turn.
pub const RECV_BATCH: usize = 64;
/// How often the driver checks draining and re-anchors wall-clock time.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// How often `--gossip-peers` host names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// Longest a stopping driver keeps running for its leaving record.
pub const STOP_GRACE: Duration = Duration::from_millis(300);
/// Longest wait for the gossip socket to take one datagram.
const SEND_WAIT: Duration = Duration::from_millis(100);
/// How long an import waits for a full worker inbox, per frame, before it
/// drops the frame.
const IMPORT_PATIENCE: Duration = Duration::from_millis(500);

/// Everything the driver needs, derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--cluster-key-file`.
    pub key_file: PathBuf,
    /// Address the gossip socket binds.
    pub bind: SocketAddr,
    /// The IP siblings reach this endpoint at (gossip and NACKs).
    pub advertise: IpAddr,
    /// NACK port siblings forward gaps to.
    pub nack_port: u16,
    /// `--gossip-peers`, resolved when used.
    pub peers: Vec<HostPort>,
    /// `--max-datagram`.
    pub max_datagram: usize,
    /// `--warmup-timeout`; warm-up runs when it is not zero and there are
    /// seeds.
    pub warmup_timeout: Duration,
    /// Most bytes of frames in a snapshot served to a sibling.
    pub warm_max_bytes: usize,
}

impl Settings {
    /// The settings for `cfg`, or `None` when `--cluster-key-file` is not
    /// set (no cluster). The advertised address is the ADVERT's NACK
    /// address.
    pub fn from_config(
        cfg: &Config,
        opts: &rt::Options,
        advert: &BeaconSettings,
    ) -> Option<Settings> {
        let key_file = cfg.engine.cluster_key_file.clone()?;
        Some(Settings {
            key_file,
            bind: SocketAddr::new(opts.nack_bind, cfg.cluster.port),
            advertise: IpAddr::V6(advert.nack_addr).to_canonical(),
            nack_port: opts.nack_port,
            peers: cfg.cluster.peers.clone(),
            max_datagram: cfg.engine.max_datagram,
            warmup_timeout: cfg.runtime.warmup_timeout,
            warm_max_bytes: warm::WARM_MAX_BYTES,
        })
    }
}

/// Reads the cluster key: the file holds 32 bytes as 64 hex digits
/// (surrounding whitespace ignored), e.g. made with
/// `openssl rand -hex 32 > cluster.key`. Errors name the flag and the fix;
/// a key readable by group or others is used, with a warning.
pub fn load_key(path: &Path) -> Result<ClusterKey, String> {
    let flag = "--cluster-key-file (RICOCHET_CLUSTER_KEY_FILE)";
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag} = {}: cannot read it: {e}", path.display()))?;
    let key = parse_key(&text).map_err(|why| {
        format!(
            "{flag} = {}: {why}; the file must hold the 32-byte cluster key as 64 hex digits \
             (create one with `openssl rand -hex 32 > {}` and give every sibling the same file)",
            path.display(),
            path.display()
        )
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                "{flag}: the key is readable by group or others; chmod 600 it"
            );
        }
    }
    Ok(ClusterKey::new(key))
}

/// Parses the cluster key: 64 hex digits (whitespace around them
/// ignored), not all zeros.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let key = crate::hex::parse32(text.as_bytes())?;
    if key == [0; 32] {
        return Err("the key is all zeros".into());
    }
    Ok(key)
}

/// Socket-level counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IoCounters {
    pub(crate) send_errors: u64,
    pub(crate) recv_errors: u64,
    /// Rumors this socket read (no steering) handed to a worker's shard.
    pub(crate) rumors_handed: u64,
    /// Rumors this socket read that no worker inbox could take.
    pub(crate) rumors_dropped: u64,
    /// Rumors originated here that no worker inbox could take.
    pub(crate) marks_dropped: u64,
}

/// What the driver and the admin section share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) core: Core,
    pub(crate) bound: SocketAddr,
    pub(crate) io: IoCounters,
    pub(crate) started: Instant,
    pub(crate) warmup_timeout: Duration,
}

/// A cluster member ready to run: key loaded, socket bound.
#[derive(Debug)]
pub struct Cluster {
    state: Arc<Mutex<State>>,
    socket: std::net::UdpSocket,
    settings: Settings,
    control: rt::Control,
    shared: Arc<rt::Shared>,
    /// What the workers hand on: datagrams that are not rumors, and rumor
    /// copies their dedup shards admitted.
    inbound: tokio::sync::mpsc::Receiver<rt::GossipInbound>,
}

/// What the helper tasks report back.
#[derive(Debug)]
enum Done {
    Built { to: SocketAddr, rid: u32, snap: Result<EncodedSnapshot, String> },
    Imported { frames: u64, bytes: u64, dropped: u64 },
}

/// A cluster member with its key loaded, before the workers start: they
/// need the key and the engine's limits for their rumor-dedup shards
/// ([`Prepared::runtime_options`]).
#[derive(Debug)]
pub struct Prepared {
    settings: Settings,
    key: ClusterKey,
    gossip: crate::gossip::Config,
    inbound: tokio::sync::mpsc::Sender<rt::GossipInbound>,
    inbound_rx: tokio::sync::mpsc::Receiver<rt::GossipInbound>,
}

impl Prepared {
    /// What the runtime needs to run the gossip group's worker members.
    pub fn runtime_options(&self) -> rt::GossipOptions {
        rt::GossipOptions {
            port: self.settings.bind.port(),
            key: self.key.clone(),
            config: self.gossip.clone(),
            inbound: self.inbound.clone(),
        }
    }

    /// Binds the control thread's gossip socket — the group's last
    /// member, after the workers' — and builds the member. When a warm-up
    /// will run, marks the endpoint warming right away, so `/readyz` never
    /// reports ready before it. Errors name the flag to fix.
    pub fn start(self, control: rt::Control, shared: Arc<rt::Shared>) -> Result<Cluster, String> {
        let Prepared { settings, key, gossip, inbound_rx, .. } = self;
        let port = shared.gossip_port.unwrap_or(settings.bind.port());
        let bind_at = SocketAddr::new(settings.bind.ip(), port);
        let socket = rt::gossip_socket(bind_at).map_err(|e| e.to_string())?;
        let bound = socket.local_addr().unwrap_or(bind_at);
        let key_seed = files::random32().map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let now = Instant::now();
        let unix = unix_ms();
        let identity = Identity {
            key: SigningKey::from_bytes(&key_seed),
            gossip: SocketAddr::new(settings.advertise, bound.port()),
            nack: SocketAddr::new(settings.advertise, settings.nack_port),
            incarnation_ms: unix,
        };
        let core_settings = CoreSettings { gossip, warm_max_bytes: settings.warm_max_bytes };
        let mut core = Core::new(identity, key, core_settings, now, unix)?;
        if !settings.warmup_timeout.is_zero() && !settings.peers.is_empty() {
            shared.set_warming(true);
            core.start_warmup(now, settings.warmup_timeout);
        }
        let state = State {
            core,
            bound,
            io: IoCounters::default(),
            started: now,
            warmup_timeout: settings.warmup_timeout,
        };
        Ok(Cluster {
            state: Arc::new(Mutex::new(state)),
            socket,
            settings,
            control,
            shared,
            inbound: inbound_rx,
        })
    }
}

impl Cluster {
    /// Loads the key and checks there is an address to advertise; the
    /// engine runs with its rumor dedup on the workers
    /// ([`crate::gossip::Config::external_dedup`]). Errors name the flag
    /// to fix.
    pub fn prepare(settings: Settings) -> Result<Prepared, String> {
        let key = load_key(&settings.key_file)?;
        if settings.advertise.is_unspecified() {
            return Err("--cluster-key-file is set but there is no address to give siblings \
                        (NACK_ADDR is unset and --mc-iface has no global IPv6 address): set \
                        --nack-addr (NACK_ADDR) to this endpoint's address"
                .into());
        }
        let seed = files::random32().map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let mut gossip = crate::gossip::Config::new(seed);
        gossip.max_datagram = settings.max_datagram;
        gossip.external_dedup = true;
        let (inbound, inbound_rx) = tokio::sync::mpsc::channel(rt::INBOUND_DEPTH);
        Ok(Prepared { settings, key, gossip, inbound, inbound_rx })
    }

    /// The admin section (`/debug/cluster`, `ricochet_cluster_*`).
    pub fn section(&self) -> Arc<dyn crate::metrics::Section> {
        Arc::new(ClusterSection::new(self.state.clone(), self.shared.clone()))
    }

    /// Starts the driver on the current tokio runtime.
    pub fn spawn(self) -> Running {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(self.run(stop_rx));
        Running { stop, task }
    }

    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Cluster { state, socket, settings, control, shared, mut inbound } = self;
        let sock = match tokio::net::UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "gossip socket: cannot register it with the runtime");
                shared.set_warming(false);
                return;
            }
        };
        let v6 = settings.bind.is_ipv6();
        {
            let s = lock(&state);
            let me = s.core.me();
            tracing::info!(
                addr = %s.bound,
                member = %crate::hex::encode(&me.id[..8]),
                gossip = %me.gossip,
                nack = %me.nack,
                seeds = settings.peers.len(),
                warming = s.core.warming(),
                "cluster member running"
            );
        }
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Done>(16);
        let mut buf = vec![0u8; 65_536];
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_resolve = Instant::now();
        let mut stopping: Option<Instant> = None;
        loop {
            if Instant::now() >= next_resolve {
                next_resolve = Instant::now() + RESOLVE_EVERY;
                let seeds = crate::discovery::resolve("--gossip-peers", &settings.peers, v6).await;
                lock(&state).core.set_seeds(seeds);
            }
            // Marks reach the workers' shards before the rumors they
            // name leave, so copies coming back find them.
            after_step(&state, &control, &shared, &done_tx, &settings);
            flush(&sock, &state, v6).await;

            let mut deadline = lock(&state).core.poll_timeout();
            if let Some(until) = stopping {
                if Instant::now() >= until {
                    break;
                }
                deadline = deadline.min(until);
            }
            tokio::select! {
                biased;
                // A dropped `Running` stops the driver too.
                _ = stop.changed(), if stopping.is_none() => {
                    let now = Instant::now();
                    lock(&state).core.leave(now);
                    stopping = Some(now + STOP_GRACE);
                }
                Some(done) = done_rx.recv() => {
                    let now = Instant::now();
                    let mut s = lock(&state);
                    match done {
                        Done::Built { to, rid, snap } => s.core.snapshot_built(now, to, rid, snap),
                        Done::Imported { frames, bytes, dropped } => {
                            s.core.imported(now, frames, bytes, dropped)
                        }
                    }
                }
                Some(msg) = inbound.recv() => {
                    let mut s = lock(&state);
                    handle_inbound(&mut s, msg);
                    for _ in 1..RECV_BATCH {
                        match inbound.try_recv() {
                            Ok(msg) => handle_inbound(&mut s, msg),
                            Err(_) => break,
                        }
                    }
                }
                r = sock.recv_from(&mut buf) => {
                    let mut s = lock(&state);
                    match r {
                        Ok((n, from)) => {
                            receive(&mut s, &control, from, &buf[..n]);
                            for _ in 1..RECV_BATCH {
                                match sock.try_recv_from(&mut buf) {
                                    Ok((n, from)) => receive(&mut s, &control, from, &buf[..n]),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => {
                            s.io.recv_errors += 1;
                            tracing::debug!(error = %e, "gossip receive");
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    lock(&state).core.handle_timeout(Instant::now());
                }
                _ = housekeeping.tick() => {
                    let now = Instant::now();
                    let mut s = lock(&state);
                    s.core.set_unix_time(now, unix_ms());
                    s.core.set_holdings(shared.holdings(members::MAX_HOLDINGS));
                    if shared.draining() && !s.core.leaving() {
                        tracing::info!("draining: telling siblings this member is leaving");
                        s.core.leave(now);
                    }
                }
            }
        }
        flush(&sock, &state, v6).await;
        shared.set_warming(false);
        tracing::info!("cluster member stopped");
    }
}

/// A running driver.
#[derive(Debug)]
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the driver: it publishes a leaving record (if it has not
    /// already) and keeps answering for [`STOP_GRACE`]. Waits at most a
    /// second.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

/// What a worker handed on: a datagram for the engine, or a rumor copy
/// its dedup shard admitted.
fn handle_inbound(s: &mut State, msg: rt::GossipInbound) {
    let now = Instant::now();
    match msg {
        rt::GossipInbound::Datagram { from, bytes } => s.core.handle(now, from, &bytes),
        rt::GossipInbound::Admitted { from, body, admission } => {
            s.core.handle_admitted(now, from, &body, admission)
        }
    }
}

/// A datagram the control thread's socket read: a rumor goes to a worker's
/// dedup shard (only without the steering program, which sends rumors to
/// the workers), anything else to the engine.
fn receive(s: &mut State, control: &rt::Control, from: SocketAddr, data: &[u8]) {
    if data.get(..2) == Some(&[0x47, 0x33][..]) {
        if control.gossip_datagram(from, Bytes::copy_from_slice(data)) {
            s.io.rumors_handed += 1;
        } else {
            s.io.rumors_dropped += 1;
        }
        return;
    }
    s.core.handle(Instant::now(), crate::addr::canonical(from), data);
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends what the core queued (see `discovery::flush` for the waiting
/// rule: at most [`SEND_WAIT`] per datagram, a datagram that cannot go is
/// lost as the network might lose it).
async fn flush(sock: &tokio::net::UdpSocket, state: &Mutex<State>, v6: bool) {
    let transmits: Vec<crate::gossip::Transmit> = lock(state).core.drain_transmits().collect();
    if transmits.is_empty() {
        return;
    }
    let mut errors = 0;
    for t in transmits {
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
            tracing::debug!(error = %e, %dest, "gossip send");
        }
    }
    lock(state).io.send_errors += errors;
}

/// Acts on the core's notes: logs, hands the gap-ownership view to the
/// workers, starts snapshot builds and imports, mirrors the warming flag.
fn after_step(
    state: &Mutex<State>,
    control: &rt::Control,
    shared: &rt::Shared,
    done: &tokio::sync::mpsc::Sender<Done>,
    settings: &Settings,
) {
    let mut s = lock(state);
    for note in s.core.take_notes() {
        match note {
            Note::MembersChanged { live, joined, left } => {
                let shown: Vec<String> = live
                    .iter()
                    .map(|r| {
                        format!(
                            "{} (gossip {}, nack {})",
                            crate::hex::encode(&r.id[..8]),
                            r.gossip,
                            r.nack
                        )
                    })
                    .collect();
                tracing::info!(live = live.len() + 1, joined, left, siblings = ?shown, "cluster membership changed");
            }
            Note::BuildSnapshot { to, rid } => {
                tracing::info!(requester = %to, "building a warm-restart snapshot for a sibling");
                let control = control.clone();
                let done = done.clone();
                let max = settings.warm_max_bytes;
                let chunk = chunk_budget(settings.max_datagram).max(2);
                let hlc = unix_ms();
                tokio::spawn(async move {
                    let build = move || {
                        let frames = control.export_hot(max, warm::EXPORT_WAIT);
                        warm::build_snapshot(&frames, max, hlc, chunk)
                            .map(|(snap, _)| snap)
                            .map_err(|e| e.to_string())
                    };
                    let snap = tokio::task::spawn_blocking(build)
                        .await
                        .unwrap_or_else(|e| Err(format!("snapshot build task: {e}")));
                    if let Err(e) = &snap {
                        tracing::warn!(error = %e, "warm-restart snapshot: build failed");
                    }
                    let _ = done.send(Done::Built { to, rid, snap }).await;
                });
            }
            Note::Import { from, frames } => {
                tracing::info!(sibling = %from, frames = frames.len(), "warm-up: importing the sibling's snapshot");
                let control = control.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let (frames, bytes, dropped) = import(&control, frames).await;
                    let _ = done.send(Done::Imported { frames, bytes, dropped }).await;
                });
            }
            Note::WarmupOver(r) => {
                let from = r.from.map(|a| a.to_string()).unwrap_or_default();
                match r.outcome {
                    warm::Outcome::Done => tracing::info!(
                        frames = r.frames,
                        bytes = r.bytes,
                        dropped = r.dropped,
                        from,
                        ms = r.duration_ms,
                        "warm-up done: cache warmed from a sibling"
                    ),
                    warm::Outcome::Timeout => tracing::warn!(
                        frames = r.frames,
                        from,
                        ms = r.duration_ms,
                        "warm-up: --warmup-timeout expired first; ready without a (complete) warm cache"
                    ),
                    o => tracing::info!(
                        outcome = o.name(),
                        ms = r.duration_ms,
                        "warm-up over without frames: ready with a cold cache"
                    ),
                }
            }
        }
    }
    let marks: Vec<(crate::gossip::RumorId, u8)> = s.core.drain_marks().collect();
    for (id, flags) in marks {
        if !control.gossip_mark(id, flags) {
            // The shard will take a copy of our own rumor coming back for
            // a new one: delivered here again, which every topic's merge
            // absorbs (a StatefulMerge record applies as unchanged).
            s.io.marks_dropped += 1;
        }
    }
    if let Some(view) = s.core.take_siblings() {
        let missed = control.set_siblings(view.clone());
        if missed > 0 {
            // Offered again after the next step (at most HOUSEKEEPING away).
            s.core.siblings_not_taken(view);
        }
    }
    if !s.core.warming() && shared.warming() {
        shared.set_warming(false);
    }
}

/// Hands every frame to the worker owning its flow. A full inbox is
/// retried for up to [`IMPORT_PATIENCE`] per frame. Returns (imported,
/// bytes, dropped).
async fn import(control: &rt::Control, frames: Vec<Bytes>) -> (u64, u64, u64) {
    let (mut ok, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    for frame in frames {
        let keyed =
            ricochet_wire::frame::Frame::new_checked(&frame).ok().and_then(|f| f.key()).is_some();
        if !keyed {
            dropped += 1;
            continue;
        }
        let len = frame.len() as u64;
        let give_up = Instant::now() + IMPORT_PATIENCE;
        loop {
            if control.warm(frame.clone()) {
                ok += 1;
                bytes += len;
                break;
            }
            if Instant::now() >= give_up {
                dropped += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    (ok, bytes, dropped)
}
