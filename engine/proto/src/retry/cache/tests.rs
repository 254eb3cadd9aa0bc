//! The retry cache's tests: examples of every rule in the module docs, and
//! property tests that run random operations against a model and recompute
//! every gauge, the memory held and the per-structure invariants after each
//! step (`Cache::check_invariants`).
use super::epoch::Candidate;
use super::*;
use proptest::prelude::*;

fn key(hash_key: u64, seq: u64) -> FrameKey {
    FrameKey { hash_key, seq }
}

fn frame(hk: u64, seq: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len.max(16)];
    v[..8].copy_from_slice(&hk.to_be_bytes());
    v[8..16].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn put(c: &mut Cache, now: Instant, hk: u64, seq: u64) -> Insert {
    c.insert(now, key(hk, seq), TtlClass::Tx, 7, frame(hk, seq, 100), Origin::Fabric)
}

fn has(c: &Cache, now: Instant, hk: u64, seq: u64) -> bool {
    c.get(key(hk, seq), now).is_some()
}

const NEW: Insert = Insert::Inserted { new_epoch: false, promoted: 0 };

#[test]
fn per_entry_overhead_matches_the_structures() {
    // A frame alone in its segment: record header, index slot, descriptor.
    let computed = HEADER + size_of::<Slot>() + size_of::<segment::Segment>();
    assert_eq!(size_of::<Option<Bytes>>(), 32, "Option<Bytes> uses the niche");
    assert_eq!(size_of::<Slot>(), 12);
    assert_eq!(size_of::<segment::Segment>(), 48);
    assert_eq!(OVERHEAD_PER_ENTRY, computed);
    assert_eq!(SLOT_BYTES, size_of::<Slot>());
    assert_eq!(SEGMENT_BYTES, size_of::<segment::Segment>());
    const { assert!(OVERHEAD_PER_ENTRY <= 80) };
    // In a full segment the descriptor is shared: header and slot remain.
    const { assert!(HEADER + SLOT_BYTES <= 32) };
    // A candidate's box, its FIFO entry and one tombstone's worth.
    assert_eq!(CANDIDATE_OVERHEAD, size_of::<Candidate>() + 2 * size_of::<CEntry>());
    // A flow's slab record, its index entry at worst load (a table at
    // 7/8 that just doubled: 16-byte bucket + 1 control byte, twice
    // over) and its free-list slot.
    let index = 2 * (size_of::<(u64, u32)>() + 1);
    assert!(size_of::<Flow>() + index + size_of::<u32>() <= FLOW_STATE_BYTES);
}

#[test]
fn append_lookup_and_range() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=10 {
        assert_eq!(put(&mut c, t0, 1, seq), NEW);
    }
    let hit = c.get(key(1, 4), t0).unwrap();
    assert_eq!(hit.frame, &frame(1, 4, 100));
    assert_eq!(hit.group, 7);
    assert!(!has(&c, t0, 1, 0) && !has(&c, t0, 1, 11) && !has(&c, t0, 2, 1));
    let view = c.view(1, t0).unwrap();
    let got: Vec<u64> = (3..=12).filter(|&s| view.get(s).is_some()).collect();
    assert_eq!(got, (3..=10).collect::<Vec<_>>());
    assert_eq!(view.highest(), 10);
    let s = c.stats();
    assert_eq!((s.entries, s.bytes, s.flows, s.inserted), (10, 1000, 1, 10));
    c.check_invariants();
}

#[test]
fn out_of_order_and_holes() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in [5, 3, 9, 4, 1] {
        assert_eq!(put(&mut c, t0, 1, seq), NEW);
        c.check_invariants();
    }
    for seq in 0..=10 {
        assert_eq!(has(&c, t0, 1, seq), [1, 3, 4, 5, 9].contains(&seq), "{seq}");
    }
}

#[test]
fn duplicates_keep_the_first_copy() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    let first = frame(1, 1, 50);
    c.insert(t0, key(1, 1), TtlClass::Tx, 1, first.clone(), Origin::Fabric);
    // A byte-identical copy (e.g. our own retransmit looping back).
    let again = c.insert(t0, key(1, 1), TtlClass::Tx, 2, first.clone(), Origin::Fabric);
    assert_eq!(again, Insert::Duplicate);
    let hit = c.get(key(1, 1), t0).unwrap();
    assert_eq!((&hit.frame, hit.group), (&first, 1));
    assert_eq!((c.stats().duplicates, c.stats().bytes), (1, 50));
    c.check_invariants();
}

#[test]
fn peek_finds_the_bytes_get_serves_in_open_and_sealed_segments() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    // 5 000 frames of 300 B span several segments: sealed ones and the open one.
    for seq in (1..=5000).filter(|s| s % 7 != 0) {
        c.insert(t0, key(1, seq), TtlClass::Tx, 0, frame(1, seq, 300), Origin::Fabric);
    }
    let view = c.view(1, t0).expect("flow 1 is held");
    for seq in 1..=5000 {
        match (view.peek(seq), view.get(seq)) {
            (Some(p), Some(hit)) => assert_eq!(p, &hit.frame[..], "seq {seq}"),
            (None, None) => assert_eq!(seq % 7, 0, "seq {seq} was inserted"),
            (p, g) => panic!("seq {seq}: peek {:?}, get {:?}", p.is_some(), g.is_some()),
        }
    }
    assert_eq!(view.peek(0), None);
    assert_eq!(view.peek(5001), None);
    // Past its TTL a frame is not served, but peek still says where it lies
    // (it is a hint for fetching ahead, not an answer).
    let late = t0 + CacheSettings::default().ttls.get(TtlClass::Tx);
    let view = c.view(1, late).expect("not swept yet");
    assert!(view.get(1).is_none());
    assert_eq!(view.peek(1), Some(&frame(1, 1, 300)[..]));
}

