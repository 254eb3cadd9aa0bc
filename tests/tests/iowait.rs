//! An io_uring worker waiting for datagrams is not in I/O wait.
//!
//! The kernel counts a task that waits on a ring with requests in flight
//! (the worker's armed receives) as in I/O wait unless the wait says
//! otherwise (`IORING_ENTER_NO_IOWAIT`, Linux 6.15+). Without the flag an
//! idle NACK core reads as iowait, not idle, on every host dashboard.
//!
//! Measured with the kernel's delay accounting: a thread's block-I/O delay
//! (field 42 of `/proc/PID/task/TID/stat`, in clock ticks) grows only while
//! it sleeps in I/O wait. The test turns `kernel.task_delayacct` on for its
//! run (it only adds accounting) and puts the old value back.

use std::time::Duration;

use ricochet_e2e::{Engine, Publisher, drain, kernel_at_least, nack_client, nack_for, report_skip};

/// A sysctl set for the test's run and put back on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> std::io::Result<Sysctl> {
        let old = std::fs::read_to_string(path)?;
        std::fs::write(path, value)?;
        Ok(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// (comm, block-I/O delay ticks) of each thread of `pid`.
fn blkio_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // Fields after the parenthesised comm start at field 3.
        let (head, rest) = stat.rsplit_once(')').expect("stat has a comm");
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
        let ticks = rest.split_whitespace().nth(42 - 3).and_then(|v| v.parse().ok());
        out.push((comm, ticks.expect("field 42: delayacct_blkio_ticks")));
    }
    out
}

#[test]
fn an_idle_uring_worker_is_not_in_io_wait() {
    let test = "an_idle_uring_worker_is_not_in_io_wait";
    if !kernel_at_least(6, 15) {
        report_skip(test, "needs Linux 6.15+ (IORING_FEAT_NO_IOWAIT)");
        return;
    }
    let _on = match Sysctl::set("/proc/sys/kernel/task_delayacct", "1") {
        Ok(s) => s,
        Err(e) => {
            report_skip(test, &format!("cannot turn on kernel.task_delayacct (root?): {e}"));
            return;
        }
    };
    // With the batch wait (min_wait_usec and a timeout) and without it.
    for wait in ["200us", "0"] {
        let e = Engine::start(&["--backend", "uring", "--uring-batch-wait", wait]);
        // The worker is live: a frame cached and NACKed (a MISS would do;
        // a hit proves its receives are armed on both sockets).
        Publisher::new(e.listen_port).send_tx(0x10, 1, b"iowait");
        let body = e.wait_metrics(Duration::from_secs(10), |b| {
            ricochet_e2e::metric_sum(b, "ricochet_frames_cached_total") >= 1.0
        });
        assert!(ricochet_e2e::metric_sum(&body, "ricochet_frames_cached_total") >= 1.0, "{body}");
        let client = nack_client();
        client.send_to(&nack_for(0x10, 1, 0), e.nack_addr()).unwrap();
        assert!(!drain(&client, Duration::from_millis(400)).is_empty(), "no answer");
        // Then it waits, idle: without the flag every tick of this second
        // lands in its block-I/O delay.
        let before = blkio_ticks(e.pid());
        std::thread::sleep(Duration::from_secs(1));
        let after = blkio_ticks(e.pid());
        let workers: Vec<_> = after.iter().filter(|(c, _)| c.starts_with("ricochet-w")).collect();
        assert!(!workers.is_empty(), "no worker thread in {after:?}");
        for (comm, ticks) in workers {
            let was = before.iter().find(|(c, _)| c == comm).map_or(0, |(_, t)| *t);
            assert_eq!(
                ticks - was,
                0,
                "{comm} (--uring-batch-wait {wait}) spent {} ticks of 1 s in I/O wait",
                ticks - was
            );
        }
    }
}
