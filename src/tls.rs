//! TLS material read from files and the rustls configurations built from it: a CA bundle (the
//! roots a server's certificate must chain to), a certificate chain and its private key (PKCS#8,
//! PKCS#1 or SEC1, PEM), and the [`ClientTls`] that `[fleet]` gives the etcd client (mutual TLS
//! when a client certificate is given). Every failure names the file and the problem, so that
//! config load can refuse what a connection would. Always rustls's `ring` provider, given
//! explicitly: the process-wide default provider is never installed nor read. It owns no socket:
//! the handshake is [`crate::http_client`]'s, and what a file is for (which config key) is the
//! caller's.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The largest file read: a CA bundle of every public root is about 200 KiB.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// What is wrong with one file; shown after the file's name (or the config key naming it).
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("is not a regular file")]
    NotAFile,
    #[error("too large for a PEM file (more than {MAX_FILE} bytes)")]
    TooLarge,
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error(
        "no private key in it (expected PEM: -----BEGIN PRIVATE KEY-----, \
         -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
    )]
    NoKey,
    /// A certificate rustls cannot take as a trust anchor.
    #[error("certificate {index} is not a usable CA certificate: {reason}")]
    BadCa { index: usize, reason: String },
    /// A key rustls's provider cannot sign with.
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
}

/// What a file was read as (a caller names it by its own key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// The CA bundle that verifies the peer.
    Ca,
    /// A certificate chain, leaf first.
    Certificate,
    /// The certificate's private key.
    Key,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {problem}", path.display())]
    File {
        path: PathBuf,
        role: FileRole,
        problem: FileProblem,
    },
    /// The key is not the certificate's (only when rustls can tell).
    #[error("the private key in {} does not match the certificate in {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// rustls refused the configuration for another reason.
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

fn file_error(path: &Path, role: FileRole, problem: FileProblem) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        role,
        problem,
    }
}

/// The crypto provider of every TLS configuration warren builds: rustls's `ring` one.
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates it for lacking post-quantum key exchange (X25519MLKEM768),
    // which only its aws-lc-rs provider has; that one needs cmake and nasm on every build
    // machine, and etcd (Go's TLS) negotiates X25519 or P-256 with ring all the same.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// The content of `path`, read as `role`: a regular file of at most [`MAX_FILE`] bytes.
pub fn read_file(path: &Path, role: FileRole) -> Result<Vec<u8>, TlsError> {
    let problem = |p| file_error(path, role, p);
    // A FIFO or a device would block or never end.
    let metadata = std::fs::metadata(path).map_err(|e| problem(FileProblem::Read(e)))?;
    if !metadata.is_file() {
        return Err(problem(FileProblem::NotAFile));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| problem(FileProblem::Read(e)))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(problem(FileProblem::TooLarge));
    }
    Ok(bytes)
}

/// Every certificate in PEM `bytes` (read from `path` as `role`, named in errors); at least
/// one.
pub fn parse_certificates(
    path: &Path,
    role: FileRole,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| file_error(path, role, FileProblem::Pem(e.to_string())))?;
    if certs.is_empty() {
        return Err(file_error(path, role, FileProblem::NoCertificate));
    }
    Ok(certs)
}

/// The first private key in PEM `bytes` (PKCS#8, PKCS#1 or SEC1).
pub fn parse_private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let problem = |p| file_error(path, FileRole::Key, p);
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => problem(FileProblem::NoKey),
        e => problem(FileProblem::Pem(e.to_string())),
    })
}

/// The trust anchors of a CA bundle: every certificate in it must be one.
pub fn parse_roots(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = parse_certificates(path, FileRole::Ca, bytes)?;
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            file_error(
                path,
                FileRole::Ca,
                FileProblem::BadCa {
                    index: i + 1,
                    reason: e.to_string(),
                },
            )
        })?;
    }
    Ok(roots)
}

/// A client certificate: its chain (leaf first) and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One file as read: its path and content, kept so two loads can be compared.
#[derive(Clone, PartialEq, Eq)]
struct Source {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// A TLS client configuration loaded from files: the CA bundle that verifies servers and an
/// optional client certificate. Two are equal when they were read from the same paths with the
/// same content (a reload compares them); `Debug` shows the paths only.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    sources: Vec<Source>,
}

