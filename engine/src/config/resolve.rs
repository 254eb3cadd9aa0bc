//! Layering (flag > env > file > default), typed parsing and cross-checks.
//!
//! [`Resolver::load`] reads the config file, then builds each section of
//! [`Config`] with one `get` per setting: `get` picks the winning raw string,
//! parses it, records it for `render`, and on failure records a problem and
//! carries on with the default so that every problem is reported at once.
//! Cross-setting checks run only when the settings involved parsed.

use core::net::IpAddr;
use core::time::Duration;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use ricochet_proto::discovery::Trust;
use ricochet_proto::retry::{AllowList, Prefix};
use ricochet_proto::ssm::posture::{
    BootstrapEntry, Flag, PostureError, SsmFlags, SsmPosture, validate,
};
use ricochet_wire::group::{MAX_SHARD_BITS, Scope, SourceMode};

use super::parse::{
    MAX_CPU_ID, ValueError, cpus_within, format_cpulist, format_go_duration, format_size,
    parse_choice, parse_cpu_mask, parse_cpulist, parse_go_bool, parse_go_duration, parse_group_id,
    parse_host_port, parse_iface, parse_int_in, parse_port, parse_positive_f64, parse_size,
    split_csv,
};
use super::settings::{ALL_KEYS, Key, Kind, RunArgs, SETTINGS, Setting};
use super::{
    BeaconConfig, BeaconScope, CacheBackend, CacheConfig, CacheTtls, ClusterConfig, Config,
    ConfigError, ControlGroups, DiscoveryConfig, Effective, EngineConfig, Environment, HostPort,
    IoBackend, LogFormat, NackConfig, NetworkConfig, Origin, Problem, ProxyConfig, RateLimitConfig,
    RetransmitConfig, RuntimeConfig, UpstreamDiscovery,
};

/// The longest `--uring-batch-wait`: beyond it the wait shows as latency
/// at low load with little CPU left to save.
const MAX_URING_BATCH_WAIT: Duration = Duration::from_millis(10);

/// A setting's winning raw value.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: Origin,
}

/// The parsed config file.
#[derive(Debug)]
struct FileLayer {
    path: PathBuf,
    values: BTreeMap<Key, String>,
}

