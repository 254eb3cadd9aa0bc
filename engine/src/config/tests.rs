//! Tests of [`load_from`] through the public API: precedence, env aliases,
//! the TOML file, every validation message, cross-checks and `render`.

use core::time::Duration;

use ricochet_wire::group::{Scope, SourceMode};

use super::settings::SETTINGS;
use super::*;

const AFFINITY: &[usize] = &[0, 1, 2, 3];

fn args(flags: &[&str]) -> RunArgs {
    RunArgs::try_parse_from(std::iter::once("ricochet").chain(flags.iter().copied())).unwrap()
}

fn env() -> MapEnv {
    MapEnv::new().with_hostname("edge-1")
}

fn load(flags: &[&str], env: &MapEnv) -> Result<Config, ConfigError> {
    load_from(&args(flags), env, AFFINITY)
}

/// The single problem's message.
fn refused(flags: &[&str], env: &MapEnv) -> String {
    let e = load(flags, env).unwrap_err();
    assert_eq!(e.problems().len(), 1, "{e}");
    e.to_string()
}

#[test]
fn defaults_match_the_reference() {
    let c = load(&[], &env()).unwrap();
    assert_eq!(c.engine.cpus, [0, 1, 2, 3]);
    assert_eq!(c.engine.backend, IoBackend::Auto);
    assert_eq!(c.engine.uring_batch_wait, Duration::from_micros(200));
    assert_eq!(c.engine.max_datagram, 1232);
    assert_eq!(c.engine.admin_token_file, None);
    let n = &c.network;
    assert!(!n.ipv4_lab);
    assert_eq!(n.mc_iface, "eth0");
    assert_eq!((n.listen_port, n.scope, n.group_id), (9001, Scope::Site, 0x000B));
    assert_eq!((n.source_mode, n.shard_bits, n.beef_shard_bits), (SourceMode::Asm, 2, 0));
    assert!(!n.subtree_data_enabled && !n.beef_enabled);
    use ricochet_wire::group::{DEFAULT_BEEF_SHARD_BITS, DEFAULT_GROUP_ID, DEFAULT_SHARD_BITS};
    assert_eq!(
        (n.group_id, n.shard_bits, n.beef_shard_bits),
        (DEFAULT_GROUP_ID, DEFAULT_SHARD_BITS, DEFAULT_BEEF_SHARD_BITS)
    );
    let ca = &c.cache;
    assert_eq!((ca.backend, &ca.redis_addr), (CacheBackend::Memory, &None));
    let m = Duration::from_secs(60);
    assert_eq!(
        ca.ttl,
        CacheTtls { fallback: m, tx: m, block: 10 * m, subtree: 5 * m, anchor: 2 * m, beef: m }
    );
    assert_eq!((ca.max_keys, ca.max_bytes), (None, 1 << 30));
    assert_eq!((ca.dial_timeout, ca.op_timeout), (Duration::from_secs(1), Duration::from_secs(1)));
    assert_eq!(
        c.nack,
        NackConfig {
            port: 9300,
            addr: None,
            suppress_ack: false,
            suppress_miss: false,
            max_range: 64
        }
    );
    assert_eq!(c.retransmit.egress_ifaces, ["eth0"]);
    assert_eq!((c.retransmit.egress_port, c.retransmit.dedup_window), (9001, m));
    let r = &c.rate_limits;
    assert_eq!((r.ip_rate, r.ip_burst, r.sequence_max, r.sequence_window), (100.0, 10, 100, m));
    assert_eq!((r.chain_rate, r.chain_window, r.group_rate, r.group_burst), (500, m, 200.0, 50));
    assert!(!r.throttle_response);
    let b = &c.beacon;
    assert!(b.enabled && b.multicast && !b.unicast && !b.draining);
    assert_eq!((b.tier, b.preference, b.interval, b.scope), (0, 128, m, BeaconScope::Site));
    let p = &c.proxy;
    assert!(!p.enabled && p.upstreams.is_empty());
    assert_eq!(
        (p.timeout, p.max_endpoints, p.dedup_window, p.queue_depth),
        (Duration::from_millis(300), None, m, 1024)
    );
    let rt = &c.runtime;
    assert_eq!((rt.log_level, rt.log_format), (tracing::Level::INFO, LogFormat::Text));
    assert_eq!((rt.drain_timeout, rt.warmup_timeout), (Duration::ZERO, Duration::ZERO));
    assert_eq!(rt.metrics_addr, HostPort { host: Host::Any, port: 9400 });
    assert_eq!(rt.instance_id, "edge-1");
    assert!(c.notes().is_empty());
    for s in SETTINGS {
        assert!(matches!(c.origin(s.flag), Some(Origin::Default) | None), "{}", s.flag);
    }
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let file = "nack_port = 1000\nlisten_port = 2000\negress_port = 3000\n";
    let env = env()
        .with_file("/etc/ricochet.toml", file)
        .with_var("RICOCHET_CONFIG", "/etc/ricochet.toml")
        .with_var("NACK_PORT", "1001")
        .with_var("LISTEN_PORT", "2001");
    let c = load(&["--nack-port", "1002"], &env).unwrap();
    assert_eq!(c.nack.port, 1002);
    assert_eq!(c.network.listen_port, 2001);
    assert_eq!(c.retransmit.egress_port, 3000);
    assert_eq!(c.beacon.tier, 0);
    assert_eq!(c.origin("nack-port"), Some(Origin::Flag));
    assert_eq!(c.origin("listen-port"), Some(Origin::Env("LISTEN_PORT")));
    assert_eq!(c.origin("egress-port"), Some(Origin::File));
    assert_eq!(c.origin("beacon-tier"), Some(Origin::Default));
    assert_eq!(c.config_file.as_deref(), Some(Path::new("/etc/ricochet.toml")));
}

#[test]
fn precedence_through_a_clap_subcommand() {
    use clap::{Args, FromArgMatches};
    let cmd = clap::Command::new("ricochet")
        .subcommand(RunArgs::augment_args(clap::Command::new("run")))
        .subcommand(RunArgs::augment_args(clap::Command::new("check-config")));
    let m = cmd
        .try_get_matches_from(["ricochet", "check-config", "--shard-bits=3", "--cpus", "1-2"])
        .unwrap();
    let (name, sub) = m.subcommand().unwrap();
    assert_eq!(name, "check-config");
    let a = RunArgs::from_arg_matches(sub).unwrap();
    let env = env().with_var("SHARD_BITS", "4").with_var("BEACON_TIER", "3");
    let c = load_from(&a, &env, AFFINITY).unwrap();
    assert_eq!(c.network.shard_bits, 3, "flag beats env");
    assert_eq!(c.beacon.tier, 3, "env beats default");
    assert_eq!(c.engine.cpus, [1, 2]);
}

