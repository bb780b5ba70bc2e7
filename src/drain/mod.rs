//! The operator's admin state of backends and the policy that guards it: drain (no new
//! connections; existing ones continue; with a deadline, those still open then are closed),
//! undrain, the `draining → drained` transition when the last connection closes, the state file
//! that makes drains survive a restart, and the two checks a drain must pass unless forced:
//! RabbitMQ's quorum check (asked on the backend's management endpoint, or through the pool's
//! `http` probe on the management API) and `min_available`. A refusal is a typed
//! [`DrainError`] (`refusal`); the admin API only maps it to a status code. It changes admin
//! state only through [`Routing`] and emits events through the health [`Controller`]; it never
//! touches health, and never speaks HTTP to the operator. The state file and
//! `state_file_errors_total` ([`StateFileMetrics`]) are `state_file`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;

use crate::api::{DrainAnswer, QuorumAnswer};
use crate::config::{Config, HookEvent, ProxyProtocol};
use crate::fleet::drains::FleetDrains;
use crate::health::probe::{self, QuorumCheck};
use crate::health::{Cause, Controller};
use crate::state::{AdminState, BackendId, CloseCause, Routing};
use tokio_util::sync::CancellationToken;

mod fleet;
mod local;
mod refusal;
mod state_file;

pub use local::Scope;
pub use refusal::DrainError;
use refusal::{judge_quorum, judge_set};

pub use state_file::{
    check_state_file, load_state, LocalChanges, Restored, StateFileError, StateFileMetrics,
};
use state_file::{write_atomically, PersistedBackend, PersistedState};

/// How often a draining backend is checked for its last connection.
const DRAINED_POLL: Duration = Duration::from_millis(100);

/// The longest drain deadline, one (Julian) year: a longer one is refused with 400 (a drain may
/// also have no deadline). It keeps every deadline representable and printable (RFC 3339).
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(31_557_600);

/// Bounds of the time a drain's quorum check may take: at least 3 s (a probe timeout is often
/// tighter), at most 5 s (well inside `warren ctl`'s 10 s request timeout).
const QUORUM_TIMEOUT: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(5));

/// All of one drain's quorum checks together (each backend's, asked at once, then the set's):
/// an answer must reach `warren ctl` inside its 10 s request timeout, or ctl would report a
/// failure while the drain goes ahead.
const CHECKS_BUDGET: Duration = Duration::from_secs(8);

/// Drains and undrains backends; one per process, on the control runtime.
pub struct Drainer {
    routing: Arc<Routing>,
    health: Arc<Controller>,
    /// The config in force (replaced on reload): each pool's `min_available`, and the probe and
    /// backend addresses the quorum check asks through.
    config: Mutex<Arc<Config>>,
    state_file: Option<PathBuf>,
    /// Deadline of each draining backend, and a generation so an undrain stops its watcher.
    drains: Mutex<HashMap<BackendId, DrainEntry>>,
    runtime: Handle,
    metrics: StateFileMetrics,
    /// Held by a drain from its first check to its state change: two drains at once (two
    /// operators, a script with `&`) would each see the other's backend active and both pass
    /// the set's quorum check and `min_available`.
    deciding: tokio::sync::Mutex<()>,
    /// `[fleet]`: the fleet's drains in etcd, which every change goes through (see `fleet`).
    fleet: Option<Arc<FleetDrains>>,
    /// Set once an upgrade handed everything to a new process: the fleet's changes are its.
    retired: CancellationToken,
    /// `[fleet]`: backends whose admin state here is a local change, and since when (see
    /// `local`).
    local: Mutex<HashMap<BackendId, SystemTime>>,
}

#[derive(Clone, Copy)]
struct DrainEntry {
    deadline: Option<Deadline>,
    generation: u64,
}

/// When a drain's remaining connections are closed: the watcher's timer runs on the monotonic
/// clock, so a step of the wall clock (NTP) fires it neither early nor late; the wall-clock
/// time is only what status shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadline {
    at: tokio::time::Instant,
    wall: SystemTime,
}

impl Deadline {
    /// `after` from now; `None` when the wall clock cannot hold it.
    fn after(after: Duration) -> Option<Deadline> {
        Some(Deadline {
            at: tokio::time::Instant::now().checked_add(after)?,
            wall: SystemTime::now().checked_add(after)?,
        })
    }
}

