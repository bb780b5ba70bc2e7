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
use std::pin::Pin;
#[cfg(target_os = "linux")]
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::metrics::ForwardCounters;

#[cfg(target_os = "linux")]
use super::splice::{self, Pipe, PipePool};

/// Per-thread buffer for the copy path; big enough that bulk copy is not syscall-bound.
const SCRATCH_LEN: usize = 64 * 1024;
/// A copy read at least this large means bulk: switch the direction to splice.
#[cfg(target_os = "linux")]
const SPLICE_FROM: usize = 16 * 1024;
/// Splices smaller than this, [`SMALL_SPLICES`] in a row, mean small frames again: switch back
/// to copy. One alone is usually the tail of a burst that the proxy caught up with.
#[cfg(target_os = "linux")]
const COPY_BELOW: usize = 4 * 1024;
#[cfg(target_os = "linux")]
const SMALL_SPLICES: u8 = 2;

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
    /// Probes marked the backend down in a pool with `on_down = "close"`.
    BackendDown,
    /// The rebalancer moved it off a backend above its fair share.
    Rebalance,
    /// warren is stopping and the grace period is over.
    Shutdown,
    /// A local error.
    Error,
}

impl CloseReason {
    /// Every reason, in declaration order (the listener's close counters are indexed by it).
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::Backend,
        CloseReason::Idle,
        CloseReason::Drain,
        CloseReason::BackendDown,
        CloseReason::Rebalance,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];

    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Backend => "backend",
            CloseReason::Idle => "idle",
            CloseReason::Drain => "drain",
            CloseReason::BackendDown => "backend_down",
            CloseReason::Rebalance => "rebalance",
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

/// What a finished (or paused) connection reports.
#[derive(Debug)]
pub struct ForwardOutcome {
    pub reason: CloseReason,
    pub to_backend: u64,
    pub to_client: u64,
    /// Set when forwarding paused rather than ended ([`Stop::Pause`]): what it held.
    pub paused: Option<Box<InFlight>>,
}

/// What the `stop` future of [`forward`] asks for once it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// End the connection (with the `stop_reason` given to [`forward`]).
    Close,
    /// Stop reading both sockets and hand back what is in flight ([`InFlight`]), so the
    /// connection can be resumed, here or in another process (an upgrade of warren).
    Pause,
}

/// A paused connection's forwarding state: the bytes read from one side and not yet written to
/// the other (copy backlog, then what a splice pipe held), which side already closed, the byte
/// totals and how long the connection has been idle. Resuming writes the held bytes first, so
/// nothing is lost, duplicated or reordered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Read from the client, not yet written to the backend.
    pub to_backend: Vec<u8>,
    /// Read from the backend, not yet written to the client.
    pub to_client: Vec<u8>,
    /// The client sent FIN (the backend's write side was shut down).
    pub client_done: bool,
    /// The backend sent FIN (the client's write side was shut down).
    pub backend_done: bool,
    /// Bytes delivered so far: to the backend, to the client.
    pub totals: (u64, u64),
    /// Time since the last byte either way.
    pub idle_for: Duration,
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

/// What writing out the bytes in flight came to.
enum Flushed {
    /// Something was in flight and was (partly) written: look again before reading.
    Some,
    /// Nothing was in flight.
    Nothing,
    /// The writing side failed.
    End(End),
}

/// Forward until both sides are done, the idle timeout passes, or `stop` completes: with
/// [`Stop::Close`] the connection ends with `stop_reason`; with [`Stop::Pause`] forwarding
/// stops and the outcome carries what was in flight. Forwarding goes on while `stop` runs (a
/// graceful close asks the broker to close the connection meanwhile); the caller keeps it
/// pinned, so it is stored once, in the caller's future. `resume` continues a paused
/// connection: its held bytes go out before anything more is read.
///
/// Both directions are plain state machines polled from one future: readiness is awaited with
/// `poll_read_ready`/`poll_write_ready`, which keep their wakers inside the socket's registration,
/// so an idle connection costs a few hundred bytes of task state.
#[allow(clippy::too_many_arguments)]
pub fn forward<'a, S: Future<Output = Stop> + Send>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    idle_timeout: Duration,
    plane: &'a Plane,
    backend_bytes: (&'a IntCounter, &'a IntCounter),
    stop: Pin<&'a mut S>,
    stop_reason: CloseReason,
    resume: Option<Box<InFlight>>,
) -> impl Future<Output = ForwardOutcome> + Send + 'a {
    let mut link = Forward {
        client,
        backend,
        plane,
        backend_bytes,
        up: Direction::new(plane),
        down: Direction::new(plane),
        idle_timeout,
        last_activity: Instant::now(),
        stop_reason,
        first_to_close: None,
    };
    if let Some(held) = resume {
        link.resume(*held);
    }
    Forwarding {
        link,
        idle: tokio::time::sleep(idle_timeout),
        stop,
    }
}

