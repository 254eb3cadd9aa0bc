//! Thin, checked wrappers over the Linux calls the workers make: batched UDP
//! receive and send (recvmmsg/sendmmsg), epoll, eventfd, thread pinning and
//! the reuseport steering program. This file holds the engine's `unsafe`;
//! every block says why it is sound.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

/// Largest datagram a receive slot holds. Frames are bounded by the UDP
/// maximum; a bigger slot would only waste memory.
pub(crate) const SLOT: usize = 65_536;

/// Room for the control messages an ingress receive asks for: one
/// `IP_PKTINFO` (32 bytes with its header) or `IPV6_PKTINFO` (40), as u64s
/// for cmsghdr alignment, with space to spare should the kernel add one.
pub(crate) type PktinfoCmsg = [u64; 8];

/// What a received datagram's packet info says: `destination`, the IP
/// header's destination (`ipi_addr` / `ipi6_addr`), and `local`, the local
/// address a reply should leave from (`ipi_spec_dst` on IPv4, which the
/// kernel sets to an interface address when the destination was broadcast
/// or multicast; `ipi6_addr` on IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PacketInfo {
    pub(crate) destination: IpAddr,
    pub(crate) local: IpAddr,
}

/// The destination address of a received datagram, from the `IP_PKTINFO`
/// or `IPV6_PKTINFO` control message in `control` ([`packet_info`]).
pub(crate) fn pktinfo_destination(control: &[u8]) -> Option<IpAddr> {
    packet_info(control).map(|p| p.destination)
}

/// The `IP_PKTINFO` or `IPV6_PKTINFO` control message in `control` — the
/// bytes the kernel wrote to a receive's control area (`msg_controllen` of
/// them). `None` when neither is there or the area is malformed: a walk
/// over a borrowed buffer, bounds-checked at every step, allocating
/// nothing.
pub(crate) fn packet_info(control: &[u8]) -> Option<PacketInfo> {
    const HDR: usize = size_of::<libc::cmsghdr>();
    // CMSG_ALIGN: control messages start on size_t boundaries.
    let align = |n: usize| n.next_multiple_of(size_of::<usize>());
    let mut at = 0;
    while let Some(raw) = control.get(at..at + HDR) {
        // SAFETY: `raw` is HDR = sizeof(cmsghdr) bytes in bounds; cmsghdr
        // is plain old data, read unaligned.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let len = h.cmsg_len as usize;
        if len < HDR {
            return None;
        }
        // `len` is the kernel's word, but never trusted to stay in bounds:
        // past the area (or overflowing) ends the walk.
        let data = control.get(at + align(HDR)..at.checked_add(len)?)?;
        match (h.cmsg_level, h.cmsg_type) {
            // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst;
            // in_addr ipi_addr; }, addresses in network order.
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                let local: [u8; 4] = data.get(4..8)?.try_into().ok()?;
                let a: [u8; 4] = data.get(8..12)?.try_into().ok()?;
                return Some(PacketInfo {
                    destination: Ipv4Addr::from(a).into(),
                    local: Ipv4Addr::from(local).into(),
                });
            }
            // struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let a: [u8; 16] = data.get(..16)?.try_into().ok()?;
                let a = Ipv6Addr::from(a).into();
                return Some(PacketInfo { destination: a, local: a });
            }
            _ => {}
        }
        at += align(len);
    }
    None
}

/// A batch of receive slots for recvmmsg: `n` buffers of [`SLOT`] bytes,
/// their source addresses, control areas ([`PktinfoCmsg`], filled only on
/// sockets that ask for packet info) and lengths, allocated once per worker.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    ctrls: Vec<PktinfoCmsg>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    filled: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.hdrs.len())
            .field("filled", &self.filled)
            .finish()
    }
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point into `bufs`/`addrs`,
// which the batch owns and never reallocates; moving the batch to another
// thread moves the heap allocations' owners along with the pointers.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub(crate) fn new(n: usize) -> Self {
        let mut b = RecvBatch {
            bufs: vec![0u8; n * SLOT],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; n],
            ctrls: vec![[0; 8]; n],
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
            filled: 0,
        };
        for i in 0..n {
            b.iovs.push(libc::iovec {
                iov_base: b.bufs[i * SLOT..].as_mut_ptr().cast(),
                iov_len: SLOT,
            });
        }
        for i in 0..n {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
            h.msg_hdr.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut b.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = b.ctrls[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<PktinfoCmsg>();
            b.hdrs.push(h);
        }
        b
    }

    /// Receives up to the batch size without blocking. `Ok(0)` when nothing
    /// is queued.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for (h, _) in self.hdrs.iter_mut().zip(0..) {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_controllen = size_of::<PktinfoCmsg>();
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds `hdrs.len()` initialised headers whose name,
        // iov and control pointers reference live buffers owned by `self` of
        // the lengths given; the kernel writes at most those lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.filled = 0;
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        self.filled = n as usize;
        Ok(self.filled)
    }

    /// The `i`-th received datagram.
    pub(crate) fn data(&self, i: usize) -> Option<&[u8]> {
        let h = self.hdrs.get(i).filter(|_| i < self.filled)?;
        let len = (h.msg_len as usize).min(SLOT);
        Some(&self.bufs[i * SLOT..i * SLOT + len])
    }

    /// Whether the `i`-th received datagram was longer than its slot
    /// (MSG_TRUNC): [`RecvBatch::data`] then holds only its first
    /// [`SLOT`] bytes.
    pub(crate) fn truncated(&self, i: usize) -> bool {
        self.hdrs
            .get(i)
            .filter(|_| i < self.filled)
            .is_some_and(|h| h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0)
    }

    /// The destination address of the `i`-th received datagram, on a
    /// socket that asks for packet info ([`pktinfo_destination`]).
    pub(crate) fn destination(&self, i: usize) -> Option<IpAddr> {
        self.packet_info(i).map(|p| p.destination)
    }

    /// The packet info of the `i`-th received datagram, on a socket that
    /// asks for it ([`packet_info`]).
    pub(crate) fn packet_info(&self, i: usize) -> Option<PacketInfo> {
        let h = self.hdrs.get(i).filter(|_| i < self.filled)?;
        let len = h.msg_hdr.msg_controllen.min(size_of::<PktinfoCmsg>());
        // SAFETY: `ctrls[i]` is a live array of u64s; viewing its first
        // `len` ≤ its size bytes as bytes is in bounds (u8 has no alignment).
        let raw = unsafe { std::slice::from_raw_parts(self.ctrls[i].as_ptr().cast::<u8>(), len) };
        packet_info(raw)
    }

    /// Where the `i`-th received datagram came from. Decoded only when
    /// asked: ingress frames never need it.
    pub(crate) fn source(&self, i: usize) -> Option<SocketAddr> {
        let h = self.hdrs.get(i).filter(|_| i < self.filled)?;
        let len = (h.msg_hdr.msg_namelen as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: `addrs[i]` is a live sockaddr_storage; reading `len` ≤ its
        // size bytes of it as a byte slice is in bounds.
        let raw = unsafe {
            std::slice::from_raw_parts(
                (&self.addrs[i] as *const libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        socket_addr(raw)
    }
}

/// Decodes a socket address the kernel wrote (`name` is its `namelen`
/// bytes), as recvmmsg and io_uring's recvmsg header both hand it over.
pub(crate) fn socket_addr(name: &[u8]) -> Option<SocketAddr> {
    if name.len() > size_of::<libc::sockaddr_storage>() {
        return None;
    }
    // SAFETY: copies at most sizeof(sockaddr_storage) bytes into the
    // storage SockAddr owns, and says how many.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            std::ptr::copy_nonoverlapping(name.as_ptr(), storage.cast::<u8>(), name.len());
            *len = name.len() as u32;
            Ok(())
        })
    }
    .ok()?;
    addr.as_socket()
}

