//! Connecting to a backend with failover, with NGINX `proxy_next_upstream` semantics: walk the
//! balancer's candidates, one `connect_timeout` per attempt, stop after `next_upstream_tries`
//! attempts or `next_upstream_timeout` overall. Failures the backend caused are reported to the
//! health [`Observer`]; local failures (no ephemeral port, no descriptor) are not held against it,
//! and neither is a try cut short by the end of `next_upstream_timeout` (the budget ran out, not
//! the backend's `connect_timeout`): that ends in [`ConnectError::BudgetSpent`].

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::config::ListenerConfig;
use crate::net::{is_exhaustion, is_local, ConnectFailure, Observer};
use crate::state::{BackendRoute, BackendStats, PoolRoute};

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

/// A backend connection and which backend it is.
pub struct Connected<'a> {
    pub stream: TcpStream,
    pub backend: &'a BackendRoute,
    pub tries: usize,
}

/// Connect to the best candidate of `pool` for `client`, failing over as the listener allows.
pub async fn connect<'a>(
    pool: &'a PoolRoute,
    listener: &ListenerConfig,
    client: IpAddr,
    health: &dyn Observer,
) -> Result<Connected<'a>, ConnectError> {
    let candidates = pool.candidates(client);
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
        let (budget, shortened) = match deadline {
            Some(d) if tries > 0 => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    budget_spent = true;
                    break;
                }
                (
                    left.min(listener.connect_timeout),
                    left < listener.connect_timeout,
                )
            }
            _ => (listener.connect_timeout, false),
        };
        let backend = &pool.backends[index];
        tries += 1;
        let attempt = Instant::now();
        let failure = match tokio::time::timeout(budget, connect_once(backend.addr)).await {
            Ok(Ok(stream)) => {
                backend
                    .stats
                    .connect_duration
                    .observe(attempt.elapsed().as_secs_f64());
                return Ok(Connected {
                    stream,
                    backend,
                    tries,
                });
            }
            Ok(Err(e)) if is_local(&e) => {
                tracing::warn!(pool = %pool.name, backend = %backend.name, error = %e,
                    "local error connecting to backend (not counted against it)");
                if is_exhaustion(&e) {
                    return Err(ConnectError::Local {
                        backend: backend.name.to_string(),
                        source: e,
                    });
                }
                last = format!("{}: {e}", backend.name);
                continue;
            }
            Ok(Err(e)) => {
                last = format!("{} ({}): {e}", backend.name, backend.addr);
                match e.kind() {
                    io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
                    io::ErrorKind::TimedOut => ConnectFailure::Timeout,
                    _ => ConnectFailure::Other,
                }
            }
            Err(_elapsed) if shortened => {
                // The backend had less than its connect_timeout: no verdict on it.
                last = format!(
                    "{} ({}): no answer within the {:?} left of next_upstream_timeout",
                    backend.name, backend.addr, budget
                );
                tracing::info!(pool = %pool.name, backend = %backend.name,
                    "next_upstream_timeout spent during a shortened try (not counted against the backend)");
                budget_spent = true;
                break;
            }
            Err(_elapsed) => {
                last = format!(
                    "{} ({}): no answer within {:?}",
                    backend.name, backend.addr, budget
                );
                ConnectFailure::Timeout
            }
        };
        tracing::info!(pool = %pool.name, backend = %backend.name, reason = failure.as_str(),
            "connect to backend failed, trying the next candidate");
        blame(&pool.name, &backend.name, &backend.stats, failure, health);
    }
    let pool = pool.name.to_string();
    Err(if budget_spent {
        ConnectError::BudgetSpent { pool, tries, last }
    } else {
        ConnectError::AllFailed { pool, tries, last }
    })
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
