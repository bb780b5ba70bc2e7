//! Validation of `[pool.NAME.management]` and of each backend's `management`: every backend's
//! RabbitMQ management endpoint, its URL filled in and parsed at load, with its credentials and
//! the quorum check's timeout. An `http` probe whose url is a path is checked here against the
//! backends' endpoints too. Nothing here connects.

use super::*;

/// `[pool.NAME.management]` once checked: what each backend's endpoint is made from.
pub(super) struct PoolManagement {
    /// The `url` template, when set and valid (kept spanned to name its line later).
    url: Option<Str>,
    /// Whether `url` was written, valid or not (an invalid one is reported once, where it is).
    url_written: bool,
    user: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    timeout: Duration,
    /// Where the section is, for a problem about the whole of it.
    span: Range<usize>,
}

/// The stand-in backend a pool's url template is checked against at load.
const CHECK_HOST: &str = "backend.invalid";
const CHECK_NAME: &str = "backend";

impl Validator<'_> {
    /// `[pool.NAME.management]`: the url template, the credentials and the timeout.
    pub(super) fn pool_management(
        &mut self,
        pool_key: &str,
        raw: Spanned<RawManagement>,
        tls: bool,
    ) -> PoolManagement {
        let key = format!("{pool_key}.management");
        let span = raw.span();
        let raw = raw.into_inner();
        let url_key = format!("{key}.url");
        let url_written = raw.url.is_some();
        let url = raw.url.filter(|url| {
            match self.management_url(&url_key, url, (CHECK_HOST, CHECK_NAME), tls) {
                Some(parsed) if parsed.credentials().is_some() && raw.user.is_some() => {
                    self.report(
                        &url_key,
                        quote(&without_userinfo(url.get_ref())),
                        Some(url.span()),
                        "user info (user:pass@) and user are mutually exclusive; keep one",
                    );
                    false
                }
                parsed => parsed.is_some(),
            }
        });
        let password_file = self.basic_auth(
            &key,
            raw.user.as_ref(),
            raw.password.as_ref(),
            raw.password_file.as_ref(),
        );
        let timeout = self.positive_duration(
            &format!("{key}.timeout"),
            raw.timeout.as_ref(),
            DEFAULT_MANAGEMENT_TIMEOUT,
        );
        PoolManagement {
            url,
            url_written,
            user: raw.user.map(Spanned::into_inner),
            password: raw.password.map(|p| Secret(p.into_inner())),
            password_file,
            timeout,
            span,
        }
    }

    /// A management url (the pool's template, or a backend's own) filled in for `host` and
    /// `name`; problems are reported on `key`. `https://` only in a pool with
    /// `[pool.NAME.tls]` (`tls`), whose CA verifies it.
    fn management_url(
        &mut self,
        key: &str,
        raw: &Str,
        (host, name): (&str, &str),
        tls: bool,
    ) -> Option<HttpUrl> {
        let shown = quote(&without_userinfo(raw.get_ref()));
        if let Some(message) = placeholder_problem(raw.get_ref()) {
            self.report(key, shown, Some(raw.span()), message);
            return None;
        }
        match HttpUrl::parse_https(&fill_management(raw.get_ref(), host, name)) {
            Ok(url) if url.is_https() && !tls => {
                let pool_key = key.split_once(".management").map_or(key, |(p, _)| p);
                let pool_key = pool_key
                    .rsplit_once(".backend[")
                    .map_or(pool_key, |(p, _)| p);
                let message = format!("is https://, which {}", needs_tls_message(pool_key));
                self.report(key, shown, Some(raw.span()), message);
                None
            }
            Ok(url) if url.has_query() => {
                self.report(
                    key,
                    shown,
                    Some(raw.span()),
                    "must not have a query: probe paths and the quorum check's path are joined \
                     to it; write http://HOST:PORT, e.g. \"http://{host}:15672\"",
                );
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                self.url_problem(key, raw, e);
                None
            }
        }
    }

    /// One backend's endpoint: its own `management` (its `user:pass@`, if any, replacing the
    /// pool's credentials), else the pool's url filled in; `None` when neither is set. `host` is
    /// `None` when the backend's `addr` is invalid (reported already).
    pub(super) fn backend_management(
        &mut self,
        key: &str,
        own: Option<&Str>,
        host: Option<&str>,
        name: &str,
        pool: Option<&PoolManagement>,
        tls: bool,
    ) -> Option<ManagementEndpoint> {
        let url = match (own, pool.and_then(|p| p.url.as_ref())) {
            (Some(own), _) => {
                let host = host.unwrap_or(CHECK_HOST);
                self.management_url(&format!("{key}.management"), own, (host, name), tls)?
            }
            (None, Some(template)) => {
                let filled = fill_management(template.get_ref(), host?, name);
                match HttpUrl::parse_https(&filled) {
                    Ok(url) => url,
                    // Checked with a stand-in backend already; only an odd host gets here.
                    Err(e) => {
                        let pool_key = key.rsplit_once(".backend[").map_or(key, |(p, _)| p);
                        self.report(
                            format!("{pool_key}.management.url"),
                            quote(&without_userinfo(template.get_ref())),
                            Some(template.span()),
                            format!("not usable for {key} ({name}): {e}"),
                        );
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        let pool_credentials = url.credentials().is_none();
        let pool = pool.filter(|_| pool_credentials);
        Some(ManagementEndpoint {
            url,
            user: pool.and_then(|p| p.user.clone()),
            password: pool.and_then(|p| p.password.clone()),
            password_file: pool.and_then(|p| p.password_file.clone()),
            timeout: pool.map_or(DEFAULT_MANAGEMENT_TIMEOUT, |p| p.timeout),
        })
    }

    /// Checks that need the whole pool: a `[management]` section that gives no backend an
    /// endpoint, and an `http` probe url that is a path while some backend has no endpoint.
    /// `own[i]` says whether backend `i` has its own `management` key (valid or not: an invalid
    /// one is reported where it is, once).
    pub(super) fn pool_endpoints(
        &mut self,
        key: &str,
        management: Option<&PoolManagement>,
        own: &[bool],
        probe: Option<(&Probe, &Str)>,
        backends: &[BackendConfig],
    ) {
        let template = management.is_some_and(|m| m.url_written);
        if let (Some(m), false, false) = (management, template, own.contains(&true)) {
            self.report(
                format!("{key}.management"),
                "",
                Some(m.span.clone()),
                "gives no backend a management endpoint: add url = \"http://{host}:15672\", \
                 or management = \"http://HOST:PORT\" on the backends",
            );
        }
        let Some((Probe::Http { url, .. }, written)) = probe else {
            return;
        };
        let without: Vec<&str> = backends
            .iter()
            .zip(own)
            .filter(|(b, own)| b.management.is_none() && !**own && !template)
            .map(|(b, _)| b.name.as_str())
            .collect();
        if url.on_management() && !without.is_empty() {
            self.report(
                format!("{key}.health.url"),
                quote(written.get_ref()),
                Some(written.span()),
                format!(
                    "is a path on each backend's management endpoint, and {} {} none: set \
                     [{key}.management] url = \"http://{{host}}:15672\", or management on {}",
                    without.join(", "),
                    if without.len() == 1 { "has" } else { "have" },
                    if without.len() == 1 { "it" } else { "them" },
                ),
            );
        }
    }
}

/// `{host}` (bracketed when IPv6) and `{name}` filled in.
fn fill_management(template: &str, host: &str, name: &str) -> String {
    // `{port}` is refused before any filling, so the port given here is never used.
    fill_template(template, host, 0).replace("{name}", name)
}

/// Why the placeholders of a management url are wrong, if they are.
fn placeholder_problem(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after.find('}')?;
        match &after[..end] {
            "host" | "name" => {}
            "port" => {
                return Some(
                    "{port} is the backend's AMQP port, not its management port; write the \
                     management port, e.g. \"http://{host}:15672\""
                        .to_string(),
                )
            }
            other => {
                return Some(format!(
                    "unknown placeholder {{{other}}}; a management url may use {{host}} (the \
                     backend's host) and {{name}} (its name)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "kind = \"tcp\"";

    /// Two backends on IP literals (no DNS), the probe `health`, and `extra` appended (a key
    /// there lands on rabbit-b, the last table open, unless a section header comes first).
    fn config(health: &str, extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[[listener]]
name = "amqp"
listen = "127.0.0.1:5672"
pool = "rabbitmq"

[pool.rabbitmq.health]
{health}

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "10.0.0.1:5672"

[[pool.rabbitmq.backend]]
name = "rabbit-b"
addr = "[fd00::2]:5672"
{extra}
"#
        );
        from_toml_offline(&text, Path::new("test.toml"))
    }

    fn endpoints(extra: &str) -> Vec<Option<ManagementEndpoint>> {
        let config = config(TCP, extra).unwrap_or_else(|e| panic!("{e}\n--- for:\n{extra}"));
        config.pools[0]
            .backends
            .iter()
            .map(|b| b.management.clone())
            .collect()
    }

    type Shown = Option<(String, Option<String>, Duration)>;

    /// What each backend's endpoint resolves to: (url shown, user, timeout).
    fn shown(extra: &str) -> Vec<Shown> {
        endpoints(extra)
            .into_iter()
            .map(|m| m.map(|m| (m.url.to_string(), m.user, m.timeout)))
            .collect()
    }

    fn endpoint(url: &str, user: Option<&str>, timeout: Duration) -> Shown {
        Some((url.to_string(), user.map(str::to_string), timeout))
    }

    #[test]
    fn the_pool_template_is_filled_in_per_backend() {
        let three = DEFAULT_MANAGEMENT_TIMEOUT;
        let five = Duration::from_secs(5);
        let cases = [
            ("", vec![None, None]),
            (
                "[pool.rabbitmq.management]\nurl = \"http://{host}:15672\"",
                vec![
                    endpoint("http://10.0.0.1:15672/", None, three),
                    endpoint("http://[fd00::2]:15672/", None, three),
                ],
            ),
            (
                "[pool.rabbitmq.management]\nurl = \"http://mgmt-{name}.internal/rabbit/\"\n\
                 user = \"mon\"\npassword = \"pw\"\ntimeout = \"5s\"",
                vec![
                    endpoint("http://mgmt-rabbit-a.internal/rabbit/", Some("mon"), five),
                    endpoint("http://mgmt-rabbit-b.internal/rabbit/", Some("mon"), five),
                ],
            ),
            // Without a pool section, only the backend that has its own gets an endpoint.
            (
                "management = \"http://10.0.0.9:15673\"",
                vec![None, endpoint("http://10.0.0.9:15673/", None, three)],
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(shown(extra), want, "{extra}");
        }
    }

    #[test]
    fn a_backends_own_endpoint_replaces_the_template_and_its_user_info_the_credentials() {
        let own = "management = \"http://10.0.0.9:15673\"\n[pool.rabbitmq.management]\n\
                   url = \"http://{host}:15672\"\nuser = \"mon\"\npassword_file = \"/etc/pw\"";
        let got = endpoints(own);
        assert_eq!(
            got[0].as_ref().unwrap().url.to_string(),
            "http://10.0.0.1:15672/"
        );
        let b = got[1].as_ref().unwrap();
        assert_eq!(b.url.to_string(), "http://10.0.0.9:15673/");
        assert_eq!(
            (b.user.as_deref(), b.password_file.as_deref()),
            (Some("mon"), Some(Path::new("/etc/pw")))
        );
        let secret = "management = \"http://ops:s3cret@10.0.0.9:15673\"\n\
                      [pool.rabbitmq.management]\nurl = \"http://{host}:15672\"\n\
                      user = \"mon\"\npassword = \"hunter2\"";
        let got = endpoints(secret);
        let b = got[1].as_ref().unwrap();
        assert_eq!((b.user.as_ref(), b.password.as_ref()), (None, None));
        assert_eq!(b.url.credentials().unwrap().user, "ops");
        assert_eq!(
            got[0].as_ref().unwrap().password,
            Some(Secret("hunter2".into()))
        );
        let debug = format!("{got:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    /// Each bad value is one problem naming the key, the value (secrets masked) and the line.
    #[test]
    fn bad_management_keys_name_key_value_and_line() {
        let section = |keys: &str| format!("[pool.rabbitmq.management]\n{keys}");
        // (extra, key, value shown, fragment of the message)
        let cases = [
            (
                section("url = \"http://{host}:{port}\""),
                "pool.rabbitmq.management.url",
                "\"http://{host}:{port}\"",
                "{port} is the backend's AMQP port, not its management port",
            ),
            (
                section("url = \"http://{hostname}:15672\""),
                "pool.rabbitmq.management.url",
                "\"http://{hostname}:15672\"",
                "unknown placeholder {hostname}",
            ),
            (
                section("url = \"http://{host}:15672/?x=1\""),
                "pool.rabbitmq.management.url",
                "\"http://{host}:15672/?x=1\"",
                "must not have a query",
            ),
            (
                section("url = \"https://{host}:15671\""),
                "pool.rabbitmq.management.url",
                "\"https://{host}:15671\"",
                "is https://, which needs [pool.rabbitmq.tls]",
            ),
            (
                section("url = \"http://u:hunter2@{host}:15672\"\nuser = \"mon\""),
                "pool.rabbitmq.management.url",
                "\"http://***@{host}:15672\"",
                "mutually exclusive",
            ),
            (
                section("url = \"http://{host}:15672\"\npassword = \"hunter2\""),
                "pool.rabbitmq.management.user",
                "",
                "required when password or password_file is set",
            ),
            (
                section("url = \"http://{host}:15672\"\nuser = \"u\"\npassword = \"p\"\npassword_file = \"/p\""),
                "pool.rabbitmq.management.password_file",
                "\"/p\"",
                "mutually exclusive",
            ),
            (
                section("url = \"http://{host}:15672\"\ntimeout = \"6s\""),
                "pool.rabbitmq.management.timeout",
                "\"6s\"",
                "too long: at most 5s",
            ),
            (
                section("url = \"http://{host}:15672\"\ntimeout = \"0s\""),
                "pool.rabbitmq.management.timeout",
                "\"0s\"",
                "must be longer than 0",
            ),
            (
                section("user = \"mon\""),
                "pool.rabbitmq.management",
                "",
                "gives no backend a management endpoint",
            ),
            (
                "management = \"http://10.0.0.9:99999\"".to_string(),
                "pool.rabbitmq.backend[1].management",
                "\"http://10.0.0.9:99999\"",
                "the port must be a number from 1 to 65535",
            ),
            (
                "management = \"10.0.0.9:15672\"".to_string(),
                "pool.rabbitmq.backend[1].management",
                "\"10.0.0.9:15672\"",
                "must be an http:// URL",
            ),
        ];
        for (extra, key, value, fragment) in &cases {
            let problems = match config(TCP, extra) {
                Err(ConfigError::Invalid { problems, .. }) => problems,
                other => panic!("{extra}: expected problems, got {other:?}"),
            };
            assert_eq!(problems.len(), 1, "{extra}: {problems:#?}");
            let p = &problems[0];
            assert_eq!((p.key.as_str(), p.value.as_str()), (*key, *value), "{p:#?}");
            assert!(p.message.contains(fragment), "{key}: {:?}", p.message);
            assert!(p.line.is_some(), "{p:#?}");
            assert!(!format!("{p:?}").contains("hunter2"), "{p:#?}");
        }
    }

    #[test]
    fn an_http_probe_path_needs_every_backends_endpoint() {
        let probe = "kind = \"http\"\nurl = \"/api/health/checks/alarms\"";
        let template = "[pool.rabbitmq.management]\nurl = \"http://{host}:15672\"";
        // (extra, None = loads, or a fragment of the one problem on health.url)
        let cases = [
            (template, None),
            ("", Some("rabbit-a, rabbit-b have none: set [pool.rabbitmq.management] url")),
            (
                "management = \"http://10.0.0.9:1\"",
                Some("rabbit-a has none: set [pool.rabbitmq.management] url = \"http://{host}:15672\", or management on it"),
            ),
        ];
        for (extra, want) in cases {
            match (config(probe, extra), want) {
                (Ok(config), None) => {
                    let Some(HealthConfig {
                        probe: Probe::Http { url, .. },
                        ..
                    }) = &config.pools[0].health
                    else {
                        panic!("an http probe");
                    };
                    assert!(url.on_management());
                }
                (Err(ConfigError::Invalid { problems, .. }), Some(fragment)) => {
                    assert_eq!(problems.len(), 1, "{extra}: {problems:#?}");
                    let p = &problems[0];
                    assert_eq!(p.key, "pool.rabbitmq.health.url");
                    assert_eq!(p.value, "\"/api/health/checks/alarms\"");
                    assert!(p.message.contains(fragment), "{extra}: {}", p.message);
                }
                (got, want) => panic!("{extra}: want {want:?}, got {got:?}"),
            }
        }
        // A full URL template needs no endpoint, as before.
        let full = "kind = \"http\"\nurl = \"http://{host}:15672/api/health/checks/alarms\"";
        assert!(config(full, "").is_ok());
    }
}
