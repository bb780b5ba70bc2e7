//! Configuration: the TOML file (or the quick-start flags) turned into a validated, immutable
//! [`Config`] snapshot. Parsing happens in two steps, raw serde structs then `validate()`, and
//! every error names the file, the key path, the bad value and, where known, the line.
//! This module is pure apart from reading the file and resolving host names in [`load`]; it must
//! not touch sockets, the runtime or shared state.
//!
//! This file holds the snapshot types, the defaults, the names of enumerated values, the errors
//! and the entry points. The stages have a file each: `raw` (the serde structs), `validate` (the
//! walk and the checks shared by every section), one file per section (`admin`, `listeners`,
//! `pools`, `management`, `hooks`, `fleet`), and `text` (host:port, and parse errors turned into
//! lines and key paths). `[fleet]` is where loading reads one more file (the etcd password file)
//! and asks the system for its host name (the default instance name); it never contacts etcd.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::http_client::{fill_template, without_userinfo, HttpUrl, ProbeUrl, UrlError};
use crate::source::SourceList;

/// A validated configuration: what the rest of warren trusts without re-checking.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (`None` for the quick-start flags).
    pub source: Option<PathBuf>,
    /// `[admin]`; `None` when the section is absent (no admin server).
    pub admin: Option<AdminConfig>,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// `[pool.NAME]`, sorted by name.
    pub pools: Vec<PoolConfig>,
    /// `[[hook]]`, in file order.
    pub hooks: Vec<HookConfig>,
    /// `[fleet]`: instances of warren that share drains through etcd; `None` without the section.
    pub fleet: Option<FleetConfig>,
    /// `[resolver]`: where backend host names are looked up.
    pub resolver: ResolverConfig,
}

/// `[resolver]`: the DNS servers asked for backend host names, at load and every
/// `resolve_interval`; empty (the default): the system resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverConfig {
    /// `IP` or `IP:PORT` as written (port 53 when omitted), in order.
    pub nameservers: Vec<SocketAddr>,
}

/// `[admin]`: the admin API and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    /// Admin connections open at once, from every source together.
    pub max_connections: usize,
    /// Admin connections open at once from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
    /// How long a connection may stay open without sending a complete request head.
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    /// `[admin]` with every key at its default.
    fn default() -> AdminConfig {
        AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN,
            token_file: None,
            state_file: None,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_ADMIN_MAX_CONNECTIONS_PER_SOURCE,
            idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
        }
    }
}

/// `[fleet]`: this instance's place in a fleet of warren instances that share drains through a
/// store (etcd). `Debug` hides the password.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// etcd client URLs, `http://HOST:PORT` or `https://HOST:PORT` (normalized; all one scheme),
    /// at least one, each once; tried in turn.
    /// (`store` is not kept: "etcd" is the only value it may have.)
    pub endpoints: Vec<String>,
    /// Every key warren writes starts with it; starts and ends with `/`.
    pub prefix: String,
    /// This instance's name in the fleet ([A-Za-z0-9._-], 1-64 characters): as written, else
    /// the host name.
    pub instance: String,
    /// Bounds one request to etcd; an admin change waits at most this long before answering 503.
    pub timeout: Duration,
    /// How long this instance's registration outlives it once it falls silent; whole seconds,
    /// longer than `timeout`.
    pub lease_ttl: Duration,
    /// Backends of one pool draining at the same time across the fleet (>= 1).
    pub max_draining: usize,
    /// etcd authentication: set together with `password`.
    pub user: Option<String>,
    /// The content of `password_file`, trimmed, read at load.
    pub password: Option<Secret>,
    /// With `https://` endpoints: `ca_file`, and `cert_file` and `key_file` if given, read and
    /// checked at load (equal when the same files hold the same bytes).
    pub tls: Option<crate::tls::ClientTls>,
}

