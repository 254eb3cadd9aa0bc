//! The Helm chart (`deploy/helm/ricochet`) rendered by the real `helm
//! template` and checked against the real binary: every env var the chart
//! sets is one `ricochet` reads, and `ricochet check-config` run with the
//! rendered environment accepts it and shows each variable in force; the
//! reference chart's `config.*` keys set the reference's env vars; ports,
//! probes, capabilities, the user and the ServiceMonitor are what the
//! image and the daemon need.
//!
//! `helm` is `$RICOCHET_HELM`, else `helm` on PATH, else the one
//! scripts/helm-check.sh installs (`~/.cache/ricochet/bin/helm`). Without
//! it every test reports itself skipped, or fails under CI.
//!
//! The manifests are parsed by [`yaml`], a reader for the block-style
//! subset `helm template` prints (mappings, sequences, quoted and plain
//! scalars, `[]`/`{}`), so no YAML crate joins the lock for one test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ricochet_e2e::{bin, report_skip};
use yaml::Y;

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn chart() -> PathBuf {
    root().join("deploy/helm/ricochet")
}

/// Under CI (`CI` set, not empty, `0` or `false`) a missing helm fails.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The helm binary, or `None` after reporting `test` skipped.
fn helm(test: &str) -> Option<PathBuf> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Some(p) = std::env::var_os("RICOCHET_HELM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(works(&p), "RICOCHET_HELM={}: `helm version` fails", p.display());
        return Some(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join("helm")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/ricochet/bin/helm"));
    }
    if let Some(p) = candidates.into_iter().find(|p| p.is_file() && works(p)) {
        return Some(p);
    }
    let reason = "helm is not installed (scripts/helm-check.sh installs it; or set RICOCHET_HELM)";
    assert!(!in_ci(), "{test}: {reason}");
    report_skip(test, reason);
    None
}

/// `helm template t deploy/helm/ricochet ARGS…`: the manifests, or helm's
/// error output.
fn template(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(["template", "t"])
        .arg(chart())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run helm template");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("UTF-8 manifests"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The rendered manifests, by `kind` (one of each kind here).
fn manifests(helm: &Path, args: &[&str]) -> BTreeMap<String, Y> {
    let text = template(helm, args).unwrap_or_else(|e| panic!("helm template {args:?}:\n{e}"));
    let mut by_kind = BTreeMap::new();
    for doc in yaml::documents(&text) {
        let kind = doc.str("kind").to_owned();
        assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind} manifests");
    }
    by_kind
}

/// The workload (DaemonSet or Deployment) and its one container.
fn workload(m: &BTreeMap<String, Y>) -> (&Y, &Y) {
    let w = m.get("DaemonSet").or_else(|| m.get("Deployment")).expect("a DaemonSet or Deployment");
    let containers = w.get("spec.template.spec.containers").seq();
    assert_eq!(containers.len(), 1, "one container");
    (w, &containers[0])
}

/// The container's env as (name, value); every entry has a literal value.
fn env_of(container: &Y) -> Vec<(String, String)> {
    container
        .get("env")
        .seq()
        .iter()
        .map(|e| (e.str("name").to_owned(), e.str("value").to_owned()))
        .collect()
}

/// The env var → setting (check-config's key, the long flag in
/// snake_case) of every setting `ricochet check-config --help` lists.
fn settings_by_env() -> BTreeMap<String, String> {
    let out = Command::new(bin("ricochet"))
        .args(["check-config", "--help"])
        .env_clear()
        .output()
        .expect("ricochet check-config --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut map = BTreeMap::new();
    let mut flag: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            flag = Some(name.replace('-', "_"));
        }
        if let (Some(f), Some(i)) = (&flag, line.find("[env: ")) {
            let env: String = line[i + 6..].chars().take_while(|c| *c != '=').collect();
            map.insert(env, f.clone());
            flag = None;
        }
    }
    assert!(map.len() >= 100, "settings with an env var in the help: {map:?}");
    map
}

