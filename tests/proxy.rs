//! The data plane end to end, in process: balancing over real sockets, connect failover,
//! idle timeout, half-close, bulk transfer on both the splice and the copy path, PROXY protocol
//! in and out, max_connections, and graceful stop. Backends are in-process on port 0.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use warren::config::{Balance, ProxyProtocol};
use warren::Options;

const SECOND: Duration = Duration::from_secs(1);

async fn spread(addr: SocketAddr, n: usize) -> HashMap<u8, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (id, _conn) = which_backend(addr).await;
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Three backends tagged 1, 2, 3 (named b0, b1, b2) and a config balancing over them.
async fn three_tagged(balance: Balance) -> ([Backend; 3], warren::config::Config) {
    let backends = [
        spawn_tagged(1).await,
        spawn_tagged(2).await,
        spawn_tagged(3).await,
    ];
    let list = backends
        .iter()
        .enumerate()
        .map(|(i, b)| backend(&format!("b{i}"), b.addr))
        .collect();
    (backends, config(balance, list))
}

#[tokio::test]
async fn round_robin_spreads_300_connections_evenly() {
    let (_backends, cfg) = three_tagged(Balance::RoundRobin).await;
    let warren = Warren::start(cfg, quick());
    let counts = spread(warren.addr, 300).await;
    assert_eq!(counts, HashMap::from([(1, 100), (2, 100), (3, 100)]));
    warren.stop().await;
}

#[tokio::test]
async fn round_robin_respects_weights() {
    let (_backends, mut cfg) = three_tagged(Balance::RoundRobin).await;
    cfg.pools[0].backends[0].weight = 3;
    cfg.pools[0].backends[1].weight = 2;
    let warren = Warren::start(cfg, quick());
    let counts = spread(warren.addr, 300).await;
    assert_eq!(counts, HashMap::from([(1, 150), (2, 100), (3, 50)]));
    warren.stop().await;
}

#[tokio::test]
async fn backups_take_connections_only_when_no_primary_is_available() {
    let primary = spawn_tagged(1).await;
    let spare = spawn_tagged(2).await;
    let mut b = backend("spare", spare.addr);
    b.backup = true;
    let cfg = config(
        Balance::RoundRobin,
        vec![backend("primary", primary.addr), b],
    );
    let warren = Warren::start(cfg, quick());
    assert_eq!(spread(warren.addr, 20).await, HashMap::from([(1, 20)]));
    warren
        .routing
        .set_health("default", "primary", warren::state::Health::Down);
    assert_eq!(spread(warren.addr, 20).await, HashMap::from([(2, 20)]));
    warren
        .routing
        .set_health("default", "primary", warren::state::Health::Up);
    assert_eq!(spread(warren.addr, 20).await, HashMap::from([(1, 20)]));
    warren.stop().await;
}

#[tokio::test]
async fn least_conn_prefers_the_idle_backend() {
    let a = spawn_tagged(1).await;
    let b = spawn_tagged(2).await;
    let cfg = config(
        Balance::LeastConn,
        vec![backend("a", a.addr), backend("b", b.addr)],
    );
    let warren = Warren::start(cfg, quick());
    // Four held connections spread 2/2.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(which_backend(warren.addr).await);
    }
    let on = |id| held.iter().filter(|(i, _)| *i == id).count();
    assert_eq!((on(1), on(2)), (2, 2));
    // Close both on backend 1: the next two go there, because it is now the idle one.
    held.retain(|(id, _)| *id != 1);
    wait_for("warren sees the closes", 5 * SECOND, || {
        warren.metric(r#"warren_backend_connections_active{backend="a",pool="default"}"#) == 0.0
    })
    .await;
    for _ in 0..2 {
        let (id, conn) = which_backend(warren.addr).await;
        assert_eq!(id, 1, "least_conn must pick the idle backend");
        held.push((id, conn));
    }
    warren.stop().await;
}

