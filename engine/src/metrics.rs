//! Metrics, the leaf every reporting module writes through: the
//! [`Section`] trait a control-thread subsystem implements to add its
//! families to `/metrics` (and a `/debug/<name>` page), and the Prometheus
//! text exposition writer — the `# HELP`/`# TYPE` header of a family, its
//! samples, and label-value escaping, in one place. It depends on nothing
//! else in the crate, so `rt`, the drivers and `admin` can all use it
//! without depending on each other. Writing to a `String` cannot fail, so
//! results are ignored.

use std::fmt::Write as _;

/// A subsystem run by the control thread that reports on the admin
/// listener: its metric families are appended to `/metrics` and its state
/// is served as JSON at `/debug/<name>`.
pub trait Section: Send + Sync + std::fmt::Debug {
    /// The page name: `/debug/<name>`.
    fn name(&self) -> &'static str;
    /// Appends Prometheus text (with `# HELP`/`# TYPE` lines).
    fn metrics(&self, out: &mut String);
    /// The debug page.
    fn debug(&self) -> serde_json::Value;
    /// Failures of a cache backend it runs (the shared store), counted
    /// into `bre_cache_errors_total`.
    fn cache_errors(&self) -> u64 {
        0
    }
}

/// The `# HELP` and `# TYPE` lines of a family (`kind`: `counter`, `gauge`).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter family with one unlabelled sample.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// A gauge family with one unlabelled sample.
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// A family with one sample per `(labels, value)` row; `labels` is the
/// text between the braces, e.g. `reason="bad_mac"`.
pub fn labelled(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, u64)]) {
    family(out, name, kind, help);
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// A label value in exposition format: `\`, `"` and newlines escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_in_exposition_format() {
        let mut out = String::new();
        counter(&mut out, "x_total", "Xs.", 3);
        gauge(&mut out, "y", "A level.", 0.5);
        labelled(&mut out, "z_total", "counter", "Zs.", &[("k=\"a\"".into(), 1)]);
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y A level.\n# TYPE y gauge\ny 0.5\n\
             # HELP z_total Zs.\n# TYPE z_total counter\nz_total{k=\"a\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain:9300"), "plain:9300");
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
