//! Configuration: the TOML file (or the quick-start flags) turned into a validated, immutable
//! [`Config`] snapshot. Parsing happens in two steps, raw serde structs then `validate()`, and
//! every error names the file, the key path, the bad value and, where known, the line.
//! This module is pure apart from reading the file and resolving host names in [`load`]; it must
//! not touch sockets, the runtime or shared state.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::http_client::{without_userinfo, HttpUrl, ProbeUrl, UrlError};
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
}

/// Balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    RandomTwo,
    SourceHash,
}

/// `[pool.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub min_available: usize,
    pub health: Option<HealthConfig>,
    /// In file order; never empty.
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
    /// GET `url` (may contain `{host}` and `{port}`); 2xx = up. A `user:pass@` in `url` and
    /// `user` are exclusive (checked at load).
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
/// `hook.timeout` when omitted.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
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
        "timeout" if key.starts_with("hook[") => MAX_HOOK_TIMEOUT,
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
    /// One-line summary for `warren check`, e.g. `"warren.toml: ok: 1 listener, 1 pool, 2 backends, 0 hooks"`.
    pub fn summary(&self) -> String {
        let source = match &self.source {
            Some(path) => path.display().to_string(),
            None => QUICK_START_SOURCE.to_string(),
        };
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        format!(
            "{source}: ok: {}, {}, {}, {}",
            count(self.listeners.len(), "listener"),
            count(self.pools.len(), "pool"),
            count(backends, "backend"),
            count(self.hooks.len(), "hook"),
        )
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
        }
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
    parse_with(text, file, &resolve_system)
}

/// [`from_toml`] without DNS: a backend or probe host that is not an IP literal is reported as a
/// problem instead of resolved. Same parser and validation, so it is what the fuzz targets and
/// their corpus replay run (deterministic, no network).
pub fn from_toml_offline(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with(text, file, &|host: &str, port: u16| {
        host.parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, port))
            .map_err(|_| format!("{host} is not an IP address (offline parse, nothing resolved)"))
    })
}

/// The no-file quick start: listener "default" on `listen` → pool "default" with `backends`.
///
/// Backends are named `backend-1`, `backend-2`, … in order; everything else is at its default
/// and there is no active health check. Problems name the flags (`--listen`, `--backend`).
pub fn quick_start(listen: &str, backends: &[String]) -> Result<Config, ConfigError> {
    quick_start_with(listen, backends, &resolve_system)
}

/// Parse "5s", "2m", "1h30m", "250ms", "0s"; the error says what format is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "not a duration ({e}); expected a number with a unit, like \"5s\", \"2m\", \"1h30m\" or \"250ms\""
        )
    })
}

/// Turns a backend host name into an address. Validation takes it as a parameter so that tests
/// run without DNS.
type Resolve<'r> = &'r dyn Fn(&str, u16) -> Result<SocketAddr, String>;

fn resolve_system(host: &str, port: u16) -> Result<SocketAddr, String> {
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| e.to_string())?;
    addrs
        .next()
        .ok_or_else(|| "the name has no addresses".to_string())
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
        })
        .collect();
    let pool = RawPool {
        balance: None,
        min_available: None,
        health: None,
        backend,
    };
    let raw = RawConfig {
        admin: None,
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
        }],
        pool: BTreeMap::from([(unspanned(NAME.to_string()), pool)]),
        hook: Vec::new(),
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
    } else if problem.key.starts_with("pool.default.backend") {
        problem.key = "--backend".to_string();
    }
    problem
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

// ---------------------------------------------------------------------------------------------
// Raw serde structs: the file as written. Fields that validation checks are `Spanned` so a
// problem can carry its line; optional keys are `Option` and get their default in `validate`.

type Str = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin: Option<RawAdmin>,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    pool: BTreeMap<Str, RawPool>,
    #[serde(default)]
    hook: Vec<RawHook>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Str>,
    token_file: Option<Str>,
    state_file: Option<Str>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_source: Option<Spanned<usize>>,
    idle_timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Str,
    listen: Str,
    pool: Str,
    connect_timeout: Option<Str>,
    idle_timeout: Option<Str>,
    next_upstream_tries: Option<u32>,
    next_upstream_timeout: Option<Str>,
    max_connections: Option<Spanned<usize>>,
    proxy_protocol: Option<Str>,
    accept_proxy_protocol: Option<bool>,
    proxy_protocol_from: Option<Spanned<Vec<Str>>>,
    proxy_protocol_timeout: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    balance: Option<Str>,
    min_available: Option<Spanned<usize>>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Str,
    interval: Option<Str>,
    timeout: Option<Str>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    uri: Option<Str>,
    url: Option<Str>,
    user: Option<Str>,
    password: Option<Str>,
    password_file: Option<Str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Str,
    addr: Str,
    weight: Option<Spanned<u32>>,
    backup: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    on: Spanned<Vec<Str>>,
    exec: Option<Spanned<Vec<String>>>,
    webhook: Option<Str>,
    timeout: Option<Str>,
}

// ---------------------------------------------------------------------------------------------
// Validation: raw → snapshot, collecting every problem instead of stopping at the first.

/// Shown instead of a secret's value in problems.
const MASKED: &str = "\"***\"";

fn validate(
    raw: RawConfig,
    text: Option<&str>,
    resolve: Resolve<'_>,
) -> Result<Config, Vec<Problem>> {
    let mut v = Validator {
        text,
        resolve,
        problems: Vec::new(),
    };
    let admin_listen = raw.admin.as_ref().and_then(|a| a.listen.clone());
    let admin = raw.admin.map(|a| v.admin(a));
    let pool_names: Vec<&str> = raw.pool.keys().map(|k| k.get_ref().as_str()).collect();
    let listen_spans: Vec<Range<usize>> = raw.listener.iter().map(|l| l.listen.span()).collect();
    let listeners = v.listeners(raw.listener, &pool_names);
    if let Some(admin) = &admin {
        v.admin_clash(admin, admin_listen.as_ref(), &listeners, &listen_spans);
    }
    let pools: Vec<PoolConfig> = raw
        .pool
        .into_iter()
        .map(|(name, pool)| v.pool(name, pool))
        .collect();
    let hooks = raw
        .hook
        .into_iter()
        .enumerate()
        .map(|(i, hook)| v.hook(i, hook))
        .collect();
    if v.problems.is_empty() {
        return Ok(Config {
            source: None,
            admin,
            listeners,
            pools,
            hooks,
        });
    }
    // File order reads best; problems without a line (missing sections) go last.
    v.problems
        .sort_by_key(|p| (p.line.is_none(), p.line.unwrap_or(0)));
    Err(v.problems)
}

