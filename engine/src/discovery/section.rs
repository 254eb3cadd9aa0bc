//! `/debug/dht` and the `ricochet_dht_*` metrics: the admin listener's view
//! of discovery (the control thread's [`super::Core`]) and of the workers' DHT
//! nodes (their [`rt::DhtSnapshot`]s, published every 100 ms).
//!
//! Node counters and gauges are summed over the workers (a peer that
//! several workers' routing tables hold counts once per table); the
//! `ricochet_dht_worker_*` families and `/debug/dht`'s `workers` array
//! show each worker's share, labelled `worker`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use super::State;
use super::machine::Source;
use crate::dht::{SizeEstimate, Stats};
use crate::hex::encode as hex;
use crate::metrics::{Section, counter, family, gauge};
use crate::rt::{self, DhtSnapshot};

/// The discovery driver's admin section (name `dht`).
#[derive(Debug, Clone)]
pub struct DhtSection {
    state: Arc<Mutex<State>>,
    shared: Arc<rt::Shared>,
}

impl DhtSection {
    pub(super) fn new(state: Arc<Mutex<State>>, shared: Arc<rt::Shared>) -> Self {
        DhtSection { state, shared }
    }

    fn workers(&self) -> Vec<DhtSnapshot> {
        super::snapshots(&self.shared)
    }
}

impl Section for DhtSection {
    fn name(&self) -> &'static str {
        "dht"
    }

    fn metrics(&self, out: &mut String) {
        let workers = self.workers();
        let steering = self.shared.dht_steering.load(Ordering::Relaxed);
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_metrics(&s, &workers, steering, out);
    }

    fn debug(&self) -> Value {
        let workers = self.workers();
        let steering = self.shared.dht_steering.load(Ordering::Relaxed);
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_debug(&s, &workers, steering, Instant::now())
    }
}

/// One family with a sample per worker.
fn per_worker(out: &mut String, name: &str, kind: &str, help: &str, values: &[u64]) {
    family(out, name, kind, help);
    for (w, v) in values.iter().enumerate() {
        let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {v}");
    }
}

/// The workers' node counters added up.
fn total_stats(workers: &[DhtSnapshot]) -> Stats {
    let mut st = Stats::default();
    for w in workers {
        st.add(&w.stats);
    }
    st
}

/// The size estimate of the worker whose routing table is largest (each
/// estimates from its own lookups and table).
fn best_estimate(workers: &[DhtSnapshot]) -> Option<SizeEstimate> {
    workers
        .iter()
        .filter(|w| w.size_estimate.is_some())
        .max_by_key(|w| w.peers.len())?
        .size_estimate
}