/// A global IPv6 address of this host (for BIND_SOURCE, which must be
/// bindable here).
fn host_global_v6() -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        let a = ifa.address?.as_sockaddr_in6()?.ip();
        let global = !a.is_loopback()
            && !a.is_unspecified()
            && !a.is_multicast()
            && (a.segments()[0] & 0xFFC0) != 0xFE80;
        global.then(|| a.to_string())
    })
}

/// The first CPU of this process's affinity mask.
fn first_allowed_cpu() -> usize {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false)).expect("a CPU")
}

/// Runs `ricochet check-config` with exactly the rendered environment,
/// host-specific values swapped for this host's (the interfaces for `lo`,
/// BIND_SOURCE for a global IPv6 address here, RICOCHET_CPUS for an
/// allowed CPU), and checks that it accepts it and that every variable is
/// in force from the environment. Returns check-config's output.
fn check_config_accepts(env: &[(String, String)]) -> String {
    let by_env = settings_by_env();
    for (name, _) in env {
        assert!(
            by_env.contains_key(name),
            "the chart sets {name}, which ricochet does not read (not in `ricochet check-config --help`)"
        );
    }
    let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.len(), env.len(), "an env var set twice: {env:?}");

    let bind_source = host_global_v6();
    let mut run_env: Vec<(String, String)> = Vec::new();
    for (k, v) in env {
        let v = match k.as_str() {
            "MC_IFACE" | "EGRESS_IFACE" => "lo".to_owned(),
            "RICOCHET_CPUS" => first_allowed_cpu().to_string(),
            "BIND_SOURCE" => match &bind_source {
                Some(a) => a.clone(),
                // No global IPv6 address here: check the rest.
                None => continue,
            },
            _ => v.clone(),
        };
        run_env.push((k.clone(), v));
    }
    let mut cmd = Command::new(bin("ricochet"));
    cmd.arg("check-config");
    // `lo` has no global IPv6 address to be the NACK address.
    if !names.contains("NACK_ADDR") {
        cmd.args(["--nack-addr", "::1"]);
    }
    let out = cmd
        .env_clear()
        .envs(run_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run ricochet check-config");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config refuses the rendered environment:\n{}\n{run_env:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, _) in &run_env {
        let key = &by_env[name];
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} line for {name}:\n{stdout}"));
        assert!(line.ends_with("# env"), "{name} is not in force from the environment: {line}");
    }
    stdout
}

/// The value check-config prints for `key`.
fn effective<'a>(check_config: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    let line = check_config
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in check-config output"));
    line.split("  # ").next().expect("value")
}

/// A port of the container by name: (containerPort, protocol).
fn port(container: &Y, name: &str) -> (u16, String) {
    let p = container
        .get("ports")
        .seq()
        .iter()
        .find(|p| p.str("name") == name)
        .unwrap_or_else(|| panic!("no container port {name}"));
    (p.str("containerPort").parse().expect("port number"), p.str("protocol").to_owned())
}

/// The user the image runs as (`USER uid:gid` in the Containerfile).
fn image_user() -> (String, String) {
    let path = root().join("deploy/container/Containerfile");
    let text = std::fs::read_to_string(&path).expect("Containerfile");
    let users: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("USER ")).collect();
    assert_eq!(users.len(), 1, "one USER line: {users:?}");
    let (u, g) = users[0].trim().split_once(':').expect("USER uid:gid");
    (u.to_owned(), g.to_owned())
}

