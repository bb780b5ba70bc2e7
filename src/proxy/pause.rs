//! Established connections across an upgrade of warren itself (see `crate::handover`): in the
//! old process, pausing every connection ([`Pauser::pause_all`]) and parking it with what it
//! held in flight, for the server to send to the new process and then let go of
//! ([`Parked::taken`]) or resume here ([`Parked`] dropped); in the new process, turning what
//! was handed over back into a forwarding connection ([`adopt`]). A paused connection reads
//! nothing: its sockets and its bytes in flight move together, so no byte is lost,
//! duplicated or reordered. The exchange with the other process is the server's.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::Engine as _;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::handover::protocol::HandedConnection;
use forward::InFlight;

/// What a parked connection is told.
enum Verdict {
    /// The new process holds it: end this task without closing anything.
    Taken,
}

/// A connection paused for a hand-over, as the server receives it: its description and
/// sockets, valid until the connection is told its verdict.
pub struct Parked {
    pub connection: HandedConnection,
    /// The client's and the backend's socket, owned by the parked task.
    fds: [RawFd; 2],
    verdict: oneshot::Sender<Verdict>,
}

impl Parked {
    /// The client's and the backend's sockets, to pass to the new process.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        // SAFETY: the task that parked this connection keeps both sockets open until it hears
        // its verdict, which only `self` can give (`taken` consumes it, dropping it resumes):
        // the descriptors outlive every borrow of `self`.
        self.fds.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// The new process forwards the connection now: this process forgets it without closing
    /// it (closing its copies of the sockets sends nothing while the new process holds them).
    pub fn taken(self) {
        let _ = self.verdict.send(Verdict::Taken);
    }
}

/// The data plane's side of a hand-over, shared by every connection through the [`Context`].
#[derive(Default)]
pub struct Pauser {
    /// Set while connections are being paused: one established after the backends' close
    /// tokens fired parks before it forwards a byte.
    pausing: AtomicBool,
    parked: Mutex<Option<mpsc::UnboundedSender<Parked>>>,
    /// Connections in a close warren started (a drain deadline, a rebalance): they finish
    /// here rather than move.
    closing: AtomicUsize,
    /// Connections still being set up (a PROXY header to come, connecting to their backend).
    setting_up: AtomicUsize,
    /// Established TLS connections: their session keys live in this process, so they never
    /// park; after a hand-over they end here (`proxy::tls`).
    bound: AtomicUsize,
    /// The token that replaced each backend's when the last pause fired it (keyed by the
    /// counters' address): a connection resumed after a failed upgrade follows the chain from
    /// there, so a close that fired meanwhile (`on_down`) reaches it.
    fired: Mutex<Vec<(usize, CloseToken)>>,
}

impl Pauser {
    /// Whether connections are being paused.
    pub fn pausing(&self) -> bool {
        self.pausing.load(Ordering::SeqCst)
    }

    /// Connections warren is closing, which will not park.
    pub fn closing(&self) -> usize {
        self.closing.load(Ordering::SeqCst)
    }

    /// TLS connections, which stay in this process.
    pub fn bound(&self) -> usize {
        self.bound.load(Ordering::SeqCst)
    }

    /// Connections still being set up; they park once established.
    pub fn setting_up(&self) -> usize {
        self.setting_up.load(Ordering::SeqCst)
    }

