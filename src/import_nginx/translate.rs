//! The `stream` block translated: the walk over directives, proxy settings inherited from
//! `stream` into `server`, and `server` blocks into listeners. What cannot be translated becomes
//! a `Warning` with the reason from `reasons`.

use super::upstream::probe_kind;
use super::*;

/// A value together with the directive it came from, for the comment in the output.
#[derive(Debug, Clone)]
pub(super) struct Sourced<T> {
    pub(super) value: T,
    pub(super) note: String,
}

pub(super) fn sourced<T>(value: T, d: &Directive) -> Sourced<T> {
    Sourced {
        value,
        note: note(d),
    }
}

pub(super) fn note(d: &Directive) -> String {
    format!("{}  ({})", d.shown(), d.loc)
}

/// The `proxy_*` settings of a `server`, inherited from the `stream` level.
#[derive(Debug, Clone, Default)]
pub(super) struct ProxySettings {
    pub(super) connect_timeout: Option<Sourced<Duration>>,
    pub(super) idle_timeout: Option<Sourced<Duration>>,
    pub(super) next_upstream: Option<Sourced<bool>>,
    pub(super) next_upstream_tries: Option<Sourced<u32>>,
    pub(super) next_upstream_timeout: Option<Sourced<Duration>>,
    pub(super) proxy_protocol: Option<Sourced<bool>>,
    pub(super) proxy_protocol_timeout: Option<Sourced<Duration>>,
    /// `proxy_ssl`: NGINX encrypts to the backends (`proxy_ssl`); the note is
    /// "`proxy_ssl on;` (FILE:LINE)".
    pub(super) proxy_ssl: Option<Sourced<bool>>,
    /// The `proxy_ssl_*` settings that become `[pool.NAME.tls]` keys.
    pub(super) ssl: SslSettings,
}

#[derive(Debug)]
pub(super) struct OutListener {
    pub(super) name: String,
    pub(super) listen: Sourced<String>,
    pub(super) pool: Sourced<String>,
    /// `key = value` lines (value already TOML) with their notes.
    pub(super) keys: Vec<(String, String, String)>,
    /// Comment lines printed under the listener header (without the leading '#').
    pub(super) comments: Vec<String>,
}

#[derive(Debug)]
pub(super) struct OutPool {
    pub(super) name: String,
    /// The NGINX name it came from (`upstream NAME` or the `proxy_pass` address).
    pub(super) nginx_name: String,
    pub(super) note: String,
    pub(super) balance: Sourced<Balance>,
    /// Comment lines printed under the pool header (without the leading '#').
    pub(super) comments: Vec<String>,
    pub(super) backends: Vec<OutBackend>,
    /// The active probe written for it (NGINX has none; `warren ctl upgrade` needs one).
    pub(super) health: OutHealth,
    /// Whether a listener forwards to it; one no listener uses is written commented out, so
    /// `warren check` does not resolve host names nothing would connect to.
    pub(super) used: bool,
    /// `[pool.NAME.tls]`, from the first server with `proxy_ssl on` that forwards to it.
    pub(super) tls: Option<OutTls>,
    /// The first `proxy_pass` to it without `proxy_ssl`, and whether the mix was warned about.
    pub(super) plain_from: Option<String>,
    pub(super) mixed_warned: bool,
}

/// A pool's `[pool.NAME.health]`: the probe kind and why it was chosen, and `fall` when NGINX's
/// `max_fails` asked for more than one failure.
#[derive(Debug)]
pub(super) struct OutHealth {
    pub(super) kind: &'static str,
    pub(super) why: String,
    pub(super) fall: Option<Sourced<u32>>,
}

#[derive(Debug)]
pub(super) struct OutBackend {
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) weight: Option<u32>,
    pub(super) backup: bool,
    pub(super) note: String,
    /// `down` in NGINX: printed commented out.
    pub(super) commented_out: bool,
}

