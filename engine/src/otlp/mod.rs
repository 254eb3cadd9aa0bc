//! OTLP push (`--otlp-endpoint`): what `/metrics` serves, every
//! `--otlp-interval`, and spans of a sampled fraction of NACKs
//! (`--trace-sampling`), over one plaintext OTLP/gRPC channel, as the
//! reference `retry-endpoint` pushes them.
//!
//! # Contract
//! - Metrics: one interval after start and every interval after, the
//!   control thread renders the `/metrics` body with the function the
//!   handler uses ([`crate::admin::render_all`]) and converts it
//!   ([`convert`]): whatever `/metrics` shows is pushed, counters as
//!   monotonic cumulative sums, gauges as gauges, labels as attributes;
//!   `target_info` is left out (the resource says the same). A last push
//!   goes out at shutdown ([`Running::stop`]).
//! - Resource: `service.name` (`retry-endpoint`, the role, as `target_info`
//!   says), `service.instance.id` (`--instance`), `service.version`.
//! - Traces ([`trace`]; the workers' half is [`crate::rt::nack_trace`]):
//!   with a sampling ratio above 0 each worker decides per NACK, as the SDK's `ParentBased(TraceIdRatioBased)` would, and
//!   hands a sampled NACK's record to a bounded queue (a full queue drops
//!   and counts); the control thread turns records into `nack` spans and
//!   sends them with opentelemetry-otlp's span exporter every second.
//! - Never fatal: a failed push or export is counted
//!   (`ricochet_otlp_exports_total{result}`, `ricochet_otlp_spans_total`)
//!   and logged at most once a minute; the next interval tries again.
//!   Nothing on the packet path waits on OTLP: the workers only `try_send`.

pub mod convert;
pub mod trace;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::admin::{AdminState, compat::SERVICE_NAME};
use crate::config::{Host, HostPort, RuntimeConfig};
use crate::metrics::{Section, labelled};
pub use crate::rt::nack_trace::{NackRecord, NackSampler, NackTracing, Outcome};
pub use trace::Clock;

/// Longest one push or export may take, retries included (the OTel
/// exporters' default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection attempt to the collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often queued spans are sent.
const SPAN_FLUSH: Duration = Duration::from_secs(1);
/// Most spans per export (the SDK batch span processor's default).
const SPAN_BATCH: usize = 512;
/// A failing push is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How long the last push at shutdown may take (the reference gives its
/// tracer's shutdown 3 s).
const FINAL_PUSH: Duration = Duration::from_secs(3);
/// The instrumentation scope of the spans and of every family without
/// `otel_scope_*` labels.
const SCOPE: &str = "ricochet";

/// The push, configured and not yet running.
#[derive(Debug)]
pub struct Otlp {
    endpoint: Endpoint,
    interval: Duration,
    instance: String,
    version: &'static str,
    stats: Arc<Stats>,
    traces: Option<(NackTracing, Receiver<NackRecord>)>,
}

impl Otlp {
    /// The push `rt` asks for: `None` without `--otlp-endpoint` (sampling
    /// set without one is logged and ignored, as the reference does).
    pub fn from_config(rt: &RuntimeConfig, version: &'static str) -> Result<Option<Otlp>, String> {
        let Some(hp) = &rt.otlp_endpoint else {
            if rt.trace_sampling > 0.0 {
                tracing::warn!(
                    trace_sampling = rt.trace_sampling,
                    "--trace-sampling is set but --otlp-endpoint is not: no traces are exported"
                );
            }
            return Ok(None);
        };
        let url = url(hp);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| {
                format!("--otlp-endpoint (OTLP_ENDPOINT) = {hp}: not a usable address: {e}")
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT);
        let (traces, dropped) = if rt.trace_sampling > 0.0 {
            let (tracing, rx, dropped) = NackTracing::new(rt.trace_sampling);
            (Some((tracing, rx)), dropped)
        } else {
            (None, Arc::default())
        };
        let stats = Arc::new(Stats {
            endpoint: hp.to_string(),
            interval: rt.otlp_interval,
            sampling: rt.trace_sampling,
            pushes_ok: AtomicU64::new(0),
            pushes_failed: AtomicU64::new(0),
            spans_exported: AtomicU64::new(0),
            spans_failed: AtomicU64::new(0),
            spans_dropped: dropped,
            log: Mutex::default(),
        });
        Ok(Some(Otlp {
            endpoint,
            interval: rt.otlp_interval,
            instance: rt.instance_id.clone(),
            version,
            stats,
            traces,
        }))
    }

