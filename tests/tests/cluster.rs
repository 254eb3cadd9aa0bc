//! Three sibling endpoints of one downstream domain forming a gossip
//! cluster, with no Redis: every gap costs exactly one upstream fetch
//! (gap ownership by rendezvous hashing over the live members, non-owners
//! forwarding to the owner); hostile datagrams on the gossip port are
//! dropped and counted; a sibling killed and restarted with
//! `--warmup-timeout` warms its cache from the others over G6 and then
//! serves frames it cached before the restart.
//!
//! Topology on loopback (as `redis_siblings.rs`): domain A (publisher →
//! endpoint U), a bridge into domain B dropping every 25th frame, siblings
//! D0–D2 on B's data port (each with its own NACK, admin and gossip port)
//! with U as their upstream, and a listener on B's groups. D0 is the seed:
//! D1 and D2 know only D0 and learn each other by gossip (membership
//! records and PEX).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use ricochet_e2e::{
    Engine, Ports, SiblingDomain, drain, metric_sum, metric_value, nack_client, nack_for, ports,
};
use ricochet_wire::control::{ResponseKind, ResponseRepr};
use ricochet_wire::mac::ClusterKey;

const FLOW: u64 = 0xC1A5_7E12;
const BATCH: u64 = 200;
const DROP_EVERY: u64 = 25;
const KEY: [u8; 32] = [0x5A; 32];

/// The sibling domain of this test: siblings in one gossip cluster.
struct Domain {
    net: SiblingDomain,
    /// Each sibling's ports, kept for its restart.
    ports: Vec<Ports>,
    key_file: PathBuf,
}

impl Deref for Domain {
    type Target = SiblingDomain;
    fn deref(&self) -> &SiblingDomain {
        &self.net
    }
}

impl DerefMut for Domain {
    fn deref_mut(&mut self) -> &mut SiblingDomain {
        &mut self.net
    }
}

