//! The new process's side of a hand-over: find the channel the old process passed
//! ([`take_from_env`]), say why it cannot take over ([`Incoming::fail`]), ask for the listening
//! sockets ([`Incoming::receive`]) and confirm "ready" once every listener serves
//! ([`Incoming::ready`]). Which listener adopts which socket is decided by the server (with
//! [`super::protocol::match_handed`]); nothing here binds or serves.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use super::channel::{Channel, ChannelError};
use super::protocol::Message;

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
}

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
                Message::Done => return Ok(handed),
                other => {
                    let reason = format!("unexpected {other:?} from the old process");
                    return Err(ChannelError::Io(std::io::Error::other(reason)));
                }
            }
        }
    }

    /// Every listener serves: the old process may stop accepting.
    pub fn ready(mut self) -> Result<(), ChannelError> {
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        self.channel.send(&ready, &[])
    }
}

fn listener(fd: OwnedFd) -> std::net::TcpListener {
    std::net::TcpListener::from(fd)
}
