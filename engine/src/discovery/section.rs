//! `/debug/dht` and the `ricochet_dht_*` metrics: the admin listener's view
//! of the discovery driver's state.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use super::State;
use super::files::hex;
use super::machine::{Core, Source};
use crate::admin::Section;
use crate::dht::Health;

/// Most store records listed on `/debug/dht` (the counts are always whole).
const MAX_LISTED_RECORDS: usize = 200;

/// The discovery driver's admin section (name `dht`).
#[derive(Debug, Clone)]
pub struct DhtSection {
    state: Arc<Mutex<State>>,
}

impl DhtSection {
    pub(super) fn new(state: Arc<Mutex<State>>) -> Self {
        DhtSection { state }
    }
}

impl Section for DhtSection {
    fn name(&self) -> &'static str {
        "dht"
    }

    fn metrics(&self, out: &mut String) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_metrics(&s, Instant::now(), out);
    }

    fn debug(&self) -> Value {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_debug(&s, Instant::now())
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Appends every `ricochet_dht_*` family.
pub(super) fn render_metrics(s: &State, now: Instant, out: &mut String) {
    let core = &s.core;
    let node = core.node();
    let st = node.stats();
    let node_counters: [(&str, u64, &str); 15] = [
        ("rx_datagrams", st.rx_datagrams, "DHT datagrams received."),
        ("tx_datagrams", st.tx_datagrams, "DHT datagrams queued for sending."),
        ("requests_answered", st.requests_answered, "DHT requests answered."),
        ("responses_matched", st.responses_matched, "DHT responses matched to a request."),
        ("late_responses", st.late_responses, "Responses for lookups already finished."),
        ("timeouts", st.timeouts, "DHT requests that went unanswered."),
        ("probes_sent", st.probes_sent, "Liveness probes sent for full buckets."),
        ("evictions", st.evictions, "Routing entries evicted or removed."),
        ("queries_started", st.queries_started, "DHT lookups started (all purposes)."),
        ("queries_finished", st.queries_finished, "DHT lookups finished (all purposes)."),
        ("replications", st.replications, "Replication lookups started."),
        ("records_stored", st.records_stored, "Records newly stored or replaced."),
        ("records_refreshed", st.records_refreshed, "Identical copies of held records."),
        ("records_expired", st.records_expired, "Records purged at expiry."),
        ("verifications", st.verifications, "ed25519 verifications performed."),
    ];
    for (name, v, help) in node_counters {
        counter(out, &format!("ricochet_dht_{name}_total"), help, v);
    }
    family(
        out,
        "ricochet_dht_dropped_total",
        "counter",
        "DHT datagrams and records dropped, by reason.",
    );
    for (reason, v) in st.drops() {
        let _ = writeln!(out, "ricochet_dht_dropped_total{{reason=\"{reason}\"}} {v}");
    }
    family(out, "ricochet_dht_socket_errors_total", "counter", "DHT socket errors, by operation.");
    let _ = writeln!(out, "ricochet_dht_socket_errors_total{{op=\"send\"}} {}", s.io.send_errors);
    let _ = writeln!(out, "ricochet_dht_socket_errors_total{{op=\"recv\"}} {}", s.io.recv_errors);

    let c = core.counters();
    counter(
        out,
        "ricochet_dht_lookups_started_total",
        "Upstream-domain lookups started.",
        c.lookups_started,
    );
    family(
        out,
        "ricochet_dht_lookups_total",
        "counter",
        "Upstream-domain lookups finished, by result.",
    );
    let _ = writeln!(out, "ricochet_dht_lookups_total{{result=\"found\"}} {}", c.lookups_found);
    let _ = writeln!(out, "ricochet_dht_lookups_total{{result=\"empty\"}} {}", c.lookups_empty);
    counter(
        out,
        "ricochet_dht_lookups_skipped_total",
        "Lookups not started: too many running.",
        c.lookups_skipped,
    );
    counter(out, "ricochet_dht_publishes_total", "Puts of this endpoint's record.", c.publishes);
    counter(
        out,
        "ricochet_dht_publish_failures_total",
        "Puts of this endpoint's record refused or skipped.",
        c.publish_failures,
    );
    counter(out, "ricochet_dht_bootstraps_total", "Bootstraps started.", c.bootstraps);
    counter(
        out,
        "ricochet_dht_bootstrap_failures_total",
        "Bootstraps that reached nobody.",
        c.bootstrap_failures,
    );
    counter(
        out,
        "ricochet_dht_upstream_changes_total",
        "Times the upstream list changed.",
        c.upstream_changes,
    );
    family(
        out,
        "ricochet_dht_upstreams_dropped_total",
        "counter",
        "Discovered upstreams dropped, by reason.",
    );
    let _ = writeln!(
        out,
        "ricochet_dht_upstreams_dropped_total{{reason=\"missed\"}} {}",
        c.upstreams_missed
    );
    let _ = writeln!(
        out,
        "ricochet_dht_upstreams_dropped_total{{reason=\"expired\"}} {}",
        c.upstreams_expired
    );
    family(
        out,
        "ricochet_dht_records_unused_total",
        "counter",
        "Verified records under the upstream domain's key not used, by reason.",
    );
    for (reason, v) in c.rejected.by_reason() {
        let _ = writeln!(out, "ricochet_dht_records_unused_total{{reason=\"{reason}\"}} {v}");
    }

    let table = node.table();
    gauge(out, "ricochet_dht_routing_peers", "Routing-table entries.", table.len() as f64);
    family(
        out,
        "ricochet_dht_routing_peers_by_health",
        "gauge",
        "Routing-table entries by health.",
    );
    let (good, unknown, bad) = health_counts(core, now);
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"good\"}} {good}");
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"unknown\"}} {unknown}");
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"bad\"}} {bad}");
    gauge(
        out,
        "ricochet_dht_store_keys",
        "Distinct keys in the record store.",
        node.store().keys() as f64,
    );
    gauge(
        out,
        "ricochet_dht_store_records",
        "Records in the record store.",
        node.store().len() as f64,
    );
    gauge(
        out,
        "ricochet_dht_pending_requests",
        "Outstanding DHT requests.",
        node.pending_requests() as f64,
    );
    match node.size_estimate(now) {
        Some(e) => {
            gauge(
                out,
                "ricochet_dht_size_estimate",
                "Estimated DHT network size.",
                e.nodes.round(),
            );
            gauge(
                out,
                "ricochet_dht_size_estimate_low",
                "Lower end of the size estimate's 95 % interval.",
                e.low.round(),
            );
            gauge(
                out,
                "ricochet_dht_size_estimate_high",
                "Upper end of the size estimate's 95 % interval.",
                e.high.round(),
            );
        }
        None => gauge(
            out,
            "ricochet_dht_size_estimate",
            "Estimated DHT network size (0: too few peers).",
            0.0,
        ),
    }
    let usable = core.discovered().values().filter(|d| !d.draining).count();
    gauge(
        out,
        "ricochet_dht_upstreams_discovered",
        "Usable endpoints found under the upstream domain.",
        usable as f64,
    );
    family(
        out,
        "ricochet_dht_upstreams",
        "gauge",
        "Upstream list given to the workers, by source.",
    );
    let statics = core.upstreams().iter().filter(|u| u.source == Source::Static).count();
    let _ = writeln!(out, "ricochet_dht_upstreams{{source=\"static\"}} {statics}");
    let _ = writeln!(
        out,
        "ricochet_dht_upstreams{{source=\"dht\"}} {}",
        core.upstreams().len() - statics
    );
}

