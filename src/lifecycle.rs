//! How the server and what supervises it talk: [`Lifecycle`] changes the server announces to a
//! service manager (systemd, the Windows service manager) through a [`LifecycleHook`], and the
//! [`Reloader`] that asks a running server to re-read its config (SIGHUP, the admin API). A leaf,
//! so the server, the admin API and the service managers' modules meet here instead of in each
//! other.

use std::sync::Arc;

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