impl Domain {
    fn start() -> Domain {
        // The siblings proxy through U from 127.0.0.1: U must allow them.
        let upstream = Engine::start(&["--backend", "epoll", "--proxy-allow", "127.0.0.1/32"]);
        let b_port = ports().listen;
        let key_file = std::env::temp_dir()
            .join(format!("ricochet-cluster-{}-{b_port}.key", std::process::id()));
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, format!("{hex}\n")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&key_file, perms).unwrap();
        }
        let ports: Vec<Ports> = (0..3)
            .map(|_| {
                // Siblings share the domain's data port; retransmits go there.
                Ports { listen: b_port, egress: b_port, ..ports() }
            })
            .collect();
        let mut d =
            Domain { net: SiblingDomain::new(upstream, Vec::new(), b_port, FLOW), ports, key_file };
        for i in 0..3 {
            let seeds = if i == 0 { Vec::new() } else { vec![0] };
            let e = d.launch(i, &seeds, &[]);
            d.siblings.push(e);
        }
        d
    }

    /// Starts sibling `i` on its ports, seeded with the siblings `seeds`.
    fn launch(&self, i: usize, seeds: &[usize], extra: &[&str]) -> Engine {
        let p = self.ports[i];
        let admin = p.admin_addr();
        let up = format!("127.0.0.1:{}", self.upstream.nack_port);
        let peers: Vec<String> =
            seeds.iter().map(|&s| format!("127.0.0.1:{}", self.ports[s].gossip)).collect();
        let mut args: Vec<String> = [
            "--ipv4-lab",
            "--backend",
            if i.is_multiple_of(2) { "epoll" } else { "uring" },
            "--proxy-enabled",
            "--upstream-retry-endpoints",
            &up,
            "--cluster-key-file",
            self.key_file.to_str().unwrap(),
            "--gossip-port",
            &p.gossip.to_string(),
            "--instance",
            &format!("sibling-{i}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !peers.is_empty() {
            args.extend(["--gossip-peers".to_string(), peers.join(",")]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Engine::launch(&[], &args, p, admin)
    }

    fn gossip_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports[i].gossip))
    }

    /// Waits until `cond` holds on every sibling; fails with each one's
    /// `/debug/cluster`.
    fn wait_siblings(&self, what: &str, timeout: Duration, cond: impl Fn(&Engine) -> bool) {
        self.net.wait_siblings(what, timeout, cond, |siblings| {
            siblings
                .iter()
                .map(|e| e.http("/debug/cluster").map(|r| r.1).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        });
    }

    fn wait_cluster(&self) {
        self.wait_siblings("3 live members each", Duration::from_secs(20), |e| {
            e.metric_sum("ricochet_cluster_members_live") == 3.0
        });
    }

    /// Publishes `first..first + BATCH` through the lossy bridge; returns
    /// the gaps.
    fn publish(&mut self, first: u64) -> Vec<u64> {
        self.net.publish(first, BATCH, DROP_EVERY)
    }

    /// NACKs every gap to all three siblings at once and waits until every
    /// gap has arrived and no sibling has a recovery job in flight.
    fn nack_all(&mut self, gaps: &[u64]) {
        self.net.nack_all(gaps, |e| e.metric_sum("ricochet_recovery_in_flight") == 0.0);
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// The value of one series on `e`'s `/metrics` (0 if absent).
fn series(e: &Engine, name: &str) -> f64 {
    e.metric(name).unwrap_or(0.0)
}

#[test]
fn three_siblings_share_gaps_by_gossip_survive_garbage_and_warm_a_restart() {
    let mut d = Domain::start();
    d.wait_cluster();

    // (a) Each gap is fetched upstream exactly once, with no Redis: the
    // owner recovers it, the other two forward their NACK to the owner.
    let gaps = d.publish(1);
    assert!(gaps.len() >= 4, "the bridge dropped {gaps:?}");
    d.nack_all(&gaps);
    let n = gaps.len() as f64;
    assert_eq!(
        d.upstream.metric_sum("ricochet_nacks_proxied_total"),
        n,
        "one upstream fetch per gap"
    );
    assert_eq!(d.sum("ricochet_recovery_recovered_total"), n, "recovered once each");
    assert!(
        d.sum("ricochet_gaps_forwarded_to_owner_total") > 0.0,
        "non-owners forwarded gaps to their owner"
    );
    for e in &d.siblings {
        let (status, body) = e.http("/debug/cluster").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("\"members_live\":3"), "{body}");
    }

    // (d) The rumor path runs on the workers: each sibling's steering
    // program is attached, and every worker's dedup shard decides the
    // rumors (heartbeats) whose ids it owns, some of them read by the other
    // worker and handed over.
    for e in &d.siblings {
        assert_eq!(series(e, "ricochet_cluster_gossip_steering"), 1.0);
        let m = e.wait_metrics(Duration::from_secs(15), |m| {
            let v = |w: u32, ev: &str| {
                metric_value(
                    m,
                    &format!("ricochet_cluster_rumor_shard_total{{worker=\"{w}\",event=\"{ev}\"}}"),
                )
                .unwrap_or(0.0)
            };
            (0..2).all(|w| v(w, "decided") > 0.0 && v(w, "admitted") > 0.0)
                && v(0, "forwarded") + v(1, "forwarded") > 0.0
        });
        let shard = |w: u32, ev: &str| {
            metric_value(
                &m,
                &format!("ricochet_cluster_rumor_shard_total{{worker=\"{w}\",event=\"{ev}\"}}"),
            )
            .unwrap_or(0.0)
        };
        assert!((0..2).all(|w| shard(w, "decided") > 0.0), "both shards decide rumors:\n{m}");
        // Every decided copy was ACKed (none over rate, none malformed).
        for w in 0..2 {
            assert_eq!(shard(w, "acked"), shard(w, "decided"), "worker {w}:\n{m}");
        }
        assert!(metric_value(&m, "ricochet_cluster_rumor_dedup_ids{worker=\"0\"}").unwrap() > 0.0);
    }

    // (c) Forged, truncated and oversized datagrams on D0's gossip port are
    // dropped and counted; D0 keeps working.
    let d0 = &d.siblings[0];
    let drops = |e: &Engine, reason: &str| {
        series(e, &format!("ricochet_cluster_gossip_dropped_total{{reason=\"{reason}\"}}"))
    };
    let (mac0, cut0, long0) = (drops(d0, "bad_mac"), drops(d0, "truncated"), drops(d0, "too_long"));
    let lm0 = drops(d0, "length_mismatch");
    let heartbeats0 = series(d0, "ricochet_cluster_heartbeats_total{result=\"published\"}");
    let attacker = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target = d.gossip_addr(0);
    // A well-formed G2 probe under another key (a forgery, or a replay
    // from another cluster).
    let mut forged = vec![0x47, 0x32, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    forged.resize(12 + 16, 0);
    ClusterKey::new([0x11; 32]).seal(&mut forged, 12).unwrap();
    attacker.send_to(&forged, target).unwrap();
    // Too short to hold a MAC at all.
    attacker.send_to(&[0x47, 0x31, 0, 0, 0], target).unwrap();
    // The right key over a frame cut short, in a fresh v2 envelope
    // (docs/PROTOCOL.md § "Gossip envelope (v2)": stamped with our clock).
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let stamp = ricochet_wire::mac::Stamp { sender: 0xE2E, time_ms: unix_ms, counter: 1 };
    let cut = ClusterKey::new(KEY).seal_gossip_vec(&[0x47, 0x31, 0, 0, 0, 9], 0, &stamp).unwrap();
    attacker.send_to(&cut, target).unwrap();
    // Larger than --max-datagram (1232).
    attacker.send_to(&[0x47; 1500], target).unwrap();
    // A rumor (G3) under another key: steered to a worker, whose shard
    // drops and counts it.
    let mut rumor = vec![0x47, 0x33, 0, 0xFF, 0, 1, b'x', 0, 0, 0, 2, 1, 2];
    let len = rumor.len();
    rumor.resize(len + 16, 0);
    ClusterKey::new([0x11; 32]).seal(&mut rumor, len).unwrap();
    attacker.send_to(&rumor, target).unwrap();
    let body = d0.wait_metrics(Duration::from_secs(10), |m| {
        let v = |r: &str| {
            metric_value(m, &format!("ricochet_cluster_gossip_dropped_total{{reason=\"{r}\"}}"))
                .unwrap_or(0.0)
        };
        v("bad_mac") > mac0 + 1.0
            && v("truncated") > cut0
            && v("length_mismatch") > lm0
            && v("too_long") > long0
    });
    let v = |r: &str| {
        metric_value(&body, &format!("ricochet_cluster_gossip_dropped_total{{reason=\"{r}\"}}"))
            .unwrap_or(0.0)
    };
    assert_eq!(v("bad_mac"), mac0 + 2.0, "forged probe and forged rumor counted");
    // Too short for a MAC: truncated; a sealed G1 whose header promises
    // more than it holds: length_mismatch.
    assert_eq!(v("truncated"), cut0 + 1.0, "datagram without room for a MAC counted");
    assert_eq!(v("length_mismatch"), lm0 + 1.0, "cut-short frame counted");
    assert_eq!(v("too_long"), long0 + 1.0, "oversized datagram counted");
    let body = d0.wait_metrics(Duration::from_secs(10), |m| {
        metric_value(m, "ricochet_cluster_heartbeats_total{result=\"published\"}")
            .is_some_and(|h| h >= heartbeats0 + 2.0)
    });
    assert!(
        metric_value(&body, "ricochet_cluster_heartbeats_total{result=\"published\"}").unwrap()
            >= heartbeats0 + 2.0,
        "D0 keeps beating"
    );
    d.wait_cluster();

    // (b) Warm restart: D2 is killed and restarted with --warmup-timeout;
    // it is ready only after it warmed its cache from D0 or D1, and then
    // serves a frame it had cached before the restart.
    let cached: u64 = (1..=BATCH).find(|s| !gaps.contains(s)).unwrap();
    let mut old = d.siblings.pop().unwrap();
    let log = old.kill_and_logs();
    assert!(log.contains("cluster member running"), "{log}");
    let restarted = d.launch(2, &[0, 1], &["--warmup-timeout", "10s"]);
    // `launch` returned on /readyz 200: the warm-up must be over by then.
    let m = restarted.http("/metrics").unwrap().1;
    assert_eq!(
        metric_value(&m, "ricochet_cluster_warmups_total{outcome=\"done\"}"),
        Some(1.0),
        "ready only after a completed warm-up:\n{}",
        restarted.http("/debug/cluster").unwrap().1
    );
    assert_eq!(metric_value(&m, "ricochet_cluster_warming"), Some(0.0));
    // Workers publish their counters every 100 ms tick.
    let m = restarted.wait_metrics(Duration::from_secs(10), |m| {
        metric_sum(m, "ricochet_warm_frames_total") > 0.0
    });
    assert!(metric_sum(&m, "ricochet_warm_frames_total") > 0.0, "{m}");
    assert!(metric_sum(&m, "ricochet_cluster_warm_frames_imported_total") > 0.0);
    let (_, debug) = restarted.http("/debug/cluster").unwrap();
    assert!(debug.contains("\"outcome\":\"done\""), "{debug}");
    let served: f64 = d.sum("ricochet_cluster_snapshots_served_total");
    assert!(served >= 1.0, "a sibling served the snapshot");

    let client = nack_client();
    client.send_to(&nack_for(FLOW, cached, 0), restarted.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(500));
    let first = replies.first().map(|r| ResponseRepr::parse(r));
    assert!(
        matches!(first, Some(Ok(ResponseRepr { kind: ResponseKind::Ack(_), seq })) if seq == cached),
        "frame {cached} cached before the restart is served after it: {first:?}"
    );
    d.siblings.push(restarted);
    d.wait_cluster();
}
