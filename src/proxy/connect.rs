//! Connecting to a backend with failover, with NGINX `proxy_next_upstream` semantics: walk the
//! balancer's candidates, one `connect_timeout` per attempt, stop after `next_upstream_tries`
//! attempts or `next_upstream_timeout` overall. Failures the backend caused are reported to the
//! health [`Observer`]; local failures (no ephemeral port, no descriptor) are not held against it,
//! and neither is a try cut short by the end of `next_upstream_timeout` (the budget ran out, not
//! the backend's `connect_timeout`): that ends in [`ConnectError::BudgetSpent`].
//!
//! A connection counts against the backend it tries from the moment it is chosen (a
//! [`BackendSlot`]: `connecting`, then `active`), and each try first checks the routing as it is
//! now: a backend drained or removed since the candidates were listed is skipped, so a drain
//! that saw no connection left cannot be followed by one.
//!
//! What a try does once TCP is up is the caller's [`Open`]: nothing for a plain backend
//! ([`Plain`]); the TLS handshake for one warren encrypts to (`proxy::upstream_tls`), within
//! the same `connect_timeout`, its failure counted as [`ConnectFailure::Tls`] and failed over
//! like a refused connect.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::balance;
use crate::config::ListenerConfig;
use crate::net::{is_exhaustion, is_local, ConnectFailure, Observer};
use crate::state::{AdminState, BackendRoute, BackendSlot, BackendStats, PoolRoute, Routing};

/// Why no backend connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backend of pool {pool} is available")]
    NoBackend { pool: String },
    #[error("every tried backend of pool {pool} failed ({tries} tries), last: {last}")]
    AllFailed {
        pool: String,
        tries: usize,
        last: String,
    },
    #[error("next_upstream_timeout of pool {pool} spent after {tries} tries, last: {last}")]
    BudgetSpent {
        pool: String,
        tries: usize,
        last: String,
    },
    #[error("local error while connecting to {backend}: {source}")]
    Local {
        backend: String,
        #[source]
        source: io::Error,
    },
}

async fn connect_once(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// What a try does with the backend's TCP connection before it counts as connected.
pub trait Open: Sync {
    /// The backend connection as the caller forwards over it.
    type Stream: Send;

    /// Make `stream`, just connected to `backend`, a [`Self::Stream`]; the error says what went
    /// wrong, with the reason it counts against the backend (failed over either way), `None`
    /// when it is not the backend's fault.
    fn open<'b>(
        &'b self,
        backend: &'b BackendRoute,
        stream: TcpStream,
    ) -> impl Future<Output = Result<Self::Stream, (Option<ConnectFailure>, String)>> + Send + 'b;
}

/// A plain backend: the TCP connection as it is.
pub struct Plain;

impl Open for Plain {
    type Stream = TcpStream;

    fn open<'b>(
        &'b self,
        _: &'b BackendRoute,
        stream: TcpStream,
    ) -> impl Future<Output = Result<TcpStream, (Option<ConnectFailure>, String)>> + Send + 'b {
        std::future::ready(Ok(stream))
    }
}

/// A backend connection, which backend it is, and its claim on it (still `connecting`).
pub struct Connected<'a, S = TcpStream> {
    pub stream: S,
    pub backend: &'a BackendRoute,
    pub slot: BackendSlot,
    pub tries: usize,
}

/// Whether `backend` of `pool` may still be tried, by the routing as it is now (the candidates
/// came from the snapshot taken when the connection arrived): it must still be in the pool
/// and not drained or draining.
fn still_eligible(routing: &Routing, pool: &str, backend: &str) -> bool {
    routing
        .load()
        .pools
        .get(pool)
        .and_then(|p| p.backend(backend))
        .is_some_and(|b| b.admin == AdminState::Active)
}

