//! `/debug/cluster` and the `ricochet_cluster_*` metrics: the admin
//! listener's view of the cluster driver's state.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use super::State;
use super::members::MemberRecord;
use super::warm::Outcome;
use crate::gossip::FrameCounts;
use crate::hex::encode as hex;
use crate::metrics::{Section, counter, gauge, labelled};
use crate::rt::{GossipSnapshot, Shared};

/// Most member records listed on `/debug/cluster` (counts stay whole).
const MAX_LISTED: usize = 200;

/// The cluster driver's admin section (name `cluster`).
#[derive(Debug, Clone)]
pub struct ClusterSection {
    state: Arc<Mutex<State>>,
    shared: Arc<Shared>,
}

impl ClusterSection {
    pub(super) fn new(state: Arc<Mutex<State>>, shared: Arc<Shared>) -> Self {
        ClusterSection { state, shared }
    }
}

/// Every worker's gossip member state, in worker order (default for a
/// worker that has not published yet), so a worker's index is its label.
fn shards(shared: &Shared) -> Vec<GossipSnapshot> {
    shared
        .snapshots
        .iter()
        .map(|s| s.lock().ok().and_then(|s| s.gossip.clone()).unwrap_or_default())
        .collect()
}

impl Section for ClusterSection {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn metrics(&self, out: &mut String) {
        let workers = shards(&self.shared);
        let steering = self.shared.gossip_steering.load(std::sync::atomic::Ordering::Relaxed);
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_metrics(&s, &workers, steering, out);
    }

    fn debug(&self) -> Value {
        let workers = shards(&self.shared);
        let steering = self.shared.gossip_steering.load(std::sync::atomic::Ordering::Relaxed);
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        render_debug(&s, &workers, steering, Instant::now())
    }
}

