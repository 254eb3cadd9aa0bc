//! Pure value parsers and formatters for configuration strings.
//!
//! Every function here takes a string (or numbers) and returns a typed value
//! or a [`ValueError`] that says what is wrong and what would be accepted. No
//! function reads the environment, the clock or a file; the resolver in
//! `resolve.rs` adds the flag, env var and origin to each error.
//!
//! The accepted syntax follows the reference Go endpoint where it has one:
//! Go `time.ParseDuration` for durations, Go `strconv.ParseBool` for bools,
//! and the reference's hex-or-decimal rule for `MC_GROUP_ID`.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::RangeInclusive;
use core::str::FromStr;
use core::time::Duration;
use std::io;
use std::net::ToSocketAddrs;
use std::vec;

/// Highest CPU id accepted in a CPU list or mask (Linux `NR_CPUS` tops out at
/// 8192); it bounds the memory a hostile `--cpus 0-4000000000` could ask for.
pub const MAX_CPU_ID: usize = 8191;

/// Why a configuration string was refused: the problem, and a phrase naming
/// what would be accepted (it completes "set --flag to …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// What is wrong with the value, e.g. `must be between 1 and 12`.
    pub problem: String,
    /// What would be accepted, e.g. `a value in 1..=12`.
    pub expected: String,
}

impl ValueError {
    /// A new error from a problem and an expected-value phrase.
    pub fn new(problem: impl Into<String>, expected: impl Into<String>) -> Self {
        Self { problem: problem.into(), expected: expected.into() }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; expected {}", self.problem, self.expected)
    }
}

impl std::error::Error for ValueError {}

const DURATION_EXPECTED: &str = "a Go duration such as 300ms, 60s, 1m30s or 2h";

/// Parses a Go duration (`time.ParseDuration` syntax): a sequence of decimal
/// numbers, each with an optional fraction and a unit (`ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h`), e.g. `300ms`, `1m30s`, `1.5h`; a bare `0` is zero.
/// Negative durations are refused (no setting takes one); like Go, a value
/// above about 292 years is out of range.
pub fn parse_go_duration(s: &str) -> Result<Duration, ValueError> {
    let bad = |problem: String| ValueError::new(problem, DURATION_EXPECTED);
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return Err(bad(format!("{s:?} is not a duration")));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = body;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad(format!("{s:?} is not a duration: expected a number at {rest:?}")));
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad(format!("missing unit in duration {s:?}"))),
            other => return Err(bad(format!("unknown unit {other:?} in duration {s:?}"))),
        };
        // Any integer part long enough to overflow u128 is far past the i64 limit.
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad(format!("duration {s:?} is out of range")))?
        };
        let mut nanos = int.checked_mul(scale);
        if !frac.is_empty() {
            let digits = &frac[..frac.len().min(18)];
            let f: u128 = digits.parse().unwrap_or(0);
            let denom = 10u128.pow(digits.len() as u32);
            nanos = nanos.and_then(|n| n.checked_add(f.checked_mul(scale)? / denom));
        }
        total = nanos
            .and_then(|n| total.checked_add(n))
            .filter(|&t| t <= i64::MAX as u128)
            .ok_or_else(|| bad(format!("duration {s:?} is out of range")))?;
        rest = after;
    }
    if negative && total != 0 {
        return Err(ValueError::new(
            format!("duration {s:?} is negative"),
            "a duration of zero or more such as 0s or 60s",
        ));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration in Go syntax, as compactly as exact: `0s`, `300ms`,
/// `1.5s`, `1m30s`, `10m`, `2h`. [`parse_go_duration`] reads it back to the
/// same value.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        return match nanos {
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}us", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let sub = d.subsec_nanos();
    if sub != 0 {
        let frac = format!("{sub:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    } else if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

const SIZE_EXPECTED: &str = "a byte count with an optional K, M, G or T suffix (binary: KiB, MiB, GiB, TiB), such as 512MiB or 1G";

/// Parses a size in bytes: an integer with an optional binary suffix, case
/// insensitive, optionally separated by a space: `B`, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB` (all powers of 1024). `KB`, `MB`, `GB` and `TB` are
/// refused as ambiguous.
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    if num.is_empty() {
        return Err(ValueError::new(format!("{s:?} is not a size"), SIZE_EXPECTED));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        u @ ("kb" | "mb" | "gb" | "tb") => {
            return Err(ValueError::new(
                format!("unit {u:?} in {s:?} is ambiguous (1000 or 1024?)"),
                SIZE_EXPECTED,
            ));
        }
        _ => return Err(ValueError::new(format!("unknown unit in size {s:?}"), SIZE_EXPECTED)),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| ValueError::new(format!("size {s:?} is out of range"), SIZE_EXPECTED))
}

/// Formats a byte count with the largest binary suffix that divides it
/// exactly (`1GiB`, `1536KiB`, `1000`); [`parse_size`] reads it back.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    UNITS
        .iter()
        .find(|(shift, _)| bytes != 0 && bytes.is_multiple_of(1u64 << shift))
        .map(|(shift, unit)| format!("{}{unit}", bytes >> shift))
        .unwrap_or_else(|| bytes.to_string())
}