#[test]
fn ttl_per_class_at_exact_boundaries() {
    let t0 = Instant::now();
    let ttls = Ttls {
        tx: Duration::from_secs(10),
        block: Duration::from_secs(20),
        subtree: Duration::from_secs(30),
        anchor: Duration::from_secs(40),
        beef: Duration::from_secs(50),
        fallback: Duration::from_secs(70),
    };
    let mut c = Cache::new(CacheSettings { ttls, ..Default::default() }, t0);
    for (i, class) in TtlClass::ALL.into_iter().enumerate() {
        let hk = 100 + i as u64;
        c.insert(t0, key(hk, 1), class, 0, frame(hk, 1, 64), Origin::Fabric);
    }
    for (i, class) in TtlClass::ALL.into_iter().enumerate() {
        let hk = 100 + i as u64;
        let ttl = ttls.get(class);
        let just_before = t0 + ttl - Duration::from_millis(1);
        assert!(has(&c, just_before, hk, 1), "{class:?} alive 1 ms before its TTL");
        assert!(has(&c, t0 + ttl - Duration::from_nanos(1), hk, 1), "{class:?}");
        assert!(!has(&c, t0 + ttl, hk, 1), "{class:?} gone at exactly its TTL");
        // The sweep removes it at the same instant, and nothing younger.
        let before = c.len();
        let sweep = c.expire(t0 + ttl);
        assert_eq!((sweep.expired, c.len()), (1, before - 1), "{class:?}");
        assert!(!sweep.more);
        assert_eq!(c.stats().evicted_ttl, i as u64 + 1);
        c.check_invariants();
    }
    assert!(c.is_empty());
    assert_eq!(c.stats().flows, 0, "empty flows are dropped");
}

#[test]
fn expire_is_bounded_per_call() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=10 {
        put(&mut c, t0, 1, seq);
    }
    let later = t0 + Duration::from_secs(61);
    assert_eq!(c.expire_bounded(later, 4), Sweep { expired: 4, more: true });
    assert_eq!(c.expire_bounded(later, 100), Sweep { expired: 6, more: false });
    c.check_invariants();
}

#[test]
fn expired_but_unswept_copy_is_replaced() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=5 {
        put(&mut c, t0, 1, seq);
    }
    // The insert's own small sweep reaches only the first two; the held
    // copy of 5 is expired but still in its slot.
    let later = t0 + Duration::from_secs(60);
    let fresh = frame(1, 5, 77);
    let r = c.insert(later, key(1, 5), TtlClass::Tx, 3, fresh.clone(), Origin::Recovered);
    assert_eq!(r, NEW);
    let hit = c.get(key(1, 5), later).unwrap();
    assert_eq!((&hit.frame, hit.group), (&fresh, 3));
    assert!(!has(&c, later, 1, 4));
    assert_eq!((c.len(), c.stats().evicted_ttl, c.stats().duplicates), (1, 5, 0));
    c.check_invariants();
}

#[test]
fn max_keys_evicts_the_globally_oldest() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings { max_keys: 3, ..Default::default() }, t0);
    let ms = Duration::from_millis;
    put(&mut c, t0, 1, 1);
    c.insert(t0 + ms(1), key(2, 1), TtlClass::Block, 0, frame(2, 1, 10), Origin::Fabric);
    put(&mut c, t0 + ms(2), 1, 2);
    c.insert(t0 + ms(3), key(3, 1), TtlClass::Beef, 0, frame(3, 1, 10), Origin::Fabric);
    let now = t0 + ms(3);
    assert!(!has(&c, now, 1, 1), "oldest went first");
    assert!(has(&c, now, 2, 1) && has(&c, now, 1, 2) && has(&c, now, 3, 1));
    // The block frame has the longest TTL but is now the oldest: next out.
    put(&mut c, t0 + ms(4), 4, 1);
    assert!(!has(&c, now, 2, 1) && has(&c, now, 1, 2));
    assert_eq!((c.len(), c.stats().evicted_max_keys), (3, 2));
    c.check_invariants();
}

#[test]
fn max_bytes_charges_overhead_and_refuses_giants() {
    let t0 = Instant::now();
    // Three frames and the log's four allocated slots (a `VecDeque`'s
    // smallest allocation), one of them unused.
    let budget = 3 * (100 + OVERHEAD_PER_ENTRY) + SLOT_BYTES;
    let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
    for seq in 1..=5 {
        put(&mut c, t0, 1, seq);
        c.check_invariants();
    }
    assert_eq!(c.len(), 3);
    assert!(!has(&c, t0, 1, 2) && has(&c, t0, 1, 3) && has(&c, t0, 1, 5));
    assert_eq!(c.stats().evicted_max_bytes, 2);
    let giant = frame(1, 6, budget - OVERHEAD_PER_ENTRY + 1);
    let r = c.insert(t0, key(1, 6), TtlClass::Tx, 0, giant, Origin::Fabric);
    assert_eq!(r, Insert::TooLarge);
    assert_eq!((c.len(), c.stats().refused_too_large), (3, 1), "nothing evicted for it");
}

#[test]
fn per_flow_window_evicts_and_refuses_stale() {
    let t0 = Instant::now();
    let settings =
        CacheSettings { max_per_flow: 4, regression_threshold: 1000, ..Default::default() };
    let mut c = Cache::new(settings, t0);
    for seq in 1..=6 {
        put(&mut c, t0, 1, seq);
    }
    assert!(!has(&c, t0, 1, 2) && has(&c, t0, 1, 3) && has(&c, t0, 1, 6));
    assert_eq!(c.stats().evicted_per_flow, 2);
    assert_eq!(put(&mut c, t0, 1, 2), Insert::Stale);
    // A jump past the window evicts the rest, holes never count as frames.
    assert_eq!(put(&mut c, t0, 1, 100), NEW);
    assert_eq!((c.len(), c.stats().evicted_per_flow), (1, 6));
    assert_eq!(put(&mut c, t0, 1, 98), NEW);
    assert_eq!(c.stats().refused_stale, 1);
    c.check_invariants();
}

