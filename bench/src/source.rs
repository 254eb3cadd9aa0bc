//! What a shard-proxy would publish: flows stamped with the proxy's HashKey,
//! SeqNums per flow from 1, random TxIDs on the shard groups, a frame
//! version mix and a payload size distribution.
//!
//! A flow is what the proxy counts SeqNums for: (sender, group index,
//! SubtreeID), hashed with [`ricochet_wire::flow::hash_key`]. For
//! transactions the group is the TxID's shard, so a tx flow's frames all
//! carry TxIDs in that flow's shard (random bits below the shard prefix).
//! Block control and anchor frames go to the block group (0xFFFE); the
//! proxy hashes anchors under the virtual index 0xFFF9 with a zero
//! SubtreeID, block control under 0xFFFE. Fragments (0x03) are tx
//! fragments and take SeqNums from the tx flows, as the proxy does. Legacy
//! (0x01) frames carry no key and are never cached.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ricochet_wire::flow::hash_key;
use ricochet_wire::frame::{Extra, FragmentInfo, FrameRepr, FrameVersion};
use ricochet_wire::group::INDEX_BLOCK;

use crate::rng::Rng;

/// The proxy's virtual group index for anchor flows (HashKey input only).
pub const INDEX_ANCHOR_VIRTUAL: u16 = 0xFFF9;

/// Frame classes the generator can emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Class {
    /// 0x02 transaction.
    Tx,
    /// 0x03 fragment of a transaction.
    Fragment,
    /// 0x04 block control.
    Block,
    /// 0x06 anchor transaction.
    Anchor,
    /// 0x01 legacy BRC-12 (unkeyed, never cached).
    Legacy,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 5] =
        [Class::Tx, Class::Fragment, Class::Block, Class::Anchor, Class::Legacy];

    /// The name used in `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Tx => "tx",
            Class::Fragment => "fragment",
            Class::Block => "block",
            Class::Anchor => "anchor",
            Class::Legacy => "legacy",
        }
    }

    /// Whether the engine caches frames of this class.
    pub fn cached(self) -> bool {
        self != Class::Legacy
    }
}

/// Payload size distribution (bytes of payload after the header).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PayloadDist {
    /// Always `n` bytes.
    Fixed(usize),
    /// Uniform in `[lo, hi]`.
    Uniform(usize, usize),
    /// Roughly the sizes of real transactions: 60 % 150–400 B, 30 %
    /// 400–1000 B, 9 % 1–4 KB, 1 % 4–16 KB.
    TxLike,
}

impl PayloadDist {
    /// Largest payload it can draw.
    pub fn max(&self) -> usize {
        match *self {
            PayloadDist::Fixed(n) => n,
            PayloadDist::Uniform(_, hi) => hi,
            PayloadDist::TxLike => 16_000,
        }
    }

    /// Draws a size.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> usize {
        match *self {
            PayloadDist::Fixed(n) => n,
            PayloadDist::Uniform(lo, hi) => rng.range_inclusive(lo as u64, hi as u64) as usize,
            PayloadDist::TxLike => {
                let (lo, hi) = match rng.below(100) {
                    0..60 => (150, 400),
                    60..90 => (400, 1_000),
                    90..99 => (1_000, 4_000),
                    _ => (4_000, 16_000),
                };
                rng.range_inclusive(lo, hi) as usize
            }
        }
    }
}

impl FromStr for PayloadDist {
    type Err = String;

    /// `300`, `fixed:300`, `uniform:100-1000` or `txlike`.
    fn from_str(s: &str) -> Result<Self, String> {
        const MAX: usize = ricochet_wire::frame::MAX_DATAGRAM - 104;
        let bad = || format!("{s:?}: expected N, fixed:N, uniform:LO-HI or txlike (N ≤ {MAX})");
        let num = |t: &str| t.trim().parse::<usize>().ok().filter(|&n| n <= MAX);
        if s == "txlike" {
            return Ok(PayloadDist::TxLike);
        }
        if let Some(r) = s.strip_prefix("uniform:") {
            let (lo, hi) = r.split_once('-').ok_or_else(bad)?;
            let (lo, hi) = (num(lo).ok_or_else(bad)?, num(hi).ok_or_else(bad)?);
            return if lo <= hi { Ok(PayloadDist::Uniform(lo, hi)) } else { Err(bad()) };
        }
        num(s.strip_prefix("fixed:").unwrap_or(s)).map(PayloadDist::Fixed).ok_or_else(bad)
    }
}