/// Room for the control messages a send carries: a `UDP_SEGMENT` (GSO,
/// 24 bytes with its header) and an `IP_PKTINFO` (32) or `IPV6_PKTINFO`
/// (40), as u64s for cmsghdr alignment.
pub(crate) type SendCmsg = [u64; 8];

/// Writes the control messages of one send into `buf` and returns their
/// length (0: none): `UDP_SEGMENT` when `segment` is given, asking the
/// kernel to cut the payload into `segment`-byte datagrams (the last may be
/// shorter); `IP_PKTINFO` (`ipi_spec_dst`) or `IPV6_PKTINFO` (`ipi6_addr`,
/// v4-mapped for IPv4 on a dual-stack socket) when `from` is given, so the
/// datagrams leave from that local address — the one the NACK they answer
/// was sent to. The interface index stays 0: the route picks it.
pub(crate) fn write_send_cmsgs(
    buf: &mut SendCmsg,
    segment: Option<u16>,
    from: Option<IpAddr>,
) -> usize {
    *buf = [0; 8];
    let base = buf.as_mut_ptr().cast::<u8>();
    let mut at = 0;
    let mut put = |level: i32, ty: i32, data: &[u8]| {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(data.len() as u32) as usize,
                libc::CMSG_LEN(data.len() as u32) as usize,
            )
        };
        assert!(at + space <= size_of::<SendCmsg>(), "send control area too small");
        let hdr = libc::cmsghdr { cmsg_len: len as _, cmsg_level: level, cmsg_type: ty };
        // SAFETY: `at + space` ≤ the 64 bytes of `buf` (checked above):
        // room for the header and, at CMSG_DATA's offset, the data.
        unsafe {
            std::ptr::write_unaligned(base.add(at).cast::<libc::cmsghdr>(), hdr);
            let dst = base.add(at + size_of::<libc::cmsghdr>());
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len());
        }
        at += space;
    };
    if let Some(segment) = segment {
        put(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes());
    }
    match from {
        Some(IpAddr::V4(a)) => {
            // struct in_pktinfo { ipi_ifindex 0, ipi_spec_dst a, ipi_addr 0 }
            let mut info = [0u8; 12];
            info[4..8].copy_from_slice(&a.octets());
            put(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        }
        Some(IpAddr::V6(a)) => {
            // struct in6_pktinfo { ipi6_addr a, ipi6_ifindex 0 }
            let mut info = [0u8; 20];
            info[..16].copy_from_slice(&a.octets());
            put(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
        }
        None => {}
    }
    at
}

/// Whether `errno`, the kernel's answer to a UDP GSO send, says it will not
/// segment this send: `EIO` when the device cannot checksum the segments;
/// `EMSGSIZE` (recent kernels; `EINVAL` on older ones) when a segment plus
/// its headers exceeds the route's MTU; `EINVAL` also when GSO is refused
/// on this socket. quinn-udp checks `EIO` and `EINVAL` only, as QUIC never
/// sends a segment over the path MTU; ricochet's frames may be bigger and
/// leave IP-fragmented. The same datagrams sent one by one then go.
pub(crate) fn gso_refused(errno: i32) -> bool {
    matches!(errno, libc::EIO | libc::EINVAL | libc::EMSGSIZE)
}

/// One outgoing message: a destination, the local address to send from
/// (`None`: the kernel's choice) and one or more segments. With more than
/// one segment it leaves as a single UDP GSO send, segmented by the kernel
/// at the first segment's length.
pub(crate) type Message<'a, I> = (SockAddr, Option<IpAddr>, I);

/// Sends every message with as few sendmmsg calls as the kernel allows,
/// reusing `scratch` so the steady state allocates nothing. Returns
/// `(datagrams sent, datagrams failed)`: a message the kernel refuses (no
/// route, buffer full) is skipped and counted, never retried — the listener
/// NACKs again; [`SendScratch::failed`] then names the refused messages.
/// A GSO message the kernel will not segment ([`gso_refused`]) is sent
/// again one datagram at a time instead, and named with its error in
/// [`SendScratch::gso_refusals`].
pub(crate) fn send_all<'a, I>(
    fd: RawFd,
    msgs: impl Iterator<Item = Message<'a, I>>,
    scratch: &mut SendScratch,
) -> (usize, usize)
where
    I: Iterator<Item = &'a [u8]>,
{
    scratch.addrs.clear();
    scratch.iovs.clear();
    scratch.hdrs.clear();
    scratch.spans.clear();
    scratch.failed.clear();
    scratch.gso_refusals.clear();
    scratch.froms.clear();
    for (to, from, segments) in msgs {
        let start = scratch.iovs.len();
        for data in segments {
            scratch
                .iovs
                .push(libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() });
        }
        scratch.addrs.push(to);
        scratch.froms.push(from);
        scratch.spans.push((start, scratch.iovs.len() - start));
    }
    scratch.cmsgs.resize(scratch.spans.len(), [0; 8]);
    // Headers are built only after every vector stopped growing, so the
    // pointers into them stay valid.
    for (i, (to, &(start, n))) in scratch.addrs.iter().zip(&scratch.spans).enumerate() {
        // SAFETY: plain old data; zero is valid.
        let mut h: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        h.msg_hdr.msg_name = to.as_ptr() as *mut _;
        h.msg_hdr.msg_namelen = to.len();
        h.msg_hdr.msg_iov = scratch.iovs[start..].as_mut_ptr();
        h.msg_hdr.msg_iovlen = n;
        let segment = (n > 1).then(|| scratch.iovs[start].iov_len as u16);
        let len = write_send_cmsgs(&mut scratch.cmsgs[i], segment, scratch.froms[i]);
        if len > 0 {
            h.msg_hdr.msg_control = scratch.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = len;
        }
        scratch.hdrs.push(h);
    }
    let (mut sent, mut failed, mut start) = (0, 0, 0);
    let total = scratch.hdrs.len();
    let segments = |range: std::ops::Range<usize>, spans: &[(usize, usize)]| -> usize {
        spans[range].iter().map(|&(_, n)| n).sum()
    };
    while start < total {
        let chunk = (total - start).min(1024);
        // SAFETY: every header points at an address in `scratch.addrs`,
        // iovecs in `scratch.iovs` describing buffers borrowed for `'a`
        // (alive for this whole call) and a cmsg in `scratch.cmsgs`; the
        // kernel only reads them.
        let n = unsafe { libc::sendmmsg(fd, scratch.hdrs[start..].as_mut_ptr(), chunk as u32, 0) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            let errno = e.raw_os_error().unwrap_or(0);
            let (first, count) = scratch.spans[start];
            if n < 0 && count > 1 && gso_refused(errno) {
                // Not lost: the same datagrams, one send each.
                scratch.gso_refusals.push((start, errno));
                let (to, from) = (&scratch.addrs[start], scratch.froms[start]);
                let ok = scratch.iovs[first..first + count]
                    .iter()
                    .filter(|&&iov| send_one(fd, to, from, iov))
                    .count();
                sent += ok;
                if ok < count {
                    failed += count - ok;
                    scratch.failed.push(start);
                }
                start += 1;
                continue;
            }
            let skip = if n < 0 && e.kind() == io::ErrorKind::WouldBlock { chunk } else { 1 };
            failed += segments(start..start + skip, &scratch.spans);
            scratch.failed.extend(start..start + skip);
            start += skip;
            continue;
        }
        // A partial send stops at the first message the kernel refused;
        // the next round starts there and skips it if it fails again.
        sent += segments(start..start + n as usize, &scratch.spans);
        start += n as usize;
    }
    // Nothing may keep pointing at the borrowed buffers.
    scratch.iovs.clear();
    scratch.hdrs.clear();
    (sent, failed)
}

