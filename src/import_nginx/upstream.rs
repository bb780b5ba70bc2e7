//! `upstream` blocks translated into pools: the balancing method, each `server` line with its
//! weight, `backup`, `down` and passive health parameters, and the active probe each pool gets
//! (NGINX has none; `warren ctl upgrade` waits on one).

use super::*;

impl Translator {
    pub(super) fn upstream(&mut self, d: &Directive) -> Result<(), ImportError> {
        let nginx_name = d.args[0].clone();
        let base = sanitize(&nginx_name);
        if base != nginx_name {
            self.warn(
                d,
                format!(
                    "pool named {base:?}: warren names may contain only letters, digits, '.', \
                     '_' and '-'"
                ),
            );
        }
        let name = unique(&base, &mut self.pool_names);
        let mut balance: Option<Sourced<Balance>> = None;
        let mut comments = Vec::new();
        let mut servers = Vec::new();
        for c in d.block.as_deref().unwrap_or_default() {
            let chosen = match c.name.as_str() {
                "server" => {
                    if let Some(server) = self.upstream_server(c)? {
                        servers.push(server);
                    }
                    continue;
                }
                "least_conn" => {
                    no_args(c)?;
                    Some(Balance::LeastConn)
                }
                "hash" => self.hash(c, &mut comments)?,
                "random" => Some(self.random(c)?),
                _ => {
                    self.unsupported(c);
                    continue;
                }
            };
            if let Some(previous) = &balance {
                self.warn(
                    c,
                    format!(
                        "load balancing method redefined (also {}); the last one wins, as in NGINX",
                        previous.note
                    ),
                );
            }
            if let Some(value) = chosen {
                balance = Some(Sourced {
                    value,
                    note: note(c),
                });
            }
        }
        if servers.is_empty() {
            return Err(invalid(
                d,
                "no servers warren can take are inside the upstream (see the warnings)",
            ));
        }
        let fall = self.passive_health(&name, &servers);
        let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
        let (kind, why) = probe_kind(&name, &addrs);
        let backends = self.backends(&name, servers);
        self.pools.push(OutPool {
            name,
            nginx_name,
            note: note(d),
            balance: balance.unwrap_or(Sourced {
                value: crate::config::DEFAULT_BALANCE,
                note: "NGINX's default".to_string(),
            }),
            comments,
            backends,
            health: OutHealth { kind, why, fall },
            used: false,
            tls: None,
            plain_from: None,
            mixed_warned: false,
        });
        Ok(())
    }

    /// `hash KEY [consistent]`: source_hash when the key is the client address.
    pub(super) fn hash(
        &mut self,
        c: &Directive,
        comments: &mut Vec<String>,
    ) -> Result<Option<Balance>, ImportError> {
        let consistent = match c.args.as_slice() {
            [_] => false,
            [_, flag] if flag == "consistent" => true,
            _ => return Err(invalid(c, "expected `hash KEY [consistent]`")),
        };
        if !matches!(c.args[0].as_str(), "$remote_addr" | "$binary_remote_addr") {
            self.warn(
                c,
                "warren hashes only on the client address (source_hash); this key is not \
                 translated and the pool uses round_robin",
            );
            return Ok(None);
        }
        comments.push(if consistent {
            "source_hash is consistent (rendezvous hashing), like `consistent`: a backend coming \
             or going moves only its own clients. The client → node mapping differs from \
             NGINX's, so clients move once at the switch."
                .to_string()
        } else {
            "source_hash is always consistent (rendezvous hashing): unlike NGINX's plain hash, a \
             backend coming or going moves only its own clients. The client → node mapping \
             differs from NGINX's, so clients move once at the switch."
                .to_string()
        });
        Ok(Some(Balance::SourceHash))
    }

    /// `random [two [METHOD]]` → random_two.
    pub(super) fn random(&mut self, c: &Directive) -> Result<Balance, ImportError> {
        match c.args.as_slice() {
            [] => self.warn(
                c,
                "warren has no plain random; random_two (two random picks, the less loaded \
                 wins) is used",
            ),
            [two] if two == "two" => {}
            [two, method] if two == "two" && method == "least_conn" => {}
            [two, method] if two == "two" => self.warn(
                c,
                format!(
                    "{method:?} is not supported; random_two compares active connections (as \
                     least_conn does)"
                ),
            ),
            _ => return Err(invalid(c, "expected `random [two [least_conn]]`")),
        }
        Ok(Balance::RandomTwo)
    }

