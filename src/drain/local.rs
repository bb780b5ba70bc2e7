//! Local changes under `[fleet]`: a drain or undrain an operator applies to this instance only
//! (`"local": true` in the API, `--local` in `warren ctl`), typically while etcd is unreachable
//! and every fleet-wide change is refused with 503. Such a change stands apart from the fleet's
//! drains for that backend, on this instance, until the operator makes the next change of the
//! same backend here (local or through the fleet). Until then neither the watch nor a full read
//! of the fleet's drains (at start, after etcd returns) moves it: traffic never moves behind
//! the operator's back when etcd comes back. Each one is logged, answered with a warning, shown
//! in status (`local_change`), in this instance's report to the fleet (`GET /v1/fleet`), and
//! counted in `warren_fleet_local_changes`; it survives a restart (the state file) and a
//! `warren upgrade` (carried with the backend's state).
//!
//! It owns the set of local changes and nothing else: the drains themselves stay the drainer's.

use super::*;

/// Where an operator's drain or undrain applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// With `[fleet]`, the whole fleet (written to etcd first); without, this instance.
    Fleet,
    /// This instance only, even with `[fleet]`.
    Local,
}

impl Scope {
    /// The scope a request's `local` flag asks for.
    pub fn of(local: bool) -> Scope {
        if local {
            Scope::Local
        } else {
            Scope::Fleet
        }
    }
}

/// The answer's warning for a local change, so the operator sees what it means.
pub(super) fn warning(id: &BackendId) -> String {
    format!(
        "applied on this instance only (local): the fleet's drains do not have it, and backend \
         {} of pool {} ignores the fleet's changes here until its next drain or undrain is sent \
         to this instance",
        id.backend, id.pool
    )
}

impl Drainer {
    /// Record where a change of `ids` applied, once it applied: a local one (with `[fleet]`)
    /// becomes a local change of each backend; one through the fleet ends theirs. Written to
    /// the state file when the set changed: how that went (see `Drainer::save`).
    pub(super) fn note_scope(
        &self,
        ids: &[BackendId],
        scope: Scope,
        drained: bool,
    ) -> Option<Result<(), String>> {
        self.fleet.as_ref()?;
        let changed = {
            let mut local = lock(&self.local);
            let mut changed = false;
            for id in ids {
                match scope {
                    Scope::Local => {
                        tracing::warn!(pool = %id.pool, backend = %id.backend, drained,
                            "fleet: changed on this instance only (local); the fleet's changes \
                             of this backend are not applied here until its next change is sent \
                             to this instance");
                        local.insert(id.clone(), SystemTime::now());
                        changed = true;
                    }
                    Scope::Fleet => {
                        if local.remove(id).is_some() {
                            tracing::info!(pool = %id.pool, backend = %id.backend,
                                "fleet: the local change ended; following the fleet's drains again");
                            changed = true;
                        }
                    }
                }
            }
            self.metrics.fleet_local_changes.set(local.len() as i64);
            changed
        };
        if changed {
            self.save()
        } else {
            None
        }
    }

    /// A local change's warnings on its answer (with `[fleet]` only: without, every change is
    /// local), and a failed write of it to the state file.
    pub(super) fn warn_local(
        &self,
        answer: &mut DrainAnswer,
        scope: Scope,
        saved: &Option<Result<(), String>>,
    ) {
        if self.fleet.is_none() || scope != Scope::Local {
            return;
        }
        let id = BackendId::new(&answer.pool, &answer.backend);
        answer.warnings.push(warning(&id));
        if self.state_file.is_none() {
            answer.warnings.push(
                "warren has no state file (admin.state_file): this local change does not \
                 survive a restart, after which the fleet's drains apply"
                    .to_owned(),
            );
        }
        if let Some(Err(_)) = saved {
            record_save(answer, saved.clone());
        }
    }

    /// Since when `id`'s admin state here is a local change; `None` when it follows the fleet.
    pub fn local_change(&self, id: &BackendId) -> Option<SystemTime> {
        lock(&self.local).get(id).copied()
    }

    /// Take local changes from the state file or the process this one upgraded from (at start,
    /// before the fleet's drains are read).
    pub fn restore_local(&self, ids: impl IntoIterator<Item = (BackendId, SystemTime)>) {
        if self.fleet.is_none() {
            return;
        }
        let mut local = lock(&self.local);
        // A backend the config no longer has would get it back if a reload added it again.
        local.extend(
            ids.into_iter()
                .filter(|(id, _)| self.admin_state(id).is_some()),
        );
        self.metrics.fleet_local_changes.set(local.len() as i64);
    }
}
