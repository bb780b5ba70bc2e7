//! TLS termination on a listener (`[listener.tls]`, issue 20 item 1): clients speak TLS to
//! warren, warren plain TCP to the backends. Certificates are made by the openssl CLI for each
//! test (tests/common/certs.rs). Criteria, each a number: a real RabbitMQ node behind warren
//! takes a lapin client's publishes and delivers them back through TLS; under `client_ca` a
//! client without a certificate is refused and counted as `no_client_certificate`; a silent
//! client is closed after `handshake_timeout` and counted as `timeout`; a certificate swapped
//! by a reload reaches new handshakes while 100 open sessions keep echoing (0 dropped), and a
//! broken new certificate fails the reload naming the file; `warren upgrade` hands plain
//! connections over while the old process keeps its TLS ones until they close.

mod common;
#[allow(dead_code)]
#[path = "common/rabbit.rs"]
mod rabbit;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use warren::tls::{ClientTls, Identity};
use warren::Options;

use common::certs::Certs;
use common::*;

const SECOND: Duration = Duration::from_secs(1);
const TOKEN: &str = "tls-token";

/// A config file with an admin API and one TLS listener "amqps" → pool "rabbitmq" over
/// `backends`, `tls` being the lines of its `[listener.tls]`.
fn write_config(
    dir: &Path,
    admin_port: u16,
    listen_port: u16,
    backends: &[SocketAddr],
    tls: &str,
) -> PathBuf {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n\n\
         [[listener]]\nname = \"amqps\"\nlisten = \"127.0.0.1:{listen_port}\"\npool = \"rabbitmq\"\n\
         [listener.tls]\n{tls}\n\n[pool.rabbitmq]\n\n",
        dir.join("token").display()
    );
    for (i, b) in backends.iter().enumerate() {
        text += &format!("[[pool.rabbitmq.backend]]\nname = \"b{i}\"\naddr = \"{b}\"\n\n");
    }
    let path = dir.join("warren.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cert` and `key` lines for `[listener.tls]`.
fn cert_lines(cert: &Path, key: &Path) -> String {
    format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// An in-process warren serving the config at `path`, with reloads reading it again.
fn start(path: &Path) -> Warren {
    let config = warren::config::load(path).expect("test config loads");
    let options = Options {
        config_path: Some(path.to_path_buf()),
        ..quick()
    };
    Warren::start(config, options)
}

/// A TLS client trusting `certs.ca`, with the client certificate when `identity`.
fn client_tls(certs: &Certs, identity: bool) -> tokio_rustls::TlsConnector {
    let identity = identity.then(|| Identity {
        cert_file: certs.client_cert.clone(),
        key_file: certs.client_key.clone(),
    });
    let tls = ClientTls::load(&certs.ca, identity.as_ref()).expect("client TLS loads");
    tokio_rustls::TlsConnector::from(tls.config())
}

/// A TLS session to warren at `addr`.
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Send one byte and read it back within 5 s.
async fn tls_echo(s: &mut TlsStream<TcpStream>, byte: u8) -> bool {
    let round = async {
        s.write_all(&[byte]).await?;
        s.flush().await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        Ok::<_, std::io::Error>(b[0] == byte)
    };
    matches!(tokio::time::timeout(5 * SECOND, round).await, Ok(Ok(true)))
}

/// The DER of the certificate the server presented.
fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .to_vec()
}

/// The DER of the first certificate in a PEM file.
fn leaf_of(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let role = warren::tls::FileRole::Certificate;
    warren::tls::parse_certificates(path, role, &bytes).unwrap()[0].to_vec()
}

/// A local plain-TCP port that wraps each connection in TLS to `warren`: lapin (built without
/// its TLS features) speaks AMQP through it, so the bytes reach warren as TLS.
async fn tls_shim(connector: tokio_rustls::TlsConnector, warren: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut plain, _)) = listener.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = tls_connect(&connector, warren).await {
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                }
            });
        }
    });
    addr
}

