//! The `warren` binary: parse the command line, set up logging, hand over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use warren::logging::LogWriter;

fn main() -> ExitCode {
    // Before anything else: a SIGHUP while warren starts must not end it (see `hold_sighup`).
    #[cfg(unix)]
    warren::run::hold_sighup(true);
    let cli = warren::cli::Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bad log level: {e}");
            return ExitCode::from(2);
        }
    };
    // A log line that cannot be written is dropped and counted, never reported on the same
    // (possibly broken) stderr: tracing-subscriber's own report there would panic.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    match &cli.log_file {
        Some(path) => {
            let file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("cannot open the log file {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            logs.with_writer(LogWriter::File(std::sync::Arc::new(file)))
                .with_ansi(false)
                .init();
        }
        None => logs
            .with_writer(LogWriter::Stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
    warren::cli::run(cli)
}

/// jemalloc on Linux: see Cargo.toml for why (memory per idle connection).
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
