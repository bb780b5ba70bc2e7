//! The old process's side of a hand-over: remember at start-up which executable and arguments
//! started it ([`record_launch`]), and on request spawn that path again with one end of a socket
//! pair, send it the listening sockets and the backends' state, and wait for its "ready"
//! ([`hand_over`]); then send it the paused connections and wait for "adopted"
//! ([`Handing`]). Every failure (cannot start, bad config, exit or crash, no answer in time)
//! is returned as one line saying why, with the new process stopped: the caller keeps (or
//! resumes) every socket and connection.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::channel::{Channel, ChannelError};
use super::protocol::{BackendState, HandedConnection, Message};

/// The executable and arguments this process was started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Resolved at start-up: once a package replaces the file, `/proc/self/exe` reads
    /// "PATH (deleted)", so it must be read before.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

static LAUNCH: OnceLock<Launch> = OnceLock::new();

/// Record how this process was started; call first thing in `warren run`. A second call keeps
/// the first record (tests running several servers in one process).
pub fn record_launch() {
    match std::env::current_exe() {
        Ok(exe) => {
            let _ = LAUNCH.set(Launch {
                exe,
                args: std::env::args_os().skip(1).collect(),
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this executable's path: `warren upgrade` will be refused")
        }
    }
}

/// What the old process hands over: each listener's configured address and sockets (one per
/// worker), and the admin API's socket.
#[derive(Debug, Default)]
pub struct Sockets {
    pub listeners: Vec<(String, SocketAddr, Vec<std::net::TcpListener>)>,
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
}

/// A hand-over under way: the new process serves every listener; the connections are next.
pub struct Handing {
    channel: Option<Channel>,
    child: tokio::process::Child,
    launch: &'static Launch,
    pub new_pid: u32,
    /// When the upgrade started.
    pub started: Instant,
}

/// Start the recorded executable and hand it `sockets` and the backends' state; `env` is added
/// to its environment (systemd's `NOTIFY_SOCKET`, which this process removed from its own at
/// start-up). Returns once the new process serves every listener.
pub async fn hand_over(
    sockets: Sockets,
    backends: Vec<BackendState>,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> Result<Handing, String> {
    let started = Instant::now();
    let launch = LAUNCH
        .get()
        .ok_or("this process did not record its executable's path at start-up")?;
    let (channel, theirs) =
        Channel::pair().map_err(|e| format!("cannot create the hand-over socket pair: {e}"))?;
    // The new process inherits this end: clear close-on-exec on it alone.
    nix::fcntl::fcntl(
        theirs.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| format!("cannot pass the hand-over socket: {e}"))?;
    let mut child = tokio::process::Command::new(&launch.exe)
        .args(&launch.args)
        .env(super::FD_VAR, theirs.as_raw_fd().to_string())
        .envs(env)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", launch.exe.display()))?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    tracing::info!(exe = %launch.exe.display(), pid, "upgrade: started the new binary, handing over the listening sockets");
    let deadline = started + timeout;
    let exchange =
        tokio::task::spawn_blocking(move || exchange(channel, sockets, backends, deadline));
    let outcome = match exchange.await {
        Ok(outcome) => outcome,
        Err(e) => Err(Failure::Channel(ChannelError::Io(std::io::Error::other(e)))),
    };
    match outcome {
        Ok((channel, new_pid)) => Ok(Handing {
            channel: Some(channel),
            child,
            launch,
            new_pid,
            started,
        }),
        Err(failure) => Err(failure.explain(&mut child, launch, timeout).await),
    }
}

/// The most connections in one message: two descriptors each, within `SCM_MAX_FD`.
pub const BATCH: usize = super::channel::MAX_DESCRIPTORS / 2;

/// Bytes in flight one message may carry at most (base64), far below the protocol's limit.
pub const BATCH_BYTES: usize = 16 << 20;

impl Handing {
    /// Send one batch of paused connections with their sockets (client, backend for each, in
    /// order), waiting at most until `deadline`. Blocks: the new process reads at once.
    pub fn send_connections(
        &mut self,
        connections: Vec<HandedConnection>,
        fds: &[std::os::fd::BorrowedFd<'_>],
        deadline: Instant,
    ) -> Result<(), Failure> {
        let channel = self.channel.as_mut().ok_or(Failure::Gone)?;
        channel
            .set_send_deadline(deadline)
            .map_err(|e| Failure::Channel(e.into()))?;
        channel
            .send(&Message::Connections { connections }, fds)
            .map_err(Failure::Channel)
    }

    /// Send the counters, then say every connection was sent, and wait (until `deadline`)
    /// for the new process to say it holds them all.
    pub async fn finish(
        &mut self,
        counters: Vec<crate::metrics::CounterSample>,
        count: usize,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut channel = self.channel.take().ok_or(Failure::Gone)?;
        let wait = tokio::task::spawn_blocking(move || {
            let sent = channel
                .set_send_deadline(deadline)
                .map_err(ChannelError::from)
                .and_then(|()| channel.send(&Message::Counters { counters }, &[]))
                .and_then(|()| channel.send(&Message::ConnectionsDone { count }, &[]));
            let answer =
                sent.map_err(Failure::Channel)
                    .and_then(|()| match channel.recv(deadline) {
                        Ok((Message::Adopted { count: adopted }, _)) if adopted == count => Ok(()),
                        Ok((Message::Failed { reason }, _)) => Err(Failure::Said(reason)),
                        Ok((other, _)) => Err(Failure::Unexpected(Box::new(other))),
                        Err(e) => Err(Failure::Channel(e)),
                    });
            (channel, answer)
        });
        match wait.await {
            Ok((channel, answer)) => {
                self.channel = Some(channel);
                answer
            }
            Err(e) => Err(Failure::Channel(ChannelError::Io(std::io::Error::other(e)))),
        }
    }

    /// The hand-over failed: stop the new process (it may hold copies of the connections'
    /// sockets, but must never forward them) and say why in one line. Returns once it exited.
    pub async fn fail(mut self, failure: Failure, timeout: Duration) -> String {
        // It must not live on: the caller resumes the connections it was sent.
        let _ = self.child.start_kill();
        failure.explain(&mut self.child, self.launch, timeout).await
    }
}

/// Why the new process did not take over, before asking the process itself.
#[derive(Debug)]
pub enum Failure {
    /// It said why (its config, a socket).
    Said(String),
    Channel(ChannelError),
    Unexpected(Box<Message>),
    /// The channel was lost in an earlier step.
    Gone,
    /// This process could not go on (a connection that did not pause in time, a socket it
    /// cannot send): the reason.
    Here(String),
}

impl Failure {
    /// The reason in one line; a process still running is killed (it never said "ready", so
    /// the old process keeps every socket and connection).
    async fn explain(
        self,
        child: &mut tokio::process::Child,
        launch: &Launch,
        timeout: Duration,
    ) -> String {
        let exe = launch.exe.display();
        let exited = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        let status = match exited {
            Ok(Ok(status)) => format!("exited ({status})"),
            Ok(Err(e)) => format!("cannot be waited for: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                "was stopped".to_owned()
            }
        };
        match self {
            Failure::Said(reason) => format!("the new binary {exe} refused: {reason}; it {status}"),
            Failure::Channel(ChannelError::Timeout) => {
                format!("the new binary {exe} was not ready within {timeout:?}; it {status}")
            }
            Failure::Channel(ChannelError::Closed) => {
                format!("the new binary {exe} {status} before it was ready")
            }
            Failure::Channel(e) => format!("the new binary {exe}: {e}; it {status}"),
            Failure::Unexpected(m) => {
                format!("the new binary {exe} sent {m:?} out of turn; it {status}")
            }
            Failure::Gone => format!("the hand-over channel to {exe} was lost; it {status}"),
            Failure::Here(reason) => {
                format!("handing connections to {exe} failed: {reason}; it {status}")
            }
        }
    }
}

/// The old process's half of the first exchange: Hello → sockets, backends → Done → Ready.
fn exchange(
    mut channel: Channel,
    sockets: Sockets,
    backends: Vec<BackendState>,
    deadline: Instant,
) -> Result<(Channel, u32), Failure> {
    let recv = |channel: &mut Channel| match channel.recv(deadline) {
        Ok((Message::Failed { reason }, _)) => Err(Failure::Said(reason)),
        Ok((message, _)) => Ok(message),
        Err(e) => Err(Failure::Channel(e)),
    };
    match recv(&mut channel)? {
        Message::Hello { pid, version } => {
            tracing::info!(pid, %version, "upgrade: the new binary loaded its config");
        }
        other => return Err(Failure::Unexpected(Box::new(other))),
    }
    for (name, addr, listeners) in &sockets.listeners {
        let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
        let message = Message::Listener {
            name: name.clone(),
            addr: *addr,
            sockets: fds.len(),
        };
        channel.send(&message, &fds).map_err(Failure::Channel)?;
    }
    if let Some((addr, admin)) = &sockets.admin {
        let message = Message::Admin { addr: *addr };
        channel
            .send(&message, &[admin.as_fd()])
            .map_err(Failure::Channel)?;
    }
    channel
        .send(&Message::Backends { backends }, &[])
        .map_err(Failure::Channel)?;
    channel
        .send(&Message::Done, &[])
        .map_err(Failure::Channel)?;
    match recv(&mut channel)? {
        Message::Ready { pid } => Ok((channel, pid)),
        other => Err(Failure::Unexpected(Box::new(other))),
    }
}