pin_project_lite::pin_project! {
    /// The future [`forward`] returns. Written out rather than an `async` block, which would
    /// also keep a pinning reference, a closure and copies of its captures: this future is
    /// most of an idle connection's task.
    struct Forwarding<'a, S> {
        link: Forward<'a>,
        #[pin]
        idle: Sleep,
        stop: Pin<&'a mut S>,
    }
}

impl<S: Future<Output = Stop>> Future for Forwarding<'_, S> {
    type Output = ForwardOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ForwardOutcome> {
        let this = self.project();
        let ended = ready!(this.link.poll(cx, this.idle, this.stop.as_mut()));
        let paused = match ended {
            Some(_) => None,
            None => Some(Box::new(this.link.pause())),
        };
        Poll::Ready(ForwardOutcome {
            reason: ended.unwrap_or(CloseReason::Client),
            to_backend: this.link.up.total,
            to_client: this.link.down.total,
            paused,
        })
    }
}

/// The state of one forwarded connection, in one place so the future stays small.
struct Forward<'a> {
    client: &'a TcpStream,
    backend: &'a TcpStream,
    plane: &'a Plane,
    backend_bytes: (&'a IntCounter, &'a IntCounter),
    up: Direction,
    down: Direction,
    idle_timeout: Duration,
    last_activity: Instant,
    stop_reason: CloseReason,
    first_to_close: Option<CloseReason>,
}