    /// What the workers sample NACKs with (`rt::Options::nack_tracing`);
    /// `None` when tracing is off.
    pub fn nack_tracing(&self) -> Option<NackTracing> {
        self.traces.as_ref().map(|(t, _)| t.clone())
    }

    /// The admin section: `ricochet_otlp_*` on `/metrics`, `/debug/otlp`.
    pub fn section(&self) -> Arc<dyn Section> {
        self.stats.clone()
    }

    /// Starts pushing from the current (control thread) runtime; `state`
    /// renders the metrics as `/metrics` does.
    pub fn spawn(self, state: AdminState) -> Running {
        let (stop, stopped) = watch::channel(false);
        let channel = self.endpoint.connect_lazy();
        let clock = Clock::now();
        let attributes = [
            ("service.name", SERVICE_NAME.to_string()),
            ("service.instance.id", self.instance.clone()),
            ("service.version", self.version.to_string()),
        ];
        let metrics = Metrics {
            client: MetricsServiceClient::new(channel.clone()),
            resource: Resource {
                attributes: attributes
                    .iter()
                    .map(|(k, v)| convert::string_attribute(k, v.clone()))
                    .collect(),
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: SCOPE.into(),
                version: self.version.into(),
                ..Default::default()
            },
            start: unix_nanos(clock.wall(state.started)),
            state,
            stats: self.stats.clone(),
        };
        let mut tasks = vec![tokio::spawn(metrics.run(self.interval, stopped.clone()))];
        if let Some((_, rx)) = self.traces {
            let resource = opentelemetry_sdk::Resource::builder_empty()
                .with_attributes(attributes.map(|(k, v)| opentelemetry::KeyValue::new(k, v)))
                .build();
            match span_exporter(channel, &resource) {
                Ok(exporter) => {
                    let spans = Spans {
                        rx,
                        exporter,
                        clock,
                        scope: opentelemetry::InstrumentationScope::builder(SCOPE)
                            .with_version(self.version)
                            .build(),
                        stats: self.stats.clone(),
                    };
                    tasks.push(tokio::spawn(spans.run(stopped)));
                }
                Err(e) => tracing::error!(error = %e, "OTLP span exporter: no traces are exported"),
            }
        }
        tracing::info!(
            endpoint = %self.stats.endpoint,
            interval = ?self.interval,
            trace_sampling = self.stats.sampling,
            "OTLP push enabled"
        );
        Running { stop, tasks }
    }
}

/// The collector URL of `--otlp-endpoint` (plaintext; `:4317` is this
/// host, as Go's dialer reads it).
fn url(hp: &HostPort) -> String {
    match &hp.host {
        Host::Any => format!("http://localhost:{}", hp.port),
        _ => format!("http://{hp}"),
    }
}

fn span_exporter(
    channel: Channel,
    resource: &opentelemetry_sdk::Resource,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// The running push.
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Pushes the metrics and the queued spans once more, then stops;
    /// waits at most 3 s (`FINAL_PUSH`).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + FINAL_PUSH;
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
    }
}

/// Waits for the next tick; true when stopping instead (the last round).
async fn next_round(tick: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tick.tick() => false,
        _ = stop.changed() => true,
    }
}

