//! The table of settings, and the clap arguments built from it.
//!
//! One row per setting: its long flag (the TOML key is the same name in
//! snake_case), env var, default, value kind, help heading and help text.
//! The clap arguments, the TOML key set, `--help` and `check-config` all come
//! from this table, so a setting cannot exist in one and be missing from
//! another.
//!
//! [`RunArgs`] implements [`clap::Args`] by hand rather than with the derive:
//! the precedence rule needs to know whether a value was typed on the command
//! line, which only [`clap::ArgMatches::value_source`] reveals, and the
//! derive throws that away.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

/// The shape of a setting's value, which decides how clap and the TOML file
/// accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Go-style bool flag: `--flag`, `--flag=true`, `--flag=false`.
    Bool,
    /// A single value; the string names it in `--help`.
    Val(&'static str),
    /// A comma-separated list; the TOML file may also give an array.
    List(&'static str),
}

/// One row of the settings table.
#[derive(Debug)]
pub(crate) struct Setting {
    /// Long flag without dashes; also the clap id. The TOML key is this name
    /// with `-` replaced by `_`.
    pub(crate) flag: &'static str,
    /// Environment variable.
    pub(crate) env: &'static str,
    /// Default as it would be typed; empty when the setting has none or the
    /// default is computed (hostname, affinity mask).
    pub(crate) default: &'static str,
    /// Value shape.
    pub(crate) kind: Kind,
    /// `--help` section.
    pub(crate) heading: &'static str,
    /// One-line meaning.
    pub(crate) help: &'static str,
    /// Other accepted long flags (the reference's older names).
    pub(crate) aliases: &'static [&'static str],
    /// Other accepted env vars, read only when [`Setting::env`] is unset.
    pub(crate) env_aliases: &'static [&'static str],
}

impl Setting {
    /// The TOML key: the flag in snake_case.
    pub(crate) fn toml_key(&self) -> String {
        self.flag.replace('-', "_")
    }

    /// The clap argument for this row.
    fn arg(&self) -> Arg {
        let mut arg = Arg::new(self.flag)
            .long(self.flag)
            .env(self.env)
            .help(self.help)
            .help_heading(self.heading)
            .aliases(self.aliases.iter().copied())
            // Go's flag package lets a repeated flag override the earlier one.
            .overrides_with(self.flag);
        if !self.default.is_empty() {
            arg = arg.default_value(self.default);
        }
        match self.kind {
            Bool => arg
                .value_name("BOOL")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true"),
            // Go's flag package takes the next word as the value even when it
            // starts with a dash (`-beacon-tier -1`, `-instance -x`).
            Val(name) | List(name) => arg.value_name(name).allow_hyphen_values(true),
        }
    }
}

const ENGINE: &str = "Engine";
const NETWORK: &str = "Network and sharding";
const CACHE: &str = "Cache";
const NACK: &str = "NACK service";
const RETRANSMIT: &str = "Retransmit";
const RATE: &str = "Rate limits";
const BEACON: &str = "Beacon";
const PROXY: &str = "Proxy (cross-domain recovery)";
const CLUSTER: &str = "Cluster (gossip between sibling endpoints)";
const DISCOVERY: &str = "Discovery (DHT)";
const RUNTIME: &str = "Runtime and observability";
const COMPAT: &str = "Accepted for compatibility, ignored";

macro_rules! settings {
    ($(
        $key:ident($flag:literal, $env:literal, $default:literal, $kind:expr, $heading:expr, $help:literal
            $(, aliases = [$($alias:literal),*])? $(, env_aliases = [$($env_alias:literal),*])? $(,)?)
    ),* $(,)?) => {
        /// Names a row of [`SETTINGS`]; `key as usize` is its index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) enum Key { $($key),* }

        /// Every key, in table order (`ALL_KEYS[i] as usize == i`).
        pub(crate) static ALL_KEYS: &[Key] = &[$(Key::$key),*];

        /// Every setting, in `--help` and `check-config` order.
        pub(crate) static SETTINGS: &[Setting] = &[$(Setting {
            flag: $flag,
            env: $env,
            default: $default,
            kind: $kind,
            heading: $heading,
            help: $help,
            aliases: &[$($($alias),*)?],
            env_aliases: &[$($($env_alias),*)?],
        }),*];
    };
}

use Kind::{Bool, List, Val};