const CPULIST_EXPECTED: &str = "a Linux cpulist such as 0-3,8";

/// Parses a Linux cpulist (`0-3,8`, `2`, `0-1, 4-5`): comma-separated CPU ids
/// and inclusive ranges, whitespace allowed around items. Returns the CPUs
/// sorted and without duplicates. Refuses an empty list, an empty item, a
/// descending range (`3-1`) and ids above [`MAX_CPU_ID`].
pub fn parse_cpulist(s: &str) -> Result<Vec<usize>, ValueError> {
    let bad = |problem: String| ValueError::new(problem, CPULIST_EXPECTED);
    if s.trim().is_empty() {
        return Err(bad("the CPU list is empty".into()));
    }
    let id = |t: &str| -> Result<usize, ValueError> {
        let t = t.trim();
        let n: usize = t.parse().map_err(|_| bad(format!("{t:?} is not a CPU id")))?;
        if n > MAX_CPU_ID {
            return Err(bad(format!("CPU {n} is above the highest supported id {MAX_CPU_ID}")));
        }
        Ok(n)
    };
    let mut cpus = Vec::new();
    for item in s.split(',') {
        if item.trim().is_empty() {
            return Err(bad(format!("empty item in CPU list {s:?}")));
        }
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (id(lo)?, id(hi)?);
                if lo > hi {
                    return Err(bad(format!("range {lo}-{hi} is descending")));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(id(item)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPU ids (sorted or not) as a compact cpulist: `[0,1,2,3,8]` →
/// `0-3,8`; the empty set is the empty string.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    out.join(",")
}

const MASK_EXPECTED: &str =
    "a hexadecimal CPU mask such as 0xf (CPUs 0-3) or 0x1,00000000 (CPU 32)";

/// Parses a hexadecimal CPU mask (`0xf`, `f`, `FF`, or the kernel's
/// comma-grouped form `0x1,00000000`): bit *n* selects CPU *n*. Returns the
/// selected CPUs in ascending order. Refuses an empty or all-zero mask and
/// masks wider than [`MAX_CPU_ID`] + 1 bits.
pub fn parse_cpu_mask(s: &str) -> Result<Vec<usize>, ValueError> {
    let bad = |problem: String| ValueError::new(problem, MASK_EXPECTED);
    let body = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let digits: Vec<u8> = body.bytes().filter(|&b| b != b',').collect();
    if digits.is_empty() || body.starts_with(',') || body.ends_with(',') || body.contains(",,") {
        return Err(bad(format!("{s:?} is not a CPU mask")));
    }
    if digits.len() > (MAX_CPU_ID + 1) / 4 {
        return Err(bad(format!("CPU mask {s:?} is wider than {} bits", MAX_CPU_ID + 1)));
    }
    let mut cpus = Vec::new();
    for (pos, &b) in digits.iter().rev().enumerate() {
        let nibble = (b as char)
            .to_digit(16)
            .ok_or_else(|| bad(format!("{:?} in {s:?} is not a hex digit", b as char)))?;
        cpus.extend((0..4).filter(|bit| nibble & (1 << bit) != 0).map(|bit| pos * 4 + bit));
    }
    if cpus.is_empty() {
        return Err(bad(format!("CPU mask {s:?} selects no CPUs")));
    }
    Ok(cpus)
}

/// Checks that every selected CPU is in the process's affinity mask
/// (`allowed`); returns the selection sorted, or an error naming the refused
/// CPUs and the allowed set.
pub fn cpus_within(selected: &[usize], allowed: &[usize]) -> Result<Vec<usize>, ValueError> {
    let allowed_list = format_cpulist(allowed);
    if allowed.is_empty() {
        return Err(ValueError::new(
            "the process affinity mask is empty",
            "a process started with at least one CPU (check taskset, systemd CPUAffinity= or the cgroup cpuset)",
        ));
    }
    let refused: Vec<usize> = selected.iter().copied().filter(|c| !allowed.contains(c)).collect();
    if !refused.is_empty() {
        return Err(ValueError::new(
            format!(
                "CPUs {} are outside this process's affinity mask (allowed: {allowed_list})",
                format_cpulist(&refused)
            ),
            format!(
                "CPUs within {allowed_list} (or start ricochet with a wider mask: taskset, systemd CPUAffinity=, cgroup cpuset)"
            ),
        ));
    }
    let mut out = selected.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Parses a BRC-129 group id as the reference does: `0x`-prefixed hex, else
/// decimal when the string is all decimal digits, else bare hex. So `0x000B`,
/// `11` and `000B` are all 11, while `0010` is ten.
pub fn parse_group_id(s: &str) -> Result<u16, ValueError> {
    const EXPECTED: &str =
        "a group id in 0x0000..=0xFFFF such as 0x000B (0x-hex, decimal or bare hex)";
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => (s, 10),
        None => (s, 16),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ValueError::new(format!("{s:?} is not a group id"), EXPECTED));
    }
    u16::from_str_radix(digits, radix)
        .map_err(|_| ValueError::new(format!("group id {s:?} does not fit in 16 bits"), EXPECTED))
}

/// Parses a bool exactly as Go's `strconv.ParseBool`: `1 t T TRUE true True`
/// and `0 f F FALSE false False`; anything else (`yes`, `on`, `tRuE`) is
/// refused.
pub fn parse_go_bool(s: &str) -> Result<bool, ValueError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ValueError::new(format!("{s:?} is not a bool"), "true or false (or 1/0, t/f)")),
    }
}

