//! The composition of every module's metric families into the process's one registry, done
//! once per process at bind (a reload rebuilds hooks, probes and routing, never the families:
//! they take these handles). `server` also owns `config_reloads_total`, counted around each
//! reload.

use std::sync::Arc;

use prometheus::{IntCounterVec, Registry};

use crate::admin::metrics::AdminMetrics;
use crate::drain::StateFileMetrics;
use crate::health::metrics::HealthMetrics;
use crate::hooks::HookMetrics;
use crate::metrics::{self, Metrics};
use crate::proxy::metrics::ProxyMetrics;
use crate::resolve::ResolveMetrics;
use crate::state::BackendMetrics;

/// How a reload ended (the `result` label of `config_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    Failed,
}

impl ReloadResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Failed => "failed",
        }
    }
}

/// `config_reloads_total`; a series appears with its first reload.
#[derive(Clone)]
pub struct ReloadMetrics {
    reloads_total: IntCounterVec,
}

impl ReloadMetrics {
    /// Register `config_reloads_total` into `registry` (once per process).
    pub fn register(registry: &Registry) -> ReloadMetrics {
        ReloadMetrics {
            reloads_total: metrics::counter_vec(
                registry,
                "config_reloads_total",
                "Config reloads (ok | failed)",
                &["result"],
            ),
        }
    }

    /// Count one reload.
    pub fn reloaded(&self, result: ReloadResult) {
        self.reloads_total
            .with_label_values(&[result.as_str()])
            .inc();
    }
}

/// Every module's metrics, registered into one registry; each component gets its own part.
/// Cheap to clone (handles).
#[derive(Clone)]
pub(super) struct ProcessMetrics {
    /// The registry (`/metrics`, `Server::metrics`).
    pub(super) exposition: Arc<Metrics>,
    pub(super) proxy: ProxyMetrics,
    pub(super) backends: BackendMetrics,
    pub(super) health: HealthMetrics,
    pub(super) hooks: HookMetrics,
    pub(super) state_file: StateFileMetrics,
    pub(super) admin: AdminMetrics,
    pub(super) reloads: ReloadMetrics,
    pub(super) resolve: ResolveMetrics,
}

impl ProcessMetrics {
    /// Create the registry and register every family into it.
    pub(super) fn register() -> ProcessMetrics {
        let exposition = Arc::new(Metrics::new());
        let registry = exposition.registry();
        crate::logging::register_metrics(registry);
        ProcessMetrics {
            proxy: ProxyMetrics::register(registry),
            backends: BackendMetrics::register(registry),
            health: HealthMetrics::register(registry),
            hooks: HookMetrics::register(registry),
            state_file: StateFileMetrics::register(registry),
            admin: AdminMetrics::register(registry),
            reloads: ReloadMetrics::register(registry),
            resolve: ResolveMetrics::register(registry),
            exposition,
        }
    }
}
