//! The shipped Grafana dashboard (`deploy/grafana/ricochet.json`) and
//! Prometheus alert rules (`deploy/prometheus/ricochet-alerts.yml`) query
//! what ricochet really exports: every metric name in every PromQL
//! expression is in a real `/metrics` scrape of an endpoint that ran
//! traffic (frames published, NACKs that hit and miss) with the cluster, the
//! DHT and upstream recovery on, so their families exist; every label a
//! matcher or a `by (…)` names is on that metric, and every label value a
//! matcher names is one the endpoint writes. `promtool` checks the rules'
//! syntax and behaviour (scripts/test.sh); this checks their vocabulary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, nack_client, nack_for, ports};

/// metric name → label name → label values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

const FRAMES: u64 = 10;
const HASH_KEY: u64 = 0xDA5B_0A4D;
/// Divisible by any worker count up to 8, so the per-core budgets sum to it.
const CACHE_MAX_BYTES: u64 = 840 * 64 * 1024;

/// Labels the scrape adds to every series, not the exporter.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

#[test]
fn every_dashboard_and_alert_query_reads_a_real_scrape() {
    let scrape = scrape_after_traffic();
    let mut errors = Vec::new();

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/ricochet.json")).expect("dashboard JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 30, "only {} dashboard queries found", exprs.len());
    for (panel, expr) in &exprs {
        errors
            .extend(check(expr, &scrape).into_iter().map(|e| format!("dashboard {panel:?}: {e}")));
        // Every metric a panel reads follows the instance picker.
        for r in references(expr).refs {
            if !r.matchers.iter().any(|m| m.label == "instance" && m.value == "$instance") {
                errors.push(format!(
                    "dashboard {panel:?}: {} lacks instance=~\"$instance\"",
                    r.metric
                ));
            }
        }
    }
    errors.extend(check_dashboard_shape(&dashboard, &scrape));

    let rules = read("deploy/prometheus/ricochet-alerts.yml");
    let alerts = alert_rules(&rules);
    let ops = read("docs/OPERATIONS.md");
    let tests = read("deploy/prometheus/ricochet-alerts.test.yml");
    let cases = promtool_cases(&tests);
    for a in &alerts {
        errors
            .extend(check(&a.expr, &scrape).into_iter().map(|e| format!("alert {}: {e}", a.name)));
        for key in ["summary", "description", "runbook"] {
            if !a.annotations.contains_key(key) {
                errors.push(format!("alert {}: no {key} annotation", a.name));
            }
        }
        if let Some(runbook) = a.annotations.get("runbook") {
            match runbook.split('"').nth(1) {
                Some(section) if has_heading(&ops, section) => {}
                _ => errors.push(format!(
                    "alert {}: runbook {runbook} names no section of docs/OPERATIONS.md",
                    a.name
                )),
            }
        }
        let (fires, quiet) = cases.get(&a.name).copied().unwrap_or_default();
        if !fires || !quiet {
            errors.push(format!(
                "alert {}: ricochet-alerts.test.yml lacks a case where it {}",
                a.name,
                if fires { "stays quiet" } else { "fires" }
            ));
        }
    }
    let names: Vec<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for want in [
        "RicochetDown",
        "RicochetAbsent",
        "RicochetNotReady",
        "RicochetMalformedDrops",
        "RicochetKernelDrops",
        "RicochetRateLimitStorm",
        "RicochetRecoveryFailures",
        "RicochetCacheAtBudget",
        "RicochetClusterPartition",
    ] {
        if !names.contains(&want) {
            errors.push(format!("no alert {want}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Starts an endpoint with every optional family on (cluster, DHT,
/// upstream recovery), publishes frames, sends NACKs that hit and miss, and
/// returns its `/metrics`.
fn scrape_after_traffic() -> Scrape {
    let extra = ports();
    let key_file = std::env::temp_dir().join(format!(
        "ricochet-dashboards-{}-{}.key",
        std::process::id(),
        extra.listen
    ));
    std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let gossip = extra.gossip.to_string();
    let dht = extra.dht.to_string();
    // Nothing listens there: recoveries are queued and fail.
    let upstream = format!("127.0.0.1:{}", extra.nack);
    let budget = CACHE_MAX_BYTES.to_string();
    let e = Engine::start(&[
        "--cluster-key-file",
        key_file.to_str().unwrap(),
        "--gossip-port",
        &gossip,
        "--dht-enabled",
        "--dht-port",
        &dht,
        "--domain",
        "dashboards",
        "--proxy-enabled",
        "--upstream-retry-endpoints",
        &upstream,
        "--cache-max-bytes",
        &budget,
    ]);
    let _ = std::fs::remove_file(&key_file);

    let p = Publisher::new(e.listen_port);
    for seq in 1..=FRAMES {
        p.send_tx(HASH_KEY, seq, b"dashboards");
    }
    p.send_raw(0, b"not a frame");
    e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= FRAMES as f64
    });
    let client = nack_client();
    for seq in [1, 2, 3, FRAMES + 50] {
        client.send_to(&nack_for(HASH_KEY, seq, 0), e.nack_addr()).unwrap();
    }
    let replies = drain(&client, Duration::from_millis(300));
    assert!(replies.len() >= 4, "{} answers to 4 NACKs", replies.len());
    let body = e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_cache_hits_total") >= 3.0
            && ricochet_e2e::metric_sum(b, "ricochet_cache_misses_total") >= 1.0
    });

    // The budget gauges: per core, summing to --cache-max-bytes; the charge
    // covers at least the frame bytes held.
    let sum = |name: &str| ricochet_e2e::metric_sum(&body, name);
    assert_eq!(sum("ricochet_cache_max_bytes"), CACHE_MAX_BYTES as f64, "{body}");
    assert!(sum("ricochet_cache_bytes") > 0.0, "{body}");
    assert!(sum("ricochet_cache_charged_bytes") > sum("ricochet_cache_bytes"), "{body}");
    parse_scrape(&body)
}