/// Parses an integer within `range` (decimal, optional sign).
pub fn parse_int_in<T>(s: &str, range: RangeInclusive<T>) -> Result<T, ValueError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    let (lo, hi) = (*range.start(), *range.end());
    let n: T = s.parse().map_err(|_| {
        ValueError::new(
            format!("{s:?} is not an integer in {lo}..={hi}"),
            format!("an integer in {lo}..={hi}"),
        )
    })?;
    if !range.contains(&n) {
        return Err(ValueError::new(
            format!("must be between {lo} and {hi}"),
            format!("a value in {lo}..={hi}"),
        ));
    }
    Ok(n)
}

/// Parses a UDP port in 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    parse_int_in(s, 1..=u16::MAX)
}

/// Parses a finite rate strictly greater than zero (Go `float64` syntax).
pub fn parse_positive_f64(s: &str) -> Result<f64, ValueError> {
    const EXPECTED: &str = "a number greater than 0 such as 100 or 2.5";
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(ValueError::new("must be a finite number greater than 0", EXPECTED)),
        Err(_) => Err(ValueError::new(format!("{s:?} is not a number"), EXPECTED)),
    }
}

/// Parses one of a fixed set of names (ASCII case-insensitive).
pub fn parse_choice<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, ValueError> {
    choices.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)).map(|&(_, v)| v).ok_or_else(
        || {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            ValueError::new(
                format!("{s:?} is not one of {}", names.join(", ")),
                format!("one of {}", names.join(", ")),
            )
        },
    )
}

/// The host part of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// Empty host (Go's `:9400`): every local address.
    Any,
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, resolved when used.
    Name(String),
}

/// A `host:port` address as Go writes it: `10.0.0.1:9300`, `[2001:db8::1]:9300`,
/// `retry.example:9300`, or `:9400` for every local address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host.
    pub host: Host,
    /// The port; 0 only where the setting allows an ephemeral port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Any => write!(f, ":{}", self.port),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// Resolves to socket addresses; [`Host::Any`] yields `[::]:port` then
/// `0.0.0.0:port` (bind the first that works, as Go's `:port` does), a name is
/// looked up in DNS.
impl ToSocketAddrs for HostPort {
    type Iter = vec::IntoIter<SocketAddr>;

