//! Backends that move: warren asks a DNS server written here (UDP on 127.0.0.1, A records from
//! a table the test changes) through `[resolver] nameservers`, every `resolve_interval`. New
//! connections follow a moved name while open ones stay; a name that stops resolving keeps its
//! address and is counted; `expand` turns each address into a backend.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Within this a changed answer must be followed: the 1 s interval, plus slack for a loaded
/// machine.
const FOLLOWED_WITHIN: Duration = Duration::from_secs(10);

/// Names to IPv4 addresses; a name absent from it is NXDOMAIN.
type Table = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// A DNS server on its own thread (loading the config resolves while the test's runtime is
/// blocked), answering A queries from `table` and AAAA queries with no records.
struct Dns {
    addr: SocketAddr,
    table: Table,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start(entries: &[(&str, &[Ipv4Addr])]) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let table: Table = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (table.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..len], &t.lock().unwrap()) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        let dns = Dns {
            addr,
            table,
            stop,
            thread: Some(thread),
        };
        for (name, ips) in entries {
            dns.set(name, ips);
        }
        dns
    }

    /// `name` answers `ips` from now on; none: NXDOMAIN.
    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut table = self.table.lock().unwrap();
        if ips.is_empty() {
            table.remove(name);
        } else {
            table.insert(name.to_string(), ips.to_vec());
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply to one query (RFC 1035 4.1): the header with QR, RA and the code set, the question
/// echoed, and one A record per address (TTL 0) for an A query of a known name.
fn answer(query: &[u8], table: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let ips = table.get(&name);
    let records: &[Ipv4Addr] = match (ips, qtype) {
        (Some(ips), 1) => ips,
        _ => &[],
    };
    let rcode = if ips.is_some() { 0 } else { 3 };
    let mut reply = Vec::with_capacity(question_end + 16 * records.len());
    reply.extend_from_slice(&query[..2]);
    reply.push(0x80 | (query[2] & 0x79)); // QR, the opcode and RD as asked
    reply.push(0x80 | rcode); // RA
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// Backends on 127.0.0.`id` (one per id), all on the same port, each writing its id on
/// connect and then echoing.
struct Machines {
    port: u16,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Machines {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn machines(ids: &[u8]) -> Machines {
    'port: for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut listeners = Vec::new();
        for id in ids {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, *id), port)).await {
                Ok(l) => listeners.push((*id, l)),
                Err(_) => continue 'port,
            }
        }
        let tasks = listeners
            .into_iter()
            .map(|(id, listener)| {
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            if s.write_all(&[id]).await.is_ok() {
                                echo(s).await;
                            }
                        });
                    }
                })
            })
            .collect();
        return Machines { port, tasks };
    }
    panic!("no port free on every loopback address");
}

fn ip(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, id)
}

/// warren with pool "p" (resolve_interval 1s) of `backend` (a `[[pool.p.backend]]` body),
/// asking `dns`.
fn start(dns: &Dns, backend: &str, balance: &str) -> Warren {
    start_with(dns, backend, balance, "")
}