#[tokio::test]
async fn source_hash_keeps_a_client_ip_on_one_backend() {
    let (_backends, cfg) = three_tagged(Balance::SourceHash).await;
    let warren = Warren::start(cfg, quick());
    let mut seen = HashMap::new();
    // Different client IPs from the loopback range; each must stick to one backend.
    for last in 1..=12u8 {
        let ip: std::net::IpAddr = format!("127.0.0.{last}").parse().unwrap();
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            let mut s = socket.connect(warren.addr).await.unwrap();
            let mut id = [0u8];
            s.read_exact(&mut id).await.unwrap();
            let first = *seen.entry(last).or_insert(id[0]);
            assert_eq!(first, id[0], "client 127.0.0.{last} moved between backends");
        }
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert!(
        distinct.len() > 1,
        "12 client IPs all hashed to one backend: {seen:?}"
    );
    warren.stop().await;
}

#[tokio::test]
async fn refused_backend_fails_over_and_the_client_never_knows() {
    let live = spawn_tagged(7).await;
    let cfg = config(
        Balance::RoundRobin,
        vec![backend("dead", refused_addr()), backend("live", live.addr)],
    );
    let warren = Warren::start(cfg, quick());
    for _ in 0..10 {
        let (id, mut conn) = which_backend(warren.addr).await;
        assert_eq!(id, 7);
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert!(
        warren.metric(
            r#"warren_backend_connect_failures_total{backend="dead",pool="default",reason="refused"}"#
        ) >= 1.0
    );
    // The passive check took the dead backend out: later connections do not even try it.
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="dead",pool="default"}"#),
        0.0
    );
    warren.stop().await;
}

#[tokio::test]
async fn silent_backend_fails_over_after_connect_timeout() {
    let silent = silent_peer();
    let live = spawn_tagged(9).await;
    let cfg = with_listener(
        config(
            Balance::RoundRobin,
            vec![backend("silent", silent.addr), backend("live", live.addr)],
        ),
        |l| l.connect_timeout = Duration::from_millis(400),
    );
    let warren = Warren::start(cfg, quick());
    let started = Instant::now();
    let (id, _conn) = which_backend(warren.addr).await;
    let took = started.elapsed();
    assert_eq!(id, 9);
    println!("failover from a silent backend took {took:?} (connect_timeout 400ms)");
    // Not before the connect timeout (a timer cannot fire early under load); the upper bound
    // is generous, since the single `timeout` failure counted below already proves one wait
    // of connect_timeout, not several.
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(4),
        "failover took {took:?}"
    );
    assert_eq!(
        warren.metric(
            r#"warren_backend_connect_failures_total{backend="silent",pool="default",reason="timeout"}"#
        ),
        1.0
    );
    warren.stop().await;
}

#[tokio::test]
async fn next_upstream_tries_caps_the_walk_and_the_client_sees_a_close() {
    let cfg = with_listener(
        config(
            Balance::RoundRobin,
            vec![
                backend("a", refused_addr()),
                backend("b", refused_addr()),
                backend("c", refused_addr()),
            ],
        ),
        |l| l.next_upstream_tries = 2,
    );
    let warren = Warren::start(cfg, quick());
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)), "client must see a close");
    let total: f64 = ["a", "b", "c"]
        .iter()
        .map(|b| {
            warren.metric(&format!(
                r#"warren_backend_connect_failures_total{{backend="{b}",pool="default",reason="refused"}}"#
            ))
        })
        .sum();
    assert_eq!(total, 2.0, "exactly next_upstream_tries attempts");
    assert_eq!(
        warren.metric(r#"warren_listener_rejected_total{listener="default",reason="no_backend"}"#),
        1.0
    );
    warren.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_idle_connections_and_never_busy_ones() {
    let b = spawn_backend(echo).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| l.idle_timeout = Duration::from_millis(500),
    );
    let warren = Warren::start(cfg, quick());

    let mut idle = TcpStream::connect(warren.addr).await.unwrap();
    let mut busy = TcpStream::connect(warren.addr).await.unwrap();
    let started = Instant::now();
    let busy_task = tokio::spawn(async move {
        // 15 exchanges 100 ms apart: 1.5 s of traffic, three idle timeouts long.
        for i in 0..15u8 {
            busy.write_all(&[i]).await.unwrap();
            let mut b = [0u8];
            busy.read_exact(&mut b)
                .await
                .expect("busy connection stays open");
            assert_eq!(b[0], i);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(5 * SECOND, idle.read(&mut buf))
        .await
        .expect("idle connection closed within 5s")
        .unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0);
    println!("idle connection closed after {took:?} (idle_timeout 500ms)");
    // Not before the idle timeout; and while the busy connection, three idle timeouts of
    // traffic that slows down with the machine, is still exchanging bytes: a ratio that load
    // cannot break, where a fixed upper bound in milliseconds could.
    assert!(took >= Duration::from_millis(480), "closed after {took:?}");
    assert!(
        !busy_task.is_finished(),
        "the idle connection outlived three idle timeouts of traffic ({took:?})"
    );
    busy_task.await.unwrap();
    assert_eq!(
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="idle"}"#),
        1.0
    );
    warren.stop().await;
}

#[tokio::test]
async fn client_half_close_still_gets_the_whole_reply() {
    // The backend reads until EOF, then answers with the byte count and a 1 MiB body.
    let b = spawn_backend(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let mut reply = format!("{}\n", got.len()).into_bytes();
        reply.extend(std::iter::repeat_n(b'x', 1 << 20));
        s.write_all(&reply).await.unwrap();
    })
    .await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(10 * SECOND, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with(b"100000\n"));
    assert_eq!(reply.len(), 7 + (1 << 20));
    warren.stop().await;
}