/// Criterion: a lapin client, through TLS to warren and plain AMQP to a real RabbitMQ node,
/// declares a queue, publishes 100 confirmed messages and consumes all 100 back; warren counts
/// the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_and_consumes_through_tls_to_a_real_node() {
    use futures_lite::StreamExt;
    let test = "lapin_publishes_and_consumes_through_tls_to_a_real_node";
    if !rabbit::available(test) {
        return;
    }
    let Some(certs) = Certs::generate("tls-lapin") else {
        return;
    };
    let cluster = rabbit::Cluster::start("tlsl", 1, &[]);
    let (admin_port, port) = (free_port(), free_port());
    let config = write_config(
        certs.dir(),
        admin_port,
        port,
        &[cluster.nodes[0].amqp],
        &cert_lines(&certs.server_cert, &certs.server_key),
    );
    let warren = start(&config);
    let shim = tls_shim(client_tls(&certs, false), warren.addr).await;
    let connection = rabbit::connect(shim, "tls-client")
        .await
        .expect("AMQP over TLS connects");
    let channel = rabbit::confirm_channel(&connection).await.unwrap();
    rabbit::declare(&channel, "tls-queue", false).await.unwrap();
    for i in 0..100u32 {
        let ok = rabbit::publish_confirmed(&channel, "tls-queue", &i.to_be_bytes())
            .await
            .unwrap();
        assert!(ok, "message {i} nacked");
    }
    let mut consumer = rabbit::consume(&channel, "tls-queue", 50).await.unwrap();
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
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert_eq!(
        warren.metric(r#"warren_tls_handshakes_total{listener="amqps"}"#),
        1.0
    );
    // The node sees warren's plain connection: the client's name reached it through TLS.
    assert_eq!(cluster.connections("tls-client").len(), 1);
    connection.close(200, "bye".into()).await.unwrap();
    warren.stop().await;
}

/// Criterion: under `client_ca`, a client without a certificate gets no session (0 bytes
/// echoed) and is counted as `no_client_certificate`; one with a certificate the CA signed
/// echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_refuses_a_client_without_a_certificate() {
    let Some(certs) = Certs::generate("tls-mutual") else {
        return;
    };
    let backend = spawn_backend(echo).await;
    let tls = format!(
        "{}client_ca = \"{}\"\n",
        cert_lines(&certs.server_cert, &certs.server_key),
        certs.ca.display()
    );
    let config = write_config(certs.dir(), free_port(), free_port(), &[backend.addr], &tls);
    let warren = start(&config);
    let failures = |reason: &str| {
        warren.metric(&format!(
            r#"warren_tls_handshake_failures_total{{listener="amqps",reason="{reason}"}}"#
        ))
    };
    // TLS 1.3: the client's handshake completes before the server checks its certificate, so
    // the refusal shows at the first read.
    let anonymous = tls_connect(&client_tls(&certs, false), warren.addr).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut s) => !tls_echo(&mut s, 1).await,
    };
    assert!(refused, "a client without a certificate got a session");
    wait_for("the failure counted", 5 * SECOND, || {
        failures("no_client_certificate") == 1.0
    })
    .await;
    let mut with_cert = tls_connect(&client_tls(&certs, true), warren.addr)
        .await
        .expect("a client with a certificate connects");
    assert!(tls_echo(&mut with_cert, 2).await);
    assert_eq!(failures("bad_certificate"), 0.0);
    assert_eq!(
        warren.metric(r#"warren_tls_handshakes_total{listener="amqps"}"#),
        1.0
    );
    warren.stop().await;
}

/// Criterion: a client that connects and sends nothing is closed within `handshake_timeout`
/// (300 ms) plus 2 s, and counted as `timeout`; plain AMQP on the TLS port is counted as
/// `protocol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let Some(certs) = Certs::generate("tls-timeout") else {
        return;
    };
    let backend = spawn_backend(echo).await;
    let tls = format!(
        "{}handshake_timeout = \"300ms\"\n",
        cert_lines(&certs.server_cert, &certs.server_key)
    );
    let config = write_config(certs.dir(), free_port(), free_port(), &[backend.addr], &tls);
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
        "closed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2300), "closed late: {took:?}");
    let failures = |reason: &str| {
        warren.metric(&format!(
            r#"warren_tls_handshake_failures_total{{listener="amqps",reason="{reason}"}}"#
        ))
    };
    wait_for("the timeout counted", 5 * SECOND, || {
        failures("timeout") == 1.0
    })
    .await;
    let mut plain = TcpStream::connect(warren.addr).await.unwrap();
    plain.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let _ = tokio::time::timeout(5 * SECOND, plain.read(&mut buf)).await;
    wait_for("plain AMQP counted", 5 * SECOND, || {
        failures("protocol") == 1.0
    })
    .await;
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    warren.stop().await;
}

