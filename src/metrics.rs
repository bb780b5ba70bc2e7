//! Prometheus metrics: every series in DESIGN.md's "Metrics" list plus the data plane's own
//! (bytes by splice and by copy, pipes leased, PROXY headers rejected) and process metrics.
//! This module owns the registry and the metric families; components keep per-label handles
//! (resolved once, outside the data path) and only increment them. It must not do I/O.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// All of warren's metric families, registered in one [`Registry`].
pub struct Metrics {
    /// What `/metrics` encodes.
    pub registry: Registry,
    pub listener_connections_active: IntGaugeVec,
    pub listener_connections_total: IntCounterVec,
    pub listener_rejected_total: IntCounterVec,
    pub backend_connections_active: IntGaugeVec,
    pub backend_connections_total: IntCounterVec,
    pub backend_connect_failures_total: IntCounterVec,
    pub backend_connect_duration_seconds: HistogramVec,
    pub backend_bytes_total: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub backend_admin_state: IntGaugeVec,
    pub health_checks_total: IntCounterVec,
    pub health_check_duration_seconds: HistogramVec,
    pub pool_available_backends: IntGaugeVec,
    pub connections_closed_total: IntCounterVec,
    pub hook_runs_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    /// Bytes forwarded, by direction (to_backend | to_client) and method (splice | copy).
    pub forwarded_bytes_total: IntCounterVec,
    /// Pipes currently leased by connections with bytes in flight.
    pub splice_pipes_leased: IntGauge,
    /// Times a connection fell back from splice to copy, by reason.
    pub splice_fallbacks_total: IntCounterVec,
    /// Inbound PROXY headers rejected, by listener and reason (malformed | timeout | closed |
    /// untrusted: the peer is outside `proxy_protocol_from` | evicted: closed to make room).
    pub proxy_header_rejected_total: IntCounterVec,
    /// State file reads or writes that failed (a corrupt file moved aside counts too).
    pub state_file_errors_total: IntCounter,
    /// `/v1` requests refused for their token, by reason (missing | wrong | rate_limited).
    pub admin_auth_failures_total: IntCounterVec,
    /// Admin connections closed at accept or to make room, by reason
    /// (per_source | max_connections | evicted).
    pub admin_connections_refused_total: IntCounterVec,
    /// Log lines dropped because they could not be written (process-wide, see `logging`).
    pub log_write_errors_total: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("warren")
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace("warren")
        .buckets(buckets)
}

