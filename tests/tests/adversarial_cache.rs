//! The retry cache on a hostile network (issue 18), against a real
//! `ricochet` on both I/O back ends:
//! - a sparse-SeqNum flood (two tiny frames per flow, SeqNums 1 and
//!   65 536) keeps the process within the cache budget plus a constant,
//!   and a legitimate flow is still served;
//! - a forged frame — same (HashKey, SeqNum) as a cached frame with other
//!   bytes, or SeqNum 1 against a flow near 3 050 — changes nothing that is
//!   served and sends nothing to `/events` subscribers, while a real proxy
//!   restart (1, 2, 3 again) still does.
//!
//! Attacks are sent as multicast, as the data port accepts nothing else.

use std::io::{BufRead, BufReader, Lines, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, metric_sum, nack_client, nack_for};
use ricochet_wire::control::{ResponseKind, ResponseRepr};

const BACKENDS: &[&str] = &["epoll", "uring"];

const TOKEN: &str = "adversarial-cache-token";

/// The cache budget of the flood test, and what the process may grow by
/// beyond it: per-flow state for the 1 500 flows (well under 1 MiB, see
/// `FLOW_STATE_BYTES`), the allocator's share of 3 000 tiny frames, and
/// the allocator keeping freed 2.6 MB logs for reuse rather than giving
/// them back at once. Before the log slots were charged the flood grew the
/// process by 4.85 GB.
const BUDGET: u64 = 64 << 20;
const SLACK: u64 = 32 << 20;

/// An engine on `backend` with an admin token (for `/events`), unicast
/// retransmits (so the NACK client gets the frames) and rate limits far
/// above what the tests send, so that limits are not what they measure.
fn engine(backend: &str, tag: &str, extra: &[&str]) -> Engine {
    let dir = std::env::temp_dir().join(format!("ricochet-adv-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut args = vec![
        "--backend",
        backend,
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--beacon-flags-unicast=true",
        "--rl-ip-burst",
        "100000",
        "--rl-ip-rate",
        "100000",
        "--rl-sequence-max",
        "100000",
        "--rl-chain-rate",
        "100000",
        "--rl-group-burst",
        "100000",
        "--rl-group-rate",
        "100000",
    ];
    args.extend(extra);
    let e = Engine::start(&args);
    let _ = std::fs::remove_dir_all(&dir);
    e
}

/// A subscriber of `GET /events`: the SSE lines it receives.
fn subscribe(e: &Engine) -> Lines<BufReader<TcpStream>> {
    let mut sub = TcpStream::connect(e.admin).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(sub, "GET /events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(sub).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    lines
}

/// The next `data:` line of an SSE stream.
fn next_event(lines: &mut Lines<BufReader<TcpStream>>) -> String {
    lines
        .map_while(Result::ok)
        .find(|l| l.starts_with("data:"))
        .expect("an event within the read timeout")
}

/// Sends `frames` and waits until the engine has taken in that many more
/// well-formed frames.
fn publish(e: &Engine, p: &Publisher, frames: &[(u64, u64, &[u8])]) -> Vec<Vec<u8>> {
    let want = e.metric_sum("ricochet_frames_received_total") + frames.len() as f64;
    let sent = frames.iter().map(|&(hk, seq, payload)| p.send_tx(hk, seq, payload).0).collect();
    let body = e.wait_metrics(Duration::from_secs(20), |b| {
        metric_sum(b, "ricochet_frames_received_total") >= want
    });
    assert!(metric_sum(&body, "ricochet_frames_received_total") >= want, "frames lost:\n{body}");
    sent
}

/// NACKs each SeqNum of `seqs` once; returns (responses, frames).
fn ask_each(
    e: &Engine,
    hk: u64,
    seqs: impl Iterator<Item = u64>,
) -> (Vec<ResponseRepr>, Vec<Vec<u8>>) {
    let client: UdpSocket = nack_client();
    for seq in seqs {
        client.send_to(&nack_for(hk, seq, 0), e.nack_addr()).unwrap();
    }
    let mut responses = Vec::new();
    let mut frames = Vec::new();
    for d in drain(&client, Duration::from_millis(500)) {
        match ResponseRepr::parse(&d) {
            Ok(r) => responses.push(r),
            Err(_) => frames.push(d),
        }
    }
    (responses, frames)
}

/// A real proxy restart on flow `hk` (five frames, then 1, 2, 3 again with
/// new bytes), which must reach the subscriber as an `epoch_reset`: the
/// control that shows the stream works and that nothing came before it.
fn restart_and_expect_its_event(
    e: &Engine,
    p: &Publisher,
    hk: u64,
    events: &mut Lines<BufReader<TcpStream>>,
) {
    let old: Vec<_> = (1..=5).map(|seq| (hk, seq, &b"epoch one"[..])).collect();
    publish(e, p, &old);
    let new: Vec<_> = (1..=3).map(|seq| (hk, seq, &b"epoch two!"[..])).collect();
    publish(e, p, &new);
    let event = next_event(events);
    assert!(
        event.contains(&format!("{hk:#018x}")) && event.contains("epoch_reset"),
        "the first event is the control flow's restart, not the forged flow's: {event}"
    );
}

#[test]
fn a_sparse_seqnum_flood_stays_within_the_budget_and_a_real_flow_is_served() {
    for backend in BACKENDS {
        let e = engine(backend, "flood", &["--cache-max-bytes", "64MiB"]);
        let p = Publisher::new(e.listen_port);
        let rss = || e.metric("process_resident_memory_bytes").expect("RSS exported") as u64;
        let before = rss();
        // 1 500 flows of two tiny frames, at SeqNums 1 and 65 536; in
        // batches the engine takes in before the next.
        let flows: Vec<u64> = (0..1_500u64).map(|i| 0xF100_0000 + i).collect();
        for batch in flows.chunks(100) {
            let frames: Vec<_> = batch
                .iter()
                .flat_map(|&hk| [(hk, 1, &b"a"[..]), (hk, 65_536, &b"b"[..])])
                .collect();
            publish(&e, &p, &frames);
        }
        let body = e.http("/metrics").unwrap().1;
        let after = rss();
        let cache_bytes = metric_sum(&body, "ricochet_cache_bytes");
        assert!(cache_bytes <= BUDGET as f64, "{backend}: ricochet_cache_bytes {cache_bytes}");
        eprintln!(
            "{backend}: RSS {before} -> {after} (+{} KiB), cache entries {}, evicted for bytes {}",
            after.saturating_sub(before) >> 10,
            metric_sum(&body, "ricochet_cache_entries"),
            metric_sum(&body, "ricochet_cache_evicted_max_bytes_total"),
        );
        assert!(
            after.saturating_sub(before) <= BUDGET + SLACK,
            "{backend}: RSS grew by {} MiB, over the 64 MiB budget + {} MiB",
            (after - before) >> 20,
            SLACK >> 20
        );
        assert!(metric_sum(&body, "ricochet_cache_evicted_max_bytes_total") > 0.0, "{backend}");

        // A legitimate flow: 20 frames, 20 NACKs, all answered with them.
        let legit: Vec<_> = (1..=20).map(|seq| (0xC0DE, seq, &b"legit"[..])).collect();
        let sent = publish(&e, &p, &legit);
        let (responses, frames) = ask_each(&e, 0xC0DE, 1..=20);
        let acks = responses.iter().filter(|r| matches!(r.kind, ResponseKind::Ack(_))).count();
        assert_eq!(acks, 20, "{backend}: every NACK answered: {responses:?}");
        assert_eq!(frames.len(), 20, "{backend}");
        assert!(frames.iter().all(|f| sent.contains(f)), "{backend}: frames are the ones sent");
    }
}

#[test]
fn a_forged_conflicting_frame_changes_nothing_served_and_is_not_announced() {
    for backend in BACKENDS {
        let e = engine(backend, "conflict", &[]);
        let mut events = subscribe(&e);
        let p = Publisher::new(e.listen_port);
        const HK: u64 = 0xF0F0;
        let flow: Vec<_> = (1..=20).map(|seq| (HK, seq, &b"original"[..])).collect();
        let sent = publish(&e, &p, &flow);
        // Same (HashKey, SeqNum) as a cached frame, other bytes.
        let forged = publish(&e, &p, &[(HK, 10, &b"forged!!"[..])]).remove(0);
        assert_ne!(forged, sent[9]);
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            metric_sum(b, "ricochet_cache_epoch_candidates_total") >= 1.0
        });
        assert_eq!(metric_sum(&body, "ricochet_cache_epoch_candidates_total"), 1.0, "{backend}");
        assert_eq!(metric_sum(&body, "ricochet_cache_epoch_resets_total"), 0.0, "{backend}");

        let (responses, frames) = ask_each(&e, HK, 1..=20);
        assert_eq!(responses.len(), 20, "{backend}: every NACK answered: {responses:?}");
        assert!(responses.iter().all(|r| matches!(r.kind, ResponseKind::Ack(_))), "{backend}");
        assert!(!frames.contains(&forged), "{backend}: the forged frame was served");
        let mut got = frames.clone();
        got.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(got, want, "{backend}: the original frames, all of them");

        restart_and_expect_its_event(&e, &p, 0xC1, &mut events);
    }
}

