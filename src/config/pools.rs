//! Validation of `[pool.NAME]`: balancing, `min_available`, `slow_start`, `on_down`, the health
//! section and its probe (with the `http` probe's URL and credentials), and each backend (its
//! management endpoint is `management`'s).

use super::*;

impl Validator<'_> {
    pub(super) fn pool(&mut self, name: Str, raw: RawPool) -> PoolConfig {
        let key = format!("pool.{}", name.get_ref());
        self.name(&key, &name, "pool");
        let balance = self.choice(
            &format!("{key}.balance"),
            raw.balance.as_ref(),
            DEFAULT_BALANCE,
        );
        let slow_start = self.duration(
            &format!("{key}.slow_start"),
            raw.slow_start.as_ref(),
            DEFAULT_SLOW_START,
        );
        let on_down = self.choice(
            &format!("{key}.on_down"),
            raw.on_down.as_ref(),
            DEFAULT_ON_DOWN,
        );
        let probe_url = raw.health.as_ref().and_then(|h| h.url.clone());
        let tls_written = raw.tls.is_some();
        let tls = self.pool_tls_section(&key, raw.tls, raw.health.as_ref());
        let health = raw.health.map(|h| self.health(&format!("{key}.health"), h));
        let management = raw
            .management
            .map(|m| self.pool_management(&key, m, tls_written));
        let own: Vec<bool> = raw.backend.iter().map(|b| b.management.is_some()).collect();
        let addrs: Vec<Str> = raw.backend.iter().map(|b| b.addr.clone()).collect();
        let expand: Vec<Expand> = raw
            .backend
            .iter()
            .map(|b| (b.expand.clone(), b.management.is_some()))
            .collect();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.backend.len());
        for (i, raw) in raw.backend.into_iter().enumerate() {
            let backend_key = format!("{key}.backend[{i}]");
            if self.name(&format!("{backend_key}.name"), &raw.name, "backend") {
                let name = raw.name.get_ref();
                if let Some(first) = names.get(name) {
                    self.report(
                        format!("{backend_key}.name"),
                        quote(name),
                        Some(raw.name.span()),
                        format!("duplicate backend name in this pool (also {key}.backend[{first}].name)"),
                    );
                } else {
                    names.insert(name.clone(), i);
                }
            }
            backends.push(self.backend(&backend_key, raw, management.as_ref(), tls_written));
        }
        if let Some(tls) = &tls {
            self.backends_tls(&key, tls, &mut backends, &addrs);
        }
        let probe = health.as_ref().map(|h| &h.probe).zip(probe_url.as_ref());
        self.pool_endpoints(&key, management.as_ref(), &own, probe, &backends);
        // Last: the checks above index backends as written.
        let backends = self.expand_backends(&key, backends, &expand, management.is_some());
        let resolve_interval = self.resolve_interval(&key, raw.resolve_interval.as_ref());
        let primaries = backends.iter().filter(|b| !b.backup).count();
        self.backend_count(&key, &name, backends.len(), primaries);
        let min_available = self.min_available(&key, raw.min_available.as_ref(), primaries);
        if let (OnDown::Close, None, Some(raw)) = (on_down, &health, &raw.on_down) {
            self.report(
                format!("{key}.on_down"),
                quote(raw.get_ref()),
                Some(raw.span()),
                format!(
                    "needs a [{key}.health] probe: without one, a single failed connect marks a \
                     backend down, too little to close its other connections"
                ),
            );
        }
        // Graceful closes need every backend's management API; without it, moving clients
        // would cut their sockets, so the pool rebalances only when told to.
        let graceful = backends.iter().all(|b| b.management.is_some());
        let explicit_mode = raw.rebalance.as_ref().and_then(|r| r.mode.clone());
        let mut rebalance = self.rebalance(&key, raw.rebalance, graceful);
        if balance == Balance::SourceHash && rebalance.mode != RebalanceMode::Off {
            if let Some(raw) = explicit_mode {
                self.report(
                    format!("{key}.rebalance.mode"),
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    "balance = \"source_hash\" keeps each client on the backend its address \
                     hashes to, so a moved client would come back: use \"off\"",
                );
            }
            rebalance.mode = RebalanceMode::Off;
        }
        PoolConfig {
            name: name.into_inner(),
            balance,
            min_available,
            slow_start,
            on_down,
            rebalance,
            health,
            resolve_interval,
            backends,
        }
    }

    /// `[pool.NAME.rebalance]`; its mode defaults to `on_return` when connections can be
    /// closed gracefully (`graceful`), else `off`.
    fn rebalance(
        &mut self,
        key: &str,
        raw: Option<RawRebalance>,
        graceful: bool,
    ) -> RebalanceConfig {
        let raw = raw.unwrap_or(RawRebalance {
            mode: None,
            tolerance: None,
            max_closes_per_second: None,
            min_age: None,
        });
        let key = format!("{key}.rebalance");
        let default_mode = if graceful {
            RebalanceMode::OnReturn
        } else {
            RebalanceMode::Off
        };
        RebalanceConfig {
            mode: self.choice(&format!("{key}.mode"), raw.mode.as_ref(), default_mode),
            tolerance: self.bounded_number(
                &format!("{key}.tolerance"),
                raw.tolerance.as_ref(),
                (0.0, MAX_REBALANCE_TOLERANCE),
                DEFAULT_REBALANCE_TOLERANCE,
            ),
            max_closes_per_second: self.bounded_number(
                &format!("{key}.max_closes_per_second"),
                raw.max_closes_per_second.as_ref(),
                (MIN_REBALANCE_RATE, MAX_REBALANCE_RATE),
                DEFAULT_REBALANCE_RATE,
            ),
            min_age: self.duration(
                &format!("{key}.min_age"),
                raw.min_age.as_ref(),
                DEFAULT_REBALANCE_MIN_AGE,
            ),
        }
    }

    /// A number in `low..=high`.
    fn bounded_number(
        &mut self,
        key: &str,
        raw: Option<&Spanned<f64>>,
        (low, high): (f64, f64),
        default: f64,
    ) -> f64 {
        let Some(raw) = raw else { return default };
        let value = *raw.get_ref();
        if (low..=high).contains(&value) {
            return value;
        }
        self.report(
            key,
            value.to_string(),
            Some(raw.span()),
            format!("out of range: from {low} to {high} (omit it for the default, {default})"),
        );
        default
    }

    /// A pool needs backends, not too many, and at least one primary.
    fn backend_count(&mut self, key: &str, name: &Str, backends: usize, primaries: usize) {
        if backends == 0 {
            self.report(
                format!("{key}.backend"),
                "",
                Some(name.span()),
                "the pool has no backends; add at least one backend",
            );
        } else if backends > MAX_BACKENDS_PER_POOL {
            self.report(
                format!("{key}.backend"),
                backends.to_string(),
                Some(name.span()),
                format!(
                    "too many backends: a pool may have at most {MAX_BACKENDS_PER_POOL} \
                     (the size warren is tested at); split it into several pools"
                ),
            );
        } else if primaries == 0 {
            self.report(
                format!("{key}.backend"),
                "",
                Some(name.span()),
                "every backend is a backup; at least one needs backup = false",
            );
        }
    }

    /// `min_available`: at most the primaries, or every drain would be refused.
    fn min_available(
        &mut self,
        key: &str,
        raw: Option<&Spanned<usize>>,
        primaries: usize,
    ) -> usize {
        let Some(min) = raw else {
            return DEFAULT_MIN_AVAILABLE;
        };
        if primaries > 0 && *min.get_ref() > primaries {
            self.report(
                format!("{key}.min_available"),
                min.get_ref().to_string(),
                Some(min.span()),
                format!(
                    "is more than the {primaries} primary (non-backup) backend(s): \
                     every drain would be refused"
                ),
            );
        }
        *min.get_ref()
    }

    pub(super) fn health(&mut self, key: &str, raw: RawHealth) -> HealthConfig {
        let kind = raw.kind.get_ref().as_str();
        let kind_span = Some(raw.kind.span());
        const KINDS: &str = "tcp, amqp, amqp_login, http";
        if !matches!(kind, "tcp" | "amqp" | "amqp_login" | "http") {
            self.report(
                format!("{key}.kind"),
                quote(kind),
                kind_span.clone(),
                format!("unknown probe kind; expected one of {KINDS}"),
            );
        }
        self.misplaced_probe_keys(key, kind, &raw);
        let probe = match kind {
            "amqp" => Probe::Amqp,
            "amqp_login" => self.amqp_login_probe(key, kind_span.clone(), raw.uri),
            "http" => self.http_probe(
                key,
                kind_span,
                raw.url,
                raw.user,
                raw.password,
                raw.password_file,
            ),
            _ => Probe::Tcp,
        };
        let interval = self.positive_duration(
            &format!("{key}.interval"),
            raw.interval.as_ref(),
            DEFAULT_HEALTH_INTERVAL,
        );
        let timeout = self.positive_duration(
            &format!("{key}.timeout"),
            raw.timeout.as_ref(),
            DEFAULT_HEALTH_TIMEOUT,
        );
        // A timeout at or above interval is allowed (HAProxy's `inter` with a longer
        // `timeout check`): probes of one backend run one after another, so the next one starts
        // when the previous one ends, never overlapping it (see `health::Controller`).
        HealthConfig {
            probe,
            interval,
            timeout,
            rise: self.positive_count(&format!("{key}.rise"), raw.rise.as_ref(), DEFAULT_RISE),
            fall: self.positive_count(&format!("{key}.fall"), raw.fall.as_ref(), DEFAULT_FALL),
        }
    }

    /// Keys of one probe kind set on another are a mistake, not something to ignore.
    fn misplaced_probe_keys(&mut self, key: &str, kind: &str, raw: &RawHealth) {
        let http_keys = [
            ("url", &raw.url, false),
            ("user", &raw.user, false),
            ("password", &raw.password, true),
            ("password_file", &raw.password_file, false),
        ];
        for (name, value, secret) in http_keys {
            if let (Some(value), false) = (value, kind == "http") {
                let shown = if secret {
                    MASKED.to_string()
                } else {
                    quote(value.get_ref())
                };
                self.report(
                    format!("{key}.{name}"),
                    shown,
                    Some(value.span()),
                    format!("only used by kind = \"http\", not kind = {}", quote(kind)),
                );
            }
        }
        if let (Some(uri), false) = (&raw.uri, kind == "amqp_login") {
            self.report(
                format!("{key}.uri"),
                MASKED,
                Some(uri.span()),
                format!(
                    "only used by kind = \"amqp_login\", not kind = {}",
                    quote(kind)
                ),
            );
        }
    }

    /// The `amqp_login` probe: its `uri` is required and must be an AMQP URI.
    fn amqp_login_probe(
        &mut self,
        key: &str,
        kind_span: Option<Range<usize>>,
        uri: Option<Str>,
    ) -> Probe {
        match uri {
            Some(uri) => {
                let text = uri.get_ref();
                if !(text.starts_with("amqp://") || text.starts_with("amqps://")) {
                    // The value usually carries a password, so only its shape is described.
                    self.report(
                    format!("{key}.uri"),
                    MASKED,
                    Some(uri.span()),
                    "must start with amqp:// or amqps://, e.g. \"amqp://user:pass@{host}:{port}/%2f\"",
                );
                }
                Probe::AmqpLogin {
                    uri: Secret(uri.into_inner()),
                }
            }
            None => {
                self.report(
                format!("{key}.uri"),
                "",
                kind_span.clone(),
                "required for kind = \"amqp_login\", e.g. uri = \"amqp://user:pass@{host}:{port}/%2f\"",
            );
                Probe::Tcp
            }
        }
    }

    pub(super) fn http_probe(
        &mut self,
        key: &str,
        kind_span: Option<Range<usize>>,
        url: Option<Str>,
        user: Option<Str>,
        password: Option<Str>,
        password_file: Option<Str>,
    ) -> Probe {
        let url = match url {
            Some(url) => self.probe_url(&format!("{key}.url"), &url, user.as_ref()),
            None => {
                self.report(
                    format!("{key}.url"),
                    "",
                    kind_span,
                    "required for kind = \"http\", e.g. url = \
                     \"http://{host}:15672/api/health/checks/ready-to-serve-clients\"",
                );
                None
            }
        };
        let password_file = self.basic_auth(
            key,
            user.as_ref(),
            password.as_ref(),
            password_file.as_ref(),
        );
        let Some(url) = url else {
            // Reported above; keeps building the snapshot so later keys are checked too.
            return Probe::Tcp;
        };
        Probe::Http {
            url,
            user: user.map(Spanned::into_inner),
            password: password.map(|p| Secret(p.into_inner())),
            password_file,
        }
    }

    /// Basic authentication keys under `key`: `password` and `password_file` are exclusive, and
    /// either needs `user`. The password file's path, when valid.
    pub(super) fn basic_auth(
        &mut self,
        key: &str,
        user: Option<&Str>,
        password: Option<&Str>,
        password_file: Option<&Str>,
    ) -> Option<PathBuf> {
        if let (Some(_), Some(file)) = (password, password_file) {
            self.report(
                format!("{key}.password_file"),
                quote(file.get_ref()),
                Some(file.span()),
                "password and password_file are mutually exclusive; keep one",
            );
        }
        if user.is_none() {
            if let Some(secret) = password.or(password_file) {
                self.report(
                    format!("{key}.user"),
                    "",
                    Some(secret.span()),
                    "required when password or password_file is set",
                );
            }
        }
        self.path(&format!("{key}.password_file"), password_file)
    }

    /// An `http` probe's URL, parsed as every probe will use it (`{host}` and `{port}` filled
    /// in), so `check` refuses what would fail every probe. Credentials go either in the URL or
    /// in `user`: with both, which one is sent would be a guess.
    pub(super) fn probe_url(
        &mut self,
        key: &str,
        url: &Str,
        user: Option<&Str>,
    ) -> Option<ProbeUrl> {
        match ProbeUrl::parse(url.get_ref()) {
            Ok(parsed) if parsed.has_credentials() && user.is_some() => {
                self.report(
                    key,
                    quote(&without_userinfo(url.get_ref())),
                    Some(url.span()),
                    "user info (user:pass@) and user are mutually exclusive; keep one",
                );
                None
            }
            Ok(parsed) => Some(parsed),
            Err(e) => {
                self.url_problem(key, url, e);
                None
            }
        }
    }

    pub(super) fn backend(
        &mut self,
        key: &str,
        raw: RawBackend,
        management: Option<&PoolManagement>,
        tls: bool,
    ) -> BackendConfig {
        let addr_key = format!("{key}.addr");
        let resolved = self.backend_addr(&addr_key, &raw.addr);
        let management = self.backend_management(
            key,
            raw.management.as_ref(),
            resolved.as_ref().map(|(host, _, _)| host.as_str()),
            raw.name.get_ref(),
            management,
            tls,
        );
        let (host, port, addr) = match resolved {
            Some(resolved) => resolved,
            // Keeps building the snapshot so later keys are checked too; it is never returned.
            None => (
                raw.addr.get_ref().clone(),
                0,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            ),
        };
        BackendConfig {
            name: raw.name.into_inner(),
            dns_name: host.parse::<IpAddr>().is_err().then(|| host.clone()),
            expanded_from: None,
            host,
            port,
            addr,
            weight: self.positive_count(
                &format!("{key}.weight"),
                raw.weight.as_ref(),
                DEFAULT_WEIGHT,
            ),
            backup: raw.backup.unwrap_or(DEFAULT_BACKUP),
            management,
            tags: self.tags(
                &format!("{key}.tags"),
                raw.tags.as_deref().unwrap_or_default(),
            ),
            // Set for the whole pool once its backends are known (`backends_tls`).
            tls: None,
        }
    }

    /// A backend's `tags`: each a valid name; sorted, duplicates dropped.
    fn tags(&mut self, key: &str, raw: &[Str]) -> Vec<String> {
        let mut tags: Vec<String> = raw
            .iter()
            .enumerate()
            .filter(|(i, tag)| self.name(&format!("{key}[{i}]"), tag, "tag"))
            .map(|(_, tag)| tag.get_ref().clone())
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }
}
