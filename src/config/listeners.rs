//! Validation of `[[listener]]`: addresses, the pool each one serves, timeouts and failover,
//! and the PROXY protocol settings.

use super::*;

impl Validator<'_> {
    /// `listener.proxy_protocol_from` and `listener.proxy_protocol_timeout`.
    pub(super) fn proxy_header(
        &mut self,
        key: &str,
        raw: &RawListener,
    ) -> (Option<SourceList>, Duration) {
        let timeout = self.positive_duration(
            &format!("{key}.proxy_protocol_timeout"),
            raw.proxy_protocol_timeout.as_ref(),
            DEFAULT_PROXY_PROTOCOL_TIMEOUT,
        );
        let Some(from) = &raw.proxy_protocol_from else {
            return (None, timeout);
        };
        let from_key = format!("{key}.proxy_protocol_from");
        if raw.accept_proxy_protocol != Some(true) {
            self.report(
                &from_key,
                "",
                Some(from.span()),
                "only applies with accept_proxy_protocol = true: set it, or remove this key",
            );
        }
        if from.get_ref().is_empty() {
            self.report(
                &from_key,
                "[]",
                Some(from.span()),
                "an empty list would refuse every connection: name the balancers' networks, \
                 or remove the key to accept a header from any source",
            );
        }
        let mut networks = Vec::new();
        for (j, entry) in from.get_ref().iter().enumerate() {
            match crate::source::parse_network(entry.get_ref()) {
                Ok(net) => networks.push(net),
                Err(e) => self.report(
                    format!("{from_key}[{j}]"),
                    quote(entry.get_ref()),
                    Some(entry.span()),
                    e.to_string(),
                ),
            }
        }
        (Some(SourceList::new(networks)), timeout)
    }

    pub(super) fn listeners(
        &mut self,
        raw: Vec<RawListener>,
        pools: &[&str],
    ) -> Vec<ListenerConfig> {
        if raw.is_empty() {
            self.report(
                "listener",
                "",
                None,
                "no [[listener]] is defined; warren needs at least one to accept connections",
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addrs: Vec<(usize, SocketAddr)> = Vec::new();
        let mut listeners = Vec::with_capacity(raw.len());
        for (i, raw) in raw.into_iter().enumerate() {
            let key = format!("listener[{i}]");
            let name = raw.name.get_ref();
            if self.name(&format!("{key}.name"), &raw.name, "listener") {
                if let Some(first) = names.get(name) {
                    self.report(
                        format!("{key}.name"),
                        quote(name),
                        Some(raw.name.span()),
                        format!("duplicate listener name (also listener[{first}].name)"),
                    );
                } else {
                    names.insert(name.clone(), i);
                }
            }
            let listen = self.listen_addr(&format!("{key}.listen"), &raw.listen);
            if let Some(addr) = listen {
                if let Some((j, other)) = addrs.iter().find(|(_, a)| overlaps(*a, addr)) {
                    let message = if *other == addr {
                        format!("duplicate listen address (also listener[{j}].listen)")
                    } else {
                        format!(
                            "overlaps listener[{j}].listen = {}: a wildcard address already \
                             takes that port",
                            quote(&other.to_string())
                        )
                    };
                    self.report(
                        format!("{key}.listen"),
                        quote(raw.listen.get_ref()),
                        Some(raw.listen.span()),
                        message,
                    );
                }
                addrs.push((i, addr));
            }
            let pool = raw.pool.get_ref();
            if !pools.contains(&pool.as_str()) {
                let known: Vec<String> = pools.iter().map(|p| quote(p)).collect();
                let message = if known.is_empty() {
                    "no such pool: no [pool.NAME] is defined".to_string()
                } else {
                    format!("no such pool; defined pools: {}", known.join(", "))
                };
                self.report(
                    format!("{key}.pool"),
                    quote(pool),
                    Some(raw.pool.span()),
                    message,
                );
            }
            let connect_timeout = self.positive_duration(
                &format!("{key}.connect_timeout"),
                raw.connect_timeout.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
            );
            let idle_timeout = self.positive_duration(
                &format!("{key}.idle_timeout"),
                raw.idle_timeout.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
            );
            let next_upstream_timeout = self.duration(
                &format!("{key}.next_upstream_timeout"),
                raw.next_upstream_timeout.as_ref(),
                Duration::ZERO,
            );
            let max_connections = match &raw.max_connections {
                Some(max) if *max.get_ref() == 0 => {
                    self.report(
                        format!("{key}.max_connections"),
                        "0",
                        Some(max.span()),
                        "must be at least 1: 0 would refuse every connection",
                    );
                    DEFAULT_MAX_CONNECTIONS
                }
                Some(max) => *max.get_ref(),
                None => DEFAULT_MAX_CONNECTIONS,
            };
            let proxy_protocol = self.choice(
                &format!("{key}.proxy_protocol"),
                raw.proxy_protocol.as_ref(),
                DEFAULT_PROXY_PROTOCOL,
            );
            let (proxy_protocol_from, proxy_protocol_timeout) = self.proxy_header(&key, &raw);
            listeners.push(ListenerConfig {
                name: raw.name.into_inner(),
                listen: listen.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
                pool: raw.pool.into_inner(),
                connect_timeout,
                idle_timeout,
                next_upstream_tries: raw
                    .next_upstream_tries
                    .unwrap_or(DEFAULT_NEXT_UPSTREAM_TRIES),
                next_upstream_timeout: Some(next_upstream_timeout).filter(|d| !d.is_zero()),
                max_connections,
                proxy_protocol,
                accept_proxy_protocol: raw
                    .accept_proxy_protocol
                    .unwrap_or(DEFAULT_ACCEPT_PROXY_PROTOCOL),
                proxy_protocol_from,
                proxy_protocol_timeout,
            });
        }
        listeners
    }
}