/// PROXY protocol version sent to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// `[[listener]]`: one listening socket and the pool it forwards to.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub pool: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0 = try every eligible backend.
    pub next_upstream_tries: u32,
    /// `None` = no overall limit ("0s" in the file).
    pub next_upstream_timeout: Option<Duration>,
    pub max_connections: usize,
    pub proxy_protocol: ProxyProtocol,
    pub accept_proxy_protocol: bool,
    /// Sources allowed to send a PROXY header; `None` = any source (the key is absent).
    pub proxy_protocol_from: Option<SourceList>,
    /// How long a client may take to send its PROXY header.
    pub proxy_protocol_timeout: Duration,
    /// `[listener.tls]`: clients speak TLS to warren; `None` for plain TCP.
    pub tls: Option<ListenerTls>,
    /// `[[listener.sni]]`: TLS passed through to the pool the ClientHello's server name routes
    /// to (`pool` when none does); `None` for a listener with one pool.
    pub sni: Option<ListenerSni>,
    /// A listener of `[pool.NAME.per_backend_listeners]`: it forwards only to this backend;
    /// `None` for a `[[listener]]`.
    pub per_backend: Option<PerBackend>,
}

/// Balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    RandomTwo,
    SourceHash,
}

/// What happens to a backend's open connections when probes mark it down (`on_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDown {
    /// They stay open until the client, the backend or a heartbeat ends them.
    Keep,
    /// They are closed at once (HAProxy's `on-marked-down shutdown-sessions`).
    Close,
}

/// When warren moves connections back into balance (`[pool.NAME.rebalance] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RebalanceMode {
    /// Only when asked (`warren ctl rebalance`, `POST /v1/pools/{pool}/rebalance`).
    Off,
    /// After a backend becomes available again (undrained, health back up, added), and when
    /// asked.
    OnReturn,
    /// Whenever a backend is above its fair share by more than the tolerance.
    Continuous,
}

/// `[pool.NAME.rebalance]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebalanceConfig {
    pub mode: RebalanceMode,
    /// How far above its weighted fair share a backend may be (0.1: 10 %) before connections
    /// are moved off it.
    pub tolerance: f64,
    /// The pool's rebalance closes, at most this many per second (> 0).
    pub max_closes_per_second: f64,
    /// A connection younger than this is never closed to rebalance.
    pub min_age: Duration,
}

impl Default for RebalanceConfig {
    /// The defaults of a pool whose backends have no management API: only when asked.
    fn default() -> RebalanceConfig {
        RebalanceConfig {
            mode: RebalanceMode::Off,
            tolerance: DEFAULT_REBALANCE_TOLERANCE,
            max_closes_per_second: DEFAULT_REBALANCE_RATE,
            min_age: DEFAULT_REBALANCE_MIN_AGE,
        }
    }
}

/// `[pool.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub min_available: usize,
    /// How long a backend that becomes available again takes to reach its full share of new
    /// connections; zero: at once.
    pub slow_start: Duration,
    pub on_down: OnDown,
    pub rebalance: RebalanceConfig,
    pub health: Option<HealthConfig>,
    /// How often backends given by host name are looked up again (`None`: only at load).
    pub resolve_interval: Option<Duration>,
    /// In file order (a backend with `expand` in its place, one per address); never empty.
    pub backends: Vec<BackendConfig>,
}

/// `[pool.NAME.health]`: the active probe.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a backend up (>= 1).
    pub rise: u32,
    /// Consecutive failures that bring a backend down (>= 1).
    pub fall: u32,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Tcp,
    Amqp,
    /// Full login with an AMQP client; `uri` may contain `{host}` and `{port}`.
    AmqpLogin {
        uri: Secret,
    },
    /// GET `url` (may contain `{host}` and `{port}`, or be a path on each backend's management
    /// endpoint); 2xx = up. A `user:pass@` in `url` and `user` are exclusive (checked at load).
    /// Without `user`, a path on the management endpoint is sent with the endpoint's credentials.
    Http {
        url: ProbeUrl,
        user: Option<String>,
        password: Option<Secret>,
        password_file: Option<PathBuf>,
    },
}

