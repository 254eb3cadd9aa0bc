//! `report`: regenerates `perf/REPORT.md` and its SVG charts from the
//! newest date's `perf/results/<date>-*.json`, and (with
//! `--criterion-dir`) first collects criterion's medians into
//! `<date>-micro.json`.
//!
//! Every target of the issue is a row with the measured ratio and met or
//! MISSED; a workload that failed shows its error instead of a number.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::charts;
use crate::cmd::bench::{IngestRun, Micro, SystemResult, WorkloadFile, spread, today};
use crate::cmd::lab::LabResult;
use crate::out::{self, Machine};

/// `report` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Directory of result JSON files.
    #[arg(long, default_value = "perf/results")]
    pub results: PathBuf,
    /// Where REPORT.md and the charts go.
    #[arg(long, default_value = "perf")]
    pub out: PathBuf,
    /// Collect criterion medians from this directory (target/criterion) into
    /// `<date>-micro.json` first.
    #[arg(long)]
    pub criterion_dir: Option<PathBuf>,
    /// Date of the results to report [default: the newest present].
    #[arg(long)]
    pub date: Option<String>,
    /// The command line that produced the results, for the report.
    #[arg(long)]
    pub invocation: Option<String>,
    /// Wall time of that command, seconds.
    #[arg(long)]
    pub wall_s: Option<f64>,
    /// A remark about the machine's load during the run (repeatable).
    #[arg(long)]
    pub note: Vec<String>,
}

/// Criterion medians under `dir` (`<group>/<bench>/new/estimates.json`).
pub fn collect_criterion(dir: &Path) -> Vec<Micro> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "report" || n == "base" || n == "change") {
                    continue;
                }
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "estimates.json")
                && p.parent().and_then(|x| x.file_name()).is_some_and(|n| n == "new")
            {
                let name = p
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|x| x.strip_prefix(dir).ok())
                    .map(|x| x.display().to_string())
                    .unwrap_or_default();
                let median = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["median"]["point_estimate"].as_f64());
                if let Some(median_ns) = median {
                    out.push(Micro { name, median_ns });
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn load(
    dir: &Path,
    date: Option<&str>,
) -> Result<(String, BTreeMap<String, WorkloadFile>), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let date = match date {
        Some(d) => d.to_string(),
        None => files
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.get(..10).map(str::to_string))
            .max()
            .ok_or_else(|| format!("no results in {}", dir.display()))?,
    };
    let mut out = BTreeMap::new();
    for p in files
        .iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&date)))
    {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let f: WorkloadFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        out.insert(f.workload.clone(), f);
    }
    Ok((date, out))
}

fn sys<'a>(f: Option<&'a WorkloadFile>, name: &str) -> Option<&'a SystemResult> {
    f?.systems.iter().find(|s| s.system == name)
}

fn k(v: f64) -> String {
    if v >= 1e6 { format!("{:.2} M/s", v / 1e6) } else { format!("{:.1} k/s", v / 1e3) }
}

fn us(v: f64) -> String {
    if v >= 1000.0 { format!("{:.2} ms", v / 1000.0) } else { format!("{v:.1} µs") }
}

struct Target {
    name: String,
    measured: String,
    ratio: Option<f64>,
    goal: String,
    met: Option<bool>,
    /// The ratio of each interleaved round (run i of one system against
    /// run i of the other) and how many of them meet the goal; empty when
    /// the figure has no runs to pair.
    paired: Vec<f64>,
    paired_met: usize,
    /// For a closed-loop rate, which server was not saturated, if any
    /// matters to the verdict.
    unsaturated: Option<Unsaturated>,
}

/// A closed-loop rate taken while a server was not saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unsaturated {
    /// Neither was: the load generator's ceiling, not the servers', set
    /// the rates.
    Neither,
    /// The slower one was not while the same load generator kept the
    /// faster one busy: the slower one idled on its own.
    Slower,
}

impl Target {
    /// A target measured by no ratio: met or not as it says.
    fn plain(name: String, measured: String, goal: &str, met: Option<bool>) -> Target {
        Target {
            name,
            measured,
            ratio: None,
            goal: goal.into(),
            met,
            paired: vec![],
            paired_met: 0,
            unsaturated: None,
        }
    }

    /// Pairs the runs of the numerator's and the denominator's systems by
    /// round: the systems ran interleaved (run 1 of each, then run 2, …),
    /// so run i of one and run i of the other were measured minutes apart
    /// under the same load. Shows whether the verdict on the medians holds
    /// in every round or only in some.
    fn with_runs(
        mut self,
        num: &[(usize, f64)],
        den: &[(usize, f64)],
        goal: f64,
        at_least: bool,
    ) -> Target {
        self.paired = num
            .iter()
            .filter_map(|&(run, n)| {
                let &(_, d) = den.iter().find(|&&(r, d)| r == run && d > 0.0)?;
                Some(n / d)
            })
            .collect();
        self.paired_met = self.paired.iter().filter(|&&r| meets(r, goal, at_least)).count();
        self
    }

    /// "k of n (min–max×)" for the rounds column.
    fn rounds(&self) -> String {
        let (Some(lo), Some(hi)) = (
            self.paired.iter().copied().reduce(f64::min),
            self.paired.iter().copied().reduce(f64::max),
        ) else {
            return "—".into();
        };
        format!("{} of {} ({lo:.2}–{hi:.2}×)", self.paired_met, self.paired.len())
    }
}

/// Whether ratio `r` meets `goal` (at least it, or at most it).
fn meets(r: f64, goal: f64, at_least: bool) -> bool {
    if at_least { r >= goal } else { r <= goal }
}

/// A ratio goal as the report writes it: `1/1.2` stays a fraction.
fn goal_text(goal: f64, at_least: bool) -> String {
    let g = if (goal - 1.0 / 1.2).abs() < 1e-9 { "1/1.2".to_string() } else { format!("{goal}") };
    format!("{} {g}×", if at_least { "≥" } else { "≤" })
}

fn ratio_target(
    name: &str,
    num: Option<(f64, String)>,
    den: Option<(f64, String)>,
    goal: f64,
    at_least: bool,
) -> Target {
    match (num, den) {
        (Some((n, nt)), Some((d, dt))) if d > 0.0 => {
            let r = n / d;
            let met = meets(r, goal, at_least);
            let t = Target::plain(
                name.into(),
                format!("{nt} vs {dt}"),
                &goal_text(goal, at_least),
                Some(met),
            );
            Target { ratio: Some(r), ..t }
        }
        _ => Target::plain(
            name.into(),
            "no result (see the workload's error)".into(),
            &goal_text(goal, at_least),
            None,
        ),
    }
}

fn status(t: &Target) -> &'static str {
    match t.met {
        Some(true) => "met",
        Some(false) => "**MISSED**",
        None => "**no result**",
    }
}

/// A CPU-per-NACK figure: two decimals, in µs.
fn us2(v: f64) -> String {
    format!("{v:.2} µs")
}

/// The median of `v` and its "median (min–max)" text formatted by `fmt`.
fn measured(v: &[f64], fmt: impl Fn(f64) -> String) -> Option<(f64, String)> {
    let (m, ..) = spread(v)?;
    Some((m, fmt_spread(v, fmt)))
}

/// "median (min–max)" of `v` formatted by `fmt`.
fn fmt_spread(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match spread(v) {
        Some((m, lo, hi)) if v.len() > 1 => format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi)),
        Some((m, ..)) => fmt(m),
        None => "—".into(),
    }
}

/// Values keyed by the run (round) that measured them.
type ByRound = Vec<(usize, f64)>;

/// The values of `runs`, in run order.
fn values(runs: ByRound) -> Vec<f64> {
    runs.into_iter().map(|(_, v)| v).collect()
}

/// Answered NACKs/s of every storm run of `s`.
fn storm_runs(f: Option<&WorkloadFile>, s: &str) -> Vec<f64> {
    values(storm_rounds(f, s))
}

/// [`storm_runs`] by round (files without storm records count their
/// closed-loop runs in order).
fn storm_rounds(f: Option<&WorkloadFile>, s: &str) -> ByRound {
    sys(f, s).map_or(vec![], |r| {
        if r.storms.is_empty() {
            r.nack.iter().map(|n| n.throughput).enumerate().collect()
        } else {
            r.storms.iter().map(|x| (x.run, x.nack.throughput)).collect()
        }
    })
}

/// Median answered NACKs/s over the storm runs.
fn tput(f: Option<&WorkloadFile>, s: &str) -> Option<(f64, String)> {
    measured(&storm_runs(f, s), k)
}

/// Server CPU µs per answered NACK over each closed-loop storm of `s`.
fn storm_cpu(f: Option<&WorkloadFile>, s: &str) -> Option<(f64, String)> {
    measured(&values(storm_cpu_rounds(f, s)), us2)
}

/// [`storm_cpu_runs`] of system `s` in `f`, by round.
fn storm_cpu_rounds(f: Option<&WorkloadFile>, s: &str) -> ByRound {
    sys(f, s).map_or(vec![], storm_cpu_by_round)
}

/// Server CPU µs per answered NACK of every closed-loop storm of `r`, by
/// round.
fn storm_cpu_by_round(r: &SystemResult) -> ByRound {
    r.storms.iter().filter_map(|x| Some((x.run, x.cpu_us_per_nack?))).collect()
}

/// Server CPU µs per answered NACK of every closed-loop storm of `r`.
fn storm_cpu_runs(r: &SystemResult) -> Vec<f64> {
    values(storm_cpu_by_round(r))
}

