//! `ricochet-loadgen`: load generator, baselines and benchmark driver for
//! ricochet. See `ricochet-loadgen --help`; the README's first command is
//! `cargo run --release -p ricochet-bench --bin ricochet-loadgen -- lab`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ricochet_bench::cmd::{bench, lab, listen, memory, nack, publish, reflect};
use ricochet_bench::{proc, report};

#[derive(Debug, Parser)]
#[command(
    name = "ricochet-loadgen",
    version,
    about = "Load generator, baselines and benchmarks for the ricochet retry endpoint"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start an engine, a publisher and a lossy listener on loopback; print
    /// what was lost and recovered (exit 0 if every gap was filled).
    Lab(lab::LabArgs),
    /// Publish BRC-124 frames like a shard-proxy (IPv4 lab groups).
    Publish(publish::PublishArgs),
    /// Send NACKs from many listeners (open loop or max) and time the answers.
    Nack(nack::NackArgs),
    /// Act as a lossy listener: track gaps, NACK them with the reference's escalation.
    Listen(listen::ListenArgs),
    /// Baseline: answer every datagram with one 16-byte datagram (recvmmsg/sendmmsg).
    Reflect(reflect::ReflectArgs),
    /// Baseline: join the data groups and count what recvmmsg delivers.
    Sink(reflect::SinkArgs),
    /// Fill the retry cache with N frames and report resident bytes per frame.
    Memory(memory::MemoryArgs),
    /// Run the side-by-side benchmark suite (scripts/bench.sh calls this).
    Bench(bench::BenchArgs),
    /// Regenerate perf/REPORT.md and its SVG charts from perf/results/*.json.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    proc::install_stop_handler();
    let cli = Cli::parse();
    let result = match cli.cmd {
        // A soak is judged by its intervals, not by every gap being filled.
        Cmd::Lab(a) => lab::run(a).map(|r| r.soak.map_or(r.all_filled, |s| s.healthy)),
        Cmd::Publish(a) => publish::run(a).map(|_| true),
        Cmd::Nack(a) => nack::run(a).map(|_| true),
        Cmd::Listen(a) => listen::run(a).map(|_| true),
        Cmd::Reflect(a) => reflect::reflect(a).map(|_| true),
        Cmd::Sink(a) => reflect::sink(a).map(|_| true),
        Cmd::Memory(a) => memory::run(a).map(|_| true),
        Cmd::Bench(a) => bench::run(a).map(|_| true),
        Cmd::Report(a) => report::run(a).map(|_| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ricochet-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
