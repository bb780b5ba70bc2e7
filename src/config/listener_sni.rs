//! Validation of `[[listener.sni]]` and `sni_timeout`: TLS passthrough routing, where a
//! listener reads the server name of a client's ClientHello without terminating its TLS and
//! forwards the connection to the pool of the route that names it (the listener's `pool` when
//! none does). The routes are built here into [`SniRoutes`], matched case-insensitively by
//! exact name or by a `*.` wildcard for one label; reading the hello is `crate::sni`'s and
//! the data plane's.

use std::sync::Arc;

use super::*;

/// `listener.sni_timeout` when omitted: a client sends its ClientHello with the connection's
/// first bytes, so 5 s is generous (as `proxy_protocol_timeout`).
pub const DEFAULT_SNI_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes a listener has: connections are routed by the server name of their ClientHello.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSni {
    /// How long a client may take to send the ClientHello up to its server name.
    pub timeout: Duration,
    pub routes: SniRoutes,
}

/// One `[[listener.sni]]` entry as written (lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// `orders.example.com`, or `*.example.com`.
    pub server_name: String,
    pub pool: Arc<str>,
}

/// The routes of one listener, looked up by server name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SniRoutes {
    /// In file order, for status and logs.
    pub list: Vec<SniRoute>,
    /// Exact names, lowercase.
    exact: HashMap<String, Arc<str>>,
    /// `*.example.com` stored as `example.com`: the name less its first label.
    wildcard: HashMap<String, Arc<str>>,
}

impl SniRoutes {
    /// Routes from `(server_name, pool)` pairs, already checked (see [`check_server_name`]).
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> SniRoutes {
        let mut built = SniRoutes::default();
        for (name, pool) in routes {
            let name = name.to_ascii_lowercase();
            let pool: Arc<str> = Arc::from(pool);
            match name.strip_prefix("*.") {
                Some(parent) => built.wildcard.insert(parent.to_string(), pool.clone()),
                None => built.exact.insert(name.clone(), pool.clone()),
            };
            built.list.push(SniRoute {
                server_name: name,
                pool,
            });
        }
        built
    }

    /// The pool of the route for `server_name` (lowercase, as `crate::sni::parse` gives it): an
    /// exact route first, then a wildcard standing for its first label.
    pub fn pool_for(&self, server_name: &str) -> Option<&Arc<str>> {
        if let Some(pool) = self.exact.get(server_name) {
            return Some(pool);
        }
        let (_, parent) = server_name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

/// Why a `server_name` cannot be routed; `None` when it can. A name is a DNS host name written
/// in ASCII (an IDN as its `xn--` A-labels, which is what clients send), optionally with `*.`
/// for exactly one leftmost label.
pub fn check_server_name(name: &str) -> Option<String> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.contains('*') {
        return Some(
            "a wildcard is \"*.\" followed by a name, and stands for exactly one leftmost label \
             (\"*.example.com\"); \"*\" elsewhere is not supported"
                .into(),
        );
    }
    if !host.is_ascii() {
        return Some(
            "not ASCII: write an internationalised name as its A-labels (\"xn--...\"), which is \
             what clients send"
                .into(),
        );
    }
    if host.is_empty() || host.len() > 253 {
        return Some("a host name is 1 to 253 characters".into());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Some(
            "not a host name: dot-separated labels of 1 to 63 letters, digits, '-' and '_' \
             (no leading or trailing dot)"
                .into(),
        );
    }
    None
}

impl Validator<'_> {
    /// `listener[i].sni` and `listener[i].sni_timeout`; `None` without routes. The routes'
    /// pools must be in `pools`; a TLS-terminating listener cannot have routes.
    pub(super) fn listener_sni(
        &mut self,
        key: &str,
        raw: &mut RawListener,
        pools: &[&str],
    ) -> Option<ListenerSni> {
        let timeout_raw = raw.sni_timeout.take();
        let Some(routes) = raw.sni.take() else {
            if let Some(t) = &timeout_raw {
                self.report(
                    format!("{key}.sni_timeout"),
                    quote(t.get_ref()),
                    Some(t.span()),
                    "only applies with [[listener.sni]] routes: add them, or remove this key",
                );
            }
            return None;
        };
        let timeout = self.positive_duration(
            &format!("{key}.sni_timeout"),
            timeout_raw.as_ref(),
            DEFAULT_SNI_TIMEOUT,
        );
        if cfg!(not(unix)) {
            self.report(
                format!("{key}.sni"),
                "",
                Some(routes.span()),
                "SNI routing peeks at the socket (MSG_PEEK), which warren does on Linux and other \
                 unix systems only",
            );
        }
        if raw.tls.is_some() {
            self.report(
                format!("{key}.sni"),
                "",
                Some(routes.span()),
                "cannot be combined with [listener.tls]: [[listener.sni]] passes TLS through to \
                 the pool its server name routes to, while [listener.tls] terminates it (choosing \
                 the certificate by server name is not built); use two listeners",
            );
        }
        if routes.get_ref().is_empty() {
            self.report(
                format!("{key}.sni"),
                "[]",
                Some(routes.span()),
                "an empty list routes nothing: add [[listener.sni]] entries, or remove the key",
            );
            return None;
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut ok = Vec::new();
        for (j, route) in routes.get_ref().iter().enumerate() {
            let route_key = format!("{key}.sni[{j}]");
            self.known_pool(&route_key, &route.pool, pools);
            let name = route.server_name.get_ref();
            let lower = name.to_ascii_lowercase();
            if let Some(problem) = check_server_name(name) {
                self.report(
                    format!("{route_key}.server_name"),
                    quote(name),
                    Some(route.server_name.span()),
                    problem,
                );
            } else if let Some(first) = seen.get(&lower) {
                self.report(
                    format!("{route_key}.server_name"),
                    quote(name),
                    Some(route.server_name.span()),
                    format!(
                        "duplicate server_name (also {key}.sni[{first}].server_name; names \
                         compare case-insensitively)"
                    ),
                );
            } else {
                seen.insert(lower, j);
                ok.push((name.as_str(), route.pool.get_ref().as_str()));
            }
        }
        Some(ListenerSni {
            timeout,
            routes: SniRoutes::new(ok),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_a_wildcard_of_one_label() {
        let routes = SniRoutes::new([
            ("orders.example.com", "orders"),
            ("*.example.com", "any"),
            ("Upper.Example.COM", "upper"),
        ]);
        let pool = |name: &str| routes.pool_for(name).map(|p| p.to_string());
        assert_eq!(pool("orders.example.com").as_deref(), Some("orders"));
        assert_eq!(pool("upper.example.com").as_deref(), Some("upper"));
        assert_eq!(pool("streams.example.com").as_deref(), Some("any"));
        // The wildcard stands for one label, not none and not two.
        assert_eq!(pool("example.com"), None);
        assert_eq!(pool("a.b.example.com"), None);
        assert_eq!(pool("example.org"), None);
        assert_eq!(pool(""), None);
    }

    #[test]
    fn server_names_are_host_names_with_an_optional_leading_wildcard() {
        for good in [
            "orders.example.com",
            "*.example.com",
            "localhost",
            "xn--bcher-kva.example",
            "a_b.example",
        ] {
            assert_eq!(check_server_name(good), None, "{good}");
        }
        for bad in [
            "*",
            "*.",
            "a.*.example.com",
            "*example.com",
            "**.example.com",
            "bücher.example",
            "",
            "example.com.",
            ".example.com",
            "a..b",
            "-a.example",
            "a b.example",
            "orders.example.com:5671",
        ] {
            assert!(check_server_name(bad).is_some(), "{bad}");
        }
    }
}
