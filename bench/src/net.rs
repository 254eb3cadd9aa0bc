//! Sockets and batched datagram I/O (sendmmsg/recvmmsg) for the load
//! generator, IPv4 and IPv6 alike, and BRC-129 group addressing: the
//! engine's `--ipv4-lab` mapping (groups 239.11.x.y on 127.0.0.1) or real
//! IPv6 groups from (source mode, scope, group id) on an interface, so the
//! load generator can drive any endpoint that speaks the protocol.
//!
//! A [`Batch`] owns `cap` buffers of `size` bytes plus the iovecs, message
//! headers, addresses and (optionally) control buffers the kernel needs,
//! allocated once; sending or receiving a batch allocates nothing.
//!
//! With [`Batch::with_rxq_ovfl`] each receive also reads `SO_RXQ_OVFL`, the
//! socket's running count of datagrams the kernel dropped because its
//! receive queue was full; [`enable_rxq_ovfl`] turns it on for a socket.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use ricochet_wire::group::{self, Scope, SourceMode};
use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer asked for on every receiving socket (the engine asks the
/// same; the kernel caps both at `net.core.rmem_max`).
pub const RCVBUF: usize = 8 << 20;

/// The lab group address of index `i` on `port`.
pub fn group_addr(index: u16, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(group::ipv4_lab_group(index), port)
}

/// How group addresses are formed (the engine's `--ipv4-lab`, or BRC-129
/// IPv6 groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Addressing {
    /// 239.11.(i >> 8).(i & 0xFF) on 127.0.0.1.
    #[value(alias = "lab", alias = "ipv4")]
    Ipv4Lab,
    /// `prefix(mode, scope) ‖ 0… ‖ group id ‖ index` on an interface.
    Ipv6,
}

/// Group addressing options, as the engine names them (`--scope`,
/// `--mc-group-id`, `--source-mode`, `--mc-iface`).
#[derive(Debug, Clone, clap::Args)]
pub struct GroupArgs {
    /// Group addressing: ipv4-lab (239.11.x.y on 127.0.0.1, an engine run
    /// with --ipv4-lab) or ipv6 (BRC-129 groups) [default: ipv6 when the
    /// target is an IPv6 address, else ipv4-lab].
    #[arg(long, value_enum)]
    pub addressing: Option<Addressing>,
    /// IPv6 group scope: link, site, org or global.
    #[arg(long, default_value = "site", value_parser = parse_scope)]
    pub scope: Scope,
    /// BRC-129 group id of every IPv6 group (0x-hex or decimal).
    #[arg(long = "mc-group-id", default_value = "0x000B", value_parser = parse_u16)]
    pub group_id: u16,
    /// IPv6 multicast model: asm (FF0x groups) or ssm (FF35/FF3E).
    #[arg(long, default_value = "asm", value_parser = parse_source_mode)]
    pub source_mode: SourceMode,
    /// Interface (name or index) IPv6 groups are joined and sent on.
    #[arg(long, default_value = "lo")]
    pub mc_iface: String,
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::from_name(s).ok_or_else(|| format!("{s:?}: expected link, site, org or global"))
}

fn parse_source_mode(s: &str) -> Result<SourceMode, String> {
    SourceMode::from_name(s).ok_or_else(|| format!("{s:?}: expected asm or ssm"))
}

/// A u16 in decimal or 0x-hex.
pub fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?}: expected a 16-bit number (decimal or 0x-hex)"))
}

impl GroupArgs {
    /// The groups these options name; `target` (an endpoint's address)
    /// picks the family when `--addressing` was not given.
    pub fn resolve(&self, target: Option<IpAddr>) -> Result<Groups, String> {
        let addressing = self.addressing.unwrap_or(match target {
            Some(IpAddr::V6(_)) => Addressing::Ipv6,
            _ => Addressing::Ipv4Lab,
        });
        match addressing {
            Addressing::Ipv4Lab => Ok(Groups::Ipv4Lab),
            Addressing::Ipv6 => {
                // Checks the (mode, scope) pair once, so `addr` cannot fail.
                group::prefix(self.source_mode, self.scope).map_err(|_| {
                    format!(
                        "--source-mode {} has no {} scope (ssm: site or global)",
                        self.source_mode.name(),
                        self.scope.name()
                    )
                })?;
                Ok(Groups::Ipv6 {
                    mode: self.source_mode,
                    scope: self.scope,
                    group_id: self.group_id,
                    ifindex: ifindex(&self.mc_iface)?,
                })
            }
        }
    }
}

