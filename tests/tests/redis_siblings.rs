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

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use ricochet_e2e::{
    Engine, Ports, Publisher, RedisServer, SiblingDomain, drain, group_listener, nack_client,
    nack_for, ports,
};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x5EB1_1265;
const BATCH: u64 = 200;
const DROP_EVERY: u64 = 25;

/// The sibling domain of these tests: siblings sharing `redis`.
struct Domain(SiblingDomain);

impl Deref for Domain {
    type Target = SiblingDomain;
    fn deref(&self) -> &SiblingDomain {
        &self.0
    }
}

impl DerefMut for Domain {
    fn deref_mut(&mut self) -> &mut SiblingDomain {
        &mut self.0
    }
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
        Domain(SiblingDomain::new(upstream, siblings, b_port, FLOW))
    }

    fn wait_siblings(&self, what: &str, cond: impl Fn(&Engine) -> bool) {
        self.0.wait_siblings(what, Duration::from_secs(15), cond, |_| String::new());
    }

    /// Publishes `first..first + BATCH` through the lossy bridge; returns
    /// the gaps.
    fn publish(&mut self, first: u64) -> Vec<u64> {
        self.0.publish(first, BATCH, DROP_EVERY)
    }

    /// NACKs every gap to all three siblings at once and waits until every
    /// gap has arrived and the siblings are idle: no recovery job in flight
    /// and no request parked for Redis anywhere, so every retransmit there
    /// will be has been sent (and a loopback multicast send delivers before
    /// it returns).
    fn nack_all(&mut self, gaps: &[u64]) {
        self.0.nack_all(gaps, |e| {
            e.metric_sum("ricochet_recovery_in_flight") == 0.0
                && e.metric_sum("ricochet_store_pending") == 0.0
        });
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

/// Two siblings with the Redis cache backend on different data ports, on
/// the given back ends: only the first hears the publisher, so the second
/// can serve a frame only from Redis. Returned once both see Redis up.
fn heard_and_deaf(redis: &RedisServer, backends: [&str; 2]) -> (Engine, Engine) {
    let shared = ["--cache-backend", "redis", "--redis-addr", &redis.addr()];
    let [heard, deaf] =
        backends.map(|b| Engine::start(&[&["--backend", b][..], &shared[..]].concat()));
    for e in [&heard, &deaf] {
        let m = e.wait_metrics(Duration::from_secs(10), |m| {
            ricochet_e2e::metric_value(m, "ricochet_redis_up") == Some(1.0)
        });
        assert_eq!(ricochet_e2e::metric_value(&m, "ricochet_redis_up"), Some(1.0), "{m}");
    }
    (heard, deaf)
}

#[test]
fn with_the_redis_cache_backend_a_sibling_serves_frames_only_another_received() {
    let redis = RedisServer::start();
    let (heard, deaf) = heard_and_deaf(&redis, ["epoll", "uring"]);
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
/// (the confirming frame and the candidates held as evidence before it)
/// and deletes the old epoch's other keys, so a sibling serving from Redis
/// serves the new bytes and MISSes the rest, never serving the old.
#[test]
fn after_a_publisher_restart_redis_holds_the_new_epochs_frames() {
    let redis = RedisServer::start();
    let (heard, deaf) = heard_and_deaf(&redis, ["uring", "epoll"]);
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

    // The old epoch's other keys are deleted (before the reads below, so
    // a delete of a key the new epoch holds would show there).
    let dels = "ricochet_redis_ops_total{op=\"del\",result=\"ok\"}";
    let m = heard.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_value(m, dels) == Some(1.0)
    });
    assert_eq!(ricochet_e2e::metric_value(&m, dels), Some(1.0), "one DEL of 7 keys: {m}");
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

    // SeqNums 4..=10 have not been published since the restart: a listener
    // missing them must not get the old epoch's frames from Redis.
    for seq in 4..=10 {
        client.send_to(&nack_for(FLOW, seq, 0), deaf.nack_addr()).unwrap();
        let replies = drain(&client, Duration::from_millis(500));
        assert_eq!(
            replies
                .iter()
                .map(|r| ricochet_wire::control::ResponseRepr::parse(r))
                .collect::<Vec<_>>(),
            [Ok(ricochet_wire::control::ResponseRepr::miss())],
            "seq {seq}: the old epoch's frame was served"
        );
    }
    assert_eq!(deaf.metric_sum("ricochet_shared_hits_total"), 3.0);
    assert_eq!(deaf.metric_sum("ricochet_shared_misses_total"), 7.0);
}
