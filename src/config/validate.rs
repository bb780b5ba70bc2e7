//! Validation, raw → snapshot: [`validate`] walks the raw config section by section (the
//! sections' own files: `admin`, `listeners`, `pools`, `hooks`, `fleet`) and collects every problem
//! instead of stopping at the first. This file holds the walk and the checks every section uses
//! (names, durations, counts, choices, paths, addresses).

use super::*;

/// Shown instead of a secret's value in problems.
pub(super) const MASKED: &str = "\"***\"";

pub(super) fn validate(
    raw: RawConfig,
    text: Option<&str>,
    resolve: Resolve<'_>,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        text,
        resolve,
        problems: Vec::new(),
    };
    let admin_listen = raw.admin.as_ref().and_then(|a| a.listen.clone());
    let admin = raw.admin.map(|a| v.admin(a));
    let pool_names: Vec<&str> = raw.pool.keys().map(|k| k.get_ref().as_str()).collect();
    let listen_spans: Vec<Range<usize>> = raw.listener.iter().map(|l| l.listen.span()).collect();
    let mut listeners = v.listeners(raw.listener, &pool_names);
    if let Some(admin) = &admin {
        v.admin_clash(admin, admin_listen.as_ref(), &listeners, &listen_spans);
    }
    // Before the pools are consumed: they are built from the pools as written.
    let per_backend = v.per_backend_listeners(&raw.pool);
    v.add_per_backend(&mut listeners, per_backend, admin.as_ref());
    let pools: Vec<PoolConfig> = raw
        .pool
        .into_iter()
        .map(|(name, pool)| v.pool(name, pool))
        .collect();
    let hooks = raw
        .hook
        .into_iter()
        .enumerate()
        .map(|(i, hook)| v.hook(i, hook))
        .collect();
    let fleet = raw.fleet.map(|fleet| v.fleet(fleet));
    let resolver = v.resolver(raw.resolver);
    if v.problems.is_empty() {
        return Ok(Config {
            source: None,
            admin,
            listeners,
            pools,
            hooks,
            fleet,
            resolver,
        });
    }
    // File order reads best; problems without a line (missing sections) go last.
    v.problems
        .sort_by_key(|p| (p.line.is_none(), p.line.unwrap_or(0)));
    Err(v.problems)
}

pub(super) struct Validator<'a> {
    /// The file text, to turn spans into lines; `None` for the quick start.
    pub(super) text: Option<&'a str>,
    pub(super) resolve: Resolve<'a>,
    pub(super) problems: Vec<Problem>,
}