/// Relative weights of each class in the published stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 5],
}

impl Default for Mix {
    fn default() -> Self {
        Mix { weights: [1, 0, 0, 0, 0] }
    }
}

impl Mix {
    /// The weight of a class.
    pub fn weight(&self, c: Class) -> u32 {
        self.weights[c as usize]
    }

    fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// Picks a class in proportion to the weights.
    #[inline]
    pub fn pick(&self, rng: &mut Rng) -> Class {
        let mut x = rng.below(self.total());
        for c in Class::ALL {
            let w = u64::from(self.weights[c as usize]);
            if x < w {
                return c;
            }
            x -= w;
        }
        Class::Tx
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `tx=90,block=5,anchor=3,fragment=1,legacy=1` (missing classes weigh 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 5];
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let c = Class::ALL.into_iter().find(|c| c.name() == name.trim()).ok_or_else(|| {
                format!("unknown frame class {name:?} (tx, fragment, block, anchor, legacy)")
            })?;
            weights[c as usize] =
                w.trim().parse().map_err(|_| format!("bad weight in {part:?}"))?;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err("the mix needs at least one class with a weight above 0".into());
        }
        Ok(Mix { weights })
    }
}

/// One flow.
#[derive(Debug, Clone)]
pub struct Flow {
    /// HashKey stamped on its frames.
    pub hash_key: u64,
    /// Group index its frames are sent to.
    pub group: u16,
    /// SubtreeID carried (zero for block and anchor flows).
    pub subtree_id: [u8; 32],
    /// Last SeqNum stamped (0 = none yet).
    pub last_seq: u64,
    /// Tx flows (which also carry fragments), block or anchor.
    pub class: Class,
}

/// Every flow of a publisher, and the stream's shape.
#[derive(Debug, Clone)]
pub struct FlowSet {
    /// All flows (tx flows first).
    pub flows: Vec<Flow>,
    tx: Vec<u32>,
    block: Vec<u32>,
    anchor: Vec<u32>,
    mix: Mix,
    shard_bits: u8,
}

/// The frame the generator just wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    /// Bytes written.
    pub len: usize,
    /// Group index to send it to.
    pub group: u16,
    /// Index of its flow (None for legacy).
    pub flow: Option<u32>,
    /// SeqNum stamped (0 for legacy).
    pub seq: u64,
    /// Class.
    pub class: Class,
}

