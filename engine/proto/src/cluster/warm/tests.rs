//! Warm-restart tests: the blob, a serving sibling and fetches under loss.

use std::net::SocketAddr;
use std::time::Instant;

use super::*;

fn frames(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![i as u8; 100 + i % 300])).collect()
}

#[test]
fn blobs_round_trip_and_stop_at_the_limit() {
    let f = frames(50);
    let (blob, n) = frame_blob(&f, usize::MAX);
    assert_eq!(n, 50);
    assert_eq!(unframe_blob(&blob), (f.clone(), true));
    let (small, n) = frame_blob(&f, 1000);
    assert!(small.len() <= 1000 && n < 50);
    assert_eq!(unframe_blob(&small).0, f[..n].to_vec());
    let (got, clean) = unframe_blob(&blob[..blob.len() - 1]);
    assert!(!clean);
    assert_eq!(got, f[..49].to_vec());
    assert_eq!(unframe_blob(&[0xFF, 0xFF, 0xFF, 0xFF, 1]), (vec![], false));
    assert_eq!(unframe_blob(&[]), (vec![], true));
}

#[test]
fn params_keep_shards_within_the_chunk_limit() {
    assert_eq!(snapshot_params(0, 1200).data_shards, 2);
    assert_eq!(snapshot_params(3 * 1200, 1200).data_shards, 3);
    for len in [0, 1, 5000, 1 << 20, WARM_MAX_BYTES, 1 << 30, u32::MAX as usize] {
        let p = snapshot_params(len, 1200);
        let (k, m) = (usize::from(p.data_shards), usize::from(p.parity_shards));
        // Striped over up to 3 senders, one sender's share is covered.
        assert!(m >= (k + m).div_ceil(MANIFEST_PEERS), "{len}: {p:?}");
        assert!(k + m <= 255, "{len}: {p:?}");
        let shard = len.div_ceil(k);
        assert!(shard.div_ceil(1200) <= 65_535, "{len}: {p:?}");
    }
    let p = snapshot_params(WARM_MAX_BYTES, 1200);
    assert_eq!((p.data_shards, p.parity_shards), (6, 3));
    // The largest snapshot still fits the reassembly limit, and a chunk
    // the default datagram.
    let snap = EncodedSnapshot::encode(&[], 1, 1, p).unwrap();
    let mut m = *snap.manifest();
    m.shard_size = (WARM_MAX_BYTES.div_ceil(6) as u32).next_multiple_of(2);
    m.blob_len = WARM_MAX_BYTES as u32;
    assert!(m.reassembly_bytes() <= REASSEMBLY_LIMIT as u64);
    assert_eq!(
        crate::gossip::snapshot::chunk_budget(crate::gossip::snapshot::DEFAULT_MAX_DATAGRAM),
        1173
    );
}

#[test]
fn the_same_frames_in_any_order_give_the_same_snapshot() {
    let f = frames(500);
    let mut g = f.clone();
    g.reverse();
    let (a, _) = build_snapshot(&f, usize::MAX, 1, 1200).unwrap();
    let (b, _) = build_snapshot(&g, usize::MAX, 2, 1200).unwrap();
    assert!(a.manifest().same_encoding(b.manifest()));
    assert_eq!(a.manifest().fingerprint, b.manifest().fingerprint);
    let total = a.manifest().total_shards() as u8;
    assert!((0..total).all(|i| a.shard(i) == b.shard(i)));
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}
const A: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
const B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 2);

/// A fetch at `A` and servers at ports 2, 3, … on a virtual clock:
/// every datagram arrives within the step it was sent in, except every
/// `drop_every`-th chunk (0: none); a server whose index is `cut.0` is
/// cut off (both ways) once it has sent `cut.1` chunks.
struct Link {
    servers: Vec<(SocketAddr, Server, Vec<Bytes>)>,
    drop_every: u64,
    cut: Option<(usize, u64)>,
}

impl Link {
    fn new(caches: Vec<Vec<Bytes>>) -> Link {
        let servers = caches
            .into_iter()
            .enumerate()
            .map(|(i, c)| (addr(2 + i as u16), Server::new(), c))
            .collect();
        Link { servers, drop_every: 0, cut: None }
    }

    fn is_cut(&self, i: usize) -> bool {
        self.cut.is_some_and(|(c, after)| c == i && self.servers[i].1.stats().chunks_sent >= after)
    }

