//! Output: per-interval lines (with a progress bar only on a TTY), summary
//! tables, JSON files, the machine description, and shared CLI types.

use std::io::IsTerminal;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// A monotonic nanosecond clock starting at zero.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    /// Nanoseconds since the clock was made.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    /// The instant the clock started.
    pub fn origin(&self) -> Instant {
        self.0
    }
}

/// A duration argument: `10s`, `500ms`, `2m`, `1.5s`, `250us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let v: f64 =
            num.parse().map_err(|_| format!("{s:?}: expected a duration such as 10s or 500ms"))?;
        let secs = match unit {
            "ns" => v / 1e9,
            "us" | "µs" => v / 1e6,
            "ms" => v / 1e3,
            "s" | "" => v,
            "m" | "min" => v * 60.0,
            "h" => v * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (ns, us, ms, s, m, h)")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?}: must be a non-negative duration"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

/// A rate argument: a number of messages per second, or `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as possible (closed loop where a window applies).
    Max,
    /// Messages per second, open loop.
    Pps(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let (num, mult) = match s.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1e3),
            None => match s.strip_suffix(['m', 'M']) {
                Some(n) => (n, 1e6),
                None => (s, 1.0),
            },
        };
        match num.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(Rate::Pps(v * mult)),
            _ => Err(format!("{s:?}: expected messages per second (e.g. 50000, 50k) or max")),
        }
    }
}

impl Rate {
    /// The rate for JSON: `None` for max.
    pub fn pps(&self) -> Option<f64> {
        match *self {
            Rate::Max => None,
            Rate::Pps(r) => Some(r),
        }
    }
}

/// Options every load subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// How long to run (then stop by itself).
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
    /// Seconds between interval lines.
    #[arg(long, default_value = "1s")]
    pub interval: Dur,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Seed of every random choice (TxIDs, payloads, drops, jitter).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pin this process to one CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// No interval lines or progress bar, only the summary.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    /// Pins to `--cpu` if given.
    pub fn pin(&self) -> Result<(), String> {
        match self.cpu {
            Some(c) => crate::net::pin_to_cpu(c).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Interval lines and, on a TTY, a progress bar over the run's duration.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A progress display for a run of `total`.
    pub fn new(total: Duration, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stdout().is_terminal()).then(|| {
            let b = ProgressBar::new(total.as_millis() as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Progress { bar, quiet }
    }

    /// Prints an interval line (above the bar, if any).
    pub fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(s),
            None => println!("{s}"),
        }
    }

    /// Moves the bar to `elapsed`.
    pub fn set(&self, elapsed: Duration) {
        if let Some(b) = &self.bar {
            b.set_position(elapsed.as_millis() as u64);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Prints a two-column summary table.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    let w = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let vw = rows.iter().map(|(_, v)| v.chars().count()).max().unwrap_or(0);
    println!("\n{title}");
    println!("{}", "─".repeat(w + vw + 3));
    for (k, v) in rows {
        println!("{k:<w$}   {v:>vw$}");
    }
}

/// A row for [`print_table`].
pub fn row(k: &str, v: impl std::fmt::Display) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Writes `value` as pretty JSON to `path` (creating directories).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes JSON if a path was given.
pub fn maybe_json<T: Serialize>(
    path: &Option<std::path::PathBuf>,
    value: &T,
) -> Result<(), String> {
    match path {
        Some(p) => write_json(p, value),
        None => Ok(()),
    }
}

/// Formats a count per second compactly.
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}

/// What machine the numbers came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// 1/5/15-minute load averages when measured.
    pub loadavg: String,
    /// `net.core.rmem_max`.
    pub rmem_max: u64,
    /// The busiest other processes when measured (pid, %CPU since start, command).
    pub busy_processes: Vec<String>,
}

impl Machine {
    /// The 1/5/15-minute load averages now.
    pub fn loadavg_now() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads /proc now.
    pub fn describe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            mem_mib,
            loadavg: Machine::loadavg_now(),
            rmem_max: read("/proc/sys/net/core/rmem_max").trim().parse().unwrap_or(0),
            busy_processes: busy_processes(),
        }
    }
}

/// Processes using the most CPU right now (sampled over 500 ms from
/// /proc/*/stat), other than this one.
fn busy_processes() -> Vec<String> {
    fn sample() -> Vec<(u32, u64, String)> {
        let mut out = vec![];
        let Ok(dir) = std::fs::read_dir("/proc") else { return out };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            let Some((name, rest)) = stat.split_once(") ") else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let comm = name.split_once('(').map_or("", |(_, c)| c).to_string();
            out.push((pid, ticks, comm));
        }
        out
    }
    let me = std::process::id();
    let a = sample();
    std::thread::sleep(Duration::from_millis(500));
    let b = sample();
    let hz = 100.0; // USER_HZ on Linux
    let mut busy: Vec<(f64, u32, String)> = b
        .into_iter()
        .filter(|(pid, _, _)| *pid != me)
        .filter_map(|(pid, t, c)| {
            let before = a.iter().find(|(p, _, _)| *p == pid)?.1;
            let pct = (t.saturating_sub(before)) as f64 / hz / 0.5 * 100.0;
            (pct >= 5.0).then_some((pct, pid, c))
        })
        .collect();
    busy.sort_by(|x, y| y.0.total_cmp(&x.0));
    busy.into_iter()
        .take(5)
        .map(|(pct, pid, c)| format!("{c} (pid {pid}): {pct:.0}% of a CPU"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!("10s".parse::<Dur>().unwrap().0, Duration::from_secs(10));
        assert_eq!("250ms".parse::<Dur>().unwrap().0, Duration::from_millis(250));
        assert_eq!("1.5s".parse::<Dur>().unwrap().0, Duration::from_millis(1500));
        assert_eq!("2m".parse::<Dur>().unwrap().0, Duration::from_secs(120));
        assert!("ten".parse::<Dur>().is_err());
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert_eq!("50k".parse::<Rate>().unwrap(), Rate::Pps(50_000.0));
        assert_eq!("1.5M".parse::<Rate>().unwrap(), Rate::Pps(1_500_000.0));
        assert!("0".parse::<Rate>().is_err());
        assert_eq!(rate(1_500.0), "1.5k/s");
    }

    #[test]
    fn machine_description_reads_proc() {
        let m = Machine::describe();
        assert!(m.nproc >= 1);
        assert!(!m.kernel.is_empty());
    }
}
