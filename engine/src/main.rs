//! `ricochet`: the daemon. `ricochet` alone (or `ricochet run`) serves,
//! configured by flags, env vars and a TOML file, like the reference
//! `retry-endpoint` binary it replaces; `ricochet check-config` validates the
//! configuration and prints every effective setting with where it came from.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ricochet::config::{self, Config, Host, LogFormat, Origin, RunArgs};
use ricochet::retry;
use ricochet::rt::{Addressing, Backend, Egress, Options, Runtime, beacon};
use ricochet_wire::control::AdvertFlags;
use ricochet_wire::group;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Without a subcommand the settings are taken at the top level and the
/// endpoint runs, as the reference binary does (`ricochet -nack-port 9300`).
#[derive(Parser)]
#[command(
    name = "ricochet",
    version = ricochet::LONG_VERSION,
    about = "Retry endpoint for sequence-numbered multicast",
    long_about = "Retry endpoint for sequence-numbered multicast.\n\nWith no command it runs the \
                  endpoint, like `ricochet run`. Flags take one or two dashes (-nack-port 9300, \
                  --nack-port=9300); every flag has an env var.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the endpoint (the same as no command).
    Run(RunArgs),
    /// Validate the configuration, print every effective setting and exit.
    CheckConfig(RunArgs),
    /// Summarise a running endpoint (readiness, rates, answers, drops,
    /// cache, cluster) from its admin API.
    Status(ricochet::status::Args),
    /// Write the shell completion script for SHELL to stdout.
    Completions {
        #[arg(value_enum)]
        shell: ricochet::manual::Shell,
    },
    /// Write the ricochet(1) man page (roff) to stdout.
    Man,
}

fn main() -> ExitCode {
    // `status` is a client of a running endpoint: it takes none of the
    // endpoint's flags, so it is parsed before they are checked.
    if std::env::args_os().nth(1).is_some_and(|a| a == "status") {
        return ricochet::status::main(std::env::args_os().skip(1));
    }
    let argv = config::normalize_go_flags(std::env::args_os());
    if let Err(e) = config::check_flags(&argv) {
        eprintln!("ricochet: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(argv);
    let (run, args) = match &cli.command {
        None => (true, &cli.run),
        Some(Command::Run(a)) => (true, a),
        Some(Command::CheckConfig(a)) => (false, a),
        Some(Command::Status(a)) => return ricochet::status::run(a),
        Some(Command::Completions { shell }) => {
            return ricochet::manual::completions(<Cli as clap::CommandFactory>::command(), *shell);
        }
        Some(Command::Man) => {
            return ricochet::manual::man(<Cli as clap::CommandFactory>::command());
        }
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
        return match options(&cfg).and_then(|_| ssm_sources(&cfg)) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ricochet: {e}");
                ExitCode::from(2)
            }
        };
    }
    // What the host must provide (interfaces, the NACK address) is a
    // configuration error too: exit 2, before logging starts.
    let prepared = match options(&cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ricochet: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    // SSM sources are resolved before any socket opens: fail-closed.
    let ssm = match ssm_sources(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ricochet: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let logging = init_logging(&cfg);
    for note in cfg.notes() {
        tracing::info!("{note}");
    }
    match serve(cfg, prepared, ssm, logging) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ricochet: {e}");
            ExitCode::from(1)
        }
    }
}

/// The installed log filter, which SIGHUP flips between the configured one
/// and `debug` (`info` when `debug` or `trace` is configured), and
/// `/loglevel` sets.
#[derive(Debug)]
struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The configured filter's directives (a level, or `RUST_LOG`).
    configured: String,
    /// Whether the other filter is in force.
    flipped: std::sync::atomic::AtomicBool,
    /// The directives in force now.
    current: std::sync::Mutex<String>,
}

impl ricochet::admin::LogLevel for Logging {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.to_ascii_uppercase()).unwrap_or_default()
    }

    fn set(&self, level: &str) -> Result<String, String> {
        let level = match level.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_owned(),
            l @ ("trace" | "debug" | "info" | "warn" | "error") => l.to_owned(),
            other => {
                return Err(format!(
                    "unknown level {other:?}: use debug, info, warn, error or trace"
                ));
            }
        };
        self.apply(&level)?;
        self.flipped.store(level != self.configured, std::sync::atomic::Ordering::Relaxed);
        Ok(level.to_ascii_uppercase())
    }
}

