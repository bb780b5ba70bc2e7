//! Validation of `[fleet]`: the store (only etcd), its endpoints (`http://HOST:PORT` or
//! `https://HOST:PORT`, all one scheme, each once), the key prefix, this instance's name (the
//! host name by default), the timeouts and limits, etcd authentication and TLS, whose files (the
//! password, the CA bundle, the client certificate and key) are read here, at load, so
//! `warren check` refuses what `run` would. Nothing here connects to etcd: the client is built by
//! the fleet runtime from the [`FleetConfig`] this returns.

use super::*;
use crate::tls::{ClientTls, FileRole, Identity, TlsError};

/// The largest password file read; a password is a line, never kilobytes.
const MAX_PASSWORD_FILE: u64 = 4096;

impl Validator<'_> {
    /// `[fleet]`, with every omitted key at its default; problems are reported, and the
    /// defaults stand in for bad values so the walk goes on.
    pub(super) fn fleet(&mut self, raw: Spanned<RawFleet>) -> FleetConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        self.fleet_store(raw.store.as_ref(), &span);
        let endpoints = self.fleet_endpoints(raw.endpoints.as_ref(), &span);
        let prefix = self.fleet_prefix(raw.prefix.as_ref());
        let instance = self.fleet_instance(raw.instance.as_ref(), &span);
        let (timeout, lease_ttl) =
            self.fleet_durations(raw.timeout.as_ref(), raw.lease_ttl.as_ref());
        let max_draining = match &raw.max_draining {
            Some(n) if *n.get_ref() == 0 => {
                self.report(
                    "fleet.max_draining",
                    "0",
                    Some(n.span()),
                    "must be at least 1: 0 would refuse every drain",
                );
                DEFAULT_FLEET_MAX_DRAINING
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_FLEET_MAX_DRAINING,
        };
        let (user, password) = self.fleet_auth(raw.user.as_ref(), raw.password_file.as_ref());
        let https = endpoints.first().map(|e| e.starts_with("https://"));
        let tls = self.fleet_tls(&raw, https, &span);
        FleetConfig {
            endpoints,
            prefix,
            instance,
            timeout,
            lease_ttl,
            max_draining,
            user,
            password,
            tls,
        }
    }

    /// `fleet.store`: required, so a later store (Consul, ...) never changes what a file means.
    fn fleet_store(&mut self, raw: Option<&Str>, section: &Range<usize>) {
        match raw {
            Some(store) if store.get_ref() == FLEET_STORE => {}
            Some(store) => self.report(
                "fleet.store",
                quote(store.get_ref()),
                Some(store.span()),
                format!("expected \"{FLEET_STORE}\", the only store warren speaks"),
            ),
            None => self.report(
                "fleet.store",
                "",
                Some(section.clone()),
                format!("required: write store = \"{FLEET_STORE}\""),
            ),
        }
    }

    /// `fleet.endpoints`: at least one, each `http[s]://HOST:PORT`, all one scheme, none twice.
    fn fleet_endpoints(
        &mut self,
        raw: Option<&Spanned<Vec<Str>>>,
        section: &Range<usize>,
    ) -> Vec<String> {
        let Some(raw) = raw else {
            self.report(
                "fleet.endpoints",
                "",
                Some(section.clone()),
                "required: the etcd client URLs, e.g. [\"http://etcd-1:2379\", \"http://etcd-2:2379\"]",
            );
            return Vec::new();
        };
        if raw.get_ref().is_empty() {
            self.report(
                "fleet.endpoints",
                "[]",
                Some(raw.span()),
                "at least one etcd endpoint is needed",
            );
        }
        let mut endpoints: Vec<String> = Vec::new();
        for (i, text) in raw.get_ref().iter().enumerate() {
            let key = format!("fleet.endpoints[{i}]");
            let shown = quote(&without_userinfo(text.get_ref()));
            match etcd_endpoint(text.get_ref()) {
                Ok(endpoint) => match endpoints.iter().position(|e| *e == endpoint) {
                    Some(first) => self.report(
                        key,
                        shown,
                        Some(text.span()),
                        format!("the same endpoint as fleet.endpoints[{first}]; list each once"),
                    ),
                    None => match endpoints.first().filter(|e| scheme(e) != scheme(&endpoint)) {
                        Some(first) => self.report(
                            key,
                            shown,
                            Some(text.span()),
                            format!(
                                "is {}:// while the first endpoint is {}://: all endpoints use \
                                 one scheme (TLS or not, one CA)",
                                scheme(&endpoint),
                                scheme(first)
                            ),
                        ),
                        None => endpoints.push(endpoint),
                    },
                },
                Err(message) => self.report(key, shown, Some(text.span()), message),
            }
        }
        endpoints
    }

    /// `fleet.prefix`: a directory of keys, `/` at both ends.
    fn fleet_prefix(&mut self, raw: Option<&Str>) -> String {
        let Some(raw) = raw else {
            return DEFAULT_FLEET_PREFIX.to_string();
        };
        let prefix = raw.get_ref();
        let message = if !prefix.starts_with('/') || !prefix.ends_with('/') {
            "must start and end with \"/\", like \"/warren/\" (the keys warren writes are the \
             prefix followed by their path)"
        } else if prefix.chars().any(char::is_control) {
            "must not contain control characters"
        } else {
            return prefix.clone();
        };
        self.report("fleet.prefix", quote(prefix), Some(raw.span()), message);
        DEFAULT_FLEET_PREFIX.to_string()
    }

    /// `fleet.instance`: as written, else the host name; either must be a valid name.
    fn fleet_instance(&mut self, raw: Option<&Str>, section: &Range<usize>) -> String {
        if let Some(raw) = raw {
            if let Err(message) = instance_name(raw.get_ref()) {
                self.report(
                    "fleet.instance",
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    message,
                );
            }
            return raw.get_ref().clone();
        }
        let checked = host_name().and_then(|host| match instance_name(&host) {
            Ok(()) => Ok(host),
            Err(message) => Err(format!(
                "the default is the host name, {}, which cannot be one: {message}",
                quote(&host)
            )),
        });
        checked.unwrap_or_else(|message| {
            self.report(
                "fleet.instance",
                "",
                Some(section.clone()),
                format!("{message}; set fleet.instance"),
            );
            String::new()
        })
    }

    /// `fleet.timeout` and `fleet.lease_ttl`, and that one request fits in a lease.
    fn fleet_durations(
        &mut self,
        timeout_raw: Option<&Str>,
        ttl_raw: Option<&Str>,
    ) -> (Duration, Duration) {
        let timeout = self.positive_duration("fleet.timeout", timeout_raw, DEFAULT_FLEET_TIMEOUT);
        let mut ttl = self.duration("fleet.lease_ttl", ttl_raw, DEFAULT_FLEET_LEASE_TTL);
        if let Some(raw) = ttl_raw {
            let problem = if ttl < MIN_FLEET_LEASE_TTL {
                Some(format!(
                    "too short: at least {} (omit it for the default, {})",
                    humantime::format_duration(MIN_FLEET_LEASE_TTL),
                    humantime::format_duration(DEFAULT_FLEET_LEASE_TTL)
                ))
            } else if ttl.subsec_nanos() != 0 {
                Some("must be whole seconds: etcd leases count seconds".to_string())
            } else {
                None
            };
            if let Some(message) = problem {
                self.report(
                    "fleet.lease_ttl",
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    message,
                );
                ttl = DEFAULT_FLEET_LEASE_TTL;
            }
        }
        if timeout >= ttl {
            // The problem is reported where the operator wrote one of the two.
            let (key, raw) = match (timeout_raw, ttl_raw) {
                (Some(raw), _) => ("fleet.timeout", raw),
                (None, Some(raw)) => ("fleet.lease_ttl", raw),
                (None, None) => return (timeout, ttl),
            };
            self.report(
                key,
                quote(raw.get_ref()),
                Some(raw.span()),
                format!(
                    "fleet.timeout ({}) must be shorter than fleet.lease_ttl ({}): one slow \
                     renewal would let this instance's registration lapse",
                    humantime::format_duration(timeout),
                    humantime::format_duration(ttl)
                ),
            );
        }
        (timeout, ttl)
    }

    /// `fleet.user` and `fleet.password_file`: both or neither; the file is read now.
    fn fleet_auth(
        &mut self,
        user: Option<&Str>,
        password_file: Option<&Str>,
    ) -> (Option<String>, Option<Secret>) {
        match (user, password_file) {
            (None, None) => (None, None),
            (Some(user), None) => {
                self.report(
                    "fleet.password_file",
                    "",
                    Some(user.span()),
                    "required with fleet.user: the file holding the etcd user's password",
                );
                (Some(user.get_ref().clone()), None)
            }
            (None, Some(file)) => {
                self.report(
                    "fleet.user",
                    "",
                    Some(file.span()),
                    "required with fleet.password_file: the etcd user to authenticate as",
                );
                (None, None)
            }
            (Some(user), Some(file)) => {
                if user.get_ref().is_empty() {
                    self.report("fleet.user", "\"\"", Some(user.span()), "is empty");
                }
                let password = self
                    .path("fleet.password_file", Some(file))
                    .and_then(|path| match read_password(&path) {
                        Ok(password) => Some(password),
                        Err(message) => {
                            self.report(
                                "fleet.password_file",
                                quote(file.get_ref()),
                                Some(file.span()),
                                message,
                            );
                            None
                        }
                    });
                (Some(user.get_ref().clone()), password)
            }
        }
    }

    /// `fleet.ca_file`, `fleet.cert_file` and `fleet.key_file`, only with `https://` endpoints
    /// (`https`: the endpoints' scheme; `None` when none is valid): the CA required, the client
    /// certificate and its key both or neither. The files are read and checked now.
    fn fleet_tls(
        &mut self,
        raw: &RawFleet,
        https: Option<bool>,
        section: &Range<usize>,
    ) -> Option<ClientTls> {
        let keys = [
            ("fleet.ca_file", &raw.ca_file),
            ("fleet.cert_file", &raw.cert_file),
            ("fleet.key_file", &raw.key_file),
        ];
        if https == Some(false) {
            // Silently unused otherwise: an operator who wrote it expects TLS.
            for (key, value) in keys {
                if let Some(value) = value {
                    self.report(
                        key,
                        quote(value.get_ref()),
                        Some(value.span()),
                        "is only read with https:// endpoints, and fleet.endpoints are \
                         http://: switch them to https://, or remove it",
                    );
                }
            }
            return None;
        }
        let identity = self.fleet_identity(raw.cert_file.as_ref(), raw.key_file.as_ref());
        let Some(ca_raw) = &raw.ca_file else {
            if https == Some(true) {
                self.report(
                    "fleet.ca_file",
                    "",
                    Some(section.clone()),
                    "required with https:// endpoints: the PEM file of the CA that signed \
                     etcd's certificate",
                );
            }
            return None;
        };
        let ca = self.path("fleet.ca_file", Some(ca_raw))?;
        // After a problem with the client certificate's keys, the CA is still checked.
        let (identity, complete) = match identity {
            Some(identity) => (identity, true),
            None => (None, false),
        };
        let error = match ClientTls::load(&ca, identity.as_ref()) {
            Ok(tls) => return complete.then_some(tls),
            Err(error) => error,
        };
        let (key, message) = match error {
            TlsError::File { role, problem, .. } => {
                let key = match role {
                    FileRole::Ca => "fleet.ca_file",
                    FileRole::Certificate => "fleet.cert_file",
                    FileRole::Key => "fleet.key_file",
                };
                (key, problem.to_string())
            }
            TlsError::KeyMismatch { reason, .. } => (
                "fleet.key_file",
                format!("is not the key of the certificate in fleet.cert_file ({reason})"),
            ),
            TlsError::Config(e) => (
                "fleet.ca_file",
                format!("cannot build the TLS configuration: {e}"),
            ),
        };
        let raw = keys
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, raw)| raw.as_ref())
            .unwrap_or(ca_raw);
        self.report(key, quote(raw.get_ref()), Some(raw.span()), message);
        None
    }

    /// `fleet.cert_file` and `fleet.key_file`: both or neither. `None` after a problem (an
    /// empty path, one without the other); `Some(None)` for neither.
    fn fleet_identity(
        &mut self,
        cert: Option<&Str>,
        key: Option<&Str>,
    ) -> Option<Option<Identity>> {
        match (cert, key) {
            (None, None) => Some(None),
            (Some(cert), None) => {
                self.report(
                    "fleet.key_file",
                    "",
                    Some(cert.span()),
                    "required with fleet.cert_file: the PEM file of the client certificate's \
                     private key",
                );
                None
            }
            (None, Some(key)) => {
                self.report(
                    "fleet.cert_file",
                    "",
                    Some(key.span()),
                    "required with fleet.key_file: the PEM file of the client certificate \
                     (and its chain)",
                );
                None
            }
            (Some(cert), Some(key)) => {
                let cert_file = self.path("fleet.cert_file", Some(cert));
                let key_file = self.path("fleet.key_file", Some(key));
                Some(Some(Identity {
                    cert_file: cert_file?,
                    key_file: key_file?,
                }))
            }
        }
    }
}