#[tokio::test]
async fn backend_half_close_lets_the_client_keep_sending() {
    // The backend greets, shuts its write side, then reads everything and reports by closing.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let b = spawn_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            s.write_all(b"bye").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            tx.send(got).unwrap();
        }
    })
    .await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"bye");
    s.write_all(b"still talking after your FIN").await.unwrap();
    s.shutdown().await.unwrap();
    let got = tokio::time::timeout(5 * SECOND, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"still talking after your FIN");
    warren.stop().await;
}

/// Send `total` pseudo-random bytes through warren to an echo backend, reading the echo
/// concurrently; returns the CRC32 of what was sent and of what came back.
async fn echo_through(addr: SocketAddr, total: usize) -> (u32, u32) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = crc32fast::Hasher::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut left = total;
        while left > 0 {
            for word in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
            }
            let n = left.min(chunk.len());
            sent.update(&chunk[..n]);
            w.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        sent.finalize()
    });
    let mut received = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received.update(&buf[..n]);
        got += n;
    }
    assert_eq!(got, total, "byte count through warren");
    (writer.await.unwrap(), received.finalize())
}

const GIB: usize = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_the_splice_path_matches_its_checksum() {
    let b = spawn_backend(echo).await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        quick(),
    );
    let started = Instant::now();
    let (sent, received) = echo_through(warren.addr, GIB).await;
    println!("1 GiB each way via splice in {:?}", started.elapsed());
    assert_eq!(sent, received);
    let m = |dir: &str, method: &str| {
        warren.metric(&format!(
            r#"warren_forwarded_bytes_total{{direction="{dir}",method="{method}"}}"#
        ))
    };
    for dir in ["to_backend", "to_client"] {
        let (splice, copy) = (m(dir, "splice"), m(dir, "copy"));
        println!("{dir}: splice {splice} bytes, copy {copy} bytes");
        assert_eq!(splice + copy, GIB as f64, "{dir}: every byte counted once");
        assert!(splice > 0.9 * GIB as f64, "{dir}: bulk must go by splice");
    }
    wait_for("pipes returned", 5 * SECOND, || {
        warren.metric("warren_splice_pipes_leased") == 0.0
    })
    .await;
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_the_copy_path_matches_its_checksum() {
    let b = spawn_backend(echo).await;
    let options = Options {
        splice: false,
        ..quick()
    };
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        options,
    );
    let started = Instant::now();
    let (sent, received) = echo_through(warren.addr, GIB).await;
    println!("1 GiB each way via copy in {:?}", started.elapsed());
    assert_eq!(sent, received);
    for dir in ["to_backend", "to_client"] {
        let copy = warren.metric(&format!(
            r#"warren_forwarded_bytes_total{{direction="{dir}",method="copy"}}"#
        ));
        let splice = warren.metric(&format!(
            r#"warren_forwarded_bytes_total{{direction="{dir}",method="splice"}}"#
        ));
        assert_eq!((copy, splice), (GIB as f64, 0.0), "{dir}");
    }
    warren.stop().await;
}

