//! `lab`: the README's first command. Starts an engine on loopback, a
//! publisher and a lossy listener, runs for a fixed time, and prints what
//! was lost, what was recovered and how fast. Exits 0 if every gap was
//! filled while its frames were within their TTL.
//!
//! With `--soak-interval` it is a soak: every interval it reads the
//! listener's counters, the engine's /metrics and the engine's RSS, prints
//! one row (gaps, fills, what the chain tier admits, answers by kind,
//! refusals by tier, evictions, RSS) and at the end writes the rows to the
//! JSON (`soak`) and `--csv`. The run still stops at `--duration` plus at
//! most `--grace`; the exit status then says whether every publishing
//! interval filled at least 90 % of what the limits admit (see
//! [`crate::soak`]). The issue-18 overload, scaled to five minutes:
//!
//! ```text
//! ricochet-loadgen lab --duration 300s --soak-interval 60s --interval 10s \
//!     --rate 5000 --drop 2% --engine-arg=--cache-max-bytes=64MiB \
//!     --engine-arg=--rl-ip-rate=100000 --engine-arg=--rl-ip-burst=10000 \
//!     --json perf/soak/overload.json --csv perf/soak/overload.csv
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cmd::listen::{Fraction, ListenCore, ListenReport, report_rows};
use crate::cmd::publish::{Publisher, pause};
use crate::escalate;
use crate::metrics;
use crate::out::{self, Clock, Common, Dur, Progress, row};
use crate::pace::Schedule;
use crate::proc::{self, EnginePorts};
use crate::soak::{self, ChainTier, Sample, Soak, SoakReport};
use crate::source::{FlowSet, Mix, PayloadDist};

/// `lab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// The engine binary [default: `ricochet` next to this executable, built
    /// first when run under cargo].
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Engine packet backend: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// CPUs for the engine's workers (its --cpus) [default: all].
    #[arg(long)]
    pub engine_cpus: Option<String>,
    /// Frames per second published.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Transaction flows.
    #[arg(long, default_value_t = 8)]
    pub flows: usize,
    /// Frame version mix (tx, fragment, block, anchor, legacy weights).
    #[arg(long, default_value = "tx=90,fragment=4,block=3,anchor=3")]
    pub mix: Mix,
    /// Payload sizes (N, fixed:N, uniform:LO-HI, txlike).
    #[arg(long, default_value = "txlike")]
    pub payload: PayloadDist,
    /// Fraction of frames the listener drops on purpose.
    #[arg(long, default_value = "1%")]
    pub drop: Fraction,
    /// Also ask the engine for unicast retransmits (--beacon-flags-unicast).
    #[arg(long)]
    pub unicast: bool,
    /// Longest wait after publishing stops for open gaps to resolve.
    #[arg(long, default_value = "15s")]
    pub grace: Dur,
    /// Extra engine flag (repeatable), e.g. --engine-arg=--rl-ip-rate=1000.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    pub engine_args: Vec<String>,
    /// Soak mode: a row per interval of this length (gaps, fills against
    /// what the chain tier admits, answers by kind, engine refusals, RSS);
    /// exit status 0 only if every publishing interval filled ≥ 90 % of it.
    #[arg(long)]
    pub soak_interval: Option<Dur>,
    /// Soak mode: also write the rows as CSV to this file.
    #[arg(long, requires = "soak_interval")]
    pub csv: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// `lab` results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LabResult {
    /// Engine backend asked for.
    pub backend: String,
    /// The engine's command line.
    pub engine_command: String,
    /// Publish rate.
    pub rate: f64,
    /// Publishing time, seconds.
    pub duration_s: f64,
    /// Drop fraction.
    pub drop: f64,
    /// Frames published.
    pub frames_published: u64,
    /// The listener's report.
    pub listener: ListenReport,
    /// Every gap filled, none abandoned, expired or left open.
    pub all_filled: bool,
    /// Engine counter deltas.
    pub engine: BTreeMap<String, f64>,
    /// Per-interval rows of a soak (`--soak-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakReport>,
}

