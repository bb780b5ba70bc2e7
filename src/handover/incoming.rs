//! The new process's side of a hand-over: find the channel the old process passed
//! ([`take_from_env`]), say why it cannot take over ([`Incoming::fail`]), ask for the listening
//! sockets and the backends' state ([`Incoming::receive`]), confirm "ready" once every
//! listener serves ([`Incoming::ready`]), then receive the established connections
//! ([`Incoming::receive_connections`]) and confirm holding them ([`Incoming::adopted`]).
//! Which listener adopts which socket, and what becomes of a connection, is the server's;
//! nothing here binds, serves or forwards.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use super::channel::{Channel, ChannelError};
use super::protocol::{BackendState, HandedConnection, Message};

/// The channel to the old process, in the new one.
#[derive(Debug)]
pub struct Incoming {
    channel: Channel,
    deadline: Instant,
}

/// The sockets the old process handed over.
#[derive(Debug, Default)]
pub struct Handed {
    /// Listener name (in the old config), its configured address, its sockets.
    pub listeners: Vec<(String, SocketAddr, Vec<std::net::TcpListener>)>,
    /// The admin API's socket and its configured address.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
    /// Every backend's health and drain state in the old process.
    pub backends: Vec<BackendState>,
}

/// The established connections the old process handed over, each with its client and
/// backend sockets, and the old process's counters.
#[derive(Debug, Default)]
pub struct Connections {
    pub connections: Vec<(HandedConnection, [OwnedFd; 2])>,
    pub counters: Vec<crate::metrics::CounterSample>,
}

/// How long the old process may take to send its connections once this one is ready.
const CONNECTIONS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Set in the environment to make the new process exit (status 70) once it has received the
/// first batch of connections, before it confirms: how the tests prove that the old process
/// then keeps every connection. Not for operators.
const FAULT_VAR: &str = "WARREN_HANDOVER_FAULT";

/// The channel from `WARREN_HANDOVER_FD`, when this process was started by an upgrade. The
/// variable is removed so nothing this process starts inherits it. Call it once, before any
/// thread is started (it changes the environment).
pub fn take_from_env() -> Result<Option<Incoming>, ChannelError> {
    let Some(value) = std::env::var_os(super::FD_VAR) else {
        return Ok(None);
    };
    std::env::remove_var(super::FD_VAR);
    let channel = Channel::inherited(&value.to_string_lossy())?;
    Ok(Some(Incoming {
        channel,
        deadline: Instant::now() + super::READY_TIMEOUT,
    }))
}

impl Incoming {
    /// Tell the old process why this one will not take over (it logs and reports it).
    pub fn fail(mut self, reason: &str) {
        let message = Message::Failed {
            reason: reason.to_owned(),
        };
        if let Err(e) = self.channel.send(&message, &[]) {
            tracing::warn!(error = %e, "cannot tell the old process why the upgrade failed");
        }
    }

    /// Ask for the listening sockets and receive them all.
    pub fn receive(&mut self) -> Result<Handed, ChannelError> {
        let hello = Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.channel.send(&hello, &[])?;
        let mut handed = Handed::default();
        loop {
            let (message, fds) = self.channel.recv(self.deadline)?;
            let mut sockets = fds.into_iter().map(listener);
            match message {
                Message::Listener { name, addr, .. } => {
                    handed.listeners.push((name, addr, sockets.collect()));
                }
                Message::Admin { addr } => handed.admin = sockets.next().map(|s| (addr, s)),
                Message::Backends { backends } => handed.backends = backends,
                Message::Done => return Ok(handed),
                other => {
                    let reason = format!("unexpected {other:?} from the old process");
                    return Err(ChannelError::Io(std::io::Error::other(reason)));
                }
            }
        }
    }

    /// Every listener serves: the old process may stop accepting.
    pub fn ready(&mut self) -> Result<(), ChannelError> {
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        self.channel.send(&ready, &[])
    }

    /// Receive every connection the old process paused, and its counters. An old process
    /// that closes the channel without sending any (it had none left, or it is a build that
    /// hands over listening sockets only) gives none.
    pub fn receive_connections(&mut self) -> Result<Connections, ChannelError> {
        let deadline = Instant::now() + CONNECTIONS_TIMEOUT;
        let fault = std::env::var(FAULT_VAR).is_ok_and(|v| v == "exit_during_connections");
        let mut received = Connections::default();
        loop {
            let (message, fds) = match self.channel.recv(deadline) {
                Err(ChannelError::Closed) if received.connections.is_empty() => {
                    return Ok(received)
                }
                other => other?,
            };
            match message {
                Message::Connections { connections } => {
                    let mut fds = fds.into_iter();
                    for c in connections {
                        let (Some(client), Some(backend)) = (fds.next(), fds.next()) else {
                            break;
                        };
                        received.connections.push((c, [client, backend]));
                    }
                    if fault {
                        tracing::warn!(
                            "{FAULT_VAR}=exit_during_connections: exiting before confirming"
                        );
                        std::process::exit(70);
                    }
                }
                Message::Counters { counters } => received.counters = counters,
                Message::ConnectionsDone { count } if count == received.connections.len() => {
                    return Ok(received)
                }
                other => {
                    let reason = format!("unexpected {other:?} from the old process");
                    return Err(ChannelError::Io(std::io::Error::other(reason)));
                }
            }
        }
    }

    /// This process holds (and forwards from now on) the `count` connections received.
    pub fn adopted(mut self, count: usize) -> Result<(), ChannelError> {
        self.channel.send(&Message::Adopted { count }, &[])
    }
}

fn listener(fd: OwnedFd) -> std::net::TcpListener {
    std::net::TcpListener::from(fd)
}
