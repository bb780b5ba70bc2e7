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
            self.unique_listener_name(&key, i, &raw.name, &mut names);
            let listen = self.listen_addr(&format!("{key}.listen"), &raw.listen);
            if let Some(addr) = listen {
                self.distinct_listen(&key, addr, &raw.listen, &addrs);
                addrs.push((i, addr));
            }
            self.known_pool(&key, &raw.pool, pools);
            let mut raw = raw;
            let sni = self.listener_sni(&key, &mut raw, pools);
            listeners.push(ListenerConfig {
                sni,
                ..self.listener(&key, raw, listen)
            });
        }
        listeners
    }

    /// The settings of one listener; its name, address and pool are checked by the caller.
    fn listener(
        &mut self,
        key: &str,
        raw: RawListener,
        listen: Option<SocketAddr>,
    ) -> ListenerConfig {
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
        let (proxy_protocol_from, proxy_protocol_timeout) = self.proxy_header(key, &raw);
        let tls = raw
            .tls
            .map(|tls| self.listener_tls(&format!("{key}.tls"), tls));
        ListenerConfig {
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
            tls: tls.flatten(),
            sni: None,
        }
    }

    /// `listener[i].name` is a valid name, and no earlier listener has it.
    fn unique_listener_name(
        &mut self,
        key: &str,
        i: usize,
        raw: &Str,
        names: &mut HashMap<String, usize>,
    ) {
        let name = raw.get_ref();
        if !self.name(&format!("{key}.name"), raw, "listener") {
            return;
        }
        if let Some(first) = names.get(name) {
            self.report(
                format!("{key}.name"),
                quote(name),
                Some(raw.span()),
                format!("duplicate listener name (also listener[{first}].name)"),
            );
        } else {
            names.insert(name.clone(), i);
        }
    }

    /// `addr` neither repeats nor overlaps (through a wildcard) an earlier listener's address.
    fn distinct_listen(
        &mut self,
        key: &str,
        addr: SocketAddr,
        raw: &Str,
        earlier: &[(usize, SocketAddr)],
    ) {
        let Some((j, other)) = earlier.iter().find(|(_, a)| overlaps(*a, addr)) else {
            return;
        };
        let message = if *other == addr {
            format!("duplicate listen address (also listener[{j}].listen)")
        } else {
            format!(
                "overlaps listener[{j}].listen = {}: a wildcard address already takes that port",
                quote(&other.to_string())
            )
        };
        self.report(
            format!("{key}.listen"),
            quote(raw.get_ref()),
            Some(raw.span()),
            message,
        );
    }

    /// The listener's pool is one of the config's pools.
    pub(super) fn known_pool(&mut self, key: &str, raw: &Str, pools: &[&str]) {
        let pool = raw.get_ref();
        if pools.contains(&pool.as_str()) {
            return;
        }
        let known: Vec<String> = pools.iter().map(|p| quote(p)).collect();
        let message = if known.is_empty() {
            "no such pool: no [pool.NAME] is defined".to_string()
        } else {
            format!("no such pool; defined pools: {}", known.join(", "))
        };
        self.report(
            format!("{key}.pool"),
            quote(pool),
            Some(raw.span()),
            message,
        );
    }
}
