//! `bench`: the side-by-side suite that `scripts/bench.sh` runs.
//!
//! Every system under test runs on the same CPU (`--server-cpu`, 0): the
//! baselines pinned with `--cpu`, the engine with `--cpus`; every load
//! phase runs pinned to `--load-cpu` (1). Each phase is a child process
//! (this same binary with a subcommand and `--json`), so every number in
//! the report comes with the exact command that produced it.
//!
//! # Repetition
//! Every measured figure is taken `--runs` times (3 by default),
//! interleaved — run 1 of every system, then run 2 of every system, … (A B
//! C A B C) — so a drift in the shared machine's load lands on every
//! system alike. The report gives the median and the min–max. The load
//! average is recorded before and after each workload.
//!
//! # Systems
//! - `reflect`: the fair, logic-free baseline — answers each NACK with the
//!   same datagrams ricochet sends (frame + ACK) by recvmmsg/sendmmsg;
//!   `reflect-gso` the same with UDP GSO runs.
//! - `echo`: one 16-byte datagram per NACK — only the kernel's
//!   per-datagram figure (workload a), never a baseline for the engine.
//! - the engine's back ends (`--backends`, epoll and uring).
//!
//! # Workloads
//! - **a** NACK storm, 100 % hits, unicast retransmit + ACK: closed loop
//!   (window 256: the sustained answer rate; each listener's NACKs leave
//!   as one UDP GSO message per batch, so one load core can keep a server
//!   busy, while the server still receives one datagram per NACK), then
//!   open loop at each of
//!   `--rates` (the same absolute rate for every system): the server's CPU
//!   time per answered NACK (from `/proc/PID/task/*/schedstat`) and the
//!   latency, corrected for coordinated omission. (The old workload **e**,
//!   latency at half of each system's own maximum, compared unlike rates;
//!   `e` now means these fixed-rate runs.)
//! - **b** the same with multicast retransmit + ACK; a receiver joined to
//!   the groups on the retransmit port counts the retransmits.
//! - **c** ingest at the maximum publish rate vs the `sink` baseline, then
//!   at 80 % of each system's measured maximum (loss must be 0).
//! - **d** lossy listener gap fill at 1 % drop (`lab`); every NACK is
//!   accounted for (ACK, MISS, THROTTLED, timeout, frame first, cut short).
//! - **memory**: 1 000 000 frames of 300 B in a cache (`memory`).
//! - **f** (`scaling`): the closed-loop storm of (a) against the io_uring
//!   engine on 1 worker (`--cpus <server>`) and on 2 workers (`--cpus
//!   <server>,<load>`), interleaved 1 2 1 2 …; each worker's share of the
//!   answers comes from the per-core counters of the engine's `/metrics`.
//!   With 2 CPUs the second worker shares its CPU with the load generator,
//!   so the ratio is a lower bound of 2-core scaling, not a clean figure.
//!
//! Rate limits are raised out of the way for the storms (a load generator
//! on one address would otherwise measure the IP tier); the lab keeps the
//! reference defaults. Results go to `<out>/<date>-<workload>.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cmd::lab::LabResult;
use crate::cmd::memory::MemoryResult;
use crate::cmd::nack::NackResult;
use crate::cmd::publish::PublishResult;
use crate::cmd::reflect::ServerResult;
use crate::metrics;
use crate::out::{self, Dur, Machine, Rate};
use crate::proc::{self, Child, EnginePorts};

/// `bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Short phases (the whole suite in well under 5 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Where the per-workload JSON files go.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
    /// The engine binary [default: `ricochet` next to this executable].
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// CPU for the engine and the baselines.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU for the load.
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// Date prefix of the result files [default: today, UTC].
    #[arg(long)]
    pub date: Option<String>,
    /// Workloads to run (a, b, c, d, e, memory, f = scaling) [default: all;
    /// --quick: a,b,d,memory].
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// Engine backends to compare [default: epoll,uring; --quick: uring].
    #[arg(long, value_delimiter = ',')]
    pub backends: Option<Vec<String>>,
    /// Runs of every measured figure, interleaved across systems.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Closed-loop storms per system in (a) and (b): the first --runs
    /// rounds storm and then run the fixed rates on the same server, the
    /// rest storm only, a few seconds apart across systems, so the
    /// noisiest figure gets the most samples [default: --runs + 2;
    /// --quick: --runs].
    #[arg(long)]
    pub storm_runs: Option<usize>,
    /// Fixed NACK rates (open loop) for CPU per NACK and latency
    /// [default: 10k,30k,100k; --quick: 30k].
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<Rate>>,
    /// Start no new phase after this long; what ran is still written.
    #[arg(long)]
    pub budget: Option<Dur>,
}

/// One closed-loop storm run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Storm {
    /// Run number (from 0).
    pub run: usize,
    /// The load generator's result.
    pub nack: NackResult,
    /// Server CPU time per answered NACK, µs.
    pub cpu_us_per_nack: Option<f64>,
}

