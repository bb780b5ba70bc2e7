//! The data plane's metric families: per listener (connections open and accepted, refusals,
//! closes by reason, closes warren forced by method (AMQP or TCP), rejected PROXY headers, TLS
//! handshakes and their failures by reason, SNI routing outcomes) and process-wide (bytes by direction and method,
//! pipes leased, splice fallbacks). [`ProxyMetrics`] registers them once per process; a
//! listener resolves its handles once into `ListenerStats` and the data plane its byte
//! counters once into [`ForwardCounters`], so a connection only increments resolved handles.
//! Labels come from the enums below and [`CloseReason`], never from strings at the call site.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::forward::CloseReason;
use crate::metrics;
use crate::net::ByteDirection;
use crate::tls::HandshakeFailure;

/// Why a client connection was refused (the `reason` label of `listener_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_connections` are open.
    MaxConnections,
    /// No backend of the pool could be connected.
    NoBackend,
    /// `next_upstream_timeout` was spent trying backends.
    NextUpstreamTimeout,
    /// `accept` itself failed (counted per failure, the listener backs off).
    AcceptError,
}

impl RejectReason {
    /// Every reason, in the order of `ListenerStats`'s handles.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::MaxConnections,
        RejectReason::NoBackend,
        RejectReason::NextUpstreamTimeout,
        RejectReason::AcceptError,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max_connections",
            RejectReason::NoBackend => "no_backend",
            RejectReason::NextUpstreamTimeout => "next_upstream_timeout",
            RejectReason::AcceptError => "accept_error",
        }
    }
}

/// Why an inbound PROXY header was rejected (the `reason` label of
/// `proxy_header_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRejectReason {
    /// Not a valid PROXY v1 or v2 header.
    Malformed,
    /// Not complete within `proxy_protocol_timeout`.
    Timeout,
    /// The peer closed (or the read failed) before the header was complete.
    Closed,
    /// The peer is outside `proxy_protocol_from`: closed at accept.
    Untrusted,
    /// Closed to make room: `max_connections` connections were waiting for their header.
    Evicted,
}

impl HeaderRejectReason {
    /// Every reason, in the order of `ListenerStats`'s handles.
    pub const ALL: [HeaderRejectReason; 5] = [
        HeaderRejectReason::Malformed,
        HeaderRejectReason::Timeout,
        HeaderRejectReason::Closed,
        HeaderRejectReason::Untrusted,
        HeaderRejectReason::Evicted,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderRejectReason::Malformed => "malformed",
            HeaderRejectReason::Timeout => "timeout",
            HeaderRejectReason::Closed => "closed",
            HeaderRejectReason::Untrusted => "untrusted",
            HeaderRejectReason::Evicted => "evicted",
        }
    }
}

/// How warren closed a connection it ended itself (the `method` label of
/// `forced_closes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMethod {
    /// The broker's `Connection.Close` 320 reached the client (asked through the node's
    /// management API) and the broker closed the connection.
    Amqp,
    /// A TCP close: the node could not be asked, or did not close it within the window.
    Tcp,
}

impl CloseMethod {
    /// Every method, in the order of `ListenerStats`'s handles.
    pub const ALL: [CloseMethod; 2] = [CloseMethod::Amqp, CloseMethod::Tcp];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseMethod::Amqp => "amqp",
            CloseMethod::Tcp => "tcp",
        }
    }
}

/// The close reasons for which warren ends a connection itself.
const FORCED: [CloseReason; 4] = [
    CloseReason::Drain,
    CloseReason::BackendDown,
    CloseReason::Rebalance,
    CloseReason::Shutdown,
];

/// How bytes were moved (the `method` label of `forwarded_bytes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMethod {
    /// splice(2) through a leased pipe.
    Splice,
    /// read and write through the per-thread scratch buffer.
    Copy,
}

impl ForwardMethod {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMethod::Splice => "splice",
            ForwardMethod::Copy => "copy",
        }
    }
}