    /// Pause every connection: each parks on the returned channel with what it held. Those
    /// being set up park once established. Stop with [`Pauser::resume_all`].
    pub fn pause_all(&self, routing: &Routing) -> mpsc::UnboundedReceiver<Parked> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.parked) = Some(tx);
        // Before the tokens fire: a connection that takes a fresh token after its backend's
        // fired sees the flag when it is established.
        self.pausing.store(true, Ordering::SeqCst);
        let fired = routing
            .all_stats()
            .iter()
            .map(|stats| {
                let next = stats.fire(routing.shutdown_token(), CloseCause::Handover);
                (Arc::as_ptr(stats) as usize, next)
            })
            .collect();
        *lock(&self.fired) = fired;
        rx
    }

    /// The token a connection to `stats`'s backend watches when it resumes after a failed
    /// upgrade: the chain from the pause on, past the pause and rebalances (its slot is
    /// gone), up to the first close of another kind or the current token.
    pub(super) fn resume_token(&self, stats: &Arc<BackendStats>) -> CloseToken {
        let key = Arc::as_ptr(stats) as usize;
        let from = lock(&self.fired)
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, token)| token.clone());
        let Some(mut token) = from else {
            return stats.close_token();
        };
        while token.token().is_cancelled() {
            match (token.cause(), token.next()) {
                (Some(CloseCause::Handover | CloseCause::Rebalance(_)), Some(next)) => token = next,
                _ => break,
            }
        }
        token
    }

    /// The hand-over is over (it failed, or every connection moved): connections no longer
    /// park. Parked ones still waiting resume when their [`Parked`] is dropped.
    pub fn resume_all(&self) {
        self.pausing.store(false, Ordering::SeqCst);
        *lock(&self.parked) = None;
    }

    /// Count a connection in a close warren started while the guard lives.
    pub(super) fn closing_guard(&self) -> CountGuard<'_> {
        CountGuard::new(&self.closing)
    }

    /// Count a connection that cannot move while the guard lives.
    pub(super) fn bound_guard(&self) -> CountGuard<'_> {
        CountGuard::new(&self.bound)
    }

    /// Count a connection being set up while the guard lives.
    pub(super) fn setting_up_guard(&self) -> CountGuard<'_> {
        CountGuard::new(&self.setting_up)
    }
}

/// One in a count while it lives.
pub(super) struct CountGuard<'a>(&'a AtomicUsize);

impl<'a> CountGuard<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        CountGuard(count)
    }
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Park a paused connection until the server decides: `None` when the new process took it,
/// else what it held, to resume forwarding here (the upgrade failed, or nobody collects).
pub(super) async fn park(link: &Link, conn: &Conn, held: Box<InFlight>) -> Option<Box<InFlight>> {
    let (verdict, decided) = oneshot::channel();
    let parked = Parked {
        connection: describe(link, conn, &held),
        fds: [link.client.as_raw_fd(), link.upstream.as_raw_fd()],
        verdict,
    };
    let sent = match &*lock(&conn.ctx.pause.parked) {
        Some(tx) => tx.send(parked).is_ok(),
        None => false,
    };
    if sent && matches!(decided.await, Ok(Verdict::Taken)) {
        tracing::debug!(client = %link.origin, backend = %link.backend_name, "connection handed to the new process");
        return None;
    }
    Some(held)
}