#[tokio::test]
async fn small_frames_use_the_copy_path_and_hold_no_pipe() {
    let b = spawn_backend(echo).await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    // AMQP heartbeat frames are 8 bytes.
    for _ in 0..50 {
        s.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).await.unwrap();
        let mut frame = [0u8; 8];
        s.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame[7], 0xCE);
    }
    assert_eq!(warren.metric("warren_splice_pipes_leased"), 0.0);
    assert_eq!(
        warren.metric(r#"warren_forwarded_bytes_total{direction="to_backend",method="copy"}"#),
        400.0
    );
    assert_eq!(
        warren.metric(r#"warren_forwarded_bytes_total{direction="to_backend",method="splice"}"#),
        0.0
    );
    warren.stop().await;
}

#[tokio::test]
async fn max_connections_refuses_the_excess_at_once_and_counts_it() {
    let b = spawn_backend(echo).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| l.max_connections = 2,
    );
    let warren = Warren::start(cfg, quick());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        held.push(s);
    }
    let mut third = TcpStream::connect(warren.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(2 * SECOND, third.read(&mut buf))
        .await
        .expect("excess connection closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(
        warren.metric(
            r#"warren_listener_rejected_total{listener="default",reason="max_connections"}"#
        ),
        1.0
    );
    // A freed slot is usable again.
    drop(held.pop());
    wait_for("slot freed", 5 * SECOND, || {
        warren.metric(r#"warren_listener_connections_active{listener="default"}"#) == 1.0
    })
    .await;
    let mut again = TcpStream::connect(warren.addr).await.unwrap();
    again.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    again.read_exact(&mut buf).await.unwrap();
    warren.stop().await;
}

/// A backend that reports the first `n` bytes it receives and then closes.
async fn recording_backend(n: usize) -> (Backend, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let b = spawn_backend(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut got = vec![0u8; n];
            if s.read_exact(&mut got).await.is_ok() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    (b, rx)
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_are_sent_to_the_backend() {
    for (version, expect_prefix) in [
        (
            ProxyProtocol::V1,
            b"PROXY TCP4 127.0.0.1 127.0.0.1 ".to_vec(),
        ),
        (
            ProxyProtocol::V2,
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01".to_vec(),
        ),
    ] {
        let (b, mut rx) = recording_backend(expect_prefix.len()).await;
        let cfg = with_listener(
            config(Balance::RoundRobin, vec![backend("b", b.addr)]),
            |l| l.proxy_protocol = version,
        );
        let warren = Warren::start(cfg, quick());
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(&[0u8; 64]).await.unwrap();
        let got = tokio::time::timeout(5 * SECOND, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expect_prefix, "{version:?}");
        warren.stop().await;
    }
}

#[tokio::test]
async fn inbound_proxy_header_is_stripped_and_its_source_passed_on() {
    let inbound = b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 5672\r\nAMQP\x00\x00\x09\x01";
    let expected = b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 5672\r\nAMQP\x00\x00\x09\x01";
    // In: v1 from a balancer in front; out: v1 to the backend with the original client.
    let (b, mut rx) = recording_backend(expected.len()).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| {
            l.accept_proxy_protocol = true;
            l.proxy_protocol = ProxyProtocol::V1;
        },
    );
    let warren = Warren::start(cfg, quick());
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(inbound).await.unwrap();
    let got = tokio::time::timeout(5 * SECOND, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, expected);
    warren.stop().await;

    // In: v2 from a balancer; out: nothing, the backend sees only the payload.
    let (b, mut rx) = recording_backend(8).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| l.accept_proxy_protocol = true,
    );
    let warren = Warren::start(cfg, quick());
    let mut header = Vec::new();
    warren::proxy_protocol::encode_v2(
        &warren::proxy_protocol::Header::Proxied {
            source: "[2001:db8::1]:1234".parse().unwrap(),
            destination: "[2001:db8::2]:5672".parse().unwrap(),
        },
        &mut header,
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(&header).await.unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let got = tokio::time::timeout(5 * SECOND, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"AMQP\x00\x00\x09\x01");
    warren.stop().await;
}

#[tokio::test]
async fn malformed_inbound_proxy_header_is_closed_and_counted() {
    let b = spawn_backend(echo).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| l.accept_proxy_protocol = true,
    );
    let warren = Warren::start(cfg, quick());
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        b"AMQP\x00\x00\x09\x01",
    ] {
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(n, Ok(0) | Err(_)), "{bad:?} must be refused");
    }
    assert_eq!(
        warren
            .metric(r#"warren_proxy_header_rejected_total{listener="default",reason="malformed"}"#),
        3.0
    );
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    warren.stop().await;
}