// ─────────────────────────── the checks ───────────────────────────

/// Everything wrong with `expr` against `scrape`, one line each.
fn check(expr: &str, scrape: &Scrape) -> Vec<String> {
    let parsed = references(expr);
    let mut errors = Vec::new();
    for r in &parsed.refs {
        // `up` is written by the scrape itself, with the target labels only.
        let empty = BTreeMap::new();
        let labels = match scrape.get(&r.metric) {
            Some(l) => l,
            None if r.metric == "up" => &empty,
            None => {
                errors.push(format!("{} is not in /metrics", r.metric));
                continue;
            }
        };
        for m in &r.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(&m.label) else {
                errors.push(format!("{} has no label {}", r.metric, m.label));
                continue;
            };
            // A value the endpoint never writes makes the matcher a typo.
            let named: Vec<&str> = if m.op.ends_with('~') {
                let plain = m.value.chars().all(|c| c.is_ascii_alphanumeric() || "_|".contains(c));
                if plain { m.value.split('|').collect() } else { Vec::new() }
            } else {
                vec![m.value.as_str()]
            };
            for v in named {
                if !v.is_empty() && !v.contains('$') && !values.contains(v) {
                    errors.push(format!("{}{{{}}} never has the value {v:?}", r.metric, m.label));
                }
            }
        }
    }
    for label in &parsed.grouping {
        let known = TARGET_LABELS.contains(&label.as_str())
            || parsed
                .refs
                .iter()
                .any(|r| scrape.get(&r.metric).is_some_and(|l| l.contains_key(label)));
        if !known {
            errors.push(format!("by/without ({label}): no metric of the expression has it"));
        }
    }
    if parsed.refs.is_empty() {
        errors.push(format!("no metric found in {expr:?}"));
    }
    errors
}

/// The dashboard's shape: a `datasource` variable every query uses, an
/// `instance` variable read from a real metric, a unit on every panel.
fn check_dashboard_shape(d: &serde_json::Value, scrape: &Scrape) -> Vec<String> {
    let mut errors = Vec::new();
    let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => errors.push("no Prometheus `datasource` variable".into()),
    }
    match var("instance") {
        Some(v) => {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
            // label_values(metric, label)
            let args = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')'));
            match args.and_then(|a| a.split_once(',')) {
                Some((metric, label)) if scrape.contains_key(metric.trim()) => {
                    if !TARGET_LABELS.contains(&label.trim()) {
                        errors.push(format!("instance variable reads label {label}"));
                    }
                }
                _ => errors.push(format!("instance variable query {q:?} reads no exported metric")),
            }
        }
        None => errors.push("no `instance` variable".into()),
    }
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("?");
        if !ids.insert(p["id"].as_u64()) {
            errors.push(format!("panel {title:?}: duplicate id"));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            errors.push(format!("panel {title:?}: not on ${{datasource}}"));
        }
        if p["fieldConfig"]["defaults"]["unit"].as_str().is_none_or(str::is_empty) {
            errors.push(format!("panel {title:?}: no unit"));
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["uid"] != "${datasource}" {
                errors.push(format!("panel {title:?}: a query not on ${{datasource}}"));
            }
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        errors.push(format!("schemaVersion {} is older than Grafana 9", d["schemaVersion"]));
    }
    errors
}