fn health_counts(core: &Core, now: Instant) -> (usize, usize, usize) {
    let table = core.node().table();
    let mut c = (0, 0, 0);
    for (_, e) in table.iter() {
        match e.health(now, table.settings()) {
            Health::Good => c.0 += 1,
            Health::Unknown => c.1 += 1,
            Health::Bad => c.2 += 1,
        }
    }
    c
}

/// The `/debug/dht` page.
pub(super) fn render_debug(s: &State, now: Instant) -> Value {
    let core = &s.core;
    let node = core.node();
    let now_unix = node.now_unix(now);
    let table = node.table();
    let mut buckets: Vec<Value> = Vec::new();
    let mut current: Option<(usize, Vec<Value>)> = None;
    for (b, e) in table.iter() {
        let peer = json!({
            "id": hex(&e.id().0),
            "addr": e.addr().to_string(),
            "health": e.health(now, table.settings()),
            "failures": e.failures(),
            "in_backoff": e.in_backoff(now),
            "rtt_ms": e.rtt().map(|r| r.as_secs_f64() * 1000.0),
            "last_seen_s_ago": now.saturating_duration_since(e.last_seen()).as_secs(),
            "last_reply_s_ago": e.last_reply().map(|t| now.saturating_duration_since(t).as_secs()),
        });
        match current.as_mut() {
            Some((cb, peers)) if *cb == b => peers.push(peer),
            _ => {
                if let Some((cb, peers)) = current.take() {
                    buckets.push(json!({ "bucket": cb, "peers": peers }));
                }
                current = Some((b, vec![peer]));
            }
        }
    }
    if let Some((cb, peers)) = current {
        buckets.push(json!({ "bucket": cb, "peers": peers }));
    }
    let (good, unknown, bad) = health_counts(core, now);
    let records: Vec<Value> = node
        .store()
        .iter(now_unix)
        .take(MAX_LISTED_RECORDS)
        .map(|r| {
            let v = r.view();
            json!({
                "key": hex(v.key()),
                "type": format!("{:?}", v.record_type()).to_lowercase(),
                "publisher": hex(&v.publisher_id()),
                "seq": v.seq(),
                "expires_in_s": v.expires_at().saturating_sub(now_unix),
                "len": r.as_bytes().len(),
            })
        })
        .collect();
    let estimate = node.size_estimate(now).map(|e| {
        json!({
            "nodes": e.nodes.round(),
            "low": e.low.round(),
            "high": e.high.round(),
            "relative_error": e.relative_error(),
            "confidence": "95 % interval [low, high]",
            "points": e.points,
            "samples": e.samples,
        })
    });
    let discovered = core.discovered();
    let upstreams: Vec<Value> = core
        .upstreams()
        .iter()
        .map(|u| match u.source {
            Source::Static => json!({ "addr": u.addr.to_string(), "source": "static" }),
            Source::Dht(id) => {
                let d = discovered.get(&id);
                json!({
                    "addr": u.addr.to_string(),
                    "source": "dht",
                    "publisher": hex(&id),
                    "tier": d.map(|d| d.tier),
                    "preference": d.map(|d| d.preference),
                    "flags": d.map(|d| d.flags),
                    "shard_bits": d.map(|d| d.shard_bits),
                    "seq": d.map(|d| d.seq),
                    "expires_in_s": d.map(|d| d.expires_at.saturating_sub(now_unix)),
                    "misses": d.map(|d| d.misses),
                })
            }
        })
        .collect();
    let published = core.published().map(|p| {
        json!({
            "seq": p.seq,
            "timestamp": p.timestamp,
            "ttl_s": p.ttl,
            "expires_in_s": (p.timestamp + u64::from(p.ttl)).saturating_sub(now_unix),
            "draining": p.draining,
            "put": p.acks.map(|(targets, a)| json!({
                "targets": targets,
                "sent": a.sent,
                "stored": a.stored,
                "stale": a.stale,
                "full": a.full,
                "rejected": a.rejected,
                "timed_out": a.timed_out,
            })),
        })
    });
    let settings = core.settings();
    let st = node.stats();
    let mut stats = serde_json::to_value(st).unwrap_or(Value::Null);
    if let Some(m) = stats.as_object_mut() {
        // Drops by reason name, rather than the raw counter array.
        let drops: serde_json::Map<String, Value> =
            st.drops().into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
        m.insert("drops".into(), Value::Object(drops));
    }
    json!({
        "node_id": hex(&node.id().0),
        "public_key": hex(core.public_key()),
        "bound": s.bound.to_string(),
        "external_addr": node.external_addr().map(|a| a.to_string()),
        "bootstrapped": core.bootstrapped(),
        "uptime_s": now.saturating_duration_since(s.started).as_secs(),
        "refresh_s": settings.refresh.as_secs_f64(),
        "publish": {
            "domain": settings.publish.as_ref().map(|p| p.domain.clone()),
            "topic_key": core.own_topic().map(|k| hex(&k)),
            "nack": settings.publish.as_ref().map(|p| p.nack.to_string()),
            "tier": settings.publish.as_ref().map(|p| p.tier),
            "preference": settings.publish.as_ref().map(|p| p.preference),
            "last": published,
        },
        "upstream_discovery": {
            "domain": settings.upstream_domain,
            "topic_key": core.upstream_topic().map(|k| hex(&k)),
            "last_lookup": core.last_lookup().map(|(t, n)| json!({
                "s_ago": now.saturating_duration_since(t).as_secs(),
                "usable_records": n,
            })),
        },
        "upstreams": upstreams,
        "routing": {
            "peers": table.len(),
            "good": good,
            "unknown": unknown,
            "bad": bad,
            "replacements": table.replacements_len(),
            "buckets": buckets,
        },
        "store": {
            "keys": node.store().keys(),
            "records": node.store().len(),
            "listed": records,
        },
        "size_estimate": estimate,
        "pending_requests": node.pending_requests(),
        "running_queries": node.running_queries(),
        "stats": stats,
        "discovery": core.counters(),
        "io": { "send_errors": s.io.send_errors, "recv_errors": s.io.recv_errors },
    })
}