/// [`start`] with `tail` (more tables) after the backend.
fn start_with(dns: &Dns, backend: &str, balance: &str, tail: &str) -> Warren {
    let text = format!(
        "[resolver]\nnameservers = [\"{}\"]\n\
         [[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n\
         [pool.p]\nbalance = \"{balance}\"\nresolve_interval = \"1s\"\n\
         [[pool.p.backend]]\n{backend}\n{tail}\n",
        dns.addr
    );
    let config = warren::config::from_toml(&text, std::path::Path::new("resolve.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    // A file may not name port 0; the test binds one.
    Warren::start(with_listener(config, |l| l.listen.set_port(0)), quick())
}

/// The backends of pool "p" now: (name, address).
fn backends(warren: &Warren) -> Vec<(String, SocketAddr)> {
    let snapshot = warren.routing.load();
    snapshot.pools["p"]
        .backends
        .iter()
        .map(|b| (b.name.to_string(), b.addr))
        .collect()
}

/// Connect through warren until a connection lands on machine `id`.
async fn reach(warren: &Warren, id: u8) -> TcpStream {
    let deadline = tokio::time::Instant::now() + FOLLOWED_WITHIN;
    loop {
        let (got, s) = which_backend(warren.addr).await;
        if got == id {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection reached 127.0.0.{id} within {FOLLOWED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_moved_name_takes_new_connections_and_open_ones_stay() {
    let m = machines(&[2, 3]).await;
    let dns = Dns::start(&[("rabbit.test", &[ip(2)])]);
    let warren = start(
        &dns,
        &format!("name = \"rabbit\"\naddr = \"rabbit.test:{}\"", m.port),
        "round_robin",
    );
    let (id, mut before) = which_backend(warren.addr).await;
    assert_eq!(id, 2);

    dns.set("rabbit.test", &[ip(3)]);
    let mut after = reach(&warren, 3).await;
    assert_eq!(
        backends(&warren),
        [("rabbit".to_string(), SocketAddr::from((ip(3), m.port)))]
    );
    // Every new connection goes to the new address; the old one still echoes.
    for _ in 0..5 {
        assert_eq!(which_backend(warren.addr).await.0, 3);
    }
    assert!(
        echo_once(&mut before, 7).await,
        "the connection opened before the move broke"
    );
    assert!(echo_once(&mut after, 8).await);
    assert_eq!(
        warren.metric(r#"warren_backend_address_changes_total{backend="rabbit",pool="p"}"#),
        1.0
    );
    drop((before, after));
    warren.stop().await;
}

#[tokio::test]
async fn a_name_that_stops_resolving_keeps_its_address_and_is_counted() {
    let m = machines(&[2, 3]).await;
    let dns = Dns::start(&[("rabbit.test", &[ip(2)])]);
    let warren = start(
        &dns,
        &format!("name = \"rabbit\"\naddr = \"rabbit.test:{}\"", m.port),
        "round_robin",
    );
    dns.set("rabbit.test", &[]);
    let failures = r#"warren_backend_resolve_failures_total{backend="rabbit",pool="p"}"#;
    wait_for("two failed lookups", FOLLOWED_WITHIN * 2, || {
        warren.metric_or_zero(failures) >= 2.0
    })
    .await;
    assert_eq!(which_backend(warren.addr).await.0, 2);
    assert_eq!(
        backends(&warren),
        [("rabbit".to_string(), SocketAddr::from((ip(2), m.port)))]
    );
    // Back, elsewhere: followed.
    dns.set("rabbit.test", &[ip(3)]);
    reach(&warren, 3).await;
    warren.stop().await;
}

#[tokio::test]
async fn an_expanded_name_gains_and_loses_backends() {
    let m = machines(&[2, 3, 4]).await;
    let dns = Dns::start(&[("cluster.test", &[ip(3), ip(2)])]);
    let warren = start(
        &dns,
        &format!(
            "name = \"node\"\naddr = \"cluster.test:{}\"\nexpand = true",
            m.port
        ),
        "round_robin",
    );
    let at = |id: u8| SocketAddr::from((ip(id), m.port));
    assert_eq!(
        backends(&warren),
        [("node-1".to_string(), at(2)), ("node-2".to_string(), at(3))]
    );
    let mut on_two = reach(&warren, 2).await;

    dns.set("cluster.test", &[ip(2), ip(3), ip(4)]);
    reach(&warren, 4).await;
    assert_eq!(
        backends(&warren),
        [
            ("node-1".to_string(), at(2)),
            ("node-2".to_string(), at(3)),
            ("node-3".to_string(), at(4))
        ]
    );

    dns.set("cluster.test", &[ip(3), ip(4)]);
    wait_for("node-1 removed", FOLLOWED_WITHIN, || {
        backends(&warren).len() == 2
    })
    .await;
    assert_eq!(
        backends(&warren),
        [("node-2".to_string(), at(3)), ("node-3".to_string(), at(4))]
    );
    for _ in 0..6 {
        assert_ne!(which_backend(warren.addr).await.0, 2);
    }
    // Removed like a reload removes a backend: its connection continues.
    assert!(
        echo_once(&mut on_two, 9).await,
        "the removed backend's connection broke"
    );
    assert_eq!(
        warren.metric(r#"warren_backend_address_changes_total{backend="node",pool="p"}"#),
        2.0
    );
    drop(on_two);
    warren.stop().await;
}

/// The backend's health as the routing view has it.
fn health_of(warren: &Warren, backend: &str) -> warren::state::Health {
    let snapshot = warren.routing.load();
    snapshot.pools["p"].backend(backend).unwrap().health
}

/// A new address is a new machine: its health starts again and probes go to the new address
/// (here nothing listens there, so the backend goes down).
#[tokio::test]
async fn probes_follow_a_moved_name() {
    use warren::state::Health;
    let m = machines(&[2]).await;
    let dns = Dns::start(&[("rabbit.test", &[ip(2)])]);
    let warren = start_with(
        &dns,
        &format!("name = \"rabbit\"\naddr = \"rabbit.test:{}\"", m.port),
        "round_robin",
        "[pool.p.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
    );
    wait_for("up at 127.0.0.2", FOLLOWED_WITHIN, || {
        health_of(&warren, "rabbit") == Health::Up
    })
    .await;
    dns.set("rabbit.test", &[ip(3)]);
    wait_for(
        "down at 127.0.0.3, where nothing listens",
        FOLLOWED_WITHIN,
        || health_of(&warren, "rabbit") == Health::Down,
    )
    .await;
    assert_eq!(
        backends(&warren),
        [("rabbit".to_string(), SocketAddr::from((ip(3), m.port)))]
    );
    warren.stop().await;
}

/// What an operator sees of it, from the binary: the WARN once per failure streak however many
/// lookups fail, the lines when the name comes back elsewhere, and `host_name` in `/v1/status`.
#[tokio::test]
async fn the_log_says_each_failure_streak_once_and_each_move() {
    let m = machines(&[2, 3]).await;
    let dns = Dns::start(&[("rabbit.test", &[ip(2)])]);
    let dir = TempDir::new("resolve-log");
    let (admin, listen) = (free_port(), free_port());
    let path = dir.0.join("warren.toml");
    let text = format!(
        "[resolver]\nnameservers = [\"{}\"]\n{}resolve_interval = \"1s\"\n\
         [[pool.rabbitmq.backend]]\nname = \"rabbit\"\naddr = \"rabbit.test:{}\"\n",
        dns.addr,
        process_config(admin, None, listen, &[], ""),
        m.port
    );
    std::fs::write(&path, text).unwrap();
    let mut warren = WarrenProc::run_config(&path, dir.0.join("warren.log")).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let (_, status) = http(admin, "GET", "/v1/status", None, b"").await;
    assert!(status.contains(r#""host_name":"rabbit.test""#), "{status}");

    dns.set("rabbit.test", &[]);
    let failures = r#"warren_backend_resolve_failures_total{backend="rabbit",pool="rabbitmq"}"#;
    let deadline = tokio::time::Instant::now() + FOLLOWED_WITHIN * 2;
    loop {
        let (_, text) = http(admin, "GET", "/metrics", None, b"").await;
        if metric_or_zero(&text, failures) >= 3.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "3 failed lookups");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warned = "cannot resolve a backend's host name: it keeps its last address";
    assert_eq!(
        warren.log_text().matches(warned).count(),
        1,
        "{}",
        warren.log_text()
    );

    dns.set("rabbit.test", &[ip(3)]);
    warren
        .logged("backend address changed (DNS)", FOLLOWED_WITHIN)
        .await;
    let log = warren.log_text();
    assert!(log.contains("backend host name resolves again"), "{log}");
    let moved = log
        .lines()
        .find(|l| l.contains("backend address changed (DNS)"))
        .unwrap();
    for field in [
        format!("old={}", SocketAddr::from((ip(2), m.port))),
        format!("new={}", SocketAddr::from((ip(3), m.port))),
        "host=rabbit.test".to_string(),
    ] {
        assert!(moved.contains(&field), "{field} not in {moved}");
    }
}
