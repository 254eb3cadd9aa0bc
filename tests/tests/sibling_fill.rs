//! Sibling fill with real processes: a gap's owner that does not hold the
//! frame asks the sibling whose gossiped cache digest lists it before going
//! upstream, so frames a sibling holds cost no upstream fetch; frames no
//! sibling holds still cost exactly one.
//!
//! Topology on loopback: domain A (publisher → endpoint U); a bridge into
//! domain B's data port dropping every 25th frame; sibling F listens on
//! B's data port (it hears the bridge), sibling E listens on a port nobody
//! sends to (its cache starts empty); both retransmit onto B's groups,
//! where a listener collects what arrives, and both have U as their
//! upstream. E knows F as its gossip seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ricochet_e2e::{
    Engine, Ports, Publisher, bridge, drain, group_listener, metric_sum, nack_client, nack_for,
    ports,
};
use ricochet_wire::frame::Frame;

const FLOW: u64 = 0x5F11_0000_00AB;
const BATCH: u64 = 100;
const DROP_EVERY: u64 = 25;

struct Lab {
    upstream: Engine,
    /// F (hears domain B) and E (hears nothing).
    full: Engine,
    empty: Engine,
    listener: Vec<UdpSocket>,
    copies: BTreeMap<u64, u32>,
    key_file: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

fn sibling(p: Ports, key: &Path, up: u16, seed: Option<u16>, name: &str) -> Engine {
    let admin = p.admin_addr();
    let mut args: Vec<String> = [
        "--ipv4-lab",
        "--backend",
        "epoll",
        "--proxy-enabled",
        "--upstream-retry-endpoints",
        &format!("127.0.0.1:{up}"),
        "--cluster-key-file",
        key.to_str().unwrap(),
        "--gossip-port",
        &p.gossip.to_string(),
        "--instance",
        name,
        // One listener NACKs every gap at once; the default per-IP burst
        // (10) would throttle it.
        "--rl-ip-burst",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(seed) = seed {
        args.extend(["--gossip-peers".into(), format!("127.0.0.1:{seed}")]);
    }
    Engine::launch(&[], &args, p, admin)
}

impl Lab {
    fn start() -> Lab {
        // The siblings proxy through U from 127.0.0.1: U must allow them.
        let upstream = Engine::start(&["--backend", "epoll", "--proxy-allow", "127.0.0.1/32"]);
        let b_port = ports().listen;
        let key_file =
            std::env::temp_dir().join(format!("ricochet-fill-{}-{b_port}.key", std::process::id()));
        std::fs::write(&key_file, format!("{}\n", "6b".repeat(32))).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let pf = Ports { listen: b_port, egress: b_port, ..ports() };
        let pe = Ports { egress: b_port, ..ports() };
        let full = sibling(pf, &key_file, upstream.nack_port, None, "fill-f");
        let empty = sibling(pe, &key_file, upstream.nack_port, Some(pf.gossip), "fill-e");
        let listener = (0..4).map(|g| group_listener(g, b_port)).collect();
        let lab = Lab { upstream, full, empty, listener, copies: BTreeMap::new(), key_file };
        // Publish through the lossy bridge: F caches all but the drops.
        let bridge = bridge(lab.upstream.listen_port, b_port, BATCH, DROP_EVERY);
        let publisher = Publisher::new(lab.upstream.listen_port);
        for seq in 1..=BATCH {
            publisher.send_tx(FLOW, seq, &seq.to_be_bytes());
        }
        let dropped = bridge.join().unwrap();
        assert_eq!(dropped, (1..=BATCH).filter(|s| s % DROP_EVERY == 0).collect::<BTreeSet<_>>());
        // The listener heard the bridge too: take that in first, so only
        // retransmits count below.
        let mut lab = lab;
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.copies.len() < (BATCH - dropped.len() as u64) as usize
            && Instant::now() < deadline
        {
            lab.collect();
        }
        lab.copies.clear();
        lab
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

    /// NACKs `seqs` to E and waits until each has arrived on B's groups
    /// and both siblings are idle.
    fn nack_empty(&mut self, seqs: &[u64]) {
        self.copies.clear();
        let client = nack_client();
        for &seq in seqs {
            client.send_to(&nack_for(FLOW, seq, 0), self.empty.nack_addr()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while seqs.iter().any(|s| !self.copies.contains_key(s)) {
            assert!(
                Instant::now() < deadline,
                "never arrived: {:?}\nE: {}",
                seqs.iter().filter(|s| !self.copies.contains_key(s)).collect::<Vec<_>>(),
                self.empty.http("/metrics").map(|r| r.1).unwrap_or_default()
            );
            self.collect();
        }
        for e in [&self.full, &self.empty] {
            e.wait_metrics(Duration::from_secs(10), |m| {
                metric_sum(m, "ricochet_recovery_in_flight") == 0.0
            });
        }
    }
}

#[test]
fn a_gap_a_sibling_holds_is_filled_from_it_and_one_nobody_holds_costs_one_fetch() {
    let mut lab = Lab::start();
    // Both members live, and E's workers have F's digest of the flow.
    let flow_hex = format!("{FLOW:016x}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = lab.empty.http("/debug/cluster").unwrap();
        // E caches nothing yet, so the flow in its holdings is F's.
        let f_lists_flow = body
            .split_once("\"holdings\"")
            .and_then(|(_, h)| h.split_once("\"siblings\""))
            .is_some_and(|(_, sibs)| sibs.contains(&flow_hex));
        if body.contains("\"members_live\":2") && f_lists_flow {
            break;
        }
        assert!(Instant::now() < deadline, "E never got F's digest:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The view reaches the workers after the control thread's next step.
    lab.empty.wait_metrics(Duration::from_secs(5), |m| {
        metric_sum(m, "ricochet_cluster_holdings_updates_total") >= 1.0
    });

    // (1) Frames F holds: every one arrives, none is fetched upstream. E
    // fills the gaps it owns from F; F serves the ones it owns itself.
    let held: Vec<u64> = (1..=60).filter(|s| s % DROP_EVERY != 0).collect();
    lab.nack_empty(&held);
    // Workers publish their counters every 100 ms.
    let n = held.len() as f64;
    let m = lab.empty.wait_metrics(Duration::from_secs(10), |m| {
        metric_sum(m, "ricochet_recovery_sibling_filled_total")
            + metric_sum(m, "ricochet_gaps_forwarded_to_owner_total")
            >= n
    });
    assert_eq!(lab.upstream.metric_sum("ricochet_nacks_proxied_total"), 0.0, "no upstream fetch");
    assert_eq!(metric_sum(&m, "ricochet_recovery_upstream_nacks_total"), 0.0);
    let filled = metric_sum(&m, "ricochet_recovery_sibling_filled_total");
    let forwarded = metric_sum(&m, "ricochet_gaps_forwarded_to_owner_total");
    assert!(filled >= 1.0, "E owns some of {n} gaps and filled them from F");
    assert_eq!(filled + forwarded, n, "each gap filled or forwarded once");
    assert_eq!(metric_sum(&m, "ricochet_recovery_sibling_fill_nacks_total"), filled);

    // (2) Frames nobody in B holds: exactly one upstream fetch each, after
    // at most one sibling said MISS.
    let lost: Vec<u64> = (1..=BATCH).filter(|s| s % DROP_EVERY == 0).collect();
    lab.nack_empty(&lost);
    let want = filled + lost.len() as f64;
    let recovered = || {
        lab.empty.metric_sum("ricochet_recovery_recovered_total")
            + lab.full.metric_sum("ricochet_recovery_recovered_total")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while recovered() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(recovered(), want, "the lost gaps were recovered once each");
    assert_eq!(
        lab.upstream.metric_sum("ricochet_nacks_proxied_total"),
        lost.len() as f64,
        "one fetch per gap nobody holds"
    );
    let misses = lab.empty.metric_sum("ricochet_recovery_sibling_fill_misses_total")
        + lab.full.metric_sum("ricochet_recovery_sibling_fill_misses_total");
    assert!(misses <= lost.len() as f64, "at most one sibling asked per gap: {misses}");
}
