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
//! With `[fleet]` it plans on the fleet's connections ([`fleet`]: this instance's live counts
//! and the other instances' last reports), and closes only this instance's part of the fleet's
//! excess ([`quota`]), at its part of `max_closes_per_second`; without a fresh read of the
//! reports it plans on this instance's connections alone.
//!
//! It owns its per-pool pass state and no sockets; it reads the config and the routing.

mod fleet;
mod plan;
mod quota;

pub use fleet::FleetLoads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::{Balance, Config, PoolConfig, RebalanceMode};
use crate::state::{self, CloseCause, PoolRoute, Routing, Shed};
use plan::{Load, Pacer};
use quota::Quota;

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
    /// `[fleet]`: the other instances' connections, read off etcd.
    fleet: Option<Arc<FleetLoads>>,
    /// warren is stopping: nothing more is moved.
    stopped: std::sync::atomic::AtomicBool,
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
    /// A return seen while the pool was held: it starts a pass when the hold ends.
    pending: Option<String>,
    pacer: Pacer,
    /// With `[fleet]`: this instance's part of the fleet's excess, while a pass runs.
    quota: Option<Quota>,
}

/// A running pass.
struct Pass {
    why: String,
    started: Instant,
    /// The pool's `backend_rebalance_closes_total`, summed, when it started.
    closes_before: u64,
    /// Closes after which a pass that has not balanced the pool gives up: clients that come
    /// back to the same backends (a balance or an address the plan cannot move) would be
    /// closed again and again.
    give_up_after: u64,
}