    fn to_socket_addrs(&self) -> io::Result<Self::Iter> {
        match &self.host {
            Host::Any => Ok(vec![
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), self.port),
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), self.port),
            ]
            .into_iter()),
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)].into_iter()),
            Host::Name(n) => (n.as_str(), self.port).to_socket_addrs(),
        }
    }
}

const HOSTPORT_EXPECTED: &str =
    "host:port, such as 10.0.0.1:9300, [2001:db8::1]:9300, retry.example:9300 or :9400";

/// Parses `host:port` (Go `net.SplitHostPort` syntax): IPv6 literals in
/// brackets, an empty host for every local address (`:9400`). The port may be
/// 0; callers that need a real port check it. IPv6 zone ids (`%eth0`) are
/// refused.
pub fn parse_host_port(s: &str) -> Result<HostPort, ValueError> {
    let bad = |problem: String| ValueError::new(problem, HOSTPORT_EXPECTED);
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) =
            rest.split_once(']').ok_or_else(|| bad(format!("missing ']' in {s:?}")))?;
        let port = after.strip_prefix(':').ok_or_else(|| bad(format!("missing port in {s:?}")))?;
        if inside.contains('%') {
            return Err(bad(format!("IPv6 zone ids are not supported in {s:?}")));
        }
        let ip: Ipv6Addr =
            inside.parse().map_err(|_| bad(format!("{inside:?} is not an IPv6 address")))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) =
            s.rsplit_once(':').ok_or_else(|| bad(format!("missing port in {s:?}")))?;
        let host = if host.is_empty() {
            Host::Any
        } else if host.contains(':') {
            return Err(bad(format!(
                "IPv6 address in {s:?} needs brackets, as in [{host}]:{port}"
            )));
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if is_dns_name(host) {
            Host::Name(host.to_owned())
        } else {
            return Err(bad(format!("{host:?} is not a valid host name")));
        };
        (host, port)
    };
    let port: u16 = port.parse().map_err(|_| bad(format!("{port:?} is not a port in {s:?}")))?;
    Ok(HostPort { host, port })
}

