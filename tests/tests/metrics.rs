//! `/metrics` as the reference retry-endpoint's dashboards read it: after a
//! small lab run (frames published, NACKs that hit, miss and are rate
//! limited, a malformed datagram) every metric and label the public Grafana
//! dashboard for the reference queries is present with the value the run
//! implies, and the whole exposition parses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, nack_client, nack_for};
use ricochet_wire::control::{ResponseKind, ResponseRepr};

/// Every metric name, with the exporter label it groups by, that the
/// reference's public Grafana dashboard (lightwebinc/multicast-test,
/// vm-lab/docs/grafana/retry-endpoint.json) queries. `instance` and `job`
/// are added by the scrape, not the exporter. Its one other query,
/// `go_goroutines`, has no ricochet equivalent (see docs/OPERATIONS.md).
const DASHBOARD: &[(&str, Option<&str>)] = &[
    ("bre_frames_received_total", None),
    ("bre_frames_cached_total", None),
    ("bre_frames_dropped_total", Some("reason")),
    ("bre_cache_size", None),
    ("bre_cache_hits_total", None),
    ("bre_cache_misses_total", None),
    ("bre_nack_requests_total", None),
    ("bre_retransmits_total", None),
    ("bre_retransmit_dedup_total", None),
    ("bre_rate_limit_drops_total", Some("level")),
    ("bre_cache_errors_total", None),
    ("process_resident_memory_bytes", None),
    ("bre_responses_sent_total", Some("type")),
    ("bre_response_send_errors_total", None),
    ("bre_beacon_adverts_sent_total", None),
];

/// A label a series is picked by: `(name, value)`.
type Label<'a> = Option<(&'a str, &'a str)>;

const FRAMES: u64 = 20;
const HASH_KEY: u64 = 0x5EED_0017;

#[test]
fn the_reference_dashboard_reads_a_lab_run() {
    for backend in ["epoll", "uring"] {
        lab_run(backend);
    }
}

