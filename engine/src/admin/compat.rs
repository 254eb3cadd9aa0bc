//! The reference retry-endpoint's metric families (`bre_*`, `target_info`),
//! rendered from ricochet's own counters so dashboards, alerts and scenario
//! scripts built for the reference read ricochet unchanged.
//!
//! # Contract
//! - Names, types, label names and label values are the newest reference's
//!   (an OpenTelemetry meter named `retry-endpoint` behind the OTel
//!   Prometheus exporter): every `bre_*` counter and gauge carries
//!   `otel_scope_name="retry-endpoint"`, `otel_scope_schema_url=""` and
//!   `otel_scope_version=""` as the exporter adds them; `bre_host_info`
//!   and `bre_own_source_info` do not (the reference registers them on the
//!   Prometheus registry directly). The `bre_*` families are written in
//!   name order and labels in name order, as the reference's registry
//!   writes them.
//! - Values are sums over the workers (no `core` label), each from a real
//!   counter; docs/OPERATIONS.md ("Metrics: bre_* ↔ ricochet_*") maps each
//!   family to its `ricochet_*` source and says where the meaning differs.
//! - Every label value the reference can emit is written, zero included
//!   (the reference omits a series until its first increment): a dashboard
//!   sees a zero rate, not a gap.
//! - [`render`] is pure; [`HostInfo::gather`] is the one place that reads
//!   the host, once, at startup.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use crate::metrics::{escape, family, labelled};
use crate::rt::WorkerSnapshot;

/// The reference's OTel service name and meter (instrumentation scope)
/// name. `target_info` says `service_name="retry-endpoint"` too: it names
/// the role ricochet fills, so OTel-side selectors keep matching;
/// `ricochet_build_info` says which implementation fills it.
pub const SERVICE_NAME: &str = "retry-endpoint";

/// The labels the OTel exporter puts on every sample of the meter.
const SCOPE: &str =
    "otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\"";

/// What the `bre_*` families are rendered from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Every worker's last snapshot.
    pub snaps: &'a [WorkerSnapshot],
    /// ADVERTs the beacon task sent.
    pub beacons_sent: u64,
    /// Failures of the shared store (Redis) the control thread counted.
    pub store_errors: u64,
    /// `--instance-id`.
    pub instance: &'a str,
    /// ricochet's version.
    pub version: &'a str,
    /// Static host facts.
    pub host: &'a HostInfo,
    /// `--bind-source`, for `bre_own_source_info`.
    pub own_source: Option<Ipv6Addr>,
}

/// Appends the `bre_*` families, `target_info` and `ricochet_build_info`.
pub fn render(input: &Input<'_>, out: &mut String) {
    let mut families = families(input);
    families.sort_by(|a, b| a.name.cmp(b.name));
    for f in families.iter().filter(|f| !f.rows.is_empty()) {
        labelled(out, f.name, f.kind, f.help, &f.rows);
    }
    family(out, "target_info", "gauge", "The OTel resource: which endpoint this is.");
    let _ = writeln!(
        out,
        "target_info{{service_instance_id=\"{}\",service_name=\"{SERVICE_NAME}\",service_version=\"{}\"}} 1",
        escape(input.instance),
        escape(input.version)
    );
    family(out, "ricochet_build_info", "gauge", "The ricochet build serving (value always 1).");
    let _ = writeln!(
        out,
        "ricochet_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\",arch=\"{}\"}} 1",
        escape(input.version),
        escape(crate::BUILD_COMMIT),
        escape(crate::BUILD_PROFILE),
        std::env::consts::ARCH
    );
}

/// Static host facts, the labels of `bre_host_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel_version: String,
    /// CPUs in the process's affinity mask at startup.
    pub cpu_logical: usize,
    /// Physical memory, bytes (MemTotal).
    pub mem_bytes: u64,
    /// `net.core.rmem_max`, as the kernel prints it ("" when unreadable).
    pub rmem_max: String,
    /// The first non-loopback interface, by name, that is up and has an
    /// address ("" when none).
    pub nic: String,
    /// Its link speed in Mb/s ("" when unknown).
    pub speed_mbps: String,
    /// ricochet's version.
    pub version: String,
}

