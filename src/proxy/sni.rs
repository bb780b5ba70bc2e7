//! A connection on a `[[listener.sni]]` listener: before a backend is chosen, the client's
//! ClientHello is read with `MSG_PEEK`, so its bytes stay in the socket, and the pool is the
//! one whose route names its server name (the listener's `pool` when none does, or the client
//! does not speak TLS). From there the connection is a plain one: its bytes, hello included,
//! go to the backend as they came (splice, and an upgrade of warren hands it over like any
//! other), and TLS is the backend's. Read after the inbound PROXY header when the listener
//! takes one: the header is consumed, and what came with it is the start of the hello.
//!
//! Routes are the listener's config as the connection is let in, so a reload reaches new
//! connections. This module owns the peek loop and the SNI counters; parsing is `crate::sni`'s,
//! matching `crate::config::SniRoutes`'s. A listener without routes never comes here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::metrics::ListenerStats;
use crate::config::{ListenerConfig, ListenerSni};
use crate::sni::{self, Hello, MAX_PEEK};

/// Why a connection was not routed by a server name (the `reason` label of
/// `sni_unrouted_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniMiss {
    /// A ClientHello without a server name: the listener's pool.
    NoSni,
    /// A server name no route names: the listener's pool.
    NoMatch,
    /// The first bytes are not TLS (plain AMQP, say): the listener's pool.
    NotTls,
    /// A TLS handshake that is no well-formed ClientHello: the listener's pool, whose backend
    /// will refuse it as it would directly.
    Malformed,
    /// No server name within `sni_timeout`: closed.
    Timeout,
    /// The client closed (or reset) before its server name: closed.
    Closed,
}

impl SniMiss {
    pub const ALL: [SniMiss; 6] = [
        SniMiss::NoSni,
        SniMiss::NoMatch,
        SniMiss::NotTls,
        SniMiss::Malformed,
        SniMiss::Timeout,
        SniMiss::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SniMiss::NoSni => "no_sni",
            SniMiss::NoMatch => "no_match",
            SniMiss::NotTls => "not_tls",
            SniMiss::Malformed => "malformed",
            SniMiss::Timeout => "timeout",
            SniMiss::Closed => "closed",
        }
    }
}

/// An SNI listener's counters.
pub(super) struct SniStats {
    listener: Arc<str>,
    routed: IntCounterVec,
    /// By [`SniMiss::ALL`]'s order.
    unrouted: [IntCounter; SniMiss::ALL.len()],
}

impl SniStats {
    pub(super) fn new(listener: &str, routed: &IntCounterVec, unrouted: &IntCounterVec) -> Self {
        SniStats {
            listener: Arc::from(listener),
            routed: routed.clone(),
            unrouted: SniMiss::ALL.map(|r| unrouted.with_label_values(&[listener, r.as_str()])),
        }
    }

    fn unrouted(&self, reason: SniMiss) -> &IntCounter {
        &self.unrouted[reason as usize]
    }

    /// Counted once per connection sent on; a pool's series appears with its first.
    fn routed(&self, pool: &str) {
        self.routed.with_label_values(&[&self.listener, pool]).inc();
    }
}

