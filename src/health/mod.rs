//! Backend health: active probes on a schedule, passive checks from the data path, the rise/fall
//! hysteresis that turns results into `up`/`down`, and the events (backend and pool) that a change
//! causes for hooks. The [`Controller`] is the only writer of health into [`Routing`]; the data
//! path reports connect failures to it through the [`Observer`] trait and never waits on it.
//!
//! Rules:
//! - `unknown → up` on the first successful probe, `→ down` after `fall` consecutive failures;
//!   `down → up` after `rise` consecutive successes; `up → down` after `fall` failures.
//! - A failed connect from the data path counts as a failed check. A pool without a probe
//!   follows NGINX's passive default instead: one failed connect takes the backend out for a
//!   hold-down period (10 s), after which it is `unknown` (and tried) again.
//! - Health changes steer new connections; existing ones are left alone, except that in a pool
//!   with `on_down = "close"` a backend marked down has its connections closed at once.
//!
//! Probes and timers run on the control runtime, never on the data plane's workers. The probe
//! metric families are this module's ([`metrics`]); a reload that takes a backend away removes
//! its probe series.

pub mod metrics;
pub mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HealthConfig, HookEvent, OnDown, ProxyProtocol};
use crate::hooks::{Event, HookMetrics, Hooks};
use crate::net::{ConnectFailure, Observer};
use crate::state::{AdminState, BackendId, CloseCause, Health, PoolRoute, Routing, Transition};
use metrics::HealthMetrics;

/// The rise/fall hysteresis of one backend: pure, no clock.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    state: Health,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    /// A machine in `Unknown` with these thresholds (each at least 1).
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    /// The current verdict.
    pub fn state(&self) -> Health {
        self.state
    }

    /// Successes since the last failure.
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Record one check; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        let next = if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            match self.state {
                Health::Up => None,
                Health::Unknown => Some(Health::Up),
                Health::Down => (self.successes >= self.rise).then_some(Health::Up),
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            match self.state {
                Health::Down => None,
                Health::Up | Health::Unknown => {
                    (self.failures >= self.fall).then_some(Health::Down)
                }
            }
        };
        if let Some(state) = next {
            self.state = state;
        }
        next
    }

    /// New thresholds from a reloaded config; the current state and streaks stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Put the machine in `state` (a passive hold-down ending, for example).
    pub fn reset(&mut self, state: Health) {
        *self = Hysteresis {
            state,
            ..Hysteresis::new(self.rise, self.fall)
        };
    }
}

/// The counts of a pool that pool events are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    pub primaries: usize,
    pub backups: usize,
    pub available_primaries: usize,
    pub available_backups: usize,
}

impl PoolCounts {
    /// Count a pool of a snapshot.
    pub fn of(pool: &PoolRoute) -> PoolCounts {
        let mut c = PoolCounts::default();
        for b in &pool.backends {
            match (b.backup, b.available()) {
                (false, true) => {
                    c.primaries += 1;
                    c.available_primaries += 1
                }
                (false, false) => c.primaries += 1,
                (true, true) => {
                    c.backups += 1;
                    c.available_backups += 1
                }
                (true, false) => c.backups += 1,
            }
        }
        c
    }

    fn available(&self) -> usize {
        self.available_primaries + self.available_backups
    }
}

/// What changed a backend's availability: its health (probes, failed connects), or an
/// operator's drain or undrain (planned work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Health,
    Admin,
}

/// Pool-level events caused by going from `before` to `after` (pure).
///
/// - `pool_degraded`: available primaries dropped and some, but not all, are left;
/// - `pool_down`: nothing is available any more;
/// - `pool_failover`: no primary is available and backups now carry the pool;
/// - `pool_failback`: a primary is available again in a pool that has backups.
pub fn pool_events(before: PoolCounts, after: PoolCounts) -> Vec<HookEvent> {
    let mut events = Vec::new();
    let primaries_dropped = after.available_primaries < before.available_primaries;
    if primaries_dropped && after.available_primaries > 0 {
        events.push(HookEvent::PoolDegraded);
    }
    if after.available() == 0 && before.available() > 0 {
        events.push(HookEvent::PoolDown);
    }
    let backups_carry = |c: PoolCounts| c.available_primaries == 0 && c.available_backups > 0;
    if backups_carry(after) && !backups_carry(before) {
        events.push(HookEvent::PoolFailover);
    }
    if after.backups > 0 && before.available_primaries == 0 && after.available_primaries > 0 {
        events.push(HookEvent::PoolFailback);
    }
    events
}