#[tokio::test]
async fn backend_reset_is_passed_on_to_the_client() {
    let b = spawn_backend(|s| async move {
        let mut s = s;
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf).await;
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await;
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        quick(),
    );
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(b"boom").await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the backend's RST reaches the client as a reset"
    );
    warren.stop().await;
}

#[tokio::test]
async fn graceful_stop_lets_connections_finish_then_closes_them() {
    let b = spawn_backend(echo).await;
    let options = Options {
        shutdown_grace: Duration::from_millis(600),
        ..quick()
    };
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        options,
    );
    let addr = warren.addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 1];
    s.read_exact(&mut buf).await.unwrap();

    let stopped = Instant::now();
    warren.shutdown.cancel();
    // New connections are refused once the listener is closed.
    wait_for("listener closed", 5 * SECOND, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
    })
    .await;
    // The open one still works during the grace period.
    s.write_all(b"2").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"2");
    // Then it is closed.
    let n = tokio::time::timeout(5 * SECOND, s.read(&mut buf))
        .await
        .expect("closed after the grace period");
    assert!(matches!(n, Ok(0) | Err(_)));
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(550), "closed after {took:?}");
    let closed_by_shutdown =
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="shutdown"}"#);
    tokio::time::timeout(5 * SECOND, warren.task)
        .await
        .expect("run returns")
        .unwrap();
    assert_eq!(closed_by_shutdown, 1.0);
}

#[tokio::test]
async fn ipv6_listener_and_backend_work() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        println!("no IPv6 loopback here; skipping");
        return;
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("v6", addr)]),
        |l| l.listen = "[::1]:0".parse().unwrap(),
    );
    let warren = Warren::start(cfg, quick());
    assert!(warren.addr.is_ipv6());
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(b"v6").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"v6");
    warren.stop().await;
}

/// Each worker accepts on its own SO_REUSEPORT socket on Linux, yet the address stays warren's:
/// a second warren (or anything else) binding it fails as it would without SO_REUSEPORT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_port_and_a_second_warren_cannot_bind_it() {
    let b = spawn_backend(echo).await;
    for workers in [1, 3] {
        let warren = Warren::start(
            config(Balance::RoundRobin, vec![backend("b", b.addr)]),
            Options { workers, ..quick() },
        );
        // Every connection is served, whichever worker the kernel hands it to.
        for i in 0..60u8 {
            let mut s = TcpStream::connect(warren.addr).await.unwrap();
            s.write_all(&[i]).await.unwrap();
            let mut back = [0u8; 1];
            tokio::time::timeout(5 * SECOND, s.read_exact(&mut back))
                .await
                .expect("echo within 5 s")
                .unwrap();
            assert_eq!(back[0], i, "{workers} workers");
        }
        let taken = with_listener(
            config(Balance::RoundRobin, vec![backend("b", b.addr)]),
            |l| l.listen = warren.addr,
        );
        let err = warren::Server::bind(&taken, Options { workers, ..quick() })
            .err()
            .unwrap_or_else(|| panic!("a second warren bound {} ({workers} workers)", warren.addr));
        assert!(
            err.to_string().contains(&warren.addr.to_string()),
            "the error names the address: {err}"
        );
        assert!(std::net::TcpListener::bind(warren.addr).is_err());
        warren.stop().await;
    }
}