/// A string that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[[pool.NAME.backend]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    /// Host as written (a name or an IP literal, IPv6 without brackets); used by probe templates.
    pub host: String,
    pub port: u16,
    /// The resolved address connections go to.
    pub addr: SocketAddr,
    /// >= 1.
    pub weight: u32,
    pub backup: bool,
    /// The node's RabbitMQ management API: the backend's own `management`, else the pool's
    /// `[pool.NAME.management]` url filled in for it; `None` when neither is set.
    pub management: Option<ManagementEndpoint>,
    /// Groups an operator drains and undrains together (`warren ctl drain --tag T`), sorted,
    /// without duplicates; each a name like a backend's.
    pub tags: Vec<String>,
    /// The host name its address was looked up from, as written; `None` for an IP literal.
    pub dns_name: Option<String>,
    /// With `expand = true`: the backend's name as written, of which this one (`NAME-N`) is one
    /// address.
    pub expanded_from: Option<String>,
    /// The pool's `[pool.NAME.tls]` for this backend: it speaks TLS (probes; the data path's
    /// re-encryption). `None`: plain TCP.
    pub tls: Option<BackendTls>,
}

/// One backend's RabbitMQ management API, resolved at load: where an `http` probe that is a
/// path goes, and what the drain's quorum check asks. `Debug` hides the password.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagementEndpoint {
    /// `http://HOST:PORT`, maybe with a path prefix; paths are joined to it. Its `user:pass@`
    /// is sent when `user` is not set.
    pub url: HttpUrl,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Re-read at each request, so a rotated password is picked up.
    pub password_file: Option<PathBuf>,
    /// How long the quorum check waits for this node's answer.
    pub timeout: Duration,
}

/// Events a hook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEvent {
    BackendDown,
    BackendUp,
    PoolDegraded,
    PoolDown,
    PoolFailover,
    PoolFailback,
    DrainStarted,
    DrainComplete,
}

/// What a hook runs.
#[derive(Debug, Clone, PartialEq)]
pub enum HookAction {
    /// argv, no shell; never empty.
    Exec(Vec<String>),
    /// POST JSON to this http:// URL (its `user:pass@` is sent as basic authentication).
    Webhook(HttpUrl),
}

/// `[[hook]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HookConfig {
    pub on: Vec<HookEvent>,
    pub action: HookAction,
    pub timeout: Duration,
}

mod admin;
mod fleet;
mod hooks;
mod listener_sni;
mod listener_tls;
mod listeners;
mod management;
mod per_backend;
mod pool_tls;
mod pools;
mod raw;
mod resolve;
mod text;
mod validate;

#[cfg(test)]
mod tests;

pub use fleet::host_name;
pub use listener_sni::{check_server_name, ListenerSni, SniRoute, SniRoutes, DEFAULT_SNI_TIMEOUT};
pub use listener_tls::{ListenerTls, DEFAULT_TLS_HANDSHAKE_TIMEOUT};
use management::*;
pub use per_backend::{advertised_changes, rabbitmq_conf, PerBackend};
use pool_tls::needs_tls_message;
pub use pool_tls::{BackendTls, Encrypt};
use raw::*;
use resolve::Expand;
pub use resolve::{expanded_backend, expanded_name, MIN_RESOLVE_INTERVAL};
use text::*;
use validate::*;

// ---------------------------------------------------------------------------------------------
// Defaults. Public so that `import-nginx`, the README and tests can name them instead of
// repeating the numbers.

/// How long a backend without a probe stays out after a failed connect (NGINX's `fail_timeout`).
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);

