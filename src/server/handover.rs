//! The server's part in an upgrade of warren itself (see `crate::handover`): in the old
//! process, collecting every listening socket (each worker's copy, and the admin API's) and
//! the backends' state for the new binary, then pausing every connection (see
//! `proxy::pause`) and sending them over in batches, resuming them all if the new process
//! fails; in the new one, adopting what was handed over (listeners by name and address, the
//! backends' state before serving, then the connections and counters) and confirming each
//! step. Stopping after a hand-over stays with `Server::run`; the exchange itself is
//! `crate::handover`'s.

use super::*;
#[cfg(unix)]
use crate::handover::upgrade::Failure;
#[cfg(unix)]
use proxy::pause::Parked;
#[cfg(unix)]
use tokio::sync::oneshot;

/// What the new process receives from the old one after "ready": the channel back (to
/// confirm) and the connections, or why there are none.
#[cfg(unix)]
pub(super) type Received = (
    crate::handover::incoming::Incoming,
    Result<crate::handover::incoming::Connections, crate::handover::channel::ChannelError>,
);

/// How long the old process waits for its connections to pause before it sends what it has.
#[cfg(unix)]
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the old process waits for connections still being set up (connecting to their
/// backend, a PROXY header to come): past it they stay, and end within its grace period.
#[cfg(unix)]
const SETUP_WAIT: Duration = Duration::from_secs(1);

/// Stop every accept loop (the listening sockets stay open: the new process accepts on them).
#[cfg(unix)]
async fn pause_accepting(running: &mut HashMap<Arc<str>, RunningListener>) {
    for r in running.values_mut() {
        r.stop.cancel();
        for accept_loop in std::mem::take(&mut r.loops) {
            let _ = accept_loop.await;
        }
    }
}

/// Where the batch starting at `from` ends: at most `max` connections and about `max_bytes` of
/// bytes in flight (always at least one connection).
#[cfg(unix)]
fn batch_end(all: &[Parked], from: usize, max: usize, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let mut end = from;
    while end < all.len() && end - from < max {
        let c = &all[end].connection;
        bytes += c.to_backend.len() + c.to_client.len();
        if bytes > max_bytes && end > from {
            break;
        }
        end += 1;
    }
    end
}

/// Send one batch of parked connections with their sockets.
#[cfg(unix)]
fn send_batch(
    handing: &mut crate::handover::upgrade::Handing,
    batch: &[Parked],
    deadline: std::time::Instant,
) -> Result<(), Failure> {
    let descriptions = batch.iter().map(|p| p.connection.clone()).collect();
    let fds: Vec<_> = batch.iter().flat_map(Parked::fds).collect();
    handing.send_connections(descriptions, &fds, deadline)
}

impl Server {
    /// In a process started by an upgrade: confirm "ready" to the old process on `incoming`
    /// once [`Server::run`] serves every listener, then adopt the connections it hands over.
    /// Until then upgrades of this one are refused.
    #[cfg(unix)]
    pub fn taking_over(&mut self, incoming: crate::handover::incoming::Incoming) {
        self.upgrade_tx.hold();
        self.taking_over = Some(incoming);
    }

    /// Tell the old process this one serves (see [`Server::taking_over`]), and start
    /// receiving its connections: they arrive on the returned channel.
    #[cfg(unix)]
    pub(super) fn confirm_taken_over(&mut self) -> Option<oneshot::Receiver<Received>> {
        let mut incoming = self.taking_over.take()?;
        if let Err(e) = incoming.ready() {
            // It may have given up (timeout) or died: this process serves anyway.
            tracing::warn!(error = %e, "upgrade: cannot tell the old process this one is ready");
            self.upgrade_tx.settle();
            self.follow_carried_drains();
            return None;
        }
        tracing::info!("upgrade: serving every listener, told the old process");
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("warren-adopt".into())
            .spawn(move || {
                let received = incoming.receive_connections();
                let _ = tx.send((incoming, received));
            })
            .ok()?;
        Some(rx)
    }

    /// Take over what the old process handed: its counters, then every connection, confirmed
    /// to the old process before one is forwarded (it lets go of them on that answer).
    #[cfg(unix)]
    pub(super) async fn adopt_connections(
        &self,
        (incoming, received): Received,
        running: &HashMap<Arc<str>, RunningListener>,
        connections: &TaskTracker,
    ) {
        self.upgrade_tx.settle();
        let received = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: no connections from the old process; it keeps its own");
                self.follow_carried_drains();
                return;
            }
        };
        let config = self.config.load_full();
        self.exposition
            .carry(self.still_counted(received.counters, &config));
        let workers = self.workers.handles();
        let mut listeners: HashMap<String, proxy::pause::AdoptingListener> = HashMap::new();
        let mut adopted = Vec::with_capacity(received.connections.len());
        let mut refused = 0usize;
        for (i, (handed, sockets)) in received.connections.into_iter().enumerate() {
            let listener = listeners.entry(handed.listener.clone()).or_insert_with(|| {
                let l = config.listeners.iter().find(|l| l.name == handed.listener);
                proxy::pause::AdoptingListener::new(
                    &self.ctx,
                    &handed.listener,
                    running
                        .get(handed.listener.as_str())
                        .map(|r| r.limit.clone()),
                    l.map_or(crate::config::DEFAULT_IDLE_TIMEOUT, |l| l.idle_timeout),
                )
            });
            match proxy::pause::adopt(
                &self.ctx,
                handed,
                sockets,
                listener,
                &workers[i % workers.len()],
            ) {
                Ok(a) => adopted.push(a),
                Err(e) => {
                    refused += 1;
                    tracing::warn!(error = %e, "upgrade: a handed-over connection cannot be served here");
                }
            }
        }
        let count = adopted.len() + refused;
        // "adopted", then the old process's go: only then is a byte forwarded here (it may
        // have given up meanwhile and resumed them itself).
        let confirmed = tokio::task::spawn_blocking(move || {
            incoming.adopted(count).and_then(|i| i.committed())
        })
        .await;
        match confirmed {
            Ok(Ok(())) => {
                for a in adopted {
                    a.start(connections);
                }
                tracing::info!(
                    connections = count - refused,
                    refused,
                    "upgrade: adopted {} connections",
                    count - refused
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade: the old process did not let go of its connections; they stay there");
            }
            Err(e) => tracing::warn!(error = %e, "upgrade: confirming the connections failed"),
        }
        self.follow_carried_drains();
    }

    /// The carried counters whose series still exist here: a listener, pool or backend this
    /// config does not have is not exported again.
    #[cfg(unix)]
    fn still_counted(
        &self,
        counters: Vec<crate::metrics::CounterSample>,
        config: &Config,
    ) -> Vec<crate::metrics::CounterSample> {
        let snapshot = self.ctx.routing.load();
        counters
            .into_iter()
            .filter(|c| {
                let label = |name: &str| {
                    c.labels
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                let listener_ok = label("listener")
                    .map_or(true, |l| config.listeners.iter().any(|x| x.name == l));
                let pool = label("pool").map(|p| snapshot.pools.get(p));
                let pool_ok = !matches!(pool, Some(None));
                let backend_ok = match (pool.flatten(), label("backend")) {
                    (Some(p), Some(b)) => p.backend(b).is_some(),
                    _ => true,
                };
                listener_ok && pool_ok && backend_ok
            })
            .collect()
    }

    /// Hand every listening socket to the binary installed at this process's path, then every
    /// established connection. On any failure the new process is stopped and this one goes on
    /// serving: connections resume, accepting starts again.
    #[cfg(unix)]
    pub(super) async fn upgrade(
        &self,
        running: &mut HashMap<Arc<str>, RunningListener>,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Result<Upgraded, UpgradeError> {
        use crate::handover::{upgrade::hand_over, READY_TIMEOUT};
        tracing::info!("upgrade requested: starting the binary installed at warren's path");
        let sockets = self
            .handed_sockets(running)
            .map_err(|e| UpgradeError::Failed(format!("cannot copy the listening sockets: {e}")))?;
        let env = self.options.handover_env.clone();
        // Under systemd the new process must be systemd's child to be its main process.
        let orphan = env.iter().any(|(name, _)| name == "NOTIFY_SOCKET");
        let backends = self.backend_states();
        let mut handing = match hand_over(sockets, backends, env, orphan, READY_TIMEOUT).await {
            Ok(handing) => handing,
            Err(reason) => {
                tracing::warn!(%reason, "upgrade failed; this process keeps every listener and connection");
                return Err(UpgradeError::Failed(reason));
            }
        };
        let serving = handing.started.elapsed();
        tracing::info!(
            new_pid = handing.new_pid,
            took_ms = serving.as_millis() as u64,
            "upgrade: the new process serves every listener; handing over the connections"
        );
        pause_accepting(running).await;
        let paused = std::time::Instant::now();
        match self.hand_connections(&mut handing, connections).await {
            Ok((parked, left)) => {
                let count = parked.len();
                // The new process probes, follows drains and runs hooks from now on: here the
                // connections leaving would look like drains completing.
                self.health.retire();
                self.drainer.retire();
                for p in parked {
                    p.taken();
                }
                let (new_pid, took) = (handing.new_pid, handing.started.elapsed());
                tracing::info!(
                    new_pid,
                    connections = count,
                    left,
                    paused_ms = paused.elapsed().as_millis() as u64,
                    took_ms = took.as_millis() as u64,
                    "upgrade: handed over {count} connections"
                );
                Ok(Upgraded {
                    old_pid: std::process::id(),
                    new_pid,
                    took,
                    connections: count,
                    left,
                })
            }
            Err((failure, parked)) => {
                let reason = handing.fail(failure, READY_TIMEOUT).await;
                // The new process has exited: resuming cannot race it.
                self.ctx.pause.resume_all();
                drop(parked);
                self.resume_accepting(running, stop_accepting, accept_loops, connections);
                tracing::warn!(%reason, "upgrade failed; this process resumed every connection and accepts again");
                Err(UpgradeError::Failed(reason))
            }
        }
    }

    #[cfg(not(unix))]
    pub(super) async fn upgrade(
        &self,
        _running: &mut HashMap<Arc<str>, RunningListener>,
        _stop_accepting: &CancellationToken,
        _accept_loops: &TaskTracker,
        _connections: &TaskTracker,
    ) -> Result<Upgraded, UpgradeError> {
        tracing::warn!("upgrade requested: not supported on this system");
        Err(UpgradeError::Unsupported)
    }

    /// Pause every connection and send them to the new process in batches as they park, then
    /// the counters; returns the parked connections once the new process holds them all, and
    /// how many stay here (closing ones). On failure the parked ones come back with it, to
    /// resume once the new process is stopped.
    #[cfg(unix)]
    async fn hand_connections(
        &self,
        handing: &mut crate::handover::upgrade::Handing,
        connections: &TaskTracker,
    ) -> Result<(Vec<Parked>, usize), (Failure, Vec<Parked>)> {
        use crate::handover::upgrade::{BATCH, BATCH_BYTES};
        let started = std::time::Instant::now();
        let deadline = started + COLLECT_TIMEOUT;
        let mut parked = self.ctx.pause.pause_all(&self.ctx.routing);
        let mut all: Vec<Parked> = Vec::new();
        let mut sent = 0;
        let mut left = 0;
        loop {
            let waited = tokio::time::timeout(Duration::from_millis(2), parked.recv()).await;
            if let Ok(Some(p)) = waited {
                all.push(p);
            }
            while let Ok(p) = parked.try_recv() {
                all.push(p);
            }
            // Connections still being set up (connecting, a PROXY header to come) are waited
            // for a moment only: every parked one waits with them.
            let setting_up = if started.elapsed() >= SETUP_WAIT {
                self.ctx.pause.setting_up()
            } else {
                0
            };
            let staying = self.ctx.pause.closing() + setting_up;
            let everyone = connections.len() <= all.len() + staying;
            let timed_out = std::time::Instant::now() >= deadline;
            if timed_out && !everyone {
                left = connections.len().saturating_sub(all.len());
                tracing::warn!(left, "upgrade: connections did not pause in time; they stay in this process until they end or the grace period does");
            } else if everyone && setting_up > 0 {
                tracing::info!(setting_up, "upgrade: connections still being set up stay in this process until they end or the grace period does");
            }
            // Full batches as they fill; the rest once everyone is in.
            while sent < all.len() {
                let end = batch_end(&all, sent, BATCH, BATCH_BYTES);
                if end - sent < BATCH && !(everyone || timed_out) {
                    break;
                }
                if let Err(f) = send_batch(handing, &all[sent..end], deadline + COLLECT_TIMEOUT) {
                    return Err((f, all));
                }
                sent = end;
            }
            if everyone || timed_out {
                break;
            }
        }
        self.ctx.pause.resume_all();
        left = left.max(connections.len().saturating_sub(all.len()));
        let counters = self.exposition.counters();
        match handing
            .finish(counters, all.len(), deadline + COLLECT_TIMEOUT)
            .await
        {
            Ok(()) => Ok((all, left)),
            Err(f) => Err((f, all)),
        }
    }

    /// Every backend's health and drain state, for the new process to start from.
    #[cfg(unix)]
    fn backend_states(&self) -> Vec<crate::handover::protocol::BackendState> {
        let unix_ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let snapshot = self.ctx.routing.load();
        let mut states = Vec::new();
        for pool in snapshot.pools.values() {
            for b in &pool.backends {
                let seen = self.health.backend(&pool.name, &b.name);
                states.push(crate::handover::protocol::BackendState {
                    pool: pool.name.to_string(),
                    backend: b.name.to_string(),
                    addr: b.addr,
                    health: b.health,
                    health_changed_ms: seen.as_ref().map_or(0, |h| unix_ms(h.changed_at)),
                    health_reason: seen.and_then(|h| h.changed_reason),
                    admin: b.admin,
                    drain_deadline_ms: self.drainer.deadline(&pool.name, &b.name).map(unix_ms),
                    local_since_ms: self
                        .drainer
                        .local_change(&crate::state::BackendId::new(&pool.name, &b.name))
                        .map(unix_ms),
                });
            }
        }
        states
    }

    /// In the new process, before it serves: every backend's health and drain state as the
    /// old process had them (a drain's deadline to the millisecond). A verdict on another
    /// address than this config's is not taken. The drains are followed once the connections
    /// are adopted ([`Server::follow_carried_drains`]).
    #[cfg(unix)]
    pub(super) fn carry_backends(
        &mut self,
        backends: Vec<crate::handover::protocol::BackendState>,
    ) {
        let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let snapshot = self.ctx.routing.load_full();
        for b in backends {
            let id = crate::state::BackendId::new(&b.pool, &b.backend);
            let addr = snapshot
                .pools
                .get(b.pool.as_str())
                .and_then(|p| p.backend(&b.backend))
                .map(|r| r.addr);
            if addr == Some(b.addr) {
                self.health
                    .carry_over(&id, b.health, at(b.health_changed_ms), b.health_reason);
            }
            self.drainer
                .carry_over(&id, b.admin, b.drain_deadline_ms.map(at));
            if b.admin == crate::state::AdminState::Draining {
                self.carried_drains.push(id);
            }
        }
    }

    /// Start following the drains carried over, now that their connections are here.
    #[cfg(unix)]
    pub(super) fn follow_carried_drains(&self) {
        for id in &self.carried_drains {
            self.drainer.follow(id);
        }
    }

    /// Start accepting again on every running listener after a failed upgrade paused it
    /// (connections already open keep their `max_connections` slots).
    #[cfg(unix)]
    fn resume_accepting(
        &self,
        running: &mut HashMap<Arc<str>, RunningListener>,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) {
        for (name, r) in running.iter_mut() {
            let sockets = match take_over(&self.workers, r) {
                Ok(sockets) => sockets,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "cannot accept again on the listening socket after a failed upgrade");
                    continue;
                }
            };
            r.stop = stop_accepting.child_token();
            let limits = proxy::Limits {
                connections: r.limit.clone(),
                pending_headers: Arc::default(),
            };
            r.loops = self.spawn_accept_loops(
                name.clone(),
                sockets,
                limits,
                &r.stop,
                accept_loops,
                connections,
            );
        }
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