/// Criterion: 100 TLS sessions open, the certificate and key files replaced by a second
/// certificate and the config reloaded: all 100 still echo (0 dropped) and still hold the
/// first certificate, while a new handshake gets the second. A broken certificate file then
/// fails the reload with a message naming the file, and new handshakes keep the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_handshakes_only() {
    let Some(certs) = Certs::generate("tls-reload") else {
        return;
    };
    let (second_cert, second_key) = certs.another_server("second");
    let backend = spawn_backend(echo).await;
    // Files warren reads, so the test can replace their content.
    let (cert, key) = (certs.dir().join("live.pem"), certs.dir().join("live.key"));
    std::fs::copy(&certs.server_cert, &cert).unwrap();
    std::fs::copy(&certs.server_key, &key).unwrap();
    let config = write_config(
        certs.dir(),
        free_port(),
        free_port(),
        &[backend.addr],
        &cert_lines(&cert, &key),
    );
    let warren = start(&config);
    let admin = warren.admin.unwrap();
    let connector = client_tls(&certs, false);
    let (first, second) = (leaf_of(&certs.server_cert), leaf_of(&second_cert));
    assert_ne!(first, second);

    let mut open = Vec::new();
    for i in 0..100u32 {
        let mut s = tls_connect(&connector, warren.addr).await.unwrap();
        assert!(tls_echo(&mut s, i as u8).await);
        assert_eq!(peer_leaf(&s), first);
        open.push(s);
    }
    std::fs::copy(&second_cert, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(code, 200, "{body}");
    let mut dropped = 0;
    for (i, s) in open.iter_mut().enumerate() {
        if !tls_echo(s, i as u8).await {
            dropped += 1;
        }
        assert_eq!(peer_leaf(s), first, "an open session's certificate changed");
    }
    assert_eq!(dropped, 0, "open TLS sessions dropped by the reload");
    let mut fresh = tls_connect(&connector, warren.addr).await.unwrap();
    assert_eq!(
        peer_leaf(&fresh),
        second,
        "a new handshake after the reload"
    );
    assert!(tls_echo(&mut fresh, 7).await);

    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (code, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_ne!(code, 200, "a broken certificate reloaded: {body}");
    assert!(
        body.contains("listener[0].tls.cert") && body.contains(&cert.display().to_string()),
        "the reload's error names the key and the file: {body}"
    );
    let mut after = tls_connect(&connector, warren.addr).await.unwrap();
    assert_eq!(
        peer_leaf(&after),
        second,
        "a failed reload changed the certificate"
    );
    assert!(tls_echo(&mut after, 8).await);
    println!("100 sessions across a certificate swap: {dropped} dropped");
    warren.stop().await;
}

/// Criterion: with a plain and a TLS listener, `warren upgrade` succeeds; the plain connection
/// moves to the new process and echoes; the TLS session stays in the old process and echoes;
/// the old process runs until that session closes, then exits within 10 s; a new TLS
/// handshake is served by the new process.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_over_plain_connections_and_keeps_tls_ones() {
    let Some(certs) = Certs::generate("tls-upgrade") else {
        return;
    };
    let backend = spawn_backend(echo).await;
    let (admin_port, plain_port, tls_port) = (free_port(), free_port(), free_port());
    let mut text = process_config(admin_port, None, plain_port, &[backend.addr], "");
    text += &format!(
        "[[listener]]\nname = \"amqps\"\nlisten = \"127.0.0.1:{tls_port}\"\npool = \"rabbitmq\"\n\
         [listener.tls]\n{}\n",
        cert_lines(&certs.server_cert, &certs.server_key)
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
    let (admin, plain_addr, tls_addr): (SocketAddr, SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], admin_port).into(),
        ([127, 0, 0, 1], plain_port).into(),
        ([127, 0, 0, 1], tls_port).into(),
    );
    let connector = client_tls(&certs, false);
    let mut plain = connect_echo(plain_addr, 1).await.expect("plain echoes");
    let mut session = tls_connect(&connector, tls_addr).await.unwrap();
    assert!(tls_echo(&mut session, 2).await);

    let started = Instant::now();
    let (ok, stdout, stderr) = warren_upgrade(admin).await;
    assert!(ok, "warren upgrade failed: {stderr}");
    let took = started.elapsed();
    let pid = upgraded_pid(&stdout);
    let _adopted = Adopted(pid);
    assert_ne!(pid, old_pid);
    println!("upgrade took {took:?}: {}", stdout.trim());
    assert!(
        stdout.contains("1 connections handed over")
            && stdout.contains("1 connections end in the old process (TLS sessions"),
        "{stdout}"
    );
    assert!(
        took < 5 * SECOND,
        "the TLS session held the upgrade up: {took:?}"
    );
    assert!(
        echo_once(&mut plain, 3).await,
        "the plain connection after the upgrade"
    );
    assert!(
        tls_echo(&mut session, 4).await,
        "the TLS session after the upgrade"
    );
    assert!(
        warren.exited().is_none(),
        "the old process left its TLS session"
    );
    warren
        .logged("TLS connections cannot move", 5 * SECOND)
        .await;
    let mut fresh = tls_connect(&connector, tls_addr).await.unwrap();
    assert!(
        tls_echo(&mut fresh, 5).await,
        "a new TLS session after the upgrade"
    );
    drop(fresh);
    // Plain: handed over, so it is not the old process's any more; TLS: the last one there.
    drop(session);
    let status = warren.wait_exit(10 * SECOND).await;
    println!(
        "the old process exited ({status}) {:?} after the upgrade",
        started.elapsed()
    );
    assert!(
        echo_once(&mut plain, 6).await,
        "the plain connection after the old process left"
    );
    assert!(alive(pid));
}