settings! {
    Config("config", "RICOCHET_CONFIG", "", Val("FILE"), ENGINE,
        "TOML file of settings named in snake_case (nack_port = 9300); flags and env vars override it"),
    Cpus("cpus", "RICOCHET_CPUS", "", Val("CPULIST"), ENGINE,
        "CPUs to run one pinned worker on each, as a Linux cpulist (0-3,8) [default: the process affinity mask]"),
    CpuMask("cpu-mask", "RICOCHET_CPU_MASK", "", Val("HEX"), ENGINE,
        "The same as --cpus, as a hex mask (0xf = CPUs 0-3); give one of the two"),
    NackWorkers("nack-workers", "NACK_WORKERS", "0", Val("N"), ENGINE,
        "Without --cpus/--cpu-mask: run this many workers, on the first N CPUs of the affinity mask (0 = all)"),
    Backend("backend", "RICOCHET_BACKEND", "auto", Val("BACKEND"), ENGINE,
        "Packet I/O back end: auto (io_uring, else epoll), uring or epoll"),
    UringBatchWait("uring-batch-wait", "RICOCHET_URING_BATCH_WAIT", "200us", Val("DURATION"), ENGINE,
        "io_uring (kernel 6.12+): the longest a worker waits to gather a batch of completions before it handles those it has (shorter under load); fewer kernel crossings per NACK for up to this much added latency, 0..=10ms, 0 = handle each at once"),
    Ipv4Lab("ipv4-lab", "RICOCHET_IPV4_LAB", "false", Bool, ENGINE,
        "Lab mode: IPv4 groups 239.11.x.y on 127.0.0.1 instead of IPv6 groups"),
    MaxDatagram("max-datagram", "RICOCHET_MAX_DATAGRAM", "1232", Val("BYTES"), ENGINE,
        "Datagram budget for ricochet's own gossip messages, 512..=65507 bytes"),
    AdminTokenFile("admin-token-file", "RICOCHET_ADMIN_TOKEN_FILE", "", Val("FILE"), ENGINE,
        "File holding the bearer token that the state-changing admin endpoints (/admin/*, /events) require"),
    ClusterKeyFile("cluster-key-file", "RICOCHET_CLUSTER_KEY_FILE", "", Val("FILE"), ENGINE,
        "File holding the cluster key that authenticates gossip datagrams; gossip runs when it is set"),

    McIface("mc-iface", "MC_IFACE", "eth0", Val("IFACE"), NETWORK,
        "Interface that joins the multicast groups [with --ipv4-lab: 127.0.0.1]"),
    ListenPort("listen-port", "LISTEN_PORT", "9001", Val("PORT"), NETWORK,
        "UDP port multicast frames arrive on (the proxies' egress port)"),
    Scope("scope", "MC_SCOPE", "site", Val("SCOPE"), NETWORK,
        "Scope of the data groups: link, site, org or global (ssm: site or global; global only with ssm)",
        aliases = ["mc-scope"]),
    McGroupId("mc-group-id", "MC_GROUP_ID", "0x000B", Val("ID"), NETWORK,
        "BRC-129 group id in every group address: 0x-hex, decimal, or bare hex"),
    SourceMode("source-mode", "SOURCE_MODE", "asm", Val("MODE"), NETWORK,
        "Multicast model: asm (FF0x groups) or ssm (FF35/FF3E)"),
    ShardBits("shard-bits", "SHARD_BITS", "2", Val("BITS"), NETWORK,
        "TxID prefix bits that pick a data shard group, 1..=12 (must match the proxies)"),
    BindSource("bind-source", "BIND_SOURCE", "", Val("IPV6"), NETWORK,
        "IPv6 address ADVERTs are sent from (so SSM peers can list it); never joined as a source"),
    IngressAllow("ingress-allow", "RICOCHET_INGRESS_ALLOW", "", List("CIDR,..."), NETWORK,
        "Publishers whose frames are cached (addresses or prefixes, 10.0.0.0/24,fd00::/64); a frame multicast from any other source is dropped as source_not_allowed [default: every source]"),
    SsmBootstrapManifest("ssm-bootstrap-manifest", "SSM_BOOTSTRAP_MANIFEST", "", List("SOURCES"), NETWORK,
        "SSM: manifest emitters (IPv6 literals or DNS names), the sources of the block (0xFFFE) and beacon groups"),
    SsmBootstrapBeacon("ssm-bootstrap-beacon", "SSM_BOOTSTRAP_BEACON", "", List("SOURCES"), NETWORK,
        "SSM: retry endpoints sending ADVERTs (IPv6 literals or DNS names), sources of the beacon group"),
    SsmBootstrapSubtreeAnnounce("ssm-bootstrap-subtree-announce", "SSM_BOOTSTRAP_SUBTREE_ANNOUNCE", "", List("SOURCES"), NETWORK,
        "SSM: subtree announcers (IPv6 literals or DNS names), sources of the subtree groups 0xFFFB/0xFFFC"),
    SsmPublishersStatic("ssm-publishers-static", "SSM_PUBLISHERS_STATIC", "", List("SOURCES"), NETWORK,
        "SSM: data-plane publishers (IPv6 literals or DNS names), sources of every data group besides those manifests announce"),
    SsmBootstrapRefresh("ssm-bootstrap-refresh", "SSM_BOOTSTRAP_REFRESH", "30s", Val("DURATION"), NETWORK,
        "DNS re-resolve period of the SSM source lists (must be > 0); a failed refresh keeps the last good set"),
    SubtreeDataEnabled("subtree-data-enabled", "SUBTREE_DATA_ENABLED", "false", Bool, NETWORK,
        "Join the subtree-data group (index 0xFFFB) and cache BRC-132 frames"),
    BeefEnabled("beef-enabled", "BEEF_ENABLED", "false", Bool, NETWORK,
        "Join the BEEF object plane (0x1000 + 2^beef-shard-bits groups) and cache its frames"),
    BeefShardBits("beef-shard-bits", "BEEF_SHARD_BITS", "0", Val("BITS"), NETWORK,
        "Width of the BEEF plane, 0..=12 bits; 0 is the single group 0x1000 (must match the proxies)"),
    TeeListen("tee-listen", "TEE_LISTEN", "", Val("[::1]:PORT"), NETWORK,
        "Refused when set: ricochet has no loopback tee input; run it where it can join the groups"),
    McJoinEnabled("mc-join-enabled", "MC_JOIN_ENABLED", "true", Bool, NETWORK,
        "Join the multicast groups; false (tee-only ingest) is refused, as ricochet has no tee input"),

    CacheBackend("cache-backend", "CACHE_BACKEND", "memory", Val("BACKEND"), CACHE,
        "Frame cache: memory, or redis (shared; needs --redis-addr); aerospike is refused"),
    RedisAddr("redis-addr", "REDIS_ADDR", "", Val("HOST:PORT"), CACHE,
        "Redis-protocol server: frame store with --cache-backend redis, else only cross-instance dedup"),
    AerospikeHosts("aerospike-hosts", "AEROSPIKE_HOSTS", "", List("HOST:PORT,..."), CACHE,
        "Accepted for configuration files; the aerospike backend itself is refused"),
    AerospikeNamespace("aerospike-namespace", "AEROSPIKE_NAMESPACE", "cache", Val("NAME"), CACHE,
        "Accepted for configuration files; the aerospike backend itself is refused"),
    AerospikeSet("aerospike-set", "AEROSPIKE_SET", "bre", Val("NAME"), CACHE,
        "Accepted for configuration files; the aerospike backend itself is refused"),
    CacheDialTimeout("cache-dial-timeout", "CACHE_DIAL_TIMEOUT", "1s", Val("DURATION"), CACHE,
        "Connect timeout for the Redis backend"),
    CacheOpTimeout("cache-op-timeout", "CACHE_OP_TIMEOUT", "1s", Val("DURATION"), CACHE,
        "Per-operation Redis timeout; a timeout counts as a miss"),
    CacheTtl("cache-ttl", "CACHE_TTL", "60s", Val("DURATION"), CACHE,
        "Fallback TTL: when set, it replaces the default of every per-type TTL left unset (not BEEF)"),
    CacheTtlTx("cache-ttl-tx", "CACHE_TTL_TX", "60s", Val("DURATION"), CACHE,
        "TTL of transaction and bundle frames (0x02, 0x08)"),
    CacheTtlBlock("cache-ttl-block", "CACHE_TTL_BLOCK", "10m", Val("DURATION"), CACHE,
        "TTL of block control frames (0x04)"),
    CacheTtlSubtree("cache-ttl-subtree", "CACHE_TTL_SUBTREE", "5m", Val("DURATION"), CACHE,
        "TTL of subtree data frames (0x05)"),
    CacheTtlAnchor("cache-ttl-anchor", "CACHE_TTL_ANCHOR", "2m", Val("DURATION"), CACHE,
        "TTL of anchor transaction frames (0x06)"),
    CacheTtlBeef("cache-ttl-beef", "CACHE_TTL_BEEF", "60s", Val("DURATION"), CACHE,
        "TTL of BEEF object frames (0x09); --cache-ttl does not change it"),
    CacheMaxKeys("cache-max-keys", "CACHE_MAX_KEYS", "0", Val("N"), CACHE,
        "Most frames the memory cache holds, least recently used evicted first (0 = no limit)"),
    CacheMaxBytes("cache-max-bytes", "RICOCHET_CACHE_MAX_BYTES", "1GiB", Val("SIZE"), CACHE,
        "Memory the frame cache may use (K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024)"),

    NackPort("nack-port", "NACK_PORT", "9300", Val("PORT"), NACK,
        "UDP port that receives NACKs; advertised in the beacon"),
    NackAddr("nack-addr", "NACK_ADDR", "", Val("IP"), NACK,
        "Address the NACK socket binds and the beacon advertises [default: first global IPv6 of the first egress interface]"),
    SuppressAck("suppress-ack", "SUPPRESS_ACK", "false", Bool, NACK,
        "Send no ACK after a retransmit"),
    SuppressMiss("suppress-miss", "SUPPRESS_MISS", "false", Bool, NACK,
        "Send no MISS on a cache miss"),
    MaxRange("max-range", "RICOCHET_MAX_RANGE", "64", Val("N"), NACK,
        "Most frames one range NACK may ask for, 1..=4096"),

    EgressIface("egress-iface", "EGRESS_IFACE", "eth0", List("IFACES"), RETRANSMIT,
        "Comma-separated interfaces every multicast retransmit goes out on; the first also sends beacons and gives the NACK address [with --ipv4-lab: 127.0.0.1]"),
    EgressPort("egress-port", "EGRESS_PORT", "9001", Val("PORT"), RETRANSMIT,
        "Destination port of retransmits (the listeners' listen port)"),
    EgressMulticastLoop("egress-multicast-loop", "EGRESS_MULTICAST_LOOP", "false", Bool, RETRANSMIT,
        "Loop retransmits back to local sockets (IPV6_MULTICAST_LOOP), e.g. on a collapsed router node"),
    DedupWindow("dedup-window", "DEDUP_WINDOW", "60s", Val("DURATION"), RETRANSMIT,
        "Cross-instance retransmit dedup window (with a shared Redis)"),

    RlIpRate("rl-ip-rate", "RL_IP_RATE", "100", Val("PER_SEC"), RATE,
        "Per-source-IP token bucket refill, NACKs per second (silent drop)"),
    RlIpBurst("rl-ip-burst", "RL_IP_BURST", "10", Val("N"), RATE,
        "Per-source-IP token bucket size"),
    RlSequenceMax("rl-sequence-max", "RL_SEQUENCE_MAX", "100", Val("N"), RATE,
        "Most NACKs for one gap (HashKey, SeqNum), from any source, per --rl-sequence-window"),
    RlSequenceWindow("rl-sequence-window", "RL_SEQUENCE_WINDOW", "1m", Val("DURATION"), RATE,
        "Window of the per-gap limit (0 = 1m)"),
    RlChainRate("rl-chain-rate", "RL_CHAIN_RATE", "500", Val("N"), RATE,
        "Most NACKs per (source IP, HashKey) per --rl-chain-window (a fraction is dropped; 0 = --rl-sender-rate, else 500)"),
    RlChainWindow("rl-chain-window", "RL_CHAIN_WINDOW", "1m", Val("DURATION"), RATE,
        "Window of the per-flow limit (0 = --rl-sender-window, else 1m)"),
    RlSenderRate("rl-sender-rate", "RL_SENDER_RATE", "0", Val("N"), RATE,
        "Older name of --rl-chain-rate, used only when --rl-chain-rate is 0"),
    RlSenderWindow("rl-sender-window", "RL_SENDER_WINDOW", "0s", Val("DURATION"), RATE,
        "Older name of --rl-chain-window, used only when --rl-chain-window is 0"),
    RlGroupRate("rl-group-rate", "RL_GROUP_RATE", "200", Val("PER_SEC"), RATE,
        "Per-(source IP, group) retransmit token bucket refill per second, after lookup"),
    RlGroupBurst("rl-group-burst", "RL_GROUP_BURST", "50", Val("N"), RATE,
        "Per-(source IP, group) token bucket size"),
    RlThrottleResponse("rl-throttle-response", "RL_THROTTLE_RESPONSE", "false", Bool, RATE,
        "Answer the sequence, flow and group tiers with THROTTLED instead of silence"),

    BeaconEnabled("beacon-enabled", "BEACON_ENABLED", "true", Bool, BEACON,
        "Multicast an ADVERT to the beacon group every --beacon-interval"),
    BeaconPort("beacon-port", "RICOCHET_BEACON_PORT", "9300", Val("PORT"), BEACON,
        "UDP port ADVERTs are sent to (listeners listen on 9300 whatever --nack-port is)"),
    BeaconTier("beacon-tier", "BEACON_TIER", "0", Val("TIER"), BEACON,
        "Advertised tier, 0..=254 (lower is tried first)"),
    BeaconPreference("beacon-preference", "BEACON_PREFERENCE", "128", Val("PREF"), BEACON,
        "Advertised preference within the tier, 0..=255 (higher is tried first)"),
    BeaconInterval("beacon-interval", "BEACON_INTERVAL", "60s", Val("DURATION"), BEACON,
        "ADVERT period, 1s..=65535s (listeners evict after 3 missed)"),
    BeaconScope("beacon-scope", "BEACON_SCOPE", "site", Val("SCOPE"), BEACON,
        "Beacon scope: site, org, global, or all (alias both: one ADVERT to each)"),
    BeaconFlagsMulticast("beacon-flags-multicast", "BEACON_FLAGS_MULTICAST", "true", Bool, BEACON,
        "Retransmit to the frame's multicast group, and advertise it"),
    BeaconFlagsUnicast("beacon-flags-unicast", "BEACON_FLAGS_UNICAST", "false", Bool, BEACON,
        "Also retransmit unicast to the NACK's source, and advertise it"),
    BeaconFlagsDraining("beacon-flags-draining", "BEACON_FLAGS_DRAINING", "false", Bool, BEACON,
        "Advertise draining, so listeners stop using this endpoint"),
    ControlGroupCompat("control-group-compat", "CONTROL_GROUP_COMPAT", "asm-only", Val("MODE"), BEACON,
        "Beacon group prefixes under SSM: asm-only (FF0x), both (FF0x and FF3x) or derived (FF3x); no effect under asm"),

    ProxyEnabled("proxy-enabled", "PROXY_ENABLED", "false", Bool, PROXY,
        "Recover cache misses from upstream endpoints (needs --upstream-retry-endpoints)"),
    UpstreamRetryEndpoints("upstream-retry-endpoints", "UPSTREAM_RETRY_ENDPOINTS", "", List("HOST:PORT,..."), PROXY,
        "Upstream endpoints' NACK addresses, tried in order"),
    ProxyTimeout("proxy-timeout", "PROXY_TIMEOUT", "300ms", Val("DURATION"), PROXY,
        "Wait per upstream before trying the next"),
    ProxyMaxEndpoints("proxy-max-endpoints", "PROXY_MAX_ENDPOINTS", "0", Val("N"), PROXY,
        "Most upstreams tried per gap (0 = all)"),
    ProxyDedupWindow("proxy-dedup-window", "PROXY_DEDUP_WINDOW", "60s", Val("DURATION"), PROXY,
        "How long a claimed gap stays claimed, so siblings do not all recover it"),
    ProxyQueueDepth("proxy-queue-depth", "PROXY_QUEUE_DEPTH", "1024", Val("N"), PROXY,
        "Recovery jobs queued before new ones are dropped and counted, 1..=1048576",
        aliases = ["proxy-queue"], env_aliases = ["PROXY_QUEUE"]),
    ProxyAllow("proxy-allow", "RICOCHET_PROXY_ALLOW", "", List("CIDR,..."), PROXY,
        "Downstream endpoints that may proxy through this one: their Proxied NACKs get unicast copies, and answers to them are not held to 3x the NACK's size (addresses or prefixes, 10.0.0.7,fd00::/64; live siblings always may) [default: none]"),

    UpstreamEvents("upstream-events", "RICOCHET_UPSTREAM_EVENTS", "", List("HOST:PORT,..."), PROXY,
        "Upstream endpoints' admin addresses: subscribe to their /events and apply their invalidations here"),
    UpstreamEventsTokenFile("upstream-events-token-file", "RICOCHET_UPSTREAM_EVENTS_TOKEN_FILE", "", Val("FILE"), PROXY,
        "File holding the bearer token the upstream endpoints' /events require"),
    MaxDownstreams("max-downstreams", "RICOCHET_MAX_DOWNSTREAMS", "64", Val("N"), PROXY,
        "Most downstream endpoints (and other clients) subscribed to /events at once, 1..=4096"),

    GossipPort("gossip-port", "RICOCHET_GOSSIP_PORT", "9310", Val("PORT"), CLUSTER,
        "UDP port of the gossip control plane between sibling endpoints (runs when --cluster-key-file is set)"),
    GossipPeers("gossip-peers", "RICOCHET_GOSSIP_PEERS", "", List("HOST:PORT,..."), CLUSTER,
        "Sibling endpoints' gossip addresses to join through (more are learnt by peer exchange)"),

    DhtEnabled("dht-enabled", "RICOCHET_DHT_ENABLED", "false", Bool, DISCOVERY,
        "Run a DHT node and publish this endpoint's signed record under --domain"),
    DhtPort("dht-port", "RICOCHET_DHT_PORT", "9320", Val("PORT"), DISCOVERY,
        "UDP port of the DHT node"),
    DhtBootstrap("dht-bootstrap", "RICOCHET_DHT_BOOTSTRAP", "", List("HOST:PORT,..."), DISCOVERY,
        "DHT nodes to join through (addresses only)"),
    NodeKeyFile("node-key-file", "RICOCHET_NODE_KEY_FILE", "", Val("FILE"), DISCOVERY,
        "File holding this endpoint's ed25519 secret key (64 hex digits); created if missing [default: a new key each start]"),
    DhtPeerCache("dht-peer-cache", "RICOCHET_DHT_PEER_CACHE", "", Val("FILE"), DISCOVERY,
        "File the DHT's good peers are saved to and rejoined from at the next start"),
    Domain("domain", "RICOCHET_DOMAIN", "", Val("NAME"), DISCOVERY,
        "Name of the multicast domain this endpoint serves; its DHT record is published under it"),
    UpstreamDiscovery("upstream-discovery", "RICOCHET_UPSTREAM_DISCOVERY", "static", Val("MODE"), DISCOVERY,
        "Where upstream endpoints come from: static (--upstream-retry-endpoints) or dht (also from the DHT)"),
    UpstreamDomain("upstream-domain", "RICOCHET_UPSTREAM_DOMAIN", "", Val("NAME"), DISCOVERY,
        "With --upstream-discovery dht: the domain whose endpoints are this endpoint's upstreams"),
    UpstreamKeys("upstream-keys", "RICOCHET_UPSTREAM_KEYS", "", List("KEY,..."), DISCOVERY,
        "With --upstream-discovery dht: the ed25519 public keys (64 hex digits each) whose records may name upstreams, or any to trust every signer"),
    DhtRefresh("dht-refresh", "RICOCHET_DHT_REFRESH", "30s", Val("DURATION"), DISCOVERY,
        "How often the upstream list is looked up again and this endpoint's record republished"),

    Debug("debug", "DEBUG", "false", Bool, RUNTIME,
        "Debug logging (the same as --log-level debug)"),
    LogLevel("log-level", "LOG_LEVEL", "info", Val("LEVEL"), RUNTIME,
        "Log level: trace, debug, info, warn or error"),
    LogFormat("log-format", "LOG_FORMAT", "text", Val("FORMAT"), RUNTIME,
        "Log format: text or json"),
    DrainTimeout("drain-timeout", "DRAIN_TIMEOUT", "0s", Val("DURATION"), RUNTIME,
        "On SIGTERM, report not-ready but keep serving this long before exiting"),
    WarmupTimeout("warmup-timeout", "RICOCHET_WARMUP_TIMEOUT", "0s", Val("DURATION"), RUNTIME,
        "Longest time /readyz stays 503 while warming the cache from siblings (0s = no warm-up wait)"),
    MetricsAddr("metrics-addr", "METRICS_ADDR", ":9400", Val("HOST:PORT"), RUNTIME,
        "Admin HTTP listener (/metrics, /healthz, /readyz); :PORT means every address"),
    DebugPublic("debug-public", "RICOCHET_DEBUG_PUBLIC", "false", Bool, RUNTIME,
        "Serve /debug/* without the admin token (it shows cache, limiter, peer and upstream state)"),
    AdminMaxConnections("admin-max-connections", "RICOCHET_ADMIN_MAX_CONNECTIONS", "256", Val("N"), RUNTIME,
        "Most admin HTTP connections open at once; more are closed at once and counted"),
    AdminMaxConnectionsPerSource("admin-max-connections-per-source", "RICOCHET_ADMIN_MAX_CONNECTIONS_PER_SOURCE", "32", Val("N"), RUNTIME,
        "Most admin HTTP connections open at once from one address"),
    AdminHeaderTimeout("admin-header-timeout", "RICOCHET_ADMIN_HEADER_TIMEOUT", "10s", Val("DURATION"), RUNTIME,
        "Longest wait for an admin HTTP request head (after connecting, or between keep-alive requests)"),
    Instance("instance", "INSTANCE_ID", "", Val("ID"), RUNTIME,
        "Instance name in metrics and logs; its CRC32c is the ADVERT instance id [default: hostname]",
        aliases = ["instance-id"]),

    OtlpEndpoint("otlp-endpoint", "OTLP_ENDPOINT", "", Val("HOST:PORT"), RUNTIME,
        "OTLP/gRPC collector to push metrics (and sampled NACK traces) to, plaintext (empty = no push)"),
    OtlpInterval("otlp-interval", "OTLP_INTERVAL", "30s", Val("DURATION"), RUNTIME,
        "OTLP metrics push period"),
    TraceSampling("trace-sampling", "TRACE_SAMPLING", "0", Val("RATIO"), RUNTIME,
        "Fraction of NACKs traced (NACK to answer) and pushed over OTLP, 0..=1; needs --otlp-endpoint"),

    ProxyWorkers("proxy-workers", "PROXY_WORKERS", "", Val("N"), COMPAT,
        "Ignored: upstream recovery runs on the --cpus workers"),
}

