//! `warren ctl`: the operator's client of the admin API (`status`, `drain`, `undrain`,
//! `reload`, and `upgrade`). It talks to warren only through the admin API's JSON contract
//! (`crate::api`, the types the server writes): it must not read the config, the state file or
//! anything else of the server's. Exit codes: 0 done, 1 refused or failed, 2 usage.
//!
//! This file holds the flags, the errors, running a command against each `--admin` instance and
//! the output. The rest has a file each: `client` (requests through `crate::http_client`),
//! `commands` (status, drain and its `--wait`, undrain and `--wait-healthy`, reload), `render`
//! (the status table) and `upgrade` (the rolling upgrade walk).

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
    AdminState, BackendRef, BackendStatus, DrainAnswer, DrainRequest, DrainSetAnswer,
    DrainSetRequest, ErrorBody, FleetStatus, Health, PoolStatus, ProbeStatus, RebalanceAnswer,
    RebalanceState, RebalanceStatus, RefusalReason, ReloadAnswer, Status, UndrainRequest,
    UndrainSetRequest, UpgradeAnswer,
};
use crate::config;
use crate::http_client::{BodyRead, HttpError, HttpUrl, Request, UrlError};

mod client;
mod commands;
mod render;
mod upgrade;

#[cfg(test)]
mod tests;

use client::*;
use commands::*;
use render::*;

/// `--admin` when neither the flag nor `WARREN_ADMIN` is given: `config::DEFAULT_ADMIN_LISTEN`.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// How often `--wait` and `--wait-healthy` ask for `/v1/status` unless `WARREN_CTL_POLL_MS` says.
pub const DEFAULT_POLL_MS: u64 = 500;

/// How long `drain --wait` keeps waiting past the drain deadline: the server closes the
/// remaining connections at the deadline, so the backend should be drained well before this.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

/// The drain deadline `drain --wait` sends when no `--deadline` is given, as `upgrade` does:
/// AMQP clients keep their connections open for hours, so without one the wait would not end.
pub const WAIT_DEFAULT_DEADLINE: &str = "60s";

/// One request (connect, send, whole answer) to the admin API. It answers from memory, except
/// a drain's quorum check (at most 5 s), so anything slower means the process is wedged.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `upgrade-self`: the server answers once the new process is ready (at most
/// `handover::READY_TIMEOUT`, 30 s), plus a margin.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(40);

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
    /// Stop sending new connections to backends; open ones continue (until --deadline). Several
    /// names and --tag drain a set as one decision (quorum and min_available over the set).
    Drain {
        /// Backend names (as in the config); a name in several pools is drained in all of them.
        #[arg(value_name = "NAME", required_unless_present = "tag")]
        names: Vec<String>,
        /// Every backend with this tag (`tags` in the config); repeat for several.
        #[arg(long, value_name = "TAG")]
        tag: Vec<String>,
        /// Only backends of this pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Close the connections still open after this long, e.g. "5m". With --wait the
        /// default is 60s (AMQP clients do not close their connections by themselves); without
        /// --wait there is none: open connections stay until they close.
        #[arg(long, value_name = "DURATION", value_parser = parse_deadline)]
        deadline: Option<Deadline>,
        /// Wait until the backend has no connection left (and say how many remain meanwhile).
        #[arg(long)]
        wait: bool,
        /// Drain even if fewer than the pool's min_available backends would stay available.
        #[arg(long)]
        force: bool,
        /// With [fleet]: drain on this instance only, not through etcd (when etcd is down and
        /// fleet-wide changes are refused); it holds here until the backend's next change.
        #[arg(long)]
        local: bool,
    },
    /// Let drained (or draining) backends take new connections again.
    Undrain {
        /// Backend names (as in the config); a name in several pools is undrained in all.
        #[arg(value_name = "NAME", required_unless_present = "tag")]
        names: Vec<String>,
        /// Every backend with this tag; repeat for several.
        #[arg(long, value_name = "TAG")]
        tag: Vec<String>,
        /// Only backends of this pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Wait until the backend is up by its health checks and available.
        #[arg(long)]
        wait_healthy: bool,
        /// How long --wait-healthy waits before giving up.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// The return starts no rebalance, and the pools' automatic rebalancing waits 2
        /// minutes (a walk moving on to its next node; `warren ctl rebalance` ends the wait).
        #[arg(long)]
        no_rebalance: bool,
        /// With [fleet]: undrain on this instance only, not through etcd; it holds here until
        /// the backend's next change.
        #[arg(long)]
        local: bool,
    },
    /// Move connections from backends above their weighted fair share to those below: the
    /// excess is closed gracefully (AMQP 320 through the management API) at the pool's
    /// `max_closes_per_second`, and the clients reconnect through the balancer.
    Rebalance {
        /// The pool to rebalance.
        #[arg(value_name = "POOL")]
        pool: String,
    },
    /// Make warren re-read its config file (the running config stays if the new one is invalid).
    Reload,
    /// Upgrade warren itself (as `warren upgrade`): the running process starts the binary now
    /// installed at its path and hands it the listening sockets and every open connection.
    /// Fails, naming why, when the new binary does not start, load its config or take over
    /// (every connection then stays with the running process).
    UpgradeSelf,
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
    /// Not given: `drain --wait`'s [`WAIT_DEFAULT_DEADLINE`] (said in the progress line).
    pub default: bool,
}