#[test]
fn fifo_tombstones_stay_bounded_for_a_busy_flow() {
    // 100 000 frames within one TTL through a 64-SeqNum window: all but
    // 64 are evicted per flow, and their FIFO entries must not pile up.
    let t0 = Instant::now();
    let settings = CacheSettings { max_per_flow: 64, ..Default::default() };
    let mut c = Cache::new(settings, t0);
    for seq in 1..=100_000 {
        put(&mut c, t0, 1, seq);
    }
    assert_eq!(c.len(), 64);
    assert!(c.queues[0].len() <= 2 * 64 + COMPACT_SLACK + 1, "{}", c.queues[0].len());
    assert!(c.queues[0].capacity() < 16 * 1024, "{}", c.queues[0].capacity());
    c.check_invariants();
}

#[test]
fn max_flows_evicts_the_least_recently_appended_flow() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings { max_flows: 2, ..Default::default() }, t0);
    put(&mut c, t0, 1, 1);
    put(&mut c, t0, 2, 1);
    put(&mut c, t0, 1, 2); // flow 1 is now the most recent
    put(&mut c, t0, 3, 1);
    assert!(has(&c, t0, 1, 1) && has(&c, t0, 1, 2) && has(&c, t0, 3, 1));
    assert!(!has(&c, t0, 2, 1));
    let s = c.stats();
    assert_eq!((s.flows, s.evicted_flows, s.entries), (2, 1, 3));
    c.check_invariants();
}

fn forged(hk: u64, seq: u64) -> Bytes {
    let mut v = frame(hk, seq, 100).to_vec();
    v[99] = 0xEE;
    Bytes::from(v)
}

fn put_bytes(c: &mut Cache, now: Instant, hk: u64, seq: u64, b: &Bytes) -> Insert {
    c.insert(now, key(hk, seq), TtlClass::Tx, 7, b.clone(), Origin::Fabric)
}

fn serves(c: &Cache, now: Instant, hk: u64, seq: u64, want: &Bytes) -> bool {
    c.get(key(hk, seq), now).is_some_and(|h| h.frame == want)
}

#[test]
fn one_forged_frame_never_changes_served_bytes_nor_resets() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=100 {
        put(&mut c, t0, 1, seq);
    }
    for seq in 3000..=3050 {
        put(&mut c, t0, 2, seq);
    }
    // Same key, other bytes: evidence, not a reset.
    assert_eq!(put_bytes(&mut c, t0, 1, 50, &forged(1, 50)), Insert::Candidate);
    // A SeqNum far below the head: evidence too, and not served.
    assert_eq!(put_bytes(&mut c, t0, 2, 1, &forged(2, 1)), Insert::Candidate);
    assert!(!has(&c, t0, 2, 1));
    for seq in 1..=100 {
        assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{seq}");
    }
    for seq in 3000..=3050 {
        assert!(serves(&c, t0, 2, seq, &frame(2, seq, 100)), "{seq}");
    }
    let s = c.stats();
    assert_eq!((s.epoch_resets, s.evicted_epoch, s.epoch_candidates), (0, 0, 2));
    assert_eq!((s.entries, s.bytes), (151, 15_100), "candidates are not frames");
    c.check_invariants();
    // Two forgeries, then the old epoch goes on: the candidate is gone,
    // so two more forgeries still confirm nothing.
    assert_eq!(put_bytes(&mut c, t0, 1, 51, &forged(1, 51)), Insert::Candidate);
    assert_eq!(put(&mut c, t0, 1, 101), NEW);
    assert_eq!(c.stats().epoch_candidates_dropped, 1);
    assert_eq!(put_bytes(&mut c, t0, 1, 52, &forged(1, 52)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 1, 53, &forged(1, 53)), Insert::Candidate);
    // The same forged SeqNum again, whatever its bytes, is no more
    // evidence.
    assert_eq!(put_bytes(&mut c, t0, 1, 53, &frame(1, 53, 99)), Insert::Duplicate);
    for seq in 1..=101 {
        assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{seq}");
    }
    assert_eq!(c.stats().epoch_resets, 0);
    c.check_invariants();
}

#[test]
fn a_restart_is_confirmed_by_its_third_frame() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    let new = |seq: u64| forged(1, seq);
    for seq in 1..=200 {
        put(&mut c, t0, 1, seq);
    }
    // The restarted proxy counts 1, 2, ... with other frames.
    assert_eq!(put_bytes(&mut c, t0, 1, 1, &new(1)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 1, 2, &new(2)), Insert::Candidate);
    assert!(serves(&c, t0, 1, 2, &frame(1, 2, 100)), "unconfirmed: the old frame");
    // A late frame of the old epoch (reordering) does not discard it.
    assert_eq!(put(&mut c, t0, 1, 150), Insert::Duplicate);
    assert_eq!(c.take_last_reset(), None);
    let r = put_bytes(&mut c, t0, 1, 3, &new(3));
    assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
    // What a shared cache must forget: every frame the old epoch held.
    let reset = c.take_last_reset().expect("a reset");
    assert_eq!(reset.hash_key, 1);
    assert_eq!(reset.seqs().collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    assert_eq!(c.take_last_reset(), None, "taken once");
    for seq in 1..=3 {
        assert!(serves(&c, t0, 1, seq, &new(seq)), "{seq}");
    }
    for seq in 4..=200 {
        assert!(!has(&c, t0, 1, seq), "pre-restart {seq} served");
    }
    for seq in 4..=300 {
        assert_eq!(put_bytes(&mut c, t0, 1, seq, &new(seq)), NEW, "{seq}");
    }
    let s = c.stats();
    assert_eq!((s.epoch_resets, s.evicted_epoch, s.entries), (1, 200, 300));
    c.check_invariants();

    // Regression rather than conflict: a flow far ahead.
    for seq in 5000..5010 {
        put(&mut c, t0, 2, seq);
    }
    assert_eq!(put(&mut c, t0, 2, 4000), NEW, "small reordering is no evidence");
    assert_eq!(put_bytes(&mut c, t0, 2, 1, &forged(2, 1)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 2, 3, &forged(2, 3)), Insert::Candidate);
    let r = put_bytes(&mut c, t0, 2, 2, &forged(2, 2));
    assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
    assert!((4000..5010).all(|seq| !has(&c, t0, 2, seq)));
    assert!((1..=3).all(|seq| serves(&c, t0, 2, seq, &forged(2, seq))));

    // A flow that held fewer frames than the evidence needs: the
    // candidate catches up with the old head and counts on above it.
    put(&mut c, t0, 3, 1);
    assert_eq!(put_bytes(&mut c, t0, 3, 1, &forged(3, 1)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 3, 2, &forged(3, 2)), Insert::Candidate);
    assert!(!has(&c, t0, 3, 2));
    let r = put_bytes(&mut c, t0, 3, 3, &forged(3, 3));
    assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
    assert!(serves(&c, t0, 3, 1, &forged(3, 1)));
    assert_eq!(c.stats().epoch_resets, 3);
    c.check_invariants();
}

