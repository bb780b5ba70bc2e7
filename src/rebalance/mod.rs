//! The rebalancer: moves client connections from backends above their weighted fair share to
//! those below, so a pool ends balanced after a node comes back (a rolling upgrade leaves the
//! last node upgraded with no clients at all). It closes only the excess, gracefully (the
//! connection's own task asks the node for an AMQP `Connection.Close` 320, see
//! `proxy::graceful`), at most `max_closes_per_second` per pool with jittered gaps, never a
//! connection younger than `min_age`, and stops when every backend is within `tolerance`.
//! The closed clients reconnect through the balancer, which places them.
//!
//! Once a second ([`TICK`]) it reads the routing snapshot and each backend's connection count,
//! plans ([`plan`]), sets `warren_pool_imbalance`, and, while a pass runs, hands each backend
//! above its share a [`Shed`]: that many paced slots, offered to the backend's connections
//! through its close token. A pass starts when a backend becomes available again
//! (`mode = "on_return"`), whenever the pool is out of balance (`"continuous"`), or when an
//! operator asks ([`Rebalancer::start`]). An undrain may hold the pool for [`HOLD`] (a rolling
//! upgrade moves on to the next node; it asks for one pass at the end).
//!
//! It owns its per-pool pass state and no sockets; it reads the config and the routing.

mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::{Balance, Config, PoolConfig, RebalanceMode};
use crate::state::{self, CloseCause, PoolRoute, Routing, Shed};
use plan::{Load, Pacer};

/// How often the rebalancer looks at each pool, and the span of one round's closes.
pub const TICK: Duration = Duration::from_secs(1);

/// How long an undrain with `rebalance = false` keeps the pool's rebalancing from starting
/// by itself: long enough for a rolling upgrade to drain its next node.
pub const HOLD: Duration = Duration::from_secs(120);

/// Why a rebalance cannot be started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RebalanceError {
    #[error("no such pool: {0}")]
    NoSuchPool(String),
    #[error(
        "pool {0} balances by source_hash, which keeps each client on the backend its address \
         hashes to: a moved client would come back to the same backend"
    )]
    SourceHash(String),
}

/// Moves connections back into balance; one per process, on the control thread.
pub struct Rebalancer {
    config: Arc<ArcSwap<Config>>,
    routing: Arc<Routing>,
    pools: Mutex<HashMap<Arc<str>, PoolState>>,
}

/// One pool's rebalancing between rounds.
#[derive(Default)]
struct PoolState {
    pass: Option<Pass>,
    /// Automatic passes do not start before this (an undrain asked for a hold).
    held_until: Option<Instant>,
    /// Each backend's `available_since` at the last round: a change is a return.
    seen: HashMap<Arc<str>, Option<Instant>>,
    /// `seen` was filled once (the first round records, it does not trigger).
    watching: bool,
    pacer: Pacer,
}

/// A running pass.
struct Pass {
    why: String,
    started: Instant,
    /// The pool's `backend_rebalance_closes_total`, summed, when it started.
    closes_before: u64,
}

