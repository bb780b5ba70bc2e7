//! Running under systemd: the `sd_notify` protocol (`READY=1` once every listener is bound,
//! `RELOADING=1` … `READY=1` around a reload, `STOPPING=1`, `WATCHDOG=1`) and socket activation
//! (listening sockets passed in as `LISTEN_FDS`, matched to the config's listeners by
//! `FileDescriptorName=` or by address). It reads and clears the environment systemd sets and
//! turns inherited descriptors into sockets; it does not bind, serve or reload anything: the
//! server decides what to do with what is found here.
//!
//! Written by hand rather than with the `sd-notify` crate, which was weighed for this: it reads
//! `NOTIFY_SOCKET`, `LISTEN_PID` and `LISTEN_FDS` from the environment at each call, so they
//! would have to stay set for the whole run, and warren's hooks (child processes) would inherit
//! them and could notify systemd as if they were warren. Unsetting them later, with threads
//! running, is unsound (`set_var`/`remove_var` are `unsafe` since Rust 2024). warren reads and
//! clears them once, before any thread exists, and keeps its own socket. The crate also has no
//! matching of sockets to listeners, and its errors do not name the variable and value.
//!
//! The exception to "unsafe lives only in the splice module" is [`adopt`]: taking ownership of
//! a descriptor number systemd handed over has no safe API. It is one block, behind checks that
//! the descriptor is open and is a socket.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ListenerConfig;
use crate::lifecycle::{Lifecycle, LifecycleHook};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// What systemd sent that warren cannot use; each names the variable or descriptor.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("socket from systemd, fd {fd} ({name}): {reason}")]
    Socket {
        fd: i32,
        name: String,
        reason: String,
    },
}

/// Sends state changes to systemd's notification socket (`$NOTIFY_SOCKET`).
#[derive(Clone, Debug)]
pub struct Notifier {
    /// Shared so the server, its reload path and the watchdog task send through one socket.
    inner: Arc<NotifierInner>,
}

