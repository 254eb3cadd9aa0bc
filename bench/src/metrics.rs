//! Scraping an endpoint's `/metrics` (Prometheus text) over plain
//! HTTP/1.1, and reading from two scrapes whether answers were rate-limited
//! or dropped by the kernel ([`Silence`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where an endpoint's Prometheus metrics are: `http://HOST:PORT/PATH`
/// (`http://` and the path optional: `127.0.0.1:9090` means
/// `http://127.0.0.1:9090/metrics`; IPv6 as `[::1]:9090`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    /// The resolved address.
    pub addr: SocketAddr,
    /// The request path.
    pub path: String,
}

impl FromStr for MetricsUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("https://") {
            return Err(format!("{s:?}: only plain http:// is supported"));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/metrics".to_string()),
        };
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{s:?}: {e} (expected http://HOST:PORT/metrics)"))?
            .next()
            .ok_or_else(|| format!("{s:?}: resolves to no address"))?;
        Ok(MetricsUrl { addr, path })
    }
}

impl From<SocketAddr> for MetricsUrl {
    fn from(addr: SocketAddr) -> Self {
        MetricsUrl { addr, path: "/metrics".into() }
    }
}

impl std::fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

impl MetricsUrl {
    /// A scrape, summed per metric (empty on error).
    pub fn scrape(&self) -> BTreeMap<String, f64> {
        match http_get(self.addr, &self.path) {
            Ok((200, body)) => totals(&body),
            _ => BTreeMap::new(),
        }
    }
}

/// What an endpoint's counters say about answers that never came: NACKs it
/// refused for its rate limits and datagrams its kernel dropped, between
/// two scrapes. Names are matched loosely (`*rate_limited*`, `*throttled*`)
/// so any endpoint exporting such counters is read.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Silence {
    /// NACKs refused by a rate limit (`*rate_limited*_total`).
    pub rate_limited: f64,
    /// THROTTLED responses sent (`*throttled*_total`): refusals that were answered.
    pub throttled_sent: f64,
    /// Datagrams the endpoint's kernel dropped at full receive queues
    /// (`ricochet_kernel_drops_total`, i.e. its sockets' SO_RXQ_OVFL).
    pub kernel_drops: f64,
}

impl Silence {
    /// From counter deltas ([`delta`]).
    pub fn of(delta: &BTreeMap<String, f64>) -> Self {
        let sum = |f: &dyn Fn(&str) -> bool| -> f64 {
            // A fold from +0.0: an empty f64 `sum()` is -0.0, printed "-0".
            delta.iter().filter(|(k, _)| f(k)).fold(0.0, |acc, (_, v)| acc + v)
        };
        Silence {
            rate_limited: sum(&|k| k.contains("rate_limited") || k.contains("ratelimited")),
            throttled_sent: sum(&|k| k.contains("throttled")),
            kernel_drops: sum(&|k| k.contains("kernel_drops")),
        }
    }

    /// Refusals that went unanswered (limited but no THROTTLED sent).
    pub fn silent_refusals(&self) -> f64 {
        (self.rate_limited - self.throttled_sent).max(0.0)
    }

    /// A hint explaining `timeouts` from these counters and the load
    /// generator's own socket drops (`local_drops`, SO_RXQ_OVFL), or None
    /// when nothing needs explaining. `scraped`: whether the endpoint's
    /// counters were read at all.
    pub fn explain(&self, timeouts: u64, local_drops: u64, scraped: bool) -> Option<String> {
        let mut parts = vec![];
        if self.rate_limited > 0.0 {
            parts.push(format!(
                "the endpoint rate-limited {:.0} NACKs ({:.0} answered THROTTLED, {:.0} dropped silently) — \
                 raise its limits (ricochet: --rl-ip-rate, --rl-chain-rate, …) or send fewer",
                self.rate_limited,
                self.throttled_sent.min(self.rate_limited),
                self.silent_refusals()
            ));
        }
        if self.kernel_drops > 0.0 {
            parts.push(format!(
                "the endpoint's kernel dropped {:.0} datagrams at full receive queues",
                self.kernel_drops
            ));
        }
        if local_drops > 0 {
            parts.push(format!(
                "this load generator's sockets dropped {local_drops} answers at full receive queues (SO_RXQ_OVFL)"
            ));
        }
        if timeouts == 0 && parts.is_empty() {
            return None;
        }
        if parts.is_empty() {
            return Some(if scraped {
                format!(
                    "{timeouts} NACKs got no answer, and neither the endpoint's counters nor this \
                     load generator's sockets show a rate limit or a drop"
                )
            } else {
                format!(
                    "{timeouts} NACKs got no answer; give --metrics URL to tell rate-limit refusals \
                     and kernel drops at the endpoint from real timeouts"
                )
            });
        }
        Some(parts.join("; "))
    }
}

