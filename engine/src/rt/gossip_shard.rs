//! Gossip on the workers (DESIGN.md § "Process model"): worker `i` owns
//! member `i` of the SO_REUSEPORT group on `--gossip-port` and shard `i`
//! of the rumor-dedup LRU ([`crate::gossip::shard::RumorShard`]); the
//! control thread's gossip socket is the group's last member.
//!
//! # Contract
//! - Steering ([`super::sys::gossip_steering_program`]): a G3 rumor goes
//!   to a worker chosen by its MAC's last word (spreading the load); every
//!   other gossip frame to the control thread's socket, whose engine
//!   drives membership, anti-entropy, G4, G6 and our own sends.
//! - A rumor's id is BLAKE3 of its payload, not at a fixed offset, so the
//!   kernel cannot pick its owner: the reading worker checks the MAC,
//!   computes the id and hands the rumor to the worker owning it
//!   ([`crate::gossip::dedup::shard_of`]), one hop, counted in
//!   [`GossipSnapshot::forwarded`]. The reader also refuses replayed and
//!   stale datagrams (each shard keeps its own replay guard, its clock set
//!   from the system clock every tick). The owner rate-limits the source,
//!   ACKs the copy from the gossip port (G5) and decides its dedup; a
//!   duplicate ends there. Only an admitted copy — the first, or one
//!   claiming a forwarding route no earlier copy could — goes on to the
//!   control thread ([`GossipInbound::Admitted`]).
//! - The control thread's queue is bounded ([`INBOUND_DEPTH`]): the owner
//!   reserves a place before deciding, and when there is none it drops the
//!   copy unACKed (counted in [`GossipSnapshot::inbound_full`]), so the
//!   sender retries; nothing is admitted that the engine does not get.
//! - Without the steering program (or before the control socket has
//!   joined the group) the kernel spreads datagrams by address: a worker
//!   that reads a frame other than G3 passes it to the control thread
//!   unopened ([`GossipInbound::Datagram`]); the control thread hands a G3
//!   it reads to a worker ([`super::Control::gossip_datagram`]).
//! - Rumors this member originates are recorded in the owner's shard
//!   ([`super::Control::gossip_mark`]) so copies coming back are not
//!   delivered here again.

use std::net::SocketAddr;
use std::time::Instant;

use ricochet_wire::mac::ClusterKey;

use crate::gossip::dedup::Admission;
use crate::gossip::shard::{RumorShard, ShardStats, Verdict};
use crate::gossip::{self, RumorId};
use crate::wallclock::unix_ms;

/// Datagrams and admitted rumors queued for the control thread before
/// workers push back (see the module contract).
pub const INBOUND_DEPTH: usize = 4096;

/// What workers hand the control thread's gossip engine.
#[derive(Debug)]
pub enum GossipInbound {
    /// A datagram for the engine as it came off the wire (not a rumor).
    Datagram {
        /// Its source.
        from: SocketAddr,
        /// Its bytes, MAC included.
        bytes: Vec<u8>,
    },
    /// A rumor copy a worker's dedup shard admitted.
    Admitted {
        /// Its source.
        from: SocketAddr,
        /// The G3 frame, MAC checked and removed.
        body: Vec<u8>,
        /// What it may still do.
        admission: Admission,
    },
}

/// What the runtime needs to run gossip on the workers.
#[derive(Debug, Clone)]
pub struct GossipOptions {
    /// `--gossip-port`: every worker's member binds it on the NACK bind
    /// address (0: the first member takes an ephemeral port, the others
    /// join it).
    pub port: u16,
    /// The cluster key (MACs in, ACKs out).
    pub key: ClusterKey,
    /// The engine's configuration: dedup capacity, per-peer rate, dual
    /// cube and datagram budget are split over the shards.
    pub config: gossip::Config,
    /// The control thread's queue.
    pub inbound: tokio::sync::mpsc::Sender<GossipInbound>,
}