/// What a failed connect from the data path is called where it changes a backend's health.
/// What the cluster said of a backend whose probes are refused (RabbitMQ maintenance mode?),
/// kept while they stay refused for the same reason: asked at the first such probe and again
/// every [`HINT_REFRESH`] probes, not at each one (a stopped node would otherwise cost up to
/// three management requests per interval for as long as it is down).
#[derive(Default)]
struct MaintenanceHint {
    /// The probe's reason it was asked about, and the answer.
    cached: Option<(String, Option<String>)>,
    /// Probes answered from `cached` since it was asked.
    reused: u32,
}

/// How many refused probes in a row reuse one answer of the cluster before it is asked again.
const HINT_REFRESH: u32 = 10;

impl MaintenanceHint {
    /// The reason to show for a refused probe whose own reason is `reason`: the cluster's
    /// explanation, asked of it or remembered.
    async fn explain(
        &mut self,
        health: &HealthConfig,
        target: &probe::ProbeTarget,
        peers: &[probe::ProbeTarget],
        reason: &str,
    ) -> Option<String> {
        if let Some((asked, why)) = &self.cached {
            if asked == reason && self.reused < HINT_REFRESH {
                self.reused += 1;
                return why.clone();
            }
        }
        let why =
            probe::maintenance_reason(Some(&health.probe), target, peers, reason, health.timeout)
                .await;
        self.cached = Some((reason.to_owned(), why.clone()));
        self.reused = 0;
        why
    }
}

fn passive_reason(failure: ConnectFailure) -> String {
    format!("failed connect from the data path ({})", failure.as_str())
}

/// The last probe of a backend, for the status API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    pub up: bool,
    pub reason: String,
    pub duration: Duration,
    pub at: SystemTime,
}

/// What the controller knows about one backend.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub health: Health,
    pub last_probe: Option<ProbeRecord>,
    /// When `health` last changed (start-up counts as a change to `unknown`).
    pub changed_at: SystemTime,
    /// The check that made the last change: a probe's reason, or a failed connect from the
    /// data path (which the last probe may not show). `None` before the first change.
    pub changed_reason: Option<String>,
    /// Probes run since warren started (passive failures not included).
    pub probes_run: u64,
    /// Checks passed since the last failure (a probe or a failed connect).
    pub probes_ok_in_a_row: u32,
}

struct Tracked {
    machine: Hysteresis,
    /// The address the verdict is about: a reload that moves the backend starts it afresh.
    addr: SocketAddr,
    last_probe: Option<ProbeRecord>,
    changed_at: SystemTime,
    changed_reason: Option<String>,
    probes_run: u64,
    /// Bumped on every passive failure so only the newest hold-down timer ends a hold-down.
    hold_down_generation: u64,
}

impl Tracked {
    /// A backend with no verdict yet (`unknown`), as at start.
    fn new(rise: u32, fall: u32, addr: SocketAddr, hold_down_generation: u64) -> Tracked {
        Tracked {
            machine: Hysteresis::new(rise, fall),
            addr,
            last_probe: None,
            changed_at: SystemTime::now(),
            changed_reason: None,
            probes_run: 0,
            hold_down_generation,
        }
    }
}

/// Owner of every backend's health.
pub struct Controller {
    routing: Arc<Routing>,
    /// Replaced on reload; `emit` clones it out under the lock.
    hooks: Mutex<Option<Hooks>>,
    /// Hook sets a reload replaced, finishing their run in progress; awaited by
    /// [`Controller::shutdown_hooks`] so the process never exits with a hook still running.
    retired_hooks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    metrics: HealthMetrics,
    /// What hooks a reload starts (when there were none before) count into.
    hook_metrics: HookMetrics,
    /// The probe of each pool (`None`: passive only); replaced on reload.
    probes: Mutex<HashMap<Arc<str>, Option<HealthConfig>>>,
    /// Cancels the current generation of probe tasks (a reload starts a new one).
    probe_tasks: Mutex<CancellationToken>,
    tracked: Mutex<HashMap<BackendId, Tracked>>,
    hold_down: Duration,
    /// The control runtime: hold-down timers and probes run here, off the data plane.
    runtime: Handle,
}