/// GET `path` from `addr`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The samples of a Prometheus text scrape: (metric name, the label set
/// between its braces or "", value); comments and unparsable lines skipped.
fn samples(body: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let v = value.parse::<f64>().ok()?;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        Some((name, labels.trim_end_matches('}'), v))
    })
}

/// Every metric of a scrape summed over its label sets (per-core series
/// add up to the engine's total), by metric name.
pub fn totals(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, _, v) in samples(body) {
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    out
}

/// Sum of every series of `name` in a scrape.
pub fn sum(body: &str, name: &str) -> f64 {
    samples(body).filter(|s| s.0 == name).map(|s| s.2).sum()
}

/// A scrape of the engine at `addr`, summed per metric (empty on error).
pub fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    totals(&scrape_text(addr))
}

/// The engine's `/metrics` text at `addr` (empty on error).
pub fn scrape_text(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics") {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// The series of `name` by its `core` label, indexed by core (missing
/// cores are 0).
pub fn per_core(body: &str, name: &str) -> Vec<f64> {
    let mut out: Vec<f64> = vec![];
    for (_, labels, v) in samples(body).filter(|s| s.0 == name) {
        let core = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("core=\""))
            .and_then(|c| c.trim_end_matches('"').parse::<usize>().ok());
        let Some(core) = core else { continue };
        if out.len() <= core {
            out.resize(core + 1, 0.0);
        }
        out[core] += v;
    }
    out
}

/// Counter deltas between two scrapes, for the metrics worth reporting
/// (zero deltas left out).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| k.ends_with("_total"))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Polls `metric` (summed) until it reaches `target` or `timeout` passes;
/// returns the last value seen.
pub fn wait_for(url: &MetricsUrl, metric: &str, target: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = url.scrape().get(metric).copied().unwrap_or(0.0);
        if v >= target || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_label_sets() {
        let body = "# HELP x\n# TYPE a_total counter\na_total{core=\"0\"} 3\na_total{core=\"1\"} 4\nb 1.5\n\
                    ricochet_dropped_total{reason=\"truncated\",core=\"0\"} 2\n";
        let t = totals(body);
        assert_eq!(t["a_total"], 7.0);
        assert_eq!(t["b"], 1.5);
        assert_eq!(sum(body, "ricochet_dropped_total"), 2.0);
        let mut later = t.clone();
        *later.get_mut("a_total").unwrap() += 5.0;
        let d = delta(&t, &later);
        assert_eq!(d.len(), 1);
        assert_eq!(d["a_total"], 5.0);
    }

    #[test]
    fn per_core_series() {
        let body = "# TYPE ricochet_nacks_total counter\nricochet_nacks_total{core=\"0\"} 3\n\
                    ricochet_nacks_total{core=\"1\"} 4\nricochet_nacks_totalx{core=\"0\"} 9\n\
                    ricochet_dropped_total{reason=\"x\",core=\"2\"} 5\n";
        assert_eq!(per_core(body, "ricochet_nacks_total"), vec![3.0, 4.0]);
        assert_eq!(per_core(body, "ricochet_dropped_total"), vec![0.0, 0.0, 5.0]);
        assert!(per_core(body, "ricochet_acks_sent_total").is_empty());
    }

    #[test]
    fn metrics_urls_parse() {
        let u: MetricsUrl = "http://127.0.0.1:9090/metrics".parse().unwrap();
        assert_eq!((u.addr, u.path.as_str()), ("127.0.0.1:9090".parse().unwrap(), "/metrics"));
        let u: MetricsUrl = "[::1]:9090".parse().unwrap();
        assert_eq!((u.addr, u.path.as_str()), ("[::1]:9090".parse().unwrap(), "/metrics"));
        assert_eq!(u.to_string(), "http://[::1]:9090/metrics");
        assert!("https://x:1/metrics".parse::<MetricsUrl>().is_err());
    }

    #[test]
    fn silence_tells_rate_limits_from_kernel_drops() {
        let d: BTreeMap<String, f64> = [
            ("ricochet_rate_limited_ip_total", 10.0),
            ("ricochet_rate_limited_chain_total", 5.0),
            ("ricochet_throttled_sent_total", 4.0),
            ("ricochet_kernel_drops_total", 2.0),
            ("ricochet_nacks_total", 100.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let s = Silence::of(&d);
        assert_eq!((s.rate_limited, s.throttled_sent, s.kernel_drops), (15.0, 4.0, 2.0));
        assert_eq!(s.silent_refusals(), 11.0);
        let h = s.explain(11, 3, true).unwrap();
        assert!(h.contains("rate-limited 15") && h.contains("kernel dropped 2"), "{h}");
        assert!(h.contains("dropped 3 answers"), "{h}");
        assert_eq!(Silence::default().explain(0, 0, true), None);
        assert!(Silence::default().explain(5, 0, false).unwrap().contains("--metrics"));
    }
}
