//! The old process's side of a hand-over: remember at start-up which executable and arguments
//! started it ([`record_launch`]), and on request spawn that path again with one end of a socket
//! pair, send it the listening sockets it asks for, and wait for its "ready". Every failure
//! (cannot start, bad config, exit or crash, no "ready" in time) is returned as one line saying
//! why, and leaves the sockets untouched: the caller keeps serving.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::channel::{Channel, ChannelError};
use super::protocol::Message;

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

/// A hand-over that worked: the new process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedOver {
    pub new_pid: u32,
    pub took: Duration,
}

/// Start the recorded executable and hand it `sockets`; `env` is added to its environment
/// (systemd's `NOTIFY_SOCKET`, which this process removed from its own at start-up).
pub async fn hand_over(
    sockets: Sockets,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> Result<HandedOver, String> {
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
    let exchange = tokio::task::spawn_blocking(move || exchange(channel, sockets, deadline));
    let outcome = match exchange.await {
        Ok(outcome) => outcome,
        Err(e) => Err(Failure::Channel(ChannelError::Io(std::io::Error::other(e)))),
    };
    match outcome {
        Ok(new_pid) => Ok(HandedOver {
            new_pid,
            took: started.elapsed(),
        }),
        Err(failure) => Err(failure.explain(&mut child, launch, timeout).await),
    }
}

/// Why the new process did not take over, before asking the process itself.
#[derive(Debug)]
enum Failure {
    /// It said why (its config, a socket).
    Said(String),
    Channel(ChannelError),
    Unexpected(Message),
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
        }
    }
}

/// The old process's half of the exchange: Hello → sockets → Done → Ready.
fn exchange(mut channel: Channel, sockets: Sockets, deadline: Instant) -> Result<u32, Failure> {
    let recv = |channel: &mut Channel| match channel.recv(deadline) {
        Ok((Message::Failed { reason }, _)) => Err(Failure::Said(reason)),
        Ok((message, _)) => Ok(message),
        Err(e) => Err(Failure::Channel(e)),
    };
    match recv(&mut channel)? {
        Message::Hello { pid, version } => {
            tracing::info!(pid, %version, "upgrade: the new binary loaded its config");
        }
        other => return Err(Failure::Unexpected(other)),
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
        .send(&Message::Done, &[])
        .map_err(Failure::Channel)?;
    match recv(&mut channel)? {
        Message::Ready { pid } => Ok(pid),
        other => Err(Failure::Unexpected(other)),
    }
}
