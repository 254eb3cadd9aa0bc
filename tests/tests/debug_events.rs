//! `-debug` per-event lines: the reference's "frame cached", "retransmitted
//! frame", "cache miss" and "rate limited" lines, within a per-worker line
//! budget so a NACK flood is not a log storm.

use std::time::{Duration, Instant};

use ricochet_e2e::{Engine, Publisher, nack_client, nack_for};

/// Per-event lines one worker may write in a second (engine's
/// `rt::event_log::LINES_PER_SECOND`).
const LINES_PER_SECOND: usize = 50;

#[test]
fn debug_lines_name_each_event_and_a_flood_stays_within_the_budget() {
    let started = Instant::now();
    // One worker, so the budget is one worker's; the per-IP tier is raised
    // so the flood reaches the cache, the per-flow tier left at 500/min.
    let mut e = Engine::start(&[
        "--cpus",
        "0",
        "--debug",
        "--rl-ip-rate",
        "100000",
        "--rl-ip-burst",
        "100000",
    ]);
    let publisher = Publisher::new(e.listen_port);
    publisher.send_tx(0xD1, 1, b"debug me");
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_frames_cached_total") >= 1.0
    });
    let client = nack_client();
    client.send_to(&nack_for(0xD1, 1, 0), e.nack_addr()).unwrap();
    client.send_to(&nack_for(0xD1, 2, 0), e.nack_addr()).unwrap();
    // A flood of misses on flows of their own: far more than a second's
    // budget of lines.
    for i in 0..3000u64 {
        client.send_to(&nack_for(0x1000 + i, 5, 0), e.nack_addr()).unwrap();
    }
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_nacks_total") >= 3002.0
    });
    // The next window opens and says how many lines were left out.
    std::thread::sleep(Duration::from_millis(1100));
    client.send_to(&nack_for(0xD1, 3, 0), e.nack_addr()).unwrap();
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_nacks_total") >= 3003.0
    });
    let elapsed = started.elapsed();
    let logs = e.kill_and_logs();

    let has = |needle: &str| logs.lines().any(|l| l.contains(needle));
    assert!(has("frame cached") && has("seq_num=1"), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("retransmitted frame") && l.contains("seq_num=1")),
        "{logs}"
    );
    assert!(logs.lines().any(|l| l.contains("cache miss") && l.contains("start_seq=2")), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("per-event debug lines left out") && l.contains("suppressed=")),
        "{logs}"
    );
    let events = logs
        .lines()
        .filter(|l| {
            ["frame cached", "retransmitted frame", "cache miss", "rate limited"]
                .iter()
                .any(|k| l.contains(k))
        })
        .count();
    let windows = elapsed.as_secs() as usize + 2;
    assert!(
        events <= LINES_PER_SECOND * windows,
        "{events} per-event lines in {elapsed:?}: more than {LINES_PER_SECOND} a second"
    );
    assert!(events < 3000, "the flood was not cut: {events} lines");
}

#[test]
fn without_debug_there_are_no_per_event_lines() {
    let mut e = Engine::start(&["--cpus", "0", "--log-level", "debug"]);
    let publisher = Publisher::new(e.listen_port);
    publisher.send_tx(0xD2, 1, b"quiet");
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_frames_cached_total") >= 1.0
    });
    let client = nack_client();
    client.send_to(&nack_for(0xD2, 1, 0), e.nack_addr()).unwrap();
    client.send_to(&nack_for(0xD2, 2, 0), e.nack_addr()).unwrap();
    e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_nacks_total") >= 2.0
    });
    let logs = e.kill_and_logs();
    // As the reference: the level alone does not turn them on.
    for line in ["frame cached", "retransmitted frame", "cache miss"] {
        assert!(!logs.contains(line), "{line:?} without -debug:\n{logs}");
    }
}