/// Resolved group addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups {
    /// 239.11.x.y on 127.0.0.1.
    Ipv4Lab,
    /// BRC-129 IPv6 groups on interface `ifindex`.
    Ipv6 {
        /// ASM or SSM.
        mode: SourceMode,
        /// Scope nibble.
        scope: Scope,
        /// Group id.
        group_id: u16,
        /// Interface index.
        ifindex: u32,
    },
}

impl Groups {
    /// The group of `index` on `port`.
    pub fn addr(&self, index: u16, port: u16) -> SocketAddr {
        match *self {
            Groups::Ipv4Lab => SocketAddr::V4(group_addr(index, port)),
            Groups::Ipv6 { mode, scope, group_id, ifindex } => {
                // `resolve` checked (mode, scope).
                let ip = group::ipv6_group(mode, scope, group_id, index)
                    .unwrap_or(Ipv6Addr::UNSPECIFIED);
                SocketAddr::V6(SocketAddrV6::new(ip, port, 0, ifindex))
            }
        }
    }

    /// Whether these are IPv6 groups.
    pub fn is_ipv6(&self) -> bool {
        matches!(self, Groups::Ipv6 { .. })
    }

    /// A socket that multicasts to these groups with loop on, so sockets on
    /// this host hear it.
    pub fn sender(&self, nonblocking: bool) -> io::Result<Socket> {
        match *self {
            Groups::Ipv4Lab => multicast_sender(nonblocking),
            Groups::Ipv6 { ifindex, .. } => {
                let s = udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), nonblocking)?;
                s.set_multicast_if_v6(ifindex)?;
                s.set_multicast_loop_v6(true)?;
                s.set_multicast_hops_v6(1)?;
                Ok(s)
            }
        }
    }

    /// A socket bound to `port` on every address and joined to the groups
    /// `indices` (and nothing else: MULTICAST_ALL off). Reuse flags are set
    /// so it can share the port with an engine's ingress sockets.
    pub fn receiver(&self, port: u16, indices: &[u16], nonblocking: bool) -> io::Result<Socket> {
        let any = any_for(self.addr(0, port));
        let s = Socket::new(Domain::for_address(any), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        let _ = s.set_recv_buffer_size(RCVBUF);
        if self.is_ipv6() {
            s.set_only_v6(true)?;
            s.set_multicast_all_v6(false)?;
        } else {
            s.set_multicast_all_v4(false)?;
        }
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(nonblocking)?;
        s.bind(&SocketAddr::new(any.ip(), port).into())?;
        for &g in indices {
            match self.addr(g, port) {
                SocketAddr::V4(a) => s.join_multicast_v4(a.ip(), &Ipv4Addr::LOCALHOST)?,
                SocketAddr::V6(a) => s.join_multicast_v6(a.ip(), a.scope_id())?,
            }
        }
        Ok(s)
    }
}

/// An interface index from a name or a number.
pub fn ifindex(iface: &str) -> Result<u32, String> {
    if let Ok(i) = iface.parse::<u32>() {
        return Ok(i);
    }
    let c = std::ffi::CString::new(iface).map_err(|_| format!("{iface:?}: bad interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {iface:?} (see `ip link`); pass --mc-iface NAME")),
        i => Ok(i),
    }
}