impl Drainer {
    /// A drainer for the pools of `routing` (whose drains the state file restored, see
    /// [`load_state`]).
    pub fn new(
        config: &Config,
        routing: Arc<Routing>,
        health: Arc<Controller>,
        metrics: StateFileMetrics,
        runtime: Handle,
    ) -> Arc<Drainer> {
        let state_file = config.admin.as_ref().and_then(|a| a.state_file.clone());
        let fleet = config.fleet.as_ref().and_then(fleet_store);
        Arc::new(Drainer {
            routing,
            health,
            config: Mutex::new(Arc::new(config.clone())),
            state_file,
            drains: Mutex::new(HashMap::new()),
            runtime,
            metrics,
            deciding: tokio::sync::Mutex::new(()),
            fleet,
            retired: CancellationToken::new(),
            local: Mutex::new(HashMap::new()),
        })
    }

    /// The fleet's drains, with `[fleet]`.
    pub fn fleet(&self) -> Option<Arc<FleetDrains>> {
        self.fleet.clone()
    }

    /// Take a reloaded config (`min_available`, probes, backend addresses). A backend the
    /// new config removed loses its drain entry (deadline and watcher), so a backend of the
    /// same name added back later starts without it.
    pub fn reload(&self, config: &Config) {
        let kept = |id: &BackendId| {
            config
                .pool(&id.pool)
                .is_some_and(|p| p.backends.iter().any(|b| *b.name == *id.backend))
        };
        lock(&self.drains).retain(|id, _| kept(id));
        let mut local = lock(&self.local);
        local.retain(|id, _| kept(id));
        self.metrics.fleet_local_changes.set(local.len() as i64);
        drop(local);
        *lock(&self.config) = Arc::new(config.clone());
    }

    /// Stop new connections to a backend now; close the remaining ones after `deadline`.
    /// Unless `force`, RabbitMQ's quorum check and then `min_available` may refuse it; a
    /// quorum check nobody answered lets it go ahead with a warning in the answer. With
    /// `[fleet]` it goes through the fleet first, unless `scope` is local.
    pub async fn drain(
        self: &Arc<Self>,
        id: &BackendId,
        deadline: Option<Duration>,
        force: bool,
        scope: Scope,
    ) -> Result<DrainAnswer, DrainError> {
        let _deciding = self.deciding.lock().await;
        let (quorum, warning, set_warning) = if force {
            (QuorumAnswer::SkippedForce, None, None)
        } else {
            let until = tokio::time::Instant::now() + CHECKS_BUDGET;
            let (quorum, warning) = judge_quorum(id, self.ask_quorum(id, until).await)?;
            let set_warning = self
                .judge_set_quorum(std::slice::from_ref(id), until)
                .await?;
            (quorum, warning, set_warning)
        };
        let admin = self.drain_checked(id, force)?;
        // Refused here before the fleet could take it (as `drain_started` would after).
        if let Some(d) = deadline.filter(|d| *d > MAX_DRAIN_DEADLINE) {
            return Err(DrainError::DeadlineTooLong { deadline: d });
        }
        let ids = std::slice::from_ref(id);
        self.through_fleet(scope, |fleet| self.fleet_drain(fleet, ids, deadline, force))
            .await?;
        let saved = self.note_scope(ids, scope, true);
        let mut answer = self.drain_started(id, admin, deadline, force)?;
        answer.quorum_check = Some(quorum);
        answer.warnings.extend(warning);
        answer.warnings.extend(set_warning);
        self.warn_local(&mut answer, scope, &saved);
        Ok(answer)
    }

    /// Drain a set of backends as one decision (a tag, several names, one node in several
    /// pools): every backend must exist; unless `force`, each one's quorum check must let it
    /// go, so must the quorum check of the set as a whole (with the backends already out of
    /// their pools, see [`Drainer::judge_set_quorum`]), and each pool must keep
    /// `min_available` primaries counting the whole set. Then all are drained, else none.
    pub async fn drain_set(
        self: &Arc<Self>,
        ids: &[BackendId],
        deadline: Option<Duration>,
        force: bool,
        scope: Scope,
    ) -> Result<Vec<DrainAnswer>, DrainError> {
        let _deciding = self.deciding.lock().await;
        let ids = self.checked_set(ids)?;
        if let Some(d) = deadline.filter(|d| *d > MAX_DRAIN_DEADLINE) {
            return Err(DrainError::DeadlineTooLong { deadline: d });
        }
        let until = tokio::time::Instant::now() + CHECKS_BUDGET;
        let mut judged = Vec::with_capacity(ids.len());
        if force {
            judged.resize(ids.len(), (QuorumAnswer::SkippedForce, None));
        } else {
            for (id, check) in ids.iter().zip(self.ask_quorums(&ids, until).await) {
                judged.push(judge_quorum(id, check)?);
            }
        }
        let set_warning = if force {
            None
        } else {
            let warning = self.judge_set_quorum(&ids, until).await?;
            self.check_set_min_available(&ids)?;
            warning
        };
        self.through_fleet(scope, |fleet| {
            self.fleet_drain(fleet, &ids, deadline, force)
        })
        .await?;
        let saved = self.note_scope(&ids, scope, true);
        let mut answers = Vec::with_capacity(ids.len());
        for (id, (quorum, warning)) in ids.iter().zip(judged) {
            let admin = self
                .admin_state(id)
                .ok_or_else(|| DrainError::NotFound(id.clone()))?;
            // The set passed its checks as a whole; one by one, each would see the others gone.
            let mut answer = self.drain_started(id, admin, deadline, force)?;
            answer.quorum_check = Some(quorum);
            answer.warnings.extend(warning);
            self.warn_local(&mut answer, scope, &saved);
            answers.push(answer);
        }
        // The set's own warning, once: on the first backend's answer.
        if let (Some(first), Some(warning)) = (answers.first_mut(), set_warning) {
            first.warnings.push(warning);
        }
        Ok(answers)
    }