#[test]
fn a_jump_past_the_window_takes_evidence_too() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=100 {
        put(&mut c, t0, 1, seq);
    }
    // One forged frame far ahead would push every held frame out.
    let far = 100 + 65_537;
    assert_eq!(put_bytes(&mut c, t0, 1, far, &forged(1, far)), Insert::Candidate);
    assert!((1..=100).all(|seq| serves(&c, t0, 1, seq, &frame(1, seq, 100))));
    assert!(!has(&c, t0, 1, far));
    // The flow goes on; the candidate goes.
    assert_eq!(put(&mut c, t0, 1, 101), NEW);
    assert_eq!((c.cand_live, c.stats().evicted_per_flow), (0, 0));
    // A real jump (a long outage) is confirmed by its third frame, and
    // the two before it are kept.
    let jump = 101 + 70_000;
    assert_eq!(put(&mut c, t0, 1, jump), Insert::Candidate);
    assert_eq!(put(&mut c, t0, 1, jump + 2), Insert::Candidate);
    let r = put(&mut c, t0, 1, jump + 1);
    assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
    assert!((jump..jump + 3).all(|seq| has(&c, t0, 1, seq)));
    assert_eq!(c.len(), 3);
    c.check_invariants();
}

#[test]
fn evidence_must_be_consistent_and_recent() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=3000 {
        put(&mut c, t0, 1, seq);
    }
    // SeqNums farther apart than the regression threshold are not one
    // restarted proxy: the newest evidence starts over.
    assert_eq!(put_bytes(&mut c, t0, 1, 1, &forged(1, 1)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 1, 1900, &forged(1, 1900)), Insert::Candidate);
    assert_eq!(put_bytes(&mut c, t0, 1, 2, &forged(1, 2)), Insert::Candidate);
    assert_eq!(c.stats().epoch_resets, 0);
    // Evidence older than EPOCH_EVIDENCE_TTL ages out, swept or not.
    let later = t0 + EPOCH_EVIDENCE_TTL;
    assert_eq!(put_bytes(&mut c, later, 1, 3, &forged(1, 3)), Insert::Candidate);
    assert_eq!(c.stats().epoch_resets, 0);
    assert!(serves(&c, later, 1, 3, &frame(1, 3, 100)));
    let r = put_bytes(&mut c, later, 1, 4, &forged(1, 4));
    assert_eq!(r, Insert::Candidate);
    let r = put_bytes(&mut c, later, 1, 5, &forged(1, 5));
    assert_eq!(r, Insert::Inserted { new_epoch: true, promoted: 2 });
    c.check_invariants();
    // The sweep ages candidates out too.
    put_bytes(&mut c, later, 1, 1, &forged(1, 1));
    put(&mut c, later, 2, 5000);
    assert_eq!(put_bytes(&mut c, later, 2, 1, &forged(2, 1)), Insert::Candidate);
    assert_eq!(c.cand_live, 1);
    c.expire(later + EPOCH_EVIDENCE_TTL);
    assert_eq!((c.cand_live, c.cand_charge), (0, 0));
    c.check_invariants();
}

#[test]
fn recovered_frames_are_never_evidence() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1000..3000 {
        put(&mut c, t0, 1, seq);
    }
    let mut late =
        |seq: u64| c.insert(t0, key(1, seq), TtlClass::Tx, 0, forged(1, seq), Origin::Recovered);
    for seq in [1, 2, 3, 4] {
        assert_eq!(late(seq), NEW, "far behind is just late");
    }
    for seq in [1000, 1001, 1002, 1003] {
        assert_eq!(late(seq), Insert::Duplicate, "other bytes: the first copy stays");
    }
    assert!(serves(&c, t0, 1, 1000, &frame(1, 1000, 100)));
    let s = c.stats();
    assert_eq!((s.epoch_resets, s.epoch_candidates), (0, 0));
    c.check_invariants();
}

#[test]
fn sparse_seqnums_are_charged_their_span() {
    // The issue 18 attack, scaled down: flows of two tiny frames at
    // SeqNums 1 and 16 384. Before the span was charged, 200 such flows
    // held 200 × 16 384 slots (131 MB) against a 4 MiB budget.
    let t0 = Instant::now();
    let budget = 4 << 20;
    let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
    for hk in 1..=200 {
        put(&mut c, t0, hk, 1);
        put(&mut c, t0, hk, 16_384);
        assert!(c.memory() <= budget as u64, "flow {hk}: {}", c.memory());
    }
    c.check_invariants();
    // The slots really allocated, not just what the charge says.
    let slots: usize = c.index.values().map(|&i| c.flows[i as usize].log.capacity()).sum();
    assert!(slots * SLOT_BYTES <= budget, "{slots} slots");
    assert!(c.stats().evicted_max_bytes > 0);
    // A legitimate flow still gets its frames cached and served.
    for seq in 1..=1000 {
        assert_eq!(put(&mut c, t0, 9999, seq), NEW);
    }
    assert!((1..=1000).all(|seq| has(&c, t0, 9999, seq)));
    c.check_invariants();
}