/// The unspecified address of `target`'s family, port 0: where a socket
/// that talks to `target` binds.
pub fn any_for(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A UDP socket bound to `bind` (either family).
pub fn udp(bind: impl Into<SocketAddr>, nonblocking: bool) -> io::Result<Socket> {
    let bind = bind.into();
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let _ = s.set_recv_buffer_size(RCVBUF);
    let _ = s.set_send_buffer_size(RCVBUF);
    s.set_nonblocking(nonblocking)?;
    s.bind(&bind.into())?;
    Ok(s)
}

/// Asks the kernel to attach `SO_RXQ_OVFL` (datagrams dropped at this
/// socket's full receive queue, a running count) to every receive.
pub fn enable_rxq_ovfl(s: &impl AsRawFd) -> io::Result<()> {
    set_int_option(s, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Sets an `int`-valued socket option that socket2 does not wrap.
pub fn set_int_option(
    s: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let fd: RawFd = s.as_raw_fd();
    let (ptr, len) = ((&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32);
    // SAFETY: a valid fd and a c_int option value that lives for the call.
    let r = unsafe { libc::setsockopt(fd, level, name, ptr, len) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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
/// `groups` on 127.0.0.1 and nothing else (see [`Groups::receiver`]).
pub fn group_receiver(port: u16, groups: &[u16], nonblocking: bool) -> io::Result<Socket> {
    Groups::Ipv4Lab.receiver(port, groups, nonblocking)
}

/// Sets a receive timeout so blocking receives wake up to check for stop.
pub fn set_read_timeout(s: &Socket, d: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(d))
}

/// Big enough for either family's socket address.
type RawAddr = libc::sockaddr_in6;

fn to_raw(a: SocketAddr) -> (RawAddr, libc::socklen_t) {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut raw: RawAddr = unsafe { mem::zeroed() };
    match a {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 B) fits in sockaddr_in6 (28 B), whose
            // alignment is at least as strict.
            unsafe { std::ptr::write((&mut raw as *mut RawAddr).cast::<libc::sockaddr_in>(), sa) };
            (raw, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            raw.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            raw.sin6_port = a.port().to_be();
            raw.sin6_flowinfo = a.flowinfo();
            raw.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            raw.sin6_scope_id = a.scope_id();
            (raw, size_of::<RawAddr>() as libc::socklen_t)
        }
    }
}

fn from_raw(raw: &RawAddr) -> SocketAddr {
    if raw.sin6_family == libc::AF_INET6 as libc::sa_family_t {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(raw.sin6_addr.s6_addr),
            u16::from_be(raw.sin6_port),
            raw.sin6_flowinfo,
            raw.sin6_scope_id,
        ))
    } else {
        // SAFETY: an AF_INET address was written as a sockaddr_in at the
        // start of the (larger, as aligned) buffer.
        let sa = unsafe { &*(raw as *const RawAddr).cast::<libc::sockaddr_in>() };
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        ))
    }
}

/// Bytes of control buffer per message when reading `SO_RXQ_OVFL`.
const CTRL: usize = 64;

/// `cap` datagram buffers of `size` bytes with their kernel headers.
pub struct Batch {
    size: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<RawAddr>,
    addr_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Control buffers (u64 for alignment), `CTRL` bytes per message, when
    /// reading `SO_RXQ_OVFL`.
    ctrl: Vec<u64>,
    rxq_ovfl: Option<u32>,
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
            (mem::zeroed::<RawAddr>(), mem::zeroed::<libc::iovec>(), mem::zeroed::<libc::mmsghdr>())
        };
        Batch {
            size,
            data: vec![0; cap * size],
            lens: vec![0; cap],
            addrs: vec![addr; cap],
            addr_lens: vec![0; cap],
            iovs: vec![iov; cap],
            hdrs: vec![hdr; cap],
            ctrl: vec![],
            rxq_ovfl: None,
            filled: 0,
        }
    }

    /// Also reads `SO_RXQ_OVFL` on every receive (the socket must have it
    /// enabled: [`enable_rxq_ovfl`]).
    pub fn with_rxq_ovfl(mut self) -> Self {
        self.ctrl = vec![0; self.capacity() * CTRL / 8];
        self
    }

    /// The socket's drop count (`SO_RXQ_OVFL`) as of the last receive, if
    /// the kernel reported one.
    pub fn rxq_ovfl(&self) -> Option<u32> {
        self.rxq_ovfl
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
    pub fn push(&mut self, len: usize, dest: impl Into<SocketAddr>) {
        let i = self.filled;
        assert!(i < self.capacity() && len <= self.size, "batch overflow");
        self.lens[i] = len;
        (self.addrs[i], self.addr_lens[i]) = to_raw(dest.into());
        self.filled += 1;
    }

    /// Stages a copy of `bytes` to `dest`.
    pub fn push_copy(&mut self, bytes: &[u8], dest: impl Into<SocketAddr>) {
        self.next_buf()[..bytes.len()].copy_from_slice(bytes);
        self.push(bytes.len(), dest);
    }

    /// Message `i` of the last receive (or staged): bytes and peer address.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        (&self.data[i * self.size..i * self.size + self.lens[i]], from_raw(&self.addrs[i]))
    }

    fn prepare(&mut self, count: usize, for_recv: bool) {
        let base = self.data.as_mut_ptr();
        let ctrl = self.ctrl.as_mut_ptr().cast::<u8>();
        let with_ctrl = for_recv && !self.ctrl.is_empty();
        for i in 0..count {
            let len = if for_recv { self.size } else { self.lens[i] };
            // SAFETY: i < cap, so the offset stays inside `data`.
            self.iovs[i].iov_base = unsafe { base.add(i * self.size) }.cast();
            self.iovs[i].iov_len = len;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut RawAddr).cast();
            h.msg_namelen =
                if for_recv { size_of::<RawAddr>() as libc::socklen_t } else { self.addr_lens[i] };
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if with_ctrl {
                // SAFETY: `ctrl` holds cap * CTRL bytes; i < cap.
                h.msg_control = unsafe { ctrl.add(i * CTRL) }.cast();
                h.msg_controllen = CTRL as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
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
        self.rxq_ovfl = None;
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
                if !self.ctrl.is_empty()
                    && let Some(v) = read_rxq_ovfl(&self.hdrs[i].msg_hdr)
                {
                    self.rxq_ovfl = Some(self.rxq_ovfl.map_or(v, |o| o.max(v)));
                }
            }
            self.filled = n;
            return Ok(n);
        }
    }
}

