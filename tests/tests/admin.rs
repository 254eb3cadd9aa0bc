//! The state-changing admin endpoints: `POST /admin/invalidate` and the
//! `/events` stream, behind a bearer token.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, http_request, nack_client};
use ricochet_wire::control::{NackFlags, NackRepr, ResponseRepr};

const TOKEN: &str = "s3cret-token-for-tests";

fn nack(hash_key: u64, seq: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    NackRepr { flags: NackFlags(0), hash_key, start_seq: seq, end_seq: seq, subtree_id: [0; 32] }
        .emit(&mut b)
        .unwrap();
    b
}

/// An engine whose admin token is [`TOKEN`], from a file of its own.
fn with_token(tag: &str, extra: &[&str]) -> Engine {
    let dir = std::env::temp_dir().join(format!("ricochet-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut args = vec!["--admin-token-file", token_file.to_str().unwrap()];
    args.extend(extra);
    let e = Engine::start(&args);
    // Read at startup (the engine is ready): the file can go.
    let _ = std::fs::remove_dir_all(&dir);
    e
}

#[test]
fn invalidate_needs_the_token_drops_the_flow_and_is_streamed_to_subscribers() {
    let e = with_token("admin", &[]);

    // A subscriber on /events.
    let mut sub = TcpStream::connect(e.admin).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(sub, "GET /events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(sub.try_clone().unwrap()).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains("200"), "{status}");

    let p = Publisher::new(e.listen_port);
    for seq in 1..=3 {
        p.send_tx(0xA1, seq, b"x");
    }
    e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 3.0
    });

    let path = "/admin/invalidate?hash_key=0xa1";
    assert_eq!(http_request(e.admin, "POST", path, None).unwrap().0, 401);
    assert_eq!(http_request(e.admin, "POST", path, Some("wrong-token-wrong")).unwrap().0, 401);
    assert_eq!(
        http_request(e.admin, "POST", "/admin/invalidate?hash_key=zz", Some(TOKEN)).unwrap().0,
        400
    );
    let (code, body) = http_request(e.admin, "POST", path, Some(TOKEN)).unwrap();
    assert_eq!(code, 202, "{body}");

    // The flow is gone: its frames are MISSes now.
    e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_cache_invalidations_total") >= 1.0
    });
    let client = nack_client();
    client.send_to(&nack(0xA1, 2), e.nack_addr()).unwrap();
    let replies = drain(&client, Duration::from_millis(300));
    assert_eq!(
        replies.iter().map(|r| ResponseRepr::parse(r)).collect::<Vec<_>>(),
        vec![Ok(ResponseRepr::miss())]
    );

    // A proxy restart detected on a core — the same keys arriving with
    // other bytes, three frames of the new epoch (one datagram is never
    // enough) — is streamed too.
    for seq in 1..=3 {
        p.send_tx(0xB2, seq, b"before restart");
    }
    e.wait_metrics(Duration::from_secs(5), |b| {
        ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 6.0
    });
    for seq in 1..=3 {
        p.send_tx(0xB2, seq, b"after restart!");
    }

    // The subscriber saw both.
    let data: Vec<String> =
        lines.map_while(Result::ok).filter(|l| l.starts_with("data:")).take(2).collect();
    assert!(data[0].contains("0x00000000000000a1") && data[0].contains("admin"), "{data:?}");
    assert!(data[1].contains("0x00000000000000b2") && data[1].contains("epoch_reset"), "{data:?}");
}

#[test]
fn without_a_token_file_the_state_changing_endpoints_are_off() {
    let e = Engine::start(&[]);
    let (code, body) =
        http_request(e.admin, "POST", "/admin/invalidate?hash_key=1", Some(TOKEN)).unwrap();
    assert_eq!(code, 403);
    assert!(body.contains("--admin-token-file"), "{body}");
    assert_eq!(http_request(e.admin, "GET", "/events", Some(TOKEN)).unwrap().0, 403);
}