impl Rebalancer {
    pub fn new(config: Arc<ArcSwap<Config>>, routing: Arc<Routing>) -> Arc<Rebalancer> {
        Arc::new(Rebalancer {
            config,
            routing,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Look at every pool once a [`TICK`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.round(state::now()),
            }
        }
    }

    /// One round over every pool.
    fn round(&self, now: Instant) {
        let config = self.config.load_full();
        let snapshot = self.routing.load_full();
        let mut pools = self.lock();
        pools.retain(|name, _| snapshot.pools.contains_key(name));
        for settings in &config.pools {
            let Some(route) = snapshot.pools.get(settings.name.as_str()) else {
                continue;
            };
            let pool = pools.entry(route.name.clone()).or_default();
            self.round_pool(now, settings, route, pool);
        }
    }

    /// Start a pass over `pool` now, as an operator asked (`warren ctl rebalance`); it also
    /// lifts a hold. Answers with the pool's balance as it is.
    pub fn start(&self, pool: &str) -> Result<api::RebalanceAnswer, RebalanceError> {
        let now = state::now();
        let config = self.config.load_full();
        let snapshot = self.routing.load_full();
        let (Some(settings), Some(route)) = (
            config.pools.iter().find(|p| p.name == pool),
            snapshot.pools.get(pool),
        ) else {
            return Err(RebalanceError::NoSuchPool(pool.to_owned()));
        };
        if settings.balance == Balance::SourceHash {
            return Err(RebalanceError::SourceHash(pool.to_owned()));
        }
        let planned = plan::plan(&loads(route, now), settings.rebalance.tolerance);
        let to_move = planned.excess.iter().sum();
        let mut pools = self.lock();
        let state = pools.entry(route.name.clone()).or_default();
        state.held_until = None;
        let started = !planned.balanced || ramping(route, now);
        if started && state.pass.is_none() {
            state.pass = Some(start_pass(route, "asked by an operator", &planned, now));
        }
        self.round_pool(now, settings, route, state);
        Ok(api::RebalanceAnswer {
            imbalance: rounded(planned.imbalance),
            max_closes_per_second: settings.rebalance.max_closes_per_second,
            pool: pool.to_owned(),
            started,
            to_move,
        })
    }

    /// Keep automatic passes of `pool` from starting for [`HOLD`] (a pass under way pauses).
    pub fn hold(&self, pool: &str) {
        let until = state::now() + HOLD;
        let mut pools = self.lock();
        if let Some(route) = self.routing.load().pools.get(pool) {
            pools.entry(route.name.clone()).or_default().held_until = Some(until);
        }
    }

    /// `/v1/status`'s view of `pool`'s balance and rebalancing.
    pub fn status(&self, settings: &PoolConfig, route: &PoolRoute) -> api::RebalanceStatus {
        let now = state::now();
        let planned = plan::plan(&loads(route, now), settings.rebalance.tolerance);
        let pools = self.lock();
        let pool = pools.get(&route.name);
        let state = match pool {
            Some(p) if p.held_until.is_some_and(|t| t > now) => api::RebalanceState::Held,
            Some(p) if p.pass.is_some() => api::RebalanceState::Running,
            _ if planned.balanced => api::RebalanceState::Balanced,
            _ => api::RebalanceState::Unbalanced,
        };
        api::RebalanceStatus {
            imbalance: rounded(planned.imbalance),
            mode: settings.rebalance.mode.as_str().to_owned(),
            state,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, PoolState>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Plan `route`, start or end its pass, and hand out this round's closes.
    fn round_pool(
        &self,
        now: Instant,
        settings: &PoolConfig,
        route: &PoolRoute,
        pool: &mut PoolState,
    ) {
        let planned = plan::plan(&loads(route, now), settings.rebalance.tolerance);
        route.imbalance_gauge.set(planned.imbalance);
        let returned = pool.returned(route);
        let held = pool.held_until.is_some_and(|t| t > now);
        let automatic = settings.balance != Balance::SourceHash && !held && pool.pass.is_none();
        let why = match (settings.rebalance.mode, returned) {
            (RebalanceMode::Off, _) => None,
            (_, Some(name)) => Some(format!("{name} became available again")),
            (RebalanceMode::Continuous, None) if !planned.balanced => {
                Some("out of balance (continuous)".to_owned())
            }
            _ => None,
        };
        if let (true, Some(why)) = (automatic, why) {
            pool.pass = Some(start_pass(route, &why, &planned, now));
        }
        let Some(pass) = &pool.pass else { return };
        if planned.balanced && !ramping(route, now) {
            tracing::info!(
                pool = &*route.name,
                closes = closes(route).saturating_sub(pass.closes_before),
                duration_ms = (now - pass.started).as_millis() as u64,
                trigger = %pass.why,
                "rebalance done: every backend is within its fair share"
            );
            pool.pass = None;
            return;
        }
        if held {
            return;
        }
        let rebalance = &settings.rebalance;
        let want = planned.excess.iter().sum();
        let mut rng = rand::thread_rng();
        let slots = pool
            .pacer
            .slots(now, want, rebalance.max_closes_per_second, TICK, &mut rng);
        let established_before = now.checked_sub(rebalance.min_age).unwrap_or(now);
        let shares = plan::share_out(&slots, &planned.excess);
        for (backend, slots) in route.backends.iter().zip(shares) {
            if slots.is_empty() {
                continue;
            }
            let offered = slots.len();
            let shed = Arc::new(Shed::new(slots, established_before));
            let open = backend
                .stats
                .close_connections(self.routing.shutdown_token(), CloseCause::Rebalance(shed));
            tracing::debug!(
                pool = &*route.name,
                backend = &*backend.name,
                offered,
                open,
                "rebalance: closes offered to the backend's connections"
            );
        }
    }
}

impl PoolState {
    /// The first backend that became available again since the last round, if any.
    fn returned(&mut self, route: &PoolRoute) -> Option<Arc<str>> {
        let mut returned = None;
        for b in &route.backends {
            let before = self.seen.insert(b.name.clone(), b.available_since);
            let changed = before != Some(b.available_since);
            if self.watching && changed && b.available() && b.available_since.is_some() {
                returned.get_or_insert_with(|| b.name.clone());
            }
        }
        self.watching = true;
        returned
    }
}

/// Log the start of a pass and begin it.
fn start_pass(route: &PoolRoute, why: &str, planned: &plan::Plan, now: Instant) -> Pass {
    tracing::info!(
        pool = &*route.name,
        trigger = why,
        imbalance = rounded(planned.imbalance),
        to_move = planned.excess.iter().sum::<u64>(),
        "rebalance started: moving connections off backends above their fair share"
    );
    Pass {
        why: why.to_owned(),
        started: now,
        closes_before: closes(route),
    }
}

/// Each backend's load as the plan reads it: its weight as new connections see it (slow
/// start applied; a backup's is zero while a primary is available), its connections less
/// those already leaving.
fn loads(route: &PoolRoute, now: Instant) -> Vec<Load> {
    let primary_up = route.backends.iter().any(|b| !b.backup && b.available());
    route
        .backends
        .iter()
        .map(|b| Load {
            weight: if b.backup && primary_up {
                0.0
            } else {
                f64::from(b.weight) * f64::from(b.share(now, route.slow_start)) / 1000.0
            },
            connections: b.stats.claims() - b.stats.leaving(),
            available: b.available(),
        })
        .collect()
}

/// Some available backend is still ramping up (slow start): the shares will move.
fn ramping(route: &PoolRoute, now: Instant) -> bool {
    route
        .backends
        .iter()
        .any(|b| b.available() && b.share(now, route.slow_start) < 1000)
}

/// The pool's rebalance closes so far.
fn closes(route: &PoolRoute) -> u64 {
    route
        .backends
        .iter()
        .map(|b| b.stats.rebalance_closes.get())
        .sum()
}

/// Three decimals are what an operator reads.
fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