#[test]
fn a_forged_seqnum_far_behind_changes_nothing_served_and_is_not_announced() {
    for backend in BACKENDS {
        let e = engine(backend, "regress", &[]);
        let mut events = subscribe(&e);
        let p = Publisher::new(e.listen_port);
        const HK: u64 = 0xF1F1;
        let flow: Vec<_> = (3_000..=3_050).map(|seq| (HK, seq, &b"original"[..])).collect();
        let sent = publish(&e, &p, &flow);
        // SeqNum 1 against a flow at 3 050: what a restart looks like, once.
        let forged = publish(&e, &p, &[(HK, 1, &b"forged!!"[..])]).remove(0);
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            metric_sum(b, "ricochet_cache_epoch_candidates_total") >= 1.0
        });
        assert_eq!(metric_sum(&body, "ricochet_cache_epoch_resets_total"), 0.0, "{backend}");

        let (responses, frames) = ask_each(&e, HK, 3_000..=3_050);
        assert_eq!(responses.len(), 51, "{backend}: every NACK answered");
        assert!(responses.iter().all(|r| matches!(r.kind, ResponseKind::Ack(_))), "{backend}");
        let mut got = frames.clone();
        got.sort();
        let mut want = sent.clone();
        want.sort();
        assert_eq!(got, want, "{backend}: the original frames, all of them");
        // The forged frame is not served either.
        let (responses, frames) = ask_each(&e, HK, 1..=1);
        assert!(!frames.contains(&forged), "{backend}");
        assert_eq!(responses.iter().map(|r| r.kind).collect::<Vec<_>>(), [ResponseKind::Miss]);

        restart_and_expect_its_event(&e, &p, 0xC2, &mut events);
    }
}
