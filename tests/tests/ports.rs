//! A second endpoint on the same host does not silently join the first's
//! NACK port (SO_REUSEPORT would let it take a share of its NACKs): it is
//! refused at startup, naming the port. The data port is shared on purpose:
//! multicast reaches every socket joined on it.

use std::process::{Command, Stdio};

use ricochet_e2e::{Engine, Ports, bin, ports};

fn second(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(bin("ricochet"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run ricochet");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_second_endpoint_on_the_same_nack_port_is_refused() {
    let first = Engine::start(&[]);
    let p = ports();
    let args = |listen: u16, nack: u16| -> Vec<String> {
        [
            "--ipv4-lab".to_string(),
            format!("--listen-port={listen}"),
            format!("--nack-port={nack}"),
            format!("--metrics-addr=127.0.0.1:{}", p.admin),
            format!("--beacon-port={}", p.beacon),
        ]
        .to_vec()
    };
    // The same NACK port: refused, naming it.
    let (code, err) = second(&args(p.listen, first.nack_port));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("--nack-port (NACK_PORT) = {}", first.nack_port)), "{err}");
    // The first is untouched and still serves.
    assert_eq!(first.http("/readyz").map(|(s, _)| s).unwrap_or(0), 200);
    // The same data port is shared: siblings on one host each get every
    // multicast frame.
    let beside = Engine::start_on(Ports { listen: first.listen_port, ..p }, &[]);
    assert_eq!(beside.http("/readyz").map(|(s, _)| s).unwrap_or(0), 200);
}

/// A supervisor restarts an endpoint the moment the old one is reaped; the
/// kernel may still be tearing the old process's io_uring instance (and
/// the sockets its pending receives hold) down. The new one waits for the
/// port instead of calling its predecessor a conflict.
#[test]
fn a_restart_on_the_same_ports_takes_them_back_at_once() {
    let p = ports();
    for backend in ["uring", "epoll", "uring", "uring"] {
        let engine = Engine::start_on(p, &["--backend", backend]);
        assert_eq!(engine.http("/readyz").map(|(s, _)| s).unwrap_or(0), 200, "{backend}");
        drop(engine);
    }
}