/// One open-loop run at a fixed rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FixedRun {
    /// NACKs per second asked for.
    pub rate: f64,
    /// Run number (from 0).
    pub run: usize,
    /// The load generator's result.
    pub nack: NackResult,
    /// Server CPU time per answered NACK, µs.
    pub cpu_us_per_nack: Option<f64>,
}

/// One closed-loop storm run of the scaling workload (f).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScaleRun {
    /// Engine workers (`--cpus` list length).
    pub workers: usize,
    /// The `--cpus` list.
    pub cpus: String,
    /// Run number (from 0).
    pub run: usize,
    /// The load generator's result.
    pub nack: NackResult,
    /// Server CPU time (every thread) per answered NACK, µs.
    pub cpu_us_per_nack: Option<f64>,
    /// ACKs sent per worker over the phase (`ricochet_acks_sent_total{core}`).
    #[serde(default)]
    pub acks_per_core: Vec<f64>,
    /// NACKs counted per worker over the phase (`ricochet_nacks_total{core}`).
    #[serde(default)]
    pub nacks_per_core: Vec<f64>,
    /// Datagrams handed to another worker's ring (`ricochet_handoffs_out_total`).
    #[serde(default)]
    pub handoffs: f64,
    /// Hand-offs dropped on a full ring (`ricochet_handoff_drops_total`).
    #[serde(default)]
    pub handoff_drops: f64,
    /// NACKs that arrived on a worker other than their owner and were
    /// forwarded (`ricochet_nacks_forwarded_total`: steering missed).
    #[serde(default)]
    pub nacks_forwarded: f64,
}

/// One ingest run of workload (c): the maximum publish rate, then 80 % of
/// what the system took in at it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct IngestRun {
    /// Run number (from 0).
    pub run: usize,
    /// Frames the engine cached (or the sink received) per second at the
    /// maximum publish rate.
    pub rate: f64,
    /// The publisher's send rate at max, frames/s.
    pub send_rate: f64,
    /// Frames sent at max that a receiver should take in.
    pub sent: u64,
    /// Of those, frames not cached (or not received).
    pub lost: u64,
    /// The publisher's send rate at 80 %, frames/s.
    pub send_rate80: f64,
    /// Frames sent at 80 %.
    pub sent80: u64,
    /// Of those, frames not cached (or not received).
    pub lost80: u64,
}

impl IngestRun {
    /// The run's figures from the two publish passes of `r`, if both ran.
    fn of(r: &SystemResult, run: usize) -> Option<IngestRun> {
        let (p, p80) = (r.publish.as_ref()?, r.publish80.as_ref()?);
        Some(IngestRun {
            run,
            rate: ingest_max(r)?,
            send_rate: p.send_rate,
            sent: p.cacheable_sent,
            lost: p.lost?,
            send_rate80: p80.send_rate,
            sent80: p80.cacheable_sent,
            lost80: p80.lost?,
        })
    }
}

/// One system's results in a workload file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemResult {
    /// `reflect`, `sink`, `epoll`, `uring` or `cache`.
    pub system: String,
    /// NACK storm: the run with the median throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<NackResult>,
    /// Every storm run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storms: Vec<Storm>,
    /// Every fixed-rate run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixed: Vec<FixedRun>,
    /// Every ingest run (workload c).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingests: Vec<IngestRun>,
    /// Ingest: cached (or received) frames/s at the maximum rate, per run,
    /// as files written before `ingests` recorded it; read, never written.
    #[serde(default, skip_serializing)]
    pub ingest_runs: Vec<f64>,
    /// Every lab run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labs: Vec<LabResult>,
    /// Every memory run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memories: Vec<MemoryResult>,
    /// Every scaling run (workload f).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale: Vec<ScaleRun>,
    /// Ingest at max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishResult>,
    /// The baseline's own count at max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerResult>,
    /// Ingest at 80 % of the measured max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish80: Option<PublishResult>,
    /// The baseline's own count at 80 %.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server80: Option<ServerResult>,
    /// Gap-fill lab: the median run by fill p50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabResult>,
    /// Memory benchmark: the median run by overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResult>,
    /// Criterion medians.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub micro: Vec<Micro>,
    /// Why this system has no result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One criterion benchmark's median.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Micro {
    /// `group/function`.
    pub name: String,
    /// Median time per iteration, ns.
    pub median_ns: f64,
}

