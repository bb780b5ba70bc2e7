//! The TLS-termination workload: the proxies decrypt what clients send over TLS 1.3 and forward
//! it plain to the echo backend. Owns the run's certificate (a CA and an ECDSA P-256 server
//! certificate it signs, made with `openssl` in the scratch directory), the client's rustls
//! configuration (TLS 1.3 only, one cipher suite, one key-exchange group, no resumption) and
//! the two clients: full handshakes per second, and echoed bulk through a few TLS connections.
//! Writing the proxies' TLS settings is `peers`'s job; starting them and recording what the
//! clients measured is the run's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ProtocolVersion, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::procs::{addr, run_bounded, which};
use crate::Res;

/// The name the server certificate bears, and the client asks for (SNI).
const SERVER_NAME: &str = "warren-bench.test";
/// The one cipher suite every proxy is held to, as OpenSSL (HAProxy, NGINX) spells it.
pub const CIPHER_OPENSSL: &str = "TLS_AES_128_GCM_SHA256";
/// The same suite as warren's `tls.ciphers` spells it.
pub const CIPHER_RUSTLS: &str = "TLS13_AES_128_GCM_SHA256";
/// Concurrent clients of the handshake test.
pub const HANDSHAKE_CLIENTS: usize = 8;
/// TLS connections of the bulk test.
pub const BULK_STREAMS: [usize; 2] = [1, 4];
/// What the bulk client writes at a time.
const CHUNK: usize = 64 * 1024;
/// The longest one handshake round (connect, handshake, 1 byte each way, close) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificate files of the run, readable by the proxies (user nobody).
pub struct TlsFiles {
    /// The server certificate (PEM), leaf only: every proxy sends the same one certificate.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Certificate then key in one PEM, as HAProxy's `crt` wants them.
    pub combined: PathBuf,
    /// The CA the client trusts.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Make a CA and an ECDSA P-256 server certificate for [`SERVER_NAME`] it signs, in `dir`.
    pub fn generate(dir: &Path) -> Res<TlsFiles> {
        let p = |name: &str| dir.join(name);
        let files = TlsFiles {
            cert: p("tls-server.pem"),
            key: p("tls-server.key"),
            combined: p("tls-server-haproxy.pem"),
            ca: p("tls-ca.pem"),
        };
        let (ext, csr, ca_key) = (p("tls-server.ext"), p("tls-server.csr"), p("tls-ca.key"));
        write_0644(
            &ext,
            format!(
                "subjectAltName=DNS:{SERVER_NAME}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            )
            .as_bytes(),
        )?;
        let s = |path: &Path| path.display().to_string();
        let (ext, csr, ca_key) = (s(&ext), s(&csr), s(&ca_key));
        let (cert, key, ca) = (s(&files.cert), s(&files.key), s(&files.ca));
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ];
        let ca_out = [
            "-subj",
            "/CN=warren bench CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ];
        openssl(&[&["req", "-x509", "-days", "2"][..], &p256, &ca_ext, &ca_out].concat())?;
        let subject = format!("/CN={SERVER_NAME}");
        let csr_out = ["-subj", &subject, "-keyout", &key, "-out", &csr];
        openssl(&[&["req", "-new"][..], &p256, &csr_out].concat())?;
        let sign = [
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "1",
        ];
        let cert_out = ["-days", "2", "-extfile", &ext, "-out", &cert];
        openssl(&[&["x509", "-req"][..], &sign, &cert_out].concat())?;
        let read = |f: &Path| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
        let mut both = read(&files.cert)?;
        both.extend(read(&files.key)?);
        write_0644(&files.combined, &both)?;
        // A throwaway key in the scratch directory; the proxies run as nobody.
        write_0644(&files.key, &read(&files.key)?)?;
        Ok(files)
    }
}

fn write_0644(path: &Path, bytes: &[u8]) -> Res<()> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `openssl` with these arguments, to completion.
fn openssl(args: &[&str]) -> Res<()> {
    let mut cmd = Command::new(which("openssl")?);
    cmd.args(args);
    let (ok, _, err) = run_bounded(cmd, Duration::from_secs(30))?;
    if ok {
        Ok(())
    } else {
        Err(format!("openssl {}: {err}", args.join(" ")))
    }
}

/// The client's configuration: TLS 1.3, [`CIPHER_RUSTLS`] and X25519 only, so that every proxy
/// negotiates the same; the run's CA as the only root; no session resumption, so every
/// connection is a full handshake.
pub fn client_config(ca: &Path) -> Res<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    // Deprecated for lacking post-quantum key exchange, which the client does not offer anyway:
    // X25519 only, as warren's ring provider and the peers' OpenSSL 3.0 all have it.
    #[allow(deprecated)]
    let ring = provider::default_provider();
    let chosen = rustls::crypto::CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![provider::kx_group::X25519],
        ..ring
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(chosen))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("client TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Connect to `port` and complete a handshake; errs if it negotiated anything but TLS 1.3 with
/// the one suite.
async fn connect(connector: &TlsConnector, port: u16) -> Res<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr(port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tls.get_ref().1;
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3)
        || suite != Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
    {
        return Err(format!(
            "negotiated {:?} {suite:?}, not TLS 1.3 {CIPHER_RUSTLS}",
            conn.protocol_version()
        ));
    }
    Ok(tls)
}

