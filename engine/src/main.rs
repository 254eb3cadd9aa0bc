//! `ricochet`: the daemon. `ricochet run` serves; `ricochet check-config`
//! validates the configuration and prints every effective setting with
//! where it came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ricochet::config::{self, Config, Host, LogFormat, RunArgs};
use ricochet::retry;
use ricochet::rt::{Addressing, Backend, Options, Runtime, beacon};
use ricochet_wire::control::AdvertFlags;
use ricochet_wire::group;

#[derive(Parser)]
#[command(name = "ricochet", version, about = "Retry endpoint for sequence-numbered multicast")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the endpoint.
    Run(RunArgs),
    /// Validate the configuration, print every effective setting and exit.
    CheckConfig(RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(config::normalize_go_flags(std::env::args_os()));
    let (run, args) = match &cli.command {
        Command::Run(a) => (true, a),
        Command::CheckConfig(a) => (false, a),
    };
    let affinity = match config::process_affinity() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ricochet: cannot read the CPU affinity mask: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config::load(args, &affinity) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ricochet: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    if !run {
        print!("{}", cfg.render());
        return match options(&cfg) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ricochet: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(&cfg);
    for note in cfg.notes() {
        tracing::info!("{note}");
    }
    match serve(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ricochet: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(cfg.runtime.log_level.as_str().to_ascii_lowercase())
    });
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.runtime.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Everything the runtime needs, derived from the configuration. Fails with
/// the flag to fix when the host cannot provide it (unknown interface).
fn options(cfg: &Config) -> Result<(Options, beacon::BeaconSettings), String> {
    let net = &cfg.network;
    let addressing = if net.ipv4_lab {
        let interface = match net.mc_iface.as_str() {
            "lo" | "eth0" | "" => Ipv4Addr::LOCALHOST,
            other => other.parse().map_err(|_| {
                format!(
                    "--mc-iface (MC_IFACE) = {other:?}: with --ipv4-lab it must be an IPv4 \
                     address such as 127.0.0.1 (or \"lo\")"
                )
            })?,
        };
        Addressing::Ipv4Lab { interface }
    } else {
        let interface_index = nix::net::if_::if_nametoindex(net.mc_iface.as_str()).map_err(|e| {
            format!(
                "--mc-iface (MC_IFACE) = {:?}: no such interface ({e}); set it to the interface \
                 that carries the multicast fabric (see `ip link`)",
                net.mc_iface
            )
        })?;
        Addressing::Ipv6 {
            mode: net.source_mode,
            scope: net.scope,
            group_id: net.group_id,
            interface_index,
        }
    };
    let mut groups: Vec<u16> = (0..1u32 << net.shard_bits).map(|i| i as u16).collect();
    groups.push(group::INDEX_BLOCK);
    if net.subtree_data_enabled {
        groups.push(group::INDEX_SUBTREE);
    }
    if net.beef_enabled {
        groups
            .extend((0..1u32 << net.beef_shard_bits).map(|i| group::INDEX_OBJECT_FIRST + i as u16));
    }
    let nack_bind = cfg.nack.addr.unwrap_or(if net.ipv4_lab {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let c = &cfg.cache;
    let rl = &cfg.rate_limits;
    let retry = retry::Settings {
        cache: retry::CacheSettings {
            ttls: retry::Ttls {
                tx: c.ttl.tx,
                block: c.ttl.block,
                subtree: c.ttl.subtree,
                anchor: c.ttl.anchor,
                beef: c.ttl.beef,
                fallback: c.ttl.fallback,
            },
            // Budgets are per endpoint; each worker's shard gets its share.
            max_keys: c.max_keys.map_or(0, |k| (k as usize).div_ceil(cfg.engine.cpus.len())),
            max_bytes: (c.max_bytes as usize).div_ceil(cfg.engine.cpus.len()),
            ..retry::CacheSettings::default()
        },
        limits: retry::LimitSettings {
            ip_rate: rl.ip_rate,
            ip_burst: rl.ip_burst,
            sequence_max: rl.sequence_max,
            sequence_window: rl.sequence_window,
            chain_max: rl.chain_rate,
            chain_window: rl.chain_window,
            group_rate: rl.group_rate,
            group_burst: rl.group_burst,
            ..retry::LimitSettings::default()
        },
        max_range: u64::from(cfg.nack.max_range),
        suppress_ack: cfg.nack.suppress_ack,
        suppress_miss: cfg.nack.suppress_miss,
        multicast_retransmit: cfg.beacon.multicast,
        unicast_retransmit: cfg.beacon.unicast,
        throttle_responses: rl.throttle_response,
        proxy_enabled: cfg.proxy.enabled,
        shard_bits: net.shard_bits,
        beef_shard_bits: net.beef_shard_bits,
        retransmit_dedup: c.redis_addr.is_some(),
        shared_cache: c.redis_addr.is_some() && c.backend == config::CacheBackend::Redis,
    };
    let backend = match cfg.engine.backend {
        config::IoBackend::Auto => Backend::Auto,
        config::IoBackend::Uring => Backend::Uring,
        config::IoBackend::Epoll => Backend::Epoll,
    };
    let recovery = retry::RecoverySettings {
        upstreams: if cfg.proxy.enabled { resolve_upstreams(cfg, nack_bind)? } else { Vec::new() },
        timeout: cfg.proxy.timeout,
        max_endpoints: cfg.proxy.max_endpoints.map_or(0, |n| n as usize),
        dedup_window: cfg.proxy.dedup_window,
        // Per worker: gaps are recovered by the worker that owns the flow.
        queue_depth: cfg.proxy.queue_depth.div_ceil(cfg.engine.cpus.len()).max(1),
        // Siblings sharing a Redis server claim each gap there first.
        shared_claims: cfg.cache.redis_addr.is_some(),
    };
    let opts = Options {
        cpus: cfg.engine.cpus.clone(),
        backend,
        addressing,
        listen_port: net.listen_port,
        egress_port: cfg.retransmit.egress_port,
        groups,
        nack_bind,
        nack_port: cfg.nack.port,
        // The lab's listeners share the host: retransmits must loop back.
        multicast_loop: cfg.retransmit.multicast_loop || net.ipv4_lab,
        multicast_hops: 16,
        retry,
        recovery,
        batch: 32,
        store: None,
        dedup_window: cfg.retransmit.dedup_window,
        dht: None,
        gossip: None,
    };
    let advertised = match (cfg.nack.addr, net.ipv4_lab) {
        (Some(IpAddr::V6(a)), _) => a,
        (Some(IpAddr::V4(a)), _) => a.to_ipv6_mapped(),
        (None, true) => Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
        (None, false) => first_global_v6(&net.mc_iface).unwrap_or(Ipv6Addr::UNSPECIFIED),
    };
    let mut flags = 0;
    if cfg.proxy.enabled {
        flags |= AdvertFlags::HAS_PARENT;
    }
    if cfg.beacon.unicast {
        flags |= AdvertFlags::UNICAST_RETRANSMIT;
    }
    if cfg.beacon.multicast {
        flags |= AdvertFlags::MULTICAST_RETRANSMIT;
    }
    let beacon = beacon::BeaconSettings {
        scopes: if net.ipv4_lab {
            vec![group::Scope::Site]
        } else {
            cfg.beacon.scope.scopes().to_vec()
        },
        nack_addr: advertised,
        nack_port: cfg.nack.port,
        tier: cfg.beacon.tier,
        preference: cfg.beacon.preference,
        interval: cfg.beacon.interval,
        flags,
        draining: cfg.beacon.draining,
        instance_id: match ricochet_wire::crc32c::crc32c(cfg.runtime.instance_id.as_bytes()) {
            0 => 1,
            id => id,
        },
    };
    Ok((opts, beacon))
}

/// Resolves `UPSTREAM_RETRY_ENDPOINTS` once at startup, keeping addresses of
/// the NACK socket's family (the upstream socket is bound like it).
fn resolve_upstreams(cfg: &Config, nack_bind: IpAddr) -> Result<Vec<SocketAddr>, String> {
    cfg.proxy
        .upstreams
        .iter()
        .map(|hp| {
            let addrs = hp.to_socket_addrs().map_err(|e| {
                format!("--upstream-retry-endpoints (UPSTREAM_RETRY_ENDPOINTS): {hp}: {e}")
            })?;
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort_by_key(|a| a.is_ipv4() != nack_bind.is_ipv4());
            // A dual-stack upstream socket sees IPv4 replies as v4-mapped
            // sources; recovery matches replies to the address it asked.
            let mapped = |a: SocketAddr| match (a, nack_bind) {
                (SocketAddr::V4(v4), IpAddr::V6(_)) => {
                    SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                }
                _ => a,
            };
            addrs.into_iter().next().map(mapped).ok_or_else(|| {
                format!("--upstream-retry-endpoints (UPSTREAM_RETRY_ENDPOINTS): {hp} resolves to nothing")
            })
        })
        .collect()
}

/// The first global (not link-local, not loopback) IPv6 address of `iface`:
/// what the reference advertises when NACK_ADDR is not set.
fn first_global_v6(iface: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != iface {
            return None;
        }
        let a = ifa.address?.as_sockaddr_in6()?.ip();
        (!a.is_loopback() && (a.segments()[0] & 0xFFC0) != 0xFE80).then_some(a)
    })
}

fn admin_addr(cfg: &Config) -> Result<SocketAddr, String> {
    let hp = &cfg.runtime.metrics_addr;
    let resolved = match &hp.host {
        Host::Any => Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, hp.port))),
        _ => hp.to_socket_addrs().ok().and_then(|mut a| a.next()),
    };
    resolved.ok_or_else(|| format!("--metrics-addr (METRICS_ADDR) = {hp}: cannot resolve"))
}

