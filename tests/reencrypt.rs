//! Re-encryption to TLS backends (`[pool.NAME.tls]`, issue 20): warren opens TLS to the
//! backend and forwards the client's plain bytes inside it. Certificates are made by the
//! openssl CLI for each test (tests/common/certs.rs). Criteria, each a number: lapin through a
//! plain listener (`encrypt = "all"`) and through a `[listener.tls]` reaches a real RabbitMQ
//! node's TLS port (mutual TLS) and gets its 100 confirmed messages back, the node seeing a
//! TLS connection; a backend whose certificate the pool's CA did not sign fails the handshake,
//! counted as `reason="tls"`, and the client is served by the next backend; with no good
//! backend the client is refused; a plain listener's bytes still pass as they are by default
//! (`encrypt = "terminated"`); an outbound PROXY header goes before the TLS handshake; `warren
//! upgrade` leaves an encrypted connection working in the old process.

mod common;
#[allow(dead_code)]
#[path = "common/rabbit.rs"]
mod rabbit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren::tls::{ClientTls, MinVersion, ServerFiles, ServerTls};
use warren::Options;

use common::certs::Certs;
use common::*;

const SECOND: Duration = Duration::from_secs(1);

/// `[pool.NAME.tls]` lines: the test CA, `localhost` as the name (the server certificate
/// names 127.0.0.1 and localhost; the nodes listen on other loopback addresses), the client
/// certificate, and `encrypt` when given.
fn pool_tls(certs: &Certs, ca: &Path, encrypt: Option<&str>) -> String {
    let mut text = format!(
        "ca = \"{}\"\nserver_name = \"localhost\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    if let Some(encrypt) = encrypt {
        text += &format!("encrypt = \"{encrypt}\"\n");
    }
    text
}

/// A pool `name` over `backends` (named as given), with `[pool.NAME.tls]` made of `tls`.
fn pool(name: &str, backends: &[(&str, SocketAddr)], tls: &str) -> String {
    let mut text = format!("[pool.{name}]\n[pool.{name}.tls]\n{tls}\n");
    for (backend, addr) in backends {
        text += &format!("[[pool.{name}.backend]]\nname = \"{backend}\"\naddr = \"{addr}\"\n\n");
    }
    text
}

/// A listener `name` on `port` to `pool`; `extra` lines go into its table.
fn listener(name: &str, port: u16, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\npool = \"{pool}\"\n{extra}\n"
    )
}

/// `[listener.tls]` with the test server certificate.
fn listener_tls(certs: &Certs) -> String {
    format!(
        "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.server_cert.display(),
        certs.server_key.display()
    )
}

/// An in-process warren serving `text` (written into `dir`).
fn start(dir: &Path, text: &str) -> Warren {
    let path = dir.join("warren.toml");
    std::fs::write(&path, text).unwrap();
    let config = warren::config::load(&path).expect("test config loads");
    let options = Options {
        config_path: Some(path),
        ..quick()
    };
    Warren::start(config, options)
}

/// A TLS server on 127.0.0.1 with `cert` and `key` that runs `serve` on each session, and
/// counts the sessions. With `proxy_header`, each connection's first line (a PROXY v1 header)
/// is read before the handshake and kept.
struct TlsBackend {
    addr: SocketAddr,
    sessions: Arc<std::sync::atomic::AtomicUsize>,
    headers: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn tls_backend(cert: &Path, key: &Path, proxy_header: bool) -> TlsBackend {
    let files = ServerFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: None,
    };
    let tls = ServerTls::load(&files, MinVersion::Tls12, &[]).expect("test server TLS loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = TlsBackend {
        addr: listener.local_addr().unwrap(),
        sessions: Arc::default(),
        headers: Arc::default(),
    };
    let (sessions, headers) = (backend.sessions.clone(), backend.headers.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = tls.acceptor();
            let (sessions, headers) = (sessions.clone(), headers.clone());
            tokio::spawn(async move {
                if proxy_header {
                    let line = read_line(&mut tcp).await;
                    headers.lock().unwrap().push(line);
                }
                let Ok(mut session) = acceptor.accept(tcp).await else {
                    return;
                };
                sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = session.read(&mut buf).await {
                    if n == 0 || session.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = session.flush().await;
                }
                let _ = session.shutdown().await;
            });
        }
    });
    backend
}

