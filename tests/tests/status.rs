//! `ricochet status` against a running endpoint: the counts it shows are
//! the endpoint's, after frames are published and some NACKed; `--watch`
//! refreshes; an admin address that does not answer is exit 1.

use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, bin, drain, nack_client, nack_for};

fn status(args: &[&str]) -> Output {
    Command::new(bin("ricochet"))
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ricochet status")
}

/// The line of `screen` that starts with `key` (its first word).
fn line<'a>(screen: &'a str, key: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} line in\n{screen}"))
}

#[test]
fn status_shows_the_endpoints_counts_and_readiness() {
    let e = Engine::start(&[]);
    let publisher = Publisher::new(e.listen_port);
    let hash = 0x5a7a_0001_u64;
    for seq in 1..=3 {
        publisher.send_tx(hash, seq, b"status test payload");
    }
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_frames_cached_total") >= 3.0
    });
    // Two NACKs for held frames (ACK and a multicast retransmit each), one
    // for a frame never sent (MISS), one datagram too short to parse.
    let client = nack_client();
    for seq in [1, 2, 40] {
        client.send_to(&nack_for(hash, seq, 0), e.nack_addr()).unwrap();
    }
    client.send_to(&[0u8; 5], e.nack_addr()).unwrap();
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_dropped_total") >= 1.0
            && ricochet_e2e::metric_sum(m, "ricochet_acks_sent_total") >= 2.0
            && ricochet_e2e::metric_sum(m, "ricochet_misses_sent_total") >= 1.0
    });
    let answers = drain(&client, Duration::from_millis(200));
    assert!(!answers.is_empty(), "no ACK or MISS came back");
    let workers = e.http("/readyz").expect("readyz").1;

    let out = status(&["--admin", &e.admin.to_string()]);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    println!("{screen}");
    let metrics = e.http("/metrics").expect("scrape").1;

    // NACK datagrams received, the one that did not parse included (as
    // the reference's bre_nack_requests_total counts them): the endpoint's
    // own count, which is at least this test's four (a stray datagram on
    // the shared loopback, e.g. a parallel test's ADVERT, may add to it;
    // it cannot add ACKs, MISSes or hits).
    let n = ricochet_e2e::metric_sum(&metrics, "ricochet_nacks_total");
    assert!(n >= 4.0, "{metrics}");
    let nacks = line(&screen, "nacks");
    assert!(nacks.starts_with(&format!("nacks         {n} (")), "{n}: {screen}");
    assert!(line(&screen, "nacks").ends_with("hit ratio 66.7% (hits 2, misses 1)"), "{screen}");
    assert_eq!(
        line(&screen, "answers"),
        "answers       ACK 2, MISS 1, THROTTLED 0; retransmits multicast 2, unicast 0"
    );
    assert!(line(&screen, "frames").starts_with("frames        received 3 ("), "{screen}");
    assert!(line(&screen, "frames").ends_with("cached 3"), "{screen}");
    let drops = line(&screen, "drops");
    let reasons = drops.trim_start_matches("drops").trim_start();
    assert!(reasons.split(", ").any(|r| r == "truncated 1"), "{drops}");
    assert_eq!(line(&screen, "rate-limited"), "rate-limited  ip 0, sequence 0, chain 0, group 0");
    assert!(line(&screen, "cache").starts_with("cache         entries 3, bytes "), "{screen}");
    // Readiness as /readyz says it, with the backend from /debug/stats
    // (the test endpoint serves it publicly).
    let readyz: serde_json::Value = serde_json::from_str(&workers).expect("readyz json");
    let total = readyz["workers_total"].as_u64().expect("workers_total");
    let ready = line(&screen, "readiness");
    assert!(
        ready.starts_with(&format!("readiness     ready (HTTP 200), workers {total}/{total}, up ")),
        "{ready}"
    );
    assert!(ready.contains(", backend io_uring,") || ready.contains(", backend epoll,"), "{ready}");
    // No cluster or DHT on this endpoint: no such lines.
    assert!(!screen.lines().any(|l| l.starts_with("cluster") || l.starts_with("dht")), "{screen}");
    // One row per core; their NACKs add up to the endpoint's.
    let header = screen.lines().position(|l| l.trim_start().starts_with("core")).expect("table");
    let rows: Vec<Vec<&str>> =
        screen.lines().skip(header + 1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len() as u64, total, "{screen}");
    let per_core: u64 = rows.iter().map(|r| r[3].parse::<u64>().expect("nacks column")).sum();
    assert_eq!(per_core as f64, n, "{screen}");
}

#[test]
fn watch_refreshes_until_stopped() {
    let e = Engine::start(&[]);
    let mut child = Command::new(bin("ricochet"))
        .args(["status", "--admin", &e.admin.to_string(), "--watch=200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ricochet status --watch");
    let mut stdout = child.stdout.take().expect("stdout");
    // Three screens, then stop it.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\nreadiness ").count() < 3 {
        let n = stdout.read(&mut buf).expect("read status output");
        assert!(n > 0, "status --watch exited early:\n{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("readiness     ready (HTTP 200)"), "{seen}");
}

#[test]
fn an_admin_address_that_does_not_answer_is_exit_1() {
    // A port nothing listens on: the listener is closed before status runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = format!("127.0.0.1:{port}");
    let out = status(&["--admin", &admin]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the admin API at {admin}")) && err.contains("did not answer"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // An --admin that is no address is a usage error.
    let out = status(&["--admin", "not an address"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
