//! The server's part in an upgrade of warren itself (see `crate::handover`): in the old
//! process, collecting every listening socket (each worker's copy, and the admin API's) for
//! the new binary; in the new one, adopting what was handed over by listener name and address
//! and confirming "ready" once every listener serves. Stopping and draining after a hand-over
//! stay with `Server::run`; the exchange itself is `crate::handover`'s.

use super::*;

impl Server {
    /// In a process started by an upgrade: confirm "ready" to the old process on `incoming`
    /// once [`Server::run`] serves every listener. Until then upgrades of this one are refused.
    #[cfg(unix)]
    pub fn taking_over(&mut self, incoming: crate::handover::incoming::Incoming) {
        self.upgrade_tx.hold();
        self.taking_over = Some(incoming);
    }

    /// Tell the old process this one serves (see [`Server::taking_over`]).
    #[cfg(unix)]
    pub(super) fn confirm_taken_over(&mut self) {
        let Some(incoming) = self.taking_over.take() else {
            return;
        };
        match incoming.ready() {
            Ok(()) => tracing::info!("upgrade: serving every listener, told the old process"),
            // It may have given up (timeout) or died: this process serves anyway.
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: cannot tell the old process this one is ready")
            }
        }
        self.upgrade_tx.settle();
    }

    /// Hand every listening socket to the binary installed at this process's path.
    #[cfg(unix)]
    pub(super) async fn upgrade(
        &self,
        running: &HashMap<Arc<str>, RunningListener>,
    ) -> Result<Upgraded, UpgradeError> {
        tracing::info!("upgrade requested: starting the binary installed at warren's path");
        let sockets = self
            .handed_sockets(running)
            .map_err(|e| UpgradeError::Failed(format!("cannot copy the listening sockets: {e}")))?;
        let env = self.options.handover_env.clone();
        match crate::handover::upgrade::hand_over(sockets, env, crate::handover::READY_TIMEOUT)
            .await
        {
            Ok(done) => {
                tracing::info!(
                    new_pid = done.new_pid,
                    took_ms = done.took.as_millis() as u64,
                    "upgrade: the new process serves every listener"
                );
                Ok(Upgraded {
                    old_pid: std::process::id(),
                    new_pid: done.new_pid,
                    took: done.took,
                })
            }
            Err(reason) => {
                tracing::warn!(%reason, "upgrade failed; this process keeps every listener and connection");
                Err(UpgradeError::Failed(reason))
            }
        }
    }

    #[cfg(not(unix))]
    pub(super) async fn upgrade(
        &self,
        _running: &HashMap<Arc<str>, RunningListener>,
    ) -> Result<Upgraded, UpgradeError> {
        tracing::warn!("upgrade requested: not supported on this system");
        Err(UpgradeError::Unsupported)
    }

    /// Copies of every running listener's sockets (under its configured address, which the
    /// new config is matched against) and of the admin API's.
    #[cfg(unix)]
    fn handed_sockets(
        &self,
        running: &HashMap<Arc<str>, RunningListener>,
    ) -> std::io::Result<crate::handover::upgrade::Sockets> {
        let config = self.config.load();
        let mut sockets = crate::handover::upgrade::Sockets::default();
        for l in &config.listeners {
            let Some(r) = running.get(l.name.as_str()) else {
                continue;
            };
            let copies = r
                .sockets
                .iter()
                .map(std::net::TcpListener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            sockets.listeners.push((l.name.clone(), l.listen, copies));
        }
        if let (Some(admin), Some(socket)) = (&config.admin, &self.control.admin_socket) {
            sockets.admin = Some((admin.listen, socket.try_clone()?));
        }
        Ok(sockets)
    }
}

/// In the new process: give each configured listener the sockets handed over for it (by name
/// and address, else by address, see `crate::handover::protocol::match_handed`), into
/// `adopted`; returns the admin API's socket when its address is unchanged. Sockets no
/// listener takes are closed: the old process stops accepting on them too.
#[cfg(unix)]
pub(super) fn adopt_handed(
    config: &Config,
    workers: usize,
    handed: crate::handover::incoming::Handed,
    adopted: &mut HashMap<String, Vec<std::net::TcpListener>>,
) -> Result<Option<std::net::TcpListener>, ServerError> {
    let names: Vec<(String, SocketAddr)> = handed
        .listeners
        .iter()
        .map(|(name, addr, _)| (name.clone(), *addr))
        .collect();
    let mut sockets: Vec<Option<Vec<std::net::TcpListener>>> = handed
        .listeners
        .into_iter()
        .map(|(_, _, s)| Some(s))
        .collect();
    for (name, j) in crate::handover::protocol::match_handed(&config.listeners, &names) {
        let Some(socks) = sockets[j].take() else {
            continue;
        };
        let (from, addr) = &names[j];
        tracing::info!(listener = %name, from = %from, addr = %addr, sockets = socks.len(), "listener takes its sockets from the old process");
        let spread = spread(socks, workers).map_err(|source| ServerError::HandedOver {
            listener: name.clone(),
            addr: *addr,
            source,
        })?;
        adopted.insert(name, spread);
    }
    for (j, left) in sockets.iter().enumerate() {
        if left.is_some() {
            let (name, addr) = &names[j];
            tracing::info!(listener = %name, addr = %addr, "the old process's listener is not in this config: its sockets are closed");
        }
    }
    Ok(match (handed.admin, &config.admin) {
        (Some((addr, socket)), Some(admin)) if addr == admin.listen => Some(socket),
        _ => None,
    })
}

/// One socket per worker from the old process's (one per its worker): the same sockets, so a
/// connect queued on any of them is accepted here; copies fill in when this process runs more
/// workers. Fewer workers than sockets is refused: closing one would reset its queued connects.
#[cfg(unix)]
fn spread(
    mut sockets: Vec<std::net::TcpListener>,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let want = if cfg!(target_os = "linux") {
        workers.max(1)
    } else {
        1
    };
    if sockets.is_empty() || sockets.len() > want {
        return Err(std::io::Error::other(format!(
            "{} sockets for {want} workers: run the new process with --workers {}",
            sockets.len(),
            sockets.len().max(1)
        )));
    }
    let mut i = 0;
    while sockets.len() < want {
        let copy = sockets[i].try_clone()?;
        sockets.push(copy);
        i += 1;
    }
    Ok(sockets)
}
