//! `bench`: the side-by-side suite that `scripts/bench.sh` runs.
//!
//! Every system under test runs on the same CPU (`--server-cpu`, 0): the
//! `reflect` and `sink` baselines pinned with `--cpu`, the engine with
//! `--cpus`; every load phase runs pinned to `--load-cpu` (1). Each phase is
//! a child process (this same binary with a subcommand and `--json`), so
//! every number in the report comes with the exact command that produced
//! it. Workloads:
//!
//! - **a** NACK storm, 100 % hits, unicast retransmit + ACK
//!   (engine: `--beacon-flags-unicast=true --beacon-flags-multicast=false`);
//!   closed loop with a window of outstanding NACKs, so the figure is the
//!   sustained answer rate.
//! - **e** latency at 50 % of each system's own (a) rate, open loop,
//!   corrected for coordinated omission (same server instance as a).
//! - **b** NACK storm, multicast retransmit + ACK (engine defaults).
//! - **c** ingest at the maximum publish rate vs the `sink` baseline, then
//!   at 80 % of each system's measured maximum (loss must be 0).
//! - **d** lossy listener gap fill at 1 % drop (`lab`).
//! - **memory**: 1 000 000 frames of 300 B in a cache (`memory`).
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
use crate::out::{self, Machine};
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
    /// Workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,memory")]
    pub workloads: Vec<String>,
    /// Engine backends to compare.
    #[arg(long, value_delimiter = ',', default_value = "epoll,uring")]
    pub backends: Vec<String>,
}

/// One system's results in a workload file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SystemResult {
    /// `reflect`, `sink`, `epoll`, `uring` or `cache`.
    pub system: String,
    /// NACK storm or latency run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<NackResult>,
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
    /// Gap-fill lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabResult>,
    /// Memory benchmark.
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
    /// The machine it ran on.
    pub machine: Machine,
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
    latency: &'static str,
    ingest: &'static str,
    lab: &'static str,
    prefill: u64,
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

    fn server(&mut self, sub: &str, port: u16) -> Result<(Child, PathBuf), String> {
        self.seq += 1;
        let json = self.tmp.join(format!("{:03}-{sub}.json", self.seq));
        let mut cmd = Command::new(&self.exe);
        cmd.arg(sub)
            .args(["--port", &port.to_string(), "--cpu", &self.a.server_cpu.to_string()])
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
        let ports = EnginePorts::pick();
        let mut flags: Vec<String> = vec![
            "--cpus".into(),
            self.a.server_cpu.to_string(),
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
            ..WorkloadFile::default()
        }
    }

    fn save(&mut self, mut f: WorkloadFile, started: Instant) -> Result<(), String> {
        f.commands = std::mem::take(&mut self.commands);
        f.wall_s = started.elapsed().as_secs_f64();
        let path = self.a.out.join(format!("{}-{}.json", self.date, f.workload));
        out::write_json(&path, &f)?;
        println!("  → {}", path.display());
        Ok(())
    }

    fn nack_args(
        &self,
        ports: Option<&EnginePorts>,
        target: u16,
        rate: &str,
        duration: &str,
        publish: bool,
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
            "--rate".into(),
            rate.into(),
            "--duration".into(),
            duration.into(),
        ];
        match (ports, publish) {
            (Some(p), true) => {
                v.extend([
                    "--listen-port".into(),
                    p.listen.to_string(),
                    "--metrics-addr".into(),
                    p.admin.to_string(),
                ]);
            }
            (Some(p), false) => {
                v.extend(["--no-publish".into(), "--metrics-addr".into(), p.admin.to_string()]);
            }
            (None, _) => v.push("--no-publish".into()),
        }
        v
    }

    /// Storm (and, for unicast, the 50 % latency run) against one system.
    fn storm(
        &mut self,
        system: &str,
        unicast: bool,
        with_latency: bool,
    ) -> (SystemResult, Option<SystemResult>) {
        let mut r = SystemResult { system: system.into(), ..SystemResult::default() };
        let mut lat =
            with_latency.then(|| SystemResult { system: system.into(), ..SystemResult::default() });
        let res = (|| -> Result<(), String> {
            let (_guard, target, ports) = if system == "reflect" {
                let port = proc::free_udp_port();
                let (c, _) = self.server("reflect", port)?;
                (c, port, None)
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
                }
                let (c, p) = self.engine(system, &extra)?;
                (c, p.nack, Some(p))
            };
            let limit = Duration::from_secs(120);
            let storm = self.p.storm;
            let args = self.nack_args(ports.as_ref(), target, "max", storm, true);
            let json = self.load("nack", &args, limit)?;
            let n: NackResult = read_json(&json)?;
            let max = n.throughput;
            r.nack = Some(n);
            if let Some(l) = lat.as_mut() {
                let rate = format!("{:.0}", (max * 0.5).max(100.0));
                let latency = self.p.latency;
                let args = self.nack_args(ports.as_ref(), target, &rate, latency, false);
                let json = self.load("nack", &args, limit)?;
                l.nack = Some(read_json(&json)?);
            }
            Ok(())
        })();
        if let Err(e) = res {
            eprintln!("  ! {system}: {e}");
            r.error = Some(e.clone());
            if let Some(l) = lat.as_mut() {
                l.error = Some(e);
            }
        }
        (r, lat)
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
                    let (mut c, json) = self.server("sink", port)?;
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

