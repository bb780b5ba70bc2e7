//! The file as written: serde structs that mirror the TOML. Fields that validation checks are
//! `Spanned`, so a problem can name its line.

use super::*;

pub(super) type Str = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    #[serde(default)]
    pub(super) pool: BTreeMap<Str, RawPool>,
    #[serde(default)]
    pub(super) hook: Vec<RawHook>,
    pub(super) fleet: Option<Spanned<RawFleet>>,
    pub(super) resolver: Option<RawResolver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    pub(super) nameservers: Option<Vec<Str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Str>,
    pub(super) token_file: Option<Str>,
    pub(super) state_file: Option<Str>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) max_connections_per_source: Option<Spanned<usize>>,
    pub(super) idle_timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Str,
    pub(super) listen: Str,
    pub(super) pool: Str,
    pub(super) connect_timeout: Option<Str>,
    pub(super) idle_timeout: Option<Str>,
    pub(super) next_upstream_tries: Option<u32>,
    pub(super) next_upstream_timeout: Option<Str>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) proxy_protocol: Option<Str>,
    pub(super) accept_proxy_protocol: Option<bool>,
    pub(super) proxy_protocol_from: Option<Spanned<Vec<Str>>>,
    pub(super) proxy_protocol_timeout: Option<Str>,
    pub(super) tls: Option<Spanned<RawListenerTls>>,
    pub(super) sni_timeout: Option<Str>,
    pub(super) sni: Option<Spanned<Vec<RawSniRoute>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSniRoute {
    pub(super) server_name: Str,
    pub(super) pool: Str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenerTls {
    pub(super) cert: Option<Str>,
    pub(super) key: Option<Str>,
    pub(super) client_ca: Option<Str>,
    pub(super) min_version: Option<Str>,
    pub(super) ciphers: Option<Spanned<Vec<Str>>>,
    pub(super) handshake_timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) balance: Option<Str>,
    pub(super) min_available: Option<Spanned<usize>>,
    pub(super) slow_start: Option<Str>,
    pub(super) on_down: Option<Str>,
    pub(super) rebalance: Option<RawRebalance>,
    pub(super) health: Option<RawHealth>,
    pub(super) management: Option<Spanned<RawManagement>>,
    pub(super) resolve_interval: Option<Str>,
    pub(super) tls: Option<Spanned<RawPoolTls>>,
    pub(super) per_backend_listeners: Option<Spanned<RawPerBackendListeners>>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRebalance {
    pub(super) mode: Option<Str>,
    pub(super) tolerance: Option<Spanned<f64>>,
    pub(super) max_closes_per_second: Option<Spanned<f64>>,
    pub(super) min_age: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManagement {
    pub(super) url: Option<Str>,
    pub(super) user: Option<Str>,
    pub(super) password: Option<Str>,
    pub(super) password_file: Option<Str>,
    pub(super) timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Str,
    pub(super) interval: Option<Str>,
    pub(super) timeout: Option<Str>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) uri: Option<Str>,
    pub(super) url: Option<Str>,
    pub(super) user: Option<Str>,
    pub(super) password: Option<Str>,
    pub(super) password_file: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: Str,
    pub(super) addr: Str,
    pub(super) weight: Option<Spanned<u32>>,
    pub(super) backup: Option<bool>,
    pub(super) management: Option<Str>,
    pub(super) tags: Option<Vec<Str>>,
    pub(super) expand: Option<Spanned<bool>>,
    pub(super) listener_port: Option<Spanned<u16>>,
}

/// `[pool.NAME.per_backend_listeners]`: one listener per backend (RabbitMQ Streams).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPerBackendListeners {
    pub(super) listen: Option<Str>,
    pub(super) base_port: Option<Spanned<u16>>,
    pub(super) advertised_host: Option<Str>,
    pub(super) connect_timeout: Option<Str>,
    pub(super) idle_timeout: Option<Str>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) proxy_protocol: Option<Str>,
    pub(super) accept_proxy_protocol: Option<bool>,
    pub(super) proxy_protocol_from: Option<Spanned<Vec<Str>>>,
    pub(super) proxy_protocol_timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) on: Spanned<Vec<Str>>,
    pub(super) exec: Option<Spanned<Vec<String>>>,
    pub(super) webhook: Option<Str>,
    pub(super) timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) store: Option<Str>,
    pub(super) endpoints: Option<Spanned<Vec<Str>>>,
    pub(super) prefix: Option<Str>,
    pub(super) instance: Option<Str>,
    pub(super) timeout: Option<Str>,
    pub(super) lease_ttl: Option<Str>,
    pub(super) max_draining: Option<Spanned<usize>>,
    pub(super) user: Option<Str>,
    pub(super) password_file: Option<Str>,
    pub(super) ca_file: Option<Str>,
    pub(super) cert_file: Option<Str>,
    pub(super) key_file: Option<Str>,
}

/// `[pool.NAME.tls]`: the backends speak TLS.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPoolTls {
    pub(super) ca: Option<Str>,
    pub(super) server_name: Option<Str>,
    pub(super) cert: Option<Str>,
    pub(super) key: Option<Str>,
    pub(super) encrypt: Option<Str>,
}
