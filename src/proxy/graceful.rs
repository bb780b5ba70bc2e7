//! Graceful AMQP closes. When warren ends a client's connection itself (a drain deadline, a
//! backend marked down, a rebalance, the end of the shutdown grace period), the connection's
//! own task asks the backend's node, through its management API, to close it (see [`probe::close_connection`]): the client gets
//! the broker's `Connection.Close` 320 (CONNECTION_FORCED) with a reason naming warren, the
//! backend and the cause, and its recovery runs as for a planned close. Forwarding goes on
//! meanwhile, so that Close reaches the client and its Close-Ok the broker, which then closes
//! the socket; only after [`WINDOW`], or at once when the node cannot be asked, is the
//! connection closed over TCP as before.
//!
//! It owns the pacing of those requests (at most [`PERMITS_PER_BACKEND`] at once per backend,
//! a connection not yet listed by its node asked again) and the summary of failures in the
//! log. It reads the config (for each backend's management endpoint) only when a close is
//! asked, never on the data path, and never touches routing or sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{Config, ProxyProtocol};
use crate::health::probe::{self, CloseAnswer, ProbeTarget};
use crate::state::BackendId;

/// How long after warren decided to close a connection it is closed over TCP however the
/// graceful close went. It covers the wait for a young connection to be listed by its node
/// (RabbitMQ's statistics interval, 5 s by default) and the close handshake.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Close requests in flight at once to one backend's management API.
pub const PERMITS_PER_BACKEND: usize = 16;

/// How long one close request may take when the endpoint sets no timeout of its own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection younger than this may not be listed by its node yet: a 404 is asked again.
/// RabbitMQ's default statistics interval (5 s) and a margin.
const LISTED_AFTER: Duration = Duration::from_secs(7);

/// The pause before asking again about a connection not listed yet.
const NOT_LISTED_RETRY: Duration = Duration::from_millis(500);

/// How long a close may wait for the node when probes have just marked it down
/// (`on_down = "close"`): a node that hangs (its sockets open, nothing answers) must not hold
/// the close back; the operator was promised it within the probes' own bound and a second.
const DOWN_ASK: Duration = Duration::from_millis(500);

/// Failures of one backend are logged at warn at most this often (each at debug).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why warren closes a connection (the tail of the reason the client reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The backend was drained with a deadline that passed.
    DrainDeadline,
    /// Probes marked the backend down in a pool with `on_down = "close"`.
    BackendDown,
    /// The rebalancer moves it off a backend above its fair share.
    Rebalance,
    /// warren is stopping and its grace period is over.
    Shutdown,
}

/// The reason the client reads after `CONNECTION_FORCED - `.
pub fn reason_text(backend: &BackendId, cause: Cause) -> String {
    match cause {
        Cause::DrainDeadline => format!(
            "warren: {} (pool {}) drained for maintenance, drain deadline reached",
            backend.backend, backend.pool
        ),
        Cause::BackendDown => format!(
            "warren: {} (pool {}) is down by warren's health checks",
            backend.backend, backend.pool
        ),
        Cause::Rebalance => format!(
            "warren: rebalancing pool {}, moving this connection off {} (above its fair share)",
            backend.pool, backend.backend
        ),
        Cause::Shutdown => format!(
            "warren: stopping, grace period over; connection to {} (pool {}) closed",
            backend.backend, backend.pool
        ),
    }
}

/// Where a connection's graceful close stands, kept by the connection in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Progress {
    /// Not asked (warren has not closed the connection).
    NotAsked = 0,
    /// The node was asked and has sent the client its `Connection.Close`.
    Closed = 1,
    /// The node could not be asked or could not close it: TCP close.
    Failed = 2,
    /// The node is being asked: the broker's Close may reach the client, and the connection
    /// end, before the node's answer does.
    Asking = 3,
}

impl Progress {
    /// Read what [`Closer::close`] recorded.
    pub fn load(cell: &AtomicU8) -> Progress {
        match cell.load(Ordering::Relaxed) {
            1 => Progress::Closed,
            2 => Progress::Failed,
            3 => Progress::Asking,
            _ => Progress::NotAsked,
        }
    }
}