/// How busy the server's one CPU was during `s`'s closed-loop storms
/// (median of CPU per NACK × NACKs/s), as a fraction of the CPU.
fn storm_busy(f: Option<&WorkloadFile>, s: &str) -> Option<f64> {
    let v: Vec<f64> = sys(f, s).map_or(vec![], |r| {
        r.storms.iter().filter_map(|x| Some(x.cpu_us_per_nack? * x.nack.throughput / 1e6)).collect()
    });
    spread(&v).map(|(m, ..)| m)
}

/// Below this share of its CPU in a closed loop, the server was waiting for
/// NACKs.
const SATURATED: f64 = 0.9;

/// A closed-loop throughput target, with how busy each server was. When
/// neither was saturated the rates compare the load generator, and the
/// CPU-per-NACK target beside it is the one that compares the servers.
/// When only the slower one was not, the same generator drove the other
/// faster, so the slower server idled on its own: its rate is its own.
fn closed_loop_target(
    name: &str,
    f: [Option<&WorkloadFile>; 2],
    s: [&str; 2],
    goal: f64,
) -> Target {
    let mut t = ratio_target(name, tput(f[0], s[0]), tput(f[1], s[1]), goal, true).with_runs(
        &storm_rounds(f[0], s[0]),
        &storm_rounds(f[1], s[1]),
        goal,
        true,
    );
    let rates = (tput(f[0], s[0]).map(|r| r.0), tput(f[1], s[1]).map(|r| r.0));
    if let (Some(x), Some(y)) = (storm_busy(f[0], s[0]), storm_busy(f[1], s[1])) {
        t.measured += &format!("; server CPU busy {:.0} % vs {:.0} %", x * 100.0, y * 100.0);
        let slower_idle = match rates {
            (Some(rx), Some(ry)) if rx < ry => x < SATURATED && y >= SATURATED,
            (Some(rx), Some(ry)) if ry < rx => y < SATURATED && x >= SATURATED,
            _ => false,
        };
        if x < SATURATED && y < SATURATED {
            t.measured += " (neither saturated: the load generator's ceiling)";
            t.unsaturated = Some(Unsaturated::Neither);
        } else if slower_idle {
            t.measured +=
                " (the slower server idled while the same load generator kept the other busy)";
            t.unsaturated = Some(Unsaturated::Slower);
        }
    }
    t
}

/// Server CPU µs per answered NACK of every fixed-rate run of `s` at `rate`.
fn cpu_runs(f: Option<&WorkloadFile>, s: &str, rate: f64) -> Vec<f64> {
    values(cpu_rounds(f, s, rate))
}

/// [`cpu_runs`] by round.
fn cpu_rounds(f: Option<&WorkloadFile>, s: &str, rate: f64) -> ByRound {
    sys(f, s).map_or(vec![], |r| {
        r.fixed
            .iter()
            .filter(|x| x.rate == rate)
            .filter_map(|x| Some((x.run, x.cpu_us_per_nack?)))
            .collect()
    })
}

fn cpu(f: Option<&WorkloadFile>, s: &str, rate: f64) -> Option<(f64, String)> {
    measured(&cpu_runs(f, s, rate), us2)
}