impl Controller {
    /// A controller for `config`'s pools; `runtime` is where its timers and probes run.
    pub fn new(
        config: &Config,
        routing: Arc<Routing>,
        hooks: Option<Hooks>,
        metrics: HealthMetrics,
        hook_metrics: HookMetrics,
        hold_down: Duration,
        runtime: Handle,
    ) -> Arc<Controller> {
        let mut tracked = HashMap::new();
        let mut probes = HashMap::new();
        for pool in &config.pools {
            let name: Arc<str> = Arc::from(pool.name.as_str());
            let (rise, fall) = pool.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
            for b in &pool.backends {
                tracked.insert(
                    BackendId {
                        pool: name.clone(),
                        backend: Arc::from(b.name.as_str()),
                    },
                    Tracked::new(rise, fall, b.addr, 0),
                );
            }
            probes.insert(name, pool.health.clone());
        }
        Arc::new(Controller {
            routing,
            hooks: Mutex::new(hooks),
            retired_hooks: Mutex::new(Vec::new()),
            metrics,
            hook_metrics,
            probes: Mutex::new(probes),
            probe_tasks: Mutex::new(CancellationToken::new()),
            tracked: Mutex::new(tracked),
            hold_down,
            runtime,
        })
    }

    /// Continue from the verdict an upgraded-from warren had on a backend (at start, before
    /// serving): its health, since when and why. No event: nothing changed. Probes go on
    /// from there.
    pub fn carry_over(
        &self,
        id: &BackendId,
        health: Health,
        since: SystemTime,
        why: Option<String>,
    ) {
        {
            let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = tracked.get_mut(id) else {
                return;
            };
            t.machine.reset(health);
            t.changed_at = since;
            t.changed_reason = why;
        }
        self.routing.set_health(&id.pool, &id.backend, health);
    }

    /// What the controller knows about a backend.
    pub fn backend(&self, pool: &str, backend: &str) -> Option<BackendHealth> {
        let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let t = tracked.get(&BackendId::new(pool, backend))?;
        Some(BackendHealth {
            health: t.machine.state(),
            last_probe: t.last_probe.clone(),
            changed_at: t.changed_at,
            changed_reason: t.changed_reason.clone(),
            probes_run: t.probes_run,
            probes_ok_in_a_row: t.machine.successes(),
        })
    }

    /// Take a reloaded config: track new backends (existing ones keep their state), adopt new
    /// thresholds and probes, restart the probe tasks and, when they changed, the hooks.
    /// `stop` is the control plane's stop token.
    ///
    /// A backend starts afresh (`unknown`, probed again) when its address changed: the old
    /// verdict was about another host. A `down` backend of a pool that lost its `[health]`
    /// section becomes `unknown` too, as at start: nothing would ever probe it up again, and
    /// the passive check takes over.
    pub fn reload(self: &Arc<Self>, config: &Config, stop: &CancellationToken) {
        // The running probes end first: one that finishes while the entries below are reset
        // then records nothing (see `record`).
        self.probe_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
        {
            let probed_before: Vec<Arc<str>> = {
                let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
                probes
                    .iter()
                    .filter(|(_, probe)| probe.is_some())
                    .map(|(name, _)| name.clone())
                    .collect()
            };
            let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            let mut keep = HashMap::new();
            let mut reset = Vec::new();
            for pool in &config.pools {
                let name: Arc<str> = Arc::from(pool.name.as_str());
                let lost_probe = pool.health.is_none() && probed_before.contains(&name);
                let (rise, fall) = pool.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
                for b in &pool.backends {
                    let key = BackendId {
                        pool: name.clone(),
                        backend: Arc::from(b.name.as_str()),
                    };
                    let t = match tracked.remove(&key) {
                        None => Tracked::new(rise, fall, b.addr, 0),
                        Some(old) if old.addr != b.addr => {
                            tracing::info!(pool = %key.pool, backend = %key.backend, old = %old.addr, new = %b.addr,
                                "backend address changed: health starts again as unknown");
                            reset.push(key.clone());
                            Tracked::new(rise, fall, b.addr, old.hold_down_generation + 1)
                        }
                        Some(old) if lost_probe && old.machine.state() == Health::Down => {
                            tracing::info!(pool = %key.pool, backend = %key.backend,
                                "pool has no probe any more: a down backend becomes unknown and takes connections again");
                            reset.push(key.clone());
                            Tracked::new(rise, fall, b.addr, old.hold_down_generation + 1)
                        }
                        Some(mut t) => {
                            t.machine.set_thresholds(rise, fall);
                            t
                        }
                    };
                    keep.insert(key, t);
                }
            }
            // What is left was taken away by the reload: its probe series go with it.
            for gone in tracked.keys() {
                self.metrics.remove_backend(gone);
            }
            *tracked = keep;
            for key in reset {
                if let Some(t) = tracked.get(&key) {
                    self.publish(&key, t, false);
                }
            }
        }
        // Unchanged hooks keep running with their queue; changed ones take theirs over.
        let mut current = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        let (next, retired) = match current.as_ref() {
            Some(hooks) => {
                let (next, retired) = hooks.reload(&config.hooks);
                (next, Some(retired))
            }
            None => (Hooks::start(&config.hooks, self.hook_metrics.clone()), None),
        };
        *current = Some(next);
        drop(current);
        if let Some(retired) = retired {
            let mut handles = self.retired_hooks.lock().unwrap_or_else(|e| e.into_inner());
            handles.retain(|h| !h.is_finished());
            handles.push(self.runtime.spawn(retired));
        }
        self.spawn_probes(config, stop);
    }

