//! The drainer's fleet side (`[fleet]`, see `crate::fleet`): a drain or undrain is written to
//! etcd first, checked there against the whole fleet's drains in the same transaction
//! (`max_draining` and `min_available` across the fleet, unless forced), and only then applied
//! here; every instance, this one included, follows the fleet's drains through a watch and
//! applies each change within a watch round trip. When etcd cannot be reached, traffic and
//! probes go on with the last drains known (the state file keeps them across a restart) and
//! admin changes are refused (503), unless the operator asks for a local one (`super::local`),
//! which the fleet's changes then leave alone.

use super::*;
use crate::fleet::drains::{Change, Drains, FleetDrain, FleetDrains, FleetError, Name};

/// A refusal of a change the fleet could not take or would not allow.
fn fleet_error(e: FleetError) -> DrainError {
    match e {
        FleetError::Refused(why) => DrainError::FleetRefused(why),
        e => DrainError::FleetUnavailable(e.to_string()),
    }
}

fn name(id: &BackendId) -> Name {
    (id.pool.to_string(), id.backend.to_string())
}

impl Drainer {
    /// Write a drain of `ids` to the fleet's store, checked against every instance's drains:
    /// no pool may get more than `max_draining` backends draining, nor fewer than
    /// `min_available` available primaries (health as this instance sees it). `force` skips
    /// the checks (the drain records it).
    pub(super) async fn fleet_drain(
        &self,
        fleet: &FleetDrains,
        ids: &[BackendId],
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<(), DrainError> {
        let names: Vec<Name> = ids.iter().map(name).collect();
        let wall = deadline.and_then(|d| SystemTime::now().checked_add(d));
        let check = |drains: &Drains| {
            if force {
                Ok(())
            } else {
                self.fleet_check(ids, drains)
            }
        };
        self.fleet_change(fleet.drain(&names, wall, force, check))
            .await
    }

    /// Remove `ids`' drains from the fleet's store.
    pub(super) async fn fleet_undrain(
        &self,
        fleet: &FleetDrains,
        ids: &[BackendId],
    ) -> Result<(), DrainError> {
        let names: Vec<Name> = ids.iter().map(name).collect();
        self.fleet_change(fleet.undrain(&names)).await
    }

    /// One change of the fleet's drains, bounded by `[fleet] timeout`; etcd answering or not
    /// shows in `fleet_store_up`.
    async fn fleet_change(
        &self,
        change: impl std::future::Future<Output = Result<Drains, FleetError>>,
    ) -> Result<(), DrainError> {
        let timeout = self.fleet_timeout();
        match tokio::time::timeout(timeout, change).await {
            Ok(Ok(_)) => {
                self.metrics.fleet_store_up.set(1);
                Ok(())
            }
            Ok(Err(e)) => {
                if matches!(e, FleetError::Store(_)) {
                    self.metrics.fleet_store_up.set(0);
                }
                Err(fleet_error(e))
            }
            Err(_) => Err(DrainError::FleetUnavailable(format!(
                "the fleet's store (etcd) did not answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }

    fn fleet_timeout(&self) -> Duration {
        lock(&self.config)
            .fleet
            .as_ref()
            .map_or(Duration::from_secs(2), |f| f.timeout)
    }

    /// The fleet-wide checks of draining `ids` against `drains` (the fleet's, as read in the
    /// transaction): the refusal's message, or `Ok`.
    fn fleet_check(&self, ids: &[BackendId], drains: &Drains) -> Result<(), String> {
        let config = lock(&self.config).clone();
        let max_draining = config.fleet.as_ref().map_or(1, |f| f.max_draining);
        let snapshot = self.routing.load();
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
            let out_in_fleet = |backend: &str| {
                drains
                    .drains
                    .contains_key(&(pool.to_owned(), backend.to_owned()))
            };
            let others: Vec<String> = drains
                .drains
                .iter()
                .filter(|((p, b), _)| p == pool && !leaving.contains(&b.as_str()))
                .map(|((_, b), d)| format!("{b} (by {})", d.by))
                .collect();
            let new = leaving.iter().filter(|b| !out_in_fleet(b)).count();
            if new > 0 && others.len() + leaving.len() > max_draining {
                return Err(format!(
                    "pool {pool} already has {} draining in the fleet; max_draining = \
                     {max_draining} in [fleet]: undrain it first, or force this drain (force: true \
                     in the API, --force in warren ctl)",
                    others.join(", ")
                ));
            }
            let min_available = config.pool(pool).map_or(0, |p| p.min_available);
            let primaries = route.backends.iter().filter(|b| {
                !b.backup && b.health != crate::state::Health::Down && !out_in_fleet(&b.name)
            });
            let loses = primaries.clone().any(|b| leaving.contains(&&*b.name));
            let left = primaries.filter(|b| !leaving.contains(&&*b.name)).count();
            if loses && left < min_available {
                return Err(format!(
                    "draining {} would leave {left} available primary backend(s) in pool {pool} \
                     across the fleet, fewer than min_available = {min_available}; drain it when \
                     another backend is back, or force it (force: true in the API, --force in \
                     warren ctl)",
                    leaving.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Read the fleet's drains once and apply them, within the fleet's timeout: at start,
    /// before anything is served, so no connection goes to a backend the fleet drained while
    /// this instance was down. False when etcd did not answer (the state file's drains stay).
    pub async fn sync_fleet(self: &Arc<Self>) -> bool {
        let Some(fleet) = self.fleet.clone() else {
            return true;
        };
        match tokio::time::timeout(self.fleet_timeout(), fleet.load()).await {
            Ok(Ok(drains)) => {
                self.apply_all(&drains);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "fleet: etcd unreachable at start; serving with the state file's drains until it answers");
                false
            }
            Err(_) => {
                tracing::warn!("fleet: etcd did not answer at start; serving with the state file's drains until it answers");
                false
            }
        }
    }

    /// Follow the fleet's drains until `stop`: read them all, apply them, then apply each
    /// change the watch reports; read again after a compaction. While etcd cannot be reached
    /// the drains in force stay (the watch reconnects from where it was, so no change is
    /// missed).
    pub async fn follow_fleet(self: Arc<Self>, fleet: Arc<FleetDrains>, stop: CancellationToken) {
        let mut unreachable_logged = false;
        loop {
            let drains = tokio::select! {
                () = stop.cancelled() => return,
                read = fleet.load() => read,
            };
            let drains = match drains {
                Ok(drains) => drains,
                Err(e) => {
                    self.metrics.fleet_store_up.set(0);
                    if !unreachable_logged {
                        tracing::warn!(error = %e, "fleet: etcd unreachable; the drains in force stay until it answers");
                        unreachable_logged = true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            unreachable_logged = false;
            tracing::info!(
                drains = drains.drains.len(),
                revision = drains.revision,
                "fleet: following the fleet's drains"
            );
            self.metrics.fleet_store_up.set(1);
            self.metrics.fleet_revision.set(drains.revision);
            self.apply_all(&drains);
            let mut watch = fleet.watch(drains.revision);
            // While the watch is broken, etcd is asked once a second whether it answers again:
            // a watch that reconnects brings nothing until the next change, and
            // `fleet_store_up` would stay 0 until then.
            let mut broken = false;
            let mut recheck = tokio::time::interval(Duration::from_secs(1));
            // Ticks missed while the watch was fine are not made up in a burst.
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = watch.next() => next,
                    _ = recheck.tick(), if broken => {
                        let answered = tokio::select! {
                            () = stop.cancelled() => return,
                            read = tokio::time::timeout(self.fleet_timeout(), fleet.load()) => {
                                matches!(read, Ok(Ok(_)))
                            }
                        };
                        if answered {
                            self.metrics.fleet_store_up.set(1);
                            broken = false;
                        }
                        continue;
                    }
                };
                match next {
                    Some(Ok(events)) => {
                        broken = false;
                        self.metrics.fleet_store_up.set(1);
                        for event in &events {
                            let Some(change) = fleet.change_of(event) else {
                                continue;
                            };
                            if let Change::Drained(_, drain) = &change {
                                let now = crate::fleet::drains::unix_ms(SystemTime::now());
                                let lag = now.saturating_sub(drain.at_ms) as f64 / 1000.0;
                                self.metrics.fleet_watch_lag.set(lag);
                            }
                            self.apply_change(change);
                            self.metrics.fleet_revision.set(event.mod_revision);
                        }
                    }
                    Some(Err(e)) => {
                        if !broken {
                            recheck.reset();
                        }
                        broken = true;
                        self.metrics.fleet_store_up.set(0);
                        tracing::debug!(error = %e, "fleet: watch interrupted, resuming")
                    }
                    // Compacted past where it was: read everything again.
                    None => break,
                }
            }
        }
    }

    /// Make this instance's drains what the fleet's are: every backend of the config.
    fn apply_all(self: &Arc<Self>, drains: &Drains) {
        let snapshot = self.routing.load_full();
        for (pool, route) in snapshot.pools.iter() {
            for b in &route.backends {
                let key = (pool.to_string(), b.name.to_string());
                match drains.drains.get(&key) {
                    Some(drain) => self.apply_change(Change::Drained(key, drain.clone())),
                    None => self.apply_change(Change::Undrained(key)),
                }
            }
        }
    }

    /// Apply one change of the fleet's drains here (idempotent); none once this process
    /// handed everything to a new one, nor to a backend whose admin state here is a local
    /// change (see `super::local`).
    fn apply_change(self: &Arc<Self>, change: Change) {
        if self.retired.is_cancelled() {
            return;
        }
        let (Change::Drained((pool, backend), _) | Change::Undrained((pool, backend))) = &change;
        if self.local_change(&BackendId::new(pool, backend)).is_some() {
            let drained = matches!(change, Change::Drained(..));
            let admin = self.admin_state(&BackendId::new(pool, backend));
            if admin.is_some_and(|a| (a != AdminState::Active) != drained) {
                tracing::warn!(pool = %pool, backend = %backend, fleet_drained = drained,
                    "fleet: not applied here: this backend's admin state is a local change; \
                     send its next drain or undrain to this instance to follow the fleet again");
            }
            return;
        }
        match change {
            Change::Drained((pool, backend), drain) => {
                let id = BackendId::new(&pool, &backend);
                self.apply_fleet_drain(&id, &drain);
            }
            Change::Undrained((pool, backend)) => {
                let id = BackendId::new(&pool, &backend);
                if matches!(self.admin_state(&id), Some(a) if a != AdminState::Active) {
                    tracing::info!(pool = %pool, backend = %backend, "fleet: undrained by the fleet");
                    let _ = self.undrain(&id);
                }
            }
        }
    }

    /// A drain the fleet has: started here if it was not, its deadline kept as the fleet's.
    fn apply_fleet_drain(self: &Arc<Self>, id: &BackendId, drain: &FleetDrain) {
        let Some(admin) = self.admin_state(id) else {
            tracing::warn!(pool = %id.pool, backend = %id.backend, by = %drain.by,
                "fleet: a drain of a backend this config does not have; ignored");
            return;
        };
        let deadline = drain.deadline().map(|wall| Deadline {
            at: tokio::time::Instant::now()
                + wall.duration_since(SystemTime::now()).unwrap_or_default(),
            wall,
        });
        let known = lock(&self.drains).get(id).and_then(|e| e.deadline);
        // This instance's own drain comes back through the watch, its deadline computed a few
        // milliseconds apart: the same drain.
        let same = match (known, deadline) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                let apart = a
                    .wall
                    .duration_since(b.wall)
                    .or_else(|e| Ok::<_, ()>(e.duration()));
                apart.is_ok_and(|d| d < Duration::from_secs(1))
            }
            _ => false,
        };
        if admin != AdminState::Active && same {
            return;
        }
        tracing::info!(pool = %id.pool, backend = %id.backend, by = %drain.by, forced = drain.forced,
            deadline = drain.deadline().map(rfc3339).as_deref().unwrap_or("none"),
            "fleet: drained by the fleet");
        self.start_drain(id, admin, deadline, drain.forced);
    }
}
