//! Upgrading warren itself without refusing a connect or closing a connection: the running
//! (old) process starts the binary now installed at the path it was started from, with the
//! same arguments, and passes it every listening socket (each worker's, and the admin API's)
//! and the backends' state over a Unix socket pair; the new process adopts them, serves, and
//! says "ready"; the old one stops accepting, pauses its connections and passes them (their
//! sockets, what warren knows of them, their bytes in flight) and its counters; the new
//! process confirms "adopted" and forwards them, and the old one exits.
//!
//! `protocol` holds the messages and their framing (pure), `channel` the socket pair and
//! SCM_RIGHTS, `upgrade` the old process's side (spawn, send, wait for "ready" within
//! [`READY_TIMEOUT`], then for "adopted") and `incoming` the new process's side (ask, adopt,
//! confirm). Pausing and adopting connections is the data plane's (`proxy::pause`), the order
//! of it all the server's. This module decides nothing about serving: the server gives it
//! sockets and what to say, and gets sockets back.
//!
//! Unix only; on Windows `warren upgrade` is refused and the service keeps its stop/start.

pub mod protocol;

#[cfg(unix)]
pub mod channel;
#[cfg(unix)]
pub mod incoming;
#[cfg(unix)]
pub mod upgrade;

use std::time::Duration;

/// How long the new process may take from its start to "ready" before the old one gives up,
/// kills it and keeps serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The variable naming the inherited end of the hand-over channel in the new process.
pub const FD_VAR: &str = "WARREN_HANDOVER_FD";
