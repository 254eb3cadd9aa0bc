//! Prometheus text exposition → OTLP metrics, so the push carries exactly
//! what `/metrics` serves.
//!
//! # Mapping
//! - `counter` → a monotonic cumulative `Sum` whose start is the process
//!   start; `gauge` and `untyped` → a `Gauge`. Histogram and summary
//!   families (ricochet writes none) are left out.
//! - The family name is kept as the metric name (`bre_cache_hits_total`, as
//!   the reference's OTel meter names it), `# HELP` becomes the
//!   description; labels become attributes, in the order written.
//! - `otel_scope_name`/`otel_scope_version`/`otel_scope_schema_url` are the
//!   labels the OTel Prometheus exporter adds for the instrumentation scope:
//!   they become the scope again (the `bre_*` families land under scope
//!   `retry-endpoint`, as the reference pushes them). Samples without them
//!   are under the default scope (`ricochet`).
//! - `target_info` is left out: the resource carries the same attributes.
//! - A family whose values are all integers gets integer points (as the
//!   reference's Int64 instruments push), otherwise doubles.
//! - Lines that do not parse are skipped, never an error: the exposition is
//!   our own and its tests check it parses.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ScopeMetrics, Sum, metric,
    number_data_point,
};

/// Families not pushed: the resource says what they say.
const SKIPPED: &[&str] = &["target_info"];

/// Scope labels the OTel Prometheus exporter adds.
const SCOPE_NAME: &str = "otel_scope_name";
const SCOPE_VERSION: &str = "otel_scope_version";
const SCOPE_SCHEMA: &str = "otel_scope_schema_url";

/// Times of the points, Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// Start of every cumulative sum: the process start.
    pub start: u64,
    /// When the exposition was rendered.
    pub now: u64,
}

/// Converts an exposition into OTLP scope metrics: `default_scope` for
/// samples without scope labels, one more per scope named in them, in order
/// of first appearance.
pub fn scope_metrics(
    text: &str,
    times: Times,
    default_scope: &InstrumentationScope,
) -> Vec<ScopeMetrics> {
    let mut help: HashMap<&str, String> = HashMap::new();
    let mut kind: HashMap<&str, Kind> = HashMap::new();
    let mut builder = Builder::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), text) => {
                    help.insert(name, unescape_help(text.unwrap_or("")));
                }
                (Some("TYPE"), Some(name), Some(k)) => {
                    kind.insert(name, Kind::parse(k.trim()));
                }
                _ => {}
            }
            continue;
        }
        let Some(sample) = Sample::parse(line) else { continue };
        let k = match kind.get(sample.name) {
            Some(k) => *k,
            // `_bucket`/`_sum`/`_count` of a histogram or summary.
            None if histogram_part(sample.name, &kind) => Kind::Skipped,
            None => Kind::Gauge,
        };
        if k == Kind::Skipped || SKIPPED.contains(&sample.name) {
            continue;
        }
        builder.add(sample, k);
    }
    builder.finish(&help, times, default_scope)
}

/// A family's type, as far as OTLP cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Skipped,
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "counter" => Kind::Counter,
            "gauge" | "untyped" => Kind::Gauge,
            _ => Kind::Skipped,
        }
    }
}

fn histogram_part(name: &str, kind: &HashMap<&str, Kind>) -> bool {
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| kind.get(base) == Some(&Kind::Skipped))
    })
}

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Int(i64),
    Double(f64),
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let (name, mut rest) = line.split_at(end);
        if name.is_empty() {
            return None;
        }
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                rest = rest.trim_start_matches([' ', ',']);
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = rest.split_once('=')?;
                let (value, after) = quoted(after.trim_start())?;
                labels.push((key.trim(), value));
                rest = after;
            }
        }
        let token = rest.split_whitespace().next()?;
        let value = match token.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Double(token.parse().ok()?),
        };
        Some(Sample { name, labels, value })
    }
}

/// A `"…"` label value with its escapes (`\\`, `\"`, `\n`) undone, and the
/// text after it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// `# HELP` text with its escapes (`\\`, `\n`) undone.
fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push('\\');
                chars.next();
            }
            (c, _) => out.push(c),
        }
    }
    out
}

/// Scope identity: (name, version, schema URL); `None` is the default.
type ScopeKey = Option<(String, String, String)>;

/// Families collected per scope, in order of first appearance.
#[derive(Debug, Default)]
struct Builder<'a> {
    scopes: Vec<(ScopeKey, Vec<Family<'a>>)>,
}

#[derive(Debug)]
struct Family<'a> {
    name: &'a str,
    kind: Kind,
    points: Vec<(Vec<KeyValue>, Value)>,
}