/// One `server` line of an upstream, parsed.
pub(super) struct UpstreamServer<'d> {
    pub(super) directive: &'d Directive,
    pub(super) host: String,
    pub(super) addr: String,
    pub(super) weight: Option<u32>,
    pub(super) max_fails: u32,
    pub(super) fail_timeout: Duration,
    pub(super) backup: bool,
    pub(super) down: bool,
}

/// A `listen` warren can take.
pub(super) struct Listen<'d> {
    pub(super) directive: &'d Directive,
    /// warren's `listen` value.
    pub(super) addr: String,
    /// The `proxy_protocol` parameter: a PROXY header is expected from the client side.
    pub(super) accept_proxy_protocol: bool,
    /// How the address was changed, if it was.
    pub(super) note: Option<String>,
}

#[derive(Default)]
pub(super) struct Translator {
    /// With the directive's document position.
    pub(super) warnings: Vec<(usize, Warning)>,
    pub(super) listeners: Vec<OutListener>,
    pub(super) pools: Vec<OutPool>,
    pub(super) pool_names: HashSet<String>,
    pub(super) listener_names: HashSet<String>,
    /// Listen addresses taken so far, with where.
    pub(super) listens: Vec<(std::net::SocketAddr, Loc)>,
}

impl Translator {
    pub(super) fn warn(&mut self, d: &Directive, message: impl Into<String>) {
        self.warnings.push((
            d.seq,
            Warning {
                loc: d.loc.clone(),
                directive: d.shown(),
                message: message.into(),
            },
        ));
    }

    pub(super) fn translate(&mut self, top: &[Directive], main: &Path) -> Result<(), ImportError> {
        let mut stream: Option<&Directive> = None;
        for d in top {
            if d.name == "stream" {
                if d.block.is_none() {
                    return Err(invalid(d, "needs a block: stream { ... }"));
                }
                if let Some(first) = stream {
                    return Err(invalid(
                        d,
                        format!("duplicate stream block (the first is at {})", first.loc),
                    ));
                }
                stream = Some(d);
            } else {
                self.warn(
                    d,
                    format!("outside the stream block: {}", outside_reason(&d.name)),
                );
            }
        }
        let Some(stream) = stream else {
            return Err(ImportError::NoStream {
                file: main.to_path_buf(),
            });
        };
        let children = stream.block.as_deref().unwrap_or_default();

        // Stream-level proxy_* settings apply to every server wherever they are written, and an
        // upstream may be defined after the server that uses it: settings and upstreams first.
        let mut settings = ProxySettings::default();
        let mut seen = HashSet::new();
        let mut upstreams: Vec<(String, &Directive)> = Vec::new();
        for d in children {
            match d.name.as_str() {
                "server" => {}
                "upstream" => {
                    if d.args.len() != 1 || d.block.is_none() {
                        return Err(invalid(d, "expected `upstream NAME { ... }`"));
                    }
                    if let Some((_, first)) = upstreams.iter().find(|(n, _)| *n == d.args[0]) {
                        return Err(invalid(
                            d,
                            format!("duplicate upstream (the first is at {})", first.loc),
                        ));
                    }
                    upstreams.push((d.args[0].clone(), d));
                }
                _ => {
                    if !self.proxy_setting(&mut settings, &mut seen, d)? {
                        self.unsupported(d);
                    }
                }
            }
        }
        for (_, d) in &upstreams {
            self.upstream(d)?;
        }
        for d in children.iter().filter(|d| d.name == "server") {
            self.server(d, &settings)?;
        }
        if self.listeners.is_empty() {
            return Err(ImportError::NoListener {
                at: stream.loc.clone(),
            });
        }
        Ok(())
    }

    /// A directive with no translation: a warning that says why.
    pub(super) fn unsupported(&mut self, d: &Directive) {
        let message = if d.name == "set_real_ip_from" && d.block.is_none() {
            real_ip_reason(&d.args)
        } else if d.block.is_some() && block_reason(&d.name).is_none() {
            format!(
                "block not translated ({} directive(s) inside): {}",
                d.block.as_ref().map_or(0, Vec::len),
                stream_reason(&d.name)
            )
        } else {
            block_reason(&d.name)
                .unwrap_or_else(|| stream_reason(&d.name))
                .to_string()
        };
        self.warn(d, message);
    }