/// One `perf/results/<date>-<workload>.json` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkloadFile {
    /// Short id: nack-unicast, nack-multicast, ingest, gapfill, latency, memory, micro.
    pub workload: String,
    /// What it measures.
    pub title: String,
    /// YYYY-MM-DD.
    pub date: String,
    /// A `--quick` run.
    pub quick: bool,
    /// The machine it ran on (load average before the workload).
    pub machine: Machine,
    /// Load average after the workload.
    #[serde(default)]
    pub loadavg_end: String,
    /// Runs of every figure.
    #[serde(default)]
    pub runs: usize,
    /// Every command that ran, in order.
    pub commands: Vec<String>,
    /// Remarks (e.g. parameters chosen from an earlier phase).
    pub notes: Vec<String>,
    /// Per system.
    pub systems: Vec<SystemResult>,
    /// Wall time of the workload, seconds.
    pub wall_s: f64,
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date((secs / 86_400) as i64)
}

/// Days since 1970-01-01 → YYYY-MM-DD (Howard Hinnant's civil_from_days).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

struct Phases {
    quick: bool,
    storm: &'static str,
    fixed: &'static str,
    ingest: &'static str,
    lab: &'static str,
    prefill: u64,
    rates: Vec<f64>,
    runs: usize,
    /// Storm rounds in (a) and (b), at least `runs`.
    storm_runs: usize,
}

/// Median, min and max of `v` (NaN-free), or None when empty.
pub fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Some((med, s[0], s[n - 1]))
}

/// The index of the median element of `v` (the lower one of an even count).
pub fn median_index(v: &[f64]) -> Option<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx.get((v.len().max(1) - 1) / 2).copied()
}

/// CPU time of every thread of `pid` so far, ns (from schedstat: precise,
/// unlike the 10 ms ticks of /proc/PID/stat).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut seen = false;
    for t in dir.flatten() {
        // A thread may exit between the listing and the read: skip it.
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        total += ns;
        seen = true;
    }
    seen.then_some(total)
}

struct Suite {
    a: BenchArgs,
    exe: PathBuf,
    engine: PathBuf,
    date: String,
    p: Phases,
    tmp: PathBuf,
    machine: Machine,
    commands: Vec<String>,
    seq: u32,
    started: Instant,
    budget: Option<Duration>,
}

/// Engine flags that take the rate limits out of a NACK storm from one address.
const NO_LIMITS: &[&str] = &[
    "--rl-ip-rate=1e9",
    "--rl-ip-burst=4000000000",
    "--rl-sequence-max=4000000000",
    "--rl-chain-rate=4000000000",
    "--rl-group-rate=1e9",
    "--rl-group-burst=4000000000",
];

impl Suite {
    fn load(&mut self, sub: &str, args: &[String], timeout: Duration) -> Result<PathBuf, String> {
        self.seq += 1;
        let json = self.tmp.join(format!("{:03}-{sub}.json", self.seq));
        let mut cmd = Command::new(&self.exe);
        cmd.arg(sub)
            .args(args)
            .args(["--cpu", &self.a.load_cpu.to_string(), "--quiet"])
            .arg("--json")
            .arg(&json);
        self.commands.push(proc::shell_line(&cmd));
        println!("  $ {}", proc::shell_line(&cmd));
        let mut child = Child::spawn(sub, cmd, true).map_err(|e| e.to_string())?;
        match child.wait_timeout(timeout) {
            Some(s) if s.success() => Ok(json),
            Some(s) => Err(format!("{sub} failed ({s}): {}", child.log())),
            None => Err(format!("{sub} did not finish within {timeout:?}")),
        }
    }

    fn over_budget(&self) -> bool {
        self.budget.is_some_and(|b| self.started.elapsed() > b) || proc::stopped()
    }

    fn server(
        &mut self,
        sub: &str,
        port: u16,
        extra: &[String],
    ) -> Result<(Child, PathBuf), String> {
        self.seq += 1;
        let json = self.tmp.join(format!("{:03}-{sub}.json", self.seq));
        let mut cmd = Command::new(&self.exe);
        cmd.arg(sub)
            .args(["--port", &port.to_string(), "--cpu", &self.a.server_cpu.to_string()])
            .args(extra)
            .args(["--duration", "30m", "--quiet", "--json"])
            .arg(&json);
        self.commands.push(format!("{} &", proc::shell_line(&cmd)));
        println!("  $ {} &", proc::shell_line(&cmd));
        let child = Child::spawn(sub, cmd, false).map_err(|e| e.to_string())?;
        // Let it bind and join.
        std::thread::sleep(Duration::from_millis(300));
        Ok((child, json))
    }

    fn engine(&mut self, backend: &str, extra: &[&str]) -> Result<(Child, EnginePorts), String> {
        let cpus = self.a.server_cpu.to_string();
        self.engine_on(backend, &cpus, extra)
    }