impl Logging {
    /// Switches to the other filter and logs the one now in force. The line
    /// is written under the configured filter's alternative, which always
    /// shows `info`: after switching to it, before switching back.
    fn toggle(&self) {
        use std::sync::atomic::Ordering;
        let other = match self.configured.as_str() {
            "debug" | "trace" => "info",
            _ => "debug",
        };
        let flip = !self.flipped.load(Ordering::Relaxed);
        let level = if flip { other } else { self.configured.as_str() };
        if !flip {
            tracing::info!("SIGHUP: log level now {level}");
        }
        match self.apply(level) {
            Ok(()) => self.flipped.store(flip, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot change the log level"),
        }
        if flip {
            tracing::info!("SIGHUP: log level now {level}");
        }
    }

    /// Puts `directives` in force.
    fn apply(&self, directives: &str) -> Result<(), String> {
        EnvFilter::try_new(directives)
            .map_err(|e| e.to_string())
            .and_then(|f| self.handle.reload(f).map_err(|e| e.to_string()))?;
        if let Ok(mut c) = self.current.lock() {
            directives.clone_into(&mut c);
        }
        Ok(())
    }
}

/// Installs the subscriber: the configured level (`--log-level`,
/// `LOG_LEVEL`, the file, or `--debug`), or `RUST_LOG` when the level was
/// left at its default; colour only on a terminal without `NO_COLOR`; the
/// instance id on every line.
fn init_logging(cfg: &Config) -> std::sync::Arc<Logging> {
    let level = cfg.runtime.log_level.as_str().to_ascii_lowercase();
    let level_is_default = matches!(cfg.origin("log-level"), None | Some(Origin::Default));
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (filter, configured, bad_rust_log) = match rust_log.filter(|_| level_is_default) {
        Some(v) => match EnvFilter::try_new(&v) {
            Ok(f) => (f, v, None),
            Err(e) => (EnvFilter::new(&level), level, Some((v, e))),
        },
        None => (EnvFilter::new(&level), level, None),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let color = use_color(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let json = cfg.runtime.log_format == LogFormat::Json;
    let instance = InstanceField::new(&cfg.runtime.instance_id, json, color);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let format = tracing_subscriber::fmt::format().json();
        registry
            .with(
                // JSON lines go to stdout, text to stderr, as the
                // reference writes them.
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stdout)
                    .json()
                    .event_format(instance.wrap(format)),
            )
            .init();
    } else {
        let format = tracing_subscriber::fmt::format().with_ansi(color);
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(color)
                    .with_writer(std::io::stderr)
                    .event_format(instance.wrap(format)),
            )
            .init();
    }
    if let Some((value, e)) = bad_rust_log {
        tracing::warn!(rust_log = value, error = %e, "RUST_LOG does not parse; using --log-level");
    }
    std::sync::Arc::new(Logging {
        handle,
        current: std::sync::Mutex::new(configured.clone()),
        configured,
        flipped: std::sync::atomic::AtomicBool::new(false),
    })
}

