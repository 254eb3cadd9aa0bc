//! `ricochet-loadgen nack --prefill-only` publishes the prefill and stops;
//! a second run with `--no-publish` NACKs the same frames, and the engine
//! has every one. The bench suite times its storms this way, so an
//! engine's ingest of the prefill is not in their CPU per NACK.

use std::path::Path;
use std::process::Command;

use ricochet_e2e::{Engine, bin};
use serde_json::Value;

const PREFILL: &str = "2000";

fn loadgen(e: &Engine, json: &Path, extra: &[&str]) -> Value {
    let out = Command::new(bin("ricochet-loadgen"))
        .arg("nack")
        .args(["--target", &e.nack_addr().to_string()])
        .args(["--prefill", PREFILL, "--flows", "4", "--payload", "200", "--quiet"])
        .args(["--metrics", &format!("http://{}/metrics", e.admin)])
        .args(extra)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run ricochet-loadgen");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ricochet-loadgen nack {extra:?} failed:\n{log}");
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("no JSON ({e}):\n{log}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn prefill_only_then_no_publish_nacks_the_same_frames() {
    // Rate limits out of the way: one address NACKs every frame.
    let e = Engine::start(&[
        "--rl-ip-rate=1e9",
        "--rl-ip-burst=1000000000",
        "--rl-sequence-max=1000000000",
        "--rl-chain-rate=1000000000",
        "--rl-group-rate=1e9",
        "--rl-group-burst=1000000000",
    ]);
    let dir = std::env::temp_dir().join(format!("ricochet-prefill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let listen = e.listen_port.to_string();
    let p = loadgen(&e, &dir.join("prefill.json"), &["--listen-port", &listen, "--prefill-only"]);
    assert_eq!(p["mode"], "prefill-only", "{p}");
    assert_eq!(p["prefill_cached"].as_u64(), Some(2000), "{p}");
    assert_eq!(p["sent"].as_u64(), Some(0), "{p}");
    assert_eq!(e.metric_sum("ricochet_nacks_total"), 0.0, "it sent NACKs");
    let cached = e.metric_sum("ricochet_frames_cached_total");

    let n = loadgen(
        &e,
        &dir.join("nack.json"),
        &["--no-publish", "--rate", "1000", "--duration", "1s"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let sent = n["sent"].as_u64().unwrap();
    assert!(sent > 0, "{n}");
    assert_eq!(n["sent_hits"].as_u64(), Some(sent), "{n}");
    assert_eq!(n["acks"].as_u64(), Some(sent), "every NACK of a prefilled frame is ACKed: {n}");
    assert_eq!(n["misses"].as_u64(), Some(0), "{n}");
    assert_eq!(e.metric_sum("ricochet_frames_cached_total"), cached, "the second run published");
}