/// Probes, ports, security and user of a rendered workload.
fn check_pod(w: &Y, c: &Y, env: &[(String, String)]) {
    let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let spec = w.get("spec.template.spec");

    // Ports: the data and NACK ports the env sets, the admin port of
    // METRICS_ADDR, each named as the probes and the Service use them.
    let listen = value("LISTEN_PORT").expect("LISTEN_PORT");
    assert_eq!(port(c, "udp-mcast"), (listen.parse().unwrap(), "UDP".to_owned()));
    let nack = value("NACK_PORT").expect("NACK_PORT");
    assert_eq!(port(c, "nack"), (nack.parse().unwrap(), "UDP".to_owned()));
    let metrics_addr = value("METRICS_ADDR").expect("METRICS_ADDR");
    let admin: u16 = metrics_addr.rsplit(':').next().unwrap().parse().expect("admin port");
    assert_eq!(port(c, "metrics"), (admin, "TCP".to_owned()));

    // Probes: HTTP on the admin listener.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = c.get(&format!("{probe}.httpGet"));
        assert_eq!(get.str("path"), path, "{probe}");
        assert_eq!(get.str("port"), "metrics", "{probe}");
    }

    // No capability, no escalation, the image's non-root user.
    let sc = c.get("securityContext");
    assert_eq!(sc.get("capabilities.drop").strs(), ["ALL"]);
    assert!(sc.opt("capabilities.add").is_none_or(|a| a.seq().is_empty()), "capabilities added");
    assert_eq!(sc.str("allowPrivilegeEscalation"), "false");
    assert_eq!(sc.str("readOnlyRootFilesystem"), "true");
    let psc = spec.get("securityContext");
    let (uid, gid) = image_user();
    assert_eq!(psc.str("runAsNonRoot"), "true");
    assert_eq!(psc.str("runAsUser"), uid);
    assert_eq!(psc.str("runAsGroup"), gid);

    // The only writable path, and every secret file the env names is in a
    // mounted volume.
    let mounts = c.get("volumeMounts").seq();
    assert!(mounts.iter().any(|m| m.str("mountPath") == "/var/lib/ricochet"), "state volume");
    for (k, v) in env.iter().filter(|(k, _)| k.ends_with("_FILE") || k == "RICOCHET_DHT_PEER_CACHE")
    {
        assert!(
            mounts.iter().any(|m| v.starts_with(&format!("{}/", m.str("mountPath")))),
            "{k}={v} is not under a mounted volume"
        );
    }
}

#[test]
fn default_values_render_a_host_network_daemonset_ricochet_accepts() {
    let Some(helm) = helm("default_values_render_a_host_network_daemonset_ricochet_accepts") else {
        return;
    };
    let m = manifests(&helm, &[]);
    let kinds: Vec<&str> = m.keys().map(String::as_str).collect();
    assert_eq!(kinds, ["DaemonSet", "Service", "ServiceAccount"], "no ServiceMonitor by default");
    let (w, c) = workload(&m);
    let spec = w.get("spec.template.spec");
    assert_eq!(spec.str("hostNetwork"), "true");
    assert_eq!(spec.str("dnsPolicy"), "ClusterFirstWithHostNet");
    // The image's entrypoint runs the endpoint; env-only configuration.
    assert!(c.opt("command").is_none() && c.opt("args").is_none());

    let env = env_of(c);
    check_pod(w, c, &env);
    let effective_config = check_config_accepts(&env);
    // The reference's ports.
    assert_eq!(effective(&effective_config, "listen_port"), "9001");
    assert_eq!(effective(&effective_config, "nack_port"), "9300");
    assert_eq!(effective(&effective_config, "metrics_addr"), "\":9400\"");

    // The Service exposes the admin port by name.
    let svc = &m["Service"];
    let ports = svc.get("spec.ports").seq();
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].str("name"), ports[0].str("targetPort")), ("metrics", "metrics"));
    assert_eq!(ports[0].str("port"), "9400");
}

