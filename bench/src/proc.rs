//! Child processes (the engine, baselines, load phases), stop signals, free
//! ports, and finding — or building — the `ricochet` binary.
//!
//! Every child is held by a [`Child`] guard that kills it when dropped, so
//! an early return, a panic (unwinding) or Ctrl-C (which sets [`stopped`]
//! and lets the loops return) never leaves an engine behind. Children are
//! also started with `PR_SET_PDEATHSIG = SIGKILL`, which covers the load
//! generator itself being killed outright.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the stop flag instead of killing the
/// process, so every loop ends cleanly and guards run.
pub fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; the function pointer has the C ABI signal() wants.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether Ctrl-C / SIGTERM arrived.
pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps up to `d`, waking early on stop. Returns false if stopped.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopped() {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    !stopped()
}

/// A free UDP port on 127.0.0.1 (the kernel picks it; it is free when we
/// ask, which is as good as it gets without holding it).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A command line, quoted enough to paste into a shell.
pub fn shell_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts
        .into_iter()
        .map(|p| {
            if p.is_empty()
                || p.contains(|c: char| c.is_whitespace() || "'\"$`\\;&|<>(){}*?".contains(c))
            {
                format!("'{}'", p.replace('\'', r"'\''"))
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running child process, killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    /// The command line that started it.
    pub command: String,
    log: Arc<Mutex<String>>,
}

impl Child {
    /// Spawns `cmd` with stderr captured (kept for error messages) and
    /// stdout discarded or inherited.
    pub fn spawn(name: &str, mut cmd: Command, inherit_stdout: bool) -> std::io::Result<Child> {
        let command = shell_line(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(if inherit_stdout { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::piped());
        // SAFETY: the pre-exec hook runs in the forked child before exec and
        // calls only prctl, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {name} ({command}): {e}"))
        })?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    // Keep the tail only: a chatty child must not grow us.
                    if l.len() > 64 * 1024 {
                        let cut = l.len() - 32 * 1024;
                        let cut =
                            (cut..l.len()).find(|&i| l.is_char_boundary(i)).unwrap_or(l.len());
                        l.drain(..cut);
                    }
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Ok(Child { name: name.to_string(), child, command, log })
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr (the last 32–64 KiB).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        // SAFETY: kill(2) on our own child's pid; at worst ESRCH.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// The child's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Where the engine's admin, data, NACK and egress ports are.
#[derive(Debug, Clone, Copy)]
pub struct EnginePorts {
    /// `--listen-port`: frames are published here.
    pub listen: u16,
    /// `--nack-port`.
    pub nack: u16,
    /// `--egress-port`: multicast retransmits go here.
    pub egress: u16,
    /// `--metrics-addr`.
    pub admin: SocketAddr,
}

impl EnginePorts {
    /// Fresh free ports.
    pub fn pick() -> Self {
        EnginePorts {
            listen: free_udp_port(),
            nack: free_udp_port(),
            egress: free_udp_port(),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port())),
        }
    }

    /// The NACK address.
    pub fn nack_addr(&self) -> std::net::SocketAddrV4 {
        std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.nack)
    }
}

/// The `ricochet run --ipv4-lab …` command for `ports`, with `extra` flags.
pub fn engine_command(bin: &Path, ports: &EnginePorts, extra: &[String]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--ipv4-lab")
        .args(["--listen-port", &ports.listen.to_string()])
        .args(["--nack-port", &ports.nack.to_string()])
        .args(["--egress-port", &ports.egress.to_string()])
        .args(["--metrics-addr", &ports.admin.to_string()])
        .args(extra)
        .env_remove("RUST_LOG");
    cmd
}

/// Starts an engine and waits (up to 20 s) until `/readyz` says 200.
pub fn start_engine(bin: &Path, ports: &EnginePorts, extra: &[String]) -> Result<Child, String> {
    let mut child = Child::spawn("ricochet", engine_command(bin, ports, extra), false)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            return Err(format!("the engine exited at startup ({status}):\n{}", child.log()));
        }
        if matches!(crate::metrics::http_get(ports.admin, "/readyz"), Ok((200, _))) {
            return Ok(child);
        }
        if Instant::now() > deadline || stopped() {
            return Err(format!("the engine was not ready within 20 s:\n{}", child.log()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Finds the engine binary: `explicit` if given; otherwise `ricochet` next
/// to this executable. When running under cargo (the `CARGO` variable is
/// set) and no path was given, builds it first with the profile this
/// executable was built with — cargo decides whether it is stale, so a
/// fresh clone's `cargo run … lab` works in one step.
pub fn find_engine(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "engine binary {} not found; build it with: cargo build --workspace --bins",
                p.display()
            ))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let dir = exe.parent().ok_or("executable has no directory")?;
    let candidate = dir.join("ricochet");
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "ricochet", "--bin", "ricochet"]);
        if release {
            cmd.arg("--release");
        }
        if let Some(target_dir) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        eprintln!("ricochet-loadgen: building the engine: {}", shell_line(&cmd));
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the engine failed ({status})"));
        }
    }
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "engine binary {} not found. Build it with `cargo build --release -p ricochet --bin ricochet` \
             (or `cargo build --workspace --bins` for debug), or pass --engine PATH",
            candidate.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let mut c = Command::new("/bin/x");
        c.args(["run", "--a", "b c", "it's"]);
        assert_eq!(shell_line(&c), r"/bin/x run --a 'b c' 'it'\''s'");
    }

    #[test]
    fn free_ports_are_nonzero_and_children_die_with_their_guard() {
        assert_ne!(free_udp_port(), 0);
        assert_ne!(free_tcp_port(), 0);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut c = Child::spawn("sleep", cmd, false).unwrap();
        assert!(c.try_wait().is_none());
        let status = c.stop(Duration::from_secs(2)).unwrap();
        assert!(!status.success());
    }

    #[test]
    fn a_missing_explicit_engine_says_how_to_build_it() {
        let e = find_engine(Some(Path::new("/nonexistent/ricochet"))).unwrap_err();
        assert!(e.contains("cargo build"), "{e}");
    }
}
