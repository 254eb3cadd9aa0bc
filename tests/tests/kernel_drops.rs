//! Datagrams the kernel drops before ricochet reads them are counted per
//! socket: a frozen endpoint's NACK queue overflows, and
//! `ricochet_kernel_drops_total{socket="nack"}` says by how much.

use std::time::Duration;

use ricochet_e2e::{Engine, nack_client, nack_for};

#[test]
fn receive_queue_overflows_are_counted_per_socket() {
    let e = Engine::start(&["--cpus", "0"]);
    let body = e.http("/metrics").unwrap().1;
    for socket in ["ingress", "nack", "upstream"] {
        let series = format!("ricochet_kernel_drops_total{{socket=\"{socket}\",core=\"0\"}}");
        assert_eq!(ricochet_e2e::metric_value(&body, &series), Some(0.0), "{series}\n{body}");
    }
    // Frozen, the endpoint reads nothing: far more NACKs than its receive
    // buffer holds (8 MiB asked, capped by net.core.rmem_max) overflow it.
    e.signal("STOP");
    let client = nack_client();
    for i in 0..60_000u64 {
        let _ = client.send_to(&nack_for(0x7000 + i, 1, 0), e.nack_addr());
    }
    e.signal("CONT");
    let series = "ricochet_kernel_drops_total{socket=\"nack\",core=\"0\"}";
    let body = e.wait_metrics(Duration::from_secs(10), |m| {
        ricochet_e2e::metric_value(m, series).is_some_and(|v| v > 0.0)
    });
    let dropped = ricochet_e2e::metric_value(&body, series).unwrap_or(0.0);
    let read = ricochet_e2e::metric_sum(&body, "ricochet_nack_datagrams_total");
    assert!(dropped > 0.0, "{body}");
    // What the kernel dropped, ricochet never saw.
    assert!(dropped + read <= 60_000.0, "dropped {dropped} + read {read}");
}