/// Why a transfer used copy instead of splice (the `reason` label of
/// `splice_fallbacks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceFallback {
    /// The kernel refused splice on these sockets.
    Unsupported,
    /// Every pipe of the pool was leased.
    NoPipe,
}

impl SpliceFallback {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SpliceFallback::Unsupported => "unsupported",
            SpliceFallback::NoPipe => "no_pipe",
        }
    }
}

/// The data plane's families, registered once per process. Cheap to clone.
#[derive(Clone)]
pub struct ProxyMetrics {
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    rejected_total: IntCounterVec,
    closed_total: IntCounterVec,
    forced_closes_total: IntCounterVec,
    header_rejected_total: IntCounterVec,
    forwarded_bytes_total: IntCounterVec,
    pipes_leased: IntGauge,
    splice_fallbacks_total: IntCounterVec,
    tls_handshakes_total: IntCounterVec,
    tls_handshake_failures_total: IntCounterVec,
    sni_routed_total: IntCounterVec,
    sni_unrouted_total: IntCounterVec,
}

impl ProxyMetrics {
    /// Register the data plane's families into `registry` (once per process).
    pub fn register(registry: &Registry) -> ProxyMetrics {
        ProxyMetrics {
            connections_active: metrics::gauge_vec(
                registry,
                "listener_connections_active",
                "Client connections open now",
                &["listener"],
            ),
            connections_total: metrics::counter_vec(
                registry,
                "listener_connections_total",
                "Client connections accepted",
                &["listener"],
            ),
            rejected_total: metrics::counter_vec(
                registry,
                "listener_rejected_total",
                "Client connections refused (max_connections | no_backend | next_upstream_timeout | accept_error)",
                &["listener", "reason"],
            ),
            closed_total: metrics::counter_vec(
                registry,
                "connections_closed_total",
                "Closed proxied connections (client | backend | idle | drain | backend_down | shutdown | error)",
                &["listener", "reason"],
            ),
            forced_closes_total: metrics::counter_vec(
                registry,
                "forced_closes_total",
                "Connections warren closed itself, by reason (drain | shutdown) and method (amqp: the broker's Connection.Close reached the client | tcp)",
                &["listener", "reason", "method"],
            ),
            header_rejected_total: metrics::counter_vec(
                registry,
                "proxy_header_rejected_total",
                "Inbound PROXY protocol headers rejected (malformed | timeout | closed | untrusted | evicted)",
                &["listener", "reason"],
            ),
            forwarded_bytes_total: metrics::counter_vec(
                registry,
                "forwarded_bytes_total",
                "Bytes forwarded, by direction (to_backend | to_client) and method (splice | copy)",
                &["direction", "method"],
            ),
            pipes_leased: metrics::gauge(
                registry,
                "splice_pipes_leased",
                "Pipes leased by connections with bytes in flight",
            ),
            splice_fallbacks_total: metrics::counter_vec(
                registry,
                "splice_fallbacks_total",
                "Transfers that used copy because splice or a pipe was refused, by reason",
                &["reason"],
            ),
            tls_handshakes_total: metrics::counter_vec(
                registry,
                "tls_handshakes_total",
                "TLS handshakes completed on a [listener.tls] listener",
                &["listener"],
            ),
            tls_handshake_failures_total: metrics::counter_vec(
                registry,
                "tls_handshake_failures_total",
                "TLS handshakes that failed, by reason (timeout | closed | no_client_certificate | bad_certificate | protocol | other)",
                &["listener", "reason"],
            ),
            sni_routed_total: metrics::counter_vec(
                registry,
                "sni_routed_total",
                "Connections of a [[listener.sni]] listener sent on to a pool (the default pool included), by pool",
                &["listener", "pool"],
            ),
            sni_unrouted_total: metrics::counter_vec(
                registry,
                "sni_unrouted_total",
                "Connections of a [[listener.sni]] listener no route named (no_sni | no_match | not_tls | malformed: sent to the listener's pool; timeout | closed: closed)",
                &["listener", "reason"],
            ),
        }
    }