impl Forward<'_> {
    /// The connection's end, or `None` when `stop` asked for a pause.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        idle: Pin<&mut Sleep>,
        stopped: Pin<&mut impl Future<Output = Stop>>,
    ) -> Poll<Option<CloseReason>> {
        match stopped.poll(cx) {
            Poll::Ready(Stop::Close) => return Poll::Ready(Some(self.stop_reason)),
            Poll::Ready(Stop::Pause) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        self.poll_directions(cx, idle).map(Some)
    }

    /// Take what is in flight out of both directions (their pipes go back to the pool): the
    /// state [`forward`]'s `resume` continues from. Nothing is read or written here.
    fn pause(&mut self) -> InFlight {
        InFlight {
            to_backend: self.up.take_in_flight(self.plane),
            to_client: self.down.take_in_flight(self.plane),
            client_done: self.up.done,
            backend_done: self.down.done,
            totals: (self.up.total, self.down.total),
            idle_for: self.last_activity.elapsed(),
        }
    }

    /// Continue from a paused state.
    fn resume(&mut self, held: InFlight) {
        self.up
            .resume(held.to_backend, held.client_done, held.totals.0);
        self.down
            .resume(held.to_client, held.backend_done, held.totals.1);
        self.first_to_close = match (held.client_done, held.backend_done) {
            (true, _) => Some(CloseReason::Client),
            (false, true) => Some(CloseReason::Backend),
            _ => None,
        };
        self.last_activity = Instant::now()
            .checked_sub(held.idle_for)
            .unwrap_or_else(Instant::now);
    }

    fn poll_directions(
        &mut self,
        cx: &mut Context<'_>,
        mut idle: Pin<&mut Sleep>,
    ) -> Poll<CloseReason> {
        let (client, backend, plane) = (self.client, self.backend, self.plane);
        let mut moved = false;
        if !self.up.done {
            let tally = Tally {
                counters: &plane.to_backend,
                backend_bytes: self.backend_bytes.0,
            };
            if let Poll::Ready(end) = self.up.poll(cx, client, backend, plane, &tally, &mut moved) {
                self.up.done = true;
                match end {
                    End::Eof => {
                        // Once both directions are done the sockets close, which sends the
                        // FIN anyway: shut down only to pass on a half-close.
                        if !self.down.done {
                            let _ = SockRef::from(backend).shutdown(Shutdown::Write);
                        }
                        self.first_to_close.get_or_insert(CloseReason::Client);
                    }
                    End::ReadFailed(e) => {
                        return Poll::Ready(self.failed(e, CloseReason::Client, backend))
                    }
                    End::WriteFailed(e) => {
                        return Poll::Ready(self.failed(e, CloseReason::Backend, client))
                    }
                }
            }
        }
        if !self.down.done {
            let tally = Tally {
                counters: &plane.to_client,
                backend_bytes: self.backend_bytes.1,
            };
            if let Poll::Ready(end) = self
                .down
                .poll(cx, backend, client, plane, &tally, &mut moved)
            {
                self.down.done = true;
                match end {
                    End::Eof => {
                        if !self.up.done {
                            let _ = SockRef::from(client).shutdown(Shutdown::Write);
                        }
                        self.first_to_close.get_or_insert(CloseReason::Backend);
                    }
                    End::ReadFailed(e) => {
                        return Poll::Ready(self.failed(e, CloseReason::Backend, client))
                    }
                    End::WriteFailed(e) => {
                        return Poll::Ready(self.failed(e, CloseReason::Client, backend))
                    }
                }
            }
        }
        if self.up.done && self.down.done {
            return Poll::Ready(self.first_to_close.unwrap_or(CloseReason::Client));
        }
        // One clock read per wake-up, and the timer is only re-armed when it fires.
        if moved {
            self.last_activity = Instant::now();
        }
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(CloseReason::Idle);
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    /// A side failed (see [`failed`]). When one side had already closed normally, that close
    /// decides the reason: a broker answering a client's FIN with a reset (RabbitMQ's
    /// `linger {true, 0}`) ends a connection the client closed.
    fn failed(&self, err: io::Error, side: CloseReason, other: &TcpStream) -> CloseReason {
        match (failed(err, side, other), self.first_to_close) {
            (CloseReason::Error, _) => CloseReason::Error,
            (_, Some(first)) => first,
            (reason, None) => reason,
        }
    }
}

impl Drop for Forward<'_> {
    fn drop(&mut self) {
        // Pipes go back to the pool however the connection ended (one with bytes still in it
        // is closed by the pool instead of reused).
        #[cfg(target_os = "linux")]
        if let Some(pool) = self.plane.pipes.as_deref() {
            for pipe in [self.up.pipe.take(), self.down.pipe.take()]
                .into_iter()
                .flatten()
            {
                pool.give_back(pipe);
            }
        }
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

/// ForwardOutcome of one copy step done synchronously on the scratch buffer.
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
        // A short read from a TCP socket means it is drained: report "would block" from inside
        // try_io so tokio clears the read readiness now (with the readiness tick taken before
        // the read, so data that arrives meanwhile is not lost) instead of paying one more
        // recv that returns EAGAIN for every small frame.
        let mut short = None;
        let result = from.try_io(tokio::io::Interest::READABLE, || {
            use std::io::Read;
            let n = (&*SockRef::from(from)).read(&mut scratch)?;
            if n > 0 && n < scratch.len() {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let read = match (result, short) {
            (_, Some(n)) => n,
            (Ok(0), None) => return Step::Eof,
            (Ok(n), None) => n,
            (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => return Step::Empty,
            (Err(e), None) => return Step::ReadErr(e),
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

/// Where a direction's byte counts go.
struct Tally<'a> {
    counters: &'a ForwardCounters,
    backend_bytes: &'a IntCounter,
}

/// One direction of a connection: where its bytes are and how it moves the next ones.
/// Kept small: an idle connection holds two of these and little else.
struct Direction {
    mode: Mode,
    done: bool,
    /// Cleared when splice is off or the kernel refused it for these sockets.
    splice_ok: bool,
    /// Consecutive splices below [`COPY_BELOW`].
    #[cfg(target_os = "linux")]
    small_splices: u8,
    /// How much of `backlog` was written already.
    sent: u32,
    /// Bytes read on the copy path that the writer could not take yet; unallocated when idle.
    backlog: Vec<u8>,
    total: u64,
    /// The pipe on loan while spliced bytes are in flight.
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
}

impl Direction {
    fn new(plane: &Plane) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = plane;
        Direction {
            mode: Mode::Copy,
            done: false,
            #[cfg(target_os = "linux")]
            splice_ok: plane.pipes.is_some(),
            #[cfg(not(target_os = "linux"))]
            splice_ok: false,
            #[cfg(target_os = "linux")]
            small_splices: 0,
            sent: 0,
            backlog: Vec::new(),
            total: 0,
            #[cfg(target_os = "linux")]
            pipe: None,
        }
    }

    fn count(&mut self, tally: &Tally<'_>, n: usize, spliced: bool) {
        let n64 = n as u64;
        self.total += n64;
        tally.backend_bytes.inc_by(n64);
        if spliced {
            tally.counters.splice.inc_by(n64);
        } else {
            tally.counters.copy.inc_by(n64);
        }
    }

    /// What this direction read and has not written yet, in order: the copy backlog, then the
    /// pipe's bytes (read out of it, and the pipe returned). Back on the copy path after.
    fn take_in_flight(&mut self, plane: &Plane) -> Vec<u8> {
        #[cfg(not(target_os = "linux"))]
        let _ = plane;
        let mut held = self.backlog.split_off(self.sent as usize);
        self.backlog = Vec::new();
        self.sent = 0;
        #[cfg(target_os = "linux")]
        {
            if let Some(pipe) = self.pipe.as_mut() {
                if let Err(e) = pipe.read_pending(&mut held) {
                    // Cannot happen to a pipe this process owns; the bytes it kept are lost
                    // with the connection's hand-over, so say so loudly.
                    tracing::error!(error = %e, "cannot read a splice pipe's bytes for a hand-over");
                }
            }
            self.release(plane);
            self.mode = Mode::Copy;
        }
        held
    }

    /// Start from a paused state: `held` goes out before anything is read.
    fn resume(&mut self, held: Vec<u8>, done: bool, total: u64) {
        self.backlog = held;
        self.sent = 0;
        self.done = done;
        self.total = total;
    }

    /// Return the (empty) pipe to the pool.
    #[cfg(target_os = "linux")]
    fn release(&mut self, plane: &Plane) {
        if let (Some(pool), Some(pipe)) = (plane.pipes.as_deref(), self.pipe.take()) {
            pool.give_back(pipe);
        }
    }

    /// Move bytes from `from` to `to` until a side would block (Pending) or this direction ends.
    /// Tokio's cooperative budget in the readiness polls keeps one busy connection from
    /// starving others.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        plane: &Plane,
        tally: &Tally<'_>,
        moved: &mut bool,
    ) -> Poll<End> {
        #[cfg(not(target_os = "linux"))]
        let _ = plane;
        loop {
            // Bytes in flight go out before anything more is read.
            match ready!(self.poll_flush(cx, to, plane, tally, moved)) {
                Flushed::Some => continue,
                Flushed::Nothing => {}
                Flushed::End(end) => return Poll::Ready(end),
            }

            // Nothing in flight: wait for the reading side.
            if let Err(e) = ready!(from.poll_read_ready(cx)) {
                return Poll::Ready(End::ReadFailed(e));
            }

            #[cfg(target_os = "linux")]
            if self.mode == Mode::Splice {
                match self.splice_in(from, plane) {
                    Some(Ok(0)) => return Poll::Ready(End::Eof),
                    // The top of the loop drains the pipe before anything else is read.
                    Some(Ok(_)) => {
                        *moved = true;
                        continue;
                    }
                    Some(Err(e)) => return Poll::Ready(End::ReadFailed(e)),
                    // Socket empty (readiness cleared): the next poll_read_ready waits.
                    None if self.mode == Mode::Splice => continue,
                    // Back on the copy path with no pipe held.
                    None => {}
                }
            }

            if let Some(end) = self.copy_in(from, to, tally, moved) {
                return Poll::Ready(end);
            }
        }
    }

    /// Write out what is in flight: the copy backlog, then (Linux) what the pipe holds.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        to: &TcpStream,
        plane: &Plane,
        tally: &Tally<'_>,
        moved: &mut bool,
    ) -> Poll<Flushed> {
        #[cfg(not(target_os = "linux"))]
        let _ = plane;
        if (self.sent as usize) < self.backlog.len() {
            if let Err(e) = ready!(to.poll_write_ready(cx)) {
                return Poll::Ready(Flushed::End(End::WriteFailed(e)));
            }
            match to.try_write(&self.backlog[self.sent as usize..]) {
                Ok(n) => {
                    // The backlog holds at most the scratch buffer, or what a pause took out
                    // of a pipe and a backlog (well under 4 GiB).
                    self.sent += n as u32;
                    self.count(tally, n, false);
                    *moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Flushed::End(End::WriteFailed(e))),
            }
            if self.sent as usize == self.backlog.len() {
                self.backlog.clear();
                self.sent = 0;
            }
            return Poll::Ready(Flushed::Some);
        }
        #[cfg(target_os = "linux")]
        if let Some(pipe) = self.pipe.as_mut() {
            use std::os::fd::AsRawFd;
            if pipe.pending > 0 {
                if let Err(e) = ready!(to.poll_write_ready(cx)) {
                    return Poll::Ready(Flushed::End(End::WriteFailed(e)));
                }
                match to.try_io(tokio::io::Interest::WRITABLE, || {
                    pipe.drain_to(to.as_raw_fd())
                }) {
                    Ok(n) => {
                        self.count(tally, n, true);
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Flushed::End(End::WriteFailed(e))),
                }
                if self.mode == Mode::Copy && self.pipe.as_ref().is_some_and(|p| p.pending == 0) {
                    // Small frames again: hold no pipe on the copy path.
                    self.release(plane);
                }
                return Poll::Ready(Flushed::Some);
            }
        }
        Poll::Ready(Flushed::Nothing)
    }

    /// One read-and-write on the copy path; what is not written stays in the backlog.
    /// `Some` when this direction ended.
    fn copy_in(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        tally: &Tally<'_>,
        moved: &mut bool,
    ) -> Option<End> {
        match copy_step(from, to, &mut self.backlog) {
            Step::Moved { read, written } => {
                self.count(tally, written, false);
                *moved = true;
                #[cfg(target_os = "linux")]
                if read >= SPLICE_FROM && self.splice_ok {
                    self.mode = Mode::Splice;
                }
                let _ = read;
                None
            }
            Step::Empty => {
                if self.backlog.capacity() > 0 {
                    self.backlog = Vec::new();
                }
                None
            }
            Step::Eof => Some(End::Eof),
            Step::ReadErr(e) => Some(End::ReadFailed(e)),
            Step::WriteErr(e) => Some(End::WriteFailed(e)),
        }
    }

    /// Splice what `from` has into an empty pipe. `None` means "nothing moved, carry on": the
    /// socket was empty (readiness cleared), or this direction went back to the copy path.
    #[cfg(target_os = "linux")]
    fn splice_in(&mut self, from: &TcpStream, plane: &Plane) -> Option<io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let pool = plane.pipes.as_deref().filter(|_| self.splice_ok)?;
        if self.pipe.is_none() {
            match pool.lease() {
                Ok(pipe) => self.pipe = Some(pipe),
                Err(_) => {
                    // Copy this burst; the next large read tries for a pipe again.
                    plane.fallback_no_pipe.inc();
                    self.mode = Mode::Copy;
                    return None;
                }
            }
        }
        let pipe = self.pipe.as_mut()?;
        let capacity = pipe.capacity;
        // The pipe is empty here, so EAGAIN can only mean the socket is empty and it is right
        // for try_io to clear the read readiness.
        match from.try_io(tokio::io::Interest::READABLE, || {
            pipe.fill_from(from.as_raw_fd(), capacity)
        }) {
            Ok(n) => {
                if n > 0 && n < COPY_BELOW {
                    self.small_splices += 1;
                    if self.small_splices >= SMALL_SPLICES {
                        self.small_splices = 0;
                        self.mode = Mode::Copy;
                    }
                } else {
                    self.small_splices = 0;
                }
                if n == capacity {
                    // A full pipe: a bulk stream, worth fewer splice calls per byte.
                    pool.grow(pipe);
                }
                Some(Ok(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.release(plane);
                None
            }
            Err(e) if splice::is_unsupported(&e) => {
                tracing::debug!(error = %e, "splice refused, using copy");
                plane.fallback_unsupported.inc();
                self.release(plane);
                self.splice_ok = false;
                self.mode = Mode::Copy;
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}
