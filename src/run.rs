//! `warren run` as a process: its flags, loading the config, the runtime, the signals
//! (SIGTERM/SIGINT stop, a second one closes at once, SIGHUP reloads, SIGUSR2 upgrades warren
//! itself, see `crate::handover`) and serving until stopped. A process started by an upgrade
//! loads its config first and says why to the old process when it cannot take over.
//! Shared by the command line (`cli`) and the Windows service (`windows_service`), which only
//! add how they are started.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::server::{Options, Server};

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
    /// Quick start: serve the admin API (drain, status, /metrics, /readyz) on this address,
    /// e.g. 127.0.0.1:9901; without a token, so keep it on loopback.
    #[arg(long, requires = "listen", value_name = "ADDR")]
    pub admin: Option<String>,
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

fn load_for_run(args: &RunArgs) -> Result<Config, config::ConfigError> {
    match (&args.config, &args.listen) {
        (Some(path), _) => config::load(path),
        (None, Some(listen)) => config::quick_start(listen, &args.backend, args.admin.as_deref()),
        (None, None) => config::load(std::path::Path::new(DEFAULT_CONFIG)),
    }
}

/// Where `warren run` looks for its config when given neither a file nor quick-start flags.
pub const DEFAULT_CONFIG: &str = "/etc/warren/warren.toml";

/// Load the config, bind and serve until a stop signal, or until `shutdown` is cancelled (the
/// Windows service manager's stop); `Err` says why warren could not start. `lifecycle` hears
/// when the server is ready and stopping; under systemd (`NOTIFY_SOCKET`) systemd is told.
pub fn serve(
    args: RunArgs,
    shutdown: CancellationToken,
    lifecycle: Option<crate::lifecycle::LifecycleHook>,
) -> Result<(), String> {
    // Before a package can replace the file: the path an upgrade starts again.
    #[cfg(unix)]
    crate::handover::upgrade::record_launch();
    // Before any thread exists: these read and clear the environment.
    #[cfg(unix)]
    let from_systemd = crate::systemd::take_from_env().map_err(|e| e.to_string())?;
    #[cfg(unix)]
    let mut incoming =
        crate::handover::incoming::take_from_env().map_err(|e| format!("upgrade: {e}"))?;
    #[cfg(unix)]
    let (config, handed) = load_taking_over(&args, &mut incoming)?;
    #[cfg(not(unix))]
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
        options.handover_env = handover_env(notifier, from_systemd.watchdog);
    }
    runtime.block_on(async move {
        #[cfg(unix)]
        let bound = bind_taking_over(&config, options, from_systemd.inherited, handed, incoming);
        #[cfg(not(unix))]
        let bound = Server::bind(&config, options);
        let server = bound?;
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
            (server.reloader(), server.upgrader()),
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

/// What the process an upgrade starts needs of systemd's environment, which `take_from_env`
/// removed from this one: where to notify (so it can say `MAINPID=`), and the watchdog.
#[cfg(unix)]
fn handover_env(
    notifier: &crate::systemd::Notifier,
    watchdog: Option<Duration>,
) -> Vec<(String, String)> {
    let mut env = vec![(
        "NOTIFY_SOCKET".to_owned(),
        notifier.socket_name().to_owned(),
    )];
    if let Some(half) = watchdog {
        env.push((
            "WATCHDOG_USEC".to_owned(),
            (half * 2).as_micros().to_string(),
        ));
    }
    env
}

/// Load the config; in a process started by an upgrade, tell the old process when it does not
/// load (it keeps serving), else receive its listening sockets before anything binds.
#[cfg(unix)]
fn load_taking_over(
    args: &RunArgs,
    incoming: &mut Option<crate::handover::incoming::Incoming>,
) -> Result<(Config, crate::handover::incoming::Handed), String> {
    let config = match load_for_run(args) {
        Ok(config) => config,
        Err(e) => {
            if let Some(incoming) = incoming.take() {
                incoming.fail(&e.to_string());
            }
            return Err(e.to_string());
        }
    };
    let handed = match incoming.as_mut() {
        Some(incoming) => incoming
            .receive()
            .map_err(|e| format!("upgrade: cannot receive the listening sockets: {e}"))?,
        None => Default::default(),
    };
    Ok((config, handed))
}

/// Bind with systemd's and an upgrading process's sockets; in a process taking over, a failure
/// is told to the old process (which keeps serving) and success arms the "ready" confirmation.
#[cfg(unix)]
fn bind_taking_over(
    config: &Config,
    options: Options,
    inherited: Vec<crate::systemd::InheritedSocket>,
    handed: crate::handover::incoming::Handed,
    incoming: Option<crate::handover::incoming::Incoming>,
) -> Result<Server, String> {
    match Server::bind_taking_over(config, options, inherited, handed) {
        Ok(mut server) => {
            if let Some(incoming) = incoming {
                server.taking_over(incoming);
            }
            Ok(server)
        }
        Err(e) => {
            if let Some(incoming) = incoming {
                incoming.fail(&e.to_string());
            }
            Err(e.to_string())
        }
    }
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
    usr2: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// SIGTERM/SIGINT stop gracefully; a second one during the grace period closes the open
/// connections at once (NGINX's fast shutdown). SIGHUP reloads the config file (a bad file is
/// logged and the running config stays). SIGUSR2 upgrades warren itself (NGINX's signal for
/// it): the outcome is logged; a failed upgrade changes nothing.
#[cfg(unix)]
async fn watch_signals(
    signals: Signals,
    shutdown: CancellationToken,
    close_now: CancellationToken,
    (reloader, upgrader): (crate::lifecycle::Reloader, crate::lifecycle::Upgrader),
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr2,
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
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading warren to the binary installed at its path");
                let upgrader = upgrader.clone();
                tokio::spawn(async move {
                    // The server logs the outcome of an upgrade it runs; a refusal only here.
                    if let Err(e @ crate::lifecycle::UpgradeError::InProgress) = upgrader.upgrade().await {
                        tracing::warn!(error = %e, "SIGUSR2 ignored");
                    }
                });
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
    _handles: (crate::lifecycle::Reloader, crate::lifecycle::Upgrader),
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
