//! SVG charts for perf/REPORT.md, drawn with plotters' SVG backend (no
//! fonts or images needed: text stays text in the SVG).
//!
//! Every chart has one unit per axis, named on the axis; a system has the
//! same colour in every chart ([`colour`]).

use std::path::Path;

use plotters::prelude::*;

use crate::latency::CurvePoint;

/// The colour of `system`, the same in every chart.
pub fn colour(system: &str) -> RGBColor {
    match system {
        "reflect" => RGBColor(0x55, 0x55, 0x55),
        "reflect-gso" => RGBColor(0x99, 0x99, 0x99),
        "echo" => RGBColor(0xbc, 0xbd, 0x22),
        "sink" => RGBColor(0x8c, 0x56, 0x4b),
        "epoll" => RGBColor(0x1f, 0x77, 0xb4),
        "uring" => RGBColor(0xff, 0x7f, 0x0e),
        "cache" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// A bar: system, median, min, max.
pub type Bar = (String, f64, f64, f64);

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Grouped bars: one group per workload, one bar per system (the median,
/// with a whisker from min to max), values in `unit`, the y axis's label.
/// `groups` = (group label, bars).
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[(String, Vec<Bar>)],
) -> Result<(), String> {
    let systems: Vec<String> = {
        let mut s: Vec<String> = vec![];
        for (_, g) in groups {
            for (name, ..) in g {
                if !s.contains(name) {
                    s.push(name.clone());
                }
            }
        }
        s
    };
    let ymax = groups
        .iter()
        .flat_map(|(_, g)| g.iter().map(|x| x.1.max(x.3)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = groups.len().max(1);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .map_err(err)?;
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    let width = 0.8 / systems.len().max(1) as f64;
    for (si, sys) in systems.iter().enumerate() {
        let color = colour(sys);
        let bars: Vec<(f64, f64, f64, f64)> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (_, g))| {
                let b = g.iter().find(|x| &x.0 == sys)?;
                Some((gi as f64 + 0.1 + si as f64 * width, b.1, b.2, b.3))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x0, v, ..)| {
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
            }))
            .map_err(err)?
            .label(sys.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        // min–max whiskers
        chart
            .draw_series(bars.iter().filter(|b| b.3 > b.2).map(|&(x0, _, lo, hi)| {
                let xm = x0 + width * 0.46;
                PathElement::new(vec![(xm, lo), (xm, hi)], BLACK.stroke_width(1))
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Latency percentile curves: x = percentile on the usual "nines" scale
/// (log of 1/(1−p)), y = `y_unit` on a log scale ("µs" or "ms"; points
/// are in µs). `curves` = (system, points).
pub fn percentiles(
    path: &Path,
    title: &str,
    y_unit: &str,
    curves: &[(String, Vec<CurvePoint>)],
) -> Result<(), String> {
    let scale = if y_unit == "ms" { 1e-3 } else { 1.0 };
    let nines = |p: f64| -> f64 { -(1.0 - (p / 100.0).min(0.99999)).log10() };
    let pts: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                c.iter()
                    .filter(|p| p.us > 0.0)
                    .map(|p| (nines(p.percentile), p.us * scale))
                    .collect(),
            )
        })
        .collect();
    let xmax = pts.iter().flat_map(|(_, v)| v.iter().map(|p| p.0)).fold(2.0f64, f64::max).min(5.0);
    let ymin =
        pts.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(f64::INFINITY, f64::min).max(1e-4);
    let ymax = pts.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(1.0f64, f64::max);
    let ymin = if ymin.is_finite() { ymin * 0.8 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax * 1.5).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            match x.round() as i32 {
                _ if (x - x.round()).abs() > 0.01 => String::new(),
                0 => "0%".into(),
                _ => format!("{}%", trim(p)),
            }
        })
        .x_desc("percentile")
        .y_desc(format!("latency ({y_unit}, log scale)"))
        .draw()
        .map_err(err)?;
    for (name, v) in pts.iter() {
        let color = colour(name);
        chart
            .draw_series(LineSeries::new(
                v.iter().map(|&(x, y)| (x.min(xmax), y)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn trim(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_render_to_svg() {
        let dir = std::env::temp_dir().join(format!("ricochet-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = vec![
            (
                "a".to_string(),
                vec![
                    ("reflect".to_string(), 100.0, 90.0, 110.0),
                    ("uring".to_string(), 80.0, 80.0, 80.0),
                ],
            ),
            ("b".to_string(), vec![("reflect".to_string(), 90.0, 85.0, 95.0)]),
        ];
        bars(&dir.join("t.svg"), "throughput", "answered NACKs/s (thousands)", &groups).unwrap();
        let curve: Vec<CurvePoint> =
            [(0.0, 10.0), (50.0, 20.0), (90.0, 30.0), (99.0, 80.0), (99.9, 200.0), (100.0, 300.0)]
                .iter()
                .map(|&(percentile, us)| CurvePoint { percentile, us })
                .collect();
        percentiles(&dir.join("l.svg"), "latency", "µs", &[("reflect".into(), curve)]).unwrap();
        let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("reflect"));
        assert!(svg.contains("answered NACKs/s (thousands)"));
        assert_ne!(colour("uring"), colour("epoll"));
        assert!(std::fs::read_to_string(dir.join("l.svg")).unwrap().contains("99%"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