    /// The SNI handles of one listener, every `reason` series created at once. Resolved only
    /// for a listener with `[[listener.sni]]`, so others show no SNI series.
    pub(super) fn sni(&self, listener: &str) -> super::sni::SniStats {
        super::sni::SniStats::new(listener, &self.sni_routed_total, &self.sni_unrouted_total)
    }

    /// The TLS handles of one listener, every series created at once. Resolved only for a TLS
    /// listener, so a plain one shows no TLS series.
    pub(super) fn tls(&self, listener: &str) -> TlsStats {
        TlsStats {
            handshakes: self.tls_handshakes_total.with_label_values(&[listener]),
            failures: HandshakeFailure::ALL.map(|r| {
                self.tls_handshake_failures_total
                    .with_label_values(&[listener, r.as_str()])
            }),
        }
    }

    /// The handles of one listener, every series created at once (a listener's refusals and
    /// closes show 0 before the first one).
    pub(super) fn listener(&self, listener: &str) -> ListenerStats {
        ListenerStats {
            active: self.connections_active.with_label_values(&[listener]),
            total: self.connections_total.with_label_values(&[listener]),
            rejected: RejectReason::ALL.map(|r| {
                self.rejected_total
                    .with_label_values(&[listener, r.as_str()])
            }),
            header_rejected: HeaderRejectReason::ALL.map(|r| {
                self.header_rejected_total
                    .with_label_values(&[listener, r.as_str()])
            }),
            closed: CloseReason::ALL
                .map(|r| self.closed_total.with_label_values(&[listener, r.as_str()])),
            forced: FORCED.map(|r| {
                CloseMethod::ALL.map(|m| {
                    self.forced_closes_total
                        .with_label_values(&[listener, r.as_str(), m.as_str()])
                })
            }),
            tls: std::sync::OnceLock::new(),
            sni: std::sync::OnceLock::new(),
        }
    }

    /// The byte counters of one direction, resolved once per process.
    pub fn forward_counters(&self, direction: ByteDirection) -> ForwardCounters {
        let method = |m: ForwardMethod| {
            self.forwarded_bytes_total
                .with_label_values(&[direction.as_str(), m.as_str()])
        };
        ForwardCounters {
            splice: method(ForwardMethod::Splice),
            copy: method(ForwardMethod::Copy),
        }
    }

    /// The counter of fallbacks to copy for `reason`.
    pub fn splice_fallbacks(&self, reason: SpliceFallback) -> IntCounter {
        self.splice_fallbacks_total
            .with_label_values(&[reason.as_str()])
    }

    /// The gauge of pipes leased now (the pipe pool keeps it).
    pub fn pipes_leased(&self) -> IntGauge {
        self.pipes_leased.clone()
    }

    /// A read-only view of the open connections per listener, for the admin API's status.
    pub fn active_connections(&self) -> ActiveConnections {
        ActiveConnections(self.connections_active.clone())
    }
}

/// Open client connections per listener, read-only: the narrow handle the admin API gets.
#[derive(Clone)]
pub struct ActiveConnections(IntGaugeVec);

impl ActiveConnections {
    /// Connections open now on `listener` (its series is created if it does not exist yet).
    pub fn of(&self, listener: &str) -> i64 {
        self.0.with_label_values(&[listener]).get()
    }
}

/// Per-listener metric handles, resolved once when the listener starts.
pub(super) struct ListenerStats {
    pub(super) active: IntGauge,
    pub(super) total: IntCounter,
    /// By [`RejectReason::ALL`]'s order.
    rejected: [IntCounter; 4],
    /// By [`HeaderRejectReason::ALL`]'s order.
    header_rejected: [IntCounter; 5],
    /// By [`CloseReason::ALL`]'s order.
    closed: [IntCounter; CloseReason::ALL.len()],
    /// By [`FORCED`]'s order, then [`CloseMethod::ALL`]'s.
    forced: [[IntCounter; 2]; FORCED.len()],
    /// Resolved by the listener's first TLS connection (or at start for a TLS listener).
    pub(super) tls: std::sync::OnceLock<TlsStats>,
    /// Likewise for a listener with `[[listener.sni]]` routes.
    pub(super) sni: std::sync::OnceLock<super::sni::SniStats>,
}

