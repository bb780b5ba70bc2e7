//! Micro-benchmark of the PROXY protocol code on the connection path: encoding the header warren
//! sends to a backend (v1 and v2, IPv4 and IPv6, into a reused buffer as a connection would) and
//! parsing the header a balancer in front sends to warren.
//!
//! Run: `cargo bench --bench proxy_header` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};

use warren::proxy_protocol::{encode_v1, encode_v2, parse, Header};

fn proxied(source: &str, destination: &str) -> Header {
    Header::Proxied {
        source: source.parse::<SocketAddr>().expect("valid source"),
        destination: destination
            .parse::<SocketAddr>()
            .expect("valid destination"),
    }
}

fn encode(c: &mut Criterion) {
    let ipv4 = proxied("10.1.2.3:40000", "10.0.0.5:5672");
    let ipv6 = proxied("[2001:db8::7]:40000", "[fd00::1]:5672");
    type Encoder = fn(&Header, &mut Vec<u8>);
    let encoders: [(&str, Encoder); 2] = [("v1", encode_v1), ("v2", encode_v2)];
    let mut group = c.benchmark_group("encode");
    for (version, encoder) in encoders {
        for (family, header) in [("ipv4", &ipv4), ("ipv6", &ipv6)] {
            let mut out = Vec::with_capacity(128);
            group.bench_function(format!("{version}/{family}"), |b| {
                b.iter(|| {
                    out.clear();
                    encoder(black_box(header), &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let header = proxied("10.1.2.3:40000", "10.0.0.5:5672");
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    encode_v1(&header, &mut v1);
    encode_v2(&header, &mut v2);
    // The AMQP protocol header usually arrives in the same segment as the PROXY header.
    for bytes in [&mut v1, &mut v2] {
        bytes.extend_from_slice(b"AMQP\0\0\x09\x01");
    }
    let mut group = c.benchmark_group("parse");
    for (version, bytes) in [("v1", &v1), ("v2", &v2)] {
        group.bench_function(version, |b| {
            b.iter(|| parse(black_box(bytes)).expect("a valid header"))
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