    /// A `proxy_*` directive warren has a key for (or matches by its fixed behaviour): applied
    /// to `settings`; false when it is not one of those.
    pub(super) fn proxy_setting(
        &mut self,
        settings: &mut ProxySettings,
        seen: &mut HashSet<String>,
        d: &Directive,
    ) -> Result<bool, ImportError> {
        if matches!(
            d.name.as_str(),
            "proxy_ssl_trusted_certificate"
                | "proxy_ssl_name"
                | "proxy_ssl_certificate"
                | "proxy_ssl_certificate_key"
                | "proxy_ssl_verify"
        ) && d.block.is_none()
        {
            if d.args.len() != 1 {
                return Err(invalid(d, "needs exactly one argument"));
            }
            if !seen.insert(d.name.clone()) {
                return Err(invalid(d, "is duplicate in this block"));
            }
            return self.proxy_ssl_setting(&mut settings.ssl, d);
        }
        let known = matches!(
            d.name.as_str(),
            "proxy_connect_timeout"
                | "proxy_timeout"
                | "proxy_next_upstream"
                | "proxy_next_upstream_tries"
                | "proxy_next_upstream_timeout"
                | "proxy_protocol"
                | "proxy_protocol_timeout"
                | "proxy_ssl"
                | "tcp_nodelay"
                | "proxy_half_close"
        );
        if !known || d.block.is_some() {
            return Ok(false);
        }
        if d.args.len() != 1 {
            return Err(invalid(d, "needs exactly one argument"));
        }
        if !seen.insert(d.name.clone()) {
            return Err(invalid(d, "is duplicate in this block"));
        }
        self.apply_proxy_setting(settings, d, &d.args[0])?;
        Ok(true)
    }

    /// One known `proxy_*` directive with its one argument `arg`, into `settings`: a table, one
    /// arm per directive.
    fn apply_proxy_setting(
        &mut self,
        settings: &mut ProxySettings,
        d: &Directive,
        arg: &str,
    ) -> Result<(), ImportError> {
        match d.name.as_str() {
            "proxy_connect_timeout" => self.timeout(&mut settings.connect_timeout, d, arg)?,
            "proxy_timeout" => self.timeout(&mut settings.idle_timeout, d, arg)?,
            "proxy_next_upstream_timeout" => {
                let value = nginx_duration(arg).map_err(|m| invalid(d, m))?;
                settings.next_upstream_timeout = Some(sourced(value, d));
            }
            "proxy_next_upstream_tries" => {
                let value = arg.parse::<u32>().map_err(|_| {
                    invalid(
                        d,
                        format!("{arg:?} is not a number of tries (0 = no limit)"),
                    )
                })?;
                settings.next_upstream_tries = Some(sourced(value, d));
            }
            "proxy_next_upstream" => settings.next_upstream = Some(sourced(on_off(d)?, d)),
            "proxy_protocol" => settings.proxy_protocol = Some(sourced(on_off(d)?, d)),
            "proxy_ssl" => {
                settings.proxy_ssl = Some(Sourced {
                    value: on_off(d)?,
                    note: format!("`{}` ({})", d.shown(), d.loc),
                });
            }
            "proxy_protocol_timeout" => {
                self.timeout(&mut settings.proxy_protocol_timeout, d, arg)?
            }
            "tcp_nodelay" => self.always_on(
                d,
                "warren always sets TCP_NODELAY (AMQP frames are small); cannot be turned off",
            )?,
            // warren always forwards a half-close and lets both directions finish, which is
            // what `on` asks for.
            _ => self.always_on(
                d,
                "warren always forwards a half-close (shutdown of one direction) and keeps the \
                 other direction open until it finishes too",
            )?,
        }
        Ok(())
    }