#[test]
fn a_lone_frame_that_fits_is_kept_even_when_its_log_is_sparse() {
    let t0 = Instant::now();
    let budget = 2 * (100 + OVERHEAD_PER_ENTRY) + CANDIDATE_OVERHEAD + 100;
    let mut c = Cache::new(CacheSettings { max_bytes: budget, ..Default::default() }, t0);
    put(&mut c, t0, 1, 1);
    // 1 000 holes do not fit: the older frame goes, the new one stays.
    assert_eq!(put(&mut c, t0, 1, 1000), NEW);
    assert!(has(&c, t0, 1, 1000) && !has(&c, t0, 1, 1));
    c.check_invariants();
    // Candidates are charged too.
    assert_eq!(put_bytes(&mut c, t0, 1, 1000, &forged(1, 1000)), Insert::Candidate);
    assert!(serves(&c, t0, 1, 1000, &frame(1, 1000, 100)));
    assert_eq!(c.cand_charge, (CANDIDATE_OVERHEAD + 100) as u64);
    c.check_invariants();
    // A second flow's frame makes room by evicting the oldest: flow 1's
    // frame, and with the flow its candidate.
    put(&mut c, t0 + Duration::from_millis(1), 2, 1);
    assert_eq!((c.cand_live, c.stats().epoch_candidates_dropped), (0, 1));
    assert!(!has(&c, t0, 1, 1000) && has(&c, t0, 2, 1));
    c.check_invariants();
}

#[test]
fn invalidate_drops_a_flow() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    for seq in 1..=3 {
        put(&mut c, t0, 1, seq);
        put(&mut c, t0, 2, seq);
    }
    assert_eq!(c.invalidate(1), 3);
    assert_eq!(c.invalidate(1), 0);
    assert!(!has(&c, t0, 1, 1) && has(&c, t0, 2, 1));
    let s = c.stats();
    assert_eq!((s.invalidations, s.evicted_invalidated, s.flows, s.entries), (1, 3, 1, 3));
    // The same HashKey starts afresh, and the old FIFO entries are inert.
    assert_eq!(put(&mut c, t0, 1, 2), NEW);
    assert_eq!(c.expire(t0 + Duration::from_secs(60)).expired, 4);
    c.check_invariants();
    assert!(c.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    /// Store at the flow's cursor + `step` (mostly small steps forward,
    /// some reordering, the odd proxy restart).
    Insert {
        flow: usize,
        step: i64,
        len: usize,
        class: usize,
        recovered: bool,
    },
    Advance(u64),
    Expire(usize),
    /// Look up `back` below the flow's cursor.
    Lookup {
        flow: usize,
        back: u64,
    },
    Invalidate(usize),
}

const FLOWS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let step = prop_oneof![12 => 0..4i64, 3 => -60..0i64, 1 => Just(i64::MIN)];
    let len = prop_oneof![10 => 1..64usize, 1 => 64..400usize];
    prop_oneof![
        8 => (0..FLOWS, step, len, 0..CLASSES, any::<bool>()).prop_map(
            |(flow, step, len, class, r)| {
                Op::Insert { flow, step, len, class, recovered: r && step < 0 }
            }
        ),
        2 => (0..3_000u64).prop_map(Op::Advance),
        1 => (0..20usize).prop_map(Op::Expire),
        4 => (0..FLOWS, 0..80u64).prop_map(|(flow, back)| Op::Lookup { flow, back }),
        1 => (0..FLOWS).prop_map(Op::Invalidate),
    ]
}

/// Runs `ops` against a cache and a model of what each key should hold.
/// The property tests' settings: short TTLs, one per class, and a low
/// regression threshold, so expiry and epochs happen within a few ops.
fn model_settings(
    max_keys: usize,
    max_bytes: usize,
    max_per_flow: usize,
    max_flows: usize,
) -> CacheSettings {
    let ttls = Ttls {
        tx: Duration::from_secs(10),
        block: Duration::from_secs(50),
        subtree: Duration::from_secs(30),
        anchor: Duration::from_secs(20),
        beef: Duration::from_secs(7),
        fallback: Duration::from_secs(15),
    };
    CacheSettings { ttls, max_per_flow, max_flows, max_keys, max_bytes, regression_threshold: 40 }
}