/// One line, byte by byte (nothing after it is consumed).
async fn read_line(tcp: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tcp.read_exact(&mut byte).await.is_ok() {
        line.push(byte[0]);
        if byte[0] == b'\n' || line.len() > 200 {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Send `bytes` and read them back within 5 s.
async fn echoes<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> bool {
    let round = async {
        s.write_all(bytes).await?;
        s.flush().await?;
        let mut back = vec![0u8; bytes.len()];
        s.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == bytes)
    };
    matches!(tokio::time::timeout(5 * SECOND, round).await, Ok(Ok(true)))
}

/// A local plain-TCP port that wraps each connection in TLS to `warren` (trusting `ca`): lapin
/// (built without its TLS features) speaks AMQP through it.
async fn tls_shim(ca: &Path, warren: SocketAddr) -> SocketAddr {
    let tls = ClientTls::load(ca, None).expect("client TLS loads");
    let connector = tokio_rustls::TlsConnector::from(tls.config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let Ok(tcp) = TcpStream::connect(warren).await else {
                    return;
                };
                if let Ok(mut tls) = connector.connect(name, tcp).await {
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                }
            });
        }
    });
    addr
}

/// Publish 100 confirmed messages to `queue` through `addr` as connection `name`, consume all
/// 100 back; the connection is left open.
async fn round_trip_100(addr: SocketAddr, name: &str, queue: &str) -> lapin::Connection {
    use futures_lite::StreamExt;
    let connection = rabbit::connect(addr, name)
        .await
        .unwrap_or_else(|e| panic!("{name}: AMQP connects: {e}"));
    let channel = rabbit::confirm_channel(&connection).await.unwrap();
    rabbit::declare(&channel, queue, false).await.unwrap();
    for i in 0..100u32 {
        let ok = rabbit::publish_confirmed(&channel, queue, &i.to_be_bytes())
            .await
            .unwrap();
        assert!(ok, "{name}: message {i} nacked");
    }
    let mut consumer = rabbit::consume(&channel, queue, 50).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 100 {
        let delivery = tokio::time::timeout(rabbit::CLIENT_TIMEOUT, consumer.next())
            .await
            .expect("a delivery within the client timeout")
            .expect("the consumer stream is open")
            .expect("a delivery");
        rabbit::ack(&delivery).await.unwrap();
        got.push(u32::from_be_bytes(delivery.data[..4].try_into().unwrap()));
    }
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "{name}");
    connection
}

/// Whether the node sees connection `name` over TLS (`rabbitmqctl list_connections ssl`).
fn node_sees_tls(cluster: &rabbit::Cluster, name: &str) -> bool {
    let text = cluster.ctl(
        &cluster.nodes[0].name,
        &["-q", "list_connections", "client_properties", "ssl"],
    );
    text.lines()
        .filter(|l| l.contains(name))
        .any(|l| l.trim_end().ends_with("true"))
}

