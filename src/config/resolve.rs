//! Validation of what moves with DNS: `[resolver] nameservers`, a pool's `resolve_interval`,
//! and a backend's `expand = true` (one backend per address of its name, named `NAME-1`,
//! `NAME-2`, … by sorted address at load). Re-resolving at run time is `crate::resolve`'s.

use super::*;

/// A backend's `expand` as written, and whether it has its own `management`.
pub(super) type Expand = (Option<Spanned<bool>>, bool);

/// Shortest `resolve_interval`: a DNS server is not a health probe.
pub const MIN_RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// The name of the `slot`-th backend (from 1) expanded from the backend written as `name`.
pub fn expanded_name(name: &str, slot: usize) -> String {
    format!("{name}-{slot}")
}

/// The nameservers a file names, read leniently before validation so that loading can resolve
/// with them; a malformed list gives none here and is reported by [`Validator::resolver`].
pub(super) fn nameservers_in(text: &str) -> Vec<SocketAddr> {
    #[derive(Deserialize)]
    struct Only {
        resolver: Option<OnlyResolver>,
    }
    #[derive(Deserialize)]
    struct OnlyResolver {
        nameservers: Option<Vec<String>>,
    }
    let Ok(Only {
        resolver: Some(OnlyResolver {
            nameservers: Some(list),
        }),
    }) = toml::from_str::<Only>(text)
    else {
        return Vec::new();
    };
    let parsed: Result<Vec<SocketAddr>, String> = list.iter().map(|s| nameserver(s)).collect();
    parsed.unwrap_or_default()
}

/// `IP` (port 53) or `IP:PORT` (`[v6]:PORT`).
fn nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            "not an IP address or IP:PORT (a nameserver is asked by address: a name would need \
             a resolver of its own)"
                .to_string()
        })
}

impl Validator<'_> {
    /// `[resolver]`.
    pub(super) fn resolver(&mut self, raw: Option<RawResolver>) -> ResolverConfig {
        let Some(list) = raw.and_then(|r| r.nameservers) else {
            return ResolverConfig::default();
        };
        let mut nameservers = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match nameserver(raw.get_ref()) {
                Ok(addr) => nameservers.push(addr),
                Err(message) => self.report(
                    format!("resolver.nameservers[{i}]"),
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    message,
                ),
            }
        }
        if list.is_empty() {
            self.report(
                "resolver.nameservers",
                "[]",
                None,
                "names no server; omit [resolver] for the system resolver",
            );
        }
        ResolverConfig { nameservers }
    }

    /// A pool's `resolve_interval`: absent, host names are resolved only at load.
    pub(super) fn resolve_interval(&mut self, key: &str, raw: Option<&Str>) -> Option<Duration> {
        let raw = raw?;
        let key = format!("{key}.resolve_interval");
        let interval = self.duration(&key, Some(raw), MIN_RESOLVE_INTERVAL);
        if interval < MIN_RESOLVE_INTERVAL {
            self.report(
                key,
                quote(raw.get_ref()),
                Some(raw.span()),
                "at least 1s (omit it to resolve only at load)",
            );
        }
        Some(interval)
    }

    /// The backends as written (`expand` and own management flags beside them, by index),
    /// each with `expand = true` replaced by one per address of its host name, sorted, named
    /// `NAME-1`, `NAME-2`, …; then no expanded name may be another backend's.
    pub(super) fn expand_backends(
        &mut self,
        key: &str,
        backends: Vec<BackendConfig>,
        expand: &[Expand],
        pool_management: bool,
    ) -> Vec<BackendConfig> {
        let mut out = Vec::with_capacity(backends.len());
        for (i, (backend, (flag, own_management))) in backends.into_iter().zip(expand).enumerate() {
            match flag.as_ref().filter(|e| *e.get_ref()) {
                Some(flag) => {
                    let key = format!("{key}.backend[{i}].expand");
                    let management = *own_management || pool_management;
                    out.extend(self.expand_one(&key, flag, backend, management));
                }
                None => out.push(backend),
            }
        }
        self.expanded_names(key, &out);
        out
    }

    /// One backend with `expand = true` (`key` is its `expand`).
    fn expand_one(
        &mut self,
        key: &str,
        flag: &Spanned<bool>,
        backend: BackendConfig,
        management: bool,
    ) -> Vec<BackendConfig> {
        let Some(host) = backend.dns_name.clone() else {
            self.report(
                key,
                "true",
                Some(flag.span()),
                format!(
                    "needs a host name in addr, not the address {}",
                    quote(&backend.addr.to_string())
                ),
            );
            return vec![backend];
        };
        if management {
            self.report(
                key,
                "true",
                Some(flag.span()),
                "cannot be used with a management endpoint (the backend's management or \
                 [pool.NAME.management]) yet: each address would need its own",
            );
            return vec![backend];
        }
        let mut addrs = match (self.resolve)(&host, backend.port) {
            Ok(addrs) => addrs,
            // backend() reported it.
            Err(_) => return vec![backend],
        };
        addrs.sort_unstable();
        addrs.dedup();
        addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| expanded_backend(&backend, &host, i + 1, addr))
            .collect()
    }

    /// An expanded backend's name must not be another backend's.
    fn expanded_names(&mut self, key: &str, backends: &[BackendConfig]) {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for b in backends {
            *count.entry(b.name.as_str()).or_default() += 1;
        }
        for b in backends.iter().filter(|b| count[b.name.as_str()] > 1) {
            let Some(from) = &b.expanded_from else {
                continue;
            };
            self.report(
                format!("{key}.backend"),
                quote(&b.name),
                None,
                format!(
                    "the name of a backend expanded from {} is also another backend's; rename one",
                    quote(from)
                ),
            );
        }
    }
}

/// The `slot`-th backend of `template` (a backend with `expand`), at `addr`. Its `host` is the
/// address, so probe templates (`{host}`) reach that machine and not whichever the name gives.
pub fn expanded_backend(
    template: &BackendConfig,
    dns_name: &str,
    slot: usize,
    addr: SocketAddr,
) -> BackendConfig {
    let written = template
        .expanded_from
        .clone()
        .unwrap_or_else(|| template.name.clone());
    BackendConfig {
        name: expanded_name(&written, slot),
        host: addr.ip().to_string(),
        port: addr.port(),
        addr,
        weight: template.weight,
        backup: template.backup,
        management: None,
        tags: template.tags.clone(),
        // The pool's TLS, checked against the host name as written (what `server_name`
        // defaults to), not the address.
        tls: template.tls.clone(),
        dns_name: Some(dns_name.to_string()),
        expanded_from: Some(written),
    }
}
