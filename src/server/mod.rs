//! Putting the process together: bind every listener (all or nothing), build the shared routing
//! snapshot and the data plane, start the admin server, run the accept loops, and stop gracefully
//! (stop accepting → let connections finish for the grace period → close the rest). It owns the
//! order of start-up and shutdown; what each part does lives in its own module. The listening
//! sockets themselves (binding, hand-over across a reload) are in `listeners`; handing them to
//! a new binary on an upgrade, and adopting them in that binary, in `handover`. Every module's
//! metric families are registered once per process into one registry and handed to their
//! owners in `metrics`, which also holds the reload counter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, Secret};
use crate::drain::Drainer;
use crate::health::Controller;
use crate::hooks::Hooks;
use crate::lifecycle::{
    Lifecycle, LifecycleHook, ReloadRequest, Reloader, UpgradeError, UpgradeRequest, Upgraded,
    Upgrader,
};
use crate::net::ByteDirection;
use crate::proxy::metrics::SpliceFallback;
use crate::proxy::{self, forward::Plane, Context};
use crate::rebalance::Rebalancer;
use crate::state::Routing;
use crate::workers::Workers;

mod handover;
mod listeners;
mod metrics;

use listeners::*;
pub use listeners::{diff_listeners, ListenerPlan};
use metrics::{ProcessMetrics, ReloadMetrics, ReloadResult};

/// How a server runs, beyond its config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long open connections may continue after a stop signal before they are closed.
    pub shutdown_grace: Duration,
    /// Use splice(2) on Linux (else always the copy path).
    pub splice: bool,
    /// Pipes leased at once, at most.
    pub max_pipes: usize,
    /// How long a backend stays out after a failed connect when no probe watches it.
    pub passive_hold_down: Duration,
    /// The file a reload re-reads (`None`: started from flags, nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Told when the server is ready, reloads, stops (systemd, the Windows service manager).
    pub lifecycle: Option<LifecycleHook>,
    /// Send [`Lifecycle::Alive`] this often while the server runs (systemd's watchdog).
    pub alive_every: Option<Duration>,
    /// Data plane workers (threads, each with its own event loop); at least one.
    pub workers: usize,
    /// Added to the environment of the process an upgrade starts: what warren removed from its
    /// own at start-up but the new process needs (systemd's `NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub handover_env: Vec<(String, String)>,
}

/// Default grace period for open connections on SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Options {
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            splice: true,
            #[cfg(target_os = "linux")]
            max_pipes: proxy::splice::DEFAULT_MAX_LEASED,
            #[cfg(not(target_os = "linux"))]
            max_pipes: 0,
            passive_hold_down: crate::config::DEFAULT_HOLD_DOWN,
            config_path: None,
            lifecycle: None,
            alive_every: None,
            workers: crate::workers::default_count(),
            handover_env: Vec::new(),
        }
    }
}