/// `http` or `https`: the scheme of a normalized endpoint.
fn scheme(endpoint: &str) -> &str {
    endpoint.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// An etcd endpoint as the client takes it, `http://HOST:PORT` or `https://HOST:PORT`,
/// normalized (host lower-cased, no trailing `/`) so that duplicates are found; or why it cannot
/// be one.
pub(super) fn etcd_endpoint(text: &str) -> Result<String, String> {
    const EXAMPLE: &str =
        "expected http://HOST:PORT or https://HOST:PORT, e.g. \"https://etcd-1:2379\"";
    if !text.starts_with("http://") && !text.starts_with("https://") {
        return Err(EXAMPLE.to_string());
    }
    let url = HttpUrl::parse_https(text).map_err(|e| format!("{e}; {EXAMPLE}"))?;
    if url.credentials().is_some() {
        return Err(
            "user info (user:password@) is not read here: set fleet.user and \
                    fleet.password_file"
                .to_string(),
        );
    }
    if url.path_and_query() != "/" || text.contains('#') {
        return Err(format!("has a path, query or fragment; {EXAMPLE}"));
    }
    if !has_explicit_port(text) {
        return Err(format!(
            "missing port (etcd's client port is usually 2379); {EXAMPLE}"
        ));
    }
    Ok(format!("{}://{}", url.scheme(), url.authority()))
}

/// Whether the authority of an `http[s]://` URL as written ends with `:PORT` (the URL parser
/// drops `:80` and `:443`, so the written text is asked, not the parsed URL).
fn has_explicit_port(text: &str) -> bool {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks an instance name: it is part of etcd keys, status and logs.
pub(super) fn instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INSTANCE_NAME {
        return Err(format!(
            "an instance name has 1 to {MAX_INSTANCE_NAME} characters"
        ));
    }
    if !name.chars().all(is_name_char) {
        return Err(
            "an instance name may contain only letters, digits, '.', '_' and '-' \
                    (it is part of the keys warren writes to etcd)"
                .to_string(),
        );
    }
    Ok(())
}

/// This machine's host name: `fleet.instance` when it is not written.
pub fn host_name() -> Result<String, String> {
    #[cfg(unix)]
    let name = nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the host name: {e}"))?
        .into_string()
        .map_err(|_| "the host name is not UTF-8".to_string())?;
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME")
        .map_err(|_| "cannot read the host name (COMPUTERNAME is not set)".to_string())?;
    Ok(name)
}

/// The password in `path`: its content without surrounding white space; never empty.
fn read_password(path: &Path) -> Result<Secret, String> {
    use std::io::Read;
    // A FIFO or a device would block or never end; a password is a regular file.
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".to_string());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PASSWORD_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE {
        return Err(format!(
            "too large for a password file (more than {MAX_PASSWORD_FILE} bytes)"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())?;
    match text.trim() {
        "" => Err("the file is empty: it must hold the etcd user's password".to_string()),
        password => Ok(Secret(password.to_string())),
    }
}
