//! Harness for end-to-end tests: start real `ricochet` processes on
//! loopback, publish real multicast frames, send real NACKs, scrape real
//! `/metrics`.
//!
//! Binaries are taken from the cargo target directory of this build
//! (`scripts/test.sh` builds them before the tests run); a missing binary
//! fails the test with the command that builds it.
//!
//! Every test picks its own ports from a per-process counter, so tests run
//! in parallel without hearing each other (multicast on loopback is shared
//! by group, but delivery is per port).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use ricochet_wire::frame::{Extra, FrameRepr, FrameVersion};
use socket2::{Domain, Protocol, Socket, Type};

pub mod netns;

/// Env var naming the file skipped tests append to; `scripts/test.sh` sets
/// it and prints each line in its summary.
pub const SKIPS_ENV: &str = "RICOCHET_E2E_SKIPS";

/// Reports that `test` (a test function's name) did not run and why: a
/// line `binary::test: reason` on stderr and appended to the file named by
/// [`SKIPS_ENV`], when set. The test then returns, so the harness counts
/// it as passed; the report is what keeps the skip from being silent.
pub fn report_skip(test: &str, reason: &str) {
    let line = format!("{}::{test}: {reason}\n", test_binary());
    eprint!("SKIPPED: {line}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        // One write of one short line: O_APPEND keeps parallel tests'
        // lines whole.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("{SKIPS_ENV}={}: cannot record the skip: {e}", path.to_string_lossy());
        }
    }
}

/// Whether the running kernel is Linux `major.minor` or newer (from
/// `/proc/sys/kernel/osrelease`; unreadable counts as older).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

/// Whether this runs under CI: `CI` set to anything but empty, `0` or
/// `false` (`.ci/run` sets `CI=1`; hosted CI sets `CI=true`).
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The name of this test binary (`ipv6_netns` for
/// `target/debug/deps/ipv6_netns-0123abcd`).
pub(crate) fn test_binary() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(|p| p.file_stem()).and_then(|s| s.to_str());
    let stem = stem.unwrap_or("e2e");
    stem.rsplit_once('-').map_or(stem, |(name, _hash)| name).to_owned()
}

/// Path of a workspace binary built for this profile.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first: cargo build --workspace --bins",
        path.display()
    );
    path
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Test ports start here, above the well-known defaults (Redis 6379,
/// gossip 9310) the tests never use.
const TEST_PORT_LOW: u16 = 10_000;
/// Ports per test process: 125 calls of [`ports`] before it wraps.
const TEST_PORT_STRIDE: u16 = 1_000;
/// Ports per call of [`ports`]: the named ones of [`Ports`] and one spare.
const PORT_BLOCK: u16 = 8;

/// First port of the kernel's ephemeral range (`ip_local_port_range`).
/// Test ports stay below it: a socket bound to port 0 anywhere on the
/// machine — a NACK client of a parallel test, an engine's upstream
/// socket, a benchmark — may otherwise hold a port an engine is about to
/// bind, and the engine fails with EADDRINUSE.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// One endpoint's ports by role, from [`ports`]. A test that moves one
/// (siblings sharing a data port) writes `Ports { egress: b.listen, ..p }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Data port (`--listen-port`).
    pub listen: u16,
    /// NACK port (`--nack-port`); [`Engine::launch`] sends ADVERTs here
    /// too (`--beacon-port`).
    pub nack: u16,
    /// Admin HTTP port (`--metrics-addr`).
    pub admin: u16,
    /// Where retransmits are sent (`--egress-port`).
    pub egress: u16,
    /// Cluster gossip port (`--gossip-port`), for tests that pass it.
    pub gossip: u16,
    /// A beacon port for tests that set `--beacon-port` themselves.
    pub beacon: u16,
    /// DHT port (`--dht-port`), for tests that pass it.
    pub dht: u16,
}

impl Ports {
    /// The admin address on IPv4 loopback.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin))
    }
}

/// A block of ports unique to this test process and call, below the
/// ephemeral range, by role.
pub fn ports() -> Ports {
    let high = ephemeral_low().max(TEST_PORT_LOW + TEST_PORT_STRIDE);
    let slots = u32::from((high - TEST_PORT_LOW) / TEST_PORT_STRIDE);
    // Spread test processes by pid so concurrent test binaries differ too.
    let slot = (std::process::id() % slots) as u16;
    let base = TEST_PORT_LOW + slot * TEST_PORT_STRIDE;
    let k = NEXT_PORT.fetch_add(PORT_BLOCK, Ordering::Relaxed) % TEST_PORT_STRIDE;
    let port = |i: u16| base + k + i;
    Ports {
        listen: port(0),
        nack: port(1),
        admin: port(2),
        egress: port(3),
        gossip: port(4),
        beacon: port(5),
        dht: port(6),
    }
}