/// The fixed rates present in `f`, ascending.
fn rates_of(f: Option<&WorkloadFile>) -> Vec<f64> {
    let mut v: Vec<f64> = f.map_or(vec![], |f| {
        f.systems.iter().flat_map(|s| s.fixed.iter().map(|x| x.rate)).collect()
    });
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// Frames `s` cached (or the sink received) per second at the maximum
/// publish rate, every run, by round. Files from before per-run records
/// count their runs in order, or have the median run alone.
fn ingest_rounds(f: Option<&WorkloadFile>, s: &str) -> ByRound {
    let Some(r) = sys(f, s) else { return vec![] };
    if !r.ingests.is_empty() {
        return r.ingests.iter().map(|x| (x.run, x.rate)).collect();
    }
    if !r.ingest_runs.is_empty() {
        return r.ingest_runs.iter().copied().enumerate().collect();
    }
    let Some(p) = r.publish.as_ref() else { return vec![] };
    let v = if s == "sink" {
        r.server.as_ref().map(|x| x.received as f64 / p.duration_s)
    } else {
        p.engine_cached_rate
    };
    v.map(|v| vec![(0, v)]).unwrap_or_default()
}

/// Median ingest rate of `s` over its runs, "median (min–max)".
fn ingest_rate(f: Option<&WorkloadFile>, s: &str) -> Option<(f64, String)> {
    measured(&values(ingest_rounds(f, s)), k)
}

/// Frames lost at 80 % of the maximum over every ingest run of `r`:
/// "0 of N at RATE" for one run, "… in each of k runs" for more.
fn ingest_loss80(r: &SystemResult) -> Option<(String, bool)> {
    if r.ingests.is_empty() {
        let p = r.publish80.as_ref()?;
        let lost = p.lost.unwrap_or(0);
        let which =
            if r.ingest_runs.len() > 1 { " (the median run's; no other recorded)" } else { "" };
        return Some((
            format!("{lost} of {} at {}{which}", p.cacheable_sent, k(p.send_rate)),
            lost == 0,
        ));
    }
    let lost: u64 = r.ingests.iter().map(|x| x.lost80).sum();
    let sent: u64 = r.ingests.iter().map(|x| x.sent80).sum();
    let rates: Vec<f64> = r.ingests.iter().map(|x| x.send_rate80).collect();
    let lossy = r.ingests.iter().filter(|x| x.lost80 > 0).count();
    let runs = r.ingests.len();
    let text = if runs == 1 {
        format!("{lost} of {sent} at {}", fmt_spread(&rates, k))
    } else if lossy == 0 {
        format!("0 of {sent} over {runs} runs at {}", fmt_spread(&rates, k))
    } else {
        format!(
            "{lost} of {sent} ({lossy} of {runs} runs lost frames) at {}",
            fmt_spread(&rates, k)
        )
    };
    Some((text, lost == 0))
}

/// Gaps filled over every lab run of `r` (the median run alone in files
/// without the runs), and whether every run filled every gap.
fn lab_fill(r: &SystemResult) -> Option<(String, bool)> {
    let runs: Vec<&LabResult> =
        if r.labs.is_empty() { r.lab.iter().collect() } else { r.labs.iter().collect() };
    if runs.is_empty() {
        return None;
    }
    let filled: u64 = runs.iter().map(|l| l.listener.recovery.filled).sum();
    let gaps: u64 = runs.iter().map(|l| l.listener.recovery.gaps_opened).sum();
    let short = runs.iter().filter(|l| !l.all_filled).count();
    let share = if gaps == 0 { 100.0 } else { filled as f64 * 100.0 / gaps as f64 };
    let mut text = format!("{filled} of {gaps} ({share:.2}%)");
    if runs.len() > 1 {
        text += &format!(" over {} runs", runs.len());
        if short > 0 {
            text += &format!(", {short} of them short");
        }
    }
    Some((text, short == 0))
}

/// p99 of every fixed-rate run of `s` at `rate` that answered anything,
/// by round.
fn p99_rounds(f: Option<&WorkloadFile>, s: &str, rate: f64) -> ByRound {
    sys(f, s).map_or(vec![], |r| {
        r.fixed
            .iter()
            .filter(|x| x.rate == rate && x.nack.latency.count > 0)
            .map(|x| (x.run, x.nack.latency.p99_us))
            .collect()
    })
}

/// Median p99 over the fixed-rate runs of `s` at `rate`.
fn p99(f: Option<&WorkloadFile>, s: &str, rate: f64) -> Option<(f64, String)> {
    measured(&values(p99_rounds(f, s, rate)), us)
}

/// Runs `report`.
pub fn run(a: ReportArgs) -> Result<(), String> {
    if let Some(dir) = &a.criterion_dir {
        let micro = collect_criterion(dir);
        if micro.is_empty() {
            eprintln!("warning: no criterion estimates under {}", dir.display());
        } else {
            let date = a.date.clone().unwrap_or_else(today);
            let f = WorkloadFile {
                workload: "micro".into(),
                title: "Criterion micro-benchmarks (median per iteration)".into(),
                date: date.clone(),
                machine: Machine::describe(),
                systems: vec![SystemResult {
                    system: "criterion".into(),
                    micro,
                    ..SystemResult::default()
                }],
                ..WorkloadFile::default()
            };
            out::write_json(&a.results.join(format!("{date}-micro.json")), &f)?;
        }
    }
    let (date, files) = load(&a.results, a.date.as_deref())?;
    let get = |w: &str| files.get(w);
    let (fa, fb, fc, fd, fm, fmicro) = (
        get("nack-unicast"),
        get("nack-multicast"),
        get("ingest"),
        get("gapfill"),
        get("memory"),
        get("micro"),
    );
    let fscale = get("scaling");
    let any = files.values().next().ok_or("no workload files for that date")?;
    let quick = files.values().any(|f| f.quick);
    let charts_dir = a.out.join("charts");
    std::fs::create_dir_all(&charts_dir).map_err(|e| e.to_string())?;

    // ── targets ──
    // Issue 14: CPU per answered NACK at fixed rates against the fair
    // reflector (frame + ACK) and its GSO variant, unicast and multicast.
    // A target whose systems were not run (a --quick run, --backends,
    // --workloads) is left out; one whose run failed says "no result".
    let ran = |f: Option<&WorkloadFile>, s: &str| sys(f, s).is_some();
    let mut targets = vec![];
    for (f, label) in [(fa, "(a) unicast"), (fb, "(b) multicast")] {
        for rate in rates_of(f) {
            for base in ["reflect", "reflect-gso"] {
                if !ran(f, "uring") || !ran(f, base) {
                    continue;
                }
                targets.push(
                    ratio_target(
                        &format!(
                            "{label}: CPU per answered NACK at {}, uring vs {base} (frame + ACK)",
                            k(rate)
                        ),
                        cpu(f, "uring", rate),
                        cpu(f, base, rate),
                        1.0 / 1.2,
                        false,
                    )
                    .with_runs(
                        &cpu_rounds(f, "uring", rate),
                        &cpu_rounds(f, base, rate),
                        1.0 / 1.2,
                        false,
                    ),
                );
            }
        }
    }
    if ran(fa, "uring") && ran(fb, "uring") {
        targets.push(closed_loop_target(
            "answered NACKs/s, multicast vs unicast retransmit (uring, closed loop)",
            [fb, fa],
            ["uring", "uring"],
            0.95,
        ));
        targets.push(ratio_target(
            "server CPU per answered NACK, multicast vs unicast retransmit (uring, closed loop)",
            storm_cpu(fb, "uring"),
            storm_cpu(fa, "uring"),
            1.05,
            false,
        )
        .with_runs(&storm_cpu_rounds(fb, "uring"), &storm_cpu_rounds(fa, "uring"), 1.05, false));
    }
    for (f, label) in [(fa, "(a)"), (fb, "(b)")] {
        if ran(f, "uring") && ran(f, "epoll") {
            targets.push(closed_loop_target(
                &format!("{label} answered NACKs/s, io_uring vs epoll (closed loop)"),
                [f, f],
                ["uring", "epoll"],
                1.0,
            ));
            targets.push(
                ratio_target(
                    &format!(
                        "{label} server CPU per answered NACK, io_uring vs epoll (closed loop)"
                    ),
                    storm_cpu(f, "uring"),
                    storm_cpu(f, "epoll"),
                    1.0,
                    false,
                )
                .with_runs(
                    &storm_cpu_rounds(f, "uring"),
                    &storm_cpu_rounds(f, "epoll"),
                    1.0,
                    false,
                ),
            );
        }
    }
    for b in ["uring", "epoll"] {
        if ran(fc, b) && ran(fc, "sink") {
            targets.push(
                ratio_target(
                    &format!("(c) ingest, {b} vs recvmmsg sink"),
                    ingest_rate(fc, b),
                    ingest_rate(fc, "sink"),
                    0.9,
                    true,
                )
                .with_runs(
                    &ingest_rounds(fc, b),
                    &ingest_rounds(fc, "sink"),
                    0.9,
                    true,
                ),
            );
        }
    }
    for b in ["uring", "epoll"] {
        if !ran(fc, b) {
            continue;
        }
        targets.push(match sys(fc, b).and_then(ingest_loss80) {
            Some((text, none_lost)) => Target::plain(
                format!("(c) frames lost at 80% of max, {b}"),
                text,
                "0 lost",
                Some(none_lost),
            ),
            None => Target::plain(
                format!("(c) frames lost at 80% of max, {b}"),
                "no result".into(),
                "0 lost",
                None,
            ),
        });
    }
    // (e): latency at the same absolute rate for every system.
    for rate in rates_of(fa) {
        for b in ["uring", "epoll"] {
            if sys(fa, b).is_none() {
                continue;
            }
            targets.push(
                ratio_target(
                    &format!("(e) p99 NACK→ACK latency at {}, {b} vs reflect", k(rate)),
                    p99(fa, b, rate),
                    p99(fa, "reflect", rate),
                    2.0,
                    false,
                )
                .with_runs(
                    &p99_rounds(fa, b, rate),
                    &p99_rounds(fa, "reflect", rate),
                    2.0,
                    false,
                ),
            );
        }
    }
    let mem = sys(fm, "cache").and_then(|s| s.memory.as_ref());
    let mem_runs: Vec<f64> = sys(fm, "cache")
        .map_or(vec![], |s| s.memories.iter().map(|m| m.overhead_per_frame).collect());
    targets.extend(fm.map(|_| match mem {
        Some(m) => Target::plain(
            "cache overhead per frame beyond its bytes".into(),
            format!(
                "{} (after malloc_trim {:.1} B)",
                if mem_runs.len() > 1 {
                    fmt_spread(&mem_runs, |x| format!("{x:.1} B"))
                } else {
                    format!("{:.1} B", m.overhead_per_frame)
                },
                m.overhead_per_frame_trimmed
            ),
            "≤ 32 B",
            Some(m.overhead_per_frame <= 32.0),
        ),
        None => {
            Target::plain("cache overhead per frame".into(), "no result".into(), "≤ 32 B", None)
        }
    }));
    for b in ["uring", "epoll"] {
        if !ran(fd, b) {
            continue;
        }
        targets.push(match sys(fd, b).and_then(lab_fill) {
            Some((text, all_filled)) => Target::plain(
                format!("(d) lab at 1% drop, {b}: gaps filled within TTL"),
                text,
                "100%",
                Some(all_filled),
            ),
            None => Target::plain(format!("(d) lab, {b}"), "no result".into(), "100%", None),
        });
    }

    // ── charts ── one unit per axis; colours fixed per system (charts::colour).
    let bar = |name: &str, v: &[f64], scale: f64| -> Option<charts::Bar> {
        let (m, lo, hi) = spread(v)?;
        Some((name.to_string(), m * scale, lo * scale, hi * scale))
    };
    let mut chart_files: Vec<(&str, &str)> = vec![];
    // Draws a bar chart if it has bars, and lists it for the report.
    let mut bar_chart = |file: &'static str,
                         alt: &'static str,
                         title: &str,
                         unit: &str,
                         groups: &[(String, Vec<charts::Bar>)]|
     -> Result<(), String> {
        if groups.iter().any(|g| !g.1.is_empty()) {
            charts::bars(&charts_dir.join(file), title, unit, groups)?;
            chart_files.push((file, alt));
        }
        Ok(())
    };
    let mut storm_groups = vec![];
    for (label, f) in [("(a) unicast + ACK", fa), ("(b) multicast + ACK", fb)] {
        if let Some(f) = f {
            let v: Vec<charts::Bar> = f
                .systems
                .iter()
                .filter_map(|s| bar(&s.system, &storm_runs(Some(f), &s.system), 1e-3))
                .collect();
            storm_groups.push((label.to_string(), v));
        }
    }
    bar_chart(
        "throughput.svg",
        "Answered NACKs per second per system",
        "NACK storm, closed loop: answered NACKs per second (median, min–max)",
        "answered NACKs/s (thousands)",
        &storm_groups,
    )?;
    let mut cpu_groups = vec![];
    for (label, f) in [("(a)", fa), ("(b)", fb)] {
        for rate in rates_of(f) {
            let v: Vec<charts::Bar> = f
                .map_or(&[][..], |f| &f.systems[..])
                .iter()
                .filter_map(|s| bar(&s.system, &cpu_runs(f, &s.system, rate), 1.0))
                .collect();
            cpu_groups.push((format!("{label} {}", k(rate)), v));
        }
    }
    bar_chart(
        "cpu.svg",
        "Server CPU per answered NACK at fixed rates",
        "Server CPU per answered NACK at fixed NACK rates (median, min–max)",
        "CPU µs per answered NACK",
        &cpu_groups,
    )?;
    if let Some(f) = fc {
        let v: Vec<charts::Bar> = f
            .systems
            .iter()
            .filter_map(|s| bar(&s.system, &values(ingest_rounds(Some(f), &s.system)), 1e-3))
            .collect();
        bar_chart(
            "ingest.svg",
            "Frames ingested per second",
            "Ingest at the maximum publish rate (median, min–max)",
            "frames cached or received/s (thousands)",
            &[("(c) ingest".to_string(), v)],
        )?;
    }
    // Latency at one fixed rate (the middle one): the same absolute rate for all.
    let rates_a = rates_of(fa);
    if let (Some(f), Some(&rate)) = (fa, rates_a.get(rates_a.len().saturating_sub(1) / 2)) {
        let curves: Vec<_> = f
            .systems
            .iter()
            .filter_map(|s| {
                let runs: Vec<&crate::cmd::bench::FixedRun> =
                    s.fixed.iter().filter(|x| x.rate == rate).collect();
                let p99s: Vec<f64> = runs.iter().map(|x| x.nack.latency.p99_us).collect();
                let mid = runs.get(crate::cmd::bench::median_index(&p99s)?)?;
                Some((s.system.clone(), mid.nack.curve.clone()))
            })
            .collect();
        if !curves.is_empty() {
            charts::percentiles(
                &charts_dir.join("latency.svg"),
                &format!(
                    "NACK→ACK latency at {} NACK/s, every system (CO-corrected, median run)",
                    k(rate)
                ),
                "µs",
                &curves,
            )?;
            chart_files.push(("latency.svg", "Latency percentile curves at one fixed rate"));
        }
    }
    if let Some(f) = fd {
        let curves: Vec<_> = f
            .systems
            .iter()
            .filter_map(|s| Some((s.system.clone(), s.lab.as_ref()?.listener.curve.clone())))
            .collect();
        if !curves.is_empty() {
            charts::percentiles(
                &charts_dir.join("gapfill.svg"),
                "Gap fill latency from detection (includes 0–200 ms NACK jitter)",
                "ms",
                &curves,
            )?;
            chart_files.push(("gapfill.svg", "Gap-fill latency percentile curves"));
        }
    }

    // ── markdown ──
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# ricochet performance report\n");
    let _ = writeln!(
        w,
        "Generated by `ricochet-loadgen report` from `perf/results/{date}-*.json`: a {} run of `scripts/bench.sh`{}. \
         Do not edit by hand; rerun `scripts/bench.sh` (or `ricochet-loadgen report`) instead.\n",
        if quick { "**quick**" } else { "full" },
        a.wall_s.map(|s| format!(" that took {:.1} min", s / 60.0)).unwrap_or_default()
    );
    let m = &any.machine;
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| CPU | {} × {} |", m.nproc, m.cpu_model);
    let _ = writeln!(w, "| kernel | {} |", m.kernel);
    let _ = writeln!(w, "| memory | {} MiB |", m.mem_mib);
    let _ = writeln!(
        w,
        "| net.core.rmem_max | {} B (every socket asks for 8 MiB; the kernel grants at most this) |",
        m.rmem_max
    );
    let _ = writeln!(w, "| online CPUs (`nproc`) | {} |", m.nproc);
    let _ = writeln!(w, "| load average at start | {} |", m.loadavg);
    for f in files.values().filter(|f| !f.loadavg_end.is_empty()) {
        let _ = writeln!(
            w,
            "| load average, {} | {} before → {} after ({} of each figure, interleaved) |",
            f.workload,
            f.machine.loadavg,
            f.loadavg_end,
            runs_note(f)
        );
    }
    let busy = if m.busy_processes.is_empty() {
        "none above 5%".to_string()
    } else {
        m.busy_processes.join("; ")
    };
    let _ = writeln!(w, "| other busy processes at start | {busy} |");
    let _ = writeln!(
        w,
        "| pinning | engine and baselines on CPU 0 (`--cpus 0`, `--cpu 0`); every load phase on CPU 1 (`--cpu 1`) |\n"
    );
    for n in &a.note {
        let _ = writeln!(w, "> {n}\n");
    }
    let _ = writeln!(
        w,
        "The machine was shared while this ran (see the busy processes above). Each number is a ratio between \
         systems measured minutes apart in the same run, under the same load, which is why the comparison stands; \
         the absolute rates would be higher on an idle machine. Everything runs on loopback: each datagram costs \
         the kernel its full send and receive path on both sides, and the load generator pays that too, on its \
         own core.\n"
    );

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(
        w,
        "The ratio and the status compare the medians of the runs. The rounds column pairs the runs by \
         round instead (the systems ran interleaved: run 1 of each, then run 2, …): how many rounds' ratios \
         meet the goal, and their range. A target met on the medians but not in every round is met within \
         the machine's noise, not by a margin.\n"
    );
    let _ = writeln!(
        w,
        "| target | measured | ratio | goal | status | rounds meeting the goal (their ratios) |\n\
         |---|---|---|---|---|---|"
    );
    for t in &targets {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            t.name,
            t.measured,
            t.ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into()),
            t.goal,
            status(t),
            t.rounds()
        );
    }
    let missed: Vec<&Target> = targets.iter().filter(|t| t.met != Some(true)).collect();
    let met = targets.len() - missed.len();
    let shaky =
        targets.iter().filter(|t| t.met == Some(true) && t.paired_met < t.paired.len()).count();
    let rounds = match shaky {
        0 => "each of those with paired rounds met it in every round".to_string(),
        n => format!("{n} of those did not meet it in every round (see the rounds column)"),
    };
    let _ = writeln!(w, "\n{met} of {} targets met on the medians; {rounds}.\n", targets.len());

    for (file, alt) in &chart_files {
        let _ = writeln!(w, "![{alt}](charts/{file})\n");
    }

    // (a) and (b)
    for (f, label) in [(fa, "a"), (fb, "b")] {
        let Some(f) = f else { continue };
        let _ = writeln!(w, "## ({label}) {} — closed loop, window 256\n", f.title);
        let _ = writeln!(
            w,
            "A closed loop ranks servers by rate only while each keeps its CPU busy: a server that answers \
             in less CPU than the load generator needs per NACK (on its one core) leaves the rate at the \
             generator's ceiling. So the load generator sends each listener's NACKs as one UDP GSO message \
             per batch: the kernel splits it and the server receives one datagram per NACK, as from any \
             listener, while the generator pays one trip through the IP stack per batch instead of per NACK. \
             The targets above give each server's CPU share during these storms, and compare CPU per \
             answered NACK beside the rates.\n"
        );
        let _ = writeln!(
            w,
            "| system | answered NACKs/s, median (min–max) | server CPU per answered NACK | NACKs | ACKs | frames unicast / multicast at the group receiver (bad bytes) | unanswered (rate-limited / dropped by a kernel) | p50 | p99 | datagrams sent per NACK |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for s in &f.systems {
            match (&s.nack, &s.error) {
                (Some(n), _) => {
                    let per = n
                        .engine
                        .get("ricochet_sent_total")
                        .zip(n.engine.get("ricochet_nacks_total"))
                        .map(|(s, n)| s / n.max(1.0));
                    let cpu = storm_cpu_runs(s);
                    let silence = n.silence.unwrap_or_default();
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} | {} | {} / {} ({}) | {} ({:.0} / {:.0}+{}) | {} | {} | {} |",
                        s.system,
                        fmt_spread(&storm_runs(Some(f), &s.system), k),
                        fmt_spread(&cpu, us2),
                        n.sent,
                        n.acks,
                        n.unicast_frames,
                        n.multicast_frames.map_or("—".into(), |m| m.to_string()),
                        n.unicast_bad + n.multicast_bad,
                        n.timeouts,
                        silence.rate_limited,
                        silence.kernel_drops,
                        n.local_drops,
                        us(n.latency.p50_us),
                        us(n.latency.p99_us),
                        per.map(|p| format!("{p:.2}")).unwrap_or_else(|| match s.system.as_str() {
                            "echo" => "1 (16-byte echo)".into(),
                            _ => "2 (frame + ACK)".into(),
                        })
                    );
                }
                (None, Some(e)) => {
                    let _ = writeln!(
                        w,
                        "| {} | error: {} | | | | | | | | |",
                        s.system,
                        e.lines().next().unwrap_or("")
                    );
                }
                _ => {}
            }
        }
        let _ = writeln!(
            w,
            "\n{} per system, interleaved (run 1 of every system, then run 2, …); the row's other columns \
             are from the run with the median throughput. Closed loop: 8 listener sockets keep 256 NACKs \
             outstanding (sent as GSO batches), so answered/s is the sustained rate and the latencies include \
             queueing behind the window. Prefill of {} frames of 392 B over 8 flows, each byte-checked when it comes back. `reflect` \
             answers with the same datagrams as the engine (frame + ACK) and no logic; `reflect-gso` sends each \
             same-destination run as one UDP GSO message; `echo` answers with one 16-byte datagram and is a kernel \
             figure only. CPU is the server process's own time (all threads, schedstat) over the phase divided by \
             the NACKs answered in it; on loopback it includes the kernel's delivery to the receiving socket, \
             for every system alike. {} Unanswered: NACKs with no answer within 1 s; in brackets the endpoint's \
             rate-limit refusals and kernel drops (its `/metrics`) and the load generator's own socket drops \
             (SO_RXQ_OVFL).\n",
            runs_note(f),
            f.systems.iter().find_map(|s| s.nack.as_ref().map(|n| n.prefill)).unwrap_or(0),
            prefill_note(f)
        );
        // Fixed rates: the same absolute rate for every system.
        let rates = rates_of(Some(f));
        if !rates.is_empty() {
            let _ = writeln!(
                w,
                "### ({label}) at fixed rates (open loop, the same rate for every system)\n\n\
                 | rate | system | server CPU per answered NACK, median (min–max) | p50 | p99 | p99.9 | answered | unanswered |\n|---|---|---|---|---|---|---|---|"
            );
            for &rate in &rates {
                for s in &f.systems {
                    let runs: Vec<&crate::cmd::bench::FixedRun> =
                        s.fixed.iter().filter(|x| x.rate == rate).collect();
                    if runs.is_empty() {
                        continue;
                    }
                    let lat = |g: &dyn Fn(&crate::cmd::bench::FixedRun) -> f64| -> String {
                        let v: Vec<f64> = runs.iter().map(|x| g(x)).collect();
                        fmt_spread(&v, us)
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} | {} | {} | {} | {} |",
                        k(rate),
                        s.system,
                        fmt_spread(&cpu_runs(Some(f), &s.system, rate), us2),
                        lat(&|x| x.nack.latency.p50_us),
                        lat(&|x| x.nack.latency.p99_us),
                        lat(&|x| x.nack.latency.p999_us),
                        runs.iter().map(|x| x.nack.completed).sum::<u64>(),
                        runs.iter().map(|x| x.nack.timeouts).sum::<u64>(),
                    );
                }
            }
            let _ = writeln!(
                w,
                "\nOpen loop: NACKs leave on a fixed schedule whatever the answers do; latency is measured from each \
                 NACK's intended send time (corrected for coordinated omission), in µs here, in the JSON \
                 (`*_us`) and in `.hgrm` files (`ricochet-loadgen nack --hgrm FILE`). Latency columns: median \
                 over the runs (min–max).\n"
            );
        }
    }

    if let Some(f) = fc {
        let _ = writeln!(w, "## (c) {}\n", f.title);
        let _ = writeln!(
            w,
            "| system | publish rate (max) | received or cached/s | lost at max | rate at 80% | lost at 80% |\n|---|---|---|---|---|---|"
        );
        let mut runs = 0;
        let mut median_run_only = false;
        for s in &f.systems {
            median_run_only |= s.ingests.is_empty() && s.ingest_runs.len() > 1;
            if !s.ingests.is_empty() {
                runs = runs.max(s.ingests.len());
                let col = |v: fn(&IngestRun) -> f64| {
                    fmt_spread(&s.ingests.iter().map(v).collect::<Vec<_>>(), k)
                };
                let lost = |v: fn(&IngestRun) -> (u64, u64)| {
                    let (l, n) =
                        s.ingests.iter().map(v).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                    format!("{l} of {n}")
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} |",
                    s.system,
                    col(|x| x.send_rate),
                    col(|x| x.rate),
                    lost(|x| (x.lost, x.sent)),
                    col(|x| x.send_rate80),
                    lost(|x| (x.lost80, x.sent80)),
                );
            } else if let (Some(p), Some(p8)) = (&s.publish, &s.publish80) {
                let rate = ingest_rate(Some(f), &s.system).map(|x| x.1).unwrap_or_default();
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} of {} | {} | {} of {} |",
                    s.system,
                    k(p.send_rate),
                    rate,
                    p.lost.unwrap_or(0),
                    p.cacheable_sent,
                    k(p8.send_rate),
                    p8.lost.unwrap_or(0),
                    p8.cacheable_sent
                );
            } else if let Some(e) = &s.error {
                let _ = writeln!(
                    w,
                    "| {} | error: {} | | | | |",
                    s.system,
                    e.lines().next().unwrap_or("")
                );
            }
        }
        let _ = writeln!(
            w,
            "\nThe publisher sends 392-byte frames on the 4 shard groups with sendmmsg from one core; \"lost\" is \
             frames sent minus frames the engine counted cached (`ricochet_frames_cached_total`) or the sink \
             received. On loopback the sender's core also runs the receive path up to the socket queue, so the \
             maximum publish rate bounds what any receiver can be shown to ingest.{}\n",
            if runs > 1 {
                format!(
                    " {runs} runs per system, interleaved (the sink, then each back end, then again): rates are the \
                     median (min–max) over the runs, losses the sum over them."
                )
            } else if median_run_only {
                " Received or cached/s is the median (min–max) over the runs; the other columns are the median \
                 run's (files of this date recorded no other)."
                    .to_string()
            } else {
                String::new()
            }
        );
    }

    if let Some(f) = fd {
        let _ = writeln!(w, "## (d) {}\n", f.title);
        let _ = writeln!(
            w,
            "| system | frames | dropped on purpose | gaps | filled | abandoned / expired / open | fill p50 | fill p99 | NACK→fill p50, median (min–max) | NACK→fill p99 | NACKs | answered ACK / MISS / THROTTLED | timeout | frame first | cut short / in flight |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for s in &f.systems {
            if let Some(l) = &s.lab {
                let r = &l.listener.recovery;
                let c = &l.listener.counts;
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} / {} |",
                    s.system,
                    l.frames_published,
                    c.dropped_on_purpose,
                    r.gaps_opened,
                    r.filled,
                    r.abandoned,
                    r.expired,
                    l.listener.open_at_end,
                    us(l.listener.fill_latency.p50_us),
                    us(l.listener.fill_latency.p99_us),
                    fmt_spread(
                        &s.labs.iter().map(|l| l.listener.nack_to_fill.p50_us).collect::<Vec<_>>(),
                        us
                    ),
                    us(l.listener.nack_to_fill.p99_us),
                    r.nacks_sent,
                    r.answered_ack,
                    r.answered_miss,
                    r.answered_throttled,
                    r.timeouts,
                    r.frame_first,
                    r.cut_short,
                    r.in_flight()
                );
            } else if let Some(e) = &s.error {
                let _ = writeln!(
                    w,
                    "| {} | error: {} |||||||||||",
                    s.system,
                    e.lines().next().unwrap_or("")
                );
            }
        }
        let _ = writeln!(
            w,
            "\nThe listener follows the reference listener's escalation: a uniform 0–200 ms jitter before a gap's \
             first NACK (which dominates fill latency from detection), 300 ms per attempt, MISS → next endpoint at \
             once, THROTTLED → hold 125 ms << bucket, timeouts back off from 500 ms to 5 s, at most 5 failed rounds. \
             A gap closes only when the frame's bytes arrive (the reference closes on an ACK). The engine keeps the \
             reference's default rate limits here. Every NACK is accounted for: answered (the response that ended \
             its attempt), timeout, \"frame first\" (the retransmitted frame — the unicast copy the engine sends \
             just before the ACK — arrived before any response, which closed the gap and the attempt's socket, so \
             the ACK was never read), cut short (the gap expired while the NACK waited) or still in flight at the \
             end; the columns add up to NACKs. The row is the run with the median NACK→fill p50.\n"
        );
    }

    if let Some(m) = mem {
        let _ = writeln!(w, "## Memory: {}\n", fm.map(|f| f.title.as_str()).unwrap_or(""));
        let _ = writeln!(
            w,
            "| frames | bytes each | VmRSS before → after (MiB) | after malloc_trim | resident per frame | overhead per frame | after trim | the cache's own charge | copy + insert |\n|---|---|---|---|---|---|---|---|---|"
        );
        let _ = writeln!(
            w,
            "| {} | {} | {:.1} → {:.1} | {:.1} | {:.1} B | {:.1} B | {:.1} B | {} B | {:.0} ns |\n",
            m.frames,
            m.frame_bytes,
            m.rss_before_kib as f64 / 1024.0,
            m.rss_after_kib as f64 / 1024.0,
            m.rss_trimmed_kib as f64 / 1024.0,
            m.rss_per_frame,
            m.overhead_per_frame,
            m.overhead_per_frame_trimmed,
            m.charged_overhead,
            m.insert_ns
        );
        let _ = writeln!(
            w,
            "Frames are copied into `Bytes` one allocation each, as the engine's workers do, and inserted \
             round-robin over 64 flows. The overhead includes the allocator's per-allocation header and size-class \
             rounding of each 300-byte copy, which the cache's own accounting (`OVERHEAD_PER_ENTRY`) does not count.\n"
        );
    }

    if let Some(f) = fscale {
        scaling_section(w, f);
    }

    if let Some(f) = fmicro {
        let _ = writeln!(w, "## Micro-benchmarks (criterion, median per iteration)\n");
        let _ = writeln!(w, "| benchmark | median |\n|---|---|");
        for s in &f.systems {
            for b in &s.micro {
                let v = if b.median_ns >= 1000.0 {
                    format!("{:.2} µs", b.median_ns / 1000.0)
                } else {
                    format!("{:.1} ns", b.median_ns)
                };
                let _ = writeln!(w, "| {} | {} |", b.name, v);
            }
        }
        let _ = writeln!(
            w,
            "\nFrom `cargo bench -p ricochet-bench` (benches/wire.rs, benches/engine.rs) with a short measurement time; see scripts/bench.sh.\n"
        );
    }
    // Instruction counts of the same hot paths, which the machine's load
    // does not move (scripts/callgrind.sh writes them; bench.sh runs it).
    match std::fs::read_to_string(a.out.join("callgrind.md")) {
        Ok(text) => {
            let text = text.trim_end();
            let body = text.strip_prefix("# ").map_or(text.to_string(), |t| format!("### {t}"));
            let _ = writeln!(w, "{body}\n");
        }
        Err(e) => eprintln!(
            "note: {}: {e}; the report has no instruction counts",
            a.out.join("callgrind.md").display()
        ),
    }

    // The DHT's and gossip's figures come from their deterministic
    // simulations (engine/proto/tests/dht_sim.rs, gossip_sim.rs, the IBLT
    // report test), not from a bench workload: they are kept in perf/*.md
    // and copied in here so a regenerated report keeps them. So is the
    // overload soak (`lab --soak-interval`, perf/soak/), which runs for
    // minutes per engine build and is written up by hand.
    for (file, what) in [
        ("dht.md", "DHT"),
        ("gossip.md", "gossip"),
        ("gossip-iblt.md", "IBLT reconciliation"),
        ("soak/overload.md", "overload soak"),
    ] {
        match std::fs::read_to_string(a.out.join(file)) {
            Ok(text) => {
                let _ = writeln!(w, "{}\n", text.trim_end());
            }
            Err(e) => eprintln!(
                "note: {}: {e}; the report has no {what} section",
                a.out.join(file).display()
            ),
        }
    }

    if !missed.is_empty() {
        let _ = writeln!(w, "## Missed targets: what the measurements say\n");
        for t in &missed {
            let _ = writeln!(
                w,
                "- **{}** — {}: {}",
                t.name,
                status(t).trim_matches('*'),
                explain(t, &files)
            );
        }
        let _ = writeln!(w);
    }

    let _ = writeln!(w, "## Commands\n");
    if let Some(inv) = &a.invocation {
        let _ = writeln!(
            w,
            "The run: `{inv}`. Each phase below is a child process it started, in order.\n"
        );
    }
    for f in files.values() {
        if f.commands.is_empty() {
            continue;
        }
        let _ = writeln!(w, "### {} ({:.0} s)\n\n```sh", f.workload, f.wall_s);
        for c in &f.commands {
            let _ = writeln!(w, "{c}");
        }
        let _ = writeln!(w, "```\n");
    }
    let path = a.out.join("REPORT.md");
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "wrote {} ({} of {} targets met)",
        path.display(),
        targets.len() - missed.len(),
        targets.len()
    );
    Ok(())
}

