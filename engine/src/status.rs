//! `ricochet status`: a one-screen summary of a running endpoint for its
//! operator, read from the endpoint's admin API — the daemon's
//! `redis-cli info` / `nodetool status`.
//!
//! It scrapes `/metrics` twice, an interval apart (1 s, or the `--watch`
//! interval between refreshes), for the per-core rates, and reads
//! `/readyz` and, when the token (or `--debug-public`) lets it, `/debug/stats`
//! for the backend, steering and each worker's CPU. Counts are the
//! endpoint's cumulative counters, summed over cores, so they match what a
//! `/metrics` scrape shows.
//!
//! The client is hyper's HTTP/1.1 client (`src/admin/client.rs`) on a
//! current-thread tokio runtime: one connection per request
//! (`Connection: close`), nothing kept open on the endpoint's admin
//! listener, whose connection caps it must not strain. [`render`] is a pure
//! function of two [`Snapshot`]s, tested without an endpoint.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::admin::client;
use crate::config;

/// `ricochet status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The endpoint's admin address (its --metrics-addr; :PORT means this host)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9400")]
    pub admin: String,
    /// Refresh every INTERVAL (a Go duration, default 2s) until interrupted;
    /// rates are then since the previous refresh
    #[arg(
        long,
        value_name = "INTERVAL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2s",
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
    /// File holding the admin bearer token, to read /debug/stats (backend,
    /// steering, worker CPUs) from an endpoint without --debug-public
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Parser)]
#[command(name = "ricochet status", about = "Summarise a running endpoint from its admin API")]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// Parses `status`'s own command line (`argv` from the word `status` on),
/// then [`run`]s it.
pub fn main(argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    run(&Cli::parse_from(argv).args)
}

/// Shows the summary once (two scrapes 1 s apart) or, with `--watch`,
/// every interval. Exit 1 when the admin address does not answer (once),
/// 2 for an unusable `--admin` or token file.
pub fn run(args: &Args) -> ExitCode {
    let target = match Target::new(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ricochet status: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(every) = args.watch else {
        let first = match target.scrape() {
            Ok(s) => s,
            Err(e) => return unreachable_admin(&target, &e),
        };
        std::thread::sleep(Duration::from_secs(1));
        return match target.scrape() {
            Ok(now) => {
                print!("{}", render(&target.shown, &first, &now));
                ExitCode::SUCCESS
            }
            Err(e) => unreachable_admin(&target, &e),
        };
    };
    let terminal = std::io::stdout().is_terminal();
    let mut prev: Option<Snapshot> = None;
    loop {
        let screen = match target.scrape() {
            Ok(now) => {
                let text = render(&target.shown, prev.as_ref().unwrap_or(&now), &now);
                prev = Some(now);
                text
            }
            Err(e) => {
                prev = None;
                format!("{}\n", not_answering(&target, &e))
            }
        };
        let mut out = std::io::stdout().lock();
        // A terminal gets one screen redrawn in place; a pipe or file gets
        // each refresh after a blank line.
        let clear = if terminal { "\x1b[H\x1b[2J" } else { "\n" };
        let _ = write!(out, "{clear}{screen}");
        let _ = out.flush();
        drop(out);
        std::thread::sleep(every);
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match config::parse_go_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("the interval must be at least 100ms".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn not_answering(target: &Target, e: &str) -> String {
    format!(
        "the admin API at {} ({}) did not answer: {e}; is ricochet running there, and is --admin \
         its --metrics-addr?",
        target.shown, target.addr
    )
}

fn unreachable_admin(target: &Target, e: &str) -> ExitCode {
    eprintln!("ricochet status: {}", not_answering(target, e));
    ExitCode::from(1)
}

/// Where the admin API is, and how to ask it.
struct Target {
    /// `--admin` as given.
    shown: String,
    addr: SocketAddr,
    token: Option<String>,
}

impl Target {
    fn new(args: &Args) -> Result<Target, String> {
        let given = args.admin.trim();
        // `:9400`, as --metrics-addr takes it, is this host.
        let host_port =
            if given.starts_with(':') { format!("127.0.0.1{given}") } else { given.to_owned() };
        let addr = host_port
            .to_socket_addrs()
            .map_err(|e| {
                format!("--admin {given:?}: {e}; expected HOST:PORT such as 127.0.0.1:9400")
            })?
            .next()
            .ok_or_else(|| format!("--admin {given:?} resolves to no address"))?;
        let token = match &args.admin_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Target { shown: given.to_owned(), addr, token })
    }

    /// `/metrics` and `/readyz` (either failing to answer is an error) and
    /// `/debug/stats` when it answers 200.
    fn scrape(&self) -> Result<Snapshot, String> {
        let at = Instant::now();
        let (code, body) = get(self.addr, "/metrics", None)?;
        if code != 200 {
            return Err(format!("/metrics answered HTTP {code}"));
        }
        let metrics = Metrics::parse(&body);
        let (code, body) = get(self.addr, "/readyz", None)?;
        let ready = Readiness::parse(code, &body);
        let stats = match get(self.addr, "/debug/stats", self.token.as_deref()) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        };
        Ok(Snapshot { at, metrics, ready, stats })
    }
}

/// One GET over HTTP/1.1: (status, body), within 5 s.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), fetch(addr, path, token))
            .await
            .map_err(|_| format!("{path}: no answer within 5 s"))?
    })
}