#[test]
fn env_aliases_and_empty_env() {
    // As the reference: RL_SENDER_* are read only where the chain setting
    // is zero (its defaults are not).
    let c = load(&[], &env().with_var("RL_SENDER_RATE", "7").with_var("NACK_PORT", "  ")).unwrap();
    assert_eq!(c.rate_limits.chain_rate, 500, "the canonical default is not zero");
    assert_eq!(c.nack.port, 9300, "an empty env var is unset");
    let e = env().with_var("RL_SENDER_RATE", "7").with_var("RL_CHAIN_RATE", "0");
    let c = load(&[], &e.with_var("RL_CHAIN_WINDOW", "0s").with_var("RL_SENDER_WINDOW", "30s"))
        .unwrap();
    assert_eq!(c.rate_limits.chain_rate, 7, "zero chain rate falls back to the sender rate");
    assert_eq!(c.rate_limits.chain_window, Duration::from_secs(30));
    let c = load(&[], &env().with_var("RL_CHAIN_RATE", "0")).unwrap();
    assert_eq!(c.rate_limits.chain_rate, 500, "zero without an alias is the default");
    let c =
        load(&[], &env().with_var("RL_SENDER_RATE", "7").with_var("RL_CHAIN_RATE", "8")).unwrap();
    assert_eq!(c.rate_limits.chain_rate, 8, "the canonical name wins over the alias");
    let c = load(&[], &env().with_var("PROXY_QUEUE", "16")).unwrap();
    assert_eq!(c.proxy.queue_depth, 16);
}

#[test]
fn bad_values_name_the_source_and_the_fix() {
    let msg = refused(&["--shard-bits", "13"], &env());
    assert_eq!(
        msg,
        "--shard-bits (SHARD_BITS) = \"13\" from the command line: must be between 1 and 12; set --shard-bits to a value in 1..=12"
    );
    // Env values never fall back to the default (the reference's does).
    let msg = refused(&[], &env().with_var("SHARD_BITS", "13"));
    assert!(msg.contains("--shard-bits (SHARD_BITS) = \"13\" from env SHARD_BITS"), "{msg}");
    assert!(msg.ends_with("set SHARD_BITS to a value in 1..=12"), "{msg}");
    let msg = refused(&[], &env().with_var("RL_SENDER_WINDOW", "1"));
    assert!(msg.contains("from env RL_SENDER_WINDOW: missing unit"), "{msg}");
    assert!(msg.contains("set RL_SENDER_WINDOW to a Go duration"), "{msg}");
    let env = env()
        .with_var("RICOCHET_CONFIG", "/etc/r.toml")
        .with_file("/etc/r.toml", "shard_bits = 13\n");
    let msg = refused(&[], &env);
    assert!(msg.contains("from shard_bits in /etc/r.toml"), "{msg}");
    assert!(msg.contains("set shard_bits in /etc/r.toml to a value in 1..=12"), "{msg}");
}