/// Sends one datagram (`iov`) to `to` from `from` with sendmsg; whether the
/// kernel took it.
fn send_one(fd: RawFd, to: &SockAddr, from: Option<IpAddr>, mut iov: libc::iovec) -> bool {
    let mut cmsg: SendCmsg = [0; 8];
    // SAFETY: plain old data; zero is valid.
    let mut h: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    h.msg_name = to.as_ptr() as *mut _;
    h.msg_namelen = to.len();
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    let len = write_send_cmsgs(&mut cmsg, None, from);
    if len > 0 {
        h.msg_control = cmsg.as_mut_ptr().cast();
        h.msg_controllen = len;
    }
    // SAFETY: the header points at the live address, the one iovec (whose
    // buffer the caller keeps alive) and control area above; the kernel
    // only reads them.
    unsafe { libc::sendmsg(fd, &h, 0) >= 0 }
}

/// Reusable storage for [`send_all`].
#[derive(Default)]
pub(crate) struct SendScratch {
    addrs: Vec<SockAddr>,
    froms: Vec<Option<IpAddr>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    spans: Vec<(usize, usize)>,
    cmsgs: Vec<SendCmsg>,
    /// See [`SendScratch::failed`].
    failed: Vec<usize>,
    /// See [`SendScratch::gso_refusals`].
    gso_refusals: Vec<(usize, i32)>,
}

impl SendScratch {
    /// Indices, in the order given, of the messages the last [`send_all`]
    /// could not send.
    pub(crate) fn failed(&self) -> &[usize] {
        &self.failed
    }

    /// `(index, errno)` of the GSO messages of the last [`send_all`] the
    /// kernel would not segment, whose datagrams were sent one by one.
    pub(crate) fn gso_refusals(&self) -> &[(usize, i32)] {
        &self.gso_refusals
    }
}

