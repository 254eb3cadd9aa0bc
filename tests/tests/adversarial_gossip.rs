//! Replayed gossip against a real endpoint (issue 18): a datagram sealed
//! with the right cluster key — as an attacker captures it off the wire —
//! is acted on once; the same bytes sent again are dropped as `replayed`,
//! and a copy stamped outside the ±30 s window as `out_of_window`; neither
//! draws an answer. An answer to the first, from an address that is not a
//! live member, stays within 3x its size.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ricochet_e2e::{Engine, drain, metric_value, ports};
use ricochet_wire::mac::{ClusterKey, Stamp};

const KEY: [u8; 32] = [0x3C; 32];

fn dropped(e: &Engine, reason: &str) -> f64 {
    e.metric(&format!("ricochet_cluster_gossip_dropped_total{{reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn captured_gossip_is_acted_on_once_and_never_answered_again() {
    let p = ports();
    let key_file = std::env::temp_dir().join(format!(
        "ricochet-replay-{}-{}.key",
        std::process::id(),
        p.listen
    ));
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, format!("{hex}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let gossip_port = p.gossip;
    let e = Engine::start_on(
        p,
        &[
            "--cluster-key-file",
            key_file.to_str().unwrap(),
            "--gossip-port",
            &gossip_port.to_string(),
        ],
    );
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, gossip_port));
    let attacker = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();

    // A G2 digest probe whose fingerprint matches nothing the endpoint
    // holds, sealed as a sibling would seal it now.
    let mut g2 = vec![0x47, 0x32];
    g2.extend_from_slice(&0x0123_4567_89AB_CDEFu64.to_be_bytes());
    g2.extend_from_slice(&[0, 0]);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let stamp = Stamp { sender: 0x5EED_0001, time_ms: now_ms, counter: 1 };
    let sealed = ClusterKey::new(KEY).seal_gossip_vec(&g2, 0, &stamp).unwrap();

    let replayed0 = dropped(&e, "replayed");
    let window0 = dropped(&e, "out_of_window");

    // First delivery: accepted; whatever answers it, bounded by 3x.
    attacker.send_to(&sealed, target).unwrap();
    let first: usize = drain(&attacker, Duration::from_millis(700)).iter().map(Vec::len).sum();
    assert!(
        first <= 3 * sealed.len(),
        "a non-member drew {first} bytes for a {}-byte datagram",
        sealed.len()
    );

    // The captured bytes, sent again (twice): dropped, not answered.
    attacker.send_to(&sealed, target).unwrap();
    attacker.send_to(&sealed, target).unwrap();
    let again = drain(&attacker, Duration::from_millis(700));
    assert!(again.is_empty(), "a replay was answered: {again:?}");
    let body = e.wait_metrics(Duration::from_secs(5), |b| {
        metric_value(b, "ricochet_cluster_gossip_dropped_total{reason=\"replayed\"}")
            .is_some_and(|v| v >= replayed0 + 2.0)
    });
    assert_eq!(
        metric_value(&body, "ricochet_cluster_gossip_dropped_total{reason=\"replayed\"}"),
        Some(replayed0 + 2.0),
        "{body}"
    );

    // A copy stamped a minute ago, with a counter never seen: outside the
    // window, dropped and not answered.
    let old = Stamp { sender: 0x5EED_0002, time_ms: now_ms - 60_000, counter: 1 };
    let stale = ClusterKey::new(KEY).seal_gossip_vec(&g2, 0, &old).unwrap();
    attacker.send_to(&stale, target).unwrap();
    assert!(drain(&attacker, Duration::from_millis(700)).is_empty());
    e.wait_metrics(Duration::from_secs(5), |b| {
        metric_value(b, "ricochet_cluster_gossip_dropped_total{reason=\"out_of_window\"}")
            .is_some_and(|v| v >= window0 + 1.0)
    });
    assert_eq!(dropped(&e, "out_of_window"), window0 + 1.0);
    assert_eq!(dropped(&e, "replayed"), replayed0 + 2.0);
    let _ = std::fs::remove_file(&key_file);
}
