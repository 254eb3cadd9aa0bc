//! SVG charts for perf/REPORT.md, drawn with plotters' SVG backend (no
//! fonts or images needed: text stays text in the SVG).

use std::path::Path;

use plotters::prelude::*;

use crate::latency::CurvePoint;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Grouped bars: one group per workload, one bar per system, values in
/// `unit` (thousands per second, say). `groups` = (workload, [(system, value)]).
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[(String, Vec<(String, f64)>)],
) -> Result<(), String> {
    let systems: Vec<String> = {
        let mut s: Vec<String> = vec![];
        for (_, g) in groups {
            for (name, _) in g {
                if !s.contains(name) {
                    s.push(name.clone());
                }
            }
        }
        s
    };
    let ymax =
        groups.iter().flat_map(|(_, g)| g.iter().map(|x| x.1)).fold(0.0f64, f64::max).max(1e-9)
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
        let color = COLORS[si % COLORS.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (_, g))| {
                let v = g.iter().find(|x| &x.0 == sys)?.1;
                let x0 = gi as f64 + 0.1 + si as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled()))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(err)?
            .label(sys.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
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
/// (log of 1/(1−p)), y = µs on a log scale. `curves` = (system, points).
pub fn percentiles(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<CurvePoint>)],
) -> Result<(), String> {
    let nines = |p: f64| -> f64 { -(1.0 - (p / 100.0).min(0.99999)).log10() };
    let pts: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|(n, c)| {
            (
                n.clone(),
                c.iter().filter(|p| p.us > 0.0).map(|p| (nines(p.percentile), p.us)).collect(),
            )
        })
        .collect();
    let xmax = pts.iter().flat_map(|(_, v)| v.iter().map(|p| p.0)).fold(2.0f64, f64::max).min(5.0);
    let ymin =
        pts.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(f64::INFINITY, f64::min).max(0.1);
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
        .y_desc("latency (µs, log)")
        .draw()
        .map_err(err)?;
    for (i, (name, v)) in pts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
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
            ("a".to_string(), vec![("reflect".to_string(), 100.0), ("uring".to_string(), 80.0)]),
            ("b".to_string(), vec![("reflect".to_string(), 90.0), ("uring".to_string(), 85.0)]),
        ];
        bars(&dir.join("t.svg"), "throughput", "k/s", &groups).unwrap();
        let curve: Vec<CurvePoint> =
            [(0.0, 10.0), (50.0, 20.0), (90.0, 30.0), (99.0, 80.0), (99.9, 200.0), (100.0, 300.0)]
                .iter()
                .map(|&(percentile, us)| CurvePoint { percentile, us })
                .collect();
        percentiles(&dir.join("l.svg"), "latency", &[("reflect".into(), curve)]).unwrap();
        let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("reflect"));
        assert!(std::fs::read_to_string(dir.join("l.svg")).unwrap().contains("99%"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