impl Key {
    /// This key's row.
    pub(crate) fn setting(self) -> &'static Setting {
        &SETTINGS[self as usize]
    }
}

/// The settings `ricochet run` and `ricochet check-config` accept, as given
/// on the command line.
///
/// Build it through clap: flatten it into a derive (`Run(RunArgs)` in a
/// `#[derive(Subcommand)]` enum, or `#[command(flatten)]`), or use
/// [`RunArgs::try_parse_from`]. It keeps only the values typed on the command
/// line; env vars, the TOML file and defaults are layered under them by
/// [`load`](super::load).
///
/// Every setting of the reference endpoint has a flag and an env var of the
/// same name (`--nack-port` / `NACK_PORT`); ricochet's own settings use the
/// `RICOCHET_` env prefix. Bool flags take `--flag`, `--flag=true` or
/// `--flag=false` (never `--flag false`, as in Go). A repeated flag's last
/// value wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    /// Flag name → value, for flags present on the command line.
    given: BTreeMap<&'static str, String>,
}

impl RunArgs {
    /// A standalone command (`ricochet`) holding just these arguments: for
    /// tests and tools. The real binary flattens [`RunArgs`] into its top
    /// level (no subcommand runs the endpoint) and into its subcommands.
    pub fn command() -> Command {
        <Self as clap::Args>::augment_args(Command::new("ricochet"))
    }