/// Appends every `ricochet_cluster_*` family. `workers` are the workers'
/// gossip members: what their rumor shards absorbed (duplicates, ACKs,
/// drops) is added to the engine's families, so those count every
/// datagram of the endpoint.
pub(super) fn render_metrics(
    s: &State,
    workers: &[GossipSnapshot],
    steering: bool,
    out: &mut String,
) {
    let core = &s.core;
    let g = core.gossip();
    let mut st = g.stats();
    let sum = |f: &dyn Fn(&GossipSnapshot) -> u64| workers.iter().map(f).sum::<u64>();
    // Datagrams the workers read that never reached the engine as such:
    // every one, less those passed on whole or admitted.
    let absorbed = sum(&|w| w.datagrams).saturating_sub(sum(&|w| w.passed + w.shard.admitted));
    st.rx_datagrams += absorbed;
    st.received.0[2] += sum(&|w| w.shard.duplicates);
    st.sent.0[4] += sum(&|w| w.shard.acks);
    st.rumor_duplicates += sum(&|w| w.shard.duplicates);
    for w in workers {
        for (i, v) in w.shard.drops.malformed.iter().enumerate() {
            st.drops.malformed[i] += v;
        }
        st.drops.rate_limited += w.shard.drops.rate_limited;
        st.drops.bad_dimension += w.shard.drops.bad_dimension;
        st.drops.wrong_mode += w.shard.drops.wrong_mode;
        st.drops.replayed += w.shard.drops.replayed;
        st.drops.out_of_window += w.shard.drops.out_of_window;
        st.drops.replay_table_full += w.shard.drops.replay_table_full;
    }
    let c = core.counters();
    let srv = core.server().stats();

    gauge(
        out,
        "ricochet_cluster_members_live",
        "Live cluster members, this endpoint included.",
        (core.live().len() + 1) as f64,
    );
    gauge(
        out,
        "ricochet_cluster_members_known",
        "Member records held (live or not yet purged).",
        core.table().len() as f64,
    );
    counter(
        out,
        "ricochet_cluster_membership_changes_total",
        "Changes of the live member set.",
        c.membership_changes,
    );
    labelled(
        out,
        "ricochet_cluster_heartbeats_total",
        "counter",
        "Heartbeats, by result (refused: the engine was overloaded; anti-entropy carries it).",
        &[
            ("result=\"published\"".into(), c.heartbeats),
            ("result=\"refused\"".into(), c.heartbeats_refused),
        ],
    );
    counter(out, "ricochet_cluster_leaves_total", "Leaving records published.", c.leaves);
    counter(
        out,
        "ricochet_cluster_holdings_updates_total",
        "Views handed to the workers because a sibling's holdings digest changed.",
        c.holdings_updates,
    );
    counter(
        out,
        "ricochet_cluster_siblings_view_retries_total",
        "Gap-ownership views offered to the workers again (an inbox was full).",
        c.siblings_retries,
    );
    counter(
        out,
        "ricochet_cluster_contact_pulls_total",
        "Membership pulls sent to seeds and PEX peers that are not live members.",
        c.contact_pulls,
    );
    {
        let p = core.pex();
        gauge(out, "ricochet_cluster_pex_peers", "Peers in the PEX book.", p.book().len() as f64);
        counter(out, "ricochet_cluster_pex_discovered_total", "Peers learnt by PEX.", p.discovered);
        counter(
            out,
            "ricochet_cluster_pex_rejected_total",
            "PEX entries refused: bad signature, from the future, over the per-exchange limit.",
            p.rejected,
        );
    }

    // Gossip engine.
    let mut frames: Vec<(String, u64)> = Vec::new();
    let mut received = st.received;
    received.0[5] += c.g6_fast_path;
    for (dir, counts) in [("in", received), ("out", st.sent)] {
        for (i, name) in FrameCounts::NAMES.iter().enumerate() {
            frames.push((format!("dir=\"{dir}\",frame=\"{name}\""), counts.get(i + 1)));
        }
    }
    labelled(
        out,
        "ricochet_cluster_gossip_datagrams_total",
        "counter",
        "Authenticated gossip datagrams received and sent, by frame type.",
        &frames,
    );
    labelled(
        out,
        "ricochet_cluster_gossip_rx_total",
        "counter",
        "Every datagram that reached the gossip socket, valid or not.",
        &[(String::new(), st.rx_datagrams + c.g6_fast_path)],
    );
    labelled(
        out,
        "ricochet_cluster_gossip_bytes_total",
        "counter",
        "Gossip bytes handed to the engine and released by it, by direction.",
        &[("dir=\"in\"".into(), st.rx_bytes), ("dir=\"out\"".into(), st.tx_bytes)],
    );
    let drops: Vec<(String, u64)> =
        st.drops().into_iter().map(|(r, v)| (format!("reason=\"{r}\""), v)).collect();
    labelled(
        out,
        "ricochet_cluster_gossip_dropped_total",
        "counter",
        "Gossip datagrams and records dropped, by reason (bad_mac, bad_version, replayed, \
         out_of_window, amplification, truncated, too_long, …).",
        &drops,
    );
    let rumors = [
        ("published", st.rumors_published),
        ("delivered", st.rumors_delivered),
        ("duplicate", st.rumor_duplicates),
        ("forwarded", st.rumor_forwards),
        ("retried", st.rumor_retries),
        ("rerouted", st.rumor_reroutes),
        ("dropped", st.rumors_dropped),
    ];
    labelled(
        out,
        "ricochet_cluster_rumors_total",
        "counter",
        "Rumors (G3), by event.",
        &rumors.map(|(e, v)| (format!("event=\"{e}\""), v)),
    );
    counter(
        out,
        "ricochet_cluster_view_mismatches_total",
        "Rumors whose hypercube dimension disagreed with our membership view.",
        st.view_mismatches,
    );
    let sync = [
        ("probe", st.probes_sent),
        ("digest_match", st.digest_matches),
        ("exchange_started", st.exchanges_started),
        ("exchange_completed", st.exchanges_completed),
        ("exchange_failed", st.exchanges_failed),
        ("exchange_answered", st.exchanges_answered),
        ("full_sync", st.full_syncs),
        ("pull", st.pulls_sent),
        ("pull_answered", st.pulls_answered),
        ("backpressure_sent", st.backpressure_sent),
        ("backpressure_received", st.backpressure_received),
    ];
    labelled(
        out,
        "ricochet_cluster_anti_entropy_total",
        "counter",
        "Anti-entropy (G2 probes, G1 exchanges, G4 pulls), by event.",
        &sync.map(|(e, v)| (format!("event=\"{e}\""), v)),
    );
    counter(
        out,
        "ricochet_cluster_records_applied_total",
        "Records from exchanges and pulls that changed a store.",
        st.records_applied,
    );
    let reconcile = [
        ("started", st.reconcile_started),
        ("rateless", st.reconcile_rateless),
        ("completed", st.reconcile_completed),
        ("timeout", st.reconcile_timeouts),
        ("flip", st.reconcile_flips),
        ("fallback", st.reconcile_fallbacks),
        ("decoded", st.reconcile_decoded),
        ("decode_failed", st.reconcile_decode_failed),
    ];
    labelled(
        out,
        "ricochet_cluster_reconcile_total",
        "counter",
        "G4 IBLT reconciliation sessions, by event (flip: a decode failure moved the peer to \
         rateless; fallback: a G1 exchange ran instead).",
        &reconcile.map(|(e, v)| (format!("event=\"{e}\""), v)),
    );
    counter(
        out,
        "ricochet_cluster_reconcile_differences_total",
        "Records found to differ by reconciliation.",
        st.reconcile_differences,
    );
    labelled(
        out,
        "ricochet_cluster_reconcile_cells_total",
        "counter",
        "IBLT cells and rateless symbols, by direction.",
        &[
            ("dir=\"out\"".into(), st.reconcile_cells_sent),
            ("dir=\"in\"".into(), st.reconcile_cells_received),
        ],
    );
    counter(
        out,
        "ricochet_cluster_reconcile_records_sent_total",
        "Records sent to peers that reconciliation found missing them.",
        st.reconcile_records_sent,
    );
    // Rumor dedup on the workers.
    let per_worker = |f: &dyn Fn(&GossipSnapshot) -> u64| -> Vec<(String, u64)> {
        workers.iter().enumerate().map(|(i, w)| (format!("worker=\"{i}\""), f(w))).collect()
    };
    let mut rows = Vec::new();
    for (event, f) in [
        ("read", &(|w: &GossipSnapshot| w.datagrams) as &dyn Fn(&GossipSnapshot) -> u64),
        ("passed", &|w| w.passed),
        ("forwarded", &|w| w.forwarded),
        ("forwarded_in", &|w| w.forwarded_in),
        ("decided", &|w| w.shard.decided),
        ("admitted", &|w| w.shard.admitted),
        ("duplicate", &|w| w.shard.duplicates),
        ("acked", &|w| w.shard.acks),
        ("inbound_full", &|w| w.inbound_full),
        ("marked", &|w| w.shard.marks),
    ] {
        for (i, w) in workers.iter().enumerate() {
            rows.push((format!("worker=\"{i}\",event=\"{event}\""), f(w)));
        }
    }
    labelled(
        out,
        "ricochet_cluster_rumor_shard_total",
        "counter",
        "Gossip datagrams on each worker's member socket and its rumor-dedup shard, by event \
         (read; passed to the control thread; forwarded to / received from the worker owning \
         the rumor id; decided, admitted to the engine, absorbed as duplicate, ACKed; dropped \
         for a full control-thread queue; own rumors marked).",
        &rows,
    );
    labelled(
        out,
        "ricochet_cluster_rumor_dedup_ids",
        "gauge",
        "Rumor ids held by each worker's dedup shard.",
        &per_worker(&|w| w.dedup_len as u64),
    );
    labelled(
        out,
        "ricochet_cluster_rumor_dedup_capacity",
        "gauge",
        "The most rumor ids each worker's dedup shard holds.",
        &per_worker(&|w| w.dedup_capacity as u64),
    );
    gauge(
        out,
        "ricochet_cluster_gossip_steering",
        "1 if the gossip socket group's steering program is attached.",
        f64::from(u8::from(steering)),
    );
    gauge(
        out,
        "ricochet_cluster_egress_queued",
        "Gossip datagrams waiting for egress budget.",
        g.queued() as f64,
    );
    counter(
        out,
        "ricochet_cluster_g6_unsolicited_total",
        "Snapshot frames matching no request or session of ours.",
        c.g6_unsolicited,
    );

    // Warm restarts: serving.
    counter(
        out,
        "ricochet_cluster_snapshots_served_total",
        "Warm-restart snapshots served to siblings (sessions opened).",
        srv.snapshots_served,
    );
    labelled(
        out,
        "ricochet_cluster_snapshot_builds_total",
        "counter",
        "Warm-restart snapshots built, by result.",
        &[
            ("result=\"ok\"".into(), srv.snapshots_built),
            ("result=\"failed\"".into(), srv.build_failures),
        ],
    );
    labelled(
        out,
        "ricochet_cluster_snapshot_requests_refused_total",
        "counter",
        "Manifest requests refused, by reason.",
        &[
            ("reason=\"not_member\"".into(), srv.refused_not_member),
            ("reason=\"busy\"".into(), srv.refused_busy),
        ],
    );
    counter(
        out,
        "ricochet_cluster_snapshot_chunks_sent_total",
        "Snapshot chunks sent to siblings.",
        srv.chunks_sent,
    );
    counter(
        out,
        "ricochet_cluster_snapshot_bytes_sent_total",
        "Bytes of snapshot chunk frames sent to siblings.",
        srv.chunk_bytes,
    );
    let (sessions, building) = core.server().sessions();
    gauge(
        out,
        "ricochet_cluster_snapshot_sessions",
        "Snapshot sessions open (and builds under way).",
        (sessions + building) as f64,
    );

    // Warm restarts: this endpoint.
    gauge(
        out,
        "ricochet_cluster_warming",
        "1 while the cache is being warmed from a sibling.",
        f64::from(u8::from(core.warming())),
    );
    let warmups: Vec<(String, u64)> = Outcome::ALL
        .iter()
        .zip(c.warmups)
        .map(|(o, v)| (format!("outcome=\"{}\"", o.name()), v))
        .collect();
    labelled(out, "ricochet_cluster_warmups_total", "counter", "Warm-ups, by outcome.", &warmups);
    counter(
        out,
        "ricochet_cluster_warm_frames_imported_total",
        "Frames imported from siblings' snapshots.",
        c.warm_frames,
    );
    counter(
        out,
        "ricochet_cluster_warm_bytes_imported_total",
        "Bytes of frames imported from siblings' snapshots.",
        c.warm_bytes,
    );
    counter(
        out,
        "ricochet_cluster_warm_frames_dropped_total",
        "Snapshot frames not imported (not keyed, or workers busy).",
        c.warm_dropped,
    );
    labelled(
        out,
        "ricochet_cluster_socket_errors_total",
        "counter",
        "Gossip socket errors, by operation.",
        &[
            ("op=\"send\"".into(), s.io.send_errors + sum(&|w| w.send_errors)),
            ("op=\"recv\"".into(), s.io.recv_errors),
        ],
    );
    labelled(
        out,
        "ricochet_cluster_handoffs_dropped_total",
        "counter",
        "Hand-offs from the control thread to a worker that found its inbox full, by kind \
         (rumor: a rumor its socket read, no steering; mark: one of our own rumors).",
        &[
            ("kind=\"rumor\"".into(), s.io.rumors_dropped),
            ("kind=\"mark\"".into(), s.io.marks_dropped),
        ],
    );
}