/// Start-up failures; each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "listener {listener}: cannot serve on the sockets from the old process ({addr}): {source}"
    )]
    HandedOver {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {listener}: cannot serve on the socket from systemd ({addr}): {source}")]
    Inherited {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin: cannot read token_file {file}: {reason}")]
    Token { file: PathBuf, reason: String },
    #[error("admin: {0}")]
    StateFile(#[from] crate::drain::StateFileError),
    #[error("cannot start the data plane's worker threads: {0}")]
    Workers(#[source] std::io::Error),
    #[error("admin: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server whose sockets are bound and which is ready to [`Server::run`].
pub struct Server {
    /// Name, one socket per worker (index = worker; one socket on worker 0 outside Linux),
    /// `max_connections`.
    listeners: Vec<(Arc<str>, Vec<TcpListener>, usize)>,
    workers: Arc<Workers>,
    /// The config in force; the admin API reads it, a reload replaces it.
    config: Arc<ArcSwap<Config>>,
    reload_tx: Reloader,
    reload_rx: mpsc::UnboundedReceiver<ReloadRequest>,
    upgrade_tx: Upgrader,
    upgrade_rx: mpsc::UnboundedReceiver<UpgradeRequest>,
    /// In a process started by an upgrade: the channel "ready" is confirmed on.
    #[cfg(unix)]
    taking_over: Option<crate::handover::incoming::Incoming>,
    /// In a process started by an upgrade: the drains carried over, followed once their
    /// connections are adopted.
    #[cfg(unix)]
    carried_drains: Vec<crate::state::BackendId>,
    ctx: Arc<Context>,
    health: Arc<Controller>,
    drainer: Arc<Drainer>,
    control: Control,
    options: Options,
    /// The registry every module's families are registered in (`/metrics`).
    exposition: Arc<crate::metrics::Metrics>,
    /// Counts each reload `run` handles.
    reloads: ReloadMetrics,
    /// Fresh answers for backends given by host name (`resolve_interval`), applied by `run`
    /// between reloads.
    resolved_rx: mpsc::UnboundedReceiver<crate::resolve::Resolved>,
    resolve_metrics: crate::resolve::ResolveMetrics,
}

/// The control plane's thread and runtime: admin API, probes, hooks. Kept apart from the data
/// plane's workers so probes and the admin API answer while traffic saturates them.
struct Control {
    /// Cancelling it stops the admin server, the probes and the hook workers; also on drop, so
    /// a server dropped without running leaves no thread behind.
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
    /// Stopped when warren stops accepting: the grace period is for connections to end on
    /// their own, not to be moved.
    rebalancer: Arc<Rebalancer>,
    /// Stops the admin server alone (after an upgrade: the new process answers from then on).
    admin_stop: CancellationToken,
    /// A copy of the admin API's listening socket, for an upgrade to hand over.
    admin_socket: Option<std::net::TcpListener>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the control thread is started with.
struct ControlSetup {
    config: Config,
    shared_config: Arc<ArcSwap<Config>>,
    reloader: Reloader,
    upgrader: Upgrader,
    admin: Option<(std::net::TcpListener, Option<Secret>)>,
    routing: Arc<Routing>,
    metrics: ProcessMetrics,
    hold_down: Duration,
    /// `[fleet]`: the local changes the state file kept, for the drainer before it follows
    /// the fleet.
    local: crate::drain::LocalChanges,
    /// The whole control plane's stop, and the admin server's own.
    stop: CancellationToken,
    admin_stop: CancellationToken,
    /// Where the re-resolver sends its answers.
    resolved_tx: mpsc::UnboundedSender<crate::resolve::Resolved>,
}

/// What the control thread hands back once its parts run.
type ControlParts = (Arc<Controller>, Arc<Drainer>, Arc<Rebalancer>);

/// Start the control thread; returns it with the health controller it runs.
fn start_control(
    config: &Config,
    shared_config: Arc<ArcSwap<Config>>,
    (reloader, upgrader, resolved_tx): (
        Reloader,
        Upgrader,
        mpsc::UnboundedSender<crate::resolve::Resolved>,
    ),
    admin: Option<(std::net::TcpListener, Option<Secret>)>,
    routing: Arc<Routing>,
    metrics: ProcessMetrics,
    (hold_down, local): (Duration, crate::drain::LocalChanges),
) -> (Control, Arc<Controller>, Arc<Drainer>) {
    let stop = CancellationToken::new();
    let admin_stop = stop.child_token();
    let admin_addr = admin.as_ref().and_then(|(a, _)| a.local_addr().ok());
    let admin_socket = admin.as_ref().and_then(|(a, _)| a.try_clone().ok());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let setup = ControlSetup {
        config: config.clone(),
        shared_config,
        reloader,
        upgrader,
        admin,
        routing,
        metrics,
        hold_down,
        local,
        stop: stop.clone(),
        admin_stop: admin_stop.clone(),
        resolved_tx,
    };
    let thread = std::thread::Builder::new()
        .name("warren-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the control runtime starts");
            runtime.block_on(run_control(setup, ready_tx));
        })
        .expect("the control thread starts");
    let (health, drainer, rebalancer) = ready_rx
        .recv()
        .expect("the control thread hands over its health controller");
    (
        Control {
            stop,
            thread: Some(thread),
            admin_addr,
            rebalancer,
            admin_stop,
            admin_socket,
        },
        health,
        drainer,
    )
}

/// The control thread's life: probes, hooks, drains, the rebalancer and the admin server,
/// until `setup.stop`.
async fn run_control(setup: ControlSetup, ready: std::sync::mpsc::Sender<ControlParts>) {
    let ControlSetup {
        config,
        shared_config,
        reloader,
        upgrader,
        admin,
        routing,
        metrics,
        hold_down,
        local,
        stop,
        admin_stop,
        resolved_tx,
    } = setup;
    let hooks =
        (!config.hooks.is_empty()).then(|| Hooks::start(&config.hooks, metrics.hooks.clone()));
    let health = Controller::new(
        &config,
        routing.clone(),
        hooks.clone(),
        metrics.health.clone(),
        metrics.hooks.clone(),
        hold_down,
        tokio::runtime::Handle::current(),
    );
    health.spawn_probes(&config, &stop);
    let drainer = Drainer::new(
        &config,
        routing.clone(),
        health.clone(),
        metrics.state_file.clone(),
        tokio::runtime::Handle::current(),
    );
    drainer.restore_local(local.0);
    if let Some(fleet) = drainer.fleet() {
        tokio::spawn(drainer.clone().follow_fleet(fleet, stop.clone()));
    }
    let fleet = register_in_fleet(&config, &routing, &drainer, &stop);
    let fleet_loads = fleet
        .as_ref()
        .zip(config.fleet.as_ref())
        .map(|(instances, f)| {
            let loads = crate::rebalance::FleetLoads::new(&f.instance, instances.every());
            let follow = loads
                .clone()
                .follow(instances.clone(), routing.clone(), stop.clone());
            tokio::spawn(follow);
            loads
        });
    let rebalancer = Rebalancer::new(shared_config.clone(), routing.clone(), fleet_loads);
    tokio::spawn(rebalancer.clone().run(stop.clone()));
    tokio::spawn(crate::resolve::run(
        shared_config.clone(),
        metrics.resolve.clone(),
        resolved_tx,
        stop.clone(),
    ));
    let _ = ready.send((health.clone(), drainer.clone(), rebalancer.clone()));
    let hooks_owner = health.clone();
    if let Some((listener, token)) = admin {
        let admin = Arc::new(admin::Admin {
            config: shared_config,
            reloader,
            upgrader,
            routing,
            metrics: metrics.exposition,
            admin_metrics: metrics.admin,
            active_connections: metrics.proxy.active_connections(),
            health,
            drainer,
            rebalancer,
            fleet,
            token,
        });
        admin::serve(listener, admin, admin_stop).await;
    }
    stop.cancelled().await;
    // The hooks in force now, which a reload may have replaced since start.
    hooks_owner.shutdown_hooks().await;
}

/// `[fleet]`: register this instance under a lease and publish its report (per backend: its
/// connections, health and admin state) every few seconds until `stop`.
fn register_in_fleet(
    config: &Config,
    routing: &Arc<Routing>,
    drainer: &Arc<Drainer>,
    stop: &CancellationToken,
) -> Option<Arc<crate::fleet::instances::Instances>> {
    use crate::fleet::instances::{BackendReport, Instances, Report};
    let fleet = config.fleet.as_ref()?;
    let client = crate::fleet::client(fleet).ok()?;
    let instances = Arc::new(Instances::new(
        client,
        &fleet.prefix,
        &fleet.instance,
        fleet.lease_ttl,
    ));
    let (running, routing, name) = (instances.clone(), routing.clone(), fleet.instance.clone());
    let (drainer, handed) = (drainer.clone(), drainer.retired());
    let report = move || {
        let snapshot = routing.load();
        let mut backends = Vec::new();
        for (pool, route) in &snapshot.pools {
            for b in &route.backends {
                backends.push(BackendReport {
                    pool: pool.to_string(),
                    backend: b.name.to_string(),
                    active_connections: b.stats.active.get(),
                    health: b.health,
                    admin: b.admin,
                    local: drainer
                        .local_change(&crate::state::BackendId::new(pool, &b.name))
                        .is_some(),
                });
            }
        }
        Report {
            instance: name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            at_ms: crate::fleet::drains::unix_ms(std::time::SystemTime::now()),
            backends,
        }
    };
    let stop = stop.clone();
    tokio::spawn(async move { running.run(report, stop, handed).await });
    Some(instances)
}

/// The admin bearer token: the file's content without surrounding white space; never empty.
pub fn read_token(path: &std::path::Path) -> Result<Secret, ServerError> {
    let fail = |reason: String| ServerError::Token {
        file: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(Secret(token.to_owned()))
}

/// A listener ready to serve, as [`Server`] keeps it: name, its sockets, `max_connections`.
type BoundListener = (Arc<str>, Vec<TcpListener>, usize);

/// Every listener's sockets, one per worker and registered with it: the socket in `adopted`
/// (by listener name) where there is one, else freshly bound.
fn bind_listeners(
    config: &Config,
    workers: &Workers,
    mut adopted: HashMap<String, Vec<std::net::TcpListener>>,
) -> Result<Vec<BoundListener>, ServerError> {
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let bind_error = |source| ServerError::Bind {
            listener: l.name.clone(),
            addr: l.listen,
            source,
        };
        let sockets = match adopted.remove(&l.name) {
            Some(adopted) => adopted,
            None => bind_listener(l.listen, workers.len()).map_err(bind_error)?,
        };
        let sockets = register(workers, sockets).map_err(bind_error)?;
        listeners.push((Arc::from(l.name.as_str()), sockets, l.max_connections));
    }
    Ok(listeners)
}

/// The admin server's socket and bearer token, when `[admin]` is configured.
fn bind_admin(
    config: &Config,
    handed: Option<std::net::TcpListener>,
) -> Result<Option<(std::net::TcpListener, Option<Secret>)>, ServerError> {
    let Some(a) = &config.admin else {
        return Ok(None);
    };
    let token = match &a.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let listener = match handed {
        Some(socket) => socket,
        None => bind_tcp(a.listen).map_err(|source| ServerError::AdminBind {
            addr: a.listen,
            source,
        })?,
    };
    Ok(Some((listener, token)))
}

impl Server {
    /// Bind every listener and the admin address; on any failure nothing stays bound.
    /// Must be called within a Tokio runtime.
    pub fn bind(config: &Config, options: Options) -> Result<Server, ServerError> {
        Server::bind_adopting(config, options, HashMap::new(), None, Vec::new())
    }

    /// [`Server::bind`], with listening sockets passed by systemd (socket activation): each
    /// listener with a socket (see [`crate::systemd::match_listeners`]) serves on it, the
    /// others bind as usual, and sockets no listener takes are logged and closed.
    #[cfg(unix)]
    pub fn bind_with_inherited(
        config: &Config,
        options: Options,
        inherited: Vec<crate::systemd::InheritedSocket>,
    ) -> Result<Server, ServerError> {
        Server::bind_taking_over(config, options, inherited, Default::default())
    }

    /// [`Server::bind_with_inherited`], with the sockets an upgrading process `handed` over too
    /// (see `handover`): its listeners and admin API keep their sockets, new ones bind.
    #[cfg(unix)]
    pub fn bind_taking_over(
        config: &Config,
        options: Options,
        inherited: Vec<crate::systemd::InheritedSocket>,
        mut handed: crate::handover::incoming::Handed,
    ) -> Result<Server, ServerError> {
        let mut adopted = HashMap::new();
        for (name, socket) in crate::systemd::assign(&config.listeners, inherited) {
            let addr = socket.local_addr;
            let inherited_error = |source| ServerError::Inherited {
                listener: name.clone(),
                addr,
                source,
            };
            let listener = prepare_inherited(socket).map_err(inherited_error)?;
            let sockets = share_inherited(listener, options.workers).map_err(inherited_error)?;
            adopted.insert(name, sockets);
        }
        let backends = std::mem::take(&mut handed.backends);
        // The old process's local changes, for the drainer before it follows the fleet.
        let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let local = backends
            .iter()
            .filter_map(|b| {
                let id = crate::state::BackendId::new(&b.pool, &b.backend);
                Some((id, at(b.local_since_ms?)))
            })
            .collect();
        let admin = handover::adopt_handed(config, options.workers, handed, &mut adopted)?;
        let mut server = Server::bind_adopting(config, options, adopted, admin, local)?;
        server.carry_backends(backends);
        Ok(server)
    }

    /// Bind the listeners not in `adopted` (already listening sockets, by listener name).
    fn bind_adopting(
        config: &Config,
        options: Options,
        adopted: HashMap<String, Vec<std::net::TcpListener>>,
        admin: Option<std::net::TcpListener>,
        carried_local: Vec<(crate::state::BackendId, std::time::SystemTime)>,
    ) -> Result<Server, ServerError> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        // Before anything is bound: an unreadable state file stops the start.
        let restored = crate::drain::load_state(config)?;
        let workers = Arc::new(Workers::start(options.workers).map_err(ServerError::Workers)?);
        let listeners = bind_listeners(config, &workers, adopted)?;
        let admin = bind_admin(config, admin)?;

        let metrics = ProcessMetrics::register();
        let routing = Arc::new(Routing::new(config, metrics.backends.clone()));
        let mut local = restored.apply(&routing, &metrics.state_file);
        local.0.extend(carried_local);
        let proxy_metrics = &metrics.proxy;
        let plane = Plane {
            #[cfg(target_os = "linux")]
            pipes: options.splice.then(|| {
                proxy::splice::PipePool::new(options.max_pipes, proxy_metrics.pipes_leased())
            }),
            to_backend: proxy_metrics.forward_counters(ByteDirection::ToBackend),
            to_client: proxy_metrics.forward_counters(ByteDirection::ToClient),
            fallback_unsupported: proxy_metrics.splice_fallbacks(SpliceFallback::Unsupported),
            fallback_no_pipe: proxy_metrics.splice_fallbacks(SpliceFallback::NoPipe),
        };
        let shared_config = Arc::new(ArcSwap::from_pointee(config.clone()));
        let (reload_tx, reload_rx) = Reloader::channel();
        let (upgrade_tx, upgrade_rx) = Upgrader::channel();
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        let (control, health, drainer) = start_control(
            config,
            shared_config.clone(),
            (reload_tx.clone(), upgrade_tx.clone(), resolved_tx),
            admin,
            routing.clone(),
            metrics.clone(),
            (options.passive_hold_down, local),
        );
        let ctx = Arc::new(Context {
            routing,
            metrics: metrics.proxy,
            plane,
            health: Arc::new(health.clone()),
            closer: proxy::graceful::Closer::new(shared_config.clone()),
            #[cfg(unix)]
            pause: proxy::pause::Pauser::default(),
        });
        Ok(Server {
            listeners,
            workers,
            config: shared_config,
            reload_tx,
            reload_rx,
            upgrade_tx,
            upgrade_rx,
            #[cfg(unix)]
            taking_over: None,
            #[cfg(unix)]
            carried_drains: Vec::new(),
            ctx,
            health,
            drainer,
            control,
            options,
            exposition: metrics.exposition,
            reloads: metrics.reloads,
            resolved_rx,
            resolve_metrics: metrics.resolve,
        })
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(name, l, _)| Some((name.to_string(), l.first()?.local_addr().ok()?)))
            .collect()
    }

    /// The bound admin address, if an admin server is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control.admin_addr
    }

    /// The health controller (health, last probe of every backend).
    pub fn health(&self) -> Arc<Controller> {
        self.health.clone()
    }

    /// A handle that reloads this server's config file.
    pub fn reloader(&self) -> Reloader {
        self.reload_tx.clone()
    }

    /// A handle that upgrades this server to the binary installed at its path.
    pub fn upgrader(&self) -> Upgrader {
        self.upgrade_tx.clone()
    }

    /// Drain and undrain backends.
    pub fn drainer(&self) -> Arc<Drainer> {
        self.drainer.clone()
    }

    /// The metrics registry this server reports into.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.exposition.clone()
    }

    /// The routing view (health and admin state of every backend).
    pub fn routing(&self) -> Arc<Routing> {
        self.ctx.routing.clone()
    }

    /// Serve until `shutdown` is cancelled, then stop gracefully. Reload requests are handled
    /// here, between accepts, so listeners are added and removed by the loop that owns them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let stop_accepting = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let mut running: HashMap<Arc<str>, RunningListener> = HashMap::new();
        // The fleet's drains before the first connection (a process taking over from another
        // has its drains already).
        #[cfg(unix)]
        let taking_over = self.taking_over.is_some();
        #[cfg(not(unix))]
        let taking_over = false;
        if !taking_over {
            self.drainer.sync_fleet().await;
        }
        for (name, listener, max) in std::mem::take(&mut self.listeners) {
            self.start_listener(
                &mut running,
                name,
                listener,
                max,
                &stop_accepting,
                &accept_loops,
                &connections,
            );
        }
        self.tell(Lifecycle::Ready {
            status: self.serving(&running),
        });
        #[cfg(unix)]
        let mut handed_connections = self.confirm_taken_over();
        let alive = self.spawn_alive_ticks();

        let mut handed_over = None;
        loop {
            #[cfg(unix)]
            let adopting = async {
                match handed_connections.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let adopting = std::future::pending::<Option<()>>();
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(reply) = self.reload_rx.recv() => {
                    let outcome = self
                        .reload_and_tell(&mut running, &stop_accepting, &accept_loops, &connections)
                        .await;
                    let _ = reply.send(outcome);
                }
                Some(resolved) = self.resolved_rx.recv() => self.apply_resolved(&resolved),
                Some(reply) = self.upgrade_rx.recv() => {
                    let outcome = self
                        .upgrade(&mut running, &stop_accepting, &accept_loops, &connections)
                        .await;
                    if let Ok(done) = &outcome {
                        handed_over = Some(done.new_pid);
                    }
                    let _ = reply.send(outcome);
                    if handed_over.is_some() {
                        break;
                    }
                }
                received = adopting => {
                    #[cfg(unix)]
                    {
                        handed_connections = None;
                        match received {
                            Some(received) => {
                                self.adopt_connections(received, &running, &connections).await;
                            }
                            None => {
                                self.upgrade_tx.settle();
                                self.follow_carried_drains();
                            }
                        }
                    }
                    #[cfg(not(unix))]
                    let _ = received;
                }
            }
        }
        if let Some(pid) = handed_over {
            self.tell(Lifecycle::HandedOver { pid });
            self.control.admin_stop.cancel();
        }
        self.stop_gracefully(
            running,
            stop_accepting,
            accept_loops,
            connections,
            alive,
            handed_over,
        )
        .await;
    }

    /// A worker-liveness tick for the service manager's watchdog, when it asked for one: told
    /// only while every worker runs tasks, so a wedged worker stops the ticks.
    fn spawn_alive_ticks(&self) -> Option<tokio::task::JoinHandle<()>> {
        let (Some(hook), Some(every)) = (&self.options.lifecycle, self.options.alive_every) else {
            return None;
        };
        let (hook, workers) = (hook.clone(), self.workers.clone());
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if workers.all_alive(every).await {
                    (hook.0)(&Lifecycle::Alive);
                }
            }
        }))
    }

    /// One reload, told to the service manager around it, counted and logged.
    async fn reload_and_tell(
        &self,
        running: &mut HashMap<Arc<str>, RunningListener>,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Result<String, String> {
        self.tell(Lifecycle::Reloading);
        let outcome = self
            .reload(running, stop_accepting, accept_loops, connections)
            .await;
        self.reloads.reloaded(if outcome.is_ok() {
            ReloadResult::Ok
        } else {
            ReloadResult::Failed
        });
        let serving = self.serving(running);
        let status = match &outcome {
            Ok(summary) => {
                tracing::info!(%summary, "config reloaded");
                serving
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                format!("{serving}; last reload failed: {e}")
            }
        };
        self.tell(Lifecycle::Ready { status });
        outcome
    }

    /// Stop accepting, let open connections finish for the grace period, close the rest, then
    /// stop the control thread and the workers.
    async fn stop_gracefully(
        self,
        running: HashMap<Arc<str>, RunningListener>,
        stop_accepting: CancellationToken,
        accept_loops: TaskTracker,
        connections: TaskTracker,
        alive: Option<tokio::task::JoinHandle<()>>,
        handed_over: Option<u32>,
    ) {
        match handed_over {
            // The service goes on in the new process: no STOPPING=1 for it.
            Some(pid) => tracing::info!(
                new_pid = pid,
                "upgrade: pid {pid} serves every connection handed over; this process stops"
            ),
            None => self.tell(Lifecycle::Stopping {
                status: format!(
                    "stopping: no new connections, open ones get up to {:?}",
                    self.options.shutdown_grace
                ),
            }),
        }

        accept_loops.close();
        stop_accepting.cancel();
        self.control.rebalancer.stop();
        accept_loops.wait().await;
        // The copies kept for a reload's hand-over are the last holders of the listening
        // sockets: closing them makes new connects refused at once, not queued.
        drop(running);
        connections.close();
        let open = connections.len();
        tracing::info!(
            open_connections = open,
            grace = %humantime::format_duration(self.options.shutdown_grace),
            "stopping: no new connections, waiting for open ones"
        );
        if tokio::time::timeout(self.options.shutdown_grace, connections.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open_connections = connections.len(),
                "grace period over, closing the remaining connections"
            );
            self.ctx.routing.shutdown_token().cancel();
            connections.wait().await;
        }
        let mut control = self.control;
        control.stop.cancel();
        if let Some(thread) = control.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(alive) = alive {
            alive.abort();
        }
        let workers = self.workers.clone();
        let _ = tokio::task::spawn_blocking(move || workers.join()).await;
        tracing::info!("stopped");
    }

    /// Pass a lifecycle change to the service manager, if one listens.
    fn tell(&self, change: Lifecycle) {
        if let Some(hook) = &self.options.lifecycle {
            (hook.0)(&change);
        }
    }

    /// What is served, for the service manager's status line: `serving: amqp on 0.0.0.0:5672`.
    fn serving(&self, running: &HashMap<Arc<str>, RunningListener>) -> String {
        let config = self.config.load();
        let listeners: Vec<String> = config
            .listeners
            .iter()
            .filter_map(|l| {
                let r = running.get(l.name.as_str())?;
                Some(format!("{} on {}", l.name, r.listen))
            })
            .collect();
        format!("serving: {}", listeners.join(", "))
    }

    /// Re-read the config file and apply it; on any error nothing changes.
    async fn reload(
        &self,
        running: &mut HashMap<Arc<str>, RunningListener>,
        stop_accepting: &CancellationToken,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
    ) -> Result<String, String> {
        let path = self.options.config_path.as_deref().ok_or_else(|| {
            "warren was started without a config file (quick start): nothing to reload".to_owned()
        })?;
        let path_owned = path.to_owned();
        let new = tokio::task::spawn_blocking(move || crate::config::load(&path_owned))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        let old = self.config.load_full();
        // Expanded backends keep the names this process gave their addresses.
        let new = crate::resolve::carry_slots(&old, new);
        if old.admin != new.admin {
            tracing::warn!("[admin] changed: it takes effect at the next restart");
        }
        if old.fleet != new.fleet {
            tracing::warn!(
                "[fleet] changed: it takes effect at the next restart (or warren upgrade)"
            );
        }
        for change in crate::config::advertised_changes(&old, &new) {
            tracing::warn!("{change}");
        }
        let plan = diff_listeners(&old, &new);
        let bound = self
            .open_listeners(&plan, running, stop_accepting, accept_loops, connections)
            .await?;

        // From here on nothing fails: apply.
        self.ctx.routing.reload(&new);
        self.health.reload(&new, &self.control.stop);
        self.drainer.reload(&new);
        for name in &plan.remove {
            if let Some(gone) = running.remove(name.as_str()) {
                tracing::info!(listener = %name, addr = %gone.listen, "listener removed: no new connections, open ones continue");
                gone.stop.cancel();
            }
        }
        for l in &new.listeners {
            if let Some(r) = running.get_mut(l.name.as_str()) {
                resize(r, l.max_connections);
            }
        }
        for (name, listener, max) in bound {
            self.start_listener(
                running,
                name,
                listener,
                max,
                stop_accepting,
                accept_loops,
                connections,
            );
        }
        self.config.store(Arc::new(new));
        Ok(self.config.load().summary())
    }

    /// A fresh answer for a backend's host name (`resolve_interval`): applied as a reload
    /// applies a changed backend (new address: health starts again as unknown; removed
    /// backend: its open connections continue), when it changes anything.
    fn apply_resolved(&self, resolved: &crate::resolve::Resolved) {
        let old = self.config.load_full();
        let Some((new, changes)) = crate::resolve::apply(&old, &resolved.target, &resolved.addrs)
        else {
            return;
        };
        self.resolve_metrics.changed(&resolved.target, &changes);
        self.ctx.routing.reload(&new);
        self.health.reload(&new, &self.control.stop);
        self.drainer.reload(&new);
        self.config.store(Arc::new(new));
    }
}