/// Runs the suite.
pub fn run(a: BenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let engine = proc::find_engine(a.engine.as_deref())?;
    let tmp = std::env::temp_dir().join(format!("ricochet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let p = if a.quick {
        Phases { quick: true, storm: "3s", latency: "4s", ingest: "3s", lab: "5s", prefill: 32_768 }
    } else {
        Phases {
            quick: false,
            storm: "10s",
            latency: "15s",
            ingest: "8s",
            lab: "20s",
            prefill: 100_000,
        }
    };
    println!(
        "ricochet bench ({}): servers on CPU {}, load on CPU {}",
        if a.quick { "quick" } else { "full" },
        a.server_cpu,
        a.load_cpu
    );
    let machine = Machine::describe();
    let mut s = Suite {
        date: a.date.clone().unwrap_or_else(today),
        a,
        exe,
        engine,
        p,
        tmp,
        machine,
        commands: vec![],
        seq: 0,
    };
    let w = |x: &str| s.a.workloads.iter().any(|y| y == x);
    let (run_a, run_b, run_c, run_d, run_e, run_mem) =
        (w("a"), w("b"), w("c"), w("d"), w("e"), w("memory"));
    let backends = s.a.backends.clone();
    let mut systems = vec!["reflect".to_string()];
    systems.extend(backends.iter().cloned());

    if run_a || run_e {
        println!(
            "\n(a) NACK storm, 100% hits, unicast retransmit + ACK; (e) latency at 50% of each system's max"
        );
        let t = Instant::now();
        let mut fa = s.file(
            "nack-unicast",
            "NACK storm, 100% hits, unicast retransmit + ACK (closed loop, window 256)",
        );
        let mut fe = s.file(
            "latency",
            "NACK→ACK latency at 50% of each system's own max rate (open loop, CO-corrected)",
        );
        for sys in &systems {
            let (r, l) = s.storm(sys, true, run_e);
            fa.systems.push(r);
            if let Some(l) = l {
                fe.systems.push(l);
            }
        }
        fe.notes.push(
            "each system's rate is half of its own throughput in the nack-unicast run just before"
                .into(),
        );
        let commands = s.commands.clone();
        if run_e {
            fe.commands = commands;
            let path = s.a.out.join(format!("{}-latency.json", s.date));
            fe.wall_s = t.elapsed().as_secs_f64();
            out::write_json(&path, &fe)?;
        }
        s.save(fa, t)?;
    }
    if run_b {
        println!("\n(b) NACK storm, 100% hits, multicast retransmit + ACK");
        let t = Instant::now();
        let mut f = s.file(
            "nack-multicast",
            "NACK storm, 100% hits, multicast retransmit + ACK (closed loop, window 256)",
        );
        for sys in &systems {
            f.systems.push(s.storm(sys, false, false).0);
        }
        s.save(f, t)?;
    }
    if run_c {
        println!("\n(c) ingest at the maximum publish rate, then at 80% of each system's max");
        let t = Instant::now();
        let mut f = s.file(
            "ingest",
            "Ingest: frames cached per second at the maximum publish rate, and loss at 80% of it",
        );
        let mut sys = vec!["sink".to_string()];
        sys.extend(backends.iter().cloned());
        for x in &sys {
            f.systems.push(s.ingest(x));
        }
        s.save(f, t)?;
    }
    if run_d {
        println!("\n(d) lossy listener gap fill at 1% drop");
        let t = Instant::now();
        let mut f = s.file(
            "gapfill",
            "Lossy listener gap fill at 1% drop (lab: 5000 frames/s, reference rate limits)",
        );
        for b in &backends {
            f.systems.push(s.lab(b));
        }
        s.save(f, t)?;
    }
    if run_mem {
        println!("\nmemory: 1,000,000 frames of 300 bytes in one cache shard");
        let t = Instant::now();
        let mut f = s.file(
            "memory",
            "Resident memory per cached frame beyond its bytes (1,000,000 × 300 B)",
        );
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
        f.systems.push(r);
        s.save(f, t)?;
    }
    let _ = std::fs::remove_dir_all(&s.tmp);
    Ok(())
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
}