/// What one handshake slot measured.
pub struct Handshakes {
    /// Completed rounds per second.
    pub rate: f64,
    pub done: u64,
    pub errors: u64,
    /// The first failure's reason, for the error note.
    pub first_error: Option<String>,
}

/// Connect → full handshake → 1 byte → its echo → close_notify and close, by `clients` tasks
/// on `rt` for `secs`.
pub fn handshakes(
    rt: &Runtime,
    config: &Arc<ClientConfig>,
    port: u16,
    clients: usize,
    secs: f64,
) -> Handshakes {
    let connector = TlsConnector::from(config.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None));
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (connector, ok, errors) = (connector.clone(), ok.clone(), errors.clone());
                let first_error = first_error.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let round = timeout(STEP_TIMEOUT, handshake_round(&connector, port));
                        let failed = match round.await {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e),
                            Err(_) => Some(format!("no round trip in {STEP_TIMEOUT:?}")),
                        };
                        match failed {
                            None => ok.fetch_add(1, Ordering::Relaxed),
                            Some(e) => {
                                first_error.lock().unwrap().get_or_insert(e);
                                errors.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        start.elapsed().as_secs_f64()
    });
    let done = ok.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().take();
    Handshakes {
        rate: done as f64 / elapsed,
        done,
        errors: errors.load(Ordering::Relaxed),
        first_error,
    }
}

/// One handshake round: connect, handshake, 1 byte and its echo, close_notify, close.
async fn handshake_round(connector: &TlsConnector, port: u16) -> Res<()> {
    let mut tls = connect(connector, port).await?;
    let mut byte = [0u8; 1];
    tls.write_all(b"x")
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().await.map_err(|e| format!("write: {e}"))?;
    tls.read_exact(&mut byte)
        .await
        .map_err(|e| format!("read the echo: {e}"))?;
    tls.shutdown().await.map_err(|e| format!("close: {e}"))
}

/// What one bulk slot measured.
pub struct TlsBulk {
    /// Echoed bytes per second, Gbit/s (each byte crossed the proxy both ways).
    pub gbps: f64,
    pub bytes: f64,
}

/// `streams` TLS connections, each writing [`CHUNK`]-byte blocks as fast as it can while it
/// reads the echo, for `secs` after all have connected; counts the bytes echoed back in time.
pub fn bulk(
    rt: &Runtime,
    config: &Arc<ClientConfig>,
    port: u16,
    streams: usize,
    secs: f64,
) -> Res<TlsBulk> {
    let connector = TlsConnector::from(config.clone());
    rt.block_on(async {
        let mut conns = Vec::with_capacity(streams);
        for _ in 0..streams {
            let c = timeout(STEP_TIMEOUT, connect(&connector, port))
                .await
                .map_err(|_| format!("no handshake in {STEP_TIMEOUT:?}"))??;
            conns.push(c);
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|c| tokio::spawn(echo_until(c, deadline)))
            .collect();
        let mut bytes = 0u64;
        for t in tasks {
            bytes += t.await.map_err(|e| format!("bulk task: {e}"))??;
        }
        if bytes == 0 {
            return Err("no bytes echoed".to_string());
        }
        Ok(TlsBulk {
            gbps: bytes as f64 * 8.0 / secs / 1e9,
            bytes: bytes as f64,
        })
    })
}

/// Write and read on one connection until `deadline`: the bytes read back by then.
async fn echo_until(tls: TlsStream<TcpStream>, deadline: Instant) -> Res<u64> {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = async move {
        let block = vec![0x5au8; CHUNK];
        loop {
            match timeout_at(deadline, wr.write_all(&block)).await {
                Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(format!("bulk write: {e}")),
                Ok(Ok(())) => {}
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            match timeout_at(deadline, rd.read(&mut buf)).await {
                Err(_) => return Ok(n),
                Ok(Ok(0)) => return Err("bulk: the proxy closed the connection".to_string()),
                Ok(Ok(k)) => n += k as u64,
                Ok(Err(e)) => return Err(format!("bulk read: {e}")),
            }
        }
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r
}