impl FlowSet {
    /// `tx_flows` transaction flows over the `2^shard_bits` shard groups,
    /// plus one block and one anchor flow per four tx flows when the mix
    /// asks for those classes. Senders are synthetic `fd00::1:i` addresses
    /// (the proxy hashes the original sender's address); SubtreeIDs come
    /// from `seed`.
    pub fn new(tx_flows: usize, mix: Mix, shard_bits: u8, seed: u64) -> Self {
        let mut rng = Rng::stream(seed, 0xF10E);
        let tx_flows = tx_flows.max(1);
        let groups = 1u32 << shard_bits;
        let mut flows = Vec::new();
        let sender =
            |i: usize| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 1, (i >> 16) as u16, i as u16));
        let mut set = FlowSet {
            flows: Vec::new(),
            tx: vec![],
            block: vec![],
            anchor: vec![],
            mix,
            shard_bits,
        };
        for i in 0..tx_flows {
            let mut subtree_id = [0u8; 32];
            rng.fill(&mut subtree_id);
            let group = (i as u32 % groups) as u16;
            let key = hash_key(sender(i / groups as usize), u32::from(group), &subtree_id);
            set.tx.push(flows.len() as u32);
            flows.push(Flow { hash_key: key, group, subtree_id, last_seq: 0, class: Class::Tx });
        }
        let extra = tx_flows.div_ceil(4);
        if mix.weight(Class::Block) > 0 {
            for i in 0..extra {
                let key = hash_key(sender(i), u32::from(INDEX_BLOCK), &[0; 32]);
                set.block.push(flows.len() as u32);
                flows.push(Flow {
                    hash_key: key,
                    group: INDEX_BLOCK,
                    subtree_id: [0; 32],
                    last_seq: 0,
                    class: Class::Block,
                });
            }
        }
        if mix.weight(Class::Anchor) > 0 {
            for i in 0..extra {
                let key = hash_key(sender(i), u32::from(INDEX_ANCHOR_VIRTUAL), &[0; 32]);
                set.anchor.push(flows.len() as u32);
                flows.push(Flow {
                    hash_key: key,
                    group: INDEX_BLOCK,
                    subtree_id: [0; 32],
                    last_seq: 0,
                    class: Class::Anchor,
                });
            }
        }
        set.flows = flows;
        set
    }

    /// Group indices the stream is sent to (what a receiver must join).
    pub fn groups(&self) -> Vec<u16> {
        let mut g: Vec<u16> = (0..1u16 << self.shard_bits).collect();
        if !self.block.is_empty() || !self.anchor.is_empty() {
            g.push(INDEX_BLOCK);
        }
        g
    }

    /// Largest frame [`FlowSet::make`] can write with `dist`.
    pub fn max_frame(dist: &PayloadDist) -> usize {
        ricochet_wire::frame::FRAGMENT_HEADER_LEN + dist.max()
    }

    /// Writes the next frame of the stream into `buf` (at least
    /// [`FlowSet::max_frame`] bytes): picks a class by the mix and a flow
    /// uniformly, stamps the flow's next SeqNum, draws a random TxID in the
    /// flow's shard and a payload from `pool` (random bytes, at least
    /// `dist.max() + 4096` long). Allocation-free.
    pub fn make(&mut self, rng: &mut Rng, dist: &PayloadDist, pool: &[u8], buf: &mut [u8]) -> Made {
        let class = self.mix.pick(rng);
        let len = dist.sample(rng);
        let off = rng.below((pool.len() - len).max(1) as u64) as usize;
        let payload = &pool[off..off + len];
        let mut id = [0u8; 32];
        rng.fill(&mut id);
        let list = match class {
            Class::Tx | Class::Fragment => &self.tx,
            Class::Block => &self.block,
            Class::Anchor => &self.anchor,
            Class::Legacy => {
                let group = self.shard_of(&id);
                let repr = FrameRepr {
                    version: FrameVersion::Legacy,
                    byte7: 0,
                    id,
                    hash_key: 0,
                    seq: 0,
                    subtree_id: [0; 32],
                    extra: Extra::None,
                    payload,
                };
                let len = repr.emit(buf).expect("legacy frame fits the buffer");
                return Made { len, group, flow: None, seq: 0, class };
            }
        };
        let fi = list[rng.below(list.len() as u64) as usize];
        let flow = &mut self.flows[fi as usize];
        flow.last_seq += 1;
        let (seq, hash_key, group, subtree_id) =
            (flow.last_seq, flow.hash_key, flow.group, flow.subtree_id);
        if matches!(class, Class::Tx | Class::Fragment) && self.shard_bits > 0 {
            // Put the TxID in the flow's shard: top shard_bits bits = group.
            let bits = u32::from(self.shard_bits);
            let low = u32::from_be_bytes(id[..4].try_into().expect("4 bytes")) & (u32::MAX >> bits);
            id[..4].copy_from_slice(&((u32::from(group) << (32 - bits)) | low).to_be_bytes());
        }
        let (version, extra) = match class {
            Class::Fragment => {
                let total = rng.range_inclusive(2, 4) as u16;
                let index = rng.below(u64::from(total)) as u16;
                let orig_len = (len as u32).saturating_mul(u32::from(total));
                (
                    FrameVersion::Fragment,
                    Extra::Fragment(FragmentInfo { orig_len, index, total, orig_version: 0 }),
                )
            }
            Class::Block => (FrameVersion::Block, Extra::None),
            Class::Anchor => (FrameVersion::Anchor, Extra::None),
            _ => (FrameVersion::Tx, Extra::None),
        };
        let repr = FrameRepr { version, byte7: 0, id, hash_key, seq, subtree_id, extra, payload };
        let len = repr.emit(buf).expect("frame fits the buffer");
        Made { len, group, flow: Some(fi), seq, class }
    }

    fn shard_of(&self, id: &[u8; 32]) -> u16 {
        ricochet_wire::group::shard_index(id, self.shard_bits).unwrap_or(0)
    }
}