struct Validator<'a> {
    /// The file text, to turn spans into lines; `None` for the quick start.
    text: Option<&'a str>,
    resolve: Resolve<'a>,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn report(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = match (self.text, span) {
            (Some(text), Some(span)) => Some(line_col(text.as_bytes(), span.start).0),
            _ => None,
        };
        self.problems.push(Problem {
            key: key.into(),
            value: value.into(),
            line,
            message: message.into(),
        });
    }

    fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let listen = match &raw.listen {
            Some(listen) => self.listen_addr("admin.listen", listen),
            None => Some(DEFAULT_ADMIN_LISTEN),
        };
        let token_file = self.path("admin.token_file", raw.token_file.as_ref());
        let state_file = self.path("admin.state_file", raw.state_file.as_ref());
        if let Some(listen) = listen {
            // Anyone who reaches the admin port can drain every backend.
            if !listen.ip().is_loopback() && raw.token_file.is_none() {
                self.report(
                    "admin.token_file",
                    "",
                    raw.listen.as_ref().map(|l| l.span()),
                    format!(
                        "required when admin.listen ({}) is not a loopback address: \
                         anyone who reaches the admin API can drain backends",
                        quote(&listen.to_string())
                    ),
                );
            }
        }
        let (max_connections, max_connections_per_source, idle_timeout) = self.admin_limits(&raw);
        AdminConfig {
            listen: listen.unwrap_or(DEFAULT_ADMIN_LISTEN),
            token_file,
            state_file,
            max_connections,
            max_connections_per_source,
            idle_timeout,
        }
    }

    /// `admin.max_connections`, `admin.max_connections_per_source`, `admin.idle_timeout`.
    fn admin_limits(&mut self, raw: &RawAdmin) -> (usize, usize, Duration) {
        let mut count = |key: &str, raw: Option<&Spanned<usize>>, default: usize| match raw {
            Some(n) if *n.get_ref() == 0 => {
                self.report(
                    key,
                    "0",
                    Some(n.span()),
                    "must be at least 1: 0 would refuse every admin connection",
                );
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        };
        let total = count(
            "admin.max_connections",
            raw.max_connections.as_ref(),
            DEFAULT_ADMIN_MAX_CONNECTIONS,
        );
        let per_source = count(
            "admin.max_connections_per_source",
            raw.max_connections_per_source.as_ref(),
            DEFAULT_ADMIN_MAX_CONNECTIONS_PER_SOURCE,
        );
        if let Some(n) = raw.max_connections_per_source.as_ref() {
            if *n.get_ref() > total {
                self.report(
                    "admin.max_connections_per_source",
                    n.get_ref().to_string(),
                    Some(n.span()),
                    format!("must not exceed admin.max_connections ({total})"),
                );
            }
        }
        let idle = self.positive_duration(
            "admin.idle_timeout",
            raw.idle_timeout.as_ref(),
            DEFAULT_ADMIN_IDLE_TIMEOUT,
        );
        (total, per_source.min(total), idle)
    }

    /// `listener.proxy_protocol_from` and `listener.proxy_protocol_timeout`.
    fn proxy_header(&mut self, key: &str, raw: &RawListener) -> (Option<SourceList>, Duration) {
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

    /// `admin.listen` must not take a listener's address: `run` would fail to bind the second.
    fn admin_clash(
        &mut self,
        admin: &AdminConfig,
        raw: Option<&Str>,
        listeners: &[ListenerConfig],
        listen_spans: &[Range<usize>],
    ) {
        let clash = listeners
            .iter()
            .zip(listen_spans)
            .enumerate()
            .find(|(_, (l, _))| overlaps(l.listen, admin.listen));
        let Some((i, (listener, span))) = clash else {
            return;
        };
        let (value, span) = match raw {
            Some(raw) => (quote(raw.get_ref()), raw.span()),
            // The default admin address: point at the listener that takes it.
            None => (quote(&admin.listen.to_string()), span.clone()),
        };
        self.report(
            "admin.listen",
            value,
            Some(span),
            format!(
                "takes the address of listener[{i}].listen = {} (listener {}); the admin API \
                 needs its own port",
                quote(&listener.listen.to_string()),
                quote(&listener.name)
            ),
        );
    }

    fn listeners(&mut self, raw: Vec<RawListener>, pools: &[&str]) -> Vec<ListenerConfig> {
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

    fn pool(&mut self, name: Str, raw: RawPool) -> PoolConfig {
        let key = format!("pool.{}", name.get_ref());
        self.name(&key, &name, "pool");
        let balance = self.choice(
            &format!("{key}.balance"),
            raw.balance.as_ref(),
            DEFAULT_BALANCE,
        );
        let health = raw.health.map(|h| self.health(&format!("{key}.health"), h));
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
            backends.push(self.backend(&backend_key, raw));
        }
        let primaries = backends.iter().filter(|b| !b.backup).count();
        if backends.is_empty() {
            self.report(
                format!("{key}.backend"),
                "",
                Some(name.span()),
                "the pool has no backends; add at least one backend",
            );
        } else if backends.len() > MAX_BACKENDS_PER_POOL {
            self.report(
                format!("{key}.backend"),
                backends.len().to_string(),
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
        let min_available = match &raw.min_available {
            Some(min) => {
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
            None => DEFAULT_MIN_AVAILABLE,
        };
        PoolConfig {
            name: name.into_inner(),
            balance,
            min_available,
            health,
            backends,
        }
    }

    fn health(&mut self, key: &str, raw: RawHealth) -> HealthConfig {
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
        // Keys of one probe kind set on another are a mistake, not something to ignore.
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
        let probe = match kind {
            "amqp" => Probe::Amqp,
            "amqp_login" => match raw.uri {
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
            },
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

    fn http_probe(
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
        if let (Some(_), Some(file)) = (&password, &password_file) {
            self.report(
                format!("{key}.password_file"),
                quote(file.get_ref()),
                Some(file.span()),
                "password and password_file are mutually exclusive; keep one",
            );
        }
        if user.is_none() {
            if let Some(secret) = password.as_ref().or(password_file.as_ref()) {
                self.report(
                    format!("{key}.user"),
                    "",
                    Some(secret.span()),
                    "required when password or password_file is set",
                );
            }
        }
        let password_file = self.path(&format!("{key}.password_file"), password_file.as_ref());
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

    /// An `http` probe's URL, parsed as every probe will use it (`{host}` and `{port}` filled
    /// in), so `check` refuses what would fail every probe. Credentials go either in the URL or
    /// in `user`: with both, which one is sent would be a guess.
    fn probe_url(&mut self, key: &str, url: &Str, user: Option<&Str>) -> Option<ProbeUrl> {
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

    /// A webhook URL, parsed once for the hook worker, so `check` refuses what would fail
    /// every run.
    fn webhook_url(&mut self, key: &str, url: &Str) -> Option<HttpUrl> {
        match HttpUrl::parse(url.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                self.url_problem(key, url, e);
                None
            }
        }
    }

    /// Report an unusable URL; its user info may hold a password, so it is shown without.
    fn url_problem(&mut self, key: &str, url: &Str, problem: UrlError) {
        let shown = quote(&without_userinfo(url.get_ref()));
        self.report(key, shown, Some(url.span()), problem.to_string());
    }

    fn backend(&mut self, key: &str, raw: RawBackend) -> BackendConfig {
        let addr_key = format!("{key}.addr");
        let (host, port, addr) = match self.backend_addr(&addr_key, &raw.addr) {
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
            host,
            port,
            addr,
            weight: self.positive_count(
                &format!("{key}.weight"),
                raw.weight.as_ref(),
                DEFAULT_WEIGHT,
            ),
            backup: raw.backup.unwrap_or(DEFAULT_BACKUP),
        }
    }

    fn hook(&mut self, i: usize, raw: RawHook) -> HookConfig {
        let key = format!("hook[{i}]");
        if raw.on.get_ref().is_empty() {
            self.report(
                format!("{key}.on"),
                "[]",
                Some(raw.on.span()),
                format!("needs at least one event: {}", names_of::<HookEvent>()),
            );
        }
        let mut on = Vec::new();
        for event in raw.on.get_ref() {
            match lookup::<HookEvent>(event.get_ref()) {
                Some(e) if !on.contains(&e) => on.push(e),
                Some(_) => {}
                None => self.report(
                    format!("{key}.on"),
                    quote(event.get_ref()),
                    Some(event.span()),
                    format!("unknown event; expected one of {}", names_of::<HookEvent>()),
                ),
            }
        }
        let action = match (raw.exec, raw.webhook) {
            (Some(exec), None) => {
                let argv = exec.get_ref();
                if argv.first().filter(|program| !program.is_empty()).is_none() {
                    self.report(
                        format!("{key}.exec"),
                        format!("{argv:?}"),
                        Some(exec.span()),
                        "needs the program to run: exec = [\"/path/to/program\", \"arg\", ...]",
                    );
                }
                HookAction::Exec(exec.into_inner())
            }
            (None, Some(webhook)) => match self.webhook_url(&format!("{key}.webhook"), &webhook) {
                Some(url) => HookAction::Webhook(url),
                // Reported; keeps building the snapshot so later keys are checked too.
                None => HookAction::Exec(Vec::new()),
            },
            (Some(_), Some(webhook)) => {
                self.report(
                    format!("{key}.webhook"),
                    quote(&without_userinfo(webhook.get_ref())),
                    Some(webhook.span()),
                    "exec and webhook are mutually exclusive; use one [[hook]] for each",
                );
                HookAction::Exec(Vec::new())
            }
            (None, None) => {
                self.report(
                    key.clone(),
                    "",
                    Some(raw.on.span()),
                    "needs exactly one of exec = [...] or webhook = \"http://...\"",
                );
                HookAction::Exec(Vec::new())
            }
        };
        HookConfig {
            on,
            action,
            timeout: self.positive_duration(
                &format!("{key}.timeout"),
                raw.timeout.as_ref(),
                DEFAULT_HOOK_TIMEOUT,
            ),
        }
    }

    /// Checks a name used in API paths, metric labels and the state file; true when valid.
    fn name(&mut self, key: &str, raw: &Str, what: &str) -> bool {
        let name = raw.get_ref();
        let message = if name.is_empty() {
            format!("{what} name is empty")
        } else if !name.chars().all(is_name_char) {
            format!(
                "{what} names may contain only letters, digits, '.', '_' and '-' \
                 (they appear in admin API paths and metric labels)"
            )
        } else {
            return true;
        };
        self.report(key, quote(name), Some(raw.span()), message);
        false
    }

    fn duration(&mut self, key: &str, raw: Option<&Str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        let max = max_duration(key);
        match parse_duration(raw.get_ref()) {
            Ok(d) if d <= max => d,
            Ok(_) => {
                self.report(
                    key,
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    format!(
                        "too long: at most {} (omit it for the default, {})",
                        humantime::format_duration(max),
                        humantime::format_duration(default)
                    ),
                );
                default
            }
            Err(message) => {
                self.report(key, quote(raw.get_ref()), Some(raw.span()), message);
                default
            }
        }
    }

    fn positive_duration(&mut self, key: &str, raw: Option<&Str>, default: Duration) -> Duration {
        let d = self.duration(key, raw, default);
        if let (true, Some(raw)) = (d.is_zero(), raw) {
            self.report(
                key,
                quote(raw.get_ref()),
                Some(raw.span()),
                format!(
                    "must be longer than 0 (omit it for the default, {})",
                    humantime::format_duration(default)
                ),
            );
            return default;
        }
        d
    }

    fn positive_count(&mut self, key: &str, raw: Option<&Spanned<u32>>, default: u32) -> u32 {
        match raw {
            Some(n) if *n.get_ref() == 0 => {
                self.report(key, "0", Some(n.span()), "must be at least 1");
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        }
    }

    fn choice<T: Named>(&mut self, key: &str, raw: Option<&Str>, default: T) -> T {
        let Some(raw) = raw else { return default };
        match lookup::<T>(raw.get_ref()) {
            Some(v) => v,
            None => {
                self.report(
                    key,
                    quote(raw.get_ref()),
                    Some(raw.span()),
                    format!("expected one of {}", names_of::<T>()),
                );
                default
            }
        }
    }

    fn path(&mut self, key: &str, raw: Option<&Str>) -> Option<PathBuf> {
        let raw = raw?;
        if raw.get_ref().is_empty() {
            self.report(
                key,
                "\"\"",
                Some(raw.span()),
                "path is empty; omit the key instead",
            );
            return None;
        }
        Some(PathBuf::from(raw.get_ref()))
    }

    /// A listening address: an IP literal, or `*` for every IPv4 address.
    fn listen_addr(&mut self, key: &str, raw: &Str) -> Option<SocketAddr> {
        let text = raw.get_ref();
        let result = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            Err(format!(
                "missing host; write \"0.0.0.0:{text}\" for every address or \"127.0.0.1:{text}\" for this machine only"
            ))
        } else {
            split_host_port(text).and_then(|hp| {
                if hp.host == "*" {
                    return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, hp.port)));
                }
                match hp.host.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) if ip.to_ipv4_mapped().is_some() => Err(format!(
                        "an IPv4-mapped IPv6 address cannot be listened on (IPv6 listeners are \
                         IPv6-only); write the IPv4 address: \"{}:{}\"",
                        ip.to_ipv4_mapped().expect("checked"),
                        hp.port
                    )),
                    Ok(ip) => Ok(SocketAddr::new(ip, hp.port)),
                    Err(_) => Err(format!(
                        "must be an IP address, not a host name: write \"0.0.0.0:{0}\" for every address or \"127.0.0.1:{0}\" for this machine only",
                        hp.port
                    )),
                }
            })
        };
        match result {
            Ok(addr) => Some(addr),
            Err(message) => {
                self.report(key, quote(text), Some(raw.span()), message);
                None
            }
        }
    }

    /// A backend address: an IP literal or a host name, resolved now (first address).
    fn backend_addr(&mut self, key: &str, raw: &Str) -> Option<(String, u16, SocketAddr)> {
        let text = raw.get_ref();
        let result = split_host_port(text).and_then(|hp| {
            if let Ok(ip) = hp.host.parse::<IpAddr>() {
                return Ok((hp.host, hp.port, SocketAddr::new(ip, hp.port)));
            }
            if hp.host == "*" || !hp.host.chars().all(is_host_char) {
                return Err(format!(
                    "{} is not a valid host name or IP address",
                    quote(&hp.host)
                ));
            }
            match (self.resolve)(&hp.host, hp.port) {
                Ok(addr) => Ok((hp.host, hp.port, addr)),
                Err(e) => Err(format!("cannot resolve host {}: {e}", quote(&hp.host))),
            }
        });
        match result {
            Ok(resolved) => Some(resolved),
            Err(message) => {
                self.report(key, quote(text), Some(raw.span()), message);
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers.

/// A `host:port` split and checked, before any resolution. The host has no brackets.
#[derive(Debug, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: u16,
}

const EXPECTED_ADDR: &str =
    "expected HOST:PORT, e.g. \"10.0.0.1:5672\", \"rabbit-a:5672\" or \"[::1]:5672\"";

fn split_host_port(s: &str) -> Result<HostPort, String> {
    if s.is_empty() {
        return Err(format!("empty address; {EXPECTED_ADDR}"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!(
                "missing ']' after the IPv6 address; {EXPECTED_ADDR}"
            ));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{} is not an IPv6 address", quote(host)));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("missing port after ']'; {EXPECTED_ADDR}"));
        };
        (host, port)
    } else {
        match s.split_once(':') {
            None => return Err(format!("missing port; {EXPECTED_ADDR}")),
            Some((_, port)) if port.contains(':') => return Err(unbracketed_ipv6(s)),
            Some(split) => split,
        }
    };
    if host.is_empty() {
        return Err(format!("missing host; {EXPECTED_ADDR}"));
    }
    Ok(HostPort {
        host: host.to_string(),
        port: parse_port(port)?,
    })
}

/// Several colons without brackets: almost always an IPv6 address, so suggest the fix.
fn unbracketed_ipv6(s: &str) -> String {
    if let Some((host, port)) = s.rsplit_once(':') {
        let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if port_ok && host.parse::<Ipv6Addr>().is_ok() {
            return format!("IPv6 addresses need brackets: write \"[{host}]:{port}\"");
        }
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return format!("IPv6 addresses need brackets and a port: write \"[{s}]:PORT\"");
    }
    format!("too many ':'; {EXPECTED_ADDR}")
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("missing port; {EXPECTED_ADDR}"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {} is not a number", quote(port)));
    }
    match port.parse::<u32>() {
        Ok(0) => Err("port 0 is not allowed: a fixed port is needed".to_string()),
        Ok(n) => u16::try_from(n).map_err(|_| format!("port {n} is out of range 1-65535")),
        Err(_) => Err(format!("port {port} is out of range 1-65535")),
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a == b
        || (a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let tail = &bytes[line_start..offset];
    let column = std::str::from_utf8(tail).map_or(tail.len(), |s| s.chars().count()) + 1;
    (line, column)
}

fn parse_error(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = line_col(text.as_bytes(), offset);
    let message: Vec<&str> = err.message().lines().map(str::trim).collect();
    let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
    ConfigError::Parse {
        file: file.to_path_buf(),
        line,
        column,
        key: key_path_at(text, line),
        message: message.join("; "),
        source_line: truncate(source_line, SOURCE_LINE_MAX),
    }
}

/// Longest piece of the offending line a parse error quotes; a long inline table is noise.
const SOURCE_LINE_MAX: usize = 100;

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// Best-effort key path of a 1-based line, e.g. `pool.rabbitmq.backend[1].weight`, from the
/// table headers above it. toml's errors carry only a span, and an operator needs to know which
/// of several `[[listener]]` tables is wrong.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    for (n, content) in text.lines().enumerate() {
        let code = content.split('#').next().unwrap_or("").trim();
        let header = table_header(code);
        if let Some((name, is_array)) = &header {
            section = if *is_array {
                let index = arrays.entry(name.clone()).or_insert(0);
                *index += 1;
                format!("{name}[{}]", *index - 1)
            } else {
                name.clone()
            };
        }
        if n + 1 == line {
            let key = match header {
                Some(_) => None,
                None => line_key(content),
            };
            return match (key, section.is_empty()) {
                (Some(key), true) => Some(key),
                (Some(key), false) => Some(format!("{section}.{key}")),
                (None, true) => None,
                (None, false) => Some(section),
            };
        }
    }
    None
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '"' | '\'' | ' ')
}

fn normalize_key(key: &str) -> Option<String> {
    let key = key.trim();
    if key.is_empty() || !key.chars().all(is_key_char) {
        return None;
    }
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    Some(parts.join("."))
}

/// `[a.b]` → ("a.b", false); `[[a.b]]` → ("a.b", true).
fn table_header(code: &str) -> Option<(String, bool)> {
    if let Some(inner) = code.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
        return normalize_key(inner).map(|k| (k, true));
    }
    let inner = code.strip_prefix('[')?.strip_suffix(']')?;
    normalize_key(inner).map(|k| (k, false))
}

/// The key of a `key = value` line.
fn line_key(content: &str) -> Option<String> {
    let (key, _) = content.split_once('=')?;
    normalize_key(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pool_past_the_supported_size_is_refused() {
        let pool = |n: usize| {
            let mut text = String::from(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n[pool.p]\n",
            );
            for i in 0..n {
                text += &format!(
                    "[[pool.p.backend]]\nname = \"b{i}\"\naddr = \"127.0.0.1:{}\"\n",
                    1000 + i
                );
            }
            from_toml_offline(&text, Path::new("big.toml"))
        };
        assert!(pool(MAX_BACKENDS_PER_POOL).is_ok());
        let error = pool(MAX_BACKENDS_PER_POOL + 1).unwrap_err().to_string();
        assert!(
            error.contains("pool.p.backend")
                && error.contains("1001")
                && error.contains("at most 1000"),
            "{error}"
        );
    }

    use super::*;

    /// A valid two-node config that cases edit; every line in it is unique so `replaced` is exact.
    const BASE: &str = r#"
[[listener]]
name = "amqp"
listen = "0.0.0.0:5672"
pool = "rabbitmq"

[pool.rabbitmq]
balance = "round_robin"

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "10.0.0.1:5672"

[[pool.rabbitmq.backend]]
name = "rabbit-b"
addr = "10.0.0.2:5672"
"#;

    /// Resolves only the names tests use, so no test touches DNS.
    fn fake_resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
        match host {
            "localhost" => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            "rabbit-a.internal" => Ok(SocketAddr::from(([10, 1, 0, 1], port))),
            _ => Err("no such host".to_string()),
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, Path::new("test.toml"), &fake_resolve)
    }

    fn replaced(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "BASE has no {from:?}");
        BASE.replacen(from, to, 1)
    }

    fn appended(tail: &str) -> String {
        format!("{BASE}\n{tail}")
    }

    fn problems_of(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(other) => panic!("expected validation problems, got: {other}\n--- for:\n{text}"),
            Ok(_) => panic!("expected validation problems, got Ok\n--- for:\n{text}"),
        }
    }

    #[test]
    fn probe_timeout_may_reach_or_pass_interval() {
        let text = appended(
            "[pool.rabbitmq.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"1s\"",
        );
        let health = parse(&text).unwrap().pools[0].health.clone().unwrap();
        assert_eq!(
            (health.interval, health.timeout),
            (Duration::from_millis(500), Duration::from_secs(1))
        );
    }

    #[test]
    fn duration_limits_by_key() {
        let cases = [
            ("listener[0].connect_timeout", MAX_CONNECT_TIMEOUT),
            ("listener[0].idle_timeout", MAX_IDLE_TIMEOUT),
            (
                "listener[3].next_upstream_timeout",
                MAX_NEXT_UPSTREAM_TIMEOUT,
            ),
            ("pool.p.health.interval", MAX_PROBE_DURATION),
            ("pool.p.health.timeout", MAX_PROBE_DURATION),
            ("hook[2].timeout", MAX_HOOK_TIMEOUT),
            ("listener[0].some_future_key", MAX_DURATION),
        ];
        for (key, max) in cases {
            assert_eq!(max_duration(key), max, "{key}");
            // Every limit leaves `Instant::now() + max` far from overflowing.
            assert!(
                std::time::Instant::now().checked_add(max).is_some(),
                "{key}"
            );
        }
        // The exact limit loads; one millisecond more does not.
        let at = |d: &str| {
            replaced(
                "pool = \"rabbitmq\"",
                &format!("pool = \"rabbitmq\"\nconnect_timeout = \"{d}\""),
            )
        };
        assert_eq!(
            parse(&at("1h")).unwrap().listeners[0].connect_timeout,
            MAX_CONNECT_TIMEOUT
        );
        assert_eq!(problems_of(&at("1h 1ms")).len(), 1);
    }

    #[test]
    fn base_is_valid() {
        let config = parse(BASE).unwrap();
        assert_eq!(config.source.as_deref(), Some(Path::new("test.toml")));
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.pools[0].backends.len(), 2);
    }

    #[test]
    fn each_problem_names_key_value_and_line() {
        let base_health = "[pool.rabbitmq.health]\nkind = \"tcp\"\n";
        let health = |extra: &str| appended(&format!("{base_health}{extra}"));
        // (text, key, value as displayed, fragment of the message)
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (
                "[pool.rabbitmq]\n[[pool.rabbitmq.backend]]\nname = \"a\"\naddr = \"10.0.0.1:5672\"\n".to_string(),
                "listener", "", "at least one",
            ),
            (
                appended("[[listener]]\nname = \"amqp\"\nlisten = \"0.0.0.0:5673\"\npool = \"rabbitmq\""),
                "listener[1].name", "\"amqp\"", "duplicate listener name (also listener[0].name)",
            ),
            (
                appended("[[listener]]\nname = \"amqp2\"\nlisten = \"0.0.0.0:5672\"\npool = \"rabbitmq\""),
                "listener[1].listen", "\"0.0.0.0:5672\"", "duplicate listen address",
            ),
            (
                appended("[[listener]]\nname = \"amqp2\"\nlisten = \"127.0.0.1:5672\"\npool = \"rabbitmq\""),
                "listener[1].listen", "\"127.0.0.1:5672\"", "wildcard",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabit\""),
                "listener[0].pool", "\"rabit\"", "no such pool; defined pools: \"rabbitmq\"",
            ),
            (
                "[[listener]]\nname = \"l\"\nlisten = \"0.0.0.0:5672\"\npool = \"p\"\n[pool.p]\n".to_string(),
                "pool.p.backend", "", "no backends",
            ),
            (
                replaced("name = \"rabbit-b\"", "name = \"rabbit-a\""),
                "pool.rabbitmq.backend[1].name", "\"rabbit-a\"", "duplicate backend name",
            ),
            (
                replaced("name = \"amqp\"", "name = \"\""),
                "listener[0].name", "\"\"", "listener name is empty",
            ),
            (
                replaced("name = \"amqp\"", "name = \"amqp main\""),
                "listener[0].name", "\"amqp main\"", "only letters, digits",
            ),
            (
                replaced("name = \"rabbit-a\"", "name = \"rabbit/a\""),
                "pool.rabbitmq.backend[0].name", "\"rabbit/a\"", "backend names may contain only",
            ),
            (
                appended("[pool.\"a b\"]\n[[pool.\"a b\".backend]]\nname = \"x\"\naddr = \"10.0.0.3:5672\""),
                "pool.a b", "\"a b\"", "pool names may contain only",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"nohost\""),
                "pool.rabbitmq.backend[0].addr", "\"nohost\"", "missing port",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"1.2.3.4\""),
                "pool.rabbitmq.backend[0].addr", "\"1.2.3.4\"", "missing port",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"host:abc\""),
                "pool.rabbitmq.backend[0].addr", "\"host:abc\"", "port \"abc\" is not a number",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:0\""),
                "pool.rabbitmq.backend[0].addr", "\"10.0.0.1:0\"", "port 0 is not allowed",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:65536\""),
                "pool.rabbitmq.backend[0].addr", "\"10.0.0.1:65536\"", "out of range 1-65535",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"::1:5672\""),
                "pool.rabbitmq.backend[0].addr", "\"::1:5672\"", "write \"[::1]:5672\"",
            ),
            (
                replaced("listen = \"0.0.0.0:5672\"", "listen = \"fe80::1:5672\""),
                "listener[0].listen", "\"fe80::1:5672\"", "write \"[fe80::1]:5672\"",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"rabbit@a:5672\""),
                "pool.rabbitmq.backend[0].addr", "\"rabbit@a:5672\"", "not a valid host name",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"nowhere.invalid:5672\""),
                "pool.rabbitmq.backend[0].addr", "\"nowhere.invalid:5672\"", "cannot resolve host \"nowhere.invalid\": no such host",
            ),
            (
                replaced("listen = \"0.0.0.0:5672\"", "listen = \"localhost:5672\""),
                "listener[0].listen", "\"localhost:5672\"", "must be an IP address, not a host name",
            ),
            (
                replaced("listen = \"0.0.0.0:5672\"", "listen = \"5672\""),
                "listener[0].listen", "\"5672\"", "write \"0.0.0.0:5672\"",
            ),
            (health("rise = 0"), "pool.rabbitmq.health.rise", "0", "at least 1"),
            (health("fall = 0"), "pool.rabbitmq.health.fall", "0", "at least 1"),
            (
                replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:5672\"\nweight = 0"),
                "pool.rabbitmq.backend[1].weight", "0", "at least 1",
            ),
            (
                health("interval = \"300000000000y\""),
                "pool.rabbitmq.health.interval", "\"300000000000y\"", "too long: at most 1h",
            ),
            (
                health("timeout = \"2h\""),
                "pool.rabbitmq.health.timeout", "\"2h\"", "too long: at most 1h (omit it for the default, 1s)",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nnext_upstream_timeout = \"300000000000y\""),
                "listener[0].next_upstream_timeout", "\"300000000000y\"", "too long: at most 1day",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nconnect_timeout = \"61m\""),
                "listener[0].connect_timeout", "\"61m\"", "too long: at most 1h",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"31days\""),
                "listener[0].idle_timeout", "\"31days\"", "too long: at most 30days",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\ntimeout = \"300000000000y\""),
                "hook[0].timeout", "\"300000000000y\"", "too long: at most 1day",
            ),
            (
                "[admin]\nlisten = \"0.0.0.0:5672\"\ntoken_file = \"/t\"\n".to_string() + BASE,
                "admin.listen", "\"0.0.0.0:5672\"", "takes the address of listener[0].listen = \"0.0.0.0:5672\"",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1:5672\"\n".to_string() + BASE,
                "admin.listen", "\"127.0.0.1:5672\"", "the admin API needs its own port",
            ),
            (
                replaced("listen = \"0.0.0.0:5672\"", "listen = \"[::ffff:127.0.0.1]:5672\""),
                "listener[0].listen", "\"[::ffff:127.0.0.1]:5672\"", "write the IPv4 address: \"127.0.0.1:5672\"",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://exa mple/\""),
                "hook[0].webhook", "\"http://exa mple/\"", "not a valid URL",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://h:99999/\""),
                "hook[0].webhook", "\"http://h:99999/\"", "1 to 65535",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http:///x\""),
                "hook[0].webhook", "\"http:///x\"", "",
            ),
            // User info is sent as basic authentication, but never shown in a problem.
            (
                appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"http://user:s3cret@h:80800/x\""),
                "hook[0].webhook", "\"http://***@h:80800/x\"", "1 to 65535",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}:99999/api\""),
                "pool.rabbitmq.health.url", "\"http://{host}:99999/api\"", "1 to 65535",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://exa mple:15672/api\""),
                "pool.rabbitmq.health.url", "\"http://exa mple:15672/api\"", "not a valid URL",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http:///api\""),
                "pool.rabbitmq.health.url", "\"http:///api\"", "no host",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://u:s3cret@{host}:15672/api\"\nuser = \"u\""),
                "pool.rabbitmq.health.url", "\"http://***@{host}:15672/api\"", "user info (user:pass@) and user are mutually exclusive",
            ),
            (health("interval = \"0s\""), "pool.rabbitmq.health.interval", "\"0s\"", "longer than 0"),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nconnect_timeout = \"0s\""),
                "listener[0].connect_timeout", "\"0s\"", "must be longer than 0 (omit it for the default, 1m)",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"0s\""),
                "listener[0].idle_timeout", "\"0s\"", "must be longer than 0",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nidle_timeout = \"5 parsecs\""),
                "listener[0].idle_timeout", "\"5 parsecs\"", "expected a number with a unit, like \"5s\"",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nnext_upstream_timeout = \"soon\""),
                "listener[0].next_upstream_timeout", "\"soon\"", "not a duration",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nmax_connections = 0"),
                "listener[0].max_connections", "0", "at least 1",
            ),
            (
                replaced("pool = \"rabbitmq\"", "pool = \"rabbitmq\"\nproxy_protocol = \"v3\""),
                "listener[0].proxy_protocol", "\"v3\"", "expected one of off, v1, v2",
            ),
            (
                replaced("balance = \"round_robin\"", "balance = \"leastconn\""),
                "pool.rabbitmq.balance", "\"leastconn\"", "expected one of round_robin, least_conn, random_two, source_hash",
            ),
            (
                replaced("balance = \"round_robin\"", "min_available = 3"),
                "pool.rabbitmq.min_available", "3", "more than the 2 primary",
            ),
            (
                replaced("addr = \"10.0.0.1:5672\"", "addr = \"10.0.0.1:5672\"\nbackup = true")
                    .replacen("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:5672\"\nbackup = true", 1),
                "pool.rabbitmq.backend", "", "every backend is a backup",
            ),
            (
                appended("[admin]\nlisten = \"0.0.0.0:9901\""),
                "admin.token_file", "", "required when admin.listen (\"0.0.0.0:9901\") is not a loopback address",
            ),
            (
                appended("[admin]\nstate_file = \"\""),
                "admin.state_file", "\"\"", "path is empty",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"ampq\""),
                "pool.rabbitmq.health.kind", "\"ampq\"", "unknown probe kind",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"amqp_login\""),
                "pool.rabbitmq.health.uri", "", "required for kind = \"amqp_login\"",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"http://u:p@{host}\""),
                "pool.rabbitmq.health.uri", MASKED, "must start with amqp://",
            ),
            (
                health("uri = \"amqp://u:p@{host}:{port}/\""),
                "pool.rabbitmq.health.uri", MASKED, "only used by kind = \"amqp_login\", not kind = \"tcp\"",
            ),
            (
                health("url = \"http://{host}:15672/\""),
                "pool.rabbitmq.health.url", "\"http://{host}:15672/\"", "only used by kind = \"http\"",
            ),
            (
                health("password = \"hunter2\""),
                "pool.rabbitmq.health.password", MASKED, "only used by kind = \"http\"",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\""),
                "pool.rabbitmq.health.url", "", "required for kind = \"http\"",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"https://{host}/\""),
                "pool.rabbitmq.health.url", "\"https://{host}/\"", "https is not supported yet",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}/\"\nuser = \"u\"\npassword = \"p\"\npassword_file = \"/etc/p\""),
                "pool.rabbitmq.health.password_file", "\"/etc/p\"", "mutually exclusive",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"http\"\nurl = \"http://{host}/\"\npassword_file = \"/etc/p\""),
                "pool.rabbitmq.health.user", "", "required when password or password_file is set",
            ),
            (
                appended("[[hook]]\non = []\nexec = [\"/bin/true\"]"),
                "hook[0].on", "[]", "needs at least one event",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\", \"node_down\"]\nexec = [\"/bin/true\"]"),
                "hook[0].on", "\"node_down\"", "unknown event; expected one of backend_down, backend_up",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nexec = []"),
                "hook[0].exec", "[]", "needs the program to run",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\nwebhook = \"http://127.0.0.1:8080/\""),
                "hook[0].webhook", "\"http://127.0.0.1:8080/\"", "mutually exclusive",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]"),
                "hook[0]", "", "needs exactly one of exec",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nwebhook = \"https://example.com/hook\""),
                "hook[0].webhook", "\"https://example.com/hook\"", "https is not supported yet",
            ),
            (
                appended("[[hook]]\non = [\"backend_down\"]\nexec = [\"/bin/true\"]\ntimeout = \"0s\""),
                "hook[0].timeout", "\"0s\"", "longer than 0",
            ),
        ];
        for (text, key, value, fragment) in &cases {
            let problems = problems_of(text);
            assert_eq!(
                problems.len(),
                1,
                "{key}: expected one problem, got {problems:#?}"
            );
            let p = &problems[0];
            assert_eq!(p.key, *key, "{p:#?}");
            assert_eq!(p.value, *value, "{p:#?}");
            assert!(
                p.message.contains(fragment),
                "{key}: {:?} lacks {fragment:?}",
                p.message
            );
            if *key != "listener" {
                assert!(p.line.is_some(), "{key}: no line in {p:#?}");
            }
        }
    }

    #[test]
    fn proxy_header_and_admin_limit_keys_name_key_and_value() {
        let pp = |extra: &str| {
            replaced(
                "pool = \"rabbitmq\"",
                &format!("pool = \"rabbitmq\"\naccept_proxy_protocol = true\n{extra}"),
            )
        };
        // (text, key, value as displayed, fragment of the message)
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (
                pp("proxy_protocol_from = [\"10.0.0.0/24\", \"lb.internal\"]"),
                "listener[0].proxy_protocol_from[1]",
                "\"lb.internal\"",
                "not an IP address or CIDR",
            ),
            (
                pp("proxy_protocol_from = [\"10.0.0.0/33\"]"),
                "listener[0].proxy_protocol_from[0]",
                "\"10.0.0.0/33\"",
                "not an IP address or CIDR",
            ),
            (
                pp("proxy_protocol_from = [\"10.0.0.5/24\"]"),
                "listener[0].proxy_protocol_from[0]",
                "\"10.0.0.5/24\"",
                "write 10.0.0.0/24",
            ),
            (
                pp("proxy_protocol_from = []"),
                "listener[0].proxy_protocol_from",
                "[]",
                "refuse every connection",
            ),
            (
                replaced(
                    "pool = \"rabbitmq\"",
                    "pool = \"rabbitmq\"\nproxy_protocol_from = [\"10.0.0.1\"]",
                ),
                "listener[0].proxy_protocol_from",
                "",
                "only applies with accept_proxy_protocol = true",
            ),
            (
                pp("proxy_protocol_timeout = \"0s\""),
                "listener[0].proxy_protocol_timeout",
                "\"0s\"",
                "longer than 0",
            ),
            (
                appended("[admin]\nmax_connections = 0"),
                "admin.max_connections",
                "0",
                "at least 1",
            ),
            (
                appended("[admin]\nmax_connections_per_source = 0"),
                "admin.max_connections_per_source",
                "0",
                "at least 1",
            ),
            (
                appended("[admin]\nmax_connections = 4\nmax_connections_per_source = 8"),
                "admin.max_connections_per_source",
                "8",
                "must not exceed admin.max_connections (4)",
            ),
            (
                appended("[admin]\nidle_timeout = \"0s\""),
                "admin.idle_timeout",
                "\"0s\"",
                "longer than 0",
            ),
        ];
        for (text, key, value, fragment) in &cases {
            let problems = problems_of(text);
            assert_eq!(problems.len(), 1, "{key}: {problems:#?}");
            let p = &problems[0];
            assert_eq!((p.key.as_str(), p.value.as_str()), (*key, *value), "{p:#?}");
            assert!(
                p.message.contains(fragment),
                "{key}: {:?} lacks {fragment:?}",
                p.message
            );
            assert!(p.line.is_some(), "{key}: no line in {p:#?}");
        }

        let config = parse(&pp(
            "proxy_protocol_from = [\"10.0.0.0/24\", \"127.0.0.1\", \"::1/128\"]\nproxy_protocol_timeout = \"2s\"",
        ))
        .unwrap();
        let l = &config.listeners[0];
        let from = l.proxy_protocol_from.as_ref().unwrap();
        assert_eq!(from.networks().len(), 3);
        assert!(from.contains("10.0.0.9".parse().unwrap()));
        assert!(!from.contains("10.0.1.9".parse().unwrap()));
        assert_eq!(l.proxy_protocol_timeout, Duration::from_secs(2));
        assert!(config.warnings().is_empty());

        // Absent: any source is believed, as before the key existed, and the operator is told.
        let open = parse(&pp("")).unwrap();
        assert_eq!(open.listeners[0].proxy_protocol_from, None);
        assert_eq!(
            open.listeners[0].proxy_protocol_timeout,
            Duration::from_secs(5)
        );
        let warnings = open.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("listener[0] (amqp)")
                && warnings[0].contains("proxy_protocol_from"),
            "{warnings:?}"
        );
        assert!(parse(BASE).unwrap().warnings().is_empty());

        let admin = parse(&appended(
            "[admin]\nmax_connections = 10\nmax_connections_per_source = 3\nidle_timeout = \"2s\"",
        ))
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(
            (
                admin.max_connections,
                admin.max_connections_per_source,
                admin.idle_timeout
            ),
            (10, 3, Duration::from_secs(2))
        );
    }

    #[test]
    fn problem_lines_point_at_the_value() {
        let text = replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2:0\"");
        let problems = problems_of(&text);
        let line = text.lines().position(|l| l.contains("10.0.0.2:0")).unwrap() + 1;
        assert_eq!(problems[0].line, Some(line));
        assert_eq!(
            problems[0].render(Path::new("test.toml")),
            format!(
                "test.toml:{line}: pool.rabbitmq.backend[1].addr = \"10.0.0.2:0\": \
                 port 0 is not allowed: a fixed port is needed"
            )
        );
    }

    #[test]
    fn collects_every_problem_in_file_order() {
        let text = replaced("addr = \"10.0.0.2:5672\"", "addr = \"10.0.0.2\"")
            .replacen("pool = \"rabbitmq\"", "pool = \"nope\"", 1)
            .replacen("name = \"rabbit-a\"", "name = \"\"", 1)
            + "\n[[hook]]\non = [\"pool_down\"]\nwebhook = \"ftp://x\"\n";
        let err = parse(&text).unwrap_err();
        let keys: Vec<String> = match &err {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.key.clone()).collect()
            }
            other => panic!("{other}"),
        };
        assert_eq!(
            keys,
            [
                "listener[0].pool",
                "pool.rabbitmq.backend[0].name",
                "pool.rabbitmq.backend[1].addr",
                "hook[0].webhook",
            ]
        );
        assert_eq!(err.problems().len(), 4);
        assert_eq!(err.to_string().lines().count(), 4);
        assert!(err.problems().iter().all(|p| p.starts_with("test.toml:")));
    }

    #[test]
    fn defaults_fill_every_omitted_key() {
        let config = parse(&appended("[pool.rabbitmq.health]\nkind = \"amqp\"\n[[hook]]\non = [\"pool_down\"]\nexec = [\"/bin/page\"]\n[admin]")).unwrap();
        let listener = &config.listeners[0];
        assert_eq!(
            *listener,
            ListenerConfig::default_for("amqp", "0.0.0.0:5672".parse().unwrap(), "rabbitmq")
        );
        assert_eq!(listener.connect_timeout, Duration::from_secs(60));
        assert_eq!(listener.idle_timeout, Duration::from_secs(600));
        assert_eq!(listener.next_upstream_timeout, None);
        let pool = config.pool("rabbitmq").unwrap();
        assert_eq!(pool.balance, Balance::RoundRobin);
        assert_eq!(pool.min_available, 1);
        assert_eq!(
            pool.health,
            Some(HealthConfig {
                probe: Probe::Amqp,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
            })
        );
        assert!(pool.backends.iter().all(|b| b.weight == 1 && !b.backup));
        assert_eq!(config.hooks[0].timeout, Duration::from_secs(30));
        assert_eq!(
            config.admin,
            Some(AdminConfig {
                listen: "127.0.0.1:9901".parse().unwrap(),
                token_file: None,
                state_file: None,
                max_connections: 64,
                max_connections_per_source: 16,
                idle_timeout: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn every_key_is_read() {
        let text = r#"
[admin]
listen = "[::]:9901"
token_file = "/etc/warren/token"
state_file = "/var/lib/warren/state.json"

[[listener]]
name = "amqp"
listen = "*:5672"
pool = "rabbitmq"
connect_timeout = "5s"
idle_timeout = "120s"
next_upstream_tries = 2
next_upstream_timeout = "1m30s"
max_connections = 500
proxy_protocol = "v2"
accept_proxy_protocol = true

[pool.rabbitmq]
balance = "least_conn"
min_available = 2

[pool.rabbitmq.health]
kind = "http"
url = "http://{host}:15672/api/health/checks/ready-to-serve-clients"
user = "monitor"
password = "hunter2"
interval = "5s"
timeout = "250ms"
rise = 1
fall = 5

[[pool.rabbitmq.backend]]
name = "rabbit-a"
addr = "rabbit-a.internal:5672"
weight = 3

[[pool.rabbitmq.backend]]
name = "rabbit-b"
addr = "[fd00::2]:5672"

[[pool.rabbitmq.backend]]
name = "rabbit-c"
addr = "localhost:5673"
backup = true

[pool.unused]
[[pool.unused.backend]]
name = "x"
addr = "10.9.9.9:1"

[[hook]]
on = ["pool_failover", "backend_down", "pool_failover"]
webhook = "http://127.0.0.1:8080/warren-events"
timeout = "10s"
"#;
        let config = parse(text).unwrap();
        let admin = config.admin.as_ref().unwrap();
        assert_eq!(admin.listen, "[::]:9901".parse().unwrap());
        assert_eq!(
            admin.token_file.as_deref(),
            Some(Path::new("/etc/warren/token"))
        );
        let l = &config.listeners[0];
        assert_eq!(l.listen, "0.0.0.0:5672".parse().unwrap());
        assert_eq!(l.connect_timeout, Duration::from_secs(5));
        assert_eq!(l.idle_timeout, Duration::from_secs(120));
        assert_eq!(l.next_upstream_tries, 2);
        assert_eq!(l.next_upstream_timeout, Some(Duration::from_secs(90)));
        assert_eq!(l.max_connections, 500);
        assert_eq!(l.proxy_protocol, ProxyProtocol::V2);
        assert!(l.accept_proxy_protocol);
        assert_eq!(
            config
                .pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["rabbitmq", "unused"]
        );
        let pool = config.pool("rabbitmq").unwrap();
        assert_eq!(pool.balance, Balance::LeastConn);
        assert_eq!(pool.min_available, 2);
        assert_eq!(pool.primary_count(), 2);
        let health = pool.health.as_ref().unwrap();
        assert_eq!(
            health.probe,
            Probe::Http {
                url: ProbeUrl::parse(
                    "http://{host}:15672/api/health/checks/ready-to-serve-clients"
                )
                .unwrap(),
                user: Some("monitor".to_string()),
                password: Some(Secret("hunter2".to_string())),
                password_file: None,
            }
        );
        assert_eq!(
            (health.interval, health.timeout),
            (Duration::from_secs(5), Duration::from_millis(250))
        );
        assert_eq!((health.rise, health.fall), (1, 5));
        let a = &pool.backends[0];
        assert_eq!(
            (a.host.as_str(), a.port, a.weight),
            ("rabbit-a.internal", 5672, 3)
        );
        assert_eq!(a.addr, "10.1.0.1:5672".parse().unwrap());
        let b = &pool.backends[1];
        assert_eq!(
            (b.host.as_str(), b.addr),
            ("fd00::2", "[fd00::2]:5672".parse().unwrap())
        );
        let c = &pool.backends[2];
        assert_eq!(
            (c.addr, c.backup),
            ("127.0.0.1:5673".parse().unwrap(), true)
        );
        assert_eq!(
            config.hooks[0],
            HookConfig {
                on: vec![HookEvent::PoolFailover, HookEvent::BackendDown],
                action: HookAction::Webhook(
                    HttpUrl::parse("http://127.0.0.1:8080/warren-events").unwrap()
                ),
                timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(
            config.summary(),
            "test.toml: ok: 1 listener, 2 pools, 4 backends, 1 hook"
        );
        assert!(
            !format!("{config:?}").contains("hunter2"),
            "Debug leaks the password"
        );
    }

    #[test]
    fn amqp_login_uri_is_kept_secret() {
        let config = parse(&appended(
            "[pool.rabbitmq.health]\nkind = \"amqp_login\"\nuri = \"amqp://u:s3cret@{host}:{port}/%2f\"",
        ))
        .unwrap();
        let probe = &config.pools[0].health.as_ref().unwrap().probe;
        assert_eq!(
            *probe,
            Probe::AmqpLogin {
                uri: Secret("amqp://u:s3cret@{host}:{port}/%2f".to_string())
            }
        );
        assert_eq!(format!("{probe:?}"), "AmqpLogin { uri: Secret(***) }");
    }

    #[test]
    fn parse_errors_carry_line_column_and_key_path() {
        // (text, the line the error is on, column, key path, message fragment)
        let cases: Vec<(String, &str, usize, Option<&str>, &str)> = vec![
            (
                replaced(
                    "addr = \"10.0.0.2:5672\"",
                    "addr = \"10.0.0.2:5672\"\nweigth = 2",
                ),
                "weigth = 2",
                1,
                Some("pool.rabbitmq.backend[1].weigth"),
                "unknown field `weigth`, expected one of `name`, `addr`, `weight`, `backup`",
            ),
            (
                appended("[pool.rabbitmq.health]\nkind = \"tcp\"\nrise = \"2\""),
                "rise = \"2\"",
                8,
                Some("pool.rabbitmq.health.rise"),
                "invalid type: string \"2\", expected u32",
            ),
            (
                replaced("listen = \"0.0.0.0:5672\"", "listen = 0.0.0.0:5672"),
                "listen = 0.0.0.0:5672",
                13,
                Some("listener[0].listen"),
                "expected newline",
            ),
            (
                appended("[[listener]]\nname = \"second\""),
                "[[listener]]\nname = \"second\"",
                1,
                Some("listener[1]"),
                "missing field `listen`",
            ),
            (
                "frobnicate = 1\n".to_string(),
                "frobnicate",
                1,
                Some("frobnicate"),
                "unknown field `frobnicate`",
            ),
        ];
        for (text, marker, column, key, fragment) in cases {
            let line = text[..text.find(marker).unwrap()].matches('\n').count() + 1;
            match parse(&text) {
                Err(ConfigError::Parse {
                    line: l,
                    column: c,
                    key: k,
                    message,
                    ..
                }) => {
                    assert_eq!((l, c, k.as_deref()), (line, column, key), "{message}");
                    assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
                    assert!(!message.contains('\n'));
                }
                Err(other) => panic!("expected a parse error, got {other}"),
                Ok(_) => panic!("expected a parse error for:\n{text}"),
            }
        }
    }

    #[test]
    fn split_host_port_cases() {
        let ok = [
            ("10.0.0.1:5672", "10.0.0.1", 5672),
            ("rabbit-a:5672", "rabbit-a", 5672),
            ("[::1]:5672", "::1", 5672),
            ("*:1", "*", 1),
            ("h:65535", "h", 65535),
        ];
        for (input, host, port) in ok {
            assert_eq!(
                split_host_port(input),
                Ok(HostPort {
                    host: host.to_string(),
                    port
                }),
                "{input}"
            );
        }
        let bad = [
            ("", "empty address"),
            (":5672", "missing host"),
            ("h:", "missing port"),
            ("[::1]", "missing port after ']'"),
            ("[::1:5672", "missing ']'"),
            ("[nope]:1", "not an IPv6 address"),
            ("h:99999999999", "out of range"),
            (
                "fe80::1",
                "need brackets and a port: write \"[fe80::1]:PORT\"",
            ),
            ("a:b:c", "too many ':'"),
        ];
        for (input, fragment) in bad {
            let err = split_host_port(input).unwrap_err();
            assert!(
                err.contains(fragment),
                "{input}: {err:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn parse_duration_cases() {
        let ok = [
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
        ];
        for (input, expected) in ok {
            assert_eq!(parse_duration(input), Ok(expected), "{input}");
        }
        for input in ["", "5", "5 parsecs", "-1s", "s"] {
            let err = parse_duration(input).unwrap_err();
            assert!(err.contains("like \"5s\""), "{input}: {err}");
        }
    }

    #[test]
    fn quick_start_builds_one_listener_and_pool() {
        let backends = vec!["10.0.0.1:5672".to_string(), "[::1]:5673".to_string()];
        let config = quick_start_with("127.0.0.1:5672", &backends, &fake_resolve).unwrap();
        assert_eq!(config.source, None);
        assert_eq!(config.admin, None);
        assert_eq!(
            config.listeners,
            [ListenerConfig::default_for(
                "default",
                "127.0.0.1:5672".parse().unwrap(),
                "default"
            )]
        );
        let pool = config.pool("default").unwrap();
        assert_eq!(
            (pool.balance, pool.health.as_ref()),
            (Balance::RoundRobin, None)
        );
        let names: Vec<&str> = pool.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["backend-1", "backend-2"]);
        assert_eq!(pool.backends[1].host, "::1");
        assert_eq!(
            config.summary(),
            "command line: ok: 1 listener, 1 pool, 2 backends, 0 hooks"
        );
    }

    #[test]
    fn quick_start_problems_name_the_flags() {
        let err = quick_start_with("localhost:5672", &["10.0.0.1".to_string()], &fake_resolve)
            .unwrap_err();
        assert_eq!(
            err.problems(),
            [
                "command line: --listen = \"localhost:5672\": must be an IP address, not a host \
                 name: write \"0.0.0.0:5672\" for every address or \"127.0.0.1:5672\" for this \
                 machine only",
                "command line: --backend = \"10.0.0.1\": missing port; expected HOST:PORT, e.g. \
                 \"10.0.0.1:5672\", \"rabbit-a:5672\" or \"[::1]:5672\"",
            ]
        );
        let err = quick_start_with("127.0.0.1:5672", &[], &fake_resolve).unwrap_err();
        assert_eq!(err.problems().len(), 1);
        assert!(err
            .to_string()
            .starts_with("command line: --backend: the pool has no backends"));
    }

    #[test]
    fn loopback_admin_needs_no_token_but_others_do_with_one() {
        for listen in ["127.0.0.1:9901", "[::1]:9901"] {
            let config = parse(&appended(&format!("[admin]\nlisten = \"{listen}\""))).unwrap();
            assert_eq!(config.admin.unwrap().listen, listen.parse().unwrap());
        }
        let config = parse(&appended(
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = \"/etc/warren/token\"",
        ))
        .unwrap();
        assert!(config.admin.unwrap().token_file.is_some());
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nb = \"é\"x";
        let offset = text.find('x').unwrap();
        assert_eq!(line_col(text.as_bytes(), offset), (2, 8));
        assert_eq!(line_col(text.as_bytes(), 0), (1, 1));
        assert_eq!(line_col(text.as_bytes(), 10_000), (2, 9));
    }

    #[test]
    fn names_round_trip() {
        for event in HookEvent::ALL {
            assert_eq!(lookup::<HookEvent>(event.as_str()), Some(event));
        }
        for balance in Balance::ALL {
            assert_eq!(lookup::<Balance>(balance.as_str()), Some(*balance));
        }
        for pp in <ProxyProtocol as Named>::ALL {
            assert_eq!(lookup::<ProxyProtocol>(pp.as_str()), Some(*pp));
        }
    }
}