/// ANSI colour only on a terminal, and never when `NO_COLOR` is set to
/// something (<https://no-color.org>).
fn use_color(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

/// `instance=<id>` on every log line, whichever thread logs it: appended to
/// a text line as its last field, first in a JSON object.
#[derive(Debug, Clone)]
struct InstanceField {
    /// Pre-rendered: ` instance=id` (text) or `"instance":"id",` (JSON).
    rendered: String,
    json: bool,
}

impl InstanceField {
    fn new(instance: &str, json: bool, color: bool) -> Self {
        let rendered = if json {
            format!("{}:{},", serde_json::json!("instance"), serde_json::json!(instance))
        } else {
            let plain = !instance.is_empty()
                && instance.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=');
            let value = if plain { instance.to_string() } else { format!("{instance:?}") };
            // The same styling the formatter gives the event's own fields.
            if color {
                format!(" \x1b[3minstance\x1b[0m\x1b[2m=\x1b[0m{value}")
            } else {
                format!(" instance={value}")
            }
        };
        InstanceField { rendered, json }
    }

    fn wrap<F>(self, inner: F) -> WithInstance<F> {
        WithInstance { inner, field: self }
    }

    /// Splices the field into one formatted event.
    fn splice(&self, line: &str, out: &mut Writer<'_>) -> std::fmt::Result {
        if self.json {
            if let Some(rest) = line.strip_prefix('{') {
                return write!(out, "{{{}{rest}", self.rendered);
            }
        } else if let Some(body) = line.strip_suffix('\n') {
            return writeln!(out, "{body}{}", self.rendered);
        }
        out.write_str(line)
    }
}

/// An event format that adds [`InstanceField`] to what `inner` writes.
struct WithInstance<F> {
    inner: F,
    field: InstanceField,
}

impl<S, N, F> FormatEvent<S, N> for WithInstance<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        self.field.splice(&line, &mut writer)
    }
}

/// Everything the runtime needs, derived from the configuration. Fails with
/// the flag to fix when the host cannot provide it (unknown interface).
fn options(cfg: &Config) -> Result<(Options, beacon::BeaconSettings), String> {
    let net = &cfg.network;
    let addressing = if net.ipv4_lab {
        Addressing::Ipv4Lab { interface: lab_interface("--mc-iface (MC_IFACE)", &net.mc_iface)? }
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
    let egress = egress_interfaces(cfg)?;
    // As the reference: the NACK socket binds the address listeners are
    // told about, so every answer leaves from it. A wildcard bind
    // (`NACK_ADDR=::`, the lab's 0.0.0.0) answers each NACK from the
    // address it arrived on (packet info, `rt::reply_source`), so
    // listeners filtering by the address they asked still take it.
    let nack_bind = match (cfg.nack.addr, net.ipv4_lab) {
        (Some(a), _) => a,
        (None, true) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, false) => IpAddr::V6(nack_addr_of(&cfg.retransmit.egress_ifaces[0])?),
    };
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
        proxy_allow: retry::AllowList::new(cfg.proxy.allow.iter().copied()),
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
        ingress_allow: retry::AllowList::new(net.ingress_allow.iter().copied()),
        nack_bind,
        nack_port: cfg.nack.port,
        // The lab's listeners share the host: retransmits must loop back.
        multicast_loop: cfg.retransmit.multicast_loop || net.ipv4_lab,
        multicast_hops: 16,
        egress,
        debug_events: cfg.runtime.debug,
        retry,
        recovery,
        batch: 32,
        uring_batch_wait: cfg.engine.uring_batch_wait,
        store: None,
        dedup_window: cfg.retransmit.dedup_window,
        dht: None,
        gossip: None,
        nack_tracing: None,
    };
    let advertised = match nack_bind {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) if a.is_unspecified() => Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
        IpAddr::V4(a) => a.to_ipv6_mapped(),
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
        all_scopes: cfg.beacon.scope == config::BeaconScope::All,
        nack_addr: advertised,
        nack_port: cfg.nack.port,
        port: cfg.beacon.port,
        tier: cfg.beacon.tier,
        preference: cfg.beacon.preference,
        interval: cfg.beacon.interval,
        flags,
        draining: cfg.beacon.draining,
        // --control-group-compat: under SSM, the ASM beacon group, the SSM
        // one, or both; under ASM always the ASM one.
        prefixes: {
            use group::SourceMode::{Asm, Ssm};
            match (net.source_mode, cfg.beacon.control_groups) {
                (Asm, _) | (_, config::ControlGroups::AsmOnly) => vec![Asm],
                (_, config::ControlGroups::Both) => vec![Asm, Ssm],
                (_, config::ControlGroups::Derived) => vec![Ssm],
            }
        },
        bind_source: net.ssm.as_ref().and_then(|p| p.bind_source),
        instance_id: match ricochet_wire::crc32c::crc32c(cfg.runtime.instance_id.as_bytes()) {
            0 => 1,
            id => id,
        },
    };
    Ok((opts, beacon))
}

