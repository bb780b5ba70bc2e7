//! The command line: `warren run`, `warren check`, `warren ctl`, `warren import-nginx`, `--version`. Parsing is clap's; each
//! subcommand turns its flags into library calls. This is the binary's edge: errors become a
//! message on stderr and an exit code here, nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::ctl;
use crate::server::{Options, Server};

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
    },
    /// Talk to a running warren through its admin API: status, drain, undrain, reload.
    Ctl(ctl::CtlArgs),
    /// Translate an NGINX config's `stream` block into warren TOML on stdout; what does not
    /// translate is listed on stderr with file and line.
    ImportNginx {
        /// The NGINX config (nginx.conf); relative includes are read from its directory.
        file: PathBuf,
    },
}

/// Flags of `warren run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (see config/warren.toml).
    #[arg(long, short, conflicts_with_all = ["listen", "backend"])]
    pub config: Option<PathBuf>,
    /// Quick start without a file: the address to listen on, e.g. 127.0.0.1:5672.
    #[arg(long, requires = "backend", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Quick start: a backend address (repeat for each node), e.g. --backend 10.0.0.1:5672.
    #[arg(long, requires = "listen", value_name = "ADDR")]
    pub backend: Vec<String>,
    /// Worker threads of the data plane (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// How long open connections may finish after SIGTERM/SIGINT before they are closed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Never use splice(2); always copy through userspace.
    #[arg(long)]
    pub no_splice: bool,
    /// Run as the Windows service "warren" (set by windows/install.ps1; not for a console).
    #[cfg(windows)]
    #[arg(long)]
    pub service: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    #[cfg(unix)]
    if !matches!(cli.command, Command::Run(_)) {
        // Only `run` handles SIGHUP; the others keep its default action (end on hang-up).
        hold_sighup(false);
    }
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run(args) => run_server(args),
        Command::Ctl(args) => ctl::run(args),
        Command::ImportNginx { file } => crate::import_nginx::run(&file),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let problems = match config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                say(&mut std::io::stderr(), &format!("warning: {warning}"));
            }
            let problems = files_run_reads(&config);
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

fn load_for_run(args: &RunArgs) -> Result<Config, config::ConfigError> {
    match (&args.config, &args.listen) {
        (Some(path), _) => config::load(path),
        (None, Some(listen)) => config::quick_start(listen, &args.backend),
        (None, None) => config::load(std::path::Path::new(DEFAULT_CONFIG)),
    }
}

/// Where `warren run` looks for its config when given neither a file nor quick-start flags.
pub const DEFAULT_CONFIG: &str = "/etc/warren/warren.toml";

fn run_server(args: RunArgs) -> ExitCode {
    #[cfg(windows)]
    if args.service {
        return crate::windows_service::run(args);
    }
    match serve(args, CancellationToken::new(), None) {
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

/// Load the config, bind and serve until a stop signal, or until `shutdown` is cancelled (the
/// Windows service manager's stop); `Err` says why warren could not start. `lifecycle` hears
/// when the server is ready and stopping; under systemd (`NOTIFY_SOCKET`) systemd is told.
pub(crate) fn serve(
    args: RunArgs,
    shutdown: CancellationToken,
    lifecycle: Option<crate::server::LifecycleHook>,
) -> Result<(), String> {
    // Before any thread exists: this reads and clears the environment.
    #[cfg(unix)]
    let from_systemd = crate::systemd::take_from_env().map_err(|e| e.to_string())?;
    let config = load_for_run(&args).map_err(|e| e.to_string())?;
    // The main thread only starts, reloads and stops the server; the data plane runs on its
    // own worker threads (see `workers`), the admin API and probes on the control thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    #[allow(unused_mut)]
    let mut options = Options {
        shutdown_grace: args.shutdown_grace,
        splice: !args.no_splice,
        config_path: config.source.clone(),
        lifecycle,
        workers: args
            .workers
            .unwrap_or_else(crate::workers::default_count)
            .max(1),
        ..Options::default()
    };
    #[cfg(unix)]
    if let Some(notifier) = &from_systemd.notifier {
        options.lifecycle = Some(notifier.hook());
        options.alive_every = from_systemd.watchdog;
    }
    runtime.block_on(async move {
        #[cfg(unix)]
        let bound = Server::bind_with_inherited(&config, options, from_systemd.inherited);
        #[cfg(not(unix))]
        let bound = Server::bind(&config, options);
        let server = bound.map_err(|e| e.to_string())?;
        // Handlers are installed before "warren started" is logged, so a supervisor that
        // signals as soon as it sees that line never hits the default (fatal) action.
        let signals =
            Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        // SIGHUP was held since `main` began (see `hold_sighup`); one sent while warren
        // started is delivered now, and reloads.
        #[cfg(unix)]
        hold_sighup(false);
        let close_now = server.routing().shutdown_token().clone();
        tokio::spawn(watch_signals(
            signals,
            shutdown.clone(),
            close_now,
            server.reloader(),
        ));
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %config.summary(),
            "warren started"
        );

        server.run(shutdown).await;
        Ok(())
    })
}

/// Block (`true`) or unblock SIGHUP for the calling thread. `main` blocks it first thing:
/// SIGHUP's default action ends the process, and a config manager may send one while warren
/// starts. Threads started meanwhile inherit the block, so a held SIGHUP goes to the main
/// thread once `run` unblocks it after installing its handler; hooks get a clean signal mask
/// from std's process spawn.
#[cfg(unix)]
pub fn hold_sighup(hold: bool) {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
    let how = if hold {
        SigmaskHow::SIG_BLOCK
    } else {
        SigmaskHow::SIG_UNBLOCK
    };
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    if let Err(e) = pthread_sigmask(how, Some(&set), None) {
        tracing::warn!(error = %e, "cannot change the signal mask for SIGHUP");
    }
}

/// The signals warren handles, registered with the runtime.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM/SIGINT stop gracefully; a second one during the grace period closes the open
/// connections at once (NGINX's fast shutdown). SIGHUP reloads the config file (a bad file is
/// logged and the running config stays).
#[cfg(unix)]
async fn watch_signals(
    signals: Signals,
    shutdown: CancellationToken,
    close_now: CancellationToken,
    reloader: crate::server::Reloader,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        let stop = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                if shutdown.is_cancelled() {
                    tracing::info!("SIGHUP while stopping: ignored");
                } else {
                    tracing::info!("SIGHUP: reloading the config file");
                    // The server logs the outcome; reloads queue up behind each other.
                    let reloader = reloader.clone();
                    tokio::spawn(async move { let _ = reloader.reload().await; });
                }
                continue;
            }
        };
        if shutdown.is_cancelled() {
            tracing::info!("{stop} again: closing the open connections now");
            close_now.cancel();
            return;
        }
        tracing::info!("{stop}: stopping gracefully");
        shutdown.cancel();
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }
}

#[cfg(not(unix))]
async fn watch_signals(
    _signals: Signals,
    shutdown: CancellationToken,
    _close_now: CancellationToken,
    _reloader: crate::server::Reloader,
) {
    match tokio::signal::ctrl_c().await {
        Ok(()) => {
            tracing::info!("Ctrl-C: stopping gracefully");
            shutdown.cancel();
        }
        // Without a console (a service) there may be no Ctrl-C to watch; the service manager
        // stops warren through `shutdown` instead, so this must not stop it.
        Err(e) => tracing::warn!(error = %e, "cannot watch Ctrl-C"),
    }
}