/// A worker's gossip state, published every tick.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GossipSnapshot {
    /// Datagrams read from this worker's gossip socket.
    pub datagrams: u64,
    /// Non-rumor datagrams passed to the control thread.
    pub passed: u64,
    /// Rumors read here and handed to the worker owning their id.
    pub forwarded: u64,
    /// Rumors handed here by the worker that read them (or by the
    /// control thread).
    pub forwarded_in: u64,
    /// Datagrams dropped because the control thread's queue was full.
    pub inbound_full: u64,
    /// ACKs that could not be queued for sending.
    pub send_errors: u64,
    /// Rumor ids held by this shard.
    pub dedup_len: usize,
    /// The most ids this shard holds.
    pub dedup_capacity: usize,
    /// The shard's own counters.
    pub shard: ShardStats,
}

/// One worker's gossip member.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) shard: RumorShard,
    inbound: tokio::sync::mpsc::Sender<GossipInbound>,
    acks: Vec<(SocketAddr, Vec<u8>)>,
    scratch: Vec<u8>,
    pub(crate) counters: GossipSnapshot,
}

/// The first two bytes of a G3 frame.
const G3_MAGIC: [u8; 2] = [0x47, 0x33];

/// Whether a datagram claims to be a G3 rumor (unauthenticated peek).
pub(crate) fn is_rumor(datagram: &[u8]) -> bool {
    datagram.get(..2) == Some(&G3_MAGIC[..])
}

