//! Admin HTTP on the control thread: `/metrics` (Prometheus text),
//! `/healthz`, `/readyz` (503 while starting, warming or draining) and
//! `GET /loglevel` need no token; `POST /admin/invalidate`, `/events`
//! (server-sent events), changing `/loglevel` and — unless
//! `--debug-public` — `/debug/*` require `Authorization: Bearer <token>`
//! with the token from `--admin-token-file`, and are refused (403) when no
//! token is configured. The listener's own bounds are in [`server`].
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
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;

use crate::metrics::{Section, family, gauge};
use crate::rt::{Control, Shared, WorkerSnapshot};

pub(crate) mod client;
pub mod compat;
pub mod kernel;
pub mod process;
pub mod server;
pub mod subscribe;

/// Default most `/events` subscribers at once (`--max-downstreams`); more
/// get 503.
pub const MAX_EVENT_SUBSCRIBERS: usize = 64;
/// A `/events` stream idle this long gets a comment, so a subscriber can
/// tell a quiet upstream from a dead one (it gives up after three).
pub const EVENTS_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// Events buffered per subscriber; one that falls further behind is
/// disconnected (it reconnects and resynchronises) rather than slowing
/// the others.
const EVENT_BUFFER: usize = 1024;

/// What the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Runtime state.
    pub shared: Arc<Shared>,
    /// Process start, for uptime.
    pub started: Instant,
    /// Instance id advertised in beacons.
    pub instance: String,
    /// Hands workers control work (invalidation).
    pub control: Control,
    /// Bearer token for the state-changing endpoints; `None` disables them.
    pub token: Option<Arc<str>>,
    /// `/debug/*` without the token (`--debug-public`).
    pub debug_public: bool,
    /// Fan-out of events to `/events` subscribers.
    pub events: tokio::sync::broadcast::Sender<Event>,
    /// Subscribers connected now.
    pub subscribers: Arc<std::sync::atomic::AtomicUsize>,
    /// Most subscribers at once (`--max-downstreams`).
    pub max_subscribers: usize,
    /// Subsystems beyond the workers (Redis, DHT, gossip), each adding
    /// metrics and a `/debug/<name>` page.
    pub sections: Vec<Arc<dyn Section>>,
    /// Static host facts for `bre_host_info`, read once at startup.
    pub host: Arc<compat::HostInfo>,
    /// `--bind-source`, for `bre_own_source_info`.
    pub own_source: Option<std::net::Ipv6Addr>,
    /// The running log level, for `/loglevel`; `None` answers 404.
    pub log_level: Option<Arc<dyn LogLevel>>,
}

/// The process's log level, read and changed at run time (`/loglevel`,
/// and SIGHUP in the binary).
pub trait LogLevel: Send + Sync + std::fmt::Debug {
    /// The level in force, as the reference prints it (`DEBUG`, `INFO`, …).
    fn current(&self) -> String;
    /// Sets the level (`debug`, `info`, `warn`/`warning`, `error`,
    /// `trace`); returns the level now in force, or why not.
    fn set(&self, level: &str) -> Result<String, String>;
}

impl AdminState {
    /// State with an event channel of its own.
    pub fn new(
        shared: Arc<Shared>,
        instance: String,
        control: Control,
        token: Option<Arc<str>>,
    ) -> Self {
        AdminState {
            shared,
            started: Instant::now(),
            instance,
            control,
            token,
            debug_public: false,
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            subscribers: Arc::default(),
            max_subscribers: MAX_EVENT_SUBSCRIBERS,
            sections: Vec::new(),
            host: Arc::new(compat::HostInfo::gather(env!("CARGO_PKG_VERSION"))),
            own_source: None,
            log_level: None,
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/stats", get(debug_stats))
        .route("/debug/{section}", get(debug_section))
        .route("/admin/invalidate", axum::routing::post(invalidate))
        .route("/loglevel", get(loglevel_get).post(loglevel_set).put(loglevel_set))
        .route("/events", get(events))
        .with_state(state)
}

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state)).await
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_all(&s))
}

