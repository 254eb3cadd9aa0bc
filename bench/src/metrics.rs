//! Scraping the engine's `/metrics` (Prometheus text) over plain HTTP/1.1.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// Every metric of a scrape summed over its label sets (per-core series
/// add up to the engine's total), by metric name.
pub fn totals(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        let name = series.split('{').next().unwrap_or(series);
        *out.entry(name.to_string()).or_insert(0.0) += v;
    }
    out
}

/// Sum of every series of `name` in a scrape.
pub fn sum(body: &str, name: &str) -> f64 {
    totals(body).get(name).copied().unwrap_or(0.0)
}

/// A scrape of the engine at `addr`, summed per metric (empty on error).
pub fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    match http_get(addr, "/metrics") {
        Ok((200, body)) => totals(&body),
        _ => BTreeMap::new(),
    }
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
pub fn wait_for(addr: SocketAddr, metric: &str, target: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = scrape(addr).get(metric).copied().unwrap_or(0.0);
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
}