    /// Parses arguments (the first is the program name) with
    /// [`RunArgs::command`].
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// The value given on the command line for a long flag (canonical name,
    /// without dashes), if any.
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.given.get(flag).map(String::as_str)
    }
}

impl clap::Args for RunArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(SETTINGS.iter().map(Setting::arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for s in SETTINGS {
            // Env and default values are ignored here on purpose: `load` reads
            // env vars itself (so tests can inject them) and layers the file
            // between env and defaults.
            if matches.value_source(s.flag) != Some(ValueSource::CommandLine) {
                continue;
            }
            let value = matches.try_get_one::<String>(s.flag).map_err(|e| {
                clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--{}: {e}\n", s.flag),
                )
            })?;
            if let Some(v) = value {
                self.given.insert(s.flag, v.clone());
            }
        }
        Ok(())
    }
}

/// Rewrites Go-style single-dash long flags (`-nack-port 9300`,
/// `-debug=true`, `-help`) to clap's `--nack-port`, so a reference endpoint's
/// command line works unchanged. Only names in the settings table (and their
/// aliases) are rewritten; a flag's value (`-instance -x`) and everything
/// after a bare `--` are left alone, as is the program name. Call it on
/// `std::env::args_os()` before clap parses, then [`check_flags`].
pub fn normalize_go_flags<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut value_next = false;
    let mut done = false;
    for arg in args {
        if done || std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        let word = arg.to_str().map_or(Word::Plain, read_word);
        match word {
            Word::End => done = true,
            Word::Setting { dashes: 1, .. } | Word::Builtin { dashes: 1, long: true } => {
                value_next = word.value_follows();
                let mut fixed = OsString::from("-");
                fixed.push(&arg);
                out.push(fixed);
                continue;
            }
            _ => value_next = word.value_follows(),
        }
        out.push(arg);
    }
    out
}