#[derive(Debug)]
struct NotifierInner {
    /// Unbound: systemd identifies the sender by its credentials, not by an address.
    socket: UnixDatagram,
    to: std::os::unix::net::SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for error messages.
    name: String,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`'s value: a path, or `@name` for an abstract socket.
    pub fn new(notify_socket: &str) -> Result<Notifier, SystemdError> {
        let fail = |reason: String| SystemdError::Env {
            var: "NOTIFY_SOCKET",
            value: notify_socket.to_owned(),
            reason,
        };
        let to = if let Some(abstract_name) = notify_socket.strip_prefix('@') {
            abstract_address(abstract_name).map_err(|e| fail(e.to_string()))?
        } else if notify_socket.starts_with('/') {
            std::os::unix::net::SocketAddr::from_pathname(notify_socket)
                .map_err(|e| fail(e.to_string()))?
        } else {
            return Err(fail(
                "expected an absolute path or @abstract-name (vsock is not supported)".into(),
            ));
        };
        let socket = UnixDatagram::unbound().map_err(|e| fail(e.to_string()))?;
        // A stalled receiver must never stall warren: a full queue is reported, not waited on.
        socket
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Notifier {
            inner: Arc::new(NotifierInner {
                socket,
                to,
                name: notify_socket.to_owned(),
            }),
        })
    }

    /// Send one message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> std::io::Result<()> {
        self.inner
            .socket
            .send_to_addr(message.as_bytes(), &self.inner.to)
            .map(drop)
    }

    /// Send one message; a failure is logged (systemd then reports the unit as it sees it).
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!(notify_socket = %self.inner.name, error = %e, "cannot notify systemd");
        }
    }

    /// Tell systemd about a change in the server's life.
    pub fn lifecycle(&self, change: &Lifecycle) {
        match change {
            Lifecycle::Ready { status } => self.notify(&ready_message(status)),
            Lifecycle::Reloading => self.notify(&reloading_message(monotonic_usec())),
            Lifecycle::Stopping { status } => self.notify(&stopping_message(status)),
            Lifecycle::Alive => self.notify(WATCHDOG_MESSAGE),
            Lifecycle::HandedOver { pid } => self.notify(&handed_over_message(*pid)),
        }
    }

    /// `$NOTIFY_SOCKET` as it was given, for a process this one starts in its place (upgrade).
    pub fn socket_name(&self) -> &str {
        &self.inner.name
    }

    /// A server hook that passes every lifecycle change to systemd.
    pub fn hook(&self) -> LifecycleHook {
        let notifier = self.clone();
        LifecycleHook(Arc::new(move |change| notifier.lifecycle(change)))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// `STATUS=` holds one line; anything else would start a new `KEY=VALUE` pair.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// The start-up (and end-of-reload) message: ready, with what is served.
pub fn ready_message(status: &str) -> String {
    format!(
        "READY=1\nSTATUS={}\nMAINPID={}",
        one_line(status),
        std::process::id()
    )
}

/// The message before a reload; `monotonic_usec` is `CLOCK_MONOTONIC` now, which systemd
/// (`Type=notify-reload`) uses to tell this reload from an earlier one.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nSTATUS=reloading the config file\nMONOTONIC_USEC={monotonic_usec}")
}

/// The message when a stop begins.
pub fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// After an upgrade: process `pid` is the service's main process now. Sent by the old process
/// (the main one, so `NotifyAccess=main` accepts it); never `STOPPING=1`, the service goes on.
pub fn handed_over_message(pid: u32) -> String {
    format!("MAINPID={pid}\nSTATUS=upgraded: pid {pid} serves every connection")
}

/// The watchdog keep-alive.
pub const WATCHDOG_MESSAGE: &str = "WATCHDOG=1";

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000,
        Err(e) => {
            tracing::warn!(error = %e, "clock_gettime(CLOCK_MONOTONIC) failed");
            0
        }
    }
}

/// What systemd handed to this process.
#[derive(Debug, Default)]
pub struct FromSystemd {
    /// `$NOTIFY_SOCKET`, when set.
    pub notifier: Option<Notifier>,
    /// How often to send `WATCHDOG=1` (half of `$WATCHDOG_USEC`), when the watchdog is on.
    pub watchdog: Option<Duration>,
    /// Listening sockets from `$LISTEN_FDS`, in descriptor order.
    pub inherited: Vec<InheritedSocket>,
}

/// The variables read by [`take_from_env`], all removed from the environment.
const VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// Read what systemd passed (notification socket, watchdog, listening sockets), then remove
/// those variables so nothing warren starts inherits them; the inherited sockets get
/// close-on-exec. Call it once, before any thread is started (it changes the environment).
pub fn take_from_env() -> Result<FromSystemd, SystemdError> {
    let var = |name: &str| std::env::var(name).ok();
    let (notify_socket, watchdog_usec, watchdog_pid) = (
        var("NOTIFY_SOCKET"),
        var("WATCHDOG_USEC"),
        var("WATCHDOG_PID"),
    );
    let (listen_pid, listen_fds, listen_fdnames) =
        (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    for name in VARIABLES {
        std::env::remove_var(name);
    }
    let pid = std::process::id();
    let watchdog = parse_watchdog(watchdog_usec.as_deref(), watchdog_pid.as_deref(), pid)?;
    let passed = parse_listen_fds(
        listen_pid.as_deref(),
        listen_fds.as_deref(),
        listen_fdnames.as_deref(),
        pid,
    )?;
    let notifier = notify_socket
        .filter(|s| !s.is_empty())
        .map(|s| Notifier::new(&s))
        .transpose()?;
    let inherited = passed
        .into_iter()
        .map(|(fd, name)| adopt(fd, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FromSystemd {
        notifier,
        watchdog,
        inherited,
    })
}

fn env_error(var: &'static str, value: &str, reason: impl Into<String>) -> SystemdError {
    SystemdError::Env {
        var,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// The watchdog interval to keep: half of `WATCHDOG_USEC`, when it is meant for `pid`.
pub fn parse_watchdog(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Result<Option<Duration>, SystemdError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(for_pid) = watchdog_pid {
        let for_pid: u32 = for_pid
            .parse()
            .map_err(|_| env_error("WATCHDOG_PID", for_pid, "not a process id"))?;
        if for_pid != pid {
            return Ok(None);
        }
    }
    let micros: u64 = usec
        .parse()
        .map_err(|_| env_error("WATCHDOG_USEC", usec, "not a number of microseconds"))?;
    if micros == 0 {
        return Err(env_error("WATCHDOG_USEC", usec, "must be above 0"));
    }
    // At least 1 µs: a zero period would be no interval at all.
    Ok(Some(Duration::from_micros((micros / 2).max(1))))
}

/// The descriptors systemd passed to `pid`, with their names (`None` without
/// `LISTEN_FDNAMES`). Sockets meant for another process (`LISTEN_PID` differs) are not ours.
pub fn parse_listen_fds(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(i32, Option<String>)>, SystemdError> {
    let Some(fds) = listen_fds else {
        return Ok(Vec::new());
    };
    let Some(for_pid) = listen_pid else {
        tracing::warn!("LISTEN_FDS is set without LISTEN_PID: the sockets are not taken");
        return Ok(Vec::new());
    };
    let for_pid: u32 = for_pid
        .parse()
        .map_err(|_| env_error("LISTEN_PID", for_pid, "not a process id"))?;
    if for_pid != pid {
        tracing::warn!(
            listen_pid = for_pid,
            pid,
            "LISTEN_FDS was meant for another process: the sockets are not taken"
        );
        return Ok(Vec::new());
    }
    let count: i32 = fds
        .parse()
        .ok()
        .filter(|n| (0..=65_536).contains(n))
        .ok_or_else(|| env_error("LISTEN_FDS", fds, "not a number of descriptors"))?;
    let names: Vec<Option<String>> = match listen_fdnames {
        None => vec![None; count as usize],
        Some(names) => {
            let names: Vec<Option<String>> = if count == 0 {
                Vec::new()
            } else {
                names.split(':').map(|n| Some(n.to_owned())).collect()
            };
            if names.len() != count as usize {
                return Err(env_error(
                    "LISTEN_FDNAMES",
                    listen_fdnames.unwrap_or_default(),
                    format!("{} names for LISTEN_FDS={count} descriptors", names.len()),
                ));
            }
            names
        }
    };
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as i32, name))
        .collect())
}

/// A listening TCP socket passed by systemd.
#[derive(Debug)]
pub struct InheritedSocket {
    pub fd: i32,
    /// `FileDescriptorName=` (the socket unit's name when unset; `None` without `LISTEN_FDNAMES`).
    pub name: Option<String>,
    pub local_addr: SocketAddr,
    /// Close-on-exec; blocking mode and backlog are left to whoever serves it.
    pub socket: socket2::Socket,
}

impl InheritedSocket {
    /// What [`match_listeners`] needs to know of this socket.
    pub fn info(&self) -> SocketInfo {
        SocketInfo {
            name: self.name.clone(),
            local_addr: self.local_addr,
        }
    }

    fn describe(&self) -> String {
        self.name.clone().unwrap_or_else(|| "unnamed".into())
    }
}

/// Take ownership of descriptor `fd`, which systemd passed: it must be a TCP (IPv4 or IPv6)
/// stream socket bound to an address. It gets close-on-exec so hooks never inherit it.
/// Private: only a descriptor nobody in the process owns yet may be passed, which only
/// [`take_from_env`] (and tests handing over their own) can promise.
fn adopt(fd: i32, name: Option<String>) -> Result<InheritedSocket, SystemdError> {
    use nix::sys::stat::{fstat, SFlag};
    use std::os::fd::{FromRawFd, OwnedFd};
    let fail = |reason: String| SystemdError::Socket {
        fd,
        name: name.clone().unwrap_or_else(|| "unnamed".into()),
        reason,
    };
    let stat = fstat(fd).map_err(|e| fail(format!("not an open descriptor: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(fail("not a socket".into()));
    }
    // SAFETY: `fd` is open (fstat succeeded) and is a socket; systemd passed it to this
    // process (LISTEN_PID is ours) for this process to own, and nothing else in warren has
    // taken it: `take_from_env` runs once, at start-up, and this is the only place that
    // turns these numbers into owned descriptors.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    socket
        .set_cloexec(true)
        .map_err(|e| fail(format!("cannot set close-on-exec: {e}")))?;
    match socket.r#type() {
        Ok(t) if t == socket2::Type::STREAM => {}
        Ok(_) => return Err(fail("not a stream socket: use ListenStream=".into())),
        Err(e) => return Err(fail(format!("cannot read its type: {e}"))),
    }
    // Accept=yes would pass one connection per instance; warren accepts its own.
    #[cfg(target_os = "linux")]
    if !socket.is_listener().unwrap_or(true) && socket.peer_addr().is_ok() {
        return Err(fail(
            "a connection, not a listening socket: set Accept=no".into(),
        ));
    }
    let local_addr = socket
        .local_addr()
        .map_err(|e| fail(format!("cannot read its address: {e}")))?
        .as_socket()
        .ok_or_else(|| {
            fail("not a TCP socket (a Unix socket?): use ListenStream=IP:PORT".into())
        })?;
    Ok(InheritedSocket {
        fd,
        name,
        local_addr,
        socket,
    })
}

/// What matching knows of an inherited socket.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    pub name: Option<String>,
    pub local_addr: SocketAddr,
}

/// Why a socket went to a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// `FileDescriptorName=` is the listener's name and the socket has its address.
    NameAndAddress,
    /// The socket is bound to the listener's `listen` address.
    Address,
    /// `FileDescriptorName=` is the listener's name; the socket is bound elsewhere.
    Name,
}

impl Match {
    /// The name in the log line.
    fn as_str(self) -> &'static str {
        match self {
            Match::NameAndAddress => "name_and_address",
            Match::Address => "address",
            Match::Name => "name",
        }
    }

    fn fits(self, listener: &ListenerConfig, socket: &SocketInfo) -> bool {
        let name = socket.name.as_deref() == Some(listener.name.as_str());
        let address = socket.local_addr == listener.listen;
        match self {
            Match::NameAndAddress => name && address,
            Match::Address => address,
            Match::Name => name,
        }
    }
}

/// Which inherited socket each listener serves on (pure).
#[derive(Debug, Default, PartialEq)]
pub struct ActivationPlan {
    /// One entry per listener, in config order: the index of its socket and why.
    pub listeners: Vec<Option<(usize, Match)>>,
    /// Sockets no listener takes (indexes, ascending).
    pub unmatched: Vec<usize>,
}

/// Give each listener at most one inherited socket: first the socket with its name and its
/// address, else the socket with its address, else the socket with its name. Exact evidence
/// goes first so that, with several sockets of one name (one unit, several `ListenStream=`),
/// a name match never takes the socket another listener's address needs.
pub fn match_listeners(listeners: &[ListenerConfig], sockets: &[SocketInfo]) -> ActivationPlan {
    let mut plan = ActivationPlan {
        listeners: vec![None; listeners.len()],
        unmatched: Vec::new(),
    };
    let mut taken = vec![false; sockets.len()];
    for kind in [Match::NameAndAddress, Match::Address, Match::Name] {
        for (i, listener) in listeners.iter().enumerate() {
            if plan.listeners[i].is_some() {
                continue;
            }
            if let Some(j) =
                (0..sockets.len()).find(|&j| !taken[j] && kind.fits(listener, &sockets[j]))
            {
                taken[j] = true;
                plan.listeners[i] = Some((j, kind));
            }
        }
    }
    plan.unmatched = (0..sockets.len()).filter(|&j| !taken[j]).collect();
    plan
}

/// Apply [`match_listeners`]: the socket of each listener that has one, by listener name.
/// Sockets no listener takes are logged and closed; a listener served on another address than
/// its `listen` is logged too.
pub fn assign(
    listeners: &[ListenerConfig],
    inherited: Vec<InheritedSocket>,
) -> std::collections::HashMap<String, InheritedSocket> {
    let infos: Vec<SocketInfo> = inherited.iter().map(InheritedSocket::info).collect();
    let plan = match_listeners(listeners, &infos);
    let mut sockets: Vec<Option<InheritedSocket>> = inherited.into_iter().map(Some).collect();
    let mut assigned = std::collections::HashMap::new();
    for (listener, entry) in listeners.iter().zip(&plan.listeners) {
        let Some((j, kind)) = *entry else { continue };
        let Some(socket) = sockets[j].take() else {
            continue;
        };
        if kind == Match::Name {
            tracing::warn!(
                listener = %listener.name,
                listen = %listener.listen,
                socket = %socket.local_addr,
                "the socket from systemd named after this listener is bound elsewhere; serving on the socket's address"
            );
        }
        tracing::info!(
            listener = %listener.name,
            fd = socket.fd,
            name = %socket.describe(),
            addr = %socket.local_addr,
            matched_by = kind.as_str(),
            "listener takes its socket from systemd"
        );
        assigned.insert(listener.name.clone(), socket);
    }
    for socket in sockets.into_iter().flatten() {
        tracing::warn!(
            fd = socket.fd,
            name = %socket.describe(),
            addr = %socket.local_addr,
            "socket from systemd matches no listener by name or address: closed"
        );
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, listen: &str) -> ListenerConfig {
        ListenerConfig::default_for(name, listen.parse().unwrap(), "p")
    }

    fn socket(name: Option<&str>, addr: &str) -> SocketInfo {
        SocketInfo {
            name: name.map(str::to_owned),
            local_addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn listeners_match_sockets_by_name_and_address() {
        use Match::*;
        type Case = (
            &'static str,
            Vec<ListenerConfig>,
            Vec<SocketInfo>,
            Vec<Option<(usize, Match)>>,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing inherited",
                vec![listener("amqp", "0.0.0.0:5672")],
                vec![],
                vec![None],
                vec![],
            ),
            (
                "name and address",
                vec![listener("amqp", "0.0.0.0:5672")],
                vec![socket(Some("amqp"), "0.0.0.0:5672")],
                vec![Some((0, NameAndAddress))],
                vec![],
            ),
            (
                "address only: the socket unit's default name",
                vec![listener("amqp", "127.0.0.1:5672")],
                vec![socket(Some("warren.socket"), "127.0.0.1:5672")],
                vec![Some((0, Address))],
                vec![],
            ),
            (
                "address without LISTEN_FDNAMES",
                vec![listener("amqp", "127.0.0.1:5672")],
                vec![socket(None, "127.0.0.1:5672")],
                vec![Some((0, Address))],
                vec![],
            ),
            (
                "name only: ListenStream=5672 is [::]:5672",
                vec![listener("amqp", "0.0.0.0:5672")],
                vec![socket(Some("amqp"), "[::]:5672")],
                vec![Some((0, Name))],
                vec![],
            ),
            (
                "unmatched socket is left over; unmatched listener binds itself",
                vec![
                    listener("amqp", "0.0.0.0:5672"),
                    listener("mgmt", "0.0.0.0:15672"),
                ],
                vec![
                    socket(Some("other"), "0.0.0.0:5673"),
                    socket(Some("amqp"), "0.0.0.0:5672"),
                ],
                vec![Some((1, NameAndAddress)), None],
                vec![0],
            ),
            (
                "one name for two sockets: addresses decide",
                vec![
                    listener("amqp", "10.0.0.1:5672"),
                    listener("amqp-lo", "127.0.0.1:5672"),
                ],
                vec![
                    socket(Some("amqp"), "127.0.0.1:5672"),
                    socket(Some("amqp"), "10.0.0.1:5672"),
                ],
                vec![Some((1, NameAndAddress)), Some((0, Address))],
                vec![],
            ),
            (
                "an address match beats a name-only match",
                vec![
                    listener("amqp", "[::]:5672"),
                    listener("tls", "0.0.0.0:5672"),
                ],
                vec![
                    socket(Some("amqp"), "0.0.0.0:5672"),
                    socket(Some("x"), "[::]:5672"),
                ],
                vec![Some((1, Address)), Some((0, Address))],
                vec![],
            ),
            (
                "a socket goes to one listener only",
                vec![listener("a", "0.0.0.0:5672"), listener("b", "0.0.0.0:5672")],
                vec![socket(None, "0.0.0.0:5672")],
                vec![Some((0, Address)), None],
                vec![],
            ),
            (
                "two sockets for one listener: the first, the second left over",
                vec![listener("amqp", "0.0.0.0:5672")],
                vec![
                    socket(Some("amqp"), "0.0.0.0:5672"),
                    socket(Some("amqp"), "0.0.0.0:5672"),
                ],
                vec![Some((0, NameAndAddress))],
                vec![1],
            ),
        ];
        for (what, listeners, sockets, want, unmatched) in cases {
            let plan = match_listeners(&listeners, &sockets);
            assert_eq!(plan.listeners, want, "{what}");
            assert_eq!(plan.unmatched, unmatched, "{what}");
        }
    }

    #[test]
    fn listen_fds_are_read_as_systemd_writes_them() {
        let pid = 4242;
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Result<Vec<(i32, Option<&'static str>)>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (None, None, None, Ok(vec![])),
            (Some("4242"), Some("0"), None, Ok(vec![])),
            (Some("4242"), Some("0"), Some(""), Ok(vec![])),
            (Some("4242"), Some("1"), None, Ok(vec![(3, None)])),
            (
                Some("4242"),
                Some("2"),
                Some("amqp:warren.socket"),
                Ok(vec![(3, Some("amqp")), (4, Some("warren.socket"))]),
            ),
            // For another process (a parent that forgot to unset them): not ours.
            (Some("1"), Some("2"), None, Ok(vec![])),
            (None, Some("2"), None, Ok(vec![])),
            (
                Some("4242"),
                Some("two"),
                None,
                Err("LISTEN_FDS=\"two\": not a number of descriptors"),
            ),
            (
                Some("4242"),
                Some("-1"),
                None,
                Err("LISTEN_FDS=\"-1\": not a number of descriptors"),
            ),
            (
                Some("pid"),
                Some("1"),
                None,
                Err("LISTEN_PID=\"pid\": not a process id"),
            ),
            (
                Some("4242"),
                Some("2"),
                Some("amqp"),
                Err("LISTEN_FDNAMES=\"amqp\": 1 names for LISTEN_FDS=2 descriptors"),
            ),
        ];
        for (listen_pid, fds, names, want) in cases {
            let got = parse_listen_fds(listen_pid, fds, names, pid).map_err(|e| e.to_string());
            let want = want
                .map(|v| {
                    v.into_iter()
                        .map(|(fd, n)| (fd, n.map(str::to_owned)))
                        .collect::<Vec<_>>()
                })
                .map_err(str::to_owned);
            assert_eq!(
                got, want,
                "LISTEN_PID={listen_pid:?} LISTEN_FDS={fds:?} LISTEN_FDNAMES={names:?}"
            );
        }
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_for_this_process_only() {
        let pid = 7;
        let ms = Duration::from_millis;
        assert_eq!(parse_watchdog(None, None, pid).unwrap(), None);
        assert_eq!(
            parse_watchdog(Some("30000000"), None, pid).unwrap(),
            Some(ms(15_000))
        );
        assert_eq!(
            parse_watchdog(Some("200000"), Some("7"), pid).unwrap(),
            Some(ms(100))
        );
        assert_eq!(
            parse_watchdog(Some("200000"), Some("8"), pid).unwrap(),
            None
        );
        assert_eq!(
            parse_watchdog(Some("1"), None, pid).unwrap(),
            Some(Duration::from_micros(1))
        );
        let err = |usec, wpid| {
            parse_watchdog(Some(usec), wpid, pid)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err("0", None), "WATCHDOG_USEC=\"0\": must be above 0");
        assert_eq!(
            err("30s", None),
            "WATCHDOG_USEC=\"30s\": not a number of microseconds"
        );
        assert_eq!(
            err("1", Some("me")),
            "WATCHDOG_PID=\"me\": not a process id"
        );
    }

    #[test]
    fn messages_are_key_value_lines() {
        let pid = std::process::id();
        assert_eq!(
            ready_message("serving: amqp on 0.0.0.0:5672\nfake=1"),
            format!("READY=1\nSTATUS=serving: amqp on 0.0.0.0:5672 fake=1\nMAINPID={pid}")
        );
        assert_eq!(
            reloading_message(12),
            "RELOADING=1\nSTATUS=reloading the config file\nMONOTONIC_USEC=12"
        );
        assert_eq!(stopping_message("stopping"), "STOPPING=1\nSTATUS=stopping");
        assert_eq!(
            handed_over_message(42),
            "MAINPID=42\nSTATUS=upgraded: pid 42 serves every connection"
        );
        assert!(monotonic_usec() > 0);
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("warren-sd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn received(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 5s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifier_sends_to_a_path() {
        let path = temp_path("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        notifier.notify(WATCHDOG_MESSAGE);
        assert_eq!(received(&systemd), "WATCHDOG=1");
        let _ = std::fs::remove_file(&path);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifier_sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("warren-sd-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap();
        notifier.notify("READY=1");
        assert_eq!(received(&systemd), "READY=1");
    }

    #[test]
    fn notifier_rejects_what_it_cannot_reach() {
        let err = Notifier::new("vsock:2:1234").unwrap_err().to_string();
        assert!(
            err.starts_with("NOTIFY_SOCKET=\"vsock:2:1234\": expected an absolute path"),
            "{err}"
        );
        // Nobody listens: the send fails and says so (notify() logs it instead).
        let notifier = Notifier::new(temp_path("nobody").to_str().unwrap()).unwrap();
        assert!(notifier.send("READY=1").is_err());
    }

    #[test]
    fn adopt_takes_tcp_listeners_and_refuses_the_rest() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.into_raw_fd();
        let socket = adopt(fd, Some("amqp".into())).unwrap();
        assert_eq!(socket.local_addr, addr);
        assert_eq!(socket.name.as_deref(), Some("amqp"));

        // Not a socket: refused before ownership is taken, so `file` still closes it.
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = adopt(file.as_raw_fd(), None).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "socket from systemd, fd {} (unnamed): not a socket",
                file.as_raw_fd()
            )
        );

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = adopt(udp.into_raw_fd(), Some("dgram".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("not a stream socket: use ListenStream="),
            "{err}"
        );

        // A connection (what Accept=yes passes) is not a listener.
        #[cfg(target_os = "linux")]
        {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let err = adopt(stream.into_raw_fd(), None).unwrap_err().to_string();
            assert!(
                err.ends_with("a connection, not a listening socket: set Accept=no"),
                "{err}"
            );
        }
    }
}
