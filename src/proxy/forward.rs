//! Moving bytes between a client and its backend: both directions in one task, byte-exact,
//! half-close forwarded, resets propagated, and one idle timer that is re-armed only when it fires
//! (activity is a coarse timestamp, not a timer reset per syscall).
//!
//! Each direction starts on the copy path: reads go into a per-thread scratch buffer and straight
//! out again, so a connection that only sees AMQP heartbeats holds no buffer and no pipe. A read
//! that fills a good part of the scratch buffer switches that direction to splice(2) on Linux,
//! which leases a pipe from the [`PipePool`] for the burst and returns it once the socket is empty;
//! small transfers switch it back. A refused splice or pipe falls back to copy without dropping the
//! connection. This module knows nothing about balancing, health or listeners.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::ForwardCounters;

#[cfg(target_os = "linux")]
use super::splice::{self, Pipe, PipePool};

/// Per-thread buffer for the copy path; big enough that bulk copy is not syscall-bound.
const SCRATCH_LEN: usize = 64 * 1024;
/// A copy read at least this large means bulk: switch the direction to splice.
#[cfg(target_os = "linux")]
const SPLICE_FROM: usize = 16 * 1024;
/// A splice smaller than this means small frames again: switch back to copy.
#[cfg(target_os = "linux")]
const COPY_BELOW: usize = 4 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Why a proxied connection ended (the `reason` label of `connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or reset first.
    Client,
    /// The backend closed or reset first.
    Backend,
    /// No byte in either direction for `idle_timeout`.
    Idle,
    /// The backend was drained with a deadline that passed.
    Drain,
    /// warren is stopping and the grace period is over.
    Shutdown,
    /// A local error.
    Error,
}

impl CloseReason {
    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Backend => "backend",
            CloseReason::Idle => "idle",
            CloseReason::Drain => "drain",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }
}

/// Process-wide data plane resources and counters.
pub struct Plane {
    /// `None` when splice is off (non-Linux, or disabled by the operator).
    #[cfg(target_os = "linux")]
    pub pipes: Option<Arc<PipePool>>,
    pub to_backend: ForwardCounters,
    pub to_client: ForwardCounters,
    /// Fallbacks from splice to copy, by reason.
    pub fallback_unsupported: IntCounter,
    pub fallback_no_pipe: IntCounter,
}

/// What a finished connection reports.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub reason: CloseReason,
    pub to_backend: u64,
    pub to_client: u64,
}

/// State both directions of one connection share; atomics only because a task must be `Send`.
struct Shared {
    start: Instant,
    /// Milliseconds since `start` of the last transfer in either direction.
    last_activity_ms: AtomicU64,
}

impl Shared {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
}

/// One direction's byte accounting.
struct Tally<'a> {
    counters: &'a ForwardCounters,
    backend_bytes: &'a IntCounter,
    total: AtomicU64,
}

impl Tally<'_> {
    fn add(&self, n: usize, spliced: bool) {
        let n = n as u64;
        self.total.fetch_add(n, Ordering::Relaxed);
        self.backend_bytes.inc_by(n);
        if spliced {
            self.counters.splice.inc_by(n);
        } else {
            self.counters.copy.inc_by(n);
        }
    }
}

/// How one direction ended.
enum End {
    /// The reading side sent FIN and everything was delivered.
    Eof,
    /// Reading failed (usually a reset from the reading side).
    ReadFailed(io::Error),
    /// Writing failed (usually the writing side reset).
    WriteFailed(io::Error),
}

/// Forward until both sides are done, the idle timeout passes, or `stop` resolves with a reason.
pub async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    idle_timeout: Duration,
    plane: &Plane,
    backend_bytes: (&IntCounter, &IntCounter),
    stop: impl Future<Output = CloseReason>,
) -> Outcome {
    let shared = Shared {
        start: Instant::now(),
        last_activity_ms: AtomicU64::new(0),
    };
    let up_tally = Tally {
        counters: &plane.to_backend,
        backend_bytes: backend_bytes.0,
        total: AtomicU64::new(0),
    };
    let down_tally = Tally {
        counters: &plane.to_client,
        backend_bytes: backend_bytes.1,
        total: AtomicU64::new(0),
    };
    let up = pump(client, backend, plane, &shared, &up_tally);
    let down = pump(backend, client, plane, &shared, &down_tally);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(up, down, idle, stop);

    let (mut up_done, mut down_done) = (false, false);
    let mut first_to_close = None;
    let reason = loop {
        tokio::select! {
            end = &mut up, if !up_done => {
                up_done = true;
                match end {
                    End::Eof => {
                        let _ = SockRef::from(backend).shutdown(Shutdown::Write);
                        first_to_close.get_or_insert(CloseReason::Client);
                    }
                    End::ReadFailed(e) => break failed(e, CloseReason::Client, backend),
                    End::WriteFailed(e) => break failed(e, CloseReason::Backend, client),
                }
            }
            end = &mut down, if !down_done => {
                down_done = true;
                match end {
                    End::Eof => {
                        let _ = SockRef::from(client).shutdown(Shutdown::Write);
                        first_to_close.get_or_insert(CloseReason::Backend);
                    }
                    End::ReadFailed(e) => break failed(e, CloseReason::Backend, client),
                    End::WriteFailed(e) => break failed(e, CloseReason::Client, backend),
                }
            }
            () = &mut idle => {
                let deadline = shared.last_activity() + idle_timeout;
                if Instant::now() >= deadline {
                    break CloseReason::Idle;
                }
                idle.as_mut().reset(deadline);
            }
            reason = &mut stop => break reason,
        }
        if up_done && down_done {
            break first_to_close.unwrap_or(CloseReason::Client);
        }
    };
    Outcome {
        reason,
        to_backend: up_tally.total.load(Ordering::Relaxed),
        to_client: down_tally.total.load(Ordering::Relaxed),
    }
}

/// A side failed: blame it if it reset or vanished, and pass a reset on to the other side.
fn failed(err: io::Error, side: CloseReason, other: &TcpStream) -> CloseReason {
    // SO_LINGER 0 turns the coming close into a RST, so the other peer learns of the reset
    // instead of seeing a clean end of stream.
    let _ = SockRef::from(other).set_linger(Some(Duration::ZERO));
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::TimedOut
        | io::ErrorKind::UnexpectedEof => side,
        _ => {
            tracing::debug!(error = %err, "forwarding error");
            CloseReason::Error
        }
    }
}

/// Which path the next read of a direction takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Copy,
    #[cfg(target_os = "linux")]
    Splice,
}

/// A pipe on loan for this direction; returned to the pool when dropped, also on cancellation.
#[cfg(target_os = "linux")]
struct Lease<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
}

#[cfg(target_os = "linux")]
impl Lease<'_> {
    fn release(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pool.give_back(pipe);
        }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Outcome of one copy step done synchronously on the scratch buffer.
enum Step {
    Moved { read: usize, written: usize },
    Eof,
    Empty,
    ReadErr(io::Error),
    WriteErr(io::Error),
}

/// Copy what `from` has now into `to`; whatever `to` cannot take goes into `backlog`.
fn copy_step(from: &TcpStream, to: &TcpStream, backlog: &mut Vec<u8>) -> Step {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let read = match from.try_read(&mut scratch) {
            Ok(0) => return Step::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Empty,
            Err(e) => return Step::ReadErr(e),
        };
        let written = match to.try_write(&scratch[..read]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Step::WriteErr(e),
        };
        backlog.extend_from_slice(&scratch[written..read]);
        Step::Moved { read, written }
    })
}

/// Move bytes from `from` to `to` until `from` ends or either side fails.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    plane: &Plane,
    shared: &Shared,
    tally: &Tally<'_>,
) -> End {
    let mut mode = Mode::Copy;
    // Bytes read on the copy path that `to` could not take yet; empty (unallocated) when idle.
    let mut backlog: Vec<u8> = Vec::new();
    let mut sent = 0;
    #[cfg(target_os = "linux")]
    let mut lease = plane
        .pipes
        .as_deref()
        .map(|pool| Lease { pool, pipe: None });
    // Cleared for good when the kernel refuses splice on these sockets.
    #[cfg(target_os = "linux")]
    let mut splice_ok = lease.is_some();
    #[cfg(target_os = "linux")]
    use std::os::fd::AsRawFd;

    loop {
        if sent < backlog.len() {
            if let Err(e) = to.writable().await {
                return End::WriteFailed(e);
            }
            match to.try_write(&backlog[sent..]) {
                Ok(n) => {
                    sent += n;
                    tally.add(n, false);
                    shared.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return End::WriteFailed(e),
            }
            if sent == backlog.len() {
                backlog.clear();
                sent = 0;
            }
            continue;
        }
        #[cfg(target_os = "linux")]
        if let Some(pipe) = lease.as_mut().and_then(|l| l.pipe.as_mut()) {
            if pipe.pending > 0 {
                if let Err(e) = to.writable().await {
                    return End::WriteFailed(e);
                }
                match to.try_io(tokio::io::Interest::WRITABLE, || {
                    pipe.drain_to(to.as_raw_fd())
                }) {
                    Ok(n) => {
                        tally.add(n, true);
                        shared.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return End::WriteFailed(e),
                }
                continue;
            }
        }

        // Nothing in flight: wait for the reading side.
        if let Err(e) = from.readable().await {
            return End::ReadFailed(e);
        }

        #[cfg(target_os = "linux")]
        if mode == Mode::Splice {
            let lease = lease.as_mut().expect("splice mode needs a pipe pool");
            if lease.pipe.is_none() {
                match lease.pool.lease() {
                    Ok(pipe) => lease.pipe = Some(pipe),
                    Err(_) => {
                        // Copy this burst; the next large read tries for a pipe again.
                        plane.fallback_no_pipe.inc();
                        mode = Mode::Copy;
                    }
                }
            }
            if let Some(pipe) = lease.pipe.as_mut() {
                // The pipe is empty here, so EAGAIN can only mean the socket is empty and it is
                // right for try_io to clear the read readiness.
                let capacity = pipe.capacity;
                match from.try_io(tokio::io::Interest::READABLE, || {
                    pipe.fill_from(from.as_raw_fd(), capacity)
                }) {
                    Ok(0) => return End::Eof,
                    Ok(n) => {
                        shared.touch();
                        if n < COPY_BELOW {
                            mode = Mode::Copy;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => lease.release(),
                    Err(e) if splice::is_unsupported(&e) => {
                        tracing::debug!(error = %e, "splice refused, using copy");
                        plane.fallback_unsupported.inc();
                        lease.release();
                        mode = Mode::Copy;
                        splice_ok = false;
                    }
                    Err(e) => return End::ReadFailed(e),
                }
                if lease.pipe.as_ref().is_some_and(|p| p.pending == 0) && mode == Mode::Copy {
                    lease.release();
                }
                continue;
            }
        }

        match copy_step(from, to, &mut backlog) {
            Step::Moved { read, written } => {
                tally.add(written, false);
                shared.touch();
                #[cfg(target_os = "linux")]
                if read >= SPLICE_FROM && splice_ok {
                    mode = Mode::Splice;
                }
                let _ = read;
            }
            Step::Empty => {
                if backlog.capacity() > 0 {
                    backlog = Vec::new();
                }
            }
            Step::Eof => return End::Eof,
            Step::ReadErr(e) => return End::ReadFailed(e),
            Step::WriteErr(e) => return End::WriteFailed(e),
        }
    }
}