fn lab_run(backend: &str) {
    let e = Engine::start(&["--backend", backend, "--rl-sequence-max", "2"]);
    let p = Publisher::new(e.listen_port);
    for seq in 1..=FRAMES {
        p.send_tx(HASH_KEY, seq, b"dashboard");
    }
    p.send_raw(0, b"not a frame");
    e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "bre_frames_cached_total") >= FRAMES as f64
            && ricochet_e2e::metric_sum(b, "bre_frames_dropped_total") >= 1.0
    });

    // Hits for 1..=5, SeqNum 1 twice more (the second is over
    // --rl-sequence-max), and one frame never published.
    let client = nack_client();
    let mut nacks = 0;
    for seq in (1..=5).chain([1, 1, FRAMES + 100]) {
        client.send_to(&nack_for(HASH_KEY, seq, 0), e.nack_addr()).unwrap();
        nacks += 1;
    }
    let replies: Vec<ResponseKind> = drain(&client, Duration::from_millis(500))
        .iter()
        .filter_map(|r| ResponseRepr::parse(r).ok())
        .map(|r| r.kind)
        .collect();
    let acks = replies.iter().filter(|k| matches!(k, ResponseKind::Ack(_))).count();
    let misses = replies.iter().filter(|k| matches!(k, ResponseKind::Miss)).count();
    assert_eq!((acks, misses, replies.len()), (6, 1, 7), "{replies:?}");

    let body = e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "bre_nack_requests_total") >= nacks as f64
            && ricochet_e2e::metric_sum(b, "bre_beacon_adverts_sent_total") >= 1.0
    });
    let samples = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let value = |name: &str, label: Label<'_>| -> Option<f64> {
        let matching: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    };

    // What the run implies, exactly where the count is known.
    let f = FRAMES as f64;
    let exact: &[(&str, Label<'_>, f64)] = &[
        ("bre_frames_received_total", None, f),
        ("bre_frames_cached_total", None, f),
        ("bre_frames_dropped_total", Some(("reason", "decode_error")), 1.0),
        ("bre_cache_size", None, f),
        ("bre_cache_hits_total", None, 6.0),
        ("bre_cache_misses_total", None, 1.0),
        ("bre_nack_requests_total", None, nacks as f64),
        ("bre_retransmits_total", None, 6.0),
        ("bre_retransmit_dedup_total", None, 0.0),
        ("bre_rate_limit_drops_total", Some(("level", "sequence")), 1.0),
        ("bre_rate_limit_drops_total", Some(("level", "ip")), 0.0),
        ("bre_rate_limit_drops_total", Some(("level", "chain")), 0.0),
        ("bre_rate_limit_drops_total", Some(("level", "group")), 0.0),
        ("bre_cache_errors_total", None, 0.0),
        ("bre_responses_sent_total", Some(("type", "ack")), 6.0),
        ("bre_responses_sent_total", Some(("type", "miss")), 1.0),
        ("bre_response_send_errors_total", None, 0.0),
        ("bre_cache_stored_total", Some(("source", "127.0.0.1")), f),
        ("bre_unicast_retransmits_total", None, 0.0),
        ("bre_proxy_requests_total", None, 0.0),
    ];
    for &(name, label, want) in exact {
        assert_eq!(value(name, label), Some(want), "{backend}: {name} {label:?}\n{body}");
    }
    assert!(value("bre_beacon_adverts_sent_total", None).is_some_and(|v| v >= 1.0), "{body}");
    assert!(value("process_resident_memory_bytes", None).is_some_and(|v| v > 1e6), "{body}");

    // Every dashboard query finds its metric, its grouping label, and no
    // per-core split.
    for &(name, label) in DASHBOARD {
        let series: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        assert!(!series.is_empty(), "{name} missing\n{body}");
        for s in &series {
            assert!(!s.labels.contains_key("core"), "{name} has a core label");
            if let Some(l) = label {
                assert!(s.labels.contains_key(l), "{name} lacks label {l}: {:?}", s.labels);
            }
        }
    }
    assert!(!samples.iter().any(|s| s.name.starts_with("go_")), "go_* runtime metrics are Go's");

    // The label values the reference emits.
    let values = |name: &str, label: &str| -> BTreeSet<String> {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        values("bre_rate_limit_drops_total", "level"),
        set(&["chain", "group", "ip", "sequence"])
    );
    assert_eq!(values("bre_responses_sent_total", "type"), set(&["ack", "miss", "throttled"]));
    assert_eq!(
        values("bre_frames_dropped_total", "reason"),
        set(&["decode_error", "tee_decap_error"])
    );
    assert_eq!(values("bre_proxy_failed_total", "reason"), set(&["exhausted"]));
    for s in samples.iter().filter(|s| s.name.starts_with("bre_") && s.name != "bre_host_info") {
        assert_eq!(s.labels.get("otel_scope_name").map(String::as_str), Some("retry-endpoint"));
    }
    let host = samples.iter().find(|s| s.name == "bre_host_info").expect("bre_host_info");
    let host_labels: Vec<&str> = host.labels.keys().map(String::as_str).collect();
    assert_eq!(
        host_labels,
        [
            "cpu_logical",
            "hostname",
            "kernel_version",
            "mem_bytes",
            "nic",
            "rmem_max",
            "speed_mbps",
            "version"
        ]
    );
    let target = samples.iter().find(|s| s.name == "target_info").expect("target_info");
    assert_eq!(target.labels.get("service_name").map(String::as_str), Some("retry-endpoint"));
    assert!(target.labels.get("service_instance_id").is_some_and(|i| !i.is_empty()));
    let build = samples.iter().find(|s| s.name == "ricochet_build_info").expect("build info");
    assert_eq!(build.labels.get("version"), target.labels.get("service_version"));
}

#[test]
fn a_fresh_endpoint_exposes_well_formed_text() {
    let e = Engine::start(&[]);
    let (status, body) = e.http("/metrics").unwrap();
    assert_eq!(status, 200);
    let samples = parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for name in
        DASHBOARD.iter().map(|(n, _)| *n).chain(["target_info", "process_cpu_seconds_total"])
    {
        assert!(names.contains(name), "{name} missing\n{body}");
    }
}

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition (format 0.0.4), checking that every
/// line is a comment or `name{labels} value`, that each family has exactly
/// one HELP and one TYPE before its samples, and that a family's samples
/// are not split.
fn parse(body: &str) -> Result<Vec<Sample>, String> {
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut done = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut out = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(at("bad family name"));
            }
            match kind {
                "HELP" if help.insert(name.to_string()) => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at("unknown type"));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(at("second TYPE"));
                    }
                }
                "HELP" => return Err(at("second HELP")),
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let s = sample(line).ok_or_else(|| at("not `name{labels} value`"))?;
        if !types.contains_key(&s.name) || !help.contains(&s.name) {
            return Err(at("sample before its HELP and TYPE"));
        }
        if current.as_deref() != Some(s.name.as_str()) {
            if !done.insert(s.name.clone()) {
                return Err(at("family split in two"));
            }
            current = Some(s.name.clone());
        }
        out.push(s);
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",…} value` (no timestamp: ricochet writes none).
fn sample(line: &str) -> Option<Sample> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    if !valid_name(name) {
        return None;
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            if let Some(r) = l.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = l.find('=')?;
            let key = &l[..eq];
            if !valid_name(key) || key.contains(':') || labels.contains_key(key) {
                return None;
            }
            let mut chars = l[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let close = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return None,
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            l = &l[eq + 1 + 1 + close + 1..];
            l = l.strip_prefix(',').unwrap_or(l);
        }
    }
    let value = rest.strip_prefix(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}