    /// The engine with one worker per CPU of `cpus` (a `--cpus` list).
    fn engine_on(
        &mut self,
        backend: &str,
        cpus: &str,
        extra: &[&str],
    ) -> Result<(Child, EnginePorts), String> {
        let ports = EnginePorts::pick();
        let mut flags: Vec<String> = vec![
            "--cpus".into(),
            cpus.into(),
            "--backend".into(),
            backend.into(),
            "--cache-ttl-tx".into(),
            "10m".into(),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        let child = proc::start_engine(&self.engine, &ports, &flags)?;
        self.commands.push(format!("{} &", child.command));
        println!("  $ {} &", child.command);
        Ok((child, ports))
    }

    fn file(&self, workload: &str, title: &str) -> WorkloadFile {
        WorkloadFile {
            workload: workload.into(),
            title: title.into(),
            date: self.date.clone(),
            quick: self.p.quick,
            machine: self.machine.clone(),
            runs: self.p.runs,
            ..WorkloadFile::default()
        }
    }

    fn save(&mut self, mut f: WorkloadFile, started: Instant) -> Result<(), String> {
        f.commands = std::mem::take(&mut self.commands);
        f.wall_s = started.elapsed().as_secs_f64();
        f.loadavg_end = Machine::loadavg_now();
        let path = self.a.out.join(format!("{}-{}.json", self.date, f.workload));
        out::write_json(&path, &f)?;
        println!("  → {}", path.display());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn nack_args(
        &self,
        ports: Option<&EnginePorts>,
        target: u16,
        pace: Option<(&str, &str)>,
        publish: bool,
        retransmit_port: Option<u16>,
    ) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--target".into(),
            format!("127.0.0.1:{target}"),
            "--prefill".into(),
            self.p.prefill.to_string(),
            "--flows".into(),
            "8".into(),
            "--listeners".into(),
            "8".into(),
            "--payload".into(),
            "300".into(),
        ];
        // `pace` is the NACK phase's rate and duration: none for the
        // prefill step, which sends no NACK.
        if let Some((rate, duration)) = pace {
            v.extend(["--rate".into(), rate.into(), "--duration".into(), duration.into()]);
            if rate == "max" {
                // A closed loop measures the server only while the server
                // is the bottleneck: GSO NACK batches cost the load
                // generator one trip through the IP stack per batch (the
                // server still gets a datagram per NACK), so its one core
                // can outpace the server.
                v.push("--gso".into());
            }
        }
        match (ports, publish) {
            (Some(p), true) => {
                v.extend([
                    "--listen-port".into(),
                    p.listen.to_string(),
                    "--metrics".into(),
                    format!("http://{}/metrics", p.admin),
                ]);
            }
            (Some(p), false) => {
                v.extend([
                    "--no-publish".into(),
                    "--metrics".into(),
                    format!("http://{}/metrics", p.admin),
                ]);
            }
            (None, _) => v.push("--no-publish".into()),
        }
        if let Some(rp) = retransmit_port {
            v.extend(["--retransmit-port".into(), rp.to_string()]);
        }
        v
    }

    /// Publishes the prefill to an engine and checks it cached every
    /// frame. The storm after it NACKs them with `--no-publish`, so the
    /// storm's CPU per NACK is NACK service alone, as the reflectors' is
    /// (they make their frames themselves): the ingest of 100 000 frames
    /// would add about 0.3 s of the engine's CPU to it.
    fn prefill(&mut self, ports: &EnginePorts) -> Result<(), String> {
        let mut args = self.nack_args(Some(ports), ports.nack, None, true, None);
        args.push("--prefill-only".into());
        let json = self.load("nack", &args, Duration::from_secs(120))?;
        let n: NackResult = read_json(&json)?;
        match n.prefill_cached {
            Some(c) if c >= n.prefill => Ok(()),
            c => Err(format!(
                "the engine cached {} of the {} prefilled frames",
                c.map_or("an unknown number".into(), |c| c.to_string()),
                n.prefill
            )),
        }
    }