/// The `SO_RXQ_OVFL` count in a received message's control data.
fn read_rxq_ovfl(h: &libc::msghdr) -> Option<u32> {
    // SAFETY: `h` was filled by recvmmsg: msg_control/msg_controllen
    // describe a buffer of ours holding well-formed cmsgs, and the CMSG_*
    // macros stay inside msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SO_RXQ_OVFL
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Most datagrams one GSO send carries (the kernel's UDP_MAX_SEGMENTS is
/// 64 on older kernels, 128 on newer).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one GSO send carries (a UDP datagram's 64 KiB, less headers).
pub const GSO_MAX_BYTES: usize = 65_000;

struct GsoRun {
    start: usize,
    len: usize,
    seg: usize,
    count: usize,
    dest: SocketAddr,
    closed: bool,
}

/// Datagrams grouped into UDP GSO sends (`UDP_SEGMENT`), all handed to the
/// kernel by one sendmmsg: consecutive pushes to the same destination with
/// the same size become one message the kernel splits into datagrams (a
/// shorter datagram may end a run). Callers order their pushes by
/// destination to get long runs.
pub struct GsoBatch {
    data: Vec<u8>,
    runs: Vec<GsoRun>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<RawAddr>,
    ctrl: Vec<[u64; 4]>,
    max_runs: usize,
}

impl std::fmt::Debug for GsoBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsoBatch").field("runs", &self.runs.len()).finish()
    }
}

// SAFETY: as for `Batch`: the raw pointers point into this struct's own
// buffers and are rebuilt before every syscall.
unsafe impl Send for GsoBatch {}

impl GsoBatch {
    /// Room for `max_runs` GSO messages.
    pub fn new(max_runs: usize) -> Self {
        let max_runs = max_runs.max(1);
        // SAFETY: plain old data; zero is valid and pointers are set before use.
        let (addr, iov, hdr) = unsafe {
            (mem::zeroed::<RawAddr>(), mem::zeroed::<libc::iovec>(), mem::zeroed::<libc::mmsghdr>())
        };
        GsoBatch {
            data: Vec::with_capacity(max_runs * GSO_MAX_BYTES.min(8192)),
            runs: Vec::with_capacity(max_runs),
            iovs: vec![iov; max_runs],
            hdrs: vec![hdr; max_runs],
            addrs: vec![addr; max_runs],
            ctrl: vec![[0; 4]; max_runs],
            max_runs,
        }
    }