/// Criterion: on a listener that takes a PROXY header, a client whose header and ClientHello
/// arrive in one segment completes its handshake (the bytes after the header go to the
/// handshake, not to the backend) and echoes; the backend gets only the plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_and_client_hello_in_one_segment_handshake() {
    let Some(certs) = Certs::generate("tls-proxy") else {
        return;
    };
    let backend = spawn_backend(echo).await;
    let config = write_config(
        certs.dir(),
        free_port(),
        free_port(),
        &[backend.addr],
        &cert_lines(&certs.server_cert, &certs.server_key),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "pool = \"rabbitmq\"\n[listener.tls]",
        "pool = \"rabbitmq\"\naccept_proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]\n\
         [listener.tls]",
    );
    std::fs::write(&config, text).unwrap();
    let warren = start(&config);
    let tcp = TcpStream::connect(warren.addr).await.unwrap();
    // Buffered: the header waits in the buffer and leaves with the ClientHello's flush.
    let mut buffered = tokio::io::BufWriter::new(tcp);
    buffered
        .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5671\r\n")
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut session = client_tls(&certs, false)
        .connect(name, buffered)
        .await
        .expect("the handshake after a PROXY header");
    let round = async {
        session.write_all(b"ping").await?;
        session.flush().await?;
        let mut got = [0u8; 4];
        session.read_exact(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let got = tokio::time::timeout(5 * SECOND, round)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(
        warren.metric(r#"warren_tls_handshakes_total{listener="amqps"}"#),
        1.0
    );
    warren.stop().await;
}

/// Criterion: `warren check` refuses what `run` would: a `[listener.tls]` whose key file is
/// missing exits non-zero with the key path, the file and the problem on one line.
#[tokio::test]
async fn warren_check_refuses_a_missing_key_file() {
    let dir = TempDir::new("tls-check");
    let Some(certs) = Certs::generate("tls-check") else {
        return;
    };
    let missing = dir.0.join("gone.key");
    let tls = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        certs.server_cert.display(),
        missing.display()
    );
    let config = write_config(&dir.0, free_port(), free_port(), &[refused_addr()], &tls);
    let out = std::process::Command::new(WARREN_BIN)
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "warren check passed: {stderr}");
    let line = format!(
        "listener[0].tls.key = \"{}\": cannot read: ",
        missing.display()
    );
    assert!(stderr.contains(&line), "{stderr}");
}