impl<'a> Builder<'a> {
    fn add(&mut self, sample: Sample<'a>, kind: Kind) {
        let mut scope: [Option<String>; 3] = [None, None, None];
        let mut attributes = Vec::with_capacity(sample.labels.len());
        for (key, value) in sample.labels {
            match key {
                SCOPE_NAME => scope[0] = Some(value),
                SCOPE_VERSION => scope[1] = Some(value),
                SCOPE_SCHEMA => scope[2] = Some(value),
                _ => attributes.push(string_attribute(key, value)),
            }
        }
        let [name, version, schema] = scope;
        let key: ScopeKey =
            name.map(|n| (n, version.unwrap_or_default(), schema.unwrap_or_default()));
        let families = match self.scopes.iter().position(|(k, _)| *k == key) {
            Some(i) => &mut self.scopes[i].1,
            None => {
                self.scopes.push((key, Vec::new()));
                &mut self.scopes.last_mut().expect("just pushed").1
            }
        };
        let family = match families.iter().position(|f| f.name == sample.name) {
            Some(i) => &mut families[i],
            None => {
                families.push(Family { name: sample.name, kind, points: Vec::new() });
                families.last_mut().expect("just pushed")
            }
        };
        family.points.push((attributes, sample.value));
    }

    fn finish(
        self,
        help: &HashMap<&str, String>,
        times: Times,
        default_scope: &InstrumentationScope,
    ) -> Vec<ScopeMetrics> {
        self.scopes
            .into_iter()
            .map(|(key, families)| {
                let (scope, schema_url) = match key {
                    None => (default_scope.clone(), String::new()),
                    Some((name, version, schema)) => {
                        (InstrumentationScope { name, version, ..Default::default() }, schema)
                    }
                };
                let metrics = families.into_iter().map(|f| f.metric(help, times)).collect();
                ScopeMetrics { scope: Some(scope), metrics, schema_url }
            })
            .collect()
    }
}

