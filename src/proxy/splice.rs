//! Zero-copy plumbing for Linux: `splice(2)` between a socket and a pipe, and the bounded pool
//! that pipes are leased from. A pipe is leased only while bytes are in flight and comes back
//! empty, so idle connections hold none (unprivileged users get few pipe pages). This is the only
//! module with `unsafe`; it knows nothing about connections, balancing or timeouts.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

/// Default cap on pipes leased at once: 1024 pipes of 16 pages fit the default per-user soft limit
/// (`fs.pipe-user-pages-soft` = 16384 pages) so an unprivileged warren never gets shrunken pipes.
pub const DEFAULT_MAX_LEASED: usize = 1024;
/// Empty pipes kept for reuse, to save two syscalls per bulk burst.
const MAX_IDLE: usize = 128;
/// What the pool's pipes may hold in all, leased and idle: the default per-user soft limit
/// (`fs.pipe-user-pages-soft`, 16384 pages of 4 KiB). Past it the kernel shrinks new pipes of an
/// unprivileged user, so the pool stays inside it: a new pipe and a growing one both need room.
const BUDGET: usize = 16384 * 4096;
/// What a new pipe is reserved at before the kernel says its real size (Linux's default).
const NEW_PIPE: usize = 16 * 4096;
/// The size a pipe grows to once a splice fills it: a bulk stream then moves 256 KiB per pair of
/// splice calls instead of 64 KiB (about a third less CPU per GB here, see BENCHMARKS.md).
pub const BULK_PIPE: usize = 256 * 1024;

/// A pipe used as the in-kernel buffer of one direction of one connection.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    pub pending: usize,
    /// How many bytes the pipe holds when full.
    pub capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid, writable array of two descriptors, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_GETPIPE_SZ takes no argument and only reads the pipe's size.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let capacity = if size > 0 { size as usize } else { 65536 };
        Ok(Pipe {
            read,
            write,
            pending: 0,
            capacity,
        })
    }

    /// Resize the pipe to `bytes` (the kernel rounds up to a power of two pages); returns the
    /// new capacity.
    fn resize(&mut self, bytes: usize) -> io::Result<usize> {
        let bytes = libc::c_int::try_from(bytes).map_err(io::Error::other)?;
        // SAFETY: F_SETPIPE_SZ takes an int and only changes the buffer of our own pipe; growing
        // keeps the bytes in it.
        let size = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        self.capacity = size as usize;
        Ok(self.capacity)
    }

    /// Move up to `len` bytes from socket `from` into the pipe.
    pub fn fill_from(&mut self, from: RawFd, len: usize) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), len)?;
        self.pending += n;
        Ok(n)
    }

    /// Read every pending byte out of the pipe into `out` (a paused connection hands them on).
    pub fn read_pending(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        while self.pending > 0 {
            let start = out.len();
            out.resize(start + self.pending, 0);
            // SAFETY: `out[start..]` is `pending` initialised, writable bytes; the descriptor is
            // this pipe's read end, open for as long as `self`.
            let n = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    out[start..].as_mut_ptr().cast(),
                    self.pending,
                )
            };
            if n <= 0 {
                out.truncate(start);
                return Err(if n == 0 {
                    io::ErrorKind::UnexpectedEof.into()
                } else {
                    io::Error::last_os_error()
                });
            }
            out.truncate(start + n as usize);
            self.pending -= n as usize;
        }
        Ok(())
    }

    /// Move pending bytes from the pipe into socket `to`.
    pub fn drain_to(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.pending)?;
        self.pending -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (sockets and pipes have no file position);
    // the kernel validates the descriptors and returns EBADF/EINVAL otherwise.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Is this splice error a reason to use the copy path rather than a connection error?
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP)
    )
}

/// Bounded pool of pipes shared by every connection.
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    leased: AtomicUsize,
    max_leased: usize,
    /// Capacity of every pipe the pool owns (leased or idle), checked against [`BUDGET`].
    bytes: AtomicUsize,
    /// Exported as `warren_splice_pipes_leased`.
    gauge: IntGauge,
}

