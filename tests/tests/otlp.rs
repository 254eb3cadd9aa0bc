//! OTLP push against a real OTLP/gRPC collector in the test process (the
//! generated MetricsService and TraceService servers of
//! opentelemetry-proto): the metrics `/metrics` serves arrive with the
//! resource the reference pushes, one span per sampled NACK arrives with
//! its outcome, and a collector that is down is counted, not fatal.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, metric, number_data_point,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use ricochet_e2e::{Engine, Publisher, drain, nack_client, nack_for};
use ricochet_wire::control::{ResponseKind, ResponseRepr};

const HASH_KEY: u64 = 0x0717_0017;
const INSTANCE: &str = "otlp-e2e";

/// What the collector received, request by request.
#[derive(Debug, Default)]
struct Received {
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
}

#[derive(Debug, Clone)]
struct Service(Arc<Received>);

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP/gRPC collector on 127.0.0.1, serving until dropped.
struct Collector {
    received: Arc<Received>,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let incoming = runtime
            .block_on(async {
                tonic::transport::server::TcpIncoming::bind(SocketAddr::from((
                    Ipv4Addr::LOCALHOST,
                    0,
                )))
            })
            .unwrap();
        let addr = incoming.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let service = Service(received.clone());
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(service.clone()))
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming(incoming),
        );
        Collector { received, addr, _runtime: runtime }
    }

    /// Polls until `found` finds something in what arrived, for up to 20 s.
    fn wait<T>(&self, what: &str, found: impl Fn(&Received) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = found(&self.received) {
                return t;
            }
            assert!(Instant::now() < deadline, "{what}: not received in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn string_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    let kv = attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Every metric of a request with its scope name.
fn metrics(r: &ExportMetricsServiceRequest) -> impl Iterator<Item = (&str, &Metric)> {
    r.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| {
        let scope = sm.scope.as_ref().map_or("", |s| s.name.as_str());
        sm.metrics.iter().map(move |m| (scope, m))
    })
}

/// The sum of a counter's points in a request, if it is there.
fn counter_sum(r: &ExportMetricsServiceRequest, name: &str) -> Option<i64> {
    let (_, m) = metrics(r).find(|(_, m)| m.name == name)?;
    let Some(metric::Data::Sum(s)) = &m.data else { return None };
    Some(
        s.data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(i)) => i,
                Some(number_data_point::Value::AsDouble(d)) => d as i64,
                None => 0,
            })
            .sum(),
    )
}

/// Sends one NACK and returns the response kinds it drew.
fn ask(e: &Engine, seq: u64) -> Vec<ResponseKind> {
    let client = nack_client();
    client.send_to(&nack_for(HASH_KEY, seq, 0), e.nack_addr()).unwrap();
    drain(&client, Duration::from_millis(400))
        .iter()
        .filter_map(|d| ResponseRepr::parse(d).ok())
        .map(|r| r.kind)
        .collect()
}

