//! The epoll backend: readiness from epoll, datagrams in with recvmmsg and
//! out with sendmmsg, in batches.

use std::os::fd::AsRawFd;
use std::time::Instant;

use socket2::Socket;

use super::TICK;
use super::sys::{self, Epoll, RecvBatch, SendScratch};
use super::worker::{Core, gso_runs};
use crate::retry::Transmit;

const TOKEN_INGRESS: u64 = 0;
const TOKEN_NACK: u64 = 1;
const TOKEN_INBOX: u64 = 2;

#[derive(Debug)]
pub(crate) struct Worker {
    core: Core,
    ingress: Socket,
    nack: Socket,
    epoll: Epoll,
    recv: RecvBatch,
    scratch: SendScratch,
    pending: Vec<Transmit>,
}

impl Worker {
    pub(crate) fn new(core: Core, ingress: Socket, nack: Socket) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.add(ingress.as_raw_fd(), TOKEN_INGRESS)?;
        epoll.add(nack.as_raw_fd(), TOKEN_NACK)?;
        epoll.add(core.wakers[core.index].fd(), TOKEN_INBOX)?;
        let recv = RecvBatch::new(core.opts.batch.max(1));
        Ok(Worker {
            core,
            ingress,
            nack,
            epoll,
            recv,
            scratch: SendScratch::default(),
            pending: Vec::new(),
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
                    TOKEN_INGRESS => self.drain(true),
                    TOKEN_NACK => self.drain(false),
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
                next_tick = now + TICK;
            }
        }
        self.core.publish();
    }

    fn drain(&mut self, ingress: bool) {
        let fd = if ingress { self.ingress.as_raw_fd() } else { self.nack.as_raw_fd() };
        loop {
            let n = match self.recv.recv(fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(worker = self.core.index, ingress, error = %e, "receive failed");
                    break;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                match self.recv.get(i) {
                    Some((data, _)) if ingress => self.core.on_ingress(now, data),
                    Some((data, Some(src))) => self.core.on_nack(now, src, data),
                    _ => {}
                }
            }
            if !ingress {
                self.flush();
            }
            if n < self.core.opts.batch {
                break;
            }
        }
    }

    /// Sends what the service queued, in order (retransmits before ACKs).
    fn flush(&mut self) {
        if self.core.outbox.transmits.is_empty() {
            return;
        }
        // Staged through a vector whose capacity is kept, so the core is
        // free to resolve destinations while the transmits are iterated.
        self.pending.extend(self.core.outbox.drain_transmits());
        let mut unroutable = 0u64;
        let mut gso = 0u64;
        let core = &mut self.core;
        let pending = &self.pending;
        let msgs = gso_runs(pending).filter_map(|run| {
            gso += u64::from(run.len() > 1);
            let Some(to) = core.destination(&pending[run.start]) else {
                unroutable += run.len() as u64;
                return None;
            };
            Some((to, pending[run].iter().map(|t| t.payload.as_bytes())))
        });
        let (sent, failed) = sys::send_all(self.nack.as_raw_fd(), msgs, &mut self.scratch);
        self.core.counters.sent += sent as u64;
        self.core.counters.send_errors += failed as u64 + unroutable;
        self.core.counters.gso_sends += gso;
        self.pending.clear();
    }
}