/// Refuses a word that looks like a flag but names none, with the word in
/// full (`-no-such-flag`; clap alone would blame `-n`) and a hint. Values of
/// flags, subcommand names and everything after `--` or `help` are not
/// flags. Call it on the output of [`normalize_go_flags`].
pub fn check_flags(args: &[OsString]) -> Result<(), UnknownFlag> {
    let mut value_next = false;
    for (i, arg) in args.iter().enumerate().skip(1) {
        if std::mem::take(&mut value_next) {
            continue;
        }
        let Some(arg) = arg.to_str() else { continue };
        match read_word(arg) {
            Word::End => break,
            Word::Plain if i == 1 && arg == "help" => break,
            Word::Unknown { dashes, name } => {
                return Err(UnknownFlag { given: format!("{}{name}", "-".repeat(dashes)) });
            }
            word => value_next = word.value_follows(),
        }
    }
    Ok(())
}

/// A command-line word that looks like a flag but names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFlag {
    /// The flag as typed, without any `=value`.
    given: String,
}

impl UnknownFlag {
    /// The flag as typed (`-no-such-flag`), without any `=value`.
    pub fn flag(&self) -> &str {
        &self.given
    }

    /// The known flag nearest to the one typed, spelt with the same dashes,
    /// when one is close enough to be a typo (`-nack-prot` → `-nack-port`).
    pub fn suggestion(&self) -> Option<String> {
        let dashes = self.given.len() - self.given.trim_start_matches('-').len();
        let typed = self.given[dashes..].to_ascii_lowercase().replace('_', "-");
        let (distance, name) = SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.flag).chain(s.aliases.iter().copied()))
            .map(|name| (strsim::damerau_levenshtein(&typed, name), name))
            .min()?;
        (distance <= (typed.len() / 4).max(2)).then(|| format!("{}{name}", &self.given[..dashes]))
    }
}