#[test]
fn full_example_renders_servicemonitor_cluster_dht_and_secrets() {
    let Some(helm) = helm("full_example_renders_servicemonitor_cluster_dht_and_secrets") else {
        return;
    };
    let values = chart().join("examples/full.yaml");
    let values = values.to_str().expect("UTF-8 path");
    for kind in ["DaemonSet", "Deployment"] {
        let set_kind = format!("kind={kind}");
        let m = manifests(&helm, &["-f", values, "--set", &set_kind]);
        for want in
            [kind, "Service", "ServiceMonitor", "Secret", "PodDisruptionBudget", "NetworkPolicy"]
        {
            assert!(m.contains_key(want), "{kind}: no {want} in {:?}", m.keys());
        }
        let (w, c) = workload(&m);
        let spec = w.get("spec.template.spec");
        // Multus, not the host network; the attachment names the interface
        // the groups are joined on.
        assert!(spec.opt("hostNetwork").is_none());
        let networks =
            w.get("spec.template.metadata.annotations").str("k8s.v1.cni.cncf.io/networks");
        assert!(networks.contains("\"interface\":\"net1\""), "{networks}");

        let env = env_of(c);
        let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(value("MC_IFACE"), Some("net1"));
        assert_eq!(value("PROXY_QUEUE_DEPTH"), Some("1048576"), "whole numbers print whole");
        assert_eq!(value("CACHE_MAX_KEYS"), Some("2000000"));
        check_pod(w, c, &env);
        let effective_config = check_config_accepts(&env);
        assert_eq!(effective(&effective_config, "gossip_port"), "9311");
        assert_eq!(effective(&effective_config, "dht_port"), "9321");
        assert_eq!(effective(&effective_config, "cache_max_bytes"), "\"4GiB\"");
        assert_eq!(effective(&effective_config, "backend"), "\"epoll\"");

        // Cluster and DHT ports are declared when those run.
        assert_eq!(port(c, "gossip"), (9311, "UDP".to_owned()));
        assert_eq!(port(c, "dht"), (9321, "UDP".to_owned()));

        // The cluster key comes from the chart's Secret, the admin token
        // from the existing one, each a volume of the pod.
        let volumes = spec.get("volumes").seq();
        let secret_of = |name: &str| {
            volumes
                .iter()
                .find(|v| v.str("name") == name)
                .unwrap_or_else(|| panic!("no volume {name}"))
                .get("secret")
                .str("secretName")
                .to_owned()
        };
        assert_eq!(secret_of("cluster-key"), m["Secret"].get("metadata").str("name"));
        assert!(m["Secret"].get("stringData").opt("cluster.key").is_some());
        assert_eq!(secret_of("admin-token"), "ricochet-admin");
        let state = volumes.iter().find(|v| v.str("name") == "state").expect("state volume");
        assert_eq!(state.get("hostPath").str("path"), "/var/lib/ricochet");

        // The ServiceMonitor scrapes the Service's metrics port.
        let sm = &m["ServiceMonitor"];
        assert_eq!(sm.str("apiVersion"), "monitoring.coreos.com/v1");
        let ep = &sm.get("spec.endpoints").seq()[0];
        assert_eq!(
            (ep.str("port"), ep.str("path"), ep.str("interval")),
            ("metrics", "/metrics", "15s")
        );
        assert_eq!(sm.get("metadata.labels").str("release"), "prometheus");
        assert_eq!(
            sm.get("spec.selector.matchLabels"),
            m["Service"].get("spec.selector"),
            "the ServiceMonitor selects the Service's pods"
        );
    }
}