async fn fetch(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    use http_body_util::BodyExt as _;
    use hyper::header::CONNECTION;
    let err = |e: &dyn std::fmt::Display| format!("{path}: {e}");
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| err(&e))?;
    let host = addr.to_string();
    let get = client::Get { host: &host, path, token, headers: &[(CONNECTION, "close")] };
    let (resp, _conn) = client::get(stream, &get).await.map_err(|e| err(&e))?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| err(&e))?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// What one refresh read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When `/metrics` was asked for.
    pub at: Instant,
    /// The `/metrics` samples.
    pub metrics: Metrics,
    /// `/readyz`.
    pub ready: Readiness,
    /// `/debug/stats`, when it answered.
    pub stats: Option<serde_json::Value>,
}

/// `/readyz`: its status word and worker counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// HTTP status (200 ready, 503 otherwise).
    pub code: u16,
    /// `ready`, `starting`, `draining` or `warming`.
    pub status: String,
    /// Workers running.
    pub workers_ready: u64,
    /// Workers configured.
    pub workers_total: u64,
}

impl Readiness {
    /// From `/readyz`'s status and JSON body.
    pub fn parse(code: u16, body: &str) -> Readiness {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let count = |k: &str| json.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Readiness {
            code,
            status: json.get("status").and_then(|s| s.as_str()).unwrap_or("unknown").to_owned(),
            workers_ready: count("workers_ready"),
            workers_total: count("workers_total"),
        }
    }
}

/// One series: its labels, in order, and its value.
type Series = (Vec<(String, String)>, f64);

/// Prometheus text samples by family name: each series' labels and value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: BTreeMap<String, Vec<Series>>,
}

impl Metrics {
    /// Reads the text exposition format (comments skipped; a line that
    /// does not parse is skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut series: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, labels(rest.strip_suffix('}').unwrap_or(rest))),
                None => (key, Vec::new()),
            };
            series.entry(name.to_owned()).or_default().push((labels, value));
        }
        Metrics { series }
    }

    /// Whether the endpoint exports `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }

    /// The sum of every series of `name` (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.series.get(name).map_or(0.0, |s| s.iter().map(|(_, v)| v).sum())
    }

    /// Sums of `name` grouped by the value of label `by`.
    pub fn by(&self, name: &str, by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, v) in self.series.get(name).into_iter().flatten() {
            let key = labels.iter().find(|(k, _)| k == by).map_or("", |(_, v)| v.as_str());
            *out.entry(key.to_owned()).or_default() += v;
        }
        out
    }

    /// Label `label` of the first series of `name`.
    pub fn label(&self, name: &str, label: &str) -> Option<&str> {
        let (labels, _) = self.series.get(name)?.first()?;
        labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.as_str())
    }
}

