//! The operator's admin state of backends and the policy that guards it: drain (no new
//! connections; existing ones continue; with a deadline, those still open then are closed),
//! undrain, the `draining → drained` transition when the last connection closes, the state file
//! that makes drains survive a restart, and the two checks a drain must pass unless forced:
//! RabbitMQ's quorum check (asked on the backend's management endpoint, or through the pool's
//! `http` probe on the management API) and `min_available`. A refusal is a typed
//! [`DrainError`]; the admin API only maps it to a status code. It changes admin state only through [`Routing`] and emits events through the health
//! [`Controller`]; it never touches health, and never speaks HTTP to the operator. It owns
//! `state_file_errors_total` ([`StateFileMetrics`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::api::{DrainAnswer, QuorumAnswer};
use crate::config::{Config, HookEvent, ProxyProtocol};
use crate::health::probe::{self, QuorumCheck};
use crate::health::{Cause, Controller};
use crate::metrics;
use crate::state::{AdminState, BackendId, CloseCause, Routing};

/// How often a draining backend is checked for its last connection.
const DRAINED_POLL: Duration = Duration::from_millis(100);

/// The longest drain deadline, one (Julian) year: a longer one is refused with 400 (a drain may
/// also have no deadline). It keeps every deadline representable and printable (RFC 3339).
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(31_557_600);

/// Bounds of the time a drain's quorum check may take: at least 3 s (a probe timeout is often
/// tighter), at most 5 s (well inside `warren ctl`'s 10 s request timeout).
const QUORUM_TIMEOUT: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(5));

/// Why a drain or undrain was refused. The messages are the API's `error` texts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    #[error("no backend {} in pool {}", .0.backend, .0.pool)]
    NotFound(BackendId),
    #[error(
        "draining {} would leave {left} available primary backend(s) in pool {}, \
         fewer than min_available = {min_available}; drain it when another backend is back, \
         or force it (force: true in the API, --force in warren ctl)",
        .id.backend, .id.pool
    )]
    MinAvailable {
        id: BackendId,
        left: usize,
        min_available: usize,
    },
    /// A set drain whose backends together would leave a pool short.
    #[error(
        "draining {} together would leave {left} available primary backend(s) in pool {pool}, \
         fewer than min_available = {min_available}; drain fewer at once, or force it \
         (force: true in the API, --force in warren ctl)",
        .backends.join(", ")
    )]
    MinAvailableSet {
        pool: String,
        backends: Vec<String>,
        left: usize,
        min_available: usize,
    },
    /// A set with no backend in it.
    #[error("no backend to drain or undrain: the set is empty")]
    EmptySet,
    #[error(
        "deadline {deadline}: too long: at most {max} (omit the deadline to let connections \
         run until they close)",
        deadline = humantime::format_duration(*.deadline),
        max = humantime::format_duration(MAX_DRAIN_DEADLINE)
    )]
    DeadlineTooLong { deadline: Duration },
    /// RabbitMQ says stopping the node would cost these queues their quorum.
    #[error(
        "{id} is quorum-critical, RabbitMQ says: {reason} ({}); drain it once those queues have \
         enough replicas online, or force it (force: true in the API, --force in warren ctl)",
        .queues.join(", ")
    )]
    QuorumCritical {
        id: BackendId,
        reason: String,
        queues: Vec<String>,
    },
    /// RabbitMQ's replica lists say the set (with the backends already out) would cost these
    /// queues their quorum, though each node alone may be safe.
    #[error(
        "draining {}{} would cost quorum queues or streams their quorum: {reason} ({}); drain \
         fewer at once (undrain what is back first), or force it (force: true in the API, \
         --force in warren ctl)",
        .backends.join(", "),
        already_out(.out),
        .queues.join("; ")
    )]
    QuorumCriticalSet {
        backends: Vec<String>,
        out: Vec<String>,
        reason: String,
        queues: Vec<String>,
    },
    /// The set's quorum check got an answer that is not a queue list (401, a proxy's page).
    #[error(
        "the quorum check of {} as a set got an unexpected answer from RabbitMQ's management \
         API: {why}; fix the management credentials (the user needs the monitoring tag) or \
         force the drain (force: true in the API, --force in warren ctl)",
        .backends.join(", ")
    )]
    QuorumSetCheckFailed { backends: Vec<String>, why: String },
    /// The management API answered, but not as the check does (401, 404, an HTML page).
    #[error(
        "the quorum check of {id} got an unexpected answer from RabbitMQ's management API: \
         {why}; fix the pool's http probe (user, password) or force the drain (force: true in \
         the API, --force in warren ctl)"
    )]
    QuorumCheckFailed { id: BackendId, why: String },
}