/// Answered NACKs/s of every scaling run with `workers` workers.
fn scale_runs(s: &SystemResult, workers: usize) -> Vec<f64> {
    s.scale.iter().filter(|x| x.workers == workers).map(|x| x.nack.throughput).collect()
}

/// The (f) scaling section: 1 vs 2 workers, the caveat, and what changes
/// at 16–64 cores.
fn scaling_section(w: &mut String, f: &WorkloadFile) {
    let _ = writeln!(w, "## (f) {}\n", f.title);
    let _ = writeln!(
        w,
        "| system | workers | `--cpus` | answered NACKs/s, median (min–max) | ratio to 1 worker (medians) | server CPU per answered NACK | answers per worker (share), median run | hand-offs / forwarded NACKs, median run |\n|---|---|---|---|---|---|---|---|"
    );
    for s in &f.systems {
        if s.scale.is_empty() {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    w,
                    "| {} | | | error: {} | | | | |",
                    s.system,
                    e.lines().next().unwrap_or("")
                );
            }
            continue;
        }
        let base = spread(&scale_runs(s, 1)).map(|x| x.0);
        for workers in [1, 2] {
            let runs: Vec<&crate::cmd::bench::ScaleRun> =
                s.scale.iter().filter(|x| x.workers == workers).collect();
            if runs.is_empty() {
                continue;
            }
            let t = scale_runs(s, workers);
            let ratio = match (spread(&t), base) {
                (Some((m, ..)), Some(b)) if b > 0.0 => format!("{:.2}×", m / b),
                _ => "—".into(),
            };
            let cpu: Vec<f64> = runs.iter().filter_map(|x| x.cpu_us_per_nack).collect();
            let mid = crate::cmd::bench::median_index(&t).and_then(|i| runs.get(i));
            let share = mid.map_or("—".into(), |m| {
                let sum: f64 = m.acks_per_core.iter().sum();
                if sum <= 0.0 {
                    return "—".to_string();
                }
                m.acks_per_core
                    .iter()
                    .enumerate()
                    .map(|(c, v)| format!("core {c}: {v:.0} ({:.0}%)", v / sum * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let hand = mid
                .map_or("—".into(), |m| format!("{:.0} / {:.0}", m.handoffs, m.nacks_forwarded));
            let _ = writeln!(
                w,
                "| {} | {workers} | {} | {} | {ratio} | {} | {share} | {hand} |",
                s.system,
                runs[0].cpus,
                fmt_spread(&t, k),
                fmt_spread(&cpu, us2),
            );
        }
        if let Some(e) = &s.error {
            let _ = writeln!(w, "\nA run failed: {}", e.lines().next().unwrap_or(""));
        }
    }
    let _ = writeln!(
        w,
        "\n{} runs of each, interleaved (1 worker, 2 workers, 1, 2, …), the closed-loop unicast storm of (a): \
         8 flows over 8 listener sockets, window 256, NACKs sent as GSO batches. The engine steers each NACK to the worker that owns its \
         flow (`owner = low32(HashKey) % workers`), so with 8 flows both workers answer; the share column is \
         each worker's `ricochet_acks_sent_total{{core}}` over the run; hand-offs are frames that arrived on a \
         worker not owning their flow (the prefill's, where it was published inside the phase), forwarded \
         NACKs those that missed the steering. CPU is the engine process's time, all \
         threads summed (schedstat), over the phase, per answered NACK. {}\n",
        f.runs.max(1),
        prefill_note(f)
    );
    let _ = writeln!(
        w,
        "**Caveat: this is a lower bound of 2-core scaling, not a clean figure.** The machine has {} CPUs: with \
         2 workers the engine's second worker runs on the load generator's CPU and competes with it (and \
         with the loopback kernel work that both sides pay), so neither gets a whole core. A clean figure \
         needs the load generator on other cores or hosts.\n",
        f.machine.nproc
    );
    let _ = writeln!(w, "### At 16–64 cores\n");
    let _ = writeln!(
        w,
        "- Steering: the SO_REUSEPORT NACK group's classic-BPF program sends each NACK to `owner(HashKey)`, so \
         a flow's NACKs, cache shard and rate-limit state stay on one core and the answer path takes no lock.\n\
         - Hand-off: frames arriving on an ingress worker that does not own their flow cross to the owner \
         through its inbox (bounded ring + wake-up); NACKs that miss the steering are forwarded the same way. \
         With more workers a larger fraction of frames crosses; the rings and wake-ups are the cost to watch.\n\
         - NUMA: pin each worker and the NIC queues that feed it (RSS/XPS, IRQ affinity) to the same node, so \
         the cache shard a worker allocates stays in its node's memory; a `--cpus` list should not straddle \
         nodes without this.\n\
         - Verify: run this workload (`--workloads f`) with `--cpus` lists of 1, 2, 4, 8, … workers on a bigger \
         host, with the load generators on other cores or hosts; check that each core's \
         `ricochet_nacks_total{{core}}` / `ricochet_acks_sent_total{{core}}` grows evenly, that \
         `ricochet_nacks_forwarded_total` stays near 0 (steering works), and that `ricochet_handoffs_out_total`, \
         `ricochet_handoffs_in_total` and `ricochet_handoff_drops_total` (0 expected) stay bounded.\n"
    );
}

/// What two full runs showed about the multicast io_uring storms, for the
/// explanations of the closed-loop rows that compare them.
const SLOW_MULTICAST_STORMS: &str = " In two earlier full runs of the same engine code (their storms' CPU \
    still held the prefill's ingest), two of the three multicast io_uring storms ran slow (286–298 k/s at 3.1–3.2 µs per NACK) and the third fast (372–392 k/s at 2.4–2.6 µs), \
    while the same storm command run on its own gave 341–415 k/s: the slow mode depends on the suite's \
    earlier phases, and what it is is not known (perf/batch-wait-2026-12-07.md, \"A second full run\"; \
    single storms sampled inside, perf/storm-accounting-2026-12-07.md).";

fn explain(t: &Target, files: &BTreeMap<String, WorkloadFile>) -> String {
    let n = &t.name;
    if t.met.is_none() {
        return "the workload produced no number; its error is in the table above.".into();
    }
    if t.unsaturated == Some(Unsaturated::Neither) {
        return "neither rate is the server's: neither server was saturated (their CPU shares are in the \
                measured column), so the closed loop ran at the load generator's ceiling on its one core, \
                which varies from run to run on this shared machine. The CPU-per-NACK target beside it \
                compares the servers themselves."
            .into();
    }
    if t.unsaturated == Some(Unsaturated::Slower) {
        return "the slower server was idle for part of each storm while the same load generator kept the other \
                one busy, so the rate is the server's own. For the io_uring back end that idle time is its batch \
                wait (`--uring-batch-wait`): under load each wait runs its full length, since the kernel counts a \
                socket's burst of datagrams as one of the 32 completions it waits for. The wait now shortens to \
                the time 32 datagrams take to arrive (about 80 µs at 390 k NACK/s instead of 200 µs); in \
                interleaved quick multicast storms that cut the worker's sleep from 18 % to 6 % of the storm and \
                lifted its median from 359 to 387 k NACK/s, where epoll reached 405 k. The sleep that remains \
                is the shortened wait itself (perf/batch-wait-2026-12-07.md). A long round now also submits \
                its answers every 128 instead of all at its end, so the load generator's next NACKs come in \
                while the worker is still serving: in interleaved quick multicast storms the worker was \
                93–95 % busy instead of 86–89 % (perf/early-submit-2026-12-08.md)."
            .into();
    }
    if n.contains("multicast vs unicast") {
        return "each round's answers are grouped by destination, so a multicast answer costs about what a \
                unicast one does: the group's frames leave in GSO runs and the ACKs to each listener in one \
                more (perf/gso-order-ab-2026-12-07.md). What remains is the kernel's: on loopback it clones each \
                multicast datagram to the joined receiver on the sender's CPU (IP_MULTICAST_LOOP), which an edge \
                host with loop off does not pay, and frames of different sizes still break a group's runs."
            .to_string()
            + SLOW_MULTICAST_STORMS;
    }
    if n.contains("vs epoll") {
        return "both back ends hand the kernel the same datagrams, grouped into the same GSO runs; what differs \
                under full load is the size of a round. A saturated io_uring worker serves about 170 NACKs per \
                wait, where epoll reads, answers and sends at most 32 at a time. A round now submits \
                its answers every 128 (about 64 NACKs) rather than at its end, which kept the worker busier in \
                multicast storms (perf/early-submit-2026-12-08.md; slices of 32 or 64 datagrams had measured \
                no gain in four rounds before, perf/batch-wait-2026-12-07.md). With the fixed 200 µs \
                batch wait, freeing a round's receive buffers at once cost twice epoll's IPIs to the load \
                generator's CPU (each a hypervisor exit on this guest); with the wait that shortens under load \
                the counts are alike (4.4–5.7 k against 5.3–10.0 k per 4 s multicast storm). Storms on this \
                machine also fall, on either back end, into a slow mode with about a quarter more CPU per NACK, \
                not explained; with three rounds one slow storm moved a median, so the suite now storms five \
                times per system. Interleaved quick sets of 4–6 \
                rounds disagree: two put io_uring ahead (multicast 401 against 367 k/s and 427 against 422, \
                unicast 448 against 434), one behind (multicast 387 against 405, unicast 355 against 394; \
                perf/batch-wait-2026-12-07.md). Sorting a round's \
                answers, once about 4 % of its CPU, now orders integer keys (perf/loadgen-gso-2026-12-07.md). \
                Registered files, which would trim each request, measured no difference \
                (perf/gso-order-ab-2026-12-07.md). Both back ends fetch a NACK's cold memory 8 datagrams \
                ahead of answering it, which cut the CPU per NACK of each about alike (0.85× io_uring, \
                0.88× epoll, unicast; perf/prefetch-2026-12-07.md), so it does not decide between them."
            .to_string()
            // Only workload (b) compares multicast storms.
            + if n.starts_with("(b)") { SLOW_MULTICAST_STORMS } else { "" };
    }
    if n.contains("CPU per answered NACK") {
        return "the engine and the reflector hand the kernel the same datagrams (frame + ACK per NACK), and on \
                loopback the kernel's per-datagram send and receive path dominates both, so the engine can only \
                lead by making fewer kernel crossings than a recvmmsg/sendmmsg loop. It groups each round's \
                answers by destination into GSO runs (a group's frames, a listener's frames, its ACKs: what \
                `reflect-gso` does too; perf/gso-order-ab-2026-12-07.md), receives with multishot RecvMsg, and \
                waits for batches (`--uring-batch-wait`: at these rates each wait runs its full 200 µs; \
                perf/nack-path-ab-2026-12-07.md, perf/batch-wait-2026-12-07.md). Where a round holds few NACKs (low fixed rates) there is \
                little to group, and the largest costs are wake-ups: the worker's own sleep and wake each \
                round, and on loopback the waking of each receiving socket, two per multicast answer (the \
                group's and the requester's), which the reflector pays too (profile in \
                perf/gso-order-ab-2026-12-07.md). Waking less means a longer batch wait, and on this guest a \
                thread woken by its own timer, as the worker is by its batch wait, spends about 24 µs of CPU per \
                wake-up (a C loop measured it), twice a thread woken from another CPU, as the load generator's \
                wakes the reflector for each NACK; at 10 k/s, where a 200 µs wait gathers \
                about three NACKs, that leaves little to save. A sweep of the wait at 10 and 30 k/s \
                (perf/batch-wait-frontier-2026-12-08.md): the multicast 10 k/s target needs about 400–500 µs \
                (500 µs: 0.69× the reflector's CPU), while the 30 k/s p99 target needs about 100–150 µs (at \
                200 µs the p99 is already 2.05–2.65× the reflector's on a quiet host), so no one wait meets \
                both, and the default stays at 200 µs. It also pays what the \
                reflector does not: packet info on each NACK and reply on its wildcard NACK socket, 4–6 % \
                (bind `--nack-addr` to skip it). Its own work per NACK is about 1 800 instructions \
                (perf/callgrind.md). Registered files measured no difference, and SEND_ZC cost twice the CPU \
                (loopback copies zero-copy datagrams anyway), so neither was kept (perf/gso-order-ab-2026-12-07.md)."
            .into();
    }
    if n.contains("ingest") {
        let lost_at_max: Option<u64> = files
            .get("ingest")
            .map(|f| f.systems.iter().filter_map(|s| s.publish.as_ref()?.lost).sum());
        if lost_at_max == Some(0) {
            return "nothing was lost at the maximum rate by any system, so the receivers kept up and the rate was \
                    set by the one publisher core. On loopback that core also runs the receive path up to the \
                    socket queue and wakes the receiver, and its rate was lower against this backend than against \
                    the sink: the extra cost is on the sending side of the delivery into the engine's socket (the \
                    uring backend arms it with a multishot receive), not in the engine's own processing, which \
                    cached every frame. Measured, not profiled: a perf profile of the sending core is the next step."
                .into();
        }
        return "the engine copies each frame out of the receive buffer into the cache and indexes it; the sink \
                only counts. Both are fed by one publisher core."
            .into();
    }
    if n.contains("lost at 80%") {
        return "frames were dropped at the engine's socket (RcvbufErrors); the kernel grants receive buffers of at \
                most net.core.rmem_max, listed under Machine."
            .into();
    }
    if n.contains("p99") {
        let wait = if n.contains("uring") {
            " On a quiet host the io_uring engine's p99 is about its batch wait plus 300–400 µs: at 30 k/s, \
             where the reflector's p99 is 190–260 µs, the default 200 µs wait alone puts it at 2.05–2.65×, \
             and a wait short enough to meet this target would cost more CPU at 10 k/s, where the CPU \
             targets already miss at 200 µs (perf/batch-wait-frontier-2026-12-08.md)."
        } else {
            ""
        };
        return "both answer with two datagrams (retransmit then ACK) at the same rate, so the difference is in \
                how long a NACK waits for its batch; bursts of the shared machine's other load land in the tail \
                (see the min–max over the runs)."
            .to_string()
            + wait;
    }
    if n.contains("overhead") {
        return "the cache's own bookkeeping is the 56 bytes it charges itself (40-byte log slot + 16-byte FIFO \
                entry); the rest is glibc malloc's cost for the frame's own 300-byte allocation (an 8-byte chunk \
                header plus rounding to 16 bytes: a 320-byte chunk, +20 B) and the per-flow logs' VecDeque growth \
                slack (about 2 B per frame here). Reaching 32 B needs frames stored in large per-flow segments \
                (one allocation per segment, not per frame) and a smaller index entry."
            .into();
    }
    if n.contains("lab") {
        return "some gaps were not filled in time; the gapfill table shows whether they were abandoned (rate \
                limits or timeouts) or still open."
            .into();
    }
    String::new()
}

/// How many storms and fixed-rate runs each system had: the storms may
/// outnumber the fixed-rate runs (`bench --storm-runs`), the extra rounds
/// storming only.
fn runs_note(f: &WorkloadFile) -> String {
    let runs = f.runs.max(1);
    let storms = f.systems.iter().map(|s| s.storms.len()).max().unwrap_or(0);
    if storms > runs {
        format!(
            "{storms} closed-loop storms and {runs} runs of each fixed rate (the storms of rounds \
             {}–{storms} alone, seconds apart)",
            runs + 1
        )
    } else {
        format!("{runs} runs")
    }
}

/// How a workload's storms treated the engines' prefill: published by a
/// separate `nack --prefill-only` run before each storm (results from
/// 2026-12-07 on), or inside the storm's phase, its ingest in the CPU.
fn prefill_note(f: &WorkloadFile) -> &'static str {
    if f.commands.iter().any(|c| c.contains("--prefill-only")) {
        "The engines' prefill is published and checked cached by a separate `--prefill-only` run before \
         each storm, so a storm's CPU is NACK service alone, as the reflectors' is (they make their frames \
         themselves)."
    } else {
        "The engines' storm phase includes their ingest of the prefill (about 0.3 s of CPU for 100 000 \
         frames); the reflectors make their frames themselves."
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::bench::Storm;
    use crate::cmd::nack::NackResult;

    #[test]
    fn the_runs_note_counts_storm_only_rounds() {
        let storms = |n: usize| SystemResult {
            storms: (0..n).map(|run| Storm { run, ..Storm::default() }).collect(),
            ..SystemResult::default()
        };
        let mut f = WorkloadFile {
            runs: 3,
            systems: vec![storms(3), storms(3)],
            ..WorkloadFile::default()
        };
        assert_eq!(runs_note(&f), "3 runs");
        f.systems = vec![storms(5), storms(4)];
        assert!(
            runs_note(&f).starts_with("5 closed-loop storms and 3 runs of each fixed rate"),
            "{}",
            runs_note(&f)
        );
    }

    #[test]
    fn the_prefill_note_follows_the_commands_the_suite_ran() {
        let mut f = WorkloadFile {
            commands: vec!["ricochet-loadgen nack --prefill 100000 --rate max --gso".into()],
            ..WorkloadFile::default()
        };
        assert!(prefill_note(&f).contains("includes their ingest"));
        f.commands.insert(0, "ricochet-loadgen nack --prefill 100000 --prefill-only".into());
        assert!(prefill_note(&f).contains("NACK service alone"));
    }

    #[test]
    fn criterion_medians_are_collected() {
        let dir = std::env::temp_dir().join(format!("ricochet-crit-{}", std::process::id()));
        let est = dir.join("cache").join("hit").join("new");
        std::fs::create_dir_all(&est).unwrap();
        std::fs::write(est.join("estimates.json"), r#"{"median":{"point_estimate":12.5}}"#)
            .unwrap();
        std::fs::create_dir_all(dir.join("cache").join("hit").join("base")).unwrap();
        let m = collect_criterion(&dir);
        assert_eq!(m, vec![Micro { name: "cache/hit".into(), median_ns: 12.5 }]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ratio_targets_compare_both_ways() {
        let t =
            ratio_target("x", Some((80.0, "80".into())), Some((100.0, "100".into())), 0.8, true);
        assert_eq!(t.met, Some(true));
        let t = ratio_target("x", Some((250.0, "a".into())), Some((100.0, "b".into())), 2.0, false);
        assert_eq!(t.met, Some(false));
        assert_eq!(ratio_target("x", None, None, 1.0, true).met, None);
    }

    #[test]
    fn rounds_pair_the_runs_by_round_and_count_those_meeting_the_goal() {
        let by_round = |v: &[f64]| v.iter().copied().enumerate().collect::<Vec<_>>();
        // Medians 18 vs 22: 0.82, met; but round 2 alone is 0.90.
        let (a, b) = (by_round(&[16.0, 18.0, 19.0]), by_round(&[24.0, 20.0, 22.0]));
        let t =
            ratio_target("x", Some((18.0, "a".into())), Some((22.0, "b".into())), 1.0 / 1.2, false)
                .with_runs(&a, &b, 1.0 / 1.2, false);
        assert_eq!(t.met, Some(true));
        assert_eq!(t.paired_met, 1, "{:?}", t.paired);
        assert_eq!(t.rounds(), "1 of 3 (0.67–0.90×)");
        // At least: 1.1 and 0.9 against 1.0.
        let (a, b) = (by_round(&[11.0, 9.0]), by_round(&[10.0, 10.0]));
        let t = ratio_target("x", None, None, 1.0, true).with_runs(&a, &b, 1.0, true);
        assert_eq!(t.rounds(), "1 of 2 (0.90–1.10×)");
        // Runs pair by their round, not their position: round 1 of the
        // denominator is missing; a zero denominator is not a round either.
        let (a, b) = ([(0, 1.0), (1, 1.0), (2, 3.0)], [(0, 0.0), (2, 4.0)]);
        let t = ratio_target("x", None, None, 1.0, false).with_runs(&a, &b, 1.0, false);
        assert_eq!(t.rounds(), "1 of 1 (0.75–0.75×)");
        assert_eq!(Target::plain("x".into(), "y".into(), "100%", Some(true)).rounds(), "—");
    }

    /// A closed-loop rate target says how busy each server was, and flags
    /// a rate set by the load generator rather than the server.
    #[test]
    fn ingest_figures_take_every_run_and_count_every_runs_loss() {
        let run = |run: usize, rate: f64, lost80: u64| IngestRun {
            run,
            rate,
            send_rate: rate,
            sent: 1000,
            lost: 0,
            send_rate80: rate * 0.8,
            sent80: 800,
            lost80,
        };
        let file = |systems: Vec<SystemResult>| WorkloadFile { systems, ..WorkloadFile::default() };
        let sys = |name: &str, ingests: Vec<IngestRun>| SystemResult {
            system: name.into(),
            ingests,
            ..SystemResult::default()
        };
        // Round 1 is a miss (0.80×) that the median run alone would hide.
        let f = file(vec![
            sys("sink", vec![run(0, 200e3, 0), run(1, 250e3, 0), run(2, 240e3, 0)]),
            sys("epoll", vec![run(0, 230e3, 0), run(1, 200e3, 0), run(2, 236e3, 0)]),
        ]);
        let (m, text) = ingest_rate(Some(&f), "epoll").unwrap();
        assert_eq!(m, 230e3);
        assert_eq!(text, "230.0 k/s (200.0 k/s–236.0 k/s)");
        let t = ratio_target(
            "x",
            ingest_rate(Some(&f), "epoll"),
            ingest_rate(Some(&f), "sink"),
            0.9,
            true,
        )
        .with_runs(
            &ingest_rounds(Some(&f), "epoll"),
            &ingest_rounds(Some(&f), "sink"),
            0.9,
            true,
        );
        assert_eq!(t.met, Some(true));
        assert_eq!(t.rounds(), "2 of 3 (0.80–1.15×)");
        // A loss in any run is a loss, even where the median run had none.
        let lossless = sys("uring", vec![run(0, 200e3, 0), run(1, 210e3, 0)]);
        assert_eq!(
            ingest_loss80(&lossless),
            Some(("0 of 1600 over 2 runs at 164.0 k/s (160.0 k/s–168.0 k/s)".into(), true))
        );
        let lossy = sys("uring", vec![run(0, 200e3, 0), run(1, 210e3, 3), run(2, 220e3, 0)]);
        let (text, none_lost) = ingest_loss80(&lossy).unwrap();
        assert!(!none_lost);
        assert!(text.starts_with("3 of 2400 (1 of 3 runs lost frames)"), "{text}");
        // Files from before the per-run records: their runs in order.
        let old = file(vec![SystemResult {
            system: "sink".into(),
            ingest_runs: vec![1.0, 3.0, 2.0],
            ..SystemResult::default()
        }]);
        assert_eq!(ingest_rounds(Some(&old), "sink"), vec![(0, 1.0), (1, 3.0), (2, 2.0)]);
    }

    #[test]
    fn the_gap_fill_target_holds_only_if_every_lab_run_filled_every_gap() {
        let lab = |gaps: u64, filled: u64| {
            let mut l = LabResult { all_filled: gaps == filled, ..LabResult::default() };
            l.listener.recovery.gaps_opened = gaps;
            l.listener.recovery.filled = filled;
            l
        };
        // The median run filled everything; another did not.
        let r = SystemResult {
            lab: Some(lab(1000, 1000)),
            labs: vec![lab(1000, 1000), lab(1010, 1009), lab(990, 990)],
            ..SystemResult::default()
        };
        let (text, met) = lab_fill(&r).unwrap();
        assert!(!met);
        assert_eq!(text, "2999 of 3000 (99.97%) over 3 runs, 1 of them short");
        let r = SystemResult { labs: vec![lab(1000, 1000), lab(990, 990)], ..r };
        assert_eq!(lab_fill(&r), Some(("1990 of 1990 (100.00%) over 2 runs".into(), true)));
        // Files with the median run alone.
        let r = SystemResult { lab: Some(lab(1020, 1020)), ..SystemResult::default() };
        assert_eq!(lab_fill(&r), Some(("1020 of 1020 (100.00%)".into(), true)));
        assert_eq!(lab_fill(&SystemResult::default()), None);
    }

    #[test]
    fn closed_loop_targets_say_when_the_server_was_not_saturated() {
        let file = |name: &str, per_s: f64, cpu_us: f64| WorkloadFile {
            systems: vec![SystemResult {
                system: name.into(),
                storms: vec![Storm {
                    run: 0,
                    nack: NackResult { throughput: per_s, ..NackResult::default() },
                    cpu_us_per_nack: Some(cpu_us),
                }],
                ..SystemResult::default()
            }],
            ..WorkloadFile::default()
        };
        // 200 k/s at 4.75 µs: 95 % of a core; at 2.5 µs: 50 %.
        let (busy, idle) = (file("s", 200e3, 4.75), file("s", 200e3, 2.5));
        let t = closed_loop_target("x", [Some(&busy), Some(&busy)], ["s", "s"], 1.0);
        assert!(t.measured.ends_with("server CPU busy 95 % vs 95 %"), "{}", t.measured);
        assert_eq!(t.met, Some(true));
        assert_eq!(t.unsaturated, None);
        // Neither saturated: the load generator set both rates, which is
        // what a missed target is explained by, whatever the systems.
        let t = closed_loop_target("x", [Some(&idle), Some(&idle)], ["s", "s"], 1.0);
        assert!(t.measured.contains("50 % vs 50 % (neither saturated"), "{}", t.measured);
        assert_eq!(t.unsaturated, Some(Unsaturated::Neither));
        let files = BTreeMap::new();
        assert!(
            explain(&t, &files).contains("load generator's ceiling"),
            "{}",
            explain(&t, &files)
        );
        // The slower one idle while the generator kept the faster one busy:
        // the slower server's own shortfall, either way round.
        let slow_idle = file("s", 150e3, 2.5);
        for (f, want) in
            [([&slow_idle, &busy], "38 % vs 95 %"), ([&busy, &slow_idle], "95 % vs 38 %")]
        {
            let t = closed_loop_target("x", [Some(f[0]), Some(f[1])], ["s", "s"], 1.0);
            assert!(
                t.measured.contains(&format!("{want} (the slower server idled")),
                "{}",
                t.measured
            );
            assert_eq!(t.unsaturated, Some(Unsaturated::Slower));
            assert!(explain(&t, &files).contains("batch wait"), "{}", explain(&t, &files));
        }
        // The faster one had room to spare: the comparison stands as is.
        let slow_busy = file("s", 150e3, 6.4);
        let t = closed_loop_target("x", [Some(&slow_busy), Some(&idle)], ["s", "s"], 1.0);
        assert!(t.measured.ends_with("96 % vs 50 %"), "{}", t.measured);
        assert_eq!(t.unsaturated, None);
        let cpu = storm_cpu(Some(&idle), "s").map(|c| c.0);
        assert_eq!(cpu, Some(2.5));
        // Both saturated: the back-end comparison's explanation, which
        // cites the slow multicast storms only where multicast is compared.
        for (name, multicast) in [
            ("(a) answered NACKs/s, io_uring vs epoll (closed loop)", false),
            ("(b) answered NACKs/s, io_uring vs epoll (closed loop)", true),
            ("answered NACKs/s, multicast vs unicast retransmit (uring, closed loop)", true),
        ] {
            let t = closed_loop_target(name, [Some(&busy), Some(&busy)], ["s", "s"], 1.0);
            let e = explain(&t, &files);
            assert_eq!(e.contains("multicast io_uring storms"), multicast, "{name}: {e}");
        }
    }
}
