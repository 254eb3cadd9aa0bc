//! Configuration: flags, environment variables and a TOML file, validated
//! into one typed [`Config`].
//!
//! # Contract
//! - **Names.** Every setting of the reference Go `retry-endpoint` keeps its
//!   flag (lower-case kebab: `--nack-port`) and env var (`NACK_PORT`);
//!   ricochet's own settings use the `RICOCHET_` env prefix. In the TOML file
//!   (`--config`) a setting is its flag in snake_case (`nack_port = 9300`).
//!   The table in `settings.rs` is the one list of names; `--help`, the file
//!   keys and [`Config::render`] come from it.
//! - **Precedence**, per setting: command-line flag > env var > config file >
//!   default. An empty env var counts as unset (as in the reference). A
//!   deprecated alias (`RL_SENDER_RATE`) is read only when the canonical name
//!   is unset at that level.
//! - **Cache TTLs** follow the reference: an explicitly set per-type TTL wins,
//!   else an explicitly set `--cache-ttl`, else the per-type default; BEEF has
//!   its own TTL that `--cache-ttl` does not change. Every TTL must be > 0.
//! - **CPUs.** `--cpus` (cpulist) and `--cpu-mask` (hex) pick the worker
//!   CPUs; the one set at the highest level wins, both at the same level is
//!   an error, neither means every CPU of the process affinity mask. A CPU
//!   outside the affinity mask is refused.
//! - **Errors never fall back.** Unlike the reference, a value that does not
//!   parse — from any source, env vars included — fails [`load`]. Every
//!   problem is collected (not just the first) and each message names the
//!   flag, the env var, the value, where it came from and the fix.
//! - [`load`] has no side effects beyond reading env vars, the hostname and
//!   the config file, all through [`Environment`] so tests can inject them.
//!   It does not log (logging is configured from its result); things worth a
//!   log line are in [`Config::notes`].
//!
//! # Use
//! ```no_run
//! use clap::{Parser, Subcommand};
//! use ricochet::config::{self, RunArgs};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     command: Command,
//! }
//!
//! #[derive(Subcommand)]
//! enum Command {
//!     /// Run the endpoint.
//!     Run(RunArgs),
//!     /// Print the effective configuration and exit.
//!     CheckConfig(RunArgs),
//! }
//!
//! // Accept the reference's single-dash flags (`-nack-port 9300`) too.
//! let cli = Cli::parse_from(config::normalize_go_flags(std::env::args_os()));
//! let (Command::Run(args) | Command::CheckConfig(args)) = &cli.command;
//! let affinity = config::process_affinity().expect("sched_getaffinity");
//! match config::load(args, &affinity) {
//!     Ok(cfg) => print!("{}", cfg.render()),
//!     Err(e) => {
//!         eprintln!("ricochet: {e}");
//!         std::process::exit(2);
//!     }
//! }
//! ```

mod parse;
mod resolve;
mod settings;
#[cfg(test)]
mod tests;

use core::fmt;
use core::net::IpAddr;
use core::time::Duration;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use ricochet_wire::frame::FrameVersion;
use ricochet_wire::group::{Scope, SourceMode};

pub use parse::{
    Host, HostPort, MAX_CPU_ID, ValueError, cpus_within, format_cpulist, format_go_duration,
    format_size, parse_choice, parse_cpu_mask, parse_cpulist, parse_go_bool, parse_go_duration,
    parse_group_id, parse_host_port, parse_iface, parse_int_in, parse_port, parse_positive_f64,
    parse_size, split_csv,
};
pub use settings::{RunArgs, UnknownFlag, check_flags, normalize_go_flags};

/// Loads the configuration from `args`, the process environment and the
/// config file, and validates it. `affinity` is the process's CPU affinity
/// mask (see [`process_affinity`]); worker CPUs must lie within it.
pub fn load(args: &RunArgs, affinity: &[usize]) -> Result<Config, ConfigError> {
    load_from(args, &ProcessEnv, affinity)
}

/// [`load`] with the environment (env vars, hostname, files) supplied by the
/// caller, so it is deterministic under test.
pub fn load_from(
    args: &RunArgs,
    env: &dyn Environment,
    affinity: &[usize],
) -> Result<Config, ConfigError> {
    resolve::Resolver::new(args, env).load(affinity)
}

/// The CPUs this process may run on (`sched_getaffinity`), ascending.
pub fn process_affinity() -> io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect())
}