/// The metrics push task.
struct Metrics {
    client: MetricsServiceClient<Channel>,
    resource: Resource,
    scope: InstrumentationScope,
    /// Process start, Unix nanoseconds: the start of every counter.
    start: u64,
    state: AdminState,
    stats: Arc<Stats>,
}

impl Metrics {
    async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let first = tokio::time::Instant::now() + interval;
        let mut tick = tokio::time::interval_at(first, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = next_round(&mut tick, &mut stop).await;
            self.push().await;
            if last {
                return;
            }
        }
    }

    async fn push(&mut self) {
        let body = crate::admin::render_all(&self.state);
        let times = convert::Times { start: self.start, now: unix_nanos(SystemTime::now()) };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: convert::scope_metrics(&body, times, &self.scope),
                schema_url: String::new(),
            }],
        };
        match self.client.export(request).await {
            Ok(response) => {
                self.stats.pushes_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.succeeded();
                let rejected = response
                    .into_inner()
                    .partial_success
                    .filter(|p| p.rejected_data_points > 0 || !p.error_message.is_empty());
                if let Some(p) = rejected {
                    let e =
                        format!("{} points rejected: {}", p.rejected_data_points, p.error_message);
                    self.stats.failed("metrics push partly rejected", &e);
                }
            }
            Err(status) => {
                self.stats.pushes_failed.fetch_add(1, Ordering::Relaxed);
                let e = format!("{:?}: {}", status.code(), status.message());
                self.stats.failed("metrics push failed", &e);
            }
        }
    }
}

/// The span export task.
struct Spans {
    rx: Receiver<NackRecord>,
    exporter: opentelemetry_otlp::SpanExporter,
    clock: Clock,
    scope: opentelemetry::InstrumentationScope,
    stats: Arc<Stats>,
}

