//! Three sibling endpoints of one downstream domain sharing a real Redis
//! server (REDIS_ADDR, cache backend memory): every gap costs exactly one
//! upstream fetch and one multicast retransmit into the domain, however
//! many siblings the listener asks. With Redis killed mid-run the siblings
//! keep serving and fall back to local dedup (at most one fetch per
//! sibling per gap); when Redis returns, dedup is shared again.
//!
//! Topology on loopback: domain A (publisher → endpoint U), a bridge into
//! domain B dropping every 25th frame, siblings D0–D2 on B's data port
//! (each with its own NACK and admin port) with U as their upstream, and a
//! listener on B's groups that counts every copy of every frame.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ricochet_e2e::{
    Engine, Ports, Publisher, RedisServer, bridge, drain, group_listener, nack_client, nack_for,
    ports,
};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x5EB1_1265;
const BATCH: u64 = 200;
const DROP_EVERY: u64 = 25;

struct Domain {
    upstream: Engine,
    siblings: Vec<Engine>,
    listener: Vec<UdpSocket>,
    b_port: u16,
    publisher: Publisher,
    /// Copies of each SeqNum seen on B's groups.
    copies: BTreeMap<u64, u32>,
}

impl Domain {
    fn start(redis: &RedisServer) -> Domain {
        // The three siblings share 127.0.0.1 here (in a deployment each has
        // its own address): with Redis down all three fetch each gap, more
        // at once than U's default per-IP burst (10) lets through.
        // They proxy through U from 127.0.0.1: U must allow them.
        let upstream = Engine::start(&[
            "--backend",
            "epoll",
            "--rl-ip-burst",
            "1000",
            "--proxy-allow",
            "127.0.0.1/32",
        ]);
        let b_port = ports().listen;
        let up = format!("127.0.0.1:{}", upstream.nack_port);
        let siblings = (0..3)
            .map(|i| {
                // Siblings share the domain's data port; retransmits go there.
                let p = Ports { listen: b_port, egress: b_port, ..ports() };
                let admin = p.admin_addr();
                let args: Vec<String> = [
                    "--ipv4-lab",
                    "--backend",
                    if i % 2 == 0 { "epoll" } else { "uring" },
                    "--proxy-enabled",
                    "--upstream-retry-endpoints",
                    &up,
                    "--redis-addr",
                    &redis.addr(),
                    "--instance",
                    &format!("sibling-{i}"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Engine::launch(&[], &args, p, admin)
            })
            .collect();
        let listener = (0..4).map(|g| group_listener(g, b_port)).collect();
        let publisher = Publisher::new(upstream.listen_port);
        Domain { upstream, siblings, listener, b_port, publisher, copies: BTreeMap::new() }
    }

    fn collect(&mut self) {
        for l in &self.listener {
            for d in drain(l, Duration::from_millis(30)) {
                if let Ok(f) = Frame::new_checked(&d)
                    && f.hash_key() == FLOW
                {
                    *self.copies.entry(f.seq()).or_default() += 1;
                }
            }
        }
    }

    fn sum(&self, metric: &str) -> f64 {
        self.siblings.iter().map(|e| e.metric_sum(metric)).sum()
    }

    fn wait_siblings(&self, what: &str, cond: impl Fn(&Engine) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.siblings.iter().all(&cond) {
            assert!(Instant::now() < deadline, "siblings never reached: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes SeqNums `first..first+BATCH` through the lossy bridge and
    /// returns the gaps B's listener sees (the bridge's drops).
    fn publish(&mut self, first: u64) -> Vec<u64> {
        let bridge = bridge(self.upstream.listen_port, self.b_port, BATCH, DROP_EVERY);
        for seq in first..first + BATCH {
            self.publisher.send_tx(FLOW, seq, &seq.to_be_bytes());
        }
        let dropped = bridge.join().unwrap();
        // Wait until B's listener has everything the bridge forwarded.
        let forwarded = (BATCH - dropped.len() as u64) as f64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.collect();
            let have: BTreeSet<u64> = self.copies.keys().copied().collect();
            let seen = (first..first + BATCH).filter(|s| have.contains(s)).count() as f64;
            if seen >= forwarded || Instant::now() > deadline {
                break;
            }
        }
        let gaps: Vec<u64> =
            (first..first + BATCH).filter(|s| !self.copies.contains_key(s)).collect();
        assert_eq!(gaps, dropped.iter().copied().collect::<Vec<_>>(), "gaps are the drops");
        gaps
    }

    /// NACKs every gap to all three siblings at once, then waits until
    /// every gap has arrived on B's groups and the siblings are idle.
    fn nack_all(&mut self, gaps: &[u64]) {
        let client = nack_client();
        for &seq in gaps {
            for s in &self.siblings {
                client.send_to(&nack_for(FLOW, seq, 0), s.nack_addr()).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while gaps.iter().any(|s| !self.copies.contains_key(s)) {
            assert!(
                Instant::now() < deadline,
                "unfilled gaps {:?}",
                gaps.iter().filter(|s| !self.copies.contains_key(s)).collect::<Vec<_>>()
            );
            self.collect();
        }
        // Idle: no recovery job in flight and no request parked for Redis
        // anywhere, so every retransmit there will be has been sent (and a
        // loopback multicast send delivers before it returns).
        self.wait_siblings("idle", |e| {
            e.metric_sum("ricochet_recovery_in_flight") == 0.0
                && e.metric_sum("ricochet_store_pending") == 0.0
        });
        self.collect();
    }

    fn copies_of(&self, gaps: &[u64]) -> Vec<u32> {
        gaps.iter().map(|s| self.copies.get(s).copied().unwrap_or(0)).collect()
    }
}

#[test]
fn siblings_sharing_redis_fetch_and_retransmit_each_gap_once() {
    let mut redis = RedisServer::start();
    let mut d = Domain::start(&redis);
    d.wait_siblings("redis up", |e| e.metric_sum("ricochet_redis_up") == 1.0);

    // 1. Redis up: one upstream fetch and one retransmit per gap.
    let gaps = d.publish(1);
    assert!(gaps.len() >= 4, "the bridge dropped {gaps:?}");
    d.nack_all(&gaps);
    let n = gaps.len() as f64;
    let proxied = d.upstream.metric_sum("ricochet_nacks_proxied_total");
    assert_eq!(proxied, n, "one upstream fetch per gap");
    assert_eq!(d.copies_of(&gaps), vec![1; gaps.len()], "one retransmit into B per gap");
    // Every NACK a sibling did not act on lost a shared claim: the proxy
    // claim (it missed) or the retransmit claim (it held the frame by then).
    let lost = d.sum("ricochet_recovery_claimed_by_sibling_total")
        + d.sum("ricochet_retransmits_deduplicated_total");
    assert_eq!(lost, 2.0 * n, "the other two siblings stood down for each gap");
    assert_eq!(d.sum("ricochet_recovery_recovered_total"), n);

    // 2. Redis killed: service continues, dedup is local to each sibling.
    redis.stop();
    d.wait_siblings("redis down", |e| e.metric_sum("ricochet_redis_up") == 0.0);
    let gaps2 = d.publish(BATCH + 1);
    let before = d.upstream.metric_sum("ricochet_nacks_proxied_total");
    d.nack_all(&gaps2);
    let fetched = d.upstream.metric_sum("ricochet_nacks_proxied_total") - before;
    let n2 = gaps2.len() as f64;
    assert!(
        (n2..=3.0 * n2).contains(&fetched),
        "without Redis each sibling fetches a gap at most once: {fetched} fetches for {n2} gaps"
    );
    assert!(d.copies_of(&gaps2).iter().all(|&c| (1..=3).contains(&c)), "{:?}", d.copies_of(&gaps2));
    assert!(
        d.sum("ricochet_recovery_claims_unavailable_total")
            + d.sum("ricochet_redis_unavailable_total")
            > 0.0,
        "claims fell back to local dedup"
    );
    // Local dedup still holds within each sibling: NACK the same gaps again
    // and nothing is fetched or retransmitted twice by one sibling.
    let fetched_once = d.upstream.metric_sum("ricochet_nacks_proxied_total");
    let client = nack_client();
    for &seq in &gaps2 {
        client.send_to(&nack_for(FLOW, seq, 0), d.siblings[0].nack_addr()).unwrap();
    }
    d.wait_siblings("second NACKs answered", |e| e.metric_sum("ricochet_store_pending") == 0.0);
    d.nack_all(&gaps2);
    assert_eq!(d.upstream.metric_sum("ricochet_nacks_proxied_total"), fetched_once);

    // 3. Redis back: shared dedup resumes.
    redis.restart();
    d.wait_siblings("redis up again", |e| e.metric_sum("ricochet_redis_up") == 1.0);
    let gaps3 = d.publish(2 * BATCH + 1);
    let before = d.upstream.metric_sum("ricochet_nacks_proxied_total");
    d.nack_all(&gaps3);
    let fetched = d.upstream.metric_sum("ricochet_nacks_proxied_total") - before;
    assert_eq!(fetched, gaps3.len() as f64, "one upstream fetch per gap again");
    assert_eq!(d.copies_of(&gaps3), vec![1; gaps3.len()], "one retransmit per gap again");
}

#[test]
fn with_the_redis_cache_backend_a_sibling_serves_frames_only_another_received() {
    let redis = RedisServer::start();
    let shared = ["--cache-backend", "redis", "--redis-addr", &redis.addr()];
    // Two siblings on different data ports: only the first hears the
    // publisher, so the second can serve a frame only from Redis.
    let heard = Engine::start(&[&["--backend", "epoll"][..], &shared[..]].concat());
    let deaf = Engine::start(&[&["--backend", "uring"][..], &shared[..]].concat());
    for e in [&heard, &deaf] {
        let m = e.wait_metrics(Duration::from_secs(10), |m| {
            ricochet_e2e::metric_value(m, "ricochet_redis_up") == Some(1.0)
        });
        assert_eq!(ricochet_e2e::metric_value(&m, "ricochet_redis_up"), Some(1.0), "{m}");
    }
    let publisher = Publisher::new(heard.listen_port);
    let mut groups = BTreeMap::new();
    for seq in 1..=20 {
        let (_, g) = publisher.send_tx(FLOW, seq, b"shared");
        groups.insert(seq, g);
    }
    let puts = "ricochet_redis_ops_total{op=\"put\",result=\"ok\"}";
    let m = heard.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_value(m, puts) == Some(20.0)
    });
    assert_eq!(ricochet_e2e::metric_value(&m, puts), Some(20.0), "every frame written to Redis");
    assert_eq!(deaf.metric_sum("ricochet_frames_cached_total"), 0.0);

    let listener = group_listener(groups[&7], deaf.egress_port);
    let client = nack_client();
    client.send_to(&nack_for(FLOW, 7, 0), deaf.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    let ack = ricochet_wire::control::ResponseRepr::parse(&replies[0]).unwrap();
    assert_eq!(
        ack,
        ricochet_wire::control::ResponseRepr::ack(7, ricochet_wire::control::AckFlags(1))
    );
    let got: Vec<u64> = drain(&listener, Duration::from_millis(500))
        .iter()
        .filter_map(|d| Frame::new_checked(d).ok().map(|f| f.seq()))
        .collect();
    assert_eq!(got, [7], "the frame came from Redis and went to its group");
    assert_eq!(deaf.metric_sum("ricochet_shared_hits_total"), 1.0);
    // Cached locally now: the next NACK does not go to Redis.
    let gets =
        |e: &Engine| e.metric("ricochet_redis_ops_total{op=\"get\",result=\"hit\"}").unwrap_or(0.0);
    assert_eq!(gets(&deaf), 1.0);
    assert_eq!(deaf.metric_sum("ricochet_frames_cached_total"), 1.0);
    // A frame nobody has: MISS after the lookup.
    client.send_to(&nack_for(FLOW, 99, 0), deaf.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    assert_eq!(
        ricochet_wire::control::ResponseRepr::parse(&replies[0]),
        Ok(ricochet_wire::control::ResponseRepr::miss())
    );
    assert_eq!(deaf.metric_sum("ricochet_shared_misses_total"), 1.0);
}

/// A publisher's restart reuses its HashKey and starts its SeqNums again,
/// so Redis holds the old epoch's frames under the new epoch's keys. The
/// endpoint that confirms the restart writes every frame of the new epoch
/// (the confirming frame and the candidates held as evidence before it),
/// and a sibling serving from Redis serves the new bytes, never the old.
#[test]
fn after_a_publisher_restart_redis_holds_the_new_epochs_frames() {
    let redis = RedisServer::start();
    let shared = ["--cache-backend", "redis", "--redis-addr", &redis.addr()];
    let heard = Engine::start(&[&["--backend", "uring"][..], &shared[..]].concat());
    let deaf = Engine::start(&[&["--backend", "epoll"][..], &shared[..]].concat());
    for e in [&heard, &deaf] {
        e.wait_metrics(Duration::from_secs(10), |m| {
            ricochet_e2e::metric_value(m, "ricochet_redis_up") == Some(1.0)
        });
    }
    let puts = "ricochet_redis_ops_total{op=\"put\",result=\"ok\"}";
    let publisher = Publisher::new(heard.listen_port);
    for seq in 1..=10 {
        publisher.send_tx(FLOW, seq, b"before the restart");
    }
    heard.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_value(m, puts) == Some(10.0)
    });
    // The restarted publisher: the same keys, other bytes. Its first two
    // frames are evidence only; the third confirms the new epoch.
    let restarted: Vec<_> =
        (1..=3).map(|seq| publisher.send_tx(FLOW, seq, b"after the restart")).collect();
    let resets = "ricochet_cache_epoch_resets_total";
    let m = heard.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_value(m, puts) == Some(13.0)
            && ricochet_e2e::metric_sum(m, resets) == 1.0
    });
    assert_eq!(
        ricochet_e2e::metric_value(&m, puts),
        Some(13.0),
        "the whole new epoch written: {m}"
    );
    assert_eq!(ricochet_e2e::metric_sum(&m, resets), 1.0, "{m}");

    let client = nack_client();
    for (seq, (bytes, group)) in (1..=3).zip(&restarted) {
        let listener = group_listener(*group, deaf.egress_port);
        client.send_to(&nack_for(FLOW, seq, 0), deaf.nack_addr()).unwrap();
        let replies = drain(&client, Duration::from_millis(500));
        assert_eq!(
            ricochet_wire::control::ResponseRepr::parse(&replies[0]),
            Ok(ricochet_wire::control::ResponseRepr::ack(seq, ricochet_wire::control::AckFlags(1))),
            "seq {seq}"
        );
        let got = drain(&listener, Duration::from_millis(500));
        assert_eq!(
            got,
            std::slice::from_ref(bytes),
            "seq {seq}: the new epoch's frame, from Redis"
        );
    }
    assert_eq!(deaf.metric_sum("ricochet_shared_hits_total"), 3.0);
}
