//! Validation of `[listener.tls]`: the certificate chain and key a listener terminates clients'
//! TLS with, the optional `client_ca` of mutual TLS, the oldest version, the cipher suites and
//! the handshake timeout. The files are read and the rustls configuration built here, at load,
//! so `warren check` and a reload refuse what a handshake would; the handshake itself is the
//! data plane's (`crate::proxy::tls`).

use super::*;
use crate::tls::{cipher_suites, FileRole, MinVersion, ServerFiles, ServerTls, TlsError};

/// `[listener.tls] handshake_timeout` when omitted.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[listener.tls]`: clients speak TLS to the listener; warren speaks plain TCP to backends.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// How long a client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// The certificate, key, client CA, versions and cipher suites, as loaded.
    pub server: ServerTls,
}

impl Validator<'_> {
    /// `[listener.tls]` at `key` (`listener[i].tls`); `None` after a problem.
    pub(super) fn listener_tls(
        &mut self,
        key: &str,
        raw: Spanned<RawListenerTls>,
    ) -> Option<ListenerTls> {
        let span = raw.span();
        let raw = raw.into_inner();
        let handshake_timeout = self.positive_duration(
            &format!("{key}.handshake_timeout"),
            raw.handshake_timeout.as_ref(),
            DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        );
        let min_version = self.tls_min_version(key, raw.min_version.as_ref());
        let ciphers = self.tls_ciphers(key, raw.ciphers.as_ref(), min_version);
        let mut required = |name: &str, value: Option<&Str>| {
            if value.is_none() {
                self.report(
                    format!("{key}.{name}"),
                    "",
                    Some(span.clone()),
                    format!(
                        "required in [listener.tls]: the PEM file of the listener's {}",
                        if name == "cert" {
                            "certificate chain (leaf first)"
                        } else {
                            "private key"
                        }
                    ),
                );
            }
            self.path(&format!("{key}.{name}"), value)
        };
        let cert = required("cert", raw.cert.as_ref());
        let tls_key = required("key", raw.key.as_ref());
        let client_ca = match &raw.client_ca {
            None => Some(None),
            Some(ca) => self.path(&format!("{key}.client_ca"), Some(ca)).map(Some),
        };
        let files = ServerFiles {
            cert: cert?,
            key: tls_key?,
            client_ca: client_ca?,
        };
        let error = match ServerTls::load(&files, min_version?, &ciphers?) {
            Ok(server) => {
                return Some(ListenerTls {
                    handshake_timeout,
                    server,
                })
            }
            Err(error) => error,
        };
        self.tls_load_error(key, &raw, error);
        None
    }

    /// `min_version`: "1.2" (the default) or "1.3".
    fn tls_min_version(&mut self, key: &str, raw: Option<&Str>) -> Option<MinVersion> {
        let Some(raw) = raw else {
            return Some(MinVersion::Tls12);
        };
        match raw.get_ref().as_str() {
            "1.2" => Some(MinVersion::Tls12),
            "1.3" => Some(MinVersion::Tls13),
            other => {
                self.report(
                    format!("{key}.min_version"),
                    quote(other),
                    Some(raw.span()),
                    "expected \"1.2\" or \"1.3\"",
                );
                None
            }
        }
    }

    /// `ciphers`: names of rustls's cipher suites, at least one usable at `min_version`;
    /// empty when the key is absent (rustls's safe set).
    fn tls_ciphers(
        &mut self,
        key: &str,
        raw: Option<&Spanned<Vec<Str>>>,
        min_version: Option<MinVersion>,
    ) -> Option<Vec<(String, rustls::SupportedCipherSuite)>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        let raw = list.get_ref();
        let ciphers_key = format!("{key}.ciphers");
        let known = cipher_suites();
        let mut chosen = Vec::new();
        let mut ok = true;
        for (j, name) in raw.iter().enumerate() {
            match known.iter().find(|(n, _)| n == name.get_ref()) {
                Some(found) if !chosen.contains(found) => chosen.push(found.clone()),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
                    self.report(
                        format!("{ciphers_key}[{j}]"),
                        quote(name.get_ref()),
                        Some(name.span()),
                        format!("unknown cipher suite; valid ones: {}", names.join(", ")),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let version = min_version.unwrap_or(MinVersion::Tls12);
        if !chosen.iter().any(|(_, s)| version.allows(*s)) {
            let span = Some(list.span());
            let message = if raw.is_empty() {
                "an empty list would refuse every handshake: name suites, or remove the key for \
                 rustls's safe set"
                    .to_string()
            } else {
                "none of these suites is TLS 1.3, and min_version = \"1.3\": add a TLS13_ suite"
                    .to_string()
            };
            self.report(ciphers_key, "", span, message);
            return None;
        }
        Some(chosen)
    }

    /// A file or rustls problem of `[listener.tls]`, under the key of the file it concerns.
    fn tls_load_error(&mut self, key: &str, raw: &RawListenerTls, error: TlsError) {
        let (name, message) = match error {
            TlsError::File { role, problem, .. } => {
                let name = match role {
                    FileRole::Ca => "client_ca",
                    FileRole::Certificate => "cert",
                    FileRole::Key => "key",
                };
                (name, problem.to_string())
            }
            TlsError::KeyMismatch { reason, .. } => (
                "key",
                format!("is not the key of the certificate in {key}.cert ({reason})"),
            ),
            TlsError::Config(e) => ("cert", format!("cannot build the TLS configuration: {e}")),
        };
        let value = match name {
            "client_ca" => raw.client_ca.as_ref(),
            "key" => raw.key.as_ref(),
            _ => raw.cert.as_ref(),
        };
        self.report(
            format!("{key}.{name}"),
            value.map_or(String::new(), |v| quote(v.get_ref())),
            value.map(|v| v.span()),
            message,
        );
    }
}