impl ClientTls {
    /// Read and check `ca_file` and, for mutual TLS, `identity`: TLS 1.2 and 1.3, the ring
    /// provider, servers verified against the CA bundle only.
    pub fn load(ca_file: &Path, identity: Option<&Identity>) -> Result<ClientTls, TlsError> {
        let ca = read_file(ca_file, FileRole::Ca)?;
        let roots = parse_roots(ca_file, &ca)?;
        let mut sources = vec![Source {
            path: ca_file.to_path_buf(),
            bytes: ca,
        }];
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = load_identity(identity, &mut sources)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| identity_error(identity, e))?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            sources,
        })
    }

    /// The rustls configuration, for [`crate::http_client::Request::tls`].
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.sources.len() > 1
    }
}

/// The chain and key of `identity`, their files' content pushed onto `sources`.
fn load_identity(
    identity: &Identity,
    sources: &mut Vec<Source>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_bytes = read_file(&identity.cert_file, FileRole::Certificate)?;
    let chain = parse_certificates(&identity.cert_file, FileRole::Certificate, &cert_bytes)?;
    let key_bytes = read_file(&identity.key_file, FileRole::Key)?;
    let key = parse_private_key(&identity.key_file, &key_bytes)?;
    sources.push(Source {
        path: identity.cert_file.clone(),
        bytes: cert_bytes,
    });
    sources.push(Source {
        path: identity.key_file.clone(),
        bytes: key_bytes,
    });
    Ok((chain, key))
}

/// What rustls's refusal of a certificate and key means, naming the files.
fn identity_error(identity: &Identity, error: rustls::Error) -> TlsError {
    match error {
        rustls::Error::InconsistentKeys(why) => TlsError::KeyMismatch {
            cert: identity.cert_file.clone(),
            key: identity.key_file.clone(),
            reason: format!("{why:?}"),
        },
        // The provider could not load the key (an unsupported algorithm, a corrupt key).
        rustls::Error::General(reason) => file_error(
            &identity.key_file,
            FileRole::Key,
            FileProblem::BadKey(reason),
        ),
        rustls::Error::InvalidCertificate(reason) => file_error(
            &identity.cert_file,
            FileRole::Certificate,
            FileProblem::Pem(format!("the certificate cannot be read: {reason:?}")),
        ),
        e => TlsError::Config(e),
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.sources == other.sources
    }
}

impl Eq for ClientTls {}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<_> = self.sources.iter().map(|s| &s.path).collect();
        f.debug_struct("ClientTls").field("files", &files).finish()
    }
}

/// The problem of a TLS handshake or exchange, if `error` (or what it wraps) is one of rustls's:
/// a certificate the server or client refused, a fatal alert. Its text is rustls's.
pub fn rustls_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_rustls(error).map(explain)
}

/// The server's refusal of this client's certificate (or of its lack of one), if that is what
/// `error` is: in TLS 1.3 it comes after the client's side of the handshake, with the request
/// possibly written, but the server never read it.
pub fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let tls = find_rustls(error)?;
    matches!(
        tls,
        rustls::Error::AlertReceived(
            Alert::BadCertificate
                | Alert::CertificateRequired
                | Alert::UnknownCA
                | Alert::CertificateUnknown
        )
    )
    .then(|| explain(tls))
}

fn find_rustls<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error hides its inner error from `source()`; ask for it.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

/// rustls's text, and what an alert about certificates means from the client's side.
fn explain(error: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::CertificateUnknown,
        ) => format!("{error} (the server refused this client's certificate, or wants one)"),
        error => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_problems_name_the_file() {
        let path = Path::new("/etc/warren/x.pem");
        fn text<T>(r: Result<T, TlsError>) -> String {
            r.map(drop).unwrap_err().to_string()
        }
        let cert = FileRole::Certificate;
        assert_eq!(
            text(parse_certificates(path, cert, b"hello")),
            "/etc/warren/x.pem: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        );
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let got = text(parse_certificates(path, cert, broken));
        assert!(got.starts_with("/etc/warren/x.pem: not valid PEM"), "{got}");
        let got = text(parse_private_key(path, b""));
        assert!(got.contains("no private key in it"), "{got}");
        let got = text(read_file(Path::new("/nonexistent/ca.pem"), FileRole::Ca));
        assert!(
            got.starts_with("/nonexistent/ca.pem: cannot read: "),
            "{got}"
        );
        let got = text(read_file(Path::new("/"), FileRole::Ca));
        assert_eq!(got, "/: is not a regular file");
    }

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        assert_eq!(
            rustls_reason(&io).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        assert_eq!(
            rustls_reason(&alert).as_deref(),
            Some(
                "received fatal alert: BadCertificate (the server refused this client's \
                 certificate, or wants one)"
            )
        );
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(rustls_reason(&plain), None);
    }
}