/// A RabbitMQ node with an AMQP TLS listener that wants a client certificate signed by the
/// test CA: the cluster and the TLS port on the node's address.
fn start_tls_node(tag: &str, certs: &Certs) -> (rabbit::Cluster, SocketAddr) {
    let port = free_port();
    let conf = [
        format!("listeners.ssl.default = {port}"),
        "ssl_options.verify = verify_peer".to_string(),
        "ssl_options.fail_if_no_peer_cert = true".to_string(),
        format!("ssl_options.cacertfile = {}", certs.ca.display()),
        format!("ssl_options.certfile = {}", certs.server_cert.display()),
        format!("ssl_options.keyfile = {}", certs.server_key.display()),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let cluster = rabbit::Cluster::start(tag, 1, &conf);
    let addr = SocketAddr::new(cluster.nodes[0].ip.into(), port);
    (cluster, addr)
}

fn failures(warren: &Warren, pool: &str, backend: &str, reason: &str) -> f64 {
    warren.metric_or_zero(&format!(
        r#"warren_backend_connect_failures_total{{backend="{backend}",pool="{pool}",reason="{reason}"}}"#
    ))
}

/// Criterion: lapin through a plain listener whose pool says `encrypt = "all"`, and lapin
/// through a `[listener.tls]` to a pool with the default, both reach the node's TLS port
/// (which wants warren's client certificate): 100 confirmed messages each published and
/// consumed back, the node seeing both connections over TLS. The plain listener's pool lists
/// first a backend whose certificate the pool's CA did not sign: its handshake fails, counted
/// as `reason="tls"`, and the client is served by the node (0 clients refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_reaches_a_tls_node_through_plain_and_tls_listeners() {
    let test = "lapin_reaches_a_tls_node_through_plain_and_tls_listeners";
    if !rabbit::available(test) {
        return;
    }
    let Some(certs) = Certs::generate("reencrypt-lapin") else {
        return;
    };
    let (cluster, node) = start_tls_node("reenc", &certs);
    let other_ca_key = certs.dir().join("other-ca.key");
    let stranger = tls_backend(&certs.other_ca, &other_ca_key, false).await;
    let (plain_port, tls_port) = (free_port(), free_port());
    let mut text = listener("amqp", plain_port, "all", "");
    text += &listener("amqps", tls_port, "node", &listener_tls(&certs));
    text += &pool(
        "all",
        &[("stranger", stranger.addr), ("node", node)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    text += &pool(
        "node",
        &[("node", node)],
        &pool_tls(&certs, &certs.ca, None),
    );
    let warren = start(certs.dir(), &text);

    // Round robin: of two connections, one tries the stranger first.
    let plain = round_trip_100(warren.addr, "reencrypt-plain", "q-plain").await;
    let second = rabbit::connect(warren.addr, "reencrypt-second")
        .await
        .expect("the second client connects");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let shim = tls_shim(&certs.ca, tls_addr).await;
    let terminated = round_trip_100(shim, "reencrypt-terminated", "q-terminated").await;

    let refused = failures(&warren, "all", "stranger", "tls");
    println!("handshakes refused by the stranger's certificate: {refused}");
    assert!(refused >= 1.0, "the stranger was never tried");
    assert_eq!(failures(&warren, "all", "node", "tls"), 0.0);
    assert_eq!(
        stranger.sessions.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        warren.metric_or_zero(
            r#"warren_listener_rejected_total{listener="amqp",reason="no_backend"}"#
        ),
        0.0
    );
    assert!(node_sees_tls(&cluster, "reencrypt-plain"), "plain listener");
    assert!(
        node_sees_tls(&cluster, "reencrypt-terminated"),
        "TLS listener"
    );
    plain.close(200, "bye".into()).await.unwrap();
    second.close(200, "bye".into()).await.unwrap();
    terminated.close(200, "bye".into()).await.unwrap();
    warren.stop().await;
}

/// Criterion: a pool whose only backend's certificate the CA did not sign refuses the client
/// (closed without a byte, `no_backend`), the handshake counted as `reason="tls"`; a pool
/// whose backend's certificate it signed echoes 1 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_certificate_the_ca_did_not_sign_refuses_the_client() {
    let Some(certs) = Certs::generate("reencrypt-wrong-ca") else {
        return;
    };
    let good = tls_backend(&certs.server_cert, &certs.server_key, false).await;
    let stranger = tls_backend(&certs.other_ca, &certs.dir().join("other-ca.key"), false).await;
    let (bad_port, good_port) = (free_port(), free_port());
    let mut text = listener("bad", bad_port, "bad", "");
    text += &listener("good", good_port, "good", "");
    text += &pool(
        "bad",
        &[("stranger", stranger.addr)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    text += &pool(
        "good",
        &[("good", good.addr)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    let warren = start(certs.dir(), &text);

    let mut client = TcpStream::connect(("127.0.0.1", bad_port)).await.unwrap();
    let _ = client.write_all(b"AMQP\x00\x00\x09\x01").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(5 * SECOND, client.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "not closed: {read:?}"
    );
    wait_for("the handshake failure counted", 5 * SECOND, || {
        failures(&warren, "bad", "stranger", "tls") >= 1.0
    })
    .await;
    assert_eq!(
        warren.metric(r#"warren_listener_rejected_total{listener="bad",reason="no_backend"}"#),
        1.0
    );

    let mut client = TcpStream::connect(("127.0.0.1", good_port)).await.unwrap();
    let kib: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    assert!(echoes(&mut client, &kib).await, "the good backend echoes");
    assert_eq!(good.sessions.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(failures(&warren, "good", "good", "tls"), 0.0);
    warren.stop().await;
}

/// Criterion: by default (`encrypt = "terminated"`) a plain listener's bytes pass as they are
/// to a TLS pool (clients that speak amqps themselves): a plain echo backend echoes them; with
/// `encrypt = "all"` and a PROXY v1 header, the backend reads the header in plain, then
/// completes a TLS handshake and echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_pass_through_unless_the_pool_encrypts_all() {
    let Some(certs) = Certs::generate("reencrypt-default") else {
        return;
    };
    let plain = spawn_backend(echo).await;
    let tls = tls_backend(&certs.server_cert, &certs.server_key, true).await;
    let (through_port, proxied_port) = (free_port(), free_port());
    let mut text = listener("through", through_port, "through", "");
    text += &listener("proxied", proxied_port, "tls", "proxy_protocol = \"v1\"\n");
    text += &pool(
        "through",
        &[("plain", plain.addr)],
        &pool_tls(&certs, &certs.ca, None),
    );
    text += &pool(
        "tls",
        &[("tls", tls.addr)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    let warren = start(certs.dir(), &text);

    let mut client = TcpStream::connect(("127.0.0.1", through_port))
        .await
        .unwrap();
    assert!(echoes(&mut client, b"plain as it is").await);
    assert_eq!(tls.sessions.load(std::sync::atomic::Ordering::SeqCst), 0);

    let mut client = TcpStream::connect(("127.0.0.1", proxied_port))
        .await
        .unwrap();
    assert!(echoes(&mut client, b"encrypted").await);
    assert_eq!(tls.sessions.load(std::sync::atomic::Ordering::SeqCst), 1);
    let headers = tls.headers.lock().unwrap().clone();
    let local = client.local_addr().unwrap();
    assert_eq!(
        headers,
        [format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {proxied_port}\r\n",
            local.port()
        )]
    );
    drop(client);
    wait_for(
        "the encrypted connection logged as closed",
        5 * SECOND,
        || {
            warren.metric_or_zero(
                r#"warren_connections_closed_total{listener="proxied",reason="client"}"#,
            ) == 1.0
        },
    )
    .await;
    warren.stop().await;
}

/// Criterion: with a plain connection and one warren encrypts to its backend open, `warren
/// upgrade` hands the plain one over and keeps the encrypted one in the old process (the
/// upgrade says so); both echo after it; the old process exits within 10 s of the encrypted
/// connection closing.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_an_encrypted_connection_in_the_old_process() {
    let Some(certs) = Certs::generate("reencrypt-upgrade") else {
        return;
    };
    let plain_backend = spawn_backend(echo).await;
    let tls = tls_backend(&certs.server_cert, &certs.server_key, false).await;
    let (admin_port, plain_port, tls_port) = (free_port(), free_port(), free_port());
    let mut text = process_config(admin_port, None, plain_port, &[plain_backend.addr], "");
    text += &listener("encrypted", tls_port, "tls", "");
    text += &pool(
        "tls",
        &[("tls", tls.addr)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    let config = certs.dir().join("warren.toml");
    std::fs::write(&config, text).unwrap();
    let mut warren = WarrenProc::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--shutdown-grace",
            "60s",
        ],
        certs.dir().join("warren.log"),
    );
    warren.logged("warren started", 10 * SECOND).await;
    let old_pid = warren.pid();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let mut plain = connect_echo(([127, 0, 0, 1], plain_port).into(), 1)
        .await
        .expect("plain echoes");
    let mut encrypted = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    assert!(echoes(&mut encrypted, b"before").await);

    let started = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(admin).await;
    assert!(ok, "warren upgrade failed: {stderr}");
    let pid = upgraded_pid(&stdout);
    let _adopted = Adopted(pid);
    assert_ne!(pid, old_pid);
    println!("upgrade took {:?}: {}", started.elapsed(), stdout.trim());
    assert!(
        stdout.contains("1 connections handed over")
            && stdout.contains("1 connections end in the old process"),
        "{stdout}"
    );
    assert!(echo_once(&mut plain, 3).await, "plain after the upgrade");
    assert!(
        echoes(&mut encrypted, b"after").await,
        "the encrypted connection after the upgrade"
    );
    assert!(warren.exited().is_none(), "the old process left it");
    let mut fresh = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    assert!(
        echoes(&mut fresh, b"new").await,
        "a new one, in the new process"
    );
    drop(fresh);
    drop(encrypted);
    let status = warren.wait_exit(10 * SECOND).await;
    println!(
        "the old process exited ({status}) {:?} after the upgrade",
        started.elapsed()
    );
    assert!(
        echo_once(&mut plain, 6).await,
        "plain after the old process left"
    );
    assert!(alive(pid));
    assert_eq!(tls.sessions.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Measurement (run by hand, release): 64 MiB echoed through a plain listener to a TLS
/// backend (`encrypt = "all"`) and to a plain one; the time and warren's CPU for each.
/// `cargo test --release --test reencrypt -- --ignored --nocapture measure`
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_64_mib_plain_and_encrypted() {
    let Some(certs) = Certs::generate("reencrypt-measure") else {
        return;
    };
    let plain_backend = spawn_backend(echo).await;
    let tls = tls_backend(&certs.server_cert, &certs.server_key, false).await;
    let (admin_port, plain_port, tls_port) = (free_port(), free_port(), free_port());
    let mut text = process_config(admin_port, None, plain_port, &[plain_backend.addr], "");
    text += &listener("encrypted", tls_port, "tls", "");
    text += &pool(
        "tls",
        &[("tls", tls.addr)],
        &pool_tls(&certs, &certs.ca, Some("all")),
    );
    let config = certs.dir().join("warren.toml");
    std::fs::write(&config, text).unwrap();
    let mut warren = WarrenProc::spawn(
        &["run", "--config", config.to_str().unwrap()],
        certs.dir().join("warren.log"),
    );
    warren.logged("warren started", 10 * SECOND).await;
    for (what, port) in [("plain->plain", plain_port), ("plain->TLS", tls_port)] {
        let cpu_before = cpu_seconds_of(warren.pid());
        let started = Instant::now();
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        const TOTAL: usize = 64 << 20;
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..TOTAL / chunk.len() {
                write.write_all(&chunk).await.unwrap();
            }
            write
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < TOTAL {
            let n = read.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
        }
        let took = started.elapsed();
        drop(writer.await.unwrap());
        let cpu = cpu_seconds_of(warren.pid()) - cpu_before;
        println!(
            "{what}: 64 MiB echoed in {:.0} ms ({:.0} MiB/s each way), warren CPU {:.0} ms",
            took.as_secs_f64() * 1000.0,
            64.0 / took.as_secs_f64(),
            cpu * 1000.0
        );
    }
    let _ = warren.exited();
}
