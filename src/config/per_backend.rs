//! `[pool.NAME.per_backend_listeners]`: one listener per backend, each forwarding only to its
//! own node. RabbitMQ Streams clients ask any node where a stream's leader and replicas are,
//! then connect to that node's `stream.advertised_host`/`stream.advertised_port`; behind one
//! balanced port they would land on the wrong node. With these listeners each node advertises
//! warren's name and its own listener's port, so a client's second connection reaches the node
//! it asked for, through warren (drain, health and metrics apply).
//!
//! This file turns the section into ordinary [`ListenerConfig`]s (named `POOL/BACKEND`, after the
//! `[[listener]]`s, their `per_backend` set), checks their ports against every other listener
//! and the admin API, and renders the `rabbitmq.conf` lines each node needs
//! ([`rabbitmq_conf`], printed by `warren check --rabbitmq-config`). It touches no socket: the
//! server binds, reloads and hands these listeners over like any other.

use super::*;

/// What makes a listener a per-backend one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerBackend {
    /// The only backend of the listener's pool it forwards to.
    pub backend: String,
    /// The name clients reach warren by: the node's `stream.advertised_host`.
    pub advertised_host: String,
}

/// A per-backend listener built from the file, with where its port was written.
pub(super) struct Planned {
    listener: ListenerConfig,
    /// The key its port came from (`base_port`, or the backend's `listener_port`).
    key: String,
    span: Range<usize>,
}

/// The `rabbitmq.conf` lines of every node behind a per-backend listener, one block per node
/// (a comment naming it, then `stream.advertised_host` and `stream.advertised_port`); `None`
/// when no pool has `[pool.NAME.per_backend_listeners]`.
pub fn rabbitmq_conf(config: &Config) -> Option<String> {
    let mut out = String::new();
    for listener in &config.listeners {
        let Some(own) = &listener.per_backend else {
            continue;
        };
        let node = config
            .pool(&listener.pool)
            .and_then(|p| p.backends.iter().find(|b| b.name == own.backend));
        let addr = node.map_or_else(String::new, |b| format!(" ({}:{})", b.host, b.port));
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "# node {}{addr}: pool {}, backend {}, through warren's listener {} on {}",
            own.backend, listener.pool, own.backend, listener.name, listener.listen
        );
        let _ = writeln!(out, "stream.advertised_host = {}", own.advertised_host);
        let _ = writeln!(out, "stream.advertised_port = {}", listener.listen.port());
    }
    (!out.is_empty()).then_some(out)
}

/// What a reload from `old` to `new` changes that the nodes must follow: one sentence per
/// per-backend listener whose port moved (a backend inserted before it, say, with `base_port`)
/// or whose advertised host changed. Until its node advertises the new value, stream clients
/// the node sends to the old port reach whatever listens there now (another node's listener,
/// or nothing). Logged at WARN by the reload.
pub fn advertised_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for listener in &new.listeners {
        let Some(own) = &listener.per_backend else {
            continue;
        };
        let Some((before, was)) = old
            .listeners
            .iter()
            .find(|l| l.name == listener.name)
            .and_then(|l| Some((l, l.per_backend.as_ref()?)))
        else {
            continue;
        };
        let port = (before.listen.port(), listener.listen.port());
        let host = (&was.advertised_host, &own.advertised_host);
        if port.0 == port.1 && host.0 == host.1 {
            continue;
        }
        out.push(format!(
            "per-backend listener {} now advertises {}:{} (was {}:{}): set node {}'s \
             stream.advertised_host/stream.advertised_port to match (warren check \
             --rabbitmq-config prints them); until then the stream clients it sends to {}:{} \
             reach whatever listens there now",
            quote(&listener.name),
            host.1,
            port.1,
            host.0,
            port.0,
            quote(&own.backend),
            host.0,
            port.0
        ));
    }
    out
}