    /// Undrain every backend of a set (each must exist; idempotent).
    pub fn undrain_set(&self, ids: &[BackendId]) -> Result<Vec<DrainAnswer>, DrainError> {
        let ids = self.checked_set(ids)?;
        ids.iter().map(|id| self.undrain(id)).collect()
    }

    /// An undrain as the admin API asks it: with `[fleet]` and unless `scope` is local,
    /// removed from the fleet's store first (refused when etcd does not take it), then here.
    pub async fn undrain_request(
        &self,
        ids: &[BackendId],
        scope: Scope,
    ) -> Result<Vec<DrainAnswer>, DrainError> {
        let ids = self.checked_set(ids)?;
        self.through_fleet(scope, |fleet| self.fleet_undrain(fleet, &ids))
            .await?;
        let saved = self.note_scope(&ids, scope, false);
        let mut answers = ids
            .iter()
            .map(|id| self.undrain(id))
            .collect::<Result<Vec<_>, _>>()?;
        for answer in &mut answers {
            self.warn_local(answer, scope, &saved);
        }
        Ok(answers)
    }

    /// Run `change` on the fleet's store when there is one and the change is not local.
    async fn through_fleet<'a, F>(
        &'a self,
        scope: Scope,
        change: impl FnOnce(&'a FleetDrains) -> F,
    ) -> Result<(), DrainError>
    where
        F: std::future::Future<Output = Result<(), DrainError>>,
    {
        match (&self.fleet, scope) {
            (Some(fleet), Scope::Fleet) => change(fleet).await,
            _ => Ok(()),
        }
    }

    /// A set as drains and undrains take it: each backend once, in order; not empty; every
    /// backend known.
    fn checked_set(&self, ids: &[BackendId]) -> Result<Vec<BackendId>, DrainError> {
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<BackendId> = ids.iter().filter(|id| seen.insert(*id)).cloned().collect();
        if ids.is_empty() {
            return Err(DrainError::EmptySet);
        }
        if let Some(missing) = ids.iter().find(|id| self.admin_state(id).is_none()) {
            return Err(DrainError::NotFound(missing.clone()));
        }
        Ok(ids)
    }

    /// `min_available` for a set: in each pool, the primaries left available once every
    /// backend of the set in it is out.
    fn check_set_min_available(&self, ids: &[BackendId]) -> Result<(), DrainError> {
        let snapshot = self.routing.load_full();
        let config = lock(&self.config).clone();
        let mut pools: Vec<&str> = ids.iter().map(|id| &*id.pool).collect();
        pools.sort_unstable();
        pools.dedup();
        for pool in pools {
            let Some(route) = snapshot.pools.get(pool) else {
                continue;
            };
            let leaving: Vec<&str> = ids
                .iter()
                .filter(|id| &*id.pool == pool)
                .map(|id| &*id.backend)
                .collect();
            let is_leaving = |name: &str| leaving.contains(&name);
            let primaries = route.backends.iter().filter(|b| !b.backup && b.available());
            let loses = primaries.clone().any(|b| is_leaving(&b.name));
            let left = primaries.filter(|b| !is_leaving(&b.name)).count();
            let min_available = config.pool(pool).map_or(0, |p| p.min_available);
            if loses && left < min_available {
                return Err(match leaving.as_slice() {
                    [one] => DrainError::MinAvailable {
                        id: BackendId::new(pool, one),
                        left,
                        min_available,
                    },
                    _ => DrainError::MinAvailableSet {
                        pool: pool.to_string(),
                        backends: leaving.iter().map(|b| b.to_string()).collect(),
                        left,
                        min_available,
                    },
                });
            }
        }
        Ok(())
    }