/// `listener.connect_timeout` when omitted: nginx's `proxy_connect_timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// `listener.idle_timeout` when omitted: nginx's `proxy_timeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `listener.next_upstream_tries` when omitted: 0 = every eligible backend, as nginx does,
/// but at most [`MAX_AUTOMATIC_TRIES`].
pub const DEFAULT_NEXT_UPSTREAM_TRIES: u32 = 0;
/// Backends tried per connection when `next_upstream_tries` is 0: every one of a RabbitMQ
/// cluster, never thousands (a client of a large pool that refuses everywhere would otherwise
/// try every backend, burning a core for tens of seconds). An explicit value is not capped.
pub const MAX_AUTOMATIC_TRIES: usize = 16;
/// Backends one pool may have: the size warren is tested at (`/metrics`, probes and the admin
/// API stay quick there).
pub const MAX_BACKENDS_PER_POOL: usize = 1000;
/// `listener.max_connections` when omitted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// `listener.proxy_protocol` when omitted.
pub const DEFAULT_PROXY_PROTOCOL: ProxyProtocol = ProxyProtocol::Off;
/// `listener.accept_proxy_protocol` when omitted.
pub const DEFAULT_ACCEPT_PROXY_PROTOCOL: bool = false;
/// `listener.proxy_protocol_timeout` when omitted: a balancer sends its header with the
/// connection's first bytes, so 5 s is generous and a slow-header client is let go early.
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);
/// `admin.max_connections` when omitted: far above scrapers, probes and `warren ctl`, far below
/// any descriptor limit warren runs with.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// `admin.max_connections_per_source` when omitted.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// `admin.idle_timeout` when omitted.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// `pool.balance` when omitted: nginx's default.
pub const DEFAULT_BALANCE: Balance = Balance::RoundRobin;
/// `pool.min_available` when omitted.
pub const DEFAULT_MIN_AVAILABLE: usize = 1;
/// `pool.slow_start` when omitted: off.
pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;
/// Longest `pool.slow_start`.
pub const MAX_SLOW_START: Duration = Duration::from_secs(60 * 60);
/// `pool.on_down` when omitted: connections ride it out, as before the key existed.
pub const DEFAULT_ON_DOWN: OnDown = OnDown::Keep;
/// `rebalance.tolerance` when omitted: a backend 10 % above its fair share is left alone, so
/// the ordinary churn of clients does not set off closes.
pub const DEFAULT_REBALANCE_TOLERANCE: f64 = 0.1;
/// Largest `rebalance.tolerance`.
pub const MAX_REBALANCE_TOLERANCE: f64 = 10.0;
/// `rebalance.max_closes_per_second` when omitted. A moved client reconnects, reopens its
/// channels and declares its queues, bindings and consumers again, which goes through the
/// cluster's metadata store; five a second moves a few hundred clients in a minute or two
/// while keeping that load small.
pub const DEFAULT_REBALANCE_RATE: f64 = 5.0;
/// Smallest `rebalance.max_closes_per_second`: one close every 100 s.
pub const MIN_REBALANCE_RATE: f64 = 0.01;
/// Largest `rebalance.max_closes_per_second`.
pub const MAX_REBALANCE_RATE: f64 = 1000.0;
/// `rebalance.min_age` when omitted: a client that has just connected (one moved a moment
/// ago, or back from its own failure) is not moved again before it settles.
pub const DEFAULT_REBALANCE_MIN_AGE: Duration = Duration::from_secs(30);
/// `health.interval` when omitted.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// `health.timeout` when omitted.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `health.rise` when omitted.
pub const DEFAULT_RISE: u32 = 2;
/// `health.fall` when omitted.
pub const DEFAULT_FALL: u32 = 3;
/// `backend.weight` when omitted.
pub const DEFAULT_WEIGHT: u32 = 1;
/// `backend.backup` when omitted.
pub const DEFAULT_BACKUP: bool = false;
/// `management.timeout` when omitted: the shortest the quorum check waits when asked through
/// the `http` probe.
pub const DEFAULT_MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest `management.timeout`: a drain waits for the quorum check inside one admin request,
/// which `warren ctl` gives 10 s.
pub const MAX_MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// `hook.timeout` when omitted.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The only `fleet.store` warren speaks.
pub const FLEET_STORE: &str = "etcd";
/// `fleet.prefix` when omitted.
pub const DEFAULT_FLEET_PREFIX: &str = "/warren/";
/// `fleet.timeout` when omitted: a healthy etcd answers in milliseconds, and an admin change
/// waits at most this long before answering 503.
pub const DEFAULT_FLEET_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest `fleet.timeout`: `warren ctl` gives an admin request 10 s, and a drain may need a
/// few etcd requests.
pub const MAX_FLEET_TIMEOUT: Duration = Duration::from_secs(30);
/// `fleet.lease_ttl` when omitted: a killed instance leaves the fleet within 10 s.
pub const DEFAULT_FLEET_LEASE_TTL: Duration = Duration::from_secs(10);
/// Shortest `fleet.lease_ttl`: renewals come every third of it, and must not flood etcd.
pub const MIN_FLEET_LEASE_TTL: Duration = Duration::from_secs(2);
/// Longest `fleet.lease_ttl`.
pub const MAX_FLEET_LEASE_TTL: Duration = Duration::from_secs(5 * 60);
/// `fleet.max_draining` when omitted: one backend of a pool at a time, fleet-wide.
pub const DEFAULT_FLEET_MAX_DRAINING: usize = 1;
/// Longest `fleet.instance`.
pub const MAX_INSTANCE_NAME: usize = 64;
/// `admin.listen` when `[admin]` is present without it: loopback, so no token is required.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));