/// Connect to the best candidate of `pool` for `client`, failing over as the listener allows.
pub async fn connect<'a>(
    pool: &'a PoolRoute,
    listener: &ListenerConfig,
    client: IpAddr,
    observers: (&dyn Observer, &Routing),
) -> Result<Connected<'a>, ConnectError> {
    connect_with(pool, listener, client, observers, &Plain).await
}

/// [`connect`], each try finished by `open`.
pub async fn connect_with<'a, O: Open>(
    pool: &'a PoolRoute,
    listener: &ListenerConfig,
    client: IpAddr,
    (health, routing): (&dyn Observer, &Routing),
    open: &O,
) -> Result<Connected<'a, O::Stream>, ConnectError> {
    let candidates = match &listener.per_backend {
        // A per-backend listener serves its own node or no one: a stream client that reached
        // another node would be sent back here, in a loop.
        Some(own) => balance::Candidates::only(
            pool.backends
                .iter()
                .position(|b| *b.name == *own.backend && b.available()),
        ),
        None => pool.candidates(client),
    };
    if candidates.is_empty() {
        return Err(ConnectError::NoBackend {
            pool: pool.name.to_string(),
        });
    }
    let started = Instant::now();
    // Checked: a deadline past what `Instant` holds means no overall limit, never a panic.
    let deadline = listener
        .next_upstream_timeout
        .and_then(|t| started.checked_add(t));
    let max_tries = match listener.next_upstream_tries {
        0 => crate::config::MAX_AUTOMATIC_TRIES,
        n => n as usize,
    };
    let mut tries = 0;
    let mut last = String::new();
    let mut budget_spent = false;
    for index in candidates {
        if tries >= max_tries {
            break;
        }
        let Some(budget) = try_budget(deadline, tries, listener.connect_timeout) else {
            budget_spent = true;
            break;
        };
        let backend = &pool.backends[index];
        // Claimed before the check, so a drain either sees this claim or this check sees it.
        let slot = BackendSlot::claim(&backend.stats);
        if !still_eligible(routing, &pool.name, &backend.name) {
            continue;
        }
        tries += 1;
        let failure = match attempt(&pool.name, backend, budget, &mut last, open).await {
            Attempt::Connected(stream) => {
                return Ok(Connected {
                    stream,
                    backend,
                    slot,
                    tries,
                })
            }
            Attempt::Failed(failure) => failure,
            Attempt::NotCounted => continue,
            Attempt::Exhausted(source) => {
                return Err(ConnectError::Local {
                    backend: backend.name.to_string(),
                    source,
                })
            }
            Attempt::BudgetSpent => {
                budget_spent = true;
                break;
            }
        };
        tracing::info!(pool = %pool.name, backend = %backend.name, reason = failure.as_str(),
            error = %last, "connect to backend failed, trying the next candidate");
        blame(&pool.name, &backend.name, &backend.stats, failure, health);
    }
    let pool = pool.name.to_string();
    Err(if budget_spent {
        ConnectError::BudgetSpent { pool, tries, last }
    } else {
        ConnectError::AllFailed { pool, tries, last }
    })
}

/// How long the next try may take: its `connect_timeout`, cut to what is left of
/// `next_upstream_timeout` after the first try (`shortened` then says so). `None` when
/// nothing is left.
fn try_budget(
    deadline: Option<Instant>,
    tries: usize,
    connect_timeout: Duration,
) -> Option<Budget> {
    match deadline {
        Some(d) if tries > 0 => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            Some(Budget {
                time: left.min(connect_timeout),
                shortened: left < connect_timeout,
            })
        }
        _ => Some(Budget {
            time: connect_timeout,
            shortened: false,
        }),
    }
}

/// The time one try has, and whether the end of `next_upstream_timeout` cut it short.
struct Budget {
    time: Duration,
    shortened: bool,
}