impl Validator<'_> {
    pub(super) fn report(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = match (self.text, span) {
            (Some(text), Some(span)) => Some(line_col(text.as_bytes(), span.start).0),
            _ => None,
        };
        self.problems.push(Problem {
            key: key.into(),
            value: value.into(),
            line,
            message: message.into(),
        });
    }

    /// Checks a name used in API paths, metric labels and the state file; true when valid.
    pub(super) fn name(&mut self, key: &str, raw: &Str, what: &str) -> bool {
        let name = raw.get_ref();
        let message = if name.is_empty() {
            format!("{what} name is empty")
        } else if !name.chars().all(is_name_char) {
            format!(
                "{what} names may contain only letters, digits, '.', '_' and '-' \
                 (they appear in admin API paths and metric labels)"
            )
        } else {
            return true;
        };
        self.report(key, quote(name), Some(raw.span()), message);
        false
    }

    pub(super) fn duration(&mut self, key: &str, raw: Option<&Str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        let max = max_duration(key);
        match parse_duration(raw.get_ref()) {
            Ok(d) if d <= max => d,
            Ok(_) => {
                self.report(
                    key,
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    format!(
                        "too long: at most {} (omit it for the default, {})",
                        humantime::format_duration(max),
                        humantime::format_duration(default)
                    ),
                );
                default
            }
            Err(message) => {
                self.report(key, quote(raw.get_ref()), Some(raw.span()), message);
                default
            }
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        raw: Option<&Str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, raw, default);
        if let (true, Some(raw)) = (d.is_zero(), raw) {
            self.report(
                key,
                quote(raw.get_ref()),
                Some(raw.span()),
                format!(
                    "must be longer than 0 (omit it for the default, {})",
                    humantime::format_duration(default)
                ),
            );
            return default;
        }
        d
    }

    pub(super) fn positive_count(
        &mut self,
        key: &str,
        raw: Option<&Spanned<u32>>,
        default: u32,
    ) -> u32 {
        match raw {
            Some(n) if *n.get_ref() == 0 => {
                self.report(key, "0", Some(n.span()), "must be at least 1");
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        }
    }

    pub(super) fn choice<T: Named>(&mut self, key: &str, raw: Option<&Str>, default: T) -> T {
        let Some(raw) = raw else { return default };
        match lookup::<T>(raw.get_ref()) {
            Some(v) => v,
            None => {
                self.report(
                    key,
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    format!("expected one of {}", names_of::<T>()),
                );
                default
            }
        }
    }

    pub(super) fn path(&mut self, key: &str, raw: Option<&Str>) -> Option<PathBuf> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.report(
                key,
                "\"\"",
                Some(raw.span()),
                "path is empty; omit the key instead",
            );
            return None;
        }
        Some(PathBuf::from(raw.get_ref()))
    }

    /// A listening address: an IP literal, or `*` for every IPv4 address.
    pub(super) fn listen_addr(&mut self, key: &str, raw: &Str) -> Option<SocketAddr> {
        let text = raw.get_ref();
        let result = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            Err(format!(
                "missing host; write \"0.0.0.0:{text}\" for every address or \"127.0.0.1:{text}\" for this machine only"
            ))
        } else {
            split_host_port(text).and_then(|hp| {
                if hp.host == "*" {
                    return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, hp.port)));
                }
                match hp.host.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) if ip.to_ipv4_mapped().is_some() => Err(format!(
                        "an IPv4-mapped IPv6 address cannot be listened on (IPv6 listeners are \
                         IPv6-only); write the IPv4 address: \"{}:{}\"",
                        ip.to_ipv4_mapped().expect("checked"),
                        hp.port
                    )),
                    Ok(ip) => Ok(SocketAddr::new(ip, hp.port)),
                    Err(_) => Err(format!(
                        "must be an IP address, not a host name: write \"0.0.0.0:{0}\" for every address or \"127.0.0.1:{0}\" for this machine only",
                        hp.port
                    )),
                }
            })
        };
        match result {
            Ok(addr) => Some(addr),
            Err(message) => {
                self.report(key, quote(text), Some(raw.span()), message);
                None
            }
        }
    }

    /// A backend address: an IP literal or a host name, resolved now (first address).
    pub(super) fn backend_addr(
        &mut self,
        key: &str,
        raw: &Str,
    ) -> Option<(String, u16, SocketAddr)> {
        let text = raw.get_ref();
        let result = split_host_port(text).and_then(|hp| {
            if let Ok(ip) = hp.host.parse::<IpAddr>() {
                return Ok((hp.host, hp.port, SocketAddr::new(ip, hp.port)));
            }
            if hp.host == "*" || !hp.host.chars().all(is_host_char) {
                return Err(format!(
                    "{} is not a valid host name or IP address",
                    quote(&hp.host)
                ));
            }
            match (self.resolve)(&hp.host, hp.port) {
                Ok(addrs) => match addrs.first() {
                    Some(first) => Ok((hp.host, hp.port, *first)),
                    None => Err(format!(
                        "cannot resolve host {}: no addresses",
                        quote(&hp.host)
                    )),
                },
                Err(e) => Err(format!("cannot resolve host {}: {e}", quote(&hp.host))),
            }
        });
        match result {
            Ok(resolved) => Some(resolved),
            Err(message) => {
                self.report(key, quote(text), Some(raw.span()), message);
                None
            }
        }
    }
}