/// How a set refusal names the backends already out: ` with X, Y already draining or drained`.
fn already_out(out: &[String]) -> String {
    if out.is_empty() {
        String::new()
    } else {
        format!(" with {} already draining or drained", out.join(", "))
    }
}

/// Why the state file stops warren from starting.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// It exists but cannot be read (permissions, a directory in its place, an I/O error):
    /// starting with every backend active could send traffic to a drained node.
    #[error(
        "state file {}: cannot read it: {source}; warren will not start without knowing which \
         backends were drained: fix its permissions (warren must read and write it) or remove it",
        .file.display()
    )]
    Unreadable {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `state_file_errors_total`: state file reads or writes that failed, registered once per
/// process. Cheap to clone.
#[derive(Clone)]
pub struct StateFileMetrics {
    errors_total: prometheus::IntCounter,
}

impl StateFileMetrics {
    /// Register `state_file_errors_total` into `registry` (once per process).
    pub fn register(registry: &prometheus::Registry) -> StateFileMetrics {
        StateFileMetrics {
            errors_total: metrics::counter(
                registry,
                "state_file_errors_total",
                "State file reads or writes that failed (a corrupt file is moved aside)",
            ),
        }
    }
}

/// The drains a state file held, read once at start (see [`load_state`]).
#[derive(Debug, Default)]
pub struct Restored {
    /// Every backend that was draining or drained.
    drained: Vec<BackendId>,
    /// A corrupt file was moved aside (counted in `state_file_errors_total` once metrics exist).
    moved_aside: bool,
}

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
        Arc::new(Drainer {
            routing,
            health,
            config: Mutex::new(Arc::new(config.clone())),
            state_file,
            drains: Mutex::new(HashMap::new()),
            runtime,
            metrics,
        })
    }

    /// Take a reloaded config (`min_available`, probes, backend addresses). A backend the
    /// new config removed loses its drain entry (deadline and watcher), so a backend of the
    /// same name added back later starts without it.
    pub fn reload(&self, config: &Config) {
        lock(&self.drains).retain(|id, _| {
            config
                .pool(&id.pool)
                .is_some_and(|p| p.backends.iter().any(|b| *b.name == *id.backend))
        });
        *lock(&self.config) = Arc::new(config.clone());
    }

    /// Stop new connections to a backend now; close the remaining ones after `deadline`.
    /// Unless `force`, RabbitMQ's quorum check and then `min_available` may refuse it; a
    /// quorum check nobody answered lets it go ahead with a warning in the answer.
    pub async fn drain(
        self: &Arc<Self>,
        id: &BackendId,
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<DrainAnswer, DrainError> {
        let (quorum, warning, set_warning) = if force {
            (QuorumAnswer::SkippedForce, None, None)
        } else {
            let (quorum, warning) = judge_quorum(id, self.ask_quorum(id).await)?;
            let set_warning = self.judge_set_quorum(std::slice::from_ref(id)).await?;
            (quorum, warning, set_warning)
        };
        let mut answer = self.drain_checked(id, deadline, force)?;
        answer.quorum_check = Some(quorum);
        answer.warnings.extend(warning);
        answer.warnings.extend(set_warning);
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
    ) -> Result<Vec<DrainAnswer>, DrainError> {
        let ids = self.checked_set(ids)?;
        if let Some(d) = deadline.filter(|d| *d > MAX_DRAIN_DEADLINE) {
            return Err(DrainError::DeadlineTooLong { deadline: d });
        }
        let mut judged = Vec::with_capacity(ids.len());
        for id in &ids {
            judged.push(if force {
                (QuorumAnswer::SkippedForce, None)
            } else {
                judge_quorum(id, self.ask_quorum(id).await)?
            });
        }
        let set_warning = if force {
            None
        } else {
            let warning = self.judge_set_quorum(&ids).await?;
            self.check_set_min_available(&ids)?;
            warning
        };
        let mut answers = Vec::with_capacity(ids.len());
        for (id, (quorum, warning)) in ids.iter().zip(judged) {
            // The set passed its checks as a whole; one by one, each would see the others gone.
            let mut answer = self.drain_started(id, deadline, force)?;
            answer.quorum_check = Some(quorum);
            answer.warnings.extend(warning);
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
    async fn ask_quorum(&self, id: &BackendId) -> QuorumCheck {
        if self.admin_state(id) != Some(AdminState::Active) {
            return QuorumCheck::NotApplicable;
        }
        match self.quorum_target(id) {
            Some((leaving, timeout)) => {
                probe::quorum_check(leaving.probe.as_ref(), &leaving.target, timeout).await
            }
            None => QuorumCheck::NotApplicable,
        }
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
    async fn judge_set_quorum(&self, ids: &[BackendId]) -> Result<Option<String>, DrainError> {
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
            .unwrap_or(QUORUM_TIMEOUT.1);
        let check = probe::quorum_check_set(asked.into_iter().map(|(l, _)| l).collect(), timeout);
        judge_set(&new, &out, check.await)
    }

    fn admin_state(&self, id: &BackendId) -> Option<AdminState> {
        let snapshot = self.routing.load();
        Some(snapshot.pools.get(&*id.pool)?.backend(&id.backend)?.admin)
    }

    /// The drain itself, once the quorum check let it through: `min_available` (unless
    /// `force`), then [`Drainer::drain_started`].
    fn drain_checked(
        self: &Arc<Self>,
        id: &BackendId,
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<DrainAnswer, DrainError> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let not_found = || DrainError::NotFound(id.clone());
        let snapshot = self.routing.load_full();
        let route = snapshot.pools.get(pool).ok_or_else(not_found)?;
        let target = route.backend(backend).ok_or_else(not_found)?;
        if target.admin == AdminState::Active && !force {
            self.check_min_available(id, route, target)?;
        }
        self.drain_started(id, deadline, force)
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
    fn drain_started(
        self: &Arc<Self>,
        id: &BackendId,
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<DrainAnswer, DrainError> {
        let (pool, backend) = (&*id.pool, &*id.backend);
        let not_found = || DrainError::NotFound(id.clone());
        let snapshot = self.routing.load_full();
        let target = snapshot
            .pools
            .get(pool)
            .and_then(|p| p.backend(backend))
            .ok_or_else(not_found)?;
        let deadline_at = match deadline {
            Some(d) if d > MAX_DRAIN_DEADLINE => {
                return Err(DrainError::DeadlineTooLong { deadline: d })
            }
            Some(d) => Some(Deadline::after(d).ok_or(DrainError::DeadlineTooLong { deadline: d })?),
            None => None,
        };
        let generation = self.set_deadline(id, deadline_at);
        let mut saved = None;
        if target.admin == AdminState::Active {
            if let Some((_, transition)) = self
                .routing
                .update(pool, backend, |b| b.admin = AdminState::Draining)
            {
                let deadline = deadline.map_or_else(
                    || "none".to_owned(),
                    |d| humantime::format_duration(d).to_string(),
                );
                tracing::info!(pool = %pool, backend = %backend, %deadline, force, "drain started");
                self.health
                    .emit(id, Some(HookEvent::DrainStarted), &transition, Cause::Admin);
            }
            saved = self.save();
        }
        self.runtime
            .spawn(self.clone().watch(id.clone(), generation));
        // A reload may have removed the backend since: not found, never a panic.
        let mut answer = self.status(id).ok_or_else(not_found)?;
        record_save(&mut answer, saved);
        Ok(answer)
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
            let (open, connecting) = (b.stats.active.get(), b.stats.connecting.get());
            if open <= 0 && connecting <= 0 {
                self.drain_complete(&id);
                return;
            }
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
        let mut backends: Vec<PersistedBackend> = snapshot
            .pools
            .values()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .filter(|b| b.admin != AdminState::Active)
                    .map(|b| PersistedBackend {
                        pool: p.name.to_string(),
                        backend: b.name.to_string(),
                        admin: b.admin.as_str().to_owned(),
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

impl Restored {
    /// Re-apply the drains of the state file at start-up, before any connection is accepted. A
    /// draining backend comes back drained: a new process has no connection to it.
    pub fn apply(self, routing: &Routing, metrics: &StateFileMetrics) {
        if self.moved_aside {
            metrics.errors_total.inc();
        }
        for id in self.drained {
            let (pool, backend) = (&*id.pool, &*id.backend);
            match routing.update(pool, backend, |r| r.admin = AdminState::Drained) {
                Some(_) => {
                    tracing::info!(pool = %pool, backend = %backend, "restored drained state from the state file")
                }
                None => tracing::warn!(
                    pool,
                    backend,
                    "state file names a backend that is not in the config; ignored"
                ),
            }
        }
    }
}

/// The quorum check's verdict on a drain of `id`: go ahead (with a warning when nobody
/// answered), or the refusal. Each refusal and the warning are logged.
fn judge_quorum(
    id: &BackendId,
    check: QuorumCheck,
) -> Result<(QuorumAnswer, Option<String>), DrainError> {
    let (pool, backend) = (&*id.pool, &*id.backend);
    match check {
        QuorumCheck::NotApplicable => Ok((QuorumAnswer::NotApplicable, None)),
        QuorumCheck::Safe => Ok((QuorumAnswer::Safe, None)),
        QuorumCheck::Unknown(why) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "quorum check not answered; draining anyway"
            );
            let warning =
                format!("the quorum check of {backend} was not answered ({why}); drained anyway");
            Ok((QuorumAnswer::Unknown, Some(warning)))
        }
        QuorumCheck::Critical { reason, queues } => {
            tracing::warn!(pool = %pool, backend = %backend, %reason, queues = %queues.join(", "), "drain refused: quorum-critical");
            Err(DrainError::QuorumCritical {
                id: id.clone(),
                reason,
                queues,
            })
        }
        QuorumCheck::Unexpected(why) => {
            tracing::warn!(
                pool,
                backend,
                why,
                "drain refused: the quorum check got an unexpected answer"
            );
            Err(DrainError::QuorumCheckFailed {
                id: id.clone(),
                why,
            })
        }
    }
}

/// The set quorum check's verdict on draining `new` while `out` are already draining or
/// drained: go ahead (with a warning when nobody answered), or the refusal, logged.
fn judge_set(
    new: &[&BackendId],
    out: &[BackendId],
    check: QuorumCheck,
) -> Result<Option<String>, DrainError> {
    // A node in several pools is one name.
    let names = |ids: &mut dyn Iterator<Item = &BackendId>| {
        let mut names: Vec<String> = Vec::new();
        for id in ids {
            if !names.iter().any(|n| *n == *id.backend) {
                names.push(id.backend.to_string());
            }
        }
        names
    };
    let backends = names(&mut new.iter().copied());
    let out = names(&mut out.iter());
    match check {
        QuorumCheck::NotApplicable => Ok(None),
        QuorumCheck::Safe => {
            tracing::info!(backends = %backends.join(", "), out = %out.join(", "), "quorum check of the set: safe");
            Ok(None)
        }
        QuorumCheck::Unknown(why) => {
            tracing::warn!(backends = %backends.join(", "), why, "quorum check of the set not answered; draining anyway");
            Ok(Some(format!(
                "the quorum check of {} with the backends already out was not answered ({why}); \
                 drained anyway",
                backends.join(", ")
            )))
        }
        QuorumCheck::Critical { reason, queues } => {
            tracing::warn!(backends = %backends.join(", "), out = %out.join(", "), %reason, queues = %queues.join(", "), "drain refused: the set is quorum-critical");
            Err(DrainError::QuorumCriticalSet {
                backends,
                out,
                reason,
                queues,
            })
        }
        QuorumCheck::Unexpected(why) => {
            tracing::warn!(backends = %backends.join(", "), why, "drain refused: the set's quorum check got an unexpected answer");
            Err(DrainError::QuorumSetCheckFailed { backends, why })
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read the state file at start: the drains it holds. A missing file is a first start; a
/// corrupt one is moved aside (logged; counted once metrics exist) and every backend starts
/// active; one that cannot be read stops the start ([`StateFileError::Unreadable`]). Temp files
/// a killed warren left next to it are removed.
pub fn load_state(config: &Config) -> Result<Restored, StateFileError> {
    let Some(path) = config.admin.as_ref().and_then(|a| a.state_file.as_deref()) else {
        return Ok(Restored::default());
    };
    remove_stale_temp_files(path);
    let state = match read_state(path) {
        Ok(Some(state)) => state,
        Ok(None) => return Ok(Restored::default()),
        Err(ReadError::Unreadable(source)) => {
            return Err(StateFileError::Unreadable {
                file: path.to_owned(),
                source,
            })
        }
        Err(ReadError::Corrupt(e)) => {
            let aside = path.with_extension(format!(
                "corrupt-{}",
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            let moved = std::fs::rename(path, &aside);
            tracing::error!(
                file = %path.display(),
                error = %e,
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "state file corrupt: starting with every backend active; the bad file was moved aside"
            );
            return Ok(Restored {
                drained: Vec::new(),
                moved_aside: true,
            });
        }
    };
    let drained = state
        .backends
        .into_iter()
        .filter(|b| b.admin != "active")
        .map(|b| BackendId::new(&b.pool, &b.backend))
        .collect();
    Ok(Restored {
        drained,
        moved_aside: false,
    })
}

/// Whether the state file can be read, for `warren check`: an unreadable file is an error
/// (`run` would refuse to start); a missing or corrupt one is not (`run` starts).
pub fn check_state_file(path: &Path) -> Result<(), StateFileError> {
    match read_state(path) {
        Err(ReadError::Unreadable(source)) => Err(StateFileError::Unreadable {
            file: path.to_owned(),
            source,
        }),
        _ => Ok(()),
    }
}

/// The state file's content.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PersistedState {
    version: u32,
    backends: Vec<PersistedBackend>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PersistedBackend {
    pool: String,
    backend: String,
    admin: String,
}

/// Why the state file could not be used.
#[derive(Debug)]
enum ReadError {
    /// Reading failed (permissions, a directory, I/O): its content is unknown.
    Unreadable(std::io::Error),
    /// Read, but not a state file warren wrote.
    Corrupt(String),
}

/// The largest state file read; it holds one short line per drained backend.
const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// Read the state file: `Ok(None)` when it does not exist (a normal first start).
fn read_state(path: &Path) -> Result<Option<PersistedState>, ReadError> {
    use std::io::Read;
    let mut text = Vec::new();
    match std::fs::File::open(path).and_then(|f| f.take(MAX_STATE_BYTES + 1).read_to_end(&mut text))
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Unreadable(e)),
    }
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(ReadError::Corrupt(format!(
            "larger than {MAX_STATE_BYTES} bytes"
        )));
    }
    let corrupt = ReadError::Corrupt;
    let state: PersistedState =
        serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if state.version != 1 {
        return Err(corrupt(format!(
            "unknown state file version {}",
            state.version
        )));
    }
    for b in &state.backends {
        if !matches!(b.admin.as_str(), "active" | "draining" | "drained") {
            return Err(corrupt(format!(
                "unknown admin state {:?} for {}/{}",
                b.admin, b.pool, b.backend
            )));
        }
    }
    Ok(Some(state))
}

/// The prefix of the state file's temp files: `.NAME.tmp-`.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    format!(".{name}.tmp-")
}

/// Remove temp files a killed warren left next to the state file (never directories).
fn remove_stale_temp_files(path: &Path) {
    let dir = state_dir(path);
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix));
        // `file_type` does not follow symlinks: a planted link is removed, not its target.
        let is_dir = entry.file_type().map_or(true, |t| t.is_dir());
        if stale && !is_dir {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a stale state temp file")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale state temp file")
                }
            }
        }
    }
}

/// The directory the state file (and its temp files) live in.
fn state_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Create `path` for writing only if nothing (not even a dangling symlink) is there yet:
/// `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600.
fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Create a new temp file next to the state file: an unpredictable name, created exclusively
/// (`O_EXCL`, and `O_NOFOLLOW`), so a file or symlink planted there is never written through.
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use rand::Rng;
    let dir = state_dir(path);
    let prefix = temp_prefix(path);
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(
            "{prefix}{}-{:016x}",
            std::process::id(),
            rand::thread_rng().gen::<u64>()
        ));
        match open_new(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temp file name was free")))
}

/// Temp file in the same directory, fsync, rename over, fsync the directory: a crash leaves
/// either the old or the new file, never a torn one.
fn write_atomically(path: &Path, state: &PersistedState) -> std::io::Result<()> {
    use std::io::Write;
    let (tmp, mut file) = create_temp(path)?;
    let written = (|| {
        file.write_all(&serde_json::to_vec_pretty(state).expect("plain data serializes"))?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Ours (created exclusively above), so removing it cannot touch anything else.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    std::fs::File::open(state_dir(path))?.sync_all()?;
    Ok(())
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
            Path::new("drain-test.toml"),
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
            .drain(&id, Some(Duration::from_secs(10)), false)
            .await
            .unwrap();
        advance(Duration::from_millis(9_900)).await;
        assert!(
            !open.close_token().token().is_cancelled(),
            "not before the deadline"
        );
        advance(Duration::from_millis(200)).await;
        assert!(
            open.close_token().token().is_cancelled(),
            "closed at the deadline"
        );
        assert!(
            connecting.close_token().token().is_cancelled(),
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
        assert!(!late.close_token().token().is_cancelled());
        advance(DRAINED_POLL * 2).await;
        assert!(
            late.close_token().token().is_cancelled(),
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
            .drain(&id, Some(Duration::from_secs(5)), false)
            .await
            .unwrap();
        assert!(drainer.deadline("p", "b").is_some());
        drainer.undrain(&id).unwrap();
        assert_eq!(drainer.deadline("p", "b"), None);
        advance(Duration::from_secs(6)).await;
        assert!(
            !open.close_token().token().is_cancelled(),
            "an undrained backend keeps its connections"
        );

        drainer
            .drain(&id, Some(Duration::from_secs(5)), false)
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
    fn state_file_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("warren-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert!(
            matches!(read_state(&path), Ok(None)),
            "a missing file is normal"
        );
        let state = PersistedState {
            version: 1,
            backends: vec![PersistedBackend {
                pool: "rabbitmq".into(),
                backend: "rabbit-a".into(),
                admin: "drained".into(),
            }],
        };
        write_atomically(&path, &state).unwrap();
        assert!(matches!(read_state(&path), Ok(Some(s)) if s == state));
        for garbage in [
            &b"{"[..],
            b"[]",
            b"{\"version\":2,\"backends\":[]}",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, garbage).unwrap();
            assert!(
                matches!(read_state(&path), Err(ReadError::Corrupt(_))),
                "{garbage:?} must be rejected as corrupt"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unreadable_state_file_is_not_called_corrupt() {
        let dir = std::env::temp_dir().join(format!("warren-drain-eisdir-{}", std::process::id()));
        let path = dir.join("state.json");
        // A directory in the file's place cannot be read, even by root.
        std::fs::create_dir_all(&path).unwrap();
        assert!(matches!(read_state(&path), Err(ReadError::Unreadable(_))));
        let e = check_state_file(&path).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn temp_files_are_exclusive_never_follow_a_symlink_and_stale_ones_are_removed() {
        let dir = std::env::temp_dir().join(format!("warren-drain-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        // What a kill -9 leaves, and a symlink planted under the old predictable name.
        let stale = dir.join(format!(".state.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &stale).unwrap();
        std::fs::write(dir.join(".state.json.tmp-1-00ff"), "half").unwrap();
        let state = PersistedState {
            version: 1,
            backends: Vec::new(),
        };
        write_atomically(&path, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        // A symlink (dangling or not) or a file already at the temp path is never opened.
        let planted = dir.join(".state.json.tmp-planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let dangling = dir.join(".state.json.tmp-dangling");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        for path in [&planted, &dangling, &victim] {
            let e = open_new(path).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AlreadyExists,
                "{}",
                path.display()
            );
        }
        assert!(
            !dir.join("nowhere").exists(),
            "a dangling link's target is not created"
        );
        let (tmp, _file) = create_temp(&path).unwrap();
        let (tmp2, _file2) = create_temp(&path).unwrap();
        assert_ne!(tmp, tmp2, "unpredictable, distinct names");
        remove_stale_temp_files(&path);
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "stale temp files left: {left:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(matches!(read_state(&path), Ok(Some(s)) if s == state));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The quorum check's verdicts, with the API's texts word for word (tests/cluster.rs and
    /// `warren ctl upgrade` read them).
    #[test]
    fn the_quorum_check_refuses_or_lets_through() {
        let id = BackendId::new("rabbitmq", "rabbit-a");
        type Case = (
            QuorumCheck,
            Result<(QuorumAnswer, Option<&'static str>), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (QuorumCheck::NotApplicable, Ok((QuorumAnswer::NotApplicable, None))),
            (QuorumCheck::Safe, Ok((QuorumAnswer::Safe, None))),
            (
                QuorumCheck::Unknown("connection refused".into()),
                Ok((
                    QuorumAnswer::Unknown,
                    Some("the quorum check of rabbit-a was not answered (connection refused); drained anyway"),
                )),
            ),
            (
                QuorumCheck::Critical {
                    reason: "There are quorum queues that would lose their quorum".into(),
                    queues: vec!["queue 'a' in vhost '/'".into(), "b".into()],
                },
                Err("rabbit-a (pool rabbitmq) is quorum-critical, RabbitMQ says: There are quorum \
                     queues that would lose their quorum (queue 'a' in vhost '/', b); drain it once \
                     those queues have enough replicas online, or force it (force: true in the \
                     API, --force in warren ctl)"),
            ),
            (
                QuorumCheck::Unexpected("HTTP 401: nope".into()),
                Err("the quorum check of rabbit-a (pool rabbitmq) got an unexpected answer from \
                     RabbitMQ's management API: HTTP 401: nope; fix the pool's http probe (user, \
                     password) or force the drain (force: true in the API, --force in warren ctl)"),
            ),
        ];
        for (check, want) in cases {
            let got = judge_quorum(&id, check.clone());
            match (got, want) {
                (Ok((answer, warning)), Ok((want_answer, want_warning))) => {
                    assert_eq!(answer, want_answer, "{check:?}");
                    assert_eq!(warning.as_deref(), want_warning, "{check:?}");
                }
                (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "{check:?}"),
                (got, _) => panic!("{check:?}: {got:?}"),
            }
        }
    }

    /// The set check's verdicts: the refusal names the set, the backends already out and what
    /// each queue would keep; a node in two pools is named once.
    #[test]
    fn the_set_quorum_check_refuses_or_lets_through() {
        let a = BackendId::new("rabbitmq", "rabbit-a");
        let a_admin = BackendId::new("management", "rabbit-a");
        let b = BackendId::new("rabbitmq", "rabbit-b");
        let c = BackendId::new("rabbitmq", "rabbit-c");
        let critical = || QuorumCheck::Critical {
            reason: "stopping rabbit@a, rabbit@b together would leave quorum queues or streams \
                     without a majority of their replicas online"
                .into(),
            queues: vec!["queue 'o' in vhost '/' would keep 1 of 3 replicas online".into()],
        };
        assert_eq!(judge_set(&[&a, &b], &[], QuorumCheck::Safe), Ok(None));
        assert_eq!(
            judge_set(&[&a, &b], &[], QuorumCheck::NotApplicable),
            Ok(None)
        );
        assert_eq!(
            judge_set(
                &[&a, &a_admin],
                &[],
                QuorumCheck::Unknown("timed out".into())
            ),
            Ok(Some(
                "the quorum check of rabbit-a with the backends already out was not answered \
                 (timed out); drained anyway"
                    .into()
            ))
        );
        assert_eq!(
            judge_set(&[&a, &a_admin, &b], &[], critical())
                .unwrap_err()
                .to_string(),
            "draining rabbit-a, rabbit-b would cost quorum queues or streams their quorum: \
             stopping rabbit@a, rabbit@b together would leave quorum queues or streams without \
             a majority of their replicas online (queue 'o' in vhost '/' would keep 1 of 3 \
             replicas online); drain fewer at once (undrain what is back first), or force it \
             (force: true in the API, --force in warren ctl)"
        );
        assert!(judge_set(&[&a], std::slice::from_ref(&c), critical())
            .unwrap_err()
            .to_string()
            .starts_with("draining rabbit-a with rabbit-c already draining or drained would"));
        assert_eq!(
            judge_set(
                &[&a, &b],
                &[],
                QuorumCheck::Unexpected("HTTP 401: no".into())
            ),
            Err(DrainError::QuorumSetCheckFailed {
                backends: vec!["rabbit-a".into(), "rabbit-b".into()],
                why: "HTTP 401: no".into()
            })
        );
    }

    #[test]
    fn refusals_name_the_backend_as_before() {
        let id = BackendId::new("p", "b");
        assert_eq!(
            DrainError::NotFound(id.clone()).to_string(),
            "no backend b in pool p"
        );
        assert_eq!(
            DrainError::MinAvailable {
                id,
                left: 0,
                min_available: 1
            }
            .to_string(),
            "draining b would leave 0 available primary backend(s) in pool p, fewer than \
             min_available = 1; drain it when another backend is back, or force it (force: true \
             in the API, --force in warren ctl)"
        );
    }

    #[test]
    fn rfc3339_never_panics() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
    }
}
