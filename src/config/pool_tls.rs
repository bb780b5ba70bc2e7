//! `[pool.NAME.tls]`: the pool's backends speak TLS. Its files (the CA bundle that signs the
//! nodes' certificates, and an optional client certificate and key) are read and checked at
//! load through [`crate::tls`], so `warren check` refuses what a probe would fail on; each
//! backend gets a [`BackendTls`]: the rustls configuration, the name its certificate must
//! bear, and which client connections the data path encrypts to it ([`Encrypt`]). This module also refuses what needs TLS in a pool without it (`https://` probe and
//! management URLs, `amqps://` login URIs). It owns no socket: the probes
//! (`crate::health::probe`) and the data path (`crate::proxy`) do the handshakes.

use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::*;
use crate::tls::{ClientTls, FileRole, Identity, TlsError};

/// How one backend of a pool with `[pool.NAME.tls]` is reached: TLS with this client
/// configuration, its certificate checked against `server_name` (also sent as SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// The CA bundle (and client certificate) read at load; one per pool, shared.
    pub client: ClientTls,
    /// `server_name`, else the backend's host as written in `addr` (a name or an IP).
    pub server_name: ServerName<'static>,
    /// `encrypt`: which client connections are encrypted to it.
    pub encrypt: Encrypt,
}

impl BackendTls {
    /// The rustls configuration of the handshake.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.client.config()
    }

    /// Whether a client connection is forwarded over TLS to this backend: always when a
    /// `[listener.tls]` decrypted it (`terminated`), a plain listener's only with `all`.
    pub fn encrypts(&self, terminated: bool) -> bool {
        terminated || self.encrypt == Encrypt::All
    }
}

/// Which client connections warren encrypts to a TLS pool's backends (`[pool.NAME.tls]
/// encrypt`). A connection a `[listener.tls]` decrypted always is: its plain bytes would not
/// pass a TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encrypt {
    /// Only connections a `[listener.tls]` decrypted; a plain listener's bytes pass as they
    /// are (clients that speak amqps themselves, through to the nodes' TLS port).
    Terminated,
    /// Every connection, a plain listener's too (NGINX `proxy_ssl on`).
    All,
}

impl Encrypt {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Encrypt::Terminated => "terminated",
            Encrypt::All => "all",
        }
    }
}

impl Named for Encrypt {
    const ALL: &'static [Self] = &[Encrypt::Terminated, Encrypt::All];
    fn as_str(self) -> &'static str {
        Encrypt::as_str(self)
    }
}

/// `[pool.NAME.tls] encrypt` when omitted: a plain listener's bytes pass through as before.
pub const DEFAULT_ENCRYPT: Encrypt = Encrypt::Terminated;

/// `[pool.NAME.tls]` as loaded: what every backend shares.
pub(super) struct PoolTls {
    client: ClientTls,
    server_name: Option<ServerName<'static>>,
    encrypt: Encrypt,
}

/// What in a pool needs `[pool.NAME.tls]`, for [`Validator::needs_pool_tls`].
struct TlsUses<'a> {
    /// The health section's `url` when it is `https://`.
    probe_url: Option<&'a Str>,
    /// The health section's `uri` when it is `amqps://`.
    login_uri: Option<&'a Str>,
}

