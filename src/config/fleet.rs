//! Validation of `[fleet]`: the store (only etcd), its endpoints (plain `http://HOST:PORT`, each
//! once), the key prefix, this instance's name (the host name by default), the timeouts and
//! limits, and etcd authentication, whose password file is read here, at load, so `warren check`
//! refuses what `run` would. Nothing here connects to etcd: the client is built by the fleet
//! runtime from the [`FleetConfig`] this returns.

use super::*;

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
        FleetConfig {
            endpoints,
            prefix,
            instance,
            timeout,
            lease_ttl,
            max_draining,
            user,
            password,
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

    /// `fleet.endpoints`: at least one, each `http://HOST:PORT`, none twice.
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
                    None => endpoints.push(endpoint),
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
}

/// An etcd endpoint as the client takes it, `http://HOST:PORT`, normalized (host lower-cased,
/// no trailing `/`) so that duplicates are found; or why it cannot be one.
pub(super) fn etcd_endpoint(text: &str) -> Result<String, String> {
    const EXAMPLE: &str = "expected http://HOST:PORT, e.g. \"http://etcd-1:2379\"";
    if text
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(
            "TLS to etcd comes with issue 20 (rustls); use http:// on a trusted network for now"
                .to_string(),
        );
    }
    if !text.starts_with("http://") {
        return Err(EXAMPLE.to_string());
    }
    let url = HttpUrl::parse(text).map_err(|e| format!("{e}; {EXAMPLE}"))?;
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
    Ok(format!("http://{}", url.authority()))
}

/// Whether the authority of an `http://` URL as written ends with `:PORT` (the URL parser
/// drops `:80`, so the written text is asked, not the parsed URL).
fn has_explicit_port(text: &str) -> bool {
    let rest = text.strip_prefix("http://").unwrap_or(text);
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