#[test]
fn metrics_and_nack_spans_reach_the_collector() {
    let collector = Collector::start();
    let endpoint = collector.addr.to_string();
    let e = Engine::start(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-interval",
        "1s",
        "--trace-sampling",
        "1",
        "--instance",
        INSTANCE,
        // The second NACK for a SeqNum is over the sequence tier: THROTTLED.
        "--rl-sequence-max",
        "1",
        "--rl-throttle-response",
    ]);
    let p = Publisher::new(e.listen_port);
    for seq in 1..=3 {
        p.send_tx(HASH_KEY, seq, b"otlp");
    }
    e.wait_metrics(Duration::from_secs(10), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 3.0
    });

    assert!(matches!(ask(&e, 1)[..], [ResponseKind::Ack(_)]));
    assert!(matches!(ask(&e, 2)[..], [ResponseKind::Ack(_)]));
    assert!(matches!(ask(&e, 1)[..], [ResponseKind::Throttled { .. }]));
    assert!(matches!(ask(&e, 99)[..], [ResponseKind::Miss]));

    // Metrics: a push made after the four NACKs counts each exactly once,
    // under the resource and scopes the reference pushes.
    let pushed = collector.wait("a push counting 4 NACKs", |r| {
        r.metrics
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| counter_sum(m, "bre_nack_requests_total") == Some(4))
            .cloned()
    });
    assert_eq!(counter_sum(&pushed, "ricochet_nacks_total"), Some(4));
    assert_eq!(counter_sum(&pushed, "bre_cache_hits_total"), Some(2));
    assert_eq!(counter_sum(&pushed, "bre_cache_misses_total"), Some(1));
    let resource = pushed.resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        string_value(&resource.attributes, "service.instance.id").as_deref(),
        Some(INSTANCE)
    );
    assert_eq!(
        string_value(&resource.attributes, "service.name").as_deref(),
        Some("retry-endpoint")
    );
    assert!(string_value(&resource.attributes, "service.version").is_some());
    let (scope, nacks) =
        metrics(&pushed).find(|(_, m)| m.name == "bre_nack_requests_total").unwrap();
    assert_eq!(scope, "retry-endpoint", "bre_* keep the reference's meter as their scope");
    let Some(metric::Data::Sum(sum)) = &nacks.data else { panic!("{nacks:?}") };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    assert!(sum.data_points[0].attributes.is_empty(), "scope labels are not attributes");
    assert!(sum.data_points[0].start_time_unix_nano < sum.data_points[0].time_unix_nano);
    let (scope, up) = metrics(&pushed).find(|(_, m)| m.name == "ricochet_up").unwrap();
    assert_eq!(scope, "ricochet");
    assert!(matches!(up.data, Some(metric::Data::Gauge(_))));
    assert!(metrics(&pushed).all(|(_, m)| m.name != "target_info"), "the resource says it");
    // Everything /metrics serves (target_info aside) is pushed.
    let (_, body) = e.http("/metrics").unwrap();
    let served: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| *n != "target_info")
        .collect();
    let pushed_names: std::collections::BTreeSet<&str> =
        metrics(&pushed).map(|(_, m)| m.name.as_str()).collect();
    let missing: Vec<_> = served.difference(&pushed_names).collect();
    assert!(missing.is_empty(), "served but not pushed: {missing:?}");
    assert!(
        ricochet_e2e::metric_value(&body, "ricochet_otlp_exports_total{result=\"ok\"}")
            .is_some_and(|v| v >= 1.0)
    );

    // Traces: one span per NACK, with its outcome.
    let spans: Vec<(Span, String)> = collector.wait("4 NACK spans", |r| {
        let traces = r.traces.lock().unwrap();
        let spans: Vec<_> = traces
            .iter()
            .flat_map(|t| &t.resource_spans)
            .flat_map(|rs| {
                let instance = rs
                    .resource
                    .as_ref()
                    .and_then(|res| string_value(&res.attributes, "service.instance.id"))
                    .unwrap_or_default();
                rs.scope_spans.iter().flat_map(move |ss| {
                    let instance = instance.clone();
                    ss.spans.iter().map(move |s| (s.clone(), instance.clone()))
                })
            })
            .collect();
        (spans.len() >= 4).then_some(spans)
    });
    assert_eq!(spans.len(), 4, "{spans:?}");
    let mut outcomes = BTreeMap::new();
    for (span, instance) in &spans {
        assert_eq!(span.name, "nack");
        assert_eq!(instance, INSTANCE);
        assert_eq!(span.trace_id.len(), 16);
        assert!(span.start_time_unix_nano > 0);
        assert!(span.start_time_unix_nano <= span.end_time_unix_nano);
        let attr = |k| string_value(&span.attributes, k).unwrap_or_default();
        assert_eq!(attr("hash_key"), format!("{HASH_KEY:#018x}"));
        assert_eq!(attr("start_seq"), attr("end_seq"));
        assert!(!attr("worker").is_empty());
        let key = (attr("start_seq").parse::<u64>().unwrap(), attr("outcome"));
        *outcomes.entry(key).or_insert(0) += 1;
        let multicast = attr("retransmit.multicast");
        assert_eq!(multicast == "true", attr("outcome") == "ack", "{span:?}");
        assert_eq!(attr("retransmit.unicast"), "false");
    }
    let want: BTreeMap<(u64, String), i32> = [
        ((1, "ack".to_string()), 1),
        ((1, "throttled".to_string()), 1),
        ((2, "ack".to_string()), 1),
        ((99, "miss".to_string()), 1),
    ]
    .into();
    assert_eq!(outcomes, want);
    let (_, body) = e.http("/metrics").unwrap();
    assert_eq!(
        ricochet_e2e::metric_value(&body, "ricochet_otlp_spans_total{result=\"exported\"}"),
        Some(4.0)
    );
}

#[test]
fn a_collector_that_is_down_is_counted_not_fatal() {
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut e = Engine::start(&["--otlp-endpoint", &endpoint, "--otlp-interval", "1s"]);
    let body = e.wait_metrics(Duration::from_secs(20), |b| {
        ricochet_e2e::metric_value(b, "ricochet_otlp_exports_total{result=\"error\"}")
            .is_some_and(|v| v >= 2.0)
    });
    assert!(
        ricochet_e2e::metric_value(&body, "ricochet_otlp_exports_total{result=\"error\"}")
            .is_some_and(|v| v >= 2.0),
        "{body}"
    );
    // Still serving.
    assert_eq!(e.http("/readyz").unwrap().0, 200);
    assert_eq!(ask(&e, 5), vec![ResponseKind::Miss]);
    // Two failures, one warning: at most one a minute.
    let logs = e.kill_and_logs();
    let warnings = logs.lines().filter(|l| l.contains("OTLP metrics push failed")).count();
    assert_eq!(warnings, 1, "{logs}");
}