/// Under `--source-mode ssm`, the source lists resolved once (names: AAAA
/// answers), refusing when a list yields no IPv6 address.
fn ssm_sources(cfg: &Config) -> Result<Option<ricochet::rt::ssm::SsmStart>, String> {
    if let Some(addr) = cfg.network.ssm.as_ref().and_then(|p| p.bind_source) {
        beacon::check_bind_source(addr)?;
    }
    match &cfg.network.ssm {
        Some(p) if p.is_ssm() => ricochet::rt::ssm::SsmStart::resolve(p.clone())
            .map(|s| Some(s.with_manifest_port(cfg.beacon.port))),
        _ => Ok(None),
    }
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

/// The interfaces multicast retransmits leave on (`EGRESS_IFACE`), each
/// checked to exist, as the reference checks them at startup. With
/// `--ipv4-lab` they are IPv4 interface addresses (`lo` and the default
/// `eth0` stand for 127.0.0.1).
fn egress_interfaces(cfg: &Config) -> Result<Vec<Egress>, String> {
    let names = &cfg.retransmit.egress_ifaces;
    names
        .iter()
        .map(|name| {
            if cfg.network.ipv4_lab {
                return lab_interface("--egress-iface (EGRESS_IFACE)", name).map(Egress::V4);
            }
            nix::net::if_::if_nametoindex(name.as_str()).map(Egress::V6).map_err(|e| {
                format!(
                    "--egress-iface (EGRESS_IFACE) = {:?}: interface {name:?} not found ({e}); \
                     set it to the interface(s) retransmits should leave on, comma-separated \
                     (see `ip link`)",
                    names.join(",")
                )
            })
        })
        .collect()
}

/// An interface in `--ipv4-lab`: its IPv4 address, where `lo` and the
/// reference's default `eth0` (or nothing) stand for 127.0.0.1.
fn lab_interface(flag: &str, value: &str) -> Result<Ipv4Addr, String> {
    match value {
        "lo" | "eth0" | "" => Ok(Ipv4Addr::LOCALHOST),
        other => other.parse().map_err(|_| {
            format!(
                "{flag} = {other:?}: with --ipv4-lab it must be an IPv4 address such as \
                 127.0.0.1 (or \"lo\")"
            )
        }),
    }
}

/// The NACK address when `NACK_ADDR` is not set, found as the reference
/// finds it: the first global-unicast IPv6 address (unique-local included;
/// not loopback, not link-local) of the first egress interface.
fn nack_addr_of(iface: &str) -> Result<Ipv6Addr, String> {
    first_global_v6(iface).ok_or_else(|| {
        format!(
            "--nack-addr (NACK_ADDR) is not set and the first --egress-iface ({iface:?}) has no \
             global-unicast IPv6 address to bind and advertise; set --nack-addr to the fabric \
             address listeners should send NACKs to, or add one to {iface:?}"
        )
    })
}

/// The first global (not link-local, not loopback, not multicast) IPv6
/// address of `iface`.
fn first_global_v6(iface: &str) -> Option<Ipv6Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != iface {
            return None;
        }
        let a = ifa.address?.as_sockaddr_in6()?.ip();
        let global = !a.is_loopback()
            && !a.is_unspecified()
            && !a.is_multicast()
            && (a.segments()[0] & 0xFFC0) != 0xFE80;
        global.then_some(a)
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
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                "{flag} = {}: the token file is readable by every user; `chmod o-r` it (0600 \
                 or 0640)",
                path.display()
            );
        }
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

