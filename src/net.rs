//! What the data path and the health checks share about connecting to a backend: whose fault
//! a failed connect is ([`is_local`]), why it failed ([`ConnectFailure`]), the [`Observer`] the
//! data path reports backend failures to, and which way bytes went ([`ByteDirection`], a label
//! the proxy's and the backends' byte counters share). A leaf: it names no other module, so the
//! proxy, state and health modules can all use it without reaching each other.

use std::io;

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The backend answered with a reset (nothing listens).
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// Unreachable host or network, or another error the backend's side caused.
    Other,
    /// Connected, then the backend closed or reset first without sending a byte, at once (a
    /// broker always answers a client's protocol header): HAProxy's layer-4 `observe`.
    ClosedEarly,
    /// Connected, then the TLS handshake warren opens to a `[pool.NAME.tls]` backend failed
    /// (its certificate not signed by the pool's CA or not for `server_name`, warren's client
    /// certificate refused, no TLS there) or was not done within `connect_timeout`.
    Tls,
}

impl ConnectFailure {
    /// Every failure, in the order of their metric handles (see `state::BackendStats`).
    pub const ALL: [ConnectFailure; 5] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Other,
        ConnectFailure::ClosedEarly,
        ConnectFailure::Tls,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Other => "other",
            ConnectFailure::ClosedEarly => "closed_early",
            ConnectFailure::Tls => "tls",
        }
    }
}

/// Which way forwarded bytes went (the `direction` label of the byte counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteDirection {
    /// From the client to the backend.
    ToBackend,
    /// From the backend to the client.
    ToClient,
}

impl ByteDirection {
    /// Both directions.
    pub const ALL: [ByteDirection; 2] = [ByteDirection::ToBackend, ByteDirection::ToClient];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ByteDirection::ToBackend => "to_backend",
            ByteDirection::ToClient => "to_client",
        }
    }
}

/// Receives the data path's connect outcomes. Implementations must return at once.
pub trait Observer: Send + Sync {
    /// A connect to `pool`/`backend` failed because of the backend (never for local errors).
    fn connect_failed(&self, pool: &str, backend: &str, failure: ConnectFailure);
}

/// Is this connect error ours (resources of this host) rather than the backend's?
pub fn is_local(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            err.raw_os_error(),
            Some(
                libc::EADDRNOTAVAIL
                    | libc::EADDRINUSE
                    | libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOBUFS
                    | libc::ENOMEM
                    | libc::EPERM
                    | libc::EACCES
            )
        )
    }
    #[cfg(not(unix))]
    {
        matches!(
            err.kind(),
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
        )
    }
}

/// Does a local error mean the next candidate cannot succeed either (we are out of descriptors)?
pub fn is_exhaustion(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            err.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn local_errors_are_not_the_backends_fault() {
        let os = io::Error::from_raw_os_error;
        for (errno, local, exhaustion) in [
            (libc::EADDRNOTAVAIL, true, false),
            (libc::EMFILE, true, true),
            (libc::ENFILE, true, true),
            (libc::ENOBUFS, true, true),
            (libc::ECONNREFUSED, false, false),
            (libc::ETIMEDOUT, false, false),
            (libc::EHOSTUNREACH, false, false),
            (libc::ENETUNREACH, false, false),
        ] {
            assert_eq!(is_local(&os(errno)), local, "errno {errno}");
            assert_eq!(is_exhaustion(&os(errno)), exhaustion, "errno {errno}");
        }
    }

    /// `BackendStats` keeps its failure counters in an array indexed by the enum.
    #[test]
    fn connect_failures_index_their_own_slot() {
        for (i, failure) in ConnectFailure::ALL.into_iter().enumerate() {
            assert_eq!(failure as usize, i, "{failure:?}");
        }
    }
}