// ─────────────────────────── PromQL ───────────────────────────

/// A metric selector in an expression.
#[derive(Debug, PartialEq)]
struct Ref {
    metric: String,
    matchers: Vec<Matcher>,
}

/// `label op "value"` inside a selector's braces.
#[derive(Debug, PartialEq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// What an expression reads: its selectors and its `by`/`without`/`on`/
/// `ignoring` labels.
#[derive(Debug, Default)]
struct Parsed {
    refs: Vec<Ref>,
    grouping: Vec<String>,
}

/// Words that are neither metrics nor functions.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Aggregations: a `by (…)` may stand between one and its `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Keywords followed by a parenthesised list of labels.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Lexes enough PromQL to find selectors: a bare identifier not followed
/// by `(` is a metric name (functions and aggregations are followed by
/// one), strings, durations (`[5m]`) and numbers are skipped.
fn references(expr: &str) -> Parsed {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Parsed::default();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' {
            i = skip_string(&c, i);
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len()
                && (c[i].is_ascii_alphanumeric()
                    || c[i] == '.'
                    || ("+-".contains(c[i]) && matches!(c[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let j = next_non_space(i);
            if GROUPING.contains(&word.as_str()) {
                if c.get(j) == Some(&'(') {
                    let end = (j..c.len()).find(|&k| c[k] == ')').unwrap_or(c.len());
                    let list: String = c[j + 1..end].iter().collect();
                    out.grouping.extend(
                        list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from),
                    );
                    i = end + 1;
                }
            } else if c.get(j) == Some(&'(')
                || KEYWORDS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                // a function, an aggregation or an operator
            } else {
                let mut r = Ref { metric: word, matchers: Vec::new() };
                if c.get(j) == Some(&'{') {
                    i = matchers(&c, j + 1, &mut r.matchers);
                }
                out.refs.push(r);
            }
        } else if ch == '$' {
            // A Grafana variable outside a string: `$__rate_interval`.
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Parses `label op "value", …}` from `i`; returns the index after `}`.
fn matchers(c: &[char], mut i: usize, out: &mut Vec<Matcher>) -> usize {
    loop {
        while i < c.len() && (c[i].is_whitespace() || c[i] == ',') {
            i += 1;
        }
        if i >= c.len() || c[i] == '}' {
            return i + 1;
        }
        let start = i;
        while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
            i += 1;
        }
        let label: String = c[start..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < c.len() && "=!~".contains(c[i]) {
            i += 1;
        }
        let op: String = c[op_start..i].iter().collect();
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        let end = skip_string(c, i);
        let value: String = c[(i + 1).min(end)..end.saturating_sub(1).max(i + 1)].iter().collect();
        out.push(Matcher { label, op, value });
        i = end;
    }
}

/// The index after the string literal starting at `i`.
fn skip_string(c: &[char], i: usize) -> usize {
    let quote = c[i];
    let mut j = i + 1;
    while j < c.len() && c[j] != quote {
        j += if c[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

// ─────────────────────────── sources ───────────────────────────

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` in the dashboard, with its panel's title.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        let nested = p["panels"].as_array().cloned().unwrap_or_default();
        for p in std::iter::once(p).chain(nested.iter()) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("?").to_string(), e.to_string()));
                }
            }
        }
    }
    out
}

/// One alerting rule as the line reader below sees it.
#[derive(Debug, Default)]
struct Alert {
    name: String,
    expr: String,
    annotations: BTreeMap<String, String>,
}

/// Reads the rules file line by line (the tests have no YAML parser):
/// `- alert:` starts a rule, `expr:` is inline or a `|` block of deeper
/// lines, and the keys under `annotations:` are collected.
fn alert_rules(yaml: &str) -> Vec<Alert> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out: Vec<Alert> = Vec::new();
    let mut in_annotations = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if let Some(ind) = in_annotations {
            if indent(line) > ind && !t.is_empty() {
                if let (Some(a), Some((k, v))) = (out.last_mut(), t.split_once(':')) {
                    let v = v.trim().trim_matches('\'');
                    a.annotations.insert(k.trim().to_string(), v.to_string());
                }
                i += 1;
                continue;
            }
            in_annotations = None;
        }
        if let Some(name) = t.strip_prefix("- alert:") {
            out.push(Alert { name: name.trim().to_string(), ..Alert::default() });
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            let expr = if matches!(e, "|" | "|-" | ">" | ">-") {
                let mut block = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > indent(line))
                {
                    i += 1;
                    block.push(lines[i].trim());
                }
                block.join("\n")
            } else {
                e.to_string()
            };
            if let Some(a) = out.last_mut() {
                a.expr = expr;
            }
        } else if t == "annotations:" {
            in_annotations = Some(indent(line));
        }
        i += 1;
    }
    out
}

/// alert name → (a promtool case expects it to fire, one expects silence).
fn promtool_cases(yaml: &str) -> BTreeMap<String, (bool, bool)> {
    let mut out: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current = None;
    for t in yaml.lines().map(str::trim) {
        if let Some(name) = t.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let (Some(rest), Some(name)) = (t.strip_prefix("exp_alerts:"), current.take()) {
            let e = out.entry(name).or_default();
            if rest.trim() == "[]" { e.1 = true } else { e.0 = true }
        }
    }
    out
}

fn has_heading(doc: &str, section: &str) -> bool {
    doc.lines().any(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == section)
}

/// metric → label → values, from Prometheus text exposition.
fn parse_scrape(body: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let entry = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let c: Vec<char> = line[name_end + 1..].chars().collect();
            let mut m = Vec::new();
            matchers(&c, 0, &mut m);
            for Matcher { label, value, .. } in m {
                entry.entry(label).or_default().insert(value);
            }
        }
    }
    out
}

// ─────────────────── the checks catch mistakes ───────────────────

fn fake_scrape() -> Scrape {
    parse_scrape(
        "ricochet_nacks_total{core=\"0\"} 1\n\
         ricochet_dropped_total{reason=\"bad_magic\",core=\"0\"} 0\n\
         ricochet_dropped_total{reason=\"not_multicast\",core=\"0\"} 0\n\
         ricochet_ready 1\n",
    )
}

#[test]
fn the_checks_catch_misspelt_metrics_labels_and_values() {
    let s = fake_scrape();
    let ok = [
        "sum by (instance, core) (rate(ricochet_nacks_total{instance=~\"$instance\"}[$__rate_interval]))",
        "sum(rate(ricochet_dropped_total{job=\"ricochet\",reason!=\"not_multicast\"}[5m])) > 1e-9",
        "ricochet_ready == 0 and on (instance) up{job=\"x\"} == 1",
        "sum(rate(ricochet_dropped_total{reason=~\"bad_magic|not_multicast\"}[5m]))",
    ];
    for e in ok {
        assert_eq!(check(e, &s), Vec::<String>::new(), "{e}");
    }
    let bad = [
        ("rate(ricochet_nacks_totl[5m])", "ricochet_nacks_totl is not in /metrics"),
        ("sum(rate(ricochet_nacks_total{cpu=\"0\"}[5m]))", "has no label cpu"),
        ("rate(ricochet_dropped_total{reason=\"not_multicst\"}[5m])", "never has the value"),
        ("rate(ricochet_dropped_total{reason=~\"bad_magic|bad_magik\"}[5m])", "\"bad_magik\""),
        ("sum by (reasons) (rate(ricochet_dropped_total[5m]))", "by/without (reasons)"),
        ("richochet_ready == 0", "richochet_ready is not in /metrics"),
    ];
    for (e, want) in bad {
        let errors = check(e, &s);
        assert!(errors.iter().any(|x| x.contains(want)), "{e}: {errors:?}");
    }
}

#[test]
fn the_rule_reader_sees_block_expressions_and_annotations() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          sum(x)\n            > 1\n        for: 1m\n        annotations:\n          summary: \"s\"\n          runbook: 'docs/OPERATIONS.md, \"Threat model\"'\n      - alert: B\n        expr: up == 0\n";
    let rules = alert_rules(yaml);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].expr, "sum(x)\n> 1");
    assert_eq!(rules[0].annotations["runbook"], "docs/OPERATIONS.md, \"Threat model\"");
    assert_eq!(rules[1].expr, "up == 0");
    let refs = references(&rules[0].expr).refs;
    assert_eq!(refs, vec![Ref { metric: "x".into(), matchers: vec![] }]);
}
