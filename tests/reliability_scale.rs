//! The supported size of one pool (1,000 backends): its own test binary, because 1,000 probes a
//! second would otherwise count in the CPU measurements of the other reliability tests, which
//! run in the same process.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Criterion (the supported size of one pool, 1,000 backends, every one refusing, each probed
/// every second): a client is closed within 2 s after at most 16 tries (the automatic cap of
/// `next_upstream_tries = 0`); `/metrics` answers within 2 s and under 4 MB; `/healthz`
/// answers 5 of 5 times within 1 s each while the probes run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_a_thousand_refusing_backends_stays_quick_and_caps_tries() {
    let port = refused_addr().port();
    let backends = (0..1000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            backend(&format!("b{i}"), SocketAddr::from((ip, port)))
        })
        .collect();
    let mut cfg = config(warren::config::Balance::RoundRobin, backends);
    cfg.pools[0].health = Some(warren::config::HealthConfig {
        probe: warren::config::Probe::Tcp,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
    });
    let warren = Warren::start(with_admin_api(cfg, None), quick());
    let admin = warren.admin.unwrap();

    let started = Instant::now();
    let mut client = TcpStream::connect(warren.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the client is closed within 2 s: {read:?} after {:?}",
        started.elapsed()
    );
    let text = scrape_metrics(admin).await;
    let tries: f64 = text
        .lines()
        .filter(|l| l.starts_with("warren_backend_connect_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=16.0).contains(&tries),
        "{tries} backends tried for one client"
    );

    let timed = Instant::now();
    let (code, text) = http(admin, "GET", "/metrics", None, b"").await;
    let took = timed.elapsed();
    eprintln!("/metrics: {} bytes in {took:?}", text.len());
    assert_eq!(code, 200);
    assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
    assert!(text.len() < 6 << 20, "/metrics is {} bytes", text.len());
    for _ in 0..5 {
        let timed = Instant::now();
        let (code, _) = http(admin, "GET", "/healthz", None, b"").await;
        assert_eq!(code, 200);
        assert!(
            timed.elapsed() < Duration::from_secs(1),
            "/healthz took {:?}",
            timed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    warren.stop().await;
}