impl std::fmt::Debug for SendScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendScratch")
    }
}

// SAFETY: `iovs` and `hdrs` hold pointers only during a `send_all` call,
// which borrows everything they point at, and are cleared before it returns.
unsafe impl Send for SendScratch {}

/// The MTU of the route to `to` (IPv4 for a v4-mapped address), as the
/// kernel checks a GSO segment against it: a throwaway UDP socket is
/// connected there and asked (`IP_MTU` / `IPV6_MTU`). `None` when that
/// fails. Made only after the kernel refused a GSO send, never per packet.
pub(crate) fn path_mtu(to: SocketAddr) -> Option<usize> {
    use socket2::{Domain, Socket, Type};
    let to = match to {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => to,
        },
        v4 => v4,
    };
    let s = Socket::new(Domain::for_address(to), Type::DGRAM.cloexec(), None).ok()?;
    s.connect(&to.into()).ok()?;
    let (level, name) = match to {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live `mtu`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && mtu > 0).then_some(mtu as usize)
}

/// An eventfd used to wake a worker blocked in epoll.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a wake needs.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance watching a handful of descriptors for readability.
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid event the kernel copies.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits up to `timeout_ms`; fills `tokens` with the ready ones.
    pub(crate) fn wait(&self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: `evs` is a live array of 16 events the kernel fills.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 16, timeout_ms) };
        tokens.clear();
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        tokens.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Most cache lines of one region [`prefetch`] asks for: 1 KiB, of a
/// larger frame the part its copy starts with.
const PREFETCH_LINES: usize = 16;

/// Asks the CPU to fetch the `len` bytes at `at` into its caches, without
/// waiting for them and without reading them: a hint, which the CPU may
/// ignore. A no-op on targets without a prefetch instruction here.
pub(crate) fn prefetch(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..len.div_ceil(64).min(PREFETCH_LINES) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults and reads nothing the program
        // can see, whatever the address; `wrapping_add` makes the address
        // without asserting that it lies in an allocation. SSE, which
        // `_mm_prefetch` needs, is part of every x86_64 CPU.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The CPUs the process may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
}

/// Attaches a classic-BPF reuseport program that steers each datagram to
/// socket `low32(u64 at payload offset `key_offset`) % n`, the same function
/// as [`crate::rt::owner`]. The program runs with the packet data starting at
/// the UDP payload; a datagram too short to hold the key makes the load
/// fail, which returns 0 — socket 0 then receives it and rejects it as
/// malformed.
pub(crate) fn attach_reuseport_steering(
    fd: &impl AsRawFd,
    key_offset: u32,
    n: u32,
) -> io::Result<()> {
    // BPF_LD|BPF_W|BPF_ABS  A = ntohl(P[off+4 : 4])   (the key's low 32 bits)
    // BPF_ALU|BPF_MOD|BPF_K A %= n
    // BPF_RET|BPF_A         return A
    let mut prog = [
        libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: key_offset + 4 },
        libc::sock_filter { code: 0x94, jt: 0, jf: 0, k: n },
        libc::sock_filter { code: 0x16, jt: 0, jf: 0, k: 0 },
    ];
    attach_reuseport_cbpf(fd, &mut prog)
}