/// README (passive health): a backend out of rotation after a refused connect, in a pool with
/// no probe, gets new connections again once the hold-down has passed, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passively_ejected_backend_gets_connections_again_after_the_hold_down() {
    const HOLD_DOWN: Duration = Duration::from_secs(2);
    let flaky = refused_addr();
    let live = spawn_tagged(7).await;
    let options = Options {
        passive_hold_down: HOLD_DOWN,
        ..quick()
    };
    let warren = Warren::start(
        config(
            Balance::RoundRobin,
            vec![backend("flaky", flaky), backend("live", live.addr)],
        ),
        options,
    );
    let refused = || {
        warren.metric(
            r#"warren_backend_connect_failures_total{backend="flaky",pool="default",reason="refused"}"#,
        )
    };
    // Round robin tries flaky within two connections; each fails over to live.
    let mut before_ejection = None;
    for _ in 0..2 {
        let started = Instant::now();
        let (id, _conn) = which_backend(warren.addr).await;
        assert_eq!(id, 7);
        if refused() >= 1.0 {
            before_ejection = Some(started);
            break;
        }
    }
    let ejected = before_ejection.expect("flaky was tried (and refused) within 2 connections");
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="flaky",pool="default"}"#),
        0.0,
        "flaky is out of rotation"
    );
    // flaky listens again at once; it still gets nothing until the hold-down has passed.
    let listener = tokio::net::TcpListener::bind(flaky)
        .await
        .expect("flaky's port is free again");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(&[8]).await.is_ok() {
                    echo(s).await;
                }
            });
        }
    });
    let mut to_live_in_hold_down = 0;
    let back_after = loop {
        let asked = Instant::now();
        let (id, _conn) = which_backend(warren.addr).await;
        if id == 8 {
            break asked.max(ejected).duration_since(ejected);
        }
        if asked.duration_since(ejected) < HOLD_DOWN {
            to_live_in_hold_down += 1;
        }
        assert!(
            ejected.elapsed() < HOLD_DOWN + 10 * SECOND,
            "flaky got no connection {:?} after its ejection (hold-down {HOLD_DOWN:?})",
            ejected.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "flaky back after {back_after:?} (hold-down {HOLD_DOWN:?}); {to_live_in_hold_down} \
         connections went to live in the hold-down"
    );
    // Not before the hold-down (measured from before the refused connect, so never shorter
    // than the real hold-down); generous above, a loaded machine delays the timer.
    assert!(back_after >= HOLD_DOWN, "flaky back after {back_after:?}");
    assert!(
        to_live_in_hold_down >= 1,
        "no connection was made in the hold-down"
    );
    assert_eq!(
        warren.metric(r#"warren_backend_up{backend="flaky",pool="default"}"#),
        1.0
    );
    server.abort();
    warren.stop().await;
}

/// README (failover): `next_upstream_timeout` bounds the whole walk. Three silent backends with
/// `connect_timeout` 2 s would hold a client 6 s; with `next_upstream_timeout` 3 s the client is
/// closed after about 3 s: the first backend's timeout is counted, the second attempt, cut short
/// by the budget, is not held against its backend (the client is counted as
/// `listener_rejected_total{reason="next_upstream_timeout"}`), and the third is never tried.
#[tokio::test]
async fn next_upstream_timeout_bounds_the_whole_failover() {
    let silent = [silent_peer(), silent_peer(), silent_peer()];
    let cfg = with_listener(
        config(
            Balance::RoundRobin,
            silent
                .iter()
                .enumerate()
                .map(|(i, p)| backend(&format!("s{i}"), p.addr))
                .collect(),
        ),
        |l| {
            l.connect_timeout = Duration::from_secs(2);
            l.next_upstream_timeout = Some(Duration::from_secs(3));
        },
    );
    let warren = Warren::start(cfg, quick());
    let started = Instant::now();
    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let end = tokio::time::timeout(10 * SECOND, s.read(&mut buf))
        .await
        .expect("the client is closed within 10 s");
    let took = started.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "closed, got {end:?}");
    let timeouts: Vec<f64> = (0..3)
        .map(|i| {
            warren.metric(&format!(
                r#"warren_backend_connect_failures_total{{backend="s{i}",pool="default",reason="timeout"}}"#
            ))
        })
        .collect();
    println!("closed after {took:?}; timeouts per backend {timeouts:?}");
    assert_eq!(
        timeouts.iter().filter(|t| **t > 0.0).count(),
        1,
        "one full connect_timeout counted; the try the budget cut short is not: {timeouts:?}"
    );
    assert_eq!(
        warren.metric(
            r#"warren_listener_rejected_total{listener="default",reason="next_upstream_timeout"}"#
        ),
        1.0
    );
    // Not before the overall limit; well before the 6 s of three connect timeouts.
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(5500),
        "closed after {took:?}"
    );
    assert_eq!(
        warren.metric(r#"warren_listener_rejected_total{listener="default",reason="no_backend"}"#),
        0.0
    );
    warren.stop().await;
}