/// One interface, as [`pick_nic`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// A loopback interface.
    pub loopback: bool,
    /// Its operational state (`/sys/class/net/<name>/operstate`, else "up"
    /// or "down" from the interface flags).
    pub oper_state: String,
    /// It has an IPv4 or IPv6 address.
    pub has_address: bool,
}

impl HostInfo {
    /// Reads the host: procfs, sysfs, the interface list. Anything that
    /// cannot be read is left empty, never an error.
    pub fn gather(version: &str) -> HostInfo {
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cpu_logical = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count()).filter(|&i| set.is_set(i).unwrap_or(false)).count()
            })
            .unwrap_or(0);
        let mem_bytes = read("/proc/meminfo").ok().and_then(|m| mem_total(&m)).unwrap_or(0);
        let nic = pick_nic(&interfaces()).unwrap_or_default();
        let speed_mbps = match nic.as_str() {
            "" => String::new(),
            n => read(&format!("/sys/class/net/{n}/speed"))
                .ok()
                .filter(|s| s.parse::<i64>().is_ok_and(|v| v > 0))
                .unwrap_or_default(),
        };
        HostInfo {
            hostname,
            kernel_version: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            cpu_logical,
            mem_bytes,
            rmem_max: read("/proc/sys/net/core/rmem_max").unwrap_or_default(),
            nic,
            speed_mbps,
            version: version.to_string(),
        }
    }
}

/// The interface `bre_host_info` names: the first, by name, that is not
/// loopback, is up and has an address.
pub fn pick_nic(ifaces: &[Interface]) -> Option<String> {
    let mut ifaces: Vec<&Interface> = ifaces.iter().filter(|i| !i.loopback).collect();
    ifaces.sort_by(|a, b| a.name.cmp(&b.name));
    ifaces.into_iter().find(|i| i.oper_state == "up" && i.has_address).map(|i| i.name.clone())
}

/// MemTotal from `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every interface with its flags, addresses and sysfs state.
fn interfaces() -> Vec<Interface> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<Interface> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return out };
    for a in addrs {
        let has_address = a
            .address
            .as_ref()
            .is_some_and(|s| s.as_sockaddr_in().is_some() || s.as_sockaddr_in6().is_some());
        if let Some(i) = out.iter_mut().find(|i| i.name == a.interface_name) {
            i.has_address |= has_address;
            continue;
        }
        let up = if a.flags.contains(InterfaceFlags::IFF_UP) { "up" } else { "down" };
        let sysfs = format!("/sys/class/net/{}/operstate", a.interface_name);
        let oper_state = std::fs::read_to_string(sysfs)
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| up.to_string());
        out.push(Interface {
            name: a.interface_name,
            loopback: a.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            oper_state,
            has_address,
        });
    }
    out
}

/// A family before it is written.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    rows: Vec<(String, u64)>,
}

impl Family {
    /// An OTel counter or gauge with one sample.
    fn scalar(name: &'static str, kind: &'static str, help: &'static str, v: u64) -> Family {
        Family { name, kind, help, rows: vec![(SCOPE.to_string(), v)] }
    }

    /// An OTel counter with one sample per value of `label`.
    fn by(name: &'static str, help: &'static str, label: &str, values: &[(&str, u64)]) -> Family {
        // Labels in name order, as the reference's registry writes them.
        let first = label < "otel_scope_name";
        let rows = values
            .iter()
            .map(|(value, v)| {
                let l = format!("{label}=\"{}\"", escape(value));
                (if first { format!("{l},{SCOPE}") } else { format!("{SCOPE},{l}") }, *v)
            })
            .collect();
        Family { name, kind: "counter", help, rows }
    }
}

