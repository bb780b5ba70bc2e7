//! The admin server's own metric families: `admin_auth_failures_total` (a `/v1` request
//! refused for its bearer token) and `admin_connections_refused_total` (an admin connection
//! closed at accept or to make room), registered once per process by [`AdminMetrics`]. Their
//! series appear with their first count.

use prometheus::{IntCounterVec, Registry};

use crate::metrics;

/// Why a `/v1` request was refused for its token (the `reason` label of
/// `admin_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not the configured one.
    Wrong,
    /// Answered 429: its network (or every network) spent its budget of wrong tokens.
    RateLimited,
}

impl AuthFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Wrong => "wrong",
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

/// Why an admin connection was closed by the server (the `reason` label of
/// `admin_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// Its source already has `max_connections_per_source` open.
    PerSource,
    /// `max_connections` are open, each serving a request.
    MaxConnections,
    /// An idle one, closed to make room for a new connection.
    Evicted,
}

impl ConnectionRefused {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefused::PerSource => "per_source",
            ConnectionRefused::MaxConnections => "max_connections",
            ConnectionRefused::Evicted => "evicted",
        }
    }
}

/// The admin server's families, registered once per process. Cheap to clone.
#[derive(Clone)]
pub struct AdminMetrics {
    auth_failures_total: IntCounterVec,
    connections_refused_total: IntCounterVec,
}

impl AdminMetrics {
    /// Register the admin server's families into `registry` (once per process).
    pub fn register(registry: &Registry) -> AdminMetrics {
        AdminMetrics {
            auth_failures_total: metrics::counter_vec(
                registry,
                "admin_auth_failures_total",
                "Admin /v1 requests refused for their bearer token (missing | wrong | rate_limited)",
                &["reason"],
            ),
            connections_refused_total: metrics::counter_vec(
                registry,
                "admin_connections_refused_total",
                "Admin connections closed at accept (per_source | max_connections) or idle ones closed to make room (evicted)",
                &["reason"],
            ),
        }
    }

    /// Count a `/v1` request refused for its token.
    pub fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Count an admin connection the server closed.
    pub fn connection_refused(&self, reason: ConnectionRefused) {
        self.connections_refused_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}
