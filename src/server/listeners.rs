//! Listening sockets across the server's life: binding each listener (one socket per worker
//! with SO_REUSEPORT, or the socket systemd passed in), registering them with the workers'
//! event loops, starting their accept loops, and what a reload does to them ([`diff_listeners`]:
//! keep, resize, rename or swap with the open socket handed over, widen or narrow with a
//! rollback, add, remove).

use super::*;

/// A listener the server runs: its socket's address and how to stop or resize it.
pub(super) struct RunningListener {
    pub(super) listen: SocketAddr,
    pub(super) max_connections: usize,
    pub(super) limit: Arc<Semaphore>,
    /// Cancelled when a reload removes the listener (its connections continue).
    pub(super) stop: CancellationToken,
    /// A copy (dup) of each listening socket, so a reload that renames the listener, or swaps
    /// two listeners' ports, hands the open socket to the new name: not one connect refused.
    pub(super) sockets: Vec<std::net::TcpListener>,
    /// The accept loops, awaited when a reload must release the address (widening
    /// `127.0.0.1:P` to `0.0.0.0:P`): the socket closes once they have ended.
    pub(super) loops: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningListener {
    /// Stop accepting and close the listening socket (open connections continue).
    async fn release(self) {
        self.stop.cancel();
        for accept_loop in self.loops {
            let _ = accept_loop.await;
        }
        drop(self.sockets);
    }
}

/// Copies of a running listener's sockets, registered with the workers' event loops.
pub(super) fn take_over(
    workers: &Workers,
    from: &RunningListener,
) -> std::io::Result<Vec<TcpListener>> {
    let copies = from
        .sockets
        .iter()
        .map(std::net::TcpListener::try_clone)
        .collect::<std::io::Result<Vec<_>>>()?;
    register(workers, copies)
}

/// Two listening addresses that cannot both be bound: the same port, and the same IP or
/// either one the wildcard of the same family.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Listen backlog; the kernel caps it at `net.core.somaxconn`.
pub(super) const BACKLOG: i32 = 4096;

pub(super) fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = tcp_socket(addr, false)?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A bound, non-blocking TCP socket, not yet listening.
pub(super) fn tcp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted warren bind while old connections sit in TIME_WAIT (Unix meaning only).
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        // "[::]:5672" means IPv6 only, as in NGINX; IPv4 gets its own listener.
        socket.set_only_v6(true)?;
    }
    // AMQP frames are small and latency matters: no Nagle. Accepted sockets inherit it on Linux.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The listening sockets of one listener: on Linux one per worker, bound with `SO_REUSEPORT`