/// One connection as its node names it, and whom to ask.
pub struct Target<'a> {
    pub backend: &'a BackendId,
    /// The peer the node sees: warren's outbound address, or the client's when the backend
    /// gets a PROXY header.
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub connected_at: Instant,
}

/// Per-backend pacing and failure summary.
struct BackendCloses {
    permits: Semaphore,
    /// Failures since the last warning.
    failures: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

/// Asks nodes to close connections; one per process, shared by every connection.
pub struct Closer {
    /// The running config (swapped by a reload): each backend's management endpoint.
    config: Arc<ArcSwap<Config>>,
    /// Created on a backend's first close; a few hundred bytes each.
    backends: Mutex<HashMap<BackendId, Arc<BackendCloses>>>,
}

impl Closer {
    pub fn new(config: Arc<ArcSwap<Config>>) -> Closer {
        Closer {
            config,
            backends: Mutex::new(HashMap::new()),
        }
    }

    /// Close `target` gracefully, recording how it went in `progress`; returns when warren
    /// must close it over TCP: at once when the node cannot close it, else at the end of the
    /// [`WINDOW`] that started at `since` (by then the broker has closed it, normally).
    pub async fn close(
        &self,
        target: Target<'_>,
        cause: Cause,
        since: Instant,
        progress: &AtomicU8,
    ) {
        let deadline = since + WINDOW;
        progress.store(Progress::Asking as u8, Ordering::Relaxed);
        let answer = self.ask(&target, cause, deadline).await;
        let id = target.backend;
        let (pool, backend) = (&*id.pool, &*id.backend);
        let name = probe::connection_name(target.from, target.to);
        match answer {
            CloseAnswer::Closed => {
                progress.store(Progress::Closed as u8, Ordering::Relaxed);
                tracing::debug!(pool, backend, connection = %name,
                    "graceful close: the node sent the client Connection.Close");
                tokio::time::sleep_until(deadline).await;
            }
            CloseAnswer::NotApplicable => {
                progress.store(Progress::Failed as u8, Ordering::Relaxed);
            }
            failed => {
                progress.store(Progress::Failed as u8, Ordering::Relaxed);
                let why = match failed {
                    CloseAnswer::NotFound => "the node lists no connection of that name".into(),
                    CloseAnswer::Unanswered(why) | CloseAnswer::Unexpected(why) => why,
                    _ => String::new(),
                };
                tracing::debug!(pool, backend, connection = %name, error = %why,
                    "graceful close failed: closing over TCP");
                self.summarise_failure(id, &why);
            }
        }
    }

    /// Ask the node until it answers for good: a 404 about a connection it may not list yet is
    /// asked again while `deadline` allows.
    async fn ask(&self, target: &Target<'_>, cause: Cause, deadline: Instant) -> CloseAnswer {
        let config = self.config.load_full();
        let Some((probe, endpoint)) = whom(&config, target.backend) else {
            return CloseAnswer::NotApplicable;
        };
        let timeout = endpoint
            .management
            .as_ref()
            .map_or(REQUEST_TIMEOUT, |m| m.timeout);
        // A node marked down is asked once, briefly: most often it cannot answer at all.
        let (timeout, deadline) = match cause {
            Cause::BackendDown => (
                timeout.min(DOWN_ASK),
                deadline.min(Instant::now() + DOWN_ASK),
            ),
            _ => (timeout, deadline),
        };
        let name = probe::connection_name(target.from, target.to);
        let reason = reason_text(target.backend, cause);
        let pacing = self.pacing(target.backend);
        loop {
            let answer = {
                let permits = &pacing.permits;
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Ok(_permit)) = tokio::time::timeout(left, permits.acquire()).await else {
                    return CloseAnswer::Unanswered("window over while waiting for a turn".into());
                };
                let left = deadline.saturating_duration_since(Instant::now());
                let within = timeout.min(left);
                probe::close_connection(probe.as_ref(), &endpoint, &name, &reason, within).await
            };
            let young = target.connected_at.elapsed() < LISTED_AFTER;
            if answer != CloseAnswer::NotFound || !young {
                return answer;
            }
            if Instant::now() + NOT_LISTED_RETRY >= deadline {
                return answer;
            }
            tokio::time::sleep(NOT_LISTED_RETRY).await;
        }
    }

