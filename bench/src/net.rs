//! Sockets and batched datagram I/O (sendmmsg/recvmmsg) for the load
//! generator. IPv4 only: the load generator drives the engine's
//! `--ipv4-lab` mapping (groups 239.11.x.y on 127.0.0.1).
//!
//! A [`Batch`] owns `cap` buffers of `size` bytes plus the iovecs, message
//! headers and addresses the kernel needs, allocated once; sending or
//! receiving a batch allocates nothing.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer asked for on every receiving socket (the engine asks the
/// same; the kernel caps both at `net.core.rmem_max`).
pub const RCVBUF: usize = 8 << 20;

/// The lab group address of index `i` on `port`.
pub fn group_addr(index: u16, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ricochet_wire::group::ipv4_lab_group(index), port)
}

/// A UDP socket bound to `bind`.
pub fn udp(bind: SocketAddrV4, nonblocking: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(RCVBUF);
    let _ = s.set_send_buffer_size(RCVBUF);
    s.set_nonblocking(nonblocking)?;
    s.bind(&SocketAddr::V4(bind).into())?;
    Ok(s)
}

/// A socket that multicasts to the lab groups from 127.0.0.1 (loop on, so
/// sockets on this host hear it).
pub fn multicast_sender(nonblocking: bool) -> io::Result<Socket> {
    let s = udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), nonblocking)?;
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
    s.set_multicast_loop_v4(true)?;
    s.set_multicast_ttl_v4(1)?;
    Ok(s)
}

/// A socket bound to `port` on every address, joined to the lab groups
/// `groups` on 127.0.0.1 and nothing else (MULTICAST_ALL off). Reuse flags
/// are set so it can share the port with the engine's ingress sockets.
pub fn group_receiver(port: u16, groups: &[u16], nonblocking: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(RCVBUF);
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_multicast_all_v4(false)?;
    s.set_nonblocking(nonblocking)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    for &g in groups {
        s.join_multicast_v4(&ricochet_wire::group::ipv4_lab_group(g), &Ipv4Addr::LOCALHOST)?;
    }
    Ok(s)
}

/// Sets a receive timeout so blocking receives wake up to check for stop.
pub fn set_read_timeout(s: &Socket, d: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(d))
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)), u16::from_be(sa.sin_port))
}

/// `cap` datagram buffers of `size` bytes with their kernel headers.
pub struct Batch {
    size: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    filled: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("cap", &self.lens.len()).field("size", &self.size).finish()
    }
}

// SAFETY: the raw pointers in `iovs`/`hdrs` point only into this struct's
// own heap buffers and are rebuilt before every syscall; nothing is shared.
unsafe impl Send for Batch {}

impl Batch {
    /// `cap` buffers of `size` bytes.
    pub fn new(cap: usize, size: usize) -> Self {
        let cap = cap.max(1);
        // SAFETY: these libc structs are plain old data; zero is valid for
        // each (null pointers, zero lengths), and every pointer is set
        // before use.
        let (addr, iov, hdr) = unsafe {
            (
                mem::zeroed::<libc::sockaddr_in>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Batch {
            size,
            data: vec![0; cap * size],
            lens: vec![0; cap],
            addrs: vec![addr; cap],
            iovs: vec![iov; cap],
            hdrs: vec![hdr; cap],
            filled: 0,
        }
    }

    /// Buffers in the batch.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Messages staged for sending, or received by the last `recv`.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether nothing is staged / was received.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Forgets staged messages.
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Whether every buffer is staged.
    pub fn is_full(&self) -> bool {
        self.filled == self.capacity()
    }

    /// The next free buffer to write a message into; commit it with
    /// [`Batch::push`].
    pub fn next_buf(&mut self) -> &mut [u8] {
        let i = self.filled;
        &mut self.data[i * self.size..(i + 1) * self.size]
    }

    /// Stages the message just written into [`Batch::next_buf`]: `len` bytes to `dest`.
    pub fn push(&mut self, len: usize, dest: SocketAddrV4) {
        let i = self.filled;
        assert!(i < self.capacity() && len <= self.size, "batch overflow");
        self.lens[i] = len;
        self.addrs[i] = to_sockaddr(dest);
        self.filled += 1;
    }

    /// Stages a copy of `bytes` to `dest`.
    pub fn push_copy(&mut self, bytes: &[u8], dest: SocketAddrV4) {
        self.next_buf()[..bytes.len()].copy_from_slice(bytes);
        self.push(bytes.len(), dest);
    }

    /// Message `i` of the last receive (or staged): bytes and peer address.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        (&self.data[i * self.size..i * self.size + self.lens[i]], from_sockaddr(&self.addrs[i]))
    }

    fn prepare(&mut self, count: usize, for_recv: bool) {
        let base = self.data.as_mut_ptr();
        for i in 0..count {
            let len = if for_recv { self.size } else { self.lens[i] };
            // SAFETY: i < cap, so the offset stays inside `data`.
            self.iovs[i].iov_base = unsafe { base.add(i * self.size) }.cast();
            self.iovs[i].iov_len = len;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Sends the staged messages from `fd`, retrying partial sends; returns
    /// how many went. The batch is cleared either way. `WouldBlock` (a
    /// non-blocking socket whose buffer is full) returns what went so far.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let count = self.filled;
        self.prepare(count, false);
        let mut done = 0;
        while done < count {
            // SAFETY: hdrs[done..count] were just prepared and point into
            // buffers owned by self, which outlive the call.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(done), (count - done) as u32, 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock if done > 0 => break,
                    _ => {
                        self.filled = 0;
                        return if done > 0 { Ok(done) } else { Err(e) };
                    }
                }
            }
            done += n as usize;
        }
        self.filled = 0;
        Ok(done)
    }