    /// A timeout into `slot`; 0, which warren does not take, gets a warning and leaves `slot`
    /// as it was (what the `stream` level set, else warren's default).
    fn timeout(
        &mut self,
        slot: &mut Option<Sourced<Duration>>,
        d: &Directive,
        arg: &str,
    ) -> Result<(), ImportError> {
        let value = nginx_duration(arg).map_err(|m| invalid(d, m))?;
        if value.is_zero() {
            self.warn(
                d,
                "0 is not accepted by warren (timeouts must be longer than 0); the default is \
                 used",
            );
        } else {
            *slot = Some(sourced(value, d));
        }
        Ok(())
    }

    /// An on/off directive for something warren always does: `off` gets the warning `why`.
    fn always_on(&mut self, d: &Directive, why: &str) -> Result<(), ImportError> {
        if !on_off(d)? {
            self.warn(d, why);
        }
        Ok(())
    }

    /// A `server` block of `stream`: a listener per usable `listen`, to the pool its
    /// `proxy_pass` names; left out, with a warning, when either is missing.
    pub(super) fn server(
        &mut self,
        d: &Directive,
        inherited: &ProxySettings,
    ) -> Result<(), ImportError> {
        let Some(children) = d.block.as_deref() else {
            return Err(invalid(
                d,
                "a server in stream needs a block: server { ... }",
            ));
        };
        let (settings, listens, proxy_pass) = self.server_block(children, inherited)?;
        let Some(pass) = proxy_pass else {
            self.warn(
                d,
                "server without proxy_pass: warren only proxies, so this server is left out",
            );
            return Ok(());
        };
        if listens.is_empty() {
            self.warn(
                d,
                "no listen warren can take (see the warnings); this server and its proxy_pass \
                 are left out",
            );
            return Ok(());
        }
        let Some(pool) = self.pass_pool(pass)? else {
            self.warn(
                d,
                "its proxy_pass cannot be translated; this server is left out",
            );
            return Ok(());
        };
        let keys = listener_keys(&settings, pass, &mut self.warnings);
        let mut comments = Vec::new();
        match settings.proxy_ssl.as_ref().filter(|ssl| ssl.value) {
            Some(ssl) => self.proxy_ssl_on(pass, &pool, ssl, &settings.ssl, &mut comments),
            None => self.proxy_ssl_off(pass, &pool),
        }
        self.add_listeners(listens, &pool, pass, &keys, &comments);
        Ok(())
    }