/// A running ricochet process, killed on drop.
#[derive(Debug)]
pub struct Engine {
    child: Child,
    /// Data port it listens on.
    pub listen_port: u16,
    /// NACK port.
    pub nack_port: u16,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Port retransmits are sent to.
    pub egress_port: u16,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Engine {
    /// Starts `ricochet run --ipv4-lab` on fresh ports with `extra` args and
    /// waits until `/readyz` answers 200.
    pub fn start(extra: &[&str]) -> Engine {
        let p = ports();
        let admin = p.admin_addr();
        let mut args: Vec<String> = vec!["--ipv4-lab".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Engine::launch(&[], &args, p, admin)
    }

    /// Starts `ricochet run --ipv4-lab` like [`Engine::start`] but on the
    /// ports of `p` (from [`ports`]), so a test can stop an endpoint and
    /// start it again at the same addresses.
    pub fn start_on(p: Ports, extra: &[&str]) -> Engine {
        let admin = p.admin_addr();
        let mut args: Vec<String> = vec!["--ipv4-lab".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Engine::launch(&[], &args, p, admin)
    }

    /// Starts `prefix… ricochet run args…` (e.g. `ip netns exec NS`) with
    /// the listen, NACK and egress ports of `p` and the admin server on
    /// `admin`, and waits for `/readyz`. The caller must be able to reach
    /// `admin` (same network namespace).
    pub fn launch(prefix: &[&str], args: &[String], p: Ports, admin: SocketAddr) -> Engine {
        let Ports { listen, nack, egress, .. } = p;
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("ricochet"));
                c
            }
            None => Command::new(bin("ricochet")),
        };
        cmd.arg("run")
            .args(["--listen-port", &listen.to_string()])
            .args(["--nack-port", &nack.to_string()])
            .args(["--egress-port", &egress.to_string()])
            .args(["--metrics-addr", &admin.to_string()])
            .args(["--beacon-interval", "1s"])
            // ADVERTs to this test's own port: the default, 9300, is shared
            // by every endpoint on the host.
            .args(["--beacon-port", &nack.to_string()])
            // The tests read /debug/* without a token.
            .arg("--debug-public")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ricochet");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        let mut e = Engine {
            child,
            listen_port: listen,
            nack_port: nack,
            admin,
            egress_port: egress,
            log: Some(log),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = e.child.try_wait().expect("try_wait") {
                panic!("ricochet exited early ({status}):\n{}", e.logs());
            }
            if matches!(e.http("/readyz"), Ok((200, _))) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "ricochet not ready in 20 s:\n{}",
                e.kill_and_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (for `/proc/PID/…`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// NACK destination.
    pub fn nack_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.nack_port))
    }

    /// GET `path` on the admin port: (status, body).
    pub fn http(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin, path)
    }

    /// The value of one metric line (exact name with labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics").ok()?;
        metric_value(&body, series)
    }

    /// Sum of a metric over every label set.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let Ok((_, body)) = self.http("/metrics") else { return 0.0 };
        metric_sum(&body, name)
    }

    /// Polls until `cond(metrics body)` holds or `timeout` passes.
    pub fn wait_metrics(&self, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self.http("/metrics").map(|(_, b)| b).unwrap_or_default();
            if cond(&body) || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends the signal `name` (`STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let _ =
            Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY-free: use the `kill` command rather than libc.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process and returns everything it logged.
    pub fn kill_and_logs(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }

    fn logs(&mut self) -> String {
        self.log.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over HTTP/1.1 (no client dependency needed for this).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// One HTTP/1.1 request, optionally with a bearer token: (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The value of an exact series (`name{labels}`) in Prometheus text.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.rsplit_once(' ').filter(|(k, _)| *k == series).and_then(|(_, v)| v.parse().ok())
    })
}

/// The sum of every series of metric `name`.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A publisher of BRC-124 frames to the IPv4 lab groups on loopback.
#[derive(Debug)]
pub struct Publisher {
    sock: UdpSocket,
    port: u16,
}

impl Publisher {
    /// A publisher sending to `port` from 127.0.0.1.
    pub fn new(port: u16) -> Publisher {
        Publisher::from_address(Ipv4Addr::LOCALHOST, port)
    }

    /// A publisher sending to `port` from `source`, another loopback
    /// address (127.0.0.2, …) standing for another host on the fabric.
    pub fn from_address(source: Ipv4Addr, port: u16) -> Publisher {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        s.set_multicast_loop_v4(true).unwrap();
        s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        Publisher { sock: s.into(), port }
    }

    /// Sends a raw datagram to group `index`.
    pub fn send_raw(&self, index: u16, bytes: &[u8]) {
        let to = SocketAddr::from((ricochet_wire::group::ipv4_lab_group(index), self.port));
        self.sock.send_to(bytes, to).expect("publish");
    }

    /// Sends a transaction frame on the shard group its TxID maps to (2
    /// shard bits) and returns its bytes and group.
    pub fn send_tx(&self, hash_key: u64, seq: u64, payload: &[u8]) -> (Vec<u8>, u16) {
        let bytes = tx_frame(hash_key, seq, payload);
        let id: [u8; 32] = bytes[8..40].try_into().unwrap();
        let group = ricochet_wire::group::shard_index(&id, 2).unwrap();
        self.send_raw(group, &bytes);
        (bytes, group)
    }
}

/// A transaction frame whose TxID derives from `(hash_key, seq)`.
pub fn tx_frame(hash_key: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&hash_key.to_be_bytes());
    id[8..16].copy_from_slice(&seq.to_be_bytes());
    id[0] = (seq as u8).wrapping_mul(0x45); // spread over shard groups
    let repr = FrameRepr {
        version: FrameVersion::Tx,
        byte7: 0,
        id,
        hash_key,
        seq,
        subtree_id: [0x20; 32],
        extra: Extra::None,
        payload,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).unwrap();
    buf
}

/// A DHT message from `sender`, encoded.
pub fn dht_msg(txid: u64, sender: [u8; 32], body: ricochet_wire::dht::BodyRepr<'_>) -> Vec<u8> {
    let m = ricochet_wire::dht::MessageRepr { transaction_id: txid, sender, body };
    let mut buf = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// A listener socket joined to lab group `index` on `port`, to observe
/// multicast retransmits.
pub fn group_listener(index: u16, port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_multicast_all_v4(false).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into()).unwrap();
    s.join_multicast_v4(&ricochet_wire::group::ipv4_lab_group(index), &Ipv4Addr::LOCALHOST)
        .unwrap();
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    u
}

/// A NACK client on an ephemeral loopback port.
pub fn nack_client() -> UdpSocket {
    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    u
}

/// Receives datagrams until `timeout` of silence; returns them all.
pub fn drain(sock: &UdpSocket, timeout: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65_536];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// A single-SeqNum NACK for `hash_key` with `flags` (0x01 = Proxied) and
/// SubtreeID 0x20….
pub fn nack_for(hash_key: u64, seq: u64, flags: u8) -> [u8; 64] {
    let mut b = [0u8; 64];
    ricochet_wire::control::NackRepr {
        flags: ricochet_wire::control::NackFlags(flags),
        hash_key,
        start_seq: seq,
        end_seq: seq,
        subtree_id: [0x20; 32],
    }
    .emit(&mut b)
    .unwrap();
    b
}

/// A lossy bridge between two loopback lab domains: joins shard groups
/// 0–3 and the block group on `a_port` and forwards every frame to the same
/// group on `b_port`, except every `drop_every`-th SeqNum. Returns the
/// dropped SeqNums once `expect` frames have passed (or 10 s elapse).
pub fn bridge(
    a_port: u16,
    b_port: u16,
    expect: u64,
    drop_every: u64,
) -> std::thread::JoinHandle<std::collections::BTreeSet<u64>> {
    let listeners: Vec<UdpSocket> =
        (0..4).chain([0xFFFE]).map(|g| group_listener(g, a_port)).collect();
    let out = Publisher::new(b_port);
    std::thread::spawn(move || {
        let mut dropped = std::collections::BTreeSet::new();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 65_536];
        for l in &listeners {
            l.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        }
        while seen < expect && Instant::now() < deadline {
            for l in &listeners {
                while let Ok((n, _)) = l.recv_from(&mut buf) {
                    let Ok(f) = ricochet_wire::frame::Frame::new_checked(&buf[..n]) else {
                        continue;
                    };
                    seen += 1;
                    let group = ricochet_wire::group::shard_index(f.id(), 2).unwrap();
                    if f.seq() % drop_every == 0 {
                        dropped.insert(f.seq());
                    } else {
                        out.send_raw(group, &buf[..n]);
                    }
                }
            }
        }
        dropped
    })
}

/// Two loopback lab domains joined by a lossy [`bridge`], as the sibling
/// tests build them: a publisher and an upstream endpoint in domain A,
/// sibling endpoints on domain B's data port (each with its own NACK and
/// admin port), and listeners on B's shard groups that count every copy of
/// every frame of `flow` they see.
#[derive(Debug)]
pub struct SiblingDomain {
    /// Domain A's endpoint: the siblings' upstream.
    pub upstream: Engine,
    /// Domain B's endpoints.
    pub siblings: Vec<Engine>,
    /// B's data port (the siblings' listen and egress port).
    pub b_port: u16,
    /// Publishes into A.
    pub publisher: Publisher,
    /// The flow every frame belongs to.
    pub flow: u64,
    /// Copies of each SeqNum seen on B's groups.
    pub copies: std::collections::BTreeMap<u64, u32>,
    listeners: Vec<UdpSocket>,
}

impl SiblingDomain {
    /// Listens on B's groups 0–3 at `b_port` and publishes into
    /// `upstream`'s domain.
    pub fn new(upstream: Engine, siblings: Vec<Engine>, b_port: u16, flow: u64) -> SiblingDomain {
        let listeners = (0..4).map(|g| group_listener(g, b_port)).collect();
        let publisher = Publisher::new(upstream.listen_port);
        SiblingDomain {
            upstream,
            siblings,
            b_port,
            publisher,
            flow,
            copies: Default::default(),
            listeners,
        }
    }

    /// Counts what B's listeners have received since the last call.
    pub fn collect(&mut self) {
        for l in &self.listeners {
            for d in drain(l, Duration::from_millis(30)) {
                if let Ok(f) = ricochet_wire::frame::Frame::new_checked(&d)
                    && f.hash_key() == self.flow
                {
                    *self.copies.entry(f.seq()).or_default() += 1;
                }
            }
        }
    }

    /// `metric` summed over every sibling.
    pub fn sum(&self, metric: &str) -> f64 {
        self.siblings.iter().map(|e| e.metric_sum(metric)).sum()
    }

    /// Waits up to `timeout` until `cond` holds on every sibling; fails
    /// naming `what`, with `diagnose`'s text of the state.
    pub fn wait_siblings(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Engine) -> bool,
        diagnose: impl Fn(&[Engine]) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !self.siblings.iter().all(&cond) {
            assert!(
                Instant::now() < deadline,
                "siblings never reached: {what}\n{}",
                diagnose(&self.siblings)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes SeqNums `first..first + batch` through a bridge dropping
    /// every `drop_every`-th, waits until B's listeners have the rest, and
    /// returns the gaps they see (asserted to be the bridge's drops).
    pub fn publish(&mut self, first: u64, batch: u64, drop_every: u64) -> Vec<u64> {
        let bridge = bridge(self.upstream.listen_port, self.b_port, batch, drop_every);
        for seq in first..first + batch {
            self.publisher.send_tx(self.flow, seq, &seq.to_be_bytes());
        }
        let dropped = bridge.join().unwrap();
        let forwarded = batch - dropped.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.collect();
            let seen = (first..first + batch).filter(|s| self.copies.contains_key(s)).count();
            if seen as u64 >= forwarded || Instant::now() > deadline {
                break;
            }
        }
        let gaps: Vec<u64> =
            (first..first + batch).filter(|s| !self.copies.contains_key(s)).collect();
        assert_eq!(gaps, dropped.iter().copied().collect::<Vec<_>>(), "gaps are the drops");
        gaps
    }

    /// NACKs every gap to every sibling at once, waits until every gap has
    /// arrived on B's groups, then until `idle` holds on every sibling (so
    /// every retransmit there will be has been sent), and counts once more.
    pub fn nack_all(&mut self, gaps: &[u64], idle: impl Fn(&Engine) -> bool) {
        let client = nack_client();
        for &seq in gaps {
            for s in &self.siblings {
                client.send_to(&nack_for(self.flow, seq, 0), s.nack_addr()).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while gaps.iter().any(|s| !self.copies.contains_key(s)) {
            assert!(
                Instant::now() < deadline,
                "unfilled gaps {:?}",
                gaps.iter().filter(|s| !self.copies.contains_key(s)).collect::<Vec<_>>()
            );
            self.collect();
        }
        self.wait_siblings("idle", Duration::from_secs(15), idle, |_| String::new());
        self.collect();
    }

    /// Copies seen of each of `gaps`.
    pub fn copies_of(&self, gaps: &[u64]) -> Vec<u32> {
        gaps.iter().map(|s| self.copies.get(s).copied().unwrap_or(0)).collect()
    }
}

/// A real `redis-server` on a loopback port, stopped on drop.
/// `scripts/test.sh` installs it; a missing binary fails the test with the
/// command that installs it.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a fresh port and waits until it answers PING.
    pub fn start() -> RedisServer {
        // Any port of a fresh block is this server's alone.
        let port = ports().listen;
        let mut r = RedisServer { child: None, port };
        r.restart();
        r
    }

    /// `host:port` for `--redis-addr`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found; install it: apt-get install -y redis-server (scripts/test.sh does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: a crash, not a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
