//! Backend health as the data path reports it. The data path calls an [`Observer`] after each
//! connect attempt; [`Passive`] turns failed connects into health changes with NGINX's default
//! passive semantics (`max_fails=1 fail_timeout=10s`: one failed connect takes the backend out of
//! rotation for a hold-down period, after which it gets new connections again). Active probes plug
//! in behind the same interface. This module publishes health through [`Routing`] only; it never
//! touches sockets of the data path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::state::{Health, Routing};

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The backend answered with a reset (nothing listens).
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// Unreachable host or network, or another error the backend's side caused.
    Other,
}

impl ConnectFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Other => "other",
        }
    }
}

/// Receives the data path's connect outcomes. Implementations must return at once.
pub trait Observer: Send + Sync {
    /// A connect to `pool`/`backend` failed because of the backend (never for local errors).
    fn connect_failed(&self, pool: &str, backend: &str, failure: ConnectFailure);
}

/// How long a backend stays out after a failed connect (NGINX's `fail_timeout` default).
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(10);

/// Passive health: a failed connect marks the backend down for `hold_down`, then it is tried again.
pub struct Passive {
    routing: Arc<Routing>,
    hold_down: Duration,
    /// Bumped on every failure so that only the newest hold-down timer brings a backend back.
    generations: Mutex<HashMap<(String, String), u64>>,
}

impl Passive {
    /// Passive health publishing into `routing`.
    pub fn new(routing: Arc<Routing>, hold_down: Duration) -> Arc<Passive> {
        Arc::new(Passive {
            routing,
            hold_down,
            generations: Mutex::new(HashMap::new()),
        })
    }
}

impl Observer for Arc<Passive> {
    fn connect_failed(&self, pool: &str, backend: &str, failure: ConnectFailure) {
        let key = (pool.to_owned(), backend.to_owned());
        let generation = {
            let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
            let g = generations.entry(key.clone()).or_insert(0);
            *g += 1;
            *g
        };
        if self.routing.set_health(pool, backend, Health::Down) != Some(Health::Down) {
            tracing::warn!(
                pool,
                backend,
                reason = failure.as_str(),
                hold_down = ?self.hold_down,
                "backend marked down after a failed connect"
            );
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.hold_down).await;
            let current = this
                .generations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied();
            if current == Some(generation)
                && this.routing.set_health(&key.0, &key.1, Health::Unknown) == Some(Health::Down)
            {
                tracing::info!(
                    pool = key.0,
                    backend = key.1,
                    "hold-down over, backend takes connections again"
                );
            }
        });
    }
}
