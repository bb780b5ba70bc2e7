//! One active probe attempt against one backend: `tcp`, `amqp` (protocol header → Connection.Start),
//! `amqp_login` (a full lapin login) or `http` (a management health endpoint), bounded by the
//! attempt's own timeout. A probe that targets the backend's AMQP address sends the listener's
//! PROXY header first (naming the probe's own connection), because RabbitMQ with
//! `proxy_protocol = true` closes anything without one. This module keeps no state and runs no
//! timers beyond the attempt's timeout; turning outcomes into health (rise/fall) and publishing
//! them belongs to the caller. It must not touch routing. The `http` probe and the quorum check
//! talk HTTP through [`crate::http_client`], to the backend's own management endpoint when it
//! has one (`ProbeTarget::management`).
//!
//! This file holds what every kind shares (the target, the outcome, the run with its timeout);
//! each kind has a file: `amqp` (`tcp` and `amqp`), `login` (`amqp_login`), `http`, `quorum`
//! (the drain's quorum check), `maintenance` (is a failing node in RabbitMQ's maintenance mode?) and `close` (a client connection closed by its node, for a
//! graceful AMQP close); `text` holds the error texts they share.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{BackendConfig, BackendTls, ManagementEndpoint, Probe, ProxyProtocol, Secret};
use crate::http_client::{
    fill_template, url_host, without_userinfo, BodyRead, Credentials, HttpError, HttpUrl, Phase,
    ProbeUrl, Request, Response,
};
use crate::proxy_protocol::{encode_v1, encode_v2, Header};

mod amqp;
mod close;
mod http;
mod login;
mod maintenance;
mod quorum;
mod text;

#[cfg(test)]
mod tests;

use amqp::*;
pub use close::{
    close_answer, close_connection, connection_name, connection_path, CloseAnswer, CONNECTIONS_PATH,
};
use http::*;
use login::*;
pub use maintenance::{maintenance_reason, IN_SERVICE_PATH};
pub use quorum::{
    quorum_check, quorum_check_set, quorum_lost, Leaving, QuorumCheck, Replicas, OVERVIEW_PATH,
    QUEUES_PATH, QUORUM_CRITICAL_PATH,
};
use text::*;

/// Where a probe goes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// Host as written in the config (a name or an IP literal, IPv6 without brackets).
    pub host: String,
    /// The backend's AMQP port as written in the config.
    pub port: u16,
    /// The resolved AMQP address.
    pub addr: SocketAddr,
    /// What the listener sends to this backend; probes of the AMQP address send the same.
    pub proxy_protocol: ProxyProtocol,
    /// The node's management API: where an `http` probe that is a path goes, and what the
    /// quorum check asks, whatever the probe kind.
    pub management: Option<ManagementEndpoint>,
    /// `[pool.NAME.tls]`: the node speaks TLS, on its AMQP address and on an `https://`
    /// management endpoint or probe URL.
    pub tls: Option<BackendTls>,
}