/// Why no pipe could be leased.
#[derive(Debug)]
pub enum LeaseError {
    /// `max_leased` pipes are in use.
    Exhausted,
    /// No idle pipe, and a new one would take the pool's pipes past their byte budget.
    Budget,
    /// The kernel refused a new pipe (EMFILE, ENFILE, ENOMEM).
    Os(io::Error),
}

impl PipePool {
    /// A pool that leases at most `max_leased` pipes at once.
    pub fn new(max_leased: usize, gauge: IntGauge) -> Arc<PipePool> {
        Arc::new(PipePool {
            idle: Mutex::new(Vec::new()),
            leased: AtomicUsize::new(0),
            max_leased,
            bytes: AtomicUsize::new(0),
            gauge,
        })
    }

    /// Take a pipe for one burst of bytes; give it back with [`PipePool::give_back`]. An idle
    /// pipe is reused; a new one is made only if its bytes fit the budget.
    pub fn lease(&self) -> Result<Pipe, LeaseError> {
        if self.leased.fetch_add(1, Ordering::Relaxed) >= self.max_leased {
            self.leased.fetch_sub(1, Ordering::Relaxed);
            return Err(LeaseError::Exhausted);
        }
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let pipe = match reused {
            Some(pipe) => pipe,
            None => self.new_pipe().inspect_err(|_| {
                self.leased.fetch_sub(1, Ordering::Relaxed);
            })?,
        };
        self.gauge.inc();
        Ok(pipe)
    }

