//! Client connections warren encrypts to their backend: to a pool with `[pool.NAME.tls]`, every
//! connection a `[listener.tls]` decrypted, and a plain listener's when the pool says
//! `encrypt = "all"` ([`encrypts`]). Connecting is the TLS handshake too (the pool's CA, SNI and
//! certificate name `server_name`, its client certificate if any), within the same
//! `connect_timeout`: a failed handshake is a failed connect (`reason="tls"`), failed over to
//! the next candidate before a byte of the client's is sent ([`Handshake`]). An outbound PROXY
//! header goes before the handshake, as RabbitMQ reads it; the bytes that came with an inbound
//! one go inside it.
//!
//! Such a connection has its own boxed future, so a plain connection's task keeps its size and
//! its splice path; it copies through two buffers. Its session keys cannot leave this process,
//! so an upgrade of warren never parks it: like a terminated one it counts itself in
//! [`pause::Pauser::bound`] and forwards here until it closes or the old process's grace period
//! ends. It owns no routing and no listener.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use prometheus::IntCounter;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connect::Open;
use super::tls::{Shared, BACKEND_FIRST, BUFFER, CLIENT_FIRST};
use super::*;
use crate::state::BackendRoute;

/// The backend's end of a connection warren encrypts: the TLS session over its socket.
pub(super) type Upstream = tokio_rustls::client::TlsStream<TcpStream>;

/// Warren's end of the connection to the backend, as the node sees it (a graceful close names
/// the connection by it).
pub(super) trait LocalEnd {
    fn local_end(&self) -> io::Result<SocketAddr>;
}

impl LocalEnd for TcpStream {
    fn local_end(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// Read when the backend was connected: the TLS session owns the socket.
impl LocalEnd for SocketAddr {
    fn local_end(&self) -> io::Result<SocketAddr> {
        Ok(*self)
    }
}

/// A connection encrypted to its backend, established: the client's end (a socket, or the
/// session a `[listener.tls]` decrypts), the link, the backend's session.
pub(super) struct Encrypted<C> {
    client: C,
    link: Link<(), SocketAddr>,
    upstream: Upstream,
    idle_timeout: Duration,
}

/// Whether a connection of `listener` (`terminated`: a `[listener.tls]` decrypted it) goes
/// encrypted to its pool's backends, by the routing as it is now.
pub(super) fn encrypts(ctx: &Context, listener: &ListenerConfig, terminated: bool) -> bool {
    let snapshot = ctx.routing.load();
    let tls = snapshot
        .pools
        .get(listener.pool.as_str())
        .and_then(|pool| pool.backends.first())
        .and_then(|backend| backend.tls.as_ref());
    tls.is_some_and(|tls| tls.encrypts(terminated))
}

/// Each try's step after TCP: the outbound PROXY header, then the TLS handshake.
struct Handshake<'h> {
    proxy_header: &'h [u8],
}

impl Open for Handshake<'_> {
    type Stream = Upstream;

    async fn open<'b>(
        &'b self,
        backend: &'b BackendRoute,
        mut stream: TcpStream,
    ) -> Result<Upstream, (Option<ConnectFailure>, String)> {
        let Some(tls) = &backend.tls else {
            // A reload took `[pool.NAME.tls]` away since `encrypts` was asked: not the
            // backend's fault, so not held against it (the client is turned away).
            let why = "the pool speaks TLS no longer (reloaded meanwhile)";
            return Err((None, why.to_owned()));
        };
        if !self.proxy_header.is_empty() {
            if let Err(e) = stream.write_all(self.proxy_header).await {
                let why = format!("writing the PROXY header: {e}");
                return Err((Some(ConnectFailure::Other), why));
            }
        }
        let connector = tokio_rustls::TlsConnector::from(tls.config());
        let handshake = connector.connect(tls.server_name.clone(), stream).await;
        handshake.map_err(|e| {
            let why = crate::tls::rustls_reason(&e).unwrap_or_else(|| e.to_string());
            (
                Some(ConnectFailure::Tls),
                format!("TLS handshake failed: {why}"),
            )
        })
    }
}

