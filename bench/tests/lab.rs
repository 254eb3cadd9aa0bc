//! End to end: `ricochet-loadgen lab` against the real engine binary on
//! loopback, for a few seconds at 1 % drop, must fill every gap.
//!
//! Uses the binaries `cargo build --workspace --bins` put next to the load
//! generator (scripts/test.sh builds them first); it never builds anything
//! itself. No timing thresholds: only completeness is asserted.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_lab_fills_every_gap_at_one_percent_drop() {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_ricochet-loadgen"));
    let engine = loadgen.with_file_name("ricochet");
    assert!(
        engine.is_file(),
        "{} not found; build it first: cargo build --workspace --bins",
        engine.display()
    );
    let json = std::env::temp_dir().join(format!("ricochet-lab-test-{}.json", std::process::id()));
    let out = Command::new(&loadgen)
        .args(["lab", "--engine"])
        .arg(&engine)
        .args([
            "--duration",
            "3s",
            "--rate",
            "1000",
            "--drop",
            "1%",
            "--flows",
            "4",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .env_remove("CARGO")
        .output()
        .expect("run ricochet-loadgen lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let _ = std::fs::remove_file(&json);
    assert!(out.status.success(), "lab failed ({}):\n{stdout}\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_str(&text).expect("lab JSON");
    let rec = &v["listener"]["recovery"];
    let gaps = rec["gaps_opened"].as_u64().unwrap();
    let dropped = v["listener"]["counts"]["dropped_on_purpose"].as_u64().unwrap();
    assert!(dropped > 0, "a 1% drop over ~3000 frames drops some:\n{stdout}");
    assert!(gaps >= dropped, "every deliberate drop becomes a gap:\n{stdout}");
    assert_eq!(rec["filled"].as_u64().unwrap(), gaps, "every gap filled:\n{stdout}");
    assert_eq!(v["all_filled"], true);
    assert!(
        v["engine"]["ricochet_cache_hits_total"].as_f64().unwrap_or(0.0) > 0.0,
        "the engine served them:\n{stdout}"
    );
}