    /// A new pipe, its bytes reserved in the budget first and settled on its real size.
    fn new_pipe(&self) -> Result<Pipe, LeaseError> {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + NEW_PIPE <= BUDGET).then_some(b + NEW_PIPE)
            })
            .map_err(|_| LeaseError::Budget)?;
        match Pipe::new() {
            Ok(pipe) => {
                // The kernel's default may differ from ours (a page size other than 4 KiB).
                self.bytes.fetch_add(pipe.capacity, Ordering::Relaxed);
                self.bytes.fetch_sub(NEW_PIPE, Ordering::Relaxed);
                Ok(pipe)
            }
            Err(e) => {
                self.bytes.fetch_sub(NEW_PIPE, Ordering::Relaxed);
                Err(LeaseError::Os(e))
            }
        }
    }

    /// Grow a leased pipe that a splice filled to [`BULK_PIPE`], if the budget has room; a
    /// refusal (budget, or the kernel's per-user limit) keeps the pipe as it is.
    pub fn grow(&self, pipe: &mut Pipe) {
        let old = pipe.capacity;
        if old >= BULK_PIPE {
            return;
        }
        let extra = BULK_PIPE - old;
        let reserved = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + extra <= BUDGET).then_some(b + extra)
            });
        if reserved.is_err() {
            return;
        }
        // Settle the reservation on what the kernel did (refused: the pipe keeps its size).
        let now = pipe.resize(BULK_PIPE).unwrap_or(old);
        if now < BULK_PIPE {
            self.bytes.fetch_sub(BULK_PIPE - now, Ordering::Relaxed);
        } else {
            self.bytes.fetch_add(now - BULK_PIPE, Ordering::Relaxed);
        }
    }

    /// Return a leased pipe; one that still holds bytes is closed instead of reused.
    pub fn give_back(&self, pipe: Pipe) {
        self.leased.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
        if pipe.pending == 0 {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(pipe);
                return;
            }
        }
        self.bytes.fetch_sub(pipe.capacity, Ordering::Relaxed);
    }

    /// Capacity of the pipes the pool owns, leased and idle, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Pipes leased right now.
    pub fn leased(&self) -> usize {
        self.leased.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn lease_is_bounded_and_counted() {
        let pool = PipePool::new(2, IntGauge::new("g", "g").unwrap());
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert!(matches!(pool.lease(), Err(LeaseError::Exhausted)));
        assert_eq!(pool.leased(), 2);
        assert_eq!(pool.gauge.get(), 2);
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.leased(), 0);
        assert_eq!(pool.gauge.get(), 0);
        assert_eq!(pool.idle.lock().unwrap().len(), 2);
    }

    #[test]
    fn pipes_grow_within_the_budget_and_keep_their_bytes() {
        let pool = PipePool::new(4, IntGauge::new("g", "g").unwrap());
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut pipe = pool.lease().unwrap();
        let small = pipe.capacity;
        assert_eq!(pool.bytes(), small);
        a.write_all(b"kept").unwrap();
        assert_eq!(pipe.fill_from(b.as_raw_fd(), 1 << 16).unwrap(), 4);
        pool.grow(&mut pipe);
        assert_eq!(pipe.capacity, BULK_PIPE);
        assert_eq!(pool.bytes(), BULK_PIPE);
        // Growing twice changes nothing.
        pool.grow(&mut pipe);
        assert_eq!(pool.bytes(), BULK_PIPE);
        let (c, mut d) = UnixStream::pair().unwrap();
        assert_eq!(pipe.drain_to(c.as_raw_fd()).unwrap(), 4);
        let mut got = [0u8; 4];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"kept");
        // Idle pipes stay counted; one closed with bytes in it is not.
        pool.give_back(pipe);
        assert_eq!(pool.bytes(), BULK_PIPE);
        let mut again = pool.lease().unwrap();
        assert_eq!(again.capacity, BULK_PIPE);
        again.pending = 1;
        pool.give_back(again);
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn growth_stops_at_the_budget() {
        let pool = PipePool::new(2, IntGauge::new("g", "g").unwrap());
        let mut pipe = pool.lease().unwrap();
        let small = pipe.capacity;
        pool.bytes.store(BUDGET - 1, Ordering::Relaxed);
        pool.grow(&mut pipe);
        assert_eq!(pipe.capacity, small);
        assert_eq!(pool.bytes(), BUDGET - 1);
    }

    #[test]
    fn a_new_pipe_needs_room_in_the_budget_an_idle_one_does_not() {
        let pool = PipePool::new(4, IntGauge::new("g", "g").unwrap());
        let first = pool.lease().unwrap();
        let small = first.capacity;
        pool.give_back(first);
        assert_eq!(pool.bytes(), small);
        // The idle pipe is counted already: reusing it needs no room.
        pool.bytes.store(BUDGET, Ordering::Relaxed);
        let reused = pool.lease().expect("the idle pipe is reused at the budget");
        // No idle pipe left and no room: refused, nothing leased, nothing reserved.
        assert!(matches!(pool.lease(), Err(LeaseError::Budget)));
        assert_eq!(pool.leased(), 1);
        assert_eq!(pool.gauge.get(), 1);
        assert_eq!(pool.bytes(), BUDGET);
        // Room for exactly one more new pipe.
        pool.bytes.store(BUDGET - NEW_PIPE, Ordering::Relaxed);
        let new = pool.lease().expect("a new pipe fits");
        assert_eq!(pool.bytes(), BUDGET - NEW_PIPE + new.capacity);
        assert!(matches!(pool.lease(), Err(LeaseError::Budget)));
        assert_eq!(pool.leased(), 2);
        pool.give_back(reused);
        pool.give_back(new);
        assert_eq!(pool.leased(), 0);
    }

    #[test]
    fn pending_bytes_are_read_out_in_order() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut pipe = Pipe::new().unwrap();
        a.write_all(b"first ").unwrap();
        pipe.fill_from(b.as_raw_fd(), 1 << 16).unwrap();
        a.write_all(b"second").unwrap();
        pipe.fill_from(b.as_raw_fd(), 1 << 16).unwrap();
        let mut out = b"held:".to_vec();
        pipe.read_pending(&mut out).unwrap();
        assert_eq!(out, b"held:first second");
        assert_eq!(pipe.pending, 0);
    }

    #[test]
    fn splice_moves_bytes_through_a_pipe() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        a.write_all(b"hello splice").unwrap();
        let mut pipe = Pipe::new().unwrap();
        assert_eq!(pipe.fill_from(b.as_raw_fd(), 1 << 16).unwrap(), 12);
        assert_eq!(pipe.pending, 12);
        assert_eq!(pipe.drain_to(c.as_raw_fd()).unwrap(), 12);
        assert_eq!(pipe.pending, 0);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
        let err = pipe.fill_from(b.as_raw_fd(), 1 << 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