/// With `compact_slack`, class logs are compacted that much more eagerly.
fn run(
    ops: Vec<Op>,
    settings: CacheSettings,
    compact_slack: Option<u64>,
) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let ttls = settings.ttls;
    let mut c = Cache::new(settings, t0);
    if let Some(slack) = compact_slack {
        c.compact_slack = slack;
    }
    // What each key should hold if held: (bytes, deadline).
    let mut model: HashMap<FrameKey, (Bytes, Instant)> = HashMap::new();
    let stored = |model: &HashMap<FrameKey, (Bytes, Instant)>, k: FrameKey| {
        model
            .get(&k)
            .cloned()
            .ok_or_else(|| TestCaseError::fail(format!("{k:?} held but never stored")))
    };
    let mut now = t0;
    let mut stamp = 0u8;
    let mut cursor = [1u64; FLOWS];
    // Frames last held as evidence, and how many were since the flow's
    // last epoch: only candidates may appear when an epoch starts, and
    // only after EPOCH_EVIDENCE − 1 of them.
    let mut cands: HashMap<FrameKey, (Bytes, TtlClass)> = HashMap::new();
    let mut evidence = [0usize; FLOWS];
    for op in ops {
        match op {
            Op::Insert { flow: f, step, len, class, recovered } => {
                let seq = cursor[f].saturating_add_signed(step).max(1);
                cursor[f] = if step == i64::MIN { 1 } else { cursor[f].max(seq) };
                let flow = f as u64 + 1;
                stamp = stamp.wrapping_add(1);
                let mut v = vec![stamp; len];
                v[0] = flow as u8;
                let b = Bytes::from(v);
                let k = key(flow, seq);
                let class = TtlClass::ALL[class];
                let origin = if recovered { Origin::Recovered } else { Origin::Fabric };
                match c.insert(now, k, class, 0, b.clone(), origin) {
                    Insert::Inserted { new_epoch, promoted } => {
                        if new_epoch {
                            prop_assert!(!recovered, "a recovered frame started an epoch");
                            prop_assert!(evidence[f] + 1 >= EPOCH_EVIDENCE, "{:?}", evidence);
                            model.retain(|mk, _| mk.hash_key != flow);
                            let mut n = 0;
                            for (hk, held) in c.held() {
                                if hk.hash_key != flow || hk == k {
                                    continue;
                                }
                                let (want, class) = cands.get(&hk).cloned().ok_or_else(|| {
                                    TestCaseError::fail(format!("{hk:?} promoted unseen"))
                                })?;
                                prop_assert_eq!(&held, &want);
                                model.insert(hk, (held, now + ttls.get(class)));
                                n += 1;
                            }
                            prop_assert!(n <= promoted);
                            cands.retain(|mk, _| mk.hash_key != flow);
                            evidence[f] = 0;
                        } else {
                            prop_assert_eq!(promoted, 0);
                        }
                        model.insert(k, (b.clone(), now + ttls.get(class)));
                        prop_assert_eq!(c.get(k, now).map(|h| h.frame.clone()), Some(b));
                    }
                    Insert::Candidate => {
                        prop_assert!(!recovered, "a recovered frame is never evidence");
                        cands.insert(k, (b, class));
                        evidence[f] += 1;
                    }
                    Insert::Duplicate if c.get(k, now).is_none() => {
                        // A SeqNum the flow's candidate already holds.
                        prop_assert!(cands.contains_key(&k), "{:?}", k);
                    }
                    Insert::Duplicate => {
                        let (held, deadline) = stored(&model, k)?;
                        prop_assert!(deadline > now);
                        prop_assert_eq!(c.get(k, now).map(|h| h.frame.clone()), Some(held));
                    }
                    Insert::Stale | Insert::TooLarge => {}
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(ms),
            Op::Expire(budget) => {
                c.expire_bounded(now, budget);
            }
            Op::Lookup { flow, back } => {
                let k = key(flow as u64 + 1, cursor[flow].saturating_sub(back));
                if let Some(hit) = c.get(k, now) {
                    let (want, deadline) = stored(&model, k)?;
                    prop_assert!(now < deadline, "expired frame served");
                    prop_assert_eq!(hit.frame, &want);
                }
            }
            Op::Invalidate(f) => {
                let flow = f as u64 + 1;
                c.invalidate(flow);
                model.retain(|mk, _| mk.hash_key != flow);
                cands.retain(|mk, _| mk.hash_key != flow);
                evidence[f] = 0;
            }
        }
        c.check_invariants();
        // Everything held is what the model says was last stored (so
        // nothing evicted, invalidated or pre-restart lingers), and
        // `bytes` is exactly the sum of the held frames.
        let held = c.held();
        let total: u64 = held.iter().map(|(_, b)| b.len() as u64).sum();
        prop_assert_eq!(total, c.stats().bytes);
        prop_assert_eq!(held.len() as u64, c.stats().entries);
        for (k, b) in held {
            let (want, deadline) = stored(&model, k)?;
            prop_assert_eq!(b, want);
            // Served exactly while unexpired, swept or not.
            prop_assert_eq!(c.get(k, now).is_some(), now < deadline, "{:?}", k);
        }
    }
    // Once every TTL has passed and the sweep has run, nothing is left.
    let end = now + Duration::from_secs(60);
    while c.expire(end).more {}
    prop_assert!(c.is_empty());
    prop_assert_eq!(c.stats().flows, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random inserts, expiries, lookups and invalidations never return
    /// an expired, evicted, invalidated or pre-restart frame, and the
    /// gauges stay exact.
    #[test]
    fn never_serves_what_it_should_not(
        ops in proptest::collection::vec(op(), 1..400),
        max_keys in prop_oneof![1 => Just(0usize), 2 => 1..16usize],
        max_bytes in prop_oneof![1 => Just(0usize), 2 => 200..1500usize],
        max_per_flow in 1..64usize,
        max_flows in 1..5usize,
    ) {
        let settings = model_settings(max_keys, max_bytes, max_per_flow, max_flows);
        run(ops, settings, None)?;
    }

    /// The same with class logs compacted whenever a dead record holds
    /// any memory: repointed slots serve exactly what they did.
    #[test]
    fn compaction_never_changes_what_is_served(
        ops in proptest::collection::vec(op(), 1..400),
        max_keys in prop_oneof![1 => Just(0usize), 2 => 1..16usize],
        max_bytes in prop_oneof![1 => Just(0usize), 2 => 200..4000usize],
        max_per_flow in 1..64usize,
        max_flows in 1..5usize,
        slack in 0..2_000u64,
    ) {
        let settings = model_settings(max_keys, max_bytes, max_per_flow, max_flows);
        run(ops, settings, Some(slack))?;
    }
}

/// One SeqNum per op from anywhere in a wide range, for the memory
/// bound: sparse, dense, backwards, far ahead.
fn any_seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..64u64,
        2 => 1..100_000u64,
        1 => Just(65_536u64),
        1 => any::<u64>().prop_map(|s| s.max(1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the SeqNum pattern, the memory the shard's structures
    /// hold (log slots allocated, holes included; frames; candidates)
    /// stays within the byte budget, and the gauges stay exact
    /// (`check_invariants` recomputes both after every insert).
    #[test]
    fn memory_stays_within_the_budget_for_any_seqnums(
        ops in proptest::collection::vec(
            (0..8u64, any_seq(), 1..300usize, any::<bool>(), 0..3u8), 1..300),
        max_bytes in 2_000..200_000usize,
        max_per_flow in prop_oneof![Just(65_536usize), 1..5_000usize],
    ) {
        let t0 = Instant::now();
        let settings = CacheSettings { max_bytes, max_per_flow, ..Default::default() };
        let mut c = Cache::new(settings, t0);
        let mut now = t0;
        for (hk, seq, len, recovered, tick) in ops {
            let origin = if recovered { Origin::Recovered } else { Origin::Fabric };
            let b = frame(hk, seq, len);
            c.insert(now, key(hk, seq), TtlClass::Tx, 0, b, origin);
            prop_assert!(c.memory() <= max_bytes as u64, "{} > {}", c.memory(), max_bytes);
            c.check_invariants();
            now += Duration::from_millis(u64::from(tick) * 500);
        }
    }

    /// Up to EPOCH_EVIDENCE − 1 forged frames (a held key with other
    /// bytes, or a SeqNum past the window), anywhere in the history of a
    /// flow holding at least EPOCH_EVIDENCE frames, never reset it nor
    /// change what it serves.
    #[test]
    fn forged_frames_short_of_the_evidence_never_reset(
        n in EPOCH_EVIDENCE as u64..3_000u64,
        forged_at in proptest::collection::vec((any::<u64>(), EPOCH_EVIDENCE as u64..3_000u64), 1..EPOCH_EVIDENCE),
        tail in 0..50u64,
    ) {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        let mut forgeries = forged_at.into_iter().peekable();
        for seq in 1..=n + tail {
            while let Some((x, _)) = forgeries.next_if(|&(_, after)| after < seq) {
                // Any key the flow holds, with other bytes, or any
                // SeqNum past its window.
                let fseq = match x % 2 {
                    0 => x % (seq - 1).max(1) + 1,
                    _ => seq.saturating_add(65_536 + (x >> 20)),
                };
                let r = put_bytes(&mut c, t0, 1, fseq, &forged(1, fseq));
                let reset = matches!(r, Insert::Inserted { new_epoch: true, .. });
                prop_assert!(!reset, "forged {} reset the flow", fseq);
            }
            prop_assert_eq!(put(&mut c, t0, 1, seq), NEW);
        }
        for (x, _) in forgeries {
            let fseq = x % (n + tail) + 1;
            put_bytes(&mut c, t0, 1, fseq, &forged(1, fseq));
        }
        prop_assert_eq!(c.stats().epoch_resets, 0);
        for seq in 1..=n + tail {
            prop_assert!(serves(&c, t0, 1, seq, &frame(1, seq, 100)), "{}", seq);
        }
        c.check_invariants();
    }

    /// A real restart — the proxy counting 1, 2, 3, ... again with new
    /// frames, late frames of the old epoch in between — is confirmed by
    /// its EPOCH_EVIDENCE-th frame, and from then on no pre-restart frame
    /// is served for any post-restart SeqNum.
    #[test]
    fn a_restart_is_confirmed_and_never_served_stale(
        n in 1..3_000u64,
        m in EPOCH_EVIDENCE as u64..60,
        late in proptest::collection::vec(0..3_000u64, 0..EPOCH_EVIDENCE),
    ) {
        let t0 = Instant::now();
        let mut c = Cache::new(CacheSettings::default(), t0);
        for seq in 1..=n {
            put(&mut c, t0, 1, seq);
        }
        for seq in 1..=m {
            // A late (identical) frame of the old epoch now and then
            // before the confirmation (after it, one is indistinguishable
            // from a new frame).
            if let Some(&l) = late.get(seq as usize).filter(|_| seq < EPOCH_EVIDENCE as u64) {
                let l = l % n + 1;
                put(&mut c, t0, 1, l);
            }
            let r = put_bytes(&mut c, t0, 1, seq, &forged(1, seq));
            let want = match seq.cmp(&(EPOCH_EVIDENCE as u64)) {
                std::cmp::Ordering::Less => Insert::Candidate,
                std::cmp::Ordering::Equal => {
                    Insert::Inserted { new_epoch: true, promoted: EPOCH_EVIDENCE - 1 }
                }
                std::cmp::Ordering::Greater => NEW,
            };
            prop_assert_eq!(r, want, "restart frame {}", seq);
        }
        prop_assert_eq!(c.stats().epoch_resets, 1);
        for seq in 1..=n.max(m) {
            match c.get(key(1, seq), t0) {
                Some(hit) => prop_assert_eq!(hit.frame, &forged(1, seq), "{}", seq),
                None => prop_assert!(seq > m, "{} not served", seq),
            }
        }
        c.check_invariants();
    }
}

#[test]
fn hot_returns_recent_flows_newest_first_within_the_budget() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    let frame = |seq: u64| Bytes::from(vec![seq as u8; 100]);
    for seq in 1..=3 {
        c.insert(t0, FrameKey { hash_key: 1, seq }, TtlClass::Tx, 0, frame(seq), Origin::Fabric);
    }
    for seq in 1..=2 {
        c.insert(t0, FrameKey { hash_key: 2, seq }, TtlClass::Tx, 0, frame(seq), Origin::Fabric);
    }
    let hot: Vec<u8> = c.hot(t0, 10_000).iter().map(|b| b[0]).collect();
    // Flow 2 was used last: its frames first, newest first, then flow 1's.
    assert_eq!(hot, [2, 1, 3, 2, 1]);
    assert_eq!(c.hot(t0, 250).len(), 2, "byte budget");
    // Expired frames are not exported.
    assert!(c.hot(t0 + Duration::from_secs(61), 10_000).is_empty());
}

#[test]
fn frames_are_views_into_one_segment() {
    // One copy into the segment; hits of a frozen segment share it.
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    let n = 2 * (SEGMENT_MAX / (HEADER + 100)) as u64;
    for seq in 1..=n {
        put(&mut c, t0, 1, seq);
    }
    let (a, b) = (c.get(key(1, 1), t0).unwrap(), c.get(key(1, 2), t0).unwrap());
    assert_eq!((a.frame.clone(), b.frame.clone()), (frame(1, 1, 100), frame(1, 2, 100)));
    let gap = b.frame.as_ptr() as usize - a.frame.as_ptr() as usize;
    assert_eq!(gap, HEADER + 100, "consecutive records of one segment");
    let again = c.get(key(1, 1), t0).unwrap();
    assert_eq!(again.frame.as_ptr(), a.frame.as_ptr(), "no copy per hit");
    // The newest frames, still in the open segment, are served too.
    assert_eq!(c.get(key(1, n), t0).unwrap().frame, frame(1, n, 100));
    c.check_invariants();
}

#[test]
fn range_reads_one_flow_in_order() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    let stored = [2, 3, 5, 8, 9].map(|seq| put(&mut c, t0, 1, seq));
    assert_eq!(stored, [NEW; 5]);
    let view = c.view(1, t0).unwrap();
    let got: Vec<u64> = view.range(0, 100).map(|(seq, _)| seq).collect();
    assert_eq!(got, [2, 3, 5, 8, 9]);
    let got: Vec<(u64, Bytes)> = view.range(4, 8).map(|(seq, h)| (seq, h.frame)).collect();
    assert_eq!(got, [(5, frame(1, 5, 100)), (8, frame(1, 8, 100))]);
    assert_eq!(view.range(10, u64::MAX).count(), 0);
    assert_eq!(c.view(1, t0 + Duration::from_secs(60)).unwrap().range(0, 9).count(), 0);
}

#[test]
fn dead_records_pinned_by_a_neighbour_are_compacted() {
    // A frame of its own flow every 300 records stays alive for the whole
    // TTL; flow 1's frames die at once (a one-SeqNum window). Without
    // compaction every segment would stay pinned by a long-lived frame.
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings { max_per_flow: 1, ..Default::default() }, t0);
    let mut kept = Vec::new();
    for i in 0..20_000u64 {
        put(&mut c, t0, 1, i + 1);
        if i % 300 == 0 {
            let hk = 1000 + i;
            let b = frame(hk, 1, 700);
            c.insert(t0, key(hk, 1), TtlClass::Tx, 0, b.clone(), Origin::Fabric);
            kept.push((hk, b));
        }
    }
    // 20 000 records of 109 bytes were written; the live ones are one of
    // flow 1's and 67 of 709 bytes.
    let log = &c.queues[TtlClass::Tx as usize];
    let live = (HEADER + 100 + kept.len() * (HEADER + 700)) as u64;
    assert!(log.charge() <= 2 * live + 5 * SEGMENT_MAX as u64, "{}", log.charge());
    for (hk, b) in &kept {
        assert!(serves(&c, t0, *hk, 1, b), "{hk}");
    }
    assert!(serves(&c, t0, 1, 20_000, &frame(1, 20_000, 100)));
    assert_eq!(c.len(), 1 + kept.len());
    c.check_invariants();
}