/// [`link_up`](super::link_up) for a connection warren encrypts: pick a backend, connect and
/// complete the TLS handshake (with failover), then send what came with the inbound PROXY
/// header. `None` when the client was turned away (counted and logged).
pub(super) async fn link_up<C>(
    client: C,
    entry: Entry,
    listener: &ListenerConfig,
    listener_name: &str,
    ctx: &Context,
    stats: &ListenerStats,
) -> Option<Encrypted<C>> {
    let Entry {
        permit,
        early,
        origin,
        destination,
        pool: routed,
    } = entry;
    let snapshot = ctx.routing.load_full();
    let pool_name = routed.as_deref().unwrap_or(&listener.pool);
    let Some(pool) = snapshot.pools.get(pool_name) else {
        stats.rejected(RejectReason::NoBackend).inc();
        return None;
    };
    let header = Header::Proxied {
        source: origin,
        destination,
    };
    let mut proxy_header = Vec::new();
    match listener.proxy_protocol {
        ProxyProtocol::Off => {}
        ProxyProtocol::V1 => proxy_protocol::encode_v1(&header, &mut proxy_header),
        ProxyProtocol::V2 => proxy_protocol::encode_v2(&header, &mut proxy_header),
    }
    let handshake = Handshake {
        proxy_header: &proxy_header,
    };
    let observers = (&*ctx.health, &*ctx.routing);
    let connecting = connect::connect_with(pool, listener, origin.ip(), observers, &handshake);
    let connected = match connecting.await {
        Ok(c) => c,
        Err(e) => return no_backend(&e, listener_name, origin, stats),
    };
    let backend = connected.backend;
    let mut upstream = connected.stream;
    let mut slot = connected.slot;
    backend.stats.total.inc();
    if !early.is_empty() {
        let sent = async {
            upstream.write_all(&early).await?;
            upstream.flush().await
        };
        if let Err(e) = sent.await {
            tracing::warn!(listener = listener_name, backend = %backend.name, error = %e,
                "writing the bytes that came with the PROXY header to the backend failed");
            stats.closed(CloseReason::Backend).inc();
            closed_early(&pool.name, &backend.name, &backend.stats, &*ctx.health);
            return None;
        }
        backend.stats.bytes_to_backend.inc_by(early.len() as u64);
        ctx.plane.to_backend.copy.inc_by(early.len() as u64);
    }
    slot.established();
    let local = upstream.get_ref().0.local_addr().unwrap_or(origin);
    let link = Link {
        client: (),
        upstream: local,
        backend: slot,
        _permit: Some(permit),
        connected_at: Instant::now(),
        origin,
        destination,
        pool: pool.name.clone(),
        backend_name: backend.name.clone(),
        backend_addr: backend.addr,
        proxy_protocol: listener.proxy_protocol,
        early_bytes: u32::try_from(early.len()).unwrap_or(u32::MAX),
        progress: AtomicU8::new(Progress::NotAsked as u8),
        forced: AtomicU8::new(NOT_FORCED),
    };
    Some(Encrypted {
        client,
        link,
        upstream,
        idle_timeout: listener.idle_timeout,
    })
}

/// Forward an established connection until it ends, then count and log it.
pub(super) async fn run<C>(encrypted: Encrypted<C>, conn: &Conn)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    #[cfg(unix)]
    let _stays = conn.ctx.pause.bound_guard();
    let Encrypted {
        mut client,
        mut link,
        mut upstream,
        idle_timeout,
    } = encrypted;
    let close = link.backend.take_close_token();
    let stop = std::pin::pin!(closed_by_warren(&link, &conn.ctx, close, true));
    let ends = (&mut client, &mut upstream);
    let (reason, bytes) = forward(ends, &link, &conn.ctx.plane, idle_timeout, stop).await;
    ended(&link, conn, reason, bytes);
}