    /// What a `server` block holds: its proxy settings (the inherited ones overridden), its
    /// listens and its one `proxy_pass`. Other directives become warnings.
    fn server_block<'d>(
        &mut self,
        children: &'d [Directive],
        inherited: &ProxySettings,
    ) -> Result<(ProxySettings, Vec<Listen<'d>>, Option<&'d Directive>), ImportError> {
        let mut settings = inherited.clone();
        let mut seen = HashSet::new();
        let mut listens: Vec<Listen<'_>> = Vec::new();
        let mut proxy_pass: Option<&Directive> = None;
        for c in children {
            match c.name.as_str() {
                "listen" => {
                    if let Some(listen) = self.listen(c)? {
                        listens.push(listen);
                    }
                }
                "proxy_pass" => {
                    if c.args.len() != 1 || c.block.is_some() {
                        return Err(invalid(c, "expected `proxy_pass UPSTREAM_OR_ADDRESS;`"));
                    }
                    if let Some(first) = proxy_pass {
                        return Err(invalid(
                            c,
                            format!("is duplicate (the first is at {})", first.loc),
                        ));
                    }
                    proxy_pass = Some(c);
                }
                _ => {
                    if !self.proxy_setting(&mut settings, &mut seen, c)? {
                        self.unsupported(c);
                    }
                }
            }
        }
        Ok((settings, listens, proxy_pass))
    }

    /// One listener per `listen` of a server, all to `pool` with the server's keys.
    fn add_listeners(
        &mut self,
        listens: Vec<Listen<'_>>,
        pool: &str,
        pass: &Directive,
        keys: &[(String, String, String)],
        comments: &[String],
    ) {
        for Listen {
            directive: listen,
            addr,
            accept_proxy_protocol: accept_pp,
            note: addr_note,
        } in listens
        {
            let port = addr.rsplit(':').next().unwrap_or_default();
            let name = if self.listener_names.contains(pool) {
                unique(&format!("{pool}-{port}"), &mut self.listener_names)
            } else {
                unique(pool, &mut self.listener_names)
            };
            let mut keys = keys.to_vec();
            if accept_pp {
                keys.push((
                    "accept_proxy_protocol".to_string(),
                    "true".to_string(),
                    format!("listen ... proxy_protocol  ({})", listen.loc),
                ));
            }
            let mut listen_note = note(listen);
            if let Some(extra) = addr_note {
                let _ = write!(listen_note, "; {extra}");
            }
            self.listeners.push(OutListener {
                name,
                listen: Sourced {
                    value: addr,
                    note: listen_note,
                },
                pool: Sourced {
                    value: pool.to_owned(),
                    note: note(pass),
                },
                keys,
                comments: comments.to_vec(),
            });
        }
        if let Some(p) = self.pools.iter_mut().find(|p| p.name == pool) {
            p.used = true;
        }
    }

    /// `listen ADDR [proxy_protocol] [...]`: the address, whether a PROXY header is expected,
    /// and a note; `None` (with a warning) when warren cannot take it.
    pub(super) fn listen<'d>(
        &mut self,
        d: &'d Directive,
    ) -> Result<Option<Listen<'d>>, ImportError> {
        if d.args.is_empty() || d.block.is_some() {
            return Err(invalid(d, "expected `listen ADDRESS [PARAMETERS];`"));
        }
        let (addr, addr_note) = match listen_addr(&d.args[0]).map_err(|m| invalid(d, m))? {
            ListenAddr::Addr(addr, note) => (addr, note),
            ListenAddr::Unsupported(why) => {
                self.warn(d, format!("{why}; this listen is left out"));
                return Ok(None);
            }
        };
        let mut accept_pp = false;
        for param in &d.args[1..] {
            let key = param.split_once('=').map_or(param.as_str(), |(k, _)| k);
            match key {
                "proxy_protocol" => accept_pp = true,
                "ssl" => {
                    self.warn(
                        d,
                        "warren does not terminate TLS, so this listen is left out; let RabbitMQ \
                         terminate TLS (listeners.ssl) and forward its TLS port as plain TCP",
                    );
                    return Ok(None);
                }
                "udp" => {
                    self.warn(d, "warren proxies TCP only; this UDP listen is left out");
                    return Ok(None);
                }
                "backlog" | "reuseport" | "so_keepalive" | "fastopen" | "rcvbuf" | "sndbuf"
                | "deferred" | "bind" | "ipv6only" | "setfib" | "accept_filter" => self.warn(
                    d,
                    format!(
                        "parameter {param:?} is not configurable in warren (it binds each listen \
                         address itself, IPv6 addresses IPv6-only, with a backlog of 4096)"
                    ),
                ),
                _ => self.warn(d, format!("parameter {param:?} is not supported")),
            }
        }
        let socket: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| invalid(d, format!("{addr:?} is not an address")))?;
        let clash = self.listens.iter().find(|(other, _)| {
            *other == socket
                || (other.port() == socket.port()
                    && other.is_ipv4() == socket.is_ipv4()
                    && (other.ip().is_unspecified() || socket.ip().is_unspecified()))
        });
        if let Some((other, at)) = clash.cloned() {
            if other == socket {
                return Err(invalid(
                    d,
                    format!("duplicate listen {addr} (also at {at})"),
                ));
            }
            let message = format!(
                "overlaps listen {other} at {at}: NGINX picks the server by local address, \
                 warren binds each listen address itself and cannot; this listen is left out"
            );
            self.warn(d, message);
            return Ok(None);
        }
        self.listens.push((socket, d.loc.clone()));
        Ok(Some(Listen {
            directive: d,
            addr,
            accept_proxy_protocol: accept_pp,
            note: addr_note,
        }))
    }

    /// The pool a `proxy_pass` names: an upstream, or a one-backend pool for `host:port`.
    pub(super) fn pass_pool(&mut self, pass: &Directive) -> Result<Option<String>, ImportError> {
        let arg = &pass.args[0];
        if let Some(pool) = self.pools.iter().find(|p| p.nginx_name == *arg) {
            return Ok(Some(pool.name.clone()));
        }
        if !arg.contains(':') && !arg.contains('$') && !arg.starts_with('[') {
            return Err(invalid(
                pass,
                format!("no upstream named {arg:?} in the stream block, and no port"),
            ));
        }
        let (host, addr) = match target(arg).map_err(|m| invalid(pass, m))? {
            ServerTarget::Addr { host, addr } => (host, addr),
            ServerTarget::Unsupported(why) => {
                self.warn(pass, why);
                return Ok(None);
            }
        };
        let base = sanitize(&addr);
        let name = unique(&base, &mut self.pool_names);
        let (kind, why) = probe_kind(&name, &[addr.as_str()]);
        self.pools.push(OutPool {
            name: name.clone(),
            nginx_name: arg.clone(),
            note: format!("proxy_pass {arg} without an upstream  ({})", pass.loc),
            balance: Sourced {
                value: crate::config::DEFAULT_BALANCE,
                note: "one backend".to_string(),
            },
            comments: Vec::new(),
            backends: vec![OutBackend {
                name: sanitize(&host),
                addr,
                weight: None,
                backup: false,
                note: note(pass),
                commented_out: false,
            }],
            health: OutHealth {
                kind,
                why,
                fall: None,
            },
            // The server that names it becomes a listener (add_listeners marks it).
            used: false,
            tls: None,
            plain_from: None,
            mixed_warned: false,
        });
        Ok(Some(name))
    }
}

