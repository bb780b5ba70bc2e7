//! `warren ctl`: the operator's client of the admin API (`status`, `drain`, `undrain`,
//! `reload`, and `upgrade`, the rolling upgrade in [`upgrade`]). It owns the requests to a running warren (sent through [`crate::http_client`]), the polling behind `--wait` and
//! `--wait-healthy`, and the human rendering of `/v1/status`. It talks to warren only through
//! the admin API's JSON contract ([`crate::api`], the types the server writes): it must not read the config, the state file or anything else
//! of the server's. Exit codes: 0 done, 1 refused or failed, 2 usage.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Args, Subcommand};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::api::{
    AdminState, BackendStatus, DrainAnswer, DrainRequest, ErrorBody, Health, ProbeStatus,
    RefusalReason, ReloadAnswer, Status,
};
use crate::config;
use crate::http_client::{BodyRead, HttpError, HttpUrl, Request, UrlError};

mod upgrade;

/// `--admin` when neither the flag nor `WARREN_ADMIN` is given: `config::DEFAULT_ADMIN_LISTEN`.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// How often `--wait` and `--wait-healthy` ask for `/v1/status` unless `WARREN_CTL_POLL_MS` says.
pub const DEFAULT_POLL_MS: u64 = 500;

/// How long `drain --wait` keeps waiting past the drain deadline: the server closes the
/// remaining connections at the deadline, so the backend should be drained well before this.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// How long `drain --wait` waits when no deadline was given: connections may live for hours,
/// but an unattended rolling upgrade should not hang forever.
const WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(60 * 60);

/// One request (connect, send, whole answer) to the admin API. It answers from memory, except
/// a drain's quorum check (at most 5 s), so anything slower means the process is wedged.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds the memory an unexpected answer can take (a status of thousands of backends is far less).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The table's width when `COLUMNS` is unset (as when the output is piped).
const DEFAULT_WIDTH: usize = 120;

/// The LAST PROBE column keeps at least this many characters, even in a narrow terminal.
const MIN_PROBE_WIDTH: usize = 24;

/// Flags of `warren ctl`, shared by its subcommands.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin API, as http://HOST:PORT (the [admin] listen address of the running warren).
    /// Repeat it (or give a comma-separated list in WARREN_ADMIN) for a pair of warren
    /// instances: every command then goes to each of them.
    #[arg(long, global = true, env = "WARREN_ADMIN", value_name = "URL", value_delimiter = ',', default_value = DEFAULT_ADMIN_URL)]
    pub admin: Vec<String>,
    /// A file listing admin API URLs, one per line (`#` starts a comment); used instead of --admin.
    #[arg(long, global = true, value_name = "FILE")]
    pub admin_file: Option<PathBuf>,
    /// A file holding the bearer token (surrounding whitespace is ignored); else $WARREN_TOKEN.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answers instead of text (progress of --wait goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Milliseconds between polls of --wait and --wait-healthy (tests shorten it).
    #[arg(long, global = true, hide = true, env = "WARREN_CTL_POLL_MS", default_value_t = DEFAULT_POLL_MS)]
    pub poll_ms: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `warren ctl` asks the running warren.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Show listeners, pools and backends: health, admin state, connections, last probe.
    Status,
    /// Stop sending new connections to a backend; open ones continue (until --deadline).
    Drain {
        /// The backend's name (as in the config).
        name: String,
        /// The backend's pool; needed only when the name is in more than one pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Close the connections still open after this long, e.g. "5m".
        #[arg(long, value_name = "DURATION", value_parser = parse_deadline)]
        deadline: Option<Deadline>,
        /// Wait until the backend has no connection left (and say how many remain meanwhile).
        #[arg(long)]
        wait: bool,
        /// Drain even if fewer than the pool's min_available backends would stay available.
        #[arg(long)]
        force: bool,
    },
    /// Let a drained (or draining) backend take new connections again.
    Undrain {
        /// The backend's name (as in the config).
        name: String,
        /// The backend's pool; needed only when the name is in more than one pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Wait until the backend is up by its health checks and available.
        #[arg(long)]
        wait_healthy: bool,
        /// How long --wait-healthy waits before giving up.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Make warren re-read its config file (the running config stays if the new one is invalid).
    Reload,
    /// Rolling upgrade of a pool, one backend at a time: check the pool is healthy, drain (refused
    /// while RabbitMQ says the node is quorum-critical), run COMMAND, wait until the backend
    /// passes `rise` probes, undrain, next. A failing step stops the walk and leaves that
    /// backend drained.
    Upgrade {
        /// The pool to walk.
        #[arg(long, value_name = "POOL")]
        pool: String,
        /// Run for each backend with `sh -c` (`cmd /C` on Windows); {name}, {addr}, {host} and
        /// {port} are replaced by the backend's. It should stop, upgrade and start the node.
        #[arg(long, value_name = "COMMAND")]
        run: String,
        /// Close the connections still open this long after a drain started.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_deadline)]
        deadline: Deadline,
        /// Drain even while a node is quorum-critical or min_available objects.
        #[arg(long)]
        force: bool,
        /// Continue a walk that stopped: start at this backend (it may be drained already).
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// How long COMMAND may run for one backend before it is killed.
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
        command_timeout: Duration,
        /// How long a backend may take to pass its probes again after COMMAND.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
        healthy_timeout: Duration,
    },
}