    /// Receives up to `cap` datagrams without blocking (or blocking until the
    /// socket's read timeout with `block`). Returns how many; 0 means none
    /// were waiting.
    pub fn recv(&mut self, fd: RawFd, block: bool) -> io::Result<usize> {
        let cap = self.capacity();
        self.prepare(cap, true);
        let flags = if block { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: every header was just prepared and points into buffers
            // owned by self.
            let n = unsafe {
                libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), cap as u32, flags, std::ptr::null_mut())
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        self.filled = 0;
                        return Ok(0);
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            for i in 0..n {
                self.lens[i] = self.hdrs[i].msg_len as usize;
            }
            self.filled = n;
            return Ok(n);
        }
    }
}

/// Waits until one of `fds` is readable or `timeout_ns` passes (0 = just
/// look). Returns how many are ready; `revents` says which.
pub fn poll(fds: &mut [libc::pollfd], timeout_ns: u64) -> io::Result<usize> {
    for p in fds.iter_mut() {
        p.revents = 0;
    }
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: fds is a valid, exclusively borrowed pollfd array of the given
    // length; ts lives for the call; a null sigmask means "unchanged".
    let n =
        unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    Ok(n as usize)
}

/// A pollfd asking for readability of `s`.
pub fn pollfd(s: &impl AsRawFd) -> libc::pollfd {
    libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it (bounded
    // by CPU_SETSIZE, checked below) and sched_setaffinity reads it.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU index too large"));
        }
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::other(format!(
                "cannot pin to CPU {cpu}: {}",
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// The machine-wide UDP counters from /proc/net/snmp (InDatagrams,
/// NoPorts, InErrors, OutDatagrams, RcvbufErrors, SndbufErrors), to account
/// for datagrams the kernel dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams for a port nobody listens on.
    pub no_ports: u64,
    /// Receive errors (includes buffer overflows).
    pub in_errors: u64,
    /// Datagrams sent.
    pub out_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Sends refused for a full send buffer.
    pub sndbuf_errors: u64,
}

impl UdpCounters {
    /// Reads the counters now (zeros if /proc is unreadable).
    pub fn read() -> Self {
        let Ok(text) = std::fs::read_to_string("/proc/net/snmp") else { return Self::default() };
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Self::default();
        };
        let get = |name: &str| -> u64 {
            names
                .split_whitespace()
                .position(|n| n == name)
                .and_then(|i| values.split_whitespace().nth(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        UdpCounters {
            in_datagrams: get("InDatagrams"),
            no_ports: get("NoPorts"),
            in_errors: get("InErrors"),
            out_datagrams: get("OutDatagrams"),
            rcvbuf_errors: get("RcvbufErrors"),
            sndbuf_errors: get("SndbufErrors"),
        }
    }

    /// `self − earlier`, field by field.
    pub fn since(&self, earlier: &Self) -> Self {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(earlier.in_datagrams),
            no_ports: self.no_ports.saturating_sub(earlier.no_ports),
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
            out_datagrams: self.out_datagrams.saturating_sub(earlier.out_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(earlier.sndbuf_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_over_loopback() {
        let rx = udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        set_read_timeout(&rx, Duration::from_secs(2)).unwrap();
        let to = match rx.local_addr().unwrap().as_socket().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let tx = udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false).unwrap();
        let mut b = Batch::new(4, 64);
        for i in 0..3u8 {
            b.push_copy(&[i; 10], to);
        }
        assert_eq!(b.send(tx.as_raw_fd()).unwrap(), 3);
        assert!(b.is_empty());
        let mut r = Batch::new(8, 64);
        let mut got = vec![];
        while got.len() < 3 {
            let n = r.recv(rx.as_raw_fd(), true).unwrap();
            for i in 0..n {
                got.push(r.get(i).0.to_vec());
            }
        }
        assert_eq!(got, vec![vec![0; 10], vec![1; 10], vec![2; 10]]);
        assert_eq!(r.recv(rx.as_raw_fd(), false).unwrap(), 0);
    }

    #[test]
    fn udp_counters_parse() {
        let c = UdpCounters::read();
        assert_eq!(c.since(&c), UdpCounters::default());
    }
}
