//! The operator's admin state of backends: drain (no new connections; existing ones continue;
//! with a deadline, those still open then are closed), undrain, the `draining → drained`
//! transition when the last connection closes, the `min_available` guard, and the state file
//! that makes drains survive a restart. It changes admin state only through [`Routing`] and
//! emits events through the health [`Controller`]; it never touches health.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::config::HookEvent;
use crate::health::Controller;
use crate::metrics::Metrics;
use crate::state::{AdminState, Routing};

/// How often a draining backend is checked for its last connection.
const DRAINED_POLL: Duration = Duration::from_millis(100);

/// Why a drain or undrain was not done.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    #[error("no backend {backend} in pool {pool}")]
    NotFound { pool: String, backend: String },
    #[error(
        "draining {backend} would leave {left} available primary backend(s) in pool {pool}, \
         fewer than min_available = {min_available}; drain it when another backend is back, \
         or force it (force: true in the API, --force in warren ctl)"
    )]
    MinAvailable {
        pool: String,
        backend: String,
        left: usize,
        min_available: usize,
    },
}

/// A backend's admin state as the API reports it after a change.
#[derive(Debug, Clone, Serialize)]
pub struct DrainStatus {
    pub pool: String,
    pub backend: String,
    pub admin: &'static str,
    pub active_connections: i64,
    /// RFC 3339, when a deadline is set.
    pub drain_deadline: Option<String>,
}

type Key = (String, String);

/// Drains and undrains backends; one per process, on the control runtime.
pub struct Drainer {
    routing: Arc<Routing>,
    health: Arc<Controller>,
    /// `min_available` of each pool; replaced on reload.
    min_available: Mutex<HashMap<String, usize>>,
    state_file: Option<PathBuf>,
    /// Deadline of each draining backend, and a generation so an undrain stops its watcher.
    drains: Mutex<HashMap<Key, DrainEntry>>,
    runtime: Handle,
    state_file_errors: prometheus::IntCounter,
}

#[derive(Clone, Copy)]
struct DrainEntry {
    deadline: Option<SystemTime>,
    generation: u64,
}

impl Drainer {
    /// A drainer for the pools of `routing`; loads `state_file` and re-applies its drains.
    pub fn new(
        config: &crate::config::Config,
        routing: Arc<Routing>,
        health: Arc<Controller>,
        metrics: &Metrics,
        runtime: Handle,
    ) -> Arc<Drainer> {
        let state_file = config.admin.as_ref().and_then(|a| a.state_file.clone());
        let drainer = Arc::new(Drainer {
            routing,
            health,
            min_available: Mutex::new(min_available_of(config)),
            state_file,
            drains: Mutex::new(HashMap::new()),
            runtime,
            state_file_errors: metrics.state_file_errors_total.clone(),
        });
        drainer.restore();
        drainer
    }

    /// Take a reloaded config's `min_available` values.
    pub fn reload(&self, config: &crate::config::Config) {
        *self.min_available.lock().unwrap_or_else(|e| e.into_inner()) = min_available_of(config);
    }

    /// Stop new connections to a backend now; close the remaining ones after `deadline`.
    pub fn drain(
        self: &Arc<Self>,
        pool: &str,
        backend: &str,
        deadline: Option<Duration>,
        force: bool,
    ) -> Result<DrainStatus, DrainError> {
        let not_found = || DrainError::NotFound {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
        };
        let snapshot = self.routing.load_full();
        let route = snapshot.pools.get(pool).ok_or_else(not_found)?;
        let target = route.backend(backend).ok_or_else(not_found)?;
        let min_available = self
            .min_available
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .copied()
            .unwrap_or(0);
        if target.admin == AdminState::Active && !force {
            let primaries_left = route
                .backends
                .iter()
                .filter(|b| !b.backup && b.available() && &*b.name != backend)
                .count();
            let loses_one = !target.backup && target.available();
            if loses_one && primaries_left < min_available {
                return Err(DrainError::MinAvailable {
                    pool: pool.to_owned(),
                    backend: backend.to_owned(),
                    left: primaries_left,
                    min_available,
                });
            }
        }
        let deadline_at = deadline.map(|d| SystemTime::now() + d);
        let entry = {
            let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
            let entry = drains
                .entry((pool.to_owned(), backend.to_owned()))
                .or_insert(DrainEntry {
                    deadline: None,
                    generation: 0,
                });
            entry.generation += 1;
            // A repeated drain may set or shorten the deadline, never drop it silently.
            entry.deadline = match (entry.deadline, deadline_at) {
                (Some(old), Some(new)) => Some(old.min(new)),
                (old, new) => new.or(old),
            };
            *entry
        };
        if target.admin == AdminState::Active {
            if let Some((_, transition)) = self
                .routing
                .update(pool, backend, |b| b.admin = AdminState::Draining)
            {
                tracing::info!(pool, backend, deadline = ?deadline, force, "drain started");
                self.health.emit(
                    &(Arc::from(pool), Arc::from(backend)),
                    Some(HookEvent::DrainStarted),
                    &transition,
                );
            }
            self.save();
        }
        self.runtime.spawn(
            self.clone()
                .watch((pool.to_owned(), backend.to_owned()), entry.generation),
        );
        // A reload may have removed the backend since: not found, never a panic.
        self.status(pool, backend).ok_or_else(not_found)
    }

