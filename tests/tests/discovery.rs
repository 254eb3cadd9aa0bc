//! Upstream discovery through the DHT, end to end: the two-domain scenario
//! of `recovery.rs`, but D has no static upstream. Domain A has two
//! endpoints, U1 (tier 0) and U2 (tier 1), both hearing A's publisher and
//! both publishing signed endpoint records under domain `a`; D serves
//! domain B behind a lossy bridge and finds its upstreams by looking `a` up
//! in the DHT (bootstrapping from U1's DHT port). D must find both in tier
//! order and fill the bridge's gaps through U1; after U1 is stopped, D's
//! list must drop it and later gaps must fill through U2.
//!
//! Every wait is a condition polled against a deadline; no assertion
//! depends on how long something took.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ricochet_e2e::{
    Engine, Ports, Publisher, bridge, dht_msg, drain, group_listener, metric_sum, nack_client,
    nack_for, ports,
};
use ricochet_wire::frame::Frame;
use ricochet_wire::record::SigningKey;

const FLOW: u64 = 0x00D1_5C0E;
const DROP_EVERY: u64 = 10;
const PHASE: u64 = 100;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn admin(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The `addr` of every entry of `/debug/dht`'s `upstreams` array, in order.
fn upstreams(e: &Engine) -> Vec<String> {
    let Ok((200, body)) = e.http("/debug/dht") else { return Vec::new() };
    let Some(start) = body.find("\"upstreams\":[") else { return Vec::new() };
    let list = &body[start..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    list.split("\"addr\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collects every FLOW frame reaching B's groups.
fn collect(listeners: &[UdpSocket], have: &mut BTreeSet<u64>) {
    for l in listeners {
        for d in drain(l, Duration::from_millis(50)) {
            if let Ok(f) = Frame::new_checked(&d)
                && f.hash_key() == FLOW
            {
                have.insert(f.seq());
            }
        }
    }
}

/// Publishes `seqs` in A through a bridge that drops every 10th into B,
/// NACKs each gap to D, and waits for the gaps to fill. Returns the gaps
/// and those still unfilled at the deadline.
fn lossy_phase(
    a_port: u16,
    b_port: u16,
    b_listeners: &[UdpSocket],
    d: &Engine,
    seqs: std::ops::RangeInclusive<u64>,
) -> (Vec<u64>, Vec<u64>) {
    let n = seqs.end() - seqs.start() + 1;
    let bridge = bridge(a_port, b_port, n, DROP_EVERY);
    let publisher = Publisher::new(a_port);
    for seq in seqs.clone() {
        publisher.send_tx(FLOW, seq, &seq.to_be_bytes());
    }
    let dropped = bridge.join().unwrap();
    let mut have = BTreeSet::new();
    collect(b_listeners, &mut have);
    let gaps: Vec<u64> = seqs.filter(|s| !have.contains(s)).collect();
    assert_eq!(gaps, dropped.iter().copied().collect::<Vec<_>>(), "the gaps are the drops");
    let client = nack_client();
    for &seq in &gaps {
        client.send_to(&nack_for(FLOW, seq, 0), d.nack_addr()).unwrap();
        drain(&client, Duration::from_millis(50));
    }
    wait_for(Duration::from_secs(10), || {
        collect(b_listeners, &mut have);
        gaps.iter().all(|s| have.contains(s))
    });
    let unfilled = gaps.iter().copied().filter(|s| !have.contains(s)).collect();
    (gaps, unfilled)
}

#[test]
fn d_finds_its_upstreams_through_the_dht_and_switches_when_one_stops() {
    let dir = std::env::temp_dir().join(format!("ricochet-e2e-discovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("d.key");
    let peer_cache = dir.join("d.peers");
    // U1's and U2's node keys, fixed so D can list their public keys.
    let node_key = |name: &str, seed: u8| {
        let path = dir.join(name);
        std::fs::write(&path, hex(&[seed; 32])).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = SigningKey::from_bytes(&[seed; 32]).verifying_key().to_bytes();
        (path.to_str().unwrap().to_owned(), hex(&public))
    };
    let (u1_key, u1_public) = node_key("u1.key", 0x11);
    let (u2_key, u2_public) = node_key("u2.key", 0x22);

    // U1: domain A's first endpoint, and the DHT seed.
    let a = ports();
    let seed = format!("127.0.0.1:{}", a.dht);
    let u1_args = args(&[
        "--ipv4-lab",
        "--dht-enabled",
        "--dht-port",
        &a.dht.to_string(),
        "--domain",
        "a",
        "--node-key-file",
        &u1_key,
        "--dht-refresh",
        "1s",
        "--beacon-tier",
        "0",
        "--beacon-preference",
        "200",
        // D proxies through U1 and U2 from 127.0.0.1: they must allow it.
        "--proxy-allow",
        "127.0.0.1/32",
    ]);
    let mut u1 = Engine::launch(&[], &u1_args, a, admin(a.admin));

    // U2: the second endpoint of A, on A's data port too (so it caches
    // the same frames), with its own NACK, admin and DHT ports.
    let p2 = ports();
    let u2_args = args(&[
        "--ipv4-lab",
        "--dht-enabled",
        "--dht-port",
        &p2.dht.to_string(),
        "--dht-bootstrap",
        &seed,
        "--domain",
        "a",
        "--node-key-file",
        &u2_key,
        "--dht-refresh",
        "1s",
        "--beacon-tier",
        "1",
        "--proxy-allow",
        "127.0.0.1/32",
    ]);
    let u2 = Engine::launch(&[], &u2_args, Ports { listen: a.listen, ..p2 }, admin(p2.admin));

    // R: publishes under `a` too, with a key nobody trusts, and would rank
    // first (tier 0, preference 255): D must never list it.
    let pr = ports();
    let r_args = args(&[
        "--ipv4-lab",
        "--dht-enabled",
        "--dht-port",
        &pr.dht.to_string(),
        "--dht-bootstrap",
        &seed,
        "--domain",
        "a",
        "--dht-refresh",
        "1s",
        "--beacon-tier",
        "0",
        "--beacon-preference",
        "255",
    ]);
    let rogue = Engine::launch(&[], &r_args, pr, admin(pr.admin));
    let trusted = format!("{u1_public},{u2_public}");

    // D: domain B, recovering from whatever the DHT says serves `a`.
    let b = ports();
    let d_args = args(&[
        "--ipv4-lab",
        "--proxy-enabled",
        "--upstream-discovery",
        "dht",
        "--upstream-domain",
        "a",
        "--upstream-keys",
        &trusted,
        "--dht-port",
        &b.dht.to_string(),
        "--dht-bootstrap",
        &seed,
        "--domain",
        "b",
        "--dht-refresh",
        "1s",
        "--node-key-file",
        key_file.to_str().unwrap(),
        "--dht-peer-cache",
        peer_cache.to_str().unwrap(),
    ]);
    // D's retransmits go to B's data port, where B's listener listens.
    let mut d = Engine::launch(&[], &d_args, Ports { egress: b.listen, ..b }, admin(b.admin));
    let b_listeners: Vec<UdpSocket> = (0..4).map(|g| group_listener(g, b.listen)).collect();

    let u1_nack = format!("127.0.0.1:{}", u1.nack_port);
    let u2_nack = format!("127.0.0.1:{}", u2.nack_port);
    let both = vec![u1_nack.clone(), u2_nack.clone()];
    let found = wait_for(Duration::from_secs(30), || upstreams(&d) == both);
    assert!(
        found,
        "D did not list [U1, U2] from the DHT: {:?}\n/debug/dht:\n{}\nD log:\n{}",
        upstreams(&d),
        d.http("/debug/dht").map(|r| r.1).unwrap_or_default(),
        d.kill_and_logs()
    );
    let debug = d.http("/debug/dht").unwrap().1;
    assert!(debug.contains("\"source\":\"dht\""), "{debug}");
    // R's record is found and refused: it signs with a key D does not list.
    let m = d.wait_metrics(Duration::from_secs(30), |m| {
        ricochet_e2e::metric_value(m, "ricochet_dht_records_unused_total{reason=\"untrusted\"}")
            .is_some_and(|v| v >= 1.0)
    });
    assert!(
        ricochet_e2e::metric_value(&m, "ricochet_dht_records_unused_total{reason=\"untrusted\"}")
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert_eq!(metric_sum(&m, "ricochet_dht_upstreams_discovered"), 2.0, "{m}");
    assert_eq!(upstreams(&d), both, "R ({}) is never listed", rogue.nack_port);

    // Phase 1: the bridge's gaps fill through U1, the first by tier.
    let (gaps, unfilled) = lossy_phase(a.listen, b.listen, &b_listeners, &d, 1..=PHASE);
    assert!(!gaps.is_empty());
    assert!(
        unfilled.is_empty(),
        "phase 1: unfilled {unfilled:?}\nD:\n{}",
        d.http("/metrics").unwrap().1
    );
    let u1_proxied = metric_sum(&u1.http("/metrics").unwrap().1, "ricochet_nacks_proxied_total");
    assert!(u1_proxied >= 1.0, "U1 served D's recoveries");

    // U1 stops: D's list must drop it.
    u1.terminate();
    assert!(u1.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let switched = wait_for(Duration::from_secs(40), || upstreams(&d) == [u2_nack.clone()]);
    assert!(
        switched,
        "D still lists {:?} after U1 stopped\n/debug/dht:\n{}",
        upstreams(&d),
        d.http("/debug/dht").map(|r| r.1).unwrap_or_default()
    );

    // U1 left as a clean stop does: its last record said Draining.
    let m = d.http("/metrics").unwrap().1;
    assert!(
        ricochet_e2e::metric_value(&m, "ricochet_dht_records_unused_total{reason=\"draining\"}")
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // Phase 2: later gaps fill through U2.
    let u2_before = metric_sum(&u2.http("/metrics").unwrap().1, "ricochet_nacks_proxied_total");
    let (gaps, unfilled) = lossy_phase(a.listen, b.listen, &b_listeners, &d, PHASE + 1..=2 * PHASE);
    assert!(!gaps.is_empty());
    assert!(
        unfilled.is_empty(),
        "phase 2: unfilled {unfilled:?}\nD:\n{}\nU2:\n{}",
        d.http("/metrics").unwrap().1,
        u2.http("/metrics").unwrap().1
    );
    let u2_after = metric_sum(&u2.http("/metrics").unwrap().1, "ricochet_nacks_proxied_total");
    assert!(u2_after > u2_before, "U2 served the later recoveries ({u2_before} → {u2_after})");

    // A clean stop saves D's peer cache; its key file was created 0600.
    d.terminate();
    assert!(d.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().bytes().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cache = std::fs::read(&peer_cache).expect("peer cache saved on stop");
    assert_eq!(&cache[..4], b"RDPC");
    assert!(cache.len() >= 7 + 51, "at least one peer saved");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_node_key_files_stop_the_start_with_the_flag_named() {
    let dir = std::env::temp_dir().join(format!("ricochet-e2e-badkey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("bad.key");
    std::fs::write(&key_file, "not a key").unwrap();
    let p = ports();
    let out = std::process::Command::new(ricochet_e2e::bin("ricochet"))
        .args(["run", "--ipv4-lab", "--dht-enabled", "--domain", "a"])
        .args(["--listen-port", &p.listen.to_string(), "--nack-port", &p.nack.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", p.admin)])
        .args(["--dht-port", &p.dht.to_string()])
        .args(["--node-key-file", key_file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-key-file") && err.contains("64 hex digits"), "{err}");
    assert!(!err.contains("not a key"), "the key file's content is never echoed: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A key owned by worker `w` of 2: the low 32 bits of its first 8 bytes
/// (big-endian) mod 2, the way the daemon (and its steering program) splits
/// keys between workers.
fn key_of_worker(w: u8, i: u8) -> [u8; 32] {
    let mut k = [i; 32];
    k[7] = (i << 1) | w;
    k
}

/// The DHT runs on the workers: with `--cpus 0,1`, requests land on the
/// worker owning their key, each worker's store shard holds its keys, and
/// (second part) responses to each worker's own requests come back to it —
/// with the steering program nothing is forwarded between workers and no
/// response goes unmatched, while lookups through the DHT succeed.
#[test]
fn the_dht_runs_on_the_workers_steered_by_key_and_transaction_id() {
    use ricochet_wire::dht::{Body, BodyRepr, Message};
    use ricochet_wire::record::{RecordRepr, RecordType, SigningKey};
    let allowed = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if allowed < 2 {
        ricochet_e2e::report_skip(
            "the_dht_runs_on_the_workers_steered_by_key_and_transaction_id",
            "needs 2 CPUs in the affinity mask",
        );
        return;
    }
    for backend in ["epoll", "uring"] {
        // Part 1: an isolated endpoint answering our requests.
        let p = ports();
        let e = Engine::start_on(
            p,
            &[
                "--cpus",
                "0,1",
                "--backend",
                backend,
                "--dht-enabled",
                "--dht-port",
                &p.dht.to_string(),
            ],
        );
        let dht = SocketAddr::from((Ipv4Addr::LOCALHOST, p.dht));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        // Sender id 0x11…: its PING belongs to worker 1 (0x11111111 mod 2).
        let sender = [0x11; 32];
        let signer = SigningKey::from_bytes(&[0x42; 32]);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut requests: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut txid = 0x0100u64;
        for w in 0..2u8 {
            for i in 0..4u8 {
                txid += 1;
                let key = key_of_worker(w, i);
                requests
                    .push((txid, dht_msg(txid, sender, BodyRepr::FindValue { key, padding: 0 })));
            }
            let mut r = RecordRepr::unsigned(
                RecordType::Topic,
                key_of_worker(w, 9),
                1,
                now,
                600,
                b"sharded",
            );
            r.sign(&signer).unwrap();
            let mut rec = vec![0u8; r.buffer_len()];
            r.emit(&mut rec).unwrap();
            txid += 1;
            let store = BodyRepr::Store(RecordRepr::parse(&rec).unwrap());
            requests.push((txid, dht_msg(txid, sender, store)));
        }
        txid += 1;
        requests.push((txid, dht_msg(txid, sender, BodyRepr::Ping)));
        let mut answered = BTreeSet::new();
        for (tx, m) in &requests {
            client.send_to(m, dht).unwrap();
            let mut buf = [0u8; 2048];
            // One request at a time, under the per-source rate limit.
            if let Ok((n, _)) = client.recv_from(&mut buf) {
                let reply = Message::new_checked(&buf[..n]).unwrap();
                assert_eq!(reply.transaction_id(), *tx);
                if let Body::StoreAck(s) = reply.body() {
                    assert_eq!(s, ricochet_wire::dht::StoreStatus::Stored, "{backend}");
                }
                answered.insert(reply.transaction_id());
            }
        }
        assert_eq!(answered.len(), requests.len(), "{backend}: every request answered");
        let body = e.wait_metrics(Duration::from_secs(5), |m| {
            ricochet_e2e::metric_value(
                m,
                "ricochet_dht_worker_requests_answered_total{worker=\"1\"}",
            ) == Some(6.0)
        });
        let v = |s: &str| ricochet_e2e::metric_value(&body, s).unwrap_or(-1.0);
        // Each worker answered exactly the requests for its keys (worker 1
        // also the PING), and holds exactly its record.
        assert_eq!(
            v("ricochet_dht_worker_requests_answered_total{worker=\"0\"}"),
            5.0,
            "{backend}\n{body}"
        );
        assert_eq!(
            v("ricochet_dht_worker_requests_answered_total{worker=\"1\"}"),
            6.0,
            "{backend}"
        );
        assert_eq!(v("ricochet_dht_worker_store_keys{worker=\"0\"}"), 1.0, "{backend}");
        assert_eq!(v("ricochet_dht_worker_store_keys{worker=\"1\"}"), 1.0, "{backend}");
        let steering = v("ricochet_dht_steering") == 1.0;
        if steering {
            // The kernel delivered each datagram to its owner.
            assert_eq!(v("ricochet_dht_forwarded_total"), 0.0, "{backend}");
            assert_eq!(v("ricochet_dht_worker_datagrams_total{worker=\"0\"}"), 5.0, "{backend}");
            assert_eq!(v("ricochet_dht_worker_datagrams_total{worker=\"1\"}"), 6.0, "{backend}");
        } else {
            eprintln!("{backend}: DHT steering unavailable here; checked the forwarding path");
        }
        drop(e);

        // Part 2: a seed S publishing domain `y`, and a two-worker E that
        // joins through S and discovers `y`'s endpoint.
        let ps = ports();
        let s = Engine::start_on(
            ps,
            &[
                "--dht-enabled",
                "--dht-port",
                &ps.dht.to_string(),
                "--domain",
                "y",
                "--dht-refresh",
                "1s",
                "--backend",
                backend,
            ],
        );
        let pe = ports();
        let seed = format!("127.0.0.1:{}", ps.dht);
        let e = Engine::start_on(
            pe,
            &[
                "--cpus",
                "0,1",
                "--backend",
                backend,
                "--proxy-enabled",
                "--upstream-discovery",
                "dht",
                "--upstream-domain",
                "y",
                "--upstream-keys",
                "any",
                "--domain",
                "x",
                "--dht-port",
                &pe.dht.to_string(),
                "--dht-bootstrap",
                &seed,
                "--dht-refresh",
                "1s",
            ],
        );
        let s_nack = format!("127.0.0.1:{}", s.nack_port);
        let found = wait_for(Duration::from_secs(30), || upstreams(&e) == [s_nack.clone()]);
        assert!(
            found,
            "{backend}: E did not find S: {:?}\n{}",
            upstreams(&e),
            e.http("/debug/dht").map(|r| r.1).unwrap_or_default()
        );
        // A few more refresh periods of lookups and puts in both directions.
        let body = e.wait_metrics(Duration::from_secs(10), |m| {
            ricochet_e2e::metric_value(m, "ricochet_dht_lookups_total{result=\"found\"}")
                .is_some_and(|n| n >= 3.0)
        });
        let v = |s: &str| ricochet_e2e::metric_value(&body, s).unwrap_or(-1.0);
        assert!(v("ricochet_dht_lookups_total{result=\"found\"}") >= 3.0, "{backend}\n{body}");
        // Both workers asked S something (bootstrap, their own lookups)
        // and got the answers back, none of them on the wrong worker.
        assert!(v("ricochet_dht_worker_responses_matched_total{worker=\"0\"}") >= 1.0, "{body}");
        assert!(v("ricochet_dht_worker_responses_matched_total{worker=\"1\"}") >= 1.0, "{body}");
        assert_eq!(v("ricochet_dht_dropped_total{reason=\"unsolicited\"}"), 0.0, "{backend}");
        assert_eq!(v("ricochet_dht_ops_lost_total"), 0.0, "{backend}");
        if v("ricochet_dht_steering") == 1.0 {
            assert_eq!(v("ricochet_dht_forwarded_total"), 0.0, "{backend}\n{body}");
        }
        let s_body = s.http("/metrics").unwrap().1;
        assert_eq!(
            ricochet_e2e::metric_value(
                &s_body,
                "ricochet_dht_dropped_total{reason=\"unsolicited\"}"
            ),
            Some(0.0),
            "{backend}"
        );
        // E's record (domain x) is held by the worker owning its key — on
        // S, which has one worker, and on E itself.
        let debug = e.http("/debug/dht").unwrap().1;
        assert!(debug.contains("\"steering\":"), "{debug}");
    }
}