/// Appends every `ricochet_dht_*` family.
pub(super) fn render_metrics(s: &State, workers: &[DhtSnapshot], steering: bool, out: &mut String) {
    let core = &s.core;
    let st = total_stats(workers);
    let sum = |f: fn(&DhtSnapshot) -> u64| workers.iter().map(f).sum::<u64>();
    let node_counters: [(&str, u64, &str); 16] = [
        ("rx_datagrams", st.rx_datagrams, "DHT datagrams received."),
        ("tx_datagrams", st.tx_datagrams, "DHT datagrams queued for sending."),
        ("requests_answered", st.requests_answered, "DHT requests answered."),
        (
            "replies_trimmed",
            st.replies_trimmed,
            "DHT replies cut to three times an unpadded request's size.",
        ),
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
    let _ =
        writeln!(out, "ricochet_dht_socket_errors_total{{op=\"send\"}} {}", sum(|w| w.send_errors));
    counter(
        out,
        "ricochet_dht_forwarded_total",
        "DHT datagrams read by a worker that does not own them and handed to the owner (no \
         steering program).",
        sum(|w| w.forwarded),
    );
    gauge(
        out,
        "ricochet_dht_steering",
        "1 if the DHT socket group's steering program is attached.",
        f64::from(u8::from(steering)),
    );
    counter(
        out,
        "ricochet_dht_replies_dropped_total",
        "DHT results the workers could not hand to the control thread.",
        sum(|w| w.replies_dropped),
    );

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
    counter(
        out,
        "ricochet_dht_ops_lost_total",
        "DHT operations of discovery whose result never came from the workers.",
        c.ops_lost,
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

    let peers = sum(|w| w.peers.len() as u64);
    gauge(
        out,
        "ricochet_dht_routing_peers",
        "Routing-table entries, summed over the workers' tables.",
        peers as f64,
    );
    family(
        out,
        "ricochet_dht_routing_peers_by_health",
        "gauge",
        "Routing-table entries by health, summed over the workers' tables.",
    );
    let good = sum(|w| w.health.0 as u64);
    let unknown = sum(|w| w.health.1 as u64);
    let bad = sum(|w| w.health.2 as u64);
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"good\"}} {good}");
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"unknown\"}} {unknown}");
    let _ = writeln!(out, "ricochet_dht_routing_peers_by_health{{health=\"bad\"}} {bad}");
    gauge(
        out,
        "ricochet_dht_store_keys",
        "Distinct keys in the record store (all shards).",
        sum(|w| w.store_keys as u64) as f64,
    );
    gauge(
        out,
        "ricochet_dht_store_records",
        "Records in the record store (all shards).",
        sum(|w| w.store_records as u64) as f64,
    );
    gauge(
        out,
        "ricochet_dht_pending_requests",
        "Outstanding DHT requests.",
        sum(|w| w.pending_requests as u64) as f64,
    );
    match best_estimate(workers) {
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

    let each = |f: fn(&DhtSnapshot) -> u64| workers.iter().map(f).collect::<Vec<u64>>();
    per_worker(
        out,
        "ricochet_dht_worker_datagrams_total",
        "counter",
        "DHT datagrams read from each worker's socket.",
        &each(|w| w.datagrams),
    );
    per_worker(
        out,
        "ricochet_dht_worker_forwarded_total",
        "counter",
        "DHT datagrams each worker read but handed to their owner.",
        &each(|w| w.forwarded),
    );
    per_worker(
        out,
        "ricochet_dht_worker_requests_answered_total",
        "counter",
        "DHT requests each worker's node answered.",
        &each(|w| w.stats.requests_answered),
    );
    per_worker(
        out,
        "ricochet_dht_worker_responses_matched_total",
        "counter",
        "DHT responses each worker's node matched to its requests.",
        &each(|w| w.stats.responses_matched),
    );
    per_worker(
        out,
        "ricochet_dht_worker_unsolicited_total",
        "counter",
        "DHT responses each worker's node could not match (dropped).",
        &each(|w| w.stats.drops.unsolicited),
    );
    per_worker(
        out,
        "ricochet_dht_worker_routing_peers",
        "gauge",
        "Entries of each worker's routing table.",
        &each(|w| w.peers.len() as u64),
    );
    per_worker(
        out,
        "ricochet_dht_worker_store_keys",
        "gauge",
        "Distinct keys in each worker's store shard.",
        &each(|w| w.store_keys as u64),
    );
    per_worker(
        out,
        "ricochet_dht_worker_store_records",
        "gauge",
        "Records in each worker's store shard.",
        &each(|w| w.store_records as u64),
    );
}

/// The routing tables merged: bucket by bucket, each peer once (as the
/// first worker holding it sees it), with the workers that hold it.
fn merged_buckets(workers: &[DhtSnapshot]) -> Vec<Value> {
    /// A peer's JSON, the workers holding it, its id.
    type Held = (Value, Vec<usize>, [u8; 32]);
    let mut buckets: BTreeMap<usize, Vec<Held>> = BTreeMap::new();
    for (w, snap) in workers.iter().enumerate() {
        for p in snap.peers.iter() {
            let list = buckets.entry(p.bucket).or_default();
            if let Some(entry) = list.iter_mut().find(|(_, _, id)| *id == p.id) {
                entry.1.push(w);
                continue;
            }
            let peer = json!({
                "id": hex(&p.id),
                "addr": p.addr.to_string(),
                "health": p.health,
                "failures": p.failures,
                "in_backoff": p.in_backoff,
                "rtt_ms": p.rtt_ms,
                "last_seen_s_ago": p.last_seen_s_ago,
                "last_reply_s_ago": p.last_reply_s_ago,
            });
            list.push((peer, vec![w], p.id));
        }
    }
    buckets
        .into_iter()
        .map(|(b, peers)| {
            let peers: Vec<Value> = peers
                .into_iter()
                .map(|(mut v, ws, _)| {
                    v["workers"] = json!(ws);
                    v
                })
                .collect();
            json!({ "bucket": b, "peers": peers })
        })
        .collect()
}

/// The `/debug/dht` page.
pub(super) fn render_debug(
    s: &State,
    workers: &[DhtSnapshot],
    steering: bool,
    now: Instant,
) -> Value {
    let core = &s.core;
    let now_unix = core.now_unix(now);
    let records: Vec<Value> = workers
        .iter()
        .enumerate()
        .flat_map(|(w, snap)| snap.records.iter().map(move |r| (w, r)))
        .map(|(w, r)| {
            json!({
                "worker": w,
                "key": hex(&r.key),
                "type": r.record_type,
                "publisher": hex(&r.publisher),
                "seq": r.seq,
                "expires_in_s": r.expires_at.saturating_sub(now_unix),
                "len": r.len,
            })
        })
        .collect();
    let estimate = best_estimate(workers).map(|e| {
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
    let st = total_stats(workers);
    let mut stats = serde_json::to_value(st).unwrap_or(Value::Null);
    if let Some(m) = stats.as_object_mut() {
        // Drops by reason name, rather than the raw counter array.
        let drops: serde_json::Map<String, Value> =
            st.drops().into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
        m.insert("drops".into(), Value::Object(drops));
    }
    let per_worker: Vec<Value> = workers
        .iter()
        .enumerate()
        .map(|(w, d)| {
            json!({
                "worker": w,
                "routing_peers": d.peers.len(),
                "good": d.health.0,
                "unknown": d.health.1,
                "bad": d.health.2,
                "store_keys": d.store_keys,
                "store_records": d.store_records,
                "store_cap": d.store_cap,
                "datagrams": d.datagrams,
                "forwarded": d.forwarded,
                "forwarded_in": d.forwarded_in,
                "requests_answered": d.stats.requests_answered,
                "responses_matched": d.stats.responses_matched,
                "unsolicited": d.stats.drops.unsolicited,
                "operations": d.requests,
                "pending_requests": d.pending_requests,
                "running_queries": d.running_queries,
                "external_addr": d.external_addr.map(|a| a.to_string()),
            })
        })
        .collect();
    let sum = |f: fn(&DhtSnapshot) -> usize| workers.iter().map(f).sum::<usize>();
    json!({
        "node_id": hex(&core.node_id().0),
        "public_key": hex(core.public_key()),
        "bound": s.bound.to_string(),
        "steering": steering,
        "external_addr": workers.iter().find_map(|w| w.external_addr).map(|a| a.to_string()),
        "bootstrapped": core.bootstrapped(),
        "uptime_s": now.saturating_duration_since(s.started).as_secs(),
        "refresh_s": settings.refresh.as_secs_f64(),
        "publish": {
            "domain": settings.publish.as_ref().map(|p| p.domain.clone()),
            "topic_key": core.own_topic().map(|k| hex(&k)),
            "owner": core.own_topic().map(|k| rt::key_owner(&k, workers.len().max(1))),
            "nack": settings.publish.as_ref().map(|p| p.nack.to_string()),
            "tier": settings.publish.as_ref().map(|p| p.tier),
            "preference": settings.publish.as_ref().map(|p| p.preference),
            "last": published,
        },
        "upstream_discovery": {
            "domain": settings.upstream_domain,
            "topic_key": core.upstream_topic().map(|k| hex(&k)),
            "owner": core.upstream_topic().map(|k| rt::key_owner(&k, workers.len().max(1))),
            "last_lookup": core.last_lookup().map(|(t, n)| json!({
                "s_ago": now.saturating_duration_since(t).as_secs(),
                "usable_records": n,
            })),
        },
        "upstreams": upstreams,
        "routing": {
            "peers": sum(|w| w.peers.len()),
            "good": sum(|w| w.health.0),
            "unknown": sum(|w| w.health.1),
            "bad": sum(|w| w.health.2),
            "replacements": sum(|w| w.replacements),
            "buckets": merged_buckets(workers),
        },
        "store": {
            "keys": sum(|w| w.store_keys),
            "records": sum(|w| w.store_records),
            "listed": records,
        },
        "workers": per_worker,
        "size_estimate": estimate,
        "pending_requests": sum(|w| w.pending_requests),
        "running_queries": sum(|w| w.running_queries),
        "stats": stats,
        "discovery": core.counters(),
        "io": { "send_errors": workers.iter().map(|w| w.send_errors).sum::<u64>() },
    })
}