/// Resolves one configuration; single use.
pub(super) struct Resolver<'a> {
    args: &'a RunArgs,
    env: &'a dyn Environment,
    file: Option<FileLayer>,
    problems: Vec<Problem>,
    failed: HashSet<Key>,
    effective: BTreeMap<Key, Effective>,
    notes: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(args: &'a RunArgs, env: &'a dyn Environment) -> Self {
        Self {
            args,
            env,
            file: None,
            problems: Vec::new(),
            failed: HashSet::new(),
            effective: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Reads the file layer, resolves every setting, cross-checks.
    pub(super) fn load(mut self, affinity: &[usize]) -> Result<Config, ConfigError> {
        self.read_file();
        if !self.problems.is_empty() {
            // Without the file the other layers would only add noise.
            return Err(ConfigError { problems: self.problems });
        }
        let engine = self.engine(affinity);
        let network = self.network();
        let cache = self.cache();
        let nack = self.nack();
        let retransmit = self.retransmit(network.ipv4_lab);
        let rate_limits = self.rate_limits();
        let beacon = self.beacon();
        let proxy = self.proxy();
        let cluster = self.cluster();
        let discovery = self.discovery();
        let runtime = self.runtime();
        self.compat(engine.cpus.len());
        self.cross_check(&network, &cache, &nack, &beacon, &proxy);
        self.check_discovery(&proxy, &discovery);
        if !self.problems.is_empty() {
            return Err(ConfigError { problems: self.problems });
        }
        Ok(Config {
            engine,
            network,
            cache,
            nack,
            retransmit,
            rate_limits,
            beacon,
            proxy,
            cluster,
            discovery,
            runtime,
            config_file: self.file.map(|f| f.path),
            notes: self.notes,
            effective: self.effective.into_values().collect(),
        })
    }

    fn engine(&mut self, affinity: &[usize]) -> EngineConfig {
        EngineConfig {
            cpus: self.cpus(affinity),
            backend: self.get(Key::Backend, |s| {
                parse_choice(
                    s,
                    &[
                        ("auto", IoBackend::Auto),
                        ("uring", IoBackend::Uring),
                        ("epoll", IoBackend::Epoll),
                    ],
                )
            }),
            uring_batch_wait: self.get(Key::UringBatchWait, |s| {
                let d = parse_go_duration(s)?;
                if d > MAX_URING_BATCH_WAIT {
                    return Err(ValueError::new(
                        "must be at most 10ms: a longer wait delays every answer at low load",
                        "a duration in 0..=10ms such as 200us (0 turns batching off)",
                    ));
                }
                Ok(d)
            }),
            max_datagram: self.get(Key::MaxDatagram, |s| parse_int_in(s, 512..=65507)),
            admin_token_file: self.get(Key::AdminTokenFile, optional(path)),
            cluster_key_file: self.get(Key::ClusterKeyFile, optional(path)),
        }
    }

    fn network(&mut self) -> NetworkConfig {
        self.refuse_if_set(
            &[Key::TeeListen, Key::McJoinEnabled],
            "ricochet has no loopback tee input (the reference's TEE_LISTEN); it receives \
             frames by joining the groups, so run it on a host that can join them",
        );
        let ipv4_lab = self.get(Key::Ipv4Lab, parse_go_bool);
        let lab_iface = ipv4_lab.then(|| "127.0.0.1".to_owned());
        let mut network = NetworkConfig {
            ipv4_lab,
            mc_iface: self.get_computed(Key::McIface, lab_iface, "ipv4_lab", parse_iface),
            listen_port: self.get(Key::ListenPort, parse_port),
            scope: self.get(Key::Scope, parse_scope),
            group_id: self
                .get_shown(Key::McGroupId, parse_group_id, |id| quote(&format!("0x{id:04X}"))),
            source_mode: self.get(Key::SourceMode, |s| {
                parse_choice(s, &[("asm", SourceMode::Asm), ("ssm", SourceMode::Ssm)])
            }),
            shard_bits: self.get(Key::ShardBits, |s| parse_int_in(s, 1..=MAX_SHARD_BITS)),
            subtree_data_enabled: self.get(Key::SubtreeDataEnabled, parse_go_bool),
            beef_enabled: self.get(Key::BeefEnabled, parse_go_bool),
            beef_shard_bits: self.get(Key::BeefShardBits, |s| parse_int_in(s, 0..=MAX_SHARD_BITS)),
            ssm: None,
            ingress_allow: self
                .get(Key::IngressAllow, |s| split_csv(s).into_iter().map(prefix).collect()),
        };
        network.ssm = self.ssm_posture(&network);
        network
    }

    /// `--source-mode`, `--bind-source` and the `--ssm-*` settings, judged
    /// by [`ricochet_proto::ssm::posture::validate`]; every refusal names
    /// the setting to change. ASM at global scope (FF0E) is refused per
    /// RFC 8815 (the reference endpoint's scope table still allows it).
    /// SSM with `--ipv4-lab` but no source list keeps its note (the lab's
    /// IPv4 groups are any-source), while a source list or `--bind-source`
    /// with `--ipv4-lab` is refused, as it would be silently unused.
    fn ssm_posture(&mut self, network: &NetworkConfig) -> Option<SsmPosture> {
        let list = |s: &str| {
            Ok::<_, ValueError>(
                split_csv(s).into_iter().map(str::to_owned).collect::<Vec<String>>(),
            )
        };
        let bind_source = self.get(Key::BindSource, |s| Ok::<_, ValueError>(s.to_owned()));
        let manifest = self.get(Key::SsmBootstrapManifest, list);
        let beacon = self.get(Key::SsmBootstrapBeacon, list);
        let subtree = self.get(Key::SsmBootstrapSubtreeAnnounce, list);
        let statics = self.get(Key::SsmPublishersStatic, list);
        let refresh = self.get(Key::SsmBootstrapRefresh, positive_duration);
        if !self.parsed(&[Key::SourceMode, Key::Scope, Key::Ipv4Lab, Key::SsmBootstrapRefresh]) {
            return None;
        }
        let keys = [
            (Key::BindSource, !bind_source.is_empty()),
            (Key::SsmBootstrapManifest, !manifest.is_empty()),
            (Key::SsmBootstrapBeacon, !beacon.is_empty()),
            (Key::SsmBootstrapSubtreeAnnounce, !subtree.is_empty()),
            (Key::SsmPublishersStatic, !statics.is_empty()),
        ];
        if network.ipv4_lab {
            for (key, _) in keys.iter().filter(|(_, set)| *set) {
                let raw = self.raw(*key);
                let msg = format!(
                    "{}: --ipv4-lab runs any-source IPv4 groups (239.11.x.y) and SSM is IPv6 \
                     only, so the setting would be ignored; unset {}, or drop --ipv4-lab",
                    self.subject(*key, &raw),
                    self.target(*key, raw.origin),
                );
                self.problem(Some(*key), msg);
            }
            return None;
        }
        if network.source_mode == SourceMode::Asm && network.scope == Scope::Global {
            // RFC 8815: inter-domain any-source multicast is deprecated;
            // global scope is where SSM is the only safe choice.
            let raw = self.raw(Key::Scope);
            let msg = format!(
                "{}: any-source (ASM) groups at global scope (FF0E) are refused per RFC 8815; \
                 set {} ssm with source lists (--ssm-publishers-static or \
                 --ssm-bootstrap-manifest) for FF3E groups, or {} site",
                self.subject(Key::Scope, &raw),
                name_pair(Key::SourceMode),
                self.target(Key::Scope, raw.origin),
            );
            self.problem(Some(Key::Scope), msg);
            return None;
        }
        let scope = network.scope;
        let flags = SsmFlags {
            source_mode: network.source_mode,
            scope,
            bind_source: (!bind_source.is_empty()).then_some(bind_source.as_str()),
            bootstrap_manifest: &manifest,
            bootstrap_beacon: &beacon,
            bootstrap_subtree_announce: &subtree,
            publishers_static: &statics,
            bootstrap_refresh: refresh,
        };
        let mut posture = match validate(&flags) {
            Ok(p) => p,
            Err(e) => {
                self.ssm_refused(&e);
                return None;
            }
        };
        posture.scope = network.scope;
        if posture.is_ssm() && statics.is_empty() && manifest.is_empty() {
            // The data groups are joined from the static list and from the
            // publishers that manifest emitters announce; with neither they
            // would never be joined and nothing would be cached.
            let raw = self.raw(Key::SourceMode);
            let msg = format!(
                "{}: no data-plane source: the data groups are joined only from {} and from \
                 the publishers announced by {} emitters, so nothing would be cached; set {} \
                 to the publishers' IPv6 addresses or names, or {} to the manifest emitters, \
                 or set {} to asm",
                self.subject(Key::SourceMode, &raw),
                name_pair(Key::SsmPublishersStatic),
                name_pair(Key::SsmBootstrapManifest),
                self.target(Key::SsmPublishersStatic, self.raw(Key::SsmPublishersStatic).origin),
                self.target(Key::SsmBootstrapManifest, self.raw(Key::SsmBootstrapManifest).origin),
                self.target(Key::SourceMode, raw.origin),
            );
            self.problem(Some(Key::SourceMode), msg);
            return None;
        }
        for flag in &posture.unused {
            self.notes.push(format!(
                "{} {} is set but not used under {} asm (any-source joins)",
                flag.cli(),
                flag.env(),
                name_pair(Key::SourceMode),
            ));
        }
        Some(posture)
    }

    /// Turns a posture refusal into a problem naming the setting to change.
    fn ssm_refused(&mut self, e: &PostureError) {
        let key_of = |f: Flag| match f {
            Flag::SourceMode => Key::SourceMode,
            Flag::Scope => Key::Scope,
            Flag::BindSource => Key::BindSource,
            Flag::BootstrapManifest => Key::SsmBootstrapManifest,
            Flag::BootstrapBeacon => Key::SsmBootstrapBeacon,
            Flag::BootstrapSubtreeAnnounce => Key::SsmBootstrapSubtreeAnnounce,
            Flag::PublishersStatic => Key::SsmPublishersStatic,
            Flag::BootstrapRefresh => Key::SsmBootstrapRefresh,
        };
        let (key, why) = match e {
            // `cross_check` reports the scope with the wording it always had.
            PostureError::NoSsmAtScope(_) => return,
            PostureError::NoSources => (
                Key::SourceMode,
                format!(
                    "SSM joins every group from listed sources only and none is listed \
                     (fail-closed); set {} or {}, and optionally {} or {}, or set {{target}} to \
                     asm",
                    name_pair(Key::SsmPublishersStatic),
                    name_pair(Key::SsmBootstrapManifest),
                    name_pair(Key::SsmBootstrapBeacon),
                    name_pair(Key::SsmBootstrapSubtreeAnnounce),
                ),
            ),
            PostureError::BadBindSource(_) => (
                Key::BindSource,
                "not an IPv6 unicast address (IPv4, loopback, multicast and unspecified \
                 addresses cannot be a source); set {target} to the IPv6 literal this node \
                 sends from"
                    .to_owned(),
            ),
            PostureError::TooManyStaticPublishers(n) => (
                Key::SsmPublishersStatic,
                format!(
                    "{n} entries: more than {} publishers need manifest discovery; set {} \
                     too, or list fewer in {{target}}",
                    ricochet_proto::ssm::posture::MAX_STATIC_WITHOUT_MANIFEST,
                    name_pair(Key::SsmBootstrapManifest),
                ),
            ),
            PostureError::BadEntry { flag, entry } => (
                key_of(*flag),
                format!(
                    "entry {entry:?} is not a usable IPv6 source (IPv4, IPv4-mapped, multicast \
                     and unspecified addresses cannot be SSM sources); set {{target}} to IPv6 \
                     unicast addresses or DNS names with AAAA records"
                ),
            ),
            other => (Key::SourceMode, format!("{other}; see {{target}}")),
        };
        let raw = self.raw(key);
        let why = why.replace("{target}", &self.target(key, raw.origin));
        let msg = format!("{}: {why}", self.subject(key, &raw));
        self.failed.insert(key);
        self.problem(Some(key), msg);
    }

    fn cache(&mut self) -> CacheConfig {
        let fallback_explicit = self.raw(Key::CacheTtl).origin != Origin::Default;
        let fallback = self.get(Key::CacheTtl, positive_duration);
        let collapse = (fallback_explicit && !self.failed.contains(&Key::CacheTtl))
            .then(|| (fallback, self.raw(Key::CacheTtl).origin));
        let ttl = |r: &mut Self, key: Key| match collapse {
            Some((d, origin)) if r.raw(key).origin == Origin::Default => {
                r.record(key, quote(&format_go_duration(d)), origin, Some("via cache_ttl".into()));
                d
            }
            _ => r.get(key, positive_duration),
        };
        let ttl = CacheTtls {
            fallback,
            tx: ttl(self, Key::CacheTtlTx),
            block: ttl(self, Key::CacheTtlBlock),
            subtree: ttl(self, Key::CacheTtlSubtree),
            anchor: ttl(self, Key::CacheTtlAnchor),
            // The reference keeps BEEF out of the CACHE_TTL collapse.
            beef: self.get(Key::CacheTtlBeef, positive_duration),
        };
        // Read (and shown by check-config) so a reference configuration
        // file carries over; only the aerospike backend would use them, and
        // it is refused below.
        let owned = |s: &str| Ok::<_, ValueError>(s.to_owned());
        let _ = self.get(Key::AerospikeHosts, |s| {
            Ok(split_csv(s).into_iter().map(str::to_owned).collect::<Vec<String>>())
        });
        let _ = self.get(Key::AerospikeNamespace, owned);
        let _ = self.get(Key::AerospikeSet, owned);
        CacheConfig {
            backend: self.get(Key::CacheBackend, |s| {
                if s.eq_ignore_ascii_case("aerospike") {
                    return Err(ValueError::new(
                        "the aerospike backend is not supported: ricochet has no Aerospike client, \
                         and one that cannot be tested against a real server is not shipped",
                        "redis (a shared Redis/Valkey/Dragonfly server, with --redis-addr) or memory",
                    ));
                }
                parse_choice(s, &[("memory", CacheBackend::Memory), ("redis", CacheBackend::Redis)])
            }),
            redis_addr: self.get(Key::RedisAddr, optional(host_port_with_port)),
            // The reference's cache client dials with 200 ms when given 0.
            dial_timeout: self.zero_means(
                Key::CacheDialTimeout,
                parse_go_duration,
                None,
                Duration::from_millis(200),
            ),
            op_timeout: self.get(Key::CacheOpTimeout, positive_duration),
            ttl,
            max_keys: self.get_shown(
                Key::CacheMaxKeys,
                |s| parse_int_in(s, 0..=u64::MAX).map(|n| (n > 0).then_some(n)),
                |n| n.unwrap_or(0).to_string(),
            ),
            max_bytes: self.get_shown(
                Key::CacheMaxBytes,
                |s| match parse_size(s)? {
                    0 => Err(ValueError::new(
                        "must be greater than zero",
                        "a size such as 512MiB or 1GiB",
                    )),
                    n => Ok(n),
                },
                |n| quote(&format_size(*n)),
            ),
        }
    }

    fn nack(&mut self) -> NackConfig {
        NackConfig {
            port: self.get(Key::NackPort, parse_port),
            addr: self.get(Key::NackAddr, optional(ip_addr)),
            suppress_ack: self.get(Key::SuppressAck, parse_go_bool),
            suppress_miss: self.get(Key::SuppressMiss, parse_go_bool),
            max_range: self.get(Key::MaxRange, |s| parse_int_in(s, 1..=4096)),
        }
    }

    fn retransmit(&mut self, ipv4_lab: bool) -> RetransmitConfig {
        let lab_iface = ipv4_lab.then(|| "127.0.0.1".to_owned());
        RetransmitConfig {
            egress_ifaces: self.get_computed(Key::EgressIface, lab_iface, "ipv4_lab", |s| {
                let ifaces =
                    split_csv(s).into_iter().map(parse_iface).collect::<Result<Vec<_>, _>>()?;
                if ifaces.is_empty() {
                    return Err(ValueError::new(
                        "no interface given",
                        "one or more interface names such as eth0 or eth0,eth1",
                    ));
                }
                Ok(ifaces)
            }),
            egress_port: self.get(Key::EgressPort, parse_port),
            multicast_loop: self.get(Key::EgressMulticastLoop, parse_go_bool),
            dedup_window: self.get(Key::DedupWindow, positive_duration),
        }
    }

    /// The four tiers, read as the reference reads them: where it takes
    /// zero (or less) to mean "the default", so does ricochet (the note
    /// says so); where zero would make it answer nothing at all (an empty
    /// per-IP bucket, a zero per-SeqNum budget), ricochet refuses it.
    fn rate_limits(&mut self) -> RateLimitConfig {
        let sender_rate = self.get(Key::RlSenderRate, non_negative_f64);
        let sender_window = self.get(Key::RlSenderWindow, parse_go_duration);
        let sender = (sender_rate > 0.0).then_some(sender_rate);
        let chain_rate = self.zero_means(Key::RlChainRate, non_negative_f64, sender, 500.0);
        let sender = (!sender_window.is_zero()).then_some(sender_window);
        let chain_window =
            self.zero_means(Key::RlChainWindow, parse_go_duration, sender, Duration::from_secs(60));
        RateLimitConfig {
            ip_rate: self.get(Key::RlIpRate, parse_positive_f64),
            ip_burst: self.get(Key::RlIpBurst, |s| parse_int_in(s, 1..=u32::MAX)),
            sequence_max: self.get(Key::RlSequenceMax, |s| parse_int_in(s, 1..=u32::MAX)),
            sequence_window: self.zero_means(
                Key::RlSequenceWindow,
                parse_go_duration,
                None,
                Duration::from_secs(60),
            ),
            // The reference counts whole requests: a fractional rate is
            // truncated, and below one it would admit nothing.
            chain_rate: (chain_rate as u64).clamp(1, u64::from(u32::MAX)) as u32,
            chain_window,
            group_rate: self.zero_means(Key::RlGroupRate, non_negative_f64, None, 200.0),
            group_burst: self.zero_means(Key::RlGroupBurst, non_negative_u32, None, 50),
            throttle_response: self.get(Key::RlThrottleResponse, parse_go_bool),
        }
    }

    /// A setting the reference reads as "zero (or less) means the default":
    /// `alias` (an older name's value) if set, else `default`. The effective
    /// value is recorded with a note naming the rule.
    fn zero_means<T: Show + PartialOrd + Default + Copy>(
        &mut self,
        key: Key,
        parse: impl Fn(&str) -> Result<T, ValueError>,
        alias: Option<T>,
        default: T,
    ) -> T {
        let v = self.get(key, |s| parse(s.strip_prefix('-').map_or(s, |_| "0")));
        if v > T::default() {
            return v;
        }
        let origin = self.raw(key).origin;
        let (v, why) = match alias {
            Some(a) => (a, "0 means the older alias"),
            None => (default, "0 means the default"),
        };
        self.record(key, v.show(), origin, Some(why.into()));
        v
    }

    fn beacon(&mut self) -> BeaconConfig {
        BeaconConfig {
            enabled: self.get(Key::BeaconEnabled, parse_go_bool),
            port: self.get(Key::BeaconPort, parse_port),
            control_groups: self.get(Key::ControlGroupCompat, |s| {
                parse_choice(
                    &s.to_ascii_lowercase(),
                    &[
                        ("asm-only", ControlGroups::AsmOnly),
                        ("both", ControlGroups::Both),
                        ("derived", ControlGroups::Derived),
                    ],
                )
            }),
            tier: self.get(Key::BeaconTier, |s| parse_int_in(s, 0..=254)),
            preference: self.get(Key::BeaconPreference, |s| parse_int_in(s, 0..=255)),
            interval: self.get(Key::BeaconInterval, |s| {
                let d = parse_go_duration(s)?;
                if d < Duration::from_secs(1) || d > Duration::from_secs(u16::MAX.into()) {
                    return Err(ValueError::new(
                        "must be between 1s and 65535s (the ADVERT carries whole seconds in 16 bits)",
                        "a duration in 1s..=65535s such as 60s",
                    ));
                }
                Ok(d)
            }),
            scope: self.get(Key::BeaconScope, |s| {
                if s.eq_ignore_ascii_case("link") {
                    return Err(ValueError::new(
                        "link scope is not allowed for beacons",
                        "one of site, org, global, all",
                    ));
                }
                parse_choice(
                    s,
                    &[
                        ("site", BeaconScope::Site),
                        ("org", BeaconScope::Org),
                        ("global", BeaconScope::Global),
                        ("all", BeaconScope::All),
                        ("both", BeaconScope::All),
                    ],
                )
            }),
            multicast: self.get(Key::BeaconFlagsMulticast, parse_go_bool),
            unicast: self.get(Key::BeaconFlagsUnicast, parse_go_bool),
            draining: self.get(Key::BeaconFlagsDraining, parse_go_bool),
        }
    }

    fn proxy(&mut self) -> ProxyConfig {
        ProxyConfig {
            enabled: self.get(Key::ProxyEnabled, parse_go_bool),
            upstreams: self.get(Key::UpstreamRetryEndpoints, |s| {
                split_csv(s).into_iter().map(host_port_with_port).collect()
            }),
            timeout: self.get(Key::ProxyTimeout, positive_duration),
            max_endpoints: self.get_shown(
                Key::ProxyMaxEndpoints,
                |s| parse_int_in(s, 0..=u32::MAX).map(|n| (n > 0).then_some(n)),
                |n| n.unwrap_or(0).to_string(),
            ),
            dedup_window: self.get(Key::ProxyDedupWindow, positive_duration),
            queue_depth: self.get(Key::ProxyQueueDepth, |s| parse_int_in(s, 1..=1 << 20)),
            events_upstreams: self.get(Key::UpstreamEvents, |s| {
                split_csv(s).into_iter().map(host_port_with_port).collect()
            }),
            events_token_file: self.get(Key::UpstreamEventsTokenFile, optional(path)),
            max_downstreams: self.get(Key::MaxDownstreams, |s| parse_int_in(s, 1..=4096)),
            allow: self.get(Key::ProxyAllow, |s| split_csv(s).into_iter().map(prefix).collect()),
        }
    }

    fn cluster(&mut self) -> ClusterConfig {
        ClusterConfig {
            port: self.get(Key::GossipPort, parse_port),
            peers: self.get(Key::GossipPeers, |s| {
                split_csv(s).into_iter().map(host_port_with_port).collect()
            }),
        }
    }

    fn discovery(&mut self) -> DiscoveryConfig {
        let upstream_discovery = self.get(Key::UpstreamDiscovery, |s| {
            parse_choice(
                s,
                &[("static", UpstreamDiscovery::Static), ("dht", UpstreamDiscovery::Dht)],
            )
        });
        DiscoveryConfig {
            enabled: self.get(Key::DhtEnabled, parse_go_bool)
                || upstream_discovery == UpstreamDiscovery::Dht,
            port: self.get(Key::DhtPort, parse_port),
            bootstrap: self.get(Key::DhtBootstrap, |s| {
                split_csv(s).into_iter().map(host_port_with_port).collect()
            }),
            node_key_file: self.get(Key::NodeKeyFile, optional(path)),
            peer_cache: self.get(Key::DhtPeerCache, optional(path)),
            domain: self.get(Key::Domain, domain_name),
            upstream_discovery,
            upstream_domain: self.get(Key::UpstreamDomain, domain_name),
            upstream_keys: self.get(Key::UpstreamKeys, trust),
            refresh: self.get(Key::DhtRefresh, positive_duration),
        }
    }

    /// Discovery settings that only make sense together.
    fn check_discovery(&mut self, proxy: &ProxyConfig, d: &DiscoveryConfig) {
        if d.upstream_discovery == UpstreamDiscovery::Static
            && d.upstream_keys != Trust::Keys(Vec::new())
        {
            self.notes.push(format!(
                "{} is set but not used: {} is static, so upstreams come from the static list",
                name_pair(Key::UpstreamKeys),
                name_pair(Key::UpstreamDiscovery),
            ));
        }
        if d.upstream_discovery != UpstreamDiscovery::Dht
            || !self.parsed(&[Key::UpstreamDiscovery, Key::UpstreamDomain, Key::ProxyEnabled])
        {
            return;
        }
        let origin = self.raw(Key::UpstreamDiscovery).origin;
        if d.upstream_domain.is_empty() {
            let msg = format!(
                "{} is required with --upstream-discovery dht: set {} to the name the upstream endpoints publish under (their --domain), or set {} to static",
                name_pair(Key::UpstreamDomain),
                self.target(Key::UpstreamDomain, Origin::Flag),
                self.target(Key::UpstreamDiscovery, origin),
            );
            self.problem(Some(Key::UpstreamDomain), msg);
        }
        if self.parsed(&[Key::UpstreamKeys]) && d.upstream_keys == Trust::Keys(Vec::new()) {
            let msg = format!(
                "{} is required with --upstream-discovery dht: the DHT is open, anyone can sign a record under domain {:?}, and an upstream's frames go into the cache; set {} to the public keys of that domain's endpoints (each logs its own at start as `public_key`, and shows it on /debug/dht), or to any to trust every signer (a closed lab)",
                name_pair(Key::UpstreamKeys),
                d.upstream_domain,
                self.target(Key::UpstreamKeys, Origin::Flag),
            );
            self.problem(Some(Key::UpstreamKeys), msg);
        }
        if !proxy.enabled {
            let msg = format!(
                "--upstream-discovery dht finds upstreams for recovery, which is off: set {} to true, or set {} to static",
                self.target(Key::ProxyEnabled, Origin::Flag),
                self.target(Key::UpstreamDiscovery, origin),
            );
            self.problem(Some(Key::UpstreamDiscovery), msg);
        }
        if !d.domain.is_empty() && d.domain == d.upstream_domain {
            let msg = format!(
                "{} names this endpoint's own domain ({:?}): an endpoint would recover from its siblings and itself; set it to the upstream domain",
                name_pair(Key::UpstreamDomain),
                d.domain,
            );
            self.problem(Some(Key::UpstreamDomain), msg);
        }
    }

    fn runtime(&mut self) -> RuntimeConfig {
        let debug = self.get(Key::Debug, parse_go_bool);
        let debug_origin = self.raw(Key::Debug).origin;
        let mut log_level = self.get_shown(Key::LogLevel, parse_level, |l| quote(&level_name(*l)));
        if debug && log_level < tracing::Level::DEBUG {
            log_level = tracing::Level::DEBUG;
            self.record(Key::LogLevel, quote("debug"), debug_origin, Some("via debug".into()));
        }
        let hostname = self.env.hostname().filter(|h| !h.is_empty());
        let instance_note = if hostname.is_some() { "hostname" } else { "no hostname" };
        RuntimeConfig {
            debug,
            log_level,
            log_format: self.get(Key::LogFormat, |s| {
                parse_choice(s, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
            }),
            drain_timeout: self.get(Key::DrainTimeout, parse_go_duration),
            warmup_timeout: self.get(Key::WarmupTimeout, parse_go_duration),
            metrics_addr: self.get(Key::MetricsAddr, parse_host_port),
            instance_id: self.get_computed(
                Key::Instance,
                Some(hostname.unwrap_or_else(|| "ricochet".into())),
                instance_note,
                |s| match s {
                    "" => Err(ValueError::new(
                        "the instance id is empty",
                        "a name such as the hostname",
                    )),
                    s => Ok(s.to_owned()),
                },
            ),
            debug_public: self.get(Key::DebugPublic, parse_go_bool),
            admin_max_connections: self
                .get(Key::AdminMaxConnections, |s| parse_int_in(s, 1..=65_536usize)),
            admin_max_connections_per_source: self
                .get(Key::AdminMaxConnectionsPerSource, |s| parse_int_in(s, 1..=65_536usize)),
            admin_header_timeout: self.get(Key::AdminHeaderTimeout, positive_duration),
            otlp_endpoint: self.get(Key::OtlpEndpoint, optional(host_port_with_port)),
            otlp_interval: self.get(Key::OtlpInterval, positive_duration),
            trace_sampling: self.get(Key::TraceSampling, |s| {
                s.parse::<f64>().ok().filter(|f| (0.0..=1.0).contains(f)).ok_or_else(|| {
                    ValueError::new(
                        format!("{s:?} is not a ratio in 0..=1"),
                        "a fraction such as 0.01 (1 % of NACKs traced) or 0",
                    )
                })
            }),
        }
    }

    /// Compatibility flags: accepted, never used; each one set gets a note.
    fn compat(&mut self, workers: usize) {
        let why = [(
            Key::ProxyWorkers,
            format!("upstream recovery runs on the {workers} --cpus workers"),
        )];
        for (key, why) in why {
            let raw = self.raw(key);
            if raw.origin == Origin::Default {
                continue;
            }
            let s = key.setting();
            self.notes.push(format!(
                "--{} ({}) = {:?} is accepted for compatibility and ignored: {why}",
                s.flag, s.env, raw.value
            ));
            self.record(key, quote(&raw.value), raw.origin, Some("ignored".into()));
        }
    }

    fn cross_check(
        &mut self,
        network: &NetworkConfig,
        cache: &CacheConfig,
        nack: &NackConfig,
        beacon: &BeaconConfig,
        proxy: &ProxyConfig,
    ) {
        if network.source_mode == SourceMode::Ssm
            && !matches!(network.scope, Scope::Site | Scope::Global)
            && self.parsed(&[Key::SourceMode, Key::Scope])
        {
            let raw = self.raw(Key::Scope);
            let msg = format!(
                "{}: SSM groups exist only at site (FF35) and global (FF3E) scope; set {} to site or global, or {} to asm",
                self.subject(Key::Scope, &raw),
                self.target(Key::Scope, raw.origin),
                self.target(Key::SourceMode, self.raw(Key::SourceMode).origin),
            );
            self.problem(Some(Key::Scope), msg);
        }
        if cache.backend == CacheBackend::Redis
            && cache.redis_addr.is_none()
            && self.parsed(&[Key::CacheBackend, Key::RedisAddr])
        {
            let msg = format!(
                "{} is required with --cache-backend redis: set {} to the server's host:port, or set {} to memory",
                name_pair(Key::RedisAddr),
                self.target(Key::RedisAddr, Origin::Flag),
                self.target(Key::CacheBackend, self.raw(Key::CacheBackend).origin),
            );
            self.problem(Some(Key::RedisAddr), msg);
        }
        if proxy.enabled
            && proxy.upstreams.is_empty()
            && self.raw(Key::UpstreamDiscovery).value != "dht"
            && self.parsed(&[Key::ProxyEnabled, Key::UpstreamRetryEndpoints])
        {
            let msg = format!(
                "{} is required with --proxy-enabled: set {} to the upstream endpoints' NACK addresses (host:port,host:port), use --upstream-discovery dht, or set {} to false",
                name_pair(Key::UpstreamRetryEndpoints),
                self.target(Key::UpstreamRetryEndpoints, Origin::Flag),
                self.target(Key::ProxyEnabled, self.raw(Key::ProxyEnabled).origin),
            );
            self.problem(Some(Key::UpstreamRetryEndpoints), msg);
        }
        if proxy.allow.is_empty() && proxy.enabled && self.parsed(&[Key::ProxyAllow]) {
            self.notes.push(format!(
                "{} is empty: Proxied NACKs from endpoints that are not live siblings get no unicast copies and at most {}x their size back; list the downstream endpoints that recover through this one",
                name_pair(Key::ProxyAllow),
                ricochet_proto::retry::AMPLIFICATION,
            ));
        }
        if !beacon.multicast && !beacon.unicast {
            self.notes.push(
                "--beacon-flags-multicast and --beacon-flags-unicast are both false: cache hits are acknowledged but nothing is retransmitted".into(),
            );
        }
        if let (false, Some(IpAddr::V4(_))) = (network.ipv4_lab, nack.addr) {
            let raw = self.raw(Key::NackAddr);
            let msg = format!(
                "{}: the fabric is IPv6 and listeners send NACKs to an IPv6 address (an IPv4 \
                 NACK address is only for --ipv4-lab); set {} to an IPv6 unicast address",
                self.subject(Key::NackAddr, &raw),
                self.target(Key::NackAddr, raw.origin),
            );
            self.problem(Some(Key::NackAddr), msg);
        }
        if let Some(ssm) = &network.ssm
            && !network.ingress_allow.is_empty()
        {
            let allow = AllowList::new(network.ingress_allow.iter().copied());
            let unlisted: Vec<String> = ssm
                .publishers_static
                .iter()
                .filter_map(|e| match e {
                    BootstrapEntry::Literal(a) if !allow.contains(IpAddr::V6(*a)) => {
                        Some(a.to_string())
                    }
                    _ => None,
                })
                .collect();
            if !unlisted.is_empty() {
                let raw = self.raw(Key::IngressAllow);
                let msg = format!(
                    "{} does not list the SSM publishers {}: their groups would be joined and \
                     every frame they send dropped (source_not_allowed); add them to {}, or leave \
                     it empty to take every source SSM joins",
                    name_pair(Key::IngressAllow),
                    unlisted.join(", "),
                    self.target(Key::IngressAllow, raw.origin),
                );
                self.problem(Some(Key::IngressAllow), msg);
            }
        }
        if network.ipv4_lab && network.source_mode == SourceMode::Ssm {
            self.notes.push(
                "--ipv4-lab uses 239.11.x.y groups; --source-mode ssm and --scope do not apply"
                    .into(),
            );
        }
    }

    /// The worker CPUs: `--cpus` or `--cpu-mask`, whichever is set at the
    /// highest level, else the whole affinity mask.
    fn cpus(&mut self, affinity: &[usize]) -> Vec<usize> {
        let list = self.raw(Key::Cpus);
        let mask = self.raw(Key::CpuMask);
        let rank = |o: Origin| match o {
            Origin::Flag => 3,
            Origin::Env(_) => 2,
            Origin::File => 1,
            Origin::Default => 0,
        };
        let (lr, mr) = (rank(list.origin), rank(mask.origin));
        if lr > 0 && lr == mr {
            let msg = format!(
                "{} and {} are both set from {}: they are mutually exclusive; set only one of them",
                name_pair(Key::Cpus),
                name_pair(Key::CpuMask),
                self.origin_text(Key::Cpus, list.origin),
            );
            self.problem(Some(Key::Cpus), msg);
            self.failed.insert(Key::CpuMask);
            return affinity.to_vec();
        }
        let (key, raw, parsed, note) = if lr == 0 && mr == 0 {
            let workers = self.raw(Key::NackWorkers);
            let n = self.get(Key::NackWorkers, |s| {
                // The reference reads zero or less as "every CPU".
                if s.starts_with('-') { Ok(0) } else { parse_int_in(s, 0..=MAX_CPU_ID + 1) }
            });
            if n > affinity.len() {
                let msg = format!(
                    "{}: ricochet pins one worker per CPU and this process may run on {} ({}); \
                     set {} to at most {}, or 0 for all of them (or give --cpus)",
                    self.subject(Key::NackWorkers, &workers),
                    affinity.len(),
                    format_cpulist(affinity),
                    self.target(Key::NackWorkers, workers.origin),
                    affinity.len(),
                );
                self.failed.insert(Key::NackWorkers);
                self.problem(Some(Key::NackWorkers), msg);
            }
            let (cpus, note) = match n {
                0 => (affinity.to_vec(), "affinity mask".to_owned()),
                n => (affinity[..n.min(affinity.len())].to_vec(), format!("nack_workers {n}")),
            };
            let origin = if n == 0 { Origin::Default } else { workers.origin };
            let raw = Raw { value: format_cpulist(&cpus), origin };
            (Key::Cpus, raw, Ok(cpus), Some(note))
        } else if lr > mr {
            self.nack_workers_overridden(Key::Cpus);
            let parsed = parse_cpulist(&list.value);
            (Key::Cpus, list, parsed, None)
        } else {
            self.nack_workers_overridden(Key::CpuMask);
            let parsed = parse_cpu_mask(&mask.value);
            let note = Some(format!("cpu_mask {}", mask.value));
            (Key::CpuMask, mask, parsed, note)
        };
        match parsed.and_then(|cpus| cpus_within(&cpus, affinity)) {
            Ok(cpus) => {
                self.record(Key::Cpus, quote(&format_cpulist(&cpus)), raw.origin, note);
                cpus
            }
            Err(e) => {
                self.refuse(key, &raw, e);
                affinity.to_vec()
            }
        }
    }

    /// `--nack-workers` is set beside `--cpus`/`--cpu-mask` (`by`), which
    /// decides the workers: say so.
    fn nack_workers_overridden(&mut self, by: Key) {
        let raw = self.raw(Key::NackWorkers);
        if raw.origin != Origin::Default {
            self.notes.push(format!(
                "{} is not used: {} names the worker CPUs",
                self.subject(Key::NackWorkers, &raw),
                name_pair(by)
            ));
            self.record(Key::NackWorkers, quote(&raw.value), raw.origin, Some("ignored".into()));
        }
    }

    /// Settings of the reference that ricochet cannot honour: refused with
    /// `why` when set to anything but their default.
    fn refuse_if_set(&mut self, keys: &[Key], why: &str) {
        for &key in keys {
            let raw = self.raw(key);
            let unchanged = match key.setting().kind {
                Kind::Bool => parse_go_bool(&raw.value) == parse_go_bool(key.setting().default),
                _ => raw.value == key.setting().default,
            };
            if raw.origin == Origin::Default || unchanged {
                let shown = match key.setting().kind {
                    Kind::Bool => raw.value.to_ascii_lowercase(),
                    Kind::List(_) => split_csv(&raw.value)
                        .into_iter()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                        .show(),
                    Kind::Val(_) => quote(&raw.value),
                };
                self.record(key, shown, raw.origin, None);
                continue;
            }
            let msg = format!(
                "{}: {why}; unset {}",
                self.subject(key, &raw),
                self.target(key, raw.origin)
            );
            self.failed.insert(key);
            self.problem(Some(key), msg);
        }
    }

    /// Resolves, parses and records a setting, shown with [`Show`].
    fn get<T: Show>(&mut self, key: Key, parse: impl Fn(&str) -> Result<T, ValueError>) -> T {
        self.get_shown(key, parse, T::show)
    }

    /// [`Resolver::get`] with a custom TOML rendering.
    fn get_shown<T>(
        &mut self,
        key: Key,
        parse: impl Fn(&str) -> Result<T, ValueError>,
        show: impl Fn(&T) -> String,
    ) -> T {
        let raw = self.raw(key);
        self.parse_raw(key, raw, key.setting().default, None, parse, show)
    }

    /// [`Resolver::get`] for a setting whose default is computed: `default`
    /// replaces the table default when no layer sets the value.
    fn get_computed<T: Show>(
        &mut self,
        key: Key,
        default: Option<String>,
        why: &str,
        parse: impl Fn(&str) -> Result<T, ValueError>,
    ) -> T {
        let mut raw = self.raw(key);
        let computed = default.is_some();
        let fallback = default.unwrap_or_else(|| key.setting().default.to_owned());
        let mut note = None;
        if raw.origin == Origin::Default && computed {
            raw.value.clone_from(&fallback);
            note = Some(why.to_owned());
        }
        self.parse_raw(key, raw, &fallback, note, parse, T::show)
    }

    /// Parses `raw` and records it; on failure records the problem and
    /// returns `fallback` parsed, so later settings are still checked.
    fn parse_raw<T>(
        &mut self,
        key: Key,
        raw: Raw,
        fallback: &str,
        note: Option<String>,
        parse: impl Fn(&str) -> Result<T, ValueError>,
        show: impl Fn(&T) -> String,
    ) -> T {
        match parse(&raw.value) {
            Ok(v) => {
                self.record(key, show(&v), raw.origin, note);
                v
            }
            Err(e) => {
                self.refuse(key, &raw, e);
                parse(fallback).unwrap_or_else(|e| {
                    panic!("the default of --{} does not parse: {e}", key.setting().flag)
                })
            }
        }
    }

    /// The winning raw value of a setting: flag > env (canonical, then
    /// aliases; empty counts as unset) > file > table default.
    fn raw(&self, key: Key) -> Raw {
        let s = key.setting();
        if let Some(v) = self.args.get(s.flag) {
            return Raw { value: v.trim().to_owned(), origin: Origin::Flag };
        }
        for name in std::iter::once(s.env).chain(s.env_aliases.iter().copied()) {
            if let Some(v) = self.env.var(name).filter(|v| !v.trim().is_empty()) {
                return Raw { value: v.trim().to_owned(), origin: Origin::Env(name) };
            }
        }
        if let Some(v) = self.file.as_ref().and_then(|f| f.values.get(&key)) {
            return Raw { value: v.trim().to_owned(), origin: Origin::File };
        }
        Raw { value: s.default.to_owned(), origin: Origin::Default }
    }

    fn record(&mut self, key: Key, value: String, origin: Origin, note: Option<String>) {
        self.effective.insert(key, Effective { key, value, origin, note });
    }

    fn refuse(&mut self, key: Key, raw: &Raw, e: ValueError) {
        let msg = format!(
            "{}: {}; set {} to {}",
            self.subject(key, raw),
            e.problem,
            self.target(key, raw.origin),
            e.expected
        );
        self.failed.insert(key);
        self.problem(Some(key), msg);
    }

    fn problem(&mut self, key: Option<Key>, message: String) {
        self.problems.push(Problem { flag: key.map(|k| k.setting().flag), message });
    }

    fn parsed(&self, keys: &[Key]) -> bool {
        keys.iter().all(|k| !self.failed.contains(k))
    }

    /// `--flag (ENV) = "value" from <origin>`.
    fn subject(&self, key: Key, raw: &Raw) -> String {
        format!("{} = {:?} from {}", name_pair(key), raw.value, self.origin_text(key, raw.origin))
    }

    fn origin_text(&self, key: Key, origin: Origin) -> String {
        match origin {
            Origin::Flag => "the command line".into(),
            Origin::Env(name) => format!("env {name}"),
            Origin::File => format!("{} in {}", key.setting().toml_key(), self.file_path()),
            Origin::Default => "the default".into(),
        }
    }

    /// What the operator should change: the flag, the env var or the file key
    /// the value came from.
    fn target(&self, key: Key, origin: Origin) -> String {
        let s = key.setting();
        match origin {
            Origin::Env(name) => name.to_owned(),
            Origin::File => format!("{} in {}", s.toml_key(), self.file_path()),
            Origin::Flag | Origin::Default => format!("--{}", s.flag),
        }
    }

    fn file_path(&self) -> String {
        self.file.as_ref().map(|f| f.path.display().to_string()).unwrap_or_default()
    }

    /// Reads `--config` into the file layer.
    fn read_file(&mut self) {
        let raw = self.raw(Key::Config);
        if raw.value.is_empty() {
            return;
        }
        let path = PathBuf::from(&raw.value);
        let text = match self.env.read_file(&path) {
            Ok(text) => text,
            Err(e) => {
                let msg = format!(
                    "{}: cannot read the file ({e}); set {} to a readable TOML file",
                    self.subject(Key::Config, &raw),
                    self.target(Key::Config, raw.origin)
                );
                return self.problem(Some(Key::Config), msg);
            }
        };
        let shown = path.display().to_string();
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                let msg = format!(
                    "config file {shown} is not valid TOML: {}; fix the file (settings are top-level `name = value` lines)",
                    e.to_string().trim_end()
                );
                return self.problem(Some(Key::Config), msg);
            }
        };
        let mut values = BTreeMap::new();
        for (name, value) in &table {
            let Some(key) = file_key(name) else {
                let hint =
                    suggest(name).map(|k| format!("did you mean {k:?}? ")).unwrap_or_default();
                let msg = format!(
                    "unknown key {name:?} in config file {shown}; {hint}remove it, or use a setting name: the long flag in snake_case, as listed by `ricochet run --help`"
                );
                self.problem(None, msg);
                continue;
            };
            let s = key.setting();
            if key == Key::Config {
                let msg = format!(
                    "key \"config\" in config file {shown} is not allowed; remove it (a config file cannot name another)"
                );
                self.problem(Some(key), msg);
                continue;
            }
            match toml_to_raw(value, s.kind) {
                Ok(v) => {
                    if values.insert(key, v).is_some() {
                        let msg = format!(
                            "config file {shown} sets {} twice (under an alias); keep only {}",
                            s.toml_key(),
                            s.toml_key()
                        );
                        self.problem(Some(key), msg);
                    }
                }
                Err(found) => {
                    let want = if matches!(s.kind, Kind::List(_)) {
                        "a string or an array of strings"
                    } else {
                        "a string, number or boolean"
                    };
                    let msg = format!(
                        "{name} in config file {shown} is {found}; set {name} to {want}, as in `{} = {}`",
                        s.toml_key(),
                        example(s)
                    );
                    self.problem(Some(key), msg);
                }
            }
        }
        self.file = Some(FileLayer { path, values });
    }
}

