//! A connection on a `[listener.tls]` listener: after accept (and the inbound PROXY header, if
//! the listener takes one) the TLS handshake within `handshake_timeout`, counted by outcome;
//! then a backend, as for a plain connection ([`link_up`]), and forwarding that decrypts the
//! client's bytes to the backend and encrypts the backend's to the client. Its own task type,
//! so plain connections keep their small task and their splice path: TLS forwarding copies
//! through two buffers. The certificate is the listener's config as the handshake starts, so a
//! reload's new certificate reaches new handshakes while open sessions keep theirs.
//!
//! A TLS connection never parks for an upgrade of warren (its session keys cannot leave this
//! process): it counts itself in [`pause::Pauser::bound`] and keeps forwarding here until it
//! closes or the old process's grace period ends. It owns no routing and no listener. To a
//! pool with `[pool.NAME.tls]` the decrypted bytes go encrypted again ([`upstream_tls`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll};

use prometheus::IntCounter;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use super::*;
use crate::config::ListenerTls;
use crate::tls::HandshakeFailure;
use metrics::TlsStats;

/// Each direction's copy buffer: a TLS record's largest plaintext.
pub(super) const BUFFER: usize = 16 * 1024;

/// The client's socket with the bytes that came with its PROXY header (the start of its
/// ClientHello) put back in front, for the handshake to read first.
pub(super) struct Rewind {
    early: Vec<u8>,
    socket: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.drain(..n);
            if self.early.is_empty() {
                self.early = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

pub(super) type Session = TlsStream<Rewind>;

/// A TLS connection, established. Returned once, by value (see `Established`).
#[allow(clippy::large_enum_variant)]
enum Terminated {
    /// To a plain backend: the link, the client's session, the listener's `idle_timeout`.
    Plain(Link<()>, Session, Duration),
    /// To a backend warren encrypts to (`[pool.NAME.tls]`).
    Encrypted(Box<upstream_tls::Encrypted<Session>>),
}

/// The task of one TLS connection, from accept to its log line.
pub(super) async fn handle(accepted: Box<Accepted>, conn: Conn) {
    conn.stats.total.inc();
    let _active = GaugeGuard::new(&conn.stats.active);
    // In a block of its own, so the value established is not kept beside the link.
    let (mut link, session, idle_timeout) = {
        let established = match Box::pin(establish(accepted, &conn)).await {
            None => return,
            Some(Terminated::Plain(link, session, idle_timeout)) => {
                Ok((link, session, idle_timeout))
            }
            Some(Terminated::Encrypted(encrypted)) => Err(encrypted),
        };
        match established {
            Ok(plain) => plain,
            Err(encrypted) => return Box::pin(upstream_tls::run(*encrypted, &conn)).await,
        }
    };
    #[cfg(unix)]
    let _stays = conn.ctx.pause.bound_guard();
    let close = link.backend.take_close_token();
    let stop = std::pin::pin!(closed_by_warren(&link, &conn.ctx, close, true));
    let (reason, bytes) = forward(session, &link, &conn.ctx.plane, idle_timeout, stop).await;
    ended(&link, &conn, reason, bytes);
}

/// Let the connection in, complete its handshake, and link it to a backend.
async fn establish(accepted: Box<Accepted>, conn: &Conn) -> Option<Terminated> {
    let ctx = &*conn.ctx;
    #[cfg(unix)]
    let _setting_up = ctx.pause.setting_up_guard();
    let (client, listener, mut entry) =
        admitted(accepted, &conn.listener, ctx, &conn.stats).await?;
    let stats = conn
        .stats
        .tls
        .get_or_init(|| ctx.metrics.tls(&conn.listener));
    let Some(tls) = &listener.tls else {
        // A reload made the listener plain between accept and now: this client speaks TLS.
        tracing::debug!(listener = &*conn.listener, client = %entry.origin,
            "the listener no longer terminates TLS: connection closed");
        return None;
    };
    let rewind = Rewind {
        early: std::mem::take(&mut entry.early),
        socket: client,
    };
    let session = match handshake(rewind, tls).await {
        Ok(session) => session,
        Err(reason) => {
            failed(reason, &conn.listener, entry.origin, stats);
            return None;
        }
    };
    stats.handshakes.inc();
    if upstream_tls::encrypts(ctx, &listener, true) {
        let linking =
            upstream_tls::link_up(session, entry, &listener, &conn.listener, ctx, &conn.stats);
        return Box::pin(linking)
            .await
            .map(|e| Terminated::Encrypted(Box::new(e)));
    }
    let (link, idle_timeout) =
        link_up((), entry, &listener, &conn.listener, ctx, &conn.stats).await?;
    Some(Terminated::Plain(link, session, idle_timeout))
}

/// The server handshake on `client` with the listener's current certificate, within its
/// `handshake_timeout`.
async fn handshake(client: Rewind, tls: &ListenerTls) -> Result<Session, HandshakeFailure> {
    let accepting = tls.server.acceptor().accept(client);
    match tokio::time::timeout(tls.handshake_timeout, accepting).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Err(e)) => Err(HandshakeFailure::of(&e)),
        Ok(Ok(session)) => Ok(session),
    }
}