#[test]
fn loglevel_reads_openly_and_changes_with_the_token() {
    let mut e = with_token("loglevel", &[]);
    let req = |method: &str, path: &str, token: Option<&str>| {
        http_request(e.admin, method, path, token).unwrap()
    };
    assert_eq!(req("GET", "/loglevel", None), (200, "INFO\n".into()));
    assert_eq!(req("PUT", "/loglevel?level=debug", None).0, 401, "a change needs the token");
    assert_eq!(req("PUT", "/loglevel?level=debug", Some(TOKEN)), (200, "DEBUG\n".into()));
    assert_eq!(req("GET", "/loglevel", None), (200, "DEBUG\n".into()));
    assert_eq!(req("POST", "/loglevel?level=warning", Some(TOKEN)), (200, "WARN\n".into()));
    let (status, body) = req("POST", "/loglevel", Some(TOKEN));
    assert_eq!((status, body.as_str()), (400, "missing level query parameter\n"));
    let (status, body) = req("PUT", "/loglevel?level=loud", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert_eq!(req("DELETE", "/loglevel", Some(TOKEN)).0, 405);
    assert_eq!(req("GET", "/loglevel", None), (200, "WARN\n".into()));
    let logs = e.kill_and_logs();
    assert!(logs.contains("log level changed"), "{logs}");
}

/// Idle and slowloris connections neither exhaust the admin listener nor
/// keep `/healthz` from answering another client.
#[test]
fn the_admin_listener_caps_connections_and_times_out_slow_heads() {
    use std::io::Read;
    use std::net::TcpStream;
    let e =
        Engine::start(&["--admin-header-timeout", "5s", "--admin-max-connections-per-source", "4"]);
    // Ten idle connections from one address (not the fixture's): four are
    // held, six closed at once.
    let idle: Vec<TcpStream> = (0..10).map(|_| from(e.admin, [127, 0, 0, 4])).collect();
    let closed_at_once = idle
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            matches!((&**s).read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert_eq!(closed_at_once, 6, "the per-source cap");
    // Another address is still served while they are held.
    let mut other = from(e.admin, [127, 0, 0, 2]);
    write!(other, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    other.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A slowloris head, one byte every 100 ms from a third address: closed
    // once the timeout passes, however it trickles.
    let mut slow = from(e.admin, [127, 0, 0, 3]);
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let cut = head
        .iter()
        .any(|b| slow.write_all(&[*b]).is_err() || matches!(slow.read(&mut [0u8; 64]), Ok(0)));
    assert!(cut, "a head trickled over {} ms was not cut", head.len() * 100);
    // The held idle connections were closed by the timeout too.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    }
    let body = e.wait_metrics(Duration::from_secs(5), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_admin_header_timeouts_total") >= 5.0
    });
    assert_eq!(
        ricochet_e2e::metric_value(&body, "ricochet_admin_refused_total{cap=\"source\"}"),
        Some(6.0),
        "{body}"
    );
    assert!(
        ricochet_e2e::metric_sum(&body, "ricochet_admin_header_timeouts_total") >= 5.0,
        "{body}"
    );
}

/// A TCP connection to `to` from the loopback address `src`.
fn from(to: std::net::SocketAddr, src: [u8; 4]) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((src, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

#[test]
fn debug_pages_take_the_token_unless_public() {
    // The fixture passes --debug-public; a later --debug-public=false wins.
    let e = with_token("debug", &[]);
    let closed = Engine::start(&["--debug-public=false"]);
    let (status, body) = http_request(closed.admin, "GET", "/debug/stats", None).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--admin-token-file") && body.contains("--debug-public"), "{body}");
    assert_eq!(http_request(e.admin, "GET", "/debug/stats", None).unwrap().0, 200, "public");
    let tokened = with_token("debug-closed", &["--debug-public=false"]);
    assert_eq!(http_request(tokened.admin, "GET", "/debug/stats", None).unwrap().0, 401);
    let (status, body) = http_request(tokened.admin, "GET", "/debug/stats", Some(TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"workers\""), "{body}");
}