/// Where [`load`] reads env vars, the hostname and files from.
pub trait Environment {
    /// An environment variable; `None` when unset.
    fn var(&self, name: &str) -> Option<String>;
    /// This host's name (the default instance id).
    fn hostname(&self) -> Option<String>;
    /// A whole file as UTF-8 (the config file).
    fn read_file(&self, path: &Path) -> io::Result<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // A value that is not UTF-8 keeps its replacement characters, so it
        // fails to parse with the variable named rather than vanishing.
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }

    fn hostname(&self) -> Option<String> {
        nix::unistd::gethostname().ok()?.into_string().ok()
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// An in-memory [`Environment`] for tests: env vars, files and a hostname.
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    vars: HashMap<String, String>,
    files: HashMap<PathBuf, String>,
    hostname: Option<String>,
}

impl MapEnv {
    /// An environment with nothing set and no hostname.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an env var.
    pub fn with_var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Adds a file.
    pub fn with_file(mut self, path: impl Into<PathBuf>, text: &str) -> Self {
        self.files.insert(path.into(), text.into());
        self
    }

    /// Sets the hostname.
    pub fn with_hostname(mut self, name: &str) -> Self {
        self.hostname = Some(name.into());
        self
    }
}

impl Environment for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn hostname(&self) -> Option<String> {
        self.hostname.clone()
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

/// The validated configuration.
///
/// The defaults alone, e.g. for a test elsewhere in the crate:
///
/// ```
/// use ricochet::config::{MapEnv, RunArgs, load_from};
///
/// let config = load_from(&RunArgs::default(), &MapEnv::new(), &[0]).unwrap();
/// assert_eq!(config.nack.port, 9300);
/// assert_eq!(config.engine.cpus, [0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// ricochet's process model and I/O.
    pub engine: EngineConfig,
    /// Multicast groups and sharding.
    pub network: NetworkConfig,
    /// The retry cache.
    pub cache: CacheConfig,
    /// The NACK service.
    pub nack: NackConfig,
    /// Multicast retransmission.
    pub retransmit: RetransmitConfig,
    /// NACK rate limits.
    pub rate_limits: RateLimitConfig,
    /// ADVERT beacons and retransmit modes.
    pub beacon: BeaconConfig,
    /// Cross-domain recovery from upstream endpoints.
    pub proxy: ProxyConfig,
    /// Gossip between sibling endpoints.
    pub cluster: ClusterConfig,
    /// The DHT node and upstream discovery.
    pub discovery: DiscoveryConfig,
    /// Logging, admin HTTP, drain and warm-up.
    pub runtime: RuntimeConfig,
    /// The TOML file read, if any.
    pub config_file: Option<PathBuf>,
    notes: Vec<String>,
    effective: Vec<Effective>,
}

/// ricochet's process model and I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Worker CPUs, ascending and distinct; one pinned worker each.
    pub cpus: Vec<usize>,
    /// Packet I/O back end.
    pub backend: IoBackend,
    /// io_uring: the longest a worker waits to gather a batch of
    /// completions (`IORING_ENTER_EXT_ARG` `min_wait_usec`); zero waits
    /// for the first only.
    pub uring_batch_wait: Duration,
    /// Datagram budget for ricochet's own cluster and DHT messages.
    pub max_datagram: usize,
    /// Bearer-token file for the state-changing admin endpoints.
    pub admin_token_file: Option<PathBuf>,
    /// Cluster key file for gossip and DHT MACs.
    pub cluster_key_file: Option<PathBuf>,
}

/// Multicast groups and sharding (BRC-129).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// IPv4 lab mode: groups 239.11.x.y on 127.0.0.1.
    pub ipv4_lab: bool,
    /// Interface that joins the groups (a name, or an address in lab mode).
    pub mc_iface: String,
    /// UDP port of the data groups.
    pub listen_port: u16,
    /// Scope of the data groups; with SSM only site or global.
    pub scope: Scope,
    /// BRC-129 group id.
    pub group_id: u16,
    /// ASM or SSM.
    pub source_mode: SourceMode,
    /// Data shard bits, 1..=12.
    pub shard_bits: u8,
    /// Join the subtree-data group and cache its frames.
    pub subtree_data_enabled: bool,
    /// Join the BEEF object plane and cache its frames.
    pub beef_enabled: bool,
    /// BEEF plane width in bits, 0..=12.
    pub beef_shard_bits: u8,
    /// The validated SSM posture (`--source-mode`, `--bind-source`, the
    /// `--ssm-*` lists); `None` with `--ipv4-lab`, whose IPv4 groups are
    /// any-source only.
    pub ssm: Option<ricochet_proto::ssm::posture::SsmPosture>,
    /// Sources whose multicast frames are cached (`--ingress-allow`);
    /// empty = every source.
    pub ingress_allow: Vec<ricochet_proto::retry::Prefix>,
}