fn member_json(r: &MemberRecord, now_ms: u64) -> Value {
    json!({
        "id": hex(&r.id),
        "sibling_id": format!("{:016x}", r.sibling_id()),
        "gossip": r.gossip.to_string(),
        "nack": r.nack.to_string(),
        "incarnation_ms": r.incarnation_ms,
        "heartbeat_age_ms": r.age_ms(now_ms),
        "leaving": r.leaving,
    })
}

/// The `/debug/cluster` page.
pub(super) fn render_debug(
    s: &State,
    workers: &[GossipSnapshot],
    steering: bool,
    now: Instant,
) -> Value {
    let core = &s.core;
    let g = core.gossip();
    let now_ms = core.unix_ms(now);
    let me = core.me();
    let live: Vec<Value> = core.live().iter().map(|r| member_json(r, now_ms)).collect();
    let (known, records) = {
        let t = core.table();
        let recs: Vec<Value> =
            t.records().take(MAX_LISTED).map(|r| member_json(r, now_ms)).collect();
        (t.len(), recs)
    };
    let pex = {
        let p = core.pex();
        json!({
            "peers": p.book().len(),
            "discovered": p.discovered,
            "rejected": p.rejected,
            "addresses": p.book().iter().take(MAX_LISTED).map(|e| e.addr.to_string()).collect::<Vec<_>>(),
        })
    };
    let warmup = json!({
        "warming": core.warming(),
        "phase": core.fetch().map(|f| f.phase()),
        "progress": core.fetch().and_then(|f| f.progress()).map(|(done, need)| json!({
            "shards_complete": done, "shards_needed": need,
        })),
        "elapsed_ms": core.fetch().map(|f| now.saturating_duration_since(f.started()).as_millis() as u64),
        "timeout_ms": s.warmup_timeout.as_millis() as u64,
        "fetch": core.fetch().map(|f| f.stats()),
        "last": core.last_warm(),
    });
    let holdings = {
        let t = core.table();
        let held = |h: &[crate::retry::Holding]| -> Vec<Value> {
            h.iter()
                .take(MAX_LISTED)
                .map(|h| {
                    json!({
                        "hash_key": format!("{:016x}", h.hash_key),
                        "lo": h.lo, "hi": h.hi, "missing": h.missing,
                    })
                })
                .collect()
        };
        let siblings: serde_json::Map<String, Value> =
            core.live().iter().map(|r| (hex(&r.id[..8]), json!(held(t.holdings(&r.id))))).collect();
        json!({ "mine": held(core.holdings()), "siblings": siblings })
    };
    let (sessions, building) = core.server().sessions();
    json!({
        "me": member_json(me, now_ms),
        "bound": s.bound.to_string(),
        "uptime_s": now.saturating_duration_since(s.started).as_secs(),
        "seeds": core.seeds().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "members_live": core.live().len() + 1,
        "live": live,
        "members_known": known,
        "records": records,
        "gossip": {
            "view": g.members().len(),
            "cube_valid": g.cube_valid(now),
            "position": g.position(),
            "interval_ms": g.interval().as_millis() as u64,
            "queued": g.queued(),
            "pending_acks": g.pending_acks(),
            "dedup": workers.iter().map(|w| w.dedup_len).sum::<usize>(),
            "dedup_engine": g.dedup_len(),
            "steering": steering,
            "rumor_shards": workers,
            "rumors_handed_to_workers": s.io.rumors_handed,
            "fingerprint": format!("{:016x}", g.fingerprint()),
            "stats": g.stats(),
            "drops": g.stats().drops().into_iter().filter(|(_, v)| *v > 0)
                .map(|(r, v)| (r.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "pex": pex,
        "warmup": warmup,
        "holdings": holdings,
        "snapshots": {
            "sessions": sessions,
            "building": building,
            "stats": core.server().stats(),
        },
        "counters": core.counters(),
        "socket_errors": { "send": s.io.send_errors, "recv": s.io.recv_errors },
    })
}