    /// Ask RabbitMQ whether `id` may stop, on the backend's management endpoint, or when its
    /// pool probes the management API. A backend already draining or drained is not asked again
    /// (its drain was already allowed).
    async fn ask_quorum(&self, id: &BackendId, until: tokio::time::Instant) -> QuorumCheck {
        if self.admin_state(id) != Some(AdminState::Active) {
            return QuorumCheck::NotApplicable;
        }
        match self.quorum_target(id) {
            Some((leaving, timeout)) => {
                let timeout =
                    timeout.min(until.saturating_duration_since(tokio::time::Instant::now()));
                probe::quorum_check(leaving.probe.as_ref(), &leaving.target, timeout).await
            }
            None => QuorumCheck::NotApplicable,
        }
    }

    /// [`Drainer::ask_quorum`] for every backend of a set at once (a set of five must not
    /// take five timeouts), in the set's order.
    async fn ask_quorums(
        self: &Arc<Self>,
        ids: &[BackendId],
        until: tokio::time::Instant,
    ) -> Vec<QuorumCheck> {
        let mut asks = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let (me, id) = (self.clone(), id.clone());
            asks.spawn(async move { (i, me.ask_quorum(&id, until).await) });
        }
        // A check whose task panicked keeps this: no answer, so a warning, never a silent pass.
        let unfinished = QuorumCheck::Unknown("the quorum check did not finish".into());
        let mut checks = vec![unfinished; ids.len()];
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((i, check)) => checks[i] = check,
                Err(e) => tracing::error!(error = %e, "a quorum check task failed"),
            }
        }
        checks
    }

    /// Whom the quorum check of `id` asks, and within what time; `None` when nobody (no
    /// management endpoint and no probe).
    fn quorum_target(&self, id: &BackendId) -> Option<(probe::Leaving, Duration)> {
        let config = lock(&self.config).clone();
        let p = config.pools.iter().find(|p| *p.name == *id.pool)?;
        let b = p.backends.iter().find(|b| *b.name == *id.backend)?;
        let timeout = match (&b.management, &p.health) {
            (Some(management), _) => management.timeout,
            (None, Some(health)) => health.timeout.clamp(QUORUM_TIMEOUT.0, QUORUM_TIMEOUT.1),
            (None, None) => return None,
        };
        let leaving = probe::Leaving {
            probe: p.health.as_ref().map(|h| h.probe.clone()),
            target: probe::ProbeTarget::for_backend(b, ProxyProtocol::Off),
        };
        Some((leaving, timeout))
    }

    /// The quorum check of `ids` leaving together with every backend already draining or
    /// drained in their pools (the operator is about to stop those too), when that makes two
    /// or more: RabbitMQ's own check asks about one node at a time, and two nodes that are
    /// each safe alone may hold a majority of a queue's replicas together (see
    /// [`probe::quorum_check_set`]). Not asked when no backend of `ids` is active (nothing new
    /// leaves). Refuses like the per-node check; a check nobody answered lets the drain go
    /// ahead with the warning returned.
    async fn judge_set_quorum(
        &self,
        ids: &[BackendId],
        until: tokio::time::Instant,
    ) -> Result<Option<String>, DrainError> {
        let snapshot = self.routing.load_full();
        let new: Vec<&BackendId> = ids
            .iter()
            .filter(|id| self.admin_state(id) == Some(AdminState::Active))
            .collect();
        if new.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (pool, route) in snapshot.pools.iter() {
            if !ids.iter().any(|id| *id.pool == **pool) {
                continue;
            }
            out.extend(
                route
                    .backends
                    .iter()
                    .filter(|b| b.admin != AdminState::Active)
                    .map(|b| BackendId::new(pool, &b.name)),
            );
        }
        let asked: Vec<_> = new
            .iter()
            .copied()
            .chain(&out)
            .filter_map(|id| self.quorum_target(id))
            .collect();
        if asked.len() < 2 {
            return Ok(None);
        }
        let timeout = asked
            .iter()
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(QUORUM_TIMEOUT.1)
            .min(until.saturating_duration_since(tokio::time::Instant::now()));
        let check = probe::quorum_check_set(asked.into_iter().map(|(l, _)| l).collect(), timeout);
        judge_set(&new, &out, check.await)
    }

    fn admin_state(&self, id: &BackendId) -> Option<AdminState> {
        let snapshot = self.routing.load();
        Some(snapshot.pools.get(&*id.pool)?.backend(&id.backend)?.admin)
    }

    /// The checks of a drain once the quorum check let it through: the backend exists, and
    /// `min_available` (unless `force`). Returns its admin state.
    fn drain_checked(&self, id: &BackendId, force: bool) -> Result<AdminState, DrainError> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let not_found = || DrainError::NotFound(id.clone());
        let snapshot = self.routing.load_full();
        let route = snapshot.pools.get(pool).ok_or_else(not_found)?;
        let target = route.backend(backend).ok_or_else(not_found)?;
        if target.admin == AdminState::Active && !force {
            self.check_min_available(id, route, target)?;
        }
        Ok(target.admin)
    }

    /// `min_available` for one backend: the primaries left available without it.
    fn check_min_available(
        &self,
        id: &BackendId,
        route: &crate::state::PoolRoute,
        target: &crate::state::BackendRoute,
    ) -> Result<(), DrainError> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        {
            let min_available = lock(&self.config)
                .pools
                .iter()
                .find(|p| p.name == pool)
                .map_or(0, |p| p.min_available);
            let left = route
                .backends
                .iter()
                .filter(|b| !b.backup && b.available() && &*b.name != backend)
                .count();
            let loses_one = !target.backup && target.available();
            if loses_one && left < min_available {
                return Err(DrainError::MinAvailable {
                    id: id.clone(),
                    left,
                    min_available,
                });
            }
        }
        Ok(())
    }

    /// The drain itself once its checks passed: the deadline, the state change, the watcher.
    /// `admin` is the backend's admin state as the caller looked it up (in the same snapshot as
    /// its checks, for [`Drainer::drain_checked`]).
    fn drain_started(
        self: &Arc<Self>,
        id: &BackendId,
        admin: AdminState,
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<DrainAnswer, DrainError> {
        let not_found = || DrainError::NotFound(id.clone());
        let deadline_at = match deadline {
            Some(d) if d > MAX_DRAIN_DEADLINE => {
                return Err(DrainError::DeadlineTooLong { deadline: d })
            }
            Some(d) => Some(Deadline::after(d).ok_or(DrainError::DeadlineTooLong { deadline: d })?),
            None => None,
        };
        let saved = self.start_drain(id, admin, deadline_at, force);
        // A reload may have removed the backend since: not found, never a panic.
        let mut answer = self.status(id).ok_or_else(not_found)?;
        record_save(&mut answer, saved);
        Ok(answer)
    }

    /// Start (or join) the drain of `id`, whose admin state is `admin`: the deadline, the
    /// state change and its event, the state file, the watcher. Returns how the save went.
    fn start_drain(
        self: &Arc<Self>,
        id: &BackendId,
        admin: AdminState,
        deadline_at: Option<Deadline>,
        force: bool,
    ) -> Option<Result<(), String>> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let generation = self.set_deadline(id, deadline_at);
        let mut saved = None;
        if admin == AdminState::Active {
            if let Some((_, transition)) = self
                .routing
                .update(pool, backend, |b| b.admin = AdminState::Draining)
            {
                let deadline = deadline_at.map_or_else(|| "none".to_owned(), |d| rfc3339(d.wall));
                tracing::info!(pool = %pool, backend = %backend, %deadline, force, "drain started");
                self.health
                    .emit(id, Some(HookEvent::DrainStarted), &transition, Cause::Admin);
            }
            saved = self.save();
        }
        self.runtime
            .spawn(self.clone().watch(id.clone(), generation));
        saved
    }

    /// Start (or join) the drain entry of `id`: a new generation, and the deadline set or
    /// shortened, never dropped silently by a repeated drain. Returns the generation.
    fn set_deadline(&self, id: &BackendId, deadline_at: Option<Deadline>) -> u64 {
        let mut drains = lock(&self.drains);
        let entry = drains.entry(id.clone()).or_insert(DrainEntry {
            deadline: None,
            generation: 0,
        });
        entry.generation += 1;
        entry.deadline = match (entry.deadline, deadline_at) {
            (Some(old), Some(new)) if new.at < old.at => Some(new),
            (Some(old), Some(_)) => Some(old),
            (old, new) => new.or(old),
        };
        entry.generation
    }

    /// Continue a drain an upgraded-from warren had under way (at start, before serving):
    /// `admin` as it was, and a draining backend's deadline to the same instant. No event, no
    /// state file write: nothing changed. Its watcher starts with [`Drainer::follow`], once
    /// the connections it waits for have been adopted (before, it would see none and call
    /// the drain complete).
    pub fn carry_over(&self, id: &BackendId, admin: AdminState, deadline: Option<SystemTime>) {
        if self
            .routing
            .update(&id.pool, &id.backend, |b| b.admin = admin)
            .is_none()
        {
            tracing::warn!(pool = %id.pool, backend = %id.backend,
                "the old process drained a backend this config does not have; ignored");
            return;
        }
        if admin != AdminState::Draining {
            return;
        }
        let deadline_at = deadline.map(|wall| {
            let left = wall.duration_since(SystemTime::now()).unwrap_or_default();
            Deadline {
                at: tokio::time::Instant::now() + left,
                wall,
            }
        });
        self.set_deadline(id, deadline_at);
        tracing::info!(pool = %id.pool, backend = %id.backend,
            deadline = deadline.map(rfc3339).as_deref().unwrap_or("none"),
            "drain carried over from the old process");
    }

    /// Follow a drain carried over from the old process (see [`Drainer::carry_over`]).
    pub fn follow(self: &Arc<Self>, id: &BackendId) {
        let Some(generation) = lock(&self.drains).get(id).map(|e| e.generation) else {
            return;
        };
        self.runtime
            .spawn(self.clone().watch(id.clone(), generation));
    }

    /// Stop following drains: after an upgrade of warren the new process does (its deadlines,
    /// its `drain_complete`); here the connections leaving would look like a drain completing.
    pub fn retire(&self) {
        self.retired.cancel();
        lock(&self.drains).clear();
    }

    /// Cancelled once this process handed everything to a new one (see [`Drainer::retire`]).
    pub fn retired(&self) -> CancellationToken {
        self.retired.clone()
    }

    /// Let a backend take new connections again (idempotent).
    pub fn undrain(&self, id: &BackendId) -> Result<DrainAnswer, DrainError> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let not_found = || DrainError::NotFound(id.clone());
        let changed = self
            .routing
            .update(pool, backend, |b| {
                std::mem::replace(&mut b.admin, AdminState::Active)
            })
            .ok_or_else(not_found)?;
        // Removing the entry stops its watcher (it checks the generation).
        lock(&self.drains).remove(id);
        let (previous, transition) = changed;
        let mut saved = None;
        if previous != AdminState::Active {
            tracing::info!(pool = %pool, backend = %backend, "undrained: taking new connections");
            self.health.emit(id, None, &transition, Cause::Admin);
            saved = self.save();
        }
        // A reload may have removed the backend since: not found, never a panic.
        let mut answer = self.status(id).ok_or_else(not_found)?;
        record_save(&mut answer, saved);
        Ok(answer)
    }

    /// The admin view of one backend.
    pub fn status(&self, id: &BackendId) -> Option<DrainAnswer> {
        let snapshot = self.routing.load();
        let b = snapshot.pools.get(&*id.pool)?.backend(&id.backend)?;
        Some(DrainAnswer {
            active_connections: b.stats.active.get(),
            connecting: b.stats.connecting.get(),
            admin: b.admin,
            backend: id.backend.to_string(),
            drain_deadline: self.deadline(&id.pool, &id.backend).map(rfc3339),
            persist_error: None,
            persisted: None,
            pool: id.pool.to_string(),
            quorum_check: None,
            warnings: Vec::new(),
        })
    }

    /// The deadline of a draining backend, if it has one, as the wall-clock time status shows.
    pub fn deadline(&self, pool: &str, backend: &str) -> Option<SystemTime> {
        lock(&self.drains)
            .get(&BackendId::new(pool, backend))
            .and_then(|e| e.deadline)
            .map(|d| d.wall)
    }

    /// Follow one draining backend until it is drained (or undrained / drained again).
    /// Drained means no connection open *and none being set up*: a connection counts against
    /// its backend from the moment it was selected. Once the deadline has passed, every poll
    /// closes what is still there, so a connect that was in progress then is closed as soon
    /// as it completes.
    async fn watch(self: Arc<Self>, id: BackendId, generation: u64) {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let mut warned_at_deadline = false;
        loop {
            let entry = match lock(&self.drains).get(&id) {
                Some(e) if e.generation == generation => *e,
                // Undrained, or a newer drain took over.
                _ => return,
            };
            let snapshot = self.routing.load_full();
            let Some(b) = snapshot.pools.get(pool).and_then(|p| p.backend(backend)) else {
                return;
            };
            match b.admin {
                AdminState::Active => return,
                AdminState::Drained => return,
                AdminState::Draining => {}
            }
            // The draining state was published before this read (see BackendSlot::claim).
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if b.stats.claims() <= 0 {
                self.drain_complete(&id);
                return;
            }
            let (open, connecting) = (b.stats.active.get(), b.stats.connecting.get());
            let now = tokio::time::Instant::now();
            if entry.deadline.is_some_and(|d| now >= d.at) {
                if !warned_at_deadline {
                    tracing::warn!(
                        pool,
                        backend,
                        open,
                        connecting,
                        "drain deadline reached: closing the remaining connections"
                    );
                    warned_at_deadline = true;
                }
                b.stats
                    .close_connections(self.routing.shutdown_token(), CloseCause::DrainDeadline);
            }
            let pause = match entry.deadline {
                Some(d) if d.at > now => (d.at - now).min(DRAINED_POLL),
                _ => DRAINED_POLL,
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// `draining → drained`, the `drain_complete` event and the state file.
    fn drain_complete(&self, id: &BackendId) {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let done = self.routing.update(pool, backend, |b| {
            (b.admin == AdminState::Draining).then(|| b.admin = AdminState::Drained)
        });
        if let Some((Some(()), transition)) = done {
            tracing::info!(pool = %pool, backend = %backend, "drain complete: no connection left");
            self.health.emit(
                id,
                Some(HookEvent::DrainComplete),
                &transition,
                Cause::Admin,
            );
            // A failed save is logged and counted by `save`.
            let _ = self.save();
        }
    }

    /// Write the admin state of every non-active backend to the state file, atomically.
    /// `None` without a state file; a failure is logged and counted here.
    fn save(&self) -> Option<Result<(), String>> {
        let path = self.state_file.as_ref()?;
        let snapshot = self.routing.load();
        let local = lock(&self.local).clone();
        let mut backends: Vec<PersistedBackend> = snapshot
            .pools
            .values()
            .flat_map(|p| {
                let local = &local;
                p.backends.iter().filter_map(move |b| {
                    let since = local.get(&BackendId::new(&p.name, &b.name));
                    (b.admin != AdminState::Active || since.is_some()).then(|| PersistedBackend {
                        pool: p.name.to_string(),
                        backend: b.name.to_string(),
                        admin: b.admin.as_str().to_owned(),
                        local_since_ms: since.map(|t| crate::fleet::drains::unix_ms(*t)),
                    })
                })
            })
            .collect();
        backends.sort_by(|a, b| (&a.pool, &a.backend).cmp(&(&b.pool, &b.backend)));
        let state = PersistedState {
            version: 1,
            backends,
        };
        match write_atomically(path, &state) {
            Ok(()) => Some(Ok(())),
            Err(e) => {
                self.metrics.errors_total.inc();
                tracing::error!(file = %path.display(), error = %e, "cannot write the state file; drain state will not survive a restart");
                Some(Err(format!(
                    "cannot write the state file {}: {e}; the change holds but will not survive a \
                     restart of warren",
                    path.display()
                )))
            }
        }
    }
}

/// Add the outcome of writing the state file (see [`Drainer::save`]) to an answer.
fn record_save(answer: &mut DrainAnswer, saved: Option<Result<(), String>>) {
    match saved {
        None => {}
        Some(Ok(())) => answer.persisted = Some(true),
        Some(Err(e)) => {
            answer.persisted = Some(false);
            answer.persist_error = Some(e);
        }
    }
}

/// The fleet's drain store `[fleet]` describes; `None` (logged) when its client cannot be made
/// (the config was checked at load: an endpoint it accepted the client refuses).
fn fleet_store(fleet: &crate::config::FleetConfig) -> Option<Arc<FleetDrains>> {
    match crate::fleet::client(fleet) {
        Ok(client) => Some(Arc::new(FleetDrains::new(
            client,
            &fleet.prefix,
            &fleet.instance,
        ))),
        Err(e) => {
            tracing::error!(error = %e, "fleet: cannot use the etcd endpoints; drains stay local");
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// RFC 3339 in UTC, seconds precision. Times outside 1970..=9999 (which humantime would panic
/// on; deadlines are bounded far inside) are clamped to that range.
pub fn rfc3339(t: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999);
    let t = t.clamp(SystemTime::UNIX_EPOCH, last);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drainer over a config of pool `p` with backends a and b (no probes), on the current
    /// (test) runtime.
    fn drainer() -> (Arc<Drainer>, Arc<Routing>, Config) {
        let config = crate::config::from_toml_offline(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n\
             [pool.p]\nmin_available = 0\n\
             [[pool.p.backend]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
             [[pool.p.backend]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n",
            std::path::Path::new("drain-test.toml"),
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        let routing = Arc::new(Routing::new(
            &config,
            crate::state::BackendMetrics::register(&registry),
        ));
        let health = Controller::new(
            &config,
            routing.clone(),
            None,
            crate::health::metrics::HealthMetrics::register(&registry),
            crate::hooks::HookMetrics::register(&registry),
            Duration::ZERO,
            Handle::current(),
        );
        let drainer = Drainer::new(
            &config,
            routing.clone(),
            health,
            StateFileMetrics::register(&registry),
            Handle::current(),
        );
        (drainer, routing, config)
    }

    fn stats_of(routing: &Routing, backend: &str) -> Arc<crate::state::BackendStats> {
        routing.load().pools["p"]
            .backend(backend)
            .unwrap()
            .stats
            .clone()
    }

    fn admin_of(routing: &Routing, backend: &str) -> AdminState {
        routing.load().pools["p"].backend(backend).unwrap().admin
    }

    /// Let the watcher run: paused time advances by `by` in small steps.
    async fn advance(by: Duration) {
        let step = Duration::from_millis(10);
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            tokio::time::advance(d).await;
            tokio::task::yield_now().await;
            left -= d;
        }
    }

    /// Deadlines run on the monotonic (here: paused) clock, whatever the wall clock does; a
    /// claim under way holds the drain open past the deadline and its token is cancelled; a
    /// claim that arrives after the deadline (a connect that raced it) is closed at the next
    /// poll; only with no claim left is the backend drained.
    #[tokio::test(start_paused = true)]
    async fn drain_deadlines_close_late_arrivals_and_wait_for_connects() {
        let (drainer, routing, _) = drainer();
        let id = BackendId::new("p", "a");
        let stats = stats_of(&routing, "a");
        let mut open = crate::state::BackendSlot::claim(&stats);
        open.established();
        let connecting = crate::state::BackendSlot::claim(&stats);
        drainer
            .drain(&id, Some(Duration::from_secs(10)), false, Scope::Fleet)
            .await
            .unwrap();
        advance(Duration::from_millis(9_900)).await;
        assert!(
            !open.close_token().unwrap().token().is_cancelled(),
            "not before the deadline"
        );
        advance(Duration::from_millis(200)).await;
        assert!(
            open.close_token().unwrap().token().is_cancelled(),
            "closed at the deadline"
        );
        assert!(
            connecting.close_token().unwrap().token().is_cancelled(),
            "connecting too"
        );
        drop(open);
        advance(Duration::from_millis(500)).await;
        assert_eq!(
            admin_of(&routing, "a"),
            AdminState::Draining,
            "a connect is under way"
        );
        // One that took the backend's fresh token after the deadline is closed at the next poll.
        let late = crate::state::BackendSlot::claim(&stats);
        assert!(!late.close_token().unwrap().token().is_cancelled());
        advance(DRAINED_POLL * 2).await;
        assert!(
            late.close_token().unwrap().token().is_cancelled(),
            "a late arrival is closed too"
        );
        drop((connecting, late));
        advance(DRAINED_POLL * 2).await;
        assert_eq!(admin_of(&routing, "a"), AdminState::Drained);
    }

    /// An undrain clears the deadline; so does a reload that removes the backend, so that a
    /// backend of the same name added back later starts with none.
    #[tokio::test(start_paused = true)]
    async fn undrain_and_removal_clear_the_deadline() {
        let (drainer, routing, config) = drainer();
        let id = BackendId::new("p", "b");
        let stats = stats_of(&routing, "b");
        let mut open = crate::state::BackendSlot::claim(&stats);
        open.established();
        drainer
            .drain(&id, Some(Duration::from_secs(5)), false, Scope::Fleet)
            .await
            .unwrap();
        assert!(drainer.deadline("p", "b").is_some());
        drainer.undrain(&id).unwrap();
        assert_eq!(drainer.deadline("p", "b"), None);
        advance(Duration::from_secs(6)).await;
        assert!(
            !open.close_token().unwrap().token().is_cancelled(),
            "an undrained backend keeps its connections"
        );

        drainer
            .drain(&id, Some(Duration::from_secs(5)), false, Scope::Fleet)
            .await
            .unwrap();
        let mut without_b = config.clone();
        without_b.pools[0].backends.retain(|b| b.name != "b");
        drainer.reload(&without_b);
        assert_eq!(drainer.deadline("p", "b"), None, "removed with its backend");
        drainer.reload(&config);
        assert_eq!(drainer.deadline("p", "b"), None, "added back without it");
    }

    #[test]
    fn rfc3339_never_panics() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
    }
}
