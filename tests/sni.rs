//! SNI routing (`[[listener.sni]]`, issue 20): a listener reads the server name of a client's
//! ClientHello without terminating TLS and forwards the connection to the pool of the route
//! that names it. The backends here are TLS servers of their own (certificates by the openssl
//! CLI, tests/common/certs.rs) that record every byte they receive. Criteria, each a number:
//! two server names (one through a wildcard) reach two pools, each client's rustls handshake
//! gets its pool's backend's certificate, and each backend received exactly the bytes its
//! client wrote (0 differing); no SNI and an unknown name go to the default pool, counted by
//! reason; a ClientHello in 3 segments 150 ms apart, the server name cut by the last one (also
//! after a PROXY header) is routed only then, and delivered byte-exact; a silent client is closed after `sni_timeout`
//! and counted; plain AMQP goes to the default pool as is; a reload moves a name to another
//! pool for new connections while an open one keeps echoing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warren::tls::{ClientTls, MinVersion, ServerFiles, ServerTls};
use warren::Options;

use common::certs::Certs;
use common::*;

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "sni-token";

/// Bytes seen by one end, shared with the test.
type Record = Arc<Mutex<Vec<u8>>>;

/// A stream that records what is read from it (a backend's view of its client's bytes) or
/// written to it (the client's own record).
struct Recording {
    inner: TcpStream,
    read: Record,
    written: Record,
}

impl Recording {
    fn new(inner: TcpStream) -> Recording {
        Recording {
            inner,
            read: Record::default(),
            written: Record::default(),
        }
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let got = buf.filled()[before..].to_vec();
            self.read.lock().unwrap().extend_from_slice(&got);
        }
        polled
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written.lock().unwrap().extend_from_slice(&buf[..*n]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS echo server with one certificate, recording the raw bytes of each connection.
struct TlsBackend {
    addr: SocketAddr,
    /// Per accepted connection, in order: the bytes it received.
    received: Arc<Mutex<Vec<Record>>>,
}

impl TlsBackend {
    async fn spawn(cert: &Path, key: &Path) -> TlsBackend {
        let files = ServerFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        };
        let tls = ServerTls::load(&files, MinVersion::Tls12, &[]).expect("backend TLS loads");
        let acceptor = tls.acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Record>>> = Arc::default();
        let connections = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let stream = Recording::new(socket);
                connections.lock().unwrap().push(stream.read.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = tls.flush().await;
                        }
                    }
                });
            }
        });
        TlsBackend { addr, received }
    }

    fn accepted(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The bytes connection `i` received so far.
    fn bytes(&self, i: usize) -> Vec<u8> {
        self.received.lock().unwrap()[i].lock().unwrap().clone()
    }
}

/// The three pools' backends and the certificates they present.
struct Setup {
    certs: Certs,
    main: TlsBackend,
    orders: TlsBackend,
    streams: TlsBackend,
}

async fn setup(test: &str) -> Option<Setup> {
    let certs = Certs::generate(test)?;
    let (orders_cert, orders_key) = certs.server_for("orders", &["orders.example.com"]);
    let (streams_cert, streams_key) = certs.server_for("streams", &["*.streams.example.com"]);
    Some(Setup {
        main: TlsBackend::spawn(&certs.server_cert, &certs.server_key).await,
        orders: TlsBackend::spawn(&orders_cert, &orders_key).await,
        streams: TlsBackend::spawn(&streams_cert, &streams_key).await,
        certs,
    })
}