/// A TLS listener's handshake counters.
pub(super) struct TlsStats {
    pub(super) handshakes: IntCounter,
    /// By [`HandshakeFailure::ALL`]'s order.
    failures: [IntCounter; HandshakeFailure::ALL.len()],
}

impl TlsStats {
    /// The counter of handshakes failed for `reason`.
    pub(super) fn failed(&self, reason: HandshakeFailure) -> &IntCounter {
        &self.failures[reason as usize]
    }

    /// Handshakes failed so far, every reason together.
    pub(super) fn failures(&self) -> u64 {
        self.failures.iter().map(IntCounter::get).sum()
    }
}

impl ListenerStats {
    /// The counter of connections refused for `reason`.
    pub(super) fn rejected(&self, reason: RejectReason) -> &IntCounter {
        &self.rejected[reason as usize]
    }

    /// The counter of PROXY headers rejected for `reason`.
    pub(super) fn header_rejected(&self, reason: HeaderRejectReason) -> &IntCounter {
        &self.header_rejected[reason as usize]
    }

    /// The counter of connections closed for `reason`.
    pub(super) fn closed(&self, reason: CloseReason) -> &IntCounter {
        &self.closed[reason as usize]
    }

    /// The counter of connections warren closed itself for `reason` (drain or shutdown; any
    /// other counts as drain) by `method`.
    pub(super) fn forced(&self, reason: CloseReason, method: CloseMethod) -> &IntCounter {
        // Only ever asked for a reason in FORCED (a close warren decided on).
        let r = FORCED.iter().position(|f| *f == reason).unwrap_or(0);
        &self.forced[r][method as usize]
    }
}

/// Per-direction byte counters of the data plane, resolved once per process.
#[derive(Clone)]
pub struct ForwardCounters {
    pub splice: IntCounter,
    pub copy: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ListenerStats` keeps its handles in arrays indexed by the enums.
    #[test]
    fn each_reason_indexes_its_own_slot() {
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        for (i, r) in HeaderRejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        for (i, r) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
        for (i, m) in CloseMethod::ALL.into_iter().enumerate() {
            assert_eq!(m as usize, i, "{m:?}");
        }
        for (i, r) in HandshakeFailure::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "{r:?}");
        }
    }

    #[test]
    fn a_listener_resolves_every_reason_with_its_label() {
        let registry = Registry::new();
        let stats = ProxyMetrics::register(&registry).listener("amqp");
        stats.rejected(RejectReason::NextUpstreamTimeout).inc();
        stats.header_rejected(HeaderRejectReason::Untrusted).inc();
        stats.closed(CloseReason::Drain).inc();
        stats.forced(CloseReason::Shutdown, CloseMethod::Amqp).inc();
        let text = metrics::encode(&registry);
        for line in [
            "warren_listener_rejected_total{listener=\"amqp\",reason=\"next_upstream_timeout\"} 1",
            "warren_listener_rejected_total{listener=\"amqp\",reason=\"no_backend\"} 0",
            "warren_proxy_header_rejected_total{listener=\"amqp\",reason=\"untrusted\"} 1",
            "warren_connections_closed_total{listener=\"amqp\",reason=\"drain\"} 1",
            "warren_connections_closed_total{listener=\"amqp\",reason=\"client\"} 0",
            "warren_forced_closes_total{listener=\"amqp\",method=\"amqp\",reason=\"shutdown\"} 1",
            "warren_forced_closes_total{listener=\"amqp\",method=\"tcp\",reason=\"drain\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