impl Family<'_> {
    fn metric(self, help: &HashMap<&str, String>, times: Times) -> Metric {
        let ints = self.points.iter().all(|(_, v)| matches!(v, Value::Int(_)));
        let counter = self.kind == Kind::Counter;
        let data_points = self
            .points
            .into_iter()
            .map(|(attributes, v)| NumberDataPoint {
                attributes,
                start_time_unix_nano: if counter { times.start } else { 0 },
                time_unix_nano: times.now,
                value: Some(match (v, ints) {
                    (Value::Int(i), true) => number_data_point::Value::AsInt(i),
                    (Value::Int(i), false) => number_data_point::Value::AsDouble(i as f64),
                    (Value::Double(d), _) => number_data_point::Value::AsDouble(d),
                }),
                ..Default::default()
            })
            .collect();
        let data = if counter {
            metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })
        } else {
            metric::Data::Gauge(Gauge { data_points })
        };
        Metric {
            name: self.name.to_string(),
            description: help.get(self.name).cloned().unwrap_or_default(),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// A string attribute.
pub fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: Times = Times { start: 1_000, now: 5_000 };

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "ricochet".into(),
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    fn convert(text: &str) -> Vec<ScopeMetrics> {
        scope_metrics(text, TIMES, &scope())
    }

    fn attrs(p: &NumberDataPoint) -> Vec<(String, String)> {
        p.attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    #[test]
    fn counters_become_monotonic_cumulative_sums() {
        let out = convert(
            "# HELP ricochet_cache_hits_total Per-core cache hits.\n\
             # TYPE ricochet_cache_hits_total counter\n\
             ricochet_cache_hits_total{core=\"0\"} 3\n\
             ricochet_cache_hits_total{core=\"1\"} 4\n",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].scope, Some(scope()));
        let m = &out[0].metrics[0];
        assert_eq!(
            (m.name.as_str(), m.description.as_str()),
            ("ricochet_cache_hits_total", "Per-core cache hits.")
        );
        let Some(metric::Data::Sum(s)) = &m.data else { panic!("{m:?}") };
        assert!(s.is_monotonic);
        assert_eq!(s.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(s.data_points.len(), 2);
        let p = &s.data_points[1];
        assert_eq!(attrs(p), vec![("core".to_string(), "1".to_string())]);
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(4)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1_000, 5_000));
    }

    #[test]
    fn gauges_stay_gauges_and_fractions_are_doubles() {
        let out = convert(
            "# HELP ricochet_uptime_seconds Seconds since start.\n\
             # TYPE ricochet_uptime_seconds gauge\n\
             ricochet_uptime_seconds 12.5\n\
             # TYPE mixed gauge\nmixed{a=\"x\"} 1\nmixed{a=\"y\"} 0.5\n\
             untyped_thing 7\n",
        );
        let ms = &out[0].metrics;
        assert_eq!(ms.len(), 3);
        let Some(metric::Data::Gauge(g)) = &ms[0].data else { panic!() };
        assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(12.5)));
        assert_eq!(g.data_points[0].start_time_unix_nano, 0);
        let Some(metric::Data::Gauge(g)) = &ms[1].data else { panic!() };
        let values: Vec<_> = g.data_points.iter().map(|p| p.value).collect();
        assert_eq!(
            values,
            vec![
                Some(number_data_point::Value::AsDouble(1.0)),
                Some(number_data_point::Value::AsDouble(0.5))
            ]
        );
        assert_eq!(ms[2].name, "untyped_thing");
        assert!(matches!(ms[2].data, Some(metric::Data::Gauge(_))));
    }

    #[test]
    fn scope_labels_become_the_scope_and_target_info_is_left_out() {
        let out = convert(
            "# HELP bre_nack_requests_total NACK requests received\n\
             # TYPE bre_nack_requests_total counter\n\
             bre_nack_requests_total{otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\"} 9\n\
             # TYPE bre_rate_limit_drops_total counter\n\
             bre_rate_limit_drops_total{level=\"ip\",otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\"} 2\n\
             # HELP target_info The OTel resource.\n# TYPE target_info gauge\n\
             target_info{service_instance_id=\"edge-1\",service_name=\"retry-endpoint\"} 1\n\
             # TYPE ricochet_up gauge\nricochet_up 1\n",
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let bre = &out[0];
        assert_eq!(bre.scope.as_ref().map(|s| s.name.as_str()), Some("retry-endpoint"));
        assert_eq!(bre.scope.as_ref().map(|s| s.version.as_str()), Some(""));
        let names: Vec<_> = bre.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["bre_nack_requests_total", "bre_rate_limit_drops_total"]);
        let Some(metric::Data::Sum(s)) = &bre.metrics[1].data else { panic!() };
        assert_eq!(attrs(&s.data_points[0]), vec![("level".to_string(), "ip".to_string())]);
        let Some(metric::Data::Sum(s)) = &bre.metrics[0].data else { panic!() };
        assert!(s.data_points[0].attributes.is_empty());
        assert_eq!(out[1].scope, Some(scope()));
        let names: Vec<_> = out[1].metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ricochet_up"]);
    }

    #[test]
    fn escapes_are_undone() {
        let out = convert(
            "# HELP x_total A \\\\ and a\\nline.\n# TYPE x_total counter\n\
             x_total{path=\"a\\\"b\\\\c\\nd\",empty=\"\",} 1 1700000000000\n",
        );
        let m = &out[0].metrics[0];
        assert_eq!(m.description, "A \\ and a\nline.");
        let Some(metric::Data::Sum(s)) = &m.data else { panic!() };
        assert_eq!(
            attrs(&s.data_points[0]),
            vec![("path".into(), "a\"b\\c\nd".into()), ("empty".into(), String::new())]
        );
    }

    #[test]
    fn histograms_and_garbage_are_skipped() {
        let out = convert(
            "# TYPE lat histogram\nlat_bucket{le=\"1\"} 3\nlat_sum 2.5\nlat_count 3\n\
             # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n\
             not a sample\nbroken{a=\"x} 1\n# TYPE ok_total counter\nok_total 1\n",
        );
        let names: Vec<_> = out[0].metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ok_total"]);
    }

    #[test]
    fn special_values_parse() {
        let out = convert("# TYPE g gauge\ng{a=\"1\"} NaN\ng{a=\"2\"} +Inf\ng{a=\"3\"} -Inf\n");
        let Some(metric::Data::Gauge(g)) = &out[0].metrics[0].data else { panic!() };
        let v: Vec<f64> = g
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(v[0].is_nan());
        assert_eq!((v[1], v[2]), (f64::INFINITY, f64::NEG_INFINITY));
    }

    /// Every sample of a real worker exposition arrives, with its value.
    #[test]
    fn the_worker_exposition_converts_whole() {
        let shared = crate::rt::Shared::for_test(2);
        let snaps = vec![crate::rt::WorkerSnapshot::default(); 2];
        let text = crate::admin::render_metrics(&snaps, &shared, 1.5);
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let out = convert(&text);
        let points: usize = out
            .iter()
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(points, samples.len());
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(out[0].metrics.len(), types);
    }
}