fn serve(
    cfg: Config,
    (mut opts, beacon_settings): (Options, beacon::BeaconSettings),
    ssm: Option<ricochet::rt::ssm::SsmStart>,
    logging: std::sync::Arc<Logging>,
) -> Result<(), String> {
    let started = Instant::now();
    let admin = admin_addr(&cfg)?;
    // Token files are read before any socket opens, so a bad one fails fast.
    let token = cfg
        .engine
        .admin_token_file
        .as_deref()
        .map(|p| read_token(p, "--admin-token-file"))
        .transpose()?;
    let upstream_events = upstream_events(&cfg)?;
    let otlp = ricochet::otlp::Otlp::from_config(&cfg.runtime, env!("CARGO_PKG_VERSION"))?;
    opts.nack_tracing = otlp.as_ref().and_then(ricochet::otlp::Otlp::nack_tracing);
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
    let mut runtime = Runtime::start_ssm(opts.clone(), ssm).map_err(|e| {
        format!(
            "starting the workers failed: {e} (ports {} and {}; is another endpoint running, or \
             is the interface missing a multicast route?)",
            opts.listen_port, opts.nack_port
        )
    })?;
    let shared = runtime.shared();
    // The instance id is on every line already (see `InstanceField`).
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend = shared.backend,
        workers = opts.cpus.len(),
        cpus = config::format_cpulist(&opts.cpus),
        shard_bits = cfg.network.shard_bits,
        scope = cfg.network.scope.name(),
        source_mode = cfg.network.source_mode.name(),
        ipv4_lab = cfg.network.ipv4_lab,
        listen_port = opts.listen_port,
        nack_port = opts.nack_port,
        egress_port = opts.egress_port,
        nack_bind = %SocketAddr::new(opts.nack_bind, opts.nack_port),
        nack_advertised = %SocketAddr::from((beacon_settings.nack_addr, beacon_settings.nack_port)),
        shard_groups = shard_groups(&opts, cfg.network.shard_bits),
        groups_joined = opts.groups.len(),
        cache_backend = cfg.cache.backend.name(),
        metrics_addr = %admin,
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
    state.debug_public = cfg.runtime.debug_public;
    state.log_level = Some(logging.clone());
    state.own_source = cfg.network.ssm.as_ref().and_then(|p| p.bind_source);
    // The reference logs its host at startup (`host.inventory`); these are
    // the facts `bre_host_info` carries.
    let h = &state.host;
    tracing::info!(
        hostname = %h.hostname,
        kernel_version = %h.kernel_version,
        cpu_logical = h.cpu_logical,
        mem_bytes = h.mem_bytes,
        rmem_max = %h.rmem_max,
        nic = %h.nic,
        speed_mbps = %h.speed_mbps,
        "host inventory"
    );
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
    if let Some(o) = &otlp {
        state.sections.push(o.section());
    }
    let admin_limits = ricochet::admin::server::Limits {
        max_connections: cfg.runtime.admin_max_connections,
        per_source: cfg.runtime.admin_max_connections_per_source,
        header_timeout: cfg.runtime.admin_header_timeout,
    };
    let ssm = runtime.take_ssm();
    if let Some(s) = &ssm {
        state.sections.push(s.section());
    }
    let admin_stats = std::sync::Arc::new(ricochet::admin::server::ServerStats::default());
    state.sections.push(admin_stats.clone());
    let result = control.block_on(async move {
        let listener = tokio::net::TcpListener::bind(admin).await.map_err(|e| {
            format!("--metrics-addr (METRICS_ADDR) = {admin}: cannot listen: {e}")
        })?;
        tokio::spawn(ricochet::admin::forward_events(state.clone()));
        let otlp = otlp.map(|o| o.spawn(state.clone()));
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
        tokio::spawn(ricochet::admin::server::serve(
            listener,
            ricochet::admin::router(state),
            admin_limits,
            admin_stats,
        ));
        if beacons {
            tokio::spawn(beacon::run(opts.clone(), beacon_settings, shared.clone()));
        }
        if let Some(s) = ssm {
            tokio::spawn(s.run(shared.clone()));
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
            () = wait_for_signal(&logging) => {}
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
        if let Some(o) = otlp {
            o.stop().await;
        }
        Ok::<(), String>(())
    });
    tracing::info!("stopping workers");
    runtime.stop();
    control.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Waits for SIGTERM or SIGINT. SIGHUP flips debug logging on and off (as
/// the newest reference does) and keeps waiting.
async fn wait_for_signal(logging: &Logging) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return tracing::info!("SIGTERM"),
            _ = int.recv() => return tracing::info!("SIGINT"),
            _ = hup.recv() => logging.toggle(),
        }
    }
}

