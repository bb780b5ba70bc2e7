//! Putting the process together: bind every listener (all or nothing), build the shared routing
//! snapshot and the data plane, start the admin server, run the accept loops, and stop gracefully
//! (stop accepting → let connections finish for the grace period → close the rest). It owns the
//! order of start-up and shutdown; what each part does lives in its own module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, Secret};
use crate::drain::Drainer;
use crate::health::{self, Controller};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::proxy::{self, forward::Plane, Context};
use crate::state::Routing;

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
            passive_hold_down: health::DEFAULT_HOLD_DOWN,
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
    #[error("admin: cannot read token_file {file}: {reason}")]
    Token { file: PathBuf, reason: String },
    #[error("admin: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server whose sockets are bound and which is ready to [`Server::run`].
pub struct Server {
    listeners: Vec<(Arc<str>, TcpListener, usize)>,
    ctx: Arc<Context>,
    health: Arc<Controller>,
    drainer: Arc<Drainer>,
    control: Control,
    options: Options,
}

/// The control plane's thread and runtime: admin API, probes, hooks. Kept apart from the data
/// plane's workers so probes and the admin API answer while traffic saturates them.
struct Control {
    /// Cancelling it stops the admin server, the probes and the hook workers; also on drop, so
    /// a server dropped without running leaves no thread behind.
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Start the control thread; returns it with the health controller it runs.
fn start_control(
    config: &Config,
    admin: Option<(std::net::TcpListener, Option<Secret>)>,
    routing: Arc<Routing>,
    metrics: Arc<Metrics>,
    hold_down: Duration,
) -> (Control, Arc<Controller>, Arc<Drainer>) {
    let stop = CancellationToken::new();
    let admin_addr = admin.as_ref().and_then(|(a, _)| a.local_addr().ok());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (config, thread_stop) = (config.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("warren-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the control runtime starts");
            runtime.block_on(async move {
                let hooks = (!config.hooks.is_empty())
                    .then(|| Hooks::start(&config.hooks, metrics.clone()));
                let health = Controller::new(
                    &config,
                    routing.clone(),
                    hooks.clone(),
                    metrics.clone(),
                    hold_down,
                    tokio::runtime::Handle::current(),
                );
                health.spawn_probes(&config, &thread_stop);
                let drainer = Drainer::new(
                    &config,
                    routing.clone(),
                    health.clone(),
                    &metrics,
                    tokio::runtime::Handle::current(),
                );
                let _ = ready_tx.send((health.clone(), drainer.clone()));
                match admin {
                    Some((listener, token)) => {
                        let admin = Arc::new(admin::Admin {
                            config: Arc::new(config.clone()),
                            routing,
                            metrics,
                            health,
                            drainer,
                            token,
                        });
                        admin::serve(listener, admin, thread_stop).await
                    }
                    None => thread_stop.cancelled().await,
                }
                if let Some(hooks) = hooks {
                    hooks.shutdown().await;
                }
            });
        })
        .expect("the control thread starts");
    let (health, drainer) = ready_rx
        .recv()
        .expect("the control thread hands over its health controller");
    (
        Control {
            stop,
            thread: Some(thread),
            admin_addr,
        },
        health,
        drainer,
    )
}

/// The admin bearer token: the file's content without surrounding white space; never empty.
fn read_token(path: &std::path::Path) -> Result<Secret, ServerError> {
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

/// Listen backlog; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted warren bind while old connections sit in TIME_WAIT (Unix meaning only).
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "[::]:5672" means IPv6 only, as in NGINX; IPv4 gets its own listener.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

impl Server {
    /// Bind every listener and the admin address; on any failure nothing stays bound.
    /// Must be called within a Tokio runtime.
    pub fn bind(config: &Config, options: Options) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let std_listener = bind_tcp(l.listen).map_err(|source| ServerError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            let listener =
                TcpListener::from_std(std_listener).map_err(|source| ServerError::Bind {
                    listener: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            listeners.push((Arc::from(l.name.as_str()), listener, l.max_connections));
        }
        let admin = match &config.admin {
            Some(a) => {
                let token = match &a.token_file {
                    Some(path) => Some(read_token(path)?),
                    None => None,
                };
                let listener = bind_tcp(a.listen).map_err(|source| ServerError::AdminBind {
                    addr: a.listen,
                    source,
                })?;
                Some((listener, token))
            }
            None => None,
        };

        let metrics = Arc::new(Metrics::new());
        let routing = Arc::new(Routing::new(config, metrics.clone()));
        let plane = Plane {
            #[cfg(target_os = "linux")]
            pipes: options.splice.then(|| {
                proxy::splice::PipePool::new(options.max_pipes, metrics.splice_pipes_leased.clone())
            }),
            to_backend: metrics.forward_counters("to_backend"),
            to_client: metrics.forward_counters("to_client"),
            fallback_unsupported: metrics
                .splice_fallbacks_total
                .with_label_values(&["unsupported"]),
            fallback_no_pipe: metrics
                .splice_fallbacks_total
                .with_label_values(&["no_pipe"]),
        };
        let (control, health, drainer) = start_control(
            config,
            admin,
            routing.clone(),
            metrics.clone(),
            options.passive_hold_down,
        );
        let ctx = Arc::new(Context {
            routing,
            metrics,
            plane,
            health: Arc::new(health.clone()),
        });
        Ok(Server {
            listeners,
            ctx,
            health,
            drainer,
            control,
            options,
        })
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(name, l, _)| Some((name.to_string(), l.local_addr().ok()?)))
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

    /// Drain and undrain backends.
    pub fn drainer(&self) -> Arc<Drainer> {
        self.drainer.clone()
    }

    /// The metrics registry this server reports into.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.ctx.metrics.clone()
    }

    /// The routing view (health and admin state of every backend).
    pub fn routing(&self) -> Arc<Routing> {
        self.ctx.routing.clone()
    }

    /// Serve until `shutdown` is cancelled, then stop gracefully.
    pub async fn run(self, shutdown: CancellationToken) {
        let stop_accepting = CancellationToken::new();

        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        for (name, listener, max) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listener = %name, %addr, "listening");
            }
            accept_loops.spawn(proxy::serve(
                listener,
                name,
                max,
                self.ctx.clone(),
                stop_accepting.clone(),
                connections.clone(),
            ));
        }
        accept_loops.close();

        shutdown.cancelled().await;
        stop_accepting.cancel();
        accept_loops.wait().await;
        connections.close();
        let open = connections.len();
        tracing::info!(
            open_connections = open,
            grace = ?self.options.shutdown_grace,
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
        tracing::info!("stopped");
    }
}
