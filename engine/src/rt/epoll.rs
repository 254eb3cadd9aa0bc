//! The epoll backend: readiness from epoll, datagrams in with recvmmsg and
//! out with sendmmsg, in batches. Every receive slot has a control area;
//! on the ingress socket the kernel fills it with the datagram's packet
//! info, whose destination the worker checks (`rt` docs, "What ingress
//! accepts").

use std::os::fd::AsRawFd;
use std::time::Instant;

use socket2::Socket;

use super::TICK;
use super::gso::{GsoLimit, GsoOrder, gso_runs};
use super::sys::{self, Epoll, RecvBatch, SendScratch};
use super::worker::{Core, Oversized, Sockets, fetch_ahead};
use crate::retry::{Dest, Transmit};

const TOKEN_INGRESS: u64 = 0;
const TOKEN_NACK: u64 = 1;
const TOKEN_INBOX: u64 = 2;
const TOKEN_UPSTREAM: u64 = 3;
const TOKEN_DHT: u64 = 4;
const TOKEN_GOSSIP: u64 = 5;

/// Which socket a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Ingress,
    Nack,
    Upstream,
    Dht,
    Gossip,
}

#[derive(Debug)]
pub(crate) struct Worker {
    core: Core,
    ingress: Socket,
    nack: Socket,
    upstream: Socket,
    dht: Option<Socket>,
    gossip: Option<Socket>,
    /// Egress sockets of the second and further egress interfaces.
    egress: Vec<Socket>,
    epoll: Epoll,
    recv: RecvBatch,
    scratch: SendScratch,
    pending: Vec<Transmit>,
    /// The runs of `pending` handed to the last `send_all`, in message
    /// order, so a refused message can be traced to its transmits.
    sent_runs: Vec<std::ops::Range<usize>>,
    /// Groups each round's transmits into GSO runs.
    gso_order: GsoOrder,
    /// What the kernel lets this worker send as one GSO send.
    gso: GsoLimit,
}

impl Worker {
    pub(crate) fn new(core: Core, socks: Sockets) -> std::io::Result<Self> {
        let Sockets { ingress, nack, upstream, dht, gossip, egress } = socks;
        let epoll = Epoll::new()?;
        epoll.add(ingress.as_raw_fd(), TOKEN_INGRESS)?;
        epoll.add(nack.as_raw_fd(), TOKEN_NACK)?;
        epoll.add(upstream.as_raw_fd(), TOKEN_UPSTREAM)?;
        if let Some(d) = &dht {
            epoll.add(d.as_raw_fd(), TOKEN_DHT)?;
        }
        if let Some(g) = &gossip {
            epoll.add(g.as_raw_fd(), TOKEN_GOSSIP)?;
        }
        epoll.add(core.wakers[core.index].fd(), TOKEN_INBOX)?;
        let recv = RecvBatch::new(core.opts.batch.max(1));
        Ok(Worker {
            core,
            ingress,
            nack,
            upstream,
            dht,
            gossip,
            egress,
            epoll,
            recv,
            scratch: SendScratch::default(),
            pending: Vec::new(),
            sent_runs: Vec::new(),
            gso_order: GsoOrder::default(),
            gso: GsoLimit::default(),
        })
    }

    pub(crate) fn run(mut self) {
        let mut tokens = Vec::with_capacity(16);
        let mut next_tick = Instant::now() + TICK;
        while !self.core.shared.stopping() {
            let wait = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.epoll.wait(&mut tokens, wait.as_millis().min(100) as i32 + 1) {
                tracing::error!(worker = self.core.index, error = %e, "epoll_wait failed; worker stops");
                self.core.shared.fail();
                break;
            }
            for &t in &tokens {
                match t {
                    TOKEN_INGRESS => self.drain(Source::Ingress),
                    TOKEN_NACK => self.drain(Source::Nack),
                    TOKEN_UPSTREAM => self.drain(Source::Upstream),
                    TOKEN_DHT => self.drain(Source::Dht),
                    TOKEN_GOSSIP => self.drain(Source::Gossip),
                    _ => self.core.wakers[self.core.index].drain(),
                }
            }
            // Drained every round, not only on a wake: wakes coalesce.
            if self.core.drain_inbox(Instant::now()) {
                self.flush();
            }
            self.core.wake_peers(|_, fd| fd.wake());
            let now = Instant::now();
            if now >= next_tick {
                self.core.tick(now);
                self.flush();
                next_tick = now + TICK;
            }
        }
        self.core.publish();
    }