/// Longest `listener.connect_timeout`: one connect attempt.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Longest `listener.idle_timeout`.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Longest `listener.next_upstream_timeout`.
pub const MAX_NEXT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest `health.interval` and `health.timeout`.
pub const MAX_PROBE_DURATION: Duration = Duration::from_secs(60 * 60);
/// Longest `hook.timeout`.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest value of any other duration key: keeps every deadline warren computes from a
/// configured duration (`now + d`) far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// The longest value a duration key accepts, by the key's last part (and `hook[` prefix).
/// Loading refuses longer values, so no arithmetic on a configured duration can overflow.
pub fn max_duration(key: &str) -> Duration {
    let last = key.rsplit('.').next().unwrap_or(key);
    match last {
        "connect_timeout" => MAX_CONNECT_TIMEOUT,
        "idle_timeout" => MAX_IDLE_TIMEOUT,
        "next_upstream_timeout" => MAX_NEXT_UPSTREAM_TIMEOUT,
        "slow_start" => MAX_SLOW_START,
        "timeout" if key.starts_with("hook[") => MAX_HOOK_TIMEOUT,
        "timeout" if key.ends_with(".management.timeout") => MAX_MANAGEMENT_TIMEOUT,
        "timeout" if key == "fleet.timeout" => MAX_FLEET_TIMEOUT,
        "lease_ttl" => MAX_FLEET_LEASE_TTL,
        "interval" | "timeout" => MAX_PROBE_DURATION,
        _ => MAX_DURATION,
    }
}

/// The largest config file `load` reads; a larger one (or `/dev/zero`) is refused unread.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// What error messages call the quick-start flags, which have no file.
pub const QUICK_START_SOURCE: &str = "command line";

// ---------------------------------------------------------------------------------------------
// Names of the enumerated values, as written in the file.

/// A closed set of values written as lower-case names in the file.
trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

impl Named for ProxyProtocol {
    const ALL: &'static [Self] = &[ProxyProtocol::Off, ProxyProtocol::V1, ProxyProtocol::V2];
    fn as_str(self) -> &'static str {
        ProxyProtocol::as_str(self)
    }
}

impl ProxyProtocol {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl Named for Balance {
    const ALL: &'static [Self] = &[
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::RandomTwo,
        Balance::SourceHash,
    ];
    fn as_str(self) -> &'static str {
        Balance::as_str(self)
    }
}

impl Balance {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::SourceHash => "source_hash",
        }
    }
}

impl Named for RebalanceMode {
    const ALL: &'static [Self] = &[
        RebalanceMode::Off,
        RebalanceMode::OnReturn,
        RebalanceMode::Continuous,
    ];
    fn as_str(self) -> &'static str {
        RebalanceMode::as_str(self)
    }
}

impl RebalanceMode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            RebalanceMode::Off => "off",
            RebalanceMode::OnReturn => "on_return",
            RebalanceMode::Continuous => "continuous",
        }
    }
}

impl Named for OnDown {
    const ALL: &'static [Self] = &[OnDown::Keep, OnDown::Close];
    fn as_str(self) -> &'static str {
        OnDown::as_str(self)
    }
}