// Connects on a LAN take 0.1–5 ms; timeouts are seconds. Buckets cover both ends.
const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Create and register every family. Panics only on a programming error (a name clash).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let build_info = reg!(IntGaugeVec::new(
            opts("build_info", "warren build information; value is always 1"),
            &["version"]
        )
        .unwrap());
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");

        let pb = &["pool", "backend"];
        Metrics {
            listener_connections_active: reg!(IntGaugeVec::new(
                opts("listener_connections_active", "Client connections open now"),
                &["listener"]
            )
            .unwrap()),
            listener_connections_total: reg!(IntCounterVec::new(
                opts("listener_connections_total", "Client connections accepted"),
                &["listener"]
            )
            .unwrap()),
            listener_rejected_total: reg!(IntCounterVec::new(
                opts(
                    "listener_rejected_total",
                    "Client connections refused (max_connections | no_backend | next_upstream_timeout | accept_error)"
                ),
                &["listener", "reason"]
            )
            .unwrap()),
            backend_connections_active: reg!(IntGaugeVec::new(
                opts("backend_connections_active", "Proxied connections open now"),
                pb
            )
            .unwrap()),
            backend_connections_total: reg!(IntCounterVec::new(
                opts("backend_connections_total", "Proxied connections established"),
                pb
            )
            .unwrap()),
            backend_connect_failures_total: reg!(IntCounterVec::new(
                opts(
                    "backend_connect_failures_total",
                    "Failed connects to a backend (refused | timeout | other | closed_early)"
                ),
                &["pool", "backend", "reason"]
            )
            .unwrap()),
            backend_connect_duration_seconds: reg!(HistogramVec::new(
                histogram(
                    "backend_connect_duration_seconds",
                    "Time to establish a backend connection",
                    CONNECT_BUCKETS.to_vec()
                ),
                pb
            )
            .unwrap()),
            backend_bytes_total: reg!(IntCounterVec::new(
                opts(
                    "backend_bytes_total",
                    "Bytes forwarded (to_backend | to_client)"
                ),
                &["pool", "backend", "direction"]
            )
            .unwrap()),
            backend_up: reg!(IntGaugeVec::new(
                opts("backend_up", "1 when the backend's health is up (or unknown)"),
                pb
            )
            .unwrap()),
            backend_admin_state: reg!(IntGaugeVec::new(
                opts(
                    "backend_admin_state",
                    "1 on the backend's current admin state (active | draining | drained)"
                ),
                &["pool", "backend", "state"]
            )
            .unwrap()),
            health_checks_total: reg!(IntCounterVec::new(
                opts("health_checks_total", "Health probes run, by result"),
                &["pool", "backend", "result"]
            )
            .unwrap()),
            health_check_duration_seconds: reg!(HistogramVec::new(
                histogram(
                    "health_check_duration_seconds",
                    "Time a health probe took",
                    CONNECT_BUCKETS.to_vec()
                ),
                pb
            )
            .unwrap()),
            pool_available_backends: reg!(IntGaugeVec::new(
                opts(
                    "pool_available_backends",
                    "Backends that may take new connections"
                ),
                &["pool"]
            )
            .unwrap()),
            connections_closed_total: reg!(IntCounterVec::new(
                opts(
                    "connections_closed_total",
                    "Closed proxied connections (client | backend | idle | drain | shutdown | error)"
                ),
                &["listener", "reason"]
            )
            .unwrap()),
            hook_runs_total: reg!(IntCounterVec::new(
                opts("hook_runs_total", "Hook runs (ok | failed | timeout)"),
                &["event", "result"]
            )
            .unwrap()),
            config_reloads_total: reg!(IntCounterVec::new(
                opts("config_reloads_total", "Config reloads (ok | failed)"),
                &["result"]
            )
            .unwrap()),
            forwarded_bytes_total: reg!(IntCounterVec::new(
                opts(
                    "forwarded_bytes_total",
                    "Bytes forwarded, by direction (to_backend | to_client) and method (splice | copy)"
                ),
                &["direction", "method"]
            )
            .unwrap()),
            splice_pipes_leased: reg!(IntGauge::with_opts(opts(
                "splice_pipes_leased",
                "Pipes leased by connections with bytes in flight"
            ))
            .unwrap()),
            splice_fallbacks_total: reg!(IntCounterVec::new(
                opts(
                    "splice_fallbacks_total",
                    "Transfers that used copy because splice or a pipe was refused, by reason"
                ),
                &["reason"]
            )
            .unwrap()),
            proxy_header_rejected_total: reg!(IntCounterVec::new(
                opts(
                    "proxy_header_rejected_total",
                    "Inbound PROXY protocol headers rejected (malformed | timeout | closed | untrusted | evicted)"
                ),
                &["listener", "reason"]
            )
            .unwrap()),
            log_write_errors_total: reg!(crate::logging::write_errors().clone()),
            state_file_errors_total: reg!(IntCounter::with_opts(opts(
                "state_file_errors_total",
                "State file reads or writes that failed (a corrupt file is moved aside)"
            ))
            .unwrap()),
            admin_auth_failures_total: reg!(IntCounterVec::new(
                opts(
                    "admin_auth_failures_total",
                    "Admin /v1 requests refused for their bearer token (missing | wrong | rate_limited)"
                ),
                &["reason"]
            )
            .unwrap()),
            admin_connections_refused_total: reg!(IntCounterVec::new(
                opts(
                    "admin_connections_refused_total",
                    "Admin connections closed at accept (per_source | max_connections) or idle ones closed to make room (evicted)"
                ),
                &["reason"]
            )
            .unwrap()),
            registry,
        }
    }

    /// The Prometheus text exposition of every registered family.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-direction byte counters of the data plane, resolved once per process.
#[derive(Clone)]
pub struct ForwardCounters {
    pub splice: IntCounter,
    pub copy: IntCounter,
}

impl Metrics {
    /// Counters for one direction ("to_backend" or "to_client").
    pub fn forward_counters(&self, direction: &str) -> ForwardCounters {
        ForwardCounters {
            splice: self
                .forwarded_bytes_total
                .with_label_values(&[direction, "splice"]),
            copy: self
                .forwarded_bytes_total
                .with_label_values(&[direction, "copy"]),
        }
    }
}

impl Metrics {
    /// Remove every series of a backend a reload took away, so `backend_up 0` or a drained
    /// state does not stay in `/metrics` (and keep an alert firing) for a backend that is gone.
    /// Absent series are fine: a backend never probed has no `health_checks_total`.
    pub fn remove_backend(&self, pool: &str, backend: &str) {
        let pb = [pool, backend];
        let _ = self.backend_connections_active.remove_label_values(&pb);
        let _ = self.backend_connections_total.remove_label_values(&pb);
        let _ = self
            .backend_connect_duration_seconds
            .remove_label_values(&pb);
        let _ = self.backend_up.remove_label_values(&pb);
        let _ = self.health_check_duration_seconds.remove_label_values(&pb);
        for reason in ["refused", "timeout", "other", "closed_early"] {
            let _ = self
                .backend_connect_failures_total
                .remove_label_values(&[pool, backend, reason]);
        }
        for direction in ["to_backend", "to_client"] {
            let _ = self
                .backend_bytes_total
                .remove_label_values(&[pool, backend, direction]);
        }
        for state in ["active", "draining", "drained"] {
            let _ = self
                .backend_admin_state
                .remove_label_values(&[pool, backend, state]);
        }
        for result in ["ok", "failed"] {
            let _ = self
                .health_checks_total
                .remove_label_values(&[pool, backend, result]);
        }
    }

    /// Remove the series of a pool a reload took away (its backends' go through
    /// [`Metrics::remove_backend`]).
    pub fn remove_pool(&self, pool: &str) {
        let _ = self.pool_available_backends.remove_label_values(&[pool]);
    }
}

/// A histogram handle, re-exported so callers need not depend on `prometheus` directly.
pub type Seconds = Histogram;