/// The data shard groups joined, as `first..last` group addresses
/// (block, subtree and BEEF groups come on top: see `groups_joined`).
fn shard_groups(opts: &Options, shard_bits: u8) -> String {
    let last = ((1u32 << shard_bits) - 1) as u16;
    let addr = |i: u16| match &opts.addressing {
        Addressing::Ipv4Lab { .. } => group::ipv4_lab_group(i).to_string(),
        Addressing::Ipv6 { mode, scope, group_id, .. } => {
            group::ipv6_group(*mode, *scope, *group_id, i)
                .map_or_else(|_| format!("index {i}"), |a| a.to_string())
        }
    };
    format!("{}..{} ({} groups)", addr(0), addr(last), u32::from(last) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(config::normalize_go_flags(args))
    }

    #[test]
    fn cli_is_valid() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn no_subcommand_runs_with_top_level_flags() {
        for args in [
            &["ricochet", "-nack-port", "9301", "-debug"][..],
            &["ricochet", "--nack-port=9301", "--debug"],
            &["ricochet", "-nack-port=9301", "--debug=true"],
        ] {
            let cli = parse(args).unwrap();
            assert!(cli.command.is_none(), "{args:?}");
            assert_eq!(cli.run.get("nack-port"), Some("9301"), "{args:?}");
            assert_eq!(cli.run.get("debug"), Some("true"), "{args:?}");
        }
        let cli = parse(&["ricochet"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run, RunArgs::default());
    }

    #[test]
    fn subcommands_keep_working() {
        let cli = parse(&["ricochet", "run", "-nack-port", "9302"]).unwrap();
        let Some(Command::Run(a)) = &cli.command else { panic!("not run") };
        assert_eq!(a.get("nack-port"), Some("9302"));
        let cli = parse(&["ricochet", "check-config", "--ipv4-lab"]).unwrap();
        let Some(Command::CheckConfig(a)) = &cli.command else { panic!("not check-config") };
        assert_eq!(a.get("ipv4-lab"), Some("true"));
        // Flags go on one side of the subcommand, not both.
        assert!(parse(&["ricochet", "-debug", "run"]).is_err());
    }

    #[test]
    fn help_and_version_stay() {
        use clap::error::ErrorKind;
        for (args, kind) in [
            (&["ricochet", "-h"][..], ErrorKind::DisplayHelp),
            (&["ricochet", "--help"], ErrorKind::DisplayHelp),
            (&["ricochet", "-help"], ErrorKind::DisplayHelp),
            (&["ricochet", "help"], ErrorKind::DisplayHelp),
            (&["ricochet", "-V"], ErrorKind::DisplayVersion),
            (&["ricochet", "--version"], ErrorKind::DisplayVersion),
        ] {
            let Err(e) = parse(args) else { panic!("{args:?} parsed") };
            assert_eq!(e.kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset");
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }

    #[test]
    fn instance_field_goes_on_every_line() {
        fn spliced(field: &InstanceField, line: &str) -> String {
            let mut out = String::new();
            field.splice(line, &mut Writer::new(&mut out)).unwrap();
            out
        }
        let text = InstanceField::new("edge-1", false, false);
        assert_eq!(
            spliced(&text, "T  INFO x: hello a=1\n"),
            "T  INFO x: hello a=1 instance=edge-1\n"
        );
        let spaced = InstanceField::new("edge 1", false, false);
        assert_eq!(spliced(&spaced, "m\n"), "m instance=\"edge 1\"\n");
        let json = InstanceField::new("e\"1", true, false);
        let line = spliced(&json, "{\"timestamp\":\"t\",\"level\":\"INFO\"}\n");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["instance"], "e\"1");
        assert_eq!(v["level"], "INFO");
    }

    #[test]
    fn shard_groups_name_the_range() {
        let affinity = [0];
        let cfg = config::load_from(
            &RunArgs::try_parse_from(["ricochet", "--ipv4-lab", "--shard-bits", "3"]).unwrap(),
            &config::MapEnv::new().with_hostname("h"),
            &affinity,
        )
        .unwrap();
        let (opts, _) = options(&cfg).unwrap();
        assert_eq!(shard_groups(&opts, 3), "239.11.0.0..239.11.0.7 (8 groups)");
    }
}