/// The whole `/metrics` body; the OTLP push ([`crate::otlp`]) sends the same.
pub fn render_all(s: &AdminState) -> String {
    let snaps = snapshots(&s.shared);
    let mut body = render_metrics(&snaps, &s.shared, s.started.elapsed().as_secs_f64());
    gauge(
        &mut body,
        "ricochet_events_subscribers",
        "/events subscribers connected now.",
        s.subscribers.load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    for section in &s.sections {
        section.metrics(&mut body);
    }
    let input = compat::Input {
        snaps: &snaps,
        beacons_sent: s.shared.beacons_sent.load(std::sync::atomic::Ordering::Relaxed),
        store_errors: s.sections.iter().map(|x| x.cache_errors()).sum(),
        instance: &s.instance,
        version: env!("CARGO_PKG_VERSION"),
        host: &s.host,
        own_source: s.own_source,
    };
    compat::render(&input, &mut body);
    process::render(&mut body);
    kernel::render(&s.shared.sockets, |p| std::fs::read_to_string(p).ok(), &mut body);
    body
}

/// `/healthz`: 200 `{"status":"ok","uptime_seconds":12.3}` while the process
/// runs, byte for byte the reference's shape.
async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let body =
        format!(r#"{{"status":"ok","uptime_seconds":{:.1}}}"#, s.started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// `/readyz`: the reference's `{"status":…,"workers_ready":N,"workers_total":M}`,
/// 200 when `ready`, else 503 with `starting` or `draining` — or `warming`,
/// ricochet's own state while it fills its cache from siblings.
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let (code, body) = readiness(&s.shared);
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// The `/readyz` status and JSON body.
fn readiness(shared: &Shared) -> (StatusCode, String) {
    let (code, status) = if shared.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if shared.warming() {
        (StatusCode::SERVICE_UNAVAILABLE, "warming")
    } else if !shared.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = format!(
        r#"{{"status":"{status}","workers_ready":{},"workers_total":{}}}"#,
        shared.workers_ready(),
        shared.workers_total()
    );
    (code, body)
}

/// `/debug/*` shows cache, limiter, peer and upstream state: it takes the
/// admin token unless `--debug-public` opens it.
fn debug_gate(
    s: &AdminState,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    if s.debug_public {
        return Ok(());
    }
    authorize(s, headers).map_err(|(status, why)| {
        let msg = match status {
            StatusCode::FORBIDDEN => {
                "/debug/* needs the admin token, and none is configured: \
                 start ricochet with --admin-token-file, or --debug-public to serve it to anyone\n"
            }
            _ => why,
        };
        (status, msg)
    })
}

async fn debug_section(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> axum::response::Response {
    if let Err(r) = debug_gate(&s, &headers) {
        return r.into_response();
    }
    match s.sections.iter().find(|x| x.name() == name) {
        Some(section) => axum::Json(section.debug()).into_response(),
        None => {
            let known: Vec<_> = s.sections.iter().map(|x| x.name()).collect();
            let msg = format!("no /debug/{name} here; this endpoint has /debug/stats {known:?}\n");
            (StatusCode::NOT_FOUND, msg).into_response()
        }
    }
}

async fn debug_stats(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    if let Err(r) = debug_gate(&s, &headers) {
        return r.into_response();
    }
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
    let mut stats = serde_json::json!({
        "instance": s.instance,
        "backend": s.shared.backend,
        "steering": s.shared.steering.load(std::sync::atomic::Ordering::Relaxed),
        "ready": s.shared.ready(),
        "draining": s.shared.draining(),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "workers": workers,
    });
    // Under SSM, the live (S,G) set and the source lists (also /debug/ssm).
    if let Some(ssm) = s.sections.iter().find(|x| x.name() == "ssm") {
        stats["ssm"] = ssm.debug();
    }
    axum::Json(stats).into_response()
}

/// Checks the bearer token in constant time.
fn authorize(
    s: &AdminState,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    let Some(token) = &s.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "state-changing admin endpoints are off: start ricochet with --admin-token-file\n",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a.iter().zip(b).fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    if diff == 0 {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "bad or missing bearer token\n"))
    }
}

/// `GET /loglevel`: the level in force, as text (the reference's route).
async fn loglevel_get(State(s): State<AdminState>) -> axum::response::Response {
    match &s.log_level {
        Some(l) => format!("{}\n", l.current()).into_response(),
        None => (StatusCode::NOT_FOUND, "no run-time log level here\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

/// `POST`/`PUT /loglevel?level=debug`: changes the level. Unlike the
/// reference, which lets anyone who reaches the port do it, this is a
/// state change and takes the admin bearer token: debug logging on a busy
/// endpoint is a way to fill its disk.
async fn loglevel_set(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LevelQuery>,
) -> axum::response::Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let Some(control) = &s.log_level else {
        return (StatusCode::NOT_FOUND, "no run-time log level here\n").into_response();
    };
    let Some(level) = q.level.filter(|l| !l.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "missing level query parameter\n").into_response();
    };
    match control.set(&level) {
        Ok(now) => {
            tracing::info!(level = %now, "log level changed");
            format!("{now}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct InvalidateQuery {
    hash_key: String,
}

/// `POST /admin/invalidate?hash_key=0x…`: drops every cached frame of the
/// flow on its owning core and tells `/events` subscribers.
async fn invalidate(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<InvalidateQuery>,
) -> axum::response::Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let raw = q.hash_key.trim();
    let parsed = match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    let hash_key = match parsed {
        Ok(k) if k != 0 => k,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "hash_key must be a non-zero u64, decimal or 0x-prefixed hex\n",
            )
                .into_response();
        }
    };
    let Some(worker) = s.control.invalidate(hash_key) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the owning core is busy; retry\n")
            .into_response();
    };
    let event = serde_json::json!({
        "hash_key": format!("{hash_key:#018x}"),
        "instance": s.instance,
        "reason": "admin",
    });
    let _ = s.events.send(invalidate_event(&event));
    (
        StatusCode::ACCEPTED,
        axum::Json(
            serde_json::json!({ "hash_key": format!("{hash_key:#018x}"), "worker": worker }),
        ),
    )
        .into_response()
}

/// Forwards worker events (epoch resets) to `/events` subscribers, every
/// 100 ms, until the process exits.
pub async fn forward_events(s: AdminState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        for e in s.shared.drain_events() {
            let crate::rt::ControlEvent::EpochReset { hash_key } = e;
            let event = serde_json::json!({
                "hash_key": format!("{hash_key:#018x}"),
                "instance": s.instance,
                "reason": "epoch_reset",
            });
            let _ = s.events.send(invalidate_event(&event));
        }
    }
}