/// A `--deadline` as typed (sent to the server verbatim) and as a duration (to bound `--wait`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The text sent in the drain request's `deadline` field.
    pub text: String,
    /// The same, parsed.
    pub duration: Duration,
}

fn parse_deadline(s: &str) -> Result<Deadline, String> {
    let duration = config::parse_duration(s)?;
    Ok(Deadline {
        text: s.trim().to_string(),
        duration,
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// What went wrong in `warren ctl`; every variant is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// `--admin` is not an http URL.
    #[error("invalid admin URL {url:?}: {reason}")]
    AdminUrl { url: String, reason: String },
    /// `--token-file` could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token (file or `WARREN_TOKEN`) is empty or not sendable in a header.
    #[error("the token from {from} {problem}")]
    BadToken { from: String, problem: &'static str },
    /// Nothing answered at the admin address.
    #[error("cannot connect to the admin API at {admin}: {source} (is warren running, with [admin] listen at this address?)")]
    Connect {
        admin: String,
        source: std::io::Error,
    },
    /// The admin API took longer than [`REQUEST_TIMEOUT`].
    #[error("the admin API at {admin} did not answer {what} within {}", humantime::format_duration(*timeout))]
    Timeout {
        admin: String,
        what: String,
        timeout: Duration,
    },
    /// The HTTP exchange broke (connection reset, malformed answer).
    #[error("HTTP exchange with the admin API at {admin} failed: {reason}")]
    Http { admin: String, reason: String },
    /// 401 with a token: the server does not accept it.
    #[error("the admin API refused the token (HTTP 401): {message}")]
    TokenRefused { message: String },
    /// 401 without a token: the server wants one.
    #[error("the admin API requires a token (HTTP 401): pass --token-file FILE or set WARREN_TOKEN ({message})")]
    TokenMissing { message: String },
    /// Any other 4xx/5xx: the server's `{"error": ...}` text.
    #[error("{what} {} (HTTP {status}): {message}", if status.is_client_error() { "refused" } else { "failed" })]
    Refused {
        what: String,
        status: StatusCode,
        message: String,
        /// What refused a drain, when the server names it (the quorum check).
        reason: Option<RefusalReason>,
    },
    /// A 2xx whose body is not the contract's JSON.
    #[error("unexpected answer to {what}: {reason}")]
    BadAnswer { what: String, reason: String },
    /// The backend name is in several pools and `--pool` was not given (a usage error).
    #[error("backend {name} is in pools {}: pass --pool", pools.join(", "))]
    Ambiguous { name: String, pools: Vec<String> },
    /// No pool has a backend of this name.
    #[error("no backend {name} (pools: {})", pools.join(", "))]
    UnknownBackend { name: String, pools: Vec<String> },
    /// The backend disappeared from its pool while waiting (a reload removed it).
    #[error("backend {name} is no longer in pool {pool} (was the config reloaded?)")]
    Vanished { pool: String, name: String },
    /// A wait ended without reaching its goal (cap reached, or someone else changed the state).
    #[error("{0}")]
    GaveUp(String),
    /// `--admin-file` could not be read or lists nothing.
    #[error("cannot use the admin file {}: {reason}", path.display())]
    AdminFile { path: PathBuf, reason: String },
    /// With several instances, some failed (each was reported on its own line).
    #[error("failed on {} of {total} instances: {}", failed.len(), failed.join(", "))]
    Instances {
        failed: Vec<String>,
        total: usize,
        /// The worst exit code among them.
        code: u8,
    },
}

impl CtlError {
    /// The process exit code: 2 for usage errors, 1 for everything refused or failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::AdminUrl { .. } | CtlError::Ambiguous { .. } => 2,
            CtlError::Instances { code, .. } => *code,
            _ => 1,
        }
    }

    /// Whether the server refused a drain because RabbitMQ calls the node quorum-critical.
    pub fn is_quorum_critical(&self) -> bool {
        matches!(
            self,
            CtlError::Refused {
                reason: Some(RefusalReason::QuorumCritical),
                ..
            }
        )
    }
}

/// Run `warren ctl`; returns the process exit code. Errors go to stderr as `warren ctl: ...`.
pub fn run(args: CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(args: CtlArgs) -> Result<(), CtlError> {
    let token = read_token(args.token_file.as_deref())?;
    let urls = match &args.admin_file {
        Some(file) => read_admin_file(file)?,
        None => args.admin.clone(),
    };
    let clients = urls
        .iter()
        .map(|url| Client::new(url, token.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    // Below 10 ms a poll loop only burns the server's CPU.
    let poll = Duration::from_millis(args.poll_ms.max(10));
    let command = args.command;
    if let [client] = clients.as_slice() {
        let out = Output::new(args.json, None);
        return execute_one(client, &out, command, poll).await;
    }
    if let CtlCommand::Upgrade { .. } = command {
        let out = Output::new(args.json, None);
        return execute_upgrade(&clients, &out, command, poll).await;
    }
    every_instance(clients, args.json, command, poll).await
}

/// Run `command` on every instance at once (drains start together, so clients closed by one
/// instance cannot reconnect through the other to the node being drained); report each.
async fn every_instance(
    clients: Vec<Client>,
    json: bool,
    command: CtlCommand,
    poll: Duration,
) -> Result<(), CtlError> {
    let total = clients.len();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let command = command.clone();
        tasks.spawn(async move {
            let out = Output::new(json, Some(client.admin.clone()));
            let result = execute_one(&client, &out, command, poll).await;
            (i, client.admin, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.expect("ctl tasks do not panic"));
    }
    results.sort_by_key(|(i, _, _)| *i);
    let mut failed = Vec::new();
    let mut code = 1;
    for (_, admin, result) in results {
        match result {
            Ok(()) => eprintln!("[{admin}] ok"),
            Err(e) => {
                eprintln!("[{admin}] failed: {e}");
                code = code.max(e.exit_code());
                failed.push(admin);
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(CtlError::Instances {
        failed,
        total,
        code,
    })
}

/// The admin URLs of `--admin-file`: one per line, blank lines and `#` comments ignored.
fn read_admin_file(file: &std::path::Path) -> Result<Vec<String>, CtlError> {
    let text = std::fs::read_to_string(file).map_err(|source| CtlError::AdminFile {
        path: file.to_path_buf(),
        reason: source.to_string(),
    })?;
    let urls: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(CtlError::AdminFile {
            path: file.to_path_buf(),
            reason: "it lists no admin URL".into(),
        });
    }
    Ok(urls)
}

async fn execute_one(
    client: &Client,
    out: &Output,
    command: CtlCommand,
    poll: Duration,
) -> Result<(), CtlError> {
    match command {
        CtlCommand::Status => status(client, out).await,
        CtlCommand::Drain {
            name,
            pool,
            deadline,
            wait,
            force,
        } => {
            let pool = resolve_pool(client, &name, pool).await?;
            let drain = BackendDrain {
                pool: &pool,
                name: &name,
                deadline: deadline.as_ref(),
                force,
            };
            drain_backend(client, out, drain, wait, poll).await
        }
        CtlCommand::Undrain {
            name,
            pool,
            wait_healthy,
            timeout,
        } => {
            let pool = resolve_pool(client, &name, pool).await?;
            undrain_backend(client, out, &pool, &name).await?;
            if wait_healthy {
                wait_healthy_for(client, out, &pool, &name, timeout, poll).await?;
            }
            Ok(())
        }
        CtlCommand::Reload => reload(client, out).await,
        command @ CtlCommand::Upgrade { .. } => {
            execute_upgrade(std::slice::from_ref(client), out, command, poll).await
        }
    }
}

async fn execute_upgrade(
    clients: &[Client],
    out: &Output,
    command: CtlCommand,
    poll: Duration,
) -> Result<(), CtlError> {
    let CtlCommand::Upgrade {
        pool,
        run,
        deadline,
        force,
        from,
        command_timeout,
        healthy_timeout,
    } = command
    else {
        unreachable!("called for upgrade only");
    };
    let plan = upgrade::Plan {
        pool,
        run,
        deadline,
        force,
        from,
        command_timeout,
        healthy_timeout,
    };
    upgrade::upgrade(clients, out, &plan, poll).await
}

/// The token from `--token-file` (which wins) or `WARREN_TOKEN`; `None` when neither is set.
fn read_token(file: Option<&std::path::Path>) -> Result<Option<HeaderValue>, CtlError> {
    let (token, from) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CtlError::TokenFile {
                path: path.to_path_buf(),
                source,
            })?;
            (text, format!("--token-file {}", path.display()))
        }
        None => match std::env::var("WARREN_TOKEN") {
            Ok(text) if !text.trim().is_empty() => (text, "WARREN_TOKEN".to_string()),
            _ => return Ok(None),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(CtlError::BadToken {
            from,
            problem: "is empty",
        });
    }
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CtlError::BadToken {
            from,
            problem: "has characters an HTTP header cannot carry",
        })?;
    // Keeps the token out of any Debug output of the request.
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Where results go: stdout, except that in `--json` mode stdout carries only JSON documents
/// and the human progress lines move to stderr.
struct Output {
    json: bool,
    /// `[URL] ` before every line when several instances answer.
    prefix: String,
}

impl Output {
    fn new(json: bool, admin: Option<String>) -> Output {
        Output {
            json,
            prefix: admin.map(|a| format!("[{a}] ")).unwrap_or_default(),
        }
    }

    /// A human line: the result in text mode, progress in JSON mode.
    fn say(&self, text: &str) {
        let mut lines = String::new();
        for line in text.lines() {
            let _ = writeln!(lines, "{}{line}", self.prefix);
        }
        let lines = lines.trim_end();
        if self.json {
            eprintln!("{lines}");
        } else {
            print_stdout(lines);
        }
    }

    /// In `--json` mode, the API's answer, pretty (as `{"admin": URL, "answer": ...}` when
    /// several instances answer); nothing in text mode.
    fn json(&self, value: &Value) {
        if !self.json {
            return;
        }
        if self.prefix.is_empty() {
            print_stdout(&pretty(value));
        } else {
            let admin = self.prefix.trim().trim_matches(['[', ']']);
            print_stdout(&serde_json::json!({ "admin": admin, "answer": value }).to_string());
        }
    }
}

/// `println!` panics when stdout is a closed pipe (`warren ctl status | head -1`).
fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn status(client: &Client, out: &Output) -> Result<(), CtlError> {
    let raw = client.get_json("/v1/status", "status").await?;
    if out.json {
        out.json(&raw);
        return Ok(());
    }
    let status = decode::<Status>(raw, "status")?;
    print_stdout(render_status(&status, SystemTime::now(), terminal_width()).trim_end());
    Ok(())
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&w: &usize| w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The pool of backend `name`: `--pool` if given, else the only pool that has it.
async fn resolve_pool(
    client: &Client,
    name: &str,
    pool: Option<String>,
) -> Result<String, CtlError> {
    if let Some(pool) = pool {
        return Ok(pool);
    }
    let status = decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
    pool_of(&status, name)
}

/// Pure half of [`resolve_pool`].
fn pool_of(status: &Status, name: &str) -> Result<String, CtlError> {
    let pools: Vec<String> = status
        .pools
        .iter()
        .filter(|p| p.backends.iter().any(|b| b.name == name))
        .map(|p| p.name.clone())
        .collect();
    match pools.len() {
        1 => Ok(pools.into_iter().next().unwrap_or_default()),
        0 => Err(CtlError::UnknownBackend {
            name: name.to_string(),
            pools: status.pools.iter().map(|p| p.name.clone()).collect(),
        }),
        _ => Err(CtlError::Ambiguous {
            name: name.to_string(),
            pools,
        }),
    }
}

/// One backend's drain as `warren ctl` was asked for it.
#[derive(Clone, Copy)]
struct BackendDrain<'a> {
    pool: &'a str,
    name: &'a str,
    deadline: Option<&'a Deadline>,
    force: bool,
}

/// The body of `POST .../drain`: `deadline` only when given, so the server's default applies.
fn drain_body(deadline: Option<&Deadline>, force: bool) -> Value {
    let request = DrainRequest {
        deadline: deadline.map(|d| d.text.clone()),
        force,
    };
    serde_json::to_value(request).expect("a drain request serializes")
}

async fn drain_backend(
    client: &Client,
    out: &Output,
    drain: BackendDrain<'_>,
    wait: bool,
    poll: Duration,
) -> Result<(), CtlError> {
    let open = start_drain(client, out, &drain).await?;
    match open {
        Some(open) if wait => wait_drained(client, out, &drain, open, poll).await,
        _ => Ok(()),
    }
}

/// Ask for the drain and report it; the connections still open, or `None` when none was.
async fn start_drain(
    client: &Client,
    out: &Output,
    drain: &BackendDrain<'_>,
) -> Result<Option<i64>, CtlError> {
    let BackendDrain {
        pool,
        name,
        deadline,
        force,
    } = *drain;
    let what = format!("drain of {name} (pool {pool})");
    let path = backend_path(pool, name, "drain");
    let raw = client
        .post_json(&path, Some(drain_body(deadline, force)), &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    let open = answer.active_connections;
    for warning in answer.warnings.iter().chain(&answer.persist_error) {
        out.say(&format!("warning: {warning}"));
    }
    if let Some(check) = &answer.quorum_check {
        out.say(&format!("quorum check of {name}: {check}"));
    }
    if answer.admin == AdminState::Drained {
        out.say(&format!(
            "drained {name} (pool {pool}): no connection was open"
        ));
        return Ok(None);
    }
    let mut line = format!("draining {name} (pool {pool}): {} open", connections(open));
    if let Some(at) = &answer.drain_deadline {
        let _ = write!(line, "; the rest are closed at {at}");
    }
    out.say(&line);
    Ok(Some(open))
}

/// Wait until a draining backend has no connection left (bounded by its deadline plus slack).
async fn wait_drained(
    client: &Client,
    out: &Output,
    drain: &BackendDrain<'_>,
    open: i64,
    poll: Duration,
) -> Result<(), CtlError> {
    let BackendDrain {
        pool,
        name,
        deadline,
        ..
    } = *drain;
    let cap = match deadline {
        Some(d) => d.duration.saturating_add(DEADLINE_SLACK),
        None => WAIT_WITHOUT_DEADLINE,
    };
    let mut last = open;
    let waiting = async {
        loop {
            tokio::time::sleep(poll).await;
            let status =
                decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
            let backend = find_backend(&status, pool, name)?;
            match backend.admin {
                AdminState::Drained => return Ok(()),
                AdminState::Active => {
                    return Err(CtlError::GaveUp(format!(
                        "{name} (pool {pool}) was undrained while waiting for it to drain"
                    )))
                }
                AdminState::Draining => {}
            }
            if backend.active_connections != last {
                last = backend.active_connections;
                out.say(&format!("{name}: {} left", connections(last)));
            }
        }
    };
    let outcome = tokio::time::timeout(cap, waiting).await;
    match outcome {
        Ok(Ok(())) => {
            out.say(&format!("{name} (pool {pool}) is drained"));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CtlError::GaveUp(format!(
            "{name} (pool {pool}) still had {} after {}; gave up waiting (it stays draining)",
            connections(last),
            humantime::format_duration(cap)
        ))),
    }
}

async fn undrain_backend(
    client: &Client,
    out: &Output,
    pool: &str,
    name: &str,
) -> Result<(), CtlError> {
    let what = format!("undrain of {name} (pool {pool})");
    let raw = client
        .post_json(&backend_path(pool, name, "undrain"), None, &what)
        .await?;
    out.json(&raw);
    let answer = decode::<DrainAnswer>(raw, &what)?;
    if let Some(e) = &answer.persist_error {
        out.say(&format!("warning: {e}"));
    }
    out.say(&format!("{name} (pool {pool}) is {}", answer.admin));
    Ok(())
}

async fn wait_healthy_for(
    client: &Client,
    out: &Output,
    pool: &str,
    name: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), CtlError> {
    let mut last_seen = Health::Unknown;
    let mut probed = false;
    let waiting = async {
        let mut last_line = String::new();
        loop {
            let status =
                decode::<Status>(client.get_json("/v1/status", "status").await?, "status")?;
            let backend = find_backend(&status, pool, name)?;
            // Without a probe, health stays "unknown" (which counts as available) for good.
            let probed_pool = status
                .pools
                .iter()
                .any(|p| p.name == pool && p.health_check.is_some());
            if backend.admin != AdminState::Active {
                return Err(CtlError::GaveUp(format!(
                    "{name} (pool {pool}) became {} while waiting for it to be healthy",
                    backend.admin
                )));
            }
            let healthy =
                backend.health == Health::Up || (!probed_pool && backend.health == Health::Unknown);
            if healthy && backend.available {
                return Ok(());
            }
            last_seen = backend.health;
            probed = backend.last_probe.is_some();
            let mut line = format!("{name}: health {}", backend.health);
            if let Some(probe) = &backend.last_probe {
                if !probe.reason.is_empty() {
                    let _ = write!(line, " (last probe: {})", probe.reason);
                }
            }
            if line != last_line {
                out.say(&line);
                last_line = line;
            }
            tokio::time::sleep(poll).await;
        }
    };
    let outcome = tokio::time::timeout(timeout, waiting).await;
    match outcome {
        Ok(Ok(())) => {
            out.say(&format!("{name} (pool {pool}) is up and available"));
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            // Without an active check a backend stays "unknown" (and available) forever.
            let hint = if probed {
                String::new()
            } else {
                format!("; no probe has run: does pool {pool} have a [pool.{pool}.health] check?")
            };
            Err(CtlError::GaveUp(format!(
                "{name} (pool {pool}) is not up after {} (health {last_seen}){hint}; it stays active and takes connections once healthy",
                humantime::format_duration(timeout)
            )))
        }
    }
}

async fn reload(client: &Client, out: &Output) -> Result<(), CtlError> {
    let raw = client.post_json("/v1/reload", None, "reload").await?;
    out.json(&raw);
    if !out.json {
        let answer = decode::<ReloadAnswer>(raw, "reload")?;
        out.say(&format!("reloaded: {}", answer.summary));
    }
    Ok(())
}

fn find_backend<'s>(
    status: &'s Status,
    pool: &str,
    name: &str,
) -> Result<&'s BackendStatus, CtlError> {
    status
        .pools
        .iter()
        .filter(|p| p.name == pool)
        .flat_map(|p| &p.backends)
        .find(|b| b.name == name)
        .ok_or_else(|| CtlError::Vanished {
            pool: pool.to_string(),
            name: name.to_string(),
        })
}

fn backend_path(pool: &str, name: &str, action: &str) -> String {
    format!(
        "/v1/pools/{}/backends/{}/{action}",
        encode_segment(pool),
        encode_segment(name)
    )
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so a typo'd name with a `/`
/// or a space cannot address another route.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn connections(n: i64) -> String {
    if n == 1 {
        "1 connection".to_string()
    } else {
        format!("{n} connections")
    }
}

// ---------------------------------------------------------------------------------------------
// Reading answers (the shapes are `crate::api`'s).

fn decode<T: serde::de::DeserializeOwned>(raw: Value, what: &str) -> Result<T, CtlError> {
    serde_json::from_value(raw).map_err(|e| CtlError::BadAnswer {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering `status` (pure: the clock and the width are parameters).

/// The text of `warren ctl status`: listeners, then per pool a header and an aligned table.
fn render_status(status: &Status, now: SystemTime, width: usize) -> String {
    let mut text = String::new();
    for l in &status.listeners {
        let _ = writeln!(
            text,
            "listener {} on {} -> pool {}: {}",
            l.name,
            l.listen,
            l.pool,
            connections(l.active_connections)
        );
    }
    for pool in &status.pools {
        if !text.is_empty() {
            text.push('\n');
        }
        let _ = writeln!(
            text,
            "pool {} ({}): {}/{} available, min_available {}",
            pool.name, pool.balance, pool.available, pool.total, pool.min_available
        );
        if pool.backends.is_empty() {
            text.push_str("  (no backends)\n");
            continue;
        }
        let mut rows = vec![[
            "NAME".to_string(),
            "ADDR".to_string(),
            "HEALTH".to_string(),
            "ADMIN".to_string(),
            "CONNS".to_string(),
            "LAST PROBE".to_string(),
        ]];
        for b in &pool.backends {
            let name = if b.backup {
                format!("{} (backup)", b.name)
            } else {
                b.name.clone()
            };
            rows.push([
                name,
                b.addr.clone(),
                b.health.to_string(),
                admin_cell(b, now),
                b.active_connections.to_string(),
                probe_cell(b.last_probe.as_ref(), now),
            ]);
        }
        text.push_str(&render_table(&rows, width));
    }
    text
}

/// Left-aligned columns two spaces apart, indented under the pool; the last column is cut
/// with `…` so that a row fits `width` (it keeps at least [`MIN_PROBE_WIDTH`] characters).
fn render_table(rows: &[[String; 6]], width: usize) -> String {
    const INDENT: &str = "  ";
    const GAP: usize = 2;
    let mut widths = [0usize; 5];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let used = INDENT.len() + widths.iter().map(|w| w + GAP).sum::<usize>();
    let last_width = width.saturating_sub(used).max(MIN_PROBE_WIDTH);
    let mut text = String::new();
    for row in rows {
        text.push_str(INDENT);
        for (cell, w) in row.iter().zip(widths) {
            let pad = w + GAP - cell.chars().count();
            text.push_str(cell);
            text.extend(std::iter::repeat(' ').take(pad));
        }
        text.push_str(&cut(&row[5], last_width));
        text.push('\n');
    }
    text
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn admin_cell(b: &BackendStatus, now: SystemTime) -> String {
    match (&b.drain_deadline, b.admin) {
        (Some(deadline), AdminState::Draining) => match humantime::parse_rfc3339_weak(deadline) {
            Ok(at) => match at.duration_since(now) {
                Ok(left) => format!("draining ({} left)", short_duration(left)),
                Err(_) => "draining (deadline passed)".to_string(),
            },
            Err(_) => format!("draining (until {deadline})"),
        },
        _ => b.admin.to_string(),
    }
}

/// `up 1.2ms 5s ago: Connection.Start received…`, or `-` before the first probe.
fn probe_cell(probe: Option<&ProbeStatus>, now: SystemTime) -> String {
    let Some(p) = probe else {
        return "-".to_string();
    };
    let mut cell = String::from(if p.up { "up" } else { "down" });
    if let Some(ms) = p.duration_ms {
        let _ = write!(cell, " {}", probe_duration(ms));
    }
    if let Some(at) =
        p.at.as_deref()
            .and_then(|a| humantime::parse_rfc3339_weak(a).ok())
    {
        // A server clock slightly ahead of ours reads as "0s ago", not as an error.
        let age = now.duration_since(at).unwrap_or_default();
        let _ = write!(cell, " {} ago", short_duration(age));
    }
    if !p.reason.is_empty() {
        let _ = write!(cell, ": {}", p.reason);
    }
    cell
}

fn probe_duration(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "?".to_string()
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// One unit, rounded down: `5s`, `3m`, `2h`, `4d`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The admin API's address and credentials; one short-lived connection per request, so a
/// `--wait` survives nothing stale between polls.
#[derive(Clone)]
struct Client {
    /// The URL as the operator gave it, for messages.
    admin: String,
    url: HttpUrl,
    /// Prepended to `/v1/...` when warren's admin API sits behind a path prefix.
    prefix: String,
    token: Option<HeaderValue>,
}

impl Client {
    fn new(url: &str, token: Option<HeaderValue>) -> Result<Client, CtlError> {
        let invalid = |reason: &str| CtlError::AdminUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = url.trim();
        // `[admin] listen` is written without a scheme; accept it as the operator copies it.
        let full = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("http://{trimmed}")
        };
        let parsed = HttpUrl::parse(&full).map_err(|e| match e {
            UrlError::Https | UrlError::Scheme => invalid("only http:// is supported"),
            e => invalid(&e.to_string()),
        })?;
        if parsed.credentials().is_some() {
            return Err(invalid("credentials go in --token-file, not in the URL"));
        }
        if parsed.has_query() {
            return Err(invalid("a query string is not supported"));
        }
        Ok(Client {
            admin: trimmed.to_string(),
            prefix: parsed.path().trim_end_matches('/').to_string(),
            url: parsed,
            token,
        })
    }

    async fn get_json(&self, path: &str, what: &str) -> Result<Value, CtlError> {
        self.call(Method::GET, path, None, what).await
    }

    async fn post_json(
        &self,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, CtlError> {
        self.call(Method::POST, path, body, what).await
    }

    /// One request; a 2xx answer's JSON, or the error the status and body call for.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, CtlError> {
        let (status, bytes) = self.exchange(method, path, body, what).await?;
        if status == StatusCode::UNAUTHORIZED {
            let message = error_message(status, &bytes);
            return Err(if self.token.is_some() {
                CtlError::TokenRefused { message }
            } else {
                CtlError::TokenMissing { message }
            });
        }
        if !status.is_success() {
            return Err(CtlError::Refused {
                what: what.to_string(),
                status,
                message: error_message(status, &bytes),
                reason: serde_json::from_slice::<ErrorBody>(&bytes)
                    .ok()
                    .and_then(|e| e.reason),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| CtlError::BadAnswer {
            what: what.to_string(),
            reason: format!("not JSON ({e})"),
        })
    }

    /// One request on a fresh connection (connect, send, whole answer) within [`REQUEST_TIMEOUT`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(StatusCode, Bytes), CtlError> {
        let target = format!("{}{path}", self.prefix);
        let mut request = Request::new(method, &self.url)
            .path(&target)
            .user_agent(concat!("warren-ctl/", env!("CARGO_PKG_VERSION")))
            .read(BodyRead::Whole(MAX_ANSWER_BYTES));
        if let Some(token) = &self.token {
            request = request.authorization(token.clone());
        }
        if let Some(body) = body {
            request = request.json(body.to_string());
        }
        let http = |reason: String| CtlError::Http {
            admin: self.admin.clone(),
            reason,
        };
        match request.send_within(REQUEST_TIMEOUT).await {
            Ok(response) => Ok((response.status, response.body)),
            Err(HttpError::Timeout { .. }) => Err(CtlError::Timeout {
                admin: self.admin.clone(),
                what: what.to_string(),
                timeout: REQUEST_TIMEOUT,
            }),
            Err(HttpError::Resolve { source, .. } | HttpError::Connect { source, .. }) => {
                Err(CtlError::Connect {
                    admin: self.admin.clone(),
                    source,
                })
            }
            Err(HttpError::NoAddress { .. }) => Err(CtlError::Connect {
                admin: self.admin.clone(),
                source: std::io::Error::other("the host resolves to no address"),
            }),
            Err(
                HttpError::Handshake { source, .. }
                | HttpError::Exchange { source, .. }
                | HttpError::Closed { source, .. },
            ) => Err(http(source.to_string())),
            Err(HttpError::Body { source, .. }) => {
                Err(http(format!("reading the answer: {source}")))
            }
            Err(HttpError::TooLarge { .. }) => Err(http(
                "reading the answer: length limit exceeded".to_string(),
            )),
            Err(HttpError::Build { source, .. }) => Err(http(source.to_string())),
        }
    }
}

/// The server's `{"error": "..."}` text, else the start of the body, else the status's reason.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    // Read as a map, not as an [`ErrorBody`]: a newer server's unknown `reason` must not cost
    // the operator the message.
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(message)) = map.get("error") {
            return message.clone();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        cut(text, 300)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_fixture() -> Status {
        serde_json::from_value(serde_json::json!({
            "version": "0.1.0",
            "listeners": [{"name": "amqp", "listen": "0.0.0.0:5672", "pool": "rabbitmq", "active_connections": 3}],
            "pools": [
                {"name": "rabbitmq", "balance": "least_conn", "min_available": 1, "available": 2, "total": 3,
                 "backends": [
                    {"name": "rabbit-a", "addr": "10.0.0.1:5672", "weight": 1, "backup": false,
                     "health": "up", "admin": "active", "available": true, "active_connections": 1,
                     "health_changed_at": "2026-11-21T23:59:00Z", "drain_deadline": null,
                     "last_probe": {"up": true, "reason": "Connection.Start received (RabbitMQ 3.12.1)",
                                    "duration_ms": 1.2, "at": "2026-11-21T23:59:01Z"}},
                    {"name": "rabbit-bb", "addr": "10.0.0.22:5672", "weight": 1, "backup": true,
                     "health": "unknown", "admin": "draining", "available": false, "active_connections": 12,
                     "drain_deadline": "2026-11-22T00:04:06Z", "last_probe": null},
                    {"name": "shared", "addr": "10.0.0.3:5672", "health": "down", "admin": "drained",
                     "available": false, "active_connections": 0,
                     "last_probe": {"up": false, "reason": "connection refused", "duration_ms": 0.3, "at": "2026-11-21T22:00:06Z"}}
                 ]},
                {"name": "other", "balance": "round_robin", "min_available": 0, "available": 1, "total": 1,
                 "backends": [
                    {"name": "shared", "addr": "10.0.1.3:5672", "health": "up", "admin": "active",
                     "available": true, "active_connections": 0, "last_probe": null}
                 ]}
            ]
        }))
        .expect("fixture matches the contract")
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-21T23:59:06Z").unwrap()
    }

    #[test]
    fn default_admin_url_is_the_default_admin_listen() {
        assert_eq!(
            DEFAULT_ADMIN_URL,
            format!("http://{}", config::DEFAULT_ADMIN_LISTEN)
        );
    }

    #[test]
    fn status_renders_a_header_per_pool_and_aligned_rows() {
        let text = render_status(&status_fixture(), now(), 200);
        assert!(text.contains("listener amqp on 0.0.0.0:5672 -> pool rabbitmq: 3 connections\n"));
        assert!(text.contains("pool rabbitmq (least_conn): 2/3 available, min_available 1\n"));
        assert!(text.contains("pool other (round_robin): 1/1 available, min_available 0\n"));
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("NAME"))
            .unwrap();
        let columns: Vec<usize> = ["ADDR", "HEALTH", "ADMIN", "CONNS", "LAST PROBE"]
            .iter()
            .map(|c| lines[header].find(c).unwrap())
            .collect();
        let rows = &lines[header + 1..header + 4];
        let expected = [
            [
                "10.0.0.1:5672",
                "up",
                "active",
                "1",
                "up 1.2ms 5s ago: Connection.Start received (RabbitMQ 3.12.1)",
            ],
            ["10.0.0.22:5672", "unknown", "draining (5m left)", "12", "-"],
            [
                "10.0.0.3:5672",
                "down",
                "drained",
                "0",
                "down 0.3ms 1h ago: connection refused",
            ],
        ];
        for (row, cells) in rows.iter().zip(expected) {
            for (&at, cell) in columns.iter().zip(cells) {
                assert_eq!(&row[at..at + cell.len()], cell, "row {row:?}");
            }
        }
        assert!(rows[1].starts_with("  rabbit-bb (backup)  "));
    }

    #[test]
    fn last_probe_is_cut_to_fit_the_width() {
        let text = render_status(&status_fixture(), now(), 110);
        let row = text.lines().find(|l| l.contains("rabbit-a")).unwrap();
        assert_eq!(row.chars().count(), 110, "{row:?}");
        assert!(row.ends_with('…'));
        // A very narrow terminal still shows the start of the probe.
        let text = render_status(&status_fixture(), now(), 20);
        let row = text.lines().find(|l| l.contains("rabbit-a")).unwrap();
        assert!(row.contains("up 1.2ms 5s ago: Conn"), "{row:?}");
    }

    #[test]
    fn pool_is_resolved_only_when_the_name_is_unique() {
        let status = status_fixture();
        assert_eq!(pool_of(&status, "rabbit-a").unwrap(), "rabbitmq");
        let e = pool_of(&status, "shared").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "backend shared is in pools rabbitmq, other: pass --pool"
        );
        let e = pool_of(&status, "nope").unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "no backend nope (pools: rabbitmq, other)");
    }

    #[test]
    fn admin_urls() {
        let c = Client::new("http://127.0.0.1:9901", None).unwrap();
        assert_eq!(
            (c.url.host(), c.url.port(), c.prefix.as_str()),
            ("127.0.0.1", 9901, "")
        );
        let c = Client::new("[::1]:9901", None).unwrap();
        assert_eq!((c.url.host(), c.url.authority()), ("::1", "[::1]:9901"));
        let c = Client::new("http://lb.example/warren/", None).unwrap();
        assert_eq!((c.url.port(), c.prefix.as_str()), (80, "/warren"));
        for bad in [
            "https://127.0.0.1:9901",
            "http://u:p@127.0.0.1:1",
            "http://",
            "http://h:1/?x=1",
        ] {
            let e = Client::new(bad, None)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn drain_body_has_deadline_only_when_given() {
        assert_eq!(drain_body(None, false), serde_json::json!({"force": false}));
        let d = parse_deadline(" 5m ").unwrap();
        assert_eq!(d.duration, Duration::from_secs(300));
        assert_eq!(
            drain_body(Some(&d), true),
            serde_json::json!({"deadline": "5m", "force": true})
        );
        assert!(parse_deadline("soon").is_err());
    }

    #[test]
    fn error_messages_come_from_the_body() {
        let s = StatusCode::CONFLICT;
        assert_eq!(
            error_message(s, br#"{"error":"min_available"}"#),
            "min_available"
        );
        assert_eq!(error_message(s, b" plain text \n"), "plain text");
        assert_eq!(error_message(s, b""), "Conflict");
        let e = CtlError::Refused {
            what: "drain of a (pool p)".into(),
            status: s,
            message: "would leave 0".into(),
            reason: None,
        };
        assert_eq!(
            e.to_string(),
            "drain of a (pool p) refused (HTTP 409 Conflict): would leave 0"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            backend_path("rabbitmq", "rabbit-a.b_c", "drain"),
            "/v1/pools/rabbitmq/backends/rabbit-a.b_c/drain"
        );
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn short_durations() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (3600, "1h"),
            (90_000, "1d"),
        ] {
            assert_eq!(short_duration(Duration::from_secs(secs)), text);
        }
        assert_eq!(probe_duration(1.23), "1.2ms");
        assert_eq!(probe_duration(250.4), "250ms");
        assert_eq!(probe_duration(1500.0), "1.5s");
    }
}
