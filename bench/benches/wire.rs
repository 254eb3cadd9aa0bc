//! Micro-benchmarks of the wire decoders on fixed samples (ricochet-bench).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ricochet_bench::{nack, signed_record, tx_frame};
use ricochet_wire::control::Nack;
use ricochet_wire::frame::Frame;
use ricochet_wire::group;
use ricochet_wire::mac::ClusterKey;
use ricochet_wire::record::Record;

fn decoders(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));

    let n = nack(42);
    g.bench_function("nack_parse", |b| {
        b.iter(|| {
            let v = Nack::new_checked(black_box(&n)).unwrap();
            (v.hash_key(), v.start_seq(), v.end_seq())
        })
    });

    let f = tx_frame(300, 42);
    g.bench_function("frame_header_parse", |b| {
        b.iter(|| Frame::new_checked(black_box(&f)).unwrap().key())
    });

    let txid = [0xC3u8; 32];
    g.bench_function("group_derivation", |b| {
        b.iter(|| {
            let idx = group::shard_index(black_box(&txid), 2).unwrap();
            group::ipv6_group(group::SourceMode::Asm, group::Scope::Site, 0x0B, idx).unwrap()
        })
    });

    let key = ClusterKey::new([0x4B; 32]);
    let mut sealed = vec![0u8; 512 + 16];
    key.seal(&mut sealed, 512).unwrap();
    g.bench_function("mac_verify_512B", |b| b.iter(|| key.open(black_box(&sealed)).unwrap().len()));

    let rec = signed_record();
    g.bench_function("record_verify", |b| {
        b.iter(|| Record::new_checked(black_box(&rec)).unwrap().verify().unwrap())
    });
    g.finish();
}

criterion_group!(benches, decoders);
criterion_main!(benches);