/// What the new process needs to know of a connection.
fn describe(link: &Link, conn: &Conn, held: &InFlight) -> HandedConnection {
    let b64 = base64::engine::general_purpose::STANDARD;
    HandedConnection {
        listener: conn.listener.to_string(),
        pool: link.pool.to_string(),
        backend: link.backend_name.to_string(),
        backend_addr: link.backend_addr,
        client: link.origin,
        destination: link.destination,
        proxy_protocol: match link.proxy_protocol {
            ProxyProtocol::Off => 0,
            ProxyProtocol::V1 => 1,
            ProxyProtocol::V2 => 2,
        },
        age_ms: millis(link.connected_at.elapsed()),
        idle_ms: millis(held.idle_for),
        bytes_to_backend: held.totals.0,
        bytes_to_client: held.totals.1,
        early_bytes: link.early_bytes,
        to_backend: b64.encode(&held.to_backend),
        to_client: b64.encode(&held.to_client),
        client_done: held.client_done,
        backend_done: held.backend_done,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where an adopted connection's listener stands in the new process.
pub struct AdoptingListener {
    name: Arc<str>,
    stats: Arc<ListenerStats>,
    /// Its `max_connections` slots; an adopted connection takes one if one is free (a new
    /// config with a lower limit does not close connections it already has).
    limit: Option<Arc<Semaphore>>,
    idle_timeout: Duration,
}

impl AdoptingListener {
    /// Listener `name` of this process (its counters, its slots, its `idle_timeout`).
    pub fn new(
        ctx: &Context,
        name: &str,
        limit: Option<Arc<Semaphore>>,
        idle_timeout: Duration,
    ) -> AdoptingListener {
        AdoptingListener {
            name: Arc::from(name),
            stats: Arc::new(ctx.metrics.listener(name)),
            limit,
            idle_timeout,
        }
    }
}

/// Why a handed-over connection could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("connection from {client}: what it held in flight is not base64: {reason}")]
    Bytes { client: SocketAddr, reason: String },
    #[error("connection from {client}: its sockets cannot be used here: {source}")]
    Socket {
        client: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A handed-over connection ready to forward in this process, not started yet: the old
/// process still holds it until this one confirms.
pub struct Adopted {
    link: Link,
    conn: Conn,
    idle_timeout: Duration,
    held: Box<InFlight>,
    worker: tokio::runtime::Handle,
}

/// Make a connection the old process handed over ready to forward here, on `worker`'s event
/// loop. It counts in its backend and listener from now on; [`Adopted::start`] runs it.
pub fn adopt(
    ctx: &Arc<Context>,
    handed: HandedConnection,
    sockets: [OwnedFd; 2],
    listener: &AdoptingListener,
    worker: &tokio::runtime::Handle,
) -> Result<Adopted, AdoptError> {
    let client = handed.client;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = |text: &str| {
        b64.decode(text).map_err(|e| AdoptError::Bytes {
            client,
            reason: e.to_string(),
        })
    };
    let held = Box::new(InFlight {
        to_backend: bytes(&handed.to_backend)?,
        to_client: bytes(&handed.to_client)?,
        client_done: handed.client_done,
        backend_done: handed.backend_done,
        totals: (handed.bytes_to_backend, handed.bytes_to_client),
        idle_for: Duration::from_millis(handed.idle_ms),
    });
    let [client_fd, upstream_fd] = sockets;
    let registered = {
        let _on_worker = worker.enter();
        let register = |fd: OwnedFd| {
            let socket = std::net::TcpStream::from(fd);
            socket.set_nonblocking(true)?;
            TcpStream::from_std(socket)
        };
        register(client_fd).and_then(|c| Ok((c, register(upstream_fd)?)))
    };
    let (client_socket, upstream) =
        registered.map_err(|source| AdoptError::Socket { client, source })?;
    let stats = ctx.routing.backend_stats(&handed.pool, &handed.backend);
    let mut slot = BackendSlot::claim(&stats);
    slot.established();
    let permit = listener
        .limit
        .as_ref()
        .and_then(|l| l.clone().try_acquire_owned().ok());
    let age = Duration::from_millis(handed.age_ms);
    let link = Link {
        client: client_socket,
        upstream,
        backend: slot,
        _permit: permit,
        connected_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        origin: handed.client,
        destination: handed.destination,
        pool: Arc::from(handed.pool.as_str()),
        backend_name: Arc::from(handed.backend.as_str()),
        backend_addr: handed.backend_addr,
        proxy_protocol: match handed.proxy_protocol {
            1 => ProxyProtocol::V1,
            2 => ProxyProtocol::V2,
            _ => ProxyProtocol::Off,
        },
        early_bytes: handed.early_bytes,
        progress: AtomicU8::new(Progress::NotAsked as u8),
        forced: AtomicU8::new(NOT_FORCED),
    };
    let conn = Conn {
        listener: listener.name.clone(),
        ctx: ctx.clone(),
        stats: listener.stats.clone(),
    };
    Ok(Adopted {
        link,
        conn,
        idle_timeout: listener.idle_timeout,
        held,
        worker: worker.clone(),
    })
}

impl Adopted {
    /// Forward it from where the old process paused it, tracked by `tracker`.
    pub fn start(self, tracker: &TaskTracker) {
        let worker = self.worker.clone();
        tracker.spawn_on(self.run(), &worker);
    }

    async fn run(self) {
        let Adopted {
            mut link,
            conn,
            idle_timeout,
            held,
            ..
        } = self;
        let _active = GaugeGuard::new(&conn.stats.active);
        // Its backend's token as it is now; the slot's own is not needed.
        drop(link.backend.take_close_token());
        moving(&link, &conn, idle_timeout, held, false).await;
    }
}