/// Attaches `prog` as the classic-BPF reuseport program of the group `fd`
/// belongs to (SO_ATTACH_REUSEPORT_CBPF).
fn attach_reuseport_cbpf(fd: &impl AsRawFd, prog: &mut [libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_mut_ptr() };
    // SAFETY: `fprog` points at the live program in `prog`, of the length
    // given; the kernel copies it during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as u32,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The classic-BPF reuseport program for the DHT group of `n` sockets: it
/// returns [`crate::rt::dht_owner`] of the datagram (`docs/PROTOCOL.md`
/// § "DHT (UDP 9320)"), branching on the message type at offset 3:
/// - FIND_NODE, FIND_VALUE: the target/key at 44, by the low 32 bits of its
///   first 8 bytes (big-endian word at 48) mod `n`, like [`crate::rt::owner`];
/// - STORE: the record's key (record at 46, key at record offset 4: word at
///   54);
/// - PONG, NODES, VALUE, STORE_ACK: the transaction id's first byte
///   (offset 4) mod `n` — every worker's node tags its ids so
///   ([`crate::dht::Config::txid_tag`]);
/// - PING: the sender id's (word at 16);
/// - anything else: socket 0.
///
/// A datagram too short for its load makes the program return 0: socket
/// 0 then receives it and the node there rejects it as malformed.
pub(crate) fn dht_steering_program(n: u32) -> Vec<libc::sock_filter> {
    use crate::rt::dht_shard::layout;
    const LDB: u16 = 0x30; // BPF_LD|BPF_B|BPF_ABS
    const LDW: u16 = 0x20; // BPF_LD|BPF_W|BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP|BPF_JEQ|BPF_K
    const MOD: u16 = 0x94; // BPF_ALU|BPF_MOD|BPF_K
    const RETK: u16 = 0x06; // BPF_RET|BPF_K
    const RETA: u16 = 0x16; // BPF_RET|BPF_A
    let op = |code: u16, jt: u8, k: u32| libc::sock_filter { code, jt, jf: 0, k };
    // (message type, index of the load block it jumps to)
    let find = 10;
    let store = 13;
    let ping = 16;
    let txid = 19;
    let branches: [(u32, usize); 8] =
        [(3, find), (5, find), (7, store), (1, ping), (2, txid), (4, txid), (6, txid), (8, txid)];
    let mut prog = vec![op(LDB, 0, layout::TYPE)];
    for (i, (ty, to)) in branches.into_iter().enumerate() {
        // Jump offsets count from the next instruction.
        let here = 1 + i;
        prog.push(op(JEQ, (to - here - 1) as u8, ty));
    }
    prog.push(op(RETK, 0, 0));
    for (code, at) in [
        (LDW, layout::KEY + 4),
        (LDW, layout::STORE_KEY + 4),
        (LDW, layout::SENDER + 4),
        (LDB, layout::TXID),
    ] {
        prog.push(op(code, 0, at));
        prog.push(op(MOD, 0, n.max(1)));
        prog.push(op(RETA, 0, 0));
    }
    debug_assert_eq!(prog.len(), txid + 3);
    prog
}

/// Attaches [`dht_steering_program`] to the reuseport group `fd` belongs
/// to.
pub(crate) fn attach_dht_steering(fd: &impl AsRawFd, n: u32) -> io::Result<()> {
    attach_reuseport_cbpf(fd, &mut dht_steering_program(n))
}

/// Shortest datagram the gossip program treats as a rumor: a G3 header
/// with an empty topic and payload (10 bytes) and the 16-byte MAC.
const GOSSIP_MIN_RUMOR: u32 = 10 + 16;

/// The member of the gossip reuseport group that reads `datagram`, of
/// `workers` worker sockets (indices `0..workers`, bound first) and the
/// control thread's socket (index `workers`, bound last) — the Rust mirror
/// of [`gossip_steering_program`]:
/// - a datagram of at least [`GOSSIP_MIN_RUMOR`] bytes opening with the G3
///   magic `0x4733`: worker `(last 4 bytes, big-endian) mod workers`. The
///   last bytes are the MAC's, uniform and different for every copy: they
///   spread rumors over the workers, and the reader hands each to the
///   worker owning its id (`rt::gossip_shard`);
/// - anything else: the control thread's socket.
pub(crate) fn gossip_reader(datagram: &[u8], workers: u32) -> u32 {
    let workers = workers.max(1);
    let n = datagram.len();
    if n < GOSSIP_MIN_RUMOR as usize || datagram[..2] != [0x47, 0x33] {
        return workers;
    }
    let last =
        u32::from_be_bytes([datagram[n - 4], datagram[n - 3], datagram[n - 2], datagram[n - 1]]);
    last % workers
}

/// The classic-BPF reuseport program of the gossip group (`n` workers, the
/// control thread's socket at index `n`), computing [`gossip_reader`]. The
/// length is checked before any load, so no load runs past the end. The
/// word at `len - 4` is read with an indirect load from X = `len - 4`
/// (computed in A with a subtraction, then copied to X), which every
/// kernel with SO_ATTACH_REUSEPORT_CBPF accepts. Until the control
/// thread's socket has joined, index `n` is out of range and the kernel
/// falls back to its hash for those datagrams (the worker that gets one
/// passes it on).
pub(crate) fn gossip_steering_program(n: u32) -> Vec<libc::sock_filter> {
    const LEN: u16 = 0x80; // BPF_LD|BPF_W|BPF_LEN
    const JGE: u16 = 0x35; // BPF_JMP|BPF_JGE|BPF_K
    const LDH: u16 = 0x28; // BPF_LD|BPF_H|BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP|BPF_JEQ|BPF_K
    const SUB: u16 = 0x14; // BPF_ALU|BPF_SUB|BPF_K
    const TAX: u16 = 0x07; // BPF_MISC|BPF_TAX
    const LDWI: u16 = 0x40; // BPF_LD|BPF_W|BPF_IND
    const MOD: u16 = 0x94; // BPF_ALU|BPF_MOD|BPF_K
    const RETA: u16 = 0x16; // BPF_RET|BPF_A
    const RETK: u16 = 0x06; // BPF_RET|BPF_K
    let n = n.max(1);
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // Jump offsets count from the next instruction; 10 is `return n`.
    vec![
        op(LEN, 0, 0, 0),
        op(JGE, 0, 8, GOSSIP_MIN_RUMOR),
        op(LDH, 0, 0, 0),
        op(JEQ, 0, 6, 0x4733),
        op(LEN, 0, 0, 0),
        op(SUB, 0, 0, 4),
        op(TAX, 0, 0, 0),
        op(LDWI, 0, 0, 0),
        op(MOD, 0, 0, n),
        op(RETA, 0, 0, 0),
        op(RETK, 0, 0, n),
    ]
}

/// Attaches [`gossip_steering_program`] to the reuseport group `fd`
/// belongs to.
pub(crate) fn attach_gossip_steering(fd: &impl AsRawFd, n: u32) -> io::Result<()> {
    attach_reuseport_cbpf(fd, &mut gossip_steering_program(n))
}

/// An `(S,G)` membership change (RFC 3678 protocol-independent API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceMembership {
    /// `MCAST_JOIN_SOURCE_GROUP`: receive `group` from `source` on the
    /// interface (an INCLUDE-mode filter; MLDv2 reports it).
    Join,
    /// `MCAST_LEAVE_SOURCE_GROUP`: drop `source` from the filter; the group
    /// is left when its last source goes.
    Leave,
}