/// Each `config.*` key of the reference chart (lightwebinc/retry-endpoint-
/// helm), the env var its template sets from it, and a value other than
/// the default. `None`: the key is accepted and renders nothing, as the
/// reference binary reads nothing for it either.
const REFERENCE_KEYS: &[(&str, Option<&str>, &str)] = &[
    ("mcIface", Some("MC_IFACE"), "eth7"),
    ("listenPort", Some("LISTEN_PORT"), "9101"),
    ("shardBits", Some("SHARD_BITS"), "3"),
    ("mcScope", Some("MC_SCOPE"), "org"),
    ("mcGroupId", Some("MC_GROUP_ID"), "0x000C"),
    ("sourceMode", Some("SOURCE_MODE"), "ssm"),
    ("bindSource", Some("BIND_SOURCE"), "2001:db8::99"),
    ("ssmBootstrap.manifest", Some("SSM_BOOTSTRAP_MANIFEST"), "{2001:db8::1,2001:db8::2}"),
    ("ssmBootstrap.beacon", Some("SSM_BOOTSTRAP_BEACON"), "{2001:db8::3}"),
    ("ssmBootstrap.subtreeAnnounce", Some("SSM_BOOTSTRAP_SUBTREE_ANNOUNCE"), "{2001:db8::4}"),
    ("ssmPublishersStatic", Some("SSM_PUBLISHERS_STATIC"), "{2001:db8::5}"),
    ("ssmBootstrapRefresh", Some("SSM_BOOTSTRAP_REFRESH"), "45s"),
    ("egressIface", Some("EGRESS_IFACE"), "eth8"),
    ("egressPort", Some("EGRESS_PORT"), "9102"),
    ("egressMulticastLoop", Some("EGRESS_MULTICAST_LOOP"), "true"),
    ("egressHoplimit", None, "16"),
    ("dedupWindow", Some("DEDUP_WINDOW"), "61s"),
    ("proxyEnabled", Some("PROXY_ENABLED"), "true"),
    ("upstreamRetryEndpoints", Some("UPSTREAM_RETRY_ENDPOINTS"), "{[2001:db8:1::10]:9300}"),
    ("proxyTimeout", Some("PROXY_TIMEOUT"), "301ms"),
    ("proxyMaxEndpoints", Some("PROXY_MAX_ENDPOINTS"), "3"),
    ("proxyDedupWindow", Some("PROXY_DEDUP_WINDOW"), "62s"),
    ("proxyWorkers", None, "8"),
    // The reference's PROXY_QUEUE, under ricochet's name for it.
    ("proxyQueue", Some("PROXY_QUEUE_DEPTH"), "2048"),
    ("nackPort", Some("NACK_PORT"), "9301"),
    ("nackAddr", Some("NACK_ADDR"), "2001:db8::24"),
    ("nackWorkers", Some("NACK_WORKERS"), "1"),
    ("cacheBackend", Some("CACHE_BACKEND"), "redis"),
    ("redisAddr", Some("REDIS_ADDR"), "redis.example.invalid:6379"),
    ("aerospikeHosts", Some("AEROSPIKE_HOSTS"), "aero-0:3000"),
    ("aerospikeNamespace", Some("AEROSPIKE_NAMESPACE"), "ns2"),
    ("aerospikeSet", Some("AEROSPIKE_SET"), "set2"),
    ("cacheDialTimeout", Some("CACHE_DIAL_TIMEOUT"), "2s"),
    ("cacheOpTimeout", Some("CACHE_OP_TIMEOUT"), "3s"),
    ("cacheTtl", Some("CACHE_TTL"), "61s"),
    ("cacheTtlTx", Some("CACHE_TTL_TX"), "62s"),
    ("cacheTtlBlock", Some("CACHE_TTL_BLOCK"), "11m"),
    ("cacheTtlSubtree", Some("CACHE_TTL_SUBTREE"), "6m"),
    ("cacheTtlBeef", Some("CACHE_TTL_BEEF"), "63s"),
    ("beefEnabled", Some("BEEF_ENABLED"), "true"),
    ("beefShardBits", Some("BEEF_SHARD_BITS"), "2"),
    ("cacheTtlAnchor", Some("CACHE_TTL_ANCHOR"), "3m"),
    ("cacheMaxKeys", Some("CACHE_MAX_KEYS"), "5000"),
    ("rlIpRate", Some("RL_IP_RATE"), "101"),
    ("rlIpBurst", Some("RL_IP_BURST"), "11"),
    ("rlChainRate", Some("RL_CHAIN_RATE"), "501"),
    ("rlChainWindow", Some("RL_CHAIN_WINDOW"), "2m"),
    ("rlSequenceMax", Some("RL_SEQUENCE_MAX"), "102"),
    ("rlSequenceWindow", Some("RL_SEQUENCE_WINDOW"), "3m"),
    ("rlGroupRate", Some("RL_GROUP_RATE"), "201"),
    ("rlGroupBurst", Some("RL_GROUP_BURST"), "51"),
    ("rlThrottleResponse", Some("RL_THROTTLE_RESPONSE"), "true"),
    ("beaconEnabled", Some("BEACON_ENABLED"), "false"),
    ("beaconTier", Some("BEACON_TIER"), "2"),
    ("beaconPreference", Some("BEACON_PREFERENCE"), "129"),
    ("beaconInterval", Some("BEACON_INTERVAL"), "61s"),
    ("beaconScope", Some("BEACON_SCOPE"), "org"),
    ("beaconFlagsUnicast", Some("BEACON_FLAGS_UNICAST"), "true"),
    ("beaconFlagsMulticast", Some("BEACON_FLAGS_MULTICAST"), "false"),
    ("beaconFlagsDraining", Some("BEACON_FLAGS_DRAINING"), "true"),
    ("suppressAck", Some("SUPPRESS_ACK"), "true"),
    ("suppressMiss", Some("SUPPRESS_MISS"), "true"),
    ("subtreeDataEnabled", Some("SUBTREE_DATA_ENABLED"), "true"),
    ("drainTimeout", Some("DRAIN_TIMEOUT"), "5s"),
    ("debug", Some("DEBUG"), "true"),
    ("logFormat", Some("LOG_FORMAT"), "json"),
    ("logLevel", Some("LOG_LEVEL"), "warn"),
    ("traceSampling", Some("TRACE_SAMPLING"), "0.5"),
    ("metricsAddr", Some("METRICS_ADDR"), ":9401"),
    ("instanceId", Some("INSTANCE_ID"), "edge-9"),
    ("otlpEndpoint", Some("OTLP_ENDPOINT"), "collector:4317"),
    ("otlpInterval", Some("OTLP_INTERVAL"), "31s"),
];

