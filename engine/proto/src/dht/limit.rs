//! Per-source request rate limiting, in bounded memory.
//!
//! # Contract
//! - Each source IP gets a token bucket (`per_ip_rate` requests/s, burst
//!   `per_ip_burst`). At most `max_tracked` IPs are tracked; when the
//!   table is full, idle entries (bucket refilled) are swept at most once
//!   a second, and sources that still find no room share one overflow
//!   bucket, so a flood from many (possibly forged) addresses is capped as
//!   a whole instead of growing the table.
//! - STOREs additionally share one node-wide bucket (`store_rate`), since
//!   each new record costs a signature verification: however many source
//!   addresses a flood uses, verification work stays bounded.
//! - Only requests are limited: a reply is accepted only if it matches an
//!   outstanding request, which is its own limit.

use core::net::IpAddr;
use core::time::Duration;
use std::collections::BTreeMap;
use std::time::Instant;

/// Request rate limits.
#[derive(Debug, Clone)]
pub struct RateSettings {
    /// Sustained requests per second answered per source IP.
    pub per_ip_rate: f64,
    /// Burst allowance per source IP.
    pub per_ip_burst: f64,
    /// Source IPs tracked individually.
    pub max_tracked: usize,
    /// Sustained requests per second shared by untracked sources.
    pub overflow_rate: f64,
    /// Burst allowance of the shared overflow bucket.
    pub overflow_burst: f64,
    /// Sustained STOREs per second accepted from all sources together.
    pub store_rate: f64,
    /// Burst allowance of the STORE bucket.
    pub store_burst: f64,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            per_ip_rate: 20.0,
            per_ip_burst: 60.0,
            max_tracked: 4096,
            overflow_rate: 200.0,
            overflow_burst: 400.0,
            store_rate: 500.0,
            store_burst: 1000.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn full_at(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * rate >= burst
    }
}

/// An IP as one integer (IPv4 as its IPv4-mapped IPv6 form, which is the
/// same address): plain integer keys keep the map cheap.
fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Token buckets per source IP plus a shared overflow bucket.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    settings: RateSettings,
    /// Keyed by [`ip_key`].
    buckets: BTreeMap<u128, Bucket>,
    overflow: Option<Bucket>,
    stores: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl Limiter {
    pub(crate) fn new(settings: RateSettings) -> Self {
        Limiter {
            settings,
            buckets: BTreeMap::new(),
            overflow: None,
            stores: None,
            last_sweep: None,
        }
    }

    /// Whether a request from `ip` may be answered at `now`.
    pub(crate) fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let s = &self.settings;
        let (rate, burst) = (s.per_ip_rate, s.per_ip_burst);
        let ip = ip_key(ip);
        if let Some(b) = self.buckets.get_mut(&ip) {
            return b.take(now, rate, burst);
        }
        if self.buckets.len() >= s.max_tracked
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_sweep = Some(now);
            self.buckets.retain(|_, b| !b.full_at(now, rate, burst));
        }
        if self.buckets.len() < self.settings.max_tracked {
            let mut b = Bucket { tokens: burst, at: now };
            let ok = b.take(now, rate, burst);
            self.buckets.insert(ip, b);
            return ok;
        }
        let (orate, oburst) = (self.settings.overflow_rate, self.settings.overflow_burst);
        self.overflow.get_or_insert(Bucket { tokens: oburst, at: now }).take(now, orate, oburst)
    }

    /// Whether one more STORE may be processed at `now` (node-wide).
    pub(crate) fn allow_store(&mut self, now: Instant) -> bool {
        let (rate, burst) = (self.settings.store_rate, self.settings.store_burst);
        self.stores.get_or_insert(Bucket { tokens: burst, at: now }).take(now, rate, burst)
    }

    /// Source IPs tracked individually.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_then_overflow() {
        let t0 = Instant::now();
        let s = RateSettings {
            per_ip_rate: 10.0,
            per_ip_burst: 5.0,
            max_tracked: 2,
            overflow_rate: 1.0,
            overflow_burst: 2.0,
            store_rate: 1.0,
            store_burst: 3.0,
        };
        let mut l = Limiter::new(s);
        let a: IpAddr = [10, 0, 0, 1].into();
        assert_eq!((0..10).filter(|_| l.allow(t0, a)).count(), 5);
        // 0.5 s later: five more tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| l.allow(t1, a)).count(), 5);
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!(l.allow(t1, b));
        assert_eq!(l.tracked(), 2);
        // The table is full; a third source shares the overflow bucket.
        let c: IpAddr = [10, 0, 0, 3].into();
        let d: IpAddr = [10, 0, 0, 4].into();
        assert!(l.allow(t1, c));
        assert!(l.allow(t1, d));
        assert!(!l.allow(t1, c));
        // Much later both tracked buckets are idle and get swept.
        let t2 = t1 + Duration::from_secs(10);
        assert!(l.allow(t2, c));
        assert!(l.tracked() <= 2);
        assert_eq!((0..10).filter(|_| l.allow_store(t2)).count(), 3);
        assert!(l.allow_store(t2 + Duration::from_secs(1)));
    }
}