    /// Let a backend take new connections again (idempotent).
    pub fn undrain(&self, pool: &str, backend: &str) -> Result<DrainStatus, DrainError> {
        let key = (pool.to_owned(), backend.to_owned());
        let not_found = || DrainError::NotFound {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
        };
        let changed = self
            .routing
            .update(pool, backend, |b| {
                std::mem::replace(&mut b.admin, AdminState::Active)
            })
            .ok_or_else(not_found)?;
        // Removing the entry stops its watcher (it checks the generation).
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let (previous, transition) = changed;
        if previous != AdminState::Active {
            tracing::info!(pool, backend, "undrained: taking new connections");
            self.health
                .emit(&(Arc::from(pool), Arc::from(backend)), None, &transition);
            self.save();
        }
        self.status(pool, backend).ok_or_else(not_found)
    }

    /// The admin view of one backend.
    pub fn status(&self, pool: &str, backend: &str) -> Option<DrainStatus> {
        let snapshot = self.routing.load();
        let b = snapshot.pools.get(pool)?.backend(backend)?;
        Some(DrainStatus {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            admin: b.admin.as_str(),
            active_connections: b.stats.active.get(),
            drain_deadline: self.deadline(pool, backend).map(rfc3339),
        })
    }

    /// The deadline of a draining backend, if it has one.
    pub fn deadline(&self, pool: &str, backend: &str) -> Option<SystemTime> {
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pool.to_owned(), backend.to_owned()))
            .and_then(|e| e.deadline)
    }

    /// Follow one draining backend until it is drained (or undrained / drained again).
    async fn watch(self: Arc<Self>, key: Key, generation: u64) {
        let mut closed_at_deadline = false;
        loop {
            let entry = {
                let drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
                match drains.get(&key) {
                    Some(e) if e.generation == generation => *e,
                    // Undrained, or a newer drain took over.
                    _ => return,
                }
            };
            let snapshot = self.routing.load_full();
            let Some(b) = snapshot.pools.get(&*key.0).and_then(|p| p.backend(&key.1)) else {
                return;
            };
            match b.admin {
                AdminState::Active => return,
                AdminState::Drained => return,
                AdminState::Draining => {}
            }
            if b.stats.active.get() <= 0 {
                let done = self.routing.update(&key.0, &key.1, |b| {
                    (b.admin == AdminState::Draining).then(|| b.admin = AdminState::Drained)
                });
                if let Some((Some(()), transition)) = done {
                    tracing::info!(
                        pool = key.0,
                        backend = key.1,
                        "drain complete: no connection left"
                    );
                    self.health.emit(
                        &(Arc::from(key.0.as_str()), Arc::from(key.1.as_str())),
                        Some(HookEvent::DrainComplete),
                        &transition,
                    );
                    self.save();
                }
                return;
            }
            if let Some(deadline) = entry.deadline {
                if !closed_at_deadline && SystemTime::now() >= deadline {
                    tracing::warn!(
                        pool = key.0,
                        backend = key.1,
                        open = b.stats.active.get(),
                        "drain deadline reached: closing the remaining connections"
                    );
                    b.stats.close_connections(self.routing.shutdown_token());
                    closed_at_deadline = true;
                }
            }
            let pause = match entry
                .deadline
                .and_then(|d| d.duration_since(SystemTime::now()).ok())
            {
                Some(left) if !closed_at_deadline => left.min(DRAINED_POLL),
                _ => DRAINED_POLL,
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Write the admin state of every non-active backend to the state file, atomically.
    fn save(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
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
        if let Err(e) = write_atomically(path, &state) {
            self.state_file_errors.inc();
            tracing::error!(file = %path.display(), error = %e, "cannot write the state file; drain state will not survive a restart");
        }
    }

    /// Re-apply the drains of the state file at start-up. A draining backend comes back drained:
    /// a new process has no connection to it.
    fn restore(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let state = match read_state(path) {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(e) => {
                self.state_file_errors.inc();
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
                    "state file unreadable: starting with every backend active; the bad file was moved aside"
                );
                return;
            }
        };
        for b in state.backends {
            if b.admin == "active" {
                continue;
            }
            match self
                .routing
                .update(&b.pool, &b.backend, |r| r.admin = AdminState::Drained)
            {
                Some(_) => tracing::info!(
                    pool = b.pool,
                    backend = b.backend,
                    "restored drained state from the state file"
                ),
                None => tracing::warn!(
                    pool = b.pool,
                    backend = b.backend,
                    "state file names a backend that is not in the config; ignored"
                ),
            }
        }
    }
}

fn min_available_of(config: &crate::config::Config) -> HashMap<String, usize> {
    config
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.min_available))
        .collect()
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

/// Read the state file: `Ok(None)` when it does not exist (a normal first start).
fn read_state(path: &Path) -> Result<Option<PersistedState>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let state: PersistedState = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if state.version != 1 {
        return Err(format!("unknown state file version {}", state.version));
    }
    for b in &state.backends {
        if !matches!(b.admin.as_str(), "active" | "draining" | "drained") {
            return Err(format!(
                "unknown admin state {:?} for {}/{}",
                b.admin, b.pool, b.backend
            ));
        }
    }
    Ok(Some(state))
}

/// Temp file in the same directory, fsync, rename over, fsync the directory: a crash leaves
/// either the old or the new file, never a torn one.
fn write_atomically(path: &Path, state: &PersistedState) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(state).expect("plain data serializes"))?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("warren-drain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(read_state(&path), Ok(None), "a missing file is normal");
        let state = PersistedState {
            version: 1,
            backends: vec![PersistedBackend {
                pool: "rabbitmq".into(),
                backend: "rabbit-a".into(),
                admin: "drained".into(),
            }],
        };
        write_atomically(&path, &state).unwrap();
        assert_eq!(read_state(&path), Ok(Some(state)));
        for garbage in [
            &b"{"[..],
            b"[]",
            b"{\"version\":2,\"backends\":[]}",
            b"\xff\xfe",
        ] {
            std::fs::write(&path, garbage).unwrap();
            assert!(read_state(&path).is_err(), "{garbage:?} must be rejected");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