/// Joins or leaves `(source, group)` on the IPv6 socket `fd`, interface
/// `interface` (an index). Only source-specific calls: a `(*,G)` join of an
/// FF3x group is never made (RFC 4607 § 1).
pub(crate) fn source_membership(
    fd: &impl AsRawFd,
    op: SourceMembership,
    interface: u32,
    group: Ipv6Addr,
    source: Ipv6Addr,
) -> io::Result<()> {
    let storage = |a: Ipv6Addr| {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        let sin6 = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: a.octets() },
            sin6_scope_id: 0,
        };
        // SAFETY: sockaddr_storage is larger than sockaddr_in6 and at least
        // as aligned; the write stays in bounds.
        unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        ss
    };
    let req = libc::group_source_req {
        gsr_interface: interface,
        gsr_group: storage(group),
        gsr_source: storage(source),
    };
    let name = match op {
        SourceMembership::Join => libc::MCAST_JOIN_SOURCE_GROUP,
        SourceMembership::Leave => libc::MCAST_LEAVE_SOURCE_GROUP,
    };
    // SAFETY: `req` is a live, initialised group_source_req and the length
    // passed is its size; the kernel copies it and keeps no pointer.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            name,
            (&req as *const libc::group_source_req).cast(),
            size_of::<libc::group_source_req>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    /// Runs a classic-BPF program (the few instructions the steering
    /// programs use) over `pkt` as the kernel does: a load past the end
    /// ends the program with 0.
    pub(crate) fn run_cbpf(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let mut a: u32 = 0;
        let mut x: u32 = 0;
        let mut pc = 0;
        while let Some(i) = prog.get(pc) {
            pc += 1;
            let k = i.k as usize;
            match i.code {
                0x30 => match pkt.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                0x20 => match pkt.get(k..k + 4) {
                    Some(w) => a = u32::from_be_bytes(w.try_into().unwrap()),
                    None => return 0,
                },
                0x28 => match pkt.get(k..k + 2) {
                    Some(h) => a = u32::from(u16::from_be_bytes([h[0], h[1]])),
                    None => return 0,
                },
                0x40 => {
                    let at = x.wrapping_add(i.k) as usize;
                    match pkt.get(at..at + 4) {
                        Some(w) => a = u32::from_be_bytes(w.try_into().unwrap()),
                        None => return 0,
                    }
                }
                0x80 => a = pkt.len() as u32,
                0x07 => x = a,
                0x14 => a = a.wrapping_sub(i.k),
                0x35 => {
                    if a >= i.k {
                        pc += usize::from(i.jt);
                    } else {
                        pc += usize::from(i.jf);
                    }
                }
                0x15 => {
                    if a == i.k {
                        pc += usize::from(i.jt);
                    } else {
                        pc += usize::from(i.jf);
                    }
                }
                0x94 => a %= i.k,
                0x06 => return i.k,
                0x16 => return a,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
        panic!("fell off the end of the program")
    }

    #[test]
    fn prefetch_takes_any_address() {
        // A hint: null, dangling, unmapped and huge regions neither fault
        // nor read.
        let v = vec![7u8; 4096];
        for (at, len) in [
            (v.as_ptr(), v.len()),
            (std::ptr::null(), 1 << 20),
            (std::ptr::dangling::<u8>(), 64),
            (usize::MAX as *const u8, usize::MAX),
            (0x10 as *const u8, 0),
        ] {
            super::prefetch(at, len);
        }
        assert_eq!(v, vec![7u8; 4096]);
    }

    #[test]
    fn the_gossip_program_computes_gossip_reader() {
        use super::{gossip_reader, gossip_steering_program};
        let mut state = 0x9E37_79B9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for workers in 1..=8u32 {
            let prog = gossip_steering_program(workers);
            for len in 0..=64usize {
                for magic in [[0x47, 0x33], [0x47, 0x31], [0x47, 0x35], [0, 0]] {
                    for _ in 0..4 {
                        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                        for (b, m) in d.iter_mut().zip(magic) {
                            *b = m;
                        }
                        let want = gossip_reader(&d, workers);
                        assert_eq!(run_cbpf(&prog, &d), want, "{workers} workers, {d:02x?}");
                        let g3 = len >= 26 && magic == [0x47, 0x33];
                        assert_eq!(want < workers, g3, "{d:02x?}");
                    }
                }
            }
        }
    }

    /// `n` loopback UDP sockets in one reuseport group, bound in index
    /// order with a short read timeout, and the port they share.
    pub(crate) fn reuseport_group(n: usize) -> (Vec<std::net::UdpSocket>, SocketAddr) {
        use socket2::{Domain, Socket, Type};
        let mut members = Vec::new();
        let mut port = 0;
        for _ in 0..n {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into()).unwrap();
            port = s.local_addr().unwrap().as_socket().unwrap().port();
            s.set_read_timeout(Some(std::time::Duration::from_millis(20))).unwrap();
            members.push(std::net::UdpSocket::from(s));
        }
        (members, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Every datagram queued on `s`, in arrival order (reads until the
    /// read timeout).
    pub(crate) fn drain(s: &std::net::UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    /// The kernel runs the program: rumors land on the worker socket
    /// [`super::gossip_reader`] names, everything else on the last member
    /// (the control thread's).
    #[test]
    fn the_kernel_steers_rumors_to_workers_and_the_rest_to_the_control_socket() {
        for workers in [2u32, 3] {
            let (members, dest) = reuseport_group(workers as usize + 1);
            super::attach_gossip_steering(&members[0], workers)
                .expect("this kernel supports SO_ATTACH_REUSEPORT_CBPF");
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sent = vec![Vec::new(); workers as usize + 1];
            for i in 0..40u8 {
                let len = 20 + usize::from(i);
                let mut d: Vec<u8> = (0..len).map(|b| (b as u8).wrapping_mul(31) ^ i).collect();
                d[0] = 0x47;
                d[1] = if i % 3 == 0 { 0x31 } else { 0x33 };
                let n = d.len();
                d[n - 4..].copy_from_slice(&u32::from(i).wrapping_mul(2_654_435_761).to_be_bytes());
                client.send_to(&d, dest).unwrap();
                sent[super::gossip_reader(&d, workers) as usize].push(d);
            }
            assert!(sent.iter().all(|s| !s.is_empty()), "every member has some: {sent:?}");
            for (w, want) in sent.iter().enumerate() {
                assert_eq!(&drain(&members[w]), want, "{workers} workers: member {w}");
            }
        }
    }

    /// A message the kernel refuses is skipped, counted and named by its
    /// index, and the ones after it still go.
    #[test]
    fn send_all_names_the_messages_it_could_not_send() {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ok = socket2::SockAddr::from(rx.local_addr().unwrap());
        // An IPv6 destination from an IPv4 socket: refused at once.
        let bad = socket2::SockAddr::from("[::1]:9".parse::<SocketAddr>().unwrap());
        let msgs = [(ok.clone(), b"one"), (bad, b"two"), (ok, b"3rd")]
            .into_iter()
            .map(|(to, d)| (to, None, std::iter::once(&d[..])));
        let mut scratch = super::SendScratch::default();
        assert_eq!(super::send_all(tx.as_raw_fd(), msgs, &mut scratch), (2, 1));
        assert_eq!(scratch.failed(), [1]);
        assert_eq!(drain(&rx), [b"one".to_vec(), b"3rd".to_vec()]);
    }

    /// A GSO send the kernel will not segment (here on a socket with
    /// `SO_NO_CHECK`, which UDP GSO refuses with EINVAL) is sent again one
    /// datagram at a time, in order, named with its error; nothing is lost.
    #[test]
    fn a_refused_gso_send_goes_one_datagram_at_a_time() {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let to = socket2::SockAddr::from(rx.local_addr().unwrap());
        let segments: [&[u8]; 3] = [b"aaaa", b"bbbb", b"cc"];
        let last: [&[u8]; 1] = [b"last"];
        let send = |tx: &std::net::UdpSocket, scratch: &mut super::SendScratch| {
            let msgs = [
                (to.clone(), None, segments.iter().copied()),
                (to.clone(), None, last.iter().copied()),
            ];
            super::send_all(tx.as_raw_fd(), msgs.into_iter(), scratch)
        };
        let want: Vec<Vec<u8>> = [&b"aaaa"[..], b"bbbb", b"cc", b"last"].map(<[u8]>::to_vec).into();
        let mut scratch = super::SendScratch::default();
        // Accepted as one GSO send first: nothing refused.
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(send(&tx, &mut scratch), (4, 0));
        assert!(scratch.gso_refusals().is_empty());
        assert_eq!(drain(&rx), want);
        let (one, len) = (1 as libc::c_int, size_of::<libc::c_int>() as libc::socklen_t);
        let (fd, value) = (tx.as_raw_fd(), (&one as *const libc::c_int).cast());
        // SAFETY: `value` points at a live c_int of `len` bytes; the kernel
        // copies it.
        let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_NO_CHECK, value, len) };
        assert_eq!(r, 0);
        assert_eq!(send(&tx, &mut scratch), (4, 0));
        assert_eq!(scratch.gso_refusals(), [(0, libc::EINVAL)]);
        assert!(scratch.failed().is_empty());
        assert_eq!(drain(&rx), want);
    }

    /// A message with a source address leaves from it, GSO or not, from
    /// an IPv4 wildcard socket (IP_PKTINFO) and from a dual-stack one to a
    /// v4-mapped destination (IPV6_PKTINFO, v4-mapped); without one the
    /// kernel picks.
    #[test]
    fn send_all_sends_from_the_address_given() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
        use std::os::fd::AsRawFd;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let port = rx.local_addr().unwrap().port();
        let second = Ipv4Addr::new(127, 0, 0, 2);
        let mapped = |a: Ipv4Addr| IpAddr::V6(a.to_ipv6_mapped());
        let dual = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
        dual.set_only_v6(false).unwrap();
        dual.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into()).unwrap();
        let cases: [(UdpSocket, SocketAddr, IpAddr); 2] = [
            (UdpSocket::bind("0.0.0.0:0").unwrap(), rx.local_addr().unwrap(), second.into()),
            (dual.into(), SocketAddr::new(mapped(Ipv4Addr::LOCALHOST), port), mapped(second)),
        ];
        for (tx, to, from) in cases {
            let to = socket2::SockAddr::from(to);
            let gso: [&[u8]; 2] = [b"gso1", b"g2"];
            let one: [&[u8]; 1] = [b"one"];
            let kernel: [&[u8]; 1] = [b"kernel"];
            let msgs = [
                (to.clone(), Some(from), gso.iter().copied()),
                (to.clone(), Some(from), one.iter().copied()),
                (to.clone(), None, kernel.iter().copied()),
            ];
            let mut scratch = super::SendScratch::default();
            assert_eq!(super::send_all(tx.as_raw_fd(), msgs.into_iter(), &mut scratch), (4, 0));
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((n, src)) = rx.recv_from(&mut buf) {
                got.push((buf[..n].to_vec(), src.ip()));
            }
            let (s, l) = (IpAddr::from(second), IpAddr::from(Ipv4Addr::LOCALHOST));
            let want = [(&b"gso1"[..], s), (b"g2", s), (b"one", s), (b"kernel", l)]
                .map(|(d, a)| (d.to_vec(), a));
            assert_eq!(got, want, "from {from}");
        }
    }

    /// The packet info a send carries reads back as its local address,
    /// beside a GSO segment size; the control area holds both families.
    #[test]
    fn send_cmsgs_carry_the_local_address_beside_the_segment_size() {
        let mut buf: super::SendCmsg = [0; 8];
        for from in ["127.0.0.2", "fd00::2", "::ffff:10.0.0.1"] {
            let from: std::net::IpAddr = from.parse().unwrap();
            for segment in [None, Some(1200)] {
                let len = super::write_send_cmsgs(&mut buf, segment, Some(from));
                // SAFETY: viewing the u64 array's first `len` ≤ 64 bytes.
                let raw = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
                assert_eq!(super::packet_info(raw).map(|p| p.local), Some(from), "{segment:?}");
            }
        }
        assert_eq!(super::write_send_cmsgs(&mut buf, None, None), 0);
    }

    /// A control area holding `msgs` as the kernel lays them out:
    /// `(level, type, data)` each behind a cmsghdr, CMSG_ALIGNed.
    fn control(msgs: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let hdr = size_of::<libc::cmsghdr>();
        let mut out = Vec::new();
        for &(level, ty, data) in msgs {
            let h = libc::cmsghdr {
                cmsg_len: (hdr + data.len()) as _,
                cmsg_level: level,
                cmsg_type: ty,
            };
            // SAFETY: cmsghdr is plain old data; viewed as its bytes.
            let raw = unsafe {
                std::slice::from_raw_parts((&h as *const libc::cmsghdr).cast::<u8>(), hdr)
            };
            out.extend_from_slice(raw);
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(size_of::<usize>()), 0);
        }
        out
    }

    #[test]
    fn pktinfo_destination_reads_ipi_addr_and_ipi6_addr() {
        use super::pktinfo_destination as dest;
        // in_pktinfo: ifindex 1, spec_dst 127.0.0.1, addr 239.11.0.2.
        let v4 = [1, 0, 0, 0, 127, 0, 0, 1, 239, 11, 0, 2];
        let c = control(&[(libc::IPPROTO_IP, libc::IP_PKTINFO, &v4)]);
        assert_eq!(dest(&c), Some("239.11.0.2".parse().unwrap()));
        // in6_pktinfo: addr ff12::b:3, ifindex 7; after an unrelated message.
        let mut v6 = [0u8; 20];
        v6[..16].copy_from_slice(&"ff12::b:3".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6[16] = 7;
        let c = control(&[
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &[0; 4]),
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &v6),
        ]);
        assert_eq!(dest(&c), Some("ff12::b:3".parse().unwrap()));
        // Nothing there, or cut short: no destination.
        assert_eq!(dest(&[]), None);
        let c = control(&[(libc::IPPROTO_IP, libc::IP_PKTINFO, &v4)]);
        for cut in 0..c.len() - 4 {
            assert_eq!(dest(&c[..cut]), None, "cut at {cut}");
        }
        // A header whose length is under its own size, or past the end.
        let mut bad = control(&[(libc::IPPROTO_IP, libc::IP_PKTINFO, &v4)]);
        bad[0] = 3;
        assert_eq!(dest(&bad), None);
        bad[0] = 200;
        assert_eq!(dest(&bad), None);
    }

    #[test]
    fn pktinfo_destination_never_panics_on_garbage() {
        let mut state = 0x2545_F491_u32;
        let mut buf = [0u8; 96];
        for _ in 0..20_000 {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            // Plausible headers now and then, so the walk goes deeper.
            if state.is_multiple_of(3) {
                buf[..8].copy_from_slice(&((state % 64) as usize).to_ne_bytes());
            }
            let _ = super::pktinfo_destination(&buf[..(state as usize % 97)]);
        }
    }

    /// On a socket asking for IP_PKTINFO, recvmmsg reports unicast to
    /// 127.0.0.1 as such and multicast to a lab group as that group; a
    /// socket that does not ask reports nothing.
    #[test]
    fn recv_batch_reports_the_destination_address() {
        use nix::sys::socket::{setsockopt, sockopt};
        use socket2::{Domain, Socket, Type};
        use std::net::{IpAddr, Ipv4Addr};
        use std::os::fd::AsRawFd;
        let group = ricochet_wire::group::ipv4_lab_group(0x0ABC);
        let rx = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        rx.set_multicast_all_v4(false).unwrap();
        rx.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into()).unwrap();
        rx.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
        let port = rx.local_addr().unwrap().as_socket().unwrap().port();
        let tx = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        tx.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
        tx.set_multicast_loop_v4(true).unwrap();
        let recv_all = |batch: &mut super::RecvBatch| {
            let mut got = Vec::new();
            for _ in 0..200 {
                let n = batch.recv(rx.as_raw_fd()).unwrap();
                for i in 0..n {
                    got.push((batch.data(i).unwrap().to_vec(), batch.destination(i)));
                }
                if got.len() >= 2 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            got
        };
        let send_both = || {
            tx.send_to(b"uni", &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()).unwrap();
            tx.send_to(b"multi", &SocketAddr::from((group, port)).into()).unwrap();
        };
        let mut batch = super::RecvBatch::new(4);
        send_both();
        let got = recv_all(&mut batch);
        assert_eq!(got, [(b"uni".to_vec(), None), (b"multi".to_vec(), None)]);
        setsockopt(&rx, sockopt::Ipv4PacketInfo, &true).unwrap();
        send_both();
        let got = recv_all(&mut batch);
        let want: [(Vec<u8>, Option<IpAddr>); 2] = [
            (b"uni".to_vec(), Some(Ipv4Addr::LOCALHOST.into())),
            (b"multi".to_vec(), Some(group.into())),
        ];
        assert_eq!(got, want);
        assert!(!batch.truncated(0) && !batch.truncated(1));
    }

    /// IPV6_RECVPKTINFO: the destination of unicast to ::1 is ::1.
    #[test]
    fn recv_batch_reports_the_ipv6_destination_address() {
        use nix::sys::socket::{setsockopt, sockopt};
        use std::net::Ipv6Addr;
        use std::os::fd::AsRawFd;
        let Ok(rx) = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) else {
            eprintln!("SKIPPED: no IPv6 loopback");
            return;
        };
        setsockopt(&rx, sockopt::Ipv6RecvPacketInfo, &true).unwrap();
        let tx = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        tx.send_to(b"six", rx.local_addr().unwrap()).unwrap();
        let mut batch = super::RecvBatch::new(2);
        let mut n = 0;
        for _ in 0..200 {
            n = batch.recv(rx.as_raw_fd()).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(n, 1);
        assert_eq!(batch.data(0), Some(&b"six"[..]));
        assert_eq!(batch.destination(0), Some(Ipv6Addr::LOCALHOST.into()));
    }
}