#[test]
fn every_validation_names_the_flag_and_the_fix() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--cache-ttl-block=0s"],
            &[
                "--cache-ttl-block (CACHE_TTL_BLOCK)",
                "greater than zero",
                "set --cache-ttl-block to a duration above zero",
            ],
        ),
        (&["--cache-ttl=0"], &["--cache-ttl (CACHE_TTL)", "greater than zero"]),
        (&["--cache-ttl-beef=-1s"], &["--cache-ttl-beef (CACHE_TTL_BEEF)", "negative"]),
        (
            &["--beacon-interval=500ms"],
            &[
                "--beacon-interval (BEACON_INTERVAL)",
                "between 1s and 65535s",
                "set --beacon-interval to a duration in 1s..=65535s",
            ],
        ),
        (&["--beacon-interval=19h"], &["between 1s and 65535s"]),
        (
            &["--beacon-tier=255"],
            &["--beacon-tier (BEACON_TIER)", "set --beacon-tier to a value in 0..=254"],
        ),
        (
            &["--beacon-scope=link"],
            &[
                "--beacon-scope (BEACON_SCOPE)",
                "link scope",
                "set --beacon-scope to one of site, org, global, all",
            ],
        ),
        (
            &["--scope=lan"],
            &["--scope (MC_SCOPE)", "set --scope to one of link, site, org, global"],
        ),
        (
            &["--scope=org", "--source-mode=ssm", "--ipv4-lab"],
            &[
                "--scope (MC_SCOPE) = \"org\"",
                "SSM groups exist only",
                "set --scope to site or global, or --source-mode to asm",
            ],
        ),
        (&["--source-mode=bidir"], &["--source-mode (SOURCE_MODE)", "one of asm, ssm"]),
        (
            &["--cache-backend=aerospike"],
            &[
                "--cache-backend (CACHE_BACKEND)",
                "aerospike backend is not supported",
                "set --cache-backend to redis",
            ],
        ),
        (
            &["--cache-backend=redis"],
            &[
                "--redis-addr (REDIS_ADDR) is required",
                "set --redis-addr to",
                "or set --cache-backend to memory",
            ],
        ),
        (
            &["--redis-addr=redis"],
            &["--redis-addr (REDIS_ADDR)", "missing port", "set --redis-addr to host:port"],
        ),
        (
            &["--proxy-enabled"],
            &[
                "--upstream-retry-endpoints (UPSTREAM_RETRY_ENDPOINTS) is required",
                "or set --proxy-enabled to false",
            ],
        ),
        (
            &["--upstream-retry-endpoints=a:1,b:0"],
            &[
                "--upstream-retry-endpoints (UPSTREAM_RETRY_ENDPOINTS)",
                "port other than 0",
                "set --upstream-retry-endpoints to host:port",
            ],
        ),
        (
            &["--cpus=0-7"],
            &[
                "--cpus (RICOCHET_CPUS) = \"0-7\"",
                "CPUs 4-7 are outside",
                "allowed: 0-3",
                "set --cpus to CPUs within 0-3",
            ],
        ),
        (
            &["--cpus=3-1"],
            &["--cpus (RICOCHET_CPUS)", "descending", "set --cpus to a Linux cpulist"],
        ),
        (
            &["--cpu-mask=0x30"],
            &[
                "--cpu-mask (RICOCHET_CPU_MASK) = \"0x30\"",
                "CPUs 4-5 are outside",
                "set --cpu-mask to CPUs within 0-3",
            ],
        ),
        (
            &["--cpu-mask=0x0"],
            &[
                "--cpu-mask (RICOCHET_CPU_MASK)",
                "selects no CPUs",
                "set --cpu-mask to a hexadecimal CPU mask",
            ],
        ),
        (
            &["--cpus=0", "--cpu-mask=1"],
            &[
                "--cpus (RICOCHET_CPUS) and --cpu-mask (RICOCHET_CPU_MASK)",
                "mutually exclusive",
                "set only one",
            ],
        ),
        (
            &["--metrics-addr=9400"],
            &["--metrics-addr (METRICS_ADDR)", "missing port", "set --metrics-addr to host:port"],
        ),
        (
            &["--mc-group-id=0x10000"],
            &["--mc-group-id (MC_GROUP_ID)", "16 bits", "set --mc-group-id to a group id"],
        ),
        (
            &["--cache-max-bytes=1GB"],
            &[
                "--cache-max-bytes (RICOCHET_CACHE_MAX_BYTES)",
                "ambiguous",
                "set --cache-max-bytes to a byte count",
            ],
        ),
        (
            &["--cache-max-bytes=0"],
            &["--cache-max-bytes (RICOCHET_CACHE_MAX_BYTES)", "greater than zero"],
        ),
        (
            &["--max-range=0"],
            &["--max-range (RICOCHET_MAX_RANGE)", "set --max-range to a value in 1..=4096"],
        ),
        (&["--max-datagram=100"], &["--max-datagram (RICOCHET_MAX_DATAGRAM)", "512..=65507"]),
        (
            &["--egress-iface=,"],
            &[
                "--egress-iface (EGRESS_IFACE)",
                "no interface",
                "set --egress-iface to one or more interface names",
            ],
        ),
        (
            &["--mc-iface=a/b"],
            &["--mc-iface (MC_IFACE)", "not an interface", "set --mc-iface to an interface name"],
        ),
        (
            &["--log-level=verbose"],
            &[
                "--log-level (LOG_LEVEL)",
                "set --log-level to one of trace, debug, info, warn, error",
            ],
        ),
        (&["--log-format=xml"], &["--log-format (LOG_FORMAT)", "one of text, json"]),
        (&["--backend=dpdk"], &["--backend (RICOCHET_BACKEND)", "one of auto, uring, epoll"]),
        (
            &["--uring-batch-wait=20ms"],
            &["--uring-batch-wait (RICOCHET_URING_BATCH_WAIT)", "at most 10ms", "0..=10ms"],
        ),
        (&["--uring-batch-wait=soon"], &["--uring-batch-wait (RICOCHET_URING_BATCH_WAIT)"]),
        (
            &["--debug=yes"],
            &["--debug (DEBUG) = \"yes\"", "not a bool", "set --debug to true or false"],
        ),
        (
            &["--nack-addr=fe80"],
            &["--nack-addr (NACK_ADDR)", "not an IP address", "set --nack-addr to an IPv6"],
        ),
        (
            &["--nack-port=0"],
            &["--nack-port (NACK_PORT)", "set --nack-port to a value in 1..=65535"],
        ),
        (
            &["--rl-ip-rate=0"],
            &["--rl-ip-rate (RL_IP_RATE)", "greater than 0", "set --rl-ip-rate to a number"],
        ),
        (
            &["--rl-group-burst=many"],
            &["--rl-group-burst (RL_GROUP_BURST)", "set --rl-group-burst to an integer in 0..="],
        ),
        (&["--proxy-queue-depth=0"], &["--proxy-queue-depth (PROXY_QUEUE_DEPTH)", "1..=1048576"]),
        (
            &["--drain-timeout=soon"],
            &["--drain-timeout (DRAIN_TIMEOUT)", "set --drain-timeout to a Go duration"],
        ),
        (&["--instance="], &["--instance (INSTANCE_ID)", "empty", "set --instance to a name"]),
        (
            &["--config=/missing.toml"],
            &[
                "--config (RICOCHET_CONFIG) = \"/missing.toml\"",
                "cannot read",
                "set --config to a readable TOML file",
            ],
        ),
    ];
    for (flags, want) in cases {
        let msg = refused(flags, &env());
        for w in *want {
            assert!(msg.contains(w), "{flags:?}: {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let e =
        load(&["--shard-bits", "13", "--nack-port", "0", "--cache-ttl-tx=0s"], &env()).unwrap_err();
    let flags: Vec<_> = e.problems().iter().map(|p| p.flag()).collect();
    assert_eq!(flags, [Some("shard-bits"), Some("cache-ttl-tx"), Some("nack-port")]);
    assert!(e.to_string().starts_with("3 configuration problems:\n  - --shard-bits"), "{e}");
}

#[test]
fn a_refused_setting_does_not_cause_cross_check_noise() {
    let e = load(&["--proxy-enabled", "--upstream-retry-endpoints=bad"], &env()).unwrap_err();
    assert_eq!(e.problems().len(), 1, "{e}");
    let e = load(&["--scope=nope", "--source-mode=ssm", "--ipv4-lab"], &env()).unwrap_err();
    assert_eq!(e.problems().len(), 1, "{e}");
}

#[test]
fn cpu_selection_layers() {
    let c = load(&["--cpu-mask", "0xa"], &env()).unwrap();
    assert_eq!(c.engine.cpus, [1, 3]);
    // The higher level wins; the other one is not an error.
    let e = env().with_var("RICOCHET_CPU_MASK", "0x1");
    assert_eq!(load(&["--cpus", "2-3"], &e).unwrap().engine.cpus, [2, 3]);
    let e = env().with_var("RICOCHET_CPUS", "2");
    assert_eq!(load(&["--cpu-mask", "0x1"], &e).unwrap().engine.cpus, [0]);
    let e = env().with_var("RICOCHET_CPUS", "2").with_var("RICOCHET_CPU_MASK", "1");
    assert!(refused(&[], &e).contains("both set from env RICOCHET_CPUS"));
    // Default: the affinity mask, whatever it is.
    let c = load_from(&args(&[]), &env(), &[4, 6]).unwrap();
    assert_eq!(c.engine.cpus, [4, 6]);
}

#[test]
fn ttl_precedence_follows_the_reference() {
    let m = |n: u64| Duration::from_secs(60 * n);
    let c = load(&[], &env().with_var("CACHE_TTL", "30s")).unwrap();
    let half = Duration::from_secs(30);
    assert_eq!(
        (c.cache.ttl.tx, c.cache.ttl.block, c.cache.ttl.subtree, c.cache.ttl.anchor),
        (half, half, half, half)
    );
    assert_eq!(c.cache.ttl.beef, m(1), "BEEF stays out of the collapse");
    assert_eq!(c.origin("cache-ttl-block"), Some(Origin::Env("CACHE_TTL")));
    let c = load(&["--cache-ttl-block=15m"], &env().with_var("CACHE_TTL", "30s")).unwrap();
    assert_eq!((c.cache.ttl.block, c.cache.ttl.tx), (m(15), half));
    let env =
        env().with_var("RICOCHET_CONFIG", "r.toml").with_file("r.toml", "cache_ttl = \"20m\"");
    let c = load(&["--cache-ttl-anchor=1m"], &env).unwrap();
    assert_eq!(
        (c.cache.ttl.subtree, c.cache.ttl.anchor, c.cache.ttl.fallback),
        (m(20), m(1), m(20))
    );
    use ricochet_wire::frame::FrameVersion;
    assert_eq!(c.cache.ttl.for_version(FrameVersion::Anchor), m(1));
    assert_eq!(c.cache.ttl.for_version(FrameVersion::Bundle), m(20));
}

#[test]
fn toml_file_values_of_every_shape() {
    let file = r#"
        cache_ttl_tx = "90s"
        ipv4_lab = true
        rl_ip_rate = 2.5
        mc_group_id = 12
        mc_scope = "org"
        upstream_retry_endpoints = ["10.0.0.1:9300", "[2001:db8::1]:9300"]
        proxy_enabled = true
        egress_iface = ["lo", "eth1"]
        cpus = "1-2"
        proxy_queue = 8
        cache_max_bytes = "512MiB"
    "#;
    let env = env().with_var("RICOCHET_CONFIG", "r.toml").with_file("r.toml", file);
    let c = load(&[], &env).unwrap();
    assert_eq!(c.cache.ttl.tx, Duration::from_secs(90));
    assert!(c.network.ipv4_lab);
    assert_eq!(c.network.mc_iface, "127.0.0.1", "lab default interface");
    assert_eq!(c.rate_limits.ip_rate, 2.5);
    assert_eq!(c.network.group_id, 12);
    assert_eq!(c.network.scope, Scope::Org);
    assert_eq!(c.proxy.upstreams.len(), 2);
    assert_eq!(c.retransmit.egress_ifaces, ["lo", "eth1"]);
    assert_eq!(c.engine.cpus, [1, 2]);
    assert_eq!(c.proxy.queue_depth, 8);
    assert_eq!(c.cache.max_bytes, 512 << 20);
}

#[test]
fn toml_file_errors() {
    let with = |text: &str| {
        env().with_var("RICOCHET_CONFIG", "/etc/r.toml").with_file("/etc/r.toml", text)
    };
    let msg = refused(&[], &with("nack_prot = 9300\n"));
    assert_eq!(
        msg,
        "unknown key \"nack_prot\" in config file /etc/r.toml; did you mean \"nack_port\"? remove it, or use a setting name: the long flag in snake_case, as listed by `ricochet run --help`"
    );
    assert!(refused(&[], &with("NACK_PORT = 1\n")).contains("did you mean \"nack_port\""));
    assert!(refused(&[], &with("nack-port = 1\n")).contains("did you mean \"nack_port\""));
    assert!(!refused(&[], &with("zzz = 1\n")).contains("did you mean"));
    let msg = refused(&[], &with("[cache]\nttl = \"1m\"\n"));
    assert!(msg.contains("unknown key \"cache\""), "{msg}");
    let msg = refused(&[], &with("nack_port = [1]\n"));
    assert!(msg.contains("nack_port in config file /etc/r.toml is an array; set nack_port to a string, number or boolean, as in `nack_port = 9300`"), "{msg}");
    let msg = refused(&[], &with("nack_port = 9300\nnack_port = 1\n"));
    assert!(msg.contains("config file /etc/r.toml is not valid TOML"), "{msg}");
    let msg = refused(&[], &with("scope = \"site\"\nmc_scope = \"org\"\n"));
    assert!(msg.contains("sets scope twice"), "{msg}");
    let msg = refused(&[], &with("config = \"other.toml\"\n"));
    assert!(msg.contains("key \"config\" in config file /etc/r.toml is not allowed"), "{msg}");
    // Unknown keys are all reported.
    let e = load(&[], &with("a1 = 1\nb2 = 2\n")).unwrap_err();
    assert_eq!(e.problems().len(), 2);
}

#[test]
fn ipv4_lab_debug_and_hostname_defaults() {
    let c = load(&["--ipv4-lab", "--debug"], &MapEnv::new()).unwrap();
    assert_eq!(c.network.mc_iface, "127.0.0.1");
    assert_eq!(c.retransmit.egress_ifaces, ["127.0.0.1"]);
    assert_eq!(c.runtime.log_level, tracing::Level::DEBUG);
    assert_eq!(c.runtime.instance_id, "ricochet", "no hostname");
    let c = load(&["--ipv4-lab", "--mc-iface", "lo"], &env()).unwrap();
    assert_eq!(c.network.mc_iface, "lo", "an explicit interface beats the lab default");
    let c = load(&["--debug=false", "--log-level=trace"], &env()).unwrap();
    assert_eq!(c.runtime.log_level, tracing::Level::TRACE);
}

#[test]
fn compatibility_flags_are_noted() {
    let c = load(&["--proxy-workers=2"], &env().with_var("NACK_WORKERS", "8")).unwrap_err();
    assert!(c.to_string().contains("NACK_WORKERS"));
    let c = load(&["--proxy-workers=2", "--cpus=1"], &env().with_var("NACK_WORKERS", "8")).unwrap();
    assert_eq!(c.notes().len(), 2, "{:?}", c.notes());
    let e = refused(&["--trace-sampling=1.5"], &env());
    assert!(e.contains("set --trace-sampling to a fraction"), "{e}");
    assert!(
        c.notes().iter().any(|n| n.contains(
            "--proxy-workers (PROXY_WORKERS) = \"2\" is accepted for compatibility and ignored"
        )),
        "{:?}",
        c.notes()
    );
    assert!(c.notes().iter().any(|n| n.contains("--nack-workers (NACK_WORKERS) = \"8\" from env NACK_WORKERS is not used: --cpus (RICOCHET_CPUS) names the worker CPUs")), "{:?}", c.notes());
    assert!(c.render().contains("nack_workers = \"8\"  # env (ignored)\n"));
    assert_eq!(c.origin("proxy-workers"), Some(Origin::Flag));
}

#[test]
fn nack_workers_picks_the_worker_count_as_the_reference() {
    let c = load(&[], &env().with_var("NACK_WORKERS", "2")).unwrap();
    assert_eq!(c.engine.cpus, [0, 1], "the first two CPUs of the affinity mask");
    assert!(
        c.render().contains("cpus = \"0-1\"  # env (NACK_WORKERS; nack_workers 2)\n"),
        "{}",
        c.render()
    );
    for zero in ["0", "-3"] {
        let c = load(&[], &env().with_var("NACK_WORKERS", zero)).unwrap();
        assert_eq!(c.engine.cpus, AFFINITY, "{zero} means every CPU, as NumCPU in the reference");
    }
    let e = refused(&["--nack-workers=5"], &env());
    assert!(e.contains("--nack-workers (NACK_WORKERS) = \"5\" from the command line: ricochet pins one worker per CPU and this process may run on 4 (0-3); set --nack-workers to at most 4, or 0 for all of them (or give --cpus)"), "{e}");
    let c = load(&["--nack-workers=1", "--cpu-mask=0xc"], &env()).unwrap();
    assert_eq!(c.engine.cpus, [2, 3], "--cpus and --cpu-mask win");
}

#[test]
fn reference_settings_ricochet_cannot_honour_are_refused_with_the_reason() {
    let e = refused(&["--cache-backend=aerospike", "--aerospike-hosts=a:3000"], &env());
    assert!(e.contains("the aerospike backend is not supported"), "{e}");
    assert!(e.contains("redis"), "{e}");
    let e = refused(&[], &env().with_var("TEE_LISTEN", "[::1]:9002"));
    assert!(e.contains("TEE_LISTEN") && e.contains("no loopback tee input"), "{e}");
    let e = refused(&["--mc-join-enabled=false"], &env());
    assert!(e.contains("mc-join-enabled"), "{e}");
    load(&["--mc-join-enabled=TRUE"], &env()).unwrap();
    // Under ASM an SSM list is accepted and reported as unused.
    let c = load(&[], &env().with_var("SSM_PUBLISHERS_STATIC", "2001:db8::1")).unwrap();
    assert!(c.notes().iter().any(|n| n.contains("--ssm-publishers-static")), "{:?}", c.notes());
    // Fail closed, as the reference: SSM without sources is refused.
    let e = refused(&["--source-mode=ssm"], &env());
    assert!(
        e.contains("--source-mode (SOURCE_MODE)") && e.contains("set --source-mode to asm"),
        "{e}"
    );
    let e = refused(&["--nack-addr=10.0.0.1"], &env());
    assert!(e.contains("set --nack-addr to an IPv6 unicast address"), "{e}");
    let e = refused(&["--ssm-bootstrap-refresh=0s"], &env());
    assert!(e.contains("ssm-bootstrap-refresh"), "{e}");
}

#[test]
fn zero_means_the_default_where_the_reference_says_so() {
    let e = env()
        .with_var("RL_SEQUENCE_WINDOW", "0")
        .with_var("RL_GROUP_RATE", "0")
        .with_var("RL_GROUP_BURST", "-1")
        .with_var("RL_CHAIN_RATE", "12.5");
    let c = load(&[], &e).unwrap();
    let r = &c.rate_limits;
    assert_eq!(r.sequence_window, Duration::from_secs(60));
    assert_eq!((r.group_rate, r.group_burst), (200.0, 50));
    assert_eq!(r.chain_rate, 12, "a float rate, whole requests per window as the reference");
    assert!(
        c.render().contains("rl_group_rate = 200  # env (0 means the default)\n"),
        "{}",
        c.render()
    );
    // Zero where the reference would then answer nothing is refused.
    for flag in ["--rl-ip-rate=0", "--rl-ip-burst=0", "--rl-sequence-max=0"] {
        refused(&[flag], &env());
    }
}

#[test]
fn render_lists_every_setting_with_its_source() {
    let env = env()
        .with_var("RICOCHET_CONFIG", "/etc/r.toml")
        .with_file("/etc/r.toml", "egress_port = 3000\n")
        .with_var("LISTEN_PORT", "2001")
        .with_var("CACHE_TTL", "30s")
        .with_var("RL_SENDER_RATE", "7");
    let c = load(&["--nack-port", "1002", "--cpu-mask", "0x3"], &env).unwrap();
    let out = c.render();
    for line in [
        "# config file: /etc/r.toml\n",
        "\nnack_port = 1002  # flag\n",
        "\nlisten_port = 2001  # env\n",
        "\negress_port = 3000  # file\n",
        "\nbeacon_tier = 0  # default\n",
        "\ncache_ttl_block = \"30s\"  # env (CACHE_TTL; via cache_ttl)\n",
        "\ncache_ttl_beef = \"1m\"  # default\n",
        "\nrl_chain_rate = 500  # default\n",
        "\nrl_sender_rate = 7  # env\n",
        "\ncpus = \"0-1\"  # flag (cpu_mask 0x3)\n",
        "\nmc_group_id = \"0x000B\"  # default\n",
        "\nmetrics_addr = \":9400\"  # default\n",
        "\nredis_addr = \"\"  # default\n",
        "\nupstream_retry_endpoints = []  # default\n",
        "\negress_iface = [\"eth0\"]  # default\n",
        "\ncache_max_bytes = \"1GiB\"  # default\n",
        "\ninstance = \"edge-1\"  # default (hostname)\n",
        "\nrl_ip_rate = 100  # default\n",
    ] {
        assert!(out.contains(line), "{out}\nlacks {line:?}");
    }
    // One line per setting except config, cpu_mask and unset compat flags.
    let lines = out.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(lines, SETTINGS.len() - 2 - 1 - 1, "less nack_workers: --cpu-mask decides");
}

#[test]
fn render_output_loads_back_to_the_same_config() {
    let flags = [
        "--ipv4-lab",
        "--cpus=1,3",
        "--shard-bits=5",
        "--scope=global",
        "--source-mode=ssm",
        "--cache-backend=redis",
        "--redis-addr=[::1]:6379",
        "--cache-ttl=45s",
        "--cache-ttl-beef=1.5s",
        "--proxy-enabled",
        "--upstream-retry-endpoints=a.example:9300,10.0.0.2:1",
        "--proxy-max-endpoints=1",
        "--beacon-scope=both",
        "--rl-group-rate=0.5",
        "--nack-addr=2001:db8::24",
        "--metrics-addr=127.0.0.1:0",
        "--cache-max-keys=10",
        "--admin-token-file=/run/token",
        "--log-format=json",
        "--mc-group-id=0x00ff",
        "--gossip-peers=10.0.0.7:9310",
        "--dht-bootstrap=seed.example:9320",
        "--domain=b",
        "--upstream-discovery=dht",
        "--upstream-domain=a",
        "--upstream-keys=ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c",
        "--upstream-events=10.0.0.1:9400",
        "--upstream-events-token-file=/run/up-token",
    ];
    let first = load(&flags, &env()).unwrap();
    let env = env().with_var("RICOCHET_CONFIG", "/r.toml").with_file("/r.toml", &first.render());
    let second = load(&[], &env).unwrap();
    assert_eq!(first.engine, second.engine);
    assert_eq!(first.network, second.network);
    assert_eq!(first.cache, second.cache);
    assert_eq!(first.nack, second.nack);
    assert_eq!(first.retransmit, second.retransmit);
    assert_eq!(first.rate_limits, second.rate_limits);
    assert_eq!(first.beacon, second.beacon);
    assert_eq!(first.proxy, second.proxy);
    assert_eq!(first.cluster, second.cluster);
    assert_eq!(first.discovery, second.discovery);
    assert_eq!(first.runtime, second.runtime);
}

#[test]
fn the_operations_guide_lists_every_flag_and_env_var() {
    let guide = include_str!("../../../docs/OPERATIONS.md");
    for s in SETTINGS {
        // A flag-table row: its first cell names the flag, its second the
        // env var.
        let listed = guide.lines().any(|l| {
            let mut cells = l.split(" | ");
            let (Some(flag), Some(env)) = (cells.next(), cells.next()) else { return false };
            let flag = flag.trim_start_matches("| ");
            (flag.starts_with(&format!("`--{}`", s.flag))
                || flag.starts_with(&format!("`--{}[=BOOL]`", s.flag)))
                && env.contains(&format!("`{}`", s.env))
        });
        assert!(listed, "docs/OPERATIONS.md has no flag-table row for --{} ({})", s.flag, s.env);
    }
}

#[test]
fn proxy_allow_takes_addresses_and_prefixes_and_refuses_the_ambiguous() {
    let c = load(&[], &env()).unwrap();
    assert!(c.proxy.allow.is_empty(), "secure default: nobody but live siblings");
    let c = load(&["--proxy-allow", "10.0.0.7, 10.1.0.0/16,fd00::/64,[::1]"], &env()).unwrap();
    let got: Vec<String> = c.proxy.allow.iter().map(|p| p.to_string()).collect();
    assert_eq!(got, ["10.0.0.7/32", "10.1.0.0/16", "fd00::/64", "::1/128"]);
    assert!(
        c.render().contains("proxy_allow = [\"10.0.0.7/32\", \"10.1.0.0/16\""),
        "{}",
        c.render()
    );
    let c = load(&[], &env().with_var("RICOCHET_PROXY_ALLOW", "192.0.2.0/24")).unwrap();
    assert!(c.proxy.allow[0].contains("192.0.2.9".parse().unwrap()));
    assert_eq!(c.origin("proxy-allow"), Some(Origin::Env("RICOCHET_PROXY_ALLOW")));
    let file = "proxy_allow = [\"10.0.0.0/8\", \"fd00::1\"]\n";
    let c = load(&["--config=/r.toml"], &env().with_file("/r.toml", file)).unwrap();
    assert_eq!(c.proxy.allow.len(), 2);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--proxy-allow=10.1.2.3/8"],
            &[
                "--proxy-allow (RICOCHET_PROXY_ALLOW)",
                "bits set after the /8 prefix",
                "10.0.0.0/8 for the whole network, or 10.1.2.3 alone",
            ],
        ),
        (&["--proxy-allow=10.0.0.0/33"], &["--proxy-allow (RICOCHET_PROXY_ALLOW)", "0..=32"]),
        (&["--proxy-allow=fd00::/129"], &["0..=128"]),
        (
            &["--proxy-allow=downstream.example"],
            &["not an IP address or prefix", "set --proxy-allow to addresses or CIDR prefixes"],
        ),
        (&["--proxy-allow=10.0.0.1:9300"], &["not an IP address or prefix"]),
    ];
    for (flags, want) in cases {
        let msg = refused(flags, &env());
        for w in *want {
            assert!(msg.contains(w), "{flags:?}: {msg:?} lacks {w:?}");
        }
    }
    let msg = refused(&[], &env().with_var("RICOCHET_PROXY_ALLOW", "nope"));
    assert!(
        msg.contains("env RICOCHET_PROXY_ALLOW") && msg.contains("set RICOCHET_PROXY_ALLOW"),
        "{msg}"
    );
}