/// Frame cache backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheBackend {
    /// In-process cache shards.
    Memory,
    /// A shared Redis-protocol server.
    Redis,
}

impl CacheBackend {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            CacheBackend::Memory => "memory",
            CacheBackend::Redis => "redis",
        }
    }
}

/// The retry cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Where frames are stored.
    pub backend: CacheBackend,
    /// Redis server: the store with [`CacheBackend::Redis`], else (if set)
    /// only cross-instance dedup.
    pub redis_addr: Option<HostPort>,
    /// Redis connect timeout.
    pub dial_timeout: Duration,
    /// Redis per-operation timeout; a timeout counts as a miss.
    pub op_timeout: Duration,
    /// TTL per frame type, all > 0.
    pub ttl: CacheTtls,
    /// Most frames kept; `None` = no limit.
    pub max_keys: Option<u64>,
    /// Memory budget of the in-process cache, bytes.
    pub max_bytes: u64,
}

/// Cache TTLs after the reference's precedence rule; every one is > 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtls {
    /// `--cache-ttl`, the fallback the per-type TTLs collapse to when it is
    /// set explicitly.
    pub fallback: Duration,
    /// Transactions (0x02) and bundles (0x08).
    pub tx: Duration,
    /// Block control (0x04).
    pub block: Duration,
    /// Subtree data (0x05).
    pub subtree: Duration,
    /// Anchor transactions (0x06).
    pub anchor: Duration,
    /// BEEF objects (0x09).
    pub beef: Duration,
}

impl CacheTtls {
    /// The TTL for a frame version. Pass a fragment's *original* frame
    /// version; a bare fragment, legacy and bundle frames get the tx TTL.
    pub const fn for_version(&self, version: FrameVersion) -> Duration {
        match version {
            FrameVersion::Block => self.block,
            FrameVersion::Subtree => self.subtree,
            FrameVersion::Anchor => self.anchor,
            FrameVersion::Beef => self.beef,
            FrameVersion::Legacy
            | FrameVersion::Tx
            | FrameVersion::Fragment
            | FrameVersion::Bundle => self.tx,
        }
    }
}

/// The NACK service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackConfig {
    /// UDP port.
    pub port: u16,
    /// Bind and advertised address; `None` = pick from the first egress
    /// interface.
    pub addr: Option<IpAddr>,
    /// Send no ACKs.
    pub suppress_ack: bool,
    /// Send no MISSes.
    pub suppress_miss: bool,
    /// Most frames one range NACK may ask for.
    pub max_range: u32,
}

/// Multicast retransmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Interfaces each multicast retransmit goes out on; at least one.
    pub egress_ifaces: Vec<String>,
    /// Destination port of retransmits.
    pub egress_port: u16,
    /// `IPV6_MULTICAST_LOOP` on the egress sockets.
    pub multicast_loop: bool,
    /// Cross-instance retransmit dedup window.
    pub dedup_window: Duration,
}

/// The reference's four NACK rate-limit tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Per source IP: token refill per second.
    pub ip_rate: f64,
    /// Per source IP: bucket size.
    pub ip_burst: u32,
    /// Per SeqNum: most NACKs per window.
    pub sequence_max: u32,
    /// Per SeqNum: window.
    pub sequence_window: Duration,
    /// Per (source IP, HashKey): most NACKs per window (`RL_CHAIN_RATE`).
    pub chain_rate: u32,
    /// Per (source IP, HashKey): window.
    pub chain_window: Duration,
    /// Per (source IP, group): token refill per second.
    pub group_rate: f64,
    /// Per (source IP, group): bucket size.
    pub group_burst: u32,
    /// Answer the honest-congestion tiers with THROTTLED.
    pub throttle_response: bool,
}

/// Where ADVERTs are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BeaconScope {
    /// The site-scope beacon group.
    Site,
    /// The organisation-scope beacon group.
    Org,
    /// The global-scope beacon group.
    Global,
    /// All three (`all`, or its synonym `both`); the ADVERT scope byte is 0xFF.
    All,
}