/// `a="x",b="y\"z"` → pairs, unescaped.
fn labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').trim().to_owned(), value));
        rest = &after[end..];
    }
    out
}

/// The summary screen for `now`, with rates since `prev` (the same
/// snapshot, on a first refresh, gives rates of 0).
pub fn render(admin: &str, prev: &Snapshot, now: &Snapshot) -> String {
    let m = &now.metrics;
    let secs = now.at.saturating_duration_since(prev.at).as_secs_f64();
    let rate = |name: &str| per_second(m.sum(name) - prev.metrics.sum(name), secs);
    let n = |name: &str| count(m.sum(name));
    let mut o = String::new();

    let version = m.label("ricochet_build_info", "version").unwrap_or("?");
    let build =
        match (m.label("ricochet_build_info", "commit"), m.label("ricochet_build_info", "profile"))
        {
            (Some(c), Some(p)) => format!(" (commit {c}, profile {p})"),
            (None, Some(p)) => format!(" (profile {p})"),
            _ => String::new(),
        };
    let instance = m.label("target_info", "service_instance_id").unwrap_or("?");
    let _ = writeln!(o, "endpoint      {admin}  instance {instance}  ricochet {version}{build}");

    let r = &now.ready;
    let stat = |k: &str| now.stats.as_ref().and_then(|s| s.get(k));
    let backend = stat("backend").and_then(|b| b.as_str()).unwrap_or("?");
    let steering = match stat("steering").and_then(serde_json::Value::as_bool) {
        Some(true) => "on",
        Some(false) => "off (one-hop forwarding)",
        None => "?",
    };
    let _ = writeln!(
        o,
        "readiness     {} (HTTP {}), workers {}/{}, up {}, backend {backend}, steering {steering}",
        r.status,
        r.code,
        r.workers_ready,
        r.workers_total,
        uptime(m.sum("ricochet_uptime_seconds")),
    );

    let (hits, misses) = (m.sum("ricochet_cache_hits_total"), m.sum("ricochet_cache_misses_total"));
    let ratio = if hits + misses > 0.0 {
        format!("{:.1}%", 100.0 * hits / (hits + misses))
    } else {
        "—".to_owned()
    };
    let _ = writeln!(
        o,
        "nacks         {} ({}/s), hit ratio {ratio} (hits {}, misses {})",
        n("ricochet_nacks_total"),
        rate("ricochet_nacks_total"),
        count(hits),
        count(misses),
    );
    let _ = writeln!(
        o,
        "answers       ACK {}, MISS {}, THROTTLED {}; retransmits multicast {}, unicast {}",
        n("ricochet_acks_sent_total"),
        n("ricochet_misses_sent_total"),
        n("ricochet_throttled_sent_total"),
        n("ricochet_retransmits_multicast_total"),
        n("ricochet_retransmits_unicast_total"),
    );
    let _ = writeln!(
        o,
        "frames        received {} ({}/s), cached {}",
        n("ricochet_frames_received_total"),
        rate("ricochet_frames_received_total"),
        n("ricochet_frames_cached_total"),
    );
    let _ = writeln!(o, "drops         {}", nonzero(&m.by("ricochet_dropped_total", "reason")));
    let _ =
        writeln!(o, "kernel drops  {}", nonzero(&m.by("ricochet_kernel_drops_total", "socket")));
    let _ = writeln!(
        o,
        "rate-limited  ip {}, sequence {}, chain {}, group {}",
        n("ricochet_rate_limited_ip_total"),
        n("ricochet_rate_limited_sequence_total"),
        n("ricochet_rate_limited_chain_total"),
        n("ricochet_rate_limited_group_total"),
    );
    let _ = writeln!(
        o,
        "recovery      queued {}, in flight {}, recovered {}, failed {}, dropped (queue full) {}",
        n("ricochet_recovery_queued_total"),
        n("ricochet_recovery_in_flight"),
        n("ricochet_recovery_recovered_total"),
        n("ricochet_recovery_failed_total"),
        n("ricochet_recovery_dropped_queue_full_total"),
    );
    // The budget is charged more than the frame bytes (index, unused log
    // slots): evictions start when the charge, not `bytes`, reaches it.
    let max_bytes = m.sum("ricochet_cache_max_bytes");
    let budget = if max_bytes > 0.0 {
        let charged = 100.0 * m.sum("ricochet_cache_charged_bytes") / max_bytes;
        format!(", budget {} ({charged:.1}% charged)", human_bytes(max_bytes))
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "cache         entries {}, bytes {} ({}), flows {}{budget}; evicted for the budget: bytes {}, keys {}",
        n("ricochet_cache_entries"),
        n("ricochet_cache_bytes"),
        human_bytes(m.sum("ricochet_cache_bytes")),
        n("ricochet_cache_flows"),
        n("ricochet_cache_evicted_max_bytes_total"),
        n("ricochet_cache_evicted_max_keys_total"),
    );
    if m.has("ricochet_cluster_members_live") {
        let warming = if m.sum("ricochet_cluster_warming") > 0.0 { ", warming" } else { "" };
        let _ = writeln!(
            o,
            "cluster       members {} live of {} known{warming}",
            n("ricochet_cluster_members_live"),
            n("ricochet_cluster_members_known"),
        );
    }
    if m.has("ricochet_dht_routing_peers") {
        let _ = writeln!(
            o,
            "dht           routing peers {}, upstreams {}, size estimate {}",
            n("ricochet_dht_routing_peers"),
            n("ricochet_dht_upstreams"),
            n("ricochet_dht_size_estimate"),
        );
    }

    // Per core: the balance the steering program keeps.
    let cpus: BTreeMap<String, String> = stat("workers")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w.get("worker")?.as_u64()?.to_string(), w.get("cpu")?.to_string())))
        .collect();
    let per = |snap: &Snapshot, name: &str| snap.metrics.by(name, "core");
    let (nacks, nacks_before) =
        (per(now, "ricochet_nacks_total"), per(prev, "ricochet_nacks_total"));
    let frames = per(now, "ricochet_frames_received_total");
    let frames_before = per(prev, "ricochet_frames_received_total");
    let entries = per(now, "ricochet_cache_entries");
    let bytes = per(now, "ricochet_cache_bytes");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:>4} {:>4} {:>9} {:>12} {:>9} {:>12} {:>9} {:>12}",
        "core", "cpu", "nacks/s", "nacks", "frames/s", "frames", "entries", "bytes"
    );
    let mut cores: Vec<&String> = nacks.keys().collect();
    cores.sort_by_key(|c| c.parse::<u64>().unwrap_or(u64::MAX));
    for core in cores {
        let get = |m: &BTreeMap<String, f64>| m.get(core).copied().unwrap_or(0.0);
        let _ = writeln!(
            o,
            "{:>4} {:>4} {:>9} {:>12} {:>9} {:>12} {:>9} {:>12}",
            core,
            cpus.get(core).map_or("?", String::as_str),
            per_second(get(&nacks) - get(&nacks_before), secs),
            count(get(&nacks)),
            per_second(get(&frames) - get(&frames_before), secs),
            count(get(&frames)),
            count(get(&entries)),
            count(get(&bytes)),
        );
    }
    o
}