impl Validator<'_> {
    /// `[pool.NAME.tls]` if written; else what in the health section would need it.
    pub(super) fn pool_tls_section(
        &mut self,
        key: &str,
        raw: Option<Spanned<RawPoolTls>>,
        health: Option<&RawHealth>,
    ) -> Option<PoolTls> {
        match raw {
            Some(raw) => self.pool_tls(key, raw),
            None => {
                self.needs_pool_tls(key, tls_uses(health));
                None
            }
        }
    }

    /// `[pool.NAME.tls]` (`key` is `pool.NAME`): `ca` required, `cert` and `key` both or
    /// neither, every file read and checked now. `None` when absent or after a problem.
    fn pool_tls(&mut self, key: &str, raw: Spanned<RawPoolTls>) -> Option<PoolTls> {
        let section = raw.span();
        let raw = raw.into_inner();
        let server_name = raw.server_name.as_ref().and_then(|name| {
            match ServerName::try_from(name.get_ref().clone()) {
                Ok(parsed) => Some(parsed),
                Err(e) => {
                    self.report(
                        format!("{key}.tls.server_name"),
                        quote(name.get_ref()),
                        Some(name.span()),
                        format!("is not a DNS name or an IP address ({e})"),
                    );
                    None
                }
            }
        });
        let identity = self.pool_tls_identity(key, raw.cert.as_ref(), raw.key.as_ref());
        let encrypt = self.choice(
            &format!("{key}.tls.encrypt"),
            raw.encrypt.as_ref(),
            DEFAULT_ENCRYPT,
        );
        let Some(ca_raw) = &raw.ca else {
            self.report(
                format!("{key}.tls.ca"),
                "",
                Some(section),
                "required: the PEM file of the CA that signs the nodes' certificates",
            );
            return None;
        };
        let ca = self.path(&format!("{key}.tls.ca"), Some(ca_raw))?;
        let identity = identity?;
        let error = match ClientTls::load(&ca, identity.as_ref()) {
            Ok(client) if raw.server_name.is_none() || server_name.is_some() => {
                return Some(PoolTls {
                    client,
                    server_name,
                    encrypt,
                })
            }
            Ok(_) => return None,
            Err(error) => error,
        };
        let (which, raw_value, message) = match error {
            TlsError::File { role, problem, .. } => {
                let (which, value) = match role {
                    FileRole::Ca => ("ca", Some(ca_raw)),
                    FileRole::Certificate => ("cert", raw.cert.as_ref()),
                    FileRole::Key => ("key", raw.key.as_ref()),
                };
                (which, value.unwrap_or(ca_raw), problem.to_string())
            }
            TlsError::KeyMismatch { reason, .. } => (
                "key",
                raw.key.as_ref().unwrap_or(ca_raw),
                format!("is not the key of the certificate in {key}.tls.cert ({reason})"),
            ),
            TlsError::Config(e) => (
                "ca",
                ca_raw,
                format!("cannot build the TLS configuration: {e}"),
            ),
        };
        self.report(
            format!("{key}.tls.{which}"),
            quote(raw_value.get_ref()),
            Some(raw_value.span()),
            message,
        );
        None
    }

    /// `cert` and `key`: both or neither. `None` after a problem; `Some(None)` for neither.
    fn pool_tls_identity(
        &mut self,
        key: &str,
        cert: Option<&Str>,
        private_key: Option<&Str>,
    ) -> Option<Option<Identity>> {
        let (missing, present, what) = match (cert, private_key) {
            (None, None) => return Some(None),
            (Some(cert), Some(private_key)) => {
                let cert_file = self.path(&format!("{key}.tls.cert"), Some(cert));
                let key_file = self.path(&format!("{key}.tls.key"), Some(private_key));
                return Some(Some(Identity {
                    cert_file: cert_file?,
                    key_file: key_file?,
                }));
            }
            (Some(cert), None) => ("key", cert, "the PEM file of the client certificate's key"),
            (None, Some(private_key)) => (
                "cert",
                private_key,
                "the PEM file of the client certificate",
            ),
        };
        let other = if missing == "key" { "cert" } else { "key" };
        self.report(
            format!("{key}.tls.{missing}"),
            "",
            Some(present.span()),
            format!("required with {key}.tls.{other}: {what}"),
        );
        None
    }

    /// Each backend's [`BackendTls`]: the pool's, with the backend's host as the server name
    /// unless `server_name` is set.
    pub(super) fn backends_tls(
        &mut self,
        key: &str,
        tls: &PoolTls,
        backends: &mut [BackendConfig],
        addrs: &[Str],
    ) {
        for (i, (backend, addr)) in backends.iter_mut().zip(addrs).enumerate() {
            let server_name = match &tls.server_name {
                Some(name) => name.clone(),
                None => match ServerName::try_from(backend.host.clone()) {
                    Ok(name) => name,
                    Err(e) => {
                        self.report(
                            format!("{key}.backend[{i}].addr"),
                            quote(addr.get_ref()),
                            Some(addr.span()),
                            format!(
                                "its host cannot be checked against a TLS certificate ({e}): \
                                 set {key}.tls.server_name"
                            ),
                        );
                        continue;
                    }
                },
            };
            backend.tls = Some(BackendTls {
                client: tls.client.clone(),
                server_name,
                encrypt: tls.encrypt,
            });
        }
    }

    /// In a pool without `[pool.NAME.tls]` (`key` is `pool.NAME`), what would need it: an
    /// `https://` probe URL, an `amqps://` login URI (management URLs: `management_url`).
    fn needs_pool_tls(&mut self, key: &str, uses: TlsUses<'_>) {
        if let Some(url) = uses.probe_url {
            let shown = quote(&without_userinfo(url.get_ref()));
            let message = format!("is https://, which {}", needs_tls_message(key));
            self.report(
                format!("{key}.health.url"),
                shown,
                Some(url.span()),
                message,
            );
        }
        if let Some(uri) = uses.login_uri {
            let message = format!("is amqps://, which {}", needs_tls_message(key));
            self.report(
                format!("{key}.health.uri"),
                MASKED,
                Some(uri.span()),
                message,
            );
        }
    }
}

/// The end of a problem about TLS in a pool (`pool.NAME`) without `[pool.NAME.tls]`.
pub(super) fn needs_tls_message(pool_key: &str) -> String {
    format!(
        "needs [{pool_key}.tls] with the PEM file of the CA that signs the nodes' certificates \
         (ca = \"/etc/warren/rabbitmq-ca.pem\")"
    )
}

/// What the health section of a pool without `[pool.NAME.tls]` would need it for.
fn tls_uses(health: Option<&RawHealth>) -> TlsUses<'_> {
    let kind = health.map(|h| h.kind.get_ref().as_str());
    TlsUses {
        probe_url: health
            .and_then(|h| h.url.as_ref())
            .filter(|url| kind == Some("http") && url.get_ref().starts_with("https://")),
        login_uri: health
            .and_then(|h| h.uri.as_ref())
            .filter(|uri| kind == Some("amqp_login") && uri.get_ref().starts_with("amqps://")),
    }
}