impl BeaconScope {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            BeaconScope::Site => "site",
            BeaconScope::Org => "org",
            BeaconScope::Global => "global",
            BeaconScope::All => "all",
        }
    }

    /// The group scopes an ADVERT goes to, one ADVERT each.
    pub const fn scopes(self) -> &'static [Scope] {
        match self {
            BeaconScope::Site => &[Scope::Site],
            BeaconScope::Org => &[Scope::Org],
            BeaconScope::Global => &[Scope::Global],
            BeaconScope::All => &[Scope::Site, Scope::Org, Scope::Global],
        }
    }

    /// The ADVERT scope byte.
    pub const fn wire_byte(self) -> u8 {
        match self {
            BeaconScope::Site => Scope::Site as u8,
            BeaconScope::Org => Scope::Org as u8,
            BeaconScope::Global => Scope::Global as u8,
            BeaconScope::All => 0xFF,
        }
    }
}

/// Which beacon group prefixes an SSM endpoint sends ADVERTs to
/// (`--control-group-compat`); under ASM every choice is the FF0x group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlGroups {
    /// The ASM (FF0x) beacon group only, whatever the source mode.
    AsmOnly,
    /// Under SSM, the ASM group and the SSM (FF3x) group of the scope.
    Both,
    /// Under SSM, the SSM (FF3x) group only.
    Derived,
}

impl ControlGroups {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            ControlGroups::AsmOnly => "asm-only",
            ControlGroups::Both => "both",
            ControlGroups::Derived => "derived",
        }
    }
}

/// ADVERT beacons, and the retransmit modes they advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeaconConfig {
    /// Send ADVERTs.
    pub enabled: bool,
    /// UDP port ADVERTs go to: 9300, the port listeners listen on, whatever
    /// the NACK port is.
    pub port: u16,
    /// Beacon group prefixes under SSM.
    pub control_groups: ControlGroups,
    /// Tier, 0..=254.
    pub tier: u8,
    /// Preference within the tier.
    pub preference: u8,
    /// ADVERT period, whole seconds fit the wire's u16 field (1..=65535 s).
    pub interval: Duration,
    /// Beacon groups.
    pub scope: BeaconScope,
    /// Retransmit to the group (and advertise it).
    pub multicast: bool,
    /// Retransmit unicast to the NACK's source (and advertise it).
    pub unicast: bool,
    /// Advertise draining.
    pub draining: bool,
}

/// Cross-domain recovery from upstream endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Recover misses upstream; when true, `upstreams` is not empty.
    pub enabled: bool,
    /// Upstream NACK addresses, tried in order.
    pub upstreams: Vec<HostPort>,
    /// Wait per upstream.
    pub timeout: Duration,
    /// Most upstreams tried per gap; `None` = all.
    pub max_endpoints: Option<u32>,
    /// How long a claimed gap stays claimed.
    pub dedup_window: Duration,
    /// Recovery jobs queued before drops.
    pub queue_depth: usize,
    /// Upstream admin addresses whose `/events` this endpoint subscribes to.
    pub events_upstreams: Vec<HostPort>,
    /// Bearer-token file for the upstreams' `/events`.
    pub events_token_file: Option<PathBuf>,
    /// Most `/events` subscribers served at once.
    pub max_downstreams: usize,
    /// Downstream endpoints whose Proxied NACKs are honoured (unicast
    /// copies, no 3× byte budget); empty = none but live siblings.
    pub allow: Vec<ricochet_proto::retry::Prefix>,
}

/// The gossip control plane between sibling endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Gossip UDP port; gossip runs when `--cluster-key-file` is set.
    pub port: u16,
    /// Siblings to join through.
    pub peers: Vec<HostPort>,
}

/// Where upstream endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamDiscovery {
    /// Only `--upstream-retry-endpoints`.
    Static,
    /// The static list, then whatever the DHT knows for `--upstream-domain`.
    Dht,
}

impl UpstreamDiscovery {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            UpstreamDiscovery::Static => "static",
            UpstreamDiscovery::Dht => "dht",
        }
    }
}

/// The DHT node and upstream discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Whether a DHT node runs (also when `upstream_discovery` is `Dht`).
    pub enabled: bool,
    /// DHT UDP port.
    pub port: u16,
    /// Nodes to join through.
    pub bootstrap: Vec<HostPort>,
    /// The endpoint's ed25519 key file; `None` = a fresh key each start.
    pub node_key_file: Option<PathBuf>,
    /// Where good peers are saved for the next start.
    pub peer_cache: Option<PathBuf>,
    /// The domain this endpoint serves (empty = publish no record).
    pub domain: String,
    /// Where upstreams come from.
    pub upstream_discovery: UpstreamDiscovery,
    /// The upstream domain looked up with [`UpstreamDiscovery::Dht`].
    pub upstream_domain: String,
    /// Whose records under it may name upstreams (`--upstream-keys`; no
    /// keys = unset, refused with [`UpstreamDiscovery::Dht`]).
    pub upstream_keys: ricochet_proto::discovery::Trust,
    /// Lookup and republish period.
    pub refresh: Duration,
}