    /// On shutdown: stop the hooks in force and wait for those a reload retired, each after its
    /// run in progress finishes or is killed at its timeout.
    pub async fn shutdown_hooks(&self) {
        let current = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(hooks) = current {
            hooks.shutdown().await;
        }
        let retired =
            std::mem::take(&mut *self.retired_hooks.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in retired {
            let _ = handle.await;
        }
    }

    /// Stop probing: after an upgrade of warren the new process probes, and its verdicts are
    /// the ones that run hooks (hooks already running finish).
    pub fn retire(&self) {
        self.probe_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
    }

    /// Start one probe task per backend of every pool with a `[health]` section, on the
    /// control runtime, until `stop` is cancelled or the next reload.
    pub fn spawn_probes(self: &Arc<Self>, config: &Config, stop: &CancellationToken) {
        let generation = stop.child_token();
        let previous = std::mem::replace(
            &mut *self.probe_tasks.lock().unwrap_or_else(|e| e.into_inner()),
            generation.clone(),
        );
        previous.cancel();
        let stop = &generation;
        for pool in &config.pools {
            let Some(health) = pool.health.clone() else {
                continue;
            };
            // Probes speak PROXY protocol when the traffic to this pool does.
            let proxy_protocol = config
                .listeners
                .iter()
                .filter(|l| l.pools().any(|p| p == pool.name))
                .map(|l| l.proxy_protocol)
                .find(|p| *p != ProxyProtocol::Off)
                .unwrap_or(ProxyProtocol::Off);
            // Every backend of the pool, asked about one that fails (RabbitMQ maintenance?).
            let peers: Arc<[probe::ProbeTarget]> = pool
                .backends
                .iter()
                .map(|b| probe::ProbeTarget::for_backend(b, proxy_protocol))
                .collect();
            for (b, target) in pool.backends.iter().zip(peers.iter()) {
                let key = BackendId::new(&pool.name, &b.name);
                self.runtime.spawn(self.clone().probe_loop(
                    key,
                    target.clone(),
                    peers.clone(),
                    health.clone(),
                    stop.clone(),
                ));
            }
        }
    }

    async fn probe_loop(
        self: Arc<Self>,
        key: BackendId,
        target: probe::ProbeTarget,
        peers: Arc<[probe::ProbeTarget]>,
        health: HealthConfig,
        stop: CancellationToken,
    ) {
        let metrics = self.metrics.probe(&key);
        // Spread the first probes of many backends over half an interval.
        let first = health
            .interval
            .mul_f64(rand::thread_rng().gen_range(0.0..0.5));
        let mut next = Instant::now() + first;
        let mut hint = MaintenanceHint::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            // A reload cancels this generation mid-probe too: a verdict about an address the
            // reload moved away from must not land on the backend's new entry.
            let mut outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = probe::run(&health.probe, &target, health.timeout) => outcome,
            };
            let duration = started.elapsed();
            // Only a refused connect looks like maintenance (listeners suspended), and then
            // the node's own API refuses at once too: a node that hangs (a timeout) is not
            // asked, so the lookup never holds back the verdict of a probe that timed out.
            if outcome.up {
                hint = MaintenanceHint::default();
            } else if !outcome.local && outcome.refused {
                // Not part of the probe's duration: the cluster's view of why it failed.
                let why = hint.explain(&health, &target, &peers, &outcome.reason);
                tokio::select! {
                    () = stop.cancelled() => return,
                    why = why => if let Some(why) = why { outcome.reason = why },
                }
            }
            // ±10% jitter keeps probes of many warren instances from marching in step.
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            if outcome.local {
                // Out of descriptors or ports here (e.g. at RLIMIT_NOFILE): says nothing about
                // the backend, so its health stays as it is.
                tracing::warn!(pool = %key.pool, backend = %key.backend, reason = %outcome.reason,
                    "probe could not run for lack of local resources; not counted against the backend");
                next = started + health.interval.mul_f64(jitter);
                continue;
            }
            metrics.seconds.observe(duration.as_secs_f64());
            if outcome.up {
                &metrics.ok
            } else {
                &metrics.failed
            }
            .inc();
            let record = ProbeRecord {
                up: outcome.up,
                reason: outcome.reason,
                duration,
                at: SystemTime::now(),
            };
            self.record(&key, record.up, Some((record, &stop)), None);
            next = started + health.interval.mul_f64(jitter);
        }
    }

    /// Feed one check result into a backend's machine; publish a flip. A probe's result comes
    /// with the probe generation it belongs to, checked under the `tracked` lock: a reload
    /// cancels that generation before it resets any entry, so a verdict about the old address
    /// (or the old probe) never lands on the entry the reload made.
    /// A failed connect from the data path comes as `passive` (its reason is kept if it flips
    /// the backend).
    fn record(
        &self,
        key: &BackendId,
        ok: bool,
        probe: Option<(ProbeRecord, &CancellationToken)>,
        passive: Option<ConnectFailure>,
    ) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if probe
            .as_ref()
            .is_some_and(|(_, generation)| generation.is_cancelled())
        {
            return;
        }
        let Some(t) = tracked.get_mut(key) else {
            return;
        };
        let reason = match (&probe, passive) {
            (Some((p, _)), _) => p.reason.clone(),
            (None, Some(failure)) => passive_reason(failure),
            (None, None) => "check".to_owned(),
        };
        let by_probe = probe.is_some();
        if let Some((p, _)) = probe {
            if !p.up {
                tracing::debug!(pool = %key.pool, backend = %key.backend, reason = %p.reason, "probe failed");
            }
            t.last_probe = Some(p);
            t.probes_run += 1;
        }
        if t.machine.observe(ok).is_some() {
            t.changed_at = SystemTime::now();
            t.changed_reason = Some(reason);
            self.publish(key, t, by_probe);
        }
    }

    /// Publish a backend's health as its machine says now and emit the events the change
    /// causes. Called with the `tracked` lock held (`t` is borrowed from it): two checks racing
    /// on one backend (a probe and a failed connect) then publish in the order their machine
    /// saw them, so routing always ends equal to health. `by_probe`: a probe flipped it (only
    /// then does `on_down = "close"` close the backend's connections).
    fn publish(&self, key: &BackendId, t: &Tracked, by_probe: bool) {
        let health = t.machine.state();
        let Some((previous, transition)) = self.routing.update(&key.pool, &key.backend, |b| {
            std::mem::replace(&mut b.health, health)
        }) else {
            return;
        };
        if previous == health {
            return;
        }
        // The check that flipped it: a failed connect is not the last probe's result.
        let reason = t.changed_reason.as_deref().unwrap_or("check");
        match health {
            Health::Down => {
                tracing::warn!(pool = %key.pool, backend = %key.backend, %reason, "backend is down");
                // Failed client connects also count toward `fall`, but they say the node is
                // full or slow (connection_max, a reconnect storm), not that it is gone:
                // closing its healthy connections would only push the storm on.
                if by_probe {
                    self.close_on_down(key, &transition);
                }
            }
            _ => {
                tracing::info!(pool = %key.pool, backend = %key.backend, %reason, %health, "backend is up")
            }
        }
        let backend_event = match (previous, health) {
            (_, Health::Down) => Some(HookEvent::BackendDown),
            (Health::Down, _) => Some(HookEvent::BackendUp),
            _ => None,
        };
        self.emit(key, backend_event, &transition, Cause::Health);
    }

    /// In a pool with `on_down = "close"`, close the connections of a backend probes just
    /// marked down, instead of leaving them to the clients' heartbeats.
    fn close_on_down(&self, key: &BackendId, transition: &Transition) {
        let Some(pool) = transition.after.pools.get(&*key.pool) else {
            return;
        };
        let Some(backend) = pool.backend(&key.backend) else {
            return;
        };
        if pool.on_down != OnDown::Close {
            return;
        }
        let closed = backend
            .stats
            .close_connections(self.routing.shutdown_token(), CloseCause::BackendDown);
        tracing::warn!(pool = %key.pool, backend = %key.backend, closed, "backend is down: closed its connections (on_down = \"close\")");
    }

    /// Emit `backend_event` (if any) and the pool events of `transition` for the pool of `key`,
    /// telling hooks whether this is planned work (see [`Event::planned`]).
    pub fn emit(
        &self,
        key: &BackendId,
        backend_event: Option<HookEvent>,
        transition: &Transition,
        cause: Cause,
    ) {
        let (Some(before), Some(after)) = (
            transition.before.pools.get(&*key.pool),
            transition.after.pools.get(&*key.pool),
        ) else {
            return;
        };
        let (counts_before, counts_after) = (PoolCounts::of(before), PoolCounts::of(after));
        let total = after.backends.len();
        let available = counts_after.available();
        let backend = after.backend(&key.backend);
        let admin_state = backend.map(|b| b.admin);
        let mut events = Vec::new();
        if let Some(kind) = backend_event {
            events.push(Event {
                kind,
                pool: key.pool.to_string(),
                backend: Some(key.backend.to_string()),
                backend_addr: backend.map(|b| b.addr.to_string()),
                available,
                total,
                admin_state,
                // A drained node that stops (or comes back) is the upgrade going to plan.
                planned: cause == Cause::Admin
                    || admin_state.is_some_and(|a| a != AdminState::Active),
            });
        }
        let planned = cause == Cause::Admin;
        for kind in pool_events(counts_before, counts_after) {
            if planned {
                tracing::info!(pool = %key.pool, event = %kind.as_str(), available, total, planned, "pool event");
            } else {
                tracing::warn!(pool = %key.pool, event = %kind.as_str(), available, total, planned, "pool event");
            }
            events.push(Event {
                kind,
                pool: key.pool.to_string(),
                backend: None,
                backend_addr: None,
                available,
                total,
                admin_state: None,
                planned,
            });
        }
        let hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hooks) = hooks {
            for event in events {
                hooks.emit(event);
            }
        }
    }

    /// Passive hold-down for a pool without a probe: out now, `unknown` again after `hold_down`.
    fn hold_down(self: &Arc<Self>, key: BackendId, failure: ConnectFailure) {
        let generation = {
            let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = tracked.get_mut(&key) else {
                return;
            };
            t.hold_down_generation += 1;
            if t.machine.state() != Health::Down {
                t.machine.reset(Health::Down);
                t.changed_at = SystemTime::now();
                t.changed_reason = Some(passive_reason(failure));
            }
            self.publish(&key, t, false);
            t.hold_down_generation
        };
        let this = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(this.hold_down).await;
            let mut tracked = this.tracked.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = tracked.get_mut(&key) {
                if t.hold_down_generation == generation {
                    t.machine.reset(Health::Unknown);
                    t.changed_at = SystemTime::now();
                    t.changed_reason = Some("hold-down over".to_owned());
                    tracing::info!(pool = %key.pool, backend = %key.backend, "hold-down over, backend takes connections again");
                    this.publish(&key, t, false);
                }
            }
        });
    }
}

