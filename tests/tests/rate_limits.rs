//! Rate limits are the endpoint's, as in the reference, whatever the
//! number of workers: a source whose NACKs reach every worker gets one
//! per-IP allowance, not one per worker.

use std::time::Duration;

use ricochet_e2e::{Engine, drain, nack_client, nack_for};

#[test]
fn one_per_ip_allowance_across_two_workers() {
    // A bucket of 20 that refills at 1/s: a burst of NACKs spread over many
    // flows (so over both workers) gets about 20 answers in all. With a
    // bucket per worker it got about 40.
    let e = Engine::start(&["--cpus", "0,1", "--rl-ip-rate", "1", "--rl-ip-burst", "20"]);
    let client = nack_client();
    let sending = std::time::Instant::now();
    for i in 0..200u64 {
        // Misses: every admitted NACK is answered with a MISS.
        client.send_to(&nack_for(0x5000 + i, 1, 0), e.nack_addr()).unwrap();
    }
    // The bucket refills at 1/s while the burst is being sent (a slow
    // machine sends it slowly): that much more may be admitted.
    let refill = sending.elapsed().as_secs() as usize + 1;
    let answers = drain(&client, Duration::from_millis(1000)).len();
    let body = e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_sum(m, "ricochet_nacks_total") >= 200.0
    });
    let per_core = |core: u8| {
        ricochet_e2e::metric_value(&body, &format!("ricochet_nacks_total{{core=\"{core}\"}}"))
            .unwrap_or(0.0)
    };
    assert!(per_core(0) > 0.0 && per_core(1) > 0.0, "the NACKs reached both workers:\n{body}");
    assert!(
        (17..=23 + refill).contains(&answers),
        "{answers} answers: one bucket of 20 (±15 %, plus {refill} refilled), not two"
    );
    let limited = ricochet_e2e::metric_sum(&body, "ricochet_rate_limited_ip_total");
    assert_eq!(limited as usize + answers, 200, "every other NACK was refused by the IP tier");
}