    fn pacing(&self, id: &BackendId) -> Arc<BackendCloses> {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        backends
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(BackendCloses {
                    permits: Semaphore::new(PERMITS_PER_BACKEND),
                    failures: AtomicU64::new(0),
                    last_warned: Mutex::new(None),
                })
            })
            .clone()
    }

    /// One warn line per backend per [`WARN_EVERY`] with the failures since the last one, so
    /// a thousand failed closes make a line, not a thousand.
    fn summarise_failure(&self, id: &BackendId, why: &str) {
        let pacing = self.pacing(id);
        let failures = pacing.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = pacing.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        pacing.failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            pool = %id.pool,
            backend = %id.backend,
            failures,
            error = %why,
            "graceful AMQP close through the management API failed, connections closed over \
             TCP instead (failures counted since the last such line)"
        );
    }
}

/// The pool's probe and the backend's target for a management request, from the running
/// config; `None` when the backend is gone.
fn whom(config: &Config, id: &BackendId) -> Option<(Option<crate::config::Probe>, ProbeTarget)> {
    let pool = config.pools.iter().find(|p| *p.name == *id.pool)?;
    let backend = pool.backends.iter().find(|b| *b.name == *id.backend)?;
    let probe = pool.health.as_ref().map(|h| h.probe.clone());
    Some((probe, ProbeTarget::for_backend(backend, ProxyProtocol::Off)))
}

/// How a node names a connection's two ends (`FROM -> TO`): warren's outbound socket, unless
/// the backend gets a PROXY header, whose source and destination the node takes for the ends
/// (RabbitMQ shows them as `peer_host` and `host`).
pub fn ends_seen_by_node(
    proxy_protocol: ProxyProtocol,
    (origin, destination): (SocketAddr, SocketAddr),
    (local, backend): (SocketAddr, SocketAddr),
) -> (SocketAddr, SocketAddr) {
    match proxy_protocol {
        ProxyProtocol::Off => (local, backend),
        ProxyProtocol::V1 | ProxyProtocol::V2 => (origin, destination),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_warren_the_backend_and_the_cause() {
        let id = BackendId::new("amqp", "rabbit-1");
        assert_eq!(
            reason_text(&id, Cause::DrainDeadline),
            "warren: rabbit-1 (pool amqp) drained for maintenance, drain deadline reached"
        );
        assert_eq!(
            reason_text(&id, Cause::BackendDown),
            "warren: rabbit-1 (pool amqp) is down by warren's health checks"
        );
        assert_eq!(
            reason_text(&id, Cause::Rebalance),
            "warren: rebalancing pool amqp, moving this connection off rabbit-1 (above its fair share)"
        );
        assert_eq!(
            reason_text(&id, Cause::Shutdown),
            "warren: stopping, grace period over; connection to rabbit-1 (pool amqp) closed"
        );
    }

    #[test]
    fn the_node_sees_warren_unless_a_proxy_header_names_the_client() {
        let (origin, local) = (
            "10.1.1.1:4000".parse().unwrap(),
            "10.0.0.9:5000".parse().unwrap(),
        );
        let (destination, backend) = (
            "10.0.0.2:5672".parse().unwrap(),
            "10.0.0.5:5672".parse().unwrap(),
        );
        let header = (origin, destination);
        let socket = (local, backend);
        assert_eq!(
            ends_seen_by_node(ProxyProtocol::Off, header, socket),
            socket
        );
        assert_eq!(ends_seen_by_node(ProxyProtocol::V2, header, socket), header);
    }
}
