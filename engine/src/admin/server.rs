//! The admin listener's accept loop, with bounded resources: whoever can
//! reach the admin port must not be able to take `/healthz` and
//! `/metrics` away from the orchestrator and the scraper.
//!
//! - **Connection caps.** At most [`Limits::max_connections`] open
//!   connections in all and [`Limits::per_source`] from one address; a
//!   connection over either cap is closed at once (counted, and logged at
//!   most every 10 s). The per-source cap keeps one client's idle
//!   connections from filling the global one: another address is still
//!   served.
//! - **Header timeout.** A connection that has not sent a whole request
//!   head within [`Limits::header_timeout`] of opening, or of its previous
//!   response (keep-alive), is closed: a slowloris client holds a slot for
//!   that long at most. A response being streamed (`/events`) is not
//!   cut: its keep-alive comments show the subscriber is alive.
//!
//! HTTP/1.1 only, served by hyper with the axum router as the service.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::metrics::{self as prom, Section};

/// The admin listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub per_source: usize,
    /// Longest wait for a request head.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 256, per_source: 32, header_timeout: Duration::from_secs(10) }
    }
}

/// What the caps and timeouts did: `ricochet_admin_*` and `/debug/admin`.
#[derive(Debug, Default)]
pub struct ServerStats {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused_total: AtomicU64,
    refused_source: AtomicU64,
    timed_out: AtomicU64,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    last_warning: Mutex<Option<Instant>>,
}

/// Why a connection was closed unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The global cap.
    Total,
    /// The per-source cap.
    Source,
}

impl ServerStats {
    /// Takes a slot for a connection from `src`, or says which cap is full.
    pub(crate) fn admit(self: &Arc<Self>, src: IpAddr, limits: &Limits) -> Result<Slot, Refusal> {
        let mut by_source = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= limits.max_connections {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let n = by_source.entry(src).or_default();
        if *n >= limits.per_source {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Source);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { stats: self.clone(), src })
    }

    /// Whether a warning may be logged now (at most one every 10 s).
    fn may_warn(&self, now: Instant) -> bool {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A connection's slot, given back when it closes.
#[derive(Debug)]
pub(crate) struct Slot {
    stats: Arc<ServerStats>,
    src: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_source = self.stats.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_source.get_mut(&self.src) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.src);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Section for ServerStats {
    fn name(&self) -> &'static str {
        "admin"
    }

    fn metrics(&self, out: &mut String) {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        prom::gauge(
            out,
            "ricochet_admin_connections",
            "Admin HTTP connections open now.",
            self.open() as f64,
        );
        prom::counter(
            out,
            "ricochet_admin_connections_total",
            "Admin HTTP connections accepted and served.",
            v(&self.accepted),
        );
        prom::labelled(
            out,
            "ricochet_admin_refused_total",
            "counter",
            "Admin HTTP connections closed unserved, by the cap that was full.",
            &[
                ("cap=\"total\"".into(), v(&self.refused_total)),
                ("cap=\"source\"".into(), v(&self.refused_source)),
            ],
        );
        prom::counter(
            out,
            "ricochet_admin_header_timeouts_total",
            "Admin HTTP connections closed for not sending a request head in time.",
            v(&self.timed_out),
        );
    }

    fn debug(&self) -> serde_json::Value {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "open": self.open(),
            "accepted": v(&self.accepted),
            "refused": { "total": v(&self.refused_total), "source": v(&self.refused_source) },
            "header_timeouts": v(&self.timed_out),
        })
    }
}

/// Serves `router` on `listener` within `limits` until the task is
/// dropped.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stats: Arc<ServerStats>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                if stats.may_warn(Instant::now()) {
                    tracing::warn!(error = %e, "admin listener cannot accept");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match stats.admit(source(peer), &limits) {
            Ok(slot) => slot,
            Err(cap) => {
                if stats.may_warn(Instant::now()) {
                    let (which, most) = match cap {
                        Refusal::Total => ("connections", limits.max_connections),
                        Refusal::Source => ("connections from one address", limits.per_source),
                    };
                    tracing::warn!(%peer, "admin HTTP: {most} {which} open; closing new ones (ricochet_admin_refused_total)");
                }
                drop(stream);
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await
                && e.is_timeout()
            {
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                if stats.may_warn(Instant::now()) {
                    tracing::warn!(%peer, "admin HTTP: no request head in {:?}; connection closed", limits.header_timeout);
                }
            }
        });
    }
}

/// The address a cap counts: IPv4-mapped IPv6 is the IPv4 address.
fn source(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_refuse_past_their_bound_and_slots_come_back() {
        let stats = Arc::new(ServerStats::default());
        let limits = Limits { max_connections: 3, per_source: 2, ..Limits::default() };
        let a1 = stats.admit(ip(1), &limits).unwrap();
        let _a2 = stats.admit(ip(1), &limits).unwrap();
        assert_eq!(stats.admit(ip(1), &limits).unwrap_err(), Refusal::Source);
        let _b1 = stats.admit(ip(2), &limits).unwrap();
        assert_eq!(stats.admit(ip(3), &limits).unwrap_err(), Refusal::Total);
        assert_eq!(stats.open(), 3);
        drop(a1);
        assert_eq!(stats.open(), 2);
        let _c1 = stats.admit(ip(3), &limits).unwrap();
        let mut m = String::new();
        stats.metrics(&mut m);
        assert!(m.contains("ricochet_admin_refused_total{cap=\"total\"} 1\n"), "{m}");
        assert!(m.contains("ricochet_admin_refused_total{cap=\"source\"} 1\n"), "{m}");
        assert!(m.contains("ricochet_admin_connections 3\n"), "{m}");
    }

    #[test]
    fn a_mapped_address_counts_as_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(source(mapped), ip(1));
    }

    #[test]
    fn warnings_are_rate_limited() {
        let stats = ServerStats::default();
        let t0 = Instant::now();
        assert!(stats.may_warn(t0));
        assert!(!stats.may_warn(t0 + Duration::from_secs(9)));
        assert!(stats.may_warn(t0 + Duration::from_secs(10)));
    }
}