impl OnDown {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDown::Keep => "keep",
            OnDown::Close => "close",
        }
    }
}

impl Named for HookEvent {
    const ALL: &'static [Self] = &HookEvent::ALL;
    fn as_str(self) -> &'static str {
        HookEvent::as_str(self)
    }
}

impl HookEvent {
    /// Every event, in the order DESIGN.md lists them.
    pub const ALL: [HookEvent; 8] = [
        HookEvent::BackendDown,
        HookEvent::BackendUp,
        HookEvent::PoolDegraded,
        HookEvent::PoolDown,
        HookEvent::PoolFailover,
        HookEvent::PoolFailback,
        HookEvent::DrainStarted,
        HookEvent::DrainComplete,
    ];

    /// The name used in the config file, `WARREN_EVENT` and the `event` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::BackendDown => "backend_down",
            HookEvent::BackendUp => "backend_up",
            HookEvent::PoolDegraded => "pool_degraded",
            HookEvent::PoolDown => "pool_down",
            HookEvent::PoolFailover => "pool_failover",
            HookEvent::PoolFailback => "pool_failback",
            HookEvent::DrainStarted => "drain_started",
            HookEvent::DrainComplete => "drain_complete",
        }
    }
}

fn lookup<T: Named>(name: &str) -> Option<T> {
    T::ALL.iter().copied().find(|v| v.as_str() == name)
}

fn names_of<T: Named>() -> String {
    let names: Vec<&str> = T::ALL.iter().map(|v| v.as_str()).collect();
    names.join(", ")
}

// ---------------------------------------------------------------------------------------------
// Snapshot helpers.

impl Config {
    /// One-line summary for `warren check`, e.g. `"warren.toml: ok: 1 listener, 1 pool, 2
    /// backends, 0 hooks"`, ending with `, fleet etcd (3 endpoints) as instance a` with `[fleet]`
    /// (`(3 endpoints, TLS)`, or `, TLS with a client certificate)`, with https endpoints).
    pub fn summary(&self) -> String {
        let source = match &self.source {
            Some(path) => path.display().to_string(),
            None => QUICK_START_SOURCE.to_string(),
        };
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let mut summary = format!(
            "{source}: ok: {}, {}, {}, {}",
            count(self.listeners.len(), "listener"),
            count(self.pools.len(), "pool"),
            count(backends, "backend"),
            count(self.hooks.len(), "hook"),
        );
        if let Some(fleet) = &self.fleet {
            let tls = match &fleet.tls {
                Some(tls) if tls.has_identity() => ", TLS with a client certificate",
                Some(_) => ", TLS",
                None => "",
            };
            let _ = write!(
                summary,
                ", fleet {FLEET_STORE} ({}{tls}) as instance {}",
                count(fleet.endpoints.len(), "endpoint"),
                fleet.instance
            );
        }
        summary
    }

    /// Settings that load but that an operator should hear about: each a sentence naming the
    /// key. Logged at start and at each reload, printed by `warren check`.
    pub fn warnings(&self) -> Vec<String> {
        self.listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| l.accept_proxy_protocol && l.proxy_protocol_from.is_none())
            .map(|(i, l)| {
                format!(
                    "listener[{i}] ({}): accept_proxy_protocol = true without \
                     proxy_protocol_from: a PROXY header from any source is believed, so any \
                     client that reaches {} can choose the address RabbitMQ sees; list the \
                     balancers in proxy_protocol_from",
                    l.name, l.listen
                )
            })
            .collect()
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

impl ListenerConfig {
    /// A listener with every optional key at its default.
    pub fn default_for(name: &str, listen: SocketAddr, pool: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.to_string(),
            listen,
            pool: pool.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            next_upstream_tries: DEFAULT_NEXT_UPSTREAM_TRIES,
            next_upstream_timeout: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            proxy_protocol: DEFAULT_PROXY_PROTOCOL,
            accept_proxy_protocol: DEFAULT_ACCEPT_PROXY_PROTOCOL,
            proxy_protocol_from: None,
            proxy_protocol_timeout: DEFAULT_PROXY_PROTOCOL_TIMEOUT,
            tls: None,
            sni: None,
            per_backend: None,
        }
    }