/// so the kernel spreads connections over the workers; elsewhere one.
pub(super) fn bind_listener(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if !cfg!(target_os = "linux") || workers <= 1 {
        return Ok(vec![bind_tcp(addr)?]);
    }
    // SO_REUSEPORT would also let a second warren of the same user bind this address and
    // silently take part of the connections: a plain bind first fails as usual when the
    // address is taken.
    if addr.port() != 0 {
        drop(tcp_socket(addr, false)?);
    }
    let mut sockets: Vec<std::net::TcpListener> = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let socket = tcp_socket(addr, true)?;
        socket.listen(BACKLOG)?;
        let socket: std::net::TcpListener = socket.into();
        // Port 0: the others join the port the kernel picked for the first.
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One listening socket per worker from a socket passed by systemd: on Linux every worker
/// accepts on a copy of it; elsewhere worker 0 accepts and hands connections out.
#[cfg(unix)]
pub(super) fn share_inherited(
    socket: std::net::TcpListener,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let copies = if cfg!(target_os = "linux") {
        workers.max(1)
    } else {
        1
    };
    let mut sockets = Vec::with_capacity(copies);
    for _ in 1..copies {
        sockets.push(socket.try_clone()?);
    }
    sockets.insert(0, socket);
    Ok(sockets)
}

/// Register socket `i` with worker `i`'s event loop.
pub(super) fn register(
    workers: &Workers,
    sockets: Vec<std::net::TcpListener>,
) -> std::io::Result<Vec<TcpListener>> {
    sockets
        .into_iter()
        .zip(workers.handles().iter())
        .map(|(socket, worker)| {
            let _on_worker = worker.enter();
            TcpListener::from_std(socket)
        })
        .collect()
}

/// Make a socket passed by systemd serve like one warren bound: non-blocking, the same backlog.
#[cfg(unix)]
pub(super) fn prepare_inherited(
    socket: crate::systemd::InheritedSocket,
) -> std::io::Result<std::net::TcpListener> {
    socket.socket.set_nonblocking(true)?;
    socket.socket.set_nodelay(true)?;
    // listen(2) again on a listening socket only changes its backlog.
    socket.socket.listen(BACKLOG)?;
    Ok(socket.socket.into())
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_listener(
        &self,
        running: &mut HashMap<Arc<str>, RunningListener>,
        name: Arc<str>,
        sockets: Vec<TcpListener>,
        max_connections: usize,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) {
        let Some(Ok(listen)) = sockets.first().map(TcpListener::local_addr) else {
            return;
        };
        tracing::info!(listener = %name, addr = %listen, sockets = sockets.len(), "listening");
        let stop = stop_accepting.child_token();
        let limit = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
        let limits = proxy::Limits {
            connections: limit.clone(),
            pending_headers: Arc::default(),
        };
        let mut copies = Vec::with_capacity(sockets.len());
        for socket in &sockets {
            match socket2::SockRef::from(socket).try_clone() {
                Ok(copy) => copies.push(copy.into()),
                // Only a later rename of this listener needs it: it would bind afresh.
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "cannot keep a copy of the listening socket")
                }
            }
        }
        let loops = self.spawn_accept_loops(
            name.clone(),
            sockets,
            limits,
            &stop,
            accept_loops,
            connections,
        );
        running.insert(
            name,
            RunningListener {
                listen,
                max_connections,
                limit,
                stop,
                sockets: copies,
                loops,
            },
        );
    }

    /// One accept loop per socket, each on its worker, until `stop`.
    pub(super) fn spawn_accept_loops(
        &self,
        name: Arc<str>,
        sockets: Vec<TcpListener>,
        limits: proxy::Limits,
        stop: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let workers = self.workers.handles();
        // One socket for several workers (outside Linux): its accept loop hands connections out.
        let spread = (sockets.len() < workers.len()).then(|| workers.clone());
        sockets
            .into_iter()
            .zip(workers.iter())
            .map(|(socket, worker)| {
                accept_loops.spawn_on(
                    proxy::serve(
                        socket,
                        name.clone(),
                        limits.clone(),
                        self.ctx.clone(),
                        stop.clone(),
                        connections.clone(),
                        spread.clone(),
                    ),
                    worker,
                )
            })
            .collect()
    }

    /// The sockets of every listener a reload adds or moves, before anything is applied; on an
    /// error every running listener is as it was.
    ///
    /// - The address is open under a name the reload removes (a rename, two listeners swapping
    ///   ports): the socket is taken over, so not one connect is refused.
    /// - The address overlaps one the reload gives up (`127.0.0.1:P` widened to `0.0.0.0:P`,
    ///   or narrowed back): the old socket must close before the new one can bind, so that
    ///   one listener is closed for the moment between the two; if the bind then fails, the
    ///   old address is bound again.
    /// - Otherwise a fresh bind: a port in use fails the whole reload.
    pub(super) async fn open_listeners(
        &self,
        plan: &ListenerPlan,
        running: &mut HashMap<Arc<str>, RunningListener>,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Result<Vec<(Arc<str>, Vec<TcpListener>, usize)>, String> {
        let giving_up = |running: &HashMap<Arc<str>, RunningListener>,
                         same: &dyn Fn(SocketAddr) -> bool| {
            plan.remove
                .iter()
                .find(|n| running.get(n.as_str()).is_some_and(|r| same(r.listen)))
                .cloned()
        };
        let mut bound = Vec::new();
        // Released listeners, to bind again if a later step fails: (name, address, max).
        let mut released: Vec<(Arc<str>, SocketAddr, usize)> = Vec::new();
        let mut failure = None;
        for l in &plan.add {
            let fail = |e: std::io::Error| {
                format!("listener {}: cannot listen on {}: {e}", l.name, l.listen)
            };
            let opened = if let Some(owner) = giving_up(running, &|a| a == l.listen) {
                tracing::info!(listener = %l.name, from = %owner, addr = %l.listen, "listener takes over the open socket");
                take_over(&self.workers, &running[owner.as_str()]).map_err(fail)
            } else if let Some(owner) = giving_up(running, &|a| overlaps(a, l.listen)) {
                let old = running.remove(owner.as_str()).expect("found just above");
                tracing::info!(listener = %l.name, from = %owner, old = %old.listen, new = %l.listen,
                    "listener address overlaps the old one: closing it to bind the new one");
                released.push((Arc::from(owner.as_str()), old.listen, old.max_connections));
                old.release().await;
                bind_listener(l.listen, self.workers.len())
                    .and_then(|sockets| register(&self.workers, sockets))
                    .map_err(fail)
            } else {
                bind_listener(l.listen, self.workers.len())
                    .and_then(|sockets| register(&self.workers, sockets))
                    .map_err(fail)
            };
            match opened {
                Ok(sockets) => bound.push((Arc::from(l.name.as_str()), sockets, l.max_connections)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(failure) = failure else {
            return Ok(bound);
        };
        drop(bound);
        for (name, listen, max) in released {
            match bind_listener(listen, self.workers.len())
                .and_then(|sockets| register(&self.workers, sockets))
            {
                Ok(sockets) => self.start_listener(
                    running,
                    name,
                    sockets,
                    max,
                    stop_accepting,
                    accept_loops,
                    connections,
                ),
                Err(e) => tracing::error!(listener = %name, addr = %listen, error = %e,
                    "reload failed and the listener's old address could not be bound again"),
            }
        }
        Err(failure)
    }
}

/// Change a running listener's `max_connections` without touching its open connections.
pub(super) fn resize(listener: &mut RunningListener, max: usize) {
    let max = max.min(Semaphore::MAX_PERMITS);
    if max > listener.max_connections {
        listener.limit.add_permits(max - listener.max_connections);
    } else if max < listener.max_connections {
        // Permits held by open connections come back over time; take the surplus as they do.
        let (limit, surplus) = (
            listener.limit.clone(),
            (listener.max_connections - max) as u32,
        );
        tokio::spawn(async move {
            if let Ok(permits) = limit.acquire_many_owned(surplus).await {
                permits.forget();
            }
        });
    }
    listener.max_connections = max;
}

/// What a reload does to listeners (pure): a listener is kept when its name and address are
/// unchanged (its socket stays open, so no connection is refused); otherwise it is replaced.
#[derive(Debug, Default, PartialEq)]
pub struct ListenerPlan {
    pub add: Vec<crate::config::ListenerConfig>,
    pub remove: Vec<String>,
}

/// Compare the listeners of two configs.
pub fn diff_listeners(old: &Config, new: &Config) -> ListenerPlan {
    let mut plan = ListenerPlan::default();
    for o in &old.listeners {
        if !new
            .listeners
            .iter()
            .any(|n| n.name == o.name && n.listen == o.listen)
        {
            plan.remove.push(o.name.clone());
        }
    }
    for n in &new.listeners {
        if !old
            .listeners
            .iter()
            .any(|o| o.name == n.name && o.listen == n.listen)
        {
            plan.add.push(n.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerConfig, PoolConfig};

    fn config(listeners: &[(&str, &str)]) -> Config {
        Config {
            source: None,
            admin: None,
            listeners: listeners
                .iter()
                .map(|(name, addr)| ListenerConfig::default_for(name, addr.parse().unwrap(), "p"))
                .collect(),
            pools: Vec::<PoolConfig>::new(),
            hooks: vec![],
            fleet: None,
            resolver: Default::default(),
        }
    }

    #[test]
    fn listener_diff_keeps_unchanged_sockets() {
        let old = config(&[
            ("a", "127.0.0.1:5672"),
            ("b", "127.0.0.1:5673"),
            ("c", "127.0.0.1:5674"),
        ]);
        let new = config(&[
            ("a", "127.0.0.1:5672"),
            ("b", "127.0.0.1:6000"),
            ("d", "127.0.0.1:5675"),
        ]);
        let plan = diff_listeners(&old, &new);
        assert_eq!(plan.remove, vec!["b".to_owned(), "c".to_owned()]);
        let added: Vec<&str> = plan.add.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(added, vec!["b", "d"]);
        assert_eq!(diff_listeners(&old, &old), ListenerPlan::default());
    }
}