/// README: an inbound PROXY header must arrive within `proxy_protocol_timeout`; a client that
/// sends part of one (or nothing) is closed once it passes, not before, and counted as
/// `reason="timeout"`; one that closes before its header is complete is counted as `closed`.
/// Neither reaches the backend.
#[tokio::test]
async fn a_proxy_header_must_arrive_in_time_and_a_client_gone_before_it_is_counted() {
    const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
    let b = spawn_backend(echo).await;
    let cfg = with_listener(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        |l| {
            l.accept_proxy_protocol = true;
            l.proxy_protocol_timeout = HEADER_TIMEOUT;
        },
    );
    let warren = Warren::start(cfg, quick());
    let rejected = |reason: &str| {
        warren.metric(&format!(
            r#"warren_proxy_header_rejected_total{{listener="default",reason="{reason}"}}"#
        ))
    };
    for sent in [&b"PROXY TCP4 1.2"[..], b""] {
        let started = Instant::now();
        let mut s = TcpStream::connect(warren.addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(10 * SECOND, s.read(&mut buf))
            .await
            .expect("closed within 10 s");
        let took = started.elapsed();
        println!("{sent:?}: closed after {took:?} (proxy_protocol_timeout {HEADER_TIMEOUT:?})");
        assert!(matches!(n, Ok(0) | Err(_)), "{sent:?} must be closed");
        // Not before the timeout; the upper bound is the generous deadline above.
        assert!(took >= HEADER_TIMEOUT, "{sent:?} closed after {took:?}");
    }
    wait_for("two timeouts counted", 5 * SECOND, || {
        rejected("timeout") == 2.0
    })
    .await;

    let mut s = TcpStream::connect(warren.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    drop(s);
    wait_for("a close counted", 5 * SECOND, || rejected("closed") == 1.0).await;
    assert_eq!(rejected("timeout"), 2.0);
    assert_eq!(rejected("malformed"), 0.0);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    warren.stop().await;
}

/// README: "if splice is refused or no pipe is free, the transfer falls back to copy without
/// dropping the connection". With a pipe budget of 0, 16 MiB each way pass intact by copy, and
/// the fallback is counted (`splice_fallbacks_total{reason="no_pipe"}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pipe_free_the_transfer_falls_back_to_copy_and_is_counted() {
    const TOTAL: usize = 16 << 20;
    let b = spawn_backend(echo).await;
    let options = Options {
        splice: true,
        max_pipes: 0,
        ..quick()
    };
    let warren = Warren::start(
        config(Balance::RoundRobin, vec![backend("b", b.addr)]),
        options,
    );
    let (sent, received) = echo_through(warren.addr, TOTAL).await;
    assert_eq!(sent, received, "the bytes came back intact");
    let m = |dir: &str, method: &str| {
        warren.metric(&format!(
            r#"warren_forwarded_bytes_total{{direction="{dir}",method="{method}"}}"#
        ))
    };
    for dir in ["to_backend", "to_client"] {
        assert_eq!(
            m(dir, "splice"),
            0.0,
            "{dir}: nothing by splice without a pipe"
        );
        assert_eq!(m(dir, "copy"), TOTAL as f64, "{dir}: every byte by copy");
    }
    let fallbacks = warren.metric(r#"warren_splice_fallbacks_total{reason="no_pipe"}"#);
    println!("{fallbacks} fallbacks for want of a pipe");
    assert!(fallbacks >= 1.0, "the fallback is counted");
    // Splice itself was never refused: that series is absent or 0.
    let text = warren.metrics.encode();
    assert!(
        text.lines()
            .filter(|l| l.starts_with(r#"warren_splice_fallbacks_total{reason="unsupported"}"#))
            .all(|l| l.ends_with(" 0")),
        "no unsupported fallback"
    );
    assert_eq!(warren.metric("warren_splice_pipes_leased"), 0.0);
    wait_for("the connection closed normally", 5 * SECOND, || {
        warren.metric(r#"warren_connections_closed_total{listener="default",reason="client"}"#)
            + warren
                .metric(r#"warren_connections_closed_total{listener="default",reason="backend"}"#)
            == 1.0
    })
    .await;
    warren.stop().await;
}