/// The setting a file key names (its snake_case flag or an alias).
fn file_key(name: &str) -> Option<Key> {
    ALL_KEYS.iter().copied().find(|k| {
        let s = k.setting();
        s.toml_key() == name || s.aliases.iter().any(|a| a.replace('-', "_") == name)
    })
}

/// The nearest known key to a misspelt one.
fn suggest(name: &str) -> Option<String> {
    let norm = name.to_ascii_lowercase().replace('-', "_");
    SETTINGS
        .iter()
        .map(|s| {
            let key = s.toml_key();
            let d = if key == norm || s.env.eq_ignore_ascii_case(name) {
                0
            } else {
                strsim::levenshtein(&norm, &key)
            };
            (d, key)
        })
        .min()
        .filter(|(d, _)| *d <= 2)
        .map(|(_, key)| key)
}

/// A TOML value as the raw string the other layers would carry; `Err` names
/// the TOML type found when it does not fit.
fn toml_to_raw(value: &toml::Value, kind: Kind) -> Result<String, &'static str> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) if matches!(kind, Kind::List(_)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) if !s.contains(',') => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                _ => Err("an array holding something other than plain strings"),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        toml::Value::Array(_) => Err("an array"),
        toml::Value::Table(_) => Err("a table"),
        toml::Value::Datetime(_) => Err("a date-time"),
    }
}

