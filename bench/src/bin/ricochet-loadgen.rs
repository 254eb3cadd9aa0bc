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
    #[command(after_help = "Example (builds and starts the engine itself):\n  \
        ricochet-loadgen lab --duration 20s --rate 5000 --drop 1%")]
    Lab(lab::LabArgs),
    /// Publish BRC-124 frames like a shard-proxy (IPv4 lab or BRC-129 IPv6 groups).
    #[command(after_help = "Examples:\n  \
        ricochet-loadgen publish --port 9001 --rate 50k --duration 10s --metrics http://127.0.0.1:9090/metrics\n  \
        ricochet-loadgen publish --addressing ipv6 --scope site --mc-group-id 0x000b --mc-iface eth0 --port 9001")]
    Publish(publish::PublishArgs),
    /// Send NACKs from many listeners (open loop or max) and time the answers.
    #[command(after_help = "Examples:\n  \
        # prefill 100k frames, then NACK them as fast as a window of 256 allows\n  \
        ricochet-loadgen nack --target 127.0.0.1:9300 --listen-port 9001 --prefill 100000 \\\n      \
        --rate max --metrics http://127.0.0.1:9090/metrics\n  \
        # the same, with NACKs sent as GSO batches: cheaper for this side, so it can saturate a server\n  \
        ricochet-loadgen nack --target 127.0.0.1:9300 --listen-port 9001 --prefill 100000 --rate max --gso\n  \
        # prefill only, then NACK the same frames in a second run (time the NACKs apart from the ingest)\n  \
        ricochet-loadgen nack --target 127.0.0.1:9300 --listen-port 9001 --prefill 100000 --prefill-only \\\n      \
        --metrics http://127.0.0.1:9090/metrics\n  \
        ricochet-loadgen nack --target 127.0.0.1:9300 --prefill 100000 --no-publish --rate max --gso\n  \
        # IPv6 endpoint, BRC-129 site-scope groups on eth0, 30k NACK/s, count multicast retransmits\n  \
        ricochet-loadgen nack --target '[2001:db8::1]:9300' --scope site --mc-group-id 0x000b \\\n      \
        --mc-iface eth0 --listen-port 9001 --retransmit-port 9001 --prefill 100000 --rate 30k\n\n\
        Unanswered NACKs are not always lost: with --metrics the summary says how many the endpoint \
        refused for its rate limits and how many datagrams its kernel (or ours, SO_RXQ_OVFL) dropped.")]
    Nack(nack::NackArgs),
    /// Act as a lossy listener: track gaps, NACK them with the reference's escalation.
    #[command(after_help = "Example:\n  \
        ricochet-loadgen listen --port 9001 --retransmit-port 9002 --endpoint 127.0.0.1:9300,'[::1]:9300' --drop 1%")]
    Listen(listen::ListenArgs),
    /// Baseline: answer each NACK with the frames asked for + an ACK each (what
    /// ricochet sends), by recvmmsg/sendmmsg (--gso: UDP GSO runs); --answer
    /// echo sends one 16-byte datagram instead (the kernel's per-datagram floor).
    #[command(after_help = "Example (the same frame set as the nack command below):\n  \
        ricochet-loadgen reflect --port 9300 --prefill 100000 --flows 8 --payload 300 --gso --cpu 0 &\n  \
        ricochet-loadgen nack --target 127.0.0.1:9300 --prefill 100000 --flows 8 --payload 300 --no-publish --cpu 1")]
    Reflect(reflect::ReflectArgs),
    /// Baseline: join the data groups and count what recvmmsg delivers.
    #[command(after_help = "Example:\n  \
        ricochet-loadgen sink --port 9001 --groups 0,1,2,3 --duration 30s")]
    Sink(reflect::SinkArgs),
    /// Fill the retry cache with N frames and report resident bytes per frame.
    #[command(after_help = "Example:\n  ricochet-loadgen memory --frames 1000000 --size 300")]
    Memory(memory::MemoryArgs),
    /// Run the side-by-side benchmark suite (scripts/bench.sh calls this).
    #[command(after_help = "Examples:\n  \
        ricochet-loadgen bench --quick --out /tmp/bench   # about 2 minutes, for before/after checks\n  \
        ricochet-loadgen bench --runs 3 --workloads a,b --backends uring")]
    Bench(bench::BenchArgs),
    /// Regenerate perf/REPORT.md and its SVG charts from perf/results/*.json.
    #[command(after_help = "Example:\n  ricochet-loadgen report --results perf/results --out perf")]
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