    /// One run against one system: a closed-loop storm, then each fixed
    /// rate, on one server instance; results appended to `r`.
    fn storm(&mut self, r: &mut SystemResult, run: usize, unicast: bool, fixed: bool) {
        let system = r.system.clone();
        let res = (|| -> Result<(), String> {
            let prefill = self.p.prefill.to_string();
            let (guard, target, ports, retx) =
                if system == "reflect" || system == "reflect-gso" || system == "echo" {
                    let port = proc::free_udp_port();
                    let mut extra: Vec<String> = vec![];
                    if system == "echo" {
                        extra.extend(["--answer".into(), "echo".into()]);
                    } else {
                        extra.extend(
                            ["--prefill", &prefill, "--flows", "8", "--payload", "300"]
                                .map(String::from),
                        );
                    }
                    if system == "reflect-gso" {
                        extra.push("--gso".into());
                    }
                    let retx = (!unicast).then(proc::free_udp_port);
                    if let Some(e) = retx {
                        extra.extend(
                            ["--retransmit", "multicast", "--egress-port", &e.to_string()]
                                .map(String::from),
                        );
                    }
                    let (c, _) = self.server("reflect", port, &extra)?;
                    (c, port, None, retx)
                } else {
                    let mut extra: Vec<&str> = NO_LIMITS.to_vec();
                    if unicast {
                        // The load generator is on loopback: allowed, so its
                        // copies are not held to 3x its NACKs' size.
                        extra.extend([
                            "--beacon-flags-unicast=true",
                            "--beacon-flags-multicast=false",
                            "--proxy-allow",
                            "127.0.0.1",
                        ]);
                    } else {
                        // So the group receiver on this host hears the retransmits.
                        extra.push("--egress-multicast-loop=true");
                    }
                    let (c, p) = self.engine(&system, &extra)?;
                    let retx = (!unicast).then_some(p.egress);
                    (c, p.nack, Some(p), retx)
                };
            let pid = guard.id();
            let limit = Duration::from_secs(120);
            if let Some(p) = &ports {
                self.prefill(p)?;
            }
            let storm = self.p.storm;
            let args = self.nack_args(ports.as_ref(), target, Some(("max", storm)), false, retx);
            let cpu0 = cpu_ns(pid);
            let json = self.load("nack", &args, limit)?;
            let cpu1 = cpu_ns(pid);
            let n: NackResult = read_json(&json)?;
            let cpu = per_nack(cpu0, cpu1, n.completed);
            r.storms.push(Storm { run, nack: n, cpu_us_per_nack: cpu });
            if fixed {
                for rate in self.p.rates.clone() {
                    let rs = format!("{rate:.0}");
                    let args = self.nack_args(
                        ports.as_ref(),
                        target,
                        Some((&rs, self.p.fixed)),
                        false,
                        retx,
                    );
                    let cpu0 = cpu_ns(pid);
                    let json = self.load("nack", &args, limit)?;
                    let cpu1 = cpu_ns(pid);
                    let n: NackResult = read_json(&json)?;
                    let cpu = per_nack(cpu0, cpu1, n.completed);
                    r.fixed.push(FixedRun { rate, run, nack: n, cpu_us_per_nack: cpu });
                }
            }
            drop(guard);
            Ok(())
        })();
        if let Err(e) = res {
            eprintln!("  ! {system}: {e}");
            r.error = Some(e);
        }
        let t: Vec<f64> = r.storms.iter().map(|s| s.nack.throughput).collect();
        r.nack = median_index(&t).map(|i| r.storms[i].nack.clone());
    }

    /// One scaling run (workload f): the closed-loop unicast storm of (a)
    /// against `backend` with one worker per CPU of `cpus`, with the
    /// engine's per-core counters scraped before and after.
    fn scale(&mut self, r: &mut SystemResult, backend: &str, cpus: &str, run: usize) {
        let workers = cpus.split(',').count();
        let res = (|| -> Result<(), String> {
            let mut extra: Vec<&str> = NO_LIMITS.to_vec();
            extra.extend([
                "--beacon-flags-unicast=true",
                "--beacon-flags-multicast=false",
                "--proxy-allow",
                "127.0.0.1",
            ]);
            let (guard, ports) = self.engine_on(backend, cpus, &extra)?;
            let pid = guard.id();
            self.prefill(&ports)?;
            let storm = self.p.storm;
            let args = self.nack_args(Some(&ports), ports.nack, Some(("max", storm)), false, None);
            let before = metrics::scrape_text(ports.admin);
            let cpu0 = cpu_ns(pid);
            let json = self.load("nack", &args, Duration::from_secs(120))?;
            let cpu1 = cpu_ns(pid);
            let after = metrics::scrape_text(ports.admin);
            drop(guard);
            let n: NackResult = read_json(&json)?;
            let d = |name: &str| -> Vec<f64> {
                let (b, a) = (metrics::per_core(&before, name), metrics::per_core(&after, name));
                a.iter().enumerate().map(|(i, v)| v - b.get(i).copied().unwrap_or(0.0)).collect()
            };
            let total = |name: &str| d(name).iter().sum::<f64>();
            r.scale.push(ScaleRun {
                workers,
                cpus: cpus.into(),
                run,
                cpu_us_per_nack: per_nack(cpu0, cpu1, n.completed),
                acks_per_core: d("ricochet_acks_sent_total"),
                nacks_per_core: d("ricochet_nacks_total"),
                handoffs: total("ricochet_handoffs_out_total"),
                handoff_drops: total("ricochet_handoff_drops_total"),
                nacks_forwarded: total("ricochet_nacks_forwarded_total"),
                nack: n,
            });
            Ok(())
        })();
        if let Err(e) = res {
            eprintln!("  ! {} ({workers} workers): {e}", r.system);
            r.error = Some(e);
        }
    }