/// Reads a bearer token from the file `flag` names: trimmed, at least 16
/// characters.
fn read_token(path: &std::path::Path, flag: &str) -> Result<std::sync::Arc<str>, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag} = {}: cannot read it: {e}", path.display()))?;
    let t = t.trim();
    if t.len() < 16 {
        return Err(format!(
            "{flag} = {}: the token must be at least 16 characters",
            path.display()
        ));
    }
    Ok(std::sync::Arc::from(t))
}

/// The `/events` subscriptions of `--upstream-events`, with their token.
fn upstream_events(
    cfg: &Config,
) -> Result<Option<std::sync::Arc<ricochet::admin::subscribe::UpstreamEvents>>, String> {
    let p = &cfg.proxy;
    if p.events_upstreams.is_empty() {
        return Ok(None);
    }
    let Some(path) = &p.events_token_file else {
        return Err("--upstream-events is set but --upstream-events-token-file is not: the \
                    upstreams' /events need their --admin-token-file token; write it to a file \
                    and name that file"
            .to_string());
    };
    let token = read_token(path, "--upstream-events-token-file")?;
    Ok(Some(ricochet::admin::subscribe::UpstreamEvents::new(
        &p.events_upstreams,
        token,
        ricochet::admin::EVENTS_KEEP_ALIVE,
    )))
}