#[test]
fn ingress_allow_takes_the_same_prefixes_and_names_itself_when_refused() {
    let c = load(&[], &env()).unwrap();
    assert!(c.network.ingress_allow.is_empty(), "default: every source, as the reference");
    let c = load(&["--ingress-allow", "10.1.0.0/16, fd00::5"], &env()).unwrap();
    let got: Vec<String> = c.network.ingress_allow.iter().map(|p| p.to_string()).collect();
    assert_eq!(got, ["10.1.0.0/16", "fd00::5/128"]);
    assert!(c.render().contains("ingress_allow = [\"10.1.0.0/16\", \"fd00::5/128\"]"));
    let c = load(&[], &env().with_var("RICOCHET_INGRESS_ALLOW", "192.0.2.0/24")).unwrap();
    assert_eq!(c.origin("ingress-allow"), Some(Origin::Env("RICOCHET_INGRESS_ALLOW")));
    let msg = refused(&["--ingress-allow=10.1.2.3/8"], &env());
    for w in ["--ingress-allow (RICOCHET_INGRESS_ALLOW)", "10.0.0.0/8 for the whole network"] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

/// Under SSM the groups are joined to the static publishers; an ingress
/// list that leaves one of them out would drop everything it sends.
#[test]
fn ingress_allow_must_cover_the_static_ssm_publishers() {
    let ssm = ["--source-mode=ssm", "--ssm-publishers-static=fd20::1,fd30::1, pub.example"];
    let msg = ssm_refused(&[&ssm[..], &["--ingress-allow=fd20::/64"]].concat());
    for w in [
        "--ingress-allow (RICOCHET_INGRESS_ALLOW) does not list the SSM publishers fd30::1:",
        "add them to --ingress-allow",
    ] {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
    assert!(!msg.contains("fd20::1"), "{msg}");
    // Covered (DNS names are resolved later, so not judged here), or no
    // list at all: accepted.
    load(&[&ssm[..], &["--ingress-allow=fd20::/64,fd30::1"]].concat(), &env()).unwrap();
    load(&ssm, &env()).unwrap();
}

#[test]
fn proxying_with_an_empty_allow_list_says_so_at_startup() {
    let up = ["--proxy-enabled", "--upstream-retry-endpoints=10.0.0.1:9300"];
    let c = load(&up, &env()).unwrap();
    assert!(
        c.notes().iter().any(|n| n.starts_with("--proxy-allow (RICOCHET_PROXY_ALLOW) is empty")),
        "{:?}",
        c.notes()
    );
    let c = load(&[&up[..], &["--proxy-allow=10.0.0.2"]].concat(), &env()).unwrap();
    assert!(!c.notes().iter().any(|n| n.contains("--proxy-allow")), "{:?}", c.notes());
    let c = load(&[], &env()).unwrap();
    assert!(!c.notes().iter().any(|n| n.contains("--proxy-allow")), "{:?}", c.notes());
}

/// The refusal naming `flag`, for the SSM tests (one problem expected).
fn ssm_refused(flags: &[&str]) -> String {
    refused(flags, &env())
}

#[test]
fn ssm_takes_the_reference_flags_and_env_vars() {
    let c = load(
        &[
            "--source-mode=ssm",
            "--ssm-publishers-static=fd20::1, pub.example",
            "--ssm-bootstrap-beacon=fd20::b",
            "--bind-source=fd20::9",
            "--ssm-bootstrap-refresh=10s",
        ],
        &env(),
    )
    .unwrap();
    let p = c.network.ssm.as_ref().expect("a posture");
    use ricochet_proto::ssm::posture::BootstrapEntry;
    assert!(p.is_ssm());
    assert_eq!(p.prefix, 0xFF35, "site scope by default");
    assert_eq!(p.bind_source, Some("fd20::9".parse().unwrap()));
    assert_eq!(p.refresh, Duration::from_secs(10));
    assert_eq!(
        p.publishers_static,
        [
            BootstrapEntry::Literal("fd20::1".parse().unwrap()),
            BootstrapEntry::Name("pub.example".into())
        ]
    );
    assert_eq!(p.bootstrap_beacon.len(), 1);
    let e = env()
        .with_var("SOURCE_MODE", "ssm")
        .with_var("MC_SCOPE", "global")
        .with_var("SSM_PUBLISHERS_STATIC", "fd20::1")
        .with_var("SSM_BOOTSTRAP_MANIFEST", "m.example")
        .with_var("SSM_BOOTSTRAP_SUBTREE_ANNOUNCE", "fd20::5")
        .with_var("BIND_SOURCE", "fd20::9")
        .with_var("SSM_BOOTSTRAP_REFRESH", "1m");
    let c = load(&[], &e).unwrap();
    let p = c.network.ssm.as_ref().unwrap();
    assert_eq!((p.prefix, p.refresh), (0xFF3E, Duration::from_secs(60)));
    assert_eq!((p.bootstrap_manifest.len(), p.bootstrap_subtree_announce.len()), (1, 1));
    assert_eq!(c.origin("ssm-publishers-static"), Some(Origin::Env("SSM_PUBLISHERS_STATIC")));
    // What check-config prints loads back to the same posture.
    let env2 = env().with_var("RICOCHET_CONFIG", "/r.toml").with_file("/r.toml", &c.render());
    assert_eq!(load(&[], &env2).unwrap().network, c.network);
}

#[test]
fn ssm_without_sources_fails_closed_naming_the_flags() {
    let e = ssm_refused(&["--source-mode=ssm"]);
    for want in [
        "--source-mode (SOURCE_MODE) = \"ssm\" from the command line",
        "fail-closed",
        "--ssm-publishers-static (SSM_PUBLISHERS_STATIC)",
        "--ssm-bootstrap-manifest (SSM_BOOTSTRAP_MANIFEST)",
        "set --source-mode to asm",
    ] {
        assert!(e.contains(want), "{e:?} lacks {want:?}");
    }
    // A control-group list alone leaves the data groups without a source.
    let e = ssm_refused(&["--source-mode=ssm", "--ssm-bootstrap-beacon=fd20::b"]);
    assert!(e.contains("no data-plane source"), "{e}");
    assert!(e.contains("set --ssm-publishers-static to the publishers'"), "{e}");
    let e = refused(&[], &env().with_var("SOURCE_MODE", "ssm"));
    assert!(e.contains("set SOURCE_MODE to asm"), "the fix names where it came from: {e}");
    // Manifest emitters alone are a data-plane source: publishers are
    // learned from their shard manifests.
    let c = load(&["--source-mode=ssm", "--ssm-bootstrap-manifest=emitter.example"], &env());
    assert_eq!(c.unwrap().network.ssm.unwrap().bootstrap_manifest.len(), 1);
}

#[test]
fn ssm_sources_and_bind_source_must_be_usable_ipv6() {
    for bad in ["10.0.0.1", "::1", "ff05::1", "::", "::ffff:10.0.0.1", "host.example"] {
        let e = ssm_refused(&[
            "--source-mode=ssm",
            "--ssm-publishers-static=fd20::1",
            &format!("--bind-source={bad}"),
        ]);
        assert!(e.contains("--bind-source (BIND_SOURCE)"), "{bad}: {e}");
        assert!(e.contains("set --bind-source to the IPv6 literal"), "{bad}: {e}");
    }
    // The bind source is checked under ASM too (it is the ADVERT source).
    ssm_refused(&["--bind-source=192.0.2.1"]);
    load(&["--bind-source=2001:db8::7"], &env()).unwrap();
    for (flag, entry) in [
        ("--ssm-publishers-static", "192.0.2.1"),
        ("--ssm-bootstrap-beacon", "ff3e::1"),
        ("--ssm-bootstrap-manifest", "::ffff:192.0.2.1"),
        ("--ssm-bootstrap-subtree-announce", "::"),
    ] {
        let e = ssm_refused(&[
            "--source-mode=ssm",
            "--ssm-publishers-static=fd20::1",
            &format!("{flag}=fd20::2,{entry}"),
        ]);
        let e = e.replace("fd20::1", "");
        assert!(e.contains(&format!("{flag} (")), "{flag}: {e}");
        assert!(e.contains(&format!("entry {entry:?} is not a usable IPv6 source")), "{e}");
        assert!(e.contains(&format!("set {flag} to IPv6 unicast addresses")), "{e}");
    }
}

#[test]
fn ssm_static_lists_past_sixteen_need_manifest_discovery() {
    let many: Vec<String> = (1..=17).map(|i| format!("fd20::{i:x}")).collect();
    let list = format!("--ssm-publishers-static={}", many.join(","));
    let e = ssm_refused(&["--source-mode=ssm", &list]);
    assert!(e.contains("17 entries") && e.contains("--ssm-bootstrap-manifest"), "{e}");
    let c = load(&["--source-mode=ssm", &list, "--ssm-bootstrap-manifest=m.example"], &env());
    assert_eq!(c.unwrap().network.ssm.unwrap().publishers_static.len(), 17);
    let sixteen = format!("--ssm-publishers-static={}", many[..16].join(","));
    load(&["--source-mode=ssm", &sixteen], &env()).unwrap();
}

#[test]
fn ssm_scope_refresh_and_the_lab() {
    let e = ssm_refused(&["--source-mode=ssm", "--scope=link", "--ssm-publishers-static=fd20::1"]);
    assert!(e.contains("set --scope to site or global"), "{e}");
    let e = ssm_refused(&[
        "--source-mode=ssm",
        "--ssm-publishers-static=fd20::1",
        "--ssm-bootstrap-refresh=0s",
    ]);
    assert!(e.contains("--ssm-bootstrap-refresh (SSM_BOOTSTRAP_REFRESH)"), "{e}");
    // SSM is IPv6 only: a source list with --ipv4-lab would be ignored.
    let e = ssm_refused(&["--ipv4-lab", "--source-mode=ssm", "--ssm-publishers-static=fd20::1"]);
    assert!(e.contains("SSM is IPv6") && e.contains("unset --ssm-publishers-static"), "{e}");
    let e = ssm_refused(&["--ipv4-lab", "--bind-source=fd20::1"]);
    assert!(e.contains("unset --bind-source"), "{e}");
    // Without a list the lab keeps today's note.
    let c = load(&["--ipv4-lab", "--source-mode=ssm"], &env()).unwrap();
    assert!(c.network.ssm.is_none());
    assert!(c.notes().iter().any(|n| n.contains("--source-mode ssm and --scope do not apply")));
}

#[test]
fn asm_at_global_scope_is_refused_per_rfc_8815() {
    let msg = refused(&["--scope=global"], &env());
    assert!(
        msg.contains("RFC 8815") && msg.contains("--scope") && msg.contains("--source-mode"),
        "{msg}"
    );
    let msg = refused(&[], &env().with_var("MC_SCOPE", "global"));
    assert!(msg.contains("MC_SCOPE") && msg.contains("RFC 8815"), "{msg}");
    // SSM at global scope (FF3E) is what RFC 8815 recommends.
    let c =
        load(&["--scope=global", "--source-mode=ssm", "--ssm-publishers-static=fd20::1"], &env())
            .unwrap();
    assert_eq!(c.network.ssm.as_ref().map(|p| p.scope), Some(Scope::Global));
    let c = load(&["--scope=site"], &env()).unwrap();
    assert!(!c.notes().iter().any(|n| n.contains("RFC 8815")), "{:?}", c.notes());
    // Lists under ASM are named as unused.
    let c = load(&["--ssm-bootstrap-beacon=fd20::b"], &env()).unwrap();
    assert!(
        c.notes().iter().any(|n| n.contains("--ssm-bootstrap-beacon") && n.contains("not used")),
        "{:?}",
        c.notes()
    );
}

/// `--upstream-discovery dht` takes records only from the keys it lists:
/// unset is refused with the fix; `any` is an explicit choice; a key that
/// is not 64 hex digits or not an ed25519 point is refused, by position.
#[test]
fn dht_discovery_needs_the_upstream_keys_it_trusts() {
    use ricochet_proto::discovery::Trust;
    const K1: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    let base = ["--proxy-enabled", "--upstream-discovery=dht", "--upstream-domain=a"];
    let msg = refused(&base, &env());
    assert!(msg.contains("--upstream-keys (RICOCHET_UPSTREAM_KEYS) is required"), "{msg}");
    assert!(msg.contains("anyone can sign a record under domain \"a\""), "{msg}");
    assert!(msg.contains("public_key") && msg.contains("any"), "{msg}");

    let with = |keys: &str| {
        let mut f = base.to_vec();
        f.push(keys);
        load(&f, &env())
    };
    let c = with(&format!("--upstream-keys={K1}, {}", K1.to_uppercase())).unwrap();
    let mut k1 = [0u8; 32];
    for (i, b) in k1.iter_mut().enumerate() {
        *b = u8::from_str_radix(&K1[i * 2..i * 2 + 2], 16).unwrap();
    }
    assert_eq!(c.discovery.upstream_keys, Trust::Keys(vec![k1]), "one key, listed twice");
    assert_eq!(with("--upstream-keys=any").unwrap().discovery.upstream_keys, Trust::Any);
    assert_eq!(with("--upstream-keys=ANY").unwrap().discovery.upstream_keys, Trust::Any);

    let e = with(&format!("--upstream-keys={K1},abcd")).unwrap_err().to_string();
    assert!(e.contains("key 2: found 4 characters instead of 64 hex digits"), "{e}");
    // y = 2 (little-endian) is not the y-coordinate of a curve point.
    let not_a_point = format!("02{}", "00".repeat(31));
    let e = with(&format!("--upstream-keys={not_a_point}")).unwrap_err().to_string();
    assert!(e.contains("key 1 is not an ed25519 public key"), "{e}");

    // Without DHT discovery the list is not needed, and one given is
    // reported unused.
    let c = load(&["--dht-enabled", "--domain=a"], &env()).unwrap();
    assert!(!c.notes().iter().any(|n| n.contains("--upstream-keys")), "{:?}", c.notes());
    let c = load(&["--dht-enabled", "--domain=a", "--upstream-keys=any"], &env()).unwrap();
    assert!(
        c.notes().iter().any(|n| n.contains(
            "--upstream-keys (RICOCHET_UPSTREAM_KEYS) is set but not used: --upstream-discovery \
             (RICOCHET_UPSTREAM_DISCOVERY) is static"
        )),
        "{:?}",
        c.notes()
    );
}