/// `on` / `off`.
pub(super) fn on_off(d: &Directive) -> Result<bool, ImportError> {
    match d.args.as_slice() {
        [v] if v == "on" => Ok(true),
        [v] if v == "off" => Ok(false),
        _ => Err(invalid(d, "expected \"on\" or \"off\"")),
    }
}

pub(super) fn no_args(d: &Directive) -> Result<(), ImportError> {
    if d.args.is_empty() && d.block.is_none() {
        Ok(())
    } else {
        Err(invalid(d, "takes no arguments"))
    }
}

/// The listener keys a server's proxy settings give, as (key, TOML value, note).
pub(super) fn listener_keys(
    s: &ProxySettings,
    pass: &Directive,
    warnings: &mut Vec<(usize, Warning)>,
) -> Vec<(String, String, String)> {
    let mut keys = Vec::new();
    let mut push = |key: &str, value: String, note: &str| {
        keys.push((key.to_string(), value, note.to_string()));
    };
    if let Some(t) = &s.connect_timeout {
        push(
            "connect_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    if let Some(t) = &s.idle_timeout {
        push("idle_timeout", toml_str(&warren_duration(t.value)), &t.note);
    }
    if let Some(t) = &s.proxy_protocol_timeout {
        push(
            "proxy_protocol_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    match (&s.next_upstream, &s.next_upstream_tries) {
        (Some(off), tries) if !off.value => {
            push("next_upstream_tries", "1".to_string(), &off.note);
            if let Some(tries) = tries {
                warnings.push((
                    pass.seq,
                    Warning {
                        loc: pass.loc.clone(),
                        directive: pass.shown(),
                        message: format!(
                            "{} has no effect with `proxy_next_upstream off`; one backend is tried",
                            tries.note
                        ),
                    },
                ));
            }
        }
        (_, Some(tries)) => push("next_upstream_tries", tries.value.to_string(), &tries.note),
        _ => {}
    }
    if let Some(t) = &s.next_upstream_timeout {
        push(
            "next_upstream_timeout",
            toml_str(&warren_duration(t.value)),
            &t.note,
        );
    }
    if let Some(pp) = &s.proxy_protocol {
        if pp.value {
            let note = format!(
                "{}; NGINX sends v1; RabbitMQ needs proxy_protocol = true",
                pp.note
            );
            push("proxy_protocol", toml_str("v1"), &note);
        } else {
            push("proxy_protocol", toml_str("off"), &pp.note);
        }
    }
    keys
}