/// An example TOML value for a setting (its default, or a placeholder).
fn example(s: &Setting) -> String {
    match (s.kind, s.default) {
        (Kind::Bool, d) => d.to_owned(),
        (Kind::List(_), "") => "[\"host:port\"]".to_owned(),
        (_, "") => "\"...\"".to_owned(),
        (_, d) if d.parse::<f64>().is_ok() => d.to_owned(),
        (_, d) => quote(d),
    }
}

/// `--flag (ENV)`.
fn name_pair(key: Key) -> String {
    let s = key.setting();
    format!("--{} ({})", s.flag, s.env)
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn optional<T>(
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> impl Fn(&str) -> Result<Option<T>, ValueError> {
    move |s| if s.is_empty() { Ok(None) } else { parse(s).map(Some) }
}

/// A domain name as published in DHT records: 1..=64 printable ASCII
/// characters without spaces (empty = none).
fn domain_name(s: &str) -> Result<String, ValueError> {
    if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(ValueError::new(
            format!("{s:?} is not a domain name"),
            "at most 64 printable ASCII characters without spaces, such as bsv-mainnet-eu1",
        ))
    }
}

/// `--upstream-keys`: `any`, or ed25519 public keys as 64 hex digits,
/// comma-separated (empty: none).
fn trust(s: &str) -> Result<Trust, ValueError> {
    const EXPECTED: &str = "ed25519 public keys as 64 hex digits each, comma-separated (the \
                            `public_key` an endpoint logs at start), or any";
    let items = split_csv(s);
    if items.len() == 1 && items[0].eq_ignore_ascii_case("any") {
        return Ok(Trust::Any);
    }
    let mut keys = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = crate::hex::parse32(item.as_bytes())
            .map_err(|why| ValueError::new(format!("key {}: {why}", i + 1), EXPECTED))?;
        if ricochet_wire::record::VerifyingKey::from_bytes(&key).is_err() {
            return Err(ValueError::new(
                format!("key {} is not an ed25519 public key", i + 1),
                EXPECTED,
            ));
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(Trust::Keys(keys))
}

fn path(s: &str) -> Result<PathBuf, ValueError> {
    Ok(PathBuf::from(s))
}

fn ip_addr(s: &str) -> Result<IpAddr, ValueError> {
    s.parse().map_err(|_| {
        ValueError::new(
            format!("{s:?} is not an IP address"),
            "an IPv6 (or, in lab mode, IPv4) address such as 2001:db8::24",
        )
    })
}

/// `host:port` with a real port (not 0) and a host (not `:port`).
fn host_port_with_port(s: &str) -> Result<HostPort, ValueError> {
    let hp = parse_host_port(s)?;
    if hp.port == 0 || hp.host == super::Host::Any {
        return Err(ValueError::new(
            format!("{s:?} needs both a host and a port other than 0"),
            "host:port, such as 10.0.0.1:9300 or [2001:db8::1]:9300",
        ));
    }
    Ok(hp)
}

/// An address (one host) or a CIDR prefix with no bits set after it.
fn prefix(s: &str) -> Result<Prefix, ValueError> {
    const EXPECTED: &str =
        "addresses or CIDR prefixes such as 10.0.0.7, 10.0.0.0/24, fd00::5 or fd00::/64";
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(ValueError::new(format!("{s:?} is not an IP address or prefix"), EXPECTED));
    };
    let Some(len) = len else { return Ok(Prefix::host(ip)) };
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.parse::<u8>().ok().filter(|&n| n <= bits).ok_or_else(|| {
        ValueError::new(
            format!("{s:?}: the prefix length must be 0..={bits}"),
            format!("{ip}/{bits} for the one address, or a shorter prefix"),
        )
    })?;
    Prefix::new(ip, len).map_err(|_| {
        let net = Prefix::masked(ip, len).map(|p| p.to_string()).unwrap_or_default();
        ValueError::new(
            format!("{s:?} has address bits set after the /{len} prefix"),
            format!("{net} for the whole network, or {ip} alone for the one address"),
        )
    })
}

impl Show for Prefix {
    fn show(&self) -> String {
        quote(&self.to_string())
    }
}

/// A number of zero or more (the reference's float rates).
fn non_negative_f64(s: &str) -> Result<f64, ValueError> {
    if s.trim() == "0" {
        return Ok(0.0);
    }
    parse_positive_f64(s)
}

/// A whole number of zero or more that fits in 32 bits.
fn non_negative_u32(s: &str) -> Result<u32, ValueError> {
    parse_int_in(s, 0..=u32::MAX)
}

fn positive_duration(s: &str) -> Result<Duration, ValueError> {
    match parse_go_duration(s)? {
        Duration::ZERO => {
            Err(ValueError::new("must be greater than zero", "a duration above zero such as 60s"))
        }
        d => Ok(d),
    }
}

fn parse_scope(s: &str) -> Result<Scope, ValueError> {
    parse_choice(
        s,
        &[
            ("link", Scope::Link),
            ("site", Scope::Site),
            ("org", Scope::Org),
            ("global", Scope::Global),
        ],
    )
}

fn parse_level(s: &str) -> Result<tracing::Level, ValueError> {
    use tracing::Level;
    parse_choice(
        s,
        &[
            ("trace", Level::TRACE),
            ("debug", Level::DEBUG),
            ("info", Level::INFO),
            ("warn", Level::WARN),
            ("error", Level::ERROR),
        ],
    )
}

fn level_name(l: tracing::Level) -> String {
    l.as_str().to_ascii_lowercase()
}

/// A value's rendering as a TOML literal, for `check-config`.
trait Show {
    fn show(&self) -> String;
}

macro_rules! show_display {
    ($($t:ty),*) => {$(impl Show for $t {
        fn show(&self) -> String {
            self.to_string()
        }
    })*};
}
show_display!(bool, u8, u16, u32, u64, usize, f64);

macro_rules! show_name {
    ($($t:ty),*) => {$(impl Show for $t {
        fn show(&self) -> String {
            quote(self.name())
        }
    })*};
}
show_name!(
    Scope,
    SourceMode,
    CacheBackend,
    IoBackend,
    LogFormat,
    BeaconScope,
    UpstreamDiscovery,
    ControlGroups
);

impl Show for String {
    fn show(&self) -> String {
        quote(self)
    }
}

impl Show for Duration {
    fn show(&self) -> String {
        quote(&format_go_duration(*self))
    }
}

impl Show for HostPort {
    fn show(&self) -> String {
        quote(&self.to_string())
    }
}

impl Show for IpAddr {
    fn show(&self) -> String {
        quote(&self.to_string())
    }
}

impl Show for Trust {
    fn show(&self) -> String {
        match self {
            Trust::Any => quote("any"),
            Trust::Keys(keys) => {
                quote(&keys.iter().map(|k| crate::hex::encode(k)).collect::<Vec<_>>().join(","))
            }
        }
    }
}

impl Show for PathBuf {
    fn show(&self) -> String {
        quote(&self.display().to_string())
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| quote(""), T::show)
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> String {
        format!("[{}]", self.iter().map(T::show).collect::<Vec<_>>().join(", "))
    }
}