#[test]
fn reference_config_keys_set_the_reference_env_vars() {
    let Some(helm) = helm("reference_config_keys_set_the_reference_env_vars") else {
        return;
    };
    // Every key is in values.yaml, under config.
    let values = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let values = yaml::documents(&values).into_iter().next().expect("values");
    for (key, _, _) in REFERENCE_KEYS {
        assert!(values.get("config").opt(key).is_some(), "values.yaml has no config.{key}");
    }

    // Set them all to other values: each lands in its env var. Through
    // --set-json, so each value has the type a values file would give it
    // (values.schema.json checks types): numbers, booleans, {a,b} lists
    // and strings.
    let mut args = Vec::new();
    for (key, _, value) in REFERENCE_KEYS {
        let json = if let Some(list) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            let items: Vec<String> = list.split(',').map(|i| format!("{i:?}")).collect();
            format!("[{}]", items.join(","))
        } else if value.parse::<f64>().is_ok() || *value == "true" || *value == "false" {
            (*value).to_owned()
        } else {
            format!("{value:?}")
        };
        args.push("--set-json".to_owned());
        args.push(format!("config.{key}={json}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = manifests(&helm, &args);
    let (_, c) = workload(&m);
    let env = env_of(c);
    let value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for (key, var, want) in REFERENCE_KEYS {
        let Some(var) = var else { continue };
        let want = want.trim_start_matches('{').trim_end_matches('}');
        assert_eq!(value(var).as_deref(), Some(want), "config.{key} → {var}");
    }
    // The two no-op keys render nothing.
    assert!(value("EGRESS_HOPLIMIT").is_none() && value("PROXY_WORKERS").is_none());
}

#[test]
fn values_ricochet_would_refuse_fail_at_template_time() {
    let Some(helm) = helm("values_ricochet_would_refuse_fail_at_template_time") else {
        return;
    };
    for (args, want) in [
        (vec!["--set", "config.cacheBackend=aerospike"], "no aerospike backend"),
        (vec!["--set", "config.cacheBackend=redis"], "needs config.redisAddr"),
        (vec!["--set", "config.cpus=0-1", "--set", "config.cpuMask=0x3"], "give one of the two"),
        (vec!["--set", "config.proxyEnabled=true"], "needs config.upstreamRetryEndpoints"),
        (
            vec![
                "--set",
                "config.proxyEnabled=true",
                "--set",
                "config.dht.enabled=true",
                "--set",
                "config.dht.upstreamDiscovery=dht",
                "--set",
                "config.dht.upstreamDomain=a",
            ],
            "needs config.dht.upstreamKeys",
        ),
        (vec!["--set", "config.dht.upstreamKeys={abc}"], "/config/dht/upstreamKeys/0"),
        (vec!["--set", "config.cluster.enabled=true"], "cluster key"),
        (vec!["--set", "kind=StatefulSet"], "/kind"),
        (vec!["--set", "config.metricsAddr=localhost"], "/config/metricsAddr"),
        (vec!["--set", "config.nackPrt=9300"], "'nackPrt' not allowed"),
        (vec!["--set", "config.shardBits=13"], "/config/shardBits"),
    ] {
        let err = template(&helm, &args).expect_err(&format!("{args:?} renders"));
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// A reader for the YAML `helm template` prints: block mappings and
/// sequences (a sequence may sit at its key's indentation), plain and
/// quoted scalars, `[]` and `{}`, `|` blocks, comments on their own line.
mod yaml {
    /// A node: every scalar is kept as its text.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Y {
        Map(Vec<(String, Y)>),
        Seq(Vec<Y>),
        Str(String),
    }

    impl Y {
        /// The node at a dotted path of mapping keys; `None` if absent.
        /// A key may itself hold dots (`cluster.key`): the longest match
        /// wins.
        pub(crate) fn opt(&self, path: &str) -> Option<&Y> {
            if path.is_empty() {
                return Some(self);
            }
            let Y::Map(entries) = self else { return None };
            let mut best: Option<&Y> = None;
            for (k, v) in entries {
                if path == k {
                    return Some(v);
                }
                if let Some(rest) = path.strip_prefix(k.as_str()).and_then(|r| r.strip_prefix('.'))
                {
                    best = best.or_else(|| v.opt(rest));
                }
            }
            best
        }

        pub(crate) fn get(&self, path: &str) -> &Y {
            self.opt(path).unwrap_or_else(|| panic!("no {path} in {self:?}"))
        }

        pub(crate) fn str(&self, path: &str) -> &str {
            match self.get(path) {
                Y::Str(s) => s,
                other => panic!("{path} is not a scalar: {other:?}"),
            }
        }

        pub(crate) fn seq(&self) -> &[Y] {
            match self {
                Y::Seq(items) => items,
                Y::Str(s) if s.is_empty() => &[],
                other => panic!("not a sequence: {other:?}"),
            }
        }

        pub(crate) fn strs(&self) -> Vec<&str> {
            self.seq()
                .iter()
                .map(|y| match y {
                    Y::Str(s) => s.as_str(),
                    other => panic!("not a scalar: {other:?}"),
                })
                .collect()
        }
    }

    /// The documents of a `---`-separated stream, empty ones left out.
    pub(crate) fn documents(text: &str) -> Vec<Y> {
        let mut docs = Vec::new();
        let mut current = Vec::new();
        for line in text.lines().chain(std::iter::once("---")) {
            if line == "---" {
                let mut lines = Lines::new(&current);
                if lines.peek().is_some() {
                    docs.push(lines.block());
                }
                current.clear();
            } else {
                current.push(line);
            }
        }
        docs
    }

    struct Lines<'a> {
        /// (indentation, text) of each line that is not blank or a comment.
        lines: Vec<(usize, &'a str)>,
        /// The next line to read.
        pos: usize,
    }

    impl<'a> Lines<'a> {
        fn new(raw: &[&'a str]) -> Lines<'a> {
            let lines = raw
                .iter()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .map(|l| (l.len() - l.trim_start().len(), l.trim_start()))
                .collect();
            Lines { lines, pos: 0 }
        }

        fn peek(&self) -> Option<(usize, &'a str)> {
            self.lines.get(self.pos).copied()
        }

        /// The block starting at the current line (a mapping or a sequence
        /// at that line's indentation).
        fn block(&mut self) -> Y {
            match self.peek() {
                Some((indent, t)) if is_item(t) => self.sequence(indent),
                Some((indent, _)) => self.mapping(indent),
                None => Y::Str(String::new()),
            }
        }

        fn sequence(&mut self, indent: usize) -> Y {
            let mut items = Vec::new();
            while let Some((i, t)) = self.peek() {
                if i != indent || !is_item(t) {
                    break;
                }
                let rest = t[1..].trim_start();
                if rest.is_empty() {
                    self.pos += 1;
                    items.push(match self.peek() {
                        Some((i, _)) if i > indent => self.block(),
                        _ => Y::Str(String::new()),
                    });
                } else if split_key(rest).is_some() {
                    // `- key: value` opens a mapping at the key's column.
                    let column = indent + (t.len() - rest.len());
                    self.lines[self.pos] = (column, rest);
                    items.push(self.mapping(column));
                } else {
                    self.pos += 1;
                    items.push(self.scalar(rest, indent));
                }
            }
            Y::Seq(items)
        }

        fn mapping(&mut self, indent: usize) -> Y {
            let mut entries = Vec::new();
            while let Some((i, t)) = self.peek() {
                if i != indent || is_item(t) {
                    break;
                }
                let (key, value) =
                    split_key(t).unwrap_or_else(|| panic!("not `key: value`: {t:?}"));
                self.pos += 1;
                let node = if value.is_empty() {
                    match self.peek() {
                        Some((i, _)) if i > indent => self.block(),
                        Some((i, t)) if i == indent && is_item(t) => self.sequence(indent),
                        _ => Y::Str(String::new()),
                    }
                } else {
                    self.scalar(value, indent)
                };
                entries.push((key, node));
            }
            Y::Map(entries)
        }

        fn scalar(&mut self, text: &str, indent: usize) -> Y {
            match text {
                "[]" => Y::Seq(Vec::new()),
                "{}" => Y::Map(Vec::new()),
                "|" | "|-" | ">" | ">-" => {
                    let mut lines = Vec::new();
                    while let Some((i, t)) = self.peek() {
                        if i <= indent {
                            break;
                        }
                        lines.push(t);
                        self.pos += 1;
                    }
                    Y::Str(lines.join("\n"))
                }
                _ => Y::Str(unquote(text)),
            }
        }
    }

    fn is_item(t: &str) -> bool {
        t == "-" || t.starts_with("- ")
    }

    /// `key: value` or `key:` (a quoted key is unquoted); `None` for a
    /// scalar.
    fn split_key(t: &str) -> Option<(String, &str)> {
        if t.starts_with('"') || t.starts_with('\'') {
            let q = t.as_bytes()[0] as char;
            let end = t[1..].find(q)? + 1;
            let rest = t[end + 1..].strip_prefix(':')?;
            return Some((t[1..end].to_owned(), rest.trim()));
        }
        let end = t.find(": ").or_else(|| t.strip_suffix(':').map(str::len))?;
        if t[..end].contains(' ') {
            return None;
        }
        Some((t[..end].to_owned(), t[end + 1..].trim()))
    }

    fn unquote(text: &str) -> String {
        if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(other) => out.push(other),
                        None => {}
                    }
                } else {
                    out.push(c);
                }
            }
            out
        } else if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
            inner.replace("''", "'")
        } else {
            text.to_owned()
        }
    }

    #[test]
    fn reads_what_helm_prints() {
        let text = "---\n# Source: x\napiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    app.kubernetes.io/name: \"r\"\n  annotations:\n    k: \"[{\\\"a\\\":1}]\"\nspec:\n  containers:\n    - name: c\n      env:\n        - name: A\n          value: \"x: y\"\n      securityContext:\n        capabilities:\n          add: []\n          drop:\n          - ALL\n      args:\n        - '--it''s'\n  data: |\n    line one\n    line two\n---\nkind: Service\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2);
        let pod = &docs[0];
        assert_eq!(pod.str("kind"), "Pod");
        assert_eq!(pod.get("metadata.labels").str("app.kubernetes.io/name"), "r");
        assert_eq!(pod.get("metadata.annotations").str("k"), "[{\"a\":1}]");
        let c = &pod.get("spec.containers").seq()[0];
        assert_eq!(c.str("name"), "c");
        assert_eq!(c.get("env").seq()[0].str("value"), "x: y");
        assert_eq!(c.get("securityContext.capabilities.drop").strs(), ["ALL"]);
        assert!(c.get("securityContext.capabilities.add").seq().is_empty());
        assert_eq!(c.get("args").strs(), ["--it's"]);
        assert_eq!(pod.str("spec.data"), "line one\nline two");
        assert_eq!(docs[1].str("kind"), "Service");
    }
}