    fn run(&mut self) -> (Option<FetchEnd>, FetchStats) {
        let mut now = Instant::now();
        let until = now + Duration::from_secs(60);
        let mut fetch = Fetch::new(7, now, until - now);
        let live: Vec<SocketAddr> = self.servers.iter().map(|s| s.0).collect();
        let mut sends = Vec::new();
        let mut chunks = 0u64;
        // Virtual time is bounded: the fetch times out at `until`.
        while now <= until {
            if let Some(end) = fetch.poll(now, &live, &mut sends) {
                return (Some(end), fetch.stats());
            }
            for (to, bytes) in sends.drain(..) {
                let i = self.servers.iter().position(|s| s.0 == to).expect("a server");
                if self.is_cut(i) {
                    continue;
                }
                let (at, server, cache) = &mut self.servers[i];
                match SnapshotRepr::parse(&bytes).unwrap() {
                    SnapshotRepr::ManifestRequest { request_id } => {
                        let m = match server.on_manifest_request(now, A, request_id, true) {
                            ManifestAction::Build => {
                                let snap = build_snapshot(cache, usize::MAX, 1 + i as u64, 1200)
                                    .unwrap()
                                    .0;
                                server.built(now, A, request_id, Ok(snap)).unwrap()
                            }
                            ManifestAction::Answer(m) => m,
                            ManifestAction::Ignore => continue,
                        };
                        fetch.on_frame(now, *at, &SnapshotRepr::parse(&m).unwrap());
                    }
                    SnapshotRepr::ShardRequest {
                        request_id,
                        shard_index,
                        first_chunk,
                        chunk_count,
                    } => {
                        assert!(server.on_shard_request(
                            now,
                            A,
                            request_id,
                            shard_index,
                            first_chunk,
                            chunk_count
                        ));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            for i in 0..self.servers.len() {
                while let Some((to, chunk)) = self.servers[i].1.next_chunk() {
                    assert_eq!(to, A);
                    chunks += 1;
                    if self.is_cut(i)
                        || (self.drop_every > 0 && chunks.is_multiple_of(self.drop_every))
                    {
                        continue;
                    }
                    let from = self.servers[i].0;
                    assert!(fetch.on_frame(now, from, &SnapshotRepr::parse(&chunk).unwrap()));
                }
            }
            now += Duration::from_millis(10);
        }
        (None, fetch.stats())
    }
}

fn transfer(frames: &[Bytes], drop_every: u64) -> (Option<FetchEnd>, FetchStats) {
    let mut link = Link::new(vec![frames.to_vec()]);
    link.drop_every = drop_every;
    link.run()
}

/// `frames` in snapshot order.
fn ordered(frames: &[Bytes]) -> Vec<Bytes> {
    let mut f = frames.to_vec();
    snapshot_order(&mut f);
    f
}

#[test]
fn a_fetch_brings_the_frames_over() {
    let f = frames(2000);
    let (end, stats) = transfer(&f, 0);
    let Some(FetchEnd::Blob { from, blob }) = end else { panic!("{end:?}") };
    assert_eq!(from, B);
    assert!(unframe_blob(&blob) == (ordered(&f), true));
    assert_eq!((stats.repair_rounds, stats.transfers_failed), (0, 0), "no loss, no repair");
    assert_eq!((stats.senders_used, stats.parity_used), (1, 0), "{stats:?}");
}

#[test]
fn lost_chunks_are_asked_again() {
    let f = frames(3000);
    let (end, stats) = transfer(&f, 7);
    let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
    assert!(unframe_blob(&blob).0 == ordered(&f));
    assert!(stats.repair_rounds >= 1, "{stats:?}");
}

#[test]
fn agreeing_siblings_share_the_transfer_and_parity_covers_one_cut_off() {
    let f = frames(3000);
    let snap = build_snapshot(&f, usize::MAX, 1, 1200).unwrap().0;
    let m = *snap.manifest();
    let per_shard = u64::from(m.chunks_per_shard());
    let k = u64::from(m.data_shards);
    // No loss: three senders, data shards only, each chunk once.
    let mut link = Link::new(vec![f.clone(); 3]);
    let (end, stats) = link.run();
    let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
    assert!(blake3::hash(&blob).as_bytes() == &m.blob_hash);
    assert_eq!((stats.senders_used, stats.parity_used), (3, 0), "{stats:?}");
    assert_eq!(stats.chunks, k * per_shard, "{stats:?}");
    assert!(stats.senders.iter().all(|s| s.chunks >= per_shard), "{stats:?}");
    // The second sender is cut off after sending part of its share.
    let mut link = Link::new(vec![f.clone(); 3]);
    link.cut = Some((1, per_shard / 2));
    let (end, stats) = link.run();
    let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
    assert!(blake3::hash(&blob).as_bytes() == &m.blob_hash);
    assert!(stats.parity_used >= 1, "{stats:?}");
    assert_eq!((stats.transfers, stats.transfers_failed), (1, 0), "not started over");
    let cut = stats.senders.iter().find(|s| s.addr == Some(addr(3))).expect("a sender");
    assert!(cut.silent && cut.chunks > 0, "{stats:?}");
    // What the cut-off sender sent is kept: at most its partial shards
    // and the other senders' last partial ones come on top of k shards.
    let received = stats.chunks + stats.chunks_redundant;
    assert!(received < (k + 3) * per_shard, "{received} chunks for {k} × {per_shard}");
    assert!(stats.chunks_redundant <= per_shard / 4, "{stats:?}");
}

#[test]
fn siblings_that_disagree_are_fetched_from_one_at_a_time() {
    let f = frames(1500);
    let mut other = f.clone();
    other.pop();
    let mut link = Link::new(vec![f.clone(), other, f[..1000].to_vec()]);
    let (end, stats) = link.run();
    let Some(FetchEnd::Blob { blob, .. }) = end else { panic!("{end:?}") };
    assert!(!blob.is_empty());
    assert_eq!((stats.senders_used, stats.transfers), (1, 1), "{stats:?}");
    assert_eq!(stats.senders[1], SenderStats::default());
}

#[test]
fn the_server_serves_any_shard_of_its_snapshot() {
    let now = Instant::now();
    let mut s = Server::new();
    assert_eq!(s.on_manifest_request(now, A, 5, true), ManifestAction::Build);
    let snap = build_snapshot(&frames(800), usize::MAX, 1, 1200).unwrap().0;
    let want = snap.clone();
    assert!(s.built(now, A, 5, Ok(snap)).is_some());
    let m = *want.manifest();
    let total = m.total_shards() as u8;
    for shard in 0..total {
        assert!(s.on_shard_request(now, A, 5, shard, 1, 2));
    }
    // Past the last shard: nothing queued.
    assert!(s.on_shard_request(now, A, 5, total, 0, 1));
    let mut got = Vec::new();
    while let Some((_, frame)) = s.next_chunk() {
        if let Ok(SnapshotRepr::ShardChunk { shard_index, chunk_index, data, .. }) =
            SnapshotRepr::parse(&frame)
        {
            assert_eq!(Some(data), want.chunk(shard_index, chunk_index));
            got.push((shard_index, chunk_index));
        }
    }
    let expect: Vec<(u8, u16)> = (0..total)
        .flat_map(|sh| [(sh, 1), (sh, 2)])
        .filter(|&(_, c)| c < m.chunks_per_shard())
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn no_sibling_and_no_answer_end_early() {
    let now = Instant::now();
    let mut fetch = Fetch::new(1, now, Duration::from_secs(60));
    let mut sends = Vec::new();
    assert_eq!(fetch.poll(now, &[], &mut sends), None);
    assert_eq!(
        fetch.poll(now + MEMBERS_WAIT, &[], &mut sends),
        Some(FetchEnd::Finished(Outcome::NoSibling))
    );
    let mut fetch = Fetch::new(1, now, Duration::from_secs(60));
    assert_eq!(fetch.poll(now, &[A, B], &mut sends), None);
    assert_eq!(sends.len(), 2, "both asked");
    let t = now + MANIFEST_WAIT;
    assert_eq!(fetch.poll(t, &[A, B], &mut sends), Some(FetchEnd::Finished(Outcome::NoAnswer)));
    let mut fetch = Fetch::new(1, now, Duration::from_secs(1));
    assert_eq!(
        fetch.poll(now + Duration::from_secs(1), &[A], &mut sends),
        Some(FetchEnd::Finished(Outcome::Timeout))
    );
    assert_eq!(fetch.poll(now + Duration::from_secs(2), &[A], &mut sends), None, "once");
}

#[test]
fn an_empty_snapshot_ends_the_fetch() {
    let (end, _) = transfer(&[], 0);
    assert_eq!(end, Some(FetchEnd::Finished(Outcome::Empty)));
}

#[test]
fn the_server_serves_members_only_and_bounds_sessions() {
    let now = Instant::now();
    let mut s = Server::new();
    assert_eq!(s.on_manifest_request(now, A, 1, false), ManifestAction::Ignore);
    for rid in 0..MAX_SESSIONS as u32 {
        assert_eq!(s.on_manifest_request(now, A, rid + 10, true), ManifestAction::Build);
    }
    assert_eq!(s.on_manifest_request(now, A, 99, true), ManifestAction::Ignore);
    assert_eq!(s.stats().refused_busy, 1);
    assert!(!s.on_shard_request(now, A, 10, 0, 0, 1));
    let snap = build_snapshot(&frames(10), usize::MAX, 1, 100).unwrap().0;
    assert!(s.built(now, A, 10, Ok(snap)).is_some());
    // A repeat of the request gets the same manifest again.
    assert!(matches!(s.on_manifest_request(now, A, 10, true), ManifestAction::Answer(_)));
    // Over-long requests are clipped to the queue.
    for _ in 0..3 {
        assert!(s.on_shard_request(now, A, 10, 0, 0, u16::MAX));
    }
    assert!(s.stats().chunks_dropped > 0 || s.has_queued());
    s.expire(now + SESSION_IDLE + BUILD_TIMEOUT);
    assert_eq!(s.sessions(), (0, 0));
    assert!(!s.has_queued());
}