    /// Whether no datagram is staged.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Stages `bytes` to `dest`, extending the last run when it can.
    /// Returns false (staging nothing) when a new run is needed and every
    /// slot is taken: send, then push again.
    pub fn push(&mut self, bytes: &[u8], dest: SocketAddr) -> bool {
        if let Some(r) = self.runs.last_mut()
            && r.dest == dest
            && !r.closed
            && bytes.len() <= r.seg
            && r.count < GSO_MAX_SEGMENTS
            && r.len + bytes.len() <= GSO_MAX_BYTES
        {
            r.closed = bytes.len() < r.seg;
            r.count += 1;
            r.len += bytes.len();
            self.data.extend_from_slice(bytes);
            return true;
        }
        if self.runs.len() == self.max_runs {
            return false;
        }
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.runs.push(GsoRun {
            start,
            len: bytes.len(),
            seg: bytes.len().max(1),
            count: 1,
            dest,
            closed: false,
        });
        true
    }

    /// Sends every staged run with one sendmmsg (retrying partial sends);
    /// returns the datagrams that went. Clears the batch either way.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.runs.len();
        let base = self.data.as_mut_ptr();
        for (i, r) in self.runs.iter().enumerate() {
            let (raw, raw_len) = to_raw(r.dest);
            self.addrs[i] = raw;
            // SAFETY: start + len <= data.len().
            self.iovs[i].iov_base = unsafe { base.add(r.start) }.cast();
            self.iovs[i].iov_len = r.len;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut RawAddr).cast();
            h.msg_namelen = raw_len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if r.count > 1 {
                h.msg_control = self.ctrl[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE(2) (24 B) fits in the 32-byte buffer;
                // the header just set up describes it.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), r.seg as u16);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        let mut done = 0;
        let mut datagrams = 0;
        let mut result = Ok(());
        while done < n {
            // SAFETY: hdrs[done..n] were just prepared and point into
            // buffers owned by self.
            let k = unsafe {
                libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(done), (n - done) as u32, 0)
            };
            if k < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done == 0 {
                    result = Err(e);
                }
                break;
            }
            datagrams += self.runs[done..done + k as usize].iter().map(|r| r.count).sum::<usize>();
            done += k as usize;
        }
        self.runs.clear();
        self.data.clear();
        result.map(|()| datagrams)
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
    fn ipv6_batches_gso_runs_and_rxq_ovfl_work_over_loopback() {
        let Ok(rx) = udp(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), false) else {
            return; // no IPv6 on this host
        };
        enable_rxq_ovfl(&rx).unwrap();
        set_read_timeout(&rx, Duration::from_secs(2)).unwrap();
        let to = rx.local_addr().unwrap().as_socket().unwrap();
        let tx = udp(any_for(to), false).unwrap();
        let mut g = GsoBatch::new(4);
        // Three 100-byte datagrams and a 16-byte one: one GSO run; then a
        // 100-byte one after the shorter one opens a second run.
        for len in [100, 100, 100, 16, 100] {
            assert!(g.push(&vec![len as u8; len], to));
        }
        assert_eq!(g.send(tx.as_raw_fd()).unwrap(), 5);
        let mut r = Batch::new(8, 2048).with_rxq_ovfl();
        let mut lens = vec![];
        while lens.len() < 5 {
            let n = r.recv(rx.as_raw_fd(), true).unwrap();
            for i in 0..n {
                let (b, from) = r.get(i);
                assert!(from.is_ipv6());
                lens.push(b.len());
            }
            assert_eq!(r.rxq_ovfl().unwrap_or(0), 0);
        }
        assert_eq!(lens, vec![100, 100, 100, 16, 100]);
    }

    #[test]
    fn ipv6_groups_follow_brc_129() {
        let args = GroupArgs {
            addressing: None,
            scope: Scope::Site,
            group_id: 0x000B,
            source_mode: SourceMode::Asm,
            mc_iface: "1".into(),
        };
        assert_eq!(args.resolve(Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).unwrap(), Groups::Ipv4Lab);
        let g = args.resolve(Some(IpAddr::V6(Ipv6Addr::LOCALHOST))).unwrap();
        assert_eq!(g.addr(3, 9001), "[ff05::b:3%1]:9001".parse::<SocketAddr>().unwrap());
        let ssm_link = GroupArgs { source_mode: SourceMode::Ssm, scope: Scope::Link, ..args };
        assert!(ssm_link.resolve(Some(IpAddr::V6(Ipv6Addr::LOCALHOST))).is_err());
        assert_eq!(parse_u16("0x000B"), Ok(11));
    }

    #[test]
    fn udp_counters_parse() {
        let c = UdpCounters::read();
        assert_eq!(c.since(&c), UdpCounters::default());
    }
}
