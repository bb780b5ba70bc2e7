//! How the server and what supervises it talk: [`Lifecycle`] changes the server announces to a
//! service manager (systemd, the Windows service manager) through a [`LifecycleHook`], and the
//! [`Reloader`] that asks a running server to re-read its config (SIGHUP, the admin API), and the
//! [`Upgrader`] that asks it to hand over to a new binary (SIGUSR2, `POST /v1/upgrade`). A leaf,
//! so the server, the admin API and the service managers' modules meet here instead of in each
//! other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// A change in the server's life that a service manager wants to hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Every listener accepts connections: at start and after each reload (ok or failed).
    Ready { status: String },
    /// A reload begins.
    Reloading,
    /// A stop begins: no new connections from now on.
    Stopping { status: String },
    /// The data plane's runtime still runs tasks (sent every `Options::alive_every`).
    Alive,
    /// An upgrade handed the listeners to process `pid`, which serves now; this process drains
    /// its connections and exits (systemd hears `MAINPID=pid`, not `STOPPING=1`).
    HandedOver { pid: u32 },
}

/// Receives [`Lifecycle`] changes; called on the server's tasks, so it must not block for long.
#[derive(Clone)]
pub struct LifecycleHook(pub Arc<dyn Fn(&Lifecycle) + Send + Sync>);

impl std::fmt::Debug for LifecycleHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LifecycleHook")
    }
}

/// One reload request: the channel its outcome goes back on.
pub(crate) type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Asks a running server to re-read its config file (SIGHUP, `POST /v1/reload`).
#[derive(Clone)]
pub struct Reloader(mpsc::UnboundedSender<ReloadRequest>);

impl Reloader {
    /// A reloader and the receiving end the server answers requests on.
    pub(crate) fn channel() -> (Reloader, mpsc::UnboundedReceiver<ReloadRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reloader(tx), rx)
    }

    /// Reload and wait for the outcome: a summary of the new config, or why nothing changed.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(tx)
            .map_err(|_| "warren is stopping".to_owned())?;
        rx.await.map_err(|_| "warren is stopping".to_owned())?
    }
}

/// An upgrade that worked: the new process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgraded {
    pub old_pid: u32,
    pub new_pid: u32,
    /// From the request to the new process holding every connection.
    pub took: Duration,
    /// Established connections the new process forwards from now on.
    pub connections: usize,
    /// Connections left in the old process: those warren was closing (a drain deadline, a
    /// rebalance), and any that did not pause in time; they end there.
    pub left: usize,
}

/// Why an upgrade did not happen; the running process serves on in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress: wait for its outcome")]
    InProgress,
    #[error("upgrading warren in place needs Unix (descriptor passing); on this system stop and start it")]
    Unsupported,
    #[error("warren is stopping")]
    Stopping,
    #[error("upgrade failed, this process keeps serving: {0}")]
    Failed(String),
}

/// One upgrade request: the channel its outcome goes back on.
pub(crate) type UpgradeRequest = oneshot::Sender<Result<Upgraded, UpgradeError>>;

/// Asks a running server to hand its listeners to the binary installed at its path (SIGUSR2,
/// `POST /v1/upgrade`). One upgrade at a time: a request while one runs is refused at once.
#[derive(Clone)]
pub struct Upgrader {
    tx: mpsc::UnboundedSender<UpgradeRequest>,
    /// Set while an upgrade runs (and for good once one worked: this process is stopping).
    busy: Arc<AtomicBool>,
}

impl Upgrader {
    /// An upgrader and the receiving end the server answers requests on.
    pub(crate) fn channel() -> (Upgrader, mpsc::UnboundedReceiver<UpgradeRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let busy = Arc::new(AtomicBool::new(false));
        (Upgrader { tx, busy }, rx)
    }

    /// Refuse upgrades until [`Upgrader::settle`]: a process still taking over from another.
    pub(crate) fn hold(&self) {
        self.busy.store(true, Ordering::SeqCst);
    }

    /// Upgrade and wait for the outcome.
    pub async fn upgrade(&self) -> Result<Upgraded, UpgradeError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(UpgradeError::InProgress);
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).is_err() {
            return Err(UpgradeError::Stopping);
        }
        let outcome = rx.await.unwrap_or(Err(UpgradeError::Stopping));
        if outcome.is_err() {
            self.settle();
        }
        outcome
    }

    /// Allow upgrades again (after a failed one, or once a process that took over is ready).
    pub(crate) fn settle(&self) {
        self.busy.store(false, Ordering::SeqCst);
    }
}