/// Forward both ways until both ends have closed, either fails, the connection is idle for
/// `idle_timeout`, or `stop` completes (warren closes it). An end's close (FIN, close_notify)
/// is passed on as a half close; a client that resets (or fails) gets the backend reset.
async fn forward<C, S>(
    (client, upstream): (&mut C, &mut Upstream),
    link: &Link<(), SocketAddr>,
    plane: &Plane,
    idle_timeout: Duration,
    mut stop: Pin<&mut S>,
) -> (CloseReason, (u64, u64))
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    S: Future<Output = Stop> + Send,
{
    let shared = Shared::new();
    let stats = link.backend.stats();
    let mut from_client = Counted {
        inner: &mut *client,
        side: CLIENT_FIRST,
        total: 0,
        counters: (&stats.bytes_to_backend, &plane.to_backend.copy),
        shared: &shared,
    };
    let mut from_backend = Counted {
        inner: &mut *upstream,
        side: BACKEND_FIRST,
        total: 0,
        counters: (&stats.bytes_to_client, &plane.to_client.copy),
        shared: &shared,
    };
    let reason = {
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut from_client,
            &mut from_backend,
            BUFFER,
            BUFFER,
        );
        let mut copy = std::pin::pin!(copy);
        let mut idle = std::pin::pin!(shared.idle(idle_timeout));
        let mut stopping = true;
        loop {
            tokio::select! {
                copied = &mut copy => break match copied {
                    Ok(_) => None,
                    Err(_) => Some(CloseReason::Error),
                },
                () = &mut idle => break Some(CloseReason::Idle),
                verdict = &mut stop, if stopping => match verdict {
                    Stop::Close => break Some(CloseReason::Drain),
                    // An upgrade's pause with no close to follow after it: the connection stays.
                    Stop::Pause => stopping = false,
                },
            }
        }
    };
    let bytes = (from_client.total, from_backend.total);
    let first = shared.first();
    if reason == Some(CloseReason::Error) && first == CLIENT_FIRST {
        // Closing the socket (when the task ends) then sends RST, as a plain connection
        // passes the client's on.
        let _ = SockRef::from(upstream.get_ref().0).set_linger(Some(Duration::ZERO));
    }
    let reason = reason
        .filter(|r| *r != CloseReason::Error)
        .unwrap_or(match first {
            BACKEND_FIRST => CloseReason::Backend,
            _ => CloseReason::Client,
        });
    (reason, bytes)
}

/// One end of a connection as the copy sees it: what is read from it is counted (bytes
/// forwarded to the other end) and keeps the connection from idling; its end (EOF, a TLS peer
/// gone without close_notify, an error reading or writing) is recorded as `side` closing
/// first.
struct Counted<'a, T> {
    inner: &'a mut T,
    side: u8,
    total: u64,
    /// The backend's counter and the data plane's, of the direction read from here.
    counters: (&'a IntCounter, &'a IntCounter),
    shared: &'a Shared,
}

impl<T> Counted<'_, T> {
    fn failed<R>(&self, result: io::Result<R>) -> io::Result<R> {
        if result.is_err() {
            self.shared.closed(self.side);
        }
        result
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            // Many TLS peers close TCP without close_notify: an end all the same.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Poll::Ready(read) => read,
        };
        let n = (buf.filled().len() - before) as u64;
        if read.is_err() || n == 0 {
            this.shared.closed(this.side);
        } else {
            this.shared.touch();
            this.total += n;
            this.counters.0.inc_by(n);
            this.counters.1.inc_by(n);
        }
        Poll::Ready(read)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        Pin::new(&mut *this.inner)
            .poll_write(cx, buf)
            .map(|r| this.failed(r))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut *this.inner)
            .poll_flush(cx)
            .map(|r| this.failed(r))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut *this.inner)
            .poll_shutdown(cx)
            .map(|r| this.failed(r))
    }
}
