//! Writing Prometheus text exposition: the `# HELP`/`# TYPE` header of a
//! family and its samples, shared by every [`super::Section`] and the
//! workers' families. Writing to a `String` cannot fail, so results are
//! ignored.

use std::fmt::Write as _;

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
}