/// Packet I/O back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoBackend {
    /// io_uring when the kernel allows it, else epoll (the reason logged).
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll with recvmmsg/sendmmsg.
    Epoll,
}

impl IoBackend {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Uring => "uring",
            IoBackend::Epoll => "epoll",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Logging, admin HTTP, drain and warm-up.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// `--debug`: debug level and the per-event debug lines.
    pub debug: bool,
    /// Log level (`--debug` forces debug).
    pub log_level: tracing::Level,
    /// Log format.
    pub log_format: LogFormat,
    /// Not-ready-but-serving period after SIGTERM.
    pub drain_timeout: Duration,
    /// Longest warm-up wait before ready.
    pub warmup_timeout: Duration,
    /// Admin HTTP listener; [`Host::Any`] means every address. Port 0 asks
    /// for an ephemeral port.
    pub metrics_addr: HostPort,
    /// Instance name (default: hostname).
    pub instance_id: String,
    /// OTLP/gRPC collector that metrics are pushed to (and sampled traces
    /// of the NACK path), `None` = no push.
    pub otlp_endpoint: Option<HostPort>,
    /// OTLP push period.
    pub otlp_interval: Duration,
    /// Fraction of NACKs traced over OTLP, 0..=1 (0 = no traces; needs
    /// [`RuntimeConfig::otlp_endpoint`]).
    pub trace_sampling: f64,
    /// `/debug/*` without the admin token.
    pub debug_public: bool,
    /// Most admin HTTP connections open at once.
    pub admin_max_connections: usize,
    /// Most admin HTTP connections open at once from one address.
    pub admin_max_connections_per_source: usize,
    /// Longest wait for an admin HTTP request head.
    pub admin_header_timeout: Duration,
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The command line.
    Flag,
    /// The named environment variable.
    Env(&'static str),
    /// The config file.
    File,
    /// The built-in (or computed) default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "flag",
            Origin::Env(_) => "env",
            Origin::File => "file",
            Origin::Default => "default",
        })
    }
}

/// One line of [`Config::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Effective {
    key: settings::Key,
    /// The value as a TOML literal.
    value: String,
    origin: Origin,
    note: Option<String>,
}

impl Config {
    /// Where a setting's value came from, by its canonical long flag
    /// (`"nack-port"`). `None` for an unknown flag, for `config` and
    /// `cpu-mask` (the CPU choice is reported under `cpus`), and for
    /// compatibility flags that are not set.
    pub fn origin(&self, flag: &str) -> Option<Origin> {
        self.effective.iter().find(|e| e.key.setting().flag == flag).map(|e| e.origin)
    }

    /// Things worth logging at startup (ignored compatibility flags, settings
    /// that override others). Log them once the subscriber is installed.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The effective configuration, one setting per line as
    /// `name = value  # source`, where `name` is the TOML key and `source` is
    /// `flag`, `env`, `file` or `default` (with a detail in parentheses where
    /// it helps). The lines are valid TOML, so the output (minus the
    /// `cpus` line, if the machine differs) can seed a config file. Notes
    /// follow as comments.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# ricochet effective configuration: name = value  # source (flag, env, file or default)\n",
        );
        if let Some(path) = &self.config_file {
            out.push_str(&format!("# config file: {}\n", path.display()));
        }
        for e in &self.effective {
            let s = e.key.setting();
            let mut detail: Vec<String> = Vec::new();
            if let Origin::Env(name) = e.origin
                && name != s.env
            {
                detail.push(name.to_owned());
            }
            detail.extend(e.note.clone());
            let detail =
                if detail.is_empty() { String::new() } else { format!(" ({})", detail.join("; ")) };
            out.push_str(&format!("{} = {}  # {}{detail}\n", s.toml_key(), e.value, e.origin));
        }
        for note in &self.notes {
            out.push_str(&format!("# note: {note}\n"));
        }
        out
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    flag: Option<&'static str>,
    message: String,
}

impl Problem {
    /// The canonical long flag at fault, when one is (`"shard-bits"`).
    pub fn flag(&self) -> Option<&'static str> {
        self.flag
    }

    /// The full message: flag, env var, value, origin, problem and fix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The configuration was refused; holds every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    /// Every problem, in the order found (at least one).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} configuration problems:", many.len())?;
                many.iter().try_for_each(|p| write!(f, "\n  - {p}"))
            }
        }
    }
}

impl std::error::Error for ConfigError {}