/// The pool for a connection on an SNI listener, from its ClientHello (`early`: what came with
/// its PROXY header, the hello's start); `None` when it is closed (timeout or gone), counted
/// and logged here.
pub(super) async fn route(
    client: &TcpStream,
    early: &[u8],
    listener: &ListenerConfig,
    sni: &ListenerSni,
    (name, origin, stats): (&str, SocketAddr, &ListenerStats),
    metrics: &super::metrics::ProxyMetrics,
) -> Option<Arc<str>> {
    let counters = stats.sni.get_or_init(|| metrics.sni(name));
    let miss = match read_hello(client, early, sni.timeout).await {
        Ok(Hello::ServerName(server_name)) => match sni.routes.pool_for(&server_name) {
            Some(pool) => {
                counters.routed(pool);
                tracing::debug!(listener = name, client = %origin, %server_name, %pool, "routed by server name");
                return Some(pool.clone());
            }
            None => {
                tracing::debug!(listener = name, client = %origin, %server_name,
                    "no [[listener.sni]] route names this server name: the listener's pool");
                SniMiss::NoMatch
            }
        },
        Ok(Hello::NoServerName) => {
            tracing::debug!(listener = name, client = %origin,
                "ClientHello without a server name: the listener's pool");
            SniMiss::NoSni
        }
        Ok(Hello::NotTls) => {
            tracing::debug!(listener = name, client = %origin,
                "the client does not speak TLS: the listener's pool");
            SniMiss::NotTls
        }
        Ok(Hello::Malformed(why)) => {
            tracing::debug!(listener = name, client = %origin, problem = why,
                "malformed ClientHello: the listener's pool");
            SniMiss::Malformed
        }
        Ok(Hello::Incomplete) | Err(SniMiss::Closed) => SniMiss::Closed,
        Err(other) => other,
    };
    counters.unrouted(miss).inc();
    if matches!(miss, SniMiss::Timeout | SniMiss::Closed) {
        tracing::debug!(listener = name, client = %origin, reason = miss.as_str(),
            "no ClientHello server name: connection closed");
        return None;
    }
    counters.routed(&listener.pool);
    Some(Arc::from(listener.pool.as_str()))
}

/// Peek at the client's first bytes until [`sni::parse`] decides, within `timeout`. The bytes
/// stay in the socket. `Err` for a timeout or a client gone first.
async fn read_hello(
    client: &TcpStream,
    early: &[u8],
    timeout: std::time::Duration,
) -> Result<Hello, SniMiss> {
    if !early.is_empty() {
        let hello = sni::parse(early);
        if hello != Hello::Incomplete {
            return Ok(hello);
        }
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; early.len() + 2048];
    buf[..early.len()].copy_from_slice(early);
    let mut seen = 0;
    loop {
        let ready = match tokio::time::timeout_at(deadline, client.ready(Interest::READABLE)).await
        {
            Err(_) => return Err(SniMiss::Timeout),
            Ok(Err(_)) => return Err(SniMiss::Closed),
            Ok(Ok(ready)) => ready,
        };
        let room = &mut buf[early.len()..];
        let full = room.len();
        // Peeking leaves the bytes there, so the socket stays readable: with nothing new, the
        // closure says WouldBlock, which clears tokio's readiness until more bytes (or the
        // close) arrive. Peeked inside `try_io`, so bytes arriving after the peek set it again.
        let peeked = client.try_io(Interest::READABLE, || match peek(client, room)? {
            n if n == seen && n != 0 && n < full => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        });
        let n = match peeked {
            Ok(0) => return Err(SniMiss::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    // Everything the client sent before closing is in what was peeked.
                    return Err(SniMiss::Closed);
                }
                continue;
            }
            Err(_) => return Err(SniMiss::Closed),
        };
        seen = n;
        let total = early.len() + n;
        match sni::parse(&buf[..total]) {
            Hello::Incomplete if total < buf.len() => {}
            Hello::Incomplete if buf.len() >= MAX_PEEK => {
                return Ok(Hello::Malformed("no server name in the first 16 KiB"));
            }
            Hello::Incomplete => buf.resize((buf.len() * 2).min(MAX_PEEK), 0),
            decided => return Ok(decided),
        }
    }
}

/// Copy what the socket holds into `buf` without taking it (`MSG_PEEK`, never waiting).
#[cfg(unix)]
fn peek(client: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    recv(client.as_raw_fd(), buf, flags).map_err(io::Error::from)
}

/// Not built elsewhere: `[[listener.sni]]` is refused at load on other systems.
#[cfg(not(unix))]
fn peek(_: &TcpStream, _: &mut [u8]) -> io::Result<usize> {
    Err(io::ErrorKind::Unsupported.into())
}