    /// Every pool the listener forwards to: its `pool`, then its SNI routes' pools.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        let routes = self.sni.iter().flat_map(|s| s.routes.list.iter());
        std::iter::once(self.pool.as_str()).chain(routes.map(|r| &*r.pool))
    }
}

impl PoolConfig {
    /// Backends with `backup = false`: the ones `min_available` and `pool_degraded` count.
    pub fn primary_count(&self) -> usize {
        self.backends.iter().filter(|b| !b.backup).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why a config could not be loaded. `Display` is meant for the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`] (or endless, like `/dev/zero`).
    #[error("{}: too large: a config file may have at most {max} bytes", .file.display())]
    TooLarge { file: PathBuf, max: u64 },
    /// The file is not UTF-8 (TOML must be).
    #[error("{}:{line}:{column}: is not valid UTF-8 (byte offset {offset})", .file.display())]
    NotUtf8 {
        file: PathBuf,
        offset: usize,
        line: usize,
        column: usize,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{}", render_parse(.file, *.line, *.column, .key.as_deref(), .message, .source_line))]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Best-effort key path, e.g. `pool.rabbitmq.backend[1].weigth`.
        key: Option<String>,
        message: String,
        /// The offending line as written, trimmed, so the bad value shows without opening the file.
        source_line: String,
    },
    /// The file parsed but its values do not make a working config; every problem found.
    #[error("{}", render_problems(.file, .problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One validation problem: which key, what value, where, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `listener[1].listen` or `pool.rabbitmq.backend[0].addr`.
    pub key: String,
    /// The offending value as written (strings quoted, secrets masked); empty for a missing key.
    pub value: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Problem {
    /// `FILE:LINE: KEY = VALUE: MESSAGE`, leaving out `:LINE` and `= VALUE` when unknown.
    pub fn render(&self, file: &Path) -> String {
        let mut out = file.display().to_string();
        if let Some(line) = self.line {
            let _ = write!(out, ":{line}");
        }
        let _ = write!(out, ": {}", self.key);
        if !self.value.is_empty() {
            let _ = write!(out, " = {}", self.value);
        }
        let _ = write!(out, ": {}", self.message);
        out
    }
}

impl ConfigError {
    /// One line per problem, for `warren check` to print.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { file, problems } => {
                problems.iter().map(|p| p.render(file)).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

fn render_parse(
    file: &Path,
    line: usize,
    column: usize,
    key: Option<&str>,
    message: &str,
    source_line: &str,
) -> String {
    let mut out = format!("{}:{line}:{column}: ", file.display());
    if let Some(key) = key {
        let _ = write!(out, "{key}: ");
    }
    out.push_str(message);
    if !source_line.is_empty() {
        let _ = write!(out, " in `{source_line}`");
    }
    out
}

fn render_problems(file: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.render(file)).collect();
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

/// Read, parse, validate and resolve a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = read_bounded(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let (line, column) = line_col(e.as_bytes(), offset);
        ConfigError::NotUtf8 {
            file: path.to_path_buf(),
            offset,
            line,
            column,
        }
    })?;
    from_toml(&text, path)
}

/// Read at most [`MAX_CONFIG_BYTES`]: a larger file (or an endless one such as `/dev/zero`) is
/// an error, never a read until memory runs out.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let read_error = |source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            file: path.to_path_buf(),
            max: MAX_CONFIG_BYTES,
        });
    }
    Ok(bytes)
}

/// Parse + validate from a string; `file` is only used in error messages. Resolves host names.
pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let nameservers = resolve::nameservers_in(text);
    if nameservers.is_empty() {
        return parse_with(text, file, &resolve_system);
    }
    parse_with(text, file, &|host: &str, port: u16| {
        crate::dns::lookup_blocking(&nameservers, host, port)
    })
}

/// [`from_toml`] without DNS: a backend or probe host that is not an IP literal is reported as a
/// problem instead of resolved. Same parser and validation, so it is what the fuzz targets and
/// their corpus replay run (deterministic, no network).
pub fn from_toml_offline(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with(text, file, &|host: &str, port: u16| {
        host.parse::<IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, port)])
            .map_err(|_| format!("{host} is not an IP address (offline parse, nothing resolved)"))
    })
}

/// The no-file quick start: listener "default" on `listen` → pool "default" with `backends`.
///
/// Backends are named `backend-1`, `backend-2`, … in order; everything else is at its default
/// and there is no active health check. Problems name the flags (`--listen`, `--backend`).
pub fn quick_start(
    listen: &str,
    backends: &[String],
    admin: Option<&str>,
) -> Result<Config, ConfigError> {
    quick_start_with(listen, backends, admin, &resolve_system)
}

/// Parse "5s", "2m", "1h30m", "250ms", "0s"; the error says what format is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "not a duration ({e}); expected a number with a unit, like \"5s\", \"2m\", \"1h30m\" or \"250ms\""
        )
    })
}

/// Turns a backend host name into its addresses (never none). Validation takes it as a
/// parameter so that tests run without DNS.
type Resolve<'r> = &'r dyn Fn(&str, u16) -> Result<Vec<SocketAddr>, String>;

fn resolve_system(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    if addrs.is_empty() {
        return Err("the name has no addresses".to_string());
    }
    Ok(addrs)
}

fn parse_with(text: &str, file: &Path, resolve: Resolve<'_>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(file, text, &e))?;
    let mut config =
        validate(raw, Some(text), resolve).map_err(|problems| ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        })?;
    config.source = Some(file.to_path_buf());
    Ok(config)
}

fn quick_start_with(
    listen: &str,
    backends: &[String],
    admin: Option<&str>,
    resolve: Resolve<'_>,
) -> Result<Config, ConfigError> {
    const NAME: &str = "default";
    let backend = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| RawBackend {
            name: unspanned(format!("backend-{}", i + 1)),
            addr: unspanned(addr.clone()),
            weight: None,
            backup: None,
            management: None,
            tags: None,
            expand: None,
            listener_port: None,
        })
        .collect();
    let pool = RawPool {
        balance: None,
        min_available: None,
        slow_start: None,
        on_down: None,
        rebalance: None,
        health: None,
        management: None,
        resolve_interval: None,
        tls: None,
        per_backend_listeners: None,
        backend,
    };
    // `--admin`: the admin API (drain, status, metrics) with the defaults of an `[admin]` table.
    let admin = admin.map(|listen| RawAdmin {
        listen: Some(unspanned(listen.to_string())),
        token_file: None,
        state_file: None,
        max_connections: None,
        max_connections_per_source: None,
        idle_timeout: None,
    });
    let raw = RawConfig {
        admin,
        listener: vec![RawListener {
            name: unspanned(NAME.to_string()),
            listen: unspanned(listen.to_string()),
            pool: unspanned(NAME.to_string()),
            connect_timeout: None,
            idle_timeout: None,
            next_upstream_tries: None,
            next_upstream_timeout: None,
            max_connections: None,
            proxy_protocol: None,
            accept_proxy_protocol: None,
            proxy_protocol_from: None,
            proxy_protocol_timeout: None,
            tls: None,
            sni_timeout: None,
            sni: None,
        }],
        pool: BTreeMap::from([(unspanned(NAME.to_string()), pool)]),
        hook: Vec::new(),
        fleet: None,
        resolver: None,
    };
    validate(raw, None, resolve).map_err(|problems| ConfigError::Invalid {
        file: PathBuf::from(QUICK_START_SOURCE),
        problems: problems.into_iter().map(flag_problem).collect(),
    })
}

/// Quick-start values come from flags, so problems name the flag instead of a file key.
fn flag_problem(mut problem: Problem) -> Problem {
    if problem.key.starts_with("listener[0].listen") {
        problem.key = "--listen".to_string();
    } else if problem.key.starts_with("admin.listen") {
        problem.key = "--admin".to_string();
    } else if problem.key.starts_with("pool.default.backend") {
        problem.key = "--backend".to_string();
    }
    problem
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}