/// Count and log a failed handshake: every one at debug, and at info when the listener's
/// failures reach a power of two, so a scanner or a misconfigured fleet of clients cannot
/// flood the log.
fn failed(reason: HandshakeFailure, listener: &str, client: SocketAddr, stats: &TlsStats) {
    stats.failed(reason).inc();
    let failures = stats.failures();
    if failures.is_power_of_two() {
        tracing::info!(listener, %client, reason = reason.as_str(), failures,
            "TLS handshake failed, connection closed (logged at info at 1, 2, 4, 8, ... failures; each at debug)");
    } else {
        tracing::debug!(listener, %client, reason = reason.as_str(), failures,
            "TLS handshake failed, connection closed");
    }
}

/// Which end closed first, as the connection's close reason.
const OPEN: u8 = 0;
pub(super) const CLIENT_FIRST: u8 = 1;
pub(super) const BACKEND_FIRST: u8 = 2;

/// What both directions share: who closed first, and the last activity (milliseconds after
/// the connection was established), for the idle timer.
pub(super) struct Shared {
    first: AtomicU8,
    active_ms: AtomicU64,
    since: Instant,
}

impl Shared {
    /// Neither end closed, active now.
    pub(super) fn new() -> Shared {
        Shared {
            first: AtomicU8::new(OPEN),
            active_ms: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    /// Which end closed first ([`CLIENT_FIRST`], [`BACKEND_FIRST`]; 0 for neither yet).
    pub(super) fn first(&self) -> u8 {
        self.first.load(Ordering::Relaxed)
    }

    pub(super) fn closed(&self, by: u8) {
        let _ = self
            .first
            .compare_exchange(OPEN, by, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(super) fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.active_ms.store(ms, Ordering::Relaxed);
    }

    /// Complete once neither direction moved a byte for `idle`.
    pub(super) async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.active_ms.load(Ordering::Relaxed));
            let deadline = self.since + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Forward between the TLS session and the backend until both have closed, either resets,
/// the connection is idle for `idle_timeout`, or `stop` completes (warren closes it). Half
/// closes are forwarded: the client's close_notify or FIN shuts the backend's write side, the
/// backend's FIN sends close_notify and FIN to the client.
async fn forward<S: Future<Output = Stop> + Send>(
    session: Session,
    link: &Link<()>,
    plane: &Plane,
    idle_timeout: Duration,
    mut stop: Pin<&mut S>,
) -> (CloseReason, (u64, u64)) {
    let shared = Shared::new();
    let bytes = (AtomicU64::new(0), AtomicU64::new(0));
    let (from_client, to_client) = tokio::io::split(session);
    let upstream = &link.upstream;
    let stats = link.backend.stats();
    let counters = (
        (&stats.bytes_to_backend, &plane.to_backend.copy),
        (&stats.bytes_to_client, &plane.to_client.copy),
    );
    let up = std::pin::pin!(client_to_backend(
        from_client,
        upstream,
        counters.0,
        &bytes.0,
        &shared
    ));
    let down = std::pin::pin!(backend_to_client(
        upstream, to_client, counters.1, &bytes.1, &shared
    ));
    let mut both = std::pin::pin!(async {
        let (a, b) = futures_join(up, down).await;
        a.and(b)
    });
    let idle = shared.idle(idle_timeout);
    let mut idle = std::pin::pin!(idle);
    let mut stopping = true;
    let reason = loop {
        tokio::select! {
            ended = &mut both => break match ended {
                Ok(()) => None,
                Err(()) => Some(CloseReason::Error),
            },
            () = &mut idle => break Some(CloseReason::Idle),
            verdict = &mut stop, if stopping => match verdict {
                Stop::Close => break Some(CloseReason::Drain),
                // An upgrade's pause with no close to follow after it: the connection stays.
                Stop::Pause => stopping = false,
            },
        }
    };
    let reason = reason
        .filter(|r| *r != CloseReason::Error)
        .unwrap_or_else(|| match shared.first.load(Ordering::Relaxed) {
            BACKEND_FIRST => CloseReason::Backend,
            _ => CloseReason::Client,
        });
    let totals = (
        bytes.0.load(Ordering::Relaxed),
        bytes.1.load(Ordering::Relaxed),
    );
    (reason, totals)
}

/// Both futures to completion, or the first error: a reset on one side ends the other.
async fn futures_join<A, B>(a: Pin<&mut A>, b: Pin<&mut B>) -> (Result<(), ()>, Result<(), ()>)
where
    A: Future<Output = Result<(), ()>>,
    B: Future<Output = Result<(), ()>>,
{
    let (mut a, mut b) = (a, b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(r) = a.as_mut().poll(cx) {
                ra = Some(r);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(r) = b.as_mut().poll(cx) {
                rb = Some(r);
            }
        }
        match (ra, rb) {
            (Some(Err(())), _) | (_, Some(Err(()))) => Poll::Ready(()),
            (Some(_), Some(_)) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    })
    .await;
    (ra.unwrap_or(Ok(())), rb.unwrap_or(Ok(())))
}

/// The client's plaintext to the backend; at its end, the backend's write side shut.
async fn client_to_backend(
    mut from: tokio::io::ReadHalf<Session>,
    upstream: &TcpStream,
    (backend_bytes, plane_bytes): (&IntCounter, &IntCounter),
    total: &AtomicU64,
    shared: &Shared,
) -> Result<(), ()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            // A client that closes TCP without close_notify (many do) has closed all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            read => read,
        };
        let n = match n {
            Ok(0) => {
                shared.closed(CLIENT_FIRST);
                let _ = SockRef::from(upstream).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Ok(n) => n,
            Err(_) => {
                shared.closed(CLIENT_FIRST);
                reset(upstream);
                return Err(());
            }
        };
        if write_all(upstream, &buf[..n]).await.is_err() {
            shared.closed(BACKEND_FIRST);
            return Err(());
        }
        shared.touch();
        total.fetch_add(n as u64, Ordering::Relaxed);
        backend_bytes.inc_by(n as u64);
        plane_bytes.inc_by(n as u64);
    }
}

/// The backend's bytes to the client, encrypted; at their end, close_notify and FIN.
async fn backend_to_client(
    upstream: &TcpStream,
    mut to: tokio::io::WriteHalf<Session>,
    (client_bytes, plane_bytes): (&IntCounter, &IntCounter),
    total: &AtomicU64,
    shared: &Shared,
) -> Result<(), ()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match read(upstream, &mut buf).await {
            Ok(0) => {
                shared.closed(BACKEND_FIRST);
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(_) => {
                shared.closed(BACKEND_FIRST);
                return Err(());
            }
        };
        let written = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        };
        if written.await.is_err() {
            shared.closed(CLIENT_FIRST);
            reset(upstream);
            return Err(());
        }
        shared.touch();
        total.fetch_add(n as u64, Ordering::Relaxed);
        client_bytes.inc_by(n as u64);
        plane_bytes.inc_by(n as u64);
    }
}

/// Read from a shared socket (the stop future reads the backend's address meanwhile).
async fn read(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return done,
        }
    }
}

/// Write all of `bytes` to a shared socket.
async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Make the backend see a reset, as a plain connection would pass the client's on.
fn reset(upstream: &TcpStream) {
    // Closing it (when the connection's task ends) then sends RST rather than FIN.
    let _ = SockRef::from(upstream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_reads_the_early_bytes_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut rewind = Rewind {
            early: b"hello".to_vec(),
            socket,
        };
        let mut all = Vec::new();
        rewind.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