/// A config with an admin API and the listener "amqps" (default pool "main") whose routes are
/// `routes` (`[[listener.sni]]` tables) and listener keys `extra`.
fn write_config(s: &Setup, admin_port: u16, port: u16, extra: &str, routes: &str) -> PathBuf {
    let dir = s.certs.dir();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n\n\
         [[listener]]\nname = \"amqps\"\nlisten = \"127.0.0.1:{port}\"\npool = \"main\"\n{extra}\n{routes}\n",
        dir.join("token").display()
    );
    for (pool, b) in [
        ("main", &s.main),
        ("orders", &s.orders),
        ("streams", &s.streams),
    ] {
        text += &format!(
            "[pool.{pool}]\n[[pool.{pool}.backend]]\nname = \"{pool}-0\"\naddr = \"{}\"\n\n",
            b.addr
        );
    }
    let path = dir.join("warren.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const ROUTES: &str = "[[listener.sni]]\nserver_name = \"orders.example.com\"\npool = \"orders\"\n\
                      [[listener.sni]]\nserver_name = \"*.streams.example.com\"\npool = \"streams\"\n";

fn start(path: &Path) -> Warren {
    let config = warren::config::load(path).expect("test config loads");
    let options = Options {
        config_path: Some(path.to_path_buf()),
        ..quick()
    };
    Warren::start(config, options)
}

/// A TLS client trusting the test CA.
fn connector(certs: &Certs) -> tokio_rustls::TlsConnector {
    let tls = ClientTls::load(&certs.ca, None).expect("client TLS loads");
    tokio_rustls::TlsConnector::from(tls.config())
}

/// A TLS session through warren for `name` (an IP address sends no SNI), its raw bytes
/// recorded.
async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> (tokio_rustls::client::TlsStream<Recording>, Record) {
    let tcp = Recording::new(TcpStream::connect(addr).await.unwrap());
    let written = tcp.written.clone();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let handshake = connector.connect(name, tcp);
    let session = tokio::time::timeout(5 * SECOND, handshake)
        .await
        .expect("handshake within 5 s")
        .expect("handshake through warren");
    (session, written)
}

/// Send `byte` and read it back within 5 s.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, byte: u8) -> bool {
    let round = async {
        s.write_all(&[byte]).await?;
        s.flush().await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok::<_, std::io::Error>(b[0] == byte)
    };
    matches!(tokio::time::timeout(5 * SECOND, round).await, Ok(Ok(true)))
}