impl Spans {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SPAN_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = next_round(&mut tick, &mut stop).await;
            self.flush().await;
            if last {
                return;
            }
        }
    }

    /// Exports everything queued, in batches.
    async fn flush(&self) {
        loop {
            let batch: Vec<_> = self
                .rx
                .try_iter()
                .take(SPAN_BATCH)
                .map(|r| trace::span(&r, &self.clock, &self.scope))
                .collect();
            let n = batch.len();
            if n == 0 {
                return;
            }
            match self.exporter.export(batch).await {
                Ok(()) => {
                    self.stats.spans_exported.fetch_add(n as u64, Ordering::Relaxed);
                    self.stats.succeeded();
                }
                Err(e) => {
                    self.stats.spans_failed.fetch_add(n as u64, Ordering::Relaxed);
                    self.stats.failed("span export failed", &e.to_string());
                }
            }
            if n < SPAN_BATCH {
                return;
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Push counters and the failure log, shared with the admin listener.
#[derive(Debug)]
pub struct Stats {
    endpoint: String,
    interval: Duration,
    sampling: f64,
    pushes_ok: AtomicU64,
    pushes_failed: AtomicU64,
    spans_exported: AtomicU64,
    spans_failed: AtomicU64,
    /// Shared with the workers' [`NackTracing`].
    spans_dropped: Arc<AtomicU64>,
    log: Mutex<FailureLog>,
}

/// Failures since the last warning, and when that was.
#[derive(Debug, Default)]
struct FailureLog {
    warned: Option<Instant>,
    suppressed: u64,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

impl FailureLog {
    /// Whether a failure now may be logged, and how many were not since
    /// the last one that was.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.warned.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.warned = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Stats {
    fn succeeded(&self) {
        if let Ok(mut log) = self.log.lock() {
            log.last_success = Some(SystemTime::now());
        }
    }

    /// Records a failure; logs it unless one was logged within a minute.
    fn failed(&self, what: &str, error: &str) {
        let Ok(mut log) = self.log.lock() else { return };
        log.last_error = Some(format!("{what}: {error}"));
        if let Some(suppressed) = log.allow(Instant::now()) {
            tracing::warn!(
                endpoint = %self.endpoint,
                error,
                suppressed,
                "OTLP {what}; the next interval tries again (one warning a minute at most)"
            );
        }
    }
}

impl Section for Stats {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn metrics(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        labelled(
            out,
            "ricochet_otlp_exports_total",
            "counter",
            "OTLP metric pushes to --otlp-endpoint, by result.",
            &[
                ("result=\"ok\"".into(), get(&self.pushes_ok)),
                ("result=\"error\"".into(), get(&self.pushes_failed)),
            ],
        );
        if self.sampling > 0.0 {
            labelled(
                out,
                "ricochet_otlp_spans_total",
                "counter",
                "Sampled NACK spans: exported, failed (their export failed) or dropped (the \
                 queue to the control thread was full).",
                &[
                    ("result=\"exported\"".into(), get(&self.spans_exported)),
                    ("result=\"failed\"".into(), get(&self.spans_failed)),
                    ("result=\"dropped\"".into(), get(&self.spans_dropped)),
                ],
            );
        }
    }

    fn debug(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (last_error, last_success) = match self.log.lock() {
            Ok(log) => {
                (log.last_error.clone(), log.last_success.map(|t| unix_nanos(t) as f64 / 1e9))
            }
            Err(_) => (None, None),
        };
        serde_json::json!({
            "endpoint": self.endpoint,
            "interval_seconds": self.interval.as_secs_f64(),
            "trace_sampling": self.sampling,
            "pushes": { "ok": get(&self.pushes_ok), "error": get(&self.pushes_failed) },
            "spans": {
                "exported": get(&self.spans_exported),
                "failed": get(&self.spans_failed),
                "dropped": get(&self.spans_dropped),
            },
            "last_error": last_error,
            "last_success_unix": last_success,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_logged_once_a_minute() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(log.allow(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn endpoints_are_plaintext_urls() {
        let hp = |s| crate::config::parse_host_port(s).unwrap();
        assert_eq!(url(&hp("collector:4317")), "http://collector:4317");
        assert_eq!(url(&hp("10.0.0.1:4317")), "http://10.0.0.1:4317");
        assert_eq!(url(&hp("[2001:db8::1]:4317")), "http://[2001:db8::1]:4317");
        assert_eq!(url(&hp(":4317")), "http://localhost:4317");
    }

    #[test]
    fn the_section_counts_pushes_and_spans() {
        let args = crate::config::RunArgs::try_parse_from([
            "ricochet",
            "--ipv4-lab",
            "--instance",
            "edge-1",
            "--otlp-endpoint",
            "127.0.0.1:4317",
            "--trace-sampling",
            "0.5",
        ])
        .unwrap();
        let env = crate::config::MapEnv::new().with_hostname("h");
        let rt = crate::config::load_from(&args, &env, &[0]).unwrap().runtime;
        let otlp = Otlp::from_config(&rt, "0.1.0").unwrap().unwrap();
        assert!(otlp.nack_tracing().is_some());
        otlp.stats.pushes_ok.fetch_add(2, Ordering::Relaxed);
        otlp.stats.failed("metrics push failed", "Unavailable: down");
        let mut out = String::new();
        otlp.section().metrics(&mut out);
        assert!(out.contains("ricochet_otlp_exports_total{result=\"ok\"} 2\n"), "{out}");
        assert!(out.contains("ricochet_otlp_exports_total{result=\"error\"} 0\n"), "{out}");
        assert!(out.contains("ricochet_otlp_spans_total{result=\"dropped\"} 0\n"), "{out}");
        let debug = otlp.section().debug();
        assert_eq!(debug["last_error"], "metrics push failed: Unavailable: down");

        let off = RuntimeConfig { otlp_endpoint: None, ..rt };
        assert!(Otlp::from_config(&off, "0.1.0").unwrap().is_none());
    }
}
