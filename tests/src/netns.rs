//! Network namespaces for the tests that need their own links: IPv6
//! multicast on veth pairs, routed hops, per-namespace `/etc/hosts`.
//!
//! [`Netns::create`] makes a namespace named after this test process and a
//! per-process counter (so parallel tests and concurrent test binaries never
//! share one), with `lo` up and nothing else; the test adds veth pairs,
//! addresses and routes with the methods below. The namespace and its
//! `/etc/netns/<name>` directory are removed on drop, also when the test
//! panics.
//!
//! Making a namespace needs root and `ip` (iproute2). When it cannot be
//! made, `create` returns `None` after reporting the test as skipped (see
//! [`crate::report_skip`]) — except under CI (`CI` set, as `.ci/run` does)
//! as root, where the environment promises namespaces and their absence
//! fails the test.

use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One source filter from `/proc/net/mcfilter6`:
/// `(interface, group, source, include count)`.
pub type McFilter = (String, Ipv6Addr, Ipv6Addr, u32);

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A fresh namespace with `lo` up, for the test named `test` (the
    /// function name; the skip report adds the test binary's). `None` when
    /// namespaces cannot be made here, after reporting the skip; panics
    /// instead under CI as root.
    pub fn create(test: &str) -> Option<Netns> {
        let root = nix::unistd::Uid::effective().is_root();
        let has_ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
        if !root || !has_ip {
            let missing = match (root, has_ip) {
                (false, false) => "root and iproute2 (`ip`)",
                (false, true) => "root",
                _ => "iproute2 (`ip`; apt-get install iproute2)",
            };
            return cannot_make(test, &format!("a network namespace needs {missing}"));
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns =
            Netns { name: format!("ricochet-{}-{}-{n}", crate::test_binary(), std::process::id()) };
        // Left over from an earlier process with this pid that was killed.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let out = Command::new("ip").args(["netns", "add", &ns.name]).output().expect("run ip");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return cannot_make(test, &format!("ip netns add failed: {}", err.trim()));
        }
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Its name, for `ip netns exec` and `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args…`; a failure fails the test.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(["-n", &self.name]).args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A veth pair `a` – `b` inside the namespace, both ends up with
    /// multicast on.
    pub fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.up(a);
        self.up(b);
    }

    /// A veth pair from `a` here to `b` in `other`, both ends up.
    pub fn veth_to(&self, a: &str, other: &Netns, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b, "netns", &other.name]);
        self.up(a);
        other.up(b);
    }

    fn up(&self, dev: &str) {
        self.ip(&["link", "set", dev, "up", "multicast", "on"]);
    }

    /// Adds `cidr` (`fd00::1/64`) to `dev`, usable at once (`nodad`).
    pub fn addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
    }

    /// Adds `cidr` to `dev` deprecated (`preferred_lft 0`): bindable, but
    /// never chosen by the kernel as a source by itself.
    pub fn deprecated_addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev, "nodad", "preferred_lft", "0"]);
    }

    /// An IPv6 route to `prefix` via `gateway` on `dev`.
    pub fn route6(&self, prefix: &str, gateway: &str, dev: &str) {
        self.ip(&["-6", "route", "add", prefix, "via", gateway, "dev", dev]);
    }

    /// `/etc/netns/<ns>`: files here replace their `/etc` namesakes for
    /// processes started through [`Netns::exec`].
    pub fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Writes the namespace's hosts file (localhost lines, then `text`) in
    /// place: same inode, so the bind mount a running process sees follows
    /// it.
    pub fn write_hosts(&self, text: &str) {
        std::fs::create_dir_all(self.etc()).expect("create /etc/netns/<ns>");
        std::fs::write(
            self.etc().join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{text}"),
        )
        .expect("write hosts");
    }

    /// The prefix that runs a command inside the namespace (with its
    /// `/etc/netns/<ns>` files), for [`crate::Engine::launch`].
    pub fn exec(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// opens (also once handed back to another thread) and processes it
    /// spawns belong to the namespace. A panic in `f` is the caller's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The kernel's IPv6 source filters in the namespace.
    pub fn mcfilter6(&self) -> Vec<McFilter> {
        let hex = |s: &str| u128::from_str_radix(s, 16).map(Ipv6Addr::from).ok();
        self.proc_net("mcfilter6")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f[..] {
                    [_, dev, group, source, inc, _] => {
                        Some((dev.to_owned(), hex(group)?, hex(source)?, inc.parse().ok()?))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// The IPv6 groups joined on `dev` in the namespace (`/proc/net/igmp6`).
    pub fn joined6(&self, dev: &str) -> Vec<Ipv6Addr> {
        self.proc_net("igmp6")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&dev))
                    .then(|| u128::from_str_radix(f.get(2)?, 16).ok().map(Ipv6Addr::from))
                    .flatten()
            })
            .collect()
    }

    /// `/proc/net/<file>` as the namespace sees it.
    fn proc_net(&self, file: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", &format!("/proc/net/{file}")])
            .output()
            .unwrap_or_else(|e| panic!("read /proc/net/{file}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// A namespace cannot be made: a skip, or under CI as root a failure.
fn cannot_make(test: &str, reason: &str) -> Option<Netns> {
    let root = nix::unistd::Uid::effective().is_root();
    assert!(
        !(crate::in_ci() && root),
        "{test}: {reason}; under CI as root network namespaces must work \
         (unset CI to let the test skip instead)"
    );
    crate::report_skip(test, reason);
    None
}
