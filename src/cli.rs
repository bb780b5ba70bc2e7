//! The command line: `warren run`, `warren check`, `warren ctl`, `warren upgrade`, `warren import-nginx`, `--version`. Parsing is clap's; each
//! subcommand turns its flags into library calls. This is the binary's edge: errors become a
//! message on stderr and an exit code here, nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::ctl;
use crate::run::RunArgs;

/// warren: a TCP load balancer for RabbitMQ clusters.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, propagate_version = true)]
pub struct Cli {
    /// Log level or filter (e.g. "info", "warn,warren=debug"); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Append logs to this file instead of stderr (a Windows service has no stderr).
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer.
    Run(RunArgs),
    /// Validate a config file and exit 0 (ok, one-line summary) or 1 (errors), like `nginx -t`.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print, instead of the summary, the rabbitmq.conf lines each node behind a
        /// `[pool.NAME.per_backend_listeners]` needs (`stream.advertised_host`,
        /// `stream.advertised_port`), one block per node; exit 1 when no pool has one.
        #[arg(long)]
        rabbitmq_config: bool,
    },
    /// Talk to a running warren through its admin API: status, drain, undrain, reload.
    Ctl(ctl::CtlArgs),
    /// Upgrade the running warren to the binary now installed at its path, refusing no connect
    /// and closing no connection (as `warren ctl upgrade-self`, or SIGUSR2): exits 0 once the
    /// new process holds every connection, 1 naming why it did not (the running process then
    /// serves on with every connection).
    Upgrade(UpgradeArgs),
    /// Translate an NGINX config's `stream` block into warren TOML on stdout; what does not
    /// translate is listed on stderr with file and line.
    ImportNginx {
        /// The NGINX config (nginx.conf); relative includes are read from its directory.
        file: PathBuf,
    },
}

/// Flags of `warren upgrade`: where the running warren's admin API is.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The running warren's admin API, as http://HOST:PORT.
    #[arg(long, env = "WARREN_ADMIN", value_name = "URL", default_value = ctl::DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// A file holding the bearer token; else $WARREN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    #[cfg(unix)]
    if !matches!(cli.command, Command::Run(_)) {
        // Only `run` handles SIGHUP; the others keep its default action (end on hang-up).
        crate::run::hold_sighup(false);
    }
    match cli.command {
        Command::Check {
            config,
            rabbitmq_config,
        } => check(&config, rabbitmq_config),
        Command::Run(args) => run_server(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Upgrade(args) => ctl::run(ctl::CtlArgs {
            admin: vec![args.admin],
            admin_file: None,
            token_file: args.token_file,
            json: args.json,
            poll_ms: ctl::DEFAULT_POLL_MS,
            command: ctl::CtlCommand::UpgradeSelf,
        }),
        Command::ImportNginx { file } => crate::import_nginx::run(&file),
    }
}

fn check(path: &std::path::Path, rabbitmq_config: bool) -> ExitCode {
    let problems = match config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                say(&mut std::io::stderr(), &format!("warning: {warning}"));
            }
            let problems = files_run_reads(&config);
            if problems.is_empty() && rabbitmq_config {
                return print_rabbitmq_config(&config);
            }
            if problems.is_empty() {
                say(&mut std::io::stdout(), &config.summary());
                return ExitCode::SUCCESS;
            }
            problems
        }
        Err(e) => vec![e.to_string()],
    };
    for problem in problems {
        say(&mut std::io::stderr(), &problem);
    }
    ExitCode::FAILURE
}

/// `check --rabbitmq-config`: the nodes' rabbitmq.conf lines on stdout, the summary on stderr.
fn print_rabbitmq_config(config: &Config) -> ExitCode {
    let Some(lines) = config::rabbitmq_conf(config) else {
        say(
            &mut std::io::stderr(),
            &format!(
                "{}: no pool has [pool.NAME.per_backend_listeners]: no node needs \
                 stream.advertised_host or stream.advertised_port",
                config
                    .source
                    .as_deref()
                    .map_or_else(String::new, |s| s.display().to_string())
            ),
        );
        return ExitCode::FAILURE;
    };
    say(&mut std::io::stderr(), &config.summary());
    let _ = std::io::Write::write_all(&mut std::io::stdout(), lines.as_bytes());
    ExitCode::SUCCESS
}

/// The files `warren run` reads besides the config (the admin token, the state file), read
/// now so that `check` refuses what `run` would. Each problem is one line naming the file.
fn files_run_reads(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(admin) = &config.admin else {
        return problems;
    };
    let source = config
        .source
        .as_deref()
        .map_or_else(String::new, |s| format!("{}: ", s.display()));
    if let Some(token) = &admin.token_file {
        if let Err(e) = crate::server::read_token(token) {
            problems.push(format!("{source}{e}"));
        }
    }
    if let Some(state) = &admin.state_file {
        if let Err(e) = crate::drain::check_state_file(state) {
            problems.push(format!("{source}admin: {e}"));
        }
    }
    problems
}

fn run_server(args: RunArgs) -> ExitCode {
    #[cfg(windows)]
    if args.service {
        return crate::windows_service::run(args);
    }
    match crate::run::serve(args, CancellationToken::new(), None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&mut std::io::stderr(), &e);
            ExitCode::FAILURE
        }
    }
}

/// One line to stdout or stderr; a closed pipe there is ignored (`println!` would panic and
/// turn exit code 1 into 101).
fn say(out: &mut impl std::io::Write, line: &str) {
    let _ = writeln!(out, "{line}");
}