fn serve(cfg: Config) -> Result<(), String> {
    let started = Instant::now();
    let (mut opts, beacon_settings) = options(&cfg)?;
    let admin = admin_addr(&cfg)?;
    // Token files are read before any socket opens, so a bad one fails fast.
    let token = cfg
        .engine
        .admin_token_file
        .as_deref()
        .map(|p| read_token(p, "--admin-token-file"))
        .transpose()?;
    let upstream_events = upstream_events(&cfg)?;
    let store = cfg.cache.redis_addr.as_ref().map(|addr| {
        let shared_cache = cfg.cache.backend == config::CacheBackend::Redis;
        let (client, queue) = ricochet::store::channel(shared_cache);
        opts.store = Some(client);
        let settings = ricochet::store::StoreSettings {
            addr: addr.to_string(),
            shared_cache,
            dial_timeout: cfg.cache.dial_timeout,
            op_timeout: cfg.cache.op_timeout,
            dedup_window: cfg.retransmit.dedup_window,
            proxy_window: cfg.proxy.dedup_window,
            owner: cfg.runtime.instance_id.clone(),
        };
        (settings, queue, std::sync::Arc::new(ricochet::store::StoreStats::default()))
    });
    // The node key is loaded before the workers start: they run the DHT.
    let discovery = if cfg.discovery.enabled {
        let settings = ricochet::discovery::Settings::from_config(&cfg, &opts, &beacon_settings);
        let d = ricochet::discovery::Discovery::new(settings)?;
        opts.dht = Some(d.runtime_options());
        Some(d)
    } else {
        None
    };
    // The cluster key is loaded before the workers start too: they run the
    // rumor-dedup shards and ACK rumors.
    let cluster = match ricochet::cluster::Settings::from_config(&cfg, &opts, &beacon_settings) {
        Some(settings) => {
            let prepared = ricochet::cluster::Cluster::prepare(settings)?;
            opts.gossip = Some(prepared.runtime_options());
            Some(prepared)
        }
        None => None,
    };
    let runtime = Runtime::start(opts.clone()).map_err(|e| {
        format!(
            "starting the workers failed: {e} (ports {} and {}; is another endpoint running, or \
             is the interface missing a multicast route?)",
            opts.listen_port, opts.nack_port
        )
    })?;
    let shared = runtime.shared();
    tracing::info!(
        backend = shared.backend,
        workers = opts.cpus.len(),
        cpus = ?opts.cpus,
        listen_port = opts.listen_port,
        nack_port = opts.nack_port,
        %admin,
        "ricochet serving"
    );
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ricochet-control")
        .build()
        .map_err(|e| format!("control thread runtime: {e}"))?;
    let drain = cfg.runtime.drain_timeout;
    let beacons = cfg.beacon.enabled;
    let mut state = ricochet::admin::AdminState::new(
        shared.clone(),
        cfg.runtime.instance_id.clone(),
        runtime.control(),
        token,
    );
    state.started = started;
    let store = store.map(|(settings, queue, stats)| {
        state.sections.push(stats.clone());
        (settings, queue, stats)
    });
    let store_control = runtime.control();
    state.max_subscribers = cfg.proxy.max_downstreams;
    if let Some(u) = &upstream_events {
        state.sections.push(u.clone());
    }
    if let Some(d) = &discovery {
        state.sections.push(d.section(shared.clone()));
    }
    let discovery_control = runtime.control();
    let cluster = match cluster {
        Some(prepared) => {
            let c = prepared.start(runtime.control(), shared.clone())?;
            state.sections.push(c.section());
            Some(c)
        }
        None => None,
    };
    let result = control.block_on(async move {
        let listener = tokio::net::TcpListener::bind(admin).await.map_err(|e| {
            format!("--metrics-addr (METRICS_ADDR) = {admin}: cannot listen: {e}")
        })?;
        tokio::spawn(ricochet::admin::forward_events(state.clone()));
        if let Some(u) = &upstream_events {
            u.spawn(&state);
        }
        if let Some((settings, queue, stats)) = store {
            tracing::info!(addr = %settings.addr, shared_cache = settings.shared_cache, "shared store: Redis");
            tokio::spawn(async move {
                if let Err(e) = ricochet::store::run(settings, queue, store_control, stats).await {
                    tracing::error!("{e}");
                }
            });
        }
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, ricochet::admin::router(state)).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        });
        if beacons {
            tokio::spawn(beacon::run(opts.clone(), beacon_settings, shared.clone()));
        }
        let discovery = discovery.map(|d| d.spawn(discovery_control, shared.clone()));
        let cluster = cluster.map(ricochet::cluster::Cluster::spawn);
        let failed = {
            let shared = shared.clone();
            async move {
                while !shared.failed() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        tokio::select! {
            () = wait_for_signal() => {}
            () = failed => return Err("a worker stopped on an error (see the log above)".to_string()),
        }
        shared.start_drain();
        if !drain.is_zero() {
            tracing::info!(?drain, "draining: not ready, still serving");
            tokio::time::sleep(drain).await;
        }
        if let Some(d) = discovery {
            d.stop().await;
        }
        if let Some(c) = cluster {
            c.stop().await;
        }
        Ok::<(), String>(())
    });
    tracing::info!("stopping workers");
    runtime.stop();
    control.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