/// The DER of the certificate the server presented, and of the first one in a PEM file.
fn peer_leaf(s: &tokio_rustls::client::TlsStream<Recording>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn leaf_of(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let role = warren::tls::FileRole::Certificate;
    warren::tls::parse_certificates(path, role, &bytes).unwrap()[0].to_vec()
}

/// The bytes a rustls client sends first for `name`: its whole ClientHello.
fn client_hello(certs: &Certs, name: &str) -> Vec<u8> {
    let config = ClientTls::load(&certs.ca, None).unwrap().config();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

fn routed(w: &Warren, pool: &str) -> f64 {
    w.metric_or_zero(&format!(
        r#"warren_sni_routed_total{{listener="amqps",pool="{pool}"}}"#
    ))
}

fn unrouted(w: &Warren, reason: &str) -> f64 {
    w.metric(&format!(
        r#"warren_sni_unrouted_total{{listener="amqps",reason="{reason}"}}"#
    ))
}

/// Criterion: an exact name, a name under the wildcard and a client without SNI each complete
/// a real handshake with the certificate of their pool's backend and echo, and each backend
/// received exactly the bytes its client wrote; an unknown name reaches the default pool.
/// Counted: routed 1 per pool (main twice), no_sni 1, no_match 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_reach_their_pools_byte_exact_without_termination() {
    let Some(s) = setup("sni-routes").await else {
        return;
    };
    let config = write_config(&s, free_port(), free_port(), "", ROUTES);
    let warren = start(&config);
    let tls = connector(&s.certs);
    let cases = [
        (
            "orders.example.com",
            &s.orders,
            leaf_of(&s.certs.dir().join("orders.pem")),
        ),
        (
            "a.streams.example.com",
            &s.streams,
            leaf_of(&s.certs.dir().join("streams.pem")),
        ),
        ("127.0.0.1", &s.main, leaf_of(&s.certs.server_cert)),
    ];
    for (name, backend, leaf) in &cases {
        let (mut session, written) = connect(&tls, warren.addr, name).await;
        assert_eq!(
            &peer_leaf(&session),
            leaf,
            "{name}: another pool's certificate"
        );
        for byte in 0..20u8 {
            assert!(echo(&mut session, byte).await, "{name}: echo {byte}");
        }
        // The backend read everything the client wrote before its last echo came back.
        let sent = written.lock().unwrap().clone();
        let got = backend.bytes(backend.accepted() - 1);
        let differing = sent.iter().zip(&got).filter(|(a, b)| a != b).count();
        println!(
            "{name}: client wrote {} bytes, backend received {}, {differing} differ",
            sent.len(),
            got.len()
        );
        assert_eq!(
            got, sent,
            "{name}: the backend did not receive the client's bytes as is"
        );
    }
    assert_eq!(
        (s.main.accepted(), s.orders.accepted(), s.streams.accepted()),
        (1, 1, 1)
    );
    // A name no route names, as a client that will not trust main's certificate sends it.
    let hello = client_hello(&s.certs, "billing.example.com");
    let mut raw = TcpStream::connect(warren.addr).await.unwrap();
    raw.write_all(&hello).await.unwrap();
    wait_for("the unknown name at main", 5 * SECOND, || {
        s.main.accepted() == 2
    })
    .await;
    wait_for("main received the hello", 5 * SECOND, || {
        s.main.bytes(1).len() >= hello.len()
    })
    .await;
    assert_eq!(s.main.bytes(1)[..hello.len()], hello[..]);
    // Two below the wildcard's one label: no match either.
    let hello = client_hello(&s.certs, "a.b.streams.example.com");
    let mut raw2 = TcpStream::connect(warren.addr).await.unwrap();
    raw2.write_all(&hello).await.unwrap();
    wait_for("the deep name at main", 5 * SECOND, || {
        s.main.accepted() == 3
    })
    .await;
    assert_eq!(
        (routed(&warren, "orders"), routed(&warren, "streams")),
        (1.0, 1.0)
    );
    assert_eq!(routed(&warren, "main"), 3.0);
    assert_eq!(
        (unrouted(&warren, "no_sni"), unrouted(&warren, "no_match")),
        (1.0, 2.0)
    );
    assert_eq!(unrouted(&warren, "timeout"), 0.0);
    // Per-pool accounting: each pool's backend counts its own connection.
    let series = |pool: &str| {
        warren.metric_or_zero(&format!(
            r#"warren_backend_connections_total{{backend="{pool}-0",pool="{pool}"}}"#
        ))
    };
    assert_eq!(
        (series("orders"), series("streams"), series("main")),
        (1.0, 1.0, 3.0)
    );
    drop((raw, raw2));
    warren.stop().await;
}

/// Criterion: a ClientHello written in 3 segments 150 ms apart, the server name split by the
/// last cut, is routed to its pool after the third (0 backends connected before), and the
/// backend receives exactly those bytes. On a listener with `accept_proxy_protocol`, the
/// PROXY header and the hello's first bytes in one segment: the header is consumed, the
/// backend receives the hello alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hello_in_three_segments_is_routed_byte_exact() {
    let Some(s) = setup("sni-slow").await else {
        return;
    };
    for (i, proxy) in [false, true].into_iter().enumerate() {
        let extra = if proxy {
            "accept_proxy_protocol = true\n"
        } else {
            ""
        };
        let config = write_config(&s, free_port(), free_port(), extra, ROUTES);
        let warren = start(&config);
        let hello = client_hello(&s.certs, "orders.example.com");
        let mut client = TcpStream::connect(warren.addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        // The second segment ends inside the server name, so only the third decides.
        let name = b"orders.example.com";
        let at = hello.windows(name.len()).position(|w| w == name).unwrap();
        let (cut1, cut2) = (at / 2, at + name.len() / 2);
        let mut first = Vec::new();
        if proxy {
            first.extend_from_slice(b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 5671\r\n");
        }
        first.extend_from_slice(&hello[..cut1]);
        let started = Instant::now();
        for (n, segment) in [&first[..], &hello[cut1..cut2], &hello[cut2..]]
            .into_iter()
            .enumerate()
        {
            if n > 0 {
                // The slow client's pause, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(150)).await;
                assert_eq!(
                    s.orders.accepted(),
                    i,
                    "routed before the server name arrived"
                );
            }
            client.write_all(segment).await.unwrap();
        }
        wait_for("the hello at orders", 5 * SECOND, || {
            s.orders.accepted() == i + 1 && s.orders.bytes(i).len() >= hello.len()
        })
        .await;
        println!(
            "proxy header {proxy}: routed {:?} after the first segment",
            started.elapsed()
        );
        assert_eq!(
            s.orders.bytes(i),
            hello,
            "the backend did not receive the hello as sent"
        );
        assert_eq!(routed(&warren, "orders"), 1.0);
        assert_eq!(s.main.accepted(), 0);
        drop(client);
        warren.stop().await;
    }
}

/// Criterion: a client that sends nothing is closed after `sni_timeout` (300 ms; within 2 s
/// more) and counted as `timeout`, no backend connected; plain AMQP's protocol header goes to
/// the default pool as is, counted as `not_tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out_and_plain_amqp_goes_to_the_default_pool() {
    let Some(s) = setup("sni-timeout").await else {
        return;
    };
    let config = write_config(
        &s,
        free_port(),
        free_port(),
        "sni_timeout = \"300ms\"\n",
        ROUTES,
    );
    let warren = start(&config);
    let started = Instant::now();
    let mut silent = TcpStream::connect(warren.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(5 * SECOND, silent.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed: {read:?}"
    );
    println!("a silent client was closed after {took:?}");
    assert!(
        took >= Duration::from_millis(300),
        "closed before sni_timeout: {took:?}"
    );
    // Under the default sni_timeout (5 s), so the listener's 300 ms closed it; with room for a
    // loaded machine.
    assert!(took < Duration::from_millis(4000), "closed late: {took:?}");
    wait_for("the timeout counted", 5 * SECOND, || {
        unrouted(&warren, "timeout") == 1.0
    })
    .await;
    // The start of a hello (before its server name), then the client leaves: closed, not
    // routed.
    let hello = client_hello(&s.certs, "orders.example.com");
    let mut half = TcpStream::connect(warren.addr).await.unwrap();
    half.write_all(&hello[..40]).await.unwrap();
    half.shutdown().await.unwrap();
    wait_for("the close counted", 5 * SECOND, || {
        unrouted(&warren, "closed") == 1.0
    })
    .await;
    assert_eq!(s.orders.accepted() + s.main.accepted(), 0);

    let amqp = b"AMQP\x00\x00\x09\x01";
    let mut plain = TcpStream::connect(warren.addr).await.unwrap();
    plain.write_all(amqp).await.unwrap();
    wait_for("plain AMQP at main", 5 * SECOND, || {
        s.main.accepted() == 1 && s.main.bytes(0).len() >= amqp.len()
    })
    .await;
    assert_eq!(s.main.bytes(0), amqp);
    assert_eq!(unrouted(&warren, "not_tls"), 1.0);
    assert_eq!(routed(&warren, "main"), 1.0);
    drop(plain);
    warren.stop().await;
}

/// Criterion: a reload moving `orders.example.com` to pool "streams" sends the next connection
/// for that name there (the client sees streams' certificate, refused as the wrong name,
/// so a raw hello is counted), while the session opened before keeps echoing with orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_route_for_new_connections() {
    let Some(s) = setup("sni-reload").await else {
        return;
    };
    let (admin_port, port) = (free_port(), free_port());
    let config = write_config(&s, admin_port, port, "", ROUTES);
    let warren = start(&config);
    let tls = connector(&s.certs);
    let (mut before, _) = connect(&tls, warren.addr, "orders.example.com").await;
    assert!(echo(&mut before, 1).await);
    let moved = ROUTES.replace("pool = \"orders\"", "pool = \"streams\"");
    write_config(&s, admin_port, port, "", &moved);
    let (code, body) = http(
        warren.admin.unwrap(),
        "POST",
        "/v1/reload",
        Some(TOKEN),
        b"",
    )
    .await;
    assert_eq!(code, 200, "reload: {body}");
    let hello = client_hello(&s.certs, "orders.example.com");
    let mut after = TcpStream::connect(warren.addr).await.unwrap();
    after.write_all(&hello).await.unwrap();
    wait_for("the moved name at streams", 5 * SECOND, || {
        s.streams.accepted() == 1
    })
    .await;
    assert_eq!(s.orders.accepted(), 1);
    for byte in 2..12u8 {
        assert!(
            echo(&mut before, byte).await,
            "the session opened before the reload"
        );
    }
    assert_eq!(
        (routed(&warren, "orders"), routed(&warren, "streams")),
        (1.0, 1.0)
    );
    drop(after);
    warren.stop().await;
}

/// The `active_connections` of pool `pool`'s one backend in `/v1/status`.
async fn pool_active(admin: SocketAddr, pool: &str) -> i64 {
    let (code, body) = http(admin, "GET", "/v1/status", None, b"").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools = status["pools"].as_array().unwrap();
    let found = pools.iter().find(|p| p["name"] == pool);
    let found = found.unwrap_or_else(|| panic!("no pool {pool} in {body}"));
    found["backends"][0]["active_connections"].as_i64().unwrap()
}

/// Criterion: `warren upgrade` hands SNI-routed connections over like plain ones (warren holds
/// no TLS state of theirs): a session to "orders" and one to "streams" both echo 10 more
/// bytes through the new process, whose `/v1/status` counts 1 connection on orders' backend,
/// 1 on streams', 0 on main's, and lists the listener's 2 routes.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_routed_connections_over_with_their_pools() {
    let Some(s) = setup("sni-upgrade").await else {
        return;
    };
    let (admin_port, port) = (free_port(), free_port());
    let config = write_config(&s, admin_port, port, "", ROUTES);
    // `warren upgrade` here sends no token: a loopback admin API needs none.
    let text = std::fs::read_to_string(&config).unwrap();
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("token_file"))
        .collect();
    std::fs::write(&config, text.join("\n")).unwrap();
    let log = s.certs.dir().join("warren.log");
    let mut warren = WarrenProc::run_config(&config, log).await;
    let (admin, addr): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], admin_port).into(),
        ([127, 0, 0, 1], port).into(),
    );
    let tls = connector(&s.certs);
    let (mut orders, _) = connect(&tls, addr, "orders.example.com").await;
    let (mut streams, _) = connect(&tls, addr, "x.streams.example.com").await;
    assert!(echo(&mut orders, 1).await && echo(&mut streams, 1).await);
    let (ok, stdout, stderr) = warren_upgrade(admin).await;
    assert!(ok, "warren upgrade failed: {stderr}");
    let _adopted = Adopted(upgraded_pid(&stdout));
    warren.wait_exit(10 * SECOND).await;
    for byte in 2..12u8 {
        assert!(echo(&mut orders, byte).await, "orders after the upgrade");
        assert!(echo(&mut streams, byte).await, "streams after the upgrade");
    }
    let active = (
        pool_active(admin, "orders").await,
        pool_active(admin, "streams").await,
        pool_active(admin, "main").await,
    );
    assert_eq!(active, (1, 1, 0), "connections per pool in the new process");
    let (_, body) = http(admin, "GET", "/v1/status", None, b"").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["listeners"][0]["sni"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!((s.orders.accepted(), s.streams.accepted()), (1, 1));
}
