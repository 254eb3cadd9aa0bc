//! Invalidation push between domains, with real processes: a downstream
//! endpoint D registers with upstream endpoint U's `/events`
//! (`--upstream-events`), drops the flows U invalidates, re-sends them on
//! its own `/events`, re-registers after U restarts, and U refuses
//! downstreams beyond `--max-downstreams`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use ricochet_e2e::{
    Engine, Publisher, drain, http_request, metric_sum, metric_value, nack_client, ports,
};
use ricochet_wire::control::{NackFlags, NackRepr, ResponseKind, ResponseRepr};

const TOKEN: &str = "cascade-token-for-tests";
const FLOW: u64 = 0x00CA_5CAD;
/// Deadline for every condition waited on.
const WAIT: Duration = Duration::from_secs(60);

/// A directory with the token file, removed on drop.
struct TokenDir(PathBuf);

impl TokenDir {
    fn new(tag: &str) -> TokenDir {
        let dir = std::env::temp_dir().join(format!("ricochet-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        TokenDir(dir)
    }

    fn token(&self) -> String {
        self.0.join("token").to_str().unwrap().to_string()
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a downstream endpoint subscribed to `upstream`'s events.
fn downstream(upstream: SocketAddr, token: &str) -> Engine {
    Engine::start(&[
        "--admin-token-file",
        token,
        "--upstream-events",
        &upstream.to_string(),
        "--upstream-events-token-file",
        token,
    ])
}

/// `name{upstream="…"}` as D exports it.
fn series(name: &str, upstream: SocketAddr) -> String {
    format!("ricochet_upstream_events_{name}{{upstream=\"{upstream}\"}}")
}

fn value(body: &str, series: &str) -> f64 {
    metric_value(body, series).unwrap_or(0.0)
}

/// Waits until `cond` holds on `e`'s metrics; fails naming `what`.
fn wait_for(e: &Engine, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let body = e.wait_metrics(WAIT, &cond);
    assert!(cond(&body), "{what}: not within {WAIT:?}; metrics:\n{body}");
    body
}

/// Publishes `seqs` of `FLOW` into `e`'s domain and waits until cached.
fn publish(e: &Engine, seqs: std::ops::RangeInclusive<u64>) {
    let want = e.metric_sum("ricochet_frames_cached_total") + seqs.clone().count() as f64;
    let p = Publisher::new(e.listen_port);
    for seq in seqs {
        p.send_tx(FLOW, seq, &seq.to_be_bytes());
    }
    wait_for(e, "frames cached", |b| metric_sum(b, "ricochet_frames_cached_total") >= want);
}

/// What `e` answers to a NACK for one frame of `FLOW`.
fn ask(e: &Engine, seq: u64) -> Vec<ResponseKind> {
    let mut b = [0u8; 64];
    NackRepr {
        flags: NackFlags(0),
        hash_key: FLOW,
        start_seq: seq,
        end_seq: seq,
        subtree_id: [0x20; 32],
    }
    .emit(&mut b)
    .unwrap();
    let client = nack_client();
    client.send_to(&b, e.nack_addr()).unwrap();
    drain(&client, Duration::from_millis(400))
        .iter()
        .filter_map(|d| ResponseRepr::parse(d).ok())
        .map(|r| r.kind)
        .collect()
}

fn assert_hit(e: &Engine, seq: u64) {
    let r = ask(e, seq);
    assert!(matches!(r[..], [ResponseKind::Ack(_)]), "seq {seq}: expected a hit, got {r:?}");
}

fn assert_miss(e: &Engine, seq: u64) {
    assert_eq!(ask(e, seq), vec![ResponseKind::Miss], "seq {seq}");
}

fn invalidate(u: &Engine) {
    let path = format!("/admin/invalidate?hash_key={FLOW:#x}");
    let (code, body) = http_request(u.admin, "POST", &path, Some(TOKEN)).unwrap();
    assert_eq!(code, 202, "{body}");
}

/// A raw `/events` subscriber: its status line and its lines.
fn subscribe(admin: SocketAddr) -> (String, std::io::Lines<BufReader<TcpStream>>) {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET /events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").unwrap();
    let mut lines = BufReader::new(s).lines();
    let status = lines.next().unwrap().unwrap();
    (status, lines)
}

#[test]
fn upstream_invalidations_reach_the_downstream_cache_and_survive_an_upstream_restart() {
    let dir = TokenDir::new("cascade");
    let token = dir.token();
    let u_ports = ports();
    let u = Engine::start_on(u_ports, &["--admin-token-file", &token]);
    let d = downstream(u.admin, &token);
    let connected = series("connected", u.admin);
    let connects = series("connects_total", u.admin);
    let disconnects = series("disconnects_total", u.admin);
    let applied = series("invalidations_applied_total", u.admin);
    wait_for(&d, "D registers with U", |b| value(b, &connected) == 1.0);

    // Whoever subscribes to D hears what D applies, one hop further.
    let (status, mut d_events) = subscribe(d.admin);
    assert!(status.contains("200"), "{status}");

    publish(&d, 1..=3);
    assert_hit(&d, 2);
    invalidate(&u);
    wait_for(&d, "D applies U's invalidation", |b| {
        value(b, &applied) >= 1.0 && metric_sum(b, "ricochet_cache_invalidations_total") >= 1.0
    });
    assert_miss(&d, 3);
    let flow = format!("{FLOW:#018x}");
    let data = d_events
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("data:") && l.contains(&flow))
        .expect("D re-sends the invalidation");
    assert!(data.contains("\"reason\":\"admin\"") && data.contains("\"hops\":1"), "{data}");
    let (_, debug) = d.http("/debug/upstream-events").unwrap();
    assert!(debug.contains("\"state\":\"registered\""), "{debug}");

    // U restarts at the same address: D notices and registers again.
    let before = value(&d.http("/metrics").unwrap().1, &connects);
    drop(u);
    wait_for(&d, "D notices U is gone", |b| {
        value(b, &disconnects) >= 1.0 && value(b, &connected) == 0.0
    });
    let u = Engine::start_on(u_ports, &["--admin-token-file", &token]);
    wait_for(&d, "D registers with the restarted U", |b| {
        value(b, &connected) == 1.0 && value(b, &connects) > before
    });
    wait_for(&u, "U counts D as a subscriber", |b| value(b, "ricochet_events_subscribers") == 1.0);

    // And invalidations flow again.
    publish(&d, 4..=6);
    assert_hit(&d, 5);
    invalidate(&u);
    wait_for(&d, "D applies the restarted U's invalidation", |b| value(b, &applied) >= 2.0);
    assert_miss(&d, 6);
}

#[test]
fn an_upstream_refuses_downstreams_beyond_its_limit_until_a_slot_frees() {
    let dir = TokenDir::new("limit");
    let token = dir.token();
    let u = Engine::start(&["--admin-token-file", &token, "--max-downstreams", "1"]);
    let connected = series("connected", u.admin);
    let refused = format!(
        "ricochet_upstream_events_errors_total{{upstream=\"{}\",reason=\"refused\"}}",
        u.admin
    );
    let d1 = downstream(u.admin, &token);
    wait_for(&d1, "D1 registers", |b| value(b, &connected) == 1.0);

    let d2 = downstream(u.admin, &token);
    wait_for(&d2, "D2 is refused and counts it", |b| {
        value(b, &refused) >= 1.0 && value(b, &connected) == 0.0
    });
    let (_, debug) = d2.http("/debug/upstream-events").unwrap();
    assert!(debug.contains("\"reason\":\"refused\"") && debug.contains("too many"), "{debug}");
    // Any other subscriber is refused the same way.
    let (status, _) = subscribe(u.admin);
    assert!(status.contains("503"), "{status}");
    wait_for(&u, "U holds its one subscriber", |b| value(b, "ricochet_events_subscribers") == 1.0);

    // D1 goes away: D2's retries get the slot.
    drop(d1);
    wait_for(&d2, "D2 registers once the slot is free", |b| value(b, &connected) == 1.0);
}