/// The `/events` event for an invalidation: `event: invalidate` and the
/// JSON object on one `data:` line (docs/OPERATIONS.md, "Invalidation push
/// between domains").
pub fn invalidate_event(data: &serde_json::Value) -> Event {
    Event::default().event("invalidate").data(data.to_string())
}

/// Decrements the subscriber count when a `/events` stream ends.
struct Subscription(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /events`: a server-sent event stream of invalidations, opened by a
/// comment naming this instance, with an empty comment after every
/// [`EVENTS_KEEP_ALIVE`] without an event.
async fn events(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use std::sync::atomic::Ordering;
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    if s.subscribers.fetch_add(1, Ordering::Relaxed) >= s.max_subscribers {
        s.subscribers.fetch_sub(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many /events subscribers\n").into_response();
    }
    let guard = Subscription(s.subscribers.clone());
    // A comment is one line: the instance id is not trusted to be.
    let hello = Event::default()
        .comment(format!("ricochet {} events", s.instance.replace(['\r', '\n'], " ")));
    let rx = s.events.subscribe();
    let stream = futures_util::stream::unfold(
        (Some(hello), rx, guard),
        |(first, mut rx, guard)| async move {
            if let Some(h) = first {
                return Some((Ok::<_, std::convert::Infallible>(h), (None, rx, guard)));
            }
            // A lagging subscriber is cut off: it reconnects and catches up.
            let event = rx.recv().await.ok()?;
            Some((Ok(event), (None, rx, guard)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE)).into_response()
}

fn snapshots(shared: &Shared) -> Vec<WorkerSnapshot> {
    shared.snapshots.iter().map(|m| m.lock().map(|g| g.clone()).unwrap_or_default()).collect()
}

/// Retry-service statistics that are levels, not counts.
const GAUGES: &[&str] = &[
    "cache_entries",
    "cache_bytes",
    "cache_flows",
    "cache_charged_bytes",
    "cache_max_bytes",
    "recovery_in_flight",
    "store_pending",
    "uring_batch_wait_microseconds",
];

/// Renders Prometheus text exposition for every worker's snapshot.
pub fn render_metrics(snaps: &[WorkerSnapshot], shared: &Shared, uptime: f64) -> String {
    let mut out = String::with_capacity(8192);
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
        "Datagrams dropped, by reason: malformed (the wire reasons), or not multicast to a \
         configured group (not_multicast, data port only).",
    );
    for (core, s) in snaps.iter().enumerate() {
        for reason in ricochet_wire::Error::REASONS.into_iter().chain(crate::rt::DROP_REASONS) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_has_the_reference_shape() {
        let shared = Shared::for_test(3);
        let (code, body) = readiness(&shared);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, r#"{"status":"ready","workers_ready":3,"workers_total":3}"#);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["workers_total"], 3);

        shared.set_warming(true);
        let (code, body) = readiness(&shared);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with(r#"{"status":"warming","#), "{body}");
        shared.set_warming(false);

        shared.start_drain();
        let (code, body) = readiness(&shared);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"status":"draining","workers_ready":3,"workers_total":3}"#);
    }

    #[test]
    fn readyz_says_starting_until_every_worker_runs() {
        let shared = Shared::for_test(2);
        shared.fail();
        let (code, body) = readiness(&shared);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with(r#"{"status":"starting","#), "{body}");
    }
}