impl Validator<'_> {
    /// Every pool's per-backend listeners, in pool then backend order, from the file as written.
    pub(super) fn per_backend_listeners(&mut self, pools: &BTreeMap<Str, RawPool>) -> Vec<Planned> {
        let mut planned = Vec::new();
        for (name, pool) in pools {
            let key = format!("pool.{}", name.get_ref());
            let Some(section) = &pool.per_backend_listeners else {
                self.stray_listener_ports(&key, pool);
                continue;
            };
            planned.extend(self.pool_listeners(&key, name.get_ref(), section, pool));
        }
        planned
    }

    /// `listener_port` without the section is a mistake, not something to ignore.
    fn stray_listener_ports(&mut self, key: &str, pool: &RawPool) {
        for (i, backend) in pool.backend.iter().enumerate() {
            if let Some(port) = &backend.listener_port {
                self.report(
                    format!("{key}.backend[{i}].listener_port"),
                    port.get_ref().to_string(),
                    Some(port.span()),
                    format!("only applies with a [{key}.per_backend_listeners] section"),
                );
            }
        }
    }

    /// One pool's per-backend listeners.
    fn pool_listeners(
        &mut self,
        key: &str,
        pool: &str,
        section: &Spanned<RawPerBackendListeners>,
        raw: &RawPool,
    ) -> Vec<Planned> {
        let section_key = format!("{key}.per_backend_listeners");
        let span = section.span();
        let section = section.get_ref();
        for (i, backend) in raw.backend.iter().enumerate() {
            if let Some(expand) = backend.expand.as_ref().filter(|e| *e.get_ref()) {
                self.report(
                    format!("{key}.backend[{i}].expand"),
                    "true",
                    Some(expand.span()),
                    format!(
                        "cannot be used with [{section_key}]: each node needs a listener port \
                         of its own, which a set of addresses that DNS changes cannot keep; \
                         list the nodes as backends"
                    ),
                );
            }
        }
        let mode = raw.rebalance.as_ref().and_then(|r| r.mode.as_ref());
        if let Some(mode) = mode.filter(|m| m.get_ref() != "off") {
            self.report(
                format!("{key}.rebalance.mode"),
                quote(mode.get_ref()),
                Some(mode.span()),
                format!(
                    "cannot be used with [{section_key}]: a stream client closed to rebalance \
                     reconnects through its node's own listener to the same node, so the \
                     closes would never end; leave rebalance off for this pool"
                ),
            );
        }
        let Some(ip) = self.per_backend_ip(&section_key, section, span.clone()) else {
            return Vec::new();
        };
        let Some(advertised_host) = self.advertised_host(&section_key, section, ip, span.clone())
        else {
            return Vec::new();
        };
        let template = self.listener(&section_key, template(pool, section), None);
        let mut planned = Vec::new();
        for (i, backend) in raw.backend.iter().enumerate() {
            let Some((port, port_key, port_span)) =
                self.backend_port(key, i, backend, section, span.clone())
            else {
                continue;
            };
            let mut listener = template.clone();
            listener.name = format!("{pool}/{}", backend.name.get_ref());
            listener.listen = SocketAddr::new(ip, port);
            listener.per_backend = Some(PerBackend {
                backend: backend.name.get_ref().clone(),
                advertised_host: advertised_host.clone(),
            });
            planned.push(Planned {
                listener,
                key: port_key,
                span: port_span,
            });
        }
        planned
    }

    /// `listen`: the IP every per-backend listener of the pool binds.
    fn per_backend_ip(
        &mut self,
        key: &str,
        section: &RawPerBackendListeners,
        span: Range<usize>,
    ) -> Option<IpAddr> {
        let Some(listen) = &section.listen else {
            self.report(
                format!("{key}.listen"),
                "",
                Some(span),
                "required: the IP address the listeners bind, e.g. listen = \"0.0.0.0\"",
            );
            return None;
        };
        match listen.get_ref().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.report(
                    format!("{key}.listen"),
                    quote(listen.get_ref()),
                    Some(listen.span()),
                    "must be an IP address without a port (each backend's port is base_port + \
                     its position, or its listener_port), e.g. \"0.0.0.0\"",
                );
                None
            }
        }
    }

    /// `advertised_host`: as written, else the listen IP unless that is a wildcard.
    fn advertised_host(
        &mut self,
        key: &str,
        section: &RawPerBackendListeners,
        ip: IpAddr,
        span: Range<usize>,
    ) -> Option<String> {
        match &section.advertised_host {
            Some(host) if host.get_ref().trim().is_empty() || host.get_ref().contains(' ') => {
                self.report(
                    format!("{key}.advertised_host"),
                    quote(host.get_ref()),
                    Some(host.span()),
                    "must be a host name or IP address clients reach warren by",
                );
                None
            }
            Some(host) => Some(host.get_ref().clone()),
            None if ip.is_unspecified() => {
                self.report(
                    format!("{key}.advertised_host"),
                    "",
                    Some(span),
                    format!(
                        "required when listen = {}: the name or address clients reach warren \
                         by, which each node advertises to stream clients",
                        quote(&ip.to_string())
                    ),
                );
                None
            }
            None => Some(ip.to_string()),
        }
    }

    /// Backend `i`'s port: its `listener_port`, else `base_port + i`; with the key and span it
    /// came from.
    fn backend_port(
        &mut self,
        key: &str,
        i: usize,
        backend: &RawBackend,
        section: &RawPerBackendListeners,
        span: Range<usize>,
    ) -> Option<(u16, String, Range<usize>)> {
        let (port, port_key, port_span) = match (&backend.listener_port, &section.base_port) {
            (Some(port), _) => (
                Some(*port.get_ref()),
                format!("{key}.backend[{i}].listener_port"),
                port.span(),
            ),
            (None, Some(base)) => (
                u16::try_from(usize::from(*base.get_ref()) + i).ok(),
                format!("{key}.per_backend_listeners.base_port"),
                base.span(),
            ),
            (None, None) => {
                self.report(
                    format!("{key}.backend[{i}].listener_port"),
                    "",
                    Some(span),
                    format!(
                        "backend {} has no listener port: set base_port in \
                         [{key}.per_backend_listeners] or listener_port on the backend",
                        quote(backend.name.get_ref())
                    ),
                );
                return None;
            }
        };
        match port {
            Some(port) if port > 0 => Some((port, port_key, port_span)),
            _ => {
                self.report(
                    port_key,
                    port.map_or_else(String::new, |p| p.to_string()),
                    Some(port_span),
                    format!(
                        "backend {}'s listener port must be from 1 to 65535 (clients are told it, \
                         so it cannot be chosen by the system)",
                        quote(backend.name.get_ref())
                    ),
                );
                None
            }
        }
    }

    /// Append the planned listeners whose port no other listener (or the admin API) takes.
    pub(super) fn add_per_backend(
        &mut self,
        listeners: &mut Vec<ListenerConfig>,
        planned: Vec<Planned>,
        admin: Option<&AdminConfig>,
    ) {
        for Planned {
            listener,
            key,
            span,
        } in planned
        {
            let taken = listeners
                .iter()
                .find(|l| overlaps(l.listen, listener.listen))
                .map(|l| format!("listener {} on {}", quote(&l.name), l.listen))
                .or_else(|| {
                    admin
                        .filter(|a| overlaps(a.listen, listener.listen))
                        .map(|a| format!("the admin API on {}", a.listen))
                });
            if let Some(other) = taken {
                self.report(
                    key,
                    listener.listen.port().to_string(),
                    Some(span),
                    format!(
                        "the per-backend listener {} on {} takes the address of {other}; give \
                         it a port of its own (base_port, or listener_port on the backend)",
                        quote(&listener.name),
                        listener.listen
                    ),
                );
                continue;
            }
            listeners.push(listener);
        }
    }
}

/// The section's listener settings as a `[[listener]]` of the pool, validated once for all of
/// its backends. A per-backend listener has one backend to try.
fn template(pool: &str, raw: &RawPerBackendListeners) -> RawListener {
    RawListener {
        name: unspanned(pool.to_string()),
        listen: unspanned(String::new()),
        pool: unspanned(pool.to_string()),
        connect_timeout: raw.connect_timeout.clone(),
        idle_timeout: raw.idle_timeout.clone(),
        next_upstream_tries: Some(1),
        next_upstream_timeout: None,
        max_connections: raw.max_connections.clone(),
        proxy_protocol: raw.proxy_protocol.clone(),
        accept_proxy_protocol: raw.accept_proxy_protocol,
        proxy_protocol_from: raw.proxy_protocol_from.clone(),
        proxy_protocol_timeout: raw.proxy_protocol_timeout.clone(),
        tls: None,
        sni_timeout: None,
        sni: None,
    }
}