/// Reference flags ricochet does not implement, by name or name prefix
/// (ending in `-`), with what they belong to: names the settings table
/// does not have (those it has are refused by `load` with the reason).
const NOT_IMPLEMENTED: &[(&str, &str)] =
    &[("aerospike-", "the Aerospike cache backend"), ("retry-tee", "the retry tee")];

impl fmt::Display for UnknownFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.given.trim_start_matches('-');
        write!(f, "unknown flag {}", self.given)?;
        let missing = NOT_IMPLEMENTED.iter().find(|(n, _)| match n.strip_suffix('-') {
            Some(prefix) => name.starts_with(n) || name == prefix,
            None => name == *n,
        });
        if let Some((_, what)) = missing {
            return write!(
                f,
                ": ricochet does not implement {what} of the reference endpoint \
                 (docs/OPERATIONS.md lists what it accepts)"
            );
        }
        match self.suggestion() {
            Some(near) => write!(f, " (did you mean {near}?)"),
            None => write!(f, "; `ricochet --help` lists every flag"),
        }
    }
}

impl std::error::Error for UnknownFlag {}

/// How one command-line word reads to Go's flag package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word<'a> {
    /// A setting's flag or alias, with one or two dashes; `inline` when the
    /// value is attached (`-name=value`).
    Setting { dashes: usize, takes_value: bool, inline: bool },
    /// clap's own flags: `-h`, `-V`, `--help`, `--version`, and Go's `-help`
    /// (`long`: a long name written with one dash).
    Builtin { dashes: usize, long: bool },
    /// A dash-led word naming no flag: its dashes and name (before any `=`).
    Unknown { dashes: usize, name: &'a str },
    /// `--`: the end of the flags.
    End,
    /// A value, a subcommand, `-`, or a negative number.
    Plain,
}

impl Word<'_> {
    /// Whether the next word is this flag's value (`-nack-port 9300`).
    fn value_follows(self) -> bool {
        matches!(self, Word::Setting { takes_value: true, inline: false, .. })
    }
}

