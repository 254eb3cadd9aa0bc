//! Admin HTTP on the control thread: `/metrics` (Prometheus text),
//! `/healthz`, `/readyz` (503 while starting or draining) and `/debug/stats`
//! (JSON). Read-only endpoints need no token.
//!
//! Metrics are rendered from the snapshots workers publish every tick, so a
//! scrape never touches the packet path. Every worker counter is exported
//! with a `core` label; sum over it for the endpoint total.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::rt::{Shared, WorkerSnapshot};

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Runtime state.
    pub shared: Arc<Shared>,
    /// Process start, for uptime.
    pub started: Instant,
    /// Instance id advertised in beacons.
    pub instance: String,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/stats", get(debug_stats))
        .with_state(state)
}

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state)).await
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let snaps = snapshots(&s.shared);
    let body = render_metrics(&snaps, &s.shared, s.started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "uptime_seconds": s.started.elapsed().as_secs(),
    }))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.shared.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !s.shared.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn debug_stats(State(s): State<AdminState>) -> impl IntoResponse {
    let snaps = snapshots(&s.shared);
    let workers: Vec<_> = snaps
        .iter()
        .enumerate()
        .map(|(i, w)| {
            serde_json::json!({
                "worker": i,
                "cpu": w.cpu,
                "counters": w.counters,
                "retry": w.retry,
                "recovery": w.recovery,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "instance": s.instance,
        "backend": s.shared.backend,
        "steering": s.shared.steering.load(std::sync::atomic::Ordering::Relaxed),
        "ready": s.shared.ready(),
        "draining": s.shared.draining(),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "workers": workers,
    }))
}

fn snapshots(shared: &Shared) -> Vec<WorkerSnapshot> {
    shared.snapshots.iter().map(|m| m.lock().map(|g| g.clone()).unwrap_or_default()).collect()
}

/// Retry-service statistics that are levels, not counts.
const GAUGES: &[&str] = &["cache_entries", "cache_bytes", "cache_flows", "recovery_in_flight"];

/// Renders Prometheus text exposition for every worker's snapshot.
pub fn render_metrics(snaps: &[WorkerSnapshot], shared: &Shared, uptime: f64) -> String {
    let mut out = String::with_capacity(8192);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(&mut out, "ricochet_up", "gauge", "1 while the endpoint runs.");
    let _ = writeln!(out, "ricochet_up 1");
    family(&mut out, "ricochet_ready", "gauge", "1 when ready, 0 while starting or draining.");
    let _ = writeln!(out, "ricochet_ready {}", u8::from(shared.ready() && !shared.draining()));
    family(&mut out, "ricochet_uptime_seconds", "gauge", "Seconds since start.");
    let _ = writeln!(out, "ricochet_uptime_seconds {uptime:.3}");

    // Worker counters, one family each, labelled by core.
    let per_worker: Vec<Vec<(String, u64)>> = snaps.iter().map(flatten).collect();
    if let Some(first) = per_worker.first() {
        for (k, (name, _)) in first.iter().enumerate() {
            let gauge = GAUGES.contains(&name.as_str());
            let metric =
                if gauge { format!("ricochet_{name}") } else { format!("ricochet_{name}_total") };
            family(&mut out, &metric, if gauge { "gauge" } else { "counter" }, &help_for(name));
            for (core, fields) in per_worker.iter().enumerate() {
                if let Some((_, v)) = fields.get(k) {
                    let _ = writeln!(out, "{metric}{{core=\"{core}\"}} {v}");
                }
            }
        }
    }
    family(
        &mut out,
        "ricochet_dropped_total",
        "counter",
        "Malformed datagrams dropped, by reason.",
    );
    for (core, s) in snaps.iter().enumerate() {
        for reason in ricochet_wire::Error::REASONS {
            let v = s.counters.dropped.get(reason).copied().unwrap_or(0);
            let _ =
                writeln!(out, "ricochet_dropped_total{{reason=\"{reason}\",core=\"{core}\"}} {v}");
        }
    }
    out
}

/// Flattens a snapshot's numeric fields (worker counters, then retry stats)
/// into `(name, value)` pairs in a stable order.
fn flatten(s: &WorkerSnapshot) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    // Recovery counters are nested so their names carry a `recovery_` prefix.
    let recovery = serde_json::json!({ "recovery": s.recovery });
    for v in [serde_json::to_value(&s.counters), serde_json::to_value(s.retry), Ok(recovery)]
        .into_iter()
        .flatten()
    {
        walk("", &v, &mut out);
    }
    out
}

fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, u64)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "dropped" && prefix.is_empty() {
                    continue; // exported with a reason label instead
                }
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}_{k}") };
                walk(&name, v, out);
            }
        }
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_u64() {
                out.push((prefix.to_string(), x));
            }
        }
        _ => {}
    }
}

fn help_for(name: &str) -> String {
    format!("Per-core {}.", name.replace('_', " "))
}
