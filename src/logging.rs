//! Where log lines go: stderr or the `--log-file`, through a writer that never fails. A log
//! line that cannot be written (stderr is a pipe whose reader went away: EPIPE; a full disk:
//! ENOSPC) is dropped and counted in `warren_log_write_errors_total`, never reported to the
//! same broken stderr (tracing-subscriber's `eprintln!` would panic there) and never allowed to
//! wedge the task that logged it, such as the signal handler or a reload. This module owns only
//! the writer and its counter; it must not decide what is logged.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, LazyLock};

use prometheus::{IntCounter, Opts};

/// Log lines that could not be written, process-wide (every registry that `server` composes
/// exports this one counter, see [`register_metrics`]).
pub fn write_errors() -> &'static IntCounter {
    static ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
        IntCounter::with_opts(
            Opts::new(
                "log_write_errors_total",
                "Log lines dropped because they could not be written (e.g. stderr a closed pipe)",
            )
            .namespace("warren"),
        )
        .expect("a valid metric name")
    });
    &ERRORS
}

/// Register [`write_errors`] into a process's registry (one counter shared by every registry,
/// as the writer has no handle to pass it around).
pub fn register_metrics(registry: &prometheus::Registry) {
    registry
        .register(Box::new(write_errors().clone()))
        .expect("metric names are unique");
}

/// Where logs go: a `tracing_subscriber` `MakeWriter` whose writers swallow write errors.
#[derive(Clone, Debug)]
pub enum LogWriter {
    /// The process's stderr.
    Stderr,
    /// An open file (`--log-file`), appended to.
    File(Arc<File>),
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Swallowing<Box<dyn Write + 'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        let inner: Box<dyn Write + 'a> = match self {
            LogWriter::Stderr => Box::new(io::stderr()),
            LogWriter::File(file) => Box::new(&**file),
        };
        Swallowing(inner)
    }
}

/// A writer that reports every write as done; a failed one is counted in [`write_errors`].
#[derive(Debug)]
pub struct Swallowing<W>(pub W);

impl<W: Write> Write for Swallowing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The rest of this line is dropped: retrying a broken pipe cannot help.
                    write_errors().inc();
                    return Ok(buf.len());
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.0.flush().is_err() {
            write_errors().inc();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone: every write fails with EPIPE.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_failed_write_is_counted_and_reported_as_done() {
        let before = write_errors().get();
        let mut w = Swallowing(BrokenPipe);
        w.write_all(b"a log line\n").unwrap();
        w.flush().unwrap();
        assert_eq!(
            write_errors().get() - before,
            2,
            "one write and one flush failed"
        );
        let mut ok = Swallowing(Vec::new());
        ok.write_all(b"kept").unwrap();
        assert_eq!(ok.0, b"kept");
    }
}