impl Deadline {
    /// `drain --wait`'s deadline when none was given.
    fn wait_default() -> Deadline {
        Deadline {
            default: true,
            ..parse_deadline(WAIT_DEFAULT_DEADLINE).expect("the default deadline parses")
        }
    }
}

fn parse_deadline(s: &str) -> Result<Deadline, String> {
    let duration = config::parse_duration(s)?;
    Ok(Deadline {
        text: s.trim().to_string(),
        duration,
        default: false,
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
    /// No backend has this tag.
    #[error("no backend has tag {tag}{}", pool.as_ref().map(|p| format!(" in pool {p}")).unwrap_or_default())]
    UnknownTag { tag: String, pool: Option<String> },
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

/// Run `warren ctl`; returns the process exit code. Errors go to stderr as `warren ctl: ...`;
/// with `--json` they are also printed on stdout as one JSON object (see [`error_json`]), so a
/// script reading stdout always reads JSON.
pub fn run(args: CtlArgs) -> ExitCode {
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren ctl: cannot start the runtime: {e}");
            if json {
                print_stdout(
                    &error_json(&format!("cannot start the runtime: {e}"), 1, None).to_string(),
                );
            }
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren ctl: {e}");
            if json {
                let reason = match &e {
                    CtlError::Refused { reason, .. } => *reason,
                    _ => None,
                };
                print_stdout(&error_json(&e.to_string(), e.exit_code(), reason).to_string());
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// What `warren ctl --json` prints on stdout when it fails:
/// `{"error": "...", "exit_code": N}`, plus `"reason"` when the server named why it refused.
fn error_json(message: &str, exit_code: u8, reason: Option<RefusalReason>) -> Value {
    let mut body = serde_json::json!({ "error": message, "exit_code": exit_code });
    if let Some(reason) = reason {
        body["reason"] = serde_json::to_value(reason).expect("a refusal reason serializes");
    }
    body
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
            names,
            tag,
            pool,
            deadline,
            wait,
            force,
            local,
        } => {
            let targets = resolve_targets(client, &names, &tag, pool).await?;
            let deadline = match deadline {
                None if wait => Some(Deadline::wait_default()),
                given => given,
            };
            if let [(pool, name)] = targets.as_slice() {
                let drain = BackendDrain {
                    pool,
                    name,
                    deadline: deadline.as_ref(),
                    force,
                    local,
                };
                return drain_backend(client, out, drain, wait, poll).await;
            }
            let set = SetDrain {
                targets: &targets,
                deadline: deadline.as_ref(),
                force,
                local,
            };
            drain_set(client, out, set, wait, poll).await
        }
        CtlCommand::Undrain {
            names,
            tag,
            pool,
            wait_healthy,
            timeout,
            no_rebalance,
            local,
        } => {
            let targets = resolve_targets(client, &names, &tag, pool).await?;
            let how = Undrain {
                rebalance: !no_rebalance,
                local,
            };
            if let [(pool, name)] = targets.as_slice() {
                undrain_backend(client, out, pool, name, how).await?;
            } else {
                undrain_set(client, out, &targets, how).await?;
            }
            if wait_healthy {
                for (pool, name) in &targets {
                    wait_healthy_for(client, out, pool, name, timeout, poll).await?;
                }
            }
            Ok(())
        }
        CtlCommand::Rebalance { pool } => rebalance(client, out, &pool).await,
        CtlCommand::Reload => reload(client, out).await,
        CtlCommand::UpgradeSelf => upgrade_self(client, out).await,
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
