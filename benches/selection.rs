//! Micro-benchmark of backend selection: `Selector::candidates` for every balancing algorithm
//! over a 3-node pool (a typical RabbitMQ cluster, candidates kept inline) and a 16-node pool
//! (spills to the heap). This is the per-connection cost of choosing a backend, before connect.
//!
//! Run: `cargo bench --bench selection` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;

use warren::balance::{stable_hash, Node, Selector, FULL_SHARE};
use warren::config::Balance;

const ALGORITHMS: [Balance; 4] = [
    Balance::RoundRobin,
    Balance::LeastConn,
    Balance::RandomTwo,
    Balance::SourceHash,
];

/// A pool of `n` available primaries with uneven weights and loads, so weighted paths are taken.
fn pool(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            weight: 1 + (i % 3) as u32,
            backup: false,
            available: true,
            active: (i as u64 * 7) % 11,
            key: stable_hash(format!("rabbit-{i}").as_bytes()),
            share: FULL_SHARE,
        })
        .collect()
}

fn candidates(c: &mut Criterion) {
    let mut group = c.benchmark_group("candidates");
    for n in [3, 16] {
        let nodes = pool(n);
        for balance in ALGORITHMS {
            let selector = Selector::new(balance);
            let mut rng = StdRng::seed_from_u64(42);
            let mut client = 0u32;
            group.bench_with_input(BenchmarkId::new(balance.as_str(), n), &nodes, |b, nodes| {
                b.iter(|| {
                    // A different client each time, so source_hash does not hit one path only.
                    client = client.wrapping_add(1);
                    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (client & 0xffff)));
                    let picked = selector.candidates(black_box(nodes), ip, &mut rng);
                    black_box(picked.first())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, candidates);
criterion_main!(benches);