/// Every `bre_*` family, unsorted.
fn families(input: &Input<'_>) -> Vec<Family> {
    let sum = |f: &dyn Fn(&WorkerSnapshot) -> u64| input.snaps.iter().map(f).sum::<u64>();
    let send_errors =
        |f: fn(&crate::rt::ResponseCounts) -> u64| sum(&|s| f(&s.counters.response_send_errors));
    let (ack_errors, miss_errors, throttled_errors) =
        (send_errors(|e| e.ack), send_errors(|e| e.miss), send_errors(|e| e.throttled));
    let cache_errors = sum(&|s| {
        s.retry.cache.refused_too_large
            + s.counters.store_unavailable
            + s.counters.store_puts_dropped
            + s.counters.store_deletes_dropped
    }) + input.store_errors;
    let mut by_source: Vec<(String, u64)> = Vec::new();
    for s in input.snaps {
        for (src, n) in s.counters.cached_by_source.iter() {
            let src = src.map(|a: IpAddr| a.to_string()).unwrap_or_default();
            match by_source.iter_mut().find(|(k, _)| *k == src) {
                Some((_, total)) => *total += n,
                None => by_source.push((src, n)),
            }
        }
    }
    by_source.sort();
    let sources: Vec<(&str, u64)> = by_source.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let h = input.host;
    let host_labels = format!(
        "cpu_logical=\"{}\",hostname=\"{}\",kernel_version=\"{}\",mem_bytes=\"{}\",nic=\"{}\",\
         rmem_max=\"{}\",speed_mbps=\"{}\",version=\"{}\"",
        h.cpu_logical,
        escape(&h.hostname),
        escape(&h.kernel_version),
        h.mem_bytes,
        escape(&h.nic),
        escape(&h.rmem_max),
        escape(&h.speed_mbps),
        escape(&h.version)
    );
    let counter = |name, help, v| Family::scalar(name, "counter", help, v);
    vec![
        counter(
            "bre_beacon_adverts_sent_total",
            "ADVERTs sent to the beacon group.",
            input.beacons_sent,
        ),
        counter(
            "bre_cache_errors_total",
            "Frames the cache refused as larger than its budget, and shared-store (Redis) \
             requests that failed or found it unavailable.",
            cache_errors,
        ),
        counter(
            "bre_cache_hits_total",
            "NACKed frames found in the cache.",
            sum(&|s| s.retry.cache_hits),
        ),
        counter(
            "bre_cache_misses_total",
            "NACKed frames not found in the cache.",
            sum(&|s| s.retry.cache_misses),
        ),
        Family::scalar(
            "bre_cache_size",
            "gauge",
            "Frames held now.",
            sum(&|s| s.retry.cache.entries),
        ),
        Family::by(
            "bre_cache_stored_total",
            "Frames from the fabric held by the cache, by the address they came from.",
            "source",
            &sources,
        ),
        counter(
            "bre_frames_cached_total",
            "Frames from the fabric held by the cache after they arrived.",
            sum(&|s| s.counters.fabric_frames_cached),
        ),
        Family::by(
            "bre_frames_dropped_total",
            "Datagrams on the data port dropped as malformed (ricochet has no tee socket).",
            "reason",
            &[("decode_error", sum(&|s| s.counters.fabric_malformed)), ("tee_decap_error", 0)],
        ),
        counter(
            "bre_frames_received_total",
            "Well-formed frames received from the fabric.",
            sum(&|s| s.counters.fabric_frames),
        ),
        Family {
            name: "bre_host_info",
            kind: "gauge",
            help: "Static host facts (value always 1).",
            rows: vec![(host_labels, 1)],
        },
        counter("bre_nack_requests_total", "NACK datagrams received.", sum(&|s| s.retry.nacks)),
        // Spelled as `bre_cache_stored_total`'s `source` (the address's
        // canonical text), so an alert can leave this pair out by a join.
        Family {
            name: "bre_own_source_info",
            kind: "gauge",
            help: "The address this endpoint sends from (--bind-source; value always 1). It never \
                   joins it as a source, so no frames are cached from it.",
            rows: input.own_source.map(|a| (format!("source=\"{a}\""), 1)).into_iter().collect(),
        },
        Family::by(
            "bre_proxy_failed_total",
            "Recovery jobs that ran out of upstreams.",
            "reason",
            &[("exhausted", sum(&|s| s.recovery.failed))],
        ),
        counter(
            "bre_proxy_inflight_dedup_total",
            "Recoveries not started because the gap was claimed already, here or by a sibling.",
            sum(&|s| s.recovery.deduplicated + s.recovery.claimed_by_sibling),
        ),
        counter(
            "bre_proxy_queue_dropped_total",
            "Recoveries dropped because the queue was full.",
            sum(&|s| s.recovery.dropped_queue_full),
        ),
        counter(
            "bre_proxy_recovered_total",
            "Frames recovered from an upstream endpoint or a sibling.",
            sum(&|s| s.recovery.recovered),
        ),
        counter(
            "bre_proxy_requests_total",
            "Misses that asked for recovery, queued or found claimed.",
            sum(&|s| s.recovery.queued + s.recovery.deduplicated),
        ),
        Family::by(
            "bre_rate_limit_drops_total",
            "NACKs or retransmits refused by a rate-limit tier.",
            "level",
            &[
                ("chain", sum(&|s| s.retry.rate_limited_chain)),
                ("group", sum(&|s| s.retry.rate_limited_group)),
                ("ip", sum(&|s| s.retry.rate_limited_ip)),
                ("sequence", sum(&|s| s.retry.rate_limited_sequence)),
            ],
        ),
        Family::by(
            "bre_response_send_errors_total",
            "Responses that could not be sent, by type.",
            "type",
            &[("ack", ack_errors), ("miss", miss_errors), ("throttled", throttled_errors)],
        ),
        Family::by(
            "bre_responses_sent_total",
            "Responses sent, by type.",
            "type",
            &[
                ("ack", sum(&|s| s.retry.acks_sent).saturating_sub(ack_errors)),
                ("miss", sum(&|s| s.retry.misses_sent).saturating_sub(miss_errors)),
                ("throttled", sum(&|s| s.retry.throttled_sent).saturating_sub(throttled_errors)),
            ],
        ),
        counter(
            "bre_retransmit_dedup_total",
            "Multicast retransmits skipped because the frame went to its group within the \
             dedup window.",
            sum(&|s| s.retry.retransmits_deduplicated),
        ),
        counter(
            "bre_retransmits_total",
            "Frames retransmitted to their multicast group.",
            sum(&|s| s.retry.retransmits_multicast),
        ),
        Family::by(
            "bre_tee_datagrams_total",
            "Datagrams on a tee-ingest socket (ricochet has none).",
            "form",
            &[("encap", 0), ("raw", 0)],
        ),
        counter(
            "bre_unicast_retransmits_total",
            "Frames retransmitted by unicast to the requester.",
            sum(&|s| s.retry.retransmits_unicast),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::WorkerSnapshot;

    fn host() -> HostInfo {
        HostInfo {
            hostname: "edge-1".into(),
            kernel_version: "6.8.0-45-generic".into(),
            cpu_logical: 8,
            mem_bytes: 16 << 30,
            rmem_max: "67108864".into(),
            nic: "eth0".into(),
            speed_mbps: "10000".into(),
            version: "0.1.0".into(),
        }
    }

    /// Two workers with distinct counts in every field the families read.
    fn snaps() -> Vec<WorkerSnapshot> {
        let src = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let mut a = WorkerSnapshot::default();
        a.retry.nacks = 10;
        a.retry.cache_hits = 6;
        a.retry.cache_misses = 3;
        a.retry.acks_sent = 6;
        a.retry.misses_sent = 3;
        a.retry.throttled_sent = 1;
        a.retry.retransmits_multicast = 5;
        a.retry.retransmits_unicast = 1;
        a.retry.retransmits_deduplicated = 1;
        a.retry.rate_limited_ip = 1;
        a.retry.rate_limited_sequence = 2;
        a.retry.cache.entries = 40;
        a.retry.cache.refused_too_large = 1;
        a.counters.fabric_frames = 42;
        a.counters.fabric_frames_cached = 41;
        a.counters.fabric_malformed = 2;
        a.counters.response_send_errors.ack = 1;
        a.counters.store_unavailable = 1;
        for _ in 0..40 {
            a.counters.cached_by_source.add(src("fd20::a01"));
        }
        a.counters.cached_by_source.add(None);
        a.recovery.queued = 4;
        a.recovery.deduplicated = 2;
        a.recovery.recovered = 3;
        a.recovery.failed = 1;
        a.recovery.dropped_queue_full = 1;
        let mut b = WorkerSnapshot::default();
        b.retry.nacks = 5;
        b.retry.cache_hits = 5;
        b.retry.acks_sent = 5;
        b.retry.retransmits_multicast = 5;
        b.retry.rate_limited_chain = 3;
        b.retry.rate_limited_group = 4;
        b.retry.cache.entries = 2;
        b.counters.fabric_frames = 2;
        b.counters.fabric_frames_cached = 2;
        b.counters.store_puts_dropped = 1;
        b.counters.cached_by_source.add(src("fd20::a01"));
        b.counters.cached_by_source.add(src("10.0.0.7"));
        b.recovery.claimed_by_sibling = 1;
        vec![a, b]
    }

    #[test]
    fn renders_the_reference_families_summed_over_workers() {
        let (snaps, host) = (snaps(), host());
        let input = Input {
            snaps: &snaps,
            beacons_sent: 7,
            store_errors: 2,
            instance: "edge-1",
            version: "0.1.0",
            host: &host,
            own_source: Some("fd20:0:0::0a01".parse().unwrap()),
        };
        let mut out = String::new();
        render(&input, &mut out);
        let s =
            "otel_scope_name=\"retry-endpoint\",otel_scope_schema_url=\"\",otel_scope_version=\"\"";
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let expected = [
            format!("bre_beacon_adverts_sent_total{{{s}}} 7"),
            format!("bre_cache_errors_total{{{s}}} 5"),
            format!("bre_cache_hits_total{{{s}}} 11"),
            format!("bre_cache_misses_total{{{s}}} 3"),
            format!("bre_cache_size{{{s}}} 42"),
            format!("bre_cache_stored_total{{{s},source=\"\"}} 1"),
            format!("bre_cache_stored_total{{{s},source=\"10.0.0.7\"}} 1"),
            format!("bre_cache_stored_total{{{s},source=\"fd20::a01\"}} 41"),
            format!("bre_frames_cached_total{{{s}}} 43"),
            format!("bre_frames_dropped_total{{{s},reason=\"decode_error\"}} 2"),
            format!("bre_frames_dropped_total{{{s},reason=\"tee_decap_error\"}} 0"),
            format!("bre_frames_received_total{{{s}}} 44"),
            "bre_host_info{cpu_logical=\"8\",hostname=\"edge-1\",kernel_version=\"6.8.0-45-generic\",\
             mem_bytes=\"17179869184\",nic=\"eth0\",rmem_max=\"67108864\",speed_mbps=\"10000\",\
             version=\"0.1.0\"} 1"
                .to_string(),
            format!("bre_nack_requests_total{{{s}}} 15"),
            "bre_own_source_info{source=\"fd20::a01\"} 1".to_string(),
            format!("bre_proxy_failed_total{{{s},reason=\"exhausted\"}} 1"),
            format!("bre_proxy_inflight_dedup_total{{{s}}} 3"),
            format!("bre_proxy_queue_dropped_total{{{s}}} 1"),
            format!("bre_proxy_recovered_total{{{s}}} 3"),
            format!("bre_proxy_requests_total{{{s}}} 6"),
            format!("bre_rate_limit_drops_total{{level=\"chain\",{s}}} 3"),
            format!("bre_rate_limit_drops_total{{level=\"group\",{s}}} 4"),
            format!("bre_rate_limit_drops_total{{level=\"ip\",{s}}} 1"),
            format!("bre_rate_limit_drops_total{{level=\"sequence\",{s}}} 2"),
            format!("bre_response_send_errors_total{{{s},type=\"ack\"}} 1"),
            format!("bre_response_send_errors_total{{{s},type=\"miss\"}} 0"),
            format!("bre_response_send_errors_total{{{s},type=\"throttled\"}} 0"),
            format!("bre_responses_sent_total{{{s},type=\"ack\"}} 10"),
            format!("bre_responses_sent_total{{{s},type=\"miss\"}} 3"),
            format!("bre_responses_sent_total{{{s},type=\"throttled\"}} 1"),
            format!("bre_retransmit_dedup_total{{{s}}} 1"),
            format!("bre_retransmits_total{{{s}}} 10"),
            format!("bre_tee_datagrams_total{{form=\"encap\",{s}}} 0"),
            format!("bre_tee_datagrams_total{{form=\"raw\",{s}}} 0"),
            format!("bre_unicast_retransmits_total{{{s}}} 1"),
            "target_info{service_instance_id=\"edge-1\",service_name=\"retry-endpoint\",\
             service_version=\"0.1.0\"} 1"
                .to_string(),
            format!(
                "ricochet_build_info{{version=\"0.1.0\",commit=\"{}\",profile=\"{}\",arch=\"{}\"}} 1",
                crate::BUILD_COMMIT,
                crate::BUILD_PROFILE,
                std::env::consts::ARCH
            ),
        ];
        assert_eq!(samples, expected);
        // Each family is introduced once, HELP before TYPE.
        assert!(out.starts_with(
            "# HELP bre_beacon_adverts_sent_total ADVERTs sent to the beacon group.\n\
             # TYPE bre_beacon_adverts_sent_total counter\n"
        ));
        assert!(out.contains("# TYPE bre_cache_size gauge\n"));
        assert!(out.contains("# TYPE bre_host_info gauge\n"));
        assert!(out.contains("# TYPE bre_own_source_info gauge\n"));
        assert_eq!(out.matches("# TYPE bre_cache_stored_total counter").count(), 1);
    }

    #[test]
    fn no_frames_cached_means_no_per_source_series() {
        let host = host();
        let input = Input {
            snaps: &[WorkerSnapshot::default()],
            beacons_sent: 0,
            store_errors: 0,
            instance: "a\"b",
            version: "0.1.0",
            host: &host,
            own_source: None,
        };
        let mut out = String::new();
        render(&input, &mut out);
        assert!(!out.contains("bre_cache_stored_total"));
        assert!(!out.contains("bre_own_source_info"), "only with --bind-source");
        assert!(out.contains("service_instance_id=\"a\\\"b\""));
        assert!(out.contains("bre_frames_received_total{otel_scope_name=\"retry-endpoint\""));
    }

    #[test]
    fn the_host_nic_is_the_first_up_interface_with_an_address() {
        let i = |name: &str, loopback, state: &str, has_address| Interface {
            name: name.into(),
            loopback,
            oper_state: state.into(),
            has_address,
        };
        let list = [
            i("lo", true, "unknown", true),
            i("wlan0", false, "up", true),
            i("eth1", false, "up", false),
            i("eth0", false, "down", true),
            i("enp6s0", false, "up", true),
        ];
        assert_eq!(pick_nic(&list).as_deref(), Some("enp6s0"));
        assert_eq!(pick_nic(&list[..2]).as_deref(), Some("wlan0"));
        assert_eq!(pick_nic(&list[..1]), None);
        assert_eq!(mem_total("MemTotal:       16318072 kB\nMemFree: 1 kB\n"), Some(16_709_705_728));
    }

    #[test]
    fn failed_sends_are_counted_by_response_type() {
        use crate::retry::Payload;
        use ricochet_wire::control::{AckFlags, NackFlags, NackRepr, ResponseRepr};
        let control = |emit: &dyn Fn(&mut [u8]) -> usize| {
            let mut buf = [0u8; 64];
            let len = emit(&mut buf) as u8;
            Payload::Control { buf, len }
        };
        let nack = NackRepr {
            flags: NackFlags(1),
            hash_key: 1,
            start_seq: 2,
            end_seq: 2,
            subtree_id: [0; 32],
        };
        let payloads = [
            control(&|b| ResponseRepr::ack(7, AckFlags(1)).emit(b).unwrap()),
            control(&|b| ResponseRepr::ack(8, AckFlags(0)).emit(b).unwrap()),
            control(&|b| ResponseRepr::miss().emit(b).unwrap()),
            control(&|b| ResponseRepr::throttled(9, 2).emit(b).unwrap()),
            control(&|b| nack.emit(b).unwrap()),
            Payload::Frame(bytes::Bytes::from_static(&[0x12; 16])),
        ];
        let mut c = crate::rt::ResponseCounts::default();
        for p in &payloads {
            c.count(p);
        }
        assert_eq!(c, crate::rt::ResponseCounts { ack: 2, miss: 1, throttled: 1 });
    }

    #[test]
    fn a_flood_of_sources_is_bounded() {
        let mut c = crate::rt::SourceCounts::default();
        for i in 0..1000u32 {
            c.add(Some(IpAddr::from(i.to_be_bytes())));
        }
        c.add(Some(IpAddr::from(0u32.to_be_bytes())));
        let all: Vec<_> = c.iter().collect();
        assert_eq!(all.len(), crate::rt::MAX_SOURCES + 1);
        assert_eq!(all[0], (Some(IpAddr::from(0u32.to_be_bytes())), 2));
        assert_eq!(all.last(), Some(&(None, 1000 - crate::rt::MAX_SOURCES as u64)));
        assert_eq!(all.iter().map(|(_, n)| n).sum::<u64>(), 1001);
    }
}