fn read_word(arg: &str) -> Word<'_> {
    if arg == "--" {
        return Word::End;
    }
    let (dashes, body) = match (arg.strip_prefix("--"), arg.strip_prefix('-')) {
        (Some(body), _) => (2, body),
        (None, Some(body)) => (1, body),
        (None, None) => return Word::Plain,
    };
    // `-` alone is a value (stdin, by convention); `-5` a negative number.
    if body.is_empty() || (dashes == 1 && body.starts_with(|c: char| c.is_ascii_digit())) {
        return Word::Plain;
    }
    let (name, inline) = match body.split_once('=') {
        Some((name, _)) => (name, true),
        None => (body, false),
    };
    if let Some(s) = SETTINGS.iter().find(|s| s.flag == name || s.aliases.contains(&name)) {
        return Word::Setting { dashes, takes_value: s.kind != Bool, inline };
    }
    match (dashes, name, inline) {
        (1, "h" | "V", false) => Word::Builtin { dashes, long: false },
        (1, "help", false) | (2, "help" | "version", false) => Word::Builtin { dashes, long: true },
        _ => Word::Unknown { dashes, name },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_consistent() {
        let mut names = HashSet::new();
        let mut envs = HashSet::new();
        for s in SETTINGS {
            for name in std::iter::once(&s.flag).chain(s.aliases) {
                assert!(names.insert(*name), "duplicate flag {name}");
                assert!(
                    name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{name}"
                );
            }
            for env in std::iter::once(&s.env).chain(s.env_aliases) {
                assert!(envs.insert(*env), "duplicate env {env}");
                assert!(
                    env.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                    "{env}"
                );
            }
            assert!(!s.help.is_empty());
            if s.kind == Bool {
                assert!(matches!(s.default, "true" | "false"), "{}", s.flag);
            }
        }
        assert_eq!(Key::Config.setting().flag, "config");
        assert_eq!(Key::TraceSampling.setting().flag, "trace-sampling");
        assert_eq!(Key::NackPort.setting().env, "NACK_PORT");
        assert_eq!(Key::CacheTtlTx.setting().toml_key(), "cache_ttl_tx");
        // Reference names from PROTOCOL-FACTS.md keep their exact env var.
        for env in [
            "MC_IFACE",
            "LISTEN_PORT",
            "MC_SCOPE",
            "MC_GROUP_ID",
            "SOURCE_MODE",
            "SHARD_BITS",
            "SUBTREE_DATA_ENABLED",
            "CACHE_BACKEND",
            "REDIS_ADDR",
            "CACHE_TTL",
            "CACHE_TTL_TX",
            "CACHE_TTL_BLOCK",
            "CACHE_TTL_SUBTREE",
            "CACHE_TTL_ANCHOR",
            "CACHE_MAX_KEYS",
            "NACK_PORT",
            "NACK_WORKERS",
            "NACK_ADDR",
            "SUPPRESS_ACK",
            "SUPPRESS_MISS",
            "EGRESS_IFACE",
            "EGRESS_PORT",
            "DEDUP_WINDOW",
            "RL_IP_RATE",
            "RL_IP_BURST",
            "RL_SEQUENCE_MAX",
            "RL_SEQUENCE_WINDOW",
            "RL_CHAIN_RATE",
            "RL_CHAIN_WINDOW",
            "RL_GROUP_RATE",
            "RL_GROUP_BURST",
            "BEACON_ENABLED",
            "BEACON_TIER",
            "BEACON_PREFERENCE",
            "BEACON_INTERVAL",
            "BEACON_SCOPE",
            "BEACON_FLAGS_MULTICAST",
            "BEACON_FLAGS_UNICAST",
            "BEACON_FLAGS_DRAINING",
            "DEBUG",
            "DRAIN_TIMEOUT",
            "METRICS_ADDR",
            "INSTANCE_ID",
            "PROXY_ENABLED",
            "UPSTREAM_RETRY_ENDPOINTS",
            "BEEF_ENABLED",
            "BEEF_SHARD_BITS",
            "CACHE_TTL_BEEF",
            "RL_THROTTLE_RESPONSE",
            "LOG_FORMAT",
            "PROXY_TIMEOUT",
            "PROXY_MAX_ENDPOINTS",
            "PROXY_DEDUP_WINDOW",
            "PROXY_QUEUE_DEPTH",
            "RICOCHET_CPUS",
            "RICOCHET_CPU_MASK",
        ] {
            assert!(envs.contains(env), "missing {env}");
        }
    }

    #[test]
    fn clap_command_is_valid() {
        RunArgs::command().debug_assert();
    }

    #[test]
    fn keeps_only_command_line_values() {
        let a = RunArgs::try_parse_from(["ricochet", "--nack-port", "9400", "--debug"]).unwrap();
        assert_eq!(a.get("nack-port"), Some("9400"));
        assert_eq!(a.get("debug"), Some("true"));
        assert_eq!(a.get("listen-port"), None, "defaults are not command-line values");
    }

    #[test]
    fn bool_flags_take_go_forms() {
        let a =
            RunArgs::try_parse_from(["ricochet", "--beacon-enabled=false", "--ipv4-lab"]).unwrap();
        assert_eq!(a.get("beacon-enabled"), Some("false"));
        assert_eq!(a.get("ipv4-lab"), Some("true"));
        assert!(RunArgs::try_parse_from(["ricochet", "--beacon-enabled", "false"]).is_err());
    }

    #[test]
    fn aliases_and_repeats() {
        let a = RunArgs::try_parse_from([
            "ricochet",
            "--mc-scope",
            "org",
            "--proxy-queue=8",
            "--rl-sender-rate",
            "5",
            "--instance-id",
            "x",
            "--nack-port",
            "1",
            "--nack-port",
            "2",
        ])
        .unwrap();
        assert_eq!(a.get("scope"), Some("org"));
        assert_eq!(a.get("proxy-queue-depth"), Some("8"));
        assert_eq!(
            a.get("rl-sender-rate"),
            Some("5"),
            "its own flag, read only when the chain rate is 0"
        );
        assert_eq!(a.get("instance"), Some("x"));
        assert_eq!(a.get("nack-port"), Some("2"), "the last repeated flag wins, as in Go");
    }

    #[test]
    fn help_shows_env_and_defaults() {
        let help = RunArgs::command().render_long_help().to_string();
        assert!(help.contains("--nack-port <PORT>"), "{help}");
        assert!(help.contains("NACK_PORT"), "{help}");
        assert!(help.contains("[default: 9300]"), "{help}");
        assert!(help.contains("Rate limits"), "{help}");
    }

    #[test]
    fn go_single_dash_flags_are_normalized() {
        let out = normalize_go_flags([
            "ricochet",
            "run",
            "-nack-port",
            "9300",
            "-debug=true",
            "-mc-scope",
            "site",
            "-x",
            "--cpus",
            "0",
            "-1",
            "--",
            "-nack-port",
        ]);
        let out: Vec<&str> = out.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "ricochet",
                "run",
                "--nack-port",
                "9300",
                "--debug=true",
                "--mc-scope",
                "site",
                "-x",
                "--cpus",
                "0",
                "-1",
                "--",
                "-nack-port",
            ]
        );
    }

    fn normalized(args: &[&str]) -> Vec<String> {
        normalize_go_flags(args).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn unknown(args: &[&str]) -> Option<UnknownFlag> {
        check_flags(&normalize_go_flags(args)).err()
    }

    #[test]
    fn every_setting_takes_every_go_and_gnu_form() {
        for s in SETTINGS {
            let f = s.flag;
            let forms: Vec<(Vec<String>, &str)> = match s.kind {
                Bool => vec![
                    (vec![format!("-{f}")], "true"),
                    (vec![format!("--{f}")], "true"),
                    (vec![format!("-{f}=false")], "false"),
                    (vec![format!("--{f}=false")], "false"),
                    (vec![format!("-{f}=true")], "true"),
                ],
                Val(_) | List(_) => vec![
                    (vec![format!("-{f}"), "v1".into()], "v1"),
                    (vec![format!("-{f}=v2")], "v2"),
                    (vec![format!("--{f}"), "v3".into()], "v3"),
                    (vec![format!("--{f}=v4")], "v4"),
                    // Go takes the next word as the value, dash or not.
                    (vec![format!("-{f}"), "-5".into()], "-5"),
                ],
            };
            for (form, want) in forms {
                let mut argv = vec!["ricochet".to_string()];
                argv.extend(form.iter().cloned());
                let argv = normalize_go_flags(argv);
                assert_eq!(check_flags(&argv), Ok(()), "{form:?}");
                let a = RunArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("{form:?}: {e}"));
                assert_eq!(a.get(f), Some(want), "{form:?}");
            }
        }
    }

    #[test]
    fn values_and_words_after_the_end_are_not_rewritten() {
        assert_eq!(
            normalized(&["ricochet", "-instance", "-debug", "-debug", "-help", "-h", "-V"]),
            ["ricochet", "--instance", "-debug", "--debug", "--help", "-h", "-V"]
        );
        assert_eq!(
            normalized(&["-nack-port", "-nack-port", "1", "--", "-debug"]),
            ["-nack-port", "--nack-port", "1", "--", "-debug"],
            "the program name is never a flag"
        );
        let a = RunArgs::try_parse_from(normalize_go_flags(["ricochet", "-instance", "-debug"]))
            .unwrap();
        assert_eq!(a.get("instance"), Some("-debug"));
        assert_eq!(a.get("debug"), None);
    }

    #[test]
    fn an_unknown_flag_is_named_in_full() {
        let e = unknown(&["ricochet", "-no-such-flag"]).unwrap();
        assert_eq!(e.flag(), "-no-such-flag");
        assert_eq!(e.suggestion(), None);
        assert_eq!(e.to_string(), "unknown flag -no-such-flag; `ricochet --help` lists every flag");
        let e = unknown(&["ricochet", "run", "--no-such-flag=3"]).unwrap();
        assert_eq!(e.flag(), "--no-such-flag", "the value is not part of the name");
        let e = unknown(&["ricochet", "check-config", "-x"]).unwrap();
        assert_eq!(e.flag(), "-x");
    }

    #[test]
    fn an_unknown_flag_gets_the_nearest_name_with_its_dashes() {
        let e = unknown(&["ricochet", "-nack-prot", "9300"]).unwrap();
        assert_eq!(e.to_string(), "unknown flag -nack-prot (did you mean -nack-port?)");
        let e = unknown(&["ricochet", "--lisen-port=1"]).unwrap();
        assert_eq!(e.suggestion().as_deref(), Some("--listen-port"));
        // An env var's name typed as a flag.
        let e = unknown(&["ricochet", "-BEACON_TIER", "3"]).unwrap();
        assert_eq!(e.suggestion().as_deref(), Some("-beacon-tier"));
    }

    #[test]
    fn reference_flags_ricochet_lacks_say_so() {
        let is_setting = |n: &str| SETTINGS.iter().any(|s| s.flag == n || s.aliases.contains(&n));
        let mut checked = 0;
        for (name, _) in NOT_IMPLEMENTED {
            let name = if name.ends_with('-') { format!("{name}host") } else { name.to_string() };
            if is_setting(&name) {
                continue; // accepted since (and refused by `load` if it must be)
            }
            let flag = format!("-{name}");
            let msg = unknown(&["ricochet", &flag, "x"]).unwrap().to_string();
            assert!(msg.starts_with(&format!("unknown flag {flag}: ricochet does not implement")));
            checked += 1;
        }
        assert!(checked > 0);
    }

    #[test]
    fn known_words_pass_the_check() {
        for args in [
            &["ricochet"][..],
            &["ricochet", "-h"],
            &["ricochet", "--help"],
            &["ricochet", "-help"],
            &["ricochet", "-V"],
            &["ricochet", "--version"],
            &["ricochet", "help", "run", "--whatever"],
            &["ricochet", "run", "-nack-port", "-1", "-debug", "--", "-not-a-flag"],
            &["ricochet", "-mc-scope=site", "-rl-sender-rate", "5", "-", "-7"],
        ] {
            assert_eq!(check_flags(&normalize_go_flags(args)), Ok(()), "{args:?}");
        }
    }
}