/// A pool of random payload bytes for `dist`.
pub fn payload_pool(dist: &PayloadDist, seed: u64) -> Vec<u8> {
    let mut pool = vec![0u8; dist.max() + 4096];
    Rng::stream(seed, 0xBA11).fill(&mut pool);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;
    use ricochet_wire::frame::Frame;
    use ricochet_wire::group::{retransmit_index, shard_index};

    #[test]
    fn frames_carry_the_proxy_hashkey_and_seqnums_from_one_in_their_shard() {
        let mix: Mix = "tx=8,fragment=1,block=1,anchor=1,legacy=1".parse().unwrap();
        let dist: PayloadDist = "uniform:10-2000".parse().unwrap();
        let mut set = FlowSet::new(8, mix, 2, 42);
        let pool = payload_pool(&dist, 42);
        let mut rng = Rng::new(42);
        let mut buf = vec![0u8; FlowSet::max_frame(&dist)];
        let mut last = std::collections::HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let m = set.make(&mut rng, &dist, &pool, &mut buf);
            seen.insert(m.class);
            let f = Frame::new_checked(&buf[..m.len]).unwrap();
            if m.class == Class::Legacy {
                assert!(f.key().is_none());
                continue;
            }
            let key = f.key().unwrap();
            let flow = &set.flows[m.flow.unwrap() as usize];
            assert_eq!(key.hash_key, flow.hash_key);
            // SeqNums count up from 1 per flow with no holes.
            let prev = last.insert(key.hash_key, key.seq).unwrap_or(0);
            assert_eq!(key.seq, prev + 1);
            // Sent to the group the endpoint would retransmit it to.
            assert_eq!(retransmit_index(&f, 2, 4).unwrap(), m.group);
            if m.class == Class::Tx {
                assert_eq!(shard_index(f.id(), 2).unwrap(), m.group);
                assert_eq!(
                    flow.hash_key,
                    hash_key(
                        IpAddr::V6(Ipv6Addr::new(
                            0xfd00,
                            0,
                            0,
                            0,
                            0,
                            1,
                            0,
                            (m.flow.unwrap() / 4) as u16
                        )),
                        u32::from(m.group),
                        &f.subtree_id()
                    )
                );
            }
        }
        assert_eq!(seen.len(), 5, "every class in the mix appears");
        assert_eq!(set.groups(), vec![0, 1, 2, 3, INDEX_BLOCK]);
    }

    #[test]
    fn payload_distributions_parse_and_stay_in_range() {
        assert_eq!("300".parse::<PayloadDist>().unwrap(), PayloadDist::Fixed(300));
        assert_eq!("fixed:7".parse::<PayloadDist>().unwrap(), PayloadDist::Fixed(7));
        assert!("uniform:9-3".parse::<PayloadDist>().is_err());
        assert!("999999".parse::<PayloadDist>().is_err());
        let mut rng = Rng::new(1);
        for d in ["uniform:100-200", "txlike"] {
            let d: PayloadDist = d.parse().unwrap();
            for _ in 0..10_000 {
                assert!(d.sample(&mut rng) <= d.max());
            }
        }
        assert!("tx=1,bogus=2".parse::<Mix>().is_err());
        assert!("tx=0".parse::<Mix>().is_err());
    }
}