/// What one connect try came to.
enum Attempt<S> {
    Connected(S),
    /// The backend failed it: counted against the backend, the next candidate is tried.
    Failed(ConnectFailure),
    /// A local error not held against the backend; the next candidate is tried.
    NotCounted,
    /// No ephemeral port or descriptor: no other candidate would do better.
    Exhausted(io::Error),
    /// The try was cut short by the end of `next_upstream_timeout`: no verdict on the backend.
    BudgetSpent,
}

/// One try at `backend` within `budget`, finished by `open`; a failure is described into
/// `last`.
async fn attempt<O: Open>(
    pool: &str,
    backend: &BackendRoute,
    budget: Budget,
    last: &mut String,
    open: &O,
) -> Attempt<O::Stream> {
    let started = Instant::now();
    // Set once TCP is up: a timeout after it is the TLS handshake's.
    let tcp_up = AtomicBool::new(false);
    let trying = async {
        let stream = connect_once(backend.addr).await.map_err(Step::Connect)?;
        tcp_up.store(true, Ordering::Relaxed);
        backend
            .stats
            .connect_duration
            .observe(started.elapsed().as_secs_f64());
        open.open(backend, stream).await.map_err(Step::Open)
    };
    match tokio::time::timeout(budget.time, trying).await {
        Ok(Ok(stream)) => Attempt::Connected(stream),
        Ok(Err(Step::Connect(e))) if is_local(&e) => {
            tracing::warn!(pool = %pool, backend = %backend.name, error = %e,
                "local error connecting to backend (not counted against it)");
            if is_exhaustion(&e) {
                return Attempt::Exhausted(e);
            }
            *last = format!("{}: {e}", backend.name);
            Attempt::NotCounted
        }
        Ok(Err(Step::Connect(e))) => {
            *last = format!("{} ({}): {e}", backend.name, backend.addr);
            Attempt::Failed(match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                io::ErrorKind::TimedOut => ConnectFailure::Timeout,
                _ => ConnectFailure::Other,
            })
        }
        Ok(Err(Step::Open((failure, why)))) => {
            *last = format!("{} ({}): {why}", backend.name, backend.addr);
            match failure {
                Some(failure) => Attempt::Failed(failure),
                None => {
                    tracing::info!(pool = %pool, backend = %backend.name, error = %why,
                        "connect try abandoned (not counted against the backend)");
                    Attempt::NotCounted
                }
            }
        }
        Err(_elapsed) if budget.shortened => {
            // The backend had less than its connect_timeout: no verdict on it.
            *last = format!(
                "{} ({}): no answer within the {:?} left of next_upstream_timeout",
                backend.name, backend.addr, budget.time
            );
            tracing::info!(pool = %pool, backend = %backend.name,
                "next_upstream_timeout spent during a shortened try (not counted against the backend)");
            Attempt::BudgetSpent
        }
        Err(_elapsed) if tcp_up.load(Ordering::Relaxed) => {
            *last = format!(
                "{} ({}): TLS handshake not done within {:?}",
                backend.name, backend.addr, budget.time
            );
            Attempt::Failed(ConnectFailure::Tls)
        }
        Err(_elapsed) => {
            *last = format!(
                "{} ({}): no answer within {:?}",
                backend.name, backend.addr, budget.time
            );
            Attempt::Failed(ConnectFailure::Timeout)
        }
    }
}

/// Where a try failed: connecting TCP, or what [`Open`] does after.
enum Step {
    Connect(io::Error),
    Open((Option<ConnectFailure>, String)),
}

/// A backend that closes a connection within this of accepting it, before sending a byte,
/// failed a check ([`ConnectFailure::ClosedEarly`]): RabbitMQ answers a client's protocol header
/// within milliseconds, and gives a silent client `handshake_timeout` (10 s) before closing.
pub const EARLY_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Count a failure the backend caused and report it to health (which returns at once).
pub(crate) fn blame(
    pool: &str,
    backend: &str,
    stats: &BackendStats,
    failure: ConnectFailure,
    health: &dyn Observer,
) {
    stats.failures(failure).inc();
    health.connect_failed(pool, backend, failure);
}
