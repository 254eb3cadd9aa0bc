//! The standard process collector's families (`process_*`, as Prometheus
//! client libraries export them on Linux), read from procfs at scrape time:
//! CPU time, memory, file descriptors, start time and IP traffic.
//!
//! Names, types and units are the client libraries'; the network pair is,
//! as there, the traffic of the whole network namespace
//! (`/proc/self/net/netstat`), not of this process alone. A file that
//! cannot be read leaves its families out rather than reporting zero.

use std::fmt::Write as _;

use crate::metrics::family;

/// Appends the `process_*` families for this process.
pub fn render(out: &mut String) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let conf = |var| nix::unistd::sysconf(var).ok().flatten().unwrap_or(1).max(1) as u64;
    let host = Host {
        ticks_per_second: conf(nix::unistd::SysconfVar::CLK_TCK),
        page_size: conf(nix::unistd::SysconfVar::PAGE_SIZE),
    };
    let sample = Sample {
        stat: read("/proc/self/stat").as_deref().and_then(Stat::parse),
        boot_time: read("/proc/stat").as_deref().and_then(boot_time),
        limits: read("/proc/self/limits").as_deref().map(Limits::parse),
        open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        network: read("/proc/self/net/netstat").as_deref().and_then(ip_octets),
    };
    write(out, &sample, host);
}

/// The host constants the stat fields are in.
#[derive(Debug, Clone, Copy)]
struct Host {
    ticks_per_second: u64,
    page_size: u64,
}

/// What one scrape read.
#[derive(Debug, Default)]
struct Sample {
    stat: Option<Stat>,
    /// `btime` from `/proc/stat`: boot, seconds since the epoch.
    boot_time: Option<u64>,
    limits: Option<Limits>,
    open_fds: Option<u64>,
    /// IP octets in and out (namespace-wide).
    network: Option<(u64, u64)>,
}

/// The fields of `/proc/self/stat` the families need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system time, clock ticks.
    cpu_ticks: u64,
    /// Start, clock ticks after boot.
    start_ticks: u64,
    /// Virtual memory, bytes.
    vsize: u64,
    /// Resident set, pages.
    rss_pages: u64,
}

impl Stat {
    /// Parses `/proc/<pid>/stat`. The command name (field 2) may hold
    /// spaces and parentheses, so fields are counted from its last `)`.
    fn parse(stat: &str) -> Option<Stat> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is index 0: field n is index n - 3.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            cpu_ticks: num(14)? + num(15)?,
            start_ticks: num(22)?,
            vsize: num(23)?,
            rss_pages: num(24)?,
        })
    }
}

/// Soft limits from `/proc/self/limits`; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    open_files: Option<u64>,
    address_space: Option<u64>,
}

impl Limits {
    fn parse(limits: &str) -> Limits {
        // "Max open files            1024                 1048576              files"
        let soft = |name: &str| {
            let line = limits.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Limits { open_files: soft("Max open files"), address_space: soft("Max address space") }
    }
}

/// `btime` from `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// `InOctets` and `OutOctets` of the `IpExt` block of
/// `/proc/<pid>/net/netstat` (a header line of names, then one of values).
fn ip_octets(netstat: &str) -> Option<(u64, u64)> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("IpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let field = |want: &str| {
        let i = names.split_whitespace().position(|n| n == want)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    Some((field("InOctets")?, field("OutOctets")?))
}

fn write(out: &mut String, s: &Sample, host: Host) {
    let mut one = |name: &str, kind: &str, help: &str, v: String| {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    };
    if let Some(st) = s.stat {
        let secs = st.cpu_ticks as f64 / host.ticks_per_second as f64;
        one(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time, seconds.",
            fmt(secs),
        );
    }
    if let Some(max) = s.limits.and_then(|l| l.open_files) {
        one("process_max_fds", "gauge", "Soft limit on open file descriptors.", max.to_string());
    }
    if let Some((rx, tx)) = s.network {
        let help = "IP bytes received in this network namespace.";
        one("process_network_receive_bytes_total", "counter", help, rx.to_string());
        let help = "IP bytes sent in this network namespace.";
        one("process_network_transmit_bytes_total", "counter", help, tx.to_string());
    }
    if let Some(n) = s.open_fds {
        one("process_open_fds", "gauge", "Open file descriptors.", n.to_string());
    }
    if let Some(st) = s.stat {
        let rss = st.rss_pages * host.page_size;
        one("process_resident_memory_bytes", "gauge", "Resident set size, bytes.", rss.to_string());
        if let Some(boot) = s.boot_time {
            let start = boot as f64 + st.start_ticks as f64 / host.ticks_per_second as f64;
            let help = "Process start, seconds since the Unix epoch.";
            one("process_start_time_seconds", "gauge", help, fmt(start));
        }
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, bytes.",
            st.vsize.to_string(),
        );
    }
    if let Some(l) = s.limits {
        // Unlimited is the largest value, as the client libraries print it.
        let max = l.address_space.unwrap_or(u64::MAX);
        let help = "Soft limit on virtual memory, bytes.";
        one("process_virtual_memory_max_bytes", "gauge", help, max.to_string());
    }
}

/// Seconds with millisecond precision, trailing zeros trimmed.
fn fmt(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (ricochet (w) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
        250 50 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 \
        0 17 3 0 0 0 0 0";

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 1048576              files     \n\
        Max address space         unlimited            unlimited            bytes     \n";

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv\nTcpExt: 0 0\n\
        IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets\n\
        IpExt: 0 0 7 8 0 0 123456 654321\n";

    #[test]
    fn procfs_files_parse() {
        let st = Stat::parse(STAT).unwrap();
        assert_eq!(
            st,
            Stat { cpu_ticks: 300, start_ticks: 123_456, vsize: 987_654_321, rss_pages: 2048 }
        );
        assert_eq!(Stat::parse("12 (x) S 1"), None);
        assert_eq!(Limits::parse(LIMITS), Limits { open_files: Some(1024), address_space: None });
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(ip_octets(NETSTAT), Some((123_456, 654_321)));
        assert_eq!(ip_octets("TcpExt: A\nTcpExt: 1\n"), None);
    }

    #[test]
    fn families_are_written_from_a_sample() {
        let sample = Sample {
            stat: Stat::parse(STAT),
            boot_time: Some(1_700_000_000),
            limits: Some(Limits::parse(LIMITS)),
            open_fds: Some(17),
            network: ip_octets(NETSTAT),
        };
        let mut out = String::new();
        write(&mut out, &sample, Host { ticks_per_second: 100, page_size: 4096 });
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "process_cpu_seconds_total 3",
                "process_max_fds 1024",
                "process_network_receive_bytes_total 123456",
                "process_network_transmit_bytes_total 654321",
                "process_open_fds 17",
                "process_resident_memory_bytes 8388608",
                "process_start_time_seconds 1700001234.56",
                "process_virtual_memory_bytes 987654321",
                "process_virtual_memory_max_bytes 18446744073709551615",
            ]
        );
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(out.contains("# TYPE process_resident_memory_bytes gauge\n"));
    }

    #[test]
    fn this_process_is_read() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_max_fds",
            "process_open_fds",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_virtual_memory_bytes",
        ] {
            let v: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
            assert!(v >= 0.0, "{name} {v}");
        }
    }
}
