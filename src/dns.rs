//! Host names to addresses: the system resolver (`getaddrinfo` through tokio), or the DNS
//! servers of `[resolver] nameservers` asked directly. It owns those lookups and nothing else:
//! no config, no routing state, no timers beyond one lookup's timeout. A leaf: it names no other
//! module of warren.
//!
//! The nameservers are asked through `hickory-resolver`, a maintained DNS client (already in the
//! tree through lapin) that speaks to any server over tokio; the system resolver cannot be
//! pointed at one, and a hand-written DNS client is a protocol we would have to keep right.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// How long one lookup may take, whichever resolver answers it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names are looked up.
#[derive(Clone)]
pub enum Lookup {
    /// The system resolver (`/etc/hosts`, `/etc/resolv.conf`, nsswitch).
    System,
    /// These DNS servers, asked for A and AAAA records, without a cache: each lookup asks.
    Nameservers(Box<TokioResolver>),
}

impl Lookup {
    /// The system resolver when `nameservers` is empty, else a client of those servers. Call it
    /// inside a tokio runtime (the client's connections run on it).
    pub fn new(nameservers: &[SocketAddr]) -> Lookup {
        if nameservers.is_empty() {
            return Lookup::System;
        }
        let servers = nameservers
            .iter()
            .map(|ns| {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut options = ResolverOpts::default();
        // warren asks again every `resolve_interval`: each lookup should reach the server.
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build();
        match resolver {
            Ok(resolver) => Lookup::Nameservers(Box::new(resolver)),
            // Only an invalid option set fails here; the system resolver still answers.
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the [resolver] nameservers; using the system resolver");
                Lookup::System
            }
        }
    }

    /// Every address of `host`, in the order the resolver gave them, each with `port`; an
    /// error when there are none, or after [`LOOKUP_TIMEOUT`].
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let asked = async {
            match self {
                Lookup::System => tokio::net::lookup_host((host, port))
                    .await
                    .map(|addrs| addrs.collect::<Vec<_>>())
                    .map_err(|e| e.to_string()),
                Lookup::Nameservers(resolver) => resolver
                    .lookup_ip(host)
                    .await
                    .map(|ips| ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
                    .map_err(|e| e.to_string()),
            }
        };
        let addrs = tokio::time::timeout(LOOKUP_TIMEOUT, asked)
            .await
            .map_err(|_| format!("no answer in {}s", LOOKUP_TIMEOUT.as_secs()))??;
        if addrs.is_empty() {
            return Err("the name has no addresses".to_string());
        }
        Ok(addrs)
    }
}

/// [`Lookup::lookup`] of `nameservers` from blocking code (loading the config): on a thread of
/// its own with a small runtime, so it works whether or not the caller is inside one.
pub fn lookup_blocking(
    nameservers: &[SocketAddr],
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, String> {
    let (nameservers, host) = (nameservers.to_vec(), host.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a resolver runtime: {e}"))?;
        runtime.block_on(async { Lookup::new(&nameservers).lookup(&host, port).await })
    })
    .join()
    .unwrap_or_else(|_| Err("the resolver thread panicked".to_string()))
}