#[test]
fn a_frame_costs_at_most_32_bytes_beyond_its_own() {
    // The cache's own accounting of what it allocated (segments, their
    // descriptors, index slots), per frame beyond the frame's bytes, for
    // 100 000 frames in 1 and in 1 000 flows. Per-flow state (the hash
    // index and slab record, `FLOW_STATE_BYTES` at most) comes on top:
    // 1.6 bytes a frame with 100 frames a flow.
    for (size, flows) in [(200usize, 1u64), (200, 1000), (1400, 1), (1400, 1000)] {
        let n = 100_000u64;
        let t0 = Instant::now();
        let settings = CacheSettings {
            max_per_flow: (n / flows) as usize + 1,
            max_flows: flows as usize + 1,
            ..Default::default()
        };
        let mut c = Cache::new(settings, t0);
        let v = vec![0x5A; size];
        for i in 0..n {
            let (hk, seq) = (i % flows + 1, i / flows + 1);
            c.insert(t0, key(hk, seq), TtlClass::Tx, 0, &v[..], Origin::Fabric);
        }
        let per = (c.memory() - c.stats().bytes) as f64 / n as f64;
        assert!(per <= 32.0, "{size} B × {flows} flows: {per:.1} B a frame");
        assert_eq!(c.memory(), c.stats().charged_bytes);
    }
}

