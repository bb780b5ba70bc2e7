//! The probe metric families: `health_checks_total` by result and
//! `health_check_duration_seconds`, registered once per process by [`HealthMetrics`]. A probe
//! task resolves its backend's handles once (`ProbeMetrics`); the controller removes a
//! backend's series when a reload takes the backend away.

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};

use crate::metrics;
use crate::state::BackendId;

/// A probe's verdict (the `result` label of `health_checks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Ok,
    Failed,
}

impl CheckResult {
    /// Both results (a probed backend has a series for each).
    pub const ALL: [CheckResult; 2] = [CheckResult::Ok, CheckResult::Failed];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::Failed => "failed",
        }
    }
}

/// The probe families, registered once per process. Cheap to clone.
#[derive(Clone)]
pub struct HealthMetrics {
    checks_total: IntCounterVec,
    duration_seconds: HistogramVec,
}

/// One backend's probe handles, resolved when its probe task starts.
pub(super) struct ProbeMetrics {
    pub(super) ok: IntCounter,
    pub(super) failed: IntCounter,
    pub(super) seconds: Histogram,
}

impl HealthMetrics {
    /// Register the probe families into `registry` (once per process).
    pub fn register(registry: &Registry) -> HealthMetrics {
        HealthMetrics {
            checks_total: metrics::counter_vec(
                registry,
                "health_checks_total",
                "Health probes run, by result",
                &["pool", "backend", "result"],
            ),
            duration_seconds: metrics::histogram_vec(
                registry,
                "health_check_duration_seconds",
                "Time a health probe took",
                metrics::CONNECT_BUCKETS,
                &["pool", "backend"],
            ),
        }
    }

    /// The handles of `backend`'s probe (both results' series exist from its start).
    pub(super) fn probe(&self, backend: &BackendId) -> ProbeMetrics {
        let result = |r: CheckResult| {
            self.checks_total
                .with_label_values(&[&backend.pool, &backend.backend, r.as_str()])
        };
        ProbeMetrics {
            ok: result(CheckResult::Ok),
            failed: result(CheckResult::Failed),
            seconds: self
                .duration_seconds
                .with_label_values(&[&backend.pool, &backend.backend]),
        }
    }

    /// Remove the probe series of a backend a reload took away. Absent series are fine: a
    /// backend never probed has none.
    pub(super) fn remove_backend(&self, backend: &BackendId) {
        let _ = self
            .duration_seconds
            .remove_label_values(&[&backend.pool, &backend.backend]);
        for result in CheckResult::ALL {
            let _ = self.checks_total.remove_label_values(&[
                &backend.pool,
                &backend.backend,
                result.as_str(),
            ]);
        }
    }
}