/// A plausible DNS host name: dot-separated labels of letters, digits, `-`
/// and `_`, each 1–63 bytes, 253 bytes at most.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a network interface: a Linux interface name (1–15 bytes, no `/`,
/// `:` or whitespace, as the kernel's `dev_valid_name`), or an IP address
/// literal standing for the interface that holds it (`--ipv4-lab` uses
/// `127.0.0.1`).
pub fn parse_iface(s: &str) -> Result<String, ValueError> {
    const EXPECTED: &str =
        "an interface name such as eth0 (at most 15 bytes) or an address such as 127.0.0.1";
    let valid_name = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if valid_name || s.parse::<IpAddr>().is_ok() {
        Ok(s.to_owned())
    } else if s.is_empty() {
        Err(ValueError::new("the interface is empty", EXPECTED))
    } else {
        Err(ValueError::new(format!("{s:?} is not an interface name"), EXPECTED))
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones.
pub fn split_csv(s: &str) -> Vec<&str> {
    s.split(',').map(str::trim).filter(|t| !t.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("60s", secs(60)),
            ("1m30s", secs(90)),
            ("2h", secs(7200)),
            ("1h2m3s", secs(3723)),
            ("1.5h", secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", secs(1)),
            ("+10m", secs(600)),
            ("1us", Duration::from_micros(1)),
            ("1\u{b5}s", Duration::from_micros(1)),
            ("1\u{3bc}s", Duration::from_micros(1)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000001s", Duration::from_nanos(1_000_000_000)),
            ("2562047h", secs(2562047 * 3600)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
        for (s, why) in [
            ("", "not a duration"),
            ("60", "missing unit"),
            ("1m30", "missing unit"),
            ("10x", "unknown unit"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("-5s", "negative"),
            ("3000000h", "out of range"),
            ("99999999999999999999999999999999999999999h", "out of range"),
            (" 5s", "expected a number"),
        ] {
            let e = parse_go_duration(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("duration"), "{s}: {e}");
        }
    }

    #[test]
    fn go_duration_formatting() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(300), "300ms"),
            (secs(60), "1m"),
            (secs(90), "1m30s"),
            (secs(600), "10m"),
            (secs(7200), "2h"),
            (secs(3661), "1h1m1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_micros(5), "5us"),
            (Duration::from_nanos(5), "5ns"),
        ] {
            assert_eq!(format_go_duration(d), s);
        }
    }

    proptest! {
        #[test]
        fn go_duration_round_trips(nanos in 0u64..=i64::MAX as u64) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_go_duration(&format_go_duration(d)), Ok(d));
        }

        #[test]
        fn size_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn cpulist_round_trips(cpus in proptest::collection::btree_set(0usize..=MAX_CPU_ID, 1..40)) {
            let cpus: Vec<usize> = cpus.into_iter().collect();
            prop_assert_eq!(parse_cpulist(&format_cpulist(&cpus)), Ok(cpus));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,24}") {
            let _ = parse_go_duration(&s);
            let _ = parse_size(&s);
            let _ = parse_cpulist(&s);
            let _ = parse_cpu_mask(&s);
            let _ = parse_group_id(&s);
            let _ = parse_host_port(&s);
        }
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("0", 0),
            ("1232", 1232),
            ("1B", 1),
            ("4K", 4096),
            ("4k", 4096),
            ("4KiB", 4096),
            ("512MiB", 512 << 20),
            ("512 MiB", 512 << 20),
            ("1G", 1 << 30),
            ("1gib", 1 << 30),
            ("2TiB", 2 << 40),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for (s, why) in [
            ("", "not a size"),
            ("GiB", "not a size"),
            ("1.5G", "unknown unit"),
            ("1GB", "ambiguous"),
            ("10 parsecs", "unknown unit"),
            ("-1", "not a size"),
            ("99999999999T", "out of range"),
        ] {
            let e = parse_size(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("MiB"), "{s}: {e}");
        }
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1536 << 10), "1536KiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("0-3,8"), Ok(vec![0, 1, 2, 3, 8]));
        assert_eq!(parse_cpulist(" 0 - 1 , 4-5 "), Ok(vec![0, 1, 4, 5]));
        assert_eq!(parse_cpulist("3,1,1,2"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_cpulist("5-5"), Ok(vec![5]));
        for (s, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("3-1", "descending"),
            ("0,,1", "empty item"),
            ("0,", "empty item"),
            ("a", "not a CPU id"),
            ("1-", "not a CPU id"),
            ("0-3:1/2", "not a CPU id"),
            ("0-99999999999", "above the highest"),
        ] {
            let e = parse_cpulist(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("0-3,8"), "{s}: {e}");
        }
        assert_eq!(format_cpulist(&[8, 0, 1, 2, 3]), "0-3,8");
        assert_eq!(format_cpulist(&[1, 3, 5]), "1,3,5");
        assert_eq!(format_cpulist(&[]), "");
    }

    #[test]
    fn cpu_masks() {
        assert_eq!(parse_cpu_mask("0xf"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_mask("f"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_cpu_mask("0X11"), Ok(vec![0, 4]));
        assert_eq!(parse_cpu_mask("0x1,00000000"), Ok(vec![32]));
        assert_eq!(parse_cpu_mask("3,00000001"), Ok(vec![0, 32, 33]));
        for (s, why) in [
            ("", "not a CPU mask"),
            ("0x", "not a CPU mask"),
            ("0x0", "selects no CPUs"),
            ("0xg", "not a hex digit"),
            ("0x1,,0", "not a CPU mask"),
            (",1", "not a CPU mask"),
        ] {
            let e = parse_cpu_mask(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("0xf"), "{s}: {e}");
        }
        let wide = format!("1{}", "0".repeat(2048));
        assert!(parse_cpu_mask(&wide).unwrap_err().problem.contains("wider"));
    }

    #[test]
    fn cpus_must_be_in_the_affinity_mask() {
        assert_eq!(cpus_within(&[3, 1], &[0, 1, 2, 3]), Ok(vec![1, 3]));
        let e = cpus_within(&[0, 4, 5, 6, 7, 9], &[0, 1, 2, 3]).unwrap_err();
        assert!(e.problem.contains("CPUs 4-7,9 are outside"), "{e}");
        assert!(e.problem.contains("allowed: 0-3"), "{e}");
        assert!(e.expected.contains("within 0-3"), "{e}");
        assert!(cpus_within(&[0], &[]).unwrap_err().problem.contains("empty"));
    }

    #[test]
    fn group_ids() {
        for (s, want) in [
            ("0x000B", 11),
            ("0X000b", 11),
            ("11", 11),
            ("000B", 11),
            ("b", 11),
            ("0010", 10),
            ("0xFFFF", 0xFFFF),
            ("65535", 65535),
        ] {
            assert_eq!(parse_group_id(s), Ok(want), "{s}");
        }
        for (s, why) in [
            ("", "not a group id"),
            ("0x", "not a group id"),
            ("xyz", "not a group id"),
            ("0x10000", "16 bits"),
            ("65536", "16 bits"),
            ("-1", "not a group id"),
        ] {
            let e = parse_group_id(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("0x000B"), "{s}: {e}");
        }
    }

    #[test]
    fn go_bools() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(s), Ok(true), "{s}");
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(s), Ok(false), "{s}");
        }
        for s in ["", "yes", "on", "tRuE", "2", " true"] {
            let e = parse_go_bool(s).unwrap_err();
            assert!(e.expected.contains("true or false"), "{s}: {e}");
        }
    }

    #[test]
    fn integers_and_rates() {
        assert_eq!(parse_int_in::<u8>("12", 1..=12), Ok(12));
        let e = parse_int_in::<u8>("13", 1..=12).unwrap_err();
        assert_eq!(e.problem, "must be between 1 and 12");
        assert_eq!(e.expected, "a value in 1..=12");
        let e = parse_int_in::<u8>("x", 1..=12).unwrap_err();
        assert!(e.problem.contains("not an integer"));
        assert_eq!(parse_port("9300"), Ok(9300));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert_eq!(parse_positive_f64("2.5"), Ok(2.5));
        for s in ["0", "-1", "NaN", "inf", "x"] {
            assert!(parse_positive_f64(s).unwrap_err().expected.contains("greater than 0"), "{s}");
        }
        assert_eq!(parse_choice("JSON", &[("text", 1), ("json", 2)]), Ok(2));
        let e = parse_choice("xml", &[("text", 1), ("json", 2)]).unwrap_err();
        assert_eq!(e.expected, "one of text, json");
    }

    #[test]
    fn host_ports() {
        let hp = |s| parse_host_port(s).unwrap();
        assert_eq!(hp(":9400"), HostPort { host: Host::Any, port: 9400 });
        assert_eq!(hp("127.0.0.1:80").host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(
            hp("[::1]:9300"),
            HostPort { host: Host::Ip("::1".parse().unwrap()), port: 9300 }
        );
        assert_eq!(hp("[2001:db8::24]:9300").to_string(), "[2001:db8::24]:9300");
        assert_eq!(hp("retry-1.example:9300").host, Host::Name("retry-1.example".into()));
        assert_eq!(hp(":0").port, 0);
        for (s, why) in [
            ("", "missing port"),
            ("host", "missing port"),
            ("::1:9300", "needs brackets"),
            ("[::1]", "missing port"),
            ("[::1:9300", "missing ']'"),
            ("[1.2.3.4]:1", "not an IPv6"),
            ("[fe80::1%eth0]:1", "zone"),
            ("host:http", "not a port"),
            ("host:70000", "not a port"),
            ("bad host:1", "not a valid host name"),
        ] {
            let e = parse_host_port(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("host:port"), "{s}: {e}");
        }
        for s in [":9400", "10.0.0.1:1", "[::1]:2", "a.b:3"] {
            assert_eq!(hp(s).to_string(), s);
        }
        let any: Vec<SocketAddr> = hp(":9400").to_socket_addrs().unwrap().collect();
        assert_eq!(any, vec!["[::]:9400".parse().unwrap(), "0.0.0.0:9400".parse().unwrap()]);
    }

    #[test]
    fn interfaces() {
        for s in ["eth0", "enp6s0", "mc-local", "127.0.0.1", "::1", "a.b"] {
            assert_eq!(parse_iface(s).as_deref(), Ok(s));
        }
        for (s, why) in [
            ("", "empty"),
            ("eth0/1", "not an interface"),
            ("a b", "not an interface"),
            ("sixteen-bytes-xx", "not an interface"),
            ("..", "not an interface"),
        ] {
            let e = parse_iface(s).unwrap_err();
            assert!(e.problem.contains(why), "{s}: {e}");
            assert!(e.expected.contains("eth0"), "{s}: {e}");
        }
    }

    #[test]
    fn csv() {
        assert_eq!(split_csv(" a, b ,,c,"), vec!["a", "b", "c"]);
        assert!(split_csv("").is_empty());
    }
}