/// Runs the lab; the result says whether every gap was filled.
pub fn run(a: LabArgs) -> Result<LabResult, String> {
    let chain = ChainTier::from_engine_args(&a.engine_args)?;
    let bin = proc::find_engine(a.engine.as_deref())?;
    let ports = EnginePorts::pick();
    let mut extra: Vec<String> =
        vec!["--backend".into(), a.backend.clone(), "--beacon-interval".into(), "1s".into()];
    if let Some(c) = &a.engine_cpus {
        extra.extend(["--cpus".into(), c.clone()]);
    }
    if a.unicast {
        // The lab's listener is on loopback; a source outside
        // --proxy-allow gets no copies over 176 bytes (the 3x bound).
        extra.extend([
            "--beacon-flags-unicast=true".into(),
            "--proxy-allow".into(),
            "127.0.0.1".into(),
        ]);
    }
    extra.extend(a.engine_args.iter().cloned());
    let mut engine = proc::start_engine(&bin, &ports, &extra)?;
    // Pin only now: a child inherits the affinity mask, and the engine
    // refuses --cpus outside it.
    a.common.pin()?;
    if !a.common.quiet {
        println!("engine: {}", engine.command);
    }
    let before = metrics::scrape(ports.admin);
    let flows = FlowSet::new(a.flows, a.mix, 2, a.common.seed);
    let groups = flows.groups();
    let cfg = escalate::Config::default();
    let mut core = ListenCore::new(
        crate::net::Groups::Ipv4Lab,
        ports.listen,
        Some(ports.egress),
        &groups,
        vec![ports.nack_addr().into()],
        a.drop.0,
        cfg,
        a.common.seed,
    )
    .map_err(|e| format!("listener: {e}"))?;
    let mut publisher = Publisher::new(
        crate::net::Groups::Ipv4Lab,
        ports.listen,
        flows,
        a.payload,
        a.common.seed,
        16,
    )
    .map_err(|e| e.to_string())?;

    let duration = a.common.duration.0;
    let dur_ns = duration.as_nanos() as u64;
    let rate = a.rate;
    let cpu = a.common.cpu;
    let (tx, rx) = mpsc::channel::<(u64, Vec<(u64, u64)>)>();
    let pub_thread = std::thread::spawn(move || {
        if let Some(c) = cpu {
            let _ = crate::net::pin_to_cpu(c);
        }
        let clock = Clock::default();
        let sched = Schedule::new(0, rate);
        let total = sched.total(dur_ns);
        while publisher.sent < total && !proc::stopped() {
            let now = clock.now_ns();
            let due = sched.due(now).min(total).saturating_sub(publisher.sent);
            if due == 0 {
                pause(sched.wait_for(publisher.sent, now));
            } else {
                publisher.send(due as usize);
            }
        }
        let _ = tx.send((publisher.sent, publisher.tails()));
    });

    let progress = Progress::new(duration, a.common.quiet);
    let clock = Clock::default();
    let iv_ns = a.common.interval.0.as_nanos().max(1) as u64;
    let mut next_iv = iv_ns;
    let mut published = None;
    let mut tails_at: Option<u64> = None;
    let mut tails = vec![];
    let mut done_at = None;
    let grace_ns = a.grace.0.as_nanos() as u64;
    let sample = |core: &ListenCore, engine: &proc::Child, now: u64| Sample {
        t_s: now as f64 / 1e9,
        stats: core.report_stats(),
        gaps_by_flow: core.gaps_by_flow().clone(),
        engine: metrics::scrape(ports.admin),
        rss_kib: soak::rss_kib(engine.id()),
    };
    let soak_ns = a.soak_interval.map(|d| d.0.as_nanos().max(1) as u64);
    let mut soak = soak_ns.map(|iv| {
        progress.line(&soak::title());
        (Soak::new(chain, iv as f64 / 1e9, sample(&core, &engine, clock.now_ns())), iv)
    });
    let mut next_soak = soak_ns.unwrap_or(u64::MAX).min(dur_ns);
    loop {
        if proc::stopped() {
            return Err("interrupted".into());
        }
        if let Some(status) = engine.try_wait() {
            return Err(format!("the engine exited during the lab ({status}):\n{}", engine.log()));
        }
        core.step(&clock, 2_000_000).map_err(|e| e.to_string())?;
        let now = clock.now_ns();
        if published.is_none()
            && let Ok((n, t)) = rx.try_recv()
        {
            published = Some(n);
            tails = t;
            // Let frames still in flight land before declaring the tail.
            tails_at = Some(now + 200_000_000);
            done_at = Some(now);
        }
        if let Some(t) = tails_at.filter(|&t| now >= t) {
            let _ = t;
            for &(k, last) in &tails {
                core.tail(now, k, last);
            }
            tails_at = None;
            tails.clear();
        }
        if now >= next_iv {
            let r = core.report();
            progress.line(&format!(
                "t={:5.1}s  frames {:>7}  dropped {:>5}  gaps {:>5}  filled {:>5}  open {:>3}  NACKs {:>5}",
                next_iv as f64 / 1e9,
                r.counts.frames_arrived,
                r.counts.dropped_on_purpose,
                r.recovery.gaps_opened,
                r.recovery.filled,
                r.open_at_end,
                r.recovery.nacks_sent
            ));
            progress.set(Duration::from_nanos(now.min(dur_ns)));
            next_iv += iv_ns;
        }
        if let Some((s, iv)) = soak.as_mut()
            && next_soak <= dur_ns
            && now >= next_soak
        {
            let row = s.push(sample(&core, &engine, now), true);
            progress.line(&soak::line(row));
            next_soak = if next_soak == dur_ns { u64::MAX } else { (next_soak + *iv).min(dur_ns) };
        }
        if let Some(d) = done_at {
            if tails_at.is_none() && core.open_gaps() == 0 {
                break;
            }
            if now > d + grace_ns {
                break;
            }
        }
    }
    progress.finish();
    let _ = pub_thread.join();
    std::thread::sleep(Duration::from_millis(300));
    let soak = soak.map(|(mut s, _)| {
        // What was filled after publishing stopped: shown, not judged.
        s.push(sample(&core, &engine, clock.now_ns()), false);
        s.finish()
    });
    let after = metrics::scrape(ports.admin);
    engine.stop(Duration::from_secs(3));
    let listener = core.report();
    let s = &listener.recovery;
    let all_filled =
        s.filled == s.gaps_opened.saturating_sub(s.voided) && listener.open_at_end == 0;
    let r = LabResult {
        backend: a.backend.clone(),
        engine_command: engine.command.clone(),
        rate: a.rate,
        duration_s: duration.as_secs_f64(),
        drop: a.drop.0,
        frames_published: published.unwrap_or(0),
        listener,
        all_filled,
        engine: metrics::delta(&before, &after),
        soak,
    };
    let mut rows = vec![row("frames published", r.frames_published)];
    rows.extend(report_rows(&r.listener));
    let e = |k: &str| r.engine.get(k).copied().unwrap_or(0.0);
    rows.push(row(
        "engine: cached / NACKs / hits / misses",
        format!(
            "{} / {} / {} / {}",
            e("ricochet_frames_cached_total"),
            e("ricochet_nacks_total"),
            e("ricochet_cache_hits_total"),
            e("ricochet_cache_misses_total")
        ),
    ));
    rows.push(row(
        "result",
        if r.all_filled { "every gap filled" } else { "SOME GAPS NOT FILLED" },
    ));
    out::print_table("lab summary", &rows);
    if let Some(s) = &r.soak {
        soak::print(s);
        if let Some(p) = &a.csv {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(p, soak::csv(s)).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    out::maybe_json(&a.common.json, &r)?;
    Ok(r)
}
