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
    child: NewProcess,
    launch: &'static Launch,
    pub new_pid: u32,
    /// When the upgrade started.
    pub started: Instant,
}

/// Start the recorded executable and hand it `sockets` and the backends' state; `env` is added
/// to its environment (systemd's `NOTIFY_SOCKET`, which this process removed from its own at
/// start-up). Returns once the new process serves every listener.
/// With `orphan` (under a service manager), the new process is started as an orphan: see
/// [`NewProcess::Orphan`].
pub async fn hand_over(
    sockets: Sockets,
    backends: Vec<BackendState>,
    env: Vec<(String, String)>,
    orphan: bool,
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
    let mut command = tokio::process::Command::new(&launch.exe);
    command
        .args(&launch.args)
        .env(super::FD_VAR, theirs.as_raw_fd().to_string())
        .envs(env);
    let spawned = if orphan {
        spawn_orphan(&mut command).await.map(NewProcess::Orphan)
    } else {
        command.spawn().map(NewProcess::Child)
    };
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", launch.exe.display()))?;
    drop(theirs);
    let pid = child.pid();
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
        self.child.start_kill();
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
    async fn explain(self, child: &mut NewProcess, launch: &Launch, timeout: Duration) -> String {
        let exe = launch.exe.display();
        let status = child.end(Duration::from_secs(2)).await;
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

/// The process an upgrade started.
enum NewProcess {
    /// A child of this process.
    Child(tokio::process::Child),
    /// Started through a short-lived intermediate process, so it was handed to PID 1 (or the
    /// nearest subreaper) at once: under systemd it is then systemd's own child by the time
    /// this process names it the main process (`MAINPID=`). systemd before 253 cannot watch a
    /// main process that is not its child: at the next `systemctl stop` it would not wait for
    /// it and would SIGKILL it. Its exit status cannot be known here.
    Orphan(u32),
}

impl NewProcess {
    fn pid(&self) -> u32 {
        match self {
            NewProcess::Child(child) => child.id().unwrap_or(0),
            NewProcess::Orphan(pid) => *pid,
        }
    }

    fn start_kill(&mut self) {
        match self {
            NewProcess::Child(child) => {
                let _ = child.start_kill();
            }
            NewProcess::Orphan(pid) => signal(*pid, nix::sys::signal::Signal::SIGKILL),
        }
    }

    /// Wait up to `grace` for it to exit, else kill it; says which ("exited (exit status: 3)",
    /// "was stopped").
    async fn end(&mut self, grace: Duration) -> String {
        match self {
            NewProcess::Child(child) => match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(status)) => format!("exited ({status})"),
                Ok(Err(e)) => format!("cannot be waited for: {e}"),
                Err(_) => {
                    let _ = child.kill().await;
                    "was stopped".to_owned()
                }
            },
            NewProcess::Orphan(pid) => {
                let pid = *pid;
                if gone_within(pid, grace).await {
                    return "exited".to_owned();
                }
                signal(pid, nix::sys::signal::Signal::SIGKILL);
                gone_within(pid, Duration::from_secs(5)).await;
                "was stopped".to_owned()
            }
        }
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Whether process `pid` is gone (or a zombie its new parent has not reaped yet) within
/// `within`.
async fn gone_within(pid: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        // The state follows the command name in parentheses: "Z" is a zombie.
        let zombie = state
            .as_deref()
            .and_then(|s| s.rsplit_once(") "))
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if state.is_none() || zombie {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start `command` as an orphan (see [`NewProcess::Orphan`]): the spawned process forks once
/// more before `exec`, passes the grandchild's pid back over a pipe and exits; the grandchild
/// runs the command. An `exec` that fails is reported as by `spawn`.
async fn spawn_orphan(command: &mut tokio::process::Command) -> std::io::Result<u32> {
    use std::io::Read;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let write_fd = write.as_raw_fd();
    // SAFETY: the closure runs in the forked child before `exec`, where only async-signal-safe
    // calls are allowed: fork, write and _exit are. The intermediate writes the grandchild's
    // pid to a pipe this process owns and exits at once; the grandchild returns and execs.
    unsafe {
        command.pre_exec(move || match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => Ok(()),
            grandchild => {
                let bytes = grandchild.to_ne_bytes();
                libc::write(write_fd, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0)
            }
        });
    }
    let mut intermediate = command.spawn()?;
    drop(write);
    intermediate.wait().await?;
    let mut bytes = [0u8; 4];
    std::fs::File::from(read).read_exact(&mut bytes)?;
    u32::try_from(i32::from_ne_bytes(bytes)).map_err(std::io::Error::other)
}