    fn ingest(&mut self, system: &str) -> SystemResult {
        let mut r = SystemResult { system: system.into(), ..SystemResult::default() };
        let res = (|| -> Result<(), String> {
            let limit = Duration::from_secs(120);
            let ingest = self.p.ingest;
            for pass in 0..2 {
                let rate = if pass == 0 {
                    "max".to_string()
                } else {
                    let max = if system == "sink" {
                        r.server.as_ref().map_or(0.0, |s| {
                            s.received as f64 / r.publish.as_ref().map_or(1.0, |p| p.duration_s)
                        })
                    } else {
                        r.publish.as_ref().and_then(|p| p.engine_cached_rate).unwrap_or(0.0)
                    };
                    format!("{:.0}", (max * 0.8).max(1000.0))
                };
                let mut args: Vec<String> =
                    ["--rate", &rate, "--duration", ingest, "--flows", "16", "--payload", "300"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                if system == "sink" {
                    let port = proc::free_udp_port();
                    let (mut c, json) = self.server("sink", port, &[])?;
                    args.extend(["--port".into(), port.to_string()]);
                    let pj = self.load("publish", &args, limit)?;
                    std::thread::sleep(Duration::from_millis(500));
                    c.stop(Duration::from_secs(5));
                    let p: PublishResult = read_json(&pj)?;
                    let s: ServerResult = read_json(&json)?;
                    let lost = p.cacheable_sent.saturating_sub(s.received);
                    let p = PublishResult { lost: Some(lost), ..p };
                    if pass == 0 {
                        r.publish = Some(p);
                        r.server = Some(s);
                    } else {
                        r.publish80 = Some(p);
                        r.server80 = Some(s);
                    }
                } else {
                    let (_c, ports) = self.engine(system, &[])?;
                    args.extend([
                        "--port".into(),
                        ports.listen.to_string(),
                        "--metrics-addr".into(),
                        ports.admin.to_string(),
                    ]);
                    let pj = self.load("publish", &args, limit)?;
                    let p: PublishResult = read_json(&pj)?;
                    if pass == 0 {
                        r.publish = Some(p);
                    } else {
                        r.publish80 = Some(p);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            eprintln!("  ! {system}: {e}");
            r.error = Some(e);
        }
        r
    }

    fn lab(&mut self, backend: &str) -> SystemResult {
        let mut r = SystemResult { system: backend.into(), ..SystemResult::default() };
        let args: Vec<String> = vec![
            "--engine".into(),
            self.engine.display().to_string(),
            "--backend".into(),
            backend.into(),
            "--engine-cpus".into(),
            self.a.server_cpu.to_string(),
            "--duration".into(),
            self.p.lab.into(),
            "--rate".into(),
            "5000".into(),
            "--drop".into(),
            "1%".into(),
        ];
        // lab exits 1 when a gap was not filled; its JSON still says why.
        let res = self.load("lab", &args, Duration::from_secs(180));
        let json = match res {
            Ok(j) => Ok(j),
            Err(e) => {
                let j = self.tmp.join(format!("{:03}-lab.json", self.seq));
                if j.exists() { Ok(j) } else { Err(e) }
            }
        };
        match json.and_then(|j| read_json::<LabResult>(&j)) {
            Ok(l) => r.lab = Some(l),
            Err(e) => r.error = Some(e),
        }
        r
    }
}

fn read_json<T: DeserializeOwned>(p: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn per_nack(cpu0: Option<u64>, cpu1: Option<u64>, answered: u64) -> Option<f64> {
    let (a, b) = (cpu0?, cpu1?);
    (answered > 0).then(|| b.saturating_sub(a) as f64 / 1e3 / answered as f64)
}

/// Merges per-run results of one system: `pick` gives each run's key
/// figure; the median run's full result is kept, every run's figure too.
fn merge_runs(
    runs: Vec<SystemResult>,
    pick: impl Fn(&SystemResult) -> Option<f64>,
) -> SystemResult {
    let figures: Vec<f64> = runs.iter().filter_map(&pick).collect();
    let ok: Vec<&SystemResult> = runs.iter().filter(|r| pick(r).is_some()).collect();
    let mut out = match median_index(&figures) {
        Some(i) => ok[i].clone(),
        None => runs.last().cloned().unwrap_or_default(),
    };
    out.ingests = runs.iter().flat_map(|r| r.ingests.clone()).collect();
    out.labs = runs.iter().filter_map(|r| r.lab.clone()).collect();
    out.memories = runs.iter().filter_map(|r| r.memory.clone()).collect();
    if out.error.is_none() {
        out.error = runs.iter().find_map(|r| r.error.clone());
    }
    out
}

/// Runs the suite.
pub fn run(a: BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let engine = proc::find_engine(a.engine.as_deref())?;
    let tmp = std::env::temp_dir().join(format!("ricochet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let rates = |d: &[f64]| -> Vec<f64> {
        a.rates
            .as_ref()
            .map(|v| v.iter().filter_map(Rate::pps).collect())
            .unwrap_or_else(|| d.to_vec())
    };
    let runs = a.runs.max(1);
    let p = if a.quick {
        Phases {
            quick: true,
            storm: "1500ms",
            fixed: "1500ms",
            ingest: "1500ms",
            lab: "4s",
            prefill: 16_384,
            rates: rates(&[30_000.0]),
            runs,
            storm_runs: a.storm_runs.unwrap_or(runs).max(runs),
        }
    } else {
        Phases {
            quick: false,
            storm: "8s",
            fixed: "6s",
            ingest: "6s",
            lab: "20s",
            prefill: 100_000,
            rates: rates(&[10_000.0, 30_000.0, 100_000.0]),
            runs,
            storm_runs: a.storm_runs.unwrap_or(runs + 2).max(runs),
        }
    };
    let workloads = a.workloads.clone().unwrap_or_else(|| {
        let w: &[&str] =
            if a.quick { &["a", "b", "d", "memory"] } else { &["a", "b", "c", "d", "memory", "f"] };
        w.iter().map(|x| x.to_string()).collect()
    });
    let backends = a.backends.clone().unwrap_or_else(|| {
        let b: &[&str] = if a.quick { &["uring"] } else { &["epoll", "uring"] };
        b.iter().map(|x| x.to_string()).collect()
    });
    println!(
        "ricochet bench ({}): {} runs of each figure, interleaved; servers on CPU {}, load on CPU {}; \
         fixed rates {:?} NACK/s",
        if a.quick { "quick" } else { "full" },
        runs,
        a.server_cpu,
        a.load_cpu,
        p.rates
    );
    let mut s = Suite {
        date: a.date.clone().unwrap_or_else(today),
        budget: a.budget.map(|d| d.0),
        a,
        exe,
        engine,
        p,
        tmp,
        machine: Machine::describe(),
        commands: vec![],
        seq: 0,
        started: Instant::now(),
    };
    let w = |x: &str| workloads.iter().any(|y| y == x);
    let (run_a, run_b, run_c, run_d, run_e, run_mem) =
        (w("a"), w("b"), w("c"), w("d"), w("e"), w("memory"));
    let run_f = w("f") || w("scaling");

    for (on, unicast, name, title) in [
        (run_a || run_e, true, "nack-unicast", "NACK storm, 100% hits, unicast retransmit + ACK"),
        (run_b, false, "nack-multicast", "NACK storm, 100% hits, multicast retransmit + ACK"),
    ] {
        if !on {
            continue;
        }
        println!("\n({}) {title}", if unicast { "a" } else { "b" });
        let t = Instant::now();
        s.machine = Machine::describe();
        let mut f = s.file(name, title);
        let mut systems: Vec<String> = vec![];
        if unicast {
            systems.push("echo".into());
        }
        systems.extend(["reflect".to_string(), "reflect-gso".to_string()]);
        systems.extend(backends.iter().cloned());
        let mut res: Vec<SystemResult> = systems
            .iter()
            .map(|x| SystemResult { system: x.clone(), ..SystemResult::default() })
            .collect();
        'runs: for run in 0..s.p.storm_runs {
            for r in res.iter_mut() {
                if s.over_budget() {
                    f.notes.push(format!("stopped at run {} for the time budget", run + 1));
                    break 'runs;
                }
                // The echo is a kernel figure: no fixed-rate runs for it;
                // rounds past --runs are storms only.
                let fixed = r.system != "echo" && run < s.p.runs;
                s.storm(r, run, unicast, fixed);
            }
        }
        f.systems = res;
        f.notes.push(format!(
            "closed loop: window 256 over 8 listener sockets, NACKs sent as GSO batches, {} per run, \
             {} runs (the last {} storm only); \
             open loop: {} per rate, {} runs; \
             CPU is the server process's own time (schedstat) over each phase, per answered NACK; \
             the engines' prefill is published and cached before the storm, outside its CPU",
            s.p.storm,
            s.p.storm_runs,
            s.p.storm_runs - s.p.runs,
            s.p.fixed,
            s.p.runs
        ));
        s.save(f, t)?;
    }
    if run_c {
        println!("\n(c) ingest at the maximum publish rate, then at 80% of each system's max");
        let t = Instant::now();
        s.machine = Machine::describe();
        let mut f = s.file(
            "ingest",
            "Ingest: frames cached per second at the maximum publish rate, and loss at 80% of it",
        );
        let mut sys = vec!["sink".to_string()];
        sys.extend(backends.iter().cloned());
        let mut per: Vec<Vec<SystemResult>> = vec![vec![]; sys.len()];
        'runs: for run in 0..s.p.runs {
            for (i, x) in sys.iter().enumerate() {
                if s.over_budget() {
                    break 'runs;
                }
                let mut r = s.ingest(x);
                r.ingests = IngestRun::of(&r, run).into_iter().collect();
                per[i].push(r);
            }
        }
        f.notes.push(format!(
            "{} runs per system, interleaved (sink, then each back end, then again)",
            s.p.runs
        ));
        f.systems = per.into_iter().map(|v| merge_runs(v, ingest_max)).collect();
        s.save(f, t)?;
    }
    if run_d {
        println!("\n(d) lossy listener gap fill at 1% drop");
        let t = Instant::now();
        s.machine = Machine::describe();
        let mut f = s.file(
            "gapfill",
            "Lossy listener gap fill at 1% drop (lab: 5000 frames/s, reference rate limits)",
        );
        let mut per: Vec<Vec<SystemResult>> = vec![vec![]; backends.len()];
        'runs: for _ in 0..s.p.runs {
            for (i, b) in backends.iter().enumerate() {
                if s.over_budget() {
                    break 'runs;
                }
                per[i].push(s.lab(b));
            }
        }
        f.systems = per
            .into_iter()
            .map(|v| merge_runs(v, |r| Some(r.lab.as_ref()?.listener.nack_to_fill.p50_us)))
            .collect();
        s.save(f, t)?;
    }
    if run_mem {
        println!("\nmemory: 1,000,000 frames of 300 bytes in one cache shard");
        let t = Instant::now();
        s.machine = Machine::describe();
        let mut f = s.file(
            "memory",
            "Resident memory per cached frame beyond its bytes (1,000,000 × 300 B)",
        );
        let mut runs = vec![];
        for _ in 0..s.p.runs {
            if s.over_budget() {
                break;
            }
            let mut r = SystemResult { system: "cache".into(), ..SystemResult::default() };
            s.seq += 1;
            let json = s.tmp.join(format!("{:03}-memory.json", s.seq));
            let mut cmd = Command::new(&s.exe);
            cmd.args(["memory", "--frames", "1000000", "--size", "300", "--json"]).arg(&json);
            s.commands.push(proc::shell_line(&cmd));
            println!("  $ {}", proc::shell_line(&cmd));
            match Child::spawn("memory", cmd, true).map_err(|e| e.to_string()).and_then(|mut c| {
                c.wait_timeout(Duration::from_secs(120))
                    .filter(|st| st.success())
                    .ok_or_else(|| format!("memory failed: {}", c.log()))
            }) {
                Ok(_) => r.memory = Some(read_json(&json)?),
                Err(e) => r.error = Some(e),
            }
            runs.push(r);
        }
        f.systems.push(merge_runs(runs, |r| Some(r.memory.as_ref()?.overhead_per_frame)));
        s.save(f, t)?;
    }
    if run_f {
        println!("\n(f) scaling: closed-loop unicast storm, engine on 1 worker, then on 2");
        let t = Instant::now();
        s.machine = Machine::describe();
        let mut f = s.file(
            "scaling",
            "Scaling: answered NACKs/s with 1 and 2 engine workers (closed loop, unicast + ACK)",
        );
        // io_uring unless only other back ends were asked for.
        let backend = if backends.iter().any(|b| b == "uring") {
            "uring".to_string()
        } else {
            backends.first().cloned().unwrap_or_else(|| "uring".into())
        };
        let one = s.a.server_cpu.to_string();
        let two = format!("{},{}", s.a.server_cpu, s.a.load_cpu);
        let mut r = SystemResult { system: backend.clone(), ..SystemResult::default() };
        'runs: for run in 0..s.p.runs {
            for cpus in [&one, &two] {
                if s.over_budget() {
                    f.notes.push(format!("stopped at run {} for the time budget", run + 1));
                    break 'runs;
                }
                s.scale(&mut r, &backend, cpus, run);
            }
        }
        f.notes.push(format!(
            "closed loop as in (a): window 256 over 8 listener sockets and 8 flows, NACKs sent as GSO \
             batches, {} per run; 1 worker \
             `--cpus {one}`, 2 workers `--cpus {two}`, interleaved; the load generator is pinned to CPU {}, \
             so with 2 workers one engine worker shares that CPU with it (nproc {})",
            s.p.storm, s.a.load_cpu, s.machine.nproc
        ));
        f.systems.push(r);
        s.save(f, t)?;
    }
    let _ = std::fs::remove_dir_all(&s.tmp);
    Ok(())
}

fn ingest_max(r: &SystemResult) -> Option<f64> {
    let p = r.publish.as_ref()?;
    if r.system == "sink" {
        Some(r.server.as_ref()?.received as f64 / p.duration_s.max(1e-9))
    } else {
        p.engine_cached_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_513), "2026-03-01");
        assert_eq!(today().len(), 10);
    }

    #[test]
    fn spreads_and_medians() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(&[]), None);
        assert_eq!(median_index(&[5.0, 9.0, 1.0]), Some(0));
        assert_eq!(per_nack(Some(1_000), Some(2_001_000), 1000), Some(2.0));
        assert!(cpu_ns(std::process::id()).is_some());
    }
}