/// What the reading worker should do with a gossip datagram.
#[derive(Debug)]
pub(crate) enum Read<'a> {
    /// Nothing more (passed on to the control thread, or dropped).
    Done,
    /// A rumor this worker owns: decide it here.
    Own(RumorId, &'a [u8]),
    /// A rumor another worker owns.
    Forward(usize, RumorId, &'a [u8]),
}

impl Shard {
    pub(crate) fn new(index: usize, workers: usize, opts: &GossipOptions) -> Shard {
        let mut material = opts.config.seed.to_vec();
        material.extend_from_slice(b"rumor shard");
        material.extend_from_slice(&(index as u64).to_be_bytes());
        let h = blake3::hash(&material);
        let hash_key = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let mut shard = RumorShard::new(opts.key.clone(), &opts.config, workers, hash_key);
        shard.set_unix_time(Instant::now(), unix_ms());
        Shard {
            counters: GossipSnapshot { dedup_capacity: shard.capacity(), ..Default::default() },
            shard,
            inbound: opts.inbound.clone(),
            acks: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// A datagram read from this worker's gossip socket (`index` is this
    /// worker's).
    pub(crate) fn read<'a>(&mut self, index: usize, from: SocketAddr, data: &'a [u8]) -> Read<'a> {
        self.counters.datagrams += 1;
        if !is_rumor(data) {
            self.pass(from, data);
            return Read::Done;
        }
        match self.shard.open(Instant::now(), data) {
            Some((id, owner, body)) if owner == index => Read::Own(id, body),
            Some((id, owner, body)) => {
                self.counters.forwarded += 1;
                Read::Forward(owner, id, body)
            }
            None => Read::Done,
        }
    }

    /// Hands a datagram that is not a rumor to the control thread.
    fn pass(&mut self, src: SocketAddr, data: &[u8]) {
        let from = crate::addr::canonical(src);
        let msg = GossipInbound::Datagram { from, bytes: data.to_vec() };
        match self.inbound.try_send(msg) {
            Ok(()) => self.counters.passed += 1,
            Err(_) => self.counters.inbound_full += 1,
        }
    }

    /// Decides a rumor this worker owns: ACK queued back to `src` (as the
    /// socket reported it), admitted copies handed to the control thread
    /// under the canonical address the engine knows the member by.
    pub(crate) fn decide(&mut self, now: Instant, src: SocketAddr, id: &RumorId, body: &[u8]) {
        let Ok(permit) = self.inbound.try_reserve() else {
            self.counters.inbound_full += 1;
            return;
        };
        let from = crate::addr::canonical(src);
        let mut ack = std::mem::take(&mut self.scratch);
        let verdict = self.shard.admit(now, from, id, body, &mut ack);
        if !ack.is_empty() {
            self.acks.push((src, ack));
        } else {
            self.scratch = ack;
        }
        if let Verdict::Admitted(admission) = verdict {
            permit.send(GossipInbound::Admitted { from, body: body.to_vec(), admission });
        }
    }

    /// Whether ACKs wait to be sent.
    pub(crate) fn has_transmits(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Takes the ACKs to send, `(destination, sealed datagram)`.
    pub(crate) fn drain_transmits(&mut self) -> std::vec::Drain<'_, (SocketAddr, Vec<u8>)> {
        self.acks.drain(..)
    }

    /// Sets the shard's clock from the system clock and forgets idle
    /// rate-limit entries and replay records out of the window.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.shard.set_unix_time(now, unix_ms());
        self.shard.sweep(now);
    }

    /// The published state.
    pub(crate) fn snapshot(&mut self) -> GossipSnapshot {
        self.counters.dedup_len = self.shard.len();
        self.counters.shard = self.shard.stats;
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ricochet_wire::gossip::{DigestRepr, GossipFrame, RumorRepr, rumor_id};
    use ricochet_wire::mac::{GOSSIP_OVERHEAD, Stamp};

    use super::*;
    use crate::gossip::dedup::{DELIVERED, FWD_FALLBACK, FWD_PRIMARY, shard_of};
    use crate::rt::{Shared, sys::EventFd, worker};

    fn key() -> ClusterKey {
        ClusterKey::new([5; 32])
    }

    /// A fresh v2 datagram stamped with the system clock.
    fn seal(f: &GossipFrame<'_>) -> Vec<u8> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let mut raw = vec![0u8; f.buffer_len()];
        f.emit(&mut raw).unwrap();
        let stamp = Stamp {
            sender: 0x7E57,
            time_ms: unix_ms(),
            counter: COUNTER.fetch_add(1, Ordering::Relaxed),
        };
        key().seal_gossip_vec(&raw, 0, &stamp).unwrap()
    }

    fn rumor(dim: u8, payload: &[u8]) -> Vec<u8> {
        seal(&GossipFrame::Rumor(RumorRepr {
            hop_count: 0,
            from_dimension: dim,
            priority: 1,
            topic: b"members",
            payload,
        }))
    }

    /// A payload whose rumor id worker `w` of 2 owns.
    fn owned_by(w: usize) -> Vec<u8> {
        (0u32..).map(|i| i.to_be_bytes().to_vec()).find(|p| shard_of(&rumor_id(p), 2) == w).unwrap()
    }

    /// Two real worker cores (no sockets needed: datagrams are fed as if
    /// read) sharing one control-thread queue.
    fn cores() -> (Vec<worker::Core>, tokio::sync::mpsc::Receiver<GossipInbound>) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut opts = crate::rt::dht_shard::tests::options(2);
        opts.dht = None;
        opts.gossip = Some(GossipOptions {
            port: 0,
            key: key(),
            config: gossip::Config::new([3; 32]),
            inbound: tx,
        });
        let shared = Shared::for_test(2);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| crossbeam_channel::bounded(64)).unzip();
        let wakers: Vec<Arc<EventFd>> = (0..2).map(|_| Arc::new(EventFd::new().unwrap())).collect();
        let cores = rxs
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                worker::Core::new(i, &opts, rx, txs.clone(), wakers.clone(), shared.clone())
            })
            .collect();
        (cores, rx)
    }

    fn acks(c: &mut worker::Core) -> Vec<(SocketAddr, Vec<u8>)> {
        c.gossip.as_mut().unwrap().drain_transmits().collect()
    }

    /// The path without the steering program: a rumor read by the worker
    /// that does not own its id is decided by its owner, which ACKs every
    /// copy and hands only the first to the control thread; other frames
    /// go to the control thread whole; forgeries stop at the reader.
    #[test]
    fn rumors_meet_the_shard_owning_their_id_and_duplicates_stop_there() {
        let (mut cores, mut inbound) = cores();
        let now = Instant::now();
        // A v4-mapped source, as a dual-stack socket reports it.
        let src: SocketAddr = "[::ffff:10.0.0.7]:9310".parse().unwrap();
        let peer: SocketAddr = "10.0.0.7:9310".parse().unwrap();
        let payload = owned_by(1);
        let id = rumor_id(&payload);
        let copy = rumor(0, &payload);

        cores[0].on_gossip(now, src, &copy);
        assert!(acks(&mut cores[0]).is_empty(), "the reader does not decide");
        assert_eq!(cores[0].gossip.as_ref().unwrap().counters.forwarded, 1);
        cores[1].drain_inbox(now);
        let sent = acks(&mut cores[1]);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, src, "ACKed to the address as read");
        let ack = key().open_gossip(&sent[0].1).unwrap().frame;
        assert!(
            matches!(GossipFrame::parse(ack), Ok(GossipFrame::RumorAck(a)) if a.rumor_id == id)
        );
        match inbound.try_recv().unwrap() {
            GossipInbound::Admitted { from, body, admission } => {
                assert_eq!(from, peer, "canonical for the engine");
                assert_eq!(body, copy[..copy.len() - GOSSIP_OVERHEAD]);
                assert!(admission.deliver);
            }
            other => panic!("{other:?}"),
        }

        // The same copy again, now read by its owner: ACKed, absorbed.
        cores[1].on_gossip(now, src, &copy);
        assert_eq!(acks(&mut cores[1]).len(), 1);
        assert!(inbound.try_recv().is_err(), "duplicates never reach the control thread");
        let st = cores[1].gossip.as_mut().unwrap().snapshot();
        assert_eq!((st.shard.admitted, st.shard.duplicates, st.forwarded_in), (1, 1, 1));
        assert_eq!(st.dedup_len, 1);

        // Our own rumor, marked by the control thread, coming back.
        let mine = owned_by(0);
        assert!(cores[0].gossip.is_some());
        cores[0]
            .gossip
            .as_mut()
            .unwrap()
            .shard
            .mark(rumor_id(&mine), DELIVERED | FWD_PRIMARY | FWD_FALLBACK);
        cores[0].on_gossip(now, src, &rumor(2, &mine));
        assert_eq!(acks(&mut cores[0]).len(), 1);
        assert!(inbound.try_recv().is_err());

        // A G2 probe goes to the control thread whole; a forged rumor and
        // a truncated one are dropped where they are read.
        let probe = seal(&GossipFrame::Digest(DigestRepr { fingerprint: 9, matched: false }));
        cores[0].on_gossip(now, src, &probe);
        assert!(matches!(
            inbound.try_recv().unwrap(),
            GossipInbound::Datagram { from, bytes } if from == peer && bytes == probe
        ));
        let mut forged = copy.clone();
        let n = forged.len();
        forged[n - 1] ^= 0x80;
        cores[0].on_gossip(now, src, &forged);
        cores[0].on_gossip(now, src, &copy[..12]);
        let st = cores[0].gossip.as_mut().unwrap().snapshot();
        assert_eq!(st.shard.drops.get("bad_mac"), 1);
        assert_eq!(st.shard.drops.get("truncated"), 1);
        assert_eq!(st.forwarded, 1);
        cores[1].drain_inbox(now);
        assert!(acks(&mut cores[1]).is_empty());
    }

    /// A full control-thread queue: the copy is dropped unACKed and not
    /// recorded, so the sender's retry is admitted.
    #[test]
    fn a_full_control_queue_leaves_the_rumor_for_the_retry() {
        let (mut cores, mut inbound) = cores();
        let now = Instant::now();
        let src: SocketAddr = "10.0.0.9:9310".parse().unwrap();
        let fill: Vec<Vec<u8>> = (0..8u8).map(|i| vec![0x47, 0x31, i]).collect();
        for d in &fill {
            cores[0].on_gossip(now, src, d);
        }
        let payload = owned_by(0);
        cores[0].on_gossip(now, src, &rumor(1, &payload));
        assert!(acks(&mut cores[0]).is_empty(), "not ACKed: the sender retries");
        assert_eq!(cores[0].gossip.as_ref().unwrap().counters.inbound_full, 1);
        while inbound.try_recv().is_ok() {}
        cores[0].on_gossip(now, src, &rumor(1, &payload));
        assert_eq!(acks(&mut cores[0]).len(), 1);
        assert!(matches!(inbound.try_recv(), Ok(GossipInbound::Admitted { .. })));
    }
}