impl ProbeTarget {
    /// The target of `backend` as configured, probed with `proxy_protocol`.
    pub fn for_backend(backend: &BackendConfig, proxy_protocol: ProxyProtocol) -> ProbeTarget {
        ProbeTarget {
            host: backend.host.clone(),
            port: backend.port,
            addr: backend.addr,
            proxy_protocol,
            management: backend.management.clone(),
            tls: backend.tls.clone(),
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Whether the backend passed.
    pub up: bool,
    /// Short and operator-readable, e.g. "Connection.Start received (RabbitMQ 3.12.1)",
    /// "connection refused", "timed out after 1s waiting for Connection.Start",
    /// "HTTP 503: {\"status\":\"failed\",...}". Never contains a password.
    pub reason: String,
    /// The attempt failed for lack of resources on this host (no descriptor, no ephemeral
    /// port): no verdict on the backend, so the caller must not count it against it.
    pub local: bool,
    /// The backend refused the connection: nothing listens there (a stopped node, or a
    /// RabbitMQ node in maintenance mode, whose listeners are suspended).
    pub refused: bool,
}

impl ProbeOutcome {
    fn up(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            up: true,
            reason: reason.into(),
            local: false,
            refused: false,
        }
    }

    fn down(reason: impl Into<String>) -> ProbeOutcome {
        ProbeOutcome {
            up: false,
            reason: reason.into(),
            local: false,
            refused: false,
        }
    }

    /// A failed connect: down, or no verdict when the error is this host's own.
    fn connect_failed(e: &io::Error) -> ProbeOutcome {
        ProbeOutcome {
            local: crate::net::is_local(e),
            refused: e.kind() == io::ErrorKind::ConnectionRefused,
            ..ProbeOutcome::down(connect_error(e))
        }
    }
}

/// The AMQP 0-9-1 protocol header a client opens with.
pub const AMQP_PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Longest body prefix an `http` probe keeps in its reason.
pub const HTTP_BODY_PREFIX: usize = 200;

/// Largest Connection.Start frame payload accepted. RabbitMQ's is about 500 bytes; the spec's
/// minimum frame size before tuning is 4096, so anything bigger is not a broker talking.
const MAX_START_PAYLOAD: usize = 64 * 1024;

const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xCE;
const CLASS_CONNECTION: u16 = 10;
const METHOD_START: u16 = 10;

/// Run one probe of `probe` against `target`, bounded by `timeout` (whatever happens, it returns
/// within `timeout` plus a few milliseconds).
pub async fn run(probe: &Probe, target: &ProbeTarget, timeout: Duration) -> ProbeOutcome {
    // The attempt records where it is, so a timeout can say what it was waiting for.
    let mut stage = Stage::Connecting;
    let attempt = async {
        match probe {
            Probe::Tcp => tcp(target, &mut stage).await,
            Probe::Amqp => amqp(target, &mut stage).await,
            Probe::AmqpLogin { uri } => amqp_login(uri, target, &mut stage).await,
            Probe::Http {
                url,
                user,
                password,
                password_file,
            } => {
                let credentials =
                    match probe_credentials(url, user, password, password_file, target) {
                        Ok(credentials) => credentials,
                        Err(outcome) => return outcome,
                    };
                http(url, credentials, target, &mut stage).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::down(format!(
            "timed out after {} {}",
            humantime::format_duration(timeout),
            stage.as_str()
        )),
    }
}

/// What an attempt was doing, for the reason of a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    SendingProxyHeader,
    TlsHandshake,
    WaitingForStart,
    LoggingIn,
    OpeningChannel,
    Closing,
    /// An HTTP exchange, where the client records its phase.
    Http(Phase),
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::SendingProxyHeader => "sending the PROXY header",
            Stage::TlsHandshake => "in the TLS handshake",
            Stage::WaitingForStart => "waiting for Connection.Start",
            Stage::LoggingIn => "connecting and logging in",
            Stage::OpeningChannel => "opening a channel",
            Stage::Closing => "closing the connection",
            Stage::Http(phase) => phase.as_str(),
        }
    }
}

impl Stage {
    /// Enter an HTTP exchange; the returned phase is where the client records its progress.
    fn http(&mut self) -> &mut Phase {
        *self = Stage::Http(Phase::Connecting);
        match self {
            Stage::Http(phase) => phase,
            _ => unreachable!("set just above"),
        }
    }
}

/// The TLS handshake with a node of a pool with `[pool.NAME.tls]`, over `stream` (connected,
/// PROXY header sent: RabbitMQ reads that before TLS). A failure is the probe's outcome, its
/// reason rustls's ("TLS handshake failed: invalid peer certificate: UnknownIssuer").
async fn tls_handshake(
    stream: TcpStream,
    tls: &BackendTls,
    stage: &mut Stage,
) -> Result<TlsStream<TcpStream>, ProbeOutcome> {
    *stage = Stage::TlsHandshake;
    tokio_rustls::TlsConnector::from(tls.config())
        .connect(tls.server_name.clone(), stream)
        .await
        .map_err(|e| {
            let reason = crate::tls::rustls_reason(&e).unwrap_or_else(|| io_error(&e));
            ProbeOutcome::down(format!("TLS handshake failed: {reason}"))
        })
}

/// What a probe over TLS adds to its reason: the protocol version negotiated.
fn tls_version<S>(stream: &TlsStream<S>) -> String {
    match stream.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS".into(),
    }
}

/// A node that requires a client certificate accepts a TLS 1.3 handshake without one and only
/// then resets the connection: say so on a probe without one that failed after the handshake.
fn tls_hint(outcome: &mut ProbeOutcome, tls: &BackendTls) {
    if !tls.client.has_identity() && !outcome.reason.starts_with("TLS handshake") {
        outcome.reason = format!(
            "{} (after the TLS handshake: does the node require a client certificate? \
             [pool.NAME.tls] cert and key)",
            outcome.reason
        );
    }
}