    fn drain(&mut self, source: Source) {
        let fd = match source {
            Source::Ingress => self.ingress.as_raw_fd(),
            Source::Nack => self.nack.as_raw_fd(),
            Source::Upstream => self.upstream.as_raw_fd(),
            Source::Dht => match &self.dht {
                Some(d) => d.as_raw_fd(),
                None => return,
            },
            Source::Gossip => match &self.gossip {
                Some(g) => g.as_raw_fd(),
                None => return,
            },
        };
        loop {
            let n = match self.recv.recv(fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(worker = self.core.index, ?source, error = %e, "receive failed");
                    break;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                if source == Source::Nack {
                    // The batch's cache misses overlap (`Core::prefetch_nack`).
                    for j in fetch_ahead(i, n) {
                        if let Some(d) = self.recv.data(j).filter(|_| !self.recv.truncated(j)) {
                            self.core.prefetch_nack(now, d);
                        }
                    }
                }
                let Some(data) = self.recv.data(i) else { continue };
                if self.recv.truncated(i) {
                    // Longer than a slot, which holds any UDP datagram: not
                    // seen on today's kernels, labelled as io_uring does.
                    let on = match source {
                        Source::Ingress => Oversized::Ingress {
                            src: self.recv.source(i).map(|a| a.ip()),
                            dest: self.recv.destination(i),
                        },
                        Source::Nack => Oversized::Nack,
                        _ => Oversized::Other,
                    };
                    self.core.on_oversized(on, data.len(), data.len() + 1);
                    continue;
                }
                match source {
                    Source::Ingress => {
                        let src = self.recv.source(i).map(|a| a.ip());
                        let dest = self.recv.destination(i);
                        self.core.on_ingress(now, data, src, dest);
                    }
                    Source::Nack | Source::Upstream | Source::Dht | Source::Gossip => {
                        let Some(src) = self.recv.source(i) else { continue };
                        match source {
                            Source::Nack => {
                                let local = self.recv.packet_info(i).map(|p| p.local);
                                self.core.on_nack(now, src, local, data)
                            }
                            Source::Upstream => self.core.on_upstream(now, src, data),
                            Source::Gossip => self.core.on_gossip(now, src, data),
                            _ => self.core.on_dht(now, src, data),
                        }
                    }
                }
            }
            self.flush();
            if n < self.core.opts.batch {
                break;
            }
        }
    }

    /// Sends what the service queued, grouped into GSO runs by
    /// destination ([`GsoOrder`]: retransmits still before ACKs):
    /// Proxied NACKs from the upstream socket, everything else from the
    /// NACK socket.
    fn flush(&mut self) {
        self.flush_dht();
        self.flush_gossip();
        if self.core.outbox.transmits.is_empty() {
            return;
        }
        self.pending.extend(self.core.outbox.drain_transmits());
        self.gso_order.arrange(&mut self.pending, self.gso.max_segment());
        for upstream in [false, true] {
            let fd = if upstream { self.upstream.as_raw_fd() } else { self.nack.as_raw_fd() };
            let mut unroutable = 0u64;
            let mut gso = 0u64;
            let core = &mut self.core;
            let pending = &self.pending;
            let sent_runs = &mut self.sent_runs;
            sent_runs.clear();
            let msgs = gso_runs(pending, self.gso.max_segment())
                .filter(|run| matches!(pending[run.start].dest, Dest::Upstream(_)) == upstream)
                .filter_map(|run| {
                    gso += u64::from(run.len() > 1);
                    let Some(to) = core.destination(&pending[run.start]) else {
                        unroutable += run.len() as u64;
                        return None;
                    };
                    let from = core.source(&pending[run.start]);
                    sent_runs.push(run.clone());
                    Some((to, from, pending[run].iter().map(|t| t.payload.as_bytes())))
                });
            let (sent, failed) = sys::send_all(fd, msgs, &mut self.scratch);
            self.core.counters.sent += sent as u64;
            self.core.counters.send_errors += failed as u64 + unroutable;
            self.core.counters.gso_sends += gso;
            for &m in self.scratch.failed() {
                for t in &self.pending[self.sent_runs[m].clone()] {
                    self.core.counters.response_send_errors.count(&t.payload);
                }
            }
            self.learn_gso_refusals();
        }
        self.send_to_extra_egress();
        self.pending.clear();
        self.core.reply_sources.trim();
    }