impl Observer for Arc<Controller> {
    fn connect_failed(&self, pool: &str, backend: &str, failure: ConnectFailure) {
        let probed = {
            let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes
                .get_key_value(pool)
                .map(|(name, probe)| (name.clone(), probe.is_some()))
        };
        let Some((pool_key, probe)) = probed else {
            return;
        };
        let key = BackendId {
            pool: pool_key,
            backend: Arc::from(backend),
        };
        tracing::debug!(
            pool,
            backend,
            reason = failure.as_str(),
            "failed connect counted as a failed check"
        );
        if probe {
            self.record(&key, false, None, Some(failure));
        } else {
            self.hold_down(key, failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_PROBED_BACKEND: &str = r#"
[[listener]]
name = "amqp"
listen = "127.0.0.1:5672"
pool = "p"

[pool.p]
health = { kind = "tcp", interval = "1h", rise = 1, fall = 1 }

[[pool.p.backend]]
name = "b"
addr = "127.0.0.1:1"
"#;

    fn controller(text: &str, runtime: Handle) -> (Arc<Controller>, Arc<Routing>, Config) {
        let config = crate::config::from_toml_offline(text, std::path::Path::new("t.toml"))
            .expect("test config loads");
        let registry = prometheus::Registry::new();
        let routing = Arc::new(Routing::new(
            &config,
            crate::state::BackendMetrics::register(&registry),
        ));
        let controller = Controller::new(
            &config,
            routing.clone(),
            None,
            HealthMetrics::register(&registry),
            HookMetrics::register(&registry),
            crate::config::DEFAULT_HOLD_DOWN,
            runtime,
        );
        (controller, routing, config)
    }

    fn routed(routing: &Routing, pool: &str, backend: &str) -> Health {
        routing.load().pools[pool].backend(backend).unwrap().health
    }

    /// A probe and the data path flipping one backend at once (rise = fall = 1, so every
    /// check flips it): whatever the interleaving, routing ends where health ends.
    #[test]
    fn concurrent_flips_leave_routing_equal_to_health() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const ROUNDS: usize = 50_000;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (controller, routing, _) = controller(ONE_PROBED_BACKEND, runtime.handle().clone());
        let key = BackendId::new("p", "b");
        // Each round the main thread sets the backend up in both views, then releases both
        // threads at once (spinning, so they really overlap): a failed connect flips it down
        // and a probe success flips it up again, racing; then it compares.
        let (round, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = [false, true]
            .into_iter()
            .map(|ok| {
                let (controller, key) = (controller.clone(), key.clone());
                let (round, finished) = (round.clone(), finished.clone());
                std::thread::spawn(move || {
                    for r in 1..=ROUNDS {
                        while round.load(Ordering::Acquire) < r {
                            std::thread::yield_now();
                        }
                        if ok {
                            // Let the failure go first, most of the time.
                            for _ in 0..50 {
                                std::hint::spin_loop();
                            }
                        }
                        controller.record(&key, ok, None, None);
                        finished.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        let mut disagreements = 0;
        for r in 1..=ROUNDS {
            controller.record(&key, true, None, None);
            routing.set_health("p", "b", Health::Up);
            round.store(r, Ordering::Release);
            while finished.load(Ordering::Acquire) < 2 * r {
                std::thread::yield_now();
            }
            let health = controller.backend("p", "b").unwrap().health;
            if routed(&routing, "p", "b") != health {
                disagreements += 1;
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            disagreements, 0,
            "rounds of {ROUNDS} where routing disagreed with health"
        );
    }

    /// A reload that removes `[health]` brings a `down` backend back (as `unknown`); one that
    /// moves a backend to another address forgets the old verdict.
    #[test]
    fn reload_resets_health_that_nothing_would_ever_correct() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (controller, routing, _) = controller(ONE_PROBED_BACKEND, runtime.handle().clone());
        let stop = CancellationToken::new();
        let key = BackendId::new("p", "b");
        let load = |text: &str| {
            crate::config::from_toml_offline(text, std::path::Path::new("t.toml")).unwrap()
        };
        let reload = |text: &str| {
            let config = load(text);
            routing.reload(&config);
            runtime.block_on(async { controller.reload(&config, &stop) });
        };
        let down = |c: &Controller| {
            c.record(&key, false, None, None);
            assert_eq!(routed(&routing, "p", "b"), Health::Down);
        };
        let cases = [
            // (the new config, the health routing must show after the reload)
            (ONE_PROBED_BACKEND.to_owned(), Health::Down),
            (
                ONE_PROBED_BACKEND.replace(
                    "health = { kind = \"tcp\", interval = \"1h\", rise = 1, fall = 1 }\n",
                    "",
                ),
                Health::Unknown,
            ),
            (
                ONE_PROBED_BACKEND.replace("127.0.0.1:1\"", "127.0.0.2:1\""),
                Health::Unknown,
            ),
        ];
        for (text, expected) in cases {
            reload(ONE_PROBED_BACKEND);
            down(&controller);
            reload(&text);
            assert_eq!(
                routed(&routing, "p", "b"),
                expected,
                "after reloading:\n{text}"
            );
            assert_eq!(controller.backend("p", "b").unwrap().health, expected);
        }
        stop.cancel();
    }

    /// A probe in flight when a reload moves its backend elsewhere records nothing: its verdict
    /// is about the old address (here a node that accepts and never answers, so the probe
    /// would time out and, with fall = 1, mark the backend down at its new address).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_cancelled_by_a_reload_records_nothing() {
        use std::io::Read;
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let old_addr = silent.local_addr().unwrap();
        let text = |addr: SocketAddr, interval: &str| {
            ONE_PROBED_BACKEND
                .replace("127.0.0.1:1", &addr.to_string())
                .replace(
                    "kind = \"tcp\", interval = \"1h\"",
                    &format!("kind = \"amqp\", interval = \"{interval}\", timeout = \"1s\""),
                )
        };
        let (controller, routing, config) = controller(&text(old_addr, "100ms"), Handle::current());
        let stop = CancellationToken::new();
        controller.spawn_probes(&config, &stop);
        // The probe has connected and waits for the node's answer.
        let (mut held, _) = tokio::task::spawn_blocking(move || silent.accept().unwrap())
            .await
            .unwrap();
        let moved = crate::config::from_toml_offline(
            &text("127.0.0.1:1".parse().unwrap(), "1h"),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        routing.reload(&moved);
        controller.reload(&moved, &stop);
        // The old probe lets go of its connection (at once when cancelled, after its 1 s
        // timeout if not), and would record right after.
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let closed = tokio::task::spawn_blocking(move || held.read(&mut [0u8; 64]))
            .await
            .unwrap();
        assert!(
            closed.is_ok(),
            "the old probe's connection closed: {closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            controller.backend("p", "b").unwrap().health,
            Health::Unknown
        );
        assert_eq!(routed(&routing, "p", "b"), Health::Unknown);
        stop.cancel();
    }

    #[test]
    fn hysteresis_follows_rise_and_fall() {
        // (results fed in, expected state after each)
        use Health::*;
        let cases: &[(&[bool], &[Health])] = &[
            (&[true], &[Up]),
            (&[false, false, false], &[Unknown, Unknown, Down]),
            (
                &[true, false, false, false, true, true],
                &[Up, Up, Up, Down, Down, Up],
            ),
            (
                &[false, false, true, false, false, false],
                &[Unknown, Unknown, Up, Up, Up, Down],
            ),
        ];
        for (results, expected) in cases {
            let mut m = Hysteresis::new(2, 3);
            let got: Vec<Health> = results
                .iter()
                .map(|ok| {
                    m.observe(*ok);
                    m.state()
                })
                .collect();
            assert_eq!(&got, expected, "results {results:?}");
        }
    }

    #[test]
    fn flapping_never_flips_faster_than_rise_and_fall_allow() {
        let mut m = Hysteresis::new(2, 3);
        m.observe(true);
        let mut flips = 0;
        // Alternating success/failure: no run of 3 failures or 2 successes, so no flip at all.
        for i in 0..1000 {
            if m.observe(i % 2 == 0).is_some() {
                flips += 1;
            }
        }
        assert_eq!(flips, 0);
        assert_eq!(m.state(), Health::Up);
        // One success, two failures, repeated: still never three failures in a row.
        for i in 0..999 {
            if m.observe(i % 3 == 0).is_some() {
                flips += 1;
            }
        }
        assert_eq!(flips, 0);
    }

    #[test]
    fn flips_are_reported_once() {
        let mut m = Hysteresis::new(1, 1);
        assert_eq!(m.observe(false), Some(Health::Down));
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), Some(Health::Up));
        assert_eq!(m.observe(true), None);
    }

    fn counts(p: usize, b: usize, ap: usize, ab: usize) -> PoolCounts {
        PoolCounts {
            primaries: p,
            backups: b,
            available_primaries: ap,
            available_backups: ab,
        }
    }

    #[test]
    fn pool_events_table() {
        use HookEvent::*;
        let cases = [
            // 3 primaries, one goes: degraded.
            (counts(3, 0, 3, 0), counts(3, 0, 2, 0), vec![PoolDegraded]),
            // Down to the last primary: degraded again (worse).
            (counts(3, 0, 2, 0), counts(3, 0, 1, 0), vec![PoolDegraded]),
            // Last primary goes, no backups: pool down.
            (counts(2, 0, 1, 0), counts(2, 0, 0, 0), vec![PoolDown]),
            // Last primary goes, a backup is available: failover.
            (counts(2, 1, 1, 1), counts(2, 1, 0, 1), vec![PoolFailover]),
            // Backups down too: pool down.
            (counts(2, 1, 0, 1), counts(2, 1, 0, 0), vec![PoolDown]),
            // From nothing, a backup comes back: backups carry the pool.
            (counts(2, 1, 0, 0), counts(2, 1, 0, 1), vec![PoolFailover]),
            // A primary returns while backups carry: failback.
            (counts(2, 1, 0, 1), counts(2, 1, 1, 1), vec![PoolFailback]),
            // A primary returns in a pool without backups: no pool event.
            (counts(2, 0, 0, 0), counts(2, 0, 1, 0), vec![]),
            // A primary returns, still degraded: nothing new.
            (counts(3, 0, 1, 0), counts(3, 0, 2, 0), vec![]),
            // A backup changes while primaries serve: nothing.
            (counts(2, 1, 2, 1), counts(2, 1, 2, 0), vec![]),
        ];
        for (before, after, expected) in cases {
            assert_eq!(
                pool_events(before, after),
                expected,
                "{before:?} -> {after:?}"
            );
        }
    }
}