#[test]
fn a_frame_larger_than_a_segment_gets_one_of_its_own() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    put(&mut c, t0, 1, 1);
    let big = frame(1, 2, 100_000);
    assert_eq!(c.insert(t0, key(1, 2), TtlClass::Tx, 0, big.clone(), Origin::Fabric), NEW);
    put(&mut c, t0, 1, 3);
    assert!(serves(&c, t0, 1, 2, &big) && has(&c, t0, 1, 1) && has(&c, t0, 1, 3));
    // A slot holds 17 bits of length: twice the largest UDP datagram.
    let huge = frame(1, 4, 1 << 17);
    let r = c.insert(t0, key(1, 4), TtlClass::Tx, 0, huge, Origin::Fabric);
    assert_eq!((r, c.stats().refused_too_large), (Insert::TooLarge, 1));
    c.check_invariants();
}

#[test]
fn a_reset_names_only_the_frames_the_old_epoch_held() {
    let t0 = Instant::now();
    let mut c = Cache::new(CacheSettings::default(), t0);
    // A sparse old epoch: its log spans 1..=1000 but holds five frames.
    for seq in [1, 2, 3, 500, 1000] {
        put(&mut c, t0, 1, seq);
    }
    for seq in 1..=3 {
        put_bytes(&mut c, t0, 1, seq, &forged(1, seq));
    }
    let reset = c.take_last_reset().expect("a reset");
    assert_eq!(reset.seqs().collect::<Vec<_>>(), [1, 2, 3, 500, 1000]);
}