    /// Counts the GSO sends of the last `send_all` that the kernel would
    /// not segment (their datagrams went one by one) and narrows GSO.
    fn learn_gso_refusals(&mut self) {
        for &(m, errno) in self.scratch.gso_refusals() {
            let run = &self.pending[self.sent_runs[m].clone()];
            let segment = run.first().map_or(0, |t| t.payload.as_bytes().len());
            let to = run.first().and_then(|t| self.core.destination(t)).and_then(|a| a.as_socket());
            let sourced = run.first().and_then(|t| self.core.source(t)).is_some();
            let index = self.core.index;
            self.gso.on_refused(index, errno, segment, to, sourced, &mut self.core.counters);
        }
    }

    /// Sends a copy of every multicast retransmit in `pending` out of each
    /// further egress interface.
    fn send_to_extra_egress(&mut self) {
        for i in 0..self.egress.len() {
            let fd = self.egress[i].as_raw_fd();
            let core = &mut self.core;
            let pending = &self.pending;
            let sent_runs = &mut self.sent_runs;
            sent_runs.clear();
            let msgs = gso_runs(pending, self.gso.max_segment())
                .filter(|run| matches!(pending[run.start].dest, Dest::Group(_)))
                .filter_map(|run| {
                    let to = core.destination(&pending[run.start])?;
                    sent_runs.push(run.clone());
                    Some((to, None, pending[run].iter().map(|t| t.payload.as_bytes())))
                });
            let (sent, failed) = sys::send_all(fd, msgs, &mut self.scratch);
            self.core.counters.sent += sent as u64;
            self.core.counters.send_errors += failed as u64;
            self.learn_gso_refusals();
        }
    }

    /// Sends what the DHT node queued, from the DHT socket.
    fn flush_dht(&mut self) {
        let (Some(sock), Some(shard)) = (&self.dht, self.core.dht.as_mut()) else { return };
        if !shard.has_transmits() {
            return;
        }
        let queued: Vec<crate::dht::Transmit> = shard.drain_transmits().collect();
        let msgs = queued.iter().map(|t| {
            (socket2::SockAddr::from(t.dest), None, std::iter::once(t.payload.as_slice()))
        });
        let (sent, failed) = sys::send_all(sock.as_raw_fd(), msgs, &mut self.scratch);
        shard.counters.send_errors += failed as u64;
        self.core.counters.sent += sent as u64;
        self.core.counters.send_errors += failed as u64;
    }

    /// Sends the rumor ACKs the gossip shard queued, from the gossip
    /// socket.
    fn flush_gossip(&mut self) {
        let (Some(sock), Some(g)) = (&self.gossip, self.core.gossip.as_mut()) else { return };
        if !g.has_transmits() {
            return;
        }
        let queued: Vec<(std::net::SocketAddr, Vec<u8>)> = g.drain_transmits().collect();
        let msgs = queued.iter().map(|(dest, ack)| {
            (socket2::SockAddr::from(*dest), None, std::iter::once(ack.as_slice()))
        });
        let (sent, failed) = sys::send_all(sock.as_raw_fd(), msgs, &mut self.scratch);
        g.counters.send_errors += failed as u64;
        self.core.counters.sent += sent as u64;
        self.core.counters.send_errors += failed as u64;
    }
}
