//! Backends that move: every pool's `resolve_interval`, the host names of its backends are
//! looked up again (jittered by up to a tenth), and each answer is handed to the server, which
//! applies it as a reload applies a changed backend (see `plan::apply`): new connections and
//! probes go to the new address, open connections stay on the old one. A name that stops
//! resolving keeps its last address, with a WARN once per failure streak and a count. It owns
//! the lookups, their schedule and the `backend_resolve*` / `backend_address_changes` families;
//! it never touches the routing view or the config itself (the server does, serialised with
//! reloads).

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, Registry};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dns::Lookup;
use crate::metrics;
use plan::{Change, Target};

pub use plan::{apply, carry_slots};

/// How often the schedule is compared with the config in force, so a reload that adds or
/// changes a `resolve_interval` is followed within this long.
const RECHECK: Duration = Duration::from_secs(1);

/// A name's fresh answer, for the server to apply.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Target,
    /// Never empty.
    pub addrs: Vec<SocketAddr>,
}

/// `backend_resolve_failures_total` and `backend_address_changes_total`, labelled by pool and
/// the backend's name as written.
#[derive(Clone)]
pub struct ResolveMetrics {
    failures: IntCounterVec,
    changes: IntCounterVec,
}

impl ResolveMetrics {
    /// Register the families into `registry` (once per process).
    pub fn register(registry: &Registry) -> ResolveMetrics {
        ResolveMetrics {
            failures: metrics::counter_vec(
                registry,
                "backend_resolve_failures_total",
                "Lookups of a backend's host name (resolve_interval) that failed; it keeps its last address",
                &["pool", "backend"],
            ),
            changes: metrics::counter_vec(
                registry,
                "backend_address_changes_total",
                "Addresses a lookup (resolve_interval) changed: a backend moved, or an expanded backend gained or lost one",
                &["pool", "backend"],
            ),
        }
    }

    /// Count and log what an applied answer changed.
    pub fn changed(&self, target: &Target, changes: &[Change]) {
        for change in changes {
            self.changes
                .with_label_values(&[&target.pool, &target.backend])
                .inc();
            let (pool, host) = (&target.pool, &target.host);
            match change {
                Change::Moved { backend, from, to } => {
                    tracing::info!(%pool, %backend, %host, old = %from, new = %to,
                    "backend address changed (DNS): new connections and probes go to the new address, open ones stay")
                }
                Change::Added { backend, addr } => tracing::info!(%pool, %backend, %host, %addr,
                    "backend added: a new address of an expanded host name"),
                Change::Removed { backend, addr } => tracing::info!(%pool, %backend, %host, %addr,
                    "backend removed: its address left the expanded host name; open connections continue"),
            }
        }
    }
}

/// Look names up on schedule until `stop`, sending each answer to `answers`.
pub async fn run(
    config: Arc<ArcSwap<Config>>,
    metrics: ResolveMetrics,
    answers: mpsc::UnboundedSender<Resolved>,
    stop: CancellationToken,
) {
    let mut lookup: Option<(Vec<SocketAddr>, Lookup)> = None;
    let mut due: HashMap<Target, Instant> = HashMap::new();
    let mut failing: HashSet<Target> = HashSet::new();
    loop {
        let current = config.load_full();
        let nameservers = &current.resolver.nameservers;
        let stale = match &lookup {
            Some((ns, _)) => ns != nameservers,
            None => true,
        };
        if stale {
            lookup = Some((nameservers.clone(), Lookup::new(nameservers)));
        }
        let resolver = &lookup.as_ref().expect("set above").1;
        let targets = plan::targets(&current);
        due.retain(|t, _| targets.iter().any(|(x, _)| x == t));
        failing.retain(|t| due.contains_key(t));
        for (target, interval) in &targets {
            let next = Instant::now() + plan::jittered(*interval, rand::thread_rng().gen());
            let when = *due.entry(target.clone()).or_insert(next);
            if when > Instant::now() {
                continue;
            }
            let answer = resolver.lookup(&target.host, target.port).await;
            due.insert(
                target.clone(),
                Instant::now() + plan::jittered(*interval, rand::thread_rng().gen()),
            );
            match answer {
                Ok(addrs) => {
                    if failing.remove(target) {
                        tracing::info!(pool = %target.pool, backend = %target.backend, host = %target.host,
                            "backend host name resolves again");
                    }
                    let resolved = Resolved {
                        target: target.clone(),
                        addrs,
                    };
                    if answers.send(resolved).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics
                        .failures
                        .with_label_values(&[&target.pool, &target.backend])
                        .inc();
                    if failing.insert(target.clone()) {
                        tracing::warn!(pool = %target.pool, backend = %target.backend, host = %target.host, error = %e,
                            "cannot resolve a backend's host name: it keeps its last address");
                    }
                }
            }
        }
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + RECHECK)
            .min(Instant::now() + RECHECK);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}