    /// `server ADDR [weight=N] [max_fails=N] [fail_timeout=T] [backup] [down] ...`.
    pub(super) fn upstream_server<'d>(
        &mut self,
        d: &'d Directive,
    ) -> Result<Option<UpstreamServer<'d>>, ImportError> {
        if d.block.is_some() || d.args.is_empty() {
            return Err(invalid(d, "expected `server ADDRESS [PARAMETERS];`"));
        }
        let (host, addr) = match target(&d.args[0]).map_err(|m| invalid(d, m))? {
            ServerTarget::Addr { host, addr } => (host, addr),
            ServerTarget::Unsupported(why) => {
                self.warn(d, format!("{why}; this server is left out"));
                return Ok(None);
            }
        };
        let mut server = UpstreamServer {
            directive: d,
            host,
            addr,
            weight: None,
            max_fails: NGINX_MAX_FAILS,
            fail_timeout: NGINX_FAIL_TIMEOUT,
            backup: false,
            down: false,
        };
        for param in &d.args[1..] {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match (key, value.is_empty()) {
                ("weight", false) => match value.parse::<u32>() {
                    Ok(w) if w >= 1 => server.weight = Some(w),
                    _ => return Err(invalid(d, format!("invalid weight {value:?}"))),
                },
                ("max_fails", false) => {
                    server.max_fails = value
                        .parse()
                        .map_err(|_| invalid(d, format!("invalid max_fails {value:?}")))?;
                }
                ("fail_timeout", false) => {
                    server.fail_timeout = nginx_duration(value).map_err(|m| invalid(d, m))?;
                }
                ("backup", true) => server.backup = true,
                ("down", true) => server.down = true,
                ("max_conns", false) => self.warn(
                    d,
                    "max_conns is not supported per backend; the closest is the listener's \
                     max_connections",
                ),
                ("slow_start", false) => self.warn(
                    d,
                    "slow_start is not translated: warren's slow_start is set per pool \
                     (`slow_start = \"30s\"` under [pool.NAME]), not per server",
                ),
                ("resolve", true) => self.warn(
                    d,
                    "resolve is not translated: warren looks host names up again every \
                     `resolve_interval = \"30s\"` set per pool (under [pool.NAME]), not per server",
                ),
                _ => self.warn(
                    d,
                    format!("parameter {param:?} is not supported and was left out"),
                ),
            }
        }
        Ok(Some(server))
    }

    /// max_fails / fail_timeout against warren's rules: without a probe, one failed connect
    /// takes a backend out for 10 s — exactly NGINX's defaults; with the probe the output has,
    /// `fall` consecutive failures (failed connects count) do. The largest other `max_fails`
    /// becomes `fall`, the closest warren has.
    pub(super) fn passive_health(
        &mut self,
        pool: &str,
        servers: &[UpstreamServer<'_>],
    ) -> Option<Sourced<u32>> {
        let mut fall: Option<Sourced<u32>> = None;
        for s in servers {
            if s.max_fails == NGINX_MAX_FAILS && s.fail_timeout == NGINX_FAIL_TIMEOUT {
                continue;
            }
            if s.max_fails == 0 {
                self.warn(
                    s.directive,
                    format!(
                        "max_fails=0 turns NGINX's failure accounting off; warren cannot: without a \
                         probe, one failed connect takes a backend out for {}",
                        warren_duration(NGINX_FAIL_TIMEOUT)
                    ),
                );
                continue;
            }
            if fall.as_ref().map_or(true, |f| s.max_fails > f.value) {
                fall = Some(Sourced {
                    value: s.max_fails,
                    note: format!("max_fails={} of {}", s.max_fails, note(s.directive)),
                });
            }
            self.warn(
                s.directive,
                format!(
                    "max_fails={} fail_timeout={} has no exact equivalent: without a probe warren \
                     takes a backend out for {} after one failed connect; with a probe, `fall` \
                     consecutive failures (failed connects count) take it down until `rise` \
                     probes pass. The [pool.{pool}.health] probe in the output has fall = {}",
                    s.max_fails,
                    warren_duration(s.fail_timeout),
                    warren_duration(NGINX_FAIL_TIMEOUT),
                    fall.as_ref().map_or(s.max_fails, |f| f.value)
                ),
            );
        }
        fall
    }

    pub(super) fn backends(
        &mut self,
        pool: &str,
        servers: Vec<UpstreamServer<'_>>,
    ) -> Vec<OutBackend> {
        let live_primaries = servers.iter().filter(|s| !s.down && !s.backup).count();
        let any_primary = servers.iter().any(|s| !s.backup);
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for s in servers {
            let d = s.directive;
            let mut backup = s.backup;
            if !any_primary && backup {
                self.warn(
                    d,
                    "every server of the upstream is a backup; warren needs a primary, so the \
                     backups are primaries here",
                );
                backup = false;
            }
            let mut commented_out = false;
            if s.down {
                if live_primaries == 0 {
                    self.warn(
                        d,
                        format!(
                            "`down` has no config key in warren, and no other primary server is \
                             left, so it is kept as a backend: drain it after starting warren \
                             (`warren ctl drain NAME --pool {pool}`; with admin.state_file the \
                             drain survives restarts)"
                        ),
                    );
                } else {
                    commented_out = true;
                    self.warn(
                        d,
                        format!(
                            "`down` has no config key in warren: the backend is in the output \
                             commented out; to keep it known but unused, uncomment it and drain \
                             it (`warren ctl drain NAME --pool {pool}`)"
                        ),
                    );
                }
            }
            let base = sanitize(&s.host);
            let name = if names.contains(&base) {
                let port = s.addr.rsplit(':').next().unwrap_or_default();
                unique(&format!("{base}-{port}"), &mut names)
            } else {
                unique(&base, &mut names)
            };
            out.push(OutBackend {
                name,
                addr: s.addr,
                weight: s.weight,
                backup,
                note: note(d),
                commented_out,
            });
        }
        out
    }
}

