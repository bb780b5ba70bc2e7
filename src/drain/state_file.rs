//! The state file that makes drains survive a restart: read once at start (a corrupt file is
//! moved aside, an unreadable one stops the start), written atomically after every admin change
//! (a temp file beside it, fsync, rename), and `state_file_errors_total`. It knows nothing of
//! drain policy; [`super::Drainer`] decides what to write.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::metrics;
use crate::state::{AdminState, BackendId, Routing};

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
    pub(super) errors_total: prometheus::IntCounter,
    /// `[fleet]`: 1 while the fleet's store (etcd) answers, 0 while it does not.
    pub(super) fleet_store_up: prometheus::IntGauge,
    /// `[fleet]`: the last revision of the fleet's drains applied here.
    pub(super) fleet_revision: prometheus::IntGauge,
    /// `[fleet]`: how long the last change of the fleet's drains took to be applied here.
    pub(super) fleet_watch_lag: prometheus::Gauge,
    /// `[fleet]`: backends whose admin state here is a local change.
    pub(super) fleet_local_changes: prometheus::IntGauge,
}

impl StateFileMetrics {
    /// Register the drainer's families into `registry` (once per process):
    /// `state_file_errors_total` and, for `[fleet]`, the store's state.
    pub fn register(registry: &prometheus::Registry) -> StateFileMetrics {
        let lag = metrics::float_gauge_vec(
            registry,
            "fleet_watch_lag_seconds",
            "[fleet]: from the write of the last change of the fleet's drains to its application here",
            &[],
        );
        StateFileMetrics {
            errors_total: metrics::counter(
                registry,
                "state_file_errors_total",
                "State file reads or writes that failed (a corrupt file is moved aside)",
            ),
            fleet_store_up: metrics::gauge(
                registry,
                "fleet_store_up",
                "[fleet]: 1 while the fleet's store (etcd) answers, 0 while it does not",
            ),
            fleet_revision: metrics::gauge(
                registry,
                "fleet_revision",
                "[fleet]: the last revision of the fleet's drains applied here",
            ),
            fleet_watch_lag: lag.with_label_values(&[]),
            fleet_local_changes: metrics::gauge(
                registry,
                "fleet_local_changes",
                "[fleet]: backends whose admin state on this instance is a local change, apart from the fleet's drains",
            ),
        }
    }
}

/// The drains a state file held, read once at start (see [`load_state`]).
#[derive(Debug, Default)]
pub struct Restored {
    /// Every backend that was draining or drained.
    drained: Vec<BackendId>,
    /// `[fleet]`: the backends whose admin state was a local change, and since when.
    local: Vec<(BackendId, SystemTime)>,
    /// A corrupt file was moved aside (counted in `state_file_errors_total` once metrics exist).
    moved_aside: bool,
}

impl Restored {
    /// Re-apply the drains of the state file at start-up, before any connection is accepted. A
    /// draining backend comes back drained: a new process has no connection to it.
    pub fn apply(self, routing: &Routing, metrics: &StateFileMetrics) -> LocalChanges {
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
        LocalChanges(self.local)
    }
}

/// The local changes a state file held, for the drainer once it exists
/// ([`super::Drainer::restore_local`]).
#[derive(Debug, Default)]
pub struct LocalChanges(pub Vec<(BackendId, SystemTime)>);

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
                moved_aside: true,
                ..Restored::default()
            });
        }
    };
    let id = |b: &PersistedBackend| BackendId::new(&b.pool, &b.backend);
    let at = |ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Ok(Restored {
        drained: state
            .backends
            .iter()
            .filter(|b| b.admin != "active")
            .map(id)
            .collect(),
        local: state
            .backends
            .iter()
            .filter_map(|b| Some((id(b), at(b.local_since_ms?))))
            .collect(),
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
pub(super) struct PersistedState {
    pub(super) version: u32,
    pub(super) backends: Vec<PersistedBackend>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct PersistedBackend {
    pub(super) pool: String,
    pub(super) backend: String,
    pub(super) admin: String,
    /// `[fleet]`: since when (Unix milliseconds) its admin state is a local change (see
    /// `super::local`). Written only then, so a file without one reads in older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) local_since_ms: Option<u64>,
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
pub(super) fn write_atomically(path: &Path, state: &PersistedState) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
                local_since_ms: None,
                admin: "drained".into(),
            }],
        };
        write_atomically(&path, &state).unwrap();
        assert!(matches!(read_state(&path), Ok(Some(s)) if s == state));
        // Without a local change the file is what older versions write (and read).
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("local"), "{text}");
        // A local undrain under [fleet] is kept although the backend is active.
        let local = PersistedState {
            version: 1,
            backends: vec![PersistedBackend {
                pool: "rabbitmq".into(),
                backend: "rabbit-b".into(),
                local_since_ms: Some(1_700_000_000_000),
                admin: "active".into(),
            }],
        };
        write_atomically(&path, &local).unwrap();
        assert!(matches!(read_state(&path), Ok(Some(s)) if s == local));
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
}
