//! The reference's invocation: the bare binary (no subcommand), configured
//! by env vars only (an env-only Helm chart) or by single-dash flags (a
//! systemd unit); its `/healthz` and `/readyz` JSON; unknown flags; logs
//! without colour on a pipe, with the instance id on every line; SIGHUP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ricochet_e2e::{bin, ports};

/// `ricochet` started with no subcommand, its stderr collected as it comes.
struct Bare {
    child: Child,
    admin: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    /// Spawns `ricochet args…` with `env` (and no `RUST_LOG`, `NO_COLOR`
    /// or `LOG_LEVEL` of the test's own), and waits for `/readyz` 200.
    fn start(args: &[String], env: &[(&str, String)], admin: SocketAddr) -> Bare {
        let mut cmd = Command::new(bin("ricochet"));
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("LOG_LEVEL")
            .env_remove("DEBUG")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ricochet");
        let mut pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut b = Bare { child, admin, stderr, reader: Some(reader) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = b.child.try_wait().expect("try_wait") {
                panic!("ricochet exited early ({status}):\n{}", b.log());
            }
            if matches!(get(admin, "/readyz"), Ok((200, _, _))) {
                return b;
            }
            assert!(Instant::now() < deadline, "not ready in 20 s:\n{}", b.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Polls the log until it contains `text`.
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and the whole log.
    fn stop(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader");
        }
        (status, self.stderr.lock().unwrap().clone())
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path`: (status, Content-Type, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// The raw JSON value of `key` in a flat object (`{"a":1,"b":"x"}`).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let rest = json.split_once(&format!("\"{key}\":"))?.1;
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn run(args: &[&str]) -> Output {
    Command::new(bin("ricochet"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ricochet")
}

/// Env vars only, no subcommand, as an env-only Helm chart starts it.
/// `RUST_LOG` applies because the log level was left at its default.
#[test]
fn bare_binary_configured_by_env_only() {
    let p = ports();
    let env = [
        ("RICOCHET_IPV4_LAB", "true".to_string()),
        ("LISTEN_PORT", p.listen.to_string()),
        ("NACK_PORT", p.nack.to_string()),
        ("EGRESS_PORT", p.egress.to_string()),
        ("METRICS_ADDR", p.admin_addr().to_string()),
        ("BEACON_INTERVAL", "1s".to_string()),
        ("INSTANCE_ID", "e2e-env".to_string()),
        ("RUST_LOG", "error".to_string()),
    ];
    let e = Bare::start(&[], &env, p.admin_addr());

    let (code, content_type, body) = get(e.admin, "/healthz").unwrap();
    assert_eq!((code, content_type.as_str()), (200, "application/json"), "{body}");
    assert_eq!(field(&body, "status"), Some("\"ok\""), "{body}");
    let uptime = field(&body, "uptime_seconds").expect("uptime_seconds");
    let (whole, tenths) = uptime.split_once('.').expect("a float");
    assert!(whole.parse::<u64>().is_ok() && tenths.len() == 1, "one decimal: {body}");

    let (code, content_type, body) = get(e.admin, "/readyz").unwrap();
    assert_eq!((code, content_type.as_str()), (200, "application/json"), "{body}");
    assert_eq!(field(&body, "status"), Some("\"ready\""), "{body}");
    let ready: usize = field(&body, "workers_ready").unwrap().parse().unwrap();
    let total: usize = field(&body, "workers_total").unwrap().parse().unwrap();
    assert!(total > 0 && ready == total, "{body}");

    // SIGHUP flips debug logging and leaves the endpoint serving.
    e.signal("HUP");
    e.wait_log("log level now debug");
    assert_eq!(get(e.admin, "/healthz").unwrap().0, 200);
    e.signal("HUP");
    e.wait_log("log level now error");
    assert_eq!(get(e.admin, "/readyz").unwrap().0, 200);

    let (status, log) = e.stop();
    let log = String::from_utf8(log).expect("UTF-8 log");
    assert!(status.success(), "{status}:\n{log}");
    assert!(!log.contains("ricochet serving"), "RUST_LOG=error applies:\n{log}");
    assert!(!log.contains('\x1b'), "no ANSI escapes on a pipe:\n{log}");
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        assert!(line.ends_with(" instance=e2e-env"), "{line}");
    }
}

/// Single-dash flags and one `--flag=value`, no subcommand, as a systemd
/// unit starts the reference. An explicit log level beats `RUST_LOG`.
#[test]
fn bare_binary_takes_go_flags() {
    let p = ports();
    let args: Vec<String> = [
        "-ipv4-lab".to_string(),
        "-listen-port".into(),
        p.listen.to_string(),
        format!("-nack-port={}", p.nack),
        "--egress-port".into(),
        p.egress.to_string(),
        format!("--metrics-addr={}", p.admin_addr()),
        "-beacon-interval".into(),
        "1s".into(),
        "-log-level".into(),
        "info".into(),
        "-instance".into(),
        "e2e-flags".into(),
    ]
    .into();
    let e = Bare::start(&args, &[("RUST_LOG", "error".to_string())], p.admin_addr());
    let (_, _, body) = get(e.admin, "/readyz").unwrap();
    let total = field(&body, "workers_total").unwrap().to_string();
    let (status, log) = e.stop();
    let log = String::from_utf8(log).expect("UTF-8 log");
    assert!(status.success(), "{status}:\n{log}");
    assert!(!log.contains('\x1b'), "no ANSI escapes on a pipe:\n{log}");
    let serving = log
        .lines()
        .find(|l| l.contains("ricochet serving"))
        .unwrap_or_else(|| panic!("-log-level info beats RUST_LOG=error; no startup line:\n{log}"));
    for want in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        "backend=".into(),
        format!("workers={total}"),
        "cpus=".into(),
        "shard_bits=2".into(),
        "scope=\"site\"".into(),
        "source_mode=\"asm\"".into(),
        format!("listen_port={}", p.listen),
        format!("nack_port={}", p.nack),
        format!("egress_port={}", p.egress),
        "nack_bind=".into(),
        format!("nack_advertised=[::ffff:127.0.0.1]:{}", p.nack),
        "shard_groups=\"239.11.0.0..239.11.0.3 (4 groups)\"".into(),
        "groups_joined=".into(),
        "cache_backend=\"memory\"".into(),
        format!("metrics_addr={}", p.admin_addr()),
        "instance=e2e-flags".into(),
    ] {
        assert!(serving.contains(&want), "no {want} in:\n{serving}");
    }
}

#[test]
fn an_unknown_flag_is_named_in_full_and_exits_2() {
    let out = run(&["-no-such-flag"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown flag -no-such-flag"), "{stderr}");
    assert!(!stderr.contains("'-n'"), "{stderr}");

    let out = run(&["--nack-prot=9300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown flag --nack-prot (did you mean --nack-port?)"), "{stderr}");
}

#[test]
fn help_version_and_check_config_still_answer() {
    for args in [&["--help"][..], &["-h"], &["-help"], &["help"], &["-V"], &["--version"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = run(&["check-config", "-ipv4-lab", "-nack-port", "9333"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("nack_port = 9333  # flag"), "{stdout}");
}

#[test]
fn what_the_host_cannot_provide_is_a_configuration_error() {
    // No such egress interface: refused at startup, as the reference
    // refuses it, naming the flag.
    let out = run(&["-mc-iface", "lo", "-nack-addr", "::1", "-egress-iface", "lo,nosuch0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--egress-iface (EGRESS_IFACE)") && err.contains("\"nosuch0\" not found"),
        "{err}"
    );
    // No NACK address given and none to find on the first egress interface
    // (loopback has no global address): refused with the fix.
    let out = run(&["-mc-iface", "lo", "-egress-iface", "lo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--nack-addr (NACK_ADDR) is not set") && err.contains("set --nack-addr"),
        "{err}"
    );
}