/// RabbitMQ's plain AMQP port.
const AMQP_PORT: u16 = 5672;

/// RabbitMQ's ports that do not answer plain AMQP, with what listens there: the `amqp` probe
/// would mark every backend on them down, whatever the pool is called.
const NOT_AMQP_PORTS: &[(u16, &str)] = &[
    (5671, "AMQP over TLS, which the amqp probe speaks only with [pool.NAME.tls] (the nodes' CA, unknown here)"),
    (15672, "management API"),
    (15671, "management API over TLS"),
    (15692, "Prometheus metrics"),
    (25672, "Erlang distribution"),
    (4369, "epmd"),
    (5552, "stream protocol"),
    (5551, "stream protocol over TLS"),
    (1883, "MQTT"),
    (8883, "MQTT over TLS"),
    (61613, "STOMP"),
    (61614, "STOMP over TLS"),
];

/// The probe a pool gets, and why: "amqp" (RabbitMQ answers `Connection.Start`, so a node whose
/// app is stopped is down) for AMQP-looking pools — every backend on 5672, or a name with
/// "rabbit" or "amqp" and no backend on a RabbitMQ port known not to be plain AMQP — else "tcp".
pub(super) fn probe_kind(pool: &str, addrs: &[&str]) -> (&'static str, String) {
    let ports: Vec<u16> = addrs
        .iter()
        .filter_map(|a| a.rsplit(':').next()?.parse().ok())
        .collect();
    let other = ports
        .iter()
        .find_map(|p| NOT_AMQP_PORTS.iter().find(|(q, _)| q == p));
    if let Some((port, what)) = other {
        return (
            "tcp",
            format!("a backend is on {port}, RabbitMQ's {what}: an amqp probe would fail there"),
        );
    }
    if !ports.is_empty() && ports.iter().all(|p| *p == AMQP_PORT) {
        return (
            "amqp",
            format!("backends on {AMQP_PORT}, RabbitMQ's AMQP port: up = answers Connection.Start"),
        );
    }
    let lower = pool.to_ascii_lowercase();
    if lower.contains("rabbit") || lower.contains("amqp") {
        return (
            "amqp",
            format!("the name {pool:?} says RabbitMQ: up = answers Connection.Start; \"tcp\" if not AMQP"),
        );
    }
    (
        "tcp",
        format!("not AMQP-looking (no backend on {AMQP_PORT}, no rabbit/amqp in the name): connect only"),
    )
}