impl Rebalancer {
    /// A rebalancer of `routing`'s pools; with `fleet`, against the fleet's connections.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        routing: Arc<Routing>,
        fleet: Option<Arc<FleetLoads>>,
    ) -> Arc<Rebalancer> {
        Arc::new(Rebalancer {
            config,
            routing,
            pools: Mutex::new(HashMap::new()),
            fleet,
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Move nothing more (warren stops accepting; its grace period lets connections end on
    /// their own).
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
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
        let view = self.view(route, now);
        let planned = plan::plan(&view.loads, settings.rebalance.tolerance);
        let to_move = planned.excess.iter().sum();
        let mut pools = self.lock();
        let state = pools.entry(route.name.clone()).or_default();
        state.held_until = None;
        let started = !planned.balanced || ramping(route, now);
        if started && state.pass.is_none() {
            let mine = self.part(route, &view, settings.rebalance.tolerance);
            state.quota = None;
            state.pass = Some(start_pass(route, "asked by an operator", &view, mine, now));
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
        let view = self.view(route, now);
        let planned = plan::plan(&view.loads, settings.rebalance.tolerance);
        let pools = self.lock();
        let pool = pools.get(&route.name);
        let state = match pool {
            Some(p) if p.held_until.is_some_and(|t| t > now) => api::RebalanceState::Held,
            Some(p) if p.pass.is_some() => api::RebalanceState::Running,
            _ if planned.balanced => api::RebalanceState::Balanced,
            _ => api::RebalanceState::Unbalanced,
        };
        api::RebalanceStatus {
            basis: view.basis(),
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
        let view = self.view(route, now);
        let planned = plan::plan(&view.loads, settings.rebalance.tolerance);
        route.imbalance_gauge.set(planned.imbalance);
        let held = pool.held_until.is_some_and(|t| t > now);
        if let Some(name) = pool.returned(route) {
            pool.pending = Some(format!("{name} became available again"));
        }
        let why = match settings.rebalance.mode {
            RebalanceMode::Off => None,
            _ if pool.pending.is_some() => pool.pending.clone(),
            RebalanceMode::Continuous if !planned.balanced => {
                Some("out of balance (continuous)".to_owned())
            }
            _ => None,
        };
        if settings.balance == Balance::SourceHash {
            pool.pending = None;
            pool.pass = None;
            return;
        }
        if !held {
            pool.pending = None;
            if let (None, Some(why)) = (&pool.pass, why) {
                let mine = self.part(route, &view, settings.rebalance.tolerance);
                pool.quota = None;
                pool.pass = Some(start_pass(route, &why, &view, mine, now));
            }
        }
        let Some(pass) = &pool.pass else {
            pool.quota = None;
            return;
        };
        let done = closes(route).saturating_sub(pass.closes_before);
        if planned.balanced && !ramping(route, now) {
            tracing::info!(
                pool = &*route.name,
                closes = done,
                duration_ms = (now - pass.started).as_millis() as u64,
                trigger = %pass.why,
                "rebalance done: every backend is within its fair share"
            );
            pool.pass = None;
            return;
        }
        if done >= pass.give_up_after {
            tracing::warn!(
                pool = &*route.name,
                closes = done,
                imbalance = rounded(planned.imbalance),
                trigger = %pass.why,
                "rebalance gave up: the pool is still out of balance after this many closes \
                 (do its clients come back to the same backends?)"
            );
            pool.pass = None;
            return;
        }
        if held {
            return;
        }
        match &view.others {
            Some(others) => self.shed_fleet(now, settings, route, (&view, others), pool),
            None => {
                pool.quota = None;
                self.shed(now, settings, route, &planned, &mut pool.pacer);
            }
        }
    }

    /// What the plan reads for `route`: with a fresh read of the other instances' reports,
    /// the fleet's connections; else this instance's.
    fn view(&self, route: &PoolRoute, now: Instant) -> View {
        let local = loads(route, now);
        let others = self.fleet.as_ref().and_then(|f| f.others(now));
        let loads = match &others {
            Some(others) => fleet::with_others(route, &local, others),
            None => local.clone(),
        };
        View {
            local,
            loads,
            others,
        }
    }

    /// What this instance sets out to close of the pool's excess: all of it planning alone,
    /// its part of the fleet's with `[fleet]`.
    fn part(&self, route: &PoolRoute, view: &View, tolerance: f64) -> u64 {
        match (&self.fleet, &view.others) {
            (Some(fleet), Some(others)) => {
                let counts = fleet::counts(route, &view.local, fleet.instance(), others);
                let names: Vec<Arc<str>> = route.backends.iter().map(|b| b.name.clone()).collect();
                Quota::new(counts)
                    .owed(fleet.instance(), &names, &view.local, tolerance)
                    .mine
            }
            _ => plan::plan(&view.loads, tolerance).excess.iter().sum(),
        }
    }

    /// Offer this round's paced closes to the backends above their share.
    fn shed(
        &self,
        now: Instant,
        settings: &PoolConfig,
        route: &PoolRoute,
        planned: &plan::Plan,
        pacer: &mut Pacer,
    ) {
        let rebalance = &settings.rebalance;
        // Younger than the clock itself: no connection is old enough yet.
        let Some(established_before) = now.checked_sub(rebalance.min_age) else {
            return;
        };
        let want = planned.excess.iter().sum();
        let mut rng = rand::thread_rng();
        let slots = pacer.slots(now, want, rebalance.max_closes_per_second, TICK, &mut rng);
        let shares = plan::share_out(&slots, &planned.excess);
        self.offer(route, shares, established_before);
    }

    /// With `[fleet]`: offer this round's closes of this instance's part of the fleet's
    /// excess, paced at its part of `max_closes_per_second` (so the fleet's closes stay
    /// within the rate, and each instance finishes its part at about the same time); once the
    /// part is done, wait for the reports to show it before taking a new one.
    fn shed_fleet(
        &self,
        now: Instant,
        settings: &PoolConfig,
        route: &PoolRoute,
        (view, others): (&View, &fleet::Others),
        pool: &mut PoolState,
    ) {
        let Some(fleet) = &self.fleet else { return };
        let rebalance = &settings.rebalance;
        let PoolState { quota, pacer, .. } = pool;
        let part = quota.get_or_insert_with(|| {
            Quota::new(fleet::counts(route, &view.local, fleet.instance(), others))
        });
        part.account();
        let names: Vec<Arc<str>> = route.backends.iter().map(|b| b.name.clone()).collect();
        let owed = part.owed(fleet.instance(), &names, &view.local, rebalance.tolerance);
        if owed.left() == 0 {
            let settled = *part.settled_at.get_or_insert(now + fleet.settle());
            if now >= settled {
                *quota = None;
            }
            return;
        }
        part.settled_at = None;
        let Some(established_before) = now.checked_sub(rebalance.min_age) else {
            return;
        };
        // `left` > 0: this instance has a part, so the fleet an excess.
        let rate = rebalance.max_closes_per_second * owed.mine as f64 / owed.fleet as f64;
        let slots = pacer.slots(now, owed.left(), rate, TICK, &mut rand::thread_rng());
        let shares = plan::share_out(&slots, &owed.per_backend);
        for (backend, shed) in self.offer(route, shares, established_before) {
            part.offered(backend, shed);
        }
    }

    /// Offer each backend its `shares` of slots, to connections established before
    /// `established_before`; returns the offers.
    fn offer(
        &self,
        route: &PoolRoute,
        shares: Vec<Vec<Instant>>,
        established_before: Instant,
    ) -> Vec<(Arc<str>, Arc<Shed>)> {
        let mut offers = Vec::new();
        for (backend, slots) in route.backends.iter().zip(shares) {
            if slots.is_empty() {
                continue;
            }
            let offered = slots.len();
            let shed = Arc::new(Shed::new(slots, established_before));
            let cause = CloseCause::Rebalance(shed.clone());
            let open = backend
                .stats
                .close_connections(self.routing.shutdown_token(), cause);
            tracing::debug!(
                pool = &*route.name,
                backend = &*backend.name,
                offered,
                open,
                "rebalance: closes offered to the backend's connections"
            );
            offers.push((backend.name.clone(), shed));
        }
        offers
    }
}

/// A pool's loads as one round reads them.
struct View {
    /// This instance's.
    local: Vec<Load>,
    /// What the plan reads: the fleet's with `others`, else `local`.
    loads: Vec<Load>,
    /// The other instances' connections (a fresh read of their reports), with `[fleet]`.
    others: Option<Arc<fleet::Others>>,
}

impl View {
    fn basis(&self) -> api::RebalanceBasis {
        if self.others.is_some() {
            api::RebalanceBasis::Fleet
        } else {
            api::RebalanceBasis::Local
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

/// Log the start of a pass that sets out to close `to_move` connections and begin it.
fn start_pass(route: &PoolRoute, why: &str, view: &View, to_move: u64, now: Instant) -> Pass {
    tracing::info!(
        pool = &*route.name,
        trigger = why,
        imbalance = rounded(plan::plan(&view.loads, 0.0).imbalance),
        to_move,
        basis = view.basis().as_str(),
        "rebalance started: moving connections off backends above their fair share"
    );
    Pass {
        why: why.to_owned(),
        started: now,
        closes_before: closes(route),
        // Two backends under round_robin need about twice `to_move` (half the moved clients
        // come back); three times and some to spare. With `[fleet]`, on the whole fleet's
        // excess: this instance's first part may be small, its later parts larger.
        give_up_after: 3 * to_move.max(plan::plan(&view.loads, 0.0).excess.iter().sum()) + 10,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BackendSlot, BackendStats, CloseToken};

    const RATE: f64 = 4.0;
    const MIN_AGE: Duration = Duration::from_secs(5);

    fn rebalancer(mode: &str) -> (Arc<Rebalancer>, Arc<Routing>) {
        rebalancer_in(mode, None)
    }

    fn rebalancer_in(
        mode: &str,
        fleet: Option<Arc<FleetLoads>>,
    ) -> (Arc<Rebalancer>, Arc<Routing>) {
        let text = format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n\
             [pool.p]\nbalance = \"least_conn\"\n\
             rebalance = {{ mode = \"{mode}\", tolerance = 0.1, max_closes_per_second = {RATE}, \
             min_age = \"5s\" }}\n\
             [[pool.p.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1001\"\n\
             [[pool.p.backend]]\nname = \"b\"\naddr = \"127.0.0.1:1002\"\n"
        );
        let config = crate::config::from_toml_offline(&text, std::path::Path::new("t.toml"))
            .expect("a valid config");
        let metrics = crate::state::BackendMetrics::register(&prometheus::Registry::new());
        let routing = Arc::new(Routing::new(&config, metrics));
        let config = Arc::new(ArcSwap::from_pointee(config));
        (Rebalancer::new(config, routing.clone(), fleet), routing)
    }

    fn stats(routing: &Routing, backend: &str) -> Arc<BackendStats> {
        routing.load().pools["p"]
            .backend(backend)
            .unwrap()
            .stats
            .clone()
    }

    /// A client connection as the data path keeps it: its claim and the token it waits on.
    struct Conn {
        _slot: BackendSlot,
        watching: CloseToken,
        since: Instant,
    }

    fn connect(routing: &Routing, backend: &str) -> Conn {
        let mut slot = BackendSlot::claim(&stats(routing, backend));
        slot.established();
        Conn {
            watching: slot.take_close_token().unwrap(),
            _slot: slot,
            since: state::now(),
        }
    }

    /// `n` connections on a while b is drained (the rebalancer has seen b out), aged by
    /// `age`; b is not back yet.
    async fn piled_on_a(
        mode: &str,
        n: usize,
        age: Duration,
    ) -> (Arc<Rebalancer>, Arc<Routing>, Vec<Conn>) {
        let (rebalancer, routing) = rebalancer(mode);
        routing.set_admin("p", "b", crate::state::AdminState::Drained);
        rebalancer.round(state::now());
        let conns = (0..n).map(|_| connect(&routing, "a")).collect();
        tokio::time::advance(age).await;
        (rebalancer, routing, conns)
    }

    /// Run `rounds` rounds a `step` apart, the moved clients reconnecting to `to`.
    async fn rounds(
        rebalancer: &Rebalancer,
        routing: &Routing,
        (conns, taken): (&mut Vec<Conn>, &mut Vec<Instant>),
        (rounds, step, to): (usize, Duration, &str),
    ) {
        for _ in 0..rounds {
            rebalancer.round(state::now());
            settle_onto(routing, conns, taken, to);
            tokio::time::advance(step).await;
        }
    }

    /// What `after_close` does for each connection whose token fired: take a slot (the
    /// connection leaves at that instant and its client reconnects to b), or wait on the next.
    fn settle(routing: &Routing, conns: &mut Vec<Conn>, taken: &mut Vec<Instant>) {
        settle_onto(routing, conns, taken, "b");
    }

    /// `settle`, the moved clients reconnecting to `to`.
    fn settle_onto(routing: &Routing, conns: &mut Vec<Conn>, taken: &mut Vec<Instant>, to: &str) {
        let mut moved = 0;
        conns.retain_mut(|c| {
            while c.watching.token().is_cancelled() {
                let Some(CloseCause::Rebalance(shed)) = c.watching.cause() else {
                    panic!("only rebalances close here");
                };
                if let Some(at) = shed.take(c.since) {
                    c._slot.stats().rebalance_closes.inc();
                    taken.push(at);
                    moved += 1;
                    return false;
                }
                c.watching = c.watching.next().expect("a rebalance sets the next token");
            }
            true
        });
        for _ in 0..moved {
            conns.push(connect(routing, to));
        }
    }

    /// The rate limit on tokio's paused clock: a backend that returns to a 40 / 0 pool gets its
    /// 20 back, no connection younger than `min_age` moves, the closes are at least `1 / rate`
    /// apart over every round, and the pass ends when the pool is balanced.
    #[tokio::test(start_paused = true)]
    async fn a_return_moves_the_excess_at_the_configured_pace() {
        let (rebalancer, routing, mut conns) = piled_on_a("on_return", 40, Duration::ZERO).await;
        let start = state::now();
        routing.set_admin("p", "b", crate::state::AdminState::Active);
        let mut taken = Vec::new();
        let moves = (&mut conns, &mut taken);
        rounds(&rebalancer, &routing, moves, (30, TICK, "b")).await;
        // Within the tolerance: a at most ceil(20 × 1.1) = 22; b has what moved.
        let on_a = stats(&routing, "a").claims();
        assert!((20..=22).contains(&on_a), "{on_a} left on a");
        assert_eq!(stats(&routing, "b").claims(), 40 - on_a);
        assert_eq!(taken.len() as i64, 40 - on_a);
        taken.sort();
        assert!(taken[0] >= start + MIN_AGE, "{:?}", taken[0] - start);
        let gap = Duration::from_secs_f64(1.0 / RATE);
        for pair in taken.windows(2) {
            assert!(pair[1] - pair[0] >= gap, "{:?}", pair[1] - pair[0]);
        }
        let route = &routing.load().pools["p"];
        assert!(
            route.imbalance_gauge.get() <= 0.05,
            "{}",
            route.imbalance_gauge.get()
        );
        assert!(rebalancer.lock()[&route.name].pass.is_none());
    }

    /// Mode off: a return moves nothing until an operator asks; a hold stops an automatic
    /// pass from starting, and asking lifts it.
    #[tokio::test(start_paused = true)]
    async fn off_waits_to_be_asked_and_a_hold_waits_for_the_ask() {
        for mode in ["off", "continuous"] {
            let (rebalancer, routing, mut conns) = piled_on_a(mode, 10, MIN_AGE).await;
            rebalancer.hold("p");
            routing.set_admin("p", "b", crate::state::AdminState::Active);
            let mut taken = Vec::new();
            rounds(
                &rebalancer,
                &routing,
                (&mut conns, &mut taken),
                (10, TICK, "b"),
            )
            .await;
            assert!(taken.is_empty(), "{mode}: moved {}", taken.len());
            let route = routing.load().pools["p"].clone();
            assert_eq!(route.imbalance_gauge.get(), 0.5);
            let answer = rebalancer.start("p").unwrap();
            assert!(answer.started && answer.to_move == 5, "{answer:?}");
            for _ in 0..10 {
                settle(&routing, &mut conns, &mut taken);
                tokio::time::advance(TICK).await;
                rebalancer.round(state::now());
            }
            // Within the tolerance (fair 5, at most ceil(5.5) = 6): the pass ends there.
            assert!((4..=5).contains(&taken.len()), "{mode}: {}", taken.len());
            assert_eq!(stats(&routing, "b").claims(), taken.len() as i64, "{mode}");
            assert!(rebalancer.lock()[&route.name].pass.is_none(), "{mode}");
        }
    }

    /// A return during a hold is not lost: the pass starts when the hold ends. And once
    /// warren stops accepting, nothing more moves.
    #[tokio::test(start_paused = true)]
    async fn a_return_during_a_hold_starts_a_pass_when_the_hold_ends() {
        let (rebalancer, routing, mut conns) = piled_on_a("on_return", 10, MIN_AGE).await;
        rebalancer.hold("p");
        routing.set_admin("p", "b", crate::state::AdminState::Active);
        let mut taken = Vec::new();
        let held_rounds = (HOLD.as_secs() / TICK.as_secs()) as usize;
        rounds(
            &rebalancer,
            &routing,
            (&mut conns, &mut taken),
            (held_rounds, TICK, "b"),
        )
        .await;
        assert!(taken.is_empty(), "moved {} while held", taken.len());
        rounds(
            &rebalancer,
            &routing,
            (&mut conns, &mut taken),
            (10, TICK, "b"),
        )
        .await;
        assert!((4..=5).contains(&taken.len()), "{}", taken.len());

        // Stopped: another imbalance is left alone.
        rebalancer.stop();
        routing.set_admin("p", "a", crate::state::AdminState::Drained);
        routing.set_admin("p", "a", crate::state::AdminState::Active);
        let before = taken.len();
        rounds(
            &rebalancer,
            &routing,
            (&mut conns, &mut taken),
            (5, TICK, "b"),
        )
        .await;
        assert_eq!(taken.len(), before);
    }

    /// Clients that come back to the backend they were moved off: the pass gives up after
    /// three times what it set out to move (and ten), instead of closing them forever.
    #[tokio::test(start_paused = true)]
    async fn a_pass_that_cannot_balance_gives_up() {
        let (rebalancer, routing, mut conns) = piled_on_a("on_return", 10, MIN_AGE).await;
        routing.set_admin("p", "b", crate::state::AdminState::Active);
        let mut taken = Vec::new();
        // The clients that came back are young: each round lets them age.
        let moves = (&mut conns, &mut taken);
        rounds(&rebalancer, &routing, moves, (60, MIN_AGE, "a")).await;
        let name = routing.load().pools["p"].name.clone();
        assert!(rebalancer.lock()[&name].pass.is_none());
        // to_move 5: 3 × 5 + 10 = 25 closes, and the last round's slots.
        assert!((25..=29).contains(&taken.len()), "{}", taken.len());
    }

    /// The other instances' reports: one connection each on a, written at `at_ms`.
    fn one_each_on_a(me: &str, at_ms: u64) -> Vec<crate::fleet::instances::Report> {
        use crate::fleet::instances::{BackendReport, Report};
        ["i1", "i2", "i3"]
            .into_iter()
            .filter(|i| *i != me)
            .map(|instance| Report {
                instance: instance.into(),
                version: "0.1.0".into(),
                at_ms,
                backends: vec![BackendReport {
                    pool: "p".into(),
                    backend: "a".into(),
                    active_connections: 1,
                    health: api::Health::Up,
                    admin: api::AdminState::Active,
                    local: false,
                }],
            })
            .collect()
    }

    /// With `[fleet]`: one client per instance, all three on a, b back: each instance is
    /// balanced alone (one connection), the fleet (3 / 0) is not. Of the fleet's excess of
    /// one, only the instance whose name sorts first closes it, once; the others close none.
    /// Without a recent read of the reports an instance plans alone.
    #[tokio::test(start_paused = true)]
    async fn in_a_fleet_each_instance_closes_only_its_part_of_the_fleets_excess() {
        for (me, moves) in [("i1", 1), ("i3", 0)] {
            let fleet = FleetLoads::new(me, Duration::from_secs(2));
            let (rebalancer, routing) = rebalancer_in("continuous", Some(fleet.clone()));
            let mut conns = vec![connect(&routing, "a")];
            tokio::time::advance(MIN_AGE).await;
            let mut taken = Vec::new();
            for round in 0..30 {
                fleet.update(state::now(), &one_each_on_a(me, round));
                rebalancer.round(state::now());
                settle(&routing, &mut conns, &mut taken);
                tokio::time::advance(TICK).await;
            }
            assert_eq!(taken.len(), moves, "{me}");
            let (settings, route) = {
                let config = rebalancer.config.load_full();
                (config.pools[0].clone(), routing.load().pools["p"].clone())
            };
            let status = rebalancer.status(&settings, &route);
            assert_eq!(status.basis, api::RebalanceBasis::Fleet, "{me}");
            // i1 moved its client: 2 / 1 is within the tolerance. i3 waits for i1.
            let balanced = status.state == api::RebalanceState::Balanced;
            assert_eq!(balanced, moves == 1, "{me}: {status:?}");
            // No read for three report intervals: this instance alone.
            tokio::time::advance(Duration::from_secs(6)).await;
            let status = rebalancer.status(&settings, &route);
            assert_eq!(status.basis, api::RebalanceBasis::Local, "{me}");
        }
    }
}