fn count(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") }
}

fn per_second(delta: f64, secs: f64) -> String {
    if secs > 0.0 { format!("{:.1}", delta.max(0.0) / secs) } else { "0.0".to_owned() }
}

fn nonzero(by: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> =
        by.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| format!("{k} {}", count(*v))).collect();
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

fn uptime(secs: f64) -> String {
    let s = secs as u64;
    match (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, s) => format!("{s}s"),
        (0, 0, m, s) => format!("{m}m{s:02}s"),
        (0, h, m, _) => format!("{h}h{m:02}m"),
        (d, h, _, _) => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP ricochet_nacks_total NACKs.
# TYPE ricochet_nacks_total counter
ricochet_nacks_total{core=\"0\"} 4
ricochet_nacks_total{core=\"1\"} 2
ricochet_cache_hits_total{core=\"0\"} 3
ricochet_cache_misses_total{core=\"1\"} 1
ricochet_acks_sent_total{core=\"0\"} 3
ricochet_misses_sent_total{core=\"1\"} 1
ricochet_frames_received_total{core=\"0\"} 5
ricochet_cache_bytes{core=\"0\"} 2048
ricochet_cache_charged_bytes{core=\"0\"} 4096
ricochet_cache_max_bytes{core=\"0\"} 524288
ricochet_cache_max_bytes{core=\"1\"} 524288
ricochet_dropped_total{reason=\"truncated\",core=\"0\"} 2
ricochet_dropped_total{reason=\"bad_magic\",core=\"1\"} 0
ricochet_dropped_total{reason=\"truncated\",core=\"1\"} 1
ricochet_uptime_seconds 75.5
ricochet_cluster_members_live 2
ricochet_cluster_members_known 3
target_info{service_instance_id=\"edge \\\"1\\\"\",service_name=\"retry-endpoint\"} 1
ricochet_build_info{version=\"0.1.0\",commit=\"abc1234\",profile=\"release\",arch=\"x86_64\"} 1
";

    fn snapshot(text: &str, at: Instant) -> Snapshot {
        Snapshot {
            at,
            metrics: Metrics::parse(text),
            ready: Readiness::parse(200, r#"{"status":"ready","workers_ready":2,"workers_total":2}"#),
            stats: serde_json::from_str(
                r#"{"backend":"epoll","steering":true,"workers":[{"worker":0,"cpu":4},{"worker":1,"cpu":5}]}"#,
            )
            .ok(),
        }
    }

    #[test]
    fn sums_over_cores_and_groups_by_label() {
        let m = Metrics::parse(SCRAPE);
        assert_eq!(m.sum("ricochet_nacks_total"), 6.0);
        assert_eq!(m.by("ricochet_dropped_total", "reason").get("truncated"), Some(&3.0));
        assert_eq!(m.label("target_info", "service_instance_id"), Some("edge \"1\""));
        assert!(!m.has("ricochet_dht_routing_peers"));
    }

    #[test]
    fn renders_counts_rates_and_sections_present() {
        let t0 = Instant::now();
        let before = snapshot(&SCRAPE.replace("core=\"0\"} 4", "core=\"0\"} 2"), t0);
        let now = snapshot(SCRAPE, t0 + Duration::from_secs(2));
        let screen = render("127.0.0.1:9400", &before, &now);
        for want in [
            "instance edge \"1\"  ricochet 0.1.0 (commit abc1234, profile release)",
            "readiness     ready (HTTP 200), workers 2/2, up 1m15s, backend epoll, steering on",
            "nacks         6 (1.0/s), hit ratio 75.0% (hits 3, misses 1)",
            "answers       ACK 3, MISS 1, THROTTLED 0;",
            "drops         truncated 3\n",
            "kernel drops  none\n",
            "cache         entries 0, bytes 2048 (2.0 KiB), flows 0, budget 1.0 MiB (0.4% charged);",
            "cluster       members 2 live of 3 known\n",
        ] {
            assert!(screen.contains(want), "{want:?} not in\n{screen}");
        }
        assert!(!screen.contains("dht "), "{screen}");
        // Core 0 went from 2 to 4 NACKs in 2 s.
        let row = screen.lines().find(|l| l.trim_start().starts_with("0 ")).expect("core 0 row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["0", "4", "1.0", "4", "0.0", "5", "0", "2048"]
        );
    }

    #[test]
    fn watch_interval_and_admin_forms() {
        let cli = Cli::parse_from(["status", "--watch"]);
        assert_eq!(cli.args.watch, Some(Duration::from_secs(2)));
        let cli = Cli::parse_from(["status", "--watch=500ms", "--admin", ":9401"]);
        assert_eq!(cli.args.watch, Some(Duration::from_millis(500)));
        let target = Target::new(&cli.args).expect("target");
        assert_eq!(target.addr, "127.0.0.1:9401".parse().unwrap());
        assert!(Cli::try_parse_from(["status", "--watch=10ms"]).is_err());
        assert_eq!(Cli::parse_from(["status"]).args.watch, None);
    }
}
